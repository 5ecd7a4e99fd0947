//! The connection to the broker, per protocol version: options, packets, reason codes.

use std::collections::VecDeque;

use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5 as v5p;
use rumqttc::{ConnectReturnCode, Event as MqttEvent, Packet};

use super::config::{qos_of, qos_v5, MqttConfig, MqttSubscription};
use super::event::Message;

// ---------------------------------------------------------------------------------------------
// The connection, per version

/// What the trigger needs from one connection, whatever its version.
pub(super) enum Incoming {
    Connected {
        session_present: bool,
    },
    /// Every subscription sent has been granted.
    Subscribed,
    Message(Box<Message>),
    /// Our DISCONNECT went out (after every request queued before it, acks included).
    Closed,
    Nothing,
}

pub(super) enum Conn {
    V3(rumqttc::AsyncClient, Box<rumqttc::EventLoop>),
    V5(v5::AsyncClient, Box<v5::EventLoop>),
}

pub(super) struct Link {
    conn: Conn,
    /// `host:port`, for messages.
    pub(super) at: String,
    /// Subscriptions not yet granted, each with its 1-based position in `subscriptions`. v5
    /// sends them one at a time (the next once the previous is granted), so a refusal, which
    /// rumqttc reports without its packet id, is always the first one's.
    pending: VecDeque<(usize, MqttSubscription)>,
    /// v5: whether the broker takes subscription identifiers (its CONNACK says so).
    sub_ids: bool,
}

impl Link {
    /// `receive_maximum`: v5 only, how many QoS 1/2 messages the broker may have sent and not
    /// yet seen acknowledged.
    pub(super) fn open(
        cfg: &MqttConfig,
        trigger: &str,
        receive_maximum: u16,
    ) -> Result<Self, String> {
        let transport = cfg.transport()?;
        let capacity = 256;
        let conn = if cfg.version == 5 {
            let mut opts = cfg.options_v5(trigger);
            opts.set_transport(transport);
            opts.set_receive_maximum(Some(receive_maximum.max(1)));
            let (client, events) = v5::AsyncClient::new(opts, capacity);
            Conn::V5(client, Box::new(events))
        } else {
            let mut opts = cfg.options(trigger);
            opts.set_transport(transport);
            let (client, events) = rumqttc::AsyncClient::new(opts, capacity);
            Conn::V3(client, Box::new(events))
        };
        Ok(Self {
            conn,
            at: format!("{}:{}", cfg.broker, cfg.port()),
            pending: VecDeque::new(),
            sub_ids: true,
        })
    }

    /// The next thing that matters from the broker. Errors end the connection: refused
    /// connections and subscriptions name the broker's reason code.
    pub(super) async fn next(&mut self, trigger: &str) -> Result<Incoming, String> {
        let Link {
            conn,
            at,
            pending,
            sub_ids,
        } = self;
        match conn {
            Conn::V3(client, events) => {
                let event = events.poll().await.map_err(|e| match e {
                    rumqttc::ConnectionError::ConnectionRefused(code) => refused_v3(at, code),
                    e => format!("MQTT connection to {at}: {e}"),
                })?;
                Ok(match event {
                    MqttEvent::Incoming(Packet::ConnAck(ack)) => {
                        if ack.code != ConnectReturnCode::Success {
                            return Err(refused_v3(at, ack.code));
                        }
                        Incoming::Connected {
                            session_present: ack.session_present,
                        }
                    }
                    MqttEvent::Incoming(Packet::SubAck(ack)) => {
                        // One SUBACK answers the one SUBSCRIBE of all filters, a code each.
                        let topics: Vec<_> = pending.drain(..).map(|(_, s)| s.topic).collect();
                        let refused = ack
                            .return_codes
                            .iter()
                            .position(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                        if let Some(i) = refused {
                            let topic = topics.get(i).map(String::as_str).unwrap_or("?");
                            return Err(format!(
                                "MQTT broker {at} refused the subscription to `{topic}`: \
                                 return code 0x80 (Failure)"
                            ));
                        }
                        Incoming::Subscribed
                    }
                    MqttEvent::Incoming(Packet::Publish(p)) => {
                        Incoming::Message(Box::new(Message::v3(trigger, client, p)))
                    }
                    MqttEvent::Incoming(Packet::Disconnect) => {
                        return Err(format!("MQTT broker {at} disconnected us"));
                    }
                    MqttEvent::Outgoing(rumqttc::Outgoing::Disconnect) => Incoming::Closed,
                    _ => Incoming::Nothing,
                })
            }
            Conn::V5(client, events) => {
                let event = events
                    .poll()
                    .await
                    .map_err(|e| v5_error(at, pending.front().map(|(_, s)| s.topic.as_str()), e))?;
                Ok(match event {
                    v5::Event::Incoming(v5p::Packet::ConnAck(ack)) => {
                        if ack.code != v5p::ConnectReturnCode::Success {
                            return Err(refused_v5(at, ack.code));
                        }
                        *sub_ids = ack
                            .properties
                            .as_ref()
                            .and_then(|p| p.subscription_identifiers_available)
                            != Some(0);
                        Incoming::Connected {
                            session_present: ack.session_present,
                        }
                    }
                    v5::Event::Incoming(v5p::Packet::SubAck(ack)) => {
                        // rumqttc fails the poll on a refused code (see `v5_error`); check
                        // again in case that changes.
                        let granted = pending.pop_front();
                        if let Some(c) = ack
                            .return_codes
                            .iter()
                            .find(|c| !matches!(c, v5p::SubscribeReasonCode::Success(_)))
                        {
                            let topic = granted.as_ref().map(|(_, s)| s.topic.as_str());
                            return Err(refused_sub_v5(at, topic, *c));
                        }
                        if pending.is_empty() {
                            Incoming::Subscribed
                        } else {
                            subscribe_v5(client, pending.front(), *sub_ids).await?;
                            Incoming::Nothing
                        }
                    }
                    v5::Event::Incoming(v5p::Packet::Publish(p)) => {
                        Incoming::Message(Box::new(Message::v5(trigger, client, p)?))
                    }
                    v5::Event::Incoming(v5p::Packet::Disconnect(d)) => {
                        return Err(disconnected_v5(at, d.reason_code, None));
                    }
                    v5::Event::Outgoing(rumqttc::Outgoing::Disconnect) => Incoming::Closed,
                    _ => Incoming::Nothing,
                })
            }
        }
    }

    /// Subscribes to every filter. v3: one SUBSCRIBE for all. v5: one per entry, the first
    /// here and each next one once the previous is granted (`next`).
    pub(super) async fn subscribe(&mut self, subs: &[MqttSubscription]) -> Result<(), String> {
        self.pending = subs
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, s)| (i + 1, s))
            .collect();
        match &self.conn {
            Conn::V3(client, _) => {
                let filters = subs.iter().map(|s| rumqttc::SubscribeFilter {
                    path: s.topic.clone(),
                    qos: qos_of(s.qos),
                });
                client
                    .subscribe_many(filters)
                    .await
                    .map_err(|e| format!("cannot subscribe: {e}"))
            }
            Conn::V5(client, _) => subscribe_v5(client, self.pending.front(), self.sub_ids).await,
        }
    }

    /// A handle that asks this connection to close, from outside the task polling it.
    pub(super) fn closer(&self) -> Closer {
        match &self.conn {
            Conn::V3(client, _) => Closer::V3(client.clone()),
            Conn::V5(client, _) => Closer::V5(client.clone()),
        }
    }
}

pub(super) enum Closer {
    V3(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

impl Closer {
    /// Queues a DISCONNECT behind the requests already queued (acks), for the polling task
    /// to write; it ends once it is out.
    pub(super) fn close(&self) {
        let _ = match self {
            Closer::V3(client) => client.try_disconnect().map_err(|e| e.to_string()),
            Closer::V5(client) => client.try_disconnect().map_err(|e| e.to_string()),
        };
    }
}

/// Sends a v5 SUBSCRIBE for one entry, carrying its 1-based position as subscription
/// identifier (unless the broker does not take them): the broker sends it back with every
/// message the entry matched (`properties.subscription_identifiers`).
async fn subscribe_v5(
    client: &v5::AsyncClient,
    entry: Option<&(usize, MqttSubscription)>,
    ids: bool,
) -> Result<(), String> {
    let Some((position, sub)) = entry else {
        return Ok(());
    };
    let props = v5p::SubscribeProperties {
        id: ids.then_some(*position),
        user_properties: Vec::new(),
    };
    client
        .subscribe_with_properties(sub.topic.clone(), qos_v5(sub.qos), props)
        .await
        .map_err(|e| format!("cannot subscribe: {e}"))
}

pub(super) fn refused_v3(at: &str, code: ConnectReturnCode) -> String {
    format!(
        "MQTT broker {at} refused the connection: return code {} ({code:?})",
        code as u8
    )
}

pub(super) fn refused_v5(at: &str, code: v5p::ConnectReturnCode) -> String {
    format!(
        "MQTT broker {at} refused the connection: reason code {:#04x} ({code:?})",
        connack_code(code)
    )
}

fn refused_sub_v5(at: &str, topic: Option<&str>, code: v5p::SubscribeReasonCode) -> String {
    format!(
        "MQTT broker {at} refused the subscription to `{}`: reason code {:#04x} ({code:?})",
        topic.unwrap_or("?"),
        suback_code(code)
    )
}

fn disconnected_v5(at: &str, code: v5p::DisconnectReasonCode, why: Option<String>) -> String {
    format!(
        "MQTT broker {at} disconnected us: reason code {:#04x} ({code:?}){}",
        code as u8,
        why.map(|w| format!(": {w}")).unwrap_or_default()
    )
}

pub(super) fn v5_error(at: &str, pending: Option<&str>, e: v5::ConnectionError) -> String {
    match e {
        v5::ConnectionError::ConnectionRefused(code) => refused_v5(at, code),
        v5::ConnectionError::MqttState(v5::StateError::SubFail { reason }) => {
            refused_sub_v5(at, pending, reason)
        }
        v5::ConnectionError::MqttState(v5::StateError::ServerDisconnect {
            reason_code,
            reason_string,
        }) => disconnected_v5(at, reason_code, reason_string),
        e => format!("MQTT connection to {at}: {e}"),
    }
}

/// The wire value of a v5 CONNACK reason code (rumqttc keeps it private).
fn connack_code(c: v5p::ConnectReturnCode) -> u8 {
    use v5p::ConnectReturnCode as C;
    match c {
        C::Success => 0x00,
        C::UnspecifiedError => 0x80,
        C::MalformedPacket => 0x81,
        C::ProtocolError => 0x82,
        C::ImplementationSpecificError => 0x83,
        C::UnsupportedProtocolVersion | C::RefusedProtocolVersion => 0x84,
        C::ClientIdentifierNotValid | C::BadClientId => 0x85,
        C::BadUserNamePassword => 0x86,
        C::NotAuthorized => 0x87,
        C::ServerUnavailable | C::ServiceUnavailable => 0x88,
        C::ServerBusy => 0x89,
        C::Banned => 0x8a,
        C::BadAuthenticationMethod => 0x8c,
        C::TopicNameInvalid => 0x90,
        C::PacketTooLarge => 0x95,
        C::QuotaExceeded => 0x97,
        C::PayloadFormatInvalid => 0x99,
        C::RetainNotSupported => 0x9a,
        C::QoSNotSupported => 0x9b,
        C::UseAnotherServer => 0x9c,
        C::ServerMoved => 0x9d,
        C::ConnectionRateExceeded => 0x9f,
    }
}

/// The wire value of a v5 SUBACK reason code.
fn suback_code(c: v5p::SubscribeReasonCode) -> u8 {
    use v5p::SubscribeReasonCode as S;
    match c {
        S::Success(q) => q as u8,
        S::Failure | S::Unspecified => 0x80,
        S::ImplementationSpecific => 0x83,
        S::NotAuthorized => 0x87,
        S::TopicFilterInvalid => 0x8f,
        S::PkidInUse => 0x91,
        S::QuotaExceeded => 0x97,
        S::SharedSubscriptionsNotSupported => 0x9e,
        S::SubscriptionIdNotSupported => 0xa1,
        S::WildcardSubscriptionsNotSupported => 0xa2,
    }
}
