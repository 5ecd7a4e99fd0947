//! MQTT trigger (v3.1.1, rumqttc): one actor per trigger owns the connection and its
//! subscriptions. When the connection is lost the actor fails and the trigger supervisor
//! restarts it with backoff (`backing_off`, never disabled); rumqttc's own silent reconnect is
//! not used.
//!
//! Delivery (DESIGN.md, "Delivery guarantee"):
//! - QoS 1/2: manual acks. The puback (QoS 1) / pubrec (QoS 2) is sent only once the job's
//!   outcome is durable (`AckHandle::on_settle`): after success and after dead-lettering alike
//!   (the source is told either way; MQTT has no negative ack). With a persistent session
//!   (`clean_session = false`, fixed `client_id`) a message not acknowledged when millgate dies
//!   is redelivered by the broker after the restart.
//! - QoS 0: the broker never redelivers, so a message counts as received once its jobs are
//!   durably queued.
//!
//! Event ids are unique, not derived from the message: an MQTT packet id only names a message
//! while it is in flight on one connection and is reused right after its ack, so pkid (or
//! topic + pkid) would make distinct messages look like duplicates. A redelivery after a crash
//! therefore becomes a second job (at-least-once), never a lost one.
//!
//! Event (`kind = "mqtt"`): `payload` (base64), `data` (parsed, when the payload is UTF-8
//! JSON), `topic`, `qos`, `retain`, `pkid` (0 for QoS 0), `dup`.

use std::time::Duration;

/// The client this trigger speaks, for tests and tools that publish to it.
pub use rumqttc;

use base64::Engine;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rumqttc::{AsyncClient, ConnectReturnCode, Event as MqttEvent, MqttOptions, Packet, QoS};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::{Accepted, IntakeError, SourceArgs, StopSignal as Stop, TriggerRuntime};
use crate::event::Event;
use crate::router::AckHandle;

// ---------------------------------------------------------------------------------------------
// Config

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Host name or IP of the broker.
    pub broker: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Needed (and kept stable) for a persistent session; defaults to
    /// `millgate-<trigger>-<random>` with a clean session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Protocol version; only 3 (v3.1.1) is built so far.
    #[serde(default = "default_version")]
    pub version: u8,
    pub subscriptions: Vec<MqttSubscription>,
    /// `false` keeps the session (subscriptions and unacknowledged messages) at the broker
    /// across reconnects and restarts.
    #[serde(default = "default_clean_session")]
    pub clean_session: bool,
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
}

/// `subscriptions = [{ topic = "sensors/#", qos = 1 }]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSubscription {
    pub topic: String,
    #[serde(default)]
    pub qos: u8,
}

fn default_port() -> u16 {
    1883
}
fn default_version() -> u8 {
    3
}
fn default_clean_session() -> bool {
    true
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

impl MqttConfig {
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        let mut issue = |k: &str, m: &str| issues.push((k.to_string(), m.to_string()));
        if self.broker.trim().is_empty() {
            issue("broker", "is empty");
        }
        if self.port == 0 {
            issue("port", "must not be 0");
        }
        if self.version != 3 {
            issue("version", "only 3 (MQTT v3.1.1) is supported so far");
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
            None if !self.clean_session => issue(
                "client_id",
                "is required with `clean_session = false` (the session belongs to the id)",
            ),
            _ => {}
        }
        if self.password.is_some() && self.username.is_none() {
            issue("password", "needs `username`");
        }
        if self.keep_alive < Duration::from_secs(1) {
            issue("keep_alive", "must be at least 1s");
        }
        issues
    }

    /// One line for listings.
    pub fn endpoint(&self) -> String {
        let topics: Vec<String> = self
            .subscriptions
            .iter()
            .map(|s| format!("{}@{}", s.topic, s.qos))
            .collect();
        format!(
            "mqtt {}:{} [{}]{}",
            self.broker,
            self.port,
            topics.join(","),
            if self.clean_session {
                ""
            } else {
                " persistent session"
            }
        )
    }

    /// Connection options: manual acks, session, keep-alive, credentials.
    pub fn options(&self, trigger: &str) -> MqttOptions {
        let client_id = self.client_id.clone().unwrap_or_else(|| {
            let clean: String = trigger
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .take(40)
                .collect();
            format!(
                "millgate-{clean}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            )
        });
        let mut opts = MqttOptions::new(client_id, self.broker.clone(), self.port);
        opts.set_manual_acks(true)
            .set_clean_session(self.clean_session)
            .set_keep_alive(self.keep_alive);
        if let Some(user) = &self.username {
            opts.set_credentials(user.clone(), self.password.clone().unwrap_or_default());
        }
        opts
    }
}

/// A v3.1.1 topic filter: non-empty, `#` only as the whole last level, `+` only as a whole level.
fn valid_filter(f: &str) -> bool {
    let levels: Vec<&str> = f.split('/').collect();
    !f.is_empty()
        && !f.contains('\0')
        && levels.iter().enumerate().all(|(i, l)| {
            (!l.contains('#') || (*l == "#" && i == levels.len() - 1))
                && (!l.contains('+') || *l == "+")
        })
}

fn qos_of(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

// ---------------------------------------------------------------------------------------------
// Events

fn mqtt_event(trigger: &str, p: &rumqttc::Publish) -> Value {
    let mut event = Map::new();
    event.insert("kind".into(), json!("mqtt"));
    event.insert("trigger".into(), json!(trigger));
    event.insert(
        "payload".into(),
        json!(base64::engine::general_purpose::STANDARD.encode(&p.payload)),
    );
    if let Ok(data) = serde_json::from_slice::<Value>(&p.payload) {
        event.insert("data".into(), data);
    }
    event.insert("topic".into(), json!(p.topic));
    event.insert("qos".into(), json!(p.qos as u8));
    event.insert("retain".into(), json!(p.retain));
    event.insert("pkid".into(), json!(p.pkid));
    event.insert("dup".into(), json!(p.dup));
    Value::Object(event)
}

// ---------------------------------------------------------------------------------------------
// The actor

pub struct MqttTrigger;

pub enum MqttMsg {
    /// The connection or a subscription is gone: fail so the supervisor backs off.
    Lost(String),
}

pub struct MqttState {
    /// Tells the task to stop at its next wait. Dropped with the state, which also stops it.
    stop: tokio::sync::watch::Sender<bool>,
}

impl Actor for MqttTrigger {
    type Msg = MqttMsg;
    type State = MqttState;
    type Arguments = SourceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<MqttMsg>,
        args: SourceArgs,
    ) -> Result<MqttState, ActorProcessingErr> {
        // Connecting happens in the task: a broker that is down must not stall other triggers.
        let me = myself.clone();
        let (stop, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            if let Err(e) = run(&args, Stop(rx)).await {
                set_status(&args.runtime, json!({"connected": false, "error": e}));
                let _ = me.cast(MqttMsg::Lost(e));
            }
        });
        Ok(MqttState { stop })
    }

    async fn handle(
        &self,
        _myself: ActorRef<MqttMsg>,
        msg: MqttMsg,
        _state: &mut MqttState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MqttMsg::Lost(e) => Err(e.into()),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<MqttMsg>,
        state: &mut MqttState,
    ) -> Result<(), ActorProcessingErr> {
        let _ = state.stop.send(true);
        Ok(())
    }
}

/// `{connected, subscribed, session_present}` for the admin API and tests.
fn set_status(rt: &TriggerRuntime, v: Value) {
    if let Ok(mut s) = rt.source_status.lock() {
        *s = v;
    }
}

async fn run(args: &SourceArgs, mut stop: Stop) -> Result<(), String> {
    let rt = &args.runtime;
    let super::TriggerSpec::Mqtt(cfg) = &rt.config.spec else {
        return Err("not an mqtt trigger".into());
    };
    set_status(rt, json!({"connected": false, "subscribed": false}));
    let where_ = format!("{}:{}", cfg.broker, cfg.port);
    let (client, mut eventloop) = AsyncClient::new(cfg.options(rt.name()), 256);
    let mut session_present = false;
    loop {
        let Some(polled) = stop.or(eventloop.poll()).await else {
            let _ = client.try_disconnect();
            return Ok(());
        };
        // Any connection error ends this actor; the supervisor reconnects with backoff.
        let event = polled.map_err(|e| format!("MQTT connection to {where_}: {e}"))?;
        match event {
            MqttEvent::Incoming(Packet::ConnAck(ack)) => {
                if ack.code != ConnectReturnCode::Success {
                    return Err(format!("MQTT broker {where_} refused: {:?}", ack.code));
                }
                session_present = ack.session_present;
                set_status(
                    rt,
                    json!({"connected": true, "subscribed": false, "session_present": session_present}),
                );
                let filters = cfg.subscriptions.iter().map(|s| rumqttc::SubscribeFilter {
                    path: s.topic.clone(),
                    qos: qos_of(s.qos),
                });
                client
                    .subscribe_many(filters)
                    .await
                    .map_err(|e| format!("cannot subscribe: {e}"))?;
            }
            MqttEvent::Incoming(Packet::SubAck(ack)) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    return Err(format!("MQTT broker {where_} refused a subscription"));
                }
                tracing::info!(trigger = rt.name(), broker = %where_, session_present, "mqtt subscribed");
                set_status(
                    rt,
                    json!({"connected": true, "subscribed": true, "session_present": session_present}),
                );
            }
            MqttEvent::Incoming(Packet::Publish(p)) => {
                if stop.or(rt.wait_for_capacity()).await.is_none() {
                    // Unacknowledged: a persistent session gets it again; QoS 0 is lost.
                    tracing::warn!(trigger = rt.name(), topic = %p.topic, "trigger stopped while full; message not taken");
                    return Ok(());
                }
                take(args, &client, p).await?;
            }
            MqttEvent::Incoming(Packet::Disconnect) => {
                return Err(format!("MQTT broker {where_} disconnected us"));
            }
            _ => {}
        }
    }
}

/// Turns one message into jobs and arranges its ack. Errors that mean the trigger cannot go on
/// (store or router down) fail the actor; the message stays unacknowledged.
async fn take(args: &SourceArgs, client: &AsyncClient, p: rumqttc::Publish) -> Result<(), String> {
    let rt = &args.runtime;
    let event = Event::unique("mqtt", mqtt_event(rt.name(), &p));
    let event_id = event.id.clone();
    if p.qos == QoS::AtMostOnce {
        // Nothing to acknowledge: received once accept() has flushed the jobs to disk.
        return match args.intake.accept(rt, event, |_| AckHandle::none()).await {
            Ok(_) => Ok(()),
            Err(IntakeError::Preprocess(e)) => {
                tracing::warn!(trigger = rt.name(), topic = %p.topic, error = %e, "preprocessor failed; QoS 0 message dropped");
                Ok(())
            }
            Err(e) => Err(format!("could not accept a message: {e}")),
        };
    }
    let (tx, settled) = mpsc::unbounded_channel::<()>();
    let accepted = args
        .intake
        .accept(rt, event, |_| {
            let tx = tx.clone();
            AckHandle::on_settle(move |_outcome| {
                let _ = tx.send(());
            })
        })
        .await;
    drop(tx);
    match accepted {
        Ok(Accepted::Queued(ids)) => {
            tokio::spawn(ack_when_settled(client.clone(), p, ids.len(), settled));
        }
        // Already durable (parked) or nothing to run: done as far as the broker is concerned.
        Ok(Accepted::Parked(_) | Accepted::Duplicate(_) | Accepted::Filtered) => {
            send_ack(client, &p, &event_id).await;
        }
        Err(IntakeError::Preprocess(e)) => {
            // A redelivery would fail the same way forever: acknowledge, counted in the log.
            tracing::warn!(trigger = rt.name(), event_id = %event_id, topic = %p.topic, error = %e, "preprocessor failed; message acknowledged and dropped");
            send_ack(client, &p, &event_id).await;
        }
        Err(e) => return Err(format!("could not accept a message: {e}")),
    }
    Ok(())
}

/// Acknowledges once every job of the message has a durable outcome (success or dead letter).
/// A handle dropped unsettled leaves the message unacknowledged, for the broker to redeliver
/// to the next connection of a persistent session.
async fn ack_when_settled(
    client: AsyncClient,
    p: rumqttc::Publish,
    jobs: usize,
    mut settled: mpsc::UnboundedReceiver<()>,
) {
    for _ in 0..jobs {
        if settled.recv().await.is_none() {
            tracing::info!(topic = %p.topic, pkid = p.pkid, "a job ended without a durable outcome; message left unacknowledged for redelivery");
            return;
        }
    }
    send_ack(&client, &p, "settled").await;
}

async fn send_ack(client: &AsyncClient, p: &rumqttc::Publish, what: &str) {
    tracing::debug!(topic = %p.topic, pkid = p.pkid, what, "mqtt ack");
    if let Err(e) = client.ack(p).await {
        // The connection this message came on is gone; a persistent session redelivers it.
        tracing::warn!(topic = %p.topic, pkid = p.pkid, what, error = %e, "could not send MQTT ack");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v: Value) -> MqttConfig {
        serde_json::from_value(v).expect("config")
    }

    #[test]
    fn validates_filters_sessions_and_versions() {
        let c = cfg(json!({"broker": "127.0.0.1", "subscriptions": [
            {"topic": "a/+/b", "qos": 1}, {"topic": "c/#"}]}));
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.port, 1883);
        assert!(c.clean_session);
        assert_eq!(c.endpoint(), "mqtt 127.0.0.1:1883 [a/+/b@1,c/#@0]");
        let c = cfg(json!({"broker": "", "version": 5, "clean_session": false,
            "password": "p", "keep_alive": "0s",
            "subscriptions": [{"topic": "a/#/b", "qos": 3}, {"topic": "x+"}]}));
        let keys: Vec<_> = c.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "broker",
                "version",
                "subscriptions",
                "subscriptions",
                "subscriptions",
                "client_id",
                "password",
                "keep_alive"
            ]
        );
        let e = serde_json::from_value::<MqttConfig>(
            json!({"broker": "x", "subscriptions": [], "topic": "a"}),
        )
        .expect_err("unknown key");
        assert!(e.to_string().contains("topic"), "{e}");
    }

    #[test]
    fn options_carry_session_credentials_and_manual_acks() {
        let c = cfg(json!({"broker": "h", "port": 1884, "client_id": "fixed",
            "clean_session": false, "keep_alive": "10s", "username": "u", "password": "p",
            "subscriptions": [{"topic": "t", "qos": 1}]}));
        let o = c.options("t");
        assert_eq!(o.client_id(), "fixed");
        assert!(!o.clean_session());
        assert!(o.manual_acks());
        assert_eq!(o.keep_alive(), Duration::from_secs(10));
        assert_eq!(o.credentials(), Some(("u".into(), "p".into())));
        assert_eq!(o.broker_address(), ("h".into(), 1884));
        let anon = cfg(json!({"broker": "h", "subscriptions": [{"topic": "t"}]}));
        assert!(anon
            .options("my trigger")
            .client_id()
            .starts_with("millgate-my_trigger-"));
    }

    #[test]
    fn events_carry_the_message_fields() {
        let mut p = rumqttc::Publish::new("a/b", QoS::AtLeastOnce, br#"{"n": 1}"#.to_vec());
        p.pkid = 7;
        p.retain = true;
        let e = mqtt_event("t", &p);
        assert_eq!(e["payload"], "eyJuIjogMX0=");
        assert_eq!(e["data"], json!({"n": 1}));
        assert_eq!(e["topic"], "a/b");
        assert_eq!(e["qos"], 1);
        assert_eq!(e["pkid"], 7);
        assert_eq!(e["retain"], true);
        assert_eq!(e["dup"], false);
        let p = rumqttc::Publish::new("a", QoS::AtMostOnce, vec![0xff]);
        assert!(mqtt_event("t", &p).get("data").is_none());
    }

    #[test]
    fn an_mqtt_trigger_loads_through_the_common_config_path() {
        use crate::triggers::{TriggerConfig, TriggerSpec};
        let Value::Object(map) = json!({
            "name": "sensors", "kind": "mqtt", "runnable": "r", "order_by": ".topic",
            "broker": "127.0.0.1", "subscriptions": [{"topic": "s/#", "qos": 1}]
        }) else {
            unreachable!("object literal")
        };
        let t = TriggerConfig::from_map(map).expect("loads");
        assert!(matches!(t.spec, TriggerSpec::Mqtt(_)));
        assert!(t.spec.push().is_none());
        assert_eq!(t.endpoint(), "mqtt 127.0.0.1:1883 [s/#@1]");
        let back = TriggerConfig::from_map(t.to_map()).expect("round trip");
        assert_eq!(back, t);
    }
}
