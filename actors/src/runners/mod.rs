//! Runnables (what a job runs) and the runner pool (a ractor factory of runner actors; one job
//! per runner at a time, so the pool size is the global concurrency).

pub mod command;
pub mod http;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use ractor::factory::{
    queues, routing, Factory, FactoryArguments, FactoryMessage, Job, JobOptions, Worker, WorkerId,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::Value;
use tracing::Instrument;

use crate::model::job::JobId;
use crate::model::settings::{RunnableConfig, RunnableKind};

/// A runnable's failure, as a message for the job record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct RunError(pub String);

/// What a running job knows about itself (given to programs as `MILLGATE_*` variables).
#[derive(Debug, Clone)]
pub struct RunContext {
    pub job_id: JobId,
    pub trigger: String,
    pub event_id: String,
    pub attempt: u32,
}

impl RunContext {
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("MILLGATE_JOB_ID", self.job_id.to_string()),
            ("MILLGATE_TRIGGER", self.trigger.clone()),
            ("MILLGATE_EVENT_ID", self.event_id.clone()),
            ("MILLGATE_ATTEMPT", self.attempt.to_string()),
        ]
    }
}

#[derive(Debug, Clone)]
pub enum Runnable {
    Command(command::CommandRunnable),
    Http(http::HttpRunnable),
    Echo,
}

impl Runnable {
    pub fn from_config(c: &RunnableConfig) -> Result<Self, String> {
        Ok(match c.resolved_kind()? {
            RunnableKind::Command => Runnable::Command(command::CommandRunnable {
                spec: command::ProcessSpec {
                    command: c.command.clone().unwrap_or_default(),
                    cwd: c.cwd.clone(),
                    env: c.env.clone(),
                    timeout: c.timeout,
                },
            }),
            RunnableKind::Http => Runnable::Http(http::HttpRunnable::new(
                c.url.clone().unwrap_or_default(),
                c.headers.clone(),
                c.timeout,
            )),
            RunnableKind::Echo => Runnable::Echo,
        })
    }

    pub async fn run(&self, ctx: &RunContext, args: &Value) -> Result<Value, RunError> {
        match self {
            Runnable::Command(c) => c.run(ctx, args).await,
            Runnable::Http(h) => h.run(ctx, args).await,
            Runnable::Echo => Ok(args.clone()),
        }
    }
}

/// One run of one job, sent by the router to the pool.
pub struct RunJob {
    pub ctx: RunContext,
    pub args: Value,
    pub runnable: Arc<Runnable>,
    pub span: tracing::Span,
}

/// What a runner tells the router after a run.
#[derive(Debug)]
pub struct RunReport {
    pub job_id: JobId,
    pub attempt: u32,
    pub result: Result<Value, RunError>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

pub type RunnerPoolRef = ActorRef<FactoryMessage<String, RunJob>>;

/// Where runners send their reports (the router): all a runner knows of whoever dispatched the
/// run. Returns `false` when nobody listens any more.
#[derive(Clone)]
pub struct RunReports(Arc<dyn Fn(RunReport) -> bool + Send + Sync>);

impl RunReports {
    pub fn new(send: impl Fn(RunReport) -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(send))
    }
}

struct Runner {
    reports: RunReports,
}

impl Worker for Runner {
    type Key = String;
    type Message = RunJob;
    type Arguments = ();
    type State = ();

    async fn pre_start(
        &self,
        _wid: WorkerId,
        _factory: &ActorRef<FactoryMessage<String, RunJob>>,
        _args: (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        wid: WorkerId,
        _factory: &ActorRef<FactoryMessage<String, RunJob>>,
        Job { msg, key, .. }: Job<String, RunJob>,
        _state: &mut (),
    ) -> Result<String, ActorProcessingErr> {
        let span =
            tracing::info_span!(parent: &msg.span, "run", runner = wid, attempt = msg.ctx.attempt);
        let started_at = Utc::now();
        let result = msg
            .runnable
            .run(&msg.ctx, &msg.args)
            .instrument(span.clone())
            .await;
        span.in_scope(|| match &result {
            Ok(_) => tracing::debug!("run succeeded"),
            Err(e) => tracing::warn!(error = %e, "run failed"),
        });
        let report = RunReport {
            job_id: msg.ctx.job_id,
            attempt: msg.ctx.attempt,
            result,
            started_at,
            finished_at: Utc::now(),
        };
        if !(self.reports.0)(report) {
            tracing::error!(job_id = %msg.ctx.job_id, "router gone; outcome not recorded, the job will run again on restart");
        }
        Ok(key)
    }
}

/// Spawns the runner pool linked to `supervisor`. `StickyQueuerRouting`: a job goes to the
/// least busy runner, or to the runner already working on its key.
pub async fn spawn_pool(
    size: usize,
    reports: RunReports,
    supervisor: ractor::ActorCell,
    name: Option<String>,
) -> Result<RunnerPoolRef, ractor::SpawnErr> {
    let factory_def = Factory::<
        String,
        RunJob,
        (),
        Runner,
        routing::StickyQueuerRouting<String, RunJob>,
        queues::DefaultQueue<String, RunJob>,
    >::default();
    let args = FactoryArguments::builder()
        .worker_builder(Box::new(ractor::factory::worker::worker_builder(
            move |_wid| {
                (
                    Runner {
                        reports: reports.clone(),
                    },
                    (),
                )
            },
        )))
        .queue(Default::default())
        .router(Default::default())
        .num_initial_workers(size.max(1))
        .build();
    let (factory, _) = Actor::spawn_linked(name, factory_def, args, supervisor).await?;
    Ok(factory)
}

/// Hands one run to the pool.
pub fn dispatch(pool: &RunnerPoolRef, key: String, job: RunJob) -> Result<(), String> {
    pool.cast(FactoryMessage::Dispatch(Job {
        key,
        msg: job,
        options: JobOptions::default(),
        accepted: None,
    }))
    .map_err(|e| e.to_string())
}
