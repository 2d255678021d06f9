//! Reads: `Fetch` (with long polling), `Subscribe` (a server stream that follows the partition)
//! and `ListOffsets`, all served from this node's applied state.

use raftlog_proto::v1::*;
use tonic::{Request, Response, Status};

use super::{stopped, BrokerService};
use crate::api::convert::record_to_pb;
use crate::api::error::ApiError;
use raftlog_core::Rejection;

pub(super) async fn fetch(
    broker: &BrokerService,
    request: Request<FetchRequest>,
) -> Result<Response<FetchResponse>, Status> {
    use crate::auth::quota::Rate;
    // A fetch's cost is known once it is read: it may start while its principal is not in
    // debt, and then pays what it read (`crate::auth::quota`).
    let caller = crate::auth::caller_of(&request).cloned();
    if let Some(caller) = &caller {
        broker.ctx.auth.admit_rate(caller, Rate::FetchBytes)?;
    }
    let req = request.into_inner();
    broker.validate_topic_name(&req.topic)?;
    let limits = &broker.ctx.config.limits;
    let max_records = match req.max_records as usize {
        0 => limits.fetch_records_max,
        n => n.min(limits.fetch_records_max),
    };
    let max_bytes = match req.max_bytes as usize {
        0 => limits.fetch_bytes_max,
        n => n.min(limits.fetch_bytes_max),
    };
    let wait =
        std::time::Duration::from_millis((req.max_wait_ms as u64).min(limits.fetch_wait_ms_max));
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribe before reading, so an apply between the read and the wait is not missed.
    let mut applied = broker.group().view.applied();
    let result = loop {
        let result = broker
            .group()
            .view
            .read_blocking(
                &req.topic,
                req.partition,
                req.offset,
                max_records,
                max_bytes,
            )
            .await
            .map_err(ApiError::from)?;
        if !result.records.is_empty() || wait.is_zero() {
            break result;
        }
        // A long poll ends early, empty, when the node starts to stop.
        let mut stopping = broker.stopping.clone();
        tokio::select! {
            changed = tokio::time::timeout_at(deadline, applied.changed()) => match changed {
                Ok(Ok(())) => continue,
                _ => break result,
            },
            _ = stopped(&mut stopping) => break result,
        }
    };
    count_out(&req.topic, &result.records);
    if let Some(caller) = &caller {
        let bytes: usize = result.records.iter().map(|(_, r)| r.size_bytes()).sum();
        broker
            .ctx
            .auth
            .debit(caller, Rate::FetchBytes, bytes as u64);
    }
    Ok(Response::new(FetchResponse {
        records: result
            .records
            .into_iter()
            .map(|(offset, r)| record_to_pb(offset, r))
            .collect(),
        end_offset: result.end_offset,
        start_offset: result.start_offset,
    }))
}

pub(super) async fn subscribe(
    broker: &BrokerService,
    request: Request<SubscribeRequest>,
) -> Result<Response<super::SubscribeMessages>, Status> {
    let req = request.into_inner();
    broker.validate_topic_name(&req.topic)?;
    let limits = &broker.ctx.config.limits;
    let max_records = match req.max_records as usize {
        0 => 1000,
        n => n.min(limits.fetch_records_max),
    };
    let (max_bytes, view) = (limits.fetch_bytes_max, broker.group().view.clone());
    // Fail fast on a bad topic, partition or offset, before the stream starts.
    view.read(&req.topic, req.partition, req.offset, 0, max_bytes)
        .map_err(ApiError::from)?;
    // The bounded channel is the flow control: when the client reads slowly, `send` waits and
    // this task stops reading the log; at most `subscribe_buffer_messages` are held.
    let (tx, rx) = tokio::sync::mpsc::channel(limits.subscribe_buffer_messages.max(1));
    let mut stopping = broker.stopping.clone();
    tokio::spawn(async move {
        let mut applied = view.applied();
        let mut offset = req.offset;
        loop {
            match view
                .read_blocking(&req.topic, req.partition, offset, max_records, max_bytes)
                .await
            {
                Ok(result) if !result.records.is_empty() => {
                    offset = result.records.last().map_or(offset, |(o, _)| o + 1);
                    count_out(&req.topic, &result.records);
                    let records = result
                        .records
                        .into_iter()
                        .map(|(o, r)| record_to_pb(o, r))
                        .collect();
                    let message = SubscribeResponse {
                        records,
                        end_offset: result.end_offset,
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        return; // the client went away
                    }
                }
                Ok(_) => {
                    // Caught up: sleep until the next apply, until the client goes away, or
                    // until this node stops (the client resubscribes elsewhere).
                    tokio::select! {
                        changed = applied.changed() => if changed.is_err() { return },
                        _ = tx.closed() => return,
                        _ = stopped(&mut stopping) => {
                            let status = ApiError::Unavailable {
                                message: format!(
                                    "node shutting down; subscribe on another node from \
                                     offset {offset}"
                                ),
                                leader: None,
                                not_applied: true,
                            };
                            let _ = tx.send(Err(status.into())).await;
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(ApiError::from(e).into())).await;
                    return;
                }
            }
        }
    });
    Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
        rx,
    )))
}

/// Served from this node's applied state, as fetches are: a follower may be a moment behind.
pub(super) async fn list_offsets(
    broker: &BrokerService,
    request: Request<ListOffsetsRequest>,
) -> Result<Response<ListOffsetsResponse>, Status> {
    let req = request.into_inner();
    broker.validate_topic_name(&req.topic)?;
    let topic = broker
        .group()
        .view
        .topic(&req.topic)
        .ok_or_else(|| ApiError::from(Rejection::UnknownTopic(req.topic.clone())))?;
    let partitions_max = broker.ctx.config.limits.partitions_per_topic_max as usize;
    if req.partitions.len() > partitions_max {
        return Err(ApiError::InvalidArgument(format!(
            "{} partitions asked; a topic has at most {partitions_max}",
            req.partitions.len()
        ))
        .into());
    }
    let partitions: Vec<u32> = if req.partitions.is_empty() {
        (0..topic.settings.partitions).collect()
    } else {
        req.partitions.clone()
    };
    let mut answer = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let state = topic.partitions.get(partition as usize).ok_or_else(|| {
            ApiError::from(Rejection::UnknownPartition {
                topic: req.topic.clone(),
                partition,
                partitions: topic.settings.partitions,
            })
        })?;
        let timestamp_offset = match req.timestamp_ms {
            None => None,
            Some(at_ms) => Some(
                broker
                    .group()
                    .view
                    .offset_for_time_blocking(&req.topic, partition, at_ms)
                    .await
                    .map_err(ApiError::from)?,
            ),
        };
        answer.push(PartitionOffsets {
            partition,
            start_offset: state.start_offset,
            end_offset: state.end_offset,
            timestamp_offset,
        });
    }
    Ok(Response::new(ListOffsetsResponse { partitions: answer }))
}

/// Records and bytes served to consumers (Fetch and Subscribe), per topic.
fn count_out(topic: &str, records: &[(u64, raftlog_core::Record)]) {
    if records.is_empty() {
        return;
    }
    let bytes: usize = records.iter().map(|(_, r)| r.size_bytes()).sum();
    metrics::counter!(crate::metrics::RECORDS_OUT, "topic" => topic.to_string())
        .increment(records.len() as u64);
    metrics::counter!(crate::metrics::BYTES_OUT, "topic" => topic.to_string())
        .increment(bytes as u64);
}
