//! What a person starting `millgate run` reads: one plain sentence when another millgate holds
//! the store, and logs without terminal colour codes when stderr is a file or a pipe. Runs the
//! built binary, as an operator would.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn write_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("millgate.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"

[store]
path = "{}"

[runnables.echo]
kind = "echo"

[[triggers]]
name = "hello"
kind = "webhook"
runnable = "echo"
token = "t"
"#,
            dir.join("data").display()
        ),
    )
    .expect("write config");
    path
}

fn millgate_run(config: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_millgate"));
    c.arg("run")
        .arg("--config")
        .arg(config)
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Starts a millgate and returns it once it listens, with the lines it logged so far and a
/// channel for the rest.
fn start_first(config: &Path) -> (Child, Vec<String>, mpsc::Receiver<String>) {
    let mut child = millgate_run(config).spawn().expect("millgate starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("millgate did not start; it logged:\n{}", lines.join("\n"));
        };
        let up = line.contains("millgate listening");
        lines.push(line);
        if up {
            return (child, lines, rx);
        }
    }
}

fn stop(mut child: Child) {
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

#[test]
fn a_second_millgate_on_the_same_store_names_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    let (first, _, _rest) = start_first(&config);

    let second = millgate_run(&config)
        .output()
        .expect("second millgate runs");
    let stderr = String::from_utf8_lossy(&second.stderr).into_owned();
    let pid = first.id();
    stop(first);

    assert_eq!(second.status.code(), Some(1), "stderr:\n{stderr}");
    let expected = format!(
        "another millgate is using {} (pid {pid})",
        dir.path().join("data").display()
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

#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    let (first, lines, _rest) = start_first(&config);
    stop(first);
    let text = lines.join("\n");
    assert!(text.contains("INFO"), "no log lines:\n{text}");
    assert!(
        !text.contains('\u{1b}'),
        "terminal escape codes in logs written to a pipe:\n{text:?}"
    );
}
