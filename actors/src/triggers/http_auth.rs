//! Authentication of custom HTTP route triggers.
//!
//! A route names one [`HttpAuth`] scheme in its TOML (`auth = { type = "bearer", token = "..." }`)
//! and every request is checked with [`HttpAuth::verify`] before the event is routed.
//!
//! Security properties this module keeps:
//! - Shared secrets (bearer tokens, API keys, Basic credentials) are compared by hashing both
//!   sides with SHA-256 and comparing the digests in constant time, so neither the content nor
//!   the length of the configured secret leaks through timing.
//! - Signatures are compared as decoded bytes (not as text) in constant time. The length of an
//!   HMAC tag is fixed by the algorithm and therefore public, so the early length check inside
//!   `subtle`'s slice comparison reveals nothing. Comparing bytes also means upper- and
//!   lowercase hex are both accepted.
//! - Error messages end up in 401 response bodies, so they name headers and config keys but
//!   never contain a configured secret or the credential a caller sent.
//! - `Debug` output redacts secrets, because configs end up in logs.

use std::fmt;
use std::time::Duration;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use http::header::{AsHeaderName, HeaderMap, HeaderName, AUTHORIZATION};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use subtle::{Choice, ConstantTimeEq};

/// Stripe's and Slack's own SDKs default to five minutes; matching them avoids surprises.
const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

const GITHUB_SIGNATURE: &str = "X-Hub-Signature-256";
const STRIPE_SIGNATURE: &str = "Stripe-Signature";
const SLACK_SIGNATURE: &str = "X-Slack-Signature";
const SLACK_TIMESTAMP: &str = "X-Slack-Request-Timestamp";

// Senders differ on padding and on the alphabet, and neither choice carries any security
// meaning, so decoding is deliberately forgiving about both.
const LENIENT_BASE64: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT_BASE64);
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT_BASE64);

/// How an HTTP route trigger authenticates callers. TOML: `auth = { type = "bearer", token = "..." }`
#[derive(Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum HttpAuth {
    /// Anyone may call the route.
    #[default]
    None,
    /// `Authorization: Bearer <token>`; the scheme name is case-insensitive.
    Bearer { token: String },
    /// The named header must carry exactly `key`.
    ApiKey { header: String, key: String },
    /// `Authorization: Basic base64(username:password)`; the password may contain ':'.
    Basic { username: String, password: String },
    /// An HMAC signature over the body, as sent by GitHub, Stripe, Slack or a custom sender.
    Signature(SignatureAuth),
}

/// HMAC signature verification settings.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureAuth {
    /// Which sender's scheme to expect.
    pub preset: SignaturePreset,
    /// The shared HMAC secret.
    pub secret: String,
    /// Preset `custom` only; defaults to sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<SignatureAlgorithm>,
    /// Preset `custom` only; defaults to hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<SignatureEncoding>,
    /// Preset `custom` only, and required there: the header carrying the signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Preset `custom` only: text before the encoded signature, e.g. `sha256=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Presets `stripe` and `slack` only: maximum clock difference; defaults to 5 minutes.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub tolerance: Option<Duration>,
}

/// The sender whose signature scheme a route expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignaturePreset {
    Github,
    Stripe,
    Slack,
    Custom,
}

impl SignaturePreset {
    /// The name used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Github => "github",
            Self::Stripe => "stripe",
            Self::Slack => "slack",
            Self::Custom => "custom",
        }
    }
}

/// Hash function of a custom HMAC signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

/// Text encoding of a custom HMAC signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureEncoding {
    Hex,
    Base64,
}

/// Why a request was refused. The `Display` text is meant for the 401 response body.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    /// The request carries no credentials where the route requires some.
    #[error("missing credentials: expected {0}")]
    MissingCredentials(String),
    /// Credentials were present but wrong.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// A header the signature scheme needs is absent.
    #[error("missing required header {0}")]
    MissingHeader(String),
    /// A header is present but cannot be parsed.
    #[error("malformed header {header}: {reason}")]
    MalformedHeader { header: String, reason: String },
    /// The signature is well-formed but does not match the request.
    #[error("signature does not match the request body")]
    SignatureMismatch,
    /// The signed timestamp is too far from the server's clock (a replay or a skewed clock).
    #[error(
        "request timestamp is {}, outside the allowed tolerance of {tolerance_secs} s",
        describe_age(*age_secs)
    )]
    TimestampOutsideTolerance { age_secs: i64, tolerance_secs: u64 },
    /// The route's own auth config is unusable; `validate` should have caught it at load time.
    #[error("route authentication is misconfigured: {0}")]
    Misconfigured(String),
}

fn describe_age(age_secs: i64) -> String {
    if age_secs >= 0 {
        format!("{age_secs} s old")
    } else {
        format!("{} s in the future", age_secs.unsigned_abs())
    }
}

fn malformed(header: &str, reason: impl Into<String>) -> AuthError {
    AuthError::MalformedHeader {
        header: header.to_owned(),
        reason: reason.into(),
    }
}

impl HttpAuth {
    /// Checks a request. `now_unix` is seconds since the epoch (passed in so tests can pin time).
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now_unix: i64) -> Result<(), AuthError> {
        // An unvalidated config could, say, have an empty API key that an empty header would
        // match; re-checking here is cheap and keeps such a route closed rather than open.
        self.validate().map_err(AuthError::Misconfigured)?;
        match self {
            Self::None => Ok(()),
            Self::Bearer { token } => {
                let given = authorization_credentials(
                    headers,
                    "Bearer",
                    "an Authorization header with a Bearer token",
                )?;
                accept_if(secret_eq(given.as_bytes(), token.as_bytes()))
            }
            Self::ApiKey { header, key } => {
                let given = single_header(headers, header.as_str(), header)?.ok_or_else(|| {
                    AuthError::MissingCredentials(format!("an API key in header {header}"))
                })?;
                accept_if(secret_eq(given.as_bytes(), key.as_bytes()))
            }
            Self::Basic { username, password } => {
                let encoded = authorization_credentials(
                    headers,
                    "Basic",
                    "an Authorization header with Basic credentials",
                )?;
                let decoded = STANDARD_LENIENT
                    .decode(encoded)
                    .map_err(|_| malformed("Authorization", "Basic credentials are not base64"))?;
                // RFC 7617 forbids ':' in the user-id, so the first one is the separator and
                // any later ones belong to the password.
                let colon = decoded.iter().position(|&b| b == b':').ok_or_else(|| {
                    malformed(
                        "Authorization",
                        "Basic credentials lack the ':' between username and password",
                    )
                })?;
                let (given_user, rest) = decoded.split_at(colon);
                let given_password = rest.get(1..).unwrap_or_default();
                // Both halves are always compared so timing does not reveal which one was wrong.
                let ok = secret_eq(given_user, username.as_bytes())
                    & secret_eq(given_password, password.as_bytes());
                accept_if(ok)
            }
            Self::Signature(sig) => sig.verify(headers, body, now_unix),
        }
    }

    /// Config-time validation: returns a message naming the offending key.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::None => Ok(()),
            Self::Bearer { token } => {
                non_empty("auth.token", token)?;
                // The token is read as the text after the scheme up to the end of the header,
                // trimmed; whitespace or control characters could never be matched.
                if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(
                        "auth.token must not contain whitespace or control characters".into(),
                    );
                }
                Ok(())
            }
            Self::ApiKey { header, key } => {
                validate_header_name("auth.header", header)?;
                non_empty("auth.key", key)?;
                if key.trim() != key || key.chars().any(char::is_control) {
                    return Err(
                        "auth.key must not have surrounding whitespace or control characters"
                            .into(),
                    );
                }
                Ok(())
            }
            Self::Basic { username, password } => {
                non_empty("auth.username", username)?;
                if username.contains(':') {
                    return Err("auth.username must not contain ':'".into());
                }
                non_empty("auth.password", password)
            }
            Self::Signature(sig) => sig.validate(),
        }
    }

    /// Short label for listings: "none", "bearer", "api_key", "basic", "signature:github", ...
    pub fn label(&self) -> String {
        match self {
            Self::None => "none".into(),
            Self::Bearer { .. } => "bearer".into(),
            Self::ApiKey { .. } => "api_key".into(),
            Self::Basic { .. } => "basic".into(),
            Self::Signature(sig) => format!("signature:{}", sig.preset.as_str()),
        }
    }
}

impl SignatureAuth {
    fn tolerance(&self) -> Duration {
        self.tolerance.unwrap_or(DEFAULT_TOLERANCE)
    }

    fn verify(&self, headers: &HeaderMap, body: &[u8], now_unix: i64) -> Result<(), AuthError> {
        let secret = self.secret.as_bytes();
        match self.preset {
            SignaturePreset::Github => {
                let value = required_header(headers, GITHUB_SIGNATURE)?;
                let hex_sig = value.strip_prefix("sha256=").ok_or_else(|| {
                    malformed(
                        GITHUB_SIGNATURE,
                        "expected a value of the form sha256=<hex>",
                    )
                })?;
                let given = decode_hex(GITHUB_SIGNATURE, hex_sig)?;
                let expected = compute_hmac(SignatureAlgorithm::Sha256, secret, &[body])?;
                accept_signature(given.as_slice().ct_eq(&expected))
            }
            SignaturePreset::Stripe => {
                let value = required_header(headers, STRIPE_SIGNATURE)?;
                let parsed = parse_stripe_header(value)?;
                let expected = compute_hmac(
                    SignatureAlgorithm::Sha256,
                    secret,
                    &[parsed.timestamp_text.as_bytes(), b".", body],
                )?;
                // Stripe sends several v1 entries while a secret is being rolled. Every entry
                // is compared, without stopping at the first match, so timing does not reveal
                // which one matched.
                let mut any = Choice::from(0);
                for candidate in &parsed.v1 {
                    any |= candidate.as_slice().ct_eq(&expected);
                }
                accept_signature(any)?;
                // Checked only after the signature so that a timestamp error means the
                // request is genuine but stale (a replay or a skewed clock).
                check_timestamp(parsed.timestamp, now_unix, self.tolerance())
            }
            SignaturePreset::Slack => {
                let ts_text = required_header(headers, SLACK_TIMESTAMP)?;
                let timestamp = parse_unix(ts_text).ok_or_else(|| {
                    malformed(SLACK_TIMESTAMP, "expected a Unix timestamp in seconds")
                })?;
                let value = required_header(headers, SLACK_SIGNATURE)?;
                let hex_sig = value.strip_prefix("v0=").ok_or_else(|| {
                    malformed(SLACK_SIGNATURE, "expected a value of the form v0=<hex>")
                })?;
                let given = decode_hex(SLACK_SIGNATURE, hex_sig)?;
                // The timestamp is signed exactly as sent, not re-rendered from the parsed
                // number, so that unusual but valid forms still verify.
                let expected = compute_hmac(
                    SignatureAlgorithm::Sha256,
                    secret,
                    &[b"v0:", ts_text.as_bytes(), b":", body],
                )?;
                accept_signature(given.as_slice().ct_eq(&expected))?;
                check_timestamp(timestamp, now_unix, self.tolerance())
            }
            SignaturePreset::Custom => {
                let header = self.header.as_deref().ok_or_else(|| {
                    AuthError::Misconfigured("auth.header is required for preset custom".into())
                })?;
                let value = single_header(headers, header, header)?
                    .ok_or_else(|| AuthError::MissingHeader(header.to_owned()))?;
                let encoded = match self.prefix.as_deref() {
                    Some(prefix) => value.strip_prefix(prefix).ok_or_else(|| {
                        // The prefix is configuration, not a secret, so naming it helps
                        // whoever is wiring up the sender.
                        malformed(
                            header,
                            format!("expected the value to start with {prefix:?}"),
                        )
                    })?,
                    None => value,
                };
                let given = match self.encoding.unwrap_or(SignatureEncoding::Hex) {
                    SignatureEncoding::Hex => decode_hex(header, encoded)?,
                    SignatureEncoding::Base64 => STANDARD_LENIENT
                        .decode(encoded)
                        .or_else(|_| URL_SAFE_LENIENT.decode(encoded))
                        .map_err(|_| malformed(header, "signature is not valid base64"))?,
                };
                let algorithm = self.algorithm.unwrap_or(SignatureAlgorithm::Sha256);
                let expected = compute_hmac(algorithm, secret, &[body])?;
                accept_signature(given.as_slice().ct_eq(&expected))
            }
        }
    }

    fn validate(&self) -> Result<(), String> {
        non_empty("auth.secret", &self.secret)?;
        let custom = self.preset == SignaturePreset::Custom;
        if !custom {
            let custom_only = [
                ("auth.algorithm", self.algorithm.is_some()),
                ("auth.encoding", self.encoding.is_some()),
                ("auth.header", self.header.is_some()),
                ("auth.prefix", self.prefix.is_some()),
            ];
            if let Some((key, _)) = custom_only.iter().find(|(_, set)| *set) {
                return Err(format!("{key} is only allowed with preset custom"));
            }
        }
        match self.preset {
            SignaturePreset::Stripe | SignaturePreset::Slack => {
                if self.tolerance.is_some_and(|t| t.as_secs() == 0) {
                    return Err("auth.tolerance must be at least one second".into());
                }
            }
            SignaturePreset::Github | SignaturePreset::Custom => {
                if self.tolerance.is_some() {
                    return Err(
                        "auth.tolerance is only allowed with presets stripe and slack".into(),
                    );
                }
            }
        }
        if custom {
            let header = self
                .header
                .as_deref()
                .ok_or("auth.header is required for preset custom")?;
            validate_header_name("auth.header", header)?;
            if self.prefix.as_deref() == Some("") {
                return Err("auth.prefix must not be empty; omit it instead".into());
            }
        }
        Ok(())
    }
}

/// Debug output of configs lands in logs, so secrets are replaced by this marker.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Bearer { .. } => f.debug_struct("Bearer").field("token", &Redacted).finish(),
            Self::ApiKey { header, .. } => f
                .debug_struct("ApiKey")
                .field("header", header)
                .field("key", &Redacted)
                .finish(),
            Self::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &Redacted)
                .finish(),
            Self::Signature(sig) => f.debug_tuple("Signature").field(sig).finish(),
        }
    }
}

impl fmt::Debug for SignatureAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignatureAuth")
            .field("preset", &self.preset)
            .field("secret", &Redacted)
            .field("algorithm", &self.algorithm)
            .field("encoding", &self.encoding)
            .field("header", &self.header)
            .field("prefix", &self.prefix)
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

fn non_empty(key: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        Err(format!("{key} must not be empty"))
    } else {
        Ok(())
    }
}

fn validate_header_name(key: &str, header: &str) -> Result<(), String> {
    non_empty(key, header)?;
    HeaderName::from_bytes(header.as_bytes())
        .map(|_| ())
        .map_err(|_| format!("{key} is not a valid HTTP header name"))
}

/// Returns the header's value, trimmed of optional whitespace, or `None` when absent. Names
/// given as `&str` are matched case-insensitively by `http`.
///
/// A repeated header is refused rather than resolved: a proxy and this code could pick
/// different copies, and a credential that is ambiguous is not a credential.
fn single_header<'a>(
    headers: &'a HeaderMap,
    name: impl AsHeaderName,
    display: &str,
) -> Result<Option<&'a str>, AuthError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(malformed(display, "the header must appear only once"));
    }
    let text = std::str::from_utf8(first.as_bytes())
        .map_err(|_| malformed(display, "the value is not valid UTF-8"))?;
    Ok(Some(text.trim_matches([' ', '\t'])))
}

fn required_header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, AuthError> {
    single_header(headers, name, name)?.ok_or_else(|| AuthError::MissingHeader(name.to_owned()))
}

/// Splits `Authorization: <scheme> <credentials>` and checks the scheme case-insensitively
/// (RFC 9110 §11.1).
fn authorization_credentials<'a>(
    headers: &'a HeaderMap,
    scheme: &str,
    expected: &str,
) -> Result<&'a str, AuthError> {
    let value = single_header(headers, &AUTHORIZATION, "Authorization")?
        .ok_or_else(|| AuthError::MissingCredentials(expected.to_owned()))?;
    let (given_scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !given_scheme.eq_ignore_ascii_case(scheme) {
        return Err(malformed(
            "Authorization",
            format!("expected the {scheme} scheme"),
        ));
    }
    let credentials = rest.trim_matches([' ', '\t']);
    if credentials.is_empty() {
        return Err(malformed(
            "Authorization",
            format!("no credentials after the {scheme} scheme"),
        ));
    }
    Ok(credentials)
}

/// Compares secrets through their SHA-256 digests so that the time taken depends on neither
/// the configured secret's content nor its length.
fn secret_eq(given: &[u8], expected: &[u8]) -> Choice {
    let given = Sha256::digest(given);
    let expected = Sha256::digest(expected);
    given.as_slice().ct_eq(expected.as_slice())
}

fn accept_if(ok: Choice) -> Result<(), AuthError> {
    if bool::from(ok) {
        Ok(())
    } else {
        Err(AuthError::InvalidCredentials)
    }
}

fn accept_signature(ok: Choice) -> Result<(), AuthError> {
    if bool::from(ok) {
        Ok(())
    } else {
        Err(AuthError::SignatureMismatch)
    }
}

fn decode_hex(header: &str, text: &str) -> Result<Vec<u8>, AuthError> {
    hex::decode(text).map_err(|_| malformed(header, "signature is not valid hex"))
}

fn compute_hmac(
    algorithm: SignatureAlgorithm,
    key: &[u8],
    parts: &[&[u8]],
) -> Result<Vec<u8>, AuthError> {
    fn run<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Result<Vec<u8>, AuthError> {
        // HMAC accepts keys of any length, so this error cannot occur; it is mapped rather
        // than unwrapped to keep request handling panic-free.
        let mut mac = <M as KeyInit>::new_from_slice(key).map_err(|_| {
            AuthError::Misconfigured("auth.secret cannot be used as an HMAC key".into())
        })?;
        for part in parts {
            mac.update(part);
        }
        Ok(mac.finalize().into_bytes().to_vec())
    }
    match algorithm {
        SignatureAlgorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, parts),
        SignatureAlgorithm::Sha256 => run::<Hmac<Sha256>>(key, parts),
        SignatureAlgorithm::Sha512 => run::<Hmac<Sha512>>(key, parts),
    }
}

/// Only plain digits are accepted: signs, spaces or fractions are not something either
/// service sends, and being strict keeps the signed text and the checked number in step.
fn parse_unix(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn check_timestamp(timestamp: i64, now_unix: i64, tolerance: Duration) -> Result<(), AuthError> {
    let age_secs = now_unix.saturating_sub(timestamp);
    let tolerance_secs = tolerance.as_secs();
    if age_secs.unsigned_abs() > tolerance_secs {
        Err(AuthError::TimestampOutsideTolerance {
            age_secs,
            tolerance_secs,
        })
    } else {
        Ok(())
    }
}

struct StripeHeader<'a> {
    timestamp: i64,
    timestamp_text: &'a str,
    v1: Vec<Vec<u8>>,
}

fn parse_stripe_header(value: &str) -> Result<StripeHeader<'_>, AuthError> {
    let mut timestamp = None;
    let mut v1 = Vec::new();
    let mut saw_v1 = false;
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (key, val) = item.split_once('=').ok_or_else(|| {
            malformed(STRIPE_SIGNATURE, "expected comma-separated key=value pairs")
        })?;
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(malformed(STRIPE_SIGNATURE, "t= appears more than once"));
                }
                let parsed = parse_unix(val).ok_or_else(|| {
                    malformed(STRIPE_SIGNATURE, "t= is not a Unix timestamp in seconds")
                })?;
                timestamp = Some((parsed, val));
            }
            "v1" => {
                saw_v1 = true;
                // An undecodable entry cannot match, but another entry still may, so it is
                // skipped rather than failing the whole request.
                if let Ok(bytes) = hex::decode(val) {
                    v1.push(bytes);
                }
            }
            // v0 is Stripe's test-mode scheme and other keys may be added later; neither
            // is trusted nor fatal.
            _ => {}
        }
    }
    let (timestamp, timestamp_text) =
        timestamp.ok_or_else(|| malformed(STRIPE_SIGNATURE, "missing the t= timestamp"))?;
    if !saw_v1 {
        return Err(malformed(STRIPE_SIGNATURE, "missing a v1= signature"));
    }
    Ok(StripeHeader {
        timestamp,
        timestamp_text,
        v1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use http::HeaderValue;

    const NOW: i64 = 1_700_000_000;

    // Expected signatures are computed here with the hmac crate directly, independently of
    // the code under test.
    fn hmac_sha256(secret: &str, parts: &[&[u8]]) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().to_vec()
    }

    fn hmac_sha1(secret: &str, body: &[u8]) -> Vec<u8> {
        let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    }

    fn hmac_sha512(secret: &str, body: &[u8]) -> Vec<u8> {
        let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn raw_header(name: &str, value: &[u8]) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
        map
    }

    fn sig(preset: SignaturePreset, secret: &str) -> SignatureAuth {
        SignatureAuth {
            preset,
            secret: secret.into(),
            algorithm: None,
            encoding: None,
            header: None,
            prefix: None,
            tolerance: None,
        }
    }

    fn github(secret: &str) -> HttpAuth {
        HttpAuth::Signature(sig(SignaturePreset::Github, secret))
    }

    fn stripe(secret: &str) -> HttpAuth {
        HttpAuth::Signature(sig(SignaturePreset::Stripe, secret))
    }

    fn slack(secret: &str) -> HttpAuth {
        HttpAuth::Signature(sig(SignaturePreset::Slack, secret))
    }

    fn custom(
        secret: &str,
        algorithm: Option<SignatureAlgorithm>,
        encoding: Option<SignatureEncoding>,
        prefix: Option<&str>,
    ) -> HttpAuth {
        HttpAuth::Signature(SignatureAuth {
            algorithm,
            encoding,
            header: Some("X-Signature".into()),
            prefix: prefix.map(Into::into),
            ..sig(SignaturePreset::Custom, secret)
        })
    }

    fn malformed_header(err: AuthError) -> String {
        match err {
            AuthError::MalformedHeader { header, .. } => header,
            other => panic!("expected MalformedHeader, got {other:?}"),
        }
    }

    // ---- none / bearer / api key / basic ----

    #[test]
    fn none_accepts_anything() {
        assert_eq!(HttpAuth::None.verify(&HeaderMap::new(), b"x", NOW), Ok(()));
        assert_eq!(HttpAuth::default(), HttpAuth::None);
    }

    #[test]
    fn bearer_valid_and_scheme_case_insensitive() {
        let auth = HttpAuth::Bearer {
            token: "tok-123".into(),
        };
        for value in ["Bearer tok-123", "bearer tok-123", "BEARER   tok-123  "] {
            let h = headers(&[("Authorization", value)]);
            assert_eq!(auth.verify(&h, b"", NOW), Ok(()), "{value}");
        }
    }

    #[test]
    fn bearer_missing_wrong_and_malformed() {
        let auth = HttpAuth::Bearer {
            token: "tok-123".into(),
        };
        assert!(matches!(
            auth.verify(&HeaderMap::new(), b"", NOW),
            Err(AuthError::MissingCredentials(_))
        ));
        let wrong = headers(&[("Authorization", "Bearer tok-124")]);
        assert_eq!(
            auth.verify(&wrong, b"", NOW),
            Err(AuthError::InvalidCredentials)
        );
        let prefix_only = headers(&[("Authorization", "Bearer tok-12")]);
        assert_eq!(
            auth.verify(&prefix_only, b"", NOW),
            Err(AuthError::InvalidCredentials)
        );
        let basic = headers(&[("Authorization", "Basic dG9rLTEyMw==")]);
        assert_eq!(
            malformed_header(auth.verify(&basic, b"", NOW).unwrap_err()),
            "Authorization"
        );
        let empty = headers(&[("Authorization", "Bearer")]);
        assert!(matches!(
            auth.verify(&empty, b"", NOW),
            Err(AuthError::MalformedHeader { .. })
        ));
        let twice = headers(&[
            ("Authorization", "Bearer tok-123"),
            ("Authorization", "Bearer other"),
        ]);
        assert!(matches!(
            auth.verify(&twice, b"", NOW),
            Err(AuthError::MalformedHeader { .. })
        ));
    }

    #[test]
    fn bearer_non_utf8_is_malformed_not_panic() {
        let auth = HttpAuth::Bearer {
            token: "tok".into(),
        };
        let h = raw_header("authorization", b"Bearer \xff\xfe");
        assert_eq!(
            malformed_header(auth.verify(&h, b"", NOW).unwrap_err()),
            "Authorization"
        );
    }

    #[test]
    fn api_key_valid_wrong_and_wrong_header() {
        let auth = HttpAuth::ApiKey {
            header: "X-Key".into(),
            key: "k-1".into(),
        };
        assert_eq!(auth.verify(&headers(&[("x-key", "k-1")]), b"", NOW), Ok(()));
        assert_eq!(
            auth.verify(&headers(&[("X-KEY", "k-2")]), b"", NOW),
            Err(AuthError::InvalidCredentials)
        );
        assert!(matches!(
            auth.verify(&headers(&[("X-Api-Key", "k-1")]), b"", NOW),
            Err(AuthError::MissingCredentials(_))
        ));
        assert!(matches!(
            auth.verify(&raw_header("x-key", b"\x80"), b"", NOW),
            Err(AuthError::MalformedHeader { .. })
        ));
    }

    #[test]
    fn basic_with_colon_in_password() {
        let auth = HttpAuth::Basic {
            username: "alice".into(),
            password: "pa:ss:word".into(),
        };
        let good = format!("Basic {}", STANDARD.encode("alice:pa:ss:word"));
        assert_eq!(
            auth.verify(&headers(&[("Authorization", &good)]), b"", NOW),
            Ok(())
        );
        let unpadded = format!(
            "basic {}",
            STANDARD.encode("alice:pa:ss:word").trim_end_matches('=')
        );
        assert_eq!(
            auth.verify(&headers(&[("Authorization", &unpadded)]), b"", NOW),
            Ok(())
        );
        for creds in ["alice:pa:ss", "alic:pa:ss:word", "alice:pa:ss:word:", ":"] {
            let value = format!("Basic {}", STANDARD.encode(creds));
            assert_eq!(
                auth.verify(&headers(&[("Authorization", &value)]), b"", NOW),
                Err(AuthError::InvalidCredentials),
                "{creds}"
            );
        }
    }

    #[test]
    fn basic_malformed() {
        let auth = HttpAuth::Basic {
            username: "alice".into(),
            password: "pw".into(),
        };
        assert!(matches!(
            auth.verify(&HeaderMap::new(), b"", NOW),
            Err(AuthError::MissingCredentials(_))
        ));
        let no_colon = format!("Basic {}", STANDARD.encode("alicepw"));
        for value in ["Basic !!!notbase64", no_colon.as_str(), "Bearer x"] {
            assert!(
                matches!(
                    auth.verify(&headers(&[("Authorization", value)]), b"", NOW),
                    Err(AuthError::MalformedHeader { .. })
                ),
                "{value}"
            );
        }
    }

    // ---- github ----

    #[test]
    fn github_documented_known_answer() {
        let auth = github("It's a Secret to Everybody");
        let h = headers(&[(
            "X-Hub-Signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert_eq!(auth.verify(&h, b"Hello, World!", NOW), Ok(()));
        assert_eq!(
            hex::encode(hmac_sha256(
                "It's a Secret to Everybody",
                &[b"Hello, World!"]
            )),
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn github_valid_tampered_wrong_secret() {
        let body = br#"{"action":"opened"}"#;
        let value = format!("sha256={}", hex::encode(hmac_sha256("s3cret", &[body])));
        let h = headers(&[("x-hub-signature-256", &value)]);
        assert_eq!(github("s3cret").verify(&h, body, NOW), Ok(()));
        // Uppercase hex decodes to the same bytes.
        let upper = format!(
            "sha256={}",
            hex::encode_upper(hmac_sha256("s3cret", &[body]))
        );
        assert_eq!(
            github("s3cret").verify(&headers(&[("X-Hub-Signature-256", &upper)]), body, NOW),
            Ok(())
        );
        assert_eq!(
            github("s3cret").verify(&h, br#"{"action":"closed"}"#, NOW),
            Err(AuthError::SignatureMismatch)
        );
        assert_eq!(
            github("other").verify(&h, body, NOW),
            Err(AuthError::SignatureMismatch)
        );
    }

    #[test]
    fn github_malformed_and_missing() {
        let auth = github("s");
        assert_eq!(
            auth.verify(&HeaderMap::new(), b"", NOW),
            Err(AuthError::MissingHeader("X-Hub-Signature-256".into()))
        );
        for value in ["sha1=abcd", "sha256=zz", "757107ea"] {
            assert!(
                matches!(
                    auth.verify(&headers(&[("X-Hub-Signature-256", value)]), b"", NOW),
                    Err(AuthError::MalformedHeader { .. })
                ),
                "{value}"
            );
        }
        // Well-formed hex of the wrong length cannot match.
        assert_eq!(
            auth.verify(
                &headers(&[("X-Hub-Signature-256", "sha256=abcd")]),
                b"",
                NOW
            ),
            Err(AuthError::SignatureMismatch)
        );
        assert!(matches!(
            auth.verify(&raw_header("x-hub-signature-256", b"sha256=\xff"), b"", NOW),
            Err(AuthError::MalformedHeader { .. })
        ));
    }

    // ---- stripe ----

    fn stripe_sig(secret: &str, t: i64, body: &[u8]) -> String {
        hex::encode(hmac_sha256(secret, &[t.to_string().as_bytes(), b".", body]))
    }

    #[test]
    fn stripe_valid_tampered_wrong_secret() {
        let body = br#"{"id":"evt_1"}"#;
        let t = NOW - 10;
        let value = format!("t={t},v1={},v0=deadbeef", stripe_sig("whsec_x", t, body));
        let h = headers(&[("Stripe-Signature", &value)]);
        assert_eq!(stripe("whsec_x").verify(&h, body, NOW), Ok(()));
        assert_eq!(
            stripe("whsec_x").verify(&h, br#"{"id":"evt_2"}"#, NOW),
            Err(AuthError::SignatureMismatch)
        );
        assert_eq!(
            stripe("whsec_y").verify(&h, body, NOW),
            Err(AuthError::SignatureMismatch)
        );
    }

    #[test]
    fn stripe_timestamp_is_part_of_the_signed_payload() {
        let body = b"{}";
        let t = NOW - 10;
        let value = format!("t={},v1={}", t + 1, stripe_sig("whsec_x", t, body));
        assert_eq!(
            stripe("whsec_x").verify(&headers(&[("Stripe-Signature", &value)]), body, NOW),
            Err(AuthError::SignatureMismatch)
        );
    }

    #[test]
    fn stripe_tolerance() {
        let body = b"{}";
        let at = |t: i64| {
            let value = format!("t={t},v1={}", stripe_sig("whsec_x", t, body));
            stripe("whsec_x").verify(&headers(&[("Stripe-Signature", &value)]), body, NOW)
        };
        assert_eq!(
            at(NOW - 301),
            Err(AuthError::TimestampOutsideTolerance {
                age_secs: 301,
                tolerance_secs: 300
            })
        );
        assert_eq!(at(NOW - 300), Ok(()));
        assert_eq!(at(NOW + 300), Ok(()));
        assert_eq!(
            at(NOW + 301),
            Err(AuthError::TimestampOutsideTolerance {
                age_secs: -301,
                tolerance_secs: 300
            })
        );

        let mut cfg = sig(SignaturePreset::Stripe, "whsec_x");
        cfg.tolerance = Some(Duration::from_secs(600));
        let value = format!(
            "t={},v1={}",
            NOW - 500,
            stripe_sig("whsec_x", NOW - 500, body)
        );
        assert_eq!(
            HttpAuth::Signature(cfg).verify(&headers(&[("Stripe-Signature", &value)]), body, NOW),
            Ok(())
        );
    }

    #[test]
    fn stripe_any_v1_may_match() {
        let body = b"payload";
        let t = NOW;
        let good = stripe_sig("whsec_new", t, body);
        let stale = stripe_sig("whsec_old", t, body);
        let value = format!("t={t}, v1={stale}, v1=nothex, v1={good}, v0={good}");
        assert_eq!(
            stripe("whsec_new").verify(&headers(&[("Stripe-Signature", &value)]), body, NOW),
            Ok(())
        );
        let none_match = format!("t={t},v1={stale},v1={stale}");
        assert_eq!(
            stripe("whsec_new").verify(&headers(&[("Stripe-Signature", &none_match)]), body, NOW),
            Err(AuthError::SignatureMismatch)
        );
        // v0 alone is never trusted.
        let v0_only = format!("t={t},v0={good}");
        assert!(matches!(
            stripe("whsec_new").verify(&headers(&[("Stripe-Signature", &v0_only)]), body, NOW),
            Err(AuthError::MalformedHeader { .. })
        ));
    }

    #[test]
    fn stripe_malformed_headers() {
        let auth = stripe("whsec_x");
        let sig = stripe_sig("whsec_x", NOW, b"");
        let cases = [
            format!("v1={sig}"),
            format!("t=,v1={sig}"),
            format!("t=-5,v1={sig}"),
            format!("t=12a,v1={sig}"),
            format!("t=99999999999999999999999,v1={sig}"),
            format!("t={NOW},t={NOW},v1={sig}"),
            format!("t={NOW},garbage,v1={sig}"),
            format!("t={NOW}"),
            String::new(),
        ];
        for value in &cases {
            assert_eq!(
                malformed_header(
                    auth.verify(&headers(&[("Stripe-Signature", value)]), b"", NOW)
                        .unwrap_err()
                ),
                "Stripe-Signature",
                "{value}"
            );
        }
        assert!(matches!(
            auth.verify(
                &raw_header("stripe-signature", b"t=1,v1=\xc3\x28"),
                b"",
                NOW
            ),
            Err(AuthError::MalformedHeader { .. })
        ));
        assert_eq!(
            auth.verify(&HeaderMap::new(), b"", NOW),
            Err(AuthError::MissingHeader("Stripe-Signature".into()))
        );
    }

    // ---- slack ----

    fn slack_headers(secret: &str, ts: i64, body: &[u8]) -> HeaderMap {
        let ts = ts.to_string();
        let sig = hmac_sha256(secret, &[b"v0:", ts.as_bytes(), b":", body]);
        headers(&[
            ("X-Slack-Request-Timestamp", &ts),
            ("X-Slack-Signature", &format!("v0={}", hex::encode(sig))),
        ])
    }

    #[test]
    fn slack_documented_known_answer() {
        // The example from Slack's "Verifying requests from Slack" documentation.
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let h = headers(&[
            ("X-Slack-Request-Timestamp", "1531420618"),
            (
                "X-Slack-Signature",
                "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
            ),
        ]);
        let auth = slack("8f742231b10e8888abcd99yyyzzz85a5");
        assert_eq!(auth.verify(&h, body.as_bytes(), 1_531_420_618 + 60), Ok(()));
    }

    #[test]
    fn slack_valid_tampered_wrong_secret() {
        let body = b"command=/deploy";
        let h = slack_headers("slack-secret", NOW - 5, body);
        assert_eq!(slack("slack-secret").verify(&h, body, NOW), Ok(()));
        assert_eq!(
            slack("slack-secret").verify(&h, b"command=/destroy", NOW),
            Err(AuthError::SignatureMismatch)
        );
        assert_eq!(
            slack("other").verify(&h, body, NOW),
            Err(AuthError::SignatureMismatch)
        );
    }

    #[test]
    fn slack_tolerance() {
        let body = b"x";
        assert_eq!(
            slack("s").verify(&slack_headers("s", NOW - 301, body), body, NOW),
            Err(AuthError::TimestampOutsideTolerance {
                age_secs: 301,
                tolerance_secs: 300
            })
        );
        assert_eq!(
            slack("s").verify(&slack_headers("s", NOW - 299, body), body, NOW),
            Ok(())
        );
        let mut cfg = sig(SignaturePreset::Slack, "s");
        cfg.tolerance = Some(Duration::from_secs(60));
        assert_eq!(
            HttpAuth::Signature(cfg).verify(&slack_headers("s", NOW - 61, body), body, NOW),
            Err(AuthError::TimestampOutsideTolerance {
                age_secs: 61,
                tolerance_secs: 60
            })
        );
    }

    #[test]
    fn slack_malformed_and_missing() {
        let auth = slack("s");
        let good = slack_headers("s", NOW, b"");
        let mut no_ts = good.clone();
        no_ts.remove("x-slack-request-timestamp");
        assert_eq!(
            auth.verify(&no_ts, b"", NOW),
            Err(AuthError::MissingHeader("X-Slack-Request-Timestamp".into()))
        );
        let mut no_sig = good.clone();
        no_sig.remove("x-slack-signature");
        assert_eq!(
            auth.verify(&no_sig, b"", NOW),
            Err(AuthError::MissingHeader("X-Slack-Signature".into()))
        );
        let mut bad_ts = good.clone();
        bad_ts.insert(
            "x-slack-request-timestamp",
            HeaderValue::from_static("soon"),
        );
        assert_eq!(
            malformed_header(auth.verify(&bad_ts, b"", NOW).unwrap_err()),
            "X-Slack-Request-Timestamp"
        );
        let mut bad_sig = good.clone();
        bad_sig.insert("x-slack-signature", HeaderValue::from_static("v1=abcd"));
        assert_eq!(
            malformed_header(auth.verify(&bad_sig, b"", NOW).unwrap_err()),
            "X-Slack-Signature"
        );
        let mut non_utf8 = good;
        non_utf8.insert(
            "x-slack-request-timestamp",
            HeaderValue::from_bytes(b"17\xff").unwrap(),
        );
        assert!(matches!(
            auth.verify(&non_utf8, b"", NOW),
            Err(AuthError::MalformedHeader { .. })
        ));
    }

    // ---- custom ----

    #[test]
    fn custom_default_sha256_hex() {
        let body = b"custom body";
        let auth = custom("c", None, None, None);
        let h = headers(&[("x-signature", &hex::encode(hmac_sha256("c", &[body])))]);
        assert_eq!(auth.verify(&h, body, NOW), Ok(()));
        assert_eq!(
            auth.verify(&h, b"custom bodY", NOW),
            Err(AuthError::SignatureMismatch)
        );
        assert_eq!(
            custom("d", None, None, None).verify(&h, body, NOW),
            Err(AuthError::SignatureMismatch)
        );
        assert_eq!(
            auth.verify(&HeaderMap::new(), body, NOW),
            Err(AuthError::MissingHeader("X-Signature".into()))
        );
    }

    #[test]
    fn custom_sha1_hex_with_prefix() {
        let body = b"legacy";
        let auth = custom(
            "c",
            Some(SignatureAlgorithm::Sha1),
            Some(SignatureEncoding::Hex),
            Some("sha1="),
        );
        let value = format!("sha1={}", hex::encode(hmac_sha1("c", body)));
        let h = headers(&[("X-Signature", &value)]);
        assert_eq!(auth.verify(&h, body, NOW), Ok(()));
        assert_eq!(
            auth.verify(&h, b"legacY", NOW),
            Err(AuthError::SignatureMismatch)
        );
        // A SHA-256 tag where SHA-1 is configured never matches.
        let wrong_alg = format!("sha1={}", hex::encode(hmac_sha256("c", &[body])));
        assert_eq!(
            auth.verify(&headers(&[("X-Signature", &wrong_alg)]), body, NOW),
            Err(AuthError::SignatureMismatch)
        );
    }

    #[test]
    fn custom_sha512_hex() {
        let body = b"big";
        let auth = custom("c", Some(SignatureAlgorithm::Sha512), None, None);
        let h = headers(&[("X-Signature", &hex::encode(hmac_sha512("c", body)))]);
        assert_eq!(auth.verify(&h, body, NOW), Ok(()));
        assert_eq!(
            custom("x", Some(SignatureAlgorithm::Sha512), None, None).verify(&h, body, NOW),
            Err(AuthError::SignatureMismatch)
        );
    }

    #[test]
    fn custom_base64_with_prefix_in_all_forms() {
        let body = b"\x00binary\xffbody";
        let tag = hmac_sha512("c", body);
        let auth = custom(
            "c",
            Some(SignatureAlgorithm::Sha512),
            Some(SignatureEncoding::Base64),
            Some("sha512="),
        );
        let standard = STANDARD.encode(&tag);
        let forms = [
            standard.clone(),
            standard.trim_end_matches('=').to_owned(),
            URL_SAFE_NO_PAD.encode(&tag),
        ];
        for form in &forms {
            let h = headers(&[("X-Signature", &format!("sha512={form}"))]);
            assert_eq!(auth.verify(&h, body, NOW), Ok(()), "{form}");
            assert_eq!(
                auth.verify(&h, b"other", NOW),
                Err(AuthError::SignatureMismatch)
            );
        }
        let missing_prefix = headers(&[("X-Signature", &standard)]);
        assert_eq!(
            malformed_header(auth.verify(&missing_prefix, body, NOW).unwrap_err()),
            "X-Signature"
        );
        let not_base64 = headers(&[("X-Signature", "sha512=***")]);
        assert!(matches!(
            auth.verify(&not_base64, body, NOW),
            Err(AuthError::MalformedHeader { .. })
        ));
    }

    #[test]
    fn custom_base64_sha256() {
        let body = b"shopify-like";
        let auth = custom("c", None, Some(SignatureEncoding::Base64), None);
        let h = headers(&[("X-Signature", &STANDARD.encode(hmac_sha256("c", &[body])))]);
        assert_eq!(auth.verify(&h, body, NOW), Ok(()));
    }

    #[test]
    fn custom_non_utf8_header() {
        let auth = custom("c", None, None, Some("sha256="));
        assert!(matches!(
            auth.verify(&raw_header("x-signature", b"sha256=\xfe\xff"), b"", NOW),
            Err(AuthError::MalformedHeader { .. })
        ));
    }

    #[test]
    fn verify_refuses_invalid_config_instead_of_opening_the_route() {
        let auth = HttpAuth::ApiKey {
            header: "X-Key".into(),
            key: String::new(),
        };
        assert!(matches!(
            auth.verify(&headers(&[("X-Key", "")]), b"", NOW),
            Err(AuthError::Misconfigured(_))
        ));
        let mut no_header = sig(SignaturePreset::Custom, "c");
        no_header.header = None;
        assert!(matches!(
            HttpAuth::Signature(no_header).verify(&HeaderMap::new(), b"", NOW),
            Err(AuthError::Misconfigured(_))
        ));
    }

    // ---- serde ----

    #[test]
    fn serde_round_trip() {
        let cases = [
            (
                r#"{"type":"signature","preset":"github","secret":"s"}"#,
                github("s"),
            ),
            (
                r#"{"type":"api_key","header":"X-Key","key":"k"}"#,
                HttpAuth::ApiKey {
                    header: "X-Key".into(),
                    key: "k".into(),
                },
            ),
            (r#"{"type":"none"}"#, HttpAuth::None),
            (
                r#"{"type":"bearer","token":"t"}"#,
                HttpAuth::Bearer { token: "t".into() },
            ),
            (
                r#"{"type":"basic","username":"u","password":"p"}"#,
                HttpAuth::Basic {
                    username: "u".into(),
                    password: "p".into(),
                },
            ),
        ];
        for (json, expected) in cases {
            let parsed: HttpAuth = serde_json::from_str(json).unwrap();
            assert_eq!(parsed, expected, "{json}");
            assert_eq!(serde_json::to_string(&parsed).unwrap(), json);
        }
    }

    #[test]
    fn serde_custom_and_tolerance() {
        let json = r#"{"type":"signature","preset":"custom","secret":"s","algorithm":"sha512","encoding":"base64","header":"X-Sig","prefix":"sha512="}"#;
        let parsed: HttpAuth = serde_json::from_str(json).unwrap();
        assert_eq!(
            parsed,
            HttpAuth::Signature(SignatureAuth {
                algorithm: Some(SignatureAlgorithm::Sha512),
                encoding: Some(SignatureEncoding::Base64),
                header: Some("X-Sig".into()),
                prefix: Some("sha512=".into()),
                ..sig(SignaturePreset::Custom, "s")
            })
        );
        assert_eq!(serde_json::to_string(&parsed).unwrap(), json);

        let json = r#"{"type":"signature","preset":"stripe","secret":"s","tolerance":"10m"}"#;
        let parsed: HttpAuth = serde_json::from_str(json).unwrap();
        let HttpAuth::Signature(s) = &parsed else {
            panic!("expected a signature")
        };
        assert_eq!(s.tolerance, Some(Duration::from_secs(600)));
        let back: HttpAuth =
            serde_json::from_str(&serde_json::to_string(&parsed).unwrap()).unwrap();
        assert_eq!(back, parsed);
    }

    #[test]
    fn serde_rejects_unknown_fields_and_values() {
        for json in [
            r#"{"type":"signature","preset":"github","secret":"s","extra":1}"#,
            r#"{"type":"api_key","header":"X-Key","key":"k","extra":1}"#,
            r#"{"type":"bearer","token":"t","tokn":"t"}"#,
            r#"{"type":"signature","preset":"gitlab","secret":"s"}"#,
            r#"{"type":"signature","preset":"custom","secret":"s","header":"X","algorithm":"md5"}"#,
            r#"{"type":"signature","preset":"stripe","secret":"s","tolerance":"soon"}"#,
            r#"{"type":"oauth"}"#,
            r#"{"token":"t"}"#,
        ] {
            assert!(serde_json::from_str::<HttpAuth>(json).is_err(), "{json}");
        }
    }

    // ---- validate / label / display ----

    #[test]
    fn validate_messages() {
        let err = |auth: HttpAuth| auth.validate().unwrap_err();
        assert_eq!(
            err(HttpAuth::Bearer {
                token: String::new()
            }),
            "auth.token must not be empty"
        );
        assert_eq!(
            err(HttpAuth::Bearer {
                token: "a b".into()
            }),
            "auth.token must not contain whitespace or control characters"
        );
        assert_eq!(
            err(HttpAuth::ApiKey {
                header: "Bad Header".into(),
                key: "k".into()
            }),
            "auth.header is not a valid HTTP header name"
        );
        assert_eq!(
            err(HttpAuth::ApiKey {
                header: "X-Key".into(),
                key: String::new()
            }),
            "auth.key must not be empty"
        );
        assert_eq!(
            err(HttpAuth::Basic {
                username: "a:b".into(),
                password: "p".into()
            }),
            "auth.username must not contain ':'"
        );
        assert_eq!(
            err(HttpAuth::Basic {
                username: "a".into(),
                password: String::new()
            }),
            "auth.password must not be empty"
        );
        assert_eq!(err(github("")), "auth.secret must not be empty");

        let mut s = sig(SignaturePreset::Github, "s");
        s.algorithm = Some(SignatureAlgorithm::Sha1);
        assert_eq!(
            err(HttpAuth::Signature(s)),
            "auth.algorithm is only allowed with preset custom"
        );
        let mut s = sig(SignaturePreset::Stripe, "s");
        s.header = Some("X".into());
        assert_eq!(
            err(HttpAuth::Signature(s)),
            "auth.header is only allowed with preset custom"
        );
        let mut s = sig(SignaturePreset::Github, "s");
        s.tolerance = Some(Duration::from_secs(5));
        assert_eq!(
            err(HttpAuth::Signature(s)),
            "auth.tolerance is only allowed with presets stripe and slack"
        );
        let mut s = sig(SignaturePreset::Slack, "s");
        s.tolerance = Some(Duration::from_millis(500));
        assert_eq!(
            err(HttpAuth::Signature(s)),
            "auth.tolerance must be at least one second"
        );
        assert_eq!(
            err(HttpAuth::Signature(sig(SignaturePreset::Custom, "s"))),
            "auth.header is required for preset custom"
        );
        let mut s = sig(SignaturePreset::Custom, "s");
        s.header = Some("X-Sig".into());
        s.prefix = Some(String::new());
        assert_eq!(
            err(HttpAuth::Signature(s)),
            "auth.prefix must not be empty; omit it instead"
        );

        for ok in [
            HttpAuth::None,
            github("s"),
            stripe("s"),
            slack("s"),
            custom("s", Some(SignatureAlgorithm::Sha1), None, Some("sha1=")),
            HttpAuth::Basic {
                username: "u".into(),
                password: "p:q".into(),
            },
        ] {
            assert_eq!(ok.validate(), Ok(()), "{}", ok.label());
        }
    }

    #[test]
    fn labels() {
        assert_eq!(HttpAuth::None.label(), "none");
        assert_eq!(HttpAuth::Bearer { token: "t".into() }.label(), "bearer");
        assert_eq!(
            HttpAuth::ApiKey {
                header: "h".into(),
                key: "k".into()
            }
            .label(),
            "api_key"
        );
        assert_eq!(
            HttpAuth::Basic {
                username: "u".into(),
                password: "p".into()
            }
            .label(),
            "basic"
        );
        assert_eq!(github("s").label(), "signature:github");
        assert_eq!(stripe("s").label(), "signature:stripe");
        assert_eq!(slack("s").label(), "signature:slack");
        assert_eq!(custom("s", None, None, None).label(), "signature:custom");
    }

    #[test]
    fn messages_and_debug_never_contain_secrets() {
        let auth = HttpAuth::Bearer {
            token: "super-secret-token".into(),
        };
        let err = auth
            .verify(
                &headers(&[("Authorization", "Bearer guessed-token")]),
                b"",
                NOW,
            )
            .unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("super-secret-token") && !text.contains("guessed-token"));
        assert_eq!(text, "invalid credentials");
        assert!(!format!("{auth:?}").contains("super-secret-token"));
        assert!(!format!("{:?}", github("gh-secret-value")).contains("gh-secret-value"));
        assert!(!format!(
            "{:?}",
            HttpAuth::Basic {
                username: "u".into(),
                password: "pw-secret".into()
            }
        )
        .contains("pw-secret"));

        assert_eq!(
            AuthError::TimestampOutsideTolerance {
                age_secs: 301,
                tolerance_secs: 300
            }
            .to_string(),
            "request timestamp is 301 s old, outside the allowed tolerance of 300 s"
        );
        assert_eq!(
            AuthError::TimestampOutsideTolerance {
                age_secs: -400,
                tolerance_secs: 300
            }
            .to_string(),
            "request timestamp is 400 s in the future, outside the allowed tolerance of 300 s"
        );
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        assert!(check_timestamp(i64::MAX, i64::MIN, DEFAULT_TOLERANCE).is_err());
        assert!(check_timestamp(0, i64::MAX, DEFAULT_TOLERANCE).is_err());
        assert!(check_timestamp(5, 5, Duration::from_secs(u64::MAX)).is_ok());
    }
}
