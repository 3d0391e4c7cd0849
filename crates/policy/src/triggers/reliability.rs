//! Reliability (spec 4.5): over the last N runs of a model, p95 `validation_retry_count` > the
//! limit (needs N runs), or any `budget_breach_count` over its limit.
//!
//! The state follows the condition over the last N runs, so a breach still among them keeps
//! the category firing. A firing never counts a run twice: after one, the next firing of the
//! model considers only runs after it.

use kora_model::{Category, Evidence};
use kora_window::{RunPoint, quantile};

use crate::state::{Candidate, EngineState, EvalState};
use crate::text::num;
use crate::thresholds::Thresholds;

/// The measurements over `window` (runs of `model` in log order): every evidence item (when
/// `every`; else none), the breaching ones, and the retry p95 when there were N runs. An item's
/// text is written only when it is answered.
fn measure(
    t: &Thresholds,
    model: &str,
    window: &[RunPoint],
    every: bool,
) -> (Vec<Evidence>, Vec<Evidence>, Option<f64>, usize) {
    let n = t.runs_per_block();
    let limits = &t.file().reliability;
    let (Some(first), Some(lastp)) = (window.first(), window.last()) else {
        return (Vec::new(), Vec::new(), None, 0);
    };
    let (first_seq, last_seq) = (first.seq, lastp.seq);
    let start_ms = window.iter().map(|p| p.ts_ms).min().unwrap_or(first.ts_ms);
    let end_ms = window.iter().map(|p| p.ts_ms).max().unwrap_or(lastp.ts_ms);
    let mk = |signal: &str, value: f64, threshold: f64, detail: String| Evidence {
        signal: signal.to_owned(),
        value,
        threshold,
        detail,
        first_seq,
        last_seq,
        start_ms,
        end_ms,
    };
    let mut all = Vec::new();
    let mut breaching = Vec::new();
    // An item, in order (the retry p95 first): kept when it breaches, and in `all` when
    // `every`; its text is written only then.
    let mut keep = |breached: bool, item: &dyn Fn() -> Evidence| {
        if every || breached {
            let e = item();
            if breached {
                breaching.push(e.clone());
            }
            if every {
                all.push(e);
            }
        }
    };
    let mut retry_p95 = None;
    if window.len() >= n {
        let retries: Vec<f64> = window.iter().map(|p| p.validation_retry_count).collect();
        if let Some(p95) = quantile(&retries, 0.95) {
            retry_p95 = Some(p95);
            keep(p95 > limits.retry_p95_limit, &|| {
                mk(
                    "validation_retry_count_p95",
                    p95,
                    limits.retry_p95_limit,
                    format!("p95 of validation_retry_count over the last {n} runs of {model}"),
                )
            });
        }
    }
    let max_breach = window
        .iter()
        .map(|p| p.budget_breach_count)
        .fold(0.0, f64::max);
    let breached_runs = window
        .iter()
        .filter(|p| p.budget_breach_count > limits.budget_breach_limit)
        .count();
    keep(max_breach > limits.budget_breach_limit, &|| {
        mk(
            "budget_breach_count",
            max_breach,
            limits.budget_breach_limit,
            format!(
                "most budget breaches in one of the last {} runs of {model}; {breached_runs} run(s) breached",
                window.len()
            ),
        )
    });
    (all, breaching, retry_p95, breached_runs)
}

/// Evaluates the last N runs of `model` after one of its runs; a candidate when runs not
/// counted by an earlier firing breach.
pub(crate) fn after_run(
    s: &mut EngineState,
    t: &Thresholds,
    seq: u64,
    ts: i64,
    model: &str,
) -> Option<Candidate> {
    let n = t.runs_per_block();
    let limit = t.file().reliability.retry_p95_limit;
    // The model's runs not counted by a firing yet (its key allocated once, not per run).
    let fresh = match s.reliability_fresh.get_mut(model) {
        Some(f) => {
            *f = (*f + 1).min(n as u64);
            *f as usize
        }
        None => {
            let f = 1u64.min(n as u64);
            s.reliability_fresh.insert(model.to_owned(), f);
            f as usize
        }
    };
    let last: Vec<RunPoint> = s.runs.last_runs(model).into_iter().cloned().collect();
    if last.is_empty() {
        return None;
    }
    // The condition, over the whole last N runs: what the state shows.
    let (all, condition, _, _) = measure(t, model, &last, true);
    let state = if !condition.is_empty() {
        EvalState::Breach
    } else if s.runs.runs_seen(model) < n as u64 {
        EvalState::Insufficient(format!(
            "the validation_retry_count p95 needs {n} runs of {model}; {} so far",
            s.runs.runs_seen(model)
        ))
    } else {
        EvalState::Idle
    };
    s.set_eval(Category::Reliability, model, seq, ts, state, all);
    // A firing: only runs no earlier firing counted.
    let window = &last[last.len().saturating_sub(fresh)..];
    let (_, breaching, retry_p95, breached_runs) = measure(t, model, window, false);
    if breaching.is_empty() {
        return None;
    }
    s.reliability_fresh.insert(model.to_owned(), 0);
    let reason = match retry_p95 {
        Some(p) if p > limit => format!(
            "the p95 of validation retries over the last {n} runs of {model} was {}, above the limit of {}",
            num(p),
            num(limit)
        ),
        _ => format!(
            "{breached_runs} of the last {} runs of {model} breached their budget",
            window.len()
        ),
    };
    Some(Candidate {
        seq,
        ts_ms: ts,
        category: Category::Reliability,
        scope: model.to_owned(),
        session_id: None,
        signature: None,
        reason,
        evidence: breaching,
        sustained: None,
        requested_context: None,
    })
}
