//! The Pub/Sub source in the connector shell: a streaming pull whose messages are acked once
//! their jobs settle, their ack deadline renewed meanwhile (`triggers/settle.rs`).

use futures::{FutureExt, StreamExt};
use gcloud_pubsub::subscriber::SubscriberConfig;
use gcloud_pubsub::subscription::{MessageStream, SubscribeConfig, SubscriptionConfig};
use serde_json::json;

use super::acks::{AckBatcher, AckCall, PubSubAckSink, ACK_LINGER};
use super::config::{PubSubConfig, PubSubDeadLetter};
use super::event::pubsub_event;
use crate::model::ack::AckHandle;
use crate::triggers::settle::{Acknowledger, Settler};
use crate::triggers::source::{set_status, Pulled, Source, SourceContext};
use crate::triggers::{Accepted, IntakeError};

pub(super) struct PubSubSource {
    cfg: PubSubConfig,
    /// Set once connected.
    stream: Option<MessageStream>,
    acks: Option<Settler<PubSubAck>>,
    calls: Option<AckBatcher>,
    /// The number given to the next received message, for the settler.
    next_id: u64,
}

/// What one message needs to be acked, nacked or kept.
pub(super) struct Receipt {
    id: u64,
    ack_id: String,
    acks: Settler<PubSubAck>,
}

/// A message whose jobs are running: acked once they settle (a dead-lettered one nacked with
/// `on_dead_letter = "nack"`), its ack deadline renewed meanwhile.
pub(super) struct PubSubAck {
    ack_id: String,
    deadline_secs: i32,
    on_dead_letter: PubSubDeadLetter,
    calls: AckBatcher,
}

impl PubSubAck {
    fn ack(self) {
        self.calls.send((AckCall::Ack, self.ack_id));
    }

    fn nack(self) {
        self.calls.send((AckCall::Nack, self.ack_id));
    }
}

impl Acknowledger for PubSubAck {
    async fn settled(self, ok: bool) {
        if ok || self.on_dead_letter == PubSubDeadLetter::Ack {
            self.ack();
        } else {
            self.nack();
        }
    }

    async fn unsettled(self) {
        self.nack();
    }

    async fn progress(&self) {
        let call = AckCall::Extend(self.deadline_secs);
        self.calls.send((call, self.ack_id.clone()));
    }
}

impl PubSubSource {
    pub(super) fn new(cfg: PubSubConfig) -> Self {
        Self {
            cfg,
            stream: None,
            acks: None,
            calls: None,
            next_id: 0,
        }
    }

    fn deadline_secs(&self) -> i32 {
        i32::try_from(self.cfg.ack_deadline.as_secs()).unwrap_or(600)
    }

    fn status(&self, ctx: &SourceContext, connected: bool, error: Option<&str>) {
        set_status(
            ctx.runtime(),
            json!({"connected": connected, "subscription": self.cfg.full_subscription(), "error": error}),
        );
    }
}

impl Source for PubSubSource {
    type Receipt = Receipt;

    async fn connect(&mut self, ctx: &SourceContext) -> Result<(), String> {
        self.status(ctx, false, None);
        let client = self.cfg.client().await?;
        let id = self.cfg.subscription_id().unwrap_or_default();
        let name = self.cfg.full_subscription();
        let mut subscription = client.subscription(id);
        let exists = subscription
            .exists(None)
            .await
            .map_err(|e| format!("subscription `{name}`: {e}"))?;
        if !exists {
            let topic = self.cfg.topic_id().filter(|_| self.cfg.create_subscription);
            let Some(topic) = topic else {
                return Err(format!(
                    "subscription `{name}` does not exist (set `topic` and `create_subscription = true` to create it)"
                ));
            };
            let cfg = SubscriptionConfig {
                ack_deadline_seconds: self.deadline_secs(),
                ..SubscriptionConfig::default()
            };
            subscription = client
                .create_subscription(id, topic, cfg, None)
                .await
                .map_err(|e| {
                    format!("cannot create subscription `{name}` on topic `{topic}`: {e}")
                })?;
            tracing::info!(trigger = ctx.name(), subscription = %name, topic, "created the subscription");
        }
        let max = self
            .cfg
            .max_outstanding
            .unwrap_or(ctx.runtime().max_in_flight);
        let subscriber = SubscriberConfig {
            stream_ack_deadline_seconds: self.deadline_secs(),
            max_outstanding_messages: i64::try_from(max).unwrap_or(i64::MAX),
            ..SubscriberConfig::default()
        };
        let stream = subscription
            .subscribe(Some(
                SubscribeConfig::default()
                    .with_subscriber_config(subscriber)
                    .with_channel_capacity(max.max(1)),
            ))
            .await
            .map_err(|e| format!("streaming pull on `{name}`: {e}"))?;
        let every = self.cfg.ack_deadline / 2;
        self.acks = Some(Settler::start(Some(every)));
        self.calls = Some(AckBatcher::start(
            PubSubAckSink::new(subscription.get_client(), name.clone(), ctx.name()),
            ACK_LINGER,
        ));
        self.stream = Some(stream);
        tracing::info!(trigger = ctx.name(), subscription = %name, "pubsub streaming pull ready");
        self.status(ctx, true, None);
        Ok(())
    }

    async fn receive(
        &mut self,
        ctx: &SourceContext,
        max: usize,
    ) -> Result<Vec<Pulled<Receipt>>, String> {
        let acks = self.acks.clone().ok_or("not connected")?;
        let stream = self.stream.as_mut().ok_or("not connected")?;
        // The client retries what can be retried; an ended stream is a lost connection (its
        // reason is in the client's log).
        let first = stream.next().await.ok_or_else(|| {
            format!(
                "the streaming pull on `{}` ended",
                self.cfg.full_subscription()
            )
        })?;
        let mut messages = vec![first];
        while messages.len() < max {
            match stream.next().now_or_never() {
                Some(Some(m)) => messages.push(m),
                _ => break,
            }
        }
        let subscription = self.cfg.full_subscription();
        let mut pulled = Vec::with_capacity(messages.len());
        for message in messages {
            self.next_id += 1;
            pulled.push(Pulled {
                event: pubsub_event(ctx.name(), &subscription, &message),
                receipt: Receipt {
                    id: self.next_id,
                    ack_id: message.ack_id,
                    acks: acks.clone(),
                },
            });
        }
        Ok(pulled)
    }

    fn job_ack(receipt: &Receipt) -> AckHandle {
        receipt.acks.job_ack(receipt.id)
    }

    async fn acknowledge(
        &mut self,
        _ctx: &SourceContext,
        r: Receipt,
        answer: &Result<Accepted, IntakeError>,
    ) -> Result<(), String> {
        let calls = self.calls.clone().ok_or("not connected")?;
        let ack = PubSubAck {
            ack_id: r.ack_id,
            deadline_secs: self.deadline_secs(),
            on_dead_letter: self.cfg.on_dead_letter,
            calls,
        };
        match answer {
            Ok(Accepted::Queued(ids)) => {
                r.acks.track(r.id, ack, ids.len());
                return Ok(());
            }
            Ok(Accepted::DeadLettered(_)) => ack.settled(false).await,
            // Already durable (parked, an earlier delivery's jobs) or nothing to run.
            Ok(_) => ack.ack(),
            // Handed back for another delivery; the shell fails the actor.
            Err(_) => ack.nack(),
        }
        r.acks.forget(r.id);
        Ok(())
    }

    /// Nacks what the client had buffered, so that it is delivered again at once.
    async fn close(&mut self, ctx: &SourceContext, error: Option<&str>) {
        if let Some(e) = error {
            self.status(ctx, false, Some(e));
        }
        if let Some(stream) = self.stream.take() {
            stream.dispose().await;
        }
        self.acks = None;
        self.calls = None;
    }
}
