//! Following an accepted local mitigation (spec Section 8, `local_mitigation_success_rate`).
//!
//! The first `accepted` of a local option starts a follow-up of the suggestion's category and
//! scope: the next `follow_up.windows` windows of the followed metric that start after the
//! acceptance (run blocks for latency and reliability, time windows for concurrency), or
//! `follow_up.minutes` of record time, whichever ends first. A block or window that began
//! before the acceptance is not counted: it measures the time before the mitigation.
//!
//! When the choice is a model switch (`smaller_model`, `stronger_local_model`), the model
//! measured follows the switch: the next model that loads successfully, or the next model a
//! run of the suggestion's session uses, becomes the followed scope.
//!
//! Outcome: `resolved` when the category did not fire again for the followed scope during the
//! period and something was observed; `partial` when it fired again but the followed metric
//! improved; `no_effect` when it fired again without improving; `inconclusive` when nothing
//! was observed. Context and model fit are event categories: each evaluation of the followed
//! model counts as an observation.

use kora_model::{Category, MitigationEffect, MitigationOutcome, Record};

use crate::state::{EngineState, FollowUp};
use crate::thresholds::Thresholds;

/// Options whose follow-up moves with a model switch.
fn is_model_switch(choice: &str) -> bool {
    matches!(choice, "smaller_model" | "stronger_local_model")
}

/// Starts following an accepted local option.
pub(crate) fn start(
    s: &mut EngineState,
    t: &Thresholds,
    suggestion_id: &str,
    ts: i64,
    choice: String,
) {
    let Some(memo) = s.suggestions.get_mut(suggestion_id) else {
        return;
    };
    memo.answered = true;
    let f = FollowUp {
        category: memo.category,
        scope: memo.scope.clone(),
        followed: memo.scope.clone(),
        session_id: memo.session_id.clone(),
        choice,
        metric: memo.metric.clone(),
        before: memo.before,
        threshold: memo.threshold,
        started_ms: ts,
        deadline_ms: ts.saturating_add(t.follow_up_ms()),
        windows: 0,
        last_window_start: None,
        worst_after: None,
        observations: 0,
        fired_again: false,
    };
    s.follow_ups.insert(suggestion_id.to_owned(), f);
}

/// An evaluation of an event category (context, model fit) for `scope`.
pub(crate) fn observe_event(s: &mut EngineState, category: Category, scope: &str) {
    for f in s.follow_ups.values_mut() {
        if f.category == category && f.followed == scope {
            f.observations = f.observations.saturating_add(1);
        }
    }
}

/// A firing of `category` for `scope`.
pub(crate) fn on_firing(s: &mut EngineState, category: Category, scope: &str) {
    for f in s.follow_ups.values_mut() {
        if f.category == category && f.followed == scope {
            f.fired_again = true;
        }
    }
}

/// The user moved to `model` at `ts`: by a successful load (`session` absent) or by a run of
/// `session`. Follow-ups of a model switch that have not moved yet follow it from now on.
pub(crate) fn on_model_used(s: &mut EngineState, ts: i64, model: &str, session: Option<&str>) {
    for f in s.follow_ups.values_mut() {
        if !is_model_switch(&f.choice) || f.followed != f.scope || f.scope == model {
            continue;
        }
        if ts < f.started_ms {
            continue;
        }
        let by_session = session.is_some_and(|sid| f.session_id.as_deref() == Some(sid));
        if session.is_none() || by_session {
            f.followed = model.to_owned();
        }
    }
}

/// One window (or run block) of a scope, as a follow-up measures it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measured<'a> {
    pub category: Category,
    pub scope: &'a str,
    pub metric: &'a str,
    pub start_ms: i64,
    pub value: f64,
}

/// One window measured at `ts`. Returns the outcomes of follow-ups that saw their last window.
pub(crate) fn observe_window(
    s: &mut EngineState,
    t: &Thresholds,
    ts: i64,
    m: Measured<'_>,
) -> Vec<Record> {
    let needed = t.file().follow_up.windows;
    let mut done = Vec::new();
    for (id, f) in s.follow_ups.iter_mut() {
        if f.category != m.category || f.followed != m.scope || f.metric != m.metric {
            continue;
        }
        if m.start_ms < f.started_ms || f.last_window_start == Some(m.start_ms) {
            continue; // it measures the time before the mitigation, or was counted
        }
        f.last_window_start = Some(m.start_ms);
        f.windows = f.windows.saturating_add(1);
        f.observations = f.observations.saturating_add(1);
        f.worst_after = Some(f.worst_after.map_or(m.value, |w| w.max(m.value)));
        if f.windows >= needed {
            done.push(id.clone());
        }
    }
    done.into_iter()
        .filter_map(|id| finish(s, t, &id, ts))
        .collect()
}

/// Follow-ups whose period ended at or before `ts`.
pub(crate) fn expire(s: &mut EngineState, t: &Thresholds, ts: i64) -> Vec<Record> {
    let due: Vec<(String, i64)> = s
        .follow_ups
        .iter()
        .filter(|(_, f)| f.deadline_ms <= ts)
        .map(|(id, f)| (id.clone(), f.deadline_ms))
        .collect();
    due.into_iter()
        .filter_map(|(id, deadline)| finish(s, t, &id, deadline))
        .collect()
}

fn finish(s: &mut EngineState, t: &Thresholds, id: &str, ts: i64) -> Option<Record> {
    let f = s.follow_ups.remove(id)?;
    let improved = match (f.before, f.worst_after) {
        (Some(b), Some(a)) => a < b,
        _ => false,
    };
    let effect = if f.fired_again {
        if improved {
            MitigationEffect::Partial
        } else {
            MitigationEffect::NoEffect
        }
    } else if f.observations == 0 {
        MitigationEffect::Inconclusive
    } else {
        MitigationEffect::Resolved
    };
    Some(Record::MitigationOutcome(MitigationOutcome {
        ts_ms: ts,
        suggestion_id: id.to_owned(),
        category: f.category,
        followed_scope: (f.followed != f.scope).then(|| f.followed.clone()),
        scope: f.scope,
        choice: f.choice,
        effect,
        metric: f.metric,
        p95_before: f.before,
        p95_after: f.worst_after,
        thresholds_version: t.version().to_owned(),
        thresholds_fingerprint: Some(t.fingerprint()),
    }))
}
