//! The engine: `(state, log entry) -> (state, derived records)`. It dispatches each record to
//! the triggers (`triggers/`), turns their candidates into firings, applies the anti-spam
//! rules, asks `suggest` for the suggestion, and keeps the ladder and the follow-ups moving.

use kora_model::{
    Category, Feedback, FeedbackAction, Firing, LogEntry, ProfileRecord, Record, SESSION_IDLE_MS,
    Signal, Substrate, Suppression, SuppressionRule, WindowRecord,
};
use kora_window::{RunPoint, WINDOW_KIND_RUNS, WINDOW_KIND_TIME};

use crate::follow_up::{self, Measured};
use crate::ladder::{CLOUD_OPTION, CLOUD_STEP, step_of_option};
use crate::retire;
use crate::state::{
    Candidate, EngineState, NO_SESSION, ProfileInfo, ReadinessInfo, Source, SuggestionMemo,
    VRAM_FREE_KEPT,
};
use crate::suggest::{self, Ask, Inputs};
use crate::thresholds::Thresholds;
use crate::tiers::CloudTiers;
use crate::triggers::{concurrency, context, latency, model_fit, reliability};

/// The sampled signals whose 60 s time windows the engine reads, so the only ones the service
/// writes `window` records for (DESIGN.md section 2: "each sampled signal the triggers use").
/// Model fit reads `gpu_vram_free_mb` and `gpu_vram_total_mb`; concurrency reads
/// `active_sessions` and `queue_wait_ms` (the host's and each model's). Any other time window
/// only tells the engine that a minute is over (it closes the minutes of the queue waits runs
/// report, [`concurrency`]); `cpu_cores` carries that clock: every probe samples it, on
/// machines with no GPU and no runtime sending samples too, and it never changes, so a sealed window of
/// it takes about 4 bytes (8.9 for the average window of a year's store). The other signals (CPU load, RAM, active generations) are kept
/// as samples and hourly rollups for the charts; a window of theirs would be read by no one.
/// Windows that logs written before this hold are still folded the same way.
pub const WINDOWED_SIGNALS: [Signal; 5] = [
    Signal::GpuVramTotalMb,
    Signal::GpuVramFreeMb,
    Signal::ActiveSessions,
    Signal::QueueWaitMs,
    Signal::CpuCores,
];

/// The policy engine. See the crate documentation for the rules it applies.
#[derive(Debug, Clone)]
pub struct Engine {
    pub(crate) thresholds: Thresholds,
    pub(crate) tiers: CloudTiers,
    pub(crate) state: EngineState,
    /// Whether idle state is swept (`retire`); off only in the oracle of the tests.
    retire: bool,
}

impl Engine {
    pub fn new(thresholds: Thresholds, tiers: CloudTiers) -> Engine {
        let state = EngineState::new(&thresholds);
        Engine {
            thresholds,
            tiers,
            state,
            retire: true,
        }
    }

    /// The same engine keeping the state of idle models and scopes instead of retiring it
    /// (see [`crate::STATE_IDLE_MS`]): its decisions are the same, its memory grows with
    /// every model and scope ever seen. The oracle the property tests compare with.
    pub fn without_retirement(mut self) -> Engine {
        self.retire = false;
        self
    }

    /// Resumes from a checkpointed state (built with the same thresholds).
    pub fn with_state(thresholds: Thresholds, tiers: CloudTiers, state: EngineState) -> Engine {
        Engine {
            thresholds,
            tiers,
            state,
            retire: true,
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
        retire::on_time(&mut self.state, ts, self.retire);
        sessions_at(&mut self.state, &entry.record, ts);
        out.extend(follow_up::expire(&mut self.state, &self.thresholds, ts));
        let seq = entry.seq;
        let (s, t) = (&mut self.state, &self.thresholds);
        let candidates: Vec<Candidate> = match &entry.record {
            Record::Run(r) => {
                // Cloud runs are recorded (never hidden) but are no evidence of a local limit.
                if r.substrate == Substrate::Cloud {
                    return out;
                }
                let Some(point) = RunPoint::from_run(seq, r) else {
                    return out;
                };
                follow_up::on_model_used(s, ts, &r.model_id, Some(&r.session_id));
                retire::model_if_idle(s, &r.model_id);
                let block = s.runs.push(&r.model_id, point);
                let mut c = Vec::new();
                if let Some(block) = &block {
                    out.extend(block.window_records().into_iter().map(Record::Window));
                    c.extend(latency::on_block(s, t, seq, ts, block));
                }
                c.extend(reliability::after_run(s, t, seq, ts, &r.model_id));
                c.extend(context::after_run(s, t, seq, ts, r));
                let found = concurrency::on_run(s, t, seq, ts, r);
                c.extend(found.candidates);
                self.fire_all(c, &mut out);
                self.observe_run_windows(ts, &found.run_windows, &mut out);
                if let Some(block) = &block {
                    self.observe_block(ts, block, &mut out);
                }
                return out;
            }
            Record::ModelLoad(m) => {
                if m.outcome == kora_model::LoadOutcome::Ok {
                    follow_up::on_model_used(s, ts, &m.model_id, None);
                }
                model_fit::on_load(s, t, seq, ts, m).into_iter().collect()
            }
            Record::ContextRequest(c) => {
                context::on_request(s, t, seq, ts, c).into_iter().collect()
            }
            Record::ContextOom(c) => context::on_oom(s, seq, ts, c).into_iter().collect(),
            Record::SessionStarted(x) | Record::SessionEnded(x) => {
                // A session's signatures are forgotten when it ends (or starts over).
                s.sessions.remove(&x.session_id);
                s.session_last_ms.remove(&x.session_id);
                Vec::new()
            }
            Record::Readiness(r) => {
                s.readiness = Some(ReadinessInfo {
                    seq,
                    ts_ms: ts,
                    report: r.clone(),
                });
                Vec::new()
            }
            Record::Feedback(f) => {
                self.on_feedback(seq, ts, f, &mut out);
                return out;
            }
            Record::Profile(p) => {
                on_profile(s, seq, p);
                Vec::new()
            }
            Record::Window(w) if w.window_kind == WINDOW_KIND_TIME => {
                let c = self.on_time_window(seq, w, &mut out);
                self.fire_all(c, &mut out);
                return out;
            }
            _ => Vec::new(),
        };
        self.fire_all(candidates, &mut out);
        out
    }

    fn fire_all(&mut self, candidates: Vec<Candidate>, out: &mut Vec<Record>) {
        for c in candidates {
            self.fire(c, out);
        }
    }

    // ---- time windows ----------------------------------------------------------------

    fn on_time_window(
        &mut self,
        seq: u64,
        w: &WindowRecord,
        out: &mut Vec<Record>,
    ) -> Vec<Candidate> {
        let s = &mut self.state;
        let source = |value: f64, what: &str| Source {
            seq,
            start_ms: w.start_ms,
            end_ms: w.end_ms,
            value,
            from: format!("{what} of the {} window at seq {seq}", w.metric),
        };
        match w.metric.as_str() {
            // Conservative: the most free VRAM seen in the window, the largest total.
            "gpu_vram_free_mb" => {
                s.vram_free.push_back(source(w.max, "max"));
                while s.vram_free.len() > VRAM_FREE_KEPT {
                    s.vram_free.pop_front();
                }
                Vec::new()
            }
            "gpu_vram_total_mb" => {
                s.vram_total = Some(source(w.max, "max"));
                Vec::new()
            }
            _ => {
                let found = concurrency::on_window(s, &self.thresholds, seq, w);
                self.observe_run_windows(w.end_ms, &found.run_windows, out);
                let c = found.candidates;
                // Follow-ups of concurrency see each minute's measurement.
                let value = match w.metric.split_once('/').map_or(w.metric.as_str(), |x| x.0) {
                    "active_sessions" => Some(("active_sessions_median", w.p50)),
                    "queue_wait_ms" => Some(("queue_wait_ms_p95", w.p95)),
                    _ => None,
                };
                if let Some((metric, v)) = value {
                    let scope = w.metric.split_once('/').map_or("host", |x| x.1).to_owned();
                    out.extend(follow_up::observe_window(
                        &mut self.state,
                        &self.thresholds,
                        w.end_ms,
                        Measured {
                            category: Category::Concurrency,
                            scope: &scope,
                            metric,
                            start_ms: w.start_ms,
                            value: v,
                        },
                    ));
                }
                c
            }
        }
    }

    /// Follow-ups of concurrency see the queue waits runs reported, window by window.
    fn observe_run_windows(
        &mut self,
        ts: i64,
        windows: &[(String, i64, f64)],
        out: &mut Vec<Record>,
    ) {
        for (scope, start_ms, p95) in windows {
            out.extend(follow_up::observe_window(
                &mut self.state,
                &self.thresholds,
                ts,
                Measured {
                    category: Category::Concurrency,
                    scope,
                    metric: "queue_wait_ms_p95",
                    start_ms: *start_ms,
                    value: *p95,
                },
            ));
        }
    }

    fn observe_block(&mut self, ts: i64, block: &kora_window::RunBlock, out: &mut Vec<Record>) {
        let measured = [
            (
                Category::Latency,
                "model_latency_ms_p95",
                block.model_latency_ms.p95,
            ),
            (
                Category::Latency,
                "total_latency_ms_p95",
                block.total_latency_ms.p95,
            ),
            (
                Category::Reliability,
                "validation_retry_count_p95",
                block.validation_retry_count.p95,
            ),
            (
                Category::Reliability,
                "budget_breach_count",
                block.budget_breach_count.max,
            ),
        ];
        for (category, metric, value) in measured {
            out.extend(follow_up::observe_window(
                &mut self.state,
                &self.thresholds,
                ts,
                Measured {
                    category,
                    scope: &block.model_id,
                    metric,
                    start_ms: block.start_ms,
                    value,
                },
            ));
        }
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
            thresholds_fingerprint: Some(self.thresholds.fingerprint()),
        };
        out.push(Record::Firing(firing.clone()));
        let s = &mut self.state;
        s.last_firing
            .entry(c.category)
            .or_default()
            .insert(c.scope.clone(), firing_id);
        s.open_alert(c.category, &c.scope, c.ts_ms);
        follow_up::on_firing(s, c.category, &c.scope);
        s.ladders
            .entry(c.category)
            .or_default()
            .entry(c.scope.clone())
            .or_default()
            .on_firing();
        let decided = self.decide(&firing, &c);
        out.push(decided);
    }

    fn suppression(&self, firing: &Firing, rule: SuppressionRule, eligible: Option<i64>) -> Record {
        Record::Suppression(Suppression {
            ts_ms: firing.ts_ms,
            firing_id: firing.firing_id.clone(),
            category: firing.category,
            scope: firing.scope.clone(),
            rule,
            eligible_at_ms: eligible,
            thresholds_version: self.thresholds.version().to_owned(),
            thresholds_fingerprint: Some(self.thresholds.fingerprint()),
        })
    }

    /// Applies the anti-spam rules, then the ladder: a suppression or a suggestion.
    fn decide(&mut self, firing: &Firing, c: &Candidate) -> Record {
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
                return self.suppression(firing, SuppressionRule::SignatureOncePerSession, None);
            }
        }
        if let Some(last) = self.state.last_suggested.get(&firing.category) {
            let eligible = last.saturating_add(self.thresholds.cooldown_ms());
            if firing.ts_ms < eligible {
                return self.suppression(firing, SuppressionRule::CategoryCooldown, Some(eligible));
            }
        }
        let ladder = self
            .state
            .ladders
            .get(&firing.category)
            .and_then(|m| m.get(&firing.scope))
            .cloned()
            .unwrap_or_default();
        let ask = Ask {
            seq: c.seq,
            ts_ms: firing.ts_ms,
            category: firing.category,
            scope: &firing.scope,
            session_id: firing.session_id.as_deref(),
            firing_id: &firing.firing_id,
            reason: &firing.reason,
            evidence: &firing.evidence,
            requested_context: c.requested_context,
        };
        let suggestion = suggest::build(self.inputs(), &ask, &ladder, false);
        // Book-keeping of what was shown.
        self.state
            .last_suggested
            .insert(firing.category, firing.ts_ms);
        if let Some(sig) = &firing.signature {
            if session != NO_SESSION {
                let last = self
                    .state
                    .session_last_ms
                    .entry(session.clone())
                    .or_insert(firing.ts_ms);
                *last = (*last).max(firing.ts_ms);
            }
            *self
                .state
                .sessions
                .entry(session)
                .or_default()
                .entry(sig.clone())
                .or_insert(0) += 1;
        }
        self.remember(&suggestion, &ask);
        Record::Suggestion(suggestion)
    }

    fn inputs(&self) -> Inputs<'_> {
        Inputs {
            state: &self.state,
            thresholds: &self.thresholds,
            tiers: &self.tiers,
        }
    }

    /// Records what a suggestion offered: the ladder moves, and the memo lets feedback start
    /// a follow-up or an "insist on the same tier" answer.
    fn remember(&mut self, suggestion: &kora_model::Suggestion, ask: &Ask<'_>) {
        let local = suggestion
            .options
            .iter()
            .find(|o| o.kind == kora_model::OptionKind::Local)
            .map(|o| o.id.clone())
            .unwrap_or_default();
        self.state
            .ladders
            .entry(suggestion.category)
            .or_default()
            .entry(suggestion.scope.clone())
            .or_default()
            .on_offer(&local, suggestion.ladder_step == CLOUD_STEP);
        let last = ask.evidence.last();
        let event_category = matches!(ask.category, Category::Context | Category::ModelFit);
        self.state.suggestions.insert(
            suggestion.suggestion_id.clone(),
            SuggestionMemo {
                ts_ms: ask.ts_ms,
                category: ask.category,
                scope: ask.scope.to_owned(),
                firing_id: ask.firing_id.to_owned(),
                option_ids: suggestion.options.iter().map(|o| o.id.clone()).collect(),
                local_option: local,
                metric: if event_category {
                    "firings".to_owned()
                } else {
                    last.map(|e| e.signal.clone()).unwrap_or_default()
                },
                before: last.filter(|_| !event_category).map(|e| e.value),
                threshold: last.filter(|_| !event_category).map(|e| e.threshold),
                answered: false,
                reason: ask.reason.to_owned(),
                session_id: ask.session_id.map(str::to_owned),
                requested_context: ask.requested_context,
                evidence: ask.evidence.to_vec(),
                insist_answered: false,
            },
        );
    }

    // ---- feedback --------------------------------------------------------------------

    fn on_feedback(&mut self, seq: u64, ts: i64, f: &Feedback, out: &mut Vec<Record>) {
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
        if f.action == FeedbackAction::Dismissed {
            ladder.dismissed = true;
        }
        if f.insist_same_tier == Some(true) {
            ladder.insisted = true;
            if !memo.insist_answered {
                self.answer_insist(seq, ts, &f.suggestion_id, &memo, out);
            }
        }
        if f.action != FeedbackAction::Accepted || memo.answered {
            return; // only the first acceptance is followed
        }
        let choice = f
            .choice
            .clone()
            .unwrap_or_else(|| memo.local_option.clone());
        if choice == CLOUD_OPTION
            || !memo.option_ids.contains(&choice)
            || step_of_option(&choice).is_none()
        {
            return; // cloud is not followed; an option never offered is ignored
        }
        follow_up::start(
            &mut self.state,
            &self.thresholds,
            &f.suggestion_id,
            ts,
            choice,
        );
    }

    /// Spec 4.1: "If user insists on same tier, suggest Krako Cloud", at once: a suggestion
    /// answering the feedback, with the cloud option when its estimate holds up (readiness
    /// gates only the action), or saying why Krako Cloud would not help. It is the user's own
    /// request, so no cooldown holds it back and it starts none; it answers once per
    /// suggestion.
    fn answer_insist(
        &mut self,
        seq: u64,
        ts: i64,
        suggestion_id: &str,
        memo: &SuggestionMemo,
        out: &mut Vec<Record>,
    ) {
        if let Some(m) = self.state.suggestions.get_mut(suggestion_id) {
            m.insist_answered = true;
        }
        let ladder = self
            .state
            .ladders
            .get(&memo.category)
            .and_then(|m| m.get(&memo.scope))
            .cloned()
            .unwrap_or_default();
        let ask = Ask {
            seq,
            ts_ms: ts,
            category: memo.category,
            scope: &memo.scope,
            session_id: memo.session_id.as_deref(),
            firing_id: &memo.firing_id,
            reason: &memo.reason,
            evidence: &memo.evidence,
            requested_context: memo.requested_context,
        };
        let mut suggestion = suggest::build(self.inputs(), &ask, &ladder, true);
        suggestion.in_answer_to = Some(suggestion_id.to_owned());
        self.remember(&suggestion, &ask);
        out.push(Record::Suggestion(suggestion));
    }
}

/// Moves record time (the newest `ts_ms` of the runs and events) and the activity of the
/// session `record` names. A session idle for `SESSION_IDLE_MS` of record time has ended, as
/// the pipeline counts open sessions: its signatures are forgotten, so "once per session"
/// starts over if its id comes back. Each hour of record time the ended sessions are swept,
/// so the engine keeps only the sessions of the last day.
fn sessions_at(s: &mut EngineState, record: &Record, ts: i64) {
    let session = match record {
        Record::Run(r) => Some(r.session_id.as_str()),
        Record::ContextOom(c) => Some(c.session_id.as_str()),
        Record::ContextRequest(c) => c.session_id.as_deref(),
        Record::ModelLoad(_) | Record::SessionStarted(_) | Record::SessionEnded(_) => None,
        _ => return,
    };
    let before = s.record_ms;
    let now = before.map_or(ts, |b| b.max(ts));
    s.record_ms = Some(now);
    let horizon = now.saturating_sub(SESSION_IDLE_MS);
    if let Some(id) = session
        && let Some(last) = s.session_last_ms.get_mut(id)
    {
        if *last < horizon {
            s.session_last_ms.remove(id);
            s.sessions.remove(id);
        } else {
            *last = (*last).max(ts);
        }
    }
    const HOUR_MS: i64 = 3_600_000;
    if before.is_some_and(|b| b.div_euclid(HOUR_MS) != now.div_euclid(HOUR_MS)) {
        let ended: Vec<String> = s
            .session_last_ms
            .iter()
            .filter(|(_, last)| **last < horizon)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ended {
            s.session_last_ms.remove(&id);
            s.sessions.remove(&id);
        }
    }
}

fn on_profile(s: &mut EngineState, seq: u64, p: &ProfileRecord) {
    let supported_context = p
        .profile
        .models
        .iter()
        .filter_map(|(id, m)| m.supported_context_tokens.value.map(|v| (id.clone(), v)))
        .collect();
    s.profile = Some(ProfileInfo {
        seq,
        ts_ms: p.ts_ms,
        max_concurrency: p.profile.max_recommended_concurrency.value,
        supported_context,
        vram_total_mb: p.hardware.gpu_vram_total_mb,
        vram_free_mb: p.hardware.gpu_vram_free_mb,
    });
}
