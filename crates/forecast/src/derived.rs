//! Model-side features derived from the featurizer's vector, and the forecast anchor.
//!
//! The featurizer publishes means, deviations, extremes and lags; robust order statistics
//! (median, p90 of the last hour) are not among them because they cost a sort per event on the
//! hot path. The models want them: on bursty VM traces the trailing median is a much better
//! anchor than the last value. They are computed here, from the `now` and `lag_k` entries of the
//! vector itself, by the same function in training, backtests and the scorer: nothing new has to
//! travel on the features topic, and the feature schema stays the featurizer's.
//!
//! Models predict the change from the anchor (the trailing median of the target).

use headroom_features::FeatureLayout;

use crate::dataset::{N_TARGETS, TARGETS};

/// Version of the derivation, recorded in model manifests.
pub const DERIVED_VERSION: &str = "derived-v1";

/// Which vector entries feed the derived features of each target.
#[derive(Debug, Clone)]
pub struct Derivation {
    /// Per target: indices of `now`, `lag_1`, …, `lag_{window-1}`.
    sources: [Vec<usize>; N_TARGETS],
    base_len: usize,
    window: usize,
}

impl Derivation {
    /// `window` is the trailing window in slots (the featurizer's lags must cover `window - 1`;
    /// fewer lags shorten it).
    pub fn new(layout: &FeatureLayout, window: usize) -> Derivation {
        Derivation::from_names(layout.names(), window).expect("every target has a _now feature")
    }

    /// From the featurizer's feature names (as recorded in a model manifest).
    pub fn from_names(names: &[String], window: usize) -> anyhow::Result<Derivation> {
        let index_of = |n: &str| names.iter().position(|x| x == n);
        let mut sources: [Vec<usize>; N_TARGETS] = Default::default();
        for (m, src) in sources.iter_mut().enumerate() {
            let t = TARGETS[m];
            let now = index_of(&format!("{t}_now"))
                .ok_or_else(|| anyhow::anyhow!("the features have no `{t}_now`"))?;
            src.push(now);
            src.extend((1..window).filter_map(|k| index_of(&format!("{t}_lag_{k}"))));
        }
        Ok(Derivation {
            sources,
            base_len: names.len(),
            window,
        })
    }

    /// Names of the derived features, appended after the featurizer's.
    pub fn names(&self) -> Vec<String> {
        let w = self.sources[0].len();
        TARGETS
            .iter()
            .flat_map(|t| [format!("{t}_p50_{w}slots"), format!("{t}_p90_{w}slots")])
            .collect()
    }

    /// The trailing window in slots, as configured.
    pub fn window(&self) -> usize {
        self.window
    }

    pub fn extra(&self) -> usize {
        2 * N_TARGETS
    }

    pub fn base_len(&self) -> usize {
        self.base_len
    }

    /// Model input length.
    pub fn width(&self) -> usize {
        self.base_len + self.extra()
    }

    /// Appends the derived features to `row`, which holds a featurizer vector.
    pub fn extend(&self, row: &mut Vec<f32>) {
        debug_assert_eq!(row.len(), self.base_len);
        let mut buf = [0f32; 64];
        let mut derived = [0f32; 2 * N_TARGETS];
        for (m, src) in self.sources.iter().enumerate() {
            let n = src.len().min(buf.len());
            for (b, &i) in buf.iter_mut().zip(src.iter()).take(n) {
                *b = row[i];
            }
            let v = &mut buf[..n];
            v.sort_unstable_by(|a, b| a.total_cmp(b));
            derived[2 * m] = v[(n - 1) / 2];
            derived[2 * m + 1] = v[((n - 1) as f32 * 0.9).round() as usize];
        }
        row.extend_from_slice(&derived);
    }

    /// Index, in the model input, of target `m`'s anchor (its trailing median).
    pub fn anchor_index(&self, m: usize) -> usize {
        self.base_len + 2 * m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use headroom_features::FeatureConfig;

    #[test]
    fn median_and_p90_of_the_last_hour() {
        let layout = FeatureLayout::new(&FeatureConfig::default());
        let d = Derivation::new(&layout, 12);
        assert_eq!(d.names()[0], "cpu_p50_12slots");
        let mut base = vec![0.0f32; layout.len()];
        base[layout.index_of("cpu_now").unwrap()] = 100.0;
        for k in 1..=24 {
            base[layout.index_of(&format!("cpu_lag_{k}")).unwrap()] = k as f32;
        }
        let mut out = base.clone();
        d.extend(&mut out);
        assert_eq!(out.len(), d.width());
        // now=100 and lags 1..11: sorted 1..11,100 -> lower median 6, p90 at rank 10 -> 11
        assert_eq!(out[d.anchor_index(0)], 6.0);
        assert_eq!(out[d.anchor_index(0) + 1], 11.0);
        // mem is all zeros
        assert_eq!(out[d.anchor_index(1)], 0.0);
    }
}
