//! A Postgres trigger's keys and the names and SQL they make: the publication and slot names
//! (`millgate_<trigger>` by default) and the `CREATE PUBLICATION` statement for `tables`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `kind = "postgres"`: the changes of a publication, through a logical replication slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// A libpq URL or key/value string (`host=… dbname=… user=…`), TLS through `sslmode` and
    /// `sslrootcert`.
    pub connection: String,
    /// Used when it exists; created when `tables` is given and it is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publication: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<Tables>,
    /// The logical slot (pgoutput), created when missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    #[serde(default = "all_operations")]
    pub operations: Vec<Operation>,
    #[serde(default)]
    pub granularity: Granularity,
    /// Standby status updates go out at least this often (and at once when the server asks).
    #[serde(default = "ten_seconds", with = "humantime_serde")]
    pub status_interval: Duration,
}

/// `"all"`, or a list of tables (`"public.orders"`, `"billing.*"`, or with a column list and
/// a row filter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Tables {
    All(AllTables),
    List(Vec<TableSpec>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllTables {
    All,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TableSpec {
    /// `schema.table` or `schema.*`.
    Name(String),
    Detailed {
        table: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        columns: Option<Vec<String>>,
        /// A row filter: SQL over the table's columns (Postgres 15+).
        #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
        filter: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Delete => "delete",
            Operation::Truncate => "truncate",
        }
    }
}

/// One job per changed row, or one per transaction with its rows in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    #[default]
    Row,
    Transaction,
}

fn all_operations() -> Vec<Operation> {
    vec![
        Operation::Insert,
        Operation::Update,
        Operation::Delete,
        Operation::Truncate,
    ]
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

/// Postgres's longest identifier (NAMEDATALEN - 1), in bytes.
const MAX_IDENTIFIER: usize = 63;

impl PostgresConfig {
    pub fn validate(&self, trigger: &str) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        let mut issue = |k: &str, m: String| issues.push((k.to_string(), m));
        if self.connection.trim().is_empty() {
            issue(
                "connection",
                "is empty; give a URL (`postgres://user@host/db`) or `host=… dbname=… user=…`"
                    .into(),
            );
        }
        for (key, given) in [("publication", &self.publication), ("slot", &self.slot)] {
            match given {
                Some(name) => {
                    if let Err(m) = check_identifier(name, key == "slot") {
                        issue(key, m);
                    }
                }
                None if default_name(trigger).len() > MAX_IDENTIFIER => issue(
                    key,
                    format!(
                        "the default `millgate_<trigger>` is longer than {MAX_IDENTIFIER} bytes; give `{key}` explicitly"
                    ),
                ),
                None => {}
            }
        }
        if let Some(Tables::List(list)) = &self.tables {
            if list.is_empty() {
                issue("tables", "is empty; list tables or say \"all\"".into());
            }
            for (i, t) in list.iter().enumerate() {
                if let Err(m) = t.check() {
                    issue(&format!("tables[{i}]"), m);
                }
            }
        }
        if self.operations.is_empty() {
            issue(
                "operations",
                "is empty; give some of insert, update, delete, truncate".into(),
            );
        }
        if self.status_interval < Duration::from_secs(1)
            || self.status_interval > Duration::from_secs(600)
        {
            issue(
                "status_interval",
                "must be between 1s and 10m (the server's wal_sender_timeout is 60s by default)"
                    .into(),
            );
        }
        issues
    }

    pub fn publication_name(&self, trigger: &str) -> String {
        self.publication
            .clone()
            .unwrap_or_else(|| default_name(trigger))
    }

    pub fn slot_name(&self, trigger: &str) -> String {
        self.slot.clone().unwrap_or_else(|| default_name(trigger))
    }

    /// `CREATE PUBLICATION` for `tables` (`None` without tables: the publication must exist).
    pub fn create_publication_sql(&self, trigger: &str) -> Option<String> {
        let target = match self.tables.as_ref()? {
            Tables::All(_) => "FOR ALL TABLES".to_string(),
            Tables::List(list) => {
                let (mut tables, mut schemas) = (Vec::new(), Vec::new());
                for t in list {
                    match t.sql() {
                        TableSql::Table(s) => tables.push(s),
                        TableSql::Schema(s) => schemas.push(s),
                    }
                }
                let mut parts = Vec::new();
                if !tables.is_empty() {
                    parts.push(format!("TABLE {}", tables.join(", ")));
                }
                if !schemas.is_empty() {
                    parts.push(format!("TABLES IN SCHEMA {}", schemas.join(", ")));
                }
                format!("FOR {}", parts.join(", "))
            }
        };
        let publish: Vec<&str> = self.operations.iter().map(|o| o.as_str()).collect();
        Some(format!(
            "CREATE PUBLICATION {} {target} WITH (publish = '{}')",
            quote_ident(&self.publication_name(trigger)),
            publish.join(", ")
        ))
    }

    /// Keys through which a trigger added over the admin API would run SQL of its own choosing
    /// in the database (row filters).
    pub fn sql_keys(&self) -> Vec<String> {
        match &self.tables {
            Some(Tables::List(list)) => list
                .iter()
                .enumerate()
                .filter(|(_, t)| {
                    matches!(
                        t,
                        TableSpec::Detailed {
                            filter: Some(_),
                            ..
                        }
                    )
                })
                .map(|(i, _)| format!("tables[{i}].where"))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// `millgate_<trigger>`: lower-cased, characters outside `[a-z0-9_]` as `_`.
pub fn default_name(trigger: &str) -> String {
    let cleaned: String = trigger
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("millgate_{cleaned}")
}

/// Slot names are `[a-z0-9_]` only (the server refuses others); publications are quoted, so
/// any name within the length works.
fn check_identifier(name: &str, slot: bool) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_IDENTIFIER {
        return Err(format!("must be 1 to {MAX_IDENTIFIER} bytes"));
    }
    if name.contains('\0') {
        return Err("must not contain NUL".into());
    }
    if slot
        && !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err("may hold only lower-case letters, digits and `_` (a slot name)".into());
    }
    Ok(())
}

/// `"name"`, with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

enum TableSql {
    Table(String),
    Schema(String),
}

impl TableSpec {
    fn name(&self) -> &str {
        match self {
            TableSpec::Name(n) | TableSpec::Detailed { table: n, .. } => n,
        }
    }

    fn check(&self) -> Result<(), String> {
        let name = self.name();
        let Some((schema, table)) = name.split_once('.') else {
            return Err(format!("`{name}` is not `schema.table` or `schema.*`"));
        };
        if schema.is_empty() || table.is_empty() || table.contains('.') {
            return Err(format!("`{name}` is not `schema.table` or `schema.*`"));
        }
        for part in [schema, table] {
            if part.len() > MAX_IDENTIFIER || part.contains('\0') {
                return Err(format!("`{part}` is not a Postgres name"));
            }
        }
        if let TableSpec::Detailed {
            columns, filter, ..
        } = self
        {
            if table == "*" && (columns.is_some() || filter.is_some()) {
                return Err("column lists and `where` apply to a table, not to `schema.*`".into());
            }
            if columns.as_ref().is_some_and(Vec::is_empty) {
                return Err("`columns` is empty".into());
            }
            if let Some(f) = filter {
                check_filter(f)?;
            }
        }
        Ok(())
    }

    fn sql(&self) -> TableSql {
        let name = self.name();
        let (schema, table) = name.split_once('.').unwrap_or(("public", name));
        if table == "*" {
            return TableSql::Schema(quote_ident(schema));
        }
        let mut sql = format!("{}.{}", quote_ident(schema), quote_ident(table));
        if let TableSpec::Detailed {
            columns, filter, ..
        } = self
        {
            if let Some(cols) = columns {
                let cols: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
                sql.push_str(&format!(" ({})", cols.join(", ")));
            }
            if let Some(f) = filter {
                sql.push_str(&format!(" WHERE ({f})"));
            }
        }
        TableSql::Table(sql)
    }
}

/// A row filter goes into the statement as written: one expression, so no statement separator
/// and parentheses that close only what they opened (outside quotes).
fn check_filter(filter: &str) -> Result<(), String> {
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    for c in filter.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => {
                depth -= 1;
                if depth < 0 {
                    return Err("`where` closes a parenthesis it did not open".into());
                }
            }
            (None, ';') => return Err("`where` must be one expression (no `;`)".into()),
            (None, '-' | '/') if filter.contains("--") || filter.contains("/*") => {
                return Err("`where` must not hold comments".into())
            }
            _ => {}
        }
    }
    if quote.is_some() || depth != 0 {
        return Err("`where` has an unclosed quote or parenthesis".into());
    }
    if filter.trim().is_empty() {
        return Err("`where` is empty".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: serde_json::Value) -> PostgresConfig {
        let mut v = serde_json::json!({"connection": "host=localhost dbname=app"});
        if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn defaults_and_names() {
        let c = cfg(serde_json::json!({}));
        assert_eq!(c.granularity, Granularity::Row);
        assert_eq!(c.operations.len(), 4);
        assert_eq!(c.status_interval, Duration::from_secs(10));
        assert_eq!(c.slot_name("Orders-CDC.v2"), "millgate_orders_cdc_v2");
        assert_eq!(c.publication_name("orders"), "millgate_orders");
        assert!(c.validate("orders").is_empty());
        assert_eq!(c.create_publication_sql("orders"), None);
    }

    #[test]
    fn publication_sql_quotes_names_and_keeps_filters() {
        let c = cfg(serde_json::json!({
            "tables": ["public.orders", "billing.*",
                       {"table": "public.users", "columns": ["id", "e\"mail"], "where": "active AND (id > 10)"}],
            "operations": ["insert", "update"],
        }));
        assert!(c.validate("t").is_empty(), "{:?}", c.validate("t"));
        assert_eq!(
            c.create_publication_sql("t").unwrap(),
            "CREATE PUBLICATION \"millgate_t\" FOR TABLE \"public\".\"orders\", \"public\".\"users\" (\"id\", \"e\"\"mail\") WHERE (active AND (id > 10)), TABLES IN SCHEMA \"billing\" WITH (publish = 'insert, update')"
        );
        assert_eq!(c.sql_keys(), vec!["tables[2].where".to_string()]);
        let all = cfg(serde_json::json!({"tables": "all"}));
        assert!(all
            .create_publication_sql("t")
            .unwrap()
            .contains("FOR ALL TABLES"));
    }

    #[test]
    fn bad_keys_are_named() {
        let long = "x".repeat(60);
        let c = cfg(serde_json::json!({
            "connection": " ",
            "slot": "Bad-Slot",
            "tables": ["orders", {"table": "public.t", "where": "1); DROP TABLE t; --"},
                       {"table": "public.*", "columns": ["a"]}],
            "operations": [],
            "status_interval": "0s",
        }));
        let keys: Vec<String> = c.validate(&long).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "connection",
                "publication",
                "slot",
                "tables[0]",
                "tables[1]",
                "tables[2]",
                "operations",
                "status_interval"
            ]
        );
        for bad in ["a) OR (b", "x'", "(", "a; b", "a -- b", " "] {
            assert!(check_filter(bad).is_err(), "{bad}");
        }
        assert!(check_filter("note = 'a;b' AND (x)").is_ok());
    }
}
