//! `raftlog.v1.Auth`: bearer tokens, ACL entries and quotas (docs/security.md). Changes are replicated
//! commands, proposed here when this node leads or forwarded once to the leader; lists are this
//! node's applied state. Who may call what is `crate::auth::rules`' (cluster alter for changes,
//! cluster describe for lists), checked before these handlers run. Every change is audited.

use std::future::Future;
use std::time::{Duration, Instant};

use raftlog_core::auth::{self as model, Acl, TokenRecord};
use raftlog_core::limits::{ACLS_MAX, QUOTAS_MAX, TOKENS_MAX};
use raftlog_core::{Command, CommandResponse};
use raftlog_proto::v1::auth_client::AuthClient;
use raftlog_proto::v1::auth_server;
use raftlog_proto::v1::*;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::forward::{is_forwarded, leader_unreachable, write_deadline, Forwarder};
use crate::auth::{audit_change, caller_of, tokens, Caller};
use crate::group::{now_ms, WriteError};
use crate::node::NodeContext;

pub struct AuthService {
    ctx: NodeContext,
    forwarder: Forwarder,
}

impl AuthService {
    pub fn new(ctx: NodeContext, forwarder: Forwarder) -> Self {
        Self { ctx, forwarder }
    }

    /// Proposes `command` here if this node leads (answering with `applied`'s mapping of the
    /// outcome), else sends the request on to the leader with `forward`, once.
    async fn write_or_forward<T, Fut>(
        &self,
        forwarded: bool,
        deadline: Instant,
        command: Command,
        applied: impl FnOnce(CommandResponse) -> Result<T, ApiError>,
        forward: impl FnOnce(AuthClient<Channel>) -> Fut,
    ) -> Result<Response<T>, Status>
    where
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        match self.ctx.metadata().write(command, deadline).await {
            Ok(CommandResponse::Rejected(r)) => Err(ApiError::from(r).into()),
            Ok(response) => Ok(Response::new(applied(response)?)),
            Err(WriteError::NotLeader(leader)) => {
                let (channel, leader) = self.forwarder.route(forwarded, leader, self.ctx.id)?;
                forward(AuthClient::new(channel))
                    .await
                    .map_err(|s| leader_unreachable(s, leader))
            }
            Err(e) => Err(ApiError::write_failed(self.ctx.id, e).into()),
        }
    }

    fn deadline<T>(&self, request: &Request<T>) -> Instant {
        let max = Duration::from_millis(self.ctx.config.limits.write_timeout_ms_max);
        write_deadline(request.metadata(), max)
    }
}

/// A principal as given (`alice`, `User:alice`), checked: `User:` and a plain name.
fn user_principal(given: &str, what: &str) -> Result<String, ApiError> {
    let principal = model::principal(given.trim());
    match principal.strip_prefix("User:") {
        Some(name) if tokens::valid_name(name) => Ok(principal),
        _ => Err(ApiError::InvalidArgument(format!(
            "{what} '{}' is not a principal: give User:<name> or <name>, the name 1 to 128 bytes \
             of [A-Za-z0-9._@-]",
            given.escape_debug()
        ))),
    }
}

fn token_info(token: &TokenRecord) -> TokenInfo {
    TokenInfo {
        id: token.id.clone(),
        principal: token.principal.clone(),
        created_at_ms: token.created_at_ms,
        expires_at_ms: token.expires_at_ms.unwrap_or(0),
        created_by: token.created_by.clone(),
    }
}

fn acl_from_pb(entry: AclEntry) -> Result<Acl, ApiError> {
    use model::{Operation as O, PatternType as P, Permission as Pm, ResourceType as R};
    let invalid = |what: &str| ApiError::InvalidArgument(format!("acl.{what} is required"));
    let resource = match AclResourceType::try_from(entry.resource_type) {
        Ok(AclResourceType::Topic) => R::Topic,
        Ok(AclResourceType::Group) => R::Group,
        Ok(AclResourceType::Queue) => R::Queue,
        Ok(AclResourceType::Cluster) => R::Cluster,
        _ => return Err(invalid("resource_type (topic, group, queue or cluster)")),
    };
    let pattern_type = match AclPatternType::try_from(entry.pattern_type) {
        Ok(AclPatternType::Literal) | Ok(AclPatternType::Unspecified) => P::Literal,
        Ok(AclPatternType::Prefix) => P::Prefix,
        Err(_) => return Err(invalid("pattern_type (literal or prefix)")),
    };
    let operation = match AclOperation::try_from(entry.operation) {
        Ok(AclOperation::Read) => O::Read,
        Ok(AclOperation::Write) => O::Write,
        Ok(AclOperation::Create) => O::Create,
        Ok(AclOperation::Delete) => O::Delete,
        Ok(AclOperation::Alter) => O::Alter,
        Ok(AclOperation::Describe) => O::Describe,
        Ok(AclOperation::All) => O::All,
        _ => return Err(invalid("operation")),
    };
    let permission = match AclPermission::try_from(entry.permission) {
        Ok(AclPermission::Allow) => Pm::Allow,
        Ok(AclPermission::Deny) => Pm::Deny,
        _ => return Err(invalid("permission (allow or deny)")),
    };
    let principal = if entry.principal.trim() == model::ANY_PRINCIPAL {
        model::ANY_PRINCIPAL.to_string()
    } else {
        user_principal(&entry.principal, "acl.principal")?
    };
    let pattern_ok = entry.pattern.len() <= 255
        && entry
            .pattern
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'*'));
    if !pattern_ok || (entry.pattern.is_empty() && pattern_type == P::Literal) {
        return Err(ApiError::InvalidArgument(format!(
            "acl.pattern '{}' must be up to 255 bytes of [A-Za-z0-9._-] and `*` (a literal \
             pattern at least 1 byte; `*` alone names every resource)",
            entry.pattern.escape_debug()
        )));
    }
    if resource == R::Cluster
        && pattern_type == P::Literal
        && entry.pattern != "*"
        && entry.pattern != model::CLUSTER_RESOURCE
    {
        return Err(ApiError::InvalidArgument(format!(
            "the cluster resource is named '{}'",
            model::CLUSTER_RESOURCE
        )));
    }
    Ok(Acl {
        principal,
        resource,
        pattern: entry.pattern,
        pattern_type,
        operation,
        permission,
    })
}

pub fn acl_to_pb(id: u64, acl: &Acl) -> AclEntry {
    use model::{Operation as O, PatternType as P, Permission as Pm, ResourceType as R};
    AclEntry {
        id,
        principal: acl.principal.clone(),
        resource_type: match acl.resource {
            R::Topic => AclResourceType::Topic,
            R::Group => AclResourceType::Group,
            R::Queue => AclResourceType::Queue,
            R::Cluster => AclResourceType::Cluster,
        } as i32,
        pattern: acl.pattern.clone(),
        pattern_type: match acl.pattern_type {
            P::Literal => AclPatternType::Literal,
            P::Prefix => AclPatternType::Prefix,
        } as i32,
        operation: match acl.operation {
            O::Read => AclOperation::Read,
            O::Write => AclOperation::Write,
            O::Create => AclOperation::Create,
            O::Delete => AclOperation::Delete,
            O::Alter => AclOperation::Alter,
            O::Describe => AclOperation::Describe,
            O::All => AclOperation::All,
        } as i32,
        permission: match acl.permission {
            Pm::Allow => AclPermission::Allow,
            Pm::Deny => AclPermission::Deny,
        } as i32,
    }
}

fn unexpected(response: CommandResponse) -> ApiError {
    ApiError::Internal(format!("unexpected state machine response {response:?}"))
}

/// Who made a change, for the token's `created_by` and the audit line.
fn author(caller: Option<&Caller>) -> String {
    caller.map_or_else(|| "(auth off)".to_string(), |c| c.principal.clone())
}

#[tonic::async_trait]
impl auth_server::Auth for AuthService {
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let (forwarded, deadline, peer) = (
            is_forwarded(&request),
            self.deadline(&request),
            request.remote_addr(),
        );
        let caller = caller_of(&request).cloned();
        let req = request.into_inner();
        let principal = user_principal(&req.principal, "principal")?;
        let expires_in = (req.expires_in_ms > 0).then_some(req.expires_in_ms);
        let (text, record) =
            tokens::mint(&principal, &author(caller.as_ref()), now_ms(), expires_in);
        let info = token_info(&record);
        let command = Command::CreateToken {
            token: Box::new(record),
            tokens_max: TOKENS_MAX,
        };
        let response = self
            .write_or_forward(
                forwarded,
                deadline,
                command,
                |response| match response {
                    CommandResponse::TokenCreated => Ok(CreateTokenResponse {
                        token: text,
                        info: Some(info.clone()),
                    }),
                    other => Err(unexpected(other)),
                },
                |mut client| async move { client.create_token(Forwarder::forwarded(req)).await },
            )
            .await?;
        let id = response
            .get_ref()
            .info
            .as_ref()
            .map_or("", |i| i.id.as_str());
        audit_change(
            caller.as_ref(),
            "Auth/CreateToken",
            peer,
            &format!("token {id} created for {principal}"),
        );
        Ok(response)
    }

    async fn list_tokens(
        &self,
        _request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        let security = self.ctx.auth.security();
        Ok(Response::new(ListTokensResponse {
            tokens: security.tokens.values().map(token_info).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        let (forwarded, deadline, peer) = (
            is_forwarded(&request),
            self.deadline(&request),
            request.remote_addr(),
        );
        let caller = caller_of(&request).cloned();
        let req = request.into_inner();
        if req.id.is_empty() || req.id.len() > 64 {
            return Err(ApiError::InvalidArgument("id: a token id (16 hex digits)".into()).into());
        }
        let id = req.id.clone();
        let response = self
            .write_or_forward(
                forwarded,
                deadline,
                Command::RevokeToken { id: id.clone() },
                |response| match response {
                    CommandResponse::TokenRevoked { revoked: true } => Ok(RevokeTokenResponse {}),
                    CommandResponse::TokenRevoked { revoked: false } => Err(ApiError::NotFound(
                        format!("no token {id} (raftlog token list shows them)"),
                    )),
                    other => Err(unexpected(other)),
                },
                |mut client| async move { client.revoke_token(Forwarder::forwarded(req)).await },
            )
            .await?;
        audit_change(
            caller.as_ref(),
            "Auth/RevokeToken",
            peer,
            &format!("token {} revoked", id),
        );
        Ok(response)
    }

    async fn add_acl(
        &self,
        request: Request<AddAclRequest>,
    ) -> Result<Response<AddAclResponse>, Status> {
        let (forwarded, deadline, peer) = (
            is_forwarded(&request),
            self.deadline(&request),
            request.remote_addr(),
        );
        let caller = caller_of(&request).cloned();
        let req = request.into_inner();
        let entry = req
            .acl
            .clone()
            .ok_or_else(|| ApiError::InvalidArgument("acl is required".into()))?;
        let acl = acl_from_pb(entry)?;
        let described = acl.to_string();
        let response = self
            .write_or_forward(
                forwarded,
                deadline,
                Command::AddAcl {
                    acl: Box::new(acl),
                    acls_max: ACLS_MAX,
                },
                |response| match response {
                    CommandResponse::AclAdded { id, existed } => Ok(AddAclResponse { id, existed }),
                    other => Err(unexpected(other)),
                },
                |mut client| async move { client.add_acl(Forwarder::forwarded(req)).await },
            )
            .await?;
        audit_change(
            caller.as_ref(),
            "Auth/AddAcl",
            peer,
            &format!("ACL {} added: {described}", response.get_ref().id),
        );
        Ok(response)
    }

    async fn list_acls(
        &self,
        request: Request<ListAclsRequest>,
    ) -> Result<Response<ListAclsResponse>, Status> {
        let req = request.into_inner();
        let only = (!req.principal.is_empty())
            .then(|| user_principal(&req.principal, "principal"))
            .transpose()?;
        let security = self.ctx.auth.security();
        let acls = security
            .acls
            .iter()
            .filter(|(_, acl)| {
                only.as_ref()
                    .is_none_or(|p| acl.principal == *p || acl.principal == model::ANY_PRINCIPAL)
            })
            .map(|(id, acl)| acl_to_pb(*id, acl))
            .collect();
        Ok(Response::new(ListAclsResponse { acls }))
    }

    async fn remove_acl(
        &self,
        request: Request<RemoveAclRequest>,
    ) -> Result<Response<RemoveAclResponse>, Status> {
        let (forwarded, deadline, peer) = (
            is_forwarded(&request),
            self.deadline(&request),
            request.remote_addr(),
        );
        let caller = caller_of(&request).cloned();
        let req = request.into_inner();
        let id = req.id;
        let before = self.ctx.auth.security().acls.get(&id).map(Acl::to_string);
        let response = self
            .write_or_forward(
                forwarded,
                deadline,
                Command::RemoveAcl { id },
                |response| match response {
                    CommandResponse::AclRemoved { removed: true } => Ok(RemoveAclResponse {}),
                    CommandResponse::AclRemoved { removed: false } => Err(ApiError::NotFound(
                        format!("no ACL entry {id} (raftlog acl list shows them)"),
                    )),
                    other => Err(unexpected(other)),
                },
                |mut client| async move { client.remove_acl(Forwarder::forwarded(req)).await },
            )
            .await?;
        audit_change(
            caller.as_ref(),
            "Auth/RemoveAcl",
            peer,
            &format!(
                "ACL {id} removed: {}",
                before.as_deref().unwrap_or("(not applied here yet)")
            ),
        );
        Ok(response)
    }

    async fn set_quota(
        &self,
        request: Request<SetQuotaRequest>,
    ) -> Result<Response<SetQuotaResponse>, Status> {
        let (forwarded, deadline, peer) = (
            is_forwarded(&request),
            self.deadline(&request),
            request.remote_addr(),
        );
        let caller = caller_of(&request).cloned();
        let req = request.into_inner();
        let given = req
            .quota
            .clone()
            .ok_or_else(|| ApiError::InvalidArgument("quota is required".into()))?;
        let principal = user_principal(&given.principal, "quota.principal")?;
        let quota = model::Quota {
            produce_bytes_per_sec: given.produce_bytes_per_sec,
            fetch_bytes_per_sec: given.fetch_bytes_per_sec,
            requests_per_sec: given.requests_per_sec,
        };
        let caps = model::CreationCaps {
            topics: given.topics_max,
            partitions: given.partitions_max,
            groups: given.groups_max,
        };
        let command = Command::SetLimits {
            principal: principal.clone(),
            quota,
            caps,
            quotas_max: QUOTAS_MAX,
        };
        let response = self
            .write_or_forward(
                forwarded,
                deadline,
                command,
                |response| match response {
                    CommandResponse::QuotaSet => Ok(SetQuotaResponse {}),
                    other => Err(unexpected(other)),
                },
                |mut client| async move { client.set_quota(Forwarder::forwarded(req)).await },
            )
            .await?;
        audit_change(
            caller.as_ref(),
            "Auth/SetQuota",
            peer,
            &format!("quota of {principal} set to {quota:?}, {caps:?}"),
        );
        Ok(response)
    }

    async fn list_quotas(
        &self,
        _request: Request<ListQuotasRequest>,
    ) -> Result<Response<ListQuotasResponse>, Status> {
        let security = self.ctx.auth.security();
        let principals: std::collections::BTreeSet<&String> =
            security.quotas.keys().chain(security.caps.keys()).collect();
        let quotas = principals
            .into_iter()
            .map(|principal| {
                let q = security.quotas.get(principal).copied().unwrap_or_default();
                let caps = security.caps.get(principal).copied().unwrap_or_default();
                Quota {
                    principal: principal.clone(),
                    produce_bytes_per_sec: q.produce_bytes_per_sec,
                    fetch_bytes_per_sec: q.fetch_bytes_per_sec,
                    requests_per_sec: q.requests_per_sec,
                    topics_max: caps.topics,
                    partitions_max: caps.partitions,
                    groups_max: caps.groups,
                }
            })
            .collect();
        Ok(Response::new(ListQuotasResponse { quotas }))
    }

    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        let auth = &self.ctx.auth;
        // With auth off the layer authenticates no one: say who the credentials would name.
        let caller = match caller_of(&request) {
            Some(caller) => Some(caller.clone()),
            None => {
                let (metadata, extensions) = (request.metadata(), request.extensions());
                auth.authenticate(&metadata.clone().into_headers(), extensions)
                    .ok()
            }
        };
        Ok(Response::new(WhoAmIResponse {
            principal: caller
                .as_ref()
                .map_or(String::new(), |c| c.principal.clone()),
            super_user: caller.is_some_and(|c| c.super_user),
            auth_enabled: auth.enabled(),
        }))
    }
}
