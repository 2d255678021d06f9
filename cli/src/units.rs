//! Values as people type them: durations (`90s`, `1h`, `7d`), sizes (`512KiB`, `1GiB`), offsets
//! the way Kafka users give them (`start`, `end`, `-10`, `+10`, `42`, `@-1h`, `@2026-12-07T10:00:00Z`)
//! and node endpoints (`host`, `host:port`, `http://host:port`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use raftlog_client::consumer::StartFrom;

/// The gRPC port a node listens on by default (`listen_addr`), added to an endpoint without one.
pub const DEFAULT_GRPC_PORT: u16 = 8051;

/// A duration with a unit: `500ms`, `90s`, `15m`, `1h`, `7d`, `1h30m`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e}: give a number with a unit, e.g. 500ms, 90s, 15m, 1h, 7d"))
}

/// A duration for a limit where 0 means none: `0` or a duration with a unit.
pub fn duration_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    duration(s)
}

/// A size in bytes: `1048576`, `512KiB`, `64MiB`, `1GiB` (powers of 1024), `1GB` (of 1000).
pub fn size(s: &str) -> Result<u64, String> {
    parse_size::parse_size(s.trim())
        .map_err(|e| format!("{e}: give bytes, or a number with a unit such as 512KiB, 1GiB"))
}

/// A size that must fit 32 bits (a record's largest size).
pub fn size_u32(s: &str) -> Result<u32, String> {
    let n = size(s)?;
    u32::try_from(n).map_err(|_| format!("{n} bytes is more than the 4 GiB this setting holds"))
}

/// Where a consumer starts, as `rpk topic consume -o` takes it.
pub fn offset(s: &str) -> Result<StartFrom, String> {
    let s = s.trim();
    let number = |digits: &str| {
        digits
            .parse::<u64>()
            .map_err(|_| format!("'{s}' is not an offset: {OFFSET_HELP}"))
    };
    match s {
        "start" | "beginning" | "oldest" | "earliest" => return Ok(StartFrom::Beginning),
        "end" | "newest" | "latest" => return Ok(StartFrom::End),
        _ => {}
    }
    if let Some(n) = s.strip_prefix('-') {
        return Ok(StartFrom::Last(number(n)?));
    }
    if let Some(n) = s.strip_prefix('+') {
        return Ok(StartFrom::AfterStart(number(n)?));
    }
    if let Some(time) = s.strip_prefix('@') {
        return timestamp_ms(time).map(StartFrom::Timestamp);
    }
    number(s).map(StartFrom::Offset)
}

pub const OFFSET_HELP: &str = "use start, end, an offset (42), -N (the last N records), +N \
     (N after the start), @TIME (@1733565600000 in ms, @2026-12-07T10:00:00Z) or @-DURATION (@-1h)";

/// A point in time in ms since the Unix epoch: ms, an RFC 3339 date, or a duration ago
/// (`-1h`; the sign may be left out).
pub fn timestamp_ms(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(time) = humantime::parse_rfc3339_weak(s) {
        return Ok(ms_since_epoch(time));
    }
    let ago = duration(s.strip_prefix('-').unwrap_or(s))
        .map_err(|_| format!("'@{s}' is not a time: {OFFSET_HELP}"))?;
    Ok(ms_since_epoch(SystemTime::now() - ago))
}

fn ms_since_epoch(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One node endpoint as the client library takes it (`host:port`): spaces trimmed, an
/// `http://` scheme dropped, the default gRPC port added when none is given.
pub fn endpoint(s: &str) -> anyhow::Result<String> {
    let s = s.trim().trim_end_matches('/');
    let s = s.strip_prefix("http://").unwrap_or(s);
    if s.starts_with("https://") {
        bail!("'{s}': give host:port without https://; --tls-ca turns TLS on");
    }
    if s.is_empty() {
        bail!("an empty endpoint in --endpoints");
    }
    let has_port = match s.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>()
                .with_context(|| format!("'{s}': the port must be a number"))?;
            !host.is_empty()
        }
        None => false,
    };
    Ok(if has_port {
        s.to_string()
    } else {
        format!("{s}:{DEFAULT_GRPC_PORT}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_as_kafka_users_type_them() {
        assert_eq!(offset("start"), Ok(StartFrom::Beginning));
        assert_eq!(offset("end"), Ok(StartFrom::End));
        assert_eq!(offset("-3"), Ok(StartFrom::Last(3)));
        assert_eq!(offset("+3"), Ok(StartFrom::AfterStart(3)));
        assert_eq!(offset("42"), Ok(StartFrom::Offset(42)));
        assert_eq!(offset("@1000"), Ok(StartFrom::Timestamp(1000)));
        assert_eq!(
            offset("@1970-01-01T00:00:02Z"),
            Ok(StartFrom::Timestamp(2000))
        );
        let StartFrom::Timestamp(hour_ago) = offset("@-1h").unwrap() else {
            panic!()
        };
        let now = ms_since_epoch(SystemTime::now());
        assert!((now - 3_600_000 - hour_ago).abs() < 10_000);
        assert!(offset("soon").is_err());
        assert!(offset("-x").is_err());
    }

    #[test]
    fn units_and_endpoints() {
        assert_eq!(duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(duration_or_zero("0"), Ok(Duration::ZERO));
        assert!(duration("5").is_err());
        assert_eq!(size("1GiB"), Ok(1 << 30));
        assert_eq!(size("4096"), Ok(4096));
        assert_eq!(
            endpoint(" http://127.0.0.1:8052/").unwrap(),
            "127.0.0.1:8052"
        );
        assert_eq!(endpoint("db1").unwrap(), "db1:8051");
        assert!(endpoint("db1:http").is_err());
    }
}
