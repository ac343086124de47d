//! Operator tools that sit beside the service: replaying a file into the
//! input topic, generating a synthetic load, summarising an output topic
//! (with its alerts beside labelled windows), and Kafka's own floor for
//! the benchmark (a pass-through with the service's clients and formats).
//! They use the same message formats as the service and are what the demo
//! and load tests drive.

pub mod floor;
pub mod labels;
pub mod loadgen;
pub mod replay;
pub mod summarize;
pub mod topics;
