//! How answers are printed: tables, `key: value` lists, short times and durations. JSON values
//! become one-line cells (control characters removed, null as `-`).

use serde_json::Value;

pub(super) fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// A JSON value as a cell: strings bare, null as `-`.
pub(super) fn text_of(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => clean(s),
        other => clean(&other.to_string()),
    }
}

/// One line: control characters (newlines in error messages) become spaces.
pub(super) fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Left-aligned columns separated by two spaces; no trailing spaces.
pub(super) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub(super) fn duration_of(v: &Value) -> String {
    match v.as_u64() {
        Some(ms) => format_ms(ms),
        None => "-".into(),
    }
}

pub(super) fn format_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// `2024-05-01T12:00:00.123456+00:00` → `2024-05-01 12:00:00Z`; anything else as it is.
pub(super) fn short_time(v: &Value) -> String {
    format_time(v, false)
}

/// As [`short_time`], with milliseconds: `2024-05-01 12:00:00.123Z`.
pub(super) fn time_ms(v: &Value) -> String {
    format_time(v, true)
}

pub(super) fn format_time(v: &Value, millis: bool) -> String {
    let Some(s) = v.as_str() else {
        return text_of(v);
    };
    let Some((date, time)) = s.split_once('T') else {
        return s.to_string();
    };
    if time.len() < 8 || !time.is_char_boundary(8) {
        return s.to_string();
    }
    let (hms, rest) = time.split_at(8);
    let zone = match rest.find(['Z', 'z', '+', '-']) {
        Some(i) => &rest[i..],
        None => "",
    };
    let zone = match zone {
        "Z" | "z" | "+00:00" => "Z",
        other => other,
    };
    let fraction = if millis {
        let digits: String = rest
            .strip_prefix('.')
            .unwrap_or("")
            .chars()
            .take_while(char::is_ascii_digit)
            .chain(std::iter::repeat('0'))
            .take(3)
            .collect();
        format!(".{digits}")
    } else {
        String::new()
    };
    format!("{date} {hms}{fraction}{zone}")
}

/// `key:  value` lines with the values aligned.
pub(super) fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count() + 1)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        out.push_str(&format!("{:<width$}  {v}\n", format!("{k}:")));
    }
    out
}

pub(super) fn indented(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if !line.is_empty() {
            out.push_str("  ");
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

pub(super) fn yes_no(v: &Value) -> String {
    match v.as_bool() {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => text_of(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_aligns_columns_without_trailing_spaces() {
        let t = table(
            &["NAME", "STATE", "LAST_ERROR"],
            &[
                vec!["a".into(), "running".into(), "-".into()],
                vec!["long-name".into(), "disabled".into(), "boom".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME       STATE     LAST_ERROR\n\
             a          running   -\n\
             long-name  disabled  boom\n"
        );
    }

    #[test]
    fn durations_and_times_are_short() {
        assert_eq!(format_ms(12), "12ms");
        assert_eq!(format_ms(1500), "1.5s");
        assert_eq!(format_ms(123_000), "2m03s");
        assert_eq!(format_ms(3_900_000), "1h05m");
        assert_eq!(
            short_time(&json!("2024-05-01T12:00:00.123456+00:00")),
            "2024-05-01 12:00:00Z"
        );
        assert_eq!(
            short_time(&json!("2024-05-01T12:00:00Z")),
            "2024-05-01 12:00:00Z"
        );
        assert_eq!(
            short_time(&json!("2024-05-01T12:00:00.5+02:00")),
            "2024-05-01 12:00:00+02:00"
        );
        assert_eq!(
            time_ms(&json!("2024-05-01T12:00:00.5+02:00")),
            "2024-05-01 12:00:00.500+02:00"
        );
        assert_eq!(
            time_ms(&json!("2024-05-01T12:00:00Z")),
            "2024-05-01 12:00:00.000Z"
        );
    }
}
