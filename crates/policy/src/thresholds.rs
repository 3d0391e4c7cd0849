//! The versioned thresholds (`schema/thresholds.json`) and their pinned fingerprints.
//!
//! The fingerprint of a thresholds set is the hex SHA-256 of its canonical serialization: the
//! parsed [`ThresholdsFile`] with an empty `version`, written back as compact JSON (fields in
//! declaration order, numbers the way serde_json writes them). So whitespace, key order and
//! `4500` vs `4500.0` do not change it; any value does.
//!
//! `schema/thresholds.pins.json` maps every released version to its fingerprint and is
//! compiled into the crate. [`Thresholds::parse`] accepts a file when
//! - its version is pinned and its fingerprint matches the pin; or
//! - its version is not pinned and its content equals a pinned version of the same
//!   `MAJOR.MINOR` (a PATCH bump that changes no value: documentation only); or
//! - its version is not pinned and is newer in `MAJOR.MINOR` than every pinned version (a
//!   custom set for a backtest, or the next release before its pin is added).
//!
//! Everything else is refused: a pinned version whose content differs is "content changed
//! without a MINOR version bump" (spec Section 10); an unpinned version that is not newer in
//! `MAJOR.MINOR` would let a value change under a PATCH bump.

use std::collections::BTreeMap;

use kora_model::ThresholdsFile;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ThresholdsError;

/// The thresholds shipped with this build.
pub const EMBEDDED_THRESHOLDS: &str = include_str!("../../../schema/thresholds.json");
/// The pinned fingerprints, by version.
pub const EMBEDDED_PINS: &str = include_str!("../../../schema/thresholds.pins.json");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinsFile {
    pins: BTreeMap<String, String>,
}

/// A `MAJOR.MINOR.PATCH` version (no pre-release or build suffix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Semver {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl Semver {
    pub fn parse(s: &str) -> Option<Semver> {
        let mut it = s.split('.');
        let mut part = || -> Option<u64> {
            let p = it.next()?;
            if p.is_empty()
                || !p.bytes().all(|b| b.is_ascii_digit())
                || (p.len() > 1 && p.starts_with('0'))
            {
                return None;
            }
            p.parse().ok()
        };
        let v = Semver {
            major: part()?,
            minor: part()?,
            patch: part()?,
        };
        if it.next().is_some() {
            return None;
        }
        Some(v)
    }
}

impl std::fmt::Display for Semver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A validated thresholds set with its fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Thresholds {
    #[serde(flatten)]
    file: ThresholdsFile,
    fingerprint: String,
}

/// The fingerprint of a thresholds file: hex SHA-256 of its canonical JSON with the
/// `version` left empty (the fingerprint is of the content, pinned per version).
pub fn fingerprint(file: &ThresholdsFile) -> String {
    let mut content = file.clone();
    content.version = String::new();
    let canonical = serde_json::to_vec(&content).unwrap_or_default();
    hex::encode(Sha256::digest(&canonical))
}

fn pins() -> BTreeMap<String, String> {
    serde_json::from_str::<PinsFile>(EMBEDDED_PINS)
        .map(|p| p.pins)
        .unwrap_or_default()
}

fn invalid(field: &str, problem: &str) -> ThresholdsError {
    ThresholdsError::Invalid {
        field: field.to_owned(),
        problem: problem.to_owned(),
    }
}

fn check_limit(field: &str, v: f64) -> Result<(), ThresholdsError> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(invalid(field, "must be a finite number >= 0"))
    }
}

fn check_positive(field: &str, v: f64) -> Result<(), ThresholdsError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(invalid(field, "must be a finite number > 0"))
    }
}

fn check_count(field: &str, v: u32, max: u32) -> Result<(), ThresholdsError> {
    if (1..=max).contains(&v) {
        Ok(())
    } else {
        Err(invalid(field, &format!("must be between 1 and {max}")))
    }
}

/// Checks every value of a parsed file (not its pin).
pub fn validate(f: &ThresholdsFile) -> Result<Semver, ThresholdsError> {
    let version =
        Semver::parse(&f.version).ok_or_else(|| ThresholdsError::BadVersion(f.version.clone()))?;
    check_count("windows.runs_per_block", f.windows.runs_per_block, 10_000)?;
    check_count("windows.window_seconds", f.windows.window_seconds, 86_400)?;
    if f.windows.grace_seconds > f.windows.window_seconds {
        return Err(invalid(
            "windows.grace_seconds",
            "must not exceed window_seconds",
        ));
    }
    check_count(
        "windows.max_streak_gap_minutes",
        f.windows.max_streak_gap_minutes,
        7 * 24 * 60,
    )?;
    check_count("model_fit.load_failures", f.model_fit.load_failures, 1_000)?;
    check_count(
        "model_fit.free_lookback_minutes",
        f.model_fit.free_lookback_minutes,
        24 * 60,
    )?;
    check_limit("latency.lat_p95_limit_ms", f.latency.lat_p95_limit_ms)?;
    check_limit("latency.total_p95_limit_ms", f.latency.total_p95_limit_ms)?;
    check_count("latency.sustain_blocks", f.latency.sustain_blocks, 1_000)?;
    check_limit(
        "concurrency.queue_wait_limit_ms",
        f.concurrency.queue_wait_limit_ms,
    )?;
    check_count(
        "concurrency.sustain_windows",
        f.concurrency.sustain_windows,
        1_000,
    )?;
    check_limit("reliability.retry_p95_limit", f.reliability.retry_p95_limit)?;
    check_limit(
        "reliability.budget_breach_limit",
        f.reliability.budget_breach_limit,
    )?;
    if f.suggestions.category_cooldown_minutes > 7 * 24 * 60 {
        return Err(invalid(
            "suggestions.category_cooldown_minutes",
            "must be at most a week",
        ));
    }
    check_count(
        "suggestions.signature_per_session",
        f.suggestions.signature_per_session,
        1_000,
    )?;
    check_count(
        "suggestions.readiness_max_age_minutes",
        f.suggestions.readiness_max_age_minutes,
        24 * 60,
    )?;
    check_count(
        "suggestions.sessionless_idle_minutes",
        f.suggestions.sessionless_idle_minutes,
        7 * 24 * 60,
    )?;
    check_count("follow_up.windows", f.follow_up.windows, 1_000)?;
    check_count("follow_up.minutes", f.follow_up.minutes, 7 * 24 * 60)?;
    let p = &f.profile;
    check_limit("profile.vram_headroom_mb", p.vram_headroom_mb)?;
    check_limit("profile.ram_headroom_mb", p.ram_headroom_mb)?;
    check_positive(
        "profile.default_kv_cache_bytes_per_token",
        p.default_kv_cache_bytes_per_token,
    )?;
    if p.max_context_tokens_cap == 0 {
        return Err(invalid("profile.max_context_tokens_cap", "must be > 0"));
    }
    check_positive("profile.cores_per_session", p.cores_per_session)?;
    if p.session_context_tokens == 0 {
        return Err(invalid("profile.session_context_tokens", "must be > 0"));
    }
    Ok(version)
}

impl Thresholds {
    /// The thresholds shipped with this build (`schema/thresholds.json`, pinned). A test
    /// proves the embedded file parses; should it ever not, the same values built in code
    /// are used.
    pub fn embedded() -> Thresholds {
        Thresholds::parse(EMBEDDED_THRESHOLDS).unwrap_or_else(|_| {
            let file = defaults();
            let fingerprint = fingerprint(&file);
            Thresholds { file, fingerprint }
        })
    }

    /// Parses, validates and checks the pin of a thresholds file.
    pub fn parse(json: &str) -> Result<Thresholds, ThresholdsError> {
        let file: ThresholdsFile =
            serde_json::from_str(json).map_err(|e| ThresholdsError::Syntax(e.to_string()))?;
        Thresholds::from_file(file)
    }

    /// Validates and checks the pin of an already parsed file.
    pub fn from_file(file: ThresholdsFile) -> Result<Thresholds, ThresholdsError> {
        let version = validate(&file)?;
        let fp = fingerprint(&file);
        check_pin(&file.version, version, &fp, &pins())?;
        Ok(Thresholds {
            file,
            fingerprint: fp,
        })
    }

    pub fn version(&self) -> &str {
        &self.file.version
    }

    pub fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// Every value.
    pub fn file(&self) -> &ThresholdsFile {
        &self.file
    }

    /// N, runs per block.
    pub fn runs_per_block(&self) -> usize {
        self.file.windows.runs_per_block as usize
    }

    /// W_SECONDS in milliseconds.
    pub fn window_ms(&self) -> i64 {
        i64::from(self.file.windows.window_seconds) * 1000
    }

    /// The time-window grace in milliseconds.
    pub fn grace_ms(&self) -> i64 {
        i64::from(self.file.windows.grace_seconds) * 1000
    }

    pub(crate) fn cooldown_ms(&self) -> i64 {
        i64::from(self.file.suggestions.category_cooldown_minutes) * 60_000
    }

    pub(crate) fn readiness_max_age_ms(&self) -> i64 {
        i64::from(self.file.suggestions.readiness_max_age_minutes) * 60_000
    }

    pub(crate) fn max_streak_gap_ms(&self) -> i64 {
        i64::from(self.file.windows.max_streak_gap_minutes) * 60_000
    }

    pub(crate) fn free_lookback_ms(&self) -> i64 {
        i64::from(self.file.model_fit.free_lookback_minutes) * 60_000
    }

    pub(crate) fn sessionless_idle_ms(&self) -> i64 {
        i64::from(self.file.suggestions.sessionless_idle_minutes) * 60_000
    }

    pub(crate) fn follow_up_ms(&self) -> i64 {
        i64::from(self.file.follow_up.minutes) * 60_000
    }
}

fn check_pin(
    raw: &str,
    version: Semver,
    fp: &str,
    pins: &BTreeMap<String, String>,
) -> Result<(), ThresholdsError> {
    if let Some(pinned) = pins.get(raw) {
        if pinned == fp {
            return Ok(());
        }
        return Err(ThresholdsError::ContentChanged {
            version: raw.to_owned(),
            pinned: pinned.clone(),
            actual: fp.to_owned(),
        });
    }
    let pinned: Vec<(Semver, &String)> = pins
        .iter()
        .filter_map(|(v, f)| Semver::parse(v).map(|s| (s, f)))
        .collect();
    let same_minor_same_content = pinned
        .iter()
        .any(|(s, f)| s.major == version.major && s.minor == version.minor && f.as_str() == fp);
    if same_minor_same_content {
        return Ok(());
    }
    let newest = pinned.iter().map(|(s, _)| *s).max();
    match newest {
        Some(n) if (version.major, version.minor) <= (n.major, n.minor) => {
            Err(ThresholdsError::NotNewer {
                version: raw.to_owned(),
                newest: n.to_string(),
            })
        }
        _ => Ok(()),
    }
}

/// The values of `schema/thresholds.json` 1.1.0, in code (see [`Thresholds::embedded`]).
pub fn defaults() -> ThresholdsFile {
    use kora_model::*;
    ThresholdsFile {
        version: "1.1.0".to_owned(),
        windows: WindowThresholds {
            runs_per_block: 10,
            window_seconds: 60,
            grace_seconds: 5,
            max_streak_gap_minutes: 30,
        },
        model_fit: ModelFitThresholds {
            load_failures: 1,
            free_lookback_minutes: 5,
        },
        context: ContextThresholds {
            truncation_fires: true,
        },
        latency: LatencyThresholds {
            lat_p95_limit_ms: 4500.0,
            total_p95_limit_ms: 6500.0,
            sustain_blocks: 3,
        },
        concurrency: ConcurrencyThresholds {
            queue_wait_limit_ms: 1200.0,
            sustain_windows: 3,
        },
        reliability: ReliabilityThresholds {
            retry_p95_limit: 2.0,
            budget_breach_limit: 0.0,
        },
        suggestions: SuggestionThresholds {
            category_cooldown_minutes: 30,
            signature_per_session: 1,
            readiness_max_age_minutes: 10,
            sessionless_idle_minutes: 30,
        },
        follow_up: FollowUpThresholds {
            windows: 3,
            minutes: 30,
        },
        profile: ProfileConstants {
            vram_headroom_mb: 512.0,
            ram_headroom_mb: 2048.0,
            default_kv_cache_bytes_per_token: 131072.0,
            max_context_tokens_cap: 131072,
            cores_per_session: 4.0,
            session_context_tokens: 4096,
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_file_parses_matches_its_pin_and_the_coded_defaults() {
        let t = Thresholds::parse(EMBEDDED_THRESHOLDS)
            .unwrap_or_else(|e| panic!("{e}; fingerprint {}", fingerprint(&defaults())));
        assert_eq!(t.version(), "1.1.0");
        assert_eq!(t.file(), &defaults());
        assert_eq!(Thresholds::embedded(), t);
        assert_eq!(t.fingerprint().len(), 64);
        // The shipped version is pinned, so its content can never change under it.
        assert_eq!(
            pins().get(t.version()),
            Some(&t.fingerprint()),
            "pin {} in schema/thresholds.pins.json",
            t.version()
        );
    }

    #[test]
    fn formatting_does_not_change_the_fingerprint_but_a_value_does() {
        let mut v: serde_json::Value = serde_json::from_str(EMBEDDED_THRESHOLDS).unwrap();
        let compact = v.to_string();
        assert!(Thresholds::parse(&compact).is_ok());
        v["latency"]["lat_p95_limit_ms"] = serde_json::json!(4000);
        let err = Thresholds::parse(&v.to_string()).unwrap_err();
        assert!(
            err.to_string()
                .contains("content changed without a MINOR version bump"),
            "{err}"
        );
        // A PATCH bump with changed content is refused too.
        v["version"] = serde_json::json!("1.1.1");
        assert!(matches!(
            Thresholds::parse(&v.to_string()),
            Err(ThresholdsError::NotNewer { .. })
        ));
        // A MINOR bump is accepted.
        v["version"] = serde_json::json!("1.2.0");
        let t = Thresholds::parse(&v.to_string()).unwrap();
        assert_eq!(t.file().latency.lat_p95_limit_ms, 4000.0);
    }

    #[test]
    fn a_patch_bump_without_changes_is_accepted() {
        let mut v: serde_json::Value = serde_json::from_str(EMBEDDED_THRESHOLDS).unwrap();
        v["version"] = serde_json::json!("1.1.7");
        assert!(Thresholds::parse(&v.to_string()).is_ok());
    }

    #[test]
    fn unknown_fields_bad_versions_and_bad_values_are_refused() {
        let mut v: serde_json::Value = serde_json::from_str(EMBEDDED_THRESHOLDS).unwrap();
        v["latency"]["lat_p95_limit"] = serde_json::json!(1);
        let e = Thresholds::parse(&v.to_string()).unwrap_err().to_string();
        assert!(e.contains("lat_p95_limit"), "{e}");

        let mut v: serde_json::Value = serde_json::from_str(EMBEDDED_THRESHOLDS).unwrap();
        v["version"] = serde_json::json!("2.0");
        assert!(matches!(
            Thresholds::parse(&v.to_string()),
            Err(ThresholdsError::BadVersion(_))
        ));

        let mut v: serde_json::Value = serde_json::from_str(EMBEDDED_THRESHOLDS).unwrap();
        v["version"] = serde_json::json!("9.0.0");
        v["windows"]["runs_per_block"] = serde_json::json!(0);
        let e = Thresholds::parse(&v.to_string()).unwrap_err().to_string();
        assert!(e.contains("windows.runs_per_block"), "{e}");
    }

    #[test]
    fn semver_parsing_is_strict() {
        assert_eq!(
            Semver::parse("1.2.3"),
            Some(Semver {
                major: 1,
                minor: 2,
                patch: 3
            })
        );
        for bad in ["1.2", "1.2.3.4", "01.2.3", "1.2.x", "", "1.2.3-rc1"] {
            assert_eq!(Semver::parse(bad), None, "{bad}");
        }
    }
}
