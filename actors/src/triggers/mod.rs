//! Trigger kinds: one file per kind with its config beside it, plus what they share.
//!
//! - [`TriggerConfig`]: one `[[triggers]]` entry (common keys + the kind's own keys, flat).
//! - [`TriggerRuntime`]: what survives actor restarts (status, counters, in-flight count).
//! - [`Intake`]: the path every trigger uses to turn an event into durably queued jobs.
//! - [`push`]: the actor behind kinds that are pushed to us over HTTP (webhook, http).

pub mod http;
pub mod http_auth;
pub mod push;
pub mod webhook;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{PreprocessorConfig, RetryPolicy};
use crate::event::Event;
use crate::job::{JobId, JobRecord};
use crate::preprocess::{JqFilter, PreprocessError, Preprocessor, PreprocessorPool};
use crate::router::{AckHandle, RoutedJob, RouterMsg};
use crate::store::{Store, StoreError};

/// Keys every trigger has, whatever its kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerCommon {
    pub name: String,
    pub kind: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub runnable: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocessor: Option<PreprocessorConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    /// A jq expression over the event; jobs whose expression yields the same value run one at
    /// a time, in the order their events arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_by: Option<String>,
}

fn yes() -> bool {
    true
}

const COMMON_KEYS: &[&str] = &[
    "name",
    "kind",
    "enabled",
    "runnable",
    "preprocessor",
    "retry",
    "max_in_flight",
    "order_by",
];

/// The kind-specific half of a trigger.
#[derive(Debug, Clone, PartialEq)]
pub enum TriggerSpec {
    Webhook(webhook::WebhookConfig),
    Http(http::HttpRouteConfig),
}

pub const KINDS: &[&str] = &["webhook", "http"];

/// One `[[triggers]]` entry: common keys and the kind's keys side by side in one table.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerConfig {
    pub common: TriggerCommon,
    pub spec: TriggerSpec,
}

impl TriggerConfig {
    pub fn name(&self) -> &str {
        &self.common.name
    }

    /// Builds a trigger from a flat JSON-like map; errors name the offending key.
    pub fn from_map(mut map: Map<String, Value>) -> Result<Self, String> {
        let mut common = Map::new();
        for key in COMMON_KEYS {
            if let Some(v) = map.remove(*key) {
                common.insert((*key).to_string(), v);
            }
        }
        let name = common
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("<unnamed>")
            .to_string();
        let kind = match common.get("kind") {
            Some(Value::String(k)) => k.clone(),
            Some(_) => return Err(format!("trigger `{name}`: `kind` must be a string")),
            None => return Err(format!("trigger `{name}`: missing key `kind`")),
        };
        if !KINDS.contains(&kind.as_str()) {
            return Err(format!(
                "trigger `{name}`: unknown trigger kind `{kind}` (known kinds: {})",
                KINDS.join(", ")
            ));
        }
        let common: TriggerCommon = serde_json::from_value(Value::Object(common))
            .map_err(|e| format!("trigger `{name}`: {e}"))?;
        let rest = Value::Object(map);
        let spec = match kind.as_str() {
            "webhook" => serde_json::from_value(rest).map(TriggerSpec::Webhook),
            "http" => serde_json::from_value(rest).map(TriggerSpec::Http),
            _ => unreachable!("checked against KINDS above"),
        }
        .map_err(|e| {
            let mut e = e.to_string();
            if e.contains("unknown field") {
                e = format!(
                    "{e}; keys every trigger accepts: {}",
                    COMMON_KEYS.join(", ")
                );
            }
            format!("trigger `{name}` (kind {kind}): {e}")
        })?;
        Ok(Self { common, spec })
    }

    pub fn to_map(&self) -> Map<String, Value> {
        let mut map = match serde_json::to_value(&self.common) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let spec = match &self.spec {
            TriggerSpec::Webhook(w) => serde_json::to_value(w),
            TriggerSpec::Http(h) => serde_json::to_value(h),
        };
        if let Ok(Value::Object(m)) = spec {
            map.extend(m);
        }
        map
    }

    /// Short label of the mode for listings.
    pub fn mode(&self) -> Option<Mode> {
        match &self.spec {
            TriggerSpec::Webhook(w) => Some(w.mode),
            TriggerSpec::Http(h) => Some(h.mode),
        }
    }
}

impl<'de> Deserialize<'de> for TriggerConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = Map::<String, Value>::deserialize(d)?;
        TriggerConfig::from_map(map).map_err(serde::de::Error::custom)
    }
}

impl Serialize for TriggerConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_map().serialize(s)
    }
}

/// Whether a pushed request is answered when its job is queued or when it has finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Async,
    Sync,
}

/// What the supervisor reports for a trigger.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TriggerState {
    Starting,
    Running,
    BackingOff {
        last_error: String,
        /// RFC 3339 time of the next start attempt.
        next_attempt: String,
        #[serde(skip)]
        retry_in: Duration,
    },
    Disabled,
}

/// Per-trigger state that outlives any one actor incarnation.
pub struct TriggerRuntime {
    pub config: TriggerConfig,
    pub preprocessor: Preprocessor,
    pub order_by: Option<JqFilter>,
    pub retry: RetryPolicy,
    pub max_in_flight: usize,
    pub in_flight: Arc<AtomicUsize>,
    pub state: Mutex<TriggerState>,
    pub restarts: AtomicU64,
    pub events_received: AtomicU64,
    pub events_filtered: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub jobs_created: AtomicU64,
    pub rejected_busy: AtomicU64,
}

impl TriggerRuntime {
    pub fn new(
        config: TriggerConfig,
        retry: RetryPolicy,
        default_max_in_flight: usize,
    ) -> Result<Self, String> {
        let preprocessor = match &config.common.preprocessor {
            Some(p) => {
                Preprocessor::compile(p).map_err(|(k, m)| format!("preprocessor.{k}: {m}"))?
            }
            None => Preprocessor::Default,
        };
        let order_by = config
            .common
            .order_by
            .as_deref()
            .map(JqFilter::compile)
            .transpose()
            .map_err(|m| format!("order_by: {m}"))?;
        let state = if config.common.enabled {
            TriggerState::Starting
        } else {
            TriggerState::Disabled
        };
        Ok(Self {
            max_in_flight: config.common.max_in_flight.unwrap_or(default_max_in_flight),
            config,
            preprocessor,
            order_by,
            retry,
            in_flight: Arc::new(AtomicUsize::new(0)),
            state: Mutex::new(state),
            restarts: AtomicU64::new(0),
            events_received: AtomicU64::new(0),
            events_filtered: AtomicU64::new(0),
            events_duplicate: AtomicU64::new(0),
            jobs_created: AtomicU64::new(0),
            rejected_busy: AtomicU64::new(0),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.common.name
    }

    pub fn state(&self) -> TriggerState {
        match self.state.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn set_state(&self, state: TriggerState) {
        match self.state.lock() {
            Ok(mut s) => *s = state,
            Err(p) => *p.into_inner() = state,
        }
    }

    /// True when the trigger may take another event; the caller then counts it in flight.
    pub fn has_capacity(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) < self.max_in_flight
    }
}

/// What became of one event handed to the [`Intake`].
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// Durably queued as these jobs.
    Queued(Vec<JobId>),
    /// The preprocessor produced no job; the event is acknowledged.
    Filtered,
    /// The event id was seen within the dedup window; these are the jobs it created then.
    Duplicate(Vec<JobId>),
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("preprocessor failed: {0}")]
    Preprocess(#[from] PreprocessError),
    #[error("could not queue the job durably: {0}")]
    Store(#[from] StoreError),
    #[error("the job router is not running")]
    RouterDown,
}

/// The shared path from event to durably queued jobs: dedup, preprocess, order key, persist,
/// hand to the router. Every trigger kind uses it, so every kind gets the same guarantee.
#[derive(Clone)]
pub struct Intake {
    pub store: Store,
    pub router: ractor::ActorRef<RouterMsg>,
    pub preprocessors: PreprocessorPool,
}

impl Intake {
    /// Persists the jobs for `event` and returns once they are flushed to disk. `ack` builds
    /// the handle settled with each job's final outcome (for sources that acknowledge late).
    pub async fn accept(
        &self,
        rt: &TriggerRuntime,
        event: Event,
        mut ack: impl FnMut(JobId) -> AckHandle,
    ) -> Result<Accepted, IntakeError> {
        rt.events_received.fetch_add(1, Ordering::Relaxed);
        if event.dedup {
            if let Some(ids) = self.store.dedup_get(&event.id)? {
                rt.events_duplicate.fetch_add(1, Ordering::Relaxed);
                tracing::info!(event_id = %event.id, "duplicate event, returning its earlier jobs");
                return Ok(Accepted::Duplicate(ids));
            }
        }
        let payload = Arc::new(event.payload);
        let outputs = self
            .preprocessors
            .run(
                &rt.preprocessor,
                payload.clone(),
                rt.config.common.kind.as_str(),
            )
            .await?;
        if outputs.is_empty() {
            rt.events_filtered.fetch_add(1, Ordering::Relaxed);
            tracing::info!(event_id = %event.id, "event filtered by preprocessor");
            return Ok(Accepted::Filtered);
        }
        let order_key = rt.order_by.as_ref().map(|f| order_key(f, &payload));
        let records: Vec<JobRecord> = outputs
            .into_iter()
            .map(|args| {
                JobRecord::new(
                    rt.name(),
                    &rt.config.common.kind,
                    &rt.config.common.runnable,
                    &event.id,
                    args,
                    (*payload).clone(),
                    order_key.clone(),
                )
            })
            .collect();
        let ids: Vec<JobId> = records.iter().map(|r| r.job_id).collect();
        self.store
            .enqueue(&records, event.dedup.then_some(event.id.as_str()))
            .await?;
        rt.jobs_created
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        let span = tracing::Span::current();
        let jobs = records
            .into_iter()
            .map(|record| {
                rt.in_flight.fetch_add(1, Ordering::AcqRel);
                let mut handle = ack(record.job_id);
                handle.add_in_flight(rt.in_flight.clone());
                let span = tracing::info_span!(parent: &span, "job", job_id = %record.job_id);
                RoutedJob {
                    record,
                    retry: rt.retry.clone(),
                    ack: handle,
                    span,
                }
            })
            .collect();
        self.router
            .cast(RouterMsg::Submit(jobs))
            .map_err(|_| IntakeError::RouterDown)?;
        Ok(Accepted::Queued(ids))
    }
}

/// The ordering key: the jq expression's first output, as a string (JSON text for non-strings).
fn order_key(filter: &JqFilter, event: &Value) -> String {
    match filter.run(event) {
        Ok(mut outs) if !outs.is_empty() => match outs.swap_remove(0) {
            Value::String(s) => s,
            other => other.to_string(),
        },
        Ok(_) => "null".into(),
        Err(e) => {
            tracing::warn!(error = %e, "order_by failed on this event; using the key `null`");
            "null".into()
        }
    }
}
