//! NATS triggers: a core subscription (optionally in a queue group) or a JetStream durable pull
//! consumer. One actor per trigger owns the connection; when the connection or the consumer is
//! lost the actor fails and the trigger supervisor restarts it with backoff (`backing_off`,
//! never disabled).
//!
//! Delivery:
//! - JetStream: messages are fetched in batches and acknowledged only once the job's outcome is
//!   durable (`AckHandle::on_settle`): `ack` after success, `term` after dead-lettering. The
//!   router retries failed jobs itself (per-trigger `retry`), so a failure is not `nak`ed back
//!   to the server while retries remain: a `nak` would only make the server redeliver a message
//!   whose job is already queued, and dedup would drop it. Instead `in_progress` is sent every
//!   `ack_wait / 2` while the job is unsettled so `ack_wait` does not redeliver it. The event id
//!   is trigger + stream (+ its creation time) + stream sequence, so a redelivery after a crash
//!   is deduplicated.
//! - Core NATS cannot redeliver: a message counts as received once its jobs are durably queued.
//!
//! Event (`kind = "nats"`): `payload` (base64), `data` (parsed, when the payload is UTF-8 JSON),
//! `subject`, `reply` (core only; JetStream's reply subject is its ack subject, so `null`),
//! `headers` (`{name: [values]}`), and for JetStream `stream`, `consumer`, `stream_sequence`,
//! `consumer_sequence`, `delivered` (delivery count, 1 = first), `published` (RFC 3339),
//! `pending`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The client this trigger speaks, for tests and tools that publish to it.
pub use async_nats;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use base64::Engine;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::http::RouteTable;
use super::kind::{SpawnFuture, TriggerKind};
use super::{Accepted, SourceArgs, StopSignal as Stop};
use crate::model::ack::AckHandle;
use crate::model::event::Event;
use crate::model::job::JobOutcome;
use crate::preprocess::DefaultArgs;

// ---------------------------------------------------------------------------------------------
// Config

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// `host:port` or `nats://host:port` (`tls://` for TLS); several for a cluster.
    pub servers: Vec<String>,
    #[serde(default, skip_serializing_if = "NatsAuth::is_none")]
    pub auth: NatsAuth,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<NatsTls>,
    /// Subjects (wildcards allowed). Core: one subscription each. JetStream: the consumer's
    /// filter subjects (empty = the whole stream) and, with `create_stream`, the stream's.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Core only: instances in the same queue group share the subjects' messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jetstream: Option<JetStreamConfig>,
}

/// `auth = { type = "token" | "user_password" | "nkey" | "credentials", ... }`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum NatsAuth {
    #[default]
    None,
    Token {
        token: String,
    },
    UserPassword {
        user: String,
        password: String,
    },
    /// An nkey seed (`SU...`).
    Nkey {
        seed: String,
    },
    /// A `.creds` file (user JWT + nkey seed).
    Credentials {
        file: PathBuf,
    },
}

impl NatsAuth {
    fn is_none(&self) -> bool {
        matches!(self, NatsAuth::None)
    }

    pub fn label(&self) -> &'static str {
        match self {
            NatsAuth::None => "none",
            NatsAuth::Token { .. } => "token",
            NatsAuth::UserPassword { .. } => "user_password",
            NatsAuth::Nkey { .. } => "nkey",
            NatsAuth::Credentials { .. } => "credentials",
        }
    }
}

/// `tls = { require, ca_file, cert_file, key_file }`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTls {
    #[serde(default)]
    pub require: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamConfig {
    pub stream: String,
    /// The durable consumer's name; defaults to `millgate_<trigger>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// Create the stream (on `subjects`) when it does not exist; an existing stream is used
    /// as it is.
    #[serde(default)]
    pub create_stream: bool,
    #[serde(default)]
    pub deliver_policy: DeliverPolicy,
    /// Time the server waits for an ack before redelivering; `in_progress` is sent every
    /// half of it while the job runs.
    #[serde(default = "default_ack_wait", with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Unacknowledged messages the server lets this consumer hold.
    #[serde(default = "default_max_ack_pending")]
    pub max_ack_pending: usize,
    /// Messages per fetch (capped by free `max_in_flight` slots and `max_ack_pending`).
    #[serde(default = "default_batch")]
    pub batch: usize,
}

fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ack_pending() -> usize {
    1000
}
fn default_batch() -> usize {
    64
}

/// Where a new durable consumer starts (an existing one keeps its position).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliverPolicy {
    #[default]
    All,
    New,
    Last,
    LastPerSubject,
}

impl NatsConfig {
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        let mut issue = |k: &str, m: &str| issues.push((k.to_string(), m.to_string()));
        if self.servers.is_empty() {
            issue("servers", "needs at least one server (host:port)");
        }
        if self.servers.iter().any(|s| s.trim().is_empty()) {
            issue("servers", "contains an empty server");
        }
        for s in &self.subjects {
            if !valid_subject(s) {
                issue("subjects", &format!("`{s}` is not a valid NATS subject"));
            }
        }
        match &self.jetstream {
            None => {
                if self.subjects.is_empty() {
                    issue("subjects", "needs at least one subject");
                }
            }
            Some(js) => {
                if self.queue_group.is_some() {
                    issue(
                        "queue_group",
                        "is for core NATS; JetStream instances share a durable consumer instead",
                    );
                }
                if !valid_name(&js.stream) {
                    issue(
                        "jetstream.stream",
                        "must be a non-empty name without spaces, `.`, `*` or `>`",
                    );
                }
                if js.consumer.as_deref().is_some_and(|c| !valid_name(c)) {
                    issue(
                        "jetstream.consumer",
                        "must be a non-empty name without spaces, `.`, `*` or `>`",
                    );
                }
                if js.create_stream && self.subjects.is_empty() {
                    issue(
                        "subjects",
                        "needs at least one subject to create the stream on",
                    );
                }
                if js.ack_wait < Duration::from_secs(1) {
                    issue("jetstream.ack_wait", "must be at least 1s");
                }
                if js.max_ack_pending == 0 {
                    issue("jetstream.max_ack_pending", "must be at least 1");
                }
                if js.batch == 0 {
                    issue("jetstream.batch", "must be at least 1");
                }
            }
        }
        match &self.auth {
            NatsAuth::Token { token } if token.is_empty() => issue("auth.token", "is empty"),
            NatsAuth::UserPassword { user, .. } if user.is_empty() => {
                issue("auth.user", "is empty")
            }
            NatsAuth::Nkey { seed } if !seed.starts_with('S') => {
                issue("auth.seed", "must be an nkey seed (starts with `S`)")
            }
            _ => {}
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                issue(
                    "tls",
                    "a client certificate needs both `cert_file` and `key_file`",
                );
            }
        }
        issues
    }

    /// The durable consumer's name.
    pub fn consumer_name(&self, trigger: &str) -> Option<String> {
        let js = self.jetstream.as_ref()?;
        Some(js.consumer.clone().unwrap_or_else(|| {
            format!(
                "millgate_{}",
                trigger.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
            )
        }))
    }

    /// One line for listings: servers and subjects (and stream/consumer).
    pub fn endpoint(&self, trigger: &str) -> String {
        let servers = self.servers.join(",");
        let subjects = self.subjects.join(",");
        match (&self.jetstream, self.consumer_name(trigger)) {
            (Some(js), Some(c)) => {
                format!("nats {servers} jetstream {}/{c} [{subjects}]", js.stream)
            }
            _ => match &self.queue_group {
                Some(q) => format!("nats {servers} [{subjects}] queue {q}"),
                None => format!("nats {servers} [{subjects}]"),
            },
        }
    }

    /// Connection options from the config: auth, TLS, and what the actor needs to notice a
    /// lost connection. Reading a credentials file is the only I/O.
    pub async fn connect_options(&self) -> Result<async_nats::ConnectOptions, String> {
        let mut opts = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .name("millgate");
        opts = match &self.auth {
            NatsAuth::None => opts,
            NatsAuth::Token { token } => opts.token(token.clone()),
            NatsAuth::UserPassword { user, password } => {
                opts.user_and_password(user.clone(), password.clone())
            }
            NatsAuth::Nkey { seed } => opts.nkey(seed.clone()),
            NatsAuth::Credentials { file } => opts.credentials_file(file).await.map_err(|e| {
                format!(
                    "auth.file: cannot read credentials `{}`: {e}",
                    file.display()
                )
            })?,
        };
        if let Some(tls) = &self.tls {
            opts = opts.require_tls(tls.require);
            if let Some(ca) = &tls.ca_file {
                opts = opts.add_root_certificates(ca.clone());
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                opts = opts.add_client_certificate(cert.clone(), key.clone());
            }
        }
        Ok(opts)
    }
}

fn valid_subject(s: &str) -> bool {
    !s.is_empty()
        && !s.contains(char::is_whitespace)
        && s.split('.').enumerate().all(|(i, tok)| {
            let last = i == s.split('.').count() - 1;
            !tok.is_empty() && (!tok.contains('>') || (tok == ">" && last))
        })
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>'))
}

// ---------------------------------------------------------------------------------------------
// Events

fn headers_json(headers: Option<&async_nats::HeaderMap>) -> Value {
    let mut out = Map::new();
    for (name, values) in headers.into_iter().flat_map(|h| h.iter()) {
        let vals: Vec<Value> = values.iter().map(|v| json!(v.as_str())).collect();
        out.insert(name.to_string(), Value::Array(vals));
    }
    Value::Object(out)
}

/// The fields core and JetStream events share.
/// Also returns why the event cannot be run, when its payload is JSON nested too deeply.
fn base_event(
    trigger: &str,
    msg: &async_nats::Message,
    reply: Option<&str>,
) -> (Map<String, Value>, Option<String>) {
    let mut event = Map::new();
    event.insert("kind".into(), json!("nats"));
    event.insert("trigger".into(), json!(trigger));
    event.insert(
        "payload".into(),
        json!(base64::engine::general_purpose::STANDARD.encode(&msg.payload)),
    );
    let (data, defect) = crate::model::json::message_data(&msg.payload);
    if let Some(data) = data {
        event.insert("data".into(), data);
    }
    event.insert("subject".into(), json!(msg.subject.as_str()));
    event.insert("reply".into(), json!(reply));
    event.insert("headers".into(), headers_json(msg.headers.as_ref()));
    (event, defect)
}

fn jetstream_event(
    trigger: &str,
    stream_created: i64,
    msg: &jetstream::Message,
) -> Result<Event, String> {
    let info = msg
        .info()
        .map_err(|e| format!("JetStream message without metadata: {e}"))?;
    let (mut event, defect) = base_event(trigger, &msg.message, None);
    let published = i64::try_from(info.published.unix_timestamp_nanos())
        .map(chrono::DateTime::from_timestamp_nanos)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
        .ok();
    event.insert("stream".into(), json!(info.stream));
    event.insert("consumer".into(), json!(info.consumer));
    event.insert("stream_sequence".into(), json!(info.stream_sequence));
    event.insert("consumer_sequence".into(), json!(info.consumer_sequence));
    event.insert("delivered".into(), json!(info.delivered));
    event.insert("published".into(), json!(published));
    event.insert("pending".into(), json!(info.pending));
    // Stream + sequence names the message for as long as the stream exists, so a redelivery
    // (after a crash or an expired ack_wait) maps to the same event and is deduplicated.
    // The stream's creation time tells a stream deleted and created again under the same name
    // (its sequences restart at 1) from the one whose messages the dedup tree remembers.
    let id = format!(
        "nats:{trigger}:{}:{stream_created}:{}",
        info.stream, info.stream_sequence
    );
    Ok(Event::deterministic(id, Value::Object(event)).with_defect(defect))
}

// ---------------------------------------------------------------------------------------------
// The actor

impl TriggerKind for NatsConfig {
    fn validate(&self, _trigger: &str, _routes: &mut RouteTable) -> Vec<(String, String)> {
        NatsConfig::validate(self)
    }

    fn endpoint(&self, trigger: &str) -> String {
        NatsConfig::endpoint(self, trigger)
    }

    /// `"subject"`: one subject's messages one at a time.
    fn order_by_expr(&self, configured: Option<&str>) -> Option<String> {
        match configured {
            Some("subject") => Some(".subject".into()),
            other => other.map(str::to_string),
        }
    }

    /// Windmill hands a broker message to the script as its base64 `payload`.
    fn default_args(&self) -> DefaultArgs {
        |event| json!({ "payload": event.get("payload").cloned().unwrap_or_default() })
    }

    fn spawn_source(&self, args: SourceArgs, supervisor: ractor::ActorCell) -> Option<SpawnFuture> {
        Some(Box::pin(async move {
            Actor::spawn_linked(None, NatsTrigger, args, supervisor)
                .await
                .map(|(actor, _)| actor.get_cell())
        }))
    }
}

pub struct NatsTrigger;

pub enum NatsMsg {
    /// The connection, subscription or consumer is gone: fail so the supervisor backs off.
    Lost(String),
}

pub struct NatsState {
    /// Tells the task to stop at its next wait. Dropped with the state, which also stops it.
    stop: tokio::sync::watch::Sender<bool>,
}

impl Actor for NatsTrigger {
    type Msg = NatsMsg;
    type State = NatsState;
    type Arguments = SourceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<NatsMsg>,
        args: SourceArgs,
    ) -> Result<NatsState, ActorProcessingErr> {
        // Connecting happens in the task, not here: the supervisor awaits pre_start, and a
        // broker that is down must not stall every other trigger's start.
        let me = myself.clone();
        let (stop, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            // Ok is a requested stop; an error fails the actor.
            if let Err(e) = run(&args, &me, Stop(rx)).await {
                let _ = me.cast(NatsMsg::Lost(e));
            }
        });
        Ok(NatsState { stop })
    }

    async fn handle(
        &self,
        _myself: ActorRef<NatsMsg>,
        msg: NatsMsg,
        _state: &mut NatsState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NatsMsg::Lost(e) => Err(e.into()),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<NatsMsg>,
        state: &mut NatsState,
    ) -> Result<(), ActorProcessingErr> {
        // Jobs already accepted keep their ack handles (and a clone of the client), so their
        // acks still reach the server; only fetching stops.
        let _ = state.stop.send(true);
        Ok(())
    }
}

async fn run(args: &SourceArgs, me: &ActorRef<NatsMsg>, mut stop: Stop) -> Result<(), String> {
    let super::TriggerSpec::Nats(cfg) = &args.trigger.spec else {
        return Err("not a nats trigger".into());
    };
    let notify = me.clone();
    let opts = cfg.connect_options().await?.event_callback(move |event| {
        let notify = notify.clone();
        async move {
            // async-nats would reconnect on its own, silently; failing the actor instead
            // makes the outage visible as `backing_off` and restarts with backoff.
            if matches!(
                event,
                async_nats::Event::Disconnected | async_nats::Event::Closed
            ) {
                let _ = notify.cast(NatsMsg::Lost(format!("NATS connection {event}")));
            }
        }
    });
    let Some(client) = stop.or(opts.connect(cfg.servers.clone())).await else {
        return Ok(());
    };
    let client = client.map_err(|e| format!("cannot connect to {}: {e}", cfg.servers.join(",")))?;
    match &cfg.jetstream {
        Some(js) => run_jetstream(args, cfg, js, client, stop).await,
        None => run_core(args, cfg, client, stop).await,
    }
}

/// Waits until the trigger may take another event (DESIGN.md flow control: stop pulling at
/// `max_in_flight` instead of buffering).
async fn run_core(
    args: &SourceArgs,
    cfg: &NatsConfig,
    client: async_nats::Client,
    mut stop: Stop,
) -> Result<(), String> {
    let rt = &args.runtime;
    let mut subs = Vec::new();
    for subject in &cfg.subjects {
        let sub = match &cfg.queue_group {
            Some(q) => client.queue_subscribe(subject.clone(), q.clone()).await,
            None => client.subscribe(subject.clone()).await,
        }
        .map_err(|e| format!("cannot subscribe to `{subject}`: {e}"))?;
        subs.push(sub);
    }
    // Make sure the server has the subscriptions before we report anything as running.
    client
        .flush()
        .await
        .map_err(|e| format!("cannot subscribe: {e}"))?;
    tracing::info!(trigger = rt.name(), subjects = ?cfg.subjects, "nats subscribed");
    let mut messages = futures::stream::select_all(subs);
    loop {
        let Some(next) = stop.or(messages.next()).await else {
            return Ok(());
        };
        let Some(msg) = next else {
            return Err("all NATS subscriptions closed".into());
        };
        if stop.or(rt.wait_for_capacity()).await.is_none() {
            // Core NATS cannot redeliver this one; stopping is an operator's decision.
            tracing::warn!(trigger = rt.name(), subject = %msg.subject, "trigger stopped while full; message dropped");
            return Ok(());
        }
        let reply = msg.reply.as_ref().map(|r| r.as_str());
        let (event, defect) = base_event(rt.name(), &msg, reply);
        let event = Event::unique("nats", Value::Object(event)).with_defect(defect);
        // Core NATS cannot redeliver: the message counts as received once accept() has
        // flushed its jobs to disk. Taking messages one at a time keeps their publish order.
        // A refused message becomes a dead letter with its reason (written by the intake).
        if let Err(e) = args.intake.accept(rt, event, |_| AckHandle::none()).await {
            return Err(format!("could not accept a message: {e}"));
        }
    }
}

async fn run_jetstream(
    args: &SourceArgs,
    cfg: &NatsConfig,
    js: &JetStreamConfig,
    client: async_nats::Client,
    mut stop: Stop,
) -> Result<(), String> {
    let rt = &args.runtime;
    let ctx = jetstream::new(client);
    let stream = match ctx.get_stream(&js.stream).await {
        Ok(s) => s,
        Err(e) if js.create_stream => {
            tracing::info!(trigger = rt.name(), stream = %js.stream, error = %e, "creating stream");
            ctx.get_or_create_stream(jetstream::stream::Config {
                name: js.stream.clone(),
                subjects: cfg.subjects.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot create stream `{}`: {e}", js.stream))?
        }
        Err(e) => return Err(format!("stream `{}`: {e}", js.stream)),
    };
    let name = cfg.consumer_name(rt.name()).unwrap_or_default();
    let deliver_policy = match js.deliver_policy {
        DeliverPolicy::All => jetstream::consumer::DeliverPolicy::All,
        DeliverPolicy::New => jetstream::consumer::DeliverPolicy::New,
        DeliverPolicy::Last => jetstream::consumer::DeliverPolicy::Last,
        DeliverPolicy::LastPerSubject => jetstream::consumer::DeliverPolicy::LastPerSubject,
    };
    let (filter_subject, filter_subjects) = match cfg.subjects.as_slice() {
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    };
    // Create-or-update: an existing durable consumer keeps its position (redelivering what was
    // never acked) and takes the configured ack_wait / max_ack_pending.
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(name.clone()),
            deliver_policy,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: js.ack_wait,
            max_ack_pending: i64::try_from(js.max_ack_pending).unwrap_or(i64::MAX),
            filter_subject,
            filter_subjects,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot create consumer `{name}` on `{}`: {e}", js.stream))?;
    tracing::info!(trigger = rt.name(), stream = %js.stream, consumer = %name, "nats jetstream consumer ready");
    let progress_every = js.ack_wait / 2;
    let stream_created = stream.cached_info().created.unix_timestamp();
    loop {
        if stop.or(rt.wait_for_capacity()).await.is_none() {
            return Ok(());
        }
        let free = rt
            .max_in_flight
            .saturating_sub(rt.in_flight.load(std::sync::atomic::Ordering::Acquire));
        let batch = js.batch.min(js.max_ack_pending).min(free).max(1);
        let fetch = consumer
            .batch()
            .max_messages(batch)
            .expires(Duration::from_secs(5))
            .messages();
        let Some(messages) = stop.or(fetch).await else {
            return Ok(());
        };
        // The messages that have arrived are taken together, in order: their jobs share one
        // flush to disk instead of one flush per message.
        let mut chunks = messages
            .map_err(|e| format!("fetch from consumer `{name}`: {e}"))?
            .ready_chunks(batch);
        // Messages fetched but not taken when the actor stops are redelivered after ack_wait.
        while let Some(Some(chunk)) = stop.or(chunks.next()).await {
            let mut msgs = Vec::with_capacity(chunk.len());
            let mut failed = None;
            for msg in chunk {
                match msg {
                    Ok(m) if failed.is_none() => msgs.push(m),
                    Ok(_) => {}
                    Err(e) => {
                        failed.get_or_insert(format!("fetch from consumer `{name}`: {e}"));
                    }
                }
            }
            take_jetstream(args, stream_created, msgs, progress_every).await?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        if *stop.0.borrow() {
            return Ok(());
        }
    }
}

/// One fetched message on its way through the intake.
struct Taken {
    event_id: String,
    acker: Arc<jetstream::message::Acker>,
    outcomes: mpsc::UnboundedReceiver<bool>,
}

/// Turns JetStream messages into jobs (one flush for all of them, in their order) and arranges
/// each one's ack. Errors that mean the trigger cannot go on (store or router down) fail the
/// actor; the messages are then redelivered.
async fn take_jetstream(
    args: &SourceArgs,
    stream_created: i64,
    msgs: Vec<jetstream::Message>,
    progress_every: Duration,
) -> Result<(), String> {
    let rt = &args.runtime;
    let mut events = Vec::with_capacity(msgs.len());
    let mut taken = Vec::with_capacity(msgs.len());
    let mut senders = Vec::with_capacity(msgs.len());
    for msg in msgs {
        let event = match jetstream_event(rt.name(), stream_created, &msg) {
            Ok(e) => e,
            Err(e) => {
                // Not a consumer delivery at all; nothing to acknowledge or run.
                tracing::warn!(trigger = rt.name(), error = %e, "skipping a message");
                continue;
            }
        };
        let (_, acker) = msg.split();
        let (tx, outcomes) = mpsc::unbounded_channel::<bool>();
        taken.push(Taken {
            event_id: event.id.clone(),
            acker: Arc::new(acker),
            outcomes,
        });
        senders.push(tx);
        events.push(event);
    }
    if events.is_empty() {
        return Ok(());
    }
    let results = args
        .intake
        .accept_batch(rt, events, |i, _| {
            let tx = senders.get(i).cloned();
            AckHandle::on_settle(move |outcome| {
                if let Some(tx) = tx {
                    let _ = tx.send(matches!(outcome, JobOutcome::Succeeded(_)));
                }
            })
        })
        .await;
    drop(senders);
    let mut failure = None;
    for (t, accepted) in taken.into_iter().zip(results) {
        match accepted {
            Ok(Accepted::Queued(ids)) => {
                tokio::spawn(settle_later(t.acker, ids.len(), t.outcomes, progress_every));
            }
            // Already durable (parked or an earlier delivery's jobs) or nothing to run: the
            // message is done as far as the server is concerned.
            Ok(Accepted::Parked(_) | Accepted::Duplicate(_) | Accepted::Filtered) => {
                send_ack(&t.acker, AckKind::Ack, &t.event_id).await;
            }
            // Redelivering would fail the same way forever: terminated, its dead letter (with
            // the reason, written by the intake) is durable.
            Ok(Accepted::DeadLettered(_)) => {
                send_ack(&t.acker, AckKind::Term, &t.event_id).await;
            }
            Err(e) => {
                send_ack(&t.acker, AckKind::Nak(None), &t.event_id).await;
                failure.get_or_insert(format!("could not accept a message: {e}"));
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Waits for every job of one message: `ack` when all succeeded, `term` when one was
/// dead-lettered, `in_progress` meanwhile. A handle dropped unsettled (outcome not durable)
/// leaves the message to be redelivered: `nak` now rather than after `ack_wait`.
async fn settle_later(
    acker: Arc<jetstream::message::Acker>,
    jobs: usize,
    mut outcomes: mpsc::UnboundedReceiver<bool>,
    progress_every: Duration,
) {
    let mut settled = 0;
    let mut all_ok = true;
    let mut tick = tokio::time::interval(progress_every);
    tick.tick().await;
    while settled < jobs {
        tokio::select! {
            o = outcomes.recv() => match o {
                Some(ok) => {
                    settled += 1;
                    all_ok &= ok;
                }
                None => {
                    send_ack(&acker, AckKind::Nak(None), "unsettled").await;
                    return;
                }
            },
            _ = tick.tick() => send_ack(&acker, AckKind::Progress, "in progress").await,
        }
    }
    let kind = if all_ok { AckKind::Ack } else { AckKind::Term };
    send_ack(&acker, kind, "settled").await;
}

async fn send_ack(acker: &jetstream::message::Acker, kind: AckKind, what: &str) {
    let label = format!("{kind:?}");
    if let Err(e) = acker.ack_with(kind).await {
        // The server redelivers after ack_wait; dedup turns that into an ack.
        tracing::warn!(ack = %label, what, error = %e, "could not send JetStream ack");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v: Value) -> NatsConfig {
        serde_json::from_value(v).expect("config")
    }

    #[test]
    fn validates_subjects_and_jetstream() {
        let c = cfg(json!({"servers": ["127.0.0.1:4222"], "subjects": ["a.*", "b.>"]}));
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let c = cfg(json!({"servers": [], "subjects": ["a..b", "a.>.c"]}));
        let keys: Vec<_> = c.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["servers", "subjects", "subjects"]);
        let c = cfg(json!({
            "servers": ["x"], "queue_group": "q",
            "jetstream": {"stream": "a.b", "ack_wait": "0s", "create_stream": true}
        }));
        let keys: Vec<_> = c.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "queue_group",
                "jetstream.stream",
                "subjects",
                "jetstream.ack_wait"
            ]
        );
        assert_eq!(
            c.consumer_name("my trigger").as_deref(),
            Some("millgate_my_trigger")
        );
    }

    #[test]
    fn unknown_keys_and_auth_types_are_refused() {
        let e = serde_json::from_value::<NatsConfig>(json!({"servers": ["x"], "subject": "a"}))
            .expect_err("unknown key");
        assert!(e.to_string().contains("subject"), "{e}");
        let e = serde_json::from_value::<NatsConfig>(
            json!({"servers": ["x"], "auth": {"type": "kerberos"}}),
        )
        .expect_err("unknown auth");
        assert!(e.to_string().contains("kerberos"), "{e}");
    }

    #[tokio::test]
    async fn auth_and_tls_reach_the_connect_options() {
        let c = cfg(json!({
            "servers": ["tls://127.0.0.1:4222"], "subjects": ["a"],
            "auth": {"type": "user_password", "user": "u", "password": "p"},
            "tls": {"require": true, "ca_file": "/etc/ca.pem", "cert_file": "/c.pem", "key_file": "/k.pem"}
        }));
        assert!(c.validate().is_empty());
        let opts = format!("{:?}", c.connect_options().await.expect("options"));
        assert!(opts.contains("\"tls_required\": true"), "{opts}");
        assert!(opts.contains("/etc/ca.pem"), "{opts}");
        assert!(opts.contains("/c.pem") && opts.contains("/k.pem"), "{opts}");

        let c = cfg(json!({"servers": ["x"], "subjects": ["a"],
            "auth": {"type": "credentials", "file": "/nonexistent/user.creds"}}));
        let e = c.connect_options().await.expect_err("missing creds file");
        assert!(e.contains("/nonexistent/user.creds"), "{e}");

        let c = cfg(json!({"servers": ["x"], "subjects": ["a"],
            "auth": {"type": "nkey", "seed": "not-a-seed"}}));
        assert_eq!(c.validate()[0].0, "auth.seed");
        let c = cfg(json!({"servers": ["x"], "subjects": ["a"], "tls": {"cert_file": "/c.pem"}}));
        assert_eq!(c.validate()[0].0, "tls");
    }

    #[test]
    fn a_nats_trigger_loads_through_the_common_config_path() {
        use crate::triggers::{TriggerConfig, TriggerSpec};
        let map = |v: Value| match v {
            Value::Object(m) => m,
            _ => unreachable!("object literal"),
        };
        let t = TriggerConfig::from_map(map(json!({
            "name": "orders", "kind": "nats", "runnable": "r",
            "servers": ["127.0.0.1:4222"], "subjects": ["orders.>"],
            "jetstream": {"stream": "ORDERS"}
        })))
        .expect("loads");
        assert!(matches!(t.spec, TriggerSpec::Nats(_)));
        assert_eq!(t.mode(), None);
        assert!(t.spec.kind().push().is_none());
        assert_eq!(
            t.endpoint(),
            "nats 127.0.0.1:4222 jetstream ORDERS/millgate_orders [orders.>]"
        );
        let back = TriggerConfig::from_map(t.to_map()).expect("round trip");
        assert_eq!(back, t);
        let e = TriggerConfig::from_map(map(json!({
            "name": "orders", "kind": "nats", "runnable": "r",
            "servers": ["x"], "subjects": ["a"], "stream": "S"
        })))
        .expect_err("unknown key");
        assert!(e.contains("kind nats") && e.contains("stream"), "{e}");
    }

    #[test]
    fn config_round_trips() {
        let c = cfg(json!({
            "servers": ["127.0.0.1:4222"], "subjects": ["a.>"],
            "auth": {"type": "token", "token": "s3cret"},
            "jetstream": {"stream": "S", "consumer": "C", "ack_wait": "10s", "deliver_policy": "new"}
        }));
        let back: NatsConfig =
            serde_json::from_value(serde_json::to_value(&c).expect("ser")).expect("de");
        assert_eq!(back, c);
        let js = c.jetstream.as_ref().expect("js");
        assert_eq!(js.ack_wait, Duration::from_secs(10));
        assert_eq!(js.deliver_policy, DeliverPolicy::New);
        assert_eq!(js.max_ack_pending, 1000);
    }
}
