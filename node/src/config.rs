//! The node's typed configuration: one struct, one source of defaults, one `validate()`.
//!
//! Sources, highest precedence first: command-line flags, `RAFTLOG_*` environment variables, the
//! TOML file named by `--config`, built-in defaults. docs/raftlog-node.example.toml documents
//! every field. Configuration is resolved here once and passed down explicitly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

/// Fully resolved node configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// gRPC address to bind (Broker, Cluster and the peer Raft service).
    pub listen_addr: SocketAddr,
    /// gRPC address other nodes and clients are told to use.
    pub advertise_addr: String,
    /// Admin HTTP address (/healthz, /readyz, /status, /metrics).
    pub admin_addr: SocketAddr,
    /// Static bootstrap membership, `id=host:port` pairs. When set and this node's log is empty,
    /// the node with the smallest id initializes the cluster with it.
    pub initial_cluster: Vec<(u64, String)>,
    /// TLS on the gRPC port (clients and peers alike); `None` serves plaintext.
    pub tls: Option<TlsSettings>,
    /// Client authentication and authorization (docs/security.md).
    pub auth: AuthSettings,
    pub raft: RaftTimings,
    pub snapshot: SnapshotPolicy,
    pub limits: Limits,
    pub housekeeping: Housekeeping,
    /// RocksDB's memory (memtables and block cache) for both databases together, and whether it
    /// reads and writes its files with O_DIRECT.
    pub storage: raftlog_store::StorageOptions,
    /// Threads of the async runtime (request handling, Raft, replication); 0 means one per core.
    /// Nodes that share a machine (scripts/cluster.sh) each get a share of its cores.
    pub worker_threads: usize,
    /// Nice value of the Raft log's fsync thread (-20..=19; 0 leaves the node's own). Lowering
    /// it below the node's needs CAP_SYS_NICE; without it the node says so at start and goes on.
    pub fsync_thread_nice: i32,
    pub log_format: LogFormat,
    /// Whether log lines carry ANSI colours: `auto` when the output is a terminal.
    pub log_color: LogColor,
    /// tracing filter, e.g. "info,openraft=warn" or "debug"; RUST_LOG overrides it.
    pub log_level: String,
}

/// TLS of the gRPC port (docs/security.md). With it, the node serves only TLS, dials its peers
/// over TLS presenting its own certificate, and takes Raft traffic only from certificates of the
/// CA that name a member node (`node-<id>`).
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM file of the CA certificate(s) that sign the nodes' and the clients' certificates.
    pub ca: PathBuf,
    /// PEM file of this node's certificate (first) and any intermediates; it must carry the DNS
    /// name `node-<node_id>`.
    pub cert: PathBuf,
    /// PEM file of the private key of `cert`.
    pub key: PathBuf,
    /// Whether clients must present a certificate of the CA (peers always must).
    pub client_cert_required: bool,
    /// How often the files are checked for changes and reloaded; 0: only on SIGHUP.
    pub reload_check_ms: u64,
}

/// Client authentication and authorization (docs/security.md).
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// Every call of the client-facing services needs credentials (a bearer token or a client
    /// certificate) and a permission from the replicated ACLs.
    pub enabled: bool,
    /// Principals (`User:<name>`) that may do everything, whatever the ACLs say.
    pub super_users: Vec<String>,
    /// A file holding a token that is a super-user's (`User:bootstrap`) on this node: how the
    /// first tokens and ACL entries get created. Kept only as a hash in memory.
    pub bootstrap_token_file: Option<PathBuf>,
    /// `/metrics` and `/status` of the admin HTTP port need a bearer token with describe on the
    /// cluster. The health probes stay open.
    pub admin_token_required: bool,
}

impl TlsSettings {
    pub fn files(&self) -> [&Path; 3] {
        [&self.ca, &self.cert, &self.key]
    }
}

/// The leader's periodic replicated housekeeping (`Command::Maintenance`).
#[derive(Debug, Clone)]
pub struct Housekeeping {
    /// How often the leader proposes a retention and producer-expiry pass.
    pub retention_check_ms: u64,
    /// Idempotent producers idle this long are forgotten.
    pub producer_idle_ms: u64,
}

impl Default for Housekeeping {
    fn default() -> Self {
        Self {
            retention_check_ms: 60_000,
            producer_idle_ms: 24 * 3600 * 1000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RaftTimings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms_min: u64,
    pub election_timeout_ms_max: u64,
    /// Connect timeout to a peer.
    pub peer_connect_timeout_ms: u64,
}

#[derive(Debug, Clone)]
pub struct SnapshotPolicy {
    /// Build a snapshot after this many log entries since the last one.
    pub logs_since_last_max: u64,
    /// Log entries kept behind a snapshot at least.
    pub logs_kept_after_snapshot: u64,
    /// Build a snapshot once this many bytes of entries were appended since the last one. Small,
    /// so the log is purged while its entries are still in RocksDB's memtable and never written a
    /// second time (docs/decisions.md, "Snapshots are checkpoints").
    pub log_bytes_since_last_max: u64,
    /// Log bytes a leader keeps for a follower that is behind (down, or slow), so it catches up
    /// from the log; beyond this the log is purged anyway and that follower gets a snapshot.
    pub log_bytes_kept_for_followers_max: u64,
    /// Snapshot chunk size on the wire.
    pub chunk_bytes_max: u64,
}

/// Limits on what clients may send; every one is enforced with INVALID_ARGUMENT or
/// RESOURCE_EXHAUSTED before anything reaches the Raft log.
#[derive(Debug, Clone)]
pub struct Limits {
    pub record_bytes_max: usize,
    pub batch_bytes_max: usize,
    pub batch_records_max: usize,
    pub topic_name_bytes_max: usize,
    pub partitions_per_topic_max: u32,
    pub topics_max: u32,
    pub groups_max: u32,
    /// Most members of one coordinated consumer group.
    pub group_members_max: u32,
    /// Most queue groups in the cluster.
    pub queues_max: u32,
    /// Most records one queue may have locked at once (the bound on its `in_flight_max`).
    pub queue_in_flight_max: u32,
    /// Most records one Receive hands out.
    pub queue_receive_records_max: u32,
    /// Most topics one member may subscribe to.
    pub group_subscription_topics_max: u32,
    /// The session timeout of a group whose first member asks for none.
    pub group_session_timeout_ms_default: u32,
    /// The range a member may ask for as its group's session timeout.
    pub group_session_timeout_ms_min: u32,
    pub group_session_timeout_ms_max: u32,
    pub producers_max: u32,
    /// Most produce requests coalesced into one Raft entry (group commit); 1 turns it off.
    pub group_commit_max: usize,
    /// How long a group-commit batch smaller than the previous entry waits for more requests
    /// (`batcher`'s linger); 0 turns the wait off.
    pub group_commit_linger_ms: u64,
    /// A write is proposed within this long of reaching the node, or not at all: the deadline of
    /// a request that has none (no `grpc-timeout`), and the cap on a longer one. docs/guarantees.md
    /// ("Writes that time out") states what follows from it.
    pub write_timeout_ms_max: u64,
    pub fetch_records_max: usize,
    pub fetch_bytes_max: usize,
    /// Longest a Fetch may wait for records (long poll).
    pub fetch_wait_ms_max: u64,
    /// Messages buffered per Subscribe stream before the server waits for the client.
    pub subscribe_buffer_messages: usize,
    /// Produce is refused (RESOURCE_EXHAUSTED) while the data dir's file system has less than
    /// this available; 0 turns the check off.
    pub disk_free_bytes_min: u64,
}

/// `storage_compression` as flags, environment variables and the TOML file spell it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CompressionArg {
    #[default]
    Lz4,
    None,
}

impl From<CompressionArg> for raftlog_store::Compression {
    fn from(arg: CompressionArg) -> Self {
        match arg {
            CompressionArg::Lz4 => raftlog_store::Compression::Lz4,
            CompressionArg::None => raftlog_store::Compression::None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogColor {
    /// Colours when the log goes to a terminal, none when it goes to a file or a pipe.
    Auto,
    Always,
    Never,
}

impl Default for RaftTimings {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 150,
            election_timeout_ms_min: 750,
            election_timeout_ms_max: 1500,
            peer_connect_timeout_ms: 1000,
        }
    }
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self {
            logs_since_last_max: 20_000,
            logs_kept_after_snapshot: 0,
            log_bytes_since_last_max: 16 * 1024 * 1024,
            log_bytes_kept_for_followers_max: 2 * 1024 * 1024 * 1024,
            chunk_bytes_max: 4 * 1024 * 1024,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            record_bytes_max: 1024 * 1024,
            batch_bytes_max: 8 * 1024 * 1024,
            batch_records_max: 10_000,
            topic_name_bytes_max: 249,
            partitions_per_topic_max: 1024,
            topics_max: 10_000,
            groups_max: 10_000,
            group_members_max: 1000,
            queues_max: 1000,
            queue_in_flight_max: 100_000,
            queue_receive_records_max: 1000,
            group_subscription_topics_max: 100,
            group_session_timeout_ms_default: 10_000,
            group_session_timeout_ms_min: 1000,
            group_session_timeout_ms_max: 300_000,
            producers_max: 100_000,
            group_commit_max: 1024,
            group_commit_linger_ms: 1,
            write_timeout_ms_max: 10_000,
            fetch_records_max: 10_000,
            fetch_bytes_max: 16 * 1024 * 1024,
            fetch_wait_ms_max: 30_000,
            subscribe_buffer_messages: 4,
            disk_free_bytes_min: 1024 * 1024 * 1024,
        }
    }
}

/// Command-line flags and environment variables; the same names (snake_case) are the TOML keys.
#[derive(Debug, Default, Parser, Deserialize)]
#[command(
    name = "raftlog-node",
    version,
    about = "raftlog server node: a replicated, append-only log and message broker.",
    after_help = "Precedence: command-line flags > RAFTLOG_* environment variables > --config TOML file > defaults.\n\
                  Example config with every field: docs/raftlog-node.example.toml"
)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, env = "RAFTLOG_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// This node's id: a positive integer unique in the cluster.
    #[arg(long, env = "RAFTLOG_NODE_ID")]
    pub node_id: Option<u64>,
    /// Directory of this node's data [default: ./data/node-<id>].
    #[arg(long, env = "RAFTLOG_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:8051; below the kernel's ephemeral port range, so
    /// that no outgoing connection on this host can take it while the node is down].
    #[arg(long, env = "RAFTLOG_LISTEN_ADDR", value_parser = parse_bind_addr)]
    #[serde(default, deserialize_with = "deserialize_bind_addr")]
    pub listen_addr: Option<SocketAddr>,
    /// gRPC address advertised to peers and clients [default: the listen address].
    #[arg(long, env = "RAFTLOG_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Admin HTTP listen address [default: 127.0.0.1:9091].
    #[arg(long, env = "RAFTLOG_ADMIN_ADDR", value_parser = parse_bind_addr)]
    #[serde(default, deserialize_with = "deserialize_bind_addr")]
    pub admin_addr: Option<SocketAddr>,
    /// Static initial membership, e.g. "1=127.0.0.1:8051,2=127.0.0.1:8052,3=127.0.0.1:8053".
    #[arg(long, env = "RAFTLOG_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// PEM file of the cluster CA's certificate(s); with tls_cert and tls_key it turns TLS on
    /// for the gRPC port, clients and peers alike [default: none, plaintext].
    #[arg(long, env = "RAFTLOG_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM file of this node's certificate, signed by the CA, with the DNS name node-<node_id>
    /// (and the names clients dial it by).
    #[arg(long, env = "RAFTLOG_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the private key of tls_cert.
    #[arg(long, env = "RAFTLOG_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Refuse clients without a certificate of the CA at the handshake (peers always need one)
    /// [default: false].
    #[arg(long, env = "RAFTLOG_TLS_CLIENT_CERT_REQUIRED")]
    pub tls_client_cert_required: Option<bool>,
    /// How often the TLS files are checked for changes and reloaded; 0 reloads on SIGHUP only
    /// [default: 10000].
    #[arg(long, env = "RAFTLOG_TLS_RELOAD_CHECK_MS")]
    pub tls_reload_check_ms: Option<u64>,
    /// Require authentication (a bearer token or a client certificate) and ACL permission on
    /// every client call [default: false].
    #[arg(long, env = "RAFTLOG_AUTH_ENABLED")]
    pub auth_enabled: Option<bool>,
    /// Principals that may do everything, comma-separated, e.g. "User:admin,User:ops"
    /// ("admin" is taken as "User:admin") [default: none].
    #[arg(long, env = "RAFTLOG_SUPER_USERS")]
    pub super_users: Option<String>,
    /// File holding a bootstrap token (at least 32 characters): a super-user, User:bootstrap,
    /// for creating the first tokens and ACL entries. Needs auth_enabled [default: none].
    #[arg(long, env = "RAFTLOG_BOOTSTRAP_TOKEN_FILE")]
    pub bootstrap_token_file: Option<PathBuf>,
    /// Require a bearer token with describe on the cluster for the admin HTTP port's /metrics and
    /// /status (health probes stay open). Needs auth_enabled [default: auth_enabled].
    #[arg(long, env = "RAFTLOG_ADMIN_TOKEN_REQUIRED")]
    pub admin_token_required: Option<bool>,
    /// Raft heartbeat interval [default: 150].
    #[arg(long, env = "RAFTLOG_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Minimum election timeout [default: 750].
    #[arg(long, env = "RAFTLOG_ELECTION_TIMEOUT_MS_MIN")]
    pub election_timeout_ms_min: Option<u64>,
    /// Maximum election timeout [default: 1500].
    #[arg(long, env = "RAFTLOG_ELECTION_TIMEOUT_MS_MAX")]
    pub election_timeout_ms_max: Option<u64>,
    /// Build a snapshot after this many entries since the last [default: 20000].
    #[arg(long, env = "RAFTLOG_SNAPSHOT_LOGS_SINCE_LAST_MAX")]
    pub snapshot_logs_since_last_max: Option<u64>,
    /// Entries kept in the log behind a snapshot at least [default: 0].
    #[arg(long, env = "RAFTLOG_SNAPSHOT_LOGS_KEPT")]
    pub snapshot_logs_kept: Option<u64>,
    /// Build a snapshot after this many bytes of log entries since the last [default: 16777216
    /// (16 MiB)].
    #[arg(long, env = "RAFTLOG_SNAPSHOT_LOG_BYTES_SINCE_LAST_MAX")]
    pub snapshot_log_bytes_since_last_max: Option<u64>,
    /// Log bytes a leader keeps for followers that are behind, before it purges anyway and sends
    /// them a snapshot [default: 2147483648 (2 GiB)].
    #[arg(long, env = "RAFTLOG_LOG_BYTES_KEPT_FOR_FOLLOWERS_MAX")]
    pub log_bytes_kept_for_followers_max: Option<u64>,
    /// Largest record (key + value + headers) in bytes [default: 1048576].
    #[arg(long, env = "RAFTLOG_RECORD_BYTES_MAX")]
    pub record_bytes_max: Option<usize>,
    /// Largest produce batch in bytes [default: 8388608].
    #[arg(long, env = "RAFTLOG_BATCH_BYTES_MAX")]
    pub batch_bytes_max: Option<usize>,
    /// Most records in one produce batch [default: 10000].
    #[arg(long, env = "RAFTLOG_BATCH_RECORDS_MAX")]
    pub batch_records_max: Option<usize>,
    /// Most partitions per topic [default: 1024].
    #[arg(long, env = "RAFTLOG_PARTITIONS_PER_TOPIC_MAX")]
    pub partitions_per_topic_max: Option<u32>,
    /// Most topics in the cluster [default: 10000].
    #[arg(long, env = "RAFTLOG_TOPICS_MAX")]
    pub topics_max: Option<u32>,
    /// Most consumer groups in the cluster [default: 10000].
    #[arg(long, env = "RAFTLOG_GROUPS_MAX")]
    pub groups_max: Option<u32>,
    /// Most members of one coordinated consumer group [default: 1000].
    #[arg(long, env = "RAFTLOG_GROUP_MEMBERS_MAX")]
    pub group_members_max: Option<u32>,
    /// Most queue groups in the cluster [default: 1000].
    #[arg(long, env = "RAFTLOG_QUEUES_MAX")]
    pub queues_max: Option<u32>,
    /// Most records one queue may have locked at once [default: 100000].
    #[arg(long, env = "RAFTLOG_QUEUE_IN_FLIGHT_MAX")]
    pub queue_in_flight_max: Option<u32>,
    /// Most records one queue Receive hands out [default: 1000].
    #[arg(long, env = "RAFTLOG_QUEUE_RECEIVE_RECORDS_MAX")]
    pub queue_receive_records_max: Option<u32>,
    /// Most topics one group member may subscribe to [default: 100].
    #[arg(long, env = "RAFTLOG_GROUP_SUBSCRIPTION_TOPICS_MAX")]
    pub group_subscription_topics_max: Option<u32>,
    /// A group member that has not heartbeated for this long leaves its group, unless its first
    /// member asked for another timeout [default: 10000].
    #[arg(long, env = "RAFTLOG_GROUP_SESSION_TIMEOUT_MS_DEFAULT")]
    pub group_session_timeout_ms_default: Option<u32>,
    /// Shortest session timeout a group may ask for [default: 1000].
    #[arg(long, env = "RAFTLOG_GROUP_SESSION_TIMEOUT_MS_MIN")]
    pub group_session_timeout_ms_min: Option<u32>,
    /// Longest session timeout a group may ask for [default: 300000].
    #[arg(long, env = "RAFTLOG_GROUP_SESSION_TIMEOUT_MS_MAX")]
    pub group_session_timeout_ms_max: Option<u32>,
    /// Most produce requests coalesced into one Raft entry (group commit); 1 turns it off
    /// [default: 1024].
    #[arg(long, env = "RAFTLOG_GROUP_COMMIT_MAX")]
    pub group_commit_max: Option<usize>,
    /// How long a group-commit batch smaller than the previous entry waits for more produce
    /// requests, at most; 0 turns the wait off [default: 1].
    #[arg(long, env = "RAFTLOG_GROUP_COMMIT_LINGER_MS")]
    pub group_commit_linger_ms: Option<u64>,
    /// A write not proposed within this long of reaching the node (or within its own gRPC
    /// deadline, if shorter) is answered DEADLINE_EXCEEDED and never applied [default: 10000].
    #[arg(long, env = "RAFTLOG_WRITE_TIMEOUT_MS_MAX")]
    pub write_timeout_ms_max: Option<u64>,
    /// Most idempotent producer ids tracked at once [default: 100000].
    #[arg(long, env = "RAFTLOG_PRODUCERS_MAX")]
    pub producers_max: Option<u32>,
    /// Forget an idempotent producer after this long without produce [default: 86400000 (1 day)].
    #[arg(long, env = "RAFTLOG_PRODUCER_IDLE_MS")]
    pub producer_idle_ms: Option<u64>,
    /// How often the leader runs retention and producer expiry [default: 60000].
    #[arg(long, env = "RAFTLOG_RETENTION_CHECK_MS")]
    pub retention_check_ms: Option<u64>,
    /// Refuse produce while the data dir's file system has less than this many bytes available;
    /// 0 turns the check off [default: 1073741824 (1 GiB)].
    #[arg(long, env = "RAFTLOG_DISK_FREE_BYTES_MIN")]
    pub disk_free_bytes_min: Option<u64>,
    /// RocksDB memtables of both databases together, in bytes; past it the largest is flushed
    /// [default: 134217728 (128 MiB)].
    #[arg(long, env = "RAFTLOG_STORAGE_MEMTABLE_BYTES")]
    pub storage_memtable_bytes: Option<usize>,
    /// RocksDB block cache shared by both databases (index and filter blocks included), in bytes
    /// [default: 67108864 (64 MiB)].
    #[arg(long, env = "RAFTLOG_STORAGE_BLOCK_CACHE_BYTES")]
    pub storage_block_cache_bytes: Option<usize>,
    /// RocksDB's flushes and compactions write, and record batches are read, with O_DIRECT,
    /// bypassing the page cache (the node falls back to the page cache where the file system
    /// refuses it) [default: true].
    #[arg(long, env = "RAFTLOG_STORAGE_DIRECT_IO")]
    pub storage_direct_io: Option<bool>,
    /// Compression of stored record batches: lz4 or none (for records that do not compress, e.g.
    /// compressed by their producer; saves the CPU of every flush on every node) [default: lz4].
    #[arg(long, env = "RAFTLOG_STORAGE_COMPRESSION")]
    pub storage_compression: Option<CompressionArg>,
    /// Threads of the async runtime; 0 is one per core [default: 0]. Give each node a share of
    /// the cores when several share a machine.
    #[arg(long, env = "RAFTLOG_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Nice value of the Raft log's fsync thread, -20 to 19, 0 to leave the node's own: every
    /// acknowledgement waits for that thread to start an fsync, and a lower value lets it run as
    /// soon as it is woken on a busy machine. Below the node's own needs CAP_SYS_NICE (as root,
    /// or systemd's AmbientCapabilities=CAP_SYS_NICE); without it the node logs so and goes on
    /// [default: -10].
    #[arg(long, env = "RAFTLOG_FSYNC_THREAD_NICE", allow_negative_numbers = true)]
    pub fsync_thread_nice: Option<i32>,
    /// Log output format [default: text]; the level comes from log_level (or RUST_LOG).
    #[arg(long, env = "RAFTLOG_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// ANSI colours in text logs: auto (only when the output is a terminal), always or never
    /// [default: auto].
    #[arg(long, env = "RAFTLOG_LOG_COLOR")]
    pub log_color: Option<LogColor>,
    /// Log level / filter, e.g. "info" or "info,openraft=warn,raftlog_node=debug"; the RUST_LOG
    /// environment variable overrides it [default: info,openraft=warn].
    #[arg(long, env = "RAFTLOG_LOG_LEVEL")]
    pub log_level: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Args {
    /// The command line (and `RAFTLOG_*` variables). clap names a bad value by its flag even when
    /// it came from the environment; such an error is reported under the variable's name, the
    /// one the operator actually set. Exits on an error, as clap does.
    pub fn parse_or_exit() -> Args {
        use clap::error::{ContextKind, ContextValue, ErrorKind};
        let error = match Args::try_parse() {
            Ok(args) => return args,
            Err(error) => error,
        };
        if matches!(
            error.kind(),
            ErrorKind::InvalidValue | ErrorKind::ValueValidation
        ) {
            if let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) {
                // "--batch-bytes-max <BATCH_BYTES_MAX>"
                let flag = arg.split_whitespace().next().unwrap_or(arg);
                let variable = format!(
                    "RAFTLOG_{}",
                    flag.trim_start_matches('-')
                        .replace('-', "_")
                        .to_uppercase()
                );
                let given_as_flag =
                    std::env::args().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
                if !given_as_flag && std::env::var_os(&variable).is_some() {
                    let text = error.to_string().replace(
                        &format!("for '{arg}'"),
                        &format!("for {variable} (set in the environment; the flag is {flag})"),
                    );
                    eprint!("{text}");
                    std::process::exit(2);
                }
            }
        }
        error.exit()
    }

    /// Merges flags/env (self) over the TOML file, then defaults, and validates the result.
    // Long: one line per setting, flag over file over default; split up, the reader would have to
    // look in several places to see where a setting comes from.
    pub fn resolve(self) -> Result<NodeConfig, ConfigError> {
        let file = match &self.config {
            None => Args::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source,
                })?
            }
        };
        macro_rules! pick {
            ($field:ident) => {
                self.$field.or(file.$field)
            };
        }
        let node_id = pick!(node_id).ok_or_else(|| {
            ConfigError::Invalid(
                "this node's id is required: --node-id, RAFTLOG_NODE_ID or node_id in the \
                 --config file"
                    .into(),
            )
        })?;
        let listen_addr = pick!(listen_addr)
            .unwrap_or_else(|| "127.0.0.1:8051".parse().expect("literal address"));
        let initial_cluster = match pick!(initial_cluster) {
            None => Vec::new(),
            Some(spec) => parse_initial_cluster(&spec)?,
        };
        let tls = resolve_tls(
            pick!(tls_ca),
            pick!(tls_cert),
            pick!(tls_key),
            pick!(tls_client_cert_required),
            pick!(tls_reload_check_ms),
        )?;
        let (raft_default, snap_default, limits_default) = (
            RaftTimings::default(),
            SnapshotPolicy::default(),
            Limits::default(),
        );
        let config = NodeConfig {
            node_id,
            data_dir: pick!(data_dir)
                .unwrap_or_else(|| PathBuf::from(format!("./data/node-{node_id}"))),
            listen_addr,
            advertise_addr: pick!(advertise_addr).unwrap_or_else(|| listen_addr.to_string()),
            admin_addr: pick!(admin_addr)
                .unwrap_or_else(|| "127.0.0.1:9091".parse().expect("literal address")),
            initial_cluster,
            tls,
            auth: resolve_auth(
                pick!(auth_enabled),
                pick!(super_users),
                pick!(bootstrap_token_file),
                pick!(admin_token_required),
            )?,
            raft: RaftTimings {
                heartbeat_interval_ms: pick!(heartbeat_interval_ms)
                    .unwrap_or(raft_default.heartbeat_interval_ms),
                election_timeout_ms_min: pick!(election_timeout_ms_min)
                    .unwrap_or(raft_default.election_timeout_ms_min),
                election_timeout_ms_max: pick!(election_timeout_ms_max)
                    .unwrap_or(raft_default.election_timeout_ms_max),
                peer_connect_timeout_ms: raft_default.peer_connect_timeout_ms,
            },
            snapshot: SnapshotPolicy {
                logs_since_last_max: pick!(snapshot_logs_since_last_max)
                    .unwrap_or(snap_default.logs_since_last_max),
                logs_kept_after_snapshot: pick!(snapshot_logs_kept)
                    .unwrap_or(snap_default.logs_kept_after_snapshot),
                log_bytes_since_last_max: pick!(snapshot_log_bytes_since_last_max)
                    .unwrap_or(snap_default.log_bytes_since_last_max),
                log_bytes_kept_for_followers_max: pick!(log_bytes_kept_for_followers_max)
                    .unwrap_or(snap_default.log_bytes_kept_for_followers_max),
                chunk_bytes_max: snap_default.chunk_bytes_max,
            },
            limits: Limits {
                record_bytes_max: pick!(record_bytes_max)
                    .unwrap_or(limits_default.record_bytes_max),
                batch_bytes_max: pick!(batch_bytes_max).unwrap_or(limits_default.batch_bytes_max),
                batch_records_max: pick!(batch_records_max)
                    .unwrap_or(limits_default.batch_records_max),
                partitions_per_topic_max: pick!(partitions_per_topic_max)
                    .unwrap_or(limits_default.partitions_per_topic_max),
                topics_max: pick!(topics_max).unwrap_or(limits_default.topics_max),
                groups_max: pick!(groups_max).unwrap_or(limits_default.groups_max),
                group_members_max: pick!(group_members_max)
                    .unwrap_or(limits_default.group_members_max),
                queues_max: pick!(queues_max).unwrap_or(limits_default.queues_max),
                queue_in_flight_max: pick!(queue_in_flight_max)
                    .unwrap_or(limits_default.queue_in_flight_max),
                queue_receive_records_max: pick!(queue_receive_records_max)
                    .unwrap_or(limits_default.queue_receive_records_max),
                group_subscription_topics_max: pick!(group_subscription_topics_max)
                    .unwrap_or(limits_default.group_subscription_topics_max),
                group_session_timeout_ms_default: pick!(group_session_timeout_ms_default)
                    .unwrap_or(limits_default.group_session_timeout_ms_default),
                group_session_timeout_ms_min: pick!(group_session_timeout_ms_min)
                    .unwrap_or(limits_default.group_session_timeout_ms_min),
                group_session_timeout_ms_max: pick!(group_session_timeout_ms_max)
                    .unwrap_or(limits_default.group_session_timeout_ms_max),
                producers_max: pick!(producers_max).unwrap_or(limits_default.producers_max),
                group_commit_max: pick!(group_commit_max)
                    .unwrap_or(limits_default.group_commit_max),
                group_commit_linger_ms: pick!(group_commit_linger_ms)
                    .unwrap_or(limits_default.group_commit_linger_ms),
                write_timeout_ms_max: pick!(write_timeout_ms_max)
                    .unwrap_or(limits_default.write_timeout_ms_max),
                disk_free_bytes_min: pick!(disk_free_bytes_min)
                    .unwrap_or(limits_default.disk_free_bytes_min),
                ..limits_default
            },
            housekeeping: Housekeeping {
                retention_check_ms: pick!(retention_check_ms)
                    .unwrap_or(Housekeeping::default().retention_check_ms),
                producer_idle_ms: pick!(producer_idle_ms)
                    .unwrap_or(Housekeeping::default().producer_idle_ms),
            },
            storage: raftlog_store::StorageOptions {
                memory: raftlog_store::MemoryBudget {
                    memtable_bytes: pick!(storage_memtable_bytes)
                        .unwrap_or(raftlog_store::MemoryBudget::default().memtable_bytes),
                    block_cache_bytes: pick!(storage_block_cache_bytes)
                        .unwrap_or(raftlog_store::MemoryBudget::default().block_cache_bytes),
                },
                direct_io: pick!(storage_direct_io)
                    .unwrap_or(raftlog_store::StorageOptions::default().direct_io),
                compression: pick!(storage_compression).unwrap_or_default().into(),
            },
            worker_threads: pick!(worker_threads).unwrap_or(0),
            fsync_thread_nice: pick!(fsync_thread_nice).unwrap_or(FSYNC_THREAD_NICE_DEFAULT),
            log_format: pick!(log_format).unwrap_or(LogFormat::Text),
            log_color: pick!(log_color).unwrap_or(LogColor::Auto),
            log_level: pick!(log_level).unwrap_or_else(|| "info,openraft=warn".into()),
        };
        config.validate()?;
        Ok(config)
    }
}

/// The TLS settings: none without files, all three files or an error naming what is missing.
fn resolve_tls(
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_cert_required: Option<bool>,
    reload_check_ms: Option<u64>,
) -> Result<Option<TlsSettings>, ConfigError> {
    match (ca, cert, key) {
        (None, None, None) => {
            if client_cert_required == Some(true) {
                return Err(ConfigError::Invalid(
                    "tls_client_cert_required needs TLS: set tls_ca, tls_cert and tls_key".into(),
                ));
            }
            Ok(None)
        }
        (Some(ca), Some(cert), Some(key)) => {
            let reload_check_ms = reload_check_ms.unwrap_or(TLS_RELOAD_CHECK_MS_DEFAULT);
            if reload_check_ms > 0 && reload_check_ms < 100 {
                return Err(ConfigError::Invalid(format!(
                    "tls_reload_check_ms ({reload_check_ms}) must be 0 (SIGHUP only) or at \
                     least 100"
                )));
            }
            Ok(Some(TlsSettings {
                ca,
                cert,
                key,
                client_cert_required: client_cert_required.unwrap_or(false),
                reload_check_ms,
            }))
        }
        (ca, cert, key) => {
            let missing: Vec<&str> = [("tls_ca", &ca), ("tls_cert", &cert), ("tls_key", &key)]
                .into_iter()
                .filter(|(_, v)| v.is_none())
                .map(|(name, _)| name)
                .collect();
            Err(ConfigError::Invalid(format!(
                "tls_ca, tls_cert and tls_key go together: {} missing",
                missing.join(" and ")
            )))
        }
    }
}

/// The auth settings: super-users as principals, and the settings that need auth on refused
/// without it (they would silently protect nothing).
fn resolve_auth(
    enabled: Option<bool>,
    super_users: Option<String>,
    bootstrap_token_file: Option<PathBuf>,
    admin_token_required: Option<bool>,
) -> Result<AuthSettings, ConfigError> {
    let enabled = enabled.unwrap_or(false);
    let mut principals = Vec::new();
    for name in super_users.iter().flat_map(|s| s.split(',')) {
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        let principal = raftlog_core::auth::principal(name);
        let valid = principal
            .strip_prefix("User:")
            .is_some_and(raftlog_core::auth::valid_name);
        if !valid {
            return Err(ConfigError::Invalid(format!(
                "super_users: '{name}' is not a principal (User:<name>, the name of                  [A-Za-z0-9._@-])"
            )));
        }
        principals.push(principal);
    }
    if !enabled {
        if bootstrap_token_file.is_some() {
            return Err(ConfigError::Invalid(
                "bootstrap_token_file needs auth_enabled = true".into(),
            ));
        }
        if admin_token_required == Some(true) {
            return Err(ConfigError::Invalid(
                "admin_token_required needs auth_enabled = true".into(),
            ));
        }
    }
    Ok(AuthSettings {
        enabled,
        super_users: principals,
        bootstrap_token_file,
        admin_token_required: admin_token_required.unwrap_or(enabled),
    })
}

/// How often the TLS files are checked for changes unless configured.
pub const TLS_RELOAD_CHECK_MS_DEFAULT: u64 = 10_000;

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a `log_level` filter: every directive is a level, or `target=level`. A bare word that
/// is not a level ("verbose", "infoo") would otherwise be taken as a target name and silently
/// enable nothing the operator meant.
pub fn validate_log_filter(filter: &str) -> Result<(), String> {
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = match directive.rsplit_once('=') {
            Some((_, level)) => level,
            None => directive,
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "'{directive}' in log_level '{filter}' is not a level: use one of {} or \
                 target=level (e.g. info,openraft=warn)",
                LEVELS.join(", ")
            ));
        }
        directive
            .parse::<tracing_subscriber::filter::Directive>()
            .map_err(|e| format!("'{directive}' in log_level '{filter}': {e}"))?;
    }
    Ok(())
}

/// A listen address: `IP:port`, or `host:port` with a host name that resolves (`localhost:8051`),
/// taking its first address.
pub fn parse_bind_addr(value: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    let mut resolved = value.to_socket_addrs().map_err(|e| {
        format!("'{value}' is not an address to listen on (IP:port or host:port, e.g. 0.0.0.0:8051): {e}")
    })?;
    resolved
        .next()
        .ok_or_else(|| format!("'{value}' resolves to no address"))
}

fn deserialize_bind_addr<'de, D>(deserializer: D) -> Result<Option<SocketAddr>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let value: Option<String> = Option::deserialize(deserializer)?;
    value
        .map(|v| parse_bind_addr(&v).map_err(serde::de::Error::custom))
        .transpose()
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_initial_cluster(spec: &str) -> Result<Vec<(u64, String)>, ConfigError> {
    spec.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|member| {
            let (id, addr) = member.trim().split_once('=').ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "initial cluster member '{member}' is not id=host:port"
                ))
            })?;
            let id = id.parse().map_err(|_| {
                ConfigError::Invalid(format!("initial cluster member id '{id}' is not a number"))
            })?;
            Ok((id, addr.to_string()))
        })
        .collect()
}

impl Limits {
    /// Checks the limits against each other and against what the node can carry.
    fn validate(&self) -> Result<(), String> {
        let l = self;
        if l.record_bytes_max == 0 || l.batch_bytes_max < l.record_bytes_max {
            return Err(
                "batch_bytes_max must be at least record_bytes_max, and both positive".into(),
            );
        }
        if l.batch_bytes_max > raftlog_core::limits::PEER_MESSAGE_BYTES_MAX / 2 {
            return Err(
                "batch_bytes_max must stay below half the peer message size (128 MiB)".into(),
            );
        }
        // Every write in a batch that lingers waits that long: seconds are a misplaced digit.
        if l.write_timeout_ms_max < 100 {
            return Err(format!(
                "write_timeout_ms_max ({}) must be at least 100: a write must have time to be \
                 proposed",
                l.write_timeout_ms_max
            ));
        }
        // A session shorter than a second expires members on a slow heartbeat or an election.
        if l.group_session_timeout_ms_min < 500
            || l.group_session_timeout_ms_min > l.group_session_timeout_ms_default
            || l.group_session_timeout_ms_default > l.group_session_timeout_ms_max
        {
            return Err(format!(
                "group session timeouts must satisfy 500 <= group_session_timeout_ms_min ({}) <= \
                 group_session_timeout_ms_default ({}) <= group_session_timeout_ms_max ({})",
                l.group_session_timeout_ms_min,
                l.group_session_timeout_ms_default,
                l.group_session_timeout_ms_max
            ));
        }
        if l.group_commit_linger_ms > 1000 {
            return Err(format!(
                "group_commit_linger_ms ({}) must be at most 1000 (a batch's writes all wait \
                 that long; 0 turns the wait off)",
                l.group_commit_linger_ms
            ));
        }
        Ok(())
    }
}

/// The fsync thread's nice value unless configured: ahead of the node's other threads (nice 0)
/// when it is woken, short of the top of the range, and harmless since it uses almost no CPU.
/// The wait for an fsync to start halved under load, C=1's p50 fell ~0.05 ms, C=64 rose ~2 %
/// (docs/decisions.md, "The fsync thread runs ahead of the rest").
pub const FSYNC_THREAD_NICE_DEFAULT: i32 = -10;

impl NodeConfig {
    /// Worker threads the runtime gets: `worker_threads`, or one per core when that is 0.
    pub fn runtime_threads(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.node_id == 0 {
            return invalid("node id must be positive".into());
        }
        validate_log_filter(&self.log_level).or_else(invalid)?;
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 || r.election_timeout_ms_min <= r.heartbeat_interval_ms * 2
        {
            return invalid(format!(
                "election_timeout_ms_min ({}) must exceed twice heartbeat_interval_ms ({})",
                r.election_timeout_ms_min, r.heartbeat_interval_ms
            ));
        }
        if r.election_timeout_ms_max <= r.election_timeout_ms_min {
            return invalid("election_timeout_ms_max must exceed election_timeout_ms_min".into());
        }
        if self.snapshot.logs_since_last_max == 0 {
            return invalid("snapshot_logs_since_last_max must be positive".into());
        }
        if self.snapshot.log_bytes_since_last_max < 1024 * 1024 {
            return invalid(
                "snapshot_log_bytes_since_last_max must be at least 1 MiB (1048576)".into(),
            );
        }
        self.limits.validate().or_else(invalid)?;
        // Below these RocksDB would flush (or evict) constantly; a misplaced digit, not a choice.
        if self.storage.memory.memtable_bytes < 16 * 1024 * 1024 {
            return invalid("storage_memtable_bytes must be at least 16 MiB (16777216)".into());
        }
        if self.worker_threads > 1024 {
            return invalid("worker_threads must be at most 1024 (0 means one per core)".into());
        }
        if !(-20..=19).contains(&self.fsync_thread_nice) {
            return invalid(format!(
                "fsync_thread_nice ({}) must be a nice value, -20 to 19 (0 leaves the node's own)",
                self.fsync_thread_nice
            ));
        }
        if self.storage.memory.block_cache_bytes < 1024 * 1024 {
            return invalid("storage_block_cache_bytes must be at least 1 MiB (1048576)".into());
        }
        if !self.initial_cluster.is_empty()
            && !self
                .initial_cluster
                .iter()
                .any(|(id, _)| *id == self.node_id)
        {
            return invalid(format!(
                "initial cluster does not include this node ({})",
                self.node_id
            ));
        }
        Ok(())
    }

    /// openraft's configuration derived from ours.
    pub fn openraft_config(&self) -> openraft::Config {
        openraft::Config {
            cluster_name: "raftlog".into(),
            heartbeat_interval: self.raft.heartbeat_interval_ms,
            election_timeout_min: self.raft.election_timeout_ms_min,
            election_timeout_max: self.raft.election_timeout_ms_max,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(
                self.snapshot.logs_since_last_max,
            ),
            // Purging is decided by crate::group::log_retention (it keeps what lagging followers need);
            // openraft's own count-based purge is off.
            max_in_snapshot_log_to_keep: u64::MAX,
            // Replicate an entry as soon as the leader's append returns, not after openraft's
            // next round of notifications: measured A/B (2 rounds, scripts/ab.sh) C=64 +3–8 %,
            // batching producer +12–25 %.
            broadcast_submitted_on_append: Some(true),
            // A node that was partitioned or restarted first asks whether it could win, so it
            // does not raise its term and depose a leader that a majority still follows (Raft
            // thesis §9.6). Carried to the peer by the PreVote RPC (raft::network).
            enable_pre_vote: Some(true),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_take_an_ip_or_a_host_name() {
        assert_eq!(
            parse_bind_addr("0.0.0.0:8051").unwrap(),
            "0.0.0.0:8051".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(parse_bind_addr("localhost:8071").unwrap().port(), 8071);
        let err = parse_bind_addr("no-such-host.invalid:1").unwrap_err();
        assert!(err.contains("IP:port or host:port"), "{err}");
    }

    #[test]
    fn a_log_level_is_a_level_or_target_level_and_anything_else_is_refused_at_start() {
        for good in [
            "info",
            "info,openraft=warn",
            "debug,raftlog_node::raft=trace",
            "WARN",
        ] {
            assert_eq!(validate_log_filter(good), Ok(()), "{good}");
        }
        for bad in ["verbose", "infoo", "info,openraft=loud"] {
            let err = validate_log_filter(bad).unwrap_err();
            assert!(err.contains("is not a level"), "{bad}: {err}");
        }
        let args = Args {
            node_id: Some(1),
            log_level: Some("verbose".into()),
            ..Default::default()
        };
        let err = args.resolve().unwrap_err().to_string();
        assert!(err.contains("'verbose'"), "{err}");
    }

    #[test]
    fn example_config_file_parses_and_matches_defaults() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/raftlog-node.example.toml"
        );
        let args = Args {
            config: Some(path.into()),
            ..Default::default()
        };
        let config = args
            .resolve()
            .expect("the documented example config is valid");
        let defaults = Args {
            node_id: Some(1),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            config.raft.election_timeout_ms_min,
            defaults.raft.election_timeout_ms_min
        );
        assert_eq!(
            config.limits.record_bytes_max,
            defaults.limits.record_bytes_max
        );
        assert_eq!(
            config.snapshot.logs_kept_after_snapshot,
            defaults.snapshot.logs_kept_after_snapshot
        );
        assert_eq!(config.storage, defaults.storage);
        assert_eq!(config.worker_threads, defaults.worker_threads);
        assert_eq!(config.fsync_thread_nice, defaults.fsync_thread_nice);
        assert_eq!(
            config.snapshot.log_bytes_since_last_max,
            defaults.snapshot.log_bytes_since_last_max
        );
        assert_eq!(
            config.snapshot.log_bytes_kept_for_followers_max,
            defaults.snapshot.log_bytes_kept_for_followers_max
        );
        assert_eq!(
            config.limits.disk_free_bytes_min,
            defaults.limits.disk_free_bytes_min
        );
    }

    #[test]
    fn tls_takes_all_three_files_or_none() {
        let resolve = |args: Args| {
            Args {
                node_id: Some(1),
                ..args
            }
            .resolve()
        };
        assert!(resolve(Args::default()).unwrap().tls.is_none());
        let config = resolve(Args {
            tls_ca: Some("ca.pem".into()),
            tls_cert: Some("node-1.pem".into()),
            tls_key: Some("node-1-key.pem".into()),
            ..Default::default()
        })
        .unwrap();
        let tls = config.tls.expect("TLS on");
        assert!(!tls.client_cert_required);
        assert_eq!(tls.reload_check_ms, TLS_RELOAD_CHECK_MS_DEFAULT);
        let err = resolve(Args {
            tls_ca: Some("ca.pem".into()),
            tls_cert: Some("node-1.pem".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("tls_key missing"), "{err}");
        let err = resolve(Args {
            tls_client_cert_required: Some(true),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("needs TLS"), "{err}");
        let err = resolve(Args {
            tls_ca: Some("ca.pem".into()),
            tls_cert: Some("node-1.pem".into()),
            tls_key: Some("node-1-key.pem".into()),
            tls_reload_check_ms: Some(5),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("tls_reload_check_ms (5)"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/raftlog-node.example.toml"
        );
        let args = Args {
            config: Some(path.into()),
            node_id: Some(7),
            topics_max: Some(3),
            ..Default::default()
        };
        let config = args.resolve().unwrap();
        assert_eq!((config.node_id, config.limits.topics_max), (7, 3));
    }

    #[test]
    fn bad_configs_are_rejected_with_a_reason() {
        // Why `args` (for node 1) is refused.
        let refusal = |args: Args| {
            Args {
                node_id: Some(1),
                ..args
            }
            .resolve()
            .unwrap_err()
            .to_string()
        };
        assert!(refusal(Args {
            heartbeat_interval_ms: Some(500),
            ..Default::default()
        })
        .contains("election_timeout_ms_min"));
        assert!(refusal(Args {
            initial_cluster: Some("2=a:1,3=b:2".into()),
            ..Default::default()
        })
        .contains("does not include this node"));
        assert!(parse_initial_cluster("x=1").is_err());
        assert!(refusal(Args {
            storage_memtable_bytes: Some(1 << 20),
            ..Default::default()
        })
        .contains("storage_memtable_bytes"));
        assert!(refusal(Args {
            group_commit_linger_ms: Some(5_000),
            ..Default::default()
        })
        .contains("group_commit_linger_ms"));
        assert!(refusal(Args {
            fsync_thread_nice: Some(-21),
            ..Default::default()
        })
        .contains("fsync_thread_nice (-21)"));
    }
}
