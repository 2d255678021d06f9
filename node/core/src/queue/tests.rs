use super::*;

fn settings() -> QueueSettings {
    QueueSettings {
        lock_ms: 1000,
        max_deliveries: 3,
        backoff_ms: vec![100, 500],
        in_flight_max: 100,
    }
}

fn ends(pairs: &[(u32, u64)]) -> BTreeMap<u32, u64> {
    pairs.iter().copied().collect()
}

fn d(partition: u32, offset: u64, count: u32) -> Delivery {
    Delivery {
        partition,
        offset,
        count,
    }
}

#[test]
fn records_go_out_once_each_partition_in_turn() {
    let mut q = QueueState::default();
    let s = settings();
    let got = q.receive(&s, "w1", 3, 0, &ends(&[(0, 2), (1, 2)]));
    assert_eq!(got.delivered, vec![d(0, 0, 1), d(1, 0, 1), d(0, 1, 1)]);
    assert_eq!(got.deadline_ms, 1000);
    let got = q.receive(&s, "w2", 10, 1, &ends(&[(0, 2), (1, 2)]));
    assert_eq!(got.delivered, vec![d(1, 1, 1)]);
    // Nothing left: nothing delivered twice while its lock runs.
    assert!(q
        .receive(&s, "w3", 10, 999, &ends(&[(0, 2), (1, 2)]))
        .delivered
        .is_empty());
    assert_eq!(q.in_flight(), 4);
}

#[test]
fn an_expired_lock_is_delivered_again_with_a_higher_count() {
    let mut q = QueueState::default();
    let s = settings();
    q.receive(&s, "w1", 1, 0, &ends(&[(0, 1)]));
    // At its deadline the lock has run out.
    let got = q.receive(&s, "w2", 1, 1000, &ends(&[(0, 1)]));
    assert_eq!(got.delivered, vec![d(0, 0, 2)]);
    // The first delivery can no longer decide; the second can.
    assert_eq!(
        q.ack(d(0, 0, 1)),
        Err(QueueError::Superseded {
            delivery: d(0, 0, 1),
            current: 2
        })
    );
    assert!(q.ack(d(0, 0, 2)).is_ok());
    // Repeated (an unknown outcome retried): fine.
    assert!(q.ack(d(0, 0, 2)).is_ok());
    assert_eq!(q.partitions[&0].floor, 1);
    assert!(q
        .receive(&s, "w1", 1, 5000, &ends(&[(0, 1)]))
        .delivered
        .is_empty());
}

#[test]
fn an_ack_after_the_lock_ran_out_counts_until_the_record_goes_out_again() {
    let mut q = QueueState::default();
    let s = settings();
    q.receive(&s, "w1", 1, 0, &ends(&[(0, 1)]));
    // Another receive expires the lock, but there is nothing else for it to deliver first...
    let got = q.receive(&s, "w2", 0, 1500, &ends(&[(0, 1)]));
    assert!(got.delivered.is_empty());
    // ...so the late ack is still the record's current delivery.
    assert_eq!(q.ack(d(0, 0, 1)), Ok(true));
    assert!(q
        .receive(&s, "w2", 5, 2000, &ends(&[(0, 1)]))
        .delivered
        .is_empty());
}

#[test]
fn released_records_wait_their_delay_or_the_backoff() {
    let mut q = QueueState::default();
    let s = settings();
    q.receive(&s, "w1", 2, 0, &ends(&[(0, 2)]));
    q.release(&s, d(0, 0, 1), 0, 10).unwrap(); // backoff[0]: 100 ms
    q.release(&s, d(0, 1, 1), 700, 10).unwrap();
    assert!(q
        .receive(&s, "w", 5, 109, &ends(&[(0, 2)]))
        .delivered
        .is_empty());
    assert_eq!(
        q.receive(&s, "w", 5, 110, &ends(&[(0, 2)])).delivered,
        vec![d(0, 0, 2)]
    );
    assert_eq!(
        q.receive(&s, "w", 5, 710, &ends(&[(0, 2)])).delivered,
        vec![d(0, 1, 2)]
    );
    // The second release of offset 0 waits backoff[1], and later ones the last entry.
    q.release(&s, d(0, 0, 2), 0, 800).unwrap();
    assert!(q
        .receive(&s, "w", 5, 1299, &ends(&[(0, 2)]))
        .delivered
        .is_empty());
}

#[test]
fn too_many_deliveries_and_rejects_are_dead_lettered() {
    let mut q = QueueState::default();
    let s = settings();
    let mut now = 0;
    for count in 1..=3 {
        let got = q.receive(&s, "w", 1, now, &ends(&[(0, 1)]));
        assert_eq!(got.delivered, vec![d(0, 0, count)]);
        now += 1000; // each lock runs out
    }
    let got = q.receive(&s, "w", 1, now, &ends(&[(0, 1)]));
    assert!(got.delivered.is_empty());
    assert_eq!(
        got.dead_lettered,
        vec![DeadLetter {
            partition: 0,
            offset: 0,
            deliveries: 3,
            reason: DeadLetterReason::MaxDeliveries
        }]
    );
    assert_eq!(q.partitions[&0].floor, 1);

    let got = q.receive(&s, "w", 1, now, &ends(&[(0, 2)]));
    let dead = q.reject(got.delivered[0]).unwrap();
    assert_eq!(dead.reason, DeadLetterReason::Rejected);
    assert_eq!(
        q.reject(got.delivered[0]),
        Err(QueueError::AlreadyDone(d(0, 1, 1)))
    );
    assert_eq!(q.partitions[&0].floor, 2);
}

#[test]
fn extend_keeps_the_lock_until_it_runs_out() {
    let mut q = QueueState::default();
    let s = settings();
    q.receive(&s, "w1", 1, 0, &ends(&[(0, 1)]));
    assert_eq!(q.extend(&s, d(0, 0, 1), 900), Ok(1900));
    assert!(q
        .receive(&s, "w2", 1, 1500, &ends(&[(0, 1)]))
        .delivered
        .is_empty());
    assert_eq!(
        q.extend(&s, d(0, 0, 1), 1900),
        Err(QueueError::LockExpired(d(0, 0, 1)))
    );
}

#[test]
fn in_flight_is_capped_over_the_group() {
    let mut q = QueueState::default();
    let s = QueueSettings {
        in_flight_max: 3,
        ..settings()
    };
    assert_eq!(
        q.receive(&s, "a", 2, 0, &ends(&[(0, 10)])).delivered.len(),
        2
    );
    assert_eq!(
        q.receive(&s, "b", 2, 0, &ends(&[(0, 10)])).delivered.len(),
        1
    );
    assert!(q
        .receive(&s, "c", 2, 0, &ends(&[(0, 10)]))
        .delivered
        .is_empty());
    q.ack(d(0, 1, 1)).unwrap();
    assert_eq!(
        q.receive(&s, "c", 2, 0, &ends(&[(0, 10)])).delivered,
        vec![d(0, 3, 1)]
    );
}

#[test]
fn unknown_deliveries_are_refused_and_ids_round_trip() {
    let mut q = QueueState::default();
    let s = settings();
    assert_eq!(
        q.ack(d(0, 0, 1)),
        Err(QueueError::UnknownDelivery(d(0, 0, 1)))
    );
    q.receive(&s, "w", 1, 0, &ends(&[(0, 1)]));
    assert_eq!(
        q.ack(d(0, 5, 1)),
        Err(QueueError::UnknownDelivery(d(0, 5, 1)))
    );
    assert_eq!(
        q.ack(d(0, 0, 7)),
        Err(QueueError::UnknownDelivery(d(0, 0, 7)))
    );
    let id = d(3, 42, 2).id();
    assert_eq!(id, "3.42.2");
    assert_eq!(Delivery::parse(&id), Some(d(3, 42, 2)));
    for bad in ["", "1.2", "1.2.3.4", "a.2.3", "1.-2.3"] {
        assert_eq!(Delivery::parse(bad), None, "{bad}");
    }
}

#[test]
fn retention_takes_records_out_of_the_queue() {
    let mut q = QueueState::default();
    let s = settings();
    q.receive(&s, "w1", 2, 0, &ends(&[(0, 5)]));
    q.ack(d(0, 0, 1)).expect("ack");
    // Offsets 0 (done), 1 (locked) and 2 (never delivered) are deleted by retention.
    let p = q.partitions.get_mut(&0).expect("partition");
    assert_eq!(p.drop_below(3), 2);
    assert_eq!((p.floor, p.next), (3, 3));
    assert!(p.locked.is_empty());
    let got = q.receive(&s, "w1", 10, 1, &ends(&[(0, 5)]));
    assert_eq!(got.delivered, vec![d(0, 3, 1), d(0, 4, 1)]);
}

#[test]
fn readiness_follows_records_locks_and_delays() {
    let mut q = QueueState::default();
    let s = settings();
    assert!(!q.ready(&s, 0, &ends(&[(0, 0)])));
    assert!(q.ready(&s, 0, &ends(&[(0, 1)])));
    q.receive(&s, "w1", 1, 0, &ends(&[(0, 1)]));
    assert!(!q.ready(&s, 10, &ends(&[(0, 1)])));
    assert_eq!(q.next_ready_ms(10), Some(1000));
    assert!(q.ready(&s, 1000, &ends(&[(0, 1)])));
    q.release(&s, d(0, 0, 1), 50, 20).expect("release");
    assert!(!q.ready(&s, 60, &ends(&[(0, 1)])));
    assert_eq!(q.next_ready_ms(60), Some(70));
    assert_eq!(q.waiting(60), (1, 1));
    assert!(q.ready(&s, 70, &ends(&[(0, 1)])));
    let bounds = [(0, (0, 1))].into_iter().collect();
    assert_eq!(q.backlog(&bounds), 1);
    q.receive(&s, "w1", 1, 70, &ends(&[(0, 1)]));
    q.ack(d(0, 0, 2)).expect("ack");
    assert_eq!(q.backlog(&bounds), 0);
}
