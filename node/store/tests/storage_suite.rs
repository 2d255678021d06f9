//! openraft's storage conformance suite, run against the real RocksDB log store and state machine
//! (no mocks): every case opens a fresh database in a temporary directory.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use raftlog_core::{TypeConfig, METADATA_GROUP};
use raftlog_store::{LogStore, StateMachine};

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RocksBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let dbs = raftlog_store::open(dir.path(), &raftlog_store::StorageOptions::default())
            .expect("open RocksDB");
        let sm = StateMachine::open(&dbs, METADATA_GROUP, dir.path().join("snapshots"))
            .expect("open the state machine");
        let log = LogStore::new(&dbs, METADATA_GROUP, sm.flushed(), 0);
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_on_rocksdb() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(RocksBuilder).await
}
