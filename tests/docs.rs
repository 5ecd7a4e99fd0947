//! README.md and docs/*.md must stay true: docs that drift from the code are bugs.
//!
//! - Every fenced block says what it is (`sh`, `toml`, `json` or `text`).
//! - Every `toml` block loads as a configuration.
//! - Every command of every `sh` block runs, in order, against a millgate started the way the
//!   README starts it (the embedded default configuration, from a fresh directory), with
//!   `millgate` on `PATH` as `cargo install --path .` leaves it. A block whose lines start with
//!   `$ ` is a transcript: the lines after a command are what it prints (`…` stands for any
//!   text, a line `…` for any lines), and a command whose file (`$ cat FILE`) does not exist
//!   yet gets it written from what the transcript shows.
//! - The few commands that cannot run here are listed in [`RUN_ELSEWHERE`] with what runs them
//!   instead; an entry that matches no command any more fails the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::binary::{MillgateProcess, BIN};

/// Commands of the docs not run by this test, each with what covers it.
const RUN_ELSEWHERE: &[(&str, &str)] = &[
    (
        "scripts/run.sh",
        "`scripts/build-deps.sh`, its first half, runs below (build_deps_*); the second half is \
         `cargo run --release -- run`, i.e. the `millgate run` this test starts",
    ),
    (
        "scripts/test.sh",
        "the whole suite, run by .ci/run; it cannot run inside itself",
    ),
    (
        "cargo install --path .",
        "a release build of this package: the test puts the binary it built on PATH instead",
    ),
    (
        "RUSTFLAGS=\"--cfg tokio_unstable\" cargo build --release --features console",
        "a second full build with other compiler flags, too slow for the suite",
    ),
    (
        "./target/release/millgate run --config config.toml",
        "the console build's binary (see above)",
    ),
    (
        "tokio-console",
        "a separate tool (cargo install tokio-console), for that build",
    ),
];

const LANGUAGES: &[&str] = &["sh", "toml", "json", "text"];
/// How long one command may take (jobs are asynchronous: a transcript's command is retried
/// until it prints what the docs show, within this time).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

struct Block {
    file: String,
    /// 1-based line of the opening fence.
    line: usize,
    lang: String,
    body: String,
}

fn doc_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

fn blocks() -> Vec<Block> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for path in doc_files() {
        let text = std::fs::read_to_string(&path).expect("read doc");
        let file = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        let mut open: Option<Block> = None;
        for (i, line) in text.lines().enumerate() {
            let Some(fence) = line.strip_prefix("```") else {
                if let Some(b) = open.as_mut() {
                    b.body.push_str(line);
                    b.body.push('\n');
                }
                continue;
            };
            match open.take() {
                Some(b) => out.push(b),
                None => {
                    open = Some(Block {
                        file: file.clone(),
                        line: i + 1,
                        lang: fence.trim().to_string(),
                        body: String::new(),
                    })
                }
            }
        }
        assert!(open.is_none(), "{file}: a code block is not closed");
    }
    out
}

#[test]
fn every_block_says_what_it_is() {
    let unlabelled: Vec<String> = blocks()
        .iter()
        .filter(|b| !LANGUAGES.contains(&b.lang.as_str()))
        .map(|b| format!("{}:{}: ```{}", b.file, b.line, b.lang))
        .collect();
    assert!(
        unlabelled.is_empty(),
        "code blocks must be one of {LANGUAGES:?} (`sh` ones are run by this test):\n{}",
        unlabelled.join("\n")
    );
}

#[test]
fn toml_examples_are_valid_configurations() {
    let blocks: Vec<Block> = blocks().into_iter().filter(|b| b.lang == "toml").collect();
    assert!(!blocks.is_empty(), "the docs have no toml example");
    for b in blocks {
        let at = format!("{}:{}", b.file, b.line);
        millgate::load_str(&b.body, &at, |k| Some(format!("dummy-{k}")))
            .unwrap_or_else(|e| panic!("{at}: the example does not load:\n{e}\n---\n{}", b.body));
    }
}

#[test]
fn default_config_defines_a_webhook_a_route_and_their_runnable() {
    let c = millgate::load_str(millgate::DEFAULT_CONFIG, "config.toml", |_| None).unwrap();
    let kinds: Vec<&str> = c.triggers.iter().map(|t| t.kind_label()).collect();
    assert!(
        kinds.contains(&"webhook") && kinds.contains(&"http"),
        "{kinds:?}"
    );
    for t in &c.triggers {
        assert!(c.runnables.contains_key(&t.common.runnable));
    }
}

/// One command of an `sh` block, with what it prints when the block is a transcript.
struct Step {
    at: String,
    command: String,
    expected: Option<Vec<String>>,
}

fn steps(block: &Block) -> Vec<Step> {
    let transcript = block.body.lines().any(|l| l.starts_with("$ "));
    let mut steps: Vec<Step> = Vec::new();
    let mut continued = false;
    for (i, line) in block.body.lines().enumerate() {
        let at = format!("{}:{}", block.file, block.line + 1 + i);
        if continued {
            let last = steps.last_mut().expect("a continued command");
            last.command.push('\n');
            last.command.push_str(line);
            continued = line.ends_with('\\');
            continue;
        }
        let command = if transcript {
            match line.strip_prefix("$ ") {
                Some(c) => c,
                None => {
                    let last = steps.last_mut().unwrap_or_else(|| {
                        panic!("{at}: a transcript must start with a `$ ` command")
                    });
                    last.expected.get_or_insert_with(Vec::new).push(line.into());
                    continue;
                }
            }
        } else {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            line
        };
        continued = command.ends_with('\\');
        steps.push(Step {
            at,
            command: command.to_string(),
            expected: transcript.then(Vec::new),
        });
    }
    steps
}

fn all_steps() -> Vec<Step> {
    blocks()
        .iter()
        .filter(|b| b.lang == "sh")
        .flat_map(steps)
        .collect()
}

fn run_elsewhere(command: &str) -> bool {
    RUN_ELSEWHERE
        .iter()
        .any(|(c, _)| command.trim_start().starts_with(c))
}

#[test]
fn commands_run_elsewhere_are_still_in_the_docs() {
    let steps = all_steps();
    for (command, how) in RUN_ELSEWHERE {
        assert!(
            steps
                .iter()
                .any(|s| s.command.trim_start().starts_with(command)),
            "`{command}` ({how}) is in RUN_ELSEWHERE but in no doc any more: remove it there"
        );
    }
}

/// Whether `actual` shows what `expected` does: line by line, `…` inside a line is any text,
/// a line that is only `…` any number of lines.
fn shows(expected: &[String], actual: &[&str]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((e, rest)) if e.trim() == "…" => {
            (0..=actual.len()).any(|skip| shows(rest, &actual[skip..]))
        }
        Some((e, rest)) => actual
            .split_first()
            .is_some_and(|(a, more)| line_matches(e.trim_end(), a.trim_end()) && shows(rest, more)),
    }
}

fn line_matches(pattern: &str, line: &str) -> bool {
    let mut parts = pattern.split('…');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = line.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(p) => rest = &rest[p + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

#[test]
fn transcript_matching() {
    let e = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(shows(&e(&["a", "…", "d"]), &["a", "b", "c", "d"]));
    assert!(shows(&e(&["a…z"]), &["a to z"]));
    assert!(shows(
        &e(&["{\"job_id\":\"…\"…}"]),
        &["{\"job_id\":\"1\",\"x\":2}"]
    ));
    assert!(!shows(&e(&["a", "d"]), &["a", "b", "d"]));
    assert!(!shows(&e(&["a…z"]), &["a to y"]));
}

/// The first job id in `output` (`"job_id":"…"`, as the API's JSON has it).
fn job_id_in(output: &str) -> Option<String> {
    let at = output.find("\"job_id\"")?;
    let rest = &output[at + "\"job_id\"".len()..];
    let rest = rest
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

/// A shell session: the exports so far, the addresses of the millgate under test, the last
/// job id printed.
struct Session {
    dir: PathBuf,
    path: String,
    ingress: String,
    admin: String,
    exports: Vec<String>,
    job_id: Option<String>,
}

impl Session {
    /// The command as it runs here: the service's real addresses, the last job id, and curl
    /// failing on an HTTP error (the docs' calls all succeed; curl alone would exit 0 on 4xx).
    fn prepare(&self, command: &str) -> String {
        let mut c = command
            .replace("127.0.0.1:8080", &self.ingress)
            .replace("127.0.0.1:8081", &self.admin);
        if let Some(id) = &self.job_id {
            c = c.replace("<job_id>", id);
        }
        if c.trim_start().starts_with("curl ") {
            c = c.replacen("curl ", "curl --fail-with-body -sS ", 1);
            // An event stream does not end: watch it for a moment.
            if c.contains(" -N ") {
                c.push_str(" --max-time 3");
            }
        }
        c
    }

    async fn run(&self, command: &str) -> (Option<i32>, String) {
        let script = format!("exec 2>&1\n{}\n{command}\n", self.exports.join("\n"));
        let child = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(&self.dir)
            .env("PATH", &self.path)
            .env("MILLGATE_ADMIN_URL", format!("http://{}", self.admin))
            .env_remove("MILLGATE_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("bash");
        let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("`{command}` did not finish within {COMMAND_TIMEOUT:?}"))
            .expect("bash runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    async fn step(&mut self, step: &Step) {
        let command = self.prepare(&step.command);
        if let Some(expected) = &step.expected {
            // `$ cat FILE`: the transcript shows the file; write it as shown.
            if let Some(file) = command.strip_prefix("cat ") {
                let path = self.dir.join(file.trim());
                if !file.contains(' ') && !path.exists() {
                    std::fs::write(&path, format!("{}\n", expected.join("\n")))
                        .expect("write the transcript's file");
                }
            }
        }
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let (code, output) = self.run(&command).await;
            let streamed = command.contains(" -N ") && code == Some(28);
            let verdict = match &step.expected {
                None if code == Some(0) || streamed => Ok(()),
                None => Err(format!("exit code {code:?}")),
                Some(expected) => {
                    let expected: Vec<String> = expected
                        .iter()
                        .map(|l| match &self.job_id {
                            Some(id) => l.replace("<job_id>", id),
                            None => l.clone(),
                        })
                        .collect();
                    let fails = expected.first().is_some_and(|l| l.starts_with("error:"));
                    let lines: Vec<&str> = output.lines().collect();
                    if (code == Some(0)) == fails {
                        Err(format!("exit code {code:?}"))
                    } else if !shows(&expected, &lines) {
                        Err(format!("the docs show:\n{}", expected.join("\n")))
                    } else {
                        Ok(())
                    }
                }
            };
            match verdict {
                Ok(()) => {
                    if let Some(id) = job_id_in(&output) {
                        self.job_id = Some(id);
                    }
                    if command.trim_start().starts_with("export ") {
                        self.exports.push(command.clone());
                    }
                    return;
                }
                Err(why) if Instant::now() > deadline => panic!(
                    "{}: `{}` failed: {why}\n--- it printed:\n{output}",
                    step.at, step.command
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_the_docs_runs() {
    // The README's first command runs `millgate run` on the embedded configuration from a
    // fresh directory (`./data` there); only its listeners move to free ports
    // (`${MILLGATE_LISTEN:-…}` in config.toml). Its log goes to a pipe: nothing but what the
    // docs' commands write appears in the directory.
    // What `cargo install --path .` leaves: `millgate` on PATH.
    let bin = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(BIN, bin.path().join("millgate")).expect("symlink");
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut service = MillgateProcess::default_config();
    service
        .env("PATH", &path)
        .env_remove("MILLGATE_DATA")
        .env_remove("MILLGATE_HELLO_TOKEN")
        .stderr_to_pipe();
    service.start().await;
    let dir = service.dir().to_path_buf();
    let (ingress, admin) = (
        service.ingress_addr().to_string(),
        service.admin_addr().to_string(),
    );
    // The docs read the admin token millgate made at its first start.
    assert!(
        dir.join("data/admin-token").exists(),
        "millgate run on the default config made no data/admin-token"
    );

    let mut session = Session {
        dir: dir.clone(),
        path,
        ingress,
        admin,
        exports: Vec::new(),
        job_id: None,
    };
    let mut ran = 0;
    for step in all_steps() {
        if run_elsewhere(&step.command) {
            continue;
        }
        session.step(&step).await;
        ran += 1;
    }
    assert!(ran >= 10, "only {ran} commands ran");

    let status = service.stop_within(Duration::from_secs(15)).await;
    assert!(
        status.success(),
        "millgate run: {status}\n{}",
        service.output()
    );
}

/// `scripts/build-deps.sh --check`, with only some of the tools on PATH.
fn build_deps_check(tools: &[&str]) -> (Option<i32>, String) {
    let bin = tempfile::tempdir().expect("tempdir");
    for tool in tools {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join(tool))
            .find(|p| p.exists());
        if let Some(found) = found {
            std::os::unix::fs::symlink(found, bin.path().join(tool)).expect("symlink");
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-deps.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg("--check")
        .env("PATH", bin.path())
        .stdin(Stdio::null())
        .output()
        .expect("bash runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const BASICS: &[&str] = &["bash", "id", "perl", "apt-get", "cargo", "sudo"];

#[test]
fn build_deps_passes_where_this_test_was_built() {
    let mut tools = BASICS.to_vec();
    tools.extend(["cc", "c++", "make"]);
    let (code, stderr) = build_deps_check(&tools);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn build_deps_names_what_is_missing_and_how_to_install_it() {
    // A machine with Rust and a C compiler only.
    let mut tools = BASICS.to_vec();
    tools.push("cc");
    let (code, stderr) = build_deps_check(&tools);
    assert_eq!(code, Some(1), "{stderr}");
    for words in ["C++ compiler", "make", "apt-get install", "build-essential"] {
        assert!(stderr.contains(words), "`{words}` missing from:\n{stderr}");
    }
    assert!(!stderr.contains("C compiler (cc)"), "{stderr}");
}
