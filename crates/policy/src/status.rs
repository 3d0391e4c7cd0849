//! Trigger states for `GET /v1/triggers`: idle, pending (k of W), firing, resolved, or
//! insufficient evidence, with the latest evidence.
//!
//! The state follows the condition, as Prometheus alerts do: `firing` while it holds (a
//! sustained category from its Wth consecutive window on; an event category while its latest
//! evaluation breaches, or a breach is still among the last N runs), then `resolved` with the
//! record time of the first evaluation within limits after the firing. De-duplication of
//! evidence (which runs a firing may count) is separate and does not change the state.

use std::collections::BTreeSet;
use std::ops::Bound;

use kora_model::{Category, Evidence};
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::state::EvalState;
use crate::thresholds::Thresholds;

/// Where one category stands for one scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TriggerState {
    /// Evaluated and within limits.
    Idle,
    /// A sustained category: `k` consecutive breaching windows of the `w` it needs.
    Pending { k: u32, w: u32 },
    /// Over its limit (sustained categories: for at least W consecutive windows).
    Firing,
    /// It fired, and its condition has not held since `resolved_ms` (record time).
    Resolved { resolved_ms: i64 },
    /// The data a decision needs is missing: it never fires on a guess.
    InsufficientEvidence { reason: String },
}

/// One category and scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TriggerStatus {
    pub category: Category,
    /// A model id, `host`, or `*` when nothing of the category was seen yet.
    pub scope: String,
    #[serde(flatten)]
    pub state: TriggerState,
    /// W, for sustained categories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sustain_required: Option<u32>,
    /// The measurements of the latest evaluation (breaching or not).
    pub evidence: Vec<Evidence>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_firing_id: Option<String>,
    /// Record time of the latest evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_ms: Option<i64>,
}

/// The scope of a category that saw nothing yet.
pub const NOTHING_YET: &str = "*";

fn nothing_yet(c: Category) -> &'static str {
    match c {
        Category::ModelFit => "no model_load recorded yet",
        Category::Context => {
            "no context_request, context_oom or run with prompt_tokens_sent recorded yet"
        }
        Category::Latency => "no local run recorded yet",
        Category::Concurrency => "no active_sessions or queue_wait_ms time window recorded yet",
        Category::Reliability => "no local run recorded yet",
    }
}

/// Which trigger states a page of [`Engine::triggers_page`] holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TriggerFilter<'a> {
    /// Only this category.
    pub category: Option<Category>,
    /// Only this scope.
    pub scope: Option<&'a str>,
    /// Only states after this one, in category then scope order.
    pub after: Option<(Category, &'a str)>,
}

impl Engine {
    /// Every category's state, per scope, in category then scope order.
    pub fn triggers(&self) -> Vec<TriggerStatus> {
        self.triggers_page(&TriggerFilter::default(), usize::MAX).0
    }

    /// The states `filter` selects, in category then scope order, at most `limit` of them;
    /// and whether more follow. Only the states on the page are built.
    pub fn triggers_page(
        &self,
        filter: &TriggerFilter,
        limit: usize,
    ) -> (Vec<TriggerStatus>, bool) {
        let s = &self.state;
        let mut out = Vec::new();
        for c in Category::ALL {
            if filter.category.is_some_and(|x| x != c)
                || filter.after.is_some_and(|(after, _)| c < after)
            {
                continue;
            }
            let mut scopes: BTreeSet<&str> = s
                .evals
                .get(&c)
                .map(|m| m.keys().map(String::as_str).collect())
                .unwrap_or_default();
            if c == Category::Latency {
                scopes.extend(s.runs.models());
            }
            if scopes.is_empty() {
                scopes.insert(NOTHING_YET);
            }
            let range = match filter.after {
                Some((after, scope)) if after == c => {
                    scopes.range::<&str, _>((Bound::Excluded(scope), Bound::Unbounded))
                }
                _ => scopes.range::<&str, _>(..),
            };
            for scope in range {
                if filter.scope.is_some_and(|x| x != *scope) {
                    continue;
                }
                if out.len() == limit {
                    return (out, true);
                }
                out.push(self.status_of(c, scope));
            }
        }
        (out, false)
    }

    /// Whether category `c` is firing for `scope`: [`TriggerState::Firing`] in
    /// [`Engine::triggers`], without building the status.
    pub fn is_firing(&self, c: Category, scope: &str) -> bool {
        self.state_of(c, scope) == TriggerState::Firing
    }

    /// The state of category `c` for `scope` ([`NOTHING_YET`] when the category saw nothing).
    fn status_of(&self, c: Category, scope: &str) -> TriggerStatus {
        let s = &self.state;
        let sustain = sustain_of(&self.thresholds, c);
        let eval = s.evals.get(&c).and_then(|m| m.get(scope));
        let state = self.state_of(c, scope);
        if !self.seen(c) {
            return TriggerStatus {
                category: c,
                scope: NOTHING_YET.to_owned(),
                state,
                sustain_required: sustain,
                evidence: Vec::new(),
                last_firing_id: None,
                updated_ms: None,
            };
        }
        let last_firing_id = s.last_firing.get(&c).and_then(|m| m.get(scope)).cloned();
        TriggerStatus {
            category: c,
            scope: scope.to_owned(),
            state,
            sustain_required: sustain,
            evidence: eval.map(|e| e.evidence.clone()).unwrap_or_default(),
            last_firing_id,
            updated_ms: eval.map(|e| e.ts_ms),
        }
    }

    /// Whether category `c` has seen anything (an evaluation, or a run for latency).
    fn seen(&self, c: Category) -> bool {
        let s = &self.state;
        s.evals.get(&c).is_some_and(|m| !m.is_empty())
            || (c == Category::Latency && s.runs.models().next().is_some())
    }

    fn state_of(&self, c: Category, scope: &str) -> TriggerState {
        let s = &self.state;
        if !self.seen(c) {
            return TriggerState::InsufficientEvidence {
                reason: nothing_yet(c).to_owned(),
            };
        }
        let n = self.thresholds.runs_per_block();
        let eval = s.evals.get(&c).and_then(|m| m.get(scope));
        let streak = match c {
            Category::Latency => s.latency.get(scope).map(|x| x.k),
            Category::Concurrency => s.concurrency.get(scope).map(|x| x.streak.k),
            _ => None,
        };
        let resolved = s
            .alert(c, scope)
            .and_then(|a| a.resolved_ms)
            .map(|resolved_ms| TriggerState::Resolved { resolved_ms });
        let idle = || resolved.clone().unwrap_or(TriggerState::Idle);
        match (eval, sustain_of(&self.thresholds, c)) {
            (None, _) => TriggerState::InsufficientEvidence {
                reason: format!(
                    "{} of the {n} runs of the first block of {scope} so far",
                    s.runs.open_runs(scope)
                ),
            },
            (Some(e), _) if matches!(e.state, EvalState::Insufficient(_)) => match &e.state {
                EvalState::Insufficient(r) => {
                    TriggerState::InsufficientEvidence { reason: r.clone() }
                }
                _ => TriggerState::Idle,
            },
            (Some(_), Some(w)) => match streak.unwrap_or(0) {
                0 => idle(),
                k if k < w => TriggerState::Pending { k, w },
                _ => TriggerState::Firing,
            },
            (Some(e), None) => match e.state {
                EvalState::Breach => TriggerState::Firing,
                _ => idle(),
            },
        }
    }
}

/// The windows or blocks a category's breach must be sustained for, where it has such a rule.
fn sustain_of(thresholds: &Thresholds, c: Category) -> Option<u32> {
    match c {
        Category::Latency => Some(thresholds.file().latency.sustain_blocks),
        Category::Concurrency => Some(thresholds.file().concurrency.sustain_windows),
        _ => None,
    }
}
