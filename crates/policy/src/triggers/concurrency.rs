//! Concurrency (spec 4.4): a time window whose median `active_sessions` is over the profile's
//! `max_recommended_concurrency`, or whose p95 queue wait is over the limit, for W
//! consecutive windows.
//!
//! Scopes: `host` takes the `active_sessions` and `queue_wait_ms` windows and the queue waits
//! of every local run; a model takes the `queue_wait_ms/<model>` windows (samples tagged with
//! the model) and its own runs' queue waits. Runs' waits are grouped in the same epoch-aligned
//! windows as samples; a window of runs is evaluated when a run of a later window arrives or
//! when a time window of the same or a later minute is folded (time windows close after
//! their grace, so the runs of the minute are in by then); a run older than its scope's open
//! window is late and counts only for its model's run blocks. Minutes are consecutive only
//! when their starts are one window apart. One cause fires once: when several scopes reach
//! their Wth window in the same minute, the first fires and the others only count.

use kora_model::{Category, Evidence, Run, Sample, Signal, WindowRecord};
use kora_window::quantile;

use crate::state::{Candidate, EngineState, EvalState, HOST, RunMinute, Source};
use crate::text::num;
use crate::thresholds::Thresholds;

/// The most queue waits kept for one window of runs (the p95 of more is no different).
const RUN_MINUTE_CAP: usize = 10_000;

/// What folding a record found: candidates, and the windows of runs' queue waits that were
/// evaluated (scope, window start, p95), which follow-ups of concurrency measure.
#[derive(Debug, Default)]
pub(crate) struct Found {
    pub candidates: Vec<Candidate>,
    pub run_windows: Vec<(String, i64, f64)>,
}

/// One minute's input for a scope: its evidence, or why it cannot be evaluated.
struct MinuteInput {
    scope: String,
    start_ms: i64,
    end_ms: i64,
    seq: u64,
    evidence: Option<Evidence>,
    insufficient: Option<String>,
}

/// A time window of `active_sessions` or `queue_wait_ms` (host or per model).
pub(crate) fn on_window(s: &mut EngineState, t: &Thresholds, seq: u64, w: &WindowRecord) -> Found {
    let mut out = close_run_minutes(s, t, seq, |start| start <= w.start_ms);
    let Some((signal, None, model)) = Sample::parse_series_key(&w.metric) else {
        return out;
    };
    let ev = |signal: &str, value: f64, threshold: f64, detail: String| Evidence {
        signal: signal.to_owned(),
        value,
        threshold,
        detail,
        first_seq: seq,
        last_seq: seq,
        start_ms: w.start_ms,
        end_ms: w.end_ms,
    };
    let input = match (signal, model) {
        (Signal::ActiveSessions, None) => {
            s.active_sessions = Some(Source {
                seq,
                start_ms: w.start_ms,
                end_ms: w.end_ms,
                value: w.p50,
                from: "median".to_owned(),
            });
            let max = s.profile.as_ref().and_then(|p| p.max_concurrency);
            MinuteInput {
                scope: HOST.to_owned(),
                start_ms: w.start_ms,
                end_ms: w.end_ms,
                seq,
                evidence: max.map(|max| {
                    ev(
                        "active_sessions_median",
                        w.p50,
                        max,
                        format!(
                            "median of {} active_sessions samples vs max_recommended_concurrency of the latest profile",
                            w.count
                        ),
                    )
                }),
                insufficient: max
                    .is_none()
                    .then(|| "no max_recommended_concurrency in a profile record yet".to_owned()),
            }
        }
        (Signal::QueueWaitMs, model) => {
            if model.is_none() {
                s.queue_wait_p95 = Some(Source {
                    seq,
                    start_ms: w.start_ms,
                    end_ms: w.end_ms,
                    value: w.p95,
                    from: "p95".to_owned(),
                });
            }
            let whose = model
                .as_deref()
                .map_or(String::new(), |m| format!(" of {m}"));
            MinuteInput {
                scope: model.unwrap_or_else(|| HOST.to_owned()),
                start_ms: w.start_ms,
                end_ms: w.end_ms,
                seq,
                evidence: Some(ev(
                    "queue_wait_ms_p95",
                    w.p95,
                    t.file().concurrency.queue_wait_limit_ms,
                    format!("p95 of {} queue_wait_ms samples{whose}", w.count),
                )),
                insufficient: None,
            }
        }
        _ => return out,
    };
    out.candidates.extend(minute(s, t, input));
    out
}

/// A local run: closes the windows of runs that are over, then counts its queue wait.
pub(crate) fn on_run(s: &mut EngineState, t: &Thresholds, seq: u64, ts: i64, run: &Run) -> Found {
    let window_ms = t.window_ms();
    let start = ts.div_euclid(window_ms) * window_ms;
    let out = close_run_minutes(s, t, seq, |m| m < start);
    let Some(wait) = run.queue_wait_ms.filter(|v| v.is_finite() && *v >= 0.0) else {
        return out;
    };
    for scope in [HOST, run.model_id.as_str()] {
        let m = s
            .run_minutes
            .entry(scope.to_owned())
            .or_insert_with(|| RunMinute {
                start_ms: start,
                values: Vec::new(),
                first_seq: seq,
                last_seq: seq,
                models: Default::default(),
            });
        if m.start_ms != start {
            continue; // late: its window was evaluated already
        }
        if m.values.len() < RUN_MINUTE_CAP {
            m.values.push(wait);
        }
        m.last_seq = seq;
        let longest = m.models.entry(run.model_id.clone()).or_insert(wait);
        *longest = longest.max(wait);
    }
    out
}

/// Evaluates and forgets the windows of runs whose start `done` says is over.
fn close_run_minutes(
    s: &mut EngineState,
    t: &Thresholds,
    seq: u64,
    done: impl Fn(i64) -> bool,
) -> Found {
    let over: Vec<String> = s
        .run_minutes
        .iter()
        .filter(|(_, m)| done(m.start_ms))
        .map(|(k, _)| k.clone())
        .collect();
    let window_ms = t.window_ms();
    let limit = t.file().concurrency.queue_wait_limit_ms;
    let mut out = Found::default();
    for scope in over {
        let Some(m) = s.run_minutes.remove(&scope) else {
            continue;
        };
        let Some(p95) = quantile(&m.values, 0.95) else {
            continue;
        };
        let models = m
            .models
            .iter()
            .map(|(id, v)| format!("{id} up to {} ms", num(*v)))
            .collect::<Vec<_>>()
            .join(", ");
        let input = MinuteInput {
            scope: scope.clone(),
            start_ms: m.start_ms,
            end_ms: m.start_ms.saturating_add(window_ms),
            seq,
            evidence: Some(Evidence {
                signal: "queue_wait_ms_p95".to_owned(),
                value: p95,
                threshold: limit,
                detail: format!(
                    "p95 of queue_wait_ms reported by {} local runs ({models})",
                    m.values.len()
                ),
                first_seq: m.first_seq,
                last_seq: m.last_seq,
                start_ms: m.start_ms,
                end_ms: m.start_ms.saturating_add(window_ms),
            }),
            insufficient: None,
        };
        if scope == HOST {
            s.queue_wait_p95 = Some(Source {
                seq: m.last_seq,
                start_ms: m.start_ms,
                end_ms: m.start_ms.saturating_add(window_ms),
                value: p95,
                from: "p95 of the queue waits runs reported".to_owned(),
            });
        }
        out.run_windows.push((scope.clone(), m.start_ms, p95));
        out.candidates.extend(minute(s, t, input));
    }
    out
}

/// Counts one minute's input into its scope's streak; a candidate when the streak reaches a
/// multiple of W.
fn minute(s: &mut EngineState, t: &Thresholds, input: MinuteInput) -> Option<Candidate> {
    let window_ms = t.window_ms();
    let sustain = t.file().concurrency.sustain_windows;
    let scope = input.scope.clone();
    crate::retire::scope_if_idle(s, &scope);
    let c = s.concurrency.entry(scope.clone()).or_default();
    let at = input.start_ms;
    // A minute that ended without a breach resolves a firing scope (at that minute's end);
    // within a minute, one metric within limits is not the last word.
    let mut resolved_at = None;
    match c.minute {
        Some(m) if at < m => return None, // out of order: never changes a later streak
        Some(m) if at == m => {}
        prev => {
            let consecutive = prev == Some(at - window_ms) && c.minute_breached;
            if let Some(p) = prev {
                if !c.minute_breached {
                    resolved_at = Some(p.saturating_add(window_ms));
                } else if p.saturating_add(window_ms) < at {
                    // The minute after a breach had no data: the condition did not hold.
                    resolved_at = Some(p.saturating_add(2 * window_ms));
                }
            }
            if !consecutive {
                c.streak.clear();
            }
            c.prior = c.streak.clone();
            c.minute = Some(at);
            c.minute_breached = false;
        }
    }
    let breach = input
        .evidence
        .as_ref()
        .is_some_and(|e| e.value > e.threshold);
    let mut fires = false;
    if breach {
        let e: Vec<Evidence> = input.evidence.clone().into_iter().collect();
        if c.minute_breached {
            if let Some(last) = c.streak.windows.back_mut() {
                last.extend(e);
            }
        } else {
            c.streak = c.prior.clone();
            fires = c.streak.breach(e, sustain);
            c.minute_breached = true;
        }
    } else if !c.minute_breached {
        c.streak.clear();
    }
    if c.now_minute != Some(at) {
        c.now.clear();
        c.now_minute = Some(at);
    }
    c.now.extend(input.evidence.clone());
    let k = c.streak.k;
    let streak_evidence = c.streak.evidence();
    let now = c.now.clone();
    let state = if k > 0 {
        EvalState::Breach
    } else if now.is_empty() {
        EvalState::Insufficient(input.insufficient.clone().unwrap_or_default())
    } else {
        EvalState::Idle
    };
    if let Some(end) = resolved_at {
        s.resolve(Category::Concurrency, &scope, end);
    }
    s.record_eval(
        Category::Concurrency,
        &scope,
        input.seq,
        input.end_ms,
        state,
        now,
    );
    if !fires || s.concurrency_fired_minute == Some(at) {
        return None;
    }
    s.concurrency_fired_minute = Some(at);
    let whose = if scope == HOST {
        String::new()
    } else {
        format!(" for {scope}")
    };
    let reason = match &input.evidence {
        Some(e) if e.signal == "active_sessions_median" => format!(
            "the median of active sessions was {}, above the recommended {}, for {} consecutive windows of {} s",
            num(e.value),
            num(e.threshold),
            sustain,
            window_ms / 1000
        ),
        Some(e) => format!(
            "the p95 queue wait{whose} was {} ms, above the {} ms limit, for {} consecutive windows of {} s",
            num(e.value),
            num(e.threshold),
            sustain,
            window_ms / 1000
        ),
        None => "sessions waited too long".to_owned(),
    };
    Some(Candidate {
        seq: input.seq,
        ts_ms: input.end_ms,
        category: Category::Concurrency,
        scope,
        session_id: None,
        signature: None,
        reason,
        evidence: streak_evidence,
        sustained: Some(k),
        requested_context: None,
    })
}
