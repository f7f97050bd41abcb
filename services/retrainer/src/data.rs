//! The training set: the stored telemetry of the last `data.window` (ending at the newest
//! sample, in event time) from PostgreSQL's raw table, or from the one-minute rollups where the
//! raw table (short retention) no longer holds the window.

use std::time::Duration;

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

/// Reads the last `window` of telemetry. The raw table is used when it reaches back over at
/// least 90 % of the window; otherwise the rollups, when they reach further.
pub async fn load(pool: &PgPool, window: Duration) -> anyhow::Result<TrainingData> {
    let w = window.as_millis() as i64;
    let raw_to = newest(pool, "SELECT (extract(epoch FROM max(ts)) * 1000)::int8 FROM telemetry_raw").await?;
    let raw_from = newest(pool, "SELECT (extract(epoch FROM min(ts)) * 1000)::int8 FROM telemetry_raw").await?;
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
