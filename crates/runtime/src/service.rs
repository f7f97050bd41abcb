//! Starting a service: metrics, HTTP endpoints, and the processing loop on its own thread.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::kafka::RunOptions;
use crate::observe::{serve_http, Health};
use crate::{CommonConfig, Metrics, Processor, Shutdown};

/// A running service.
#[derive(Debug)]
pub struct ServiceHandle {
    pub http_addr: SocketAddr,
    pub metrics: Metrics,
    pub shutdown: Shutdown,
    join: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Dropping a handle without [`ServiceHandle::stop`] (a test that panicked) still stops the
/// loop, so the runtime that runs it can shut down.
impl Drop for ServiceHandle {
    fn drop(&mut self) {
        if self.join.is_some() {
            self.shutdown.trigger();
        }
    }
}

impl ServiceHandle {
    /// A handle for a service that runs its own loop (the sink) on `join`.
    pub fn from_parts(
        http_addr: SocketAddr,
        metrics: Metrics,
        shutdown: Shutdown,
        join: tokio::task::JoinHandle<anyhow::Result<()>>,
    ) -> ServiceHandle {
        ServiceHandle {
            http_addr,
            metrics,
            shutdown,
            join: Some(join),
        }
    }

    /// Waits until the loop ends (after [`Shutdown::trigger`], or on a fatal error).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let Some(join) = self.join.take() else {
            return Ok(());
        };
        join.await
            .map_err(|e| anyhow::anyhow!("processing thread panicked: {e}"))?
    }

    /// Triggers shutdown and waits for the drain.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        self.wait().await
    }
}

/// Starts `service`: serves `/metrics` and `/health/*` and runs the processor over `inputs`.
pub async fn start<P: Processor>(
    service: &str,
    config: CommonConfig,
    inputs: Vec<String>,
    dlq_topic: Option<String>,
    shutdown: Shutdown,
    make: impl FnOnce(&Metrics) -> anyhow::Result<P>,
) -> anyhow::Result<ServiceHandle> {
    config.validate()?;
    let metrics = Metrics::new(service);
    let health = Arc::new(Health::default());
    let http_addr = serve_http(&config.http.listen, metrics.clone(), health.clone()).await?;
    let processor = make(&metrics)?;
    let spans = match config.log.otlp_endpoint.as_str() {
        "" => None,
        url => Some(Arc::new(crate::trace::Spans::new(service, url)?)),
    };
    let opts = RunOptions {
        spans,
        service: service.to_owned(),
        input_topics: inputs,
        dlq_topic,
        config,
        metrics: metrics.clone(),
        health,
        shutdown: shutdown.clone(),
    };
    let join = tokio::task::spawn_blocking(move || crate::kafka::run(opts, processor));
    tracing::info!(service, metrics = %format!("http://{http_addr}/metrics"), "service started");
    Ok(ServiceHandle::from_parts(http_addr, metrics, shutdown, join))
}

/// The body of every service binary's `main`: logs, a small tokio runtime (the processing
/// loop has its own thread), SIGTERM/SIGINT handlers, then run until drained.
pub fn run_until_signal<C, F, Fut>(
    log: &crate::config::LogConfig,
    config: C,
    start: F,
) -> anyhow::Result<()>
where
    F: FnOnce(C, Shutdown) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<ServiceHandle>>,
{
    crate::observe::init_logging(log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = Shutdown::new();
        shutdown.install_signal_handlers();
        start(config, shutdown).await?.wait().await
    })
}
