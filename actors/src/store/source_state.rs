//! Saved state of timed and broker sources (a schedule's last fire time, a poll's state, Kafka
//! positions), one JSON value per trigger name in the tree `source_state`.
//!
//! Each write also advances the trigger's revision (tree `source_state_rev`), so a writer that
//! read the state a while ago can save only if nobody wrote since: a poll's save loses to an
//! operator's write made while the poll ran, even one that set the very value the poll started
//! from. Read-modify-write callers use [`Store::update_source_state`], which changes the state
//! atomically, so two writers that each change one field never erase each other's.

use serde_json::Value;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::{Store, StoreError};

const TREE: &str = "source_state";
const REV_TREE: &str = "source_state_rev";

fn decode(bytes: &[u8]) -> Result<Value, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        tree: TREE,
        reason: e.to_string(),
    })
}

fn encode(state: &Value) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(state).map_err(|e| StoreError::Corrupt {
        tree: TREE,
        reason: e.to_string(),
    })
}

fn revision(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes)
}

/// Why a conditional or computed write did not happen.
enum Refusal {
    Stale,
    Refused(String),
    Store(StoreError),
}

fn storage(e: TransactionError<Refusal>) -> Refusal {
    match e {
        TransactionError::Abort(r) => r,
        TransactionError::Storage(e) => Refusal::Store(e.into()),
    }
}

impl Store {
    fn source_state_trees(&self) -> Result<(sled::Tree, sled::Tree), StoreError> {
        Ok((
            self.inner.db.open_tree(TREE)?,
            self.inner.db.open_tree(REV_TREE)?,
        ))
    }

    pub fn source_state(&self, trigger: &str) -> Result<Option<Value>, StoreError> {
        Ok(self.source_state_at(trigger)?.0)
    }

    /// The state and its revision, read together: pass the revision to
    /// [`Store::put_source_state_if`] to save only if nobody wrote in between.
    pub fn source_state_at(&self, trigger: &str) -> Result<(Option<Value>, u64), StoreError> {
        let (states, revs) = self.source_state_trees()?;
        let read = (&states, &revs)
            .transaction(|(states, revs)| {
                Ok((
                    states.get(trigger.as_bytes())?,
                    revision(revs.get(trigger.as_bytes())?.as_deref()),
                ))
            })
            .map_err(|e: TransactionError<()>| match e {
                TransactionError::Abort(()) => StoreError::Sled("aborted read".into()),
                TransactionError::Storage(e) => e.into(),
            })?;
        // An unreadable state is quarantined: the source starts over rather than not at all.
        let value = match read.0 {
            Some(bytes) => self.decode_or_quarantine(TREE, &states, trigger.as_bytes(), &bytes)?,
            None => None,
        };
        Ok((value, read.1))
    }

    /// Writes what `compute` makes of the current state and revision, and advances the
    /// revision; nothing when it refuses. The new state is on disk when this returns.
    async fn write_source_state(
        &self,
        trigger: &str,
        compute: impl Fn(Option<Value>, u64) -> Result<Value, Refusal>,
    ) -> Result<Value, Refusal> {
        let (states, revs) = self.source_state_trees().map_err(Refusal::Store)?;
        let written = (&states, &revs)
            .transaction(|(states, revs)| {
                let key = trigger.as_bytes();
                let current = states
                    .get(key)?
                    .map(|b| decode(&b))
                    .transpose()
                    .map_err(|e| ConflictableTransactionError::Abort(Refusal::Store(e)))?;
                let rev = revision(revs.get(key)?.as_deref());
                let next = compute(current, rev).map_err(ConflictableTransactionError::Abort)?;
                let bytes = encode(&next)
                    .map_err(|e| ConflictableTransactionError::Abort(Refusal::Store(e)))?;
                states.insert(key, bytes)?;
                revs.insert(key, &(rev + 1).to_be_bytes())?;
                Ok(next)
            })
            .map_err(storage)?;
        self.commit_all().await.map_err(Refusal::Store)?;
        Ok(written)
    }

    /// Replaces a trigger's state and returns once it is on disk.
    pub async fn put_source_state(&self, trigger: &str, state: &Value) -> Result<(), StoreError> {
        match self
            .write_source_state(trigger, |_, _| Ok(state.clone()))
            .await
        {
            Ok(_) => Ok(()),
            Err(Refusal::Store(e)) => Err(e),
            Err(Refusal::Stale | Refusal::Refused(_)) => {
                Err(StoreError::Sled("unconditional write refused".into()))
            }
        }
    }

    /// Replaces a trigger's state only if it is still at `revision` (from
    /// [`Store::source_state_at`]). `Ok(false)`: somebody wrote since; nothing was written.
    pub async fn put_source_state_if(
        &self,
        trigger: &str,
        revision: u64,
        state: &Value,
    ) -> Result<bool, StoreError> {
        let written = self
            .write_source_state(trigger, |_, rev| {
                if rev == revision {
                    Ok(state.clone())
                } else {
                    Err(Refusal::Stale)
                }
            })
            .await;
        match written {
            Ok(_) => Ok(true),
            Err(Refusal::Stale) => Ok(false),
            Err(Refusal::Store(e)) => Err(e),
            Err(Refusal::Refused(m)) => Err(StoreError::Sled(m)),
        }
    }

    /// Computes the new state from the current one, atomically (`update` may be called more
    /// than once). The inner `Err` is `update`'s refusal; nothing was written then.
    pub async fn update_source_state(
        &self,
        trigger: &str,
        update: impl Fn(Option<Value>) -> Result<Value, String>,
    ) -> Result<Result<Value, String>, StoreError> {
        let written = self
            .write_source_state(trigger, |current, _| {
                update(current).map_err(Refusal::Refused)
            })
            .await;
        match written {
            Ok(v) => Ok(Ok(v)),
            Err(Refusal::Refused(m)) => Ok(Err(m)),
            Err(Refusal::Store(e)) => Err(e),
            Err(Refusal::Stale) => Err(StoreError::Sled("unconditional update refused".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::model::settings::StoreConfig;
    use crate::store::Store;

    #[tokio::test]
    async fn a_write_since_the_read_wins_over_a_conditional_save() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig {
            path: dir.path().join("db"),
            ..Default::default()
        })
        .unwrap();
        let (none, rev) = store.source_state_at("p").unwrap();
        assert_eq!(none, None);
        assert!(store
            .put_source_state_if("p", rev, &json!({"cursor": 1}))
            .await
            .unwrap());
        let (v, rev) = store.source_state_at("p").unwrap();
        assert_eq!(v, Some(json!({"cursor": 1})));
        // Another writer sets the very value that was read: still a write since.
        store
            .put_source_state("p", &json!({"cursor": 1}))
            .await
            .unwrap();
        assert!(!store
            .put_source_state_if("p", rev, &json!({"cursor": 2}))
            .await
            .unwrap());
        assert_eq!(store.source_state("p").unwrap(), Some(json!({"cursor": 1})));

        let merged = store
            .update_source_state("p", |cur| {
                let mut v = cur.unwrap_or_default();
                v["paused"] = json!(false);
                Ok(v)
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(merged, json!({"cursor": 1, "paused": false}));
        let refused = store
            .update_source_state("p", |_| Err("no".into()))
            .await
            .unwrap();
        assert_eq!(refused, Err("no".to_string()));
        assert_eq!(store.source_state("p").unwrap(), Some(merged));
    }
}
