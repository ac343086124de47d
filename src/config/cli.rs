//! `attnwatch check-config`: its arguments and how it runs.

use std::path::PathBuf;

/// `attnwatch check-config`.
#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// TOML config file.
    config: PathBuf,
}

/// Run `attnwatch check-config`: load, apply the environment, validate,
/// read the API token and every `[kafka.secret_options]` value it names
/// (as `run` would: a missing file or an unset variable is an error), print
/// the result. No secret is ever printed: the config only names where each
/// comes from.
pub fn exec(a: CheckConfigArgs) -> anyhow::Result<()> {
    let c = super::Config::load(&a.config)?;
    let access = crate::server::Access::from_config(&c.server)?;
    crate::ingest::client::secrets(&c.kafka)?;
    println!("{}: ok", a.config.display());
    if let Some(source) = c.server.token_source() {
        println!("# API token read from {source}");
    }
    println!("# {}", access.describe());
    for (property, source) in &c.kafka.secret_options {
        println!("# kafka.secret_options.\"{property}\": read from the {source} (value not shown)");
    }
    println!("{}", toml::to_string_pretty(&c)?);
    Ok(())
}
