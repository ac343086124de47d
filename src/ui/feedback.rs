//! The feedback API, behind the API's access rule:
//!
//! - `POST /api/feedback` with `{"verdict": "not_anomaly", "anomaly": ID}`
//!   (an anomaly the page holds; its channel strengths are taken from it)
//!   or `{"verdict": "missed", "series": S, "feature": F (default
//!   "value"), "start_ts": T0, "end_ts": T1}` (the highest score the page
//!   holds inside the range, and its channel, go with it: what the series
//!   learns; none when the page no longer holds the range), either with an optional
//!   `"note"`. The record goes to the feedback topic; the answer (200, the
//!   record and its key) comes once this replica applies it, or 202 when
//!   that takes longer than 5 s. 400 for a bad request (with the reason),
//!   404 for an anomaly the page no longer holds or when feedback is off
//!   (`feedback.topic` unset), 503 when the broker did not take it.
//! - `GET /api/feedback`: the records in effect, newest first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::feedback::kafka::Writer;
use crate::feedback::{Record, SharedBook, Verdict};
use crate::flow::Channels;
use crate::recent::SharedRecent;

/// What the feedback routes need: the topic's writer and the book.
#[derive(Clone)]
pub struct FeedbackApi {
    /// Writes records to the feedback topic.
    pub writer: Writer,
    /// The records in effect.
    pub book: Arc<SharedBook>,
}

#[derive(Clone)]
struct FeedbackState {
    recent: SharedRecent,
    api: Option<FeedbackApi>,
}

/// The feedback routes (`api`: `None` when feedback is off).
pub fn routes(recent: SharedRecent, api: Option<FeedbackApi>) -> Router {
    Router::new()
        .route("/api/feedback", get(list).post(post))
        .with_state(FeedbackState { recent, api })
}

/// A feedback request from the page.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    verdict: Verdict,
    anomaly: Option<u64>,
    series: Option<String>,
    feature: Option<String>,
    start_ts: Option<i64>,
    end_ts: Option<i64>,
    note: Option<String>,
}

fn off() -> Response {
    (
        StatusCode::NOT_FOUND,
        "feedback is off: set feedback.topic (README \"Feedback\")\n",
    )
        .into_response()
}

fn bad(reason: impl std::fmt::Display) -> Response {
    refused(StatusCode::BAD_REQUEST, reason).into_response()
}

/// A refusal: its status and the reason, one line.
type Refusal = (StatusCode, String);

fn refused(status: StatusCode, reason: impl std::fmt::Display) -> Refusal {
    (status, format!("{reason}\n"))
}

async fn list(State(s): State<FeedbackState>) -> Response {
    let Some(api) = s.api else { return off() };
    let records: Vec<Record> = api
        .book
        .with(|b| b.records().into_iter().take(1000).cloned().collect());
    Json(records).into_response()
}

/// The record a request asks for, from the page's store for an anomaly.
fn record(req: Request, recent: &SharedRecent, now_ms: i64) -> Result<Record, Refusal> {
    match req.verdict {
        Verdict::NotAnomaly => {
            let Some(id) = req.anomaly else {
                return Err(refused(
                    StatusCode::BAD_REQUEST,
                    "not_anomaly needs \"anomaly\": the id of an anomaly on the page",
                ));
            };
            let Ok(r) = recent.lock() else {
                return Err(refused(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store unavailable",
                ));
            };
            let Some(a) = r.anomaly(id) else {
                return Err(refused(
                    StatusCode::NOT_FOUND,
                    format!("anomaly {id} is not held (any more)"),
                ));
            };
            Ok(Record {
                verdict: Verdict::NotAnomaly,
                series: a.series.to_string(),
                feature: a.feature.to_string(),
                start_ts: a.point.ts,
                end_ts: a.point.ts,
                channels: Channels::NAMES
                    .iter()
                    .zip(a.channels.values())
                    .map(|(n, v)| (n.to_string(), v))
                    .collect(),
                at_ms: now_ms,
                note: req.note,
            })
        }
        Verdict::Missed => {
            let (Some(series), Some(start_ts), Some(end_ts)) =
                (req.series, req.start_ts, req.end_ts)
            else {
                return Err(refused(
                    StatusCode::BAD_REQUEST,
                    "missed needs \"series\", \"start_ts\" and \"end_ts\" (epoch ms)",
                ));
            };
            let Ok(r) = recent.lock() else {
                return Err(refused(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store unavailable",
                ));
            };
            let channels = r
                .peak(&series, start_ts, end_ts)
                .filter(|(_, score)| *score > 0.0)
                .map(|(name, score)| (name.to_string(), score))
                .into_iter()
                .collect();
            drop(r);
            Ok(Record {
                verdict: Verdict::Missed,
                series,
                feature: req.feature.unwrap_or_else(|| "value".into()),
                start_ts,
                end_ts,
                channels,
                at_ms: now_ms,
                note: req.note,
            })
        }
    }
}

async fn post(State(s): State<FeedbackState>, body: Bytes) -> Response {
    let Some(api) = s.api else { return off() };
    let req: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(format!("not a feedback request: {e}")),
    };
    let record = match record(req, &s.recent, chrono::Utc::now().timestamp_millis()) {
        Ok(r) => r,
        Err(refusal) => return refusal.into_response(),
    };
    if let Err(e) = record.validate() {
        return bad(e);
    }
    if let Err(e) = api.writer.send(&record).await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the feedback topic did not take it: {e}\n"),
        )
            .into_response();
    }
    // Answer once this replica applies it (read back from the topic).
    let key = record.key();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let held = api.book.with(|b| b.get(&key) == Some(&record));
        if held {
            break StatusCode::OK;
        }
        if Instant::now() >= deadline {
            break StatusCode::ACCEPTED;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    (
        status,
        Json(serde_json::json!({"key": key, "record": record})),
    )
        .into_response()
}
