//! Assembles a node from its parts (storage, Raft, peer transport, API services, admin HTTP) and
//! runs it until `shutdown` resolves. Shutdown is a parameter so tests and the binary drive it the
//! same way.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use raftlog_proto::raft::v1::raft_server::RaftServer;
use raftlog_proto::v1::auth_server::AuthServer;
use raftlog_proto::v1::broker_server::BrokerServer;
use raftlog_proto::v1::cluster_server::ClusterServer;
use raftlog_proto::v1::queues_server::QueuesServer;
use tokio::net::TcpListener;

use crate::admin_http;
use crate::api::auth::AuthService;
use crate::api::broker::queues::QueuesService;
use crate::api::broker::BrokerService;
use crate::api::cluster::ClusterService;
use crate::api::forward::Forwarder;
use crate::api::request_metrics::RequestMetricsLayer;
use crate::auth::layer::AuthLayer;
use crate::config::NodeConfig;
use crate::group::{Group, Groups, PeerParts};
use crate::node::NodeContext;
use crate::raft::service::PeerService;
use crate::raft::Raft;
use raftlog_core::limits::{GRPC_FRAMING_BYTES, PEER_MESSAGE_BYTES_MAX};
use raftlog_core::types::Node;
use raftlog_core::METADATA_GROUP;

/// Runs a node until `shutdown` resolves, then stops serving, stops Raft and flushes storage.
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    crate::metrics::install();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    // Before anything else starts: a bad certificate or key stops the node with the reason.
    let tls = config
        .tls
        .as_ref()
        .map(|settings| crate::tls::Tls::load(settings, config.node_id))
        .transpose()?;
    let dbs = raftlog_store::open(&config.data_dir, &config.storage).context("opening RocksDB")?;
    let (group, peer_parts) = Group::start(METADATA_GROUP, &dbs, &config, tls.clone()).await?;
    let config = Arc::new(config);
    let auth = make_auth(&config, &group)?;
    let ctx = NodeContext {
        id: config.node_id,
        config: config.clone(),
        disk: crate::disk::DiskSpace::watch(config.data_dir.clone()),
        groups: Arc::new(Groups::new([group.clone()])),
        tls: tls.clone(),
        auth,
    };
    if !config.initial_cluster.is_empty() {
        bootstrap(&group.raft, &config).await?;
    }

    let (listener, admin_listener) = bind(&config).await?;
    tracing::info!(
        node_id = config.node_id,
        grpc = %config.listen_addr,
        tls = tls.is_some(),
        auth = config.auth.enabled,
        admin = %config.admin_addr,
        data_dir = %config.data_dir.display(),
        "raftlog node started"
    );

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    for service in CLIENT_SERVICES {
        health_reporter
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .await;
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let grpc = serve_grpc(listener, &ctx, peer_parts, health_service, stop_rx.clone())?;
    let tasks = NodeTasks {
        tls_reload: tls.map(|tls| tokio::spawn(crate::tls::watch(tls, stop_rx.clone()))),
        grpc: tokio::spawn(grpc),
        admin: tokio::spawn(admin_http::serve(
            admin_listener,
            ctx.clone(),
            stop_rx.clone(),
        )),
        housekeeping: tokio::spawn(crate::group::housekeeping(
            group.clone(),
            config.housekeeping.clone(),
            stop_rx.clone(),
        )),
        member_expiry: tokio::spawn(crate::group::expire_group_members(group.clone(), stop_rx)),
        raft_events: tokio::spawn(crate::group::log_raft_changes(group.clone())),
    };

    let failure = tokio::select! {
        _ = shutdown => None,
        fatal = crate::group::raft_failure(group.raft.clone()) => Some(fatal),
    };
    prepare_stop(&group, failure.as_deref(), &health_reporter).await;
    tracing::info!(node_id = config.node_id, "shutting down: draining requests");
    let _ = stop_tx.send(true);
    tasks.finish().await;
    if let Some(fatal) = failure {
        anyhow::bail!("Raft stopped on a fatal error: {fatal}");
    }
    if let Err(e) = group.raft.shutdown().await {
        tracing::warn!("raft shutdown: {e}");
    }
    // The state machine is written without WAL: flush it so the next start need not re-apply.
    dbs.flush_state().context("flushing state machine")?;
    tracing::info!(node_id = config.node_id, "stopped");
    Ok(())
}

/// The client-facing services, as the gRPC health protocol names them.
const CLIENT_SERVICES: [&str; 4] = [
    "raftlog.v1.Broker",
    "raftlog.v1.Queues",
    "raftlog.v1.Cluster",
    "raftlog.v1.Auth",
];

/// The node's authentication and authorization, over the metadata group's applied state.
fn make_auth(config: &NodeConfig, group: &Group) -> anyhow::Result<Arc<crate::auth::Auth>> {
    Ok(Arc::new(crate::auth::Auth::new(
        config.auth.enabled,
        config.auth.super_users.iter().cloned(),
        read_bootstrap_token(config)?,
        group.view.clone(),
        group.raft.clone(),
    )))
}

/// The hash of the bootstrap token (`bootstrap_token_file`), read once at start.
fn read_bootstrap_token(config: &NodeConfig) -> anyhow::Result<Option<[u8; 32]>> {
    let Some(path) = &config.auth.bootstrap_token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading bootstrap_token_file {}", path.display()))?;
    let token = text.trim();
    // Anyone who guesses it is a super-user: refuse a short one rather than start weak.
    anyhow::ensure!(
        token.len() >= 32,
        "bootstrap_token_file {}: the token must be at least 32 characters (it has {})",
        path.display(),
        token.len()
    );
    Ok(Some(crate::auth::tokens::bootstrap_hash(token)))
}

/// Binds the gRPC and the admin HTTP listeners.
async fn bind(config: &NodeConfig) -> anyhow::Result<(TcpListener, TcpListener)> {
    let listener = TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("binding gRPC address {}", config.listen_addr))?;
    let admin_listener = TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("binding admin HTTP address {}", config.admin_addr))?;
    Ok((listener, admin_listener))
}

/// What happens before a node stops serving. After a fatal Raft error, health turns to not
/// serving at once. On a requested stop, a leader first hands leadership over (while still
/// serving, so the successor can reach it for its vote).
async fn prepare_stop(
    group: &Group,
    failure: Option<&str>,
    health_reporter: &tonic_health::server::HealthReporter,
) {
    let node_id = group.node_id;
    if let Some(fatal) = failure {
        // Fail-stop: a node whose Raft core stopped (a log or state machine write failed, e.g.
        // on a full disk) can neither commit nor apply. Serving on would leave clients retrying
        // against it and hide the failure; exiting non-zero lets a supervisor restart it and an
        // operator see why. Its log and state on disk are what a restart recovers from.
        tracing::error!(node_id, error = %fatal, "Raft stopped on a fatal error; stopping the node");
        // Probes see it at once, not only when the port closes after the drain.
        for service in [""].into_iter().chain(CLIENT_SERVICES) {
            health_reporter
                .set_service_status(service, tonic_health::ServingStatus::NotServing)
                .await;
        }
    } else {
        tracing::info!(node_id, "shutting down");
        crate::group::hand_over_leadership(group).await;
    }
}

/// The tasks a running node spawned beside its Raft group.
struct NodeTasks {
    grpc: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    tls_reload: Option<tokio::task::JoinHandle<()>>,
    admin: tokio::task::JoinHandle<()>,
    housekeeping: tokio::task::JoinHandle<()>,
    member_expiry: tokio::task::JoinHandle<()>,
    raft_events: tokio::task::JoinHandle<()>,
}

impl NodeTasks {
    /// Once the stop signal is sent: lets in-flight requests finish, bounded (a Subscribe stream
    /// or a long poll may never end on its own), and waits for the other tasks.
    async fn finish(self) {
        let grpc_abort = self.grpc.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), self.grpc)
            .await
            .is_err()
        {
            tracing::warn!("requests still open after 5 s; closing them");
            grpc_abort.abort();
        }
        self.raft_events.abort();
        let _ = self.admin.await;
        if let Some(tls_reload) = self.tls_reload {
            let _ = tls_reload.await;
        }
        let _ = self.housekeeping.await;
        let _ = self.member_expiry.await;
    }
}

/// The gRPC server of the node's one port: the peer service (Raft), the client services (Broker,
/// Cluster, Auth) behind the auth layer, health and reflection, over TLS when `tls` is given; it stops accepting when `stop`
/// turns true.
fn serve_grpc(
    listener: TcpListener,
    ctx: &NodeContext,
    peer_parts: PeerParts,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<GrpcServer> {
    let group = ctx.metadata();
    let (config, tls) = (&ctx.config, ctx.tls.clone());
    // Reflection advertises the services users call; the peer-only raftlog.raft.v1.Raft is
    // served on the same port but is not listed (its payloads are not protobuf anyway). Both the
    // v1 and the older v1alpha protocol are served: grpcurl before 1.9 speaks only v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(raftlog_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("raftlog.v1.Broker")
            .with_service_name("raftlog.v1.Cluster")
            .with_service_name("raftlog.v1.Queues")
            .with_service_name("raftlog.v1.Auth")
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
    let forwarder = Forwarder::new(tls.clone());
    // A produce request may carry a full batch plus protobuf framing.
    let client_message_bytes_max = config.limits.batch_bytes_max + GRPC_FRAMING_BYTES;
    let mut grpc_stop = stop.clone();
    let peer = PeerService::new(
        group.raft.clone(),
        group.id,
        peer_parts.snapshots,
        stop.clone(),
        peer_parts.received_encodings,
        tls.is_some(),
    );
    let queues = QueuesService::new(ctx.clone(), forwarder.clone(), stop.clone());
    let broker = BrokerService::new(ctx.clone(), forwarder.clone(), stop);
    // Outermost first: refusals are counted as requests too; the auth layer sees every call
    // before its service.
    let router = raftlog_proto::http2::server(tonic::transport::Server::builder())
        .tcp_nodelay(true)
        .layer(RequestMetricsLayer::new())
        .layer(AuthLayer::new(ctx.auth.clone(), client_message_bytes_max))
        .add_service(
            RaftServer::new(peer)
                .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX),
        )
        .add_service(
            BrokerServer::new(broker)
                .max_decoding_message_size(client_message_bytes_max)
                .max_encoding_message_size(config.limits.fetch_bytes_max + GRPC_FRAMING_BYTES),
        )
        .add_service(QueuesServer::new(queues))
        .add_service(ClusterServer::new(ClusterService::new(
            ctx.clone(),
            forwarder.clone(),
        )))
        .add_service(AuthServer::new(AuthService::new(ctx.clone(), forwarder)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha);
    let stopped = async move {
        let _ = grpc_stop.wait_for(|stop| *stop).await;
    };
    Ok(match tls {
        None => Box::pin(router.serve_with_incoming_shutdown(
            // Every reply is small and latency-bound: no Nagle (it adds ~40 ms with delayed ACKs).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stopped,
        )),
        Some(tls) => Box::pin(
            router.serve_with_incoming_shutdown(crate::tls::incoming(listener, tls), stopped),
        ),
    })
}

/// The running gRPC server, plaintext or TLS.
type GrpcServer =
    std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

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
