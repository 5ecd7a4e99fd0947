//! A schedule's saved state (`{"last_fire": <RFC 3339>, "paused": bool}` in the sled tree
//! `source_state`) and the ways it changes.
//!
//! The actor and an operator (`PUT /api/triggers/{name}/state`) both change it, each one field
//! at a time, through the store's atomic update: the actor advances `last_fire` or sets
//! `paused`, the operator sets the fields given and keeps the others. So resuming with
//! `{"paused": false}` never erases `last_fire`, which a restart needs to know which fire times
//! it owes.

use chrono::{DateTime, Utc};
use ractor::ActorProcessingErr;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{rfc3339, TimedState};

/// The saved state of a schedule trigger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fire: Option<DateTime<Utc>>,
    #[serde(default)]
    pub paused: bool,
}

const SHAPE: &str = r#"a schedule's state is `{"last_fire": "<RFC 3339>", "paused": false}`; give the fields to change"#;

impl ScheduleState {
    /// Reads the saved state; a value that does not parse is an error naming the trigger, so
    /// that a bad value is not silently replaced.
    pub fn parse(trigger: &str, v: Option<Value>) -> Result<Self, String> {
        match v {
            None | Some(Value::Null) => Ok(Self::default()),
            Some(v) => serde_path_to_error::deserialize(v).map_err(|e| {
                format!(
                    "saved state of schedule `{trigger}` is invalid: {}: {}",
                    e.path(),
                    e.inner()
                )
            }),
        }
    }

    /// An operator's change: the fields in `patch` replace the saved ones, the others stay.
    /// `last_fire` cannot be removed (the restart would no longer know which fire times it
    /// owes); a saved value that does not parse is replaced by the fields given.
    pub fn patch(trigger: &str, saved: Option<Value>, patch: &Value) -> Result<Value, String> {
        let Value::Object(fields) = patch else {
            return Err(SHAPE.into());
        };
        let mut state = Self::parse(trigger, saved).unwrap_or_default();
        for (key, value) in fields {
            match (key.as_str(), value) {
                ("last_fire", Value::String(s)) => {
                    let t = DateTime::parse_from_rfc3339(s).map_err(|e| {
                        format!("`last_fire` `{s}` is not an RFC 3339 time ({e}), e.g. \"2026-03-29T00:30:00Z\"")
                    })?;
                    state.last_fire = Some(t.with_timezone(&Utc));
                }
                ("last_fire", Value::Null) => {
                    return Err("`last_fire` cannot be removed: a restart counts the fire times after it as owed; set a time instead".into());
                }
                ("last_fire", _) => {
                    return Err(
                        "`last_fire` must be an RFC 3339 time, e.g. \"2026-03-29T00:30:00Z\""
                            .into(),
                    );
                }
                ("paused", Value::Bool(b)) => state.paused = *b,
                ("paused", _) => return Err("`paused` must be true or false".into()),
                (other, _) => return Err(format!("unknown field `{other}`: {SHAPE}")),
            }
        }
        serde_json::to_value(&state).map_err(|e| e.to_string())
    }
}

/// A fire time was dealt with (run, skipped or buffered): the saved time never goes back, or
/// a restart would owe the later ones again.
pub(super) fn advance(s: &mut ScheduleState, at: DateTime<Utc>) {
    s.last_fire = Some(s.last_fire.map_or(at, |l| l.max(at)));
}

impl TimedState {
    pub(super) fn load_schedule_state(&self) -> Result<ScheduleState, ActorProcessingErr> {
        let v = self.source.intake.store.source_state(self.name())?;
        Ok(ScheduleState::parse(self.name(), v)?)
    }

    /// Changes the saved state atomically and flushes it: an operator may be changing another
    /// field at the same moment.
    pub(super) async fn update_schedule_state(
        &self,
        change: impl Fn(&mut ScheduleState),
    ) -> Result<ScheduleState, ActorProcessingErr> {
        let name = self.name();
        let saved = self
            .source
            .intake
            .store
            .update_source_state(name, |current| {
                let mut s = ScheduleState::parse(name, current)?;
                change(&mut s);
                serde_json::to_value(&s).map_err(|e| e.to_string())
            })
            .await??;
        let s: ScheduleState = serde_json::from_value(saved)?;
        self.show_schedule_state(&s);
        Ok(s)
    }

    pub(super) fn show_schedule_state(&self, s: &ScheduleState) {
        self.status(|st| {
            st["last_fire"] = json!(s.last_fire.map(rfc3339));
            st["paused"] = json!(s.paused);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_changes_the_fields_given_and_keeps_the_others() {
        let saved = json!({"last_fire": "2026-03-29T00:30:00Z", "paused": true});
        let v = ScheduleState::patch("t", Some(saved.clone()), &json!({"paused": false})).unwrap();
        assert_eq!(
            v,
            json!({"last_fire": "2026-03-29T00:30:00Z", "paused": false})
        );
        let v = ScheduleState::patch(
            "t",
            Some(saved.clone()),
            &json!({"last_fire": "2026-03-30T02:30:00+02:00"}),
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"last_fire": "2026-03-30T00:30:00Z", "paused": true})
        );
        let v = ScheduleState::patch("t", None, &json!({"paused": true})).unwrap();
        assert_eq!(v, json!({"paused": true}));
        for (bad, says) in [
            (json!({"last_fire": null}), "cannot be removed"),
            (json!({"last_fire": "yesterday"}), "`last_fire` `yesterday`"),
            (json!({"last_fire": 5}), "`last_fire` must be"),
            (json!({"paused": "no"}), "`paused` must be"),
            (json!({"pause": true}), "unknown field `pause`"),
            (json!([1]), "give the fields to change"),
        ] {
            let e = ScheduleState::patch("t", Some(saved.clone()), &bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
