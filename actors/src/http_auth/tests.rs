use super::*;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::HeaderValue;

use super::signature::check_timestamp;

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
    let back: HttpAuth = serde_json::from_str(&serde_json::to_string(&parsed).unwrap()).unwrap();
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
        "auth.tolerance is only allowed with presets stripe, slack and standard_webhooks"
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

// ---- Standard Webhooks ----

fn standard_webhooks() -> HttpAuth {
    HttpAuth::Signature(sig(
        SignaturePreset::StandardWebhooks,
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    ))
}

/// The example of the Standard Webhooks specification's reference libraries.
const SW_TS: i64 = 1_614_265_330;
const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

fn sw_headers(signature: &str) -> HeaderMap {
    headers(&[
        ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
        ("webhook-timestamp", "1614265330"),
        ("webhook-signature", signature),
    ])
}

#[test]
fn standard_webhooks_reference_example_and_rolled_secrets() {
    let auth = standard_webhooks();
    assert_eq!(auth.validate(), Ok(()));
    assert_eq!(auth.verify(&sw_headers(SW_SIG), SW_BODY, SW_TS), Ok(()));
    // Several entries, other versions among them: one v1 match is enough.
    let several = format!("v1a,AAAA v1,{} {SW_SIG}", STANDARD.encode([0u8; 32]));
    assert_eq!(auth.verify(&sw_headers(&several), SW_BODY, SW_TS), Ok(()));
    assert_eq!(
        auth.verify(&sw_headers(SW_SIG), br#"{"test": 1}"#, SW_TS),
        Err(AuthError::SignatureMismatch)
    );
    assert!(matches!(
        auth.verify(&sw_headers(SW_SIG), SW_BODY, SW_TS + 301),
        Err(AuthError::TimestampOutsideTolerance { .. })
    ));
    assert_eq!(
        malformed_header(
            auth.verify(&sw_headers("v2,abc"), SW_BODY, SW_TS)
                .unwrap_err()
        ),
        "webhook-signature"
    );
    let missing = headers(&[("webhook-id", "m")]);
    assert_eq!(
        auth.verify_head(&missing, SW_TS),
        Err(AuthError::MissingHeader("webhook-timestamp".into()))
    );
    assert_eq!(
        auth.delivery_id(&sw_headers(SW_SIG), &serde_json::Value::Null),
        Some("msg_p5jXN8AQM9LWM0D4loKWxJek".into())
    );
    let bad = HttpAuth::Signature(sig(SignaturePreset::StandardWebhooks, "whsec_!!"));
    assert!(bad.validate().unwrap_err().contains("whsec_"));
}
