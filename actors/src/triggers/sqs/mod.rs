//! AWS SQS trigger (aws-sdk-sqs): one actor per trigger in the connector shell
//! (`triggers/source.rs`), long-polling its queue. When the queue cannot be reached or read
//! the actor fails and the trigger supervisor restarts it with backoff (`backing_off`, never
//! disabled); several millgate instances share one queue natively.
//!
//! Delivery (docs/architecture.md, "Delivery"):
//! - `delete = "after_run"` (default): a message is deleted (DeleteMessageBatch, batched with
//!   others) once every job it made has a durable outcome; while they run, its visibility is
//!   renewed (ChangeMessageVisibilityBatch) every half `visibility_timeout`, so a long job's
//!   message does not reappear. The queue is the log: jobs are written without waiting for the
//!   disk, and a message whose job ends without a durable outcome is handed back at once
//!   (visibility 0). A dead-lettered job's message is deleted once the dead letter is durable,
//!   or with `on_dead_letter = "keep"` left for the queue's redrive policy.
//! - `delete = "on_accept"`: deleted once its jobs are durably queued.
//! - Receives ask for at most the trigger's free `max_in_flight` slots (and `batch`), and
//!   stop while none is free: the queue keeps what millgate cannot run yet.
//! - The event id is trigger + queue + MessageId, so a message received again (after a crash,
//!   or from an expired visibility timeout) is deduplicated.
//!
//! Event (`kind = "sqs"`): `queue_url`, `message_id`, `body` (text), `data` (the body parsed,
//! when it is JSON; else null), `attributes` (SQS's system attributes: `SentTimestamp`,
//! `ApproximateReceiveCount`, `MessageGroupId`, ...), `message_attributes` (`{name:
//! {data_type, string_value | binary_value (base64)}}`), `receive_count`.
//!
//! Files: `config.rs` (keys, the client), `event.rs` (event shape and id), `batch.rs` (batched
//! deletes and visibility changes), `queue.rs` (the source: receive and acknowledgement).

mod batch;
mod config;
mod event;
mod queue;

/// The client this trigger speaks, for tests and tools that send to it.
pub use aws_sdk_sqs;

use serde_json::{json, Value};

pub use self::config::{DeleteWhen, OnDeadLetter, SqsAuth, SqsConfig};
use self::queue::SqsSource;
use crate::preprocess::DefaultArgs;
use crate::triggers::http::RouteTable;
use crate::triggers::kind::{SpawnFuture, TriggerKind};
use crate::triggers::source;
use crate::triggers::SourceArgs;

/// `order_by = "group"`, and a FIFO queue's default: one MessageGroupId's jobs in order.
const BY_GROUP: &str = ".attributes.MessageGroupId";

impl TriggerKind for SqsConfig {
    fn validate(&self, _trigger: &str, _routes: &mut RouteTable) -> Vec<(String, String)> {
        SqsConfig::validate(self)
    }

    fn endpoint(&self, _trigger: &str) -> String {
        SqsConfig::endpoint(self)
    }

    /// The queue keeps a message until it is deleted, which `after_run` does only after the
    /// outcome.
    fn redelivers(&self) -> bool {
        self.delete == DeleteWhen::AfterRun
    }

    fn order_by_expr(&self, configured: Option<&str>) -> Option<String> {
        match configured {
            Some("group") => Some(BY_GROUP.into()),
            None if self.fifo() => Some(BY_GROUP.into()),
            other => other.map(str::to_string),
        }
    }

    /// Windmill hands an SQS message to the script as `msg` (the body) with its ids and
    /// attributes.
    fn default_args(&self) -> DefaultArgs {
        |event| {
            let field = |k: &str| event.get(k).cloned().unwrap_or(Value::Null);
            json!({
                "msg": field("body"),
                "queue_url": field("queue_url"),
                "message_id": field("message_id"),
                "attributes": field("attributes"),
                "message_attributes": field("message_attributes"),
            })
        }
    }

    fn spawn_source(&self, args: SourceArgs, supervisor: ractor::ActorCell) -> Option<SpawnFuture> {
        Some(source::spawn(
            SqsSource::new(self.clone()),
            args,
            supervisor,
        ))
    }
}
