//! Cutting closed hours of the raw table into the Parquet archive.
//!
//! The archive is exactly once because the raw table is: an hour's file is written from the
//! rows the raw table holds for it, once the table's data clock is `archive.grace` past the
//! hour's end. Which hours are pending comes from the committed batches (the hours they wrote
//! raw rows in) and, once after start, from the raw rows newer than the newest hour recorded in
//! `archive_hours`. An hour that receives rows after it was cut becomes pending again and its
//! file is replaced (written under a temporary name and renamed, so readers see the old or the
//! new file, never a partial one). Cuts are serialized across sink instances by an advisory
//! lock, so the last file written for an hour is from a snapshot taken after every commit to it.

use std::collections::BTreeSet;
use std::path::PathBuf;

use futures_util::TryStreamExt;
use headroom_archive::{HourWriter, Row};
use sqlx::{PgConnection, Row as _};

const HOUR_MS: i64 = 3_600_000;
/// One hour of the raw table, in the archive's order.
const HOUR_ROWS: &str = "SELECT entity_id, (extract(epoch FROM ts) * 1000)::int8 AS ts_ms, service, cluster, \
     cpu_util, mem_util, net_in_bps, net_out_bps, disk_read_bps, disk_write_bps, cpu_cores, mem_bytes, \
     replicas, cost_per_hour, scale_event, labels::text AS labels, src_partition, src_offset \
     FROM telemetry_raw WHERE ts >= to_timestamp($1::float8 / 1000) AND ts < to_timestamp($2::float8 / 1000) \
     ORDER BY entity_id, ts, src_partition, src_offset";

fn row_of(r: &sqlx::postgres::PgRow) -> Result<Row, sqlx::Error> {
    let f = |i: usize| r.try_get::<Option<f64>, _>(i);
    Ok(Row {
        entity_id: r.try_get(0)?,
        ts_ms: r.try_get(1)?,
        service: r.try_get(2)?,
        cluster: r.try_get(3)?,
        values: [f(4)?, f(5)?, f(6)?, f(7)?, f(8)?, f(9)?, f(10)?, f(11)?],
        replicas: r.try_get(12)?,
        cost_per_hour: r.try_get(13)?,
        scale_event: r.try_get(14)?,
        labels: r.try_get(15)?,
        src_partition: r.try_get(16)?,
        src_offset: r.try_get(17)?,
    })
}
/// The advisory lock key of archive cuts (any constant shared by every instance).
const LOCK_KEY: i64 = 0x6865_6164_726f_6f6d; // "headroom"

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub hours: u64,
    pub rows: u64,
    /// Another instance was cutting: nothing was done.
    pub busy: bool,
}

/// The archive's state in the sink.
#[derive(Debug)]
pub struct Archiver {
    root: PathBuf,
    grace_ms: i64,
    max_hours: usize,
    /// Hours with committed raw rows not yet cut (or cut before their latest rows: a batch
    /// that writes into an hour already cut makes it pending again).
    pending: BTreeSet<i64>,
    recovered: bool,
}

impl Archiver {
    pub fn new(root: PathBuf, grace: std::time::Duration, max_hours: u32) -> Archiver {
        Archiver {
            root,
            grace_ms: i64::try_from(grace.as_millis()).unwrap_or(i64::MAX / 4),
            max_hours: max_hours as usize,
            pending: BTreeSet::new(),
            recovered: false,
        }
    }

    /// Hours pending a cut.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The oldest hour not cut yet (None: none pending, or not known before the first pass).
    /// Raw partitions from its day on are kept past their retention until it is cut.
    pub fn oldest_pending(&self) -> Option<i64> {
        if !self.recovered {
            // Before the first pass, what is pending in the table is unknown: hold everything
            // (the epoch: the validation refuses samples before 2000).
            return Some(0);
        }
        self.pending.first().copied()
    }

    /// Records the hours a committed batch wrote raw rows in.
    pub fn committed(&mut self, hours: &BTreeSet<i64>) {
        self.pending.extend(hours.iter().copied());
    }

    /// Finds, once, the hours written before this instance started and not yet cut.
    async fn recover(&mut self, c: &mut PgConnection) -> Result<(), sqlx::Error> {
        let newest: Option<i64> =
            sqlx::query_scalar("SELECT (extract(epoch FROM max(hour)) * 1000)::int8 FROM archive_hours")
                .fetch_one(&mut *c)
                .await?;
        let from = newest.map_or(i64::MIN / 2, |h| h + HOUR_MS);
        let hours: Vec<i64> = sqlx::query_scalar(
            "SELECT DISTINCT (extract(epoch FROM date_trunc('hour', ts)) * 1000)::int8 FROM telemetry_raw \
             WHERE ts >= to_timestamp($1::float8 / 1000)",
        )
        .bind(from.max(-62_135_596_800_000) as f64)
        .fetch_all(&mut *c)
        .await?;
        self.pending.extend(hours);
        self.recovered = true;
        Ok(())
    }

    /// Cuts the closed pending hours, oldest first, at most `max_hours_per_pass`. `clock_ms` is
    /// the raw table's data clock. (The raw table keeps every pending hour: retention waits.)
    pub async fn pass(&mut self, c: &mut PgConnection, clock_ms: i64) -> anyhow::Result<Pass> {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(LOCK_KEY).fetch_one(&mut *c).await?;
        if !locked {
            return Ok(Pass { busy: true, ..Pass::default() });
        }
        let res = self.pass_locked(c, clock_ms).await;
        let unlock = sqlx::query("SELECT pg_advisory_unlock($1)").bind(LOCK_KEY).execute(&mut *c).await;
        let pass = res?;
        unlock?;
        Ok(pass)
    }

    async fn pass_locked(&mut self, c: &mut PgConnection, clock_ms: i64) -> anyhow::Result<Pass> {
        if !self.recovered {
            self.recover(c).await?;
        }
        let closed: Vec<i64> = self
            .pending
            .iter()
            .copied()
            .take_while(|h| h + HOUR_MS + self.grace_ms <= clock_ms)
            .take(self.max_hours)
            .collect();
        let mut pass = Pass::default();
        for hour in closed {
            let rows = self.cut_hour(c, hour).await?;
            self.pending.remove(&hour);
            pass.hours += u64::from(rows > 0);
            pass.rows += rows;
        }
        Ok(pass)
    }

    /// Writes the hour's file from the raw table and records it; returns the rows written.
    async fn cut_hour(&self, c: &mut PgConnection, hour: i64) -> anyhow::Result<u64> {
        let path = headroom_archive::hour_path(&self.root, hour)?;
        if path.exists() {
            return self.recut_hour(c, hour, &path).await;
        }
        let mut writer: Option<HourWriter> = None;
        let res: anyhow::Result<()> = async {
            let mut rows = sqlx::query(HOUR_ROWS)
            .bind(hour as f64)
            .bind((hour + HOUR_MS) as f64)
            .fetch(&mut *c);
            while let Some(r) = rows.try_next().await? {
                let w = match writer.as_mut() {
                    Some(w) => w,
                    None => writer.insert(HourWriter::create(&self.root, hour)?),
                };
                w.push(row_of(&r)?)?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = res {
            if let Some(w) = writer {
                w.abort();
            }
            return Err(e);
        }
        let Some(w) = writer else {
            return Ok(0);
        };
        let (path, rows) = w.finish()?;
        record(c, hour, &path, rows).await?;
        Ok(rows)
    }

    /// Cuts an hour again (late rows arrived after its file was written): the file's rows and
    /// the raw table's, once each by source (partition, offset). The raw table may no longer
    /// hold what the first cut took (its partition dropped once archived), so the file is the
    /// base. Holds the hour in memory; late rows are rare.
    async fn recut_hour(&self, c: &mut PgConnection, hour: i64, path: &std::path::Path) -> anyhow::Result<u64> {
        let mut rows: std::collections::BTreeMap<(String, i64, i32, i64), Row> = std::collections::BTreeMap::new();
        for b in headroom_archive::read_file(path)? {
            for r in headroom_archive::from_batch(&b)? {
                rows.insert((r.entity_id.clone(), r.ts_ms, r.src_partition, r.src_offset), r);
            }
        }
        let fresh: Vec<Row> = sqlx::query(HOUR_ROWS)
            .bind(hour as f64)
            .bind((hour + HOUR_MS) as f64)
            .fetch_all(&mut *c)
            .await?
            .iter()
            .map(row_of)
            .collect::<Result<_, _>>()?;
        for r in fresh {
            rows.insert((r.entity_id.clone(), r.ts_ms, r.src_partition, r.src_offset), r);
        }
        let mut w = HourWriter::create(&self.root, hour)?;
        for r in rows.into_values() {
            if let Err(e) = w.push(r) {
                w.abort();
                return Err(e);
            }
        }
        let (path, n) = w.finish()?;
        record(c, hour, &path, n).await?;
        Ok(n)
    }
}

/// Records a cut hour in `archive_hours`.
async fn record(c: &mut PgConnection, hour: i64, path: &std::path::Path, rows: u64) -> anyhow::Result<()> {
    {
        sqlx::query(
            "INSERT INTO archive_hours (hour, rows, path) VALUES (to_timestamp($1::float8 / 1000), $2, $3) \
             ON CONFLICT (hour) DO UPDATE SET rows = excluded.rows, path = excluded.path, archived_at = now()",
        )
        .bind(hour as f64)
        .bind(rows as i64)
        .bind(path.display().to_string())
        .execute(&mut *c)
        .await?;
    }
    tracing::info!(hour = %path.display(), rows, "hour archived");
    Ok(())
}
