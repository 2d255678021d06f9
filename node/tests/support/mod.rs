//! Test support: clusters of real `raftlog-node` processes, shared with every crate's tests
//! (testkit/).

pub use raftlog_testkit::*;
