//! Deletes and visibility changes of one connection's messages, sent in batches of up to ten
//! (DeleteMessageBatch, ChangeMessageVisibilityBatch): a batch is sent once it is full or 20 ms
//! after its first entry, so a busy trigger makes one call per ten messages. Entries that fail for a reason worth retrying (throttling, a server
//! error) are retried with backoff; a receipt handle SQS no longer knows (the message was
//! deleted, or received again elsewhere) is not.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
};
use metrics::Counter;
use tokio::sync::{mpsc, Semaphore};

// ---------------------------------------------------------------------------------------------
// Messages

#[derive(Debug, Clone)]
enum Op {
    Delete {
        handle: String,
    },
    /// `secs = 0` hands the message back to the queue at once.
    Visibility {
        handle: String,
        secs: i32,
    },
}

/// Most entries SQS takes per batch call.
const MAX_BATCH: usize = 10;
/// Batch calls on their way at once.
const CONCURRENT_CALLS: usize = 4;
/// Tries per entry before giving up (the message then reappears after its visibility timeout).
const ATTEMPTS: u32 = 4;
/// How long a batch waits for more entries before it is sent: SQS bills every request, and
/// nothing waits for a delete (the outcome is already durable), so fuller batches are free.
const LINGER: Duration = Duration::from_millis(20);
/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The sending side, shared by the receipts of one connection.
#[derive(Clone)]
pub(super) struct SqsBatcher {
    tx: mpsc::UnboundedSender<(Op, u32)>,
}

struct Counters {
    deleted: Counter,
    extended: Counter,
    released: Counter,
    failed: Counter,
}

impl SqsBatcher {
    pub(super) fn start(client: aws_sdk_sqs::Client, queue_url: String, trigger: &str) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let series = |action| crate::model::metrics::source_acks(trigger, "sqs", action);
        let counters = Arc::new(Counters {
            deleted: series("deleted"),
            extended: series("extended"),
            released: series("released"),
            failed: series("failed"),
        });
        let sender = tx.clone();
        tokio::spawn(run(
            client,
            queue_url,
            trigger.to_string(),
            rx,
            sender,
            counters,
        ));
        Self { tx }
    }

    pub(super) fn delete(&self, handle: String) {
        let _ = self.tx.send((Op::Delete { handle }, 0));
    }

    /// Keeps the message invisible for `secs` more seconds (0: hands it back now).
    pub(super) fn visibility(&self, handle: String, secs: i32) {
        let _ = self.tx.send((Op::Visibility { handle, secs }, 0));
    }
}

async fn run(
    client: aws_sdk_sqs::Client,
    queue_url: String,
    trigger: String,
    mut rx: mpsc::UnboundedReceiver<(Op, u32)>,
    retry: mpsc::UnboundedSender<(Op, u32)>,
    counters: Arc<Counters>,
) {
    // `retry` keeps the channel open: the task ends when the receipts are gone and no retry
    // is pending, which it tells by the weak count of senders.
    let retry = retry.downgrade();
    let calls = Arc::new(Semaphore::new(CONCURRENT_CALLS));
    loop {
        let Ok(permit) = Arc::clone(&calls).acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut deletes = Vec::new();
        let mut changes = Vec::new();
        let mut next = Some(first);
        let until = tokio::time::Instant::now() + LINGER;
        while let Some(item) = next.take() {
            match item.0 {
                Op::Delete { .. } => deletes.push(item),
                Op::Visibility { .. } => changes.push(item),
            }
            if deletes.len() < MAX_BATCH && changes.len() < MAX_BATCH {
                next = match rx.try_recv() {
                    Ok(item) => Some(item),
                    Err(_) => tokio::time::timeout_at(until, rx.recv())
                        .await
                        .ok()
                        .flatten(),
                };
            }
        }
        let client = client.clone();
        let queue_url = queue_url.clone();
        let trigger = trigger.clone();
        let retry = retry.clone();
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let mut failed = Vec::new();
            if !deletes.is_empty() {
                failed
                    .extend(send_deletes(&client, &queue_url, &trigger, deletes, &counters).await);
            }
            if !changes.is_empty() {
                failed
                    .extend(send_changes(&client, &queue_url, &trigger, changes, &counters).await);
            }
            drop(permit);
            for (op, attempt) in failed {
                if attempt + 1 >= ATTEMPTS {
                    counters.failed.increment(1);
                    tracing::warn!(trigger, ?op, "gave up on an SQS delete or visibility change; the message reappears after its visibility timeout");
                    continue;
                }
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                if let Some(tx) = retry.upgrade() {
                    let _ = tx.send((op, attempt + 1));
                }
            }
        });
    }
}

/// Whether a failed entry is worth another try.
fn retryable(code: &str, sender_fault: bool) -> bool {
    !sender_fault
        || matches!(
            code,
            "ThrottlingException" | "RequestThrottled" | "ServiceUnavailable" | "InternalError"
        )
}

/// The entries to try again.
async fn send_deletes(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    trigger: &str,
    items: Vec<(Op, u32)>,
    counters: &Counters,
) -> Vec<(Op, u32)> {
    let mut entries = Vec::with_capacity(items.len());
    for (i, (op, _)) in items.iter().enumerate() {
        let Op::Delete { handle } = op else { continue };
        if let Ok(e) = DeleteMessageBatchRequestEntry::builder()
            .id(i.to_string())
            .receipt_handle(handle)
            .build()
        {
            entries.push(e);
        }
    }
    let call = client
        .delete_message_batch()
        .queue_url(queue_url)
        .set_entries(Some(entries))
        .send();
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(out)) => {
            counters.deleted.increment(out.successful().len() as u64);
            failed_entries(trigger, "delete", items, out.failed())
        }
        Ok(Err(e)) => {
            tracing::warn!(trigger, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "SQS DeleteMessageBatch failed");
            items
        }
        Err(_) => {
            tracing::warn!(trigger, "SQS DeleteMessageBatch timed out");
            items
        }
    }
}

async fn send_changes(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
    trigger: &str,
    items: Vec<(Op, u32)>,
    counters: &Counters,
) -> Vec<(Op, u32)> {
    let mut entries = Vec::with_capacity(items.len());
    for (i, (op, _)) in items.iter().enumerate() {
        let Op::Visibility { handle, secs } = op else {
            continue;
        };
        if let Ok(e) = ChangeMessageVisibilityBatchRequestEntry::builder()
            .id(i.to_string())
            .receipt_handle(handle)
            .visibility_timeout(*secs)
            .build()
        {
            entries.push(e);
        }
    }
    let call = client
        .change_message_visibility_batch()
        .queue_url(queue_url)
        .set_entries(Some(entries))
        .send();
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(out)) => {
            for done in out.successful() {
                match done.id().parse::<usize>().ok().and_then(|i| items.get(i)) {
                    Some((Op::Visibility { secs: 0, .. }, _)) => counters.released.increment(1),
                    Some(_) => counters.extended.increment(1),
                    None => {}
                }
            }
            failed_entries(trigger, "visibility change", items, out.failed())
        }
        Ok(Err(e)) => {
            tracing::warn!(trigger, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "SQS ChangeMessageVisibilityBatch failed");
            items
        }
        Err(_) => {
            tracing::warn!(trigger, "SQS ChangeMessageVisibilityBatch timed out");
            items
        }
    }
}

/// The items of the failed entries worth retrying; the others are logged.
fn failed_entries(
    trigger: &str,
    what: &str,
    items: Vec<(Op, u32)>,
    failed: &[aws_sdk_sqs::types::BatchResultErrorEntry],
) -> Vec<(Op, u32)> {
    let mut again = Vec::new();
    for f in failed {
        let Some(item) = f.id().parse::<usize>().ok().and_then(|i| items.get(i)) else {
            continue;
        };
        let item = item.clone();
        if retryable(f.code(), f.sender_fault()) {
            again.push(item);
        } else {
            tracing::warn!(
                trigger,
                what,
                code = f.code(),
                message = f.message().unwrap_or_default(),
                "SQS refused a {what}; the message reappears after its visibility timeout"
            );
        }
    }
    again
}
