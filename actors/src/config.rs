//! The configuration model shared by `config.toml` and (later) the admin API.
//!
//! Parsing only checks shapes (unknown keys are errors); [`Config::validate`] checks meaning
//! (references, duplicates, compilable filters, route conflicts) and reports every problem with
//! the dotted key it belongs to, so the shell can turn it into `file:line: key: message`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use crate::model::settings::*;
use crate::preprocess::Preprocessor;
use crate::triggers::TriggerConfig;

/// The whole file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub router: RouterConfig,
    #[serde(default)]
    pub supervisor: SupervisorConfig,
    #[serde(default)]
    pub preprocess: PreprocessConfig,
    /// The admin API and dashboard; not served without this table.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// OpenTelemetry export of the tracing spans; off unless `otlp_endpoint` is set.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub runnables: BTreeMap<String, RunnableConfig>,
    #[serde(default)]
    pub triggers: Vec<TriggerConfig>,
}

/// Trigger names: they are URL segments, sled keys and metric labels.
pub fn check_trigger_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if first_ok && rest_ok && name.len() <= 64 {
        return Ok(());
    }
    Err(format!(
        "`{}` is not a valid name: 1 to 64 letters, digits, `_`, `.` or `-`, starting with a \
         letter or digit",
        shortened(name)
    ))
}

/// The keys through which a trigger would run a program of its own choosing (rather than a
/// runnable of the configuration): allowed in config files, and through the admin API only
/// with `[admin] allow_commands = true`.
pub fn program_keys(trigger: &TriggerConfig) -> Vec<String> {
    let mut keys = Vec::new();
    if trigger
        .common
        .preprocessor
        .as_ref()
        .is_some_and(|p| p.command.is_some())
    {
        keys.push("preprocessor.command".to_string());
    }
    keys.extend(trigger.spec.kind().program_keys());
    keys
}

impl Config {
    /// Checks everything a parse cannot: references, duplicates, compilable filters, routes.
    pub fn validate(&self) -> Result<(), Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let top = |key: &str, message: String| ConfigIssue {
            section: Section::Top("".into()),
            key: key.into(),
            message,
        };
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            issues.push(top(
                "server.listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:8080",
                    self.server.listen
                ),
            ));
        }
        if !(1..=64).contains(&self.preprocess.jq_workers) {
            issues.push(top(
                "preprocess.jq_workers",
                format!("{} is out of range: 1 to 64", self.preprocess.jq_workers),
            ));
        }
        if !(64..=65536).contains(&self.preprocess.jq_memory_mib) {
            issues.push(top(
                "preprocess.jq_memory_mib",
                format!(
                    "{} is out of range: 64 to 65536 (MiB)",
                    self.preprocess.jq_memory_mib
                ),
            ));
        }
        let depth = self.server.max_json_depth;
        if !(1..=crate::model::json::MAX_CONFIGURABLE_DEPTH).contains(&depth) {
            issues.push(top(
                "server.max_json_depth",
                format!(
                    "{depth} is out of range: 1 to {} (stored records nest a payload a few levels deeper)",
                    crate::model::json::MAX_CONFIGURABLE_DEPTH
                ),
            ));
        }
        for (key, d) in [
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.idle_timeout", self.server.idle_timeout),
        ] {
            if d.is_zero() {
                issues.push(top(key, "must be longer than 0s, like \"10s\"".into()));
            }
        }
        if self.server.max_connections == 0 {
            issues.push(top("server.max_connections", "must be at least 1".into()));
        }
        if self.server.max_buffered_bytes == 0 {
            issues.push(top(
                "server.max_buffered_bytes",
                "must be at least 1".into(),
            ));
        }
        if let Some(admin) = &self.admin {
            if admin.listen.parse::<std::net::SocketAddr>().is_err() {
                issues.push(top(
                    "admin.listen",
                    format!("`{}` is not an address like 127.0.0.1:8081", admin.listen),
                ));
            }
            if admin.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
                issues.push(top(
                    "admin.token",
                    "must not be empty; remove the key to use the generated token in \
                     `token_file` (default <[store] path>/admin-token)"
                        .into(),
                ));
            }
            if admin
                .token_file
                .as_ref()
                .is_some_and(|f| f.as_os_str().is_empty())
            {
                issues.push(top("admin.token_file", "must not be empty".into()));
            }
            for host in &admin.allowed_hosts {
                if let Err(m) = check_allowed_host(host) {
                    issues.push(top("admin.allowed_hosts", m));
                }
            }
        }
        let zero_limits = [
            ("server.body_limit", self.server.body_limit == 0),
            ("server.sync_timeout", self.server.sync_timeout.is_zero()),
            ("store.dedup_ttl", self.store.dedup_ttl.is_zero()),
            ("store.job_retention", self.store.job_retention.is_zero()),
            ("store.max_jobs", self.store.max_jobs == 0),
            ("store.cache_capacity", self.store.cache_capacity == 0),
            (
                "supervisor.restart_initial",
                self.supervisor.restart_initial.is_zero(),
            ),
            (
                "supervisor.stable_after",
                self.supervisor.stable_after.is_zero(),
            ),
        ];
        for (key, zero) in zero_limits {
            if zero {
                issues.push(top(key, ZERO.into()));
            }
        }
        if self.supervisor.restart_max < self.supervisor.restart_initial {
            issues.push(top(
                "supervisor.restart_max",
                "must not be shorter than restart_initial".into(),
            ));
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint {
            // Checked here so that a typo fails `millgate check` instead of silently losing
            // every span at run time.
            match reqwest::Url::parse(endpoint) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => issues.push(top(
                    "telemetry.otlp_endpoint",
                    format!(
                        "`{endpoint}` is not an http(s) URL like http://localhost:4318 (OTLP over HTTP)"
                    ),
                )),
            }
        }
        if self.telemetry.service_name.trim().is_empty() {
            issues.push(top("telemetry.service_name", "must not be empty".into()));
        }
        if self.router.runners == 0 {
            issues.push(top("router.runners", "must be at least 1".into()));
        }
        if self.router.max_in_flight == 0 {
            issues.push(top("router.max_in_flight", "must be at least 1".into()));
        }
        if let Err(m) = validate_retry(&self.router.retry) {
            issues.push(top("router.retry", m));
        }
        for (name, runnable) in &self.runnables {
            let issue = |key: &str, message: String| ConfigIssue {
                section: Section::Runnable(name.clone()),
                key: key.into(),
                message,
            };
            match runnable.resolved_kind() {
                Err(m) => issues.push(issue("", m)),
                Ok(RunnableKind::Command) => {
                    if runnable.command.as_ref().is_some_and(|c| c.is_empty()) {
                        issues.push(issue("command", "must name a program".into()));
                    }
                }
                Ok(RunnableKind::Echo) => {}
                Ok(RunnableKind::Http) => {
                    let url = runnable.url.as_deref().unwrap_or_default();
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        issues.push(issue("url", format!("`{url}` is not an http(s) URL")));
                    }
                }
            }
            if runnable.concurrency == Some(0) {
                issues.push(issue("concurrency", "must be at least 1".into()));
            }
            if runnable.timeout.is_zero() {
                issues.push(issue("timeout", ZERO.into()));
            }
        }
        let mut names = BTreeSet::new();
        let mut routes = crate::triggers::http::RouteTable::default();
        for (i, trigger) in self.triggers.iter().enumerate() {
            issues.extend(self.validate_trigger(trigger, &mut routes).into_iter().map(
                |(key, message)| ConfigIssue {
                    section: Section::Trigger(i, trigger.common.name.clone()),
                    key,
                    message,
                },
            ));
            if !names.insert(trigger.common.name.clone()) {
                issues.push(ConfigIssue {
                    section: Section::Trigger(i, trigger.common.name.clone()),
                    key: "name".into(),
                    message: format!("duplicate trigger name `{}`", trigger.common.name),
                });
            }
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }

    /// Checks one trigger against this config (its runnable must exist). Returns (key, message)
    /// pairs. `routes` collects HTTP routes so that conflicts between triggers are found.
    pub fn validate_trigger(
        &self,
        trigger: &TriggerConfig,
        routes: &mut crate::triggers::http::RouteTable,
    ) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        let c = &trigger.common;
        if let Err(m) = check_trigger_name(&c.name) {
            issues.push(("name".into(), m));
        }
        if !self.runnables.contains_key(&c.runnable) {
            let known: Vec<_> = self.runnables.keys().map(String::as_str).collect();
            issues.push((
                "runnable".into(),
                format!(
                    "unknown runnable `{}` (defined: {})",
                    c.runnable,
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        for (key, runnable) in trigger.spec.kind().runnables() {
            if !self.runnables.contains_key(runnable) {
                issues.push((key.into(), format!("unknown runnable `{runnable}`")));
            }
        }
        if let Some(p) = &c.preprocessor {
            if let Err((key, m)) = Preprocessor::compile(p) {
                issues.push((format!("preprocessor.{key}"), m));
            }
        }
        if let Some(Err(m)) = trigger.order_by_key() {
            issues.push(("order_by".into(), m));
        }
        if let Some(retry) = &c.retry {
            if let Err(m) = validate_retry(retry) {
                issues.push(("retry".into(), m));
            }
        }
        if c.max_in_flight == Some(0) {
            issues.push(("max_in_flight".into(), "must be at least 1".into()));
        }
        if c.max_fan_out == Some(0) {
            issues.push((
                "max_fan_out".into(),
                "must be at least 1 (a preprocessor that wants no job outputs nothing)".into(),
            ));
        }
        let timeout = c.preprocessor.as_ref().and_then(|p| p.timeout);
        if timeout.is_some_and(|t| t.is_zero()) {
            issues.push(("preprocessor.timeout".into(), ZERO.into()));
        }
        issues.extend(trigger.spec.kind().validate(&c.name, routes));
        issues
    }

    pub fn retry_for(&self, trigger: &TriggerConfig) -> RetryPolicy {
        trigger
            .common
            .retry
            .clone()
            .unwrap_or_else(|| self.router.retry.clone())
    }
}

/// What a zero size, count or duration is told: each of these would refuse, drop or time
/// out everything.
const ZERO: &str = "must be above zero";

/// An `[admin] allowed_hosts` entry: a host name, optionally with `:port`.
fn check_allowed_host(host: &str) -> Result<(), String> {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() => name,
        _ => host,
    };
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_[]:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{host}` is not a host name like `admin.example.com` or `admin.example.com:8443` \
             (no scheme, path or wildcard)"
        ))
    }
}

fn validate_retry(r: &RetryPolicy) -> Result<(), String> {
    if r.attempts == 0 {
        return Err("attempts must be at least 1 (1 = no retry)".into());
    }
    if r.max < r.initial {
        return Err("max must not be shorter than initial".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        let p = RetryPolicy {
            attempts: 10,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(400),
        };
        for _ in 0..50 {
            let d2 = p.delay(2);
            assert!(d2 >= Duration::from_millis(50) && d2 <= Duration::from_millis(100));
            let d3 = p.delay(3);
            assert!(d3 >= Duration::from_millis(100) && d3 <= Duration::from_millis(200));
            let d9 = p.delay(9);
            assert!(d9 >= Duration::from_millis(200) && d9 <= Duration::from_millis(400));
        }
    }

    #[test]
    fn listener_limits_must_be_above_zero_and_name_their_key() {
        let mut c = Config::default();
        c.server.header_read_timeout = Duration::ZERO;
        c.server.idle_timeout = Duration::ZERO;
        c.server.max_connections = 0;
        c.server.max_buffered_bytes = 0;
        let text: Vec<String> = c
            .validate()
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        for key in [
            "server.header_read_timeout",
            "server.idle_timeout",
            "server.max_connections",
            "server.max_buffered_bytes",
        ] {
            assert!(text.iter().any(|t| t.starts_with(key)), "{key}: {text:?}");
        }
    }

    #[test]
    fn runnable_kind_is_inferred_and_conflicts_are_errors() {
        let mut r = RunnableConfig {
            command: Some(vec!["true".into()]),
            ..Default::default()
        };
        assert_eq!(r.resolved_kind(), Ok(RunnableKind::Command));
        r.url = Some("http://x".into());
        assert!(r.resolved_kind().unwrap_err().contains("not both"));
        r.command = None;
        assert_eq!(r.resolved_kind(), Ok(RunnableKind::Http));
    }
}
