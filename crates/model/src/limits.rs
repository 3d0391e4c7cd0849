//! The limits every record and request is checked against.

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
