//! One MQTT connection at work: a task that only drives the connection, and the trigger's side
//! (the connector shell, `triggers/source.rs`) that turns its messages into jobs.
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

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::config::{MqttConfig, MqttSubscription};
use super::event::{Ack, Message};
use super::link::{Closer, Incoming, Link};
use crate::model::ack::AckHandle;
use crate::model::event::Event;
use crate::triggers::settle::{Acknowledger, Settler};
use crate::triggers::source::{set_status, Pulled, Source, SourceContext};
use crate::triggers::{Accepted, IntakeError, TriggerRuntime};

/// Messages received and not yet taken by the trigger, at most.
pub(super) const QUEUE: usize = 1024;

/// How long a stopping connection may take to write its queued acks and DISCONNECT.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The trigger's side of one connection.
pub(super) struct MqttSource {
    cfg: MqttConfig,
    /// Set once connected.
    link: Option<Connected>,
    /// The acknowledgements of QoS ≥ 1 messages after their outcome (set once connected).
    acks: Option<Settler<MqttAck>>,
    /// The number given to the next QoS ≥ 1 message, for `acks`.
    next_id: u64,
}

/// The hand-over queue, the connection task and its closer.
type Connected = (
    mpsc::Receiver<Box<Message>>,
    JoinHandle<Result<(), String>>,
    Closer,
);

/// What one message owes its broker.
pub(super) struct Receipt {
    topic: String,
    event_id: String,
    ack: Ack,
    /// `None` for QoS 0: nothing to acknowledge.
    settle: Option<(u64, Settler<MqttAck>)>,
}

impl MqttSource {
    pub(super) fn new(cfg: MqttConfig) -> Self {
        Self {
            cfg,
            link: None,
            acks: None,
            next_id: 0,
        }
    }

    fn pulled(&mut self, m: Message) -> Pulled<Receipt> {
        let Message {
            topic,
            qos,
            event,
            defect,
            ack,
        } = m;
        let event = Event::unique("mqtt", event).with_defect(defect);
        let settle = match (&self.acks, qos) {
            (Some(acks), 1..) => {
                self.next_id += 1;
                Some((self.next_id, acks.clone()))
            }
            _ => None,
        };
        Pulled {
            receipt: Receipt {
                topic,
                event_id: event.id.clone(),
                ack,
                settle,
            },
            event,
        }
    }
}

/// Acknowledges once every job of the message has a durable outcome (success or dead letter).
/// A handle dropped unsettled leaves the message unacknowledged, for the broker to redeliver
/// to the next connection of a persistent session.
pub(super) struct MqttAck {
    ack: Ack,
    topic: String,
}

impl Acknowledger for MqttAck {
    async fn settled(self, _ok: bool) {
        self.ack.send(&self.topic, "settled").await;
    }

    async fn unsettled(self) {
        tracing::info!(topic = %self.topic, pkid = self.ack.pkid(), "a job ended without a durable outcome; message left unacknowledged for redelivery");
    }
}

/// Why the connection task ended, as the trigger's error.
fn ended(r: Result<Result<(), String>, tokio::task::JoinError>) -> String {
    match r {
        Ok(Ok(())) => "MQTT connection closed".into(),
        Ok(Err(e)) => e,
        Err(e) => format!("MQTT connection task failed: {e}"),
    }
}

impl Source for MqttSource {
    type Receipt = Receipt;

    async fn connect(&mut self, ctx: &SourceContext) -> Result<(), String> {
        let rt = ctx.runtime();
        set_status(rt, json!({"connected": false, "subscribed": false}));
        let receive_maximum = u16::try_from(rt.max_in_flight).unwrap_or(u16::MAX);
        let link = Link::open(&self.cfg, rt.name(), receive_maximum)?;
        let closer = link.closer();
        let (tx, rx) = mpsc::channel(QUEUE);
        let connection = tokio::spawn(drive(
            link,
            self.cfg.subscriptions.clone(),
            self.cfg.version,
            Arc::clone(&ctx.args.runtime),
            tx,
        ));
        self.link = Some((rx, connection, closer));
        self.acks = Some(Settler::start(None));
        Ok(())
    }

    /// The messages handed over, up to `max`. A message from a connection that is gone could
    /// not be acknowledged (its jobs would run again on redelivery): not taken.
    async fn receive(
        &mut self,
        _ctx: &SourceContext,
        max: usize,
    ) -> Result<Vec<Pulled<Receipt>>, String> {
        let (messages, connection, _) = self.link.as_mut().ok_or("not connected")?;
        let first = tokio::select! {
            biased;
            r = &mut *connection => return Err(ended(r)),
            m = messages.recv() => match m {
                Some(m) => m,
                None => return Err(ended(connection.await)),
            },
        };
        let mut batch = vec![first];
        while batch.len() < max && !connection.is_finished() {
            match messages.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        Ok(batch.into_iter().map(|m| self.pulled(*m)).collect())
    }

    fn job_ack(receipt: &Receipt) -> AckHandle {
        match &receipt.settle {
            Some((id, acks)) => acks.job_ack(*id),
            None => AckHandle::none(),
        }
    }

    async fn acknowledge(
        &mut self,
        _ctx: &SourceContext,
        r: Receipt,
        answer: &Result<Accepted, IntakeError>,
    ) -> Result<(), String> {
        // QoS 0: received once the intake flushed its jobs to disk; nothing to send.
        let Some((id, acks)) = r.settle else {
            return Ok(());
        };
        match answer {
            Ok(Accepted::Queued(ids)) => {
                let ack = MqttAck {
                    ack: r.ack,
                    topic: r.topic,
                };
                acks.track(id, ack, ids.len());
                return Ok(());
            }
            // Already durable (parked, or a dead letter recording why it cannot run) or nothing
            // to run: done as far as the broker is concerned.
            Ok(
                Accepted::Parked(_)
                | Accepted::Duplicate(_)
                | Accepted::Filtered
                | Accepted::DeadLettered(_),
            ) => r.ack.send(&r.topic, &r.event_id).await,
            // Left unacknowledged; the shell fails the actor.
            Err(_) => {}
        }
        acks.forget(id);
        Ok(())
    }

    /// The connection task writes what is queued before the DISCONNECT (acks of jobs that
    /// settled), then ends; one that cannot is dropped after the grace period.
    async fn close(&mut self, ctx: &SourceContext, error: Option<&str>) {
        if let Some(e) = error {
            set_status(ctx.runtime(), json!({"connected": false, "error": e}));
        }
        if let Some((_, connection, closer)) = self.link.take() {
            closer.close();
            let abort = connection.abort_handle();
            tokio::spawn(async move {
                tokio::time::sleep(CLOSE_GRACE).await;
                abort.abort();
            });
        }
    }
}

/// Polls the connection and nothing else: subscribes once connected, hands messages over,
/// and so writes every queued ack as soon as it is queued.
async fn drive(
    mut link: Link,
    subscriptions: Vec<MqttSubscription>,
    version: u8,
    rt: Arc<TriggerRuntime>,
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
