//! Confluent wire framing: magic byte `0x00`, the schema id as a big-endian `u32`, then the
//! Avro binary datum.

use crate::DecodeError;

pub const MAGIC_BYTE: u8 = 0;
pub const HEADER_LEN: usize = 5;

/// A framed payload split into its schema id and datum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framed<'a> {
    pub schema_id: u32,
    pub datum: &'a [u8],
}

/// Splits a Confluent-framed payload, checking the magic byte and the length.
pub fn unframe(payload: &[u8]) -> Result<Framed<'_>, DecodeError> {
    match payload.first() {
        None => return Err(DecodeError::Empty),
        Some(&MAGIC_BYTE) => {}
        Some(&other) => return Err(DecodeError::BadMagic { found: other }),
    }
    if payload.len() < HEADER_LEN {
        return Err(DecodeError::TooShort { len: payload.len() });
    }
    let schema_id = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
    Ok(Framed {
        schema_id,
        datum: &payload[HEADER_LEN..],
    })
}

/// Writes the framing header for `schema_id` into `out` (cleared first).
pub fn frame(schema_id: u32, out: &mut Vec<u8>) {
    out.clear();
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&schema_id.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_header() {
        let mut buf = Vec::new();
        frame(1001, &mut buf);
        buf.extend_from_slice(&[1, 2, 3]);
        let f = unframe(&buf).expect("framed");
        assert_eq!(f.schema_id, 1001);
        assert_eq!(f.datum, &[1, 2, 3]);
    }

    #[test]
    fn rejects_short_and_wrong_magic() {
        assert!(matches!(unframe(&[]), Err(DecodeError::Empty)));
        assert!(matches!(
            unframe(&[0, 0, 1]),
            Err(DecodeError::TooShort { len: 3 })
        ));
        assert!(matches!(
            unframe(&[7, 0, 0, 0, 1]),
            Err(DecodeError::BadMagic { found: 7 })
        ));
    }
}
