//! Supervision: a trigger actor that fails is restarted with backoff while the others serve.

mod common;

use std::time::{Duration, Instant};

use common::TestService;
use millgate_actors::triggers::TriggerState;
use serde_json::json;

fn state(t: &TestService, name: &str) -> TriggerState {
    t.app
        .service
        .registry
        .get(name)
        .expect("trigger")
        .runtime
        .state()
}

fn restarts(t: &TestService, name: &str) -> u64 {
    t.app
        .service
        .registry
        .get(name)
        .expect("trigger")
        .status()
        .restarts
}

async fn wait_state(
    t: &TestService,
    name: &str,
    pred: impl Fn(&TriggerState) -> bool,
) -> TriggerState {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = state(t, name);
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "trigger {name} stuck in {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_trigger_backs_off_and_restarts_while_others_serve() {
    let t = TestService::start(
        r#"
[supervisor]
restart_initial = "400ms"
restart_max = "2s"

[runnables.noop]
command = ["true"]

[[triggers]]
name = "fragile"
kind = "webhook"
runnable = "noop"

[[triggers]]
name = "steady"
kind = "webhook"
runnable = "noop"
"#,
    )
    .await;
    wait_state(&t, "fragile", |s| *s == TriggerState::Running).await;

    t.app.service.inject_trigger_fault("fragile");
    let s = wait_state(&t, "fragile", |s| {
        matches!(s, TriggerState::BackingOff { .. })
    })
    .await;
    let TriggerState::BackingOff {
        last_error,
        retry_in,
        next_attempt,
    } = s
    else {
        unreachable!()
    };
    assert!(last_error.contains("injected fault"), "{last_error}");
    assert!(
        retry_in >= Duration::from_millis(200) && retry_in <= Duration::from_millis(400),
        "{retry_in:?}"
    );
    assert!(chrono::DateTime::parse_from_rfc3339(&next_attempt).is_ok());

    // While it backs off: it answers 503 with Retry-After, the other trigger is unaffected.
    let resp = t
        .client
        .post(t.url("/hooks/fragile"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    if state(&t, "fragile") != TriggerState::Running {
        assert_eq!(resp.status(), 503);
        assert!(resp.headers().contains_key("retry-after"));
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "restarting");
    }
    let (status, _) = t.post_json("/hooks/steady", None, &json!({})).await;
    assert_eq!(status, 202);

    wait_state(&t, "fragile", |s| *s == TriggerState::Running).await;
    assert_eq!(restarts(&t, "fragile"), 1);
    assert_eq!(restarts(&t, "steady"), 0);
    let (status, _) = t.post_json("/hooks/fragile", None, &json!({})).await;
    assert_eq!(status, 202);

    // A second failure soon after: the backoff doubles (jittered into [400ms, 800ms]).
    t.app.service.inject_trigger_fault("fragile");
    let s = wait_state(&t, "fragile", |s| {
        matches!(s, TriggerState::BackingOff { .. })
    })
    .await;
    let TriggerState::BackingOff { retry_in, .. } = s else {
        unreachable!()
    };
    assert!(
        retry_in >= Duration::from_millis(400) && retry_in <= Duration::from_millis(800),
        "{retry_in:?}"
    );
    wait_state(&t, "fragile", |s| *s == TriggerState::Running).await;
    assert_eq!(restarts(&t, "fragile"), 2);
    t.stop().await;
}
