//! librdkafka callbacks: logs, client errors, and the rebalances that decide where each
//! assigned partition starts and what is committed when one is revoked.

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;

use super::offsets::{KafkaState, PartitionKey, PartitionTrack, Settled, Tracking};
use crate::store::Store;

// ---------------------------------------------------------------------------------------------
// librdkafka context: logs, errors, rebalances

pub(super) struct KafkaContext {
    pub(super) trigger: String,
    pub(super) group: String,
    pub(super) store: Store,
    pub(super) handle: tokio::runtime::Handle,
    /// Shared with the trigger's task, which records the intake's answers (`kafka/source.rs`).
    pub(super) tracking: Arc<Mutex<Tracking>>,
    pub(super) settled: Mutex<mpsc::Receiver<Settled>>,
    /// Set by the error callback when the consumer cannot go on.
    pub(super) lost: Mutex<Option<String>>,
    pub(super) drain_timeout: Duration,
}

impl KafkaContext {
    pub(super) fn tracking(&self) -> std::sync::MutexGuard<'_, Tracking> {
        self.tracking.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn drain_settled(&self) {
        let rx = self.settled.lock().unwrap_or_else(|p| p.into_inner());
        self.tracking().drain(&rx);
    }

    fn set_lost(&self, why: String) {
        let mut l = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        l.get_or_insert(why);
    }

    pub(super) fn take_lost(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Commits the finished positions (of `only`, or all) to the broker and to sled.
    pub(super) fn commit(
        &self,
        consumer: &BaseConsumer<KafkaContext>,
        only: Option<&[PartitionKey]>,
        mode: CommitMode,
    ) {
        let due = self.tracking().to_commit(only);
        if due.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &due {
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
                tracing::warn!(trigger = %self.trigger, error = %e, "cannot build a commit");
            }
        }
        // sled first: if the broker's commit is lost, the next assignment still starts here.
        let saved = self.handle.block_on(self.save_positions(&due));
        if let Err(e) = saved {
            tracing::warn!(trigger = %self.trigger, error = %e, "cannot save Kafka positions");
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => {
                let mut t = self.tracking();
                for ((topic, partition), offset) in due {
                    if let Some(p) = t.partitions.get_mut(&(topic, partition)) {
                        p.committed = Some(offset);
                    }
                }
            }
            // The next commit carries the same or later positions.
            Err(e) => tracing::warn!(trigger = %self.trigger, error = %e, "Kafka commit failed"),
        }
    }

    async fn save_positions(&self, due: &[(PartitionKey, i64)]) -> Result<(), String> {
        let mut state = KafkaState::load(&self.store, &self.trigger)?;
        if state.group_id != self.group {
            state.group_id = self.group.clone();
            state.positions.clear();
        }
        for ((topic, partition), offset) in due {
            state
                .positions
                .entry(topic.to_string())
                .or_default()
                .insert(*partition, *offset);
        }
        let v = serde_json::to_value(&state).map_err(|e| e.to_string())?;
        self.store
            .put_source_state(&self.trigger, &v)
            .await
            .map_err(|e| e.to_string())
    }

    fn on_assign(&self, consumer: &BaseConsumer<KafkaContext>, tpl: &mut TopicPartitionList) {
        let saved = KafkaState::load(&self.store, &self.trigger).unwrap_or_else(|e| {
            tracing::warn!(trigger = %self.trigger, error = %e, "ignoring saved Kafka positions");
            KafkaState::default()
        });
        let committed = match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(c) => c.to_topic_map(),
            Err(e) => {
                tracing::warn!(trigger = %self.trigger, error = %e, "cannot read committed offsets; using the saved positions");
                HashMap::new()
            }
        };
        let mut tracking = self.tracking();
        tracking.generation += 1;
        let generation = tracking.generation;
        let partitions: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        for (topic, partition) in partitions {
            let broker = committed
                .get(&(topic.clone(), partition))
                .and_then(|o| o.to_raw())
                .filter(|o| *o >= 0);
            let ours = saved.position(&self.group, &topic, partition);
            let start = match (broker, ours) {
                (Some(b), Some(o)) if o > b => {
                    tracing::info!(trigger = %self.trigger, topic = %topic, partition, broker = b, saved = o, "resuming from the saved position (the broker's commit is behind)");
                    Some(o)
                }
                (None, Some(o)) => Some(o),
                (b, _) => b,
            };
            let key: PartitionKey = (Arc::from(topic.as_str()), partition);
            tracking
                .partitions
                .insert(key, PartitionTrack::new(generation, broker));
            if let Some(start) = start {
                if broker != Some(start) {
                    let _ = tpl.set_partition_offset(&topic, partition, Offset::Offset(start));
                }
            }
        }
        tracking.newly_assigned = true;
        let assigned: Vec<String> = tpl
            .elements()
            .iter()
            .map(|e| format!("{}/{}", e.topic(), e.partition()))
            .collect();
        tracing::info!(trigger = %self.trigger, partitions = ?assigned, "kafka partitions assigned");
    }

    fn on_revoke(&self, consumer: &BaseConsumer<KafkaContext>, tpl: &TopicPartitionList) {
        let revoked: Vec<PartitionKey> = tpl
            .elements()
            .iter()
            .map(|e| (Arc::from(e.topic()), e.partition()))
            .collect();
        // Also on a graceful stop (the router still runs then): fewer messages read twice.
        let deadline = Instant::now() + self.drain_timeout;
        // Wait for the revoked partitions' jobs, within the drain timeout.
        loop {
            self.drain_settled();
            let pending: usize = {
                let t = self.tracking();
                revoked
                    .iter()
                    .filter_map(|k| t.partitions.get(k))
                    .map(|p| p.pending.len())
                    .sum()
            };
            if pending == 0 || Instant::now() >= deadline {
                if pending > 0 {
                    tracing::warn!(trigger = %self.trigger, messages = pending, "partitions revoked with jobs still running; their offsets stay uncommitted (the new owner reads them again)");
                }
                break;
            }
            let rx = self.settled.lock().unwrap_or_else(|p| p.into_inner());
            if let Ok(s) = rx.recv_timeout(Duration::from_millis(20)) {
                self.tracking().apply(s);
            }
        }
        if !consumer.assignment_lost() {
            self.commit(consumer, Some(&revoked), CommitMode::Sync);
        }
        let mut t = self.tracking();
        for k in &revoked {
            t.partitions.remove(k);
        }
        tracing::info!(trigger = %self.trigger, partitions = revoked.len(), "kafka partitions revoked");
    }
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(trigger = %self.trigger, facility = fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(trigger = %self.trigger, facility = fac, "librdkafka: {message}")
            }
            _ => tracing::debug!(trigger = %self.trigger, facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let fatal = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown)
        ) || matches!(error, KafkaError::MessageConsumptionFatal(_));
        if fatal {
            self.set_lost(format!("Kafka: {reason}"));
        } else {
            tracing::warn!(trigger = %self.trigger, error = %error, "librdkafka: {reason}");
        }
    }
}

impl ConsumerContext for KafkaContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            rdkafka::consumer::RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.on_assign(consumer, tpl);
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = r {
                    self.set_lost(format!("cannot take the assigned partitions: {e}"));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.on_revoke(consumer, tpl);
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = r {
                    tracing::warn!(trigger = %self.trigger, error = %e, "unassign failed");
                }
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                tracing::warn!(trigger = %self.trigger, error = %code, "rebalance error");
                let _ = consumer.unassign();
                self.tracking().partitions.clear();
            }
        }
    }
}
