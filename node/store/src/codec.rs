//! How values are stored in RocksDB (log entries, votes, state-machine rows) and sent to peers:
//! postcard, which writes a struct as its fields in order. Every value's encoding is an on-disk
//! format.

/// What one row costs a RocksDB write batch beyond its value's bytes (its tag, column family,
/// key and two lengths; this project's keys are under 40 bytes), for sizing a batch up front.
pub(crate) const WRITE_BATCH_ROW_OVERHEAD: usize = 64;

/// Encodes a value stored in RocksDB (log entries, votes, state-machine rows).
pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own plain data types into a Vec cannot fail. Sized first (a pass that only
    // counts) so the buffer is allocated once instead of doubling (and copying) its way up to a
    // megabyte-sized entry.
    let size =
        postcard::experimental::serialized_size(value).expect("postcard size of a storage value");
    postcard::to_extend(value, Vec::with_capacity(size))
        .expect("postcard encoding of a storage value")
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}
