//! Trigger kinds: one file per kind with its config beside it, plus what they share.
//!
//! - [`TriggerConfig`]: one `[[triggers]]` entry (common keys + the kind's own keys, flat).
//! - [`TriggerRuntime`]: what survives actor restarts (status, counters, in-flight count).
//! - [`Intake`]: the path every trigger uses to turn an event into durably queued jobs.
//! - [`push`]: the actor behind kinds that are pushed to us over HTTP (webhook, http).

pub mod cron;
pub mod http;
pub mod http_auth;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
pub mod poll;
pub mod push;
pub mod schedule;
pub mod webhook;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{PreprocessorConfig, RetryPolicy};
use crate::event::Event;
use crate::events::{EventBus, SystemEvent};
use crate::job::{JobId, JobRecord, JobStatus, TimelineEntry};
use crate::metrics;
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
    Schedule(schedule::ScheduleConfig),
    Poll(poll::PollConfig),
    #[cfg(feature = "nats")]
    Nats(nats::NatsConfig),
    #[cfg(feature = "mqtt")]
    Mqtt(mqtt::MqttConfig),
    #[cfg(feature = "kafka")]
    Kafka(kafka::KafkaConfig),
}

pub const KINDS: &[&str] = &[
    "webhook",
    "http",
    "schedule",
    "poll",
    #[cfg(feature = "nats")]
    "nats",
    #[cfg(feature = "mqtt")]
    "mqtt",
    #[cfg(feature = "kafka")]
    "kafka",
];

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
        let name = match common.get("name") {
            Some(Value::String(n)) => n.clone(),
            Some(_) => return Err("`name` must be a string".into()),
            None => return Err("missing key `name`".into()),
        };
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
        let common: TriggerCommon =
            keyed(Value::Object(common)).map_err(|e| format!("trigger `{name}`: {e}"))?;
        let rest = Value::Object(map);
        let spec = match kind.as_str() {
            "webhook" => keyed(rest).map(TriggerSpec::Webhook),
            "http" => keyed(rest).map(TriggerSpec::Http),
            "schedule" => keyed(rest).map(TriggerSpec::Schedule),
            "poll" => keyed(rest).map(TriggerSpec::Poll),
            #[cfg(feature = "nats")]
            "nats" => keyed(rest).map(TriggerSpec::Nats),
            #[cfg(feature = "mqtt")]
            "mqtt" => keyed(rest).map(TriggerSpec::Mqtt),
            #[cfg(feature = "kafka")]
            "kafka" => keyed(rest).map(TriggerSpec::Kafka),
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
            TriggerSpec::Schedule(c) => serde_json::to_value(c),
            TriggerSpec::Poll(c) => serde_json::to_value(c),
            #[cfg(feature = "nats")]
            TriggerSpec::Nats(n) => serde_json::to_value(n),
            #[cfg(feature = "mqtt")]
            TriggerSpec::Mqtt(m) => serde_json::to_value(m),
            #[cfg(feature = "kafka")]
            TriggerSpec::Kafka(k) => serde_json::to_value(k),
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
            TriggerSpec::Schedule(_) | TriggerSpec::Poll(_) => None,
            #[cfg(feature = "nats")]
            TriggerSpec::Nats(_) => None,
            #[cfg(feature = "mqtt")]
            TriggerSpec::Mqtt(_) => None,
            #[cfg(feature = "kafka")]
            TriggerSpec::Kafka(_) => None,
        }
    }

    /// The jq expression behind `order_by`, with the kinds' shorthands expanded: `"subject"`
    /// (nats), `"topic"` (mqtt), `"partition"` and `"key"` (kafka, which orders per partition
    /// unless told otherwise; `"none"` turns that off).
    pub fn order_by_expr(&self) -> Option<String> {
        let configured = self.common.order_by.as_deref();
        match (&self.spec, configured) {
            #[cfg(feature = "nats")]
            (TriggerSpec::Nats(_), Some("subject")) => Some(".subject".into()),
            #[cfg(feature = "mqtt")]
            (TriggerSpec::Mqtt(_), Some("topic")) => Some(".topic".into()),
            #[cfg(feature = "kafka")]
            (TriggerSpec::Kafka(_), c) => kafka::order_by_expr(c),
            (_, c) => c.map(str::to_string),
        }
    }

    /// One line saying where events come from (for `millgate check` and listings).
    pub fn endpoint(&self) -> String {
        match &self.spec {
            TriggerSpec::Webhook(_) => format!("POST /hooks/{}", self.common.name),
            TriggerSpec::Http(h) => format!(
                "{} {} (auth {})",
                h.method.to_uppercase(),
                h.path,
                h.auth.label()
            ),
            TriggerSpec::Schedule(c) => c.endpoint(),
            TriggerSpec::Poll(c) => c.endpoint(),
            #[cfg(feature = "nats")]
            TriggerSpec::Nats(n) => n.endpoint(&self.common.name),
            #[cfg(feature = "mqtt")]
            TriggerSpec::Mqtt(m) => m.endpoint(),
            #[cfg(feature = "kafka")]
            TriggerSpec::Kafka(k) => k.endpoint(),
        }
    }
}

impl TriggerSpec {
    /// Kind-specific validation: (key, message) pairs. `routes` collects HTTP routes so that
    /// conflicts between triggers are found.
    pub fn validate(&self, name: &str, routes: &mut http::RouteTable) -> Vec<(String, String)> {
        match self {
            TriggerSpec::Webhook(w) => w.validate(),
            TriggerSpec::Http(h) => h.validate(name, routes),
            TriggerSpec::Schedule(c) => c.validate(),
            TriggerSpec::Poll(c) => c.validate(),
            #[cfg(feature = "nats")]
            TriggerSpec::Nats(n) => n.validate(),
            #[cfg(feature = "mqtt")]
            TriggerSpec::Mqtt(m) => m.validate(),
            #[cfg(feature = "kafka")]
            TriggerSpec::Kafka(k) => k.validate(),
        }
    }

    /// The pushed-over-HTTP behaviour, for kinds the HTTP ingress serves.
    pub fn push(&self) -> Option<&dyn push::PushKind> {
        match self {
            TriggerSpec::Webhook(w) => Some(w),
            TriggerSpec::Http(h) => Some(h),
            TriggerSpec::Schedule(_) | TriggerSpec::Poll(_) => None,
            #[cfg(feature = "nats")]
            TriggerSpec::Nats(_) => None,
            #[cfg(feature = "mqtt")]
            TriggerSpec::Mqtt(_) => None,
            #[cfg(feature = "kafka")]
            TriggerSpec::Kafka(_) => None,
        }
    }
}

/// The stop signal of a source actor's connection task. The task is never aborted: an abort
/// inside `Intake::accept` could leave jobs on disk that the router never got (they would wait
/// for the next process start). So the task only stops where it waits for its broker.
#[cfg(any(feature = "nats", feature = "mqtt"))]
pub(crate) struct StopSignal(pub(crate) tokio::sync::watch::Receiver<bool>);

#[cfg(any(feature = "nats", feature = "mqtt"))]
impl StopSignal {
    /// `f`'s output, or `None` when the actor stopped first.
    pub(crate) async fn or<F: std::future::Future>(&mut self, f: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            _ = self.0.wait_for(|stop| *stop) => None,
            out = f => Some(out),
        }
    }
}

/// What a trigger actor of a pulling kind (brokers, schedules, polls) is started with.
#[derive(Clone)]
pub struct SourceArgs {
    pub runtime: Arc<TriggerRuntime>,
    pub intake: Intake,
    /// The service's configuration (a poll trigger finds its `poll_runnable` here).
    pub config: Arc<crate::config::Config>,
}

/// Starts the actor of a kind that is not pushed over HTTP, linked to `supervisor`. Each kind's
/// actor owns its connection (or timer) and fails, to be restarted with backoff, when it is lost.
pub async fn spawn_source(
    args: SourceArgs,
    supervisor: ractor::ActorCell,
) -> Result<ractor::ActorCell, ractor::SpawnErr> {
    let kind = args.runtime.kind().to_string();
    let _ = &supervisor;
    match &args.runtime.config.spec {
        TriggerSpec::Webhook(_) | TriggerSpec::Http(_) => Err(ractor::SpawnErr::StartupFailed(
            format!("`{kind}` triggers are served by the HTTP ingress, not a source actor").into(),
        )),
        TriggerSpec::Schedule(_) | TriggerSpec::Poll(_) => {
            schedule::spawn(args.clone(), supervisor).await
        }
        #[cfg(feature = "nats")]
        TriggerSpec::Nats(_) => {
            ractor::Actor::spawn_linked(None, nats::NatsTrigger, args.clone(), supervisor)
                .await
                .map(|(actor, _)| actor.get_cell())
        }
        #[cfg(feature = "mqtt")]
        TriggerSpec::Mqtt(_) => {
            ractor::Actor::spawn_linked(None, mqtt::MqttTrigger, args.clone(), supervisor)
                .await
                .map(|(actor, _)| actor.get_cell())
        }
        #[cfg(feature = "kafka")]
        TriggerSpec::Kafka(_) => {
            ractor::Actor::spawn_linked(None, kafka::KafkaTrigger, args.clone(), supervisor)
                .await
                .map(|(actor, _)| actor.get_cell())
        }
    }
}

/// Deserializes, prefixing the error with the key it is about (`mode: unknown variant …`).
fn keyed<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let message = crate::hints::duration_examples(&e.into_inner().to_string());
        if path.is_empty() || path == "." {
            message
        } else {
            format!("{path}: {message}")
        }
    })
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

/// Where a trigger was defined: `config.toml` wins over the API on a name clash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Config,
    Api,
}

/// A trigger's counters (shown by the API; Prometheus has its own).
#[derive(Debug, Default)]
pub struct TriggerCounters {
    pub events_received: AtomicU64,
    pub events_filtered: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub jobs_created: AtomicU64,
    pub jobs_succeeded: AtomicU64,
    pub jobs_dead_lettered: AtomicU64,
    pub rejected_busy: AtomicU64,
}

impl TriggerCounters {
    pub fn snapshot(&self) -> Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "events_received": get(&self.events_received),
            "events_filtered": get(&self.events_filtered),
            "events_duplicate": get(&self.events_duplicate),
            "jobs_created": get(&self.jobs_created),
            "jobs_succeeded": get(&self.jobs_succeeded),
            "jobs_dead_lettered": get(&self.jobs_dead_lettered),
            "rejected_busy": get(&self.rejected_busy),
        })
    }
}

/// Events per second over the last minute: 60 one-second buckets.
#[derive(Debug)]
pub struct RateWindow {
    buckets: Mutex<([u32; 60], u64)>,
}

impl Default for RateWindow {
    fn default() -> Self {
        Self {
            buckets: Mutex::new(([0; 60], 0)),
        }
    }
}

impl RateWindow {
    fn now_sec() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn advance(b: &mut ([u32; 60], u64), now: u64) {
        let (buckets, last) = b;
        if now > *last {
            let gap = (now - *last).min(60);
            for i in 1..=gap {
                buckets[((*last + i) % 60) as usize] = 0;
            }
            *last = now;
        }
    }

    pub fn record(&self) {
        let now = Self::now_sec();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        Self::advance(&mut b, now);
        let slot = (now % 60) as usize;
        b.0[slot] = b.0[slot].saturating_add(1);
    }

    pub fn per_second(&self) -> f64 {
        let now = Self::now_sec();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        Self::advance(&mut b, now);
        f64::from(b.0.iter().sum::<u32>()) / 60.0
    }
}

/// Per-trigger state that outlives any one actor incarnation.
pub struct TriggerRuntime {
    pub config: TriggerConfig,
    pub source: Source,
    pub preprocessor: Preprocessor,
    pub order_by: Option<JqFilter>,
    pub retry: RetryPolicy,
    pub max_in_flight: usize,
    pub in_flight: Arc<AtomicUsize>,
    /// Events are accepted and acknowledged, their jobs parked instead of run.
    pub suspended: AtomicBool,
    pub state: Mutex<TriggerState>,
    pub restarts: AtomicU64,
    pub counters: Arc<TriggerCounters>,
    pub rate: RateWindow,
    /// A timed kind's (schedule, poll) status: next fire times, skip/miss counters. Null for
    /// other kinds.
    pub source_status: Mutex<Value>,
}

impl TriggerRuntime {
    pub fn new(
        config: TriggerConfig,
        source: Source,
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
            .order_by_expr()
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
            source,
            preprocessor,
            order_by,
            retry,
            in_flight: Arc::new(AtomicUsize::new(0)),
            suspended: AtomicBool::new(false),
            state: Mutex::new(state),
            restarts: AtomicU64::new(0),
            counters: Arc::new(TriggerCounters::default()),
            rate: RateWindow::default(),
            source_status: Mutex::new(Value::Null),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.common.name
    }

    pub fn kind(&self) -> &str {
        &self.config.common.kind
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

    pub fn is_suspended(&self) -> bool {
        self.suspended.load(Ordering::Acquire)
    }

    /// The state as the API names it (`suspended` is a running trigger that parks its jobs).
    pub fn state_name(&self) -> &'static str {
        match self.state() {
            TriggerState::Starting => "starting",
            TriggerState::Running if self.is_suspended() => "suspended",
            TriggerState::Running => "running",
            TriggerState::BackingOff { .. } => "backing_off",
            TriggerState::Disabled => "disabled",
        }
    }

    /// True when the trigger may take another event; the caller then counts it in flight.
    pub fn has_capacity(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) < self.max_in_flight
    }

    /// Returns once the trigger may take another event. Polling: in-flight slots are released
    /// by AckHandle drops all over the router; a 20 ms poll while saturated costs nothing
    /// measurable and needs no wake-up plumbing.
    pub async fn wait_for_capacity(&self) {
        while !self.has_capacity() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An acknowledgement handle counting the job in flight and in this trigger's outcomes.
    pub fn ack_handle(&self, mut handle: AckHandle) -> AckHandle {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        handle.add_in_flight(self.in_flight.clone());
        handle.count_outcome(self.counters.clone());
        handle
    }
}

/// What became of one event handed to the [`Intake`].
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// Durably queued as these jobs.
    Queued(Vec<JobId>),
    /// Durably stored as these jobs, parked because the trigger is suspended.
    Parked(Vec<JobId>),
    /// The preprocessor produced no job; the event is acknowledged.
    Filtered,
    /// The event id was seen within the dedup window; these are the jobs it created then.
    Duplicate(Vec<JobId>),
}

/// One event part-way through the intake.
enum Staged {
    /// Nothing (more) to write: a duplicate or a filtered event.
    Done(Accepted),
    /// Its jobs are written, waiting for the flush.
    Written(WrittenEvent),
}

struct WrittenEvent {
    event_id: String,
    records: Vec<JobRecord>,
    parked: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The preprocessor failed on this event: the event is at fault, not the service.
    #[error("preprocessor failed: {0}")]
    Preprocess(PreprocessError),
    /// The preprocessor pool is gone (the service is stopping): nothing may be acknowledged.
    #[error("the preprocessor pool is not running")]
    PreprocessorsDown,
    #[error("could not queue the job durably: {0}")]
    Store(#[from] StoreError),
    #[error("the job router is not running")]
    RouterDown,
    #[error("{0}")]
    Refused(String),
}

impl From<PreprocessError> for IntakeError {
    fn from(e: PreprocessError) -> Self {
        match e {
            PreprocessError::PoolDown => IntakeError::PreprocessorsDown,
            other => IntakeError::Preprocess(other),
        }
    }
}

/// The shared path from event to durably queued jobs: dedup, preprocess, order key, persist,
/// hand to the router. Every trigger kind uses it, so every kind gets the same guarantee.
#[derive(Clone)]
pub struct Intake {
    pub store: Store,
    pub router: ractor::ActorRef<RouterMsg>,
    pub preprocessors: PreprocessorPool,
    pub bus: EventBus,
}

impl Intake {
    /// Persists the jobs for `event` and returns once they are flushed to disk. `ack` builds
    /// the handle settled with each job's final outcome (for sources that acknowledge late).
    pub async fn accept(
        &self,
        rt: &TriggerRuntime,
        event: Event,
        ack: impl FnMut(JobId) -> AckHandle,
    ) -> Result<Accepted, IntakeError> {
        let mut ack = ack;
        let mut out = self.accept_batch(rt, vec![event], |_, id| ack(id)).await;
        out.pop()
            .unwrap_or(Err(IntakeError::Refused("empty batch".into())))
    }

    /// [`Intake::accept`] for several events of one source, in order: their jobs share one
    /// flush to disk and reach the router in the events' order (which `order_by` relies on).
    /// `ack(i, job)` builds the handle of a job of the `i`-th event. One result per event; a
    /// failed flush fails every event that had jobs to write.
    pub async fn accept_batch(
        &self,
        rt: &TriggerRuntime,
        events: Vec<Event>,
        mut ack: impl FnMut(usize, JobId) -> AckHandle,
    ) -> Vec<Result<Accepted, IntakeError>> {
        let mut results = Vec::with_capacity(events.len());
        let mut staged = Vec::new();
        for (i, event) in events.into_iter().enumerate() {
            match self.stage(rt, event).await {
                Ok(Staged::Done(a)) => results.push(Ok(a)),
                Ok(Staged::Written(w)) => {
                    results.push(Ok(Accepted::Filtered)); // replaced below
                    staged.push((i, w));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if staged.is_empty() {
            return results;
        }
        if let Err(e) = self.store.commit().await {
            for (i, _) in &staged {
                results[*i] = Err(IntakeError::Store(e.clone()));
            }
            return results;
        }
        let name = rt.name();
        let span = tracing::Span::current();
        let mut jobs = Vec::new();
        for (i, w) in staged {
            rt.counters
                .jobs_created
                .fetch_add(w.records.len() as u64, Ordering::Relaxed);
            let ids: Vec<JobId> = w.records.iter().map(|r| r.job_id).collect();
            for r in &w.records {
                self.bus.publish(if w.parked {
                    SystemEvent::JobParked {
                        trigger: name.into(),
                        job_id: r.job_id,
                    }
                } else {
                    SystemEvent::JobQueued {
                        trigger: name.into(),
                        job_id: r.job_id,
                        event_id: w.event_id.clone(),
                    }
                });
            }
            if w.parked {
                tracing::info!(jobs = ids.len(), "trigger suspended: jobs parked");
                results[i] = Ok(Accepted::Parked(ids));
                continue;
            }
            for record in w.records {
                let handle = rt.ack_handle(ack(i, record.job_id));
                let span = tracing::info_span!(parent: &span, "job", job_id = %record.job_id);
                jobs.push(RoutedJob {
                    record,
                    retry: rt.retry.clone(),
                    ack: handle,
                    span,
                });
            }
            results[i] = Ok(Accepted::Queued(ids));
        }
        if !jobs.is_empty() && self.router.cast(RouterMsg::Submit(jobs)).is_err() {
            for r in results.iter_mut() {
                if matches!(r, Ok(Accepted::Queued(_))) {
                    *r = Err(IntakeError::RouterDown);
                }
            }
        }
        results
    }

    /// Dedup, preprocess and write one event's jobs (not yet flushed).
    async fn stage(&self, rt: &TriggerRuntime, event: Event) -> Result<Staged, IntakeError> {
        let name = rt.name();
        rt.counters.events_received.fetch_add(1, Ordering::Relaxed);
        rt.rate.record();
        metrics::event_received(name, rt.kind());
        self.bus.publish(SystemEvent::EventReceived {
            trigger: name.into(),
            event_id: event.id.clone(),
        });
        if event.dedup {
            if let Some(ids) = self.store.dedup_get(&event.id)? {
                rt.counters.events_duplicate.fetch_add(1, Ordering::Relaxed);
                metrics::event_deduplicated(name, rt.kind());
                tracing::info!(event_id = %event.id, "duplicate event, returning its earlier jobs");
                self.bus.publish(SystemEvent::EventDuplicate {
                    trigger: name.into(),
                    event_id: event.id.clone(),
                    job_ids: ids.clone(),
                });
                return Ok(Staged::Done(Accepted::Duplicate(ids)));
            }
        }
        let payload = Arc::new(event.payload);
        let outputs = self
            .preprocessors
            .run(&rt.preprocessor, payload.clone(), rt.kind())
            .await?;
        if outputs.is_empty() {
            rt.counters.events_filtered.fetch_add(1, Ordering::Relaxed);
            metrics::event_filtered(name, rt.kind());
            tracing::info!(event_id = %event.id, "event filtered by preprocessor");
            self.bus.publish(SystemEvent::EventFiltered {
                trigger: name.into(),
                event_id: event.id.clone(),
            });
            return Ok(Staged::Done(Accepted::Filtered));
        }
        let order_key = rt.order_by.as_ref().map(|f| order_key(f, &payload));
        let parked = rt.is_suspended();
        let records: Vec<JobRecord> = outputs
            .into_iter()
            .map(|args| {
                let mut r = JobRecord::new(
                    name,
                    rt.kind(),
                    &rt.config.common.runnable,
                    &event.id,
                    args,
                    (*payload).clone(),
                    order_key.clone(),
                );
                if parked {
                    r.status = JobStatus::Parked;
                    r.timeline = vec![TimelineEntry::now("parked")];
                }
                r
            })
            .collect();
        let dedup_id = event.dedup.then_some(event.id.as_str());
        self.store.write_jobs(&records, dedup_id, parked)?;
        Ok(Staged::Written(WrittenEvent {
            event_id: event.id,
            records,
            parked,
        }))
    }

    /// Releases a trigger's parked jobs to run, in arrival order. Returns how many.
    pub async fn release_parked(&self, rt: &TriggerRuntime) -> Result<usize, IntakeError> {
        let records = self.store.unpark(rt.name()).await?;
        let n = records.len();
        if n == 0 {
            return Ok(0);
        }
        let jobs = records
            .into_iter()
            .map(|record| {
                let span = tracing::info_span!("job", trigger = %record.trigger, job_id = %record.job_id, released = true);
                RoutedJob {
                    ack: rt.ack_handle(AckHandle::none()),
                    retry: rt.retry.clone(),
                    record,
                    span,
                }
            })
            .collect();
        self.router
            .cast(RouterMsg::Submit(jobs))
            .map_err(|_| IntakeError::RouterDown)?;
        tracing::info!(trigger = rt.name(), jobs = n, "parked jobs released");
        Ok(n)
    }

    /// Drops a trigger's parked jobs (status `cancelled`). Returns how many.
    pub async fn cancel_parked(&self, trigger: &str) -> Result<usize, IntakeError> {
        let ids = self.store.cancel_parked(trigger).await?;
        for id in &ids {
            metrics::job_outcome(trigger, "cancelled");
            self.bus.publish(SystemEvent::JobCancelled {
                trigger: trigger.into(),
                job_id: *id,
            });
        }
        Ok(ids.len())
    }

    /// Runs a finished job again as a new job linked to it. A replayed dead letter leaves the
    /// dead letters. `rt` is the job's trigger, when it still exists.
    pub async fn replay(
        &self,
        old: &JobRecord,
        rt: Option<&TriggerRuntime>,
        default_retry: &RetryPolicy,
    ) -> Result<JobId, IntakeError> {
        if !old.status.is_final() {
            return Err(IntakeError::Refused(format!(
                "job {} is {}; only finished jobs can be replayed",
                old.job_id,
                old.status.as_str()
            )));
        }
        let mut record = JobRecord::new(
            &old.trigger,
            &old.kind,
            &old.runnable,
            &old.event_id,
            old.args.clone(),
            old.event.clone(),
            old.order_key.clone(),
        );
        record.replay_of = Some(old.job_id);
        let id = record.job_id;
        self.store
            .enqueue(std::slice::from_ref(&record), None)
            .await?;
        self.store.remove_dead_letter(old.job_id)?;
        self.bus.publish(SystemEvent::JobQueued {
            trigger: old.trigger.clone(),
            job_id: id,
            event_id: old.event_id.clone(),
        });
        let (ack, retry) = match rt {
            Some(rt) => (rt.ack_handle(AckHandle::none()), rt.retry.clone()),
            None => (AckHandle::none(), default_retry.clone()),
        };
        let span = tracing::info_span!("job", trigger = %record.trigger, job_id = %id, replay_of = %old.job_id);
        self.router
            .cast(RouterMsg::Submit(vec![RoutedJob {
                record,
                retry,
                ack,
                span,
            }]))
            .map_err(|_| IntakeError::RouterDown)?;
        Ok(id)
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
