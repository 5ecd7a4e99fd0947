//! Starting and stopping the whole service: store, supervision tree, ingress listener
//! ([`Service`]), and what a running service offers those who ask and change it
//! ([`ServiceHandle`]: the admin API in src/admin goes through it and sends no actor message
//! of its own).
//!
//! - `handle.rs`: [`ServiceHandle`] and its [`ControlError`]
//! - `triggers.rs`: adding, replacing and removing triggers, enable/disable, suspend/resume
//! - `state.rs`: a trigger's saved state and resets, as its kind allows ([`SavedState`],
//!   [`Reset`](crate::triggers::kind::Reset))
//! - `jobs.rs`: jobs, replays, dead letters, quarantined records
//! - `stats.rs`: the router's and the pools' load
//!
//! [`SavedState`]: crate::triggers::SavedState

mod handle;
mod jobs;
mod state;
mod stats;
mod triggers;

pub use crate::triggers::kind::ResetOutcome;
pub use handle::{ControlError, ServiceHandle};
pub use jobs::{JobFilter, JobsPage};
pub use state::SavedStateOf;
pub use stats::{PoolLoad, PoolsLoad, RunnableLoad};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::ingress::connections::{ConnectionLimits, Connections};
use crate::ingress::http::{app, BodyBudget, IngressState};
use crate::model::ack::{AckHandle, Watchers};
use crate::model::events::EventBus;
use crate::preprocess::{JqSettings, PreprocessorPool};
use crate::router::{JobRouter, RoutedJob, RouterArgs, RouterMsg};
use crate::runners::Runnable;
use crate::store::{Store, StoreError};
use crate::supervisor::{
    Registry, RootMsg, RootSupervisor, SupervisorMsg, TriggerSupervisor, TriggerSupervisorArgs,
};
use crate::triggers::{Intake, Origin};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid configuration:\n{0}")]
    Config(String),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot start actor: {0}")]
    Spawn(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
}

/// A running millgate: it owns the supervision tree and the ingress listener, and derefs to
/// its [`ServiceHandle`] (its parts and its typed operations).
pub struct Service {
    handle: ServiceHandle,
    /// Where the webhook/route listener is bound (useful with port 0).
    pub addr: SocketAddr,
    /// The open connections of both listeners (the admin listener registers here too).
    pub connections: Connections,
    root: ActorRef<RootMsg>,
    root_handle: JoinHandle<()>,
    server: JoinHandle<()>,
    shutdown: watch::Sender<bool>,
}

impl Service {
    pub async fn start(config: Config) -> Result<Self, ServiceError> {
        if let Err(issues) = config.validate() {
            let text: Vec<String> = issues.iter().map(ToString::to_string).collect();
            return Err(ServiceError::Config(text.join("\n")));
        }
        let config = Arc::new(config);
        crate::model::json::set_max_depth(config.server.max_json_depth);
        let store = Store::open(&config.store)?;
        let spawn_err = |e: ractor::SpawnErr| ServiceError::Spawn(e.to_string());

        // Actor names are process-global in ractor; an instance prefix lets several services
        // share a process (tests, embedding).
        let instance = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let named = |n: &str| Some(format!("{n}@{instance}"));
        let (root, root_handle) = Actor::spawn(named("root"), RootSupervisor, ())
            .await
            .map_err(spawn_err)?;

        let mut runnables = HashMap::new();
        for (name, rc) in &config.runnables {
            let r = Runnable::from_config(rc).map_err(ServiceError::Config)?;
            runnables.insert(name.clone(), (Arc::new(r), rc.concurrency));
        }
        let watchers = Arc::new(Watchers::default());
        let bus = EventBus::default();
        let (router, _) = Actor::spawn_linked(
            named("job-router"),
            JobRouter,
            RouterArgs {
                store: store.clone(),
                runnables,
                watchers: watchers.clone(),
                bus: bus.clone(),
                runners: config.router.runners,
                supervisor: root.get_cell(),
                pool_name: named("runner-pool"),
            },
            root.get_cell(),
        )
        .await
        .map_err(spawn_err)?;
        let pool = ractor::call!(router, RouterMsg::RunnerPool)
            .map_err(|e| ServiceError::Spawn(e.to_string()))?;
        let preprocessors = PreprocessorPool::spawn(
            config.router.runners.clamp(2, 16),
            JqSettings {
                workers: config.preprocess.jq_workers,
                memory_limit: config.preprocess.jq_memory_mib.saturating_mul(1024 * 1024),
            },
            root.get_cell(),
            named("preprocessor-pool"),
        )
        .await
        .map_err(spawn_err)?;
        let intake = Intake {
            store: store.clone(),
            router: router.clone(),
            preprocessors,
            bus: bus.clone(),
        };
        let registry = Arc::new(Registry::default());
        let (triggers, _) = Actor::spawn_linked(
            named("trigger-supervisor"),
            TriggerSupervisor,
            TriggerSupervisorArgs {
                runnables: Arc::new(config.runnables.clone()),
                config: config.clone(),
                registry: registry.clone(),
                intake: intake.clone(),
                watchers: watchers.clone(),
            },
            root.get_cell(),
        )
        .await
        .map_err(spawn_err)?;
        // What the last run left unfinished, read before any trigger starts: a job queued by a
        // trigger from now on must not be taken for a leftover and submitted twice.
        let unfinished = store.unfinished()?;
        for t in &config.triggers {
            let name = t.common.name.clone();
            let added = ractor::call!(
                triggers,
                SupervisorMsg::Add,
                Box::new(t.clone()),
                Origin::Config
            )
            .map_err(|e| ServiceError::Spawn(e.to_string()))?;
            added.map_err(|e| ServiceError::Config(format!("trigger `{name}`: {e}")))?;
        }
        for definition in store.api_triggers()? {
            let t = match definition {
                serde_json::Value::Object(map) => crate::triggers::TriggerConfig::from_map(map),
                _ => Err("not a table".to_string()),
            };
            let t = match t {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(error = %e, "a trigger added through the API cannot be read by this build; it is kept in the store but not started");
                    continue;
                }
            };
            let name = t.common.name.clone();
            if config.triggers.iter().any(|c| c.common.name == name) {
                tracing::warn!(trigger = %name, "trigger added through the API is shadowed by config.toml; the config.toml one runs");
                continue;
            }
            // Before validation, which hands Kafka properties (plugins) to librdkafka.
            let programs = crate::config::program_keys(&t);
            if !programs.is_empty() && !config.admin.as_ref().is_some_and(|a| a.allow_commands) {
                tracing::error!(trigger = %name, keys = %programs.join(", "), "trigger added through the API runs programs but `[admin] allow_commands` is not true; it is kept in the store but not started");
                continue;
            }
            let issues = config.validate_trigger(&t, &mut Default::default());
            if !issues.is_empty() {
                let text: Vec<String> = issues.iter().map(|(k, m)| format!("{k}: {m}")).collect();
                tracing::error!(trigger = %name, problems = %text.join("; "), "trigger added through the API no longer validates against config.toml; it is kept in the store but not started");
                continue;
            }
            let added = ractor::call!(triggers, SupervisorMsg::Add, Box::new(t), Origin::Api)
                .map_err(|e| ServiceError::Spawn(e.to_string()))?;
            if let Err(e) = added {
                tracing::error!(trigger = %name, error = %e, "trigger added through the API could not be started");
            }
        }

        recover(unfinished, &registry, &router, &config)?;
        store.spawn_sweeper(Duration::from_secs(60));

        let listener = tokio::net::TcpListener::bind(&config.server.listen)
            .await
            .map_err(|e| ServiceError::Listen {
                addr: config.server.listen.clone(),
                reason: e.to_string(),
            })?;
        let addr = listener.local_addr().map_err(|e| ServiceError::Listen {
            addr: config.server.listen.clone(),
            reason: e.to_string(),
        })?;
        let ingress = app(IngressState {
            registry: registry.clone(),
            store: store.clone(),
            body_limit: config.server.body_limit,
            sync_timeout: config.server.sync_timeout,
            budget: BodyBudget::new(config.server.max_buffered_bytes),
        });
        let connections = Connections::new(ConnectionLimits {
            header_read_timeout: config.server.header_read_timeout,
            idle_timeout: config.server.idle_timeout,
            max_connections: config.server.max_connections,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let server = tokio::spawn(crate::ingress::listener::serve(
            listener,
            ingress,
            connections.clone(),
            "ingress",
            shutdown_rx,
        ));
        tracing::info!(%addr, triggers = config.triggers.len(), "millgate listening");
        Ok(Self {
            handle: ServiceHandle {
                config,
                store,
                registry,
                watchers,
                intake,
                runner_pool: pool,
                bus,
                started_at: std::time::Instant::now(),
                router,
                triggers,
                root: root.get_cell(),
            },
            addr,
            connections,
            root,
            root_handle,
            server,
            shutdown,
        })
    }

    /// A cheap clone of the running service's parts and operations, for whoever outlives a
    /// borrow of it (the admin listener's handlers).
    pub fn handle(&self) -> ServiceHandle {
        self.handle.clone()
    }

    /// Resolves when the supervision tree stops on its own (a core actor failed).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.root_handle).await;
    }

    /// Stops accepting requests, then stops the actors. Jobs still queued stay in the store
    /// and run on the next start.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let mut server = self.server;
        if tokio::time::timeout(Duration::from_secs(10), &mut server)
            .await
            .is_err()
        {
            // Requests still running after 10 s are cut: their tasks hold the store.
            server.abort();
            let _ = server.await;
        }
        // Sources first (a Kafka consumer commits what finished and leaves its group), then
        // the router and the pools.
        let _ = ractor::call_t!(self.handle.triggers, SupervisorMsg::StopAll, 40_000);
        self.root
            .stop_children_and_wait(None, Some(Duration::from_secs(10)))
            .await;
        self.root.stop(None);
        let _ = self.root_handle.await;
        let store = self.handle.store.clone();
        drop(self.handle);
        let _ = store.commit().await;
        // The data directory is free again once this returns (an embedding program or a test
        // may open it at once): wait for the tasks still holding the store to end.
        // (5 s was seen to be too short on a loaded 2-core machine: a restart in the same
        // process then found the lock still taken.)
        if !store.released_within(Duration::from_secs(15)).await {
            tracing::warn!(
                "the store is still held 15 s after stopping; its lock stays taken until then"
            );
        }
    }
}

impl Deref for Service {
    type Target = ServiceHandle;

    fn deref(&self) -> &ServiceHandle {
        &self.handle
    }
}

/// Dispatches the jobs that were queued or running when the process last stopped.
fn recover(
    unfinished: Vec<crate::model::job::JobRecord>,
    registry: &Registry,
    router: &ActorRef<RouterMsg>,
    config: &Config,
) -> Result<(), ServiceError> {
    if unfinished.is_empty() {
        return Ok(());
    }
    tracing::info!(
        jobs = unfinished.len(),
        "dispatching jobs left unfinished by the last run"
    );
    let jobs = unfinished
        .into_iter()
        .map(|record| {
            let (ack, retry) = match registry.get(&record.trigger) {
                Some(entry) => (
                    entry.runtime.ack_handle(AckHandle::none()),
                    entry.runtime.retry.clone(),
                ),
                None => (AckHandle::none(), config.router.retry.clone()),
            };
            let span = tracing::info_span!("event", trigger = %record.trigger, kind = %record.kind, event_id = %record.event_id, recovered = true);
            RoutedJob {
                record,
                retry,
                ack,
                span,
            }
        })
        .collect();
    router
        .cast(RouterMsg::Submit(jobs))
        .map_err(|e| ServiceError::Spawn(e.to_string()))
}
