//! One MQTT connection at work: a task that only drives the connection, and the trigger's task
//! that turns its messages into jobs.
//!
//! rumqttc writes a queued ack only while its event loop is being polled, and a poll hands
//! back the packets it has already read before it looks at queued requests again (one request
//! per poll). A loop that waits for `max_in_flight` room or for the store between polls
//! therefore leaves the acks of settled jobs unsent while messages keep arriving: at a crash
//! the broker redelivers hundreds of messages whose jobs had finished. So the connection has a
//! task of its own that polls without waiting on anything but a full hand-over queue, and acks
//! reach the socket right after their jobs settle.
//!
//! The hand-over queue holds at most [`QUEUE`] messages. With v5 the broker sends at most
//! `max_in_flight` unacknowledged QoS 1/2 messages (millgate's receive maximum), so for those
//! the queue never fills; with v3.1.1 the broker's own window decides (mosquitto's
//! `max_inflight_messages`, 20 by default). A full queue (a larger window, or QoS 0 arriving
//! faster than jobs finish) pauses reading, and the acks with it, until the trigger catches up.

use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;

use super::{set_status, Ack, Incoming, Link, Message, MqttSubscription};
use crate::model::ack::AckHandle;
use crate::model::event::Event;
use crate::triggers::{Accepted, SourceArgs, StopSignal as Stop, TriggerRuntime, TriggerSpec};

/// Messages received and not yet taken by the trigger, at most.
pub(super) const QUEUE: usize = 1024;

/// How long a stopping connection may take to write its queued acks and DISCONNECT.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How the trigger's side ended.
enum Ended {
    Stopped,
    /// The connection task ended: its result.
    Connection(Result<Result<(), String>, tokio::task::JoinError>),
}

/// Runs the trigger until it is stopped (`Ok`) or its connection or intake fails (`Err`).
pub(super) async fn run(args: &SourceArgs, mut stop: Stop) -> Result<(), String> {
    let rt = &args.runtime;
    let TriggerSpec::Mqtt(cfg) = &args.trigger.spec else {
        return Err("not an mqtt trigger".into());
    };
    set_status(rt, json!({"connected": false, "subscribed": false}));
    let receive_maximum = u16::try_from(rt.max_in_flight).unwrap_or(u16::MAX);
    let link = Link::open(cfg, rt.name(), receive_maximum)?;
    let closer = link.closer();
    let (tx, rx) = mpsc::channel(QUEUE);
    let mut connection = tokio::spawn(drive(
        link,
        cfg.subscriptions.clone(),
        cfg.version,
        rt.clone(),
        tx,
    ));
    let ended = take_all(args, rx, &mut stop, &mut connection).await;
    // The connection task writes what is queued before the DISCONNECT (acks of jobs that
    // settled), then ends; one that cannot is dropped after the grace period.
    closer.close();
    let abort = connection.abort_handle();
    tokio::spawn(async move {
        tokio::time::sleep(CLOSE_GRACE).await;
        abort.abort();
    });
    match ended? {
        Ended::Stopped => Ok(()),
        Ended::Connection(Ok(Ok(()))) => Err("MQTT connection closed".into()),
        Ended::Connection(Ok(Err(e))) => Err(e),
        Ended::Connection(Err(e)) => Err(format!("MQTT connection task failed: {e}")),
    }
}

/// Polls the connection and nothing else: subscribes once connected, hands messages over,
/// and so writes every queued ack as soon as it is queued.
async fn drive(
    mut link: Link,
    subscriptions: Vec<MqttSubscription>,
    version: u8,
    rt: std::sync::Arc<TriggerRuntime>,
    messages: mpsc::Sender<Box<Message>>,
) -> Result<(), String> {
    let mut session_present = false;
    loop {
        match link.next(rt.name()).await? {
            Incoming::Connected {
                session_present: present,
            } => {
                session_present = present;
                set_status(
                    &rt,
                    json!({"connected": true, "subscribed": false, "session_present": session_present}),
                );
                link.subscribe(&subscriptions).await?;
            }
            Incoming::Subscribed => {
                tracing::info!(trigger = rt.name(), broker = %link.at, version, session_present, "mqtt subscribed");
                set_status(
                    &rt,
                    json!({"connected": true, "subscribed": true, "session_present": session_present}),
                );
            }
            Incoming::Message(m) => {
                if messages.send(m).await.is_err() {
                    // The trigger stopped taking; it has asked for the DISCONNECT.
                    continue;
                }
            }
            Incoming::Closed => return Ok(()),
            Incoming::Nothing => {}
        }
    }
}

async fn stopped(stop: &mut Stop) {
    let _ = stop.0.wait_for(|s| *s).await;
}

/// Takes the messages handed over, one at a time, as `max_in_flight` allows.
async fn take_all(
    args: &SourceArgs,
    mut messages: mpsc::Receiver<Box<Message>>,
    stop: &mut Stop,
    connection: &mut tokio::task::JoinHandle<Result<(), String>>,
) -> Result<Ended, String> {
    let rt = &args.runtime;
    loop {
        let m = tokio::select! {
            biased;
            _ = stopped(stop) => return Ok(Ended::Stopped),
            // A message from a connection that is gone could not be acknowledged: its jobs
            // would run again on redelivery. Not taken.
            r = &mut *connection => return Ok(Ended::Connection(r)),
            m = messages.recv() => match m {
                Some(m) => m,
                None => return Ok(Ended::Connection(connection.await)),
            },
        };
        let room = tokio::select! {
            biased;
            _ = stopped(stop) => None,
            r = &mut *connection => return Ok(Ended::Connection(r)),
            _ = rt.wait_for_capacity() => Some(()),
        };
        if room.is_none() {
            // Unacknowledged: a persistent session gets it again; QoS 0 is lost.
            tracing::warn!(trigger = rt.name(), topic = %m.topic, "trigger stopped while full; message not taken");
            return Ok(Ended::Stopped);
        }
        take(args, *m).await?;
    }
}

/// Turns one message into jobs and arranges its ack. Errors that mean the trigger cannot go on
/// (store or router down) fail the actor; the message stays unacknowledged.
async fn take(args: &SourceArgs, m: Message) -> Result<(), String> {
    let rt = &args.runtime;
    let Message {
        topic,
        qos,
        event,
        defect,
        ack,
    } = m;
    let event = Event::unique("mqtt", event).with_defect(defect);
    let event_id = event.id.clone();
    if qos == 0 {
        // Nothing to acknowledge: received once accept() has flushed the jobs to disk.
        // A refused message becomes a dead letter with its reason (written by the intake).
        return match args.intake.accept(rt, event, |_| AckHandle::none()).await {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("could not accept a message: {e}")),
        };
    }
    let (tx, settled) = mpsc::unbounded_channel::<()>();
    let accepted = args
        .intake
        .accept(rt, event, |_| {
            let tx = tx.clone();
            AckHandle::on_settle(move |_outcome| {
                let _ = tx.send(());
            })
        })
        .await;
    drop(tx);
    match accepted {
        Ok(Accepted::Queued(ids)) => {
            tokio::spawn(ack_when_settled(ack, topic, ids.len(), settled));
        }
        // Already durable (parked, or a dead letter recording why it cannot run) or nothing to
        // run: done as far as the broker is concerned.
        Ok(
            Accepted::Parked(_)
            | Accepted::Duplicate(_)
            | Accepted::Filtered
            | Accepted::DeadLettered(_),
        ) => {
            ack.send(&topic, &event_id).await;
        }
        Err(e) => return Err(format!("could not accept a message: {e}")),
    }
    Ok(())
}

/// Acknowledges once every job of the message has a durable outcome (success or dead letter).
/// A handle dropped unsettled leaves the message unacknowledged, for the broker to redeliver
/// to the next connection of a persistent session.
async fn ack_when_settled(
    ack: Ack,
    topic: String,
    jobs: usize,
    mut settled: mpsc::UnboundedReceiver<()>,
) {
    for _ in 0..jobs {
        if settled.recv().await.is_none() {
            tracing::info!(topic = %topic, pkid = ack.pkid(), "a job ended without a durable outcome; message left unacknowledged for redelivery");
            return;
        }
    }
    ack.send(&topic, "settled").await;
}
