//! `schedule` triggers (a job per cron fire time) and the timer actor that `poll` triggers
//! share with them.
//!
//! Event (`kind = "schedule"`): `scheduled_for` (RFC 3339 in the trigger's zone), `fired_at`,
//! `timezone`, `catch_up` (true for a fire time run after downtime) and `args` (the static
//! args; the default mapping makes them the job's args). Event id: `schedule:<trigger>:<fire
//! time in UTC>`, so a redelivered fire time is deduplicated.
//!
//! Saved state (sled tree `source_state`, see `schedule/state.rs`): `{"last_fire": <RFC 3339>,
//! "paused": bool}`. The fire time is written after its jobs are durably queued: a crash in
//! between makes the restart owe it again, and that second firing is dropped by the dedup tree
//! (same event id), so a fire time is neither lost nor repeated.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::cron::CronSpec;
use super::poll::PollWork;
use crate::model::ack::AckHandle;
use crate::model::event::Event;
use crate::model::job::JobOutcome;
use crate::preprocess::DefaultArgs;
use crate::triggers::http::RouteTable;
use crate::triggers::kind::{SavedState, SpawnFuture, TriggerKind};
use crate::triggers::{Accepted, SourceArgs};

mod state;
use state::advance;
pub use state::ScheduleState;

/// What to do with a fire time while the previous run is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Skip it (counted and logged).
    #[default]
    Skip,
    /// Keep one: it runs when the running ones have finished; further ones are skipped.
    BufferOne,
    /// Run it anyway.
    AllowAll,
}

pub(crate) fn utc_name() -> String {
    "UTC".into()
}

fn one_minute() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Cron expression: `sec min hour dom month dow [year]`, 5 fields, or `@hourly` etc.
    pub cron: String,
    /// IANA zone the expression is read in.
    #[serde(default = "utc_name")]
    pub timezone: String,
    /// Static job args (given in the event as `args`).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub args: Value,
    /// Each fire is delayed by a random duration up to this.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub jitter: Option<Duration>,
    #[serde(default)]
    pub overlap: Overlap,
    /// After downtime, fire times missed within this window run once each, oldest first.
    #[serde(default = "one_minute", with = "humantime_serde")]
    pub catch_up_window: Duration,
    /// Stop firing after a failed (dead-lettered) run, until `paused` is set back to false in
    /// the trigger's state.
    #[serde(default)]
    pub pause_on_failure: bool,
}

impl ScheduleConfig {
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        if let Err(issue) = CronSpec::parse(&self.cron, &self.timezone) {
            issues.push(issue);
        }
        issues
    }

    pub fn endpoint(&self) -> String {
        format!("cron `{}` ({})", self.cron, self.timezone)
    }
}

// ---------------------------------------------------------------------------------------------
// The timer actor shared by `schedule` and `poll`

pub enum TimedMsg {
    /// The timer for this fire time has gone off.
    Fire(DateTime<Utc>),
    /// A job started by this trigger has settled.
    Settled { ok: bool },
    /// A failed poll's backoff has passed.
    RetryPoll { at: DateTime<Utc>, attempt: u32 },
}

/// What happens at a fire time.
pub enum Work {
    Schedule(ScheduleConfig),
    Poll(Box<PollWork>),
}

pub struct TimedArgs {
    pub source: SourceArgs,
    pub work: Work,
}

pub struct TimedState {
    pub(crate) source: SourceArgs,
    pub(crate) work: Work,
    pub(crate) cron: CronSpec,
    overlap: Overlap,
    jitter: Option<Duration>,
    /// Jobs of this trigger not yet settled (fed by their AckHandle callbacks).
    pub(crate) running: usize,
    buffered: Option<DateTime<Utc>>,
}

pub struct TimedSource;

/// Spawns the timer actor of a schedule or poll trigger.
pub(crate) fn spawn(args: SourceArgs, work: Work, supervisor: ractor::ActorCell) -> SpawnFuture {
    Box::pin(async move {
        let (actor, _) = Actor::spawn_linked(
            None,
            TimedSource,
            TimedArgs { source: args, work },
            supervisor,
        )
        .await?;
        Ok(actor.get_cell())
    })
}

impl TriggerKind for ScheduleConfig {
    fn validate(&self, _trigger: &str, _routes: &mut RouteTable) -> Vec<(String, String)> {
        ScheduleConfig::validate(self)
    }

    fn endpoint(&self, _trigger: &str) -> String {
        ScheduleConfig::endpoint(self)
    }

    /// A schedule's static args.
    fn default_args(&self) -> DefaultArgs {
        |event| event.get("args").cloned().unwrap_or_else(|| json!({}))
    }

    fn spawn_source(&self, args: SourceArgs, supervisor: ractor::ActorCell) -> Option<SpawnFuture> {
        Some(spawn(args, Work::Schedule(self.clone()), supervisor))
    }

    fn saved_state(&self) -> SavedState {
        SavedState::Patch(ScheduleState::patch)
    }

    fn timed(&self) -> bool {
        true
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Actor for TimedSource {
    type Msg = TimedMsg;
    type State = TimedState;
    type Arguments = TimedArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<TimedMsg>,
        args: TimedArgs,
    ) -> Result<TimedState, ActorProcessingErr> {
        let (expr, tz, overlap, jitter) = match &args.work {
            Work::Schedule(c) => (c.cron.as_str(), c.timezone.as_str(), c.overlap, c.jitter),
            Work::Poll(p) => (
                p.config.cron.as_str(),
                p.config.timezone.as_str(),
                p.config.overlap,
                p.config.jitter,
            ),
        };
        let cron = CronSpec::parse(expr, tz).map_err(|(k, m)| format!("{k}: {m}"))?;
        Ok(TimedState {
            source: args.source,
            work: args.work,
            cron,
            overlap,
            jitter,
            running: 0,
            buffered: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<TimedMsg>,
        state: &mut TimedState,
    ) -> Result<(), ActorProcessingErr> {
        let now = Utc::now();
        if let Work::Schedule(c) = &state.work {
            let window = c.catch_up_window;
            state.catch_up(&myself, now, window).await?;
        }
        state.arm(&myself, now);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<TimedMsg>,
        msg: TimedMsg,
        state: &mut TimedState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TimedMsg::Fire(at) => {
                if Utc::now() < at {
                    // The wall clock lags the timer (clock adjustment): wait for the fire time.
                    state.arm_at(&myself, at, false);
                    return Ok(());
                }
                state.fire(&myself, at).await?;
                state.arm(&myself, at);
            }
            TimedMsg::Settled { ok } => {
                state.running = state.running.saturating_sub(1);
                let n = state.running;
                state.status(|s| s["running"] = json!(n));
                if !ok {
                    state.on_failure().await?;
                }
                if state.running == 0 {
                    if let Some(at) = state.buffered.take() {
                        state.run(&myself, at, false).await?;
                    }
                }
            }
            TimedMsg::RetryPoll { at, attempt } => {
                if let Work::Poll(_) = &state.work {
                    state.poll(&myself, at, attempt).await?;
                }
            }
        }
        Ok(())
    }
}

impl TimedState {
    pub(crate) fn name(&self) -> &str {
        self.source.runtime.name()
    }

    /// Updates the trigger's status object (shown by the admin API under `schedule`).
    pub(crate) fn status(&self, f: impl FnOnce(&mut Value)) {
        let mut s = self
            .source
            .runtime
            .source_status
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !s.is_object() {
            *s = json!({});
        }
        f(&mut s);
    }

    pub(crate) fn bump(&self, counter: &str, by: u64) {
        self.status(|s| {
            let n = s[counter].as_u64().unwrap_or(0) + by;
            s[counter] = json!(n);
        });
    }

    /// Sets the timer for the first fire time after `after`.
    fn arm(&self, myself: &ActorRef<TimedMsg>, after: DateTime<Utc>) {
        match self.cron.next_after(after) {
            Some(next) => self.arm_at(myself, next, true),
            None => {
                tracing::warn!(
                    trigger = self.name(),
                    "cron expression has no further fire time"
                );
                self.status(|s| s["next_fires"] = json!([]));
            }
        }
    }

    fn arm_at(&self, myself: &ActorRef<TimedMsg>, at: DateTime<Utc>, jitter: bool) {
        let mut delay = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        if jitter {
            if let Some(j) = self.jitter.filter(|j| !j.is_zero()) {
                delay += j.mul_f64(rand::random::<f64>());
            }
        }
        let next: Vec<String> = self
            .cron
            .upcoming(at - chrono::Duration::milliseconds(1), 5)
            .into_iter()
            .map(|t| t.with_timezone(&self.cron.timezone()).to_rfc3339())
            .collect();
        self.status(|s| s["next_fires"] = json!(next));
        myself.send_after(delay, move || TimedMsg::Fire(at));
    }

    /// Runs the fire times missed while millgate was down: those within `window` once each,
    /// oldest first (whatever `overlap` says: they are owed); older ones are counted as missed.
    async fn catch_up(
        &mut self,
        myself: &ActorRef<TimedMsg>,
        now: DateTime<Utc>,
        window: Duration,
    ) -> Result<(), ActorProcessingErr> {
        let saved = self.load_schedule_state()?;
        self.show_schedule_state(&saved);
        let Some(last) = saved.last_fire else {
            // First start: nothing is owed yet. Anchor the schedule now, so that a crash
            // before the first fire time is saved still leaves the restart owing it.
            self.update_schedule_state(|s| {
                s.last_fire.get_or_insert(now);
            })
            .await?;
            return Ok(());
        };
        let horizon = now - chrono::Duration::from_std(window).unwrap_or_default();
        let mut missed = 0u64;
        let mut owed = Vec::new();
        let mut cursor = last;
        while let Some(t) = self.cron.next_after(cursor) {
            if t > now {
                break;
            }
            if t < horizon {
                missed += 1;
            } else {
                owed.push(t);
            }
            cursor = t;
        }
        if missed > 0 {
            tracing::warn!(
                trigger = self.name(),
                missed,
                since = %rfc3339(last),
                "fire times missed outside the catch-up window; not run"
            );
            self.bump("missed", missed);
        }
        if saved.paused {
            if !owed.is_empty() {
                self.bump("skipped_paused", owed.len() as u64);
            }
            return Ok(());
        }
        if !owed.is_empty() {
            tracing::info!(
                trigger = self.name(),
                count = owed.len(),
                "running fire times missed within the catch-up window"
            );
        }
        for t in owed {
            self.dispatch(myself, t, true).await?;
        }
        Ok(())
    }

    /// A fire time has come: apply the pause and overlap policies, then run it.
    async fn fire(
        &mut self,
        myself: &ActorRef<TimedMsg>,
        at: DateTime<Utc>,
    ) -> Result<(), ActorProcessingErr> {
        let is_schedule = matches!(self.work, Work::Schedule(_));
        if is_schedule {
            // Read each time: an operator may have resumed it through the state API.
            let saved = self.load_schedule_state()?;
            if saved.paused {
                tracing::info!(trigger = self.name(), at = %rfc3339(at), "paused after a failed run; fire time skipped");
                self.bump("skipped_paused", 1);
                self.update_schedule_state(|s| advance(s, at)).await?;
                return Ok(());
            }
        }
        if self.running > 0 {
            match self.overlap {
                Overlap::AllowAll => {}
                Overlap::BufferOne if self.buffered.is_none() => {
                    tracing::info!(trigger = self.name(), at = %rfc3339(at), running = self.running, "previous run still going; fire time buffered");
                    self.buffered = Some(at);
                    self.status(|s| s["buffered"] = json!(rfc3339(at)));
                    return self.consumed(at).await;
                }
                Overlap::BufferOne | Overlap::Skip => {
                    tracing::info!(trigger = self.name(), at = %rfc3339(at), running = self.running, "previous run still going; fire time skipped (overlap)");
                    self.bump("skipped", 1);
                    return self.consumed(at).await;
                }
            }
        }
        self.run(myself, at, false).await
    }

    /// Records a fire time that was decided on without a job, so a restart does not owe it.
    async fn consumed(&self, at: DateTime<Utc>) -> Result<(), ActorProcessingErr> {
        if matches!(self.work, Work::Schedule(_)) {
            self.update_schedule_state(|s| advance(s, at)).await?;
        }
        Ok(())
    }

    async fn run(
        &mut self,
        myself: &ActorRef<TimedMsg>,
        at: DateTime<Utc>,
        catch_up: bool,
    ) -> Result<(), ActorProcessingErr> {
        self.status(|s| s["buffered"] = Value::Null);
        match self.work {
            Work::Schedule(_) => self.dispatch(myself, at, catch_up).await,
            Work::Poll(_) => self.poll(myself, at, 1).await,
        }
    }

    /// The AckHandle factory: each settled job reports back, for the overlap policy.
    pub(crate) fn settle_reporter(
        myself: &ActorRef<TimedMsg>,
    ) -> impl FnMut(crate::model::job::JobId) -> AckHandle {
        let me = myself.clone();
        move |_| {
            let me = me.clone();
            AckHandle::on_settle(move |outcome: &JobOutcome| {
                let ok = matches!(outcome, JobOutcome::Succeeded(_));
                // The actor may have been restarted meanwhile; then nobody is waiting.
                let _ = me.cast(TimedMsg::Settled { ok });
            })
        }
    }

    /// Counts the jobs an intake result will report back about.
    pub(crate) fn track(&mut self, accepted: &Accepted) {
        if let Accepted::Queued(ids) = accepted {
            self.running += ids.len();
        }
        self.status(|s| s["running"] = json!(self.running));
    }

    /// Hands the event to the intake (durable once it returns), then records the fire time.
    ///
    /// In this order nothing is lost or repeated: a crash after the jobs are queued but before
    /// the fire time is written makes the restart owe that time again, and the catch-up's
    /// event (same deterministic id, trigger + scheduled time) is dropped by the dedup tree.
    async fn dispatch(
        &mut self,
        myself: &ActorRef<TimedMsg>,
        at: DateTime<Utc>,
        catch_up: bool,
    ) -> Result<(), ActorProcessingErr> {
        let Work::Schedule(cfg) = &self.work else {
            return Ok(());
        };
        let tz = self.cron.timezone();
        let payload = json!({
            "kind": "schedule",
            "trigger": self.name(),
            "scheduled_for": at.with_timezone(&tz).to_rfc3339(),
            "fired_at": Utc::now().with_timezone(&tz).to_rfc3339(),
            "timezone": cfg.timezone,
            "catch_up": catch_up,
            "args": if cfg.args.is_null() { json!({}) } else { cfg.args.clone() },
        });
        let event =
            Event::deterministic(format!("schedule:{}:{}", self.name(), rfc3339(at)), payload);
        let rt = self.source.runtime.clone();
        let accepted = self
            .source
            .intake
            .accept(&rt, event, Self::settle_reporter(myself))
            .await
            .map_err(|e| format!("fire time {} not accepted: {e}", rfc3339(at)))?;
        tracing::info!(trigger = self.name(), at = %rfc3339(at), catch_up, result = ?accepted, "schedule fired");
        self.track(&accepted);
        // A buffered fire time runs after later ones were already skipped (and saved).
        self.update_schedule_state(|s| advance(s, at)).await?;
        Ok(())
    }

    /// A job of this trigger failed for good: pause if the trigger says so.
    async fn on_failure(&mut self) -> Result<(), ActorProcessingErr> {
        let Work::Schedule(cfg) = &self.work else {
            return Ok(());
        };
        if !cfg.pause_on_failure {
            return Ok(());
        }
        if !self.load_schedule_state()?.paused {
            tracing::warn!(
                trigger = self.name(),
                "a scheduled run failed; pausing (set `paused` to false in the trigger's state to resume)"
            );
            self.update_schedule_state(|s| s.paused = true).await?;
        }
        Ok(())
    }
}
