//! The answers whose types are not in `kora-model`: `GET /v1/triggers` and `GET /v1/thresholds`
//! hold the policy's types, and the server's own structs for them live in `kora-server`, which
//! a client must not depend on. These have the same shape (the integration test reads both
//! from the real service).

use kora_model::ThresholdsFile;
use kora_policy::{CloudTiers, TriggerStatus};
use serde::{Deserialize, Serialize};

/// The answer of `GET /v1/triggers` (the server's `kora_server::views::TriggersView`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggersView {
    pub thresholds_version: String,
    /// The page's states, in category then scope order.
    pub triggers: Vec<TriggerStatus>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default)]
    pub next_after: Option<String>,
}

/// The answer of `GET /v1/thresholds` (the server's `kora_server::views::ThresholdsView`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdsView {
    pub version: String,
    /// SHA-256 of the canonical content, pinned per version in `schema/thresholds.pins.json`.
    pub fingerprint: String,
    pub thresholds: ActiveThresholds,
    /// The Krako Cloud tier table (`schema/cloud-tiers.json`).
    pub cloud_tiers: CloudTiers,
}

/// The active thresholds file with its fingerprint (as `kora_policy::Thresholds` writes it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveThresholds {
    #[serde(flatten)]
    pub file: ThresholdsFile,
    pub fingerprint: String,
}
