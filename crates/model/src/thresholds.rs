//! The versioned thresholds file (`schema/thresholds.json`, specification Section 10).
//!
//! One file holds every threshold, trigger definition constant and cooldown rule, under a
//! semver `version`. The policy crate validates it and pins its content fingerprint per
//! version; this module only defines its shape (unknown fields are refused).

use serde::{Deserialize, Serialize};

use crate::profile::ProfileConstants;

#[cfg(feature = "schema")]
use schemars::JsonSchema;

/// The whole thresholds file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ThresholdsFile {
    /// Semver `MAJOR.MINOR.PATCH`; a change of any value needs a MINOR bump.
    pub version: String,
    pub windows: WindowThresholds,
    pub model_fit: ModelFitThresholds,
    pub context: ContextThresholds,
    pub latency: LatencyThresholds,
    pub concurrency: ConcurrencyThresholds,
    pub reliability: ReliabilityThresholds,
    pub suggestions: SuggestionThresholds,
    pub follow_up: FollowUpThresholds,
    /// Constants of the LocalCapabilityProfile formulas.
    pub profile: ProfileConstants,
}

/// Window sizes (DESIGN.md section 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct WindowThresholds {
    /// N: runs per run block (and the "last N runs" of the reliability trigger).
    pub runs_per_block: u32,
    /// W_SECONDS: length of an epoch-aligned time window.
    pub window_seconds: u32,
    /// How long after its end a time window waits for stragglers before it closes.
    pub grace_seconds: u32,
    /// Two run blocks are consecutive only when the second starts at most this long after the
    /// first ended: a streak never joins blocks a day apart. (Time windows are consecutive
    /// only when adjacent.)
    pub max_streak_gap_minutes: u32,
}

/// Model fit (Section 4.1). The VRAM conditions have no tunable number; the failure count does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ModelFitThresholds {
    /// Fires when a model's failed loads reach this count (`model_load_failure_count >= 1`).
    pub load_failures: u32,
    /// The free VRAM a load is compared with is the most free in the VRAM windows that ended
    /// within this many minutes before the load (a reading the load itself lowered is not
    /// "before the load").
    pub free_lookback_minutes: u32,
}

/// Context window (Section 4.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ContextThresholds {
    /// Whether a run with `prompt_tokens_sent > tokens_in` (silent truncation) fires.
    pub truncation_fires: bool,
}

/// Latency (Section 4.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct LatencyThresholds {
    /// LAT_P95_LIMIT_MS.
    pub lat_p95_limit_ms: f64,
    /// TOTAL_P95_LIMIT_MS.
    pub total_p95_limit_ms: f64,
    /// W: consecutive breaching run blocks of one model.
    pub sustain_blocks: u32,
}

/// Concurrency (Section 4.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyThresholds {
    /// QUEUE_WAIT_LIMIT_MS, compared with a time window's p95 of `queue_wait_ms`.
    pub queue_wait_limit_ms: f64,
    /// Consecutive breaching time windows.
    pub sustain_windows: u32,
}

/// Reliability (Section 4.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ReliabilityThresholds {
    /// RETRY_P95_LIMIT.
    pub retry_p95_limit: f64,
    /// Fires when a run in the last N has more budget breaches than this (0).
    pub budget_breach_limit: f64,
}

/// Anti-spam rules and the readiness check (Sections 5.1, 7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SuggestionThresholds {
    /// A category suggests at most once per this many minutes of record time.
    pub category_cooldown_minutes: u32,
    /// A request signature suggests at most this many times per session.
    pub signature_per_session: u32,
    /// A readiness report older than this counts as unknown (not ready).
    pub readiness_max_age_minutes: u32,
    /// Requests without a session id share one implicit session that ends after this many
    /// minutes without such a request, so "once per session" ends for them too.
    pub sessionless_idle_minutes: u32,
}

/// How long an accepted local mitigation is followed before its outcome is recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FollowUpThresholds {
    /// Windows (run blocks or time windows) observed after the acceptance.
    pub windows: u32,
    /// Or this many minutes of record time, whichever comes first.
    pub minutes: u32,
}
