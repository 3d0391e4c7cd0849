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

/// Values up to this are answered from the sorted values and hdrhistogram's bucket arithmetic
/// alone; larger ones (never met in practice) record into a histogram.
const BUCKET_MATH_LIMIT: u64 = 1 << 62;

/// An empty histogram of the shape every quantile uses: only its bucket arithmetic is used
/// (`highest_equivalent` depends on the significant digits, not on what was recorded).
fn shape() -> Option<&'static Histogram<u64>> {
    static SHAPE: std::sync::OnceLock<Option<Histogram<u64>>> = std::sync::OnceLock::new();
    SHAPE
        .get_or_init(|| Histogram::<u64>::new(SIGNIFICANT_DIGITS).ok())
        .as_ref()
}

/// What `value_at_quantile(q)` of a histogram holding `sorted` answers: the edge of the bucket
/// of the value at hdrhistogram's rank, `max(1, ceil(q * n))`.
fn bucket_edge(h: &Histogram<u64>, sorted: &[u64], q: f64) -> u64 {
    let q = q.min(1.0);
    let n = sorted.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    let v = sorted[rank - 1];
    if q == 0.0 {
        h.lowest_equivalent(v)
    } else {
        h.highest_equivalent(v)
    }
}

fn quantiles_scaled(values: &[f64], qs: &[f64]) -> Option<Vec<u64>> {
    if values.is_empty() {
        return None;
    }
    let mut sorted: Vec<u64> = values.iter().copied().map(scaled).collect();
    sorted.sort_unstable();
    let top = *sorted.last()?;
    let edges: Vec<Option<u64>> = match shape().filter(|_| top <= BUCKET_MATH_LIMIT) {
        // The same answer as recording every value and asking `value_at_quantile`, without
        // allocating and filling a histogram per call (a test checks the two agree).
        Some(h) => qs
            .iter()
            .map(|&q| Some(bucket_edge(h, &sorted, q)))
            .collect(),
        None => {
            let hist = Histogram::<u64>::new(SIGNIFICANT_DIGITS)
                .ok()
                .and_then(|mut h| {
                    for v in &sorted {
                        h.record(*v).ok()?;
                    }
                    Some(h)
                });
            qs.iter()
                .map(|&q| hist.as_ref().map(|h| h.value_at_quantile(q)))
                .collect()
        }
    };
    let out = qs
        .iter()
        .zip(edges)
        .map(|(&q, edge)| match edge {
            Some(bucket_top) => {
                // The largest recorded value not above the bucket hdrhistogram picked.
                let idx = sorted.partition_point(|v| *v <= bucket_top);
                if idx == 0 { sorted[0] } else { sorted[idx - 1] }
            }
            None => nearest_rank(&sorted, q),
        })
        .collect();
    Some(out)
}

/// The values of a window in bounded memory, answering exactly what [`summarize`] answers for
/// them: per hdrhistogram bucket, how many values fell in it and the largest (the quantile
/// is the largest recorded value not above the bucket of the value at the rank, which is the
/// largest value of that bucket). Memory grows with the distinct buckets met (at 3
/// significant digits, a few hundred for real readings), never with the number of values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Digest {
    /// Bucket (its lowest equivalent value, scaled) -> (count, largest scaled value in it).
    buckets: std::collections::BTreeMap<u64, (u64, u64)>,
    count: u64,
    min: u64,
    max: u64,
}

impl Digest {
    pub fn new() -> Digest {
        Digest::default()
    }

    pub fn record(&mut self, value: f64) {
        let v = scaled(value);
        // Beyond the bucket arithmetic (never met in practice) every value is its own bucket.
        let bucket = match shape().filter(|_| v <= BUCKET_MATH_LIMIT) {
            Some(h) => h.lowest_equivalent(v),
            None => v,
        };
        let e = self.buckets.entry(bucket).or_insert((0, v));
        e.0 += 1;
        e.1 = e.1.max(v);
        self.min = if self.count == 0 { v } else { self.min.min(v) };
        self.max = self.max.max(v);
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The largest value of the bucket holding the value at hdrhistogram's rank for `q`.
    fn quantile_scaled(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let q = q.min(1.0);
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for &(n, largest) in self.buckets.values() {
            seen += n;
            if seen >= rank {
                return Some(largest);
            }
        }
        Some(self.max)
    }

    /// Count, min, max, p50 and p95; `None` when nothing was recorded.
    pub fn summary(&self) -> Option<Summary> {
        Some(Summary {
            count: self.count,
            min: unscaled(self.min),
            max: unscaled(self.max),
            p50: unscaled(self.quantile_scaled(0.5)?),
            p95: unscaled(self.quantile_scaled(0.95)?),
        })
    }
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

    /// The histogram-per-call computation this module used before: record every value, ask
    /// `value_at_quantile`, take the largest recorded value not above it.
    fn reference(values: &[f64], q: f64) -> Option<f64> {
        let mut sorted: Vec<u64> = values.iter().copied().map(scaled).collect();
        sorted.sort_unstable();
        let mut h = Histogram::<u64>::new(SIGNIFICANT_DIGITS).ok()?;
        for v in &sorted {
            h.record(*v).ok()?;
        }
        let top = h.value_at_quantile(q);
        let idx = sorted.partition_point(|v| *v <= top);
        Some(unscaled(if idx == 0 { sorted[0] } else { sorted[idx - 1] }))
    }

    proptest! {
        #[test]
        fn bucket_arithmetic_answers_exactly_what_a_filled_histogram_answers(
            v in proptest::collection::vec(
                prop_oneof![0u64..20, 0u64..100_000, 0u64..10_000_000_000, 0u64..(1u64 << 52)],
                1..300,
            ),
            q in prop_oneof![Just(0.5), Just(0.95), Just(0.99), Just(1.0), 0.0f64..=1.0],
        ) {
            let vals: Vec<f64> = v.iter().map(|x| *x as f64 / 1000.0).collect();
            prop_assert_eq!(quantile(&vals, q), reference(&vals, q));
        }

        #[test]
        fn a_digest_summarizes_exactly_like_the_values(
            v in proptest::collection::vec(
                prop_oneof![0u64..20, 0u64..100_000, 0u64..10_000_000_000, Just(0)],
                1..400,
            ),
        ) {
            let vals: Vec<f64> = v.iter().map(|x| *x as f64 / 1000.0).collect();
            let mut d = Digest::new();
            for x in &vals {
                d.record(*x);
            }
            prop_assert_eq!(d.summary(), summarize(&vals));
            prop_assert!(d.buckets.len() <= vals.len());
        }

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
