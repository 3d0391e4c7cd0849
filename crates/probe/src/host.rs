//! The host's CPU and RAM through sysinfo.

use std::time::Instant;

use sysinfo::{CpuRefreshKind, MINIMUM_CPU_UPDATE_INTERVAL, MemoryRefreshKind, System};

use crate::source::{BYTES_PER_MB, HostReading, HostSource};

/// CPU and RAM through sysinfo. The `System` is kept between readings: CPU load is the busy
/// share of CPU time between two readings, so the first reading has no load figure and says
/// so, and a reading less than sysinfo's minimum interval (200 ms on Linux) after the previous
/// one has none either (sysinfo would hand back the old figure as if it were new).
#[derive(Debug)]
pub struct SysinfoHost {
    system: Result<System, String>,
    /// When CPU times were last read (a monotonic instant, used only for the interval rule).
    last_cpu_read: Option<Instant>,
}

impl SysinfoHost {
    pub fn new() -> SysinfoHost {
        SysinfoHost {
            system: System::new().map_err(|e| format!("sysinfo could not start: {e}")),
            last_cpu_read: None,
        }
    }
}

impl Default for SysinfoHost {
    fn default() -> Self {
        SysinfoHost::new()
    }
}

impl HostSource for SysinfoHost {
    fn read(&mut self) -> HostReading {
        let system = match &mut self.system {
            Ok(s) => s,
            Err(reason) => {
                return HostReading {
                    cpu_cores: Err(reason.clone()),
                    cpu_load_pct: Err(reason.clone()),
                    ram_total_mb: Err(reason.clone()),
                    ram_free_mb: Err(reason.clone()),
                };
            }
        };

        system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let total = system.total_memory();
        let available = system.available_memory();
        let (ram_total_mb, ram_free_mb) = if total == 0 {
            let why = "the operating system reported no RAM figures (is /proc/meminfo readable?)";
            (Err(why.to_owned()), Err(why.to_owned()))
        } else {
            (
                Ok(total as f64 / BYTES_PER_MB),
                Ok(available.min(total) as f64 / BYTES_PER_MB),
            )
        };

        let now = Instant::now();
        let cpu_load_pct = match self.last_cpu_read {
            None => {
                system.refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
                self.last_cpu_read = Some(now);
                Err(format!(
                    "CPU load needs two readings at least {} ms apart; this is the first",
                    MINIMUM_CPU_UPDATE_INTERVAL.as_millis()
                ))
            }
            Some(last) if now.duration_since(last) < MINIMUM_CPU_UPDATE_INTERVAL => Err(format!(
                "CPU load needs readings at least {} ms apart; the previous one was {} ms ago",
                MINIMUM_CPU_UPDATE_INTERVAL.as_millis(),
                now.duration_since(last).as_millis()
            )),
            Some(_) => {
                system.refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
                self.last_cpu_read = Some(now);
                let load = f64::from(system.global_cpu_usage());
                if load.is_finite() {
                    // Rounding in the busy/total ratio can land a hair outside 0..=100.
                    Ok(load.clamp(0.0, 100.0))
                } else {
                    Err("the operating system reported no usable CPU times".to_owned())
                }
            }
        };

        let cores = system.cpus().len();
        let cpu_cores = match u32::try_from(cores) {
            Ok(0) => {
                Err("the operating system listed no CPUs (is /proc/stat readable?)".to_owned())
            }
            Ok(n) => Ok(n),
            Err(_) => Err(format!("{cores} CPUs is more than the probe can count")),
        };

        HostReading {
            cpu_cores,
            cpu_load_pct,
            ram_total_mb,
            ram_free_mb,
        }
    }
}
