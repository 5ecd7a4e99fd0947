//! What a person starting `millgate run` reads: one plain sentence when another millgate holds
//! the store, and logs without terminal colour codes when stderr is a file or a pipe. Runs the
//! built binary, as an operator would.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::binary::{MillgateProcess, BIN};

const CONFIG: &str = r#"
[runnables.echo]
kind = "echo"

[[triggers]]
name = "hello"
kind = "webhook"
runnable = "echo"
token = "t"
"#;

/// A millgate whose stderr is a pipe, without the variables that change how it logs; returned
/// once it has logged that it listens.
async fn start_first() -> MillgateProcess {
    let mut mg = MillgateProcess::new(CONFIG);
    mg.env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stderr_to_pipe();
    mg.spawn();
    mg.wait_output("millgate listening", Duration::from_secs(30))
        .await;
    mg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_millgate_on_the_same_store_names_the_first() {
    let mut first = start_first().await;

    let second = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(first.config_path())
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("second millgate runs");
    let stderr = String::from_utf8_lossy(&second.stderr).into_owned();
    let pid = first.pid();
    first.stop().await;

    assert_eq!(second.status.code(), Some(1), "stderr:\n{stderr}");
    let expected = format!(
        "another millgate is using {} (pid {pid})",
        first.data_dir().display()
    );
    assert!(
        stderr.starts_with(&expected),
        "expected `{expected}: …`, got:\n{stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "said once, in one line:\n{stderr}"
    );
    assert!(!stderr.contains("could not acquire lock"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_to_a_pipe_have_no_colour_codes() {
    let mut first = start_first().await;
    first.stop().await;
    let text = first.output();
    assert!(text.contains("INFO"), "no log lines:\n{text}");
    assert!(
        !text.contains('\u{1b}'),
        "terminal escape codes in logs written to a pipe:\n{text:?}"
    );
}
