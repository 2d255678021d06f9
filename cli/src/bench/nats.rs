//! Produce load against NATS JetStream, for the side-by-side comparison (scripts/bench.sh,
//! scripts/nats-cluster.sh): the same closed loop as raftlog's, one message per request, each
//! waiting for its publish ack (which JetStream sends once the stream's Raft group has the
//! message on a majority of its replicas; whether that means fsynced depends on the servers'
//! `sync_interval`, see docs/benchmarks.md, "How NATS is set up").

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_nats::jetstream::{self, stream};
use serde_json::json;

use super::{ClosedLoopResult, ProduceArgs, System};

pub async fn produce(args: ProduceArgs, as_json: bool) -> anyhow::Result<()> {
    if args.partitions != 1 || args.records_per_request != 1 {
        bail!("--system nats publishes one message per request to one stream: --partitions and --records-per-request must be 1");
    }
    let (js, leader, server_version, replicas) =
        leader_stream(&args.nats_url, &args.topic, args.nats_replicas).await?;
    let payloads = super::Payloads::new(args.payload, args.record_bytes);
    let subject = Arc::new(args.topic.clone());
    let op = move |_: u64| {
        let (js, subject, value) = (js.clone(), subject.clone(), payloads.next());
        async move {
            // The first await sends; the second waits for the stream's ack.
            js.publish(subject.as_str().to_string(), value)
                .await?
                .await?;
            Ok(())
        }
    };
    let requests = args.count;
    let (hist, secs) = super::closed_loop(requests, args.concurrency, op).await?;
    ClosedLoopResult {
        system: System::Nats,
        args: &args,
        requests,
        hist,
        secs,
        extra: json!({"nats": {"server_version": server_version, "stream_replicas": replicas,
                               "storage": "file", "connected_to_stream_leader": leader}}),
    }
    .print(as_json);
    Ok(())
}

/// Creates (or finds) the R`replicas` file stream `name` (its subject is `name` too) and
/// connects to its leader: the context on that connection, the leader's name, the server version
/// and the stream's replicas. Ready for publishing: a first message went through.
pub async fn leader_stream(
    urls: &[String],
    name: &str,
    replicas: usize,
) -> anyhow::Result<(jetstream::Context, Option<String>, String, usize)> {
    let servers = urls
        .iter()
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .context("--nats-url")?;
    let client = async_nats::ConnectOptions::new()
        .name("raftlog-bench")
        .connect(servers)
        .await
        .with_context(|| format!("connecting to NATS at {}", urls.join(",")))?;
    let server_version = client.server_info().version;
    let js = jetstream::new(client);
    let config = stream::Config {
        name: name.to_string(),
        subjects: vec![name.to_string()],
        num_replicas: replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    // A cluster just started elects its meta leader before that leader has heard every server
    // announce itself, and until then it refuses to place replicas ("no suitable peers for
    // placement, peer offline"): that one refusal is retried for up to 30 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stream = loop {
        match js.get_or_create_stream(config.clone()).await {
            Ok(stream) => break stream,
            Err(e) if no_peers_yet(&e) && Instant::now() < deadline => {
                tracing::debug!("creating stream: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("creating JetStream stream '{name}'")),
        }
    };
    let replicas = stream.cached_info().config.num_replicas;
    // As raftlog's client follows its leader, NATS's goes to the stream's leader: a publish to
    // any other server is relayed to it, one more hop than raftlog's requests make.
    let (js, leader) = connect_to_stream_leader(urls, js, name).await?;
    let value = bytes::Bytes::from_static(b"warm-up");
    // A stream just created may answer "no stream found" for a moment (its Raft group is still
    // electing a leader): one warm-up message, retried for up to 10 s, before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let warm_up = async {
            js.publish(name.to_string(), value.clone()).await?.await?;
            anyhow::Ok(())
        };
        match warm_up.await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("warm-up publish: {e:#}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.context(format!("publishing to stream '{name}'"))),
        }
    }
    Ok((js, leader, server_version, replicas))
}

/// A JetStream context on a connection to the server that leads `stream` (its name, or `None`
/// when the stream has no leader to name, e.g. one replica on the server connected to), found by
/// asking the stream and connecting to each of `--nats-url` until one is that server.
async fn connect_to_stream_leader(
    urls: &[String],
    js: jetstream::Context,
    stream: &str,
) -> anyhow::Result<(jetstream::Context, Option<String>)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        let mut handle = js
            .get_stream(stream)
            .await
            .with_context(|| format!("looking up stream '{stream}'"))?;
        let info = handle
            .info()
            .await
            .with_context(|| format!("stream '{stream}' info"))?
            .cluster
            .clone()
            .and_then(|c| c.leader);
        match info {
            Some(leader) => break leader,
            // Just created: its Raft group may still be electing.
            None if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            None => return Ok((js, None)),
        }
    };
    for url in urls {
        let server = url
            .parse::<async_nats::ServerAddr>()
            .context("--nats-url")?;
        // Only this server: no reconnecting elsewhere behind the benchmark's back.
        let client = async_nats::ConnectOptions::new()
            .name("raftlog-bench")
            .ignore_discovered_servers()
            .connect(server)
            .await
            .with_context(|| format!("connecting to NATS at {url}"))?;
        if client.server_info().server_name == leader {
            return Ok((jetstream::new(client), Some(leader)));
        }
    }
    bail!("stream '{stream}' is led by server {leader}, which is none of --nats-url")
}

/// Whether stream creation failed only because the meta leader does not yet see enough servers
/// online to place the replicas.
fn no_peers_yet(e: &jetstream::context::CreateStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::CreateStreamErrorKind::JetStream(js)
            if js.error_code() == jetstream::ErrorCode::CLUSTER_NO_PEERS
    )
}
