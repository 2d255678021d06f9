use super::*;

fn settings() -> QueueSettings {
    QueueSettings {
        lock_ms: 1000,
        max_deliveries: 3,
        backoff_ms: vec![100, 500],
        in_flight_max: 100,
        worker_in_flight_max: 0,
        key_ordered: false,
        lookahead_max: 1000,
    }
}

/// Records without a key or a delivery time.
fn plain(_: u32, _: u64) -> RecordFacts {
    RecordFacts::default()
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
    let got = q.receive(&s, "w1", 3, 0, &ends(&[(0, 2), (1, 2)]), &mut plain);
    assert_eq!(got.delivered, vec![d(0, 0, 1), d(1, 0, 1), d(0, 1, 1)]);
    assert_eq!(got.deadline_ms, 1000);
    let got = q.receive(&s, "w2", 10, 1, &ends(&[(0, 2), (1, 2)]), &mut plain);
    assert_eq!(got.delivered, vec![d(1, 1, 1)]);
    // Nothing left: nothing delivered twice while its lock runs.
    assert!(q
        .receive(&s, "w3", 10, 999, &ends(&[(0, 2), (1, 2)]), &mut plain)
        .delivered
        .is_empty());
    assert_eq!(q.in_flight(), 4);
}

#[test]
fn an_expired_lock_is_delivered_again_with_a_higher_count() {
    let mut q = QueueState::default();
    let s = settings();
    q.receive(&s, "w1", 1, 0, &ends(&[(0, 1)]), &mut plain);
    // At its deadline the lock has run out.
    let got = q.receive(&s, "w2", 1, 1000, &ends(&[(0, 1)]), &mut plain);
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
        .receive(&s, "w1", 1, 5000, &ends(&[(0, 1)]), &mut plain)
        .delivered
        .is_empty());
}

#[test]
fn an_ack_after_the_lock_ran_out_counts_until_the_record_goes_out_again() {
    let mut q = QueueState::default();
    let s = settings();
    q.receive(&s, "w1", 1, 0, &ends(&[(0, 1)]), &mut plain);
    // Another receive expires the lock, but there is nothing else for it to deliver first...
    let got = q.receive(&s, "w2", 0, 1500, &ends(&[(0, 1)]), &mut plain);
    assert!(got.delivered.is_empty());
    // ...so the late ack is still the record's current delivery.
    assert_eq!(q.ack(d(0, 0, 1)), Ok(true));
    assert!(q
        .receive(&s, "w2", 5, 2000, &ends(&[(0, 1)]), &mut plain)
        .delivered
        .is_empty());
}

#[test]
fn released_records_wait_their_delay_or_the_backoff() {
    let mut q = QueueState::default();
    let s = settings();
    q.receive(&s, "w1", 2, 0, &ends(&[(0, 2)]), &mut plain);
    q.release(&s, d(0, 0, 1), 0, 10).unwrap(); // backoff[0]: 100 ms
    q.release(&s, d(0, 1, 1), 700, 10).unwrap();
    assert!(q
        .receive(&s, "w", 5, 109, &ends(&[(0, 2)]), &mut plain)
        .delivered
        .is_empty());
    assert_eq!(
        q.receive(&s, "w", 5, 110, &ends(&[(0, 2)]), &mut plain)
            .delivered,
        vec![d(0, 0, 2)]
    );
    assert_eq!(
        q.receive(&s, "w", 5, 710, &ends(&[(0, 2)]), &mut plain)
            .delivered,
        vec![d(0, 1, 2)]
    );
    // The second release of offset 0 waits backoff[1], and later ones the last entry.
    q.release(&s, d(0, 0, 2), 0, 800).unwrap();
    assert!(q
        .receive(&s, "w", 5, 1299, &ends(&[(0, 2)]), &mut plain)
        .delivered
        .is_empty());
}

#[test]
fn too_many_deliveries_and_rejects_are_dead_lettered() {
    let mut q = QueueState::default();
    let s = settings();
    let mut now = 0;
    for count in 1..=3 {
        let got = q.receive(&s, "w", 1, now, &ends(&[(0, 1)]), &mut plain);
        assert_eq!(got.delivered, vec![d(0, 0, count)]);
        now += 1000; // each lock runs out
    }
    let got = q.receive(&s, "w", 1, now, &ends(&[(0, 1)]), &mut plain);
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

    let got = q.receive(&s, "w", 1, now, &ends(&[(0, 2)]), &mut plain);
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
    q.receive(&s, "w1", 1, 0, &ends(&[(0, 1)]), &mut plain);
    assert_eq!(q.extend(&s, d(0, 0, 1), 900), Ok(1900));
    assert!(q
        .receive(&s, "w2", 1, 1500, &ends(&[(0, 1)]), &mut plain)
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
        q.receive(&s, "a", 2, 0, &ends(&[(0, 10)]), &mut plain)
            .delivered
            .len(),
        2
    );
    assert_eq!(
        q.receive(&s, "b", 2, 0, &ends(&[(0, 10)]), &mut plain)
            .delivered
            .len(),
        1
    );
    assert!(q
        .receive(&s, "c", 2, 0, &ends(&[(0, 10)]), &mut plain)
        .delivered
        .is_empty());
    q.ack(d(0, 1, 1)).unwrap();
    assert_eq!(
        q.receive(&s, "c", 2, 0, &ends(&[(0, 10)]), &mut plain)
            .delivered,
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
    q.receive(&s, "w", 1, 0, &ends(&[(0, 1)]), &mut plain);
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
    q.receive(&s, "w1", 2, 0, &ends(&[(0, 5)]), &mut plain);
    q.ack(d(0, 0, 1)).expect("ack");
    // Offsets 0 (done), 1 (locked) and 2 (never delivered) are deleted by retention.
    let p = q.partitions.get_mut(&0).expect("partition");
    assert_eq!(p.drop_below(3), 2);
    assert_eq!((p.floor, p.next), (3, 3));
    assert!(p.locked.is_empty());
    let got = q.receive(&s, "w1", 10, 1, &ends(&[(0, 5)]), &mut plain);
    assert_eq!(got.delivered, vec![d(0, 3, 1), d(0, 4, 1)]);
}

#[test]
fn readiness_follows_records_locks_and_delays() {
    let mut q = QueueState::default();
    let s = settings();
    assert!(!q.ready(&s, "w", 0, &ends(&[(0, 0)])));
    assert!(q.ready(&s, "w", 0, &ends(&[(0, 1)])));
    q.receive(&s, "w1", 1, 0, &ends(&[(0, 1)]), &mut plain);
    assert!(!q.ready(&s, "w", 10, &ends(&[(0, 1)])));
    assert_eq!(q.next_ready_ms(10), Some(1000));
    assert!(q.ready(&s, "w", 1000, &ends(&[(0, 1)])));
    q.release(&s, d(0, 0, 1), 50, 20).expect("release");
    assert!(!q.ready(&s, "w", 60, &ends(&[(0, 1)])));
    assert_eq!(q.next_ready_ms(60), Some(70));
    assert_eq!(q.waiting(60), (1, 1));
    assert!(q.ready(&s, "w", 70, &ends(&[(0, 1)])));
    let bounds = [(0, (0, 1))].into_iter().collect();
    assert_eq!(q.backlog(&bounds), 1);
    q.receive(&s, "w1", 1, 70, &ends(&[(0, 1)]), &mut plain);
    q.ack(d(0, 0, 2)).expect("ack");
    assert_eq!(q.backlog(&bounds), 0);
}

/// Facts from a table: offset → (key, not before); offsets not in it are plain.
fn table(rows: &[(u64, Option<u64>, i64)]) -> impl FnMut(u32, u64) -> RecordFacts + '_ {
    move |_, offset| {
        rows.iter()
            .find(|(o, _, _)| *o == offset)
            .map_or(RecordFacts::default(), |&(_, key, not_before_ms)| {
                RecordFacts { key, not_before_ms }
            })
    }
}

fn keyed() -> QueueSettings {
    QueueSettings {
        key_ordered: true,
        ..settings()
    }
}

#[test]
fn a_key_has_one_record_out_at_a_time_in_offset_order_and_other_keys_go_on() {
    let mut q = QueueState::default();
    let s = keyed();
    // Offsets 0, 2, 4 have key 7; 1 and 3 key 8; 5 no key.
    let rows = [
        (0, Some(7), 0),
        (1, Some(8), 0),
        (2, Some(7), 0),
        (3, Some(8), 0),
        (4, Some(7), 0),
    ];
    let got = q.receive(&s, "w", 10, 0, &ends(&[(0, 6)]), &mut table(&rows));
    assert_eq!(got.delivered, vec![d(0, 0, 1), d(0, 1, 1), d(0, 5, 1)]);
    assert_eq!(q.held(), 3);
    // Key 7's first record released: key 7 stays busy with it, nothing else of 7 goes out.
    q.release(&s, d(0, 0, 1), 0, 10).unwrap();
    let got = q.receive(&s, "w", 10, 110, &ends(&[(0, 6)]), &mut table(&rows));
    assert_eq!(got.delivered, vec![d(0, 0, 2)]);
    // Key 8's first acked: its next (3) is ready; key 7 is still held behind offset 0.
    assert_eq!(q.ack(d(0, 1, 1)), Ok(true));
    let got = q.receive(&s, "w", 10, 120, &ends(&[(0, 6)]), &mut table(&rows));
    assert_eq!(got.delivered, vec![d(0, 3, 1)]);
    // Offset 0 rejected: 2 next, then 4 only after 2 is done.
    q.reject(d(0, 0, 2)).unwrap();
    let got = q.receive(&s, "w", 10, 130, &ends(&[(0, 6)]), &mut table(&rows));
    assert_eq!(got.delivered, vec![d(0, 2, 1)]);
    q.ack(d(0, 2, 1)).unwrap();
    let got = q.receive(&s, "w", 10, 140, &ends(&[(0, 6)]), &mut table(&rows));
    assert_eq!(got.delivered, vec![d(0, 4, 1)]);
    assert_eq!(q.held(), 0);
}

#[test]
fn an_expired_lock_keeps_its_key_busy_and_a_dead_letter_frees_it() {
    let mut q = QueueState::default();
    let s = QueueSettings {
        max_deliveries: 1,
        ..keyed()
    };
    let rows = [(0, Some(1), 0), (1, Some(1), 0)];
    q.receive(&s, "w", 10, 0, &ends(&[(0, 2)]), &mut table(&rows));
    // The lock runs out: offset 0 is dead-lettered (max 1 delivery), then 1 goes out.
    let got = q.receive(&s, "w", 10, 1000, &ends(&[(0, 2)]), &mut table(&rows));
    assert_eq!(got.dead_lettered.len(), 1);
    assert!(got.delivered.is_empty());
    let got = q.receive(&s, "w", 10, 1001, &ends(&[(0, 2)]), &mut table(&rows));
    assert_eq!(got.delivered, vec![d(0, 1, 1)]);
}

#[test]
fn a_delayed_record_waits_for_its_time_with_count_zero_and_cannot_be_acked_early() {
    let mut q = QueueState::default();
    let s = settings();
    let rows = [(0, None, 500)];
    let got = q.receive(&s, "w", 10, 0, &ends(&[(0, 2)]), &mut table(&rows));
    assert_eq!(got.delivered, vec![d(0, 1, 1)]);
    assert_eq!(q.waiting(0), (1, 1));
    assert!(!q.ready(&s, "w", 499, &ends(&[(0, 2)])));
    assert_eq!(q.next_ready_ms(0), Some(500));
    // Nobody can settle a record never handed out.
    assert_eq!(
        q.ack(d(0, 0, 0)),
        Err(QueueError::UnknownDelivery(d(0, 0, 0)))
    );
    assert!(q.release(&s, d(0, 0, 0), 0, 1).is_err());
    let got = q.receive(&s, "w", 10, 499, &ends(&[(0, 2)]), &mut table(&rows));
    assert!(got.delivered.is_empty());
    let got = q.receive(&s, "w", 10, 500, &ends(&[(0, 2)]), &mut table(&rows));
    assert_eq!(got.delivered, vec![d(0, 0, 1)]);
}

#[test]
fn a_delayed_record_holds_back_the_later_records_of_its_key() {
    let mut q = QueueState::default();
    let s = keyed();
    let rows = [(0, Some(3), 500), (1, Some(3), 0), (2, Some(4), 0)];
    let got = q.receive(&s, "w", 10, 0, &ends(&[(0, 3)]), &mut table(&rows));
    assert_eq!(got.delivered, vec![d(0, 2, 1)]);
    let got = q.receive(&s, "w", 10, 500, &ends(&[(0, 3)]), &mut table(&rows));
    assert_eq!(got.delivered, vec![d(0, 0, 1)]);
    q.ack(d(0, 0, 1)).unwrap();
    let got = q.receive(&s, "w", 10, 501, &ends(&[(0, 3)]), &mut table(&rows));
    assert_eq!(got.delivered, vec![d(0, 1, 1)]);
}

#[test]
fn a_worker_gets_no_more_than_its_own_cap() {
    let mut q = QueueState::default();
    let s = QueueSettings {
        worker_in_flight_max: 2,
        ..settings()
    };
    let got = q.receive(&s, "a", 10, 0, &ends(&[(0, 5)]), &mut plain);
    assert_eq!(got.delivered.len(), 2);
    assert!(!q.ready(&s, "a", 1, &ends(&[(0, 5)])));
    assert!(q.ready(&s, "b", 1, &ends(&[(0, 5)])));
    assert_eq!(
        q.receive(&s, "b", 10, 1, &ends(&[(0, 5)]), &mut plain)
            .delivered
            .len(),
        2
    );
    q.ack(d(0, 0, 1)).unwrap();
    assert_eq!(
        q.receive(&s, "a", 10, 2, &ends(&[(0, 5)]), &mut plain)
            .delivered,
        vec![d(0, 4, 1)]
    );
}

#[test]
fn a_full_lookahead_stops_taking_new_records_of_that_partition_only() {
    let mut q = QueueState::default();
    let s = QueueSettings {
        lookahead_max: 2,
        ..keyed()
    };
    // Partition 0: one key throughout; partition 1: unkeyed.
    let mut facts = |partition: u32, _| RecordFacts {
        key: (partition == 0).then_some(9),
        not_before_ms: 0,
    };
    let e = ends(&[(0, 10), (1, 3)]);
    let got = q.receive(&s, "w", 100, 0, &e, &mut facts);
    // Partition 0: offset 0 out, 1 and 2 held, then the lookahead is full.
    assert_eq!(
        got.delivered,
        vec![d(0, 0, 1), d(1, 0, 1), d(1, 1, 1), d(1, 2, 1)]
    );
    assert_eq!(q.partitions[&0].next, 3);
    assert!(!q.ready(&s, "w", 1, &e));
    q.ack(d(0, 0, 1)).unwrap();
    assert!(q.ready(&s, "w", 1, &e));
    let got = q.receive(&s, "w", 100, 1, &e, &mut facts);
    assert_eq!(got.delivered, vec![d(0, 1, 1)]);
    assert_eq!(q.partitions[&0].next, 4);
}

#[test]
fn records_retention_deletes_free_their_keys_and_leave_the_held_ones() {
    let mut q = QueueState::default();
    let s = keyed();
    let rows = [(0, Some(1), 0), (1, Some(1), 0), (2, Some(1), 0)];
    q.receive(&s, "w", 10, 0, &ends(&[(0, 3)]), &mut table(&rows));
    assert_eq!(q.held(), 2);
    let gone = q.partitions.get_mut(&0).unwrap().drop_below(2);
    assert_eq!(gone, 2);
    let got = q.receive(&s, "w", 10, 1, &ends(&[(0, 3)]), &mut table(&rows));
    assert_eq!(got.delivered, vec![d(0, 2, 1)]);
}

#[test]
fn a_late_ack_of_a_dead_lettered_record_is_refused_and_of_an_acked_one_accepted() {
    let mut q = QueueState::default();
    let s = settings();
    q.receive(&s, "a", 2, 0, &ends(&[(0, 2)]), &mut plain);
    // 0's lock runs out; its second delivery is rejected; then the first worker's late ack.
    let got = q.receive(&s, "b", 1, 1000, &ends(&[(0, 2)]), &mut plain);
    assert!(got.delivered.contains(&d(0, 0, 2)));
    q.reject(d(0, 0, 2)).unwrap();
    assert_eq!(q.ack(d(0, 0, 1)), Err(QueueError::AlreadyDone(d(0, 0, 1))));
    assert_eq!(q.ack(d(0, 0, 2)), Err(QueueError::AlreadyDone(d(0, 0, 2))));
    // 1 acked after its lock ran out, not yet delivered again (the floor moves past both): a
    // repeated ack of it is fine.
    assert_eq!(q.ack(d(0, 1, 1)), Ok(true));
    assert_eq!(q.partitions[&0].floor, 2);
    assert_eq!(q.ack(d(0, 1, 1)), Ok(false));
    assert_eq!(q.ack(d(0, 0, 1)), Err(QueueError::AlreadyDone(d(0, 0, 1))));
}

#[test]
fn available_counts_new_records_due_waits_and_run_out_locks_up_to_the_limit() {
    let mut q = QueueState::default();
    let s = settings();
    let e = ends(&[(0, 4), (1, 3)]);
    assert_eq!(q.available(&s, 0, &e, 100), 7);
    assert_eq!(q.available(&s, 0, &e, 5), 5);
    let got = q.receive(&s, "w", 4, 0, &e, &mut plain);
    assert_eq!(got.delivered.len(), 4);
    // Three never looked at; the four locked are not available while their locks run.
    assert_eq!(q.available(&s, 10, &e, 100), 3);
    // A release with a delay: available once the delay is over.
    q.release(&s, got.delivered[0], 40, 10).unwrap();
    assert_eq!(q.available(&s, 20, &e, 100), 3);
    assert_eq!(q.available(&s, 60, &e, 100), 4);
    // Locks that ran out count too.
    assert_eq!(q.available(&s, 1000, &e, 100), 7);
}
