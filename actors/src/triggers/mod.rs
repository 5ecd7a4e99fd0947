//! Trigger kinds: one file per kind with its config beside it, plus what they share.
//!
//! - [`TriggerConfig`]: one `[[triggers]]` entry (common keys + the kind's own keys, flat).
//! - [`TriggerRuntime`]: what survives actor restarts (status, counters, in-flight count).
//! - [`Intake`]: the path every trigger uses to turn an event into durably queued jobs.
//! - [`push`]: the actor behind kinds that are pushed to us over HTTP (webhook, http).

pub mod cron;
pub mod delivery;
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

pub use crate::intake::{Accepted, Intake, IntakeError};

use crate::config::{PreprocessorConfig, RetryPolicy};
use crate::intake::admission::{InFlight, Reservation};
use crate::preprocess::{KeyExpr, Preprocessor};
use crate::router::AckHandle;

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
    /// Most jobs one event may fan out into (default 100); an event with more is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fan_out: Option<usize>,
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
    "max_fan_out",
    "order_by",
];

/// `max_fan_out` when a trigger sets none.
pub const DEFAULT_MAX_FAN_OUT: usize = 100;

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

    /// `order_by` compiled: native paths and templates where it can be (the kinds' shorthands
    /// always), a jq filter otherwise.
    pub fn order_by_key(&self) -> Option<Result<KeyExpr, String>> {
        match &self.spec {
            #[cfg(feature = "kafka")]
            TriggerSpec::Kafka(_) => kafka::order_by_key(self.common.order_by.as_deref()),
            _ => self.order_by_expr().map(|e| KeyExpr::compile(&e)),
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
    pub order_by: Option<KeyExpr>,
    pub retry: RetryPolicy,
    pub max_in_flight: usize,
    /// Jobs fanned out of one event at most (`max_fan_out`).
    pub max_fan_out: usize,
    pub in_flight: Arc<AtomicUsize>,
    slots: InFlight,
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
            .order_by_key()
            .transpose()
            .map_err(|m| format!("order_by: {m}"))?;
        let state = if config.common.enabled {
            TriggerState::Starting
        } else {
            TriggerState::Disabled
        };
        let max_in_flight = config.common.max_in_flight.unwrap_or(default_max_in_flight);
        let slots = InFlight::new(max_in_flight);
        Ok(Self {
            max_in_flight,
            max_fan_out: config.common.max_fan_out.unwrap_or(DEFAULT_MAX_FAN_OUT),
            in_flight: slots.counter(),
            slots,
            config,
            source,
            preprocessor,
            order_by,
            retry,
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

    /// True when the trigger may take another event.
    pub fn has_capacity(&self) -> bool {
        self.slots.has_room()
    }

    /// Returns once the trigger may take another event. Polling: in-flight slots are released
    /// by AckHandle drops all over the router; a 20 ms poll while saturated costs nothing
    /// measurable and needs no wake-up plumbing.
    pub async fn wait_for_capacity(&self) {
        while !self.has_capacity() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `max_in_flight` counter, for reservations.
    pub fn slots(&self) -> &InFlight {
        &self.slots
    }

    /// An acknowledgement handle counting the job in flight (one more slot, whether or not it
    /// fits: the job exists already) and in this trigger's outcomes.
    pub fn ack_handle(&self, handle: AckHandle) -> AckHandle {
        let mut reservation = self.slots.reserve(1);
        self.ack_handle_reserved(&mut reservation, handle)
    }

    /// [`TriggerRuntime::ack_handle`] for a job whose slot was reserved at admission.
    pub fn ack_handle_reserved(
        &self,
        reservation: &mut Reservation,
        mut handle: AckHandle,
    ) -> AckHandle {
        handle.add_in_flight(reservation.take_one());
        handle.count_outcome(self.counters.clone());
        handle
    }
}
