//! Model hot reload: on SIGHUP, or when the file at `model.path` changes
//! (size or modification time, checked every `model.reload_poll` and
//! stable over two checks), load the new model, check it against the
//! running contract, and hand one session to each inference thread, which
//! swaps it in between two batches. No point is lost or scored twice: the
//! jobs queued for a thread are scored by the old model or the new one.
//!
//! What carries over ([`plan`], pure):
//! - the windows always: a model whose context, `min_points` or features
//!   differ, or whose horizon is below `model.stride`, is refused (they
//!   size the window stage; changing them takes a restart);
//! - the calibrations when the new model's scores are declared compatible
//!   with the old one's: the same name and version, or the old version in
//!   its `attnwatch.scores_compatible_with`; otherwise every series'
//!   calibration starts afresh (probation included).
//!
//! A model that fails to load or is refused leaves the old one running;
//! `attnwatch_model_reloads_total{result}` counts every outcome and
//! `attnwatch_model_info` names the model in use.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::contract::{Contract, ContractError};
use super::{Engine, Forecaster, ModelError};
use crate::config::{ModelConfig, Provider};
use crate::metrics::Metrics;

/// How a new model replaces the running one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swap {
    /// Keep each series' calibration (the scores are compatible).
    pub keep_calibration: bool,
}

/// Whether `new` may replace `old` with the windows kept, and whether the
/// calibrations carry over.
pub fn plan(old: &Contract, new: &Contract, stride: usize) -> Result<Swap, ContractError> {
    let refuse = |what: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
        Err(ContractError(format!(
            "{what} changes from {a:?} to {b:?}: the windows are sized by it; restart to change it"
        )))
    };
    if new.window != old.window {
        return refuse("the context length", &old.window, &new.window);
    }
    if new.min_points != old.min_points {
        return refuse("min_points", &old.min_points, &new.min_points);
    }
    if new.features != old.features {
        return refuse("the features", &old.features, &new.features);
    }
    if stride > new.horizon {
        return Err(ContractError(format!(
            "the new model's horizon {} is below model.stride = {stride}",
            new.horizon
        )));
    }
    Ok(Swap {
        keep_calibration: scores_compatible(old, new),
    })
}

/// Whether `new`'s scores continue `old`'s calibrations.
pub fn scores_compatible(old: &Contract, new: &Contract) -> bool {
    old.name == new.name
        && (old.version == new.version || new.scores_compatible_with.contains(&old.version))
}

/// What an inference thread receives: its new session.
pub struct Reload {
    /// The new model.
    pub model: Box<dyn Forecaster + Send>,
    /// Keep the calibrations (else reset them).
    pub keep_calibration: bool,
}

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reload")
            .field("model", &self.model.contract().id())
            .field("keep_calibration", &self.keep_calibration)
            .finish()
    }
}

/// Load `cfg.sessions` sessions of the model at `cfg.path`, each warmed up
/// with one run.
pub fn load_engines(cfg: &ModelConfig, lib: &Path) -> Result<Vec<Engine>, ModelError> {
    let mut engines = Vec::with_capacity(cfg.sessions);
    for _ in 0..cfg.sessions.max(1) {
        let mut e = Engine::load(cfg, lib)?;
        let c = e.contract();
        e.infer(&vec![0.0; c.window * c.f()], 1)?;
        engines.push(e);
    }
    Ok(engines)
}

/// Set `attnwatch_model_info` (and the fallback gauge) to the model in use.
pub fn show_model(metrics: &Metrics, c: &Contract, provider: Provider, requested: Provider) {
    metrics.model_info.reset();
    metrics
        .model_info
        .with_label_values(&[
            &c.name,
            &c.version,
            &c.window.to_string(),
            provider.as_str(),
            requested.as_str(),
        ])
        .set(1);
    metrics.model_fallback.set(i64::from(provider != requested));
}

/// The file's size and modification time, if it exists.
fn stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// The running model and where reloads go.
pub struct Watch {
    /// The model config (its `path` is reloaded).
    pub config: ModelConfig,
    /// The ONNX Runtime library.
    pub library: PathBuf,
    /// The running model's contract.
    pub current: Contract,
    /// `model.stride`.
    pub stride: usize,
    /// One sender per inference thread.
    pub workers: Vec<flume::Sender<Reload>>,
}

/// Watch for SIGHUP and file changes until `shutdown`; reload on each.
pub async fn watch(mut w: Watch, metrics: Metrics, shutdown: CancellationToken) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: reloads only on file change");
            None
        }
    };
    let poll = w.config.reload_poll;
    let mut seen = stamp(&w.config.path);
    let mut changed: Option<(u64, SystemTime)> = None;
    loop {
        let hup_recv = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        let tick = async {
            if poll.is_zero() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(poll.max(Duration::from_millis(50))).await;
        };
        let reason = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = hup_recv => "SIGHUP",
            () = tick => {
                // A change must be stable over two checks (not mid-write).
                let now = stamp(&w.config.path);
                if now.is_none() || now == seen {
                    changed = None;
                    continue;
                }
                if changed != now {
                    changed = now;
                    continue;
                }
                "file changed"
            }
        };
        seen = stamp(&w.config.path);
        changed = None;
        reload(&mut w, reason, &metrics).await;
    }
}

async fn reload(w: &mut Watch, reason: &'static str, metrics: &Metrics) {
    let (cfg, lib) = (w.config.clone(), w.library.clone());
    tracing::info!(reason, path = %cfg.path.display(), "model reload");
    let loaded = tokio::task::spawn_blocking(move || load_engines(&cfg, &lib)).await;
    let engines = match loaded {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => {
            metrics.model_reloads.with_label_values(&["failed"]).inc();
            tracing::error!(error = %e, model = %w.current.id(), "model reload failed; the running model stays");
            return;
        }
        Err(e) => {
            metrics.model_reloads.with_label_values(&["failed"]).inc();
            tracing::error!(error = %e, "model reload task failed; the running model stays");
            return;
        }
    };
    let Some(first) = engines.first() else {
        return;
    };
    let new = first.contract().clone();
    let provider = first.provider();
    let swap = match plan(&w.current, &new, w.stride) {
        Ok(s) => s,
        Err(e) => {
            metrics.model_reloads.with_label_values(&["refused"]).inc();
            tracing::error!(error = %e, model = %new.id(), running = %w.current.id(),
                "model reload refused; the running model stays");
            return;
        }
    };
    for (tx, engine) in w.workers.iter().zip(engines) {
        let r = Reload {
            model: Box::new(engine),
            keep_calibration: swap.keep_calibration,
        };
        if tx.send(r).is_err() {
            return; // shutting down
        }
    }
    show_model(metrics, &new, provider, w.config.provider);
    let result = if swap.keep_calibration {
        "kept_calibration"
    } else {
        "reset_calibration"
    };
    metrics.model_reloads.with_label_values(&[result]).inc();
    tracing::info!(from = %w.current.id(), to = %new.id(), calibration = result, "model reloaded");
    w.current = new;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract(version: &str) -> Contract {
        Contract {
            name: "m".into(),
            version: version.into(),
            window: 2048,
            patch: 32,
            horizon: 64,
            min_points: 32,
            features: vec!["value".into()],
            layers: 1,
            heads: 4,
            score: String::new(),
            flops_per_run: 0,
            novelty: 2,
            scores_compatible_with: Vec::new(),
        }
    }

    #[test]
    fn calibrations_carry_over_only_when_declared_compatible() {
        let old = contract("1.0.0");
        let same = contract("1.0.0");
        assert!(plan(&old, &same, 32).unwrap().keep_calibration);
        let newer = contract("1.1.0");
        assert!(!plan(&old, &newer, 32).unwrap().keep_calibration);
        let declared = Contract {
            scores_compatible_with: vec!["0.9".into(), "1.0.0".into()],
            ..contract("1.1.0")
        };
        assert!(plan(&old, &declared, 32).unwrap().keep_calibration);
        let other_name = Contract {
            name: "other".into(),
            ..declared.clone()
        };
        assert!(!plan(&old, &other_name, 32).unwrap().keep_calibration);
        // More layers or heads or a new patch size: fine, windows are kept.
        let deeper = Contract {
            layers: 3,
            heads: 8,
            patch: 16,
            ..contract("2.0.0")
        };
        assert!(plan(&old, &deeper, 32).is_ok());
    }

    #[test]
    fn what_sizes_the_windows_cannot_change_without_a_restart() {
        let old = contract("1.0.0");
        let shorter = Contract {
            window: 1024,
            ..contract("1.0.0")
        };
        assert!(plan(&old, &shorter, 32)
            .unwrap_err()
            .0
            .contains("context length changes from 2048 to 1024"));
        let min = Contract {
            min_points: 64,
            ..contract("1.0.0")
        };
        assert!(plan(&old, &min, 32).is_err());
        let features = Contract {
            features: vec!["a".into(), "b".into()],
            ..contract("1.0.0")
        };
        assert!(plan(&old, &features, 32).is_err());
        let short_horizon = Contract {
            horizon: 16,
            ..contract("1.0.0")
        };
        assert!(plan(&old, &short_horizon, 32)
            .unwrap_err()
            .0
            .contains("below model.stride"));
    }
}
