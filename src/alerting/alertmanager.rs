//! Incidents to Alertmanager's v2 API (`POST /api/v2/alerts`).
//!
//! [`alert_of`] is pure: an incident event as one Alertmanager alert. Its
//! labels name the incident and stay the same from open to close (so
//! Alertmanager sees one alert): `alertname="AttnwatchAnomaly"`, `incident`,
//! the group's label values, or `series` for a series on its own. The
//! annotations say why in words; `generatorURL` links to the page, on the
//! strongest anomaly when the page keeps it. Open and update fire (no
//! `endsAt`); close resolves (`endsAt` now).
//!
//! [`run`] is the notifier task: a bounded queue (a full queue drops the
//! notice and counts it), each post retried with a doubling backoff, and
//! every open incident posted again every `resend` so that Alertmanager,
//! which resolves an alert it has not heard of for `resolve_timeout`, keeps
//! it firing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::group::{Event, Incident};
use super::AlertMetrics;

/// One alert of Alertmanager's v2 API.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AmAlert {
    /// Identify the alert.
    pub labels: BTreeMap<String, String>,
    /// Describe it.
    pub annotations: BTreeMap<String, String>,
    /// Where it comes from: the page.
    #[serde(rename = "generatorURL", skip_serializing_if = "String::is_empty")]
    pub generator_url: String,
    /// When it started firing (RFC 3339), on open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<String>,
    /// When it resolved (RFC 3339), on close.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
}

/// The alert name every incident carries.
pub const ALERT_NAME: &str = "AttnwatchAnomaly";

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

/// The labels of an incident: the same for every event of it.
pub fn labels(inc: &Incident) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    labels.insert("alertname".to_string(), ALERT_NAME.to_string());
    labels.insert("incident".to_string(), inc.id.clone());
    if inc.group.is_empty() {
        labels.insert("series".to_string(), inc.strongest.series.to_string());
    }
    for (k, v) in &inc.group {
        // Alertmanager's own label names stay ours.
        if k != "alertname" && k != "incident" {
            labels.insert(k.clone(), v.clone());
        }
    }
    labels
}

/// An incident event as an Alertmanager alert, at wall time `now_ms`;
/// `page` is the page's base address (empty: no link).
pub fn alert_of(event: &Event, page: &str, now_ms: i64) -> AmAlert {
    let inc = event.incident();
    let series: Vec<&str> = inc.members.keys().map(|s| &**s).collect();
    let where_ = if inc.group.is_empty() {
        inc.strongest.series.to_string()
    } else {
        inc.group
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut annotations = BTreeMap::new();
    annotations.insert(
        "summary".to_string(),
        format!(
            "{} series anomalous on {where_} since {}",
            series.len(),
            time(inc.opened_ts)
        ),
    );
    annotations.insert(
        "description".to_string(),
        format!(
            "Strongest: {}. Series: {}. Last anomalous point {}.",
            inc.strongest.why,
            series.join(", "),
            time(inc.last_ts)
        ),
    );
    annotations.insert("series".to_string(), series.join(", "));
    let generator_url = inc.link(page).unwrap_or_default();
    let now = chrono::DateTime::from_timestamp_millis(now_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (starts_at, ends_at) = match event {
        Event::Open(_) => (Some(now), None),
        Event::Update(_) => (None, None),
        Event::Close(_) => (None, Some(now)),
    };
    AmAlert {
        labels: labels(inc),
        annotations,
        generator_url,
        starts_at,
        ends_at,
    }
}

/// What the notifier is told.
#[derive(Debug, Clone)]
pub struct Notice {
    /// The event.
    pub event: Event,
    /// Its alert.
    pub alert: AmAlert,
}

/// Where and how to post.
#[derive(Debug, Clone)]
pub struct Target {
    /// Alertmanager's base address (`http://127.0.0.1:9093`).
    pub url: String,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Post every open incident again this often.
    pub resend: Duration,
    /// Give up on a post after this many attempts.
    pub max_attempts: u32,
}

const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Post the queued notices until the queue closes or `shutdown`.
pub async fn run(
    rx: flume::Receiver<Notice>,
    target: Target,
    metrics: AlertMetrics,
    shutdown: CancellationToken,
) {
    let client = match reqwest::Client::builder().timeout(target.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "alertmanager: cannot build the HTTP client; alerts are not sent");
            return;
        }
    };
    let endpoint = format!("{}/api/v2/alerts", target.url.trim_end_matches('/'));
    let mut open: BTreeMap<String, AmAlert> = BTreeMap::new();
    let mut resend = tokio::time::interval(target.resend);
    resend.tick().await;
    loop {
        let notice = tokio::select! {
            () = shutdown.cancelled() => break,
            n = rx.recv_async() => match n {
                Ok(n) => n,
                Err(_) => break,
            },
            _ = resend.tick() => {
                if !open.is_empty() {
                    let alerts: Vec<AmAlert> = open.values().cloned().collect();
                    post(&client, &endpoint, &alerts, &target, &metrics, "resend", &shutdown).await;
                }
                continue;
            }
        };
        let id = notice.event.incident().id.clone();
        match &notice.event {
            Event::Close(_) => {
                open.remove(&id);
            }
            Event::Open(_) | Event::Update(_) => {
                let mut firing = notice.alert.clone();
                if let Some(old) = open.get(&id) {
                    firing.starts_at = old.starts_at.clone();
                }
                open.insert(id, firing);
            }
        }
        let kind = notice.event.kind();
        post(
            &client,
            &endpoint,
            &[notice.alert],
            &target,
            &metrics,
            kind,
            &shutdown,
        )
        .await;
        metrics.open.set(open.len() as i64);
    }
}

/// One post, retried with a doubling backoff up to `max_attempts`.
async fn post(
    client: &reqwest::Client,
    endpoint: &str,
    alerts: &[AmAlert],
    target: &Target,
    metrics: &AlertMetrics,
    kind: &'static str,
    shutdown: &CancellationToken,
) {
    let body = match serde_json::to_vec(alerts) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "alertmanager: cannot encode alerts");
            return;
        }
    };
    let mut backoff = BACKOFF_START;
    for attempt in 1..=target.max_attempts.max(1) {
        let sent = client
            .post(endpoint)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        let error = match sent {
            Ok(r) if r.status().is_success() => {
                metrics.sent.with_label_values(&[kind]).inc();
                return;
            }
            Ok(r) => format!("HTTP {}", r.status()),
            Err(e) => e.to_string(),
        };
        metrics.errors.inc();
        if attempt == 1 || attempt == target.max_attempts {
            tracing::warn!(%error, attempt, endpoint, "alertmanager: post failed");
        }
        if attempt < target.max_attempts {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
    metrics.dropped.with_label_values(&["gave_up"]).inc();
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::group::{Groups, Observation};
    use super::*;

    fn obs(series: &str, ts: i64, score: f64) -> Observation {
        Observation {
            series: series.into(),
            labels: Arc::new([("host".to_string(), "web-1".to_string())].into()),
            ts,
            anomaly: score > 1.0,
            score,
            why: format!("{series}: value 9, expected 1"),
            page_id: Some(7),
        }
    }

    #[test]
    fn one_incident_keeps_its_labels_from_open_to_close() {
        let mut g = Groups::new(vec!["host".into()], 60_000);
        let open = g.observe(&obs("cpu", 0, 3.0)).remove(0);
        let update = g.observe(&obs("mem", 60_000, 5.0)).remove(0);
        let close = g.observe(&obs("mem", 200_000, 0.1)).remove(0);
        let [a, b, c] = [&open, &update, &close].map(|e| alert_of(e, "http://h:9898/", 1_000));
        assert_eq!(a.labels, b.labels);
        assert_eq!(a.labels, c.labels);
        assert_eq!(a.labels["alertname"], ALERT_NAME);
        assert_eq!(a.labels["host"], "web-1");
        assert_eq!(a.labels["incident"], "host=web-1@0");
        assert!(!a.labels.contains_key("series"));
        assert!(a.starts_at.is_some() && a.ends_at.is_none());
        assert!(b.starts_at.is_none() && b.ends_at.is_none());
        assert_eq!(c.ends_at.as_deref(), Some("1970-01-01T00:00:01.000Z"));
        assert_eq!(c.annotations["series"], "cpu, mem");
        assert!(
            c.annotations["description"].contains("mem: value 9"),
            "{c:?}"
        );
        assert_eq!(a.generator_url, "http://h:9898/#incident=host%3Dweb-1%400");
        let json = serde_json::to_value(&a).unwrap();
        assert!(
            json["generatorURL"].is_string() && json["startsAt"].is_string(),
            "{json}"
        );
        assert!(json.get("endsAt").is_none());
    }
}
