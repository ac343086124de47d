//! The real model in the real ONNX Runtime: parity with the reference
//! outputs exported next to the model, attention rows that are proper
//! distributions, and execution-provider selection without silent fallback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use attnwatch::config::{Config, Provider};
use attnwatch::model::{Engine, ModelError};

fn model_config() -> attnwatch::config::ModelConfig {
    let mut c = Config::from_toml_and_env("", Vec::<(String, String)>::new()).unwrap();
    c.model.path = common::model_path();
    c.model
}

#[test]
fn rust_inference_matches_the_committed_reference_within_1e_5() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::model_path().with_extension("reference.json")).unwrap(),
    )
    .unwrap();
    let floats = |v: &serde_json::Value| -> Vec<f32> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().map_or(f32::NAN, |v| v as f32)) // null: missing
            .collect()
    };
    let input = floats(&reference["input"]);
    let batch = reference["input"]["shape"][0].as_u64().unwrap() as usize;
    let mut engine = Engine::load(&model_config(), &common::ort_lib()).unwrap();
    assert_eq!(engine.provider(), Provider::Cpu);
    let c = engine.contract().clone();
    assert_eq!(input.len(), batch * c.window * c.f());
    assert!(
        input.iter().any(|x| x.is_nan()),
        "the reference holds warming-up contexts"
    );
    let out = engine.infer(&input, batch).unwrap();
    let outputs = &reference["outputs"];
    let mut worst = 0f32;
    for (name, got) in [
        ("forecast_mean", &out.mean),
        ("forecast_std", &out.std),
        ("attention", &out.attention),
        ("novelty", &out.novelty),
    ] {
        let want = floats(&outputs[name]);
        assert_eq!(want.len(), got.len(), "{name} length");
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            // A NaN on either side is a failure, not a value `max` skips.
            assert!(
                a.is_finite() && b.is_finite(),
                "{name}[{i}]: got {a}, reference {b}"
            );
            // Relative to the value's size: forecasts are in input units.
            worst = worst.max((a - b).abs() / b.abs().max(1.0));
        }
    }
    println!("max relative difference to the reference: {worst:e}");
    assert!(worst <= 1e-5, "max relative difference {worst} > 1e-5");

    // Each head's attention row is a distribution over the T context tokens,
    // and every forecast scale is positive.
    let t = c.tokens();
    for row in out.attention.chunks(t) {
        assert!(row.iter().all(|x| *x >= 0.0));
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() <= 1e-4, "row sums to {sum}");
    }
    assert_eq!(out.attention.len(), batch * c.layers * c.heads * t);
    assert!(out.std.iter().all(|s| *s > 0.0 && s.is_finite()));
    assert_eq!(out.mean.len(), batch * c.horizon);
}

#[test]
fn cuda_request_without_cuda_fails_clearly_unless_fallback_is_allowed() {
    let mut cfg = model_config();
    cfg.provider = Provider::Cuda;
    cfg.allow_cpu_fallback = false;
    let err = Engine::load(&cfg, &common::ort_lib()).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::ProviderUnavailable {
                requested: "cuda",
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("cuda") && msg.contains("allow_cpu_fallback"),
        "{msg}"
    );
    println!("clear error: {msg}");

    cfg.allow_cpu_fallback = true;
    let engine = Engine::load(&cfg, &common::ort_lib()).unwrap();
    assert_eq!(engine.provider(), Provider::Cpu);
    assert!(engine.fallback_reason().is_some());
}

#[test]
fn a_missing_model_or_library_is_a_clear_error() {
    let mut cfg = model_config();
    cfg.path = "/nonexistent/model.onnx".into();
    let err = Engine::load(&cfg, &common::ort_lib()).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/model.onnx"), "{err}");
}
