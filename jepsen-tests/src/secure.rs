//! A secured run (`--secure`): the nodes serve TLS on the client and peer ports (mutual TLS
//! between peers) with authentication on, and every client of the harness connects over TLS
//! with a bearer token. The certificates are made as an operator makes them, with `raftlog
//! cert` (the CLI next to the node binary): a CA, and per node a certificate naming `node-<id>`
//! and the address it is dialled at. The token is the nodes' bootstrap token (a super-user), so
//! authorization allows the workload everything and the run checks the same guarantees through
//! the secured path.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::Context;
use std::time::Duration;

use raftlog_client::{Client, RetryPolicy, TlsOptions};
use rand::Rng;

struct Security {
    cli: PathBuf,
    dir: PathBuf,
    token: String,
}

static SECURITY: OnceLock<Security> = OnceLock::new();

/// Turns the secured run on: makes the CA and the bootstrap token in `dir` with the CLI `cli`.
/// Called once, before the cluster starts.
pub fn enable(cli: &Path, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let security = Security {
        cli: cli.to_path_buf(),
        dir: dir.to_path_buf(),
        token: (0..32)
            .map(|_| format!("{:02x}", rand::rng().random::<u8>()))
            .collect(),
    };
    std::fs::write(dir.join("bootstrap.token"), &security.token)?;
    run_cli(&security, &["cert", "ca"])?;
    SECURITY
        .set(security)
        .map_err(|_| anyhow::anyhow!("the secured run is enabled once"))
}

fn run_cli(security: &Security, args: &[&str]) -> anyhow::Result<()> {
    let dir = security.dir.to_string_lossy();
    let output = Command::new(&security.cli)
        .args(args)
        .args(["--dir", &dir])
        .output()
        .with_context(|| format!("running {}", security.cli.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "raftlog {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Issues node `id`'s certificate for the address `host` it is dialled at (and loopback); a
/// no-op when the run is not secured.
pub fn issue_node_certificate(id: u64, host: &str) -> anyhow::Result<()> {
    let Some(security) = SECURITY.get() else {
        return Ok(());
    };
    let id = id.to_string();
    run_cli(
        security,
        &["cert", "node", &id, "--host", host, "--host", "127.0.0.1"],
    )
}

/// The environment that makes node `id` serve TLS with authentication on; empty when the run
/// is not secured.
pub fn node_env(id: u64) -> Vec<(&'static str, OsString)> {
    let Some(security) = SECURITY.get() else {
        return Vec::new();
    };
    let file = |name: String| security.dir.join(name).into_os_string();
    vec![
        ("RAFTLOG_TLS_CA", file("ca.pem".into())),
        ("RAFTLOG_TLS_CERT", file(format!("node-{id}.pem"))),
        ("RAFTLOG_TLS_KEY", file(format!("node-{id}-key.pem"))),
        ("RAFTLOG_AUTH_ENABLED", "true".into()),
        (
            "RAFTLOG_BOOTSTRAP_TOKEN_FILE",
            file("bootstrap.token".into()),
        ),
    ]
}

/// `client` over TLS with the bootstrap token, when the run is secured.
pub fn secured(client: Client) -> anyhow::Result<Client> {
    let Some(security) = SECURITY.get() else {
        return Ok(client);
    };
    let tls = TlsOptions {
        ca: security.dir.join("ca.pem"),
        cert: None,
        key: None,
    };
    Ok(client.with_tls(&tls)?.with_token(&security.token)?)
}

/// Proves the cluster at `endpoints` is secured as claimed before the run counts as a secured
/// one: a plaintext client is refused, and a TLS client without a token is UNAUTHENTICATED.
/// A no-op when the run is not secured.
pub async fn check_refusals(endpoints: &[String]) -> anyhow::Result<()> {
    let Some(security) = SECURITY.get() else {
        return Ok(());
    };
    let once = RetryPolicy {
        deadline: Duration::from_secs(2),
        ..RetryPolicy::default()
    };
    let plaintext = Client::new(endpoints.to_vec())?.with_retry(once.clone());
    anyhow::ensure!(
        plaintext.list_topics().await.is_err(),
        "a plaintext client was served by a --secure cluster"
    );
    let tls = TlsOptions {
        ca: security.dir.join("ca.pem"),
        cert: None,
        key: None,
    };
    let anonymous = Client::new(endpoints.to_vec())?
        .with_retry(once)
        .with_tls(&tls)?;
    match anonymous.list_topics().await {
        Err(e) if e.code() == tonic::Code::Unauthenticated => Ok(()),
        other => anyhow::bail!("a TLS client without a token got {other:?}, not UNAUTHENTICATED"),
    }
}
