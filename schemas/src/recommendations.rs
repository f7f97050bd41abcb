//! The `recommendations` record: hand-written encoder for the recommender, reference decoder
//! for readers (tools, tests).

use apache_avro::types::Value;

use crate::avro::{write_block, write_f64, write_int, write_long, write_opt, write_str};
use crate::generic::{decode_fields, string_map};
use crate::{framing, Catalogue, DecodeError};

pub const SUBJECT: &str = "recommendations-value";

/// The schema's `Action` symbols, in order.
pub const ACTIONS: [&str; 5] = ["HOLD", "SCALE_OUT", "SCALE_IN", "SET_REQUESTS", "REBALANCE"];

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Recommendation {
    pub recommendation_id: String,
    pub entity_id: String,
    pub ts_ms: i64,
    pub service: Option<String>,
    pub cluster: Option<String>,
    /// Index into [`ACTIONS`].
    pub action: i32,
    pub target_replicas: Option<i32>,
    pub target_cpu_cores: Option<f64>,
    pub target_mem_bytes: Option<f64>,
    pub from_cluster: Option<String>,
    pub to_cluster: Option<String>,
    pub forecast_event_id: Option<String>,
    pub cost_change_per_hour: f64,
    pub shortfall_prob: f64,
    pub confidence: f64,
    pub policy_version: String,
    pub model_versions: Vec<(String, String)>,
    pub reason: String,
}

impl Recommendation {
    pub fn action_symbol(&self) -> &'static str {
        ACTIONS.get(self.action as usize).copied().unwrap_or("HOLD")
    }

    /// Appends the framed record to `out`.
    pub fn encode_framed(&self, out: &mut Vec<u8>) {
        let id = Catalogue::builtin()
            .latest(SUBJECT)
            .map(|e| e.id)
            .unwrap_or(0);
        framing::frame(id, out);
        write_str(out, &self.recommendation_id);
        write_str(out, &self.entity_id);
        write_long(out, self.ts_ms);
        write_opt(out, self.service.as_deref(), write_str);
        write_opt(out, self.cluster.as_deref(), write_str);
        write_int(out, self.action.clamp(0, ACTIONS.len() as i32 - 1));
        write_opt(out, self.target_replicas, write_int);
        write_opt(out, self.target_cpu_cores, write_f64);
        write_opt(out, self.target_mem_bytes, write_f64);
        write_opt(out, self.from_cluster.as_deref(), write_str);
        write_opt(out, self.to_cluster.as_deref(), write_str);
        write_opt(out, self.forecast_event_id.as_deref(), write_str);
        write_f64(out, self.cost_change_per_hour);
        write_f64(out, self.shortfall_prob);
        write_f64(out, self.confidence);
        write_str(out, &self.policy_version);
        write_block(out, self.model_versions.iter(), |o, (k, v)| {
            write_str(o, k);
            write_str(o, v);
        });
        write_str(out, &self.reason);
    }

    pub fn decode(payload: &[u8]) -> Result<Recommendation, DecodeError> {
        let mut r = Recommendation::default();
        for (name, v) in decode_fields(SUBJECT, payload)? {
            match (name.as_str(), v) {
                ("recommendation_id", Value::String(s)) => r.recommendation_id = s,
                ("entity_id", Value::String(s)) => r.entity_id = s,
                ("ts_ms", Value::Long(x) | Value::TimestampMillis(x)) => r.ts_ms = x,
                ("service", Value::String(s)) => r.service = Some(s),
                ("cluster", Value::String(s)) => r.cluster = Some(s),
                ("action", Value::Enum(i, _)) => r.action = i as i32,
                ("target_replicas", Value::Int(x)) => r.target_replicas = Some(x),
                ("target_cpu_cores", Value::Double(x)) => r.target_cpu_cores = Some(x),
                ("target_mem_bytes", Value::Double(x)) => r.target_mem_bytes = Some(x),
                ("from_cluster", Value::String(s)) => r.from_cluster = Some(s),
                ("to_cluster", Value::String(s)) => r.to_cluster = Some(s),
                ("forecast_event_id", Value::String(s)) => r.forecast_event_id = Some(s),
                ("cost_change_per_hour", Value::Double(x)) => r.cost_change_per_hour = x,
                ("shortfall_prob", Value::Double(x)) => r.shortfall_prob = x,
                ("confidence", Value::Double(x)) => r.confidence = x,
                ("policy_version", Value::String(s)) => r.policy_version = s,
                ("model_versions", Value::Map(m)) => r.model_versions = string_map(m),
                ("reason", Value::String(s)) => r.reason = s,
                _ => {}
            }
        }
        Ok(r)
    }
}

/// Deterministic id of a recommendation: the same entity, event (or rebalance window) and
/// policy version always give the same id, so consumers de-duplicate replays.
pub fn recommendation_id(entity_id: &str, ts_ms: i64, kind: &str, policy_version: &str) -> String {
    let mut key = Vec::with_capacity(entity_id.len() + kind.len() + policy_version.len() + 2);
    key.extend_from_slice(entity_id.as_bytes());
    key.push(0);
    key.extend_from_slice(kind.as_bytes());
    key.push(0);
    key.extend_from_slice(policy_version.as_bytes());
    let h = xxhash_rust::xxh3::xxh3_128_with_seed(&key, ts_ms as u64);
    format!("{h:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recommendation_round_trips_through_the_reference_reader() {
        let r = Recommendation {
            recommendation_id: recommendation_id("web-1", 5, "decision", "p1"),
            entity_id: "web-1".into(),
            ts_ms: 1_700_000_000_000,
            service: Some("web".into()),
            cluster: Some("eu-1".into()),
            action: 1,
            target_replicas: Some(6),
            target_cpu_cores: Some(6.0),
            target_mem_bytes: None,
            from_cluster: None,
            to_cluster: None,
            forecast_event_id: Some("ev".into()),
            cost_change_per_hour: 0.08,
            shortfall_prob: 0.01,
            confidence: 0.9,
            policy_version: "p1".into(),
            model_versions: vec![("xgboost".into(), "v3".into())],
            reason: "scale out to 6 replicas".into(),
        };
        let mut buf = Vec::new();
        r.encode_framed(&mut buf);
        let back = Recommendation::decode(&buf).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.action_symbol(), "SCALE_OUT");
        assert!(Recommendation::decode(&buf[..buf.len() - 2]).is_err());
    }

    #[test]
    fn ids_are_deterministic_and_distinguish_their_inputs() {
        let a = recommendation_id("e", 1, "decision", "p1");
        assert_eq!(a, recommendation_id("e", 1, "decision", "p1"));
        assert_ne!(a, recommendation_id("e", 2, "decision", "p1"));
        assert_ne!(a, recommendation_id("e", 1, "rebalance", "p1"));
        assert_ne!(a, recommendation_id("e", 1, "decision", "p2"));
        assert_ne!(
            recommendation_id("ab", 1, "c", "p"),
            recommendation_id("a", 1, "bc", "p")
        );
    }
}
