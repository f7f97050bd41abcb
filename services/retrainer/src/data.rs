//! The training set: the stored telemetry of the last `data.window` (ending at the newest
//! sample, in event time). With a Parquet archive (`data.archive_root`, the sink's
//! `archive.root`) that reaches further back than the raw table, the archived hours are read
//! with DataFusion and the hours not cut yet from PostgreSQL's raw table; otherwise the raw
//! table, or the one-minute rollups where the raw table (short retention) no longer holds the
//! window.

use std::path::Path;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::Array;
use arrow_array::types::{Float64Type, Int32Type, Int64Type};

use headroom_schemas::Telemetry;
use sqlx::{PgPool, Row};

/// What was read, and from where.
#[derive(Debug)]
pub struct TrainingData {
    pub records: Vec<Telemetry>,
    pub source: &'static str,
    pub from_ms: i64,
    pub to_ms: i64,
}

const RAW: &str = "SELECT entity_id, (extract(epoch FROM ts) * 1000)::int8 AS ts_ms, service, cluster,
        cpu_util, mem_util, net_in_bps, net_out_bps, disk_read_bps, disk_write_bps,
        cpu_cores, mem_bytes, replicas, cost_per_hour, scale_event
    FROM telemetry_raw WHERE ts > to_timestamp($1::float8 / 1000) AND ts <= to_timestamp($2::float8 / 1000)";

const ROLLUP: &str = "SELECT entity_id, (extract(epoch FROM bucket) * 1000)::int8 AS ts_ms, service, cluster,
        cpu_sum / NULLIF(cpu_n, 0) AS cpu_util, mem_sum / NULLIF(mem_n, 0) AS mem_util,
        net_in_sum / NULLIF(net_in_n, 0) AS net_in_bps, net_out_sum / NULLIF(net_out_n, 0) AS net_out_bps,
        disk_read_sum / NULLIF(disk_read_n, 0) AS disk_read_bps, disk_write_sum / NULLIF(disk_write_n, 0) AS disk_write_bps,
        cpu_cores_max AS cpu_cores, mem_bytes_max AS mem_bytes, replicas_max AS replicas,
        cost_sum / NULLIF(cost_n, 0) AS cost_per_hour, scale_events > 0 AS scale_event
    FROM telemetry_1m WHERE bucket > to_timestamp($1::float8 / 1000) AND bucket <= to_timestamp($2::float8 / 1000)";

async fn newest(pool: &PgPool, sql: &str) -> anyhow::Result<Option<i64>> {
    Ok(sqlx::query_scalar::<_, Option<i64>>(sql).fetch_one(pool).await?)
}

async fn read(pool: &PgPool, sql: &str, from_ms: i64, to_ms: i64) -> anyhow::Result<Vec<Telemetry>> {
    let rows = sqlx::query(sql).bind(from_ms as f64).bind(to_ms as f64).fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            Ok(Telemetry {
                entity_id: r.try_get("entity_id")?,
                ts_ms: r.try_get("ts_ms")?,
                service: r.try_get("service")?,
                cluster: r.try_get("cluster")?,
                cpu_util: r.try_get("cpu_util")?,
                mem_util: r.try_get("mem_util")?,
                net_in_bps: r.try_get("net_in_bps")?,
                net_out_bps: r.try_get("net_out_bps")?,
                disk_read_bps: r.try_get("disk_read_bps")?,
                disk_write_bps: r.try_get("disk_write_bps")?,
                cpu_cores: r.try_get("cpu_cores")?,
                mem_bytes: r.try_get("mem_bytes")?,
                replicas: r.try_get("replicas")?,
                cost_per_hour: r.try_get("cost_per_hour")?,
                scale_event: r.try_get("scale_event")?,
                labels: Vec::new(),
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

const HOUR_MS: i64 = 3_600_000;

/// The time span of the archive: (oldest, newest) sample.
async fn archive_span(root: &Path) -> anyhow::Result<Option<(i64, i64)>> {
    if !root.join(headroom_archive::TELEMETRY_DIR).is_dir() {
        return Ok(None);
    }
    let b = headroom_archive::query::run(
        root,
        "SELECT CAST(min(ts) AS BIGINT) AS lo, CAST(max(ts) AS BIGINT) AS hi FROM telemetry",
    )
    .await?;
    let Some(b) = b.first().filter(|b| b.num_rows() > 0) else {
        return Ok(None);
    };
    let col = |i: usize| b.column(i).as_primitive::<Int64Type>();
    Ok((col(0).is_valid(0) && col(1).is_valid(0)).then(|| (col(0).value(0), col(1).value(0))))
}

/// The archived samples with `from < ts < until`.
async fn read_archive(root: &Path, from_ms: i64, until_ms: i64) -> anyhow::Result<Vec<Telemetry>> {
    // The date directories before the window's first day are skipped without being opened.
    let (first_day, _) = headroom_archive::hour_keys(from_ms.max(0))?;
    let sql = format!(
        "SELECT entity_id, CAST(ts AS BIGINT) AS ts_ms, service, \"cluster\", cpu_util, mem_util, net_in_bps, net_out_bps, \
         disk_read_bps, disk_write_bps, cpu_cores, mem_bytes, replicas, cost_per_hour, scale_event FROM telemetry \
         WHERE date >= '{first_day}' AND CAST(ts AS BIGINT) > {from_ms} AND CAST(ts AS BIGINT) < {until_ms}"
    );
    let mut out = Vec::new();
    for b in headroom_archive::query::run(root, &sql).await? {
        let text = |i: usize| b.column(i).as_string::<i32>();
        let f = |i: usize| b.column(i).as_primitive::<Float64Type>();
        let (entity, ts, service, cluster) = (text(0), b.column(1).as_primitive::<Int64Type>(), text(2), text(3));
        let replicas = b.column(12).as_primitive::<Int32Type>();
        let scale = b.column(14).as_boolean();
        let opt = |a: &arrow_array::PrimitiveArray<Float64Type>, r: usize| a.is_valid(r).then(|| a.value(r));
        for r in 0..b.num_rows() {
            out.push(Telemetry {
                entity_id: entity.value(r).to_owned(),
                ts_ms: ts.value(r),
                service: service.is_valid(r).then(|| service.value(r).to_owned()),
                cluster: cluster.is_valid(r).then(|| cluster.value(r).to_owned()),
                cpu_util: opt(f(4), r),
                mem_util: opt(f(5), r),
                net_in_bps: opt(f(6), r),
                net_out_bps: opt(f(7), r),
                disk_read_bps: opt(f(8), r),
                disk_write_bps: opt(f(9), r),
                cpu_cores: opt(f(10), r),
                mem_bytes: opt(f(11), r),
                replicas: replicas.is_valid(r).then(|| replicas.value(r)),
                cost_per_hour: opt(f(13), r),
                scale_event: scale.is_valid(r).then(|| scale.value(r)),
                labels: Vec::new(),
            });
        }
    }
    Ok(out)
}

/// Reads the last `window` of telemetry. An archive that reaches further back than the raw
/// table serves the archived hours, the raw table the hours after them. Otherwise the raw table
/// is used when it reaches back over at least 90 % of the window, else the rollups when they
/// reach further.
pub async fn load(pool: &PgPool, window: Duration, archive: Option<&Path>) -> anyhow::Result<TrainingData> {
    let w = window.as_millis() as i64;
    let raw_to = newest(pool, "SELECT (extract(epoch FROM max(ts)) * 1000)::int8 FROM telemetry_raw").await?;
    let raw_from = newest(pool, "SELECT (extract(epoch FROM min(ts)) * 1000)::int8 FROM telemetry_raw").await?;
    if let Some(root) = archive {
        if let Some((a_from, a_to)) = archive_span(root).await? {
            if raw_from.is_none_or(|r| a_from < r) {
                let to = raw_to.map_or(a_to, |r| r.max(a_to));
                let from = to - w;
                // The archive holds whole hours: everything before the end of its newest one.
                let cut = (a_to.div_euclid(HOUR_MS) + 1) * HOUR_MS;
                let mut records = read_archive(root, from, cut).await?;
                // Raw rows with ts > cut - 1 ms, i.e. from the first hour the archive lacks.
                let tail = read(pool, RAW, cut.max(from + 1) - 1, to).await?;
                records.extend(tail);
                return Ok(TrainingData { records, source: "archive+postgres:telemetry_raw", from_ms: from, to_ms: to });
            }
        }
    }
    let roll_to = newest(pool, "SELECT (extract(epoch FROM max(bucket)) * 1000)::int8 FROM telemetry_1m").await?;
    let roll_from = newest(pool, "SELECT (extract(epoch FROM min(bucket)) * 1000)::int8 FROM telemetry_1m").await?;
    let span = |a: Option<i64>, b: Option<i64>, to: i64| a.zip(b).map_or(0, |(from, newest)| (newest.min(to) - from.max(to - w)).max(0));
    let Some(to) = raw_to.or(roll_to) else {
        anyhow::bail!("the training set is empty: telemetry_raw and telemetry_1m hold no rows (is the sink running?)");
    };
    let raw_span = span(raw_from, raw_to, to);
    let roll_span = span(roll_from, roll_to, to);
    let (sql, source) = if raw_span as f64 >= 0.9 * w as f64 || raw_span >= roll_span {
        (RAW, "postgres:telemetry_raw")
    } else {
        (ROLLUP, "postgres:telemetry_1m")
    };
    let from = to - w;
    let records = read(pool, sql, from, to).await?;
    Ok(TrainingData {
        records,
        source,
        from_ms: from,
        to_ms: to,
    })
}
