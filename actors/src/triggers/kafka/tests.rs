use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::config::{order_by_expr, without_value, AutoOffsetReset, KafkaConfig};
use super::offsets::{
    PartitionKey, PartitionTrack, ResetPoint, ResetRequest, ResetTo, Settled, Tracking,
};

fn cfg(v: Value) -> KafkaConfig {
    serde_json::from_value(v).expect("config")
}

#[test]
fn validates_topics_security_and_properties() {
    let c = cfg(json!({"brokers": ["127.0.0.1:9092"], "topics": ["orders", "^events\\..*"]}));
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    assert_eq!(c.auto_offset_reset, AutoOffsetReset::Latest);
    assert_eq!(c.group_id("t"), "millgate-t");
    assert_eq!(c.endpoint(), "kafka 127.0.0.1:9092 [orders,^events\\..*]");
    let c = cfg(json!({"brokers": [], "topics": ["bad topic"], "batch": 0,
        "security": {"protocol": "SASL_SSL", "cert_file": "c.pem"},
        "properties": {"group.id": "x", "fetch.max.bytes": "lots", "no.such.thing": "1"}}));
    let issues = c.validate();
    let keys: Vec<&str> = issues.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "brokers",
            "topics",
            "batch",
            "security.sasl_mechanism",
            "security.username",
            "security.cert_file",
            "properties",
            "properties"
        ],
        "{issues:?}"
    );
    assert!(issues[6].1.contains("group_id"), "{issues:?}");
    // librdkafka's own check names the property it refused.
    assert!(
        issues[7].1.contains("fetch.max.bytes") || issues[7].1.contains("no.such.thing"),
        "{issues:?}"
    );
    let c = cfg(json!({"brokers": ["b:1"], "topics": ["t"],
        "security": {"protocol": "PLAINTEXT", "username": "u", "ca_file": "x"}}));
    let keys: Vec<_> = c.validate().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["security.protocol", "security.protocol"]);
    let e = serde_json::from_value::<KafkaConfig>(
        json!({"brokers": ["b:1"], "topics": ["t"], "security": {"protocol": "TLS"}}),
    )
    .expect_err("unknown protocol");
    assert!(e.to_string().contains("TLS"), "{e}");
}

#[test]
fn refused_properties_are_named_without_their_values() {
    let c = cfg(json!({"brokers": ["b:1"], "topics": ["t"],
        "properties": {"sasl.oauthbearer.client.secret": "hunter2-secret"}}));
    let issues = c.validate();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert!(
        issues[0].1.contains("sasl.oauthbearer.client.secret"),
        "{issues:?}"
    );
    assert!(!issues[0].1.contains("hunter2"), "{issues:?}");
    assert_eq!(
        without_value(r#"Invalid value "hunter2" for "x.password""#, "hunter2"),
        r#"Invalid value (value not shown) for "x.password""#
    );
    let c = cfg(json!({"brokers": ["b:1"], "topics": ["t"],
        "properties": {"Plugin.Library.Paths": "/x.so", "fetch.max.bytes": "10"}}));
    assert_eq!(c.program_properties(), ["Plugin.Library.Paths"]);
}

#[test]
fn client_config_sets_what_millgate_owns() {
    let c = cfg(
        json!({"brokers": ["a:1", "b:2"], "topics": ["t"], "group_id": "g",
        "auto_offset_reset": "earliest",
        "security": {"protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
            "username": "u", "password": "p", "ca_file": "/ca.pem"},
        "properties": {"fetch.min.bytes": "10"}}),
    );
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    let cc = c.client_config("trig");
    let get = |k: &str| cc.get(k).map(str::to_string);
    assert_eq!(get("bootstrap.servers").as_deref(), Some("a:1,b:2"));
    assert_eq!(get("group.id").as_deref(), Some("g"));
    assert_eq!(get("enable.auto.commit").as_deref(), Some("false"));
    assert_eq!(get("enable.auto.offset.store").as_deref(), Some("false"));
    assert_eq!(get("auto.offset.reset").as_deref(), Some("earliest"));
    assert_eq!(get("security.protocol").as_deref(), Some("sasl_ssl"));
    assert_eq!(get("sasl.mechanism").as_deref(), Some("SCRAM-SHA-512"));
    assert_eq!(get("sasl.username").as_deref(), Some("u"));
    assert_eq!(get("ssl.ca.location").as_deref(), Some("/ca.pem"));
    assert_eq!(get("fetch.min.bytes").as_deref(), Some("10"));
    assert_eq!(get("client.id").as_deref(), Some("millgate-trig"));
}

#[test]
fn the_committable_position_never_passes_an_unsettled_offset() {
    let mut t = PartitionTrack::new(1, None);
    assert_eq!(t.committable(), None);
    for o in 10..15 {
        t.take(o);
        t.accepted(o, Some(1));
    }
    // 11, 13 and 14 finish; 10 is slow: nothing may be committed past 10.
    for o in [11, 13, 14] {
        t.settle_one(o);
    }
    assert_eq!(t.committable(), Some(10));
    t.settle_one(10);
    assert_eq!(t.committable(), Some(12));
    t.settle_one(12);
    assert_eq!(t.committable(), Some(15));
    // A message with two jobs is pending until both settle.
    t.take(15);
    t.accepted(15, Some(2));
    t.settle_one(15);
    assert_eq!(t.committable(), Some(15));
    t.settle_one(15);
    assert_eq!(t.committable(), Some(16));
}

#[test]
fn settlements_of_an_older_generation_are_ignored() {
    let mut tracking = Tracking {
        partitions: HashMap::new(),
        generation: 2,
        newly_assigned: false,
    };
    let key: PartitionKey = (Arc::from("t"), 0);
    let mut p = PartitionTrack::new(2, Some(5));
    p.take(5);
    p.accepted(5, Some(1));
    tracking.partitions.insert(key.clone(), p);
    tracking.apply(Settled {
        generation: 1,
        topic: key.0.clone(),
        partition: 0,
        offset: 5,
    });
    assert!(tracking.to_commit(None).is_empty());
    tracking.apply(Settled {
        generation: 2,
        topic: key.0.clone(),
        partition: 0,
        offset: 5,
    });
    assert_eq!(tracking.to_commit(None), vec![(key, 6)]);
}

#[test]
fn order_by_shorthands() {
    assert_eq!(order_by_expr(None), order_by_expr(Some("partition")));
    assert!(order_by_expr(Some("key")).is_some_and(|e| e.contains(".key")));
    assert_eq!(order_by_expr(Some("none")), None);
    assert_eq!(order_by_expr(Some(".data.id")).as_deref(), Some(".data.id"));
}

#[test]
fn reset_requests_parse() {
    let r: ResetRequest = serde_json::from_value(json!({"to": "earliest"})).expect("named");
    assert_eq!(r.to, ResetTo::Named(ResetPoint::Earliest));
    let r: ResetRequest =
        serde_json::from_value(json!({"to": {"offset": 4, "partition": 1}})).expect("offset");
    assert_eq!(
        r.to,
        ResetTo::Offset {
            offset: 4,
            topic: None,
            partition: Some(1)
        }
    );
    let r: ResetRequest =
        serde_json::from_value(json!({"to": {"timestamp": 1700000000000i64}})).expect("time");
    assert!(matches!(r.to, ResetTo::Timestamp { .. }));
    assert!(serde_json::from_value::<ResetRequest>(json!({"to": "middle"})).is_err());
}

#[test]
fn a_kafka_trigger_loads_through_the_common_config_path() {
    use crate::triggers::{TriggerConfig, TriggerSpec};
    let Value::Object(map) = json!({
        "name": "orders", "kind": "kafka", "runnable": "r",
        "brokers": ["127.0.0.1:9092"], "topics": ["orders"]
    }) else {
        unreachable!("object literal")
    };
    let t = TriggerConfig::from_map(map).expect("loads");
    assert!(matches!(t.spec, TriggerSpec::Kafka(_)));
    assert!(t.spec.kind().push().is_none());
    assert_eq!(
        t.order_by_expr().as_deref(),
        Some(r#""\(.topic)/\(.partition)""#)
    );
    let back = TriggerConfig::from_map(t.to_map()).expect("round trip");
    assert_eq!(back, t);
}

#[test]
fn jobs_settling_before_the_intake_answer_is_recorded_still_count() {
    // The consumer thread applies settlements while the trigger's task records the intake's
    // answer: the order between the two is not fixed.
    let mut t = PartitionTrack::new(1, None);
    t.take(20);
    t.settle_one(20);
    assert_eq!(t.committable(), Some(20), "taken, answer not yet recorded");
    t.accepted(20, Some(1));
    assert_eq!(t.committable(), Some(21));
    // A message with nothing to run moves the position on once answered.
    t.take(21);
    assert_eq!(t.committable(), Some(21));
    t.accepted(21, None);
    assert_eq!(t.committable(), Some(22));
}
