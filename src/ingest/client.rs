//! What every Kafka client of the service shares (the consumer of
//! [`super::kafka`], the producer of [`crate::publish`], the admin client
//! of `create-topics`): its librdkafka settings, secrets included, and the
//! reporting of client-level errors. The clients themselves live with
//! their stages.
//!
//! **Settings.** `kafka.brokers`, then `[kafka.options]`, then
//! `[kafka.secret_options]`, whose values are read here at startup from a
//! file or an environment variable. A value read is held as a [`Secret`],
//! which never prints; a source that cannot be read is a [`ClientError`]
//! naming the property and the source, never the value.
//!
//! **Errors.** A client that cannot authenticate, or does not trust the
//! broker's certificate, or cannot reach it, reconnects and fails again
//! several times a second, and librdkafka reports every failure through the
//! client's error callback, its log callback and (the consumer) its message
//! queue. [`report_error`], [`report_log`] and [`report_consumer_error`]
//! sort each report into a kind
//! (`kafka_auth`, `kafka_tls`, or `kafka`), count it under
//! `attnwatch_errors_total{kind}` (the error reports; log lines are not
//! counted) and let through one line per kind (for `kafka`, per error code
//! or log facility) per [`crate::metrics::ERROR_LOG_EVERY`], with a hint
//! saying what to check and how many repeats were held back. The service
//! stays up and keeps retrying; it is not ready meanwhile, because no
//! partition gets assigned (`/readyz`).

use std::ffi::OsString;
use std::time::Instant;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{KafkaConfig, SecretSource};
use crate::metrics::Metrics;

/// Why the client settings could not be built (fatal, at startup).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A `[kafka.secret_options]` value could not be read.
    #[error(
        "kafka.secret_options.\"{property}\": cannot take its value from the {from}: {reason}"
    )]
    Secret {
        /// The librdkafka property.
        property: String,
        /// Where its value was to come from (file path or variable name).
        from: String,
        /// What went wrong (never the value).
        reason: String,
    },
}

/// A secret value: it never appears in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, to hand to librdkafka.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Read the value of `property` from `source`: the whole file, or the
/// variable looked up with `env`, without its trailing line breaks (`echo
/// secret > file` and `kubectl create secret --from-file` leave one). An
/// empty value is an error: librdkafka would only fail later, less clearly.
pub fn read_secret(
    property: &str,
    source: &SecretSource,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Secret, ClientError> {
    let fail = |reason: String| ClientError::Secret {
        property: property.to_string(),
        from: source.to_string(),
        reason,
    };
    let raw = match source {
        SecretSource::File(path) => {
            let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
            String::from_utf8(bytes).map_err(|_| fail("it is not UTF-8 text".into()))?
        }
        SecretSource::Env(var) => env(var)
            .ok_or_else(|| fail("the variable is not set".into()))?
            .into_string()
            .map_err(|_| fail("it is not UTF-8 text".into()))?,
    };
    let value = raw.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(fail("the value is empty".into()));
    }
    Ok(Secret(value.to_string()))
}

/// Every `[kafka.secret_options]` value, read from the process environment
/// and the file system.
pub fn secrets(cfg: &KafkaConfig) -> Result<Vec<(String, Secret)>, ClientError> {
    secrets_from(cfg, &|var| std::env::var_os(var))
}

fn secrets_from(
    cfg: &KafkaConfig,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Vec<(String, Secret)>, ClientError> {
    cfg.secret_options
        .iter()
        .map(|(property, source)| Ok((property.clone(), read_secret(property, source, env)?)))
        .collect()
}

/// Set the operator's properties on `c`: `[kafka.options]`, then the
/// `[kafka.secret_options]` values. Nothing is set when a secret cannot be
/// read.
pub fn apply_options(c: &mut ClientConfig, cfg: &KafkaConfig) -> Result<(), ClientError> {
    let secrets = secrets(cfg)?;
    for (k, v) in &cfg.options {
        c.set(k, v);
    }
    for (k, v) in &secrets {
        c.set(k, v.expose());
    }
    Ok(())
}

/// librdkafka settings shared by consumer, producer and admin client:
/// `bootstrap.servers`, then [`apply_options`].
pub fn client_config(cfg: &KafkaConfig) -> Result<ClientConfig, ClientError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    apply_options(&mut c, cfg)?;
    Ok(c)
}

/// The `attnwatch_errors_total` kind of a client error: `kafka_auth`
/// (SASL authentication failed), `kafka_tls` (the TLS handshake failed:
/// an untrusted or mismatched certificate, or TLS spoken to a plaintext
/// listener), else `kafka`. Decided by the error code when there is one,
/// else by librdkafka's wording.
pub fn error_kind(code: Option<RDKafkaErrorCode>, text: &str) -> &'static str {
    match code {
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
            return "kafka_auth"
        }
        Some(RDKafkaErrorCode::SSL) => return "kafka_tls",
        _ => {}
    }
    let text = text.to_ascii_lowercase();
    if text.contains("sasl authentication") || text.contains("authentication failed") {
        "kafka_auth"
    } else if text.contains("ssl handshake") || text.contains("certificate verify failed") {
        "kafka_tls"
    } else {
        "kafka"
    }
}

/// What an operator should check, by kind.
fn hint(kind: &str) -> &'static str {
    match kind {
        "kafka_auth" => {
            " (Kafka SASL authentication failed: check sasl.mechanism and sasl.username in \
             [kafka.options] and the password in [kafka.secret_options]; retrying)"
        }
        "kafka_tls" => {
            " (Kafka TLS handshake failed: check that ssl.ca.location in [kafka.options] names \
             the CA that signed the broker's certificate and that the certificate is for the \
             host in kafka.brokers; retrying)"
        }
        _ => "",
    }
}

/// The rate-limit key of a report: its kind, or for `kafka` what sets it
/// apart (an error code, a log facility).
fn key(kind: &'static str, detail: impl FnOnce() -> String) -> String {
    if kind == "kafka" {
        format!("kafka:{}", detail())
    } else {
        kind.to_string()
    }
}

/// Report an error of a Kafka `client` ("consumer", "producer"): from its
/// context's error callback (`reason` is librdkafka's text) or from the
/// consumer's queue (`reason` empty). Counted every time, logged at most
/// once per kind per interval ([`Metrics::error_limited`]).
pub fn report_error(metrics: &Metrics, client: &'static str, error: &KafkaError, reason: &str) {
    let code = error.rdkafka_error_code();
    let text = if reason.is_empty() {
        format!("{client}: {error}")
    } else {
        format!("{client}: {error}: {reason}")
    };
    let kind = error_kind(code, &text);
    let key = key(kind, || format!("{code:?}"));
    metrics.error_limited(kind, &key, &format_args!("{text}{}", hint(kind)));
}

/// Whether `code` is a connection failure: librdkafka reports those as
/// client error events, which reach the error callback (and, for the
/// consumer, its queue as well), and paces the reconnects behind them.
fn connection_failure(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::Resolve
            | C::Authentication
            | C::SaslAuthenticationFailed
            | C::SSL
    )
}

/// An error the consume loop got from the consumer's queue. Returns
/// whether the loop should back off before reading again.
///
/// A connection failure there is the queue's copy of an error event that
/// the consumer context's error callback has just reported (counted and
/// logged, with librdkafka's text): it is only debug-logged, and the loop
/// reads on at once. librdkafka paces its reconnects and so these events;
/// backing off on each would let them pile up in the queue for as long as
/// the failure lasts, and then hold back the messages behind them. Any
/// other error (a fetch error of a partition, say) is reported as by
/// [`report_error`], and the loop backs off.
pub fn report_consumer_error(metrics: &Metrics, error: &KafkaError) -> bool {
    if let KafkaError::MessageConsumption(code) = error {
        if connection_failure(*code) {
            tracing::debug!(error = %error, "consumer queue: connection failure (reported by the error callback)");
            return false;
        }
    }
    report_error(metrics, "consumer", error, "");
    true
}

/// A log line of librdkafka (the client context's log callback), at its
/// own level under the `librdkafka` target, at most one per kind (for
/// `kafka`, per facility) per interval; debug lines pass as they are.
/// Authentication and TLS failures share their rate limit with
/// [`report_error`], which reports the same failures again: one line per
/// interval tells the operator, and the counter counts.
pub fn report_log(metrics: &Metrics, level: RDKafkaLogLevel, fac: &str, message: &str) {
    if matches!(level, RDKafkaLogLevel::Debug) {
        tracing::debug!(target: "librdkafka", "{fac} {message}");
        return;
    }
    let kind = error_kind(None, message);
    let key = key(kind, || format!("log:{fac}"));
    let Some(suppressed) = metrics.error_log.admit(&key, Instant::now()) else {
        return;
    };
    let hint = hint(kind);
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", kind, suppressed, "{fac} {message}{hint}")
        }
        RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "librdkafka", kind, suppressed, "{fac} {message}{hint}")
        }
        _ => tracing::info!(target: "librdkafka", kind, suppressed, "{fac} {message}{hint}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::PathBuf;

    fn kafka(toml: &str) -> KafkaConfig {
        Config::from_toml_and_env(toml, Vec::<(String, String)>::new())
            .unwrap()
            .kafka
    }

    /// A file in a directory of its own; [`remove`] removes both.
    fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "attnwatch-client-test-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn remove(path: &std::path::Path) {
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn secrets_come_from_files_and_variables_without_trailing_line_breaks() {
        let path = temp_file("ok", b"s3cret-from-file\n");
        let cfg = kafka(&format!(
            "[kafka.options]\n\"security.protocol\" = \"SASL_SSL\"\n\"ssl.ca.location\" = \"/ca.pem\"\n\
             [kafka.secret_options]\n\"sasl.password\" = {{ file = {:?} }}\n\
             \"sasl.username\" = {{ env = \"TEST_KAFKA_USER\" }}\n",
            path.display().to_string()
        ));
        let env = |v: &str| (v == "TEST_KAFKA_USER").then(|| OsString::from("svc-user\r\n"));
        let got = secrets_from(&cfg, &env).unwrap();
        assert_eq!(
            got.iter()
                .map(|(k, v)| (k.as_str(), v.expose()))
                .collect::<Vec<_>>(),
            [
                ("sasl.password", "s3cret-from-file"),
                ("sasl.username", "svc-user")
            ]
        );
        // Debug output (a config dump, an error) never shows a value.
        let debug = format!("{got:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("svc-user"),
            "{debug}"
        );
        remove(&path);
    }

    #[test]
    fn an_unreadable_source_names_the_property_and_the_source() {
        let cfg = kafka(
            "[kafka.secret_options]\n\"sasl.password\" = { file = \"/nonexistent/kafka-password\" }\n",
        );
        let e = secrets_from(&cfg, &|_| None).unwrap_err().to_string();
        assert!(
            e.contains("kafka.secret_options.\"sasl.password\"")
                && e.contains("file /nonexistent/kafka-password")
                && e.contains("No such file"),
            "{e}"
        );
        let cfg = kafka("[kafka.secret_options]\n\"sasl.password\" = { env = \"KAFKA_PW\" }\n");
        let e = secrets_from(&cfg, &|_| None).unwrap_err().to_string();
        assert!(
            e.contains("\"sasl.password\"")
                && e.contains("environment variable KAFKA_PW")
                && e.contains("not set"),
            "{e}"
        );
        let e = secrets_from(&cfg, &|_| Some("\n".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
        let path = temp_file("binary", b"\xff\xfe-not-text");
        let cfg = kafka(&format!(
            "[kafka.secret_options]\n\"ssl.key.password\" = {{ file = {:?} }}\n",
            path.display().to_string()
        ));
        let e = secrets_from(&cfg, &|_| None).unwrap_err().to_string();
        assert!(e.contains("UTF-8") && !e.contains("not-text"), "{e}");
        remove(&path);
    }

    #[test]
    fn client_config_sets_brokers_options_then_secrets() {
        let path = temp_file("config", b"pw");
        let cfg = kafka(&format!(
            "[kafka]\nbrokers = \"b:9093\"\n[kafka.options]\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
             [kafka.secret_options]\n\"sasl.password\" = {{ file = {:?} }}\n",
            path.display().to_string()
        ));
        let c = client_config(&cfg).unwrap();
        assert_eq!(c.get("bootstrap.servers"), Some("b:9093"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.password"), Some("pw"));
        assert!(!format!("{c:?}").contains("\"pw\""));
        remove(&path);
    }

    #[test]
    fn errors_are_sorted_by_code_then_by_wording() {
        use RDKafkaErrorCode as C;
        assert_eq!(error_kind(Some(C::Authentication), ""), "kafka_auth");
        assert_eq!(
            error_kind(Some(C::SaslAuthenticationFailed), ""),
            "kafka_auth"
        );
        assert_eq!(error_kind(Some(C::SSL), ""), "kafka_tls");
        assert_eq!(
            error_kind(
                None,
                "sasl_ssl://127.0.0.1:19602/bootstrap: SASL authentication error: Authentication \
                 failed during authentication due to invalid credentials with SASL mechanism \
                 SCRAM-SHA-512 (after 311ms in state AUTH_REQ)"
            ),
            "kafka_auth"
        );
        assert_eq!(
            error_kind(
                Some(C::BrokerTransportFailure),
                "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed"
            ),
            "kafka_tls"
        );
        assert_eq!(
            error_kind(Some(C::AllBrokersDown), "1/1 brokers are down"),
            "kafka"
        );
    }

    #[test]
    fn a_flood_of_reports_is_counted_in_full_and_logged_once_per_kind() {
        let m = Metrics::new().unwrap();
        let auth = KafkaError::Global(RDKafkaErrorCode::Authentication);
        for _ in 0..50 {
            report_log(
                &m,
                RDKafkaLogLevel::Error,
                "FAIL",
                "SASL authentication error: x",
            );
            report_error(&m, "consumer", &auth, "SASL authentication error: x");
            report_error(&m, "producer", &auth, "SASL authentication error: x");
        }
        assert_eq!(m.errors.with_label_values(&["kafka_auth"]).get(), 100);
        assert_eq!(m.errors.with_label_values(&["kafka"]).get(), 0);
        // The first report went through; the next 149 are held back.
        assert_eq!(m.error_log.admit("kafka_auth", Instant::now()), None);
        // The consume loop reads on after a connection failure, which the
        // error callback has counted already; it backs off after others.
        assert!(!report_consumer_error(
            &m,
            &KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure)
        ));
        assert!(report_consumer_error(
            &m,
            &KafkaError::MessageConsumption(RDKafkaErrorCode::TopicAuthorizationFailed)
        ));
        assert_eq!(m.errors.with_label_values(&["kafka"]).get(), 1);
        // Other kinds are not held back by it.
        assert_eq!(m.error_log.admit("kafka_tls", Instant::now()), Some(0));
    }
}
