//! Kafka trigger (rdkafka over librdkafka): one actor per trigger, in the connector shell
//! (`triggers/source.rs`, via `kafka/source.rs`), with a consumer thread that owns the group
//! membership. When every broker is unreachable, a subscribed topic
//! does not exist or the client hits a fatal error, the actor fails and the trigger supervisor
//! restarts it with backoff (`backing_off`, never disabled).
//!
//! Delivery (docs/architecture.md, "Delivery"):
//! - Auto-commit is off. Each taken offset stays pending until every job of its message has a
//!   durable outcome (success or dead letter); the committed position of a partition is the
//!   first pending offset, so a slow message never lets a later offset be committed past it.
//!   Commits go to the broker every `commit_interval` and, with the same positions, to sled.
//! - On assignment the start position of a partition is the later of the broker's committed
//!   offset and the position saved in sled (a commit the broker lost, say in a crash between
//!   the two, is not replayed from the broker's older offset).
//! - On revocation the trigger waits up to `rebalance_drain_timeout` for the revoked partitions'
//!   jobs, commits what finished and abandons the rest uncommitted (the jobs still run here;
//!   the new owner gets those messages again).
//! - At `max_in_flight` the assigned partitions are paused (polling goes on, for the group's
//!   heartbeats and rebalances) and resumed once jobs finish; nothing is buffered.
//! - Event ids are deterministic: trigger + reset epoch + topic + partition + offset + message
//!   timestamp. A message read again after a crash is deduplicated; a reset (`POST
//!   /api/triggers/{name}/reset`) starts a new epoch so the replayed messages run again; the
//!   timestamp keeps a re-created topic's offsets from colliding with the old ones.
//!
//! Event (`kind = "kafka"`): `payload` (base64), `data` (parsed, when the payload is UTF-8
//! JSON), `key` (UTF-8 text, or base64 with `key_encoding = "base64"`; null without a key),
//! `topic`, `partition`, `offset`, `timestamp` (ms since the epoch, or null),
//! `timestamp_type` (`create_time`/`log_append_time`), `headers` (`{name: [values]}`, values as
//! text, or base64 when not UTF-8), `group_id`.
//!
//! Files: `config.rs` (keys, client properties), `event.rs` (event shape and ids), `offsets.rs`
//! (saved positions, resets, what may be committed), `context.rs` (librdkafka callbacks:
//! assignment, revocation), `consumer.rs` (the consumer thread).

mod config;
mod consumer;
mod context;
mod event;
mod offsets;
mod source;
#[cfg(test)]
mod tests;

use std::time::Duration;

/// The client this trigger speaks, for tests and tools that produce to it.
pub use rdkafka;

use serde_json::{json, Value};

pub use self::config::{
    order_by_expr, order_by_key, AutoOffsetReset, KafkaConfig, KafkaSecurity, SaslMechanism,
    SecurityProtocol, PROGRAM_PROPERTIES,
};
pub use self::offsets::{request_reset, KafkaState, ResetPoint, ResetRequest, ResetTo};
use self::source::KafkaSource;
use crate::preprocess::DefaultArgs;
use crate::preprocess::KeyExpr;
use crate::store::Store;
use crate::triggers::http::RouteTable;
use crate::triggers::kind::{Reset, ResetOutcome, SavedState, SpawnFuture, TriggerKind};
use crate::triggers::SourceArgs;

impl TriggerKind for KafkaConfig {
    fn validate(&self, _trigger: &str, _routes: &mut RouteTable) -> Vec<(String, String)> {
        KafkaConfig::validate(self)
    }

    fn endpoint(&self, _trigger: &str) -> String {
        KafkaConfig::endpoint(self)
    }

    /// The group's committed offsets move only past settled jobs.
    fn redelivers(&self) -> bool {
        true
    }

    fn order_by_expr(&self, configured: Option<&str>) -> Option<String> {
        order_by_expr(configured)
    }

    fn order_by(&self, configured: Option<&str>) -> Option<Result<KeyExpr, String>> {
        order_by_key(configured)
    }

    /// Windmill hands a broker message to the script as its base64 `payload`.
    fn default_args(&self) -> DefaultArgs {
        |event| json!({ "payload": event.get("payload").cloned().unwrap_or_default() })
    }

    fn spawn_source(&self, args: SourceArgs, supervisor: ractor::ActorCell) -> Option<SpawnFuture> {
        Some(crate::triggers::source::spawn(
            KafkaSource::new(),
            args,
            supervisor,
        ))
    }

    fn program_keys(&self) -> Vec<String> {
        self.program_properties()
            .into_iter()
            .map(|p| format!("properties.{p}"))
            .collect()
    }

    /// The group's saved positions; moved by resets.
    fn saved_state(&self) -> SavedState {
        SavedState::ReadOnly
    }

    fn reset(&self) -> Option<&dyn Reset> {
        Some(&GroupReset)
    }
}

/// Resets of a Kafka trigger's consumer group (`POST /api/triggers/{name}/reset`).
struct GroupReset;

impl Reset for GroupReset {
    fn reset<'a>(
        &'a self,
        store: &'a Store,
        trigger: &'a str,
        request: Value,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<ResetOutcome, String>> + Send + 'a>,
    > {
        Box::pin(async move {
            let request: ResetRequest = serde_json::from_value(request).map_err(|err| {
                format!("body must be {{\"to\": \"earliest\" | \"latest\" | {{\"offset\": n}} | {{\"timestamp\": ms}}}}: {err}")
            })?;
            let id = request_reset(store, trigger, request.to).await?;
            // The trigger's consumer thread applies it at its next poll: wait for its record.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while tokio::time::Instant::now() < deadline {
                let saved = KafkaState::load(store, trigger)?;
                if let Some(last) = saved.last_reset.filter(|l| l["id"] == json!(id)) {
                    return Ok(ResetOutcome::Applied(last));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(ResetOutcome::Pending(json!({
                "id": id,
                "status": "pending",
                "message": "the trigger has no assigned partitions yet; the reset applies when it gets them",
            })))
        })
    }
}
