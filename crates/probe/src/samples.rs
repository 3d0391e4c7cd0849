//! A snapshot as the `sample` records the service ingests each tick.

use kora_model::{HardwareSnapshot, Sample, Signal};

use crate::source::bounded_reason;

/// The samples of one snapshot, in a fixed order: the GPU totals (`device` absent), then each
/// GPU's total and free VRAM (`device` = its index), then `cpu_cores`, `cpu_load_pct`,
/// `ram_free_mb`, `ram_total_mb`. Every sample carries the snapshot's `ts_ms`.
///
/// A reading the snapshot lacks becomes a sample with `unavailable` (the snapshot's reason)
/// and no value, never 0. Values are made to pass [`kora_model::Validate`]: `cpu_load_pct` is
/// clamped into 0..=100 (sysinfo's ratio can overshoot by rounding); `cpu_cores` is whole by
/// type; MB figures are kept exact. A value that is not finite or is negative is never sent as
/// a number: it becomes `unavailable` with the figure named.
pub fn snapshot_to_samples(s: &HardwareSnapshot) -> Vec<Sample> {
    let ts = s.ts_ms;
    let why = |field: &str| -> String {
        s.unavailable
            .get(field)
            .cloned()
            .or_else(|| {
                s.gpu_unavailable
                    .clone()
                    .filter(|_| field.starts_with("gpu_"))
            })
            .unwrap_or_else(|| "not read by the probe".to_owned())
    };
    let mut out = vec![
        sample(
            ts,
            Signal::GpuVramTotalMb,
            s.gpu_vram_total_mb,
            || why("gpu_vram_total_mb"),
            None,
        ),
        sample(
            ts,
            Signal::GpuVramFreeMb,
            s.gpu_vram_free_mb,
            || why("gpu_vram_free_mb"),
            None,
        ),
    ];
    for g in &s.gpus {
        let gwhy = || {
            g.unavailable
                .clone()
                .unwrap_or_else(|| "not read by the probe".to_owned())
        };
        out.push(sample(
            ts,
            Signal::GpuVramTotalMb,
            g.vram_total_mb,
            gwhy,
            Some(g.index),
        ));
        out.push(sample(
            ts,
            Signal::GpuVramFreeMb,
            g.vram_free_mb,
            gwhy,
            Some(g.index),
        ));
    }
    out.push(sample(
        ts,
        Signal::CpuCores,
        s.cpu_cores.map(f64::from),
        || why("cpu_cores"),
        None,
    ));
    out.push(sample(
        ts,
        Signal::CpuLoadPct,
        s.cpu_load_pct,
        || why("cpu_load_pct"),
        None,
    ));
    out.push(sample(
        ts,
        Signal::RamFreeMb,
        s.ram_free_mb,
        || why("ram_free_mb"),
        None,
    ));
    out.push(sample(
        ts,
        Signal::RamTotalMb,
        s.ram_total_mb,
        || why("ram_total_mb"),
        None,
    ));
    out
}

fn sample(
    ts_ms: i64,
    signal: Signal,
    value: Option<f64>,
    reason: impl FnOnce() -> String,
    device: Option<u32>,
) -> Sample {
    let (value, unavailable) = match value {
        Some(v) if !v.is_finite() || v < 0.0 => (
            None,
            Some(format!("the probe read an invalid figure ({v})")),
        ),
        Some(v) if signal.is_percent() => (Some(v.min(100.0)), None),
        Some(v) if signal.is_count() => (Some(v.floor()), None),
        Some(v) => (Some(v), None),
        None => (None, Some(bounded_reason(&reason()))),
    };
    Sample {
        id: None,
        ts_ms: Some(ts_ms),
        signal,
        value,
        unavailable,
        device,
        model_id: None,
        session_id: None,
    }
}
