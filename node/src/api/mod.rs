//! The public gRPC services: `raftlog.v1.Broker` and `raftlog.v1.Queues` for clients,
//! `raftlog.v1.Cluster` and `raftlog.v1.Auth` (tokens, ACLs) for operators. Handlers validate
//! requests, turn them into replicated [`Command`](crate::command)s or local reads, and map every
//! failure to one precise gRPC status ([`error`]). Wire types are converted to domain types only
//! here ([`convert`]).

pub mod auth;
pub mod broker;
pub mod cluster;
pub mod convert;
pub mod error;
pub mod forward;
pub mod request_metrics;
