//! `raftlog user ...`: the principals of the cluster seen whole. A user is a principal
//! (`User:<name>`) with what the replicated state holds for it: its bearer tokens, the ACL
//! entries naming it and its quota. Creating a user is creating its first token; revoking one
//! revokes all its tokens (and, when asked, removes its ACL entries). Built on the Auth service
//! calls `raftlog token`, `acl` and `quota` use (docs/security.md).

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Subcommand;
use raftlog_client::pb;
use serde_json::json;

use crate::access::{acl_json, first_answer, time_ms};
use crate::output::{self, Table};
use crate::{units, Ctx};

#[derive(Subcommand, Clone)]
pub enum UserCmd {
    /// Create a user: a bearer token for it, printed once (the cluster keeps only a hash).
    Create {
        /// The user's name (or User:<name>).
        name: String,
        /// The token stops working this long after now, e.g. 90d, 12h [default: never].
        #[arg(long, value_parser = units::duration, value_name = "DURATION")]
        expires_in: Option<Duration>,
    },
    /// List the users the cluster knows of (by token, ACL entry or quota), with their counts.
    List,
    /// A user's tokens, ACL entries (its own and those for everyone) and quota.
    Describe {
        /// The user's name (or User:<name>).
        name: String,
    },
    /// Revoke all of a user's tokens: each node refuses them once it has applied the revocation.
    Revoke {
        /// The user's name (or User:<name>).
        name: String,
        /// Also remove the ACL entries naming it.
        #[arg(long)]
        acls: bool,
    },
}

/// `alice` → `User:alice`, as the nodes read a principal.
fn principal(name: &str) -> String {
    let name = name.trim();
    if name == "*" || name.contains(':') {
        name.to_string()
    } else {
        format!("User:{name}")
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// What the cluster holds, read from one node.
struct Holdings {
    tokens: Vec<pb::TokenInfo>,
    acls: Vec<pb::AclEntry>,
    quotas: Vec<pb::Quota>,
}

async fn holdings(ctx: &Ctx) -> anyhow::Result<Holdings> {
    let tokens = first_answer(ctx, |mut auth| async move {
        auth.list_tokens(pb::ListTokensRequest {}).await
    })
    .await?
    .tokens;
    let acls = first_answer(ctx, |mut auth| async move {
        auth.list_acls(pb::ListAclsRequest::default()).await
    })
    .await?
    .acls;
    let quotas = first_answer(ctx, |mut auth| async move {
        auth.list_quotas(pb::ListQuotasRequest {}).await
    })
    .await?
    .quotas;
    Ok(Holdings {
        tokens,
        acls,
        quotas,
    })
}

pub async fn user(ctx: &Ctx, cmd: UserCmd) -> anyhow::Result<()> {
    match cmd {
        UserCmd::Create { name, expires_in } => {
            crate::access::token(
                ctx,
                crate::access::TokenCmd::Create {
                    principal: name,
                    expires_in,
                },
            )
            .await
        }
        UserCmd::List => list(ctx).await,
        UserCmd::Describe { name } => describe(ctx, &principal(&name)).await,
        UserCmd::Revoke { name, acls } => revoke(ctx, &principal(&name), acls).await,
    }
}

#[derive(Default)]
struct Counts {
    tokens: usize,
    /// The earliest expiry of its tokens that expire (ms since the epoch).
    next_expiry_ms: Option<i64>,
    acls: usize,
    quota: bool,
}

async fn list(ctx: &Ctx) -> anyhow::Result<()> {
    let held = holdings(ctx).await?;
    let mut users: BTreeMap<String, Counts> = BTreeMap::new();
    for t in &held.tokens {
        let counts = users.entry(t.principal.clone()).or_default();
        counts.tokens += 1;
        if t.expires_at_ms > 0 {
            let soonest = counts
                .next_expiry_ms
                .map_or(t.expires_at_ms, |e| e.min(t.expires_at_ms));
            counts.next_expiry_ms = Some(soonest);
        }
    }
    for a in held.acls.iter().filter(|a| a.principal != "*") {
        users.entry(a.principal.clone()).or_default().acls += 1;
    }
    for q in &held.quotas {
        users.entry(q.principal.clone()).or_default().quota = true;
    }
    if ctx.json {
        let list: Vec<_> = users
            .iter()
            .map(|(p, c)| {
                json!({"principal": p, "tokens": c.tokens, "next_token_expiry_ms": c.next_expiry_ms,
                       "acls": c.acls, "quota": c.quota})
            })
            .collect();
        output::json_pretty(&json!(list));
        return Ok(());
    }
    let mut table = Table::new(["principal", "tokens", "next expiry", "acl entries", "quota"]);
    for (p, c) in &users {
        table.row([
            p.clone(),
            c.tokens.to_string(),
            c.next_expiry_ms.map_or("-".into(), time_ms),
            c.acls.to_string(),
            if c.quota { "yes" } else { "-" }.to_string(),
        ]);
    }
    output::line(table.render().trim_end());
    Ok(())
}

async fn describe(ctx: &Ctx, principal: &str) -> anyhow::Result<()> {
    let held = holdings(ctx).await?;
    let tokens: Vec<_> = held
        .tokens
        .iter()
        .filter(|t| t.principal == principal)
        .collect();
    let acls: Vec<_> = held
        .acls
        .iter()
        .filter(|a| a.principal == principal || a.principal == "*")
        .collect();
    let quota = held.quotas.iter().find(|q| q.principal == principal);
    if ctx.json {
        let tokens: Vec<_> = tokens
            .iter()
            .map(|t| {
                json!({"id": t.id, "created_at_ms": t.created_at_ms,
                            "expires_at_ms": t.expires_at_ms, "created_by": t.created_by})
            })
            .collect();
        let acls: Vec<_> = acls.iter().map(|a| acl_json(a)).collect();
        let quota = quota.map(|q| {
            json!({"produce_bytes_per_sec": q.produce_bytes_per_sec,
                   "fetch_bytes_per_sec": q.fetch_bytes_per_sec, "requests_per_sec": q.requests_per_sec,
                   "topics_max": q.topics_max, "partitions_max": q.partitions_max,
                   "groups_max": q.groups_max})
        });
        output::json_pretty(
            &json!({"principal": principal, "tokens": tokens, "acls": acls, "quota": quota}),
        );
        return Ok(());
    }
    output::line(principal);
    let mut table = Table::new(["token", "created", "expires", "created by"]);
    for t in &tokens {
        table.row([
            t.id.clone(),
            time_ms(t.created_at_ms),
            time_ms(t.expires_at_ms),
            t.created_by.clone(),
        ]);
    }
    output::line(&format!("\n{}", plural(tokens.len(), "token", "tokens")));
    if !tokens.is_empty() {
        output::line(table.render().trim_end());
    }
    let mut table = Table::new([
        "acl",
        "principal",
        "permission",
        "operation",
        "resource",
        "pattern",
    ]);
    for a in &acls {
        let j = acl_json(a);
        let pattern = match j["pattern_type"].as_str() {
            Some("prefix") => format!("{}* (prefix)", a.pattern),
            _ => a.pattern.clone(),
        };
        let field = |k: &str| j[k].as_str().unwrap_or("").to_string();
        table.row([
            a.id.to_string(),
            a.principal.clone(),
            field("permission"),
            field("operation"),
            field("resource"),
            pattern,
        ]);
    }
    output::line(&format!(
        "\n{} that apply",
        plural(acls.len(), "ACL entry", "ACL entries")
    ));
    if !acls.is_empty() {
        output::line(table.render().trim_end());
    }
    let limit = |n: u64, unit: &str| {
        if n == 0 {
            "no limit".to_string()
        } else {
            format!("{n}{unit}")
        }
    };
    match quota {
        Some(q) => {
            output::line(&format!(
                "\nrates per node: produce {}, fetch {}, requests {}",
                limit(q.produce_bytes_per_sec, " bytes/s"),
                limit(q.fetch_bytes_per_sec, " bytes/s"),
                limit(q.requests_per_sec, "/s")
            ));
            output::line(&format!(
                "may own: topics {}, partitions {}, groups {}",
                limit(q.topics_max.into(), ""),
                limit(q.partitions_max.into(), ""),
                limit(q.groups_max.into(), "")
            ));
        }
        None => output::line("\nno quota: no rate limits, no creation caps"),
    }
    Ok(())
}

async fn revoke(ctx: &Ctx, principal: &str, with_acls: bool) -> anyhow::Result<()> {
    let held = holdings(ctx).await?;
    let mut revoked = Vec::new();
    for t in held.tokens.iter().filter(|t| t.principal == principal) {
        let request = pb::RevokeTokenRequest { id: t.id.clone() };
        ctx.client
            .auth_write(|mut auth| {
                let request = request.clone();
                async move { auth.revoke_token(request).await }
            })
            .await?;
        revoked.push(t.id.clone());
    }
    let mut removed = Vec::new();
    if with_acls {
        for a in held.acls.iter().filter(|a| a.principal == principal) {
            let id = a.id;
            ctx.client
                .auth_write(
                    |mut auth| async move { auth.remove_acl(pb::RemoveAclRequest { id }).await },
                )
                .await?;
            removed.push(id);
        }
    }
    if ctx.json {
        output::json(&json!({"principal": principal, "revoked_tokens": revoked,
                             "removed_acls": removed}));
    } else {
        output::line(&format!(
            "{principal}: revoked {}{}",
            plural(revoked.len(), "token", "tokens"),
            if with_acls {
                format!(
                    ", removed {}",
                    plural(removed.len(), "ACL entry", "ACL entries")
                )
            } else {
                String::new()
            }
        ));
    }
    Ok(())
}
