//! What the admin API keeps: triggers added through it (their definitions as given) and\n//! every trigger's enabled/suspended flags.

use super::*;

/// What an operator set on a trigger through the API, kept across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerFlags {
    pub enabled: bool,
    pub suspended: bool,
}

impl Store {
    /// The definitions of triggers added through the API, as they were given (the trigger
    /// layer reads them: a kind this build lacks must not make them unreadable).
    pub fn api_triggers(&self) -> Result<Vec<Value>, StoreError> {
        let tree = &self.inner.api_triggers;
        let mut out = Vec::new();
        for item in tree.iter() {
            let (k, v) = item?;
            out.extend(self.decode_or_quarantine("api_triggers", tree, &k, &v)?);
        }
        Ok(out)
    }

    pub async fn put_api_trigger(&self, name: &str, definition: &Value) -> Result<(), StoreError> {
        self.inner
            .api_triggers
            .insert(name.as_bytes(), encode(definition)?)?;
        self.commit_all().await
    }

    pub async fn remove_api_trigger(&self, name: &str) -> Result<(), StoreError> {
        self.inner.api_triggers.remove(name.as_bytes())?;
        self.inner.trigger_flags.remove(name.as_bytes())?;
        self.commit_all().await
    }

    pub fn trigger_flags(&self, name: &str) -> Result<Option<TriggerFlags>, StoreError> {
        let tree = &self.inner.trigger_flags;
        match tree.get(name.as_bytes())? {
            Some(v) => self.decode_or_quarantine("trigger_flags", tree, name.as_bytes(), &v),
            None => Ok(None),
        }
    }

    pub async fn put_trigger_flags(
        &self,
        name: &str,
        flags: TriggerFlags,
    ) -> Result<(), StoreError> {
        self.inner
            .trigger_flags
            .insert(name.as_bytes(), encode(&flags)?)?;
        self.commit_all().await
    }
}
