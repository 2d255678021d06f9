//! `raftlog-node`: runs one raftlog server node until SIGINT or SIGTERM.

use raftlog_node::Args;

fn main() -> anyhow::Result<()> {
    let config = match Args::parse_or_exit().resolve() {
        Ok(config) => config,
        // One line that says it all (anyhow's report would repeat the cause as "Caused by").
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    // Built by hand rather than by `#[tokio::main]`: the thread count is configuration.
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime
        .worker_threads(config.runtime_threads())
        .enable_all();
    // Without the LIFO slot, answers that complete together leave in one write of their HTTP/2
    // connection rather than one write each (.cargo/config.toml, docs/decisions.md).
    #[cfg(tokio_unstable)]
    runtime.disable_lifo_slot();
    runtime.build()?.block_on(run(config))
}

async fn run(config: raftlog_node::NodeConfig) -> anyhow::Result<()> {
    raftlog_node::init_logging(&config)?;
    if let Err(e) = raftlog_node::run(config, shutdown_signal()).await {
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
