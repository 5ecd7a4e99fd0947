//! Error messages that show what a good value looks like.

/// serde's message for a value that is not a duration (`humantime_serde`: `invalid value:
/// string "soon", expected a duration`) followed by examples of good ones. Idempotent.
pub fn duration_examples(message: &str) -> String {
    const EXPECTED: &str = "expected a duration";
    const EXAMPLES: &str = r#"expected a duration such as "250ms", "30s" or "5m""#;
    if message.contains(EXAMPLES) {
        return message.to_string();
    }
    message.replace(EXPECTED, EXAMPLES)
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_good_durations_once() {
        let m = super::duration_examples(
            r#"timeout: invalid value: string "soon", expected a duration"#,
        );
        assert_eq!(
            m,
            r#"timeout: invalid value: string "soon", expected a duration such as "250ms", "30s" or "5m""#
        );
        assert_eq!(super::duration_examples(&m), m);
    }
}
