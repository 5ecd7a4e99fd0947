//! `millgate run | check | triggers | jobs`: the service's command line. `triggers` and `jobs`
//! are clients of the admin API (see `cli.rs` and docs/cli.md).

mod cli;
mod store_lock;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use millgate::app::App;
use millgate::{load_file, load_str, warnings, LogFormat, DEFAULT_CONFIG};
use millgate_actors::preprocess::jq_worker;
use millgate_actors::Config;

#[derive(Parser)]
#[command(
    name = "millgate",
    version,
    about = "An event router: external events in, reliable jobs out."
)]
struct Cli {
    /// Log format on stderr (filter with RUST_LOG, e.g. RUST_LOG=millgate=debug).
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Run {
        /// Configuration file; without it, the embedded default configuration is used.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration and list the triggers and runnables it defines.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Manage the triggers of a running millgate (through its admin API).
    Triggers(cli::TriggersArgs),
    /// Inspect and replay the jobs of a running millgate (through its admin API).
    Jobs(cli::JobsArgs),
    /// Read or replace the saved state of a schedule or poll trigger (through its admin API).
    State(cli::StateArgs),
}

fn load(path: &Option<PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => load_file(p).map_err(|e| e.to_string()),
        None => load_str(DEFAULT_CONFIG, "<embedded config.toml>", |k| {
            std::env::var(k).ok()
        })
        .map_err(|e| e.to_string()),
    }
}

fn main() -> ExitCode {
    // millgate starts copies of itself to run jq filters in (never a user's command).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(jq_worker::WORKER_ARG) {
        let code = jq_worker::main(&args[2..]);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Triggers(args) => cli::triggers(args),
        Command::Jobs(args) => cli::jobs(args),
        Command::State(args) => cli::state(args),
        Command::Check { config } => match load(&config) {
            Ok(c) => {
                print_summary(&c);
                for w in warnings(&c) {
                    eprintln!("warning: {w}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Run { config } => {
            let c = match load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            if let Some(message) = store_lock::held_by_another(&c.store.path) {
                eprintln!("{message}");
                return ExitCode::from(1);
            }
            // After loading: the exporter is built from `[telemetry]`. Before the runtime: the
            // exporter's blocking HTTP client must not be created or dropped inside it.
            let tracing_guard = match millgate::telemetry::try_init(cli.log_format, &c.telemetry) {
                Ok(g) => g,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            for w in warnings(&c) {
                tracing::warn!("{w}");
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the tokio runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            let code = runtime.block_on(run(c));
            drop(runtime);
            // Flush the spans still batched (the last events before the signal).
            tracing_guard.shutdown();
            code
        }
    }
}

async fn run(config: Config) -> ExitCode {
    let mut app = match App::start(config).await {
        Ok(a) => a,
        Err(e) => {
            // Once: the log line goes to stderr as well.
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    };
    let terminate = async {
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        }
        #[cfg(not(unix))]
        std::future::pending::<()>().await
    };
    let code = tokio::select! {
        _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted; stopping"); ExitCode::SUCCESS }
        _ = terminate => { tracing::info!("terminated; stopping"); ExitCode::SUCCESS }
        _ = app.stopped() => { tracing::error!("supervision tree stopped"); ExitCode::from(2) }
    };
    app.stop().await;
    code
}

fn print_summary(c: &Config) {
    println!(
        "listen {}  store {}",
        c.server.listen,
        c.store.path.display()
    );
    println!("runnables:");
    for (name, r) in &c.runnables {
        let what = match (&r.command, &r.url) {
            (Some(cmd), _) => format!("command {}", cmd.join(" ")),
            (_, Some(url)) => format!("http POST {url}"),
            _ => "echo (returns its args)".into(),
        };
        let limit = r
            .concurrency
            .map(|n| format!(", concurrency {n}"))
            .unwrap_or_default();
        println!("  {name}: {what} (timeout {:?}{limit})", r.timeout);
    }
    println!("triggers:");
    for t in &c.triggers {
        let mode = t.mode().map(|m| format!(", {m:?}")).unwrap_or_default();
        let endpoint = t.endpoint();
        let pre = match &t.common.preprocessor {
            Some(p) if p.jq.is_some() => " jq",
            Some(_) => " command",
            None => "",
        };
        println!(
            "  {} [{}{}{}{}] {endpoint} -> {}",
            t.common.name,
            t.kind_label(),
            mode,
            pre,
            if t.common.enabled { "" } else { ", disabled" },
            t.common.runnable
        );
    }
}
