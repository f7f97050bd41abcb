//! The scorer against the real broker: forecasts for every feature event, exactly once, with the
//! serving version; a version promoted on the models topic is swapped in without a restart and
//! without dropping or double-scoring an event; bad input is dead-lettered.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use headroom_features::{FeatureConfig, Outcome, PartitionState, Sample};
use headroom_forecast::backtest::{self, FitOptions, Quiet};
use headroom_forecast::serving::{Scores, ServingModel};
use headroom_forecast::xgb::XgbParams;
use headroom_forecast::{artifact, Dataset, DatasetOptions, DeviceChoice, Split};
use headroom_runtime::Shutdown;
use headroom_schemas::features::event_id as event_id_of;
use headroom_schemas::{FeaturesRecord, Forecast, Metric, ModelEvent, ModelEventKind, Telemetry};
use headroom_scorer::Config;
use headroom_sources::{GenConfig, Generator};
use headroom_testkit::rdkafka::Message;
use headroom_testkit::{StopOnDrop, brokers, consume, create_topics, header, produce, unique, Rec};

fn generated(entities: u32, days: i64) -> Vec<Telemetry> {
    let mut g = Generator::new(GenConfig {
        entities: Some(entities),
        ..GenConfig::default()
    });
    let start = 1_700_000_000_000 / 300_000 * 300_000;
    let mut out = Vec::new();
    for r in 0..days * 288 {
        for i in 0..g.entity_count() {
            out.push(g.sample(i, start + r * 300_000));
        }
    }
    out
}

/// Two small versions trained on generated telemetry (different rounds, so their forecasts
/// differ), written under `dir`.
fn train_versions(dir: &Path) -> (String, String) {
    let ds = Dataset::build(
        generated(4, 3),
        &DatasetOptions {
            split: Split::None,
            ..DatasetOptions::default()
        },
    )
    .unwrap();
    let mut names = Vec::new();
    for (k, rounds) in [8u32, 16].into_iter().enumerate() {
        let opts = FitOptions {
            xgb: XgbParams {
                rounds,
                max_depth: 4,
                nthread: 2,
                ..XgbParams::default()
            },
            device: DeviceChoice::Cpu,
            ..FitOptions::default()
        };
        let models = backtest::fit(&ds, &opts, &mut Quiet).unwrap();
        let (m, _) = artifact::write(dir, &ds, &models, None, 1_700_000_000_000 + k as i64 * 1000).unwrap();
        names.push(m.version);
    }
    (names[0].clone(), names[1].clone())
}

/// Feature records exactly as the featurizer computes them.
fn features(records: &[Telemetry]) -> Vec<FeaturesRecord> {
    let mut st = PartitionState::new(FeatureConfig::default());
    let schema = st.layout().id().to_owned();
    let mut out = Vec::new();
    let mut v = Vec::new();
    for (i, t) in records.iter().enumerate() {
        if let Outcome::Emitted { .. } = st.process(&t.entity_id, &Sample::from(t), i as u64, &mut v) {
            out.push(FeaturesRecord {
                event_id: event_id_of(&t.entity_id, t.ts_ms),
                entity_id: t.entity_id.clone(),
                ts_ms: t.ts_ms,
                service: t.service.clone(),
                cluster: t.cluster.clone(),
                feature_set: schema.clone(),
                values: v.clone(),
                cpu_util: t.cpu_util.unwrap_or(0.0),
                mem_util: t.mem_util.unwrap_or(0.0),
                ..FeaturesRecord::default()
            });
        }
    }
    out
}

fn rec(f: &FeaturesRecord) -> Rec {
    let mut payload = Vec::new();
    f.encode_framed(&mut payload);
    Rec {
        key: Some(f.entity_id.clone().into_bytes()),
        payload,
        headers: vec![],
    }
}

fn config(brokers: &str, prefix: &str, models: &Path) -> Config {
    let mut c: Config =
        headroom_runtime::load_config(include_str!("../default.toml"), None, "HEADROOM_SCORER_ITEST_UNUSED__").unwrap();
    c.kafka.brokers = brokers.to_owned();
    c.kafka.group_id = unique("scorer");
    c.http.listen = "127.0.0.1:0".into();
    c.runtime.commit_interval = Duration::from_millis(200);
    c.topics.input = format!("{prefix}features");
    c.topics.output = format!("{prefix}forecasts");
    c.topics.models = format!("{prefix}models");
    c.topics.dlq = format!("{prefix}telemetry.dlq");
    c.models.dir = models.to_owned();
    c
}

fn promote(brokers: &str, topic: &str, dir: &Path, version: &str, schema: &str) {
    let e = ModelEvent {
        event_id: unique("ev"),
        model_name: "xgboost".into(),
        version: version.into(),
        ts_ms: 1,
        kind: ModelEventKind::Promoted,
        artifact_uri: format!("file://{}", dir.join(version).display()),
        feature_set: schema.into(),
        metrics: vec![],
        reason: None,
    };
    let mut payload = Vec::new();
    e.encode_framed(&mut payload);
    produce(brokers, topic, &[Rec { key: Some(b"xgboost".to_vec()), payload, headers: vec![] }]);
}

fn version_of(f: &Forecast) -> String {
    f.model_versions.iter().find(|(k, _)| k == "xgboost").map(|(_, v)| v.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_every_event_once_and_swaps_versions_live() {
    headroom_testkit::init_test_logging();
    let brokers = brokers();
    let prefix = format!("{}.", unique("scorer"));
    create_topics(&brokers, &prefix).await;
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = train_versions(dir.path());
    artifact::Registry::promote(dir.path(), &v1).unwrap();

    // 4 entities over 1 day: 1,152 feature events.
    let feats = features(&generated(4, 1));
    let schema = feats[0].feature_set.clone();
    let (first, rest) = feats.split_at(400);
    produce(&brokers, &format!("{prefix}features"), &first.iter().map(rec).collect::<Vec<_>>());
    // Bad input: undecodable bytes, a vector of another feature schema, and a vector with a
    // NaN (not from the featurizer, which emits finite values only).
    let mut other = first[0].clone();
    other.feature_set = "fs1-0000000000000000".into();
    other.event_id = "other-schema".into();
    let mut nan = first[1].clone();
    nan.values[3] = f32::NAN;
    nan.event_id = "nan-vector".into();
    produce(
        &brokers,
        &format!("{prefix}features"),
        &[Rec { key: Some(b"vm-x".to_vec()), payload: vec![0, 0, 0, 4, 81, 1, 2], headers: vec![] }, rec(&other), rec(&nan)],
    );

    let handle = headroom_scorer::start(config(&brokers, &prefix, dir.path()), Shutdown::new()).await.unwrap();
    let _stop = StopOnDrop(handle.shutdown.clone());
    let out_topic = format!("{prefix}forecasts");
    let got = consume(&brokers, &out_topic, first.len(), Duration::from_secs(60), Duration::from_millis(300));
    assert_eq!(got.len(), first.len(), "forecasts for the first batch");

    // Promote v2 on the models topic; keep publishing until forecasts of v2 appear.
    promote(&brokers, &format!("{prefix}models"), dir.path(), &v2, &schema);
    let mut sent = first.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen_v2 = false;
    for chunk in rest.chunks(100) {
        produce(&brokers, &format!("{prefix}features"), &chunk.iter().map(rec).collect::<Vec<_>>());
        sent += chunk.len();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let now = consume(&brokers, &out_topic, sent, Duration::from_secs(20), Duration::from_millis(100));
        seen_v2 = now.iter().any(|m| version_of(&Forecast::decode(m.payload().unwrap()).unwrap()) == v2);
        if seen_v2 && sent >= first.len() + 300 {
            break;
        }
        assert!(Instant::now() < deadline, "v2 never served");
    }
    assert!(seen_v2, "the promoted version never served");
    let all = consume(&brokers, &out_topic, sent, Duration::from_secs(60), Duration::from_secs(1));
    handle.stop().await.unwrap();

    // Exactly once: one forecast per sent event, no extras.
    let forecasts: Vec<(i32, Forecast)> =
        all.iter().map(|m| (m.partition(), Forecast::decode(m.payload().unwrap()).unwrap())).collect();
    let ids: HashSet<&str> = forecasts.iter().map(|(_, f)| f.event_id.as_str()).collect();
    assert_eq!(forecasts.len(), sent, "one forecast per event");
    assert_eq!(ids.len(), sent, "no event scored twice");
    let sent_ids: HashSet<&str> = feats[..sent].iter().map(|f| f.event_id.as_str()).collect();
    assert_eq!(ids, sent_ids);

    // Per partition, versions go v1… then v2…, never back; the first batch was all v1.
    let mut last: HashMap<i32, String> = HashMap::new();
    for (p, f) in &forecasts {
        let v = version_of(f);
        assert!(v == v1 || v == v2, "unknown version {v}");
        if let Some(prev) = last.get(p) {
            assert!(!(prev == &v2 && v == v1), "partition {p} went back from v2 to v1");
        }
        last.insert(*p, v);
    }
    let first_ids: HashSet<&str> = first.iter().map(|f| f.event_id.as_str()).collect();
    assert!(forecasts.iter().filter(|(_, f)| first_ids.contains(f.event_id.as_str())).all(|(_, f)| version_of(f) == v1));

    // Each forecast: 3 metrics × 3 horizons, ordered quantiles, a probability; and the values
    // are what the serving code computes for that vector with that version.
    let loaded: HashMap<String, ServingModel> = [&v1, &v2]
        .iter()
        .map(|v| ((*v).clone(), ServingModel::load(&dir.path().join(v), None).unwrap()))
        .collect();
    let by_id: HashMap<&str, &FeaturesRecord> = feats.iter().map(|f| (f.event_id.as_str(), f)).collect();
    for (_, f) in forecasts.iter().step_by(97) {
        assert_eq!(f.points.len(), 9);
        for p in &f.points {
            assert!(p.p50 >= 0.0 && p.p90 >= p.p50, "{p:?}");
        }
        let prob = f.scale_event_prob.unwrap();
        assert!((0.0..=1.0).contains(&prob));
        let src = by_id[f.event_id.as_str()];
        let m = &loaded[&version_of(f)];
        let mut s = Scores::default();
        m.score(&src.values, 1, &mut s).unwrap();
        assert_eq!(f.points[0].p50, f64::from(s.heads[0][0].0));
        assert_eq!(prob, f64::from(s.peak[0]));
        // The observation the forecast starts from travels with it (forecasts v2).
        assert_eq!(f.observed.cpu_util, Some(src.cpu_util));
        assert_eq!(f.observed.mem_util, Some(src.mem_util));
        assert_eq!(f.observed.cpu_cores, src.cpu_cores);
        assert_eq!(f.observed.replicas, src.replicas);
        assert_eq!(f.observed.cost_per_hour, src.cost_per_hour);
    }

    // The three bad records were dead-lettered, with their reasons.
    let dlq = consume(&brokers, &format!("{prefix}telemetry.dlq"), 3, Duration::from_secs(20), Duration::from_millis(500));
    let mut reasons: Vec<&str> = dlq.iter().filter_map(|m| header(m, "dlq.reason")).collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons.contains(&"feature_schema_mismatch"), "{reasons:?}");
    assert!(reasons.contains(&"not_finite"), "{reasons:?}");
    let detail = dlq
        .iter()
        .find(|m| header(m, "dlq.reason") == Some("not_finite"))
        .and_then(|m| header(m, "dlq.detail"))
        .unwrap_or_default();
    assert!(detail.contains("index 3") && detail.contains("NaN"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_serving_model_is_a_clear_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let c = config("127.0.0.1:1", "none.", dir.path());
    let e = headroom_scorer::start(c, Shutdown::new()).await.unwrap_err().to_string();
    assert!(e.contains("no serving `xgboost` model") && e.contains("headroom-train promote"), "{e}");
}

/// `models.device = cuda` starts only with a GPU and XGBoost's CUDA build; otherwise the
/// start-up error names the key (before any model or broker is touched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cuda_device_without_a_gpu_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config("127.0.0.1:1", "none.", dir.path());
    c.models.device = headroom_forecast::device::DeviceChoice::Cuda;
    let usable = headroom_forecast::device::for_xgboost(headroom_forecast::device::DeviceChoice::Cuda).is_ok();
    let e = headroom_scorer::start(c, Shutdown::new()).await.unwrap_err().to_string();
    if usable {
        // With a GPU the device passes and the empty models directory is what stops it.
        assert!(e.contains("no serving `xgboost` model"), "{e}");
    } else {
        assert!(e.contains("key `models.device`") && e.contains("cuda"), "{e}");
    }
}

/// A version with LSTM and GRU models beside XGBoost: every forecast carries all three models'
/// points (XGBoost's first), and the neural points the scorer publishes through the broker are
/// what the backtest computes for the same rows from the whole series (on a trace with gaps,
/// so the per-entity missing flags matter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_lstm_and_gru_beside_xgboost_as_the_backtest_scores_them() {
    use headroom_neural::{Cell, NeuralOptions, Predictor};
    headroom_testkit::init_test_logging();
    let brokers = brokers();
    let prefix = format!("{}.", unique("scorer-nn"));
    create_topics(&brokers, &prefix).await;
    let dir = tempfile::tempdir().unwrap();

    // 4 entities over 3 days, about one sample in 12 dropped.
    let records: Vec<Telemetry> = generated(4, 3)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| (*i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 59 != 0)
        .map(|(_, t)| t)
        .collect();
    let ds = Dataset::build(
        records.clone(),
        &DatasetOptions {
            split: Split::TrainDays(2.0),
            ..DatasetOptions::default()
        },
    )
    .unwrap();
    let xgb = FitOptions {
        xgb: XgbParams { rounds: 8, max_depth: 4, nthread: 2, ..XgbParams::default() },
        device: DeviceChoice::Cpu,
        ..FitOptions::default()
    };
    let models = backtest::fit(&ds, &xgb, &mut Quiet).unwrap();
    let mut neural = Vec::new();
    let mut predictors = Vec::new();
    for cell in [Cell::Lstm, Cell::Gru] {
        let opts = NeuralOptions {
            cell,
            hidden: 16,
            layers: 2,
            input_len: 24,
            max_epochs: 1,
            samples_per_epoch: 512,
            batch_size: 64,
            device: DeviceChoice::Cpu,
            ..NeuralOptions::default()
        };
        let f = headroom_neural::fit(&ds, &opts, None, &mut Quiet).unwrap();
        neural.push(headroom_neural::artifact(&f).unwrap());
        predictors.push(Predictor::new(&f).unwrap());
    }
    let (m, _) = artifact::write_with(dir.path(), &ds, &models, &neural, None, 1_700_000_000_000).unwrap();
    artifact::Registry::promote(dir.path(), &m.version).unwrap();

    let feats = features(&records);
    produce(&brokers, &format!("{prefix}features"), &feats.iter().map(rec).collect::<Vec<_>>());
    let handle = headroom_scorer::start(config(&brokers, &prefix, dir.path()), Shutdown::new()).await.unwrap();
    let _stop = StopOnDrop(handle.shutdown.clone());
    let got = consume(&brokers, &format!("{prefix}forecasts"), feats.len(), Duration::from_secs(120), Duration::from_secs(1));
    // promtool's lint and the dashboards' queries (scoring time by model, serving versions).
    headroom_testkit::ops::check_exposition("scorer", &handle.metrics.render());
    handle.stop().await.unwrap();
    assert_eq!(got.len(), feats.len(), "one forecast per event");

    // The backtest's levels of every test row, by (entity, slot).
    let expected: Vec<_> = predictors.iter().map(|p| p.predict_rows(&ds, &ds.test).unwrap()).collect();
    let row_of: HashMap<(&str, i64), usize> =
        (0..ds.test.len()).map(|i| ((ds.series[ds.test.entity[i] as usize].id.as_str(), ds.test.slot[i]), i)).collect();
    let first_slot: HashMap<&str, i64> = ds.series.iter().map(|s| (s.id.as_str(), s.first_slot)).collect();
    let tag = |fam: &str| format!("{fam}/{}", m.version);
    let mut compared = 0;
    for msg in &got {
        let f = Forecast::decode(msg.payload().unwrap()).unwrap();
        // model_versions is an Avro map (no order): the points' order says which is primary.
        let mut families: Vec<&str> = f.model_versions.iter().map(|(k, _)| k.as_str()).collect();
        families.sort_unstable();
        assert_eq!(families, ["gru", "lstm", "xgboost"]);
        assert_eq!(f.points.len(), 27);
        assert!(f.primary_points().all(|p| p.model == tag("xgboost")) && f.primary_points().count() == 9);
        let slot = f.ts_ms.div_euclid(ds.interval_ms);
        let Some(&r) = row_of.get(&(f.entity_id.as_str(), slot)) else { continue };
        if slot <= first_slot[f.entity_id.as_str()] + 24 {
            continue; // training pads an entity's first window, the featurizer back-fills it
        }
        for (k, fam) in ["lstm", "gru"].into_iter().enumerate() {
            let pts: Vec<_> = f.points.iter().filter(|p| p.model == tag(fam)).collect();
            assert_eq!(pts.len(), 9);
            let meta = &predictors[k].meta;
            for (t, name) in meta.targets.iter().enumerate() {
                for (h, &slots) in meta.horizons_slots.iter().enumerate() {
                    let metric = Metric::from_short(name).unwrap();
                    let minutes = (slots as i64 * ds.interval_ms / 60_000) as i32;
                    let p = pts.iter().find(|p| p.metric == metric && p.horizon_min == minutes).unwrap();
                    let (p50, p90) = expected[k][t * meta.horizons_slots.len() + h][r];
                    let close = |a: f64, b: f32| (a - f64::from(b)).abs() <= 1e-4 * (1.0 + f64::from(b).abs());
                    assert!(close(p.p50, p50) && close(p.p90, p90), "{fam} {name}@{minutes}m of {} at slot {slot}: {p:?} vs ({p50}, {p90})", f.entity_id);
                }
            }
        }
        compared += 1;
    }
    assert!(compared > 800, "{compared} forecasts compared with the backtest");
}

/// With `models.registry_url`, the serving version is the one the PostgreSQL registry names
/// (here not the file registry's), and an empty registry is a clear start-up error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_registry_names_the_serving_version() {
    let url = headroom_testkit::pg_schema("sreg").await;
    let pool = headroom_store::pool(&url, 1, Duration::from_secs(10)).await.unwrap();
    headroom_store::migrate(&pool).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = tokio::task::spawn_blocking({
        let d = dir.path().to_owned();
        move || train_versions(&d)
    })
    .await
    .unwrap();
    artifact::Registry::promote(dir.path(), &v1).unwrap();
    let mut models = config("127.0.0.1:1", "reg.", dir.path()).models;
    models.registry_url = url.clone();
    let e = headroom_scorer::load_serving(&models).await.unwrap_err().to_string();
    assert!(e.contains("no serving `xgboost` model in the registry") && e.contains("--registry-url"), "{e}");

    headroom_store::registry::register_dir(&pool, &dir.path().join(&v2)).await.unwrap();
    headroom_store::registry::promote(&pool, &v2, "test").await.unwrap();
    assert_eq!(headroom_scorer::load_serving(&models).await.unwrap().version(), v2);
    models.registry_url.clear();
    assert_eq!(headroom_scorer::load_serving(&models).await.unwrap().version(), v1, "the file registry");
}
