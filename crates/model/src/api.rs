//! The HTTP contract: request and response bodies shared by the server, the CLI and the tests.

use serde::{Deserialize, Serialize};

use crate::record::{Event, LogEntry, Run, Sample};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

mod error_code;
mod privacy;
mod views;

pub use error_code::ErrorCode;
pub use privacy::*;
pub use views::*;

/// The most items one ingest batch may hold.
pub const MAX_BATCH_ITEMS: usize = 10_000;
/// The largest request body the service buffers (bytes).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// The most log entries one `GET /v1/log` returns.
pub const MAX_LOG_PAGE: usize = 1_000;

/// `POST /v1/samples`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SampleBatch {
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = MAX_BATCH_ITEMS)))]
    pub samples: Vec<Sample>,
}

/// `POST /v1/runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RunBatch {
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = MAX_BATCH_ITEMS)))]
    pub runs: Vec<Run>,
}

/// `POST /v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = MAX_BATCH_ITEMS)))]
    pub events: Vec<Event>,
}

/// The answer to an ingest batch, sent only once the batch is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct IngestAck {
    /// Records newly stored.
    pub accepted: u64,
    /// Records whose `id` was already stored with the same content (a retried batch).
    pub duplicates: u64,
    /// The seq of the first and last newly stored record; absent when nothing new was stored.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
}

/// Every error the API answers with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct ApiError {
    /// A stable machine-readable code, e.g. `invalid_record`.
    pub error: String,
    /// What went wrong, in words.
    pub message: String,
    /// The offending field, as a path such as `samples[3].value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct Health {
    /// `ok`, or `degraded` when the last write failed (see `problem`).
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The last write failure since start and when it happened, kept after recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_problem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_problem_ms: Option<i64>,
    pub version: String,
    pub store_format_version: u64,
    pub data_dir: String,
    pub uptime_s: u64,
    pub log_records: u64,
    pub samples: u64,
    pub series: u64,
    /// The newest seq assigned; absent for an empty store.
    pub last_seq: Option<u64>,
}

/// The query of `GET /v1/log`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// Only records with a seq below this: the previous page's `next_before`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    /// How many records, newest first (1 to 1000, default 50).
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 1000)))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Only records of this kind.
    #[cfg_attr(feature = "schema", schemars(with = "Option<crate::RecordKind>"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Only runs that executed there (`kind` is then `run`, given or not).
    #[cfg_attr(feature = "schema", schemars(with = "Option<crate::Substrate>"))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub substrate: Option<String>,
}

/// `GET /v1/log`: log entries, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct LogPage {
    pub entries: Vec<LogEntry>,
    /// Pass as `before` to get the next (older) page; absent on the last page.
    pub next_before: Option<u64>,
}

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
    pub category: crate::Category,
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
