//! Records the policy engine derives: firings, suggestions and suppressions.
//!
//! They are data, written to the log by the server, so that every decision can be audited
//! and replayed: a suggestion names the firing it answers, a firing carries its evidence.

use serde::{Deserialize, Serialize};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

/// One measured fact behind a firing: which signal, what it measured, against what limit, and
/// which records it was computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct Evidence {
    /// The signal or condition, e.g. `model_latency_ms_p95` or `model_required_vram_mb`.
    pub signal: String,
    pub value: f64,
    /// The limit it was compared with (the fired condition is `value > threshold`).
    pub threshold: f64,
    /// What the comparison means, in words (e.g. "p95 over 10 runs").
    pub detail: String,
    /// The seq range of the records the value was computed from.
    pub first_seq: u64,
    pub last_seq: u64,
    /// The time span covered.
    pub start_ms: i64,
    pub end_ms: i64,
}

/// A trigger category that fired, with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct Firing {
    pub ts_ms: i64,
    pub firing_id: String,
    pub category: Category,
    /// A model id, or `host` for machine-wide categories.
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The request signature (Section 5.1), when the firing came from one request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The reason, in words, as the message shows it.
    pub reason: String,
    pub evidence: Vec<Evidence>,
    /// Consecutive breaching windows that made it fire (k of W), for sustained categories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sustained: Option<u32>,
    pub thresholds_version: String,
    /// The fingerprint of the thresholds content in force (absent in records written before
    /// store records carried it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds_fingerprint: Option<String>,
}

/// Whether an option runs locally or on Krako Cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum OptionKind {
    Local,
    Cloud,
}

/// One option a suggestion offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct SuggestionOption {
    /// `smaller_model`, `deterministic_filtering`, `lower_context`, `stronger_local_model`
    /// or `cloud`.
    pub id: String,
    pub kind: OptionKind,
    pub label: String,
    /// Cloud only: the reason, the predicted improvement and the predicted cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<CloudEstimate>,
    /// Cloud only: whether the action can be taken now; when not, `to_do_first` says what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_ready: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_do_first: Vec<String>,
}

/// A Krako Cloud estimate, computed from the user's own telemetry and the cloud tier table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct CloudEstimate {
    pub tier: String,
    pub reason: String,
    pub predicted_improvement: String,
    pub predicted_cost: String,
    /// Estimated cost of one run like the observed ones, in USD.
    pub cost_per_run_usd: f64,
    /// The assumptions the figures rest on.
    pub assumptions: String,
    pub tier_table_version: String,
    /// The measured local figure and the predicted cloud figure of the same statistic; absent
    /// when nothing comparable was measured here (a model that cannot load has no local time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<EstimateComparison>,
    /// The largest context the tier serves (tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier_max_context_tokens: Option<u64>,
    /// The most sessions the tier serves at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier_max_concurrent_sessions: Option<u32>,
}

/// One statistic measured here and predicted on the tier. A cloud option is offered only when
/// the predicted figure is better than the measured one (`predicted_cloud < measured_local`
/// when `lower_is_better`, `>` otherwise).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct EstimateComparison {
    /// For example `model_latency_ms_p95`, `queue_wait_ms_p95` or `context_tokens`.
    pub statistic: String,
    /// `ms`, `tokens` or `sessions`.
    pub unit: String,
    pub measured_local: f64,
    pub predicted_cloud: f64,
    pub lower_is_better: bool,
    /// `predicted_cloud / measured_local` (0 when nothing was measured).
    pub ratio: f64,
}

/// A suggestion shown to the user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct Suggestion {
    pub ts_ms: i64,
    pub suggestion_id: String,
    pub firing_id: String,
    pub category: Category,
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The ladder step offered: 1 the choice of local model (`smaller_model`, or
    /// `stronger_local_model` for reliability), 2 deterministic filtering, 3 lower context,
    /// 4 Krako Cloud. The options say which; the step number alone does not.
    pub ladder_step: u8,
    pub options: Vec<SuggestionOption>,
    /// The message, in the specification's template.
    pub message: String,
    /// Why no Krako Cloud option is offered although the ladder reached it (the predicted
    /// figure is not better than the measured one, or the tier cannot serve the request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_withheld: Option<String>,
    /// The suggestion whose "insist on the same tier" this one answers, with the Krako Cloud
    /// option at once (spec 4.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_answer_to: Option<String>,
    pub thresholds_version: String,
    /// The fingerprint of the thresholds content in force (absent in records written before
    /// store records carried it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds_fingerprint: Option<String>,
}

/// Which anti-spam rule held a candidate suggestion back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum SuppressionRule {
    /// The category suggested less than the cooldown ago.
    CategoryCooldown,
    /// The request signature already produced a suggestion in this session.
    SignatureOncePerSession,
}

/// A candidate suggestion that was held back, and when it may show again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct Suppression {
    pub ts_ms: i64,
    pub firing_id: String,
    pub category: Category,
    pub scope: String,
    pub rule: SuppressionRule,
    /// When the category is eligible again (cooldown); absent for the session rule, which
    /// ends with the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eligible_at_ms: Option<i64>,
    pub thresholds_version: String,
    /// The fingerprint of the thresholds content in force (absent in records written before
    /// store records carried it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds_fingerprint: Option<String>,
}

/// How an accepted local mitigation worked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum MitigationEffect {
    /// The category did not fire again for the followed scope during the observation period,
    /// and at least one window (or evaluation) was observed there.
    Resolved,
    /// It fired again, but the followed metric improved.
    Partial,
    NoEffect,
    /// Nothing was measured for the scope during the observation period, so no verdict.
    Inconclusive,
}

/// The follow-up of an accepted local mitigation, recorded when its observation period ends
/// (3 windows or 30 minutes of record time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct MitigationOutcome {
    pub ts_ms: i64,
    pub suggestion_id: String,
    pub category: Category,
    pub scope: String,
    /// The mitigation taken (an option id).
    pub choice: String,
    /// The model followed when the user switched models after accepting (`smaller_model`,
    /// `stronger_local_model`): the new model of the same session, or the next one loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub followed_scope: Option<String>,
    pub effect: MitigationEffect,
    /// The metric followed, e.g. `model_latency_ms_p95`.
    pub metric: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_before: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_after: Option<f64>,
    pub thresholds_version: String,
    /// The fingerprint of the thresholds content in force (absent in records written before
    /// store records carried it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds_fingerprint: Option<String>,
}

/// The five trigger categories of the specification (Section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Category {
    ModelFit,
    Context,
    Latency,
    Concurrency,
    Reliability,
}

impl Category {
    pub const ALL: [Category; 5] = [
        Category::ModelFit,
        Category::Context,
        Category::Latency,
        Category::Concurrency,
        Category::Reliability,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::ModelFit => "model_fit",
            Category::Context => "context",
            Category::Latency => "latency",
            Category::Concurrency => "concurrency",
            Category::Reliability => "reliability",
        }
    }
}
