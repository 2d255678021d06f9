//! Many random malformed requests against a 3-node cluster of real processes, once plain and once
//! secured (TLS on every port and auth on: sent over TLS with a super-user's token on every
//! request, so the authorization layer parses the garbage first): the nodes stay up, answer every
//! request, and their data stays intact.
//!
//! Two kinds of garbage, generated up front from a fixed seed (`RAFTLOG_FUZZ_SEED` overrides it):
//! - raw: bodies of random bytes (plus truncated or mutated real messages, overlong varints,
//!   deeply nested length-delimited fields, bad lengths and wire types) sent through a byte codec
//!   to every unary method of `raftlog.v1.Broker`, `raftlog.v1.Queues` and `raftlog.v1.Cluster`
//!   (no queue exists, so a body that would create one is replaced; except the membership
//!   RPCs, for which an empty body is a legitimate request; InitProducer gets only bodies that do
//!   not decode, as every request that decodes is granted a producer id), and random or mutated
//!   postcard payloads inside well-formed envelopes to the peer-only `raftlog.raft.v1.Raft`. Any
//!   status is an acceptable answer except the ones that mean the server broke: UNKNOWN or
//!   UNAVAILABLE (a handler panic resets the stream), INTERNAL other than tonic's protobuf decode
//!   error, and OK from the Raft service (it is never sent a payload that decodes).
//! - structured: well-typed Broker requests with invalid contents (bad and missing names,
//!   partitions and offsets out of range, empty, oversize and inconsistent batches, bad
//!   partitioners, idempotent produce with unknown producers and sequence gaps or stale
//!   sequences, conditional appends at the wrong end offset, duplicate commits, alters with
//!   nothing to change). Each must be refused with a client-error status (INVALID_ARGUMENT,
//!   NOT_FOUND, OUT_OF_RANGE, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, or ALREADY_EXISTS for
//!   creating the existing topic), with the `raftlog-end-offset` trailer where documented; reads
//!   of things that exist may succeed, and a retry of a remembered idempotent batch must be
//!   answered as a duplicate with its original offsets.
//!
//! Every request must be answered within a timeout, no node process may exit, and no node may log
//! a panic.
//!
//! No request is ever one that legitimately changes the state: a generated body that happens to
//! decode into such a request (a valid new topic name, a produce to the real topic, a Raft message
//! that decodes) or into a long-polling fetch is replaced by another. So the topics, records and
//! group offsets read back from every node at the end must equal those from before, and the
//! replicas' digests must agree with each other. (Refused writes still take Raft log entries, and
//! the applied index is hashed into the digest: only its row count is compared with before.)

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use futures::StreamExt;
use prost::Message;
use raftlog_client::{pb, record};
use raftlog_core::types::{
    AppendEntriesRequest, CommittedLeaderId, Entry, LogId, SnapshotMeta, Vote, VoteRequest,
};
use raftlog_core::{Command, ProducerSequence, Record as StoredRecord, TopicSettings};
use raftlog_proto::raft::v1::RaftEnvelope;
use raftlog_store::{decode, encode};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use support::{read_all, NodeOptions, TestCluster};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

const DEFAULT_SEED: u64 = 0x5eed_2a11_0f0f_1e57;
const TOPIC: &str = "data";
const GROUP: &str = "g1";
const PARTITIONS: u32 = 3;
const RECORDS_PER_PARTITION: u64 = 50;
/// Group g1's committed offsets, per partition.
const COMMITTED: [u64; 3] = [10, 20, 50];
/// The node's default limits (node/src/config.rs) that the generators aim just past.
const NAME_BYTES_MAX: usize = 249;
const RECORD_BYTES_MAX: usize = 1024 * 1024;
const BATCH_RECORDS_MAX: usize = 10_000;
const PARTITIONS_PER_TOPIC_MAX: u32 = 1024;

const RAW_PER_METHOD: usize = 400;
const RAFT_PER_METHOD: usize = 500;
const STRUCTURED: usize = 6000;
const IN_FLIGHT: usize = 24;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Methods that get random bodies (ProduceStream as a stream of one message). Cluster's
/// Initialize, AddLearner, PromoteVoter, RemoveNode and TransferLeader are left out: they are
/// operator RPCs whose default (empty) request is well-formed and may change the membership.
/// Subscribe is streaming.
const CLIENT_METHODS: &[&str] = &[
    "/raftlog.v1.Broker/CreateTopic",
    "/raftlog.v1.Broker/ListTopics",
    "/raftlog.v1.Broker/DescribeTopic",
    "/raftlog.v1.Broker/DeleteTopic",
    "/raftlog.v1.Broker/AlterTopic",
    "/raftlog.v1.Broker/InitProducer",
    "/raftlog.v1.Broker/Produce",
    "/raftlog.v1.Broker/ProduceStream",
    "/raftlog.v1.Broker/Fetch",
    "/raftlog.v1.Broker/CommitOffsets",
    "/raftlog.v1.Broker/FetchOffsets",
    "/raftlog.v1.Broker/ListGroups",
    "/raftlog.v1.Broker/DescribeGroup",
    "/raftlog.v1.Broker/DeleteGroup",
    "/raftlog.v1.Broker/ListOffsets",
    "/raftlog.v1.Broker/GroupHeartbeat",
    "/raftlog.v1.Broker/RemoveGroupMember",
    "/raftlog.v1.Queues/CreateQueue",
    "/raftlog.v1.Queues/DescribeQueue",
    "/raftlog.v1.Queues/ListQueues",
    "/raftlog.v1.Queues/DeleteQueue",
    "/raftlog.v1.Queues/Receive",
    "/raftlog.v1.Queues/Settle",
    "/raftlog.v1.Queues/Redrive",
    "/raftlog.v1.Cluster/Status",
    "/raftlog.v1.Cluster/TriggerSnapshot",
    "/raftlog.v1.Cluster/StateDigest",
];
const RAFT_METHODS: &[&str] = &[
    "/raftlog.raft.v1.Raft/Vote",
    "/raftlog.raft.v1.Raft/PreVote",
    "/raftlog.raft.v1.Raft/AppendEntries",
    "/raftlog.raft.v1.Raft/InstallSnapshot",
];

// ---------------------------------------------------------------------------------------------
// A codec that sends and receives message bodies as they are.

#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

async fn send_raw(
    channel: Channel,
    path: &'static str,
    body: Bytes,
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
) -> Result<Bytes, Status> {
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    let mut request = tonic::Request::new(body);
    if let Some(value) = authorization {
        request.metadata_mut().insert("authorization", value);
    }
    grpc.unary(request, PathAndQuery::from_static(path), RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Names, numbers and records.

/// The node's rule for topic and group names (node/src/api/broker.rs `validate_name`).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn pick<T: Clone>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())].clone()
}

fn random_unicode(rng: &mut StdRng, max_chars: usize) -> String {
    let n = rng.random_range(1..=max_chars);
    (0..n)
        .map(|_| loop {
            if let Some(c) = char::from_u32(rng.random_range(0..0x11_0000)) {
                break c;
            }
        })
        .collect()
}

/// A name the node must refuse as malformed.
fn bad_name(rng: &mut StdRng) -> String {
    let name = match rng.random_range(0..18) {
        0 => String::new(),
        1 => "a".repeat(10_000),
        2 => "x".repeat(NAME_BYTES_MAX + 1),
        3 => "dätä".into(),
        4 => "数据".into(),
        5 => "🦀".into(),
        6 => "da\0ta".into(),
        7 => "\0".into(),
        8 => "../data".into(),
        9 => "data/0".into(),
        10 => "/etc/passwd".into(),
        11 => pick(rng, &["da ta", " data", "data ", "data\n", "\t"]).into(),
        12 => pick(
            rng,
            &["da:ta", "data*", "%00", "\\", "da\u{202e}ta", "data;drop"],
        )
        .into(),
        13 => format!("{TOPIC}\u{0}"),
        14 => "é".repeat(200), // 400 bytes: too long and not ASCII
        15 => random_unicode(rng, 40),
        16 => random_unicode(rng, 5_000),
        _ => {
            let mut s = "ok".to_string();
            s.push(char::from(rng.random_range(0x20u8..0x7f)));
            s.push_str("name");
            s
        }
    };
    if valid_name(&name) {
        // Only the last arm can land here (its random char was allowed): make it invalid.
        format!("{name}/")
    } else {
        name
    }
}

/// A well-formed name of a topic or group that does not exist.
fn missing_name(rng: &mut StdRng) -> String {
    let name = match rng.random_range(0..9) {
        0 => "DATA".into(),
        1 => "data2".into(),
        2 => ".".into(),
        3 => "..".into(),
        4 => "-".into(),
        5 => "_".into(),
        6 => "m".repeat(NAME_BYTES_MAX),
        7 => "g2".into(),
        _ => format!("nope-{}", rng.random::<u32>()),
    };
    assert!(valid_name(&name) && name != TOPIC && name != GROUP);
    name
}

fn any_name(rng: &mut StdRng) -> String {
    match rng.random_range(0..6) {
        0 | 1 => TOPIC.into(),
        2 => GROUP.into(),
        3 | 4 => bad_name(rng),
        _ => missing_name(rng),
    }
}

fn bad_partition(rng: &mut StdRng) -> u32 {
    match rng.random_range(0..6) {
        0 => PARTITIONS,
        1 => PARTITIONS_PER_TOPIC_MAX,
        2 => u32::MAX,
        3 => u32::MAX - 1,
        4 => 1 << 31,
        _ => rng.random_range(PARTITIONS..=u32::MAX),
    }
}

fn any_u32(rng: &mut StdRng) -> u32 {
    match rng.random_range(0..5) {
        0 => 0,
        1 => u32::MAX,
        2 => rng.random_range(0..100),
        _ => rng.random(),
    }
}

fn any_u64(rng: &mut StdRng) -> u64 {
    match rng.random_range(0..5) {
        0 => 0,
        1 => u64::MAX,
        2 => rng.random_range(0..100),
        _ => rng.random(),
    }
}

/// An offset past every partition's end.
fn bad_offset(rng: &mut StdRng) -> u64 {
    match rng.random_range(0..5) {
        0 => RECORDS_PER_PARTITION + 1,
        1 => u64::MAX,
        2 => u64::MAX - 1,
        3 => 1 << 63,
        _ => rng.random_range(RECORDS_PER_PARTITION + 1..=u64::MAX),
    }
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    rng.fill_bytes(&mut buf);
    buf
}

fn random_bytes_in(rng: &mut StdRng, lens: std::ops::Range<usize>) -> Vec<u8> {
    let len = rng.random_range(lens);
    random_bytes(rng, len)
}

/// A record small enough to be accepted on its own.
fn small_record(rng: &mut StdRng) -> pb::Record {
    let len = rng.random_range(0..64);
    let mut r = record(random_bytes(rng, len));
    if rng.random_bool(0.5) {
        let len = rng.random_range(0..16);
        r.key = Some(random_bytes(rng, len).into());
    }
    for _ in 0..rng.random_range(0..3) {
        let key = if rng.random_bool(0.5) {
            random_unicode(rng, 8)
        } else {
            String::new()
        };
        let len = rng.random_range(0..8);
        r.headers.push(pb::Header {
            key,
            value: random_bytes(rng, len).into(),
        });
    }
    r.timestamp_ms = match rng.random_range(0..4) {
        0 => 0,
        1 => i64::MIN,
        2 => -1,
        _ => rng.random(),
    };
    r.offset = any_u64(rng);
    r
}

fn small_records(rng: &mut StdRng, min: usize) -> Vec<pb::Record> {
    let n = rng.random_range(min.max(1)..=5);
    (0..n).map(|_| small_record(rng)).collect()
}

/// A key the key hash puts in a different partition than `key`'s.
fn key_elsewhere(key: &[u8]) -> Vec<u8> {
    let home = raftlog_proto::partition_for_key(key, PARTITIONS);
    (0u32..)
        .map(|i| format!("other-{i}").into_bytes())
        .find(|k| raftlog_proto::partition_for_key(k, PARTITIONS) != home)
        .expect("some key hashes elsewhere")
}

// ---------------------------------------------------------------------------------------------
// Raw bodies.

fn put_varint(out: &mut Vec<u8>, value: u64) {
    prost::encoding::encode_varint(value, out);
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

/// A plausible message for `path`: the right type with random (often invalid) contents.
fn plausible(rng: &mut StdRng, path: &str) -> Vec<u8> {
    let method = path.rsplit('/').next().unwrap();
    match method {
        "CreateTopic" => pb::CreateTopicRequest {
            name: any_name(rng),
            config: rng.random_bool(0.7).then(|| pb::TopicConfig {
                partitions: any_u32(rng),
                retention_ms: any_u64(rng),
                retention_bytes: any_u64(rng),
                max_record_bytes: any_u32(rng),
            }),
        }
        .encode_to_vec(),
        "DescribeTopic" => pb::DescribeTopicRequest {
            name: any_name(rng),
        }
        .encode_to_vec(),
        "DeleteTopic" => pb::DeleteTopicRequest {
            name: any_name(rng),
        }
        .encode_to_vec(),
        "AlterTopic" => pb::AlterTopicRequest {
            name: any_name(rng),
            retention_ms: rng.random_bool(0.5).then(|| any_u64(rng)),
            retention_bytes: rng.random_bool(0.5).then(|| any_u64(rng)),
        }
        .encode_to_vec(),
        "ProduceStream" => pb::ProduceStreamRequest {
            request_id: any_u64(rng),
            request: rng.random_bool(0.9).then(|| {
                pb::ProduceRequest::decode(plausible(rng, "/raftlog.v1.Broker/Produce").as_slice())
                    .expect("a plausible Produce request decodes")
            }),
        }
        .encode_to_vec(),
        "Produce" => pb::ProduceRequest {
            topic: any_name(rng),
            partition: rng.random_bool(0.5).then(|| any_u32(rng)),
            records: (0..rng.random_range(0..4))
                .map(|_| small_record(rng))
                .collect(),
            partitioner: rng.random_range(-2..5),
            producer_id: pick(rng, &[0, 0, 1, 2, u64::MAX]),
            sequence: any_u64(rng),
            expected_end_offset: rng.random_bool(0.3).then(|| any_u64(rng)),
        }
        .encode_to_vec(),
        "Fetch" => pb::FetchRequest {
            topic: any_name(rng),
            partition: any_u32(rng),
            offset: any_u64(rng),
            max_records: any_u32(rng),
            max_bytes: any_u32(rng),
            max_wait_ms: rng.random_range(0..50),
        }
        .encode_to_vec(),
        "CommitOffsets" => pb::CommitOffsetsRequest {
            group: any_name(rng),
            topic: any_name(rng),
            offsets: (0..rng.random_range(0..5))
                .map(|_| pb::PartitionOffset {
                    partition: any_u32(rng),
                    offset: any_u64(rng),
                })
                .collect(),
            allow_rewind: rng.random(),
            member_id: any_name(rng),
            member_epoch: rng.random(),
        }
        .encode_to_vec(),
        "GroupHeartbeat" => pb::GroupHeartbeatRequest {
            group: any_name(rng),
            member_id: any_name(rng),
            member_epoch: pick(rng, &[-2, -1, 0, 1, i64::MAX, i64::MIN]),
            instance_id: any_name(rng),
            subscription: rng.random_bool(0.5).then(|| pb::Subscription {
                topics: (0..rng.random_range(0..4)).map(|_| any_name(rng)).collect(),
            }),
            owned: rng.random_bool(0.5).then(|| pb::OwnedPartitions {
                topics: vec![pb::TopicPartitions {
                    topic: any_name(rng),
                    partitions: (0..rng.random_range(0..5)).map(|_| any_u32(rng)).collect(),
                }],
            }),
            client_id: any_name(rng),
            client_host: any_name(rng),
            session_timeout_ms: any_u32(rng),
            assignor: pick(rng, &["", "uniform", "range", "bogus"]).to_string(),
            wait_ms: pick(rng, &[0, 1, 500, u32::MAX]),
        }
        .encode_to_vec(),
        "RemoveGroupMember" => pb::RemoveGroupMemberRequest {
            group: any_name(rng),
            member_id: any_name(rng),
        }
        .encode_to_vec(),
        "FetchOffsets" => pb::FetchOffsetsRequest {
            group: any_name(rng),
            topic: any_name(rng),
        }
        .encode_to_vec(),
        "DescribeGroup" => pb::DescribeGroupRequest {
            group: any_name(rng),
        }
        .encode_to_vec(),
        "DeleteGroup" => pb::DeleteGroupRequest {
            group: any_name(rng),
        }
        .encode_to_vec(),
        "ListOffsets" => pb::ListOffsetsRequest {
            topic: any_name(rng),
            partitions: (0..rng.random_range(0..5)).map(|_| any_u32(rng)).collect(),
            timestamp_ms: rng.random_bool(0.5).then(|| rng.random()),
        }
        .encode_to_vec(),
        "CreateQueue" => pb::CreateQueueRequest {
            queue: any_name(rng),
            topic: any_name(rng),
            settings: rng.random_bool(0.7).then(|| pb::QueueSettings {
                lock_ms: any_u32(rng),
                max_deliveries: any_u32(rng),
                backoff_ms: (0..rng.random_range(0..40)).map(|_| any_u32(rng)).collect(),
                in_flight_max: any_u32(rng),
                dead_letters: rng.random(),
                dead_letter_topic: any_name(rng),
                worker_in_flight_max: any_u32(rng),
                key_ordered: rng.random(),
                lookahead_max: any_u32(rng),
            }),
        }
        .encode_to_vec(),
        "DescribeQueue" => pb::DescribeQueueRequest {
            queue: any_name(rng),
        }
        .encode_to_vec(),
        "DeleteQueue" => pb::DeleteQueueRequest {
            queue: any_name(rng),
        }
        .encode_to_vec(),
        "Receive" => pb::ReceiveRequest {
            queue: any_name(rng),
            worker: random_unicode(rng, 300),
            max_records: any_u32(rng),
            wait_ms: rng.random_range(0..100),
        }
        .encode_to_vec(),
        "Settle" => pb::SettleRequest {
            queue: any_name(rng),
            settlements: (0..rng.random_range(0..5))
                .map(|_| pb::Settlement {
                    delivery_id: match rng.random_range(0..3) {
                        0 => "0.0.1".to_string(),
                        1 => "x".to_string(),
                        _ => random_unicode(rng, 40),
                    },
                    action: rng.random_range(-1..6),
                    delay_ms: any_u32(rng),
                    error: random_unicode(rng, 64),
                })
                .collect(),
        }
        .encode_to_vec(),
        "Redrive" => pb::RedriveRequest {
            queue: any_name(rng),
            max_records: any_u32(rng),
        }
        .encode_to_vec(),
        // Messages without fields: unknown fields of every wire type.
        _ => {
            let mut out = Vec::new();
            for _ in 0..rng.random_range(0..4) {
                let field = rng.random_range(1..20);
                match rng.random_range(0..4) {
                    0 => {
                        put_tag(&mut out, field, 0);
                        put_varint(&mut out, rng.random());
                    }
                    1 => {
                        put_tag(&mut out, field, 1);
                        out.extend(random_bytes(rng, 8));
                    }
                    2 => {
                        let len = rng.random_range(0..32);
                        put_tag(&mut out, field, 2);
                        put_varint(&mut out, len as u64);
                        out.extend(random_bytes(rng, len));
                    }
                    _ => {
                        put_tag(&mut out, field, 5);
                        out.extend(random_bytes(rng, 4));
                    }
                }
            }
            out
        }
    }
}

/// Random bytes, or a real message spoiled one of several ways.
fn garbage(
    rng: &mut StdRng,
    plausible: impl Fn(&mut StdRng) -> Vec<u8>,
) -> (Vec<u8>, &'static str) {
    match rng.random_range(0..12) {
        0..=2 => {
            let len = if rng.random_bool(0.5) {
                rng.random_range(0..64)
            } else {
                rng.random_range(0..4096)
            };
            (random_bytes(rng, len), "random")
        }
        3 => {
            let mut body = plausible(rng);
            if !body.is_empty() {
                let cut = rng.random_range(0..body.len());
                body.truncate(cut);
            }
            (body, "truncated")
        }
        4 => {
            let mut body = plausible(rng);
            for _ in 0..rng.random_range(1..4) {
                if body.is_empty() {
                    break;
                }
                let i = rng.random_range(0..body.len());
                body[i] ^= 1 << rng.random_range(0..8);
            }
            (body, "bit-flipped")
        }
        5 => {
            let mut body = plausible(rng);
            let len = rng.random_range(1..64);
            body.extend(random_bytes(rng, len));
            (body, "trailing-garbage")
        }
        6 => {
            // A varint longer than 10 bytes, in a tag, a value or a length.
            let mut body = Vec::new();
            if rng.random_bool(0.5) {
                put_tag(&mut body, rng.random_range(1..8), pick(rng, &[0, 2]));
            }
            for _ in 0..rng.random_range(11..300) {
                body.push(0x80 | rng.random::<u8>());
            }
            if rng.random_bool(0.5) {
                body.push(0x01);
            }
            (body, "long-varint")
        }
        7 => {
            // Length-delimited fields nested hundreds deep (each length exact).
            let mut inner = random_bytes_in(rng, 0..16);
            for _ in 0..rng.random_range(1..500) {
                let mut outer = Vec::with_capacity(inner.len() + 8);
                put_tag(&mut outer, pick(rng, &[1, 2, 3, 4, 15]), 2);
                put_varint(&mut outer, inner.len() as u64);
                outer.extend(inner);
                inner = outer;
            }
            (inner, "deeply-nested")
        }
        8 => {
            // A length larger than the body.
            let mut body = Vec::new();
            put_tag(&mut body, rng.random_range(1..8), 2);
            put_varint(
                &mut body,
                pick(rng, &[u64::MAX, 1 << 32, 1 << 62, 4097, i64::MAX as u64]),
            );
            body.extend(random_bytes_in(rng, 0..32));
            (body, "bad-length")
        }
        9 => {
            // Group wire types (unmatched start/end), reserved wire types 6 and 7, field 0 and
            // the largest field numbers.
            let mut body = Vec::new();
            for _ in 0..rng.random_range(1..20) {
                let field = pick(rng, &[0, 1, 2, 3, 19_000, (1 << 29) - 1]);
                put_tag(&mut body, field, pick(rng, &[3, 4, 6, 7, 0, 5]));
                body.extend(random_bytes_in(rng, 0..9));
            }
            (body, "bad-wire-type")
        }
        10 => (Vec::new(), "empty"),
        _ => (plausible(rng), "plausible"),
    }
}

/// Whether a raw body sent to a client method must be replaced: it decodes into a request that
/// could legitimately change the state, or that may wait long.
fn raw_body_is_unsafe(path: &str, body: &[u8]) -> bool {
    let method = path.rsplit('/').next().unwrap();
    match method {
        "CreateTopic" => pb::CreateTopicRequest::decode(body)
            .is_ok_and(|r| valid_name(&r.name) && r.name != TOPIC),
        "DeleteTopic" => pb::DeleteTopicRequest::decode(body).is_ok_and(|r| r.name == TOPIC),
        "DeleteGroup" => pb::DeleteGroupRequest::decode(body).is_ok_and(|r| r.group == GROUP),
        "AlterTopic" => pb::AlterTopicRequest::decode(body).is_ok_and(|r| r.name == TOPIC),
        // Every well-formed InitProducer request is granted a producer id.
        "InitProducer" => pb::InitProducerRequest::decode(body).is_ok(),
        "Produce" => pb::ProduceRequest::decode(body).is_ok_and(|r| r.topic == TOPIC),
        "ProduceStream" => pb::ProduceStreamRequest::decode(body)
            .is_ok_and(|r| r.request.is_some_and(|r| r.topic == TOPIC)),
        "CommitOffsets" => pb::CommitOffsetsRequest::decode(body)
            .is_ok_and(|r| r.topic == TOPIC && valid_name(&r.group)),
        "Fetch" => pb::FetchRequest::decode(body).is_ok_and(|r| r.max_wait_ms > 100),
        // No queue exists, so only a create on the topic that exists could change anything.
        "CreateQueue" => pb::CreateQueueRequest::decode(body)
            .is_ok_and(|r| valid_name(&r.queue) && r.topic == TOPIC),
        // A join with a valid group name adds a member.
        "GroupHeartbeat" => pb::GroupHeartbeatRequest::decode(body).is_ok_and(|r| {
            valid_name(&r.group) && r.member_id.is_empty() && r.subscription.is_some()
        }),
        _ => false,
    }
}

/// A valid postcard payload for a Raft method, with random contents.
fn raft_payload(rng: &mut StdRng, path: &str) -> Vec<u8> {
    let vote = Vote::new(any_u64(rng), any_u64(rng));
    let log_id = |rng: &mut StdRng| {
        rng.random_bool(0.7).then(|| {
            LogId::new(
                CommittedLeaderId {
                    term: any_u64(rng),
                    node_id: any_u64(rng),
                },
                any_u64(rng),
            )
        })
    };
    match path.rsplit('/').next().unwrap() {
        "Vote" | "PreVote" => encode(&VoteRequest::new(vote, log_id(rng))),
        "AppendEntries" => {
            let entries = (0..rng.random_range(0..3))
                .map(|_| Entry {
                    log_id: log_id(rng).unwrap_or(LogId::new(
                        CommittedLeaderId {
                            term: 0,
                            node_id: 0,
                        },
                        0,
                    )),
                    payload: match rng.random_range(0..4) {
                        0 => openraft::EntryPayload::Blank,
                        1 => openraft::EntryPayload::Normal(Command::Append {
                            topic: TOPIC.into(),
                            partition: any_u32(rng),
                            records: vec![StoredRecord {
                                key: None,
                                value: random_bytes(rng, 8).into(),
                                headers: vec![("h".into(), Bytes::new())],
                                timestamp_ms: 0,
                            }],
                            proposed_at_ms: 0,
                            producer: rng.random_bool(0.5).then(|| ProducerSequence {
                                producer_id: any_u64(rng),
                                sequence: any_u64(rng),
                            }),
                            expected_end_offset: rng.random_bool(0.5).then(|| any_u64(rng)),
                        }),
                        3 => openraft::EntryPayload::Normal(Command::Maintenance {
                            now_ms: rng.random(),
                            producer_idle_ms: any_u64(rng),
                        }),
                        _ => openraft::EntryPayload::Normal(Command::CreateTopic {
                            name: any_name(rng),
                            settings: TopicSettings::default(),
                            topics_max: any_u32(rng),
                        }),
                    },
                })
                .collect();
            encode(&AppendEntriesRequest {
                vote,
                prev_log_id: log_id(rng),
                entries,
                leader_commit: log_id(rng),
            })
        }
        // The header of a snapshot stream: (vote, meta).
        _ => encode(&(
            vote,
            SnapshotMeta {
                last_log_id: log_id(rng),
                ..Default::default()
            },
        )),
    }
}

/// Whether `payload` decodes as the request of the Raft method `path` (the node would then act
/// on it: such payloads are not malformed and are not sent).
fn raft_payload_decodes(path: &str, payload: &[u8]) -> bool {
    match path.rsplit('/').next().unwrap() {
        "Vote" | "PreVote" => decode::<VoteRequest>(payload).is_ok(),
        "AppendEntries" => decode::<AppendEntriesRequest>(payload).is_ok(),
        _ => decode::<(Vote, SnapshotMeta)>(payload).is_ok(),
    }
}

struct RawCase {
    path: &'static str,
    node: usize,
    kind: &'static str,
    body: Bytes,
}

/// Generated bodies that were not sent because they were not malformed, by service and kind.
type Replaced = BTreeMap<String, usize>;

/// "Broker", "Cluster" or "Raft".
fn service(path: &str) -> &str {
    path.rsplit('/').nth(1).unwrap().rsplit('.').next().unwrap()
}

/// The raw cases, and the generated bodies replaced because they were not malformed.
fn raw_cases(rng: &mut StdRng) -> (Vec<RawCase>, Replaced) {
    let mut cases = Vec::new();
    let mut replaced = Replaced::new();
    for &path in CLIENT_METHODS {
        for i in 0..RAW_PER_METHOD {
            let (body, kind) = loop {
                let (body, kind) = garbage(rng, |rng| plausible(rng, path));
                if !raw_body_is_unsafe(path, &body) {
                    break (body, kind);
                }
                *replaced
                    .entry(format!("{}/{kind}", service(path)))
                    .or_default() += 1;
            };
            cases.push(RawCase {
                path,
                node: i % 3,
                kind,
                body: body.into(),
            });
        }
        // One body over the service's message size limit (Broker 9 MiB, Cluster 4 MiB).
        let size = if path.contains("Broker") {
            10 << 20
        } else {
            5 << 20
        };
        cases.push(RawCase {
            path,
            node: 0,
            kind: "oversize",
            body: vec![0xff; size].into(),
        });
    }
    for &path in RAFT_METHODS {
        for i in 0..RAFT_PER_METHOD {
            let (envelope, kind) = loop {
                let (envelope, kind) = match rng.random_range(0..10) {
                    // A well-formed envelope of group 0 with a non-empty malformed payload.
                    0..=6 => {
                        let (payload, kind) = garbage(rng, |rng| raft_payload(rng, path));
                        if payload.is_empty() {
                            continue;
                        }
                        let envelope = RaftEnvelope {
                            group_id: 0,
                            payload: payload.into(),
                        };
                        (envelope.encode_to_vec(), kind)
                    }
                    // Another group (this node hosts only group 0).
                    7 => {
                        let envelope = RaftEnvelope {
                            group_id: rng.random_range(1..=u64::MAX),
                            payload: raft_payload(rng, path).into(),
                        };
                        (envelope.encode_to_vec(), "other-group")
                    }
                    // A malformed envelope.
                    _ => garbage(rng, |rng| {
                        RaftEnvelope {
                            group_id: 0,
                            payload: random_bytes_in(rng, 1..64).into(),
                        }
                        .encode_to_vec()
                    }),
                };
                let acted_on = RaftEnvelope::decode(envelope.as_slice()).is_ok_and(|e| {
                    e.group_id == 0
                        && (e.payload.is_empty() || raft_payload_decodes(path, &e.payload))
                });
                if !acted_on {
                    break (envelope, kind);
                }
                *replaced.entry(format!("Raft/{kind}")).or_default() += 1;
            };
            cases.push(RawCase {
                path,
                node: i % 3,
                kind,
                body: envelope.into(),
            });
        }
    }
    (cases, replaced)
}

// ---------------------------------------------------------------------------------------------
// Structured requests.

#[derive(Debug)]
enum Call {
    CreateTopic(pb::CreateTopicRequest),
    DescribeTopic(pb::DescribeTopicRequest),
    DeleteTopic(pb::DeleteTopicRequest),
    AlterTopic(pb::AlterTopicRequest),
    Produce(pb::ProduceRequest),
    Fetch(pb::FetchRequest),
    Subscribe(pb::SubscribeRequest),
    CommitOffsets(pb::CommitOffsetsRequest),
    FetchOffsets(pb::FetchOffsetsRequest),
    DescribeGroup(pb::DescribeGroupRequest),
    DeleteGroup(pb::DeleteGroupRequest),
    ListOffsets(pb::ListOffsetsRequest),
    ListTopics,
    ListGroups,
}

impl Call {
    fn name(&self) -> &'static str {
        match self {
            Call::CreateTopic(_) => "CreateTopic",
            Call::DescribeTopic(_) => "DescribeTopic",
            Call::DeleteTopic(_) => "DeleteTopic",
            Call::AlterTopic(_) => "AlterTopic",
            Call::Produce(_) => "Produce",
            Call::Fetch(_) => "Fetch",
            Call::Subscribe(_) => "Subscribe",
            Call::CommitOffsets(_) => "CommitOffsets",
            Call::FetchOffsets(_) => "FetchOffsets",
            Call::DescribeGroup(_) => "DescribeGroup",
            Call::DeleteGroup(_) => "DeleteGroup",
            Call::ListOffsets(_) => "ListOffsets",
            Call::ListTopics => "ListTopics",
            Call::ListGroups => "ListGroups",
        }
    }

    /// The request, shortened for a report (names and batches can be megabytes).
    fn describe(&self) -> String {
        let full = format!("{self:?}");
        if full.len() <= 600 {
            return full;
        }
        let mut cut = 600;
        while !full.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}… ({} bytes in Debug form)", &full[..cut], full.len())
    }
}

struct StructuredCase {
    call: Call,
    node: usize,
    /// A read of something that exists: Ok is a correct answer.
    may_succeed: bool,
    /// A retry of a batch the idempotent producer appended at this base offset: the correct answer
    /// is Ok with `duplicate` set and these offsets (and nothing appended).
    duplicate_of: Option<u64>,
    /// A refusal (FAILED_PRECONDITION of a conditional append, OUT_OF_RANGE of a read) must carry
    /// the partition's end offset in the `raftlog-end-offset` trailer.
    end_offset_trailer: bool,
}

fn produce(
    topic: String,
    partition: Option<u32>,
    records: Vec<pb::Record>,
    partitioner: i32,
) -> Call {
    Call::Produce(pb::ProduceRequest {
        topic,
        partition,
        records,
        partitioner,
        ..Default::default()
    })
}

/// An idempotent or conditional produce that must be refused, or that is a retry of a
/// remembered batch (then the base offset it must be answered with). Partition 2 holds the
/// producer's two batches of 25 records (sequences 0 and 25); it has no state in partitions 0 and 1.
/// Also returns whether a refusal must carry the end offset trailer.
fn bad_idempotent_produce(rng: &mut StdRng, producer_id: u64) -> (Call, Option<u64>, bool) {
    let request = |rng: &mut StdRng, partition, producer_id, sequence, expected_end_offset| {
        Call::Produce(pb::ProduceRequest {
            topic: TOPIC.into(),
            partition,
            records: small_records(rng, 1),
            partitioner: pb::Partitioner::Default as i32,
            producer_id,
            sequence,
            expected_end_offset,
        })
    };
    let wrong_end = |rng: &mut StdRng| {
        pick(
            rng,
            &[
                0,
                RECORDS_PER_PARTITION - 1,
                RECORDS_PER_PARTITION + 1,
                u64::MAX,
            ],
        )
    };
    match rng.random_range(0..8) {
        0 => {
            // Idempotent or conditional without an explicit partition.
            let (producer_id, expected) = match rng.random_range(0..3) {
                0 => (producer_id, None),
                1 => (0, Some(any_u64(rng))),
                _ => (rng.random_range(1..=u64::MAX), Some(RECORDS_PER_PARTITION)),
            };
            (request(rng, None, producer_id, 0, expected), None, false)
        }
        1 => {
            // A producer id that was never granted.
            let unknown = match rng.random_range(0..4) {
                0 => producer_id + 1,
                1 => u64::MAX,
                2 => 1 << 63,
                _ => rng.random_range(producer_id + 1..=u64::MAX),
            };
            let partition = Some(rng.random_range(0..PARTITIONS));
            let sequence = any_u64(rng);
            (
                request(rng, partition, unknown, sequence, None),
                None,
                false,
            )
        }
        2 => {
            // A sequence gap: beyond the next expected one.
            let (partition, sequence) = if rng.random_bool(0.5) {
                (rng.random_range(0..2), pick(rng, &[1, 2, u64::MAX]))
            } else {
                let next = RECORDS_PER_PARTITION;
                (2, pick(rng, &[next + 1, next + 25, u64::MAX]))
            };
            (
                request(rng, Some(partition), producer_id, sequence, None),
                None,
                false,
            )
        }
        3 => {
            // A stale sequence: older than the next expected one and not a remembered batch's
            // first, or a remembered first sequence with another record count (1 to 5, not 25).
            let sequence = if rng.random_bool(0.5) {
                pick(rng, &[0, 25])
            } else {
                loop {
                    let s = rng.random_range(1..RECORDS_PER_PARTITION);
                    if s != 25 {
                        break s;
                    }
                }
            };
            (
                request(rng, Some(2), producer_id, sequence, None),
                None,
                false,
            )
        }
        4 | 5 => {
            // A conditional append at the wrong end offset, plain or with the sequence the
            // producer would append next: refused with the actual end offset.
            let (partition, producer_id, sequence) = match rng.random_range(0..3) {
                0 => (rng.random_range(0..PARTITIONS), 0, 0),
                1 => (rng.random_range(0..2), producer_id, 0),
                _ => (2, producer_id, RECORDS_PER_PARTITION),
            };
            let expected = Some(wrong_end(rng));
            let call = request(rng, Some(partition), producer_id, sequence, expected);
            (call, None, true)
        }
        6 => {
            // A retry of a remembered batch (with any expected end offset: deduplication comes
            // first): answered as a duplicate, nothing appended.
            let sequence = pick(rng, &[0, 25]);
            let expected = rng.random_bool(0.5).then(|| wrong_end(rng));
            let Call::Produce(mut r) = request(rng, Some(2), producer_id, sequence, expected)
            else {
                unreachable!()
            };
            r.records = (0..25).map(|_| small_record(rng)).collect();
            (Call::Produce(r), Some(sequence), false)
        }
        _ => {
            // Idempotent with a bad partition.
            let partition = Some(bad_partition(rng));
            (request(rng, partition, producer_id, 0, None), None, false)
        }
    }
}

/// A produce request that must be refused without appending anything.
fn bad_produce(rng: &mut StdRng) -> Call {
    let default = pb::Partitioner::Default as i32;
    match rng.random_range(0..13) {
        0 => {
            let records = small_records(rng, 1);
            let partition = rng
                .random_bool(0.5)
                .then(|| rng.random_range(0..PARTITIONS));
            produce(bad_name(rng), partition, records, default)
        }
        1 => {
            let partition = rng.random_bool(0.5).then(|| any_u32(rng));
            produce(TOPIC.into(), partition, Vec::new(), rng.random_range(0..3))
        }
        2 | 3 => {
            // Reaches the log; refused when applied.
            let records = small_records(rng, 1);
            produce(TOPIC.into(), Some(bad_partition(rng)), records, default)
        }
        4 => {
            let records = small_records(rng, 1);
            let partitioner = pick(rng, &[1, 2, 3, -1, i32::MAX, i32::MIN]);
            produce(
                TOPIC.into(),
                Some(rng.random_range(0..PARTITIONS)),
                records,
                partitioner,
            )
        }
        5 => {
            let records = small_records(rng, 1);
            let partitioner = pick(rng, &[3, 4, 100, -1, i32::MAX, i32::MIN]);
            produce(TOPIC.into(), None, records, partitioner)
        }
        6 => {
            // KEY_HASH with a record that has no key.
            let mut records = small_records(rng, 1);
            for r in &mut records {
                r.key = Some(Bytes::from_static(b"k"));
            }
            let i = rng.random_range(0..records.len());
            records[i].key = None;
            produce(TOPIC.into(), None, records, pb::Partitioner::KeyHash as i32)
        }
        7 => {
            // DEFAULT or KEY_HASH with keys that hash to different partitions, or a keyed first
            // record followed by an unkeyed one.
            let mut records = small_records(rng, 2);
            let key = random_bytes(rng, 6);
            records[0].key = Some(key.clone().into());
            let last = records.len() - 1;
            records[last].key = if rng.random_bool(0.5) {
                Some(key_elsewhere(&key).into())
            } else {
                None
            };
            let partitioner = pick(rng, &[default, pb::Partitioner::KeyHash as i32]);
            produce(TOPIC.into(), None, records, partitioner)
        }
        8 => {
            // One record just over record_bytes_max, by its value, key or headers.
            let mut r = record(Bytes::new());
            let over = RECORD_BYTES_MAX + 1;
            match rng.random_range(0..3) {
                0 => r.value = vec![7; over].into(),
                1 => r.key = Some(vec![7; over].into()),
                _ => {
                    r.headers = (0..2)
                        .map(|i| pb::Header {
                            key: "k".repeat(over / 4 + i),
                            value: vec![7; over / 4].into(),
                        })
                        .collect()
                }
            }
            let mut records = small_records(rng, 1);
            let at = rng.random_range(0..=records.len());
            records.insert(at, r);
            let partition = rng
                .random_bool(0.5)
                .then(|| rng.random_range(0..PARTITIONS));
            produce(TOPIC.into(), partition, records, default)
        }
        9 => {
            // One record more than batch_records_max.
            let records = vec![record(Bytes::new()); BATCH_RECORDS_MAX + 1];
            produce(
                TOPIC.into(),
                Some(rng.random_range(0..PARTITIONS)),
                records,
                default,
            )
        }
        10 => {
            // A topic that does not exist (reaches the log when a partition is given).
            let records = small_records(rng, 1);
            let partition = rng.random_bool(0.5).then(|| any_u32(rng));
            produce(missing_name(rng), partition, records, default)
        }
        11 => {
            // An explicit bad partition and a partitioner.
            let records = small_records(rng, 1);
            produce(
                TOPIC.into(),
                Some(bad_partition(rng)),
                records,
                rng.random_range(1..3),
            )
        }
        _ => {
            // Bad name and bad everything.
            let records = (0..rng.random_range(0..3))
                .map(|_| small_record(rng))
                .collect();
            produce(bad_name(rng), Some(any_u32(rng)), records, rng.random())
        }
    }
}

fn structured_case(rng: &mut StdRng, i: usize, producer_id: u64) -> StructuredCase {
    let mut may_succeed = false;
    let mut duplicate_of = None;
    let mut end_offset_trailer = false;
    let call = match rng.random_range(0..104) {
        0..=21 => bad_produce(rng),
        22..=29 => {
            let (call, duplicate, trailer) = bad_idempotent_produce(rng, producer_id);
            (duplicate_of, end_offset_trailer) = (duplicate, trailer);
            call
        }
        100..=103 => {
            let mut request = pb::AlterTopicRequest {
                name: TOPIC.into(),
                retention_ms: None,
                retention_bytes: None,
            };
            // Every change that would apply is to a missing or badly named topic.
            if rng.random_bool(0.7) {
                request.name = if rng.random_bool(0.5) {
                    bad_name(rng)
                } else {
                    missing_name(rng)
                };
                request.retention_ms = rng.random_bool(0.5).then(|| any_u64(rng));
                request.retention_bytes = rng.random_bool(0.5).then(|| any_u64(rng));
            }
            Call::AlterTopic(request)
        }
        30..=34 => Call::CreateTopic(pb::CreateTopicRequest {
            name: bad_name(rng),
            config: rng.random_bool(0.5).then(|| pb::TopicConfig {
                partitions: rng.random_range(1..=PARTITIONS_PER_TOPIC_MAX),
                ..Default::default()
            }),
        }),
        35..=37 => Call::CreateTopic(pb::CreateTopicRequest {
            // Exists already (ALREADY_EXISTS), whatever the config.
            name: TOPIC.into(),
            config: rng.random_bool(0.7).then(|| pb::TopicConfig {
                partitions: any_u32(rng),
                retention_ms: any_u64(rng),
                retention_bytes: any_u64(rng),
                max_record_bytes: any_u32(rng),
            }),
        }),
        38..=40 => Call::CreateTopic(pb::CreateTopicRequest {
            // A new name, but too many partitions.
            name: missing_name(rng),
            config: Some(pb::TopicConfig {
                partitions: pick(
                    rng,
                    &[PARTITIONS_PER_TOPIC_MAX + 1, u32::MAX, 1 << 31, 100_000],
                ),
                ..Default::default()
            }),
        }),
        41..=45 => {
            let name = match rng.random_range(0..3) {
                0 => bad_name(rng),
                1 => missing_name(rng),
                _ => {
                    may_succeed = true;
                    TOPIC.into()
                }
            };
            Call::DescribeTopic(pb::DescribeTopicRequest { name })
        }
        46..=49 => {
            let name = if rng.random_bool(0.5) {
                bad_name(rng)
            } else {
                missing_name(rng)
            };
            Call::DeleteTopic(pb::DeleteTopicRequest { name })
        }
        50..=64 => {
            let mut request = pb::FetchRequest {
                topic: TOPIC.into(),
                partition: rng.random_range(0..PARTITIONS),
                offset: rng.random_range(0..=RECORDS_PER_PARTITION),
                max_records: any_u32(rng),
                max_bytes: any_u32(rng),
                max_wait_ms: rng.random_range(0..=50),
            };
            match rng.random_range(0..5) {
                0 => request.topic = bad_name(rng),
                1 => request.topic = missing_name(rng),
                2 => request.partition = bad_partition(rng),
                3 => {
                    request.offset = bad_offset(rng);
                    end_offset_trailer = true;
                }
                _ => may_succeed = true,
            }
            Call::Fetch(request)
        }
        65..=69 => {
            let mut request = pb::SubscribeRequest {
                topic: TOPIC.into(),
                partition: rng.random_range(0..PARTITIONS),
                offset: rng.random_range(0..=RECORDS_PER_PARTITION),
                max_records: any_u32(rng),
            };
            match rng.random_range(0..4) {
                0 => request.topic = bad_name(rng),
                1 => request.topic = missing_name(rng),
                2 => request.partition = bad_partition(rng),
                _ => {
                    request.offset = bad_offset(rng);
                    end_offset_trailer = true;
                }
            }
            Call::Subscribe(request)
        }
        70..=84 => {
            let good = |rng: &mut StdRng| {
                let partition = rng.random_range(0..PARTITIONS);
                pb::PartitionOffset {
                    partition,
                    offset: rng.random_range(0..=RECORDS_PER_PARTITION),
                }
            };
            let group = if rng.random_bool(0.5) {
                GROUP.to_string()
            } else {
                missing_name(rng)
            };
            let mut request = pb::CommitOffsetsRequest {
                group,
                topic: TOPIC.into(),
                offsets: Vec::new(),
                allow_rewind: rng.random(),
                ..Default::default()
            };
            match rng.random_range(0..8) {
                0 => {
                    request.group = bad_name(rng);
                    request.offsets.push(good(rng));
                }
                1 => {
                    request.topic = bad_name(rng);
                    request.offsets.push(good(rng));
                }
                2 => {} // no offsets
                3 => {
                    // Duplicate partitions.
                    let o = good(rng);
                    request.offsets = vec![o, pb::PartitionOffset { offset: 0, ..o }];
                    if rng.random_bool(0.5) {
                        request.offsets.insert(1, good(rng));
                    }
                }
                4 => {
                    // More offsets than a topic can have partitions.
                    request.offsets = (0..=PARTITIONS_PER_TOPIC_MAX)
                        .map(|partition| pb::PartitionOffset {
                            partition,
                            offset: 0,
                        })
                        .collect();
                }
                5 => {
                    // A bad partition among good ones: the whole commit is refused.
                    request.offsets = (0..PARTITIONS).map(|_| good(rng)).collect();
                    request.offsets.sort_by_key(|o| o.partition);
                    request.offsets.dedup_by_key(|o| o.partition);
                    let at = rng.random_range(0..=request.offsets.len());
                    request.offsets.insert(
                        at,
                        pb::PartitionOffset {
                            partition: bad_partition(rng),
                            offset: 0,
                        },
                    );
                }
                6 => {
                    // An offset past the end among good ones.
                    request.offsets = (0..PARTITIONS)
                        .map(|partition| pb::PartitionOffset {
                            partition,
                            offset: rng.random_range(0..=RECORDS_PER_PARTITION),
                        })
                        .collect();
                    let at = rng.random_range(0..request.offsets.len());
                    request.offsets[at].offset = bad_offset(rng);
                }
                _ => {
                    request.topic = missing_name(rng);
                    request.offsets.push(good(rng));
                }
            }
            Call::CommitOffsets(request)
        }
        85..=90 => {
            let mut request = pb::FetchOffsetsRequest {
                group: GROUP.into(),
                topic: TOPIC.into(),
            };
            match rng.random_range(0..5) {
                0 => request.group = bad_name(rng),
                1 => request.topic = bad_name(rng),
                2 => request.topic = missing_name(rng),
                3 => {
                    request.group = missing_name(rng);
                    may_succeed = true;
                }
                _ => may_succeed = true,
            }
            Call::FetchOffsets(request)
        }
        91..=92 => {
            // Deleting a group that is not there, or under a bad name (the test's own group, which
            // does exist, is never deleted).
            let group = if rng.random_bool(0.5) {
                bad_name(rng)
            } else {
                missing_name(rng)
            };
            Call::DeleteGroup(pb::DeleteGroupRequest { group })
        }
        93..=94 => {
            let mut request = pb::ListOffsetsRequest {
                topic: TOPIC.into(),
                partitions: Vec::new(),
                timestamp_ms: rng.random_bool(0.5).then(|| rng.random()),
            };
            match rng.random_range(0..5) {
                0 => request.topic = bad_name(rng),
                1 => request.topic = missing_name(rng),
                2 => request.partitions = vec![0, bad_partition(rng)],
                3 => request.partitions = (0..=PARTITIONS_PER_TOPIC_MAX).map(|_| 0).collect(),
                _ => may_succeed = true,
            }
            Call::ListOffsets(request)
        }
        95..=96 => {
            let group = match rng.random_range(0..3) {
                0 => bad_name(rng),
                1 => missing_name(rng),
                _ => {
                    may_succeed = true;
                    GROUP.into()
                }
            };
            Call::DescribeGroup(pb::DescribeGroupRequest { group })
        }
        97 => {
            // Over the Broker's message size limit (batch_bytes_max + 1 MiB).
            let records = vec![record(vec![1u8; 1 << 20]); 10];
            produce(TOPIC.into(), Some(0), records, 0)
        }
        98 => {
            may_succeed = true;
            Call::ListTopics
        }
        _ => {
            may_succeed = true;
            Call::ListGroups
        }
    };
    StructuredCase {
        call,
        node: i % 3,
        may_succeed,
        duplicate_of,
        end_offset_trailer,
    }
}

async fn run_structured(
    mut broker: raftlog_proto::v1::broker_client::BrokerClient<raftlog_client::Connection>,
    call: &Call,
) -> Result<Option<pb::ProduceResponse>, Status> {
    let answer = match call {
        Call::Produce(r) => return Ok(Some(broker.produce(r.clone()).await?.into_inner())),
        Call::CreateTopic(r) => broker.create_topic(r.clone()).await.map(drop),
        Call::DescribeTopic(r) => broker.describe_topic(r.clone()).await.map(drop),
        Call::DeleteTopic(r) => broker.delete_topic(r.clone()).await.map(drop),
        Call::AlterTopic(r) => broker.alter_topic(r.clone()).await.map(drop),
        Call::Fetch(r) => broker.fetch(r.clone()).await.map(drop),
        Call::Subscribe(r) => broker.subscribe(r.clone()).await.map(drop),
        Call::CommitOffsets(r) => broker.commit_offsets(r.clone()).await.map(drop),
        Call::FetchOffsets(r) => broker.fetch_offsets(r.clone()).await.map(drop),
        Call::DescribeGroup(r) => broker.describe_group(r.clone()).await.map(drop),
        Call::DeleteGroup(r) => broker.delete_group(r.clone()).await.map(drop),
        Call::ListOffsets(r) => broker.list_offsets(r.clone()).await.map(drop),
        Call::ListTopics => broker.list_topics(pb::ListTopicsRequest {}).await.map(drop),
        Call::ListGroups => broker.list_groups(pb::ListGroupsRequest {}).await.map(drop),
    };
    answer.map(|()| None)
}

/// What is wrong with the answer to a structured case, if anything.
fn wrong_answer(
    case: &StructuredCase,
    answer: &Result<Option<pb::ProduceResponse>, Status>,
) -> Option<String> {
    match answer {
        Ok(Some(ack)) => match case.duplicate_of {
            Some(base) if ack.duplicate && ack.base_offset == base => None,
            _ => Some(format!("OK (appended?) {ack:?}")),
        },
        Ok(None) => (!case.may_succeed).then(|| "OK (accepted)".to_string()),
        Err(s) if !acceptable_refusal(&case.call, s.code()) => {
            Some(format!("{:?}: {}", s.code(), s.message()))
        }
        Err(s) if case.duplicate_of.is_some() => Some(format!(
            "{:?} to a retried batch: {}",
            s.code(),
            s.message()
        )),
        Err(s) if case.end_offset_trailer => {
            let trailer = s
                .metadata()
                .get(raftlog_client::END_OFFSET_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            (trailer != Some(RECORDS_PER_PARTITION)).then(|| {
                format!(
                    "{:?} with end offset trailer {trailer:?}, not {RECORDS_PER_PARTITION}: {}",
                    s.code(),
                    s.message()
                )
            })
        }
        Err(_) => None,
    }
}

/// The client-error statuses a malformed request may get.
fn acceptable_refusal(call: &Call, code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::OutOfRange
            | Code::ResourceExhausted
            | Code::FailedPrecondition
    ) || (code == Code::AlreadyExists && matches!(call, Call::CreateTopic(r) if r.name == TOPIC))
}

// ---------------------------------------------------------------------------------------------
// Observing the state.

/// Everything a client can read of the state this test set up, from one node.
#[derive(Debug, PartialEq)]
struct Observed {
    topics: Vec<pb::TopicInfo>,
    records: Vec<Vec<(u64, String)>>,
    groups: Vec<pb::GroupInfo>,
}

async fn observe(cluster: &TestCluster, id: u64) -> Observed {
    let client = cluster.client_of(id);
    let mut broker = client.broker_at(&cluster.node(id).grpc).unwrap();
    let mut topics = broker
        .list_topics(pb::ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner()
        .topics;
    for t in &mut topics {
        for p in &mut t.partitions {
            p.leader_id = 0; // may change; not state
        }
    }
    let groups = broker
        .list_groups(pb::ListGroupsRequest {})
        .await
        .unwrap()
        .into_inner()
        .groups;
    let mut records = Vec::new();
    for partition in 0..PARTITIONS {
        records.push(read_all(cluster, id, TOPIC, partition).await);
    }
    Observed {
        topics,
        records,
        groups,
    }
}

/// Panics if a node process has exited.
fn assert_all_running(cluster: &mut TestCluster, phase: &str) {
    for id in 1..=3 {
        assert!(cluster.is_running(id), "node {id} is not running ({phase})");
        if let Some(status) = cluster.exited(id) {
            cluster.dump_logs();
            panic!("node {id} exited with {status} during {phase}");
        }
    }
}

fn tally(map: &Mutex<BTreeMap<String, BTreeMap<String, usize>>>, class: &str, outcome: String) {
    *map.lock()
        .unwrap()
        .entry(class.to_string())
        .or_default()
        .entry(outcome)
        .or_default() += 1;
}

fn outcome_name<T>(result: &Result<T, Status>) -> String {
    match result {
        Ok(_) => "Ok".into(),
        Err(s) => format!("{:?}", s.code()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_malformed_requests_leave_the_nodes_up_and_the_data_intact() {
    fuzz(NodeOptions::default()).await;
}

/// The same against a secured cluster: TLS on every port and auth on, the fuzz sent over TLS
/// with node 1's certificate (so the Raft service admits it and parses the garbage) and a
/// super-user's token: every request passes the authorization layer, which reads resource names
/// out of the garbage before any handler sees it (docs/security.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_malformed_requests_leave_a_secured_cluster_up_and_its_data_intact() {
    let dir = tempfile::tempdir().unwrap();
    let pki = support::pki::Pki::for_cluster(dir.path(), 3);
    fuzz(NodeOptions {
        admin_token: Some("malformed-requests-bootstrap-token-0123456789".into()),
        tls_dir: Some(pki.dir().to_path_buf()),
        ..Default::default()
    })
    .await;
}

/// A raw channel to node `id`: plaintext, or TLS trusting the cluster's CA and presenting node
/// 1's certificate.
fn raw_channel(addr: &str, id: u64, tls_dir: Option<&std::path::Path>) -> Channel {
    let Some(dir) = tls_dir else {
        return Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
    };
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(
            read("node-1.pem"),
            read("node-1-key.pem"),
        ))
        .domain_name(format!("node-{id}"));
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy()
}

// Long: the fuzz's phases (setup, raw, structured, checks) read in order, sharing their state.
async fn fuzz(options: NodeOptions) {
    let seed = std::env::var("RAFTLOG_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    eprintln!("malformed_requests: seed {seed} (set RAFTLOG_FUZZ_SEED to change it)");
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);

    // 1. Known state: a topic with 3 x 50 records (partition 2's from an idempotent producer, in
    // two batches of 25 with sequences 0 and 25) and a group's commits.
    let authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> = options
        .admin_token
        .as_ref()
        .map(|token| format!("Bearer {token}").parse().unwrap());
    let tls_dir = options.tls_dir.clone();
    let mut cluster = TestCluster::start(3, options);
    cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic(TOPIC, PARTITIONS).await.unwrap();
    let values = |partition: u32, offsets: std::ops::Range<u64>| {
        offsets
            .map(|i| record(format!("{partition}-{i}").into_bytes()))
            .collect::<Vec<_>>()
    };
    for partition in 0..2 {
        let records = values(partition, 0..RECORDS_PER_PARTITION);
        client.produce(TOPIC, partition, records).await.unwrap();
    }
    let producer_id = client.init_producer().await.unwrap();
    for sequence in [0, 25] {
        let ack = client
            .produce_request(pb::ProduceRequest {
                topic: TOPIC.into(),
                partition: Some(2),
                records: values(2, sequence..sequence + 25),
                producer_id,
                sequence,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!((ack.base_offset, ack.duplicate), (sequence, false), "setup");
    }
    client
        .commit_offsets(GROUP, TOPIC, (0..PARTITIONS).zip(COMMITTED))
        .await
        .unwrap();
    let before_digests = cluster.wait_converged(&[1, 2, 3]).await;
    let mut terms_before = Vec::new();
    for id in 1..=3 {
        terms_before.push(cluster.status(id).await.map(|s| s.term));
    }
    let before = observe(&cluster, 1).await;
    for id in 2..=3 {
        assert_eq!(
            observe(&cluster, id).await,
            before,
            "node {id} before the fuzz"
        );
    }
    for records in &before.records {
        assert_eq!(records.len() as u64, RECORDS_PER_PARTITION, "setup");
    }
    assert_eq!(before.groups.len(), 1, "setup");

    let channels: Vec<Channel> = (1..)
        .zip(&cluster.nodes)
        .map(|(id, n)| raw_channel(&n.grpc, id, tls_dir.as_deref()))
        .collect();
    let codes: Arc<Mutex<BTreeMap<String, BTreeMap<String, usize>>>> = Arc::default();
    let findings: Arc<Mutex<Vec<String>>> = Arc::default();

    // 2. Raw garbage.
    let (raw, replaced) = raw_cases(&mut rng);
    let raw_count = raw.len();
    let phase = Instant::now();
    futures::stream::iter(raw)
        .map(|case| {
            let channel = channels[case.node].clone();
            let (codes, findings) = (codes.clone(), findings.clone());
            let authorization = authorization.clone();
            async move {
                let len = case.body.len();
                let result = tokio::time::timeout(
                    REQUEST_TIMEOUT,
                    send_raw(channel, case.path, case.body.clone(), authorization),
                )
                .await;
                let class = format!("raw-{}", service(case.path));
                let class = class.as_str();
                let Ok(result) = result else {
                    tally(&codes, class, "TIMEOUT".into());
                    findings.lock().unwrap().push(format!(
                        "no answer in {REQUEST_TIMEOUT:?}: {} ({}, {len} bytes) to node {}",
                        case.path,
                        case.kind,
                        case.node + 1
                    ));
                    return;
                };
                tally(&codes, class, outcome_name(&result));
                // Any status is an answer, but not one saying the server broke: UNKNOWN (a handler
                // panic resets the stream), UNAVAILABLE (the connection died), or INTERNAL other
                // than tonic's own protobuf decode error. The Raft service decodes no payload
                // here (decodable ones are never sent), so it must never say OK.
                let broken = match &result {
                    Ok(_) => class == "raw-Raft",
                    Err(s) => match s.code() {
                        Code::Unknown | Code::Unavailable | Code::Cancelled => true,
                        Code::Internal => !s.message().starts_with("failed to decode Protobuf"),
                        _ => false,
                    },
                };
                if broken {
                    findings.lock().unwrap().push(format!(
                        "{} ({}, {len} bytes, body prefix {:02x?}) to node {} -> {}",
                        case.path,
                        case.kind,
                        &case.body[..len.min(48)],
                        case.node + 1,
                        match &result {
                            Ok(_) => "OK".to_string(),
                            Err(s) => format!("{:?}: {}", s.code(), s.message()),
                        }
                    ));
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
    let raw_time = phase.elapsed();
    assert_all_running(&mut cluster, "the raw fuzz");

    // 3. Structured garbage.
    let brokers: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| client.broker_at(&n.grpc).unwrap())
        .collect();
    let structured: Vec<StructuredCase> = (0..STRUCTURED)
        .map(|i| structured_case(&mut rng, i, producer_id))
        .collect();
    let phase = Instant::now();
    futures::stream::iter(structured)
        .map(|case| {
            let broker = brokers[case.node].clone();
            let (codes, findings) = (codes.clone(), findings.clone());
            async move {
                let result =
                    tokio::time::timeout(REQUEST_TIMEOUT, run_structured(broker, &case.call)).await;
                let class = format!("structured-{}", case.call.name());
                let Ok(result) = result else {
                    tally(&codes, &class, "TIMEOUT".into());
                    findings.lock().unwrap().push(format!(
                        "no answer in {REQUEST_TIMEOUT:?} from node {}: {}",
                        case.node + 1,
                        case.call.describe()
                    ));
                    return;
                };
                tally(&codes, &class, outcome_name(&result));
                let wrong = wrong_answer(&case, &result);
                if let Some(answer) = wrong {
                    findings.lock().unwrap().push(format!(
                        "node {} answered {answer} to {}",
                        case.node + 1,
                        case.call.describe()
                    ));
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
    let structured_time = phase.elapsed();
    assert_all_running(&mut cluster, "the structured fuzz");

    let mut after = Vec::new();
    for id in 1..=3 {
        after.push(cluster.status(id).await);
    }
    let terms_after: Vec<_> = after.iter().map(|s| s.as_ref().map(|s| s.term)).collect();
    let applied_after = after.iter().flatten().map(|s| s.applied_index).max();

    // The summary, before any assertion on the outcome.
    let codes = codes.lock().unwrap().clone();
    let summary: Vec<String> = codes
        .iter()
        .map(|(class, outcomes)| {
            let n: usize = outcomes.values().sum();
            let detail: Vec<String> = outcomes.iter().map(|(c, k)| format!("{c}={k}")).collect();
            format!("{class} {n} [{}]", detail.join(" "))
        })
        .collect();
    eprintln!(
        "malformed_requests: seed {seed}; raw {raw_count} in {raw_time:.1?} (generated bodies \
         replaced as not malformed: {replaced:?}), structured {STRUCTURED} in \
         {structured_time:.1?}; Raft terms {terms_before:?} -> {terms_after:?}, applied index \
         {} -> {applied_after:?}; {}",
        before_digests[0].applied_index,
        summary.join("; ")
    );
    let findings = findings.lock().unwrap().clone();
    for f in &findings {
        eprintln!("FINDING: {f}");
    }

    // 4. Every node is up and answers; the data is what it was.
    for (id, status) in (1..).zip(&after) {
        assert!(status.is_some(), "node {id} does not answer Status");
    }
    let after_digests = cluster.wait_converged(&[1, 2, 3]).await;
    for d in &after_digests {
        assert_eq!(
            d.sha256, after_digests[0].sha256,
            "replicas differ: {after_digests:?}"
        );
        // The applied index is hashed (refused writes still take log entries), so the digests
        // differ from before; the number of rows must not.
        assert_eq!(
            d.keys, before_digests[0].keys,
            "rows added or removed: {after_digests:?}"
        );
    }
    for id in 1..=3 {
        assert_eq!(
            observe(&cluster, id).await,
            before,
            "node {id}'s data changed"
        );
    }
    for node in &cluster.nodes {
        let log = std::fs::read_to_string(node.data_dir.join("node.log")).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains("panicked")) {
            panic!("node {} logged a panic: {line}", node.id);
        }
    }
    assert_all_running(&mut cluster, "the final checks");
    // An UNAVAILABLE finding while the terms changed means an election happened during the run
    // (a stalled machine can cause one): the summary line shows the terms before and after.
    assert!(
        findings.is_empty(),
        "{} requests got a wrong answer (see FINDING lines above; Raft terms {terms_before:?} -> \
         {terms_after:?})",
        findings.len()
    );
    eprintln!("malformed_requests: passed in {:.1?}", started.elapsed());
}
