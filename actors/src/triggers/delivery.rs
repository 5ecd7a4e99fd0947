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
use crate::preprocess::{KeyExpr, PreprocessError, PreprocessorPool, DEFAULT_JQ_TIMEOUT};

/// Ids longer than this are replaced by their SHA-256: they are keys of the dedup tree.
const MAX_ID_LEN: usize = 128;

/// `dedup_key = '<jq>'`: the expression's first output identifies the event; events with the
/// same value within the dedup window make jobs once. Compiled when the config is read: a path
/// or a template is read natively, any other filter runs in the jq workers.
#[derive(Clone)]
pub struct DedupKey {
    source: String,
    expr: KeyExpr,
}

impl std::fmt::Debug for DedupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DedupKey({:?})", self.source)
    }
}

impl PartialEq for DedupKey {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for DedupKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for DedupKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = String::deserialize(d)?;
        KeyExpr::compile(&source)
            .map(|expr| DedupKey { source, expr })
            .map_err(serde::de::Error::custom)
    }
}

/// Where a pushed event's id comes from.
pub enum EventId {
    /// Known at once: deterministic (`Some`) or unique (`None`).
    Known(Option<String>),
    /// A jq `dedup_key` decides (in a jq worker, [`EventId::resolve`]); `fallback` is the id
    /// when it yields nothing.
    ByFilter {
        trigger: String,
        key: KeyExpr,
        fallback: Option<String>,
    },
}

impl EventId {
    /// The id, running a jq `dedup_key` in the jq workers when there is one.
    pub async fn resolve(
        self,
        pool: &PreprocessorPool,
        event: &Value,
    ) -> Result<Option<String>, Rejection> {
        match self {
            EventId::Known(id) => Ok(id),
            EventId::ByFilter {
                trigger,
                key,
                fallback,
            } => match pool.key(&key, event, DEFAULT_JQ_TIMEOUT).await {
                Ok(Some(k)) if k != "null" => Ok(Some(keyed(&trigger, k))),
                Ok(_) => Ok(fallback),
                Err(PreprocessError::PoolDown) => Err(Rejection::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "stopping",
                    "the service is stopping",
                )),
                Err(e) => Err(dedup_key_failed(e)),
            },
        }
    }
}

fn keyed(trigger: &str, key: String) -> String {
    format!("{trigger}:key:{}", bounded(key))
}

fn dedup_key_failed(e: impl std::fmt::Display) -> Rejection {
    Rejection::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "bad_dedup_key",
        format!("dedup_key failed on this event: {e}"),
    )
}

/// The event id of a pushed request. `delivery` is the sender's delivery id, when its signature
/// preset gives one.
pub fn event_id(
    trigger: &str,
    dedup_key: Option<&DedupKey>,
    delivery: Option<String>,
    req: &IncomingRequest,
    event: &Value,
) -> Result<EventId, Rejection> {
    let fallback = match delivery {
        Some(d) => Some(format!("{trigger}:delivery:{}", bounded(d))),
        None => req
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .filter(|k| !k.is_empty())
            .map(|k| format!("{trigger}:idem:{}", bounded(k.to_string()))),
    };
    let Some(key) = dedup_key else {
        return Ok(EventId::Known(fallback));
    };
    if let KeyExpr::Jq(_) = key.expr {
        return Ok(EventId::ByFilter {
            trigger: trigger.to_string(),
            key: key.expr.clone(),
            fallback,
        });
    }
    Ok(EventId::Known(match key.expr.eval(event) {
        Some(k) if k != "null" => Some(keyed(trigger, k)),
        _ => fallback,
    }))
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
        let of = |e: Value| k.expr.eval(&e).filter(|k| k != "null");
        assert_eq!(
            of(serde_json::json!({"body": {"id": "a"}})),
            Some("a".into())
        );
        assert_eq!(of(serde_json::json!({"body": {"id": 7}})), Some("7".into()));
        assert_eq!(of(serde_json::json!({"body": {}})), None);
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
