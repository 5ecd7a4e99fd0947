//! An SQS trigger's keys (README.md, "SQS") and the client they make.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `kind = "sqs"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqsConfig {
    /// A standard or FIFO (`.fifo`) queue's URL.
    pub queue_url: String,
    /// The queue's region; by default the AWS environment's (`AWS_REGION`, the profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Another endpoint: moto, LocalStack, a VPC endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Static keys; by default the standard AWS chain (env, profile, web identity, instance
    /// role).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<SqsAuth>,
    /// Messages per ReceiveMessage (1–10).
    #[serde(default = "default_batch")]
    pub batch: u8,
    /// How long one ReceiveMessage waits for messages (long polling, 0–20 s).
    #[serde(default = "default_wait_time", with = "humantime_serde")]
    pub wait_time: Duration,
    /// Set at receive and renewed while a message's jobs are unsettled; by default the queue's.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub visibility_timeout: Option<Duration>,
    /// Message attribute names to request (`["All"]` by default, `[]` for none).
    #[serde(default = "default_message_attributes")]
    pub message_attributes: Vec<String>,
    /// When a message is deleted from the queue.
    #[serde(default)]
    pub delete: DeleteWhen,
    /// What becomes of a message whose job was dead-lettered.
    #[serde(default)]
    pub on_dead_letter: OnDeadLetter,
}

/// `auth = { access_key_id, secret_access_key, session_token }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqsAuth {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteWhen {
    /// Once every job of the message has a durable outcome (the queue keeps the message until
    /// then, and hands it over again after a crash).
    #[default]
    AfterRun,
    /// Once the message's jobs are durably queued (millgate's store keeps them from then on).
    OnAccept,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDeadLetter {
    /// Deleted once the dead letter is durable (millgate's dead letters keep it).
    #[default]
    Delete,
    /// Left in the queue, for its own redrive policy to move to its dead-letter queue.
    Keep,
}

fn default_batch() -> u8 {
    10
}

fn default_wait_time() -> Duration {
    Duration::from_secs(20)
}

fn default_message_attributes() -> Vec<String> {
    vec!["All".into()]
}

/// SQS's own bounds on a message's visibility timeout.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

impl SqsConfig {
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        let mut issue = |k: &str, m: &str| issues.push((k.to_string(), m.to_string()));
        if !(self.queue_url.starts_with("https://") || self.queue_url.starts_with("http://")) {
            issue(
                "queue_url",
                "must be the queue's URL (https://sqs.<region>.amazonaws.com/<account>/<name>)",
            );
        }
        if let Some(e) = &self.endpoint_url {
            if !(e.starts_with("https://") || e.starts_with("http://")) {
                issue("endpoint_url", "must be an http:// or https:// URL");
            }
        }
        if !(1..=10).contains(&self.batch) {
            issue(
                "batch",
                "must be between 1 and 10 (SQS's limit per receive)",
            );
        }
        if self.wait_time > Duration::from_secs(20) {
            issue("wait_time", "must be at most 20s (SQS's longest long poll)");
        }
        if let Some(v) = self.visibility_timeout {
            if v < Duration::from_secs(2) || v > MAX_VISIBILITY {
                issue(
                    "visibility_timeout",
                    "must be between 2s and 12h (renewed at half of it while jobs run)",
                );
            }
        }
        if let Some(a) = &self.auth {
            if a.access_key_id.is_empty() {
                issue("auth.access_key_id", "is empty");
            }
            if a.secret_access_key.is_empty() {
                issue("auth.secret_access_key", "is empty");
            }
        }
        if self.message_attributes.iter().any(|a| a.is_empty()) {
            issue("message_attributes", "names must not be empty");
        }
        issues
    }

    /// Whether the queue is a FIFO queue (its jobs run in MessageGroupId order by default).
    pub fn fifo(&self) -> bool {
        self.queue_url.trim_end_matches('/').ends_with(".fifo")
    }

    pub fn endpoint(&self) -> String {
        format!("sqs {}", self.queue_url)
    }

    /// The client: the standard AWS chain for what the config leaves out.
    pub async fn client(&self) -> aws_sdk_sqs::Client {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(r) = &self.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(a) = &self.auth {
            loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
                a.access_key_id.clone(),
                a.secret_access_key.clone(),
                a.session_token.clone(),
                None,
                "millgate-config",
            ));
        }
        let shared = loader.load().await;
        let mut conf = aws_sdk_sqs::config::Builder::from(&shared);
        if let Some(e) = &self.endpoint_url {
            conf = conf.endpoint_url(e.clone());
        }
        aws_sdk_sqs::Client::from_conf(conf.build())
    }
}
