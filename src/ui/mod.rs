//! The web page at `/` and its JSON API, read from the bounded store of
//! [`crate::recent`]. Every asset is in the binary (no CDN).
//!
//! With an API token ([`crate::server::auth`]), a request for `/` without
//! it gets [`UNLOCK`] (with 401): a small page that takes the token from
//! the address (`/#token=...`) or a form, keeps it in the tab's
//! sessionStorage, and loads the page with it; the page then sends it as
//! `Authorization: Bearer` on every `/api/*` request.
//!
//! - `GET /api/anomalies?series=S&limit=N`: recent anomalies, newest first,
//!   of series whose id contains S (default: all; N at most 1000, default 100);
//! - `GET /api/anomalies/{id}`: one anomaly with its explanation: the
//!   context values, the attention over the context tokens per layer with
//!   each token's time range, and the top-attended ranges;
//! - `GET /api/incidents?limit=N`: incidents across series, open ones
//!   first, then the newest (N at most 500, default 50): group, series,
//!   first alerts, and the strongest anomaly with its words and its id;
//! - `GET /api/incidents/{id}`: one incident (`id` percent-encoded);
//! - `GET /api/series`: the ids of the series held, most recently updated first;
//! - `GET /api/series/{id}`: a series' recent points (value, expected,
//!   band, score, threshold, anomaly); `id` percent-encoded;
//! - `POST /api/feedback`, `GET /api/feedback`: operator feedback
//!   ([`feedback`]);
//! - `GET /api/events`: new anomalies pushed as server-sent events
//!   ([`events`]).

pub mod events;
pub mod feedback;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::flow::Channels;
use crate::recent::{Anomaly, PointView, SharedRecent};

const INDEX: &str = include_str!("index.html");

/// The page served with 401 in place of `/` when the request lacks the API
/// token: it asks for the token, then loads the page with it.
pub const UNLOCK: &str = include_str!("unlock.html");

/// What the page's routes need.
#[derive(Clone)]
pub struct Page {
    /// The store the publish stage feeds.
    pub recent: SharedRecent,
    /// The feedback topic and book (`None`: feedback off).
    pub feedback: Option<feedback::FeedbackApi>,
    /// Cancelled on shutdown: ends the event streams.
    pub stop: tokio_util::sync::CancellationToken,
}

/// The page's routes.
pub fn routes(page: Page) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/anomalies", get(anomalies))
        .route("/api/anomalies/{id}", get(anomaly))
        .route("/api/incidents", get(incidents))
        .route("/api/incidents/{*id}", get(incident))
        .route("/api/series", get(series_list))
        .route("/api/series/{*id}", get(series))
        .with_state(page.recent.clone())
        .merge(feedback::routes(page.recent.clone(), page.feedback.clone()))
        .merge(
            Router::new()
                .route("/api/events", get(events::events))
                .with_state(page),
        )
}

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    series: String,
    limit: Option<usize>,
}

/// An anomaly in the list.
#[derive(Debug, Serialize)]
struct AnomalySummary<'a> {
    id: u64,
    series: &'a str,
    feature: &'a str,
    ts: i64,
    value: f32,
    expected: f32,
    score: f64,
    threshold: f64,
    /// The channel that drove the score.
    channel: &'static str,
    /// Whether this point opened its incident.
    alert: bool,
    /// Its incident (the opening alert's timestamp).
    incident: Option<i64>,
}

fn summary(a: &Anomaly) -> AnomalySummary<'_> {
    AnomalySummary {
        id: a.id,
        series: &a.series,
        feature: &a.feature,
        ts: a.point.ts,
        value: a.point.value,
        expected: a.point.expected,
        score: a.point.score,
        threshold: a.point.threshold,
        channel: a.channels.strongest(),
        alert: a.alert,
        incident: a.incident,
    }
}

fn unavailable() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response()
}

async fn anomalies(State(recent): State<SharedRecent>, Query(q): Query<ListQuery>) -> Response {
    let Ok(r) = recent.lock() else {
        return unavailable();
    };
    let limit = q.limit.unwrap_or(100).min(1000);
    let list: Vec<AnomalySummary<'_>> = r
        .anomalies(&q.series, limit)
        .into_iter()
        .map(summary)
        .collect();
    Json(list).into_response()
}

/// One context token of an explanation.
#[derive(Debug, Serialize)]
struct Token {
    start_ts: i64,
    end_ts: i64,
    /// Attention per layer (mean over heads).
    weights: Vec<f32>,
}

/// The nearest past pattern.
#[derive(Debug, Serialize)]
struct Nearest {
    start_ts: i64,
    end_ts: i64,
    distance: f32,
    span_ms: i64,
    /// The current pattern is new: nothing in the memory is as close as
    /// the series' patterns usually are.
    novel: bool,
}

/// A top-attended range.
#[derive(Debug, Serialize)]
struct Attended {
    start_ts: i64,
    end_ts: i64,
    weight: f32,
}

#[derive(Debug, Serialize)]
struct AnomalyDetail<'a> {
    #[serde(flatten)]
    summary: AnomalySummary<'a>,
    expected_std: f32,
    channels: [f64; 6],
    channel_names: [&'static str; 6],
    /// The nearest past pattern in the series' memory (none before its
    /// first memory query).
    nearest: Option<Nearest>,
    /// The context's last grid timestamp, and its length and grid interval.
    context_end_ts: i64,
    context_points: usize,
    interval_ms: i64,
    layers: usize,
    /// Present context tokens, oldest first.
    tokens: Vec<Token>,
    top: Vec<Attended>,
    /// The series' points up to the anomaly, as kept.
    context_ts: &'a [i64],
    context_values: &'a [f32],
}

async fn anomaly(State(recent): State<SharedRecent>, Path(id): Path<u64>) -> Response {
    let Ok(r) = recent.lock() else {
        return unavailable();
    };
    let Some(a) = r.anomaly(id) else {
        return (
            StatusCode::NOT_FOUND,
            format!("anomaly {id} is not held (any more)\n"),
        )
            .into_response();
    };
    let e = &a.explanation;
    let tokens = (0..e.tokens())
        .filter(|&k| e.token_present(k))
        .map(|k| {
            let (start_ts, end_ts) = e.token_range(k);
            Token {
                start_ts,
                end_ts,
                weights: (0..e.layers).map(|l| e.layer(l)[k]).collect(),
            }
        })
        .collect();
    let top = e
        .top(5)
        .map(|r| Attended {
            start_ts: r.start_ts,
            end_ts: r.end_ts,
            weight: r.weight,
        })
        .collect();
    Json(AnomalyDetail {
        summary: summary(a),
        expected_std: a.point.expected_std,
        channels: a.channels.values(),
        channel_names: Channels::NAMES,
        nearest: a.nearest.map(|m| Nearest {
            start_ts: m.start_ts,
            end_ts: m.end_ts,
            distance: m.distance,
            span_ms: m.span_ms,
            novel: m.novel,
        }),
        context_end_ts: e.end_ts,
        context_points: e.context,
        interval_ms: e.interval,
        layers: e.layers,
        tokens,
        top,
        context_ts: &a.context_ts,
        context_values: &a.context_values,
    })
    .into_response()
}

async fn series_list(State(recent): State<SharedRecent>) -> Response {
    let Ok(r) = recent.lock() else {
        return unavailable();
    };
    let ids: Vec<String> = r.series_ids().iter().map(|s| s.to_string()).collect();
    Json(ids).into_response()
}

#[derive(Debug, Serialize)]
struct SeriesDetail<'a> {
    id: &'a str,
    points: Vec<PointView>,
}

async fn series(State(recent): State<SharedRecent>, Path(id): Path<String>) -> Response {
    let Ok(r) = recent.lock() else {
        return unavailable();
    };
    match r.points(&id) {
        Some(points) => Json(SeriesDetail { id: &id, points }).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            format!("series {id:?} is not held\n"),
        )
            .into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct IncidentQuery {
    limit: Option<usize>,
}

async fn incidents(State(recent): State<SharedRecent>, Query(q): Query<IncidentQuery>) -> Response {
    let Ok(r) = recent.lock() else {
        return unavailable();
    };
    let limit = q
        .limit
        .unwrap_or(50)
        .min(crate::recent::incidents::MAX_INCIDENTS);
    Json(r.incidents(limit)).into_response()
}

async fn incident(State(recent): State<SharedRecent>, Path(id): Path<String>) -> Response {
    let Ok(r) = recent.lock() else {
        return unavailable();
    };
    match r.incident(&id) {
        Some(i) => Json(i).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            format!("incident {id:?} is not held\n"),
        )
            .into_response(),
    }
}
