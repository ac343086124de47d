//! What one model run leaves behind for the points it covers: the forecast
//! of the next H values and the attention that explains it, mapped from
//! context tokens to time ranges.
//!
//! Pure data and arithmetic; the engine fills it, the scorer keeps the
//! newest per series, the publish stage renders it.

use std::sync::Arc;

/// The forecast of one run for one series.
#[derive(Debug, Clone)]
pub struct Forecast {
    /// Mean of each of the H values after the context (input units).
    pub mean: Box<[f32]>,
    /// Scale of each of those values.
    pub std: Box<[f32]>,
    /// The attention behind it, shared by every point it covers.
    pub explanation: Arc<Explanation>,
    /// Novelty of the context's newest pattern at each of the model's query
    /// lengths (empty when the model gives none).
    pub novelty: Box<[f32]>,
}

impl Forecast {
    /// Mean and scale `step` values after the context (1-based), if covered.
    pub fn at(&self, step: u32) -> Option<(f32, f32)> {
        let i = (step as usize).checked_sub(1)?;
        Some((*self.mean.get(i)?, *self.std.get(i)?))
    }

    /// Mean, scale and explanation of the grid value at `ts`, if this
    /// forecast covers it (it falls on the run's grid, 1..=H values after
    /// its context).
    pub fn covering(&self, ts: i64) -> Option<(f32, f32, &Arc<Explanation>)> {
        let e = &self.explanation;
        let after = ts.checked_sub(e.end_ts)?;
        if e.interval <= 0 || after <= 0 || after % e.interval != 0 {
            return None;
        }
        let step = u32::try_from(after / e.interval).ok()?;
        let (mean, std) = self.at(step)?;
        Some((mean, std, &self.explanation))
    }

    /// Heap bytes held (the explanation counted in full, although shared).
    pub fn heap_bytes(&self) -> usize {
        (self.mean.len() + self.std.len() + self.explanation.rows.len())
            * std::mem::size_of::<f32>()
            + std::mem::size_of::<Explanation>()
    }
}

/// The forecasting token's attention over the context tokens of one run,
/// averaged over heads, per layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// Grid timestamp of the context's last value.
    pub end_ts: i64,
    /// Grid interval (ms).
    pub interval: i64,
    /// Context length C.
    pub context: usize,
    /// Points per token.
    pub patch: usize,
    /// Present values in the context (the newest ones).
    pub present: usize,
    /// Layers in `rows`.
    pub layers: usize,
    /// `[layers][T]`: attention per token, mean over heads.
    pub rows: Vec<f32>,
    /// Present tokens by attention (mean over layers), highest first; ties
    /// go to the newer token. Ranked once per run, read by every point.
    ranked: Vec<(u16, f32)>,
}

/// The dimensions of a model's attention output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Encoder layers.
    pub layers: usize,
    /// Heads per layer.
    pub heads: usize,
    /// Context length C.
    pub context: usize,
    /// Points per token.
    pub patch: usize,
}

/// One attended time range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    /// First grid timestamp the token covers.
    pub start_ts: i64,
    /// Last grid timestamp the token covers.
    pub end_ts: i64,
    /// Attention weight.
    pub weight: f32,
}

impl Explanation {
    /// Build from one row of the attention output `[layers, heads, T]`,
    /// for a context ending at `end_ts` with `present` present values.
    pub fn from_heads(
        attention: &[f32],
        shape: Shape,
        end_ts: i64,
        interval: i64,
        present: usize,
    ) -> Self {
        let Shape {
            layers,
            heads,
            context,
            patch,
        } = shape;
        let t = context / patch.max(1);
        let mut rows = vec![0.0f32; layers * t];
        for l in 0..layers {
            for h in 0..heads {
                let row = &attention[(l * heads + h) * t..(l * heads + h + 1) * t];
                for (acc, x) in rows[l * t..(l + 1) * t].iter_mut().zip(row) {
                    *acc += x / heads as f32;
                }
            }
        }
        let mut e = Explanation {
            end_ts,
            interval,
            context,
            patch,
            present,
            layers,
            rows,
            ranked: Vec::new(),
        };
        let mut ranked: Vec<(u16, f32)> = (0..t)
            .filter(|i| e.token_present(*i))
            .map(|i| {
                let s: f32 = (0..layers).map(|l| e.rows[l * t + i]).sum();
                (i as u16, s / layers.max(1) as f32)
            })
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
        e.ranked = ranked;
        e
    }

    /// Number of context tokens T.
    pub fn tokens(&self) -> usize {
        self.context / self.patch.max(1)
    }

    /// Whether token `k` holds at least one present value.
    pub fn token_present(&self, k: usize) -> bool {
        (k + 1) * self.patch + self.present > self.context
    }

    /// The grid time range token `k` covers (its present part).
    pub fn token_range(&self, k: usize) -> (i64, i64) {
        let first = (k * self.patch).max(self.context.saturating_sub(self.present));
        let last = (k + 1) * self.patch - 1;
        let at = |i: usize| {
            let back = (self.context - 1 - i) as i64;
            self.end_ts
                .saturating_sub(back.saturating_mul(self.interval))
        };
        (at(first), at(last))
    }

    /// Attention per token of layer `l`.
    pub fn layer(&self, l: usize) -> &[f32] {
        let t = self.tokens();
        &self.rows[l * t..(l + 1) * t]
    }

    /// The `k` most attended present tokens (mean over layers and heads),
    /// highest first; ties go to the newer token.
    pub fn top(&self, k: usize) -> impl Iterator<Item = Range> + '_ {
        self.ranked.iter().take(k).map(|&(i, weight)| {
            let (start_ts, end_ts) = self.token_range(usize::from(i));
            Range {
                start_ts,
                end_ts,
                weight,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explanation() -> Explanation {
        // C = 8, patch 2 -> T = 4; 5 present values; 1 layer, 2 heads.
        let attention = [
            0.0, 0.1, 0.6, 0.3, // head 0
            0.0, 0.3, 0.2, 0.5, // head 1
        ];
        let shape = Shape {
            layers: 1,
            heads: 2,
            context: 8,
            patch: 2,
        };
        Explanation::from_heads(&attention, shape, 700, 100, 5)
    }

    #[test]
    fn tokens_map_to_time_ranges_and_top_is_sorted() {
        let e = explanation();
        assert_eq!(e.rows, vec![0.0, 0.2, 0.4, 0.4]);
        // Positions 0..=7 are at ts 0..=700; positions 0..=2 are missing.
        assert!(!e.token_present(0) && e.token_present(1));
        assert_eq!(e.token_range(1), (300, 300), "only its present part");
        assert_eq!(e.token_range(3), (600, 700));
        let top: Vec<Range> = e.top(2).collect();
        assert_eq!(top.len(), 2);
        assert_eq!(
            (top[0].start_ts, top[0].end_ts),
            (600, 700),
            "tie: newer first"
        );
        assert_eq!((top[1].start_ts, top[1].end_ts), (400, 500));
        assert!((top[0].weight - 0.4).abs() < 1e-6);
    }

    #[test]
    fn forecast_steps_are_one_based() {
        let f = Forecast {
            mean: vec![1.0, 2.0].into(),
            std: vec![0.5, 0.6].into(),
            explanation: Arc::new(explanation()),
            novelty: Box::new([]),
        };
        assert_eq!(f.at(1), Some((1.0, 0.5)));
        assert_eq!(f.at(2), Some((2.0, 0.6)));
        assert_eq!(f.at(0), None);
        assert_eq!(f.at(3), None);
    }
}
