//! raftlog's fault-injection harness, in the manner of Jepsen's Kafka workload: concurrent
//! clients append unique values to a raftlog cluster and read them back while a nemesis injects
//! faults; every operation is recorded in a [`history::History`], which [`checker::check`] then
//! searches for anomalies and [`report::write_report`] renders for a human.
//!
//! This library holds the parts that do not touch a cluster (the history model, the checker and
//! the report), so they can be unit-tested on hand-built histories. Cluster control, nemeses and
//! workloads live in sibling modules of this crate.

pub mod checker;
pub mod cluster;
pub mod group_checks;
pub mod history;
pub mod logs;
pub mod nemesis;
pub mod net;
pub mod queue_checks;
pub mod queue_workload;
pub mod report;
pub mod secure;
pub mod workload;
