//! Client authentication and authorization (docs/security.md): who a request comes from and
//! whether the replicated ACLs let it do what it asks.
//!
//! - this file: [`Auth`], the node's checker: it turns a request's credentials into a
//!   [`Caller`] (a bearer token, a client certificate, or a member node vouching for the client
//!   whose request it forwarded) and decides a (resource, operation) for a caller against the
//!   ACL entries this node has applied; the audit log lines and the metrics of both;
//! - [`rules`]: the one table that maps every RPC of every client-facing service to what it needs;
//! - [`layer`]: the tower layer that applies the table to every request before any handler runs;
//! - [`tokens`]: making and checking bearer tokens (salted SHA-256, constant-time compare);
//! - [`quota`]: the token buckets that hold each principal to its quota on this node.
//!
//! Checks read only this node's applied state, so a token revoked (or an ACL entry removed) stops
//! working on each node as soon as that node applies the change; expiry is judged by this node's
//! clock at the time of the check.

pub mod layer;
pub mod quota;
pub mod rules;
pub mod tokens;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderMap;
use raftlog_core::auth::{Operation, ResourceType, Security, Verdict};
use raftlog_store::StateView;
use tonic::Status;

use crate::raft::Raft;

/// Metadata a member node adds to a client's request it forwards to the leader: the principal it
/// authenticated. Honoured only on a connection whose certificate names a member node (so only
/// with TLS); from anyone else it is ignored.
pub const PRINCIPAL_HEADER: &str = "raftlog-principal";

/// The principal of the bootstrap token (`bootstrap_token_file`), a super-user.
pub const BOOTSTRAP_PRINCIPAL: &str = "User:bootstrap";

/// The target of the audit log lines: filter on it to keep them apart.
pub const AUDIT: &str = "raftlog::audit";

/// Who a request comes from, once authenticated.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `User:<name>`.
    pub principal: String,
    pub super_user: bool,
    /// The `authorization` header as the client sent it: forwarded with its request, so that the
    /// leader authenticates the client itself when no node can vouch (plaintext clusters).
    pub authorization: Option<http::HeaderValue>,
}

/// Why a request could not be authenticated: the metric's label and the caller's message.
#[derive(Debug)]
pub struct Unauthenticated {
    pub reason: &'static str,
    pub message: String,
}

/// The node's authentication and authorization, shared by the layer, the handlers that filter
/// lists, the Auth service and the admin HTTP server.
pub struct Auth {
    enabled: bool,
    /// Principals that may do everything (`super_users`), whatever the ACLs say.
    super_users: BTreeSet<String>,
    /// SHA-256 of the bootstrap token, if one is configured.
    bootstrap: Option<[u8; 32]>,
    view: Arc<StateView>,
    /// For the membership of a node that vouches for a forwarded request.
    raft: Raft,
    throttle: quota::Throttle,
}

impl Auth {
    pub fn new(
        enabled: bool,
        super_users: impl IntoIterator<Item = String>,
        bootstrap: Option<[u8; 32]>,
        view: Arc<StateView>,
        raft: Raft,
    ) -> Self {
        Self {
            enabled,
            super_users: super_users.into_iter().collect(),
            bootstrap,
            view,
            raft,
            throttle: quota::Throttle::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn security(&self) -> Arc<Security> {
        self.view.security()
    }

    /// Who sent a request with these headers over this connection (`extensions` carry its TLS
    /// certificates), in this order: a member node vouching for a client ([`PRINCIPAL_HEADER`]),
    /// a bearer token, a client certificate.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<Caller, Unauthenticated> {
        let certs = layer::peer_certs(extensions);
        let first_cert = certs.as_ref().and_then(|c| c.first().cloned());
        let node = first_cert.as_ref().and_then(crate::tls::node_id_of);
        let authorization = headers.get(http::header::AUTHORIZATION).cloned();
        if let (Some(node), Some(vouched)) = (node, headers.get(PRINCIPAL_HEADER)) {
            if self.is_member(node) {
                let principal = vouched.to_str().unwrap_or_default().to_string();
                if !principal.is_empty() {
                    return Ok(self.caller(principal, authorization));
                }
            }
        }
        if let Some(value) = &authorization {
            let principal = self.principal_of_token(value)?;
            return Ok(self.caller(principal, authorization));
        }
        match (first_cert, node) {
            (Some(cert), None) => match tokens::certificate_principal(&cert) {
                Some(principal) => Ok(self.caller(principal, None)),
                None => Err(Unauthenticated {
                    reason: "unusable_certificate",
                    message: "the client certificate names no usable identity (a common name or \
                              DNS name of [A-Za-z0-9._@-]); send a token"
                        .into(),
                }),
            },
            _ => Err(Unauthenticated {
                reason: "no_credentials",
                message: "authentication required: send `authorization: Bearer <token>` \
                          (raftlog --token / RAFTLOG_TOKEN) or a client certificate"
                    .into(),
            }),
        }
    }

    fn caller(&self, principal: String, authorization: Option<http::HeaderValue>) -> Caller {
        Caller {
            super_user: principal == BOOTSTRAP_PRINCIPAL || self.super_users.contains(&principal),
            principal,
            authorization,
        }
    }

    /// The principal of a bearer token, checked against the tokens this node has applied (and
    /// the bootstrap token).
    fn principal_of_token(&self, value: &http::HeaderValue) -> Result<String, Unauthenticated> {
        let malformed = || Unauthenticated {
            reason: "malformed",
            message: "the authorization header must be `Bearer <token>`".into(),
        };
        let text = value.to_str().map_err(|_| malformed())?;
        let token = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .ok_or_else(malformed)?
            .trim();
        if let Some(bootstrap) = &self.bootstrap {
            if tokens::matches_bootstrap(bootstrap, token) {
                return Ok(BOOTSTRAP_PRINCIPAL.to_string());
            }
        }
        let invalid = |reason| Unauthenticated {
            reason,
            message: "invalid or revoked token".into(),
        };
        let (id, secret) = tokens::parse(token).ok_or_else(|| invalid("unknown_token"))?;
        let security = self.view.security();
        let record = security
            .tokens
            .get(id)
            .ok_or_else(|| invalid("unknown_token"))?;
        if !tokens::verify(record, secret) {
            return Err(invalid("bad_secret"));
        }
        if record
            .expires_at_ms
            .is_some_and(|at| at <= crate::group::now_ms())
        {
            return Err(Unauthenticated {
                reason: "expired_token",
                message: format!("token {id} has expired; ask for a new one"),
            });
        }
        Ok(record.principal.clone())
    }

    /// Whether node `id` is in the group's current membership (or the node has none yet).
    fn is_member(&self, id: u64) -> bool {
        use openraft::async_runtime::watch::WatchReceiver;
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let membership = metrics.membership_config.membership();
        membership.get_node(&id).is_some() || membership.nodes().next().is_none()
    }

    /// Whether `caller` may do `operation` on `name` of `resource`; PERMISSION_DENIED naming all
    /// three (and audited) if not.
    pub fn check(
        &self,
        caller: &Caller,
        resource: ResourceType,
        name: &str,
        operation: Operation,
        rpc: &str,
        peer: Option<SocketAddr>,
    ) -> Result<(), Status> {
        let verdict = self.security().authorize(
            &caller.principal,
            caller.super_user,
            resource,
            name,
            operation,
        );
        match verdict {
            Verdict::Allowed => Ok(()),
            Verdict::Denied(_) | Verdict::NotAllowed => {
                Err(self.denied(caller, resource, name, operation, rpc, peer))
            }
        }
    }

    /// The refusal of `operation` on a resource, counted and audited.
    pub fn denied(
        &self,
        caller: &Caller,
        resource: ResourceType,
        name: &str,
        operation: Operation,
        rpc: &str,
        peer: Option<SocketAddr>,
    ) -> Status {
        metrics::counter!(crate::metrics::PERMISSION_DENIALS, "resource" => resource.to_string())
            .increment(1);
        tracing::info!(
            target: AUDIT,
            event = "permission_denied",
            principal = %caller.principal,
            rpc,
            peer = ?peer,
            resource = %resource,
            name,
            operation = %operation,
            "permission denied"
        );
        Status::permission_denied(format!(
            "{} may not {operation} {resource} '{}' (no ACL entry allows it, or one denies it)",
            caller.principal,
            name.escape_debug()
        ))
    }

    /// Admits a call of `caller` costing `amount` of `rate` under its quota (none: no limit), or
    /// refuses it with RESOURCE_EXHAUSTED, `retry-after-ms` and `raftlog-not-applied` (nothing
    /// was done).
    pub fn charge(&self, caller: &Caller, rate: quota::Rate, amount: u64) -> Result<(), Status> {
        let per_sec = self.per_sec(caller, rate);
        self.throttle
            .charge(
                &caller.principal,
                rate,
                per_sec,
                amount,
                std::time::Instant::now(),
            )
            .map_err(|wait| throttled(caller, rate, per_sec, wait))
    }

    /// Whether a call whose cost is known only once it is served (a fetch) may start now.
    pub fn admit_rate(&self, caller: &Caller, rate: quota::Rate) -> Result<(), Status> {
        let per_sec = self.per_sec(caller, rate);
        self.throttle
            .admit(&caller.principal, rate, per_sec, std::time::Instant::now())
            .map_err(|wait| throttled(caller, rate, per_sec, wait))
    }

    /// Charges what a call admitted by [`Self::admit_rate`] turned out to cost.
    pub fn debit(&self, caller: &Caller, rate: quota::Rate, amount: u64) {
        let per_sec = self.per_sec(caller, rate);
        self.throttle.debit(
            &caller.principal,
            rate,
            per_sec,
            amount,
            std::time::Instant::now(),
        );
    }

    fn per_sec(&self, caller: &Caller, rate: quota::Rate) -> u64 {
        self.security()
            .quotas
            .get(&caller.principal)
            .map_or(0, |quota| rate.of(quota))
    }

    /// Whether `caller` may `operation` the resource, without a refusal (for filtering lists).
    pub fn allows(
        &self,
        caller: &Caller,
        resource: ResourceType,
        name: &str,
        operation: Operation,
    ) -> bool {
        self.security().authorize(
            &caller.principal,
            caller.super_user,
            resource,
            name,
            operation,
        ) == Verdict::Allowed
    }
}

/// An authentication failure, counted and audited, as the caller's UNAUTHENTICATED.
pub fn unauthenticated(failure: Unauthenticated, rpc: &str, peer: Option<SocketAddr>) -> Status {
    metrics::counter!(crate::metrics::AUTH_FAILURES, "reason" => failure.reason).increment(1);
    tracing::info!(
        target: AUDIT,
        event = "authentication_failed",
        reason = failure.reason,
        rpc,
        peer = ?peer,
        "authentication failed"
    );
    Status::unauthenticated(failure.message)
}

/// Metadata of a throttled call's answer: how long to wait before trying again, in ms.
pub const RETRY_AFTER_HEADER: &str = "retry-after-ms";

/// A call over its quota, counted.
fn throttled(
    caller: &Caller,
    rate: quota::Rate,
    per_sec: u64,
    wait: std::time::Duration,
) -> Status {
    metrics::counter!(crate::metrics::THROTTLED, "rate" => rate.label()).increment(1);
    let wait_ms = wait.as_millis().max(1) as u64;
    let mut status = Status::resource_exhausted(format!(
        "{} is over its quota of {per_sec} {}/s on this node; retry in {wait_ms} ms",
        caller.principal,
        rate.label().replace('_', " ")
    ));
    status
        .metadata_mut()
        .insert(RETRY_AFTER_HEADER, wait_ms.into());
    // `api::error::NOT_APPLIED_HEADER` (a layer above this one): the client may retry it.
    status.metadata_mut().insert(
        "raftlog-not-applied",
        tonic::metadata::MetadataValue::from_static("1"),
    );
    status
}

/// The caller of a request as the layer authenticated it; `None` when auth is off.
pub fn caller_of<T>(request: &tonic::Request<T>) -> Option<&Caller> {
    request.extensions().get::<Caller>()
}

tokio::task_local! {
    /// The caller of the request being handled, for the forwarder to carry to the leader
    /// ([`crate::api::forward`]); set by the layer around each request when auth is on.
    pub static CURRENT_CALLER: Caller;
}

/// The principal of the request being handled, when auth is on.
pub fn current_principal() -> Option<String> {
    CURRENT_CALLER.try_with(|c| c.principal.clone()).ok()
}

/// `command` (one that may create a topic, group or queue) as proposed for the current caller:
/// wrapped in `Command::OnBehalfOf` when auth is on, so apply checks the caller's creation caps
/// and records it as the owner of what it creates.
pub fn on_behalf_of_caller(command: raftlog_core::Command) -> raftlog_core::Command {
    match current_principal() {
        Some(principal) => raftlog_core::Command::OnBehalfOf {
            principal,
            command: Box::new(command),
        },
        None => command,
    }
}

/// Adds what identifies the current caller to a request this node forwards: the client's own
/// `authorization` header, and the principal this node authenticated ([`PRINCIPAL_HEADER`],
/// which the leader honours because the forwarding connection presents a member node's
/// certificate).
pub fn forward_caller(metadata: &mut tonic::metadata::MetadataMap) {
    let _ = CURRENT_CALLER.try_with(|caller| {
        if let Some(authorization) = &caller.authorization {
            if let Ok(value) = authorization.to_str() {
                if let Ok(value) = value.parse() {
                    metadata.insert("authorization", value);
                }
            }
        }
        if let Ok(value) = caller.principal.parse() {
            metadata.insert(PRINCIPAL_HEADER, value);
        }
    });
}

/// An audit line for a change of the security state (a token or ACL entry created or removed).
pub fn audit_change(caller: Option<&Caller>, rpc: &str, peer: Option<SocketAddr>, what: &str) {
    tracing::info!(
        target: AUDIT,
        event = "security_change",
        principal = caller.map_or("(auth off)", |c| c.principal.as_str()),
        rpc,
        peer = ?peer,
        "{what}"
    );
}
