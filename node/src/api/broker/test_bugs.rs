//! Test-only bugs (feature `unsafe-test-bugs`), planted to prove that the fault-injection
//! harness catches them (scripts/jepsen-teeth.sh). Never built into a release binary.

use std::time::Instant;

use raftlog_proto::v1::*;
use tonic::Status;

use super::produce::{AppendOutcome, PreparedAppend};
use super::BrokerService;
use crate::api::error::ApiError;
use crate::group::now_ms;
use raftlog_core::Command;

/// Which test-only bug a node built with the `unsafe-test-bugs` feature plants, from the
/// `RAFTLOG_UNSAFE_BUG` environment variable: `early-ack` or `late-write`.
#[cfg(feature = "unsafe-test-bugs")]
fn unsafe_bug() -> Option<String> {
    std::env::var("RAFTLOG_UNSAFE_BUG").ok()
}

#[cfg(feature = "unsafe-test-bugs")]
impl BrokerService {
    /// TEST-ONLY SAFETY BUG (`early-ack`), to prove the fault-injection harness catches it: the
    /// leader proposes the batch without waiting for it to commit and acknowledges at the offset
    /// it guesses from its applied state. Acks can then name offsets that other batches take, or
    /// records a crash loses.
    pub(super) async fn unsafe_early_ack(
        &self,
        append: &PreparedAppend,
    ) -> Option<ProduceResponse> {
        if unsafe_bug().as_deref() != Some("early-ack")
            || self.group().raft.current_leader().await != Some(self.ctx.id)
        {
            return None;
        }
        let partition = append.outcome.partition;
        let topic = self.group().view.topic(&append.request.topic)?;
        let end_offset = topic.partitions.get(partition as usize)?.end_offset;
        self.group()
            .raft
            .client_write_ff(append.command.clone(), None)
            .await
            .ok()?;
        Some(ProduceResponse {
            partition,
            base_offset: end_offset,
            record_count: append.request.records.len() as u32,
            duplicate: false,
        })
    }

    /// TEST-ONLY BUG (`late-write`): one produce in 20 is held for 5 s, as a request stuck on its
    /// way would be, then stamped and proposed with its deadline ignored, whether or not its
    /// caller still waits. The harness must report it as a `late-write`.
    pub(super) async fn unsafe_late_write(
        &self,
        append: &PreparedAppend,
    ) -> Option<Result<ProduceResponse, Status>> {
        use rand::Rng;
        if unsafe_bug().as_deref() != Some("late-write") || !rand::rng().random_ratio(1, 20) {
            return None;
        }
        let (group, mut command) = (self.group().clone(), append.command.clone());
        let outcome = AppendOutcome {
            topic: append.outcome.topic.clone(),
            ..append.outcome
        };
        // A task of its own: it goes on when the caller gives up and this handler is dropped.
        let late = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            if let Command::Append { proposed_at_ms, .. } = &mut command {
                *proposed_at_ms = now_ms();
            }
            let far = Instant::now() + std::time::Duration::from_secs(60);
            match group.write(command, far).await {
                Ok(response) => outcome.applied(response).map_err(Status::from),
                Err(e) => Err(ApiError::write_failed(group.node_id, e).into()),
            }
        });
        Some(
            late.await
                .unwrap_or_else(|e| Err(ApiError::Internal(e.to_string()).into())),
        )
    }
}
