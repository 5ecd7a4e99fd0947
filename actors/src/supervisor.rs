//! The supervision tree: a root supervisor over the core actors (router, runner pool,
//! preprocessor pool, trigger supervisor), and the trigger supervisor over one actor per
//! trigger.
//!
//! A failed trigger actor is restarted after a capped exponential backoff with jitter
//! (`[supervisor] restart_initial` doubling to `restart_max`, reset after `stable_after` of
//! good health). Its status meanwhile is `backing_off` with the last error and the next
//! attempt. A trigger is never disabled by an error: only a person disables a trigger.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde::Serialize;

use crate::config::Config;
use crate::router::Watchers;
use crate::triggers::http::RouteTable;
use crate::triggers::push::{PushArgs, PushMsg, PushTrigger};
use crate::triggers::{Intake, TriggerConfig, TriggerRuntime, TriggerSpec, TriggerState};

// ---------------------------------------------------------------------------------------------
// Messages

pub enum SupervisorMsg {
    /// Registers a trigger and starts its actor (unless disabled).
    Add(Box<TriggerConfig>, RpcReplyPort<Result<(), String>>),
    /// Stops a trigger's actor and forgets the trigger.
    Remove(String, RpcReplyPort<Result<(), String>>),
    /// A backoff has passed; start the trigger's actor again.
    Restart(String),
    /// Fails a trigger's actor on purpose (supervision tests, chaos drills).
    InjectFault(String),
}

// ---------------------------------------------------------------------------------------------
// The registry: what the ingress and the API read

/// One trigger as the rest of the system sees it.
pub struct TriggerEntry {
    pub runtime: Arc<TriggerRuntime>,
    push: RwLock<Option<ActorRef<PushMsg>>>,
}

impl TriggerEntry {
    /// The actor to hand pushed requests to, while one is running.
    pub fn push_actor(&self) -> Option<ActorRef<PushMsg>> {
        self.push.read().ok().and_then(|a| a.clone())
    }

    fn set_push_actor(&self, actor: Option<ActorRef<PushMsg>>) {
        if let Ok(mut a) = self.push.write() {
            *a = actor;
        }
    }
}

/// Every trigger by name, and the HTTP route table. Written by the trigger supervisor only.
#[derive(Default)]
pub struct Registry {
    triggers: RwLock<BTreeMap<String, Arc<TriggerEntry>>>,
    routes: RwLock<RouteTable>,
}

impl Registry {
    pub fn get(&self, name: &str) -> Option<Arc<TriggerEntry>> {
        self.triggers.read().ok()?.get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<TriggerEntry>> {
        self.triggers
            .read()
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn route(
        &self,
        method: &axum::http::Method,
        path: &str,
    ) -> Option<(String, BTreeMap<String, String>)> {
        self.routes.read().ok()?.lookup(method, path)
    }

    pub fn route_methods(&self, path: &str) -> Vec<axum::http::Method> {
        self.routes
            .read()
            .map(|r| r.methods_for(path))
            .unwrap_or_default()
    }

    fn rebuild_routes(&self) -> Result<(), String> {
        let mut table = RouteTable::default();
        for entry in self.all() {
            if let TriggerSpec::Http(h) = &entry.runtime.config.spec {
                let method = h
                    .method()
                    .ok_or_else(|| format!("bad method `{}`", h.method))?;
                table.insert(&method, &h.path, entry.runtime.name())?;
            }
        }
        if let Ok(mut r) = self.routes.write() {
            *r = table;
        }
        Ok(())
    }
}

/// A trigger's supervision status, for the API and the dashboard.
#[derive(Debug, Clone, Serialize)]
pub struct TriggerStatus {
    pub name: String,
    pub kind: String,
    #[serde(flatten)]
    pub state: TriggerState,
    pub restarts: u64,
    pub in_flight: usize,
}

impl TriggerEntry {
    pub fn status(&self) -> TriggerStatus {
        let rt = &self.runtime;
        TriggerStatus {
            name: rt.name().to_string(),
            kind: rt.config.common.kind.clone(),
            state: rt.state(),
            restarts: rt.restarts.load(Ordering::Relaxed),
            in_flight: rt.in_flight.load(Ordering::Relaxed),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Trigger supervisor

pub struct TriggerSupervisor;

pub struct TriggerSupervisorArgs {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub intake: Intake,
    pub watchers: Arc<Watchers>,
}

pub struct TriggerSupervisorState {
    args: TriggerSupervisorArgs,
    /// Live child actor → trigger name.
    children: HashMap<ActorId, String>,
    actors: HashMap<String, ractor::ActorCell>,
    started_at: HashMap<String, Instant>,
    backoff: HashMap<String, Duration>,
    /// Triggers being stopped on purpose: their termination is not a failure.
    stopping: HashSet<String>,
}

impl Actor for TriggerSupervisor {
    type Msg = SupervisorMsg;
    type State = TriggerSupervisorState;
    type Arguments = TriggerSupervisorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        args: TriggerSupervisorArgs,
    ) -> Result<TriggerSupervisorState, ActorProcessingErr> {
        Ok(TriggerSupervisorState {
            args,
            children: HashMap::new(),
            actors: HashMap::new(),
            started_at: HashMap::new(),
            backoff: HashMap::new(),
            stopping: HashSet::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut TriggerSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Add(config, reply) => {
                let _ = reply.send(state.add(&myself, *config).await);
            }
            SupervisorMsg::Remove(name, reply) => {
                let _ = reply.send(state.remove(&name).await);
            }
            SupervisorMsg::Restart(name) => {
                if state.args.registry.get(&name).is_some() && !state.actors.contains_key(&name) {
                    state.start(&myself, &name).await;
                }
            }
            SupervisorMsg::InjectFault(name) => {
                if let Some(actor) = state.args.registry.get(&name).and_then(|e| e.push_actor()) {
                    let _ = actor.cast(PushMsg::InjectFault("requested".into()));
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut TriggerSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, error) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                reason.unwrap_or_else(|| "stopped without a reason".into()),
            ),
            _ => return Ok(()),
        };
        let Some(name) = state.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        state.actors.remove(&name);
        if let Some(entry) = state.args.registry.get(&name) {
            entry.set_push_actor(None);
        }
        if state.stopping.remove(&name) {
            return Ok(());
        }
        state.failed(&myself, &name, error);
        Ok(())
    }
}

impl TriggerSupervisorState {
    async fn add(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        config: TriggerConfig,
    ) -> Result<(), String> {
        let name = config.common.name.clone();
        if self.args.registry.get(&name).is_some() {
            return Err(format!("a trigger named `{name}` already exists"));
        }
        let retry = self.args.config.retry_for(&config);
        let runtime = TriggerRuntime::new(config, retry, self.args.config.router.max_in_flight)?;
        let enabled = runtime.config.common.enabled;
        let entry = Arc::new(TriggerEntry {
            runtime: Arc::new(runtime),
            push: RwLock::new(None),
        });
        if let Ok(mut t) = self.args.registry.triggers.write() {
            t.insert(name.clone(), entry);
        }
        if let Err(e) = self.args.registry.rebuild_routes() {
            if let Ok(mut t) = self.args.registry.triggers.write() {
                t.remove(&name);
            }
            return Err(e);
        }
        if enabled {
            self.start(myself, &name).await;
        }
        Ok(())
    }

    async fn remove(&mut self, name: &str) -> Result<(), String> {
        if self.args.registry.get(name).is_none() {
            return Err(format!("no trigger named `{name}`"));
        }
        if let Some(cell) = self.actors.remove(name) {
            self.stopping.insert(name.to_string());
            // Pushed triggers hold no connection; in-flight requests finish in their own tasks.
            cell.stop(Some("removed".into()));
        }
        if let Ok(mut t) = self.args.registry.triggers.write() {
            t.remove(name);
        }
        self.args.registry.rebuild_routes()
    }

    async fn start(&mut self, myself: &ActorRef<SupervisorMsg>, name: &str) {
        let Some(entry) = self.args.registry.get(name) else {
            return;
        };
        let rt = entry.runtime.clone();
        let spawned = match &rt.config.spec {
            TriggerSpec::Webhook(_) | TriggerSpec::Http(_) => {
                let args = PushArgs {
                    runtime: rt.clone(),
                    intake: self.args.intake.clone(),
                    watchers: self.args.watchers.clone(),
                    default_sync_timeout: self.args.config.server.sync_timeout,
                };
                Actor::spawn_linked(None, PushTrigger, args, myself.get_cell())
                    .await
                    .map(|(actor, _)| {
                        entry.set_push_actor(Some(actor.clone()));
                        actor.get_cell()
                    })
            }
        };
        match spawned {
            Ok(cell) => {
                self.children.insert(cell.get_id(), name.to_string());
                self.actors.insert(name.to_string(), cell);
                self.started_at.insert(name.to_string(), Instant::now());
                rt.set_state(TriggerState::Running);
                tracing::info!(trigger = name, "trigger running");
            }
            Err(e) => self.failed(myself, name, format!("could not start: {e}")),
        }
    }

    fn failed(&mut self, myself: &ActorRef<SupervisorMsg>, name: &str, error: String) {
        let Some(entry) = self.args.registry.get(name) else {
            return;
        };
        let sup = &self.args.config.supervisor;
        let stable = self
            .started_at
            .get(name)
            .is_some_and(|t| t.elapsed() >= sup.stable_after);
        let previous = self.backoff.get(name).copied();
        let base = match previous {
            Some(d) if !stable => (d * 2).min(sup.restart_max),
            _ => sup.restart_initial,
        };
        self.backoff.insert(name.to_string(), base);
        // Jitter in [base/2, base]: triggers that failed together do not come back together.
        let delay = base.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        entry.runtime.restarts.fetch_add(1, Ordering::Relaxed);
        let next = chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
        tracing::warn!(trigger = name, error = %error, retry_in = ?delay, "trigger failed; restarting after backoff");
        entry.runtime.set_state(TriggerState::BackingOff {
            last_error: error,
            next_attempt: next.to_rfc3339(),
            retry_in: delay,
        });
        let name = name.to_string();
        myself.send_after(delay, move || SupervisorMsg::Restart(name));
    }
}

// ---------------------------------------------------------------------------------------------
// Root supervisor

/// Parent of the core actors. A core actor failing is a bug that in-memory state cannot
/// survive safely, so the root stops and the process exits; the durable queue is re-dispatched
/// on the next start.
pub struct RootSupervisor;

pub enum RootMsg {}

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<RootMsg>,
        _args: (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        event: SupervisionEvent,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::error!(actor = ?cell.get_name(), error = %err, "core actor failed; stopping millgate");
                myself.stop(Some(format!(
                    "core actor {:?} failed: {err}",
                    cell.get_name()
                )));
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                tracing::info!(actor = ?cell.get_name(), reason = ?reason, "core actor stopped");
            }
            _ => {}
        }
        Ok(())
    }
}
