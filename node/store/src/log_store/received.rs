//! The bytes a follower received its entries in ([`ReceivedEncodings`]), kept from the decoding
//! of an AppendEntries until openraft appends the entries, so that they are stored as they came.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use raftlog_core::limits::RECEIVED_ENCODINGS_BYTES_MAX;
use raftlog_core::types::{AppendEntriesRequest, Entry, LogId, Vote};

/// The entries a follower received, as the bytes they came in, from the moment the peer service
/// decodes an AppendEntries until openraft appends them: the append stores those bytes instead of
/// encoding each entry again (a second pass over every record on every follower). The bytes are
/// the leader's stored encoding ([`EncodedEntries`]); whatever their origin they are exactly what
/// the entry was decoded from, so reading the log back yields the entry openraft appended. Cheap
/// to clone.
#[derive(Clone, Default)]
pub struct ReceivedEncodings(Arc<Mutex<ReceivedRun>>);

#[derive(Default)]
struct ReceivedRun {
    /// In the order received.
    entries: VecDeque<(LogId, Bytes)>,
    /// Sum of the encodings' lengths.
    bytes: usize,
}

impl ReceivedEncodings {
    /// Decodes an AppendEntries (the postcard encoding of [`AppendEntriesRequest`]: a head, the
    /// entries end to end, a tail; see [`EncodedEntries::encode_append_entries`]) and keeps each
    /// entry's bytes, slices of `payload`, for its append. Strict: the message must end where
    /// `payload` does. An error says what is wrong with the message.
    pub fn decode_append_entries(&self, payload: &Bytes) -> Result<AppendEntriesRequest, String> {
        let offset = |rest: &[u8]| payload.len() - rest.len();
        let undecodable = |part: &str, e: postcard::Error| format!("{part}: {e}");
        let ((vote, prev_log_id, count), mut rest): ((Vote, Option<LogId>, usize), _) =
            postcard::take_from_bytes(payload).map_err(|e| undecodable("head", e))?;
        // The count is the peer's word: an entry takes at least a byte, so more than the bytes
        // left is garbage (and must not size an allocation).
        if count > rest.len() {
            return Err(format!("{count} entries announced in {} bytes", rest.len()));
        }
        let mut entries = Vec::with_capacity(count);
        let mut encodings = Vec::with_capacity(count);
        for _ in 0..count {
            let start = offset(rest);
            // Records share the message, which the entry's bytes keep alive anyway.
            let (entry, after): (Entry, _) =
                raftlog_core::shared::decoding_from(payload, || postcard::take_from_bytes(rest))
                    .map_err(|e| undecodable("entry", e))?;
            rest = after;
            encodings.push((entry.log_id, payload.slice(start..offset(rest))));
            entries.push(entry);
        }
        let (leader_commit, rest) =
            postcard::take_from_bytes(rest).map_err(|e| undecodable("tail", e))?;
        if !rest.is_empty() {
            return Err(format!("{} trailing bytes", rest.len()));
        }
        self.received(encodings);
        Ok(AppendEntriesRequest {
            vote,
            prev_log_id,
            entries,
            leader_commit,
        })
    }

    fn received(&self, encodings: Vec<(LogId, Bytes)>) {
        if encodings.is_empty() {
            return;
        }
        let removed = {
            let mut run = self.0.lock().expect("received encodings lock");
            for (log_id, bytes) in encodings {
                run.bytes += bytes.len();
                run.entries.push_back((log_id, bytes));
            }
            let mut removed = Vec::new();
            while run.bytes > RECEIVED_ENCODINGS_BYTES_MAX && run.entries.len() > 1 {
                let (_, bytes) = run.entries.pop_front().expect("more than one");
                run.bytes -= bytes.len();
                removed.push(bytes);
            }
            removed
        };
        drop(removed); // outside the lock
    }

    /// The bytes `log_id`'s entry was received as, if they are still kept. Entries received
    /// before it are dropped: appends come in the order entries arrive. When it is not kept,
    /// entries at or below its index are dropped: openraft passed them over (they would come
    /// again in a message of their own), and a node that has become leader receives no more
    /// entries to push them out.
    pub(super) fn take(&self, log_id: &LogId) -> Option<Bytes> {
        let mut run = self.0.lock().expect("received encodings lock");
        let Some(position) = run.entries.iter().position(|(id, _)| id == log_id) else {
            if !run.entries.is_empty() {
                let run = &mut *run;
                run.entries.retain(|(id, _)| id.index > log_id.index);
                run.bytes = run.entries.iter().map(|(_, bytes)| bytes.len()).sum();
            }
            return None;
        };
        let mut taken = None;
        for _ in 0..=position {
            let (_, bytes) = run.entries.pop_front().expect("within the run");
            run.bytes -= bytes.len();
            taken = Some(bytes);
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use openraft::storage::{IOFlushed, RaftLogStorage};
    use openraft::RaftLogReader;

    use super::*;
    use crate::codec::encode;
    use crate::log_store::test_entries::append_in_term_2;
    use crate::test_support::{log_id, log_id_in, open_databases};
    use crate::LogStore;
    use crate::StateFlushed;
    use raftlog_core::types::EntryPayload;
    use raftlog_core::TypeConfig;

    /// Received encodings wait in arrival order: an append takes its own and drops those
    /// received before it; an append of an entry not kept (another leader's at that index)
    /// drops those at or below its index and keeps the later ones.
    #[test]
    fn received_encodings_are_taken_in_order_and_passed_over_ones_leave() {
        let received = ReceivedEncodings::default();
        let bytes = |i: u64| Bytes::from(vec![i as u8; 10]);
        let kept = |received: &ReceivedEncodings| {
            let run = received.0.lock().expect("lock");
            let indexes: Vec<u64> = run.entries.iter().map(|(id, _)| id.index).collect();
            (indexes, run.bytes)
        };
        received.received((1..=4).map(|i| (log_id(i), bytes(i))).collect());
        assert_eq!(received.take(&log_id(2)), Some(bytes(2)));
        assert_eq!(kept(&received), (vec![3, 4], 20));
        assert_eq!(received.take(&log_id_in(2, 3)), None);
        assert_eq!(kept(&received), (vec![4], 10));
        assert_eq!(received.take(&log_id(4)), Some(bytes(4)));
        assert_eq!(kept(&received), (vec![], 0));
    }

    /// A follower decodes an AppendEntries exactly as postcard would, and its append stores
    /// each entry as the bytes it came in (slices of the message, not a new encoding), which
    /// read back as the entry; an entry openraft did not append is passed over; a message with
    /// bytes missing, left over or a count it cannot hold is refused and keeps nothing.
    #[tokio::test]
    async fn a_follower_stores_entries_as_they_were_received() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let dbs = open_databases(dir.path());
        let group = raftlog_core::METADATA_GROUP;
        let mut log = LogStore::new(&dbs, group, StateFlushed::default(), 0);
        let received = log.received_encodings();
        let rpc = AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(log_id_in(2, 0)),
            entries: (1..=3).map(append_in_term_2).collect(),
            leader_commit: Some(log_id_in(2, 1)),
        };
        let message = Bytes::from(encode(&rpc));

        let mut garbage = vec![message[..message.len() - 1].to_vec(), message.to_vec()];
        garbage[1].push(0);
        let mut huge_count = encode(&(&rpc.vote, &rpc.prev_log_id, usize::MAX));
        huge_count.extend_from_slice(&message[message.len() - 8..]);
        garbage.push(huge_count);
        for bad in garbage {
            assert!(received.decode_append_entries(&Bytes::from(bad)).is_err());
        }
        assert!(received.0.lock().expect("lock").entries.is_empty());

        let decoded = received
            .decode_append_entries(&message)
            .expect("a leader's message decodes");
        assert_eq!(encode(&decoded), encode(&rpc));
        let message_bytes = message.as_ptr_range();
        for entry in &decoded.entries {
            let EntryPayload::Normal(raftlog_core::Command::Append { records, .. }) =
                &entry.payload
            else {
                panic!("an append: {entry:?}");
            };
            assert!(
                message_bytes.contains(&records[0].value.as_ptr()),
                "a record's value shares the message"
            );
        }
        // openraft had entry 1 already: it appends 2 and 3.
        let (flushed_tx, flushed) = {
            use openraft::type_config::TypeConfigExt;
            TypeConfig::oneshot()
        };
        log.append(
            decoded.entries.into_iter().skip(1),
            IOFlushed::signal(flushed_tx),
        )
        .await
        .expect("append");
        flushed.await.expect("flush reported").expect("flushed");
        assert!(received.0.lock().expect("lock").entries.is_empty());
        let appended = &rpc.entries[1..];
        for (stored, entry) in log.encoded_entries().get(appended).iter().zip(appended) {
            let stored = stored.as_ref().expect("cached");
            assert_eq!(stored[..], encode(entry)[..]);
            assert!(
                message_bytes.contains(&stored.as_ptr()),
                "the bytes received, not a new encoding"
            );
        }
        drop(log);
        // A log opened afresh has nothing cached: it reads RocksDB.
        let mut reopened = LogStore::new(&dbs, group, StateFlushed::default(), 0);
        let read = reopened.try_get_log_entries(2..4).await.expect("read");
        assert_eq!(encode(&read), encode(&appended));
    }
}
