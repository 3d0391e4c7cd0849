//! kora-probe: the hardware probe and the LocalCapabilityProfile (specification Sections 2
//! and 3).
//!
//! The probe reads CPU cores, CPU load and RAM through sysinfo and each GPU's VRAM through
//! NVML (nvml-wrapper), and returns plain owned [`HardwareSnapshot`]s. It must never write to
//! a store, read a clock for a record's time (the caller passes `ts_ms`), or depend on the
//! policy or server crates. A reading it could not take is absent with the reason, never 0 or
//! NaN. A machine without an NVIDIA library or driver is a normal state: NVML is initialised
//! once, and its failure is carried as `gpu_unavailable = "no NVIDIA GPU (<reason>)"`.
//!
//! Where readings come from is behind two small traits, [`GpuSource`] (NVML) and
//! [`HostSource`] (sysinfo), so recorded machines ([`Recording`]) replay through the same code.
//!
//! # Units and readings
//!
//! Memory is in MB of 1,048,576 bytes (what `nvidia-smi` prints as MiB). GPU free VRAM is
//! NVML's memory info v2 `free`, which excludes memory the driver reserves (a driver without
//! v2 gives no VRAM figure rather than v1's, which counts reserved memory as free). RAM free is
//! the operating system's *available* memory (free plus reclaimable caches). `cpu_cores` is the
//! number of logical CPUs. CPU load is the busy share of CPU time between two readings at
//! least 200 ms apart; the first snapshot says it is unavailable. GPU totals are sums over the
//! GPUs, present only when every GPU was read (a partial sum would understate the machine).
//!
//! # Profile formulas
//!
//! The constants are the `profile` section of the versioned thresholds file
//! (`H_vram = vram_headroom_mb`, `H_ram = ram_headroom_mb`, `KV = default_kv_cache_bytes_per_token`,
//! `CAP = max_context_tokens_cap`, `CPS = cores_per_session`, `BUSY = cpu_busy_pct`).
//!
//! - `usable(gpu) = max(0, vram_free_mb(gpu) − H_vram)`, over the GPUs that were read.
//!   A model must fit on one GPU (splitting layers across GPUs depends on the runtime, so the
//!   profile does not count on it). On a CPU-only machine (NVML could not start, or counts no
//!   GPU), `usable = max(0, ram_free_mb − H_ram)`.
//! - `max_recommended_model_vram_mb = max over GPUs of floor(usable(gpu))`. Unknown when no GPU
//!   was read, with the reason (on a CPU-only machine: "no NVIDIA GPU (...)").
//! - `max_recommended_context_tokens = min(CAP, floor(max(0, usable − M) × 1048576 / KV))`,
//!   where `usable` is the best GPU's (or RAM on a CPU-only machine) and `M` the
//!   `model_required_vram_mb` of the largest model whose latest load succeeded (0 when none
//!   has). Free memory is read with whatever is loaded at the time, so this is conservative.
//! - `max_recommended_concurrency = max(1, S)` with `B = floor(cpu_cores / CPS)`, and
//!   `S = floor(B × (100 − p95) / (100 − BUSY))` when the window p95 of CPU load `p95 > BUSY`,
//!   else `S = B`. Unknown without `cpu_cores`; when no p95 was measured yet (the snapshot's
//!   `cpu_load_p95` is filled by the service from the latest closed window), it is not scaled
//!   and `from` says so. It is not limited by the KV budget: the context recommendation
//!   already gives one session the whole budget.
//! - per model: `supported_context_tokens = min(CAP, floor(max(0, usable − R) × 1048576 / K))`
//!   with `R` the model's `model_required_vram_mb` and `K` its `kv_cache_bytes_per_token`
//!   (or KV). A runtime-reported `local_supported_context_tokens` (latest `context_request`
//!   carrying one) takes precedence and `from` says so. Unknown without a `model_load`.
//!
//! Every field's `from` shows the formula with the numbers substituted; a field whose inputs
//! are unavailable is `unknown` with the reason. More free VRAM or RAM never lowers any
//! recommendation (every formula is non-decreasing in them).

pub mod host;
pub mod nvml;
pub mod probe;
pub mod profile;
pub mod recorded;
pub mod samples;
pub mod source;

pub use host::SysinfoHost;
pub use kora_model::HardwareSnapshot;
pub use nvml::NvmlGpus;
pub use probe::{MAX_GPUS, Probe};
pub use profile::{CatalogEntry, ModelCatalog, compute_profile, fit_check, fmt_num};
pub use recorded::{RecordedGpus, RecordedHost, Recording, RecordingError};
pub use samples::snapshot_to_samples;
pub use source::{
    BYTES_PER_MB, GpuError, GpuErrorKind, GpuMemory, GpuSource, HostReading, HostSource,
};
