//! A minimal Avro binary writer for the hot encoders. Building an `apache_avro::Value` tree per
//! record allocates for every field; these helpers append straight into a reused buffer. Each
//! encoder that uses them is checked against the reference `apache-avro` reader in tests.

#[inline]
pub fn write_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

#[inline]
pub fn write_int(out: &mut Vec<u8>, v: i32) {
    write_long(out, i64::from(v));
}

#[inline]
pub fn write_f64(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(&v.to_le_bytes());
}

#[inline]
pub fn write_f32(out: &mut Vec<u8>, v: f32) {
    out.extend_from_slice(&v.to_le_bytes());
}

#[inline]
pub fn write_bool(out: &mut Vec<u8>, v: bool) {
    out.push(u8::from(v));
}

#[inline]
pub fn write_bytes(out: &mut Vec<u8>, v: &[u8]) {
    write_long(out, v.len() as i64);
    out.extend_from_slice(v);
}

#[inline]
pub fn write_str(out: &mut Vec<u8>, v: &str) {
    write_bytes(out, v.as_bytes());
}

/// `["null", T]` unions: index 0 is null, index 1 the value.
#[inline]
pub fn write_opt<T>(out: &mut Vec<u8>, v: Option<T>, write: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        None => out.push(0),
        Some(x) => {
            out.push(2); // zig-zag encoded 1
            write(out, x);
        }
    }
}

/// An array or map written as one block followed by the end marker.
#[inline]
/// An Avro `array<float>` in one block: the count, the little-endian floats copied in one
/// pass (the same bytes as [`write_block`] with [`write_f32`], without a capacity check per
/// item), and the end marker.
pub fn write_f32_array(out: &mut Vec<u8>, values: &[f32]) {
    if !values.is_empty() {
        write_long(out, values.len() as i64);
        let start = out.len();
        out.resize(start + 4 * values.len(), 0);
        for (dst, v) in out[start..].chunks_exact_mut(4).zip(values) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
    }
    out.push(0);
}

pub fn write_block<I: ExactSizeIterator>(
    out: &mut Vec<u8>,
    items: I,
    mut write: impl FnMut(&mut Vec<u8>, I::Item),
) {
    let n = items.len();
    if n > 0 {
        write_long(out, n as i64);
        for item in items {
            write(out, item);
        }
    }
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_matches_spec_examples() {
        let cases: [(i64, &[u8]); 6] = [
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (
                i64::MAX,
                &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ];
        for (v, expected) in cases {
            let mut out = Vec::new();
            write_long(&mut out, v);
            assert_eq!(out, expected, "value {v}");
        }
    }

    #[test]
    fn float_arrays_match_the_generic_block_writer() {
        for values in [
            vec![],
            vec![1.5f32],
            (0..182).map(|i| i as f32 * -0.37 + 1e-3).collect::<Vec<_>>(),
            vec![f32::NAN, f32::INFINITY, -0.0, f32::MIN_POSITIVE],
        ] {
            let (mut fast, mut generic) = (vec![7u8], vec![7u8]);
            write_f32_array(&mut fast, &values);
            write_block(&mut generic, values.iter(), |o, v| write_f32(o, *v));
            assert_eq!(fast, generic, "{} values", values.len());
        }
    }
}
