//! The `attnwatch` binary: parse the CLI, start tracing, dispatch. Each
//! subcommand's arguments and run function live beside its module.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use attnwatch::{app, backtest, config, eval, tools};

/// Streaming time-series anomaly detector: Kafka in, Transformer-encoder
/// attention model (ONNX Runtime) per point, scores and attention out.
#[derive(Parser)]
#[command(name = "attnwatch", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service. Config values can be overridden with
    /// ATTNWATCH__SECTION__KEY environment variables.
    Run(app::RunArgs),
    /// Validate a config file (with environment overrides) and print the result.
    CheckConfig(config::cli::CheckConfigArgs),
    /// Create the configured input, output and dead-letter topics if missing.
    CreateTopics(tools::topics::CreateTopicsArgs),
    /// Score a CSV or Parquet file (replay / backtest) with the service's own
    /// window, model and calibration; write one row per scored point.
    Score(backtest::cli::ScoreArgs),
    /// Measure detection quality.
    Eval {
        #[command(subcommand)]
        what: eval::cli::EvalCommand,
    },
    /// Produce a file (CSV or Parquet) into a Kafka topic in the input format.
    Replay(tools::replay::ReplayArgs),
    /// Produce a synthetic load into a topic (benchmarks, soak tests): N
    /// series x M points, daily-like sines with noise, injected spikes and
    /// malformed records at the given rates.
    Loadgen(tools::loadgen::LoadgenArgs),
    /// Read an output topic and print a summary of scores and anomalies.
    Summarize(tools::summarize::SummarizeArgs),
    /// Kafka's own floor (scripts/bench): consume, decode, encode an output
    /// of the service's size and produce it, with the service's settings and
    /// no window, model or score; print the CPU it took per point.
    Floor(tools::floor::FloorArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Run(a) => app::exec(a),
        Command::CheckConfig(a) => config::cli::exec(a),
        Command::CreateTopics(a) => tools::topics::exec(a),
        Command::Score(a) => backtest::cli::exec(a),
        Command::Eval { what } => eval::cli::exec(what),
        Command::Replay(a) => tools::replay::exec(a),
        Command::Loadgen(a) => tools::loadgen::exec(a),
        Command::Summarize(a) => tools::summarize::exec(a),
        Command::Floor(a) => tools::floor::exec(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("attnwatch: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
