//! Finding the leader and forwarding writes to it. Any node accepts a write; a follower sends it on
//! to the leader it knows, once. A request that was already forwarded is never forwarded again (it
//! answers UNAVAILABLE with the leader hint instead), so two nodes with stale views cannot bounce a
//! request between them.
//!
//! Deadlines travel with a forwarded write: its remaining time as `grpc-timeout`, and its absolute
//! deadline in [`DEADLINE_HEADER`]. A relative timeout alone restarts wherever the request lands,
//! so a request held up in a stuck connection (a partition) would arrive with its whole timeout
//! ahead of it, long after its caller gave up; the absolute deadline lets the leader refuse it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic::Request;

use super::error::ApiError;
use raftlog_core::NodeId;

/// Metadata key set on forwarded requests.
pub const FORWARDED_HEADER: &str = "raftlog-forwarded";
/// Metadata key of a forwarded write's deadline: ms since the Unix epoch, by the forwarding
/// node's clock (so the bound it gives holds to within the nodes' clock difference).
pub const DEADLINE_HEADER: &str = "raftlog-deadline-ms";

/// By when a write that arrives now must be proposed: the earliest of its gRPC deadline
/// (`grpc-timeout`, counted from now), the absolute deadline a forwarding node attached, and
/// `max` from now.
pub fn write_deadline(metadata: &tonic::metadata::MetadataMap, max: Duration) -> Instant {
    let now = Instant::now();
    let mut deadline = now + max;
    if let Some(timeout) = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
    {
        deadline = deadline.min(now + timeout);
    }
    if let Some(at_ms) = metadata
        .get(DEADLINE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
    {
        let left_ms = at_ms.saturating_sub(crate::group::now_ms()).max(0);
        deadline = deadline.min(now + Duration::from_millis(left_ms as u64));
    }
    deadline
}

/// A `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u, n), per the gRPC over
/// HTTP/2 protocol.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(split);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[derive(Clone)]
pub struct Forwarder {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// With TLS, the leader is dialled over TLS with this node's certificate.
    tls: Option<Arc<crate::tls::Tls>>,
}

impl Forwarder {
    pub fn new(tls: Option<Arc<crate::tls::Tls>>) -> Self {
        Self {
            channels: Arc::default(),
            tls,
        }
    }

    /// A channel to node `id` at `addr`, reused across requests.
    pub fn channel(&self, id: NodeId, addr: &str) -> Result<Channel, ApiError> {
        let mut channels = self.channels.lock().expect("forward channel cache lock");
        let key = format!("{id}@{addr}");
        if let Some(channel) = channels.get(&key) {
            return Ok(channel.clone());
        }
        let endpoint = |uri: String| -> Result<Endpoint, tonic::transport::Error> {
            Ok(
                raftlog_proto::http2::node_endpoint(Endpoint::from_shared(uri)?)
                    .connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true),
            )
        };
        let channel = crate::tls::node_channel(endpoint, addr, id, self.tls.as_ref())
            .map_err(|e| ApiError::Internal(format!("bad leader address {addr}: {e}")))?;
        channels.insert(key, channel.clone());
        Ok(channel)
    }

    /// Decides where a write that this node cannot serve goes: the leader's channel, or an error.
    /// `forwarded` tells whether the request in hand was itself forwarded ([`is_forwarded`]).
    pub fn route(
        &self,
        forwarded: bool,
        leader: Option<(NodeId, String)>,
        self_id: NodeId,
    ) -> Result<(Channel, (NodeId, String)), ApiError> {
        match leader {
            Some((leader_id, addr)) if leader_id != self_id && !forwarded => {
                Ok((self.channel(leader_id, &addr)?, (leader_id, addr)))
            }
            leader => Err(ApiError::not_leader(self_id, leader)),
        }
    }

    /// Wraps a message for forwarding, marked so it is not forwarded again, with what
    /// identifies its caller when auth is on (`crate::auth::forward_caller`: the client's token,
    /// and the principal this node vouches for, which the leader honours from a member node's
    /// certificate only).
    pub fn forwarded<T>(message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert(
            FORWARDED_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        crate::auth::forward_caller(request.metadata_mut());
        request
    }

    /// Wraps a write for forwarding with what is left of its `deadline`; refuses it (not
    /// applied) if nothing is left.
    pub fn forwarded_write<T>(message: T, deadline: Instant) -> Result<Request<T>, ApiError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ApiError::write_deadline_passed());
        }
        let mut request = Self::forwarded(message);
        request.set_timeout(left);
        let at_ms = crate::group::now_ms().saturating_add(left.as_millis() as i64);
        request
            .metadata_mut()
            .insert(DEADLINE_HEADER, tonic::metadata::MetadataValue::from(at_ms));
        Ok(request)
    }
}

/// Whether a request was forwarded by another node.
pub fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_HEADER)
}

/// Turns a transport failure on the way to the leader into a retryable UNAVAILABLE.
pub fn leader_unreachable(status: tonic::Status, leader: (NodeId, String)) -> tonic::Status {
    match status.code() {
        // An UNAVAILABLE marked not applied is the leader's own answer (it lost its leadership
        // and knows no successor yet, say), not a transport failure: it goes back as it is, mark
        // included, so the client retries instead of treating the outcome as unknown.
        tonic::Code::Unavailable | tonic::Code::Unknown
            if !status
                .metadata()
                .contains_key(super::error::LEADER_ADDR_HEADER)
                && !status
                    .metadata()
                    .contains_key(super::error::NOT_APPLIED_HEADER) =>
        {
            // No connection means the request never left this node: certainly not applied, so
            // the client may retry it anywhere (this is the common case right after the leader
            // died, until a new one is elected).
            let message = status.message();
            let never_sent = message.contains("tcp connect error")
                || message.contains("error trying to connect")
                || message.contains("Connection refused");
            ApiError::Unavailable {
                message: format!(
                    "could not reach leader {} at {}: {message}; retry",
                    leader.0, leader.1
                ),
                leader: Some(leader),
                not_applied: never_sent,
            }
            .into()
        }
        _ => status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::error::NOT_APPLIED_HEADER;

    #[test]
    fn grpc_timeouts_parse_per_the_protocol_and_garbage_is_ignored() {
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "S", "123456789S", "12x", "-1S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_forwarded_write_carries_its_deadline_and_the_leader_honours_the_earliest() {
        let deadline = Instant::now() + Duration::from_millis(1500);
        let request = Forwarder::forwarded_write((), deadline).unwrap();
        assert!(is_forwarded(&request));
        let seen = write_deadline(request.metadata(), Duration::from_secs(10));
        let diff = if seen > deadline {
            seen - deadline
        } else {
            deadline - seen
        };
        assert!(diff < Duration::from_millis(50), "{diff:?}");

        // A deadline that passed while the request was on its way (a stuck connection): the
        // absolute header wins over the relative timeout, which restarts on arrival.
        let mut late = Request::new(());
        late.metadata_mut()
            .insert("grpc-timeout", "3S".parse().unwrap());
        let past = crate::group::now_ms() - 40_000;
        late.metadata_mut()
            .insert(DEADLINE_HEADER, past.to_string().parse().unwrap());
        assert!(write_deadline(late.metadata(), Duration::from_secs(10)) <= Instant::now());

        // Without either, the node's own cap.
        let plain = Request::new(());
        let capped = write_deadline(plain.metadata(), Duration::from_secs(10));
        assert!(capped > Instant::now() + Duration::from_secs(9));

        let passed = Forwarder::forwarded_write((), Instant::now());
        assert!(matches!(passed, Err(ApiError::DeadlineExceeded(_))));
    }

    fn leader() -> (NodeId, String) {
        (1, "127.0.0.1:8051".to_string())
    }

    #[test]
    fn a_leaders_not_applied_answer_stays_not_applied_through_the_forwarder() {
        // What a node that just lost leadership answers: UNAVAILABLE, no successor known.
        let from_leader: tonic::Status = ApiError::Unavailable {
            message: "no Raft leader is known yet (election in progress or no quorum)".into(),
            leader: None,
            not_applied: true,
        }
        .into();
        assert!(from_leader.metadata().contains_key(NOT_APPLIED_HEADER));
        let forwarded = leader_unreachable(from_leader, leader());
        assert_eq!(forwarded.code(), tonic::Code::Unavailable);
        assert!(
            forwarded.metadata().contains_key(NOT_APPLIED_HEADER),
            "the client must be told it may retry: {forwarded:?}"
        );
    }

    #[test]
    fn a_broken_connection_after_sending_leaves_the_outcome_unknown() {
        let reset = tonic::Status::unavailable("connection reset by peer");
        let forwarded = leader_unreachable(reset, leader());
        assert!(!forwarded.metadata().contains_key(NOT_APPLIED_HEADER));
        let refused = tonic::Status::unavailable("tcp connect error: Connection refused");
        let forwarded = leader_unreachable(refused, leader());
        assert!(forwarded.metadata().contains_key(NOT_APPLIED_HEADER));
    }
}
