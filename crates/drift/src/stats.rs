//! The statistics: population stability index and a two-sample Kolmogorov-Smirnov test on
//! binned data (live counts over the reference's decile bins), and the Page-Hinkley test.

/// Shares below this count as this (PSI is undefined for empty bins).
const EPS: f64 = 1e-4;

/// PSI = Σ (live − ref) · ln(live / ref) over the bins. `reference` are shares (sum 1), `live`
/// counts. 0 when identical; 0.1 is a small shift, 0.25 and above a large one.
pub fn psi(reference: &[f32], live: &[u64]) -> f64 {
    let n: u64 = live.iter().sum();
    if n == 0 || reference.len() != live.len() {
        return f64::NAN;
    }
    reference
        .iter()
        .zip(live)
        .map(|(&r, &c)| {
            let r = f64::from(r).max(EPS);
            let l = (c as f64 / n as f64).max(EPS);
            (l - r) * (l / r).ln()
        })
        .sum()
}

/// Two-sample KS on binned samples: D is the largest gap between the two cumulative shares at
/// the bin edges (a lower bound of the unbinned D, so the test is conservative). `n_ref` is the
/// reference sample's size. Returns (D, p-value).
pub fn ks_binned(reference: &[f32], live: &[u64], n_ref: u64) -> (f64, f64) {
    let n: u64 = live.iter().sum();
    if n == 0 || n_ref == 0 || reference.len() != live.len() {
        return (f64::NAN, f64::NAN);
    }
    let ref_total: f64 = reference.iter().map(|&r| f64::from(r)).sum::<f64>().max(1e-12);
    let (mut cr, mut cl, mut d) = (0.0f64, 0.0f64, 0.0f64);
    for (&r, &c) in reference.iter().zip(live) {
        cr += f64::from(r) / ref_total;
        cl += c as f64 / n as f64;
        d = d.max((cr - cl).abs());
    }
    let ne = (n as f64 * n_ref as f64) / (n as f64 + n_ref as f64);
    (d, kolmogorov_q((ne.sqrt() + 0.12 + 0.11 / ne.sqrt()) * d))
}

/// The Kolmogorov distribution's survival function Q(λ) = 2 Σ (−1)^(k−1) e^(−2k²λ²).
pub fn kolmogorov_q(lambda: f64) -> f64 {
    if !lambda.is_finite() {
        return f64::NAN;
    }
    if lambda < 0.2 {
        return 1.0;
    }
    let mut sum = 0.0;
    let mut sign = 1.0;
    for k in 1..=100 {
        let k = f64::from(k);
        let term = sign * (-2.0 * k * k * lambda * lambda).exp();
        sum += term;
        if term.abs() < 1e-12 {
            break;
        }
        sign = -sign;
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

/// Page-Hinkley test for an increase of a stream's mean: m_T = Σ (x_t − x̄_t − δ), and an alarm
/// when m_T − min m_t exceeds λ. `δ` is the change too small to care about, in the stream's
/// units.
#[derive(Debug, Clone, PartialEq)]
pub struct PageHinkley {
    pub delta: f64,
    pub lambda: f64,
    n: u64,
    mean: f64,
    cum: f64,
    min: f64,
}

impl PageHinkley {
    pub fn new(delta: f64, lambda: f64) -> PageHinkley {
        PageHinkley {
            delta,
            lambda,
            n: 0,
            mean: 0.0,
            cum: 0.0,
            min: 0.0,
        }
    }

    /// Adds one observation; returns true when the alarm fires (the test then restarts, so a
    /// persistent shift alarms once and a later, second shift again).
    pub fn update(&mut self, x: f64) -> bool {
        if !x.is_finite() {
            return false;
        }
        self.n += 1;
        self.mean += (x - self.mean) / self.n as f64;
        self.cum += x - self.mean - self.delta;
        self.min = self.min.min(self.cum);
        if self.statistic() > self.lambda {
            self.reset();
            return true;
        }
        false
    }

    /// m_T − min m_t.
    pub fn statistic(&self) -> f64 {
        self.cum - self.min
    }

    pub fn samples(&self) -> u64 {
        self.n
    }

    pub fn reset(&mut self) {
        *self = PageHinkley::new(self.delta, self.lambda);
    }

    /// (samples, running mean, cumulative sum, its minimum): the state a changelog keeps.
    pub fn parts(&self) -> (u64, f64, f64, f64) {
        (self.n, self.mean, self.cum, self.min)
    }

    /// A test in the state [`PageHinkley::parts`] gave, with the given thresholds.
    pub fn from_parts(delta: f64, lambda: f64, n: u64, mean: f64, cum: f64, min: f64) -> PageHinkley {
        PageHinkley { delta, lambda, n, mean, cum, min }
    }
}

/// Exponentially weighted mean with a half-life in samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ewma {
    alpha: f64,
    value: f64,
    n: u64,
}

impl Ewma {
    pub fn new(half_life: f64) -> Ewma {
        Ewma {
            alpha: 1.0 - 0.5f64.powf(1.0 / half_life.max(1.0)),
            value: f64::NAN,
            n: 0,
        }
    }

    pub fn update(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        self.n += 1;
        self.value = if self.n == 1 { x } else { self.value + self.alpha * (x - self.value) };
    }

    pub fn value(&self) -> f64 {
        self.value
    }

    pub fn samples(&self) -> u64 {
        self.n
    }

    /// A mean in the state `value` and `samples` gave.
    pub fn from_parts(half_life: f64, value: f64, n: u64) -> Ewma {
        Ewma { value, n, ..Ewma::new(half_life) }
    }
}
