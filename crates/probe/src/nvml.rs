//! The GPUs through NVML (nvml-wrapper), and the classification of NVML's errors.

use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;

use crate::source::{GpuError, GpuErrorKind, GpuMemory, GpuSource};

/// NVML, initialised once. Device handles are looked up per call (cheap), so a GPU that falls
/// off the bus is reported on its next reading rather than held as a stale handle.
#[derive(Debug)]
pub struct NvmlGpus {
    nvml: Nvml,
}

impl NvmlGpus {
    /// Loads the NVML library and initialises it. An error here means "no NVIDIA GPU" for the
    /// probe: no library, no driver, or no permission to use it.
    pub fn init() -> Result<NvmlGpus, GpuError> {
        Nvml::init().map(|nvml| NvmlGpus { nvml }).map_err(classify)
    }
}

impl GpuSource for NvmlGpus {
    fn device_count(&mut self) -> Result<u32, GpuError> {
        self.nvml.device_count().map_err(classify)
    }

    fn name(&mut self, index: u32) -> Result<String, GpuError> {
        let device = self.nvml.device_by_index(index).map_err(classify)?;
        device.name().map_err(classify)
    }

    /// Memory info v2 (`nvmlDeviceGetMemoryInfo_v2`, the only variant nvml-wrapper 0.13
    /// offers): `free` excludes the driver's reserved memory. A driver without v2 (older than
    /// R510) reports "not supported" here: v1 is not reachable without unsafe code, and its
    /// free figure would count reserved memory as free, so no figure is better than that one.
    fn memory(&mut self, index: u32) -> Result<GpuMemory, GpuError> {
        let device = self.nvml.device_by_index(index).map_err(classify)?;
        let info = device.memory_info().map_err(|e| {
            let e = classify(e);
            const NOT_V1: &str = "v1 is not used: it counts reserved memory as free";
            match e.kind {
                GpuErrorKind::FunctionNotFound => GpuError::with_detail(
                    GpuErrorKind::NotSupported,
                    format!("memory info v2 needs NVIDIA driver R510 or newer; {NOT_V1}"),
                ),
                GpuErrorKind::NotSupported => GpuError::with_detail(
                    GpuErrorKind::NotSupported,
                    format!("memory info v2; {NOT_V1}"),
                ),
                _ => e,
            }
        })?;
        Ok(GpuMemory {
            total_bytes: info.total,
            free_bytes: info.free,
            reserved_bytes: Some(info.reserved),
        })
    }
}

/// Classifies an NVML error into plain words. Library-loading failures keep the loader's
/// message as detail (it names the file it looked for).
pub fn classify(e: NvmlError) -> GpuError {
    use GpuErrorKind as K;
    match e {
        NvmlError::LibloadingError(inner) => {
            GpuError::with_detail(K::LibraryNotFound, inner.to_string())
        }
        NvmlError::LibraryNotFound => GpuError::new(K::LibraryNotFound),
        NvmlError::FailedToLoadSymbol(sym) => GpuError::with_detail(K::FunctionNotFound, sym),
        NvmlError::FunctionNotFound => GpuError::new(K::FunctionNotFound),
        NvmlError::DriverNotLoaded => GpuError::new(K::DriverNotLoaded),
        NvmlError::NoPermission => GpuError::new(K::NoPermission),
        NvmlError::GpuLost => GpuError::new(K::GpuLost),
        NvmlError::ResetRequired => GpuError::new(K::ResetRequired),
        NvmlError::NotSupported => GpuError::new(K::NotSupported),
        NvmlError::LibRmVersionMismatch => GpuError::new(K::VersionMismatch),
        NvmlError::InsufficientPower => GpuError::new(K::InsufficientPower),
        NvmlError::IrqIssue => GpuError::new(K::IrqIssue),
        NvmlError::OperatingSystem => GpuError::new(K::BlockedByOs),
        NvmlError::Timeout => GpuError::new(K::Timeout),
        NvmlError::InvalidArg => GpuError::new(K::InvalidArgument),
        NvmlError::Uninitialized => GpuError::new(K::Uninitialized),
        NvmlError::InUse => GpuError::new(K::InUse),
        NvmlError::InsufficientMemory => GpuError::new(K::InsufficientMemory),
        NvmlError::NoData => GpuError::new(K::NoData),
        NvmlError::CorruptedInfoROM => GpuError::new(K::CorruptedInfoRom),
        NvmlError::Unknown => GpuError::new(K::Unknown),
        other => GpuError::with_detail(K::Other, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_names_the_common_failures() {
        assert_eq!(
            classify(NvmlError::DriverNotLoaded).kind,
            GpuErrorKind::DriverNotLoaded
        );
        assert_eq!(classify(NvmlError::GpuLost).kind, GpuErrorKind::GpuLost);
        assert_eq!(
            classify(NvmlError::NoPermission).kind,
            GpuErrorKind::NoPermission
        );
        let e = classify(NvmlError::FailedToLoadSymbol(
            "nvmlDeviceGetMemoryInfo_v2".into(),
        ));
        assert_eq!(e.kind, GpuErrorKind::FunctionNotFound);
        let e = classify(NvmlError::UnexpectedVariant(999));
        assert_eq!(e.kind, GpuErrorKind::Other);
        assert!(e.to_string().contains("999"), "{e}");
    }
}
