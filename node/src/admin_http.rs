//! The admin HTTP server: `/healthz` (the process is alive), `/readyz` (knows a leader and has
//! applied everything it knows committed), `/status` (this node's view of the cluster as JSON,
//! the Cluster.Status answer; docs/operations.md has the fields) and `/metrics` (Prometheus text
//! format, see [`crate::metrics`]). With `admin_token_required`, `/status` and `/metrics` need a
//! bearer token allowed to describe the cluster; the health probes stay open.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use openraft::async_runtime::watch::WatchReceiver;
use std::fmt::Write;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::broker::queues::queue_info;
use crate::node::NodeContext;
use raftlog_core::coordination::Coordination;
use raftlog_core::group_lag;
use raftlog_proto::v1::QueueInfo;

pub async fn serve(listener: TcpListener, ctx: NodeContext, mut stop: watch::Receiver<bool>) {
    let protected = Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            require_token,
        ));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(protected)
        .with_state(ctx);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!("admin HTTP server failed: {e}");
    }
}

/// With `admin_token_required`, `/status` and `/metrics` answer only a bearer token whose
/// principal may describe the cluster: 401 without a valid token, 403 without the permission.
/// The probes stay open: a load balancer or kubelet has no token.
async fn require_token(
    State(ctx): State<NodeContext>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use raftlog_core::auth::{Operation, ResourceType, CLUSTER_RESOURCE};
    if !ctx.config.auth.admin_token_required {
        return next.run(request).await;
    }
    let path = request.uri().path().to_string();
    let caller = if request
        .headers()
        .contains_key(axum::http::header::AUTHORIZATION)
    {
        // Tokens only: this port has no TLS, so no client certificate, and no node vouches.
        ctx.auth
            .authenticate(request.headers(), &axum::http::Extensions::new())
    } else {
        Err(crate::auth::Unauthenticated {
            reason: "no_credentials",
            message: "send `Authorization: Bearer <token>` (admin_token_required)".into(),
        })
    };
    let caller = match caller {
        Ok(caller) => caller,
        Err(failure) => {
            let status = crate::auth::unauthenticated(failure, &path, None);
            return (StatusCode::UNAUTHORIZED, format!("{}\n", status.message())).into_response();
        }
    };
    match ctx.auth.check(
        &caller,
        ResourceType::Cluster,
        CLUSTER_RESOURCE,
        Operation::Describe,
        &path,
        None,
    ) {
        Ok(()) => next.run(request).await,
        Err(status) => (StatusCode::FORBIDDEN, format!("{}\n", status.message())).into_response(),
    }
}

async fn readyz(State(ctx): State<NodeContext>) -> (StatusCode, String) {
    let committed = ctx
        .metadata()
        .raft
        .with_raft_state(|s| s.local_committed().map(|l| l.index))
        .await
        .ok()
        .flatten();
    let metrics = ctx.metadata().raft.metrics().borrow_watched().clone();
    let applied = metrics.last_applied.map(|l| l.index);
    match metrics.current_leader {
        None => (StatusCode::SERVICE_UNAVAILABLE, "no leader known\n".into()),
        Some(_) if applied < committed => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("applying: {applied:?} of {committed:?} committed\n"),
        ),
        Some(leader) => (StatusCode::OK, format!("ready; leader {leader}\n")),
    }
}

async fn status(State(ctx): State<NodeContext>) -> Json<serde_json::Value> {
    let status = crate::api::cluster::node_status(&ctx).await;
    Json(status_json(&status))
}

/// The fields of Cluster.Status, as `/status` serves them: ids as numbers, a role as a word, an
/// unknown leader as `null`.
fn status_json(s: &raftlog_proto::v1::NodeStatus) -> serde_json::Value {
    use raftlog_proto::v1::Role;
    let role = match Role::try_from(s.role).unwrap_or(Role::Unspecified) {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::Learner => "learner",
        Role::Shutdown => "shutdown",
        Role::Unspecified => "unknown",
    };
    let members = |members: &[raftlog_proto::v1::Member]| {
        members
            .iter()
            .map(|m| serde_json::json!({"id": m.node_id, "addr": m.addr}))
            .collect::<Vec<_>>()
    };
    serde_json::json!({
        "node_id": s.node_id,
        "addr": s.addr,
        "group_id": s.group_id,
        "role": role,
        "term": s.term,
        "leader_id": s.has_leader.then_some(s.leader_id),
        "leader_addr": s.has_leader.then_some(&s.leader_addr),
        "last_log_index": s.last_log_index,
        "committed_index": s.committed_index,
        "applied_index": s.applied_index,
        "snapshot_index": s.snapshot_index,
        "purged_index": s.purged_index,
        "voters": members(&s.voters),
        "learners": members(&s.learners),
        "replication": s.replication.iter()
            .map(|(id, index)| (id.to_string(), *index))
            .collect::<std::collections::BTreeMap<_, _>>(),
    })
}

async fn metrics(
    State(ctx): State<NodeContext>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        render(&ctx).await,
    )
}

/// Everything `/metrics` serves: the recorded metrics, then the node's state.
pub async fn render(ctx: &NodeContext) -> String {
    let handle = crate::metrics::install();
    handle.run_upkeep();
    let mut out = handle.render();
    render_state(ctx, &mut out).await;
    out
}

fn gauge(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

/// The node's state as gauges: its Raft group's role and indices, then partitions and groups.
async fn render_state(ctx: &NodeContext, out: &mut String) {
    render_raft(ctx, out).await;
    render_partitions_and_groups(ctx, out);
}

/// Role, term, log indices and (on the leader) each follower's lag.
async fn render_raft(ctx: &NodeContext, out: &mut String) {
    let m = ctx.metadata().raft.metrics().borrow_watched().clone();
    let node = ctx.id;
    let is_leader = m.current_leader == Some(node);
    gauge(
        out,
        "raftlog_raft_is_leader",
        "1 on the Raft leader, else 0",
    );
    let _ = writeln!(
        out,
        "raftlog_raft_is_leader{{node=\"{node}\"}} {}",
        u8::from(is_leader)
    );
    gauge(
        out,
        "raftlog_raft_has_leader",
        "1 when this node knows a leader",
    );
    let _ = writeln!(
        out,
        "raftlog_raft_has_leader{{node=\"{node}\"}} {}",
        u8::from(m.current_leader.is_some())
    );
    gauge(
        out,
        "raftlog_raft_leader_id",
        "node id of the leader this node knows (0: none)",
    );
    let _ = writeln!(
        out,
        "raftlog_raft_leader_id{{node=\"{node}\"}} {}",
        m.current_leader.unwrap_or(0)
    );
    gauge(out, "raftlog_raft_term", "current Raft term");
    let _ = writeln!(
        out,
        "raftlog_raft_term{{node=\"{node}\"}} {}",
        m.current_term
    );
    render_indices(ctx, &m, out).await;
    render_replication_lag(&m, node, out);
}

/// The log's indices on this node: last written, committed, applied, snapshot, purged.
async fn render_indices(ctx: &NodeContext, m: &raftlog_core::types::RaftMetrics, out: &mut String) {
    let node = ctx.id;
    let index = |l: Option<raftlog_core::types::LogId>| l.map_or(0, |l| l.index);
    let committed = ctx
        .metadata()
        .raft
        .with_raft_state(|s| s.local_committed().map(|l| l.index))
        .await
        .ok()
        .flatten()
        .unwrap_or(0);
    for (name, help, value) in [
        (
            "raftlog_raft_last_log_index",
            "last log index written here",
            m.last_log_index.unwrap_or(0),
        ),
        (
            "raftlog_raft_committed_index",
            "last index known committed",
            committed,
        ),
        (
            "raftlog_raft_applied_index",
            "last index applied to the state machine",
            index(m.last_applied),
        ),
        (
            "raftlog_raft_snapshot_index",
            "last index covered by the snapshot",
            index(m.snapshot),
        ),
        (
            "raftlog_raft_purged_index",
            "last log index purged",
            index(m.purged),
        ),
    ] {
        gauge(out, name, help);
        let _ = writeln!(out, "{name}{{node=\"{node}\"}} {value}");
    }
}

/// Leader only: how many entries each follower is behind the leader's last log index.
fn render_replication_lag(m: &raftlog_core::types::RaftMetrics, node: u64, out: &mut String) {
    let index = |l: Option<raftlog_core::types::LogId>| l.map_or(0, |l| l.index);
    if let Some(replication) = &m.replication {
        gauge(
            out,
            "raftlog_raft_replication_lag_entries",
            "leader only: entries a follower is behind the leader's last log index",
        );
        let last = m.last_log_index.unwrap_or(0);
        for (follower, matched) in replication.iter().filter(|(id, _)| **id != node) {
            let lag = last.saturating_sub(index(*matched));
            let _ = writeln!(
                out,
                "raftlog_raft_replication_lag_entries{{node=\"{node}\",follower=\"{follower}\"}} {lag}"
            );
        }
    }
}

/// Each partition's start and end offset, and each consumer group's lag per partition.
fn render_partitions_and_groups(ctx: &NodeContext, out: &mut String) {
    let topics = ctx.metadata().view.topics();
    gauge(
        out,
        "raftlog_partition_end_offset",
        "next offset to be written, per partition",
    );
    for t in &topics {
        for (p, part) in t.partitions.iter().enumerate() {
            let _ = writeln!(
                out,
                "raftlog_partition_end_offset{{topic=\"{}\",partition=\"{p}\"}} {}",
                t.name, part.end_offset
            );
        }
    }
    gauge(
        out,
        "raftlog_partition_start_offset",
        "first retained offset, per partition",
    );
    for t in &topics {
        for (p, part) in t.partitions.iter().enumerate() {
            let _ = writeln!(
                out,
                "raftlog_partition_start_offset{{topic=\"{}\",partition=\"{p}\"}} {}",
                t.name, part.start_offset
            );
        }
    }
    gauge(
        out,
        "raftlog_group_lag",
        "records committed but not yet consumed by a group: end offset - committed offset",
    );
    for (group, offsets) in ctx.metadata().view.groups() {
        for p in group_lag(&offsets, &topics) {
            let _ = writeln!(
                out,
                "raftlog_group_lag{{group=\"{group}\",topic=\"{}\",partition=\"{}\"}} {}",
                p.topic, p.partition, p.lag
            );
        }
    }
    render_coordinated_groups(ctx, out);
    render_queues(ctx, out);
}

/// A per-queue gauge: its name, its help text and how to read it off the queue's description.
type QueueGauge = (&'static str, &'static str, fn(&QueueInfo) -> u64);

/// The per-queue series, in the order they are rendered.
const QUEUE_SERIES: [QueueGauge; 14] = [
    (
        "raftlog_queue_backlog",
        "records of a queue not finished (never delivered, waiting or locked)",
        |q| q.backlog,
    ),
    (
        "raftlog_queue_ready",
        "records of a queue a receive could hand out now (not locked, delayed or held)",
        |q| q.ready,
    ),
    (
        "raftlog_queue_in_flight",
        "records of a queue locked by workers",
        |q| q.in_flight,
    ),
    (
        "raftlog_queue_waiting",
        "records of a queue waiting to be delivered again",
        |q| q.waiting,
    ),
    (
        "raftlog_queue_delayed",
        "waiting records whose delay has not ended",
        |q| q.delayed,
    ),
    (
        "raftlog_queue_held",
        "records of a key-ordered queue held behind an earlier record of their key",
        |q| q.held,
    ),
    (
        "raftlog_queue_full",
        "1 while a queue's in-flight cap is reached (receives wait)",
        |q| u64::from(q.full),
    ),
    (
        "raftlog_queue_oldest_lock_age_seconds",
        "age of the oldest lock of a queue (since its last delivery or extend)",
        |q| q.oldest_unacked_age_ms / 1000,
    ),
    (
        "raftlog_queue_delivered_total",
        "deliveries of a queue (a counter)",
        |q| q.delivered,
    ),
    (
        "raftlog_queue_redelivered_total",
        "deliveries of a queue after the first of their record (a counter)",
        |q| q.redelivered,
    ),
    (
        "raftlog_queue_acked_total",
        "records of a queue acked (a counter)",
        |q| q.acked,
    ),
    (
        "raftlog_queue_dead_lettered_total",
        "records of a queue dead-lettered (a counter)",
        |q| q.dead_lettered,
    ),
    (
        "raftlog_queue_redriven_total",
        "dead letters of a queue appended to its topic again by redrive (a counter)",
        |q| q.redriven,
    ),
    (
        "raftlog_queue_lock_timeouts_total",
        "locks of a queue that ran out (a counter)",
        |q| q.lock_timeouts,
    ),
];

/// Each queue's backlog, records in flight and waiting, the age of its oldest lock, and what
/// it has done (counters), as this node's applied state has them.
fn render_queues(ctx: &NodeContext, out: &mut String) {
    let view = &ctx.metadata().view;
    let queues: Vec<QueueInfo> = view
        .queues()
        .iter()
        .map(|(name, queue)| queue_info(name, queue, view))
        .collect();
    for (name, help, value) in QUEUE_SERIES {
        gauge(out, name, help);
        for q in &queues {
            let _ = writeln!(out, "{name}{{queue=\"{}\"}} {}", q.queue, value(q));
        }
    }
}

/// A per-group gauge: its name, its help text and how to read it off the group.
type GroupGauge = (&'static str, &'static str, fn(&Coordination) -> u64);

/// Each coordinated group's members, target assignments computed and partitions nobody owns.
fn render_coordinated_groups(ctx: &NodeContext, out: &mut String) {
    let groups = ctx.metadata().view.coordinations();
    let series: [GroupGauge; 3] = [
        (
            "raftlog_group_members",
            "members of a coordinated consumer group",
            |c| c.members.len() as u64,
        ),
        (
            "raftlog_group_rebalances",
            "target assignments a coordinated group has computed (a counter)",
            |c| c.rebalances,
        ),
        (
            "raftlog_group_partitions_unassigned",
            "partitions of a coordinated group's subscription that no member owns",
            |c| {
                let subscribed: u64 = c.topics_seen.values().map(|(_, n)| u64::from(*n)).sum();
                let owned: usize = c
                    .members
                    .values()
                    .map(|m| m.assigned.len() + m.revoking.len())
                    .sum();
                subscribed.saturating_sub(owned as u64)
            },
        ),
    ];
    for (name, help, value) in series {
        gauge(out, name, help);
        for (group, c) in &groups {
            let _ = writeln!(out, "{name}{{group=\"{group}\"}} {}", value(c));
        }
    }
}
