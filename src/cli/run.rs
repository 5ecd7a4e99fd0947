//! `millgate run`: loads the configuration, takes the store, sets up tracing, and runs the
//! service until SIGINT/SIGTERM (exit 0) or until its supervision tree stops (exit 2).

use std::path::PathBuf;
use std::process::ExitCode;

use millgate::app::App;
use millgate::{warnings, LogFormat};
use millgate_actors::Config;

use crate::store_lock;

/// Runs `millgate run`.
pub fn run(config: Option<&PathBuf>, log_format: LogFormat) -> ExitCode {
    let c = match super::load(config) {
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
    let tracing_guard = match millgate::telemetry::try_init(log_format, &c.telemetry) {
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
    let code = runtime.block_on(serve(c));
    drop(runtime);
    // Flush the spans still batched (the last events before the signal).
    tracing_guard.shutdown();
    code
}

async fn serve(config: Config) -> ExitCode {
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
