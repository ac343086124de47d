//! The ONNX contract between attnwatch and its models, checked at startup.
//!
//! Pure: it looks at a [`ModelDescription`] (names, shapes, metadata) that
//! the engine reads from the session, so the rules are testable without a
//! model file. A model that breaks the contract is rejected with a message
//! that says what was expected.

use std::collections::HashMap;

/// Contract version this build understands (`attnwatch.contract`).
pub const CONTRACT_VERSION: &str = "2";
/// Input tensor name.
pub const INPUT: &str = "context";
/// Output tensor names, in the order the engine reads them.
pub const OUTPUTS: [&str; 3] = ["forecast_mean", "forecast_std", "attention"];
/// Optional output: the novelty of the newest pattern at one or more
/// query lengths, `[batch, K]`: `ln(1e-3 + d)` with d the best match's
/// distance, and exactly 0 where a query has no earlier match to compare.
pub const NOVELTY: &str = "novelty";

/// A named tensor with its dims (`-1` for a dynamic dimension).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// Name.
    pub name: String,
    /// Dimensions; `-1` is dynamic.
    pub dims: Vec<i64>,
    /// True for float32.
    pub is_f32: bool,
}

/// What the engine read from a model.
#[derive(Debug, Clone, Default)]
pub struct ModelDescription {
    /// Graph inputs.
    pub inputs: Vec<TensorSpec>,
    /// Graph outputs.
    pub outputs: Vec<TensorSpec>,
    /// `metadata_props`.
    pub metadata: HashMap<String, String>,
}

/// A model that satisfies the contract: a forecaster that reads a context
/// of C grid values, cut into T = C / patch tokens, and forecasts the H
/// values after it (mean and scale each), with the forecasting token's
/// attention over the T context tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Contract {
    /// Model name.
    pub name: String,
    /// Model version.
    pub version: String,
    /// Context length C (grid values per run).
    pub window: usize,
    /// Points per context token.
    pub patch: usize,
    /// Forecast horizon H: values forecast per run (the largest stride).
    pub horizon: usize,
    /// Fewest present points a context may have (missing ones are NaN).
    pub min_points: usize,
    /// Feature names, length F.
    pub features: Vec<String>,
    /// Encoder layers (attention output dim 1).
    pub layers: usize,
    /// Attention heads (attention output dim 2).
    pub heads: usize,
    /// How the score is built, as the model states it.
    pub score: String,
    /// Multiply-adds x 2 of one run, as the model states it (0 if absent).
    pub flops_per_run: u64,
    /// How many novelty values the model outputs per run (0: none).
    pub novelty: usize,
    /// Versions of the same model whose calibrations this one's scores may
    /// continue (`attnwatch.scores_compatible_with`, comma-separated;
    /// optional): on a hot reload from one of them, calibrations are kept.
    pub scores_compatible_with: Vec<String>,
}

impl Contract {
    /// `name@version`, as published in every output record.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// Number of features F.
    pub fn f(&self) -> usize {
        self.features.len()
    }

    /// Context tokens T (attention output dim 3).
    pub fn tokens(&self) -> usize {
        self.window / self.patch.max(1)
    }
}

/// How a model breaks the contract.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("model does not satisfy the attnwatch contract: {0}")]
pub struct ContractError(pub String);

fn meta<'a>(d: &'a ModelDescription, key: &str) -> Result<&'a str, ContractError> {
    d.metadata
        .get(key)
        .map(String::as_str)
        .ok_or_else(|| ContractError(format!("metadata_props lacks {key:?}")))
}

fn meta_usize(d: &ModelDescription, key: &str) -> Result<usize, ContractError> {
    let v = meta(d, key)?;
    v.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ContractError(format!("metadata {key} = {v:?} is not a positive integer")))
}

fn expect_tensor(specs: &[TensorSpec], name: &str, want: &[i64]) -> Result<(), ContractError> {
    let t = specs
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| ContractError(format!("no tensor named {name:?}")))?;
    if !t.is_f32 {
        return Err(ContractError(format!("{name} must be float32")));
    }
    let ok = t.dims.len() == want.len()
        && t.dims
            .iter()
            .zip(want)
            .all(|(&got, &w)| w == -1 || got == w);
    if ok {
        Ok(())
    } else {
        Err(ContractError(format!(
            "{name} has shape {:?}, expected {:?} (-1 = batch)",
            t.dims, want
        )))
    }
}

/// Check a model description against the contract.
pub fn check(d: &ModelDescription) -> Result<Contract, ContractError> {
    let version = meta(d, "attnwatch.contract")?;
    if version != CONTRACT_VERSION {
        return Err(ContractError(format!(
            "attnwatch.contract is {version:?}, this build understands {CONTRACT_VERSION:?} \
             (a forecaster with context, patch and horizon)"
        )));
    }
    let window = meta_usize(d, "attnwatch.context")?;
    let patch = meta_usize(d, "attnwatch.patch")?;
    let horizon = meta_usize(d, "attnwatch.horizon")?;
    if window < 2 || window % patch != 0 {
        return Err(ContractError(format!(
            "attnwatch.context = {window} must be >= 2 and a multiple of attnwatch.patch = {patch}"
        )));
    }
    let features: Vec<String> = meta(d, "attnwatch.features")?
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if features.is_empty() {
        return Err(ContractError("attnwatch.features is empty".into()));
    }
    let min_points = meta_usize(d, "attnwatch.min_points")?;
    if !(2..=window).contains(&min_points) {
        return Err(ContractError(format!(
            "attnwatch.min_points = {min_points} must be in 2..=context"
        )));
    }
    let layers = meta_usize(d, "attnwatch.layers")?;
    let heads = meta_usize(d, "attnwatch.heads")?;
    let (w, f, h) = (window as i64, features.len() as i64, horizon as i64);
    if d.inputs.len() != 1 {
        return Err(ContractError(format!(
            "expected 1 input, found {}",
            d.inputs.len()
        )));
    }
    expect_tensor(&d.inputs, INPUT, &[-1, w, f])?;
    for name in &OUTPUTS[..2] {
        expect_tensor(&d.outputs, name, &[-1, h, f])?;
    }
    let tokens = (window / patch) as i64;
    expect_tensor(
        &d.outputs,
        OUTPUTS[2],
        &[-1, layers as i64, heads as i64, tokens],
    )?;
    let novelty = match d.outputs.iter().find(|o| o.name == NOVELTY) {
        None => 0,
        Some(t) => match t.dims.as_slice() {
            [_, k] if (1..=4).contains(k) => {
                expect_tensor(&d.outputs, NOVELTY, &[-1, *k])?;
                *k as usize
            }
            other => {
                return Err(ContractError(format!(
                    "novelty has shape {other:?}, expected [-1, K] with K in 1..=4"
                )))
            }
        },
    };
    Ok(Contract {
        name: meta(d, "attnwatch.model_name")?.to_string(),
        version: meta(d, "attnwatch.model_version")?.to_string(),
        window,
        patch,
        horizon,
        min_points,
        features,
        layers,
        heads,
        score: d
            .metadata
            .get("attnwatch.score")
            .cloned()
            .unwrap_or_default(),
        flops_per_run: d
            .metadata
            .get("attnwatch.flops_per_run")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        novelty,
        scores_compatible_with: d
            .metadata
            .get("attnwatch.scores_compatible_with")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dims: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dims: dims.to_vec(),
            is_f32: true,
        }
    }

    fn good() -> ModelDescription {
        let metadata = [
            ("attnwatch.contract", "2"),
            ("attnwatch.model_name", "enc"),
            ("attnwatch.model_version", "1.2"),
            ("attnwatch.context", "8"),
            ("attnwatch.patch", "4"),
            ("attnwatch.horizon", "3"),
            ("attnwatch.min_points", "2"),
            ("attnwatch.features", "value"),
            ("attnwatch.layers", "2"),
            ("attnwatch.heads", "4"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        ModelDescription {
            inputs: vec![spec("context", &[-1, 8, 1])],
            outputs: vec![
                spec("forecast_mean", &[-1, 3, 1]),
                spec("forecast_std", &[-1, 3, 1]),
                spec("attention", &[-1, 2, 4, 2]),
                spec("novelty", &[-1, 2]),
            ],
            metadata,
        }
    }

    #[test]
    fn accepts_a_conforming_model() {
        let c = check(&good()).unwrap();
        assert_eq!((c.window, c.patch, c.horizon, c.tokens()), (8, 4, 3, 2));
        assert_eq!(c.min_points, 2);
        assert_eq!(c.novelty, 2);
        assert_eq!(c.features, vec!["value"]);
        assert_eq!(c.id(), "enc@1.2");
    }

    #[test]
    fn rejects_each_kind_of_mismatch() {
        let mut d = good();
        d.metadata.remove("attnwatch.context");
        assert!(check(&d).unwrap_err().0.contains("attnwatch.context"));

        let mut d = good();
        d.metadata.insert("attnwatch.context".into(), "16".into());
        assert!(check(&d).unwrap_err().0.contains("context has shape"));

        let mut d = good();
        d.metadata.insert("attnwatch.patch".into(), "3".into());
        assert!(check(&d).unwrap_err().0.contains("multiple"));

        let mut d = good();
        d.outputs.retain(|o| o.name != "attention");
        assert!(check(&d).unwrap_err().0.contains("attention"));

        let mut d = good();
        d.outputs[2].dims = vec![-1, 2, 4, 8];
        assert!(check(&d).unwrap_err().0.contains("attention has shape"));

        let mut d = good();
        d.outputs[0].dims = vec![-1, 4, 1];
        assert!(check(&d).unwrap_err().0.contains("forecast_mean has shape"));

        let mut d = good();
        d.metadata.insert("attnwatch.min_points".into(), "9".into());
        assert!(check(&d).unwrap_err().0.contains("min_points"));

        let mut d = good();
        d.metadata.insert("attnwatch.contract".into(), "1".into());
        assert!(check(&d).unwrap_err().0.contains("understands"));

        let mut d = good();
        d.outputs[3].dims = vec![-1, 2, 1];
        assert!(check(&d).unwrap_err().0.contains("novelty has shape"));

        let mut d = good();
        d.outputs.retain(|o| o.name != "novelty");
        assert_eq!(check(&d).unwrap().novelty, 0, "novelty is optional");

        let mut d = good();
        d.inputs[0].is_f32 = false;
        assert!(check(&d).unwrap_err().0.contains("float32"));
    }
}
