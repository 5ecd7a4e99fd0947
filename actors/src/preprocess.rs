//! Preprocessors shape an event into job arguments: zero outputs filter the event out, one is
//! a job's args, several fan out into several jobs.
//!
//! - `jq` runs in-process through jaq.
//! - `command` runs a program with the event as JSON on stdin; its stdout (an object, an array
//!   for fan-out, or `null` to filter) gives the args.
//! - none: Windmill's default mapping for the kind (the body's fields become args).
//!
//! Work runs on a pool of preprocessor actors (a ractor factory) so that slow command
//! preprocessors are bounded and never block a trigger actor.

use std::sync::Arc;
use std::time::Duration;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, unwrap_valr, Compiler, Ctx, Vars};
use jaq_json::Val;
use ractor::factory::{
    queues, routing, Factory, FactoryArguments, FactoryMessage, Job, JobOptions, Worker, WorkerId,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::Value;

use crate::config::PreprocessorConfig;
use crate::runners::command::{run_process, ProcessSpec};

/// Most outputs one event may fan out into; a runaway filter (`range(1e9)`) is an error.
pub const MAX_OUTPUTS: usize = 10_000;

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum PreprocessError {
    #[error("jq: {0}")]
    Jq(String),
    #[error("command preprocessor: {0}")]
    Command(String),
    #[error("preprocessor output must be a JSON object, an array of objects or null; got {0}")]
    BadOutput(String),
    #[error("the preprocessor pool is not running")]
    PoolDown,
}

type JqDef = jaq_core::Filter<data::JustLut<Val>>;

/// A compiled jq filter, cheap to clone and shareable across threads.
#[derive(Clone)]
pub struct JqFilter {
    filter: Arc<JqDef>,
    source: Arc<str>,
}

impl std::fmt::Debug for JqFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JqFilter({:?})", self.source)
    }
}

impl JqFilter {
    pub fn compile(code: &str) -> Result<Self, String> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader
            .load(&arena, File { code, path: () })
            .map_err(|errs| format!("cannot parse jq filter `{code}`: {}", describe_load(&errs)))?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errs| {
                format!(
                    "cannot compile jq filter `{code}`: {}",
                    describe_compile(&errs)
                )
            })?;
        Ok(Self {
            filter: Arc::new(filter),
            source: code.into(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// All outputs of the filter on `input`, or the first error it raised.
    pub fn run(&self, input: &Value) -> Result<Vec<Value>, String> {
        let input: Val = serde_json::from_value(input.clone()).map_err(|e| e.to_string())?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut outputs = Vec::new();
        for out in self.filter.id.run((ctx, input)).map(unwrap_valr) {
            let v = out.map_err(|e| e.to_string())?;
            if outputs.len() == MAX_OUTPUTS {
                return Err(format!("filter produced more than {MAX_OUTPUTS} outputs"));
            }
            outputs.push(val_to_json(&v)?);
        }
        Ok(outputs)
    }
}

fn val_to_json(v: &Val) -> Result<Value, String> {
    serde_json::from_str(&v.to_string()).map_err(|e| format!("jq output is not JSON ({e}): {v}"))
}

/// `at `…`` with the code from the error position, cut short.
fn at(pos: &str) -> String {
    let snippet: String = pos.chars().take(20).collect();
    if snippet.is_empty() {
        "at the end".into()
    } else {
        format!("at `{snippet}`")
    }
}

fn describe_load(errs: &jaq_core::load::Errors<&str, ()>) -> String {
    use jaq_core::load::Error;
    let mut out = Vec::new();
    for (_, e) in errs {
        match e {
            Error::Io(list) => {
                out.extend(list.iter().map(|(p, m)| format!("cannot load `{p}`: {m}")))
            }
            Error::Lex(list) => out.extend(
                list.iter()
                    .map(|(expect, pos)| format!("expected {} {}", expect.as_str(), at(pos))),
            ),
            Error::Parse(list) => out.extend(
                list.iter()
                    .map(|(expect, pos)| format!("expected {} {}", expect.as_str(), at(pos))),
            ),
        }
    }
    out.join("; ")
}

fn describe_compile(errs: &jaq_core::compile::Errors<&str, ()>) -> String {
    errs.iter()
        .flat_map(|(_, list)| list.iter())
        .map(|(name, undefined)| format!("undefined {} `{name}`", undefined.as_str()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A trigger's compiled preprocessor.
#[derive(Debug, Clone)]
pub enum Preprocessor {
    /// Windmill's default mapping for the kind.
    Default,
    Jq(JqFilter),
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
                .map(Preprocessor::Jq)
                .map_err(|m| ("jq".into(), m)),
            (None, Some(cmd)) if cmd.is_empty() => {
                Err(("command".into(), "must name a program".into()))
            }
            (None, Some(cmd)) => Ok(Preprocessor::Command(ProcessSpec {
                command: cmd.clone(),
                cwd: None,
                env: Default::default(),
                timeout: config.timeout.unwrap_or(Duration::from_secs(30)),
            })),
            (None, None) => Err((
                "".into(),
                "a preprocessor needs `jq = \"<filter>\"` or `command = [...]`".into(),
            )),
        }
    }

    /// Runs in the caller; the pool calls this from its workers.
    pub async fn apply(&self, event: &Value, kind: &str) -> Result<Vec<Value>, PreprocessError> {
        match self {
            Preprocessor::Default => Ok(vec![default_args(kind, event)]),
            Preprocessor::Jq(f) => f.run(event).map_err(PreprocessError::Jq),
            Preprocessor::Command(spec) => {
                let stdin = serde_json::to_vec(event)
                    .map_err(|e| PreprocessError::Command(e.to_string()))?;
                let out = run_process(spec, &stdin, &[])
                    .await
                    .map_err(|e| PreprocessError::Command(e.to_string()))?;
                let text = String::from_utf8_lossy(&out.stdout);
                let parsed: Value = serde_json::from_str(text.trim()).map_err(|e| {
                    PreprocessError::BadOutput(format!("non-JSON stdout ({e}): {}", tail(&text)))
                })?;
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

/// Windmill's mapping when no preprocessor is set: the kind's payload fields become the args.
pub fn default_args(kind: &str, event: &Value) -> Value {
    match kind {
        "webhook" | "http" => crate::triggers::webhook::body_args(event),
        // A schedule's static args; a poll's item.
        "schedule" => event
            .get("args")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({})),
        "poll" => event.get("item").cloned().unwrap_or_default(),
        // Windmill hands a NATS, MQTT or Kafka message to the script as its base64 `payload`.
        "nats" | "mqtt" | "kafka" => {
            serde_json::json!({ "payload": event.get("payload").cloned().unwrap_or_default() })
        }
        _ => event.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// The pool

/// One unit of work for the pool.
pub struct PreprocessRequest {
    pub preprocessor: Preprocessor,
    pub event: Arc<Value>,
    pub kind: String,
    pub reply: RpcReplyPort<Result<Vec<Value>, PreprocessError>>,
}

pub type PoolRef = ActorRef<FactoryMessage<(), PreprocessRequest>>;

/// Handle to the pool of preprocessor actors.
#[derive(Clone)]
pub struct PreprocessorPool {
    factory: PoolRef,
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
        let result = msg.preprocessor.apply(&msg.event, &msg.kind).await;
        let _ = msg.reply.send(result);
        Ok(key)
    }
}

impl PreprocessorPool {
    /// Spawns the factory linked to `supervisor`.
    pub async fn spawn(
        workers: usize,
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
        Ok(Self { factory })
    }

    pub fn actor(&self) -> &PoolRef {
        &self.factory
    }

    /// Runs the preprocessor. The default mapping is applied inline: it costs less than a hop.
    pub async fn run(
        &self,
        preprocessor: &Preprocessor,
        event: Arc<Value>,
        kind: &str,
    ) -> Result<Vec<Value>, PreprocessError> {
        if let Preprocessor::Default = preprocessor {
            return Ok(vec![default_args(kind, &event)]);
        }
        let (tx, rx) = ractor::concurrency::oneshot();
        let job = Job {
            key: (),
            msg: PreprocessRequest {
                preprocessor: preprocessor.clone(),
                event,
                kind: kind.to_string(),
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
            p.apply(&json!({"k": "keep"}), "webhook").await.unwrap(),
            vec![json!({"a": 1}), json!({"a": 2})]
        );
        assert!(p
            .apply(&json!({"k": "drop"}), "webhook")
            .await
            .unwrap()
            .is_empty());
    }
}
