//! Wire formats of headroom: the Avro schemas of every topic (the `.avsc` files beside this
//! crate are the single source of truth), the built-in catalogue that pins an id to each
//! schema version, the Confluent framing (`0x00`, big-endian `u32` schema id, Avro datum), and
//! typed codecs for the records the services exchange.
//!
//! Contract:
//! - Decoding never panics: every malformed input maps to a [`DecodeError`] whose
//!   [`DecodeError::reason`] is one of the bounded [`DlqReason`] codes.
//! - Encoders write exactly what the schema describes; tests decode their output with the
//!   reference `apache-avro` reader to prove it.
//! - Unknown schema ids are resolved by the caller (a registry client lives in the runtime
//!   crate); this crate does no I/O.

pub mod avro;
pub mod catalogue;
pub mod dlq;
pub mod drift;
pub mod drift_state;
pub mod drift_windows;
pub mod features;
pub mod forecasts;
pub mod framing;
pub mod generic;
pub mod recommendations;
pub mod telemetry;

pub use catalogue::{Catalogue, SchemaEntry};
pub use dlq::{DeadLetter, DlqReason};
pub use drift::{AlertState, DriftAlert, DriftKind, Severity};
pub use drift_state::DriftEntityState;
pub use drift_windows::FeatureWindowsState;
pub use features::FeaturesRecord;
pub use forecasts::{Forecast, ForecastPoint, Metric, ModelEvent, ModelEventKind, Observed};
pub use framing::{frame, unframe, Framed, MAGIC_BYTE};
pub use recommendations::Recommendation;
pub use telemetry::{Telemetry, TelemetryDecoder, ValidationLimits};

/// Why a record could not be decoded. Every variant maps to a DLQ reason code.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty payload")]
    Empty,
    #[error("payload of {len} bytes is too short for confluent framing (need at least 5)")]
    TooShort { len: usize },
    #[error("wrong magic byte {found:#04x}, expected 0x00 (confluent framing) or a JSON object")]
    BadMagic { found: u8 },
    #[error("unknown schema id {0}")]
    UnknownSchemaId(u32),
    #[error("schema id {id} belongs to subject {subject}, not to this topic")]
    WrongSubject { id: u32, subject: String },
    #[error("avro datum does not decode with schema id {id}: {detail}")]
    Avro { id: u32, detail: String },
    #[error("{extra} trailing bytes after the avro datum (schema id {id})")]
    TrailingBytes { id: u32, extra: usize },
    #[error("invalid json: {0}")]
    Json(String),
    #[error("field `{field}`: {detail}")]
    Field { field: &'static str, detail: String },
}

impl DecodeError {
    /// The bounded reason code used for DLQ headers and metric labels.
    pub fn reason(&self) -> DlqReason {
        match self {
            DecodeError::Empty | DecodeError::TooShort { .. } => DlqReason::Truncated,
            DecodeError::BadMagic { .. } => DlqReason::BadMagic,
            DecodeError::UnknownSchemaId(_) | DecodeError::WrongSubject { .. } => {
                DlqReason::UnknownSchema
            }
            DecodeError::Avro { .. } | DecodeError::TrailingBytes { .. } => DlqReason::AvroDecode,
            DecodeError::Json(_) => DlqReason::JsonInvalid,
            DecodeError::Field { .. } => DlqReason::WrongType,
        }
    }
}
