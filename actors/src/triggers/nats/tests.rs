use std::time::Duration;

/// The client this trigger speaks, for tests and tools that publish to it.
use serde_json::{json, Value};

use super::config::{DeliverPolicy, NatsConfig};

fn cfg(v: Value) -> NatsConfig {
    serde_json::from_value(v).expect("config")
}

#[test]
fn validates_subjects_and_jetstream() {
    let c = cfg(json!({"servers": ["127.0.0.1:4222"], "subjects": ["a.*", "b.>"]}));
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    let c = cfg(json!({"servers": [], "subjects": ["a..b", "a.>.c"]}));
    let keys: Vec<_> = c.validate().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["servers", "subjects", "subjects"]);
    let c = cfg(json!({
        "servers": ["x"], "queue_group": "q",
        "jetstream": {"stream": "a.b", "ack_wait": "0s", "create_stream": true}
    }));
    let keys: Vec<_> = c.validate().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "queue_group",
            "jetstream.stream",
            "subjects",
            "jetstream.ack_wait"
        ]
    );
    assert_eq!(
        c.consumer_name("my trigger").as_deref(),
        Some("millgate_my_trigger")
    );
}

#[test]
fn unknown_keys_and_auth_types_are_refused() {
    let e = serde_json::from_value::<NatsConfig>(json!({"servers": ["x"], "subject": "a"}))
        .expect_err("unknown key");
    assert!(e.to_string().contains("subject"), "{e}");
    let e = serde_json::from_value::<NatsConfig>(
        json!({"servers": ["x"], "auth": {"type": "kerberos"}}),
    )
    .expect_err("unknown auth");
    assert!(e.to_string().contains("kerberos"), "{e}");
}

#[tokio::test]
async fn auth_and_tls_reach_the_connect_options() {
    let c = cfg(json!({
        "servers": ["tls://127.0.0.1:4222"], "subjects": ["a"],
        "auth": {"type": "user_password", "user": "u", "password": "p"},
        "tls": {"require": true, "ca_file": "/etc/ca.pem", "cert_file": "/c.pem", "key_file": "/k.pem"}
    }));
    assert!(c.validate().is_empty());
    let opts = format!("{:?}", c.connect_options().await.expect("options"));
    assert!(opts.contains("\"tls_required\": true"), "{opts}");
    assert!(opts.contains("/etc/ca.pem"), "{opts}");
    assert!(opts.contains("/c.pem") && opts.contains("/k.pem"), "{opts}");

    let c = cfg(json!({"servers": ["x"], "subjects": ["a"],
        "auth": {"type": "credentials", "file": "/nonexistent/user.creds"}}));
    let e = c.connect_options().await.expect_err("missing creds file");
    assert!(e.contains("/nonexistent/user.creds"), "{e}");

    let c = cfg(json!({"servers": ["x"], "subjects": ["a"],
        "auth": {"type": "nkey", "seed": "not-a-seed"}}));
    assert_eq!(c.validate()[0].0, "auth.seed");
    let c = cfg(json!({"servers": ["x"], "subjects": ["a"], "tls": {"cert_file": "/c.pem"}}));
    assert_eq!(c.validate()[0].0, "tls");
}

#[test]
fn a_nats_trigger_loads_through_the_common_config_path() {
    use crate::triggers::{TriggerConfig, TriggerSpec};
    let map = |v: Value| match v {
        Value::Object(m) => m,
        _ => unreachable!("object literal"),
    };
    let t = TriggerConfig::from_map(map(json!({
        "name": "orders", "kind": "nats", "runnable": "r",
        "servers": ["127.0.0.1:4222"], "subjects": ["orders.>"],
        "jetstream": {"stream": "ORDERS"}
    })))
    .expect("loads");
    assert!(matches!(t.spec, TriggerSpec::Nats(_)));
    assert_eq!(t.mode(), None);
    assert!(t.spec.kind().push().is_none());
    assert_eq!(
        t.endpoint(),
        "nats 127.0.0.1:4222 jetstream ORDERS/millgate_orders [orders.>]"
    );
    let back = TriggerConfig::from_map(t.to_map()).expect("round trip");
    assert_eq!(back, t);
    let e = TriggerConfig::from_map(map(json!({
        "name": "orders", "kind": "nats", "runnable": "r",
        "servers": ["x"], "subjects": ["a"], "stream": "S"
    })))
    .expect_err("unknown key");
    assert!(e.contains("kind nats") && e.contains("stream"), "{e}");
}

#[test]
fn config_round_trips() {
    let c = cfg(json!({
        "servers": ["127.0.0.1:4222"], "subjects": ["a.>"],
        "auth": {"type": "token", "token": "s3cret"},
        "jetstream": {"stream": "S", "consumer": "C", "ack_wait": "10s", "deliver_policy": "new"}
    }));
    let back: NatsConfig =
        serde_json::from_value(serde_json::to_value(&c).expect("ser")).expect("de");
    assert_eq!(back, c);
    let js = c.jetstream.as_ref().expect("js");
    assert_eq!(js.ack_wait, Duration::from_secs(10));
    assert_eq!(js.deliver_policy, DeliverPolicy::New);
    assert_eq!(js.max_ack_pending, 1000);
}
