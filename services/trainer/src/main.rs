//! `headroom-train`: trains the forecasting models and backtests them.
//!
//! * `evaluate`: temporal split, fit on the training part, score the models and the baselines
//!   on the test part; writes the report (markdown, JSON, PNG plots) and the fitted models as a
//!   candidate version.
//! * `train`: fit on the whole trace (the last part held out for early stopping only) and write
//!   a candidate version with its report.
//! * `policy-backtest`: fit on the training part, then replay the test period's last days
//!   through the capacity policy and the simple policies it must beat.

mod bench;
mod bench_rnn;
mod plot;
mod policy_backtest;
mod prophet;
mod report;
mod source;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use headroom_features::FeatureConfig;
use headroom_forecast::backtest::{self, FitOptions, Progress};
use headroom_forecast::baselines::BaselineOptions;
use headroom_forecast::xgb::XgbParams;
use headroom_forecast::{artifact, Dataset, DatasetOptions, DeviceChoice, Split, TARGETS};
use headroom_neural::{Cell, NeuralOptions};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(version, about = "Train and backtest headroom's forecasting models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Temporal split, fit on the training part, score models and baselines on the test part.
    Evaluate(Common),
    /// Fit on the whole trace and write a candidate model version.
    Train(Common),
    /// Mark a version as serving in the models directory's registry (the scorer loads it at
    /// start-up; a running scorer switches when the promotion is announced on the models topic).
    Promote {
        version: String,
        #[arg(long, default_value = "models")]
        models_dir: PathBuf,
        /// Also promote it in this PostgreSQL model registry (registering it first when it is
        /// not there yet); the previous serving version is retired in the same transaction.
        #[arg(long, env = "HEADROOM_REGISTRY_URL")]
        registry_url: Option<String>,
    },
    /// Register a version directory in the PostgreSQL model registry (as a candidate).
    Register {
        version: String,
        #[arg(long, default_value = "models")]
        models_dir: PathBuf,
        #[arg(long, env = "HEADROOM_REGISTRY_URL")]
        registry_url: String,
    },
    /// List the versions of a family in the PostgreSQL model registry.
    Versions {
        #[arg(long, default_value = "xgboost")]
        family: String,
        #[arg(long, env = "HEADROOM_REGISTRY_URL")]
        registry_url: String,
    },
    /// Benchmark: XGBoost prediction here against Python's inplace_predict (same model, rows).
    BenchPredict(bench::BenchArgs),
    /// Benchmark: one head's training here (the retrainer's code path) against Python's
    /// xgb.train on the same rows, labels and parameters.
    BenchTrain(bench::TrainBenchArgs),
    /// Benchmark: LSTM / GRU inference on burn (one core) against ONNX Runtime (one thread)
    /// with the same architecture, weights and windows; and the carried-state mode.
    BenchRnn(bench_rnn::RnnBenchArgs),
    /// Replay the test period through features, models and the capacity policy, against a
    /// reactive threshold autoscaler, a p90 + 15 % rightsizer and static peak provisioning.
    PolicyBacktest(PolicyArgs),
}

#[derive(Args, Clone)]
struct PolicyArgs {
    #[command(flatten)]
    common: Common,
    /// Simulate the last N days of the test period.
    #[arg(long, default_value_t = 7.0)]
    last_days: f64,
    /// A TOML file with `[policy]` and `[pricing]` sections, layered over the defaults
    /// (crates/policy/default.toml, the recommender's own).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Headroom quantiles of the slack / shortfall trade-off curve.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.6,0.7,0.8,0.9,0.95,0.98,0.99")]
    quantiles: Vec<f64>,
    /// Reuse a fitted version (a directory under the models directory) instead of fitting.
    #[arg(long)]
    models_version: Option<PathBuf>,
    /// Target CPU utilizations of the second trade-off curve (at the configured quantile).
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.6,0.7,0.8,0.9,1.0")]
    target_utilizations: Vec<f64>,
}

#[derive(Args, Clone)]
struct Common {
    #[command(flatten)]
    source: source::SourceArgs,
    /// Training period: the first N days (the rest is the test period).
    #[arg(long, conflicts_with = "split")]
    train_days: Option<f64>,
    /// Training period as a fraction of the trace's time span.
    #[arg(long, default_value_t = 0.75)]
    split: f64,
    /// Forecast horizons (multiples of the sampling interval).
    #[arg(long, value_delimiter = ',', default_value = "5m,15m,30m", value_parser = humantime::parse_duration)]
    horizons: Vec<Duration>,
    /// The slot grid of the features (the entities' sampling interval).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    sampling_interval: Duration,
    /// Lags of each metric in the feature vector.
    #[arg(long, default_value_t = 24)]
    lags: u32,
    /// Use every N-th training slot (test rows are never thinned).
    #[arg(long, default_value_t = 1)]
    train_stride: usize,
    /// Targets to model.
    #[arg(long, value_delimiter = ',', default_value = "cpu,mem,net")]
    targets: Vec<String>,
    /// Boosting rounds (upper bound; early stopping on the last 10 % of the training period).
    #[arg(long, default_value_t = 300)]
    rounds: u32,
    #[arg(long, default_value_t = 8)]
    max_depth: u32,
    /// Learning rate (0.4 beat 0.1 at 300 rounds on the Bitbrains backtest: docs/design/forecasting.md).
    #[arg(long, default_value_t = 0.4)]
    eta: f64,
    /// Minimum rows (hessian) per leaf: larger values regularise.
    #[arg(long, default_value_t = 5.0)]
    min_child_weight: f64,
    #[arg(long, default_value_t = 25)]
    early_stopping_rounds: u32,
    /// XGBoost threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: u32,
    /// auto | cpu | cuda
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Skip the peak / scale-event classifier.
    #[arg(long)]
    no_classifier: bool,
    /// Learning rate of the peak / scale-event classifier.
    #[arg(long, default_value_t = 0.1)]
    classifier_eta: f64,
    /// Refit the ETS baseline at every test origin this far apart (0s: no ETS baseline). ETS
    /// is scored on those origins only, next to XGBoost and naive on the same origins.
    #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
    ets_every: Duration,
    /// Trailing window the ETS baseline is fitted on.
    #[arg(long, default_value = "2days", value_parser = humantime::parse_duration)]
    ets_window: Duration,
    /// Also fit the Prophet baseline (augurs-prophet, Prophet's Stan model under wasmtime) at
    /// the same origins as ETS. It is much slower than ETS (one Stan fit per origin and target).
    #[arg(long)]
    prophet: bool,
    /// Trailing window the Prophet baseline is fitted on (the same as ETS by default; two weeks
    /// or more adds the weekly seasonality, Prophet's own rule, at about 4 times the fit time).
    #[arg(long, default_value = "2days", value_parser = humantime::parse_duration)]
    prophet_window: Duration,
    /// Trend simulations for Prophet's intervals (its p90).
    #[arg(long, default_value_t = 200)]
    prophet_samples: u32,
    /// Trailing window of the window-percentile baseline.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    baseline_window: Duration,
    /// Where model versions are written.
    #[arg(long, default_value = "models")]
    models_dir: PathBuf,
    /// Also register the written version (as a candidate) in this PostgreSQL model registry.
    #[arg(long, env = "HEADROOM_REGISTRY_URL")]
    registry_url: Option<String>,
    /// Where the report is written (report.md, report.json, plots).
    #[arg(long, default_value = "reports/latest")]
    out: PathBuf,
    /// Entities plotted (the ones with the most CPU variance in the test period).
    #[arg(long, default_value_t = 3)]
    plots: usize,
    /// Model families to fit: xgboost, lstm, gru.
    #[arg(long, value_delimiter = ',', default_value = "xgboost,lstm,gru")]
    models: Vec<String>,
    #[command(flatten)]
    nn: NeuralArgs,
}

/// Options of the LSTM and GRU models.
#[derive(Args, Clone)]
struct NeuralArgs {
    /// Steps (sampling intervals) of history the recurrent models read.
    #[arg(long, default_value_t = 24)]
    input_len: usize,
    #[arg(long, default_value_t = 64)]
    nn_hidden: usize,
    #[arg(long, default_value_t = 2)]
    nn_layers: usize,
    #[arg(long, default_value_t = 0.1)]
    nn_dropout: f64,
    /// Read the input window in both directions.
    #[arg(long)]
    nn_bidirectional: bool,
    /// Upper bound of epochs (early stopping on the last 10 % of the training period).
    #[arg(long, default_value_t = 20)]
    nn_epochs: usize,
    /// Epochs without improvement before stopping.
    #[arg(long, default_value_t = 3)]
    nn_patience: usize,
    /// Training windows drawn per epoch (0: every training row).
    #[arg(long, default_value_t = 100_000)]
    nn_samples_per_epoch: usize,
    #[arg(long, default_value_t = 256)]
    nn_batch: usize,
    #[arg(long, default_value_t = 2e-3)]
    nn_lr: f64,
    #[arg(long, default_value_t = 7)]
    nn_seed: u64,
    /// Each model's time budget ("0s": none): no epoch starts once it is spent, and the best
    /// epoch so far is kept.
    #[arg(long, default_value = "0s", value_parser = budget)]
    nn_max_duration: std::time::Duration,
    /// Where the best weights so far and the loss history are written during training
    /// (default: `<out>/checkpoints`).
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Take the LSTM / GRU models of this model version (a directory) instead of fitting
    /// them: `evaluate` scores them again, `train` writes them into the new version beside
    /// freshly fitted XGBoost models. Their input channels, horizons and sampling interval
    /// must be this run's.
    #[arg(long)]
    neural_from: Option<PathBuf>,
}

/// A time budget: "0s" (none) or at least a second.
fn budget(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if !d.is_zero() && d < std::time::Duration::from_secs(1) {
        return Err(format!("`{s}` is under a second (0s: no budget)"));
    }
    Ok(d)
}

struct Bar {
    bar: ProgressBar,
}

impl Progress for Bar {
    fn model_started(&mut self, name: &str, rounds: u32) {
        self.bar.reset();
        self.bar.set_length(u64::from(rounds));
        self.bar.set_message(name.to_owned());
    }
    fn round(&mut self, round: u32, loss: Option<f64>) {
        self.bar.set_position(u64::from(round + 1));
        if let Some(l) = loss {
            let name = self.bar.message();
            let base = name.split(" (").next().unwrap_or("").to_owned();
            self.bar.set_message(format!("{base} (validation {l:.5})"));
        }
    }
    fn model_done(&mut self, name: &str, seconds: f64) {
        if self.bar.is_hidden() {
            eprintln!("  {name}: {seconds:.1} s");
        } else {
            self.bar.println(format!("  {name}: {seconds:.1} s"));
        }
    }
}

/// The PostgreSQL model registry from a command (one short-lived connection).
mod registry {
    pub fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
    }

    /// A pool on `url`, with the migrations applied (the registry tables among them).
    pub async fn pool(url: &str) -> anyhow::Result<sqlx::PgPool> {
        let pool = headroom_store::pool(url, 1, std::time::Duration::from_secs(10)).await?;
        headroom_store::migrate(&pool).await?;
        Ok(pool)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (args, evaluate) = match cli.command {
        Command::Evaluate(a) => (a, true),
        Command::Train(a) => (a, false),
        Command::Promote { version, models_dir, registry_url } => {
            if let Some(url) = &registry_url {
                // The database first: when it refuses, the file registry is left as it was.
                let previous = registry::block_on(async {
                    let pool = registry::pool(url).await?;
                    headroom_store::registry::register_dir(&pool, &models_dir.join(&version)).await?;
                    headroom_store::registry::promote(&pool, &version, "promoted by headroom-train").await
                })?;
                match previous.as_deref() {
                    Some(p) if p == version => eprintln!("registry: {version} already serving"),
                    p => eprintln!("registry: {version} serving, {} retired", p.unwrap_or("none")),
                }
            }
            let reg = artifact::Registry::promote(&models_dir, &version)?;
            eprintln!("serving: {:?}", reg.serving);
            return Ok(());
        }
        Command::Register { version, models_dir, registry_url } => {
            let (v, new) = registry::block_on(async {
                let pool = registry::pool(&registry_url).await?;
                headroom_store::registry::register_dir(&pool, &models_dir.join(&version)).await
            })?;
            eprintln!("{v}: {}", if new { "registered as a candidate" } else { "already registered" });
            return Ok(());
        }
        Command::Versions { family, registry_url } => {
            let list = registry::block_on(async {
                let pool = registry::pool(&registry_url).await?;
                headroom_store::registry::versions(&pool, &family).await
            })?;
            println!("version\tstatus\tfeature_schema\tartifact_uri");
            for v in list {
                println!("{}\t{}\t{}\t{}", v.version, v.status, v.feature_schema, v.artifact_uri);
            }
            return Ok(());
        }
        Command::BenchPredict(a) => return bench::run(&a),
        Command::BenchTrain(a) => return bench::train(&a),
        Command::BenchRnn(a) => return bench_rnn::run(&a),
        Command::PolicyBacktest(a) => return policy(a),
    };
    run(args, evaluate)
}

fn policy(a: PolicyArgs) -> anyhow::Result<()> {
    let overlay = match &a.policy {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("policy file {}: {e}", p.display()))?),
        None => None,
    };
    let pf = headroom_policy::PolicyFile::load(overlay.as_deref())?;
    for q in &a.quantiles {
        anyhow::ensure!((0.5..=0.999).contains(q), "--quantiles: {q} is outside [0.5, 0.999]");
    }
    for u in &a.target_utilizations {
        anyhow::ensure!(*u > 0.0 && *u <= 1.0, "--target-utilizations: {u} is outside (0, 1]");
    }
    let mut common = a.common.clone();
    // The policy reads CPU and memory forecasts only.
    common.targets = vec!["cpu".into(), "mem".into()];
    common.no_classifier = true;
    common.models = vec!["xgboost".into()];
    let (ds, models) = match &a.models_version {
        Some(dir) => {
            let ds = dataset(&common, true)?;
            let set = artifact::read_model_set(dir, ds.layout.id())?;
            eprintln!("models: {} regressors from {}", set.regressors.len(), dir.display());
            (ds, set)
        }
        None => {
            let (ds, set) = prepare(&common, true)?;
            let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
            let (manifest, dir) = artifact::write(&common.models_dir, &ds, &set, None, now_ms)?;
            eprintln!("model version {} written to {} (reuse it with --models-version)", manifest.version, dir.display());
            (ds, set)
        }
    };
    let t = Instant::now();
    let command: Vec<String> = std::env::args().collect();
    let r = policy_backtest::run(&ds, &models, &pf, a.last_days, &a.quantiles, &a.target_utilizations, &common.out, &command.join(" "))?;
    eprintln!("policy backtest of {} entities over {:.1} days in {:.1} s", r.entities, r.days, t.elapsed().as_secs_f64());
    eprintln!("report written to {}", common.out.join("policy.md").display());
    for row in &r.rows {
        println!(
            "{:24} cpu slack {:6.2} %  cpu short {:6.2} %  mem slack {:6.2} %  mem short {:6.2} %  actions {:7}  cost {:10.2} USD",
            row.policy, 100.0 * row.cpu_slack, 100.0 * row.cpu_shortfall, 100.0 * row.mem_slack, 100.0 * row.mem_shortfall, row.actions, row.cost_usd
        );
    }
    for (k, v) in &r.checks {
        println!("{}: {k}", if *v { "met" } else { "NOT MET" });
    }
    println!("{}", policy_backtest::result_line(&r));
    Ok(())
}

/// Reads the source, builds the dataset with the featurizer's code and fits the models.
fn prepare(args: &Common, evaluate: bool) -> anyhow::Result<(Dataset, backtest::ModelSet)> {
    let ds = dataset(args, evaluate)?;
    let models = fit(args, &ds)?;
    Ok((ds, models))
}

/// Reads the source and builds the dataset with the featurizer's code.
fn dataset(args: &Common, evaluate: bool) -> anyhow::Result<Dataset> {
    let interval = args.sampling_interval;
    let horizons: Vec<usize> = args
        .horizons
        .iter()
        .map(|h| {
            let n = h.as_millis() / interval.as_millis().max(1);
            anyhow::ensure!(
                n >= 1 && h.as_millis() % interval.as_millis() == 0,
                "horizon {} is not a positive multiple of the sampling interval {}",
                humantime::format_duration(*h),
                humantime::format_duration(interval)
            );
            Ok(n as usize)
        })
        .collect::<anyhow::Result<_>>()?;
    // Checked before the (long) read, so that a typo fails at once.
    target_indices(args)?;
    let features = FeatureConfig {
        sampling_interval: interval,
        lags: args.lags,
        ..FeatureConfig::default()
    };

    let started = Instant::now();
    eprintln!("reading {}", args.source.describe());
    let records = args.source.read()?;
    eprintln!("  {} records in {:.1} s", records.len(), started.elapsed().as_secs_f64());
    let split = if !evaluate {
        Split::None
    } else if let Some(d) = args.train_days {
        Split::TrainDays(d)
    } else {
        Split::Fraction(args.split)
    };
    let t = Instant::now();
    let ds = Dataset::build(
        records,
        &DatasetOptions {
            features,
            horizons,
            split,
            train_stride: args.train_stride,
            ..DatasetOptions::default()
        },
    )?;
    eprintln!(
        "features: {} entities, {} training rows, {} test rows, {} features ({}), {:.1} s",
        ds.series.len(),
        ds.train.len(),
        ds.test.len(),
        ds.layout.len(),
        ds.layout.id(),
        t.elapsed().as_secs_f64()
    );
    Ok(ds)
}

fn target_indices(args: &Common) -> anyhow::Result<Vec<usize>> {
    args.targets
        .iter()
        .map(|t| {
            TARGETS
                .iter()
                .position(|x| x == t)
                .ok_or_else(|| anyhow::anyhow!("unknown target `{t}` (known: {})", TARGETS.join(", ")))
        })
        .collect()
}

/// Fits the XGBoost models the arguments ask for on the dataset's training rows (none when
/// `--models` leaves XGBoost out).
fn fit(args: &Common, ds: &Dataset) -> anyhow::Result<backtest::ModelSet> {
    let targets = target_indices(args)?;
    if !args.models.iter().any(|m| m == "xgboost") {
        return Ok(backtest::ModelSet {
            device: headroom_forecast::Device::Cpu,
            regressors: Vec::new(),
            classifier: None,
        });
    }
    let opts = FitOptions {
        xgb: XgbParams {
            rounds: args.rounds,
            max_depth: args.max_depth,
            eta: args.eta,
            min_child_weight: args.min_child_weight,
            early_stopping_rounds: args.early_stopping_rounds,
            nthread: args.threads,
            ..XgbParams::default()
        },
        device: args.device,
        targets,
        classifier: !args.no_classifier,
        classifier_eta: args.classifier_eta,
        ..FitOptions::default()
    };
    let bar = ProgressBar::new(u64::from(args.rounds)).with_style(
        ProgressStyle::with_template("{msg:40} [{bar:30}] {pos}/{len} rounds {elapsed}")
            .expect("template")
            .progress_chars("=> "),
    );
    let mut progress = Bar { bar };
    let t = Instant::now();
    let models = backtest::fit(ds, &opts, &mut progress)?;
    progress.bar.finish_and_clear();
    eprintln!("fitted {} models on {} in {:.1} s", models.regressors.len() + usize::from(models.classifier.is_some()), models.device, t.elapsed().as_secs_f64());
    Ok(models)
}

/// One line per epoch (the neural models train two at a time, one per core).
struct Lines {
    name: String,
    epochs: u32,
    started: Instant,
}

impl Progress for Lines {
    fn model_started(&mut self, name: &str, epochs: u32) {
        self.name = name.to_owned();
        self.epochs = epochs;
        self.started = Instant::now();
    }
    fn round(&mut self, epoch: u32, loss: Option<f64>) {
        eprintln!(
            "  {} epoch {}/{}: validation pinball {:.5} ({:.0} s)",
            self.name,
            epoch + 1,
            self.epochs,
            loss.unwrap_or(f64::NAN),
            self.started.elapsed().as_secs_f64()
        );
    }
    fn model_done(&mut self, name: &str, seconds: f64) {
        eprintln!("  {name}: {seconds:.1} s");
    }
}

/// Fits the LSTM and GRU models `--models` asks for, in parallel (one core each).
fn fit_neural(args: &Common, ds: &Dataset) -> anyhow::Result<Vec<headroom_neural::Fitted>> {
    let targets = target_indices(args)?;
    let cells: Vec<Cell> = args
        .models
        .iter()
        .filter_map(|m| match m.as_str() {
            "lstm" => Some(Ok(Cell::Lstm)),
            "gru" => Some(Ok(Cell::Gru)),
            "xgboost" => None,
            other => Some(Err(anyhow::anyhow!("unknown model family `{other}` (known: xgboost, lstm, gru)"))),
        })
        .collect::<anyhow::Result<_>>()?;
    let checkpoints = args.nn.checkpoint_dir.clone().unwrap_or_else(|| args.out.join("checkpoints"));
    let n = &args.nn;
    let t = Instant::now();
    let fitted = std::thread::scope(|scope| {
        let handles: Vec<_> = cells
            .iter()
            .map(|&cell| {
                let opts = NeuralOptions {
                    cell,
                    hidden: n.nn_hidden,
                    layers: n.nn_layers,
                    dropout: n.nn_dropout,
                    bidirectional: n.nn_bidirectional,
                    input_len: n.input_len,
                    targets: targets.clone(),
                    max_epochs: n.nn_epochs,
                    patience: n.nn_patience,
                    samples_per_epoch: n.nn_samples_per_epoch,
                    batch_size: n.nn_batch,
                    learning_rate: n.nn_lr,
                    seed: n.nn_seed,
                    device: args.device,
                    max_seconds: n.nn_max_duration.as_secs(),
                    ..NeuralOptions::default()
                };
                let dir = checkpoints.clone();
                scope.spawn(move || {
                    let mut p = Lines {
                        name: String::new(),
                        epochs: 0,
                        started: Instant::now(),
                    };
                    headroom_neural::fit(ds, &opts, Some(&dir), &mut p)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("a neural training thread panicked"))?)
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    if !fitted.is_empty() {
        eprintln!("fitted {} neural models in {:.1} s", fitted.len(), t.elapsed().as_secs_f64());
    }
    Ok(fitted)
}

/// The LSTM / GRU models `--models` asks for, read from the version `dir`.
fn load_neural(args: &Common, ds: &Dataset, dir: &std::path::Path) -> anyhow::Result<Vec<headroom_neural::Fitted>> {
    args.models
        .iter()
        .filter(|m| *m == "lstm" || *m == "gru")
        .map(|fam| {
            let meta: headroom_neural::NeuralMeta = serde_json::from_slice(&std::fs::read(dir.join(format!("{fam}.json")))?)?;
            let weights = std::fs::read(dir.join(format!("{fam}.mpk")))?;
            anyhow::ensure!(
                meta.horizons_slots == ds.horizons && meta.interval_ms == ds.interval_ms,
                "{fam} in {}: horizons {:?} at {} ms, this run has {:?} at {} ms",
                dir.display(),
                meta.horizons_slots,
                meta.interval_ms,
                ds.horizons,
                ds.interval_ms
            );
            // Loading checks the channel version and the weights' shapes.
            headroom_neural::Predictor::new(&headroom_neural::Fitted { meta: meta.clone(), weights: weights.clone() })?;
            eprintln!("{fam}: read from {} (trained {} epochs, best {})", dir.display(), meta.epochs, meta.best_epoch);
            Ok(headroom_neural::Fitted { meta, weights })
        })
        .collect()
}

fn run(args: Common, evaluate: bool) -> anyhow::Result<()> {
    let (ds, models) = prepare(&args, evaluate)?;
    let neural = match &args.nn.neural_from {
        Some(dir) => load_neural(&args, &ds, dir)?,
        None => fit_neural(&args, &ds)?,
    };
    let interval = args.sampling_interval;
    let slots = |d: Duration| (d.as_millis() / interval.as_millis()).max(1) as usize;
    let baseline = BaselineOptions {
        season_slots: slots(Duration::from_secs(86_400)),
        window_slots: slots(args.baseline_window),
        origin_every_slots: if args.ets_every.is_zero() { 0 } else { slots(args.ets_every) },
        ets_window_slots: slots(args.ets_window),
    };
    let result = if evaluate {
        let t = Instant::now();
        let plot_entities = report::most_variable(&ds, args.plots);
        let ets = headroom_forecast::baselines::Ets { window_slots: baseline.ets_window_slots };
        let prophet = args.prophet.then(|| prophet::ProphetBaseline::new(slots(args.prophet_window), args.prophet_samples));
        let mut origin_models: Vec<&dyn headroom_forecast::baselines::OriginModel> = vec![&ets];
        if let Some(p) = &prophet {
            origin_models.push(p);
        }
        let mut b = backtest::backtest_with(&ds, &models, &baseline, &plot_entities, &origin_models)?;
        for f in &b.origin_fits {
            eprintln!(
                "  {} on {}: {} origins fitted in {:.1} s ({} failed, scored as naive)",
                f.model, f.target, f.origins, f.secs, f.failed
            );
        }
        for f in &neural {
            let t = Instant::now();
            let p = headroom_neural::Predictor::new(f)?;
            b.rows.extend(headroom_neural::score(&ds, &p)?);
            eprintln!("  {} scored (full window and carried state) in {:.1} s", f.meta.family, t.elapsed().as_secs_f64());
        }
        // Per target: every model at each horizon together, the ETS-origin rows last.
        b.rows.sort_by_key(|r| (TARGETS.iter().position(|t| *t == r.target), r.model.contains('@'), r.horizon_slots));
        eprintln!("backtest on {} test rows in {:.1} s", b.test_rows, t.elapsed().as_secs_f64());
        Some(b)
    } else {
        None
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let artifacts = neural.iter().map(headroom_neural::artifact).collect::<anyhow::Result<Vec<_>>>()?;
    let (manifest, dir) = artifact::write_with(&args.models_dir, &ds, &models, &artifacts, result.as_ref(), now_ms)?;
    if let Some(url) = &args.registry_url {
        registry::block_on(async { headroom_store::registry::register_dir(&registry::pool(url).await?, &dir).await })?;
        eprintln!("model version {} registered as a candidate in {}", manifest.version, headroom_store::redact(url));
    }
    let command: Vec<String> = std::env::args().collect();
    report::write(&args.out, &ds, &models, result.as_ref(), &manifest, &command.join(" "))?;
    eprintln!("model version {} written to {}", manifest.version, dir.display());
    eprintln!("report written to {}", args.out.join("report.md").display());
    if let Some(b) = &result {
        print!("{}", report::summary(b));
    }
    Ok(())
}
