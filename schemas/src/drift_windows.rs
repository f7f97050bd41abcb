//! The `drift.windows` record: the changelog of the drift monitor's feature-distribution
//! windows, one record per features partition (compacted by `<topic>:<partition>`). Hand-written
//! encoder, reference decoder: the monitor reads the changelog only when it is assigned a
//! partition.

use apache_avro::types::Value;

use crate::avro::{write_block, write_int, write_long, write_opt, write_str};
use crate::generic::{decode_fields, field, field_count as count, field_long as long, union_value as opt};
use crate::{framing, Catalogue, DecodeError};

pub const SUBJECT: &str = "drift.windows-value";

/// One features partition's counts in one open window.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WindowCounts {
    pub start_ms: i64,
    /// Per watched feature (in [`FeatureWindowsState::features`] order), values per reference bin.
    pub counts: Vec<Vec<u64>>,
    /// Per watched feature, values missing or not finite.
    pub missing: Vec<u64>,
}

/// One features partition's share of the open windows after its record at `applied_offset`,
/// with the instance's closed-window mark and open episodes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FeatureWindowsState {
    pub topic: String,
    pub partition: i32,
    pub model_version: String,
    pub feature_schema: String,
    pub window_ms: i64,
    pub applied_offset: i64,
    pub newest_ts_ms: Option<i64>,
    pub closed_until_ms: Option<i64>,
    pub features: Vec<String>,
    pub windows: Vec<WindowCounts>,
    /// `(feature, alert id)` of the open episodes.
    pub episodes: Vec<(String, String)>,
    /// The monitor instance that wrote the record (empty in version 1 records): closed marks are
    /// merged among one writer's records only.
    pub writer: String,
}

impl FeatureWindowsState {
    /// The changelog key: `<topic>:<partition>`.
    pub fn key(topic: &str, partition: i32) -> String {
        format!("{topic}:{partition}")
    }

    /// Appends the framed record to `out`.
    pub fn encode_framed(&self, out: &mut Vec<u8>) {
        let id = Catalogue::builtin().latest(SUBJECT).map(|e| e.id).unwrap_or(0);
        framing::frame(id, out);
        write_str(out, &self.topic);
        write_int(out, self.partition);
        write_str(out, &self.model_version);
        write_str(out, &self.feature_schema);
        write_long(out, self.window_ms);
        write_long(out, self.applied_offset);
        write_opt(out, self.newest_ts_ms, write_long);
        write_opt(out, self.closed_until_ms, write_long);
        write_block(out, self.features.iter(), |o, f| write_str(o, f));
        write_block(out, self.windows.iter(), |o, w| {
            write_long(o, w.start_ms);
            write_block(o, w.counts.iter(), |o, c| write_block(o, c.iter(), |o, n| write_long(o, *n as i64)));
            write_block(o, w.missing.iter(), |o, n| write_long(o, *n as i64));
        });
        write_block(out, self.episodes.iter(), |o, (f, id)| {
            write_str(o, f);
            write_str(o, id);
        });
        write_str(out, &self.writer);
    }

    /// Decodes a framed record. A record that does not decode, or whose windows do not hold one
    /// count list per feature, is an error (the caller starts that partition's windows afresh).
    pub fn decode(payload: &[u8]) -> Result<FeatureWindowsState, DecodeError> {
        let mut s = FeatureWindowsState::default();
        for (name, v) in decode_fields(SUBJECT, payload)? {
            match (name.as_str(), v) {
                ("topic", Value::String(x)) => s.topic = x,
                ("partition", Value::Int(x)) => s.partition = x,
                ("model_version", Value::String(x)) => s.model_version = x,
                ("feature_schema", Value::String(x)) => s.feature_schema = x,
                ("writer", Value::String(x)) => s.writer = x,
                ("window_ms", v) => s.window_ms = long(&v, "window_ms")?,
                ("applied_offset", v) => s.applied_offset = long(&v, "applied_offset")?,
                ("newest_ts_ms", v) => s.newest_ts_ms = opt(v).map(|v| long(&v, "newest_ts_ms")).transpose()?,
                ("closed_until_ms", v) => s.closed_until_ms = opt(v).map(|v| long(&v, "closed_until_ms")).transpose()?,
                ("features", Value::Array(items)) => {
                    for item in items {
                        let Value::String(f) = item else {
                            return Err(field("features", "not a string"));
                        };
                        s.features.push(f);
                    }
                }
                ("windows", Value::Array(items)) => {
                    for item in items {
                        let Value::Record(fields) = item else {
                            return Err(field("windows", "not a record"));
                        };
                        s.windows.push(window(fields)?);
                    }
                }
                ("episodes", Value::Array(items)) => {
                    for item in items {
                        let Value::Record(fields) = item else {
                            return Err(field("episodes", "not a record"));
                        };
                        let (mut f, mut id) = (String::new(), String::new());
                        for (k, v) in fields {
                            match (k.as_str(), v) {
                                ("feature", Value::String(x)) => f = x,
                                ("alert_id", Value::String(x)) => id = x,
                                _ => {}
                            }
                        }
                        s.episodes.push((f, id));
                    }
                }
                _ => {}
            }
        }
        if s.topic.is_empty() {
            return Err(field("topic", "empty"));
        }
        if s.window_ms <= 0 {
            return Err(field("window_ms", format!("{} is not a window length", s.window_ms)));
        }
        let n = s.features.len();
        if let Some(w) = s.windows.iter().find(|w| w.counts.len() != n || w.missing.len() != n) {
            return Err(field(
                "windows.counts",
                format!("window at {} has {} count lists and {} missing counts for {n} features", w.start_ms, w.counts.len(), w.missing.len()),
            ));
        }
        Ok(s)
    }
}

fn counts(v: Value, name: &'static str) -> Result<Vec<u64>, DecodeError> {
    let Value::Array(items) = v else {
        return Err(field(name, "not an array"));
    };
    items.iter().map(|x| count(x, name)).collect()
}

fn window(fields: Vec<(String, Value)>) -> Result<WindowCounts, DecodeError> {
    let mut w = WindowCounts::default();
    for (k, v) in fields {
        match k.as_str() {
            "start_ms" => w.start_ms = long(&v, "windows.start_ms")?,
            "counts" => {
                let Value::Array(items) = v else {
                    return Err(field("windows.counts", "not an array"));
                };
                w.counts = items.into_iter().map(|c| counts(c, "windows.counts")).collect::<Result<_, _>>()?;
            }
            "missing" => w.missing = counts(v, "windows.missing")?,
            _ => {}
        }
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FeatureWindowsState {
        FeatureWindowsState {
            topic: "features".into(),
            partition: 3,
            model_version: "v7".into(),
            feature_schema: "fs-2".into(),
            window_ms: 3_600_000,
            applied_offset: 98_765_432_101,
            newest_ts_ms: Some(1_700_003_599_000),
            closed_until_ms: Some(1_700_000_000_000),
            features: vec!["cpu_mean_1h".into(), "mem_last".into()],
            windows: vec![
                WindowCounts { start_ms: 1_700_000_000_000, counts: vec![vec![0, 5, 9_000_000], vec![1, 2]], missing: vec![0, 4] },
                WindowCounts { start_ms: 1_700_003_600_000, counts: vec![vec![3, 0, 0], vec![0, 0]], missing: vec![0, 0] },
            ],
            episodes: vec![("mem_last".into(), "cd".repeat(16))],
            writer: "0123456789abcdef".into(),
        }
    }

    #[test]
    fn round_trips_through_the_reference_reader() {
        let s = sample();
        let mut buf = Vec::new();
        s.encode_framed(&mut buf);
        assert_eq!(&buf[1..5], &1702u32.to_be_bytes(), "pinned id");
        assert_eq!(FeatureWindowsState::decode(&buf).unwrap(), s);
        // A partition that has seen nothing yet: no clock, no mark, no windows.
        let empty = FeatureWindowsState { newest_ts_ms: None, closed_until_ms: None, windows: vec![], episodes: vec![], ..sample() };
        let mut buf = Vec::new();
        empty.encode_framed(&mut buf);
        assert_eq!(FeatureWindowsState::decode(&buf).unwrap(), empty);
        assert_eq!(FeatureWindowsState::key("features", 3), "features:3");
    }

    /// A record of version 1 (an earlier monitor's) reads with an empty writer.
    #[test]
    fn version_1_records_read_with_no_writer() {
        let s = FeatureWindowsState { writer: String::new(), ..sample() };
        let mut buf = Vec::new();
        s.encode_framed(&mut buf);
        // Version 2 is version 1 with the writer appended: here one byte, the empty string.
        assert_eq!(buf.pop(), Some(0));
        buf[1..5].copy_from_slice(&1701u32.to_be_bytes());
        assert_eq!(FeatureWindowsState::decode(&buf).unwrap(), s);
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        let mut buf = Vec::new();
        sample().encode_framed(&mut buf);
        for cut in [5, 9, buf.len() / 2, buf.len() - 1] {
            assert!(FeatureWindowsState::decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = sample();
        bad.windows[1].counts.pop();
        let mut buf = Vec::new();
        bad.encode_framed(&mut buf);
        let e = FeatureWindowsState::decode(&buf).unwrap_err();
        assert!(e.to_string().contains("windows.counts"), "{e}");
        let mut bad = sample();
        bad.window_ms = 0;
        let mut buf = Vec::new();
        bad.encode_framed(&mut buf);
        assert!(FeatureWindowsState::decode(&buf).unwrap_err().to_string().contains("window_ms"));
    }
}
