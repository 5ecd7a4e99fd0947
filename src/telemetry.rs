//! Tracing setup: log lines on stderr, plus (feature `otlp`, on by default) the same spans
//! exported over OTLP/HTTP when `[telemetry] otlp_endpoint` is set, plus (feature `console`,
//! off by default) tokio-console's task instrumentation.
//!
//! Every destination is a layer of one `Registry`, so the spans the actors open
//! (`event{trigger, kind, event_id}` > `job{job_id}` > `run{runner, attempt}`) are the same in
//! the logs, in Jaeger/Tempo and in the dashboard.

use millgate_actors::config::TelemetryConfig;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

// Without `--cfg tokio_unstable`, tokio emits no task spans and tokio-console would show an
// empty list: fail the build with the fix instead.
#[cfg(all(feature = "console", not(tokio_unstable)))]
compile_error!(
    "the `console` feature needs tokio's unstable instrumentation: build with \
     RUSTFLAGS=\"--cfg tokio_unstable\" cargo build --features console"
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// `RUST_LOG`-style filtering (default `info`). One per layer: a global filter would also hide
/// tokio's `runtime.*` spans from tokio-console.
fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Colours only for a person at a terminal: a file, a pipe or journald gets plain text (and
/// a non-empty `NO_COLOR` turns them off, as everywhere).
fn colours() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn fmt_layer(format: LogFormat) -> BoxedLayer {
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colours());
    match format {
        LogFormat::Json => layer
            .json()
            .with_current_span(true)
            .with_filter(env_filter())
            .boxed(),
        LogFormat::Text => layer.with_filter(env_filter()).boxed(),
    }
}

/// Logs only (and tokio-console with that feature): for commands that export nothing.
pub fn init_tracing(format: LogFormat) {
    let _ = try_init(format, &TelemetryConfig::default());
}

/// Keeps the span exporter alive; [`TracingGuard::shutdown`] (or dropping it) flushes the
/// spans still batched, so the last events before an exit are not lost.
#[must_use = "dropping the guard shuts the span exporter down"]
pub struct TracingGuard {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl TracingGuard {
    /// Flushes and stops the exporter. Blocks up to the exporter's timeout; call it outside the
    /// tokio runtime (the exporter has its own thread and HTTP client).
    pub fn shutdown(mut self) {
        self.shutdown_inner();
    }

    fn shutdown_inner(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("telemetry: flushing spans at exit failed: {e}");
            }
        }
    }
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        self.shutdown_inner();
    }
}

/// Installs the global subscriber: stderr logs, the OTLP exporter when `telemetry` names an
/// endpoint, tokio-console with that feature. Errs when the exporter cannot be built or the
/// binary lacks the `otlp` feature the configuration asks for. Call it outside a tokio runtime.
pub fn try_init(format: LogFormat, telemetry: &TelemetryConfig) -> Result<TracingGuard, String> {
    // Only the `otlp` and `console` features push more layers.
    #[allow(unused_mut)]
    let mut layers: Vec<BoxedLayer> = vec![fmt_layer(format)];
    #[cfg(feature = "console")]
    layers.push(
        console_subscriber::ConsoleLayer::builder()
            .with_default_env()
            .spawn()
            .boxed(),
    );

    #[cfg(feature = "otlp")]
    let provider = match telemetry.traces_url() {
        Some(url) => {
            let (layer, provider) = otlp::layer(&url, &telemetry.service_name)?;
            layers.push(layer);
            Some(provider)
        }
        None => None,
    };
    #[cfg(not(feature = "otlp"))]
    if telemetry.otlp_endpoint.is_some() {
        return Err(
            "telemetry.otlp_endpoint is set but this millgate was built without the \
             `otlp` feature (rebuild with default features or `--features otlp`)"
                .into(),
        );
    }

    // A subscriber may already be installed (tests calling this twice): keep it.
    let _ = tracing_subscriber::registry().with(layers).try_init();
    Ok(TracingGuard {
        #[cfg(feature = "otlp")]
        provider,
    })
}

#[cfg(feature = "otlp")]
mod otlp {
    use super::{env_filter, BoxedLayer};
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::Resource;
    use tracing_subscriber::Layer;

    /// An OTLP/HTTP protobuf exporter behind the SDK's batch processor (its own thread; the
    /// delay between exports is `OTEL_BSP_SCHEDULE_DELAY`, 5 s by default).
    pub(super) fn layer(
        url: &str,
        service_name: &str,
    ) -> Result<(BoxedLayer, SdkTracerProvider), String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .build()
            .map_err(|e| format!("telemetry.otlp_endpoint: cannot export to {url}: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_resource(
                Resource::builder()
                    .with_service_name(service_name.to_string())
                    .build(),
            )
            .with_batch_exporter(exporter)
            .build();
        let tracer = provider.tracer("millgate");
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            // Log events inside a span become span events; keep them, they are the timeline.
            .with_filter(env_filter())
            .boxed();
        Ok((layer, provider))
    }
}
