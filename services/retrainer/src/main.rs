use std::path::PathBuf;

use clap::{Parser, Subcommand};
use headroom_retrainer::{Config, Outcome, Retrainer, Trigger, TriggerKind};

/// headroom retrainer: drift.alerts -> retrain, validate, promote -> models
#[derive(Parser)]
#[command(version)]
struct Args {
    /// A TOML file layered over the built-in defaults.
    #[arg(long, env = "HEADROOM_RETRAIN_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default): consume drift alerts, retrain on triggers and on schedule.
    Serve,
    /// Retrain now (a manual trigger), wait for the outcome, print it.
    Run {
        #[arg(long, default_value = "manual trigger")]
        reason: String,
    },
    /// Make the previous serving version (or --to VERSION) serve again, and announce it.
    Rollback {
        #[arg(long)]
        to: Option<String>,
    },
    /// The most recent runs from the registry.
    Runs {
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
}

/// started, trigger, status, candidate, improvement, seconds, detail
type RunRow = (String, String, String, Option<String>, Option<f64>, Option<f64>, Option<String>);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::load(args.config.as_deref())?;
    let log = config.log.clone();
    match args.command.unwrap_or(Command::Serve) {
        Command::Serve => headroom_runtime::service::run_until_signal(&log, config, headroom_retrainer::start),
        cmd => {
            headroom_runtime::observe::init_logging(&log);
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
            let r = Retrainer::connect(config, rt.handle().clone())?;
            match cmd {
                Command::Run { reason } => {
                    // Ctrl-C or SIGTERM ends the run within a round, recorded as interrupted.
                    let stop = headroom_runtime::Shutdown::new();
                    rt.block_on(async { stop.install_signal_handlers() });
                    let outcome = r.run_stoppable(&Trigger { kind: TriggerKind::Manual, reason, alert_ids: Vec::new() }, &|| stop.is_triggered());
                    println!("{outcome:?}");
                    match outcome {
                        Outcome::Promoted { .. } | Outcome::Rejected { .. } => Ok(()),
                        Outcome::Busy => anyhow::bail!("another retrain run is in progress"),
                        Outcome::Failed { reason } => anyhow::bail!("retrain failed: {reason}"),
                        Outcome::Stopped => anyhow::bail!("the run was stopped before it finished (recorded as interrupted)"),
                    }
                }
                Command::Rollback { to } => {
                    let (from, to) = r.rollback(to.as_deref())?;
                    println!("rolled back: {from} -> {to} (announced on {})", r.cfg.topics.models);
                    Ok(())
                }
                Command::Runs { limit } => {
                    let rows: Vec<RunRow> = rt.block_on(
                        sqlx::query_as(
                            "SELECT to_char(started_at, 'YYYY-MM-DD HH24:MI:SS'), trigger, status, candidate_version, improvement, duration_s, detail
                             FROM retrain_runs WHERE model_name = $1 ORDER BY started_at DESC LIMIT $2",
                        )
                        .bind(&r.cfg.models.family)
                        .bind(limit)
                        .fetch_all(&r.pool),
                    )?;
                    for (at, trig, status, cand, imp, dur, detail) in rows {
                        println!(
                            "{at}  {trig:8} {status:11} {:32} improvement {:>7}  {:>6.1} s  {}",
                            cand.unwrap_or_else(|| "-".into()),
                            imp.map_or("-".into(), |v| format!("{:.2}%", v * 100.0)),
                            dur.unwrap_or(f64::NAN),
                            detail.unwrap_or_default()
                        );
                    }
                    Ok(())
                }
                Command::Serve => unreachable!("handled above"),
            }
        }
    }
}
