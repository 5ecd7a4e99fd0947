//! The contract every trigger kind fulfils. A kind's config struct implements [`TriggerKind`];
//! the rest of millgate asks a trigger through it (`TriggerSpec::kind`) and never matches on
//! the kind itself.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::http::RouteTable;
use super::push::PushKind;
use super::SourceArgs;
use crate::preprocess::{DefaultArgs, KeyExpr};
use crate::store::Store;

/// Whether a pushed request is answered when its job is queued or when it has finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Async,
    Sync,
}

/// The start of a pulling kind's actor, linked to the trigger supervisor.
pub type SpawnFuture =
    Pin<Box<dyn Future<Output = Result<ractor::ActorCell, ractor::SpawnErr>> + Send>>;

/// How the admin API's `GET/PUT /api/triggers/{name}/state` treat a kind's saved state.
#[derive(Debug, Clone, Copy)]
pub enum SavedState {
    /// The kind keeps none.
    None,
    /// Shown, changed only through the kind's own operations (Kafka positions: resets).
    ReadOnly,
    /// Replaced whole by a `PUT` (a poll's state).
    Replace,
    /// Changed field by field: `patch(trigger, saved, fields)` gives the new state or says why
    /// not (a schedule's `last_fire` and `paused`).
    Patch(fn(&str, Option<Value>, &Value) -> Result<Value, String>),
}

/// What became of an operator's reset of a source's position.
#[derive(Debug, Clone, PartialEq)]
pub enum ResetOutcome {
    /// Applied: the new positions.
    Applied(Value),
    /// Recorded, applied when the source can (a Kafka trigger without partitions yet).
    Pending(Value),
}

/// A kind whose position in its source an operator can move (Kafka's consumer group).
pub trait Reset: Send + Sync {
    /// Moves `trigger` to `request` (the kind's JSON, e.g. `{"to": "earliest"}`). `Err` is a
    /// request the kind does not understand, said so for the operator.
    fn reset<'a>(
        &'a self,
        store: &'a Store,
        trigger: &'a str,
        request: Value,
    ) -> Pin<Box<dyn Future<Output = Result<ResetOutcome, String>> + Send + 'a>>;
}

/// What every trigger kind provides.
pub trait TriggerKind: Send + Sync {
    /// Problems of this kind's keys: `(key, message)`. `routes` collects HTTP routes so that
    /// conflicts between triggers are found.
    fn validate(&self, trigger: &str, routes: &mut RouteTable) -> Vec<(String, String)>;

    /// One line saying where events come from (for `millgate check` and listings).
    fn endpoint(&self, trigger: &str) -> String;

    /// Pushed kinds: whether a request is answered when its job is queued or has finished.
    fn mode(&self) -> Option<Mode> {
        None
    }

    /// `order_by` as a jq expression, the kind's shorthands (`"subject"`, `"partition"`, ...)
    /// expanded; the kind's default when none is configured.
    fn order_by_expr(&self, configured: Option<&str>) -> Option<String> {
        configured.map(str::to_string)
    }

    /// `order_by` compiled into a key: native paths and templates where it can be.
    fn order_by(&self, configured: Option<&str>) -> Option<Result<KeyExpr, String>> {
        self.order_by_expr(configured).map(|e| KeyExpr::compile(&e))
    }

    /// Windmill's mapping for the kind: the job's args when the trigger has no preprocessor
    /// (Windmill hands a trigger's script these fields of its event, so a Windmill user's
    /// scripts take the same args here).
    fn default_args(&self) -> DefaultArgs;

    /// The HTTP side of kinds the shared ingress serves (webhook, http, pubsub_push).
    fn push(&self) -> Option<&dyn PushKind> {
        None
    }

    /// The route a pushed kind serves on the shared listener, `(method, path)`: entered in
    /// the route table, where two triggers may not claim the same one.
    fn http_route(&self) -> Option<(&str, &str)> {
        None
    }

    /// Whether the kind is served at `POST /hooks/{trigger}` (webhooks).
    fn at_hooks_path(&self) -> bool {
        false
    }

    /// Advice about a valid trigger, printed by `millgate check` and at start (a webhook open
    /// to anyone).
    fn warnings(&self, _trigger: &str) -> Vec<String> {
        Vec::new()
    }

    /// Runnables the kind names besides the trigger's `runnable`, as `(key, runnable)`: they
    /// must be defined like it (a poll's `poll_runnable`).
    fn runnables(&self) -> Vec<(&str, &str)> {
        Vec::new()
    }

    /// Whether the kind fires on its own clock (schedule, poll): its status is also shown
    /// under the admin API's `schedule` field.
    fn timed(&self) -> bool {
        false
    }

    /// Starts the actor of a kind that pulls its events (brokers, timers), linked to
    /// `supervisor`; `None` for pushed kinds.
    fn spawn_source(
        &self,
        _args: SourceArgs,
        _supervisor: ractor::ActorCell,
    ) -> Option<SpawnFuture> {
        None
    }

    /// Whether the source keeps each event until millgate acknowledges it, and hands it over
    /// again after a crash (JetStream, Kafka, a persistent MQTT QoS ≥ 1 session, SQS deleting
    /// after the run, Pub/Sub pull). Such a
    /// source is the log: its jobs are written without waiting for the disk. Sources that
    /// cannot redeliver wait for one durable write before they answer.
    fn redelivers(&self) -> bool {
        false
    }

    /// Keys through which this trigger would run a program of its own choosing (refused
    /// through the admin API unless `[admin] allow_commands = true`).
    fn program_keys(&self) -> Vec<String> {
        Vec::new()
    }

    /// How the admin API treats this kind's saved state.
    fn saved_state(&self) -> SavedState {
        SavedState::None
    }

    /// The kind's resets, when its source has positions an operator can move.
    fn reset(&self) -> Option<&dyn Reset> {
        None
    }
}
