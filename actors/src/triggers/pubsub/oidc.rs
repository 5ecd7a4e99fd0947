//! The OIDC token Pub/Sub signs each push with (`Authorization: Bearer <RS256 JWT>`): checked
//! against the keys published at `certs_url` (a JWKS), which are fetched when a token names a
//! key not seen yet, and kept for the `max-age` the server gives them (an hour when it gives
//! none, never more than a day).
//!
//! Fetching is bounded so that tokens from the network cannot make millgate a fetching
//! machine: one fetch per URL at a time, at most one every [`REFETCH_AFTER`] for keys it does
//! not know, 5 s per fetch, 256 KiB per answer.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// A key not in the cache fetches the set again at most this often.
const REFETCH_AFTER: Duration = Duration::from_secs(30);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Google answers its certificates with `max-age` of several hours.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);
const MAX_MAX_AGE: Duration = Duration::from_secs(86_400);
/// Tokens longer than this are not Pub/Sub's (theirs are ~1 KB).
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The issuers Google's tokens carry.
pub(super) const GOOGLE_ISSUERS: &[&str] = &["https://accounts.google.com", "accounts.google.com"];
pub(super) const GOOGLE_CERTS: &str = "https://www.googleapis.com/oauth2/v3/certs";

/// What a push's token must say.
#[derive(Debug, Clone)]
pub(super) struct Expected<'a> {
    pub certs_url: &'a str,
    pub issuers: Vec<&'a str>,
    pub audience: &'a str,
    pub email: &'a str,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<bool>,
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, DecodingKey>,
    expires: Option<Instant>,
    last_fetch: Option<Instant>,
}

#[derive(Default)]
struct Cache {
    sets: Mutex<HashMap<String, KeySet>>,
    /// One fetch per URL at a time; the others wait for it and read what it stored.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

static CACHE: LazyLock<Cache> = LazyLock::new(Cache::default);

static HTTP: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .build()
        .unwrap_or_default()
});

/// The `kid` of a bearer token, when it is a JWT that names one.
pub(super) fn key_id(token: &str) -> Option<String> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    decode_header(token).ok()?.kid
}

/// Makes sure the key `kid` of `certs_url` is cached when the server has it, fetching the set
/// if needed (and allowed). Errors are logged; verification then says the key is unknown.
pub(super) async fn refresh(certs_url: &str, kid: &str) {
    if !needs_fetch(certs_url, kid) {
        return;
    }
    let gate = {
        let Ok(mut fetching) = CACHE.fetching.lock() else {
            return;
        };
        Arc::clone(fetching.entry(certs_url.to_string()).or_default())
    };
    let _turn = gate.lock().await;
    // Another request may have fetched it while this one waited.
    if !needs_fetch(certs_url, kid) {
        return;
    }
    if let Ok(mut sets) = CACHE.sets.lock() {
        sets.entry(certs_url.to_string()).or_default().last_fetch = Some(Instant::now());
    }
    match fetch(certs_url).await {
        Ok((keys, max_age)) => {
            tracing::debug!(
                certs_url,
                keys = keys.len(),
                "fetched the push tokens' keys"
            );
            if let Ok(mut sets) = CACHE.sets.lock() {
                let set = sets.entry(certs_url.to_string()).or_default();
                set.keys = keys;
                set.expires = Some(Instant::now() + max_age);
            }
        }
        Err(e) => {
            tracing::warn!(certs_url, error = %e, "could not fetch the keys of Pub/Sub push tokens")
        }
    }
}

/// Whether `kid` calls for a fetch: unknown (and the last fetch is long enough ago) or the set
/// expired.
fn needs_fetch(certs_url: &str, kid: &str) -> bool {
    let Ok(sets) = CACHE.sets.lock() else {
        return false;
    };
    let Some(set) = sets.get(certs_url) else {
        return true;
    };
    let now = Instant::now();
    if set
        .last_fetch
        .is_some_and(|t| now.duration_since(t) < REFETCH_AFTER)
    {
        return false;
    }
    set.expires.is_none_or(|e| now >= e) || !set.keys.contains_key(kid)
}

async fn fetch(url: &str) -> Result<(HashMap<String, DecodingKey>, Duration), String> {
    let mut resp = HTTP.get(url).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("{url} answered {}", resp.status()));
    }
    let max_age = resp
        .headers()
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(max_age)
        .unwrap_or(DEFAULT_MAX_AGE)
        .min(MAX_MAX_AGE);
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("{url} answered more than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    let set: JwkSet =
        serde_json::from_slice(&body).map_err(|e| format!("{url} is not a JWKS: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let (Some(kid), Ok(key)) = (&jwk.common.key_id, DecodingKey::from_jwk(jwk)) else {
            continue;
        };
        keys.insert(kid.clone(), key);
    }
    Ok((keys, max_age))
}

/// `max-age=<secs>` of a Cache-Control header.
fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|d| {
        let secs = d.trim().strip_prefix("max-age=")?;
        secs.trim().parse::<u64>().ok().map(Duration::from_secs)
    })
}

/// Checks a push's token against the cached keys (see [`refresh`]).
pub(super) fn verify(token: &str, expected: &Expected) -> Result<(), String> {
    if token.len() > MAX_TOKEN_LEN {
        return Err("the bearer token is too long to be a Pub/Sub push token".into());
    }
    let header = decode_header(token).map_err(|e| format!("the bearer token is not a JWT: {e}"))?;
    if header.alg != Algorithm::RS256 {
        return Err(format!(
            "the token is signed with {:?}; Pub/Sub signs with RS256",
            header.alg
        ));
    }
    let kid = header.kid.ok_or("the token names no key (`kid`)")?;
    let key = CACHE
        .sets
        .lock()
        .ok()
        .and_then(|sets| sets.get(expected.certs_url)?.keys.get(&kid).cloned())
        .ok_or_else(|| {
            format!(
                "the token's key `{kid}` is not among those published at {}",
                expected.certs_url
            )
        })?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[expected.audience]);
    validation.set_issuer(&expected.issuers[..]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    let data = decode::<Claims>(token, &key, &validation).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::InvalidAudience => format!(
            "the token is not for this push endpoint (audience is not `{}`)",
            expected.audience
        ),
        jsonwebtoken::errors::ErrorKind::InvalidIssuer => format!(
            "the token was not issued by {}",
            expected.issuers.join(" or ")
        ),
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => "the token has expired".into(),
        _ => format!("the token is not valid: {e}"),
    })?;
    let claims = data.claims;
    if claims.email.as_deref() != Some(expected.email) {
        return Err(format!(
            "the token is not the service account `{}`'s",
            expected.email
        ));
    }
    if claims.email_verified != Some(true) {
        return Err("the token's email is not verified".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=19845, must-revalidate, no-transform"),
            Some(Duration::from_secs(19845))
        );
        assert_eq!(max_age("no-cache"), None);
    }

    #[test]
    fn what_is_not_a_jwt_is_refused_with_a_reason() {
        let expected = Expected {
            certs_url: "http://127.0.0.1:1/certs",
            issuers: GOOGLE_ISSUERS.to_vec(),
            audience: "a",
            email: "e",
        };
        assert!(verify("not-a-jwt", &expected)
            .unwrap_err()
            .contains("not a JWT"));
        assert!(verify(&"x".repeat(MAX_TOKEN_LEN + 1), &expected)
            .unwrap_err()
            .contains("too long"));
        assert_eq!(key_id("not-a-jwt"), None);
    }
}
