//! Credentials are never shown by the admin API: a trigger's definition is answered with its
//! secrets replaced by `***` (the add and replace answers, `/api/triggers`, the dashboard).

use serde_json::{json, Value};

pub const SECRET: &str = "***";

/// Keys of the trigger definitions (`auth.token`, MQTT `password`, Kafka `security.password`,
/// NATS `seed`...) whose values are credentials.
const SECRET_KEYS: &[&str] = &[
    "token",
    "password",
    "secret",
    "key_password",
    "seed",
    "jwt",
    "secret_access_key",
];
const SECRET_SUFFIXES: &[&str] = &["_token", "_password", "_secret"];

/// Maps whose keys the user chooses (Kafka `properties`, a schedule's `args`): there any key
/// that names a secret is one, and everything below it is hidden.
const FREE_FORM: &[&str] = &["properties", "args", "headers", "env"];
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "key",
    "token",
    "credential",
    "authorization",
    "cookie",
    "jwt",
];

#[derive(Clone, Copy, PartialEq)]
enum Scope {
    /// Keys millgate defines.
    Config,
    /// Inside an `auth` table, where `key` is the API key.
    Auth,
    /// Inside a map of the user's own keys.
    FreeForm,
}

/// Replaces credentials anywhere in a trigger's definition, arrays included.
pub fn redact(v: &mut Value) {
    redact_in(v, Scope::Config);
}

fn redact_in(v: &mut Value, scope: Scope) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if child.is_null() {
                    continue;
                }
                if names_a_secret(k, scope) && (scope == Scope::FreeForm || !child.is_object()) {
                    *child = json!(SECRET);
                    continue;
                }
                let inner = match scope {
                    Scope::FreeForm => Scope::FreeForm,
                    _ if FREE_FORM.contains(&k.as_str()) => Scope::FreeForm,
                    _ if k == "auth" => Scope::Auth,
                    _ => Scope::Config,
                };
                redact_in(child, inner);
            }
        }
        Value::Array(items) => {
            for item in items {
                redact_in(item, scope);
            }
        }
        _ => {}
    }
}

fn names_a_secret(key: &str, scope: Scope) -> bool {
    match scope {
        Scope::FreeForm => {
            let key = key.to_ascii_lowercase();
            SECRET_WORDS.iter().any(|w| key.contains(w))
        }
        Scope::Auth | Scope::Config => {
            SECRET_KEYS.contains(&key)
                || SECRET_SUFFIXES.iter().any(|s| key.ends_with(s))
                || (scope == Scope::Auth && key == "key")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_properties_that_name_a_secret_are_hidden() {
        let mut v = json!({
            "name": "k", "kind": "kafka", "order_by": "key",
            "security": {"protocol": "SASL_SSL", "username": "u", "password": "p",
                "key_file": "/k.pem", "key_password": "kp"},
            "properties": {
                "ssl.keystore.password": "ks",
                "ssl.key.pem": "-----BEGIN PRIVATE KEY-----",
                "sasl.oauthbearer.client.secret": "cs",
                "sasl.oauthbearer.token.endpoint.url": "https://idp/token",
                "SSL.Truststore.Credentials": "c",
                "fetch.max.bytes": "1048576",
                "client.id": "mine"
            }
        });
        redact(&mut v);
        let p = &v["properties"];
        for k in [
            "ssl.keystore.password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.token.endpoint.url",
            "SSL.Truststore.Credentials",
        ] {
            assert_eq!(p[k], SECRET, "{k}: {v}");
        }
        assert_eq!(p["fetch.max.bytes"], "1048576");
        assert_eq!(p["client.id"], "mine");
        assert_eq!(v["security"]["password"], SECRET);
        assert_eq!(v["security"]["key_password"], SECRET);
        assert_eq!(v["security"]["username"], "u");
        assert_eq!(
            v["security"]["key_file"], "/k.pem",
            "a path is not a secret"
        );
        assert_eq!(v["order_by"], "key", "values are never taken for keys");
    }

    #[test]
    fn arrays_and_nested_args_are_searched() {
        let mut v = json!({
            "name": "s", "kind": "schedule",
            "args": {"list": [{"password": "in-a-list"}, {"user": "ada"}],
                     "service": {"api_token": "t", "url": "https://x"},
                     "credentials": {"user": "u", "pass": "p"}},
            "servers": [{"password": "structured-in-array"}],
            "auth": {"type": "api_key", "header": "X-Api-Key", "key": "k"},
            "preprocessor": {"jq": "."}
        });
        redact(&mut v);
        assert_eq!(v["args"]["list"][0]["password"], SECRET, "{v}");
        assert_eq!(v["args"]["list"][1]["user"], "ada");
        assert_eq!(v["args"]["service"]["api_token"], SECRET);
        assert_eq!(v["args"]["service"]["url"], "https://x");
        assert_eq!(v["args"]["credentials"], SECRET, "a secret's whole value");
        assert_eq!(v["servers"][0]["password"], SECRET);
        assert_eq!(v["auth"]["key"], SECRET);
        assert_eq!(v["auth"]["header"], "X-Api-Key");
        assert_eq!(v["auth"]["type"], "api_key");
        assert_eq!(v["preprocessor"]["jq"], ".");
    }

    #[test]
    fn sqs_keys_are_hidden_and_the_key_id_shown() {
        let mut v = json!({
            "name": "q", "kind": "sqs", "queue_url": "https://sqs/1/q",
            "auth": {"access_key_id": "AKIA1", "secret_access_key": "s", "session_token": "t"}
        });
        redact(&mut v);
        assert_eq!(v["auth"]["secret_access_key"], SECRET, "{v}");
        assert_eq!(v["auth"]["session_token"], SECRET, "{v}");
        assert_eq!(v["auth"]["access_key_id"], "AKIA1");
        assert_eq!(v["queue_url"], "https://sqs/1/q");
    }
}
