//! A trigger's saved state (`source_state` in the store: a schedule's `last_fire`/`paused`, a
//! poll's state, a Kafka group's positions) and resets of its position. What each kind allows
//! is its own answer to [`TriggerKind::saved_state`] and [`TriggerKind::reset`]
//! (actors/src/triggers/kind.rs); nothing here names a kind.
//!
//! [`TriggerKind::saved_state`]: crate::triggers::TriggerKind::saved_state
//! [`TriggerKind::reset`]: crate::triggers::TriggerKind::reset

use serde_json::Value;

use super::handle::{ControlError, ServiceHandle};
use crate::triggers::kind::ResetOutcome;
use crate::triggers::SavedState;

/// A trigger's saved state: `None` when nothing was saved yet.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedStateOf {
    /// The trigger's kind (`schedule`, `poll`, `kafka`, ...).
    pub kind: &'static str,
    pub state: Option<Value>,
}

impl ServiceHandle {
    /// The saved state of a trigger whose kind keeps one.
    pub fn saved_state(&self, name: &str) -> Result<SavedStateOf, ControlError> {
        let (kind, how) = self.state_rules(name)?;
        if matches!(how, SavedState::None) {
            return Err(ControlError::NoSavedState {
                trigger: name.to_string(),
                kind,
            });
        }
        Ok(SavedStateOf {
            kind,
            state: self.store.source_state(name)?,
        })
    }

    /// Sets a trigger's saved state (flushed before this returns). A kind that patches takes
    /// the fields given and keeps the others (a schedule's `{"paused": false}` keeps its
    /// `last_fire`); a kind that replaces takes `new` whole (a poll's). Kinds whose state moves
    /// only through their own operations (Kafka: resets) refuse.
    pub async fn put_saved_state(
        &self,
        name: &str,
        new: Value,
    ) -> Result<SavedStateOf, ControlError> {
        let (kind, how) = self.state_rules(name)?;
        let state = match how {
            SavedState::None => {
                return Err(ControlError::NoSavedState {
                    trigger: name.to_string(),
                    kind,
                })
            }
            SavedState::ReadOnly => {
                return Err(ControlError::ReadOnlyState {
                    trigger: name.to_string(),
                    kind,
                })
            }
            SavedState::Replace => {
                self.store.put_source_state(name, &new).await?;
                new
            }
            SavedState::Patch(patch) => self
                .store
                .update_source_state(name, |saved| patch(name, saved, &new))
                .await?
                .map_err(ControlError::Invalid)?,
        };
        Ok(SavedStateOf {
            kind,
            state: Some(state),
        })
    }

    /// Moves a trigger's position in its source (`request` is the kind's JSON, e.g. Kafka's
    /// `{"to": "earliest"}`): applied, or recorded to apply when the source can.
    pub async fn reset(&self, name: &str, request: Value) -> Result<ResetOutcome, ControlError> {
        let entry = self.trigger(name)?;
        let kind = entry.config.spec.kind();
        let Some(reset) = kind.reset() else {
            return Err(ControlError::NoReset {
                trigger: name.to_string(),
                kind: entry.runtime.kind(),
            });
        };
        reset
            .reset(&self.store, name, request)
            .await
            .map_err(ControlError::BadRequest)
    }

    fn state_rules(&self, name: &str) -> Result<(&'static str, SavedState), ControlError> {
        let entry = self.trigger(name)?;
        let how = entry.config.spec.kind().saved_state();
        Ok((entry.runtime.kind(), how))
    }
}
