//! Preprocessors shape an event into job arguments: zero outputs filter the event out, one is
//! a job's args, several fan out into several jobs.
//!
//! - `jq` runs in jq worker processes (`jq_pool.rs`, `jq_worker.rs`) with a timeout, never on
//!   the async workers: a filter cannot be interrupted, and jaq recurses on deep values.
//! - `command` runs a program with the event as JSON on stdin; its stdout (an object, an array
//!   for fan-out, or `null` to filter) gives the args. It runs on a pool of preprocessor actors
//!   (a ractor factory), so slow commands are bounded and never block a trigger actor.
//! - none: Windmill's default mapping for the kind (see `TriggerKind::default_args`).

mod jq;
mod jq_pool;
pub mod jq_worker;
mod key;

pub use jq::JqFilter;
pub use jq_pool::{set_worker_exe, JqPool, JqSettings};
pub use key::{key_text, KeyExpr};

use std::sync::Arc;
use std::time::Duration;

use ractor::factory::{
    queues, routing, Factory, FactoryArguments, FactoryMessage, Job, JobOptions, Worker, WorkerId,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::Value;

use crate::model::settings::PreprocessorConfig;
use crate::process::{run_process, ProcessSpec};

/// Most outputs one event may fan out into, whatever `max_fan_out` says.
pub const MAX_OUTPUTS: usize = 10_000;
/// A jq preprocessor's `timeout` when it sets none.
pub const DEFAULT_JQ_TIMEOUT: Duration = Duration::from_secs(1);
/// A command preprocessor's `timeout` when it sets none.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum PreprocessError {
    #[error("jq: {0}")]
    Jq(String),
    #[error("preprocessor timed out after {0:?}")]
    Timeout(Duration),
    #[error("command preprocessor: {0}")]
    Command(String),
    #[error("preprocessor output must be a JSON object, an array of objects or null; got {0}")]
    BadOutput(String),
    #[error("the preprocessor pool is not running")]
    PoolDown,
}

/// Windmill's mapping of one kind: the job's args when a trigger has no preprocessor (given by
/// the kind, `TriggerKind::default_args`).
pub type DefaultArgs = fn(&Value) -> Value;

/// A trigger's compiled preprocessor.
#[derive(Debug, Clone)]
pub enum Preprocessor {
    /// Windmill's default mapping for the kind.
    Default(DefaultArgs),
    /// A filter and how long it may run on one event.
    Jq(JqFilter, Duration),
    Command(ProcessSpec),
}

impl Preprocessor {
    /// Compiles a `preprocessor = {...}` table. Errors are (key, message).
    pub fn compile(config: &PreprocessorConfig) -> Result<Self, (String, String)> {
        match (&config.jq, &config.command) {
            (Some(_), Some(_)) => {
                Err(("jq".into(), "set either `jq` or `command`, not both".into()))
            }
            (Some(code), None) => JqFilter::compile(code)
                .map(|f| Preprocessor::Jq(f, config.timeout.unwrap_or(DEFAULT_JQ_TIMEOUT)))
                .map_err(|m| ("jq".into(), m)),
            (None, Some(cmd)) if cmd.is_empty() => {
                Err(("command".into(), "must name a program".into()))
            }
            (None, Some(cmd)) => Ok(Preprocessor::Command(ProcessSpec {
                command: cmd.clone(),
                cwd: None,
                env: Default::default(),
                timeout: config.timeout.unwrap_or(DEFAULT_COMMAND_TIMEOUT),
            })),
            (None, None) => Err((
                "".into(),
                "a preprocessor needs `jq = \"<filter>\"` or `command = [...]`".into(),
            )),
        }
    }

    /// Runs a command preprocessor in the caller (the pool's workers); the default mapping too.
    /// jq filters run in the jq workers ([`PreprocessorPool::run`]).
    pub async fn apply(&self, event: &Value) -> Result<Vec<Value>, PreprocessError> {
        match self {
            Preprocessor::Default(args) => Ok(vec![args(event)]),
            Preprocessor::Jq(..) => Err(PreprocessError::Jq(
                "jq filters run in the jq workers".into(),
            )),
            Preprocessor::Command(spec) => {
                let stdin = serde_json::to_vec(event)
                    .map_err(|e| PreprocessError::Command(e.to_string()))?;
                let out = run_process(spec, &stdin, &[])
                    .await
                    .map_err(|e| PreprocessError::Command(e.to_string()))?;
                let text = String::from_utf8_lossy(&out.stdout);
                // One level for the array of a fan-out.
                let limit = crate::model::json::max_depth() + 1;
                let parsed = crate::model::json::parse_within(text.trim().as_bytes(), limit)
                    .map_err(|e| PreprocessError::BadOutput(format!("{e}: {}", tail(&text))))?;
                match parsed {
                    Value::Null => Ok(vec![]),
                    Value::Array(items) if items.len() > MAX_OUTPUTS => Err(
                        PreprocessError::BadOutput(format!("{} outputs", items.len())),
                    ),
                    Value::Array(items) => Ok(items),
                    Value::Object(_) => Ok(vec![parsed]),
                    other => Err(PreprocessError::BadOutput(tail(&other.to_string()))),
                }
            }
        }
    }
}

fn tail(s: &str) -> String {
    let s = s.trim();
    let start = s.len().saturating_sub(200);
    let start = (start..=s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(0);
    s[start..].to_string()
}

// ---------------------------------------------------------------------------------------------
// The pool

/// One unit of work for the pool.
pub struct PreprocessRequest {
    pub preprocessor: Preprocessor,
    pub event: Arc<Value>,
    pub reply: RpcReplyPort<Result<Vec<Value>, PreprocessError>>,
}

pub type PoolRef = ActorRef<FactoryMessage<(), PreprocessRequest>>;

/// Handle to the preprocessors: the pool of command preprocessor actors and the jq workers.
#[derive(Clone)]
pub struct PreprocessorPool {
    factory: PoolRef,
    jq: JqPool,
}

struct PreprocessWorker;

impl Worker for PreprocessWorker {
    type Key = ();
    type Message = PreprocessRequest;
    type Arguments = ();
    type State = ();

    async fn pre_start(
        &self,
        _wid: WorkerId,
        _factory: &ActorRef<FactoryMessage<(), PreprocessRequest>>,
        _args: (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _wid: WorkerId,
        _factory: &ActorRef<FactoryMessage<(), PreprocessRequest>>,
        Job { msg, key, .. }: Job<(), PreprocessRequest>,
        _state: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let result = msg.preprocessor.apply(&msg.event).await;
        let _ = msg.reply.send(result);
        Ok(key)
    }
}

impl PreprocessorPool {
    /// Spawns the factory linked to `supervisor`, and the jq workers.
    pub async fn spawn(
        workers: usize,
        jq: JqSettings,
        supervisor: ractor::ActorCell,
        name: Option<String>,
    ) -> Result<Self, ractor::SpawnErr> {
        let factory_def = Factory::<
            (),
            PreprocessRequest,
            (),
            PreprocessWorker,
            routing::QueuerRouting<(), PreprocessRequest>,
            queues::DefaultQueue<(), PreprocessRequest>,
        >::default();
        let args = FactoryArguments::builder()
            .worker_builder(Box::new(ractor::factory::worker::worker_builder(|_wid| {
                (PreprocessWorker, ())
            })))
            .queue(Default::default())
            .router(Default::default())
            .num_initial_workers(workers.max(1))
            .build();
        let (factory, _) = Actor::spawn_linked(name, factory_def, args, supervisor).await?;
        Ok(Self {
            factory,
            jq: JqPool::start(jq),
        })
    }

    pub fn actor(&self) -> &PoolRef {
        &self.factory
    }

    /// Runs the preprocessor, producing at most `max_outputs` outputs. The default mapping is
    /// applied inline: it costs less than a hop.
    pub async fn run(
        &self,
        preprocessor: &Preprocessor,
        event: Arc<Value>,
        max_outputs: usize,
    ) -> Result<Vec<Value>, PreprocessError> {
        match preprocessor {
            Preprocessor::Default(args) => return Ok(vec![args(&event)]),
            Preprocessor::Jq(filter, timeout) => {
                return self.jq.run(filter, &event, max_outputs, *timeout).await
            }
            Preprocessor::Command(_) => {}
        }
        let (tx, rx) = ractor::concurrency::oneshot();
        let job = Job {
            key: (),
            msg: PreprocessRequest {
                preprocessor: preprocessor.clone(),
                event,
                reply: tx.into(),
            },
            options: JobOptions::default(),
            accepted: None,
        };
        self.factory
            .cast(FactoryMessage::Dispatch(job))
            .map_err(|_| PreprocessError::PoolDown)?;
        rx.await.map_err(|_| PreprocessError::PoolDown)?
    }

    /// A key (`order_by`, `dedup_key`) of an event: paths and templates inline, jq filters in
    /// the jq workers. `None` when the expression yields nothing.
    pub async fn key(
        &self,
        expr: &KeyExpr,
        event: &Value,
        timeout: Duration,
    ) -> Result<Option<String>, PreprocessError> {
        match expr {
            KeyExpr::Jq(filter) => {
                let mut outs = self.jq.run(filter, event, 1, timeout).await?;
                Ok((!outs.is_empty()).then(|| key::key_text(outs.swap_remove(0))))
            }
            native => Ok(native.eval(event)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jq_zero_one_many_outputs() {
        let f = JqFilter::compile(".items[] | select(.n > 1) | {n}").unwrap();
        let out = f
            .run(&json!({"items": [{"n": 1}, {"n": 2}, {"n": 3}]}))
            .unwrap();
        assert_eq!(out, vec![json!({"n": 2}), json!({"n": 3})]);
        assert!(f.run(&json!({"items": []})).unwrap().is_empty());
        let one = JqFilter::compile(".body | {x: .a, y: (.b | length)}").unwrap();
        assert_eq!(
            one.run(&json!({"body": {"a": "s", "b": [1, 2]}})).unwrap(),
            vec![json!({"x": "s", "y": 2})]
        );
    }

    #[test]
    fn jq_errors_are_reported_not_panicked() {
        assert!(JqFilter::compile(".a | (")
            .unwrap_err()
            .contains("cannot parse"));
        assert!(JqFilter::compile("nosuchfn(1)")
            .unwrap_err()
            .contains("compile"));
        let f = JqFilter::compile(".a + 1").unwrap();
        assert!(f.run(&json!({"a": "x"})).is_err());
        let runaway = JqFilter::compile("range(100000)").unwrap();
        assert!(runaway.run(&json!(null)).unwrap_err().contains("more than"));
    }

    #[test]
    fn preprocessor_config_errors_name_the_key() {
        let both = PreprocessorConfig {
            jq: Some(".".into()),
            command: Some(vec!["cat".into()]),
            timeout: None,
        };
        assert_eq!(Preprocessor::compile(&both).unwrap_err().0, "jq");
        let none = PreprocessorConfig {
            jq: None,
            command: None,
            timeout: None,
        };
        assert!(Preprocessor::compile(&none).is_err());
    }

    #[tokio::test]
    async fn command_preprocessor_fans_out_and_filters() {
        let p = Preprocessor::compile(&PreprocessorConfig {
            jq: None,
            command: Some(vec![
                "sh".into(),
                "-c".into(),
                r#"read -r line; case "$line" in *drop*) echo null;; *) echo '[{"a":1},{"a":2}]';; esac"#
                    .into(),
            ]),
            timeout: None,
        })
        .unwrap();
        assert_eq!(
            p.apply(&json!({"k": "keep"})).await.unwrap(),
            vec![json!({"a": 1}), json!({"a": 2})]
        );
        assert!(p.apply(&json!({"k": "drop"})).await.unwrap().is_empty());
    }
}
