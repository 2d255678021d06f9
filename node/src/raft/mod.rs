//! Raft glue: openraft's type configuration, the peer transport (client side in [`network`],
//! server side in [`service`]).

pub mod network;
pub mod service;
pub mod types;
