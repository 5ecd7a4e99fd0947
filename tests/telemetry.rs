//! OpenTelemetry export through the real binary: the spans of one webhook event reach an OTLP/HTTP
//! endpoint (a tiny axum server standing in for Jaeger/Tempo), and a bad endpoint fails `check`.

mod common;

use std::process::Command;

/// `[telemetry]` with `telemetry`, and a webhook trigger.
fn body(telemetry: &str) -> String {
    format!(
        r#"
[telemetry]
{telemetry}

[runnables.echo]
kind = "echo"

[[triggers]]
name = "otel-hook"
kind = "webhook"
runnable = "echo"
token = "tk"
"#
    )
}

#[test]
fn invalid_otlp_endpoint_fails_check() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    // `[server]` and `[store]` first: the line number below counts them.
    let text = format!(
        "\n[server]\nlisten = \"127.0.0.1:0\"\n\n[store]\npath = \"{}/data\"\n{}",
        dir.path().display(),
        body(r#"otlp_endpoint = "not a url""#)
    );
    std::fs::write(&config, text).expect("write config");
    let out = Command::new(common::binary::BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("millgate check runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("telemetry.otlp_endpoint"), "{stderr}");
    assert!(stderr.contains("not a url"), "{stderr}");
    // The line of the key, like every other configuration error.
    assert!(stderr.contains("config.toml:9:"), "{stderr}");
}

#[cfg(feature = "otlp")]
mod otlp {
    use super::*;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use common::binary::MillgateProcess;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message;

    type Bodies = Arc<Mutex<Vec<Vec<u8>>>>;

    /// An OTLP/HTTP traces receiver: records every `POST /v1/traces` body, answers an empty
    /// (valid) protobuf `ExportTraceServiceResponse`.
    async fn collector() -> (u16, Bodies) {
        let bodies: Bodies = Arc::default();
        let seen = bodies.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(body.to_vec());
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (port, bodies)
    }

    fn attr(span: &Span, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => Some(s.clone()),
                AnyValue::IntValue(i) => Some(i.to_string()),
                other => Some(format!("{other:?}")),
            })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn webhook_spans_reach_the_otlp_endpoint() {
        let (otlp_port, bodies) = collector().await;
        let mut mg = MillgateProcess::new(&body(&format!(
            "otlp_endpoint = \"http://127.0.0.1:{otlp_port}\"\nservice_name = \"millgate-test\""
        )));
        mg.env("RUST_LOG", "info")
            // A batch delay longer than the test: the spans can only arrive through the flush
            // at shutdown, which is what this test checks.
            .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        mg.start().await;
        let base = mg.ingress.clone();
        let client = reqwest::Client::new();

        let resp = client
            .post(format!("{base}/hooks/otel-hook"))
            .bearer_auth("tk")
            .json(&serde_json::json!({"hello": "otel"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let body: serde_json::Value = resp.json().await.unwrap();
        let job_id = body["job_id"].as_str().expect("job_id").to_string();

        // The job runs to the end, so all three spans (event > job > run) are closed.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let view: serde_json::Value = client
                .get(format!("{base}/jobs/{job_id}"))
                .bearer_auth("tk")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if view["status"] == "succeeded" {
                break;
            }
            assert!(Instant::now() < deadline, "job did not finish: {view}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // SIGTERM: a clean stop, which must flush the batched spans before exiting.
        let status = mg.stop().await;
        let log_text = || mg.output();
        assert!(status.success(), "exit {status:?}:\n{}", log_text());

        let bodies = bodies.lock().unwrap().clone();
        assert!(
            !bodies.is_empty(),
            "no OTLP export received:\n{}",
            log_text()
        );
        // Protobuf carries strings verbatim: the raw bytes name the trigger and the spans.
        let raw: Vec<u8> = bodies.concat();
        for needle in ["otel-hook", "event", "job", "millgate-test"] {
            assert!(
                raw.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "`{needle}` not in the exports"
            );
        }

        // Decoded: the service name, and one trace event > job > run for this job.
        let mut spans: Vec<Span> = Vec::new();
        let mut services = Vec::new();
        for b in &bodies {
            let req = ExportTraceServiceRequest::decode(b.as_slice()).expect("valid OTLP protobuf");
            for rs in req.resource_spans {
                if let Some(r) = &rs.resource {
                    services.extend(
                        r.attributes
                            .iter()
                            .filter(|kv| kv.key == "service.name")
                            .map(|kv| format!("{:?}", kv.value)),
                    );
                }
                for ss in rs.scope_spans {
                    spans.extend(ss.spans);
                }
            }
        }
        assert!(
            services.iter().any(|s| s.contains("millgate-test")),
            "{services:?}"
        );
        let by_name: HashMap<&str, Vec<&Span>> = spans.iter().fold(HashMap::new(), |mut m, s| {
            m.entry(s.name.as_str()).or_default().push(s);
            m
        });
        let names: Vec<&str> = by_name.keys().copied().collect();
        let event = by_name
            .get("event")
            .and_then(|v| {
                v.iter()
                    .find(|s| attr(s, "trigger").as_deref() == Some("otel-hook"))
            })
            .unwrap_or_else(|| panic!("no `event` span for the trigger; spans: {names:?}"));
        assert!(attr(event, "kind").is_some(), "event span lacks `kind`");
        assert!(
            attr(event, "event_id").is_some(),
            "event span lacks `event_id`"
        );
        let job = by_name
            .get("job")
            .and_then(|v| {
                v.iter()
                    .find(|s| attr(s, "job_id").as_deref() == Some(job_id.as_str()))
            })
            .unwrap_or_else(|| panic!("no `job` span for {job_id}; spans: {names:?}"));
        assert_eq!(job.trace_id, event.trace_id, "job is in the event's trace");
        assert_eq!(job.parent_span_id, event.span_id, "job is a child of event");
        let run = by_name
            .get("run")
            .and_then(|v| v.iter().find(|s| s.parent_span_id == job.span_id))
            .unwrap_or_else(|| panic!("no `run` span under the job; spans: {names:?}"));
        assert_eq!(attr(run, "attempt").as_deref(), Some("1"));
        assert!(attr(run, "runner").is_some(), "run span lacks `runner`");
    }
}
