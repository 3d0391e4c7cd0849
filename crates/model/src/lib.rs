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
pub mod limits;
pub mod profile;
pub mod prompt;
pub mod record;
pub mod service;
pub mod signal;
pub mod thresholds;
pub mod validate;

pub use api::*;
pub use derived::*;
pub use limits::*;
pub use profile::*;
pub use prompt::{normalize_prompt, prompt_hash};
pub use record::*;
pub use signal::Signal;
pub use thresholds::*;
pub use validate::{FieldError, Validate, validate_batch};
