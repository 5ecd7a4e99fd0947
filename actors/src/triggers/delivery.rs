//! The id of an event pushed over HTTP, so that the same delivery sent again is recognised by
//! the intake's dedup window and answered with the jobs it made the first time.
//!
//! In order: the trigger's `dedup_key` (a jq expression over the event), the sender's delivery
//! id (signature presets, see `http_auth`), the `Idempotency-Key` header. None of them: a
//! unique id, no dedup.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use axum::http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::push::{IncomingRequest, Rejection};
use crate::preprocess::JqFilter;

/// Ids longer than this are replaced by their SHA-256: they are keys of the dedup tree.
const MAX_ID_LEN: usize = 128;

/// `dedup_key = '<jq>'`: the expression's first output identifies the event; events with the
/// same value within the dedup window make jobs once. Compiled when the config is read.
#[derive(Clone)]
pub struct DedupKey(JqFilter);

impl DedupKey {
    /// The key of `event`: `None` when the expression yields nothing or `null`.
    fn of(&self, event: &Value) -> Result<Option<String>, String> {
        let out = self.0.run(event)?.into_iter().next();
        Ok(match out {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => Some(other.to_string()),
        })
    }
}

impl std::fmt::Debug for DedupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DedupKey({:?})", self.0.source())
    }
}

impl PartialEq for DedupKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.source() == other.0.source()
    }
}

impl Serialize for DedupKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.source())
    }
}

impl<'de> Deserialize<'de> for DedupKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = String::deserialize(d)?;
        JqFilter::compile(&code)
            .map(DedupKey)
            .map_err(serde::de::Error::custom)
    }
}

/// The event id of a pushed request; `None` for a unique one. `delivery` is the sender's
/// delivery id, when its signature preset gives one.
pub fn event_id(
    trigger: &str,
    dedup_key: Option<&DedupKey>,
    delivery: Option<String>,
    req: &IncomingRequest,
    event: &Value,
) -> Result<Option<String>, Rejection> {
    if let Some(key) = dedup_key {
        match key.of(event) {
            Ok(Some(k)) => return Ok(Some(format!("{trigger}:key:{}", bounded(k)))),
            Ok(None) => {}
            Err(e) => {
                return Err(Rejection::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "bad_dedup_key",
                    format!("dedup_key failed on this event: {e}"),
                ))
            }
        }
    }
    if let Some(d) = delivery {
        return Ok(Some(format!("{trigger}:delivery:{}", bounded(d))));
    }
    Ok(req
        .headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(|k| format!("{trigger}:idem:{}", bounded(k.to_string()))))
}

fn bounded(id: String) -> String {
    if id.len() <= MAX_ID_LEN {
        id
    } else {
        format!("sha256:{}", hex::encode(Sha256::digest(id.as_bytes())))
    }
}

type Pending = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

/// Event ids on their way through the intake right now.
static PENDING: LazyLock<Pending> = LazyLock::new(Default::default);

/// Held while an event with a deterministic id goes through the intake. The intake looks the
/// id up, then writes it: two copies of one delivery arriving together would both miss it,
/// so the second waits here for the first to be written and is then found a duplicate.
pub struct Claim {
    id: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

pub async fn claim(id: &str) -> Claim {
    let lock = PENDING
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(id.to_string())
        .or_default()
        .clone();
    let guard = lock.clone().lock_owned().await;
    Claim {
        id: id.to_string(),
        lock,
        guard: Some(guard),
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
        self.guard.take();
        // Nobody else waits (only the map's copy and this one): forget the id.
        if Arc::strong_count(&self.lock) == 2 {
            pending.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_key_compiles_at_parse_and_yields_strings() {
        let k: DedupKey = serde_json::from_value(serde_json::json!(".body.id")).unwrap();
        assert_eq!(
            k.of(&serde_json::json!({"body": {"id": "a"}})).unwrap(),
            Some("a".into())
        );
        assert_eq!(
            k.of(&serde_json::json!({"body": {"id": 7}})).unwrap(),
            Some("7".into())
        );
        assert_eq!(k.of(&serde_json::json!({"body": {}})).unwrap(), None);
        let e = serde_json::from_value::<DedupKey>(serde_json::json!(".body.[")).unwrap_err();
        assert!(e.to_string().contains("cannot parse jq filter"), "{e}");
        assert!(bounded("x".repeat(500)).starts_with("sha256:"));
    }

    #[tokio::test]
    async fn a_second_claim_on_an_id_waits_for_the_first() {
        let first = claim("t:delivery:1").await;
        let waiting = tokio::spawn(async { claim("t:delivery:1").await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        let second = waiting.await.unwrap();
        drop(second);
        assert!(!PENDING.lock().unwrap().contains_key("t:delivery:1"));
    }
}
