//! Writing to stdout: a closed pipe (`raftlog consume t | head -1`) ends the process quietly with
//! status 0, as `cat` ends without a word; any other write error is reported. Plain aligned
//! tables for people (no borders, so they stay narrow), JSON for programs.

use std::io::Write;

/// Exits quietly when the reader of stdout has gone; reports any other write error.
pub fn check(result: std::io::Result<()>) {
    if let Err(e) = result {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// Writes bytes to stdout as they are (flushed at once: records followed live must show).
pub fn bytes(b: &[u8]) {
    let mut out = std::io::stdout().lock();
    check(out.write_all(b).and_then(|()| out.flush()));
}

/// Writes one line to stdout.
pub fn line(s: &str) {
    let mut out = std::io::stdout().lock();
    check(writeln!(out, "{s}").and_then(|()| out.flush()));
}

/// Prints a JSON value on one line.
pub fn json(v: &serde_json::Value) {
    line(&v.to_string());
}

/// Prints a JSON value indented (whole answers such as a topic list).
pub fn json_pretty(v: &serde_json::Value) {
    line(&serde_json::to_string_pretty(v).expect("JSON values serialize"));
}

/// Columns aligned with two spaces between them, headers in capitals, as rpk prints them.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<const N: usize>(header: [&str; N]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| h.to_uppercase()).collect()],
        }
    }

    pub fn row(&mut self, cells: impl IntoIterator<Item = impl ToString>) {
        self.rows
            .push(cells.into_iter().map(|c| c.to_string()).collect());
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                let cells = self.rows.iter().filter_map(|r| r.get(c));
                cells.map(|s| s.chars().count()).max().unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if c + 1 < row.len() {
                    let pad = widths[c] - cell.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        bytes(self.render().as_bytes());
    }
}

/// A count with its noun, singular or plural.
pub fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// An offset range in words: "offsets 3 to 7", "offset 3", or "no records (next offset 3)".
pub fn offsets(first: u64, end: u64) -> String {
    match end.saturating_sub(first) {
        0 => format!("no records (next offset {end})"),
        1 => format!("offset {first}"),
        _ => format!("offsets {first} to {}", end - 1),
    }
}
