//! `${VAR}` substitution in a configuration's text, line by line so that errors keep their
//! line numbers.

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
}
