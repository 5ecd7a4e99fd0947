//! A Pub/Sub trigger's keys (README.md, "Pub/Sub") and the client they make.

use std::path::PathBuf;
use std::time::Duration;

use gcloud_pubsub::client::google_cloud_auth::credentials::CredentialsFile;
use gcloud_pubsub::client::{Client, ClientConfig};
use serde::{Deserialize, Serialize};

/// `kind = "pubsub"`: a streaming pull on one subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PubSubConfig {
    pub project: String,
    /// An id, or `projects/<p>/subscriptions/<s>`.
    pub subscription: String,
    /// With `create_subscription = true`: the topic to create the subscription on when it is
    /// missing (an id, or `projects/<p>/topics/<t>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default)]
    pub create_subscription: bool,
    /// Another endpoint, `host:port` of an emulator (plaintext, no credentials);
    /// `PUBSUB_EMULATOR_HOST` is honoured when this is not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// A service account's JSON key; Application Default Credentials otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// Renewed while a message's jobs are unsettled (10 s – 600 s).
    #[serde(default = "default_ack_deadline", with = "humantime_serde")]
    pub ack_deadline: Duration,
    /// Streaming pull flow control; the trigger's `max_in_flight` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_outstanding: Option<usize>,
    /// A dead-lettered job's message: acked once the dead letter is durable, or nacked for the
    /// subscription's own dead-letter policy.
    #[serde(default)]
    pub on_dead_letter: PubSubDeadLetter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PubSubDeadLetter {
    #[default]
    Ack,
    Nack,
}

fn default_ack_deadline() -> Duration {
    Duration::from_secs(60)
}

/// The environment variable Google's client libraries read for an emulator.
pub const EMULATOR_ENV: &str = "PUBSUB_EMULATOR_HOST";

impl PubSubConfig {
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        let mut issue = |k: &str, m: &str| issues.push((k.to_string(), m.to_string()));
        if self.project.is_empty() || self.project.contains('/') {
            issue("project", "must be a project id");
        }
        if self.subscription_id().is_none() {
            issue(
                "subscription",
                "must be an id or `projects/<project>/subscriptions/<id>` of this project",
            );
        }
        if self.create_subscription && self.topic_id().is_none() {
            issue(
                "topic",
                "is needed to create the subscription (an id or `projects/<project>/topics/<id>`)",
            );
        }
        if self.ack_deadline < Duration::from_secs(10)
            || self.ack_deadline > Duration::from_secs(600)
        {
            issue(
                "ack_deadline",
                "must be between 10s and 600s (Pub/Sub's bounds)",
            );
        }
        if self.max_outstanding == Some(0) {
            issue("max_outstanding", "must be at least 1");
        }
        if let Some(e) = &self.endpoint {
            if e.is_empty() || e.contains("://") {
                issue("endpoint", "must be `host:port` (an emulator, plaintext)");
            }
        }
        issues
    }

    /// The subscription's id, from an id or a full name of this project.
    pub fn subscription_id(&self) -> Option<&str> {
        id_of(&self.subscription, &self.project, "subscriptions")
    }

    pub fn topic_id(&self) -> Option<&str> {
        id_of(self.topic.as_deref()?, &self.project, "topics")
    }

    pub fn full_subscription(&self) -> String {
        format!(
            "projects/{}/subscriptions/{}",
            self.project,
            self.subscription_id().unwrap_or_default()
        )
    }

    pub fn endpoint(&self) -> String {
        format!("pubsub {}", self.full_subscription())
    }

    /// The emulator to use: `endpoint`, or `PUBSUB_EMULATOR_HOST`.
    fn emulator(&self) -> Option<String> {
        self.endpoint
            .clone()
            .or_else(|| std::env::var(EMULATOR_ENV).ok().filter(|h| !h.is_empty()))
    }

    /// Connects (the client dials at once: an error here is an unreachable service).
    pub async fn client(&self) -> Result<Client, String> {
        let mut cfg = ClientConfig {
            project_id: Some(self.project.clone()),
            ..ClientConfig::default()
        };
        match self.emulator() {
            Some(host) => {
                cfg.environment = gcloud_gax::conn::Environment::Emulator(host);
            }
            None => {
                if matches!(cfg.environment, gcloud_gax::conn::Environment::Emulator(_)) {
                    return Err(format!("{EMULATOR_ENV} is set but empty"));
                }
                cfg = match &self.credentials_file {
                    Some(path) => {
                        let shown = path.display();
                        let file = CredentialsFile::new_from_file(shown.to_string())
                            .await
                            .map_err(|e| format!("credentials_file `{shown}`: {e}"))?;
                        cfg.with_credentials(file)
                            .await
                            .map_err(|e| format!("credentials_file `{shown}`: {e}"))?
                    }
                    None => cfg
                        .with_auth()
                        .await
                        .map_err(|e| format!("Application Default Credentials: {e}"))?,
                };
            }
        }
        Client::new(cfg)
            .await
            .map_err(|e| format!("cannot connect to Pub/Sub: {e}"))
    }
}

fn id_of<'a>(name: &'a str, project: &str, what: &str) -> Option<&'a str> {
    let id = match name.strip_prefix("projects/") {
        Some(rest) => {
            let (p, rest) = rest.split_once('/')?;
            let id = rest.strip_prefix(what)?.strip_prefix('/')?;
            (p == project).then_some(id)?
        }
        None => name,
    };
    (!id.is_empty() && !id.contains('/')).then_some(id)
}
