//! An event: one message from the outside world, before it becomes jobs.

use serde_json::Value;

/// One received message. `payload` is the JSON object the preprocessor sees:
/// `{"kind": ..., "trigger": ..., <the kind's fields>}`.
#[derive(Debug, Clone)]
pub struct Event {
    /// Deterministic where the source allows it (idempotency key, partition + offset, ...),
    /// otherwise unique.
    pub id: String,
    pub payload: Value,
    /// Whether `id` is deterministic, i.e. worth remembering in the dedup tree.
    pub dedup: bool,
    /// Why this event cannot become jobs, found while it was built (a payload nested past
    /// `[server] max_json_depth`): the intake refuses it or dead-letters it with this reason.
    pub defect: Option<String>,
}

impl Event {
    /// An event with a deterministic id: a redelivery within the dedup window is dropped.
    pub fn deterministic(id: String, payload: Value) -> Self {
        Self {
            id,
            payload,
            dedup: true,
            defect: None,
        }
    }

    /// An event that cannot be redelivered under the same id (a bare HTTP request).
    pub fn unique(prefix: &str, payload: Value) -> Self {
        Self {
            id: format!("{prefix}:{}", uuid::Uuid::now_v7()),
            payload,
            dedup: false,
            defect: None,
        }
    }

    /// Marks the event as one that cannot become jobs, with the reason.
    pub fn with_defect(mut self, defect: Option<String>) -> Self {
        self.defect = defect;
        self
    }
}
