//! Retiring the state of a model or scope idle for [`STATE_IDLE_MS`] (7 days) of record time,
//! so that the engine's memory follows the models and scopes in use, not every one the log
//! ever named.
//!
//! Retirement is exact: it removes only state the engine's rules already treat as absent.
//! Those rules, each read where the state is read:
//!
//! - a model whose last N runs are all older than the horizon (the newest folded time less 7
//!   days) starts afresh at its next run: no open block, no last N runs, no latency streak,
//!   every run fresh for reliability, as for a model never seen; the estimates of a suggestion
//!   leave its runs out;
//! - a concurrency scope whose newest minute is older than the horizon starts afresh at its
//!   next minute (no streak; a minute older than the last one it saw counts again).
//!
//! So a model or scope that comes back is decided exactly as if its state had been kept, and
//! `Engine::without_retirement` (which keeps everything) is the oracle the property tests hold
//! the engine to. The sweep runs inside the fold, at the first record of each hour of record
//! time, and also drops the trigger views' last evaluation (and alert) of a category and scope
//! not evaluated within the horizon: views only, never read by a decision.
//!
//! Kept: the ladders (one per category and scope that fired, at most one new a category per
//! cooldown), the suggestions' memos (feedback may answer any suggestion, however old), the
//! follow-ups (they end at their deadline), the sessions (they end after a day:
//! `kora_model::SESSION_IDLE_MS`): each is bounded by firings, not by how many names a client
//! sends.

use crate::state::EngineState;

/// How long a model or scope may go without a record before its state is retired: 7 days of
/// record time (the newest `ts_ms` the engine folded).
pub const STATE_IDLE_MS: i64 = 7 * 24 * 3_600_000;

const HOUR_MS: i64 = 3_600_000;

/// The oldest time that keeps a model or scope's state alive.
pub(crate) fn horizon(s: &EngineState) -> i64 {
    s.fold_ms
        .map_or(i64::MIN, |t| t.saturating_sub(STATE_IDLE_MS))
}

/// Moves the newest folded time to `ts`; at the first record of a new hour, sweeps (when
/// `sweep`).
pub(crate) fn on_time(s: &mut EngineState, ts: i64, sweep: bool) {
    let before = s.fold_ms;
    let now = before.map_or(ts, |b| b.max(ts));
    s.fold_ms = Some(now);
    if sweep && before.is_some_and(|b| b.div_euclid(HOUR_MS) != now.div_euclid(HOUR_MS)) {
        sweep_idle(s);
    }
}

/// The rule for a model about to run: idle past the horizon, it starts afresh.
pub(crate) fn model_if_idle(s: &mut EngineState, model: &str) {
    if s.runs.idle_before(model, horizon(s)) {
        forget_model(s, model);
    }
}

/// The rule for a concurrency scope about to see a minute: idle past the horizon, it starts
/// afresh.
pub(crate) fn scope_if_idle(s: &mut EngineState, scope: &str) {
    let h = horizon(s);
    if s.concurrency
        .get(scope)
        .is_some_and(|c| c.minute.is_some_and(|m| m < h))
    {
        s.concurrency.remove(scope);
    }
}

fn forget_model(s: &mut EngineState, model: &str) {
    s.runs.forget(model);
    s.latency.remove(model);
    s.reliability_fresh.remove(model);
}

/// Retires what the rules above treat as absent, and the views' stale evaluations.
fn sweep_idle(s: &mut EngineState) {
    let h = horizon(s);
    for model in s.runs.models_idle_before(h) {
        forget_model(s, &model);
    }
    s.concurrency
        .retain(|_, c| c.minute.is_some_and(|m| m >= h));
    for (category, evals) in s.evals.iter_mut() {
        let stale: Vec<String> = evals
            .iter()
            .filter(|(_, e)| e.ts_ms < h)
            .map(|(scope, _)| scope.clone())
            .collect();
        for scope in stale {
            evals.remove(&scope);
            if let Some(a) = s.alerts.get_mut(category) {
                a.remove(&scope);
            }
            if let Some(f) = s.last_firing.get_mut(category) {
                f.remove(&scope);
            }
        }
    }
    s.evals.retain(|_, m| !m.is_empty());
    s.alerts.retain(|_, m| !m.is_empty());
    s.last_firing.retain(|_, m| !m.is_empty());
}
