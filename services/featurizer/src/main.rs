use std::path::PathBuf;

use clap::Parser;

/// headroom featurizer: telemetry.raw -> features (+ telemetry.dlq)
#[derive(Parser)]
#[command(version)]
struct Args {
    /// A TOML file layered over the built-in defaults.
    #[arg(long, env = "HEADROOM_FEATURIZER_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = headroom_featurizer::Config::load(args.config.as_deref())?;
    headroom_runtime::observe::init_logging(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = headroom_runtime::Shutdown::new();
        shutdown.install_signal_handlers();
        headroom_featurizer::start(config, shutdown)
            .await?
            .wait()
            .await
    })
}
