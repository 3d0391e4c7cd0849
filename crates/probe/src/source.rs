//! Where readings come from: small traits over the host (CPU, RAM) and the GPUs (NVML), so the
//! probe runs the same code against the real machine and against recorded readings.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Bytes in one MB as the probe counts them (MiB, as `nvidia-smi` prints).
pub const BYTES_PER_MB: f64 = 1_048_576.0;

/// What went wrong talking to NVML, classified into plain words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuErrorKind {
    LibraryNotFound,
    FunctionNotFound,
    DriverNotLoaded,
    NoPermission,
    GpuLost,
    ResetRequired,
    NotSupported,
    VersionMismatch,
    InsufficientPower,
    IrqIssue,
    BlockedByOs,
    Timeout,
    InvalidArgument,
    Uninitialized,
    InUse,
    InsufficientMemory,
    NoData,
    CorruptedInfoRom,
    Unknown,
    Other,
}

impl GpuErrorKind {
    /// The classification in plain words.
    pub fn describe(self) -> &'static str {
        match self {
            GpuErrorKind::LibraryNotFound => "NVML library not found",
            GpuErrorKind::FunctionNotFound => {
                "the NVML library lacks this function (driver too old)"
            }
            GpuErrorKind::DriverNotLoaded => "NVIDIA driver not loaded",
            GpuErrorKind::NoPermission => "no permission to talk to the NVIDIA driver",
            GpuErrorKind::GpuLost => "GPU lost: it fell off the bus or is otherwise inaccessible",
            GpuErrorKind::ResetRequired => "the GPU needs a reset before it can be used again",
            GpuErrorKind::NotSupported => "not supported by this GPU or driver",
            GpuErrorKind::VersionMismatch => {
                "the NVIDIA driver and the NVML library versions do not match"
            }
            GpuErrorKind::InsufficientPower => {
                "the GPU's external power cables are not properly attached"
            }
            GpuErrorKind::IrqIssue => "the NVIDIA kernel module detected an interrupt problem",
            GpuErrorKind::BlockedByOs => "GPU access is blocked by the operating system or cgroups",
            GpuErrorKind::Timeout => "NVML timed out",
            GpuErrorKind::InvalidArgument => "NVML rejected the GPU index or an argument",
            GpuErrorKind::Uninitialized => "NVML is not initialised",
            GpuErrorKind::InUse => "the GPU is busy",
            GpuErrorKind::InsufficientMemory => "NVML ran out of memory",
            GpuErrorKind::NoData => "NVML returned no data",
            GpuErrorKind::CorruptedInfoRom => "the GPU's infoROM is corrupted",
            GpuErrorKind::Unknown => "unknown NVML error",
            GpuErrorKind::Other => "NVML error",
        }
    }
}

/// A classified NVML failure: the kind, and the library's own words where they add something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuError {
    pub kind: GpuErrorKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl GpuError {
    pub fn new(kind: GpuErrorKind) -> Self {
        GpuError { kind, detail: None }
    }

    pub fn with_detail(kind: GpuErrorKind, detail: impl Into<String>) -> Self {
        GpuError {
            kind,
            detail: Some(detail.into()),
        }
    }
}

impl fmt::Display for GpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.describe())?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for GpuError {}

/// One device's memory as NVML's memory info v2 reports it, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuMemory {
    pub total_bytes: u64,
    /// Unallocated memory; memory the driver reserves is not in it (v2 semantics).
    pub free_bytes: u64,
    /// Memory the driver reserves for itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_bytes: Option<u64>,
}

/// The GPUs of the machine. Implemented over NVML ([`crate::NvmlGpus`]) and over recorded
/// readings ([`crate::RecordedGpus`]).
///
/// The probe calls `device_count` once per snapshot, then `name` and `memory` for each index;
/// a recorded source moves to its next recorded tick on each `device_count`.
pub trait GpuSource: Send {
    fn device_count(&mut self) -> Result<u32, GpuError>;
    fn name(&mut self, index: u32) -> Result<String, GpuError>;
    fn memory(&mut self, index: u32) -> Result<GpuMemory, GpuError>;
}

/// One reading of the host: each value, or the reason it could not be taken.
#[derive(Debug, Clone, PartialEq)]
pub struct HostReading {
    pub cpu_cores: Result<u32, String>,
    pub cpu_load_pct: Result<f64, String>,
    pub ram_total_mb: Result<f64, String>,
    /// Available memory (free plus reclaimable caches), the memory a model load can get.
    pub ram_free_mb: Result<f64, String>,
}

/// The host's CPU and RAM. Implemented over sysinfo ([`crate::SysinfoHost`]) and over recorded
/// readings ([`crate::RecordedHost`]).
pub trait HostSource: Send {
    fn read(&mut self) -> HostReading;
}

/// The longest reason the service stores (the model's `MAX_ID_LEN`).
const MAX_REASON_BYTES: usize = kora_model::MAX_ID_LEN;

/// Makes a reason storable: control characters become spaces, and it is cut (at a character
/// boundary, with an ellipsis) to what a sample's `unavailable` may hold. Never empty.
pub fn bounded_reason(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() {
        return "unavailable (no reason given)".to_owned();
    }
    if cleaned.len() <= MAX_REASON_BYTES {
        return cleaned.to_owned();
    }
    let ellipsis = "...";
    let mut cut = MAX_REASON_BYTES - ellipsis.len();
    while !cleaned.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{ellipsis}", &cleaned[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_bounded_and_clean() {
        assert_eq!(bounded_reason("a\nb"), "a b");
        assert_eq!(bounded_reason("  "), "unavailable (no reason given)");
        let long = "é".repeat(300);
        let r = bounded_reason(&long);
        assert!(r.len() <= MAX_REASON_BYTES, "{}", r.len());
        assert!(r.ends_with("..."));
    }

    #[test]
    fn error_display_is_plain_words() {
        let e = GpuError::with_detail(GpuErrorKind::LibraryNotFound, "libnvidia-ml.so: no file");
        assert_eq!(
            e.to_string(),
            "NVML library not found: libnvidia-ml.so: no file"
        );
        assert_eq!(
            GpuError::new(GpuErrorKind::GpuLost).to_string(),
            "GPU lost: it fell off the bus or is otherwise inaccessible"
        );
    }
}
