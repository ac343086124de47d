//! Model stage: the ONNX contract, the ONNX Runtime engine, and the
//! inference threads that batch windows across series.
//!
//! Owns the sessions and the per-shard calibration state. Does not read or
//! write Kafka: it takes [`worker::Job`]s from the ingest stage and hands
//! encoded messages to the publish stage.

pub mod contract;
pub mod engine;
pub mod worker;

pub use contract::Contract;
pub use engine::{Engine, Inference, ModelError};
