//! Google Cloud Pub/Sub trigger (gcloud-pubsub, gRPC streaming pull): one actor per trigger in
//! the connector shell (`triggers/source.rs`). When the service cannot be reached or the
//! subscription read, the actor fails and the trigger supervisor restarts it with backoff
//! (`backing_off`, never disabled). Why this crate and not the official one, and what the
//! emulator cannot show: docs/pubsub-plan.md.
//!
//! Delivery (docs/architecture.md, "Delivery"): a message is acked once every job it made
//! has a durable outcome; while they run its ack deadline is renewed every half
//! `ack_deadline` (modifyAckDeadline), so a long job's message is not redelivered. The
//! subscription is the log: jobs are written without waiting for the disk. A message whose
//! job ends without a durable outcome is nacked (redelivered at once); a dead-lettered job's
//! message is acked once the dead letter is durable, or nacked with `on_dead_letter = "nack"`
//! (for the subscription's own dead-letter policy). Flow control: the streaming pull keeps at
//! most `max_outstanding` (default `max_in_flight`) messages unacked.
//!
//! Event (`kind = "pubsub"`): `subscription` (full name), `message_id`, `publish_time`
//! (RFC 3339), `ordering_key` (null without one), `attributes`, `payload` (base64), `data`
//! (the payload parsed, when it is JSON; else null), `delivery_attempt` (null unless the
//! subscription has a dead-letter policy). The event id is subscription + message id +
//! publish time, so a redelivery is deduplicated.
//!
//! Files: `config.rs` (keys, the client), `event.rs`, `stream.rs` (the source), `acks.rs`
//! (acks, nacks and deadline renewals in batches).

mod acks;
mod config;
mod event;
mod oidc;
mod push;
mod stream;

/// The client this trigger speaks, for tests and tools that publish to it.
pub use gcloud_gax;
pub use gcloud_googleapis;
pub use gcloud_pubsub;

use serde_json::json;

pub use self::config::{PubSubConfig, PubSubDeadLetter, EMULATOR_ENV};
pub use self::push::PubSubPushConfig;
use self::stream::PubSubSource;
use crate::preprocess::{DefaultArgs, KeyExpr};
use crate::triggers::http::RouteTable;
use crate::triggers::kind::{SpawnFuture, TriggerKind};
use crate::triggers::SourceArgs;
/// What tests sign push tokens with.
pub use jsonwebtoken;

impl TriggerKind for PubSubConfig {
    fn validate(&self, _trigger: &str, _routes: &mut RouteTable) -> Vec<(String, String)> {
        PubSubConfig::validate(self)
    }

    fn endpoint(&self, _trigger: &str) -> String {
        PubSubConfig::endpoint(self)
    }

    /// Pub/Sub redelivers what was not acked within the deadline.
    fn redelivers(&self) -> bool {
        true
    }

    /// By default one ordering key's jobs run in order; messages without one are not ordered.
    fn order_by(&self, configured: Option<&str>) -> Option<Result<KeyExpr, String>> {
        ordering_key_order(configured)
    }

    fn order_by_expr(&self, configured: Option<&str>) -> Option<String> {
        ordering_key_order_expr(configured)
    }

    fn default_args(&self) -> DefaultArgs {
        |event| windmill_args(event, "pull")
    }

    fn spawn_source(&self, args: SourceArgs, supervisor: ractor::ActorCell) -> Option<SpawnFuture> {
        Some(crate::triggers::source::spawn(
            PubSubSource::new(self.clone()),
            args,
            supervisor,
        ))
    }
}

/// `order_by` of both deliveries: by default (or `"ordering_key"`) one ordering key's jobs run
/// in order and messages without one are not ordered; `"none"`: no order.
fn ordering_key_order(configured: Option<&str>) -> Option<Result<KeyExpr, String>> {
    match configured {
        None | Some("ordering_key") => Some((|| {
            Ok(KeyExpr::FirstOf(vec![
                KeyExpr::compile(".ordering_key")?,
                KeyExpr::compile(".message_id")?,
            ]))
        })()),
        Some("none") => None,
        Some(other) => Some(KeyExpr::compile(other)),
    }
}

fn ordering_key_order_expr(configured: Option<&str>) -> Option<String> {
    match configured {
        None | Some("ordering_key") => Some(".ordering_key // .message_id".into()),
        Some("none") => None,
        other => other.map(str::to_string),
    }
}

/// Windmill hands a Pub/Sub message to the script as its base64 `payload` with its ids.
fn windmill_args(event: &serde_json::Value, delivery_type: &str) -> serde_json::Value {
    let field = |k: &str| event.get(k).cloned().unwrap_or_default();
    json!({
        "payload": field("payload"),
        "message_id": field("message_id"),
        "subscription": field("subscription"),
        "ordering_key": field("ordering_key"),
        "attributes": field("attributes"),
        "publish_time": field("publish_time"),
        "delivery_type": delivery_type,
    })
}
