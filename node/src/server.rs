//! Assembles a node from its parts (storage, Raft, peer transport, API services, admin HTTP) and
//! runs it until `shutdown` resolves. Shutdown is a parameter so tests and the binary drive it the
//! same way.

use openraft::async_runtime::watch::WatchReceiver;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use raftlog_proto::raft::v1::raft_server::RaftServer;
use raftlog_proto::v1::broker_server::BrokerServer;
use raftlog_proto::v1::cluster_server::ClusterServer;
use tokio::net::TcpListener;

use crate::admin_http;
use crate::api::broker::BrokerService;
use crate::api::cluster::ClusterService;
use crate::api::forward::Forwarder;
use crate::config::NodeConfig;
use crate::node::NodeContext;
use crate::raft::network::PeerNetworkFactory;
use crate::raft::service::PeerService;
use crate::raft::Raft;
use crate::write::WriteError;
use raftlog_core::limits::{
    APPEND_ENTRIES_BYTES_TARGET, GRPC_FRAMING_BYTES, PEER_MESSAGE_BYTES_MAX,
};
use raftlog_core::types::Node;
use raftlog_core::Command;
use raftlog_core::METADATA_GROUP;
use raftlog_store::{LogStore, StateMachine};

/// Runs a node until `shutdown` resolves, then stops serving, stops Raft and flushes storage.
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    crate::metrics::install();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let dbs = raftlog_store::open(&config.data_dir, &config.storage).context("opening RocksDB")?;
    let state_machine =
        StateMachine::open(&dbs, METADATA_GROUP, config.data_dir.join("snapshots"))?;
    let log_store = LogStore::new(
        &dbs,
        METADATA_GROUP,
        state_machine.flushed(),
        config.fsync_thread_nice,
    );
    let log_bytes = log_store.bytes();
    let received_encodings = log_store.received_encodings();
    let view = state_machine.view();
    let snapshots = state_machine.snapshot_store();
    let network = PeerNetworkFactory::new(
        METADATA_GROUP,
        Duration::from_millis(config.raft.peer_connect_timeout_ms),
        config.snapshot.chunk_bytes_max as usize,
        log_store.encoded_entries(),
    );
    let raft_config = Arc::new(
        config
            .openraft_config()
            .validate()
            .context("raft configuration")?,
    );
    let raft = Raft::new(
        config.node_id,
        raft_config,
        network,
        log_store,
        state_machine,
    )
    .await
    .context("starting Raft")?;
    let config = Arc::new(config);
    let ctx = NodeContext {
        id: config.node_id,
        raft: raft.clone(),
        view,
        config: config.clone(),
        disk: crate::disk::DiskSpace::watch(config.data_dir.clone()),
        // An entry bigger than what one AppendEntries carries could not be replicated in time
        // (see APPEND_ENTRIES_BYTES_TARGET): group commit stops adding requests there.
        batcher: crate::batcher::Batcher::start(
            raft.clone(),
            config.limits.group_commit_max,
            config
                .limits
                .batch_bytes_max
                .min(APPEND_ENTRIES_BYTES_TARGET),
            Duration::from_millis(config.limits.group_commit_linger_ms),
        ),
        writes_stopped: Default::default(),
    };

    if !config.initial_cluster.is_empty() {
        bootstrap(&raft, &config).await?;
    }
    tokio::spawn(crate::log_retention::run(
        raft.clone(),
        log_bytes,
        config.snapshot.clone(),
    ));

    let listener = TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("binding gRPC address {}", config.listen_addr))?;
    let admin_listener = TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("binding admin HTTP address {}", config.admin_addr))?;
    tracing::info!(
        node_id = config.node_id,
        grpc = %config.listen_addr,
        admin = %config.admin_addr,
        data_dir = %config.data_dir.display(),
        "raftlog node started"
    );

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<BrokerServer<BrokerService>>()
        .await;
    health_reporter
        .set_serving::<ClusterServer<ClusterService>>()
        .await;
    // Reflection advertises the services users call; the peer-only raftlog.raft.v1.Raft is
    // served on the same port but is not listed (its payloads are not protobuf anyway). Both the
    // v1 and the older v1alpha protocol are served: grpcurl before 1.9 speaks only v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(raftlog_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("raftlog.v1.Broker")
            .with_service_name("raftlog.v1.Cluster")
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection")
    };
    let reflection = reflection_builder()
        .build_v1()
        .context("building gRPC reflection service")?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .context("building gRPC reflection service (v1alpha)")?;

    // One cache of connections to the leader for both services' forwarded requests.
    let forwarder = Forwarder::default();
    // A produce request may carry a full batch plus protobuf framing.
    let client_message_bytes_max = config.limits.batch_bytes_max + GRPC_FRAMING_BYTES;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut grpc_stop = stop_rx.clone();
    let grpc = raftlog_proto::http2::server(tonic::transport::Server::builder())
        .tcp_nodelay(true)
        .add_service(
            RaftServer::new(PeerService::new(
                raft.clone(),
                METADATA_GROUP,
                snapshots,
                stop_rx.clone(),
                received_encodings,
            ))
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX),
        )
        .add_service(
            BrokerServer::new(BrokerService::new(
                ctx.clone(),
                forwarder.clone(),
                stop_rx.clone(),
            ))
            .max_decoding_message_size(client_message_bytes_max)
            .max_encoding_message_size(config.limits.fetch_bytes_max + GRPC_FRAMING_BYTES),
        )
        .add_service(ClusterServer::new(ClusterService::new(
            ctx.clone(),
            forwarder,
        )))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(
            // Every reply is small and latency-bound: no Nagle (it adds ~40 ms with delayed ACKs).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                let _ = grpc_stop.wait_for(|stop| *stop).await;
            },
        );
    let grpc = tokio::spawn(grpc);
    let admin = tokio::spawn(admin_http::serve(
        admin_listener,
        ctx.clone(),
        stop_rx.clone(),
    ));
    let housekeeping = tokio::spawn(housekeeping(ctx.clone(), stop_rx));

    let raft_events = tokio::spawn(log_raft_changes(ctx.clone()));

    let failure = tokio::select! {
        _ = shutdown => None,
        fatal = raft_failure(raft.clone()) => Some(fatal),
    };
    if let Some(fatal) = &failure {
        // Fail-stop: a node whose Raft core stopped (a log or state machine write failed, e.g.
        // on a full disk) can neither commit nor apply. Serving on would leave clients retrying
        // against it and hide the failure; exiting non-zero lets a supervisor restart it and an
        // operator see why. Its log and state on disk are what a restart recovers from.
        tracing::error!(node_id = config.node_id, error = %fatal, "Raft stopped on a fatal error; stopping the node");
        // Probes see it at once, not only when the port closes after the drain.
        for service in ["", "raftlog.v1.Broker", "raftlog.v1.Cluster"] {
            health_reporter
                .set_service_status(service, tonic_health::ServingStatus::NotServing)
                .await;
        }
    } else {
        // Graceful stop: a leader first hands leadership over (while still serving, so the
        // successor can reach it for its vote); then stop accepting and let in-flight requests
        // finish (bounded: a Subscribe stream or a long poll may never end on its own), stop Raft
        // and flush.
        tracing::info!(node_id = config.node_id, "shutting down");
        crate::handover::hand_over_leadership(&ctx).await;
    }
    tracing::info!(node_id = config.node_id, "shutting down: draining requests");
    let _ = stop_tx.send(true);
    let grpc_abort = grpc.abort_handle();
    if tokio::time::timeout(Duration::from_secs(5), grpc)
        .await
        .is_err()
    {
        tracing::warn!("requests still open after 5 s; closing them");
        grpc_abort.abort();
    }
    raft_events.abort();
    let _ = admin.await;
    let _ = housekeeping.await;
    if let Some(fatal) = failure {
        anyhow::bail!("Raft stopped on a fatal error: {fatal}");
    }
    if let Err(e) = raft.shutdown().await {
        tracing::warn!("raft shutdown: {e}");
    }
    // The state machine is written without WAL: flush it so the next start need not re-apply.
    dbs.flush_state().context("flushing state machine")?;
    tracing::info!(node_id = config.node_id, "stopped");
    Ok(())
}

/// Resolves, with the error, once openraft's core has stopped on a fatal error; pending while
/// Raft runs.
///
/// Waits on the server metrics (vote, role, leader, membership), not on the full `RaftMetrics`:
/// those change with every append, commit and apply, and a task waiting on them is woken
/// thousands of times a second (perf: ~4 % of a leader's CPU went into those wake-ups at 1 KiB,
/// C=64). The core drops its metrics senders when it stops, so the wait ends then.
async fn raft_failure(raft: Raft) -> String {
    let mut server = raft.server_metrics();
    loop {
        if let Err(fatal) = &raft.metrics().borrow_watched().running_state {
            return fatal.to_string();
        }
        if server.changed().await.is_err() {
            return match &raft.metrics().borrow_watched().running_state {
                Err(fatal) => fatal.to_string(),
                Ok(()) => "the Raft core is gone".into(),
            };
        }
    }
}

/// An optional id or index as a log field shows it: the number, or `none`.
fn or_none(value: Option<u64>) -> String {
    value.map_or_else(|| "none".to_string(), |v| v.to_string())
}

/// One log line per leader change and per membership change, with the ids that matter. Watches
/// the server metrics only, which change with the vote, role, leader or membership (see
/// [`raft_failure`]).
async fn log_raft_changes(ctx: NodeContext) {
    let mut metrics = ctx.raft.server_metrics();
    let (mut leader, mut membership) = (None, None);
    loop {
        {
            let m = metrics.borrow_watched();
            if m.current_leader != leader {
                tracing::info!(
                    node_id = ctx.id,
                    term = m.vote.leader_id.term,
                    leader = %or_none(m.current_leader),
                    previous = %or_none(leader),
                    "leader changed"
                );
                leader = m.current_leader;
            }
            let current = m.membership_config.log_id().map(|l| l.index);
            if current != membership {
                let config = m.membership_config.membership();
                tracing::info!(
                    node_id = ctx.id,
                    log_index = %or_none(current),
                    voters = ?config.voter_ids().collect::<Vec<_>>(),
                    learners = ?config.learner_ids().collect::<Vec<_>>(),
                    "membership changed"
                );
                membership = current;
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// While this node leads, proposes `Command::Maintenance` every `retention_check_ms`: retention
/// and producer expiry run as replicated, deterministic commands stamped with the leader's clock,
/// so every node deletes exactly the same batches.
async fn housekeeping(ctx: NodeContext, mut stop: tokio::sync::watch::Receiver<bool>) {
    let every = Duration::from_millis(ctx.config.housekeeping.retention_check_ms.max(10));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        if ctx.leader().map(|(id, _)| id) != Some(ctx.id) {
            continue;
        }
        let command = Command::Maintenance {
            now_ms: crate::write::now_ms(),
            producer_idle_ms: ctx.config.housekeeping.producer_idle_ms,
        };
        // A lost leadership or a failed round is fine: the next leader's next tick catches up.
        let deadline = std::time::Instant::now() + every;
        match ctx.write(command, deadline).await {
            Ok(_) | Err(WriteError::NotLeader(_)) => {}
            Err(e) => tracing::warn!("housekeeping round failed: {e}"),
        }
    }
}

/// Static bootstrap: the member with the smallest id initializes the cluster if nothing has been
/// initialized yet. openraft refuses to initialize a node that has any log or vote, so restarts and
/// replaced nodes are unaffected.
async fn bootstrap(raft: &Raft, config: &NodeConfig) -> anyhow::Result<()> {
    let first = config.initial_cluster.iter().map(|(id, _)| *id).min();
    if first != Some(config.node_id) {
        return Ok(());
    }
    let members = config
        .initial_cluster
        .iter()
        .map(|(id, addr)| (*id, Node { addr: addr.clone() }))
        .collect::<std::collections::BTreeMap<_, _>>();
    match raft.initialize(members).await {
        Ok(()) => tracing::info!(
            node_id = config.node_id,
            "initialized cluster from the static member list"
        ),
        Err(openraft::error::RaftError::APIError(
            openraft::error::InitializeError::NotAllowed(_),
        )) => {}
        Err(e) => return Err(anyhow::anyhow!("initializing cluster: {e}")),
    }
    Ok(())
}
