//! Trigger kinds: one module per kind (its config, event shape and connection), what they
//! share, and the one place the configuration's kinds are registered ([`trigger_kinds!`]).
//!
//! - [`TriggerConfig`]: one `[[triggers]]` entry (common keys + the kind's own keys, flat).
//! - [`TriggerKind`]: what every kind provides; [`TriggerSpec::kind`] is the only match from the
//!   configuration's kinds to their behaviour.
//! - [`push`]: the actor behind kinds that are pushed to us over HTTP (webhook, http).
//!
//! Adding a kind: its module (config struct implementing [`TriggerKind`], event shape,
//! connection), one line in [`trigger_kinds!`] below, its test file and its README section
//! (docs/architecture.md has the recipe).

pub mod batch;
pub mod delivery;
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod kind;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "pubsub")]
pub mod pubsub;
pub mod push;
pub mod settle;
pub mod source;
#[cfg(feature = "sqs")]
pub mod sqs;
pub mod timed;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::intake::runtime::{TriggerRuntime, TriggerState};
pub use crate::intake::{Accepted, Intake, IntakeError};
pub use kind::{Mode, SavedState, SpawnFuture, TriggerKind};
pub use timed::{cron, poll, schedule};

use crate::intake::runtime::RuntimeSpec;
use crate::model::settings::{PreprocessorConfig, RetryPolicy, RunnableConfig};
use crate::preprocess::{KeyExpr, Preprocessor};

/// Registers the kinds: the `kind = "..."` name, the [`TriggerSpec`] variant and its config
/// type (which implements [`TriggerKind`]). Generates the enum, the list of names, parsing and
/// serialising, and [`TriggerSpec::kind`].
macro_rules! trigger_kinds {
    ($( $(#[$attr:meta])* $label:literal => $variant:ident($config:ty), )*) => {
        /// The kind-specific half of a trigger.
        #[derive(Debug, Clone, PartialEq)]
        pub enum TriggerSpec {
            $( $(#[$attr])* $variant($config), )*
        }

        /// The kinds this build knows, as `kind = "..."` names them.
        pub const KINDS: &[&str] = &[ $( $(#[$attr])* $label, )* ];

        impl TriggerSpec {
            /// What the kind does: the one match from the configuration's kinds to behaviour.
            pub fn kind(&self) -> &dyn TriggerKind {
                match self {
                    $( $(#[$attr])* TriggerSpec::$variant(c) => c, )*
                }
            }

            /// The kind's name, as `kind = "..."` gives it.
            pub fn label(&self) -> &'static str {
                match self {
                    $( $(#[$attr])* TriggerSpec::$variant(_) => $label, )*
                }
            }

            /// The kind's keys, parsed as the kind named `label`; `None` for an unknown kind.
            fn parse(label: &str, keys: Value) -> Option<Result<Self, String>> {
                match label {
                    $( $(#[$attr])* $label => Some(keyed(keys).map(TriggerSpec::$variant)), )*
                    _ => None,
                }
            }

            fn to_value(&self) -> Result<Value, serde_json::Error> {
                match self {
                    $( $(#[$attr])* TriggerSpec::$variant(c) => serde_json::to_value(c), )*
                }
            }
        }
    };
}

trigger_kinds! {
    "webhook" => Webhook(webhook::WebhookConfig),
    "http" => Http(http::HttpRouteConfig),
    "schedule" => Schedule(schedule::ScheduleConfig),
    "poll" => Poll(poll::PollConfig),
    #[cfg(feature = "nats")]
    "nats" => Nats(nats::NatsConfig),
    #[cfg(feature = "mqtt")]
    "mqtt" => Mqtt(mqtt::MqttConfig),
    #[cfg(feature = "kafka")]
    "kafka" => Kafka(kafka::KafkaConfig),
    #[cfg(feature = "sqs")]
    "sqs" => Sqs(sqs::SqsConfig),
    #[cfg(feature = "pubsub")]
    "pubsub" => PubSub(pubsub::PubSubConfig),
    #[cfg(feature = "pubsub")]
    "pubsub_push" => PubSubPush(pubsub::PubSubPushConfig),
    #[cfg(feature = "postgres")]
    "postgres" => Postgres(postgres::PostgresConfig),
}

/// Keys every trigger has, whatever its kind (`kind` itself picks the [`TriggerSpec`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerCommon {
    pub name: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub runnable: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocessor: Option<PreprocessorConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    /// Most jobs one event may fan out into (default 100); an event with more is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fan_out: Option<usize>,
    /// A jq expression over the event; jobs whose expression yields the same value run one at
    /// a time, in the order their events arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_by: Option<String>,
}

fn yes() -> bool {
    true
}

const COMMON_KEYS: &[&str] = &[
    "name",
    "kind",
    "enabled",
    "runnable",
    "preprocessor",
    "retry",
    "max_in_flight",
    "max_fan_out",
    "order_by",
];

/// `max_fan_out` when a trigger sets none.
pub const DEFAULT_MAX_FAN_OUT: usize = 100;

/// One `[[triggers]]` entry: common keys and the kind's keys side by side in one table.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerConfig {
    pub common: TriggerCommon,
    pub spec: TriggerSpec,
}

impl TriggerConfig {
    pub fn name(&self) -> &str {
        &self.common.name
    }

    /// The kind's name (`webhook`, `kafka`, ...).
    pub fn kind_label(&self) -> &'static str {
        self.spec.label()
    }

    /// Builds a trigger from a flat JSON-like map; errors name the offending key.
    pub fn from_map(mut map: Map<String, Value>) -> Result<Self, String> {
        let name = match map.get("name") {
            Some(Value::String(n)) => n.clone(),
            Some(_) => return Err("`name` must be a string".into()),
            None => return Err("missing key `name`".into()),
        };
        let kind = match map.remove("kind") {
            Some(Value::String(k)) => k,
            Some(_) => return Err(format!("trigger `{name}`: `kind` must be a string")),
            None => return Err(format!("trigger `{name}`: missing key `kind`")),
        };
        let mut common = Map::new();
        for key in COMMON_KEYS {
            if let Some(v) = map.remove(*key) {
                common.insert((*key).to_string(), v);
            }
        }
        let Some(spec) = TriggerSpec::parse(&kind, Value::Object(map)) else {
            return Err(format!(
                "trigger `{name}`: unknown trigger kind `{kind}` (known kinds: {})",
                KINDS.join(", ")
            ));
        };
        let common: TriggerCommon =
            keyed(Value::Object(common)).map_err(|e| format!("trigger `{name}`: {e}"))?;
        let spec = spec.map_err(|e| {
            let mut e = e.to_string();
            if e.contains("unknown field") {
                e = format!(
                    "{e}; keys every trigger accepts: {}",
                    COMMON_KEYS.join(", ")
                );
            }
            format!("trigger `{name}` (kind {kind}): {e}")
        })?;
        Ok(Self { common, spec })
    }

    pub fn to_map(&self) -> Map<String, Value> {
        let mut map = match serde_json::to_value(&self.common) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        map.insert("kind".into(), Value::String(self.kind_label().into()));
        if let Ok(Value::Object(m)) = self.spec.to_value() {
            map.extend(m);
        }
        map
    }

    /// Whether its requests are answered when the job is queued or when it has finished
    /// (pushed kinds only).
    pub fn mode(&self) -> Option<Mode> {
        self.spec.kind().mode()
    }

    /// The jq expression behind `order_by`, with the kind's shorthands expanded.
    pub fn order_by_expr(&self) -> Option<String> {
        self.spec
            .kind()
            .order_by_expr(self.common.order_by.as_deref())
    }

    /// `order_by` compiled: native paths and templates where it can be (the kinds' shorthands
    /// always), a jq filter otherwise.
    pub fn order_by_key(&self) -> Option<Result<KeyExpr, String>> {
        self.spec.kind().order_by(self.common.order_by.as_deref())
    }

    /// One line saying where events come from (for `millgate check` and listings).
    pub fn endpoint(&self) -> String {
        self.spec.kind().endpoint(&self.common.name)
    }

    /// The shared state of this trigger's actors and the intake (`retry` and
    /// `default_max_in_flight` are the `[router]` defaults when the trigger sets none).
    pub fn runtime(
        &self,
        retry: RetryPolicy,
        default_max_in_flight: usize,
    ) -> Result<TriggerRuntime, String> {
        let kind = self.spec.kind();
        let preprocessor = match &self.common.preprocessor {
            Some(p) => {
                Preprocessor::compile(p).map_err(|(k, m)| format!("preprocessor.{k}: {m}"))?
            }
            None => Preprocessor::Default(kind.default_args()),
        };
        let order_by = self
            .order_by_key()
            .transpose()
            .map_err(|m| format!("order_by: {m}"))?;
        Ok(TriggerRuntime::new(RuntimeSpec {
            name: self.common.name.clone(),
            kind: self.kind_label(),
            runnable: self.common.runnable.clone(),
            enabled: self.common.enabled,
            preprocessor,
            order_by,
            retry,
            max_in_flight: self.common.max_in_flight.unwrap_or(default_max_in_flight),
            max_fan_out: self.common.max_fan_out.unwrap_or(DEFAULT_MAX_FAN_OUT),
            redelivers: self.spec.kind().redelivers(),
        }))
    }
}

/// What a trigger actor of a pulling kind (brokers, schedules, polls) is started with.
#[derive(Clone)]
pub struct SourceArgs {
    pub runtime: Arc<TriggerRuntime>,
    pub trigger: Arc<TriggerConfig>,
    pub intake: Intake,
    /// The service's runnables (a poll trigger finds its `poll_runnable` here).
    pub runnables: Arc<BTreeMap<String, RunnableConfig>>,
}

/// Deserializes, prefixing the error with the key it is about (`mode: unknown variant …`).
fn keyed<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let message = crate::model::hints::duration_examples(&e.into_inner().to_string());
        if path.is_empty() || path == "." {
            message
        } else {
            format!("{path}: {message}")
        }
    })
}

impl<'de> Deserialize<'de> for TriggerConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = Map::<String, Value>::deserialize(d)?;
        TriggerConfig::from_map(map).map_err(serde::de::Error::custom)
    }
}

impl Serialize for TriggerConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_map().serialize(s)
    }
}

/// Where a trigger was defined: `config.toml` wins over the API on a name clash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Config,
    Api,
}
