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
    /// Produce a synthetic load into a topic (benchmarks, soak tests): N
    /// series x M points, daily-like sines with noise, injected spikes and
    /// malformed records at the given rates.
    Loadgen {
        /// Target topic (created with --partitions if missing).
        #[arg(long)]
        topic: String,
        /// Kafka bootstrap servers.
        #[arg(long, default_value = "127.0.0.1:19092")]
        brokers: String,
        /// Number of series.
        #[arg(long, default_value_t = 100)]
        series: usize,
        /// Points per series.
        #[arg(long, default_value_t = 1000)]
        points: usize,
        /// Grid interval of the points.
        #[arg(long, default_value = "1m", value_parser = humantime_duration)]
        interval: Duration,
        /// Partitions of the topic when it is created.
        #[arg(long, default_value_t = 2)]
        partitions: i32,
        /// Points per message (more than 1: a JSON array).
        #[arg(long, default_value_t = 1)]
        per_message: usize,
        /// Share of points with an injected spike anomaly.
        #[arg(long, default_value_t = 0.001)]
        anomaly_rate: f64,
        /// Share of records that are malformed.
        #[arg(long, default_value_t = 0.0)]
        bad_rate: f64,
        /// Offered load in points per second (default: as fast as possible).
        #[arg(long)]
        rate: Option<f64>,
        /// Timestamp of the first point (epoch ms; default: now minus the series' span).
        #[arg(long)]
        start_ms: Option<i64>,
        /// Generator seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
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
        /// Rolling z-score baseline window length (repeatable; reported as
        /// baseline_zscore_w<N>). Default: 384, the fixed yardstick.
        #[arg(long, value_parser = clap::value_parser!(u32).range(2..=65536))]
        baseline_window: Vec<u32>,
        /// Model stride to evaluate (repeatable: the first is reported as
        /// `attnwatch`, the others as attnwatch_stride<S>). Default: model.stride.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
        stride: Vec<u32>,
        /// Also run the calibration ablations (subsets of the channels) of
        /// the baseline and the model.
        #[arg(long)]
        ablation: bool,
        /// Score every file this many times with its runs staggered
        /// differently, and report all phases together (1: once).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
        phases: u32,
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
                    stride,
                    ablation,
                    phases,
                },
        } => {
            let (c, mut engine) = config_and_engine(config)?;
            let files = attnwatch::eval::load_corpus(&data, &only)?;
            anyhow::ensure!(
                !files.is_empty(),
                "no NAB files found under {}",
                data.display()
            );
            let mut baseline_windows: Vec<usize> =
                baseline_window.into_iter().map(|w| w as usize).collect();
            if baseline_windows.is_empty() {
                baseline_windows.push(384);
            }
            let mut strides: Vec<usize> = stride.into_iter().map(|s| s as usize).collect();
            if strides.is_empty() {
                strides.push(c.model.stride);
            }
            let horizon = engine.contract().horizon;
            anyhow::ensure!(
                strides.iter().all(|s| *s <= horizon),
                "strides must be at most the model's horizon ({horizon})"
            );
            let options = attnwatch::eval::Options {
                batch: c.model.max_batch,
                baseline_windows,
                strides,
                ablation,
                phases: phases as usize,
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
        Command::Loadgen {
            topic,
            brokers,
            series,
            points,
            interval,
            partitions,
            per_message,
            anomaly_rate,
            bad_rate,
            rate,
            start_ms,
            seed,
        } => {
            anyhow::ensure!(
                (0.0..=1.0).contains(&anomaly_rate) && (0.0..=1.0).contains(&bad_rate),
                "--anomaly-rate and --bad-rate must be in [0, 1]"
            );
            anyhow::ensure!(
                series > 0 && points > 0,
                "--series and --points must be positive"
            );
            let interval_ms = i64::try_from(interval.as_millis())
                .unwrap_or(i64::MAX)
                .max(1);
            let start_ms = start_ms.unwrap_or_else(|| {
                chrono::Utc::now().timestamp_millis() - interval_ms * points as i64
            });
            let spec = attnwatch::tools::loadgen::LoadSpec {
                brokers,
                topic,
                partitions,
                series,
                points,
                interval_ms,
                start_ms,
                per_message,
                anomaly_rate,
                bad_rate,
                rate,
                seed,
            };
            let total = (series * points).div_ceil(per_message.max(1));
            let r = rt.block_on(attnwatch::tools::loadgen::run(&spec, |sent| {
                eprintln!("loadgen: {sent} of about {total} messages sent");
            }))?;
            println!(
                "produced {} messages ({} points, {} bad records, {} injected anomalies) to {} in {:.2} s: {:.0} points/s",
                r.messages,
                r.points,
                r.bad,
                r.anomalies,
                spec.topic,
                r.seconds,
                r.points as f64 / r.seconds.max(1e-9)
            );
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
    let lib = attnwatch::model::library::find(&c.model)?.path;
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
