//! The probe: one snapshot of the machine per call, with every missing reading explained.

use std::collections::BTreeMap;
use std::fmt;

use kora_model::{GpuReading, HardwareSnapshot};

use crate::host::SysinfoHost;
use crate::nvml::NvmlGpus;
use crate::recorded::Recording;
use crate::source::{BYTES_PER_MB, GpuError, GpuSource, HostSource, bounded_reason};

/// The most GPUs one snapshot reads; NVML has never reported more on one machine.
pub const MAX_GPUS: u32 = 64;

/// Reads the host and the GPUs. Synchronous: a caller on an async runtime runs it on a
/// blocking thread. The probe reads no clock for the record time (the caller passes `ts_ms`)
/// and never writes anywhere: it returns owned snapshots.
pub struct Probe {
    host: Box<dyn HostSource>,
    /// The GPUs, or the reason there are none ("no NVIDIA GPU (...)").
    gpus: Result<Box<dyn GpuSource>, String>,
    /// The GPU problems of the previous snapshot, so each change is logged once.
    last_gpu_problems: BTreeMap<String, String>,
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probe")
            .field(
                "gpus",
                &self.gpus.as_ref().map(|_| "NVML").map_err(|e| e.as_str()),
            )
            .finish_non_exhaustive()
    }
}

impl Default for Probe {
    fn default() -> Self {
        Probe::new()
    }
}

impl Probe {
    /// The real machine: sysinfo for CPU and RAM, NVML (initialised here, once) for GPUs.
    /// No NVIDIA library or driver is a normal state, logged once and carried in every
    /// snapshot as `gpu_unavailable`.
    pub fn new() -> Probe {
        let gpus = NvmlGpus::init().map(|g| Box::new(g) as Box<dyn GpuSource>);
        Probe::with_sources(Box::new(SysinfoHost::new()), gpus)
    }

    /// A probe over any sources; `gpus` is the source or the error NVML failed to start with.
    pub fn with_sources(
        host: Box<dyn HostSource>,
        gpus: Result<Box<dyn GpuSource>, GpuError>,
    ) -> Probe {
        let gpus = gpus.map_err(|e| {
            let reason = no_gpu(&e.to_string());
            tracing::info!("{reason}: GPU readings are unavailable, CPU and RAM are probed");
            reason
        });
        Probe {
            host,
            gpus,
            last_gpu_problems: BTreeMap::new(),
        }
    }

    /// A probe that replays a recorded machine.
    pub fn from_recording(recording: Recording) -> Probe {
        let (host, gpus) = recording.into_sources();
        Probe::with_sources(
            Box::new(host),
            gpus.map(|g| Box::new(g) as Box<dyn GpuSource>),
        )
    }

    /// Why there are no GPU readings at all ("no NVIDIA GPU (...)"), if NVML did not start.
    pub fn gpu_unavailable(&self) -> Option<&str> {
        self.gpus.as_ref().err().map(String::as_str)
    }

    /// Reads the machine now and stamps the snapshot with the caller's `ts_ms`.
    pub fn snapshot(&mut self, ts_ms: i64) -> HardwareSnapshot {
        let host = self.host.read();
        let mut unavailable = BTreeMap::new();
        let mut take =
            |field: &str, r: Result<f64, String>, check: fn(f64) -> Option<String>| match r
                .map_err(|e| bounded_reason(&e))
                .and_then(|v| match check(v) {
                    None => Ok(v),
                    Some(why) => Err(why),
                }) {
                Ok(v) => Some(v),
                Err(why) => {
                    unavailable.insert(field.to_owned(), why);
                    None
                }
            };
        let cpu_load_pct =
            take("cpu_load_pct", host.cpu_load_pct, check_percent).map(|v| v.clamp(0.0, 100.0));
        let ram_total_mb = take("ram_total_mb", host.ram_total_mb, check_positive_mb);
        let ram_free_mb = take("ram_free_mb", host.ram_free_mb, check_mb);
        let cpu_cores = match host.cpu_cores {
            Ok(0) => {
                unavailable.insert(
                    "cpu_cores".to_owned(),
                    "the operating system reported 0 CPUs".to_owned(),
                );
                None
            }
            Ok(n) => Some(n),
            Err(e) => {
                unavailable.insert("cpu_cores".to_owned(), bounded_reason(&e));
                None
            }
        };

        let (gpus, gpu_unavailable, cpu_only) = self.read_gpus();
        let (gpu_vram_total_mb, gpu_vram_free_mb) =
            gpu_totals(&gpus, gpu_unavailable.as_deref(), &mut unavailable);
        self.log_gpu_changes(&gpus, gpu_unavailable.as_deref(), cpu_only);

        HardwareSnapshot {
            ts_ms,
            cpu_cores,
            cpu_load_pct,
            ram_total_mb,
            ram_free_mb,
            gpus,
            gpu_unavailable,
            gpu_vram_total_mb,
            gpu_vram_free_mb,
            cpu_only,
            unavailable,
        }
    }

    fn read_gpus(&mut self) -> (Vec<GpuReading>, Option<String>, bool) {
        let source = match &mut self.gpus {
            Ok(s) => s,
            Err(reason) => return (Vec::new(), Some(reason.clone()), true),
        };
        let count = match source.device_count() {
            Ok(0) => {
                return (Vec::new(), Some(no_gpu("NVML found no devices")), true);
            }
            Ok(n) => n.min(MAX_GPUS),
            Err(e) => {
                let why = bounded_reason(&format!("NVML could not count the GPUs: {e}"));
                return (Vec::new(), Some(why), false);
            }
        };
        let mut gpus = Vec::new();
        for index in 0..count {
            let name = match source.name(index) {
                Ok(n) => Some(bounded_reason(&n)),
                Err(e) => {
                    tracing::debug!(gpu = index, "GPU name unavailable: {e}");
                    None
                }
            };
            let mut reading = GpuReading {
                index,
                name,
                vram_total_mb: None,
                vram_free_mb: None,
                vram_reserved_mb: None,
                unavailable: None,
            };
            match source.memory(index) {
                Ok(m) if m.total_bytes == 0 => {
                    reading.unavailable = Some("NVML reported 0 bytes of VRAM".to_owned());
                }
                Ok(m) => {
                    reading.vram_total_mb = Some(m.total_bytes as f64 / BYTES_PER_MB);
                    reading.vram_free_mb = Some(m.free_bytes as f64 / BYTES_PER_MB);
                    reading.vram_reserved_mb = m.reserved_bytes.map(|b| b as f64 / BYTES_PER_MB);
                }
                Err(e) => {
                    reading.unavailable = Some(bounded_reason(&format!("VRAM: {e}")));
                }
            }
            gpus.push(reading);
        }
        (gpus, None, false)
    }

    /// Logs a GPU problem when it appears or changes and when it clears, not on every tick.
    fn log_gpu_changes(&mut self, gpus: &[GpuReading], whole: Option<&str>, cpu_only: bool) {
        let mut now = BTreeMap::new();
        // A machine without NVML was logged once, at start.
        if let (Some(w), false) = (whole, cpu_only) {
            now.insert("all GPUs".to_owned(), w.to_owned());
        }
        for g in gpus {
            if let Some(u) = &g.unavailable {
                now.insert(format!("gpu{}", g.index), u.clone());
            }
        }
        for (what, why) in &now {
            if self.last_gpu_problems.get(what) != Some(why) {
                tracing::warn!("{what}: {why}");
            }
        }
        for what in self.last_gpu_problems.keys() {
            if !now.contains_key(what) {
                tracing::info!("{what}: readable again");
            }
        }
        self.last_gpu_problems = now;
    }
}

/// The words for a machine without a usable NVIDIA GPU.
fn no_gpu(reason: &str) -> String {
    bounded_reason(&format!("no NVIDIA GPU ({reason})"))
}

fn check_mb(v: f64) -> Option<String> {
    if !v.is_finite() || v < 0.0 {
        Some(format!("the probe read an invalid figure ({v} MB)"))
    } else {
        None
    }
}

fn check_positive_mb(v: f64) -> Option<String> {
    check_mb(v).or_else(|| (v == 0.0).then(|| "the probe read 0 MB".to_owned()))
}

fn check_percent(v: f64) -> Option<String> {
    // Rounding noise a little outside 0..=100 is clamped by the caller; far outside is wrong.
    if !v.is_finite() || !(-1.0..=101.0).contains(&v) {
        Some(format!("the probe read an invalid CPU load ({v} %)"))
    } else {
        None
    }
}

/// Sums over the GPUs, only when every GPU was read: a sum over some of them would understate
/// the machine and could fire the model-fit trigger falsely. Records why a total is missing.
fn gpu_totals(
    gpus: &[GpuReading],
    whole: Option<&str>,
    unavailable: &mut BTreeMap<String, String>,
) -> (Option<f64>, Option<f64>) {
    let missing: Vec<String> = gpus
        .iter()
        .filter(|g| g.vram_total_mb.is_none() || g.vram_free_mb.is_none())
        .map(|g| {
            format!(
                "gpu{} unreadable ({})",
                g.index,
                g.unavailable.as_deref().unwrap_or("no reading")
            )
        })
        .collect();
    let why = if let Some(w) = whole {
        Some(w.to_owned())
    } else if gpus.is_empty() {
        Some("no GPU readings".to_owned())
    } else if missing.len() == gpus.len() {
        Some(missing.join("; "))
    } else if !missing.is_empty() {
        Some(format!(
            "{}; a total over the other GPUs would understate it",
            missing.join("; ")
        ))
    } else {
        None
    };
    if let Some(why) = why {
        let why = bounded_reason(&why);
        unavailable.insert("gpu_vram_total_mb".to_owned(), why.clone());
        unavailable.insert("gpu_vram_free_mb".to_owned(), why);
        return (None, None);
    }
    let total = gpus.iter().filter_map(|g| g.vram_total_mb).sum();
    let free = gpus.iter().filter_map(|g| g.vram_free_mb).sum();
    (Some(total), Some(free))
}
