//! Keys computed from an event (`order_by`, `dedup_key`): the common shapes natively, anything
//! else as a jq filter in the jq workers.
//!
//! Most keys are a field (`.body.customer_id`, `.subject`) or a few fields put together
//! (`"\(.topic)/\(.partition)"`). Those are read directly from the event, which costs well under
//! a microsecond and cannot run away; only other filters pay for a trip to a jq worker.

use serde_json::Value;

use super::JqFilter;

/// One piece of a [`KeyExpr::Template`].
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Path(Vec<String>),
}

/// How a key is computed from an event.
#[derive(Debug, Clone)]
pub enum KeyExpr {
    /// `.a.b`: the value at a path (`null` when missing).
    Path(Vec<String>),
    /// `"\(.a)/\(.b)"`: text and the values at paths.
    Template(Vec<Part>),
    /// The first of these whose paths all hold a value other than `null`; the last one
    /// otherwise.
    FirstOf(Vec<KeyExpr>),
    /// Any other jq filter: its first output.
    Jq(JqFilter),
}

impl KeyExpr {
    /// A path or a template when `source` is one, otherwise a compiled jq filter.
    pub fn compile(source: &str) -> Result<Self, String> {
        let s = source.trim();
        if let Some(path) = parse_path(s) {
            return Ok(KeyExpr::Path(path));
        }
        if let Some(parts) = parse_template(s) {
            return Ok(KeyExpr::Template(parts));
        }
        JqFilter::compile(source).map(KeyExpr::Jq)
    }

    /// The key of `event`, for the native shapes; `None` for [`KeyExpr::Jq`], which the jq
    /// workers evaluate (`PreprocessorPool::key`).
    pub fn eval(&self, event: &Value) -> Option<String> {
        match self {
            KeyExpr::Path(path) => Some(key_text(at(event, path).clone())),
            KeyExpr::Template(parts) => Some(render(parts, event)),
            KeyExpr::FirstOf(options) => {
                let chosen = options
                    .iter()
                    .find(|o| o.all_present(event))
                    .or(options.last())?;
                chosen.eval(event)
            }
            KeyExpr::Jq(_) => None,
        }
    }

    fn all_present(&self, event: &Value) -> bool {
        match self {
            KeyExpr::Path(p) => !at(event, p).is_null(),
            KeyExpr::Template(parts) => parts.iter().all(|part| match part {
                Part::Path(p) => !at(event, p).is_null(),
                Part::Text(_) => true,
            }),
            KeyExpr::FirstOf(options) => options.iter().any(|o| o.all_present(event)),
            KeyExpr::Jq(_) => true,
        }
    }
}

/// A key as text: strings as they are, anything else as its JSON text (as jq's output would
/// be compared).
pub fn key_text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

static NULL: Value = Value::Null;

fn at<'a>(event: &'a Value, path: &[String]) -> &'a Value {
    path.iter()
        .try_fold(event, |v, k| v.get(k))
        .unwrap_or(&NULL)
}

fn render(parts: &[Part], event: &Value) -> String {
    let mut out = String::new();
    for part in parts {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Path(p) => out.push_str(&key_text(at(event, p).clone())),
        }
    }
    out
}

/// `.a.b_c.d`: identifiers only (no quoting, indexing or `?`).
fn parse_path(s: &str) -> Option<Vec<String>> {
    let rest = s.strip_prefix('.')?;
    let keys: Vec<String> = rest.split('.').map(str::to_string).collect();
    let ident = |k: &String| {
        let mut chars = k.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    keys.iter().all(ident).then_some(keys)
}

/// `"text \(.path) text"`: a string whose interpolations are all paths, without escapes.
fn parse_template(s: &str) -> Option<Vec<Part>> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut parts = Vec::new();
    let mut rest = inner;
    while !rest.is_empty() {
        match rest.find('\\') {
            None => {
                parts.push(Part::Text(rest.to_string()));
                break;
            }
            Some(i) => {
                if i > 0 {
                    parts.push(Part::Text(rest[..i].to_string()));
                }
                let after = rest[i..].strip_prefix("\\(")?;
                let close = after.find(')')?;
                parts.push(Part::Path(parse_path(after[..close].trim())?));
                rest = &after[close + 1..];
            }
        }
    }
    let plain = |t: &str| !t.contains('"');
    parts
        .iter()
        .all(|p| match p {
            Part::Text(t) => plain(t),
            Part::Path(_) => true,
        })
        .then_some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The native shapes must give what jq gives.
    fn same_as_jq(source: &str, event: &Value) {
        let native = KeyExpr::compile(source).unwrap();
        assert!(!matches!(native, KeyExpr::Jq(_)), "{source} is not native");
        let jq = JqFilter::compile(source).unwrap().run(event).unwrap();
        assert_eq!(
            native.eval(event),
            Some(key_text(jq[0].clone())),
            "{source} on {event}"
        );
    }

    #[test]
    fn paths_and_templates_agree_with_jq() {
        let e = json!({"topic": "t", "partition": 3, "key": null, "body": {"id": 7, "s": "x"}});
        for src in [
            ".topic",
            ".partition",
            ".body.id",
            ".body.s",
            ".key",
            ".missing.deeper",
            ".body",
            r#""\(.topic)/\(.partition)""#,
            r#""\(.topic)/key/\(.key)""#,
            r#""id-\(.body.id)""#,
        ] {
            same_as_jq(src, &e);
        }
    }

    #[test]
    fn anything_else_is_jq() {
        for src in [
            ".a[0]",
            ".a | tostring",
            r#""\(.a + 1)""#,
            ".\"quoted\"",
            ".",
        ] {
            assert!(
                matches!(KeyExpr::compile(src).unwrap(), KeyExpr::Jq(_)),
                "{src}"
            );
        }
        assert!(KeyExpr::compile(".a | (").is_err());
    }

    #[test]
    fn first_of_takes_the_first_whose_paths_are_set() {
        let e = KeyExpr::FirstOf(vec![
            KeyExpr::compile(r#""\(.topic)/key/\(.key)""#).unwrap(),
            KeyExpr::compile(r#""\(.topic)/\(.partition)""#).unwrap(),
        ]);
        assert_eq!(
            e.eval(&json!({"topic": "t", "partition": 1, "key": "k"})),
            Some("t/key/k".into())
        );
        assert_eq!(
            e.eval(&json!({"topic": "t", "partition": 1, "key": null})),
            Some("t/1".into())
        );
    }
}
