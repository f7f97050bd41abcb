use std::path::PathBuf;

use clap::Parser;

/// headroom sink: every topic -> PostgreSQL (exactly once), bad records -> telemetry.dlq
#[derive(Parser)]
#[command(version)]
struct Args {
    /// A TOML file layered over the built-in defaults.
    #[arg(long, env = "HEADROOM_SINK_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = headroom_sink::Config::load(args.config.as_deref())?;
    config.resolve_password()?;
    let log = config.log.clone();
    headroom_runtime::service::run_until_signal(&log, config, headroom_sink::start)
}
