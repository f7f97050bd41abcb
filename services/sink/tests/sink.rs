//! The sink against the real broker and a real PostgreSQL: every topic lands, exactly once,
//! through a SIGKILL, a PostgreSQL restart and a rebalance; bad records are dead-lettered with
//! their reason and then stored from the DLQ.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use headroom_runtime::Shutdown;
use headroom_schemas::{
    Catalogue, FeaturesRecord, Forecast, ForecastPoint, Metric, ModelEvent, ModelEventKind,
    Telemetry, ValidationLimits,
};
use headroom_sink::{Config, Topics};
use headroom_sources::{GenConfig, Generator};
use headroom_testkit::rdkafka::consumer::Consumer;
use headroom_testkit::rdkafka::Message;
use headroom_testkit::{brokers, consume, create_topics, header, produce, unique, Rec};
use sqlx::{Connection, Executor, PgConnection};

struct Env {
    brokers: String,
    topics: Topics,
    pg: String,
}

/// Topics under a fresh prefix, and a fresh schema (or database `base`) with the migrations.
async fn env(base_pg: &str, migrate_now: bool) -> Env {
    let brokers = brokers();
    let prefix = format!("{}.", unique("sink"));
    create_topics(&brokers, &prefix).await;
    let schema = unique("t").replace('-', "_");
    let mut c = PgConnection::connect(base_pg).await.expect("connect");
    c.execute(format!("CREATE SCHEMA {schema}").as_str()).await.expect("schema");
    let pg = headroom_testkit::pg_url_in_schema(base_pg, &schema);
    if migrate_now {
        let pool = headroom_store::pool(&pg, 1, Duration::from_secs(10)).await.expect("pool");
        headroom_store::migrate(&pool).await.expect("migrate");
        pool.close().await;
    }
    let p = |n: &str| format!("{prefix}{n}");
    Env {
        brokers,
        topics: Topics {
            telemetry: p("telemetry.raw"),
            features: p("features"),
            forecasts: p("forecasts"),
            recommendations: p("recommendations"),
            drift: p("drift.alerts"),
            models: p("models"),
            dlq: p("telemetry.dlq"),
        },
        pg,
    }
}

fn config(e: &Env, group: &str) -> Config {
    let mut c: Config = headroom_runtime::load_config(
        headroom_sink::config_defaults(),
        None,
        "HEADROOM_SINK_TEST_UNUSED__",
    )
    .expect("defaults");
    c.kafka.brokers = e.brokers.clone();
    c.kafka.group_id = group.to_owned();
    c.http.listen = "127.0.0.1:0".into();
    c.postgres.url = e.pg.clone();
    c.topics = e.topics.clone();
    c.batch.max_wait = Duration::from_millis(200);
    c.batch.max_rows = 3000;
    c.retry.initial_backoff = Duration::from_millis(100);
    c.retry.max_backoff = Duration::from_millis(800);
    // The generator samples every 5 minutes, where `auto` leaves the 1-minute rollup out; these
    // tests keep it, so that its merges go through the faults too (the archive test runs auto).
    c.rollups.minute = headroom_sink::MinuteRollup::On;
    c
}

fn fleet(entities: u32, rounds: i64) -> Vec<Telemetry> {
    let mut g = Generator::new(GenConfig {
        entities: Some(entities),
        ..GenConfig::default()
    });
    g.rounds(1_700_000_000_000, rounds)
}

fn framed(t: &Telemetry) -> Rec {
    let mut buf = Vec::new();
    t.encode_framed(&mut buf);
    Rec {
        key: Some(t.entity_id.as_bytes().to_vec()),
        payload: buf,
        ..Rec::default()
    }
}

fn avro(subject: &str, fields: Vec<(&str, Value)>) -> Vec<u8> {
    let entry = Catalogue::builtin().latest(subject).expect("subject");
    let value = Value::Record(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect());
    let datum = apache_avro::writer::datum::GenericDatumWriter::builder(&entry.schema)
        .build()
        .expect("writer")
        .write_value_to_vec(value)
        .expect("encode");
    let mut out = Vec::new();
    headroom_schemas::frame(entry.id, &mut out);
    out.extend_from_slice(&datum);
    out
}

fn union(v: Option<Value>) -> Value {
    match v {
        Some(v) => Value::Union(1, Box::new(v)),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}

fn recommendation(id: &str, ts: i64, shortfall: f64) -> Vec<u8> {
    avro(
        "recommendations-value",
        vec![
            ("recommendation_id", Value::String(id.into())),
            ("entity_id", Value::String("vm-1".into())),
            ("ts_ms", Value::TimestampMillis(ts)),
            ("service", union(Some(Value::String("web".into())))),
            ("cluster", union(None)),
            ("action", Value::Enum(1, "SCALE_OUT".into())),
            ("target_replicas", union(Some(Value::Int(4)))),
            ("target_cpu_cores", union(None)),
            ("target_mem_bytes", union(None)),
            ("from_cluster", union(None)),
            ("to_cluster", union(None)),
            ("forecast_event_id", union(None)),
            ("cost_change_per_hour", Value::Double(0.37)),
            ("shortfall_prob", Value::Double(shortfall)),
            ("confidence", Value::Double(0.8)),
            ("policy_version", Value::String("p1".into())),
            ("model_versions", Value::Map([("xgboost".to_owned(), Value::String("v1".into()))].into())),
            ("reason", Value::String("p90 above target".into())),
        ],
    )
}

fn drift_alert(ts: i64) -> Vec<u8> {
    avro(
        "drift.alerts-value",
        vec![
            ("alert_id", Value::String("a1".into())),
            ("entity_id", union(None)),
            ("ts_ms", Value::TimestampMillis(ts)),
            ("kind", Value::Enum(0, "FEATURE_DISTRIBUTION".into())),
            ("subject", Value::String("cpu_mean_1h".into())),
            ("statistic", Value::String("psi".into())),
            ("value", Value::Double(0.31)),
            ("threshold", Value::Double(0.2)),
            ("severity", Value::Enum(1, "WARNING".into())),
            ("model_version", union(Some(Value::String("v1".into())))),
            ("window_start_ms", Value::Long(ts - 3_600_000)),
            ("window_end_ms", Value::Long(ts)),
            ("state", Value::Enum(0, "OPEN".into())),
            ("scope", union(Some(Value::String("features:partitions:0".into())))),
            ("details", Value::Map([("ks_p".to_owned(), Value::Double(1e-6))].into())),
        ],
    )
}

async fn scalar_i64(pg: &str, sql: &str) -> i64 {
    let mut c = PgConnection::connect(pg).await.expect("connect");
    sqlx::query_scalar::<_, i64>(sql).fetch_one(&mut c).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Waits until `sql` returns `want` (or the timeout passes) and returns the last value.
async fn wait_for(pg: &str, sql: &str, want: i64, timeout: Duration) -> i64 {
    let deadline = Instant::now() + timeout;
    loop {
        let v = scalar_i64(pg, sql).await;
        if v == want || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The exactly-once check of the raw table: per source partition, as many rows as distinct
/// offsets, and as many as the topic holds there; the rollups count every sample once.
async fn assert_exact(pg: &str, expected: &[Telemetry]) {
    let mut c = PgConnection::connect(pg).await.expect("connect");
    let (rows, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT (src_partition, src_offset)) FROM telemetry_raw",
    )
    .fetch_one(&mut c)
    .await
    .expect("counts");
    assert_eq!(rows, expected.len() as i64, "raw rows");
    assert_eq!(distinct, rows, "duplicates in telemetry_raw");
    // Anomalies scored at write time, once each: exactly the samples the raw table's own
    // per-hour baselines find (sql/queries/raw/anomalies.sql, without its panel limit).
    let from = expected.iter().map(|t| t.ts_ms).min().unwrap_or(0);
    let to = expected.iter().map(|t| t.ts_ms).max().unwrap_or(0) + 1;
    let raw = headroom_store::queries::find("anomalies").and_then(|q| q.raw_sql).expect("raw anomalies");
    assert!(raw.contains("LIMIT 1000"), "the raw anomaly query's limit moved");
    let raw = raw.replace("LIMIT 1000", "LIMIT 100000000");
    let key = |j: &String| {
        let v: serde_json::Value = serde_json::from_str(j).expect("json");
        (v["entity_id"].as_str().expect("entity").to_owned(), v["ts"].as_str().expect("ts").to_owned())
    };
    let mut want: Vec<_> = headroom_store::queries::rows_as_json(&mut c, &raw, from, to).await.expect("raw anomalies").iter().map(key).collect();
    let mut got: Vec<_> = headroom_store::queries::rows_as_json(
        &mut c,
        "SELECT entity_id, ts FROM telemetry_anomalies WHERE ts >= $1::timestamptz AND ts < $2::timestamptz",
        from,
        to,
    )
    .await
    .expect("anomalies")
    .iter()
    .map(key)
    .collect();
    want.sort();
    got.sort();
    assert!(!want.is_empty(), "the generated fleet has anomalies");
    assert_eq!(got, want, "telemetry_anomalies against the raw table's baselines");
    for table in ["telemetry_1m", "telemetry_1h"] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT coalesce(sum(n), 0)::int8 FROM {table}"))
            .fetch_one(&mut c)
            .await
            .expect("n");
        assert_eq!(n, expected.len() as i64, "{table} counts every sample once");
        // The p95 columns: computed by the sink for new rows, by the merge for merged ones;
        // both must equal the quantile of the stored histogram.
        let off: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} WHERE cpu_p95 IS DISTINCT FROM hist_quantile(cpu_hist, 0.95) \
             OR mem_p95 IS DISTINCT FROM hist_quantile(mem_hist, 0.95)"
        ))
        .fetch_one(&mut c)
        .await
        .expect("p95");
        assert_eq!(off, 0, "{table}: rows whose p95 is not their histogram's");
    }
    // Checksums: the sum of CPU utilization and the count per entity match what was produced.
    let want_cpu: f64 = expected.iter().filter_map(|t| t.cpu_util).sum();
    let (raw_cpu, hour_cpu): (f64, f64) = sqlx::query_as(
        "SELECT (SELECT coalesce(sum(cpu_util), 0) FROM telemetry_raw), (SELECT coalesce(sum(cpu_sum), 0) FROM telemetry_1h)",
    )
    .fetch_one(&mut c)
    .await
    .expect("sums");
    assert!((raw_cpu - want_cpu).abs() < 1e-6 * want_cpu.max(1.0), "{raw_cpu} vs {want_cpu}");
    assert!((hour_cpu - want_cpu).abs() < 1e-6 * want_cpu.max(1.0), "{hour_cpu} vs {want_cpu}");
    let mut want: HashMap<&str, i64> = HashMap::new();
    for t in expected {
        *want.entry(t.entity_id.as_str()).or_default() += 1;
    }
    let got: Vec<(String, i64)> = sqlx::query_as("SELECT entity_id, sum(n)::int8 FROM telemetry_1m GROUP BY 1")
        .fetch_all(&mut c)
        .await
        .expect("per entity");
    assert_eq!(got.len(), want.len());
    for (e, n) in got {
        assert_eq!(Some(&n), want.get(e.as_str()), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_topic_lands_once_and_bad_records_are_dead_lettered() {
    let e = env(&headroom_testkit::pg_url(), false).await;
    let now = headroom_runtime::observe::now_ms();
    let limits = ValidationLimits::default();
    let mut good = fleet(12, 48);
    // One spike in the last sample of an entity: the anomaly query must find it.
    let spiked = good.iter().rposition(|t| t.entity_id == good[0].entity_id).expect("entity");
    good[spiked].cpu_util = Some(0.99);
    assert!(good.iter().all(|t| t.validate(now, &limits).is_ok()), "the generator makes valid samples");
    let mut recs: Vec<Rec> = good.iter().map(framed).collect();
    // Bad telemetry: NaN, out of range, absurd time, undecodable.
    let mut nan = good[0].clone();
    nan.cpu_util = Some(f64::NAN);
    let mut big = good[1].clone();
    big.mem_util = Some(7.0);
    let mut old = good[2].clone();
    old.ts_ms = 600_000_000_000; // 1989
    recs.extend([framed(&nan), framed(&big), framed(&old)]);
    recs.push(Rec { key: Some(b"vm-x".to_vec()), payload: b"\x07garbage".to_vec(), ..Rec::default() });
    produce(&e.brokers, &e.topics.telemetry, &recs);

    let ts = good[0].ts_ms;
    let forecast = |i: i64, p50: f64| {
        let f = Forecast {
            event_id: format!("ev{i}"),
            entity_id: format!("vm-{i}"),
            ts_ms: ts + i * 300_000,
            service: Some("web".into()),
            cluster: None,
            points: vec![
                ForecastPoint { metric: Metric::Cpu, horizon_min: 5, p50, p90: 0.6, model: "xgboost/v1".into() },
                ForecastPoint { metric: Metric::Memory, horizon_min: 30, p50: 0.4, p90: 0.5, model: "xgboost/v1".into() },
            ],
            scale_event_prob: Some(0.1),
            model_versions: vec![("xgboost".into(), "v1".into())],
            observed: Default::default(),
        };
        let mut b = Vec::new();
        f.encode_framed(&mut b);
        Rec { key: Some(f.entity_id.into_bytes()), payload: b, ..Rec::default() }
    };
    let mut frecs: Vec<Rec> = (0..10).map(|i| forecast(i, 0.5)).collect();
    frecs.push(forecast(99, f64::NAN));
    produce(&e.brokers, &e.topics.forecasts, &frecs);
    produce(&e.brokers, &e.topics.recommendations, &[
        Rec { key: Some(b"vm-1".to_vec()), payload: recommendation("r1", ts, 0.05), ..Rec::default() },
        Rec { key: Some(b"vm-1".to_vec()), payload: recommendation("r2", ts + 1, 0.02), ..Rec::default() },
        Rec { key: Some(b"vm-1".to_vec()), payload: recommendation("r3", ts + 2, 1.5), ..Rec::default() },
    ]);
    produce(&e.brokers, &e.topics.drift, &[Rec { key: None, payload: drift_alert(ts), ..Rec::default() }]);
    let features: Vec<Rec> = (0..5)
        .map(|i| {
            let f = FeaturesRecord {
                event_id: format!("f{i}"),
                entity_id: "vm-1".into(),
                ts_ms: ts + i * 300_000,
                feature_set: "v1".into(),
                values: vec![0.5; 4],
                imputed_mask: i32::from(i == 0),
                ..FeaturesRecord::default()
            };
            let mut b = Vec::new();
            f.encode_framed(&mut b);
            Rec { key: Some(b"vm-1".to_vec()), payload: b, ..Rec::default() }
        })
        .collect();
    produce(&e.brokers, &e.topics.features, &features);
    for (k, (version, kind)) in [("v1", ModelEventKind::Promoted), ("v2", ModelEventKind::Promoted)].into_iter().enumerate() {
        let ev = ModelEvent {
            event_id: format!("m{k}"),
            model_name: "xgboost".into(),
            version: version.into(),
            ts_ms: ts + k as i64,
            kind,
            artifact_uri: format!("models/{version}"),
            feature_set: "v1".into(),
            metrics: vec![("mase_cpu_5m".into(), 0.87)],
            reason: None,
        };
        let mut b = Vec::new();
        ev.encode_framed(&mut b);
        produce(&e.brokers, &e.topics.models, &[Rec { key: Some(b"xgboost".to_vec()), payload: b, ..Rec::default() }]);
    }

    let group = unique("g");
    let handle = headroom_sink::start(config(&e, &group), Shutdown::new()).await.expect("start");
    let pg = &e.pg;
    let t = Duration::from_secs(60);
    assert_eq!(wait_for(pg, "SELECT count(*) FROM telemetry_raw", good.len() as i64, t).await, good.len() as i64);
    assert_eq!(wait_for(pg, "SELECT count(*) FROM forecasts", 20, t).await, 20);
    assert_eq!(wait_for(pg, "SELECT count(*) FROM recommendations", 2, t).await, 2);
    assert_eq!(wait_for(pg, "SELECT count(*) FROM drift_alerts", 1, t).await, 1);
    assert_eq!(wait_for(pg, "SELECT coalesce(sum(n), 0)::int8 FROM features_1h", 5, t).await, 5);
    assert_eq!(scalar_i64(pg, "SELECT sum(imputed_n)::int8 FROM features_1h").await, 1);
    // The registry follows the model events: v2 serves, v1 is retired.
    assert_eq!(wait_for(pg, "SELECT count(*) FROM model_events", 2, t).await, 2);
    assert_eq!(scalar_i64(pg, "SELECT count(*) FROM model_registry WHERE version = 'v2' AND status = 'serving'").await, 1);
    assert_eq!(scalar_i64(pg, "SELECT count(*) FROM model_registry WHERE version = 'v1' AND status = 'retired'").await, 1);
    // Six bad records went to the DLQ with their reasons, and from there into dead_letters.
    let dlq = consume(&e.brokers, &e.topics.dlq, 6, Duration::from_secs(30), Duration::from_millis(500));
    let mut reasons: Vec<&str> = dlq.iter().filter_map(|m| header(m, "dlq.reason")).collect();
    reasons.sort_unstable();
    assert_eq!(
        reasons,
        ["bad_magic", "not_finite", "not_finite", "out_of_range", "out_of_range", "timestamp_past"],
        "{:?}",
        dlq.iter().map(|m| header(m, "dlq.detail")).collect::<Vec<_>>()
    );
    assert!(dlq.iter().all(|m| header(m, "dlq.service") == Some("sink") && m.key().is_some()));
    assert_eq!(wait_for(pg, "SELECT count(*) FROM dead_letters", 6, t).await, 6);
    assert_eq!(
        scalar_i64(pg, "SELECT count(*) FROM dead_letters WHERE service = 'sink' AND payload IS NOT NULL AND source_topic IS NOT NULL").await,
        6
    );
    assert_exact(pg, &good).await;
    // The rollups hold the utilization histograms, and p95 comes from them.
    let p95_ok = scalar_i64(
        pg,
        "SELECT count(*) FROM telemetry_1h WHERE cpu_p95 IS NULL OR cpu_p95 < cpu_min - 0.01 OR cpu_p95 > cpu_max + 0.01",
    )
    .await;
    assert_eq!(p95_ok, 0, "p95 lies within [min, max] of every bucket");
    // The rollups answer the dashboard's questions like the raw table does.
    let mut c = PgConnection::connect(pg).await.expect("connect");
    // Hour-aligned: the rollups answer for whole buckets.
    let from = good.iter().map(|t| t.ts_ms).min().unwrap_or(0) / 3_600_000 * 3_600_000;
    let to = (good.iter().map(|t| t.ts_ms).max().unwrap_or(0) / 3_600_000 + 1) * 3_600_000;
    for q in headroom_store::queries::QUERIES {
        let Some(raw_sql) = q.raw_sql else { continue };
        let fast = headroom_store::queries::rows_as_json(&mut c, q.sql, from, to).await.expect("rollup query");
        let slow = headroom_store::queries::rows_as_json(&mut c, raw_sql, from, to).await.expect("raw query");
        assert_eq!(fast.len(), slow.len(), "{}: {fast:?} vs {slow:?}", q.name);
        for (f, r) in fast.iter().zip(&slow) {
            let f: serde_json::Value = serde_json::from_str(f).expect("json");
            let r: serde_json::Value = serde_json::from_str(r).expect("json");
            for (k, v) in f.as_object().expect("object") {
                let (a, b) = (v.as_f64(), r[k].as_f64());
                // Percentiles: the histogram's bin middle against the raw percentile_disc.
                let tol = if k.contains("_p") { 0.0051 } else { 1e-6 };
                match (a, b) {
                    (Some(a), Some(b)) => assert!((a - b).abs() <= tol * b.abs().max(1.0), "{} {k}: rollup {a} raw {b}", q.name),
                    _ => assert_eq!(v, &r[k], "{} {k}", q.name),
                }
            }
        }
    }
    // Anomalies over the last hour, against the 24 hours before it (the three hours of data):
    // the spike is found, by the rollups as by the raw table.
    let last_hour = (to - 3_600_000, to);
    let anomalies = headroom_store::queries::QUERIES.iter().find(|q| q.name == "anomalies").expect("query");
    let fast = headroom_store::queries::rows_as_json(&mut c, anomalies.sql, last_hour.0, last_hour.1).await.expect("anomalies");
    let slow = headroom_store::queries::rows_as_json(&mut c, anomalies.raw_sql.expect("raw"), last_hour.0, last_hour.1).await.expect("raw anomalies");
    assert!(!fast.is_empty() && fast.len() == slow.len(), "rollups {fast:?} raw {slow:?}");
    let top: serde_json::Value = serde_json::from_str(&fast[0]).expect("json");
    assert_eq!(top["entity_id"], good[spiked].entity_id.as_str(), "the spike is the strongest anomaly: {fast:?}");
    let raw_top: serde_json::Value = serde_json::from_str(&slow[0]).expect("json");
    let (a, b) = (top["z"].as_f64().expect("z"), raw_top["z"].as_f64().expect("z"));
    assert!((a - b).abs() < 1e-6 * b.abs(), "z from rollups {a} vs raw {b}");
    // The migration's backfill (for samples written before the sink scored them) finds the
    // same anomalies, with the same scores, as the sink did.
    let scored = "SELECT entity_id, extract(epoch FROM ts)::float8, z FROM telemetry_anomalies ORDER BY 1, 2";
    let by_sink: Vec<(String, f64, f64)> = sqlx::query_as(scored).fetch_all(&mut c).await.expect("anomalies");
    assert!(!by_sink.is_empty());
    let migration = include_str!("../../../sql/migrations/0008_anomalies_at_write_time.sql");
    let backfill = &migration[migration.find("DO $$").expect("the backfill block")..];
    c.execute("TRUNCATE telemetry_anomalies").await.expect("truncate");
    c.execute(backfill).await.expect("backfill");
    let by_backfill: Vec<(String, f64, f64)> = sqlx::query_as(scored).fetch_all(&mut c).await.expect("anomalies");
    assert_eq!(by_backfill.len(), by_sink.len(), "backfill {by_backfill:?} sink {by_sink:?}");
    for (b, s) in by_backfill.iter().zip(&by_sink) {
        assert!(b.0 == s.0 && b.1 == s.1 && (b.2 - s.2).abs() < 1e-9 * s.2.abs(), "backfill {b:?} sink {s:?}");
    }
    // The stored offsets are the topics' ends: everything consumed was stored.
    let stored = scalar_i64(pg, &format!("SELECT sum(next_offset)::int8 FROM sink_offsets WHERE topic = '{}'", e.topics.telemetry)).await;
    assert_eq!(stored, recs.len() as i64);
    // The same offsets are mirrored to the consumer group, for lag tools (KEDA, kafka-consumer-
    // groups), and the lag gauge reads them: every partition of the topic at lag 0.
    let client = headroom_testkit::group_client(&e.brokers, &group);
    let committed = |topic: &str| -> i64 {
        let meta = client.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        let mut tpl = headroom_testkit::rdkafka::TopicPartitionList::new();
        for p in meta.topics().iter().flat_map(|t| t.partitions()) {
            tpl.add_partition(topic, p.id());
        }
        let got = client.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
        got.elements().iter().map(|el| el.offset().to_raw().filter(|o| *o >= 0).unwrap_or(0)).sum()
    };
    let mirrored = headroom_testkit::eventually(Duration::from_secs(30), || committed(&e.topics.telemetry) == stored).await;
    assert!(mirrored, "the group's committed offsets ({}) match the stored ones ({stored})", committed(&e.topics.telemetry));
    let lag_lines = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("headroom_consumer_lag_records{") && l.contains(&format!("topic=\"{}\"", e.topics.telemetry)))
            .map(str::to_owned)
            .collect()
    };
    let lag_zero = headroom_testkit::eventually(Duration::from_secs(30), || {
        let lines = lag_lines(&handle.metrics.render());
        !lines.is_empty() && lines.iter().all(|l| l.ends_with(" 0"))
    })
    .await;
    assert!(lag_zero, "the sink exports its lag per partition: {:?}", lag_lines(&handle.metrics.render()));
    let metrics = handle.metrics.render();
    assert!(metrics.contains("headroom_sink_postgres_up{service=\"sink\"} 1"), "{metrics}");
    // The writer keeps the baselines of the entities it scored (12 in this fleet).
    let kept: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("headroom_sink_anomaly_baseline_entities{service=\"sink\"} "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the baseline gauge");
    assert!((1..=12).contains(&kept), "{kept} entities kept");
    headroom_testkit::ops::check_exposition("sink", &metrics);
    handle.stop().await.expect("stop");
}

/// Runs the binary in consumer group `group`, storing its positions under `offsets`.
fn spawn_sink(e: &Env, group: &str, offsets: &str) -> Child {
    let t = &e.topics;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_headroom-sink"));
    if let Ok(extra) = std::env::var("SINK_TEST_PROP") {
        let (k, v) = extra.split_once('=').expect("k=v");
        let file = std::env::temp_dir().join(format!("{}.toml", unique("sink-config")));
        std::fs::write(&file, format!("[kafka.properties]\n\"{k}\" = \"{v}\"\n")).expect("config file");
        cmd.arg("--config").arg(file);
    }
    cmd
        .env("HEADROOM_SINK__KAFKA__BROKERS", &e.brokers)
        .env("HEADROOM_SINK__KAFKA__GROUP_ID", group)
        .env("HEADROOM_SINK__HTTP__LISTEN", "127.0.0.1:0")
        .env("HEADROOM_SINK__POSTGRES__URL", &e.pg)
        .env("HEADROOM_SINK__ROLLUPS__MINUTE", "on")
        .env("HEADROOM_SINK__POSTGRES__OFFSETS_GROUP", offsets)
        .env("HEADROOM_SINK__BATCH__MAX_ROWS", "2000")
        .env("HEADROOM_SINK__BATCH__MAX_WAIT", "100ms")
        .env("HEADROOM_SINK__TOPICS__TELEMETRY", &t.telemetry)
        .env("HEADROOM_SINK__TOPICS__FEATURES", &t.features)
        .env("HEADROOM_SINK__TOPICS__FORECASTS", &t.forecasts)
        .env("HEADROOM_SINK__TOPICS__RECOMMENDATIONS", &t.recommendations)
        .env("HEADROOM_SINK__TOPICS__DRIFT", &t.drift)
        .env("HEADROOM_SINK__TOPICS__MODELS", &t.models)
        .env("HEADROOM_SINK__TOPICS__DLQ", &t.dlq)
        .env("HEADROOM_SINK__LOG__LEVEL", std::env::var("SINK_TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn headroom-sink")
}

/// Produces `records` in `chunks` with a pause between them, from a thread, one record per
/// batch (see `produce_unbatched` for the broker bug this avoids).
fn produce_slowly(brokers: String, topic: String, records: Vec<Rec>, chunks: usize, pause: Duration) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let size = records.len().div_ceil(chunks);
        for c in records.chunks(size) {
            headroom_testkit::produce_unbatched(&brokers, &topic, c);
            std::thread::sleep(pause);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_then_restart_loses_and_duplicates_nothing() {
    let e = env(&headroom_testkit::pg_url(), true).await;
    let good = fleet(100, 400); // 40,000 samples
    let recs: Vec<Rec> = good.iter().map(framed).collect();
    let producer = produce_slowly(e.brokers.clone(), e.topics.telemetry.clone(), recs, 8, Duration::from_millis(300));
    // The restart joins a new consumer group, resuming from the same stored positions: tansu 0.6
    // never expires the session of a killed member, so a restart in the same group would wait
    // for it forever (Kafka and Redpanda evict it after session.timeout.ms). The positions are
    // PostgreSQL's, keyed by `postgres.offsets_group`, so the resume path is the same.
    let offsets = unique("sink");
    let mut sink = spawn_sink(&e, &unique("g"), &offsets);
    // Kill it once part of the stream has landed, while it is consuming.
    let landed = wait_for(&e.pg, "SELECT least(count(*), 8000) FROM telemetry_raw", 8000, Duration::from_secs(240)).await;
    assert_eq!(landed, 8000, "the sink made progress before the kill");
    sink.kill().expect("SIGKILL");
    sink.wait().expect("reaped");
    let at_kill = scalar_i64(&e.pg, "SELECT count(*) FROM telemetry_raw").await;
    {
        let mut c = PgConnection::connect(&e.pg).await.expect("connect");
        let o: Vec<(String, i32, i64)> = sqlx::query_as("SELECT topic, partition, next_offset FROM sink_offsets ORDER BY 1, 2")
            .fetch_all(&mut c).await.expect("offsets");
        let r: Vec<(i32, i64, i64)> = sqlx::query_as("SELECT src_partition, count(*), max(src_offset) FROM telemetry_raw GROUP BY 1 ORDER BY 1")
            .fetch_all(&mut c).await.expect("rows");
        eprintln!("at kill: {at_kill} rows; offsets {o:?}; rows {r:?}");
    }
    producer.join().expect("producer");
    let mut sink = spawn_sink(&e, &unique("g"), &offsets);
    let n = wait_for(&e.pg, "SELECT count(*) FROM telemetry_raw", good.len() as i64, Duration::from_secs(120)).await;
    sink.kill().expect("stop");
    sink.wait().expect("reaped");
    assert!(at_kill < good.len() as i64, "killed mid-stream ({at_kill} of {})", good.len());
    assert_eq!(n, good.len() as i64);
    assert_exact(&e.pg, &good).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_run_pauses_then_resumes_without_loss() {
    let server = headroom_testkit::ScratchPg::start();
    let e = env(&server.url(), true).await;
    let good = fleet(50, 400); // 20,000 samples
    let recs: Vec<Rec> = good.iter().map(framed).collect();
    let producer = produce_slowly(e.brokers.clone(), e.topics.telemetry.clone(), recs, 10, Duration::from_millis(300));
    let handle = headroom_sink::start(config(&e, &unique("g")), Shutdown::new()).await.expect("start");
    assert_eq!(
        wait_for(&e.pg, "SELECT least(count(*), 3000) FROM telemetry_raw", 3000, Duration::from_secs(60)).await,
        3000
    );
    // Down for a few seconds (the sink must see it), then back.
    server.stop();
    let saw_outage = headroom_testkit::eventually(Duration::from_secs(20), || {
        handle.metrics.render().contains("headroom_sink_postgres_up{service=\"sink\"} 0")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.start_again();
    producer.join().expect("producer");
    let n = wait_for(&e.pg, "SELECT count(*) FROM telemetry_raw", good.len() as i64, Duration::from_secs(90)).await;
    let metrics = handle.metrics.render();
    handle.stop().await.expect("stop");
    assert!(saw_outage, "postgres_up went to 0 during the outage");
    assert!(metrics.contains("headroom_sink_postgres_errors_total{kind=\"unavailable\",service=\"sink\"}"), "{metrics}");
    assert!(metrics.contains("headroom_sink_postgres_up{service=\"sink\"} 1"));
    assert_eq!(n, good.len() as i64);
    assert_exact(&e.pg, &good).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_joining_and_leaving_changes_nothing() {
    let e = env(&headroom_testkit::pg_url(), true).await;
    let good = fleet(60, 400); // 24,000 samples
    let recs: Vec<Rec> = good.iter().map(framed).collect();
    let producer = produce_slowly(e.brokers.clone(), e.topics.telemetry.clone(), recs, 12, Duration::from_millis(400));
    let group = unique("g");
    let a = headroom_sink::start(config(&e, &group), Shutdown::new()).await.expect("a");
    wait_for(&e.pg, "SELECT least(count(*), 2000) FROM telemetry_raw", 2000, Duration::from_secs(60)).await;
    let b = headroom_sink::start(config(&e, &group), Shutdown::new()).await.expect("b");
    let both = headroom_testkit::eventually(Duration::from_secs(30), || {
        let assigned = |h: &headroom_runtime::service::ServiceHandle| h.metrics.assigned_partitions.get();
        assigned(&a) > 0 && assigned(&b) > 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.stop().await.expect("b leaves");
    producer.join().expect("producer");
    let n = wait_for(&e.pg, "SELECT count(*) FROM telemetry_raw", good.len() as i64, Duration::from_secs(90)).await;
    a.stop().await.expect("a");
    assert!(both, "the group split the partitions between the two instances");
    assert_eq!(n, good.len() as i64);
    assert_exact(&e.pg, &good).await;
}

/// The sum of a counter's series for `topic` in a metrics text (0 when it has none).
fn counter_for_topic(metrics: &str, name: &str, topic: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&format!("topic=\"{topic}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_past_the_end_of_a_reset_topic_start_it_again_and_valid_ones_are_kept() {
    let e = env(&headroom_testkit::pg_url(), true).await;
    let offsets = unique("sink");
    // Positions an earlier incarnation of the topic left in PostgreSQL (a broker whose data was
    // reset, a topic created again): far past the end of the new log, which starts at 0.
    {
        let mut c = PgConnection::connect(&e.pg).await.expect("connect");
        for p in 0..6 {
            sqlx::query("INSERT INTO sink_offsets (consumer_group, topic, partition, next_offset) VALUES ($1, $2, $3, $4)")
                .bind(&offsets)
                .bind(&e.topics.telemetry)
                .bind(p)
                .bind(50_000_i64 + i64::from(p))
                .execute(&mut c)
                .await
                .expect("stale position");
        }
    }
    let all = fleet(20, 100); // 2,000 samples, in time order
    let (first, second) = all.split_at(1_000);
    produce(&e.brokers, &e.topics.telemetry, &first.iter().map(framed).collect::<Vec<_>>());
    let start = |offsets: &str| {
        let mut c = config(&e, &unique("g"));
        c.postgres.offsets_group = offsets.to_owned();
        headroom_sink::start(c, Shutdown::new())
    };
    let a = start(&offsets).await.expect("start");
    let n = wait_for(&e.pg, "SELECT count(*) FROM telemetry_raw", first.len() as i64, Duration::from_secs(90)).await;
    let metrics = a.metrics.render();
    a.stop().await.expect("stop");
    // Before: every record below the stale positions was taken for one already stored (none
    // landed while the new log was shorter; the first 50,000 would have been skipped after).
    assert_eq!(n, first.len() as i64, "every record of the new log landed");
    assert_eq!(counter_for_topic(&metrics, "headroom_sink_offset_resets_total", &e.topics.telemetry), 6.0, "the six stale positions were forgotten");
    assert_exact(&e.pg, first).await;
    let stored = scalar_i64(&e.pg, &format!("SELECT sum(next_offset)::int8 FROM sink_offsets WHERE topic = '{}'", e.topics.telemetry)).await;
    assert_eq!(stored, first.len() as i64, "the positions are the new log's");

    // A restart resumes from the stored positions, which are valid: on tansu they can be past
    // the high watermark it reports (it lags a partition's last batch), and are kept then too.
    produce(&e.brokers, &e.topics.telemetry, &second.iter().map(framed).collect::<Vec<_>>());
    let b = start(&offsets).await.expect("restart");
    let n = wait_for(&e.pg, "SELECT count(*) FROM telemetry_raw", all.len() as i64, Duration::from_secs(90)).await;
    let metrics = b.metrics.render();
    b.stop().await.expect("stop");
    assert_eq!(counter_for_topic(&metrics, "headroom_sink_offset_resets_total", &e.topics.telemetry), 0.0, "valid positions kept");
    assert_eq!(n, all.len() as i64);
    assert_exact(&e.pg, &all).await;
}

#[test]
fn a_position_at_the_end_of_a_log_is_held_and_one_past_it_is_lost() {
    use headroom_testkit::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let brokers = brokers();
    let prefix = format!("{}.", unique("positions"));
    tokio::runtime::Runtime::new().expect("runtime").block_on(create_topics(&brokers, &prefix));
    let topic = format!("{prefix}telemetry.raw");
    // Partition 0: 500 records in a few batches, then nothing more.
    let producer: BaseProducer = headroom_testkit::rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let recs: Vec<Rec> = fleet(5, 100).iter().map(framed).collect();
    for r in &recs {
        producer.send(BaseRecord::<(), _>::to(&topic).partition(0).payload(&r.payload)).expect("send");
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    let end = recs.len() as i64;
    let mut cc = headroom_testkit::rdkafka::ClientConfig::new();
    cc.set("bootstrap.servers", &brokers);
    let check = |s: i64| {
        let stored = HashMap::from([((topic.clone(), 0), s)]);
        headroom_sink::positions::lost_positions(&cc, &stored, headroom_sink::positions::PROBE_TIMEOUT).expect("check")
    };
    // The end itself and inside the log: held (tansu may report a watermark below the end; the
    // record before the position is read then).
    assert_eq!(check(end), vec![]);
    assert_eq!(check(1), vec![]);
    let lost = check(end + 1_000);
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!((lost[0].stored, lost[0].partition), (end + 1_000, 0));
    assert!(lost[0].high <= end, "{lost:?}");
}

/// Per hour, the rows the archive must hold: (count, sum of CPU).
fn per_hour(rows: &[(i64, Option<f64>)]) -> std::collections::BTreeMap<i64, (usize, f64)> {
    let mut m = std::collections::BTreeMap::new();
    for (ts, cpu) in rows {
        let e: &mut (usize, f64) = m.entry(ts.div_euclid(3_600_000) * 3_600_000).or_default();
        e.0 += 1;
        e.1 += cpu.unwrap_or(0.0);
    }
    m
}

fn read_hour(root: &std::path::Path, hour: i64) -> (usize, f64, usize) {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int32Type, Int64Type};
    let path = headroom_archive::hour_path(root, hour).expect("path");
    let batches = headroom_archive::read_file(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    let mut offsets = std::collections::HashSet::new();
    let (mut n, mut cpu) = (0, 0.0);
    for b in &batches {
        n += b.num_rows();
        cpu += b.column(4).as_primitive::<Float64Type>().iter().flatten().sum::<f64>();
        let parts = b.column(16).as_primitive::<Int32Type>();
        offsets.extend(parts.iter().flatten().zip(b.column(17).as_primitive::<Int64Type>().iter().flatten()));
    }
    (n, cpu, offsets.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_hours_are_archived_once_as_parquet_and_late_rows_recut_their_hour() {
    let e = env(&headroom_testkit::pg_url(), false).await;
    let root = std::env::temp_dir().join(unique("archive"));
    let mut cfg = config(&e, &unique("g"));
    cfg.rollups.minute = headroom_sink::MinuteRollup::Auto;
    cfg.archive.root = root.display().to_string();
    cfg.archive.grace = Duration::from_secs(600);
    cfg.maintenance.interval = Duration::from_secs(1);
    // Five hours of 8 entities every 5 minutes.
    let good = fleet(8, 60);
    produce(&e.brokers, &e.topics.telemetry, &good.iter().map(framed).collect::<Vec<_>>());
    let handle = headroom_sink::start(cfg, Shutdown::new()).await.expect("start");

    let clock = good.iter().map(|t| t.ts_ms).max().expect("rows");
    let hours = per_hour(&good.iter().map(|t| (t.ts_ms, t.cpu_util)).collect::<Vec<_>>());
    let closed: Vec<i64> = hours.keys().copied().filter(|h| h + 3_600_000 + 600_000 <= clock).collect();
    assert!(closed.len() >= 3, "the data closes several hours: {closed:?}");
    // Partitions are consumed unevenly, so an hour can be cut before a lagging partition's rows
    // of it arrive; those make it be cut again. Wait until every closed sample is archived.
    let want_rows: usize = closed.iter().map(|h| hours[h].0).sum();
    let n = wait_for(&e.pg, "SELECT coalesce(sum(rows), 0)::int8 FROM archive_hours", want_rows as i64, Duration::from_secs(120)).await;
    assert_eq!(n, want_rows as i64, "archived samples");
    let recorded: Vec<i64> = {
        let mut c = PgConnection::connect(&e.pg).await.expect("connect");
        sqlx::query_scalar("SELECT (extract(epoch FROM hour) * 1000)::int8 FROM archive_hours ORDER BY 1")
            .fetch_all(&mut c)
            .await
            .expect("hours")
    };
    assert_eq!(recorded, closed, "exactly the closed hours, the open one is not cut");
    for h in &closed {
        let (n, cpu, distinct) = read_hour(&root, *h);
        let (want_n, want_cpu) = hours[h];
        assert_eq!((n, distinct), (want_n, want_n), "hour {h}: rows and distinct offsets");
        assert!((cpu - want_cpu).abs() < 1e-9 * want_cpu.max(1.0), "hour {h}: cpu {cpu} vs {want_cpu}");
    }
    // Samples every 5 minutes: `auto` keeps no 1-minute rollup, the hourly one has them all.
    assert_eq!(scalar_i64(&e.pg, "SELECT count(*) FROM telemetry_1m").await, 0, "minute rollup under auto");
    assert_eq!(scalar_i64(&e.pg, "SELECT coalesce(sum(n), 0)::int8 FROM telemetry_1h").await, good.len() as i64);
    let open = *hours.keys().last().expect("hours");
    assert!(!headroom_archive::hour_path(&root, open).expect("path").exists(), "the open hour has no file");

    // A late sample for the first archived hour, and samples that close the next hour: the
    // first hour is cut again with the late row, the next one for the first time.
    let first = closed[0];
    let mut late = good[0].clone();
    late.entity_id = "vm-late".into();
    late.ts_ms = first + 60_000;
    late.cpu_util = Some(0.5);
    let mut later: Vec<Telemetry> = fleet(8, 80).into_iter().filter(|t| t.ts_ms > clock).collect();
    later.insert(0, late);
    produce(&e.brokers, &e.topics.telemetry, &later.iter().map(framed).collect::<Vec<_>>());
    let deadline = Instant::now() + Duration::from_secs(90);
    let want_first = hours[&first].0 + 1;
    while read_hour(&root, first).0 != want_first || !headroom_archive::hour_path(&root, open).expect("path").exists() {
        assert!(Instant::now() < deadline, "the late row was not archived: hour {first} has {} rows", read_hour(&root, first).0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (n, cpu, distinct) = read_hour(&root, first);
    assert_eq!((n, distinct), (want_first, want_first));
    assert!((cpu - hours[&first].1 - 0.5).abs() < 1e-9 * cpu.max(1.0), "the late row's CPU is in the re-cut file");
    let all: Vec<(i64, Option<f64>)> = good.iter().chain(&later).map(|t| (t.ts_ms, t.cpu_util)).collect();
    assert_eq!(read_hour(&root, open).0, per_hour(&all)[&open].0, "the next hour, once closed, holds all its rows");
    let leftovers: Vec<String> = walk(&root).into_iter().filter(|p| !p.ends_with(".parquet")).collect();
    assert!(leftovers.is_empty(), "no temporary files left: {leftovers:?}");
    handle.stop().await.expect("stop");
    let _ = std::fs::remove_dir_all(&root);
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}
