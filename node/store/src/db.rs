//! A node's two RocksDB databases: how they are laid out, opened and tuned, and the upgrade of a
//! data dir written by an older layout.

use std::path::Path;
use std::sync::Arc;

use raftlog_core::limits::{
    LOG_WAL_FILES_RECYCLED, LOG_WAL_TOTAL_BYTES_MAX, META_MEMTABLE_BYTES, STATE_BLOB_BYTES_MIN,
};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch,
    WriteBufferManager, WriteOptions, DB,
};

pub const CF_RAFT_LOG: &str = "raft_log";
pub const CF_RAFT_META: &str = "raft_meta";
pub const CF_STATE_MACHINE: &str = "state_machine";

/// Where the two databases live under a node's data dir.
pub const LOG_DB_DIR: &str = "db";
pub const STATE_DB_DIR: &str = "state";

/// A node's two RocksDB databases.
///
/// Two databases, not one, because of the WAL: the log needs it (every append is fsynced through
/// it) and benefits from recycling its files, while the state machine is written without WAL (the
/// Raft log is its WAL) — and RocksDB refuses `disableWAL` writes in a database that recycles WAL
/// files.
#[derive(Clone)]
pub struct Databases {
    /// The Raft log and its metadata (vote, committed, last purged): `raft_log`, `raft_meta`.
    pub(crate) log: Arc<DB>,
    /// The state machine (`state_machine`), written without WAL.
    pub(crate) state: Arc<DB>,
}

impl Databases {
    /// Flushes the state machine's memtable, so that a restart need not re-apply what it holds
    /// (the state machine is written without WAL): at the end of a clean shutdown.
    pub fn flush_state(&self) -> Result<(), rocksdb::Error> {
        let cf = self
            .state
            .cf_handle(CF_STATE_MACHINE)
            .expect("state_machine column family is created at open");
        self.state.flush_cf(cf)
    }
}

/// What RocksDB may hold in memory, for both databases together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    /// Memtables of every column family (RocksDB's write buffer manager): past it, the largest
    /// memtable is flushed. Each of the two large column families (raft log, state machine) gets
    /// a quarter of it as its memtable size, so both can fill one while another flushes.
    pub memtable_bytes: usize,
    /// One LRU block cache for every column family, index and filter blocks included (so the
    /// memory of open SST files is charged to it too, instead of growing with the data).
    pub block_cache_bytes: usize,
}

impl Default for MemoryBudget {
    fn default() -> Self {
        Self {
            memtable_bytes: 128 * 1024 * 1024,
            block_cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// How a node's databases are opened: memory, and how they reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageOptions {
    pub memory: MemoryBudget,
    /// Flushes and compactions write their files with O_DIRECT (straight from RocksDB's buffers
    /// to the disk), and the state database reads with O_DIRECT, instead of going through the
    /// page cache. On this project's benchmark machine filling new page-cache pages was the
    /// largest single cost of the write path and of cold reads (~0.8 GB/s, against ~1.9 GB/s
    /// direct to the disk); docs/decisions.md ("Direct I/O for flushes, compactions and record
    /// reads"). Where the file system refuses O_DIRECT (some tmpfs, FUSE) the node goes through
    /// the page cache and says so in its log.
    pub direct_io: bool,
    /// How the state machine's record batches are compressed on disk.
    pub compression: Compression,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            memory: MemoryBudget::default(),
            direct_io: true,
            compression: Compression::default(),
        }
    }
}

/// Compression of the stored record batches (RocksDB compresses a file's blocks and blobs as it
/// flushes them).
///
/// LZ4 shrinks compressible records (text, JSON) several times over on disk, at a CPU cost paid
/// on every node at every flush; records that do not compress (already compressed by their
/// producer, encrypted, random) cost that CPU for nothing, since RocksDB then stores them as they
/// were. The Raft log is never compressed: its entries live only until the next purge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    Lz4,
    None,
}

impl Compression {
    fn rocksdb(self) -> rocksdb::DBCompressionType {
        match self {
            Compression::Lz4 => rocksdb::DBCompressionType::Lz4,
            Compression::None => rocksdb::DBCompressionType::None,
        }
    }
}

/// The shared RocksDB objects a [`MemoryBudget`] becomes.
struct SharedMemory {
    write_buffers: WriteBufferManager,
    block_cache: Cache,
    /// Memtable size of each large column family.
    memtable_bytes_per_cf: usize,
    /// Whether flushes and compactions write, and state reads read, with O_DIRECT (asked for,
    /// and possible here).
    direct_io: bool,
    compression: Compression,
}

impl SharedMemory {
    fn new(budget: &MemoryBudget, direct_io: bool, compression: Compression) -> Self {
        Self {
            direct_io,
            compression,
            // No stall: past the budget RocksDB flushes; writes are never blocked on memory.
            write_buffers: WriteBufferManager::new_write_buffer_manager(
                budget.memtable_bytes,
                false,
            ),
            block_cache: Cache::new_lru_cache(budget.block_cache_bytes),
            memtable_bytes_per_cf: budget.memtable_bytes / 4,
        }
    }

    fn db_options(&self) -> Options {
        let mut opts = base_options();
        opts.set_write_buffer_manager(&self.write_buffers);
        opts.set_use_direct_io_for_flush_and_compaction(self.direct_io);
        opts
    }

    /// Options of a column family: the shared block cache, `memtable_bytes` of memtable, and
    /// uncompressed files (RocksDB's default would be Snappy); the state machine's column family
    /// sets its own compression.
    fn cf_options(&self, memtable_bytes: usize) -> Options {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&self.block_cache);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        let mut opts = Options::default();
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_size(memtable_bytes);
        // The log's entries are purged soon after they are applied; compressing the part a
        // memtable flush catches before the purge only costs CPU.
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        opts
    }
}

/// Opens (creating if needed) the node's databases under `data_dir`, first moving a state machine
/// left in the log database by an older version into its own database.
pub fn open(data_dir: &Path, options: &StorageOptions) -> Result<Databases, rocksdb::Error> {
    let direct_io = options.direct_io && direct_io_works(data_dir);
    if options.direct_io && !direct_io {
        tracing::warn!(
            dir = %data_dir.display(),
            "the file system refuses O_DIRECT: RocksDB reads and writes through the page cache"
        );
    }
    let memory = SharedMemory::new(&options.memory, direct_io, options.compression);
    let state = Arc::new(open_state_db(&data_dir.join(STATE_DB_DIR), &memory)?);
    let log_path = data_dir.join(LOG_DB_DIR);
    migrate_legacy_state_machine(&log_path, &state)?;
    let log = Arc::new(open_log_db(&log_path, &memory)?);
    Ok(Databases { log, state })
}

fn base_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Background flushes and compactions on both cores of a small machine.
    opts.increase_parallelism(2);
    opts
}

fn open_log_db(path: &Path, memory: &SharedMemory) -> Result<DB, rocksdb::Error> {
    let mut opts = memory.db_options();
    opts.set_recycle_log_file_num(LOG_WAL_FILES_RECYCLED);
    // A WAL file is recycled only once every column family with data in it has flushed. The
    // tiny `raft_meta` column family (vote, committed) would otherwise keep the oldest WAL alive
    // until RocksDB's default total-WAL limit (several GiB here) forced it out, and no file would
    // ever be reused; past this size RocksDB flushes whatever holds the oldest WAL.
    opts.set_max_total_wal_size(LOG_WAL_TOTAL_BYTES_MAX);
    let cfs = [
        // Half the budget: entries purged while still in the memtable are never flushed, and
        // the larger the memtable is next to the unpurged tail, the less of it a flush writes.
        ColumnFamilyDescriptor::new(
            CF_RAFT_LOG,
            memory.cf_options(memory.memtable_bytes_per_cf * 2),
        ),
        ColumnFamilyDescriptor::new(CF_RAFT_META, memory.cf_options(META_MEMTABLE_BYTES)),
    ];
    DB::open_cf_descriptors(&opts, path, cfs)
}

fn open_state_db(path: &Path, memory: &SharedMemory) -> Result<DB, rocksdb::Error> {
    let cfs = [ColumnFamilyDescriptor::new(
        CF_STATE_MACHINE,
        state_machine_cf_options(
            memory.cf_options(memory.memtable_bytes_per_cf),
            memory.compression,
        ),
    )];
    let mut opts = memory.db_options();
    // Record batches older than the memtables are read from the disk either way (flushes write
    // past the page cache): reading them with O_DIRECT spares the kernel filling and copying
    // new page-cache pages, which was most of a cold catch-up read's CPU here. The block cache
    // (SST blocks: keys, blob references, small inline batches) still caches.
    opts.set_use_direct_reads(memory.direct_io);
    // Without direct reads: fetches read record batches in key order, which is file order within
    // a blob file, so let the kernel read ahead (RocksDB asks for random access by default).
    opts.set_advise_random_on_open(false);
    DB::open_cf_descriptors(&opts, path, cfs)
}

/// Options of the state machine column family.
///
/// Its rows are mostly record batches: written once in offset order per partition, never
/// overwritten, deleted oldest first by retention. In a plain LSM tree every compaction rewrites
/// them: measured with 1 GB of incompressible records over 4 partitions (whose keys interleave, so
/// flushed files overlap), compactions wrote 1.7 GB on top of the 1 GB flushed, the largest
/// share of all disk writes a node made. With blob files a batch's bytes are written once, at
/// flush; compactions move keys and references, and a blob file is deleted once retention has
/// removed every row in it (docs/decisions.md, "Blob files for record batches").
fn state_machine_cf_options(mut opts: Options, compression: Compression) -> Options {
    opts.set_enable_blob_files(true);
    opts.set_min_blob_size(STATE_BLOB_BYTES_MIN);
    // Blob files and SST files alike: small batches stay inline in the SST files.
    opts.set_blob_compression_type(compression.rocksdb());
    opts.set_compression_type(compression.rocksdb());
    opts
}

/// Whether files under `data_dir` can be written and read with O_DIRECT: creates a probe file,
/// writes one aligned 4 KiB block, reads it back, removes the file. RocksDB would otherwise find
/// out at its first flush, as a background error that stops every write (or at its first read).
fn direct_io_works(data_dir: &Path) -> bool {
    use rustix::fs::{Mode, OFlags};
    use std::io::{Read, Write};
    const BLOCK: usize = 4096;
    if std::fs::create_dir_all(data_dir).is_err() {
        return false;
    }
    let probe = data_dir.join(".direct-write-probe");
    let fd = match rustix::fs::open(
        &probe,
        OFlags::CREATE | OFlags::WRONLY | OFlags::TRUNC | OFlags::DIRECT,
        Mode::from_raw_mode(0o600),
    ) {
        Ok(fd) => fd,
        Err(_) => {
            let _ = std::fs::remove_file(&probe);
            return false;
        }
    };
    // O_DIRECT wants the buffer aligned to the block size; take an aligned window of a larger one.
    let mut buffer = vec![0u8; 2 * BLOCK];
    let skip = (BLOCK - buffer.as_ptr() as usize % BLOCK) % BLOCK;
    let window = skip..skip + BLOCK;
    let works = std::fs::File::from(fd)
        .write_all(&buffer[window.clone()])
        .and_then(|()| {
            let fd = rustix::fs::open(&probe, OFlags::RDONLY | OFlags::DIRECT, Mode::empty())?;
            std::fs::File::from(fd).read_exact(&mut buffer[window])
        })
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    works
}

/// Data dirs written before the split hold the state machine as a column family of the log
/// database. Copy its rows into the state database, make them durable, then drop the column
/// family. A crash part-way leaves the column family in place and the copy is redone (it writes
/// the same keys), so the move is all or nothing.
fn migrate_legacy_state_machine(log_path: &Path, state: &DB) -> Result<(), rocksdb::Error> {
    let Ok(existing) = DB::list_cf(&Options::default(), log_path) else {
        return Ok(()); // no log database yet: a new node
    };
    if !existing.iter().any(|name| name == CF_STATE_MACHINE) {
        return Ok(());
    }
    let mut opts = base_options();
    opts.set_recycle_log_file_num(0);
    let cfs = existing
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let mut legacy = DB::open_cf_descriptors(&opts, log_path, cfs)?;
    let rows = copy_rows(&legacy, state)?;
    legacy.drop_cf(CF_STATE_MACHINE)?;
    tracing::info!(
        rows,
        "moved the state machine out of the log database (format upgrade)"
    );
    Ok(())
}

/// Copies the legacy `state_machine` column family into the state database and flushes it.
fn copy_rows(legacy: &DB, state: &DB) -> Result<u64, rocksdb::Error> {
    let from = legacy
        .cf_handle(CF_STATE_MACHINE)
        .expect("listed column family is open");
    let to = state
        .cf_handle(CF_STATE_MACHINE)
        .expect("state_machine column family is created at open");
    let mut no_wal = WriteOptions::default();
    no_wal.disable_wal(true);
    let mut batch = WriteBatch::default();
    let mut rows = 0u64;
    for item in legacy.iterator_cf(from, IteratorMode::Start) {
        let (key, value) = item?;
        batch.put_cf(to, key, value);
        rows += 1;
        if batch.size_in_bytes() >= 4 << 20 {
            state.write_opt(std::mem::take(&mut batch), &no_wal)?;
        }
    }
    state.write_opt(batch, &no_wal)?;
    state.flush_cf(to)?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With direct I/O asked for (the default), flushed and compacted rows read back intact
    /// after a reopen, whether this file system took O_DIRECT or the node fell back; the probe
    /// leaves nothing behind in the data dir.
    #[test]
    fn flushed_rows_survive_direct_io_and_a_reopen() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let options = StorageOptions::default();
        assert!(options.direct_io);
        let rows = 2_000u32;
        {
            let dbs = open(dir.path(), &options).expect("open");
            let sm = dbs.state.cf_handle(CF_STATE_MACHINE).unwrap();
            for i in 0..rows {
                // Past the blob threshold every other row, so blob files are written too.
                let len = if i % 2 == 0 { 100 } else { 5_000 };
                dbs.state
                    .put_cf(sm, i.to_be_bytes(), vec![i as u8; len])
                    .unwrap();
            }
            dbs.state.flush_cf(sm).unwrap();
            dbs.state.compact_range_cf(sm, None::<&[u8]>, None::<&[u8]>);
        }
        let dbs = open(dir.path(), &options).expect("reopen");
        let sm = dbs.state.cf_handle(CF_STATE_MACHINE).unwrap();
        for i in [0u32, 1, 999, rows - 1] {
            let len = if i % 2 == 0 { 100 } else { 5_000 };
            let value = dbs.state.get_cf(sm, i.to_be_bytes()).unwrap().unwrap();
            assert_eq!(value, vec![i as u8; len], "row {i}");
        }
        assert!(!dir.path().join(".direct-write-probe").exists());
    }

    /// A data dir of the one-database layout (state machine as a column family of `db/`) opens
    /// with every row in place: state-machine rows in the state database, the log untouched, the
    /// old column family gone; opening it again changes nothing.
    #[test]
    fn a_one_database_data_dir_is_upgraded_in_place() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let log_path = dir.path().join(LOG_DB_DIR);
        {
            let legacy = DB::open_cf_descriptors(
                &base_options(),
                &log_path,
                [CF_RAFT_LOG, CF_RAFT_META, CF_STATE_MACHINE]
                    .map(|name| ColumnFamilyDescriptor::new(name, Options::default())),
            )
            .expect("create a legacy database");
            let cf = |name| legacy.cf_handle(name).expect("column family");
            legacy.put_cf(cf(CF_RAFT_LOG), b"entry-1", b"e1").unwrap();
            legacy.put_cf(cf(CF_RAFT_META), b"vote", b"v").unwrap();
            for i in 0..10_000u32 {
                let value = vec![i as u8; 1000];
                legacy
                    .put_cf(cf(CF_STATE_MACHINE), i.to_be_bytes(), value)
                    .unwrap();
            }
        }
        for _ in 0..2 {
            let dbs = open(dir.path(), &StorageOptions::default()).expect("open and upgrade");
            let sm = dbs.state.cf_handle(CF_STATE_MACHINE).unwrap();
            let rows: Vec<_> = dbs
                .state
                .iterator_cf(sm, IteratorMode::Start)
                .map(|item| item.unwrap())
                .collect();
            assert_eq!(rows.len(), 10_000);
            assert_eq!(&*rows[7].0, 7u32.to_be_bytes());
            assert_eq!(&*rows[7].1, vec![7u8; 1000]);
            let log = dbs.log.cf_handle(CF_RAFT_LOG).unwrap();
            assert_eq!(dbs.log.get_cf(log, b"entry-1").unwrap().unwrap(), b"e1");
            let meta = dbs.log.cf_handle(CF_RAFT_META).unwrap();
            assert_eq!(dbs.log.get_cf(meta, b"vote").unwrap().unwrap(), b"v");
            drop(dbs);
            let cfs = DB::list_cf(&Options::default(), &log_path).unwrap();
            assert!(!cfs.iter().any(|name| name == CF_STATE_MACHINE), "{cfs:?}");
        }
    }
}
