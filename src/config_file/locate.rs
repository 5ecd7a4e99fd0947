//! Where in a configuration's text a problem is: the line of a key inside its `[[triggers]]`
//! entry, `[runnables.x]` or top-level table, and the dotted key being written at some point of
//! a line (for parse errors, which carry a span, and validation issues, which carry a key).

use std::collections::BTreeMap;

use millgate_actors::config::{ConfigIssue, Section};
use serde::Deserialize;

#[derive(Default, Deserialize)]
pub(super) struct SpanIndex {
    #[serde(default)]
    triggers: Vec<toml::Spanned<toml::Table>>,
    #[serde(default)]
    runnables: BTreeMap<String, toml::Spanned<toml::Table>>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line of `issue`'s key: inside its section's span when it has one, else the section.
pub(super) fn locate(text: &str, index: &SpanIndex, issue: &ConfigIssue) -> Option<usize> {
    let first_key = issue.key.split('.').next().unwrap_or("");
    let (start, end) = match &issue.section {
        Section::Trigger(i, _) => {
            let span = index.triggers.get(*i)?.span();
            (span.start, span.end)
        }
        Section::Runnable(name) => {
            let span = index.runnables.get(name)?.span();
            (span.start, span.end)
        }
        Section::Top(_) => {
            // `server.listen`: look for `listen =` inside the `[server]` table.
            let (table, key) = issue.key.split_once('.').unwrap_or(("", &issue.key));
            let section = text_sections(text).into_iter().find(|s| s.label == table)?;
            return find_key_line(
                text,
                section.start,
                section.end,
                key.split('.').next().unwrap_or(key),
            )
            .or(Some(line_of(text, section.start)));
        }
    };
    if first_key.is_empty() {
        return Some(line_of(text, start));
    }
    find_key_line(text, start, end, first_key).or(Some(line_of(text, start)))
}

fn find_key_line(text: &str, start: usize, end: usize, key: &str) -> Option<usize> {
    let region = text.get(start..end.min(text.len()))?;
    let mut offset = start;
    for line in region.split_inclusive('\n') {
        let t = line.trim_start();
        if let Some(after) = t.strip_prefix(key) {
            if after.trim_start().starts_with('=') {
                return Some(line_of(text, offset));
            }
        }
        offset += line.len();
    }
    None
}

/// A table as written in the file, for messages: `server`, `runnables.echo`, `triggers[1] (name)`.
struct TextSection {
    label: String,
    /// Offset of the header line, and of the next header (or the end of the text).
    start: usize,
    end: usize,
}

/// `[a.b]` → (`a.b`, false), `[[triggers]]` → (`triggers`, true); `None` for other lines (a
/// line of a multi-line array such as `["a"]` is not taken for a header).
fn header_path(line: &str) -> Option<(String, bool)> {
    let t = line.trim();
    let (inner, array) = if let Some(rest) = t.strip_prefix("[[") {
        (rest.split_once("]]")?.0, true)
    } else {
        (t.strip_prefix('[')?.split_once(']')?.0, false)
    };
    let ok = !inner.trim().is_empty()
        && inner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-. \"'".contains(c));
    ok.then(|| {
        let path: String = inner.chars().filter(|c| !c.is_whitespace()).collect();
        (path.replace(['"', '\''], ""), array)
    })
}

fn text_sections(text: &str) -> Vec<TextSection> {
    let mut sections: Vec<TextSection> = Vec::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if let Some((path, array)) = header_path(line) {
            if let Some(prev) = sections.last_mut() {
                prev.end = offset;
            }
            let label = if array {
                let n = counts.entry(path.clone()).or_default();
                *n += 1;
                format!("{path}[{}]", *n - 1)
            } else {
                path
            };
            sections.push(TextSection {
                label,
                start: offset,
                end: text.len(),
            });
        }
        offset += line.len();
    }
    // `[[triggers]]` entries are known by name in every other message.
    for s in sections
        .iter_mut()
        .filter(|s| s.label.starts_with("triggers["))
    {
        let region = &text[s.start..s.end];
        let name = region.lines().find_map(|l| {
            let value = l.trim_start().strip_prefix("name")?.trim_start();
            let value = value.strip_prefix('=')?.trim();
            let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'')?;
            Some(value[1..].split(quote).next()?.to_string())
        });
        if let Some(name) = name {
            s.label = format!("{} ({name})", s.label);
        }
    }
    sections
}

/// The dotted key whose value is being written at the end of `prefix` (a line cut at some
/// point): `timeout = "so` → `timeout`, `retry = { attempts = 3, initial = "so` → `retry.initial`.
fn key_before(prefix: &str) -> Option<String> {
    let mut stack: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut pending: Option<String> = None;
    let mut chars = prefix.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                let mut s = String::new();
                while let Some(d) = chars.next() {
                    if d == '\\' && c == '"' {
                        chars.next();
                    } else if d == c {
                        break;
                    } else {
                        s.push(d);
                    }
                }
                word = s;
            }
            '=' => pending = Some(std::mem::take(&mut word)),
            '{' => {
                if let Some(k) = pending.take() {
                    stack.push(k);
                }
                word.clear();
            }
            '}' => {
                stack.pop();
                pending = None;
                word.clear();
            }
            ',' | '[' | ']' => {
                if c == ',' {
                    pending = None;
                }
                word.clear();
            }
            '#' => break,
            c if c.is_whitespace() => {}
            c => word.push(c),
        }
    }
    stack.extend(pending.filter(|k| !k.is_empty()));
    (!stack.is_empty()).then(|| stack.join("."))
}

/// `section.key` (or either alone) for messages.
fn join_label(section: Option<&str>, key: Option<&str>) -> Option<String> {
    match (section, key) {
        (Some(s), Some(k)) => Some(format!("{s}.{k}")),
        (Some(s), None) => Some(s.to_string()),
        (None, Some(k)) => Some(k.to_string()),
        (None, None) => None,
    }
}

/// The key written on line `line` (1-based), with its section: for `${VAR}` errors.
pub(super) fn key_on_line(text: &str, line: usize) -> Option<String> {
    let start: usize = text
        .split_inclusive('\n')
        .take(line - 1)
        .map(str::len)
        .sum();
    let content = text[start..].lines().next().unwrap_or("");
    let cut = content.find("${").unwrap_or(content.len());
    let sections = text_sections(text);
    let section = sections.iter().rev().find(|s| s.start <= start);
    join_label(
        section.map(|s| s.label.as_str()),
        key_before(&content[..cut]).as_deref(),
    )
}

/// The first `key =` (bare or inside an inline table) in `start..end`: its line and dotted key.
fn find_key_anywhere(text: &str, start: usize, end: usize, key: &str) -> Option<(usize, String)> {
    let region = text.get(start..end.min(text.len()))?;
    let mut offset = start;
    for line in region.split_inclusive('\n') {
        if !line.trim_start().starts_with('#') {
            for (i, _) in line.match_indices(key) {
                let before = line[..i].chars().next_back();
                let after = line[i + key.len()..].trim_start();
                let starts_token = before.is_none_or(|c| c.is_whitespace() || "{,".contains(c));
                if starts_token && after.starts_with('=') {
                    let eq = line.len() - after.len() + 1;
                    let dotted = key_before(&line[..eq]).unwrap_or_else(|| key.to_string());
                    return Some((line_of(text, offset), dotted));
                }
            }
        }
        offset += line.len();
    }
    None
}

/// The first `key = <literal>` in `start..end` whose value is the string `value`.
fn find_string_value(text: &str, start: usize, end: usize, value: &str) -> Option<(usize, String)> {
    let region = text.get(start..end.min(text.len()))?;
    let mut offset = start;
    for line in region.split_inclusive('\n') {
        for quoted in [format!("\"{value}\""), format!("'{value}'")] {
            if let Some(i) = line.find(&quoted) {
                if line[..i].trim_end().ends_with('=') {
                    if let Some(key) = key_before(&line[..i]) {
                        return Some((line_of(text, offset), key));
                    }
                }
            }
        }
        offset += line.len();
    }
    None
}

/// The span of the first `[[triggers]]` entry that does not deserialize on its own.
fn failing_trigger(text: &str) -> Option<std::ops::Range<usize>> {
    let index: SpanIndex = toml::from_str(text).ok()?;
    index.triggers.iter().find_map(|t| {
        let map = match serde_json::to_value(t.get_ref()) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => return None,
        };
        millgate_actors::triggers::TriggerConfig::from_map(map)
            .is_err()
            .then(|| t.span())
    })
}

fn backticked_after<'a>(message: &'a str, marker: &str) -> Option<&'a str> {
    let rest = &message[message.find(marker)? + marker.len()..];
    rest.split('`').next()
}

/// Turns a parse error (span + message) into a line and a message that names the key.
///
/// Errors inside a `[[triggers]]` entry come back from its own deserializer with the span of the
/// whole entry, so the key they concern is looked up in the entry's text.
pub(super) fn locate_parse_error(
    text: &str,
    span: Option<std::ops::Range<usize>>,
    message: &str,
) -> (Option<usize>, String) {
    let mut message = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    message = millgate_actors::hints::duration_examples(&message);
    let Some(span) = span else {
        return (None, message);
    };
    let sections = text_sections(text);
    let section_at = |offset: usize| sections.iter().rev().find(|s| s.start <= offset);
    let mut section = section_at(span.start);
    let (mut start, mut end) = section
        .map_or((0, sections.first().map_or(text.len(), |s| s.start)), |s| {
            (s.start, s.end)
        });
    let mut line = line_of(text, span.start);
    let mut on_header = section.is_some_and(|s| line_of(text, s.start) == line);
    // A `[[triggers]]` entry's own errors carry the span of the whole array: find the entry
    // that fails by deserializing each one alone.
    if message.starts_with("trigger `") {
        if let Some(entry) = failing_trigger(text) {
            section = section_at(entry.start);
            (start, end) = (entry.start, entry.end);
            line = line_of(text, entry.start);
            on_header = true;
        }
    }
    let found = if let Some(k) = backticked_after(&message, "unknown field `") {
        find_key_anywhere(text, start, end, k)
            .or_else(|| (!on_header).then(|| (line, k.to_string())))
    } else if message.contains("unknown trigger kind") || message.contains("`kind`") {
        find_key_anywhere(text, start, end, "kind")
    } else if let Some(v) = message
        .split_once("string \"")
        .and_then(|(_, r)| r.split('"').next())
        .or_else(|| backticked_after(&message, "unknown variant `"))
        .filter(|_| on_header)
    {
        find_string_value(text, start, end, v)
    } else if !on_header {
        let line_start = text[..span.start.min(text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        key_before(&text[line_start..span.start.min(text.len())]).map(|k| (line, k))
    } else {
        None
    };
    let key = found.map(|(l, k)| {
        line = l;
        k
    });
    // "trigger `a` (kind http): unknown field …" → "unknown field … (kind http)": the label
    // already names the trigger.
    if let Some(s) = section.filter(|s| s.label.starts_with("triggers[")) {
        if let Some((name, rest)) = message
            .strip_prefix("trigger `")
            .and_then(|r| r.split_once('`'))
        {
            if name == "<unnamed>" || s.label.ends_with(&format!("({name})")) {
                message = match rest.strip_prefix(": ") {
                    Some(m) => m.to_string(),
                    None => match rest
                        .strip_prefix(" (kind ")
                        .and_then(|r| r.split_once("): "))
                    {
                        Some((kind, m)) => format!("{m} (kind {kind})"),
                        None => message.clone(),
                    },
                };
            }
        }
    }
    let message = match join_label(section.map(|s| s.label.as_str()), key.as_deref()) {
        Some(label) => format!("{label}: {message}"),
        None => message,
    };
    (Some(line), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_before_follows_inline_tables() {
        assert_eq!(key_before("timeout = \"so").as_deref(), Some("timeout"));
        assert_eq!(
            key_before("retry = { attempts = 3, initial = \"s").as_deref(),
            Some("retry.initial")
        );
        assert_eq!(
            key_before("a = { b = { c = 1 }, d = ").as_deref(),
            Some("a.d")
        );
        assert_eq!(key_before("x = \"a=b\", ").as_deref(), None);
        assert_eq!(key_before("").as_deref(), None);
    }
}
