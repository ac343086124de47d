//! Alerting: the scored points' alerts joined into incidents across series
//! ([`group`]), and the incidents posted to Alertmanager
//! ([`alertmanager`]).
//!
//! [`Alerting`] runs inside the publish task, on every scored point, after
//! the page has kept it (so an alert can link to its page). It is pure but
//! for handing notices to the notifier's bounded queue; a full queue drops
//! the notice and counts it (`attnwatch_alertmanager_dropped_total`), it
//! never slows the scores down. Off unless `alerting.alertmanager_url` is
//! set, or `alerting.incidents_topic` ([`topic`]: open, update and close
//! records).
//!
//! Incidents are kept per replica, in memory: series of one group must be
//! read by the same replica (key the input by the grouping label, as
//! Telegraf's `routing_tag = "host"` does), and an incident open at a
//! restart is opened again by its next anomalous point.

pub mod alertmanager;
pub mod group;
pub mod topic;

use std::net::SocketAddr;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio_util::sync::CancellationToken;

use rdkafka::producer::FutureProducer;

use crate::config::Config;
use crate::flow::ScoredPoint;
use crate::ingest::client::{self, ClientError};
use crate::recent::SharedRecent;
use alertmanager::{Notice, Target};
use group::{Groups, Observation};

/// Why alerting could not start.
#[derive(Debug, thiserror::Error)]
pub enum AlertingError {
    /// Its metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The incidents topic's producer settings could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The incidents topic's producer could not be created.
    #[error("incidents topic producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// Register the metrics and start the sinks when alerting is on: the
/// Alertmanager notifier and the incidents topic's producer, each behind
/// its own bounded queue (their tasks end when the returned grouping is
/// dropped). The page is at `http_addr` unless `page_url` says otherwise.
/// With the page's store (`board`), incidents are grouped for the page
/// even without a sink.
pub fn start(
    config: &Config,
    registry: &Registry,
    http_addr: SocketAddr,
    board: Option<SharedRecent>,
) -> Result<Option<Alerting>, AlertingError> {
    let cfg = &config.alerting;
    if !cfg.enabled() && board.is_none() {
        return Ok(None);
    }
    let metrics = AlertMetrics::register(registry)?;
    let page = if cfg.page_url.trim().is_empty() {
        format!("http://{http_addr}")
    } else {
        cfg.page_url.trim().to_string()
    };
    let mut sinks = Vec::new();
    if !cfg.alertmanager_url.trim().is_empty() {
        let (tx, rx) = flume::bounded(cfg.queue.max(1));
        let target = Target {
            url: cfg.alertmanager_url.trim().to_string(),
            timeout: cfg.timeout,
            resend: cfg.resend,
            max_attempts: cfg.max_attempts,
        };
        tracing::info!(alertmanager = %target.url, "alerting: incidents go to Alertmanager");
        tokio::spawn(alertmanager::run(
            rx,
            target,
            metrics.clone(),
            CancellationToken::new(),
        ));
        sinks.push(tx);
    }
    let topic = cfg.incidents_topic.trim();
    if !topic.is_empty() {
        let mut pc = client::client_config(&config.kafka)?;
        pc.set("enable.idempotence", "true").set("acks", "all");
        client::apply_options(&mut pc, &config.kafka)?;
        let producer: FutureProducer = pc.create()?;
        let (tx, rx) = flume::bounded(cfg.queue.max(1));
        tracing::info!(%topic, "alerting: incidents go to the incidents topic");
        tokio::spawn(topic::run(
            rx,
            producer,
            topic.to_string(),
            page.clone(),
            metrics.clone(),
        ));
        sinks.push(tx);
    }
    tracing::info!(group_by = ?cfg.group_by, gap = ?cfg.gap, "alerting: incidents across series");
    let gap_ms = i64::try_from(cfg.gap.as_millis()).unwrap_or(i64::MAX);
    Ok(Some(Alerting::new(
        Groups::new(cfg.group_by.clone(), gap_ms),
        sinks,
        board,
        page,
        metrics,
    )))
}

/// The alerting metrics.
#[derive(Debug, Clone)]
pub struct AlertMetrics {
    /// Incident events, by `event` (`open`, `update`, `close`).
    pub incidents: IntCounterVec,
    /// Incidents open now (as Alertmanager was last told).
    pub open: IntGauge,
    /// Posts to Alertmanager that succeeded, by `kind` (`open`, `update`,
    /// `close`, `resend`).
    pub sent: IntCounterVec,
    /// Failed post attempts (each retry counts).
    pub errors: IntCounter,
    /// Notices not delivered, by `reason` (`queue_full`, `gave_up`,
    /// `produce_failed`).
    pub dropped: IntCounterVec,
}

impl AlertMetrics {
    /// Create and register the alerting metrics in `registry`, every label
    /// value present from the start.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let incidents = IntCounterVec::new(
            Opts::new(
                "attnwatch_incidents_total",
                "Incidents across series, by event (open, update, close)",
            ),
            &["event"],
        )?;
        let open = IntGauge::new(
            "attnwatch_incidents_open",
            "Incidents open, as Alertmanager was last told",
        )?;
        let sent = IntCounterVec::new(
            Opts::new(
                "attnwatch_alertmanager_sent_total",
                "Posts to Alertmanager that succeeded, by kind (open, update, close, resend)",
            ),
            &["kind"],
        )?;
        let errors = IntCounter::new(
            "attnwatch_alertmanager_errors_total",
            "Failed post attempts to Alertmanager (each retry counts)",
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "attnwatch_alertmanager_dropped_total",
                "Incident notices never delivered to Alertmanager or the incidents topic, by reason (queue_full, gave_up, produce_failed)",
            ),
            &["reason"],
        )?;
        for e in ["open", "update", "close"] {
            incidents.with_label_values(&[e]);
        }
        for k in ["open", "update", "close", "resend"] {
            sent.with_label_values(&[k]);
        }
        for r in ["queue_full", "gave_up", "produce_failed"] {
            dropped.with_label_values(&[r]);
        }
        registry.register(Box::new(incidents.clone()))?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(sent.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        Ok(AlertMetrics {
            incidents,
            open,
            sent,
            errors,
            dropped,
        })
    }
}

/// The grouping, fed by the publish task.
#[derive(Debug, Clone)]
pub struct Alerting {
    groups: Groups,
    sinks: Vec<flume::Sender<Notice>>,
    board: Option<SharedRecent>,
    page: String,
    metrics: AlertMetrics,
}

impl Alerting {
    /// Group with `groups`, notify every sink's queue, link to the page at
    /// `page`.
    pub fn new(
        groups: Groups,
        sinks: Vec<flume::Sender<Notice>>,
        board: Option<SharedRecent>,
        page: String,
        metrics: AlertMetrics,
    ) -> Self {
        Alerting {
            groups,
            sinks,
            board,
            page,
            metrics,
        }
    }

    /// The next scored point; `page_id` is its id on the page, if kept.
    pub fn observe(&mut self, p: &ScoredPoint, page_id: Option<u64>) {
        // The common case costs no allocation: an ordinary point can
        // neither open an incident nor, unless one is past its gap, close one.
        if !p.anomaly() && self.groups.untouched_by_ordinary(p.ts) {
            return;
        }
        let Some(o) = observation(p, page_id) else {
            return;
        };
        let now = chrono::Utc::now().timestamp_millis();
        for event in self.groups.observe(&o) {
            self.metrics
                .incidents
                .with_label_values(&[event.kind()])
                .inc();
            if let Some(board) = &self.board {
                if let Ok(mut r) = board.lock() {
                    r.incident_event(&event);
                }
            }
            let alert = alertmanager::alert_of(&event, &self.page, now);
            let notice = Notice { event, alert };
            for sink in &self.sinks {
                if sink.try_send(notice.clone()).is_err() {
                    self.metrics
                        .dropped
                        .with_label_values(&["queue_full"])
                        .inc();
                }
            }
        }
    }
}

/// What the grouping needs of a scored point; the words only for an
/// anomalous one.
pub fn observation(p: &ScoredPoint, page_id: Option<u64>) -> Option<Observation> {
    let f = p.driver()?;
    let anomaly = p.anomaly();
    Some(Observation {
        series: p.series.clone(),
        labels: p.labels.clone(),
        ts: p.ts,
        anomaly,
        score: f.scored.score,
        why: if anomaly { why(p) } else { String::new() },
        page_id: if anomaly { page_id } else { None },
    })
}

/// The strongest feature's explanation in words: value, expected, the
/// channel that drove the score, and the most attended time ranges.
pub fn why(p: &ScoredPoint) -> String {
    let Some(f) = p.driver() else {
        return String::new();
    };
    let time = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms).map_or_else(
            || ms.to_string(),
            |t| t.format("%Y-%m-%d %H:%M").to_string(),
        )
    };
    let feature = if &*f.feature == "value" {
        String::new()
    } else {
        format!(" ({})", f.feature)
    };
    let ranges: Vec<String> = f
        .explanation
        .top(3)
        .map(|r| {
            format!(
                "{:.0}% on {} - {}",
                100.0 * r.weight,
                time(r.start_ts),
                time(r.end_ts)
            )
        })
        .collect();
    format!(
        "{}{feature} at {} UTC: value {}, expected {} ± {} (3 scales); score {:.2} over threshold {:.2}, driven by the {} channel; attention {}",
        p.series,
        time(p.ts),
        f.value,
        f.expected,
        3.0 * f.expected_std,
        f.scored.score,
        f.scored.threshold,
        f.scored.channels.strongest(),
        if ranges.is_empty() {
            "not kept".to_string()
        } else {
            ranges.join(", ")
        }
    )
}
