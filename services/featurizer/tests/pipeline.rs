//! Integration tests against the real broker (started through scripts/stack.sh when needed).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use headroom_featurizer::Config;
use headroom_runtime::observe::now_ms;
use headroom_runtime::Shutdown;
use headroom_schemas::{FeaturesRecord, Telemetry};
use headroom_testkit::rdkafka::{self, Message};
use headroom_testkit::{brokers, consume, create_topics, header, produce, unique, Rec};

const IV: i64 = 300_000;

fn config(brokers: &str, prefix: &str, group: &str) -> Config {
    let mut c: Config = headroom_runtime::load_config(
        headroom_featurizer_defaults(),
        None,
        "HEADROOM_FEATURIZER_ITEST_UNUSED__",
    )
    .expect("defaults");
    c.kafka.brokers = brokers.to_owned();
    c.kafka.group_id = group.to_owned();
    c.http.listen = "127.0.0.1:0".into();
    c.runtime.commit_interval = Duration::from_millis(200);
    c.topics.input = format!("{prefix}telemetry.raw");
    c.topics.output = format!("{prefix}features");
    c.topics.dlq = format!("{prefix}telemetry.dlq");
    c
}

fn headroom_featurizer_defaults() -> &'static str {
    include_str!("../default.toml")
}

fn telemetry(entity: &str, ts_ms: i64, cpu: f64) -> Telemetry {
    Telemetry {
        entity_id: entity.into(),
        ts_ms,
        service: Some("svc".into()),
        cluster: Some("c1".into()),
        cpu_util: Some(cpu),
        mem_util: Some(0.5 * cpu + 0.1),
        net_in_bps: Some(1e6 * cpu),
        net_out_bps: Some(2e5),
        disk_read_bps: Some(1e4),
        disk_write_bps: Some(2e4),
        cpu_cores: Some(4.0),
        mem_bytes: Some(16e9),
        replicas: Some(2),
        cost_per_hour: Some(0.8),
        scale_event: Some(false),
        labels: vec![("team".into(), "a".into())],
    }
}

fn avro(t: &Telemetry) -> Rec {
    let mut payload = Vec::new();
    t.encode_framed(&mut payload);
    Rec {
        key: Some(t.entity_id.clone().into_bytes()),
        payload,
        headers: vec![],
    }
}

fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read");
    body
}

fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_goes_to_the_dlq_and_valid_input_to_features() {
    let brokers = brokers();
    // Spans go to an OTLP receiver (a fake collector: none can run here). The one traced record
    // starts its trace at a producer that exports its root span there too.
    let collector = headroom_testkit::ops::FakeOtlpCollector::start();
    let producer_spans = headroom_runtime::trace::Spans::new("test-producer", &collector.url()).expect("exporter");
    let root = producer_spans.root("telemetry.raw");
    drop(producer_spans);
    let traceparent: &str = &root;
    let prefix = format!("{}.", unique("fz-bad"));
    create_topics(&brokers, &prefix).await;
    let base = (now_ms() - 3 * 86_400_000) / IV * IV;

    let mut records = Vec::new();
    let mut valid = 0usize;
    // 20 valid records for two entities, some as JSON.
    for i in 0..10 {
        for e in ["vm-a", "vm-b"] {
            let t = telemetry(e, base + i * IV, 0.1 + 0.05 * i as f64);
            if i % 3 == 0 {
                records.push(Rec {
                    key: Some(e.as_bytes().to_vec()),
                    payload: t.to_json().into_bytes(),
                    headers: vec![],
                });
            } else if i == 1 && e == "vm-a" {
                // One traced record: its output must continue the trace.
                let mut r = avro(&t);
                r.headers.push(("traceparent".into(), traceparent.into()));
                records.push(r);
            } else {
                records.push(avro(&t));
            }
            valid += 1;
        }
    }
    // An exact duplicate: dropped and counted, not dead-lettered.
    records.push(avro(&telemetry("vm-a", base + 3 * IV, 0.25)));
    let mut expected_reasons: Vec<&str> = Vec::new();
    let mut bad = |records: &mut Vec<Rec>, key: &str, payload: Vec<u8>, reason: &'static str| {
        records.push(Rec {
            key: Some(key.as_bytes().to_vec()),
            payload,
            headers: vec![],
        });
        expected_reasons.push(reason);
    };
    bad(
        &mut records,
        "vm-x",
        vec![0x13, 0x37, 0xde, 0xad, 0xbe, 0xef, 0x00],
        "bad_magic",
    );
    let mut wrong_id = Vec::new();
    telemetry("vm-a", base + 11 * IV, 0.2).encode_framed(&mut wrong_id);
    wrong_id[1..5].copy_from_slice(&999_999u32.to_be_bytes());
    bad(&mut records, "vm-a", wrong_id, "unknown_schema");
    let mut truncated = Vec::new();
    telemetry("vm-a", base + 11 * IV, 0.2).encode_framed(&mut truncated);
    truncated.truncate(truncated.len() / 2);
    bad(&mut records, "vm-a", truncated, "avro_decode");
    bad(&mut records, "vm-a", vec![0, 0, 0], "truncated");
    bad(
        &mut records,
        "vm-a",
        br#"{"entity_id":"vm-a","ts_ms":"soon"}"#.to_vec(),
        "wrong_type",
    );
    bad(
        &mut records,
        "vm-a",
        br#"{"entity_id": "vm-a", "ts_ms": 12"#.to_vec(),
        "json_invalid",
    );
    let mut nan = telemetry("vm-a", base + 12 * IV, 0.2);
    nan.cpu_util = Some(f64::NAN);
    bad(&mut records, "vm-a", avro(&nan).payload, "not_finite");
    let mut neg = telemetry("vm-a", base + 12 * IV, 0.2);
    neg.mem_util = Some(-0.5);
    bad(&mut records, "vm-a", avro(&neg).payload, "out_of_range");
    let mut over = telemetry("vm-a", base + 12 * IV, 0.2);
    over.cpu_util = Some(250.0);
    bad(&mut records, "vm-a", avro(&over).payload, "out_of_range");
    let future = telemetry("vm-a", now_ms() + 365 * 86_400_000, 0.2);
    bad(
        &mut records,
        "vm-a",
        avro(&future).payload,
        "timestamp_future",
    );
    let past = telemetry("vm-a", 915_148_800_000, 0.2); // 1999-01-01
    bad(&mut records, "vm-a", avro(&past).payload, "timestamp_past");
    let mut empty = telemetry("", base + 12 * IV, 0.2);
    empty.entity_id = String::new();
    bad(&mut records, "", avro(&empty).payload, "empty_entity");
    let mut labels = telemetry("vm-a", base + 12 * IV, 0.2);
    labels.labels = (0..100)
        .map(|i| (format!("k{i}"), "v".repeat(100)))
        .collect();
    bad(
        &mut records,
        "vm-a",
        avro(&labels).payload,
        "oversized_labels",
    );
    // Too late: vm-b's newest event is at slot 9; slot 1 is 40 min behind (lateness 30 min).
    bad(
        &mut records,
        "vm-b",
        avro(&telemetry("vm-b", base + IV + 1000, 0.3)).payload,
        "too_late",
    );
    bad(
        &mut records,
        "vm-zzz",
        avro(&telemetry("vm-b", base + 12 * IV, 0.3)).payload,
        "key_mismatch",
    );
    // Valid records after the bad ones still flow: the partition is not blocked.
    for i in 10..13 {
        records.push(avro(&telemetry("vm-a", base + i * IV, 0.3)));
        valid += 1;
    }
    produce(&brokers, &format!("{prefix}telemetry.raw"), &records);

    let mut cfg = config(&brokers, &prefix, &unique("g"));
    cfg.log.otlp_endpoint = collector.url();
    let svc = headroom_featurizer::start(cfg, Shutdown::new())
        .await
        .expect("start");
    let addr = svc.http_addr;
    let b2 = brokers.clone();
    let p2 = prefix.clone();
    let n_bad = expected_reasons.len();
    let (features, dlq) = tokio::task::spawn_blocking(move || {
        let f = consume(
            &b2,
            &format!("{p2}features"),
            valid,
            Duration::from_secs(60),
            Duration::from_secs(2),
        );
        let d = consume(
            &b2,
            &format!("{p2}telemetry.dlq"),
            n_bad,
            Duration::from_secs(30),
            Duration::from_secs(2),
        );
        (f, d)
    })
    .await
    .expect("consume");
    let metrics = tokio::task::spawn_blocking(move || scrape(addr))
        .await
        .expect("scrape");
    // What operators see: promtool's lint and the dashboards' queries over this exposition,
    // and a real Prometheus scraping the running service and answering a query of it.
    headroom_testkit::ops::check_exposition("featurizer", &metrics);
    let records_in = metric(&metrics, "headroom_records_in_total", "");
    assert!(records_in > 0.0);
    let answer = tokio::task::spawn_blocking(move || {
        let mut prom = headroom_testkit::ops::Prometheus::start("featurizer", &[addr]);
        prom.wait_for(
            "sum by (service) (headroom_records_in_total{job=\"featurizer\"})",
            Duration::from_secs(60),
            |r| r.first().and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok()) == Some(records_in),
        )
    })
    .await
    .expect("prometheus");
    assert_eq!(answer[0]["metric"]["service"], "featurizer", "{answer:?}");
    svc.stop().await.expect("clean stop");

    assert_eq!(
        features.len(),
        valid,
        "every valid record gives exactly one feature vector"
    );
    let mut ids = std::collections::HashSet::new();
    for m in &features {
        let f = FeaturesRecord::decode(m.payload().expect("payload")).expect("decodes");
        assert!(ids.insert(f.event_id.clone()), "no duplicate outputs");
        assert_eq!(m.key(), Some(f.entity_id.as_bytes()), "keyed by entity");
        assert!(f.values.iter().all(|v| v.is_finite()), "finite features");
    }
    let traced: Vec<&str> = features
        .iter()
        .filter_map(|m| header(m, "traceparent"))
        .collect();
    assert_eq!(
        traced.len(),
        1,
        "exactly the traced input has a traced output"
    );
    assert_eq!(&traced[0][..36], &traceparent[..36], "same trace id");
    assert_ne!(traced[0], traceparent, "a new span id");
    // The hop is a span exported over OTLP: the input's trace, the input's span as parent, the
    // span id the output carries, and where it went (flushed when the service stopped).
    let trace_id = &traceparent[3..35];
    let spans = collector.wait_for(Duration::from_secs(30), |s| s.iter().filter(|s| s.trace_id == trace_id).count() >= 2);
    let root_span: Vec<_> = spans.iter().filter(|s| s.service_name == "headroom-test-producer").collect();
    assert_eq!(root_span.len(), 1, "the producer's root span: {spans:?}");
    assert_eq!(root_span[0].trace_id, trace_id);
    assert_eq!(root_span[0].span_id, &traceparent[36..52], "the record carries the root span's id");
    assert!(root_span[0].parent_span_id.is_empty(), "a root");
    let hop: Vec<_> = spans.iter().filter(|s| s.service_name == "headroom-featurizer").collect();
    assert_eq!(hop.len(), 1, "one span per traced hop: {spans:?}");
    let span = hop[0];
    assert_eq!(span.trace_id, trace_id, "one trace from the producer on");
    assert_eq!(span.parent_span_id, &traceparent[36..52], "the input's span is the parent");
    assert_eq!(span.span_id, &traced[0][36..52], "the output continues under this span");
    assert_eq!(span.attributes["messaging.destination.name"], format!("{prefix}features"));
    assert_eq!(span.attributes["messaging.source.name"], format!("{prefix}telemetry.raw"));
    assert!(span.start_ns <= span.end_ns && span.start_ns > 0, "{span:?}");
    assert_eq!(spans.len(), 2, "untraced records export no spans");
    let mut got: Vec<&str> = dlq
        .iter()
        .map(|m| header(m, "dlq.reason").expect("reason header"))
        .collect();
    got.sort_unstable();
    let mut want = expected_reasons.clone();
    want.sort_unstable();
    assert_eq!(got, want, "one DLQ record per bad input, with its reason");
    for m in &dlq {
        assert!(header(m, "dlq.detail").is_some_and(|d| !d.is_empty()));
        assert!(header(m, "dlq.source.offset").is_some());
    }
    assert!(
        want.iter().collect::<std::collections::HashSet<_>>().len() >= 10,
        "at least ten kinds of bad input"
    );
    assert_eq!(
        metric(&metrics, "headroom_duplicate_records_total", ""),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "headroom_dlq_records_total",
            "reason=\"out_of_range\""
        ),
        2.0
    );
    assert_eq!(
        metric(&metrics, "headroom_dlq_records_total", ""),
        want.len() as f64
    );
}

/// A run with a restart and a rebalance in the middle produces, for every event, the same
/// features as an uninterrupted run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_and_rebalance_give_the_same_features() {
    let brokers = brokers();
    let prefix = format!("{}.", unique("fz-restore"));
    create_topics(&brokers, &prefix).await;
    let base = (now_ms() - 5 * 86_400_000) / IV * IV;
    let entities: Vec<String> = (0..24).map(|i| format!("vm-{i:02}")).collect();
    let make = |from, to| fleet_steps(base, &entities, from, to);
    let phases = [make(0, 100), make(100, 160), make(160, 220)];
    let total: usize = phases.iter().map(Vec::len).sum();
    let reference = uninterrupted(&brokers, &prefix, &phases).await;

    // Run 2 reads the same records with its own group: stop after phase 0, restart, then a
    // second member joins during phase 2 (a rebalance), and one leaves.
    let group = unique("restore");
    let mut cfg = config(&brokers, &prefix, &group);
    let (in2, out2) = fresh_topics(&brokers, &prefix, "2").await;
    cfg.topics.input = in2.clone();
    cfg.topics.output = out2.clone();
    produce(&brokers, &in2, &phases[0]);
    let first = headroom_featurizer::start(cfg.clone(), Shutdown::new())
        .await
        .expect("start");
    wait_for(&brokers, &out2, phases[0].len()).await;
    first.stop().await.expect("stop");

    produce(&brokers, &in2, &phases[1]);
    let second = headroom_featurizer::start(cfg.clone(), Shutdown::new())
        .await
        .expect("restart");
    wait_for(&brokers, &out2, phases[0].len() + phases[1].len()).await;
    let joiner = headroom_featurizer::start(cfg.clone(), Shutdown::new())
        .await
        .expect("join");
    tokio::time::sleep(Duration::from_secs(3)).await;
    produce(&brokers, &in2, &phases[2]);
    wait_for(&brokers, &out2, total).await;
    joiner.stop().await.expect("leave");
    second.stop().await.expect("stop");
    let replayed = {
        let (b, o) = (brokers.clone(), out2.clone());
        tokio::task::spawn_blocking(move || {
            consume(
                &b,
                &o,
                total,
                Duration::from_secs(60),
                Duration::from_secs(2),
            )
        })
        .await
        .expect("consume")
    };
    let got = by_event(&replayed);
    assert_eq!(
        got.len(),
        total,
        "every event has features after restart and rebalance"
    );
    for (id, values) in &got {
        let want = reference.get(id).expect("same event ids");
        assert_eq!(
            values, want,
            "features of event {id} differ from the uninterrupted run"
        );
    }
}

/// A crash (SIGKILL: no revoke, no last commit) restores the same features: the replay floors
/// of the commits made while the service ran reach the broker, so the instance restarted in
/// its place (the same group and static member name, `kafka.instance_id`) rebuilds its windows
/// from them before it goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_featurizer_is_replayed_to_the_same_features() {
    let brokers = brokers();
    let prefix = format!("{}.", unique("fz-crash"));
    create_topics(&brokers, &prefix).await;
    let base = (now_ms() - 5 * 86_400_000) / IV * IV;
    let entities: Vec<String> = (0..16).map(|i| format!("vm-{i:02}")).collect();
    let phases = [
        fleet_steps(base, &entities, 0, 100),
        fleet_steps(base, &entities, 100, 140),
    ];
    let total: usize = phases.iter().map(Vec::len).sum();
    let reference = uninterrupted(&brokers, &prefix, &phases).await;

    let (input, output) = fresh_topics(&brokers, &prefix, "crash").await;
    produce(&brokers, &input, &phases[0]);
    let crashed = unique("crashed");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_headroom-featurizer"))
        .env_remove("HEADROOM_FEATURIZER_CONFIG")
        .env("HEADROOM_FEATURIZER__KAFKA__BROKERS", &brokers)
        .env("HEADROOM_FEATURIZER__KAFKA__GROUP_ID", &crashed)
        .env("HEADROOM_FEATURIZER__KAFKA__INSTANCE_ID", "featurizer-0")
        .env("HEADROOM_FEATURIZER__HTTP__LISTEN", "127.0.0.1:0")
        .env("HEADROOM_FEATURIZER__RUNTIME__COMMIT_INTERVAL", "200ms")
        .env("HEADROOM_FEATURIZER__TOPICS__INPUT", &input)
        .env("HEADROOM_FEATURIZER__TOPICS__OUTPUT", &output)
        .env("HEADROOM_FEATURIZER__TOPICS__DLQ", format!("{prefix}telemetry.dlq"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the featurizer binary");
    wait_for(&brokers, &output, phases[0].len()).await;
    // Killed once phase 0 is committed: a replay has to rebuild its windows from the floors.
    let committed = {
        let want = phases[0].len() as i64;
        headroom_testkit::eventually(Duration::from_secs(30), || {
            committed_sum(&brokers, &crashed, &input) == want
        })
        .await
    };
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    assert!(committed, "phase 0 committed by the featurizer before the kill");

    produce(&brokers, &input, &phases[1]);
    // tansu 0.6 never expires the killed member's session: without the static name the
    // restarted instance would wait for its partitions for ever (Kafka: session.timeout.ms).
    let mut cfg = config(&brokers, &prefix, &crashed);
    cfg.kafka.instance_id = "featurizer-0".into();
    cfg.topics.input = input.clone();
    cfg.topics.output = output.clone();
    let svc = headroom_featurizer::start(cfg, Shutdown::new())
        .await
        .expect("restart");
    wait_for(&brokers, &output, total).await;
    let replayed = metric(&svc.metrics.render(), "headroom_replayed_records_total", "");
    // Commits are confirmed, and timed, while the service runs.
    let timed = headroom_testkit::eventually(Duration::from_secs(10), || {
        metric(&svc.metrics.render(), "headroom_commit_seconds_count", "") > 0.0
    })
    .await;
    assert!(timed, "{}", svc.metrics.render());
    svc.stop().await.expect("stop");
    let got = {
        let (b, o) = (brokers.clone(), output.clone());
        tokio::task::spawn_blocking(move || {
            consume(&b, &o, total, Duration::from_secs(60), Duration::from_secs(2))
        })
        .await
        .expect("consume")
    };
    let got = by_event(&got);
    assert_eq!(got.len(), total, "every event has features after the crash");
    // 24 lags and a 24 h window: every record of phase 0 is still needed.
    assert_eq!(replayed, phases[0].len() as f64, "phase 0 replayed from its floors");
    for (id, values) in &got {
        assert_eq!(
            values,
            reference.get(id).expect("same event ids"),
            "features of event {id} differ from the uninterrupted run"
        );
    }
}

/// Telemetry of `entities` for steps `from..to` (one sample per entity and step, a few
/// missing CPU values).
fn fleet_steps(base: i64, entities: &[String], from: i64, to: i64) -> Vec<Rec> {
    let mut v = Vec::new();
    for step in from..to {
        for (i, e) in entities.iter().enumerate() {
            let wave = ((step as f64 / 12.0) + i as f64).sin() * 0.3 + 0.5;
            let mut t = telemetry(e, base + step * IV + (i as i64 * 997) % 60_000, wave);
            if (step + i as i64) % 17 == 0 {
                t.cpu_util = None;
            }
            v.push(avro(&t));
        }
    }
    v
}

/// The features of an uninterrupted run over `phases` (the prefix's own topics, a fresh
/// group): event id -> values.
async fn uninterrupted(brokers: &str, prefix: &str, phases: &[Vec<Rec>]) -> BTreeMap<String, Vec<u32>> {
    let input = format!("{prefix}telemetry.raw");
    let output = format!("{prefix}features");
    for p in phases {
        produce(brokers, &input, p);
    }
    let total: usize = phases.iter().map(Vec::len).sum();
    let svc = headroom_featurizer::start(config(brokers, prefix, &unique("ref")), Shutdown::new())
        .await
        .expect("start");
    let (b, o) = (brokers.to_owned(), output);
    let msgs = tokio::task::spawn_blocking(move || {
        consume(&b, &o, total, Duration::from_secs(120), Duration::from_secs(1))
    })
    .await
    .expect("consume");
    svc.stop().await.expect("stop");
    let reference = by_event(&msgs);
    assert_eq!(reference.len(), total);
    reference
}

/// An input and an output topic of their own (`<prefix>telemetry.raw<suffix>`,
/// `<prefix>features<suffix>`), for a run fed phase by phase.
async fn fresh_topics(brokers: &str, prefix: &str, suffix: &str) -> (String, String) {
    let input = format!("{prefix}telemetry.raw{suffix}");
    let output = format!("{prefix}features{suffix}");
    for t in [&input, &output] {
        headroom_runtime::topology::apply(
            &one_topic_topology(t),
            &headroom_testkit::kafka_config(brokers, "x"),
            "",
            Duration::from_secs(30),
        )
        .await
        .expect("topic");
    }
    (input, output)
}

/// The sum of `group`'s committed offsets of `topic`'s six partitions: the records it has
/// committed, offsets being contiguous from 0 on a fresh topic.
fn committed_sum(brokers: &str, group: &str, topic: &str) -> i64 {
    use headroom_testkit::rdkafka::consumer::Consumer;
    let mut q = rdkafka::TopicPartitionList::new();
    for p in 0..6 {
        q.add_partition(topic, p);
    }
    headroom_testkit::group_client(brokers, group)
        .committed_offsets(q, Duration::from_secs(10))
        .expect("committed offsets")
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some(o),
            _ => None,
        })
        .sum()
}

fn one_topic_topology(name: &str) -> headroom_runtime::topology::Topology {
    headroom_runtime::topology::Topology::parse(&format!(
        "[defaults]\npartitions = 6\nreplication_factor = 1\n[[topic]]\nname = \"{name}\"\ncleanup = \"delete\"\nkey = \"entity_id\"\nschema = \"features-value\"\n"
    ))
    .expect("topology")
}

async fn wait_for(brokers: &str, topic: &str, n: usize) {
    let (b, t) = (brokers.to_owned(), topic.to_owned());
    let got = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let msgs = consume(&b, &t, n, Duration::from_secs(10), Duration::from_millis(0));
            let distinct = by_event(&msgs).len();
            if distinct >= n || std::time::Instant::now() > deadline {
                return distinct;
            }
        }
    })
    .await
    .expect("wait");
    assert!(got >= n, "{topic}: {got} of {n} events after 90 s");
}

/// event id -> feature values; duplicates (at-least-once) must agree with each other.
fn by_event(msgs: &[rdkafka::message::OwnedMessage]) -> BTreeMap<String, Vec<u32>> {
    let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in msgs {
        let f = FeaturesRecord::decode(m.payload().expect("payload")).expect("decode");
        let bits: Vec<u32> = f.values.iter().map(|v| v.to_bits()).collect();
        if let Some(prev) = out.get(&f.event_id) {
            assert_eq!(
                prev, &bits,
                "a duplicate delivery of {} carries different features",
                f.event_id
            );
        }
        *seen.entry(f.event_id.clone()).or_default() += 1;
        out.insert(f.event_id, bits);
    }
    out
}
