//! Read-your-writes and the push stream: `?wait=decisions` on the ingest endpoints, the
//! decisions it answers with, and the query of `GET /v1/stream`.

use serde::{Deserialize, Serialize};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

/// The longest an ingest request may wait for its decisions (`timeout_ms`).
pub const MAX_WAIT_MS: u64 = 10_000;
/// How long an ingest request waits for its decisions when it gives no `timeout_ms`.
pub const DEFAULT_WAIT_MS: u64 = 2_000;

/// The form of a stream event id (`GET /v1/stream`): a log seq, or for a `resolved` event a
/// log seq, a dot and the event's rank among the resolutions at that seq (`1234.1`).
pub const EVENT_ID_PATTERN: &str = r"^[0-9]{1,19}(\.[1-9][0-9]{0,8})?$";

/// What an ingest request waits for before it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum WaitFor {
    /// Until the engine has folded the batch's records and the decisions they caused are
    /// durable in the log.
    Decisions,
}

/// The query of `POST /v1/samples`, `/v1/runs` and `/v1/events`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct IngestQuery {
    /// `decisions`: answer only once the engine has folded the batch (or `timeout_ms` has
    /// passed), with the ids of the decisions it caused. Without it the answer comes as soon
    /// as the batch is durable, and has no `decisions`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitFor>,
    /// The longest to wait, in milliseconds (0 to 10000, default 2000); only with `wait`.
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = MAX_WAIT_MS)))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// The kind of a decision the engine made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Firing,
    /// A firing trigger stopped firing (no log record of its own: see `seq`).
    Resolved,
    Suggestion,
    Suppression,
    MitigationOutcome,
}

impl DecisionKind {
    /// The name as the stream's `event:` field and the log's `kind` spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Firing => "firing",
            DecisionKind::Resolved => "resolved",
            DecisionKind::Suggestion => "suggestion",
            DecisionKind::Suppression => "suppression",
            DecisionKind::MitigationOutcome => "mitigation_outcome",
        }
    }
}

/// One decision a batch caused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct Decision {
    /// The decision's log seq (`GET /v1/log`); for `resolved`, the seq of the batch's record
    /// whose evaluation resolved the trigger.
    pub seq: u64,
    pub kind: DecisionKind,
    /// The id it is known by: the `firing_id` of a firing, a suppression and a resolved
    /// trigger (the firing it ends), the `suggestion_id` of a suggestion and of a mitigation
    /// outcome.
    pub id: String,
}

/// The query of `GET /v1/stream`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Resume after this event id, as the `Last-Event-ID` header does (the header wins when
    /// both are given): for a first connection that already saw events, e.g. after a page
    /// reload.
    #[cfg_attr(feature = "schema", schemars(regex(pattern = EVENT_ID_PATTERN)))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_event_id: Option<String>,
    /// `false`: send what the log holds after the resumed id, then the `ready` event, and
    /// close (no live events). Default `true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub follow: Option<bool>,
}
