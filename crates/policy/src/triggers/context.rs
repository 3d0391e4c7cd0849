//! Context (spec 4.2): a request for more context than the model supports here, a
//! `context_oom`, or a run whose runtime evaluated fewer prompt tokens than were sent
//! (silent truncation).

use kora_model::{Category, ContextOom, ContextRequest, Evidence, Run};

use crate::follow_up;
use crate::state::{Candidate, EngineState, EvalState, NO_SESSION};
use crate::text::num;
use crate::thresholds::Thresholds;
use crate::triggers::request_signature;

/// Evidence of one record: `signal` at `value` against `threshold`.
fn point(signal: &str, value: f64, threshold: f64, detail: String, seq: u64, ts: i64) -> Evidence {
    Evidence {
        signal: signal.to_owned(),
        value,
        threshold,
        detail,
        first_seq: seq,
        last_seq: seq,
        start_ms: ts,
        end_ms: ts,
    }
}

/// Records one evaluation of `model` (a follow-up of the model counts it as an observation).
fn record(s: &mut EngineState, model: &str, seq: u64, ts: i64, e: &Evidence, breach: bool) {
    s.set_eval(
        Category::Context,
        model,
        seq,
        ts,
        EvalState::of(breach),
        vec![e.clone()],
    );
    follow_up::observe_event(s, Category::Context, model);
}

/// Requests without a session share one implicit session; it ends after
/// `suggestions.sessionless_idle_minutes` without such a request, and its signatures are
/// forgotten then, so "once per session" ends for them too.
fn touch_sessionless(s: &mut EngineState, t: &Thresholds, ts: i64) {
    if s.sessionless_last_ms
        .is_some_and(|last| ts.saturating_sub(last) > t.sessionless_idle_ms())
    {
        s.sessions.remove(NO_SESSION);
    }
    s.sessionless_last_ms = Some(s.sessionless_last_ms.map_or(ts, |l| l.max(ts)));
}

pub(crate) fn on_request(
    s: &mut EngineState,
    t: &Thresholds,
    seq: u64,
    ts: i64,
    c: &ContextRequest,
) -> Option<Candidate> {
    if c.session_id.is_none() {
        touch_sessionless(s, t, ts);
    }
    let model = c.model_id.clone();
    let supported = match c.local_supported_context_tokens {
        Some(n) => Some((
            n as f64,
            "local_supported_context_tokens of the request".to_owned(),
        )),
        None => s.profile.as_ref().and_then(|p| {
            p.supported_context.get(&model).map(|v| {
                (
                    *v,
                    format!(
                        "supported_context_tokens of the profile record (seq {})",
                        p.seq
                    ),
                )
            })
        }),
    };
    let Some((supported, from)) = supported else {
        s.set_eval(
            Category::Context,
            &model,
            seq,
            ts,
            EvalState::Insufficient(format!(
                "no local supported context known for {model} (neither in the request nor in a profile)"
            )),
            Vec::new(),
        );
        return None;
    };
    let requested = c.requested_context_tokens;
    let e = point(
        "requested_context_tokens",
        requested as f64,
        supported,
        format!("context requested for {model} vs {from}"),
        seq,
        ts,
    );
    let breach = requested as f64 > supported;
    record(s, &model, seq, ts, &e, breach);
    if !breach {
        return None;
    }
    Some(Candidate {
        seq,
        ts_ms: ts,
        category: Category::Context,
        scope: model.clone(),
        session_id: c.session_id.clone(),
        signature: c
            .prompt_hash
            .as_deref()
            .map(|h| request_signature(h, &model, requested)),
        reason: format!(
            "a request asked {model} for {} tokens of context but it supports {} locally",
            num(requested as f64),
            num(supported)
        ),
        evidence: vec![e],
        sustained: None,
        requested_context: Some(requested),
    })
}

pub(crate) fn on_oom(s: &mut EngineState, seq: u64, ts: i64, c: &ContextOom) -> Option<Candidate> {
    let model = c.model_id.clone();
    let e = point(
        "local_context_oom_event",
        1.0,
        0.0,
        format!("{model} ran out of memory for its context"),
        seq,
        ts,
    );
    record(s, &model, seq, ts, &e, true);
    Some(Candidate {
        seq,
        ts_ms: ts,
        category: Category::Context,
        scope: model.clone(),
        session_id: Some(c.session_id.clone()),
        signature: None,
        reason: format!("{model} ran out of memory for its context window"),
        evidence: vec![e],
        sustained: None,
        requested_context: None,
    })
}

/// A run that reports the prompt tokens it sent: truncated when the runtime evaluated fewer.
pub(crate) fn after_run(
    s: &mut EngineState,
    t: &Thresholds,
    seq: u64,
    ts: i64,
    run: &Run,
) -> Option<Candidate> {
    if !t.file().context.truncation_fires {
        return None;
    }
    let (Some(sent), Some(evaluated)) = (run.prompt_tokens_sent, run.tokens_in) else {
        return None;
    };
    let e = point(
        "prompt_tokens_sent",
        sent as f64,
        evaluated as f64,
        format!(
            "prompt tokens sent vs evaluated (tokens_in) by run {}",
            run.run_id
        ),
        seq,
        ts,
    );
    let model = run.model_id.clone();
    let breach = sent > evaluated;
    record(s, &model, seq, ts, &e, breach);
    if !breach {
        return None;
    }
    Some(Candidate {
        seq,
        ts_ms: ts,
        category: Category::Context,
        scope: model.clone(),
        session_id: Some(run.session_id.clone()),
        signature: Some(request_signature(
            &run.prompt_hash,
            &model,
            run.context_tokens,
        )),
        reason: format!(
            "{model} evaluated only {} of the {} prompt tokens sent (the prompt was silently truncated)",
            num(evaluated as f64),
            num(sent as f64)
        ),
        evidence: vec![e],
        sustained: None,
        requested_context: Some(run.context_tokens.max(sent)),
    })
}
