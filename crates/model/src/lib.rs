//! The record model of kora-telemetry: what may enter the log, and the HTTP contract.
//!
//! Every type a client, the server, the CLI and the tests exchange lives here, so that they
//! share one contract (the JSON Schemas in `schema/` are generated from these types). The
//! crate depends on serde and a hash function only: it must never touch a store, a clock,
//! the network or a runtime. Time enters as an argument (`now_ms`) wherever validation needs it.
//!
//! Signal names are the specification's names, spelled exactly as there.

pub mod api;
pub mod derived;
pub mod profile;
pub mod prompt;
pub mod record;
pub mod service;
pub mod signal;
pub mod thresholds;
pub mod validate;

pub use api::*;
pub use derived::*;
pub use profile::*;
pub use prompt::{normalize_prompt, prompt_hash};
pub use record::*;
pub use signal::Signal;
pub use thresholds::*;
pub use validate::{FieldError, Validate, validate_batch};

/// Milliseconds since the Unix epoch of 2000-01-01T00:00:00Z: no telemetry is older.
pub const MIN_TS_MS: i64 = 946_684_800_000;
/// How far ahead of the server's clock a client timestamp may be (5 minutes).
pub const MAX_FUTURE_MS: i64 = 5 * 60 * 1000;
/// The longest identifier or name the service stores (bytes).
pub const MAX_ID_LEN: usize = 256;
/// The most stages one run may report.
pub const MAX_STAGES: usize = 64;
/// An identifier or name has no control characters (JSON Schema `pattern`, ECMA-262 syntax).
pub const TEXT_PATTERN: &str = r"^[^\u0000-\u001f\u007f-\u009f]*$";
/// A prompt hash: the lowercase hex SHA-256 of the normalized prompt.
pub const PROMPT_HASH_PATTERN: &str = "^[0-9a-f]{64}$";
