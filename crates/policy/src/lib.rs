//! kora-policy: the upgrade-detection engine of kora-telemetry (spec Sections 4 to 7, 9, 10).
//!
//! The engine is a pure fold: [`Engine::step`] takes one log entry and returns the derived
//! records (run-block windows, firings, suggestions, suppressions, mitigation outcomes) the
//! server appends to the log. Time is the record's `ts_ms`; the crate never reads a clock,
//! does no I/O, never depends on a runtime or a store, and keeps every map a `BTreeMap`, so
//! the state after any prefix of the log is the fold of that prefix ([`EngineState`] is
//! serializable for checkpoints) and [`replay`] re-derives a log exactly. It must never
//! route anything, suggest without a firing that carries evidence, or offer Krako Cloud
//! before a local step for the same scope.
//!
//! # Inputs
//!
//! `run` (local runs only: cloud runs are recorded but are no evidence of a local limit),
//! `model_load`, `context_request`, `context_oom`, `session_started`/`session_ended`,
//! `readiness`, `feedback`, `profile`, and `window` records of kind `time` for the host-wide
//! series `active_sessions`, `queue_wait_ms`, `gpu_vram_free_mb`, `gpu_vram_total_mb`
//! (per-device `@gpuN` and per-model `/model` series are not trigger inputs). Records the
//! engine derives ([`Engine::is_derived_by_engine`]) and entries at or below the last folded
//! seq are ignored.
//!
//! # Triggers (DESIGN.md section 4; "over" is strictly greater than)
//!
//! | category | scope | fires when | sustain |
//! | --- | --- | --- | --- |
//! | model_fit | model | a `model_load` needs more VRAM than the total (the max of the latest `gpu_vram_total_mb` window, or the latest profile's snapshot, whichever is newer), or more than free + reclaimable (free: the max of the latest `gpu_vram_free_mb` window, the conservative reading; reclaimable absent = 0), or failed | none |
//! | context | model | requested > supported (the request's `local_supported_context_tokens`, else the latest profile's value for the model, else insufficient evidence), a `context_oom`, or a run with `prompt_tokens_sent > tokens_in` | none |
//! | latency | model | a closed block of N runs with p95 `model_latency_ms` > 4500 or p95 `total_latency_ms` > 6500 | W = 3 consecutive blocks |
//! | concurrency | host | a time window with median `active_sessions` > the latest profile's `max_recommended_concurrency`, or p95 `queue_wait_ms` > 1200 | 3 consecutive windows |
//! | reliability | model | over the last N runs, p95 `validation_retry_count` > 2 (needs N runs), or any `budget_breach_count` > 0 | none |
//!
//! Sustained categories fire on the Wth consecutive breaching window and then on every Wth
//! after it (3, 6, 9...), each time with the evidence of the last W windows; their status is
//! pending k of W below W and firing from W on. One good window resets the streak. For
//! concurrency a minute breaches when either metric does, and two minutes are consecutive only
//! when their starts are one window apart, so a missing (empty) window breaks the streak;
//! a window older than the newest minute seen is ignored. Reliability never counts a run twice:
//! after a reliability firing of a model, the next one considers only runs after it.
//!
//! # Suggestions (Sections 5 to 7)
//!
//! Each firing becomes a suggestion or a suppression. The signature rule is checked first
//! (signature = hex SHA-256 of `prompt_hash|model_id|ceil(log2(context_tokens))`, only for
//! firings from one request: context requests with a `prompt_hash`, truncated runs; requests
//! without a session share one session that never ends; a `session_ended` or
//! `session_started` forgets a session's signatures), then the category cooldown (30 minutes
//! of record time since the category's last suggestion, any scope). A held-back candidate is a
//! `suppression` naming the rule and, for the cooldown, `eligible_at_ms`.
//!
//! Ladder per category and scope: the next local step that applies (table below) not yet
//! offered, or, when all were offered, the last one again. Krako Cloud (step 4) is added as
//! option (2) only once a local step was offered for the scope and the trigger fired again
//! (a suppressed firing counts), a suggestion of the scope was dismissed, or the user insisted
//! on the same tier; in practice every suggestion of a scope after its first carries the cloud
//! option. `ladder_step` is 4 when the cloud option is present, else the local step.
//!
//! | category | local steps, in order |
//! | --- | --- |
//! | model_fit | 1 `smaller_model`, 3 `lower_context` (a smaller KV cache) |
//! | context | 3 `lower_context` (context reduction or summarization) |
//! | latency | 2 `deterministic_filtering` (spec 4.3), 1 `smaller_model` |
//! | concurrency | 3 `lower_context` (less KV cache per session, so more sessions fit), 1 `smaller_model` (the spec names only cloud) |
//! | reliability | 1 `stronger_local_model` (spec 4.5: step 1 is the choice of model; here upward), 2 `deterministic_filtering` |
//!
//! A cloud option always carries a [`kora_model::CloudEstimate`] from the scope's last N
//! local runs (mean tokens in and out, p95 model latency; the tier table's defaults when there
//! are none) and the category's tier in `schema/cloud-tiers.json`: predicted model time =
//! first-token latency + tokens out / throughput; cost = tokens in x input price + tokens out x
//! output price. The text states these assumptions and that the figures are estimates.
//! Readiness (the latest report, unknown when older than 10 minutes) gates only the cloud
//! option's `action_ready`, with `to_do_first`; local options are never gated.
//!
//! Message, the spec's template word for word when the cloud option is present:
//! `Local execution hit a limit: {reason}. You can:\n(1) try {local}\n(2) upgrade to Krako
//! Cloud for {benefit} at ~{cost}.`; without it, the first two lines only, ending with a
//! period: `Local execution hit a limit: {reason}. You can:\n(1) try {local}.`
//!
//! # Feedback and follow-up
//!
//! `dismissed` and `insist_same_tier` open the cloud step for the scope. The first
//! `accepted` of a local option (the choice, or the suggestion's local option when no choice
//! is given) starts a follow-up: the next 3 windows of the followed metric (run blocks for
//! latency and reliability, time windows for concurrency) or 30 minutes of record time,
//! whichever ends first. Then a `mitigation_outcome`: `resolved` (worst value after at or under
//! the limit, no new firing), `partial` (improved but not under), `no_effect`, or
//! `inconclusive` (nothing measured). Context and model fit follow firings over 30 minutes:
//! resolved when evaluated without firing, no_effect when it fired again.
//!
//! IDs are deterministic: `f-{input seq}-{category}` and `s-{input seq}-{category}`.

mod engine;
mod error;
mod follow_up;
mod ladder;
mod replay;
pub mod scenario;
mod state;
mod status;
mod suggest;
pub mod text;
mod thresholds;
mod tiers;
mod triggers;

pub use engine::Engine;
pub use ladder::{CLOUD_OPTION, CLOUD_STEP, local_label, local_steps, step_of_option};
pub use state::EngineState;
pub use triggers::{context_bucket, request_signature};
pub use error::ThresholdsError;
pub use replay::{ReplayDifference, ReplayReport, derive_all, derived_key, replay};
pub use status::{TriggerState, TriggerStatus};
pub use thresholds::{
    EMBEDDED_PINS, EMBEDDED_THRESHOLDS, Semver, Thresholds, defaults, fingerprint, validate,
};
pub use tiers::{CloudTier, CloudTiers, EMBEDDED_CLOUD_TIERS};
