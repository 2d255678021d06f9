//! Tests of applying and reading across the command families (appends and reads, topic changes
//! within one apply call), of opening the state machine, and of its purge contract with the log.

use rocksdb::IteratorMode;

use super::StateMachine;
use crate::keys;
use crate::stored_batch;
use crate::test_support::{log_id, open_databases};
use raftlog_core::limits::STORED_BATCH_BYTES_TARGET;
use raftlog_core::types::{Entry, EntryPayload};
use raftlog_core::{Command, CommandResponse, Record, Rejection, TopicSettings, TopicState};

fn entry(index: u64, command: Command) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(command),
    }
}

/// The databases under `dir` and the metadata group's state machine on them.
fn open_state_machine(dir: &std::path::Path) -> (crate::Databases, StateMachine) {
    let dbs = open_databases(dir);
    let sm = StateMachine::open(&dbs, raftlog_core::METADATA_GROUP, dir.join("snapshots"))
        .expect("open the state machine");
    (dbs, sm)
}

fn create_topic(name: &str, partitions: u32, max_record_bytes: u32, topics_max: u32) -> Command {
    Command::CreateTopic {
        name: name.into(),
        settings: TopicSettings {
            partitions,
            retention_ms: 0,
            retention_bytes: 0,
            max_record_bytes,
        },
        topics_max,
    }
}

fn record(value: impl Into<bytes::Bytes>) -> Record {
    Record {
        key: None,
        value: value.into(),
        headers: Vec::new(),
        timestamp_ms: 0,
    }
}

fn append_to(
    topic: &str,
    partition: u32,
    records: Vec<Record>,
    expected_end_offset: Option<u64>,
) -> Command {
    Command::Append {
        topic: topic.into(),
        partition,
        records,
        proposed_at_ms: 1,
        producer: None,
        expected_end_offset,
    }
}

fn append(partition: u32, value: &str, expected_end_offset: Option<u64>) -> Command {
    append_to(
        "t",
        partition,
        vec![record(value.to_string())],
        expected_end_offset,
    )
}

/// A group-commit entry's appends to one partition become one stored batch, and every
/// request still gets its own offsets and reads back from any offset, the middle of that
/// batch included; a rejected append in between takes no offset.
#[test]
fn appends_of_one_entry_share_a_stored_batch_and_keep_their_offsets() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (_dbs, mut sm) = open_state_machine(dir.path());
    let create = create_topic("t", 2, 1024, 10);
    let batch = Command::Batch(
        vec![
            append(0, "a", None),
            append(1, "x", None),
            append(0, "b", None),
            append(0, "rejected", Some(7)),
            append(0, "c", Some(2)),
        ]
        .into(),
    );
    let responses = sm
        .apply_entries([entry(1, create), entry(2, batch)])
        .expect("apply");
    let CommandResponse::Batch(answers) = &responses[1] else {
        panic!("a batch answers a batch: {responses:?}");
    };
    let offsets: Vec<_> = answers
        .iter()
        .map(|a| match a {
            CommandResponse::Appended { base_offset, .. } => Some(*base_offset),
            _ => None,
        })
        .collect();
    assert_eq!(offsets, [Some(0), Some(0), Some(1), None, Some(2)]);

    let view = sm.view();
    let values = |partition, from| -> Vec<(u64, String)> {
        let read = view.read("t", partition, from, 100, 1 << 20).expect("read");
        read.records
            .into_iter()
            .map(|(o, r)| (o, String::from_utf8(r.value.to_vec()).unwrap()))
            .collect()
    };
    let abc = |o: u64, v: &str| (o, v.to_string());
    assert_eq!(values(0, 0), [abc(0, "a"), abc(1, "b"), abc(2, "c")]);
    assert_eq!(values(0, 1), [abc(1, "b"), abc(2, "c")]);
    assert_eq!(values(1, 0), [abc(0, "x")]);

    // One row per partition: the three appends to partition 0 were stored together.
    let cf = view.cf();
    let rows = view
        .db
        .iterator_cf(cf, IteratorMode::Start)
        .filter_map(|item| keys::parse_batch(&item.expect("row").0))
        .count();
    assert_eq!(rows, 2);
}

/// An entry's appends to a partition are cut into stored batches of at most
/// `STORED_BATCH_BYTES_TARGET` record bytes (a larger record alone), each with its own byte
/// count, and every offset still reads back.
#[test]
fn stored_batches_are_cut_at_the_byte_target() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (_dbs, mut sm) = open_state_machine(dir.path());
    let create = create_topic("t", 1, 1 << 20, 10);
    let filled = |fill: u8, len: usize| record(vec![fill; len]);
    let append_records = |records: Vec<Record>| append_to("t", 0, records, None);
    // Records of a fifth of the target: five fit one batch (the second append joins the
    // first one's), a sixth starts the next; a record above the target stands alone.
    let (fifth, kib) = (STORED_BATCH_BYTES_TARGET as usize / 5, 1024);
    let large = STORED_BATCH_BYTES_TARGET as usize + kib;
    let batch = Command::Batch(
        vec![
            append_records((0..4).map(|i| filled(i, fifth)).collect()),
            append_records((4..6).map(|i| filled(i, fifth)).collect()),
            append_records(vec![filled(6, large)]),
            append_records(vec![filled(7, kib)]),
        ]
        .into(),
    );
    sm.apply_entries([entry(1, create), entry(2, batch)])
        .expect("apply");

    let view = sm.view();
    let cf = view.cf();
    let batches: Vec<(u64, usize, u64)> = view
        .db
        .iterator_cf(cf, IteratorMode::Start)
        .map(|item| item.expect("row"))
        .filter_map(|(key, value)| {
            let (_, _, base) = keys::parse_batch(&key)?;
            let header = stored_batch::header(&value).expect("header");
            let records =
                stored_batch::records_shared(bytes::Bytes::from(value.to_vec())).expect("records");
            Some((base, records.len(), header.bytes))
        })
        .collect();
    let (fifth, large, kib) = (fifth as u64, large as u64, kib as u64);
    assert_eq!(
        batches,
        [(0, 5, 5 * fifth), (5, 1, fifth), (6, 1, large), (7, 1, kib)]
    );
    for offset in 0..8u64 {
        let read = view.read("t", 0, offset, 1, 1 << 20).expect("read");
        assert_eq!(read.records.len(), 1, "offset {offset}");
        assert_eq!(read.records[0].0, offset);
        assert_eq!(read.records[0].1.value[0], offset as u8);
    }
}

/// Topics created, deleted and appended to within one apply call see each other (the topic
/// limit counts exactly), reach the shared view only as the call's end result, and are what
/// a state machine reopened on the same rows loads.
#[test]
fn topic_changes_of_one_apply_call_see_each_other_and_are_published_together() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (dbs, mut sm) = open_state_machine(dir.path());
    let create = |name: &str| create_topic(name, 1, 1024, 2);
    let append_v = |topic: &str| append_to(topic, 0, vec![record("v")], None);
    let responses = sm
        .apply_entries([
            entry(1, create("a")),
            entry(2, create("b")),
            entry(3, create("c")),
            entry(4, Command::DeleteTopic { name: "a".into() }),
            entry(5, create("c")),
            entry(6, append_v("c")),
            entry(7, append_v("a")),
        ])
        .expect("apply");
    assert!(matches!(
        responses[2],
        CommandResponse::Rejected(Rejection::TooManyTopics(2))
    ));
    assert!(matches!(responses[4], CommandResponse::TopicCreated { .. }));
    assert!(matches!(
        responses[5],
        CommandResponse::Appended { base_offset: 0, .. }
    ));
    assert!(matches!(
        &responses[6],
        CommandResponse::Rejected(Rejection::UnknownTopic(name)) if name == "a"
    ));
    // A later call starts from the published table.
    sm.apply_entries([entry(8, append_v("c")), entry(9, append_v("b"))])
        .expect("apply");
    let end_offsets = |topics: Vec<TopicState>| -> Vec<(String, u64)> {
        topics
            .into_iter()
            .map(|t| (t.name, t.partitions[0].end_offset))
            .collect()
    };
    let expected = vec![("b".to_string(), 1), ("c".to_string(), 2)];
    assert_eq!(end_offsets(sm.view().topics()), expected);
    let reopened = StateMachine::open(
        &dbs,
        raftlog_core::METADATA_GROUP,
        dir.path().join("snapshots"),
    )
    .expect("reopen the state machine");
    assert_eq!(end_offsets(reopened.view().topics()), expected);
}

/// What a crash or a failed build leaves in the snapshot dir is gone once the state machine
/// opens: a partial build on a full disk would otherwise keep its space for good.
#[test]
fn opening_removes_unfinished_snapshot_files() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let dbs = open_databases(dir.path());
    let snapshots = dir.path().join("snapshots");
    std::fs::create_dir_all(&snapshots).unwrap();
    for name in [
        "building-1-1-5-0000abcd.snap",
        "receiving-0000abcd.snap",
        "current.meta.tmp",
        "snap-orphan.snap",
    ] {
        std::fs::write(snapshots.join(name), b"partial").unwrap();
    }
    StateMachine::open(&dbs, raftlog_core::METADATA_GROUP, snapshots.clone())
        .expect("open the state machine");
    let left: Vec<_> = std::fs::read_dir(&snapshots)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The state machine is written without a WAL, so a purge must never drop a log entry whose
/// effects are only in its memtable (after a crash the log is what rebuilds them). Up to a
/// snapshot the checkpoint has already flushed them and the purge writes nothing more to the
/// state database; past it, the purge flushes first.
#[tokio::test]
async fn a_purge_flushes_the_state_machine_only_past_what_a_snapshot_flushed() {
    use openraft::storage::{RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};

    let dir = tempfile::tempdir().expect("temporary directory");
    let (dbs, mut sm) = open_state_machine(dir.path());
    let group = raftlog_core::METADATA_GROUP;
    let mut log = crate::LogStore::new(&dbs, group, sm.flushed(), 0);
    let create = create_topic("t", 1, 1024, 10);
    sm.apply_entries([entry(1, create), entry(2, append(0, "a", None))])
        .expect("apply");
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build a snapshot");
    sm.apply_entries([entry(3, append(0, "b", None))])
        .expect("apply");
    let view = sm.view();
    let in_memtable = || {
        view.db
            .property_int_value_cf(view.cf(), "rocksdb.num-entries-active-mem-table")
            .expect("memtable property")
            .expect("memtable property")
    };
    assert!(in_memtable() > 0, "entry 3 is applied, not flushed");

    log.purge(log_id(2))
        .await
        .expect("purge up to the snapshot");
    assert!(in_memtable() > 0, "covered by the snapshot: no flush");

    log.purge(log_id(3)).await.expect("purge past the snapshot");
    assert_eq!(in_memtable(), 0, "entry 3 flushed before its purge");
}

/// Tokens, ACL entries and quotas apply deterministically (an equal entry keeps its id, a second token
/// with a taken id is refused, removing what is not there says so), live in rows of the group,
/// and read back the same when the state machine is opened again (as after a restart or an
/// installed snapshot, which both reload from the rows).
// Long: one table's life across two reloads reads best as one story.
#[test]
fn tokens_and_acl_entries_apply_and_reload_from_their_rows() {
    use raftlog_core::auth::{Acl, Operation, PatternType, Permission, ResourceType, TokenRecord};
    let dir = tempfile::tempdir().expect("temporary directory");
    let token = TokenRecord {
        id: "0123456789abcdef".into(),
        principal: "User:alice".into(),
        salt: [1; 16],
        hash: [2; 32],
        created_at_ms: 5,
        expires_at_ms: Some(10),
        created_by: "User:admin".into(),
    };
    let acl = Acl {
        principal: "User:alice".into(),
        resource: ResourceType::Topic,
        pattern: "orders-".into(),
        pattern_type: PatternType::Prefix,
        operation: Operation::Write,
        permission: Permission::Allow,
    };
    let deny = Acl {
        permission: Permission::Deny,
        pattern: "orders-secret".into(),
        pattern_type: PatternType::Literal,
        ..acl.clone()
    };
    let before = {
        let (_dbs, mut sm) = open_state_machine(dir.path());
        let create = |token: &TokenRecord| Command::CreateToken {
            token: Box::new(token.clone()),
            tokens_max: 10,
        };
        let add = |acl: &Acl| Command::AddAcl {
            acl: Box::new(acl.clone()),
            acls_max: 10,
        };
        let responses = sm
            .apply_entries([
                entry(1, create(&token)),
                entry(2, create(&token)),
                entry(3, add(&acl)),
                entry(4, add(&deny)),
                entry(5, add(&acl)),
                entry(6, Command::RemoveAcl { id: 9 }),
                entry(7, Command::RevokeToken { id: "nope".into() }),
                entry(
                    8,
                    Command::SetQuota {
                        principal: "User:alice".into(),
                        quota: raftlog_core::auth::Quota {
                            requests_per_sec: 5,
                            ..Default::default()
                        },
                        quotas_max: 10,
                    },
                ),
            ])
            .expect("apply");
        assert_eq!(
            responses,
            [
                CommandResponse::TokenCreated,
                CommandResponse::Rejected(Rejection::TokenExists(token.id.clone())),
                CommandResponse::AclAdded {
                    id: 1,
                    existed: false
                },
                CommandResponse::AclAdded {
                    id: 2,
                    existed: false
                },
                CommandResponse::AclAdded {
                    id: 1,
                    existed: true
                },
                CommandResponse::AclRemoved { removed: false },
                CommandResponse::TokenRevoked { revoked: false },
                CommandResponse::QuotaSet,
            ]
        );
        assert_eq!(
            sm.view().security().quotas["User:alice"].requests_per_sec,
            5
        );
        let security = sm.view().security();
        assert_eq!(security.tokens.get(&token.id), Some(&token));
        assert_eq!(security.acls.get(&2), Some(&deny));
        security
    };
    let (dbs, mut sm) = open_state_machine(dir.path());
    assert_eq!(sm.view().security(), before, "reloaded from the rows");
    // The next entry id continues after a reload; removals delete the rows.
    let responses = sm
        .apply_entries([
            entry(
                9,
                Command::AddAcl {
                    acl: Box::new(Acl {
                        operation: Operation::Read,
                        ..acl.clone()
                    }),
                    acls_max: 10,
                },
            ),
            entry(10, Command::RemoveAcl { id: 1 }),
            entry(
                11,
                Command::RevokeToken {
                    id: token.id.clone(),
                },
            ),
        ])
        .expect("apply");
    assert_eq!(
        responses[0],
        CommandResponse::AclAdded {
            id: 3,
            existed: false
        }
    );
    drop((sm, dbs));
    let (_dbs, sm) = open_state_machine(dir.path());
    let security = sm.view().security();
    assert!(security.tokens.is_empty());
    assert_eq!(security.acls.keys().copied().collect::<Vec<_>>(), [2, 3]);
}

/// Creates queue `q` on topic `t` (id 1): 1 s locks, 3 deliveries, key order and dead letters
/// as given.
fn create_queue_q(key_ordered: bool, dead_letter_topic: Option<&str>) -> Command {
    use raftlog_core::queue::{QueueDefinition, QueueSettings};
    Command::CreateQueue {
        queue: "q".into(),
        definition: Box::new(QueueDefinition {
            topic: "t".into(),
            topic_id: 1,
            settings: QueueSettings {
                lock_ms: 1000,
                max_deliveries: 3,
                backoff_ms: Vec::new(),
                in_flight_max: 100,
                worker_in_flight_max: 0,
                key_ordered,
                lookahead_max: 100,
            },
            dead_letter_topic: dead_letter_topic.map(str::to_string),
            created_at_ms: 0,
        }),
        queues_max: 10,
        topics_max: 10,
    }
}

/// A queue's state as the state machine holds it in memory is what its rows hold: a receive
/// that only sets records aside (held behind their key, delayed) writes its partition's row too,
/// so a restart (or a snapshot, built from the rows) hands nothing out again.
#[test]
fn a_queues_state_in_memory_is_what_reloads_from_its_rows() {
    use raftlog_core::queue::delivery_header;
    let dir = tempfile::tempdir().expect("temporary directory");
    let keyed = |key: &str, value: &str| Record {
        key: Some(bytes::Bytes::from(key.to_string())),
        ..record(value.to_string())
    };
    let mut delayed = record("later");
    delayed.headers.push((
        delivery_header::NOT_BEFORE_MS.into(),
        bytes::Bytes::from_static(b"999999"),
    ));
    let receive = |max| Command::QueueReceive {
        queue: "q".into(),
        worker: "w".into(),
        max,
        now_ms: 10,
    };
    let before = {
        let (_dbs, mut sm) = open_state_machine(dir.path());
        sm.apply_entries([
            entry(1, create_topic("t", 2, 0, 10)),
            entry(2, create_queue_q(true, None)),
            // Partition 0: key a twice, then a delayed record; partition 1: one record.
            entry(
                3,
                append_to("t", 0, vec![keyed("a", "1"), keyed("a", "2")], None),
            ),
            entry(4, append_to("t", 0, vec![delayed], None)),
            entry(5, append_to("t", 1, vec![record("x")], None)),
            // Takes partition 0's first record and partition 1's; then, with one record to
            // give, partition 0 only sets records aside.
            entry(6, receive(2)),
            entry(7, receive(1)),
        ])
        .expect("apply");
        sm.queues.clone()
    };
    let (_dbs, sm) = open_state_machine(dir.path());
    let state = &sm.queues["q"].state;
    assert_eq!(state.held(), 1, "{state:?}");
    assert_eq!(state.waiting(10), (1, 1), "the delayed record waits");
    assert_eq!(sm.queues, before);
}

/// Deleting a queue's dead-letter topic forgets the queue's redrive cursor (in its row too): a
/// topic recreated under that name is redriven from its start, not from where the old one was.
#[test]
fn deleting_the_dead_letter_topic_resets_the_redrive_cursor() {
    use raftlog_core::queue::{Delivery, SettleAction, Settlement};
    let dir = tempfile::tempdir().expect("temporary directory");
    let redrive = Command::QueueRedrive {
        queue: "q".into(),
        max_records: 100,
        max_bytes: 1 << 20,
        now_ms: 30,
    };
    {
        let (_dbs, mut sm) = open_state_machine(dir.path());
        sm.apply_entries([
            entry(1, create_topic("t", 1, 0, 10)),
            entry(2, create_queue_q(false, Some("dlq"))),
            entry(3, append_to("t", 0, vec![record("a"), record("b")], None)),
            entry(
                4,
                Command::QueueReceive {
                    queue: "q".into(),
                    worker: "w".into(),
                    max: 2,
                    now_ms: 10,
                },
            ),
            entry(
                5,
                Command::QueueSettle {
                    queue: "q".into(),
                    settlements: (0..2)
                        .map(|offset| Settlement {
                            delivery: Delivery {
                                partition: 0,
                                offset,
                                count: 1,
                            },
                            action: SettleAction::Reject { error: "no".into() },
                        })
                        .collect(),
                    now_ms: 20,
                },
            ),
            entry(6, redrive.clone()),
        ])
        .expect("apply");
        assert_eq!(sm.queues["q"].redrive_from.get(&0), Some(&2));
        sm.apply_entries([entry(7, Command::DeleteTopic { name: "dlq".into() })])
            .expect("apply");
        assert!(sm.queues["q"].redrive_from.is_empty());
    }
    let (_dbs, sm) = open_state_machine(dir.path());
    assert!(
        sm.queues["q"].redrive_from.is_empty(),
        "the row was rewritten"
    );
}

/// Creation caps are judged at apply against what the principal owns then, within one apply
/// call too: a create past a cap is refused and changes nothing; a deleted topic (and a group
/// left without offsets) stops counting; resources created without a principal are no one's;
/// the owners are reloaded from their rows, and maintenance drops the rows of what is gone.
// Long: one scenario, each step's outcome depending on the ones before.
#[test]
fn creation_caps_count_what_a_principal_owns_now() {
    use raftlog_core::auth::{CreationCaps, Quota};
    let dir = tempfile::tempdir().expect("temp dir");
    let alice = |command: Command| Command::OnBehalfOf {
        principal: "User:alice".into(),
        command: Box::new(command),
    };
    let commit = |group: &str, topic: &str| Command::CommitGroupOffsets {
        group: group.into(),
        topic: topic.into(),
        offsets: vec![(0, 0)],
        committed_at_ms: 1,
        groups_max: 100,
        allow_rewind: false,
    };
    let cap_reached = |what: &str, cap| {
        CommandResponse::Rejected(Rejection::CreationCapReached {
            principal: "User:alice".into(),
            what: what.into(),
            cap,
        })
    };
    let groups = "groups (consumer groups and queues)";
    {
        let (_dbs, mut sm) = open_state_machine(dir.path());
        let responses = sm
            .apply_entries([
                entry(
                    1,
                    Command::SetLimits {
                        principal: "User:alice".into(),
                        quota: Quota::default(),
                        caps: CreationCaps {
                            topics: 1,
                            partitions: 3,
                            groups: 1,
                        },
                        quotas_max: 10,
                    },
                ),
                entry(2, alice(create_topic("a", 2, 1024, 100))),
                entry(3, alice(create_topic("b", 1, 1024, 100))),
                entry(4, create_topic("c", 5, 1024, 100)),
                entry(5, alice(commit("g", "a"))),
                entry(6, alice(commit("h", "c"))),
                entry(7, Command::DeleteTopic { name: "a".into() }),
                entry(8, alice(create_topic("b", 4, 1024, 100))),
                entry(9, alice(create_topic("b", 3, 1024, 100))),
                entry(10, alice(commit("h", "b"))),
            ])
            .expect("apply");
        assert_eq!(responses[0], CommandResponse::QuotaSet);
        assert!(matches!(responses[1], CommandResponse::TopicCreated { .. }));
        assert_eq!(responses[2], cap_reached("topics", 1));
        assert!(matches!(responses[3], CommandResponse::TopicCreated { .. }));
        assert_eq!(responses[4], CommandResponse::OffsetsCommitted);
        assert_eq!(responses[5], cap_reached(groups, 1));
        assert_eq!(responses[6], CommandResponse::TopicDeleted);
        assert_eq!(responses[7], cap_reached("partitions", 3));
        assert!(matches!(responses[8], CommandResponse::TopicCreated { .. }));
        assert_eq!(responses[9], CommandResponse::OffsetsCommitted);
        assert!(sm.view().topic("b").is_some() && sm.view().group_exists("h"));
        assert!(!sm.view().group_exists("g"), "g had offsets of a only");
    }
    let (dbs, mut sm) = open_state_machine(dir.path());
    let owner_rows = |dbs: &crate::Databases| {
        let prefix = keys::sm_singleton(raftlog_core::METADATA_GROUP, keys::sm_tag::OWNER);
        let cf = dbs
            .state
            .cf_handle(crate::db::CF_STATE_MACHINE)
            .expect("cf");
        dbs.state
            .prefix_iterator_cf(cf, &prefix)
            .map(|item| item.expect("row").0)
            .take_while(|key| key.starts_with(&prefix))
            .count()
    };
    assert_eq!(owner_rows(&dbs), 4, "a, g, b and h (c has no owner)");
    let responses = sm
        .apply_entries([
            entry(11, alice(create_topic("d", 1, 1024, 100))),
            entry(12, alice(commit("i", "b"))),
            entry(
                13,
                Command::Maintenance {
                    now_ms: 1,
                    producer_idle_ms: u64::MAX,
                },
            ),
        ])
        .expect("apply");
    assert_eq!(responses[0], cap_reached("topics", 1), "reloaded owners");
    assert_eq!(responses[1], cap_reached(groups, 1));
    assert_eq!(owner_rows(&dbs), 2, "maintenance dropped a's and g's rows");
}
