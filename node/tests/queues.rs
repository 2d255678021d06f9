//! Queue groups on a 3-node cluster of real processes: records handed to one worker at a time,
//! redelivered when a lock runs out or a worker releases them (not before their delay),
//! dead-lettered with their origin in headers when rejected or delivered too often, locks kept by
//! extends, locks and delivery counts kept across a leader kill -9, delayed records held until
//! their time, key-ordered queues keeping each key's offset order under failing workers, and a
//! receive stream that pushes records up to its worker's cap and follows a new leader.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use raftlog_client::queue::{Job, Worker};
use raftlog_client::{pb, record, Client};
use support::{NodeOptions, TestCluster};
use tonic::Code;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn header<'a>(r: &'a pb::Record, key: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|h| h.key == key)
        .map(|h| std::str::from_utf8(&h.value).unwrap())
}

fn values(jobs: &[Job]) -> Vec<String> {
    jobs.iter()
        .map(|j| String::from_utf8(j.record.value.to_vec()).unwrap())
        .collect()
}

async fn produce(client: &Client, topic: &str, partitions: u32, count: usize) {
    for i in 0..count {
        let partition = i as u32 % partitions;
        client
            .produce(
                topic,
                partition,
                vec![record(format!("job-{i}").into_bytes())],
            )
            .await
            .unwrap();
    }
}

/// Everything in the topic `name` (every partition), from node 1.
async fn read_topic(client: &Client, name: &str) -> Vec<pb::Record> {
    let info = client.describe_topic(name).await.unwrap();
    let mut out = Vec::new();
    for partition in 0..info.config.unwrap().partitions {
        let response = client
            .fetch(pb::FetchRequest {
                topic: name.into(),
                partition,
                offset: 0,
                max_records: 1000,
                max_bytes: 0,
                max_wait_ms: 0,
            })
            .await
            .unwrap();
        out.extend(response.records);
    }
    out
}

fn settings(lock_ms: u32, max_deliveries: u32) -> pb::QueueSettings {
    pb::QueueSettings {
        lock_ms,
        max_deliveries,
        dead_letters: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_records_with_redelivery_release_reject_and_dead_letters() {
    let cluster = TestCluster::start(3, NodeOptions::default());
    cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("tasks", 3).await.unwrap();
    let created = client
        .create_queue("work", "tasks", settings(1500, 2))
        .await
        .unwrap();
    assert!(created.created);
    // The same settings again: no change; other settings: refused.
    let again = client
        .create_queue("work", "tasks", settings(1500, 2))
        .await
        .unwrap();
    assert!(!again.created);
    let other = client
        .create_queue("work", "tasks", settings(9000, 2))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists, "{other}");
    produce(&client, "tasks", 3, 12).await;

    let a = Worker::new(client.clone(), "work", "a");
    let b = Worker::new(client.clone(), "work", "b");
    let c = Worker::new(client.clone(), "work", "c");
    let got_a = a.receive(4).await.unwrap();
    let got_b = b.receive(4).await.unwrap();
    let got_c = c.receive(4).await.unwrap();
    let mut all: BTreeSet<String> = BTreeSet::new();
    for v in values(&got_a)
        .into_iter()
        .chain(values(&got_b))
        .chain(values(&got_c))
    {
        assert!(all.insert(v.clone()), "{v} handed out twice while locked");
    }
    assert_eq!(all.len(), 12, "every record handed out once");
    assert!(got_a.iter().all(|j| j.delivery_count == 1));

    // Nothing left while every lock runs.
    let mut quick = Worker::new(client.clone(), "work", "quick");
    quick.wait = Duration::ZERO;
    assert!(quick.receive(10).await.unwrap().is_empty());

    // a acks; b does nothing (its locks run out); c releases two with a delay and rejects two.
    assert!(a.ack_all(&got_a).await.unwrap().is_empty());
    let released_at = now_ms();
    c.release(&got_c[0], Duration::from_millis(3000))
        .await
        .unwrap();
    c.release(&got_c[1], Duration::from_millis(3000))
        .await
        .unwrap();
    c.reject(&got_c[2], "bad input").await.unwrap();
    c.reject(&got_c[3], "bad input").await.unwrap();

    // b's records come back when their locks run out, delivered a second time.
    let mut d = Worker::new(client.clone(), "work", "d");
    d.wait = Duration::from_secs(5);
    let again = d.receive(10).await.unwrap();
    let lock_deadline = got_b.iter().map(|j| j.lock_deadline_ms).max().unwrap();
    assert!(
        now_ms() >= lock_deadline - 50,
        "redelivered before the lock ran out"
    );
    assert_eq!(sorted(values(&again)), sorted(values(&got_b)));
    assert!(again.iter().all(|j| j.delivery_count == 2));
    // b's late ack names a superseded delivery: refused, nothing changes.
    let late = b.ack(&got_b[0]).await.unwrap_err();
    assert!(late.to_string().contains("SUPERSEDED"), "{late}");

    // The released ones come back after their delay, not before.
    // (Released one after the other, they may come back in two receives.)
    let mut released = d.receive(10).await.unwrap();
    assert!(
        now_ms() >= released_at + 3000 - 50,
        "a released record came back before its delay"
    );
    if released.len() < 2 {
        released.extend(d.receive(10).await.unwrap());
    }
    assert_eq!(sorted(values(&released)), sorted(values(&got_c[..2])));

    // d lets everything run out again: the second delivery was the last (max 2), so the
    // next receive dead-letters them instead.
    let mut e = Worker::new(client.clone(), "work", "e");
    e.wait = Duration::from_secs(4);
    assert!(e.receive(10).await.unwrap().is_empty());
    let info = client.describe_queue("work").await.unwrap();
    assert_eq!(info.backlog, 0, "{info:?}");
    assert_eq!(info.acked, 4);
    assert_eq!(info.dead_lettered, 8, "{info:?}");
    assert_eq!(info.redelivered, 6);

    // Read from whichever node answers: wait until it has applied all eight.
    let letters = cluster
        .wait_for("the dead letters", Duration::from_secs(10), || async {
            Some(read_topic(&client, "tasks.work.dlq").await).filter(|l| l.len() >= 8)
        })
        .await;
    assert_eq!(letters.len(), 8);
    let rejected: Vec<_> = letters
        .iter()
        .filter(|r| header(r, "raftlog-dlq-reason") == Some("rejected"))
        .collect();
    assert_eq!(rejected.len(), 2);
    for r in &rejected {
        assert_eq!(header(r, "raftlog-dlq-error"), Some("bad input"));
        assert_eq!(header(r, "raftlog-dlq-topic"), Some("tasks"));
        assert_eq!(header(r, "raftlog-dlq-queue"), Some("work"));
        assert_eq!(header(r, "raftlog-dlq-deliveries"), Some("1"));
    }
    let original = got_c
        .iter()
        .find(|j| j.record.value == rejected[0].value)
        .expect("the rejected record's value");
    assert_eq!(
        header(rejected[0], "raftlog-dlq-offset"),
        Some(original.offset.to_string().as_str())
    );
    let maxed = letters
        .iter()
        .filter(|r| header(r, "raftlog-dlq-reason") == Some("max-deliveries"))
        .count();
    assert_eq!(maxed, 6);

    // Redrive: the eight go back to their partitions of the topic, without the dead-letter
    // headers, in two calls; then there is nothing left, and a queue without dead letters
    // refuses.
    let first = client.redrive("work", 5).await.unwrap();
    assert_eq!((first.records, first.remaining), (5, 3));
    let second = client.redrive("work", 0).await.unwrap();
    assert_eq!((second.records, second.remaining), (3, 0));
    let again = client.redrive("work", 0).await.unwrap();
    assert_eq!((again.records, again.remaining), (0, 0));
    let redriven = e.receive(10).await.unwrap();
    let mut back = redriven.clone();
    while back.len() < 8 {
        back.extend(e.receive(10).await.unwrap());
    }
    assert_eq!(
        sorted(values(&back)),
        sorted(
            letters
                .iter()
                .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
                .collect()
        )
    );
    for job in &back {
        assert_eq!(job.delivery_count, 1, "a new record to the queue");
        assert!(job
            .record
            .headers
            .iter()
            .all(|h| !h.key.starts_with("raftlog-dlq-")));
        let letter = letters
            .iter()
            .find(|r| r.value == job.record.value)
            .unwrap();
        assert_eq!(
            header(letter, "raftlog-dlq-partition"),
            Some(job.partition.to_string().as_str()),
            "back to the partition it came from"
        );
    }
    assert_eq!(client.describe_queue("work").await.unwrap().redriven, 8);
    let no_letters = pb::QueueSettings {
        dead_letters: false,
        ..settings(1500, 2)
    };
    client
        .create_queue("nodlq", "tasks", no_letters)
        .await
        .unwrap();
    let refused = client.redrive("nodlq", 0).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_lock_holds_and_bad_settlements_change_nothing() {
    let cluster = TestCluster::start(3, NodeOptions::default());
    cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("tasks", 1).await.unwrap();
    client
        .create_queue("work", "tasks", settings(1000, 5))
        .await
        .unwrap();
    produce(&client, "tasks", 1, 1).await;
    let a = Worker::new(client.clone(), "work", "a");
    let job = a.receive(1).await.unwrap().remove(0);
    // Extended for three lock times: nobody else gets the record meanwhile.
    let mut other = Worker::new(client.clone(), "work", "other");
    other.wait = Duration::from_millis(700);
    for _ in 0..4 {
        a.extend(&job).await.unwrap();
        assert!(other.receive(1).await.unwrap().is_empty());
    }
    // Bad input: refused precisely, nothing changed.
    let bad = client
        .settle(
            "work",
            vec![pb::Settlement {
                delivery_id: "zero".into(),
                action: pb::SettleAction::Ack as i32,
                ..Default::default()
            }],
        )
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad}");
    let unknown = client
        .settle(
            "work",
            vec![pb::Settlement {
                delivery_id: "0.77.1".into(),
                action: pb::SettleAction::Ack as i32,
                ..Default::default()
            }],
        )
        .await
        .unwrap();
    assert_eq!(unknown[0].error_code, "UNKNOWN_DELIVERY");
    let no_queue = client
        .receive("nope", "a", 1, Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(no_queue.code(), Code::NotFound, "{no_queue}");
    let no_topic = client
        .create_queue("q2", "missing", settings(1000, 5))
        .await
        .unwrap_err();
    assert_eq!(no_topic.code(), Code::NotFound, "{no_topic}");
    let info = client.describe_queue("work").await.unwrap();
    assert_eq!((info.in_flight, info.delivered, info.acked), (1, 1, 0));
    a.ack(&job).await.unwrap();
    // An ack repeated (after an unknown outcome, say) is fine.
    a.ack(&job).await.unwrap();
    let info = client.describe_queue("work").await.unwrap();
    assert_eq!((info.in_flight, info.backlog, info.acked), (0, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_and_delivery_counts_survive_a_leader_kill() {
    let mut cluster = TestCluster::start(3, NodeOptions::default());
    let leader = cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("tasks", 2).await.unwrap();
    client
        .create_queue("work", "tasks", settings(4000, 5))
        .await
        .unwrap();
    produce(&client, "tasks", 2, 6).await;
    let a = Worker::new(client.clone(), "work", "a");
    let held = a.receive(6).await.unwrap();
    assert_eq!(held.len(), 6);
    cluster.kill9(leader);
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);
    // The new leader knows the locks: nothing is handed out before they run out.
    let mut b = Worker::new(client.clone(), "work", "b");
    b.wait = Duration::from_secs(8);
    let again = b.receive(6).await.unwrap();
    let deadline = held.iter().map(|j| j.lock_deadline_ms).max().unwrap();
    assert!(
        now_ms() >= deadline - 50,
        "records delivered again while their locks ran"
    );
    assert!(
        again.iter().all(|j| j.delivery_count == 2),
        "delivery counts kept: {:?}",
        again.iter().map(|j| &j.delivery_id).collect::<Vec<_>>()
    );
    assert!(!again.is_empty());
    b.ack_all(&again).await.unwrap();
    let info = client.describe_queue("work").await.unwrap();
    assert_eq!(info.acked as usize, again.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_records_are_not_received_before_their_time_and_readers_see_them_at_once() {
    let cluster = TestCluster::start(3, NodeOptions::default());
    cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("later", 1).await.unwrap();
    client
        .create_queue("lq", "later", settings(10_000, 3))
        .await
        .unwrap();
    // A malformed delivery time is refused and appends nothing.
    let mut bad = record(b"bad".to_vec());
    bad.headers.push(pb::Header {
        key: raftlog_client::queue::DELAY_HEADER.into(),
        value: b"soon".to_vec().into(),
    });
    let err = client.produce("later", 0, vec![bad]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    let mut delayed = record(b"delayed".to_vec());
    raftlog_client::queue::deliver_after(&mut delayed, Duration::from_millis(1500));
    let mut at = record(b"at".to_vec());
    raftlog_client::queue::deliver_at(&mut at, now_ms() + 800);
    let plain = record(b"now".to_vec());
    client
        .produce("later", 0, vec![delayed, at, plain])
        .await
        .unwrap();
    // Plain readers see all three, in offset order, at once.
    let read: Vec<_> = read_topic(&client, "later").await;
    assert_eq!(read.len(), 3);

    let w = Worker::new(client.clone(), "lq", "w");
    let first = w.receive(10).await.unwrap();
    assert_eq!(values(&first), ["now"]);
    w.ack(&first[0]).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        for job in w.receive(10).await.unwrap() {
            let received_ms = now_ms();
            let not_before = raftlog_client::queue::not_before_ms(&job.record);
            assert!(not_before > 0, "{job:?}");
            // The leader delivered it at or after its time; the answer came after that.
            assert!(
                received_ms >= not_before,
                "received {received_ms} < {not_before}"
            );
            assert_eq!(job.delivery_count, 1, "a first delivery, not a redelivery");
            seen.push(String::from_utf8(job.record.value.to_vec()).unwrap());
            w.ack(&job).await.unwrap();
        }
    }
    assert_eq!(seen, ["at", "delayed"]);
    let info = client.describe_queue("lq").await.unwrap();
    assert_eq!((info.backlog, info.redelivered), (0, 0), "{info:?}");
}

/// What the key-ordered workers saw, shared between them.
#[derive(Default)]
struct KeyedRun {
    /// Per key, the offsets finished (acked or rejected), in the order they were settled.
    finished: std::collections::BTreeMap<String, Vec<u64>>,
    /// (key, offset) whose ack or reject is on its way (counted as finished while it is).
    settling: BTreeSet<(String, u64)>,
    violations: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_ordered_queue_keeps_each_keys_offset_order_under_failing_workers() {
    use rand::{Rng, SeedableRng};
    use std::sync::{Arc, Mutex};

    const RECORDS: u64 = 240;
    const KEYS: u64 = 12;
    const WORKER_CAP: usize = 2;
    let cluster = TestCluster::start(3, NodeOptions::default());
    cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("orders", 2).await.unwrap();
    let queue_settings = pb::QueueSettings {
        key_ordered: true,
        worker_in_flight_max: WORKER_CAP as u32,
        ..settings(1500, 20)
    };
    client
        .create_queue("ordered", "orders", queue_settings)
        .await
        .unwrap();
    // Key j lives in partition j mod 2; the offsets of each key, in order.
    let mut expected: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for i in 0..RECORDS {
        let j = i % KEYS;
        let mut r = record(i.to_string().into_bytes());
        r.key = Some(format!("key-{j}").into_bytes().into());
        let ack = client
            .produce("orders", (j % 2) as u32, vec![r])
            .await
            .unwrap();
        expected
            .entry(format!("key-{j}"))
            .or_default()
            .push(ack.base_offset);
    }
    let expected = Arc::new(expected);
    let run = Arc::new(Mutex::new(KeyedRun::default()));
    let mut tasks = Vec::new();
    for index in 0..8u64 {
        let (client, expected, run) = (client.clone(), expected.clone(), run.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(index);
            let mut incarnation = 0;
            let mut w = Worker::new(client.clone(), "ordered", format!("w{index}.0"));
            w.wait = Duration::from_millis(300);
            let give_up = std::time::Instant::now() + Duration::from_secs(90);
            loop {
                let done: usize = run.lock().unwrap().finished.values().map(Vec::len).sum();
                if done as u64 == RECORDS || std::time::Instant::now() > give_up {
                    return;
                }
                let Ok(jobs) = w.receive(4).await else {
                    continue;
                };
                assert!(
                    jobs.len() <= WORKER_CAP,
                    "over the worker cap: {}",
                    jobs.len()
                );
                for job in jobs {
                    let key = String::from_utf8(job.record.key.clone().unwrap().to_vec()).unwrap();
                    let offsets = &expected[&key];
                    {
                        let mut run = run.lock().unwrap();
                        let run = &mut *run;
                        let finished = run.finished.get(&key).cloned().unwrap_or_default();
                        let settled = |o: &u64| {
                            finished.contains(o) || run.settling.contains(&(key.clone(), *o))
                        };
                        let before_done = offsets.iter().filter(|&&o| o < job.offset).all(settled);
                        let after_done = offsets.iter().any(|&o| o > job.offset && settled(&o));
                        if !before_done || after_done {
                            run.violations.push(format!(
                                "{key} offset {} (count {}) handed out with finished {finished:?}",
                                job.offset, job.delivery_count
                            ));
                        }
                    }
                    let roll = rng.random_range(0..100);
                    if roll >= 85 {
                        // A crash: the worker drops what it holds and comes back under a new
                        // name; the lock runs out and the record comes back.
                        incarnation += 1;
                        w = Worker::new(
                            client.clone(),
                            "ordered",
                            format!("w{index}.{incarnation}"),
                        );
                        w.wait = Duration::from_millis(300);
                        break;
                    }
                    if (70..85).contains(&roll) && job.delivery_count < 3 {
                        let delay = Duration::from_millis(rng.random_range(0..100));
                        // Refused only if the lock ran out meanwhile: it comes back anyway.
                        let _ = w.release(&job, delay).await;
                        continue;
                    }
                    let settling = (key.clone(), job.offset);
                    run.lock().unwrap().settling.insert(settling.clone());
                    let outcome = if roll < 5 {
                        w.reject(&job, "bad order").await
                    } else {
                        w.ack(&job).await
                    };
                    let mut run = run.lock().unwrap();
                    run.settling.remove(&settling);
                    // Refused only if the lock ran out and the record went out again.
                    if outcome.is_ok() {
                        run.finished.entry(key).or_default().push(job.offset);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let run = run.lock().unwrap();
    assert!(run.violations.is_empty(), "{:#?}", run.violations);
    // Each key finished in offset order, every record once.
    assert_eq!(run.finished, *expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receive_stream_pushes_records_up_to_its_cap_and_follows_a_new_leader() {
    let mut cluster = TestCluster::start(3, NodeOptions::default());
    let leader = cluster.wait_for_leader().await;
    let client = cluster.client();
    client.create_topic("tasks", 2).await.unwrap();
    client
        .create_queue("work", "tasks", settings(30_000, 5))
        .await
        .unwrap();
    let worker = Worker::new(client.clone(), "work", "streamer");
    let mut stream = worker.stream(3);
    // Records produced after the stream opened are pushed to it.
    let opened = tokio::spawn(async move {
        let mut first = Vec::new();
        for _ in 0..3 {
            first.push(stream.next().await.unwrap());
        }
        (stream, first)
    });
    produce(&client, "tasks", 2, 10).await;
    let (mut stream, first) = opened.await.unwrap();
    // At the cap nothing more is locked for the worker, however long it waits.
    let more = tokio::time::timeout(Duration::from_millis(700), stream.next()).await;
    assert!(more.is_err(), "a fourth record pushed past the cap of 3");
    let info = client.describe_queue("work").await.unwrap();
    assert_eq!((info.backlog, info.ready, info.in_flight), (10, 7, 3));
    // An ack makes room for one more.
    worker.ack(&first[0]).await.unwrap();
    let fourth = stream.next().await.unwrap();
    let info = client.describe_queue("work").await.unwrap();
    assert_eq!((info.backlog, info.ready, info.in_flight), (9, 6, 3));

    // The leader dies with three records locked by the stream: the stream opens again on the
    // new leader, the locks held stay held (acks of them are accepted there), and the rest of
    // the records come through it.
    cluster.kill9(leader);
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);
    let held: Vec<Job> = first[1..].iter().cloned().chain([fourth]).collect();
    let refused = worker.ack_all(&held).await.unwrap();
    assert!(
        refused.is_empty(),
        "acks of locks held across the kill refused: {refused:?}"
    );
    let mut rest = Vec::new();
    while rest.len() < 6 {
        let job = stream.next().await.unwrap();
        assert_eq!(job.delivery_count, 1, "{} delivered again", job.delivery_id);
        worker.ack(&job).await.unwrap();
        rest.push(job);
    }
    let all: Vec<Job> = first
        .into_iter()
        .chain(held.into_iter().skip(2))
        .chain(rest)
        .collect();
    let seen: BTreeSet<String> = values(&all).into_iter().collect();
    assert_eq!(seen.len(), 10, "every record once: {seen:?}");
    let info = client.describe_queue("work").await.unwrap();
    assert_eq!((info.acked, info.backlog, info.redelivered), (10, 0, 0));
}
