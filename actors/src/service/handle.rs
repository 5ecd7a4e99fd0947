//! [`ServiceHandle`]: a running service's parts and the typed operations an operator (the
//! admin API, src/admin) performs on it, with one error type, [`ControlError`], that says what
//! went wrong in terms a caller can map to its own answers (src/admin/error.rs maps it to HTTP).

use std::sync::Arc;
use std::time::Instant;

use ractor::ActorRef;

use crate::config::Config;
use crate::model::ack::Watchers;
use crate::model::events::EventBus;
use crate::model::job::JobId;
use crate::router::RouterMsg;
use crate::runners;
use crate::store::{Store, StoreError};
use crate::supervisor::{Registry, SupervisorMsg, TriggerEntry, TriggerError};
use crate::triggers::Intake;

/// A cheap clone of a running service: its parts, for reading, and its operations (the methods
/// in this folder), which are how a caller changes it: they message the trigger supervisor and
/// the router, which the handle does not hand out.
#[derive(Clone)]
pub struct ServiceHandle {
    pub config: Arc<Config>,
    pub store: Store,
    pub registry: Arc<Registry>,
    pub watchers: Arc<Watchers>,
    pub intake: Intake,
    pub runner_pool: runners::RunnerPoolRef,
    pub bus: EventBus,
    pub started_at: Instant,
    pub(super) router: ActorRef<RouterMsg>,
    pub(super) triggers: ActorRef<SupervisorMsg>,
    pub(super) root: ractor::ActorCell,
}

/// Why an operation on a running service did not happen.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ControlError {
    #[error("no trigger named `{0}`")]
    NoTrigger(String),
    #[error("no job {0}")]
    NoJob(JobId),
    #[error("no dead letter {0}")]
    NoDeadLetter(JobId),
    #[error("no quarantined record {0}")]
    NoQuarantined(u64),
    #[error("a trigger named `{0}` already exists")]
    Exists(String),
    /// `verb` is what the caller wanted to do to it: `change`, `remove`.
    #[error("trigger `{name}` is defined in config.toml; {verb} it there")]
    DefinedInConfig { name: String, verb: &'static str },
    /// The trigger's kind keeps no saved state (`SavedState::None`).
    #[error("trigger `{trigger}` is a {kind} trigger, which keeps no state")]
    NoSavedState { trigger: String, kind: &'static str },
    /// The kind's saved state changes only through its own operations (`SavedState::ReadOnly`).
    #[error("trigger `{trigger}` is a {kind} trigger: its state is changed by its own operations (a reset), not set")]
    ReadOnlyState { trigger: String, kind: &'static str },
    /// The kind has no position an operator can move (`TriggerKind::reset` is `None`).
    #[error("trigger `{trigger}` is a {kind} trigger, which cannot be reset")]
    NoReset { trigger: String, kind: &'static str },
    /// The request does not fit what it names now (replaying an unfinished job, a job that
    /// does not fit under `max_in_flight`).
    #[error("{0}")]
    Refused(String),
    /// A trigger definition, or a saved state, that does not validate.
    #[error("{0}")]
    Invalid(String),
    /// A request the trigger's kind does not understand (a reset to nowhere).
    #[error("{0}")]
    BadRequest(String),
    /// The store failed, or an actor did not answer.
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<TriggerError> for ControlError {
    fn from(e: TriggerError) -> Self {
        match e {
            TriggerError::NotFound(name) => Self::NoTrigger(name),
            TriggerError::Exists(name) => Self::Exists(name),
            TriggerError::Invalid(m) => Self::Invalid(m),
            TriggerError::Store(m) => Self::Internal(m),
        }
    }
}

/// The trigger supervisor's mailbox failed (it stopped: the service is stopping).
pub(super) fn supervisor_gone(e: impl std::fmt::Display) -> ControlError {
    ControlError::Internal(format!("the trigger supervisor did not answer: {e}"))
}

impl ServiceHandle {
    /// The root of the supervision tree (for status pages).
    pub fn root(&self) -> ractor::ActorCell {
        self.root.clone()
    }

    /// One trigger as the registry holds it.
    pub fn trigger(&self, name: &str) -> Result<Arc<TriggerEntry>, ControlError> {
        self.registry
            .get(name)
            .ok_or_else(|| ControlError::NoTrigger(name.to_string()))
    }

    /// Every trigger, sorted by name.
    pub fn triggers(&self) -> Vec<Arc<TriggerEntry>> {
        self.registry.all()
    }

    /// Fails a trigger's actor on purpose (supervision tests, chaos drills).
    #[doc(hidden)]
    pub fn inject_trigger_fault(&self, trigger: &str) {
        let _ = self
            .triggers
            .cast(SupervisorMsg::InjectFault(trigger.to_string()));
    }
}
