//! The runs that executed on Krako Cloud, folded from the log so that they can be counted and
//! listed without reading every run again.
//!
//! Cloud runs (`substrate: cloud`) are recorded like local ones and are no evidence of a local
//! limit; the specification's Section 9 says cloud execution must never be hidden, so the
//! product metrics count them and the dashboards list them. [`CloudRuns`] keeps one small row
//! per cloud run (seq, time, model, tokens) and remembers the last seq it was given, so its
//! owner feeds it only the runs appended since. Pure: no clock, no I/O.

use std::collections::BTreeMap;

use kora_model::{LogEntry, MAX_CLOUD_MODELS, ModelCloudRuns, ProductMetrics, Record, Substrate};

/// One cloud run, as [`CloudRuns`] keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Row {
    seq: u64,
    ts_ms: i64,
    /// Index into [`CloudRuns::models`].
    model: u32,
    total_tokens: Option<u64>,
}

/// The cloud runs of the log, in seq order.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CloudRuns {
    /// One past the highest seq pushed (any kind); 0 before the first.
    next_seq: u64,
    /// Every model id seen on a cloud run, in the order first seen.
    models: Vec<String>,
    index: BTreeMap<String, u32>,
    rows: Vec<Row>,
}

/// Cloud runs over a range: the totals, and per model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudRunSummary {
    pub count: u64,
    pub tokens: u64,
    pub without_tokens: u64,
    /// Most runs first, ties by model id; every model of the range.
    pub by_model: Vec<ModelCloudRuns>,
}

impl CloudRuns {
    /// An empty fold.
    pub fn new() -> CloudRuns {
        CloudRuns::default()
    }

    /// One past the highest seq pushed so far: feed the entries from it on.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Folds one log entry: a cloud run is kept, anything else only advances
    /// [`CloudRuns::next_seq`]. An entry below `next_seq` was seen already and is ignored,
    /// so feeding an overlapping page twice counts nothing twice.
    pub fn push(&mut self, entry: &LogEntry) {
        if entry.seq < self.next_seq {
            return;
        }
        self.next_seq = entry.seq.saturating_add(1);
        let Record::Run(run) = &entry.record else {
            return;
        };
        if run.substrate != Substrate::Cloud {
            return;
        }
        let model = match self.index.get(&run.model_id) {
            Some(&m) => m,
            None => {
                let m = u32::try_from(self.models.len()).unwrap_or(u32::MAX);
                self.models.push(run.model_id.clone());
                self.index.insert(run.model_id.clone(), m);
                m
            }
        };
        let total_tokens = run
            .total_tokens
            .or_else(|| match (run.tokens_in, run.tokens_out) {
                (Some(i), Some(o)) => i.checked_add(o),
                _ => None,
            });
        self.rows.push(Row {
            seq: entry.seq,
            ts_ms: entry.record.ts_ms().unwrap_or(i64::MIN),
            model,
            total_tokens,
        });
    }

    /// How many cloud runs the log holds.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the log holds no cloud run.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The seq and the time of the newest cloud run (the latest time, whatever its seq).
    pub fn newest(&self) -> Option<(u64, i64)> {
        let seq = self.rows.last()?.seq;
        let ts = self.rows.iter().map(|r| r.ts_ms).max()?;
        Some((seq, ts))
    }

    /// The cloud runs with `from_ms <= ts_ms < to_ms`.
    pub fn summary(&self, from_ms: i64, to_ms: i64) -> CloudRunSummary {
        let mut out = CloudRunSummary::default();
        let mut per: BTreeMap<u32, ModelCloudRuns> = BTreeMap::new();
        for r in self
            .rows
            .iter()
            .filter(|r| r.ts_ms >= from_ms && r.ts_ms < to_ms)
        {
            let m = per.entry(r.model).or_insert_with(|| ModelCloudRuns {
                model_id: self
                    .models
                    .get(r.model as usize)
                    .cloned()
                    .unwrap_or_default(),
                runs: 0,
                tokens: 0,
                runs_without_tokens: 0,
            });
            out.count += 1;
            m.runs += 1;
            match r.total_tokens {
                Some(t) => {
                    out.tokens = out.tokens.saturating_add(t);
                    m.tokens = m.tokens.saturating_add(t);
                }
                None => {
                    out.without_tokens += 1;
                    m.runs_without_tokens += 1;
                }
            }
        }
        out.by_model = per.into_values().collect();
        out.by_model.sort_by(|a, b| {
            b.runs
                .cmp(&a.runs)
                .then_with(|| a.model_id.cmp(&b.model_id))
        });
        out
    }

    /// Fills the cloud fields of `metrics` for its own range; with `per_model`, also
    /// `cloud_runs_by_model` (at most [`MAX_CLOUD_MODELS`] models), else leaves it `None` (as
    /// export bundles do: model ids are names the user chose).
    pub fn fill(&self, metrics: &mut ProductMetrics, per_model: bool) {
        let s = self.summary(metrics.from_ms, metrics.to_ms);
        metrics.cloud_run_count = s.count;
        metrics.cloud_run_tokens = s.tokens;
        metrics.cloud_runs_without_tokens = s.without_tokens;
        metrics.cloud_runs_by_model = per_model.then(|| {
            let mut by = s.by_model;
            by.truncate(MAX_CLOUD_MODELS);
            by
        });
    }

    /// The seqs of the newest `limit` cloud runs below `before` (all when `None`), newest
    /// first.
    pub fn recent_seqs(&self, before: Option<u64>, limit: usize) -> Vec<u64> {
        let end = before.unwrap_or(u64::MAX);
        let below = self.rows.partition_point(|r| r.seq < end);
        self.rows[..below]
            .iter()
            .rev()
            .take(limit)
            .map(|r| r.seq)
            .collect()
    }

    /// All-time cloud runs of the first `max_models` models to run on the cloud, in the order
    /// they first did, and the runs of every later model together. The set of named models
    /// never changes once chosen (the log is append-only), so each count only grows: fit for
    /// a Prometheus counter.
    pub fn per_model_all_time(&self, max_models: usize) -> (Vec<(&str, u64)>, u64) {
        let mut named = vec![0u64; self.models.len().min(max_models)];
        let mut others = 0;
        for r in &self.rows {
            match named.get_mut(r.model as usize) {
                Some(n) => *n += 1,
                None => others += 1,
            }
        }
        let named = self.models.iter().map(String::as_str).zip(named).collect();
        (named, others)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn run(
        seq: u64,
        ts: i64,
        model: &str,
        substrate: &str,
        tokens: Option<(u64, u64)>,
    ) -> LogEntry {
        let mut v = json!({"seq": seq, "kind": "run", "ts_ms": ts, "run_id": format!("r{seq}"),
            "session_id": "s", "model_id": model, "substrate": substrate,
            "prompt_hash": "a".repeat(64), "context_tokens": 1000,
            "model_latency_ms": 900.0, "total_latency_ms": 1000.0,
            "deterministic_stage_ms": 100.0, "model_stage_ms": 900.0,
            "validation_retry_count": 0, "budget_breach_count": 0});
        if let Some((i, o)) = tokens {
            v["tokens_in"] = json!(i);
            v["tokens_out"] = json!(o);
        }
        serde_json::from_value(v).unwrap()
    }

    fn other(seq: u64) -> LogEntry {
        let v: Value =
            json!({"seq": seq, "kind": "session_started", "ts_ms": 1, "session_id": "s"});
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn counts_cloud_runs_only_per_range_and_model() {
        let mut c = CloudRuns::new();
        for e in [
            run(1, 1000, "m", "local", Some((10, 5))),
            run(2, 1100, "big", "cloud", Some((100, 50))),
            other(3),
            run(4, 1200, "m", "cloud", None),
            run(5, 1300, "big", "cloud", Some((1, 1))),
            run(6, 5000, "m", "cloud", Some((7, 0))), // out of the range below
        ] {
            c.push(&e);
        }
        assert_eq!(c.len(), 4);
        assert_eq!(c.next_seq(), 7);
        let s = c.summary(1000, 2000);
        assert_eq!((s.count, s.tokens, s.without_tokens), (3, 152, 1));
        assert_eq!(
            s.by_model,
            vec![
                ModelCloudRuns {
                    model_id: "big".into(),
                    runs: 2,
                    tokens: 152,
                    runs_without_tokens: 0
                },
                ModelCloudRuns {
                    model_id: "m".into(),
                    runs: 1,
                    tokens: 0,
                    runs_without_tokens: 1
                },
            ]
        );
        assert_eq!(c.summary(0, i64::MAX).count, 4);
        assert_eq!(c.newest(), Some((6, 5000)));
        assert_eq!(c.recent_seqs(None, 2), vec![6, 5]);
        assert_eq!(c.recent_seqs(Some(5), 10), vec![4, 2]);
        assert_eq!(c.recent_seqs(Some(2), 10), Vec::<u64>::new());
    }

    #[test]
    fn a_page_fed_twice_counts_once() {
        let mut c = CloudRuns::new();
        let page = [run(1, 1, "m", "cloud", None), run(2, 2, "m", "cloud", None)];
        for e in page.iter().chain(page.iter()) {
            c.push(e);
        }
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn per_model_counts_keep_their_first_models() {
        let mut c = CloudRuns::new();
        let models = ["a", "b", "c", "a", "c", "d"];
        for (i, m) in models.iter().enumerate() {
            c.push(&run(i as u64 + 1, 1, m, "cloud", None));
        }
        let (named, others) = c.per_model_all_time(2);
        assert_eq!(named, vec![("a", 2), ("b", 1)]);
        assert_eq!(others, 3);
    }

    #[test]
    fn metrics_of_an_older_service_without_cloud_fields_still_decode() {
        let m = crate::product_metrics(&[], "all", 0, 100);
        let mut v = serde_json::to_value(&m).unwrap();
        for k in [
            "cloud_run_count",
            "cloud_run_tokens",
            "cloud_runs_without_tokens",
            "cloud_runs_by_model",
        ] {
            v.as_object_mut().unwrap().remove(k);
        }
        let back: ProductMetrics = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn fill_sets_the_range_and_leaves_models_out_when_asked() {
        let mut c = CloudRuns::new();
        c.push(&run(1, 10, "m", "cloud", Some((3, 4))));
        let mut m = crate::product_metrics(&[], "all", 0, 100);
        assert_eq!(m.cloud_run_count, 0);
        c.fill(&mut m, false);
        assert_eq!((m.cloud_run_count, m.cloud_run_tokens), (1, 7));
        assert_eq!(m.cloud_runs_by_model, None);
        c.fill(&mut m, true);
        assert_eq!(m.cloud_runs_by_model.map(|v| v.len()), Some(1));
    }
}
