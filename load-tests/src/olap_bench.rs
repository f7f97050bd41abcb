//! `loadgen bench-olap`: fills the tables with N rows of generated telemetry through the sink's
//! own write path (binary COPY, rollups merged on conflict), then times every dashboard query
//! on the rollups (first run and warm p50/p95) against the same question asked of the raw
//! table, for each N given.

use std::time::{Duration, Instant};

use headroom_sink::rows::Batch;
use headroom_sink::writer::Writer;
use headroom_sources::{GenConfig, Generator};
use headroom_store::queries::{run_count, QUERIES};
use sqlx::{Connection, Executor, PgConnection};

/// Arguments of `loadgen bench-olap`.
#[derive(clap::Args, Debug)]
pub struct OlapBenchArgs {
    /// Raw rows to load, one run per value (e.g. 1000000,3000000,10000000).
    #[arg(long, value_delimiter = ',', default_value = "1000000")]
    rows: Vec<u64>,
    #[arg(long, default_value_t = 2000)]
    entities: u32,
    /// Warm runs per query on the rollups.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Keep the filled schemas (for poking at them with `headroom query`).
    #[arg(long)]
    keep: bool,
    #[arg(long, env = "HEADROOM_PG_URL", default_value = "postgres://headroom@127.0.0.1:5432/headroom")]
    pg_url: String,
}

/// The range each dashboard panel asks for, ending at the newest data.
fn panel_range(name: &str) -> i64 {
    const H: i64 = 3_600_000;
    match name {
        "anomalies" => H,
        "hourly_by_service" | "savings" => 24 * H,
        _ => 7 * 24 * H,
    }
}

/// The bucket the panel's rollup is read in: ranges are aligned to it, so that the rollup
/// and the raw path answer over exactly the same samples (a raw range starting mid-hour would
/// add a partial hour the rollup path leaves out).
fn panel_bucket(name: &str) -> i64 {
    match name {
        "anomalies" => 3_600_000,
        "hourly_by_service" | "savings" => 3_600_000,
        _ => 86_400_000,
    }
}

/// `[from, to)` of a panel: whole buckets, ending with the bucket of the newest data.
fn panel_window(name: &str, newest: i64) -> (i64, i64) {
    let b = panel_bucket(name);
    let to = (newest.div_euclid(b) + 1) * b;
    (to - panel_range(name), to)
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn fill(url: &str, entities: u32, rows: u64) -> anyhow::Result<(i64, f64)> {
    let mut g = Generator::new(GenConfig { entities: Some(entities), ..GenConfig::default() });
    let n = g.entity_count() as u64;
    let rounds = rows.div_ceil(n) as i64;
    let iv = g.interval_ms();
    let start = (headroom_runtime::observe::now_ms() - (rounds + 1) * iv) / iv * iv;
    let mut w = Writer::new(url, Duration::from_secs(10), "bench-olap");
    let t0 = Instant::now();
    let mut written = 0u64;
    let mut batch = Batch::new(Duration::from_millis(iv as u64));
    let mut offset = 0i64;
    let mut newest = start;
    let mut spent: Vec<(&'static str, u64, f64)> = Vec::new();
    let mut account = |w: headroom_sink::writer::Written| {
        for (t, n, secs) in w {
            match spent.iter_mut().find(|s| s.0 == t) {
                Some(s) => {
                    s.1 += n;
                    s.2 += secs;
                }
                None => spent.push((t, n, secs)),
            }
        }
    };
    for r in 0..rounds {
        for i in 0..g.entity_count() {
            if written >= rows {
                break;
            }
            let t = g.sample(i, start + r * iv);
            newest = newest.max(t.ts_ms);
            batch
                .add_telemetry(&t, 0, offset, i64::MIN)
                .map_err(|(r, d)| anyhow::anyhow!("{r}: {d}"))?;
            offset += 1;
            written += 1;
        }
        if batch.records >= 50_000 || written >= rows {
            account(w.write(&mut batch, &[]).await.map_err(|e| anyhow::anyhow!("{e}"))?);
            batch = Batch::new(Duration::from_millis(iv as u64));
        }
        if written >= rows {
            break;
        }
    }
    if !batch.is_empty() {
        account(w.write(&mut batch, &[]).await.map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    let secs = t0.elapsed().as_secs_f64();
    let parts: Vec<String> = spent.iter().map(|(t, n, s)| format!("{t} {n} rows {s:.1}s")).collect();
    eprintln!("  fill: {written} rows in {secs:.1}s; statements: {}", parts.join(", "));
    Ok((newest, written as f64 / secs))
}

pub fn run(args: &OlapBenchArgs) -> anyhow::Result<()> {
    let rt = crate::bench::runtime()?;
    rt.block_on(async {
        let mut summary = Vec::new();
        for &rows in &args.rows {
            let schema = format!("bench_olap_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
            let mut admin = PgConnection::connect(&args.pg_url).await?;
            admin.execute(format!("CREATE SCHEMA {schema}").as_str()).await?;
            let url = format!(
                "{}{}options=-c%20search_path%3D{schema}",
                args.pg_url,
                if args.pg_url.contains('?') { '&' } else { '?' }
            );
            let pool = headroom_store::pool(&url, 1, Duration::from_secs(10)).await?;
            headroom_store::migrate(&pool).await?;
            pool.close().await;
            let (newest, fill_rate) = fill(&url, args.entities, rows).await?;
            let mut c = headroom_store::connect(&url, Duration::from_secs(10)).await?;
            // What autovacuum does in a steady state (statistics, and the visibility map that
            // index-only scans need), for this schema's tables only (a database-wide VACUUM
            // would also visit the catalogs, which only a superuser may).
            let tables: Vec<String> = sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = $1")
                .bind(&schema)
                .fetch_all(&mut c)
                .await?;
            for table in tables {
                c.execute(format!("VACUUM (ANALYZE) {schema}.\"{table}\"").as_str()).await?;
            }
            let size: i64 = sqlx::query_scalar(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::int8 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'",
            )
            .fetch_one(&mut c)
            .await?;
            eprintln!(
                "rows={rows}: loaded at {fill_rate:.0} rows/s through the sink's writer; {:.2} GiB on disk",
                size as f64 / (1u64 << 30) as f64
            );
            let mut worst_p95 = 0f64;
            let mut min_speedup = f64::INFINITY;
            for q in QUERIES {
                let (from, to) = panel_window(q.name, newest);
                // First run on a fresh connection (the page cache may still hold the data: this
                // is "first", not a cold disk read).
                let mut fresh = headroom_store::connect(&url, Duration::from_secs(10)).await?;
                let t = Instant::now();
                let n = run_count(&mut fresh, q.sql, from, to).await?;
                let first_ms = t.elapsed().as_secs_f64() * 1000.0;
                let mut warm = Vec::with_capacity(args.runs);
                for _ in 0..args.runs {
                    let t = Instant::now();
                    run_count(&mut c, q.sql, from, to).await?;
                    warm.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                warm.sort_by(f64::total_cmp);
                let (p50, p95) = (pct(&warm, 0.5), pct(&warm, 0.95));
                worst_p95 = worst_p95.max(p95);
                let raw = match q.raw_sql {
                    Some(sql) => {
                        let mut times = Vec::new();
                        let mut raw_n = 0;
                        for _ in 0..3 {
                            let t = Instant::now();
                            raw_n = run_count(&mut c, sql, from, to).await?;
                            times.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                        times.sort_by(f64::total_cmp);
                        anyhow::ensure!(raw_n == n, "{}: raw path returned {raw_n} rows, rollups {n}", q.name);
                        Some(times[1])
                    }
                    None => None,
                };
                let speedup = raw.map(|r| r / p50);
                if let Some(s) = speedup {
                    min_speedup = min_speedup.min(s);
                }
                println!(
                    "olap rows={rows} query={} range_h={} result_rows={n} first_ms={first_ms:.1} warm_p50_ms={p50:.1} warm_p95_ms={p95:.1} raw_ms={} speedup={}",
                    q.name,
                    panel_range(q.name) / 3_600_000,
                    raw.map_or("n/a".into(), |r| format!("{r:.1}")),
                    speedup.map_or("n/a".into(), |s| format!("{s:.1}")),
                );
            }
            summary.push(format!("rows_{rows}_worst_p95_ms={worst_p95:.1} rows_{rows}_min_speedup={min_speedup:.1}"));
            drop(c);
            if !args.keep {
                admin.execute(format!("DROP SCHEMA {schema} CASCADE").as_str()).await?;
            } else {
                eprintln!("kept schema {schema}: headroom query NAME --pg-url '{url}'");
            }
        }
        println!("RESULT olap-queries entities={} {}", args.entities, summary.join(" "));
        Ok(())
    })
}
