//! The nodes' own log files, judged after a run: a fault must not make a node flood its log. A
//! follower that is down for a day should cost the leader a few thousand lines, not the ~100 GB a
//! warning per retry adds up to; [`LINES_PER_SECOND_MAX`] is the line above which a run fails.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Most lines a node may write in any one second of a run.
pub const LINES_PER_SECOND_MAX: u64 = 1_000;

/// Name under which a node over [`LINES_PER_SECOND_MAX`] shows up in the anomaly types.
pub const LOG_FLOOD: &str = "log-flood";

/// How much one node logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRate {
    pub node: u64,
    pub lines: u64,
    /// The second (as the log's timestamps print it, UTC) with the most lines, and how many.
    pub busiest_second: String,
    pub busiest_second_lines: u64,
    /// Seconds in which the node logged anything.
    pub seconds: u64,
}

/// Counts the lines of one log by the second of their timestamp (`2026-12-07T01:56:33...`, as
/// tracing's text format starts a line; JSON lines carry `"timestamp":"..."`). A line without one
/// (a panic's continuation) counts in the second before it.
pub fn rate(node: u64, log: &str) -> LogRate {
    let mut per_second: BTreeMap<&str, u64> = BTreeMap::new();
    let mut current = "";
    let mut lines = 0;
    for line in log.lines() {
        lines += 1;
        if let Some(second) = second_of(line) {
            current = second;
        }
        *per_second.entry(current).or_default() += 1;
    }
    let (busiest_second, busiest_second_lines) = per_second
        .iter()
        .max_by_key(|(_, n)| **n)
        .map_or((String::new(), 0), |(s, n)| (s.to_string(), *n));
    LogRate {
        node,
        lines,
        busiest_second,
        busiest_second_lines,
        seconds: per_second.len() as u64,
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of a line's timestamp, if it has one.
fn second_of(line: &str) -> Option<&str> {
    let start = match line.find("\"timestamp\":\"") {
        Some(i) => i + "\"timestamp\":\"".len(),
        None => 0,
    };
    let candidate = line.get(start..start + 19)?;
    let b = candidate.as_bytes();
    let shaped = b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':';
    (shaped && b[..4].iter().all(u8::is_ascii_digit)).then_some(candidate)
}

/// The rates of `node-N/node.log` under `data_dir`, for nodes 1..=`nodes`.
pub fn rates(data_dir: &Path, nodes: usize) -> anyhow::Result<Vec<LogRate>> {
    (1..=nodes as u64)
        .map(|node| {
            let path = data_dir.join(format!("node-{node}")).join("node.log");
            let bytes = std::fs::read(&path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            Ok(rate(node, &String::from_utf8_lossy(&bytes)))
        })
        .collect()
}

/// Whether any node logged more than [`LINES_PER_SECOND_MAX`] lines in one second.
pub fn flooded(rates: &[LogRate]) -> bool {
    rates
        .iter()
        .any(|r| r.busiest_second_lines > LINES_PER_SECOND_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_count_by_the_second_of_their_timestamp() {
        let log = "\
2026-12-07T01:56:33.100Z  INFO a
2026-12-07T01:56:33.900Z  WARN b
  continuation of b
2026-12-07T01:56:34.000Z  INFO c
{\"timestamp\":\"2026-12-07T01:56:34.5Z\",\"level\":\"INFO\"}
";
        let r = rate(2, log);
        assert_eq!(r.lines, 5);
        assert_eq!(r.seconds, 2);
        assert_eq!(
            (r.busiest_second.as_str(), r.busiest_second_lines),
            ("2026-12-07T01:56:33", 3)
        );
        assert!(!flooded(std::slice::from_ref(&r)));
        let flood: String = (0..=LINES_PER_SECOND_MAX)
            .map(|i| format!("2026-12-07T01:56:35.{i:06}Z  WARN retry\n"))
            .collect();
        assert!(flooded(&[r, rate(3, &flood)]));
    }
}
