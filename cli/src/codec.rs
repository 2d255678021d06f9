//! Bytes in and out of the command line: the key/value encodings, escaping for terminals, and the
//! lossless JSON form of a record. Every encoding round-trips any bytes exactly:
//! `consume --value-encoding E` fed to `produce --value-encoding E` stores the same value.

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use serde_json::{json, Map, Value};

use raftlog_client::pb;

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// How a key or value is written on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Encoding {
    /// UTF-8 with C-style escapes: `\\`, `\n`, `\t`, `\r`, `\0`, `\xNN` for control characters
    /// and bytes that are not UTF-8, `\u{NNNN}` for Unicode control characters.
    Text,
    /// The bytes as they are (binary output can upset a terminal).
    Raw,
    /// Two lowercase hex digits per byte.
    Hex,
    /// Standard base64 with padding.
    Base64,
}

impl Encoding {
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        match name {
            "text" => Ok(Encoding::Text),
            "raw" => Ok(Encoding::Raw),
            "hex" => Ok(Encoding::Hex),
            "base64" => Ok(Encoding::Base64),
            _ => bail!("unknown encoding '{name}': use text, raw, hex or base64"),
        }
    }

    /// The bytes written in this encoding.
    pub fn encode(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            Encoding::Text => escape(bytes).into_bytes(),
            Encoding::Raw => bytes.to_vec(),
            Encoding::Hex => hex::encode(bytes).into_bytes(),
            Encoding::Base64 => BASE64.encode(bytes).into_bytes(),
        }
    }

    /// The bytes that `input`, written in this encoding, stands for.
    pub fn decode(self, input: &[u8]) -> anyhow::Result<Vec<u8>> {
        match self {
            Encoding::Text => unescape(input),
            Encoding::Raw => Ok(input.to_vec()),
            Encoding::Hex => hex::decode(input.trim_ascii()).map_err(|e| anyhow!("not hex ({e})")),
            Encoding::Base64 => BASE64
                .decode(input.trim_ascii())
                .map_err(|e| anyhow!("not base64 ({e})")),
        }
    }
}

/// UTF-8 with every control character, backslash and invalid byte escaped, so the result is
/// printable on one line and [`unescape`] gives back the exact bytes.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                '\0' => out.push_str("\\0"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The bytes an escaped string stands for (the inverse of [`escape`]; also what `produce
/// --value-encoding text` reads).
pub fn unescape(input: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] != b'\\' {
            out.push(input[i]);
            i += 1;
            continue;
        }
        let escape = *input
            .get(i + 1)
            .context("a lone backslash at the end (write \\\\ for a backslash)")?;
        i += 2;
        match escape {
            b'\\' => out.push(b'\\'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'0' => out.push(0),
            b'x' => {
                let digits = input.get(i..i + 2).context("\\x needs two hex digits")?;
                out.push(
                    u8::from_str_radix(std::str::from_utf8(digits)?, 16)
                        .context("\\x needs two hex digits")?,
                );
                i += 2;
            }
            b'u' => {
                let rest = input.get(i..).unwrap_or_default();
                let close = rest.iter().position(|&b| b == b'}');
                let (Some(b'{'), Some(close)) = (rest.first(), close) else {
                    bail!("\\u needs braces: \\u{{1b}}");
                };
                let hex = std::str::from_utf8(&rest[1..close])?;
                let c = u32::from_str_radix(hex, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .with_context(|| format!("\\u{{{hex}}} is not a Unicode character"))?;
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                i += close + 1;
            }
            other => bail!(
                "unknown escape \\{} (text encoding knows \\\\ \\n \\t \\r \\0 \\xNN \\u{{N}})",
                char::from(other)
            ),
        }
    }
    Ok(out)
}

/// A key, value or header value in the JSON form: a JSON string when the bytes are UTF-8 (and
/// the encoding is text or raw), else the bytes in base64 under `<name>_base64`; hex and base64
/// encodings always give their string under `<name>`.
fn put_bytes(object: &mut Map<String, Value>, name: &str, bytes: &[u8], encoding: Encoding) {
    match (encoding, std::str::from_utf8(bytes)) {
        (Encoding::Text | Encoding::Raw, Ok(s)) => {
            object.insert(name.into(), json!(s));
        }
        (Encoding::Text | Encoding::Raw, Err(_)) => {
            object.insert(format!("{name}_base64"), json!(BASE64.encode(bytes)));
        }
        (Encoding::Hex, _) => {
            object.insert(name.into(), json!(hex::encode(bytes)));
        }
        (Encoding::Base64, _) => {
            object.insert(name.into(), json!(BASE64.encode(bytes)));
        }
    }
}

/// The bytes of `<name>` or `<name>_base64` (see [`put_bytes`]); `None` when neither is there.
fn get_bytes(
    object: &Map<String, Value>,
    name: &str,
    encoding: Encoding,
) -> anyhow::Result<Option<Vec<u8>>> {
    if let Some(v) = object.get(&format!("{name}_base64")) {
        let s = v
            .as_str()
            .with_context(|| format!("{name}_base64 must be a string"))?;
        return Ok(Some(Encoding::Base64.decode(s.as_bytes())?));
    }
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(match encoding {
            Encoding::Text | Encoding::Raw => s.as_bytes().to_vec(),
            other => other.decode(s.as_bytes())?,
        })),
        Some(_) => bail!("{name} must be a string"),
    }
}

/// The encodings of keys and values (header values follow the value's).
#[derive(Clone, Copy, Debug)]
pub struct Encodings {
    pub key: Encoding,
    pub value: Encoding,
}

/// A record in the JSON form `consume --json` prints and `produce --from-json` reads.
pub fn record_json(topic: &str, partition: u32, r: &pb::Record, enc: Encodings) -> Value {
    let mut o = Map::new();
    o.insert("topic".into(), json!(topic));
    o.insert("partition".into(), json!(partition));
    o.insert("offset".into(), json!(r.offset));
    o.insert("timestamp_ms".into(), json!(r.timestamp_ms));
    match &r.key {
        Some(key) => put_bytes(&mut o, "key", key, enc.key),
        None => {
            o.insert("key".into(), Value::Null);
        }
    }
    put_bytes(&mut o, "value", &r.value, enc.value);
    // A list, not an object: header keys may repeat and their order is kept.
    let headers: Vec<Value> = r
        .headers
        .iter()
        .map(|h| {
            let mut header = Map::new();
            header.insert("key".into(), json!(h.key));
            put_bytes(&mut header, "value", &h.value, enc.value);
            Value::Object(header)
        })
        .collect();
    o.insert("headers".into(), Value::Array(headers));
    Value::Object(o)
}

/// A record from its JSON form (topic, partition and offset are ignored: the producer decides).
pub fn record_from_json(line: &[u8], enc: Encodings) -> anyhow::Result<pb::Record> {
    let value: Value = serde_json::from_slice(line).context("not JSON")?;
    let Value::Object(o) = value else {
        bail!("not a JSON object");
    };
    let headers = match o.get("headers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|h| {
                let h = h.as_object().context("a header must be an object")?;
                let key = h.get("key").and_then(Value::as_str);
                Ok(pb::Header {
                    key: key.context("a header needs a string key")?.to_string(),
                    value: get_bytes(h, "value", enc.value)?.unwrap_or_default().into(),
                })
            })
            .collect::<anyhow::Result<_>>()?,
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| {
                let v = v.as_str().context("header values must be strings")?;
                Ok(pb::Header {
                    key: k.clone(),
                    value: v.as_bytes().to_vec().into(),
                })
            })
            .collect::<anyhow::Result<_>>()?,
        Some(_) => bail!("headers must be a list of {{\"key\", \"value\"}} objects"),
    };
    Ok(pb::Record {
        key: get_bytes(&o, "key", enc.key)?.map(Into::into),
        value: get_bytes(&o, "value", enc.value)?
            .context("no value (or value_base64)")?
            .into(),
        headers,
        timestamp_ms: o.get("timestamp_ms").and_then(Value::as_i64).unwrap_or(0),
        offset: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_encoding_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255u8).chain("é\u{9b}\\x".bytes()).collect();
        for enc in [
            Encoding::Text,
            Encoding::Raw,
            Encoding::Hex,
            Encoding::Base64,
        ] {
            assert_eq!(enc.decode(&enc.encode(&all)).unwrap(), all, "{enc:?}");
        }
    }

    #[test]
    fn text_escapes_what_a_terminal_or_a_tab_separated_line_would_misread() {
        assert_eq!(escape(b"a\tb\nc\x1b[31m\\"), "a\\tb\\nc\\x1b[31m\\\\");
        assert_eq!(escape(b"\xff\xfe ok"), "\\xff\\xfe ok");
        assert_eq!(escape("\u{9b}é".as_bytes()), "\\u{9b}é");
        assert!(unescape(b"\\q").is_err());
        assert!(unescape(b"trailing\\").is_err());
    }

    #[test]
    fn json_form_is_lossless_for_binary_values_and_repeated_headers() {
        let record = pb::Record {
            key: Some(b"k\xff".to_vec().into()),
            value: vec![0, 159, 146, 150].into(),
            headers: vec![
                pb::Header {
                    key: "h".into(),
                    value: b"1".to_vec().into(),
                },
                pb::Header {
                    key: "h".into(),
                    value: b"\xc3".to_vec().into(),
                },
            ],
            timestamp_ms: 42,
            offset: 7,
        };
        let enc = Encodings {
            key: Encoding::Text,
            value: Encoding::Text,
        };
        let line = record_json("t", 0, &record, enc).to_string();
        let back = record_from_json(line.as_bytes(), enc).unwrap();
        assert_eq!(
            (back.key, back.value, back.headers),
            (record.key, record.value, record.headers)
        );
    }
}
