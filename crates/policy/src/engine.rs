//! The engine: `(state, log entry) -> (state, derived records)`.

use std::collections::{BTreeMap, VecDeque};

use kora_model::{
    Category, ContextOom, ContextRequest, Evidence, Feedback, FeedbackAction, Firing, LoadOutcome,
    LogEntry, MitigationEffect, MitigationOutcome, ModelLoad, ProfileRecord, Readiness, Record,
    Run, Substrate, Suppression, SuppressionRule, WindowRecord,
};
use kora_window::{RunBlock, RunPoint, RunWindows, WINDOW_KIND_RUNS, WINDOW_KIND_TIME, quantile};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::suggest;
use crate::text::num;
use crate::thresholds::Thresholds;
use crate::tiers::CloudTiers;

/// The session key of requests that carry no session id: they share one session that never
/// ends, so the signature rule still holds for them.
pub(crate) const NO_SESSION: &str = "";

/// The context size bucket of a request: `ceil(log2(tokens))`; 0 for 0 and 1 token.
pub fn context_bucket(tokens: u64) -> u32 {
    if tokens <= 1 {
        0
    } else {
        64 - (tokens - 1).leading_zeros()
    }
}

/// The request signature (spec Section 5.1): hex SHA-256 of
/// `prompt_hash|model_id|bucket`, bucket = [`context_bucket`] of the context tokens.
pub fn request_signature(prompt_hash: &str, model_id: &str, context_tokens: u64) -> String {
    let text = format!(
        "{prompt_hash}|{model_id}|{}",
        context_bucket(context_tokens)
    );
    hex::encode(Sha256::digest(text.as_bytes()))
}

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Eval {
    pub ts_ms: i64,
    pub seq: u64,
    pub state: EvalState,
    pub evidence: Vec<Evidence>,
}

/// Consecutive breaching windows of one sustained category and scope, with the evidence of
/// the last W of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Streak {
    pub k: u32,
    pub windows: VecDeque<Vec<Evidence>>,
}

impl Streak {
    /// Counts one more breaching window; true when the streak reaches a multiple of `w`
    /// (it fires on the Wth consecutive window, then again on the 2Wth, and so on).
    fn breach(&mut self, evidence: Vec<Evidence>, w: u32) -> bool {
        self.k = self.k.saturating_add(1);
        self.windows.push_back(evidence);
        while self.windows.len() > w as usize {
            self.windows.pop_front();
        }
        w > 0 && self.k % w == 0
    }

    fn clear(&mut self) {
        self.k = 0;
        self.windows.clear();
    }

    fn evidence(&self) -> Vec<Evidence> {
        self.windows.iter().flatten().cloned().collect()
    }
}

/// The host-wide concurrency streak over time windows. Two metrics (`active_sessions`,
/// `queue_wait_ms`) report each minute separately: a minute breaches when either does, and
/// minutes count as consecutive only when their starts are one window apart.
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

/// Where the escalation ladder of one category and scope stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Ladder {
    /// Local steps offered, in order.
    pub offered: Vec<u8>,
    pub cloud_offered: bool,
    /// The trigger fired again after a local step was offered.
    pub fired_again: bool,
    /// A suggestion of this scope was dismissed.
    pub dismissed: bool,
    /// The user insisted on the same tier.
    pub insisted: bool,
}

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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FollowUp {
    pub category: Category,
    pub scope: String,
    pub choice: String,
    pub metric: String,
    pub before: Option<f64>,
    pub threshold: Option<f64>,
    pub started_ms: i64,
    pub deadline_ms: i64,
    pub windows: u32,
    pub worst_after: Option<f64>,
    pub observations: u32,
    pub fired_again: bool,
}

/// The engine's whole state: the fold of the log so far. Serializable, so it can be
/// checkpointed; comparable, so tests can prove that a resumed fold equals a whole one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineState {
    pub(crate) thresholds_version: String,
    pub(crate) last_seq: Option<u64>,
    pub(crate) runs: RunWindows,
    pub(crate) evals: BTreeMap<Category, BTreeMap<String, Eval>>,
    pub(crate) last_firing: BTreeMap<Category, BTreeMap<String, String>>,
    pub(crate) latency: BTreeMap<String, Streak>,
    pub(crate) concurrency: Concurrency,
    /// Runs of a model since its last reliability firing: evidence is never counted twice.
    pub(crate) reliability_fresh: BTreeMap<String, u64>,
    pub(crate) vram_free: Option<Source>,
    pub(crate) vram_total: Option<Source>,
    pub(crate) queue_wait_p95: Option<Source>,
    pub(crate) profile: Option<ProfileInfo>,
    pub(crate) readiness: Option<ReadinessInfo>,
    /// Session → request signature → suggestions shown.
    pub(crate) sessions: BTreeMap<String, BTreeMap<String, u32>>,
    /// Category → time of its last suggestion.
    pub(crate) last_suggested: BTreeMap<Category, i64>,
    pub(crate) ladders: BTreeMap<Category, BTreeMap<String, Ladder>>,
    pub(crate) suggestions: BTreeMap<String, SuggestionMemo>,
    pub(crate) follow_ups: BTreeMap<String, FollowUp>,
}

impl EngineState {
    /// The state before any record.
    pub fn new(thresholds: &Thresholds) -> EngineState {
        EngineState {
            thresholds_version: thresholds.version().to_owned(),
            last_seq: None,
            runs: RunWindows::new(thresholds.runs_per_block()),
            evals: BTreeMap::new(),
            last_firing: BTreeMap::new(),
            latency: BTreeMap::new(),
            concurrency: Concurrency::default(),
            reliability_fresh: BTreeMap::new(),
            vram_free: None,
            vram_total: None,
            queue_wait_p95: None,
            profile: None,
            readiness: None,
            sessions: BTreeMap::new(),
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

    /// The run windows (blocks and the last N runs per model).
    pub fn runs(&self) -> &RunWindows {
        &self.runs
    }
}

/// A firing about to be emitted.
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

/// The policy engine. See the crate documentation for the rules it applies.
#[derive(Debug, Clone)]
pub struct Engine {
    pub(crate) thresholds: Thresholds,
    pub(crate) tiers: CloudTiers,
    pub(crate) state: EngineState,
}

impl Engine {
    pub fn new(thresholds: Thresholds, tiers: CloudTiers) -> Engine {
        let state = EngineState::new(&thresholds);
        Engine {
            thresholds,
            tiers,
            state,
        }
    }

    /// Resumes from a checkpointed state (built with the same thresholds).
    pub fn with_state(thresholds: Thresholds, tiers: CloudTiers, state: EngineState) -> Engine {
        Engine {
            thresholds,
            tiers,
            state,
        }
    }

    pub fn state(&self) -> &EngineState {
        &self.state
    }

    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    pub fn tiers(&self) -> &CloudTiers {
        &self.tiers
    }

    /// Whether `step` produces records like this one: they are outputs, never inputs, so
    /// folding a log that already holds them gives the same state.
    pub fn is_derived_by_engine(record: &Record) -> bool {
        match record {
            Record::Firing(_)
            | Record::Suggestion(_)
            | Record::Suppression(_)
            | Record::MitigationOutcome(_) => true,
            Record::Window(w) => w.window_kind == WINDOW_KIND_RUNS,
            _ => false,
        }
    }

    /// Folds one log entry; returns the derived records to append, in order. Entries at or
    /// below the last folded seq, records the engine derives itself, and records without a
    /// time change nothing.
    pub fn step(&mut self, entry: &LogEntry) -> Vec<Record> {
        let mut out = Vec::new();
        // A checkpoint is the service's copy of this very state: never an input.
        if Engine::is_derived_by_engine(&entry.record)
            || matches!(entry.record, Record::Checkpoint(_))
        {
            return out;
        }
        if self.state.last_seq.is_some_and(|last| entry.seq <= last) {
            return out;
        }
        let Some(ts) = entry.record.ts_ms() else {
            return out;
        };
        self.state.last_seq = Some(entry.seq);
        self.expire_follow_ups(ts, &mut out);
        let seq = entry.seq;
        match &entry.record {
            Record::Run(r) => self.on_run(seq, ts, r, &mut out),
            Record::ModelLoad(m) => self.on_model_load(seq, ts, m, &mut out),
            Record::ContextRequest(c) => self.on_context_request(seq, ts, c, &mut out),
            Record::ContextOom(c) => self.on_context_oom(seq, ts, c, &mut out),
            Record::SessionStarted(s) | Record::SessionEnded(s) => {
                // A session's signatures are forgotten when it ends (or starts over).
                self.state.sessions.remove(&s.session_id);
            }
            Record::Readiness(r) => {
                self.state.readiness = Some(ReadinessInfo {
                    seq,
                    ts_ms: ts,
                    report: r.clone(),
                });
            }
            Record::Feedback(f) => self.on_feedback(ts, f),
            Record::Profile(p) => self.on_profile(seq, p),
            Record::Window(w) if w.window_kind == WINDOW_KIND_TIME => {
                self.on_time_window(seq, w, &mut out)
            }
            _ => {}
        }
        out
    }

    fn set_eval(
        &mut self,
        category: Category,
        scope: &str,
        seq: u64,
        ts_ms: i64,
        state: EvalState,
        evidence: Vec<Evidence>,
    ) {
        self.state.evals.entry(category).or_default().insert(
            scope.to_owned(),
            Eval {
                ts_ms,
                seq,
                state,
                evidence,
            },
        );
    }

    // ---- runs: latency, reliability, context truncation --------------------------------

    fn on_run(&mut self, seq: u64, ts: i64, run: &Run, out: &mut Vec<Record>) {
        // Cloud runs are recorded (never hidden) but are no evidence of a local limit.
        if run.substrate == Substrate::Cloud {
            return;
        }
        let Some(point) = RunPoint::from_run(seq, run) else {
            return;
        };
        let model = run.model_id.clone();
        let block = self.state.runs.push(&model, point);
        if let Some(block) = &block {
            for w in block.window_records() {
                out.push(Record::Window(w));
            }
            self.on_block(seq, ts, block, out);
        }
        self.evaluate_reliability(seq, ts, &model, out);
        self.evaluate_truncation(seq, ts, run, out);
        if let Some(block) = &block {
            self.observe_block(ts, block, out);
        }
    }

    fn on_block(&mut self, seq: u64, ts: i64, block: &RunBlock, out: &mut Vec<Record>) {
        let t = &self.thresholds.file().latency;
        let w = t.sustain_blocks;
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
                t.lat_p95_limit_ms,
                "model_latency_ms",
            ),
            ev(
                "total_latency_ms_p95",
                block.total_latency_ms.p95,
                t.total_p95_limit_ms,
                "total_latency_ms",
            ),
        ];
        let breaching: Vec<Evidence> = all
            .iter()
            .filter(|e| e.value > e.threshold)
            .cloned()
            .collect();
        let model = block.model_id.clone();
        let streak = self.state.latency.entry(model.clone()).or_default();
        let fires = if breaching.is_empty() {
            streak.clear();
            false
        } else {
            streak.breach(breaching.clone(), w)
        };
        let k = streak.k;
        let evidence = streak.evidence();
        let state = if breaching.is_empty() {
            EvalState::Idle
        } else {
            EvalState::Breach
        };
        self.set_eval(Category::Latency, &model, seq, ts, state, all);
        if fires {
            let latest = breaching.last().cloned();
            let reason = match latest {
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
                    self.thresholds.runs_per_block()
                ),
                None => format!("the p95 latency of {model} stayed above its limit"),
            };
            self.fire(
                Candidate {
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
                },
                out,
            );
        }
    }

    fn evaluate_reliability(&mut self, seq: u64, ts: i64, model: &str, out: &mut Vec<Record>) {
        let n = self.thresholds.runs_per_block();
        let t = self.thresholds.file().reliability.clone();
        let fresh = {
            let f = self
                .state
                .reliability_fresh
                .entry(model.to_owned())
                .or_insert(0);
            *f = (*f + 1).min(n as u64);
            *f as usize
        };
        let last = self.state.runs.last_runs(model);
        let window: Vec<RunPoint> = last
            .iter()
            .skip(last.len().saturating_sub(fresh))
            .map(|p| (*p).clone())
            .collect();
        let (Some(first), Some(lastp)) = (window.first(), window.last()) else {
            return;
        };
        let (first_seq, last_seq) = (first.seq, lastp.seq);
        let start_ms = window.iter().map(|p| p.ts_ms).min().unwrap_or(ts);
        let end_ms = window.iter().map(|p| p.ts_ms).max().unwrap_or(ts);
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
        let max_breach = window
            .iter()
            .map(|p| p.budget_breach_count)
            .fold(0.0, f64::max);
        let breached_runs = window
            .iter()
            .filter(|p| p.budget_breach_count > t.budget_breach_limit)
            .count();
        let budget = mk(
            "budget_breach_count",
            max_breach,
            t.budget_breach_limit,
            format!(
                "most budget breaches in one of the last {} runs of {model}; {breached_runs} run(s) breached",
                window.len()
            ),
        );
        if max_breach > t.budget_breach_limit {
            breaching.push(budget.clone());
        }
        all.push(budget);
        let mut retry_p95 = None;
        if window.len() >= n {
            let retries: Vec<f64> = window.iter().map(|p| p.validation_retry_count).collect();
            if let Some(p95) = quantile(&retries, 0.95) {
                retry_p95 = Some(p95);
                let e = mk(
                    "validation_retry_count_p95",
                    p95,
                    t.retry_p95_limit,
                    format!("p95 of validation_retry_count over the last {n} runs of {model}"),
                );
                if p95 > t.retry_p95_limit {
                    breaching.insert(0, e.clone());
                }
                all.insert(0, e);
            }
        }
        let state = if !breaching.is_empty() {
            EvalState::Breach
        } else if self.state.runs.runs_seen(model) < n as u64 {
            EvalState::Insufficient(format!(
                "the validation_retry_count p95 needs {n} runs of {model}; {} so far",
                self.state.runs.runs_seen(model)
            ))
        } else {
            EvalState::Idle
        };
        self.set_eval(Category::Reliability, model, seq, ts, state, all);
        if breaching.is_empty() {
            return;
        }
        self.state.reliability_fresh.insert(model.to_owned(), 0);
        let reason = match retry_p95 {
            Some(p) if p > t.retry_p95_limit => format!(
                "the p95 of validation retries over the last {n} runs of {model} was {}, above the limit of {}",
                num(p),
                num(t.retry_p95_limit)
            ),
            _ => format!(
                "{breached_runs} of the last {} runs of {model} breached their budget",
                window.len()
            ),
        };
        self.fire(
            Candidate {
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
            },
            out,
        );
    }

    fn evaluate_truncation(&mut self, seq: u64, ts: i64, run: &Run, out: &mut Vec<Record>) {
        if !self.thresholds.file().context.truncation_fires {
            return;
        }
        let (Some(sent), Some(evaluated)) = (run.prompt_tokens_sent, run.tokens_in) else {
            return;
        };
        let e = Evidence {
            signal: "prompt_tokens_sent".to_owned(),
            value: sent as f64,
            threshold: evaluated as f64,
            detail: format!(
                "prompt tokens sent vs evaluated (tokens_in) by run {}",
                run.run_id
            ),
            first_seq: seq,
            last_seq: seq,
            start_ms: ts,
            end_ms: ts,
        };
        let model = run.model_id.clone();
        if sent <= evaluated {
            self.set_eval(Category::Context, &model, seq, ts, EvalState::Idle, vec![e]);
            self.observe_event(Category::Context, &model);
            return;
        }
        self.set_eval(
            Category::Context,
            &model,
            seq,
            ts,
            EvalState::Breach,
            vec![e.clone()],
        );
        self.observe_event(Category::Context, &model);
        self.fire(
            Candidate {
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
            },
            out,
        );
    }

    // ---- events: model fit, context --------------------------------------------------

    fn on_model_load(&mut self, seq: u64, ts: i64, m: &ModelLoad, out: &mut Vec<Record>) {
        let model = m.model_id.clone();
        let required = m.model_required_vram_mb;
        let mut all = Vec::new();
        let mut breaching = Vec::new();
        let mut reasons = Vec::new();
        if m.outcome == LoadOutcome::Failed {
            let e = Evidence {
                signal: "model_load_failure_count".to_owned(),
                value: 1.0,
                threshold: f64::from(self.thresholds.file().model_fit.load_failures) - 1.0,
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
        let latest = |a: &Option<Source>, b: Option<Source>| -> Option<Source> {
            match (a.clone(), b) {
                (Some(x), Some(y)) => Some(if x.seq >= y.seq { x } else { y }),
                (x, y) => x.or(y),
            }
        };
        let profile_total = self.state.profile.as_ref().and_then(|p| {
            p.vram_total_mb.map(|v| Source {
                seq: p.seq,
                start_ms: p.ts_ms,
                end_ms: p.ts_ms,
                value: v,
                from: format!(
                    "the hardware snapshot of the profile record (seq {})",
                    p.seq
                ),
            })
        });
        let profile_free = self.state.profile.as_ref().and_then(|p| {
            p.vram_free_mb.map(|v| Source {
                seq: p.seq,
                start_ms: p.ts_ms,
                end_ms: p.ts_ms,
                value: v,
                from: format!(
                    "the hardware snapshot of the profile record (seq {})",
                    p.seq
                ),
            })
        });
        let total = latest(&self.state.vram_total, profile_total);
        let free = latest(&self.state.vram_free, profile_free);
        let span = |s: &Source, signal: &str, threshold: f64, detail: String| Evidence {
            signal: signal.to_owned(),
            value: required,
            threshold,
            detail,
            first_seq: s.seq.min(seq),
            last_seq: s.seq.max(seq),
            start_ms: s.start_ms.min(ts),
            end_ms: ts,
        };
        if let Some(t) = &total {
            let e = span(
                t,
                "model_required_vram_mb",
                t.value,
                format!("VRAM {model} needs vs gpu_vram_total_mb ({})", t.from),
            );
            all.push(e.clone());
            if required > t.value {
                breaching.push(e);
                reasons.push(format!(
                    "{model} needs {} MB of VRAM but the GPU has {} MB in total",
                    num(required),
                    num(t.value)
                ));
            }
        }
        if let Some(f) = &free {
            let reclaimable = m.vram_reclaimable_mb_est.unwrap_or(0.0);
            let e = span(
                f,
                "model_required_vram_mb",
                f.value + reclaimable,
                format!(
                    "VRAM {model} needs vs gpu_vram_free_mb ({}) + vram_reclaimable_mb_est ({})",
                    f.from,
                    match m.vram_reclaimable_mb_est {
                        Some(r) => format!("{} MB", num(r)),
                        None => "not reported, taken as 0".to_owned(),
                    }
                ),
            );
            all.push(e.clone());
            let over_total = total.as_ref().is_some_and(|t| required > t.value);
            if required > f.value + reclaimable {
                breaching.push(e);
                if !over_total {
                    reasons.push(format!(
                        "{model} needs {} MB of VRAM but only {} MB are free (including {} MB reclaimable)",
                        num(required),
                        num(f.value + reclaimable),
                        num(reclaimable)
                    ));
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
        self.set_eval(Category::ModelFit, &model, seq, ts, state, all);
        self.observe_event(Category::ModelFit, &model);
        if breaching.is_empty() {
            return;
        }
        self.fire(
            Candidate {
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
            },
            out,
        );
    }

    fn on_context_request(&mut self, seq: u64, ts: i64, c: &ContextRequest, out: &mut Vec<Record>) {
        let model = c.model_id.clone();
        let supported = match c.local_supported_context_tokens {
            Some(s) => Some((
                s as f64,
                "local_supported_context_tokens of the request".to_owned(),
            )),
            None => self.state.profile.as_ref().and_then(|p| {
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
            self.set_eval(
                Category::Context,
                &model,
                seq,
                ts,
                EvalState::Insufficient(format!(
                    "no local supported context known for {model} (neither in the request nor in a profile)"
                )),
                Vec::new(),
            );
            return;
        };
        let requested = c.requested_context_tokens;
        let e = Evidence {
            signal: "requested_context_tokens".to_owned(),
            value: requested as f64,
            threshold: supported,
            detail: format!("context requested for {model} vs {from}"),
            first_seq: seq,
            last_seq: seq,
            start_ms: ts,
            end_ms: ts,
        };
        let breach = requested as f64 > supported;
        self.set_eval(
            Category::Context,
            &model,
            seq,
            ts,
            if breach {
                EvalState::Breach
            } else {
                EvalState::Idle
            },
            vec![e.clone()],
        );
        self.observe_event(Category::Context, &model);
        if !breach {
            return;
        }
        self.fire(
            Candidate {
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
            },
            out,
        );
    }

    fn on_context_oom(&mut self, seq: u64, ts: i64, c: &ContextOom, out: &mut Vec<Record>) {
        let model = c.model_id.clone();
        let e = Evidence {
            signal: "local_context_oom_event".to_owned(),
            value: 1.0,
            threshold: 0.0,
            detail: format!("{model} ran out of memory for its context"),
            first_seq: seq,
            last_seq: seq,
            start_ms: ts,
            end_ms: ts,
        };
        self.set_eval(
            Category::Context,
            &model,
            seq,
            ts,
            EvalState::Breach,
            vec![e.clone()],
        );
        self.observe_event(Category::Context, &model);
        self.fire(
            Candidate {
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
            },
            out,
        );
    }

    fn on_profile(&mut self, seq: u64, p: &ProfileRecord) {
        let supported_context = p
            .profile
            .models
            .iter()
            .filter_map(|(id, m)| m.supported_context_tokens.value.map(|v| (id.clone(), v)))
            .collect();
        self.state.profile = Some(ProfileInfo {
            seq,
            ts_ms: p.ts_ms,
            max_concurrency: p.profile.max_recommended_concurrency.value,
            supported_context,
            vram_total_mb: p.hardware.gpu_vram_total_mb,
            vram_free_mb: p.hardware.gpu_vram_free_mb,
        });
    }

    // ---- time windows: concurrency, VRAM readings ------------------------------------

    fn on_time_window(&mut self, seq: u64, w: &WindowRecord, out: &mut Vec<Record>) {
        let source = |value: f64, what: &str| Source {
            seq,
            start_ms: w.start_ms,
            end_ms: w.end_ms,
            value,
            from: format!("{what} of the {} window at seq {seq}", w.metric),
        };
        match w.metric.as_str() {
            // Conservative: the most free VRAM seen in the window, the largest total.
            "gpu_vram_free_mb" => self.state.vram_free = Some(source(w.max, "max")),
            "gpu_vram_total_mb" => self.state.vram_total = Some(source(w.max, "max")),
            "active_sessions" | "queue_wait_ms" => self.on_concurrency_window(seq, w, out),
            _ => {}
        }
    }

    fn on_concurrency_window(&mut self, seq: u64, w: &WindowRecord, out: &mut Vec<Record>) {
        let window_ms = self.thresholds.window_ms();
        let sustain = self.thresholds.file().concurrency.sustain_windows;
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
        // Evaluate this metric's window.
        let (evidence, insufficient): (Option<Evidence>, Option<String>) = match w.metric.as_str() {
            "active_sessions" => {
                match self.state.profile.as_ref().and_then(|p| p.max_concurrency) {
                    Some(max) => (
                        Some(ev(
                            "active_sessions_median",
                            w.p50,
                            max,
                            format!(
                                "median of {} active_sessions samples vs max_recommended_concurrency of the latest profile",
                                w.count
                            ),
                        )),
                        None,
                    ),
                    None => (
                        None,
                        Some("no max_recommended_concurrency in a profile record yet".to_owned()),
                    ),
                }
            }
            _ => {
                self.state.queue_wait_p95 = Some(Source {
                    seq,
                    start_ms: w.start_ms,
                    end_ms: w.end_ms,
                    value: w.p95,
                    from: "p95".to_owned(),
                });
                (
                    Some(ev(
                        "queue_wait_ms_p95",
                        w.p95,
                        self.thresholds.file().concurrency.queue_wait_limit_ms,
                        format!("p95 of {} queue_wait_ms samples", w.count),
                    )),
                    None,
                )
            }
        };
        let c = &mut self.state.concurrency;
        let t = w.start_ms;
        match c.minute {
            Some(m) if t < m => return, // out of order: never changes a later streak
            Some(m) if t == m => {}
            prev => {
                let consecutive = prev == Some(t - window_ms) && c.minute_breached;
                if !consecutive {
                    c.streak.clear();
                }
                c.prior = c.streak.clone();
                c.minute = Some(t);
                c.minute_breached = false;
            }
        }
        let breach = evidence.as_ref().is_some_and(|e| e.value > e.threshold);
        let mut fires = false;
        if breach {
            let e = evidence.clone().into_iter().collect::<Vec<_>>();
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
        if c.now_minute != Some(t) {
            c.now.clear();
            c.now_minute = Some(t);
        }
        c.now.extend(evidence.clone());
        let k = c.streak.k;
        let streak_evidence = c.streak.evidence();
        let now = c.now.clone();
        let state = if k > 0 {
            EvalState::Breach
        } else if now.is_empty() {
            EvalState::Insufficient(insufficient.unwrap_or_default())
        } else {
            EvalState::Idle
        };
        self.set_eval(Category::Concurrency, "host", seq, w.end_ms, state, now);
        if fires {
            let reason = match evidence {
                Some(e) if e.signal == "active_sessions_median" => format!(
                    "the median of active sessions was {}, above the recommended {}, for {} consecutive windows of {} s",
                    num(e.value),
                    num(e.threshold),
                    sustain,
                    window_ms / 1000
                ),
                Some(e) => format!(
                    "the p95 queue wait was {} ms, above the {} ms limit, for {} consecutive windows of {} s",
                    num(e.value),
                    num(e.threshold),
                    sustain,
                    window_ms / 1000
                ),
                None => "sessions waited too long".to_owned(),
            };
            self.fire(
                Candidate {
                    seq,
                    ts_ms: w.end_ms.max(w.ts_ms),
                    category: Category::Concurrency,
                    scope: "host".to_owned(),
                    session_id: None,
                    signature: None,
                    reason,
                    evidence: streak_evidence,
                    sustained: Some(k),
                    requested_context: None,
                },
                out,
            );
        }
        self.observe_time_window(w, out);
    }

    // ---- firings, suggestions, suppressions ----------------------------------------

    fn fire(&mut self, c: Candidate, out: &mut Vec<Record>) {
        let firing_id = format!("f-{}-{}", c.seq, c.category.as_str());
        let firing = Firing {
            ts_ms: c.ts_ms,
            firing_id: firing_id.clone(),
            category: c.category,
            scope: c.scope.clone(),
            session_id: c.session_id.clone(),
            signature: c.signature.clone(),
            reason: c.reason.clone(),
            evidence: c.evidence.clone(),
            sustained: c.sustained,
            thresholds_version: self.thresholds.version().to_owned(),
        };
        out.push(Record::Firing(firing.clone()));
        self.state
            .last_firing
            .entry(c.category)
            .or_default()
            .insert(c.scope.clone(), firing_id);
        for f in self.state.follow_ups.values_mut() {
            if f.category == c.category && f.scope == c.scope {
                f.fired_again = true;
            }
        }
        let ladder = self
            .state
            .ladders
            .entry(c.category)
            .or_default()
            .entry(c.scope.clone())
            .or_default();
        if !ladder.offered.is_empty() {
            ladder.fired_again = true;
        }
        let decided = self.decide(&firing, &c);
        out.push(decided);
    }

    /// Applies the anti-spam rules, then the ladder: a suppression or a suggestion.
    fn decide(&mut self, firing: &Firing, c: &Candidate) -> Record {
        let version = self.thresholds.version().to_owned();
        let session = firing
            .session_id
            .clone()
            .unwrap_or_else(|| NO_SESSION.to_owned());
        if let Some(sig) = &firing.signature {
            let shown = self
                .state
                .sessions
                .get(&session)
                .and_then(|m| m.get(sig))
                .copied()
                .unwrap_or(0);
            if shown >= self.thresholds.file().suggestions.signature_per_session {
                return Record::Suppression(Suppression {
                    ts_ms: firing.ts_ms,
                    firing_id: firing.firing_id.clone(),
                    category: firing.category,
                    scope: firing.scope.clone(),
                    rule: SuppressionRule::SignatureOncePerSession,
                    eligible_at_ms: None,
                    thresholds_version: version,
                });
            }
        }
        if let Some(last) = self.state.last_suggested.get(&firing.category) {
            let eligible = last.saturating_add(self.thresholds.cooldown_ms());
            if firing.ts_ms < eligible {
                return Record::Suppression(Suppression {
                    ts_ms: firing.ts_ms,
                    firing_id: firing.firing_id.clone(),
                    category: firing.category,
                    scope: firing.scope.clone(),
                    rule: SuppressionRule::CategoryCooldown,
                    eligible_at_ms: Some(eligible),
                    thresholds_version: version,
                });
            }
        }
        let suggestion = suggest::build(self, firing, c);
        // Book-keeping of what was shown.
        self.state
            .last_suggested
            .insert(firing.category, firing.ts_ms);
        if let Some(sig) = &firing.signature {
            *self
                .state
                .sessions
                .entry(session)
                .or_default()
                .entry(sig.clone())
                .or_insert(0) += 1;
        }
        let ladder = self
            .state
            .ladders
            .entry(firing.category)
            .or_default()
            .entry(firing.scope.clone())
            .or_default();
        let local = suggestion
            .options
            .iter()
            .find(|o| o.kind == kora_model::OptionKind::Local);
        let local_id = local.map(|o| o.id.clone()).unwrap_or_default();
        if let Some(step) = suggest::step_of_option(&local_id)
            && !ladder.offered.contains(&step)
        {
            ladder.offered.push(step);
        }
        if suggestion.ladder_step == suggest::CLOUD_STEP {
            ladder.cloud_offered = true;
        }
        ladder.fired_again = false;
        let last = firing.evidence.last();
        self.state.suggestions.insert(
            suggestion.suggestion_id.clone(),
            SuggestionMemo {
                ts_ms: firing.ts_ms,
                category: firing.category,
                scope: firing.scope.clone(),
                firing_id: firing.firing_id.clone(),
                option_ids: suggestion.options.iter().map(|o| o.id.clone()).collect(),
                local_option: local_id,
                metric: match firing.category {
                    Category::Context | Category::ModelFit => "firings".to_owned(),
                    _ => last.map(|e| e.signal.clone()).unwrap_or_default(),
                },
                before: match firing.category {
                    Category::Context | Category::ModelFit => None,
                    _ => last.map(|e| e.value),
                },
                threshold: match firing.category {
                    Category::Context | Category::ModelFit => None,
                    _ => last.map(|e| e.threshold),
                },
                answered: false,
            },
        );
        Record::Suggestion(suggestion)
    }

    // ---- feedback and follow-ups ---------------------------------------------------

    fn on_feedback(&mut self, ts: i64, f: &Feedback) {
        let Some(memo) = self.state.suggestions.get(&f.suggestion_id).cloned() else {
            return; // feedback on an unknown suggestion changes nothing
        };
        let ladder = self
            .state
            .ladders
            .entry(memo.category)
            .or_default()
            .entry(memo.scope.clone())
            .or_default();
        if f.insist_same_tier == Some(true) {
            ladder.insisted = true;
        }
        match f.action {
            FeedbackAction::Dismissed => ladder.dismissed = true,
            FeedbackAction::Accepted => {
                if memo.answered {
                    return; // only the first acceptance is followed
                }
                let choice = f
                    .choice
                    .clone()
                    .unwrap_or_else(|| memo.local_option.clone());
                if choice == suggest::CLOUD_OPTION || !memo.option_ids.contains(&choice) {
                    return; // cloud is not followed; an option never offered is ignored
                }
                if let Some(m) = self.state.suggestions.get_mut(&f.suggestion_id) {
                    m.answered = true;
                }
                self.state.follow_ups.insert(
                    f.suggestion_id.clone(),
                    FollowUp {
                        category: memo.category,
                        scope: memo.scope.clone(),
                        choice,
                        metric: memo.metric.clone(),
                        before: memo.before,
                        threshold: memo.threshold,
                        started_ms: ts,
                        deadline_ms: ts.saturating_add(self.thresholds.follow_up_ms()),
                        windows: 0,
                        worst_after: None,
                        observations: 0,
                        fired_again: false,
                    },
                );
            }
        }
    }

    fn observe_event(&mut self, category: Category, scope: &str) {
        for f in self.state.follow_ups.values_mut() {
            if f.category == category && f.scope == scope {
                f.observations = f.observations.saturating_add(1);
            }
        }
    }

    fn observe_value(
        &mut self,
        ts: i64,
        matches: impl Fn(&FollowUp) -> Option<f64>,
        out: &mut Vec<Record>,
    ) {
        let needed = self.thresholds.file().follow_up.windows;
        let mut done = Vec::new();
        for (id, f) in self.state.follow_ups.iter_mut() {
            if let Some(v) = matches(f) {
                f.windows = f.windows.saturating_add(1);
                f.observations = f.observations.saturating_add(1);
                f.worst_after = Some(f.worst_after.map_or(v, |w| w.max(v)));
                if f.windows >= needed {
                    done.push(id.clone());
                }
            }
        }
        for id in done {
            self.finish_follow_up(&id, ts, out);
        }
    }

    fn observe_block(&mut self, ts: i64, block: &RunBlock, out: &mut Vec<Record>) {
        self.observe_value(
            ts,
            |f| {
                if f.scope != block.model_id {
                    return None;
                }
                match (f.category, f.metric.as_str()) {
                    (Category::Latency, "model_latency_ms_p95") => Some(block.model_latency_ms.p95),
                    (Category::Latency, "total_latency_ms_p95") => Some(block.total_latency_ms.p95),
                    (Category::Reliability, "validation_retry_count_p95") => {
                        Some(block.validation_retry_count.p95)
                    }
                    (Category::Reliability, "budget_breach_count") => {
                        Some(block.budget_breach_count.max)
                    }
                    _ => None,
                }
            },
            out,
        );
    }

    fn observe_time_window(&mut self, w: &WindowRecord, out: &mut Vec<Record>) {
        self.observe_value(
            w.end_ms,
            |f| match (f.category, f.metric.as_str(), w.metric.as_str()) {
                (Category::Concurrency, "active_sessions_median", "active_sessions") => Some(w.p50),
                (Category::Concurrency, "queue_wait_ms_p95", "queue_wait_ms") => Some(w.p95),
                _ => None,
            },
            out,
        );
    }

    fn expire_follow_ups(&mut self, ts: i64, out: &mut Vec<Record>) {
        let due: Vec<(String, i64)> = self
            .state
            .follow_ups
            .iter()
            .filter(|(_, f)| f.deadline_ms <= ts)
            .map(|(id, f)| (id.clone(), f.deadline_ms))
            .collect();
        for (id, deadline) in due {
            self.finish_follow_up(&id, deadline, out);
        }
    }

    fn finish_follow_up(&mut self, id: &str, ts: i64, out: &mut Vec<Record>) {
        let Some(f) = self.state.follow_ups.remove(id) else {
            return;
        };
        let effect = match (f.category, f.worst_after) {
            (Category::Context | Category::ModelFit, _) => {
                if f.fired_again {
                    MitigationEffect::NoEffect
                } else if f.observations == 0 {
                    MitigationEffect::Inconclusive
                } else {
                    MitigationEffect::Resolved
                }
            }
            (_, None) => {
                if f.fired_again {
                    MitigationEffect::NoEffect
                } else {
                    MitigationEffect::Inconclusive
                }
            }
            (_, Some(after)) => {
                let under = f.threshold.is_some_and(|t| after <= t);
                let improved = f.before.is_some_and(|b| after < b);
                if under && !f.fired_again {
                    MitigationEffect::Resolved
                } else if improved {
                    MitigationEffect::Partial
                } else {
                    MitigationEffect::NoEffect
                }
            }
        };
        out.push(Record::MitigationOutcome(MitigationOutcome {
            ts_ms: ts,
            suggestion_id: id.to_owned(),
            category: f.category,
            scope: f.scope,
            choice: f.choice,
            effect,
            metric: f.metric,
            p95_before: f.before,
            p95_after: f.worst_after,
            thresholds_version: self.thresholds.version().to_owned(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ceil_log2() {
        assert_eq!(context_bucket(0), 0);
        assert_eq!(context_bucket(1), 0);
        assert_eq!(context_bucket(2), 1);
        assert_eq!(context_bucket(3), 2);
        assert_eq!(context_bucket(4096), 12);
        assert_eq!(context_bucket(4097), 13);
        assert_eq!(
            request_signature("h", "m", 4000),
            request_signature("h", "m", 4096)
        );
        assert_ne!(
            request_signature("h", "m", 4096),
            request_signature("h", "m", 4097)
        );
    }
}
