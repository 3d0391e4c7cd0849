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
//! The profile describes the machine, not this second's free memory: capacity comes from
//! totals, and memory the runtime's own loaded models hold is reclaimable (the runtime can
//! unload them), so loading a model neither shrinks the recommendations nor is subtracted
//! twice. The constants are the `profile` section of the versioned thresholds file
//! (`H_vram = vram_headroom_mb`, `H_ram = ram_headroom_mb`, `KV = default_kv_cache_bytes_per_token`,
//! `CAP = max_context_tokens_cap`, `CPS = cores_per_session`, `CTX = session_context_tokens`).
//!
//! - The runtime's loaded models: the catalog entries whose latest `model_load` succeeded,
//!   `L` = the sum of their `model_required_vram_mb`. There is no unload event, so `L` may
//!   name models the runtime has since dropped; what is counted as theirs is capped at the
//!   memory actually in use (below), never more.
//! - Per GPU that was read (total `T`, driver-reserved `R`, free `F`; NVML memory info v2,
//!   whose free excludes reserved memory, so reserved memory is never usable; `R = 0` when the
//!   driver does not report it, which counts it as used):
//!   `used = max(0, T − R − F)`, `runtime = min(used, L)` on the GPU the runtime's models are
//!   counted on and 0 on the others, `other = used − runtime` (memory of other programs, not
//!   reclaimable), `usable = max(0, T − R − H_vram − other)` (equal to
//!   `max(0, F + runtime − H_vram)`).
//!   With several GPUs the device of a model is unknown: all the runtime's models are counted
//!   on one GPU, the one where reclaiming them leaves the most usable memory (ties: the lowest
//!   index). This is the best case for the best GPU, and it keeps every recommendation from
//!   going down when free memory grows or a GPU can be read again (a greedy split by used
//!   memory would not). A model must fit on one GPU (splitting layers across GPUs depends on
//!   the runtime, so the profile does not count on it); the best GPU is the pool below.
//! - On a CPU-only machine (NVML could not start, or counts no GPU) the one pool is RAM, the
//!   same way: `used = max(0, ram_total_mb − ram_free_mb)`, `runtime = min(used, L)`,
//!   `usable = max(0, ram_total_mb − H_ram − (used − runtime))`. Without a `ram_total_mb`,
//!   `usable = max(0, ram_free_mb − H_ram)` (nothing counted as reclaimable).
//! - `max_recommended_model_vram_mb = floor(usable)` of the best pool: the most usable VRAM
//!   on one GPU, or usable RAM on a CPU-only machine (the field keeps the specification's
//!   name; `from` says RAM). Unknown when no GPU was read, or RAM is unavailable.
//! - `max_recommended_context_tokens = min(CAP, floor(max(0, usable − M) × 1048576 / KV))`
//!   of the best pool, `M` the `model_required_vram_mb` of the largest loaded model (0 when
//!   none): the context that fits beside the largest model the runtime runs.
//! - per model: `supported_context_tokens = min(CAP, floor(max(0, usable − R_m) × 1048576 /
//!   K_m))` of the best pool, with `R_m` the model's `model_required_vram_mb` and `K_m` its
//!   `kv_cache_bytes_per_token` (or KV). `usable` already counts the model as reclaimable when
//!   it is loaded, so its weights are subtracted once. A runtime-reported
//!   `local_supported_context_tokens` (latest `context_request` carrying one) takes
//!   precedence and `from` says so. Unknown without a `model_load`.
//! - `max_recommended_concurrency = max(1, min(B, S))` with `B = floor(cpu_cores / CPS)` and,
//!   once a model has loaded, `S = floor(max(0, usable − M_c) × 1048576 / (K_c × CTX))`: the
//!   sessions whose own KV cache of `CTX` tokens fits beside the model loaded most recently
//!   (`ModelCatalog::current`, the one the runtime runs now as far as the log tells; sized for
//!   the largest model ever loaded, an 8 GB laptop running a 2.4 GB model was told it could
//!   serve 2 sessions instead of 3; `K_c` its KV bytes per token, or KV); with no model loaded, `S` does not apply. It is never
//!   scaled by the measured CPU load: that load is the workload's own (a runtime generating
//!   keeps the CPU busy), and queue wait is the measured sign of overload. Unknown without
//!   `cpu_cores`, or when a model has loaded and the pool is unknown.
//!
//! Every field's `from` shows the formula with the numbers substituted; a field whose inputs
//! are unavailable is `unknown` with the reason. More free VRAM or RAM never lowers any
//! recommendation, loading a model (its memory leaving the free memory) never lowers the
//! largest-model recommendation or a model's supported context, and the CPU load changes
//! nothing (property tests in `tests/probe.rs`).
//!
//! [`fit_check`] ("does this fit now", `GET /v1/fit`) uses the same pools: a model fits when
//! its need fits in one pool's `usable`, so a model of the runtime that is already loaded
//! fits; when the fit needs memory the runtime's models hold, the reason says so.

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
