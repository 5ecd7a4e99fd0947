//! The Kafka trigger in the connector shell (`triggers/source.rs`). librdkafka's calls block
//! (polls, rebalance callbacks, commits), so the consumer lives on a thread of its own
//! (`consumer.rs`) that keeps polling for the group's sake, pauses its partitions at
//! `max_in_flight`, and hands batches of at most the free slots to this side, waiting for
//! their answers before it reads on; this side takes them through the intake and records each
//! answer in the offset tracking the thread commits from (`offsets.rs`).
//!
//! Measured (`cargo bench --bench load -- --quick kafka`, same machine, same run of the raw
//! consumer): handing over without waiting for the answers let the thread size its next batch
//! on stale free slots, over-filled the trigger and ran at 0.046× the raw consumer; waiting
//! runs at 0.133× (the actor of its own before this shell: 0.118×).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::json;

use super::consumer::consume;
use super::offsets::{PartitionKey, Settled, Tracking};
use crate::model::ack::AckHandle;
use crate::triggers::source::{set_status_field, Pulled, Source, SourceContext};
use crate::triggers::{Accepted, IntakeError};

/// How long closing waits for the thread to commit, leave the group and let go of the client.
const THREAD_EXIT_WAIT: Duration = Duration::from_secs(30);

/// Messages handed to the task whose intake answer is not recorded yet. The consumer thread
/// waits for them before it reads more (as when it called the intake itself): its view of the
/// free slots is then exact, so the trigger is never over-filled and batches stay as large as
/// the room allows.
#[derive(Default)]
pub(super) struct Unanswered {
    count: Mutex<usize>,
    answered: Condvar,
}

impl Unanswered {
    pub(super) fn add(&self, n: usize) {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += n;
    }

    /// Takes back messages that were not handed over after all.
    pub(super) fn remove(&self, n: usize) {
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *count = count.saturating_sub(n);
        self.answered.notify_all();
    }

    fn answer_one(&self) {
        self.remove(1);
    }

    /// Blocks the consumer thread until every handed message is answered, or `stop` is set.
    pub(super) fn wait(&self, stop: &AtomicBool) {
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        while *count > 0 && !stop.load(Ordering::Acquire) {
            count = match self.answered.wait_timeout(count, Duration::from_millis(50)) {
                Ok((c, _)) => c,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

/// What one message needs once the intake has answered and when its jobs settle.
pub(super) struct Receipt {
    pub(super) key: PartitionKey,
    pub(super) generation: u64,
    pub(super) offset: i64,
    pub(super) settled: mpsc::Sender<Settled>,
}

/// The consumer thread's batches, and its end.
type Thread = (
    tokio::sync::mpsc::Receiver<Vec<Pulled<Receipt>>>,
    tokio::sync::oneshot::Receiver<()>,
);

/// The trigger's side; the consumer thread reads the config from the trigger itself.
pub(super) struct KafkaSource {
    tracking: Arc<Mutex<Tracking>>,
    unanswered: Arc<Unanswered>,
    stop: Arc<AtomicBool>,
    /// Set once connected.
    thread: Option<Thread>,
    /// Why the thread ended, when it failed.
    failed: Arc<Mutex<Option<String>>>,
}

impl KafkaSource {
    pub(super) fn new() -> Self {
        Self {
            tracking: Arc::new(Mutex::new(Tracking {
                partitions: Default::default(),
                generation: 0,
                newly_assigned: false,
            })),
            unanswered: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
            failed: Arc::new(Mutex::new(None)),
        }
    }
}

impl Source for KafkaSource {
    type Receipt = Receipt;

    /// Starts the consumer thread; it creates the client and subscribes (its errors come back
    /// through `receive`).
    async fn connect(&mut self, ctx: &SourceContext) -> Result<(), String> {
        let (hand_over, batches) = tokio::sync::mpsc::channel(1);
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let args = ctx.args.clone();
        let handle = tokio::runtime::Handle::current();
        let stop = Arc::clone(&self.stop);
        let tracking = Arc::clone(&self.tracking);
        let unanswered = Arc::clone(&self.unanswered);
        let failed = Arc::clone(&self.failed);
        let name = format!("kafka-{}", ctx.name());
        std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || {
                // Held until the error is recorded: `receive` reads it once the channel closes.
                let open = hand_over.clone();
                if let Err(e) = consume(&args, &stop, handle, tracking, (hand_over, unanswered)) {
                    set_status_field(&args.runtime, "connected", json!(false));
                    set_status_field(&args.runtime, "error", json!(e));
                    if let Ok(mut f) = failed.lock() {
                        *f = Some(e);
                    }
                }
                drop(open);
                let _ = done_tx.send(());
            })
            .map_err(|e| format!("cannot start the consumer thread: {e}"))?;
        self.thread = Some((batches, done));
        Ok(())
    }

    /// The thread's next batch (it already holds at most the free slots).
    async fn receive(
        &mut self,
        _ctx: &SourceContext,
        _max: usize,
    ) -> Result<Vec<Pulled<Receipt>>, String> {
        let (batches, _) = self.thread.as_mut().ok_or("not connected")?;
        match batches.recv().await {
            Some(batch) => Ok(batch),
            None => Err(self
                .failed
                .lock()
                .ok()
                .and_then(|mut f| f.take())
                .unwrap_or_else(|| "the Kafka consumer thread ended".into())),
        }
    }

    fn job_ack(r: &Receipt) -> AckHandle {
        let tx = r.settled.clone();
        let (topic, partition) = r.key.clone();
        let (generation, offset) = (r.generation, r.offset);
        AckHandle::on_settle(move |_outcome| {
            // Success and dead letter alike move the offset on: the outcome is durable.
            let _ = tx.send(Settled {
                generation,
                topic,
                partition,
                offset,
            });
        })
    }

    async fn acknowledge(
        &mut self,
        _ctx: &SourceContext,
        r: Receipt,
        answer: &Result<Accepted, IntakeError>,
    ) -> Result<(), String> {
        let _answered = AnswerOnDrop(&self.unanswered);
        let jobs = match answer {
            Ok(Accepted::Queued(ids)) => Some(ids.len()),
            // Durable already (parked, an earlier read's jobs, or a dead letter recording why
            // it cannot run: reading it again would fail the same way) or nothing to run: the
            // offset moves past it.
            Ok(
                Accepted::Parked(_)
                | Accepted::Duplicate(_)
                | Accepted::Filtered
                | Accepted::DeadLettered(_),
            ) => None,
            // Not durable: this and every later offset of its partition stay uncommitted (the
            // shell fails the trigger; the consumer restarts from the committed position).
            Err(_) => return Ok(()),
        };
        let mut tracking = self.tracking.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = tracking.partitions.get_mut(&r.key) {
            if t.generation == r.generation {
                t.accepted(r.offset, jobs);
            }
        }
        Ok(())
    }

    /// Waits for the thread to commit and leave the group, so a restarted trigger never races
    /// the old consumer's last commit.
    async fn close(&mut self, _ctx: &SourceContext, _error: Option<&str>) {
        self.stop.store(true, Ordering::Release);
        if let Some((batches, done)) = self.thread.take() {
            // Batches not taken stay uncommitted; dropping them lets a waiting thread go on.
            drop(batches);
            let _ = tokio::time::timeout(THREAD_EXIT_WAIT, done).await;
        }
    }
}

/// Counts a message as answered however `acknowledge` returns.
struct AnswerOnDrop<'a>(&'a Unanswered);

impl Drop for AnswerOnDrop<'_> {
    fn drop(&mut self) {
        self.0.answer_one();
    }
}
