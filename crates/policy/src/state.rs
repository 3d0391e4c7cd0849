//! The engine's state: everything the fold of the log so far remembers, and the candidate
//! firings the triggers hand to the engine.
//!
//! Every map is a `BTreeMap` and every type is serializable and comparable, so a checkpoint
//! of the state can be stored and a resumed fold proven equal to a whole one.

use std::collections::{BTreeMap, VecDeque};

use kora_model::{Category, Evidence, Readiness};
use kora_window::RunWindows;
use serde::{Deserialize, Serialize};

use crate::ladder::Ladder;
use crate::thresholds::Thresholds;

/// The session key of requests that carry no session id: they share one implicit session
/// that ends after `suggestions.sessionless_idle_minutes` without such a request.
pub(crate) const NO_SESSION: &str = "";

/// The scope of host-wide categories.
pub(crate) const HOST: &str = "host";

/// What the last evaluation of one category and scope found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum EvalState {
    /// Evaluated: within limits.
    Idle,
    /// Evaluated: over a limit (for sustained categories, the streak says whether it fired).
    Breach,
    /// Not evaluable: the reason.
    Insufficient(String),
}

impl EvalState {
    /// Breach or idle.
    pub(crate) fn of(breach: bool) -> EvalState {
        if breach {
            EvalState::Breach
        } else {
            EvalState::Idle
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Eval {
    pub ts_ms: i64,
    pub seq: u64,
    pub state: EvalState,
    pub evidence: Vec<Evidence>,
}

/// Whether a category and scope is firing (its condition held at a firing and has not been
/// evaluated within limits since) or resolved (it was, and when it stopped), as Prometheus
/// alerts go from firing to resolved.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Alert {
    /// Record time of the firing that opened the alert, while the condition holds.
    pub firing_since: Option<i64>,
    /// Record time of the first evaluation within limits after a firing.
    pub resolved_ms: Option<i64>,
}

/// Consecutive breaching windows of one sustained category and scope, with the evidence of
/// the last W of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Streak {
    pub k: u32,
    pub windows: VecDeque<Vec<Evidence>>,
    /// End of the latest window or block evaluated (a streak never spans a longer gap than
    /// `windows.max_streak_gap_minutes`).
    #[serde(default)]
    pub last_end_ms: Option<i64>,
}

impl Streak {
    /// Counts one more breaching window; true when the streak reaches a multiple of `w`
    /// (it fires on the Wth consecutive window, then again on the 2Wth, and so on).
    pub fn breach(&mut self, evidence: Vec<Evidence>, w: u32) -> bool {
        self.k = self.k.saturating_add(1);
        self.windows.push_back(evidence);
        while self.windows.len() > w as usize {
            self.windows.pop_front();
        }
        w > 0 && self.k % w == 0
    }

    pub fn clear(&mut self) {
        self.k = 0;
        self.windows.clear();
    }

    pub fn evidence(&self) -> Vec<Evidence> {
        self.windows.iter().flatten().cloned().collect()
    }
}

/// The concurrency streak of one scope over time windows. Several inputs report each minute
/// separately (`active_sessions` and `queue_wait_ms` windows, the queue waits runs report): a
/// minute breaches when any does, and minutes count as consecutive only when their starts are
/// one window apart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Concurrency {
    /// Start of the newest minute seen.
    pub minute: Option<i64>,
    pub minute_breached: bool,
    /// The streak through the minute before `minute`.
    pub prior: Streak,
    /// The streak through `minute` as known so far.
    pub streak: Streak,
    /// The evidence of the newest minute (for the status).
    pub now_minute: Option<i64>,
    pub now: Vec<Evidence>,
}

/// The queue waits that local runs reported in one time window, for one scope (`host` or a
/// model): evaluated as a concurrency input when the window is over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RunMinute {
    pub start_ms: i64,
    pub values: Vec<f64>,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Models whose runs waited, with their longest wait.
    pub models: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Source {
    pub seq: u64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub value: f64,
    pub from: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProfileInfo {
    pub seq: u64,
    pub ts_ms: i64,
    pub max_concurrency: Option<f64>,
    pub supported_context: BTreeMap<String, f64>,
    pub vram_total_mb: Option<f64>,
    pub vram_free_mb: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReadinessInfo {
    pub seq: u64,
    pub ts_ms: i64,
    pub report: Readiness,
}

/// What the engine remembers of a suggestion it made: enough to follow an accepted
/// mitigation and to answer "insist on the same tier".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SuggestionMemo {
    pub ts_ms: i64,
    pub category: Category,
    pub scope: String,
    pub firing_id: String,
    pub option_ids: Vec<String>,
    pub local_option: String,
    pub metric: String,
    pub before: Option<f64>,
    pub threshold: Option<f64>,
    pub answered: bool,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub requested_context: Option<u64>,
    #[serde(default)]
    pub evidence: Vec<Evidence>,
    /// An "insist on the same tier" was answered already.
    #[serde(default)]
    pub insist_answered: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FollowUp {
    pub category: Category,
    pub scope: String,
    /// The scope measured: the suggestion's, or the model the user switched to.
    #[serde(default)]
    pub followed: String,
    /// The session of the suggestion, whose next model is followed after a model switch.
    #[serde(default)]
    pub session_id: Option<String>,
    pub choice: String,
    pub metric: String,
    pub before: Option<f64>,
    pub threshold: Option<f64>,
    pub started_ms: i64,
    pub deadline_ms: i64,
    pub windows: u32,
    /// Start of the latest window or block counted (each is counted once).
    #[serde(default)]
    pub last_window_start: Option<i64>,
    pub worst_after: Option<f64>,
    pub observations: u32,
    pub fired_again: bool,
}

/// The engine's whole state: the fold of the log so far. Serializable, so it can be
/// checkpointed; comparable, so tests can prove that a resumed fold equals a whole one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineState {
    pub(crate) thresholds_version: String,
    #[serde(default)]
    pub(crate) thresholds_fingerprint: String,
    pub(crate) last_seq: Option<u64>,
    pub(crate) runs: RunWindows,
    pub(crate) evals: BTreeMap<Category, BTreeMap<String, Eval>>,
    #[serde(default)]
    pub(crate) alerts: BTreeMap<Category, BTreeMap<String, Alert>>,
    pub(crate) last_firing: BTreeMap<Category, BTreeMap<String, String>>,
    pub(crate) latency: BTreeMap<String, Streak>,
    /// Concurrency streaks by scope (`host`, or a model for model-tagged queue waits).
    pub(crate) concurrency: BTreeMap<String, Concurrency>,
    /// The minute a concurrency firing was last emitted: one cause fires once, whichever
    /// scope saw it first.
    #[serde(default)]
    pub(crate) concurrency_fired_minute: Option<i64>,
    /// Queue waits of local runs in the current window, by scope.
    #[serde(default)]
    pub(crate) run_minutes: BTreeMap<String, RunMinute>,
    /// Runs of a model since its last reliability firing: evidence is never counted twice.
    pub(crate) reliability_fresh: BTreeMap<String, u64>,
    /// The latest `gpu_vram_free_mb` windows (the newest last), for "free before the load".
    pub(crate) vram_free: VecDeque<Source>,
    pub(crate) vram_total: Option<Source>,
    pub(crate) queue_wait_p95: Option<Source>,
    /// The median of active sessions in the latest `active_sessions` window.
    #[serde(default)]
    pub(crate) active_sessions: Option<Source>,
    pub(crate) profile: Option<ProfileInfo>,
    pub(crate) readiness: Option<ReadinessInfo>,
    /// Session → request signature → suggestions shown.
    pub(crate) sessions: BTreeMap<String, BTreeMap<String, u32>>,
    /// The newest `ts_ms` of any record folded: the time state retirement goes by
    /// (`retire`).
    #[serde(default)]
    pub(crate) fold_ms: Option<i64>,
    /// Record time: the newest `ts_ms` of the runs and events folded (the time the
    /// pipeline's open-session count uses too).
    #[serde(default)]
    pub(crate) record_ms: Option<i64>,
    /// The newest `ts_ms` of a record naming each session of `sessions` (the implicit one
    /// aside): a session idle for `kora_model::SESSION_IDLE_MS` of record time has ended.
    #[serde(default)]
    pub(crate) session_last_ms: BTreeMap<String, i64>,
    /// Record time of the latest request without a session (the implicit session's clock).
    #[serde(default)]
    pub(crate) sessionless_last_ms: Option<i64>,
    /// Category → time of its last suggestion.
    pub(crate) last_suggested: BTreeMap<Category, i64>,
    pub(crate) ladders: BTreeMap<Category, BTreeMap<String, Ladder>>,
    pub(crate) suggestions: BTreeMap<String, SuggestionMemo>,
    pub(crate) follow_ups: BTreeMap<String, FollowUp>,
}

/// How many recent free-VRAM windows are kept (the look-back before a load needs a few).
pub(crate) const VRAM_FREE_KEPT: usize = 32;

impl EngineState {
    /// The state before any record.
    pub fn new(thresholds: &Thresholds) -> EngineState {
        EngineState {
            thresholds_version: thresholds.version().to_owned(),
            thresholds_fingerprint: thresholds.fingerprint(),
            last_seq: None,
            runs: RunWindows::new(thresholds.runs_per_block()),
            evals: BTreeMap::new(),
            alerts: BTreeMap::new(),
            last_firing: BTreeMap::new(),
            latency: BTreeMap::new(),
            concurrency: BTreeMap::new(),
            concurrency_fired_minute: None,
            run_minutes: BTreeMap::new(),
            reliability_fresh: BTreeMap::new(),
            vram_free: VecDeque::new(),
            vram_total: None,
            queue_wait_p95: None,
            active_sessions: None,
            profile: None,
            readiness: None,
            sessions: BTreeMap::new(),
            fold_ms: None,
            record_ms: None,
            session_last_ms: BTreeMap::new(),
            sessionless_last_ms: None,
            last_suggested: BTreeMap::new(),
            ladders: BTreeMap::new(),
            suggestions: BTreeMap::new(),
            follow_ups: BTreeMap::new(),
        }
    }

    /// The seq of the last entry folded.
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// The thresholds version the state was built with.
    pub fn thresholds_version(&self) -> &str {
        &self.thresholds_version
    }

    /// The fingerprint of the thresholds the state was built with.
    pub fn thresholds_fingerprint(&self) -> &str {
        &self.thresholds_fingerprint
    }

    /// The run windows (blocks and the last N runs per model).
    pub fn runs(&self) -> &RunWindows {
        &self.runs
    }

    /// Records an evaluation, and moves the scope's alert: an evaluation within limits after
    /// a firing resolves it; a breach keeps it firing.
    pub(crate) fn set_eval(
        &mut self,
        category: Category,
        scope: &str,
        seq: u64,
        ts_ms: i64,
        state: EvalState,
        evidence: Vec<Evidence>,
    ) {
        if state == EvalState::Idle {
            self.resolve(category, scope, ts_ms);
        }
        self.record_eval(category, scope, seq, ts_ms, state, evidence);
    }

    /// Records an evaluation without moving the alert (an input that is not the last word on
    /// its window, such as one metric of a minute others may still breach).
    pub(crate) fn record_eval(
        &mut self,
        category: Category,
        scope: &str,
        seq: u64,
        ts_ms: i64,
        state: EvalState,
        evidence: Vec<Evidence>,
    ) {
        self.evals.entry(category).or_default().insert(
            scope.to_owned(),
            Eval {
                ts_ms,
                seq,
                state,
                evidence,
            },
        );
    }

    /// The condition of a firing scope no longer holds at `ts_ms`.
    pub(crate) fn resolve(&mut self, category: Category, scope: &str, ts_ms: i64) {
        if let Some(a) = self
            .alerts
            .get_mut(&category)
            .and_then(|m| m.get_mut(scope))
            && a.firing_since.take().is_some()
        {
            a.resolved_ms = Some(ts_ms);
        }
    }

    /// A firing of the scope at `ts_ms`: its alert is firing.
    pub(crate) fn open_alert(&mut self, category: Category, scope: &str, ts_ms: i64) {
        let a = self
            .alerts
            .entry(category)
            .or_default()
            .entry(scope.to_owned())
            .or_default();
        if a.firing_since.is_none() {
            a.firing_since = Some(ts_ms);
        }
        a.resolved_ms = None;
    }

    pub(crate) fn alert(&self, category: Category, scope: &str) -> Option<&Alert> {
        self.alerts.get(&category).and_then(|m| m.get(scope))
    }

    /// The free VRAM before a load at `ts_ms`: the most free in the windows that ended within
    /// `lookback_ms` before it (a reading the load itself lowered is not "before the load"),
    /// else the newest window that ended before it; none when every reading is later.
    pub(crate) fn vram_free_before(&self, ts_ms: i64, lookback_ms: i64) -> Option<Source> {
        let before: Vec<&Source> = self
            .vram_free
            .iter()
            .filter(|s| s.end_ms <= ts_ms)
            .collect();
        let recent = before
            .iter()
            .filter(|s| s.end_ms >= ts_ms.saturating_sub(lookback_ms))
            .fold(None::<&Source>, |best, s| match best {
                Some(b) if b.value >= s.value => Some(b),
                _ => Some(s),
            });
        recent.or_else(|| before.last().copied()).cloned()
    }
}

/// A firing about to be emitted: what a trigger found, handed to the engine, which applies
/// the anti-spam rules and the ladder.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub seq: u64,
    pub ts_ms: i64,
    pub category: Category,
    pub scope: String,
    pub session_id: Option<String>,
    pub signature: Option<String>,
    pub reason: String,
    pub evidence: Vec<Evidence>,
    pub sustained: Option<u32>,
    /// For context firings: the context the request asked for.
    pub requested_context: Option<u64>,
}
