//! `raftlog cert`: a cluster CA and the certificates of its nodes and clients, made with rcgen
//! (no openssl needed). The names follow docs/security.md: a node's certificate carries the DNS
//! name `node-<id>` (its identity to its peers) and the names clients dial it by; a client's
//! certificate carries its name as common name.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use clap::Subcommand;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;

use crate::output;

#[derive(Clone, Subcommand)]
pub enum CertCmd {
    /// Create the cluster CA: DIR/ca.pem (give it to every node and client) and DIR/ca-key.pem
    /// (keep it secret: it signs node and client certificates).
    Ca {
        /// Directory of the files.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "raftlog cluster CA")]
        name: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// A node's certificate and key, signed by the CA in DIR: DIR/node-ID.pem, DIR/node-ID-key.pem.
    #[command(
        after_help = "The certificate names node-ID (how peers recognise the node) and every --host \
        (how clients reach it: IP addresses and DNS names).\n\
        Example: raftlog cert node 1 --host 10.0.0.1 --host raftlog-1.internal --dir pki"
    )]
    Node {
        /// The node's id (its node_id setting).
        id: u64,
        /// An IP address or DNS name clients dial the node by (repeat for each).
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        /// Directory of the CA and of the new files.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// A client's certificate and key, signed by the CA in DIR: DIR/NAME.pem, DIR/NAME-key.pem.
    Client {
        /// The client's name (the certificate's common name).
        name: String,
        /// Directory of the CA and of the new files.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(cmd: CertCmd, as_json: bool) -> anyhow::Result<()> {
    let written = match cmd {
        CertCmd::Ca {
            dir,
            name,
            days,
            force,
        } => {
            let mut params = params(&name, days)?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let key = KeyPair::generate()?;
            let cert = params.self_signed(&key)?;
            write(&dir, "ca", &cert.pem(), &key.serialize_pem(), force)?
        }
        CertCmd::Node {
            id,
            hosts,
            dir,
            days,
            force,
        } => {
            if id == 0 {
                bail!("node ids are positive");
            }
            let name = format!("node-{id}");
            let mut params = params(&name, days)?;
            params.subject_alt_names = CertificateParams::new(
                std::iter::once(name.clone())
                    .chain(hosts)
                    .collect::<Vec<_>>(),
            )
            .context("a --host is neither an IP address nor a DNS name")?
            .subject_alt_names;
            // A node is a server to clients and peers, and a client of its peers.
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            sign(&dir, &name, params, force)?
        }
        CertCmd::Client {
            name,
            dir,
            days,
            force,
        } => {
            if name.is_empty() || name.contains(['/', '\0']) || name == "ca" {
                bail!("'{name}' cannot name a client: it becomes a file name");
            }
            let mut params = params(&name, days)?;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            sign(&dir, &name, params, force)?
        }
    };
    if as_json {
        output::json(&json!({ "cert": written.0, "key": written.1 }));
    } else {
        output::line(&format!(
            "wrote {} and {} (private: keep it so)",
            written.0.display(),
            written.1.display()
        ));
    }
    Ok(())
}

/// A certificate's parameters: common name `name`, valid from now for `days`.
fn params(name: &str, days: u32) -> anyhow::Result<CertificateParams> {
    if days == 0 {
        bail!("--days must be at least 1");
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    let now = SystemTime::now();
    // A minute back: a peer whose clock is slightly behind still accepts a fresh certificate.
    params.not_before = (now - Duration::from_secs(60)).into();
    params.not_after = (now + Duration::from_secs(u64::from(days) * 86_400)).into();
    Ok(params)
}

/// Signs `params` with the CA in `dir` and writes `dir/name.pem` and `dir/name-key.pem`.
fn sign(
    dir: &Path,
    name: &str,
    params: CertificateParams,
    force: bool,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (ca_path, ca_key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let ca_pem = std::fs::read_to_string(&ca_path).with_context(|| {
        format!(
            "reading the CA certificate {} (create a CA first: raftlog cert ca --dir {})",
            ca_path.display(),
            dir.display()
        )
    })?;
    let ca_key = std::fs::read_to_string(&ca_key_path)
        .with_context(|| format!("reading the CA key {}", ca_key_path.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key)
        .with_context(|| format!("{} is not a private key", ca_key_path.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .with_context(|| format!("{} is not a CA certificate", ca_path.display()))?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write(dir, name, &cert.pem(), &key.serialize_pem(), force)
}

/// Writes `dir/name.pem` and `dir/name-key.pem` (readable by its owner only); refuses to
/// overwrite either unless `force`.
fn write(
    dir: &Path,
    name: &str,
    cert: &str,
    key: &str,
    force: bool,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    for path in [&cert_path, &key_path] {
        if !force && path.exists() {
            bail!("{} exists; --force overwrites it", path.display());
        }
    }
    let save = |path: &Path, text: &str, mode: u32| -> anyhow::Result<()> {
        // Written next to the target and renamed over it: a node that reloads on file change
        // never reads half a file.
        let partial = path.with_extension("pem.partial");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&partial)
            .with_context(|| format!("writing {}", partial.display()))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))
    };
    save(&key_path, key, 0o600)?;
    save(&cert_path, cert, 0o644)?;
    Ok((cert_path, key_path))
}
