//! Every sizing constant of a node, in one place, with the relationships between them checked at
//! compile time (the `const` block at the end). A constant here bounds memory, a message, a queue
//! or an on-disk unit; what an operator may tune is configuration (`config::Limits`) instead.
//!
//! Changing one of these changes no format: they bound what is built, never how it is encoded.

// ---- Peer messages and replication ----

/// Largest peer message accepted or sent (AppendEntries batches, snapshot chunks, writes forwarded
/// to the leader).
pub const PEER_MESSAGE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Most bytes of entries one AppendEntries carries (unless a single entry is larger): the log
/// reader stops there (`LogStore::limited_get_log_entries`), and group commit closes an entry
/// there (so an entry fits one AppendEntries).
///
/// openraft gives every AppendEntries `heartbeat_interval` (150 ms) to complete, follower fsync
/// included, and sends up to `max_payload_entries` entries at once. A follower behind by hundreds
/// of ~1 MiB entries (the batching producer's batches) would get hundreds of MiB per attempt, time
/// out every time and never catch up (docs/decisions.md, "AppendEntries carry about 1 MiB at
/// most").
pub const APPEND_ENTRIES_BYTES_TARGET: usize = 1024 * 1024;

// ---- The Raft log's caches ----

/// Memory the log's cache of its newest entries may hold, each entry counted as twice its
/// encoding (16 MiB of encoded entries): replication and apply read from it instead of RocksDB
/// (docs/decisions.md, "The log keeps its newest entries, decoded and as stored").
pub const RECENT_ENTRIES_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Most bytes of received entry encodings a follower keeps waiting for their append. Entries
/// openraft does not append (it already had them, or a newer leader's replace them) leave only
/// when later appends pass them or when this bound pushes them out; an append normally follows
/// its message within a few messages.
pub const RECEIVED_ENCODINGS_BYTES_MAX: usize = 8 * 1024 * 1024;

// ---- Group commit and the produce path ----

/// Group-commit entries proposed but not yet applied. 2 lets one batch replicate while the next
/// one fills (1 was slower: docs/decisions.md, "Group commit waits for as many requests as the
/// previous entry held").
pub const GROUP_COMMIT_ENTRIES_IN_FLIGHT: usize = 2;

/// Produce requests that may wait in the group-commit queue of one Raft group; a producer past it
/// waits to enqueue (backpressure instead of memory).
pub const GROUP_COMMIT_QUEUE_MAX: usize = 4096;

/// Requests a produce stream may have proposed and not yet answered; the stream stops reading
/// while this many wait (backpressure on the client instead of memory on the node).
pub const PRODUCE_STREAM_IN_FLIGHT_MAX: usize = 1024;

/// Room for gRPC and protobuf framing around a request's or a response's records: a produce
/// request may carry a whole `batch_bytes_max` batch, and a fetch answer `fetch_bytes_max` of
/// records, plus this.
pub const GRPC_FRAMING_BYTES: usize = 1024 * 1024;

/// Largest answer a follower accepts from the leader for a write it forwarded. Those answers are
/// small (a produce's offsets, a topic's partition table), so this is generous.
pub const FORWARDED_RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

// ---- The state machine ----

/// Stored batches are cut at about this many record bytes. A fetch reads whole stored batches (a
/// RocksDB value is read in full), so a batch of 1 MiB (the batching producer's default
/// `batch_bytes`) cost every 100-record fetch inside it a 1 MiB read and decode. Measured,
/// catch-up of 1 KiB records in 100-record fetches: 50 MB/s with 1 MiB batches, 137 MB/s with
/// 256 KiB, 218 MB/s with 64 KiB; in 10,000-record fetches 630, 608 and 515 MB/s (each batch is a
/// read of its own). 256 KiB keeps the large fetches' rate (docs/decisions.md, "The appends of one
/// group-commit entry are stored as one batch").
pub const STORED_BATCH_BYTES_TARGET: u64 = 256 * 1024;

/// Stored batch rows at least this large go to blob files (RocksDB's integrated BlobDB); the LSM
/// tree keeps only their keys and a reference. Below it (e.g. one 1 KiB record per request) a row
/// stays inline, where a blob reference would cost more than it saves (docs/decisions.md, "Blob
/// files for record batches").
pub const STATE_BLOB_BYTES_MIN: u64 = 4 * 1024;

/// How many of a producer's latest batches per partition are remembered for deduplication (as
/// Kafka does: a client keeps at most this many requests in flight per partition). Part of the
/// replicated state: every node must use the same value.
pub const PRODUCER_BATCHES_REMEMBERED: usize = 5;

/// Reads of record batches that run at once on a node. Each holds up to `fetch_bytes_max` of
/// batches in memory while it runs, so this bounds that memory; four keep a disk busy while the
/// CPU decodes (the catch-up benchmark reads four partitions at once).
pub const READS_PARALLEL: usize = 4;

// ---- RocksDB ----

/// WAL files the log database keeps for reuse. Overwriting a recycled file's blocks (still in the
/// page cache) costs a fraction of writing new ones, and its fdatasync has no inode or extent
/// update to commit (measured here: a 4 KiB append + fdatasync ~150 µs, the same overwrite
/// ~100 µs; page-cache writes to new pages ~0.8 GB/s, to cached ones ~9 GB/s).
pub const LOG_WAL_FILES_RECYCLED: usize = 4;

/// Live WAL bytes of the log database before RocksDB flushes the column families holding the
/// oldest WAL file (two of RocksDB's default 64 MiB write buffers).
pub const LOG_WAL_TOTAL_BYTES_MAX: u64 = 128 << 20;

/// Memtable size of the tiny `raft_meta` column family (vote, committed, last purged).
pub const META_MEMTABLE_BYTES: usize = 4 * 1024 * 1024;

/// Most bearer tokens the cluster holds. Every node keeps them all in memory and checks a token
/// by one lookup, so this bounds memory, not time; revoke unused ones.
pub const TOKENS_MAX: u32 = 10_000;

/// Most ACL entries the cluster holds. A request is checked against every entry of its resource
/// type (a scan, no index), so this bounds the time of one check as well as memory.
pub const ACLS_MAX: u32 = 10_000;

/// Most principals with a quota. Each node keeps a token bucket per principal and rate it has
/// seen calls from, so this bounds that memory too.
pub const QUOTAS_MAX: u32 = 10_000;

// ---- How they relate ----

const _: () = {
    // An entry of group commit <= an AppendEntries <= a peer message, with room for a second one
    // in flight and the envelope around it.
    assert!(2 * APPEND_ENTRIES_BYTES_TARGET <= PEER_MESSAGE_BYTES_MAX);
    // The leader's cache holds at least two full AppendEntries (each entry counted twice), so a
    // follower that is one message behind still replicates from memory.
    assert!(2 * 2 * APPEND_ENTRIES_BYTES_TARGET <= RECENT_ENTRIES_BYTES_MAX);
    // A follower keeps at least one whole AppendEntries' encodings until it is appended.
    assert!(APPEND_ENTRIES_BYTES_TARGET <= RECEIVED_ENCODINGS_BYTES_MAX);
    // A stored batch that is full goes to a blob file, far above the threshold.
    assert!(4 * STATE_BLOB_BYTES_MIN <= STORED_BATCH_BYTES_TARGET);
    // One produce stream's window fits the group-commit queue on its own.
    assert!(PRODUCE_STREAM_IN_FLIGHT_MAX <= GROUP_COMMIT_QUEUE_MAX);
    // A forwarded write's answer is a peer's message too.
    assert!(FORWARDED_RESPONSE_BYTES_MAX <= PEER_MESSAGE_BYTES_MAX);
    // The log database's WAL outgrows its tiny meta memtable before it is flushed.
    assert!(META_MEMTABLE_BYTES as u64 <= LOG_WAL_TOTAL_BYTES_MAX);
    assert!(GROUP_COMMIT_ENTRIES_IN_FLIGHT >= 1);
    assert!(PRODUCER_BATCHES_REMEMBERED >= 1);
    assert!(READS_PARALLEL >= 1);
};
