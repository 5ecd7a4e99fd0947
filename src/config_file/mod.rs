//! Loading `config.toml`: `${ENV}` substitution (`env.rs`), parsing and validation, and errors
//! that name the file, the line and the key (`locate.rs` finds them in the text, since the
//! parsed configuration no longer knows where its values were written).

mod env;
mod locate;

pub use env::substitute_env;

use std::fmt;
use std::path::Path;

use millgate_actors::Config;

use locate::{key_on_line, locate, locate_parse_error, SpanIndex};

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
    let mut out = Vec::new();
    for t in &config.triggers {
        out.extend(t.spec.kind().warnings(&t.common.name).into_iter().map(|w| {
            // The kind does not know where the listener is.
            w.replace("the listener", &config.server.listen.to_string())
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DEFAULT_CONFIG;

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
