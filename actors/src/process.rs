//! Running a program with a deadline: JSON in on stdin, bounded stdout and stderr out, the whole
//! process group killed on timeout. A leaf of the crate (see docs/architecture.md, "Layers"): the
//! command runnables (`runners/command.rs`) and command preprocessors (`preprocess/mod.rs`) both
//! use it, so it sits below both.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest stdout kept as a result; the rest is cut (and the job fails, since the JSON would be
/// cut too).
const MAX_STDOUT: usize = 16 * 1024 * 1024;
/// How much of stderr is kept in a failure message.
const STDERR_TAIL: usize = 2048;
/// How much of stderr is held in memory at most (its end; the rest is read and dropped), so a
/// chatty program cannot fill the service's memory.
const STDERR_KEEP: usize = 64 * 1024;

/// A program to run: used by command runnables and command preprocessors.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSpec {
    pub command: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct ProcessOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start `{program}`: {reason}")]
    Spawn { program: String, reason: String },
    #[error("timed out after {0:?}; its process group was killed")]
    Timeout(Duration),
    #[error("exited with {status}: {stderr_tail}")]
    Exit { status: String, stderr_tail: String },
    #[error("i/o with the process failed: {0}")]
    Io(String),
    #[error("stdout exceeded {MAX_STDOUT} bytes")]
    TooMuchOutput,
}

/// Runs `spec` with `stdin`, in its own process group so that a timeout kills the whole tree
/// (a shell's children included), not just the direct child.
pub async fn run_process(
    spec: &ProcessSpec,
    stdin: &[u8],
    extra_env: &[(&str, String)],
) -> Result<ProcessOutput, ProcessError> {
    let (program, args) = spec.command.split_first().ok_or(ProcessError::Spawn {
        program: String::new(),
        reason: "empty command".into(),
    })?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(&spec.env)
        .envs(extra_env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd.spawn().map_err(|e| ProcessError::Spawn {
        program: program.clone(),
        reason: e.to_string(),
    })?;
    let pid = child.id();
    let mut child_stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let input = stdin.to_vec();
    let io = async move {
        let write = async {
            if let Some(mut s) = child_stdin.take() {
                // A program that does not read its stdin is fine: ignore the broken pipe.
                let _ = s.write_all(&input).await;
                let _ = s.shutdown().await;
            }
        };
        let read_out = async {
            let mut buf = Vec::new();
            if let Some(s) = stdout.as_mut() {
                s.take(MAX_STDOUT as u64 + 1).read_to_end(&mut buf).await?;
            }
            // Past the limit the pipe is closed: a program still writing gets EPIPE and ends,
            // instead of blocking until its timeout.
            drop(stdout.take());
            Ok::<_, std::io::Error>(buf)
        };
        let read_err = async {
            let mut kept = Vec::new();
            if let Some(s) = stderr.as_mut() {
                read_tail(s, &mut kept, STDERR_KEEP).await?;
            }
            Ok::<_, std::io::Error>(kept)
        };
        let ((), out, err) = tokio::join!(write, read_out, read_err);
        let status = child.wait().await;
        (out, err, status)
    };
    // Pinned rather than moved into the timeout, so that on expiry the group is killed while
    // the child is still ours (not yet reaped, its pid not reusable).
    tokio::pin!(io);
    let (out, err, status) = match tokio::time::timeout(spec.timeout, &mut io).await {
        Ok(r) => r,
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) {
                // SAFETY: killpg takes plain integers and touches no memory of ours. The group
                // id is the child's pid (process_group(0) above); if the group is already gone
                // the call fails with ESRCH, which is what we want anyway.
                unsafe {
                    libc::killpg(pid, libc::SIGKILL);
                }
            }
            return Err(ProcessError::Timeout(spec.timeout));
        }
    };
    let stdout = out.map_err(|e| ProcessError::Io(e.to_string()))?;
    let stderr = err.map_err(|e| ProcessError::Io(e.to_string()))?;
    let status = status.map_err(|e| ProcessError::Io(e.to_string()))?;
    if stdout.len() > MAX_STDOUT {
        return Err(ProcessError::TooMuchOutput);
    }
    if !status.success() {
        return Err(ProcessError::Exit {
            status: status.to_string(),
            stderr_tail: tail(&stderr, STDERR_TAIL),
        });
    }
    Ok(ProcessOutput { stdout, stderr })
}

/// Reads `r` to its end, keeping only its last `keep` bytes in `kept`.
async fn read_tail(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
    kept: &mut Vec<u8>,
    keep: usize,
) -> std::io::Result<()> {
    let mut chunk = vec![0u8; 8192];
    loop {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        kept.extend_from_slice(&chunk[..n]);
        if kept.len() > keep * 2 {
            kept.drain(..kept.len() - keep);
        }
    }
}

fn tail(bytes: &[u8], n: usize) -> String {
    let s = String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(n)..]);
    s.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runners::command::parse_output;
    use serde_json::Value;

    fn spec(cmd: &str, timeout_ms: u64) -> ProcessSpec {
        ProcessSpec {
            command: vec!["sh".into(), "-c".into(), cmd.into()],
            cwd: None,
            env: BTreeMap::new(),
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    #[tokio::test]
    async fn stdin_in_stdout_out() {
        let out = run_process(&spec("cat", 5000), b"{\"a\":1}", &[])
            .await
            .unwrap();
        assert_eq!(
            parse_output(&out.stdout).unwrap(),
            serde_json::json!({"a": 1})
        );
        let out = run_process(&spec("echo hello", 5000), b"", &[])
            .await
            .unwrap();
        assert_eq!(
            parse_output(&out.stdout).unwrap(),
            Value::String("hello".into())
        );
    }

    #[tokio::test]
    async fn failure_carries_stderr_tail() {
        let err = run_process(&spec("echo oops >&2; exit 3", 5000), b"", &[])
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("oops") && msg.contains('3'), "{msg}");
    }

    #[tokio::test]
    async fn endless_output_is_bounded() {
        // 200 MB of stderr: only its end is kept, and the run still ends on its own.
        let err = run_process(
            &spec(
                "head -c 200000000 /dev/zero | tr '\\0' x >&2; echo END >&2; exit 1",
                20_000,
            ),
            b"",
            &[],
        )
        .await
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.ends_with("END"),
            "{}",
            &msg[msg.len().saturating_sub(50)..]
        );
        assert!(msg.len() < 4 * STDERR_TAIL, "{}", msg.len());
        // Endless stdout: refused once past the limit, without waiting for the timeout.
        let err = run_process(&spec("yes", 20_000), b"", &[])
            .await
            .unwrap_err();
        assert!(matches!(err, ProcessError::TooMuchOutput), "{err}");
        assert!(
            parse_output(format!("{}1{}", "[".repeat(90), "]".repeat(90)).as_bytes())
                .unwrap_err()
                .0
                .contains("max_json_depth")
        );
    }

    #[tokio::test]
    async fn timeout_kills_the_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("late");
        // The grandchild would write the marker after 1 s if it survived the kill.
        let cmd = format!("(sleep 1; touch {}) & sleep 10", marker.display());
        let err = run_process(&spec(&cmd, 200), b"", &[]).await.unwrap_err();
        assert!(matches!(err, ProcessError::Timeout(_)));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!marker.exists(), "grandchild survived the timeout");
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let s = ProcessSpec {
            command: vec!["/nonexistent/prog".into()],
            ..spec("", 1000)
        };
        assert!(matches!(
            run_process(&s, b"", &[]).await.unwrap_err(),
            ProcessError::Spawn { .. }
        ));
    }
}
