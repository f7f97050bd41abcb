//! `loadgen bench-sink`: the sink's ingest rate into PostgreSQL through the broker, against
//! `psql \copy` of the same rows into an identical table in the same run.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use headroom_runtime::Shutdown;
use headroom_sources::{GenConfig, Generator};
use headroom_store::partitions::{self, format_utc_ms, PartitionCache};
use sqlx::{Connection, Executor, PgConnection};

/// Arguments of `loadgen bench-sink`.
#[derive(clap::Args, Debug)]
pub struct SinkBenchArgs {
    #[arg(long, default_value_t = 500_000)]
    records: u64,
    #[arg(long, default_value_t = 1000)]
    entities: u32,
    /// The project's database (schemas `bench_*` are created in it and dropped after).
    #[arg(long, env = "HEADROOM_PG_URL", default_value = "postgres://headroom@127.0.0.1:5432/headroom")]
    pg_url: String,
    /// Rows per sink batch (one transaction).
    #[arg(long, default_value_t = 20_000)]
    batch_rows: usize,
}

fn fleet(entities: u32, records: u64) -> Vec<headroom_schemas::Telemetry> {
    let mut g = Generator::new(GenConfig { entities: Some(entities), ..GenConfig::default() });
    let n = g.entity_count() as u64;
    let rounds = records.div_ceil(n) as i64;
    let iv = g.interval_ms();
    let start = (headroom_runtime::observe::now_ms() - (rounds + 1) * iv) / iv * iv;
    let mut v = g.rounds(start, rounds);
    v.truncate(records as usize);
    v
}

async fn fresh_schema(base: &str, tag: &str) -> anyhow::Result<(String, String)> {
    let schema = format!("bench_{tag}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut c = PgConnection::connect(base).await?;
    c.execute(format!("CREATE SCHEMA {schema}").as_str()).await?;
    let url = format!("{base}{}options=-c%20search_path%3D{schema}", if base.contains('?') { '&' } else { '?' });
    let pool = headroom_store::pool(&url, 1, Duration::from_secs(10)).await?;
    headroom_store::migrate(&pool).await?;
    pool.close().await;
    Ok((schema, url))
}

async fn drop_schema(base: &str, schema: &str) {
    if let Ok(mut c) = PgConnection::connect(base).await {
        let _ = c.execute(format!("DROP SCHEMA {schema} CASCADE").as_str()).await;
    }
}

fn csv_field(out: &mut Vec<u8>, v: Option<String>) {
    if let Some(v) = v {
        if v.contains([',', '"', '\n']) {
            out.push(b'"');
            out.extend_from_slice(v.replace('"', "\"\"").as_bytes());
            out.push(b'"');
        } else {
            out.extend_from_slice(v.as_bytes());
        }
    }
}

/// The raw table's rows as CSV, in its column order, as the sink would write them.
fn csv(rows: &[headroom_schemas::Telemetry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * 160);
    for (k, t) in rows.iter().enumerate() {
        let f = |v: Option<f64>| v.map(|x| format!("{x}"));
        let labels = (!t.labels.is_empty()).then(|| {
            let m: serde_json::Map<String, serde_json::Value> =
                t.labels.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
            serde_json::Value::Object(m).to_string()
        });
        let fields = [
            Some(t.entity_id.clone()),
            Some(format_utc_ms(t.ts_ms)),
            t.service.clone(),
            t.cluster.clone(),
            f(t.cpu_util),
            f(t.mem_util),
            f(t.net_in_bps),
            f(t.net_out_bps),
            f(t.disk_read_bps),
            f(t.disk_write_bps),
            f(t.cpu_cores),
            f(t.mem_bytes),
            t.replicas.map(|r| r.to_string()),
            f(t.cost_per_hour),
            t.scale_event.map(|b| b.to_string()),
            labels,
            Some("0".into()),
            Some(k.to_string()),
        ];
        for (i, v) in fields.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            csv_field(&mut out, v);
        }
        out.push(b'\n');
    }
    out
}

pub fn run(brokers: &str, args: &SinkBenchArgs) -> anyhow::Result<()> {
    let rt = crate::bench::runtime()?;
    rt.block_on(async {
        let rows = fleet(args.entities, args.records);
        let n = rows.len() as u64;

        // Reference: psql \copy of the same rows (CSV) into an identical partitioned table.
        let (ref_schema, ref_url) = fresh_schema(&args.pg_url, "ref").await?;
        let mut c = headroom_store::connect(&ref_url, Duration::from_secs(10)).await?;
        let raw = partitions::spec("telemetry_raw").expect("table");
        PartitionCache::default().ensure(&mut c, raw, rows.iter().map(|t| t.ts_ms)).await?;
        let file = std::env::temp_dir().join(format!("{ref_schema}.csv"));
        std::fs::File::create(&file)?.write_all(&csv(&rows))?;
        let t0 = Instant::now();
        let out = Command::new("psql")
            .arg(&ref_url)
            .args(["-qtAX", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!("\\copy telemetry_raw FROM '{}' WITH (FORMAT csv)", file.display()))
            .output()?;
        let copy_secs = t0.elapsed().as_secs_f64();
        let _ = std::fs::remove_file(&file);
        anyhow::ensure!(out.status.success(), "psql \\copy failed: {}", String::from_utf8_lossy(&out.stderr));
        let copied: i64 = sqlx::query_scalar("SELECT count(*) FROM telemetry_raw").fetch_one(&mut c).await?;
        anyhow::ensure!(copied as u64 == n, "\\copy loaded {copied} of {n} rows");
        let copy_rate = n as f64 / copy_secs;
        eprintln!("  psql \\copy: {n} rows in {copy_secs:.2}s = {copy_rate:.0} rows/s");

        // The sink: the same rows through the broker, decoded, validated, COPY'd in binary,
        // rolled up (1 min, 1 h) and committed with the offsets.
        let prefix = crate::bench::new_prefix();
        crate::bench::apply_topics(brokers, &prefix).await?;
        let topic = format!("{prefix}telemetry.raw");
        let p = crate::kafka::producer(brokers)?;
        let mut buf = Vec::new();
        for t in &rows {
            t.encode_framed(&mut buf);
            crate::kafka::send(&p, &topic, t.entity_id.as_bytes(), &buf)?;
        }
        crate::kafka::flush(&p)?;
        let (sink_schema, sink_url) = fresh_schema(&args.pg_url, "sink").await?;
        let mut cfg: headroom_sink::Config = headroom_runtime::load_config(headroom_sink::config_defaults(), None, "HEADROOM_SINK_BENCH_UNUSED__")?;
        cfg.kafka.brokers = brokers.to_owned();
        cfg.kafka.group_id = format!("{prefix}sink");
        cfg.http.listen = "127.0.0.1:0".into();
        cfg.postgres.url = sink_url.clone();
        cfg.batch.max_rows = args.batch_rows;
        cfg.log.level = "warn".into();
        let t = &mut cfg.topics;
        for (field, name) in [
            (&mut t.telemetry, "telemetry.raw"),
            (&mut t.features, "features"),
            (&mut t.forecasts, "forecasts"),
            (&mut t.recommendations, "recommendations"),
            (&mut t.drift, "drift.alerts"),
            (&mut t.models, "models"),
            (&mut t.dlq, "telemetry.dlq"),
        ] {
            *field = format!("{prefix}{name}");
        }
        let handle = headroom_sink::start(cfg, Shutdown::new()).await?;
        let mut c = headroom_store::connect(&sink_url, Duration::from_secs(10)).await?;
        let deadline = Instant::now() + Duration::from_secs(900);
        let mut first: Option<(Instant, i64)> = None;
        let last = loop {
            let v: i64 = sqlx::query_scalar("SELECT coalesce(sum(next_offset), 0)::int8 FROM sink_offsets")
                .fetch_one(&mut c)
                .await?;
            let now = Instant::now();
            if first.is_none() && v > 0 {
                first = Some((now, v));
            }
            if v as u64 >= n {
                break now;
            }
            anyhow::ensure!(now < deadline, "sink stored {v} of {n} offsets in 900 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (t_first, n_first) = first.expect("progress");
        let sink_rate = (n as i64 - n_first) as f64 / last.saturating_duration_since(t_first).as_secs_f64().max(1e-6);
        let raw: i64 = sqlx::query_scalar("SELECT count(*) FROM telemetry_raw").fetch_one(&mut c).await?;
        let rollup: i64 = sqlx::query_scalar("SELECT coalesce(sum(n), 0)::int8 FROM telemetry_1h").fetch_one(&mut c).await?;
        // Where the transactions' time went, from the sink's own metric.
        let spent: Vec<String> = handle
            .metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("headroom_sink_write_seconds_total{"))
            .filter_map(|l| {
                let table = l.split("table=\"").nth(1)?.split('"').next()?;
                let secs: f64 = l.rsplit(' ').next()?.parse().ok()?;
                (secs > 0.0).then(|| format!("{table} {secs:.1}s"))
            })
            .collect();
        handle.stop().await?;
        anyhow::ensure!(raw as u64 == n && rollup as u64 == n, "sink wrote {raw} raw rows and rolled up {rollup}, expected {n}");
        eprintln!(
            "  sink: {sink_rate:.0} rows/s (raw rows + rollups as configured + offsets, per transaction of {} rows); statements: {}",
            args.batch_rows,
            spent.join(", ")
        );
        drop_schema(&args.pg_url, &ref_schema).await;
        drop_schema(&args.pg_url, &sink_schema).await;
        println!(
            "RESULT sink-ingest rows={n} entities={} batch_rows={} sink_rows_per_s={sink_rate:.0} psql_copy_rows_per_s={copy_rate:.0} ratio={:.3}",
            args.entities,
            args.batch_rows,
            sink_rate / copy_rate
        );
        Ok(())
    })
}
