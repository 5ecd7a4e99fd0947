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

mod signature;

/// Stripe's and Slack's own SDKs default to five minutes; matching them avoids surprises.
const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

const GITHUB_SIGNATURE: &str = "X-Hub-Signature-256";
const STRIPE_SIGNATURE: &str = "Stripe-Signature";
const SLACK_SIGNATURE: &str = "X-Slack-Signature";
const SLACK_TIMESTAMP: &str = "X-Slack-Request-Timestamp";
const GITHUB_DELIVERY: &str = "X-GitHub-Delivery";
const SW_ID: &str = "webhook-id";
const SW_TIMESTAMP: &str = "webhook-timestamp";
const SW_SIGNATURE: &str = "webhook-signature";

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
    /// The shared HMAC secret (`standard_webhooks`: `whsec_` followed by the key in base64).
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
    /// Presets `stripe`, `slack` and `standard_webhooks` only: maximum clock difference;
    /// defaults to 5 minutes.
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
    /// standardwebhooks.com: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    StandardWebhooks,
    Custom,
}

impl SignaturePreset {
    /// The name used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Github => "github",
            Self::Stripe => "stripe",
            Self::Slack => "slack",
            Self::StandardWebhooks => "standard_webhooks",
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

    /// The checks that need no body, made before it is read: everything but a signature, for
    /// which only the presence of its headers is checked.
    pub fn verify_head(&self, headers: &HeaderMap, now_unix: i64) -> Result<(), AuthError> {
        match self {
            Self::Signature(sig) => {
                self.validate().map_err(AuthError::Misconfigured)?;
                for name in sig.required_headers() {
                    single_header(headers, name, name)?
                        .ok_or_else(|| AuthError::MissingHeader(name.to_owned()))?;
                }
                Ok(())
            }
            other => other.verify(headers, b"", now_unix),
        }
    }

    /// The sender's id of a verified delivery, for signature presets whose sender gives one.
    pub fn delivery_id(&self, headers: &HeaderMap, event: &serde_json::Value) -> Option<String> {
        match self {
            Self::Signature(sig) => sig.delivery_id(headers, event),
            _ => None,
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
pub(crate) fn secret_eq(given: &[u8], expected: &[u8]) -> Choice {
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

#[cfg(test)]
mod tests;
