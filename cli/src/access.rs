//! `raftlog token ...`, `raftlog acl ...`, `raftlog quota ...` and `raftlog whoami`: bearer
//! tokens, ACL entries and quotas (docs/security.md). Changes go to the leader; lists come from the first node that answers.

use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use raftlog_client::pb;
use serde_json::json;

use crate::output::{self, Table};
use crate::{units, Ctx};

#[derive(Subcommand, Clone)]
pub enum TokenCmd {
    /// Create a bearer token for a principal and print it (once: the cluster keeps only a hash).
    Create {
        /// Who the token stands for: a name (taken as User:<name>) or User:<name>.
        #[arg(long)]
        principal: String,
        /// The token stops working this long after now, e.g. 90d, 12h [default: never].
        #[arg(long, value_parser = units::duration, value_name = "DURATION")]
        expires_in: Option<Duration>,
    },
    /// List the tokens: id, principal, creation and expiry (never the secret).
    List,
    /// Revoke a token by id: each node refuses it once it has applied the revocation.
    Revoke {
        /// The token's id (16 hex digits; `token list` shows it).
        id: String,
    },
}

#[derive(Subcommand, Clone)]
pub enum AclCmd {
    /// Add an entry: allow (or deny) a principal an operation on resources.
    Add {
        /// Who: a name (taken as User:<name>), User:<name>, or * for everyone.
        #[arg(long)]
        principal: String,
        /// The kind of resource.
        #[arg(long, value_enum)]
        resource: Resource,
        /// The resources' names: exact, with * for any run of characters (`*` alone: all), or a
        /// prefix with --prefix. For the cluster: `cluster`.
        #[arg(long, default_value = "*")]
        name: String,
        /// Take --name as a prefix.
        #[arg(long)]
        prefix: bool,
        /// What may (or may not) be done; `all` is every operation.
        #[arg(long, value_enum)]
        operation: Op,
        /// Deny instead of allow (a deny wins over any allow).
        #[arg(long)]
        deny: bool,
    },
    /// List the entries (of one principal and *, with --principal).
    List {
        /// Only this principal's entries (and those for everyone).
        #[arg(long)]
        principal: Option<String>,
    },
    /// Remove an entry by id (`acl list` shows ids).
    Remove {
        /// The entry's id.
        id: u64,
    },
}

#[derive(Subcommand, Clone)]
pub enum QuotaCmd {
    /// Set a principal's quota: rates (each node enforces them on its own) and creation caps
    /// (for the whole cluster). Sets all of them: a flag left out is no limit; all 0 removes it.
    Set {
        /// Whose: a name (taken as User:<name>) or User:<name>.
        #[arg(long)]
        principal: String,
        /// Record bytes it may produce per second on each node, e.g. 1MiB [default: 0, no limit].
        #[arg(long, value_parser = units::size, default_value = "0", value_name = "SIZE")]
        produce_bytes_per_sec: u64,
        /// Record bytes it may fetch per second on each node [default: 0, no limit].
        #[arg(long, value_parser = units::size, default_value = "0", value_name = "SIZE")]
        fetch_bytes_per_sec: u64,
        /// Calls it may make per second on each node [default: 0, no limit].
        #[arg(long, default_value = "0", value_name = "N")]
        requests_per_sec: u64,
        /// Topics it may own (created and not deleted) [default: 0, no cap].
        #[arg(long, default_value = "0", value_name = "N")]
        topics_max: u32,
        /// Partitions its topics may have in all [default: 0, no cap].
        #[arg(long, default_value = "0", value_name = "N")]
        partitions_max: u32,
        /// Consumer groups and queues it may own [default: 0, no cap].
        #[arg(long, default_value = "0", value_name = "N")]
        groups_max: u32,
    },
    /// List the principals with a quota.
    List,
}

#[derive(ValueEnum, Clone, Copy)]
pub enum Resource {
    Topic,
    Group,
    Queue,
    Cluster,
}

#[derive(ValueEnum, Clone, Copy)]
pub enum Op {
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    All,
}

pub(crate) fn time_ms(ms: i64) -> String {
    if ms <= 0 {
        return "never".into();
    }
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

pub async fn token(ctx: &Ctx, cmd: TokenCmd) -> anyhow::Result<()> {
    let client = &ctx.client;
    match cmd {
        TokenCmd::Create {
            principal,
            expires_in,
        } => {
            let request = pb::CreateTokenRequest {
                principal,
                expires_in_ms: expires_in.map_or(0, |d| d.as_millis() as u64),
            };
            let created = client
                .auth_write(|mut auth| {
                    let request = request.clone();
                    async move { auth.create_token(request).await }
                })
                .await?;
            let info = created.info.unwrap_or_default();
            if ctx.json {
                output::json(&json!({
                    "token": created.token,
                    "id": info.id,
                    "principal": info.principal,
                    "expires_at_ms": info.expires_at_ms,
                }));
            } else {
                output::line(&created.token);
                eprintln!(
                    "token {} for {} (expires: {}); shown only now: keep it (RAFTLOG_TOKEN)",
                    info.id,
                    info.principal,
                    time_ms(info.expires_at_ms)
                );
            }
        }
        TokenCmd::List => {
            let tokens = first_answer(ctx, |mut auth| async move {
                auth.list_tokens(pb::ListTokensRequest {}).await
            })
            .await?
            .tokens;
            if ctx.json {
                let list: Vec<_> = tokens
                    .iter()
                    .map(|t| {
                        json!({"id": t.id, "principal": t.principal, "created_at_ms": t.created_at_ms,
                               "expires_at_ms": t.expires_at_ms, "created_by": t.created_by})
                    })
                    .collect();
                output::json_pretty(&json!(list));
                return Ok(());
            }
            let mut table = Table::new(["id", "principal", "created", "expires", "created by"]);
            for t in &tokens {
                table.row([
                    t.id.clone(),
                    t.principal.clone(),
                    time_ms(t.created_at_ms),
                    time_ms(t.expires_at_ms),
                    t.created_by.clone(),
                ]);
            }
            output::line(table.render().trim_end());
        }
        TokenCmd::Revoke { id } => {
            let request = pb::RevokeTokenRequest { id: id.clone() };
            client
                .auth_write(|mut auth| {
                    let request = request.clone();
                    async move { auth.revoke_token(request).await }
                })
                .await?;
            if ctx.json {
                output::json(&json!({"revoked": id}));
            } else {
                output::line(&format!("revoked token {id}"));
            }
        }
    }
    Ok(())
}

pub async fn acl(ctx: &Ctx, cmd: AclCmd) -> anyhow::Result<()> {
    let client = &ctx.client;
    match cmd {
        AclCmd::Add {
            principal,
            resource,
            name,
            prefix,
            operation,
            deny,
        } => {
            let entry = pb::AclEntry {
                id: 0,
                principal,
                resource_type: resource_pb(resource) as i32,
                pattern: if matches!(resource, Resource::Cluster) && name == "*" {
                    "cluster".to_string()
                } else {
                    name
                },
                pattern_type: if prefix {
                    pb::AclPatternType::Prefix
                } else {
                    pb::AclPatternType::Literal
                } as i32,
                operation: op_pb(operation) as i32,
                permission: if deny {
                    pb::AclPermission::Deny
                } else {
                    pb::AclPermission::Allow
                } as i32,
            };
            let request = pb::AddAclRequest {
                acl: Some(entry.clone()),
            };
            let added = client
                .auth_write(|mut auth| {
                    let request = request.clone();
                    async move { auth.add_acl(request).await }
                })
                .await?;
            if ctx.json {
                output::json(&json!({"id": added.id, "existed": added.existed}));
            } else if added.existed {
                output::line(&format!("ACL entry {} exists already", added.id));
            } else {
                output::line(&format!("added ACL entry {}", added.id));
            }
        }
        AclCmd::List { principal } => {
            let request = pb::ListAclsRequest {
                principal: principal.unwrap_or_default(),
            };
            let acls = first_answer(ctx, |mut auth| {
                let request = request.clone();
                async move { auth.list_acls(request).await }
            })
            .await?
            .acls;
            if ctx.json {
                let list: Vec<_> = acls.iter().map(acl_json).collect();
                output::json_pretty(&json!(list));
                return Ok(());
            }
            let mut table = Table::new([
                "id",
                "principal",
                "permission",
                "operation",
                "resource",
                "pattern",
                "pattern type",
            ]);
            for a in &acls {
                let j = acl_json(a);
                table.row([
                    a.id.to_string(),
                    a.principal.clone(),
                    j["permission"].as_str().unwrap_or("").to_string(),
                    j["operation"].as_str().unwrap_or("").to_string(),
                    j["resource"].as_str().unwrap_or("").to_string(),
                    a.pattern.clone(),
                    j["pattern_type"].as_str().unwrap_or("").to_string(),
                ]);
            }
            output::line(table.render().trim_end());
        }
        AclCmd::Remove { id } => {
            client
                .auth_write(
                    |mut auth| async move { auth.remove_acl(pb::RemoveAclRequest { id }).await },
                )
                .await?;
            if ctx.json {
                output::json(&json!({"removed": id}));
            } else {
                output::line(&format!("removed ACL entry {id}"));
            }
        }
    }
    Ok(())
}

pub async fn quota(ctx: &Ctx, cmd: QuotaCmd) -> anyhow::Result<()> {
    match cmd {
        QuotaCmd::Set {
            principal,
            produce_bytes_per_sec,
            fetch_bytes_per_sec,
            requests_per_sec,
            topics_max,
            partitions_max,
            groups_max,
        } => {
            let request = pb::SetQuotaRequest {
                quota: Some(pb::Quota {
                    principal: principal.clone(),
                    produce_bytes_per_sec,
                    fetch_bytes_per_sec,
                    requests_per_sec,
                    topics_max,
                    partitions_max,
                    groups_max,
                }),
            };
            ctx.client
                .auth_write(|mut auth| {
                    let request = request.clone();
                    async move { auth.set_quota(request).await }
                })
                .await?;
            if ctx.json {
                output::json(
                    &json!({"principal": principal, "produce_bytes_per_sec": produce_bytes_per_sec,
                            "fetch_bytes_per_sec": fetch_bytes_per_sec, "requests_per_sec": requests_per_sec,
                            "topics_max": topics_max, "partitions_max": partitions_max,
                            "groups_max": groups_max}),
                );
            } else {
                output::line(&format!("quota of {principal} set"));
            }
        }
        QuotaCmd::List => {
            let quotas = first_answer(ctx, |mut auth| async move {
                auth.list_quotas(pb::ListQuotasRequest {}).await
            })
            .await?
            .quotas;
            if ctx.json {
                let list: Vec<_> = quotas
                    .iter()
                    .map(|q| {
                        json!({"principal": q.principal, "produce_bytes_per_sec": q.produce_bytes_per_sec,
                               "fetch_bytes_per_sec": q.fetch_bytes_per_sec, "requests_per_sec": q.requests_per_sec,
                               "topics_max": q.topics_max, "partitions_max": q.partitions_max,
                               "groups_max": q.groups_max})
                    })
                    .collect();
                output::json_pretty(&json!(list));
                return Ok(());
            }
            let limit = |n: u64| {
                if n == 0 {
                    "-".to_string()
                } else {
                    n.to_string()
                }
            };
            let mut table = Table::new([
                "principal",
                "produce bytes/s",
                "fetch bytes/s",
                "requests/s",
                "topics",
                "partitions",
                "groups",
            ]);
            for q in &quotas {
                table.row([
                    q.principal.clone(),
                    limit(q.produce_bytes_per_sec),
                    limit(q.fetch_bytes_per_sec),
                    limit(q.requests_per_sec),
                    limit(q.topics_max.into()),
                    limit(q.partitions_max.into()),
                    limit(q.groups_max.into()),
                ]);
            }
            output::line(table.render().trim_end());
        }
    }
    Ok(())
}

pub async fn whoami(ctx: &Ctx) -> anyhow::Result<()> {
    let me = first_answer(ctx, |mut auth| async move {
        auth.who_am_i(pb::WhoAmIRequest {}).await
    })
    .await?;
    if ctx.json {
        output::json(
            &json!({"principal": me.principal, "super_user": me.super_user,
                             "auth_enabled": me.auth_enabled}),
        );
    } else {
        let who = if me.principal.is_empty() {
            "(anonymous)"
        } else {
            &me.principal
        };
        let extra = match (me.auth_enabled, me.super_user) {
            (false, _) => " (auth is off on this node)",
            (true, true) => " (super-user)",
            (true, false) => "",
        };
        output::line(&format!("{who}{extra}"));
    }
    Ok(())
}

/// The answer of the first endpoint that gives one (reads: any node's applied state will do).
pub(crate) async fn first_answer<T, F, Fut>(ctx: &Ctx, mut call: F) -> anyhow::Result<T>
where
    F: FnMut(pb::auth_client::AuthClient<raftlog_client::Connection>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut last = None;
    for addr in ctx.client.endpoints() {
        match call(ctx.client.auth_at(addr)?).await {
            Ok(answer) => return Ok(answer.into_inner()),
            // A refusal is the same on every node: no use asking the next.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated
                        | tonic::Code::PermissionDenied
                        | tonic::Code::InvalidArgument
                ) =>
            {
                return Err(raftlog_client::Error::Status(status).into())
            }
            Err(status) => last = Some(status),
        }
    }
    Err(raftlog_client::Error::Status(
        last.unwrap_or_else(|| tonic::Status::unavailable("no endpoint given")),
    )
    .into())
}

fn resource_pb(r: Resource) -> pb::AclResourceType {
    match r {
        Resource::Topic => pb::AclResourceType::Topic,
        Resource::Group => pb::AclResourceType::Group,
        Resource::Queue => pb::AclResourceType::Queue,
        Resource::Cluster => pb::AclResourceType::Cluster,
    }
}

fn op_pb(o: Op) -> pb::AclOperation {
    match o {
        Op::Read => pb::AclOperation::Read,
        Op::Write => pb::AclOperation::Write,
        Op::Create => pb::AclOperation::Create,
        Op::Delete => pb::AclOperation::Delete,
        Op::Alter => pb::AclOperation::Alter,
        Op::Describe => pb::AclOperation::Describe,
        Op::All => pb::AclOperation::All,
    }
}

pub(crate) fn acl_json(a: &pb::AclEntry) -> serde_json::Value {
    let lower = |s: &str, prefix: &str| s.trim_start_matches(prefix).to_ascii_lowercase();
    let resource = pb::AclResourceType::try_from(a.resource_type)
        .map(|r| lower(r.as_str_name(), "ACL_RESOURCE_TYPE_"))
        .unwrap_or_default();
    let operation = pb::AclOperation::try_from(a.operation)
        .map(|o| lower(o.as_str_name(), "ACL_OPERATION_"))
        .unwrap_or_default();
    let permission = pb::AclPermission::try_from(a.permission)
        .map(|p| lower(p.as_str_name(), "ACL_PERMISSION_"))
        .unwrap_or_default();
    let pattern_type = pb::AclPatternType::try_from(a.pattern_type)
        .map(|p| lower(p.as_str_name(), "ACL_PATTERN_TYPE_"))
        .unwrap_or_default();
    json!({"id": a.id, "principal": a.principal, "resource": resource, "pattern": a.pattern,
           "pattern_type": pattern_type, "operation": operation, "permission": permission})
}
