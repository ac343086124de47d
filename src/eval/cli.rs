//! `attnwatch eval`: its arguments and how it runs.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// What `eval` measures.
#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Score NAB-format data (data/<category>/<file>.csv + labels/combined_windows.json)
    /// with the model and a rolling z-score baseline; print and write the NAB table.
    Nab(NabArgs),
}

/// `attnwatch eval nab`.
#[derive(Debug, Args)]
pub struct NabArgs {
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
    /// Do not run the baseline (faster, when only the model's figures are
    /// wanted).
    #[arg(long, conflicts_with = "baseline_window")]
    skip_baseline: bool,
    /// Model stride to evaluate (repeatable: the first is reported as
    /// `attnwatch`, the others as attnwatch_stride<S>). Default: model.stride.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    stride: Vec<u32>,
    /// Also run the calibration ablations of the model: each channel left
    /// out, each channel alone, the forecast channels together.
    #[arg(long)]
    ablation: bool,
    /// Also write a diagnosis per labelled window and per file
    /// (explain.md, explain.json in each main detector's directory): caught
    /// or missed, where the first alert fell, the channel that fired, the
    /// highest score in a missed window, false positives by channel.
    #[arg(long)]
    explain: bool,
    /// Score every file this many times with its runs staggered
    /// differently, and report all phases together (1: once).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    phases: u32,
}

/// Run `attnwatch eval ...`.
pub fn exec(cmd: EvalCommand) -> anyhow::Result<()> {
    let EvalCommand::Nab(a) = cmd;
    let (c, mut engine) = crate::cli::config_and_engine(a.config)?;
    let files = super::load_corpus(&a.data, &a.only)?;
    anyhow::ensure!(
        !files.is_empty(),
        "no NAB files found under {}",
        a.data.display()
    );
    let mut baseline_windows: Vec<usize> =
        a.baseline_window.into_iter().map(|w| w as usize).collect();
    if baseline_windows.is_empty() && !a.skip_baseline {
        baseline_windows.push(384);
    }
    let mut strides: Vec<usize> = a.stride.into_iter().map(|s| s as usize).collect();
    if strides.is_empty() {
        strides.push(c.model.stride);
    }
    let horizon = engine.contract().horizon;
    anyhow::ensure!(
        strides.iter().all(|s| *s <= horizon),
        "strides must be at most the model's horizon ({horizon})"
    );
    let options = super::Options {
        batch: c.model.max_batch,
        baseline_windows,
        strides,
        ablation: a.ablation,
        phases: a.phases as usize,
        explain: a.explain,
    };
    let reports = super::run(&files, &mut engine, &c.window, &c.score, &options, &a.out)?;
    print!(
        "{}",
        super::render(&reports, &files, &engine.contract().id())
    );
    eprintln!("results written under {}", a.out.display());
    Ok(())
}
