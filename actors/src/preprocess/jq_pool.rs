//! The service's side of the jq workers: a fixed number of worker processes (`jq_worker.rs`),
//! each fed one request at a time by its own task.
//!
//! A request that outlives its timeout gets its worker killed (a filter cannot be interrupted
//! from inside: `last(range(1e12))` would otherwise hold a core until it ends) and the event is
//! refused; the next request starts a fresh worker. A worker that dies mid-request (stack
//! overflow, memory limit) refuses that event the same way. Either way the async workers, the
//! listeners and `/healthz` never wait on a filter.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::{mpsc, oneshot, Mutex};

use super::jq::JqFilter;
use super::jq_worker::{Answer, RequestHeader, WORKER_ARG};
use super::PreprocessError;

/// Largest answer read from a worker: outputs past it refuse the event.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

static WORKER_EXE: OnceLock<PathBuf> = OnceLock::new();

/// Sets the program started as jq worker (the millgate binary). Without it, the running
/// executable is used, which is right for `millgate run`; tests and benchmarks that run the
/// service inside another program point it at the millgate binary.
pub fn set_worker_exe(path: PathBuf) {
    let _ = WORKER_EXE.set(path);
}

fn worker_exe() -> Result<PathBuf, String> {
    if let Some(p) = WORKER_EXE.get() {
        return Ok(p.clone());
    }
    std::env::current_exe().map_err(|e| format!("cannot find the millgate executable: {e}"))
}

/// How the worker processes are started.
#[derive(Debug, Clone, Copy)]
pub struct JqSettings {
    pub workers: usize,
    /// Address space each worker may use, in bytes.
    pub memory_limit: u64,
}

struct Request {
    filter: Arc<str>,
    event: Vec<u8>,
    max_outputs: usize,
    timeout: Duration,
    reply: oneshot::Sender<Result<Vec<Value>, PreprocessError>>,
}

/// Handle to the jq workers; cheap to clone. Dropping the last handle stops the workers.
#[derive(Clone)]
pub struct JqPool {
    requests: mpsc::UnboundedSender<Request>,
}

impl JqPool {
    /// Starts the worker tasks (each starts its process on its first request).
    pub fn start(settings: JqSettings) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..settings.workers.max(1) {
            tokio::spawn(worker_task(i, rx.clone(), settings));
        }
        Self { requests: tx }
    }

    /// Runs `filter` on `event` in a worker, within `timeout`: its first `max_outputs`
    /// outputs (the rest is not computed; a caller that allows n asks for n + 1 to tell).
    pub async fn run(
        &self,
        filter: &JqFilter,
        event: &Value,
        max_outputs: usize,
        timeout: Duration,
    ) -> Result<Vec<Value>, PreprocessError> {
        let event = serde_json::to_vec(event).map_err(|e| PreprocessError::Jq(e.to_string()))?;
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request {
                filter: filter.source().into(),
                event,
                max_outputs,
                timeout,
                reply,
            })
            .map_err(|_| PreprocessError::PoolDown)?;
        answer.await.map_err(|_| PreprocessError::PoolDown)?
    }
}

/// One worker process and the pipes to it.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

async fn worker_task(
    index: usize,
    requests: Arc<Mutex<mpsc::UnboundedReceiver<Request>>>,
    settings: JqSettings,
) {
    let mut worker: Option<Worker> = None;
    loop {
        let next = requests.lock().await.recv().await;
        let Some(req) = next else {
            // The pool is gone (the service stops): kill_on_drop ends the process.
            return;
        };
        if req.reply.is_closed() {
            continue;
        }
        if worker.is_none() {
            match spawn(settings) {
                Ok(w) => worker = Some(w),
                Err(e) => {
                    tracing::error!(worker = index, error = %e, "cannot start a jq worker");
                    let _ = req.reply.send(Err(PreprocessError::Jq(format!(
                        "cannot start a jq worker: {e}"
                    ))));
                    continue;
                }
            }
        }
        let Some(w) = worker.as_mut() else { continue };
        let result = tokio::time::timeout(req.timeout, round_trip(w, &req)).await;
        let answer = match result {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                let status = stop(worker.take()).await;
                tracing::warn!(worker = index, error = %e, %status, "jq worker failed during a filter; starting a new one");
                Err(PreprocessError::Jq(format!(
                    "the filter's worker process ended ({status}): out of memory or stack?"
                )))
            }
            Err(_) => {
                let _ = stop(worker.take()).await;
                tracing::debug!(worker = index, timeout = ?req.timeout, "jq filter timed out; worker killed");
                Err(PreprocessError::Timeout(req.timeout))
            }
        };
        let _ = req.reply.send(answer);
    }
}

fn spawn(settings: JqSettings) -> Result<Worker, String> {
    let exe = worker_exe()?;
    let mut child = tokio::process::Command::new(&exe)
        .arg(WORKER_ARG)
        .arg(crate::model::json::max_depth().to_string())
        .arg(settings.memory_limit.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{}: {e}", exe.display()))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("the worker's pipes are missing".into());
    };
    Ok(Worker {
        child,
        stdin,
        stdout,
    })
}

/// Kills the worker and says how it ended.
async fn stop(worker: Option<Worker>) -> String {
    let Some(mut w) = worker else {
        return "not running".into();
    };
    let _ = w.child.start_kill();
    match w.child.wait().await {
        Ok(status) => status.to_string(),
        Err(e) => e.to_string(),
    }
}

async fn round_trip(
    w: &mut Worker,
    req: &Request,
) -> Result<Result<Vec<Value>, PreprocessError>, std::io::Error> {
    let header = serde_json::to_vec(&RequestHeader {
        filter: req.filter.to_string(),
        max_outputs: req.max_outputs,
    })?;
    let len = header.len() + 1 + req.event.len();
    let len = u32::try_from(len).map_err(|_| std::io::Error::other("event too large"))?;
    w.stdin.write_all(&len.to_le_bytes()).await?;
    w.stdin.write_all(&header).await?;
    w.stdin.write_all(b"\n").await?;
    w.stdin.write_all(&req.event).await?;
    w.stdin.flush().await?;
    let mut len = [0u8; 4];
    w.stdout.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_ANSWER {
        return Err(std::io::Error::other(format!(
            "the filter's outputs exceed {MAX_ANSWER} bytes"
        )));
    }
    let mut body = vec![0u8; len];
    w.stdout.read_exact(&mut body).await?;
    // The outputs sit one level inside the answer; deeper ones were refused by the worker.
    let answer: Answer = serde_json::from_slice(&body)?;
    Ok(match answer {
        Answer::Ok(outputs) => Ok(outputs),
        Answer::Err(e) => Err(PreprocessError::Jq(e)),
    })
}
