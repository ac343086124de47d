//! `attnwatch check-config`: its arguments and how it runs.

use std::path::PathBuf;

/// `attnwatch check-config`.
#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// TOML config file.
    config: PathBuf,
}

/// Run `attnwatch check-config`: load, apply the environment, validate,
/// print the result.
pub fn exec(a: CheckConfigArgs) -> anyhow::Result<()> {
    let c = super::Config::load(&a.config)?;
    println!("{}: ok", a.config.display());
    println!("{}", toml::to_string_pretty(&c)?);
    Ok(())
}
