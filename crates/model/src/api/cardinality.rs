//! The cardinality limits: how many distinct models, series and open sessions the service
//! keeps, how close it is to each, and the last batch refused for crossing one.
//!
//! A buggy client (a model id with a hash or a UUID in it, a series per request) would
//! otherwise make the service keep state for every name it ever sent. The defaults are far
//! above what one machine's runtime sends (tens of models, tens of series); settings raise
//! them (`max_models`, `max_series`, `max_open_sessions`).

use serde::{Deserialize, Serialize};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

/// The default limit on distinct model ids (runs, events and samples together): a machine
/// runs tens of models in a year, quantizations included.
pub const DEFAULT_MAX_MODELS: u64 = 1_000;
/// The default limit on distinct sample series: the probe's dozen plus a few per GPU and per
/// model, a few hundred at most. 4,000 keeps the service under 64 MiB of RSS with every limit
/// full (each series costs about 4.5 KiB, each model about 20 KiB: `benches/hostile.rs`).
pub const DEFAULT_MAX_SERIES: u64 = 4_000;
/// The default limit on sessions open at once (`session_started` without its
/// `session_ended`, active within [`SESSION_IDLE_MS`]): a machine serves a few dozen
/// concurrent sessions at most.
pub const DEFAULT_MAX_OPEN_SESSIONS: u64 = 1_000;
/// How long a session may go without a record naming it (its `session_started`, a run, a
/// `context_oom`) before it counts as ended: 24 hours of record time, the newest `ts_ms` of
/// the runs and events stored (never the wall clock, so the same log always gives the same
/// count). A runtime that crashed never sends its `session_ended`; without this its sessions
/// would stay open for ever and fill `max_open_sessions`. The policy engine ends a session at
/// the same horizon (its request signatures are forgotten, as at a `session_ended`).
pub const SESSION_IDLE_MS: i64 = 24 * 3_600_000;
/// How long the limits keep the id of a session that was never ended: 7 days of record time
/// without a record naming it (the horizon at which the engine retires the state of an idle
/// model or scope). Until then a run naming it counts it as open again; after it the id is
/// forgotten and such a run changes nothing, so a client that starts sessions and never ends
/// them holds at most 7 days of them in memory, not every one since the store began.
pub const SESSION_FORGET_MS: i64 = 7 * 24 * 3_600_000;
/// The default of the most items one page of a scope view (`GET /v1/triggers`, the list of
/// `GET /v1/series`) may hold: `?limit=` may ask for fewer, never more.
pub const DEFAULT_MAX_VIEW_SCOPES: usize = 1_000;
/// The page size of a scope view when `?limit=` is absent (or the most, when that is lower).
pub const DEFAULT_VIEW_PAGE: usize = 500;

/// A limit on how many distinct names the service keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum LimitName {
    /// Distinct `model_id`s of runs, events and samples (setting `max_models`).
    Models,
    /// Distinct sample series (signal, device and model: `GET /v1/series`; setting
    /// `max_series`).
    Series,
    /// Sessions open now: a `session_started` whose `session_ended` has not come, named by a
    /// record within the last [`SESSION_IDLE_MS`] of record time (setting
    /// `max_open_sessions`).
    OpenSessions,
}

impl LimitName {
    /// Every limit, in the order health and `/metrics` list them.
    pub const ALL: [LimitName; 3] = [
        LimitName::Models,
        LimitName::Series,
        LimitName::OpenSessions,
    ];

    /// The name as the API writes it (`models`, `series`, `open_sessions`).
    pub const fn as_str(self) -> &'static str {
        match self {
            LimitName::Models => "models",
            LimitName::Series => "series",
            LimitName::OpenSessions => "open_sessions",
        }
    }

    /// The setting that raises it.
    pub const fn setting(self) -> &'static str {
        match self {
            LimitName::Models => "max_models",
            LimitName::Series => "max_series",
            LimitName::OpenSessions => "max_open_sessions",
        }
    }
}

impl std::fmt::Display for LimitName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One limit and how close the service is to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct LimitStatus {
    pub name: LimitName,
    /// The most the service takes.
    pub limit: u64,
    /// How many it holds now. It may exceed `limit` only when the limit was lowered after
    /// they were stored (nothing stored is ever dropped), or by the service's own probe series.
    pub count: u64,
    /// Batches refused for crossing it since the service started (in a refusal: with that
    /// one).
    #[serde(default)]
    pub refused_batches: u64,
}

/// The last batch refused for crossing a limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct LimitHit {
    pub name: LimitName,
    pub limit: u64,
    /// The count when the batch was refused (its records were not stored).
    pub count: u64,
    /// The item that would have crossed it, e.g. `runs[997].model_id`.
    pub field: String,
    /// When it was refused, by the service's clock.
    pub ts_ms: i64,
}
