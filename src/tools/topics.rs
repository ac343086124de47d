//! `attnwatch create-topics`: create the configured input, output and
//! dead-letter topics, `alerting.incidents_topic` when set, and
//! `feedback.topic` (compacted) when set, if they do not exist yet.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::ingest::client::{client_config, ClientError};

/// Create the three topics of `cfg`, and `extra`, with `partitions`
/// partitions and `replication` replicas. Topics that already exist are
/// left alone. Returns, per topic, whether it was created.
pub async fn create(
    cfg: &KafkaConfig,
    extra: &[String],
    partitions: i32,
    replication: i32,
) -> Result<Vec<(String, bool)>, TopicsError> {
    let admin: AdminClient<DefaultClientContext> = client_config(cfg)?.create()?;
    let mut names = vec![&cfg.input_topic, &cfg.output_topic, &cfg.dead_letter_topic];
    names.extend(extra);
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replication)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let mut out = Vec::new();
    for result in admin.create_topics(&topics, &opts).await? {
        match result {
            Ok(name) => out.push((name, true)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => out.push((name, false)),
            Err((name, code)) => {
                tracing::error!(topic = %name, ?code, "cannot create topic");
                return Err(KafkaError::AdminOp(code).into());
            }
        }
    }
    Ok(out)
}

/// Why the topics could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    /// The client settings could not be built (a secret could not be read).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The admin client or the broker refused.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

/// `attnwatch create-topics`.
#[derive(Debug, clap::Args)]
pub struct CreateTopicsArgs {
    /// TOML config file.
    #[arg(short, long, default_value = "config/attnwatch.example.toml")]
    config: std::path::PathBuf,
    /// Partitions per topic.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Replication factor.
    #[arg(long, default_value_t = 1)]
    replication: i32,
}

/// Run `attnwatch create-topics`.
pub fn exec(a: CreateTopicsArgs) -> anyhow::Result<()> {
    let c = crate::config::Config::load(&a.config)?;
    let extra: Vec<String> = Some(c.alerting.incidents_topic.trim().to_string())
        .filter(|t| !t.is_empty())
        .into_iter()
        .collect();
    let created =
        crate::cli::runtime()?.block_on(create(&c.kafka, &extra, a.partitions, a.replication))?;
    for (topic, new) in created {
        eprintln!("{topic}: {}", if new { "created" } else { "exists" });
    }
    if c.feedback.enabled() {
        let topic = c.feedback.topic.trim();
        let new = crate::cli::runtime()?.block_on(crate::feedback::kafka::ensure_topic(
            &c.kafka,
            topic,
            a.partitions,
            a.replication,
        ))?;
        eprintln!(
            "{topic}: {} (compacted: feedback)",
            if new { "created" } else { "exists" }
        );
    }
    Ok(())
}
