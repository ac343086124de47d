//! `attnwatch check-config`: its arguments and how it runs.

use std::path::PathBuf;

/// `attnwatch check-config`.
#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// TOML config file.
    config: PathBuf,
}

/// Run `attnwatch check-config`: load, apply the environment, validate,
/// read the API token it names (as `run` would: a missing file or an unset
/// variable is an error), print the result. The token is never printed:
/// the config only names where it comes from.
pub fn exec(a: CheckConfigArgs) -> anyhow::Result<()> {
    let c = super::Config::load(&a.config)?;
    let access = crate::server::Access::from_config(&c.server)?;
    println!("{}: ok", a.config.display());
    if let Some(source) = c.server.token_source() {
        println!("# API token read from {source}");
    }
    println!("# {}", access.describe());
    println!("{}", toml::to_string_pretty(&c)?);
    Ok(())
}
