//! Acks, nacks and ack-deadline renewals of one streaming pull, sent in batches through the
//! shared batcher (`triggers/batch.rs`): one Acknowledge or ModifyAckDeadline call per
//! batch instead of one per message. Calls that fail for a transient reason are retried; an ack
//! id Pub/Sub no longer knows is not (its message is redelivered and deduplicated).

use std::time::Duration;

use gcloud_gax::grpc::Code;
use gcloud_googleapis::pubsub::v1::{AcknowledgeRequest, ModifyAckDeadlineRequest};
use gcloud_pubsub::apiv1::subscriber_client::SubscriberClient;
use metrics::Counter;

use crate::triggers::batch::{BatchSink, Batcher, Linger};

/// What is done to a message, one kind of call each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum AckCall {
    Ack,
    /// A deadline of 0: redelivered at once.
    Nack,
    /// A new deadline, in seconds.
    Extend(i32),
}

pub(super) type AckBatcher = Batcher<PubSubAckSink>;

/// Acknowledge takes up to 2,500 ack ids per call (and 512 KB); a thousand stays well inside
/// both. Nothing waits for these calls, so 20 ms of linger costs no job any time.
pub(super) const ACK_LINGER: Linger = Linger {
    max_batch: 1000,
    wait: Duration::from_millis(20),
    concurrent_calls: 4,
    // Then the deadline runs out and Pub/Sub redelivers; dedup turns that into an ack.
    attempts: 4,
};

pub(super) struct PubSubAckSink {
    client: SubscriberClient,
    subscription: String,
    trigger: String,
    acked: Counter,
    nacked: Counter,
    extended: Counter,
    failed: Counter,
}

impl PubSubAckSink {
    pub(super) fn new(client: SubscriberClient, subscription: String, trigger: &str) -> Self {
        let series = |action| crate::model::metrics::source_acks(trigger, "pubsub", action);
        Self {
            client,
            subscription,
            trigger: trigger.to_string(),
            acked: series("acked"),
            nacked: series("nacked"),
            extended: series("extended"),
            failed: series("failed"),
        }
    }
}

impl BatchSink for PubSubAckSink {
    type Item = (AckCall, String);
    type Group = AckCall;

    fn group(item: &(AckCall, String)) -> AckCall {
        item.0
    }

    async fn send(&self, call: AckCall, items: &[(AckCall, String)]) -> Vec<usize> {
        let ack_ids: Vec<String> = items.iter().map(|(_, id)| id.clone()).collect();
        let n = ack_ids.len() as u64;
        let subscription = self.subscription.clone();
        // The client retries transient errors itself (its default retry setting).
        let answer = match call {
            AckCall::Ack => {
                let req = AcknowledgeRequest {
                    subscription,
                    ack_ids,
                };
                self.client.acknowledge(req, None).await.map(|_| ())
            }
            AckCall::Nack | AckCall::Extend(_) => {
                let req = ModifyAckDeadlineRequest {
                    subscription,
                    ack_ids,
                    ack_deadline_seconds: match call {
                        AckCall::Extend(secs) => secs,
                        _ => 0,
                    },
                };
                self.client.modify_ack_deadline(req, None).await.map(|_| ())
            }
        };
        match answer {
            Ok(()) => {
                match call {
                    AckCall::Ack => self.acked.increment(n),
                    AckCall::Nack => self.nacked.increment(n),
                    AckCall::Extend(_) => self.extended.increment(n),
                }
                Vec::new()
            }
            Err(status) => {
                let transient = matches!(
                    status.code(),
                    Code::Unavailable
                        | Code::DeadlineExceeded
                        | Code::ResourceExhausted
                        | Code::Internal
                        | Code::Aborted
                        | Code::Unknown
                        | Code::Cancelled
                );
                tracing::warn!(trigger = %self.trigger, subscription = %self.subscription, ?call, messages = n, error = %status, transient, "a Pub/Sub acknowledgement call failed");
                if transient {
                    (0..items.len()).collect()
                } else {
                    self.failed.increment(n);
                    Vec::new()
                }
            }
        }
    }

    fn gave_up(&self, item: &(AckCall, String)) {
        self.failed.increment(1);
        tracing::warn!(trigger = %self.trigger, call = ?item.0, "gave up on a Pub/Sub acknowledgement; the message is redelivered after its deadline");
    }
}
