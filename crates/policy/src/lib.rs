//! kora-policy: the upgrade-detection engine of kora-telemetry (spec Sections 4 to 7, 9, 10).
//!
//! The engine is a pure fold: [`Engine::step`] takes one log entry and returns the derived
//! records (run-block windows, firings, suggestions, suppressions, mitigation outcomes) the
//! server appends to the log. Time is the record's `ts_ms`; the crate never reads a clock,
//! does no I/O, never depends on a runtime or a store, and keeps every map a `BTreeMap`, so
//! the state after any prefix of the log is the fold of that prefix ([`EngineState`] is
//! serializable for checkpoints) and [`replay`] re-derives a log exactly. It must never
//! route anything, suggest without a firing that carries evidence, or offer Krako Cloud
//! before a local step for the same scope or with a figure worse than the one measured here.
//!
#![doc = include_str!("../README.md")]

mod engine;
mod error;
mod follow_up;
mod ladder;
mod replay;
mod retire;
pub mod scenario;
mod state;
mod status;
mod suggest;
pub mod text;
mod thresholds;
mod tiers;
mod triggers;

pub use engine::{Engine, WINDOWED_SIGNALS};
pub use error::ThresholdsError;
pub use ladder::{CLOUD_OPTION, CLOUD_STEP, local_label, local_steps, step_of_option};
pub use replay::{ReplayDifference, ReplayReport, derive_all, derived_key, replay};
pub use retire::STATE_IDLE_MS;
pub use state::EngineState;
pub use status::{NOTHING_YET, TriggerFilter, TriggerState, TriggerStatus};
pub use thresholds::{
    EMBEDDED_PINS, EMBEDDED_THRESHOLDS, Semver, Thresholds, defaults, fingerprint, validate,
};
pub use tiers::{CloudTier, CloudTiers, EMBEDDED_CLOUD_TIERS};
pub use triggers::{context_bucket, request_signature};
