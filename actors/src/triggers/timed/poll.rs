//! `poll` triggers: on a cron schedule, a runnable (`poll_runnable`, from `[runnables]`) is
//! called with `{"state": <saved state or null>}` on stdin and answers
//! `{"items": [...], "state": <new state>}`.
//!
//! Each item becomes one event (`kind = "poll"`, fields `item`, `scheduled_for`, `fired_at`,
//! `timezone`), so one job for the trigger's `runnable` per item, through its preprocessor;
//! the default mapping makes the item the job's args. With `dedup_key` (a jq expression over
//! the item) the event id is `poll:<trigger>:<key>`, so an item seen again within the dedup
//! window is dropped; without it, every item is new.
//!
//! The new state is written to sled (and flushed) only after every item's job is durably
//! accepted: a crash in between makes the next poll see the old state, so items may repeat
//! (dropped by `dedup_key`) and none are lost. An empty `items` list creates no job and counts
//! as a skipped poll (its `state` is still saved). A failing poll runnable keeps the old state
//! and is retried with the trigger's retry backoff; malformed output (not an object, `items`
//! not an array) is logged, counted as `malformed_polls`, and leaves the state as it was. A
//! missing `state` key keeps the saved state.
//!
//! A state set through the admin API while a poll runs wins: the poll saves its new state only
//! if nobody wrote since it read the old one (the store's revision), otherwise its items are
//! queued as usual, its new state is dropped and the next poll starts from the value set.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::cron::CronSpec;
use super::schedule::{utc_name, Overlap, TimedMsg, TimedState, Work};
use crate::model::event::Event;
use crate::model::job::JobId;
use crate::preprocess::DefaultArgs;
use crate::preprocess::{KeyExpr, DEFAULT_JQ_TIMEOUT};
use crate::runners::{RunContext, Runnable};
use crate::triggers::http::RouteTable;
use crate::triggers::kind::{SavedState, SpawnFuture, TriggerKind};
use crate::triggers::SourceArgs;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    /// The runnable called to poll (a name under `[runnables]`).
    pub poll_runnable: String,
    pub cron: String,
    #[serde(default = "utc_name")]
    pub timezone: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub jitter: Option<Duration>,
    /// Applies to the jobs of the previous poll: with `skip`, no poll while they run.
    #[serde(default)]
    pub overlap: Overlap,
    /// jq over one item; its value is the item's identity for deduplication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
}

impl PollConfig {
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        if let Err(issue) = CronSpec::parse(&self.cron, &self.timezone) {
            issues.push(issue);
        }
        if self.poll_runnable.is_empty() {
            issues.push(("poll_runnable".into(), "must name a runnable".into()));
        }
        if let Some(k) = &self.dedup_key {
            if let Err(m) = KeyExpr::compile(k) {
                issues.push(("dedup_key".into(), m));
            }
        }
        issues
    }

    pub fn endpoint(&self) -> String {
        format!(
            "poll `{}` on cron `{}` ({})",
            self.poll_runnable, self.cron, self.timezone
        )
    }
}

impl TriggerKind for PollConfig {
    fn validate(&self, _trigger: &str, _routes: &mut RouteTable) -> Vec<(String, String)> {
        PollConfig::validate(self)
    }

    fn endpoint(&self, _trigger: &str) -> String {
        PollConfig::endpoint(self)
    }

    fn runnables(&self) -> Vec<(&str, &str)> {
        vec![("poll_runnable", &self.poll_runnable)]
    }

    fn timed(&self) -> bool {
        true
    }

    /// One item of the poll's result.
    fn default_args(&self) -> DefaultArgs {
        |event| event.get("item").cloned().unwrap_or_default()
    }

    fn spawn_source(&self, args: SourceArgs, supervisor: ractor::ActorCell) -> Option<SpawnFuture> {
        let work = match PollWork::new(self, &args) {
            Ok(w) => Work::Poll(Box::new(w)),
            Err(e) => {
                return Some(Box::pin(async move {
                    Err(ractor::SpawnErr::StartupFailed(e.into()))
                }))
            }
        };
        Some(super::schedule::spawn(args, work, supervisor))
    }

    fn saved_state(&self) -> SavedState {
        SavedState::Replace
    }
}

/// A poll trigger ready to run: its runnable and compiled dedup key.
pub struct PollWork {
    pub config: PollConfig,
    runnable: Arc<Runnable>,
    dedup_key: Option<KeyExpr>,
}

impl PollWork {
    pub fn new(config: &PollConfig, args: &SourceArgs) -> Result<Self, String> {
        let rc = args
            .runnables
            .get(&config.poll_runnable)
            .ok_or_else(|| format!("poll_runnable: unknown runnable `{}`", config.poll_runnable))?;
        let runnable = Runnable::from_config(rc).map_err(|e| format!("poll_runnable: {e}"))?;
        let dedup_key = config
            .dedup_key
            .as_deref()
            .map(KeyExpr::compile)
            .transpose()
            .map_err(|m| format!("dedup_key: {m}"))?;
        Ok(Self {
            config: config.clone(),
            runnable: Arc::new(runnable),
            dedup_key,
        })
    }
}

/// Checks the poll runnable's answer: (items, new state if given).
pub fn parse_output(out: Value) -> Result<(Vec<Value>, Option<Value>), String> {
    let Value::Object(mut map) = out else {
        return Err(format!(
            "poll output must be a JSON object `{{\"items\": [...], \"state\": ...}}`, got {}",
            short(&out)
        ));
    };
    let items = match map.remove("items") {
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(format!(
                "poll output `items` must be an array, got {}",
                short(&other)
            ))
        }
        None => return Err("poll output has no `items` array".into()),
    };
    Ok((items, map.remove("state")))
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 200 {
        let cut = (0..=200)
            .rev()
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{}…", &s[..cut])
    } else {
        s
    }
}

impl TimedState {
    /// One poll: call the runnable with the saved state, queue a job per item, then save the
    /// new state.
    pub(crate) async fn poll(
        &mut self,
        myself: &ActorRef<TimedMsg>,
        at: DateTime<Utc>,
        attempt: u32,
    ) -> Result<(), ActorProcessingErr> {
        let Work::Poll(work) = &self.work else {
            return Ok(());
        };
        let name = self.name().to_string();
        let store = self.source.intake.store.clone();
        // The revision read with the state: an operator's write while the poll runs wins.
        let (saved, revision) = store.source_state_at(&name)?;
        let saved = saved.unwrap_or(Value::Null);
        let ctx = RunContext {
            job_id: JobId::new(),
            trigger: name.clone(),
            event_id: format!("poll:{name}:{}", at.to_rfc3339()),
            attempt,
        };
        self.bump("polls", 1);
        // The runnable's own timeout applies (command: process group killed; http: request).
        let result = work.runnable.run(&ctx, &json!({ "state": saved })).await;
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                self.bump("poll_failures", 1);
                let msg = e.to_string();
                self.status(|s| s["last_poll_error"] = json!(msg));
                let retry = &self.source.runtime.retry;
                if attempt < retry.attempts {
                    let delay = retry.delay(attempt + 1);
                    tracing::warn!(trigger = %name, attempt, error = %e, retry_in = ?delay, "poll failed; state kept, retrying");
                    myself.send_after(delay, move || TimedMsg::RetryPoll {
                        at,
                        attempt: attempt + 1,
                    });
                } else {
                    tracing::warn!(trigger = %name, attempt, error = %e, "poll failed; state kept, retries used up until the next fire time");
                }
                return Ok(());
            }
        };
        let (items, new_state) = match parse_output(out) {
            Ok(parsed) => parsed,
            Err(msg) => {
                tracing::error!(trigger = %name, error = %msg, "malformed poll output; state kept");
                self.bump("malformed_polls", 1);
                self.status(|s| s["last_poll_error"] = json!(msg));
                return Ok(());
            }
        };
        self.status(|s| s["last_poll_error"] = Value::Null);
        if items.is_empty() {
            self.bump("skipped_polls", 1);
            tracing::debug!(trigger = %name, "poll returned no items");
        }
        let tz = self.cron.timezone();
        let fired_at = Utc::now().with_timezone(&tz).to_rfc3339();
        let rt = self.source.runtime.clone();
        let intake = self.source.intake.clone();
        let n = items.len();
        for item in items {
            let Work::Poll(work) = &self.work else {
                return Ok(());
            };
            // Paths and templates natively, other filters in the jq workers.
            let key = match &work.dedup_key {
                Some(expr) => match intake
                    .preprocessors
                    .key(expr, &item, DEFAULT_JQ_TIMEOUT)
                    .await
                {
                    Ok(key) => key,
                    Err(e) => {
                        tracing::warn!(trigger = %name, error = %e, "dedup_key failed on an item; it is not deduplicated");
                        None
                    }
                },
                None => None,
            };
            let payload = json!({
                "kind": "poll",
                "trigger": name,
                "item": item,
                "scheduled_for": at.with_timezone(&tz).to_rfc3339(),
                "fired_at": fired_at,
                "timezone": work.config.timezone,
            });
            let event = match key {
                Some(k) => Event::deterministic(format!("poll:{name}:{k}"), payload),
                None => Event::unique(&format!("poll:{name}"), payload),
            };
            // An error fails the actor before the state is written: the restart polls again
            // from the old state, and dedup_key drops the items already queued.
            let accepted = intake
                .accept(&rt, event, Self::settle_reporter(myself))
                .await
                .map_err(|e| format!("poll item not accepted; state not advanced: {e}"))?;
            self.track(&accepted);
        }
        crate::model::chaos::crash_point("poll_before_state_save");
        if let Some(new_state) = new_state {
            if new_state != saved
                && !store
                    .put_source_state_if(&name, revision, &new_state)
                    .await?
            {
                tracing::info!(trigger = %name, "the state was set while the poll ran; that value stays and the poll's new state is dropped");
                self.bump("state_overridden", 1);
            }
        }
        tracing::info!(trigger = %name, items = n, "poll done");
        Ok(())
    }
}
