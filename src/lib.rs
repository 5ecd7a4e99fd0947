//! The service shell: loading `config.toml` (with `${ENV}` substitution and errors that name
//! the file, line and key) and setting up tracing. The actors live in `millgate-actors`.

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
    let text = substitute_env(text, &env)
        .map_err(|(line, m)| ConfigFileError::one(file, Some(line), m))?;
    let config: Config = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| line_of(&text, s.start));
        ConfigFileError::one(file, line, e.message().trim().to_string())
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
            // `server.listen`: look for `listen =` after the `[server]` header.
            let (table, key) = issue.key.split_once('.').unwrap_or(("", &issue.key));
            let header = format!("[{table}]");
            let start = text.find(&header).unwrap_or(0);
            return find_key_line(
                text,
                start,
                text.len(),
                key.split('.').next().unwrap_or(key),
            )
            .or_else(|| (start > 0).then(|| line_of(text, start)));
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

/// `RUST_LOG`-style filtering (default `info`), text or JSON lines on stderr.
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
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
    fn embedded_default_config_is_valid() {
        let c = load_str(DEFAULT_CONFIG, "config.toml", |_| None).unwrap();
        assert!(c.triggers.len() >= 2);
    }
}
