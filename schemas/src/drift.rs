//! The `drift.alerts` record: hand-written encoder for the drift monitor, reference decoder for
//! readers (the retrainer, tools, tests).

use apache_avro::types::Value;

use crate::avro::{write_block, write_f64, write_int, write_long, write_opt, write_str};
use crate::generic::decode_fields;
use crate::{framing, Catalogue, DecodeError};

pub const SUBJECT: &str = "drift.alerts-value";

/// What drifted (the schema's `DriftKind`, in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DriftKind {
    #[default]
    FeatureDistribution,
    ModelError,
}

impl DriftKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::FeatureDistribution => "FEATURE_DISTRIBUTION",
            DriftKind::ModelError => "MODEL_ERROR",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Severity {
    Info,
    #[default]
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "INFO",
            Severity::Warning => "WARNING",
            Severity::Critical => "CRITICAL",
        }
    }
}

/// Where an alert is in its episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlertState {
    #[default]
    Open,
    Update,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Open => "OPEN",
            AlertState::Update => "UPDATE",
            AlertState::Resolved => "RESOLVED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct DriftAlert {
    pub alert_id: String,
    pub entity_id: Option<String>,
    pub ts_ms: i64,
    pub kind: DriftKind,
    pub subject: String,
    pub statistic: String,
    pub value: f64,
    pub threshold: f64,
    pub severity: Severity,
    pub model_version: Option<String>,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub state: AlertState,
    pub scope: Option<String>,
    /// Sorted by name.
    pub details: Vec<(String, f64)>,
}

impl DriftAlert {
    pub fn detail(&self, name: &str) -> Option<f64> {
        self.details.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }

    /// Appends the framed record (latest schema version) to `out`.
    pub fn encode_framed(&self, out: &mut Vec<u8>) {
        let id = Catalogue::builtin().latest(SUBJECT).map(|e| e.id).unwrap_or(0);
        framing::frame(id, out);
        write_str(out, &self.alert_id);
        write_opt(out, self.entity_id.as_deref(), write_str);
        write_long(out, self.ts_ms);
        write_int(out, self.kind as i32);
        write_str(out, &self.subject);
        write_str(out, &self.statistic);
        write_f64(out, self.value);
        write_f64(out, self.threshold);
        write_int(out, self.severity as i32);
        write_opt(out, self.model_version.as_deref(), write_str);
        write_long(out, self.window_start_ms);
        write_long(out, self.window_end_ms);
        write_int(out, self.state as i32);
        write_opt(out, self.scope.as_deref(), write_str);
        write_block(out, self.details.iter(), |o, (k, v)| {
            write_str(o, k);
            write_f64(o, *v);
        });
    }

    /// Decodes any version of the schema (v1 records have no scope and no details).
    pub fn decode(payload: &[u8]) -> Result<DriftAlert, DecodeError> {
        let mut a = DriftAlert::default();
        let bad = |field: &'static str, i: u32| DecodeError::Field {
            field,
            detail: format!("enum index {i} out of range"),
        };
        for (name, v) in decode_fields(SUBJECT, payload)? {
            match (name.as_str(), v) {
                ("alert_id", Value::String(s)) => a.alert_id = s,
                ("entity_id", Value::String(s)) => a.entity_id = Some(s),
                ("ts_ms", Value::Long(x) | Value::TimestampMillis(x)) => a.ts_ms = x,
                ("kind", Value::Enum(i, _)) => {
                    a.kind = match i {
                        0 => DriftKind::FeatureDistribution,
                        1 => DriftKind::ModelError,
                        _ => return Err(bad("kind", i)),
                    }
                }
                ("subject", Value::String(s)) => a.subject = s,
                ("statistic", Value::String(s)) => a.statistic = s,
                ("value", Value::Double(x)) => a.value = x,
                ("threshold", Value::Double(x)) => a.threshold = x,
                ("severity", Value::Enum(i, _)) => {
                    a.severity = match i {
                        0 => Severity::Info,
                        1 => Severity::Warning,
                        2 => Severity::Critical,
                        _ => return Err(bad("severity", i)),
                    }
                }
                ("model_version", Value::String(s)) => a.model_version = Some(s),
                ("window_start_ms", Value::Long(x)) => a.window_start_ms = x,
                ("window_end_ms", Value::Long(x)) => a.window_end_ms = x,
                ("state", Value::Enum(i, _)) => {
                    a.state = match i {
                        0 => AlertState::Open,
                        1 => AlertState::Update,
                        2 => AlertState::Resolved,
                        _ => return Err(bad("state", i)),
                    }
                }
                ("scope", Value::String(s)) => a.scope = Some(s),
                ("details", Value::Map(m)) => {
                    let mut d: Vec<(String, f64)> = m
                        .into_iter()
                        .filter_map(|(k, v)| match v {
                            Value::Double(x) => Some((k, x)),
                            _ => None,
                        })
                        .collect();
                    d.sort_by(|x, y| x.0.cmp(&y.0));
                    a.details = d;
                }
                _ => {}
            }
        }
        Ok(a)
    }
}

/// Deterministic id of a drift episode: the same detector (kind, subject, scope), model version
/// and episode start always give the same id, so a replay or a repeated UPDATE does not make a
/// new alert.
pub fn alert_id(kind: DriftKind, subject: &str, scope: &str, model_version: &str, opened_ms: i64) -> String {
    let mut key = Vec::with_capacity(subject.len() + scope.len() + model_version.len() + 24);
    key.extend_from_slice(kind.as_str().as_bytes());
    for part in [subject, scope, model_version] {
        key.push(0);
        key.extend_from_slice(part.as_bytes());
    }
    let h = xxhash_rust::xxh3::xxh3_128_with_seed(&key, opened_ms as u64);
    format!("{h:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DriftAlert {
        DriftAlert {
            alert_id: alert_id(DriftKind::ModelError, "cpu@15m", "web-1", "v1", 1_000),
            entity_id: Some("web-1".into()),
            ts_ms: 1_700_000_000_000,
            kind: DriftKind::ModelError,
            subject: "cpu@15m".into(),
            statistic: "page_hinkley".into(),
            value: 31.5,
            threshold: 25.0,
            severity: Severity::Critical,
            model_version: Some("v1".into()),
            window_start_ms: 1_699_999_000_000,
            window_end_ms: 1_700_000_000_000,
            state: AlertState::Update,
            scope: Some("web-1".into()),
            details: vec![("live_mae".into(), 0.2), ("ratio".into(), 2.5)],
        }
    }

    #[test]
    fn alert_round_trips_through_the_reference_reader() {
        let a = sample();
        let mut buf = Vec::new();
        a.encode_framed(&mut buf);
        assert_eq!(DriftAlert::decode(&buf).unwrap(), a);
        assert_eq!(a.detail("ratio"), Some(2.5));
    }

    #[test]
    fn v1_alerts_still_decode() {
        // A v1 datum: the fields up to `state`, written with id 1401.
        let mut buf = Vec::new();
        framing::frame(1401, &mut buf);
        write_str(&mut buf, "id");
        write_opt(&mut buf, None::<&str>, write_str);
        write_long(&mut buf, 5);
        write_int(&mut buf, 0);
        write_str(&mut buf, "cpu_now");
        write_str(&mut buf, "psi");
        write_f64(&mut buf, 0.4);
        write_f64(&mut buf, 0.2);
        write_int(&mut buf, 1);
        write_opt(&mut buf, Some("v1"), write_str);
        write_long(&mut buf, 1);
        write_long(&mut buf, 2);
        write_int(&mut buf, 0);
        let a = DriftAlert::decode(&buf).unwrap();
        assert_eq!(a.subject, "cpu_now");
        assert_eq!(a.kind, DriftKind::FeatureDistribution);
        assert!(a.details.is_empty() && a.scope.is_none());
    }

    #[test]
    fn ids_are_stable_and_distinguish_episodes() {
        let a = alert_id(DriftKind::ModelError, "cpu@15m", "web-1", "v1", 1_000);
        assert_eq!(a, alert_id(DriftKind::ModelError, "cpu@15m", "web-1", "v1", 1_000));
        assert_ne!(a, alert_id(DriftKind::ModelError, "cpu@15m", "web-1", "v1", 2_000));
        assert_ne!(a, alert_id(DriftKind::ModelError, "cpu@15m", "web-2", "v1", 1_000));
        assert_ne!(a, alert_id(DriftKind::FeatureDistribution, "cpu@15m", "web-1", "v1", 1_000));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(DriftAlert::decode(&[0, 0, 0, 5, 122, 1, 2]).is_err());
        assert!(DriftAlert::decode(b"").is_err());
    }
}
