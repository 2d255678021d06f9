//! The snapshot stream format: every key and value of one Raft group's state machine, as read from
//! one checkpoint ([`super::snapshot_store`]), so a snapshot is a consistent cut at its last
//! applied log id. This is what a follower receives and installs.
//!
//! Layout: `MAGIC`, then records `[u32 BE key length][key][u32 BE value length][value]`, then the
//! end marker `u32::MAX` and the record count (u64 BE). Keys are stored without the group id prefix
//! so a snapshot can be installed into any group. A file without the end marker or with a wrong
//! count is rejected as truncated.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

const MAGIC: &[u8; 8] = b"RLSNAP1\n";
const END_MARKER: u32 = u32::MAX;

/// One state-machine row: (key without the group prefix, value).
pub type Row = (Box<[u8]>, Box<[u8]>);

/// Writes a snapshot file and fsyncs it before returning.
pub fn write<'a>(
    path: &Path,
    rows: impl Iterator<Item = io::Result<(Box<[u8]>, Box<[u8]>)>> + 'a,
) -> io::Result<u64> {
    let file = File::create(path)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(MAGIC)?;
    let mut count = 0u64;
    for row in rows {
        let (key, value) = row?;
        out.write_all(&(key.len() as u32).to_be_bytes())?;
        out.write_all(&key)?;
        out.write_all(&(value.len() as u32).to_be_bytes())?;
        out.write_all(&value)?;
        count += 1;
    }
    out.write_all(&END_MARKER.to_be_bytes())?;
    out.write_all(&count.to_be_bytes())?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(count)
}

/// Reads a snapshot file, handing each row to `visit`. Fails on a malformed or truncated file
/// before `visit` has seen the end, so callers apply rows into a batch they discard on error.
pub fn read(path: &Path, mut visit: impl FnMut(Vec<u8>, Vec<u8>)) -> io::Result<u64> {
    let mut input = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a raftlog snapshot file",
        ));
    }
    let mut count = 0u64;
    loop {
        let key_len = read_u32(&mut input)?;
        if key_len == END_MARKER {
            let mut expected = [0u8; 8];
            input.read_exact(&mut expected)?;
            if u64::from_be_bytes(expected) != count {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "snapshot record count mismatch",
                ));
            }
            return Ok(count);
        }
        let key = read_exact_vec(&mut input, key_len)?;
        let value_len = read_u32(&mut input)?;
        let value = read_exact_vec(&mut input, value_len)?;
        visit(key, value);
        count += 1;
    }
}

fn read_u32(input: &mut impl Read) -> io::Result<u32> {
    let mut buf = [0u8; 4];
    input.read_exact(&mut buf)?;
    Ok(u32::from_be_bytes(buf))
}

fn read_exact_vec(input: &mut impl Read, len: u32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    input.read_exact(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        let rows: Vec<Row> = vec![
            (b"a".to_vec().into(), b"1".to_vec().into()),
            (b"bb".to_vec().into(), Vec::new().into()),
        ];
        assert_eq!(write(&path, rows.clone().into_iter().map(Ok)).unwrap(), 2);
        let mut seen = Vec::new();
        read(&path, |k, v| seen.push((k, v))).unwrap();
        assert_eq!(
            seen,
            vec![(b"a".to_vec(), b"1".to_vec()), (b"bb".to_vec(), vec![])]
        );

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(
            read(&path, |_, _| {}).is_err(),
            "a truncated snapshot must be rejected"
        );
    }
}
