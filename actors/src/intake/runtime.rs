//! What the intake and a trigger's actors share about one trigger, across actor incarnations:
//! its compiled preprocessor and order key, retry policy, admission counter, state and
//! counters. Built by the trigger layer from a trigger's configuration (`TriggerKind`
//! supplies what depends on the kind); the configuration itself stays with the registry.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::admission::{InFlight, Reservation};
use crate::model::ack::{AckHandle, RateWindow, TriggerCounters};
use crate::model::metrics::TriggerMetrics;
use crate::model::settings::RetryPolicy;
use crate::preprocess::{KeyExpr, Preprocessor};

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

/// How a trigger's events become jobs: what [`TriggerRuntime::new`] is built from.
pub struct RuntimeSpec {
    pub name: String,
    /// The kind's label (`webhook`, `kafka`, ...): for metrics, logs and job records.
    pub kind: &'static str,
    pub runnable: String,
    pub enabled: bool,
    pub preprocessor: Preprocessor,
    pub order_by: Option<KeyExpr>,
    pub retry: RetryPolicy,
    pub max_in_flight: usize,
    pub max_fan_out: usize,
    /// The source hands unacknowledged events over again after a crash (`TriggerKind::redelivers`).
    pub redelivers: bool,
}

/// Per-trigger state that outlives any one actor incarnation.
pub struct TriggerRuntime {
    name: String,
    kind: &'static str,
    pub runnable: String,
    pub preprocessor: Preprocessor,
    pub order_by: Option<KeyExpr>,
    pub retry: RetryPolicy,
    pub max_in_flight: usize,
    /// Jobs fanned out of one event at most (`max_fan_out`).
    pub max_fan_out: usize,
    /// The source is the log: its jobs are written without waiting for the disk.
    pub redelivers: bool,
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
    slots: InFlight,
    /// Events are accepted and acknowledged, their jobs parked instead of run.
    pub suspended: AtomicBool,
    pub state: Mutex<TriggerState>,
    pub restarts: AtomicU64,
    pub counters: Arc<TriggerCounters>,
    pub rate: RateWindow,
    /// A source's status for the API (a timed kind's next fire times, a broker's connection,
    /// Kafka's partitions). Null until the kind sets it.
    pub source_status: Mutex<Value>,
}

impl TriggerRuntime {
    pub fn new(spec: RuntimeSpec) -> Self {
        let state = if spec.enabled {
            TriggerState::Starting
        } else {
            TriggerState::Disabled
        };
        let slots = InFlight::new(spec.max_in_flight);
        let counters = Arc::new(TriggerCounters::new(TriggerMetrics::new(
            &spec.name,
            spec.kind,
            &spec.runnable,
        )));
        Self {
            name: spec.name,
            kind: spec.kind,
            runnable: spec.runnable,
            preprocessor: spec.preprocessor,
            order_by: spec.order_by,
            retry: spec.retry,
            max_in_flight: spec.max_in_flight,
            max_fan_out: spec.max_fan_out,
            redelivers: spec.redelivers,
            in_flight: slots.counter(),
            slots,
            suspended: AtomicBool::new(false),
            state: Mutex::new(state),
            restarts: AtomicU64::new(0),
            counters,
            rate: RateWindow::default(),
            source_status: Mutex::new(Value::Null),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kind's label.
    pub fn kind(&self) -> &'static str {
        self.kind
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

    /// Running (suspended or not): its connection or listener is up.
    pub fn is_up(&self) -> bool {
        matches!(self.state(), TriggerState::Running)
    }

    /// Switched off by an operator.
    pub fn is_disabled(&self) -> bool {
        matches!(self.state(), TriggerState::Disabled)
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

    /// Sets the source's status for the API.
    pub fn set_source_status(&self, v: Value) {
        match self.source_status.lock() {
            Ok(mut s) => *s = v,
            Err(p) => *p.into_inner() = v,
        }
    }
}
