//! The product metrics of the specification's Section 8, as a read model folded from the log.
//!
//! Pure: the owner pushes the log entries in seq order and asks for a range. A suggestion is
//! counted in the range of its own time; its answer is its first feedback, whenever that came.
//! A rate with nothing to divide is "none yet" (`value: None`), never 0 or NaN.
//!
//! [`ProductIndex`] keeps one small row per suggestion, firing, suppression and mitigation
//! outcome (never the records themselves), ordered by time, and running totals, so that the
//! whole-log answer (`/metrics`, `range=all`) costs the same however long the log is, and a
//! range costs the rows inside it. The service folds it as it follows the log and checkpoints
//! it with the engine's state.

use std::collections::BTreeMap;
use std::ops::Bound;

use kora_model::{
    Category, CategoryCount, FeedbackAction, LogEntry, MitigationEffect, OptionKind,
    ProductMetrics, Rate, Record,
};
use serde::{Deserialize, Serialize};

/// Rows are keyed by `(ts_ms, seq)`: time order, ties in log order.
type Key = (i64, u64);

/// One suggestion, as the index keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct SuggestionRow {
    offered_cloud: bool,
    first_answer: Option<FeedbackAction>,
}

/// Counts over every row of the index (the answer for a range that holds them all).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Totals {
    suggestions: u64,
    cloud_offers: u64,
    accepted: u64,
    dismissed: u64,
    firings: BTreeMap<Category, u64>,
    resolved: u64,
    followed: u64,
}

/// The Section 8 read model: see the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProductIndex {
    suggestions: BTreeMap<Key, SuggestionRow>,
    /// Suggestion id -> its key: the first answer finds its row, feedback finds its suggestion.
    ids: BTreeMap<String, Key>,
    /// First answers to suggestions not (yet) in the index.
    early_answers: BTreeMap<String, FeedbackAction>,
    firings: BTreeMap<Key, Category>,
    suppressions: BTreeMap<Key, ()>,
    /// Outcomes that measured something: whether the limit was resolved.
    outcomes: BTreeMap<Key, bool>,
    totals: Totals,
    /// The highest seq and the latest time among the entries of the kinds kept (feedback and
    /// inconclusive outcomes included): what an export bundle says it covers.
    newest_seq: Option<u64>,
    newest_ts: Option<i64>,
}

impl ProductIndex {
    pub fn new() -> ProductIndex {
        ProductIndex::default()
    }

    /// Folds one log entry (any kind; only the Section 8 ones are kept). Entries must come in
    /// seq order; a record without a time is in no range and is not kept.
    pub fn push(&mut self, entry: &LogEntry) {
        if matches!(
            entry.record,
            Record::Suggestion(_)
                | Record::Feedback(_)
                | Record::Firing(_)
                | Record::Suppression(_)
                | Record::MitigationOutcome(_)
        ) {
            self.newest_seq = self.newest_seq.max(Some(entry.seq));
            self.newest_ts = self.newest_ts.max(entry.record.ts_ms());
        }
        match &entry.record {
            Record::Feedback(f) => self.answer(&f.suggestion_id, f.action),
            record => {
                let Some(ts) = record.ts_ms() else { return };
                let key = (ts, entry.seq);
                match record {
                    Record::Suggestion(s) => {
                        if self.ids.contains_key(&s.suggestion_id) {
                            return;
                        }
                        let offered_cloud = s.options.iter().any(|o| o.kind == OptionKind::Cloud);
                        let first_answer = self.early_answers.remove(&s.suggestion_id);
                        self.ids.insert(s.suggestion_id.clone(), key);
                        self.suggestions.insert(
                            key,
                            SuggestionRow {
                                offered_cloud,
                                first_answer,
                            },
                        );
                        let t = &mut self.totals;
                        t.suggestions += 1;
                        t.cloud_offers += u64::from(offered_cloud);
                        match first_answer {
                            Some(FeedbackAction::Accepted) => t.accepted += 1,
                            Some(FeedbackAction::Dismissed) => t.dismissed += 1,
                            None => {}
                        }
                    }
                    Record::Firing(f) => {
                        self.firings.insert(key, f.category);
                        *self.totals.firings.entry(f.category).or_default() += 1;
                    }
                    Record::Suppression(_) => {
                        self.suppressions.insert(key, ());
                    }
                    Record::MitigationOutcome(m) => {
                        let resolved = match m.effect {
                            MitigationEffect::Resolved => true,
                            MitigationEffect::Partial | MitigationEffect::NoEffect => false,
                            MitigationEffect::Inconclusive => return,
                        };
                        self.outcomes.insert(key, resolved);
                        self.totals.followed += 1;
                        self.totals.resolved += u64::from(resolved);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Records `action` as the answer to `id` unless it was answered before.
    fn answer(&mut self, id: &str, action: FeedbackAction) {
        let Some(key) = self.ids.get(id) else {
            self.early_answers.entry(id.to_owned()).or_insert(action);
            return;
        };
        let Some(row) = self.suggestions.get_mut(key) else {
            return;
        };
        if row.first_answer.is_some() {
            return;
        }
        row.first_answer = Some(action);
        match action {
            FeedbackAction::Accepted => self.totals.accepted += 1,
            FeedbackAction::Dismissed => self.totals.dismissed += 1,
        }
    }

    /// The highest seq and the latest time among the entries of the Section 8 kinds pushed
    /// (suggestions, feedback, firings, suppressions, outcomes).
    pub fn newest(&self) -> (Option<u64>, Option<i64>) {
        (self.newest_seq, self.newest_ts)
    }

    /// The seq of the suggestion with this id.
    pub fn suggestion_seq(&self, id: &str) -> Option<u64> {
        self.ids.get(id).map(|k| k.1)
    }

    /// Rows kept (a bound the owner can watch).
    pub fn rows(&self) -> usize {
        self.suggestions.len() + self.firings.len() + self.suppressions.len() + self.outcomes.len()
    }

    /// The metrics over `from_ms <= ts_ms < to_ms`, named `range`. A range that holds every row
    /// is answered from the running totals; any other reads the rows inside it.
    pub fn metrics(&self, range: &str, from_ms: i64, to_ms: i64) -> ProductMetrics {
        let (count, cloud, accepted, dismissed) = if covers(&self.suggestions, from_ms, to_ms) {
            let t = &self.totals;
            (t.suggestions, t.cloud_offers, t.accepted, t.dismissed)
        } else {
            let mut c = (0, 0, 0, 0);
            for row in in_range(&self.suggestions, from_ms, to_ms).map(|(_, r)| r) {
                c.0 += 1;
                c.1 += u64::from(row.offered_cloud);
                c.2 += u64::from(row.first_answer == Some(FeedbackAction::Accepted));
                c.3 += u64::from(row.first_answer == Some(FeedbackAction::Dismissed));
            }
            c
        };
        let firings = if covers(&self.firings, from_ms, to_ms) {
            self.totals.firings.clone()
        } else {
            let mut by: BTreeMap<Category, u64> = BTreeMap::new();
            for (_, c) in in_range(&self.firings, from_ms, to_ms) {
                *by.entry(*c).or_default() += 1;
            }
            by
        };
        let (resolved, followed) = if covers(&self.outcomes, from_ms, to_ms) {
            (self.totals.resolved, self.totals.followed)
        } else {
            in_range(&self.outcomes, from_ms, to_ms).fold((0, 0), |(r, f), (_, resolved)| {
                (r + u64::from(*resolved), f + 1)
            })
        };
        let suppression_count = if covers(&self.suppressions, from_ms, to_ms) {
            self.suppressions.len() as u64
        } else {
            in_range(&self.suppressions, from_ms, to_ms).count() as u64
        };
        let top = top_categories(&firings);
        ProductMetrics {
            range: range.to_owned(),
            from_ms,
            to_ms,
            upgrade_suggestion_count: count,
            cloud_offer_count: cloud,
            suggestion_accept_rate: Rate::of(accepted, count),
            suggestion_dismiss_rate: Rate::of(dismissed, count),
            firing_count: firings.values().sum(),
            top_trigger_categories: top,
            local_mitigation_success_rate: Rate::of(resolved, followed),
            suppression_count,
            // Cloud runs are not kept here: see [`crate::CloudRuns::fill`].
            cloud_run_count: 0,
            cloud_run_tokens: 0,
            cloud_runs_without_tokens: 0,
            cloud_runs_by_model: None,
        }
    }
}

/// Firings per category, most first; ties keep the specification's order (a stable sort).
fn top_categories(firings: &BTreeMap<Category, u64>) -> Vec<CategoryCount> {
    let mut top: Vec<CategoryCount> = Category::ALL
        .into_iter()
        .filter_map(|c| {
            firings.get(&c).map(|&n| CategoryCount {
                category: c,
                firings: n,
            })
        })
        .collect();
    top.sort_by_key(|c| std::cmp::Reverse(c.firings));
    top
}

/// Whether every row of `map` lies in `from_ms <= ts < to_ms`.
fn covers<V>(map: &BTreeMap<Key, V>, from_ms: i64, to_ms: i64) -> bool {
    match (map.first_key_value(), map.last_key_value()) {
        (Some((first, _)), Some((last, _))) => first.0 >= from_ms && last.0 < to_ms,
        _ => true,
    }
}

/// The rows of `map` with `from_ms <= ts < to_ms`.
fn in_range<V>(
    map: &BTreeMap<Key, V>,
    from_ms: i64,
    to_ms: i64,
) -> impl Iterator<Item = (&Key, &V)> {
    let range = if from_ms < to_ms {
        (Bound::Included((from_ms, 0)), Bound::Excluded((to_ms, 0)))
    } else {
        // Empty (BTreeMap::range panics on a reversed range).
        (Bound::Included((from_ms, 0)), Bound::Excluded((from_ms, 0)))
    };
    map.range(range)
}

/// Computes the metrics of `entries` (in seq order) over `from_ms <= ts_ms < to_ms`, named
/// `range`: a [`ProductIndex`] folded from them.
pub fn product_metrics<'a>(
    entries: impl IntoIterator<Item = &'a LogEntry>,
    range: &str,
    from_ms: i64,
    to_ms: i64,
) -> ProductMetrics {
    let mut index = ProductIndex::new();
    for e in entries {
        index.push(e);
    }
    index.metrics(range, from_ms, to_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn entry(seq: u64, v: Value) -> LogEntry {
        let mut v = v;
        v["seq"] = json!(seq);
        serde_json::from_value(v).unwrap()
    }

    fn suggestion(seq: u64, ts: i64, id: &str, cloud: bool) -> LogEntry {
        let mut options =
            vec![json!({"id": "smaller_model", "kind": "local", "label": "a smaller model"})];
        if cloud {
            options.push(json!({"id": "cloud", "kind": "cloud", "label": "Krako Cloud"}));
        }
        entry(
            seq,
            json!({"kind": "suggestion", "ts_ms": ts, "suggestion_id": id, "firing_id": "f",
            "category": "model_fit", "scope": "m", "ladder_step": 1, "options": options,
            "message": "Local execution hit a limit: x. You can:\n(1) try y.", "thresholds_version": "1.0.0"}),
        )
    }

    fn firing(seq: u64, ts: i64, category: &str) -> LogEntry {
        entry(
            seq,
            json!({"kind": "firing", "ts_ms": ts, "firing_id": format!("f-{seq}"), "category": category,
            "scope": "m", "reason": "r", "evidence": [], "thresholds_version": "1.0.0"}),
        )
    }

    fn feedback(seq: u64, ts: i64, id: &str, action: &str) -> LogEntry {
        entry(
            seq,
            json!({"kind": "feedback", "ts_ms": ts, "suggestion_id": id, "action": action}),
        )
    }

    fn outcome(seq: u64, ts: i64, effect: &str) -> LogEntry {
        entry(
            seq,
            json!({"kind": "mitigation_outcome", "ts_ms": ts, "suggestion_id": "s", "category": "latency",
            "scope": "m", "choice": "smaller_model", "effect": effect, "metric": "model_latency_ms_p95",
            "thresholds_version": "1.0.0"}),
        )
    }

    #[test]
    fn an_empty_log_has_no_rates_yet() {
        let m = product_metrics(&[], "all", 0, i64::MAX);
        assert_eq!(m.upgrade_suggestion_count, 0);
        assert_eq!(
            m.suggestion_accept_rate,
            Rate {
                value: None,
                numerator: 0,
                denominator: 0
            }
        );
        assert_eq!(m.local_mitigation_success_rate.value, None);
        assert!(m.top_trigger_categories.is_empty());
    }

    #[test]
    fn hand_checked_scenario() {
        let log = vec![
            firing(1, 1000, "latency"),
            firing(2, 1100, "model_fit"),
            firing(3, 1200, "latency"),
            firing(4, 5000, "context"), // out of range
            suggestion(5, 1300, "s1", false),
            suggestion(6, 1400, "s2", true),
            suggestion(7, 1500, "s3", true),
            suggestion(8, 1600, "s4", false),
            feedback(9, 1700, "s1", "accepted"),
            feedback(10, 1800, "s1", "dismissed"), // only the first answer counts
            feedback(11, 1900, "s2", "dismissed"),
            feedback(12, 9000, "s3", "accepted"), // answered after the range: still counted
            outcome(13, 2000, "resolved"),
            outcome(14, 2100, "no_effect"),
            outcome(15, 2200, "inconclusive"),
            outcome(16, 2300, "partial"),
            entry(
                17,
                json!({"kind": "suppression", "ts_ms": 2400, "firing_id": "f-3", "category": "latency",
                "scope": "m", "rule": "category_cooldown", "eligible_at_ms": 99, "thresholds_version": "1.0.0"}),
            ),
        ];
        let m = product_metrics(&log, "custom", 1000, 3000);
        assert_eq!(m.upgrade_suggestion_count, 4);
        assert_eq!(m.cloud_offer_count, 2);
        assert_eq!(
            m.suggestion_accept_rate,
            Rate {
                value: Some(0.5),
                numerator: 2,
                denominator: 4
            }
        );
        assert_eq!(
            m.suggestion_dismiss_rate,
            Rate {
                value: Some(0.25),
                numerator: 1,
                denominator: 4
            }
        );
        assert_eq!(
            m.top_trigger_categories,
            vec![
                CategoryCount {
                    category: Category::Latency,
                    firings: 2
                },
                CategoryCount {
                    category: Category::ModelFit,
                    firings: 1
                },
            ]
        );
        // resolved 1 of (resolved, no_effect, partial) = 1/3; inconclusive is left out.
        assert_eq!(m.local_mitigation_success_rate.numerator, 1);
        assert_eq!(m.local_mitigation_success_rate.denominator, 3);
        assert_eq!(m.firing_count, 3);
        assert_eq!(m.suppression_count, 1);
    }

    /// The metrics as computed before the index existed: every entry read for every answer.
    /// The oracle of the property test below.
    fn reference(entries: &[LogEntry], from_ms: i64, to_ms: i64) -> ProductMetrics {
        let in_range = |t: Option<i64>| t.is_some_and(|t| t >= from_ms && t < to_ms);
        let mut shown: BTreeMap<&str, bool> = BTreeMap::new();
        let mut first_answer: BTreeMap<&str, FeedbackAction> = BTreeMap::new();
        let mut firings: BTreeMap<Category, u64> = BTreeMap::new();
        let (mut firing_count, mut suppression_count) = (0, 0);
        let (mut resolved, mut followed) = (0, 0);
        for e in entries {
            let t = e.record.ts_ms();
            match &e.record {
                Record::Suggestion(s) if in_range(t) => {
                    let cloud = s.options.iter().any(|o| o.kind == OptionKind::Cloud);
                    shown.insert(s.suggestion_id.as_str(), cloud);
                }
                Record::Feedback(f) => {
                    first_answer
                        .entry(f.suggestion_id.as_str())
                        .or_insert(f.action);
                }
                Record::Firing(f) if in_range(t) => {
                    firing_count += 1;
                    *firings.entry(f.category).or_default() += 1;
                }
                Record::Suppression(_) if in_range(t) => suppression_count += 1,
                Record::MitigationOutcome(m) if in_range(t) => match m.effect {
                    MitigationEffect::Resolved => {
                        resolved += 1;
                        followed += 1;
                    }
                    MitigationEffect::Partial | MitigationEffect::NoEffect => followed += 1,
                    MitigationEffect::Inconclusive => {}
                },
                _ => {}
            }
        }
        let count = shown.len() as u64;
        let answered = |action: FeedbackAction| {
            shown
                .keys()
                .filter(|id| first_answer.get(*id) == Some(&action))
                .count() as u64
        };
        let top = top_categories(&firings);
        ProductMetrics {
            range: "r".into(),
            from_ms,
            to_ms,
            upgrade_suggestion_count: count,
            cloud_offer_count: shown.values().filter(|c| **c).count() as u64,
            suggestion_accept_rate: Rate::of(answered(FeedbackAction::Accepted), count),
            suggestion_dismiss_rate: Rate::of(answered(FeedbackAction::Dismissed), count),
            top_trigger_categories: top,
            local_mitigation_success_rate: Rate::of(resolved, followed),
            firing_count,
            suppression_count,
            cloud_run_count: 0,
            cloud_run_tokens: 0,
            cloud_runs_without_tokens: 0,
            cloud_runs_by_model: None,
        }
    }

    proptest::proptest! {
        /// The index answers every range as reading every entry did, whatever the order of
        /// times, answers before or long after their suggestion, and ranges that hold all,
        /// some or none of the rows.
        #[test]
        fn the_index_answers_as_reading_every_entry(
            items in proptest::collection::vec((0u8..6, 0i64..100, 0u8..8, proptest::bool::ANY), 0..80),
            ranges in proptest::collection::vec((-10i64..110, 0i64..120), 1..6),
        ) {
            let categories = ["latency", "model_fit", "context", "concurrency", "reliability"];
            let effects = ["resolved", "partial", "no_effect", "inconclusive"];
            let log: Vec<LogEntry> = items
                .iter()
                .enumerate()
                .map(|(i, &(kind, ts, n, flag))| {
                    let seq = i as u64 + 1;
                    let ts = ts * 10;
                    let id = format!("s{n}");
                    match kind {
                        0 => suggestion(seq, ts, &id, flag),
                        1 => feedback(seq, ts, &id, if flag { "accepted" } else { "dismissed" }),
                        2 => firing(seq, ts, categories[usize::from(n) % 5]),
                        3 => outcome(seq, ts, effects[usize::from(n) % 4]),
                        _ => entry(
                            seq,
                            json!({"kind": "suppression", "ts_ms": ts, "firing_id": "f", "category": "latency",
                            "scope": "m", "rule": "category_cooldown", "eligible_at_ms": 99, "thresholds_version": "1.0.0"}),
                        ),
                    }
                })
                .collect();
            // Suggestion ids are unique in a real log.
            let mut seen = std::collections::BTreeSet::new();
            let log: Vec<LogEntry> = log
                .into_iter()
                .filter(|e| match &e.record {
                    Record::Suggestion(s) => seen.insert(s.suggestion_id.clone()),
                    _ => true,
                })
                .collect();
            let mut index = ProductIndex::new();
            log.iter().for_each(|e| index.push(e));
            for (from, len) in ranges {
                let (from, to) = (from * 10, from * 10 + len * 10);
                let mut want = reference(&log, from, to);
                want.range = "r".into();
                proptest::prop_assert_eq!(index.metrics("r", from, to), want);
            }
            let mut all = reference(&log, i64::MIN, i64::MAX);
            all.range = "r".into();
            proptest::prop_assert_eq!(index.metrics("r", i64::MIN, i64::MAX), all);
        }
    }
}
