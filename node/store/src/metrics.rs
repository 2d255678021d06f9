//! The names of the metrics the store records (through the `metrics` facade; the node's admin
//! server renders them). docs/operations.md explains each.

/// One fsync of the Raft log's WAL.
pub const FSYNC_SECONDS: &str = "raftlog_log_fsync_duration_seconds";
/// Appends one fsync of the Raft log covered.
pub const APPENDS_PER_FSYNC: &str = "raftlog_log_appends_per_fsync";
/// Time an append waits, after its write, for the fsync that covers it to start.
pub const FSYNC_WAIT_SECONDS: &str = "raftlog_log_fsync_wait_seconds";
/// The nice value the Raft log's fsync thread runs at (`fsync_thread_nice`, if it was allowed).
pub const FSYNC_THREAD_NICE: &str = "raftlog_log_fsync_thread_nice";
/// One purge of the Raft log (openraft's core waits for it).
pub const LOG_PURGE_SECONDS: &str = "raftlog_log_purge_seconds";
/// One apply call of the state machine (a run of committed entries, one RocksDB write).
pub const APPLY_SECONDS: &str = "raftlog_apply_seconds";
pub const SNAPSHOTS_BUILT: &str = "raftlog_snapshots_built_total";
pub const SNAPSHOTS_INSTALLED: &str = "raftlog_snapshots_installed_total";
pub const SNAPSHOT_SECONDS: &str = "raftlog_snapshot_build_duration_seconds";
