//! Fire-time computation shared by `schedule` and `poll` triggers: a cron expression (the cron
//! crate's syntax, seconds first; 5-field expressions get `0` seconds; `@hourly`-style aliases)
//! evaluated on the wall clock of an IANA time zone.
//!
//! Daylight-saving changes follow cronie's rule, so a daily job neither vanishes nor runs
//! twice:
//! - a wall time skipped by a spring-forward gap fires once, at the end of the gap, when the
//!   expression names fixed hours (`30 2 * * *`); with a wildcard hour it is simply skipped,
//!   because the next hour's run follows anyway;
//! - a wall time repeated by a fall-back fires once (its first occurrence) when the expression
//!   names fixed hours; with a wildcard hour it fires in both occurrences, since both are real
//!   hours that passed.

use std::str::FromStr;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use cron::TimeUnitSpec;

/// A parsed cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct CronSpec {
    schedule: cron::Schedule,
    tz: Tz,
    hours_all: bool,
}

/// How far around a moment offsets are compared to find DST changes; no zone shifts by more.
const DST_REACH: i64 = 3 * 3600;

impl CronSpec {
    /// Parses `expr` in `timezone`. Errors are (key, message) so that they name `cron` or
    /// `timezone`.
    pub fn parse(expr: &str, timezone: &str) -> Result<Self, (String, String)> {
        let tz = Tz::from_str(timezone).map_err(|_| {
            (
                "timezone".to_string(),
                format!("unknown time zone `{timezone}` (use an IANA name such as `Europe/Berlin` or `UTC`)"),
            )
        })?;
        let trimmed = expr.trim();
        // The cron crate wants seconds; a classic 5-field line means "at second 0".
        let full = if !trimmed.starts_with('@') && trimmed.split_whitespace().count() == 5 {
            format!("0 {trimmed}")
        } else {
            trimmed.to_string()
        };
        let schedule = cron::Schedule::from_str(&full).map_err(|e| {
            (
                "cron".to_string(),
                format!("`{expr}` is not a valid cron expression ({e}); expected `sec min hour day-of-month month day-of-week [year]`, 5 fields without seconds, or @yearly/@monthly/@weekly/@daily/@hourly"),
            )
        })?;
        let hours_all = schedule.hours().is_all();
        let spec = Self {
            schedule,
            tz,
            hours_all,
        };
        if spec.next_after(Utc::now()).is_none() {
            return Err(("cron".into(), format!("`{expr}` never fires again")));
        }
        Ok(spec)
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    fn offset_secs(&self, at: DateTime<Utc>) -> i64 {
        i64::from(
            self.tz
                .offset_from_utc_datetime(&at.naive_utc())
                .fix()
                .local_minus_utc(),
        )
    }

    /// The largest offset difference within DST_REACH of `at`: 0 except near a DST change.
    fn spread(&self, at: DateTime<Utc>) -> i64 {
        let reach = Duration::seconds(DST_REACH);
        let offs = [
            self.offset_secs(at - reach),
            self.offset_secs(at),
            self.offset_secs(at + reach),
        ];
        let max = offs.iter().copied().max().unwrap_or(0);
        let min = offs.iter().copied().min().unwrap_or(0);
        max - min
    }

    /// The instants a wall-clock candidate stands for, under the DST rules above.
    fn instants(&self, local: NaiveDateTime) -> Vec<DateTime<Utc>> {
        match self.tz.from_local_datetime(&local) {
            LocalResult::Single(t) => vec![t.with_timezone(&Utc)],
            LocalResult::Ambiguous(a, b) if self.hours_all => {
                vec![a.with_timezone(&Utc), b.with_timezone(&Utc)]
            }
            LocalResult::Ambiguous(a, _) => vec![a.with_timezone(&Utc)],
            LocalResult::None if self.hours_all => Vec::new(),
            LocalResult::None => {
                // The end of the gap: the first wall-clock minute after `local` that exists.
                let mut probe = local.with_second(0).unwrap_or(local);
                for _ in 0..(24 * 60) {
                    probe += Duration::minutes(1);
                    if let Some(t) = self.tz.from_local_datetime(&probe).earliest() {
                        return vec![t.with_timezone(&Utc)];
                    }
                }
                Vec::new()
            }
        }
    }

    /// Wall-clock candidates strictly after `local`, from the cron crate (evaluated on a
    /// zone-less clock: UTC standing in for the naive local time).
    fn local_after(&self, local: NaiveDateTime) -> impl Iterator<Item = NaiveDateTime> + '_ {
        self.schedule
            .after(&Utc.from_utc_datetime(&local))
            .map(|t| t.naive_utc())
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz).naive_local();
        let spread = self.spread(after);
        // Near a fall-back, wall times just before `local` may come again after `after`.
        let start = local - Duration::seconds(spread);
        let mut best: Option<(DateTime<Utc>, NaiveDateTime, i64)> = None;
        for cand in self.local_after(start) {
            if let Some((_, first_local, reach)) = best {
                // Past this, a later wall time can no longer be an earlier instant.
                if cand > first_local + Duration::seconds(reach) {
                    break;
                }
            }
            for t in self.instants(cand) {
                if t > after && best.is_none_or(|(b, _, _)| t < b) {
                    let reach = best.map_or_else(|| self.spread(t).max(spread), |(_, _, r)| r);
                    let first = best.map_or(cand, |(_, l, _)| l);
                    best = Some((t, first, reach));
                }
            }
        }
        best.map(|(t, _, _)| t)
    }

    /// The next `n` fire times after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut cursor = after;
        while out.len() < n {
            match self.next_after(cursor) {
                Some(t) => {
                    out.push(t);
                    cursor = t;
                }
                None => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn spec(expr: &str, tz: &str) -> CronSpec {
        CronSpec::parse(expr, tz).unwrap_or_else(|e| panic!("{expr} {tz}: {e:?}"))
    }

    fn fmt(ts: &[DateTime<Utc>], tz: Tz) -> Vec<String> {
        ts.iter()
            .map(|t| {
                t.with_timezone(&tz)
                    .format("%Y-%m-%d %H:%M:%S %Z")
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn berlin_spring_forward_fixed_hour_fires_at_gap_end_once() {
        // 2025-03-30: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
        let s = spec("0 30 2 * * *", "Europe/Berlin");
        let got = s.upcoming(utc("2025-03-28T12:00:00Z"), 4);
        assert_eq!(
            fmt(&got, s.timezone()),
            [
                "2025-03-29 02:30:00 CET",
                "2025-03-30 03:00:00 CEST",
                "2025-03-31 02:30:00 CEST",
                "2025-04-01 02:30:00 CEST",
            ]
        );
    }

    #[test]
    fn berlin_fall_back_fixed_hour_fires_once_wildcard_hour_twice() {
        // 2025-10-26: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
        let s = spec("0 30 2 * * *", "Europe/Berlin");
        let got = s.upcoming(utc("2025-10-25T12:00:00Z"), 3);
        assert_eq!(
            fmt(&got, s.timezone()),
            [
                "2025-10-26 02:30:00 CEST",
                "2025-10-27 02:30:00 CET",
                "2025-10-28 02:30:00 CET",
            ]
        );
        let hourly = spec("0 30 * * * *", "Europe/Berlin");
        let got = hourly.upcoming(utc("2025-10-25T23:00:00Z"), 4);
        assert_eq!(
            fmt(&got, hourly.timezone()),
            [
                "2025-10-26 01:30:00 CEST",
                "2025-10-26 02:30:00 CEST",
                "2025-10-26 02:30:00 CET",
                "2025-10-26 03:30:00 CET",
            ]
        );
        // Strictly increasing and an hour apart: no repeat, no gap.
        for w in got.windows(2) {
            assert_eq!(w[1] - w[0], Duration::hours(1));
        }
    }

    #[test]
    fn berlin_spring_forward_wildcard_hour_skips_the_missing_hour() {
        let s = spec("0 30 * * * *", "Europe/Berlin");
        let got = s.upcoming(utc("2025-03-30T00:00:00Z"), 3);
        assert_eq!(
            fmt(&got, s.timezone()),
            [
                "2025-03-30 01:30:00 CET",
                "2025-03-30 03:30:00 CEST",
                "2025-03-30 04:30:00 CEST",
            ]
        );
    }

    #[test]
    fn new_york_daily_0230_across_both_changes() {
        let s = spec("30 2 * * *", "America/New_York");
        // 2025-03-09 spring forward: 02:30 EST does not exist.
        let got = s.upcoming(utc("2025-03-08T12:00:00Z"), 3);
        assert_eq!(
            fmt(&got, s.timezone()),
            [
                "2025-03-09 03:00:00 EDT",
                "2025-03-10 02:30:00 EDT",
                "2025-03-11 02:30:00 EDT",
            ]
        );
        // 2025-11-02 fall back at 02:00 EDT → 01:00 EST: 02:30 happens once, in EST.
        let got = s.upcoming(utc("2025-11-01T12:00:00Z"), 2);
        assert_eq!(
            fmt(&got, s.timezone()),
            ["2025-11-02 02:30:00 EST", "2025-11-03 02:30:00 EST"]
        );
        // 01:30 daily on the fall-back day: repeated wall time, fired once.
        let s = spec("0 30 1 * * *", "America/New_York");
        let got = s.upcoming(utc("2025-11-01T12:00:00Z"), 2);
        assert_eq!(
            fmt(&got, s.timezone()),
            ["2025-11-02 01:30:00 EDT", "2025-11-03 01:30:00 EST"]
        );
    }

    #[test]
    fn every_second_through_fall_back_is_strictly_increasing() {
        let s = spec("* * * * * *", "America/New_York");
        let start = utc("2025-11-02T05:59:58Z"); // 01:59:58 EDT
        let got = s.upcoming(start, 4);
        let expected: Vec<_> = (1..=4).map(|i| start + Duration::seconds(i)).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn aliases_and_five_fields() {
        let s = spec("@hourly", "UTC");
        assert_eq!(
            s.next_after(utc("2025-01-01T10:15:00Z")),
            Some(utc("2025-01-01T11:00:00Z"))
        );
        let s = spec("*/15 * * * *", "Asia/Kolkata");
        assert_eq!(
            s.next_after(utc("2025-01-01T10:16:00Z")),
            Some(utc("2025-01-01T10:30:00Z")) // +05:30: 16:00 local
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = CronSpec::parse("61 * * * * *", "UTC").unwrap_err();
        assert_eq!(e.0, "cron");
        let e = CronSpec::parse("* * * * * *", "Mars/Olympus").unwrap_err();
        assert_eq!(e.0, "timezone");
        assert!(e.1.contains("Mars/Olympus"), "{}", e.1);
    }
}
