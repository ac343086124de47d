//! Ingest stage: Kafka consumer, decoding, windowing of each sample, and
//! the offset bookkeeping that makes delivery at-least-once.
//!
//! [`decode`] and [`offsets`] are pure; [`kafka`] holds the consumer, its
//! rebalance handling (window rebuild on assignment) and the offset store;
//! [`stage`] turns one consumed message into model jobs and dead letters.

pub mod decode;
pub mod kafka;
pub mod offsets;
pub mod stage;
