//! HTTP/2 settings of every raftlog connection: the node's gRPC server, the peers' Raft
//! channels, the node's forwarding channels and the client library.
//!
//! hyper's defaults suit many small messages; raftlog moves large ones (a producer batch of up to
//! `batch_bytes_max`, AppendEntries near 1 MiB, fetch responses of up to `fetch_bytes_max`).
//! With 16 KiB frames a 1 MiB message is 64 DATA frames, each parsed, accounted against flow
//! control and handed on separately, and a 16 MiB fetch response stalls on window updates.
//! Measured with `scripts/ab.sh` (docs/decisions.md, "HTTP/2 frames of up to 1 MiB, windows sized
//! for the largest message"): 1 MiB frames plus the windows below took the batching producer from
//! 86-101 to 108-122 MB/s and catch-up consumption from 431-516 to 558-768 MB/s; the frames are
//! the lever, the windows alone gained nothing.
//!
//! What the settings cost: a window is what a peer may send before the receiver reads it, so it
//! bounds the memory one connection can hold (per stream and per connection); a frame is the
//! unit a connection interleaves streams at, so a 1 MiB frame may delay a small message on the
//! same connection by the time it takes to write 1 MiB.

use std::time::Duration;

use tonic::transport::{Endpoint, Server};

/// Largest DATA frame a raftlog endpoint accepts (HTTP/2 allows up to 16 MiB - 1; hyper's
/// default is 16 KiB). Big enough that a default-size producer batch or an AppendEntries
/// request travels as one frame.
pub const MAX_FRAME_BYTES: u32 = 1024 * 1024;

/// Per-stream receive window of the node's server: one request of up to the default
/// `batch_bytes_max` (8 MiB) arrives without waiting for a window update.
pub const SERVER_STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;

/// Per-connection receive window of the node's server (several streams of one client).
pub const SERVER_CONNECTION_WINDOW_BYTES: u32 = 32 * 1024 * 1024;

/// Per-stream receive window of a client channel: one fetch response of up to the default
/// `fetch_bytes_max` (16 MiB) arrives without waiting for a window update.
pub const CLIENT_STREAM_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// Per-connection receive window of a client channel: four such fetches in parallel.
pub const CLIENT_CONNECTION_WINDOW_BYTES: u32 = 64 * 1024 * 1024;

/// Applies raftlog's HTTP/2 settings to a client channel's endpoint.
pub fn client_endpoint(endpoint: Endpoint) -> Endpoint {
    endpoint
        .max_frame_size(MAX_FRAME_BYTES)
        .initial_stream_window_size(CLIENT_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CLIENT_CONNECTION_WINDOW_BYTES)
}

/// How often a node pings a peer over an open connection (Raft replication, forwarding).
///
/// A partition drops packets without closing anything: a connection that was open when it began
/// stays open, and requests written into it wait for TCP's retransmissions, whose interval has
/// grown to seconds by the time the partition heals. Pinging finds such a connection dead within
/// [`NODE_KEEP_ALIVE_INTERVAL`] + [`NODE_KEEP_ALIVE_TIMEOUT`], so the node reconnects (with its
/// backoff) and a healed peer is reached again within about a second.
pub const NODE_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a ping may go unanswered before the connection counts as dead. Two seconds: a node
/// on a busy 2-core machine can take a while to answer, and a false alarm costs a reconnection.
pub const NODE_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Applies raftlog's HTTP/2 settings to a node's channel to another node: those of
/// [`client_endpoint`], and pings that find a connection a partition has silently cut.
pub fn node_endpoint(endpoint: Endpoint) -> Endpoint {
    client_endpoint(endpoint)
        .http2_keep_alive_interval(NODE_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(NODE_KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
}

/// Applies raftlog's HTTP/2 settings to the node's gRPC server.
pub fn server<L>(server: Server<L>) -> Server<L> {
    server
        .max_frame_size(MAX_FRAME_BYTES)
        .initial_stream_window_size(SERVER_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(SERVER_CONNECTION_WINDOW_BYTES)
}
