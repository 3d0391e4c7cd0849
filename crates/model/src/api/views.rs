//! The views of the derived state: the fit check's query, suggestions, windows and series.

use serde::{Deserialize, Serialize};

use crate::derived::{Firing, MitigationOutcome, Suggestion, Suppression};
use crate::record::{Feedback, WindowRecord};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

/// The query of `GET /v1/fit`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FitQuery {
    /// MB of VRAM the model needs (a finite number >= 0).
    #[cfg_attr(feature = "schema", schemars(required, range(min = 0)))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_required_vram_mb: Option<f64>,
    /// The context the model would be loaded with, in tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_tokens: Option<u64>,
}

/// The query of `GET /v1/triggers`: one page of the trigger states, in category then scope
/// order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TriggersQuery {
    /// How many states (1 to the service's `max_view_scopes`, 1000 by default; default 500, or
    /// the most when that is lower).
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Only states after this one: the previous page's `next_after` (`category/scope`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Only this trigger category.
    #[cfg_attr(feature = "schema", schemars(with = "Option<crate::Category>"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Only this scope (a model id, `host`, or `*`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// The query of `GET /v1/suggestions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SuggestionsQuery {
    /// How many suggestions, newest first (1 to 1000, default 50).
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 1000)))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Only this trigger category.
    #[cfg_attr(feature = "schema", schemars(with = "Option<crate::Category>"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Only this scope (a model id, or `host`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// A suggestion with the firing it answers, the feedback it got and the outcome of an accepted
/// mitigation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct SuggestionView {
    pub seq: u64,
    pub suggestion: Suggestion,
    /// The four steps of the mitigation ladder, named as they apply to this suggestion's
    /// category: a step the suggestion offers is named by the option it offers (for
    /// reliability, step 1 is `stronger_local_model`, never "a smaller or quantized model").
    pub ladder: Vec<LadderStep>,
    /// The firing it answers, when it is among the recent ones.
    pub firing: Option<Firing>,
    pub feedback: Vec<Feedback>,
    pub outcome: Option<MitigationOutcome>,
}

/// One step of the mitigation ladder, as it applies to one suggestion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct LadderStep {
    /// 1 to 4 (4 is Krako Cloud).
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 4)))]
    pub step: u8,
    /// The option that stands for this step here: the one the suggestion offers at this step,
    /// else the category's own option for it, else the specification's generic one
    /// (`smaller_model`, `deterministic_filtering`, `lower_context`, `cloud`).
    pub option_id: String,
    /// What the step asks the user to try, in the words of the suggestion's message.
    pub label: String,
    /// Whether the category's ladder has this step (Krako Cloud: always).
    pub applies: bool,
    /// Whether this suggestion offers an option at this step.
    pub offered: bool,
}

/// A candidate suggestion held back by a cooldown rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct SuppressionView {
    pub seq: u64,
    pub suppression: Suppression,
}

/// The answer of `GET /v1/suggestions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct SuggestionsView {
    /// Newest first.
    pub suggestions: Vec<SuggestionView>,
    /// The 200 most recent suppressions, newest first.
    pub suppressions: Vec<SuppressionView>,
}

/// The query of `GET /v1/windows`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct WindowsQuery {
    /// Only this metric, e.g. `model_latency_ms` or `cpu_load_pct`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Only this scope (a model id, `host`, or a series key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// `time` (60 s windows of a series) or `runs` (blocks of 10 runs of a model).
    #[cfg_attr(feature = "schema", schemars(extend("enum" = ["time", "runs"])))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// How many windows, newest first (1 to 1000, default 100).
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 1000)))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// A closed window and its seq.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct WindowView {
    pub seq: u64,
    pub window: WindowRecord,
}

/// The answer of `GET /v1/windows`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct WindowsView {
    /// Newest first.
    pub windows: Vec<WindowView>,
}

/// The query of `GET /v1/series`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SeriesQuery {
    /// The series key (from the list this endpoint answers without it), e.g. `cpu_load_pct`
    /// or `gpu_vram_free_mb@gpu0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<String>,
    /// The range start (ms); default: one hour before `to_ms`. Before `to_ms`, at most 31 days
    /// earlier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<i64>,
    /// The range end (ms, exclusive); default: now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<i64>,
    /// The most buckets (1 to 2000, default 200).
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 2000)))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub points: Option<usize>,
    /// Without `series`: how many keys (1 to the service's `max_view_scopes`, 1000 by default;
    /// default 500, or the most when that is lower).
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Without `series`: only keys after this one, the previous page's `next_after`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// The answer of `GET /v1/series` without `series`: one page of the series keys, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct SeriesList {
    pub series: Vec<String>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default)]
    pub next_after: Option<String>,
}

/// One bucket of a downsampled series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct SeriesPoint {
    /// The bucket's start (ms).
    pub t: i64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Readings in the bucket.
    pub n: u64,
}

/// The answer of `GET /v1/series?series=...`: one series, downsampled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct SeriesData {
    pub series: String,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Buckets with at least one reading, oldest first.
    pub points: Vec<SeriesPoint>,
    /// Readings in the range that could not be taken (never drawn as 0).
    pub unavailable_samples: u64,
}

/// The answer of `GET /v1/series`: the list of series, or one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(untagged)]
pub enum SeriesView {
    List(SeriesList),
    Data(SeriesData),
}
