//! raftlog node: a replicated, append-only log served over gRPC.
//!
//! Write path: [`api`] validates a request and proposes a [`command::Command`] through
//! [`raft`] (openraft); entries are made durable by [`storage::log_store`] (fsync before the
//! flushed callback), replicated to peers by [`raft::network`], and once committed applied by
//! [`storage::state_machine`], whose answer becomes the client's ack.
//! Read path: [`api`] serves fetches from this node's applied state ([`storage::state_machine::StateView`]).
//! [`server`] assembles the parts; [`config`] resolves the configuration; [`admin_http`] serves
//! health, status and [`metrics`].

pub mod admin_http;
pub mod api;
pub mod batcher;
pub mod command;
pub mod config;
pub mod disk;
pub mod handover;
pub mod limits;
pub mod log_retention;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod server;
pub mod storage;
pub mod types;
pub mod write;
