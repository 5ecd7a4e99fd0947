//! The connection, and core NATS subscriptions. Core NATS cannot redeliver: a message counts as
//! received once the intake has flushed its jobs to disk (a refused one becomes a dead letter
//! with its reason, written by the intake).

use futures::stream::SelectAll;
use futures::{FutureExt, StreamExt};
use serde_json::Value;

use super::config::NatsConfig;
use super::event::base_event;
use crate::model::ack::AckHandle;
use crate::model::event::Event;
use crate::triggers::source::{LostReporter, Pulled, Source, SourceContext};
use crate::triggers::{Accepted, IntakeError};

/// Connects; a later disconnect fails the trigger's actor through `lost`.
pub(super) async fn connect(
    cfg: &NatsConfig,
    lost: LostReporter,
) -> Result<async_nats::Client, String> {
    let opts = cfg.connect_options().await?.event_callback(move |event| {
        let lost = lost.clone();
        async move {
            // async-nats would reconnect on its own, silently; failing the actor instead
            // makes the outage visible as `backing_off` and restarts with backoff.
            if matches!(
                event,
                async_nats::Event::Disconnected | async_nats::Event::Closed
            ) {
                lost.report(format!("NATS connection {event}"));
            }
        }
    });
    opts.connect(cfg.servers.clone())
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", cfg.servers.join(",")))
}

/// Core subscriptions to the trigger's subjects (in its queue group, when it has one).
pub(super) struct CoreSubscription {
    cfg: NatsConfig,
    client: Option<async_nats::Client>,
    messages: SelectAll<async_nats::Subscriber>,
}

impl CoreSubscription {
    pub(super) fn new(cfg: NatsConfig) -> Self {
        Self {
            cfg,
            client: None,
            messages: SelectAll::new(),
        }
    }

    fn pulled(trigger: &str, msg: &async_nats::Message) -> Pulled<()> {
        let reply = msg.reply.as_ref().map(|r| r.as_str());
        let (event, defect) = base_event(trigger, msg, reply);
        Pulled {
            event: Event::unique("nats", Value::Object(event)).with_defect(defect),
            receipt: (),
        }
    }
}

impl Source for CoreSubscription {
    type Receipt = ();

    async fn connect(&mut self, ctx: &SourceContext) -> Result<(), String> {
        let client = connect(&self.cfg, ctx.lost_reporter()).await?;
        for subject in &self.cfg.subjects {
            let sub = match &self.cfg.queue_group {
                Some(q) => client.queue_subscribe(subject.clone(), q.clone()).await,
                None => client.subscribe(subject.clone()).await,
            }
            .map_err(|e| format!("cannot subscribe to `{subject}`: {e}"))?;
            self.messages.push(sub);
        }
        // Make sure the server has the subscriptions before we report anything as running.
        client
            .flush()
            .await
            .map_err(|e| format!("cannot subscribe: {e}"))?;
        tracing::info!(trigger = ctx.name(), subjects = ?self.cfg.subjects, "nats subscribed");
        self.client = Some(client);
        Ok(())
    }

    /// The next message, and those already here behind it, up to `max`.
    async fn receive(
        &mut self,
        ctx: &SourceContext,
        max: usize,
    ) -> Result<Vec<Pulled<()>>, String> {
        let Some(first) = self.messages.next().await else {
            return Err("all NATS subscriptions closed".into());
        };
        let mut batch = vec![Self::pulled(ctx.name(), &first)];
        while batch.len() < max {
            match self.messages.next().now_or_never() {
                Some(Some(msg)) => batch.push(Self::pulled(ctx.name(), &msg)),
                _ => break,
            }
        }
        Ok(batch)
    }

    fn job_ack(_: &()) -> AckHandle {
        AckHandle::none()
    }

    async fn acknowledge(
        &mut self,
        _ctx: &SourceContext,
        _receipt: (),
        _answer: &Result<Accepted, IntakeError>,
    ) -> Result<(), String> {
        // Nothing to tell the server; an intake error fails the actor (the shell does that).
        Ok(())
    }
}
