//! Deletes and visibility changes of one connection's messages, sent through the shared
//! batcher (`triggers/batch.rs`) in calls of up to ten (DeleteMessageBatch,
//! ChangeMessageVisibilityBatch). Entries that fail for a reason worth retrying (throttling, a
//! server error) are retried with backoff; a receipt handle SQS no longer knows (the message
//! was deleted, or received again elsewhere) is not.

use std::time::Duration;

use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
};
use metrics::Counter;

use crate::triggers::batch::{BatchSink, Batcher, Linger};

#[derive(Debug, Clone)]
pub(super) enum Op {
    Delete {
        handle: String,
    },
    /// `secs = 0` hands the message back to the queue at once.
    Visibility {
        handle: String,
        secs: i32,
    },
}

/// SQS bills every request and nothing waits for a delete (the outcome is already durable),
/// so fuller batches are free: ten entries per call (SQS's most), 20 ms of linger.
const LINGER: Linger = Linger {
    max_batch: 10,
    wait: Duration::from_millis(20),
    concurrent_calls: 4,
    // Then the message reappears after its visibility timeout.
    attempts: 4,
};
/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The sending side, shared by the receipts of one connection.
#[derive(Clone)]
pub(super) struct SqsBatcher(Batcher<SqsSink>);

pub(super) struct SqsSink {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    trigger: String,
    deleted: Counter,
    extended: Counter,
    released: Counter,
    failed: Counter,
}

impl SqsBatcher {
    pub(super) fn start(client: aws_sdk_sqs::Client, queue_url: String, trigger: &str) -> Self {
        let series = |action| crate::model::metrics::source_acks(trigger, "sqs", action);
        let sink = SqsSink {
            client,
            queue_url,
            trigger: trigger.to_string(),
            deleted: series("deleted"),
            extended: series("extended"),
            released: series("released"),
            failed: series("failed"),
        };
        Self(Batcher::start(sink, LINGER))
    }

    pub(super) fn delete(&self, handle: String) {
        self.0.send(Op::Delete { handle });
    }

    /// Keeps the message invisible for `secs` more seconds (0: hands it back now).
    pub(super) fn visibility(&self, handle: String, secs: i32) {
        self.0.send(Op::Visibility { handle, secs });
    }
}

/// Which batch call an operation goes into.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Call {
    Delete,
    Visibility,
}

impl BatchSink for SqsSink {
    type Item = Op;
    type Group = Call;

    fn group(op: &Op) -> Call {
        match op {
            Op::Delete { .. } => Call::Delete,
            Op::Visibility { .. } => Call::Visibility,
        }
    }

    async fn send(&self, call: Call, ops: &[Op]) -> Vec<usize> {
        let what = match call {
            Call::Delete => "DeleteMessageBatch",
            Call::Visibility => "ChangeMessageVisibilityBatch",
        };
        let answer = match call {
            Call::Delete => {
                let entries = ops.iter().enumerate().filter_map(|(i, op)| match op {
                    Op::Delete { handle } => DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(handle)
                        .build()
                        .ok(),
                    Op::Visibility { .. } => None,
                });
                let call = self
                    .client
                    .delete_message_batch()
                    .queue_url(&self.queue_url)
                    .set_entries(Some(entries.collect()))
                    .send();
                tokio::time::timeout(CALL_TIMEOUT, call).await.map(|r| {
                    r.map(|out| (ids(out.successful(), |s| s.id()), out.failed().to_vec()))
                        .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())
                })
            }
            Call::Visibility => {
                let entries = ops.iter().enumerate().filter_map(|(i, op)| match op {
                    Op::Visibility { handle, secs } => {
                        ChangeMessageVisibilityBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(handle)
                            .visibility_timeout(*secs)
                            .build()
                            .ok()
                    }
                    Op::Delete { .. } => None,
                });
                let call = self
                    .client
                    .change_message_visibility_batch()
                    .queue_url(&self.queue_url)
                    .set_entries(Some(entries.collect()))
                    .send();
                tokio::time::timeout(CALL_TIMEOUT, call).await.map(|r| {
                    r.map(|out| (ids(out.successful(), |s| s.id()), out.failed().to_vec()))
                        .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())
                })
            }
        };
        let trigger = &self.trigger;
        let (done, failed) = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                tracing::warn!(trigger, error, "SQS {what} failed");
                return (0..ops.len()).collect();
            }
            Err(_) => {
                tracing::warn!(trigger, "SQS {what} timed out");
                return (0..ops.len()).collect();
            }
        };
        for op in done.iter().filter_map(|&i| ops.get(i)) {
            match op {
                Op::Delete { .. } => self.deleted.increment(1),
                Op::Visibility { secs: 0, .. } => self.released.increment(1),
                Op::Visibility { .. } => self.extended.increment(1),
            }
        }
        retryable_entries(trigger, what, &failed)
    }

    fn gave_up(&self, op: &Op) {
        self.failed.increment(1);
        tracing::warn!(trigger = %self.trigger, ?op, "gave up on an SQS delete or visibility change; the message reappears after its visibility timeout");
    }
}

/// The positions a batch answer names (entry ids are positions in the call).
fn ids<T>(entries: &[T], id: impl Fn(&T) -> &str) -> Vec<usize> {
    entries.iter().filter_map(|e| id(e).parse().ok()).collect()
}

/// Whether a failed entry is worth another try.
fn retryable(code: &str, sender_fault: bool) -> bool {
    !sender_fault
        || matches!(
            code,
            "ThrottlingException" | "RequestThrottled" | "ServiceUnavailable" | "InternalError"
        )
}

/// The positions of the failed entries worth retrying; the others are logged.
fn retryable_entries(trigger: &str, what: &str, failed: &[BatchResultErrorEntry]) -> Vec<usize> {
    let mut again = Vec::new();
    for f in failed {
        let Ok(i) = f.id().parse::<usize>() else {
            continue;
        };
        if retryable(f.code(), f.sender_fault()) {
            again.push(i);
        } else {
            tracing::warn!(
                trigger,
                code = f.code(),
                message = f.message().unwrap_or_default(),
                "SQS refused an entry of {what}; the message reappears after its visibility timeout"
            );
        }
    }
    again
}
