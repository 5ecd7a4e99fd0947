//! An operator's changes to the triggers: triggers added through the API (stored, and started
//! again at the next start by `Service::start`), replaced or removed; enable/disable and
//! suspend/resume, which the trigger supervisor remembers across restarts.

use std::sync::Arc;

use serde_json::Value;

use super::handle::{supervisor_gone, ControlError, ServiceHandle};
use crate::supervisor::{SupervisorMsg, TriggerEntry};
use crate::triggers::http::RouteTable;
use crate::triggers::{Origin, TriggerConfig};

impl ServiceHandle {
    /// Adds a trigger and stores its definition, so that it starts again with the service.
    /// The definition is validated exactly as `config.toml` would validate it.
    pub async fn add_trigger(&self, t: TriggerConfig) -> Result<Arc<TriggerEntry>, ControlError> {
        let name = t.name().to_string();
        self.refuse_config_owned(&name, "change")?;
        self.validate(&t)?;
        let definition = Value::Object(t.to_map());
        ractor::call!(self.triggers, SupervisorMsg::Add, Box::new(t), Origin::Api)
            .map_err(supervisor_gone)??;
        if let Err(e) = self.store.put_api_trigger(&name, &definition).await {
            // Not stored means not there after a restart: take it back rather than leave a
            // trigger that silently disappears.
            let _ = ractor::call!(self.triggers, SupervisorMsg::Remove, name.clone());
            return Err(ControlError::Internal(format!(
                "could not store the trigger: {e}"
            )));
        }
        self.trigger(&name)
    }

    /// Replaces a trigger added through the API: the old actor stops, the new one starts, and
    /// the earlier enable/suspend flags no longer apply.
    pub async fn replace_trigger(
        &self,
        t: TriggerConfig,
    ) -> Result<Arc<TriggerEntry>, ControlError> {
        let name = t.name().to_string();
        self.trigger(&name)?;
        self.refuse_config_owned(&name, "change")?;
        self.validate(&t)?;
        let definition = Value::Object(t.to_map());
        ractor::call!(self.triggers, SupervisorMsg::Replace, Box::new(t))
            .map_err(supervisor_gone)??;
        self.store
            .put_api_trigger(&name, &definition)
            .await
            .map_err(|e| ControlError::Internal(format!("could not store the trigger: {e}")))?;
        self.trigger(&name)
    }

    /// Removes a trigger added through the API, running or only stored (one that runs programs
    /// without `allow_commands`, or no longer validates, is stored but never started).
    pub async fn remove_trigger(&self, name: &str) -> Result<(), ControlError> {
        if self.registry.get(name).is_none() {
            let stored = self.store.api_triggers()?;
            if !stored.iter().any(|t| t["name"] == name) {
                return Err(ControlError::NoTrigger(name.to_string()));
            }
            self.store.remove_api_trigger(name).await?;
            return Ok(());
        }
        self.refuse_config_owned(name, "remove")?;
        ractor::call!(self.triggers, SupervisorMsg::Remove, name.to_string())
            .map_err(supervisor_gone)??;
        self.store.remove_api_trigger(name).await?;
        Ok(())
    }

    /// Enables or disables a trigger (remembered across restarts); a disabled webhook or route
    /// answers 503.
    pub async fn set_enabled(
        &self,
        name: &str,
        enabled: bool,
    ) -> Result<Arc<TriggerEntry>, ControlError> {
        self.trigger(name)?;
        ractor::call!(
            self.triggers,
            SupervisorMsg::SetEnabled,
            name.to_string(),
            enabled
        )
        .map_err(supervisor_gone)??;
        self.trigger(name)
    }

    /// Suspends a trigger (its events are accepted, their jobs parked) or resumes it. Resuming
    /// releases the parked jobs in arrival order; the number released comes back with it.
    pub async fn set_suspended(
        &self,
        name: &str,
        suspended: bool,
    ) -> Result<(Arc<TriggerEntry>, usize), ControlError> {
        self.trigger(name)?;
        let released = ractor::call!(
            self.triggers,
            SupervisorMsg::SetSuspended,
            name.to_string(),
            suspended
        )
        .map_err(supervisor_gone)??;
        Ok((self.trigger(name)?, released))
    }

    /// Drops a trigger's parked jobs (their status becomes `cancelled`); how many.
    pub async fn cancel_parked(&self, name: &str) -> Result<usize, ControlError> {
        self.trigger(name)?;
        self.intake
            .cancel_parked(name)
            .await
            .map_err(|e| ControlError::Internal(e.to_string()))
    }

    /// `config.toml` wins over the API: its triggers change there only.
    fn refuse_config_owned(&self, name: &str, verb: &'static str) -> Result<(), ControlError> {
        match self.registry.get(name) {
            Some(e) if e.origin == Origin::Config => Err(ControlError::DefinedInConfig {
                name: name.to_string(),
                verb,
            }),
            _ => Ok(()),
        }
    }

    /// Validates a trigger as `config.toml` would (against the configuration's runnables).
    fn validate(&self, t: &TriggerConfig) -> Result<(), ControlError> {
        let issues = self.config.validate_trigger(t, &mut RouteTable::default());
        if issues.is_empty() {
            return Ok(());
        }
        let text: Vec<String> = issues.iter().map(|(k, m)| format!("{k}: {m}")).collect();
        Err(ControlError::Invalid(text.join("; ")))
    }
}
