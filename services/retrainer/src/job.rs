//! One retrain run: read the window, build the dataset with the featurizer's code, fit the
//! candidate with the training command's code, score candidate and serving version on the same
//! temporal holdout, then promote, reject, or fail, and record the run.
//!
//! Invariants:
//! - The PostgreSQL registry says which version serves ([`Retrainer::serving`]); registry.json
//!   is its mirror, written right after it. The serving version changes only after the
//!   candidate's directory is complete (written under a temporary name and renamed), and the
//!   promotion is announced on the models topic before the run is recorded as `promoted`; an
//!   announcement that fails restores the previous registry.
//! - A run killed midway leaves its row `running` (marked `interrupted` at the next start-up),
//!   possibly an unregistered candidate directory, and the serving version untouched.
//! - Runs are serialised across processes by a PostgreSQL advisory lock.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use headroom_forecast::artifact::{self, Registry};
use headroom_forecast::backtest::{self, is_stopped, Backtest, FitOptions, ModelSet, StopWhen, Stopped};
use headroom_forecast::baselines::BaselineOptions;
use headroom_forecast::xgb::XgbParams;
use headroom_forecast::{Dataset, DatasetOptions, Split};
use headroom_schemas::{ModelEvent, ModelEventKind};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde::Serialize;
use sqlx::PgPool;

use crate::config::Config;
use crate::data;
use crate::mlflow::{MlRun, RunStatus, Tracker};

/// The advisory lock of retrain runs: one run at a time per model family and schema (the
/// registry a run writes), whatever the number of retrainers and manual runs.
const LOCK: &str = "hashtext('headroom-retrain/' || current_schema() || '/' || $1)";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TriggerKind {
    Drift,
    Schedule,
    Manual,
}

impl TriggerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Drift => "drift",
            TriggerKind::Schedule => "schedule",
            TriggerKind::Manual => "manual",
        }
    }
}

/// Why a run happens.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub kind: TriggerKind,
    pub reason: String,
    pub alert_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Promoted { version: String, improvement: f64 },
    Rejected { version: String, improvement: f64, reason: String },
    Failed { reason: String },
    /// Another run holds the lock.
    Busy,
    /// A stop request (the service shutting down) ended the run before it finished: recorded
    /// as `interrupted`, nothing promoted, and its alerts trigger it again after a restart.
    Stopped,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Promoted { .. } => "promoted",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Failed { .. } => "failed",
            Outcome::Busy => "busy",
            Outcome::Stopped => "stopped",
        }
    }
}

/// Scores of one head (target, horizon) for both versions on the holdout.
#[derive(Debug, Clone, Serialize)]
pub struct HeadScores {
    pub target: String,
    pub horizon_slots: usize,
    pub candidate_mase: f64,
    pub serving_mase: f64,
    pub candidate_mae: f64,
    pub serving_mae: f64,
}

/// What a finished comparison found.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub heads: Vec<HeadScores>,
    /// 1 - mean(candidate MASE / serving MASE) over the heads.
    pub improvement: f64,
}

/// Compares two backtests on the same holdout.
pub fn compare(candidate: &Backtest, serving: &Backtest, family: &str) -> anyhow::Result<Comparison> {
    let mut heads = Vec::new();
    for c in candidate.rows.iter().filter(|r| r.model == family) {
        let Some(s) = serving
            .rows
            .iter()
            .find(|r| r.model == family && r.target == c.target && r.horizon_slots == c.horizon_slots)
        else {
            continue;
        };
        heads.push(HeadScores {
            target: c.target.clone(),
            horizon_slots: c.horizon_slots,
            candidate_mase: c.scores.mase,
            serving_mase: s.scores.mase,
            candidate_mae: c.scores.mae,
            serving_mae: s.scores.mae,
        });
    }
    anyhow::ensure!(!heads.is_empty(), "the candidate and the serving version share no head to compare");
    for h in &heads {
        anyhow::ensure!(
            h.candidate_mase.is_finite() && h.serving_mase.is_finite() && h.serving_mase > 0.0,
            "non-finite metrics on the holdout ({} h{}: candidate MASE {}, serving MASE {})",
            h.target,
            h.horizon_slots,
            h.candidate_mase,
            h.serving_mase
        );
    }
    let ratio = heads.iter().map(|h| h.candidate_mase / h.serving_mase).sum::<f64>() / heads.len() as f64;
    Ok(Comparison { heads, improvement: 1.0 - ratio })
}

/// Per-entity improvements of the candidate over the serving version on the holdout, and a
/// bootstrap (over entities) lower bound of their mean: the promotion gate. A candidate that is
/// better only on a few entities whose data turned to noise (where no model can do well, but a
/// fresh one predicts the mean a little better) has a low bound; one that fixes what changed is
/// better by a wide margin on those entities and the bound clears the margin.
#[derive(Debug, Clone, Serialize)]
pub struct EntityComparison {
    pub entities: usize,
    pub mean: f64,
    /// 5th percentile of the bootstrapped mean (1,000 resamples, fixed seed).
    pub lower_bound: f64,
}

/// Compares `candidate` and `serving` per entity on the holdout rows of `ds`: for each entity,
/// 1 - mean over heads of (candidate MAE / serving MAE).
pub fn compare_entities(ds: &Dataset, candidate: &ModelSet, serving: &ModelSet) -> anyhow::Result<EntityComparison> {
    let rows = &ds.test;
    let n_ent = ds.series.len();
    // Per entity: sum over heads of the ratio, and the number of heads.
    let mut ratio_sum = vec![0.0f64; n_ent];
    let mut heads = vec![0usize; n_ent];
    for r in &candidate.regressors {
        let Some(m) = headroom_forecast::TARGETS.iter().position(|t| *t == r.target) else { continue };
        let (Some(c), Some(s)) = (backtest::predict(ds, rows, candidate, m, r.horizon)?, backtest::predict(ds, rows, serving, m, r.horizon)?) else {
            continue;
        };
        let mut abs = vec![(0.0f64, 0.0f64, 0usize); n_ent];
        for i in 0..rows.len() {
            let y = ds.target(rows, i, m, r.horizon);
            if !y.is_finite() {
                continue;
            }
            let e = rows.entity[i] as usize;
            abs[e].0 += f64::from((c[i].0 - y).abs());
            abs[e].1 += f64::from((s[i].0 - y).abs());
            abs[e].2 += 1;
        }
        for (e, (ce, se, n)) in abs.into_iter().enumerate() {
            if n > 0 && se > 0.0 && ce.is_finite() {
                ratio_sum[e] += ce / se;
                heads[e] += 1;
            }
        }
    }
    let imp: Vec<f64> = ratio_sum.iter().zip(&heads).filter(|(_, h)| **h > 0).map(|(s, h)| 1.0 - s / *h as f64).collect();
    anyhow::ensure!(!imp.is_empty(), "no entity of the holdout could be scored by both versions");
    let mean = imp.iter().sum::<f64>() / imp.len() as f64;
    anyhow::ensure!(mean.is_finite(), "non-finite per-entity improvement on the holdout");
    let mut state = 0x853c_49e6_748f_ea9bu64;
    let mut means: Vec<f64> = (0..1000)
        .map(|_| {
            (0..imp.len())
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    imp[((state >> 33) as usize) % imp.len()]
                })
                .sum::<f64>()
                / imp.len() as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    Ok(EntityComparison { entities: imp.len(), mean, lower_bound: means[50] })
}

/// The run's parameters, as recorded.
#[derive(Debug, Serialize)]
struct Params<'a> {
    window: String,
    holdout: f64,
    horizons: &'a [String],
    targets: &'a [String],
    rounds: u32,
    max_depth: u32,
    eta: f64,
    classifier_eta: f64,
    min_child_weight: f64,
    early_stopping_rounds: u32,
    train_stride: usize,
    margin: f64,
    /// The LSTM / GRU families refitted (training.neural.families).
    neural: Vec<&'static str>,
    feature_schema: Option<String>,
}

/// Everything a run needs: configuration, database, producer for the models topic.
pub struct Retrainer {
    pub cfg: Config,
    pub pool: PgPool,
    pub rt: tokio::runtime::Handle,
    producer: ThreadedProducer<DefaultProducerContext>,
    /// The MLflow tracking server (`mlflow.tracking_url`), if any.
    tracker: Option<Tracker>,
    /// MLflow requests that failed, by operation (the service registers it).
    pub mlflow_errors: prometheus::IntCounterVec,
}

impl std::fmt::Debug for Retrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retrainer").field("family", &self.cfg.models.family).finish()
    }
}

fn now_ms() -> i64 {
    headroom_runtime::observe::now_ms()
}

impl Retrainer {
    /// Connects, applies the migrations, marks runs a crash left `running` as `interrupted`,
    /// and re-announces the serving version (a crash between promotion and announcement is
    /// thereby completed). Call from outside the runtime's worker threads.
    pub fn connect(cfg: Config, rt: tokio::runtime::Handle) -> anyhow::Result<Retrainer> {
        let pool = rt.block_on(headroom_store::pool(&cfg.postgres.url, 2, cfg.postgres.connect_timeout))?;
        rt.block_on(headroom_store::migrate(&pool))?;
        let producer: ThreadedProducer<DefaultProducerContext> = headroom_runtime::kafka::client_config(&cfg.kafka)
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "30000")
            .create()?;
        let tracker = Tracker::new(&cfg.mlflow)?;
        let mlflow_errors = crate::mlflow::errors_counter();
        let r = Retrainer { cfg, pool, rt, producer, tracker, mlflow_errors };
        let stale: Vec<Option<String>> = r.rt.block_on(
            sqlx::query_scalar(
                "UPDATE retrain_runs SET status = 'interrupted', finished_at = now(),
                 detail = 'the retrainer stopped during this run; the serving version was not changed by it'
                 WHERE status = 'running' AND model_name = $1 RETURNING mlflow_run_id",
            )
            .bind(&r.cfg.models.family)
            .fetch_all(&r.pool),
        )?;
        if !stale.is_empty() {
            tracing::warn!(runs = stale.len(), "runs interrupted by an earlier stop marked as such");
        }
        if let Some(t) = &r.tracker {
            for id in stale.into_iter().flatten() {
                if let Err(e) = r.rt.block_on(t.finish(&id, RunStatus::Killed, now_ms())) {
                    r.mlflow_failed(&e);
                }
            }
        }
        Ok(r)
    }

    /// The version serving now. The PostgreSQL registry decides; `registry.json` is its
    /// mirror, for scorers that read files only (no `models.registry_url`). Both are brought
    /// into agreement here:
    /// - a version serving in registry.json only (promoted by `headroom-train promote` without a
    ///   registry URL, or before the registry existed) is registered and promoted in
    ///   PostgreSQL ("adopted");
    /// - a registry.json that names another version than PostgreSQL is corrected;
    /// - a PostgreSQL serving version missing from the models directory is an error: the
    ///   retrainer cannot compare a candidate with a model it cannot load.
    pub fn serving(&self) -> anyhow::Result<Option<String>> {
        let family = &self.cfg.models.family;
        let root = &self.cfg.models.dir;
        let pg = self
            .rt
            .block_on(headroom_store::registry::serving(&self.pool, family))
            .map_err(|e| e.context("reading the serving version from the PostgreSQL registry"))?
            .map(|(v, _)| v);
        let file = Registry::read(root)?.serving.get(family).cloned();
        match (pg, file) {
            (Some(v), file) => {
                if file.as_deref() != Some(v.as_str()) {
                    anyhow::ensure!(
                        root.join(&v).join(artifact::MANIFEST).exists(),
                        "the PostgreSQL registry names {v} as the serving `{family}` version, but {} has no such version",
                        root.display()
                    );
                    tracing::warn!(serving = %v, registry_json = ?file, "registry.json disagreed with the PostgreSQL registry; corrected");
                    Registry::promote(root, &v)?;
                }
                Ok(Some(v))
            }
            (None, Some(f)) => {
                tracing::info!(serving = %f, "registry.json's serving version adopted into the PostgreSQL registry");
                self.pg_promote(&f, "adopted from registry.json")?;
                Ok(Some(f))
            }
            (None, None) => Ok(None),
        }
    }

    /// Announces `version` on the models topic and waits for the broker's acknowledgement.
    pub fn announce(&self, version: &str, kind: ModelEventKind, feature_set: &str, metrics: Vec<(String, f64)>, reason: Option<String>) -> anyhow::Result<()> {
        let ev = ModelEvent {
            event_id: format!("{}-{}-{}", self.cfg.models.family, version, kind_str(kind)),
            model_name: self.cfg.models.family.clone(),
            version: version.to_owned(),
            ts_ms: now_ms(),
            kind,
            artifact_uri: version.to_owned(),
            feature_set: feature_set.to_owned(),
            metrics,
            reason,
        };
        let mut payload = Vec::new();
        ev.encode_framed(&mut payload);
        self.producer
            .send(BaseRecord::to(&self.cfg.topics.models).key(self.cfg.models.family.as_bytes()).payload(&payload))
            .map_err(|(e, _)| anyhow::anyhow!("models topic: {e}"))?;
        self.producer
            .flush(Duration::from_secs(30))
            .map_err(|e| anyhow::anyhow!("models topic: the announcement was not acknowledged: {e}"))?;
        Ok(())
    }

    /// Re-announces the serving version (idempotent for the scorers: they ignore the version
    /// they already serve).
    pub fn reannounce(&self) -> anyhow::Result<()> {
        if let Some(v) = self.serving()? {
            let schema = manifest_schema(&self.cfg.models.dir.join(&v)).unwrap_or_default();
            self.announce(&v, ModelEventKind::Promoted, &schema, Vec::new(), Some("re-announced at retrainer start-up".into()))?;
        }
        Ok(())
    }

    /// Rolls back to `to` (by default the previous serving version) and announces it.
    pub fn rollback(&self, to: Option<&str>) -> anyhow::Result<(String, String)> {
        let root = &self.cfg.models.dir;
        // registry.json agrees with PostgreSQL before its history picks the target.
        self.serving()?;
        let before = Registry::read(root)?;
        let (from, to) = Registry::rollback(root, &self.cfg.models.family, to)?;
        let pg = match self.pg_promote(&to, &format!("rolled back from {from}")) {
            Ok(p) => p,
            Err(e) => {
                before.write(root)?;
                return Err(e.context("the rollback was undone"));
            }
        };
        let schema = manifest_schema(&root.join(&to)).unwrap_or_default();
        if let Err(e) = self.announce(&to, ModelEventKind::RolledBack, &schema, Vec::new(), Some(format!("rolled back from {from}"))) {
            before.write(root)?;
            self.pg_undo(pg);
            return Err(e.context("the rollback was undone"));
        }
        Ok((from, to))
    }

    /// Promotes `version` in the PostgreSQL registry (registering its directory first when it
    /// is not there: versions written before the registry existed); returns the version it
    /// retired.
    fn pg_promote(&self, version: &str, reason: &str) -> anyhow::Result<Option<String>> {
        self.rt.block_on(async {
            headroom_store::registry::register_dir(&self.pool, &self.cfg.models.dir.join(version)).await?;
            headroom_store::registry::promote(&self.pool, version, reason).await
        })
    }

    /// Puts the version a failed promotion retired back to serving in the PostgreSQL registry.
    fn pg_undo(&self, previous: Option<String>) {
        if let Some(p) = previous {
            if let Err(e) = self.rt.block_on(headroom_store::registry::promote(&self.pool, &p, "promotion undone")) {
                tracing::error!(error = %e, version = %p, "the PostgreSQL registry could not be restored");
            }
        }
    }

    /// Runs one retrain (blocking; call from a thread that is not a runtime worker).
    pub fn run(&self, trigger: &Trigger) -> Outcome {
        self.run_stoppable(trigger, &|| false)
    }

    /// [`Retrainer::run`], ended early as [`Outcome::Stopped`] once `stop` returns true: it is
    /// asked between the run's steps, after every boosting round and every neural training
    /// batch, so a stop takes effect within seconds. A stopped run writes no candidate.
    pub fn run_stoppable(&self, trigger: &Trigger, stop: &(dyn Fn() -> bool + Sync)) -> Outcome {
        // The run may be on a thread of its own (the service's): its pooled connections are
        // returned to the pool through the runtime when dropped.
        let _rt = self.rt.enter();
        let started = Instant::now();
        let mut lock = match self.rt.block_on(self.pool.acquire()) {
            Ok(c) => c,
            Err(e) => return Outcome::Failed { reason: format!("postgres: {e}") },
        };
        let got: Result<bool, _> = self.rt.block_on(
            sqlx::query_scalar(&format!("SELECT pg_try_advisory_lock({LOCK})"))
                .bind(&self.cfg.models.family)
                .fetch_one(&mut *lock),
        );
        match got {
            Ok(true) => {}
            Ok(false) => return Outcome::Busy,
            Err(e) => return Outcome::Failed { reason: format!("postgres: {e}") },
        }
        let run_id = uuid::Uuid::new_v4().simple().to_string();
        // Not knowing the serving version fails the run (recorded), never reads as "no serving
        // version": that would promote the candidate without a comparison.
        let (serving, serving_err) = match self.serving() {
            Ok(s) => (s, None),
            Err(e) => (None, Some(format!("registry: {e:#}"))),
        };
        let params = self.params(None);
        let inserted = self.rt.block_on(
            sqlx::query(
                "INSERT INTO retrain_runs (run_id, model_name, trigger, reason, alert_ids, status, serving_version, params, started_at)
                 VALUES ($1, $2, $3, $4, $5::jsonb, 'running', $6, $7::jsonb, now())",
            )
            .bind(&run_id)
            .bind(&self.cfg.models.family)
            .bind(trigger.kind.as_str())
            .bind(&trigger.reason)
            .bind(serde_json::to_string(&trigger.alert_ids).unwrap_or_else(|_| "[]".into()))
            .bind(&serving)
            .bind(serde_json::to_string(&params).unwrap_or_else(|_| "{}".into()))
            .execute(&self.pool),
        );
        let outcome = match inserted {
            Err(e) => Outcome::Failed { reason: format!("registry: the run could not be recorded: {e}") },
            Ok(_) => {
                let ml = self.mlflow_start(&run_id, trigger, serving.as_deref(), &params);
                let mut rec = RunRecord::default();
                let outcome = match serving_err {
                    Some(reason) => Outcome::Failed { reason },
                    None => match self.run_inner(serving.as_deref(), &mut rec, stop) {
                        Ok(o) => o,
                        Err(e) if is_stopped(&e) => Outcome::Stopped,
                        Err(e) => Outcome::Failed { reason: format!("{e:#}") },
                    },
                };
                if let Some(ml) = &ml {
                    self.mlflow_finish(ml, &outcome, &rec, started.elapsed().as_secs_f64());
                }
                let (status, detail, improvement, candidate) = match &outcome {
                    Outcome::Promoted { version, improvement } => ("promoted", None, Some(*improvement), Some(version.clone())),
                    Outcome::Rejected { version, improvement, reason } => ("rejected", Some(reason.clone()), Some(*improvement), Some(version.clone())),
                    Outcome::Failed { reason } => ("failed", Some(reason.clone()), None, rec.candidate.clone()),
                    Outcome::Busy => ("failed", Some("busy".into()), None, None),
                    Outcome::Stopped => (
                        "interrupted",
                        Some("stopped by a shutdown request before it finished; the serving version was not changed by it".into()),
                        None,
                        None,
                    ),
                };
                let finished = self.rt.block_on(
                    sqlx::query(
                        "UPDATE retrain_runs SET status = $2, detail = $3, improvement = $4, candidate_version = $5,
                            metrics = $6::jsonb, data_source = $7, data_from = to_timestamp($8::float8 / 1000),
                            data_to = to_timestamp($9::float8 / 1000), train_rows = $10, holdout_rows = $11, entities = $12,
                            params = $13::jsonb, finished_at = now(), duration_s = $14
                         WHERE run_id = $1",
                    )
                    .bind(&run_id)
                    .bind(status)
                    .bind(detail)
                    .bind(improvement)
                    .bind(candidate)
                    .bind(rec.metrics.clone())
                    .bind(rec.source)
                    .bind(rec.from_ms.map(|v| v as f64))
                    .bind(rec.to_ms.map(|v| v as f64))
                    .bind(rec.train_rows)
                    .bind(rec.holdout_rows)
                    .bind(rec.entities)
                    .bind(serde_json::to_string(&self.params(rec.schema.clone())).unwrap_or_else(|_| "{}".into()))
                    .bind(started.elapsed().as_secs_f64())
                    .execute(&self.pool),
                );
                if let Err(e) = finished {
                    tracing::error!(error = %e, run = %run_id, "the run's outcome could not be recorded");
                }
                outcome
            }
        };
        self.unlock(&mut lock);
        tracing::info!(run = %run_id, trigger = trigger.kind.as_str(), outcome = ?outcome, seconds = started.elapsed().as_secs_f64(), "retrain run finished");
        outcome
    }

    /// Releases the family's run lock taken by [`Retrainer::run`].
    fn unlock(&self, lock: &mut sqlx::pool::PoolConnection<sqlx::Postgres>) {
        let _ = self.rt.block_on(
            sqlx::query(&format!("SELECT pg_advisory_unlock({LOCK})"))
                .bind(&self.cfg.models.family)
                .execute(&mut **lock),
        );
    }

    fn params(&self, schema: Option<String>) -> Params<'_> {
        let c = &self.cfg;
        Params {
            window: humantime::format_duration(c.data.window).to_string(),
            holdout: c.data.holdout,
            horizons: &c.training.horizons,
            targets: &c.training.targets,
            rounds: c.training.rounds,
            max_depth: c.training.max_depth,
            eta: c.training.eta,
            classifier_eta: c.training.classifier_eta,
            min_child_weight: c.training.min_child_weight,
            early_stopping_rounds: c.training.early_stopping_rounds,
            train_stride: c.training.train_stride,
            margin: c.promotion.margin,
            neural: c.training.neural.families.iter().map(|f| f.name()).collect(),
            feature_schema: schema,
        }
    }

    fn run_inner(&self, serving: Option<&str>, rec: &mut RunRecord, stop: &(dyn Fn() -> bool + Sync)) -> anyhow::Result<Outcome> {
        let c = &self.cfg;
        let check = || if stop() { Err(anyhow::Error::new(Stopped)) } else { Ok(()) };
        let t = Instant::now();
        let archive = (!c.data.archive_root.is_empty()).then(|| std::path::Path::new(&c.data.archive_root));
        let data = self.rt.block_on(data::load(&self.pool, c.data.window, archive))?;
        check()?;
        rec.source = Some(data.source);
        rec.from_ms = Some(data.from_ms);
        rec.to_ms = Some(data.to_ms);
        anyhow::ensure!(!data.records.is_empty(), "the training set is empty: no telemetry in the window");
        let n_records = data.records.len();
        let ds = Dataset::build(
            data.records,
            &DatasetOptions {
                features: c.features.clone(),
                horizons: c.horizon_slots()?,
                split: Split::Fraction(1.0 - c.data.holdout),
                train_stride: c.training.train_stride,
                ..DatasetOptions::default()
            },
        )?;
        rec.train_rows = Some(ds.train.len() as i64);
        rec.holdout_rows = Some(ds.test.len() as i64);
        rec.entities = Some(ds.series.len() as i32);
        rec.schema = Some(ds.layout.id().to_owned());
        tracing::info!(source = data.source, records = n_records, train = ds.train.len(), holdout = ds.test.len(), entities = ds.series.len(), seconds = t.elapsed().as_secs_f64(), "training set built");
        anyhow::ensure!(
            ds.train.len() >= c.data.min_train_rows && ds.test.len() >= c.data.min_holdout_rows,
            "the training set is too small: {} training and {} holdout rows (need {} and {}: data.min_train_rows, data.min_holdout_rows)",
            ds.train.len(),
            ds.test.len(),
            c.data.min_train_rows,
            c.data.min_holdout_rows
        );
        let opts = FitOptions {
            xgb: XgbParams {
                rounds: c.training.rounds,
                max_depth: c.training.max_depth,
                eta: c.training.eta,
                min_child_weight: c.training.min_child_weight,
                early_stopping_rounds: c.training.early_stopping_rounds,
                nthread: c.training.threads,
                ..XgbParams::default()
            },
            device: c.training.device,
            targets: c.target_indices()?,
            classifier: c.training.classifier,
            classifier_eta: c.training.classifier_eta,
            ..FitOptions::default()
        };
        check()?;
        let t = Instant::now();
        let candidate = backtest::fit(&ds, &opts, &mut StopWhen(stop))?;
        tracing::info!(models = candidate.regressors.len(), seconds = t.elapsed().as_secs_f64(), "candidate fitted");
        let slots = |d: Duration| (d.as_millis() / c.features.sampling_interval.as_millis().max(1)).max(1) as usize;
        let baselines = BaselineOptions {
            season_slots: slots(Duration::from_secs(86_400)),
            window_slots: slots(Duration::from_secs(3600)),
            origin_every_slots: 0,
            ets_window_slots: 0,
        };
        let cand_bt = backtest::backtest(&ds, &candidate, &baselines, &[])?;
        // The serving version's LSTM / GRU, and their refits (training.neural): a refit goes
        // into the candidate when it is no worse on this holdout, the serving one otherwise.
        let carried = match serving {
            Some(s) => artifact::carry_neural(&c.models.dir.join(s), ds.interval_ms).unwrap_or_else(|e| {
                tracing::warn!(error = %e, serving = s, "the serving version's neural models cannot be carried over");
                Vec::new()
            }),
            None => Vec::new(),
        };
        let t = Instant::now();
        let (neural, neural_report) = crate::neural::refit(&ds, &c.training.neural, &opts.targets, c.training.device, carried, stop)?;
        if !c.training.neural.families.is_empty() {
            tracing::info!(seconds = t.elapsed().as_secs_f64(), "neural models done");
        }
        // The last point a stop is taken: from here the run writes, registers and decides.
        check()?;
        let (_, dir) = artifact::write_with(&c.models.dir, &ds, &candidate, &neural, Some(&cand_bt), now_ms())?;
        let version = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        rec.candidate = Some(version.clone());
        self.rt.block_on(headroom_store::registry::register_dir(&self.pool, &dir))?;

        // The serving version on the same holdout. None serving: the candidate is the first.
        let (comparison, entities) = match serving {
            None => (None, None),
            Some(s) => {
                let set: ModelSet = artifact::read_model_set(&c.models.dir.join(s), ds.layout.id())
                    .map_err(|e| anyhow::anyhow!("the serving version cannot be scored on this data: {e}"))?;
                let serv_bt = backtest::backtest(&ds, &set, &baselines, &[])?;
                (Some(compare(&cand_bt, &serv_bt, &c.models.family)?), Some(compare_entities(&ds, &candidate, &set)?))
            }
        };
        // The gate: the lower bound of the per-entity improvement.
        let improvement = entities.as_ref().map_or(1.0, |x| x.lower_bound);
        rec.metrics = Some(serde_json::to_string(&serde_json::json!({
            "comparison": comparison,
            "entities": entities,
            "candidate": cand_bt.rows.iter().filter(|r| r.model == c.models.family)
                .map(|r| (format!("{}/h{}", r.target, r.horizon_slots), r.scores.mase)).collect::<BTreeMap<_, _>>(),
            "neural": neural_report,
        }))?);
        let metrics: Vec<(String, f64)> = comparison
            .iter()
            .flat_map(|x| x.heads.iter())
            .map(|h| (format!("{}_h{}_mase", h.target, h.horizon_slots), h.candidate_mase))
            .chain(std::iter::once(("improvement".to_owned(), improvement)))
            .chain(comparison.iter().map(|x| ("pooled_mase_improvement".to_owned(), x.improvement)))
            .chain(entities.iter().map(|x| ("entity_improvement_mean".to_owned(), x.mean)))
            .chain(neural_report.iter().filter_map(|n| Some((format!("{}_mase", n.family), n.candidate_mase?))))
            .chain(neural_report.iter().filter_map(|n| Some((format!("{}_serving_mase", n.family), n.serving_mase?))))
            .collect();
        rec.flat_metrics = metrics.clone();
        let schema = ds.layout.id().to_owned();
        if serving.is_some() && improvement < c.promotion.margin {
            let reason = format!(
                "candidate's per-entity improvement on the holdout: mean {:.2} %, lower bound {:.2} %, below the {:.2} % margin (pooled MASE {:.2} %)",
                entities.as_ref().map_or(f64::NAN, |x| x.mean) * 100.0,
                improvement * 100.0,
                c.promotion.margin * 100.0,
                comparison.as_ref().map_or(f64::NAN, |x| x.improvement) * 100.0
            );
            if let Err(e) = self.announce(&version, ModelEventKind::Rejected, &schema, metrics, Some(reason.clone())) {
                tracing::warn!(error = %e, "rejection not announced");
            }
            if let Err(e) = self.rt.block_on(headroom_store::registry::reject(&self.pool, &version, &reason)) {
                tracing::warn!(error = %e, "rejection not recorded in the registry");
            }
            return Ok(Outcome::Rejected { version, improvement, reason });
        }
        let reason = format!("retrained: per-entity improvement lower bound {:.2} %", improvement * 100.0);
        let pg = self.pg_promote(&version, &reason)?;
        let before = Registry::read(&c.models.dir)?;
        if let Err(e) = Registry::promote(&c.models.dir, &version) {
            self.pg_undo(pg);
            return Err(e);
        }
        if let Err(e) = self.announce(&version, ModelEventKind::Promoted, &schema, metrics, Some(reason)) {
            before.write(&c.models.dir)?;
            self.pg_undo(pg);
            anyhow::bail!("{e:#}; the promotion was undone");
        }
        Ok(Outcome::Promoted { version, improvement })
    }
}

fn kind_str(k: ModelEventKind) -> &'static str {
    match k {
        ModelEventKind::Registered => "registered",
        ModelEventKind::Promoted => "promoted",
        ModelEventKind::Rejected => "rejected",
        ModelEventKind::RolledBack => "rolled-back",
        ModelEventKind::Retired => "retired",
    }
}

fn manifest_schema(dir: &Path) -> Option<String> {
    let raw = std::fs::read(dir.join(artifact::MANIFEST)).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    v.get("feature_schema")?.as_str().map(str::to_owned)
}

#[derive(Debug, Default)]
struct RunRecord {
    source: Option<&'static str>,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    train_rows: Option<i64>,
    holdout_rows: Option<i64>,
    entities: Option<i32>,
    schema: Option<String>,
    candidate: Option<String>,
    metrics: Option<String>,
    /// The metrics announced with the outcome (per-head MASE, the improvements).
    flat_metrics: Vec<(String, f64)>,
}

/// `YYYY-MM-DD HH:MM:SS.mmm+00`.
fn utc(ms: i64) -> String {
    headroom_store::partitions::format_utc_ms(ms)
}

/// The parameters as MLflow's flat string pairs (lists joined by commas).
fn flat_params(p: &Params<'_>) -> Vec<(String, String)> {
    let v = serde_json::to_value(p).unwrap_or_default();
    let Some(obj) = v.as_object() else { return Vec::new() };
    obj.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            let s = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(a) => a.iter().map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned)).collect::<Vec<_>>().join(","),
                other => other.to_string(),
            };
            (k.clone(), s)
        })
        .collect()
}

impl Retrainer {
    fn mlflow_failed(&self, e: &crate::mlflow::MlflowError) {
        self.mlflow_errors.with_label_values(&[e.op()]).inc();
        tracing::warn!(error = %e, "MLflow tracking failed; the run goes on without it");
    }

    /// Starts the MLflow run of retrain run `run_id` (None: no tracking, or the server failed).
    fn mlflow_start(&self, run_id: &str, trigger: &Trigger, serving: Option<&str>, params: &Params<'_>) -> Option<MlRun> {
        let t = self.tracker.as_ref()?;
        let c = &self.cfg;
        let tags = vec![
            ("headroom.run_id".to_owned(), run_id.to_owned()),
            ("headroom.model_family".to_owned(), c.models.family.clone()),
            ("headroom.trigger".to_owned(), trigger.kind.as_str().to_owned()),
            ("headroom.reason".to_owned(), trigger.reason.clone()),
            ("headroom.alert_ids".to_owned(), trigger.alert_ids.join(",")),
            ("headroom.serving_version".to_owned(), serving.unwrap_or("").to_owned()),
        ];
        let r = self.rt.block_on(async {
            let ml = t.start_run(&format!("{}-{}", trigger.kind.as_str(), &run_id[..8.min(run_id.len())]), now_ms(), &tags).await?;
            t.log(&ml.run_id, &flat_params(params), &[], &[], now_ms()).await?;
            Ok::<_, crate::mlflow::MlflowError>(ml)
        });
        match r {
            Ok(ml) => {
                let stored = self.rt.block_on(
                    sqlx::query("UPDATE retrain_runs SET mlflow_run_id = $2 WHERE run_id = $1").bind(run_id).bind(&ml.run_id).execute(&self.pool),
                );
                if let Err(e) = stored {
                    tracing::warn!(error = %e, "the MLflow run id could not be recorded");
                }
                tracing::info!(mlflow_run = %ml.run_id, experiment = %ml.experiment_id, url = t.base_url(), "retrain run tracked in MLflow");
                Some(ml)
            }
            Err(e) => {
                self.mlflow_failed(&e);
                None
            }
        }
    }

    /// Logs what the run found and how it ended, copies the candidate's files, ends the run.
    fn mlflow_finish(&self, ml: &MlRun, outcome: &Outcome, rec: &RunRecord, seconds: f64) {
        let Some(t) = self.tracker.as_ref() else { return };
        let c = &self.cfg;
        let (status, detail) = match outcome {
            Outcome::Promoted { .. } => (RunStatus::Finished, String::new()),
            Outcome::Rejected { reason, .. } => (RunStatus::Finished, reason.clone()),
            Outcome::Failed { reason } => (RunStatus::Failed, reason.clone()),
            Outcome::Busy => (RunStatus::Killed, "busy".to_owned()),
            Outcome::Stopped => (RunStatus::Killed, "stopped by a shutdown request".to_owned()),
        };
        let mut metrics = rec.flat_metrics.clone();
        metrics.push(("duration_s".into(), seconds));
        metrics.extend(rec.train_rows.map(|v| ("train_rows".to_owned(), v as f64)));
        metrics.extend(rec.holdout_rows.map(|v| ("holdout_rows".to_owned(), v as f64)));
        metrics.extend(rec.entities.map(|v| ("entities".to_owned(), f64::from(v))));
        let mut tags = vec![("headroom.outcome".to_owned(), outcome.label().to_owned()), ("headroom.detail".to_owned(), detail)];
        tags.extend(rec.source.map(|s| ("headroom.data_source".to_owned(), s.to_owned())));
        tags.extend(rec.from_ms.map(|v| ("headroom.data_from".to_owned(), utc(v))));
        tags.extend(rec.to_ms.map(|v| ("headroom.data_to".to_owned(), utc(v))));
        let dir = rec.candidate.as_ref().map(|v| c.models.dir.join(v));
        if let (Some(v), Some(d)) = (&rec.candidate, &dir) {
            tags.push(("headroom.candidate_version".to_owned(), v.clone()));
            let abs = std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
            tags.push(("headroom.artifact_location".to_owned(), format!("file://{}", abs.display())));
        }
        let params: Vec<(String, String)> = rec.schema.iter().map(|s| ("feature_schema".to_owned(), s.clone())).collect();
        let r = self.rt.block_on(async {
            t.log(&ml.run_id, &params, &metrics, &tags, now_ms()).await?;
            if let Some(d) = dir.as_ref().filter(|d| d.is_dir()) {
                let n = t.upload_dir(ml, d, "model").await?;
                tracing::debug!(files = n, "candidate files copied to MLflow");
            }
            t.finish(&ml.run_id, status, now_ms()).await
        });
        if let Err(e) = r {
            self.mlflow_failed(&e);
            // Do not leave the run RUNNING when only the logging failed.
            if e.op() != "update_run" {
                let _ = self.rt.block_on(t.finish(&ml.run_id, status, now_ms()));
            }
        }
    }
}
