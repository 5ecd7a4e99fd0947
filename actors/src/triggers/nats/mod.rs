//! NATS triggers: a core subscription (optionally in a queue group) or a JetStream durable pull
//! consumer. One actor per trigger owns the connection; when the connection or the consumer is
//! lost the actor fails and the trigger supervisor restarts it with backoff (`backing_off`,
//! never disabled).
//!
//! Delivery:
//! - JetStream: messages are fetched in batches and acknowledged only once the job's outcome is
//!   durable (`AckHandle::on_settle`): `ack` after success, `term` after dead-lettering. The
//!   router retries failed jobs itself (per-trigger `retry`), so a failure is not `nak`ed back
//!   to the server while retries remain: a `nak` would only make the server redeliver a message
//!   whose job is already queued, and dedup would drop it. Instead `in_progress` is sent every
//!   `ack_wait / 2` while the job is unsettled so `ack_wait` does not redeliver it. The event id
//!   is trigger + stream (+ its creation time) + stream sequence, so a redelivery after a crash
//!   is deduplicated.
//! - Core NATS cannot redeliver: a message counts as received once its jobs are durably queued.
//!
//! Event (`kind = "nats"`): `payload` (base64), `data` (parsed, when the payload is UTF-8 JSON),
//! `subject`, `reply` (core only; JetStream's reply subject is its ack subject, so `null`),
//! `headers` (`{name: [values]}`), and for JetStream `stream`, `consumer`, `stream_sequence`,
//! `consumer_sequence`, `delivered` (delivery count, 1 = first), `published` (RFC 3339),
//! `pending`.
//!
//! Both run in the connector shell (`triggers/source.rs`). Files: `config.rs` (keys, connect
//! options), `event.rs` (event shapes), `subscription.rs` (connection and core subscriptions),
//! `jetstream.rs` (durable pull consumer and its acks, sent by `triggers/settle.rs`).

mod config;
mod event;
mod jetstream;
mod subscription;
#[cfg(test)]
mod tests;

/// The client this trigger speaks, for tests and tools that publish to it.
pub use async_nats;

use serde_json::json;

pub use self::config::{DeliverPolicy, JetStreamConfig, NatsAuth, NatsConfig, NatsTls};
use self::jetstream::JetStreamConsumer;
use self::subscription::CoreSubscription;
use crate::preprocess::DefaultArgs;
use crate::triggers::http::RouteTable;
use crate::triggers::kind::{SpawnFuture, TriggerKind};
use crate::triggers::source;
use crate::triggers::SourceArgs;

impl TriggerKind for NatsConfig {
    fn validate(&self, _trigger: &str, _routes: &mut RouteTable) -> Vec<(String, String)> {
        NatsConfig::validate(self)
    }

    fn endpoint(&self, trigger: &str) -> String {
        NatsConfig::endpoint(self, trigger)
    }

    /// A JetStream consumer redelivers what was not acked; core NATS forgets at once.
    fn redelivers(&self) -> bool {
        self.jetstream.is_some()
    }

    /// `"subject"`: one subject's messages one at a time.
    fn order_by_expr(&self, configured: Option<&str>) -> Option<String> {
        match configured {
            Some("subject") => Some(".subject".into()),
            other => other.map(str::to_string),
        }
    }

    /// Windmill hands a broker message to the script as its base64 `payload`.
    fn default_args(&self) -> DefaultArgs {
        |event| json!({ "payload": event.get("payload").cloned().unwrap_or_default() })
    }

    fn spawn_source(&self, args: SourceArgs, supervisor: ractor::ActorCell) -> Option<SpawnFuture> {
        Some(match &self.jetstream {
            Some(js) => source::spawn(
                JetStreamConsumer::new(self.clone(), js.clone()),
                args,
                supervisor,
            ),
            None => source::spawn(CoreSubscription::new(self.clone()), args, supervisor),
        })
    }
}
