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
    Running,
    Succeeded,
    Retrying,
    DeadLettered,
}

impl JobStatus {
    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::DeadLettered)
    }
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
    pub event: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_key: Option<String>,
    pub attempts: u32,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
}

impl JobRecord {
    pub fn new(
        trigger: &str,
        kind: &str,
        runnable: &str,
        event_id: &str,
        args: Value,
        event: Value,
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
            event,
            order_key,
            attempts: 0,
            result: None,
            error: None,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
        }
    }
}

/// How a job ended, as told to whoever waits for it.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Succeeded(Value),
    DeadLettered(String),
}
