//! The admin HTTP server: `/healthz` (the process is alive), `/readyz` (knows a leader and has
//! applied everything it knows committed), `/status` (Raft metrics as JSON) and `/metrics`
//! (Prometheus text format, see [`crate::metrics`]).

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
    let metrics = ctx.raft.metrics().borrow_watched().clone();
    Json(serde_json::to_value(&metrics).unwrap_or_default())
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
