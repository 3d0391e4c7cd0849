//! The HTTP contract: request and response bodies shared by the server, the CLI and the tests.

use serde::{Deserialize, Serialize};

use crate::record::{Event, LogEntry, Run, Sample};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

mod cardinality;
mod decisions;
mod error_code;
mod privacy;
mod views;

pub use cardinality::*;
pub use decisions::*;
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
    /// With `?wait=decisions` only: the decisions the batch's records caused, in seq order
    /// (for samples, those of the time windows they closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decisions: Option<Vec<Decision>>,
    /// With `?wait=decisions` only: `false` when `timeout_ms` passed before the engine had
    /// folded the whole batch (`decisions` then lists those made so far).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decisions_complete: Option<bool>,
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
    /// With `limit_exceeded` only: the limit the batch would have crossed and the count now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<LimitStatus>,
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
    /// Each cardinality limit, its count now and how close that is.
    #[serde(default)]
    pub limits: Vec<LimitStatus>,
    /// The last batch refused for crossing a limit since the service started, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_limit_hit: Option<LimitHit>,
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
