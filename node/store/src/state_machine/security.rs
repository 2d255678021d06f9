//! Applying the security commands: `Command::CreateToken`, `RevokeToken`, `AddAcl`, `RemoveAcl`,
//! `SetQuota` and `SetLimits`. A token's row holds its salted hash
//! (`raftlog_core::auth::TokenRecord`), an ACL entry's row the entry, a quota's row the
//! principal's rates, a caps row its creation caps (enforced in `ownership.rs`); the tables are
//! small and kept whole in the view, where every request's authentication and authorization
//! reads them. Like the other tables, what an apply call changes
//! is published to the view only after its write batch is in RocksDB.

use std::sync::Arc;

use rocksdb::WriteBatch;

use super::{decode_err, StateMachine};
use crate::codec::{decode, encode};
use crate::keys::{self, sm_tag};
use raftlog_core::auth::{CreationCaps, Quota, Security, TokenRecord};
use raftlog_core::types::StorageError;
use raftlog_core::GroupId;
use raftlog_core::{Command, CommandResponse, Rejection};

impl StateMachine {
    /// Applies `Command::CreateToken`, `RevokeToken`, `AddAcl`, `RemoveAcl`, `SetQuota` or
    /// `SetLimits`.
    pub(super) fn apply_security_command(
        &mut self,
        command: &Command,
        batch: &mut WriteBatch,
    ) -> CommandResponse {
        let (group, cf) = (self.view.group, self.view.cf());
        let live = self.view.security();
        let security = self
            .security_changes
            .get_or_insert_with(|| Security::clone(&live));
        match command {
            Command::CreateToken { token, tokens_max } => {
                create_token(security, token, *tokens_max, (batch, group, cf))
            }
            Command::RevokeToken { id } => {
                let revoked = security.tokens.remove(id).is_some();
                if revoked {
                    batch.delete_cf(cf, keys::sm_token(group, id));
                }
                CommandResponse::TokenRevoked { revoked }
            }
            Command::AddAcl { acl, acls_max } => {
                if let Some(id) = security.find_acl(acl) {
                    return CommandResponse::AclAdded { id, existed: true };
                }
                if security.acls.len() >= *acls_max as usize {
                    return CommandResponse::Rejected(Rejection::TooManyAcls(*acls_max));
                }
                let id = self.next_acl_id;
                self.next_acl_id += 1;
                batch.put_cf(
                    cf,
                    keys::sm_singleton(group, sm_tag::NEXT_ACL_ID),
                    encode(&self.next_acl_id),
                );
                batch.put_cf(cf, keys::sm_acl(group, id), encode(&**acl));
                security.acls.insert(id, (**acl).clone());
                CommandResponse::AclAdded { id, existed: false }
            }
            Command::RemoveAcl { id } => {
                let removed = security.acls.remove(id).is_some();
                if removed {
                    batch.delete_cf(cf, keys::sm_acl(group, *id));
                }
                CommandResponse::AclRemoved { removed }
            }
            // Proposed before creation caps existed: the principal's caps stay as they are.
            Command::SetQuota {
                principal,
                quota,
                quotas_max,
            } => {
                let caps = security.caps.get(principal).copied().unwrap_or_default();
                set_limits(
                    security,
                    principal,
                    (quota, &caps),
                    *quotas_max,
                    (batch, group, cf),
                )
            }
            Command::SetLimits {
                principal,
                quota,
                caps,
                quotas_max,
            } => set_limits(
                security,
                principal,
                (quota, caps),
                *quotas_max,
                (batch, group, cf),
            ),
            other => unreachable!("not a security command: {other}"),
        }
    }

    /// Publishes the security tables this apply call changed (see `StateMachine::publish`).
    pub(super) fn publish_security(&mut self) {
        if let Some(security) = self.security_changes.take() {
            *self.view.security.write().expect("security table lock") = Arc::new(security);
        }
    }

    /// Reads the token, quota, caps and ACL rows (at open and after a snapshot is installed).
    pub(super) fn load_security(&self) -> Result<Security, StorageError> {
        let group = self.view.group;
        let mut security = Security::default();
        let prefix = keys::sm_singleton(group, sm_tag::TOKEN);
        for item in self.rows_under(&prefix) {
            let (_, value) = item?;
            let token: raftlog_core::auth::TokenRecord = decode(&value).map_err(decode_err)?;
            security.tokens.insert(token.id.clone(), token);
        }
        let prefix = keys::sm_singleton(group, sm_tag::QUOTA);
        for item in self.rows_under(&prefix) {
            let (key, value) = item?;
            let principal = String::from_utf8(key[prefix.len()..].to_vec()).map_err(decode_err)?;
            security
                .quotas
                .insert(principal, decode(&value).map_err(decode_err)?);
        }
        let prefix = keys::sm_singleton(group, sm_tag::CAPS);
        for item in self.rows_under(&prefix) {
            let (key, value) = item?;
            let principal = String::from_utf8(key[prefix.len()..].to_vec()).map_err(decode_err)?;
            security
                .caps
                .insert(principal, decode(&value).map_err(decode_err)?);
        }
        let prefix = keys::sm_singleton(group, sm_tag::ACL);
        for item in self.rows_under(&prefix) {
            let (key, value) = item?;
            let id = key[prefix.len()..]
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| decode_err("malformed ACL key in state machine"))?;
            security
                .acls
                .insert(id, decode(&value).map_err(decode_err)?);
        }
        Ok(security)
    }
}

/// `Command::CreateToken`: refused if the id exists or `tokens_max` tokens do.
fn create_token(
    security: &mut Security,
    token: &TokenRecord,
    tokens_max: u32,
    (batch, group, cf): (&mut WriteBatch, GroupId, &rocksdb::ColumnFamily),
) -> CommandResponse {
    if security.tokens.contains_key(&token.id) {
        return CommandResponse::Rejected(Rejection::TokenExists(token.id.clone()));
    }
    if security.tokens.len() >= tokens_max as usize {
        return CommandResponse::Rejected(Rejection::TooManyTokens(tokens_max));
    }
    batch.put_cf(cf, keys::sm_token(group, &token.id), encode(token));
    security.tokens.insert(token.id.clone(), token.clone());
    CommandResponse::TokenCreated
}

/// `Command::SetLimits`: a principal's quota and creation caps, each row removed when it limits
/// nothing. At most `quotas_max` principals have either.
fn set_limits(
    security: &mut Security,
    principal: &str,
    (quota, caps): (&Quota, &CreationCaps),
    quotas_max: u32,
    (batch, group, cf): (&mut WriteBatch, GroupId, &rocksdb::ColumnFamily),
) -> CommandResponse {
    let known = security.quotas.contains_key(principal) || security.caps.contains_key(principal);
    let limited = !quota.is_unlimited() || !caps.is_unlimited();
    let count = security
        .quotas
        .keys()
        .chain(security.caps.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if !known && limited && count >= quotas_max as usize {
        return CommandResponse::Rejected(Rejection::TooManyQuotas(quotas_max));
    }
    let quota_key = keys::sm_quota(group, principal);
    keep_limit(
        &mut security.quotas,
        principal,
        *quota,
        quota_key,
        (&mut *batch, cf),
    );
    let caps_key = keys::sm_caps(group, principal);
    keep_limit(&mut security.caps, principal, *caps, caps_key, (batch, cf));
    CommandResponse::QuotaSet
}

/// Stores `limit` as `principal`'s in `table` and its row at `key`, or removes both when it is
/// the default (no limit).
fn keep_limit<T: Copy + Default + PartialEq + serde::Serialize>(
    table: &mut std::collections::BTreeMap<String, T>,
    principal: &str,
    limit: T,
    key: Vec<u8>,
    (batch, cf): (&mut WriteBatch, &rocksdb::ColumnFamily),
) {
    if limit == T::default() {
        table.remove(principal);
        batch.delete_cf(cf, key);
    } else {
        batch.put_cf(cf, key, encode(&limit));
        table.insert(principal.to_string(), limit);
    }
}
