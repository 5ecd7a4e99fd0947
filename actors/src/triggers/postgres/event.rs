//! The events of replicated changes: one per row (`granularity = "row"`), or one per
//! transaction with its rows in order. Values are typed by `values.rs`; an unchanged TOASTed
//! value is left out of `row` and named in `unchanged_toast`, never turned into `null`.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::pgoutput::{Cell, Relation, ReplicaIdentity, Tuple};
use super::values::text_to_json;

/// What every change of one transaction shares.
#[derive(Debug, Clone)]
pub(super) struct TxInfo {
    pub xid: u32,
    /// The LSN of the transaction's commit record (Begin's `final_lsn`).
    pub commit_lsn: u64,
    /// Microseconds since 2000-01-01 (Postgres's epoch).
    pub commit_time_micros: i64,
}

/// One row change, before it becomes an event.
#[derive(Debug, Clone)]
pub(super) enum Change<'a> {
    Insert {
        new: &'a Tuple,
    },
    Update {
        key: Option<&'a Tuple>,
        old: Option<&'a Tuple>,
        new: &'a Tuple,
    },
    Delete {
        key: Option<&'a Tuple>,
        old: Option<&'a Tuple>,
    },
    Truncate,
}

impl Change<'_> {
    pub(super) fn op(&self) -> &'static str {
        match self {
            Change::Insert { .. } => "insert",
            Change::Update { .. } => "update",
            Change::Delete { .. } => "delete",
            Change::Truncate => "truncate",
        }
    }
}

/// `0/16B3748`, as Postgres writes an LSN.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// RFC 3339 (UTC) of microseconds since 2000-01-01.
pub fn pg_time(micros: i64) -> Option<String> {
    const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
    let secs = micros
        .div_euclid(1_000_000)
        .checked_add(PG_EPOCH_UNIX_SECS)?;
    let nanos = u32::try_from(micros.rem_euclid(1_000_000) * 1000).ok()?;
    chrono::DateTime::from_timestamp(secs, nanos)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

/// A tuple as a JSON object of the relation's columns (only `only_keys` when set); the
/// columns whose value was not sent (unchanged TOAST) are returned apart. `Err`: a value that
/// cannot be taken (JSON nested past the limit).
fn row(
    rel: &Relation,
    tuple: &Tuple,
    only_keys: bool,
) -> Result<(Map<String, Value>, Vec<String>), String> {
    let mut out = Map::new();
    let mut unchanged = Vec::new();
    for (col, cell) in rel.columns.iter().zip(tuple) {
        if only_keys && !col.key {
            continue;
        }
        let value = match cell {
            Cell::Null => Value::Null,
            Cell::UnchangedToast => {
                unchanged.push(col.name.clone());
                continue;
            }
            Cell::Text(bytes) => text_to_json(col.type_oid, &String::from_utf8_lossy(bytes))
                .map_err(|e| format!("column `{}`: {e}", col.name))?,
            Cell::Binary(bytes) => json!(base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                bytes
            )),
        };
        out.insert(col.name.clone(), value);
    }
    Ok((out, unchanged))
}

/// The event of one row change: `{kind, trigger, op, schema, table, row, old_row, key, lsn,
/// xid, commit_time, commit_lsn}` (+ `unchanged_toast` when some were not sent). `Err` (with
/// the event as far as it goes): why the change cannot be run.
pub(super) fn row_event(
    trigger: &str,
    rel: &Relation,
    change: &Change,
    lsn: u64,
    tx: &TxInfo,
) -> (Value, Option<String>) {
    let mut defect = None;
    let mut take = |t: Option<&Tuple>, only_keys: bool| -> (Value, Vec<String>) {
        match t.map(|t| row(rel, t, only_keys)) {
            None => (Value::Null, Vec::new()),
            Some(Ok((m, u))) => (Value::Object(m), u),
            Some(Err(e)) => {
                defect.get_or_insert(e);
                (Value::Null, Vec::new())
            }
        }
    };
    let full = rel.replica_identity == ReplicaIdentity::Full;
    let (new_row, old_row, key, unchanged) = match change {
        Change::Insert { new } => {
            let (r, u) = take(Some(new), false);
            (r, Value::Null, Value::Null, u)
        }
        Change::Update { key, old, new } => {
            let (r, u) = take(Some(new), false);
            let (o, _) = take(*old, false);
            // The old key when it changed, else the row's own key columns.
            let (k, _) = match key {
                Some(k) => take(Some(k), true),
                None if !full => take(Some(new), true),
                None => (Value::Null, Vec::new()),
            };
            (r, o, k, u)
        }
        Change::Delete { key, old } => {
            let (o, _) = take(*old, false);
            let (k, _) = take(*key, true);
            (Value::Null, o, k, Vec::new())
        }
        Change::Truncate => (Value::Null, Value::Null, Value::Null, Vec::new()),
    };
    let mut event = Map::new();
    event.insert("kind".into(), json!("postgres"));
    event.insert("trigger".into(), json!(trigger));
    event.insert("op".into(), json!(change.op()));
    event.insert("schema".into(), json!(rel.schema));
    event.insert("table".into(), json!(rel.name));
    event.insert("row".into(), new_row);
    event.insert("old_row".into(), old_row);
    event.insert("key".into(), key);
    if !unchanged.is_empty() {
        event.insert("unchanged_toast".into(), json!(unchanged));
    }
    event.insert("lsn".into(), json!(lsn_text(lsn)));
    event.insert("xid".into(), json!(tx.xid));
    event.insert("commit_time".into(), json!(pg_time(tx.commit_time_micros)));
    event.insert("commit_lsn".into(), json!(lsn_text(tx.commit_lsn)));
    (Value::Object(event), defect)
}

/// The event of a whole transaction: `{kind, trigger, xid, commit_lsn, commit_time, rows}`.
pub(super) fn transaction_event(trigger: &str, tx: &TxInfo, rows: Vec<Value>) -> Value {
    json!({
        "kind": "postgres",
        "trigger": trigger,
        "xid": tx.xid,
        "commit_lsn": lsn_text(tx.commit_lsn),
        "commit_time": pg_time(tx.commit_time_micros),
        "rows": rows,
    })
}

/// The event id: slot + commit LSN + position in the transaction, so a transaction streamed
/// again after a crash makes the same ids.
pub(super) fn event_id(trigger: &str, slot: &str, commit_lsn: u64, position: usize) -> String {
    format!(
        "postgres:{trigger}:{slot}:{}:{position}",
        lsn_text(commit_lsn)
    )
}

/// Relations by id, as the stream announced them (again after every reconnect).
pub(super) type Relations = HashMap<u32, Relation>;

#[cfg(test)]
mod tests {
    use super::super::pgoutput::RelColumn;
    use super::*;

    fn orders(identity: ReplicaIdentity) -> Relation {
        let col = |name: &str, oid: u32, key: bool| RelColumn {
            name: name.into(),
            type_oid: oid,
            type_modifier: -1,
            key,
        };
        Relation {
            id: 1,
            schema: "public".into(),
            name: "orders".into(),
            replica_identity: identity,
            columns: vec![
                col("id", 20, true),
                col("note", 25, false),
                col("doc", 3802, false),
            ],
        }
    }

    fn text(s: &str) -> Cell {
        Cell::Text(s.as_bytes().to_vec())
    }

    const TX: TxInfo = TxInfo {
        xid: 731,
        commit_lsn: 0x1_0000_0010,
        commit_time_micros: 0,
    };

    #[test]
    fn rows_are_typed_and_unchanged_toast_is_named() {
        let rel = orders(ReplicaIdentity::Default);
        let new = vec![text("7"), text("hi"), Cell::UnchangedToast];
        let (e, defect) = row_event(
            "t",
            &rel,
            &Change::Update {
                key: None,
                old: None,
                new: &new,
            },
            5,
            &TX,
        );
        assert_eq!(defect, None);
        assert_eq!(e["row"], json!({"id": 7, "note": "hi"}));
        assert_eq!(e["unchanged_toast"], json!(["doc"]));
        assert_eq!(e["key"], json!({"id": 7}));
        assert_eq!(e["old_row"], Value::Null);
        assert_eq!(e["commit_lsn"], "1/10");
        assert_eq!(e["commit_time"], "2000-01-01T00:00:00Z");
        assert_eq!(e["xid"], 731);

        let full = orders(ReplicaIdentity::Full);
        let old = vec![text("7"), text("before"), text("{\"a\": 1}")];
        let (e, _) = row_event(
            "t",
            &full,
            &Change::Delete {
                key: None,
                old: Some(&old),
            },
            5,
            &TX,
        );
        assert_eq!(e["op"], "delete");
        assert_eq!(
            e["old_row"],
            json!({"id": 7, "note": "before", "doc": {"a": 1}})
        );
        assert_eq!(e["row"], Value::Null);
    }

    #[test]
    fn a_value_past_the_depth_limit_is_a_defect() {
        let rel = orders(ReplicaIdentity::Default);
        let deep = format!("{}{}", "[".repeat(80), "]".repeat(80));
        let new = vec![text("1"), Cell::Null, text(&deep)];
        let (_, defect) = row_event("t", &rel, &Change::Insert { new: &new }, 1, &TX);
        assert!(defect.unwrap().contains("column `doc`"));
    }

    #[test]
    fn lsns_and_ids() {
        assert_eq!(lsn_text(0x16B3748), "0/16B3748");
        assert_eq!(event_id("t", "s", 0x16B3748, 3), "postgres:t:s:0/16B3748:3");
        assert_eq!(pg_time(-1).unwrap(), "1999-12-31T23:59:59.999999Z");
    }
}
