//! The versioned Krako Cloud tier table (`schema/cloud-tiers.json`).
//!
//! Every cloud estimate in a suggestion is computed from the user's own telemetry and one tier
//! of this table: output throughput (tokens/s), first-token latency (ms) and list prices (USD
//! per million input and output tokens). The table names which tier each category's estimate
//! uses. Its figures are planning assumptions, and every estimate says so.

use std::collections::BTreeMap;

use kora_model::Category;
use serde::{Deserialize, Serialize};

use crate::error::ThresholdsError;
use crate::thresholds::Semver;

/// The table shipped with this build.
pub const EMBEDDED_CLOUD_TIERS: &str = include_str!("../../../schema/cloud-tiers.json");

/// One Krako Cloud tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CloudTier {
    pub id: String,
    pub label: String,
    pub output_tokens_per_s: f64,
    pub first_token_ms: f64,
    pub usd_per_million_input_tokens: f64,
    pub usd_per_million_output_tokens: f64,
    pub max_context_tokens: u64,
    pub max_concurrent_sessions: u32,
}

/// The whole table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CloudTiers {
    pub version: String,
    pub about: String,
    pub currency: String,
    /// Tokens per run assumed when no run of the scope has been recorded.
    pub default_tokens_in: u64,
    pub default_tokens_out: u64,
    pub tiers: Vec<CloudTier>,
    /// The tier each category's estimate uses.
    pub category_tiers: BTreeMap<Category, String>,
}

fn invalid(field: &str, problem: &str) -> ThresholdsError {
    ThresholdsError::Invalid {
        field: field.to_owned(),
        problem: problem.to_owned(),
    }
}

impl CloudTiers {
    /// The table shipped with this build; a test proves it parses. Should it ever not, an
    /// empty table is used and no cloud option is offered (the engine never invents figures).
    pub fn embedded() -> CloudTiers {
        CloudTiers::parse(EMBEDDED_CLOUD_TIERS).unwrap_or_else(|_| CloudTiers {
            version: "0.0.0".to_owned(),
            about: String::new(),
            currency: "USD".to_owned(),
            default_tokens_in: 0,
            default_tokens_out: 0,
            tiers: Vec::new(),
            category_tiers: BTreeMap::new(),
        })
    }

    pub fn parse(json: &str) -> Result<CloudTiers, ThresholdsError> {
        let t: CloudTiers =
            serde_json::from_str(json).map_err(|e| ThresholdsError::Syntax(e.to_string()))?;
        if Semver::parse(&t.version).is_none() {
            return Err(ThresholdsError::BadVersion(t.version));
        }
        if t.currency != "USD" {
            return Err(invalid("currency", "must be USD"));
        }
        if t.tiers.is_empty() {
            return Err(invalid("tiers", "must list at least one tier"));
        }
        for (i, tier) in t.tiers.iter().enumerate() {
            let pos = |v: f64| v.is_finite() && v > 0.0;
            let nonneg = |v: f64| v.is_finite() && v >= 0.0;
            if !pos(tier.output_tokens_per_s) {
                return Err(invalid(
                    &format!("tiers[{i}].output_tokens_per_s"),
                    "must be > 0",
                ));
            }
            if !nonneg(tier.first_token_ms)
                || !nonneg(tier.usd_per_million_input_tokens)
                || !nonneg(tier.usd_per_million_output_tokens)
            {
                return Err(invalid(
                    &format!("tiers[{i}]"),
                    "figures must be finite and >= 0",
                ));
            }
        }
        for c in Category::ALL {
            match t.category_tiers.get(&c) {
                Some(id) if t.tiers.iter().any(|x| &x.id == id) => {}
                Some(id) => {
                    return Err(invalid(
                        &format!("category_tiers.{}", c.as_str()),
                        &format!("names unknown tier `{id}`"),
                    ));
                }
                None => {
                    return Err(invalid(
                        &format!("category_tiers.{}", c.as_str()),
                        "is missing",
                    ));
                }
            }
        }
        Ok(t)
    }

    /// The tier a category's estimate uses.
    pub fn tier_for(&self, category: Category) -> Option<&CloudTier> {
        let id = self.category_tiers.get(&category)?;
        self.tiers.iter().find(|t| &t.id == id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_table_parses_and_maps_every_category() {
        let t = CloudTiers::parse(EMBEDDED_CLOUD_TIERS).unwrap();
        for c in Category::ALL {
            assert!(t.tier_for(c).is_some());
        }
        assert_eq!(CloudTiers::embedded(), t);
    }

    #[test]
    fn a_missing_category_or_unknown_tier_is_refused() {
        let mut v: serde_json::Value = serde_json::from_str(EMBEDDED_CLOUD_TIERS).unwrap();
        v["category_tiers"]["latency"] = serde_json::json!("turbo");
        assert!(
            CloudTiers::parse(&v.to_string())
                .unwrap_err()
                .to_string()
                .contains("turbo")
        );
        v["category_tiers"]
            .as_object_mut()
            .unwrap()
            .remove("latency");
        assert!(CloudTiers::parse(&v.to_string()).is_err());
    }
}
