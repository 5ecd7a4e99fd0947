//! Fire-time computation shared by `schedule` and `poll` triggers: a cron expression evaluated
//! on the wall clock of an IANA time zone, parsed by the `croner` crate with POSIX/Vixie cron
//! meanings: day of week 0 or 7 = Sunday, 1 = Monday … 6 = Saturday, names `SUN`…`SAT` and
//! `JAN`…`DEC`; when both day of month and day of week are restricted, a day matching either
//! one fires. Lines have 5 fields (second 0), 6 (seconds first) or 7 (a year last), or are
//! `@yearly`-style aliases.
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
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// A parsed cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct CronSpec {
    cron: Cron,
    tz: Tz,
    hours_all: bool,
}

/// How far around a moment offsets are compared to find DST changes; no zone shifts by more.
const DST_REACH: i64 = 3 * 3600;

/// The fields of a 7-field line, with what each takes (for error messages).
const FIELDS: [(&str, &str); 7] = [
    ("second", "0-59"),
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day of month", "1-31, L (last), 15W (nearest weekday)"),
    ("month", "1-12 or JAN-DEC"),
    (
        "day of week",
        "0-7 or SUN-SAT (0 and 7 = Sunday, 1 = Monday), ranges upward (FRI-SUN), 5L, 1#2",
    ),
    ("year", "1-5000"),
];

const SHAPES: &str = "expected 5 fields `minute hour day-of-month month day-of-week`, 6 with \
                      seconds first, 7 with a year last, or @yearly/@monthly/@weekly/@daily/@hourly";

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Optional)
        // `5/15` (from 5, every 15): accepted by the cron crate millgate used before.
        .sloppy_ranges(true)
        .build()
}

fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map_or_else(String::new, |c| c.to_lowercase().chain(chars).collect())
}

/// Says which field of a line croner refused, and what that field takes: croner's own
/// errors do not name the field.
fn explain(expr: &str, error: &croner::errors::CronError) -> String {
    let reason = error.to_string();
    let reason = reason
        .trim_start_matches("Component error: ")
        .trim_start_matches("Invalid pattern: ")
        .trim_end_matches('.');
    let trimmed = expr.trim();
    let fields: Vec<&str> = trimmed.split_whitespace().collect();
    if trimmed.starts_with('@') || !(5..=7).contains(&fields.len()) {
        return format!("`{expr}` is not a valid cron expression: {SHAPES}");
    }
    // A 5-field line starts at the minute.
    let first = usize::from(fields.len() == 5);
    for (i, field) in fields.iter().enumerate() {
        let slot = first + i;
        let mut probe = ["*"; 7];
        probe[slot] = field;
        if let Err(e) = parser().parse(&probe.join(" ")) {
            let (name, takes) = FIELDS[slot];
            let why = e.to_string();
            let why = why
                .trim_start_matches("Component error: ")
                .trim_start_matches("Pattern contains illegal characters: ")
                .trim_end_matches('.');
            let why = lower_first(why);
            return format!(
                "`{expr}`: {name} `{field}` is not valid ({why}); {name} takes {takes}"
            );
        }
    }
    format!("`{expr}` is not a valid cron expression ({reason}); {SHAPES}")
}

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
        let cron = parser()
            .parse(expr)
            .map_err(|e| ("cron".to_string(), explain(expr, &e)))?;
        let hours_all = (0..24).all(|h| cron.pattern.hour_match(h).unwrap_or(false));
        let spec = Self {
            cron,
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

    /// Wall-clock candidates strictly after `local` (croner on a zone-less clock).
    fn local_after(&self, local: NaiveDateTime) -> impl Iterator<Item = NaiveDateTime> + '_ {
        let mut cursor = local;
        std::iter::from_fn(move || {
            let next = self.cron.find_next_occurrence(&cursor, false).ok()?;
            cursor = next;
            Some(next)
        })
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

    /// The next `n` fire times after Saturday 2025-05-31 12:00 UTC, as `Www YYYY-MM-DD HH:MM`.
    fn days(expr: &str, n: usize) -> Vec<String> {
        let s = spec(expr, "UTC");
        s.upcoming(utc("2025-05-31T12:00:00Z"), n)
            .iter()
            .map(|t| t.format("%a %Y-%m-%d %H:%M").to_string())
            .collect()
    }

    #[test]
    fn day_of_week_numbers_follow_posix_cron_in_5_and_6_fields() {
        let weekdays = [
            "Mon 2025-06-02 09:00",
            "Tue 2025-06-03 09:00",
            "Wed 2025-06-04 09:00",
            "Thu 2025-06-05 09:00",
            "Fri 2025-06-06 09:00",
            "Mon 2025-06-09 09:00",
        ];
        for expr in [
            "0 9 * * 1-5",
            "0 0 9 * * 1-5",
            "0 9 * * MON-FRI",
            "0 0 9 * * mon-fri",
            "0 9 * * 1,2,3,4,5",
            "0 9 * * Mon,Tue,Wed,Thu,Fri",
        ] {
            assert_eq!(days(expr, 6), weekdays, "{expr}");
        }
        let sundays = ["Sun 2025-06-01 09:00", "Sun 2025-06-08 09:00"];
        for expr in [
            "0 9 * * 0",
            "0 9 * * 7",
            "0 9 * * SUN",
            "0 0 9 * * 0",
            "0 0 9 * * 7",
            "0 0 9 * * SUN",
        ] {
            assert_eq!(days(expr, 2), sundays, "{expr}");
        }
        assert_eq!(
            days("0 9 * * 1", 2),
            ["Mon 2025-06-02 09:00", "Mon 2025-06-09 09:00"]
        );
        assert_eq!(
            days("0 0 9 * * 6", 2),
            ["Sat 2025-06-07 09:00", "Sat 2025-06-14 09:00"]
        );
        // Ranges ending on Sunday: 5-7 and FRI-SUN are Friday to Sunday.
        let weekend = [
            "Sun 2025-06-01 09:00",
            "Fri 2025-06-06 09:00",
            "Sat 2025-06-07 09:00",
            "Sun 2025-06-08 09:00",
        ];
        for expr in [
            "0 9 * * 5-7",
            "0 9 * * FRI-SUN",
            "0 0 9 * * 5-7",
            "0 9 * * 0,5,6",
        ] {
            assert_eq!(days(expr, 4), weekend, "{expr}");
        }
        // Steps over the week: 0-6/2 = Sunday, Tuesday, Thursday, Saturday.
        assert_eq!(
            days("0 9 * * 0-6/2", 4),
            [
                "Sun 2025-06-01 09:00",
                "Tue 2025-06-03 09:00",
                "Thu 2025-06-05 09:00",
                "Sat 2025-06-07 09:00",
            ]
        );
        // With a year (7 fields): the first Monday of 2026.
        assert_eq!(days("0 0 9 * * 1 2026", 1), ["Mon 2026-01-05 09:00"]);
        // Nth and last weekday: the second Monday, the last Friday.
        assert_eq!(days("0 9 * * 1#2", 1), ["Mon 2025-06-09 09:00"]);
        assert_eq!(days("0 9 * * 5L", 1), ["Fri 2025-06-27 09:00"]);
    }

    #[test]
    fn day_of_month_and_day_of_week_both_restricted_fire_on_either() {
        // As in cron: the 13th of each month and every Friday.
        assert_eq!(
            days("0 9 13 * 5", 4),
            [
                "Fri 2025-06-06 09:00",
                "Fri 2025-06-13 09:00",
                "Fri 2025-06-20 09:00",
                "Fri 2025-06-27 09:00",
            ]
        );
        assert_eq!(
            days("0 9 13 7 5", 2),
            ["Fri 2025-07-04 09:00", "Fri 2025-07-11 09:00"]
        );
        assert_eq!(days("0 9 13 * *", 1), ["Fri 2025-06-13 09:00"]);
    }

    #[test]
    fn invalid_fields_are_named_with_their_range() {
        for (expr, says) in [
            ("61 * * * *", "minute `61` is not valid"),
            ("0 61 * * * *", "minute `61` is not valid"),
            ("61 * * * * *", "second `61` is not valid"),
            ("0 24 * * *", "hour `24` is not valid"),
            ("0 9 32 * *", "day of month `32` is not valid"),
            ("0 9 * 13 *", "month `13` is not valid"),
            ("0 9 * * 8", "day of week `8` is not valid"),
            ("0 9 * * 6-0", "day of week `6-0` is not valid"),
            ("0 9 * * MON-XYZ", "day of week `MON-XYZ` is not valid"),
            ("*/0 * * * *", "minute `*/0` is not valid"),
            ("0 9 * *", "expected 5 fields"),
            ("@reboot", "expected 5 fields"),
        ] {
            let (key, msg) = CronSpec::parse(expr, "UTC").unwrap_err();
            assert_eq!(key, "cron");
            assert!(msg.contains(says), "{expr}: {msg}");
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
        let (_, msg) = CronSpec::parse("61 * * * *", "UTC").unwrap_err();
        assert!(msg.contains("0-59"), "{msg}");
        let (_, msg) = CronSpec::parse("0 9 * * 8", "UTC").unwrap_err();
        assert!(msg.contains("0-7") && msg.contains("Sunday"), "{msg}");
        let (_, msg) = CronSpec::parse("0 0 30 2 *", "UTC").unwrap_err();
        assert!(msg.contains("never fires"), "{msg}");
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
