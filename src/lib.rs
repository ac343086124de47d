//! attnwatch: a streaming time-series anomaly detector.
//!
//! The modules follow the data flow, in pipeline order:
//!
//! `config` -> `ingest` (Kafka consumer, decode, offsets) -> `window`
//! (per-series ring buffers) -> `model` (ONNX Runtime sessions on dedicated
//! threads, batching) -> `score` (per-series calibration, thresholds) ->
//! `publish` (output encoding, Kafka producer) -> `recent` (what the web
//! page shows: bounded recent points and anomalies) -> `metrics` / `server`
//! (HTTP `/metrics`, `/healthz`, `/readyz`, the page and `/api/*`).
//!
//! [`app`] wires the stages together with bounded channels. The window and
//! score modules are pure (no I/O, no tokio), so they are cheap to test.
#![warn(missing_docs)]

pub mod alerting;
pub mod app;
pub mod backtest;
pub mod cli;
pub mod config;
pub mod eval;
pub mod feedback;
pub mod flow;
pub mod ingest;
pub mod log_limit;
pub mod metrics;
pub mod model;
pub mod publish;
pub mod recent;
pub mod score;
pub mod server;
pub mod tools;
pub mod ui;
pub mod window;
