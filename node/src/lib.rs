//! raftlog node: a replicated, append-only log served over gRPC.
//!
//! Write path: [`api`] validates a request and proposes a [`raftlog_core::Command`] through
//! [`raft`] (openraft); entries are made durable by [`raftlog_store::LogStore`] (fsync before the
//! flushed callback), replicated to peers by [`raft::network`], and once committed applied by
//! [`raftlog_store::StateMachine`], whose answer becomes the client's ack.
//! Read path: [`api`] serves fetches from this node's applied state ([`raftlog_store::StateView`]).
//! [`auth`] authenticates client requests and checks them against the replicated ACLs before
//! any handler runs. [`server`] assembles the parts; [`config`] resolves the configuration;
//! [`admin_http`] serves health, status and [`metrics`].

mod admin_http;
mod api;
mod auth;
mod config;
mod disk;
mod group;
mod logging;
mod metrics;
mod node;
mod raft;
mod server;
mod tls;

pub use config::{Args, NodeConfig};
pub use logging::init as init_logging;
pub use server::run;
