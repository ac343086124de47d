//! `[model]`: the ONNX file, execution provider, sessions, stride and
//! batching.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Execution provider requested for inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// ONNX Runtime's CPU provider.
    Cpu,
    /// NVIDIA CUDA (needs the `cuda` build feature and the onnxruntime-gpu library).
    Cuda,
}

impl Provider {
    /// Lowercase name, as used in config and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
        }
    }
}

/// Model settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Path of the `.onnx` file.
    #[serde(default = "default_model_path")]
    pub path: PathBuf,
    /// Path of `libonnxruntime.so`. Unset: `ORT_DYLIB_PATH`, then the
    /// library `scripts/setup` installs, then beside the binary, then the
    /// system library path (`model::library`).
    #[serde(default)]
    pub onnxruntime_library: Option<PathBuf>,
    /// Execution provider: `cpu` or `cuda`.
    #[serde(default = "default_provider")]
    pub provider: Provider,
    /// When `cuda` is requested but cannot be used, fall back to CPU (logged
    /// and visible in `attnwatch_model_info`) instead of failing at startup.
    #[serde(default)]
    pub allow_cpu_fallback: bool,
    /// Number of inference threads, each with its own session. Series are
    /// sharded across them by hash, which keeps each series in order.
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    /// ONNX Runtime intra-op threads per session.
    #[serde(default = "default_intra_threads")]
    pub intra_threads: usize,
    /// Run the model once per `stride` grid values of a series (1 up to the
    /// model's horizon H). Each run forecasts the next H values; every
    /// value is scored at once against the newest forecast that covers it.
    /// Smaller strides cost more (one run per `stride` points) and score
    /// against fresher forecasts (docs/BENCHMARKS.md has the trade-off).
    #[serde(default = "default_stride")]
    pub stride: usize,
    /// Largest number of contexts in one inference call (runs of many
    /// series are batched together).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Longest wait for a batch to fill once its first window arrived.
    #[serde(default = "default_max_delay", with = "humantime_serde")]
    pub max_delay: Duration,
    /// Capacity of each inference thread's input queue (points).
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// How often `path` is checked for a new model file (size or mtime
    /// changed) to hot-reload; "0s": only on SIGHUP.
    #[serde(default = "default_reload_poll", with = "humantime_serde")]
    pub reload_poll: Duration,
}

pub(super) fn default_model_path() -> PathBuf {
    "models/attnwatch-encoder.onnx".into()
}
pub(super) fn default_provider() -> Provider {
    Provider::Cpu
}
pub(super) fn default_sessions() -> usize {
    1
}
pub(super) fn default_intra_threads() -> usize {
    1
}
pub(super) fn default_stride() -> usize {
    32
}
pub(super) fn default_max_batch() -> usize {
    64
}
pub(super) fn default_max_delay() -> Duration {
    Duration::from_millis(5)
}
pub(super) fn default_queue_capacity() -> usize {
    4096
}

pub(super) fn default_reload_poll() -> Duration {
    Duration::from_secs(5)
}
