//! `attnwatch replay`: produce a CSV file into Kafka in the input format.
//!
//! The file has a header with a timestamp column and a value column (NAB's
//! `timestamp,value` by default). Timestamps are epoch milliseconds, RFC
//! 3339, or `YYYY-MM-DD HH:MM:SS` (read as UTC). Rows are sent in file order,
//! one JSON object per message, keyed by the series id, either as fast as
//! possible or paced by the file's own timestamps times `speed`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;

/// Errors of the replay tool.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// File.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// A row could not be parsed.
    #[error("{path}:{line}: {reason}")]
    Row {
        /// File.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// Why.
        reason: String,
    },
    /// Kafka failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// One row of a series file.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Epoch ms.
    pub ts: i64,
    /// Value.
    pub value: f64,
}

/// Parse a timestamp: epoch ms, RFC 3339, or `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn parse_ts(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|t| t.and_utc().timestamp_millis())
}

/// Read `ts_col` and `value_col` of a CSV file with a header row.
pub fn read_csv(path: &Path, ts_col: &str, value_col: &str) -> Result<Vec<Row>, ReplayError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReplayError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let row_err = |line: usize, reason: String| ReplayError::Row {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut lines = text.lines().enumerate();
    let header: Vec<&str> = lines
        .next()
        .map(|(_, h)| h.split(',').map(str::trim).collect())
        .unwrap_or_default();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| row_err(1, format!("no column {name:?} in header {header:?}")))
    };
    let (ti, vi) = (col(ts_col)?, col(value_col)?);
    let mut rows = Vec::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        let (Some(t), Some(v)) = (fields.get(ti), fields.get(vi)) else {
            return Err(row_err(i + 1, "too few columns".into()));
        };
        let ts = parse_ts(t).ok_or_else(|| row_err(i + 1, format!("bad timestamp {t:?}")))?;
        let value = v
            .trim()
            .parse::<f64>()
            .map_err(|e| row_err(i + 1, format!("bad value {v:?}: {e}")))?;
        rows.push(Row { ts, value });
    }
    Ok(rows)
}

/// Pacing of a replay.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// No waiting between rows.
    AsFastAsPossible,
    /// Wait the file's time delta divided by this factor.
    Speed(f64),
}

/// Options of a replay beyond the data itself.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Passes over the file; 0 repeats forever. Each pass after the first
    /// shifts timestamps by the file's span plus one step, so the series
    /// keeps moving forward in time (a repeat is not late data).
    pub passes: u64,
    /// File touched after every flushed batch (a liveness signal for
    /// container healthchecks).
    pub progress_file: Option<PathBuf>,
}

/// Timestamp shift of pass `pass` (0-based) over `rows`.
pub fn pass_shift(rows: &[Row], pass: u64) -> i64 {
    match (rows.first(), rows.last()) {
        (Some(a), Some(b)) if rows.len() > 1 => {
            let step = (b.ts - a.ts) / (rows.len() as i64 - 1);
            (b.ts - a.ts + step.max(1)).saturating_mul(pass as i64)
        }
        _ => pass as i64,
    }
}

/// Produce `rows` of series `series` to `topic` (once, or in passes per
/// `opts`). Prints progress to stderr. Returns the rows sent.
pub async fn replay_with(
    brokers: &str,
    topic: &str,
    series: &str,
    rows: &[Row],
    pace: Pace,
    opts: &ReplayOptions,
) -> Result<usize, ReplayError> {
    let mut sent = 0;
    let mut pass = 0u64;
    while opts.passes == 0 || pass < opts.passes {
        let shift = pass_shift(rows, pass);
        let shifted: Vec<Row> = rows
            .iter()
            .map(|r| Row {
                ts: r.ts.saturating_add(shift),
                value: r.value,
            })
            .collect();
        sent += replay(
            brokers,
            topic,
            series,
            &shifted,
            pace,
            opts.progress_file.as_deref(),
        )
        .await?;
        pass += 1;
    }
    Ok(sent)
}

/// Produce `rows` of series `series` to `topic`, once. Prints progress to stderr.
pub async fn replay(
    brokers: &str,
    topic: &str,
    series: &str,
    rows: &[Row],
    pace: Pace,
    progress_file: Option<&Path>,
) -> Result<usize, ReplayError> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    let started = Instant::now();
    let mut pending = Vec::with_capacity(1024);
    for (i, row) in rows.iter().enumerate() {
        if let (Pace::Speed(factor), Some(first)) = (pace, rows.first()) {
            let due = Duration::from_secs_f64(
                ((row.ts - first.ts).max(0) as f64 / 1000.0) / factor.max(1e-9),
            );
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let payload =
            serde_json::json!({"series": series, "ts": row.ts, "value": row.value}).to_string();
        let send = producer.send_result(FutureRecord::to(topic).key(series).payload(&payload));
        match send {
            Ok(fut) => pending.push(fut),
            Err((e, _)) => return Err(e.into()),
        }
        if pending.len() >= 1024 || i + 1 == rows.len() {
            for fut in pending.drain(..) {
                match fut.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(e.into()),
                    Err(_) => return Err(rdkafka::error::KafkaError::Canceled.into()),
                }
            }
            eprintln!("replay: {}/{} rows sent to {topic}", i + 1, rows.len());
            if let Some(p) = progress_file {
                std::fs::write(p, format!("{}\n", i + 1)).map_err(|source| ReplayError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
            }
        }
    }
    producer.flush(Timeout::After(Duration::from_secs(30)))?;
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_all_three_forms() {
        assert_eq!(parse_ts("1700000000000"), Some(1_700_000_000_000));
        assert_eq!(parse_ts("2014-04-01 00:00:00"), Some(1_396_310_400_000));
        assert_eq!(parse_ts("2014-04-01T00:00:00Z"), Some(1_396_310_400_000));
        assert_eq!(parse_ts("April"), None);
    }

    #[test]
    fn passes_shift_by_span_plus_one_step() {
        let rows: Vec<Row> = (0..4)
            .map(|i| Row {
                ts: 1000 + i * 60_000,
                value: 0.0,
            })
            .collect();
        assert_eq!(pass_shift(&rows, 0), 0);
        assert_eq!(pass_shift(&rows, 1), 240_000);
        assert_eq!(pass_shift(&rows, 2), 480_000);
        // The first row of pass 1 comes one step after the last row of pass 0.
        assert_eq!(rows[0].ts + pass_shift(&rows, 1), rows[3].ts + 60_000);
    }

    #[test]
    fn reads_a_nab_file() {
        let dir = std::env::temp_dir().join(format!("attnwatch-replay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s.csv");
        std::fs::write(
            &p,
            "timestamp,value\n2014-04-01 00:00:00,1.5\n2014-04-01 00:05:00,2\n",
        )
        .unwrap();
        let rows = read_csv(&p, "timestamp", "value").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].ts - rows[0].ts, 300_000);
        std::fs::write(&p, "timestamp,value\nx,1\n").unwrap();
        assert!(read_csv(&p, "timestamp", "value")
            .unwrap_err()
            .to_string()
            .contains(":2:"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// `attnwatch replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
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
    #[command(flatten)]
    columns: crate::backtest::cli::ColumnArgs,
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
}

/// Run `attnwatch replay`.
pub fn exec(a: ReplayArgs) -> anyhow::Result<()> {
    let input = a.input;
    let default_series = a.series.unwrap_or_else(|| {
        input
            .file_stem()
            .map_or_else(|| "series".into(), |s| s.to_string_lossy().into_owned())
    });
    let columns = a.columns.columns();
    let data = crate::backtest::files::read_series(&input, &columns, &default_series)?;
    let pace = a.speed.map_or(Pace::AsFastAsPossible, Pace::Speed);
    let opts = ReplayOptions {
        passes: if a.forever { 0 } else { a.passes },
        progress_file: a.progress_file,
    };
    let rt = crate::cli::runtime()?;
    for s in &data {
        let rows: Vec<Row> =
            s.ts.iter()
                .zip(&s.values)
                .map(|(ts, value)| Row {
                    ts: *ts,
                    value: *value,
                })
                .collect();
        let n = rt.block_on(replay_with(
            &a.brokers, &a.topic, &s.series, &rows, pace, &opts,
        ))?;
        eprintln!(
            "replayed {n} rows of {} as series {:?} into {}",
            input.display(),
            s.series,
            a.topic
        );
    }
    Ok(())
}
