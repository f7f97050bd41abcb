//! Decoding any catalogued subject through the reference `apache-avro` reader, resolved to the
//! subject's latest schema. For records read at low rates (forecasts by tools and tests, model
//! events); hot paths have hand-written codecs.

use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;

use crate::{framing, Catalogue, DecodeError};

type Readers = HashMap<String, Vec<(u32, GenericDatumReader<'static>)>>;

fn readers() -> &'static Readers {
    static READERS: OnceLock<Readers> = OnceLock::new();
    READERS.get_or_init(|| {
        let cat = Catalogue::builtin();
        let mut map: Readers = HashMap::new();
        for subject in cat.subjects() {
            let Some(latest) = cat.latest(subject) else { continue };
            let v = cat
                .versions(subject)
                .filter_map(|e| {
                    GenericDatumReader::builder(&e.schema)
                        .reader_schema(&latest.schema)
                        .build()
                        .ok()
                        .map(|r| (e.id, r))
                })
                .collect();
            map.insert(subject.to_owned(), v);
        }
        map
    })
}

/// Decodes a framed payload of `subject` into its top-level fields (unions unwrapped).
pub fn decode_fields(subject: &str, payload: &[u8]) -> Result<Vec<(String, Value)>, DecodeError> {
    let framed = framing::unframe(payload)?;
    let reader = readers()
        .get(subject)
        .and_then(|v| v.iter().find(|(id, _)| *id == framed.schema_id))
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
    Ok(fields
        .into_iter()
        .map(|(k, v)| match v {
            Value::Union(_, inner) => (k, *inner),
            other => (k, other),
        })
        .collect())
}

/// An Avro `map<string>` value as sorted `(key, value)` pairs (entries of other types dropped).
pub fn string_map(m: std::collections::HashMap<String, Value>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = m
        .into_iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some((k, s)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// Field helpers of the reference decoders (typed codecs read the generic reader's values).
pub(crate) fn field(field: &'static str, detail: impl Into<String>) -> DecodeError {
    DecodeError::Field { field, detail: detail.into() }
}

/// A long (or an int, or a timestamp) field.
pub(crate) fn field_long(v: &Value, name: &'static str) -> Result<i64, DecodeError> {
    match v {
        Value::Long(x) | Value::TimestampMillis(x) => Ok(*x),
        Value::Int(x) => Ok(i64::from(*x)),
        other => Err(field(name, format!("expected a long, found {other:?}"))),
    }
}

/// A count: a long that is not negative.
pub(crate) fn field_count(v: &Value, name: &'static str) -> Result<u64, DecodeError> {
    u64::try_from(field_long(v, name)?).map_err(|_| field(name, "negative count"))
}

pub(crate) fn field_double(v: &Value, name: &'static str) -> Result<f64, DecodeError> {
    match v {
        Value::Double(x) => Ok(*x),
        other => Err(field(name, format!("expected a double, found {other:?}"))),
    }
}

/// A `["null", T]` union's value, `None` for null.
pub(crate) fn union_value(v: Value) -> Option<Value> {
    match v {
        Value::Union(_, inner) => union_value(*inner),
        Value::Null => None,
        other => Some(other),
    }
}
