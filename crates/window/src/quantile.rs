//! Quantiles with hdrhistogram at 3 significant digits (see the crate documentation).

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Significant digits of every histogram.
pub const SIGNIFICANT_DIGITS: u8 = 3;
/// Values are recorded as `round(value * SCALE)`: milliseconds and counts keep three decimals.
pub const SCALE: f64 = 1000.0;

/// Count, extremes and quantiles of one window's values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub p50: f64,
    pub p95: f64,
}

fn scaled(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        // `as` saturates at u64::MAX for values too large to represent.
        (v * SCALE).round() as u64
    } else {
        0
    }
}

fn unscaled(v: u64) -> f64 {
    v as f64 / SCALE
}

/// The exact nearest-rank quantile of sorted scaled values: the fallback when a histogram
/// cannot be built (it never happens with auto-resizing histograms, but it must not panic).
fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
    let n = sorted.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted[rank - 1]
}

fn quantiles_scaled(values: &[f64], qs: &[f64]) -> Option<Vec<u64>> {
    if values.is_empty() {
        return None;
    }
    let mut sorted: Vec<u64> = values.iter().copied().map(scaled).collect();
    sorted.sort_unstable();
    let hist = Histogram::<u64>::new(SIGNIFICANT_DIGITS)
        .ok()
        .and_then(|mut h| {
            for v in &sorted {
                h.record(*v).ok()?;
            }
            Some(h)
        });
    let out = qs
        .iter()
        .map(|&q| match &hist {
            Some(h) => {
                let bucket_top = h.value_at_quantile(q);
                // The largest recorded value not above the bucket hdrhistogram picked.
                let idx = sorted.partition_point(|v| *v <= bucket_top);
                if idx == 0 { sorted[0] } else { sorted[idx - 1] }
            }
            None => nearest_rank(&sorted, q),
        })
        .collect();
    Some(out)
}

/// The `q` quantile (0 < q <= 1) of `values`; `None` when there are none.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    quantiles_scaled(values, &[q]).and_then(|v| v.first().copied().map(unscaled))
}

/// Count, min, max, p50 and p95 of `values`; `None` when there are none.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let qs = quantiles_scaled(values, &[0.5, 0.95])?;
    let min = values.iter().copied().map(scaled).min()?;
    let max = values.iter().copied().map(scaled).max()?;
    Some(Summary {
        count: values.len() as u64,
        min: unscaled(min),
        max: unscaled(max),
        p50: unscaled(*qs.first()?),
        p95: unscaled(*qs.get(1)?),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn p95_of_ten_values_is_the_maximum() {
        let v = [
            100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 900.0, 4600.0,
        ];
        assert_eq!(quantile(&v, 0.95), Some(4600.0));
        let s = summarize(&v).unwrap();
        assert_eq!(s.count, 10);
        assert_eq!(s.min, 100.0);
        assert_eq!(s.max, 4600.0);
        assert_eq!(s.p95, 4600.0);
        assert_eq!(s.p50, 500.0);
    }

    #[test]
    fn p95_of_twenty_values_is_the_nineteenth() {
        let v: Vec<f64> = (1..=20).map(|i| i as f64 * 10.0).collect();
        assert_eq!(quantile(&v, 0.95), Some(190.0));
    }

    #[test]
    fn a_value_exactly_at_a_limit_is_reported_at_the_limit() {
        // hdrhistogram alone would answer the top of 4500's bucket, above 4500.
        let v = [4500.0; 10];
        assert_eq!(quantile(&v, 0.95), Some(4500.0));
        let v = [6500.0, 10.0, 3.0];
        assert_eq!(quantile(&v, 0.95), Some(6500.0));
    }

    #[test]
    fn fractions_keep_three_decimals_and_zero_is_a_value() {
        assert_eq!(quantile(&[0.0, 0.0, 1.25], 0.95), Some(1.25));
        assert_eq!(quantile(&[0.0], 0.95), Some(0.0));
        assert_eq!(quantile(&[], 0.95), None);
    }

    proptest! {
        #[test]
        fn p95_is_a_recorded_value_near_the_nearest_rank(
            v in proptest::collection::vec(0u32..10_000_000, 1..200)
        ) {
            let vals: Vec<f64> = v.iter().map(|x| *x as f64 / 100.0).collect();
            let p = quantile(&vals, 0.95).unwrap();
            prop_assert!(vals.contains(&p));
            let mut s = vals.clone();
            s.sort_by(f64::total_cmp);
            let rank = ((0.95 * s.len() as f64).ceil() as usize).max(1);
            let exact = s[rank - 1];
            // Same bucket at 3 significant digits: within 0.1 % (plus the 0.001 scale step).
            prop_assert!(p >= exact && p <= exact * 1.001 + 0.001, "p={p} exact={exact}");
        }
    }
}
