//! Job records' timestamps serialized without `core::fmt`: chrono writes them through
//! `collect_str`, which was 7 % of the CPU per webhook job (BENCHMARKS.md, "Issue 12"). The text
//! is chrono's own (`SecondsFormat::AutoSi`, `Z`), checked against it by the test below, so
//! records read back and the API answers the same; reading stays chrono's.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serializer;

/// Writes `v` as `digits` decimal digits at `at`; returns the position after them.
fn put(buf: &mut [u8; 32], at: usize, v: u32, digits: u32) -> usize {
    let mut d = 10u32.pow(digits - 1);
    let mut at = at;
    while d > 0 {
        buf[at] = b'0' + ((v / d) % 10) as u8;
        at += 1;
        d /= 10;
    }
    at
}

/// `2026-12-04T21:56:27.123Z`: 0, 3, 6 or 9 fraction digits, as chrono writes it.
fn write(dt: &DateTime<Utc>, buf: &mut [u8; 32]) -> Option<usize> {
    let year = dt.year();
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut nanos = dt.nanosecond();
    let mut sec = dt.second();
    if nanos >= 1_000_000_000 {
        // A leap second: chrono writes it as second 60.
        nanos -= 1_000_000_000;
        sec += 1;
    }
    let mut at = put(buf, 0, year as u32, 4);
    for (sep, v) in [
        (b'-', dt.month()),
        (b'-', dt.day()),
        (b'T', dt.hour()),
        (b':', dt.minute()),
        (b':', sec),
    ] {
        buf[at] = sep;
        at = put(buf, at + 1, v, 2);
    }
    let mut end = at;
    if nanos != 0 {
        buf[end] = b'.';
        end = if nanos.is_multiple_of(1_000_000) {
            put(buf, end + 1, nanos / 1_000_000, 3)
        } else if nanos.is_multiple_of(1_000) {
            put(buf, end + 1, nanos / 1_000, 6)
        } else {
            put(buf, end + 1, nanos, 9)
        };
    }
    buf[end] = b'Z';
    Some(end + 1)
}

pub fn serialize<S: Serializer>(dt: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 32];
    match write(dt, &mut buf).and_then(|n| std::str::from_utf8(&buf[..n]).ok()) {
        Some(text) => s.serialize_str(text),
        None => serde::Serialize::serialize(dt, s),
    }
}

pub fn serialize_option<S: Serializer>(
    dt: &Option<DateTime<Utc>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match dt {
        Some(dt) => serialize(dt, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn ours(dt: &DateTime<Utc>) -> String {
        let mut out = Vec::new();
        serialize(dt, &mut serde_json::Serializer::new(&mut out)).unwrap();
        String::from_utf8(out).unwrap()
    }

    proptest! {
        #[test]
        fn the_text_is_chronos(secs in -70_000_000_000i64..300_000_000_000, nanos in 0u32..2_000_000_000, round in 0u32..4) {
            let nanos = match round {
                0 => 0,
                1 => nanos / 1_000_000 * 1_000_000,
                2 => nanos / 1_000 * 1_000,
                _ => nanos,
            };
            if let Some(dt) = Utc.timestamp_opt(secs, nanos).single() {
                prop_assert_eq!(ours(&dt), serde_json::to_string(&dt).unwrap());
            }
        }
    }

    #[test]
    fn now_and_the_edges_are_chronos() {
        for dt in [
            Utc::now(),
            Utc.timestamp_opt(0, 0).unwrap(),
            Utc.timestamp_opt(59, 1_500_000_000).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap(),
        ] {
            assert_eq!(ours(&dt), serde_json::to_string(&dt).unwrap(), "{dt:?}");
        }
    }
}
