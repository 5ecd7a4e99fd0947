//! Jobs: what the router runs, and the record the store keeps of each.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Time-ordered (UUID v7), so store keys sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub uuid::Uuid);

impl JobId {
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    pub fn from_slice(b: &[u8]) -> Option<Self> {
        uuid::Uuid::from_slice(b).ok().map(Self)
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(Self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    /// Accepted while its trigger was suspended: stored, not run until resumed.
    Parked,
    Running,
    Succeeded,
    Retrying,
    DeadLettered,
    /// A parked job dropped by an operator.
    Cancelled,
}

impl JobStatus {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::DeadLettered | JobStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Parked => "parked",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Retrying => "retrying",
            JobStatus::DeadLettered => "dead_lettered",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

impl FromStr for JobStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(Value::String(s.to_string())).map_err(|_| {
            format!("`{s}` is not a job status (queued, parked, running, succeeded, retrying, dead_lettered, cancelled)")
        })
    }
}

/// One step of a job's journey through the actors, for the job's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    #[serde(serialize_with = "super::rfc3339::serialize")]
    pub at: DateTime<Utc>,
    /// `queued`, `parked`, `released`, `started`, `failed`, `retry_scheduled`, `succeeded`,
    /// `dead_lettered`, `cancelled`.
    pub step: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

/// Everything known about one job; stored as JSON in sled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: JobId,
    pub trigger: String,
    pub kind: String,
    pub runnable: String,
    pub event_id: String,
    pub status: JobStatus,
    pub args: Value,
    /// The event the job came from. Stored once per event in the store's `events` tree, not in
    /// the record (a fan-out of many jobs shares it); filled in by `Store::get_job`. Records of
    /// earlier versions carry it inline, which still reads.
    #[serde(default, skip_serializing)]
    pub event: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_key: Option<String>,
    pub attempts: u32,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(serialize_with = "super::rfc3339::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(default, serialize_with = "super::rfc3339::serialize_option")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, serialize_with = "super::rfc3339::serialize_option")]
    pub finished_at: Option<DateTime<Utc>>,
    /// The job this one replays (`POST /api/jobs/{id}/replay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<JobId>,
    #[serde(default)]
    pub timeline: Vec<TimelineEntry>,
}

impl JobRecord {
    pub fn new(
        trigger: &str,
        kind: &str,
        runnable: &str,
        event_id: &str,
        args: Value,
        order_key: Option<String>,
    ) -> Self {
        Self {
            job_id: JobId::new(),
            trigger: trigger.into(),
            kind: kind.into(),
            runnable: runnable.into(),
            event_id: event_id.into(),
            status: JobStatus::Queued,
            args,
            event: Value::Null,
            order_key,
            attempts: 0,
            result: None,
            error: None,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            replay_of: None,
            timeline: vec![TimelineEntry::now("queued")],
        }
    }

    /// Marks the job finished with `status`: its result or error, the time, the timeline step.
    pub fn finish(&mut self, status: JobStatus, result: Option<Value>, error: Option<String>) {
        self.status = status;
        self.result = result;
        self.finished_at = Some(Utc::now());
        let mut step = TimelineEntry::now(status.as_str()).attempt(self.attempts);
        if let Some(e) = &error {
            step = step.error(e);
        }
        self.error = error;
        self.step(step);
    }

    /// Appends a step to the timeline.
    pub fn step(&mut self, entry: TimelineEntry) {
        // Bounded: a job retried forever must not grow its record without end.
        const MAX_STEPS: usize = 200;
        if self.timeline.len() >= MAX_STEPS {
            self.timeline.remove(1);
        }
        self.timeline.push(entry);
    }

    /// Wall time of the last run, when it has finished.
    pub fn duration_ms(&self) -> Option<i64> {
        Some((self.finished_at? - self.started_at?).num_milliseconds())
    }
}

impl TimelineEntry {
    pub fn now(step: &str) -> Self {
        Self {
            at: Utc::now(),
            step: step.into(),
            attempt: None,
            error: None,
            delay_ms: None,
        }
    }

    pub fn attempt(mut self, n: u32) -> Self {
        self.attempt = Some(n);
        self
    }

    pub fn error(mut self, e: &str) -> Self {
        self.error = Some(e.into());
        self
    }

    pub fn delay(mut self, d: std::time::Duration) -> Self {
        self.delay_ms = Some(d.as_millis().min(u64::MAX as u128) as u64);
        self
    }
}

/// How a job ended, as told to whoever waits for it.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Succeeded(Value),
    DeadLettered(String),
}
