//! Who may do what: the replicated security state (bearer tokens and ACLs) and the rule that
//! decides a request against it. Pure: the node authenticates the caller (a token, a client
//! certificate) and asks [`Security::authorize`]; the state machine applies the commands that
//! change the tables. docs/security.md is the user-facing description of the same rules.
//!
//! Rows here are an on-disk format (the state machine's rows, snapshots): add fields only at the
//! end of a struct and variants only at the end of an enum.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The principal of every ACL entry that names no one in particular: it matches any caller.
pub const ANY_PRINCIPAL: &str = "*";

/// The kinds of things an ACL protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceType {
    Topic,
    /// A consumer group (by name).
    Group,
    Queue,
    /// The cluster itself: membership, inspection, tokens and ACLs. Its one name is
    /// [`CLUSTER_RESOURCE`].
    Cluster,
}

/// The name of the one cluster resource.
pub const CLUSTER_RESOURCE: &str = "cluster";

/// What a request does to its resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Operation {
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    /// In an ACL entry: every operation.
    All,
}

/// How an ACL entry's pattern names resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PatternType {
    /// The exact name, where `*` stands for any run of characters (`*` alone: every resource;
    /// `orders-*-eu`). Resource names cannot contain `*`, so the wildcard is unambiguous.
    Literal,
    /// Every name that starts with the pattern.
    Prefix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    Allow,
    Deny,
}

/// One ACL entry: `permission` of `principal` to do `operation` on the resources of type
/// `resource` that `pattern` names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Acl {
    /// `User:<name>` or [`ANY_PRINCIPAL`].
    pub principal: String,
    pub resource: ResourceType,
    pub pattern: String,
    pub pattern_type: PatternType,
    pub operation: Operation,
    pub permission: Permission,
}

/// A bearer token as the replicated state keeps it: never the secret, only a salted SHA-256 of
/// it. The secret is shown once, when the token is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id (16 hex digits), part of the token's text, so a check is one lookup.
    pub id: String,
    pub principal: String,
    pub salt: [u8; 16],
    /// SHA-256 over `salt` and then the secret part of the token.
    pub hash: [u8; 32],
    pub created_at_ms: i64,
    /// After this (by the checking node's clock) the token is refused; `None`: never.
    pub expires_at_ms: Option<i64>,
    /// Who created it (the principal of the request), for `token list` and the audit trail.
    pub created_by: String,
}

/// The rates one principal may use, each enforced by every node on its own (so a principal that
/// spreads its calls over three nodes gets up to three times as much); 0: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub produce_bytes_per_sec: u64,
    pub fetch_bytes_per_sec: u64,
    pub requests_per_sec: u64,
}

impl Quota {
    pub fn is_unlimited(&self) -> bool {
        *self == Quota::default()
    }
}

/// What one principal may own at once: the topics, partitions and groups it created that still
/// exist; 0: no cap. Checked when the command that would create something applies, so two
/// creations racing each other cannot pass a cap together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreationCaps {
    pub topics: u32,
    /// The partitions of its topics, summed.
    pub partitions: u32,
    /// Consumer groups and queue groups.
    pub groups: u32,
}

/// What a principal owns, or what one command would create, in the units of [`CreationCaps`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owned {
    pub topics: u32,
    pub partitions: u32,
    pub groups: u32,
}

impl CreationCaps {
    pub fn is_unlimited(&self) -> bool {
        *self == CreationCaps::default()
    }

    /// The first cap that `owned` plus `adding` would pass, as (what it counts, the cap).
    pub fn passed_by(&self, owned: Owned, adding: Owned) -> Option<(&'static str, u32)> {
        let over =
            |cap: u32, have: u32, add: u32| cap != 0 && add > 0 && have.saturating_add(add) > cap;
        if over(self.topics, owned.topics, adding.topics) {
            Some(("topics", self.topics))
        } else if over(self.partitions, owned.partitions, adding.partitions) {
            Some(("partitions", self.partitions))
        } else if over(self.groups, owned.groups, adding.groups) {
            Some(("groups (consumer groups and queues)", self.groups))
        } else {
            None
        }
    }
}

/// The security tables of the replicated state: tokens by id, ACL entries by id, quotas and
/// creation caps by principal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    pub tokens: BTreeMap<String, TokenRecord>,
    pub acls: BTreeMap<u64, Acl>,
    pub quotas: BTreeMap<String, Quota>,
    pub caps: BTreeMap<String, CreationCaps>,
}

/// Why a request is refused, for the caller and the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// An entry denies it (deny wins over any allow).
    Denied(u64),
    /// No entry allows it (the default when auth is on).
    NotAllowed,
}

impl Security {
    /// Whether `principal` may do `operation` on the resource `name` of type `resource`.
    ///
    /// The rules, in order: a super-user may do everything; an entry that denies (for this
    /// principal or `*`, this operation or `All`, a pattern that names the resource) refuses;
    /// an entry that allows grants; nothing else does (default deny). An allow of Read, Write,
    /// Delete or Alter also allows Describe (who may read a topic may see that it exists, as in
    /// Kafka); a deny denies only what it names.
    pub fn authorize(
        &self,
        principal: &str,
        super_user: bool,
        resource: ResourceType,
        name: &str,
        operation: Operation,
    ) -> Verdict {
        if super_user {
            return Verdict::Allowed;
        }
        let mut allowed = false;
        for (id, acl) in &self.acls {
            if acl.resource != resource
                || !(acl.principal == principal || acl.principal == ANY_PRINCIPAL)
                || !pattern_matches(acl.pattern_type, &acl.pattern, name)
            {
                continue;
            }
            match acl.permission {
                Permission::Deny if covers(acl.operation, operation, false) => {
                    return Verdict::Denied(*id)
                }
                Permission::Allow if covers(acl.operation, operation, true) => allowed = true,
                _ => {}
            }
        }
        if allowed {
            Verdict::Allowed
        } else {
            Verdict::NotAllowed
        }
    }

    /// Whether some entry allows `principal` `operation` on some resource of type `resource`
    /// (deny entries aside): what an operation that names no resource of its own needs, e.g.
    /// getting an idempotent producer id (any topic writer may).
    pub fn allows_some(
        &self,
        principal: &str,
        super_user: bool,
        resource: ResourceType,
        operation: Operation,
    ) -> bool {
        super_user
            || self.acls.values().any(|acl| {
                acl.resource == resource
                    && acl.permission == Permission::Allow
                    && (acl.principal == principal || acl.principal == ANY_PRINCIPAL)
                    && covers(acl.operation, operation, true)
            })
    }

    /// The id of an entry equal to `acl`, if there is one (adding an entry twice keeps one).
    pub fn find_acl(&self, acl: &Acl) -> Option<u64> {
        self.acls
            .iter()
            .find(|(_, existing)| *existing == acl)
            .map(|(id, _)| *id)
    }
}

/// Whether an entry for `entry` covers a request for `requested`; `implied` lets an allow of an
/// operation that shows a resource's content cover Describe.
fn covers(entry: Operation, requested: Operation, implied: bool) -> bool {
    use Operation as O;
    entry == O::All
        || entry == requested
        || (implied
            && requested == O::Describe
            && matches!(entry, O::Read | O::Write | O::Delete | O::Alter))
}

/// Whether `pattern` of `kind` names `name` (see [`PatternType`]).
pub fn pattern_matches(kind: PatternType, pattern: &str, name: &str) -> bool {
    match kind {
        PatternType::Prefix => name.starts_with(pattern),
        PatternType::Literal if !pattern.contains('*') => pattern == name,
        PatternType::Literal => glob(pattern.as_bytes(), name.as_bytes()),
    }
}

/// `*` matches any run of bytes, everything else itself. Iterative with one backtrack point, so
/// linear-ish in the name and never recursive (patterns come from operators, names from anyone).
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // Where the last `*` was in the pattern, and how much of the name it has taken so far.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((star_p, star_n)) = star {
            // Let the last `*` take one more byte and retry from there.
            star = Some((star_p, star_n + 1));
            p = star_p + 1;
            n = star_n + 1;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Whether `name` may be a principal's name: 1 to 128 bytes of `[A-Za-z0-9._@-]` (it travels
/// in metadata and log lines, so nothing that needs quoting).
pub fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// A principal as given by an operator: `alice` is `User:alice`; one with a type prefix
/// (`User:alice`) or `*` is kept as it is.
pub fn principal(name: &str) -> String {
    if name == ANY_PRINCIPAL || name.contains(':') {
        name.to_string()
    } else {
        format!("User:{name}")
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceType::Topic => "topic",
            ResourceType::Group => "group",
            ResourceType::Queue => "queue",
            ResourceType::Cluster => "cluster",
        })
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Alter => "alter",
            Operation::Describe => "describe",
            Operation::All => "all",
        })
    }
}

impl fmt::Display for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let permission = match self.permission {
            Permission::Allow => "allow",
            Permission::Deny => "deny",
        };
        let kind = match self.pattern_type {
            PatternType::Literal => "",
            PatternType::Prefix => " (prefix)",
        };
        write!(
            f,
            "{permission} {} {} on {} '{}'{kind}",
            self.principal, self.operation, self.resource, self.pattern
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(
        principal: &str,
        resource: ResourceType,
        pattern: &str,
        pattern_type: PatternType,
        operation: Operation,
        permission: Permission,
    ) -> Acl {
        Acl {
            principal: principal.into(),
            resource,
            pattern: pattern.into(),
            pattern_type,
            operation,
            permission,
        }
    }

    #[test]
    fn literal_patterns_match_whole_names_and_star_matches_any_run() {
        use PatternType::*;
        assert!(pattern_matches(Literal, "orders", "orders"));
        assert!(!pattern_matches(Literal, "orders", "orders-eu"));
        assert!(!pattern_matches(Literal, "orders", "order"));
        assert!(pattern_matches(Literal, "*", "anything"));
        assert!(pattern_matches(Literal, "*", ""));
        assert!(pattern_matches(Literal, "orders-*", "orders-"));
        assert!(pattern_matches(Literal, "orders-*", "orders-eu"));
        assert!(!pattern_matches(Literal, "orders-*", "order"));
        assert!(pattern_matches(Literal, "orders-*-eu", "orders-x-y-eu"));
        assert!(!pattern_matches(Literal, "orders-*-eu", "orders-x-us"));
        assert!(pattern_matches(Literal, "*-eu", "a-eu"));
        assert!(pattern_matches(Literal, "a*b*c", "aXXbYYc"));
        assert!(!pattern_matches(Literal, "a*b*c", "aXXbYY"));
        assert!(pattern_matches(Prefix, "orders", "orders"));
        assert!(pattern_matches(Prefix, "orders", "orders-eu"));
        assert!(!pattern_matches(Prefix, "orders", "order"));
        assert!(pattern_matches(Prefix, "", "anything"));
        // A prefix is not a glob: `*` in it is the character.
        assert!(!pattern_matches(Prefix, "o*", "orders"));
    }

    /// The whole decision matrix: literal, wildcard and prefix entries, a principal's own and
    /// `*` entries, deny beating allow, default deny, super-users, implied Describe.
    #[test]
    fn authorize_matrix() {
        use Operation::*;
        use PatternType::*;
        use Permission::*;
        use ResourceType::*;
        let mut security = Security::default();
        let entries = [
            acl("User:alice", Topic, "orders", Literal, Write, Allow),
            acl("User:alice", Topic, "logs-", Prefix, Read, Allow),
            acl("User:alice", Topic, "logs-secret", Literal, Read, Deny),
            acl("*", Topic, "public-*", Literal, Read, Allow),
            acl("User:bob", Topic, "*", Literal, All, Allow),
            acl("User:bob", Topic, "orders", Literal, Delete, Deny),
            acl("User:carol", Group, "billing", Literal, Read, Allow),
            acl("*", Topic, "public-closed", Literal, All, Deny),
            acl(
                "User:ops",
                Cluster,
                CLUSTER_RESOURCE,
                Literal,
                Describe,
                Allow,
            ),
        ];
        for (id, entry) in entries.into_iter().enumerate() {
            security.acls.insert(id as u64 + 1, entry);
        }
        let allowed = |who: &str, resource, name: &str, op| {
            security.authorize(who, false, resource, name, op) == Verdict::Allowed
        };
        // Literal.
        assert!(allowed("User:alice", Topic, "orders", Write));
        assert!(!allowed("User:alice", Topic, "orders", Read));
        assert!(!allowed("User:alice", Topic, "orders-2", Write));
        // Implied describe from write; not create or delete.
        assert!(allowed("User:alice", Topic, "orders", Describe));
        assert!(!allowed("User:alice", Topic, "orders", Create));
        assert!(!allowed("User:alice", Topic, "orders", Delete));
        // Prefix, with a literal deny inside it.
        assert!(allowed("User:alice", Topic, "logs-app", Read));
        assert!(!allowed("User:alice", Topic, "logs-app", Write));
        assert_eq!(
            security.authorize("User:alice", false, Topic, "logs-secret", Read),
            Verdict::Denied(3)
        );
        // `*` principal and a wildcard pattern, and a deny for everyone that beats it.
        assert!(allowed("User:anyone", Topic, "public-news", Read));
        assert!(allowed("User:alice", Topic, "public-news", Read));
        assert!(!allowed("User:anyone", Topic, "public-news", Write));
        assert!(!allowed("User:anyone", Topic, "public-closed", Read));
        // All, with a deny of one operation.
        assert!(allowed("User:bob", Topic, "anything", Create));
        assert!(allowed("User:bob", Topic, "orders", Alter));
        assert!(!allowed("User:bob", Topic, "orders", Delete));
        assert!(allowed("User:bob", Topic, "other", Delete));
        // `*` deny with All beats bob's All allow too.
        assert!(!allowed("User:bob", Topic, "public-closed", Read));
        // Resource types are apart: a group entry says nothing about a topic of that name.
        assert!(allowed("User:carol", Group, "billing", Read));
        assert!(!allowed("User:carol", Topic, "billing", Read));
        assert!(!allowed("User:carol", Group, "billing", Delete));
        // Cluster.
        assert!(allowed("User:ops", Cluster, CLUSTER_RESOURCE, Describe));
        assert!(!allowed("User:ops", Cluster, CLUSTER_RESOURCE, Alter));
        // Default deny.
        assert_eq!(
            security.authorize("User:nobody", false, Topic, "orders", Read),
            Verdict::NotAllowed
        );
        // Super-users bypass everything, denies included.
        assert_eq!(
            security.authorize("User:root", true, Topic, "public-closed", Delete),
            Verdict::Allowed
        );
        // Some entry allows writing some topic.
        assert!(security.allows_some("User:alice", false, Topic, Write));
        assert!(security.allows_some("User:bob", false, Topic, Write));
        assert!(!security.allows_some("User:carol", false, Topic, Write));
    }

    #[test]
    fn principals_default_to_users() {
        assert_eq!(principal("alice"), "User:alice");
        assert_eq!(principal("User:alice"), "User:alice");
        assert_eq!(principal("*"), "*");
    }
}
