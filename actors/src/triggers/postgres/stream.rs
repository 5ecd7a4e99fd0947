//! The Postgres source in the connector shell: a logical replication stream (pgwire-replication,
//! pgoutput) whose slot advances only over settled changes.
//!
//! Each transaction gets a sequence number when its Begin arrives; its events count as answered
//! once the intake has answered them, and as settled once each of their jobs has a durable
//! outcome. The confirmed flush LSN sent to the server is the end of the newest transaction
//! such that it and every one before it are committed, answered and settled (contiguous, as the
//! Kafka trigger commits offsets). With nothing in flight, a keepalive's `wal_end` is confirmed
//! too, so an idle slot (or one whose changes are all to other tables) never holds WAL back.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::config::{Granularity, PostgresConfig};
use super::control::{self, Target};
use super::event::{event_id, lsn_text, row_event, transaction_event, Change, Relations, TxInfo};
use super::pgoutput::{self, Message};
use crate::model::ack::AckHandle;
use crate::model::event::Event;
use crate::triggers::source::{set_status_field, Pulled, Source, SourceContext};
use crate::triggers::{Accepted, IntakeError};

/// How long the server may take to accept `START_REPLICATION`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Rows one transaction event holds at most; a bigger transaction is dead-lettered with the
/// reason (`granularity = "row"` takes any size).
pub(super) const MAX_TRANSACTION_ROWS: usize = 10_000;

pub(super) struct PostgresSource {
    cfg: PostgresConfig,
    link: Option<Link>,
}

/// What one message needs: its transaction, and where its jobs' outcomes are reported.
pub(super) struct Receipt {
    seq: u64,
    settled: mpsc::UnboundedSender<u64>,
}

struct Link {
    client: ReplicationClient,
    slot: String,
    relations: Relations,
    open: Option<OpenTx>,
    ready: VecDeque<Pulled<Receipt>>,
    track: LsnTrack,
    settled_tx: mpsc::UnboundedSender<u64>,
    settled_rx: mpsc::UnboundedReceiver<u64>,
    /// The newest LSN confirmed to the server.
    confirmed: u64,
}

struct OpenTx {
    seq: u64,
    info: TxInfo,
    /// Changes seen so far, the operations not taken included (the event ids' positions).
    position: usize,
    /// `granularity = "transaction"`: the row events so far.
    rows: Vec<Value>,
    defect: Option<String>,
}

impl PostgresSource {
    pub(super) fn new(cfg: PostgresConfig) -> Self {
        Self { cfg, link: None }
    }
}

impl Source for PostgresSource {
    type Receipt = Receipt;

    async fn connect(&mut self, ctx: &SourceContext) -> Result<(), String> {
        let trigger = ctx.name().to_string();
        let slot = self.cfg.slot_name(&trigger);
        let publication = self.cfg.publication_name(&trigger);
        ctx.set_status(json!({"connected": false, "slot": slot, "publication": publication}));
        let target = Target::parse(&self.cfg.connection).map_err(|m| format!("connection {m}"))?;
        let start = control::prepare(&self.cfg, &trigger, &target).await?;
        let rc = if target.host.starts_with('/') {
            ReplicationConfig::unix(
                target.host.clone(),
                target.port,
                target.user.clone(),
                target.password.clone(),
                target.dbname.clone(),
                slot.clone(),
                publication.clone(),
            )
        } else {
            ReplicationConfig::new(
                target.host.clone(),
                target.user.clone(),
                target.password.clone(),
                target.dbname.clone(),
                slot.clone(),
                publication.clone(),
            )
            .with_port(target.port)
        }
        .with_start_lsn(Lsn::from(start.confirmed))
        .with_status_interval(self.cfg.status_interval);
        let mut client = ReplicationClient::connect(rc).await.map_err(|e| {
            format!(
                "replication connection to {}:{}: {e}",
                target.host, target.port
            )
        })?;
        tokio::time::timeout(START_TIMEOUT, client.wait_started())
            .await
            .map_err(|_| {
                format!("the server did not start streaming slot `{slot}` within {START_TIMEOUT:?}")
            })?
            .map_err(|e| format!("streaming slot `{slot}`: {e}"))?;
        tracing::info!(trigger, slot, publication, confirmed = %lsn_text(start.confirmed), created = start.created, "postgres replication started");
        let (settled_tx, settled_rx) = mpsc::unbounded_channel();
        self.link = Some(Link {
            client,
            slot: slot.clone(),
            relations: Relations::new(),
            open: None,
            ready: VecDeque::new(),
            track: LsnTrack::default(),
            settled_tx,
            settled_rx,
            confirmed: start.confirmed,
        });
        ctx.set_status(json!({
            "connected": true, "slot": slot, "publication": publication,
            "confirmed_lsn": lsn_text(start.confirmed), "error": null,
        }));
        Ok(())
    }

    async fn receive(
        &mut self,
        ctx: &SourceContext,
        max: usize,
    ) -> Result<Vec<Pulled<Receipt>>, String> {
        loop {
            let link = self.link.as_mut().ok_or("not connected")?;
            while let Ok(seq) = link.settled_rx.try_recv() {
                link.track.settled(seq);
            }
            link.confirm(ctx);
            if !link.ready.is_empty() {
                let n = max.max(1).min(link.ready.len());
                return Ok(link.ready.drain(..n).collect());
            }
            let event = tokio::select! {
                e = link.client.recv() => e,
                Some(seq) = link.settled_rx.recv() => {
                    link.track.settled(seq);
                    continue;
                }
            };
            let event = event
                .map_err(|e| format!("replication stream of slot `{}`: {e}", link.slot))?
                .ok_or_else(|| {
                    format!(
                        "the server ended the replication stream of slot `{}`",
                        link.slot
                    )
                })?;
            self.handle(ctx, event)?;
        }
    }

    fn job_ack(receipt: &Receipt) -> AckHandle {
        let (seq, tx) = (receipt.seq, receipt.settled.clone());
        AckHandle::on_settle(move |_| {
            let _ = tx.send(seq);
        })
    }

    async fn acknowledge(
        &mut self,
        _ctx: &SourceContext,
        r: Receipt,
        answer: &Result<Accepted, IntakeError>,
    ) -> Result<(), String> {
        let link = self.link.as_mut().ok_or("not connected")?;
        match answer {
            Ok(Accepted::Queued(ids)) => link.track.answered(r.seq, ids.len()),
            // Durable already (parked, an earlier delivery's jobs, a dead letter) or nothing
            // to run.
            Ok(_) => link.track.answered(r.seq, 0),
            // Never confirmed: the shell fails the actor, and the slot streams it again.
            Err(_) => {}
        }
        Ok(())
    }

    async fn close(&mut self, ctx: &SourceContext, error: Option<&str>) {
        set_status_field(ctx.runtime(), "connected", json!(false));
        if let Some(e) = error {
            set_status_field(ctx.runtime(), "error", json!(e));
        }
        if let Some(mut link) = self.link.take() {
            link.client.stop();
            let _ = tokio::time::timeout(Duration::from_secs(5), link.client.shutdown()).await;
        }
    }
}

impl PostgresSource {
    fn handle(&mut self, ctx: &SourceContext, event: ReplicationEvent) -> Result<(), String> {
        let trigger = ctx.name().to_string();
        if let ReplicationEvent::XLogData {
            wal_start, data, ..
        } = &event
        {
            let message = pgoutput::decode(data).map_err(|e| e.to_string())?;
            return self.change(&trigger, message, wal_start.as_u64());
        }
        let granularity = self.cfg.granularity;
        let link = self.link.as_mut().ok_or("not connected")?;
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                let seq = link.track.begin();
                link.open = Some(OpenTx {
                    seq,
                    info: TxInfo {
                        xid,
                        commit_lsn: final_lsn.as_u64(),
                        commit_time_micros,
                    },
                    position: 0,
                    rows: Vec::new(),
                    defect: None,
                });
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                let tx = link
                    .open
                    .take()
                    .ok_or("a Commit without its Begin in the replication stream")?;
                if granularity == Granularity::Transaction && tx.position > 0 {
                    let id = event_id(&trigger, &link.slot, tx.info.commit_lsn, 0);
                    let payload = transaction_event(&trigger, &tx.info, tx.rows);
                    link.push(
                        Event::deterministic(id, payload).with_defect(tx.defect),
                        tx.seq,
                    );
                }
                link.track.committed(tx.seq, end_lsn.as_u64());
            }
            // Handled above.
            ReplicationEvent::XLogData { .. } => {}
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                if link.open.is_none() && link.track.is_idle() && link.ready.is_empty() {
                    link.confirm_to(ctx, wal_end.as_u64());
                }
            }
            ReplicationEvent::Message { .. } => {}
            ReplicationEvent::StoppedAt { reached } => {
                return Err(format!("the replication stream stopped at {reached}"));
            }
        }
        Ok(())
    }

    /// One decoded message inside a transaction.
    fn change(&mut self, trigger: &str, message: Message, lsn: u64) -> Result<(), String> {
        let takes: Vec<&'static str> = self.cfg.operations.iter().map(|o| o.as_str()).collect();
        let granularity = self.cfg.granularity;
        let link = self.link.as_mut().ok_or("not connected")?;
        let (relations, changes): (Vec<u32>, Vec<Change>) = match &message {
            Message::Relation(rel) => {
                link.relations.insert(rel.id, rel.clone());
                return Ok(());
            }
            Message::Insert { relation, new } => (vec![*relation], vec![Change::Insert { new }]),
            Message::Update {
                relation,
                key,
                old,
                new,
            } => (
                vec![*relation],
                vec![Change::Update {
                    key: key.as_ref(),
                    old: old.as_ref(),
                    new,
                }],
            ),
            Message::Delete { relation, key, old } => (
                vec![*relation],
                vec![Change::Delete {
                    key: key.as_ref(),
                    old: old.as_ref(),
                }],
            ),
            Message::Truncate { relations, .. } => (
                relations.clone(),
                relations.iter().map(|_| Change::Truncate).collect(),
            ),
            // Types, origins and logical messages make no events; Begin and Commit come as
            // their own replication events.
            _ => return Ok(()),
        };
        let Some(tx) = link.open.as_mut() else {
            return Err("a change outside a transaction in the replication stream".into());
        };
        for (relid, change) in relations.into_iter().zip(changes) {
            tx.position += 1;
            if !takes.contains(&change.op()) {
                continue;
            }
            let rel = link.relations.get(&relid).ok_or_else(|| {
                format!("a change to relation {relid} before its Relation message")
            })?;
            let (payload, defect) = row_event(trigger, rel, &change, lsn, &tx.info);
            match granularity {
                Granularity::Row => {
                    let id = event_id(trigger, &link.slot, tx.info.commit_lsn, tx.position);
                    let event = Event::deterministic(id, payload).with_defect(defect);
                    link.ready.push_back(Pulled {
                        event,
                        receipt: Receipt {
                            seq: tx.seq,
                            settled: link.settled_tx.clone(),
                        },
                    });
                    link.track.emitted(tx.seq);
                }
                Granularity::Transaction => {
                    if defect.is_some() && tx.defect.is_none() {
                        tx.defect = defect;
                    }
                    if tx.rows.len() < MAX_TRANSACTION_ROWS {
                        tx.rows.push(payload);
                    } else if tx.defect.is_none() {
                        tx.defect = Some(format!(
                            "the transaction has more than {MAX_TRANSACTION_ROWS} rows; use granularity = \"row\" for it"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Link {
    fn push(&mut self, event: Event, seq: u64) {
        self.ready.push_back(Pulled {
            event,
            receipt: Receipt {
                seq,
                settled: self.settled_tx.clone(),
            },
        });
        self.track.emitted(seq);
    }

    /// Confirms the end of the newest settled transaction, if it moved.
    fn confirm(&mut self, ctx: &SourceContext) {
        if let Some(lsn) = self.track.confirmable() {
            self.confirm_to(ctx, lsn);
        }
    }

    fn confirm_to(&mut self, ctx: &SourceContext, lsn: u64) {
        if lsn <= self.confirmed {
            return;
        }
        self.confirmed = lsn;
        self.client.update_applied_lsn(Lsn::from(lsn));
        set_status_field(ctx.runtime(), "confirmed_lsn", json!(lsn_text(lsn)));
    }
}

/// Where each transaction stands, by sequence number (see the module's doc).
#[derive(Default)]
struct LsnTrack {
    txs: BTreeMap<u64, TxTrack>,
    next: u64,
}

#[derive(Default)]
struct TxTrack {
    /// Set at Commit.
    end_lsn: Option<u64>,
    /// Events not answered by the intake yet.
    unanswered: usize,
    /// Jobs queued minus jobs settled (outcomes may arrive before the answer that counts them).
    pending: i64,
}

impl LsnTrack {
    fn begin(&mut self) -> u64 {
        self.next += 1;
        self.txs.insert(self.next, TxTrack::default());
        self.next
    }

    fn emitted(&mut self, seq: u64) {
        if let Some(t) = self.txs.get_mut(&seq) {
            t.unanswered += 1;
        }
    }

    fn answered(&mut self, seq: u64, jobs: usize) {
        if let Some(t) = self.txs.get_mut(&seq) {
            t.unanswered = t.unanswered.saturating_sub(1);
            t.pending += i64::try_from(jobs).unwrap_or(i64::MAX);
        }
    }

    fn settled(&mut self, seq: u64) {
        if let Some(t) = self.txs.get_mut(&seq) {
            t.pending -= 1;
        }
    }

    fn committed(&mut self, seq: u64, end_lsn: u64) {
        if let Some(t) = self.txs.get_mut(&seq) {
            t.end_lsn = Some(end_lsn);
        }
    }

    /// Takes the settled transactions at the front; the end of the last one taken.
    fn confirmable(&mut self) -> Option<u64> {
        let mut last = None;
        while let Some(entry) = self.txs.first_entry() {
            let t = entry.get();
            match t.end_lsn {
                Some(end) if t.unanswered == 0 && t.pending <= 0 => {
                    last = Some(end);
                    entry.remove();
                }
                _ => break,
            }
        }
        last
    }

    fn is_idle(&self) -> bool {
        self.txs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_confirmed_lsn_only_passes_settled_transactions_in_order() {
        let mut t = LsnTrack::default();
        let (a, b) = (t.begin(), t.begin());
        t.emitted(a);
        t.emitted(b);
        t.committed(a, 100);
        t.committed(b, 200);
        // b is done first: nothing moves until a is.
        t.answered(b, 1);
        t.settled(b);
        assert_eq!(t.confirmable(), None);
        // a's job settles before its answer arrives (counted up, not lost).
        t.settled(a);
        assert_eq!(t.confirmable(), None, "a is not answered yet");
        t.answered(a, 1);
        assert_eq!(t.confirmable(), Some(200));
        assert!(t.is_idle());
        // An open transaction holds back those after it.
        let (c, d) = (t.begin(), t.begin());
        t.committed(d, 400);
        assert_eq!(t.confirmable(), None);
        t.committed(c, 300);
        assert_eq!(
            t.confirmable(),
            Some(400),
            "transactions without events settle at commit"
        );
    }
}
