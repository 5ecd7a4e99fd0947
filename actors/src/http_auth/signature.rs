//! Verification of HMAC signatures: GitHub, Stripe, Slack, Standard Webhooks and custom
//! senders.

use super::*;

impl SignatureAuth {
    pub(super) fn tolerance(&self) -> Duration {
        self.tolerance.unwrap_or(DEFAULT_TOLERANCE)
    }

    pub(super) fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<(), AuthError> {
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
            SignaturePreset::StandardWebhooks => {
                verify_standard_webhooks(&self.secret, headers, body, now_unix, self.tolerance())
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

    pub(super) fn validate(&self) -> Result<(), String> {
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
            SignaturePreset::Stripe
            | SignaturePreset::Slack
            | SignaturePreset::StandardWebhooks => {
                if self.tolerance.is_some_and(|t| t.as_secs() == 0) {
                    return Err("auth.tolerance must be at least one second".into());
                }
            }
            SignaturePreset::Github | SignaturePreset::Custom => {
                if self.tolerance.is_some() {
                    return Err(
                        "auth.tolerance is only allowed with presets stripe, slack and standard_webhooks"
                            .into(),
                    );
                }
            }
        }
        if self.preset == SignaturePreset::StandardWebhooks {
            standard_webhooks_key(&self.secret)?;
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

    /// The headers the preset needs, checked before the body is read.
    pub(super) fn required_headers(&self) -> Vec<&str> {
        match self.preset {
            SignaturePreset::Github => vec![GITHUB_SIGNATURE],
            SignaturePreset::Stripe => vec![STRIPE_SIGNATURE],
            SignaturePreset::Slack => vec![SLACK_TIMESTAMP, SLACK_SIGNATURE],
            SignaturePreset::StandardWebhooks => vec![SW_ID, SW_TIMESTAMP, SW_SIGNATURE],
            SignaturePreset::Custom => self.header.as_deref().into_iter().collect(),
        }
    }

    /// The sender's id of this delivery, the same when the same event is sent again: GitHub's
    /// `X-GitHub-Delivery`, Stripe's event `id`, Slack's `event_id` (else the signed timestamp
    /// and signature, which identify one signed request), Standard Webhooks' `webhook-id`.
    /// Call only on a request whose signature verified.
    pub(super) fn delivery_id(
        &self,
        headers: &HeaderMap,
        event: &serde_json::Value,
    ) -> Option<String> {
        let header = |name: &str| -> Option<String> {
            single_header(headers, name, name)
                .ok()
                .flatten()
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let body_field = |field: &str| -> Option<String> {
            event
                .get("body")?
                .get(field)?
                .as_str()
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        match self.preset {
            SignaturePreset::Github => header(GITHUB_DELIVERY),
            SignaturePreset::Stripe => body_field("id").or_else(|| header(STRIPE_SIGNATURE)),
            SignaturePreset::Slack => body_field("event_id").or_else(|| {
                Some(format!(
                    "{}:{}",
                    header(SLACK_TIMESTAMP)?,
                    header(SLACK_SIGNATURE)?
                ))
            }),
            SignaturePreset::StandardWebhooks => header(SW_ID),
            SignaturePreset::Custom => None,
        }
    }
}

/// Standard Webhooks (standardwebhooks.com): `webhook-signature` holds space-separated
/// `v1,<base64>` entries, HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` keyed with
/// the secret's bytes. Several entries come while a secret is being rolled.
fn verify_standard_webhooks(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    now_unix: i64,
    tolerance: Duration,
) -> Result<(), AuthError> {
    let key = standard_webhooks_key(secret).map_err(AuthError::Misconfigured)?;
    let id = required_header(headers, SW_ID)?;
    let ts_text = required_header(headers, SW_TIMESTAMP)?;
    let timestamp = parse_unix(ts_text)
        .ok_or_else(|| malformed(SW_TIMESTAMP, "expected a Unix timestamp in seconds"))?;
    let value = required_header(headers, SW_SIGNATURE)?;
    let expected = compute_hmac(
        SignatureAlgorithm::Sha256,
        &key,
        &[id.as_bytes(), b".", ts_text.as_bytes(), b".", body],
    )?;
    let mut saw_v1 = false;
    let mut any = Choice::from(0);
    // Every entry is compared, without stopping at a match, as for Stripe.
    for entry in value.split(' ').filter(|e| !e.is_empty()) {
        // Other versions (`v1a`, asymmetric) are not HMAC and are skipped.
        let Some(("v1", encoded)) = entry.split_once(',') else {
            continue;
        };
        saw_v1 = true;
        if let Ok(given) = STANDARD_LENIENT.decode(encoded) {
            any |= given.as_slice().ct_eq(&expected);
        }
    }
    if !saw_v1 {
        return Err(malformed(
            SW_SIGNATURE,
            "expected space-separated v1,<base64> signatures",
        ));
    }
    accept_signature(any)?;
    check_timestamp(timestamp, now_unix, tolerance)
}

/// The HMAC key of a Standard Webhooks secret: `whsec_` (optional) then base64.
fn standard_webhooks_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    match STANDARD_LENIENT.decode(encoded) {
        Ok(key) if !key.is_empty() => Ok(key),
        _ => Err(
            "auth.secret must be a Standard Webhooks secret: `whsec_` followed by base64".into(),
        ),
    }
}

/// Only plain digits are accepted: signs, spaces or fractions are not something either
/// service sends, and being strict keeps the signed text and the checked number in step.
pub(super) fn parse_unix(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

pub(super) fn check_timestamp(
    timestamp: i64,
    now_unix: i64,
    tolerance: Duration,
) -> Result<(), AuthError> {
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
