//! `GET /api/events`: server-sent events, pushed to the page as they
//! happen, behind the API's access rule like every `/api/*` route:
//!
//! - `event: anomaly`, `id: <anomaly id>`, `data:` the anomaly as
//!   `/api/anomalies` lists it (with `alert` and `incident`);
//! - `event: incident`, `id: <incident id>`, `data:` the incident as
//!   `/api/incidents/{id}` gives it, on each open, update and close;
//! - `event: resync` when the stream fell behind (more than 1,024 new
//!   anomalies unread) or an anomaly is no longer held: re-read the list.
//!
//! A comment line keeps the connection alive every 15 s. Streams end when
//! the service shuts down. The page also polls, less often while its
//! stream is open, so it stays right without it.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;
use tokio_util::sync::CancellationToken;

use super::{summary, unavailable, Page};
use crate::recent::{Pushed, SharedRecent};

/// What one stream holds between events.
struct Stream {
    rx: Receiver<Pushed>,
    recent: SharedRecent,
    stop: CancellationToken,
}

/// The event for anomaly `id`, or a resync if it is gone already.
fn anomaly_event(recent: &SharedRecent, id: u64) -> Event {
    let json = recent.lock().ok().and_then(|r| {
        r.anomaly(id)
            .and_then(|a| serde_json::to_string(&summary(a)).ok())
    });
    match json {
        Some(j) => Event::default().event("anomaly").id(id.to_string()).data(j),
        None => Event::default().event("resync").data("{}"),
    }
}

/// The event for incident `id`, or a resync if it is gone already.
fn incident_event(recent: &SharedRecent, id: &str) -> Event {
    let json = recent
        .lock()
        .ok()
        .and_then(|r| r.incident(id).and_then(|i| serde_json::to_string(i).ok()));
    match json {
        Some(j) => Event::default().event("incident").id(id).data(j),
        None => Event::default().event("resync").data("{}"),
    }
}

pub(super) async fn events(State(page): State<Page>) -> Response {
    let rx = match page.recent.lock() {
        Ok(r) => r.subscribe(),
        Err(_) => return unavailable(),
    };
    let start = Stream {
        rx,
        recent: page.recent.clone(),
        stop: page.stop.clone(),
    };
    let stream = futures_util::stream::unfold(start, |mut s| async move {
        let got = tokio::select! {
            got = s.rx.recv() => got,
            () = s.stop.cancelled() => return None,
        };
        let event = match got {
            Ok(Pushed::Anomaly(id)) => anomaly_event(&s.recent, id),
            Ok(Pushed::Incident(id)) => incident_event(&s.recent, &id),
            Err(RecvError::Lagged(missed)) => Event::default()
                .event("resync")
                .data(format!("{{\"missed\":{missed}}}")),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok::<Event, Infallible>(event), s))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
