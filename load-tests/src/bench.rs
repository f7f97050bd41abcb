//! The pipeline benchmark: the featurizer against the relay (the reference: same runtime,
//! decode and re-publish only) on the same preloaded records, then end-to-end latency of the
//! featurizer under open-loop load at 70 % of its measured maximum. A third service,
//! `relay-sized`, is the relay publishing records padded to the featurizer's output size: the
//! cost of the bytes without the feature work.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use headroom_runtime::topology::{self, Topology};
use headroom_runtime::{KafkaConfig, Shutdown};
use headroom_schemas::FeaturesRecord;
use rdkafka::Message;

use crate::cpu;
use crate::kafka;
use headroom_sources::{GenConfig, Generator};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Records preloaded for the throughput runs. About 100,000 of them are consumed while the
    /// service's producer starts and are not counted (see `timed`).
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    #[arg(long, default_value_t = 1000)]
    entities: u32,
    /// Length of the open-loop latency run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    latency_duration: Duration,
    /// Fractions of the featurizer's maximum rate for the latency runs (one run each; the
    /// issue's figure is the one at 0.7).
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.3,0.5,0.7")]
    load_fractions: Vec<f64>,
    /// Throughput runs per service, alternating relay and featurizer; the best of each counts.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Skip the throughput runs and take this as the featurizer's maximum rate (records/s) for
    /// the latency runs.
    #[arg(long)]
    max_rate: Option<f64>,
    /// When a throughput run stops: at the broker's acknowledgement of the last output, or at
    /// its arrival at a reader consuming during the run (which shares the machine).
    #[arg(long, value_enum, default_value_t = Clock::Acked)]
    clock: Clock,
}

pub(crate) fn kafka_cfg(brokers: &str) -> KafkaConfig {
    KafkaConfig {
        instance_id: String::new(),
        brokers: brokers.into(),
        group_id: "loadgen".into(),
        properties: Default::default(),
    }
}

fn topic_topology(names: &[&str]) -> Topology {
    let mut s = String::from("[defaults]\npartitions = 6\nreplication_factor = 1\n");
    for n in names {
        s.push_str(&format!("[[topic]]\nname = \"{n}\"\ncleanup = \"delete\"\nkey = \"entity_id\"\nschema = \"telemetry.raw-value\"\n"));
    }
    Topology::parse(&s).expect("bench topology")
}

/// The benchmarks' telemetry generator: the first seed's patterns over `entities` entities.
fn generator(entities: u32, seed: Option<u64>) -> Generator {
    let d = GenConfig::default();
    Generator::new(GenConfig {
        entities: Some(entities),
        seed: seed.unwrap_or(d.seed),
        ..d
    })
}

/// Entity count, sampling interval and a start time (on the interval grid) early enough that
/// `records` samples, one per entity per interval, end before now (`loadgen generate` starts a
/// fleet's clock there too).
pub(crate) fn backdated(g: &Generator, records: u64) -> (u64, i64, i64) {
    let n = g.entity_count() as u64;
    let iv = g.interval_ms();
    let rounds = records.div_ceil(n) as i64;
    (n, iv, (headroom_runtime::observe::now_ms() - (rounds + 1) * iv) / iv * iv)
}

/// Publishes `records` generated samples as fast as possible; returns the rate.
fn preload(brokers: &str, topic: &str, entities: u32, records: u64) -> anyhow::Result<f64> {
    let mut g = generator(entities, None);
    let (n, iv, start_ts) = backdated(&g, records);
    let p = kafka::producer(brokers)?;
    let t0 = Instant::now();
    let mut buf = Vec::new();
    for k in 0..records {
        let (r, i) = ((k / n) as i64, (k % n) as usize);
        let t = g.sample(i, start_ts + r * iv);
        t.encode_framed(&mut buf);
        kafka::send(&p, topic, t.entity_id.as_bytes(), &buf)?;
    }
    kafka::flush(&p)?;
    Ok(records as f64 / t0.elapsed().as_secs_f64())
}

/// Counts outputs until `expected` arrived; returns when the last one did.
fn drain_until(
    brokers: &str,
    topic: &str,
    expected: u64,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let c = kafka::reader(brokers, topic, false)?;
    let deadline = Instant::now() + timeout;
    let mut n = 0u64;
    while n < expected && Instant::now() < deadline {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            n += 1;
        }
    }
    anyhow::ensure!(
        n >= expected,
        "{topic}: only {n} of {expected} outputs within {timeout:?}"
    );
    Ok(Instant::now())
}

/// Counts outputs until `expected` arrived; returns records/s between the first and last one.
fn drain(
    brokers: &str,
    topic: &str,
    expected: u64,
    timeout: Duration,
    from_end: bool,
) -> anyhow::Result<(f64, u64)> {
    let c = kafka::reader(brokers, topic, from_end)?;
    let deadline = Instant::now() + timeout;
    let (mut n, mut first, mut last) = (0u64, None::<Instant>, Instant::now());
    while n < expected && Instant::now() < deadline {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
            n += 1;
        }
    }
    anyhow::ensure!(
        n >= expected,
        "{topic}: only {n} of {expected} outputs within {timeout:?}"
    );
    let secs = (last - first.unwrap_or(last)).as_secs_f64().max(1e-6);
    Ok(((n - 1) as f64 / secs, n))
}

async fn throughput(
    brokers: &str,
    which: &str,
    group_prefix: &str,
    prefix: &str,
    input: &str,
    records: u64,
    clock: Clock,
) -> anyhow::Result<Timed> {
    let group = format!("{group_prefix}{}", which.split(':').next().unwrap_or(which));
    let props = service_properties()?;
    let output;
    let handle = if let Some(models) = which.strip_prefix("scorer:") {
        let mut c = headroom_scorer::Config::load(None)?;
        c.kafka.brokers = brokers.into();
        c.kafka.properties.extend(props);
        c.kafka.group_id = group;
        c.http.listen = "127.0.0.1:0".into();
        c.topics.input = input.into();
        c.topics.output = format!("{prefix}forecasts");
        c.topics.models = format!("{prefix}models");
        c.topics.dlq = format!("{prefix}telemetry.dlq");
        c.models.dir = models.into();
        output = c.topics.output.clone();
        headroom_scorer::start(c, Shutdown::new()).await?
    } else if which == "relay" || which.starts_with("relay-sized:") {
        let mut c = headroom_relay::Config::load(None)?;
        if let Some(pad) = which.strip_prefix("relay-sized:") {
            c.output.pad_bytes = pad.parse()?;
        }
        c.kafka.brokers = brokers.into();
        c.kafka.properties.extend(props);
        c.kafka.group_id = group;
        c.http.listen = "127.0.0.1:0".into();
        c.topics.input = input.into();
        c.topics.output = format!(
            "{group_prefix}telemetry.relayed{}",
            if c.output.pad_bytes > 0 { "-sized" } else { "" }
        );
        c.topics.dlq = format!("{prefix}telemetry.dlq");
        output = c.topics.output.clone();
        headroom_relay::start(c, Shutdown::new()).await?
    } else {
        let mut c = headroom_featurizer::Config::load(None)?;
        c.kafka.brokers = brokers.into();
        c.kafka.properties.extend(props);
        c.kafka.group_id = group;
        c.http.listen = "127.0.0.1:0".into();
        c.topics.input = input.into();
        c.topics.output = format!("{group_prefix}features");
        c.topics.dlq = format!("{prefix}telemetry.dlq");
        output = c.topics.output.clone();
        headroom_featurizer::start(c, Shutdown::new()).await?
    };
    let run = timed(brokers, &handle, input, &output, records, clock).await?;
    handle.stop().await?;
    let name = which.split(':').next().unwrap_or(which);
    match run.cpu {
        Some(c) => eprintln!(
            "  {name}: {:.0} records/s; CPU per record {:.2} µs in this process, {:.2} µs on the machine (busy {:.0} %)",
            run.eps,
            c.process_us,
            c.machine_us,
            c.busy * 100.0
        ),
        None => eprintln!("  {name}: {:.0} records/s", run.eps),
    }
    Ok(run)
}

/// librdkafka properties for the measured services, from `HEADROOM_BENCH_KAFKA_PROPERTIES`
/// (`key=value,key=value`): the same for every service of the run, to try client settings.
fn service_properties() -> anyhow::Result<Vec<(String, String)>> {
    const VAR: &str = "HEADROOM_BENCH_KAFKA_PROPERTIES";
    let spec = std::env::var(VAR).unwrap_or_default();
    spec.split(',')
        .map(str::trim)
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => anyhow::bail!("{VAR}: `{kv}` is not KEY=VALUE"),
        })
        .collect()
}

/// How a throughput run decides that the service is done.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clock {
    /// When the broker has acknowledged the service's last output (its own delivery counter):
    /// no reader shares the machine with the service while it is timed. The outputs are counted
    /// on the broker afterwards.
    #[default]
    Acked,
    /// When a reader consuming the output topic during the run has received the last output.
    Consumed,
}

/// Polls a service's counter (`count`) until it reaches `n`: the instant it did, or the count
/// reached by the deadline.
fn wait_count(count: impl Fn() -> u64, n: u64, timeout: Duration) -> Result<Instant, u64> {
    let deadline = Instant::now() + timeout;
    while count() < n {
        if Instant::now() >= deadline {
            return Err(count());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(Instant::now())
}

/// Records/s of a started service, in its steady state: the clock starts when the broker has
/// acknowledged the service's first output and stops when the last of `records` outputs was
/// acknowledged ([`Clock::Acked`]) or arrived at a reader of `output` ([`Clock::Consumed`]);
/// only the records the service consumed after the clock started are counted. The CPU this
/// process (the service, and the reader with [`Clock::Consumed`]) and the whole machine (the
/// broker too) used between the same two instants is divided by the same count.
///
/// Why not from the first consumed record: the group join is over by then, but the service's
/// idempotent producer is not. librdkafka asks for a producer id only after it has connected to
/// the broker it learned from the metadata and its id timer (500 ms) fired: about 0.9 s after
/// start, measured here. Meanwhile the service consumes and queues up to
/// `queue.buffering.max.messages` (100,000) outputs and then waits: on a run of 300,000 records
/// that start-up was most of the relay's window. The records consumed before the first
/// acknowledgement are left out; their outputs are still sent inside the window, so what the
/// clock leaves out can only make the rate look lower.
async fn timed(
    brokers: &str,
    handle: &headroom_runtime::service::ServiceHandle,
    input: &str,
    output: &str,
    records: u64,
    clock: Clock,
) -> anyhow::Result<Timed> {
    let records_in = handle.metrics.records_in.with_label_values(&[input]);
    let acked = handle.metrics.records_out.with_label_values(&[output]);
    let first_out = tokio::task::spawn_blocking(move || {
        let at = wait_count(|| acked.get(), 1, Duration::from_secs(120)).map_err(|_| {
            anyhow::anyhow!("no output acknowledged within 120 s of the service's start")
        })?;
        anyhow::Ok((at, records_in.get(), cpu::Sample::now()))
    });
    let (b, out) = (brokers.to_owned(), output.to_owned());
    let done = match clock {
        Clock::Consumed => tokio::task::spawn_blocking(move || {
            let at = drain_until(&b, &out, records, Duration::from_secs(600))?;
            anyhow::Ok((at, cpu::Sample::now()))
        }),
        Clock::Acked => {
            let acked = handle.metrics.records_out.with_label_values(&[output]);
            tokio::task::spawn_blocking(move || {
                let at =
                    wait_count(|| acked.get(), records, Duration::from_secs(600)).map_err(|n| {
                        anyhow::anyhow!("{out}: only {n} of {records} outputs acknowledged")
                    })?;
                anyhow::Ok((at, cpu::Sample::now()))
            })
        }
    };
    let (started, consumed_before, cpu_start) = first_out.await??;
    let (last, cpu_end) = done.await??;
    let counted = records.saturating_sub(consumed_before);
    anyhow::ensure!(
        counted >= records / 4,
        "{output}: {consumed_before} of {records} records were consumed before the first output \
         was acknowledged; too few left for a steady-state figure (raise --records)"
    );
    if clock == Clock::Acked {
        // What the service counted must be on the broker (read back after the clock stopped;
        // tansu 0.6's high watermarks can lag what it stored, so the records are counted).
        let (b, out) = (brokers.to_owned(), output.to_owned());
        tokio::task::spawn_blocking(move || {
            drain_until(&b, &out, records, Duration::from_secs(120))
        })
        .await??;
    }
    let secs = last
        .saturating_duration_since(started)
        .as_secs_f64()
        .max(1e-6);
    Ok(Timed {
        eps: counted as f64 / secs,
        cpu: cpu_start
            .zip(cpu_end)
            .map(|(a, b)| b.since(&a).per_record(counted)),
    })
}

/// The CPU per record of the best runs, for the RESULT line: ` {name}_cpu_us=…` (this
/// process: the service), ` {name}_machine_cpu_us=…` (the machine: the broker too) and
/// ` {name}_busy=…` (the machine's busy fraction) for each; empty without `/proc`.
fn cpu_fields(runs: &[(&str, Timed)]) -> String {
    runs.iter()
        .filter_map(|(name, run)| {
            run.cpu.map(|c| {
                format!(
                    " {name}_cpu_us={:.2} {name}_machine_cpu_us={:.2} {name}_busy={:.2}",
                    c.process_us, c.machine_us, c.busy
                )
            })
        })
        .collect()
}

/// A throughput run's figures.
#[derive(Debug, Clone, Copy)]
struct Timed {
    /// Records/s.
    eps: f64,
    /// CPU per record while the run was timed, when `/proc` could be read.
    cpu: Option<cpu::PerRecord>,
}

/// Arguments of `loadgen bench-scorer`.
#[derive(clap::Args, Debug)]
pub struct ScorerBenchArgs {
    /// A models directory with a serving version (headroom-train train + promote).
    #[arg(long)]
    models_dir: String,
    /// Records (at least ~400,000: the featurizer's reference run leaves out the ~100,000 it
    /// consumes while its producer starts).
    #[arg(long, default_value_t = 400_000)]
    records: u64,
    #[arg(long, default_value_t = 1000)]
    entities: u32,
}

/// The scorer through the broker (every event scored by every head), with the featurizer's
/// rate from the same run as the reference: telemetry is preloaded, the featurizer turns it into
/// features (timed), then the scorer turns those into forecasts (timed).
pub fn run_scorer(brokers: &str, args: &ScorerBenchArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let prefix = new_prefix();
        apply_topics(brokers, &prefix).await?;
        let input = format!("{prefix}telemetry.raw");
        let (b, i, e, r) = (brokers.to_owned(), input.clone(), args.entities, args.records);
        tokio::task::spawn_blocking(move || preload(&b, &i, e, r)).await??;
        let featurizer = throughput(brokers, "featurizer", &prefix, &prefix, &input, args.records, Clock::Consumed).await?.eps;
        let features = format!("{prefix}features");
        let which = format!("scorer:{}", args.models_dir);
        let scorer = throughput(brokers, &which, &format!("{prefix}s."), &prefix, &features, args.records, Clock::Consumed).await?.eps;
        println!(
            "RESULT scorer-throughput records={} entities={} scorer_eps={scorer:.0} featurizer_eps={featurizer:.0} ratio={:.3}",
            args.records,
            args.entities,
            scorer / featurizer
        );
        Ok(())
    })
}

/// The size of one relay output and of one featurizer output for the same generated record,
/// and the padding that makes the relay's as large as the featurizer's (the `relay-sized`
/// reference: same bytes on the wire, none of the feature work).
fn output_sizes(entities: u32) -> anyhow::Result<(usize, usize, usize)> {
    let mut g = generator(entities, None);
    let t = g.sample(0, headroom_runtime::observe::now_ms());
    let mut buf = Vec::new();
    t.encode_framed(&mut buf);
    let relay = buf.len();
    let c = headroom_featurizer::Config::load(None)?;
    let featurizer =
        headroom_featurizer::Featurizer::new(c.features, c.validation, String::new(), None);
    let layout = featurizer.layout();
    let features = FeaturesRecord {
        event_id: headroom_schemas::features::event_id(&t.entity_id, t.ts_ms),
        entity_id: t.entity_id.clone(),
        ts_ms: t.ts_ms,
        service: t.service.clone(),
        cluster: t.cluster.clone(),
        feature_set: layout.id().to_owned(),
        values: vec![0.5; layout.len()],
        cpu_cores: t.cpu_cores,
        mem_bytes: t.mem_bytes,
        replicas: t.replicas,
        cost_per_hour: t.cost_per_hour,
        source_ts_ms: Some(t.ts_ms),
        ..FeaturesRecord::default()
    };
    features.encode_framed(&mut buf);
    let featurizer = buf.len();
    // The label's key and length prefixes take a few bytes of their own: shrink the padding
    // until the padded record is no larger than the featurizer's.
    let mut pad = featurizer.saturating_sub(relay);
    while pad > 0 {
        let mut padded = t.clone();
        padded
            .labels
            .push((headroom_relay::PAD_LABEL.to_owned(), "x".repeat(pad)));
        padded.encode_framed(&mut buf);
        if buf.len() <= featurizer {
            break;
        }
        pad -= 1;
    }
    anyhow::ensure!(
        pad > 0,
        "the featurizer's output ({featurizer} B) is not larger than the relay's ({relay} B)"
    );
    Ok((relay, featurizer, pad))
}

/// The two-worker runtime every benchmark runs its services in.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// A topic prefix of the run's own, so runs never read each other's records.
pub(crate) fn new_prefix() -> String {
    format!("bench-{}.", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Creates the built-in topology's topics under `prefix`.
pub(crate) async fn apply_topics(brokers: &str, prefix: &str) -> anyhow::Result<()> {
    topology::apply(&Topology::builtin(), &kafka_cfg(brokers), prefix, Duration::from_secs(30)).await?;
    Ok(())
}

pub fn run(brokers: &str, args: &BenchArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(run_async(brokers, args))
}

async fn run_async(brokers: &str, args: &BenchArgs) -> anyhow::Result<()> {
    let prefix = new_prefix();
    let kcfg = kafka_cfg(brokers);
    apply_topics(brokers, &prefix).await?;
    let mut extra = Vec::new();
    for round in 0..args.rounds.max(1) {
        extra.push(format!("r{round}.telemetry.relayed"));
        extra.push(format!("r{round}.telemetry.relayed-sized"));
        extra.push(format!("r{round}.features"));
    }
    for i in 0..args.load_fractions.len() + 2 {
        extra.push(format!("telemetry.lat{i}"));
        extra.push(format!("features.lat{i}"));
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    topology::apply(
        &topic_topology(&extra),
        &kcfg,
        &prefix,
        Duration::from_secs(30),
    )
    .await?;
    let featurizer = match args.max_rate {
        Some(rate) => rate,
        None => {
            let input = format!("{prefix}telemetry.raw");
            eprintln!(
                "preloading {} records of {} entities into {input}",
                args.records, args.entities
            );
            let (b, i, e, r) = (
                brokers.to_owned(),
                input.clone(),
                args.entities,
                args.records,
            );
            let produce_rate = tokio::task::spawn_blocking(move || preload(&b, &i, e, r)).await??;
            eprintln!("  preload: {produce_rate:.0} records/s");

            // The broker's own ceiling: a plain consumer reading the preloaded topic, no processing.
            let (b, i, r) = (brokers.to_owned(), input.clone(), args.records);
            let (consume_rate, _) = tokio::task::spawn_blocking(move || {
                drain(&b, &i, r, Duration::from_secs(600), false)
            })
            .await??;
            eprintln!("  plain consumer: {consume_rate:.0} records/s");
            let (relay_bytes, featurizer_bytes, pad) = output_sizes(args.entities)?;
            let sized = format!("relay-sized:{pad}");
            let none = Timed { eps: 0.0, cpu: None };
            let (mut relay, mut featurizer, mut relay_sized) = (none, none, none);
            // Alternating order (relay first in even rounds, last in odd ones): the broker
            // slows as its in-memory store fills, so a fixed order would favour whichever
            // service always runs first.
            for round in 0..args.rounds.max(1) {
                let mut order = ["relay", "featurizer", sized.as_str()];
                if round % 2 == 1 {
                    order.reverse();
                }
                for which in order {
                    let run = throughput(
                        brokers,
                        which,
                        &format!("{prefix}r{round}."),
                        &prefix,
                        &input,
                        args.records,
                        args.clock,
                    )
                    .await?;
                    let best = match which {
                        "relay" => &mut relay,
                        "featurizer" => &mut featurizer,
                        _ => &mut relay_sized,
                    };
                    if run.eps > best.eps {
                        *best = run;
                    }
                }
            }
            let (relay_eps, featurizer_eps, relay_sized_eps) =
                (relay.eps, featurizer.eps, relay_sized.eps);
            eprintln!(
                "  outputs: relay {relay_bytes} B, featurizer {featurizer_bytes} B; the sized relay pads each record by {pad} B: ratio to it {:.3}",
                featurizer_eps / relay_sized_eps
            );
            println!(
                "RESULT featurizer-throughput records={} entities={} relay_eps={relay_eps:.0} featurizer_eps={featurizer_eps:.0} ratio={:.3} relay_sized_eps={relay_sized_eps:.0} ratio_sized={:.3} relay_bytes={relay_bytes} featurizer_bytes={featurizer_bytes} producer_eps={produce_rate:.0} plain_consumer_eps={consume_rate:.0} clock={}{}",
                args.records,
                args.entities,
                featurizer_eps / relay_eps,
                featurizer_eps / relay_sized_eps,
                clap::ValueEnum::to_possible_value(&args.clock).expect("no skipped variant").get_name(),
                cpu_fields(&[("relay", relay), ("featurizer", featurizer), ("relay_sized", relay_sized)]),
            );
            featurizer_eps
        }
    };

    // Reference: one broker hop (producer -> broker -> reader), no featurizer, at the lowest
    // and the highest load. The featurizer path has two hops, so its floor is about twice this.
    let fractions = [
        args.load_fractions.first().copied().unwrap_or(0.1),
        args.load_fractions.last().copied().unwrap_or(0.7),
    ];
    for (j, f) in fractions.iter().enumerate() {
        let hop = latency_run(
            brokers,
            &prefix,
            args.load_fractions.len() + j,
            args.entities,
            featurizer * f,
            args.latency_duration,
            Route::BrokerOnly,
        )
        .await?;
        println!(
            "RESULT broker-hop-latency load_fraction={f} rate_eps={:.0} records={} p50_ms={:.2} p95_ms={:.2} p99_ms={:.2} max_ms={:.2}{}",
            featurizer * f, hop.count, hop.p50, hop.p95, hop.p99, hop.max, hop.busy_field()
        );
    }
    let mut last = None;
    for (i, fraction) in args.load_fractions.iter().enumerate() {
        let rate = featurizer * fraction;
        let lat = latency_run(
            brokers,
            &prefix,
            i,
            args.entities,
            rate,
            args.latency_duration,
            Route::Featurizer,
        )
        .await?;
        eprintln!(
            "  latency at {:.0} % ({rate:.0}/s): p50 {:.2} ms, p99 {:.2} ms, max backlog {}{}",
            fraction * 100.0,
            lat.p50,
            lat.p99,
            lat.max_backlog,
            lat.busy.map(|b| format!(", machine busy {:.0} %", b * 100.0)).unwrap_or_default()
        );
        last = Some((*fraction, rate, lat));
    }
    if let Some((fraction, rate, lat)) = last {
        println!(
            "RESULT featurizer-latency load_fraction={fraction} rate_eps={rate:.0} records={} p50_ms={:.2} p95_ms={:.2} p99_ms={:.2} max_ms={:.2} max_backlog={} target_p99_ms=25{}",
            lat.count, lat.p50, lat.p95, lat.p99, lat.max, lat.max_backlog, lat.busy_field()
        );
    }
    Ok(())
}

struct Latency {
    count: u64,
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
    max_backlog: u64,
    /// The machine's busy fraction while the load was offered (every process: the service, the
    /// generator, the reader, the broker), when `/proc` could be read.
    busy: Option<f64>,
}

impl Latency {
    /// ` machine_busy=…` for a RESULT line, or nothing.
    fn busy_field(&self) -> String {
        self.busy.map(|b| format!(" machine_busy={b:.2}")).unwrap_or_default()
    }
}

/// Where the measured records go: through the featurizer (two broker hops), or straight from
/// the producer to the reader (one hop, the reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Featurizer,
    BrokerOnly,
}

/// Open-loop production at `rate`; latency of each record from the time its input was due
/// (not when it was sent, so a stalled producer cannot hide queueing delay).
async fn latency_run(
    brokers: &str,
    prefix: &str,
    run: usize,
    entities: u32,
    rate: f64,
    duration: Duration,
    route: Route,
) -> anyhow::Result<Latency> {
    let through_featurizer = route == Route::Featurizer;
    let input = format!("{prefix}telemetry.lat{run}");
    let output = if through_featurizer {
        format!("{prefix}features.lat{run}")
    } else {
        input.clone()
    };
    let mut c = headroom_featurizer::Config::load(None)?;
    c.kafka.brokers = brokers.into();
    c.kafka.properties.extend(service_properties()?);
    c.kafka.group_id = format!("{prefix}latency{run}");
    c.http.listen = "127.0.0.1:0".into();
    c.topics.input = input.clone();
    c.topics.output = output.clone();
    c.topics.dlq = format!("{prefix}telemetry.dlq");
    c.runtime.max_batch_wait = Duration::from_millis(5);
    let svc = if through_featurizer {
        let svc = headroom_featurizer::start(c, Shutdown::new()).await?;
        // Let the group settle before the clock starts.
        warmup(brokers, &input, &output).await?;
        Some(svc)
    } else {
        None
    };

    let total = (rate * duration.as_secs_f64()) as u64;
    let b = brokers.to_owned();
    let out_topic = output.clone();
    let reader = kafka::reader(brokers, &out_topic, true)?;
    let mut g = generator(entities, Some(11));
    let (n, iv, start_ts) = backdated(&g, total);
    let ids: HashMap<String, u64> = (0..n)
        .map(|i| (g.entity_id(i as usize).to_owned(), i))
        .collect();
    // The producer is connected (metadata, producer id) before the clock starts: one record of
    // an entity the measurement ignores, acknowledged. Otherwise the first second of due records
    // waits for the client's start-up and the tail measures that, not the pipeline.
    let p = kafka::producer(&b)?;
    let mut buf = Vec::new();
    let mut warm = g.sample(0, start_ts);
    warm.entity_id = "loadgen-warmup".into();
    warm.encode_framed(&mut buf);
    kafka::send(&p, &input, warm.entity_id.as_bytes(), &buf)?;
    kafka::flush(&p)?;
    let pacer = kafka::Pacer {
        start: Instant::now() + Duration::from_millis(200),
        rate,
    };
    let produced = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let prod_count = produced.clone();
    // The machine's CPU while the load is offered: from the first record due to the last.
    let producer = std::thread::spawn(move || -> anyhow::Result<Option<cpu::Used>> {
        let mut offered = None;
        for k in 0..total {
            let (r, i) = ((k / n) as i64, (k % n) as usize);
            let t = g.sample(i, start_ts + r * iv);
            t.encode_framed(&mut buf);
            pacer.wait(k);
            if k == 0 {
                offered = cpu::Sample::now();
            }
            kafka::send(&p, &input, t.entity_id.as_bytes(), &buf)?;
            prod_count.store(k + 1, std::sync::atomic::Ordering::Relaxed);
        }
        let used = offered.zip(cpu::Sample::now()).map(|(a, b)| b.since(&a));
        kafka::flush(&p)?;
        Ok(used)
    });
    let consumer = tokio::task::spawn_blocking(move || -> anyhow::Result<(Histogram<u64>, u64)> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        // The path split at the output record's create time (stamped by the featurizer's
        // producer): due -> featurizer produce, and featurizer produce -> arrival.
        let mut first = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let mut second = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let decoder = headroom_schemas::TelemetryDecoder::new();
        let deadline = pacer.start + duration + Duration::from_secs(60);
        let mut got = 0u64;
        let mut max_backlog = 0u64;
        let timeline = std::env::var_os("HEADROOM_BENCH_TIMELINE").is_some();
        let mut per_sec: Vec<u64> = Vec::new();
        while got < total && Instant::now() < deadline {
            if let Some(Ok(m)) = reader.poll(Duration::from_millis(50)) {
                let now = Instant::now();
                let Some(payload) = m.payload() else { continue };
                let peeked = if through_featurizer {
                    FeaturesRecord::peek(payload).ok()
                } else {
                    decoder.decode(payload).ok().map(|t| (t.entity_id, t.ts_ms))
                };
                let Some((entity, ts_ms)) = peeked else {
                    continue;
                };
                let Some(&i) = ids.get(&entity) else { continue };
                let r = ((ts_ms - start_ts) / iv) as u64;
                let k = r * n + i;
                let due = pacer.due(k);
                let us = now.saturating_duration_since(due).as_micros() as u64;
                h.record(us.max(1))?;
                if let Some(created_ms) = m.timestamp().to_millis().filter(|_| through_featurizer) {
                    let wall_now = headroom_runtime::observe::now_ms();
                    let due_wall = wall_now - (us / 1000) as i64;
                    first.record(((created_ms - due_wall).max(0) as u64 * 1000).max(1))?;
                    second.record(((wall_now - created_ms).max(0) as u64 * 1000).max(1))?;
                }
                if timeline {
                    let sec = due.saturating_duration_since(pacer.start).as_millis() as usize / 250;
                    if per_sec.len() <= sec {
                        per_sec.resize(sec + 1, 0);
                    }
                    per_sec[sec] = per_sec[sec].max(us);
                }
                got += 1;
                let backlog = produced
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .saturating_sub(got);
                max_backlog = max_backlog.max(backlog);
            }
        }
        if !first.is_empty() {
            let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) / 1000;
            eprintln!(
                "  split at the featurizer's produce: in p50 {} / p99 {} ms, out p50 {} / p99 {} ms",
                q(&first, 0.5),
                q(&first, 0.99),
                q(&second, 0.5),
                q(&second, 0.99)
            );
        }
        if timeline {
            let line: Vec<String> = per_sec.iter().map(|us| format!("{}", us / 1000)).collect();
            eprintln!(
                "  max latency (ms) per 250 ms of due time: {}",
                line.join(" ")
            );
        }
        Ok((h, max_backlog))
    });
    let used = producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    let (h, max_backlog) = consumer.await??;
    if let Some(svc) = svc {
        svc.stop().await?;
    }
    anyhow::ensure!(!h.is_empty(), "no features arrived in the latency run");
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(Latency {
        count: h.len(),
        p50: ms(0.5),
        p95: ms(0.95),
        p99: ms(0.99),
        max: h.max() as f64 / 1000.0,
        max_backlog,
        busy: used.map(|u| u.busy),
    })
}

/// Sends one record and waits for its feature, so group join and metadata are done.
async fn warmup(brokers: &str, input: &str, output: &str) -> anyhow::Result<()> {
    let (b, i, o) = (brokers.to_owned(), input.to_owned(), output.to_owned());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let reader = kafka::reader(&b, &o, false)?;
        let p = kafka::producer(&b)?;
        let mut g = generator(1, Some(99));
        let mut buf = Vec::new();
        let t = g.sample(0, headroom_runtime::observe::now_ms() - 86_400_000 * 30);
        let mut t = t;
        t.entity_id = "warmup".into();
        t.encode_framed(&mut buf);
        kafka::send(&p, &i, b"warmup", &buf)?;
        kafka::flush(&p)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(Ok(_)) = reader.poll(Duration::from_millis(100)) {
                return Ok(());
            }
        }
        anyhow::bail!("warm-up record got no feature within 60 s")
    })
    .await?
}

/// Arguments of `loadgen bench-recommender`.
#[derive(clap::Args, Debug)]
pub struct RecommenderBenchArgs {
    /// Forecasts, and telemetry records for the featurizer's reference run (at least ~400,000,
    /// as for `bench-scorer`).
    #[arg(long, default_value_t = 400_000)]
    records: u64,
    #[arg(long, default_value_t = 1000)]
    entities: u32,
}

/// Publishes one forecast per generated sample (p50 the current utilization, p90 a little
/// above, the sample as the observation): the recommender's input without a scorer.
fn preload_forecasts(
    brokers: &str,
    topic: &str,
    entities: u32,
    records: u64,
) -> anyhow::Result<()> {
    use headroom_schemas::{Forecast, ForecastPoint, Metric, Observed};
    let mut g = generator(entities, None);
    let (n, iv, start_ts) = backdated(&g, records);
    let p = kafka::producer(brokers)?;
    let mut buf = Vec::new();
    for k in 0..records {
        let (r, i) = ((k / n) as i64, (k % n) as usize);
        let t = g.sample(i, start_ts + r * iv);
        let (cpu, mem) = (t.cpu_util.unwrap_or(0.5), t.mem_util.unwrap_or(0.5));
        let points = [5, 15, 30]
            .iter()
            .flat_map(|&h| {
                [
                    ForecastPoint {
                        metric: Metric::Cpu,
                        horizon_min: h,
                        p50: cpu,
                        p90: cpu + 0.05,
                        model: "bench/v0".into(),
                    },
                    ForecastPoint {
                        metric: Metric::Memory,
                        horizon_min: h,
                        p50: mem,
                        p90: mem + 0.03,
                        model: "bench/v0".into(),
                    },
                ]
            })
            .collect();
        let f = Forecast {
            event_id: headroom_schemas::features::event_id(&t.entity_id, t.ts_ms),
            entity_id: t.entity_id.clone(),
            ts_ms: t.ts_ms,
            service: t.service.clone(),
            cluster: t.cluster.clone(),
            points,
            scale_event_prob: Some(0.03),
            model_versions: vec![("bench".into(), "v0".into())],
            observed: Observed {
                cpu_util: t.cpu_util,
                mem_util: t.mem_util,
                net_bps: t.net_in_bps,
                cpu_cores: t.cpu_cores,
                mem_bytes: t.mem_bytes,
                replicas: t.replicas,
                cost_per_hour: t.cost_per_hour,
            },
        };
        buf.clear();
        f.encode_framed(&mut buf);
        kafka::send(&p, topic, t.entity_id.as_bytes(), &buf)?;
    }
    kafka::flush(&p)
}

/// The recommender through the broker (one decision per forecast, holds included), with the
/// featurizer's rate on as many telemetry records from the same run as the reference; and the
/// recommender's state memory per entity from its own gauges.
pub fn run_recommender(brokers: &str, args: &RecommenderBenchArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let prefix = new_prefix();
        apply_topics(brokers, &prefix).await?;
        let input = format!("{prefix}telemetry.raw");
        let forecasts = format!("{prefix}forecasts");
        let (b, i, f, e, r) = (brokers.to_owned(), input.clone(), forecasts.clone(), args.entities, args.records);
        tokio::task::spawn_blocking(move || {
            preload(&b, &i, e, r)?;
            preload_forecasts(&b, &f, e, r)
        })
        .await??;
        let featurizer = throughput(brokers, "featurizer", &prefix, &prefix, &input, args.records, Clock::Consumed).await?.eps;

        let mut c = headroom_recommender::Config::load(None)?;
        c.kafka.brokers = brokers.into();
        c.kafka.group_id = format!("{prefix}recommender");
        c.http.listen = "127.0.0.1:0".into();
        c.runtime.commit_interval = Duration::from_millis(200);
        c.topics.input = forecasts.clone();
        c.topics.output = format!("{prefix}recommendations");
        c.topics.dlq = format!("{prefix}telemetry.dlq");
        let output = c.topics.output.clone();
        let handle = headroom_recommender::start(c, Shutdown::new()).await?;
        let rate = timed(brokers, &handle, &forecasts, &output, args.records, Clock::Consumed).await?.eps;
        // The state gauges are refreshed at each commit.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let entities = handle.metrics.state_entities.get().max(1);
        let bytes = handle.metrics.state_bytes.get();
        handle.stop().await?;
        eprintln!("  recommender: {rate:.0} forecasts/s, {entities} entities, {} bytes of state each", bytes / entities);
        println!(
            "RESULT recommender-throughput records={} entities={} recommender_fps={rate:.0} featurizer_eps={featurizer:.0} ratio={:.3} state_bytes_per_entity={}",
            args.records,
            args.entities,
            rate / featurizer,
            bytes / entities
        );
        Ok(())
    })
}

/// Arguments of `loadgen bench-drift`.
#[derive(clap::Args, Debug)]
pub struct DriftBenchArgs {
    /// Forecasts (the model-error detectors' input).
    #[arg(long, default_value_t = 400_000)]
    records: u64,
    #[arg(long, default_value_t = 1000)]
    entities: u32,
    /// Rounds; each runs the monitor without and with its changelog, alternating which first.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// `state.detectors_every` of the run with the changelog (default: the monitor's default;
    /// `0s` writes every changed entity at the end of every batch).
    #[arg(long, value_parser = humantime::parse_duration)]
    detectors_every: Option<Duration>,
    /// `state.rewrite_after` of the run with the changelog (default: the monitor's default;
    /// 0 never rewrites, and the read-back reads the whole changelog).
    #[arg(long)]
    rewrite_after: Option<u32>,
}

/// The cost of the drift monitor's changelog: the model-error detectors over the same
/// preloaded forecasts with `state.enabled = false` (the reference: in memory only) and `true`
/// (each changed entity written to `drift.state` at the end of a batch, at most every
/// `state.detectors_every` per partition: `--detectors-every`), side by side.
/// Clock: from the first forecast consumed to the last; with the changelog, until the last of
/// its records is acknowledged as well. From a preloaded topic a batch holds several forecasts
/// of each of its entities and writes one record per entity; with many entities (each entity
/// once per batch, as in a live stream at a 5-minute interval) it writes one per forecast.
pub fn run_drift(brokers: &str, args: &DriftBenchArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let prefix = new_prefix();
        apply_topics(brokers, &prefix).await?;
        let forecasts = format!("{prefix}forecasts");
        let (b, f, e, r) = (brokers.to_owned(), forecasts.clone(), args.entities, args.records);
        tokio::task::spawn_blocking(move || preload_forecasts(&b, &f, e, r)).await??;
        // The serving version's manifest: the drift monitor needs one; these forecasts are
        // version v0's, judged against each entity's own baseline.
        let models = std::env::temp_dir().join(format!("{prefix}models"));
        std::fs::create_dir_all(models.join("v0"))?;
        let manifest = serde_json::json!({
            "version": "v0", "family": "bench", "feature_schema": "bench", "feature_names": ["cpu_now"],
            "interval_ms": 300_000, "training_rows": 1000,
            "reference": [{"feature": "cpu_now", "edges": [0.5], "shares": [0.5, 0.5], "missing_share": 0.0}],
            "metrics": {"rows": []}
        });
        std::fs::write(models.join("v0/manifest.json"), serde_json::to_vec(&manifest)?)?;
        std::fs::write(models.join("registry.json"), br#"{"serving":{"bench":"v0"}}"#)?;
        let (mut off, mut on) = (Vec::new(), Vec::new());
        let mut state_records = 0u64;
        let mut state_topic = None;
        let mut every_s = 0.0;
        let mut rewrite_after = 0;
        for round in 0..args.rounds {
            for changelog in if round % 2 == 0 { [false, true] } else { [true, false] } {
                let mut c = headroom_drift_monitor::Config::load(None)?;
                c.kafka.brokers = brokers.into();
                c.kafka.group_id = format!("{prefix}drift-{round}-{changelog}");
                c.http.listen = "127.0.0.1:0".into();
                c.topics.features = format!("{prefix}features");
                c.topics.forecasts = forecasts.clone();
                c.topics.output = format!("{prefix}drift.alerts");
                c.topics.models = format!("{prefix}models");
                c.topics.dlq = format!("{prefix}telemetry.dlq");
                // A changelog of its own: one left by an earlier run would be restored, and the
                // forecasts it holds skipped.
                let own = format!("{prefix}run{round}{changelog}.");
                apply_topics(brokers, &own).await?;
                c.topics.state = format!("{own}drift.state");
                c.topics.windows = format!("{own}drift.windows");
                c.models.dir = models.clone();
                c.models.family = "bench".into();
                c.models.watch = false;
                c.features.enabled = false;
                c.state.enabled = changelog;
                if let Some(every) = args.detectors_every {
                    c.state.detectors_every = every;
                }
                every_s = c.state.detectors_every.as_secs_f64();
                if let Some(r) = args.rewrite_after {
                    c.state.rewrite_after = r;
                }
                rewrite_after = c.state.rewrite_after;
                let group = c.kafka.group_id.clone();
                let handle = headroom_drift_monitor::start(c, Shutdown::new()).await?;
                let consumed = handle.metrics.records_in.with_label_values(&[&forecasts]);
                let written = handle.metrics.records_out.with_label_values(&[&format!("{prefix}run{round}{changelog}.drift.state")]);
                let records = args.records;
                let (rate, states) = tokio::task::spawn_blocking(move || {
                    let first = wait_count(|| consumed.get(), 1, Duration::from_secs(120))
                        .map_err(|_| anyhow::anyhow!("the drift monitor consumed nothing within 120 s"))?;
                    let mut last = wait_count(|| consumed.get(), records, Duration::from_secs(600))
                        .map_err(|n| anyhow::anyhow!("the drift monitor consumed {n} of {records} forecasts"))?;
                    // With the changelog, the run is over when its records are acknowledged too:
                    // the count stops growing. They leave once their batch's alerts are
                    // acknowledged, at a batch's end or a commit tick (1 s), so the count is
                    // watched for longer than a tick before it counts as settled.
                    let mut seen = written.get();
                    let mut settled = Instant::now();
                    while changelog && settled.elapsed() < Duration::from_millis(1500) {
                        std::thread::sleep(Duration::from_millis(50));
                        let now = written.get();
                        if now != seen {
                            seen = now;
                            last = Instant::now();
                            settled = last;
                        }
                    }
                    let secs = last.saturating_duration_since(first).as_secs_f64().max(1e-6);
                    anyhow::Ok(((records - 1) as f64 / secs, seen))
                })
                .await??;
                handle.stop().await?;
                eprintln!("  round {round}: changelog {changelog}: {rate:.0} forecasts/s, {states} state records");
                if changelog {
                    on.push(rate);
                    state_records = state_records.max(states);
                    // Read back as the monitor's group would: from its restore starts.
                    state_topic = Some((format!("{own}drift.state"), group));
                } else {
                    off.push(rate);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&models);
        let restore = match state_topic {
            Some((topic, group)) => {
                let (b, rounds) = (brokers.to_owned(), args.rounds.max(1));
                tokio::task::spawn_blocking(move || time_restores(&b, &topic, &group, rounds)).await??
            }
            None => RestoreTimes::default(),
        };
        let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        println!(
            "RESULT drift-changelog records={} entities={} without_changelog_fps={:.0} with_changelog_fps={:.0} ratio={:.3} state_records={} \
             restore_records={} restore_entities={} restore_one_reader_ms={:.0} restore_per_partition_ms={:.0} restore_speedup={:.2} detectors_every_s={every_s} rewrite_after={rewrite_after}",
            args.records,
            args.entities,
            best(&off),
            best(&on),
            best(&on) / best(&off).max(1e-9),
            state_records,
            restore.records,
            restore.entities,
            restore.one_reader_ms,
            restore.per_partition_ms,
            restore.per_partition_ms / restore.one_reader_ms.max(1e-9)
        );
        Ok(())
    })
}

/// How long reading a changelog back takes: best of `rounds` reads each way.
#[derive(Debug, Default)]
struct RestoreTimes {
    records: u64,
    entities: usize,
    /// All partitions with one reader, as the drift monitor reads them at an assignment.
    one_reader_ms: f64,
    /// One reader per partition, one partition after the other (the reference: how it was read
    /// until 2026-12-06).
    per_partition_ms: f64,
}

/// Reads the changelog `topic` back the way a drift monitor assigned every partition would,
/// and, as the reference, one partition after another; alternating which goes first.
fn time_restores(brokers: &str, topic: &str, group: &str, rounds: u32) -> anyhow::Result<RestoreTimes> {
    use headroom_runtime::changelog;
    let topology = Topology::builtin();
    let def = topology
        .topic("drift.state")
        .ok_or_else(|| anyhow::anyhow!("the topology has no drift.state"))?;
    let partitions: Vec<i32> = (0..def.partitions(&topology.defaults)).collect();
    let kafka = headroom_runtime::KafkaConfig { group_id: group.to_owned(), ..kafka_cfg(brokers) };
    let timeout = Duration::from_secs(600);
    let mut t = RestoreTimes { one_reader_ms: f64::MAX, per_partition_ms: f64::MAX, ..RestoreTimes::default() };
    for round in 0..rounds * 2 {
        // Pairs of reads, the first pair one reader first, the next the other way round.
        let one_reader = (round % 2 == 0) == (round / 2 % 2 == 0);
        let started = Instant::now();
        if one_reader {
            let mut keys = std::collections::HashSet::new();
            let r = changelog::restore(&kafka, topic, &partitions, timeout, |_, k, v, _| {
                if v.is_some() {
                    keys.insert(k.to_vec());
                } else {
                    keys.remove(k);
                }
            })?;
            t.one_reader_ms = t.one_reader_ms.min(started.elapsed().as_secs_f64() * 1e3);
            t.records = r.records;
            t.entities = keys.len();
        } else {
            let mut records = 0;
            for p in &partitions {
                records += changelog::restore(&kafka, topic, &[*p], timeout, |_, _, _, _| {})?.records;
            }
            anyhow::ensure!(t.records == 0 || records == t.records, "the two reads saw {records} and {} records", t.records);
            t.per_partition_ms = t.per_partition_ms.min(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    eprintln!(
        "  changelog read back: {} records, {} entities: one reader {:.0} ms, one per partition {:.0} ms",
        t.records, t.entities, t.one_reader_ms, t.per_partition_ms
    );
    Ok(t)
}
