//! `attnwatch score`: its arguments and how it runs.

use std::path::PathBuf;

use clap::Args;

/// `attnwatch score`.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Input file (.csv with a header row, or .parquet).
    #[arg(long)]
    input: PathBuf,
    /// Output file (.parquet or .csv).
    #[arg(long)]
    output: PathBuf,
    /// Config file for the [window], [model], [score] and [publish] sections.
    #[arg(short, long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    columns: ColumnArgs,
    /// Also draw a PNG: series, score, anomalies, attention of the top anomaly.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// The columns of an input file (`score`, `replay`).
#[derive(Debug, Args)]
pub struct ColumnArgs {
    /// Series id column (default: the whole file is one series, named after
    /// the file).
    #[arg(long)]
    pub series_column: Option<String>,
    /// Timestamp column (epoch ms, RFC 3339, YYYY-MM-DD HH:MM:SS, or a datetime).
    #[arg(long, default_value = "timestamp")]
    pub ts_column: String,
    /// Value column.
    #[arg(long, default_value = "value")]
    pub value_column: String,
}

impl ColumnArgs {
    /// The columns as the file readers take them.
    pub fn columns(self) -> super::Columns {
        super::Columns {
            series: self.series_column,
            ts: self.ts_column,
            value: self.value_column,
        }
    }
}

/// Run `attnwatch score`.
pub fn exec(a: ScoreArgs) -> anyhow::Result<()> {
    let (c, mut engine) = crate::cli::config_and_engine(a.config)?;
    let opts = super::ScoreFile {
        input: a.input,
        output: a.output,
        columns: a.columns.columns(),
        plot: a.plot,
    };
    let s = super::run(&c, &mut engine, &opts)?;
    eprintln!(
        "scored {} of {} rows ({} series) in {:.2} s: {:.0} rows/s; {} anomalies; wrote {}{}",
        s.scored,
        s.rows,
        s.series,
        s.seconds,
        s.rows as f64 / s.seconds.max(1e-9),
        s.anomalies,
        opts.output.display(),
        opts.plot
            .as_ref()
            .map(|p| format!(" and {}", p.display()))
            .unwrap_or_default()
    );
    Ok(())
}
