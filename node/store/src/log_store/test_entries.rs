//! Entries the log's unit tests share.

use bytes::Bytes;

use super::recent::Cached;
use crate::test_support::{log_id, log_id_in};
use raftlog_core::types::{Entry, EntryPayload};

/// An entry that counts 1 MiB against the cache's bound.
pub(super) fn entry(index: u64) -> Cached {
    let entry = Entry {
        log_id: log_id(index),
        payload: EntryPayload::Blank,
    };
    Cached {
        entry,
        encoded: Bytes::from(vec![0; 512 * 1024]),
    }
}

/// An append of one record of `300 * index` bytes at `index` of term 2.
pub(super) fn append_in_term_2(index: u64) -> Entry {
    use raftlog_core::{Command, Record};
    Entry {
        log_id: log_id_in(2, index),
        payload: EntryPayload::Normal(Command::Append {
            topic: format!("t{index}"),
            partition: 0,
            records: vec![Record {
                key: None,
                value: vec![index as u8; 300 * index as usize].into(),
                headers: vec![("h".into(), bytes::Bytes::from_static(b"v"))],
                timestamp_ms: 7,
            }],
            proposed_at_ms: 1,
            producer: None,
            expected_end_offset: None,
        }),
    }
}
