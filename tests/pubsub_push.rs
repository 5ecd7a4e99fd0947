//! Pub/Sub push triggers (`kind = "pubsub_push"`) over real HTTP: this test plays Google's
//! part. It signs OIDC tokens with its own key (tests/fixtures/push-signer.pem), serves the
//! public half as a JWKS on a local port (`certs_url`), and posts push envelopes as Pub/Sub
//! does, retrying what is not answered `2xx`. (pstest, the emulator tests/pubsub.rs uses,
//! does not push.)

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::binary::MillgateProcess;
use common::{
    assert_one_job_per_event, assert_repeats_only_across_the_kill, eventually, lines, TestService,
};
use millgate_actors::job::JobStatus;
use millgate_actors::triggers::pubsub::jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const AUDIENCE: &str = "https://millgate.test/push/orders";
const EMAIL: &str = "pusher@millgate-test.iam.gserviceaccount.com";
const KID: &str = "millgate-test-1";
const SUBSCRIPTION: &str = "projects/millgate-test/subscriptions/orders";
const SECS_30: Duration = Duration::from_secs(30);

/// The JWKS endpoint: the signer's public key, and how often it was asked.
struct Certs {
    url: String,
    hits: Arc<AtomicUsize>,
}

async fn serve_certs() -> Certs {
    let jwk: Value =
        serde_json::from_str(include_str!("fixtures/push-signer.jwk.json")).expect("fixture JWK");
    let set = json!({ "keys": [jwk] });
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    let app = axum::Router::new().route(
        "/certs",
        axum::routing::get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let set = set.clone();
            async move { ([("cache-control", "public, max-age=3600")], axum::Json(set)) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Certs {
        url: format!("http://{addr}/certs"),
        hits,
    }
}

fn claims() -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "email": EMAIL,
        "email_verified": true,
        "sub": "1234567890",
        "iat": now,
        "exp": now + 3600,
    })
}

/// A token as Pub/Sub makes one, signed with `key` (a fixture) naming `kid`.
fn token_with(key: &str, kid: &str, claims: &Value) -> String {
    let pem = std::fs::read(format!(
        "{}/tests/fixtures/{key}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture key");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(&pem).expect("RSA key"),
    )
    .expect("sign")
}

fn token() -> String {
    token_with("push-signer.pem", KID, &claims())
}

fn envelope(id: &str, data: &[u8]) -> Value {
    let data = base64::engine::general_purpose::STANDARD.encode(data);
    let published = "2026-12-05T10:00:00.123Z";
    json!({
        "message": {
            "attributes": {"source": "shop"},
            "data": data,
            "messageId": id, "message_id": id,
            "publishTime": published, "publish_time": published,
            "orderingKey": "customer-9",
        },
        "subscription": SUBSCRIPTION,
        "deliveryAttempt": 1,
    })
}

fn trigger(name: &str, path: &str, certs: &str, runnable: &str, extra: &str) -> String {
    format!(
        r#"
[[triggers]]
name = "{name}"
kind = "pubsub_push"
runnable = "{runnable}"
path = "{path}"
audience = "{AUDIENCE}"
email = "{EMAIL}"
certs_url = "{certs}"
{extra}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_pushes_become_jobs_once_each() {
    let certs = serve_certs().await;
    let t = TestService::start(&format!(
        "[runnables.echo]\nkind = \"echo\"\n{}",
        trigger("orders", "/push/orders", &certs.url, "echo", "")
    ))
    .await;
    let tok = token();
    let (status, body) = t
        .post_json("/push/orders", Some(&tok), &envelope("m-1", br#"{"n": 7}"#))
        .await;
    assert_eq!(status, 202, "{body}");
    let job = t
        .wait_final(body["job_id"].as_str().expect("job id"), SECS_30)
        .await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    let e = &job.event;
    assert_eq!(e["kind"], "pubsub_push");
    assert_eq!(e["trigger"], "orders");
    assert_eq!(e["subscription"], SUBSCRIPTION);
    assert_eq!(e["message_id"], "m-1");
    assert_eq!(e["publish_time"], "2026-12-05T10:00:00.123Z");
    assert_eq!(e["ordering_key"], "customer-9");
    assert_eq!(e["attributes"], json!({"source": "shop"}));
    assert_eq!(e["data"], json!({"n": 7}));
    assert_eq!(e["delivery_attempt"], 1);
    assert_eq!(job.args["delivery_type"], "push");
    assert_eq!(job.args["payload"], e["payload"]);

    // Pub/Sub pushes again what it did not see acked: the repeat is the same event.
    let (status, again) = t
        .post_json("/push/orders", Some(&tok), &envelope("m-1", br#"{"n": 7}"#))
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["job_id"], body["job_id"]);

    // More pushes under the same key: the JWKS was fetched once.
    for i in 2..=6 {
        let (status, b) = t
            .post_json(
                "/push/orders",
                Some(&tok),
                &envelope(&format!("m-{i}"), b"plain text"),
            )
            .await;
        assert_eq!(status, 202, "{b}");
    }
    let jobs = t.final_jobs("orders", 6, SECS_30).await;
    assert_eq!(jobs.len(), 6);
    let text = jobs
        .iter()
        .find(|j| j.event["message_id"] == "m-2")
        .expect("m-2");
    assert_eq!(text.event["data"], Value::Null, "not JSON: no data");
    assert_eq!(certs.hits.load(Ordering::SeqCst), 1, "keys are cached");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_without_a_valid_token_make_no_job() {
    let certs = serve_certs().await;
    let t = TestService::start(&format!(
        "[runnables.echo]\nkind = \"echo\"\n{}",
        trigger("guarded", "/push/guarded", &certs.url, "echo", "")
    ))
    .await;
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims();
        f(&mut c);
        token_with("push-signer.pem", KID, &c)
    };
    let now = chrono::Utc::now().timestamp();
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "missing token"),
        (Some("not-a-jwt".into()), "not a JWT"),
        (
            Some(with(&|c| c["aud"] = json!("https://elsewhere.test/"))),
            "audience",
        ),
        (
            Some(with(&|c| c["email"] = json!("intruder@example.com"))),
            "service account",
        ),
        (
            Some(with(&|c| c["email_verified"] = json!(false))),
            "not verified",
        ),
        (
            Some(with(&|c| c["iss"] = json!("https://issuer.example.com"))),
            "issued by",
        ),
        (
            Some(with(&|c| {
                c["exp"] = json!(now - 3600);
                c["iat"] = json!(now - 7200);
            })),
            "expired",
        ),
        (
            Some(token_with("push-stranger.pem", KID, &claims())),
            "not valid",
        ),
        (
            Some(token_with("push-stranger.pem", "stranger", &claims())),
            "not among those published",
        ),
    ];
    for (i, (tok, why)) in cases.iter().enumerate() {
        let (status, body) = t
            .post_json(
                "/push/guarded",
                tok.as_deref(),
                &envelope(&format!("bad-{i}"), b"{}"),
            )
            .await;
        assert_eq!(status, 401, "{why}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "expected `{why}` in: {message}");
    }
    // An HS256 token made with the public key as the secret (the classic confusion).
    let hs = encode(
        &Header {
            kid: Some(KID.into()),
            ..Header::new(Algorithm::HS256)
        },
        &claims(),
        &EncodingKey::from_secret(include_bytes!("fixtures/push-signer.jwk.json")),
    )
    .expect("sign");
    let (status, body) = t
        .post_json("/push/guarded", Some(&hs), &envelope("hs", b"{}"))
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(
        t.jobs_of("guarded").is_empty(),
        "no refused push made a job"
    );
    // The unknown key fetched the set again once at most, whatever tokens said.
    assert!(certs.hits.load(Ordering::SeqCst) <= 2);

    // The envelope is checked too, and a valid push still gets through.
    let tok = token();
    let (status, body) = t
        .post_json("/push/guarded", Some(&tok), &json!({"message": {}}))
        .await;
    assert_eq!(status, 400, "{body}");
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let (status, body) = t
        .post_json(
            "/push/guarded",
            Some(&tok),
            &envelope("deep", deep.as_bytes()),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("max_json_depth"));
    let (status, body) = t
        .post_json("/push/guarded", Some(&tok), &envelope("good", b"{}"))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(t.final_jobs("guarded", 1, SECS_30).await.len(), 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_pushes_are_answered_after_the_outcome_and_dead_letters_follow_on_dead_letter() {
    let certs = serve_certs().await;
    let failing = "retry = { attempts = 1 }\nmode = \"sync\"";
    let t = TestService::start(&format!(
        r#"
[runnables.echo]
kind = "echo"

[runnables.fail]
command = ["sh", "-c", "echo broken >&2; exit 3"]
{}{}{}{}"#,
        trigger(
            "synced",
            "/push/synced",
            &certs.url,
            "echo",
            "mode = \"sync\""
        ),
        trigger("acked", "/push/acked", &certs.url, "fail", failing),
        trigger(
            "nacked",
            "/push/nacked",
            &certs.url,
            "fail",
            &format!("{failing}\non_dead_letter = \"nack\"")
        ),
        trigger(
            "open",
            "/push/open",
            &certs.url,
            "echo",
            &format!("verify = false\nsubscription = \"{SUBSCRIPTION}\"")
        ),
    ))
    .await;
    let tok = token();
    let (status, body) = t
        .post_json("/push/synced", Some(&tok), &envelope("s-1", br#"{"k": 1}"#))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["payload"],
        envelope("s-1", br#"{"k": 1}"#)["message"]["data"]
    );

    // Dead-lettered: acked by default (2xx), so Pub/Sub stops pushing it...
    let (status, body) = t
        .post_json("/push/acked", Some(&tok), &envelope("f-1", b"{}"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["error"]["code"], "job_failed");
    // ...or nacked for the subscription's dead-letter policy, every time it comes back.
    for _ in 0..2 {
        let (status, body) = t
            .post_json("/push/nacked", Some(&tok), &envelope("f-2", b"{}"))
            .await;
        assert_eq!(status, 500, "{body}");
    }
    assert_eq!(t.jobs_of("nacked").len(), 1, "the repeat is the same job");

    // Without verification anyone may push, but only this subscription's messages.
    let (status, body) = t
        .post_json("/push/open", None, &envelope("o-1", b"{}"))
        .await;
    assert_eq!(status, 202, "{body}");
    let mut other = envelope("o-2", b"{}");
    other["subscription"] = json!("projects/elsewhere/subscriptions/x");
    let (status, body) = t.post_json("/push/open", None, &other).await;
    assert_eq!(status, 403, "{body}");
    t.stop().await;
}

/// Pushes every message until it is answered `2xx`, as Pub/Sub does, while millgate is killed
/// with -9 and started again: every message ran as one job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_pushes_loses_no_message_and_dedups_repeats() {
    let certs = serve_certs().await;
    const N: usize = 40;
    let mut mg = MillgateProcess::new(&format!(
        r#"
[router]
runners = 2

[runnables.slow]
command = ["sh", "-c", 'sleep 0.1; echo $MILLGATE_EVENT_ID $PPID >> {{DIR}}/done.log']
{}"#,
        trigger(
            "pushed",
            "/push/crash",
            &certs.url,
            "slow",
            "max_in_flight = 10"
        )
    ));
    let done = mg.path("done.log");
    mg.start().await;
    let first_pid = mg.pid().to_string();
    let url = mg.url("/push/crash");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let tok = token();
    let mut acked = vec![false; N];
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(90);
    while acked.iter().any(|a| !a) {
        assert!(Instant::now() < deadline, "pushes never acked: {acked:?}");
        for (i, ok) in acked.iter_mut().enumerate() {
            if *ok {
                continue;
            }
            let body = envelope(&format!("c-{i}"), json!({ "i": i }).to_string().as_bytes());
            let answer = client.post(&url).bearer_auth(&tok).json(&body).send().await;
            *ok = answer.is_ok_and(|r| r.status().is_success());
            // Paced so that jobs run while pushes still come; the kill lands mid-stream, with
            // jobs queued, running and done, and pushes refused until the restart.
            tokio::time::sleep(Duration::from_millis(20)).await;
            if !killed && lines(&done).len() >= 5 {
                mg.kill_9();
                killed = true;
                mg.spawn();
            }
        }
    }
    assert!(killed, "the kill came too late to test anything");
    eventually(SECS_30, "every acked push ran", || {
        let ran = lines(&done);
        (0..N).all(|i| ran.iter().any(|l| l.contains(&format!(":c-{i}:"))))
    })
    .await;
    mg.kill_9();
    assert_eq!(assert_one_job_per_event(&mg.data_dir(), "pushed"), N);
    let twice = assert_repeats_only_across_the_kill(&done, &first_pid);
    eprintln!("ran twice: {twice}");
}
