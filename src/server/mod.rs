//! HTTP server: `/metrics` (Prometheus text format), `/healthz` (the
//! process is alive), `/readyz` (model loaded and warm, partitions
//! assigned), and, with `ui.enabled`, the web page and its JSON API
//! ([`crate::ui`]), every route behind the access rules of [`auth`] (an
//! optional bearer token). It owns no pipeline state; it reads [`Health`],
//! the metrics registry and the page's store.

pub mod auth;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{middleware, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

pub use auth::{Access, ApiToken, Endpoint, TokenError};

/// Readiness flags set by the pipeline.
#[derive(Debug, Default)]
pub struct Health {
    /// Every inference session is loaded and has run once.
    pub model_warm: AtomicBool,
    /// The service is draining (not ready for traffic any more).
    pub draining: AtomicBool,
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Arc<Health>,
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    s.metrics.ready.set(i64::from(ready(&s).0));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Whether the service is ready, and the JSON that says why (not).
fn ready(s: &AppState) -> (bool, String) {
    let model = s.health.model_warm.load(Ordering::Relaxed);
    let partitions = s.metrics.assigned_partitions.get();
    let draining = s.health.draining.load(Ordering::Relaxed);
    let body = format!(
        "{{\"model_warm\":{model},\"assigned_partitions\":{partitions},\"draining\":{draining}}}\n"
    );
    (model && partitions > 0 && !draining, body)
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let (is_ready, body) = ready(&s);
    s.metrics.ready.set(i64::from(is_ready));
    let status = if is_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, "not found\n")
}

/// Every route: metrics, health, the page and its API when `page` is
/// given, and a 404 fallback, all behind `access`.
pub fn router(
    metrics: Metrics,
    health: Arc<Health>,
    page: Option<crate::ui::Page>,
    access: Access,
) -> Router {
    let guard = auth::Guard {
        access,
        metrics: metrics.clone(),
    };
    let mut app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health });
    if let Some(page) = page {
        app = app.merge(crate::ui::routes(page));
    }
    app.fallback(not_found)
        .layer(middleware::from_fn_with_state(guard, auth::guard))
}

/// Bind `addr` and serve `router` until `shutdown` is cancelled. Returns
/// the bound address (useful with port 0) and the server task.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let result = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "http server failed");
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests;
