//! The stored form of one record batch (a `state_machine` row under the BATCH tag): a fixed
//! 16-byte header — the leader's append time (i64 BE, ms) and the records' size (u64 BE, bytes as
//! counted by limits and retention) — then the records, postcard-encoded. The header lets the
//! retention pass judge a batch without decoding its records.
//!
//! On-disk format: changing it needs a migration and a flagged commit.

use raftlog_core::Record;

const HEADER_BYTES: usize = 16;

/// What the retention pass needs to know of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub appended_at_ms: i64,
    pub bytes: u64,
}

pub fn encode_batch(header: BatchHeader, records: &[Record]) -> Vec<u8> {
    // The records are encoded straight behind the header, into a buffer sized for both: no
    // second copy of the body.
    let body_bytes =
        postcard::experimental::serialized_size(&records).expect("postcard size of records");
    let mut value = Vec::with_capacity(HEADER_BYTES + body_bytes);
    value.extend_from_slice(&header.appended_at_ms.to_be_bytes());
    value.extend_from_slice(&header.bytes.to_be_bytes());
    postcard::to_extend(&records, value).expect("postcard encoding of records")
}

pub fn header(value: &[u8]) -> Result<BatchHeader, postcard::Error> {
    if value.len() < HEADER_BYTES {
        return Err(postcard::Error::DeserializeUnexpectedEnd);
    }
    Ok(BatchHeader {
        appended_at_ms: i64::from_be_bytes(value[..8].try_into().expect("8 bytes")),
        bytes: u64::from_be_bytes(value[8..16].try_into().expect("8 bytes")),
    })
}

/// [`Record`] as borrowed from a stored row: the same postcard layout (`Bytes` and `&[u8]` both
/// encode as length-prefixed bytes), decoded without copying any payload.
#[derive(serde::Deserialize)]
struct RecordRef<'a> {
    #[serde(borrow)]
    key: Option<&'a [u8]>,
    value: &'a [u8],
    #[serde(borrow)]
    headers: Vec<(&'a str, &'a [u8])>,
    timestamp_ms: i64,
}

/// The records of a stored row, their keys, values and headers sharing the row's buffer (the
/// fetch path: no per-record allocation or copy before the response is encoded).
pub fn records_shared(value: bytes::Bytes) -> Result<Vec<Record>, postcard::Error> {
    if value.len() < HEADER_BYTES {
        return Err(postcard::Error::DeserializeUnexpectedEnd);
    }
    let borrowed: Vec<RecordRef<'_>> = postcard::from_bytes(&value[HEADER_BYTES..])?;
    Ok(borrowed
        .into_iter()
        .map(|r| Record {
            key: r.key.map(|k| value.slice_ref(k)),
            value: value.slice_ref(r.value),
            headers: r
                .headers
                .into_iter()
                .map(|(k, v)| (k.to_string(), value.slice_ref(v)))
                .collect(),
            timestamp_ms: r.timestamp_ms,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trips_and_header_reads_alone() {
        let records = vec![Record {
            key: Some(bytes::Bytes::from_static(b"k")),
            value: bytes::Bytes::from_static(b"value"),
            headers: vec![("h".into(), bytes::Bytes::from_static(b"1"))],
            timestamp_ms: 7,
        }];
        let h = BatchHeader {
            appended_at_ms: -5,
            bytes: 8,
        };
        let value = encode_batch(h, &records);
        assert_eq!(header(&value).unwrap(), h);
        assert_eq!(
            records_shared(bytes::Bytes::from(value.clone())).unwrap(),
            records
        );
        assert!(header(&value[..3]).is_err());
    }
}
