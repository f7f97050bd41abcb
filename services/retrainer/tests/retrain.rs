//! The retrainer against real PostgreSQL and the real broker: a manual run trains from the
//! stored telemetry, beats a weak serving version on the same holdout and promotes it
//! (registry, models topic, recorded run); a run that cannot beat the margin is rejected and
//! the serving version stays; an empty training set fails cleanly; a rollback returns to the
//! previous version; drift alerts for the serving version trigger the service, others do not;
//! a run a crash left `running` is marked interrupted at start-up; a stop request ends a run
//! within a boosting round (the service's and `headroom-retrain run`'s), and the stopped
//! service runs its alerts again after a restart.

use std::path::Path;
use std::time::Duration;

use headroom_forecast::artifact::{self, Registry};
use headroom_forecast::backtest::{self, FitOptions, Quiet};
use headroom_forecast::xgb::XgbParams;
use headroom_forecast::{Dataset, DatasetOptions, Split};
use headroom_retrainer::{Config, Outcome, Retrainer, Trigger, TriggerKind};
use headroom_runtime::Shutdown;
use headroom_schemas::drift::alert_id;
use headroom_schemas::{AlertState, DriftAlert, DriftKind, ModelEvent, ModelEventKind, Severity, Telemetry};
use headroom_sources::{GenConfig, Generator};
use headroom_testkit::rdkafka::Message;
use headroom_testkit::{brokers, consume, create_topics, eventually, pg_url, pg_url_in_schema, produce, unique, Rec, StopOnDrop};
use sqlx::Connection;

const STEP: i64 = 300_000;

fn generate(entities: u32, days: i64, seed: u64) -> Vec<Telemetry> {
    let mut g = Generator::new(GenConfig { entities: Some(entities), seed, ..GenConfig::default() });
    let start = 1_700_000_000_000 / STEP * STEP;
    let mut out = Vec::new();
    for r in 0..days * 86_400_000 / STEP {
        for i in 0..g.entity_count() {
            out.push(g.sample(i, start + r * STEP));
        }
    }
    out
}

async fn scratch_schema(base: &str) -> String {
    let schema = unique("retrain").replace('-', "_");
    let mut c = sqlx::PgConnection::connect(base).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut c).await.unwrap();
    pg_url_in_schema(base, &schema)
}

async fn store_telemetry(url: &str, records: &[Telemetry]) {
    let pool = headroom_store::pool(url, 1, Duration::from_secs(10)).await.unwrap();
    headroom_store::migrate(&pool).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let mut cache = headroom_store::partitions::PartitionCache::default();
    cache
        .ensure(&mut conn, headroom_store::partitions::spec("telemetry_raw").unwrap(), records.iter().map(|r| r.ts_ms))
        .await
        .unwrap();
    for (k, chunk) in records.chunks(5_000).enumerate() {
        let col = |f: &dyn Fn(&Telemetry) -> Option<f64>| chunk.iter().map(f).collect::<Vec<Option<f64>>>();
        sqlx::query(
            "INSERT INTO telemetry_raw (entity_id, ts, cpu_util, mem_util, net_in_bps, net_out_bps, cpu_cores, mem_bytes, src_partition, src_offset)
             SELECT e, to_timestamp(t / 1000), c, m, ni, no, cc, mb, 0, $9 + o
             FROM unnest($1::text[], $2::float8[], $3::float8[], $4::float8[], $5::float8[], $6::float8[], $7::float8[], $8::float8[])
                  WITH ORDINALITY AS x(e, t, c, m, ni, no, cc, mb, o)",
        )
        .bind(chunk.iter().map(|r| r.entity_id.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.ts_ms as f64).collect::<Vec<_>>())
        .bind(col(&|r| r.cpu_util))
        .bind(col(&|r| r.mem_util))
        .bind(col(&|r| r.net_in_bps))
        .bind(col(&|r| r.net_out_bps))
        .bind(col(&|r| r.cpu_cores))
        .bind(col(&|r| r.mem_bytes))
        .bind((k * 5_000) as i64)
        .execute(&mut *conn)
        .await
        .unwrap();
    }
}

/// A deliberately weak serving version: 3 rounds, on another fleet.
fn weak_version(cfg: &Config) -> String {
    let ds = Dataset::build(
        generate(8, 2, 99),
        &DatasetOptions { features: cfg.features.clone(), horizons: cfg.horizon_slots().unwrap(), split: Split::None, ..DatasetOptions::default() },
    )
    .unwrap();
    let opts = FitOptions {
        xgb: XgbParams { rounds: 3, nthread: 2, ..XgbParams::default() },
        classifier: false,
        ..FitOptions::default()
    };
    let models = backtest::fit(&ds, &opts, &mut Quiet).unwrap();
    let (m, _) = artifact::write(&cfg.models.dir, &ds, &models, None, 1_700_000_000_000).unwrap();
    Registry::promote(&cfg.models.dir, &m.version).unwrap();
    m.version
}

fn config(pg: &str, brokers: &str, prefix: &str, models: &Path) -> Config {
    let mut c: Config = headroom_runtime::load_config(headroom_retrainer::config_defaults(), None, "HEADROOM_RETRAIN_ITEST_UNUSED__").unwrap();
    c.postgres.url = pg.to_owned();
    c.kafka.brokers = brokers.to_owned();
    c.kafka.group_id = unique("retrainer");
    c.http.listen = "127.0.0.1:0".into();
    c.topics.alerts = format!("{prefix}drift.alerts");
    c.topics.models = format!("{prefix}models");
    c.models.dir = models.to_owned();
    c.data.window = Duration::from_secs(3 * 86_400);
    c.data.min_train_rows = 1_000;
    c.data.min_holdout_rows = 200;
    c.training.rounds = 60;
    c.training.threads = 2;
    c.training.classifier = false;
    c.training.device = headroom_forecast::DeviceChoice::Cpu;
    // The neural refit has a test of its own (below).
    c.training.neural.families = Vec::new();
    c.triggers.coalesce = Duration::from_secs(1);
    c.triggers.min_interval = Duration::ZERO;
    c.triggers.schedule = Duration::ZERO;
    c
}

/// A test's own topics (named after `name`), PostgreSQL schema and models directory, and the
/// configuration over them: `(brokers, url, models, cfg)`.
async fn scratch(name: &str) -> (String, String, std::path::PathBuf, Config) {
    let brokers = brokers();
    let prefix = format!("{}.", unique(name));
    create_topics(&brokers, &prefix).await;
    let url = scratch_schema(&pg_url()).await;
    let models = std::env::temp_dir().join(unique(&format!("{name}-models")));
    std::fs::create_dir_all(&models).unwrap();
    let cfg = config(&url, &brokers, &prefix, &models);
    (brokers, url, models, cfg)
}

fn models_events(brokers: &str, topic: &str, n: usize) -> Vec<ModelEvent> {
    consume(brokers, topic, n, Duration::from_secs(30), Duration::from_millis(300))
        .iter()
        .map(|m| ModelEvent::decode(m.payload().unwrap()).unwrap())
        .collect()
}

async fn run(r: &std::sync::Arc<Retrainer>, kind: TriggerKind) -> Outcome {
    let r = r.clone();
    tokio::task::spawn_blocking(move || r.run(&Trigger { kind, reason: "test".into(), alert_ids: vec![] })).await.unwrap()
}

async fn runs(url: &str) -> Vec<(String, String, Option<String>, Option<String>)> {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_as("SELECT trigger, status, data_source, detail FROM retrain_runs ORDER BY started_at")
        .fetch_all(&mut c)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrains_validates_promotes_rejects_rolls_back_and_follows_alerts() {
    headroom_testkit::init_test_logging();
    let base = pg_url();
    let (brokers, url, models, mut cfg) = scratch("retrain").await;

    // Three days of 12 generated entities in PostgreSQL, as the sink stores them.
    store_telemetry(&url, &generate(12, 3, 7)).await;
    let v0 = weak_version(&cfg);

    // A crash left a run `running`: the next start-up marks it interrupted.
    {
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("INSERT INTO retrain_runs (run_id, model_name, trigger, reason, status, params, started_at) VALUES ('crashed', 'xgboost', 'manual', 'x', 'running', '{}', now() - interval '1 hour')")
            .execute(&mut c)
            .await
            .unwrap();
    }
    let rt = tokio::runtime::Handle::current();
    let c2 = cfg.clone();
    let r = std::sync::Arc::new(tokio::task::spawn_blocking(move || Retrainer::connect(c2, rt)).await.unwrap().unwrap());
    assert_eq!(runs(&url).await[0].1, "interrupted");

    // 0. Another run holds the lock (here: this test's session): the run says so and does nothing.
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    let key = "hashtext('headroom-retrain/' || current_schema() || '/' || 'xgboost')";
    sqlx::query(&format!("SELECT pg_advisory_lock({key})")).execute(&mut holder).await.unwrap();
    assert_eq!(run(&r, TriggerKind::Manual).await, Outcome::Busy);
    sqlx::query(&format!("SELECT pg_advisory_unlock({key})")).execute(&mut holder).await.unwrap();
    assert_eq!(runs(&url).await.len(), 1, "a busy run records nothing");

    // 0b. A stop request ends a run inside the XGBoost fit (it is asked twice before the fit,
    // then after every boosting round): recorded interrupted, no candidate written, v0 serves.
    let dirs = || std::fs::read_dir(&models).unwrap().count();
    let before = dirs();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (r0, a0) = (r.clone(), asked.clone());
    let out = tokio::task::spawn_blocking(move || {
        let stop = move || a0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 >= 5;
        r0.run_stoppable(&Trigger { kind: TriggerKind::Manual, reason: "test".into(), alert_ids: vec![] }, &stop)
    })
    .await
    .unwrap();
    assert_eq!(out, Outcome::Stopped);
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 5, "nothing more is asked (nor done) once stopped");
    let rows = runs(&url).await;
    assert_eq!((rows.len(), rows[1].1.as_str()), (2, "interrupted"), "{rows:?}");
    assert!(rows[1].3.as_deref().is_some_and(|d| d.contains("stopped")), "{rows:?}");
    assert_eq!(dirs(), before, "a stopped run writes no candidate");
    assert_eq!(Registry::read(&models).unwrap().serving["xgboost"], v0);

    // 1. A manual run beats the weak version by far and is promoted.
    let Outcome::Promoted { version: v1, improvement } = run(&r, TriggerKind::Manual).await else {
        panic!("expected a promotion: {:?}", runs(&url).await)
    };
    assert!(improvement > 0.05, "improvement {improvement}");
    assert_eq!(Registry::read(&models).unwrap().serving["xgboost"], v1);
    let events = models_events(&brokers, &cfg.topics.models, 1);
    let promoted = events.iter().find(|e| e.kind == ModelEventKind::Promoted && e.version == v1).expect("promotion announced");
    assert!(promoted.metrics.iter().any(|(k, v)| k == "improvement" && (*v - improvement).abs() < 1e-9));
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(models.join(&v1).join("manifest.json")).unwrap()).unwrap();
    assert!(manifest["metrics"]["rows"].as_array().unwrap().iter().any(|r| r["model"] == "xgboost"), "validation metrics for the drift monitor");
    // The PostgreSQL registry says the same, with v0 (never registered before) retired.
    let reg = headroom_store::pool(&url, 1, Duration::from_secs(10)).await.unwrap();
    assert_eq!(headroom_store::registry::serving(&reg, "xgboost").await.unwrap().map(|(v, _)| v), Some(v1.clone()));
    let rows = runs(&url).await;
    assert_eq!(rows[2].1, "promoted");
    assert_eq!(rows[2].2.as_deref(), Some("postgres:telemetry_raw"));

    // 2. The same data again cannot beat the new version by 50 %: rejected, v1 keeps serving.
    let mut strict = cfg.clone();
    strict.promotion.margin = 0.5;
    let rt = tokio::runtime::Handle::current();
    let rs = std::sync::Arc::new(tokio::task::spawn_blocking(move || Retrainer::connect(strict, rt)).await.unwrap().unwrap());
    let out = run(&rs, TriggerKind::Manual).await;
    assert!(matches!(&out, Outcome::Rejected { reason, .. } if reason.contains("margin")), "{out:?}");
    assert_eq!(Registry::read(&models).unwrap().serving["xgboost"], v1);
    assert_eq!(runs(&url).await[3].1, "rejected");
    let listed = headroom_store::registry::versions(&reg, "xgboost").await.unwrap();
    assert_eq!(listed.iter().filter(|v| v.status == "rejected").count(), 1, "{listed:?}");

    // 2b. PostgreSQL decides what serves; registry.json is its mirror. A registry.json that
    // names v0 while the serving v1 has left the models directory: the run fails and says why
    // (it must not promote without a comparison), and nothing is rewritten.
    let mut hand = Registry::read(&models).unwrap();
    hand.serving.insert("xgboost".into(), v0.clone());
    hand.write(&models).unwrap();
    std::fs::rename(models.join(&v1), models.join(format!(".{v1}.moved"))).unwrap();
    let out = run(&r, TriggerKind::Manual).await;
    assert!(matches!(&out, Outcome::Failed { reason } if reason.contains("no such version") && reason.contains(&v1)), "{out:?}");
    assert_eq!(Registry::read(&models).unwrap().serving["xgboost"], v0);
    assert_eq!(runs(&url).await[4].1, "failed", "the failed run is recorded");
    assert_eq!(headroom_store::registry::serving(&reg, "xgboost").await.unwrap().map(|(v, _)| v), Some(v1.clone()));
    // With v1 back, registry.json is corrected from PostgreSQL.
    std::fs::rename(models.join(format!(".{v1}.moved")), models.join(&v1)).unwrap();
    let r2 = r.clone();
    let serving = tokio::task::spawn_blocking(move || r2.serving()).await.unwrap().unwrap();
    assert_eq!(serving.as_deref(), Some(v1.as_str()));
    assert_eq!(Registry::read(&models).unwrap().serving["xgboost"], v1, "registry.json corrected");

    // 3. An empty training set fails with its reason; nothing changes.
    let empty = scratch_schema(&base).await;
    let mut ecfg = cfg.clone();
    ecfg.postgres.url = empty.clone();
    let rt = tokio::runtime::Handle::current();
    let re = std::sync::Arc::new(tokio::task::spawn_blocking(move || Retrainer::connect(ecfg, rt)).await.unwrap().unwrap());
    let out = run(&re, TriggerKind::Manual).await;
    assert!(matches!(&out, Outcome::Failed { reason } if reason.contains("empty")), "{out:?}");
    assert_eq!(Registry::read(&models).unwrap().serving["xgboost"], v1);
    assert_eq!(runs(&empty).await[0].1, "failed");

    // 4. Rollback: v0 serves again, announced.
    let rb = r.clone();
    let (from, to) = tokio::task::spawn_blocking(move || rb.rollback(None)).await.unwrap().unwrap();
    assert_eq!((from.as_str(), to.as_str()), (v1.as_str(), v0.as_str()));
    assert_eq!(headroom_store::registry::serving(&reg, "xgboost").await.unwrap().map(|(v, _)| v), Some(v0.clone()));
    let h = headroom_store::registry::history(&reg, &v1).await.unwrap();
    assert_eq!(h.last().map(|(s, _)| s.as_str()), Some("retired"), "{h:?}");
    let events = models_events(&brokers, &cfg.topics.models, 3);
    assert!(events.iter().any(|e| e.kind == ModelEventKind::RolledBack && e.version == v0));

    // 5. The service: an alert for the serving version triggers a run (coalesced with the
    //    second one), an alert for an unknown version and garbage do not.
    cfg.kafka.group_id = unique("retrainer-svc");
    let h = headroom_retrainer::start(cfg.clone(), Shutdown::new()).await.unwrap();
    let _g = StopOnDrop(h.shutdown.clone());
    produce(
        &brokers,
        &cfg.topics.alerts,
        &[alert_rec(&v0, "vm-1"), alert_rec(&v0, "vm-2"), alert_rec("v-unknown", "vm-3"), Rec { key: None, payload: vec![1, 2, 3], headers: vec![] }],
    );
    let ok = eventually(Duration::from_secs(240), || {
        let text = h.metrics.render();
        text.lines().any(|l| l.starts_with("headroom_retrain_runs_total{") && l.contains("trigger=\"drift\"") && !l.ends_with(" 0"))
    })
    .await;
    assert!(ok, "a drift-triggered run: {}", h.metrics.render());
    let text = h.metrics.render();
    headroom_testkit::ops::check_exposition("retrainer", &text);
    let count = |outcome: &str| {
        text.lines()
            .find(|l| l.starts_with("headroom_retrain_alerts_total{") && l.contains(&format!("outcome=\"{outcome}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert_eq!((count("trigger"), count("unknown_model"), count("undecodable")), (2.0, 1.0, 1.0), "{text}");
    let rows = runs(&url).await;
    let drift: Vec<_> = rows.iter().filter(|r| r.0 == "drift").collect();
    assert_eq!(drift.len(), 1, "two alerts, one run: {rows:?}");
    // The alerts were committed after the run: the lag on the alerts topic reads 0.
    let alerts_topic = format!("topic=\"{}\"", cfg.topics.alerts);
    let lag_lines = |t: &str| -> Vec<String> {
        t.lines().filter(|l| l.starts_with("headroom_consumer_lag_records{") && l.contains(&alerts_topic)).map(str::to_owned).collect()
    };
    let caught_up = eventually(Duration::from_secs(30), || {
        let lines = lag_lines(&h.metrics.render());
        !lines.is_empty() && lines.iter().all(|l| l.ends_with(" 0"))
    })
    .await;
    assert!(caught_up, "the retrainer exports its lag: {:?}", lag_lines(&h.metrics.render()));
    h.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&models);
}

/// An open drift alert on `version`, Confluent-framed.
fn alert_rec(version: &str, entity: &str) -> Rec {
    let a = DriftAlert {
        alert_id: alert_id(DriftKind::ModelError, "cpu@15m", entity, version, 0),
        entity_id: Some(entity.into()),
        ts_ms: 1,
        kind: DriftKind::ModelError,
        subject: "cpu@15m".into(),
        statistic: "page_hinkley".into(),
        value: 30.0,
        threshold: 20.0,
        severity: Severity::Critical,
        model_version: Some(version.into()),
        state: AlertState::Open,
        ..DriftAlert::default()
    };
    let mut payload = Vec::new();
    a.encode_framed(&mut payload);
    Rec { key: Some(entity.as_bytes().to_vec()), payload, headers: vec![] }
}

/// The service stopped during a long drift-triggered run: the stop ends the run within
/// seconds (not when the fit would have ended), the run is recorded interrupted, the alert
/// stays uncommitted, and the restarted service runs again on it, to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_run_ends_it_promptly_and_its_alerts_run_again_after_a_restart() {
    headroom_testkit::init_test_logging();
    let (brokers, url, models, mut cfg) = scratch("retrain-stop").await;
    store_telemetry(&url, &generate(8, 3, 11)).await;
    let v0 = weak_version(&cfg);
    produce(&brokers, &cfg.topics.alerts, &[alert_rec(&v0, "vm-1")]);

    // A fit of 100 000 rounds without early stopping: hours, unless the stop ends it.
    let mut long = cfg.clone();
    long.training.rounds = 100_000;
    long.training.early_stopping_rounds = 0;
    let h = headroom_retrainer::start(long, Shutdown::new()).await.unwrap();
    let guard = StopOnDrop(h.shutdown.clone());
    let fitting = rows_until(&url, Duration::from_secs(120), |rows| rows.iter().any(|r| r.0 == "drift" && r.1 == "running")).await;
    assert!(fitting, "a drift-triggered run started: {:?}", runs(&url).await);
    // Into the fit (the data is loaded in well under a second here).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(60), h.stop()).await.expect("the service stops within a minute of the request").unwrap();
    let took = t.elapsed();
    drop(guard);
    let rows = runs(&url).await;
    assert_eq!(rows.iter().map(|r| (r.0.as_str(), r.1.as_str())).collect::<Vec<_>>(), vec![("drift", "interrupted")], "{rows:?}");
    assert_eq!(Registry::read(&models).unwrap().serving["xgboost"], v0, "the serving version was not changed");

    // Restarted in the same group: the alert was not committed, so it triggers a run again.
    cfg.training.rounds = 20;
    let h = headroom_retrainer::start(cfg.clone(), Shutdown::new()).await.unwrap();
    let _g = StopOnDrop(h.shutdown.clone());
    let finished = rows_until(&url, Duration::from_secs(240), |rows| rows.iter().any(|r| r.0 == "drift" && r.1 != "running" && r.1 != "interrupted")).await;
    let rows = runs(&url).await;
    assert!(finished, "the alert ran again after the restart: {rows:?}");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(matches!(rows[1].1.as_str(), "promoted" | "rejected"), "{rows:?}");
    h.stop().await.unwrap();
    eprintln!("RESULT retrain_stop stop_s={:.2}", took.as_secs_f64());
    let _ = std::fs::remove_dir_all(&models);
}

/// Whether `ok` holds of the recorded runs within `timeout`.
async fn rows_until(url: &str, timeout: Duration, ok: impl Fn(&[(String, String, Option<String>, Option<String>)]) -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if ok(&runs(url).await) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `headroom-retrain run` on a long fit, then Ctrl-C (SIGINT): the command ends within seconds,
/// exits non-zero saying the run was stopped, and the run is recorded interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_command_stops_on_ctrl_c_and_records_the_run_interrupted() {
    let (brokers, url, models, cfg) = scratch("retrain-cli").await;
    store_telemetry(&url, &generate(8, 3, 13)).await;
    let v0 = weak_version(&cfg);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_headroom-retrain"))
        .arg("run")
        .env("HEADROOM_RETRAIN__POSTGRES__URL", &url)
        .env("HEADROOM_RETRAIN__KAFKA__BROKERS", &brokers)
        .env("HEADROOM_RETRAIN__TOPICS__MODELS", &cfg.topics.models)
        .env("HEADROOM_RETRAIN__MODELS__DIR", &models)
        .env("HEADROOM_RETRAIN__DATA__WINDOW", "3d")
        .env("HEADROOM_RETRAIN__DATA__MIN_TRAIN_ROWS", "1000")
        .env("HEADROOM_RETRAIN__DATA__MIN_HOLDOUT_ROWS", "200")
        .env("HEADROOM_RETRAIN__TRAINING__ROUNDS", "100000")
        .env("HEADROOM_RETRAIN__TRAINING__EARLY_STOPPING_ROUNDS", "0")
        .env("HEADROOM_RETRAIN__TRAINING__THREADS", "2")
        .env("HEADROOM_RETRAIN__TRAINING__CLASSIFIER", "false")
        .env("HEADROOM_RETRAIN__TRAINING__DEVICE", "cpu")
        .env("HEADROOM_RETRAIN__TRAINING__NEURAL__FAMILIES", "[]")
        .env("HEADROOM_RETRAIN__LOG__LEVEL", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn headroom-retrain");
    let fitting = rows_until(&url, Duration::from_secs(120), |rows| rows.iter().any(|r| r.0 == "manual" && r.1 == "running")).await;
    assert!(fitting, "the run started: {:?}", runs(&url).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = std::time::Instant::now();
    let sent = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    let took = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a stopped run is not a success");
    assert!(stderr.contains("stopped before it finished"), "{stderr}");
    assert!(took < Duration::from_secs(60), "the command took {took:?} to stop");
    let rows = runs(&url).await;
    assert_eq!(rows.iter().map(|r| (r.0.as_str(), r.1.as_str())).collect::<Vec<_>>(), vec![("manual", "interrupted")], "{rows:?}");
    assert_eq!(Registry::read(&models).unwrap().serving["xgboost"], v0);
    eprintln!("RESULT retrain_cli_stop stop_s={:.2}", took.as_secs_f64());
    let _ = std::fs::remove_dir_all(&models);
}

/// With the sink's Parquet archive reaching further back than the raw table, the training
/// window is the archived hours plus the raw rows after them: every sample once, none lost at
/// the seam, and the source says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_training_window_comes_from_the_archive_and_the_raw_tail() {
    let url = scratch_schema(&pg_url()).await;
    let all = generate(4, 3, 7);
    let newest = all.iter().map(|t| t.ts_ms).max().unwrap();
    // The archive holds every hour up to two hours before the newest sample; the raw table
    // holds only the last day (its retention), overlapping the archive by 22 hours.
    let cut = (newest / 3_600_000 - 1) * 3_600_000;
    let raw: Vec<Telemetry> = all.iter().filter(|t| t.ts_ms > newest - 86_400_000).cloned().collect();
    store_telemetry(&url, &raw).await;
    let root = std::env::temp_dir().join(unique("retrain-archive"));
    let mut hours: std::collections::BTreeMap<i64, Vec<&Telemetry>> = Default::default();
    for t in all.iter().filter(|t| t.ts_ms < cut) {
        hours.entry(t.ts_ms / 3_600_000 * 3_600_000).or_default().push(t);
    }
    for (h, rows) in &hours {
        let mut w = headroom_archive::HourWriter::create(&root, *h).unwrap();
        for (k, t) in rows.iter().enumerate() {
            w.push(headroom_archive::Row {
                entity_id: t.entity_id.clone(),
                ts_ms: t.ts_ms,
                values: [t.cpu_util, t.mem_util, t.net_in_bps, t.net_out_bps, None, None, t.cpu_cores, t.mem_bytes],
                src_offset: k as i64,
                ..headroom_archive::Row::default()
            })
            .unwrap();
        }
        w.finish().unwrap();
    }
    let pool = headroom_store::pool(&url, 1, Duration::from_secs(10)).await.unwrap();
    let window = Duration::from_secs(2 * 86_400);
    let d = headroom_retrainer::data::load(&pool, window, Some(&root)).await.unwrap();
    assert_eq!(d.source, "archive+postgres:telemetry_raw");
    assert_eq!(d.to_ms, newest);
    let want: Vec<&Telemetry> = all.iter().filter(|t| t.ts_ms > newest - 2 * 86_400_000).collect();
    assert_eq!(d.records.len(), want.len(), "every sample of the window once");
    let mut got: Vec<(String, i64)> = d.records.iter().map(|t| (t.entity_id.clone(), t.ts_ms)).collect();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), want.len(), "no duplicates at the seam");
    let cpu = |v: &mut dyn Iterator<Item = Option<f64>>| v.flatten().sum::<f64>();
    let (a, b) = (cpu(&mut d.records.iter().map(|t| t.cpu_util)), cpu(&mut want.iter().map(|t| t.cpu_util)));
    assert!((a - b).abs() < 1e-6 * b, "CPU sums {a} vs {b}");
    // Without the archive: the raw table's day only.
    let d = headroom_retrainer::data::load(&pool, window, None).await.unwrap();
    assert_eq!((d.source, d.records.len()), ("postgres:telemetry_raw", raw.len()));
    // An archive root that holds nothing yet: PostgreSQL as before.
    let empty = std::env::temp_dir().join(unique("retrain-archive-empty"));
    let d = headroom_retrainer::data::load(&pool, window, Some(&empty)).await.unwrap();
    assert_eq!(d.source, "postgres:telemetry_raw");
    let _ = std::fs::remove_dir_all(&root);
}

/// A JSON request to the MLflow server's REST API (what any MLflow client sends).
async fn mlflow_api(url: &str, method: &str, endpoint: &str, body: serde_json::Value) -> serde_json::Value {
    let c = reqwest::Client::new();
    let full = format!("{url}/api/2.0/mlflow/{endpoint}");
    let rb = if method == "GET" { c.get(full) } else { c.post(full).header("content-type", "application/json").body(body.to_string()) };
    let resp = rb.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "MLflow {endpoint}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

fn kv<'a>(run: &'a serde_json::Value, list: &str, key: &str) -> Option<&'a serde_json::Value> {
    run["data"][list].as_array()?.iter().find(|x| x["key"] == key).map(|x| &x["value"])
}

/// Every run is logged to a real MLflow tracking server (`mlflow server` from PyPI): the
/// experiment is created, a promoted run carries its parameters, holdout metrics, outcome, data
/// window and the candidate's files as artifacts; a failed run is FAILED with its reason; a run
/// a crash left running is KILLED at the next start-up; and a tracking server that is down
/// changes no outcome (it is counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_run_is_tracked_in_mlflow_and_a_dead_tracking_server_changes_nothing() {
    headroom_testkit::init_test_logging();
    let server = tokio::task::spawn_blocking(|| headroom_testkit::mlflow::MlflowServer::start(Duration::from_secs(180))).await.unwrap();
    let ml = server.url();
    let base = pg_url();
    let (_brokers, url, models, mut cfg) = scratch("retrain-mlflow").await;
    cfg.mlflow.tracking_url = ml.clone();
    cfg.mlflow.experiment = unique("headroom retrain");
    store_telemetry(&url, &generate(12, 3, 7)).await;
    let v0 = weak_version(&cfg);

    // 1. A promoted run.
    let rt = tokio::runtime::Handle::current();
    let c2 = cfg.clone();
    let r = std::sync::Arc::new(tokio::task::spawn_blocking(move || Retrainer::connect(c2, rt)).await.unwrap().unwrap());
    let Outcome::Promoted { version: v1, improvement } = run(&r, TriggerKind::Manual).await else {
        panic!("expected a promotion: {:?}", runs(&url).await)
    };
    let exp = mlflow_api(&ml, "GET", &format!("experiments/get-by-name?experiment_name={}", cfg.mlflow.experiment.replace(' ', "%20")), serde_json::json!({})).await;
    let exp_id = exp["experiment"]["experiment_id"].as_str().unwrap().to_owned();
    let found = mlflow_api(&ml, "POST", "runs/search", serde_json::json!({ "experiment_ids": [exp_id] })).await;
    let list = found["runs"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{found}");
    let run1 = &list[0];
    let run_id = run1["info"]["run_id"].as_str().unwrap().to_owned();
    assert_eq!(run1["info"]["status"], "FINISHED");
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    let (rid, mlid, train_rows, source): (String, Option<String>, Option<i64>, Option<String>) =
        sqlx::query_as("SELECT run_id, mlflow_run_id, train_rows, data_source FROM retrain_runs WHERE status = 'promoted'").fetch_one(&mut c).await.unwrap();
    assert_eq!(mlid.as_deref(), Some(run_id.as_str()), "the registry row names its MLflow run");
    assert_eq!(kv(run1, "tags", "headroom.run_id").and_then(|v| v.as_str()), Some(rid.as_str()));
    assert_eq!(kv(run1, "tags", "headroom.outcome").and_then(|v| v.as_str()), Some("promoted"));
    assert_eq!(kv(run1, "tags", "headroom.trigger").and_then(|v| v.as_str()), Some("manual"));
    assert_eq!(kv(run1, "tags", "headroom.serving_version").and_then(|v| v.as_str()), Some(v0.as_str()));
    assert_eq!(kv(run1, "tags", "headroom.candidate_version").and_then(|v| v.as_str()), Some(v1.as_str()));
    assert_eq!(kv(run1, "tags", "headroom.data_source").and_then(|v| v.as_str()), source.as_deref());
    let loc = kv(run1, "tags", "headroom.artifact_location").and_then(|v| v.as_str()).unwrap().to_owned();
    assert!(loc.starts_with("file://") && loc.ends_with(&v1), "{loc}");
    assert_eq!(kv(run1, "params", "rounds").and_then(|v| v.as_str()), Some("60"));
    assert_eq!(kv(run1, "params", "targets").and_then(|v| v.as_str()), Some("cpu,mem,net"));
    assert!(kv(run1, "params", "feature_schema").is_some());
    let metric = |k: &str| kv(run1, "metrics", k).and_then(|v| v.as_f64());
    assert!((metric("improvement").unwrap() - improvement).abs() < 1e-9, "{run1}");
    assert_eq!(metric("train_rows"), train_rows.map(|v| v as f64));
    assert!(metric("cpu_h1_mase").is_some_and(|v| v > 0.0 && v.is_finite()), "{run1}");
    // The candidate's files, byte for byte, in the run's artifacts.
    let arts = mlflow_api(&ml, "GET", &format!("artifacts/list?run_id={run_id}&path=model"), serde_json::json!({})).await;
    let files = arts["files"].as_array().unwrap();
    let local: Vec<(String, u64)> = {
        let mut v: Vec<_> = std::fs::read_dir(models.join(&v1))
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (format!("model/{}", e.file_name().to_string_lossy()), e.metadata().unwrap().len()))
            .collect();
        v.sort();
        v
    };
    let mut remote: Vec<(String, u64)> =
        files.iter().map(|f| (f["path"].as_str().unwrap().to_owned(), f["file_size"].as_u64().unwrap())).collect();
    remote.sort();
    assert_eq!(remote, local, "artifacts");
    assert!(local.iter().any(|(p, _)| p == "model/manifest.json"));
    let copied = std::fs::read(server.artifacts_dir().join(&exp_id).join(&run_id).join("artifacts/model/manifest.json")).unwrap();
    assert_eq!(copied, std::fs::read(models.join(&v1).join("manifest.json")).unwrap());
    assert_eq!(r.mlflow_errors.with_label_values(&["create_run"]).get(), 0);

    // 2. A failed run (empty training set) is FAILED in MLflow with the reason.
    let empty = scratch_schema(&base).await;
    let mut ecfg = cfg.clone();
    ecfg.postgres.url = empty.clone();
    let rt = tokio::runtime::Handle::current();
    let e2 = ecfg.clone();
    let re = std::sync::Arc::new(tokio::task::spawn_blocking(move || Retrainer::connect(e2, rt)).await.unwrap().unwrap());
    assert!(matches!(run(&re, TriggerKind::Manual).await, Outcome::Failed { .. }));
    let found = mlflow_api(&ml, "POST", "runs/search", serde_json::json!({ "experiment_ids": [exp_id], "filter": "attributes.status = 'FAILED'" })).await;
    let failed = &found["runs"].as_array().unwrap()[0];
    assert!(kv(failed, "tags", "headroom.detail").and_then(|v| v.as_str()).unwrap().contains("empty"), "{failed}");

    // 3. A run a crash left running (in the registry and in MLflow) is KILLED at start-up.
    let started = mlflow_api(&ml, "POST", "runs/create", serde_json::json!({ "experiment_id": exp_id, "start_time": 1 })).await;
    let crashed = started["run"]["info"]["run_id"].as_str().unwrap().to_owned();
    let mut c = sqlx::PgConnection::connect(&empty).await.unwrap();
    sqlx::query("INSERT INTO retrain_runs (run_id, model_name, trigger, reason, status, params, started_at, mlflow_run_id) VALUES ('crashed', 'xgboost', 'manual', 'x', 'running', '{}', now(), $1)")
        .bind(&crashed)
        .execute(&mut c)
        .await
        .unwrap();
    let rt = tokio::runtime::Handle::current();
    let e3 = ecfg.clone();
    tokio::task::spawn_blocking(move || Retrainer::connect(e3, rt)).await.unwrap().unwrap();
    let got = mlflow_api(&ml, "GET", &format!("runs/get?run_id={crashed}"), serde_json::json!({})).await;
    assert_eq!(got["run"]["info"]["status"], "KILLED", "{got}");

    // 4. A tracking server that is down: the run's outcome is what it would be, counted.
    let mut dead = ecfg.clone();
    dead.mlflow.tracking_url = format!("http://127.0.0.1:{}", headroom_testkit::free_port());
    dead.mlflow.timeout = Duration::from_secs(2);
    let rt = tokio::runtime::Handle::current();
    let rd = std::sync::Arc::new(tokio::task::spawn_blocking(move || Retrainer::connect(dead, rt)).await.unwrap().unwrap());
    let out = run(&rd, TriggerKind::Manual).await;
    assert!(matches!(&out, Outcome::Failed { reason } if reason.contains("empty")), "{out:?}");
    assert_eq!(rd.mlflow_errors.with_label_values(&["get_experiment"]).get(), 1);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM retrain_runs WHERE mlflow_run_id IS NULL AND status = 'failed'").fetch_one(&mut c).await.unwrap();
    assert_eq!(n, 1);
    let _ = std::fs::remove_dir_all(&models);
}

fn neural_opts(cell: headroom_neural::Cell, hidden: usize, epochs: usize, samples: usize) -> headroom_neural::NeuralOptions {
    headroom_neural::NeuralOptions {
        cell,
        hidden,
        layers: 1,
        dropout: 0.0,
        input_len: 12,
        targets: vec![0, 1, 2],
        max_epochs: epochs,
        patience: 2,
        samples_per_epoch: samples,
        max_valid_samples: 2_000,
        batch_size: 64,
        device: headroom_forecast::DeviceChoice::Cpu,
        ..headroom_neural::NeuralOptions::default()
    }
}

fn manifest_neural(dir: &Path) -> Vec<(String, Option<String>)> {
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    m["neural"].as_array().unwrap().iter().map(|n| (n["family"].as_str().unwrap().to_owned(), n["carried_from"].as_str().map(str::to_owned))).collect()
}

async fn neural_report(url: &str, candidate: &str) -> Vec<serde_json::Value> {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let m: String = sqlx::query_scalar("SELECT metrics::text FROM retrain_runs WHERE candidate_version = $1").bind(candidate).fetch_one(&mut c).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&m).unwrap();
    v["neural"].as_array().unwrap().clone()
}

/// The LSTM / GRU models are refitted with the candidate by the training command's code: a
/// serving LSTM that a refit beats on the holdout is replaced, a GRU the serving version lacks
/// is trained anew; a refit that is worse than the serving model leaves the serving one in the
/// candidate (carried), and the run records each family's outcome and holdout MASE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neural_models_are_refitted_and_replace_the_serving_ones_only_when_no_worse() {
    headroom_testkit::init_test_logging();
    let (_brokers, url, models, mut cfg) = scratch("retrain-nn").await;
    store_telemetry(&url, &generate(12, 3, 7)).await;
    // v0: weak XGBoost and a weak LSTM (one epoch of 256 samples, hidden 2, another fleet).
    let other = Dataset::build(
        generate(8, 2, 99),
        &DatasetOptions { features: cfg.features.clone(), horizons: cfg.horizon_slots().unwrap(), split: Split::Fraction(0.8), ..DatasetOptions::default() },
    )
    .unwrap();
    let xgb = backtest::fit(&other, &FitOptions { xgb: XgbParams { rounds: 3, nthread: 2, ..XgbParams::default() }, classifier: false, ..FitOptions::default() }, &mut Quiet).unwrap();
    let weak = headroom_neural::fit(&other, &neural_opts(headroom_neural::Cell::Lstm, 2, 1, 256), None, &mut Quiet).unwrap();
    let (m0, _) = artifact::write_with(&models, &other, &xgb, &[headroom_neural::artifact(&weak).unwrap()], None, 1_700_000_000_000).unwrap();
    Registry::promote(&models, &m0.version).unwrap();
    let v0 = m0.version;

    // 1. Refit LSTM and GRU (hidden 12, 4 epochs of 4,000 samples): the LSTM beats v0's, the GRU is new.
    let n = &mut cfg.training.neural;
    n.families = vec![headroom_neural::Cell::Lstm, headroom_neural::Cell::Gru];
    (n.hidden, n.layers, n.dropout, n.input_len, n.max_epochs, n.patience, n.samples_per_epoch, n.batch_size) = (12, 1, 0.0, 12, 4, 2, 4_000, 64);
    let rt = tokio::runtime::Handle::current();
    let c1 = cfg.clone();
    let r = std::sync::Arc::new(tokio::task::spawn_blocking(move || Retrainer::connect(c1, rt)).await.unwrap().unwrap());
    let Outcome::Promoted { version: v1, .. } = run(&r, TriggerKind::Manual).await else { panic!("expected a promotion: {:?}", runs(&url).await) };
    let rep = neural_report(&url, &v1).await;
    let lstm = rep.iter().find(|x| x["family"] == "lstm").unwrap();
    let gru = rep.iter().find(|x| x["family"] == "gru").unwrap();
    assert_eq!(lstm["outcome"], "refit", "{rep:?}");
    assert!(lstm["candidate_mase"].as_f64().unwrap() < lstm["serving_mase"].as_f64().unwrap(), "{lstm}");
    assert_eq!(gru["outcome"], "refit", "{rep:?}");
    assert!(gru["serving_mase"].is_null());
    let mut got = manifest_neural(&models.join(&v1));
    got.sort();
    assert_eq!(got, vec![("gru".to_owned(), None), ("lstm".to_owned(), None)], "both refitted, none carried");
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(models.join(&v1).join("lstm.json")).unwrap()).unwrap();
    assert_eq!(meta["architecture"]["hidden"], 12);

    // 2. A refit far weaker than v1's (one epoch of 128 samples, hidden 2): v1's LSTM is kept,
    //    carried into the candidate unchanged; the GRU is not refitted at all (not listed).
    let mut weak_cfg = cfg.clone();
    let n = &mut weak_cfg.training.neural;
    n.families = vec![headroom_neural::Cell::Lstm];
    (n.hidden, n.max_epochs, n.samples_per_epoch) = (2, 1, 128);
    weak_cfg.promotion.margin = 0.9;
    let rt = tokio::runtime::Handle::current();
    let rw = std::sync::Arc::new(tokio::task::spawn_blocking(move || Retrainer::connect(weak_cfg, rt)).await.unwrap().unwrap());
    let Outcome::Rejected { version: v2, .. } = run(&rw, TriggerKind::Manual).await else { panic!("expected a rejection: {:?}", runs(&url).await) };
    let rep = neural_report(&url, &v2).await;
    let lstm = rep.iter().find(|x| x["family"] == "lstm").unwrap();
    assert_eq!(lstm["outcome"], "kept", "{rep:?}");
    assert!(lstm["candidate_mase"].as_f64().unwrap() > lstm["serving_mase"].as_f64().unwrap(), "{lstm}");
    assert_eq!(rep.iter().find(|x| x["family"] == "gru").unwrap()["outcome"], "carried");
    let mut got = manifest_neural(&models.join(&v2));
    got.sort();
    assert_eq!(got, vec![("gru".to_owned(), Some(v1.clone())), ("lstm".to_owned(), Some(v1.clone()))]);
    assert_eq!(
        std::fs::read(models.join(&v2).join("lstm.mpk")).unwrap(),
        std::fs::read(models.join(&v1).join("lstm.mpk")).unwrap(),
        "the kept LSTM is v1's, byte for byte"
    );
    assert_eq!(Registry::read(&models).unwrap().serving["xgboost"], v1);
    let _ = v0;
    let _ = std::fs::remove_dir_all(&models);
}
