//! `raftlog-node`: runs one raftlog server node until SIGINT or SIGTERM.

use clap::Parser;
use raftlog_node::config::{Args, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let config = Args::parse().resolve()?;
    // Built by hand rather than by `#[tokio::main]`: the thread count is configuration.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime_threads())
        .enable_all()
        .build()?
        .block_on(run(config))
}

async fn run(config: raftlog_node::config::NodeConfig) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .map_err(|e| anyhow::anyhow!("bad log_level '{}': {e}", config.log_level))?;
    let subscriber = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        LogFormat::Json => subscriber.json().init(),
        LogFormat::Text => subscriber.init(),
    }
    if let Err(e) = raftlog_node::server::run(config, shutdown_signal()).await {
        // One line with the whole cause chain (not a backtrace that pushes it out of a log tail).
        tracing::error!("node failed: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
