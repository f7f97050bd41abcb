//! The `drift.state` record: the changelog of the drift monitor's model-error detectors, one
//! record per entity (compacted by entity id). Hand-written encoder, reference decoder: the
//! monitor reads the changelog only when it is assigned a partition.

use apache_avro::types::Value;

use crate::avro::{write_block, write_f64, write_int, write_long, write_opt, write_str};
use crate::generic::{decode_fields, field, field_count as count, field_double as double, field_long as long, union_value as opt};
use crate::{framing, Catalogue, DecodeError, Metric};

pub const SUBJECT: &str = "drift.state-value";

/// A prediction waiting for its actual.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PendingPoint {
    pub target_slot: i64,
    pub head: i32,
    pub p50: f64,
}

/// An open drift episode of one head.
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodeState {
    pub alert_id: String,
    pub opened_ms: i64,
    pub last_emit_ms: i64,
    pub ph_statistic: f64,
}

/// The detectors of one head (metric, horizon) of one entity.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadState {
    pub metric: Metric,
    pub horizon_min: i32,
    pub ph_n: u64,
    pub ph_mean: f64,
    pub ph_cum: f64,
    pub ph_min: f64,
    pub live_mae: f64,
    pub live_n: u64,
    pub validation_mae: Option<f64>,
    pub baseline_mae: Option<f64>,
    pub baseline_sum: f64,
    pub errors: u64,
    pub alarm_at: Option<u64>,
    pub run_start_ms: i64,
    pub episode: Option<EpisodeState>,
}

/// One entity's model-error state after its forecast at `applied_offset`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DriftEntityState {
    pub entity_id: String,
    pub model_version: String,
    pub partition: i32,
    pub applied_offset: i64,
    pub last_ts_ms: i64,
    pub heads: Vec<HeadState>,
    pub pending: Vec<PendingPoint>,
}

impl DriftEntityState {
    /// Appends the framed record to `out`.
    pub fn encode_framed(&self, out: &mut Vec<u8>) {
        let id = Catalogue::builtin().latest(SUBJECT).map(|e| e.id).unwrap_or(0);
        framing::frame(id, out);
        write_str(out, &self.entity_id);
        write_str(out, &self.model_version);
        write_int(out, self.partition);
        write_long(out, self.applied_offset);
        write_long(out, self.last_ts_ms);
        write_block(out, self.heads.iter(), |o, h| {
            write_int(o, h.metric.index() as i32);
            write_int(o, h.horizon_min);
            write_long(o, h.ph_n as i64);
            write_f64(o, h.ph_mean);
            write_f64(o, h.ph_cum);
            write_f64(o, h.ph_min);
            write_f64(o, h.live_mae);
            write_long(o, h.live_n as i64);
            write_opt(o, h.validation_mae, write_f64);
            write_opt(o, h.baseline_mae, write_f64);
            write_f64(o, h.baseline_sum);
            write_long(o, h.errors as i64);
            write_opt(o, h.alarm_at.map(|a| a as i64), write_long);
            write_long(o, h.run_start_ms);
            write_opt(o, h.episode.as_ref(), |o, e| {
                write_str(o, &e.alert_id);
                write_long(o, e.opened_ms);
                write_long(o, e.last_emit_ms);
                write_f64(o, e.ph_statistic);
            });
        });
        write_block(out, self.pending.iter(), |o, p| {
            write_long(o, p.target_slot);
            write_int(o, p.head);
            write_f64(o, p.p50);
        });
    }

    /// Decodes a framed record; a record that does not decode, or whose pending points name a
    /// head it does not have, is an error (the caller starts that entity afresh).
    pub fn decode(payload: &[u8]) -> Result<DriftEntityState, DecodeError> {
        let mut s = DriftEntityState::default();
        for (name, v) in decode_fields(SUBJECT, payload)? {
            match (name.as_str(), v) {
                ("entity_id", Value::String(x)) => s.entity_id = x,
                ("model_version", Value::String(x)) => s.model_version = x,
                ("partition", Value::Int(x)) => s.partition = x,
                ("applied_offset", v) => s.applied_offset = long(&v, "applied_offset")?,
                ("last_ts_ms", v) => s.last_ts_ms = long(&v, "last_ts_ms")?,
                ("heads", Value::Array(items)) => {
                    for item in items {
                        let Value::Record(fields) = item else {
                            return Err(field("heads", "not a record"));
                        };
                        s.heads.push(head(fields)?);
                    }
                }
                ("pending", Value::Array(items)) => {
                    for item in items {
                        let Value::Record(fields) = item else {
                            return Err(field("pending", "not a record"));
                        };
                        let mut p = PendingPoint { target_slot: 0, head: 0, p50: f64::NAN };
                        for (k, v) in fields {
                            match (k.as_str(), v) {
                                ("target_slot", v) => p.target_slot = long(&v, "pending.target_slot")?,
                                ("head", Value::Int(x)) => p.head = x,
                                ("p50", v) => p.p50 = double(&v, "pending.p50")?,
                                _ => {}
                            }
                        }
                        s.pending.push(p);
                    }
                }
                _ => {}
            }
        }
        if s.entity_id.is_empty() {
            return Err(field("entity_id", "empty"));
        }
        if let Some(p) = s.pending.iter().find(|p| p.head < 0 || p.head as usize >= s.heads.len()) {
            return Err(field("pending.head", format!("head {} of {}", p.head, s.heads.len())));
        }
        Ok(s)
    }
}

fn head(fields: Vec<(String, Value)>) -> Result<HeadState, DecodeError> {
    let mut h = HeadState {
        metric: Metric::Cpu,
        horizon_min: 0,
        ph_n: 0,
        ph_mean: 0.0,
        ph_cum: 0.0,
        ph_min: 0.0,
        live_mae: f64::NAN,
        live_n: 0,
        validation_mae: None,
        baseline_mae: None,
        baseline_sum: 0.0,
        errors: 0,
        alarm_at: None,
        run_start_ms: 0,
        episode: None,
    };
    for (k, v) in fields {
        match k.as_str() {
            "metric" => match v {
                Value::Enum(i, _) if (i as usize) < Metric::SYMBOLS.len() => {
                    h.metric = [Metric::Cpu, Metric::Memory, Metric::Network, Metric::Disk][i as usize]
                }
                other => return Err(field("heads.metric", format!("{other:?}"))),
            },
            "horizon_min" => h.horizon_min = long(&v, "heads.horizon_min")? as i32,
            "ph_n" => h.ph_n = count(&v, "heads.ph_n")?,
            "ph_mean" => h.ph_mean = double(&v, "heads.ph_mean")?,
            "ph_cum" => h.ph_cum = double(&v, "heads.ph_cum")?,
            "ph_min" => h.ph_min = double(&v, "heads.ph_min")?,
            "live_mae" => h.live_mae = double(&v, "heads.live_mae")?,
            "live_n" => h.live_n = count(&v, "heads.live_n")?,
            "validation_mae" => h.validation_mae = opt(v).map(|v| double(&v, "heads.validation_mae")).transpose()?,
            "baseline_mae" => h.baseline_mae = opt(v).map(|v| double(&v, "heads.baseline_mae")).transpose()?,
            "baseline_sum" => h.baseline_sum = double(&v, "heads.baseline_sum")?,
            "errors" => h.errors = count(&v, "heads.errors")?,
            "alarm_at" => h.alarm_at = opt(v).map(|v| count(&v, "heads.alarm_at")).transpose()?,
            "run_start_ms" => h.run_start_ms = long(&v, "heads.run_start_ms")?,
            "episode" => {
                if let Some(Value::Record(fields)) = opt(v) {
                    let mut e = EpisodeState { alert_id: String::new(), opened_ms: 0, last_emit_ms: 0, ph_statistic: 0.0 };
                    for (k, v) in fields {
                        match (k.as_str(), v) {
                            ("alert_id", Value::String(x)) => e.alert_id = x,
                            ("opened_ms", v) => e.opened_ms = long(&v, "episode.opened_ms")?,
                            ("last_emit_ms", v) => e.last_emit_ms = long(&v, "episode.last_emit_ms")?,
                            ("ph_statistic", v) => e.ph_statistic = double(&v, "episode.ph_statistic")?,
                            _ => {}
                        }
                    }
                    h.episode = Some(e);
                }
            }
            _ => {}
        }
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DriftEntityState {
        let head = |metric, horizon_min, episode| HeadState {
            metric,
            horizon_min,
            ph_n: 17,
            ph_mean: 0.8,
            ph_cum: -3.25,
            ph_min: -4.5,
            live_mae: 0.031,
            live_n: 120,
            validation_mae: Some(0.05),
            baseline_mae: None,
            baseline_sum: 0.75,
            errors: 120,
            alarm_at: Some(99),
            run_start_ms: 1_700_000_300_000,
            episode,
        };
        DriftEntityState {
            entity_id: "vm-7".into(),
            model_version: "v3".into(),
            partition: 4,
            applied_offset: 123_456_789_012,
            last_ts_ms: 1_700_000_900_000,
            heads: vec![
                head(Metric::Cpu, 15, None),
                head(
                    Metric::Network,
                    30,
                    Some(EpisodeState { alert_id: "ab".repeat(16), opened_ms: 1, last_emit_ms: 2, ph_statistic: 21.5 }),
                ),
            ],
            pending: vec![
                PendingPoint { target_slot: 5_666_670, head: 0, p50: 0.42 },
                PendingPoint { target_slot: 5_666_673, head: 1, p50: 1.5e6 },
            ],
        }
    }

    #[test]
    fn round_trips_through_the_reference_reader() {
        let s = sample();
        let mut buf = Vec::new();
        s.encode_framed(&mut buf);
        assert_eq!(&buf[1..5], &1601u32.to_be_bytes(), "pinned id");
        assert_eq!(DriftEntityState::decode(&buf).unwrap(), s);
        // Before its first error a head's live MAE is NaN: it survives as NaN.
        let mut fresh = sample();
        fresh.heads[0].live_mae = f64::NAN;
        let mut buf = Vec::new();
        fresh.encode_framed(&mut buf);
        assert!(DriftEntityState::decode(&buf).unwrap().heads[0].live_mae.is_nan());
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        let mut buf = Vec::new();
        sample().encode_framed(&mut buf);
        for cut in [5, 9, buf.len() / 2, buf.len() - 1] {
            assert!(DriftEntityState::decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = sample();
        bad.pending[1].head = 2;
        let mut buf = Vec::new();
        bad.encode_framed(&mut buf);
        let e = DriftEntityState::decode(&buf).unwrap_err();
        assert!(e.to_string().contains("pending.head"), "{e}");
    }
}
