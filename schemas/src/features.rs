//! The `features` record: a hand-written encoder for the featurizer's hot path and a decoder
//! (through the reference `apache-avro` reader) for consumers and tests.

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;

use crate::avro::{
    write_bool, write_f32_array, write_f64, write_int, write_long, write_opt, write_str,
};
use crate::{framing, Catalogue, DecodeError};

pub const SUBJECT: &str = "features-value";

/// One feature vector with the current sample's values.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FeaturesRecord {
    pub event_id: String,
    pub entity_id: String,
    pub ts_ms: i64,
    pub service: Option<String>,
    pub cluster: Option<String>,
    pub feature_set: String,
    pub values: Vec<f32>,
    pub cpu_util: f64,
    pub mem_util: f64,
    pub net_bps: f64,
    pub disk_bps: f64,
    pub cpu_cores: Option<f64>,
    pub mem_bytes: Option<f64>,
    pub replicas: Option<i32>,
    pub cost_per_hour: Option<f64>,
    pub scale_event: bool,
    pub imputed_mask: i32,
    pub source_ts_ms: Option<i64>,
}

/// Deterministic event id: the same entity and event time always give the same id.
pub fn event_id(entity_id: &str, ts_ms: i64) -> String {
    let mut id = String::with_capacity(32);
    event_id_into(entity_id, ts_ms, &mut id);
    id
}

/// [`event_id`] written into a reused string (the featurizer's hot path: no allocation, no
/// formatting machinery).
pub fn event_id_into(entity_id: &str, ts_ms: i64, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let h = xxhash_rust::xxh3::xxh3_128_with_seed(entity_id.as_bytes(), ts_ms as u64);
    let mut digits = [0u8; 32];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[((h >> (124 - 4 * i)) & 0xf) as usize];
    }
    out.clear();
    out.extend(digits.iter().map(|&b| char::from(b)));
}

/// The schema id of the newest catalogued `features` version, looked up once.
fn latest_id() -> u32 {
    static ID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        Catalogue::builtin()
            .latest(SUBJECT)
            .map(|e| e.id)
            .unwrap_or(0)
    })
}

impl FeaturesRecord {
    pub fn encode_framed(&self, out: &mut Vec<u8>) {
        framing::frame(latest_id(), out);
        // Strings and the fixed fields take about 150 bytes beyond the vector.
        out.reserve(4 * self.values.len() + 160 + self.entity_id.len());
        write_str(out, &self.event_id);
        write_str(out, &self.entity_id);
        write_long(out, self.ts_ms);
        write_opt(out, self.service.as_deref(), write_str);
        write_opt(out, self.cluster.as_deref(), write_str);
        write_str(out, &self.feature_set);
        write_f32_array(out, &self.values);
        write_f64(out, self.cpu_util);
        write_f64(out, self.mem_util);
        write_f64(out, self.net_bps);
        write_f64(out, self.disk_bps);
        write_opt(out, self.cpu_cores, write_f64);
        write_opt(out, self.mem_bytes, write_f64);
        write_opt(out, self.replicas, write_int);
        write_opt(out, self.cost_per_hour, write_f64);
        write_bool(out, self.scale_event);
        write_int(out, self.imputed_mask);
        write_opt(out, self.source_ts_ms, write_long);
    }

    /// The entity id and event time of a framed v1 payload, without decoding the vector
    /// (for consumers that only route or measure).
    pub fn peek(payload: &[u8]) -> Result<(String, i64), DecodeError> {
        let framed = framing::unframe(payload)?;
        let cat = Catalogue::builtin();
        match cat.by_id(framed.schema_id) {
            Some(e) if e.subject == SUBJECT && e.version == 1 => {}
            Some(e) => {
                return Err(DecodeError::WrongSubject {
                    id: framed.schema_id,
                    subject: e.subject.clone(),
                })
            }
            None => return Err(DecodeError::UnknownSchemaId(framed.schema_id)),
        }
        let mut cur = framed.datum;
        let bad = || DecodeError::Avro {
            id: framed.schema_id,
            detail: "truncated or malformed datum".into(),
        };
        let _event_id = read_str(&mut cur).ok_or_else(bad)?;
        let entity = read_str(&mut cur).ok_or_else(bad)?;
        let ts = read_varint(&mut cur).ok_or_else(bad)?;
        Ok((entity, ts))
    }

    /// Decodes a framed `features` payload written with any catalogued version: v1 by a
    /// hand-written reader (the scorer's hot path), others through `apache-avro`.
    pub fn decode(payload: &[u8]) -> Result<FeaturesRecord, DecodeError> {
        let framed = framing::unframe(payload)?;
        if let Some(e) = Catalogue::builtin().by_id(framed.schema_id) {
            if e.subject == SUBJECT && e.version == 1 {
                return decode_v1(framed.datum).map_err(|detail| DecodeError::Avro {
                    id: framed.schema_id,
                    detail,
                });
            }
        }
        FeaturesRecord::decode_reference(payload)
    }

    /// Decodes through the reference `apache-avro` reader (any catalogued version).
    pub fn decode_reference(payload: &[u8]) -> Result<FeaturesRecord, DecodeError> {
        let framed = framing::unframe(payload)?;
        let reader = readers()
            .iter()
            .find(|(id, _)| *id == framed.schema_id)
            .map(|(_, r)| r)
            .ok_or_else(|| match Catalogue::builtin().by_id(framed.schema_id) {
                Some(e) => DecodeError::WrongSubject {
                    id: framed.schema_id,
                    subject: e.subject.clone(),
                },
                None => DecodeError::UnknownSchemaId(framed.schema_id),
            })?;
        let mut cur = framed.datum;
        let value = reader.read_value(&mut cur).map_err(|e| DecodeError::Avro {
            id: framed.schema_id,
            detail: e.to_string(),
        })?;
        if !cur.is_empty() {
            return Err(DecodeError::TrailingBytes {
                id: framed.schema_id,
                extra: cur.len(),
            });
        }
        let Value::Record(fields) = value else {
            return Err(DecodeError::Field {
                field: "record",
                detail: "not a record".into(),
            });
        };
        let mut r = FeaturesRecord::default();
        for (name, v) in fields {
            let v = match v {
                Value::Union(_, inner) => *inner,
                other => other,
            };
            match (name.as_str(), v) {
                ("event_id", Value::String(s)) => r.event_id = s,
                ("entity_id", Value::String(s)) => r.entity_id = s,
                ("ts_ms", Value::Long(x) | Value::TimestampMillis(x)) => r.ts_ms = x,
                ("service", Value::String(s)) => r.service = Some(s),
                ("cluster", Value::String(s)) => r.cluster = Some(s),
                ("feature_set", Value::String(s)) => r.feature_set = s,
                ("values", Value::Array(items)) => {
                    r.values = items
                        .into_iter()
                        .map(|v| match v {
                            Value::Float(f) => f,
                            Value::Double(d) => d as f32,
                            _ => f32::NAN,
                        })
                        .collect()
                }
                ("cpu_util", Value::Double(x)) => r.cpu_util = x,
                ("mem_util", Value::Double(x)) => r.mem_util = x,
                ("net_bps", Value::Double(x)) => r.net_bps = x,
                ("disk_bps", Value::Double(x)) => r.disk_bps = x,
                ("cpu_cores", Value::Double(x)) => r.cpu_cores = Some(x),
                ("mem_bytes", Value::Double(x)) => r.mem_bytes = Some(x),
                ("replicas", Value::Int(x)) => r.replicas = Some(x),
                ("cost_per_hour", Value::Double(x)) => r.cost_per_hour = Some(x),
                ("scale_event", Value::Boolean(b)) => r.scale_event = b,
                ("imputed_mask", Value::Int(x)) => r.imputed_mask = x,
                ("source_ts_ms", Value::Long(x)) => r.source_ts_ms = Some(x),
                _ => {}
            }
        }
        Ok(r)
    }
}

fn decode_v1(datum: &[u8]) -> Result<FeaturesRecord, String> {
    let mut c = crate::telemetry::Cursor { buf: datum, pos: 0 };
    let event_id = c.string()?;
    let entity_id = c.string()?;
    let ts_ms = c.long()?;
    let service = c.opt(|c| c.string())?;
    let cluster = c.opt(|c| c.string())?;
    let feature_set = c.string()?;
    let mut values = Vec::new();
    loop {
        let mut n = c.long()?;
        if n == 0 {
            break;
        }
        if n < 0 {
            n = -n;
            let _bytes = c.long()?;
        }
        let n = usize::try_from(n).map_err(|_| "bad block count".to_string())?;
        if n > c.remaining() / 4 {
            return Err(format!("array block of {n} floats exceeds the datum"));
        }
        values.reserve(n);
        for _ in 0..n {
            values.push(c.float()?);
        }
    }
    let r = FeaturesRecord {
        event_id,
        entity_id,
        ts_ms,
        service,
        cluster,
        feature_set,
        values,
        cpu_util: c.double()?,
        mem_util: c.double()?,
        net_bps: c.double()?,
        disk_bps: c.double()?,
        cpu_cores: c.opt(|c| c.double())?,
        mem_bytes: c.opt(|c| c.double())?,
        replicas: c.opt(|c| c.int())?,
        cost_per_hour: c.opt(|c| c.double())?,
        scale_event: c.boolean()?,
        imputed_mask: c.int()?,
        source_ts_ms: c.opt(|c| c.long())?,
    };
    if c.remaining() != 0 {
        return Err(format!("{} trailing bytes after the datum", c.remaining()));
    }
    Ok(r)
}

fn read_varint(cur: &mut &[u8]) -> Option<i64> {
    let mut z = 0u64;
    for i in 0..10 {
        let (&b, rest) = cur.split_first()?;
        *cur = rest;
        z |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(((z >> 1) as i64) ^ -((z & 1) as i64));
        }
    }
    None
}

fn read_str(cur: &mut &[u8]) -> Option<String> {
    let n = usize::try_from(read_varint(cur)?).ok()?;
    if n > cur.len() {
        return None;
    }
    let (s, rest) = cur.split_at(n);
    *cur = rest;
    String::from_utf8(s.to_vec()).ok()
}

/// One reader per catalogued writer version, resolved to the latest schema once.
fn readers() -> &'static [(u32, GenericDatumReader<'static>)] {
    static READERS: std::sync::OnceLock<Vec<(u32, GenericDatumReader<'static>)>> =
        std::sync::OnceLock::new();
    READERS.get_or_init(|| {
        let cat = Catalogue::builtin();
        let latest = &cat.latest(SUBJECT).expect("features subject").schema;
        cat.versions(SUBJECT)
            .filter_map(|e| {
                GenericDatumReader::builder(&e.schema)
                    .reader_schema(latest)
                    .build()
                    .ok()
                    .map(|r| (e.id, r))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let r = FeaturesRecord {
            event_id: event_id("vm-1", 42),
            entity_id: "vm-1".into(),
            ts_ms: 42,
            service: None,
            cluster: Some("c".into()),
            feature_set: "fs-abc".into(),
            values: vec![1.0, -2.5, 0.0, f32::MAX],
            cpu_util: 0.5,
            mem_util: 0.25,
            net_bps: 10.0,
            disk_bps: 0.0,
            cpu_cores: Some(4.0),
            mem_bytes: None,
            replicas: Some(2),
            cost_per_hour: Some(0.4),
            scale_event: true,
            imputed_mask: 0b101,
            source_ts_ms: Some(41),
        };
        let mut buf = Vec::new();
        r.encode_framed(&mut buf);
        assert_eq!(FeaturesRecord::decode(&buf).expect("decode"), r);
        assert_eq!(FeaturesRecord::decode_reference(&buf).expect("decode"), r);
        // Every truncation is an error, never a panic. (The reference reader accepts a datum
        // cut inside the last union's value; the hand-written one does not.)
        for cut in 5..buf.len() {
            assert!(FeaturesRecord::decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(
            FeaturesRecord::peek(&buf).expect("peek"),
            ("vm-1".to_owned(), 42)
        );
        assert!(FeaturesRecord::peek(&buf[..12]).is_err());
    }

    #[test]
    fn event_ids_are_deterministic_and_distinct() {
        assert_eq!(event_id("a", 1), event_id("a", 1));
        assert_ne!(event_id("a", 1), event_id("a", 2));
        assert_ne!(event_id("a", 1), event_id("b", 1));
        // The hand-rolled hex is the 128-bit hash in 32 lower-case digits, leading zeros kept,
        // and the reused-buffer form gives the same id.
        let mut reused = String::from("left over from the previous record");
        for (entity, ts) in [("a", 1), ("vm-1", 1_700_000_000_000), ("", -5)] {
            let h = xxhash_rust::xxh3::xxh3_128_with_seed(entity.as_bytes(), ts as u64);
            assert_eq!(event_id(entity, ts), format!("{h:032x}"));
            event_id_into(entity, ts, &mut reused);
            assert_eq!(reused, event_id(entity, ts));
        }
    }

    use proptest::prelude::*;

    proptest! {
        /// The hand-written v1 reader and the reference reader agree on every record.
        #[test]
        fn fast_and_reference_readers_agree(
            entity in "[a-z0-9./-]{1,40}",
            ts in any::<i64>(),
            values in proptest::collection::vec(-1e9f32..1e9, 0..300),
            cpu in -1e12f64..1e12,
            cores in proptest::option::of(0.0f64..512.0),
            replicas in proptest::option::of(any::<i32>()),
            service in proptest::option::of("[a-z]{0,12}"),
            flag in any::<bool>(),
            mask in any::<i32>(),
            src in proptest::option::of(any::<i64>()),
        ) {
            let r = FeaturesRecord {
                event_id: event_id(&entity, ts),
                entity_id: entity,
                ts_ms: ts,
                service,
                cluster: None,
                feature_set: "fs1-x".into(),
                values,
                cpu_util: cpu,
                mem_util: 0.5,
                net_bps: 1.0,
                disk_bps: 2.0,
                cpu_cores: cores,
                mem_bytes: None,
                replicas,
                cost_per_hour: cores,
                scale_event: flag,
                imputed_mask: mask,
                source_ts_ms: src,
            };
            let mut buf = Vec::new();
            r.encode_framed(&mut buf);
            let fast = FeaturesRecord::decode(&buf).unwrap();
            prop_assert_eq!(&fast, &FeaturesRecord::decode_reference(&buf).unwrap());
            prop_assert_eq!(&fast, &r);
        }
    }
}
