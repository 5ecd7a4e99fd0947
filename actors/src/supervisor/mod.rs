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

use crate::config::Config;
use crate::model::ack::Watchers;
use crate::model::events::SystemEvent;
use crate::store::TriggerFlags;
use crate::triggers::push::{PushArgs, PushMsg, PushTrigger};
use crate::triggers::{Intake, Origin, SourceArgs, TriggerConfig, TriggerRuntime, TriggerState};

mod registry;
mod root;

pub use registry::{Registry, TriggerEntry, TriggerStatus};
pub use root::{RootMsg, RootSupervisor};

// ---------------------------------------------------------------------------------------------
// Messages

pub enum SupervisorMsg {
    /// Registers a trigger and starts its actor (unless disabled).
    Add(
        Box<TriggerConfig>,
        Origin,
        RpcReplyPort<Result<(), TriggerError>>,
    ),
    /// Swaps a trigger for a new definition: the old actor stops, the new one starts.
    Replace(Box<TriggerConfig>, RpcReplyPort<Result<(), TriggerError>>),
    /// Stops a trigger's actor and forgets the trigger.
    Remove(String, RpcReplyPort<Result<(), TriggerError>>),
    /// An operator's enable/disable, remembered across restarts.
    SetEnabled(String, bool, RpcReplyPort<Result<(), TriggerError>>),
    /// An operator's suspend/resume, remembered across restarts. Resuming releases the parked
    /// jobs; the reply is how many.
    SetSuspended(String, bool, RpcReplyPort<Result<usize, TriggerError>>),
    /// A backoff has passed; start the trigger's actor again.
    Restart(String),
    /// Fails a trigger's actor on purpose (supervision tests, chaos drills).
    InjectFault(String),
    /// Service shutdown: stops every trigger actor (no restarts) and replies once they are
    /// all gone, so sources commit and disconnect while the router can still settle jobs.
    StopAll(RpcReplyPort<()>),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TriggerError {
    #[error("no trigger named `{0}`")]
    NotFound(String),
    #[error("a trigger named `{0}` already exists")]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("store: {0}")]
    Store(String),
}

// ---------------------------------------------------------------------------------------------
// Trigger supervisor

pub struct TriggerSupervisor;

pub struct TriggerSupervisorArgs {
    pub config: Arc<Config>,
    /// The configuration's runnables (a poll trigger runs one of them to poll).
    pub runnables: Arc<BTreeMap<String, crate::model::settings::RunnableConfig>>,
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
    /// Actors being stopped on purpose: their termination is not a failure.
    stopping: HashSet<ActorId>,
    /// Set by `StopAll`: backoff timers that fire afterwards start nothing.
    shutting_down: bool,
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
            shutting_down: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut TriggerSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Add(config, source, reply) => {
                let _ = reply.send(state.add(&myself, *config, source).await);
            }
            SupervisorMsg::Replace(config, reply) => {
                let _ = reply.send(state.replace(&myself, *config).await);
            }
            SupervisorMsg::Remove(name, reply) => {
                let _ = reply.send(state.remove(&name).await);
            }
            SupervisorMsg::SetEnabled(name, enabled, reply) => {
                let _ = reply.send(state.set_enabled(&myself, &name, enabled).await);
            }
            SupervisorMsg::SetSuspended(name, suspended, reply) => {
                let _ = reply.send(state.set_suspended(&name, suspended).await);
            }
            SupervisorMsg::Restart(name) => {
                if !state.shutting_down
                    && state.args.registry.get(&name).is_some()
                    && !state.actors.contains_key(&name)
                {
                    state.start(&myself, &name).await;
                }
            }
            SupervisorMsg::StopAll(reply) => {
                state.shutting_down = true;
                let cells: Vec<ractor::ActorCell> =
                    state.actors.drain().map(|(_, cell)| cell).collect();
                for cell in &cells {
                    state.stopping.insert(cell.get_id());
                }
                state.backoff.clear();
                // Waiting here is fine: nothing else may start a trigger during shutdown.
                futures::future::join_all(cells.iter().map(|c| {
                    c.stop_and_wait(
                        Some("millgate is stopping".into()),
                        Some(std::time::Duration::from_secs(30)),
                    )
                }))
                .await;
                let _ = reply.send(());
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
        let id = cell.get_id();
        let Some(name) = state.children.remove(&id) else {
            return Ok(());
        };
        if state.stopping.remove(&id) {
            // Stopped on purpose (disable, replace, remove); a successor may already run.
            return Ok(());
        }
        if state.actors.get(&name).is_some_and(|c| c.get_id() == id) {
            state.actors.remove(&name);
            if let Some(entry) = state.args.registry.get(&name) {
                entry.set_push_actor(None);
            }
        }
        state.failed(&myself, &name, error);
        Ok(())
    }
}

impl TriggerSupervisorState {
    fn runtime_for(&self, config: &TriggerConfig) -> Result<TriggerRuntime, TriggerError> {
        let retry = self.args.config.retry_for(config);
        config
            .runtime(retry, self.args.config.router.max_in_flight)
            .map_err(TriggerError::Invalid)
    }

    fn publish_state(&self, rt: &TriggerRuntime) {
        let last_error = match rt.state() {
            TriggerState::BackingOff { last_error, .. } => Some(last_error),
            _ => None,
        };
        self.args.intake.bus.publish(|| SystemEvent::TriggerState {
            trigger: rt.name().to_string(),
            state: rt.state_name().to_string(),
            last_error,
        });
    }

    async fn add(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        config: TriggerConfig,
        origin: Origin,
    ) -> Result<(), TriggerError> {
        let name = config.common.name.clone();
        if self.args.registry.get(&name).is_some() {
            return Err(TriggerError::Exists(name));
        }
        // Only kinds with a route change the table: other kinds leave it as it is.
        let has_route = config.spec.kind().http_route().is_some();
        if has_route {
            self.args
                .registry
                .route_table(Some(&config))
                .map_err(TriggerError::Invalid)?;
        }
        let runtime = self.runtime_for(&config)?;
        let flags = self
            .args
            .intake
            .store
            .trigger_flags(&name)
            .map_err(|e| TriggerError::Store(e.to_string()))?;
        let enabled = flags.map_or(config.common.enabled, |f| f.enabled);
        if let Some(f) = flags {
            runtime.suspended.store(f.suspended, Ordering::Release);
        }
        if !enabled {
            runtime.set_state(TriggerState::Disabled);
        }
        let entry = Arc::new(TriggerEntry {
            config: Arc::new(config),
            origin,
            runtime: Arc::new(runtime),
            push: RwLock::new(None),
        });
        if let Ok(mut t) = self.args.registry.triggers.write() {
            t.insert(name.clone(), entry.clone());
        }
        if has_route {
            self.args
                .registry
                .rebuild_routes()
                .map_err(TriggerError::Invalid)?;
        }
        if enabled {
            self.start(myself, &name).await;
        } else {
            self.publish_state(&entry.runtime);
        }
        Ok(())
    }

    async fn replace(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        config: TriggerConfig,
    ) -> Result<(), TriggerError> {
        let name = config.common.name.clone();
        let Some(old) = self.args.registry.get(&name) else {
            return Err(TriggerError::NotFound(name));
        };
        self.args
            .registry
            .route_table(Some(&config))
            .map_err(TriggerError::Invalid)?;
        let runtime = self.runtime_for(&config)?;
        self.stop_actor(&name);
        // The new definition is authoritative: earlier enable/suspend flags no longer apply.
        let store = &self.args.intake.store;
        let flags = TriggerFlags {
            enabled: config.common.enabled,
            suspended: false,
        };
        store
            .put_trigger_flags(&name, flags)
            .await
            .map_err(|e| TriggerError::Store(e.to_string()))?;
        let enabled = config.common.enabled;
        let entry = Arc::new(TriggerEntry {
            config: Arc::new(config),
            origin: old.origin,
            runtime: Arc::new(runtime),
            push: RwLock::new(None),
        });
        if let Ok(mut t) = self.args.registry.triggers.write() {
            t.insert(name.clone(), entry.clone());
        }
        self.backoff.remove(&name);
        self.args
            .registry
            .rebuild_routes()
            .map_err(TriggerError::Invalid)?;
        if enabled {
            self.start(myself, &name).await;
        } else {
            self.publish_state(&entry.runtime);
        }
        Ok(())
    }

    fn stop_actor(&mut self, name: &str) {
        if let Some(cell) = self.actors.remove(name) {
            self.stopping.insert(cell.get_id());
            // Pushed triggers hold no connection; in-flight requests finish in their own tasks.
            cell.stop(Some("stopped by an operator".into()));
        }
        if let Some(entry) = self.args.registry.get(name) {
            entry.set_push_actor(None);
        }
    }

    async fn remove(&mut self, name: &str) -> Result<(), TriggerError> {
        if self.args.registry.get(name).is_none() {
            return Err(TriggerError::NotFound(name.into()));
        }
        self.stop_actor(name);
        if let Ok(mut t) = self.args.registry.triggers.write() {
            t.remove(name);
        }
        self.backoff.remove(name);
        self.args.intake.bus.publish(|| SystemEvent::TriggerState {
            trigger: name.into(),
            state: "removed".into(),
            last_error: None,
        });
        self.args
            .registry
            .rebuild_routes()
            .map_err(TriggerError::Invalid)
    }

    async fn set_enabled(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        name: &str,
        enabled: bool,
    ) -> Result<(), TriggerError> {
        let entry = self
            .args
            .registry
            .get(name)
            .ok_or_else(|| TriggerError::NotFound(name.into()))?;
        let flags = TriggerFlags {
            enabled,
            suspended: entry.runtime.is_suspended(),
        };
        self.args
            .intake
            .store
            .put_trigger_flags(name, flags)
            .await
            .map_err(|e| TriggerError::Store(e.to_string()))?;
        let disabled_now = entry.runtime.state() == TriggerState::Disabled;
        if enabled && disabled_now {
            entry.runtime.set_state(TriggerState::Starting);
            self.start(myself, name).await;
        } else if !enabled && !disabled_now {
            self.stop_actor(name);
            entry.runtime.set_state(TriggerState::Disabled);
            self.publish_state(&entry.runtime);
            tracing::info!(trigger = name, "trigger disabled");
        }
        Ok(())
    }

    async fn set_suspended(&mut self, name: &str, suspended: bool) -> Result<usize, TriggerError> {
        let entry = self
            .args
            .registry
            .get(name)
            .ok_or_else(|| TriggerError::NotFound(name.into()))?;
        let flags = TriggerFlags {
            enabled: entry.runtime.state() != TriggerState::Disabled,
            suspended,
        };
        self.args
            .intake
            .store
            .put_trigger_flags(name, flags)
            .await
            .map_err(|e| TriggerError::Store(e.to_string()))?;
        entry.runtime.suspended.store(suspended, Ordering::Release);
        self.publish_state(&entry.runtime);
        if suspended {
            tracing::info!(trigger = name, "trigger suspended: new jobs are parked");
            return Ok(0);
        }
        tracing::info!(trigger = name, "trigger resumed");
        self.args
            .intake
            .release_parked(&entry.runtime)
            .await
            .map_err(|e| TriggerError::Store(e.to_string()))
    }

    async fn start(&mut self, myself: &ActorRef<SupervisorMsg>, name: &str) {
        let Some(entry) = self.args.registry.get(name) else {
            return;
        };
        let rt = entry.runtime.clone();
        let kind = entry.config.spec.kind();
        let source = SourceArgs {
            runtime: rt.clone(),
            trigger: entry.config.clone(),
            intake: self.args.intake.clone(),
            runnables: self.args.runnables.clone(),
        };
        let spawned = match (kind.push(), kind.spawn_source(source, myself.get_cell())) {
            (None, Some(spawn)) => spawn.await,
            (None, None) => Err(ractor::SpawnErr::StartupFailed(
                format!(
                    "a {} trigger has neither an HTTP side nor a source",
                    rt.kind()
                )
                .into(),
            )),
            (Some(_), _) => {
                let args = PushArgs {
                    runtime: rt.clone(),
                    trigger: entry.config.clone(),
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
                self.publish_state(&rt);
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
        crate::model::metrics::trigger_restarted(name);
        let next = chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
        tracing::warn!(trigger = name, error = %error, retry_in = ?delay, "trigger failed; restarting after backoff");
        entry.runtime.set_state(TriggerState::BackingOff {
            last_error: error,
            next_attempt: next.to_rfc3339(),
            retry_in: delay,
        });
        self.publish_state(&entry.runtime);
        let name = name.to_string();
        myself.send_after(delay, move || SupervisorMsg::Restart(name));
    }
}
