use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5 as v5p;
use rumqttc::{ConnectReturnCode, QoS, Transport};
use serde_json::{json, Value};

use super::config::{MqttConfig, TOPIC_ALIAS_MAX};
use super::event::{mqtt_event, Ack, Message};
use super::link::{refused_v3, refused_v5, v5_error};

fn cfg(v: Value) -> MqttConfig {
    serde_json::from_value(v).expect("config")
}

fn keys(c: &MqttConfig) -> Vec<String> {
    c.validate().into_iter().map(|(k, _)| k).collect()
}

#[test]
fn validates_filters_sessions_and_versions() {
    let c = cfg(json!({"broker": "127.0.0.1", "subscriptions": [
        {"topic": "a/+/b", "qos": 1}, {"topic": "c/#"}]}));
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    assert_eq!(c.port(), 1883);
    assert!(c.clean());
    assert_eq!(c.endpoint(), "mqtt 127.0.0.1:1883 [a/+/b@1,c/#@0]");
    let c = cfg(json!({"broker": "", "version": 4, "clean_session": false,
        "password": "p", "keep_alive": "0s",
        "subscriptions": [{"topic": "a/#/b", "qos": 3}, {"topic": "x+"}]}));
    assert_eq!(
        keys(&c),
        [
            "broker",
            "version",
            "subscriptions",
            "subscriptions",
            "subscriptions",
            "client_id",
            "password",
            "keep_alive"
        ]
    );
    let e = serde_json::from_value::<MqttConfig>(
        json!({"broker": "x", "subscriptions": [], "topic": "a"}),
    )
    .expect_err("unknown key");
    assert!(e.to_string().contains("topic"), "{e}");
}

#[test]
fn session_flags_are_named_per_version() {
    let sub = json!([{"topic": "t", "qos": 1}]);
    // v3 knows `clean_session` only; `clean_start` and `session_expiry` are v5's.
    let c = cfg(
        json!({"broker": "h", "subscriptions": sub, "clean_start": false,
        "session_expiry": "1h", "client_id": "c"}),
    );
    assert_eq!(keys(&c), ["clean_start", "session_expiry"]);
    assert!(
        c.validate()[0].1.contains("clean_session"),
        "{:?}",
        c.validate()
    );
    // v5 knows `clean_start` only.
    let c = cfg(json!({"broker": "h", "version": 5, "subscriptions": sub,
        "clean_session": true}));
    assert_eq!(keys(&c), ["clean_session"]);
    assert!(
        c.validate()[0].1.contains("clean_start"),
        "{:?}",
        c.validate()
    );
    // A persistent v5 session needs an expiry above zero and a client id.
    let c = cfg(json!({"broker": "h", "version": 5, "subscriptions": sub,
        "clean_start": false}));
    assert_eq!(keys(&c), ["session_expiry", "client_id"]);
    assert!(
        c.validate()[1].1.contains("`clean_start = false`"),
        "{:?}",
        c.validate()
    );
    let c = cfg(json!({"broker": "h", "version": 5, "subscriptions": sub,
        "clean_start": false, "client_id": "c", "session_expiry": "0s"}));
    assert_eq!(keys(&c), ["session_expiry"]);
    let c = cfg(json!({"broker": "h", "version": 5, "subscriptions": sub,
        "session_expiry": "200years", "keep_alive": "2s"}));
    assert_eq!(keys(&c), ["session_expiry", "keep_alive"]);
    let c = cfg(json!({"broker": "h", "version": 5, "subscriptions": sub,
        "clean_start": false, "client_id": "c", "session_expiry": "1h"}));
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    assert_eq!(c.endpoint(), "mqtt5 h:1883 [t@1] persistent session");
    // A clean v5 session may still outlive its connection.
    let c = cfg(json!({"broker": "h", "version": 5, "subscriptions": sub,
        "session_expiry": "10s"}));
    assert!(c.validate().is_empty(), "{:?}", c.validate());
}

#[test]
fn tls_keys_are_validated_and_change_the_default_port() {
    let sub = json!([{"topic": "t"}]);
    let c = cfg(json!({"broker": "h", "subscriptions": sub, "tls": {}}));
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    assert_eq!(c.port(), 8883);
    assert_eq!(c.endpoint(), "mqtts h:8883 [t@0]");
    let c = cfg(
        json!({"broker": "h", "port": 1884, "version": 5, "subscriptions": sub,
        "tls": {"ca_file": "/ca.pem"}}),
    );
    assert_eq!(c.port(), 1884);
    assert_eq!(c.endpoint(), "mqtt5s h:1884 [t@0]");
    let c = cfg(json!({"broker": "h", "subscriptions": sub,
        "tls": {"client_cert_file": "/c.pem"}}));
    assert_eq!(keys(&c), ["tls.client_key_file"]);
    assert!(c.validate()[0].1.contains("tls.client_cert_file"));
    let c = cfg(json!({"broker": "h", "subscriptions": sub,
        "tls": {"ca_file": "", "client_key_file": "/k.pem"}}));
    assert_eq!(keys(&c), ["tls.ca_file", "tls.client_cert_file"]);
    let e = serde_json::from_value::<MqttConfig>(
        json!({"broker": "h", "subscriptions": sub, "tls": {"ca": "/x"}}),
    )
    .expect_err("unknown tls key");
    assert!(e.to_string().contains("ca"), "{e}");
}

#[test]
fn unusable_tls_files_are_errors_naming_key_and_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").expect("write");
    let missing = dir.path().join("missing.pem");
    let with = |tls: Value| {
        cfg(json!({"broker": "h", "subscriptions": [{"topic": "t"}], "tls": tls}))
            .transport()
            .err()
            .expect("an error")
    };
    let e = with(json!({"ca_file": missing}));
    assert!(e.starts_with("tls.ca_file"), "{e}");
    assert!(e.contains(&missing.display().to_string()), "{e}");
    assert!(e.contains("cannot read"), "{e}");
    let e = with(json!({"ca_file": not_pem}));
    assert!(e.starts_with("tls.ca_file"), "{e}");
    assert!(e.contains("no PEM certificate"), "{e}");
    // The CA is read first; a readable one is needed to reach the client files.
    let e = with(json!({"ca_file": missing, "client_cert_file": not_pem,
        "client_key_file": not_pem}));
    assert!(e.starts_with("tls.ca_file"), "{e}");
    let plain = cfg(json!({"broker": "h", "subscriptions": [{"topic": "t"}]}));
    assert!(matches!(plain.transport(), Ok(Transport::Tcp)));
}

#[test]
fn options_carry_session_credentials_and_manual_acks() {
    let c = cfg(json!({"broker": "h", "port": 1884, "client_id": "fixed",
        "clean_session": false, "keep_alive": "10s", "username": "u", "password": "p",
        "subscriptions": [{"topic": "t", "qos": 1}]}));
    let o = c.options("t");
    assert_eq!(o.client_id(), "fixed");
    assert!(!o.clean_session());
    assert!(o.manual_acks());
    assert_eq!(o.keep_alive(), Duration::from_secs(10));
    assert_eq!(o.credentials(), Some(("u".into(), "p".into())));
    assert_eq!(o.broker_address(), ("h".into(), 1884));
    let anon = cfg(json!({"broker": "h", "subscriptions": [{"topic": "t"}]}));
    assert!(anon
        .options("my trigger")
        .client_id()
        .starts_with("millgate-my_trigger-"));
}

#[test]
fn v5_options_carry_clean_start_and_session_expiry() {
    let c = cfg(json!({"broker": "h", "version": 5, "client_id": "fixed",
        "clean_start": false, "session_expiry": "1h", "keep_alive": "10s",
        "username": "u", "password": "p", "subscriptions": [{"topic": "t", "qos": 1}]}));
    let o = c.options_v5("t");
    assert_eq!(o.client_id(), "fixed");
    assert!(!o.clean_start());
    assert!(o.manual_acks());
    assert_eq!(o.keep_alive(), Duration::from_secs(10));
    assert_eq!(o.credentials(), Some(("u".into(), "p".into())));
    assert_eq!(o.broker_address(), ("h".into(), 1883));
    let props = o.connect_properties().expect("connect properties");
    assert_eq!(props.session_expiry_interval, Some(3600));
    assert_eq!(props.topic_alias_max, Some(TOPIC_ALIAS_MAX));
    let clean = cfg(json!({"broker": "h", "version": 5, "subscriptions": [{"topic": "t"}]}));
    let o = clean.options_v5("t");
    assert!(o.clean_start());
    assert_eq!(
        o.connect_properties()
            .expect("props")
            .session_expiry_interval,
        None
    );
}

#[test]
fn events_carry_the_message_fields() {
    let mut p = rumqttc::Publish::new("a/b", QoS::AtLeastOnce, br#"{"n": 1}"#.to_vec());
    p.pkid = 7;
    p.retain = true;
    let e = mqtt_event("t", &p);
    assert_eq!(e["payload"], "eyJuIjogMX0=");
    assert_eq!(e["data"], json!({"n": 1}));
    assert_eq!(e["topic"], "a/b");
    assert_eq!(e["qos"], 1);
    assert_eq!(e["pkid"], 7);
    assert_eq!(e["retain"], true);
    assert_eq!(e["dup"], false);
    assert!(e.get("properties").is_none());
    let p = rumqttc::Publish::new("a", QoS::AtMostOnce, vec![0xff]);
    assert!(mqtt_event("t", &p).get("data").is_none());
}

fn v5_client() -> v5::AsyncClient {
    v5::AsyncClient::new(v5::MqttOptions::new("c", "h", 1883), 10).0
}

#[tokio::test]
async fn v5_events_carry_properties_and_the_ack_keeps_only_what_it_needs() {
    let props = v5p::PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        topic_alias: Some(3),
        response_topic: Some("replies/1".into()),
        correlation_data: Some(Bytes::from_static(b"\x00corr")),
        user_properties: vec![("k".into(), "v1".into()), ("k".into(), "v2".into())],
        subscription_identifiers: vec![2],
        content_type: Some("application/json".into()),
    };
    let mut p = v5p::Publish::new(
        "a/b",
        v5::mqttbytes::QoS::ExactlyOnce,
        br#"{"n": 1}"#.to_vec(),
        Some(props),
    );
    p.pkid = 9;
    p.dup = true;
    let m = Message::v5("t", &v5_client(), p).expect("message");
    assert_eq!(m.topic, "a/b");
    assert_eq!(m.qos, 2);
    let e = &m.event;
    assert_eq!(e["kind"], "mqtt");
    assert_eq!(e["topic"], "a/b");
    assert_eq!(e["data"], json!({"n": 1}));
    assert_eq!(e["qos"], 2);
    assert_eq!(e["pkid"], 9);
    assert_eq!(e["dup"], true);
    assert_eq!(
        e["properties"],
        json!({
            "payload_format_indicator": 1,
            "message_expiry_interval": 60,
            "response_topic": "replies/1",
            "correlation_data": "AGNvcnI=",
            "user_properties": [["k", "v1"], ["k", "v2"]],
            "subscription_identifiers": [2],
            "content_type": "application/json",
        })
    );
    let Ack::V5(_, kept) = &m.ack else {
        panic!("a v5 ack")
    };
    assert_eq!((kept.pkid, kept.qos as u8), (9, 2));
    assert!(kept.payload.is_empty() && kept.properties.is_none());

    let bare = v5p::Publish::new("x", v5::mqttbytes::QoS::AtMostOnce, vec![0xff], None);
    let m = Message::v5("t", &v5_client(), bare).expect("message");
    assert_eq!(
        m.event["properties"],
        json!({"user_properties": [], "subscription_identifiers": []})
    );
    assert!(m.event.get("data").is_none());
}

#[tokio::test]
async fn a_v5_message_whose_alias_was_not_resolved_is_refused() {
    // rumqttc replaces an alias it knows by its topic; an empty topic is an alias it
    // does not know, which must not become a job with no topic.
    let props = v5p::PublishProperties {
        topic_alias: Some(4),
        ..Default::default()
    };
    let p = v5p::Publish::new(
        "",
        v5::mqttbytes::QoS::AtLeastOnce,
        b"x".to_vec(),
        Some(props),
    );
    let e = Message::v5("t", &v5_client(), p).err().expect("refused");
    assert!(e.contains("unknown topic alias 4"), "{e}");
}

#[test]
fn refusals_name_the_reason_code() {
    let e = refused_v3("h:1", ConnectReturnCode::NotAuthorized);
    assert_eq!(
        e,
        "MQTT broker h:1 refused the connection: return code 5 (NotAuthorized)"
    );
    let e = refused_v5("h:1", v5p::ConnectReturnCode::BadUserNamePassword);
    assert!(e.ends_with("reason code 0x86 (BadUserNamePassword)"), "{e}");
    let e = v5_error(
        "h:1",
        Some("secret/#"),
        v5::ConnectionError::MqttState(v5::StateError::SubFail {
            reason: v5p::SubscribeReasonCode::NotAuthorized,
        }),
    );
    assert_eq!(
        e,
        "MQTT broker h:1 refused the subscription to `secret/#`: reason code 0x87 \
         (NotAuthorized)"
    );
    let e = v5_error(
        "h:1",
        None,
        v5::ConnectionError::MqttState(v5::StateError::ServerDisconnect {
            reason_code: v5p::DisconnectReasonCode::SessionTakenOver,
            reason_string: None,
        }),
    );
    assert!(e.contains("0x8e (SessionTakenOver)"), "{e}");
}

#[test]
fn an_mqtt_trigger_loads_through_the_common_config_path() {
    use crate::triggers::{TriggerConfig, TriggerSpec};
    let Value::Object(map) = json!({
        "name": "sensors", "kind": "mqtt", "runnable": "r", "order_by": ".topic",
        "broker": "127.0.0.1", "subscriptions": [{"topic": "s/#", "qos": 1}]
    }) else {
        unreachable!("object literal")
    };
    let t = TriggerConfig::from_map(map).expect("loads");
    assert!(matches!(t.spec, TriggerSpec::Mqtt(_)));
    assert!(t.spec.kind().push().is_none());
    assert_eq!(t.endpoint(), "mqtt 127.0.0.1:1883 [s/#@1]");
    let back = TriggerConfig::from_map(t.to_map()).expect("round trip");
    assert_eq!(back, t);
    let Value::Object(map) = json!({
        "name": "v5", "kind": "mqtt", "runnable": "r", "version": 5,
        "broker": "h", "client_id": "c", "clean_start": false, "session_expiry": "1day",
        "tls": {"ca_file": "/ca.pem", "client_cert_file": "/c.pem", "client_key_file": "/k.pem"},
        "subscriptions": [{"topic": "s/#", "qos": 2}]
    }) else {
        unreachable!("object literal")
    };
    let t = TriggerConfig::from_map(map).expect("loads");
    let back = TriggerConfig::from_map(t.to_map()).expect("round trip");
    assert_eq!(back, t);
}
