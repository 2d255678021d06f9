//! Bearer tokens and certificate identities: making a token (random id and secret, a salted
//! hash for the replicated state), checking one in constant time, and the principal a client
//! certificate stands for.
//!
//! A token's text is `raftlog_<id>_<secret>`: 16 hex digits of public id (so a check is one
//! lookup, and `token list`/`revoke` can name it) and 64 hex digits (256 bits) of secret. The
//! replicated state keeps SHA-256(salt ‖ secret) only. A fast hash is enough: the secret is
//! random and long, so there is nothing to guess from a stolen hash that a slow hash would
//! protect (slow hashes are for passwords people choose).

use raftlog_core::auth::TokenRecord;
use rand::RngCore;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "raftlog_";

/// A new token for `principal`: its text (shown once) and what the cluster stores.
pub fn mint(
    principal: &str,
    created_by: &str,
    now_ms: i64,
    expires_in_ms: Option<u64>,
) -> (String, TokenRecord) {
    let mut rng = rand::rng();
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    rng.fill_bytes(&mut salt);
    let (id, secret) = (hex::encode(id), hex::encode(secret));
    let record = TokenRecord {
        hash: hash(&salt, &secret),
        id: id.clone(),
        principal: principal.to_string(),
        salt,
        created_at_ms: now_ms,
        expires_at_ms: expires_in_ms
            .map(|ms| now_ms.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX))),
        created_by: created_by.to_string(),
    };
    (format!("{PREFIX}{id}_{secret}"), record)
}

fn hash(salt: &[u8], secret: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(secret.as_bytes());
    hasher.finalize().into()
}

/// A token's (id, secret), if the text has a token's shape.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
    (id.len() == 16 && !secret.is_empty()).then_some((id, secret))
}

/// Whether `secret` is the token's, comparing hashes in constant time (no timing tells how
/// much of a guess was right).
pub fn verify(record: &TokenRecord, secret: &str) -> bool {
    bool::from(hash(&record.salt, secret).ct_eq(&record.hash))
}

/// The SHA-256 the node keeps of its bootstrap token.
pub fn bootstrap_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

pub fn matches_bootstrap(bootstrap: &[u8; 32], token: &str) -> bool {
    bool::from(bootstrap_hash(token).ct_eq(bootstrap))
}

pub use raftlog_core::auth::valid_name;

/// The principal a client certificate stands for: `User:<common name>`, or when it has no usable
/// common name, `User:<first DNS name>`. (Node certificates, `node-<id>`, are peers, not clients:
/// the caller checks for those first.)
pub fn certificate_principal(cert: &CertificateDer) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let common_name = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| valid_name(cn));
    let name = match common_name {
        Some(cn) => cn.to_string(),
        None => {
            let san = parsed.subject_alternative_name().ok()??;
            san.value.general_names.iter().find_map(|name| match name {
                GeneralName::DNSName(dns) if valid_name(dns) => Some(dns.to_string()),
                _ => None,
            })?
        }
    };
    Some(format!("User:{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_verifies_and_nothing_else_does() {
        let (text, record) = mint("User:alice", "User:admin", 1_000, Some(60_000));
        let (id, secret) = parse(&text).expect("a token's shape");
        assert_eq!(id, record.id);
        assert!(verify(&record, secret));
        assert!(!verify(
            &record,
            &secret.replace('a', "b").replace('0', "1")
        ));
        assert!(!verify(&record, ""));
        assert_eq!(record.expires_at_ms, Some(61_000));
        assert!(!text.contains(&hex::encode(record.hash)));
        // Another token's secret with this id does not pass.
        let (other, _) = mint("User:alice", "User:admin", 1_000, None);
        assert!(!verify(&record, parse(&other).unwrap().1));
        for bad in [
            "",
            "raftlog_",
            "raftlog_abc_def",
            "Bearer x",
            "raftlog_0123456789abcdef_",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn principal_names_are_plain() {
        assert!(valid_name("alice"));
        assert!(valid_name("svc-orders.prod@team"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("a:b"));
        assert!(!valid_name("é"));
    }
}
