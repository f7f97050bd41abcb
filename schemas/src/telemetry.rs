//! The raw telemetry record: Avro (Confluent framing) or JSON on `telemetry.raw`, decoding
//! with schema resolution, a hand-written encoder for producers, and semantic validation.

use std::collections::HashMap;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::avro::{
    write_block, write_bool, write_f64, write_int, write_long, write_opt, write_str,
};
use crate::{framing, Catalogue, DecodeError, DlqReason};

pub const SUBJECT: &str = "telemetry.raw-value";

/// One telemetry sample. Utilizations are fractions in `[0, 1]`, throughputs bytes/s.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    pub entity_id: String,
    pub ts_ms: i64,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub cpu_util: Option<f64>,
    #[serde(default)]
    pub mem_util: Option<f64>,
    #[serde(default)]
    pub net_in_bps: Option<f64>,
    #[serde(default)]
    pub net_out_bps: Option<f64>,
    #[serde(default)]
    pub disk_read_bps: Option<f64>,
    #[serde(default)]
    pub disk_write_bps: Option<f64>,
    #[serde(default)]
    pub cpu_cores: Option<f64>,
    #[serde(default)]
    pub mem_bytes: Option<f64>,
    #[serde(default)]
    pub replicas: Option<i32>,
    #[serde(default)]
    pub cost_per_hour: Option<f64>,
    #[serde(default)]
    pub scale_event: Option<bool>,
    #[serde(default)]
    pub labels: Vec<(String, String)>,
}

/// JSON form: labels are an object, everything else as in Avro.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TelemetryJson {
    entity_id: String,
    ts_ms: i64,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    cpu_util: Option<f64>,
    #[serde(default)]
    mem_util: Option<f64>,
    #[serde(default)]
    net_in_bps: Option<f64>,
    #[serde(default)]
    net_out_bps: Option<f64>,
    #[serde(default)]
    disk_read_bps: Option<f64>,
    #[serde(default)]
    disk_write_bps: Option<f64>,
    #[serde(default)]
    cpu_cores: Option<f64>,
    #[serde(default)]
    mem_bytes: Option<f64>,
    #[serde(default)]
    replicas: Option<i32>,
    #[serde(default)]
    cost_per_hour: Option<f64>,
    #[serde(default)]
    scale_event: Option<bool>,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

impl Telemetry {
    /// Appends the Avro datum (without framing) for schema `telemetry.raw-value` v1.
    pub fn encode_datum(&self, out: &mut Vec<u8>) {
        write_str(out, &self.entity_id);
        write_long(out, self.ts_ms);
        write_opt(out, self.service.as_deref(), write_str);
        write_opt(out, self.cluster.as_deref(), write_str);
        for v in [
            self.cpu_util,
            self.mem_util,
            self.net_in_bps,
            self.net_out_bps,
            self.disk_read_bps,
            self.disk_write_bps,
            self.cpu_cores,
            self.mem_bytes,
        ] {
            write_opt(out, v, write_f64);
        }
        write_opt(out, self.replicas, write_int);
        write_opt(out, self.cost_per_hour, write_f64);
        write_opt(out, self.scale_event, write_bool);
        write_block(out, self.labels.iter(), |o, (k, v)| {
            write_str(o, k);
            write_str(o, v);
        });
    }

    /// Confluent-framed Avro with the built-in catalogue's id for the latest schema.
    pub fn encode_framed(&self, out: &mut Vec<u8>) {
        framing::frame(writer_id(), out);
        self.encode_datum(out);
    }

    pub fn to_json(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            let labels: serde_json::Map<String, serde_json::Value> = self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            obj.insert("labels".into(), serde_json::Value::Object(labels));
            obj.retain(|_, v| !v.is_null());
        }
        v.to_string()
    }

    /// Parses the JSON form accepted on `telemetry.raw`.
    pub fn from_json(bytes: &[u8]) -> Result<Telemetry, DecodeError> {
        let j: TelemetryJson = serde_json::from_slice(bytes).map_err(|e| {
            if e.is_data() {
                DecodeError::Field {
                    field: "json",
                    detail: e.to_string(),
                }
            } else {
                DecodeError::Json(e.to_string())
            }
        })?;
        Ok(Telemetry {
            entity_id: j.entity_id,
            ts_ms: j.ts_ms,
            service: j.service,
            cluster: j.cluster,
            cpu_util: j.cpu_util,
            mem_util: j.mem_util,
            net_in_bps: j.net_in_bps,
            net_out_bps: j.net_out_bps,
            disk_read_bps: j.disk_read_bps,
            disk_write_bps: j.disk_write_bps,
            cpu_cores: j.cpu_cores,
            mem_bytes: j.mem_bytes,
            replicas: j.replicas,
            cost_per_hour: j.cost_per_hour,
            scale_event: j.scale_event,
            labels: j.labels.into_iter().collect(),
        })
    }

    /// Semantic checks. Returns the reason and a readable detail for the DLQ.
    pub fn validate(
        &self,
        now_ms: i64,
        limits: &ValidationLimits,
    ) -> Result<(), (DlqReason, String)> {
        if self.entity_id.trim().is_empty() {
            return Err((DlqReason::EmptyEntity, "entity_id is empty".into()));
        }
        if self.entity_id.len() > limits.max_entity_id_len {
            return Err((
                DlqReason::OutOfRange,
                format!(
                    "entity_id has {} bytes, more than {}",
                    self.entity_id.len(),
                    limits.max_entity_id_len
                ),
            ));
        }
        if self.ts_ms < limits.min_ts_ms {
            return Err((
                DlqReason::TimestampPast,
                format!("ts_ms {} is before {}", self.ts_ms, limits.min_ts_ms),
            ));
        }
        if self.ts_ms > now_ms.saturating_add(limits.max_future_ms) {
            return Err((
                DlqReason::TimestampFuture,
                format!(
                    "ts_ms {} is {} s ahead of now, more than the allowed {} s",
                    self.ts_ms,
                    (self.ts_ms - now_ms) / 1000,
                    limits.max_future_ms / 1000
                ),
            ));
        }
        let fractions = [("cpu_util", self.cpu_util), ("mem_util", self.mem_util)];
        for (name, v) in fractions {
            if let Some(v) = v {
                check_finite(name, v)?;
                if !(0.0..=limits.max_utilization).contains(&v) {
                    return Err((
                        DlqReason::OutOfRange,
                        format!("{name} = {v} is outside [0, {}]", limits.max_utilization),
                    ));
                }
            }
        }
        let non_negative = [
            ("net_in_bps", self.net_in_bps),
            ("net_out_bps", self.net_out_bps),
            ("disk_read_bps", self.disk_read_bps),
            ("disk_write_bps", self.disk_write_bps),
            ("cpu_cores", self.cpu_cores),
            ("mem_bytes", self.mem_bytes),
            ("cost_per_hour", self.cost_per_hour),
        ];
        for (name, v) in non_negative {
            if let Some(v) = v {
                check_finite(name, v)?;
                if v < 0.0 {
                    return Err((DlqReason::OutOfRange, format!("{name} = {v} is negative")));
                }
            }
        }
        if let Some(r) = self.replicas {
            if r < 0 {
                return Err((DlqReason::OutOfRange, format!("replicas = {r} is negative")));
            }
        }
        let label_bytes: usize = self.labels.iter().map(|(k, v)| k.len() + v.len()).sum();
        if self.labels.len() > limits.max_labels || label_bytes > limits.max_label_bytes {
            return Err((
                DlqReason::OversizedLabels,
                format!(
                    "{} labels of {} bytes, limits are {} labels and {} bytes",
                    self.labels.len(),
                    label_bytes,
                    limits.max_labels,
                    limits.max_label_bytes
                ),
            ));
        }
        Ok(())
    }
}

fn check_finite(name: &str, v: f64) -> Result<(), (DlqReason, String)> {
    if v.is_finite() {
        Ok(())
    } else {
        Err((DlqReason::NotFinite, format!("{name} is {v}")))
    }
}

/// Limits applied by [`Telemetry::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationLimits {
    /// Earliest accepted event time (default 2000-01-01T00:00:00Z).
    pub min_ts_ms: i64,
    /// How far ahead of the wall clock an event may be.
    pub max_future_ms: i64,
    /// Upper bound of utilization fractions (a little above 1 tolerates burstable instances).
    pub max_utilization: f64,
    pub max_labels: usize,
    pub max_label_bytes: usize,
    pub max_entity_id_len: usize,
}

impl Default for ValidationLimits {
    fn default() -> Self {
        ValidationLimits {
            min_ts_ms: 946_684_800_000,
            max_future_ms: 24 * 3600 * 1000,
            max_utilization: 1.5,
            max_labels: 32,
            max_label_bytes: 4096,
            max_entity_id_len: 256,
        }
    }
}

fn writer_id() -> u32 {
    Catalogue::builtin()
        .latest(SUBJECT)
        .map(|e| e.id)
        .unwrap_or(0)
}

/// Decodes telemetry payloads: Confluent-framed Avro of any known writer schema (resolved to
/// the latest reader schema once per schema id), or JSON.
pub struct TelemetryDecoder {
    /// Id of the built-in v1 schema, decoded by the hand-written fast path.
    fast_id: u32,
    reader_schema: &'static Schema,
    readers: HashMap<u32, GenericDatumReader<'static>>,
}

impl std::fmt::Debug for TelemetryDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryDecoder")
            .field("known_ids", &self.readers.len())
            .finish()
    }
}

impl Default for TelemetryDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl TelemetryDecoder {
    pub fn new() -> Self {
        let cat = Catalogue::builtin();
        let reader_schema = &cat
            .latest(SUBJECT)
            .expect("telemetry subject in catalogue")
            .schema;
        let fast_id = cat
            .versions(SUBJECT)
            .find(|e| e.version == 1)
            .map_or(u32::MAX, |e| e.id);
        let mut d = TelemetryDecoder {
            fast_id,
            reader_schema,
            readers: HashMap::new(),
        };
        for e in cat.versions(SUBJECT) {
            // Built-in schemas are validated by the crate's tests.
            let _ = d.add_writer_schema(e.id, &e.schema);
        }
        d
    }

    /// Registers a writer schema fetched from a schema registry. The schema is kept for the
    /// life of the process (ids are immutable in a registry, and there are few of them).
    pub fn add_writer_schema(&mut self, id: u32, schema: &Schema) -> Result<(), DecodeError> {
        let writer: &'static Schema = Box::leak(Box::new(schema.clone()));
        let reader = GenericDatumReader::builder(writer)
            .reader_schema(self.reader_schema)
            .build()
            .map_err(|e| DecodeError::Avro {
                id,
                detail: e.to_string(),
            })?;
        self.readers.insert(id, reader);
        Ok(())
    }

    pub fn knows(&self, id: u32) -> bool {
        self.readers.contains_key(&id)
    }

    /// Decodes with the reference `apache-avro` reader only (no fast path); for tests and
    /// benchmarks.
    pub fn decode_reference(&self, payload: &[u8]) -> Result<Telemetry, DecodeError> {
        self.decode_framed_reference(framing::unframe(payload)?)
    }

    pub fn decode(&self, payload: &[u8]) -> Result<Telemetry, DecodeError> {
        match payload.first() {
            Some(b'{') => return Telemetry::from_json(payload),
            Some(c) if c.is_ascii_whitespace() => return Telemetry::from_json(payload),
            _ => {}
        }
        let framed = framing::unframe(payload)?;
        if framed.schema_id == self.fast_id {
            return decode_v1(framed.datum)
                .map_err(|detail| DecodeError::Avro {
                    id: framed.schema_id,
                    detail,
                })
                .and_then(|(t, rest)| {
                    if rest == 0 {
                        Ok(t)
                    } else {
                        Err(DecodeError::TrailingBytes {
                            id: framed.schema_id,
                            extra: rest,
                        })
                    }
                });
        }
        self.decode_framed_reference(framed)
    }

    fn decode_framed_reference(
        &self,
        framed: framing::Framed<'_>,
    ) -> Result<Telemetry, DecodeError> {
        let reader = self
            .readers
            .get(&framed.schema_id)
            .ok_or(DecodeError::UnknownSchemaId(framed.schema_id))?;
        let mut cursor = framed.datum;
        let value = reader
            .read_value(&mut cursor)
            .map_err(|e| DecodeError::Avro {
                id: framed.schema_id,
                detail: e.to_string(),
            })?;
        if !cursor.is_empty() {
            return Err(DecodeError::TrailingBytes {
                id: framed.schema_id,
                extra: cursor.len(),
            });
        }
        from_value(value)
    }
}

/// Hand-written reader of the v1 datum (the hot path: `apache-avro` builds a `Value` tree per
/// record). Returns the record and the number of unread bytes. Property tests check it against
/// the reference reader.
fn decode_v1(datum: &[u8]) -> Result<(Telemetry, usize), String> {
    let mut c = Cursor { buf: datum, pos: 0 };
    let entity_id = c.string()?;
    let ts_ms = c.long()?;
    let service = c.opt(Cursor::string)?;
    let cluster = c.opt(Cursor::string)?;
    let mut doubles = [None; 8];
    for d in &mut doubles {
        *d = c.opt(Cursor::double)?;
    }
    let replicas = c.opt(Cursor::int)?;
    let cost_per_hour = c.opt(Cursor::double)?;
    let scale_event = c.opt(Cursor::boolean)?;
    // A map keeps the last value of a repeated key, as the reference reader does.
    let mut labels = std::collections::BTreeMap::new();
    loop {
        let mut n = c.long()?;
        if n == 0 {
            break;
        }
        if n < 0 {
            n = n.checked_neg().ok_or("bad map block count")?;
            c.long()?; // block size in bytes
        }
        if n as usize > c.remaining() {
            return Err(format!("map block of {n} entries exceeds the datum"));
        }
        for _ in 0..n {
            let k = c.string()?;
            let v = c.string()?;
            labels.insert(k, v);
        }
    }
    let labels: Vec<(String, String)> = labels.into_iter().collect();
    let [cpu_util, mem_util, net_in_bps, net_out_bps, disk_read_bps, disk_write_bps, cpu_cores, mem_bytes] =
        doubles;
    let t = Telemetry {
        entity_id,
        ts_ms,
        service,
        cluster,
        cpu_util,
        mem_util,
        net_in_bps,
        net_out_bps,
        disk_read_bps,
        disk_write_bps,
        cpu_cores,
        mem_bytes,
        replicas,
        cost_per_hour,
        scale_event,
        labels,
    };
    Ok((t, c.remaining()))
}

pub(crate) struct Cursor<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl Cursor<'_> {
    pub(crate) fn float(&mut self) -> Result<f32, String> {
        let b = self.take(4)?;
        Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn long(&mut self) -> Result<i64, String> {
        let mut z: u64 = 0;
        for i in 0..10 {
            let b = *self.buf.get(self.pos).ok_or("datum ends inside a varint")?;
            self.pos += 1;
            z |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    pub(crate) fn int(&mut self) -> Result<i32, String> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| format!("int {v} out of range"))
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "datum ends: need {n} bytes, {} left",
                self.remaining()
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn string(&mut self) -> Result<String, String> {
        let len = self.long()?;
        let len = usize::try_from(len).map_err(|_| format!("negative string length {len}"))?;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|e| format!("string is not utf-8: {e}"))
    }

    pub(crate) fn double(&mut self) -> Result<f64, String> {
        let b = self.take(8)?;
        Ok(f64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }

    pub(crate) fn boolean(&mut self) -> Result<bool, String> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("invalid boolean byte {b}")),
        }
    }

    pub(crate) fn opt<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        match self.long()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            i => Err(format!("union index {i} out of range")),
        }
    }
}

fn from_value(value: Value) -> Result<Telemetry, DecodeError> {
    let Value::Record(fields) = value else {
        return Err(DecodeError::Field {
            field: "record",
            detail: "not a record".into(),
        });
    };
    let mut t = Telemetry::default();
    for (name, v) in fields {
        match name.as_str() {
            "entity_id" => t.entity_id = string("entity_id", v)?,
            "ts_ms" => t.ts_ms = long("ts_ms", v)?,
            "service" => t.service = opt(v, |v| string("service", v))?,
            "cluster" => t.cluster = opt(v, |v| string("cluster", v))?,
            "cpu_util" => t.cpu_util = opt(v, |v| double("cpu_util", v))?,
            "mem_util" => t.mem_util = opt(v, |v| double("mem_util", v))?,
            "net_in_bps" => t.net_in_bps = opt(v, |v| double("net_in_bps", v))?,
            "net_out_bps" => t.net_out_bps = opt(v, |v| double("net_out_bps", v))?,
            "disk_read_bps" => t.disk_read_bps = opt(v, |v| double("disk_read_bps", v))?,
            "disk_write_bps" => t.disk_write_bps = opt(v, |v| double("disk_write_bps", v))?,
            "cpu_cores" => t.cpu_cores = opt(v, |v| double("cpu_cores", v))?,
            "mem_bytes" => t.mem_bytes = opt(v, |v| double("mem_bytes", v))?,
            "replicas" => {
                t.replicas = opt(v, |v| match v {
                    Value::Int(i) => Ok(i),
                    other => Err(wrong("replicas", "int", &other)),
                })?
            }
            "cost_per_hour" => t.cost_per_hour = opt(v, |v| double("cost_per_hour", v))?,
            "scale_event" => {
                t.scale_event = opt(v, |v| match v {
                    Value::Boolean(b) => Ok(b),
                    other => Err(wrong("scale_event", "boolean", &other)),
                })?
            }
            "labels" => {
                if let Value::Map(m) = v {
                    let mut labels = Vec::with_capacity(m.len());
                    for (k, v) in m {
                        labels.push((k, string("labels", v)?));
                    }
                    labels.sort();
                    t.labels = labels;
                }
            }
            _ => {}
        }
    }
    Ok(t)
}

fn wrong(field: &'static str, expected: &str, got: &Value) -> DecodeError {
    DecodeError::Field {
        field,
        detail: format!("expected {expected}, got {got:?}"),
    }
}

fn opt<T>(
    v: Value,
    f: impl FnOnce(Value) -> Result<T, DecodeError>,
) -> Result<Option<T>, DecodeError> {
    match v {
        Value::Null => Ok(None),
        Value::Union(_, inner) => match *inner {
            Value::Null => Ok(None),
            other => f(other).map(Some),
        },
        other => f(other).map(Some),
    }
}

fn string(field: &'static str, v: Value) -> Result<String, DecodeError> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(wrong(field, "string", &other)),
    }
}

fn long(field: &'static str, v: Value) -> Result<i64, DecodeError> {
    match v {
        Value::Long(x) | Value::TimestampMillis(x) => Ok(x),
        Value::Int(x) => Ok(i64::from(x)),
        other => Err(wrong(field, "long", &other)),
    }
}

fn double(field: &'static str, v: Value) -> Result<f64, DecodeError> {
    match v {
        Value::Double(x) => Ok(x),
        Value::Float(x) => Ok(f64::from(x)),
        other => Err(wrong(field, "double", &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Telemetry {
        Telemetry {
            entity_id: "svc-001/cl-02".into(),
            ts_ms: 1_700_000_000_000,
            service: Some("svc-001".into()),
            cluster: Some("cl-02".into()),
            cpu_util: Some(0.42),
            mem_util: Some(0.61),
            net_in_bps: Some(1.5e6),
            net_out_bps: None,
            disk_read_bps: Some(0.0),
            disk_write_bps: Some(12.0),
            cpu_cores: Some(8.0),
            mem_bytes: Some(32e9),
            replicas: Some(3),
            cost_per_hour: Some(1.25),
            scale_event: Some(false),
            labels: vec![
                ("team".into(), "payments".into()),
                ("tier".into(), "1".into()),
            ],
        }
    }

    #[test]
    fn avro_round_trip_through_reference_reader() {
        let t = sample();
        let mut buf = Vec::new();
        t.encode_framed(&mut buf);
        // The reference reader (apache-avro) must read what the hand-written encoder wrote.
        let decoded = TelemetryDecoder::new().decode(&buf).expect("decode");
        assert_eq!(decoded, t);
    }

    #[test]
    fn json_round_trip() {
        let t = sample();
        let decoded = TelemetryDecoder::new()
            .decode(t.to_json().as_bytes())
            .expect("json");
        assert_eq!(decoded, t);
    }

    #[test]
    fn json_wrong_type_is_classified() {
        let err = Telemetry::from_json(br#"{"entity_id":"a","ts_ms":"yesterday"}"#).unwrap_err();
        assert_eq!(err.reason(), DlqReason::WrongType);
        let err = Telemetry::from_json(br#"{"entity_id":"a","#).unwrap_err();
        assert_eq!(err.reason(), DlqReason::JsonInvalid);
    }

    #[test]
    fn truncated_and_unknown_ids_are_classified() {
        let mut buf = Vec::new();
        sample().encode_framed(&mut buf);
        let d = TelemetryDecoder::new();
        let err = d.decode(&buf[..buf.len() / 2]).unwrap_err();
        assert_eq!(err.reason(), DlqReason::AvroDecode, "{err}");
        buf[4] = buf[4].wrapping_add(77);
        let err = d.decode(&buf).unwrap_err();
        assert_eq!(err.reason(), DlqReason::UnknownSchema, "{err}");
    }

    #[test]
    fn validation_reasons() {
        let now = 1_700_000_000_000;
        let lim = ValidationLimits::default();
        let mut t = sample();
        t.ts_ms = now;
        assert!(t.validate(now, &lim).is_ok());
        let cases: Vec<(Box<dyn Fn(&mut Telemetry)>, DlqReason)> = vec![
            (
                Box::new(|t| t.cpu_util = Some(f64::NAN)),
                DlqReason::NotFinite,
            ),
            (Box::new(|t| t.mem_util = Some(-0.1)), DlqReason::OutOfRange),
            (Box::new(|t| t.cpu_util = Some(7.0)), DlqReason::OutOfRange),
            (
                Box::new(|t| t.ts_ms += 365 * 86_400_000),
                DlqReason::TimestampFuture,
            ),
            (
                Box::new(|t| t.ts_ms = 900_000_000_000),
                DlqReason::TimestampPast,
            ),
            (
                Box::new(|t| t.entity_id = " ".into()),
                DlqReason::EmptyEntity,
            ),
            (
                Box::new(|t| t.labels = vec![("k".into(), "v".repeat(10_000))]),
                DlqReason::OversizedLabels,
            ),
        ];
        for (mutate, reason) in cases {
            let mut bad = t.clone();
            mutate(&mut bad);
            assert_eq!(bad.validate(now, &lim).unwrap_err().0, reason);
        }
    }

    proptest! {
        #[test]
        fn encoder_matches_reference_reader(
            entity in "[a-z0-9/-]{1,40}",
            ts in 946_684_800_000i64..4_000_000_000_000,
            cpu in proptest::option::of(0.0f64..1.0),
            net in proptest::option::of(0.0f64..1e10),
            replicas in proptest::option::of(0i32..10_000),
            labels in proptest::collection::btree_map("[a-z]{1,8}", "[a-z0-9]{0,12}", 0..5),
        ) {
            let t = Telemetry {
                entity_id: entity, ts_ms: ts, cpu_util: cpu, net_in_bps: net, replicas,
                labels: labels.into_iter().collect(), ..Telemetry::default()
            };
            let mut buf = Vec::new();
            t.encode_framed(&mut buf);
            prop_assert_eq!(TelemetryDecoder::new().decode(&buf).expect("decode"), t);
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = TelemetryDecoder::new().decode(&bytes);
        }

        /// The fast path accepts only what the reference reader accepts, with the same result.
        #[test]
        fn fast_path_agrees_with_reference(
            entity in "[a-z0-9/-]{1,20}",
            ts in any::<i64>(),
            cpu in proptest::option::of(any::<f64>()),
            labels in proptest::collection::btree_map("[a-z]{1,4}", "[a-z0-9]{0,6}", 0..4),
            cut in 0usize..120,
            flip in proptest::option::of((0usize..120, any::<u8>())),
        ) {
            let t = Telemetry { entity_id: entity, ts_ms: ts, cpu_util: cpu, labels: labels.into_iter().collect(), ..Telemetry::default() };
            let mut buf = Vec::new();
            t.encode_framed(&mut buf);
            let d = TelemetryDecoder::new();
            let fast = d.decode(&buf).expect("valid record");
            let reference = d.decode_reference(&buf).expect("valid record");
            prop_assert_eq!(format!("{fast:?}"), format!("{reference:?}"));
            // Corrupted variants: whenever the fast path accepts, the reference agrees.
            let mut bad = buf.clone();
            bad.truncate(5 + cut.min(bad.len() - 5));
            if let Some((i, b)) = flip {
                if 5 + i < bad.len() { bad[5 + i] = b; }
            }
            if let Ok(f) = d.decode(&bad) {
                let r = d.decode_reference(&bad);
                prop_assert!(r.is_ok(), "fast accepted what the reference rejects: {:?}", r);
                prop_assert_eq!(format!("{f:?}"), format!("{:?}", r.expect("ok")));
            }
        }
    }
}
