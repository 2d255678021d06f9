//! The admin HTTP server: `/healthz` (the process is alive), `/readyz` (knows a leader and has
//! applied everything it knows committed), `/status` (this node's view of the cluster as JSON,
//! the Cluster.Status answer; docs/operations.md has the fields) and `/metrics` (Prometheus text
//! format, see [`crate::metrics`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use openraft::async_runtime::watch::WatchReceiver;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::node::NodeContext;

pub async fn serve(listener: TcpListener, ctx: NodeContext, mut stop: watch::Receiver<bool>) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
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

async fn readyz(State(ctx): State<NodeContext>) -> (StatusCode, String) {
    let committed = ctx
        .raft
        .with_raft_state(|s| s.local_committed().map(|l| l.index))
        .await
        .ok()
        .flatten();
    let metrics = ctx.raft.metrics().borrow_watched().clone();
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
    let status = crate::api::cluster::ClusterService::new(ctx)
        .node_status()
        .await;
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
        crate::metrics::render(&ctx).await,
    )
}
