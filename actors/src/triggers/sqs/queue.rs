//! The SQS source in the connector shell: long-polled receives of at most the free
//! `max_in_flight` slots, each message deleted (batched, `sqs/batch.rs`) once its jobs settle,
//! kept invisible meanwhile, handed back at once when a job ends without a durable outcome.

use std::time::Duration;

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use serde_json::json;

use super::batch::SqsBatcher;
use super::config::{DeleteWhen, OnDeadLetter, SqsConfig};
use super::event::sqs_event;
use crate::model::ack::AckHandle;
use crate::model::job::JobStatus;
use crate::triggers::settle::{Acknowledger, Settler};
use crate::triggers::source::{set_status, Pulled, Source, SourceContext};
use crate::triggers::{Accepted, IntakeError};

/// How much longer than the long poll itself a receive may take before it counts as lost.
const RECEIVE_GRACE: Duration = Duration::from_secs(30);

pub(super) struct SqsSource {
    cfg: SqsConfig,
    /// Set once connected.
    link: Option<Link>,
    /// The number given to the next received message, for the settler.
    next_id: u64,
}

struct Link {
    client: aws_sdk_sqs::Client,
    /// The visibility timeout messages are received with and renewed to, in seconds.
    visibility: i32,
    batcher: SqsBatcher,
    /// `None` with `delete = "on_accept"`: nothing waits for outcomes.
    acks: Option<Settler<SqsAck>>,
}

/// What one message needs to be deleted, extended or handed back.
pub(super) struct Receipt {
    id: u64,
    handle: String,
    batcher: SqsBatcher,
    acks: Option<Settler<SqsAck>>,
    visibility: i32,
}

/// A message whose jobs are running: deleted when they settle (a dead-lettered one only with
/// `on_dead_letter = "delete"`), its visibility renewed meanwhile.
pub(super) struct SqsAck {
    handle: String,
    batcher: SqsBatcher,
    visibility: i32,
    on_dead_letter: OnDeadLetter,
}

impl Acknowledger for SqsAck {
    async fn settled(self, ok: bool) {
        if ok || self.on_dead_letter == OnDeadLetter::Delete {
            self.batcher.delete(self.handle);
        }
        // `keep`: the message reappears after its visibility timeout, is answered as a
        // duplicate of a dead-lettered job and left again, until the queue's redrive policy
        // moves it to its dead-letter queue.
    }

    async fn unsettled(self) {
        self.batcher.visibility(self.handle, 0);
    }

    async fn progress(&self) {
        self.batcher
            .visibility(self.handle.clone(), self.visibility);
    }
}

impl SqsSource {
    pub(super) fn new(cfg: SqsConfig) -> Self {
        Self {
            cfg,
            link: None,
            next_id: 0,
        }
    }

    /// The queue's own visibility timeout, which also tells that the queue exists and the
    /// credentials may read it.
    async fn queue_visibility(&self, client: &aws_sdk_sqs::Client) -> Result<i32, String> {
        let call = client
            .get_queue_attributes()
            .queue_url(&self.cfg.queue_url)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .send();
        let out = tokio::time::timeout(RECEIVE_GRACE, call)
            .await
            .map_err(|_| {
                format!(
                    "queue `{}`: no answer within {RECEIVE_GRACE:?}",
                    self.cfg.queue_url
                )
            })?
            .map_err(|e| {
                format!(
                    "queue `{}`: {}",
                    self.cfg.queue_url,
                    aws_sdk_sqs::error::DisplayErrorContext(&e)
                )
            })?;
        Ok(out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::VisibilityTimeout))
            .and_then(|v| v.parse().ok())
            .unwrap_or(30))
    }

    /// Whether a duplicate's jobs include a dead-lettered one (left in the queue with
    /// `on_dead_letter = "keep"`).
    fn dead_lettered(ctx: &SourceContext, jobs: &[crate::model::job::JobId]) -> bool {
        let store = &ctx.args.intake.store;
        jobs.iter().any(|id| {
            matches!(store.job_without_event(*id), Ok(Some(r)) if r.status == JobStatus::DeadLettered)
        })
    }
}

impl Source for SqsSource {
    type Receipt = Receipt;

    async fn connect(&mut self, ctx: &SourceContext) -> Result<(), String> {
        set_status(
            ctx.runtime(),
            json!({"connected": false, "queue_url": self.cfg.queue_url}),
        );
        let client = self.cfg.client().await;
        let queue = self.queue_visibility(&client).await?;
        let visibility = match self.cfg.visibility_timeout {
            Some(v) => i32::try_from(v.as_secs()).unwrap_or(i32::MAX),
            None => queue,
        }
        .max(2);
        let batcher = SqsBatcher::start(client.clone(), self.cfg.queue_url.clone(), ctx.name());
        let progress_every = Duration::from_secs(u64::try_from(visibility / 2).unwrap_or(1));
        let acks =
            (self.cfg.delete == DeleteWhen::AfterRun).then(|| Settler::start(Some(progress_every)));
        tracing::info!(trigger = ctx.name(), queue_url = %self.cfg.queue_url, visibility, "sqs queue ready");
        set_status(
            ctx.runtime(),
            json!({"connected": true, "queue_url": self.cfg.queue_url,
                   "visibility_timeout_secs": visibility, "error": null}),
        );
        self.link = Some(Link {
            client,
            visibility,
            batcher,
            acks,
        });
        Ok(())
    }

    async fn receive(
        &mut self,
        ctx: &SourceContext,
        max: usize,
    ) -> Result<Vec<Pulled<Receipt>>, String> {
        let link = self.link.as_ref().ok_or("not connected")?;
        let cfg = &self.cfg;
        let n = usize::from(cfg.batch).min(max).max(1);
        let wait = i32::try_from(cfg.wait_time.as_secs()).unwrap_or(20);
        let mut call = link
            .client
            .receive_message()
            .queue_url(&cfg.queue_url)
            .max_number_of_messages(i32::try_from(n).unwrap_or(10))
            .wait_time_seconds(wait)
            .visibility_timeout(link.visibility)
            .message_system_attribute_names(MessageSystemAttributeName::All);
        for name in &cfg.message_attributes {
            call = call.message_attribute_names(name);
        }
        let out = tokio::time::timeout(cfg.wait_time + RECEIVE_GRACE, call.send())
            .await
            .map_err(|_| format!("receive from `{}`: no answer", cfg.queue_url))?
            .map_err(|e| {
                format!(
                    "receive from `{}`: {}",
                    cfg.queue_url,
                    aws_sdk_sqs::error::DisplayErrorContext(&e)
                )
            })?;
        let mut pulled = Vec::with_capacity(out.messages().len());
        for msg in out.messages() {
            let (event, handle) = match sqs_event(ctx.name(), &cfg.queue_url, msg) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(trigger = ctx.name(), error = %e, "skipping a message");
                    continue;
                }
            };
            self.next_id += 1;
            pulled.push(Pulled {
                receipt: Receipt {
                    id: self.next_id,
                    handle,
                    batcher: link.batcher.clone(),
                    acks: link.acks.clone(),
                    visibility: link.visibility,
                },
                event,
            });
        }
        Ok(pulled)
    }

    fn job_ack(receipt: &Receipt) -> AckHandle {
        match &receipt.acks {
            Some(acks) => acks.job_ack(receipt.id),
            None => AckHandle::none(),
        }
    }

    async fn acknowledge(
        &mut self,
        ctx: &SourceContext,
        r: Receipt,
        answer: &Result<Accepted, IntakeError>,
    ) -> Result<(), String> {
        let keep_dead = self.cfg.on_dead_letter == OnDeadLetter::Keep;
        match answer {
            Ok(Accepted::Queued(ids)) => match &r.acks {
                Some(acks) => {
                    let ack = SqsAck {
                        handle: r.handle,
                        batcher: r.batcher,
                        visibility: r.visibility,
                        on_dead_letter: self.cfg.on_dead_letter,
                    };
                    acks.track(r.id, ack, ids.len());
                    return Ok(());
                }
                // `on_accept`: the jobs are durably queued (the intake waited for the disk).
                None => r.batcher.delete(r.handle),
            },
            Ok(Accepted::Duplicate(ids)) if keep_dead && Self::dead_lettered(ctx, ids) => {}
            Ok(Accepted::DeadLettered(_)) if keep_dead => {}
            // Already durable (parked, an earlier receive's jobs, a dead letter saying why it
            // cannot run) or nothing to run: done as far as the queue is concerned.
            Ok(_) => r.batcher.delete(r.handle),
            // Handed back for another receive; the shell fails the actor.
            Err(_) => r.batcher.visibility(r.handle, 0),
        }
        if let Some(acks) = &r.acks {
            acks.forget(r.id);
        }
        Ok(())
    }

    async fn close(&mut self, ctx: &SourceContext, error: Option<&str>) {
        if let Some(e) = error {
            set_status(
                ctx.runtime(),
                json!({"connected": false, "queue_url": self.cfg.queue_url, "error": e}),
            );
        }
        self.link = None;
    }
}
