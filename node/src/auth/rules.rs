//! The one table of what every RPC of every client-facing service needs: for each method path,
//! the resources it touches, where their names are in the request, and the operation. The
//! layer ([`super::layer`]) applies it to every request before any handler runs; a method of a
//! client-facing service (every service of package `raftlog.v1`) without an entry is refused,
//! and a test walks the compiled descriptors so that a new method without an entry fails the
//! build's tests rather than going unchecked.
//!
//! Names are read from the request's top-level string fields by number (the field numbers are
//! part of the wire contract in the .proto files).

use raftlog_core::auth::{Operation, ResourceType};

use Operation::*;
use ResourceType::*;

/// One permission a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `operation` on the resource of type `resource` named by the request's string field
    /// number `field`.
    Named {
        resource: ResourceType,
        field: u32,
        operation: Operation,
    },
    /// `operation` on the cluster.
    Cluster(Operation),
    /// `operation` on some resource of the type: an operation that names none of its own
    /// (getting an idempotent producer id needs write on some topic, as in Kafka).
    AnyOf(ResourceType, Operation),
}

/// What a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// All of these, checked by the layer before the handler runs.
    Needs(&'static [Need]),
    /// Authentication; the handler answers with only the resources of this type that the
    /// caller may describe (listing calls: nothing to refuse, only to leave out).
    Filtered(ResourceType),
    /// Authentication; the handler checks `operation` on the resource each message of the
    /// stream names (a client stream's messages arrive after the call has begun, past the
    /// layer).
    PerMessage(ResourceType, Operation),
    /// Authentication only.
    Authenticated,
}

const fn topic(field: u32, operation: Operation) -> Need {
    Need::Named {
        resource: Topic,
        field,
        operation,
    }
}

const fn group(field: u32, operation: Operation) -> Need {
    Need::Named {
        resource: Group,
        field,
        operation,
    }
}

const fn queue(field: u32, operation: Operation) -> Need {
    Need::Named {
        resource: Queue,
        field,
        operation,
    }
}

/// Every method of every client-facing service. Keep in step with docs/security.md
/// ("Permissions per RPC").
pub const RULES: &[(&str, Rule)] = &[
    // raftlog.v1.Broker (broker.proto)
    (
        "/raftlog.v1.Broker/CreateTopic",
        Rule::Needs(&[topic(1, Create)]),
    ),
    ("/raftlog.v1.Broker/ListTopics", Rule::Filtered(Topic)),
    (
        "/raftlog.v1.Broker/DescribeTopic",
        Rule::Needs(&[topic(1, Describe)]),
    ),
    (
        "/raftlog.v1.Broker/DeleteTopic",
        Rule::Needs(&[topic(1, Delete)]),
    ),
    (
        "/raftlog.v1.Broker/AlterTopic",
        Rule::Needs(&[topic(1, Alter)]),
    ),
    (
        "/raftlog.v1.Broker/InitProducer",
        Rule::Needs(&[Need::AnyOf(Topic, Write)]),
    ),
    (
        "/raftlog.v1.Broker/Produce",
        Rule::Needs(&[topic(1, Write)]),
    ),
    (
        "/raftlog.v1.Broker/ProduceStream",
        Rule::PerMessage(Topic, Write),
    ),
    ("/raftlog.v1.Broker/Fetch", Rule::Needs(&[topic(1, Read)])),
    (
        "/raftlog.v1.Broker/Subscribe",
        Rule::Needs(&[topic(1, Read)]),
    ),
    // As Kafka's OffsetCommit: the group and the topic, both read.
    (
        "/raftlog.v1.Broker/CommitOffsets",
        Rule::Needs(&[group(1, Read), topic(2, Read)]),
    ),
    (
        "/raftlog.v1.Broker/FetchOffsets",
        Rule::Needs(&[group(1, Describe), topic(2, Describe)]),
    ),
    ("/raftlog.v1.Broker/ListGroups", Rule::Filtered(Group)),
    (
        "/raftlog.v1.Broker/DescribeGroup",
        Rule::Needs(&[group(1, Describe)]),
    ),
    (
        "/raftlog.v1.Broker/DeleteGroup",
        Rule::Needs(&[group(1, Delete)]),
    ),
    (
        "/raftlog.v1.Broker/ListOffsets",
        Rule::Needs(&[topic(1, Describe)]),
    ),
    // Joining a group and reading its assignment; the data itself needs read on each topic.
    (
        "/raftlog.v1.Broker/GroupHeartbeat",
        Rule::Needs(&[group(1, Read)]),
    ),
    (
        "/raftlog.v1.Broker/RemoveGroupMember",
        Rule::Needs(&[group(1, Alter)]),
    ),
    // raftlog.v1.Queues (queue.proto). Creating a queue on a topic needs read on the topic: the
    // queue hands its records to whoever may read the queue.
    (
        "/raftlog.v1.Queues/CreateQueue",
        Rule::Needs(&[queue(1, Create), topic(2, Read)]),
    ),
    (
        "/raftlog.v1.Queues/DescribeQueue",
        Rule::Needs(&[queue(1, Describe)]),
    ),
    ("/raftlog.v1.Queues/ListQueues", Rule::Filtered(Queue)),
    (
        "/raftlog.v1.Queues/DeleteQueue",
        Rule::Needs(&[queue(1, Delete)]),
    ),
    ("/raftlog.v1.Queues/Receive", Rule::Needs(&[queue(1, Read)])),
    (
        "/raftlog.v1.Queues/ReceiveStream",
        Rule::Needs(&[queue(1, Read)]),
    ),
    ("/raftlog.v1.Queues/Settle", Rule::Needs(&[queue(1, Read)])),
    // Redrive appends to the queue's topic what its dead letters hold: alter on the queue.
    (
        "/raftlog.v1.Queues/Redrive",
        Rule::Needs(&[queue(1, Alter)]),
    ),
    // raftlog.v1.Cluster (cluster.proto)
    (
        "/raftlog.v1.Cluster/Initialize",
        Rule::Needs(&[Need::Cluster(Alter)]),
    ),
    (
        "/raftlog.v1.Cluster/AddLearner",
        Rule::Needs(&[Need::Cluster(Alter)]),
    ),
    (
        "/raftlog.v1.Cluster/PromoteVoter",
        Rule::Needs(&[Need::Cluster(Alter)]),
    ),
    (
        "/raftlog.v1.Cluster/RemoveNode",
        Rule::Needs(&[Need::Cluster(Alter)]),
    ),
    (
        "/raftlog.v1.Cluster/TransferLeader",
        Rule::Needs(&[Need::Cluster(Alter)]),
    ),
    (
        "/raftlog.v1.Cluster/Status",
        Rule::Needs(&[Need::Cluster(Describe)]),
    ),
    (
        "/raftlog.v1.Cluster/TriggerSnapshot",
        Rule::Needs(&[Need::Cluster(Alter)]),
    ),
    (
        "/raftlog.v1.Cluster/StateDigest",
        Rule::Needs(&[Need::Cluster(Describe)]),
    ),
    // raftlog.v1.Auth (auth.proto)
    (
        "/raftlog.v1.Auth/CreateToken",
        Rule::Needs(&[Need::Cluster(Alter)]),
    ),
    (
        "/raftlog.v1.Auth/ListTokens",
        Rule::Needs(&[Need::Cluster(Describe)]),
    ),
    (
        "/raftlog.v1.Auth/RevokeToken",
        Rule::Needs(&[Need::Cluster(Alter)]),
    ),
    (
        "/raftlog.v1.Auth/AddAcl",
        Rule::Needs(&[Need::Cluster(Alter)]),
    ),
    (
        "/raftlog.v1.Auth/ListAcls",
        Rule::Needs(&[Need::Cluster(Describe)]),
    ),
    (
        "/raftlog.v1.Auth/RemoveAcl",
        Rule::Needs(&[Need::Cluster(Alter)]),
    ),
    ("/raftlog.v1.Auth/WhoAmI", Rule::Authenticated),
    (
        "/raftlog.v1.Auth/SetQuota",
        Rule::Needs(&[Need::Cluster(Alter)]),
    ),
    (
        "/raftlog.v1.Auth/ListQuotas",
        Rule::Needs(&[Need::Cluster(Describe)]),
    ),
];

/// The package whose services clients call: every method in it needs an entry.
pub const CLIENT_PACKAGE_PATH: &str = "/raftlog.v1.";

/// The rule of a request path; `None` for a path outside the client-facing services (health,
/// reflection, the peer Raft service) and for an unknown method of one (which the layer refuses).
pub fn rule(path: &str) -> Option<Rule> {
    RULES
        .iter()
        .find(|(method, _)| *method == path)
        .map(|(_, rule)| *rule)
}

/// The short method name of a path, for log lines: `/raftlog.v1.Broker/Produce` → `Broker/Produce`.
pub fn rpc_name(path: &str) -> &str {
    path.strip_prefix(CLIENT_PACKAGE_PATH).unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Every method of every service of package raftlog.v1 has exactly one entry, and every entry
    /// names a method that exists; a `Named` field is a string field of the method's request.
    #[test]
    fn every_client_facing_method_has_exactly_one_rule() {
        let set = prost_types::FileDescriptorSet::decode(raftlog_proto::FILE_DESCRIPTOR_SET)
            .expect("the compiled descriptor set decodes");
        let messages: std::collections::HashMap<String, &prost_types::DescriptorProto> = set
            .file
            .iter()
            .flat_map(|f| {
                f.message_type
                    .iter()
                    .map(move |m| (format!(".{}.{}", f.package(), m.name()), m))
            })
            .collect();
        let mut methods = Vec::new();
        for file in set.file.iter().filter(|f| f.package() == "raftlog.v1") {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/raftlog.v1.{}/{}", service.name(), method.name());
                    let entries = RULES.iter().filter(|(p, _)| *p == path).count();
                    assert_eq!(
                        entries, 1,
                        "{path} needs exactly one entry in auth::rules::RULES"
                    );
                    if let Some(Rule::Needs(needs)) = rule(&path) {
                        let input = messages[method.input_type()];
                        for need in needs.iter() {
                            if let Need::Named { field, .. } = need {
                                let f = input
                                    .field
                                    .iter()
                                    .find(|f| f.number() == *field as i32)
                                    .unwrap_or_else(|| panic!("{path}: no field {field}"));
                                assert_eq!(
                                    f.r#type(),
                                    prost_types::field_descriptor_proto::Type::String,
                                    "{path}: field {field} is not a string"
                                );
                                assert_ne!(
                                    f.label(),
                                    prost_types::field_descriptor_proto::Label::Repeated,
                                    "{path}: field {field} is repeated"
                                );
                            }
                        }
                    }
                    methods.push(path);
                }
            }
        }
        for (path, _) in RULES {
            assert!(methods.contains(&path.to_string()), "{path} is no method");
        }
        assert!(
            methods.len() >= 30,
            "the descriptors hold the client services"
        );
    }
}
