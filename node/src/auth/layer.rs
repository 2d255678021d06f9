//! The authorization layer: a tower layer around the node's gRPC routes that, when auth is on,
//! authenticates every call of a client-facing service and checks what [`super::rules`] says it
//! needs, before the call reaches its handler. A refused call is answered here (UNAUTHENTICATED
//! or PERMISSION_DENIED) and its handler never runs, so nothing changes. It also holds each
//! caller to its quota of requests (and of produce bytes for Produce): RESOURCE_EXHAUSTED.
//!
//! The resource names a rule needs are in the request message, which tonic decodes only later:
//! the layer reads the body's frames until the whole (first) message is in, reads the needed
//! string fields off the protobuf encoding without decoding the rest (skipping a length-delimited
//! field is one jump, so a 1 MiB produce costs a few hundred steps), and hands the same frames
//! on, uncopied, followed by the rest of the body. The whole message is read because protobuf
//! lets a field appear twice with the last one winning: a check on the first occurrence could
//! be fooled.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::Frame;
use http_body_util::BodyExt;
use raftlog_core::auth::{ResourceType, CLUSTER_RESOURCE};
use rustls::pki_types::CertificateDer;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

use super::quota::Rate;
use super::rules::{self, Need, Rule};

/// Produce's path: its message's size is charged to the caller's produce quota here.
const PRODUCE: &str = "/raftlog.v1.Broker/Produce";
use super::{Auth, Caller, CURRENT_CALLER};

/// The client certificates of the connection a request came on (TLS only).
pub fn peer_certs(extensions: &http::Extensions) -> Option<Arc<Vec<CertificateDer<'static>>>> {
    extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())
}

/// The address a request came from.
pub fn remote_addr(extensions: &http::Extensions) -> Option<std::net::SocketAddr> {
    extensions
        .get::<TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
}

/// Adds [`Authorize`] to a tonic server. With `auth` off it passes every call straight on.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Auth>,
    /// The largest request message the services take: a longer one is refused before it is read.
    message_bytes_max: usize,
}

impl AuthLayer {
    pub fn new(auth: Arc<Auth>, message_bytes_max: usize) -> Self {
        Self {
            auth,
            message_bytes_max,
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    layer: AuthLayer,
}

type Answer = Result<http::Response<Body>, Infallible>;

impl<S> tower::Service<http::Request<Body>> for Authorize<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The service that was polled ready serves this call; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.layer.auth.clone();
        if !auth.enabled() || !request.uri().path().starts_with(rules::CLIENT_PACKAGE_PATH) {
            // Auth off; or health, reflection, or the peer Raft service (its own mTLS check).
            return Box::pin(inner.call(request));
        }
        let max = self.layer.message_bytes_max;
        Box::pin(async move {
            match admit(&auth, request, max).await {
                Ok((request, caller)) => CURRENT_CALLER.scope(caller, inner.call(request)).await,
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// Authenticates a call and checks its rule; the request to pass on (with the [`Caller`] in its
/// extensions) or the refusal.
async fn admit(
    auth: &Auth,
    request: http::Request<Body>,
    message_bytes_max: usize,
) -> Result<(http::Request<Body>, Caller), Status> {
    let path = request.uri().path().to_string();
    let rpc = rules::rpc_name(&path);
    let peer = remote_addr(request.extensions());
    let caller = auth
        .authenticate(request.headers(), request.extensions())
        .map_err(|failure| super::unauthenticated(failure, rpc, peer))?;
    let Some(rule) = rules::rule(&path) else {
        // Fail closed: a method no entry covers is never served with auth on.
        return Err(Status::unimplemented(format!(
            "{rpc} is no method of raftlog's API (or has no authorization rule)"
        )));
    };
    let (parts, mut body) = request.into_parts();
    let mut message_len = 0;
    if let Rule::Needs(needs) = rule {
        let fields: Vec<u32> = needs
            .iter()
            .filter_map(|need| match need {
                Need::Named { field, .. } => Some(*field),
                _ => None,
            })
            .collect();
        let mut names = Vec::new();
        if !fields.is_empty() {
            let (frames, len, found) = read_message(&mut body, &fields, message_bytes_max).await?;
            (names, message_len) = (found, len);
            body = Body::new(Replay { frames, rest: body });
        }
        for need in needs {
            match *need {
                Need::Named {
                    resource,
                    field,
                    operation,
                } => {
                    let name = names
                        .iter()
                        .find(|(f, _)| *f == field)
                        .map_or("", |(_, name)| name.as_str());
                    auth.check(&caller, resource, name, operation, rpc, peer)?;
                }
                Need::Cluster(operation) => auth.check(
                    &caller,
                    ResourceType::Cluster,
                    CLUSTER_RESOURCE,
                    operation,
                    rpc,
                    peer,
                )?,
                Need::AnyOf(resource, operation) => {
                    let security = auth.security();
                    if !security.allows_some(
                        &caller.principal,
                        caller.super_user,
                        resource,
                        operation,
                    ) {
                        return Err(auth.denied(&caller, resource, "*", operation, rpc, peer));
                    }
                }
            }
        }
    }
    // Quotas after permissions, so that a refusal says what is wrong with the call itself.
    auth.charge(&caller, Rate::Requests, 1)?;
    if path == PRODUCE {
        // The encoded message stands for its records' bytes: within a few bytes per record, and
        // known without decoding it.
        auth.charge(&caller, Rate::ProduceBytes, message_len as u64)?;
    }
    let mut request = http::Request::from_parts(parts, body);
    request.extensions_mut().insert(caller.clone());
    Ok((request, caller))
}

/// Reads the body's frames until its first gRPC message is complete (or the body ends), and
/// the values of the string `fields` in that message (the last occurrence of each, as a
/// protobuf decoder takes it; a field not present is left out). Returns the frames read, to be
/// passed on as they came.
async fn read_message(
    body: &mut Body,
    fields: &[u32],
    message_bytes_max: usize,
) -> Result<(VecDeque<Frame<Bytes>>, usize, Vec<(u32, String)>), Status> {
    let mut frames = VecDeque::new();
    let mut have = 0usize;
    let mut message_len: Option<usize> = None;
    loop {
        if message_len.is_none() && have >= 5 {
            let mut header = Chunks::new(&frames, 0, 5);
            let compressed = header.get_u8();
            let len = header.get_u32() as usize;
            if compressed != 0 {
                return Err(Status::unimplemented(
                    "compressed messages are not accepted by this server",
                ));
            }
            if len > message_bytes_max {
                return Err(Status::out_of_range(format!(
                    "the request message is {len} bytes, over the limit of {message_bytes_max}"
                )));
            }
            message_len = Some(len);
        }
        if message_len.is_some_and(|len| have >= 5 + len) {
            break;
        }
        match body.frame().await {
            None => break,
            Some(Err(status)) => return Err(status),
            Some(Ok(frame)) => {
                let is_data = frame.is_data();
                if let Some(data) = frame.data_ref() {
                    have += data.len();
                }
                frames.push_back(frame);
                if !is_data {
                    break; // trailers: nothing more of the message can come
                }
            }
        }
    }
    let Some(len) = message_len.filter(|len| have >= 5 + len) else {
        return Err(Status::invalid_argument(
            "the request ended before its message was complete",
        ));
    };
    let found = string_fields(Chunks::new(&frames, 5, len), fields)
        .map_err(|e| Status::invalid_argument(format!("malformed request message: {e}")))?;
    Ok((frames, len, found))
}

/// The values of the top-level string `fields` of an encoded message (last occurrence wins).
fn string_fields(mut buf: impl Buf, fields: &[u32]) -> Result<Vec<(u32, String)>, String> {
    use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
    let mut found: Vec<(u32, String)> = Vec::new();
    while buf.has_remaining() {
        let (tag, wire_type) = decode_key(&mut buf).map_err(|e| e.to_string())?;
        if wire_type == WireType::LengthDelimited && fields.contains(&tag) {
            let len = decode_varint(&mut buf).map_err(|e| e.to_string())? as usize;
            if len > buf.remaining() {
                return Err(format!("field {tag} runs past the message"));
            }
            let mut bytes = vec![0; len];
            buf.copy_to_slice(&mut bytes);
            let value =
                String::from_utf8(bytes).map_err(|_| format!("field {tag} is not UTF-8"))?;
            found.retain(|(f, _)| *f != tag);
            found.push((tag, value));
        } else {
            skip_field(wire_type, tag, &mut buf, DecodeContext::default())
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(found)
}

/// `len` bytes from offset `skip` of the data frames, read in place across frame boundaries.
struct Chunks<'a> {
    slices: VecDeque<&'a [u8]>,
    remaining: usize,
}

impl<'a> Chunks<'a> {
    fn new(frames: &'a VecDeque<Frame<Bytes>>, mut skip: usize, len: usize) -> Self {
        let mut slices = VecDeque::new();
        let mut left = len;
        for data in frames.iter().filter_map(Frame::data_ref) {
            let mut slice: &[u8] = data;
            if skip >= slice.len() {
                skip -= slice.len();
                continue;
            }
            slice = &slice[skip..];
            skip = 0;
            let take = slice.len().min(left);
            if take > 0 {
                slices.push_back(&slice[..take]);
            }
            left -= take;
            if left == 0 {
                break;
            }
        }
        Self {
            slices,
            remaining: len - left,
        }
    }
}

impl Buf for Chunks<'_> {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.slices.front().copied().unwrap_or_default()
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end");
        self.remaining -= cnt;
        while cnt > 0 {
            let front = self
                .slices
                .front_mut()
                .expect("remaining counts the slices");
            if cnt < front.len() {
                *front = &front[cnt..];
                return;
            }
            cnt -= front.len();
            self.slices.pop_front();
        }
    }
}

pin_project_lite::pin_project! {
    /// A body that yields the frames the layer read first, then the rest of the original body.
    struct Replay {
        frames: VecDeque<Frame<Bytes>>,
        #[pin]
        rest: Body,
    }
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        if let Some(frame) = this.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        this.rest.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use raftlog_proto::v1::{CommitOffsetsRequest, PartitionOffset, ProduceRequest, Record};

    fn framed(message: &impl Message, split: &[usize]) -> VecDeque<Frame<Bytes>> {
        let mut bytes = vec![0u8];
        bytes.extend((message.encoded_len() as u32).to_be_bytes());
        bytes.extend(message.encode_to_vec());
        let mut frames = VecDeque::new();
        let mut at = 0;
        for &cut in split.iter().chain([bytes.len()].iter()) {
            let cut = cut.min(bytes.len());
            frames.push_back(Frame::data(Bytes::copy_from_slice(&bytes[at..cut])));
            at = cut;
        }
        frames
    }

    #[test]
    fn string_fields_are_read_across_frames_and_the_last_occurrence_wins() {
        let produce = ProduceRequest {
            topic: "orders".into(),
            records: vec![
                Record {
                    value: vec![7; 5000].into(),
                    ..Default::default()
                };
                3
            ],
            ..Default::default()
        };
        for split in [vec![], vec![1], vec![3, 7, 9], vec![2, 5000, 10_000]] {
            let frames = framed(&produce, &split);
            let len = produce.encoded_len();
            let found = string_fields(Chunks::new(&frames, 5, len), &[1]).unwrap();
            assert_eq!(found, vec![(1, "orders".to_string())], "{split:?}");
        }
        let commit = CommitOffsetsRequest {
            group: "g".into(),
            topic: "t".into(),
            offsets: vec![PartitionOffset {
                partition: 1,
                offset: 2,
            }],
            ..Default::default()
        };
        let mut encoded = commit.encode_to_vec();
        // A second `topic` after the first: a decoder takes this one.
        encoded.extend(
            CommitOffsetsRequest {
                topic: "secret".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let decoded = CommitOffsetsRequest::decode(&encoded[..]).unwrap();
        assert_eq!(decoded.topic, "secret");
        let found = string_fields(&encoded[..], &[1, 2]).unwrap();
        assert!(found.contains(&(2, "secret".to_string())), "{found:?}");
        assert!(found.contains(&(1, "g".to_string())), "{found:?}");
        assert!(string_fields(&[0x0a, 0x05, b'a'][..], &[1]).is_err());
    }
}
