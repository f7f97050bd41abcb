use std::path::PathBuf;

use clap::Parser;

/// headroom drift monitor: features + forecasts -> drift.alerts (+ telemetry.dlq, and its
/// detectors' changelog drift.state)
#[derive(Parser)]
#[command(version)]
struct Args {
    /// A TOML file layered over the built-in defaults.
    #[arg(long, env = "HEADROOM_DRIFT_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = headroom_drift_monitor::Config::load(args.config.as_deref())?;
    let log = config.log.clone();
    headroom_runtime::service::run_until_signal(&log, config, headroom_drift_monitor::start)
}
