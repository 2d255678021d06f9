//! raftlog's Rust client: connect with a list of endpoints, find and follow the leader for writes,
//! read from any node, and retry what is safe to retry.
//!
//! - [`Client`]: one call per RPC, with leader following and retries; a bearer token
//!   ([`Client::with_token`]) goes with every call.
//! - [`producer::Producer`]: batches records per partition (linger and size bounds), partitions
//!   keyed records by the documented key hash, keeps each partition's order.
//! - [`produce_stream::ProduceStream`]: many produce requests in flight on one stream to the
//!   leader (the pipelined form of [`Client::produce_request`]).
//! - [`consumer::Consumer`]: reads a topic's partitions from any position, commits and resumes a
//!   group's offsets, and fails over to another endpoint when its node fails.
//! - [`queue::Worker`]: takes a queue's records one by one (locked to it), acks, releases,
//!   rejects or extends them.
//!
//! Retries: a write is retried only when the node said it was definitely not applied (no leader,
//! not the leader, over the caller's quota: after the wait the node asks for) or the connection
//! was never made. Any other failure of a write is reported as
//! [`Error::is_definite`] = false: the write may or may not have been applied.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftlog_proto::v1::auth_client::AuthClient;
use raftlog_proto::v1::broker_client::BrokerClient;
use raftlog_proto::v1::cluster_client::ClusterClient;
pub use raftlog_proto::v1::{self as pb};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

pub mod consumer;
pub mod membership;
pub mod produce_stream;
pub mod producer;
pub mod queue;

/// Metadata keys the nodes use (see node/src/api/error.rs).
pub const LEADER_ADDR_HEADER: &str = "raftlog-leader";
pub const NOT_APPLIED_HEADER: &str = "raftlog-not-applied";
pub const END_OFFSET_HEADER: &str = "raftlog-end-offset";
pub const START_OFFSET_HEADER: &str = "raftlog-start-offset";
pub const MEMBER_FENCED_HEADER: &str = "raftlog-member-fenced";
/// How long a call refused for its principal's quota should wait before it is tried again, ms.
pub const RETRY_AFTER_HEADER: &str = "retry-after-ms";

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(Status),
    #[error("gave up after {attempts} attempts in {elapsed:?}; last error: {:?}: {}", .last.code(), .last.message())]
    Exhausted {
        attempts: u32,
        elapsed: Duration,
        last: Status,
    },
    #[error("invalid endpoint '{0}'")]
    Endpoint(String),
    /// The TLS files could not be read or used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The token cannot be sent (see [`Client::with_token`]).
    #[error("token: {0}")]
    Token(String),
}

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::Status(s) | Error::Exhausted { last: s, .. } => s.code(),
            Error::Endpoint(_) | Error::Tls(_) | Error::Token(_) => Code::InvalidArgument,
        }
    }

    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::Status(s) | Error::Exhausted { last: s, .. } => Some(s),
            Error::Endpoint(_) | Error::Tls(_) | Error::Token(_) => None,
        }
    }

    /// The partition's actual end offset, attached to a conditional append's FAILED_PRECONDITION
    /// and to OUT_OF_RANGE fetches.
    pub fn end_offset(&self) -> Option<u64> {
        self.metadata_u64(END_OFFSET_HEADER)
    }

    /// The partition's start offset, attached to OUT_OF_RANGE fetches.
    pub fn start_offset(&self) -> Option<u64> {
        self.metadata_u64(START_OFFSET_HEADER)
    }

    fn metadata_u64(&self, key: &str) -> Option<u64> {
        self.status()?
            .metadata()
            .get(key)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    }

    /// A consumer-group member's heartbeat or commit was refused because the member is no longer
    /// in its group (its session expired, it was removed): it must drop every partition and join
    /// again.
    pub fn is_member_fenced(&self) -> bool {
        self.status()
            .is_some_and(|s| s.metadata().get(MEMBER_FENCED_HEADER).is_some())
    }

    /// True when a failed write certainly did not happen.
    pub fn is_definite(&self) -> bool {
        match self.status() {
            None => true,
            Some(s) => {
                is_not_applied(s)
                    || matches!(
                        s.code(),
                        Code::InvalidArgument
                            | Code::NotFound
                            | Code::AlreadyExists
                            | Code::FailedPrecondition
                            | Code::OutOfRange
                            | Code::ResourceExhausted
                            | Code::Unimplemented
                            | Code::PermissionDenied
                            | Code::Unauthenticated
                    )
            }
        }
    }
}

/// The wait a node asked for when it refused a call over its principal's quota
/// (RESOURCE_EXHAUSTED with [`RETRY_AFTER_HEADER`]).
fn retry_after(status: &Status) -> Option<Duration> {
    if status.code() != Code::ResourceExhausted {
        return None;
    }
    let ms: u64 = status
        .metadata()
        .get(RETRY_AFTER_HEADER)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms))
}

/// The node said nothing was applied, or the request never left this process (no connection).
fn is_not_applied(status: &Status) -> bool {
    status.metadata().contains_key(NOT_APPLIED_HEADER)
        || (status.code() == Code::Unavailable
            && (status.message().contains("tcp connect error")
                || status.message().contains("error trying to connect")))
}

/// How long and how often to retry.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub deadline: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(15),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(1000),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// TLS for a [`Client`]'s connections (docs/security.md): the CA the nodes' certificates chain
/// to, and this client's own certificate and key, for clusters that require client certificates.
/// A node's certificate must name the host the client dials it by (an IP or DNS name).
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// PEM file of the CA certificate(s).
    pub ca: PathBuf,
    /// PEM files of this client's certificate and its private key (both or neither).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsOptions {
    /// Reads the files into tonic's TLS configuration; an error names the file and what is wrong.
    fn config(&self) -> Result<ClientTlsConfig, Error> {
        let read = |what: &str, path: &PathBuf| -> Result<Vec<u8>, Error> {
            let pem = std::fs::read(path)
                .map_err(|e| Error::Tls(format!("reading {what} {}: {e}", path.display())))?;
            if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
                return Err(Error::Tls(format!(
                    "{what} {} is not PEM (no -----BEGIN line)",
                    path.display()
                )));
            }
            Ok(pem)
        };
        let config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("CA", &self.ca)?));
        match (&self.cert, &self.key) {
            (None, None) => Ok(config),
            (Some(cert), Some(key)) => Ok(config.identity(Identity::from_pem(
                read("certificate", cert)?,
                read("key", key)?,
            ))),
            _ => Err(Error::Tls(
                "a client certificate and its key go together: give both or neither".into(),
            )),
        }
    }
}

/// What every call of a [`Client`] carries to identify its caller: a bearer token as
/// `authorization: Bearer <token>` (docs/security.md), or nothing.
#[derive(Clone, Default)]
pub struct Credentials {
    authorization: Option<MetadataValue<Ascii>>,
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A connection to one node with the client's credentials on every call: what the stubs
/// ([`Client::broker_at`], ...) run on.
pub type Connection = InterceptedService<Channel, Credentials>;

/// A connection to a raftlog cluster. Cheap to clone; clones share connections and the leader
/// they learned.
#[derive(Clone)]
pub struct Client {
    endpoints: Arc<Vec<String>>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    leader: Arc<Mutex<Option<String>>>,
    retry: RetryPolicy,
    /// TLS for every connection; none: plaintext.
    tls: Option<ClientTlsConfig>,
    credentials: Credentials,
}

tokio::task_local! {
    /// The timeout of the attempt `Client::with_leader` is making, for the writes it sends.
    static ATTEMPT_TIMEOUT: Duration;
}

/// Least time an attempt gets, even at the end of the retry deadline: a request with less would
/// only fail.
const ATTEMPT_TIMEOUT_MIN: Duration = Duration::from_millis(100);

/// Largest message this client accepts (fetch responses).
const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

impl Client {
    /// A client for the cluster reachable at `endpoints` (host:port). Connections are made lazily.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Result<Self, Error> {
        let endpoints: Vec<String> = endpoints.into_iter().map(Into::into).collect();
        if endpoints.is_empty() {
            return Err(Error::Endpoint("(none given)".into()));
        }
        let client = Self {
            endpoints: Arc::new(endpoints),
            channels: Arc::default(),
            leader: Arc::default(),
            retry: RetryPolicy::default(),
            tls: None,
            credentials: Credentials::default(),
        };
        for e in client.endpoints.iter() {
            client.channel(e)?;
        }
        Ok(client)
    }

    /// Connects over TLS (https) with `tls`; the files are read here, once.
    pub fn with_tls(mut self, tls: &TlsOptions) -> Result<Self, Error> {
        self.tls = Some(tls.config()?);
        // Channels made before were plaintext.
        self.channels = Arc::default();
        for e in self.endpoints.iter() {
            self.channel(e)?;
        }
        Ok(self)
    }

    /// Sends `token` with every call as `authorization: Bearer <token>` (the secret `raftlog
    /// token create` printed). Refused here if it cannot be a header value.
    pub fn with_token(mut self, token: &str) -> Result<Self, Error> {
        let value = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| Error::Token("the token holds characters a header cannot carry".into()))?;
        self.credentials = Credentials {
            authorization: Some(value),
        };
        Ok(self)
    }

    /// A client of other endpoints (one node, say) with this one's TLS and retry policy.
    pub fn for_endpoints(
        &self,
        endpoints: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Self, Error> {
        let mut client = Client::new(endpoints)?.with_retry(self.retry.clone());
        client.credentials = self.credentials.clone();
        if let Some(tls) = &self.tls {
            client.tls = Some(tls.clone());
            for e in client.endpoints.iter() {
                client.channel(e)?;
            }
        }
        Ok(client)
    }

    /// The endpoint of `addr` with raftlog's HTTP/2 settings, https when TLS is on.
    fn endpoint(&self, addr: &str) -> Result<Endpoint, Error> {
        let endpoint = match &self.tls {
            None => Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|_| Error::Endpoint(addr.to_string()))?,
            Some(tls) => Endpoint::from_shared(format!("https://{addr}"))
                .map_err(|_| Error::Endpoint(addr.to_string()))?
                .tls_config(tls.clone())
                .map_err(|e| Error::Tls(format!("{addr}: {e}")))?,
        };
        Ok(raftlog_proto::http2::client_endpoint(endpoint))
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        // Channels carry the request timeout: the ones made with the old policy go.
        self.channels = Arc::default();
        self
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    pub(crate) fn channel(&self, addr: &str) -> Result<Channel, Error> {
        let mut channels = self.channels.lock().expect("channel cache lock");
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let channel = self
            .endpoint(addr)?
            .connect_timeout(Duration::from_secs(1))
            .timeout(self.retry.request_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// A connection for a stream that lives as long as the caller reads it: no request
    /// timeout (and not the cached channel, which has one).
    pub(crate) fn stream_connection(&self, addr: &str) -> Result<Connection, Error> {
        let channel = self
            .endpoint(addr)?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(InterceptedService::new(channel, self.credentials.clone()))
    }

    /// Remembers the leader a refusal names (if it names one) for the next call.
    pub(crate) fn follow_leader_hint(&self, status: &Status) {
        let hint = status
            .metadata()
            .get(LEADER_ADDR_HEADER)
            .and_then(|v| v.to_str().ok());
        if let Some(hint) = hint {
            *self.leader.lock().expect("leader lock") = Some(hint.to_string());
        }
    }

    fn connection(&self, addr: &str) -> Result<Connection, Error> {
        Ok(InterceptedService::new(
            self.channel(addr)?,
            self.credentials.clone(),
        ))
    }

    /// Broker stub for one node.
    pub fn broker_at(&self, addr: &str) -> Result<BrokerClient<Connection>, Error> {
        Ok(BrokerClient::new(self.connection(addr)?)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX))
    }

    /// Cluster (operator) stub for one node.
    pub fn cluster_at(&self, addr: &str) -> Result<ClusterClient<Connection>, Error> {
        Ok(ClusterClient::new(self.connection(addr)?))
    }

    /// Auth (tokens, ACLs) stub for one node.
    pub fn auth_at(&self, addr: &str) -> Result<AuthClient<Connection>, Error> {
        Ok(AuthClient::new(self.connection(addr)?))
    }

    /// Runs an Auth call that changes the security state on the leader (following hints,
    /// retrying what was certainly not applied).
    pub async fn auth_write<T, F, Fut>(&self, mut op: F) -> Result<T, Error>
    where
        F: FnMut(AuthClient<Connection>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.with_leader(|addr| {
            let stub = self.auth_at(&addr).map_err(to_status);
            let call = stub.map(&mut op);
            async move { call?.await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// The node to send a write to: the last known leader, else each endpoint in turn.
    fn write_target(&self, attempt: u32) -> String {
        if let Some(leader) = self.leader.lock().expect("leader lock").clone() {
            return leader;
        }
        self.endpoints[attempt as usize % self.endpoints.len()].clone()
    }

    /// Runs `op` against the leader, following leader hints and retrying what is safe to retry
    /// until the retry deadline.
    pub async fn with_leader<T, F, Fut>(&self, mut op: F) -> Result<T, Error>
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let start = Instant::now();
        let mut backoff = self.retry.backoff_initial;
        let mut attempt = 0u32;
        loop {
            let target = self.write_target(attempt);
            attempt += 1;
            // The attempt's deadline, which its write carries to the node (`Self::deadlined`):
            // the request timeout, within what is left of the retry deadline.
            let left = self.retry.deadline.saturating_sub(start.elapsed());
            let timeout = self
                .retry
                .request_timeout
                .min(left)
                .max(ATTEMPT_TIMEOUT_MIN);
            match ATTEMPT_TIMEOUT.scope(timeout, op(target.clone())).await {
                Ok(value) => {
                    *self.leader.lock().expect("leader lock") = Some(target);
                    return Ok(value);
                }
                Err(status) if status.code() == Code::Unavailable && is_not_applied(&status) => {
                    let hint = status
                        .metadata()
                        .get(LEADER_ADDR_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                        .filter(|h| *h != target);
                    let followed_hint = hint.is_some();
                    *self.leader.lock().expect("leader lock") = hint;
                    if start.elapsed() >= self.retry.deadline {
                        return Err(Error::Exhausted {
                            attempts: attempt,
                            elapsed: start.elapsed(),
                            last: status,
                        });
                    }
                    if !followed_hint {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.retry.backoff_max);
                    }
                }
                Err(status) if retry_after(&status).is_some() => {
                    // Over the principal's quota: nothing was done; wait as long as the node
                    // says, if the retry deadline allows.
                    let wait = retry_after(&status).unwrap_or_default();
                    if start.elapsed() + wait >= self.retry.deadline {
                        return Err(Error::Exhausted {
                            attempts: attempt,
                            elapsed: start.elapsed(),
                            last: status,
                        });
                    }
                    tokio::time::sleep(wait).await;
                }
                Err(status) => {
                    if status.code() == Code::Unavailable || status.code() == Code::DeadlineExceeded
                    {
                        // Outcome unknown; forget the leader so the next call looks again.
                        *self.leader.lock().expect("leader lock") = None;
                    }
                    return Err(Error::Status(status));
                }
            }
        }
    }

    /// `message` as a request with the current attempt's deadline as its `grpc-timeout`, so the
    /// node gives up on it when this client does: a write not proposed by then is never applied
    /// (docs/api.md, "Deadlines").
    pub(crate) fn deadlined<T>(&self, message: T) -> tonic::Request<T> {
        let timeout = ATTEMPT_TIMEOUT
            .try_with(|t| *t)
            .unwrap_or(self.retry.request_timeout);
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        request
    }

    /// Runs a read on the first node that answers, in endpoint order starting at `preferred`.
    async fn with_any<T, F, Fut>(&self, mut op: F) -> Result<T, Error>
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let start = Instant::now();
        let mut last = None;
        for addr in self.endpoints.iter() {
            loop {
                match op(addr.clone()).await {
                    Ok(v) => return Ok(v),
                    Err(s)
                        if s.code() == Code::Unavailable || s.code() == Code::DeadlineExceeded =>
                    {
                        last = Some(s);
                        break;
                    }
                    // Over the caller's quota on this node: wait as asked, within the deadline.
                    Err(s) => match retry_after(&s) {
                        Some(wait) if start.elapsed() + wait < self.retry.deadline => {
                            tokio::time::sleep(wait).await;
                        }
                        _ => return Err(Error::Status(s)),
                    },
                }
            }
        }
        let detail = last.map_or_else(String::new, |s| format!(": {}", s.message()));
        Err(Error::Status(Status::unavailable(format!(
            "no node answered ({}){detail}; is the cluster up and are --endpoints / RAFTLOG_ENDPOINTS right?",
            self.endpoints.join(",")
        ))))
    }

    pub async fn create_topic(&self, name: &str, partitions: u32) -> Result<pb::TopicInfo, Error> {
        self.create_topic_with(
            name,
            pb::TopicConfig {
                partitions,
                ..Default::default()
            },
        )
        .await
    }

    pub async fn create_topic_with(
        &self,
        name: &str,
        config: pb::TopicConfig,
    ) -> Result<pb::TopicInfo, Error> {
        let request = pb::CreateTopicRequest {
            name: name.to_string(),
            config: Some(config),
        };
        self.with_leader(|addr| {
            let request = request.clone();
            async move {
                self.broker_at(&addr)
                    .map_err(to_status)?
                    .create_topic(self.deadlined(request))
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// Changes a topic's retention (`None` keeps a setting; `Some(0)` removes the limit).
    pub async fn alter_topic(
        &self,
        name: &str,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
    ) -> Result<pb::TopicInfo, Error> {
        self.with_leader(|addr| async move {
            let request = pb::AlterTopicRequest {
                name: name.to_string(),
                retention_ms,
                retention_bytes,
            };
            self.broker_at(&addr)
                .map_err(to_status)?
                .alter_topic(self.deadlined(request))
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// A new producer id for idempotent produce (granted through Raft).
    pub async fn init_producer(&self) -> Result<u64, Error> {
        self.with_leader(|addr| async move {
            self.broker_at(&addr)
                .map_err(to_status)?
                .init_producer(self.deadlined(pb::InitProducerRequest {}))
                .await
                .map(|r| r.into_inner().producer_id)
        })
        .await
    }

    /// Deletes a topic, its records and the groups' offsets for it.
    pub async fn delete_topic(&self, name: &str) -> Result<(), Error> {
        self.with_leader(|addr| async move {
            let request = pb::DeleteTopicRequest {
                name: name.to_string(),
            };
            self.broker_at(&addr)
                .map_err(to_status)?
                .delete_topic(self.deadlined(request))
                .await
                .map(|_| ())
        })
        .await
    }

    pub async fn list_topics(&self) -> Result<Vec<pb::TopicInfo>, Error> {
        self.with_any(|addr| async move {
            self.broker_at(&addr)
                .map_err(to_status)?
                .list_topics(pb::ListTopicsRequest {})
                .await
                .map(|r| r.into_inner().topics)
        })
        .await
    }

    pub async fn describe_topic(&self, name: &str) -> Result<pb::TopicInfo, Error> {
        self.with_any(|addr| async move {
            let request = pb::DescribeTopicRequest {
                name: name.to_string(),
            };
            self.broker_at(&addr)
                .map_err(to_status)?
                .describe_topic(request)
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// Appends `records` to `topic`/`partition` as one batch; returns once it is committed.
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<pb::Record>,
    ) -> Result<pb::ProduceResponse, Error> {
        self.produce_request(pb::ProduceRequest {
            topic: topic.to_string(),
            partition: Some(partition),
            records,
            ..Default::default()
        })
        .await
    }

    /// Sends one produce request as given (e.g. with no partition, letting the node's
    /// partitioner choose); returns once the batch is committed.
    pub async fn produce_request(
        &self,
        request: pb::ProduceRequest,
    ) -> Result<pb::ProduceResponse, Error> {
        self.with_leader(|addr| {
            let request = request.clone();
            async move {
                self.broker_at(&addr)
                    .map_err(to_status)?
                    .produce(self.deadlined(request))
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// Fetches from a specific node.
    pub async fn fetch_from(
        &self,
        addr: &str,
        request: pb::FetchRequest,
    ) -> Result<pb::FetchResponse, Error> {
        self.broker_at(addr)?
            .fetch(request)
            .await
            .map(|r| r.into_inner())
            .map_err(Error::Status)
    }

    /// Fetches from the first node that answers.
    pub async fn fetch(&self, request: pb::FetchRequest) -> Result<pb::FetchResponse, Error> {
        self.with_any(|addr| {
            let request = request.clone();
            async move {
                self.broker_at(&addr)
                    .map_err(to_status)?
                    .fetch(request)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// Subscribes to `topic`/`partition` from `offset` on one node: committed records are pushed as
    /// they arrive, until the returned stream is dropped.
    pub async fn subscribe(
        &self,
        addr: &str,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<tonic::Streaming<pb::SubscribeResponse>, Error> {
        let request = pb::SubscribeRequest {
            topic: topic.to_string(),
            partition,
            offset,
            max_records: 0,
        };
        let mut broker = BrokerClient::new(self.stream_connection(addr)?)
            .max_decoding_message_size(MESSAGE_BYTES_MAX);
        broker
            .subscribe(request)
            .await
            .map(|r| r.into_inner())
            .map_err(Error::Status)
    }

    /// Stores `group`'s next offsets to read for partitions of `topic`. A commit that would move
    /// a partition's offset backwards is refused (FAILED_PRECONDITION); see
    /// [`Self::commit_offsets_with`].
    pub async fn commit_offsets(
        &self,
        group: &str,
        topic: &str,
        offsets: impl IntoIterator<Item = (u32, u64)>,
    ) -> Result<(), Error> {
        self.commit_offsets_with(group, topic, offsets, false).await
    }

    /// [`Self::commit_offsets`], optionally allowed to move offsets backwards (`allow_rewind`:
    /// an explicit reset, such as `raftlog group seek`).
    pub async fn commit_offsets_with(
        &self,
        group: &str,
        topic: &str,
        offsets: impl IntoIterator<Item = (u32, u64)>,
        allow_rewind: bool,
    ) -> Result<(), Error> {
        self.commit_offsets_as(group, topic, offsets, allow_rewind, None)
            .await
    }

    /// [`Client::commit_offsets_with`] by a member (id, epoch) of a coordinated group: refused
    /// unless it owns every partition committed.
    pub async fn commit_offsets_as(
        &self,
        group: &str,
        topic: &str,
        offsets: impl IntoIterator<Item = (u32, u64)>,
        allow_rewind: bool,
        member: Option<(&str, i64)>,
    ) -> Result<(), Error> {
        let (member_id, member_epoch) = member.unwrap_or_default();
        let request = pb::CommitOffsetsRequest {
            group: group.to_string(),
            topic: topic.to_string(),
            offsets: offsets
                .into_iter()
                .map(|(partition, offset)| pb::PartitionOffset { partition, offset })
                .collect(),
            allow_rewind,
            member_id: member_id.to_string(),
            member_epoch,
        };
        self.with_leader(|addr| {
            let request = request.clone();
            async move {
                self.broker_at(&addr)
                    .map_err(to_status)?
                    .commit_offsets(self.deadlined(request))
                    .await
                    .map(|_| ())
            }
        })
        .await
    }

    /// `group`'s committed offsets for `topic`, by partition (partitions without a commit are
    /// absent). Linearizable: asked of the leader, it reflects every acknowledged commit.
    pub async fn fetch_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<std::collections::BTreeMap<u32, u64>, Error> {
        self.with_leader(|addr| async move {
            let request = pb::FetchOffsetsRequest {
                group: group.to_string(),
                topic: topic.to_string(),
            };
            self.broker_at(&addr)
                .map_err(to_status)?
                .fetch_offsets(request)
                .await
                .map(|r| {
                    r.into_inner()
                        .offsets
                        .into_iter()
                        .map(|o| (o.partition, o.offset))
                        .collect()
                })
        })
        .await
    }

    /// Removes every committed offset of `group` (NOT_FOUND when it has none).
    pub async fn delete_group(&self, group: &str) -> Result<(), Error> {
        self.with_leader(|addr| async move {
            let request = pb::DeleteGroupRequest {
                group: group.to_string(),
            };
            self.broker_at(&addr)
                .map_err(to_status)?
                .delete_group(self.deadlined(request))
                .await
                .map(|_| ())
        })
        .await
    }

    /// Each partition's start and end offsets (`partitions` empty: all of the topic's), and with
    /// `timestamp_ms` the first offset whose record timestamp is at or after it (the end offset
    /// when there is none).
    pub async fn list_offsets(
        &self,
        topic: &str,
        partitions: &[u32],
        timestamp_ms: Option<i64>,
    ) -> Result<Vec<pb::PartitionOffsets>, Error> {
        self.with_any(|addr| async move {
            let request = pb::ListOffsetsRequest {
                topic: topic.to_string(),
                partitions: partitions.to_vec(),
                timestamp_ms,
            };
            self.broker_at(&addr)
                .map_err(to_status)?
                .list_offsets(request)
                .await
                .map(|r| r.into_inner().partitions)
        })
        .await
    }

    /// One heartbeat of a coordinated group's member, sent to the leader (see
    /// [`membership::Membership`], which sends them).
    pub async fn group_heartbeat(
        &self,
        request: pb::GroupHeartbeatRequest,
    ) -> Result<pb::GroupHeartbeatResponse, Error> {
        self.with_leader(|addr| {
            let request = request.clone();
            async move {
                self.broker_at(&addr)
                    .map_err(to_status)?
                    .group_heartbeat(self.deadlined(request))
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// Removes a member from a coordinated group: its partitions move at once.
    pub async fn remove_group_member(&self, group: &str, member_id: &str) -> Result<(), Error> {
        self.with_leader(|addr| async move {
            let request = pb::RemoveGroupMemberRequest {
                group: group.to_string(),
                member_id: member_id.to_string(),
            };
            self.broker_at(&addr)
                .map_err(to_status)?
                .remove_group_member(self.deadlined(request))
                .await
                .map(|_| ())
        })
        .await
    }

    pub async fn list_groups(&self) -> Result<Vec<pb::GroupInfo>, Error> {
        self.with_any(|addr| async move {
            self.broker_at(&addr)
                .map_err(to_status)?
                .list_groups(pb::ListGroupsRequest {})
                .await
                .map(|r| r.into_inner().groups)
        })
        .await
    }

    pub async fn describe_group(&self, group: &str) -> Result<pb::GroupInfo, Error> {
        self.with_any(|addr| async move {
            let request = pb::DescribeGroupRequest {
                group: group.to_string(),
            };
            self.broker_at(&addr)
                .map_err(to_status)?
                .describe_group(request)
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// Adds a node as a learner (on the leader); `blocking` waits until it has caught up.
    pub async fn add_learner(
        &self,
        node_id: u64,
        addr: &str,
        blocking: bool,
    ) -> Result<pb::MembershipResponse, Error> {
        let request = pb::AddLearnerRequest {
            member: Some(pb::Member {
                node_id,
                addr: addr.to_string(),
            }),
            blocking,
        };
        self.with_leader(|a| {
            let request = request.clone();
            async move {
                self.cluster_at(&a)
                    .map_err(to_status)?
                    .add_learner(request)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
    }

    /// Makes a learner a voter (on the leader).
    pub async fn promote_voter(&self, node_id: u64) -> Result<pb::MembershipResponse, Error> {
        self.with_leader(|a| async move {
            let request = pb::NodeRequest { node_id };
            self.cluster_at(&a)
                .map_err(to_status)?
                .promote_voter(request)
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// Removes a node, voter or learner, from the membership (on the leader).
    pub async fn remove_node(&self, node_id: u64) -> Result<pb::MembershipResponse, Error> {
        self.with_leader(|a| async move {
            let request = pb::NodeRequest { node_id };
            self.cluster_at(&a)
                .map_err(to_status)?
                .remove_node(request)
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// Status of every endpoint, in endpoint order (an error for a node that does not answer).
    pub async fn cluster_status(&self) -> Vec<(String, Result<pb::NodeStatus, Error>)> {
        let mut out = Vec::new();
        for addr in self.endpoints.iter() {
            let status = match self.cluster_at(addr) {
                Ok(mut c) => c
                    .status(pb::StatusRequest {})
                    .await
                    .map(|r| r.into_inner())
                    .map_err(Error::Status),
                Err(e) => Err(e),
            };
            out.push((addr.clone(), status));
        }
        out
    }
}

fn to_status(e: Error) -> Status {
    Status::invalid_argument(e.to_string())
}

/// A record with just a value.
pub fn record(value: impl Into<bytes::Bytes>) -> pb::Record {
    pb::Record {
        value: value.into(),
        ..Default::default()
    }
}
