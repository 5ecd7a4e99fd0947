//! The live event stream: what happens to events, jobs and triggers, as it happens (for the
//! dashboard and `GET /api/events`). Publishing never blocks: a slow subscriber lags and is
//! told how much it missed.

use serde::Serialize;
use tokio::sync::broadcast;

use crate::model::job::JobId;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SystemEvent {
    EventReceived {
        trigger: String,
        event_id: String,
    },
    EventFiltered {
        trigger: String,
        event_id: String,
    },
    EventDuplicate {
        trigger: String,
        event_id: String,
        job_ids: Vec<JobId>,
    },
    JobQueued {
        trigger: String,
        job_id: JobId,
        event_id: String,
    },
    JobParked {
        trigger: String,
        job_id: JobId,
    },
    JobStarted {
        trigger: String,
        job_id: JobId,
        attempt: u32,
    },
    JobRetrying {
        trigger: String,
        job_id: JobId,
        attempt: u32,
        error: String,
        delay_ms: u64,
    },
    JobSucceeded {
        trigger: String,
        job_id: JobId,
        attempts: u32,
        duration_ms: i64,
    },
    JobDeadLettered {
        trigger: String,
        job_id: JobId,
        attempts: u32,
        error: String,
    },
    JobCancelled {
        trigger: String,
        job_id: JobId,
    },
    TriggerState {
        trigger: String,
        state: String,
        last_error: Option<String>,
    },
}

impl SystemEvent {
    /// The SSE `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            SystemEvent::EventReceived { .. } => "event_received",
            SystemEvent::EventFiltered { .. } => "event_filtered",
            SystemEvent::EventDuplicate { .. } => "event_duplicate",
            SystemEvent::JobQueued { .. } => "job_queued",
            SystemEvent::JobParked { .. } => "job_parked",
            SystemEvent::JobStarted { .. } => "job_started",
            SystemEvent::JobRetrying { .. } => "job_retrying",
            SystemEvent::JobSucceeded { .. } => "job_succeeded",
            SystemEvent::JobDeadLettered { .. } => "job_dead_lettered",
            SystemEvent::JobCancelled { .. } => "job_cancelled",
            SystemEvent::TriggerState { .. } => "trigger_state",
        }
    }
}

/// Cheap to clone; every clone publishes to the same subscribers.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<SystemEvent>,
}

/// How far a subscriber may fall behind before it starts missing messages.
pub const EVENT_BUFFER: usize = 1024;

impl Default for EventBus {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(EVENT_BUFFER);
        Self { tx }
    }
}

impl EventBus {
    /// Sends the event `event` builds to the subscribers; builds nothing when there are none
    /// (the normal case when nobody watches: the per-job cost of the stream is then one load).
    pub fn publish(&self, event: impl FnOnce() -> SystemEvent) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(event());
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<SystemEvent> {
        self.tx.subscribe()
    }
}
