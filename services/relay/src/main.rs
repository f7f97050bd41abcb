use std::path::PathBuf;

use clap::Parser;

/// headroom relay: the pass-through reference (decode and re-publish)
#[derive(Parser)]
#[command(version)]
struct Args {
    #[arg(long, env = "HEADROOM_RELAY_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = headroom_relay::Config::load(args.config.as_deref())?;
    headroom_runtime::observe::init_logging(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = headroom_runtime::Shutdown::new();
        shutdown.install_signal_handlers();
        headroom_relay::start(config, shutdown).await?.wait().await
    })
}
