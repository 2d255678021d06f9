//! Finding the leader and forwarding writes to it. Any node accepts a write; a follower sends it on
//! to the leader it knows, once. A request that was already forwarded is never forwarded again (it
//! answers UNAVAILABLE with the leader hint instead), so two nodes with stale views cannot bounce a
//! request between them.

use openraft::async_runtime::watch::WatchReceiver;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::Request;

use super::error::ApiError;
use crate::raft::types::{Membership, NodeId, Raft};

/// Metadata key set on forwarded requests.
pub const FORWARDED_HEADER: &str = "raftlog-forwarded";

#[derive(Clone, Default)]
pub struct Forwarder {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Forwarder {
    /// The leader this node knows of, with its address, if any.
    pub fn leader(raft: &Raft) -> Option<(NodeId, String)> {
        let metrics = raft.metrics().borrow_watched().clone();
        Self::with_addr(
            metrics.membership_config.membership(),
            metrics.current_leader?,
        )
    }

    /// `node` with its address in `membership`, if it is a member.
    pub fn with_addr(membership: &Membership, node: NodeId) -> Option<(NodeId, String)> {
        let addr = membership.get_node(&node)?.addr.clone();
        Some((node, addr))
    }

    /// A channel to `addr`, reused across requests.
    pub fn channel(&self, addr: &str) -> Result<Channel, ApiError> {
        let mut channels = self.channels.lock().expect("forward channel cache lock");
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = raftlog_proto::http2::client_endpoint(
            Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| ApiError::Internal(format!("bad leader address {addr}: {e}")))?,
        )
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
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
                Ok((self.channel(&addr)?, (leader_id, addr)))
            }
            leader => Err(ApiError::not_leader(self_id, leader)),
        }
    }

    /// Wraps a message for forwarding, marked so it is not forwarded again.
    pub fn forwarded<T>(message: T, timeout: Option<Duration>) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert(
            FORWARDED_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        request
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
