//! JSON as millgate accepts it: nested at most `[server] max_json_depth` levels deep.
//!
//! Every document millgate parses from the outside (HTTP bodies, broker messages' `data`, poll
//! results, preprocessor outputs, run results) goes through [`parse`], so that whatever is
//! accepted can be stored inside a record and read back: serde_json refuses documents nested
//! deeper than 128 levels, and a record wraps its payload a few levels deeper still.
//!
//! The limit is process-wide, set once at start ([`set_max_depth`]) from the configuration.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

/// The default of `[server] max_json_depth`.
pub const DEFAULT_MAX_DEPTH: usize = 64;
/// The highest `max_json_depth` the configuration may set: records nest a payload up to three
/// levels deeper, and the store's reader stops at 128.
pub const MAX_CONFIGURABLE_DEPTH: usize = 100;

static MAX_DEPTH: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_DEPTH);

/// The nesting limit in force.
pub fn max_depth() -> usize {
    MAX_DEPTH.load(Ordering::Relaxed)
}

/// Sets the nesting limit (clamped to `1..=MAX_CONFIGURABLE_DEPTH`).
pub fn set_max_depth(depth: usize) {
    MAX_DEPTH.store(depth.clamp(1, MAX_CONFIGURABLE_DEPTH), Ordering::Relaxed);
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("JSON nested deeper than {limit} levels ([server] max_json_depth)")]
    TooDeep { limit: usize },
    #[error("not JSON: {0}")]
    Invalid(String),
}

/// Parses `bytes` as one JSON document nested at most [`max_depth`] levels.
pub fn parse(bytes: &[u8]) -> Result<Value, JsonError> {
    parse_within(bytes, max_depth())
}

/// [`parse`] with an explicit limit.
pub fn parse_within(bytes: &[u8], limit: usize) -> Result<Value, JsonError> {
    // Checked on the text first: cheaper than building a value, and it never recurses. Only
    // text that opens like JSON counts as too deep; anything else is simply not JSON.
    let opens_like_json = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| matches!(b, b'[' | b'{'));
    if opens_like_json && text_depth(bytes) > limit {
        return Err(JsonError::TooDeep { limit });
    }
    serde_json::from_slice(bytes).map_err(|e| JsonError::Invalid(e.to_string()))
}

/// Why a message whose payload is JSON nested past the limit cannot be run (`None` for any
/// other payload): a scan of the text, without parsing it.
pub fn payload_defect(payload: &[u8]) -> Option<String> {
    let limit = max_depth();
    let opens_like_json = payload
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| matches!(b, b'[' | b'{'));
    (opens_like_json && text_depth(payload) > limit)
        .then(|| format!("payload refused: {}", JsonError::TooDeep { limit }))
}

/// A broker message's payload as the event's `data`: the parsed JSON when it is JSON within the
/// limit, nothing when it is not JSON, and the reason the event cannot be run when it is JSON
/// nested past the limit (the intake dead-letters such an event).
pub fn message_data(payload: &[u8]) -> (Option<Value>, Option<String>) {
    match parse(payload) {
        Ok(v) => (Some(v), None),
        Err(e @ JsonError::TooDeep { .. }) => (None, Some(format!("payload refused: {e}"))),
        Err(JsonError::Invalid(_)) => (None, None),
    }
}

/// Refuses a value nested deeper than [`max_depth`].
pub fn check(value: &Value) -> Result<(), JsonError> {
    let limit = max_depth();
    if depth(value) > limit {
        return Err(JsonError::TooDeep { limit });
    }
    Ok(())
}

/// How deeply arrays and objects nest in a JSON text (0 for a scalar), counting brackets outside
/// strings. Invalid text gets a number too; the parser rejects it afterwards.
pub fn text_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// How deeply arrays and objects nest in a value (0 for a scalar). Iterative: a value built by a
/// filter may be deeper than any parser would have allowed.
pub fn depth(value: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(items) => {
                max = max.max(d + 1);
                stack.extend(items.iter().map(|i| (i, d + 1)));
            }
            Value::Object(map) => {
                max = max.max(d + 1);
                stack.extend(map.values().map(|i| (i, d + 1)));
            }
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(n: usize) -> String {
        format!("{}{}", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn depth_of_text_and_value_agree() {
        for (text, d) in [
            ("1", 0),
            ("\"[[[\"", 0),
            ("[]", 1),
            ("{\"a\": [1, {\"b\": \"]]\\\"[\"}]}", 3),
            ("[[1], [[2]]]", 3),
        ] {
            assert_eq!(text_depth(text.as_bytes()), d, "{text}");
            let v: Value = serde_json::from_str(text).unwrap();
            assert_eq!(depth(&v), d, "{text}");
        }
    }

    #[test]
    fn parse_refuses_past_the_limit_at_any_depth() {
        assert_eq!(depth(&parse_within(nested(5).as_bytes(), 5).unwrap()), 5);
        assert_eq!(
            parse_within(nested(6).as_bytes(), 5),
            Err(JsonError::TooDeep { limit: 5 })
        );
        // Far past serde_json's own limit: still a clear refusal, no recursion.
        assert_eq!(
            parse_within(nested(100_000).as_bytes(), 64),
            Err(JsonError::TooDeep { limit: 64 })
        );
        assert!(matches!(parse_within(b"{", 64), Err(JsonError::Invalid(_))));
    }

    #[test]
    fn depth_of_a_value_deeper_than_any_parser_allows() {
        let mut v = json!(1);
        for _ in 0..10_000 {
            v = Value::Array(vec![v]);
        }
        assert_eq!(depth(&v), 10_000);
        // serde_json drops values recursively; unwind by hand so the test's stack survives.
        let mut cur = v;
        while let Value::Array(mut items) = cur {
            cur = items.pop().unwrap_or(Value::Null);
        }
    }
}
