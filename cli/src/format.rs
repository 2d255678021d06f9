//! `consume --format`: a per-record template in the manner of `rpk topic consume -f`.
//!
//! `%t` topic, `%p` partition, `%o` offset, `%d` timestamp in ms (`%d{rfc3339}` as a date),
//! `%k` key, `%v` value, `%h` headers as `key=value` separated by spaces, `%K` `%V` key and
//! value lengths, `%H` header count, `%%` a percent sign. `%k`, `%v` and `%h` take an encoding
//! in braces (`%v{hex}`, `%v{base64}`, `%v{raw}`, `%v{text}`); without one they use
//! `--key-encoding` / `--value-encoding`. Escapes: `\n`, `\t`, `\r`, `\\`, `\0`, `\xNN`.

use anyhow::{bail, Context};

use crate::codec::{escape, unescape, Encoding, Encodings};
use raftlog_client::pb;

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Literal(Vec<u8>),
    Topic,
    Partition,
    Offset,
    Timestamp { rfc3339: bool },
    Key(Option<Encoding>),
    Value(Option<Encoding>),
    Headers(Option<Encoding>),
    KeyLength,
    ValueLength,
    HeaderCount,
}

#[derive(Debug, Clone)]
pub struct Template {
    pieces: Vec<Piece>,
}

/// The text output when neither `--format` nor `--json` is given: partition, offset, key and
/// value, tab-separated (escaping keeps tabs and newlines inside a value from splitting it).
pub const DEFAULT: &str = "%p\\t%o\\t%k\\t%v\\n";

impl Template {
    pub fn parse(template: &str) -> anyhow::Result<Self> {
        let bytes = unescape(template.as_bytes()).context("in --format")?;
        let mut pieces = Vec::new();
        let mut literal = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] != b'%' {
                literal.push(bytes[i]);
                i += 1;
                continue;
            }
            let Some(&verb) = bytes.get(i + 1) else {
                bail!("--format ends with a lone %: write %% for a percent sign");
            };
            i += 2;
            let argument = if bytes.get(i) == Some(&b'{') {
                let close = bytes[i..]
                    .iter()
                    .position(|&b| b == b'}')
                    .context("--format: an opening { without a closing }")?;
                let arg = String::from_utf8_lossy(&bytes[i + 1..i + close]).to_string();
                i += close + 1;
                Some(arg)
            } else {
                None
            };
            if verb == b'%' {
                literal.push(b'%');
                continue;
            }
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(piece(verb, argument)?);
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Self { pieces })
    }

    /// The record written out through the template.
    pub fn render(&self, topic: &str, partition: u32, r: &pb::Record, enc: Encodings) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(b) => out.extend_from_slice(b),
                Piece::Topic => out.extend_from_slice(escape(topic.as_bytes()).as_bytes()),
                Piece::Partition => out.extend_from_slice(partition.to_string().as_bytes()),
                Piece::Offset => out.extend_from_slice(r.offset.to_string().as_bytes()),
                Piece::Timestamp { rfc3339: false } => {
                    out.extend_from_slice(r.timestamp_ms.to_string().as_bytes())
                }
                Piece::Timestamp { rfc3339: true } => {
                    out.extend_from_slice(rfc3339(r.timestamp_ms).as_bytes())
                }
                Piece::Key(e) => {
                    if let Some(key) = &r.key {
                        out.extend(e.unwrap_or(enc.key).encode(key));
                    }
                }
                Piece::Value(e) => out.extend(e.unwrap_or(enc.value).encode(&r.value)),
                Piece::Headers(e) => {
                    for (i, h) in r.headers.iter().enumerate() {
                        if i > 0 {
                            out.push(b' ');
                        }
                        out.extend_from_slice(escape(h.key.as_bytes()).as_bytes());
                        out.push(b'=');
                        out.extend(e.unwrap_or(enc.value).encode(&h.value));
                    }
                }
                Piece::KeyLength => {
                    let len = r.key.as_ref().map_or(0, |k| k.len());
                    out.extend_from_slice(len.to_string().as_bytes())
                }
                Piece::ValueLength => out.extend_from_slice(r.value.len().to_string().as_bytes()),
                Piece::HeaderCount => out.extend_from_slice(r.headers.len().to_string().as_bytes()),
            }
        }
        out
    }
}

fn piece(verb: u8, argument: Option<String>) -> anyhow::Result<Piece> {
    let encoding = |arg: Option<String>| arg.map(|a| Encoding::parse(&a)).transpose();
    Ok(match verb {
        b't' => Piece::Topic,
        b'p' => Piece::Partition,
        b'o' => Piece::Offset,
        b'd' => match argument.as_deref() {
            None | Some("ms") => Piece::Timestamp { rfc3339: false },
            Some("rfc3339") => Piece::Timestamp { rfc3339: true },
            Some(other) => bail!("--format: %d{{{other}}}: use %d (ms) or %d{{rfc3339}}"),
        },
        b'k' => Piece::Key(encoding(argument)?),
        b'v' => Piece::Value(encoding(argument)?),
        b'h' => Piece::Headers(encoding(argument)?),
        b'K' => Piece::KeyLength,
        b'V' => Piece::ValueLength,
        b'H' => Piece::HeaderCount,
        other => bail!(
            "--format: unknown %{}: use %t %p %o %d %k %v %h %K %V %H or %%",
            char::from(other)
        ),
    })
}

/// A timestamp in ms as an RFC 3339 date in UTC, with milliseconds.
fn rfc3339(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_prints_fields_in_their_encodings() {
        let record = pb::Record {
            key: Some(b"k".to_vec().into()),
            value: b"\x01\xff".to_vec().into(),
            headers: vec![pb::Header {
                key: "a".into(),
                value: b"1".to_vec().into(),
            }],
            timestamp_ms: 1_000,
            offset: 5,
        };
        let enc = Encodings {
            key: Encoding::Text,
            value: Encoding::Text,
        };
        let t =
            Template::parse("%t/%p@%o %k=%v %v{hex} %v{base64} [%h] %K %V %H %d{rfc3339} 100%%\\n")
                .unwrap();
        assert_eq!(
            String::from_utf8(t.render("t", 2, &record, enc)).unwrap(),
            "t/2@5 k=\\x01\\xff 01ff Af8= [a=1] 1 2 1 1970-01-01T00:00:01.000Z 100%\n"
        );
        assert!(Template::parse("%z").is_err());
        assert!(Template::parse("%v{rot13}").is_err());
    }
}
