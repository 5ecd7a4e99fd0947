//! The keys of an MQTT trigger and the rumqttc options (v3.1.1 and v5) made from them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::tokio_rustls::rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    ClientConfig, RootCertStore,
};
use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5 as v5p;
use rumqttc::{QoS, TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// Config

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Host name or IP of the broker (with `tls`, the name its certificate must carry).
    pub broker: String,
    /// Defaults to 1883, or 8883 with `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Needed (and kept stable) for a persistent session; defaults to
    /// `millgate-<trigger>-<random>` with a clean session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Protocol version: 3 (v3.1.1) or 5.
    #[serde(default = "default_version")]
    pub version: u8,
    pub subscriptions: Vec<MqttSubscription>,
    /// v3.1.1 only: `false` keeps the session (subscriptions and unacknowledged messages) at
    /// the broker across reconnects and restarts. Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_session: Option<bool>,
    /// v5 only, its name for the same flag: `false` resumes the session the broker kept
    /// (for `session_expiry`). Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_start: Option<bool>,
    /// v5 only: how long the broker keeps the session after the connection ends (whole
    /// seconds; required and above zero with `clean_start = false`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub session_expiry: Option<Duration>,
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Largest packet accepted from the broker, in bytes (rumqttc's own default, 10 KiB,
    /// would drop the connection on every larger message). v5 tells the broker, which then
    /// withholds larger messages; v3 cannot, and a larger message fails the connection.
    #[serde(default = "default_max_packet_size")]
    pub max_packet_size: u32,
    /// TLS to the broker; `tls = {}` verifies it against the system's root certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<MqttTls>,
}

/// `subscriptions = [{ topic = "sensors/#", qos = 1 }]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSubscription {
    pub topic: String,
    #[serde(default)]
    pub qos: u8,
}

/// `tls = { ca_file, client_cert_file, client_key_file }`, PEM files read at each connect.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTls {
    /// CA certificate(s) the broker's certificate must chain to; without it, the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (chain) for brokers that require one; goes with `client_key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
}

fn default_version() -> u8 {
    3
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_max_packet_size() -> u32 {
    16 * 1024 * 1024
}

/// Topic aliases millgate accepts from a v5 broker (rumqttc resolves them to topics).
pub(super) const TOPIC_ALIAS_MAX: u16 = 1024;

impl MqttConfig {
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        let mut issue = |k: &str, m: &str| issues.push((k.to_string(), m.to_string()));
        if self.broker.trim().is_empty() {
            issue("broker", "is empty");
        }
        if self.port == Some(0) {
            issue("port", "must not be 0");
        }
        match self.version {
            3 => {
                if self.clean_start.is_some() {
                    issue(
                        "clean_start",
                        "is the MQTT v5 name; with version 3 use `clean_session`",
                    );
                }
                if self.session_expiry.is_some() {
                    issue(
                        "session_expiry",
                        "needs `version = 5` (a v3.1.1 session lasts until the broker drops it)",
                    );
                }
            }
            5 => {
                if self.clean_session.is_some() {
                    issue(
                        "clean_session",
                        "is the MQTT v3.1.1 name; with `version = 5` use `clean_start`",
                    );
                }
                let expiry = self.session_expiry.map(|d| d.as_secs());
                if expiry.is_some_and(|s| s > u64::from(u32::MAX)) {
                    issue(
                        "session_expiry",
                        "must be at most 4294967295s (that value means: never expires)",
                    );
                }
                if !self.clean() && expiry.unwrap_or(0) == 0 {
                    issue(
                        "session_expiry",
                        "must be at least 1s with `clean_start = false`: a v5 session without \
                         an expiry ends with the connection, so nothing would be redelivered",
                    );
                }
                if self.keep_alive < Duration::from_secs(5) {
                    issue("keep_alive", "must be at least 5s with `version = 5`");
                }
            }
            _ => issue("version", "must be 3 (MQTT v3.1.1) or 5"),
        }
        if self.subscriptions.is_empty() {
            issue("subscriptions", "needs at least one `{ topic, qos }`");
        }
        for s in &self.subscriptions {
            if !valid_filter(&s.topic) {
                issue(
                    "subscriptions",
                    &format!("`{}` is not a valid MQTT topic filter", s.topic),
                );
            }
            if s.qos > 2 {
                issue("subscriptions", &format!("qos {} is not 0, 1 or 2", s.qos));
            }
        }
        match &self.client_id {
            Some(id) if id.is_empty() || id.len() > 23 * 8 => {
                issue("client_id", "must be 1 to 184 characters")
            }
            None if !self.clean() => issue(
                "client_id",
                &format!(
                    "is required with `{} = false` (the session belongs to the id)",
                    self.clean_key()
                ),
            ),
            _ => {}
        }
        if self.password.is_some() && self.username.is_none() {
            issue("password", "needs `username`");
        }
        if self.keep_alive < Duration::from_secs(1) {
            issue("keep_alive", "must be at least 1s");
        }
        if self.max_packet_size < 1024 || self.max_packet_size > 268_435_455 {
            issue(
                "max_packet_size",
                "must be between 1024 and 268435455 bytes (MQTT's limit)",
            );
        }
        if self.keep_alive.as_secs() > u64::from(u16::MAX) {
            issue("keep_alive", "must be at most 65535s");
        }
        if let Some(tls) = &self.tls {
            for (key, file) in [
                ("tls.ca_file", &tls.ca_file),
                ("tls.client_cert_file", &tls.client_cert_file),
                ("tls.client_key_file", &tls.client_key_file),
            ] {
                if file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
                    issue(key, "is empty");
                }
            }
            match (&tls.client_cert_file, &tls.client_key_file) {
                (Some(_), None) => issue(
                    "tls.client_key_file",
                    "is required with `tls.client_cert_file` (they go together)",
                ),
                (None, Some(_)) => issue(
                    "tls.client_cert_file",
                    "is required with `tls.client_key_file` (they go together)",
                ),
                _ => {}
            }
        }
        issues
    }

    /// Whether each connection starts a new session (`clean_session` / `clean_start`).
    pub fn clean(&self) -> bool {
        self.clean_session.or(self.clean_start).unwrap_or(true)
    }

    /// The session flag's name in this config's protocol version.
    fn clean_key(&self) -> &'static str {
        if self.version == 5 {
            "clean_start"
        } else {
            "clean_session"
        }
    }

    pub fn port(&self) -> u16 {
        self.port
            .unwrap_or(if self.tls.is_some() { 8883 } else { 1883 })
    }

    /// One line for listings.
    pub fn endpoint(&self) -> String {
        let topics: Vec<String> = self
            .subscriptions
            .iter()
            .map(|s| format!("{}@{}", s.topic, s.qos))
            .collect();
        format!(
            "mqtt{}{} {}:{} [{}]{}",
            if self.version == 5 { "5" } else { "" },
            if self.tls.is_some() { "s" } else { "" },
            self.broker,
            self.port(),
            topics.join(","),
            if self.clean() {
                ""
            } else {
                " persistent session"
            }
        )
    }

    fn client_id_for(&self, trigger: &str) -> String {
        self.client_id.clone().unwrap_or_else(|| {
            let clean: String = trigger
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .take(40)
                .collect();
            format!(
                "millgate-{clean}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            )
        })
    }

    /// v3.1.1 connection options: manual acks, session, keep-alive, credentials (plain TCP;
    /// `transport` adds TLS).
    pub fn options(&self, trigger: &str) -> rumqttc::MqttOptions {
        let mut opts = rumqttc::MqttOptions::new(
            self.client_id_for(trigger),
            self.broker.clone(),
            self.port(),
        );
        // rumqttc panics below 1s; validate() refuses that already.
        opts.set_manual_acks(true)
            .set_clean_session(self.clean())
            .set_keep_alive(self.keep_alive.max(Duration::from_secs(1)))
            .set_max_packet_size(self.max_packet_size as usize, self.max_packet_size as usize);
        if let Some(user) = &self.username {
            opts.set_credentials(user.clone(), self.password.clone().unwrap_or_default());
        }
        opts
    }

    /// v5 connection options: the same, plus the session expiry and topic aliases.
    pub fn options_v5(&self, trigger: &str) -> v5::MqttOptions {
        let mut opts = v5::MqttOptions::new(
            self.client_id_for(trigger),
            self.broker.clone(),
            self.port(),
        );
        let mut props = v5p::ConnectProperties::new();
        props.session_expiry_interval = self
            .session_expiry
            .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        props.topic_alias_max = Some(TOPIC_ALIAS_MAX);
        props.max_packet_size = Some(self.max_packet_size);
        // rumqttc panics below 5s; validate() refuses that already.
        opts.set_manual_acks(true)
            .set_clean_start(self.clean())
            .set_keep_alive(self.keep_alive.max(Duration::from_secs(5)))
            .set_connect_properties(props);
        if let Some(user) = &self.username {
            opts.set_credentials(user.clone(), self.password.clone().unwrap_or_default());
        }
        opts
    }

    /// TCP, or TLS built from the `tls` files (read now: an unreadable or unusable file is an
    /// error that names its key and path).
    pub fn transport(&self) -> Result<Transport, String> {
        let Some(tls) = &self.tls else {
            return Ok(Transport::tcp());
        };
        let mut roots = RootCertStore::empty();
        match &tls.ca_file {
            Some(path) => {
                for cert in pem_certs("tls.ca_file", path)? {
                    roots
                        .add(cert)
                        .map_err(|e| file_error("tls.ca_file", path, e))?;
                }
            }
            None => {
                let system = rustls_native_certs::load_native_certs().map_err(|e| {
                    format!("cannot load the system's root certificates (set `tls.ca_file`): {e}")
                })?;
                roots.add_parsable_certificates(system);
                if roots.is_empty() {
                    return Err(
                        "no root certificates found on this system; set `tls.ca_file`".into(),
                    );
                }
            }
        }
        let builder = ClientConfig::builder().with_root_certificates(roots);
        let config = match (&tls.client_cert_file, &tls.client_key_file) {
            (Some(cert), Some(key)) => {
                let chain = pem_certs("tls.client_cert_file", cert)?;
                let pem = read_file("tls.client_key_file", key)?;
                let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                    file_error(
                        "tls.client_key_file",
                        key,
                        format!("no PEM private key ({e})"),
                    )
                })?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|e| file_error("tls.client_key_file", key, e))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(config),
        )))
    }
}

fn file_error(key: &str, path: &Path, e: impl std::fmt::Display) -> String {
    format!("{key} `{}`: {e}", path.display())
}

fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| file_error(key, path, format_args!("cannot read: {e}")))
}

/// The certificates of a PEM file; none is an error.
fn pem_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, format_args!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// A topic filter: non-empty, `#` only as the whole last level, `+` only as a whole level.
fn valid_filter(f: &str) -> bool {
    let levels: Vec<&str> = f.split('/').collect();
    !f.is_empty()
        && !f.contains('\0')
        && levels.iter().enumerate().all(|(i, l)| {
            (!l.contains('#') || (*l == "#" && i == levels.len() - 1))
                && (!l.contains('+') || *l == "+")
        })
}

pub(super) fn qos_of(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

pub(super) fn qos_v5(n: u8) -> v5::mqttbytes::QoS {
    match n {
        0 => v5::mqttbytes::QoS::AtMostOnce,
        1 => v5::mqttbytes::QoS::AtLeastOnce,
        _ => v5::mqttbytes::QoS::ExactlyOnce,
    }
}
