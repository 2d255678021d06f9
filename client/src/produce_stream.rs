//! Pipelined produce over one `ProduceStream` call: many requests in flight on one stream to the
//! leader, each answered when it commits.
//!
//! A unary Produce pays a whole HTTP/2 request (headers, a new stream, a task on the node) per
//! batch; on a stream a request is one DATA frame each way. [`ProduceStream::send`] has the same
//! contract as [`Client::produce_request`]: the same answers, errors and retries (requests the
//! node refused as not applied are resent, following the leader), so callers can switch freely.
//!
//! Order: requests are written to the stream in the order `send` is called and the leader
//! proposes them in that order, so one partition's batches keep the order of the `send` calls
//! that started them (as long as earlier ones are not retried after a failure).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::{pb, Client, Error};

type Answer = oneshot::Sender<Result<pb::ProduceResponse, Status>>;

/// Requests written to a stream and not yet answered, by request id.
#[derive(Default)]
struct Pending {
    answers: HashMap<u64, Answer>,
    /// Set when the stream has ended: nothing more will be answered on it.
    closed: bool,
}

/// One open stream to one node.
struct Conn {
    addr: String,
    requests: mpsc::Sender<pb::ProduceStreamRequest>,
    pending: Arc<Mutex<Pending>>,
}

/// A pipelined producer handle. Cheap to clone; clones share the stream.
#[derive(Clone)]
pub struct ProduceStream {
    client: Client,
    conn: Arc<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl ProduceStream {
    pub(crate) fn new(client: Client) -> Self {
        Self {
            client,
            conn: Arc::default(),
            next_id: Arc::default(),
        }
    }

    /// Sends one produce request on the stream and waits until it is committed.
    pub async fn send(&self, request: pb::ProduceRequest) -> Result<pb::ProduceResponse, Error> {
        let timeout = self.client.retry.request_timeout;
        self.client
            .with_leader(|addr| {
                let request = request.clone();
                async move {
                    let answer = self.submit(&addr, request).await?;
                    match tokio::time::timeout(timeout, answer).await {
                        Ok(Ok(answer)) => answer,
                        Ok(Err(_)) => Err(Status::unavailable(format!(
                            "produce stream to {addr} closed before the answer"
                        ))),
                        Err(_) => Err(Status::deadline_exceeded(format!(
                            "no answer on the produce stream to {addr} within {timeout:?}"
                        ))),
                    }
                }
            })
            .await
    }

    /// Writes `request` on the stream to `addr` (opening one if needed) and returns where its
    /// answer will arrive.
    async fn submit(
        &self,
        addr: &str,
        request: pb::ProduceRequest,
    ) -> Result<oneshot::Receiver<Result<pb::ProduceResponse, Status>>, Status> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        // Registration and writing happen under the lock, so requests reach the stream in the
        // order of `send` calls.
        let mut current = self.conn.lock().await;
        let conn = match current.as_ref() {
            Some(conn) if conn.addr == addr && !conn.pending.lock().expect("pending").closed => {
                conn.clone()
            }
            _ => {
                let conn = Arc::new(self.open(addr).await?);
                *current = Some(conn.clone());
                conn
            }
        };
        {
            let mut pending = conn.pending.lock().expect("pending lock");
            if pending.closed {
                return Err(not_sent(addr, "the stream has closed"));
            }
            pending.answers.insert(id, answer);
        }
        let message = pb::ProduceStreamRequest {
            request_id: id,
            request: Some(request),
        };
        if conn.requests.send(message).await.is_err() {
            conn.pending
                .lock()
                .expect("pending lock")
                .answers
                .remove(&id);
            *current = None;
            return Err(not_sent(addr, "the stream has closed"));
        }
        Ok(answered)
    }

    async fn open(&self, addr: &str) -> Result<Conn, Status> {
        let (requests, outbound) = mpsc::channel(1024);
        let mut broker = self.client.broker_at(addr).map_err(crate::to_status)?;
        let mut answers = broker
            .produce_stream(ReceiverStream::new(outbound))
            .await?
            .into_inner();
        let pending = Arc::new(Mutex::new(Pending::default()));
        let shared = pending.clone();
        let from = addr.to_string();
        tokio::spawn(async move {
            let end = loop {
                match answers.message().await {
                    Ok(Some(answer)) => {
                        let waiter = shared
                            .lock()
                            .expect("pending lock")
                            .answers
                            .remove(&answer.request_id);
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(outcome(answer));
                        }
                    }
                    Ok(None) => break Status::unavailable(format!("{from} ended the stream")),
                    Err(status) => break status,
                }
            };
            // Whatever is still in flight has an unknown outcome: it may have been appended.
            let mut pending = shared.lock().expect("pending lock");
            pending.closed = true;
            for (_, waiter) in pending.answers.drain() {
                let _ = waiter.send(Err(Status::new(
                    if end.code() == Code::Ok {
                        Code::Unavailable
                    } else {
                        end.code()
                    },
                    format!("produce stream to {from} ended: {}", end.message()),
                )));
            }
        });
        Ok(Conn {
            addr: addr.to_string(),
            requests,
            pending,
        })
    }
}

/// A request that never left this process: safe to resend.
fn not_sent(addr: &str, why: &str) -> Status {
    let mut status = Status::unavailable(format!("produce stream to {addr}: {why}"));
    status.metadata_mut().insert(
        crate::NOT_APPLIED_HEADER,
        MetadataValue::from_static("true"),
    );
    status
}

/// The answer as Produce would have given it.
fn outcome(answer: pb::ProduceStreamResponse) -> Result<pb::ProduceResponse, Status> {
    use pb::produce_stream_response::Outcome;
    match answer.outcome {
        Some(Outcome::Ok(ok)) => Ok(ok),
        Some(Outcome::Error(e)) => {
            let mut metadata = MetadataMap::new();
            for (key, value) in e.metadata {
                if let (Ok(key), Ok(value)) = (
                    MetadataKey::from_bytes(key.as_bytes()),
                    MetadataValue::try_from(value.as_str()),
                ) {
                    metadata.insert(key, value);
                }
            }
            Err(Status::with_metadata(
                Code::from_i32(e.code),
                e.message,
                metadata,
            ))
        }
        None => Err(Status::internal("produce stream answer without an outcome")),
    }
}

impl Client {
    /// A pipelined producer handle over one stream to the leader (see [`ProduceStream`]).
    pub fn produce_stream(&self) -> ProduceStream {
        ProduceStream::new(self.clone())
    }
}
