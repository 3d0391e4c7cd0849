//! The LocalCapabilityProfile (specification Section 3) and the constants its formulas use.
//!
//! The constants live in the versioned thresholds file (`schema/thresholds.json`, section
//! `profile`), so a change of them is a versioned change like any threshold. Every field of a
//! profile says which readings and constants produced it; a field whose inputs were unavailable
//! is `unknown` with the reason, never a number.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

/// Constants of the profile formulas (the `profile` section of the thresholds file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ProfileConstants {
    /// VRAM kept free for the driver, CUDA context and compute buffers (MB, per GPU).
    pub vram_headroom_mb: f64,
    /// RAM kept free for the OS and KORA Studio itself (MB).
    pub ram_headroom_mb: f64,
    /// KV-cache bytes per context token assumed when a model does not report its own.
    pub default_kv_cache_bytes_per_token: f64,
    /// The largest context the profile ever recommends (tokens).
    pub max_context_tokens_cap: u64,
    /// CPU cores one concurrent generating session needs to keep its latency.
    pub cores_per_session: f64,
    /// The context (tokens) one concurrent session is assumed to hold in its own KV cache when
    /// the memory bound of the concurrency recommendation is computed.
    pub session_context_tokens: u64,
}

/// A derived value with its provenance: a number, or `unknown` with the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct Derived {
    /// The value; absent when it could not be computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Why there is no value (present exactly when `value` is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
    /// The formula, with the readings and constants substituted.
    pub from: String,
}

/// What the profile knows of one model, from `model_load` and `context_request` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct ModelProfile {
    pub model_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_required_vram_mb: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params_b: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_bytes_per_token: Option<f64>,
    /// The context this machine supports for the model (tokens): its GPU's (or, CPU-only, RAM's)
    /// usable memory less the model's own weights, over its KV-cache bytes per token.
    pub supported_context_tokens: Derived,
}

/// The LocalCapabilityProfile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct LocalCapabilityProfile {
    /// The largest model (MB) that fits on one GPU of this machine, counting the memory the
    /// runtime's own loaded models hold as reclaimable. On a CPU-only machine, the largest
    /// model that fits in RAM (the name is the specification's; `from` says RAM).
    pub max_recommended_model_vram_mb: Derived,
    /// The context (tokens) that fits beside the largest loaded model at the default KV-cache
    /// bytes per token.
    pub max_recommended_context_tokens: Derived,
    /// Concurrent sessions this machine serves: by CPU cores and, once a model is loaded, by
    /// memory for one KV cache per session. Never scaled by the measured CPU load.
    pub max_recommended_concurrency: Derived,
    /// Per model, by model id.
    #[serde(default)]
    pub models: BTreeMap<String, ModelProfile>,
    /// The thresholds version whose constants were used.
    pub thresholds_version: String,
}

/// One GPU as the probe read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct GpuReading {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_total_mb: Option<f64>,
    /// Free VRAM as NVML's memory info v2 reports it: memory the driver reserves is not free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_free_mb: Option<f64>,
    /// VRAM the driver reserves for itself (memory info v2); neither free nor usable by models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_reserved_mb: Option<f64>,
    /// Why a reading is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// One hardware snapshot: what the probe read at `ts_ms`. Missing readings say why.
///
/// Memory figures are in MB of 1,048,576 bytes (what `nvidia-smi` calls MiB).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct HardwareSnapshot {
    pub ts_ms: i64,
    /// Logical CPUs the operating system schedules on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_load_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_total_mb: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_free_mb: Option<f64>,
    pub gpus: Vec<GpuReading>,
    /// Why there are no GPU readings at all (e.g. "no NVIDIA GPU (NVML library not found)").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_unavailable: Option<String>,
    /// Sum over GPUs with a reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_vram_total_mb: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_vram_free_mb: Option<f64>,
    /// True when the probe found no usable NVIDIA GPU (NVML could not start, or it counts no
    /// devices): the profile then sizes models and context from RAM. False when GPUs exist,
    /// even if none could be read this time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cpu_only: bool,
    /// Why a host reading or a GPU total is missing, by field name (`cpu_cores`,
    /// `cpu_load_pct`, `ram_total_mb`, `ram_free_mb`, `gpu_vram_total_mb`, `gpu_vram_free_mb`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unavailable: BTreeMap<String, String>,
}

/// The `profile` log record: a profile and the snapshot it came from, written whenever either
/// the hardware or the known models change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct ProfileRecord {
    pub ts_ms: i64,
    pub profile: LocalCapabilityProfile,
    pub hardware: HardwareSnapshot,
}

/// The answer of a fit check (`GET /v1/fit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum FitOutcome {
    Fits,
    DoesNotFit,
    /// An input the check needs was unavailable; `reason` says which and why.
    Unknown,
}

/// Whether a model (and optionally a context) fits this machine now, with the arithmetic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct FitVerdict {
    pub verdict: FitOutcome,
    /// One sentence: why this verdict.
    pub reason: String,
    /// The GPU the model fits on, when it fits on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<u32>,
    /// Each step of the check, with the readings and constants substituted.
    pub arithmetic: Vec<String>,
}
