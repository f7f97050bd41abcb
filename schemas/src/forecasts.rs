//! The `forecasts` record (hand-written encoder for the scorer, reference decoder for readers)
//! and the `models` topic's model events.

use apache_avro::types::Value;

use crate::avro::{write_block, write_f64, write_int, write_long, write_opt, write_str};
use crate::generic::{decode_fields, string_map};
use crate::{framing, Catalogue, DecodeError};

pub const SUBJECT: &str = "forecasts-value";
pub const MODELS_SUBJECT: &str = "models-value";

/// The metrics a forecast point can be about (the schema's `Metric` enum, in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Cpu,
    Memory,
    Network,
    Disk,
}

impl Metric {
    pub(crate) const SYMBOLS: [&'static str; 4] = ["CPU", "MEMORY", "NETWORK", "DISK"];

    /// From the short names the models use (`cpu`, `mem`, `net`, `disk`).
    pub fn from_short(s: &str) -> Option<Metric> {
        match s {
            "cpu" => Some(Metric::Cpu),
            "mem" => Some(Metric::Memory),
            "net" => Some(Metric::Network),
            "disk" => Some(Metric::Disk),
            _ => None,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub fn symbol(self) -> &'static str {
        Self::SYMBOLS[self.index()]
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ForecastPoint {
    pub metric: Metric,
    pub horizon_min: i32,
    pub p50: f64,
    pub p90: f64,
    /// `family/version` of the model that produced the point.
    pub model: String,
}

/// What was observed at the forecast's event time (schema v2; absent in v1 records).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Observed {
    pub cpu_util: Option<f64>,
    pub mem_util: Option<f64>,
    pub net_bps: Option<f64>,
    /// Provisioned vCPUs across replicas.
    pub cpu_cores: Option<f64>,
    /// Provisioned memory in bytes across replicas.
    pub mem_bytes: Option<f64>,
    pub replicas: Option<i32>,
    pub cost_per_hour: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Forecast {
    pub event_id: String,
    pub entity_id: String,
    pub ts_ms: i64,
    pub service: Option<String>,
    pub cluster: Option<String>,
    pub points: Vec<ForecastPoint>,
    pub scale_event_prob: Option<f64>,
    /// Model family -> version used for this forecast.
    pub model_versions: Vec<(String, String)>,
    pub observed: Observed,
}

impl Forecast {
    /// The points of the primary model: the first point's model, whose points come first.
    /// The scorer lists the version's primary (XGBoost) forecasts before the other models'
    /// (LSTM, GRU), so a consumer that acts on one forecast per metric and horizon (the
    /// recommender, the drift monitor) reads these; the sink keeps every point.
    pub fn primary_points(&self) -> impl Iterator<Item = &ForecastPoint> {
        let model = self.points.first().map(|p| p.model.as_str());
        self.points.iter().take_while(move |p| Some(p.model.as_str()) == model)
    }

    pub fn encode_framed(&self, out: &mut Vec<u8>) {
        let id = Catalogue::builtin().latest(SUBJECT).map(|e| e.id).unwrap_or(0);
        framing::frame(id, out);
        write_str(out, &self.event_id);
        write_str(out, &self.entity_id);
        write_long(out, self.ts_ms);
        write_opt(out, self.service.as_deref(), write_str);
        write_opt(out, self.cluster.as_deref(), write_str);
        write_block(out, self.points.iter(), |o, p| {
            write_int(o, p.metric.index() as i32);
            write_int(o, p.horizon_min);
            write_f64(o, p.p50);
            write_f64(o, p.p90);
            write_str(o, &p.model);
        });
        write_opt(out, self.scale_event_prob, write_f64);
        write_block(out, self.model_versions.iter(), |o, (k, v)| {
            write_str(o, k);
            write_str(o, v);
        });
        let o = &self.observed;
        for v in [o.cpu_util, o.mem_util, o.net_bps, o.cpu_cores, o.mem_bytes] {
            write_opt(out, v, write_f64);
        }
        write_opt(out, o.replicas, write_int);
        write_opt(out, o.cost_per_hour, write_f64);
    }

    /// The point of `metric` at `horizon_min`, when the forecast has one.
    /// The primary model's point of `metric` at `horizon_min`.
    pub fn point(&self, metric: Metric, horizon_min: i32) -> Option<&ForecastPoint> {
        self.primary_points().find(|p| p.metric == metric && p.horizon_min == horizon_min)
    }

    pub fn decode(payload: &[u8]) -> Result<Forecast, DecodeError> {
        let mut f = Forecast::default();
        for (name, v) in decode_fields(SUBJECT, payload)? {
            match (name.as_str(), v) {
                ("event_id", Value::String(s)) => f.event_id = s,
                ("entity_id", Value::String(s)) => f.entity_id = s,
                ("ts_ms", Value::Long(x) | Value::TimestampMillis(x)) => f.ts_ms = x,
                ("service", Value::String(s)) => f.service = Some(s),
                ("cluster", Value::String(s)) => f.cluster = Some(s),
                ("scale_event_prob", Value::Double(x)) => f.scale_event_prob = Some(x),
                ("cpu_util", Value::Double(x)) => f.observed.cpu_util = Some(x),
                ("mem_util", Value::Double(x)) => f.observed.mem_util = Some(x),
                ("net_bps", Value::Double(x)) => f.observed.net_bps = Some(x),
                ("cpu_cores", Value::Double(x)) => f.observed.cpu_cores = Some(x),
                ("mem_bytes", Value::Double(x)) => f.observed.mem_bytes = Some(x),
                ("replicas", Value::Int(x)) => f.observed.replicas = Some(x),
                ("cost_per_hour", Value::Double(x)) => f.observed.cost_per_hour = Some(x),
                ("model_versions", Value::Map(m)) => f.model_versions = string_map(m),
                ("points", Value::Array(items)) => {
                    for item in items {
                        let Value::Record(fields) = item else { continue };
                        let mut p = ForecastPoint {
                            metric: Metric::Cpu,
                            horizon_min: 0,
                            p50: f64::NAN,
                            p90: f64::NAN,
                            model: String::new(),
                        };
                        for (k, v) in fields {
                            match (k.as_str(), v) {
                                ("metric", Value::Enum(i, _)) => {
                                    p.metric = [Metric::Cpu, Metric::Memory, Metric::Network, Metric::Disk]
                                        [(i as usize).min(3)]
                                }
                                ("horizon_min", Value::Int(x)) => p.horizon_min = x,
                                ("p50", Value::Double(x)) => p.p50 = x,
                                ("p90", Value::Double(x)) => p.p90 = x,
                                ("model", Value::String(s)) => p.model = s,
                                _ => {}
                            }
                        }
                        f.points.push(p);
                    }
                }
                _ => {}
            }
        }
        Ok(f)
    }
}

/// What happened to a model version (the schema's `ModelEventKind`, in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelEventKind {
    Registered,
    Promoted,
    Rejected,
    RolledBack,
    Retired,
}

impl ModelEventKind {
    const ALL: [ModelEventKind; 5] = [
        ModelEventKind::Registered,
        ModelEventKind::Promoted,
        ModelEventKind::Rejected,
        ModelEventKind::RolledBack,
        ModelEventKind::Retired,
    ];
}

/// An event of the `models` topic (keyed and compacted by model name).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEvent {
    pub event_id: String,
    pub model_name: String,
    pub version: String,
    pub ts_ms: i64,
    pub kind: ModelEventKind,
    /// Where the version's artifacts are: a directory path or a `file://` URI.
    pub artifact_uri: String,
    pub feature_set: String,
    pub metrics: Vec<(String, f64)>,
    pub reason: Option<String>,
}

impl ModelEvent {
    pub fn encode_framed(&self, out: &mut Vec<u8>) {
        let id = Catalogue::builtin().latest(MODELS_SUBJECT).map(|e| e.id).unwrap_or(0);
        framing::frame(id, out);
        write_str(out, &self.event_id);
        write_str(out, &self.model_name);
        write_str(out, &self.version);
        write_long(out, self.ts_ms);
        write_int(out, self.kind as i32);
        write_str(out, &self.artifact_uri);
        write_str(out, &self.feature_set);
        write_block(out, self.metrics.iter(), |o, (k, v)| {
            write_str(o, k);
            write_f64(o, *v);
        });
        write_opt(out, self.reason.as_deref(), write_str);
    }

    pub fn decode(payload: &[u8]) -> Result<ModelEvent, DecodeError> {
        let mut e = ModelEvent {
            event_id: String::new(),
            model_name: String::new(),
            version: String::new(),
            ts_ms: 0,
            kind: ModelEventKind::Registered,
            artifact_uri: String::new(),
            feature_set: String::new(),
            metrics: Vec::new(),
            reason: None,
        };
        for (name, v) in decode_fields(MODELS_SUBJECT, payload)? {
            match (name.as_str(), v) {
                ("event_id", Value::String(s)) => e.event_id = s,
                ("model_name", Value::String(s)) => e.model_name = s,
                ("version", Value::String(s)) => e.version = s,
                ("ts_ms", Value::Long(x) | Value::TimestampMillis(x)) => e.ts_ms = x,
                ("kind", Value::Enum(i, _)) => {
                    e.kind = *ModelEventKind::ALL.get(i as usize).ok_or(DecodeError::Field {
                        field: "kind",
                        detail: format!("enum index {i}"),
                    })?
                }
                ("artifact_uri", Value::String(s)) => e.artifact_uri = s,
                ("feature_set", Value::String(s)) => e.feature_set = s,
                ("metrics", Value::Map(m)) => {
                    let mut v: Vec<(String, f64)> = m
                        .into_iter()
                        .filter_map(|(k, v)| match v {
                            Value::Double(d) => Some((k, d)),
                            _ => None,
                        })
                        .collect();
                    v.sort_by(|a, b| a.0.cmp(&b.0));
                    e.metrics = v;
                }
                ("reason", Value::String(s)) => e.reason = Some(s),
                _ => {}
            }
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forecast_round_trips_through_the_reference_reader() {
        let f = Forecast {
            event_id: "e1".into(),
            entity_id: "vm-1".into(),
            ts_ms: 1_700_000_000_000,
            service: Some("svc".into()),
            cluster: None,
            points: vec![
                ForecastPoint { metric: Metric::Cpu, horizon_min: 15, p50: 0.4, p90: 0.6, model: "xgboost/v1".into() },
                ForecastPoint { metric: Metric::Network, horizon_min: 30, p50: 1e6, p90: 2e6, model: "xgboost/v1".into() },
            ],
            scale_event_prob: Some(0.03),
            model_versions: vec![("xgboost".into(), "v1".into())],
            observed: Observed {
                cpu_util: Some(0.35),
                mem_util: None,
                net_bps: Some(1.5e6),
                cpu_cores: Some(8.0),
                mem_bytes: Some(3.2e10),
                replicas: Some(4),
                cost_per_hour: Some(1.25),
            },
        };
        let mut buf = Vec::new();
        f.encode_framed(&mut buf);
        assert_eq!(u32::from_be_bytes(buf[1..5].try_into().unwrap()), 1202, "written as v2");
        assert_eq!(Forecast::decode(&buf).unwrap(), f);
        assert_eq!(f.point(Metric::Cpu, 15).map(|p| p.p90), Some(0.6));
        assert!(f.point(Metric::Cpu, 30).is_none());
        // Not a forecast: a clear error.
        assert!(Forecast::decode(&buf[..buf.len() - 3]).is_err());
        assert!(ModelEvent::decode(&buf).is_err());
    }

    #[test]
    fn the_primary_points_are_the_first_models() {
        let pt = |metric, model: &str, p50| ForecastPoint { metric, horizon_min: 15, p50, p90: p50, model: model.into() };
        let f = Forecast {
            points: vec![
                pt(Metric::Cpu, "xgboost/v1", 0.4),
                pt(Metric::Memory, "xgboost/v1", 0.5),
                pt(Metric::Cpu, "lstm/v1", 0.7),
                pt(Metric::Memory, "gru/v1", 0.8),
            ],
            ..Forecast::default()
        };
        let primary: Vec<f64> = f.primary_points().map(|p| p.p50).collect();
        assert_eq!(primary, [0.4, 0.5]);
        assert_eq!(f.point(Metric::Cpu, 15).map(|p| p.p50), Some(0.4));
        assert_eq!(Forecast::default().primary_points().count(), 0);
    }

    #[test]
    fn a_v1_forecast_still_decodes_with_nothing_observed() {
        let v1 = &Catalogue::builtin().versions(SUBJECT).next().unwrap().schema;
        let rec = apache_avro::types::Value::Record(vec![
            ("event_id".into(), Value::String("e".into())),
            ("entity_id".into(), Value::String("vm".into())),
            ("ts_ms".into(), Value::TimestampMillis(7)),
            ("service".into(), Value::Union(0, Box::new(Value::Null))),
            ("cluster".into(), Value::Union(0, Box::new(Value::Null))),
            ("points".into(), Value::Array(vec![])),
            ("scale_event_prob".into(), Value::Union(0, Box::new(Value::Null))),
            ("model_versions".into(), Value::Map(Default::default())),
        ]);
        let mut buf = Vec::new();
        framing::frame(1201, &mut buf);
        let datum = apache_avro::writer::datum::GenericDatumWriter::builder(v1)
            .build()
            .unwrap()
            .write_value_to_vec(rec)
            .unwrap();
        buf.extend(datum);
        let f = Forecast::decode(&buf).unwrap();
        assert_eq!(f.entity_id, "vm");
        assert_eq!(f.observed, Observed::default());
    }

    #[test]
    fn model_event_round_trips() {
        let e = ModelEvent {
            event_id: "x".into(),
            model_name: "xgboost".into(),
            version: "v2".into(),
            ts_ms: 5,
            kind: ModelEventKind::Promoted,
            artifact_uri: "/models/v2".into(),
            feature_set: "fs1-abc".into(),
            metrics: vec![("mase_cpu_h3".into(), 0.4)],
            reason: Some("better".into()),
        };
        let mut buf = Vec::new();
        e.encode_framed(&mut buf);
        assert_eq!(ModelEvent::decode(&buf).unwrap(), e);
    }
}
