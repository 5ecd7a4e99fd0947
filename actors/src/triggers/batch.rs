//! Acknowledgements sent to a broker in batches: SQS deletes and visibility changes, Pub/Sub
//! acks, nacks and deadline renewals. Nothing waits for these calls (the outcome they report
//! is already durable), so an item lingers up to [`Linger::wait`] for others to share its call:
//! a busy trigger makes one call per batch instead of one per message.
//!
//! Items are grouped by what one call can carry ([`BatchSink::group`]: a delete and a
//! visibility change are different SQS calls). A group is sent once it is full or its linger is
//! over; at most [`Linger::concurrent_calls`] calls are on their way at once. Items a call
//! reports as worth another try come back after a backoff, up to [`Linger::attempts`] tries.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};

/// The broker side of a batcher: how items group into calls and how a call is made.
pub trait BatchSink: Send + Sync + 'static {
    type Item: Clone + Debug + Send + 'static;
    /// Items of one group go into one call.
    type Group: Clone + Eq + Hash + Debug + Send + 'static;

    fn group(item: &Self::Item) -> Self::Group;

    /// Sends one call of `items` (all of `group`, at most `Linger::max_batch`); returns the
    /// positions in `items` worth another try. Counting and logging what succeeded or was
    /// refused is the sink's.
    fn send(
        &self,
        group: Self::Group,
        items: &[Self::Item],
    ) -> impl Future<Output = Vec<usize>> + Send;

    /// `item` failed `attempts` times and is given up (the broker redelivers its message).
    fn gave_up(&self, item: &Self::Item);
}

/// How a batcher waits and retries.
#[derive(Debug, Clone, Copy)]
pub struct Linger {
    /// Most items in one call (SQS: 10).
    pub max_batch: usize,
    /// How long the first item of a batch waits for others.
    pub wait: Duration,
    pub concurrent_calls: usize,
    /// Tries per item.
    pub attempts: u32,
}

/// The sending side, cloned into every receipt of one connection. The task ends once every
/// clone is dropped and no retry is pending.
pub struct Batcher<S: BatchSink> {
    tx: mpsc::UnboundedSender<(S::Item, u32)>,
}

impl<S: BatchSink> Clone for Batcher<S> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<S: BatchSink> Batcher<S> {
    pub fn start(sink: S, linger: Linger) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(Arc::new(sink), linger, rx, tx.downgrade()));
        Self { tx }
    }

    pub fn send(&self, item: S::Item) {
        let _ = self.tx.send((item, 0));
    }
}

async fn run<S: BatchSink>(
    sink: Arc<S>,
    linger: Linger,
    mut rx: mpsc::UnboundedReceiver<(S::Item, u32)>,
    retry: mpsc::WeakUnboundedSender<(S::Item, u32)>,
) {
    let calls = Arc::new(Semaphore::new(linger.concurrent_calls.max(1)));
    let max_batch = linger.max_batch.max(1);
    loop {
        let Ok(permit) = Arc::clone(&calls).acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        // Gathered until one group is full or the first item's linger is over.
        let mut groups: HashMap<S::Group, Vec<(S::Item, u32)>> = HashMap::new();
        let until = tokio::time::Instant::now() + linger.wait;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            let batch = groups.entry(S::group(&item.0)).or_default();
            batch.push(item);
            if batch.len() >= max_batch {
                break;
            }
            next = match rx.try_recv() {
                Ok(item) => Some(item),
                Err(_) => tokio::time::timeout_at(until, rx.recv())
                    .await
                    .ok()
                    .flatten(),
            };
        }
        let sink = Arc::clone(&sink);
        let retry = retry.clone();
        tokio::spawn(async move {
            let mut again = Vec::new();
            for (group, batch) in groups {
                let (items, tries): (Vec<S::Item>, Vec<u32>) = batch.into_iter().unzip();
                for i in sink.send(group, &items).await {
                    if let (Some(item), Some(tries)) = (items.get(i), tries.get(i)) {
                        again.push((item.clone(), *tries));
                    }
                }
            }
            drop(permit);
            for (item, attempt) in again {
                if attempt + 1 >= linger.attempts {
                    sink.gave_up(&item);
                    continue;
                }
                let retry = retry.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(200 << attempt.min(6))).await;
                    if let Some(tx) = retry.upgrade() {
                        let _ = tx.send((item, attempt + 1));
                    }
                });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records calls; refuses (for a retry) items listed in `flaky` until they were tried twice.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<(bool, Vec<u32>)>>,
        flaky: Vec<u32>,
        tries: Mutex<HashMap<u32, u32>>,
        given_up: Mutex<Vec<u32>>,
    }

    impl BatchSink for Arc<Recorder> {
        type Item = u32;
        type Group = bool;

        fn group(item: &u32) -> bool {
            item.is_multiple_of(2)
        }

        async fn send(&self, group: bool, items: &[u32]) -> Vec<usize> {
            self.calls.lock().unwrap().push((group, items.to_vec()));
            let mut tries = self.tries.lock().unwrap();
            let mut again = Vec::new();
            for (pos, i) in items.iter().enumerate() {
                let t = tries.entry(*i).or_default();
                *t += 1;
                if self.flaky.contains(i) && *t <= 2 {
                    again.push(pos);
                }
            }
            again
        }

        fn gave_up(&self, item: &u32) {
            self.given_up.lock().unwrap().push(*item);
        }
    }

    const LINGER: Linger = Linger {
        max_batch: 3,
        wait: Duration::from_millis(20),
        concurrent_calls: 2,
        attempts: 4,
    };

    #[tokio::test(start_paused = true)]
    async fn items_share_calls_by_group_and_fill_up_to_the_batch_size() {
        let rec = Arc::new(Recorder::default());
        let b = Batcher::start(Arc::clone(&rec), LINGER);
        for i in 0..7 {
            b.send(i);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let calls = rec.calls.lock().unwrap().clone();
        let mut sent: Vec<u32> = calls.iter().flat_map(|(_, i)| i.clone()).collect();
        sent.sort_unstable();
        assert_eq!(sent, (0..7).collect::<Vec<_>>(), "each item sent once");
        for (group, items) in &calls {
            assert!(items.len() <= 3, "{calls:?}");
            assert!(items.iter().all(|i| (i % 2 == 0) == *group), "{calls:?}");
        }
        assert!(calls.len() < 7, "items shared calls: {calls:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_item_waits_its_linger_then_goes() {
        let rec = Arc::new(Recorder::default());
        let b = Batcher::start(Arc::clone(&rec), LINGER);
        b.send(1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(rec.calls.lock().unwrap().is_empty(), "still lingering");
        tokio::time::sleep(Duration::from_millis(15)).await;
        assert_eq!(rec.calls.lock().unwrap().clone(), vec![(false, vec![1])]);
    }

    #[tokio::test(start_paused = true)]
    async fn refused_items_are_retried_then_given_up() {
        let rec = Arc::new(Recorder {
            flaky: vec![4],
            ..Recorder::default()
        });
        let b = Batcher::start(
            Arc::clone(&rec),
            Linger {
                attempts: 2,
                ..LINGER
            },
        );
        b.send(4);
        b.send(6);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(*rec.tries.lock().unwrap().get(&4).unwrap(), 2);
        assert_eq!(*rec.tries.lock().unwrap().get(&6).unwrap(), 1);
        assert_eq!(rec.given_up.lock().unwrap().clone(), vec![4]);
    }
}
