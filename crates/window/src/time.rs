//! Time windows: tumbling, epoch-aligned, per series key, closed by a watermark.

use std::collections::BTreeMap;

use kora_model::WindowRecord;
use serde::{Deserialize, Serialize};

use crate::quantile::Digest;

/// The window kind of an epoch-aligned time window in a `window` record.
pub const WINDOW_KIND_TIME: &str = "time";

/// How far behind the watermark a sample may be and still count: 7 days. An older sample is
/// late for every series (stored, never in a window), so a series with no open window and
/// nothing closed within 7 days of the watermark can be forgotten without changing any
/// window: its next sample is judged as it would have been.
pub const SERIES_IDLE_MS: i64 = 7 * 24 * 3_600_000;

const HOUR_MS: i64 = 3_600_000;

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OpenWindow {
    first_seq: u64,
    last_seq: u64,
    /// The window's values in bounded memory (a client sending 100,000 samples a second must
    /// not make the service hold them all for a minute).
    values: Digest,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Series {
    /// Open windows by start time.
    open: BTreeMap<i64, OpenWindow>,
    /// End of the newest closed window: samples before it are late.
    closed_until: Option<i64>,
}

/// What pushing one sample did.
#[derive(Debug, Clone, PartialEq)]
pub struct PushOutcome {
    /// The sample is older than its series' last closed window; it changed nothing.
    pub late: bool,
    /// Windows (of any series) that closed, ordered by end time, then series key.
    pub closed: Vec<WindowRecord>,
}

/// The scope of a series: the model id of a per-model series (`signal/model`), else `host`.
pub fn scope_of_series(key: &str) -> String {
    match key.split_once('/') {
        Some((_, model)) if !model.is_empty() => model.to_owned(),
        _ => "host".to_owned(),
    }
}

/// Tumbling time windows of every series. Serializable, so the server can checkpoint it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeWindows {
    window_ms: i64,
    grace_ms: i64,
    /// The newest sample time seen, across all series.
    watermark: Option<i64>,
    series: BTreeMap<String, Series>,
    /// Whether idle series are forgotten (off only in the tests' oracle).
    #[serde(skip, default = "yes")]
    retire: bool,
}

impl TimeWindows {
    /// Windows of `window_ms` (at least 1), closed `grace_ms` (at least 0) after their end.
    pub fn new(window_ms: i64, grace_ms: i64) -> TimeWindows {
        TimeWindows {
            window_ms: window_ms.max(1),
            grace_ms: grace_ms.max(0),
            watermark: None,
            series: BTreeMap::new(),
            retire: true,
        }
    }

    /// The same windows keeping every series ever seen (the oracle of the tests): the
    /// windows they close are the same.
    pub fn without_retirement(mut self) -> TimeWindows {
        self.retire = false;
        self
    }

    /// The series kept: those with an open window or one closed within [`SERIES_IDLE_MS`]
    /// of the watermark (swept at the first sample of each hour).
    pub fn series_kept(&self) -> usize {
        self.series.len()
    }

    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    pub fn grace_ms(&self) -> i64 {
        self.grace_ms
    }

    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// The start of the window holding `ts_ms` (epoch-aligned, also before 1970).
    pub fn window_start(&self, ts_ms: i64) -> i64 {
        ts_ms.div_euclid(self.window_ms) * self.window_ms
    }

    /// Adds one sample of `series` and closes every window the new watermark passes.
    pub fn push(&mut self, series: &str, seq: u64, ts_ms: i64, value: f64) -> PushOutcome {
        let start = self.window_start(ts_ms);
        let too_old = self
            .watermark
            .is_some_and(|w| ts_ms < w.saturating_sub(SERIES_IDLE_MS));
        if too_old {
            let closed = self.advance(ts_ms);
            return PushOutcome { late: true, closed };
        }
        let s = self.series.entry(series.to_owned()).or_default();
        let late = s.closed_until.is_some_and(|until| ts_ms < until);
        if !late {
            let w = s.open.entry(start).or_insert(OpenWindow {
                first_seq: seq,
                last_seq: seq,
                values: Digest::new(),
            });
            w.first_seq = w.first_seq.min(seq);
            w.last_seq = w.last_seq.max(seq);
            w.values.record(value);
        }
        let closed = self.advance(ts_ms);
        PushOutcome { late, closed }
    }

    /// Moves the watermark to `ts_ms` (it never goes back) and returns the windows that close.
    pub fn advance(&mut self, ts_ms: i64) -> Vec<WindowRecord> {
        let before = self.watermark;
        let wm = before.map_or(ts_ms, |w| w.max(ts_ms));
        self.watermark = Some(wm);
        if self.retire && before.is_some_and(|b| b.div_euclid(HOUR_MS) != wm.div_euclid(HOUR_MS)) {
            let horizon = wm.saturating_sub(SERIES_IDLE_MS);
            self.series
                .retain(|_, s| !s.open.is_empty() || s.closed_until.is_some_and(|c| c >= horizon));
        }
        let cutoff = wm.saturating_sub(self.grace_ms);
        let mut closed: Vec<WindowRecord> = Vec::new();
        for (key, s) in self.series.iter_mut() {
            while let Some((&start, _)) = s.open.first_key_value() {
                let end = start.saturating_add(self.window_ms);
                if end > cutoff {
                    break;
                }
                if let Some(w) = s.open.remove(&start) {
                    s.closed_until = Some(s.closed_until.map_or(end, |c| c.max(end)));
                    if let Some(sum) = w.values.summary() {
                        closed.push(WindowRecord {
                            ts_ms: end,
                            window_kind: WINDOW_KIND_TIME.to_owned(),
                            metric: key.clone(),
                            scope: scope_of_series(key),
                            start_ms: start,
                            end_ms: end,
                            first_seq: Some(w.first_seq),
                            last_seq: Some(w.last_seq),
                            count: sum.count,
                            min: sum.min,
                            max: sum.max,
                            p50: sum.p50,
                            p95: sum.p95,
                        });
                    }
                }
            }
        }
        // Ordered by end time, then series key (the map already orders keys; sort is stable).
        closed.sort_by_key(|w| w.end_ms);
        closed
    }

    /// The samples held in open windows (a bound the server can watch).
    pub fn open_samples(&self) -> usize {
        self.series
            .values()
            .flat_map(|s| s.open.values())
            .map(|w| w.values.count() as usize)
            .sum()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const T0: i64 = 1_699_999_980_000; // a multiple of 60 s

    #[test]
    fn windows_are_epoch_aligned_and_close_after_the_grace() {
        let mut tw = TimeWindows::new(60_000, 5_000);
        assert_eq!(tw.window_start(T0 + 59_999), T0);
        assert_eq!(tw.window_start(-1), -60_000);
        assert!(
            tw.push("active_sessions", 1, T0 + 1_000, 2.0)
                .closed
                .is_empty()
        );
        assert!(
            tw.push("active_sessions", 2, T0 + 30_000, 4.0)
                .closed
                .is_empty()
        );
        // In the next window, but within the grace: nothing closes yet.
        assert!(
            tw.push("active_sessions", 3, T0 + 64_999, 1.0)
                .closed
                .is_empty()
        );
        let out = tw.push("queue_wait_ms", 4, T0 + 65_000, 10.0);
        assert!(!out.late);
        assert_eq!(out.closed.len(), 1);
        let w = &out.closed[0];
        assert_eq!(
            (w.start_ms, w.end_ms, w.ts_ms),
            (T0, T0 + 60_000, T0 + 60_000)
        );
        assert_eq!((w.first_seq, w.last_seq), (Some(1), Some(2)));
        assert_eq!((w.count, w.min, w.max, w.p95), (2, 2.0, 4.0, 4.0));
        assert_eq!(w.metric, "active_sessions");
        assert_eq!(w.scope, "host");
        assert_eq!(w.window_kind, "time");
    }

    #[test]
    fn a_late_sample_never_changes_a_closed_window() {
        let mut tw = TimeWindows::new(60_000, 5_000);
        tw.push("q", 1, T0 + 1_000, 5.0);
        let out = tw.push("q", 2, T0 + 70_000, 7.0);
        assert_eq!(out.closed.len(), 1);
        let late = tw.push("q", 3, T0 + 59_000, 999.0);
        assert!(late.late);
        assert!(late.closed.is_empty());
        // The open window is untouched by the late sample.
        let out = tw.push("q", 4, T0 + 200_000, 1.0);
        let w = out
            .closed
            .iter()
            .find(|w| w.start_ms == T0 + 60_000)
            .unwrap();
        assert_eq!((w.count, w.max), (1, 7.0));
        assert!(out.closed.iter().all(|w| w.start_ms != T0));
    }

    #[test]
    fn an_empty_window_is_a_gap_and_other_series_advance_the_watermark() {
        let mut tw = TimeWindows::new(60_000, 5_000);
        tw.push("a", 1, T0 + 1_000, 1.0);
        tw.push("b", 2, T0 + 2_000, 1.0);
        // Only b has samples in the next two minutes; a's windows there produce nothing.
        tw.push("b", 3, T0 + 61_000, 1.0);
        let out = tw.push("b", 4, T0 + 190_000, 1.0);
        let keys: Vec<(String, i64)> = out
            .closed
            .iter()
            .map(|w| (w.metric.clone(), w.start_ms))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("a".to_owned(), T0),
                ("b".to_owned(), T0),
                ("b".to_owned(), T0 + 60_000)
            ]
        );
    }

    #[test]
    fn per_model_series_are_scoped_to_the_model_and_state_round_trips() {
        assert_eq!(scope_of_series("queue_wait_ms/llama"), "llama");
        assert_eq!(scope_of_series("gpu_vram_free_mb@gpu0"), "host");
        let mut tw = TimeWindows::new(60_000, 5_000);
        tw.push("x", 1, T0, 1.0);
        let json = serde_json::to_string(&tw).unwrap();
        let back: TimeWindows = serde_json::from_str(&json).unwrap();
        assert_eq!(back, tw);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Forgetting idle series closes the same windows as keeping them, on samples of a
        /// few series with gaps of days, some of them late or more than a week old.
        #[test]
        fn forgetting_idle_series_changes_no_window(
            items in proptest::collection::vec(
                (0u8..6, -600_000i64..120_000, 0u32..40, 0.0f64..100.0),
                1..300,
            ),
        ) {
            let mut kept = TimeWindows::new(60_000, 5_000).without_retirement();
            let mut retiring = TimeWindows::new(60_000, 5_000);
            let mut t = T0;
            for (seq, (series, back, gap_hours, value)) in items.into_iter().enumerate() {
                // Mostly forward, now and then a gap of up to 40 hours or a sample from the
                // past (up to 10 minutes, or 10 days when the gap draws 0).
                t += i64::from(gap_hours % 20 / 19) * i64::from(gap_hours) * HOUR_MS + 7_000;
                let ts = if gap_hours == 0 { t + back * 1_440 } else { t + back.min(0) / 10 };
                let key = format!("s{series}");
                let a = kept.push(&key, seq as u64 + 1, ts, value);
                let b = retiring.push(&key, seq as u64 + 1, ts, value);
                proptest::prop_assert_eq!(a, b);
            }
            proptest::prop_assert!(retiring.series_kept() <= kept.series_kept());
        }
    }

    #[test]
    fn a_series_idle_for_a_week_is_forgotten_and_a_sample_older_than_a_week_is_late() {
        let mut tw = TimeWindows::new(60_000, 5_000);
        tw.push("idle", 1, T0, 1.0);
        tw.push("busy", 2, T0 + 1_000, 1.0);
        let week = SERIES_IDLE_MS;
        tw.push("busy", 3, T0 + week, 1.0);
        assert_eq!(tw.series_kept(), 2, "idle closed a week ago, to the minute");
        tw.push("busy", 4, T0 + week + 2 * HOUR_MS, 1.0);
        assert_eq!(tw.series_kept(), 1);
        let old = tw.push("idle", 5, T0 + 3 * 60_000, 9.0);
        assert!(old.late, "more than a week behind the watermark");
        assert_eq!(tw.series_kept(), 1);
        let back = tw.push("idle", 6, T0 + week + 2 * HOUR_MS, 9.0);
        assert!(!back.late);
        assert_eq!(tw.series_kept(), 2);
    }
}
