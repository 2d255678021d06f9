//! Test certificates made with rcgen, written as PEM files the way an operator lays them out
//! (docs/security.md): `ca.pem`, `node-<id>.pem` + `node-<id>-key.pem`, `<name>.pem` +
//! `<name>-key.pem`. Besides good certificates it makes the bad ones the TLS tests need: from
//! another CA, expired, naming a node outside the membership.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A CA and the directory its files go to.
pub struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// When a certificate is valid.
#[derive(Clone, Copy)]
pub enum Validity {
    /// From a minute ago for a day.
    Current,
    /// Expired an hour ago.
    Expired,
    /// From a minute ago for this long.
    For(Duration),
}

impl Pki {
    /// A new CA named `name`, its certificate written to `dir/ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            ca,
        }
    }

    /// The same layout as [`Pki::new`] with `ca.pem` and `client` files, for a cluster's
    /// [`crate::NodeOptions::tls_dir`]: a CA, the certificates of nodes `1..=nodes`, a client.
    pub fn for_cluster(dir: &Path, nodes: u64) -> Pki {
        let pki = Pki::new(dir, "raftlog test CA");
        for id in 1..=nodes {
            pki.node(id, Validity::Current);
        }
        pki.client("client", Validity::Current);
        pki
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// This CA's certificate in PEM.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// Node `id`'s certificate: DNS names `node-<id>` and `localhost`, IP 127.0.0.1; writes
    /// `node-<id>.pem` and `node-<id>-key.pem`, returns their paths.
    pub fn node(&self, id: u64, validity: Validity) -> (PathBuf, PathBuf) {
        self.issue(
            &format!("node-{id}"),
            &[&format!("node-{id}"), "localhost", "127.0.0.1"],
            validity,
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// A client's certificate, common name `name`, no node identity.
    pub fn client(&self, name: &str, validity: Validity) -> (PathBuf, PathBuf) {
        self.issue(name, &[], validity, &[ExtendedKeyUsagePurpose::ClientAuth])
    }

    /// Issues a certificate named `stem` with subject alternative names `sans` and writes
    /// `stem.pem` and `stem-key.pem` (replacing them by rename, as an operator rotating would).
    pub fn issue(
        &self,
        stem: &str,
        sans: &[&str],
        validity: Validity,
        usages: &[ExtendedKeyUsagePurpose],
    ) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, stem);
        params.extended_key_usages = usages.to_vec();
        let now = SystemTime::now();
        let (from, until) = match validity {
            Validity::Current => (
                now - Duration::from_secs(60),
                now + Duration::from_secs(86_400),
            ),
            Validity::Expired => (
                now - Duration::from_secs(86_400),
                now - Duration::from_secs(3600),
            ),
            Validity::For(span) => (now - Duration::from_secs(60), now + span),
        };
        params.not_before = from.into();
        params.not_after = until.into();
        let key = KeyPair::generate().unwrap();
        let issuer: &rcgen::Issuer<'static, KeyPair> = &self.ca;
        let cert = params.signed_by(&key, issuer).unwrap();
        let cert_path = self.dir.join(format!("{stem}.pem"));
        let key_path = self.dir.join(format!("{stem}-key.pem"));
        replace(&key_path, &key.serialize_pem());
        replace(&cert_path, &cert.pem());
        (cert_path, key_path)
    }
}

/// Writes `path` whole, by renaming a complete file over it.
pub fn replace(path: &Path, text: &str) {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).unwrap();
    std::fs::rename(&partial, path).unwrap();
}
