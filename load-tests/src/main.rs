//! `loadgen`: publish synthetic telemetry, replay a CSV trace, or benchmark the pipeline.

mod bench;
mod cpu;
mod kafka;
mod olap_bench;
mod sink_bench;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};

use headroom_sources::{trace, GenConfig, Generator};

#[derive(Parser)]
#[command(
    version,
    about = "headroom load generator, trace replayer and pipeline benchmark"
)]
struct Cli {
    #[arg(
        long,
        env = "HEADROOM_BROKERS",
        default_value = "127.0.0.1:19092",
        global = true
    )]
    brokers: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Avro,
    Json,
}

#[derive(clap::Args, Clone)]
struct FleetArgs {
    /// Services (× clusters) of the synthetic fleet.
    #[arg(long, default_value_t = 20)]
    services: u32,
    #[arg(long, default_value_t = 5)]
    clusters: u32,
    /// Plain entity count instead of services × clusters (up to 100,000 and more).
    #[arg(long)]
    entities: Option<u32>,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

impl FleetArgs {
    fn config(&self) -> GenConfig {
        GenConfig {
            services: self.services,
            clusters: self.clusters,
            entities: self.entities,
            seed: self.seed,
            ..GenConfig::default()
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Publish synthetic telemetry at a target rate (open loop).
    Generate {
        #[arg(long, default_value = "telemetry.raw")]
        topic: String,
        /// Records per second; 0 = as fast as possible.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// One record in N starts a trace (a `traceparent` header); 0: none.
        #[arg(long, default_value_t = 0)]
        trace_every: u64,
        /// OTLP/HTTP receiver for the root spans of those traces (e.g. http://otel-collector:4318).
        #[arg(long, env = "HEADROOM_LOADGEN_OTLP_ENDPOINT", default_value = "")]
        otlp_endpoint: String,
        #[arg(long, value_enum, default_value_t = Format::Avro)]
        format: Format,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Replay a CSV trace in event-time order.
    Replay {
        #[arg(long, default_value = "telemetry.raw")]
        topic: String,
        /// The Bitbrains .tar.gz (or a directory of its CSV files), or a generic CSV file.
        #[arg(long)]
        trace: PathBuf,
        /// `bitbrains`, or `generic` with --ts-column, --entity-column and --map.
        #[arg(long, default_value = "bitbrains")]
        trace_format: String,
        #[arg(long, default_value = "timestamp")]
        ts_column: String,
        #[arg(long, default_value = "entity")]
        entity_column: String,
        /// FIELD=COLUMN pairs, e.g. cpu_util=cpu,mem_util=memory.
        #[arg(long, default_value = "")]
        map: String,
        #[arg(long)]
        max_vms: Option<usize>,
        /// Records per second; 0 = as fast as possible (unless --speed is given).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Event-time speed-up: 3600 replays an hour of the trace per second, keeping its
        /// spacing and bursts. Overrides --rate.
        #[arg(long)]
        speed: Option<f64>,
        #[arg(long)]
        max_records: Option<usize>,
        /// Stop publishing after this much wall-clock time (e.g. 15m); the whole trace otherwise.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
    /// Throughput of the featurizer against the relay (same runtime, pass-through), and the
    /// end-to-end latency at 70 % of the featurizer's maximum rate.
    Bench(bench::BenchArgs),
    /// Scorer throughput through the broker (both heads on every event) against the
    /// featurizer's rate in the same run.
    BenchScorer(bench::ScorerBenchArgs),
    /// The recommender through the broker against the featurizer in the same run, and its state per entity.
    BenchRecommender(bench::RecommenderBenchArgs),
    /// The drift monitor's changelog cost: its model-error detectors over the same forecasts
    /// without and with `drift.state`, side by side.
    BenchDrift(bench::DriftBenchArgs),
    /// The sink's ingest rate into PostgreSQL through the broker against `psql \copy` of the
    /// same rows into an identical table in the same run.
    BenchSink(sink_bench::SinkBenchArgs),
    /// Fills PostgreSQL with N rows through the sink's writer and times every dashboard query
    /// on the rollups against the same question on the raw table.
    BenchOlap(olap_bench::OlapBenchArgs),
    /// Print records of the features topic (or the DLQ's reasons) from the beginning.
    Tail {
        #[arg(long, default_value = "features")]
        topic: String,
        #[arg(long, default_value_t = 5)]
        count: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    headroom_runtime::observe::init_logging(&headroom_runtime::config::LogConfig {
        format: headroom_runtime::config::LogFormat::Text,
        level: filter,
        otlp_endpoint: String::new(),
    });
    match cli.command {
        Command::Generate {
            topic,
            rate,
            duration,
            format,
            fleet,
            trace_every,
            otlp_endpoint,
        } => generate(&cli.brokers, &topic, rate, duration, format, &fleet, Tracing::new(trace_every, &otlp_endpoint)?),
        Command::Replay {
            topic,
            trace: path,
            trace_format,
            ts_column,
            entity_column,
            map,
            max_vms,
            rate,
            speed,
            max_records,
            duration,
        } => {
            let started = Instant::now();
            let mut rows = match trace_format.as_str() {
                "bitbrains" => trace::read_bitbrains(&path, max_vms)?,
                "generic" => trace::read_generic(
                    &path,
                    &trace::Mapping::parse(&ts_column, &entity_column, &map)?,
                )?,
                other => {
                    anyhow::bail!("--trace-format must be bitbrains or generic, not `{other}`")
                }
            };
            if let Some(m) = max_records {
                rows.truncate(m);
            }
            eprintln!(
                "read {} records in {:.1}s; publishing to {topic}",
                rows.len(),
                started.elapsed().as_secs_f64()
            );
            let p = kafka::producer(&cli.brokers)?;
            let pacer = kafka::Pacer {
                start: Instant::now(),
                rate,
            };
            let first_ts = rows.first().map_or(0, |t| t.ts_ms);
            if let Some(s) = speed {
                anyhow::ensure!(s > 0.0, "--speed must be positive");
            }
            let mut buf = Vec::new();
            let mut published = 0usize;
            for (k, t) in rows.iter().enumerate() {
                if k % 256 == 0 && duration.is_some_and(|d| pacer.start.elapsed() >= d) {
                    eprintln!("--duration reached after {k} of {} records", rows.len());
                    break;
                }
                match speed {
                    Some(s) => {
                        let due = pacer.start
                            + Duration::from_secs_f64((t.ts_ms - first_ts) as f64 / 1000.0 / s);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                    }
                    None => pacer.wait(k as u64),
                }
                t.encode_framed(&mut buf);
                kafka::send(&p, &topic, t.entity_id.as_bytes(), &buf)?;
                published += 1;
            }
            kafka::flush(&p)?;
            let secs = pacer.start.elapsed().as_secs_f64();
            println!(
                "RESULT loadgen-replay records={published} seconds={secs:.2} rate={:.0}",
                published as f64 / secs
            );
            Ok(())
        }
        Command::Bench(args) => bench::run(&cli.brokers, &args),
        Command::BenchScorer(args) => bench::run_scorer(&cli.brokers, &args),
        Command::BenchRecommender(args) => bench::run_recommender(&cli.brokers, &args),
        Command::BenchDrift(args) => bench::run_drift(&cli.brokers, &args),
        Command::BenchSink(args) => sink_bench::run(&cli.brokers, &args),
        Command::BenchOlap(args) => olap_bench::run(&args),
        Command::Tail {
            topic,
            count,
            timeout,
        } => tail(&cli.brokers, &topic, count, timeout),
    }
}

fn tail(brokers: &str, topic: &str, count: usize, timeout: Duration) -> anyhow::Result<()> {
    use rdkafka::message::{Headers, Message};
    let c = kafka::reader(brokers, topic, false)?;
    let deadline = Instant::now() + timeout;
    let mut n = 0;
    while n < count && Instant::now() < deadline {
        let Some(Ok(m)) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        n += 1;
        let payload = m.payload().unwrap_or_default();
        if let Ok(f) = headroom_schemas::FeaturesRecord::decode(payload) {
            println!(
                "{} ts={} cpu={:.3} mem={:.3} net={:.0} feature_set={} values={}",
                f.entity_id,
                f.ts_ms,
                f.cpu_util,
                f.mem_util,
                f.net_bps,
                f.feature_set,
                f.values.len()
            );
        } else if let Ok(f) = headroom_schemas::Forecast::decode(payload) {
            let pts: Vec<String> = f
                .points
                .iter()
                .map(|p| format!("{}@{}m p50={:.3} p90={:.3}", p.metric.symbol(), p.horizon_min, p.p50, p.p90))
                .collect();
            println!(
                "{} ts={} {} scale_event_prob={:.3} models={:?}",
                f.entity_id,
                f.ts_ms,
                pts.join(" "),
                f.scale_event_prob.unwrap_or(f64::NAN),
                f.model_versions
            );
        } else if let Ok(r) = headroom_schemas::Recommendation::decode(payload) {
            println!(
                "{} ts={} {} replicas={:?} cpu={:?} cost_change={:+.4}/h shortfall={:.3} confidence={:.2} id={} | {}",
                r.entity_id,
                r.ts_ms,
                r.action_symbol(),
                r.target_replicas,
                r.target_cpu_cores,
                r.cost_change_per_hour,
                r.shortfall_prob,
                r.confidence,
                r.recommendation_id,
                r.reason
            );
        } else {
            let reason = m.headers().and_then(|h| {
                h.iter()
                    .find(|x| x.key == "dlq.reason")
                    .and_then(|x| x.value)
            });
            match reason {
                Some(r) => println!("dead letter: {}", String::from_utf8_lossy(r)),
                None => println!("{} bytes", payload.len()),
            }
        }
    }
    anyhow::ensure!(n > 0, "no records on {topic} within {timeout:?}");
    Ok(())
}

fn generate(
    brokers: &str,
    topic: &str,
    rate: f64,
    duration: Duration,
    format: Format,
    fleet: &FleetArgs,
    tracing: Tracing,
) -> anyhow::Result<()> {
    let mut g = Generator::new(fleet.config());
    let n = g.entity_count();
    let total = if rate > 0.0 {
        (rate * duration.as_secs_f64()) as u64
    } else {
        1_000_000
    };
    let rounds = total.div_ceil(n as u64) as i64;
    let (_, iv, mut start_ts) = bench::backdated(&g, total);
    let now = headroom_runtime::observe::now_ms();
    // Event time is compressed (one sampling interval per round), so a run backdated from now
    // would start before the end of an earlier run on the same topic, whose events the
    // featurizer's restored state still holds: every event would be too late for its entity.
    // The fleet's clock resumes after the newest event already there instead.
    if let Some(newest) = kafka::newest_event_ms(brokers, topic, 64, Duration::from_secs(15))? {
        if newest >= start_ts {
            start_ts = (newest.div_euclid(iv) + 1) * iv;
            let ahead_h = (start_ts + (rounds - 1) * iv - now) as f64 / 3.6e6;
            eprintln!("{topic} already holds events up to {newest} ms: event time resumes after it");
            if ahead_h > 0.0 {
                eprintln!(
                    "warning: this run's last events would be {ahead_h:.1} h ahead of now; the featurizer \
                     dead-letters events further ahead than its validation.max_future_ms (24 h by default). \
                     A fresh broker (scripts/stack.sh broker-down) or a shorter --duration starts a clock that ends at now"
                );
            }
        }
    }
    eprintln!("publishing {total} records of {n} entities to {topic} at {rate}/s (event time from {} rounds ago)", (now - start_ts).div_euclid(iv));
    let p = kafka::producer(brokers)?;
    let pacer = kafka::Pacer {
        start: Instant::now(),
        rate,
    };
    let mut buf = Vec::new();
    let mut k = 0u64;
    let mut last_report = Instant::now();
    'outer: for r in 0..rounds {
        for i in 0..n {
            if k >= total {
                break 'outer;
            }
            pacer.wait(k);
            let t = g.sample(i, start_ts + r * iv);
            match format {
                Format::Avro => t.encode_framed(&mut buf),
                Format::Json => {
                    buf.clear();
                    buf.extend_from_slice(t.to_json().as_bytes());
                }
            }
            let tp = tracing.start(k, topic);
            kafka::send_traced(&p, topic, t.entity_id.as_bytes(), &buf, tp.as_deref())?;
            k += 1;
            if last_report.elapsed() > Duration::from_secs(5) {
                eprintln!(
                    "  {k} records published ({:.0}/s)",
                    k as f64 / pacer.start.elapsed().as_secs_f64()
                );
                last_report = Instant::now();
            }
        }
    }
    kafka::flush(&p)?;
    let secs = pacer.start.elapsed().as_secs_f64();
    println!(
        "RESULT loadgen-generate records={k} seconds={secs:.2} rate={:.0}",
        k as f64 / secs
    );
    Ok(())
}

/// Which generated records start a trace, and where their root spans go.
struct Tracing {
    every: u64,
    spans: Option<headroom_runtime::trace::Spans>,
}

impl Tracing {
    fn new(every: u64, otlp_endpoint: &str) -> anyhow::Result<Tracing> {
        let spans = match otlp_endpoint {
            "" => None,
            url => Some(headroom_runtime::trace::Spans::new("loadgen", url)?),
        };
        Ok(Tracing { every, spans })
    }

    /// The `traceparent` of record `k`, when it starts a trace.
    fn start(&self, k: u64, topic: &str) -> Option<String> {
        if self.every == 0 || !k.is_multiple_of(self.every) {
            return None;
        }
        Some(match &self.spans {
            Some(s) => s.root(topic),
            None => headroom_runtime::trace::root_traceparent(),
        })
    }
}
