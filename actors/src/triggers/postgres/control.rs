//! The control plane of a Postgres trigger, on an ordinary connection (tokio-postgres): checks
//! that the server can replicate, creates the publication and the slot when they are missing,
//! and finds where the slot stands. Every refusal says what to change.

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config, NoTls};

use super::config::PostgresConfig;

/// How long the control plane may take (creating a slot waits for running transactions).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where to connect, read from the `connection` key.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub config: Config,
    /// `host` or the socket directory.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
}

impl Target {
    /// Parses `connection` (a libpq URL or key/value string).
    pub fn parse(connection: &str) -> Result<Self, String> {
        let config = Config::from_str(connection).map_err(|e| {
            format!("is not a Postgres connection string ({e}); e.g. `postgres://user@host:5432/db` or `host=… dbname=… user=…`")
        })?;
        if config.get_ssl_mode() == SslMode::Require {
            return Err(
                "asks for `sslmode=require`: TLS to Postgres is not built yet (use `disable` or `prefer`, which connect without TLS)"
                    .into(),
            );
        }
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config
            .get_user()
            .map(str::to_string)
            .ok_or("names no `user`")?;
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let dbname = config
            .get_dbname()
            .map(str::to_string)
            .unwrap_or_else(|| user.clone());
        Ok(Self {
            config,
            host,
            port,
            user,
            password,
            dbname,
        })
    }
}

/// Where a slot stands when streaming starts.
#[derive(Debug, Clone)]
pub(super) struct SlotStart {
    /// Its `confirmed_flush_lsn`: everything before it was settled.
    pub confirmed: u64,
    pub created: bool,
}

/// `tokio_postgres` errors carry the server's message in their source.
pub(super) fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

async fn connect(target: &Target) -> Result<Client, String> {
    let (client, connection) = tokio::time::timeout(CONTROL_TIMEOUT, target.config.connect(NoTls))
        .await
        .map_err(|_| {
            format!(
                "no answer from {}:{} within {CONTROL_TIMEOUT:?}",
                target.host, target.port
            )
        })?
        .map_err(|e| {
            format!(
                "cannot connect to {}:{}: {}",
                target.host,
                target.port,
                pg_error(&e)
            )
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "Postgres control connection ended");
        }
    });
    Ok(client)
}

/// Checks `wal_level`, makes the publication and the slot when missing, and returns where the
/// slot stands.
pub(super) async fn prepare(
    cfg: &PostgresConfig,
    trigger: &str,
    target: &Target,
) -> Result<SlotStart, String> {
    let work = async {
        let client = connect(target).await?;
        let level: String = client
            .query_one("SHOW wal_level", &[])
            .await
            .map_err(|e| pg_error(&e))?
            .get(0);
        if level != "logical" {
            return Err(format!(
                "the server's wal_level is `{level}`; logical replication needs `wal_level = logical` (ALTER SYSTEM SET wal_level = logical, then restart Postgres)"
            ));
        }
        ensure_publication(&client, cfg, trigger).await?;
        ensure_slot(&client, &cfg.slot_name(trigger)).await
    };
    tokio::time::timeout(CONTROL_TIMEOUT, work)
        .await
        .map_err(|_| format!("preparing the publication and slot took longer than {CONTROL_TIMEOUT:?} (creating a slot waits for open transactions)"))?
}

async fn ensure_publication(
    client: &Client,
    cfg: &PostgresConfig,
    trigger: &str,
) -> Result<(), String> {
    let name = cfg.publication_name(trigger);
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await
        .map_err(|e| pg_error(&e))?
        .is_some();
    if exists {
        return Ok(());
    }
    let Some(sql) = cfg.create_publication_sql(trigger) else {
        return Err(format!(
            "publication `{name}` does not exist; create it, or give `tables` for millgate to create it"
        ));
    };
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| format!("cannot create publication `{name}`: {}", pg_error(&e)))?;
    tracing::info!(trigger, publication = %name, "created the publication");
    Ok(())
}

async fn ensure_slot(client: &Client, slot: &str) -> Result<SlotStart, String> {
    let row = client
        .query_opt(
            "SELECT plugin, database, active, active_pid, confirmed_flush_lsn::text \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| pg_error(&e))?;
    if let Some(row) = row {
        let plugin: Option<String> = row.get(0);
        let database: Option<String> = row.get(1);
        let active: bool = row.get(2);
        let pid: Option<i32> = row.get(3);
        let confirmed: Option<String> = row.get(4);
        if plugin.as_deref() != Some("pgoutput") {
            return Err(format!(
                "slot `{slot}` exists with plugin {plugin:?}, not pgoutput; name another `slot`"
            ));
        }
        let current: String = client
            .query_one("SELECT current_database()", &[])
            .await
            .map_err(|e| pg_error(&e))?
            .get(0);
        if database.as_deref() != Some(current.as_str()) {
            return Err(format!(
                "slot `{slot}` belongs to database {database:?}, not `{current}`; name another `slot`"
            ));
        }
        if active {
            return Err(format!(
                "slot `{slot}` is in use by another connection (pid {}); a slot streams to one reader at a time",
                pid.map_or("?".into(), |p| p.to_string())
            ));
        }
        let confirmed = confirmed
            .as_deref()
            .map(parse_lsn)
            .transpose()?
            .unwrap_or(0);
        return Ok(SlotStart {
            confirmed,
            created: false,
        });
    }
    let lsn: String = client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .map_err(|e| format!("cannot create slot `{slot}`: {}", pg_error(&e)))?
        .get(0);
    tracing::info!(slot, lsn, "created the replication slot");
    Ok(SlotStart {
        confirmed: parse_lsn(&lsn)?,
        created: true,
    })
}

/// `16/B374D848` → its 64-bit position.
pub(super) fn parse_lsn(text: &str) -> Result<u64, String> {
    let (hi, lo) = text
        .split_once('/')
        .ok_or_else(|| format!("`{text}` is not an LSN"))?;
    let part = |p: &str| {
        (p.len() <= 8)
            .then(|| u64::from_str_radix(p, 16).ok())
            .flatten()
            .ok_or_else(|| format!("`{text}` is not an LSN"))
    };
    Ok((part(hi)? << 32) | part(lo)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse_and_connection_strings_are_read() {
        assert_eq!(parse_lsn("0/16B3748").unwrap(), 0x16B3748);
        assert_eq!(parse_lsn("1/0").unwrap(), 1 << 32);
        assert!(parse_lsn("123456789/0").is_err());
        assert!(parse_lsn("x").is_err());
        let t = Target::parse("postgres://app:pw@db.example:6432/shop").unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.user.as_str(),
                t.password.as_str(),
                t.dbname.as_str()
            ),
            ("db.example", 6432, "app", "pw", "shop")
        );
        let kv = Target::parse("host=/run/postgresql port=5433 user=postgres").unwrap();
        assert_eq!(
            (kv.host.as_str(), kv.dbname.as_str()),
            ("/run/postgresql", "postgres")
        );
        assert!(Target::parse("host=x user=u sslmode=require")
            .unwrap_err()
            .contains("TLS"));
        assert!(Target::parse("host=x").unwrap_err().contains("user"));
        assert!(Target::parse("nonsense = = =").is_err());
    }
}
