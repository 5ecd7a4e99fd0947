//! Method + path → trigger: the route table, its conflict rules and path templates.

use std::collections::{BTreeMap, HashMap};

use axum::http::Method;

use super::RESERVED_PREFIXES;

/// Method + path → trigger name, with conflicts found when a route is added.
#[derive(Default, Clone)]
pub struct RouteTable {
    routers: HashMap<Method, matchit::Router<String>>,
    entries: Vec<(Method, String, String)>,
}

impl RouteTable {
    /// Adds `path` (user syntax `:param`, `*rest`) for `name`.
    pub fn insert(&mut self, method: &Method, path: &str, name: &str) -> Result<(), String> {
        let pattern = to_matchit(path)?;
        let router = self.routers.entry(method.clone()).or_default();
        router.insert(pattern, name.to_string()).map_err(|_| {
            let owner = self
                .entries
                .iter()
                .filter(|(m, _, _)| m == method)
                .map(|(_, p, n)| format!("`{p}` of trigger `{n}`"))
                .collect::<Vec<_>>()
                .join(", ");
            format!("{method} {path} conflicts with an existing route: {owner}")
        })?;
        self.entries
            .push((method.clone(), path.to_string(), name.to_string()));
        Ok(())
    }

    /// The trigger serving `method path` (the path as sent, percent-encoded), with the route's
    /// parameters percent-decoded (`/greet/Ada%20L` → `name = "Ada L"`). Matching happens on
    /// the encoded path, so an encoded `/` (`%2F`) never splits a parameter.
    pub fn lookup(
        &self,
        method: &Method,
        path: &str,
    ) -> Option<(String, BTreeMap<String, String>)> {
        let m = self.routers.get(method)?.at(path).ok()?;
        let params = m
            .params
            .iter()
            .map(|(k, v)| (k.to_string(), percent_decode(v)))
            .collect();
        Some((m.value.clone(), params))
    }

    /// The methods served on `path` (to answer 405 with `Allow` rather than 404).
    pub fn methods_for(&self, path: &str) -> Vec<Method> {
        let mut methods: Vec<Method> = self
            .routers
            .iter()
            .filter(|(_, r)| r.at(path).is_ok())
            .map(|(m, _)| m.clone())
            .collect();
        methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        methods
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Decodes `%XX` escapes; a value that does not decode to UTF-8 is kept as sent.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map_or_else(|_| s.to_string(), |d| d.into_owned())
}

/// `/a/:id/*rest` → matchit's `/a/{id}/{*rest}`, rejecting what would be ambiguous.
pub(super) fn to_matchit(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` must start with `/`"));
    }
    for reserved in RESERVED_PREFIXES {
        if path == *reserved || path.starts_with(&format!("{reserved}/")) {
            return Err(format!(
                "`{path}` is under `{reserved}`, which millgate serves itself"
            ));
        }
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    let mut out = String::new();
    for (i, seg) in segments.iter().enumerate() {
        out.push('/');
        if seg.contains(['{', '}']) {
            return Err(format!("`{path}`: use `:name` and `*name`, not braces"));
        }
        if let Some(param) = seg.strip_prefix(':') {
            if param.is_empty() || !param.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`{path}`: bad parameter name `{seg}`"));
            }
            out.push_str(&format!("{{{param}}}"));
        } else if let Some(rest) = seg.strip_prefix('*') {
            if i + 1 != segments.len() {
                return Err(format!("`{path}`: a `*wildcard` must be the last segment"));
            }
            if rest.is_empty() {
                return Err(format!("`{path}`: name the wildcard, e.g. `*rest`"));
            }
            out.push_str(&format!("{{*{rest}}}"));
        } else if seg.contains([':', '*']) {
            return Err(format!(
                "`{path}`: `:` and `*` may only start a segment (`{seg}`)"
            ));
        } else {
            out.push_str(seg);
        }
    }
    Ok(out)
}
