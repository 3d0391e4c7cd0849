//! The crate's one error enum: loading a versioned file (thresholds or cloud tiers).

/// Why a thresholds file or a cloud tier table was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ThresholdsError {
    /// Not JSON, a missing or unknown field, or a wrong type (serde's message names it).
    #[error("not a valid file: {0}")]
    Syntax(String),
    #[error("field `{field}` {problem}")]
    Invalid { field: String, problem: String },
    #[error("version `{0}` is not MAJOR.MINOR.PATCH")]
    BadVersion(String),
    #[error(
        "thresholds {version}: content changed without a MINOR version bump (pinned fingerprint {pinned}, this file {actual})"
    )]
    ContentChanged {
        version: String,
        pinned: String,
        actual: String,
    },
    #[error(
        "thresholds {version} is not pinned and not newer in MAJOR.MINOR than the newest pinned version {newest}: changed content needs a MINOR version bump"
    )]
    NotNewer { version: String, newest: String },
}
