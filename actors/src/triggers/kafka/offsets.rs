//! What a Kafka trigger keeps in sled (positions, reset epoch, pending reset) and which offsets
//! may be committed: never one past a message whose jobs have not all settled.

use std::collections::{BTreeMap, HashMap};
use std::sync::{mpsc, Arc};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::Store;

// ---------------------------------------------------------------------------------------------
// Saved state (sled `source_state`) and resets

/// What a Kafka trigger keeps in sled: the group's positions (next offset to read, per topic
/// and partition), the reset epoch, and a reset waiting to be applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KafkaState {
    #[serde(default)]
    pub group_id: String,
    #[serde(default)]
    pub epoch: u64,
    #[serde(default)]
    pub positions: BTreeMap<String, BTreeMap<i32, i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<ResetRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset: Option<Value>,
}

impl KafkaState {
    pub fn load(store: &Store, trigger: &str) -> Result<Self, String> {
        match store.source_state(trigger) {
            Ok(Some(v)) => serde_json::from_value(v)
                .map_err(|e| format!("saved state of `{trigger}` is not a Kafka trigger's: {e}")),
            Ok(None) => Ok(Self::default()),
            Err(e) => Err(format!("cannot read the saved state: {e}")),
        }
    }

    /// The saved position of a partition, when it belongs to this group.
    pub(super) fn position(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        if self.group_id != group {
            return None;
        }
        self.positions.get(topic)?.get(&partition).copied()
    }
}

/// `POST /api/triggers/{name}/reset` body: `{"to": "earliest" | "latest" | {"offset": N,
/// "topic"?: t, "partition"?: p} | {"timestamp": ms}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    pub to: ResetTo,
    /// Set by millgate to tell this request's outcome from an earlier one's.
    #[serde(default)]
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ResetTo {
    Named(ResetPoint),
    Offset {
        offset: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        partition: Option<i32>,
    },
    Timestamp {
        timestamp: i64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetPoint {
    Earliest,
    Latest,
}

/// Records a reset for the trigger to apply to the partitions it is assigned (at once when it
/// runs, else when it next gets them). Returns the request id to wait for.
pub async fn request_reset(store: &Store, trigger: &str, to: ResetTo) -> Result<String, String> {
    if let ResetTo::Offset { offset, .. } = &to {
        if *offset < 0 {
            return Err("`offset` must not be negative".into());
        }
    }
    let mut state = KafkaState::load(store, trigger)?;
    let id = uuid::Uuid::now_v7().to_string();
    state.reset = Some(ResetRequest { to, id: id.clone() });
    let v = serde_json::to_value(&state).map_err(|e| e.to_string())?;
    store
        .put_source_state(trigger, &v)
        .await
        .map_err(|e| format!("cannot save the reset: {e}"))?;
    Ok(id)
}

// ---------------------------------------------------------------------------------------------
// Offset tracking

/// One job of a message reached its outcome (sent by the job's ack handle).
pub(super) struct Settled {
    pub(super) generation: u64,
    pub(super) topic: Arc<str>,
    pub(super) partition: i32,
    pub(super) offset: i64,
}

/// What this consumer knows of one assigned partition.
#[derive(Debug)]
pub(super) struct PartitionTrack {
    /// Changes when the partition is (re)assigned or reset: settlements of an older
    /// generation no longer move this one's position.
    pub(super) generation: u64,
    /// Offsets taken whose jobs have not all settled.
    pub(super) pending: BTreeMap<i64, Pending>,
    /// One past the highest offset taken (None until the first message).
    pub(super) next: Option<i64>,
    /// The position last committed (or found committed) for this partition.
    pub(super) committed: Option<i64>,
}

impl PartitionTrack {
    pub(super) fn new(generation: u64, committed: Option<i64>) -> Self {
        Self {
            generation,
            pending: BTreeMap::new(),
            next: None,
            committed,
        }
    }

    /// The position that may be committed: the first unsettled offset, else one past the
    /// last taken.
    pub(super) fn committable(&self) -> Option<i64> {
        self.pending.keys().next().copied().or(self.next)
    }

    /// A message read: pending until the intake has answered and its jobs have settled.
    pub(super) fn take(&mut self, offset: i64) {
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
        self.pending.insert(offset, Pending::default());
    }

    /// The intake's answer: `Some(jobs)` queued, `None` nothing to wait for (parked,
    /// duplicate, filtered, dead-lettered: durable already).
    pub(super) fn accepted(&mut self, offset: i64, jobs: Option<usize>) {
        if let Some(p) = self.pending.get_mut(&offset) {
            p.jobs = Some(jobs.unwrap_or(0));
            if p.done() {
                self.pending.remove(&offset);
            }
        }
    }

    pub(super) fn settle_one(&mut self, offset: i64) {
        if let Some(p) = self.pending.get_mut(&offset) {
            p.settled += 1;
            if p.done() {
                self.pending.remove(&offset);
            }
        }
    }
}

/// One taken message's progress. Its jobs may settle before the intake's answer reaches the
/// tracking (the answer is handled on the trigger's task, settlements on the consumer
/// thread), so settlements are counted up and compared once the number of jobs is known.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// How many jobs it became; `None` until the intake has answered.
    jobs: Option<usize>,
    settled: usize,
}

impl Pending {
    fn done(&self) -> bool {
        self.jobs.is_some_and(|jobs| self.settled >= jobs)
    }
}

pub(super) type PartitionKey = (Arc<str>, i32);

/// The consumer thread's bookkeeping, shared with the rebalance callback (which runs on the
/// same thread, inside `poll`).
pub(super) struct Tracking {
    pub(super) partitions: HashMap<PartitionKey, PartitionTrack>,
    pub(super) generation: u64,
    /// Partitions assigned since the loop last looked (a pending reset applies to them).
    pub(super) newly_assigned: bool,
}

impl Tracking {
    pub(super) fn drain(&mut self, settled: &mpsc::Receiver<Settled>) {
        while let Ok(s) = settled.try_recv() {
            self.apply(s);
        }
    }

    pub(super) fn apply(&mut self, s: Settled) {
        if let Some(t) = self.partitions.get_mut(&(s.topic, s.partition)) {
            if t.generation == s.generation {
                t.settle_one(s.offset);
            }
        }
    }

    /// Partitions whose committable position moved past the committed one.
    pub(super) fn to_commit(&self, only: Option<&[PartitionKey]>) -> Vec<(PartitionKey, i64)> {
        self.partitions
            .iter()
            .filter(|(k, _)| only.is_none_or(|o| o.contains(k)))
            .filter_map(|(k, t)| {
                let c = t.committable()?;
                (t.committed.is_none_or(|old| c > old)).then(|| (k.clone(), c))
            })
            .collect()
    }
}
