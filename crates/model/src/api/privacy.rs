//! Product metrics (Section 8) and their range, consent and opt-in export: what
//! `/v1/metrics/product`, `/v1/consent`, `/v1/export/preview` and `/v1/export` take and answer.

use serde::{Deserialize, Serialize};

use crate::derived::Category;
use crate::record::{ConsentRecord, ExportRecord};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

/// A rate with the counts behind it; `value` is absent ("none yet") when nothing was counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct Rate {
    pub value: Option<f64>,
    pub numerator: u64,
    pub denominator: u64,
}

impl Rate {
    pub fn of(numerator: u64, denominator: u64) -> Rate {
        Rate {
            value: (denominator > 0).then(|| numerator as f64 / denominator as f64),
            numerator,
            denominator,
        }
    }
}

/// Firings of one category in a range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct CategoryCount {
    pub category: Category,
    pub firings: u64,
}

/// The product metrics of the specification's Section 8, over a range of record time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct ProductMetrics {
    /// `24h`, `7d`, `all` or `custom`.
    pub range: String,
    /// Inclusive start and exclusive end (ms); `all` spans the whole log.
    pub from_ms: i64,
    pub to_ms: i64,
    /// Suggestions shown in the range.
    pub upgrade_suggestion_count: u64,
    /// Of those, how many offered Krako Cloud.
    pub cloud_offer_count: u64,
    /// Suggestions whose first answer was `accepted`, over suggestions shown.
    pub suggestion_accept_rate: Rate,
    /// Suggestions whose first answer was `dismissed`, over suggestions shown.
    pub suggestion_dismiss_rate: Rate,
    /// Firings per category, most first (ties in the specification's order).
    pub top_trigger_categories: Vec<CategoryCount>,
    /// Accepted local mitigations whose follow-up ended `resolved` (the category did not fire
    /// again for the scope within the follow-up), over those whose follow-up measured
    /// something (`inconclusive` outcomes are left out).
    pub local_mitigation_success_rate: Rate,
    /// Firings in the range.
    pub firing_count: u64,
    /// Suggestions held back by a cooldown rule in the range.
    pub suppression_count: u64,
    /// Runs in the range that executed on Krako Cloud (`substrate: cloud`). They are no
    /// evidence of a local limit, and they are counted and shown so that cloud execution is
    /// never hidden (specification Section 9). An aggregate: export bundles carry it.
    #[serde(default)]
    pub cloud_run_count: u64,
    /// The `total_tokens` of those runs, summed; a run that reported no token counts adds
    /// nothing here and is counted in `cloud_runs_without_tokens`.
    #[serde(default)]
    pub cloud_run_tokens: u64,
    /// Cloud runs in the range that reported no token counts.
    #[serde(default)]
    pub cloud_runs_without_tokens: u64,
    /// The cloud runs per model, most runs first (ties by model id), at most 50 models
    /// (`MAX_CLOUD_MODELS`; `cloud_run_count` counts them all). Local only: export bundles
    /// leave it out, as model ids are names the user chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_runs_by_model: Option<Vec<ModelCloudRuns>>,
}

/// The most models `cloud_runs_by_model` lists.
pub const MAX_CLOUD_MODELS: usize = 50;

/// The cloud runs of one model in a range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct ModelCloudRuns {
    pub model_id: String,
    pub runs: u64,
    /// Their `total_tokens`, summed (runs without token counts add nothing).
    pub tokens: u64,
    /// Of `runs`, those that reported no token counts.
    pub runs_without_tokens: u64,
}

/// The query of `GET /v1/metrics/product`: `range`, or `from_ms`/`to_ms`, not both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RangeQuery {
    /// `24h` (the default), `7d` or `all`, relative to the server's clock.
    #[cfg_attr(feature = "schema", schemars(extend("enum" = ["24h", "7d", "all"])))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
    /// A custom range's start (ms, inclusive); default 2000-01-01.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<i64>,
    /// A custom range's end (ms, exclusive); default now. After `from_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<i64>,
}

/// The consent state and its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct ConsentState {
    pub scope: String,
    pub export_enabled: bool,
    /// The record that set the current state; absent while export was never turned on or off.
    pub since: Option<ConsentRecord>,
    pub history: Vec<ConsentRecord>,
    /// What the user is shown when deciding.
    pub text: String,
}

/// The body of `PUT /v1/consent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ConsentChange {
    /// Export on (`true`) or off.
    pub enabled: bool,
    /// Must be `product_metrics` when given.
    #[cfg_attr(feature = "schema", schemars(extend("enum" = ["product_metrics", null])))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Who decided (e.g. `cli`, a user name): 1 to 64 printable characters; defaults to `api`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// An export bundle: aggregates only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct Bundle {
    pub format: String,
    pub scope: String,
    pub thresholds_version: String,
    /// The last log seq and record time the bundle covers.
    pub as_of_seq: u64,
    pub as_of_ms: i64,
    /// The 7 days up to `as_of_ms`, and everything.
    pub last_7d: ProductMetrics,
    pub all: ProductMetrics,
}

/// What changed since the last export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct ChangedSinceLastExport {
    /// The last `export` record; `null` when nothing was exported yet.
    pub last_export: Option<ExportRecord>,
    /// `nothing was exported yet`, when nothing was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Whether an export now would send the same bytes as the last one (equal digests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_as_last: Option<bool>,
    /// Whether the log has records the last export did not cover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_advanced_since: Option<bool>,
}

/// The answer of `GET /v1/export/preview`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct ExportPreview {
    pub export_enabled: bool,
    /// SHA-256 of `bytes`.
    pub sha256: String,
    /// Exactly what an export would send now.
    pub bytes: String,
    /// `bytes`, parsed.
    pub bundle: Bundle,
    pub changed_since_last_export: ChangedSinceLastExport,
}

/// The body of `POST /v1/export`, tagged by `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields, tag = "to", rename_all = "snake_case")]
pub enum ExportRequest {
    /// Writes the bundle to a new file (an absolute path; an existing file is never replaced).
    File { path: String },
    /// Pushes the bundle as OTLP/HTTP metrics (protobuf) to a collector.
    Otlp {
        endpoint: String,
        /// Send nothing, record nothing: answer what would be sent.
        #[serde(default)]
        dry_run: bool,
    },
}

/// One aggregate an OTLP export sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct OtlpMetric {
    pub name: String,
    /// `range` (`7d` or `all`), and `category` for `kora.trigger_firings`.
    pub attributes: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// What an OTLP export would send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct WouldSend {
    pub endpoint: String,
    /// `application/x-protobuf`.
    pub content_type: String,
    /// The size of the protobuf payload.
    pub bytes: u64,
    pub metrics: Vec<OtlpMetric>,
}

/// The answer of `POST /v1/export` with `dry_run: true`: nothing was sent or recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct ExportDryRun {
    /// Always `true`.
    pub dry_run: bool,
    /// Always `false`.
    pub sent: bool,
    pub would_send: WouldSend,
    pub bundle: Bundle,
}

/// The answer of `POST /v1/export` after the export left (and was recorded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct Exported {
    /// Always `true`.
    pub exported: bool,
    /// `file:PATH` or `otlp:URL`.
    pub destination: String,
    /// SHA-256 of the exported bytes.
    pub sha256: String,
    /// The size of the exported bundle.
    pub bytes: u64,
}

/// The answer of `POST /v1/export`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(untagged)]
pub enum ExportOutcome {
    Exported(Exported),
    DryRun(Box<ExportDryRun>),
}
