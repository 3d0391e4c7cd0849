//! Latency (spec 4.3): a closed block of N runs of a model whose p95 model latency or p95
//! total latency is over its limit, for W consecutive blocks. Blocks further apart than
//! `windows.max_streak_gap_minutes` are not consecutive.

use kora_model::{Category, Evidence};
use kora_window::RunBlock;

use crate::state::{Candidate, EngineState, EvalState};
use crate::text::num;
use crate::thresholds::Thresholds;

/// Evaluates a closed run block; a candidate when the streak reaches a multiple of W.
pub(crate) fn on_block(
    s: &mut EngineState,
    t: &Thresholds,
    seq: u64,
    ts: i64,
    block: &RunBlock,
) -> Option<Candidate> {
    let limits = &t.file().latency;
    let w = limits.sustain_blocks;
    let detail = |what: &str| {
        format!(
            "p95 of {what} over {} runs of {} (seq {}-{})",
            block.count, block.model_id, block.first_seq, block.last_seq
        )
    };
    let ev = |signal: &str, value: f64, threshold: f64, what: &str| Evidence {
        signal: signal.to_owned(),
        value,
        threshold,
        detail: detail(what),
        first_seq: block.first_seq,
        last_seq: block.last_seq,
        start_ms: block.start_ms,
        end_ms: block.end_ms,
    };
    let all = vec![
        ev(
            "model_latency_ms_p95",
            block.model_latency_ms.p95,
            limits.lat_p95_limit_ms,
            "model_latency_ms",
        ),
        ev(
            "total_latency_ms_p95",
            block.total_latency_ms.p95,
            limits.total_p95_limit_ms,
            "total_latency_ms",
        ),
    ];
    let breaching: Vec<Evidence> = all
        .iter()
        .filter(|e| e.value > e.threshold)
        .cloned()
        .collect();
    let model = block.model_id.clone();
    let max_gap = t.max_streak_gap_ms();
    let streak = s.latency.entry(model.clone()).or_default();
    // A gap longer than the versioned maximum breaks the streak: blocks a day apart are not
    // "consecutive".
    if streak
        .last_end_ms
        .is_some_and(|end| block.start_ms.saturating_sub(end) > max_gap)
    {
        streak.clear();
    }
    streak.last_end_ms = Some(block.end_ms);
    let fires = if breaching.is_empty() {
        streak.clear();
        false
    } else {
        streak.breach(breaching.clone(), w)
    };
    let k = streak.k;
    let evidence = streak.evidence();
    s.set_eval(
        Category::Latency,
        &model,
        seq,
        ts,
        EvalState::of(!breaching.is_empty()),
        all,
    );
    if !fires {
        return None;
    }
    let reason = match breaching.last() {
        Some(e) => format!(
            "the p95 {} of {} was {} ms, above the {} ms limit, for {} consecutive blocks of {} runs",
            if e.signal == "model_latency_ms_p95" {
                "model latency"
            } else {
                "total latency"
            },
            model,
            num(e.value),
            num(e.threshold),
            w,
            t.runs_per_block()
        ),
        None => format!("the p95 latency of {model} stayed above its limit"),
    };
    Some(Candidate {
        seq,
        ts_ms: ts,
        category: Category::Latency,
        scope: model,
        session_id: None,
        signature: None,
        reason,
        evidence,
        sustained: Some(k),
        requested_context: None,
    })
}
