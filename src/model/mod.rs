//! Model stage: the ONNX contract, the ONNX Runtime engine, and the
//! inference threads that batch runs across series (the forecasts they
//! leave per series are vocabulary: [`crate::flow::forecast`]).
//!
//! Owns the sessions and, per inference thread, the score stage's
//! per-series state. Does not read or write Kafka: it takes
//! [`crate::flow::Job`]s from the ingest stage and hands
//! [`crate::flow::Outgoing`] items to the publish stage, which owns the
//! output format.

pub mod contract;
pub mod engine;
pub mod library;
pub mod reload;
pub mod worker;

pub use contract::Contract;
pub use engine::{Engine, Inference, ModelError};

/// Something that forecasts the values after a batch of contexts: the ONNX
/// model, or a baseline that goes through the same stages.
pub trait Forecaster {
    /// The contract: context length, horizon, patch, attention shape.
    fn contract(&self) -> &Contract;

    /// Forecast `batch` contexts of `C` values each (oldest first, `NaN`
    /// where missing).
    fn forecast(&mut self, input: &[f32], batch: usize) -> Result<Inference, ModelError>;
}

impl Forecaster for Engine {
    fn contract(&self) -> &Contract {
        Engine::contract(self)
    }

    fn forecast(&mut self, input: &[f32], batch: usize) -> Result<Inference, ModelError> {
        self.infer(input, batch)
    }
}
