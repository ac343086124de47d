//! Wiring: builds every stage, connects them with bounded channels, and
//! runs the shutdown sequence.
//!
//! ```text
//! consumer task --flume(job, bounded, per thread)--> inference threads
//!      |                                                  |
//!      +--mpsc(dead letters, bounded)--+  +--mpsc(scores)-+
//!                                      v  v
//!                                 producer task --acks--> offset store
//! ```
//!
//! Shutdown (one `CancellationToken`, bounded by `shutdown.grace`):
//! 1. the consumer task stops consuming and drops the job senders;
//! 2. inference threads finish the windows already queued, then exit;
//! 3. the producer task delivers everything in flight, then exits;
//! 4. the producer is flushed;
//! 5. stored offsets are committed.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::Producer;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Delivery};
use crate::ingest::client::{self, ClientError};
use crate::ingest::consume::{self, LoopSettings, Outputs};
use crate::ingest::decode::FeatureSet;
use crate::ingest::kafka::{self, IngestError, OffsetStore};
use crate::ingest::stage::Planner;
use crate::ingest::transaction::{Transactions, TxnError};
use crate::metrics::Metrics;
use crate::model::worker::{self, WorkerSettings};
use crate::model::{reload, Forecaster, ModelError};
use crate::publish::{self, PublishSettings, Publisher};
use crate::recent::Recent;
use crate::score::Scorer;
use crate::server::{self, Access, Health, TokenError};

/// Errors that stop the service.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The model could not be loaded or breaks the contract.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Kafka clients could not be created.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The producer could not be created.
    #[error("kafka producer: {0}")]
    Producer(rdkafka::error::KafkaError),
    /// The API token named by `[server]` could not be read.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The HTTP server could not bind.
    #[error("http server on {addr}")]
    Http {
        /// Address.
        addr: SocketAddr,
        /// Error.
        source: std::io::Error,
    },
    /// Metrics registry failure.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Alerting could not start.
    #[error("alerting: {0}")]
    Alerting(#[from] crate::alerting::AlertingError),
    /// The feedback topic could not be read.
    #[error(transparent)]
    Feedback(#[from] crate::feedback::kafka::FeedbackKafkaError),
    /// The model is not of a kind this build can serve.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// An internal task failed.
    #[error("internal: {0}")]
    Internal(String),
}

/// A started service.
pub struct App {
    http_addr: SocketAddr,
    metrics: Metrics,
    task: JoinHandle<Result<(), AppError>>,
}

impl App {
    /// Address of the HTTP server.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The service's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Wait until the service has shut down.
    pub async fn wait(self) -> Result<(), AppError> {
        self.task
            .await
            .map_err(|e| AppError::Internal(format!("service task: {e}")))?
    }

    /// Load the model, connect to Kafka, start every stage. Returns once the
    /// service is running; cancel `shutdown` to stop it.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<App, AppError> {
        // The token first: a missing secret fails at once, before the model load.
        let access = Access::from_config(&config.server)?;
        // Secrets first: a missing one fails at once, before the model loads.
        client::secrets(&config.kafka).map_err(IngestError::from)?;
        let metrics = Metrics::new()?;
        let health = Arc::new(Health::default());
        let lib = crate::model::library::find(&config.model)
            .map_err(ModelError::from)?
            .path;

        // Model: one engine per inference thread, each warmed up once.
        let (model_cfg, model_lib) = (config.model.clone(), lib.clone());
        let engines =
            tokio::task::spawn_blocking(move || reload::load_engines(&model_cfg, &model_lib))
                .await
                .map_err(|e| AppError::Internal(format!("model loading task: {e}")))??;
        let first = engines
            .first()
            .ok_or_else(|| AppError::Internal("no inference session".into()))?;
        let contract = first.contract().clone();
        if contract.f() != 1 {
            return Err(AppError::Unsupported(format!(
                "model declares {} features; this build serves channel-independent (F = 1) models",
                contract.f()
            )));
        }
        if config.model.stride > contract.horizon {
            return Err(AppError::Unsupported(format!(
                "model.stride = {} exceeds the model's horizon {}: points after the horizon would have no forecast",
                config.model.stride, contract.horizon
            )));
        }
        let provider = first.provider();
        reload::show_model(&metrics, &contract, provider, config.model.provider);
        tracing::info!(model = %contract.id(), window = contract.window, provider = provider.as_str(),
            requested = config.model.provider.as_str(), sessions = engines.len(), "model loaded");
        health.model_warm.store(true, Ordering::Relaxed);

        // HTTP: up before Kafka so /healthz answers while we connect.
        let http_shutdown = CancellationToken::new();
        let recent = config
            .ui
            .enabled
            .then(|| Arc::new(std::sync::Mutex::new(Recent::new(&config.ui))));
        let access_rules = access.describe();
        let feedback = crate::feedback::kafka::Service::new(&config, &metrics.registry)?;
        let page = recent.clone().map(|recent| crate::ui::Page {
            recent,
            feedback: feedback.as_ref().map(|f| crate::ui::feedback::FeedbackApi {
                writer: f.writer.clone(),
                book: f.book.clone(),
            }),
            stop: http_shutdown.clone(),
        });
        let router = server::router(metrics.clone(), health.clone(), page, access);
        let (http_addr, http_task) =
            server::serve(config.server.listen, router, http_shutdown.clone())
                .await
                .map_err(|source| AppError::Http {
                    addr: config.server.listen,
                    source,
                })?;
        tracing::info!(%http_addr, access = %access_rules, "serving /metrics, /healthz, /readyz");

        // Kafka clients.
        let (consumer, shared) = kafka::consumer(&config.kafka, metrics.clone())?;
        let store = Arc::new(OffsetStore::new(consumer.clone(), shared));
        let publisher = Publisher::new(
            &producer_config(&config).map_err(IngestError::from)?,
            &config.kafka.output_topic,
            store.clone(),
            metrics.clone(),
        )
        .map_err(AppError::Producer)?;
        let producer = publisher.producer.clone();
        let transactions = match config.kafka.delivery {
            Delivery::AtLeastOnce => None,
            Delivery::ExactlyOnce => {
                let (p, timeout, m, stop) = (
                    producer.clone(),
                    config.kafka.transaction_timeout,
                    metrics.clone(),
                    shutdown.clone(),
                );
                let started =
                    tokio::task::spawn_blocking(move || Transactions::start(p, timeout, m, &stop))
                        .await
                        .map_err(|e| AppError::Internal(format!("transactions task: {e}")))?;
                let txn = match started {
                    Ok(txn) => txn,
                    Err(TxnError::Stopped) => {
                        // Asked to stop while the broker refused us: a clean
                        // stop, with nothing consumed or published.
                        tracing::info!("stopped before transactions were initialised");
                        http_shutdown.cancel();
                        let _ = http_task.await;
                        return Ok(App {
                            http_addr,
                            metrics,
                            task: tokio::spawn(async { Ok(()) }),
                        });
                    }
                    Err(e) => return Err(IngestError::from(e).into()),
                };
                let txn = Arc::new(txn);
                store.set_transactions(&txn);
                tracing::info!(
                    transactional_id = %transactional_id(&config),
                    "exactly_once delivery: transactions initialised"
                );
                Some(txn)
            }
        };

        let alerting =
            crate::alerting::start(&config, &metrics.registry, http_addr, recent.clone())?;

        // Channels and stages.
        let (pub_tx, pub_rx) = mpsc::channel(config.publish.max_in_flight.min(65_536));
        let publisher = tokio::spawn(publish::run(
            publisher,
            pub_rx,
            PublishSettings {
                output_topic: config.kafka.output_topic.clone(),
                dead_letter_topic: config.kafka.dead_letter_topic.clone(),
                max_in_flight: config.publish.max_in_flight,
                publish: config.publish.clone(),
                recent,
                alerting,
            },
            store.clone(),
            metrics.clone(),
        ));
        let settings = WorkerSettings {
            max_batch: config.model.max_batch,
            max_jobs: (config.model.max_batch * config.model.stride).clamp(64, 8192),
            max_delay: config.model.max_delay,
        };
        let mut job_txs = Vec::with_capacity(engines.len());
        let mut reload_txs = Vec::with_capacity(engines.len());
        let mut workers = Vec::with_capacity(engines.len());
        for (i, engine) in engines.into_iter().enumerate() {
            let (tx, rx) = flume::bounded(config.model.queue_capacity);
            job_txs.push(tx);
            let (reload_tx, reload_rx) = flume::unbounded();
            reload_txs.push(reload_tx);
            let mut scorer = Scorer::new(config.score.clone(), config.window.max_series);
            if let Some(f) = &feedback {
                scorer = scorer.with_feedback(f.book.clone());
            }
            let (scorer, out, s, m) = (scorer, pub_tx.clone(), settings.clone(), metrics.clone());
            let handle = std::thread::Builder::new()
                .name(format!("attnwatch-infer-{i}"))
                .spawn(move || {
                    let model: Box<dyn Forecaster + Send> = Box::new(engine);
                    worker::run(model, scorer, rx, reload_rx, out, s, m)
                })
                .map_err(|e| AppError::Internal(format!("spawning inference thread: {e}")))?;
            workers.push(handle);
        }
        // Hot reload: SIGHUP or a changed model file.
        tokio::spawn(reload::watch(
            reload::Watch {
                config: config.model.clone(),
                library: lib,
                current: contract.clone(),
                stride: config.model.stride,
                workers: reload_txs,
            },
            metrics.clone(),
            shutdown.clone(),
        ));
        let planner = Planner::new(
            config
                .window
                .settings(contract.window, contract.min_points, config.model.stride),
            FeatureSet(None),
            metrics.clone(),
        )
        .with_limits(config.ingest.limits())
        .with_format(config.ingest.format, config.ingest.timestamp_unit());
        // Feedback given before this start applies before anything is scored.
        if let Some(f) = &feedback {
            f.load(&config.kafka, shutdown.clone()).await?;
        }
        let ingest = tokio::spawn(consume::run(
            consumer.clone(),
            store.clone(),
            planner,
            Outputs {
                jobs: job_txs,
                publish: pub_tx,
            },
            shutdown.clone(),
            metrics.clone(),
            LoopSettings {
                transactions: transactions.clone(),
                commit_interval: config.kafka.commit_interval,
                timers: config.window.timers(),
            },
        ));

        let grace = config.shutdown.grace;
        let m = metrics.clone();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let mut failure: Option<IngestError> = None;
            let drained = async {
                match ingest.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "stopping: the consume loop failed");
                        failure = Some(e);
                    }
                    Err(e) => m.error("kafka", &format!("ingest task: {e}")),
                }
                if failure.is_some() {
                    // The open transaction is lost: its outputs need not be
                    // delivered (they are aborted), so do not wait for them.
                    publisher.abort();
                }
                health.draining.store(true, Ordering::Relaxed);
                tracing::info!("draining: inference threads");
                let joined = tokio::task::spawn_blocking(move || {
                    for w in workers {
                        let _ = w.join();
                    }
                })
                .await;
                if let Err(e) = joined {
                    m.error("inference", &format!("joining inference threads: {e}"));
                }
                tracing::info!("draining: producer deliveries");
                match publisher.await {
                    Err(e) if !e.is_cancelled() => {
                        m.error("delivery", &format!("producer task: {e}"));
                    }
                    _ => {}
                }
            };
            // The grace period runs from the shutdown signal, not from
            // start: a service must not stop itself after `grace` of work.
            let deadline = async {
                stop.cancelled().await;
                tokio::time::sleep(grace).await;
            };
            tokio::select! {
                () = drained => {}
                () = deadline => tracing::warn!(
                    ?grace,
                    "shutdown grace period over; stopping without a full drain"
                ),
            }
            if let (Some(_), Some(txn)) = (&failure, &transactions) {
                // Best effort: abort now rather than leave the transaction
                // open until the broker times it out (a restart with the
                // same transactional id would abort it too).
                let txn = txn.clone();
                let _ = tokio::task::spawn_blocking(move || txn.abort_quietly()).await;
            }
            if failure.is_none() {
                let flush = tokio::task::spawn_blocking(move || {
                    if let Err(e) = producer.flush(Duration::from_secs(5)) {
                        tracing::warn!(error = %e, "producer flush");
                    }
                });
                let _ = flush.await;
                let (c, s, t, m2) = (
                    consumer.clone(),
                    store.clone(),
                    transactions.clone(),
                    m.clone(),
                );
                let finished =
                    tokio::task::spawn_blocking(move || consume::finish(&c, &s, t.as_deref(), &m2))
                        .await
                        .map_err(|e| AppError::Internal(format!("final commit task: {e}")))?;
                match finished {
                    Ok(()) => tracing::info!("offsets committed; stopped"),
                    Err(e) => failure = Some(e.into()),
                }
            }
            http_shutdown.cancel();
            let _ = http_task.await;
            match failure {
                Some(e) => Err(AppError::Ingest(e)),
                None => Ok(()),
            }
        });
        Ok(App {
            http_addr,
            metrics,
            task,
        })
    }
}

/// librdkafka settings of the output producer: idempotent (no duplicates
/// from its own retries), acknowledged by all in-sync replicas, batched for
/// throughput (`linger.ms` 5, up to 10,000 messages or 1 MiB per batch; no
/// compression, which cost 9% of the service's CPU on a local broker: set
/// `compression.type` in `[kafka.options]` where bandwidth matters more),
/// with a local queue large enough for `publish.max_in_flight`.
/// `[kafka.options]` and `[kafka.secret_options]` apply last, so an
/// operator can override any of them.
pub fn producer_config(config: &Config) -> Result<rdkafka::ClientConfig, ClientError> {
    let mut pc = client::client_config(&config.kafka)?;
    let mut delivery_timeout = config.publish.delivery_timeout;
    if config.kafka.delivery == Delivery::ExactlyOnce {
        // librdkafka requires message.timeout.ms <= transaction.timeout.ms.
        delivery_timeout = delivery_timeout.min(config.kafka.transaction_timeout);
        pc.set("transactional.id", transactional_id(config)).set(
            "transaction.timeout.ms",
            config.kafka.transaction_timeout.as_millis().to_string(),
        );
    }
    pc.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1048576")
        .set(
            "queue.buffering.max.messages",
            config.publish.max_in_flight.max(100_000).to_string(),
        )
        .set(
            "message.timeout.ms",
            delivery_timeout.as_millis().to_string(),
        );
    client::apply_options(&mut pc, &config.kafka)?;
    Ok(pc)
}

/// The transactional id (exactly_once): `kafka.transactional_id`, or
/// `attnwatch-<group_id>-<host name>`.
pub fn transactional_id(config: &Config) -> String {
    if let Some(id) = &config.kafka.transactional_id {
        return id.clone();
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|| "localhost".into());
    format!("attnwatch-{}-{host}", config.kafka.group_id)
}

/// Start the service and run it until `shutdown` is cancelled and drained.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    App::start(config, shutdown).await?.wait().await
}

/// `attnwatch run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// TOML config file (see config/attnwatch.example.toml).
    #[arg(short, long, default_value = "config/attnwatch.example.toml")]
    config: std::path::PathBuf,
}

/// Run `attnwatch run`: load the config, run the service until SIGTERM or
/// SIGINT (a second signal exits at once).
pub fn exec(a: RunArgs) -> anyhow::Result<()> {
    let c = Config::load(&a.config)?;
    crate::cli::runtime()?.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        run(c, shutdown).await
    })?;
    Ok(())
}

/// First SIGTERM/SIGINT: graceful drain. Second: exit at once.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("signal received: draining (send again to exit at once)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: exiting without drain");
    std::process::exit(130);
}
