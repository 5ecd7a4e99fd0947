//! Acknowledgement after the outcome, for sources whose broker waits for it (JetStream, MQTT
//! QoS ≥ 1, SQS, Pub/Sub): one task per connection tracks every received message until all its jobs have a
//! durable outcome, then tells the broker through the source's [`Acknowledger`]. A job's handle
//! dropped unsettled (its outcome is not durable) makes the message [`Acknowledger::unsettled`]
//! instead, for the broker to hand it over again. Messages still unsettled hear
//! [`Acknowledger::progress`] every `progress_every`, if the source has one.
//!
//! One task and one channel for all of a connection's messages, not a task, a timer and a
//! channel per message: those were ~2 µs of each message's CPU (BENCHMARKS.md, issue 12).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::model::ack::AckHandle;
use crate::model::job::JobOutcome;

// ---------------------------------------------------------------------------------------------
// Messages

enum SettleMsg<A> {
    /// The message's jobs are queued: acknowledge it when `jobs` outcomes have arrived.
    Track { id: u64, ack: A, jobs: usize },
    /// One job of the message settled (`ok`: succeeded) or was dropped unsettled (`None`).
    Outcome { id: u64, ok: Option<bool> },
    /// The message was answered without waiting for jobs: forget what its handles reported.
    Forget { id: u64 },
}

/// How a source tells its broker about one message.
pub trait Acknowledger: Send + Sync + 'static {
    /// Every job settled; `ok`: none was dead-lettered.
    fn settled(self, ok: bool) -> impl Future<Output = ()> + Send;

    /// A job ended without a durable outcome.
    fn unsettled(self) -> impl Future<Output = ()> + Send;

    /// Still running: keep the message from being redelivered.
    fn progress(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Outcomes that arrive for a message never tracked nor forgotten are dropped after this long
/// (the source tracks or forgets each message right after the intake answers).
const STRAY_AFTER: Duration = Duration::from_secs(600);

/// One connection's messages awaiting their outcomes; cloned into every receipt.
pub struct Settler<A> {
    tx: mpsc::UnboundedSender<SettleMsg<A>>,
}

impl<A> Clone for Settler<A> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<A: Acknowledger> Settler<A> {
    /// Starts the task; `progress_every`: how often an unsettled message hears `progress`.
    pub fn start(progress_every: Option<Duration>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, progress_every));
        Self { tx }
    }

    /// The handle of one job of message `id` (ids are the source's, unique per settler).
    pub fn job_ack(&self, id: u64) -> AckHandle {
        let mut guard = Unsettled {
            tx: Some(self.tx.clone()),
            id,
        };
        AckHandle::on_settle(move |outcome| {
            if let Some(tx) = guard.tx.take() {
                let ok = matches!(outcome, JobOutcome::Succeeded(_));
                let _ = tx.send(SettleMsg::Outcome { id, ok: Some(ok) });
            }
        })
    }

    /// Message `id` made `jobs` jobs: acknowledge it through `ack` once they settle.
    pub fn track(&self, id: u64, ack: A, jobs: usize) {
        let _ = self.tx.send(SettleMsg::Track { id, ack, jobs });
    }

    /// Message `id` was answered by the source itself.
    pub fn forget(&self, id: u64) {
        let _ = self.tx.send(SettleMsg::Forget { id });
    }
}

/// Reports a job's handle dropped before its outcome was settled.
struct Unsettled<A> {
    tx: Option<mpsc::UnboundedSender<SettleMsg<A>>>,
    id: u64,
}

impl<A> Drop for Unsettled<A> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(SettleMsg::Outcome {
                id: self.id,
                ok: None,
            });
        }
    }
}

struct Pending<A> {
    ack: Option<A>,
    jobs: usize,
    settled: usize,
    all_ok: bool,
    unsettled: bool,
    /// When the message was tracked or last heard `progress` (or its first outcome arrived).
    touched: Instant,
}

impl<A> Pending<A> {
    fn new() -> Self {
        Self {
            ack: None,
            jobs: 0,
            settled: 0,
            all_ok: true,
            unsettled: false,
            touched: Instant::now(),
        }
    }

    /// Whether the broker can hear about the message now.
    fn done(&self) -> bool {
        self.ack.is_some() && (self.unsettled || self.settled >= self.jobs)
    }
}

async fn run<A: Acknowledger>(
    mut rx: mpsc::UnboundedReceiver<SettleMsg<A>>,
    progress_every: Option<Duration>,
) {
    let mut pending: HashMap<u64, Pending<A>> = HashMap::new();
    // Every message is looked at twice per period: renewed within 1.5 × `progress_every`.
    let half = progress_every.map_or(STRAY_AFTER, |p| p / 2);
    let mut tick = tokio::time::interval(half.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => m,
                None => return,
            },
            _ = tick.tick() => {
                progress(&mut pending, progress_every).await;
                continue;
            }
        };
        let id = match msg {
            SettleMsg::Track { id, ack, jobs } => {
                let p = pending.entry(id).or_insert_with(Pending::new);
                p.ack = Some(ack);
                p.jobs = jobs;
                p.touched = Instant::now();
                id
            }
            SettleMsg::Outcome { id, ok } => {
                let p = pending.entry(id).or_insert_with(Pending::new);
                match ok {
                    Some(ok) => {
                        p.settled += 1;
                        p.all_ok &= ok;
                    }
                    None => p.unsettled = true,
                }
                id
            }
            SettleMsg::Forget { id } => {
                pending.remove(&id);
                continue;
            }
        };
        if !pending.get(&id).is_some_and(Pending::done) {
            continue;
        }
        let Some(p) = pending.remove(&id) else {
            continue;
        };
        if let Some(ack) = p.ack {
            if p.unsettled {
                ack.unsettled().await;
            } else {
                ack.settled(p.all_ok).await;
            }
        }
    }
}

/// `progress` for tracked messages not touched for `progress_every`; stray outcomes dropped.
async fn progress<A: Acknowledger>(
    pending: &mut HashMap<u64, Pending<A>>,
    progress_every: Option<Duration>,
) {
    let now = Instant::now();
    let mut stray = Vec::new();
    for (id, p) in pending.iter_mut() {
        let age = now.duration_since(p.touched);
        match (&p.ack, progress_every) {
            (Some(ack), Some(every)) if age >= every => {
                p.touched = now;
                ack.progress().await;
            }
            (None, _) if age >= STRAY_AFTER => stray.push(*id),
            _ => {}
        }
    }
    for id in stray {
        pending.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what the broker would have heard.
    struct Heard(u64, mpsc::UnboundedSender<(u64, &'static str)>);

    impl Acknowledger for Heard {
        async fn settled(self, ok: bool) {
            let _ = self.1.send((self.0, if ok { "ack" } else { "term" }));
        }
        async fn unsettled(self) {
            let _ = self.1.send((self.0, "nak"));
        }
        async fn progress(&self) {
            let _ = self.1.send((self.0, "progress"));
        }
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<(u64, &'static str)>) -> (u64, &'static str) {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(h)) => h,
            other => panic!("nothing heard: {other:?}"),
        }
    }

    fn ok() -> JobOutcome {
        JobOutcome::Succeeded(serde_json::Value::Null)
    }

    #[tokio::test]
    async fn acknowledges_once_every_job_settled_whatever_arrives_first() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s: Settler<Heard> = Settler::start(None);
        // Outcomes before the message is tracked (a fast job), then tracked.
        drop(s.job_ack(1).settle(&ok()));
        drop(s.job_ack(1).settle(&ok()));
        s.track(1, Heard(1, tx.clone()), 2);
        // Tracked first; one job dead-lettered.
        s.track(2, Heard(2, tx.clone()), 2);
        drop(s.job_ack(2).settle(&ok()));
        drop(s.job_ack(2).settle(&JobOutcome::DeadLettered("no".into())));
        // One handle dropped unsettled.
        let kept = s.job_ack(3);
        drop(s.job_ack(3));
        s.track(3, Heard(3, tx.clone()), 2);
        assert_eq!(next(&mut rx).await, (1, "ack"));
        assert_eq!(next(&mut rx).await, (2, "term"));
        assert_eq!(next(&mut rx).await, (3, "nak"));
        // The other job of message 3 settling later says nothing more; a forgotten message
        // hears nothing at all.
        drop(kept.settle(&ok()));
        drop(s.job_ack(4));
        s.forget(4);
        s.track(5, Heard(5, tx.clone()), 1);
        drop(s.job_ack(5).settle(&ok()));
        assert_eq!(next(&mut rx).await, (5, "ack"));
    }

    #[tokio::test(start_paused = true)]
    async fn unsettled_messages_hear_progress_within_one_and_a_half_periods() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let s: Settler<Heard> = Settler::start(Some(Duration::from_secs(2)));
        let handle = s.job_ack(7);
        s.track(7, Heard(7, tx.clone()), 1);
        let t0 = tokio::time::Instant::now();
        assert_eq!(next(&mut rx).await, (7, "progress"));
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_secs(2) && waited <= Duration::from_secs(3),
            "{waited:?}"
        );
        assert_eq!(next(&mut rx).await, (7, "progress"));
        drop(handle.settle(&ok()));
        loop {
            match next(&mut rx).await {
                (7, "progress") => continue,
                heard => {
                    assert_eq!(heard, (7, "ack"));
                    break;
                }
            }
        }
    }
}
