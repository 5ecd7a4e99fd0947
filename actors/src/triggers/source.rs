//! The connector shell: one actor type, [`SourceActor`], runs every kind that pulls its
//! messages from a broker. A kind implements [`Source`] (connect, receive, acknowledge) and
//! nothing else; the shell owns what they all need and must all get right:
//!
//! - **Start and stop.** Connecting happens in a task, never in `pre_start` (the supervisor
//!   awaits `pre_start`, and a broker that is down must not stall every other trigger's start).
//!   The task is never aborted: an abort inside `Intake::accept_batch` could leave jobs on disk
//!   that the router never got. It stops only where it waits for the broker or for room.
//! - **Failure.** A source error (connection lost, intake down) fails the actor; the trigger
//!   supervisor restarts it with backoff (`backing_off`, never disabled). Callbacks that learn of
//!   a loss outside `receive` (a client's event callback) report it through [`LostReporter`].
//! - **Flow control** (docs/architecture.md, "Flow control"). Nothing is received while the
//!   trigger has `max_in_flight` jobs running, and a receive asks for at most the free slots:
//!   the broker keeps what millgate cannot run yet, nothing is buffered here.
//! - **Batches and acknowledgement.** What one receive returns goes through the intake together
//!   (one flush to disk for the batch, in order); each message then hears the intake's answer
//!   through [`Source::acknowledge`], and its jobs' outcomes through the [`AckHandle`]s the
//!   source made for them (`triggers/settle.rs` collects those for brokers that wait for them). An intake error fails the actor once
//!   every message of the batch has had its answer.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::Value;

use super::kind::SpawnFuture;
use super::{Accepted, IntakeError, SourceArgs, TriggerRuntime};
use crate::model::ack::AckHandle;
use crate::model::event::Event;

// ---------------------------------------------------------------------------------------------
// Messages

pub enum SourceMsg {
    /// The connection is gone: fail, so the supervisor restarts the actor with backoff.
    Lost(String),
}

// ---------------------------------------------------------------------------------------------
// The contract

/// One message received, on its way to the intake.
pub struct Pulled<R> {
    pub event: Event,
    /// What the source needs to acknowledge this message later.
    pub receipt: R,
}

/// A broker connection as the shell drives it.
pub trait Source: Send + Sync + 'static {
    /// Per message: what [`Source::acknowledge`] and [`Source::job_ack`] need.
    type Receipt: Send + Sync + 'static;

    /// Connects and subscribes. `Err` fails the actor.
    fn connect(&mut self, ctx: &SourceContext) -> impl Future<Output = Result<(), String>> + Send;

    /// Waits for the next messages and returns at most `max` of them, in the broker's order
    /// (an empty batch is fine: the shell asks again). `Err`: the connection is lost.
    fn receive(
        &mut self,
        ctx: &SourceContext,
        max: usize,
    ) -> impl Future<Output = Result<Vec<Pulled<Self::Receipt>>, String>> + Send;

    /// The acknowledgement handle of one job of a received message (called once per job the
    /// message fans out into).
    fn job_ack(receipt: &Self::Receipt) -> AckHandle;

    /// The intake's answer for one message: acknowledge, reject or arrange the acknowledgement
    /// for when its jobs settle. The shell fails the actor after an `Err` answer on its own;
    /// `Err` from here fails it too.
    fn acknowledge(
        &mut self,
        ctx: &SourceContext,
        receipt: Self::Receipt,
        answer: &Result<Accepted, IntakeError>,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// Called once when the task ends, whatever ended it (close the connection gracefully);
    /// `error` is what failed it, `None` for a requested stop.
    fn close(
        &mut self,
        _ctx: &SourceContext,
        _error: Option<&str>,
    ) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// What a source works with: its trigger's runtime, intake and config, and a way to report a
/// lost connection from outside `receive`.
pub struct SourceContext {
    pub args: SourceArgs,
    lost: LostReporter,
}

impl SourceContext {
    pub fn runtime(&self) -> &TriggerRuntime {
        &self.args.runtime
    }

    pub fn name(&self) -> &str {
        self.args.runtime.name()
    }

    pub fn lost_reporter(&self) -> LostReporter {
        self.lost.clone()
    }

    /// Replaces what the admin API shows as the source's status.
    pub fn set_status(&self, status: Value) {
        set_status(&self.args.runtime, status);
    }
}

/// Replaces what the admin API shows as a source's status.
pub fn set_status(rt: &TriggerRuntime, status: Value) {
    if let Ok(mut s) = rt.source_status.lock() {
        *s = status;
    }
}

/// Sets one field of a source's status, keeping the others.
pub fn set_status_field(rt: &TriggerRuntime, key: &str, v: Value) {
    if let Ok(mut s) = rt.source_status.lock() {
        if !s.is_object() {
            *s = Value::Object(Default::default());
        }
        if let Value::Object(m) = &mut *s {
            m.insert(key.into(), v);
        }
    }
}

/// Fails the source's actor from anywhere (a client's connection callback, say).
#[derive(Clone)]
pub struct LostReporter(ActorRef<SourceMsg>);

impl LostReporter {
    pub fn report(&self, why: String) {
        let _ = self.0.cast(SourceMsg::Lost(why));
    }
}

/// The stop signal of a source's task.
pub(crate) struct StopSignal(pub(crate) tokio::sync::watch::Receiver<bool>);

impl StopSignal {
    /// `f`'s output, or `None` when the actor stopped first.
    pub(crate) async fn or<F: Future>(&mut self, f: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            _ = self.0.wait_for(|stop| *stop) => None,
            out = f => Some(out),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The actor

/// Starts the shell around `source`, linked to the trigger supervisor.
pub fn spawn<S: Source>(source: S, args: SourceArgs, supervisor: ractor::ActorCell) -> SpawnFuture {
    Box::pin(async move {
        let (actor, _) = Actor::spawn_linked(
            None,
            SourceActor::<S>::default(),
            (source, args),
            supervisor,
        )
        .await?;
        Ok(actor.get_cell())
    })
}

pub struct SourceActor<S>(std::marker::PhantomData<fn() -> S>);

impl<S> Default for SourceActor<S> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

pub struct SourceState {
    /// Tells the task to stop at its next wait. Dropped with the state, which also stops it.
    stop: tokio::sync::watch::Sender<bool>,
    /// Fires once the task has ended and closed its source.
    closed: Option<tokio::sync::oneshot::Receiver<()>>,
}

/// How long a stopping actor waits for its source to close (an accept in progress finishes
/// first), so that a restarted trigger never races the old connection's last acknowledgements.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl<S: Source> Actor for SourceActor<S> {
    type Msg = SourceMsg;
    type State = SourceState;
    type Arguments = (S, SourceArgs);

    async fn pre_start(
        &self,
        myself: ActorRef<SourceMsg>,
        (source, args): (S, SourceArgs),
    ) -> Result<SourceState, ActorProcessingErr> {
        let (stop, rx) = tokio::sync::watch::channel(false);
        let (closed_tx, closed) = tokio::sync::oneshot::channel();
        let ctx = SourceContext {
            args,
            lost: LostReporter(myself.clone()),
        };
        tokio::spawn(async move {
            let mut source = source;
            let ended = run(&mut source, &ctx, StopSignal(rx)).await;
            source
                .close(&ctx, ended.as_ref().err().map(String::as_str))
                .await;
            let _ = closed_tx.send(());
            // Ok is a requested stop; an error fails the actor.
            if let Err(e) = ended {
                ctx.lost.report(e);
            }
        });
        Ok(SourceState {
            stop,
            closed: Some(closed),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<SourceMsg>,
        msg: SourceMsg,
        _state: &mut SourceState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SourceMsg::Lost(e) => Err(e.into()),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SourceMsg>,
        state: &mut SourceState,
    ) -> Result<(), ActorProcessingErr> {
        // Jobs already accepted keep their ack handles, so their acks still reach the broker;
        // only receiving stops.
        let _ = state.stop.send(true);
        if let Some(closed) = state.closed.take() {
            let _ = tokio::time::timeout(CLOSE_WAIT, closed).await;
        }
        Ok(())
    }
}

/// Connects, then receives while there is room, until stopped (`Ok`) or failed (`Err`).
async fn run<S: Source>(
    source: &mut S,
    ctx: &SourceContext,
    mut stop: StopSignal,
) -> Result<(), String> {
    let Some(connected) = stop.or(source.connect(ctx)).await else {
        return Ok(());
    };
    connected?;
    let rt = Arc::clone(&ctx.args.runtime);
    loop {
        if stop.or(rt.wait_for_capacity()).await.is_none() {
            return Ok(());
        }
        let free = rt
            .max_in_flight
            .saturating_sub(rt.in_flight.load(Ordering::Acquire))
            .max(1);
        let Some(received) = stop.or(source.receive(ctx, free)).await else {
            return Ok(());
        };
        let pulled = received?;
        if pulled.is_empty() {
            continue;
        }
        let (events, receipts): (Vec<Event>, Vec<S::Receipt>) =
            pulled.into_iter().map(|p| (p.event, p.receipt)).unzip();
        let answers = ctx
            .args
            .intake
            .accept_batch(&rt, events, |i, _| match receipts.get(i) {
                Some(r) => S::job_ack(r),
                None => AckHandle::none(),
            })
            .await;
        let mut failure = None;
        for (receipt, answer) in receipts.into_iter().zip(answers) {
            source.acknowledge(ctx, receipt, &answer).await?;
            if let Err(e) = answer {
                failure.get_or_insert(format!("could not accept a message: {e}"));
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
    }
}
