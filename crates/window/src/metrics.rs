//! The product metrics of the specification's Section 8, computed from the log.
//!
//! Pure: the caller passes the log entries and the range. A suggestion is counted in the range
//! of its own time; its answer is its first feedback, whenever that came. A rate with nothing
//! to divide is "none yet" (`value: None`), never 0 or NaN.

use std::collections::BTreeMap;

use kora_model::{
    Category, CategoryCount, FeedbackAction, LogEntry, MitigationEffect, OptionKind,
    ProductMetrics, Rate, Record,
};

/// Computes the metrics over `from_ms <= ts_ms < to_ms`, named `range`.
pub fn product_metrics<'a>(
    entries: impl IntoIterator<Item = &'a LogEntry>,
    range: &str,
    from_ms: i64,
    to_ms: i64,
) -> ProductMetrics {
    let in_range = |t: Option<i64>| t.is_some_and(|t| t >= from_ms && t < to_ms);
    let mut shown: BTreeMap<&str, bool> = BTreeMap::new(); // id -> offered cloud
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
    let mut top: Vec<CategoryCount> = Category::ALL
        .into_iter()
        .filter_map(|c| {
            firings.get(&c).map(|&n| CategoryCount {
                category: c,
                firings: n,
            })
        })
        .collect();
    // Stable: ties keep the specification's order.
    top.sort_by_key(|c| std::cmp::Reverse(c.firings));
    ProductMetrics {
        range: range.to_owned(),
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
        // Cloud runs are not among the entries this reads: see [`crate::CloudRuns::fill`].
        cloud_run_count: 0,
        cloud_run_tokens: 0,
        cloud_runs_without_tokens: 0,
        cloud_runs_by_model: None,
    }
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
}
