//! The librdkafka linked in (compiled from source with OpenSSL, zlib and zstd, see
//! actors/Cargo.toml) has what Kafka triggers promise: TLS, SASL PLAIN / SCRAM / OAUTHBEARER and
//! every compression codec; and a TLS trigger without `ca_file` trusts the system's CA bundle
//! although the compiled-in OpenSSL looks elsewhere by default.
#![cfg(feature = "kafka")]

use std::sync::Mutex;
use std::time::{Duration, Instant};

use millgate_actors::triggers::kafka::KafkaConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

#[test]
fn builtin_features_cover_tls_sasl_and_compression() {
    let native = rdkafka::ClientConfig::new()
        .create_native_config()
        .expect("librdkafka configuration");
    let features = native.get("builtin.features").expect("builtin.features");
    let features: Vec<&str> = features.split(',').collect();
    for wanted in [
        "ssl",
        "sasl_plain",
        "sasl_scram",
        "sasl_oauthbearer",
        "gzip",
        "snappy",
        "lz4",
        "zstd",
    ] {
        assert!(
            features.contains(&wanted),
            "librdkafka lacks `{wanted}`: {features:?}"
        );
    }
}

/// Collects librdkafka's log lines.
#[derive(Default)]
struct Logs(Mutex<Vec<String>>);

impl ClientContext for Logs {
    fn log(&self, _level: RDKafkaLogLevel, fac: &str, line: &str) {
        if let Ok(mut l) = self.0.lock() {
            l.push(format!("{fac}: {line}"));
        }
    }
}
impl ConsumerContext for Logs {}

/// The CA certificates librdkafka loads for a trigger's TLS connections (its `CACERTS` /
/// `SSL` debug lines), for a `security` table.
fn ca_log(security: serde_json::Value) -> Vec<String> {
    let config: KafkaConfig = serde_json::from_value(serde_json::json!({
        "brokers": ["127.0.0.1:1"],
        "topics": ["t"],
        "properties": {"debug": "security"},
        "security": security,
    }))
    .expect("kafka config");
    let consumer: BaseConsumer<Logs> = config
        .client_config("tls-test")
        .create_with_context(Logs::default())
        .expect("the consumer is created (its TLS context too)");
    // Log lines are delivered through the consumer's queue: serve it until the TLS context's
    // lines have come (it is set up when the consumer is created).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = consumer.poll(Duration::from_millis(100));
        let lines = consumer.context().0.lock().expect("logs").clone();
        let done = lines.iter().any(|l| l.contains("CA certificate"));
        if done || Instant::now() > deadline {
            return lines
                .into_iter()
                .filter(|l| l.contains("CA certificate"))
                .collect();
        }
    }
}

#[test]
fn tls_without_ca_file_uses_the_system_ca_bundle() {
    // OpenSSL's own variables would point it at a bundle anyway: this is about their absence,
    // as on a plain installation.
    std::env::remove_var("SSL_CERT_FILE");
    std::env::remove_var("SSL_CERT_DIR");
    let lines = ca_log(serde_json::json!({"protocol": "SSL"}));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Setting default CA certificate location")),
        "librdkafka did not look for the system's CA bundle: {lines:?}"
    );

    // With `ca_file`, that file and nothing else.
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, TEST_CA).expect("write ca.pem");
    let lines = ca_log(serde_json::json!({
        "protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "username": "u",
        "password": "p",
        "ca_file": ca,
    }));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Loading CA certificate(s) from file")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("Setting default CA")),
        "{lines:?}"
    );
}

/// A self-signed CA certificate (nothing connects: it only has to load).
const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBjTCCATOgAwIBAgIUMb4b4hBug87OsvFoGZNO3HkczWgwCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQbWlsbGdhdGUtdGVzdC1jYTAgFw0yNjEyMDMxMzQ5NDJaGA8y
MTI2MTEwOTEzNDk0MlowGzEZMBcGA1UEAwwQbWlsbGdhdGUtdGVzdC1jYTBZMBMG
ByqGSM49AgEGCCqGSM49AwEHA0IABMwpY9iu3rmrMwoX0NyDqSBsb2omtkqLMNHZ
dPwVSHsWQSP0ZMy9GQ/xC3Lqqn/6AShmHi6+NC7sPd01ty0+Un6jUzBRMB0GA1Ud
DgQWBBQzbhDrK0/C2x1fiLDSOMGRMJEQ+jAfBgNVHSMEGDAWgBQzbhDrK0/C2x1f
iLDSOMGRMJEQ+jAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIQDO
LSGdzw5Qim4CfQjhWtnBvzeyoox9mzhlnTdrLsawSwIgaocaXeTc3DyTa/ftu+2/
++uuxgEgzHvM60a3Zfw0yak=
-----END CERTIFICATE-----
";
