//! `attnwatch summarize`: read an output topic and print what it holds:
//! the count, the score distribution and the top anomalies. Reads from the
//! beginning with a throw-away consumer group and stops after `expect`
//! records or when `timeout` passes.

use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;

/// One output record, as much as the summary needs.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ScoreRecord {
    /// Series id.
    pub series: String,
    /// Epoch ms.
    pub ts: i64,
    /// Value (single-value samples).
    pub value: Option<f64>,
    /// Normalised score.
    pub score: f64,
    /// Anomaly flag.
    pub anomaly: bool,
    /// This point opened an incident (what would page someone).
    #[serde(default)]
    pub alert: bool,
    /// Raw model score.
    pub raw_score: f64,
}

/// Read up to `expect` records from `topic` (deadline `timeout`).
pub async fn collect(
    brokers: &str,
    topic: &str,
    expect: usize,
    timeout: Duration,
) -> Result<Vec<ScoreRecord>, rdkafka::error::KafkaError> {
    let group = format!(
        "attnwatch-summarize-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    );
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(expect);
    while out.len() < expect {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, consumer.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => tracing::warn!(error = %e, "summarize: consume error"),
            Ok(Ok(m)) => {
                if let Some(Ok(r)) = m.payload().map(serde_json::from_slice::<ScoreRecord>) {
                    out.push(r);
                }
            }
        }
    }
    Ok(out)
}

/// A readable summary of `records`.
pub fn render(records: &[ScoreRecord], top: usize) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if records.is_empty() {
        return "no scored records\n".into();
    }
    let mut scores: Vec<f64> = records.iter().map(|r| r.score).collect();
    scores.sort_by(f64::total_cmp);
    let q = |p: f64| scores[((scores.len() - 1) as f64 * p).round() as usize];
    let anomalies: Vec<&ScoreRecord> = records.iter().filter(|r| r.anomaly).collect();
    let _ = writeln!(
        s,
        "scored points: {}   anomalies: {}   alerts: {}",
        records.len(),
        anomalies.len(),
        anomalies.iter().filter(|r| r.alert).count()
    );
    let _ = writeln!(
        s,
        "score quantiles: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0)
    );
    let mut ranked: Vec<&ScoreRecord> = records.iter().collect();
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
    let _ = writeln!(s, "top {} points by score:", top.min(ranked.len()));
    let _ = writeln!(
        s,
        "  {:<24} {:<22} {:>14} {:>9} {:>9}  anomaly",
        "series", "time (UTC)", "value", "score", "raw"
    );
    for r in ranked.iter().take(top) {
        let when = chrono::DateTime::from_timestamp_millis(r.ts)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| r.ts.to_string());
        let _ = writeln!(
            s,
            "  {:<24} {:<22} {:>14.3} {:>9.3} {:>9.3}  {}",
            r.series.chars().take(24).collect::<String>(),
            when,
            r.value.unwrap_or(f64::NAN),
            r.score,
            r.raw_score,
            match (r.anomaly, r.alert) {
                (true, true) => "YES (alert)",
                (true, false) => "YES",
                _ => "",
            }
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_ranks_by_score() {
        let rec = |ts, score, anomaly| ScoreRecord {
            series: "s".into(),
            ts,
            value: Some(1.0),
            score,
            anomaly,
            alert: anomaly,
            raw_score: score * 4.0,
        };
        let text = render(
            &[
                rec(0, 0.2, false),
                rec(60_000, 3.0, true),
                rec(120_000, 0.5, false),
            ],
            2,
        );
        assert!(text.contains("scored points: 3   anomalies: 1"), "{text}");
        let top = text.lines().nth(4).unwrap();
        assert!(
            top.contains("1970-01-01 00:01:00") && top.contains("YES"),
            "{text}"
        );
    }
}

/// `attnwatch summarize`.
#[derive(Debug, clap::Args)]
pub struct SummarizeArgs {
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
    #[arg(long, default_value = "120s", value_parser = crate::cli::humantime_duration)]
    timeout: Duration,
    /// How many top-scoring points to list.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// NAB's combined_windows.json: print each labelled series' alerts
    /// beside its anomaly windows (caught, missed, false). A series matches
    /// the file whose stem is its id (replay's default id).
    #[arg(long)]
    labels: Option<std::path::PathBuf>,
}

/// Run `attnwatch summarize`.
pub fn exec(a: SummarizeArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let records = crate::cli::runtime()?
        .block_on(collect(&a.brokers, &a.topic, a.expect, a.timeout))
        .context("reading the output topic")?;
    print!("{}", render(&records, a.top));
    if let Some(path) = &a.labels {
        let windows = super::labels::read_windows(path)?;
        let (text, _) = super::labels::against(&records, &windows);
        println!(
            "\nalerts beside the labelled anomaly windows ({}):",
            path.display()
        );
        print!("{text}");
    }
    if records.len() < a.expect {
        anyhow::bail!(
            "only {} of {} records arrived within {:?}",
            records.len(),
            a.expect,
            a.timeout
        );
    }
    Ok(())
}
