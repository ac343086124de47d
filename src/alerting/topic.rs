//! Incidents to a Kafka topic (`alerting.incidents_topic`): one JSON record
//! per open, update and close, keyed by the incident's id, so that a
//! compacted topic keeps each incident's latest state.
//!
//! [`record`] is pure; [`run`] is the producer task (librdkafka retries;
//! a record it finally fails to deliver is counted as
//! `attnwatch_alertmanager_dropped_total{reason="produce_failed"}`).

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

use super::alertmanager::Notice;
use super::group::Event;
use super::AlertMetrics;

/// The record of an incident event, at wall time `now_ms`; `page` is the
/// page's base address (empty: no link).
pub fn record(event: &Event, page: &str, now_ms: i64) -> serde_json::Value {
    let inc = event.incident();
    let series: Vec<serde_json::Value> = inc
        .members
        .iter()
        .map(|(s, m)| json!({"series": &**s, "first_ts": m.first_ts, "score": m.score}))
        .collect();
    let link = inc.link(page);
    let base = page.trim_end_matches('/');
    let anomaly_link = match (base.is_empty(), inc.strongest.page_id) {
        (false, Some(id)) => Some(format!("{base}/#anomaly={id}")),
        _ => None,
    };
    json!({
        "event": event.kind(),
        "incident": inc.id,
        "group": inc.group,
        "opened_ts": inc.opened_ts,
        "last_ts": inc.last_ts,
        "series": series,
        "strongest": {
            "series": &*inc.strongest.series,
            "ts": inc.strongest.ts,
            "score": inc.strongest.score,
            "why": inc.strongest.why,
            "page": anomaly_link,
        },
        "page": link,
        "at_ms": now_ms,
    })
}

/// Produce each notice's record to `topic` until the queue closes.
pub async fn run(
    rx: flume::Receiver<Notice>,
    producer: FutureProducer,
    topic: String,
    page: String,
    metrics: AlertMetrics,
) {
    while let Ok(notice) = rx.recv_async().await {
        let now = chrono::Utc::now().timestamp_millis();
        let body = record(&notice.event, &page, now).to_string();
        let key = notice.event.incident().id.clone();
        let sent = producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&body),
                Duration::from_secs(30),
            )
            .await;
        if let Err((e, _)) = sent {
            metrics.dropped.with_label_values(&["produce_failed"]).inc();
            tracing::warn!(error = %e, %topic, incident = %key, "incidents topic: record not delivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::super::group::{Groups, Observation};
    use super::*;

    #[test]
    fn records_name_the_event_the_series_and_the_page() {
        let mut g = Groups::new(vec!["host".into()], 10);
        let labels: Arc<BTreeMap<String, String>> =
            Arc::new([("host".to_string(), "h1".to_string())].into());
        let o = |series: &str, ts, score: f64| Observation {
            series: series.into(),
            labels: labels.clone(),
            ts,
            anomaly: score > 1.0,
            score,
            why: format!("{series} why"),
            page_id: Some(3),
        };
        let open = g.observe(&o("cpu", 0, 4.0)).remove(0);
        let update = g.observe(&o("mem", 1, 2.0)).remove(0);
        let close = g.observe(&o("mem", 20, 0.0)).remove(0);
        let r = record(&open, "http://h:9898", 5);
        assert_eq!(r["event"], "open");
        assert_eq!(r["incident"], "host=h1@0");
        assert_eq!(r["group"]["host"], "h1");
        assert_eq!(r["page"], "http://h:9898/#incident=host%3Dh1%400");
        assert_eq!(r["strongest"]["page"], "http://h:9898/#anomaly=3");
        assert_eq!(
            record(&update, "", 5)["series"].as_array().unwrap().len(),
            2
        );
        let c = record(&close, "", 5);
        assert_eq!(c["event"], "close");
        assert_eq!(c["strongest"]["why"], "cpu why");
        assert!(c["page"].is_null());
    }
}
