//! MQTT trigger (rumqttc; v3.1.1 or v5, plain TCP or TLS): one actor per trigger owns the
//! connection and its subscriptions. When the connection is lost the actor fails and the
//! trigger supervisor restarts it with backoff (`backing_off`, never disabled); rumqttc's own
//! silent reconnect is not used.
//!
//! Delivery (docs/architecture.md, "Delivery"), the same for both versions:
//! - QoS 1/2: manual acks. The puback (QoS 1) / pubrec (QoS 2) is sent only once the job's
//!   outcome is durable (`AckHandle::on_settle`): after success and after dead-lettering alike
//!   (the source is told either way; MQTT has no negative ack). With a persistent session
//!   (v3: `clean_session = false`; v5: `clean_start = false` and a `session_expiry`; a fixed
//!   `client_id`) a message not acknowledged when millgate dies is redelivered by the broker
//!   after the restart. Acks are written as soon as their jobs settle: a task of its own polls
//!   the connection (`mqtt/pump.rs`), so after a crash only messages whose jobs were still
//!   running, or whose ack was on its way, run again.
//! - QoS 0: the broker never redelivers, so a message counts as received once its jobs are
//!   durably queued.
//!
//! Event ids are unique, not derived from the message: an MQTT packet id only names a message
//! while it is in flight on one connection and is reused right after its ack, so pkid (or
//! topic + pkid) would make distinct messages look like duplicates. A redelivery after a crash
//! therefore becomes a second job (at-least-once), never a lost one.
//!
//! Event (`kind = "mqtt"`): `payload` (base64), `data` (parsed, when the payload is UTF-8
//! JSON), `topic`, `qos`, `retain`, `pkid` (0 for QoS 0), `dup`; v5 adds `properties`
//! (`v5_properties`). v5 topic aliases are resolved to the real topic (rumqttc keeps the
//! connection's alias table); a message whose alias is unknown fails the connection unacked.
//!
//! The two versions differ only in how a connection is driven (`Link`: options, packets,
//! reason codes) and how a message is turned into an event; intake and acknowledgement
//! (`mqtt/pump.rs`, `Ack`) are shared.
//!
//! Files: `config.rs` (keys, connection options), `event.rs` (event shapes, messages and their
//! acks), `link.rs` (the connection, per version), `pump.rs` (intake and acknowledgement).

mod config;
mod event;
mod link;
mod pump;

pub use self::config::{MqttConfig, MqttSubscription, MqttTls};
#[cfg(test)]
mod tests;

/// The client this trigger speaks, for tests and tools that publish to it.
pub use rumqttc;

use serde_json::json;

use self::pump::MqttSource;
use crate::preprocess::DefaultArgs;
use crate::triggers::http::RouteTable;
use crate::triggers::kind::{SpawnFuture, TriggerKind};
use crate::triggers::source;
use crate::triggers::SourceArgs;

impl TriggerKind for MqttConfig {
    fn validate(&self, _trigger: &str, _routes: &mut RouteTable) -> Vec<(String, String)> {
        MqttConfig::validate(self)
    }

    fn endpoint(&self, _trigger: &str) -> String {
        MqttConfig::endpoint(self)
    }

    /// Only a session that outlives the connection gets unacknowledged QoS ≥ 1 messages again
    /// (a clean session's are dropped by the broker when millgate goes away), and only when
    /// every subscription asks for QoS ≥ 1: the trigger's messages share one way in.
    fn redelivers(&self) -> bool {
        !self.clean() && self.subscriptions.iter().all(|s| s.qos >= 1)
    }

    /// `"topic"`: one topic's messages one at a time.
    fn order_by_expr(&self, configured: Option<&str>) -> Option<String> {
        match configured {
            Some("topic") => Some(".topic".into()),
            other => other.map(str::to_string),
        }
    }

    /// Windmill hands a broker message to the script as its base64 `payload`.
    fn default_args(&self) -> DefaultArgs {
        |event| json!({ "payload": event.get("payload").cloned().unwrap_or_default() })
    }

    fn spawn_source(&self, args: SourceArgs, supervisor: ractor::ActorCell) -> Option<SpawnFuture> {
        Some(source::spawn(
            MqttSource::new(self.clone()),
            args,
            supervisor,
        ))
    }
}
