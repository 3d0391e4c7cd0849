//! Recorded hardware: readings and errors replayed from a JSON file, tick by tick, through
//! the same [`GpuSource`] and [`HostSource`] traits the real machine uses.
//!
//! A recording lists one host reading and one NVML answer per tick; the probe takes one tick
//! per snapshot, and the last tick repeats once the recording runs out. Memory is recorded in
//! bytes, as NVML reports it. The format:
//!
//! ```json
//! {
//!   "description": "RTX 4090 desktop",
//!   "host": [{"cpu_cores": 16, "cpu_load_pct": {"unavailable": "first reading"},
//!             "ram_total_mb": 64000, "ram_free_mb": 40000}],
//!   "nvml": {"ticks": [{"device_count": 1, "devices": [
//!     {"name": "NVIDIA GeForce RTX 4090",
//!      "memory": {"total_bytes": 25757220864, "free_bytes": 24129830912,
//!                 "reserved_bytes": 346030080}}]}]}
//! }
//! ```
//!
//! `"nvml": {"init_error": {"kind": "library_not_found"}}` records a machine without NVML;
//! any NVML answer may be `{"error": {"kind": "gpu_lost"}}` instead of a value.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::source::{GpuError, GpuErrorKind, GpuMemory, GpuSource, HostReading, HostSource};

/// A recorded host value: the value, or why it was unavailable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RecordedValue<T> {
    Value(T),
    Unavailable { unavailable: String },
}

impl<T: Clone> RecordedValue<T> {
    fn get(&self) -> Result<T, String> {
        match self {
            RecordedValue::Value(v) => Ok(v.clone()),
            RecordedValue::Unavailable { unavailable } => Err(unavailable.clone()),
        }
    }
}

/// A recorded NVML answer: the value, or the error NVML gave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RecordedAnswer<T> {
    Value(T),
    Error { error: GpuError },
}

impl<T: Clone> RecordedAnswer<T> {
    fn get(&self) -> Result<T, GpuError> {
        match self {
            RecordedAnswer::Value(v) => Ok(v.clone()),
            RecordedAnswer::Error { error } => Err(error.clone()),
        }
    }
}

/// One host reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedHostTick {
    pub cpu_cores: RecordedValue<u32>,
    pub cpu_load_pct: RecordedValue<f64>,
    pub ram_total_mb: RecordedValue<f64>,
    pub ram_free_mb: RecordedValue<f64>,
}

/// One device's answers in one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedDevice {
    pub name: RecordedAnswer<String>,
    pub memory: RecordedAnswer<GpuMemory>,
}

/// NVML's answers in one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedGpuTick {
    pub device_count: RecordedAnswer<u32>,
    #[serde(default)]
    pub devices: Vec<RecordedDevice>,
}

/// What NVML did: fail to start, or answer tick by tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RecordedNvml {
    InitError(GpuError),
    Ticks(Vec<RecordedGpuTick>),
}

/// A recorded machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recording {
    #[serde(default)]
    pub description: String,
    pub host: Vec<RecordedHostTick>,
    pub nvml: RecordedNvml,
}

/// Why a recording could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordingError {
    #[error("cannot read recording {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("recording is not valid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("recording has no host readings")]
    NoHostTicks,
    #[error("recording has no NVML ticks")]
    NoGpuTicks,
}

impl Recording {
    /// Parses and checks a recording.
    pub fn from_json(text: &str) -> Result<Recording, RecordingError> {
        let r: Recording = serde_json::from_str(text)?;
        r.check()?;
        Ok(r)
    }

    /// Reads, parses and checks a recording file.
    pub fn load(path: &Path) -> Result<Recording, RecordingError> {
        let text = std::fs::read_to_string(path).map_err(|source| RecordingError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Recording::from_json(&text)
    }

    fn check(&self) -> Result<(), RecordingError> {
        if self.host.is_empty() {
            return Err(RecordingError::NoHostTicks);
        }
        if let RecordedNvml::Ticks(t) = &self.nvml
            && t.is_empty()
        {
            return Err(RecordingError::NoGpuTicks);
        }
        Ok(())
    }

    /// Splits the recording into its two sources: the host, and NVML (or its start error).
    pub fn into_sources(self) -> (RecordedHost, Result<RecordedGpus, GpuError>) {
        let host = RecordedHost {
            ticks: self.host,
            next: 0,
        };
        let gpus = match self.nvml {
            RecordedNvml::InitError(e) => Err(e),
            RecordedNvml::Ticks(ticks) => Ok(RecordedGpus {
                ticks,
                next: 0,
                current: None,
            }),
        };
        (host, gpus)
    }
}

/// Replays recorded host readings, one per `read`; the last one repeats.
#[derive(Debug, Clone)]
pub struct RecordedHost {
    ticks: Vec<RecordedHostTick>,
    next: usize,
}

impl HostSource for RecordedHost {
    fn read(&mut self) -> HostReading {
        let Some(tick) = self
            .ticks
            .get(self.next.min(self.ticks.len().saturating_sub(1)))
        else {
            let why = "the recording has no host readings".to_owned();
            return HostReading {
                cpu_cores: Err(why.clone()),
                cpu_load_pct: Err(why.clone()),
                ram_total_mb: Err(why.clone()),
                ram_free_mb: Err(why),
            };
        };
        self.next = self.next.saturating_add(1);
        HostReading {
            cpu_cores: tick.cpu_cores.get(),
            cpu_load_pct: tick.cpu_load_pct.get(),
            ram_total_mb: tick.ram_total_mb.get(),
            ram_free_mb: tick.ram_free_mb.get(),
        }
    }
}

/// Replays recorded NVML answers. Each `device_count` call starts the next tick; the last
/// tick repeats.
#[derive(Debug, Clone)]
pub struct RecordedGpus {
    ticks: Vec<RecordedGpuTick>,
    next: usize,
    current: Option<usize>,
}

impl RecordedGpus {
    fn device(&self, index: u32) -> Result<&RecordedDevice, GpuError> {
        let tick = self
            .current
            .and_then(|c| self.ticks.get(c))
            .ok_or_else(|| GpuError::new(GpuErrorKind::Uninitialized))?;
        usize::try_from(index)
            .ok()
            .and_then(|i| tick.devices.get(i))
            .ok_or_else(|| GpuError::new(GpuErrorKind::InvalidArgument))
    }
}

impl GpuSource for RecordedGpus {
    fn device_count(&mut self) -> Result<u32, GpuError> {
        let at = self.next.min(self.ticks.len().saturating_sub(1));
        let tick = self.ticks.get(at).ok_or_else(|| {
            GpuError::with_detail(GpuErrorKind::NoData, "the recording has no NVML ticks")
        })?;
        self.current = Some(at);
        self.next = self.next.saturating_add(1);
        tick.device_count.get()
    }

    fn name(&mut self, index: u32) -> Result<String, GpuError> {
        self.device(index)?.name.get()
    }

    fn memory(&mut self, index: u32) -> Result<GpuMemory, GpuError> {
        self.device(index)?.memory.get()
    }
}
