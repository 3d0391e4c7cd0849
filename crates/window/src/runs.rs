//! Run windows: per model, tumbling blocks of N runs, and the last N runs.

use std::collections::{BTreeMap, VecDeque};

use kora_model::{Run, WindowRecord};
use serde::{Deserialize, Serialize};

use crate::quantile::{Summary, summarize};

/// The window kind of a block of runs in a `window` record.
pub const WINDOW_KIND_RUNS: &str = "runs";

/// The per-run values the windows keep of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPoint {
    pub seq: u64,
    pub ts_ms: i64,
    pub model_latency_ms: f64,
    pub total_latency_ms: f64,
    pub validation_retry_count: f64,
    pub budget_breach_count: f64,
    pub deterministic_stage_ms: f64,
    pub model_stage_ms: f64,
    pub context_tokens: u64,
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
}

impl RunPoint {
    /// The point of a logged run; `None` when the run carries no time.
    pub fn from_run(seq: u64, run: &Run) -> Option<RunPoint> {
        Some(RunPoint {
            seq,
            ts_ms: run.ts_ms?,
            model_latency_ms: run.model_latency_ms,
            total_latency_ms: run.total_latency_ms,
            validation_retry_count: f64::from(run.validation_retry_count),
            budget_breach_count: f64::from(run.budget_breach_count),
            deterministic_stage_ms: run.deterministic_stage_ms,
            model_stage_ms: run.model_stage_ms,
            context_tokens: run.context_tokens,
            tokens_in: run.tokens_in,
            tokens_out: run.tokens_out,
        })
    }
}

/// A closed block of runs of one model (or the rolling last N runs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunBlock {
    pub model_id: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub count: u64,
    pub model_latency_ms: Summary,
    pub total_latency_ms: Summary,
    pub validation_retry_count: Summary,
    pub budget_breach_count: Summary,
    pub deterministic_stage_ms: Summary,
    pub model_stage_ms: Summary,
    /// deterministic / (deterministic + model) stage time over the block; 0 when both are 0.
    pub deterministic_share: f64,
}

impl RunBlock {
    /// Summarizes `points` (in log order); `None` when there are none.
    pub fn from_points<'a>(
        model_id: &str,
        points: impl IntoIterator<Item = &'a RunPoint>,
    ) -> Option<RunBlock> {
        let points: Vec<&RunPoint> = points.into_iter().collect();
        let first = points.first()?;
        let last = points.last()?;
        let col = |f: fn(&RunPoint) -> f64| -> Option<Summary> {
            let v: Vec<f64> = points.iter().map(|p| f(p)).collect();
            summarize(&v)
        };
        let det: f64 = points.iter().map(|p| p.deterministic_stage_ms).sum();
        let model: f64 = points.iter().map(|p| p.model_stage_ms).sum();
        Some(RunBlock {
            model_id: model_id.to_owned(),
            first_seq: first.seq,
            last_seq: last.seq,
            start_ms: points.iter().map(|p| p.ts_ms).min()?,
            end_ms: points.iter().map(|p| p.ts_ms).max()?,
            count: points.len() as u64,
            model_latency_ms: col(|p| p.model_latency_ms)?,
            total_latency_ms: col(|p| p.total_latency_ms)?,
            validation_retry_count: col(|p| p.validation_retry_count)?,
            budget_breach_count: col(|p| p.budget_breach_count)?,
            deterministic_stage_ms: col(|p| p.deterministic_stage_ms)?,
            model_stage_ms: col(|p| p.model_stage_ms)?,
            deterministic_share: if det + model > 0.0 {
                det / (det + model)
            } else {
                0.0
            },
        })
    }

    /// The block as `window` records (kind `runs`, scope the model), one per metric, in a
    /// fixed order; `ts_ms` is the time of the run that closed the block.
    pub fn window_records(&self) -> Vec<WindowRecord> {
        let metrics: [(&str, &Summary); 6] = [
            ("model_latency_ms", &self.model_latency_ms),
            ("total_latency_ms", &self.total_latency_ms),
            ("validation_retry_count", &self.validation_retry_count),
            ("budget_breach_count", &self.budget_breach_count),
            ("deterministic_stage_ms", &self.deterministic_stage_ms),
            ("model_stage_ms", &self.model_stage_ms),
        ];
        metrics
            .into_iter()
            .map(|(metric, s)| WindowRecord {
                ts_ms: self.end_ms,
                window_kind: WINDOW_KIND_RUNS.to_owned(),
                metric: metric.to_owned(),
                scope: self.model_id.clone(),
                start_ms: self.start_ms,
                end_ms: self.end_ms,
                first_seq: Some(self.first_seq),
                last_seq: Some(self.last_seq),
                count: s.count,
                min: s.min,
                max: s.max,
                p50: s.p50,
                p95: s.p95,
            })
            .collect()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ModelRuns {
    /// Runs of the block still open.
    open: Vec<RunPoint>,
    /// The last N runs, oldest first.
    recent: VecDeque<RunPoint>,
    /// Runs seen in total.
    seen: u64,
}

/// Per model, tumbling blocks of `n` runs and the last `n` runs. Serializable, so it can be
/// checkpointed with the engine state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunWindows {
    n: usize,
    models: BTreeMap<String, ModelRuns>,
}

impl RunWindows {
    /// Blocks of `n` runs (`n` is at least 1).
    pub fn new(n: usize) -> RunWindows {
        RunWindows {
            n: n.max(1),
            models: BTreeMap::new(),
        }
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Adds a run of `model_id`; returns the block it closes, if it is the block's Nth run.
    pub fn push(&mut self, model_id: &str, point: RunPoint) -> Option<RunBlock> {
        let n = self.n;
        let m = self.models.entry(model_id.to_owned()).or_default();
        m.seen += 1;
        m.recent.push_back(point.clone());
        while m.recent.len() > n {
            m.recent.pop_front();
        }
        m.open.push(point);
        if m.open.len() >= n {
            let block = RunBlock::from_points(model_id, m.open.iter());
            m.open.clear();
            block
        } else {
            None
        }
    }

    /// The last (up to) N runs of a model, oldest first.
    pub fn last_runs(&self, model_id: &str) -> Vec<&RunPoint> {
        self.models
            .get(model_id)
            .map(|m| m.recent.iter().collect())
            .unwrap_or_default()
    }

    /// The last (up to) N runs of every model, by model id.
    pub fn all_last_runs(&self) -> Vec<&RunPoint> {
        self.models.values().flat_map(|m| m.recent.iter()).collect()
    }

    /// The rolling summary of a model's last (up to) N runs.
    pub fn rolling(&self, model_id: &str) -> Option<RunBlock> {
        RunBlock::from_points(model_id, self.last_runs(model_id))
    }

    /// Runs of a model seen in total.
    pub fn runs_seen(&self, model_id: &str) -> u64 {
        self.models.get(model_id).map_or(0, |m| m.seen)
    }

    /// Runs in the model's open (not yet closed) block.
    pub fn open_runs(&self, model_id: &str) -> usize {
        self.models.get(model_id).map_or(0, |m| m.open.len())
    }

    /// The models seen, in order.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// The newest time among a model's last N runs: when it last ran, as its windows know.
    pub fn newest_ms(&self, model_id: &str) -> Option<i64> {
        self.models
            .get(model_id)
            .and_then(|m| m.recent.iter().map(|p| p.ts_ms).max())
    }

    /// Whether a model has runs and every one of its last N is older than `horizon`.
    pub fn idle_before(&self, model_id: &str, horizon: i64) -> bool {
        self.newest_ms(model_id).is_some_and(|t| t < horizon)
    }

    /// The last (up to) N runs of every model not [`Self::idle_before`] `horizon`.
    pub fn all_last_runs_since(&self, horizon: i64) -> Vec<&RunPoint> {
        self.models
            .iter()
            .filter(|(id, _)| !self.idle_before(id, horizon))
            .flat_map(|(_, m)| m.recent.iter())
            .collect()
    }

    /// The models [`Self::idle_before`] `horizon`, in order.
    pub fn models_idle_before(&self, horizon: i64) -> Vec<String> {
        self.models
            .keys()
            .filter(|id| self.idle_before(id, horizon))
            .cloned()
            .collect()
    }

    /// Forgets a model: its open block, its last N runs and its count, as if it had never
    /// run.
    pub fn forget(&mut self, model_id: &str) {
        self.models.remove(model_id);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pt(seq: u64, lat: f64) -> RunPoint {
        RunPoint {
            seq,
            ts_ms: 1_000 * seq as i64,
            model_latency_ms: lat,
            total_latency_ms: lat + 100.0,
            validation_retry_count: 0.0,
            budget_breach_count: 0.0,
            deterministic_stage_ms: 100.0,
            model_stage_ms: lat,
            context_tokens: 1000,
            tokens_in: Some(800),
            tokens_out: Some(200),
        }
    }

    #[test]
    fn blocks_close_on_the_nth_run_per_model() {
        let mut w = RunWindows::new(3);
        assert!(w.push("a", pt(1, 10.0)).is_none());
        assert!(w.push("b", pt(2, 99.0)).is_none());
        assert!(w.push("a", pt(3, 30.0)).is_none());
        let b = w.push("a", pt(4, 20.0)).unwrap();
        assert_eq!((b.first_seq, b.last_seq, b.count), (1, 4, 3));
        assert_eq!(b.model_latency_ms.p95, 30.0);
        assert_eq!(b.start_ms, 1_000);
        assert_eq!(b.end_ms, 4_000);
        assert_eq!(w.open_runs("a"), 0);
        assert_eq!(w.open_runs("b"), 1);
        let recs = b.window_records();
        assert_eq!(recs.len(), 6);
        assert_eq!(recs[0].metric, "model_latency_ms");
        assert_eq!(recs[0].window_kind, "runs");
        assert_eq!(recs[0].scope, "a");
    }

    #[test]
    fn last_runs_keeps_n() {
        let mut w = RunWindows::new(2);
        for i in 1..=5 {
            w.push("a", pt(i, i as f64));
        }
        let seqs: Vec<u64> = w.last_runs("a").iter().map(|p| p.seq).collect();
        assert_eq!(seqs, vec![4, 5]);
        assert_eq!(w.runs_seen("a"), 5);
        assert_eq!(w.rolling("a").unwrap().model_latency_ms.p95, 5.0);
    }
}
