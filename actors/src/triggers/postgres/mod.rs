//! Postgres change data capture (`kind = "postgres"`, README.md "Postgres triggers"): logical
//! replication with the `pgoutput` plugin, one actor per trigger in the connector shell
//! (`triggers/source.rs`). A server that cannot be reached, a `wal_level` that is not logical,
//! a slot another connection holds or a stream that ends fail the actor, and the supervisor
//! restarts it with backoff from the slot's position (`backing_off` with the reason, never
//! disabled).
//!
//! Delivery (docs/architecture.md, "Delivery"): the slot is the log. Jobs are written without
//! waiting for the disk, and the slot's confirmed flush LSN advances only over transactions
//! whose jobs are all settled (`stream.rs`); after a crash the server streams the rest again
//! and the event ids (slot + commit LSN + position in the transaction) make the repeats
//! duplicates.
//!
//! Files: `config.rs` (keys, names, the publication's SQL), `control.rs` (the control plane:
//! wal_level, publication, slot), `pgoutput.rs` (the stream's messages), `values.rs` (typed
//! column values), `event.rs` (row and transaction events), `stream.rs` (the source).

pub mod config;
mod control;
mod event;
pub mod pgoutput;
mod stream;
pub mod values;

use serde_json::{json, Value};

pub use self::config::PostgresConfig;
use self::control::Target;
use self::stream::PostgresSource;
use crate::preprocess::DefaultArgs;
use crate::triggers::http::RouteTable;
use crate::triggers::kind::{SpawnFuture, TriggerKind};
use crate::triggers::SourceArgs;
/// The clients the trigger speaks (control plane, replication stream), for tests and benches.
pub use pgwire_replication;
pub use tokio_postgres;

impl TriggerKind for PostgresConfig {
    fn validate(&self, trigger: &str, _routes: &mut RouteTable) -> Vec<(String, String)> {
        let mut issues = PostgresConfig::validate(self, trigger);
        if !self.connection.trim().is_empty() {
            if let Err(m) = Target::parse(&self.connection) {
                issues.insert(0, ("connection".into(), m));
            }
        }
        issues
    }

    fn endpoint(&self, trigger: &str) -> String {
        let place = Target::parse(&self.connection)
            .map(|t| format!("{}:{}/{}", t.host, t.port, t.dbname))
            .unwrap_or_else(|_| "?".into());
        format!(
            "postgres {place} publication {} slot {}",
            self.publication_name(trigger),
            self.slot_name(trigger)
        )
    }

    /// The slot keeps every change until millgate confirms it.
    fn redelivers(&self) -> bool {
        true
    }

    /// Windmill hands a row change to the script as `{transaction_type, schema_name,
    /// table_name, old_row, row}` (a delete's `row` being its old row or key).
    fn default_args(&self) -> DefaultArgs {
        windmill_args
    }

    /// Row filters (`tables[].where`) are SQL run by the database.
    fn program_keys(&self) -> Vec<String> {
        self.sql_keys()
    }

    fn spawn_source(&self, args: SourceArgs, supervisor: ractor::ActorCell) -> Option<SpawnFuture> {
        Some(crate::triggers::source::spawn(
            PostgresSource::new(self.clone()),
            args,
            supervisor,
        ))
    }
}

fn windmill_args(event: &Value) -> Value {
    // `granularity = "transaction"` has no Windmill counterpart: the event itself.
    if event.get("rows").is_some() {
        return event.clone();
    }
    let field = |k: &str| event.get(k).cloned().unwrap_or_default();
    let row = match event.get("op").and_then(Value::as_str) {
        Some("delete") => match field("old_row") {
            Value::Null => field("key"),
            old => old,
        },
        _ => field("row"),
    };
    json!({
        "transaction_type": field("op"),
        "schema_name": field("schema"),
        "table_name": field("table"),
        "old_row": field("old_row"),
        "row": row,
    })
}
