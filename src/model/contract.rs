//! The ONNX contract between attnwatch and its models, checked at startup.
//!
//! Pure: it looks at a [`ModelDescription`] (names, shapes, metadata) that
//! the engine reads from the session, so the rules are testable without a
//! model file. A model that breaks the contract is rejected with a message
//! that says what was expected.

use std::collections::HashMap;

/// Contract version this build understands (`attnwatch.contract`).
pub const CONTRACT_VERSION: &str = "1";
/// Input tensor name.
pub const INPUT: &str = "window";
/// Output tensor names, in the order the engine reads them.
pub const OUTPUTS: [&str; 4] = ["pred_mean", "pred_std", "raw_score", "attention"];

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

/// A model that satisfies the contract.
#[derive(Debug, Clone, PartialEq)]
pub struct Contract {
    /// Model name.
    pub name: String,
    /// Model version.
    pub version: String,
    /// Window length W.
    pub window: usize,
    /// Fewest present points a window may have (missing ones are NaN).
    /// Models without `attnwatch.min_points` need full windows (= W).
    pub min_points: usize,
    /// Feature names, length F.
    pub features: Vec<String>,
    /// Encoder layers (attention output dim 1).
    pub layers: usize,
    /// Attention heads (attention output dim 2).
    pub heads: usize,
    /// How the raw score is built, as the model states it.
    pub score: String,
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
            "attnwatch.contract is {version:?}, this build understands {CONTRACT_VERSION:?}"
        )));
    }
    let window = meta_usize(d, "attnwatch.window")?;
    if window < 2 {
        return Err(ContractError("attnwatch.window must be >= 2".into()));
    }
    let features: Vec<String> = meta(d, "attnwatch.features")?
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if features.is_empty() {
        return Err(ContractError("attnwatch.features is empty".into()));
    }
    let min_points = match d.metadata.get("attnwatch.min_points") {
        None => window,
        Some(_) => meta_usize(d, "attnwatch.min_points")?,
    };
    if !(2..=window).contains(&min_points) {
        return Err(ContractError(format!(
            "attnwatch.min_points = {min_points} must be in 2..=window"
        )));
    }
    let layers = meta_usize(d, "attnwatch.layers")?;
    let heads = meta_usize(d, "attnwatch.heads")?;
    let (w, f) = (window as i64, features.len() as i64);
    if d.inputs.len() != 1 {
        return Err(ContractError(format!(
            "expected 1 input, found {}",
            d.inputs.len()
        )));
    }
    expect_tensor(&d.inputs, INPUT, &[-1, w, f])?;
    for name in &OUTPUTS[..3] {
        expect_tensor(&d.outputs, name, &[-1, f])?;
    }
    expect_tensor(
        &d.outputs,
        OUTPUTS[3],
        &[-1, layers as i64, heads as i64, w],
    )?;
    Ok(Contract {
        name: meta(d, "attnwatch.model_name")?.to_string(),
        version: meta(d, "attnwatch.model_version")?.to_string(),
        window,
        min_points,
        features,
        layers,
        heads,
        score: d
            .metadata
            .get("attnwatch.score")
            .cloned()
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
            ("attnwatch.contract", "1"),
            ("attnwatch.model_name", "enc"),
            ("attnwatch.model_version", "1.2"),
            ("attnwatch.window", "8"),
            ("attnwatch.features", "value"),
            ("attnwatch.layers", "2"),
            ("attnwatch.heads", "4"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        ModelDescription {
            inputs: vec![spec("window", &[-1, 8, 1])],
            outputs: vec![
                spec("pred_mean", &[-1, 1]),
                spec("pred_std", &[-1, 1]),
                spec("raw_score", &[-1, 1]),
                spec("attention", &[-1, 2, 4, 8]),
            ],
            metadata,
        }
    }

    #[test]
    fn accepts_a_conforming_model() {
        let c = check(&good()).unwrap();
        assert_eq!(c.window, 8);
        assert_eq!(c.min_points, 8, "full windows without the key");
        assert_eq!(c.features, vec!["value"]);
        assert_eq!(c.id(), "enc@1.2");
    }

    #[test]
    fn rejects_each_kind_of_mismatch() {
        let mut d = good();
        d.metadata.remove("attnwatch.window");
        assert!(check(&d).unwrap_err().0.contains("attnwatch.window"));

        let mut d = good();
        d.metadata.insert("attnwatch.window".into(), "16".into());
        assert!(check(&d).unwrap_err().0.contains("window has shape"));

        let mut d = good();
        d.outputs.retain(|o| o.name != "attention");
        assert!(check(&d).unwrap_err().0.contains("attention"));

        let mut d = good();
        d.outputs[3].dims = vec![-1, 2, 4, 8, 8];
        assert!(check(&d).unwrap_err().0.contains("attention has shape"));

        let mut d = good();
        d.metadata.insert("attnwatch.min_points".into(), "9".into());
        assert!(check(&d).unwrap_err().0.contains("min_points"));

        let mut d = good();
        d.metadata.insert("attnwatch.contract".into(), "2".into());
        assert!(check(&d).is_err());

        let mut d = good();
        d.inputs[0].is_f32 = false;
        assert!(check(&d).unwrap_err().0.contains("float32"));
    }
}
