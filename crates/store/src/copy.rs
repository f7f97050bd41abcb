//! PostgreSQL's binary `COPY` format, written straight into a buffer.
//!
//! Layout (see the `COPY` reference, "Binary Format"): an 11-byte signature, a flags word and a
//! header-extension length; then per row a 16-bit field count and per field a 32-bit length
//! (-1 for NULL) followed by the value in the type's binary send format (big-endian); then a
//! 16-bit -1 trailer. Values here are written for the column types the migrations declare:
//! the caller must write the fields of a row in the table's column order.

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01T00:00:00Z).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;
const INT4_OID: u32 = 23;
const INT8_OID: u32 = 20;
/// `in_row` once the trailer is written.
const FINISHED: i16 = -2;

/// A binary `COPY` payload under construction.
#[derive(Debug, Clone)]
pub struct CopyBuf {
    buf: Vec<u8>,
    columns: i16,
    rows: usize,
    in_row: i16,
}

impl CopyBuf {
    /// An empty payload for rows of `columns` fields.
    pub fn new(columns: i16) -> CopyBuf {
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(SIGNATURE);
        buf.extend_from_slice(&0i32.to_be_bytes());
        buf.extend_from_slice(&0i32.to_be_bytes());
        CopyBuf {
            buf,
            columns,
            rows: 0,
            in_row: -1,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Bytes of row data so far.
    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Starts a row. Every row must get exactly `columns` fields before the next one starts.
    pub fn row(&mut self) -> &mut Self {
        self.check_row_complete();
        self.buf.extend_from_slice(&self.columns.to_be_bytes());
        self.rows += 1;
        self.in_row = 0;
        self
    }

    fn check_row_complete(&self) {
        assert!(self.in_row != FINISHED, "rows added after finish()");
        debug_assert!(
            self.in_row == -1 || self.in_row == self.columns,
            "row {} has {} fields, expected {}",
            self.rows,
            self.in_row,
            self.columns
        );
    }

    /// Drops the row being written (for example when a later field turns out to be invalid).
    pub fn truncate_to(&mut self, mark: Mark) {
        self.buf.truncate(mark.len);
        self.rows = mark.rows;
        self.in_row = -1;
    }

    /// A position to roll back to with [`CopyBuf::truncate_to`].
    pub fn mark(&self) -> Mark {
        Mark {
            len: self.buf.len(),
            rows: self.rows,
        }
    }

    fn field(&mut self, len: i32) {
        self.in_row += 1;
        self.buf.extend_from_slice(&len.to_be_bytes());
    }

    pub fn null(&mut self) -> &mut Self {
        self.field(-1);
        self
    }

    pub fn text(&mut self, v: &str) -> &mut Self {
        self.bytea(v.as_bytes())
    }

    pub fn opt_text(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            Some(v) => self.text(v),
            None => self.null(),
        }
    }

    pub fn bytea(&mut self, v: &[u8]) -> &mut Self {
        self.field(i32::try_from(v.len()).unwrap_or(i32::MAX));
        self.buf.extend_from_slice(v);
        self
    }

    pub fn opt_bytea(&mut self, v: Option<&[u8]>) -> &mut Self {
        match v {
            Some(v) => self.bytea(v),
            None => self.null(),
        }
    }

    pub fn int4(&mut self, v: i32) -> &mut Self {
        self.field(4);
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn opt_int4(&mut self, v: Option<i32>) -> &mut Self {
        match v {
            Some(v) => self.int4(v),
            None => self.null(),
        }
    }

    pub fn int8(&mut self, v: i64) -> &mut Self {
        self.field(8);
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn opt_int8(&mut self, v: Option<i64>) -> &mut Self {
        match v {
            Some(v) => self.int8(v),
            None => self.null(),
        }
    }

    pub fn float8(&mut self, v: f64) -> &mut Self {
        self.field(8);
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn opt_float8(&mut self, v: Option<f64>) -> &mut Self {
        match v {
            Some(v) => self.float8(v),
            None => self.null(),
        }
    }

    pub fn boolean(&mut self, v: bool) -> &mut Self {
        self.field(1);
        self.buf.push(u8::from(v));
        self
    }

    pub fn opt_boolean(&mut self, v: Option<bool>) -> &mut Self {
        match v {
            Some(v) => self.boolean(v),
            None => self.null(),
        }
    }

    /// A `timestamptz` from milliseconds since the Unix epoch.
    pub fn timestamptz_ms(&mut self, ms: i64) -> &mut Self {
        self.field(8);
        let us = ms.saturating_mul(1000).saturating_sub(PG_EPOCH_OFFSET_US);
        self.buf.extend_from_slice(&us.to_be_bytes());
        self
    }

    /// A `jsonb` value from JSON text (the binary format is a version byte, then the text).
    pub fn jsonb(&mut self, json: &str) -> &mut Self {
        self.field(i32::try_from(json.len() + 1).unwrap_or(i32::MAX));
        self.buf.push(1);
        self.buf.extend_from_slice(json.as_bytes());
        self
    }

    /// A one-dimensional `int4[]` (NULL when `v` is `None`).
    pub fn int4_array(&mut self, v: Option<&[i32]>) -> &mut Self {
        let Some(v) = v else { return self.null() };
        let len = 20 + 8 * v.len();
        self.field(i32::try_from(len).unwrap_or(i32::MAX));
        self.buf.extend_from_slice(&1i32.to_be_bytes()); // dimensions
        self.buf.extend_from_slice(&0i32.to_be_bytes()); // has nulls
        self.buf.extend_from_slice(&INT4_OID.to_be_bytes());
        self.buf
            .extend_from_slice(&i32::try_from(v.len()).unwrap_or(i32::MAX).to_be_bytes());
        self.buf.extend_from_slice(&1i32.to_be_bytes()); // lower bound
        for x in v {
            self.buf.extend_from_slice(&4i32.to_be_bytes());
            self.buf.extend_from_slice(&x.to_be_bytes());
        }
        self
    }

    /// A one-dimensional `int8[]` (NULL when `v` is `None`).
    pub fn int8_array(&mut self, v: Option<&[i64]>) -> &mut Self {
        let Some(v) = v else { return self.null() };
        let len = 20 + 12 * v.len();
        self.field(i32::try_from(len).unwrap_or(i32::MAX));
        self.buf.extend_from_slice(&1i32.to_be_bytes());
        self.buf.extend_from_slice(&0i32.to_be_bytes());
        self.buf.extend_from_slice(&INT8_OID.to_be_bytes());
        self.buf
            .extend_from_slice(&i32::try_from(v.len()).unwrap_or(i32::MAX).to_be_bytes());
        self.buf.extend_from_slice(&1i32.to_be_bytes());
        for x in v {
            self.buf.extend_from_slice(&8i32.to_be_bytes());
            self.buf.extend_from_slice(&x.to_be_bytes());
        }
        self
    }

    /// Reorders the rows by `key` of their first two fields (`None` for NULL), keeping the
    /// arrival order of rows with equal keys. A finished payload stays finished.
    ///
    /// The sink sorts raw telemetry by (hour, entity, time): a `COPY` into a table with a btree
    /// on `(entity_id, ts)` then inserts each entity's rows one after another into the same
    /// leaf page instead of one random leaf per row, while each hour's rows stay together for
    /// the BRIN index on `ts` (docs/design/sink.md).
    pub fn sort_rows_by(&mut self, cmp: impl Fn(RowKey<'_>, RowKey<'_>) -> std::cmp::Ordering) {
        const HEADER: usize = SIGNATURE.len() + 8;
        let finished = self.in_row == FINISHED;
        if !finished {
            self.check_row_complete();
        }
        if self.rows < 2 || self.columns < 1 {
            return;
        }
        let end = self.buf.len() - if finished { 2 } else { 0 };
        let body = &self.buf[HEADER..end];
        // Per row: its first two fields (None for NULL), where it starts and where it ends.
        let mut rows: Vec<(RowKey<'_>, usize, usize)> = Vec::with_capacity(self.rows);
        let mut pos = 0;
        while pos < body.len() {
            let start = pos;
            let n = i16::from_be_bytes([body[pos], body[pos + 1]]);
            pos += 2;
            let mut key: RowKey<'_> = (None, None);
            for f in 0..n {
                let len = i32::from_be_bytes([body[pos], body[pos + 1], body[pos + 2], body[pos + 3]]);
                pos += 4;
                if len >= 0 {
                    let v = &body[pos..pos + len as usize];
                    match f {
                        0 => key.0 = Some(v),
                        1 => key.1 = Some(v),
                        _ => {}
                    }
                    pos += len as usize;
                }
            }
            rows.push((key, start, pos));
        }
        if rows.windows(2).all(|w| cmp(w[0].0, w[1].0).is_le()) {
            return;
        }
        // Stable: rows with equal keys keep their order.
        rows.sort_by(|a, b| cmp(a.0, b.0));
        let mut out = Vec::with_capacity(self.buf.len() + 2);
        out.extend_from_slice(&self.buf[..HEADER]);
        for (_, start, end) in &rows {
            out.extend_from_slice(&body[*start..*end]);
        }
        if finished {
            out.extend_from_slice(&(-1i16).to_be_bytes());
        }
        self.buf = out;
    }

    /// The finished payload, trailer included. The buffer can be reused after [`CopyBuf::clear`].
    pub fn finish(&mut self) -> &[u8] {
        if self.in_row != FINISHED {
            self.check_row_complete();
        }
        if self.in_row != FINISHED {
            self.buf.extend_from_slice(&(-1i16).to_be_bytes());
            self.in_row = FINISHED;
        }
        &self.buf
    }

    /// Empties the payload, keeping its allocation.
    pub fn clear(&mut self) {
        self.buf.truncate(SIGNATURE.len() + 8);
        self.rows = 0;
        self.in_row = -1;
    }
}

/// The first two fields of a row, as [`CopyBuf::sort_rows_by`] hands them to its comparison
/// (`None` for NULL; values in their binary send format).
pub type RowKey<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// A position in a [`CopyBuf`].
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    len: usize,
    rows: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_row_and_trailer() {
        let mut c = CopyBuf::new(2);
        c.row().int4(7).null();
        let b = c.finish().to_vec();
        assert_eq!(&b[..11], SIGNATURE);
        assert_eq!(&b[11..19], &[0u8; 8]);
        // field count 2, int4 len 4 value 7, null
        assert_eq!(&b[19..21], &2i16.to_be_bytes());
        assert_eq!(&b[21..25], &4i32.to_be_bytes());
        assert_eq!(&b[25..29], &7i32.to_be_bytes());
        assert_eq!(&b[29..33], &(-1i32).to_be_bytes());
        assert_eq!(&b[33..], &(-1i16).to_be_bytes());
        // finish is idempotent
        assert_eq!(c.finish().len(), b.len());
        c.clear();
        assert!(c.is_empty());
        assert_eq!(c.finish().len(), 21);
    }

    #[test]
    fn timestamps_are_relative_to_2000() {
        let mut c = CopyBuf::new(1);
        c.row().timestamptz_ms(946_684_800_000 + 1);
        let b = c.finish();
        assert_eq!(&b[25..33], &1000i64.to_be_bytes());
    }

    #[test]
    fn truncate_drops_a_partial_row() {
        let mut c = CopyBuf::new(2);
        c.row().int4(1).int4(2);
        let m = c.mark();
        c.row().int4(3);
        c.truncate_to(m);
        assert_eq!(c.rows(), 1);
        c.row().int4(4).int4(5);
        assert_eq!(c.rows(), 2);
    }

    #[test]
    fn sort_rows_by_groups_keys_and_keeps_every_row() {
        let mut c = CopyBuf::new(3);
        for (e, t, x) in [("b", 2, 1), ("a", 9, 2), ("b", 1, 3), (" ", 5, 4), ("a", 3, 5)] {
            c.row().text(e).int8(t).int4(x);
        }
        c.row().null().int8(0).int4(6);
        let before = c.rows();
        let by_bytes = |a: RowKey<'_>, b: RowKey<'_>| a.cmp(&b);
        c.sort_rows_by(by_bytes);
        assert_eq!(c.rows(), before);
        let b = c.finish().to_vec();
        // Sorting again, finished or not, changes nothing (a retried batch is sorted twice).
        c.sort_rows_by(by_bytes);
        assert_eq!(c.finish(), &b[..]);
        // Decode the rows back: (entity, ts, x) per row.
        let mut pos = 19;
        let mut got = Vec::new();
        while pos + 2 < b.len() {
            assert_eq!(i16::from_be_bytes([b[pos], b[pos + 1]]), 3);
            pos += 2;
            let mut fields = Vec::new();
            for _ in 0..3 {
                let len = i32::from_be_bytes(b[pos..pos + 4].try_into().unwrap());
                pos += 4;
                if len < 0 {
                    fields.push(None);
                } else {
                    fields.push(Some(b[pos..pos + len as usize].to_vec()));
                    pos += len as usize;
                }
            }
            let e = fields[0].clone().map(|v| String::from_utf8(v).unwrap());
            let t = i64::from_be_bytes(fields[1].clone().unwrap().try_into().unwrap());
            let x = i32::from_be_bytes(fields[2].clone().unwrap().try_into().unwrap());
            got.push((e, t, x));
        }
        assert_eq!(&b[pos..], &(-1i16).to_be_bytes());
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            got,
            vec![(None, 0, 6), (s(" "), 5, 4), (s("a"), 3, 5), (s("a"), 9, 2), (s("b"), 1, 3), (s("b"), 2, 1)]
        );
    }
}
