//! Micro-benchmarks of the per-record work on a node's write path, on the real types and a real
//! RocksDB (`cargo bench -p raftlog-store --bench storage`):
//! - `entry_codec`: a group-commit entry (64 produce requests of one 1 KiB record) encoded as the
//!   Raft log and the peer protocol store it (postcard), and decoded back.
//! - `stored_batch`: one partition batch (64 records of 1 KiB) in its on-disk row form.
//! - `apply`: the state machine applying such entries into RocksDB (what every node does once
//!   per committed entry).
//!
//! Throughput is reported in record bytes, so the figures compare with the end-to-end MB/s of
//! `scripts/bench.sh`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use raftlog_core::types::{CommittedLeaderId, Entry, EntryPayload, LogId};
use raftlog_core::{Command, Record, TopicSettings, METADATA_GROUP};
use raftlog_store::stored_batch::{self, BatchHeader};
use raftlog_store::{decode, encode, StateMachine};

const RECORDS: usize = 64;
const RECORD_BYTES: usize = 1024;

fn record() -> Record {
    Record {
        key: None,
        value: Bytes::from(vec![b'x'; RECORD_BYTES]),
        headers: Vec::new(),
        timestamp_ms: 0,
    }
}

fn append(records: Vec<Record>) -> Command {
    Command::Append {
        topic: "bench".into(),
        partition: 0,
        records,
        proposed_at_ms: 1,
        producer: None,
        expected_end_offset: None,
    }
}

/// A group-commit entry: `RECORDS` produce requests of one record each.
fn group_commit_entry() -> Command {
    Command::Batch((0..RECORDS).map(|_| append(vec![record()])).collect())
}

fn entry(index: u64, command: Command) -> Entry {
    Entry {
        log_id: LogId::new(
            CommittedLeaderId {
                term: 1,
                node_id: 1,
            },
            index,
        ),
        payload: EntryPayload::Normal(command),
    }
}

fn entry_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("entry_codec");
    group.throughput(Throughput::Bytes((RECORDS * RECORD_BYTES) as u64));
    let entry = entry(1, group_commit_entry());
    group.bench_function("encode", |b| b.iter(|| encode(black_box(&entry))));
    let encoded = encode(&entry);
    group.bench_function("decode", |b| {
        b.iter(|| decode::<Entry>(black_box(&encoded)).expect("decodes"))
    });
    group.finish();
}

fn stored_batch_rows(c: &mut Criterion) {
    let mut group = c.benchmark_group("stored_batch");
    group.throughput(Throughput::Bytes((RECORDS * RECORD_BYTES) as u64));
    let records: Vec<Record> = (0..RECORDS).map(|_| record()).collect();
    let header = BatchHeader {
        appended_at_ms: 1,
        bytes: (RECORDS * RECORD_BYTES) as u64,
    };
    group.bench_function("encode", |b| {
        b.iter(|| stored_batch::encode_batch(header, black_box(&records)))
    });
    let row = bytes::Bytes::from(stored_batch::encode_batch(header, &records));
    group.bench_function("decode", |b| {
        b.iter(|| stored_batch::records_shared(black_box(row.clone())).expect("decodes"))
    });
    group.finish();
}

fn apply(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let dbs = raftlog_store::open(dir.path(), &raftlog_store::StorageOptions::default())
        .expect("open RocksDB");
    let mut sm = StateMachine::open(&dbs, METADATA_GROUP, dir.path().join("snapshots"))
        .expect("open the state machine");
    let create = Command::CreateTopic {
        name: "bench".into(),
        settings: TopicSettings {
            partitions: 1,
            retention_ms: 0,
            retention_bytes: 0,
            max_record_bytes: 1024 * 1024,
        },
        topics_max: 10,
    };
    sm.apply_entries([entry(1, create)])
        .expect("create the topic");

    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Bytes((RECORDS * RECORD_BYTES) as u64));
    let mut index = 1;
    group.bench_function("group_commit_entry", |b| {
        b.iter_batched(
            || {
                index += 1;
                entry(index, group_commit_entry())
            },
            |entry| sm.apply_entries([entry]).expect("apply"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, entry_codec, stored_batch_rows, apply);
criterion_main!(benches);
