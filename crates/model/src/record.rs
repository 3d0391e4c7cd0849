//! Records: what the log and the series store hold.
//!
//! Client-sent records (`Sample`, `Run`, the events, `Readiness`, `Feedback`) deny unknown
//! fields, so a misspelled field is a 400 naming it rather than a silently lost value. Each may
//! carry a client-chosen `id` (idempotency: a retried batch never stores a record twice) and a
//! `ts_ms`; the server stamps `ts_ms` when it is absent. Derived records are written by the
//! service itself.

use serde::{Deserialize, Serialize};

use crate::derived::{Firing, MitigationOutcome, Suggestion, Suppression};
use crate::profile::ProfileRecord;
use crate::signal::Signal;

#[cfg(feature = "schema")]
use schemars::JsonSchema;

/// One sampled value of one signal. Exactly one of `value` and `unavailable` is present: a
/// reading the probe could not take is recorded with its reason, never as 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// Client-chosen idempotency key (at most 256 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = crate::limits::MAX_ID_LEN), pattern(crate::limits::TEXT_PATTERN)))]
    pub id: Option<String>,
    /// Milliseconds since the Unix epoch; stamped by the server when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = crate::limits::MIN_TS_MS)))]
    pub ts_ms: Option<i64>,
    pub signal: Signal,
    /// The reading: finite and non-negative; whole for counts; at most 100 for percentages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 0.0)))]
    pub value: Option<f64>,
    /// Why no reading could be taken (for example "no NVIDIA GPU (driver not loaded)").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = crate::limits::MAX_ID_LEN), pattern(crate::limits::TEXT_PATTERN)))]
    pub unavailable: Option<String>,
    /// The GPU index a per-device reading came from; absent for host-wide readings and totals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = crate::limits::MAX_ID_LEN), pattern(crate::limits::TEXT_PATTERN)))]
    pub model_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = crate::limits::MAX_ID_LEN), pattern(crate::limits::TEXT_PATTERN)))]
    pub session_id: Option<String>,
}

/// Where a run executed. Cloud runs are recorded exactly like local ones: cloud execution is
/// never hidden.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Substrate {
    Local,
    Cloud,
}

/// Whether a stage of a run was deterministic code or model inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    Deterministic,
    Model,
}

/// One timed stage of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Stage {
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = crate::limits::MAX_ID_LEN), pattern(crate::limits::TEXT_PATTERN)))]
    pub name: String,
    pub kind: StageKind,
    #[cfg_attr(feature = "schema", schemars(range(min = 0.0)))]
    pub ms: f64,
}

/// One finished run. Raw prompts are never accepted: only `prompt_hash` (see
/// [`crate::prompt_hash`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Run {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = crate::limits::MAX_ID_LEN), pattern(crate::limits::TEXT_PATTERN)))]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = crate::limits::MIN_TS_MS)))]
    pub ts_ms: Option<i64>,
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = crate::limits::MAX_ID_LEN), pattern(crate::limits::TEXT_PATTERN)))]
    pub run_id: String,
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = crate::limits::MAX_ID_LEN), pattern(crate::limits::TEXT_PATTERN)))]
    pub session_id: String,
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = crate::limits::MAX_ID_LEN), pattern(crate::limits::TEXT_PATTERN)))]
    pub model_id: String,
    pub substrate: Substrate,
    /// SHA-256 of the normalized prompt, 64 lowercase hex digits.
    #[cfg_attr(
        feature = "schema",
        schemars(pattern(crate::limits::PROMPT_HASH_PATTERN))
    )]
    pub prompt_hash: String,
    pub context_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_out: Option<u64>,
    /// Must equal `tokens_in + tokens_out` when both are given; derived from them when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<u64>,
    #[cfg_attr(feature = "schema", schemars(range(min = 0.0)))]
    pub model_latency_ms: f64,
    /// At least `model_latency_ms`: the total includes the model's time.
    #[cfg_attr(feature = "schema", schemars(range(min = 0.0)))]
    pub total_latency_ms: f64,
    #[cfg_attr(feature = "schema", schemars(range(min = 0.0)))]
    pub deterministic_stage_ms: f64,
    #[cfg_attr(feature = "schema", schemars(range(min = 0.0)))]
    pub model_stage_ms: f64,
    pub validation_retry_count: u32,
    pub budget_breach_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 0.0)))]
    pub queue_wait_ms: Option<f64>,
    /// Prompt tokens the client sent; more than `tokens_in` means silent truncation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_sent: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(max = crate::limits::MAX_STAGES)))]
    pub stages: Option<Vec<Stage>>,
}

/// Whether a model load succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum LoadOutcome {
    Ok,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ModelLoad {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = crate::limits::MAX_ID_LEN), pattern(crate::limits::TEXT_PATTERN)))]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = crate::limits::MIN_TS_MS)))]
    pub ts_ms: Option<i64>,
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = crate::limits::MAX_ID_LEN), pattern(crate::limits::TEXT_PATTERN)))]
    pub model_id: String,
    #[cfg_attr(feature = "schema", schemars(range(min = 0.0)))]
    pub model_required_vram_mb: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 0.0)))]
    pub vram_reclaimable_mb_est: Option<f64>,
    pub outcome: LoadOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = crate::limits::MAX_ID_LEN), pattern(crate::limits::TEXT_PATTERN)))]
    pub quantization: Option<String>,
    /// Parameters, in billions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 0.0)))]
    pub params_b: Option<f64>,
    /// KV-cache bytes per context token, when the runtime knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 0.0)))]
    pub kv_cache_bytes_per_token: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = crate::limits::MAX_ID_LEN), pattern(crate::limits::TEXT_PATTERN)))]
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ContextRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = crate::limits::MAX_ID_LEN), pattern(crate::limits::TEXT_PATTERN)))]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = crate::limits::MIN_TS_MS)))]
    pub ts_ms: Option<i64>,
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = crate::limits::MAX_ID_LEN), pattern(crate::limits::TEXT_PATTERN)))]
    pub model_id: String,
    pub requested_context_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_supported_context_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = crate::limits::MAX_ID_LEN), pattern(crate::limits::TEXT_PATTERN)))]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schemars(pattern(crate::limits::PROMPT_HASH_PATTERN))
    )]
    pub prompt_hash: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ContextOom {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = crate::limits::MAX_ID_LEN), pattern(crate::limits::TEXT_PATTERN)))]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = crate::limits::MIN_TS_MS)))]
    pub ts_ms: Option<i64>,
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = crate::limits::MAX_ID_LEN), pattern(crate::limits::TEXT_PATTERN)))]
    pub model_id: String,
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = crate::limits::MAX_ID_LEN), pattern(crate::limits::TEXT_PATTERN)))]
    pub session_id: String,
}

/// `session_started` and `session_ended` carry the same fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SessionEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = crate::limits::MAX_ID_LEN), pattern(crate::limits::TEXT_PATTERN)))]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = crate::limits::MIN_TS_MS)))]
    pub ts_ms: Option<i64>,
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = crate::limits::MAX_ID_LEN), pattern(crate::limits::TEXT_PATTERN)))]
    pub session_id: String,
}

/// An item of `POST /v1/events`, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    ModelLoad(ModelLoad),
    ContextRequest(ContextRequest),
    ContextOom(ContextOom),
    SessionStarted(SessionEvent),
    SessionEnded(SessionEvent),
}

/// The KrakoBackend plugin's readiness report. Older than 10 minutes counts as unknown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Readiness {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = crate::limits::MIN_TS_MS)))]
    pub ts_ms: Option<i64>,
    pub plugin_installed: bool,
    pub network_available: bool,
    pub authenticated: bool,
    pub credits_available: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum FeedbackAction {
    Accepted,
    Dismissed,
}

/// The user's answer to a suggestion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = crate::limits::MIN_TS_MS)))]
    pub ts_ms: Option<i64>,
    /// Set by the server from the path of `POST /v1/suggestions/{id}/feedback`.
    #[serde(default)]
    pub suggestion_id: String,
    pub action: FeedbackAction,
    /// The option taken: a mitigation id or `cloud`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = crate::limits::MAX_ID_LEN), pattern(crate::limits::TEXT_PATTERN)))]
    pub choice: Option<String>,
    /// The user needs the same tier (same model, full context): the next step may be Krako Cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insist_same_tier: Option<bool>,
}

/// A closed window of one metric: a block of runs of one model, or a time window of a signal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct WindowRecord {
    pub ts_ms: i64,
    /// `runs` (a block of N runs of one model) or `time` (an epoch-aligned time window).
    pub window_kind: String,
    /// The metric, e.g. `model_latency_ms` or `queue_wait_ms`.
    pub metric: String,
    /// A model id, or `host` for machine-wide signals.
    pub scope: String,
    pub start_ms: i64,
    pub end_ms: i64,
    /// The seq range of the records the window was computed from, when they are in the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub p50: f64,
    pub p95: f64,
}

/// A change of the user's export consent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct ConsentRecord {
    pub ts_ms: i64,
    pub scope: String,
    pub enabled: bool,
    pub actor: String,
    /// The text the user was shown when deciding.
    pub shown: String,
    pub thresholds_version: String,
}

/// An export that left the machine (or was written to a file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct ExportRecord {
    pub ts_ms: i64,
    pub destination: String,
    /// SHA-256 of the exported bytes.
    pub digest: String,
    pub bytes: u64,
    /// The last log seq the export covered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of_seq: Option<u64>,
}

/// The engine's state after folding the log up to `up_to_seq`. Only logs written by builds
/// that kept the follower's checkpoints in the log hold this record; the service now keeps
/// its checkpoint in the store's `state` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct CheckpointRecord {
    pub ts_ms: i64,
    pub up_to_seq: u64,
    pub thresholds_version: String,
    /// The fingerprint of the thresholds the state was folded with: a restart resumes only
    /// from a checkpoint of the same fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds_fingerprint: Option<String>,
    /// The engine state, MessagePack-encoded.
    pub state: Vec<u8>,
}

/// Everything the log holds (raw samples live in the series store). The tag is `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Run(Run),
    ModelLoad(ModelLoad),
    ContextRequest(ContextRequest),
    ContextOom(ContextOom),
    SessionStarted(SessionEvent),
    SessionEnded(SessionEvent),
    Readiness(Readiness),
    Feedback(Feedback),
    Window(WindowRecord),
    Firing(Firing),
    Suggestion(Suggestion),
    Suppression(Suppression),
    MitigationOutcome(MitigationOutcome),
    Profile(ProfileRecord),
    Consent(ConsentRecord),
    Export(ExportRecord),
    Checkpoint(CheckpointRecord),
}

/// The kind of a log record, as a small stable number for the store's kind index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Run = 1,
    ModelLoad = 2,
    ContextRequest = 3,
    ContextOom = 4,
    SessionStarted = 5,
    SessionEnded = 6,
    Readiness = 7,
    Feedback = 8,
    Window = 9,
    Firing = 10,
    Suggestion = 11,
    Suppression = 12,
    Profile = 13,
    Consent = 14,
    Export = 15,
    Checkpoint = 16,
    MitigationOutcome = 17,
}

impl RecordKind {
    pub const ALL: [RecordKind; 17] = [
        RecordKind::Run,
        RecordKind::ModelLoad,
        RecordKind::ContextRequest,
        RecordKind::ContextOom,
        RecordKind::SessionStarted,
        RecordKind::SessionEnded,
        RecordKind::Readiness,
        RecordKind::Feedback,
        RecordKind::Window,
        RecordKind::Firing,
        RecordKind::Suggestion,
        RecordKind::Suppression,
        RecordKind::Profile,
        RecordKind::Consent,
        RecordKind::Export,
        RecordKind::Checkpoint,
        RecordKind::MitigationOutcome,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.code() == code)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Run => "run",
            RecordKind::ModelLoad => "model_load",
            RecordKind::ContextRequest => "context_request",
            RecordKind::ContextOom => "context_oom",
            RecordKind::SessionStarted => "session_started",
            RecordKind::SessionEnded => "session_ended",
            RecordKind::Readiness => "readiness",
            RecordKind::Feedback => "feedback",
            RecordKind::Window => "window",
            RecordKind::Firing => "firing",
            RecordKind::Suggestion => "suggestion",
            RecordKind::Suppression => "suppression",
            RecordKind::Profile => "profile",
            RecordKind::MitigationOutcome => "mitigation_outcome",
            RecordKind::Consent => "consent",
            RecordKind::Export => "export",
            RecordKind::Checkpoint => "checkpoint",
        }
    }

    pub fn parse(name: &str) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl From<Event> for Record {
    fn from(e: Event) -> Record {
        match e {
            Event::ModelLoad(x) => Record::ModelLoad(x),
            Event::ContextRequest(x) => Record::ContextRequest(x),
            Event::ContextOom(x) => Record::ContextOom(x),
            Event::SessionStarted(x) => Record::SessionStarted(x),
            Event::SessionEnded(x) => Record::SessionEnded(x),
        }
    }
}

impl Record {
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::Run(_) => RecordKind::Run,
            Record::ModelLoad(_) => RecordKind::ModelLoad,
            Record::ContextRequest(_) => RecordKind::ContextRequest,
            Record::ContextOom(_) => RecordKind::ContextOom,
            Record::SessionStarted(_) => RecordKind::SessionStarted,
            Record::SessionEnded(_) => RecordKind::SessionEnded,
            Record::Readiness(_) => RecordKind::Readiness,
            Record::Feedback(_) => RecordKind::Feedback,
            Record::Window(_) => RecordKind::Window,
            Record::Firing(_) => RecordKind::Firing,
            Record::Suggestion(_) => RecordKind::Suggestion,
            Record::Suppression(_) => RecordKind::Suppression,
            Record::MitigationOutcome(_) => RecordKind::MitigationOutcome,
            Record::Profile(_) => RecordKind::Profile,
            Record::Consent(_) => RecordKind::Consent,
            Record::Export(_) => RecordKind::Export,
            Record::Checkpoint(_) => RecordKind::Checkpoint,
        }
    }

    /// The record's time; `None` only for a client record the server has not stamped yet.
    pub fn ts_ms(&self) -> Option<i64> {
        match self {
            Record::Run(x) => x.ts_ms,
            Record::ModelLoad(x) => x.ts_ms,
            Record::ContextRequest(x) => x.ts_ms,
            Record::ContextOom(x) => x.ts_ms,
            Record::SessionStarted(x) | Record::SessionEnded(x) => x.ts_ms,
            Record::Readiness(x) => x.ts_ms,
            Record::Feedback(x) => x.ts_ms,
            Record::Window(x) => Some(x.ts_ms),
            Record::Firing(x) => Some(x.ts_ms),
            Record::Suggestion(x) => Some(x.ts_ms),
            Record::Suppression(x) => Some(x.ts_ms),
            Record::MitigationOutcome(x) => Some(x.ts_ms),
            Record::Profile(x) => Some(x.ts_ms),
            Record::Consent(x) => Some(x.ts_ms),
            Record::Export(x) => Some(x.ts_ms),
            Record::Checkpoint(x) => Some(x.ts_ms),
        }
    }

    /// Stamps `now_ms` on a client record that came without a time.
    pub fn stamp(&mut self, now_ms: i64) {
        let slot = match self {
            Record::Run(x) => &mut x.ts_ms,
            Record::ModelLoad(x) => &mut x.ts_ms,
            Record::ContextRequest(x) => &mut x.ts_ms,
            Record::ContextOom(x) => &mut x.ts_ms,
            Record::SessionStarted(x) | Record::SessionEnded(x) => &mut x.ts_ms,
            Record::Readiness(x) => &mut x.ts_ms,
            Record::Feedback(x) => &mut x.ts_ms,
            _ => return,
        };
        slot.get_or_insert(now_ms);
    }

    /// The client-chosen idempotency key, if any.
    pub fn client_id(&self) -> Option<&str> {
        match self {
            Record::Run(x) => x.id.as_deref(),
            Record::ModelLoad(x) => x.id.as_deref(),
            Record::ContextRequest(x) => x.id.as_deref(),
            Record::ContextOom(x) => x.id.as_deref(),
            Record::SessionStarted(x) | Record::SessionEnded(x) => x.id.as_deref(),
            _ => None,
        }
    }
}

impl Sample {
    /// A host-wide reading of `signal` at `ts_ms`, with no id, device, model or session.
    pub fn reading(signal: Signal, ts_ms: i64, value: f64) -> Sample {
        Sample {
            id: None,
            ts_ms: Some(ts_ms),
            signal,
            value: Some(value),
            unavailable: None,
            device: None,
            model_id: None,
            session_id: None,
        }
    }

    /// The name of the series this sample belongs to: the signal, then `@gpuN` for a per-device
    /// reading, then `/model_id` for a per-model one. Session ids never split series.
    pub fn series_key(&self) -> String {
        let mut key = self.signal.as_str().to_owned();
        if let Some(d) = self.device {
            key.push_str("@gpu");
            key.push_str(&d.to_string());
        }
        if let Some(m) = &self.model_id {
            key.push('/');
            key.push_str(m);
        }
        key
    }

    /// The signal, device and model a [`Sample::series_key`] names; `None` when it names none.
    pub fn parse_series_key(key: &str) -> Option<(Signal, Option<u32>, Option<String>)> {
        let (head, model_id) = match key.split_once('/') {
            Some((head, model)) => (head, Some(model.to_owned())),
            None => (key, None),
        };
        let (signal, device) = match head.split_once("@gpu") {
            Some((signal, device)) => (signal, Some(device.parse().ok()?)),
            None => (head, None),
        };
        Some((Signal::parse(signal)?, device, model_id))
    }
}

/// A record as the log holds it: its server-assigned `seq` and the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct LogEntry {
    pub seq: u64,
    #[serde(flatten)]
    pub record: Record,
}

/// A sample as the series store holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct StoredSample {
    pub seq: u64,
    /// True when the sample arrived after its series' last closed window: it never changes one.
    #[serde(default)]
    pub late: bool,
    #[serde(flatten)]
    pub sample: Sample,
}
