//! Prometheus metrics of one node, served at the admin HTTP server's `/metrics`.
//!
//! Two kinds:
//! - Event metrics (counters and histograms: requests by method and code, their latency, fsync
//!   latency, records and bytes in and out per topic, snapshots) are recorded where they happen
//!   through the `metrics` facade and kept by the Prometheus recorder installed at start.
//! - State metrics (Raft role, term, indices, replication lag per follower, partition offsets,
//!   consumer-group lag) are read from the node at scrape time and rendered directly by the admin
//!   server (`admin_http`), so a deleted topic or group leaves no stale series behind.
//!
//! The names are documented with their meaning in docs/operations.md.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::Instant;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const REQUESTS: &str = "raftlog_requests_total";
pub const REQUEST_SECONDS: &str = "raftlog_request_duration_seconds";
/// Leader: an AppendEntries carrying entries, from being sent to a follower to its answer.
pub const REPLICATION_ROUND_TRIP_SECONDS: &str = "raftlog_replication_round_trip_seconds";
/// Follower: an AppendEntries carrying entries, from its arrival to the answer (after its fsync).
pub const FOLLOWER_APPEND_SECONDS: &str = "raftlog_follower_append_seconds";
pub const RECORDS_IN: &str = "raftlog_records_in_total";
pub const BYTES_IN: &str = "raftlog_bytes_in_total";
pub const RECORDS_OUT: &str = "raftlog_records_out_total";
pub const BYTES_OUT: &str = "raftlog_bytes_out_total";
/// Time a write waits in the leader's group-commit queue before its entry is proposed.
pub const GROUP_COMMIT_QUEUE_SECONDS: &str = "raftlog_group_commit_queue_seconds";
/// Time from proposing a group-commit entry to its apply on the leader (replication, fsyncs on
/// a majority, commit, apply).
pub const GROUP_COMMIT_ENTRY_SECONDS: &str = "raftlog_group_commit_entry_seconds";
/// Writes not proposed because their deadline passed (or their caller left) while they waited.
pub const WRITES_EXPIRED: &str = "raftlog_writes_expired_total";
/// Consumer-group members whose session expired (the leader heard nothing within the timeout).
pub const GROUP_MEMBERS_EXPIRED: &str = "raftlog_group_members_expired_total";
/// Member heartbeats the leader holds now (long polls waiting for their group to change).
pub const GROUP_HEARTBEATS_HELD: &str = "raftlog_group_heartbeats_held";
/// Writes per proposed entry.
pub const GROUP_COMMIT_REQUESTS_PER_ENTRY: &str = "raftlog_group_commit_requests_per_entry";
/// When the node's TLS certificate (`cert="node"`) and the earliest of its CA certificates
/// (`cert="ca"`) stop being valid, in seconds since the Unix epoch; set at start and on each
/// reload (`crate::tls`).
pub const TLS_CERT_EXPIRY: &str = "raftlog_tls_cert_expiry_timestamp_seconds";
/// Reloads of the TLS files by result (`ok`, `error`: the previous certificates stay).
pub const TLS_RELOADS: &str = "raftlog_tls_reloads_total";
/// TLS handshakes on the gRPC port that failed or timed out (wrong CA, expired certificate,
/// plaintext or garbage bytes, an unfinished hello).
pub const TLS_HANDSHAKE_FAILURES: &str = "raftlog_tls_handshake_failures_total";
/// Raft requests refused because the caller's certificate names no member node, by reason.
pub const PEER_REFUSALS: &str = "raftlog_peer_refusals_total";
/// Client requests refused as unauthenticated (auth on), by reason (`no_credentials`,
/// `malformed`, `unknown_token`, `bad_secret`, `expired_token`, `unusable_certificate`).
pub const AUTH_FAILURES: &str = "raftlog_auth_failures_total";
/// Client requests refused because no ACL entry allows them (or one denies them), by resource
/// type.
pub const PERMISSION_DENIALS: &str = "raftlog_permission_denials_total";
/// Client calls refused because their principal was over its quota on this node, by rate
/// (`requests`, `produce_bytes`, `fetch_bytes`).
pub const THROTTLED: &str = "raftlog_throttled_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls reuse it).
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        // Latency buckets from 100 µs (an fsync on a fast disk) to 10 s (a request through an
        // election), finer below 10 ms, where a write's stages fall on a fast disk
        // (scripts/py/stage_times.py reads its p50 and p99 off them).
        let buckets = [
            0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01,
            0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let per_fsync = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
        let per_entry = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];
        let recorder = PrometheusBuilder::new()
            .set_buckets(&buckets)
            .expect("non-empty bucket list")
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(
                    raftlog_store::metrics::APPENDS_PER_FSYNC.into(),
                ),
                &per_fsync,
            )
            .expect("non-empty bucket list")
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(GROUP_COMMIT_REQUESTS_PER_ENTRY.into()),
                &per_entry,
            )
            .expect("non-empty bucket list")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed, e.g. by an embedding program: then its
        // recorder receives our metrics and /metrics shows only the state metrics.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Records one gRPC call that arrived at `start` and was answered with `code`: its count by
/// method and code, and its latency (called by `api::request_metrics`).
pub fn observed(method: &'static str, code: tonic::Code, start: Instant) {
    metrics::counter!(REQUESTS, "method" => method, "code" => code_label(code)).increment(1);
    metrics::histogram!(REQUEST_SECONDS, "method" => method).record(start.elapsed().as_secs_f64());
}

/// The `code` label of a status code: its name, as `{code:?}` prints it, without formatting a
/// new string for every request.
fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "Ok",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// Records the requests that are not their own gRPC call (the messages of a produce stream).
/// Looks up the series a successful request lands in once, when a stream opens, instead of once
/// per message: each lookup builds its labels anew (an allocation) and hashes them, and a stream
/// at C=64 carries tens of thousands of messages a second.
pub struct MessageMetrics {
    method: &'static str,
    ok: metrics::Counter,
    seconds: metrics::Histogram,
}

impl MessageMetrics {
    pub fn new(method: &'static str) -> Self {
        Self {
            method,
            ok: metrics::counter!(REQUESTS, "method" => method, "code" => code_label(tonic::Code::Ok)),
            seconds: metrics::histogram!(REQUEST_SECONDS, "method" => method),
        }
    }

    /// Records one message answered with `code`, `start` being when it arrived.
    pub fn observed(&self, code: tonic::Code, start: Instant) {
        match code {
            tonic::Code::Ok => self.ok.increment(1),
            code => {
                metrics::counter!(REQUESTS, "method" => self.method, "code" => code_label(code))
                    .increment(1)
            }
        }
        self.seconds.record(start.elapsed().as_secs_f64());
    }
}

/// Counts a produce request's records and bytes appended to `topic` ([`RECORDS_IN`],
/// [`BYTES_IN`]). A topic's two counters are looked up once and kept: each lookup built the
/// topic label anew (an allocation) and hashed it, twice per request, tens of thousands of times
/// a second at C=64. Kept for every topic that took a write, as the recorder keeps their series.
pub fn count_appended(topic: &str, records: u64, bytes: u64) {
    type Counters = HashMap<String, (metrics::Counter, metrics::Counter)>;
    static TOPICS: LazyLock<Mutex<Counters>> = LazyLock::new(Mutex::default);
    let mut topics = TOPICS.lock().expect("topic counters lock");
    if let Some((records_in, bytes_in)) = topics.get(topic) {
        records_in.increment(records);
        bytes_in.increment(bytes);
        return;
    }
    let records_in = metrics::counter!(RECORDS_IN, "topic" => topic.to_string());
    let bytes_in = metrics::counter!(BYTES_IN, "topic" => topic.to_string());
    records_in.increment(records);
    bytes_in.increment(bytes);
    topics.insert(topic.to_string(), (records_in, bytes_in));
}

#[cfg(test)]
mod tests {
    /// The `code` label stays what dashboards and alerts match on: the code's Debug name.
    #[test]
    fn code_labels_are_the_codes_debug_names() {
        for n in 0..=16 {
            let code = tonic::Code::from_i32(n);
            assert_eq!(super::code_label(code), format!("{code:?}"));
        }
    }
}
