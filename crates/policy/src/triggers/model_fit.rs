//! Model fit (spec 4.1): a `model_load` that needs more VRAM than the GPU has in total, or
//! more than was free before the load plus the runtime's reclaimable estimate, or that failed.
//!
//! Total: the largest of the latest `gpu_vram_total_mb` window, or the latest profile's
//! snapshot, whichever is newer. Free: the most free in the `gpu_vram_free_mb` windows that
//! ended within `model_fit.free_lookback_minutes` before the load (a reading the load itself
//! lowered is not "before the load"), or the latest profile's snapshot when it is older than
//! the load and newer than those. A load that succeeded although it needed more than was free
//! is reported as what it is: it loaded with less free VRAM than it needs, so part of it may
//! run from CPU memory.

use kora_model::{Category, Evidence, LoadOutcome, ModelLoad};

use crate::follow_up;
use crate::state::{Candidate, EngineState, EvalState, Source};
use crate::text::num;
use crate::thresholds::Thresholds;

fn newer(a: Option<Source>, b: Option<Source>) -> Option<Source> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if x.seq >= y.seq { x } else { y }),
        (x, y) => x.or(y),
    }
}

pub(crate) fn on_load(
    s: &mut EngineState,
    t: &Thresholds,
    seq: u64,
    ts: i64,
    m: &ModelLoad,
) -> Option<Candidate> {
    let model = m.model_id.clone();
    let required = m.model_required_vram_mb;
    let mut all = Vec::new();
    let mut breaching = Vec::new();
    let mut reasons = Vec::new();
    let failed = m.outcome == LoadOutcome::Failed;
    if failed {
        let e = Evidence {
            signal: "model_load_failure_count".to_owned(),
            value: 1.0,
            threshold: f64::from(t.file().model_fit.load_failures) - 1.0,
            detail: format!("the load of {model} failed"),
            first_seq: seq,
            last_seq: seq,
            start_ms: ts,
            end_ms: ts,
        };
        all.push(e.clone());
        if e.value > e.threshold {
            breaching.push(e);
            reasons.push(format!("loading {model} failed"));
        }
    }
    let profile_source = |v: Option<f64>, p_seq: u64, p_ts: i64| {
        v.map(|value| Source {
            seq: p_seq,
            start_ms: p_ts,
            end_ms: p_ts,
            value,
            from: format!("the hardware snapshot of the profile record (seq {p_seq})"),
        })
    };
    let (profile_total, profile_free) = match &s.profile {
        Some(p) => (
            profile_source(p.vram_total_mb, p.seq, p.ts_ms),
            profile_source(p.vram_free_mb, p.seq, p.ts_ms).filter(|src| src.end_ms <= ts),
        ),
        None => (None, None),
    };
    let total = newer(s.vram_total.clone(), profile_total);
    let free = newer(s.vram_free_before(ts, t.free_lookback_ms()), profile_free);
    let span = |src: &Source, threshold: f64, detail: String| Evidence {
        signal: "model_required_vram_mb".to_owned(),
        value: required,
        threshold,
        detail,
        first_seq: src.seq.min(seq),
        last_seq: src.seq.max(seq),
        start_ms: src.start_ms.min(ts),
        end_ms: ts,
    };
    let over_total = total.as_ref().is_some_and(|tot| required > tot.value);
    if let Some(tot) = &total {
        let e = span(
            tot,
            tot.value,
            format!("VRAM {model} needs vs gpu_vram_total_mb ({})", tot.from),
        );
        all.push(e.clone());
        if over_total {
            breaching.push(e);
            reasons.push(format!(
                "{model} needs {} MB of VRAM but the GPU has {} MB in total",
                num(required),
                num(tot.value)
            ));
        }
    }
    if let Some(f) = &free {
        let reclaimable = m.vram_reclaimable_mb_est.unwrap_or(0.0);
        let e = span(
            f,
            f.value + reclaimable,
            format!(
                "VRAM {model} needs vs gpu_vram_free_mb before the load ({}) + vram_reclaimable_mb_est ({})",
                f.from,
                match m.vram_reclaimable_mb_est {
                    Some(r) => format!("{} MB", num(r)),
                    None => "not reported, taken as 0".to_owned(),
                }
            ),
        );
        all.push(e.clone());
        if required > f.value + reclaimable {
            breaching.push(e);
            if !over_total {
                let available = num(f.value + reclaimable);
                reasons.push(if failed {
                    format!(
                        "{model} needs {} MB of VRAM but only {available} MB were free before the load (including {} MB reclaimable)",
                        num(required),
                        num(reclaimable)
                    )
                } else {
                    format!(
                        "{model} loaded with {available} MB of VRAM free before the load (including {} MB reclaimable) although it needs {} MB, so part of it may run from CPU memory, more slowly",
                        num(reclaimable),
                        num(required)
                    )
                });
            }
        }
    }
    let state = if !breaching.is_empty() {
        EvalState::Breach
    } else if total.is_none() && free.is_none() {
        EvalState::Insufficient(
            "no gpu_vram_total_mb or gpu_vram_free_mb window or profile yet".to_owned(),
        )
    } else {
        EvalState::Idle
    };
    s.set_eval(Category::ModelFit, &model, seq, ts, state, all);
    follow_up::observe_event(s, Category::ModelFit, &model);
    if breaching.is_empty() {
        return None;
    }
    Some(Candidate {
        seq,
        ts_ms: ts,
        category: Category::ModelFit,
        scope: model,
        session_id: m.session_id.clone(),
        signature: None,
        reason: reasons.join("; "),
        evidence: breaching,
        sustained: None,
        requested_context: None,
    })
}
