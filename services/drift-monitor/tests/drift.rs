//! The drift monitor against the real broker: a feature whose distribution shifts raises one
//! debounced episode (OPEN, UPDATE, RESOLVED); an entity whose actuals leave its forecasts
//! raises a model-error alert and a stable one none; a promoted version announced on the
//! models topic is picked up without a restart; bad records are dead-lettered.

use std::path::Path;
use std::time::Duration;

use headroom_drift_monitor::Config;
use headroom_runtime::Shutdown;
use headroom_schemas::{AlertState, DriftAlert, DriftKind, FeaturesRecord, Forecast, ForecastPoint, Metric, ModelEvent, ModelEventKind, Observed};
use headroom_testkit::rdkafka::Message;
use headroom_testkit::{brokers, consume, create_topics, eventually, header, produce, unique, Rec, StopOnDrop};

const MIN: i64 = 60_000;
const STEP: i64 = 5 * MIN;

fn write_version(root: &Path, version: &str, cpu_mae: f64) {
    let dir = root.join(version);
    std::fs::create_dir_all(&dir).unwrap();
    let edges: Vec<f32> = (1..10).map(|k| k as f32 / 10.0).collect();
    let manifest = serde_json::json!({
        "version": version, "family": "xgboost", "feature_schema": "fs-test",
        "feature_names": ["cpu_now", "mem_now"], "interval_ms": STEP, "training_rows": 50_000,
        "reference": [
            {"feature": "cpu_now", "edges": edges, "shares": vec![0.1; 10], "missing_share": 0.0},
            {"feature": "mem_now", "edges": edges, "shares": vec![0.1; 10], "missing_share": 0.0}
        ],
        "metrics": {"rows": [{"model": "xgboost", "target": "cpu", "horizon_slots": 3, "mae": cpu_mae}]}
    });
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
}

fn config(brokers: &str, prefix: &str, models: &Path) -> Config {
    let mut c: Config = headroom_runtime::load_config(headroom_drift_monitor::config_defaults(), None, "HEADROOM_DRIFT_ITEST_UNUSED__").unwrap();
    c.kafka.brokers = brokers.to_owned();
    c.kafka.group_id = unique("drift");
    c.http.listen = "127.0.0.1:0".into();
    c.runtime.commit_interval = Duration::from_millis(200);
    c.topics.features = format!("{prefix}features");
    c.topics.forecasts = format!("{prefix}forecasts");
    c.topics.output = format!("{prefix}drift.alerts");
    c.topics.models = format!("{prefix}models");
    c.topics.dlq = format!("{prefix}telemetry.dlq");
    c.topics.state = format!("{prefix}drift.state");
    c.topics.windows = format!("{prefix}drift.windows");
    c.models.dir = models.to_owned();
    c.features.min_samples = 50;
    c.model_error.warmup = 12;
    c.model_error.ewma_half_life = 6.0;
    c.model_error.baseline = 24;
    c.features.idle_partition_grace = Duration::from_secs(2);
    c
}

fn features(entity: usize, slot: i64, t0: i64, cpu: f32, mem: f32) -> Rec {
    let f = FeaturesRecord {
        event_id: format!("f-{entity}-{slot}"),
        entity_id: format!("vm-{entity}"),
        ts_ms: t0 + slot * STEP,
        feature_set: "fs-test".into(),
        values: vec![cpu, mem],
        ..FeaturesRecord::default()
    };
    let mut payload = Vec::new();
    f.encode_framed(&mut payload);
    Rec { key: Some(f.entity_id.into_bytes()), payload, headers: vec![] }
}

fn forecast(entity: &str, step: i64, t0: i64, version: &str, p50: f64, actual: f64) -> Forecast {
    Forecast {
        event_id: format!("{entity}-{step}"),
        entity_id: entity.into(),
        ts_ms: t0 + step * STEP,
        points: vec![ForecastPoint { metric: Metric::Cpu, horizon_min: 15, p50, p90: p50 + 0.1, model: format!("xgboost/{version}") }],
        model_versions: vec![("xgboost".into(), version.into())],
        observed: Observed { cpu_util: Some(actual), ..Observed::default() },
        ..Forecast::default()
    }
}

fn rec(f: &Forecast) -> Rec {
    let mut payload = Vec::new();
    f.encode_framed(&mut payload);
    Rec { key: Some(f.entity_id.clone().into_bytes()), payload, headers: vec![] }
}

fn counter(h: &headroom_runtime::service::ServiceHandle, family: &str, label: &str) -> f64 {
    let prefix = format!("headroom_{family}{{");
    h.metrics
        .render()
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Forecasts of two entities, a step of 5 minutes each, from `t0` on: "shifted" leaves its
/// forecasts by 0.4 from step 60 to step 99, then meets them again; "stable" never does.
/// Each call gives the records of the steps asked for (the noise goes on from call to call).
fn shifted_entity() -> (impl FnMut(std::ops::Range<i64>) -> Vec<Rec>, i64) {
    let t0 = 1_700_000_000_000 / (60 * MIN) * (60 * MIN);
    let mut noise = 7u64;
    let mut next = move || {
        noise = noise.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((noise >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    };
    let steps = move |range: std::ops::Range<i64>| -> Vec<Rec> {
        let mut v = Vec::new();
        for step in range {
            for e in ["stable", "shifted"] {
                let jump = if e == "shifted" && (60..100).contains(&step) { 0.4 } else { 0.0 };
                v.push(rec(&forecast(e, step, t0, "v1", 0.5, 0.5 + 0.05 * next() + jump)));
            }
        }
        v
    };
    (steps, t0)
}

/// A monitor on topics of its own (`name` prefixes them, all created), version v1 serving
/// (validation MAE 0.05) from a models directory of its own. Returns the brokers, the
/// configuration and the models directory.
async fn own_monitor(name: &str) -> (String, Config, std::path::PathBuf) {
    headroom_testkit::init_test_logging();
    let brokers = brokers();
    let prefix = format!("{}.", unique(name));
    create_topics(&brokers, &prefix).await;
    let models = std::env::temp_dir().join(unique("drift-models"));
    write_version(&models, "v1", 0.05);
    std::fs::write(models.join("registry.json"), br#"{"serving":{"xgboost":"v1"}}"#).unwrap();
    let cfg = config(&brokers, &prefix, &models);
    (brokers, cfg, models)
}

/// Waits up to a minute for a model-error alert in `state` on `topic`; `alerts` ends with those
/// read last.
async fn model_error_seen(brokers: &str, topic: &str, state: AlertState, alerts: &mut Vec<DriftAlert>) -> bool {
    eventually(Duration::from_secs(60), || {
        *alerts = model_errors(brokers, topic);
        alerts.iter().any(|a| a.state == state)
    })
    .await
}

/// The model-error alerts on `topic` so far.
fn model_errors(brokers: &str, topic: &str) -> Vec<DriftAlert> {
    consume(brokers, topic, 1, Duration::from_secs(5), Duration::from_millis(300))
        .iter()
        .map(|m| DriftAlert::decode(m.payload().unwrap()).unwrap())
        .filter(|a| a.kind == DriftKind::ModelError)
        .collect()
}

/// Steps 90 to 149 of `shifted_entity`'s stream (its actuals back on its forecasts), after a
/// restart or a rebalance: the episode opened before it resolves after it, the test's one
/// episode and of the shifted entity only, under its id, after the actuals came back, its error
/// count running on from before (the test's warm-up plus baseline is 36 errors: detectors
/// warmed up again, or missing the errors before, would count fewer than 90). Returns the
/// alerts.
async fn episode_resolves_across(brokers: &str, cfg: &Config, steps: &mut impl FnMut(std::ops::Range<i64>) -> Vec<Rec>, t0: i64) -> Vec<DriftAlert> {
    produce(brokers, &cfg.topics.forecasts, &steps(90..150));
    let mut alerts = Vec::new();
    let resolved = model_error_seen(brokers, &cfg.topics.output, AlertState::Resolved, &mut alerts).await;
    assert!(resolved, "the episode opened before resolves after: {alerts:#?}");
    assert!(alerts.iter().all(|a| a.entity_id.as_deref() == Some("shifted")), "{alerts:#?}");
    assert_eq!(alerts.iter().filter(|a| a.state == AlertState::Open).count(), 1, "{alerts:#?}");
    assert!(alerts.iter().all(|a| a.alert_id == alerts[0].alert_id), "one episode: {alerts:#?}");
    let resolved = alerts.iter().find(|a| a.state == AlertState::Resolved).unwrap();
    assert!(resolved.ts_ms >= t0 + 100 * STEP, "resolved after the actuals came back: {resolved:?}");
    assert!(resolved.detail("n").unwrap() > 90.0, "the error count runs on: {resolved:?}");
    alerts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_on_shifted_features_and_errors_follows_promotions_and_dead_letters() {
    let (brokers, cfg, models) = own_monitor("drift").await;
    write_version(&models, "v2", 0.05);
    let t0 = 1_700_000_000_000 / (60 * MIN) * (60 * MIN);

    // Features: 8 entities x 12 vectors an hour. Hours 0-2 on the reference distribution
    // (uniform), 3-4 all above 0.7, 5-7 uniform again.
    let mut feats = Vec::new();
    for slot in 0..8 * 12 {
        let hour = slot / 12;
        for e in 0..8 {
            let u = (((slot * 8 + e as i64) * 7919) % 96) as f32 / 96.0;
            let cpu = if (3..5).contains(&hour) { 0.7 + 0.3 * u } else { u };
            feats.push(features(e, slot, t0, cpu, u));
        }
    }
    // Forecasts: "stable" keeps meeting its forecasts, "shifted" jumps 0.4 above them at step 60.
    let mut noise = 1u64;
    let mut next = move || {
        noise = noise.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((noise >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    };
    let mut fcs = Vec::new();
    for step in 0..120 {
        for e in ["stable", "shifted"] {
            let actual = 0.5 + 0.05 * next() + if e == "shifted" && step >= 60 { 0.4 } else { 0.0 };
            fcs.push(rec(&forecast(e, step, t0, "v1", 0.5, actual)));
        }
    }
    let mut bad = rec(&forecast("stable", 200, t0, "v1", 0.5, 0.5));
    bad.key = Some(b"someone-else".to_vec());
    fcs.push(bad);
    fcs.push(Rec { key: Some(b"stable".to_vec()), payload: vec![0xde, 0xad, 0xbe, 0xef, 9], headers: vec![] });
    produce(&brokers, &cfg.topics.features, &feats);
    produce(&brokers, &cfg.topics.forecasts, &fcs);

    let h = headroom_drift_monitor::start(cfg.clone(), Shutdown::new()).await.unwrap();
    let _guard = StopOnDrop(h.shutdown.clone());
    let wanted = |alerts: &[DriftAlert]| {
        alerts.iter().any(|a| a.kind == DriftKind::ModelError && a.state == AlertState::Open)
            && alerts.iter().any(|a| a.kind == DriftKind::FeatureDistribution && a.state == AlertState::Resolved && a.subject == "cpu_now")
    };
    // Partitions without entities hold the windows for the grace; a later record closes them.
    tokio::time::sleep(Duration::from_secs(4)).await;
    produce(&brokers, &cfg.topics.features, &[features(0, 8 * 12, t0, 0.5, 0.5)]);
    let mut alerts = Vec::new();
    let ok = eventually(Duration::from_secs(90), || {
        alerts = consume(&brokers, &cfg.topics.output, 1, Duration::from_secs(5), Duration::from_millis(300))
            .iter()
            .map(|m| {
                let a = DriftAlert::decode(m.payload().unwrap()).unwrap();
                let key = a.entity_id.clone().or(a.scope.clone()).unwrap();
                assert_eq!(m.key(), Some(key.as_bytes()), "keyed by entity or scope");
                a
            })
            .collect();
        wanted(&alerts)
    })
    .await;
    assert!(ok, "alerts so far: {alerts:#?}");

    // Feature distribution: one episode on cpu_now, none on the unchanged mem_now.
    let cpu: Vec<&DriftAlert> = alerts.iter().filter(|a| a.kind == DriftKind::FeatureDistribution).collect();
    assert!(cpu.iter().all(|a| a.subject == "cpu_now"), "{cpu:#?}");
    let states: Vec<AlertState> = cpu.iter().map(|a| a.state).collect();
    assert_eq!(states, vec![AlertState::Open, AlertState::Update, AlertState::Resolved]);
    assert!(cpu.iter().all(|a| a.alert_id == cpu[0].alert_id));
    assert_eq!(cpu[0].window_start_ms, t0 + 3 * 60 * MIN);
    assert!(cpu[0].value >= 0.25 && cpu[0].detail("ks_p").unwrap() < 0.001, "{:?}", cpu[0]);
    assert_eq!(cpu[0].model_version.as_deref(), Some("v1"));

    // Model error: the shifted entity only, one episode, soon after the shift.
    let errs: Vec<&DriftAlert> = alerts.iter().filter(|a| a.kind == DriftKind::ModelError).collect();
    assert!(errs.iter().all(|a| a.entity_id.as_deref() == Some("shifted")), "{errs:#?}");
    let open: Vec<&&DriftAlert> = errs.iter().filter(|a| a.state == AlertState::Open).collect();
    assert_eq!(open.len(), 1);
    let delay = (open[0].ts_ms - (t0 + 63 * STEP)) / STEP;
    assert!((0..12).contains(&delay), "detected {delay} steps after the first shifted error");
    assert_eq!(open[0].subject, "cpu@15m");
    // The reference: the validation MAE (0.05), larger than the entity's baseline (~0.025).
    assert_eq!(open[0].detail("reference_mae"), Some(0.05));

    // Bad input went to the DLQ with its reason.
    let dlq = consume(&brokers, &cfg.topics.dlq, 2, Duration::from_secs(30), Duration::from_millis(300));
    let reasons: Vec<&str> = dlq.iter().filter_map(|m| header(m, "dlq.reason")).collect();
    assert!(reasons.contains(&"key_mismatch") && reasons.contains(&"bad_magic"), "{reasons:?}");

    // A promotion announced on the models topic: the monitor loads v2's references, and the
    // shifted entity's first v2 forecast ends the v1 episode as superseded.
    let ev = ModelEvent {
        event_id: "e1".into(),
        model_name: "xgboost".into(),
        version: "v2".into(),
        ts_ms: t0,
        kind: ModelEventKind::Promoted,
        artifact_uri: "v2".into(),
        feature_set: "fs-test".into(),
        metrics: vec![],
        reason: None,
    };
    let mut payload = Vec::new();
    ev.encode_framed(&mut payload);
    produce(&brokers, &cfg.topics.models, &[Rec { key: Some(b"xgboost".to_vec()), payload, headers: vec![] }]);
    assert!(eventually(Duration::from_secs(30), || counter(&h, "drift_reference_loads_total", "promoted") >= 1.0).await);
    produce(&brokers, &cfg.topics.forecasts, &[rec(&forecast("shifted", 130, t0, "v2", 0.8, 0.8))]);
    let ok = eventually(Duration::from_secs(30), || {
        consume(&brokers, &cfg.topics.output, 1, Duration::from_secs(3), Duration::from_millis(200))
            .iter()
            .map(|m| DriftAlert::decode(m.payload().unwrap()).unwrap())
            .any(|a| a.state == AlertState::Resolved && a.detail("superseded") == Some(1.0) && a.alert_id == open[0].alert_id)
    })
    .await;
    assert!(ok, "the v1 episode is resolved as superseded");
    headroom_testkit::ops::check_exposition("drift-monitor", &h.metrics.render());
    h.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&models);
}

/// A restarted monitor resumes its model-error detectors from the changelog (`drift.state`): an
/// episode opened before the restart is resolved after it under the same id, with no second
/// OPEN and no new day of warm-up. Without the changelog the second instance would know no
/// episode and alert nothing (the unit test `a_restored_monitor_continues_exactly_like_an_
/// uninterrupted_one` shows that counterfactual).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_monitor_resumes_its_detectors_from_the_changelog() {
    let (brokers, mut cfg, models) = own_monitor("drift-restart").await;
    cfg.features.enabled = false;
    let (mut steps, t0) = shifted_entity();

    // First instance: through the shift, until the episode is open and its batch committed.
    produce(&brokers, &cfg.topics.forecasts, &steps(0..90));
    let h = headroom_drift_monitor::start(cfg.clone(), Shutdown::new()).await.unwrap();
    let guard = StopOnDrop(h.shutdown.clone());
    let mut alerts = Vec::new();
    let opened = model_error_seen(&brokers, &cfg.topics.output, AlertState::Open, &mut alerts).await;
    assert!(opened, "alerts so far: {alerts:#?}");
    assert!(eventually(Duration::from_secs(30), || counter(&h, "records_in_total", "forecasts") >= 180.0).await);
    assert!(counter(&h, "drift_state_records_written_total", "\"state\"") >= 2.0);
    headroom_testkit::ops::check_exposition("drift-monitor", &h.metrics.render());
    h.stop().await.unwrap();
    drop(guard);

    // Second instance, same group: it reads both entities back, then the shifted one returns
    // to its forecasts and the episode opened by the first instance resolves.
    let h = headroom_drift_monitor::start(cfg.clone(), Shutdown::new()).await.unwrap();
    let _guard = StopOnDrop(h.shutdown.clone());
    episode_resolves_across(&brokers, &cfg, &mut steps, t0).await;
    assert!(counter(&h, "drift_state_records_restored_total", "restored") >= 2.0);
    assert_eq!(counter(&h, "drift_state_restores_total", "failed"), 0.0);
    // Every forecasts partition was read back, all of them in one read.
    let topology = headroom_runtime::topology::Topology::builtin();
    let partitions = topology.topic("forecasts").unwrap().partitions(&topology.defaults);
    assert_eq!(counter(&h, "drift_state_restores_total", "\"ok\""), f64::from(partitions));
    let reads = h
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("headroom_drift_state_restore_seconds_count"))
        .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(reads, Some(1.0), "one read for the whole assignment");
    h.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&models);
}

/// With `state.rewrite_after` set, a partition's detectors are written whole again once its
/// changelog grew by that ratio, and the runtime stores where the latest rewrite starts once
/// it is acknowledged: a restarted monitor reads the changelog back from there, a few records
/// instead of every batch's, and still resolves the episode opened before the restart under
/// its id, its error count running on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_monitor_reads_its_detectors_back_from_their_latest_rewrite() {
    let (brokers, mut cfg, models) = own_monitor("drift-rewrite").await;
    cfg.features.enabled = false;
    cfg.state.detectors_every = Duration::ZERO;
    cfg.state.rewrite_after = 1;
    let (mut steps, t0) = shifted_entity();

    // First instance: ten steps at a time, each chunk in batches of its own (a record of each
    // entity per batch), through the shift until the episode is open.
    let first = headroom_drift_monitor::start(cfg.clone(), Shutdown::new()).await.unwrap();
    let guard = StopOnDrop(first.shutdown.clone());
    for k in 1..=9 {
        produce(&brokers, &cfg.topics.forecasts, &steps((k - 1) * 10..k * 10));
        let seen = || counter(&first, "records_in_total", "forecasts") >= 20.0 * k as f64;
        assert!(eventually(Duration::from_secs(30), seen).await, "chunk {k} consumed");
    }
    let mut alerts = Vec::new();
    let opened = model_error_seen(&brokers, &cfg.topics.output, AlertState::Open, &mut alerts).await;
    assert!(opened, "alerts so far: {alerts:#?}");
    let rewrites = || counter(&first, "changelog_rewrites_total", "drift.state");
    assert!(eventually(Duration::from_secs(30), || rewrites() >= 2.0).await, "{} rewrites", rewrites());
    let written = counter(&first, "drift_state_records_written_total", "\"state\"");
    assert!(written >= 18.0, "a record of each entity for each chunk at least: {written}");
    first.stop().await.unwrap();
    drop(guard);

    let second = headroom_drift_monitor::start(cfg.clone(), Shutdown::new()).await.unwrap();
    let _guard = StopOnDrop(second.shutdown.clone());
    episode_resolves_across(&brokers, &cfg, &mut steps, t0).await;
    // Read back from the latest rewrite of each partition: at most its two entities and one
    // drain after it (rewrite_after = 1), instead of all the records written.
    let read = counter(&second, "drift_state_records_restored_total", "restored");
    assert!((2.0..=4.0).contains(&read), "{read} records read back of {written} written");
    second.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&models);
}

/// With `state.detectors_every` long, the detectors' changelog lags the consumed forecasts;
/// a rebalance (a second member joins: every partition is revoked and handed out again) does
/// not write them, and the new owners replay each forecasts partition from its committed floor
/// on top of the changelog: the episode opened before the rebalance resolves after it under
/// the same id, its error count running on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_replays_the_detectors_from_their_floor() {
    let (brokers, mut cfg, models) = own_monitor("drift-floor").await;
    cfg.features.enabled = false;
    cfg.state.detectors_every = Duration::from_secs(3_600);
    let (mut steps, t0) = shifted_entity();

    // The first ten steps, written at once (each partition's first changes)…
    produce(&brokers, &cfg.topics.forecasts, &steps(0..10));
    let first = headroom_drift_monitor::start(cfg.clone(), Shutdown::new()).await.unwrap();
    let _g1 = StopOnDrop(first.shutdown.clone());
    let written = || counter(&first, "drift_state_records_written_total", "\"state\"");
    assert!(eventually(Duration::from_secs(30), || written() >= 2.0).await, "{} records written", written());
    // …then the shift, until the episode is open: nothing more is written for an hour.
    produce(&brokers, &cfg.topics.forecasts, &steps(10..90));
    let mut alerts = Vec::new();
    let opened = model_error_seen(&brokers, &cfg.topics.output, AlertState::Open, &mut alerts).await;
    assert!(opened, "alerts so far: {alerts:#?}");
    assert!(eventually(Duration::from_secs(30), || counter(&first, "records_in_total", "forecasts") >= 180.0).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // One record per entity for 180 forecasts (every batch would write each entity it saw).
    assert_eq!(written(), 2.0, "records written");

    // A second member joins: the group rebalances and both read back what they are assigned.
    let topology = headroom_runtime::topology::Topology::builtin();
    let partitions = f64::from(topology.topic("forecasts").unwrap().partitions(&topology.defaults));
    let joiner = headroom_drift_monitor::start(cfg.clone(), Shutdown::new()).await.unwrap();
    let _g2 = StopOnDrop(joiner.shutdown.clone());
    let reads = || counter(&first, "drift_state_restores_total", "\"ok\"") + counter(&joiner, "drift_state_restores_total", "\"ok\"");
    assert!(eventually(Duration::from_secs(60), || reads() >= 2.0 * partitions).await, "{} partitions read back", reads());
    // The changelog held "shifted" after its tenth forecast; the replay from the floor gives
    // back every error since (the episode needs the baseline: from the changelog alone there
    // would be no episode to resolve).
    episode_resolves_across(&brokers, &cfg, &mut steps, t0).await;
    // The forecasts since the first write: steps 10 to 89 of both entities.
    let (a, b) = (counter(&first, "replayed_records_total", ""), counter(&joiner, "replayed_records_total", ""));
    assert_eq!(a + b, 160.0, "the forecasts since the floor are replayed: {a} + {b}");
    joiner.stop().await.unwrap();
    first.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&models);
}

/// A restarted monitor resumes its feature windows from their changelog (`drift.windows`): the
/// hour open at the restart is judged on the values both instances read (each read half of it,
/// fewer than `min_samples`, so without the changelog it would not be judged at all), and the
/// episode the first instance opened is updated and resolved by the second under the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_monitor_resumes_its_feature_windows_from_the_changelog() {
    let (brokers, mut cfg, models) = own_monitor("drift-windows").await;
    cfg.model_error.enabled = false;
    let t0 = 1_700_000_000_000 / (60 * MIN) * (60 * MIN);
    // 8 entities x 12 vectors an hour (96, min_samples 50); cpu_now above 0.7 in hours 3 and 4.
    let slots = |entities: std::ops::Range<usize>, slots: std::ops::Range<i64>| -> Vec<Rec> {
        let mut v = Vec::new();
        for slot in slots {
            for e in entities.clone() {
                let u = (((slot * 8 + e as i64) * 7919) % 96) as f32 / 96.0;
                let cpu = if (36..60).contains(&slot) { 0.7 + 0.3 * u } else { u };
                v.push(features(e, slot, t0, cpu, u));
            }
        }
        v
    };
    let feature_alerts = |brokers: &str, topic: &str| -> Vec<DriftAlert> {
        consume(brokers, topic, 1, Duration::from_secs(5), Duration::from_millis(300))
            .iter()
            .map(|m| DriftAlert::decode(m.payload().unwrap()).unwrap())
            .filter(|a| a.kind == DriftKind::FeatureDistribution)
            .collect()
    };

    // First instance: hours 0-3 and the first half of hour 4. Entity 0's half comes after the
    // partitions without entities stopped holding the windows; it closes hour 3 (OPEN).
    produce(&brokers, &cfg.topics.features, &slots(0..8, 0..48));
    produce(&brokers, &cfg.topics.features, &slots(1..8, 48..54));
    let h = headroom_drift_monitor::start(cfg.clone(), Shutdown::new()).await.unwrap();
    let guard = StopOnDrop(h.shutdown.clone());
    tokio::time::sleep(Duration::from_secs(4)).await;
    produce(&brokers, &cfg.topics.features, &slots(0..1, 48..54));
    let mut alerts = Vec::new();
    let opened = eventually(Duration::from_secs(60), || {
        alerts = feature_alerts(&brokers, &cfg.topics.output);
        alerts.iter().any(|a| a.state == AlertState::Open)
    })
    .await;
    assert!(opened, "alerts so far: {alerts:#?}");
    assert!(eventually(Duration::from_secs(30), || counter(&h, "records_in_total", "features") >= 8.0 * 54.0).await);
    assert!(counter(&h, "drift_state_records_written_total", "windows") >= 1.0);
    h.stop().await.unwrap();
    drop(guard);

    // Second instance, same group: the second half of hour 4, hours 5-6, and a record of hour 7
    // once the empty partitions' grace has passed.
    let h = headroom_drift_monitor::start(cfg.clone(), Shutdown::new()).await.unwrap();
    let _guard = StopOnDrop(h.shutdown.clone());
    produce(&brokers, &cfg.topics.features, &slots(0..8, 54..84));
    tokio::time::sleep(Duration::from_secs(4)).await;
    produce(&brokers, &cfg.topics.features, &slots(0..1, 84..85));
    let resolved = eventually(Duration::from_secs(60), || {
        alerts = feature_alerts(&brokers, &cfg.topics.output);
        alerts.iter().any(|a| a.state == AlertState::Resolved)
    })
    .await;
    assert!(resolved, "the episode opened before the restart resolves after it: {alerts:#?}");
    assert!(counter(&h, "drift_window_records_restored_total", "restored") >= 1.0);
    assert_eq!(counter(&h, "drift_window_records_restored_total", "stale"), 0.0);
    assert_eq!(counter(&h, "drift_state_restores_total", "failed"), 0.0);
    let states: Vec<AlertState> = alerts.iter().map(|a| a.state).collect();
    assert_eq!(states, vec![AlertState::Open, AlertState::Update, AlertState::Resolved], "{alerts:#?}");
    assert!(alerts.iter().all(|a| a.subject == "cpu_now" && a.alert_id == alerts[0].alert_id), "one episode: {alerts:#?}");
    // Hour 4, read half by each instance, judged on all of its 96 values, none twice.
    let update = &alerts[1];
    assert_eq!(update.window_start_ms, t0 + 4 * 60 * MIN);
    assert_eq!(update.detail("live_n"), Some(96.0), "{update:?}");
    h.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&models);
}

/// With `models.registry_url`, the serving version is the one the PostgreSQL registry names
/// (here not the file registry's); an empty registry, or an artifact that is not the version
/// the registry names, is a clear start-up error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_registry_names_the_serving_version() {
    let url = headroom_testkit::pg_schema("dreg").await;
    let pool = headroom_store::pool(&url, 1, Duration::from_secs(10)).await.unwrap();
    headroom_store::migrate(&pool).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_version(dir.path(), "v1", 0.05);
    write_version(dir.path(), "v2", 0.07);
    std::fs::write(dir.path().join("registry.json"), br#"{"serving":{"xgboost":"v1"}}"#).unwrap();
    let mut models = config("127.0.0.1:1", "dreg.", dir.path()).models;
    models.registry_url = url.clone();
    let e = headroom_drift_monitor::load_serving(&models).await.unwrap_err().to_string();
    assert!(e.contains("no serving `xgboost` model in the registry") && e.contains("--registry-url"), "{e}");

    headroom_store::registry::register_dir(&pool, &dir.path().join("v2")).await.unwrap();
    headroom_store::registry::promote(&pool, "v2", "test").await.unwrap();
    let r = headroom_drift_monitor::load_serving(&models).await.unwrap();
    assert_eq!(r.version, "v2");
    assert!((r.validation_mae.values().next().copied().unwrap_or(0.0) - 0.07).abs() < 1e-9, "v2's own manifest: {:?}", r.validation_mae);

    // The artifact the registry points at holds another version: refused, naming both.
    let m = dir.path().join("v2/manifest.json");
    let text = std::fs::read_to_string(&m).unwrap().replace("\"version\": \"v2\"", "\"version\": \"v9\"");
    std::fs::write(&m, text).unwrap();
    let e = headroom_drift_monitor::load_serving(&models).await.unwrap_err().to_string();
    assert!(e.contains("`v2`") && e.contains("`v9`"), "{e}");

    models.registry_url.clear();
    assert_eq!(headroom_drift_monitor::load_serving(&models).await.unwrap().version, "v1", "the file registry");
}
