//! What the subcommands of the `attnwatch` binary share: loading the config
//! and the model for the offline commands, and parsing durations. Each
//! subcommand's arguments and run function live beside its module
//! (`app::RunArgs`, `eval::cli`, `backtest::cli`, `tools::*`); `main.rs`
//! only dispatches. Like the binary, these use `anyhow`: they are startup
//! code, and every error ends the command.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::model::Engine;

/// The config (a file, or defaults) with environment overrides, and the
/// model loaded from it: what the offline commands (`score`, `eval`) need.
pub fn config_and_engine(path: Option<PathBuf>) -> anyhow::Result<(Config, Engine)> {
    let c = match path {
        Some(p) => Config::load(&p)?,
        None => Config::from_toml_and_env("", std::env::vars())?,
    };
    let lib = crate::model::library::find(&c.model)?.path;
    let engine = Engine::load(&c.model, &lib)?;
    Ok((c, engine))
}

/// A duration on the command line (`2m`, `90s`).
pub fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// A runtime for the commands that talk to Kafka.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
