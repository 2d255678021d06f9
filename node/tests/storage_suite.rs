//! openraft's storage conformance suite, run against the real RocksDB log store and state machine
//! (no mocks): every case opens a fresh database in a temporary directory.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use raftlog_node::types::{TypeConfig, METADATA_GROUP};
use raftlog_node::storage;
use raftlog_node::storage::log_store::LogStore;
use raftlog_node::storage::state_machine::StateMachine;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RocksBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let dbs =
            storage::open(dir.path(), &storage::StorageOptions::default()).expect("open RocksDB");
        let sm = StateMachine::open(
            dbs.state.clone(),
            METADATA_GROUP,
            dir.path().join("snapshots"),
        )
        .expect("open the state machine");
        let log = LogStore::new(&dbs, METADATA_GROUP, sm.flushed(), 0);
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_on_rocksdb() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(RocksBuilder).await
}
