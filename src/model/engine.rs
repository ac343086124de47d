//! The ONNX Runtime session: loading the library, choosing the execution
//! provider, checking the contract, and running one batch.
//!
//! One [`Engine`] owns one session; `Session::run` takes `&mut self`, so
//! each inference thread builds its own. Intra-op spinning is off (with it
//! on, two threads on a small machine ran slower than one).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{TensorRef, ValueType};

use super::contract::{self, Contract, ContractError, ModelDescription, TensorSpec};
use crate::config::{ModelConfig, Provider};

/// Errors from the model stage.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// No ONNX Runtime library was found (fatal); says where it looked.
    #[error(transparent)]
    NoLibrary(#[from] super::library::LibraryError),
    /// The library could not be loaded (fatal).
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    Library {
        /// The library path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The requested execution provider could not be used (fatal).
    #[error("execution provider {requested} is unavailable: {reason} (set model.allow_cpu_fallback = true to fall back to CPU)")]
    ProviderUnavailable {
        /// What was asked for.
        requested: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// The model file could not be loaded (fatal).
    #[error("cannot load model {path}: {reason}")]
    Load {
        /// The model path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The model breaks the contract (fatal).
    #[error(transparent)]
    Contract(#[from] ContractError),
    /// One inference call failed (retryable per batch; counted).
    #[error("inference failed: {0}")]
    Run(String),
}

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
static ENVIRONMENT_INIT: Mutex<()> = Mutex::new(());

/// The process-wide ONNX Runtime environment, loading the library from
/// `lib` on first use (ort allows one environment per process).
pub fn environment(lib: &Path) -> Result<&'static Environment, ModelError> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let _guard = ENVIRONMENT_INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    if !lib.is_file() {
        return Err(ModelError::Library {
            path: lib.to_path_buf(),
            reason: "file not found".into(),
        });
    }
    let lib_err = |reason: String| ModelError::Library {
        path: lib.to_path_buf(),
        reason,
    };
    let env = ort::init_from(lib)
        .map_err(|e| lib_err(e.to_string()))?
        .with_name("attnwatch")
        .with_telemetry(false)
        .build()
        .map_err(|e| lib_err(e.to_string()))?;
    Ok(ENVIRONMENT.get_or_init(|| env))
}

/// The providers to try, in order, for a request.
pub fn provider_plan(requested: Provider, allow_cpu_fallback: bool) -> Vec<Provider> {
    match (requested, allow_cpu_fallback) {
        (Provider::Cpu, _) => vec![Provider::Cpu],
        (Provider::Cuda, false) => vec![Provider::Cuda],
        (Provider::Cuda, true) => vec![Provider::Cuda, Provider::Cpu],
    }
}

/// Outputs of one batch, flattened row-major.
#[derive(Debug, Clone, Default)]
pub struct Inference {
    /// `[batch, H, F]`: forecast mean of the H values after each context.
    pub mean: Vec<f32>,
    /// `[batch, H, F]`: forecast scale of those values.
    pub std: Vec<f32>,
    /// `[batch, layers, heads, T]`: the forecasting token's attention over
    /// the T context tokens.
    pub attention: Vec<f32>,
    /// `[batch, K]`: novelty of each context's newest pattern at K query
    /// lengths (empty when the model has no novelty output).
    pub novelty: Vec<f32>,
}

/// One session plus the contract it satisfies.
pub struct Engine {
    session: Session,
    contract: Contract,
    provider: Provider,
    /// Why the requested provider was not used, when it was not.
    fallback_reason: Option<String>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("contract", &self.contract)
            .field("provider", &self.provider)
            .finish()
    }
}

impl Engine {
    /// Load the model with the configured provider. Fails with a clear
    /// error if CUDA is requested and unusable, unless fallback is allowed.
    pub fn load(cfg: &ModelConfig, lib: &Path) -> Result<Engine, ModelError> {
        let env = environment(lib)?;
        let mut last_error = None;
        for provider in provider_plan(cfg.provider, cfg.allow_cpu_fallback) {
            match build_session(env, cfg, provider) {
                Ok(session) => {
                    let contract = contract::check(&describe(&session)?)?;
                    let fallback_reason = last_error.take();
                    if let Some(reason) = &fallback_reason {
                        tracing::warn!(requested = cfg.provider.as_str(), using = provider.as_str(), %reason,
                            "requested execution provider unavailable; falling back (allow_cpu_fallback = true)");
                    }
                    return Ok(Engine {
                        session,
                        contract,
                        provider,
                        fallback_reason,
                    });
                }
                Err(SessionFailure::Provider(reason)) => last_error = Some(reason),
                Err(SessionFailure::Fatal(e)) => return Err(e),
            }
        }
        Err(ModelError::ProviderUnavailable {
            requested: cfg.provider.as_str(),
            reason: last_error.unwrap_or_else(|| "no provider to try".into()),
        })
    }

    /// The contract the model satisfies.
    pub fn contract(&self) -> &Contract {
        &self.contract
    }

    /// The execution provider actually in use.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Why the requested provider is not in use (None when it is).
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// Run one batch. `input` holds `batch` contexts of `C x F` values
    /// each, oldest point first, `NaN` where missing.
    pub fn infer(&mut self, input: &[f32], batch: usize) -> Result<Inference, ModelError> {
        let c = &self.contract;
        let (w, f) = (c.window, c.f());
        if input.len() != batch * w * f || batch == 0 {
            return Err(ModelError::Run(format!(
                "input holds {} values, expected {batch} x {w} x {f}",
                input.len()
            )));
        }
        let (h, att_len) = (c.horizon, batch * c.layers * c.heads * c.tokens());
        let tensor = TensorRef::from_array_view(([batch, w, f], input))
            .map_err(|e| ModelError::Run(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![contract::INPUT => tensor])
            .map_err(|e| ModelError::Run(e.to_string()))?;
        let take = |name: &str| -> Result<Vec<f32>, ModelError> {
            let value = outputs
                .get(name)
                .ok_or_else(|| ModelError::Run(format!("output {name} missing")))?;
            let (_, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| ModelError::Run(e.to_string()))?;
            Ok(data.to_vec())
        };
        let out = Inference {
            mean: take(contract::OUTPUTS[0])?,
            std: take(contract::OUTPUTS[1])?,
            attention: take(contract::OUTPUTS[2])?,
            novelty: if c.novelty > 0 {
                take(contract::NOVELTY)?
            } else {
                Vec::new()
            },
        };
        if out.mean.len() != batch * h * f
            || out.std.len() != batch * h * f
            || out.attention.len() != att_len
            || out.novelty.len() != batch * c.novelty
        {
            return Err(ModelError::Run(
                "output sizes do not match the contract".into(),
            ));
        }
        Ok(out)
    }
}

enum SessionFailure {
    /// The provider could not be registered: try the next one.
    Provider(String),
    Fatal(ModelError),
}

fn build_session(
    env: &Environment,
    cfg: &ModelConfig,
    provider: Provider,
) -> Result<Session, SessionFailure> {
    let load_err = |e: &dyn std::fmt::Display| {
        SessionFailure::Fatal(ModelError::Load {
            path: cfg.path.clone(),
            reason: e.to_string(),
        })
    };
    if !cfg.path.is_file() {
        return Err(load_err(&"file not found"));
    }
    let builder = Session::builder(env)
        .map_err(|e| load_err(&e))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| load_err(&e))?
        .with_intra_threads(cfg.intra_threads)
        .map_err(|e| load_err(&e))?
        .with_inter_threads(1)
        .map_err(|e| load_err(&e))?
        .with_intra_op_spinning(false)
        .map_err(|e| load_err(&e))?
        .with_inter_op_spinning(false)
        .map_err(|e| load_err(&e))?
        .with_no_environment_execution_providers()
        .map_err(|e| load_err(&e))?;
    let mut builder = match provider {
        Provider::Cpu => builder
            .with_execution_providers([ort::ep::CPU::default().build().error_on_failure()])
            .map_err(|e| load_err(&e))?,
        Provider::Cuda => register_cuda(builder).map_err(SessionFailure::Provider)?,
    };
    builder.commit_from_file(&cfg.path).map_err(|e| {
        // A provider that registered but cannot run this graph surfaces here.
        if provider == Provider::Cuda {
            SessionFailure::Provider(e.to_string())
        } else {
            load_err(&e)
        }
    })
}

#[cfg(feature = "cuda")]
fn register_cuda(
    builder: ort::session::builder::SessionBuilder,
) -> Result<ort::session::builder::SessionBuilder, String> {
    builder
        .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "cuda"))]
fn register_cuda(
    _builder: ort::session::builder::SessionBuilder,
) -> Result<ort::session::builder::SessionBuilder, String> {
    Err(
        "this attnwatch binary was built without the `cuda` feature (cargo build --features cuda)"
            .into(),
    )
}

fn spec(name: &str, dtype: &ValueType) -> TensorSpec {
    let dims = dtype.tensor_shape().map(|s| s.to_vec()).unwrap_or_default();
    TensorSpec {
        name: name.to_string(),
        dims,
        is_f32: dtype.tensor_type() == Some(ort::value::TensorElementType::Float32),
    }
}

fn describe(session: &Session) -> Result<ModelDescription, ModelError> {
    let meta_err =
        |e: ort::Error| ModelError::Contract(ContractError(format!("cannot read metadata: {e}")));
    let metadata = session.metadata().map_err(meta_err)?;
    let mut props = HashMap::new();
    for key in metadata.custom_keys().map_err(meta_err)? {
        if let Some(v) = metadata.custom(&key) {
            props.insert(key, v);
        }
    }
    Ok(ModelDescription {
        inputs: session
            .inputs()
            .iter()
            .map(|o| spec(o.name(), o.dtype()))
            .collect(),
        outputs: session
            .outputs()
            .iter()
            .map(|o| spec(o.name(), o.dtype()))
            .collect(),
        metadata: props,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_plan_never_falls_back_silently() {
        assert_eq!(provider_plan(Provider::Cpu, false), vec![Provider::Cpu]);
        assert_eq!(provider_plan(Provider::Cpu, true), vec![Provider::Cpu]);
        assert_eq!(provider_plan(Provider::Cuda, false), vec![Provider::Cuda]);
        assert_eq!(
            provider_plan(Provider::Cuda, true),
            vec![Provider::Cuda, Provider::Cpu]
        );
    }
}
