//! Per-model run histograms and counters, folded from the log for the Prometheus exposition
//! (`GET /metrics`).
//!
//! [`RunMetrics`] keeps, per model label and substrate, fixed-bucket histograms of the model
//! latency, the total latency and the queue wait (in seconds), and all-time counters of tokens,
//! validation retries and budget breaches. Its size is bounded whatever the log holds: the
//! first [`MAX_MODEL_LABELS`] model ids the log names (in a run, a model load, a context
//! request, a context OOM or a per-model window) get their own label, in the order first named;
//! every later model is counted under [`OTHER_MODELS`]. A model labelled once keeps its label
//! for good (the log is append-only), so every count only grows: fit for Prometheus counters
//! and cumulative histograms. A model literally named `other` has no label of its own either:
//! it is counted under [`OTHER_MODELS`] with the rest.
//!
//! Local and cloud runs are kept apart (the exposition's `substrate` label): cloud runs are no
//! evidence of a local limit, but the specification's Section 9 says they are never hidden.
//!
//! Pure: no clock, no I/O. Like [`crate::CloudRuns`] it remembers the last seq it was given,
//! so feeding an overlapping page twice counts nothing twice.

use std::collections::BTreeSet;

use kora_model::{LogEntry, Record, Run, Substrate};

/// The most models with a label of their own.
pub const MAX_MODEL_LABELS: usize = 50;

/// The label of every model past the first [`MAX_MODEL_LABELS`].
pub const OTHER_MODELS: &str = "other";

/// Upper bounds (seconds) of the latency histograms' buckets: from 50 ms (a short completion
/// on a fast GPU) to two minutes (a long generation on a CPU); slower runs land in `+Inf`.
pub const LATENCY_BUCKETS_S: [f64; 15] = [
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];

/// Upper bounds (seconds) of the queue-wait histogram's buckets: from 5 ms to one minute.
pub const QUEUE_WAIT_BUCKETS_S: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// A fixed-bucket histogram of seconds. The bounds are the caller's (one of the constants
/// above); the counts are per bucket, not cumulative, with one more bucket than bounds (`+Inf`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// Records `seconds` (negative or non-finite values, which validation rejects upstream,
    /// count as 0) in the first bucket whose bound is at least it.
    fn observe(&mut self, bounds: &[f64], seconds: f64) {
        let v = if seconds.is_finite() && seconds > 0.0 {
            seconds
        } else {
            0.0
        };
        if self.counts.len() != bounds.len() + 1 {
            self.counts.resize(bounds.len() + 1, 0);
        }
        let i = bounds.partition_point(|b| *b < v);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The sum of the recorded values (seconds).
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// `(upper bound, values in that bucket)` for each of `bounds` and then `+Inf`, not
    /// cumulative (as prometheus-client's `encode_histogram` takes them).
    pub fn buckets(&self, bounds: &[f64]) -> Vec<(f64, u64)> {
        bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .enumerate()
            .map(|(i, b)| (b, self.counts.get(i).copied().unwrap_or(0)))
            .collect()
    }
}

/// The runs of one model label on one substrate.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunSeries {
    /// The model id, or [`OTHER_MODELS`].
    pub model: String,
    pub substrate: Substrate,
    /// `model_latency_ms`, in seconds, over [`LATENCY_BUCKETS_S`].
    pub model_latency: Histogram,
    /// `total_latency_ms`, in seconds, over [`LATENCY_BUCKETS_S`].
    pub total_latency: Histogram,
    /// `queue_wait_ms` of the runs that report it, in seconds, over [`QUEUE_WAIT_BUCKETS_S`].
    pub queue_wait: Histogram,
    /// `tokens_in` of the runs that report it.
    pub tokens_in: u64,
    /// `tokens_out` of the runs that report it.
    pub tokens_out: u64,
    pub validation_retries: u64,
    pub budget_breaches: u64,
}

impl RunSeries {
    fn new(model: String, substrate: Substrate) -> RunSeries {
        RunSeries {
            model,
            substrate,
            model_latency: Histogram::default(),
            total_latency: Histogram::default(),
            queue_wait: Histogram::default(),
            tokens_in: 0,
            tokens_out: 0,
            validation_retries: 0,
            budget_breaches: 0,
        }
    }

    /// How many runs the series counts.
    pub fn runs(&self) -> u64 {
        self.total_latency.count()
    }
}

/// The runs of the log, per model label and substrate (`RunMetrics::default()` is the empty
/// fold).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunMetrics {
    /// One past the highest seq pushed (any kind); 0 before the first.
    next_seq: u64,
    /// The models with a label of their own (at most [`MAX_MODEL_LABELS`]).
    models: BTreeSet<String>,
    /// Sorted by model label, then substrate.
    series: Vec<RunSeries>,
}

impl RunMetrics {
    /// One past the highest seq pushed so far.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Folds one log entry. An entry below [`RunMetrics::next_seq`] was seen already and is
    /// ignored.
    pub fn push(&mut self, entry: &LogEntry) {
        if entry.seq < self.next_seq {
            return;
        }
        self.next_seq = entry.seq.saturating_add(1);
        match &entry.record {
            Record::Run(run) => {
                self.name(&run.model_id);
                self.observe(run);
            }
            Record::ModelLoad(m) => self.name(&m.model_id),
            Record::ContextRequest(c) => self.name(&c.model_id),
            Record::ContextOom(c) => self.name(&c.model_id),
            Record::Window(w) if w.scope != "host" => self.name(&w.scope),
            _ => {}
        }
    }

    /// Gives `model` a label of its own while there is room.
    fn name(&mut self, model: &str) {
        if self.models.len() < MAX_MODEL_LABELS
            && model != OTHER_MODELS
            && !self.models.contains(model)
        {
            self.models.insert(model.to_owned());
        }
    }

    /// The label of `model`: its id when it has a label of its own, else [`OTHER_MODELS`].
    pub fn label<'a>(&self, model: &'a str) -> &'a str {
        if self.models.contains(model) {
            model
        } else {
            OTHER_MODELS
        }
    }

    /// The models with a label of their own, in id order.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.models.iter().map(String::as_str)
    }

    /// Every series, by model label then substrate (local first).
    pub fn series(&self) -> &[RunSeries] {
        &self.series
    }

    fn observe(&mut self, run: &Run) {
        let label = self.label(&run.model_id).to_owned();
        let at = match self
            .series
            .binary_search_by(|s| (s.model.as_str(), s.substrate).cmp(&(&label, run.substrate)))
        {
            Ok(i) => i,
            Err(i) => {
                self.series
                    .insert(i, RunSeries::new(label.clone(), run.substrate));
                i
            }
        };
        let Some(s) = self.series.get_mut(at) else {
            return;
        };
        s.model_latency
            .observe(&LATENCY_BUCKETS_S, run.model_latency_ms / 1000.0);
        s.total_latency
            .observe(&LATENCY_BUCKETS_S, run.total_latency_ms / 1000.0);
        if let Some(q) = run.queue_wait_ms {
            s.queue_wait.observe(&QUEUE_WAIT_BUCKETS_S, q / 1000.0);
        }
        s.tokens_in = s.tokens_in.saturating_add(run.tokens_in.unwrap_or(0));
        s.tokens_out = s.tokens_out.saturating_add(run.tokens_out.unwrap_or(0));
        s.validation_retries = s
            .validation_retries
            .saturating_add(u64::from(run.validation_retry_count));
        s.budget_breaches = s
            .budget_breaches
            .saturating_add(u64::from(run.budget_breach_count));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(seq: u64, model: &str, substrate: &str, latency_ms: f64) -> LogEntry {
        serde_json::from_value(
            json!({"seq": seq, "kind": "run", "ts_ms": 1, "run_id": format!("r{seq}"),
            "session_id": "s", "model_id": model, "substrate": substrate,
            "prompt_hash": "a".repeat(64), "context_tokens": 1000, "tokens_in": 10, "tokens_out": 5,
            "model_latency_ms": latency_ms, "total_latency_ms": latency_ms + 100.0,
            "deterministic_stage_ms": 100.0, "model_stage_ms": latency_ms, "queue_wait_ms": 30.0,
            "validation_retry_count": 1, "budget_breach_count": 2}),
        )
        .unwrap()
    }

    fn load(seq: u64, model: &str) -> LogEntry {
        serde_json::from_value(json!({"seq": seq, "kind": "model_load", "ts_ms": 1,
            "model_id": model, "model_required_vram_mb": 1000.0, "outcome": "ok"}))
        .unwrap()
    }

    #[test]
    fn histograms_put_each_value_in_the_first_bucket_at_or_above_it() {
        let mut m = RunMetrics::default();
        for (i, ms) in [40.0, 50.0, 50.001, 999.0, 1000.0, 130_000.0]
            .into_iter()
            .enumerate()
        {
            m.push(&run(i as u64 + 1, "a", "local", ms));
        }
        let s = &m.series()[0];
        assert_eq!((s.model.as_str(), s.substrate), ("a", Substrate::Local));
        assert_eq!(s.runs(), 6);
        let b = s.model_latency.buckets(&LATENCY_BUCKETS_S);
        assert_eq!(b.len(), LATENCY_BUCKETS_S.len() + 1);
        let at = |bound: f64| b.iter().find(|(x, _)| *x == bound).unwrap().1;
        assert_eq!(at(0.05), 2, "40 ms and exactly 50 ms: le 0.05");
        assert_eq!(at(0.1), 1);
        assert_eq!(at(1.0), 2, "999 ms and exactly 1 s: le 1");
        assert_eq!(at(f64::INFINITY), 1, "130 s is past the last bound");
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 6);
        let sum = (40.0 + 50.0 + 50.001 + 999.0 + 1000.0 + 130_000.0) / 1000.0;
        assert!((s.model_latency.sum() - sum).abs() < 1e-9);
        assert_eq!(s.queue_wait.count(), 6);
        assert_eq!(
            s.queue_wait.buckets(&QUEUE_WAIT_BUCKETS_S)[3],
            (0.05, 6),
            "30 ms: le 0.05"
        );
        assert_eq!((s.tokens_in, s.tokens_out), (60, 30));
        assert_eq!((s.validation_retries, s.budget_breaches), (6, 12));
    }

    #[test]
    fn local_and_cloud_runs_are_kept_apart() {
        let mut m = RunMetrics::default();
        m.push(&run(1, "b", "cloud", 100.0));
        m.push(&run(2, "a", "local", 100.0));
        m.push(&run(3, "b", "local", 100.0));
        m.push(&run(4, "b", "cloud", 100.0));
        let keys: Vec<_> = m
            .series()
            .iter()
            .map(|s| (s.model.as_str(), s.substrate, s.runs()))
            .collect();
        assert_eq!(
            keys,
            [
                ("a", Substrate::Local, 1),
                ("b", Substrate::Local, 1),
                ("b", Substrate::Cloud, 2)
            ]
        );
    }

    #[test]
    fn models_past_the_bound_share_one_label_and_labels_never_move() {
        let mut m = RunMetrics::default();
        let mut seq = 0;
        let mut next = || {
            seq += 1;
            seq
        };
        // A model load names a model before any run of it; `other` is never a label.
        m.push(&load(next(), "loaded-first"));
        m.push(&run(next(), OTHER_MODELS, "local", 10.0));
        for i in 0..MAX_MODEL_LABELS + 10 {
            m.push(&run(next(), &format!("m{i:03}"), "local", 10.0));
        }
        // A model named early keeps its label, even after the bound is reached.
        m.push(&run(next(), "m000", "local", 10.0));
        m.push(&run(next(), "loaded-first", "local", 10.0));
        assert_eq!(m.models().count(), MAX_MODEL_LABELS);
        assert_eq!(m.label("loaded-first"), "loaded-first");
        assert_eq!(m.label("m000"), "m000");
        assert_eq!(m.label(&format!("m{:03}", MAX_MODEL_LABELS - 2)), "m048");
        assert_eq!(
            m.label(&format!("m{:03}", MAX_MODEL_LABELS - 1)),
            OTHER_MODELS
        );
        assert_eq!(m.series().len(), MAX_MODEL_LABELS + 1);
        let other = m.series().iter().find(|s| s.model == OTHER_MODELS).unwrap();
        // `other` itself, then the 11 models past the 49 that runs named after the load.
        assert_eq!(other.runs(), 1 + 11);
        let all: u64 = m.series().iter().map(RunSeries::runs).sum();
        assert_eq!(all, 1 + MAX_MODEL_LABELS as u64 + 10 + 2);
    }

    #[test]
    fn a_page_fed_twice_counts_once_and_the_fold_round_trips() {
        let mut m = RunMetrics::default();
        let page = [run(1, "a", "local", 10.0), run(2, "a", "local", 20.0)];
        for e in page.iter().chain(page.iter()) {
            m.push(e);
        }
        assert_eq!(m.series()[0].runs(), 2);
        assert_eq!(m.next_seq(), 3);
        let back: RunMetrics = serde_json::from_value(serde_json::to_value(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }
}
