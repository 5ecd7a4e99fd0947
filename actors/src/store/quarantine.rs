//! Records the store cannot decode: moved aside, kept, counted, listed — never a reason to stop.
//!
//! A record may be unreadable because of a bug in an earlier version, a disk error or a payload
//! that slipped past a limit. Whatever the cause, refusing to start or failing a whole listing
//! for one record would turn it into an outage. So every read that decodes goes through
//! [`Store::decode_or_quarantine`]: on failure the raw bytes move to the `quarantine` tree with
//! the decode error, the original entry is removed, and the read carries on without it.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{decode, encode, Store, StoreError};

/// One quarantined record, as the admin API lists it (without its raw bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantinedRecord {
    /// Identifies the entry in the quarantine (monotonic).
    pub id: u64,
    /// The tree the record was read from (`jobs`, `events`, `api_triggers`, ...).
    pub tree: String,
    /// The record's key: a job id, an event id, a trigger name (lossy UTF-8 otherwise).
    pub key: String,
    /// Size of the raw record in bytes.
    pub size: usize,
    /// Why it could not be decoded.
    pub error: String,
    pub quarantined_at: DateTime<Utc>,
}

/// What the quarantine tree holds per entry: the listing's fields and the raw bytes.
#[derive(Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    record: QuarantinedRecord,
    /// The original key and value, base64.
    raw_key: String,
    raw: String,
}

/// Names a key for people: 16-byte keys of job trees are job ids, the rest is text.
fn key_text(tree: &str, key: &[u8]) -> String {
    if matches!(tree, "jobs" | "queue" | "dead_letters" | "parked") && key.len() == 16 {
        if let Ok(id) = uuid::Uuid::from_slice(key) {
            return id.to_string();
        }
    }
    String::from_utf8_lossy(key).into_owned()
}

impl Store {
    /// Decodes a record read from `tree`; an undecodable one is moved to the quarantine and
    /// `None` is returned, so that the caller goes on as if it were absent.
    pub(super) fn decode_or_quarantine<T: for<'de> Deserialize<'de>>(
        &self,
        tree_name: &'static str,
        tree: &sled::Tree,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match decode::<T>(tree_name, bytes) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                self.quarantine(tree_name, tree, key, bytes, &e.to_string())?;
                Ok(None)
            }
        }
    }

    fn quarantine(
        &self,
        tree_name: &'static str,
        tree: &sled::Tree,
        key: &[u8],
        bytes: &[u8],
        error: &str,
    ) -> Result<(), StoreError> {
        self.quarantine_raw(tree_name, key, bytes, error)?;
        tree.remove(key)?;
        Ok(())
    }

    /// Keeps a record in the quarantine (the caller removes it from where it was).
    pub(super) fn quarantine_raw(
        &self,
        tree_name: &'static str,
        key: &[u8],
        bytes: &[u8],
        error: &str,
    ) -> Result<(), StoreError> {
        let id = self.inner.db.generate_id()?;
        let record = QuarantinedRecord {
            id,
            tree: tree_name.to_string(),
            key: key_text(tree_name, key),
            size: bytes.len(),
            error: error.to_string(),
            quarantined_at: Utc::now(),
        };
        tracing::warn!(
            tree = tree_name,
            key = %record.key,
            size = record.size,
            error,
            "undecodable record moved to the quarantine"
        );
        let entry = Entry {
            record,
            raw_key: B64.encode(key),
            raw: B64.encode(bytes),
        };
        self.inner
            .quarantine
            .insert(id.to_be_bytes(), encode(&entry)?)?;
        self.sled_written();
        crate::model::metrics::record_quarantined(tree_name);
        Ok(())
    }

    /// Quarantined records, oldest first.
    pub fn quarantined(&self) -> Result<Vec<QuarantinedRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.quarantine.iter() {
            let (_, v) = item?;
            // The entry's own encoding is flat (strings): it always decodes.
            match decode::<Entry>("quarantine", &v) {
                Ok(e) => out.push(e.record),
                Err(e) => tracing::error!(error = %e, "unreadable quarantine entry"),
            }
        }
        Ok(out)
    }

    pub fn quarantine_len(&self) -> usize {
        self.inner.quarantine.len()
    }

    /// Deletes a quarantined record for good. Returns whether it existed.
    pub fn drop_quarantined(&self, id: u64) -> Result<bool, StoreError> {
        let removed = self.inner.quarantine.remove(id.to_be_bytes())?.is_some();
        self.sled_written();
        Ok(removed)
    }
}
