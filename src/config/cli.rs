//! `attnwatch check-config`: its arguments and how it runs.

use std::path::PathBuf;

/// `attnwatch check-config`.
#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// TOML config file.
    config: PathBuf,
}

/// Run `attnwatch check-config`: load, apply the environment, validate,
/// read every `[kafka.secret_options]` value as the service would, print
/// the result. Secret values are never printed: the config shows where
/// each comes from, and each is reported readable or not.
pub fn exec(a: CheckConfigArgs) -> anyhow::Result<()> {
    let c = super::Config::load(&a.config)?;
    crate::ingest::client::secrets(&c.kafka)?;
    println!("{}: ok", a.config.display());
    for (property, source) in &c.kafka.secret_options {
        println!("# kafka.secret_options.\"{property}\": read from the {source} (value not shown)");
    }
    println!("{}", toml::to_string_pretty(&c)?);
    Ok(())
}
