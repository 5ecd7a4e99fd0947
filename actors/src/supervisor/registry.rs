//! The registry: every trigger's entry (config, origin, runtime, push actor) and the HTTP
//! route table, read by the ingress and the admin API, written by the trigger supervisor.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use ractor::ActorRef;
use serde::Serialize;

use crate::triggers::http::RouteTable;
use crate::triggers::push::PushMsg;
use crate::triggers::{Origin, TriggerConfig, TriggerRuntime, TriggerState};

/// One trigger as the rest of the system sees it.
pub struct TriggerEntry {
    pub config: Arc<TriggerConfig>,
    /// Where it was defined.
    pub origin: Origin,
    pub runtime: Arc<TriggerRuntime>,
    pub(super) push: RwLock<Option<ActorRef<PushMsg>>>,
}

impl TriggerEntry {
    /// The actor to hand pushed requests to, while one is running.
    pub fn push_actor(&self) -> Option<ActorRef<PushMsg>> {
        self.push.read().ok().and_then(|a| a.clone())
    }

    pub(super) fn set_push_actor(&self, actor: Option<ActorRef<PushMsg>>) {
        if let Ok(mut a) = self.push.write() {
            *a = actor;
        }
    }
}

/// Every trigger by name, and the HTTP route table. Written by the trigger supervisor only.
#[derive(Default)]
pub struct Registry {
    pub(super) triggers: RwLock<BTreeMap<String, Arc<TriggerEntry>>>,
    pub(super) routes: RwLock<RouteTable>,
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

    /// The route table of every trigger, `candidate` in place of its namesake.
    pub(super) fn route_table(
        &self,
        candidate: Option<&TriggerConfig>,
    ) -> Result<RouteTable, String> {
        let mut table = RouteTable::default();
        // By reference: copying every trigger's config here, once per trigger added, made
        // starting with 10,000 webhooks take ~50 s (BENCHMARKS.md, idle footprint).
        let entries = self.all();
        let existing = entries
            .iter()
            .map(|e| e.config.as_ref())
            .filter(|c| candidate.is_none_or(|cand| cand.name() != c.name()));
        for c in existing.chain(candidate) {
            if let Some((method, path)) = c.spec.kind().http_route() {
                let method = crate::triggers::http::parse_method(method)
                    .ok_or_else(|| format!("method: `{method}` is not an HTTP method"))?;
                table
                    .insert(&method, path, c.name())
                    .map_err(|e| format!("path: {e}"))?;
            }
        }
        Ok(table)
    }

    pub(super) fn rebuild_routes(&self) -> Result<(), String> {
        let table = self.route_table(None)?;
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
            kind: rt.kind().to_string(),
            state: rt.state(),
            restarts: rt.restarts.load(Ordering::Relaxed),
            in_flight: rt.in_flight.load(Ordering::Relaxed),
        }
    }
}
