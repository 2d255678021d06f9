//! The free-space guard: produce is refused (RESOURCE_EXHAUSTED) while the data dir's file system
//! has less than `disk_free_bytes_min` available, so clients back off before a full disk stops the
//! node (a failed RocksDB write stops Raft, and the node then exits: see `server::run`).
//!
//! A task samples the file system every second; requests read the last sample. The check runs
//! where a produce request is admitted, on the node that receives it and again on the leader
//! that proposes it — never while applying, which must not depend on the local machine.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Available bytes of the data dir's file system, as last sampled.
#[derive(Clone)]
pub struct DiskSpace {
    available: Arc<AtomicU64>,
}

impl DiskSpace {
    /// Samples `data_dir` now and then every second, for as long as the returned handle lives.
    pub fn watch(data_dir: PathBuf) -> Self {
        let available = Arc::new(AtomicU64::new(available_bytes(&data_dir)));
        let weak = Arc::downgrade(&available);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            loop {
                ticks.tick().await;
                let Some(available) = weak.upgrade() else {
                    return;
                };
                let dir = data_dir.clone();
                if let Ok(bytes) = tokio::task::spawn_blocking(move || available_bytes(&dir)).await
                {
                    available.store(bytes, Ordering::Relaxed);
                }
            }
        });
        Self { available }
    }

    pub fn available(&self) -> u64 {
        self.available.load(Ordering::Relaxed)
    }
}

/// Bytes an unprivileged writer may still use on `dir`'s file system; `u64::MAX` if unknown (a
/// failed sample must not stop writes).
fn available_bytes(dir: &std::path::Path) -> u64 {
    match rustix::fs::statvfs(dir) {
        Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "cannot read free disk space: {e}");
            u64::MAX
        }
    }
}
