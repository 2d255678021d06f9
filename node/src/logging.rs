//! The node's log output: the filter built from `log_level` (or `RUST_LOG`), the format, colours
//! only on a terminal, and openraft's per-attempt network warnings left out.

use std::io::IsTerminal;

use tracing_subscriber::filter::EnvFilter;

use crate::config::{validate_log_filter, LogColor, LogFormat, NodeConfig};

/// openraft modules that warn once per failed attempt to reach a peer: while a follower is down
/// that is several lines per try (tens of thousands a second before the backoff of
/// `raft::reachability`). `raft::reachability` reports the same outages, one line when a peer
/// goes, one summary every few seconds while it stays away and one when it returns, so these are
/// kept at `error` unless the filter names them itself.
pub const QUIET_OPENRAFT_TARGETS: [&str; 3] = [
    "openraft::replication",
    "openraft::core::heartbeat",
    "openraft::engine::handler::replication_handler",
];

/// The filter: `RUST_LOG` if set, else `log_level`, with [`QUIET_OPENRAFT_TARGETS`] added unless
/// the filter names them.
fn filter(config: &NodeConfig) -> anyhow::Result<EnvFilter> {
    let (spec, source) = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => (spec, "RUST_LOG"),
        _ => (config.log_level.clone(), "log_level (RAFTLOG_LOG_LEVEL)"),
    };
    validate_log_filter(&spec).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    let mut filter = EnvFilter::try_new(&spec).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    for target in QUIET_OPENRAFT_TARGETS {
        if !spec.contains(target) {
            filter = filter.add_directive(format!("{target}=error").parse()?);
        }
    }
    Ok(filter)
}

/// Installs the process-wide subscriber. Logs go to standard output.
pub fn init(config: &NodeConfig) -> anyhow::Result<()> {
    let ansi = match config.log_color {
        LogColor::Always => true,
        LogColor::Never => false,
        LogColor::Auto => std::io::stdout().is_terminal(),
    };
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter(config)?)
        .with_ansi(ansi);
    match config.log_format {
        LogFormat::Json => subscriber.json().init(),
        LogFormat::Text => subscriber.init(),
    }
    Ok(())
}
