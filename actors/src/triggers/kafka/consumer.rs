//! The consumer thread: subscribe, take messages in batches, flow control by pausing
//! partitions, commits, resets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use serde_json::{json, Value};

use super::config::{describe_config_error, KafkaConfig};
use super::context::KafkaContext;
use super::event::kafka_event;
use super::offsets::{
    KafkaState, PartitionKey, PartitionTrack, ResetPoint, ResetTo, Settled, Tracking,
};
pub(super) use crate::triggers::source::set_status_field;

use super::source::{Receipt, Unanswered};
use crate::triggers::source::Pulled;
use crate::triggers::SourceArgs;

/// Where the consumer thread hands its batches to the trigger's task (at most one waiting),
/// and the count of handed messages not yet answered by the intake.
pub(super) type HandOver = (
    tokio::sync::mpsc::Sender<Vec<Pulled<Receipt>>>,
    Arc<Unanswered>,
);

/// How long the thread waits for the trigger's task to take the batch waiting for it, before
/// it looks again (it reads nothing more meanwhile: nothing is buffered beyond one batch).
const HAND_OVER_WAIT: Duration = Duration::from_millis(1);
/// How long `max_in_flight` may stay reached before the partitions are paused.
const PAUSE_AFTER: Duration = Duration::from_millis(200);

/// The consumer thread: subscribe, read messages in batches and hand them to the trigger's
/// task, commit finished positions, apply resets, until stopped (Ok) or the consumer cannot go
/// on (Err).
pub(super) fn consume(
    args: &SourceArgs,
    stop: &AtomicBool,
    handle: tokio::runtime::Handle,
    tracking: Arc<Mutex<Tracking>>,
    hand_over: HandOver,
) -> Result<(), String> {
    let rt = &args.runtime;
    let crate::triggers::TriggerSpec::Kafka(cfg) = &args.trigger.spec else {
        return Err("not a kafka trigger".into());
    };
    let group = cfg.group_id(rt.name());
    let (settle_tx, settle_rx) = mpsc::channel::<Settled>();
    let context = KafkaContext {
        trigger: rt.name().to_string(),
        group: group.clone(),
        store: args.intake.store.clone(),
        handle: handle.clone(),
        tracking,
        settled: Mutex::new(settle_rx),
        lost: Mutex::new(None),
        drain_timeout: cfg.rebalance_drain_timeout,
    };
    for (key, file) in [
        ("security.ca_file", &cfg.security.ca_file),
        ("security.cert_file", &cfg.security.cert_file),
        ("security.key_file", &cfg.security.key_file),
    ] {
        if let Some(f) = file {
            std::fs::metadata(f).map_err(|e| format!("{key}: cannot read `{f}`: {e}"))?;
        }
    }
    let consumer: BaseConsumer<KafkaContext> = cfg
        .client_config(rt.name())
        .create_with_context(context)
        .map_err(|e| {
            format!(
                "cannot create the Kafka consumer: {}",
                describe_config_error(&e)
            )
        })?;
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| format!("cannot subscribe to {}: {e}", cfg.topics.join(",")))?;
    set_status_field(rt, "group_id", json!(group));
    set_status_field(rt, "connected", json!(false));
    tracing::info!(trigger = rt.name(), group = %group, topics = ?cfg.topics, "kafka consumer subscribed");

    let mut run = ConsumerLoop {
        args,
        cfg,
        group,
        consumer: &consumer,
        settle_tx,
        handle,
        hand_over,
        held: Vec::new(),
        paused: false,
        full_since: None,
        last_commit: Instant::now(),
        last_reset_check: Instant::now() - Duration::from_secs(1),
        suspect: None,
    };
    let result = run.run(stop);
    // Leave cleanly: commit what finished, then leave the group at once (rather than letting
    // the next member wait for the session timeout).
    let ctx = consumer.context().clone();
    ctx.drain_settled();
    if !consumer.assignment_lost() {
        ctx.commit(&consumer, None, CommitMode::Sync);
    }
    consumer.unsubscribe();
    set_status_field(rt, "assigned", json!([]));
    result
}

struct ConsumerLoop<'a> {
    args: &'a SourceArgs,
    cfg: &'a KafkaConfig,
    group: String,
    consumer: &'a BaseConsumer<KafkaContext>,
    settle_tx: mpsc::Sender<Settled>,
    handle: tokio::runtime::Handle,
    hand_over: HandOver,
    /// Messages read and not yet handed over (the task was still taking the last batch).
    held: Vec<Pulled<Receipt>>,
    paused: bool,
    /// Since when `max_in_flight` has been reached without the partitions being paused.
    full_since: Option<Instant>,
    last_commit: Instant,
    last_reset_check: Instant,
    /// Since when connection errors were seen without a successful broker round trip.
    suspect: Option<Instant>,
}

impl ConsumerLoop<'_> {
    fn ctx(&self) -> &KafkaContext {
        self.consumer.context()
    }

    fn run(&mut self, stop: &AtomicBool) -> Result<(), String> {
        let rt = &self.args.runtime;
        let mut epoch = KafkaState::load(&self.args.intake.store, rt.name())?.epoch;
        while !stop.load(Ordering::Acquire) {
            if let Some(e) = self.ctx().take_lost() {
                return Err(e);
            }
            self.ctx().drain_settled();
            self.check_brokers()?;
            if self.last_commit.elapsed() >= self.cfg.commit_interval {
                self.ctx().commit(self.consumer, None, CommitMode::Async);
                self.last_commit = Instant::now();
                self.publish_status();
            }
            if self.flow_control() {
                std::thread::sleep(HAND_OVER_WAIT);
                continue;
            }
            if self.hand_over.0.capacity() == 0 && !self.paused {
                // The task is taking the last batch and there is room for more jobs: wait for
                // it rather than read ahead. (When full, the partitions are paused and polling
                // goes on below, for the group's rebalances.)
                std::thread::sleep(HAND_OVER_WAIT);
                continue;
            }
            let mut batch = Vec::new();
            let limit = self.cfg.batch.min(self.free_slots().max(1));
            let mut wait = Duration::from_millis(100);
            while batch.len() < limit {
                match self.consumer.poll(wait) {
                    None => break,
                    Some(Ok(m)) => batch.push(m),
                    Some(Err(e)) => self.consumer_error(e)?,
                }
                wait = Duration::ZERO;
            }
            if self.reset_due() {
                // Messages polled before the reset's seek belong to the old positions.
                if let Some(new_epoch) = self.apply_reset()? {
                    epoch = new_epoch;
                    batch.clear();
                    self.held.clear();
                }
            }
            if !batch.is_empty() {
                self.take(batch, epoch);
            }
            self.hand_over_held(stop);
        }
        Ok(())
    }

    /// Hands the held messages to the task when it has taken the previous batch, then waits
    /// for the intake's answers (see `Unanswered`).
    fn hand_over_held(&mut self, stop: &AtomicBool) {
        if self.held.is_empty() {
            return;
        }
        let (tx, unanswered) = &self.hand_over;
        let n = self.held.len();
        unanswered.add(n);
        match tx.try_send(std::mem::take(&mut self.held)) {
            Ok(()) => unanswered.wait(stop),
            Err(tokio::sync::mpsc::error::TrySendError::Full(batch)) => {
                unanswered.remove(n);
                self.held = batch;
            }
            // The task is gone (stopping): what was read stays uncommitted.
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => unanswered.remove(n),
        }
    }

    /// After connection errors, asks the cluster for metadata: when that fails too, the
    /// brokers are gone and the trigger fails (to back off and reconnect from scratch).
    fn check_brokers(&mut self) -> Result<(), String> {
        let Some(since) = self.suspect else {
            return Ok(());
        };
        if since.elapsed() < Duration::from_secs(1) {
            return Ok(());
        }
        match self.consumer.fetch_metadata(None, Duration::from_secs(3)) {
            Ok(_) => {
                self.suspect = None;
                Ok(())
            }
            Err(e) => Err(format!(
                "Kafka brokers {} unreachable: {e}",
                self.cfg.brokers.join(",")
            )),
        }
    }

    fn free_slots(&self) -> usize {
        let rt = &self.args.runtime;
        rt.max_in_flight
            .saturating_sub(rt.in_flight.load(Ordering::Acquire))
    }

    /// At `max_in_flight`: first stops polling for up to [`PAUSE_AFTER`] (returns `true`: the
    /// caller waits), then pauses the assignment so that polling can go on for the group;
    /// resumes when slots free up. Pausing purges librdkafka's prefetched messages, which
    /// then cost a fetch round trip after the resume: fast jobs free their slots before that.
    fn flow_control(&mut self) -> bool {
        let full = self.free_slots() == 0;
        if !full {
            self.full_since = None;
        } else if !self.paused {
            let since = *self.full_since.get_or_insert_with(Instant::now);
            if since.elapsed() < PAUSE_AFTER {
                return true;
            }
        }
        if full == self.paused && !full {
            return false;
        }
        let Ok(assignment) = self.consumer.assignment() else {
            return false;
        };
        if full {
            // Re-paused every round: partitions assigned meanwhile start unpaused.
            if let Err(e) = self.consumer.pause(&assignment) {
                tracing::warn!(trigger = self.args.runtime.name(), error = %e, "cannot pause partitions");
            }
            if !self.paused {
                tracing::debug!(
                    trigger = self.args.runtime.name(),
                    "max_in_flight reached; partitions paused"
                );
                self.paused = true;
                set_status_field(&self.args.runtime, "paused", json!(true));
            }
        } else {
            if let Err(e) = self.consumer.resume(&assignment) {
                tracing::warn!(trigger = self.args.runtime.name(), error = %e, "cannot resume partitions");
            }
            self.paused = false;
            set_status_field(&self.args.runtime, "paused", json!(false));
        }
        false
    }

    /// Consumer errors that name a missing or forbidden topic stop the trigger (so the status
    /// says why); the rest are librdkafka's to recover from.
    fn consumer_error(&mut self, e: KafkaError) -> Result<(), String> {
        match e.rdkafka_error_code() {
            // librdkafka reconnects on its own, silently; whether the brokers are really gone
            // (then the trigger backs off, visibly) is checked in `check_brokers`.
            Some(
                RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve,
            ) => {
                self.suspect.get_or_insert_with(Instant::now);
                Ok(())
            }
            Some(
                code @ (RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed),
            ) => Err(format!("Kafka: {code} ({})", self.cfg.topics.join(","))),
            _ if matches!(e, KafkaError::MessageConsumptionFatal(_)) => Err(format!("Kafka: {e}")),
            _ => {
                tracing::warn!(trigger = self.args.runtime.name(), error = %e, "Kafka consumer error");
                Ok(())
            }
        }
    }

    /// Turns polled messages into events, each pending in the tracking until the intake has
    /// answered for it and its jobs have settled.
    pub(super) fn take(&mut self, batch: Vec<BorrowedMessage<'_>>, epoch: u64) {
        let rt = &self.args.runtime;
        let mut tracking = self.consumer.context().tracking();
        for m in &batch {
            let key: PartitionKey = (Arc::from(m.topic()), m.partition());
            let generation = tracking.generation;
            let track = tracking
                .partitions
                .entry(key.clone())
                .or_insert_with(|| PartitionTrack::new(generation, None));
            track.take(m.offset());
            self.held.push(Pulled {
                event: kafka_event(rt.name(), &self.group, epoch, m),
                receipt: Receipt {
                    key,
                    generation: track.generation,
                    offset: m.offset(),
                    settled: self.settle_tx.clone(),
                },
            });
        }
    }

    fn reset_due(&mut self) -> bool {
        let fresh = std::mem::take(&mut self.ctx().tracking().newly_assigned);
        if fresh || self.last_reset_check.elapsed() >= Duration::from_millis(200) {
            self.last_reset_check = Instant::now();
            return true;
        }
        false
    }

    /// Applies a requested reset to the assigned partitions: seek, commit, new epoch. Returns
    /// the new epoch when one was applied.
    fn apply_reset(&mut self) -> Result<Option<u64>, String> {
        let rt = &self.args.runtime;
        let store = &self.args.intake.store;
        let mut state = KafkaState::load(store, rt.name())?;
        let Some(request) = state.reset.clone() else {
            return Ok(None);
        };
        let assignment = self
            .consumer
            .assignment()
            .map_err(|e| format!("cannot read the assignment: {e}"))?;
        if assignment.count() == 0 {
            return Ok(None); // applied when partitions are assigned
        }
        let timeout = Duration::from_secs(10);
        let mut targets: Vec<(String, i32, i64)> = Vec::new();
        let by_time = match &request.to {
            ResetTo::Timestamp { timestamp } => {
                let mut q = TopicPartitionList::new();
                for e in assignment.elements() {
                    let _ = q.add_partition_offset(
                        e.topic(),
                        e.partition(),
                        Offset::Offset(*timestamp),
                    );
                }
                Some(
                    self.consumer
                        .offsets_for_times(q, timeout)
                        .map_err(|e| format!("reset: cannot look up offsets by time: {e}"))?
                        .to_topic_map(),
                )
            }
            _ => None,
        };
        for e in assignment.elements() {
            let (topic, partition) = (e.topic().to_string(), e.partition());
            let (low, high) = self
                .consumer
                .fetch_watermarks(&topic, partition, timeout)
                .map_err(|err| {
                    format!("reset: cannot read {topic}/{partition}'s offsets: {err}")
                })?;
            let target = match &request.to {
                ResetTo::Named(ResetPoint::Earliest) => Some(low),
                ResetTo::Named(ResetPoint::Latest) => Some(high),
                ResetTo::Offset {
                    offset,
                    topic: t,
                    partition: p,
                } => (t.as_deref().is_none_or(|t| t == topic) && p.is_none_or(|p| p == partition))
                    .then_some((*offset).clamp(low, high)),
                ResetTo::Timestamp { .. } => Some(
                    by_time
                        .as_ref()
                        .and_then(|m| m.get(&(topic.clone(), partition)))
                        .and_then(|o| o.to_raw())
                        .filter(|o| *o >= 0)
                        .unwrap_or(high),
                ),
            };
            if let Some(t) = target {
                targets.push((topic, partition, t));
            }
        }
        let mut seek = TopicPartitionList::new();
        let mut commit = TopicPartitionList::new();
        for (topic, partition, offset) in &targets {
            let _ = seek.add_partition_offset(topic, *partition, Offset::Offset(*offset));
            let _ = commit.add_partition_offset(topic, *partition, Offset::Offset(*offset));
        }
        let sought = self
            .consumer
            .seek_partitions(seek, timeout)
            .map_err(|e| format!("reset: seek failed: {e}"))?;
        for e in sought.elements() {
            if let Err(err) = e.error() {
                return Err(format!(
                    "reset: seek of {}/{} failed: {err}",
                    e.topic(),
                    e.partition()
                ));
            }
        }
        // Jobs still running from before the reset no longer move these positions.
        {
            let mut tracking = self.ctx().tracking();
            tracking.generation += 1;
            let generation = tracking.generation;
            for (topic, partition, offset) in &targets {
                tracking.partitions.insert(
                    (Arc::from(topic.as_str()), *partition),
                    PartitionTrack::new(generation, Some(*offset)),
                );
            }
        }
        self.consumer
            .commit(&commit, CommitMode::Sync)
            .map_err(|e| format!("reset: commit failed: {e}"))?;
        let applied: Vec<Value> = targets
            .iter()
            .map(|(t, p, o)| json!({"topic": t, "partition": p, "offset": o}))
            .collect();
        state.group_id = self.group.clone();
        state.epoch += 1;
        for (topic, partition, offset) in &targets {
            state
                .positions
                .entry(topic.clone())
                .or_default()
                .insert(*partition, *offset);
        }
        let last = json!({
            "id": request.id,
            "to": request.to,
            "applied_at": chrono::Utc::now().to_rfc3339(),
            "partitions": applied,
        });
        state.reset = None;
        state.last_reset = Some(last.clone());
        let v = serde_json::to_value(&state).map_err(|e| e.to_string())?;
        self.handle
            .block_on(store.put_source_state(rt.name(), &v))
            .map_err(|e| format!("reset: cannot save positions: {e}"))?;
        set_status_field(rt, "last_reset", last);
        tracing::info!(trigger = rt.name(), partitions = ?targets, epoch = state.epoch, "kafka offsets reset");
        Ok(Some(state.epoch))
    }

    /// `{group_id, connected, paused, assigned: [{topic, partition, committed, next,
    /// pending}]}` for the admin API.
    fn publish_status(&self) {
        let rt = &self.args.runtime;
        let assigned: Vec<Value> = {
            let t = self.ctx().tracking();
            let mut v: Vec<_> = t
                .partitions
                .iter()
                .map(|((topic, partition), p)| {
                    json!({
                        "topic": &**topic,
                        "partition": partition,
                        "committed": p.committed,
                        "next": p.next,
                        "pending": p.pending.len(),
                    })
                })
                .collect();
            v.sort_by_key(|x| (x["topic"].to_string(), x["partition"].as_i64()));
            v
        };
        set_status_field(rt, "connected", json!(true));
        set_status_field(rt, "error", Value::Null);
        set_status_field(rt, "assigned", json!(assigned));
    }
}
