use super::*;

fn topics(list: &[(&str, u64, u32)]) -> Topics {
    list.iter()
        .map(|(name, id, parts)| (name.to_string(), (*id, *parts)))
        .collect()
}

fn stamp(id: &str) -> Stamp {
    Stamp {
        now_ms: 1,
        new_member_id: id.to_string(),
        members_max: 100,
        subscription_topics_max: 10,
        session_timeout_ms: 10_000,
        assignor: Assignor::Uniform,
    }
}

/// A well-behaved client: it holds what it was told, releases at once what it was not.
#[derive(Default)]
struct Client {
    id: String,
    epoch: u64,
    held: BTreeSet<TopicPartition>,
}

impl Client {
    fn beat(&mut self, group: &mut Coordination, topics: &Topics, subscribe: Option<&[&str]>) {
        let hb = Heartbeat {
            member_id: self.id.clone(),
            member_epoch: if self.id.is_empty() {
                0
            } else {
                self.epoch as i64
            },
            instance_id: None,
            subscription: subscribe.map(|s| s.iter().map(|t| t.to_string()).collect()),
            owned: Some(self.held.clone()),
            client_id: "c".into(),
            client_host: "h".into(),
        };
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1000);
        let new_id = format!(
            "m{}",
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let answer = group
            .heartbeat(&hb, &stamp(&new_id), topics)
            .expect("heartbeat");
        self.id = answer.member_id;
        self.epoch = answer.member_epoch;
        // Drops what it no longer owns, takes what it was given.
        self.held = answer.assigned;
    }
}

/// The owned sets of two members never meet.
fn assert_disjoint(group: &Coordination) {
    let mut seen = BTreeMap::new();
    for (id, m) in &group.members {
        for p in m.assigned.iter().chain(m.revoking.iter()) {
            if let Some(other) = seen.insert(*p, id.clone()) {
                panic!("{p:?} owned by {other} and {id}: {group:#?}");
            }
        }
    }
}

/// Every partition of the subscription is assigned to exactly one member, counts within one.
fn assert_converged(group: &Coordination, partitions: usize) {
    let assigned: Vec<usize> = group.members.values().map(|m| m.assigned.len()).collect();
    assert_eq!(assigned.iter().sum::<usize>(), partitions, "{group:#?}");
    let (min, max) = (
        assigned.iter().min().unwrap(),
        assigned.iter().max().unwrap(),
    );
    assert!(max - min <= 1, "unbalanced {assigned:?}");
    assert!(group.members.values().all(|m| m.revoking.is_empty()));
}

fn settle(group: &mut Coordination, topics: &Topics, clients: &mut [Client]) {
    for _ in 0..4 {
        for c in clients.iter_mut() {
            c.beat(group, topics, None);
            assert_disjoint(group);
        }
    }
}

#[test]
fn a_second_member_gets_half_only_after_the_first_released_it() {
    let t = topics(&[("orders", 7, 12)]);
    let mut g = Coordination::default();
    let mut a = Client::default();
    a.beat(&mut g, &t, Some(&["orders"]));
    assert_eq!(a.held.len(), 12);
    let mut b = Client::default();
    b.beat(&mut g, &t, Some(&["orders"]));
    assert!(b.held.is_empty(), "all still owned by a");
    assert_disjoint(&g);
    // a learns it must give up six; until it reports them released, b gets none.
    let before = a.held.clone();
    a.beat(&mut g, &t, None);
    assert_eq!(a.held.len(), 6);
    assert_eq!(
        g.members[&a.id].revoking.len(),
        6,
        "released only once reported"
    );
    b.beat(&mut g, &t, None);
    assert!(b.held.is_empty());
    a.beat(&mut g, &t, None); // reports them released
    b.beat(&mut g, &t, None);
    assert_eq!(b.held.len(), 6);
    assert!(a.held.is_disjoint(&b.held));
    assert!(before.is_superset(&b.held));
    assert_converged(&g, 12);
}

#[test]
fn one_to_four_to_two_members_stay_disjoint_balanced_and_sticky() {
    let t = topics(&[("orders", 7, 12)]);
    let mut g = Coordination::default();
    let mut clients: Vec<Client> = (0..4).map(|_| Client::default()).collect();
    clients[0].beat(&mut g, &t, Some(&["orders"]));
    settle(&mut g, &t, &mut clients[..1]);
    assert_converged(&g, 12);
    for c in clients[1..].iter_mut() {
        c.beat(&mut g, &t, Some(&["orders"]));
    }
    let before: Vec<_> = clients.iter().map(|c| c.held.clone()).collect();
    settle(&mut g, &t, &mut clients);
    assert_converged(&g, 12);
    // Sticky: the first member kept 3 of its own, nothing else moved between the newcomers.
    assert!(before[0].is_superset(&clients[0].held));
    // Two leave: the rest take their partitions.
    let leaving: Vec<String> = clients[2..].iter().map(|c| c.id.clone()).collect();
    let kept: Vec<_> = clients[..2].iter().map(|c| c.held.clone()).collect();
    for id in leaving {
        assert!(g.remove(&id));
    }
    settle(&mut g, &t, &mut clients[..2]);
    assert_converged(&g, 12);
    assert!(clients[0].held.is_superset(&kept[0]));
    assert!(clients[1].held.is_superset(&kept[1]));
}

#[test]
fn an_expired_members_partitions_move_at_once_even_those_it_was_releasing() {
    let t = topics(&[("orders", 7, 4)]);
    let mut g = Coordination::default();
    let mut clients: Vec<Client> = (0..2).map(|_| Client::default()).collect();
    for c in clients.iter_mut() {
        c.beat(&mut g, &t, Some(&["orders"]));
    }
    settle(&mut g, &t, &mut clients);
    let dead = clients[0].id.clone();
    let epoch = g.members[&dead].epoch;
    assert!(
        !g.expire(&dead, epoch + 1),
        "another incarnation is left alone"
    );
    assert!(g.expire(&dead, epoch));
    settle(&mut g, &t, &mut clients[1..]);
    assert_converged(&g, 4);
}

#[test]
fn a_static_member_rejoining_keeps_its_partitions_and_nothing_moves() {
    let t = topics(&[("orders", 7, 6)]);
    let mut g = Coordination::default();
    let join = |instance: &str| Heartbeat {
        member_id: String::new(),
        member_epoch: 0,
        instance_id: Some(instance.into()),
        subscription: Some(vec!["orders".into()]),
        owned: Some(BTreeSet::new()),
        client_id: "c".into(),
        client_host: "h".into(),
    };
    let a = g.heartbeat(&join("a"), &stamp("m1"), &t).unwrap();
    let b = g.heartbeat(&join("b"), &stamp("m2"), &t).unwrap();
    let mut ca = Client {
        id: a.member_id,
        epoch: a.member_epoch,
        held: a.assigned,
    };
    let mut cb = Client {
        id: b.member_id,
        epoch: b.member_epoch,
        held: b.assigned,
    };
    let mut clients = [ca, cb];
    settle(&mut g, &t, &mut clients);
    [ca, cb] = clients;
    let epoch = g.epoch;
    // b restarts: same instance id, new member id, same partitions.
    let again = g.heartbeat(&join("b"), &stamp("m3"), &t).unwrap();
    assert_eq!(again.assigned, cb.held);
    assert_eq!(g.epoch, epoch, "no rebalance");
    assert!(!g.members.contains_key("m2"));
    let err = g
        .heartbeat(
            &Heartbeat {
                member_id: "m2".into(),
                member_epoch: 1,
                ..join("b")
            },
            &stamp("x"),
            &t,
        )
        .unwrap_err();
    assert_eq!(err, GroupError::UnknownMember("m2".into()));
    ca.beat(&mut g, &t, None);
    assert_disjoint(&g);
}

#[test]
fn range_gives_contiguous_ranges_in_member_order() {
    let t = topics(&[("a", 1, 5), ("b", 2, 2)]);
    let mut g = Coordination::default();
    let mut s = stamp("m1");
    s.assignor = Assignor::Range;
    let hb = |sub: &[&str]| Heartbeat {
        member_id: String::new(),
        member_epoch: 0,
        instance_id: None,
        subscription: Some(sub.iter().map(|x| x.to_string()).collect()),
        owned: None,
        client_id: String::new(),
        client_host: String::new(),
    };
    g.heartbeat(&hb(&["a", "b"]), &s, &t).unwrap();
    s.new_member_id = "m2".into();
    g.heartbeat(&hb(&["a"]), &s, &t).unwrap();
    assert_eq!(g.assignor, Assignor::Range);
    let t1: Vec<_> = g.target["m1"].iter().copied().collect();
    let t2: Vec<_> = g.target["m2"].iter().copied().collect();
    assert_eq!(t1, [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]);
    assert_eq!(t2, [(1, 3), (1, 4)]);
}

#[test]
fn commits_are_fenced_by_ownership() {
    let t = topics(&[("orders", 7, 2)]);
    let mut g = Coordination::default();
    assert_eq!(g.check_commit(None, [(7, 0)]), Ok(()), "a simple group");
    let mut a = Client::default();
    a.beat(&mut g, &t, Some(&["orders"]));
    assert!(matches!(
        g.check_commit(None, [(7, 0)]),
        Err(GroupError::CoordinatedGroup { members: 1 })
    ));
    assert_eq!(
        g.check_commit(Some((&a.id, a.epoch as i64)), [(7, 0), (7, 1)]),
        Ok(())
    );
    let mut b = Client::default();
    b.beat(&mut g, &t, Some(&["orders"]));
    assert!(matches!(
        g.check_commit(Some((&b.id, b.epoch as i64)), [(7, 0)]),
        Err(GroupError::NotOwner { .. })
    ));
    assert!(matches!(
        g.check_commit(Some(("nobody", 1)), [(7, 0)]),
        Err(GroupError::UnknownMember(_))
    ));
    assert!(matches!(
        g.check_commit(Some((&a.id, a.epoch as i64 + 5)), [(7, 0)]),
        Err(GroupError::FencedEpoch { .. })
    ));
}

#[test]
fn an_idle_converged_heartbeat_changes_nothing_but_waiting_partitions_do() {
    let t = topics(&[("orders", 7, 4)]);
    let mut g = Coordination::default();
    let mut clients: Vec<Client> = (0..2).map(|_| Client::default()).collect();
    clients[0].beat(&mut g, &t, Some(&["orders"]));
    clients[1].beat(&mut g, &t, Some(&["orders"]));
    clients[0].beat(&mut g, &t, None); // told to give up two
    let idle = |c: &Client| Heartbeat {
        member_id: c.id.clone(),
        member_epoch: c.epoch as i64,
        instance_id: None,
        subscription: None,
        owned: Some(c.held.clone()),
        client_id: "c".into(),
        client_host: "h".into(),
    };
    // b is waiting for a's release: its heartbeat changes nothing yet.
    assert!(!g.heartbeat_changes(&idle(&clients[1]), &stamp("x"), &t));
    // a's heartbeat reports the release: that goes through the log.
    assert!(g.heartbeat_changes(&idle(&clients[0]), &stamp("x"), &t));
    clients[0].beat(&mut g, &t, None);
    // Now b has partitions waiting.
    assert!(g.heartbeat_changes(&idle(&clients[1]), &stamp("x"), &t));
    clients[1].beat(&mut g, &t, None);
    for c in &clients {
        assert!(!g.heartbeat_changes(&idle(c), &stamp("x"), &t));
    }
    assert_converged(&g, 4);
}

#[test]
fn a_deleted_topics_partitions_leave_every_member() {
    let mut t = topics(&[("a", 1, 2), ("b", 2, 2)]);
    let mut g = Coordination::default();
    let mut c = Client::default();
    c.beat(&mut g, &t, Some(&["a", "b"]));
    assert_eq!(c.held.len(), 4);
    t.remove("b");
    c.beat(&mut g, &t, None);
    assert_eq!(c.held, [(1, 0), (1, 1)].into_iter().collect());
    // Re-created under a new id: assigned again.
    t.insert("b".into(), (3, 1));
    c.beat(&mut g, &t, None);
    assert!(c.held.contains(&(3, 0)));
}

/// Random joins, leaves, expiries and heartbeats of well-behaved clients: the owned sets never
/// meet, and once everyone has heartbeated a few times all partitions are placed and balanced.
#[test]
fn random_membership_changes_keep_ownership_disjoint_and_converge() {
    let t = topics(&[("x", 1, 7), ("y", 2, 5)]);
    let mut seed = 42u64;
    let mut rand = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for _ in 0..50 {
        let mut g = Coordination::default();
        let mut clients: Vec<Client> = Vec::new();
        for _ in 0..200 {
            match rand(10) {
                0 | 1 if clients.len() < 6 => {
                    let mut c = Client::default();
                    c.beat(&mut g, &t, Some(&["x", "y"]));
                    clients.push(c);
                }
                2 if !clients.is_empty() => {
                    let c = clients.remove(rand(clients.len() as u64) as usize);
                    let epoch = g.members[&c.id].epoch;
                    assert!(g.expire(&c.id, epoch));
                }
                _ if !clients.is_empty() => {
                    let i = rand(clients.len() as u64) as usize;
                    clients[i].beat(&mut g, &t, None);
                }
                _ => {}
            }
            assert_disjoint(&g);
        }
        if !clients.is_empty() {
            settle(&mut g, &t, &mut clients);
            assert_converged(&g, 12);
        }
    }
}
