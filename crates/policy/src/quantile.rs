//! Quantiles and exceedance probabilities from a forecast's p50 and p90.
//!
//! The models publish two quantiles. The policy needs others (its `headroom_quantile`) and the
//! probability that demand exceeds a capacity. Both are read off the normal distribution
//! through the two published points: mean p50, standard deviation (p90 - p50) / z(0.9). When
//! the spread is zero the distribution is a point mass at p50.

/// z(0.9), the standard normal's 90 % quantile.
pub const Z90: f64 = 1.281_551_565_545;

/// The standard normal CDF (through `erfc`, Numerical Recipes' Chebyshev fit, |error| < 1.2e-7).
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// The standard normal quantile function, by bisection on [`normal_cdf`] (exact enough for a
/// configuration value; computed once per policy, not per event).
pub fn normal_quantile(p: f64) -> f64 {
    let p = p.clamp(1e-9, 1.0 - 1e-9);
    let (mut lo, mut hi) = (-10.0f64, 10.0f64);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if normal_cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The `tau` quantile given p50 and p90, as a multiple `k = z(tau) / z(0.9)` of the spread.
/// `k` comes from [`spread_multiple`].
pub fn at(p50: f64, p90: f64, k: f64) -> f64 {
    p50 + k * (p90 - p50).max(0.0)
}

/// `z(tau) / z(0.9)`: 0 for the median, 1 for p90.
pub fn spread_multiple(tau: f64) -> f64 {
    normal_quantile(tau) / Z90
}

/// P(X > level) for the distribution through (p50, p90).
pub fn exceed_prob(p50: f64, p90: f64, level: f64) -> f64 {
    let sigma = (p90 - p50).max(0.0) / Z90;
    if sigma <= f64::EPSILON * p50.abs().max(1.0) {
        return if level < p50 { 1.0 } else { 0.0 };
    }
    1.0 - normal_cdf((level - p50) / sigma)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_and_quantile_agree_with_known_values() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.959_964) - 0.975).abs() < 1e-6);
        assert!((normal_cdf(-1.644_854) - 0.05).abs() < 1e-6);
        assert!((normal_quantile(0.9) - Z90).abs() < 1e-5);
        assert!((normal_quantile(0.99) - 2.326_348).abs() < 1e-5);
        assert!((spread_multiple(0.5)).abs() < 1e-6);
        assert!((spread_multiple(0.9) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn quantiles_and_exceedance_are_consistent() {
        let (p50, p90) = (0.4, 0.6);
        assert!((at(p50, p90, spread_multiple(0.9)) - 0.6).abs() < 1e-5);
        assert!((exceed_prob(p50, p90, 0.6) - 0.1).abs() < 1e-5);
        assert!((exceed_prob(p50, p90, 0.4) - 0.5).abs() < 1e-6);
        let q95 = at(p50, p90, spread_multiple(0.95));
        assert!((exceed_prob(p50, p90, q95) - 0.05).abs() < 1e-5);
        // A point forecast: exceedance is a step.
        assert_eq!(exceed_prob(0.3, 0.3, 0.29), 1.0);
        assert_eq!(exceed_prob(0.3, 0.3, 0.31), 0.0);
    }
}
