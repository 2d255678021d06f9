//! The entries this node appended last, kept in memory with the bytes stored for each
//! ([`RecentEntries`]): the log's reads of its tail come from here, and so do the encodings that
//! replication sends ([`EncodedEntries`]).

use std::collections::VecDeque;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::codec::encode;
use raftlog_core::limits::RECENT_ENTRIES_BYTES_MAX;
use raftlog_core::types::{AppendEntriesRequest, Entry};

/// The entries appended last, each as the entry and as the bytes stored for it, so that
/// replication to each follower neither reads back from RocksDB and decodes what this node has
/// just written (perf had that at ~10 % of a leader's CPU at C=64) nor encodes every entry again
/// for every follower ([`EncodedEntries`]). Holds a contiguous run ending at the last entry, at
/// most [`RECENT_ENTRIES_BYTES_MAX`] of memory.
#[derive(Clone, Default)]
pub(super) struct RecentEntries(Arc<Mutex<RecentRun>>);

/// One cached entry.
pub(super) struct Cached {
    pub(super) entry: Entry,
    /// Its encoding, exactly as written to the log.
    pub(super) encoded: Bytes,
}

impl Cached {
    /// Memory the entry holds, counted as twice its encoding (the decoded records are about as
    /// large as their encoding).
    fn bytes(&self) -> usize {
        2 * self.encoded.len()
    }
}

#[derive(Default)]
struct RecentRun {
    /// In index order, contiguous.
    entries: VecDeque<Cached>,
    /// [`Cached::bytes`] of `entries`.
    bytes: usize,
}

/// Drops what left the cache: inline for a few entries (an append evicting the oldest), on
/// tokio's blocking pool for more. A purge takes up to [`RECENT_ENTRIES_BYTES_MAX`] of cached
/// entries out at once, thousands of record buffers, and freeing them took 4-11 ms (measured at
/// 1 KiB, C=64): inside openraft's core task, which purges, every append and commit waited that
/// long.
fn free_elsewhere<T: Send + 'static>(garbage: Vec<T>) {
    const FREE_INLINE_MAX: usize = 16;
    if garbage.len() <= FREE_INLINE_MAX {
        return; // dropped here
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(garbage))),
        Err(_) => drop(garbage),
    }
}

impl RecentRun {
    /// Takes the entries at `positions` out of the run.
    fn take(&mut self, positions: impl RangeBounds<usize>) -> Vec<Cached> {
        let taken: Vec<_> = self.entries.drain(positions).collect();
        self.bytes -= taken.iter().map(Cached::bytes).sum::<usize>();
        taken
    }

    /// Position of the entry at `index`, if the run holds it.
    fn position(&self, index: u64) -> Option<usize> {
        let first = self.entries.front()?.entry.log_id.index;
        let position = usize::try_from(index.checked_sub(first)?).ok()?;
        (position < self.entries.len()).then_some(position)
    }
}

impl RecentEntries {
    pub(super) fn appended(&self, entries: Vec<Cached>) {
        let mut removed = Vec::new();
        {
            let mut recent = self.0.lock().expect("recent entries lock");
            for cached in entries {
                // Only a contiguous run can stand in for the log.
                if recent
                    .entries
                    .back()
                    .is_some_and(|last| last.entry.log_id.index + 1 != cached.entry.log_id.index)
                {
                    removed.extend(std::mem::take(&mut *recent).entries);
                }
                recent.bytes += cached.bytes();
                recent.entries.push_back(cached);
            }
            while recent.bytes > RECENT_ENTRIES_BYTES_MAX {
                removed.extend(recent.take(..1));
            }
        }
        free_elsewhere(removed);
    }

    pub(super) fn truncated(&self, from: u64) {
        let removed = {
            let mut recent = self.0.lock().expect("recent entries lock");
            let kept = recent
                .entries
                .partition_point(|c| c.entry.log_id.index < from);
            recent.take(kept..)
        };
        free_elsewhere(removed);
    }

    pub(super) fn purged(&self, upto: u64) {
        let removed = {
            let mut recent = self.0.lock().expect("recent entries lock");
            let gone = recent
                .entries
                .partition_point(|c| c.entry.log_id.index <= upto);
            recent.take(..gone)
        };
        free_elsewhere(removed);
    }

    /// The entries from `start` below `end`, up to `bytes_max` (at least one), if the run holds
    /// `start`.
    pub(super) fn read(
        &self,
        start: u64,
        end: Option<u64>,
        bytes_max: usize,
    ) -> Option<Vec<Entry>> {
        let recent = self.0.lock().expect("recent entries lock");
        let first = recent.position(start)?;
        let mut entries = Vec::new();
        let mut bytes = 0;
        for cached in recent.entries.range(first..) {
            if end.is_some_and(|end| cached.entry.log_id.index >= end) {
                break;
            }
            entries.push(cached.entry.clone());
            bytes += cached.encoded.len();
            if bytes >= bytes_max {
                break;
            }
        }
        Some(entries)
    }
}

/// The stored encoding of recently appended entries, for the replication streams: an
/// AppendEntries is the entries' encodings end to end (raftlog-node's `raft::network`), so an entry is
/// encoded once, when it is appended, instead of once more for every follower. Cheap to clone.
#[derive(Clone)]
pub struct EncodedEntries(pub(super) RecentEntries);

impl EncodedEntries {
    /// The bytes stored for each of `entries` that is still cached.
    pub(super) fn get(&self, entries: &[Entry]) -> Vec<Option<Bytes>> {
        let recent = self.0 .0.lock().expect("recent entries lock");
        entries
            .iter()
            .map(|entry| {
                let cached = &recent.entries[recent.position(entry.log_id.index)?];
                // The same index under another leader is another entry (before a truncation
                // lands): a log id names one entry.
                (cached.entry.log_id == entry.log_id).then(|| cached.encoded.clone())
            })
            .collect()
    }

    /// The postcard encoding of `rpc`, byte for byte what [`encode`] makes of it, with each
    /// entry's stored encoding copied in where the cache still holds it. postcard writes a struct
    /// as its fields in order and a `Vec` as its length (a varint) and then its elements, so
    /// AppendEntries (`vote, prev_log_id, entries, leader_commit`) is a head, the entries end to
    /// end, and a tail.
    pub fn encode_append_entries(&self, rpc: &AppendEntriesRequest) -> Vec<u8> {
        // Entries no longer cached are encoded outside the cache's lock.
        let entries: Vec<Bytes> = self
            .get(&rpc.entries)
            .into_iter()
            .zip(&rpc.entries)
            .map(|(stored, entry)| stored.unwrap_or_else(|| Bytes::from(encode(entry))))
            .collect();
        let head = encode(&(&rpc.vote, &rpc.prev_log_id, rpc.entries.len()));
        let tail = encode(&rpc.leader_commit);
        let size = head.len() + entries.iter().map(Bytes::len).sum::<usize>() + tail.len();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&head);
        for entry in &entries {
            out.extend_from_slice(entry);
        }
        out.extend_from_slice(&tail);
        out
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::log_store::test_entries::{append_in_term_2, entry};
    use crate::test_support::log_id_in;
    use raftlog_core::types::Vote;

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|e| e.iter().map(|e| e.log_id.index).collect())
    }

    /// The cache answers only for a contiguous run it holds, follows truncation and purging,
    /// and keeps at most its byte bound (the oldest entries go first).
    #[test]
    fn recent_entries_stand_in_for_the_log_tail_only() {
        let recent = RecentEntries::default();
        recent.appended((1..=5).map(entry).collect());
        assert_eq!(
            indexes(recent.read(2, Some(4), usize::MAX)),
            Some(vec![2, 3])
        );
        assert_eq!(indexes(recent.read(3, None, 1 << 20)), Some(vec![3, 4]));
        assert_eq!(indexes(recent.read(6, None, usize::MAX)), None);

        recent.truncated(4);
        assert_eq!(
            indexes(recent.read(1, None, usize::MAX)),
            Some(vec![1, 2, 3])
        );
        recent.appended(vec![entry(4)]);
        recent.purged(2);
        assert_eq!(indexes(recent.read(1, None, usize::MAX)), None);
        assert_eq!(indexes(recent.read(3, None, usize::MAX)), Some(vec![3, 4]));

        // A gap: the run starts over.
        recent.appended(vec![entry(9)]);
        assert_eq!(indexes(recent.read(3, None, usize::MAX)), None);
        assert_eq!(indexes(recent.read(9, None, usize::MAX)), Some(vec![9]));

        // The byte bound: 1 MiB entries, so only the newest RECENT_ENTRIES_BYTES_MAX MiB stay.
        let kept = (RECENT_ENTRIES_BYTES_MAX >> 20) as u64;
        recent.appended((10..10 + kept + 5).map(entry).collect());
        assert_eq!(indexes(recent.read(14, Some(15), usize::MAX)), None);
        assert_eq!(
            indexes(recent.read(15, Some(16), usize::MAX)),
            Some(vec![15])
        );
    }

    /// An AppendEntries put together from stored encodings is the one `encode` makes, whether
    /// the cache holds all, some or none of its entries, and an entry cached under another
    /// leader's log id at the same index is encoded afresh.
    #[test]
    fn append_entries_from_stored_encodings_match_encoding_them() {
        let append = append_in_term_2;
        let cached = |entry: Entry| Cached {
            encoded: Bytes::from(encode(&entry)),
            entry,
        };
        let recent = RecentEntries::default();
        // Cached: 1 under term 1 (so index 1 of term 2 is not it), 2 and 3 under term 2.
        let mut stale = append(1);
        stale.log_id = log_id_in(1, 1);
        recent.appended(vec![cached(stale), cached(append(2)), cached(append(3))]);
        let stored = EncodedEntries(recent);
        for entries in [
            vec![],
            vec![append(2), append(3)],
            (1..=200).map(append).collect(),
        ] {
            let rpc = AppendEntriesRequest {
                vote: Vote::new_committed(2, 1),
                prev_log_id: Some(log_id_in(2, 0)),
                entries,
                leader_commit: Some(log_id_in(2, 1)),
            };
            assert_eq!(stored.encode_append_entries(&rpc), encode(&rpc));
        }
    }
}
