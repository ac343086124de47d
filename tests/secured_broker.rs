//! attnwatch against the broker's SASL_SSL listener (SCRAM-SHA-512 over
//! TLS, started by `scripts/kafka`; its address, CA and user come from the
//! `KAFKA_SASL_*` variables `scripts/test` exports).
//!
//! The service runs as its own process (the binary, with a config file),
//! so that its log is what an operator would read:
//! - with the right password (read from a file) and the CA, it consumes
//!   and publishes scores over SASL_SSL;
//! - with a wrong password (read from an environment variable), or a CA
//!   that did not sign the broker's certificate, it stays up and alive, is
//!   never ready, counts the failures under `attnwatch_errors_total{kind}`
//!   and logs at most one line about them per 10 s;
//! - a secret that cannot be read stops startup with an error naming the
//!   property and the source, and no secret value is ever printed.
//!
//! Topics and groups are random; every wait is a bounded poll.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// How long a misconfigured service is watched after its first failure.
const WATCH: Duration = Duration::from_secs(15);
/// The service logs a repeated error at most once per this.
const LOG_EVERY_SECS: u64 = 10;

/// A config file in a directory of its own, removed (with the directory)
/// when dropped, also when a test fails.
struct ConfigFile(PathBuf);

impl std::ops::Deref for ConfigFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A config file for the service: the SASL_SSL listener, `names`' topics,
/// the committed model, HTTP on an ephemeral port; `ca` as
/// `ssl.ca.location` and `password` (a TOML inline table: `{ file = ... }`
/// or `{ env = ... }`) as the `sasl.password` secret option.
fn config_file(names: &Names, sasl: &Sasl, ca: &Path, password: toml::Table) -> ConfigFile {
    config_file_in(names, sasl, ca, password, false)
}

/// [`config_file`], in exactly_once mode when `exactly_once` (with a 10 s
/// transaction timeout: initialising transactions is retried past it).
fn config_file_in(
    names: &Names,
    sasl: &Sasl,
    ca: &Path,
    password: toml::Table,
    exactly_once: bool,
) -> ConfigFile {
    let table = |pairs: Vec<(&str, toml::Value)>| -> toml::Value {
        toml::Value::Table(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    };
    let s = |v: &str| toml::Value::String(v.to_string());
    let config = table(vec![
        (
            "kafka",
            table(vec![
                ("brokers", s(&sasl.bootstrap)),
                ("group_id", s(&names.group)),
                ("input_topic", s(&names.input)),
                ("output_topic", s(&names.output)),
                ("dead_letter_topic", s(&names.dlq)),
                ("commit_interval", s("500ms")),
                (
                    "delivery",
                    s(if exactly_once {
                        "exactly_once"
                    } else {
                        "at_least_once"
                    }),
                ),
                ("transaction_timeout", s("10s")),
                (
                    "options",
                    table(vec![
                        ("security.protocol", s("SASL_SSL")),
                        ("sasl.mechanism", s("SCRAM-SHA-512")),
                        ("sasl.username", s(&sasl.username)),
                        ("ssl.ca.location", s(ca.to_str().unwrap())),
                    ]),
                ),
                (
                    "secret_options",
                    table(vec![("sasl.password", toml::Value::Table(password))]),
                ),
            ]),
        ),
        (
            "model",
            table(vec![
                ("path", s(model_path().to_str().unwrap())),
                ("onnxruntime_library", s(ort_lib().to_str().unwrap())),
            ]),
        ),
        ("server", table(vec![("listen", s("127.0.0.1:0"))])),
        ("shutdown", table(vec![("grace", s("20s"))])),
    ]);
    let dir = std::env::temp_dir().join(unique("attnwatch-secured"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("attnwatch.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    ConfigFile(path)
}

fn source(kind: &str, value: &str) -> toml::Table {
    [(kind.to_string(), toml::Value::String(value.to_string()))]
        .into_iter()
        .collect()
}

/// The service as a child process, with its log (stderr) collected.
struct Service {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    started: Instant,
    http: SocketAddr,
}

impl Service {
    /// Start `attnwatch run --config config` with `env` added, and wait
    /// until its HTTP server answers.
    fn start(config: &Path, env: &[(&str, &str)]) -> Service {
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_attnwatch"))
            .args(["run", "--config"])
            .arg(config)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let mut service = Service {
            child,
            log,
            reader: Some(reader),
            started,
            http: "127.0.0.1:0".parse().unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let addr = service.lines().iter().find_map(|l| {
                l.contains("serving /metrics")
                    .then(|| l.split("http_addr=").nth(1))
                    .flatten()
                    .and_then(|a| a.split_whitespace().next())
                    .map(|a| a.parse::<SocketAddr>().unwrap())
            });
            if let Some(addr) = addr {
                service.http = addr;
                return service;
            }
            assert!(
                service.alive(),
                "attnwatch exited during startup:\n{}",
                service.lines().join("\n")
            );
            assert!(
                Instant::now() < deadline,
                "attnwatch did not start serving HTTP:\n{}",
                service.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    async fn metric(&self, name_and_labels: &str) -> f64 {
        let (_, text) = http_get(self.http, "/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name_and_labels} ")))
            .unwrap_or_else(|| panic!("{name_and_labels} missing"))
            .trim()
            .parse()
            .unwrap()
    }

    /// SIGTERM, then wait (bounded) for a clean exit; the whole log.
    fn stop(mut self) -> Vec<String> {
        let term = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
        let deadline = Instant::now() + Duration::from_secs(40);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "attnwatch did not stop on SIGTERM:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        let lines = self.lines();
        assert!(
            status.success(),
            "attnwatch exited with {status}:\n{}",
            lines.join("\n")
        );
        lines
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // A failed assertion must not leave the service running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mentions(line: &str, words: &[&str]) -> bool {
    let line = line.to_ascii_lowercase();
    words.iter().any(|w| line.contains(w))
}

const AUTH_WORDS: &[&str] = &["authentication"];
const TLS_WORDS: &[&str] = &[
    "certificate verify failed",
    "ssl handshake",
    "tls handshake",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_password_file_and_the_ca_it_consumes_and_publishes_over_sasl_ssl() {
    let sasl = sasl();
    let password = std::fs::read_to_string(&sasl.password_file).unwrap();
    let names = Names::new("sasl-ok");
    create_topics(&names, 1).await;
    let config = config_file(
        &names,
        &sasl,
        &sasl.ca,
        source("file", sasl.password_file.to_str().unwrap()),
    );
    let service = Service::start(&config, &[]);

    let first = contract().min_points;
    let n = first + 20;
    let p = producer();
    for (ts, v) in series(n, usize::MAX, 7) {
        produce(&p, &names.input, "sasl-1", &sample("sasl-1", ts, v)).await;
    }
    // Every point from the min_points-th on but the newest (its bucket is
    // still open) is scored and published through the SASL_SSL listener.
    let out = reader(&names.output);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let want = n - first - 1;
    assert!(
        read_until(&out, &mut got, deadline, |g| g.len() >= want).await,
        "{} of {want} scores; log:\n{}",
        got.len(),
        service.lines().join("\n")
    );
    assert!(got.iter().all(|m| m.key.as_deref() == Some("sasl-1")));
    assert!(got.iter().all(|m| m.json()["score"].is_number()));

    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(service.http, "/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for kind in ["kafka_auth", "kafka_tls"] {
        let n = service
            .metric(&format!("attnwatch_errors_total{{kind=\"{kind}\"}}"))
            .await;
        assert_eq!(n, 0.0, "{kind}");
    }
    let log = service.stop();
    assert!(
        !log.iter()
            .any(|l| mentions(l, AUTH_WORDS) || mentions(l, TLS_WORDS)),
        "{}",
        log.join("\n")
    );
    assert!(
        !log.iter().any(|l| l.contains(password.trim())),
        "the password was logged"
    );
}

/// Start the service with `config` and `env`, which cannot connect: it
/// stays up and alive, is never ready, counts the failures under `kind`,
/// and writes at most one line mentioning `words` per 10 s.
async fn stays_up_unready_and_quiet(
    config: &Path,
    env: &[(&str, &str)],
    kind: &str,
    words: &[&str],
    secret: &str,
) {
    stays_up_unready_and_quiet_for(config, env, kind, words, secret, WATCH).await;
}

/// [`stays_up_unready_and_quiet`], watching `watch` after the first failure.
async fn stays_up_unready_and_quiet_for(
    config: &Path,
    env: &[(&str, &str)],
    kind: &str,
    words: &[&str],
    secret: &str,
    watch: Duration,
) {
    let mut service = Service::start(config, env);
    let errors = format!("attnwatch_errors_total{{kind=\"{kind}\"}}");
    let mut first_failure = None;
    let deadline = Instant::now() + Duration::from_secs(60) + watch;
    loop {
        let now = Instant::now();
        assert!(service.alive(), "exited:\n{}", service.lines().join("\n"));
        assert_ne!(http_get(service.http, "/readyz").await.0, 200, "ready");
        assert_eq!(http_get(service.http, "/healthz").await.0, 200, "not live");
        if first_failure.is_none() && service.metric(&errors).await >= 1.0 {
            first_failure = Some(now);
        }
        if first_failure.is_some_and(|t| now >= t + watch) {
            break;
        }
        assert!(
            now < deadline,
            "no {kind} error counted:\n{}",
            service.lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let failures = service.metric(&errors).await;
    let elapsed = service.started.elapsed();
    let log = service.stop();
    let about: Vec<&String> = log.iter().filter(|l| mentions(l, words)).collect();
    let warnings = log
        .iter()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .count() as u64;
    // One line per kind per 10 s, the first at once: at most this many.
    let bound = elapsed.as_secs() / LOG_EVERY_SECS + 1;
    let report = format!(
        "{} lines about it in {elapsed:?} ({failures} failures counted), bound {bound}:\n{}",
        about.len(),
        log.join("\n")
    );
    assert!(!about.is_empty(), "the failure was never logged: {report}");
    assert!(about.len() as u64 <= bound, "{report}");
    assert!(warnings <= 2 * bound, "{warnings} warnings: {report}");
    assert!(
        about
            .iter()
            .any(|l| l.contains(&format!("kind=\"{kind}\""))),
        "no line names the kind: {report}"
    );
    assert!(
        !log.iter().any(|l| l.contains(secret)),
        "a secret was logged: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_wrong_password_it_stays_up_unready_and_logs_once_per_interval() {
    let sasl = sasl();
    let names = Names::new("sasl-badpw");
    create_topics(&names, 1).await;
    let config = config_file(
        &names,
        &sasl,
        &sasl.ca,
        source("env", "ATTNWATCH_TEST_KAFKA_PASSWORD"),
    );
    let wrong = unique("not-the-password");
    stays_up_unready_and_quiet(
        &config,
        &[("ATTNWATCH_TEST_KAFKA_PASSWORD", &wrong)],
        "kafka_auth",
        AUTH_WORDS,
        &wrong,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_exactly_once_mode_a_wrong_password_keeps_it_up_past_the_transaction_timeout() {
    let sasl = sasl();
    let names = Names::new("sasl-badpw-eo");
    create_topics(&names, 1).await;
    let config = config_file_in(
        &names,
        &sasl,
        &sasl.ca,
        source("env", "ATTNWATCH_TEST_KAFKA_PASSWORD"),
        true,
    );
    let wrong = unique("not-the-password");
    // Initialising transactions times out every 10 s; it is retried, not
    // fatal: still up and unready 35 s on.
    stays_up_unready_and_quiet_for(
        &config,
        &[("ATTNWATCH_TEST_KAFKA_PASSWORD", &wrong)],
        "kafka_auth",
        AUTH_WORDS,
        &wrong,
        Duration::from_secs(35),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_untrusted_certificate_it_stays_up_unready_and_logs_once_per_interval() {
    let sasl = sasl();
    let password = std::fs::read_to_string(&sasl.password_file).unwrap();
    let names = Names::new("sasl-badca");
    create_topics(&names, 1).await;
    // The right password, but only a CA that did not sign the broker's
    // certificate is trusted.
    let config = config_file(
        &names,
        &sasl,
        &sasl.untrusted_ca,
        source("file", sasl.password_file.to_str().unwrap()),
    );
    stays_up_unready_and_quiet(&config, &[], "kafka_tls", TLS_WORDS, password.trim()).await;
}

#[test]
fn a_secret_that_cannot_be_read_stops_startup_with_a_clear_error_and_is_never_printed() {
    let sasl = sasl();
    let names = Names::new("sasl-nosecret");
    let binary = env!("CARGO_BIN_EXE_attnwatch");

    // A file that is not there: `run` fails before connecting, naming the
    // property and the file.
    let missing = std::env::temp_dir().join(unique("no-such-secret"));
    let config = config_file(
        &names,
        &sasl,
        &sasl.ca,
        source("file", missing.to_str().unwrap()),
    );
    let out = Command::new(binary)
        .args(["run", "--config"])
        .arg(&*config)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("kafka.secret_options.\"sasl.password\"")
            && stderr.contains(&format!("file {}", missing.display())),
        "{stderr}"
    );

    // A variable: unset, the same; set, check-config reads it but shows
    // only where it comes from.
    let config = config_file(&names, &sasl, &sasl.ca, source("env", "ATTNWATCH_TEST_PW"));
    let out = Command::new(binary)
        .arg("check-config")
        .arg(&*config)
        .env_remove("ATTNWATCH_TEST_PW")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("\"sasl.password\"")
            && stderr.contains("environment variable ATTNWATCH_TEST_PW")
            && stderr.contains("not set"),
        "{stderr}"
    );
    let value = unique("secret-value");
    let out = Command::new(binary)
        .arg("check-config")
        .arg(&*config)
        .env("ATTNWATCH_TEST_PW", &value)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("ATTNWATCH_TEST_PW"), "{stdout}");
    assert!(!stdout.contains(&value) && !String::from_utf8_lossy(&out.stderr).contains(&value));
}
