//! The service shell: loading `config.toml` (with `${ENV}` substitution and errors that name
//! the file, line and key) and setting up tracing. The actors live in `millgate-actors`.

pub mod admin;
pub mod app;
pub mod telemetry;

pub use telemetry::{init_tracing, LogFormat};

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use millgate_actors::config::{ConfigIssue, Section};
use millgate_actors::Config;
use serde::Deserialize;

/// The default configuration, compiled in: runs with no external service.
pub const DEFAULT_CONFIG: &str = include_str!("../config.toml");

/// One problem in a configuration file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedError {
    pub line: Option<usize>,
    pub message: String,
}

/// Everything wrong with one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFileError {
    pub file: String,
    pub errors: Vec<LocatedError>,
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match e.line {
                Some(l) => write!(f, "{}:{}: {}", self.file, l, e.message)?,
                None => write!(f, "{}: {}", self.file, e.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigFileError {}

impl ConfigFileError {
    fn one(file: &str, line: Option<usize>, message: String) -> Self {
        Self {
            file: file.into(),
            errors: vec![LocatedError { line, message }],
        }
    }
}

/// Reads, substitutes, parses and validates a configuration file.
pub fn load_file(path: &Path) -> Result<Config, ConfigFileError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigFileError::one(&name, None, format!("cannot read: {e}")))?;
    load_str(&text, &name, |k| std::env::var(k).ok())
}

/// Substitutes `${VAR}` / `${VAR:-default}` (with `env`), parses and validates.
pub fn load_str(
    text: &str,
    file: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigFileError> {
    let raw = text;
    let text = substitute_env(raw, &env).map_err(|(line, m)| {
        let message = match key_on_line(raw, line) {
            Some(label) => format!("{label}: {m}"),
            None => m,
        };
        ConfigFileError::one(file, Some(line), message)
    })?;
    let config: Config = toml::from_str(&text).map_err(|e| {
        let (line, message) = locate_parse_error(&text, e.span(), e.message());
        ConfigFileError::one(file, line, message)
    })?;
    if let Err(issues) = config.validate() {
        let index: SpanIndex = toml::from_str(&text).unwrap_or_default();
        let errors = issues
            .iter()
            .map(|issue| LocatedError {
                line: locate(&text, &index, issue),
                message: issue.to_string(),
            })
            .collect();
        return Err(ConfigFileError {
            file: file.into(),
            errors,
        });
    }
    Ok(config)
}

/// Non-fatal advice about a valid configuration (printed by `millgate check` and at start).
pub fn warnings(config: &Config) -> Vec<String> {
    use millgate_actors::triggers::TriggerSpec;
    let mut out = Vec::new();
    for t in &config.triggers {
        if let TriggerSpec::Webhook(w) = &t.spec {
            if w.token.is_none() {
                out.push(format!(
                    "trigger `{}`: webhook has no `token`; anyone who can reach {} can call it",
                    t.common.name, config.server.listen
                ));
            }
        }
    }
    out
}

/// `${VAR}`, `${VAR:-default}`, and `$${` for a literal `${`. Comment lines are left alone.
/// Values must not contain newlines, so line numbers stay true.
pub fn substitute_env(
    text: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos..];
            if let Some(escaped) = after.strip_prefix("$${") {
                out.push_str("${");
                rest = escaped;
            } else if let Some(body) = after.strip_prefix("${") {
                let end = body
                    .find('}')
                    .ok_or((i + 1, "unterminated `${` (missing `}`)".to_string()))?;
                let expr = &body[..end];
                let (name, default) = match expr.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (expr, None),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err((i + 1, format!("`${{{expr}}}`: bad variable name `{name}`")));
                }
                let value = match (env(name), default) {
                    (Some(v), _) => v,
                    (None, Some(d)) => d.to_string(),
                    (None, None) => {
                        return Err((
                            i + 1,
                            format!(
                                "environment variable `{name}` is not set (use `${{{name}:-default}}` for a default)"
                            ),
                        ))
                    }
                };
                if value.contains('\n') {
                    return Err((
                        i + 1,
                        format!("environment variable `{name}` contains a newline"),
                    ));
                }
                out.push_str(&value);
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = &after[1..];
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[derive(Default, Deserialize)]
struct SpanIndex {
    #[serde(default)]
    triggers: Vec<toml::Spanned<toml::Table>>,
    #[serde(default)]
    runnables: BTreeMap<String, toml::Spanned<toml::Table>>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line of `issue`'s key: inside its section's span when it has one, else the section.
fn locate(text: &str, index: &SpanIndex, issue: &ConfigIssue) -> Option<usize> {
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
fn key_on_line(text: &str, line: usize) -> Option<String> {
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
fn locate_parse_error(
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

    fn env(k: &str) -> Option<String> {
        (k == "TOKEN").then(|| "abc".to_string())
    }

    #[test]
    fn env_substitution() {
        assert_eq!(
            substitute_env("a = \"${TOKEN}\"", &env).unwrap(),
            "a = \"abc\""
        );
        assert_eq!(
            substitute_env("a = \"${NOPE:-x y}\"", &env).unwrap(),
            "a = \"x y\""
        );
        assert_eq!(
            substitute_env("a = \"$${TOKEN} $5\"", &env).unwrap(),
            "a = \"${TOKEN} $5\""
        );
        assert_eq!(substitute_env("# ${NOPE}\n", &env).unwrap(), "# ${NOPE}\n");
        let (line, m) = substitute_env("x = 1\ny = \"${NOPE}\"", &env).unwrap_err();
        assert_eq!(line, 2);
        assert!(m.contains("`NOPE` is not set"));
    }

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

    #[test]
    fn parse_errors_name_the_entry_line_and_key() {
        let text = "[runnables.r]\ncommand = [\"true\"]\n\n[[triggers]]\nname = \"a\"\nkind = \"webhook\"\nrunnable = \"r\"\n\n[[triggers]]\nname = \"b\"\nkind = \"webhook\"\nrunnable = \"r\"\nmode = \"whenever\"\n";
        let e = load_str(text, "t.toml", |_| None).unwrap_err();
        assert_eq!(e.errors.len(), 1);
        assert_eq!(e.errors[0].line, Some(13), "{e}");
        assert!(
            e.errors[0].message.starts_with("triggers[1] (b).mode: "),
            "{e}"
        );
    }

    #[test]
    fn top_level_issues_are_found_in_their_own_table() {
        let text = "# [router] comes last\n[[triggers]]\nname = \"t\"\nkind = \"webhook\"\nrunnable = \"r\"\nmax_in_flight = 5\n\n[runnables.r]\ncommand = [\"true\"]\n\n[router]\nrunners = 2\nmax_in_flight = 0\n";
        let e = load_str(text, "t.toml", |_| None).unwrap_err();
        assert_eq!(e.errors.len(), 1, "{e}");
        assert_eq!(e.errors[0].line, Some(13), "{e}");
        assert!(e.errors[0].message.contains("router.max_in_flight"), "{e}");
    }

    #[test]
    fn embedded_default_config_is_valid() {
        let c = load_str(DEFAULT_CONFIG, "config.toml", |_| None).unwrap();
        assert!(c.triggers.len() >= 2);
    }
}
