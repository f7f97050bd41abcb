//! The Parquet archive of raw telemetry.
//!
//! Layout: `<root>/telemetry/date=YYYY-MM-DD/hour=HH/telemetry.parquet`, one file per UTC hour
//! of event time, rows sorted by entity and time, Snappy-compressed. The directory names are
//! Hive-style partition keys, so DataFusion (and Spark, DuckDB, pandas) prune by date and hour.
//!
//! The sink cuts an hour's file from the raw table once the hour is closed (see
//! `docs/design/archive.md`): the archive is exactly once because the raw table is, and a file
//! is written under a hidden temporary name and renamed into place, so a reader never sees a
//! half-written file and a crash leaves either the old file or the new one.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arrow_array::builder::{BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

#[cfg(feature = "query")]
pub mod query;

/// The table's directory under the archive root.
pub const TELEMETRY_DIR: &str = "telemetry";
/// The file of one hour.
pub const HOUR_FILE: &str = "telemetry.parquet";
const HOUR_MS: i64 = 3_600_000;
/// Rows per record batch handed to the Parquet writer (memory stays bounded for any hour).
const CHUNK_ROWS: usize = 65_536;

/// The archived columns: the raw table's, with `ts` as UTC milliseconds and the labels as a
/// JSON object string.
pub fn schema() -> SchemaRef {
    let f = |n: &str, t: DataType| Field::new(n, t, true);
    Arc::new(Schema::new(vec![
        Field::new("entity_id", DataType::Utf8, false),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
        f("service", DataType::Utf8),
        f("cluster", DataType::Utf8),
        f("cpu_util", DataType::Float64),
        f("mem_util", DataType::Float64),
        f("net_in_bps", DataType::Float64),
        f("net_out_bps", DataType::Float64),
        f("disk_read_bps", DataType::Float64),
        f("disk_write_bps", DataType::Float64),
        f("cpu_cores", DataType::Float64),
        f("mem_bytes", DataType::Float64),
        f("replicas", DataType::Int32),
        f("cost_per_hour", DataType::Float64),
        f("scale_event", DataType::Boolean),
        f("labels", DataType::Utf8),
        Field::new("src_partition", DataType::Int32, false),
        Field::new("src_offset", DataType::Int64, false),
    ]))
}

/// One archived sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub entity_id: String,
    pub ts_ms: i64,
    pub service: Option<String>,
    pub cluster: Option<String>,
    /// cpu_util, mem_util, net_in_bps, net_out_bps, disk_read_bps, disk_write_bps, cpu_cores,
    /// mem_bytes, in the schema's order.
    pub values: [Option<f64>; 8],
    pub replicas: Option<i32>,
    pub cost_per_hour: Option<f64>,
    pub scale_event: Option<bool>,
    pub labels: Option<String>,
    pub src_partition: i32,
    pub src_offset: i64,
}

/// `(YYYY-MM-DD, HH)` of the UTC hour holding `ms`.
pub fn hour_keys(ms: i64) -> anyhow::Result<(String, String)> {
    let t = arrow_array::temporal_conversions::timestamp_ms_to_datetime(ms)
        .with_context(|| format!("timestamp {ms} ms is out of range"))?;
    Ok((t.format("%Y-%m-%d").to_string(), t.format("%H").to_string()))
}

/// The file of the hour starting at `hour_ms`.
pub fn hour_path(root: &Path, hour_ms: i64) -> anyhow::Result<PathBuf> {
    let (date, hour) = hour_keys(hour_ms)?;
    Ok(root
        .join(TELEMETRY_DIR)
        .join(format!("date={date}"))
        .join(format!("hour={hour}"))
        .join(HOUR_FILE))
}

/// Writes one hour's file: rows are pushed in order, `finish` makes the file visible.
pub struct HourWriter {
    tmp: PathBuf,
    path: PathBuf,
    hour_ms: i64,
    writer: ArrowWriter<File>,
    chunk: Vec<Row>,
    rows: u64,
}

impl std::fmt::Debug for HourWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HourWriter").field("path", &self.path).field("rows", &self.rows).finish()
    }
}

impl HourWriter {
    /// Starts the file of the hour beginning at `hour_ms` (a multiple of an hour) under `root`.
    pub fn create(root: &Path, hour_ms: i64) -> anyhow::Result<HourWriter> {
        anyhow::ensure!(hour_ms.rem_euclid(HOUR_MS) == 0, "{hour_ms} is not the start of an hour");
        let path = hour_path(root, hour_ms)?;
        let dir = path.parent().expect("hour directory");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // Hidden and without the .parquet extension: readers listing the directory skip it.
        let tmp = dir.join(format!(".{HOUR_FILE}.{}.tmp", std::process::id()));
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_size(256 * 1024)
            .build();
        let writer = ArrowWriter::try_new(file, schema(), Some(props))?;
        Ok(HourWriter { tmp, path, hour_ms, writer, chunk: Vec::with_capacity(CHUNK_ROWS), rows: 0 })
    }

    /// Adds a row of this hour.
    pub fn push(&mut self, row: Row) -> anyhow::Result<()> {
        anyhow::ensure!(
            row.ts_ms.div_euclid(HOUR_MS) * HOUR_MS == self.hour_ms,
            "row at {} ms does not belong to the hour starting at {} ms",
            row.ts_ms,
            self.hour_ms
        );
        self.chunk.push(row);
        self.rows += 1;
        if self.chunk.len() >= CHUNK_ROWS {
            self.flush_chunk()?;
        }
        Ok(())
    }

    fn flush_chunk(&mut self) -> anyhow::Result<()> {
        if !self.chunk.is_empty() {
            let batch = to_batch(&self.chunk)?;
            self.writer.write(&batch)?;
            self.chunk.clear();
        }
        Ok(())
    }

    /// Writes the footer, syncs, and renames the file into place (replacing an earlier cut of
    /// the same hour). Returns the path and the rows written.
    pub fn finish(mut self) -> anyhow::Result<(PathBuf, u64)> {
        self.flush_chunk()?;
        let file = self.writer.into_inner()?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("renaming {} into place", self.tmp.display()))?;
        if let Some(dir) = self.path.parent() {
            // The rename is durable once the directory is.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok((self.path.clone(), self.rows))
    }

    /// Drops the unfinished file.
    pub fn abort(self) {
        let tmp = self.tmp.clone();
        drop(self);
        let _ = std::fs::remove_file(tmp);
    }
}

/// The rows as one record batch of [`schema`].
pub fn to_batch(rows: &[Row]) -> anyhow::Result<RecordBatch> {
    let n = rows.len();
    let mut entity = StringBuilder::with_capacity(n, n * 12);
    let mut ts = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut service = StringBuilder::with_capacity(n, n * 8);
    let mut cluster = StringBuilder::with_capacity(n, n * 8);
    let mut values: Vec<Float64Builder> = (0..8).map(|_| Float64Builder::with_capacity(n)).collect();
    let mut replicas = Int32Builder::with_capacity(n);
    let mut cost = Float64Builder::with_capacity(n);
    let mut scale = BooleanBuilder::with_capacity(n);
    let mut labels = StringBuilder::with_capacity(n, 0);
    let mut part = Int32Builder::with_capacity(n);
    let mut offset = Int64Builder::with_capacity(n);
    for r in rows {
        entity.append_value(&r.entity_id);
        ts.append_value(r.ts_ms);
        service.append_option(r.service.as_deref());
        cluster.append_option(r.cluster.as_deref());
        for (b, v) in values.iter_mut().zip(r.values) {
            b.append_option(v);
        }
        replicas.append_option(r.replicas);
        cost.append_option(r.cost_per_hour);
        scale.append_option(r.scale_event);
        labels.append_option(r.labels.as_deref());
        part.append_value(r.src_partition);
        offset.append_value(r.src_offset);
    }
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(entity.finish()),
        Arc::new(ts.finish()),
        Arc::new(service.finish()),
        Arc::new(cluster.finish()),
    ];
    cols.extend(values.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    cols.push(Arc::new(replicas.finish()));
    cols.push(Arc::new(cost.finish()));
    cols.push(Arc::new(scale.finish()));
    cols.push(Arc::new(labels.finish()));
    cols.push(Arc::new(part.finish()));
    cols.push(Arc::new(offset.finish()));
    Ok(RecordBatch::try_new(schema(), cols)?)
}

/// The rows of a record batch of [`schema`] (what [`to_batch`] made).
pub fn from_batch(b: &RecordBatch) -> anyhow::Result<Vec<Row>> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int32Type, Int64Type, TimestampMillisecondType};
    use arrow_array::Array;
    anyhow::ensure!(b.schema().fields() == schema().fields(), "not an archive batch: {:?}", b.schema());
    let text = |i: usize| b.column(i).as_string::<i32>();
    let f = |i: usize| b.column(i).as_primitive::<Float64Type>();
    let opt_text = |i: usize, r: usize| text(i).is_valid(r).then(|| text(i).value(r).to_owned());
    let opt_f = |i: usize, r: usize| f(i).is_valid(r).then(|| f(i).value(r));
    let ts = b.column(1).as_primitive::<TimestampMillisecondType>();
    let replicas = b.column(12).as_primitive::<Int32Type>();
    let scale = b.column(14).as_boolean();
    let part = b.column(16).as_primitive::<Int32Type>();
    let off = b.column(17).as_primitive::<Int64Type>();
    Ok((0..b.num_rows())
        .map(|r| Row {
            entity_id: text(0).value(r).to_owned(),
            ts_ms: ts.value(r),
            service: opt_text(2, r),
            cluster: opt_text(3, r),
            values: [4, 5, 6, 7, 8, 9, 10, 11].map(|i| opt_f(i, r)),
            replicas: replicas.is_valid(r).then(|| replicas.value(r)),
            cost_per_hour: opt_f(13, r),
            scale_event: scale.is_valid(r).then(|| scale.value(r)),
            labels: opt_text(15, r),
            src_partition: part.value(r),
            src_offset: off.value(r),
        })
        .collect())
}

/// Reads a whole archived file back (tests, small tools).
pub fn read_file(path: &Path) -> anyhow::Result<Vec<RecordBatch>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Float64Type;

    fn row(e: &str, ts_ms: i64, cpu: f64) -> Row {
        Row {
            entity_id: e.into(),
            ts_ms,
            service: Some("web".into()),
            values: [Some(cpu), None, Some(1.0), Some(2.0), None, None, Some(4.0), Some(8e9)],
            replicas: Some(3),
            labels: Some(r#"{"team":"a"}"#.into()),
            src_offset: ts_ms / 1000,
            ..Row::default()
        }
    }

    #[test]
    fn the_hour_layout_is_hive_partitioned_by_utc_date_and_hour() {
        // 2013-08-12 03:00:00 UTC
        let p = hour_path(Path::new("/a"), 1_376_276_400_000).unwrap();
        assert_eq!(p, Path::new("/a/telemetry/date=2013-08-12/hour=03/telemetry.parquet"));
        assert!(hour_path(Path::new("/a"), i64::MAX).is_err());
    }

    #[test]
    fn an_hour_file_appears_only_when_finished_and_reads_back_exactly() {
        let dir = std::env::temp_dir().join(format!("headroom-archive-{}", std::process::id()));
        let hour = 1_376_276_400_000;
        let mut w = HourWriter::create(&dir, hour).unwrap();
        let rows: Vec<Row> = (0..100_000).map(|i| row(&format!("vm-{}", i % 7), hour + i * 30, (i % 100) as f64 / 100.0)).collect();
        for r in rows.iter().cloned() {
            w.push(r).unwrap();
        }
        let path = hour_path(&dir, hour).unwrap();
        assert!(!path.exists(), "visible before finish");
        assert!(w.push(row("vm-0", hour + HOUR_MS, 0.1)).is_err(), "a row of the next hour is refused");
        let (p, n) = w.finish().unwrap();
        assert_eq!((p.as_path(), n), (path.as_path(), 100_000));
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from(HOUR_FILE)], "no temporary file left");
        let back = read_file(&path).unwrap();
        assert_eq!(back.iter().map(|b| b.num_rows()).sum::<usize>(), 100_000);
        let cpu: f64 = back.iter().map(|b| b.column(4).as_primitive::<Float64Type>().iter().flatten().sum::<f64>()).sum();
        let want: f64 = rows.iter().filter_map(|r| r.values[0]).sum();
        assert!((cpu - want).abs() < 1e-6, "{cpu} vs {want}");
        assert_eq!(back[0].schema(), schema());
        assert_eq!(back[0].column(5).null_count(), back[0].num_rows(), "missing values stay null");
        let again: Vec<Row> = back.iter().flat_map(|b| from_batch(b).unwrap()).collect();
        assert_eq!(again, rows, "rows read back equal the rows written");

        // An aborted rewrite leaves the finished file untouched.
        let mut w = HourWriter::create(&dir, hour).unwrap();
        w.push(row("vm-9", hour, 0.5)).unwrap();
        w.abort();
        assert_eq!(read_file(&path).unwrap().iter().map(|b| b.num_rows()).sum::<usize>(), 100_000);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
