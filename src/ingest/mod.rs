//! Ingest stage: Kafka consumer, decoding, windowing of each sample, and
//! the offset bookkeeping behind the delivery guarantee (at-least-once, or
//! exactly-once with transactions).
//!
//! [`decode`], [`offsets`] and [`marks`] are pure; [`client`] builds every
//! Kafka client's settings (secrets included) and rate-limits their error
//! reports; [`kafka`] holds the consumer, its rebalance handling (window
//! rebuild on assignment) and the offset store; [`consume`] is the consume
//! loop; [`transaction`] commits outputs and input offsets together in
//! exactly_once mode, with the idle timers' [`marks`]; [`stage`] turns one
//! consumed message into model jobs and dead letters.

pub mod client;
pub mod consume;
pub mod decode;
pub mod kafka;
pub mod marks;
pub mod offsets;
pub mod stage;
pub mod transaction;
