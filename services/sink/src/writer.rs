//! Writing one batch to PostgreSQL in one transaction: the fenced offsets first, the
//! append-only tables by binary `COPY`, the rollups merged from staging tables with
//! `INSERT … ON CONFLICT DO UPDATE`, the model registry, and the new offsets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use headroom_store::offsets::{self, Advance, FenceError};
use headroom_store::partitions::{self, PartitionCache};
use headroom_store::{CopyBuf, RowKey, TableSpec};
use sqlx::{Connection, PgConnection};

use crate::anomalies;
use crate::rows::{model_kind, Batch, ROLLUP_METRICS};

/// How a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The connection or the server is gone: reconnect and retry the same batch.
    #[error("postgres unavailable: {0}")]
    Unavailable(String),
    /// Another instance wrote one of the batch's partitions: drop the batch and re-read.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The statement or the data was refused: a bug or a schema mismatch; stop.
    #[error("postgres refused the batch: {0}")]
    Refused(String),
}

impl From<sqlx::Error> for WriteError {
    fn from(e: sqlx::Error) -> Self {
        if headroom_store::is_connection_error(&e) {
            WriteError::Unavailable(e.to_string())
        } else if let sqlx::Error::Database(db) = &e {
            // A concurrent writer inserting the same new offset row, or a serialization
            // failure: the same as being fenced.
            if db.code().is_some_and(|c| c == "23505" && db.constraint() == Some("sink_offsets_pkey") || c == "40001" || c == "40P01") {
                WriteError::Fenced(e.to_string())
            } else {
                WriteError::Refused(e.to_string())
            }
        } else {
            WriteError::Refused(e.to_string())
        }
    }
}

impl From<FenceError> for WriteError {
    fn from(e: FenceError) -> Self {
        match e {
            FenceError::Db(e) => e.into(),
            f @ FenceError::Fenced { .. } => WriteError::Fenced(f.to_string()),
        }
    }
}

/// What one batch wrote: per table, the rows and the seconds its statements took.
pub type Written = Vec<(&'static str, u64, f64)>;

const STAGE_ROLLUP_COLUMNS: &str = "entity_id text, bucket timestamptz, service text, cluster text, n int4, \
    STATS, cpu_p95 float8, mem_p95 float8";
const STAGE_SERVICE_COLUMNS: &str = "service text, cluster text, bucket timestamptz, n int4, \
    STATS";
const STAGE_STATS: &str = "\
    cpu_n int4, cpu_sum float8, cpu_min float8, cpu_max float8, \
    mem_n int4, mem_sum float8, mem_min float8, mem_max float8, \
    net_in_n int4, net_in_sum float8, net_in_min float8, net_in_max float8, \
    net_out_n int4, net_out_sum float8, net_out_min float8, net_out_max float8, \
    disk_read_n int4, disk_read_sum float8, disk_read_min float8, disk_read_max float8, \
    disk_write_n int4, disk_write_sum float8, disk_write_min float8, disk_write_max float8, \
    cost_n int4, cost_sum float8, cost_min float8, cost_max float8, cost_usd float8, \
    cpu_cores_max float8, mem_bytes_max float8, replicas_max int4, scale_events int4, \
    cpu_hist int8[], mem_hist int8[], cpu_sq float8, mem_sq float8";

fn stage_columns(head: &str) -> String {
    head.replace("STATS", STAGE_STATS.trim_start_matches('\\'))
}

/// The merge of a stage table into a rollup table: per entity (`key` = entity_id, bucket) or
/// per service (`key` = service, cluster, bucket).
fn rollup_merge_sql(table: &str, stage: &str, per_service: bool) -> String {
    let (mut cols, mut sets, key) = if per_service {
        (
            vec!["service".to_owned(), "cluster".to_owned(), "bucket".to_owned(), "n".to_owned()],
            vec!["n = t.n + excluded.n".to_owned()],
            "service, cluster, bucket",
        )
    } else {
        (
            ["entity_id", "bucket", "service", "cluster", "n"].map(str::to_owned).to_vec(),
            vec![
                "service = coalesce(excluded.service, t.service)".to_owned(),
                "cluster = coalesce(excluded.cluster, t.cluster)".to_owned(),
                "n = t.n + excluded.n".to_owned(),
            ],
            "entity_id, bucket",
        )
    };
    for m in ROLLUP_METRICS {
        cols.extend([format!("{m}_n"), format!("{m}_sum"), format!("{m}_min"), format!("{m}_max")]);
        sets.push(format!("{m}_n = t.{m}_n + excluded.{m}_n"));
        sets.push(format!(
            "{m}_sum = CASE WHEN t.{m}_sum IS NULL THEN excluded.{m}_sum WHEN excluded.{m}_sum IS NULL THEN t.{m}_sum ELSE t.{m}_sum + excluded.{m}_sum END"
        ));
        // LEAST and GREATEST ignore NULLs.
        sets.push(format!("{m}_min = least(t.{m}_min, excluded.{m}_min)"));
        sets.push(format!("{m}_max = greatest(t.{m}_max, excluded.{m}_max)"));
    }
    for (c, set) in [
        ("cost_usd", "t.cost_usd + excluded.cost_usd"),
        ("cpu_cores_max", "greatest(t.cpu_cores_max, excluded.cpu_cores_max)"),
        ("mem_bytes_max", "greatest(t.mem_bytes_max, excluded.mem_bytes_max)"),
        ("replicas_max", "greatest(t.replicas_max, excluded.replicas_max)"),
        ("scale_events", "t.scale_events + excluded.scale_events"),
        ("cpu_hist", "hist_merge(t.cpu_hist, excluded.cpu_hist)"),
        ("mem_hist", "hist_merge(t.mem_hist, excluded.mem_hist)"),
        // NULL with samples: a row from before sums of squares were kept; it stays unknown.
        ("cpu_sq", "CASE WHEN t.cpu_n > 0 AND t.cpu_sq IS NULL THEN NULL ELSE coalesce(t.cpu_sq, 0) + coalesce(excluded.cpu_sq, 0) END"),
        ("mem_sq", "CASE WHEN t.mem_n > 0 AND t.mem_sq IS NULL THEN NULL ELSE coalesce(t.mem_sq, 0) + coalesce(excluded.mem_sq, 0) END"),
    ] {
        cols.push(c.to_owned());
        sets.push(format!("{c} = {set}"));
    }
    if !per_service {
        // A new row takes the p95 the sink computed; a merged one recomputes it.
        for m in ["cpu", "mem"] {
            cols.push(format!("{m}_p95"));
            sets.push(format!("{m}_p95 = hist_quantile(hist_merge(t.{m}_hist, excluded.{m}_hist), 0.95)"));
        }
    }
    let list = cols.join(", ");
    format!(
        "INSERT INTO {table} AS t ({list}) SELECT {list} FROM {stage} \
         ON CONFLICT ({key}) DO UPDATE SET {}",
        sets.join(", ")
    )
}

const FEATURES_MERGE: &str = "INSERT INTO features_1h AS t \
    (entity_id, bucket, feature_set, n, imputed_n, scale_events, first_ts, last_ts) \
    SELECT entity_id, bucket, feature_set, n, imputed_n, scale_events, first_ts, last_ts FROM stage_features \
    ON CONFLICT (entity_id, bucket) DO UPDATE SET \
    feature_set = excluded.feature_set, n = t.n + excluded.n, imputed_n = t.imputed_n + excluded.imputed_n, \
    scale_events = t.scale_events + excluded.scale_events, \
    first_ts = least(t.first_ts, excluded.first_ts), last_ts = greatest(t.last_ts, excluded.last_ts)";

/// The sink's connection and what it knows about the database.
pub struct Writer {
    url: String,
    connect_timeout: Duration,
    group: String,
    conn: Option<PgConnection>,
    partitions: PartitionCache,
    merge_1m: String,
    merge_1h: String,
    merge_service: String,
    /// The hourly CPU moments of the entities written, for scoring anomalies.
    baselines: anomalies::BaselineCache,
    /// Bumped by the consumer at every rebalance: the cache is only valid within one.
    ownership: Arc<AtomicU64>,
    /// Per table, the newest event time written (the data clock for retention).
    pub clocks: HashMap<&'static str, i64>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("url", &headroom_store::redact(&self.url))
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl Writer {
    pub fn new(url: &str, connect_timeout: Duration, group: &str) -> Writer {
        Writer {
            url: url.to_owned(),
            connect_timeout,
            group: group.to_owned(),
            conn: None,
            partitions: PartitionCache::default(),
            merge_1m: rollup_merge_sql("telemetry_1m", "stage_1m", false),
            merge_1h: rollup_merge_sql("telemetry_1h", "stage_1h", false),
            merge_service: rollup_merge_sql("telemetry_service_1h", "stage_service", true),
            baselines: anomalies::BaselineCache::default(),
            ownership: Arc::new(AtomicU64::new(0)),
            clocks: HashMap::new(),
        }
    }

    /// Shares `epoch`, which the consumer bumps at every rebalance (the anomaly baselines the
    /// writer keeps are valid only while it owns the same partitions).
    pub fn with_ownership(mut self, epoch: Arc<AtomicU64>) -> Writer {
        self.ownership = epoch;
        self
    }

    /// Entities whose anomaly baselines the writer keeps.
    pub fn baseline_entities(&self) -> usize {
        self.baselines.len()
    }

    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Drops the connection (after an error that may have left it in an unknown state).
    pub fn disconnect(&mut self) {
        self.conn = None;
        self.partitions.clear();
        self.baselines.clear();
    }

    /// The connection, opened (with its session's staging tables) when there is none.
    pub async fn conn(&mut self) -> Result<&mut PgConnection, WriteError> {
        if self.conn.is_none() {
            let mut c = headroom_store::connect(&self.url, self.connect_timeout)
                .await
                .map_err(|e| WriteError::Unavailable(format!("{e:#}")))?;
            for (stage, cols) in [
                ("stage_1m", STAGE_ROLLUP_COLUMNS),
                ("stage_1h", STAGE_ROLLUP_COLUMNS),
                ("stage_service", STAGE_SERVICE_COLUMNS),
            ] {
                sqlx::query(&format!(
                    "CREATE TEMP TABLE IF NOT EXISTS {stage} ({}) ON COMMIT DELETE ROWS",
                    stage_columns(cols)
                ))
                .execute(&mut c)
                .await?;
            }
            sqlx::query(
                "CREATE TEMP TABLE IF NOT EXISTS stage_features (entity_id text, bucket timestamptz, \
                 feature_set text, n int4, imputed_n int4, scale_events int4, first_ts timestamptz, \
                 last_ts timestamptz) ON COMMIT DELETE ROWS",
            )
            .execute(&mut c)
            .await?;
            self.partitions.clear();
            self.conn = Some(c);
        }
        Ok(self.conn.as_mut().expect("just connected"))
    }

    /// Loads the stored positions of `partitions`.
    pub async fn load_offsets(
        &mut self,
        partitions: &[offsets::TopicPartition],
    ) -> Result<HashMap<offsets::TopicPartition, i64>, WriteError> {
        let group = self.group.clone();
        let c = self.conn().await?;
        Ok(offsets::load(c, &group, partitions).await?)
    }

    /// Writes `batch` and `advances` atomically. On error nothing was written.
    pub async fn write(&mut self, batch: &mut Batch, advances: &[Advance]) -> Result<Written, WriteError> {
        let res = self.write_inner(batch, advances).await;
        if let Err(WriteError::Unavailable(_) | WriteError::Refused(_)) = &res {
            // The transaction was rolled back (or the connection is gone); start clean.
            self.disconnect();
        }
        if res.is_err() {
            // Fenced or rolled back: what the cache knows may not be what the table holds.
            self.baselines.clear();
        }
        res
    }

    async fn write_inner(&mut self, batch: &mut Batch, advances: &[Advance]) -> Result<Written, WriteError> {
        let group = self.group.clone();
        // Partitions first, each in its own short statement outside the batch's transaction
        // (DDL takes a lock on the parent; holding it for the whole batch would stall readers).
        let days: Vec<(&'static str, Vec<i64>)> = batch
            .days
            .iter()
            .map(|(t, d)| (*t, d.iter().copied().collect()))
            .collect();
        self.conn().await?;
        let conn = self.conn.as_mut().expect("connected");
        for (table, days) in days {
            let spec = partitions::spec(table).expect("batch tables are partitioned tables");
            self.partitions.ensure(conn, spec, days).await?;
        }
        let (stage_1m, stage_1h, stage_service, stage_features) = batch.encode_rollups();
        let mut tx = conn.begin().await?;
        offsets::lock_and_check(&mut tx, &group, advances).await?;
        let mut written: Written = Vec::new();
        for (table, buf, cols) in [
            ("telemetry_raw", &mut batch.raw, RAW_LIST),
            ("forecasts", &mut batch.forecasts, FORECAST_LIST),
            ("recommendations", &mut batch.recommendations, RECOMMENDATION_LIST),
            ("drift_alerts", &mut batch.drift, DRIFT_LIST),
            ("dead_letters", &mut batch.dead_letters, DLQ_LIST),
        ] {
            if buf.is_empty() {
                continue;
            }
            let t0 = Instant::now();
            if table == "telemetry_raw" {
                buf.sort_rows_by(raw_order);
            }
            copy(&mut tx, &format!("COPY {table} ({cols}) FROM STDIN (FORMAT binary)"), buf).await?;
            written.push((table, buf.rows() as u64, t0.elapsed().as_secs_f64()));
        }
        for (stage, mut buf, merge, table) in [
            ("stage_1m", stage_1m, &self.merge_1m, "telemetry_1m"),
            ("stage_1h", stage_1h, &self.merge_1h, "telemetry_1h"),
            ("stage_service", stage_service, &self.merge_service, "telemetry_service_1h"),
            ("stage_features", stage_features, &FEATURES_MERGE.to_owned(), "features_1h"),
        ] {
            if buf.is_empty() {
                continue;
            }
            let t0 = Instant::now();
            copy(&mut tx, &format!("COPY {stage} FROM STDIN (FORMAT binary)"), &mut buf).await?;
            sqlx::query(merge).execute(&mut *tx).await?;
            written.push((table, buf.rows() as u64, t0.elapsed().as_secs_f64()));
        }
        // Anomalies: the batch's CPU samples against the hourly rollup just merged (the 24
        // hours before each sample's hour), from what the writer already knows of its entities
        // plus what it reads of the others (crate::anomalies).
        let mut learned = None;
        if !batch.points.is_empty() {
            let t0 = Instant::now();
            let epoch = self.ownership.load(Ordering::SeqCst);
            let plan = self.baselines.plan(&batch.points, epoch);
            let loaded = if plan.missing.is_empty() {
                HashMap::new()
            } else {
                let missing: Vec<&str> = plan.missing.iter().map(String::as_str).collect();
                anomalies::load_history(&mut tx, &missing, plan.from_ms).await?
            };
            let deltas = cpu_deltas(batch);
            let history = self.baselines.history(&batch.points, &loaded, &deltas);
            let found = anomalies::score(&batch.points, &history);
            if !found.is_empty() {
                let mut buf = anomalies::encode(&found);
                copy(&mut tx, &format!("COPY telemetry_anomalies ({}) FROM STDIN (FORMAT binary)", anomalies::COLUMNS), &mut buf)
                    .await?;
            }
            written.push(("telemetry_anomalies", found.len() as u64, t0.elapsed().as_secs_f64()));
            learned = Some((plan, loaded, deltas));
        }
        let t0 = Instant::now();
        for m in &batch.models {
            write_model_event(&mut tx, m).await?;
        }
        if !batch.models.is_empty() {
            written.push(("model_events", batch.models.len() as u64, t0.elapsed().as_secs_f64()));
        }
        offsets::store(&mut tx, &group, advances).await?;
        tx.commit().await?;
        if let Some((plan, loaded, deltas)) = learned {
            let epoch = self.ownership.load(Ordering::SeqCst);
            self.baselines.committed(plan, loaded, &deltas, epoch);
        }
        for (t, ts) in &batch.newest {
            let c = self.clocks.entry(t).or_insert(*ts);
            *c = (*c).max(*ts);
        }
        Ok(written)
    }

    /// Creates partitions ahead of each table's clock and drops those past retention. Raw rows
    /// at or after `raw_hold_ms` (the oldest hour the archive has not cut yet) are kept whatever
    /// the retention says, so that no sample leaves the raw table before it is archived.
    pub async fn maintain(
        &mut self,
        retention: &[(TableSpec, Duration)],
        ahead_days: u32,
        now_ms: i64,
        raw_hold_ms: Option<i64>,
    ) -> Result<(i32, usize), WriteError> {
        self.conn().await?;
        let conn = self.conn.as_mut().expect("connected");
        let (mut dropped, mut created) = (0, 0);
        for (spec, keep) in retention {
            let mut clock = self.clocks.get(spec.name).map_or(now_ms, |c| (*c).min(now_ms));
            if let (Some(hold), "telemetry_raw") = (raw_hold_ms, spec.name) {
                clock = clock.min(hold.saturating_add(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX / 4)));
            }
            let ahead = (0..=i64::from(ahead_days)).map(|d| clock + d * 86_400_000);
            created += self.partitions.ensure(conn, *spec, ahead).await?;
            if self.clocks.contains_key(spec.name) {
                dropped += self.partitions.drop_expired(conn, *spec, clock, *keep).await?;
            }
        }
        Ok((dropped, created))
    }
}

/// The batch's CPU share of each (entity, hour) of the hourly rollup.
fn cpu_deltas(batch: &Batch) -> anomalies::Deltas<'_> {
    let mut d: anomalies::Deltas<'_> = HashMap::new();
    for ((entity, hour), r) in &batch.rollup_1h {
        let cpu = &r.metrics[0];
        d.entry(entity.as_str()).or_default().push((*hour, i64::from(cpu.n), cpu.sum, cpu.sumsq));
    }
    d
}

/// The order raw rows are written in: by hour, then entity, then time. Each entity's rows of
/// an hour go one after another into the same leaf of the `(entity_id, ts)` index instead of
/// one random leaf per row, and each hour's rows stay together for the BRIN index on `ts`.
fn raw_order(a: RowKey<'_>, b: RowKey<'_>) -> std::cmp::Ordering {
    const HOUR_US: i64 = 3_600_000_000;
    let time = |k: RowKey<'_>| {
        let us = k.1.and_then(|v| <[u8; 8]>::try_from(v).ok()).map_or(i64::MIN, i64::from_be_bytes);
        (us.div_euclid(HOUR_US), us)
    };
    let (ta, tb) = (time(a), time(b));
    ta.0.cmp(&tb.0).then_with(|| a.0.cmp(&b.0)).then(ta.1.cmp(&tb.1))
}

async fn copy(tx: &mut PgConnection, statement: &str, buf: &mut CopyBuf) -> Result<(), sqlx::Error> {
    let mut c = tx.copy_in_raw(statement).await?;
    // Send in chunks so that a large batch does not become one huge protocol message.
    for chunk in buf.finish().chunks(1 << 20) {
        if let Err(e) = c.send(chunk).await {
            let _ = c.abort("send failed").await;
            return Err(e);
        }
    }
    c.finish().await?;
    Ok(())
}

async fn write_model_event(tx: &mut PgConnection, m: &crate::rows::ModelRow) -> Result<(), sqlx::Error> {
    let e = &m.event;
    let metrics = serde_json::Value::Object(
        e.metrics
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::json!(v)))
            .collect(),
    )
    .to_string();
    let kind = model_kind(e.kind);
    sqlx::query(
        "INSERT INTO model_events (event_id, model_name, version, ts, kind, artifact_uri, feature_set, metrics, reason, src_partition, src_offset)
         VALUES ($1, $2, $3, to_timestamp($4::float8 / 1000), $5, $6, $7, $8::jsonb, $9, $10, $11)
         ON CONFLICT (src_partition, src_offset) DO NOTHING",
    )
    .bind(&e.event_id)
    .bind(&e.model_name)
    .bind(&e.version)
    .bind(e.ts_ms as f64)
    .bind(kind)
    .bind(&e.artifact_uri)
    .bind(&e.feature_set)
    .bind(&metrics)
    .bind(e.reason.as_deref())
    .bind(m.partition)
    .bind(m.offset)
    .execute(&mut *tx)
    .await?;
    let status = match e.kind {
        headroom_schemas::ModelEventKind::Registered => "registered",
        headroom_schemas::ModelEventKind::Promoted | headroom_schemas::ModelEventKind::RolledBack => "serving",
        headroom_schemas::ModelEventKind::Rejected => "rejected",
        headroom_schemas::ModelEventKind::Retired => "retired",
    };
    if status == "serving" {
        sqlx::query(
            "UPDATE model_registry SET status = 'retired', updated_at = to_timestamp($3::float8 / 1000)
             WHERE model_name = $1 AND status = 'serving' AND version <> $2",
        )
        .bind(&e.model_name)
        .bind(&e.version)
        .bind(e.ts_ms as f64)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO model_registry (model_name, version, status, artifact_uri, feature_set, metrics, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6::jsonb, to_timestamp($7::float8 / 1000))
         ON CONFLICT (model_name, version) DO UPDATE SET status = excluded.status,
           artifact_uri = excluded.artifact_uri, feature_set = excluded.feature_set,
           metrics = CASE WHEN excluded.metrics = '{}'::jsonb THEN model_registry.metrics ELSE excluded.metrics END,
           updated_at = excluded.updated_at",
    )
    .bind(&e.model_name)
    .bind(&e.version)
    .bind(status)
    .bind(&e.artifact_uri)
    .bind(&e.feature_set)
    .bind(&metrics)
    .bind(e.ts_ms as f64)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

const RAW_LIST: &str = "entity_id, ts, service, cluster, cpu_util, mem_util, net_in_bps, net_out_bps, \
    disk_read_bps, disk_write_bps, cpu_cores, mem_bytes, replicas, cost_per_hour, scale_event, labels, \
    src_partition, src_offset";
const FORECAST_LIST: &str = "event_id, entity_id, ts, service, cluster, metric, horizon_min, p50, p90, \
    scale_event_prob, model, src_partition, src_offset";
const RECOMMENDATION_LIST: &str = "recommendation_id, entity_id, ts, service, cluster, action, \
    target_replicas, target_cpu_cores, target_mem_bytes, from_cluster, to_cluster, forecast_event_id, \
    cost_change_per_hour, shortfall_prob, confidence, policy_version, model_versions, reason, \
    src_partition, src_offset";
const DRIFT_LIST: &str = "alert_id, entity_id, ts, kind, subject, statistic, value, threshold, severity, \
    model_version, window_start, window_end, state, src_partition, src_offset";
const DLQ_LIST: &str = "failed_at, reason, detail, service, source_topic, source_partition, source_offset, \
    key, payload, src_partition, src_offset";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::{DLQ_COLUMNS, DRIFT_COLUMNS, FORECAST_COLUMNS, RAW_COLUMNS, RECOMMENDATION_COLUMNS, Rollup};

    #[test]
    fn raw_rows_are_written_by_hour_then_entity_then_time() {
        let hour = 3_600_000;
        let mut b = CopyBuf::new(RAW_COLUMNS);
        let rows = [("b", hour + 5), ("a", 2 * hour + 1), ("b", 3), ("a", hour + 9), ("a", 7), ("b", hour + 1)];
        for (i, (e, ts)) in rows.iter().enumerate() {
            b.row().text(e).timestamptz_ms(*ts);
            for _ in 2..RAW_COLUMNS - 1 {
                b.null();
            }
            b.int8(i as i64);
        }
        b.sort_rows_by(raw_order);
        // The original index of each row, read back from its last field, in written order.
        let bytes = b.finish().to_vec();
        let order: Vec<i64> = (0..rows.len())
            .map(|r| {
                let end = bytes.len() - 2 - (rows.len() - 1 - r) * row_len(rows[0].0);
                i64::from_be_bytes(bytes[end - 8..end].try_into().unwrap())
            })
            .collect();
        // Hour 0: a@7, b@3; hour 1: a@h+9, b@h+1, b@h+5; hour 2: a@2h+1.
        assert_eq!(order, vec![4, 2, 3, 5, 0, 1]);
    }

    /// Bytes of one test row above (an entity id of the same length for every row).
    fn row_len(entity: &str) -> usize {
        2 + (4 + entity.len()) + (4 + 8) + (RAW_COLUMNS as usize - 3) * 4 + (4 + 8)
    }

    #[test]
    fn column_lists_match_the_encoders() {
        let n = |s: &str| s.split(',').count() as i16;
        assert_eq!(n(RAW_LIST), RAW_COLUMNS);
        assert_eq!(n(FORECAST_LIST), FORECAST_COLUMNS);
        assert_eq!(n(RECOMMENDATION_LIST), RECOMMENDATION_COLUMNS);
        assert_eq!(n(DRIFT_LIST), DRIFT_COLUMNS);
        assert_eq!(n(DLQ_LIST), DLQ_COLUMNS);
        assert_eq!(n(&stage_columns(STAGE_ROLLUP_COLUMNS)), Rollup::COLUMNS);
        assert_eq!(n(&stage_columns(STAGE_SERVICE_COLUMNS)), Rollup::SERVICE_COLUMNS);
    }
}
