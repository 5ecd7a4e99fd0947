//! `http` runnables: the job's args are POSTed as JSON; the response (JSON, else text) is the
//! result and a non-2xx status is a failure.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::{RunContext, RunError};

/// Largest response kept as a result (the same bound as a command's stdout).
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct HttpRunnable {
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub timeout: Duration,
    pub client: reqwest::Client,
}

impl HttpRunnable {
    pub fn new(url: String, headers: BTreeMap<String, String>, timeout: Duration) -> Self {
        Self {
            url,
            headers,
            timeout,
            client: reqwest::Client::new(),
        }
    }

    pub async fn run(&self, ctx: &RunContext, args: &Value) -> Result<Value, RunError> {
        let mut req = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .json(args)
            .header("x-millgate-job-id", ctx.job_id.to_string())
            .header("x-millgate-trigger", ctx.trigger.as_str())
            .header("x-millgate-attempt", ctx.attempt.to_string());
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                RunError(format!("timed out after {:?}", self.timeout))
            } else {
                RunError(format!("request to {} failed: {e}", self.url))
            }
        })?;
        let status = resp.status();
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| RunError(format!("reading the response failed: {e}")))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE {
                return Err(RunError(format!(
                    "HTTP {status}: the response is larger than {MAX_RESPONSE} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let value = match crate::model::json::parse(&body) {
            Ok(v) => v,
            Err(e @ crate::model::json::JsonError::TooDeep { .. }) if status.is_success() => {
                return Err(RunError(format!("result refused: {e}")))
            }
            Err(_) => Value::String(String::from_utf8_lossy(&body).into_owned()),
        };
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            let cut: String = text.chars().take(2048).collect();
            return Err(RunError(format!("HTTP {status}: {cut}")));
        }
        Ok(value)
    }
}
