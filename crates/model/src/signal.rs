//! The sampled signals of the specification (Section 2), spelled exactly as there.

use serde::{Deserialize, Serialize};

/// One sampled hardware or concurrency signal.
///
/// `cpu_load_p95` is derived by the service from `cpu_load_pct` per time window, and
/// `ram_total_mb` is recorded beside `ram_free_mb` so that a profile can be explained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    GpuVramTotalMb,
    GpuVramFreeMb,
    CpuCores,
    CpuLoadP95,
    CpuLoadPct,
    RamFreeMb,
    RamTotalMb,
    ActiveSessions,
    ActiveGenerations,
    QueueWaitMs,
}

impl Signal {
    /// Every signal, in a fixed order.
    pub const ALL: [Signal; 10] = [
        Signal::GpuVramTotalMb,
        Signal::GpuVramFreeMb,
        Signal::CpuCores,
        Signal::CpuLoadP95,
        Signal::CpuLoadPct,
        Signal::RamFreeMb,
        Signal::RamTotalMb,
        Signal::ActiveSessions,
        Signal::ActiveGenerations,
        Signal::QueueWaitMs,
    ];

    /// The name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::GpuVramTotalMb => "gpu_vram_total_mb",
            Signal::GpuVramFreeMb => "gpu_vram_free_mb",
            Signal::CpuCores => "cpu_cores",
            Signal::CpuLoadP95 => "cpu_load_p95",
            Signal::CpuLoadPct => "cpu_load_pct",
            Signal::RamFreeMb => "ram_free_mb",
            Signal::RamTotalMb => "ram_total_mb",
            Signal::ActiveSessions => "active_sessions",
            Signal::ActiveGenerations => "active_generations",
            Signal::QueueWaitMs => "queue_wait_ms",
        }
    }

    /// Parses a wire name; `None` for anything that is not a signal of the specification.
    pub fn parse(name: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Signals that count things take whole values only.
    pub fn is_count(self) -> bool {
        matches!(
            self,
            Signal::CpuCores | Signal::ActiveSessions | Signal::ActiveGenerations
        )
    }

    /// Signals that are percentages stay within 0..=100.
    pub fn is_percent(self) -> bool {
        matches!(self, Signal::CpuLoadPct | Signal::CpuLoadP95)
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip_through_serde() {
        for s in Signal::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(Signal::parse(s.as_str()), Some(s));
        }
        assert_eq!(Signal::parse("gpu_vram_used_mb"), None);
    }
}
