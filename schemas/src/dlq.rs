//! Dead-letter records: the bounded set of reasons (used as metric labels and in the
//! `dlq.reason` header) and the `DeadLetter` envelope.

use crate::avro::{write_bytes, write_int, write_long, write_opt, write_str};
use crate::{framing, Catalogue};

pub const SUBJECT: &str = "telemetry.dlq-value";

/// Why a record was dead-lettered. The set is closed so that metric labels stay bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DlqReason {
    Truncated,
    BadMagic,
    UnknownSchema,
    AvroDecode,
    JsonInvalid,
    WrongType,
    NotFinite,
    OutOfRange,
    TimestampFuture,
    TimestampPast,
    EmptyEntity,
    OversizedLabels,
    TooLate,
    KeyMismatch,
    OutputTooLarge,
    /// A feature vector of another feature schema than the serving model's.
    FeatureSchemaMismatch,
    /// The model failed on a batch (the record is kept whole for a replay).
    ScoringFailed,
}

impl DlqReason {
    pub const ALL: [DlqReason; 17] = [
        DlqReason::Truncated,
        DlqReason::BadMagic,
        DlqReason::UnknownSchema,
        DlqReason::AvroDecode,
        DlqReason::JsonInvalid,
        DlqReason::WrongType,
        DlqReason::NotFinite,
        DlqReason::OutOfRange,
        DlqReason::TimestampFuture,
        DlqReason::TimestampPast,
        DlqReason::EmptyEntity,
        DlqReason::OversizedLabels,
        DlqReason::TooLate,
        DlqReason::KeyMismatch,
        DlqReason::OutputTooLarge,
        DlqReason::FeatureSchemaMismatch,
        DlqReason::ScoringFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DlqReason::Truncated => "truncated",
            DlqReason::BadMagic => "bad_magic",
            DlqReason::UnknownSchema => "unknown_schema",
            DlqReason::AvroDecode => "avro_decode",
            DlqReason::JsonInvalid => "json_invalid",
            DlqReason::WrongType => "wrong_type",
            DlqReason::NotFinite => "not_finite",
            DlqReason::OutOfRange => "out_of_range",
            DlqReason::TimestampFuture => "timestamp_future",
            DlqReason::TimestampPast => "timestamp_past",
            DlqReason::EmptyEntity => "empty_entity",
            DlqReason::OversizedLabels => "oversized_labels",
            DlqReason::TooLate => "too_late",
            DlqReason::KeyMismatch => "key_mismatch",
            DlqReason::OutputTooLarge => "output_too_large",
            DlqReason::FeatureSchemaMismatch => "feature_schema_mismatch",
            DlqReason::ScoringFailed => "scoring_failed",
        }
    }

    pub fn parse(s: &str) -> Option<DlqReason> {
        DlqReason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for DlqReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The DLQ envelope. The original key and payload are kept byte for byte.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter<'a> {
    pub reason: DlqReason,
    pub detail: &'a str,
    pub service: &'a str,
    pub source_topic: &'a str,
    pub source_partition: i32,
    pub source_offset: i64,
    pub failed_at_ms: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
}

impl DeadLetter<'_> {
    pub fn encode_framed(&self, out: &mut Vec<u8>) {
        let id = Catalogue::builtin()
            .latest(SUBJECT)
            .map(|e| e.id)
            .unwrap_or(0);
        framing::frame(id, out);
        write_str(out, self.reason.as_str());
        write_str(out, self.detail);
        write_str(out, self.service);
        write_str(out, self.source_topic);
        write_int(out, self.source_partition);
        write_long(out, self.source_offset);
        write_long(out, self.failed_at_ms);
        write_opt(out, self.key, write_bytes);
        write_opt(out, self.payload, write_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::types::Value;

    #[test]
    fn reasons_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in DlqReason::ALL {
            assert!(seen.insert(r.as_str()));
            assert_eq!(DlqReason::parse(r.as_str()), Some(r));
        }
    }

    #[test]
    fn envelope_decodes_with_reference_reader() {
        let dl = DeadLetter {
            reason: DlqReason::TooLate,
            detail: "event 2 h behind the watermark",
            service: "featurizer",
            source_topic: "telemetry.raw",
            source_partition: 3,
            source_offset: 12345,
            failed_at_ms: 1_700_000_000_000,
            key: Some(b"vm-1"),
            payload: Some(&[0xde, 0xad]),
        };
        let mut buf = Vec::new();
        dl.encode_framed(&mut buf);
        let f = framing::unframe(&buf).expect("framed");
        let entry = Catalogue::builtin().by_id(f.schema_id).expect("id");
        let reader = GenericDatumReader::builder(&entry.schema)
            .build()
            .expect("reader");
        let mut cur = f.datum;
        let Value::Record(fields) = reader.read_value(&mut cur).expect("decode") else {
            panic!("record")
        };
        assert!(cur.is_empty());
        assert_eq!(fields[0].1, Value::String("too_late".into()));
        assert_eq!(fields[5].1, Value::Long(12345));
        assert_eq!(
            fields[8].1,
            Value::Union(1, Box::new(Value::Bytes(vec![0xde, 0xad])))
        );
    }
}
