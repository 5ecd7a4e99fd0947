//! A JetStream durable pull consumer: batched fetches, each message acknowledged once its
//! jobs' outcomes are durable (`ack` after success, `term` after a dead letter, `in_progress`
//! meanwhile; see `nats/mod.rs`).

use std::time::Duration;

use async_nats::jetstream::consumer::pull::{self, Batch};
use async_nats::jetstream::{self, AckKind};
use futures::stream::ReadyChunks;
use futures::StreamExt;

use super::config::{DeliverPolicy, JetStreamConfig, NatsConfig};
use super::event::jetstream_event;
use super::subscription::connect;
use crate::model::ack::AckHandle;
use crate::triggers::settle::{Acknowledger, Settler};
use crate::triggers::source::{Pulled, Source, SourceContext};
use crate::triggers::{Accepted, IntakeError};

/// How long one fetch waits for messages before it is renewed.
const FETCH_EXPIRES: Duration = Duration::from_secs(5);

pub(super) struct JetStreamConsumer {
    cfg: NatsConfig,
    js: JetStreamConfig,
    /// Set once connected.
    consumer: Option<jetstream::consumer::Consumer<pull::Config>>,
    name: String,
    stream_created: i64,
    /// The fetch being read, in chunks of the messages that have arrived.
    fetch: Option<ReadyChunks<Batch>>,
    /// An error met after messages of the same chunk: returned by the next receive, once the
    /// messages before it are taken.
    failed: Option<String>,
    /// The acknowledgements of this connection's messages (set once connected).
    acks: Option<Settler<JetStreamAck>>,
    /// The number given to the next fetched message, for `acks`.
    next_id: u64,
}

/// One fetched message on its way through the intake.
pub(super) struct Receipt {
    id: u64,
    event_id: String,
    acker: jetstream::message::Acker,
    acks: Settler<JetStreamAck>,
}

/// A message's acknowledgement once its jobs settle (`nats/mod.rs`: ack, term, nak, and
/// `in_progress` every `ack_wait / 2` meanwhile).
pub(super) struct JetStreamAck(jetstream::message::Acker);

impl Acknowledger for JetStreamAck {
    async fn settled(self, ok: bool) {
        let kind = if ok { AckKind::Ack } else { AckKind::Term };
        send_ack(&self.0, kind, "settled").await;
    }

    async fn unsettled(self) {
        send_ack(&self.0, AckKind::Nak(None), "unsettled").await;
    }

    async fn progress(&self) {
        send_ack(&self.0, AckKind::Progress, "in progress").await;
    }
}

impl JetStreamConsumer {
    pub(super) fn new(cfg: NatsConfig, js: JetStreamConfig) -> Self {
        Self {
            cfg,
            js,
            consumer: None,
            name: String::new(),
            stream_created: 0,
            fetch: None,
            failed: None,
            acks: None,
            next_id: 0,
        }
    }
}

impl Source for JetStreamConsumer {
    type Receipt = Receipt;

    async fn connect(&mut self, ctx: &SourceContext) -> Result<(), String> {
        let js = &self.js;
        let cfg = &self.cfg;
        let client = connect(cfg, ctx.lost_reporter()).await?;
        let jsctx = jetstream::new(client);
        let stream = match jsctx.get_stream(&js.stream).await {
            Ok(s) => s,
            Err(e) if js.create_stream => {
                tracing::info!(trigger = ctx.name(), stream = %js.stream, error = %e, "creating stream");
                jsctx
                    .get_or_create_stream(jetstream::stream::Config {
                        name: js.stream.clone(),
                        subjects: cfg.subjects.clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| format!("cannot create stream `{}`: {e}", js.stream))?
            }
            Err(e) => return Err(format!("stream `{}`: {e}", js.stream)),
        };
        let name = cfg.consumer_name(ctx.name()).unwrap_or_default();
        let deliver_policy = match js.deliver_policy {
            DeliverPolicy::All => jetstream::consumer::DeliverPolicy::All,
            DeliverPolicy::New => jetstream::consumer::DeliverPolicy::New,
            DeliverPolicy::Last => jetstream::consumer::DeliverPolicy::Last,
            DeliverPolicy::LastPerSubject => jetstream::consumer::DeliverPolicy::LastPerSubject,
        };
        let (filter_subject, filter_subjects) = match cfg.subjects.as_slice() {
            [one] => (one.clone(), Vec::new()),
            many => (String::new(), many.to_vec()),
        };
        // Create-or-update: an existing durable consumer keeps its position (redelivering what was
        // never acked) and takes the configured ack_wait / max_ack_pending.
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(name.clone()),
                deliver_policy,
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: js.ack_wait,
                max_ack_pending: i64::try_from(js.max_ack_pending).unwrap_or(i64::MAX),
                filter_subject,
                filter_subjects,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot create consumer `{name}` on `{}`: {e}", js.stream))?;
        tracing::info!(trigger = ctx.name(), stream = %js.stream, consumer = %name, "nats jetstream consumer ready");
        self.stream_created = stream.cached_info().created.unix_timestamp();
        self.consumer = Some(consumer);
        self.name = name;
        self.acks = Some(Settler::start(Some(js.ack_wait / 2)));
        Ok(())
    }

    /// The messages of the current fetch that have arrived (a new fetch of at most `max` when
    /// the last one is done). Messages fetched but never taken (the actor stopped) are
    /// redelivered after `ack_wait`.
    async fn receive(
        &mut self,
        ctx: &SourceContext,
        max: usize,
    ) -> Result<Vec<Pulled<Receipt>>, String> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let consumer = self.consumer.as_ref().ok_or("not connected")?;
        let acks = self.acks.as_ref().ok_or("not connected")?;
        let name = &self.name;
        if self.fetch.is_none() {
            let batch = self.js.batch.min(self.js.max_ack_pending).min(max).max(1);
            let messages = consumer
                .batch()
                .max_messages(batch)
                .expires(FETCH_EXPIRES)
                .messages()
                .await
                .map_err(|e| format!("fetch from consumer `{name}`: {e}"))?;
            self.fetch = Some(messages.ready_chunks(batch));
        }
        let Some(fetch) = self.fetch.as_mut() else {
            return Ok(Vec::new());
        };
        let Some(chunk) = fetch.next().await else {
            // This fetch is over (expired or complete): the next receive starts another.
            self.fetch = None;
            return Ok(Vec::new());
        };
        let mut pulled = Vec::with_capacity(chunk.len());
        for msg in chunk {
            let msg = match msg {
                Ok(m) if self.failed.is_none() => m,
                Ok(_) => continue,
                Err(e) => {
                    self.failed
                        .get_or_insert(format!("fetch from consumer `{name}`: {e}"));
                    continue;
                }
            };
            let event = match jetstream_event(ctx.name(), self.stream_created, &msg) {
                Ok(e) => e,
                Err(e) => {
                    // Not a consumer delivery at all; nothing to acknowledge or run.
                    tracing::warn!(trigger = ctx.name(), error = %e, "skipping a message");
                    continue;
                }
            };
            let (_, acker) = msg.split();
            self.next_id += 1;
            pulled.push(Pulled {
                receipt: Receipt {
                    id: self.next_id,
                    event_id: event.id.clone(),
                    acker,
                    acks: acks.clone(),
                },
                event,
            });
        }
        if pulled.is_empty() {
            if let Some(e) = self.failed.take() {
                return Err(e);
            }
        }
        Ok(pulled)
    }

    fn job_ack(receipt: &Receipt) -> AckHandle {
        receipt.acks.job_ack(receipt.id)
    }

    async fn acknowledge(
        &mut self,
        _ctx: &SourceContext,
        t: Receipt,
        answer: &Result<Accepted, IntakeError>,
    ) -> Result<(), String> {
        match answer {
            Ok(Accepted::Queued(ids)) => {
                t.acks.track(t.id, JetStreamAck(t.acker), ids.len());
                return Ok(());
            }
            // Already durable (parked or an earlier delivery's jobs) or nothing to run: the
            // message is done as far as the server is concerned.
            Ok(Accepted::Parked(_) | Accepted::Duplicate(_) | Accepted::Filtered) => {
                send_ack(&t.acker, AckKind::Ack, &t.event_id).await;
            }
            // Redelivering would fail the same way forever: terminated, its dead letter (with
            // the reason, written by the intake) is durable.
            Ok(Accepted::DeadLettered(_)) => {
                send_ack(&t.acker, AckKind::Term, &t.event_id).await;
            }
            Err(_) => send_ack(&t.acker, AckKind::Nak(None), &t.event_id).await,
        }
        t.acks.forget(t.id);
        Ok(())
    }
}

async fn send_ack(acker: &jetstream::message::Acker, kind: AckKind, what: &str) {
    if let Err(e) = acker.ack_with(kind).await {
        // The server redelivers after ack_wait; dedup turns that into an ack.
        tracing::warn!(ack = ?kind, what, error = %e, "could not send JetStream ack");
    }
}
