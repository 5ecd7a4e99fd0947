//! `command` runnables: a program gets the job's args as JSON on stdin; its stdout, parsed as
//! JSON when it is JSON and kept as a string otherwise, is the result.

use serde_json::Value;

pub use crate::process::{run_process, ProcessSpec};

use super::{RunContext, RunError};

/// A configured command runnable.
#[derive(Debug, Clone)]
pub struct CommandRunnable {
    pub spec: ProcessSpec,
}

impl CommandRunnable {
    pub async fn run(&self, ctx: &RunContext, args: &Value) -> Result<Value, RunError> {
        let stdin = serde_json::to_vec(args).map_err(|e| RunError(e.to_string()))?;
        let out = run_process(&self.spec, &stdin, &ctx.env())
            .await
            .map_err(|e| RunError(e.to_string()))?;
        parse_output(&out.stdout)
    }
}

/// Stdout as JSON when it is JSON, else as a string (trailing newline dropped). JSON nested
/// past `[server] max_json_depth` is an error: the result could not be stored.
pub fn parse_output(stdout: &[u8]) -> Result<Value, RunError> {
    let text = String::from_utf8_lossy(stdout);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(Value::Null);
    }
    match crate::model::json::parse(trimmed.as_bytes()) {
        Ok(v) => Ok(v),
        Err(e @ crate::model::json::JsonError::TooDeep { .. }) => {
            Err(RunError(format!("result refused: {e}")))
        }
        Err(crate::model::json::JsonError::Invalid(_)) => {
            Ok(Value::String(text.trim_end().to_string()))
        }
    }
}
