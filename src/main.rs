//! The `attnwatch` binary: parse the CLI, start tracing, load config, run.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use attnwatch::config::Config;
use attnwatch::tools::{replay, summarize};

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
    Run {
        /// TOML config file (see config/attnwatch.example.toml).
        #[arg(short, long, default_value = "config/attnwatch.example.toml")]
        config: PathBuf,
    },
    /// Validate a config file (with environment overrides) and print the result.
    CheckConfig {
        /// TOML config file.
        config: PathBuf,
    },
    /// Create the configured input, output and dead-letter topics if missing.
    CreateTopics {
        /// TOML config file.
        #[arg(short, long, default_value = "config/attnwatch.example.toml")]
        config: PathBuf,
        /// Partitions per topic.
        #[arg(long, default_value_t = 3)]
        partitions: i32,
        /// Replication factor.
        #[arg(long, default_value_t = 1)]
        replication: i32,
    },
    /// Score a CSV or Parquet file (replay / backtest) with the service's own
    /// window, model and calibration; write one row per scored point.
    Score {
        /// Input file (.csv with a header row, or .parquet).
        #[arg(long)]
        input: PathBuf,
        /// Output file (.parquet or .csv).
        #[arg(long)]
        output: PathBuf,
        /// Config file for the [window], [model], [score] and [publish] sections.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Series id column (default: the whole file is one series, named after the file).
        #[arg(long)]
        series_column: Option<String>,
        /// Timestamp column (epoch ms, RFC 3339, YYYY-MM-DD HH:MM:SS, or a datetime).
        #[arg(long, default_value = "timestamp")]
        ts_column: String,
        /// Value column.
        #[arg(long, default_value = "value")]
        value_column: String,
        /// Also draw a PNG: series, score, anomalies, attention of the top anomaly.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Measure detection quality.
    Eval {
        #[command(subcommand)]
        what: EvalCommand,
    },
    /// Produce a file (CSV or Parquet) into a Kafka topic in the input format.
    Replay {
        /// CSV file with a header row, or Parquet.
        #[arg(long)]
        input: PathBuf,
        /// Target topic.
        #[arg(long)]
        topic: String,
        /// Kafka bootstrap servers.
        #[arg(long, default_value = "127.0.0.1:19092")]
        brokers: String,
        /// Series id to send (default: the file name without extension).
        #[arg(long, conflicts_with = "series_column")]
        series: Option<String>,
        /// Series id column, for files with several series.
        #[arg(long)]
        series_column: Option<String>,
        /// Timestamp column.
        #[arg(long, default_value = "timestamp")]
        ts_column: String,
        /// Value column.
        #[arg(long, default_value = "value")]
        value_column: String,
        /// Replay speed relative to the file's timestamps.
        #[arg(long, conflicts_with = "as_fast_as_possible")]
        speed: Option<f64>,
        /// Send without pacing (the default when --speed is not given).
        #[arg(long)]
        as_fast_as_possible: bool,
        /// Repeat the file forever, shifting timestamps forward each pass.
        #[arg(long = "loop", conflicts_with = "passes")]
        forever: bool,
        /// Number of passes over the file (timestamps shifted each pass).
        #[arg(long, default_value_t = 1)]
        passes: u64,
        /// File touched after each sent batch (for healthchecks).
        #[arg(long)]
        progress_file: Option<PathBuf>,
    },
    /// Read an output topic and print a summary of scores and anomalies.
    Summarize {
        /// Output topic.
        #[arg(long)]
        topic: String,
        /// Kafka bootstrap servers.
        #[arg(long, default_value = "127.0.0.1:19092")]
        brokers: String,
        /// Stop after this many records.
        #[arg(long)]
        expect: usize,
        /// Stop after this long at most.
        #[arg(long, default_value = "120s", value_parser = humantime_duration)]
        timeout: Duration,
        /// How many top-scoring points to list.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Score NAB-format data (data/<category>/<file>.csv + labels/combined_windows.json)
    /// with the model and a rolling z-score baseline; print and write the NAB table.
    Nab {
        /// NAB-format directory.
        #[arg(long)]
        data: PathBuf,
        /// Output directory for result files and summary.md.
        #[arg(long)]
        out: PathBuf,
        /// Config file for the [model] and [score] sections (defaults if absent).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Only files whose category/name contains one of these strings.
        #[arg(long)]
        only: Vec<String>,
        /// Also score a rolling z-score baseline with this window length
        /// (repeatable; reported as baseline_zscore_w<N>). The default
        /// baseline uses the model's window.
        #[arg(long, value_parser = clap::value_parser!(u32).range(2..=65536))]
        baseline_window: Vec<u32>,
    },
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("attnwatch: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::CheckConfig { config } => {
            let c = Config::load(&config)?;
            println!("{}: ok", config.display());
            println!("{}", toml::to_string_pretty(&c)?);
            Ok(())
        }
        Command::Run { config } => {
            let c = Config::load(&config)?;
            rt.block_on(async {
                let shutdown = CancellationToken::new();
                tokio::spawn(signals(shutdown.clone()));
                attnwatch::app::run(c, shutdown).await
            })?;
            Ok(())
        }
        Command::Score {
            input,
            output,
            config,
            series_column,
            ts_column,
            value_column,
            plot,
        } => {
            let (c, mut engine) = config_and_engine(config)?;
            let opts = attnwatch::backtest::ScoreFile {
                input,
                output,
                columns: attnwatch::backtest::Columns {
                    series: series_column,
                    ts: ts_column,
                    value: value_column,
                },
                plot,
            };
            let s = attnwatch::backtest::run(&c, &mut engine, &opts)?;
            eprintln!(
                "scored {} of {} rows ({} series) in {:.2} s: {:.0} rows/s; {} anomalies; wrote {}{}",
                s.scored,
                s.rows,
                s.series,
                s.seconds,
                s.rows as f64 / s.seconds.max(1e-9),
                s.anomalies,
                opts.output.display(),
                opts.plot.as_ref().map(|p| format!(" and {}", p.display())).unwrap_or_default()
            );
            Ok(())
        }
        Command::Eval {
            what:
                EvalCommand::Nab {
                    data,
                    out,
                    config,
                    only,
                    baseline_window,
                },
        } => {
            let (c, mut engine) = config_and_engine(config)?;
            let files = attnwatch::eval::load_corpus(&data, &only)?;
            anyhow::ensure!(
                !files.is_empty(),
                "no NAB files found under {}",
                data.display()
            );
            let options = attnwatch::eval::Options {
                batch: c.model.max_batch,
                baseline_windows: baseline_window.into_iter().map(|w| w as usize).collect(),
            };
            let reports =
                attnwatch::eval::run(&files, &mut engine, &c.window, &c.score, &options, &out)?;
            print!(
                "{}",
                attnwatch::eval::render(&reports, &files, &engine.contract().id())
            );
            eprintln!("results written under {}", out.display());
            Ok(())
        }
        Command::CreateTopics {
            config,
            partitions,
            replication,
        } => {
            let c = Config::load(&config)?;
            let created = rt.block_on(attnwatch::tools::topics::create(
                &c.kafka,
                partitions,
                replication,
            ))?;
            for (topic, new) in created {
                eprintln!("{topic}: {}", if new { "created" } else { "exists" });
            }
            Ok(())
        }
        Command::Replay {
            input,
            topic,
            brokers,
            series,
            series_column,
            ts_column,
            value_column,
            speed,
            as_fast_as_possible: _,
            forever,
            passes,
            progress_file,
        } => {
            let default_series = series.unwrap_or_else(|| {
                input
                    .file_stem()
                    .map_or_else(|| "series".into(), |s| s.to_string_lossy().into_owned())
            });
            let columns = attnwatch::backtest::Columns {
                series: series_column,
                ts: ts_column,
                value: value_column,
            };
            let data = attnwatch::backtest::files::read_series(&input, &columns, &default_series)?;
            let pace = speed.map_or(replay::Pace::AsFastAsPossible, replay::Pace::Speed);
            let opts = replay::ReplayOptions {
                passes: if forever { 0 } else { passes },
                progress_file,
            };
            for s in &data {
                let rows: Vec<replay::Row> =
                    s.ts.iter()
                        .zip(&s.values)
                        .map(|(ts, value)| replay::Row {
                            ts: *ts,
                            value: *value,
                        })
                        .collect();
                let n = rt.block_on(replay::replay_with(
                    &brokers, &topic, &s.series, &rows, pace, &opts,
                ))?;
                eprintln!(
                    "replayed {n} rows of {} as series {:?} into {topic}",
                    input.display(),
                    s.series
                );
            }
            Ok(())
        }
        Command::Summarize {
            topic,
            brokers,
            expect,
            timeout,
            top,
        } => {
            let records = rt
                .block_on(summarize::collect(&brokers, &topic, expect, timeout))
                .context("reading the output topic")?;
            print!("{}", summarize::render(&records, top));
            if records.len() < expect {
                anyhow::bail!(
                    "only {} of {expect} records arrived within {timeout:?}",
                    records.len()
                );
            }
            Ok(())
        }
    }
}

/// The config (a file, or defaults) with environment overrides, and the
/// model loaded from it: what the offline commands (`score`, `eval`) need.
fn config_and_engine(path: Option<PathBuf>) -> anyhow::Result<(Config, attnwatch::model::Engine)> {
    let c = match path {
        Some(p) => Config::load(&p)?,
        None => Config::from_toml_and_env("", std::env::vars())?,
    };
    let lib = c
        .onnxruntime_library()
        .context("set ORT_DYLIB_PATH or model.onnxruntime_library")?;
    let engine = attnwatch::model::Engine::load(&c.model, &lib)?;
    Ok((c, engine))
}

/// First SIGTERM/SIGINT: graceful drain. Second: exit at once.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("signal received: draining (send again to exit at once)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: exiting without drain");
    std::process::exit(130);
}
