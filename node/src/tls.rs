//! TLS of the node's gRPC port (docs/security.md): loading the CA, the node's certificate and key
//! from PEM files, reloading them without a restart, the accept loop that runs the server side of
//! each handshake, the connector the node's own channels (to peers, to the leader) dial with,
//! and reading a peer's node identity off its certificate.
//!
//! One port serves clients and peers, so the handshake itself asks for a client certificate
//! without requiring one (unless `tls_client_cert_required`): a certificate that is presented
//! must chain to the cluster CA, or the handshake fails. Whether the caller is a member node is
//! decided per request by the Raft service ([`crate::raft::service`]) from the identity
//! [`node_id_of`] reads: the DNS subject alternative name `node-<id>`.
//!
//! Reloading rebuilds both rustls configurations from the files and swaps them in; every new
//! connection (accepted or dialled) takes the current one, connections already open keep theirs.
//! A reload that fails (a missing file, a key that does not match its certificate, a certificate
//! that names another node) keeps the previous configuration and says why.

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

use crate::config::TlsSettings;

/// The DNS name a node's certificate carries for node `id`, and the name its peers verify when
/// they dial it.
pub fn node_name(id: u64) -> String {
    format!("node-{id}")
}

/// Longest a connection may take to complete its handshake. A client that sends half a
/// ClientHello (or nothing) is dropped after this; it never holds up other connections, each
/// handshake runs in its own task.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most handshakes in progress at once; past it new connections are closed at once, so a flood
/// of connections that never finish their hello costs bounded memory.
const HANDSHAKES_IN_PROGRESS_MAX: usize = 1024;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

fn error(message: impl Into<String>) -> TlsError {
    TlsError(message.into())
}

/// The node's TLS material, reloadable: the current server and client configurations.
pub struct Tls {
    settings: TlsSettings,
    node_id: u64,
    provider: Arc<CryptoProvider>,
    current: RwLock<Loaded>,
    /// The files' stamps at the last reload attempt: a file change is noticed once.
    stamps: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

#[derive(Clone)]
struct Loaded {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl Tls {
    /// Loads the files named in `settings` for node `node_id`; any problem is an error naming
    /// the file.
    pub fn load(settings: &TlsSettings, node_id: u64) -> Result<Arc<Tls>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let stamps = settings.files().iter().map(|p| stamp(p)).collect();
        let loaded = build(settings, node_id, &provider)?;
        Ok(Arc::new(Tls {
            settings: settings.clone(),
            node_id,
            provider,
            current: RwLock::new(loaded),
            stamps: Mutex::new(stamps),
        }))
    }

    /// Reads the files again and swaps the new configuration in; on an error the previous one
    /// stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        *self.stamps.lock().expect("tls stamps lock") =
            self.settings.files().iter().map(|p| stamp(p)).collect();
        let result = build(&self.settings, self.node_id, &self.provider);
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(crate::metrics::TLS_RELOADS, "result" => outcome).increment(1);
        *self.current.write().expect("tls config lock") = result?;
        Ok(())
    }

    /// Whether a file changed (modification time or size) since the last load or reload.
    fn files_changed(&self) -> bool {
        let now: Vec<_> = self.settings.files().iter().map(|p| stamp(p)).collect();
        *self.stamps.lock().expect("tls stamps lock") != now
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current.read().expect("tls config lock").server.clone()
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.current.read().expect("tls config lock").client.clone()
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Both rustls configurations from the files, after checking that they fit together and that
/// the certificate is this node's.
fn build(
    settings: &TlsSettings,
    node_id: u64,
    provider: &Arc<CryptoProvider>,
) -> Result<Loaded, TlsError> {
    let cas = read_certs(&settings.ca, "tls_ca")?;
    let mut roots = RootCertStore::empty();
    for ca in &cas {
        roots
            .add(ca.clone())
            .map_err(|e| error(format!("tls_ca {}: {e}", settings.ca.display())))?;
    }
    let roots = Arc::new(roots);
    let chain = read_certs(&settings.cert, "tls_cert")?;
    let key = PrivateKeyDer::from_pem_file(&settings.key).map_err(|e| {
        error(format!(
            "tls_key {}: no private key read ({e})",
            settings.key.display()
        ))
    })?;
    let cert_expiry = check_node_cert(&chain[0], settings, node_id)?;
    let ca_expiry = cas.iter().filter_map(not_after).min().unwrap_or(0);

    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
    let verifier = if settings.client_cert_required {
        verifier
    } else {
        verifier.allow_unauthenticated()
    }
    .build()
    .map_err(|e| error(format!("tls_ca {}: {e}", settings.ca.display())))?;
    let key_error = |e: rustls::Error| {
        error(format!(
            "tls_cert {} with tls_key {}: {e}",
            settings.cert.display(),
            settings.key.display()
        ))
    };
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| error(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(key_error)?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| error(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(key_error)?;
    client.alpn_protocols = vec![b"h2".to_vec()];

    metrics::gauge!(crate::metrics::TLS_CERT_EXPIRY, "cert" => "node").set(cert_expiry as f64);
    metrics::gauge!(crate::metrics::TLS_CERT_EXPIRY, "cert" => "ca").set(ca_expiry as f64);
    Ok(Loaded {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// Checks that `cert` is this node's (it names `node-<node_id>` and no other node) and has not
/// expired; returns its expiry (Unix seconds).
fn check_node_cert(
    cert: &CertificateDer,
    settings: &TlsSettings,
    node_id: u64,
) -> Result<i64, TlsError> {
    let names = node_ids_of(cert);
    if names != [node_id] {
        return Err(error(format!(
            "tls_cert {} must name this node as DNS name {} (and no other node); it names {}",
            settings.cert.display(),
            node_name(node_id),
            if names.is_empty() {
                "none".to_string()
            } else {
                names
                    .iter()
                    .map(|id| node_name(*id))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )));
    }
    let cert_expiry = not_after(cert)
        .ok_or_else(|| error(format!("tls_cert {}: unreadable", settings.cert.display())))?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    // Peers and clients would refuse it at every handshake: better said once, here.
    if cert_expiry <= now {
        return Err(error(format!(
            "tls_cert {} expired {} s ago",
            settings.cert.display(),
            now - cert_expiry
        )));
    }
    Ok(cert_expiry)
}

fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| error(format!("{key} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(error(format!(
            "{key} {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

/// The node ids a certificate names: its DNS subject alternative names of the form `node-<id>`.
pub fn node_ids_of(cert: &CertificateDer) -> Vec<u64> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    let mut ids: Vec<u64> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => dns.strip_prefix("node-")?.parse().ok(),
            _ => None,
        })
        .filter(|id| *id > 0)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The one node a certificate names, if it names exactly one.
pub fn node_id_of(cert: &CertificateDer) -> Option<u64> {
    match node_ids_of(cert)[..] {
        [id] => Some(id),
        _ => None,
    }
}

/// A certificate's end of validity, in seconds since the Unix epoch.
fn not_after(cert: &CertificateDer) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// Reloads on SIGHUP and, every `settings.reload_check_ms` (0: never), when a file changed;
/// ends when `stop` turns true.
pub async fn watch(tls: Arc<Tls>, mut stop: tokio::sync::watch::Receiver<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(e) => {
            tracing::warn!("no SIGHUP handler, certificates reload on file change only: {e}");
            None
        }
    };
    let check_ms = tls.settings.reload_check_ms;
    let mut check = tokio::time::interval(Duration::from_millis(check_ms.max(1)));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            Some(()) = async { hangup.as_mut()?.recv().await } => "SIGHUP",
            _ = check.tick(), if check_ms > 0 => {
                if !tls.files_changed() {
                    continue;
                }
                "a file changed"
            }
        };
        match tls.reload() {
            Ok(()) => tracing::info!(why, "TLS certificates reloaded"),
            Err(e) => {
                tracing::error!(
                    why,
                    "TLS certificates not reloaded, the previous ones stay: {e}"
                )
            }
        }
    }
}

/// The TLS connections accepted on `listener`: each handshake runs in its own task, bounded by
/// [`HANDSHAKE_TIMEOUT`]; a failed one is counted and logged, never passed on, so no client can
/// stop the server by failing its handshake. Ends when the receiver is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<Tls>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let in_progress = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_IN_PROGRESS_MAX));
        loop {
            let (tcp, peer) = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, mostly: give others time to close theirs.
                        tracing::warn!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = in_progress.clone().try_acquire_owned() else {
                handshake_failed(peer, "too many handshakes in progress");
                continue;
            };
            // Every reply is small and latency-bound: no Nagle (it adds ~40 ms with delayed ACKs).
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(permit);
                match handshake {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => handshake_failed(peer, &e.to_string()),
                    Err(_) => handshake_failed(peer, "no complete handshake in 10 s"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn handshake_failed(peer: std::net::SocketAddr, why: &str) {
    metrics::counter!(crate::metrics::TLS_HANDSHAKE_FAILURES).increment(1);
    tracing::debug!(%peer, "TLS handshake failed: {why}");
}

/// Dials another node over TLS with the current client configuration, presenting this node's
/// certificate and verifying that the other side's names `server_name` (`node-<id>`).
#[derive(Clone)]
pub struct NodeConnector {
    tls: Arc<Tls>,
    server_name: ServerName<'static>,
}

impl NodeConnector {
    /// A connector to node `id`.
    pub fn to_node(tls: Arc<Tls>, id: u64) -> Self {
        let server_name = ServerName::try_from(node_name(id)).expect("node-<id> is a DNS name");
        Self { tls, server_name }
    }
}

type Connecting = Pin<
    Box<
        dyn std::future::Future<
                Output = std::io::Result<
                    hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
                >,
            > + Send,
    >,
>;

impl tower::Service<http::Uri> for NodeConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.tls.client_config());
        let server_name = self.server_name.clone();
        Box::pin(async move {
            let authority = uri.authority().ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("no host:port in {uri}"),
                )
            })?;
            let tcp = TcpStream::connect(authority.as_str()).await?;
            tcp.set_nodelay(true)?;
            let stream = connector.connect(server_name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// A lazily connected channel to node `id` at `addr`: over TLS with `tls`, plaintext without.
/// `endpoint` makes the endpoint of a URI (the caller's timeouts and HTTP/2 settings).
pub fn node_channel(
    endpoint: impl FnOnce(String) -> Result<tonic::transport::Endpoint, tonic::transport::Error>,
    addr: &str,
    id: u64,
    tls: Option<&Arc<Tls>>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    // http:// in both cases: tonic would wrap an https:// connection in TLS of its own (a fixed
    // configuration); with TLS on, the connector returns a stream that is already TLS.
    let endpoint = endpoint(format!("http://{addr}"))?;
    Ok(match tls {
        None => endpoint.connect_lazy(),
        Some(tls) => endpoint.connect_with_connector_lazy(NodeConnector::to_node(tls.clone(), id)),
    })
}
