//! Product metrics (spec Section 8), consent and opt-in export, and the Prometheus exposition.
//!
//! The metrics stay on the machine. Export is off by default; turning it on is an explicit,
//! recorded act (`consent` records) that needs the per-install token, and so does every export.
//! The preview answers, byte for byte, what an export would send now. A bundle holds aggregates
//! only: counts and rates, no prompt hashes, no session or run ids, no model ids, no raw samples.
//! The count of cloud runs (and their tokens) is such an aggregate and is exported; the same
//! count per model is shown locally only.
//!
//! The code lives by job in [`crate::auth`], [`crate::consent`], [`crate::export`] and
//! [`crate::metrics`], and the request and response types in [`kora_model::api`]; this module
//! keeps the paths it had.

pub use crate::auth::require_token;
pub use crate::consent::{CONSENT_TEXT, SCOPE, get_consent, put_consent};
pub use crate::export::{BUNDLE_FORMAT, export, otlp_payload, preview};
pub use crate::metrics::{product, prometheus};
