//! The machine-day simulator (issue 12, "Decisions that are right on real machines").
//!
//! Five recorded machines (the probe's fixtures in `crates/probe/tests/fixtures/`, with the
//! hardware the issue names) live through a week of ordinary use, and then through each local
//! limit on its own, against the real service: `kora_server::serve` on a `127.0.0.1:0`
//! listener over a real store, the follower (the engine) running inside it. Nothing is handed
//! to the engine directly:
//!
//! - the machine's readings are generated from its hardware and the workload's state (a loaded
//!   model takes its VRAM, or its RAM on the CPU-only box; generating keeps the CPU busy, 95 %
//!   on the CPU-only box) as recorded NVML answers (bytes) and host readings, replayed through
//!   `kora_probe::Probe::from_recording` and ingested with
//!   `Pipeline::ingest_snapshot`, the probe sampler's one-tick path. The probe
//!   replays one recorded tick per snapshot and keeps only log bookkeeping between them, so one
//!   probe per service lifetime and day replays that day's ticks (a restarted service gets a
//!   fresh probe, whose first CPU reading is unavailable, as sysinfo's is);
//! - the workload (KORA Studio) talks HTTP over loopback: `/v1/events`, `/v1/runs`,
//!   `/v1/samples`, feedback and readiness, every record with its simulated `ts_ms`.
//!
//! Time is compressed: simulated time starts at midnight (UTC) eight days before now and only
//! moves forward, so it stays behind real time (the service refuses records more than 5
//! minutes ahead). The probe ticks once per simulated minute (the service's default is 5 s;
//! at 60 s each time window of the thresholds' `window_seconds = 60` holds one reading of each
//! hardware signal, and a CPU reading is the busy share of the minute before it, which is what
//! sysinfo reports at that interval). Each simulated minute is one step: the probe's tick at the
//! minute's start, then the workload's records of the minute (events, runs, samples, then
//! session ends, one batch each), then a pass of the follower (`Analytics::catch_up`, the
//! follower's own pass, called so that every step ends with the log folded; the follower
//! task keeps running inside `serve` as well).
//!
//! The workload is deterministic (seeded RNG per machine and day). Healthy days: sessions in
//! daytime hours with a lunch break, stretches of 2-3 models (a model switch is a `model_load`
//! that reports the VRAM it reclaims), interactive and batch use, bursts of sessions within the
//! machine's capacity, 4k-8k context requests well inside what the model supports on that
//! machine, idle nights (no runs; the probe keeps ticking), a light Saturday, an idle Sunday,
//! and a restart of the service on day 4 at 13:07 (stop, reopen the store, start again).
//! The generator checks its own output against the limits (every run under 4,000 ms of model
//! latency and 6,000 ms in total, at most one validation retry, no budget breach, queue waits
//! under 300 ms, sessions and context within what the hardware holds), so any suggestion on a
//! healthy day is a false one.
//!
//! At a 60 s tick a CPU reading averages the minute, so a window's p95 stays well below the
//! load while generating unless the machine generates the whole minute; the service's default
//! 5 s probe sees the peaks. So each machine also lives a busy half hour (batch sessions within
//! capacity) at the default 5 s interval, on a fresh service; its suggestions are false too.
//!
//! Injected limits run each on a fresh service after 30 minutes of healthy warm-up; the first
//! suggestion of the category is dismissed, as a user might, and the limit goes on, so that
//! the ladder reaches Krako Cloud and the cloud estimate can be checked. The delay is counted
//! in 60 s windows from the one holding the injection's start (1: the same window), or in
//! blocks of 10 runs of the model closed since the start, as the service's own
//! `GET /v1/windows` lists them.
//!
//! What is not deterministic: the follower task inside `serve` runs beside the probe path, so
//! whether a follower pass falls between a tick's window records and its hardware snapshot
//! varies from run to run; the number of profile records the follower writes varies by a few
//! percent. The decisions did not vary between runs of this workload.
//!
//! Run it with `cargo test --test tests simulator -- --nocapture`; the report is printed and
//! written to `target/simulator-report.md` and `target/simulator-report.json`. The goals are
//! asserted after the report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kora_model::{
    ContextOom, ContextRequest, Event, EventBatch, LoadOutcome, ModelLoad, ProfileConstants,
    Readiness, Run, RunBatch, Sample, SampleBatch, SessionEvent, Signal, Substrate, prompt_hash,
};
use kora_pipeline::{Pipeline, PipelineOptions};
use kora_policy::Thresholds;
use kora_probe::recorded::{
    RecordedAnswer, RecordedDevice, RecordedGpuTick, RecordedHostTick, RecordedNvml, RecordedValue,
};
use kora_probe::{GpuError, GpuMemory, Probe, Recording};
use kora_server::{AppState, Config, HostPolicy};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::common::agent;

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
/// The simulated probe interval (see the module documentation).
const TICK: i64 = MIN;
const MB: f64 = 1_048_576.0;
/// The healthy week.
const DAYS: u32 = 7;
/// The restart: day 4 (index 3), 13:07.
const RESTART_DAY: u32 = 3;
const RESTART_AT: i64 = 13 * HOUR + 7 * MIN;
/// The store's file name, as `kora-telemetry serve` names it.
const DB_FILE: &str = "kora-telemetry.redb";
const CATEGORIES: [&str; 5] = [
    "model_fit",
    "context",
    "latency",
    "concurrency",
    "reliability",
];

// ---------------------------------------------------------------------------------------------
// Machines

#[derive(Debug, Clone)]
struct GpuSpec {
    name: String,
    total_bytes: u64,
    reserved_bytes: u64,
    /// Memory held by other processes (display, browser): the fixture's total − reserved − free.
    other_bytes: u64,
}

#[derive(Debug, Clone)]
struct ModelSpec {
    id: &'static str,
    vram_mb: f64,
    /// Its KV cache, bytes per context token.
    kv: f64,
    /// Whether the runtime reports `kv_cache_bytes_per_token` in its `model_load`.
    report_kv: bool,
    quantization: &'static str,
    params_b: f64,
    /// The GPU it loads on (ignored on the CPU-only box: RAM).
    device: u32,
    prompt_tps: f64,
    gen_tps: f64,
    /// Healthy prompt and output sizes (tokens).
    tokens_in: (u64, u64),
    tokens_out: (u64, u64),
}

#[allow(clippy::too_many_arguments)]
fn model(
    id: &'static str,
    vram_mb: f64,
    kv: f64,
    report_kv: bool,
    quantization: &'static str,
    params_b: f64,
    device: u32,
    speed: (f64, f64),
    tokens_in: (u64, u64),
    tokens_out: (u64, u64),
) -> ModelSpec {
    ModelSpec {
        id,
        vram_mb,
        kv,
        report_kv,
        quantization,
        params_b,
        device,
        prompt_tps: speed.0,
        gen_tps: speed.1,
        tokens_in,
        tokens_out,
    }
}

#[derive(Debug)]
struct Machine {
    id: &'static str,
    description: String,
    cores: u32,
    ram_total_mb: f64,
    /// Available RAM with no model loaded.
    ram_free_mb: f64,
    /// The GPUs, or the error NVML fails to start with (CPU-only).
    gpus: Result<Vec<GpuSpec>, GpuError>,
    idle_cpu_pct: f64,
    /// CPU load while a model generates.
    gen_cpu_pct: f64,
    /// The first model is the one the machine uses most.
    models: Vec<ModelSpec>,
    /// NVML answers replayed instead of the live GPUs: (day, time of day, answer).
    outage: Vec<(u32, i64, RecordedGpuTick)>,
}

impl Machine {
    fn model(&self, id: &str) -> usize {
        self.models
            .iter()
            .position(|m| m.id == id)
            .unwrap_or_else(|| panic!("{} has no model {id}", self.id))
    }

    /// What a model and its KV caches can use on `device` when none of the runtime's models
    /// is loaded: the hardware's truth (GPU total − reserved − other processes − headroom, or
    /// available RAM − headroom on the CPU-only box).
    fn usable_mb(&self, device: u32, c: &ProfileConstants) -> f64 {
        match &self.gpus {
            Ok(g) => {
                let g = &g[device as usize];
                (g.total_bytes - g.reserved_bytes - g.other_bytes) as f64 / MB - c.vram_headroom_mb
            }
            Err(_) => self.ram_free_mb - c.ram_headroom_mb,
        }
    }

    /// The context a model really supports here (the design's formula, on the truth).
    fn supported_context(&self, model: usize, c: &ProfileConstants) -> f64 {
        let m = &self.models[model];
        let left = (self.usable_mb(m.device, c) - m.vram_mb).max(0.0);
        (left * MB / m.kv)
            .floor()
            .min(c.max_context_tokens_cap as f64)
    }

    /// Sessions the machine serves at once: its cores (the profile's `cores_per_session`).
    fn capacity(&self, c: &ProfileConstants) -> u32 {
        ((f64::from(self.cores) / c.cores_per_session).floor() as u32).max(1)
    }

    /// Sessions of `ctx` tokens a loaded model serves at once: the capacity, and the memory
    /// left for their KV caches.
    fn max_sessions(&self, model: usize, ctx: u64, c: &ProfileConstants) -> u32 {
        let m = &self.models[model];
        let left = (self.usable_mb(m.device, c) - m.vram_mb).max(0.0);
        let by_memory = (left * MB / (ctx as f64 * m.kv)).floor() as u32;
        self.capacity(c).min(by_memory)
    }
}

/// A recorded machine as it is before the runtime loads anything: the fixture's first NVML
/// tick holds the models its events loaded (their memory is not free), and the simulator
/// loads its own, so that memory is given back to the GPU that uses the most (capped at what
/// is in use). What is left in use belongs to other programs (a desktop, a browser).
fn fixture(name: &str) -> Recording {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/probe/tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let mut recording = v["recording"].clone();
    let loaded_mb: f64 = v["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "model_load" && e["outcome"] == "ok")
        .filter_map(|e| e["model_required_vram_mb"].as_f64())
        .sum();
    if let Some(devices) = recording
        .pointer_mut("/nvml/ticks/0/devices")
        .and_then(Value::as_array_mut)
    {
        let used = |d: &Value| {
            let m = &d["memory"];
            m["total_bytes"].as_u64().unwrap_or(0)
                - m["free_bytes"].as_u64().unwrap_or(0)
                - m["reserved_bytes"].as_u64().unwrap_or(0)
        };
        if let Some(busiest) = devices.iter_mut().max_by_key(|d| used(d)) {
            let back = ((loaded_mb * MB) as u64).min(used(busiest));
            let free = busiest["memory"]["free_bytes"].as_u64().unwrap_or(0);
            busiest["memory"]["free_bytes"] = serde_json::json!(free + back);
        }
    }
    Recording::from_json(&recording.to_string()).unwrap()
}

fn value<T: Clone>(v: &RecordedValue<T>) -> Result<T, String> {
    match v {
        RecordedValue::Value(x) => Ok(x.clone()),
        RecordedValue::Unavailable { unavailable } => Err(unavailable.clone()),
    }
}

/// The first host reading of a recording: (cores, RAM total, RAM free).
fn host_of(r: &Recording) -> (u32, f64, f64) {
    let h = &r.host[0];
    (
        value(&h.cpu_cores).unwrap(),
        value(&h.ram_total_mb).unwrap(),
        value(&h.ram_free_mb).unwrap(),
    )
}

/// The GPUs of a recording's first NVML tick (or its start error).
fn gpus_of(r: &Recording) -> Result<Vec<GpuSpec>, GpuError> {
    match &r.nvml {
        RecordedNvml::InitError(e) => Err(e.clone()),
        RecordedNvml::Ticks(t) => Ok(t[0]
            .devices
            .iter()
            .map(|d| {
                let (RecordedAnswer::Value(name), RecordedAnswer::Value(mem)) =
                    (&d.name, &d.memory)
                else {
                    panic!("the first tick of a fixture reads its GPUs")
                };
                let reserved = mem.reserved_bytes.unwrap_or(0);
                GpuSpec {
                    name: name.clone(),
                    total_bytes: mem.total_bytes,
                    reserved_bytes: reserved,
                    other_bytes: mem.total_bytes - reserved - mem.free_bytes,
                }
            })
            .collect()),
    }
}

/// Why sysinfo's first CPU reading after a start is unavailable (the desktop fixture's words).
fn first_cpu_reading() -> String {
    let r = fixture("desktop_rtx4090.json");
    value(&r.host[0].cpu_load_pct).expect_err("the fixture's first CPU reading is unavailable")
}

fn machines() -> Vec<Machine> {
    let kv_default = 131_072.0;
    let desktop = fixture("desktop_rtx4090.json");
    let laptop = fixture("laptop_8gb.json");
    let cpu = fixture("cpu_only.json");
    let two = fixture("two_gpus.json");
    let ada = fixture("nvml_fails_mid_run.json");
    let lost = match &ada.nvml {
        RecordedNvml::Ticks(t) => t.clone(),
        RecordedNvml::InitError(_) => panic!("nvml_fails_mid_run.json has NVML ticks"),
    };
    let (dc, dt, df) = host_of(&desktop);
    let (lc, lt, lf) = host_of(&laptop);
    let (tc, tt, tf) = host_of(&two);
    let (ac, at, af) = host_of(&ada);
    vec![
        Machine {
            id: "desktop-4090",
            description: format!(
                "{} (desktop_rtx4090.json); a 16 GB model most of the day",
                desktop.description
            ),
            cores: dc,
            ram_total_mb: dt,
            ram_free_mb: df,
            gpus: gpus_of(&desktop),
            idle_cpu_pct: 4.0,
            gen_cpu_pct: 11.0,
            models: vec![
                model(
                    "qwen2.5-32b-instruct",
                    16384.0,
                    262_144.0,
                    true,
                    "Q3_K_M",
                    32.8,
                    0,
                    (1800.0, 38.0),
                    (500, 2000),
                    (16, 48),
                ),
                model(
                    "qwen2.5-14b-instruct",
                    10240.0,
                    196_608.0,
                    true,
                    "Q4_K_M",
                    14.8,
                    0,
                    (3500.0, 70.0),
                    (800, 3500),
                    (30, 90),
                ),
                model(
                    "llama-3.1-8b-instruct",
                    6144.0,
                    kv_default,
                    false,
                    "Q4_K_M",
                    8.0,
                    0,
                    (6000.0, 120.0),
                    (800, 3500),
                    (40, 160),
                ),
            ],
            outage: Vec::new(),
        },
        Machine {
            id: "laptop-4060",
            description: format!("{} (laptop_8gb.json)", laptop.description),
            cores: lc,
            ram_total_mb: lt,
            ram_free_mb: lf,
            gpus: gpus_of(&laptop),
            idle_cpu_pct: 6.0,
            gen_cpu_pct: 15.0,
            models: vec![
                model(
                    "phi-3-mini",
                    2400.0,
                    393_216.0,
                    true,
                    "Q4_K_M",
                    3.8,
                    0,
                    (2500.0, 60.0),
                    (300, 1500),
                    (20, 90),
                ),
                model(
                    "llama-3.1-8b-instruct",
                    6144.0,
                    kv_default,
                    false,
                    "Q4_K_M",
                    8.0,
                    0,
                    (1500.0, 35.0),
                    (300, 1200),
                    (16, 44),
                ),
                model(
                    "qwen2.5-3b-instruct",
                    2300.0,
                    36_864.0,
                    true,
                    "Q4_K_M",
                    3.1,
                    0,
                    (3000.0, 70.0),
                    (300, 2000),
                    (20, 100),
                ),
            ],
            outage: Vec::new(),
        },
        Machine {
            id: "cpu-only-16c",
            description: format!(
                "CPU-only box, 16 logical CPUs, 64 GB RAM; NVML as in cpu_only.json ({})",
                cpu.description
            ),
            cores: 16,
            ram_total_mb: 64_298.0,
            ram_free_mb: 52_000.0,
            gpus: gpus_of(&cpu),
            idle_cpu_pct: 3.0,
            gen_cpu_pct: 95.0,
            models: vec![
                model(
                    "llama-3.2-3b-instruct",
                    2600.0,
                    114_688.0,
                    true,
                    "Q4_K_M",
                    3.2,
                    0,
                    (350.0, 28.0),
                    (150, 400),
                    (12, 32),
                ),
                model(
                    "qwen2.5-7b-instruct",
                    4700.0,
                    57_344.0,
                    true,
                    "Q4_K_M",
                    7.6,
                    0,
                    (160.0, 14.0),
                    (100, 220),
                    (8, 14),
                ),
                model(
                    "gemma-2-2b-it",
                    1900.0,
                    106_496.0,
                    false,
                    "Q4_K_M",
                    2.6,
                    0,
                    (500.0, 38.0),
                    (150, 500),
                    (12, 40),
                ),
            ],
            outage: Vec::new(),
        },
        Machine {
            id: "two-gpus",
            description: format!("{} (two_gpus.json)", two.description),
            cores: tc,
            ram_total_mb: tt,
            ram_free_mb: tf,
            gpus: gpus_of(&two),
            idle_cpu_pct: 3.0,
            gen_cpu_pct: 7.0,
            models: vec![
                model(
                    "qwen2.5-32b-instruct",
                    13000.0,
                    262_144.0,
                    true,
                    "IQ3_M",
                    32.8,
                    0,
                    (1000.0, 25.0),
                    (300, 1000),
                    (12, 30),
                ),
                model(
                    "llama-3.1-8b-instruct",
                    6144.0,
                    kv_default,
                    false,
                    "Q4_K_M",
                    8.0,
                    1,
                    (3500.0, 75.0),
                    (500, 3000),
                    (30, 100),
                ),
                model(
                    "mistral-nemo-12b",
                    7800.0,
                    163_840.0,
                    true,
                    "Q4_K_M",
                    12.2,
                    1,
                    (2200.0, 50.0),
                    (500, 2500),
                    (20, 60),
                ),
            ],
            outage: Vec::new(),
        },
        Machine {
            id: "rtx4070",
            description: format!(
                "{} (nvml_fails_mid_run.json); the GPU is lost for 5 ticks and NVML cannot count \
                 devices for 3 more one night (day 5, 02:10), then it is back",
                ada.description
            ),
            cores: ac,
            ram_total_mb: at,
            ram_free_mb: af,
            gpus: gpus_of(&ada),
            idle_cpu_pct: 4.0,
            gen_cpu_pct: 9.0,
            models: vec![
                model(
                    "llama-3.1-8b-instruct",
                    6144.0,
                    kv_default,
                    false,
                    "Q4_K_M",
                    8.0,
                    0,
                    (4000.0, 80.0),
                    (500, 3000),
                    (30, 100),
                ),
                model(
                    "qwen2.5-7b-instruct",
                    5400.0,
                    57_344.0,
                    true,
                    "Q4_K_M",
                    7.6,
                    0,
                    (4200.0, 85.0),
                    (500, 3000),
                    (30, 110),
                ),
                model(
                    "phi-3.5-mini-instruct",
                    2500.0,
                    393_216.0,
                    true,
                    "Q4_K_M",
                    3.8,
                    0,
                    (6000.0, 110.0),
                    (300, 2500),
                    (20, 150),
                ),
            ],
            outage: (0..8)
                .map(|i| {
                    let answer = if i < 5 { &lost[1] } else { &lost[2] };
                    (4, 2 * HOUR + (10 + i) * MIN, answer.clone())
                })
                .collect(),
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// The workload: what KORA Studio does, as timed records and machine-state changes

#[derive(Debug, Clone)]
enum Act {
    Event(Event),
    Run(Run),
    Sample(Sample),
    /// The runtime loads a model (its memory is taken from then on).
    Load {
        device: u32,
        model: usize,
    },
    /// The runtime unloads every model (idle timeout).
    Unload,
}

#[derive(Debug, Default)]
struct Plan {
    acts: Vec<(i64, Act)>,
    /// When a model was generating (merged by `finish`).
    busy: Vec<(i64, i64)>,
    /// Sessions open, for the `active_sessions` samples.
    sessions: Vec<(i64, i64)>,
}

impl Plan {
    fn push(&mut self, ts: i64, act: Act) {
        self.acts.push((ts, act));
    }

    /// Sorts the acts by time (stably) and merges the busy intervals.
    fn finish(mut self) -> Plan {
        self.acts.sort_by_key(|(ts, _)| *ts);
        self.busy.sort();
        let mut merged: Vec<(i64, i64)> = Vec::new();
        for (s, e) in self.busy.drain(..) {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.busy = merged;
        self
    }

    /// The share of `[a, b)` during which a model generated.
    fn busy_share(&self, a: i64, b: i64) -> f64 {
        let mut i = self.busy.partition_point(|&(_, e)| e <= a);
        let mut busy = 0;
        while let Some(&(s, e)) = self.busy.get(i) {
            if s >= b {
                break;
            }
            busy += e.min(b) - s.max(a);
            i += 1;
        }
        busy as f64 / (b - a) as f64
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    /// A person: think time between runs.
    Interactive,
    /// A pipeline: the next run right after the last.
    Batch,
    /// One run about every so many ms.
    Every(i64),
}

/// How a session's runs look.
#[derive(Debug, Clone, Copy)]
struct Shape {
    context_request: bool,
    queue_ms: (f64, f64),
    queue_samples: bool,
    tokens_out: Option<(u64, u64)>,
    retry_p: f64,
    retries: (u32, u32),
    breach_p: f64,
    /// Check that every run is well inside the limits.
    healthy: bool,
}

impl Shape {
    fn healthy(queue_ms: (f64, f64)) -> Shape {
        Shape {
            context_request: true,
            queue_ms,
            queue_samples: true,
            tokens_out: None,
            retry_p: 0.06,
            retries: (1, 1),
            breach_p: 0.0,
            healthy: true,
        }
    }
}

fn sample(signal: Signal, value: f64, ts: i64) -> Sample {
    Sample::reading(signal, ts, value)
}

fn r1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Generates one machine's workload, day after day (it remembers what the runtime has loaded).
struct Gen<'a> {
    m: &'a Machine,
    c: ProfileConstants,
    rng: StdRng,
    plan: Plan,
    prefix: String,
    runs: u64,
    sessions: u64,
    loaded: BTreeMap<u32, usize>,
}

impl<'a> Gen<'a> {
    fn new(m: &'a Machine, c: ProfileConstants, seed: u64) -> Gen<'a> {
        Gen {
            m,
            c,
            rng: StdRng::seed_from_u64(seed),
            plan: Plan::default(),
            prefix: m.id.to_owned(),
            runs: 0,
            sessions: 0,
            loaded: BTreeMap::new(),
        }
    }

    fn take(&mut self) -> Plan {
        std::mem::take(&mut self.plan).finish()
    }

    /// Loads `model` unless it is loaded; the runtime unloads what is on that device first
    /// and says how much VRAM it reclaims.
    fn load(&mut self, at: i64, model: usize, session: Option<&str>) {
        let spec = &self.m.models[model];
        if self.loaded.get(&spec.device) == Some(&model) {
            return;
        }
        let reclaimable = self
            .loaded
            .get(&spec.device)
            .map(|&old| self.m.models[old].vram_mb);
        assert!(
            spec.vram_mb <= self.m.usable_mb(spec.device, &self.c),
            "{}: healthy loads fit",
            self.m.id
        );
        self.plan.push(
            at,
            Act::Event(Event::ModelLoad(ModelLoad {
                id: None,
                ts_ms: Some(at),
                model_id: spec.id.to_owned(),
                model_required_vram_mb: spec.vram_mb,
                vram_reclaimable_mb_est: reclaimable,
                outcome: LoadOutcome::Ok,
                quantization: Some(spec.quantization.to_owned()),
                params_b: Some(spec.params_b),
                kv_cache_bytes_per_token: spec.report_kv.then_some(spec.kv),
                session_id: session.map(str::to_owned),
            })),
        );
        self.plan.push(
            at,
            Act::Load {
                device: spec.device,
                model,
            },
        );
        self.loaded.insert(spec.device, model);
    }

    fn unload_all(&mut self, at: i64) {
        self.plan.push(at, Act::Unload);
        self.loaded.clear();
    }

    fn event(&mut self, at: i64, e: Event) {
        self.plan.push(at, Act::Event(e));
    }

    /// Opens a session at `start` (with its context request), runs it, and ends it at `end`.
    #[allow(clippy::too_many_arguments)]
    fn session(
        &mut self,
        start: i64,
        end: i64,
        model: usize,
        ctx: u64,
        mode: Mode,
        shape: &Shape,
    ) -> String {
        self.sessions += 1;
        let sid = format!("{}-s{}", self.prefix, self.sessions);
        self.open_session(start, &sid);
        if shape.context_request {
            let spec = &self.m.models[model];
            if shape.healthy {
                assert!(
                    ctx as f64 <= 0.75 * self.m.supported_context(model, &self.c),
                    "{}: a healthy context request fits {}",
                    self.m.id,
                    spec.id
                );
            }
            let hash = prompt_hash(&format!("{} {} system prompt of {sid}", self.m.id, spec.id));
            self.event(
                start + 400,
                Event::ContextRequest(ContextRequest {
                    id: None,
                    ts_ms: Some(start + 400),
                    model_id: spec.id.to_owned(),
                    requested_context_tokens: ctx,
                    local_supported_context_tokens: None,
                    session_id: Some(sid.clone()),
                    prompt_hash: Some(hash),
                }),
            );
        }
        self.runs(&sid, model, ctx, start + 1000, end - 1000, mode, shape);
        self.close_session(start, end, &sid);
        sid
    }

    fn open_session(&mut self, at: i64, sid: &str) {
        self.event(
            at,
            Event::SessionStarted(SessionEvent {
                id: None,
                ts_ms: Some(at),
                session_id: sid.to_owned(),
            }),
        );
    }

    fn close_session(&mut self, start: i64, end: i64, sid: &str) {
        self.event(
            end,
            Event::SessionEnded(SessionEvent {
                id: None,
                ts_ms: Some(end),
                session_id: sid.to_owned(),
            }),
        );
        self.plan.sessions.push((start, end));
    }

    /// The runs of one session between `start` and `end`.
    #[allow(clippy::too_many_arguments)]
    fn runs(
        &mut self,
        sid: &str,
        model: usize,
        ctx: u64,
        start: i64,
        end: i64,
        mode: Mode,
        shape: &Shape,
    ) {
        let spec = self.m.models[model].clone();
        let rng = &mut self.rng;
        let mut t = start + rng.random_range(2_000..20_000);
        loop {
            let q = r1(rng.random_range(shape.queue_ms.0..=shape.queue_ms.1));
            let (lo, hi) = shape.tokens_out.unwrap_or(spec.tokens_out);
            let tout = rng.random_range(lo..=hi);
            let tin = rng
                .random_range(spec.tokens_in.0..=spec.tokens_in.1)
                .min(ctx.saturating_sub(tout + 64));
            let gen_ms = tout as f64 / spec.gen_tps * 1000.0;
            let mut ml = (60.0 + tin as f64 / spec.prompt_tps * 1000.0 + gen_ms)
                * rng.random_range(0.95..1.05);
            let retries = if rng.random_bool(shape.retry_p) {
                rng.random_range(shape.retries.0..=shape.retries.1)
            } else {
                0
            };
            for _ in 0..retries {
                ml += gen_ms * rng.random_range(0.9..1.1);
            }
            let ml = r1(ml);
            let det = r1(rng.random_range(20.0..300.0));
            let total = r1(det + ml + rng.random_range(10.0..60.0));
            let begin = t + q.ceil() as i64;
            let done = begin + total.ceil() as i64;
            if done > end {
                break;
            }
            let breach = u32::from(shape.breach_p > 0.0 && rng.random_bool(shape.breach_p));
            if shape.healthy {
                assert!(
                    ml < 4000.0 && total < 6000.0 && retries <= 1 && breach == 0 && q < 300.0,
                    "{}: a healthy run of {} is well inside the limits: {ml} ms model, {total} ms \
                     total, {retries} retries, queue {q} ms",
                    self.m.id,
                    spec.id
                );
            }
            self.runs += 1;
            let template = rng.random_range(0..12);
            self.plan.push(
                done,
                Act::Run(Run {
                    id: None,
                    ts_ms: Some(done),
                    run_id: format!("{}-r{}", self.prefix, self.runs),
                    session_id: sid.to_owned(),
                    model_id: spec.id.to_owned(),
                    substrate: Substrate::Local,
                    prompt_hash: prompt_hash(&format!("{} {} task {template}", self.m.id, spec.id)),
                    context_tokens: ctx,
                    tokens_in: Some(tin),
                    tokens_out: Some(tout),
                    total_tokens: Some(tin + tout),
                    model_latency_ms: ml,
                    total_latency_ms: total,
                    deterministic_stage_ms: det,
                    model_stage_ms: ml,
                    validation_retry_count: retries,
                    budget_breach_count: breach,
                    queue_wait_ms: Some(q),
                    prompt_tokens_sent: Some(tin),
                    stages: None,
                }),
            );
            let gen_start = begin + det as i64;
            self.plan.busy.push((gen_start, gen_start + ml as i64));
            if shape.queue_samples {
                self.plan
                    .push(begin, Act::Sample(sample(Signal::QueueWaitMs, q, begin)));
            }
            t = done
                + match mode {
                    Mode::Interactive => rng.random_range(40_000..240_000),
                    Mode::Batch => rng.random_range(300..2_500),
                    Mode::Every(ms) => (ms as f64 * rng.random_range(0.8..1.2)) as i64,
                };
        }
    }

    /// `active_sessions`, sampled by the runtime once a minute (at its middle) while it is open.
    fn studio(&mut self, open: i64, close: i64) {
        let mut m = open.div_euclid(MIN) * MIN;
        while m < close {
            let at = m + 30_000;
            let n = self
                .plan
                .sessions
                .iter()
                .filter(|&&(s, e)| s <= at && at < e)
                .count();
            self.plan.push(
                at,
                Act::Sample(sample(Signal::ActiveSessions, n as f64, at)),
            );
            m += MIN;
        }
    }

    /// A context size that the model holds with room to spare on this machine.
    fn healthy_ctx(&mut self, model: usize) -> u64 {
        let supported = self.m.supported_context(model, &self.c);
        let choices: Vec<u64> = [4096, 8192]
            .into_iter()
            .filter(|&c| {
                c as f64 <= 0.75 * supported && self.m.max_sessions(model, c, &self.c) >= 1
            })
            .collect();
        assert!(
            !choices.is_empty(),
            "{}: {} holds a 4k context",
            self.m.id,
            self.m.models[model].id
        );
        choices[self.rng.random_range(0..choices.len())]
    }

    /// One ordinary day starting at `day_start` (midnight).
    fn healthy_day(&mut self, day: u32, day_start: i64) -> Plan {
        self.prefix = format!("{}-d{}", self.m.id, day + 1);
        let rng = &mut self.rng;
        // Weekdays 0-4; a short Saturday afternoon; an idle Sunday.
        let (open, close, lunch) = match day {
            6 => return self.take(),
            5 => {
                let open = day_start + 14 * HOUR + rng.random_range(0..60) * MIN;
                (open, open + rng.random_range(40..100) * MIN, None)
            }
            _ => {
                let open = day_start + 8 * HOUR + 30 * MIN + rng.random_range(0..60) * MIN;
                let close = day_start + 17 * HOUR + 30 * MIN + rng.random_range(0..90) * MIN;
                let lunch = day_start + 12 * HOUR + rng.random_range(0..30) * MIN;
                (
                    open,
                    close,
                    Some((lunch, lunch + rng.random_range(40..60) * MIN)),
                )
            }
        };
        let mut t = open;
        while t + 10 * MIN < close {
            let mut end = (t + self.rng.random_range(20..75) * MIN).min(close);
            if let Some((ls, le)) = lunch {
                if t < ls && end > ls {
                    end = ls;
                }
                if t >= ls && t < le {
                    t = le;
                    continue;
                }
            }
            if end - t >= 10 * MIN {
                self.stretch(t, end);
            }
            t = end + self.rng.random_range(3..25) * MIN;
        }
        self.studio(open - 10 * MIN, close + 10 * MIN);
        let idle = self.rng.random_range(20..40) * MIN;
        self.unload_all(close + idle);
        self.take()
    }

    /// A stretch of use of one model: its sessions, sometimes a burst of more.
    fn stretch(&mut self, start: i64, end: i64) {
        let n_models = self.m.models.len();
        let model = if self.rng.random_bool(0.5) {
            0
        } else {
            self.rng.random_range(1..n_models)
        };
        let ctx = self.healthy_ctx(model);
        let max = self.m.max_sessions(model, ctx, &self.c).min(4) as usize;
        let want = match self.rng.random_range(0..100) {
            0..50 => 1,
            50..85 => 2,
            _ => 3,
        };
        let n = want.min(max).max(1);
        let burst = if max > n && self.rng.random_bool(0.25) {
            Some(self.rng.random_range(1..=max - n))
        } else {
            None
        };
        let mode = if self.rng.random_bool(0.3) {
            Mode::Batch
        } else {
            Mode::Interactive
        };
        let queue = if n + burst.unwrap_or(0) > 1 {
            (5.0, 250.0)
        } else {
            (0.0, 40.0)
        };
        let shape = Shape::healthy(queue);
        let at = start - self.rng.random_range(10_000..40_000);
        self.load(at, model, None);
        for i in 0..n {
            let s = start + i as i64 * self.rng.random_range(0..120_000);
            let e = end - self.rng.random_range(0..60_000);
            self.session(s, e, model, ctx, mode, &shape);
        }
        if let Some(extra) = burst {
            let s0 = start + (end - start) / 3;
            let len = self.rng.random_range(5..12) * MIN;
            for _ in 0..extra {
                let s = s0 + self.rng.random_range(0..60_000);
                self.session(s, s + len, model, ctx, Mode::Every(30_000), &shape);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The machine's readings, tick by tick, from its hardware and the workload's state

/// What the hardware holds: the runtime's models, per device; and the highest CPU reading.
#[derive(Debug, Default)]
struct Hardware {
    loaded: BTreeMap<u32, usize>,
    cpu_max: f64,
}

impl Hardware {
    fn apply(&mut self, act: &Act) {
        match act {
            Act::Load { device, model } => {
                self.loaded.insert(*device, *model);
            }
            Act::Unload => self.loaded.clear(),
            _ => {}
        }
    }

    fn on_device(&self, m: &Machine, device: u32) -> f64 {
        self.loaded
            .iter()
            .filter(|&(&d, _)| d == device)
            .map(|(_, &model)| m.models[model].vram_mb)
            .sum()
    }
}

/// Where and how often the probe reads: `[from, to)` every `tick` ms; `started` says the
/// service (and its probe) starts at `from`; the day (index and midnight) places outages.
#[derive(Debug, Clone, Copy)]
struct Span {
    from: i64,
    to: i64,
    tick: i64,
    started: bool,
    day: u32,
    day_start: i64,
}

/// The recorded ticks of a span: what the probe would read at each tick. Applies the plan's
/// acts of that span to `hw` as it goes.
fn recording(
    m: &Machine,
    plan: &Plan,
    hw: &mut Hardware,
    span: Span,
    rng: &mut StdRng,
) -> Recording {
    let Span {
        from,
        to,
        tick,
        started,
        day,
        day_start,
    } = span;
    let first_reading = first_cpu_reading();
    let mut host = Vec::new();
    let mut nvml = Vec::new();
    let mut k = plan.acts.partition_point(|(ts, _)| *ts < from);
    let mut t = from;
    while t < to {
        while let Some((ts, act)) = plan.acts.get(k)
            && *ts < t
        {
            hw.apply(act);
            k += 1;
        }
        let cpu = if started && t == from {
            RecordedValue::Unavailable {
                unavailable: first_reading.clone(),
            }
        } else {
            let busy = plan.busy_share(t - tick, t);
            let idle = m.idle_cpu_pct + rng.random_range(-1.5..1.5);
            let load = r1((idle + (m.gen_cpu_pct - idle) * busy).clamp(0.5, 100.0));
            hw.cpu_max = hw.cpu_max.max(load);
            RecordedValue::Value(load)
        };
        let in_ram = if m.gpus.is_err() {
            hw.on_device(m, 0)
        } else {
            0.0
        };
        host.push(RecordedHostTick {
            cpu_cores: RecordedValue::Value(m.cores),
            cpu_load_pct: cpu,
            ram_total_mb: RecordedValue::Value(m.ram_total_mb),
            ram_free_mb: RecordedValue::Value(
                (m.ram_free_mb - in_ram + rng.random_range(-250.0..250.0)).round(),
            ),
        });
        let outage = m
            .outage
            .iter()
            .find(|(d, tod, _)| *d == day && day_start + tod == t)
            .map(|(_, _, answer)| answer.clone());
        nvml.push(match (outage, &m.gpus) {
            (Some(answer), _) => answer,
            (None, Ok(gpus)) => RecordedGpuTick {
                device_count: RecordedAnswer::Value(gpus.len() as u32),
                devices: gpus
                    .iter()
                    .enumerate()
                    .map(|(i, g)| {
                        let other = g.other_bytes as f64 * rng.random_range(0.98..1.02);
                        let models = hw.on_device(m, i as u32) * MB;
                        let free = g.total_bytes as f64 - g.reserved_bytes as f64 - other - models;
                        RecordedDevice {
                            name: RecordedAnswer::Value(g.name.clone()),
                            memory: RecordedAnswer::Value(GpuMemory {
                                total_bytes: g.total_bytes,
                                free_bytes: free.max(0.0) as u64,
                                reserved_bytes: Some(g.reserved_bytes),
                            }),
                        }
                    })
                    .collect(),
            },
            // CPU-only: NVML never started; the probe does not ask it for ticks.
            (None, Err(_)) => RecordedGpuTick {
                device_count: RecordedAnswer::Value(0),
                devices: Vec::new(),
            },
        });
        t += tick;
    }
    while let Some((ts, act)) = plan.acts.get(k)
        && *ts < to
    {
        hw.apply(act);
        k += 1;
    }
    Recording {
        description: m.description.clone(),
        host,
        nvml: match &m.gpus {
            Ok(_) => RecordedNvml::Ticks(nvml),
            Err(e) => RecordedNvml::InitError(e.clone()),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// The service: the real `serve` on loopback over a real store

struct Service {
    rt: tokio::runtime::Runtime,
    state: AppState,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: tokio::sync::oneshot::Sender<()>,
    base: String,
    http: ureq::Agent,
}

impl Service {
    /// Opens (or reopens) the store in `dir` and serves it on 127.0.0.1 with an ephemeral port.
    fn start(dir: &Path) -> Service {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let pipeline = Pipeline::open(&dir.join(DB_FILE), PipelineOptions::default())
            .unwrap_or_else(|e| panic!("the store does not open cleanly: {e}"));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = AppState::new(
            Arc::new(pipeline),
            Config {
                token: kora_server::token::Token::load_or_create(dir).unwrap(),
                data_dir: dir.to_owned(),
                hosts: HostPolicy {
                    port,
                    extra_names: vec![],
                },
            },
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(kora_server::serve(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        Service {
            rt,
            state,
            server,
            stop,
            base: format!("http://127.0.0.1:{port}"),
            http: agent(),
        }
    }

    /// Stops serving, lets the store commit what is queued, and drops everything that holds it.
    fn stop(self) {
        let Service {
            rt,
            state,
            server,
            stop,
            ..
        } = self;
        let _ = stop.send(());
        rt.block_on(server)
            .unwrap()
            .unwrap_or_else(|e| panic!("serve stopped with an error: {e}"));
        drop(state);
        rt.shutdown_timeout(Duration::from_secs(10));
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn post(&self, path: &str, body: &impl serde::Serialize) -> Value {
        let mut r = self.http.post(self.url(path)).send_json(body).unwrap();
        let status = r.status();
        let v: Value = r.body_mut().read_json().unwrap_or(Value::Null);
        assert_eq!(status, 200, "POST {path}: {v}");
        v
    }

    fn put(&self, path: &str, body: &impl serde::Serialize) -> Value {
        let mut r = self.http.put(self.url(path)).send_json(body).unwrap();
        let status = r.status();
        let v: Value = r.body_mut().read_json().unwrap_or(Value::Null);
        assert_eq!(status, 200, "PUT {path}: {v}");
        v
    }

    fn get(&self, path: &str) -> Value {
        let mut r = self.http.get(self.url(path)).call().unwrap();
        let status = r.status();
        let v: Value = r.body_mut().read_json().unwrap_or(Value::Null);
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    /// One probe tick: the snapshot through the sampler's own path.
    fn tick(&self, probe: &mut Probe, ts: i64) {
        let snapshot = probe.snapshot(ts);
        self.rt
            .block_on(self.state.pipeline.ingest_snapshot(snapshot))
            .unwrap_or_else(|e| panic!("a probe tick was not recorded: {e:?}"));
    }

    /// Waits until the follower has folded everything in the log and appended its outputs.
    fn settle(&self) {
        self.rt
            .block_on(self.state.pipeline.catch_up())
            .unwrap_or_else(|e| panic!("the follower could not catch up: {e:?}"));
    }

    /// Every log record of a kind, oldest first.
    fn log(&self, kind: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut before: Option<u64> = None;
        loop {
            let mut q = format!("/v1/log?kind={kind}&limit=1000");
            if let Some(b) = before {
                q.push_str(&format!("&before={b}"));
            }
            let page = self.get(&q);
            out.extend(page["entries"].as_array().unwrap().iter().cloned());
            match page["next_before"].as_u64() {
                Some(b) => before = Some(b),
                None => break,
            }
        }
        out.reverse();
        out
    }
}

/// What the workload sent.
#[derive(Debug, Default, Clone, Copy)]
struct Sent {
    ticks: u64,
    runs: u64,
    events: u64,
    samples: u64,
    posts: u64,
    /// Wall time in the probe's ticks, the posts, the follower's passes.
    tick_time: Duration,
    post_time: Duration,
    settle_time: Duration,
}

/// Drives a span, tick by tick: the probe's tick, the workload's records until the next tick,
/// a follower pass, then `hook` (the simulated user).
fn drive(
    svc: &Service,
    plan: &Plan,
    probe: &mut Probe,
    span: Span,
    sent: &mut Sent,
    hook: &mut dyn FnMut(&Service, i64),
) {
    let Span { from, to, tick, .. } = span;
    let mut k = plan.acts.partition_point(|(ts, _)| *ts < from);
    let mut t = from;
    while t < to {
        let clock = Instant::now();
        svc.tick(probe, t);
        sent.ticks += 1;
        sent.tick_time += clock.elapsed();
        let clock = Instant::now();
        let (mut events, mut runs, mut samples, mut ends) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        while let Some((ts, act)) = plan.acts.get(k)
            && *ts < t + tick
        {
            match act {
                Act::Event(e @ Event::SessionEnded(_)) => ends.push(e.clone()),
                Act::Event(e) => events.push(e.clone()),
                Act::Run(r) => runs.push(r.clone()),
                Act::Sample(s) => samples.push(s.clone()),
                Act::Load { .. } | Act::Unload => {}
            }
            k += 1;
        }
        sent.events += (events.len() + ends.len()) as u64;
        sent.runs += runs.len() as u64;
        sent.samples += samples.len() as u64;
        if !events.is_empty() {
            svc.post("/v1/events", &EventBatch { events });
            sent.posts += 1;
        }
        if !runs.is_empty() {
            svc.post("/v1/runs", &RunBatch { runs });
            sent.posts += 1;
        }
        if !samples.is_empty() {
            svc.post("/v1/samples", &SampleBatch { samples });
            sent.posts += 1;
        }
        if !ends.is_empty() {
            svc.post("/v1/events", &EventBatch { events: ends });
            sent.posts += 1;
        }
        sent.post_time += clock.elapsed();
        let clock = Instant::now();
        svc.settle();
        sent.settle_time += clock.elapsed();
        hook(svc, t);
        t += tick;
    }
}

fn data_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    // The store's durability is not what is measured here: tmpfs keeps fsync cheap.
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new().prefix("kora-sim-").tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

fn seed(machine: &str, salt: u64) -> u64 {
    machine.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) ^ salt
}

// ---------------------------------------------------------------------------------------------
// The healthy week

/// A decision the service made: (category, scope, ts, reason).
#[derive(Debug, Clone)]
struct Decision {
    category: String,
    scope: String,
    ts: i64,
    reason: String,
    /// Suppressed: by which rule.
    rule: Option<String>,
}

#[derive(Debug)]
struct Week {
    machine: &'static str,
    suggestions: Vec<Decision>,
    firings: Vec<Decision>,
    restart: Result<(), String>,
    sent: Sent,
    /// Profile records and all log records at the end of the week.
    profiles: usize,
    /// The lowest `max_recommended_concurrency` among them; the highest CPU reading.
    concurrency_min: Option<f64>,
    cpu_max: f64,
    log_records: u64,
    elapsed: Duration,
}

fn decisions(svc: &Service) -> (Vec<Decision>, Vec<Decision>) {
    let firings = svc.log("firing");
    let reason_of: BTreeMap<String, String> = firings
        .iter()
        .map(|f| {
            (
                f["firing_id"].as_str().unwrap().to_owned(),
                f["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut rules: BTreeMap<String, String> = BTreeMap::new();
    for s in svc.log("suppression") {
        rules.insert(
            s["firing_id"].as_str().unwrap().to_owned(),
            s["rule"].as_str().unwrap().to_owned(),
        );
    }
    let d = |v: &Value, rule: Option<String>| Decision {
        category: v["category"].as_str().unwrap().to_owned(),
        scope: v["scope"].as_str().unwrap().to_owned(),
        ts: v["ts_ms"].as_i64().unwrap(),
        reason: reason_of
            .get(v["firing_id"].as_str().unwrap())
            .cloned()
            .unwrap_or_default(),
        rule,
    };
    let suggestions = svc.log("suggestion").iter().map(|s| d(s, None)).collect();
    let firings = firings
        .iter()
        .map(|f| d(f, rules.get(f["firing_id"].as_str().unwrap()).cloned()))
        .collect();
    (suggestions, firings)
}

fn healthy_week(m: &Machine, base: i64) -> Week {
    let started = Instant::now();
    let c = Thresholds::embedded().file().profile.clone();
    let dir = data_dir();
    let mut svc = Service::start(dir.path());
    let mut workload = Gen::new(m, c, seed(m.id, 1));
    let mut hw = Hardware::default();
    let mut rng = StdRng::seed_from_u64(seed(m.id, 2));
    let mut sent = Sent::default();
    let mut restart = Ok(());
    let mut fresh = true;
    for day in 0..DAYS {
        let day_start = base + i64::from(day) * DAY;
        let plan = workload.healthy_day(day, day_start);
        let mut segments = vec![(day_start, day_start + DAY)];
        if day == RESTART_DAY {
            segments = vec![
                (day_start, day_start + RESTART_AT),
                (day_start + RESTART_AT, day_start + DAY),
            ];
        }
        for (i, &(from, to)) in segments.iter().enumerate() {
            if i > 0 {
                // The restart: stop, reopen the store, start again; the derived state must
                // come back the same.
                let triggers = svc.get("/v1/triggers");
                let suggestions = svc.get("/v1/suggestions?limit=1000");
                let health = svc.get("/v1/health");
                svc.stop();
                svc = Service::start(dir.path());
                svc.settle();
                let after = (
                    svc.get("/v1/triggers"),
                    svc.get("/v1/suggestions?limit=1000"),
                    svc.get("/v1/health"),
                );
                if after.0 != triggers {
                    restart = Err("GET /v1/triggers differs after the restart".into());
                } else if after.1 != suggestions {
                    restart = Err("GET /v1/suggestions differs after the restart".into());
                } else if after.2["last_seq"] != health["last_seq"] {
                    restart = Err(format!(
                        "the restart changed the log: last_seq {} before, {} after",
                        health["last_seq"], after.2["last_seq"]
                    ));
                }
                fresh = true;
            }
            let span = Span {
                from,
                to,
                tick: TICK,
                started: fresh,
                day,
                day_start,
            };
            fresh = false;
            let mut probe = Probe::from_recording(recording(m, &plan, &mut hw, span, &mut rng));
            drive(&svc, &plan, &mut probe, span, &mut sent, &mut |_, _| {});
        }
    }
    let (suggestions, firings) = decisions(&svc);
    let profile_records = svc.log("profile");
    let profiles = profile_records.len();
    let concurrency_min = profile_records
        .iter()
        .filter_map(|p| p["profile"]["max_recommended_concurrency"]["value"].as_f64())
        .reduce(f64::min);
    let log_records = svc.get("/v1/health")["log_records"].as_u64().unwrap_or(0);
    svc.stop();
    eprintln!(
        "simulator: {} healthy week done in {:.0} s ({} suggestions)",
        m.id,
        started.elapsed().as_secs_f64(),
        suggestions.len()
    );
    Week {
        machine: m.id,
        suggestions,
        firings,
        restart,
        sent,
        profiles,
        concurrency_min,
        cpu_max: hw.cpu_max,
        log_records,
        elapsed: started.elapsed(),
    }
}

// ---------------------------------------------------------------------------------------------
// A busy half hour at the service's default probe interval

/// `kora-telemetry serve`'s default `--probe-interval`.
const DEFAULT_TICK: i64 = 5_000;

/// A machine busy with batch work, probed every 5 s. At the week's 60 s tick a CPU reading is
/// the average of a minute; at 5 s, the highest of a minute's twelve readings is close to the
/// load while generating (95 % on the CPU-only box), as users running the default will see it.
#[derive(Debug)]
struct BusyHalfHour {
    machine: &'static str,
    model: &'static str,
    sessions: usize,
    suggestions: Vec<Decision>,
    firings: usize,
    /// The highest `cpu_load_pct` reading.
    cpu_max: f64,
    /// The lowest `max_recommended_concurrency` among the profile records.
    concurrency_min: Option<f64>,
    elapsed: Duration,
}

fn busy_half_hour(m: &Machine, base: i64) -> BusyHalfHour {
    let started = Instant::now();
    let c = Thresholds::embedded().file().profile.clone();
    let dir = data_dir();
    let svc = Service::start(dir.path());
    let mut g = Gen::new(m, c, seed(m.id, 5));
    g.prefix = format!("{}-busy", m.id);
    let start = base + 14 * HOUR;
    let ctx = g.healthy_ctx(0);
    let sessions = (m.max_sessions(0, ctx, &g.c) as usize).min(3);
    g.load(start + 20_000, 0, None);
    for i in 0..sessions {
        let s = start + MIN + i as i64 * 20_000;
        g.session(
            s,
            start + 31 * MIN,
            0,
            ctx,
            Mode::Batch,
            &Shape::healthy((5.0, 250.0)),
        );
    }
    g.studio(start, start + 33 * MIN);
    let plan = g.take();
    let span = Span {
        from: start,
        to: start + 33 * MIN,
        tick: DEFAULT_TICK,
        started: true,
        day: 0,
        day_start: base,
    };
    let mut hw = Hardware::default();
    let mut rng = StdRng::seed_from_u64(seed(m.id, 6));
    let mut probe = Probe::from_recording(recording(m, &plan, &mut hw, span, &mut rng));
    let mut sent = Sent::default();
    drive(&svc, &plan, &mut probe, span, &mut sent, &mut |_, _| {});
    let (suggestions, firings) = decisions(&svc);
    let cpu = svc.get(&format!(
        "/v1/series?series=cpu_load_pct&from_ms={start}&to_ms={}&points=33",
        start + 33 * MIN
    ));
    let cpu_max = cpu["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["max"].as_f64())
        .fold(0.0, f64::max);
    let concurrency_min = svc
        .log("profile")
        .iter()
        .filter_map(|p| p["profile"]["max_recommended_concurrency"]["value"].as_f64())
        .reduce(f64::min);
    svc.stop();
    BusyHalfHour {
        machine: m.id,
        model: m.models[0].id,
        sessions,
        suggestions,
        firings: firings.len(),
        cpu_max,
        concurrency_min,
        elapsed: started.elapsed(),
    }
}

// ---------------------------------------------------------------------------------------------
// Injected limits, each on its own on a fresh service

#[derive(Debug, Clone, Copy, PartialEq)]
enum Unit {
    /// 60 s time windows from the injection's start.
    Windows,
    /// Blocks of 10 runs of the model.
    Blocks,
}

#[derive(Debug, Clone, Copy)]
struct Injection {
    name: &'static str,
    machine: &'static str,
    category: &'static str,
    /// The model in use during the warm-up (and the injection, where it runs one).
    model: &'static str,
    unit: Unit,
    /// What the trigger needs before it may fire (0: immediate).
    sustain: u32,
    /// How long the limit lasts.
    minutes: i64,
}

fn injections() -> Vec<Injection> {
    let i = |name, machine, category, model, unit, sustain, minutes| Injection {
        name,
        machine,
        category,
        model,
        unit,
        sustain,
        minutes,
    };
    use Unit::{Blocks, Windows};
    vec![
        i(
            "model too large: a 70B load over total VRAM",
            "desktop-4090",
            "model_fit",
            "llama-3.1-8b-instruct",
            Windows,
            0,
            40,
        ),
        i(
            "model too large: a 14B load that fails",
            "rtx4070",
            "model_fit",
            "phi-3.5-mini-instruct",
            Windows,
            0,
            40,
        ),
        i(
            "context too long: a 64k request",
            "desktop-4090",
            "context",
            "qwen2.5-32b-instruct",
            Windows,
            0,
            40,
        ),
        i(
            "context too long: context_oom",
            "laptop-4060",
            "context",
            "llama-3.1-8b-instruct",
            Windows,
            0,
            40,
        ),
        i(
            "tail latency: long answers of a 32B",
            "two-gpus",
            "latency",
            "qwen2.5-32b-instruct",
            Blocks,
            3,
            75,
        ),
        i(
            "tail latency: long answers on CPU",
            "cpu-only-16c",
            "latency",
            "qwen2.5-7b-instruct",
            Blocks,
            3,
            75,
        ),
        i(
            "concurrency: queue wait > 1200 ms (samples and runs)",
            "desktop-4090",
            "concurrency",
            "llama-3.1-8b-instruct",
            Windows,
            3,
            40,
        ),
        i(
            "concurrency: queue wait > 1200 ms (runs only, no samples)",
            "desktop-4090",
            "concurrency",
            "llama-3.1-8b-instruct",
            Windows,
            3,
            40,
        ),
        i(
            "concurrency: 6 sessions on a 3-session laptop",
            "laptop-4060",
            "concurrency",
            "qwen2.5-3b-instruct",
            Windows,
            3,
            40,
        ),
        i(
            "retry instability: validation retries 3-5",
            "rtx4070",
            "reliability",
            "phi-3.5-mini-instruct",
            Windows,
            0,
            40,
        ),
        i(
            "retry instability: budget breaches",
            "cpu-only-16c",
            "reliability",
            "llama-3.2-3b-instruct",
            Windows,
            0,
            40,
        ),
    ]
}

/// A cloud option's estimate, checked.
#[derive(Debug, Clone)]
struct CloudCheck {
    scenario: &'static str,
    category: String,
    improvement: String,
    comparison: Option<Value>,
    /// `None` when the estimate carries no comparison.
    better: Option<bool>,
}

#[derive(Debug)]
struct Injected {
    inj: Injection,
    /// Windows or blocks from the injection's start to its first suggestion (1 = the first).
    suggested_after: Option<u32>,
    /// The same for its first firing (shown or not).
    fired_after: Option<u32>,
    /// Firings of the category after the start that were held back, and why.
    suppressed: Vec<String>,
    /// Why the first firing after the start was held back, if it was.
    first_held_back: Option<String>,
    /// Suggestions of other categories, or before the start (false ones).
    other: Vec<Decision>,
    cloud: Vec<CloudCheck>,
}

/// The limit itself: the records that make it, added to the warm-up's plan.
fn inject(g: &mut Gen, inj: &Injection, sid: &str, t0: i64, end: i64) {
    let m = g.m;
    let model = m.model(inj.model);
    let unhealthy = |queue_ms| Shape {
        context_request: false,
        healthy: false,
        ..Shape::healthy(queue_ms)
    };
    let load = |at: i64, id: &str, vram: f64, reclaim: f64| {
        Event::ModelLoad(ModelLoad {
            id: None,
            ts_ms: Some(at),
            model_id: id.to_owned(),
            model_required_vram_mb: vram,
            vram_reclaimable_mb_est: Some(reclaim),
            outcome: LoadOutcome::Failed,
            quantization: Some("Q4_K_M".to_owned()),
            params_b: None,
            kv_cache_bytes_per_token: None,
            session_id: Some(sid.to_owned()),
        })
    };
    // The immediate limits happen at the start and once more after the first suggestion was
    // dismissed and the category's cooldown has passed.
    let again = t0 + 32 * MIN;
    match inj.name {
        n if n.starts_with("model too large: a 70B") => {
            for at in [t0 + 10_000, again] {
                g.event(at, load(at, "llama-3.3-70b-instruct", 42_000.0, 6144.0));
            }
        }
        n if n.starts_with("model too large: a 14B") => {
            // 10,240 MB fits the numbers (12,282 MB total, 8,500 free + 2,500 reclaimable),
            // yet the load fails.
            for at in [t0 + 10_000, again] {
                g.event(at, load(at, "qwen2.5-14b-instruct", 10_240.0, 2500.0));
            }
        }
        n if n.starts_with("context too long: a 64k") => {
            for (at, doc) in [(t0 + 10_000, "A"), (again, "B")] {
                g.event(
                    at,
                    Event::ContextRequest(ContextRequest {
                        id: None,
                        ts_ms: Some(at),
                        model_id: inj.model.to_owned(),
                        requested_context_tokens: 65_536,
                        local_supported_context_tokens: None,
                        session_id: Some(sid.to_owned()),
                        prompt_hash: Some(prompt_hash(&format!("summarize long document {doc}"))),
                    }),
                );
            }
        }
        n if n.starts_with("context too long: context_oom") => {
            for at in [t0 + 10_000, again] {
                g.event(
                    at,
                    Event::ContextOom(ContextOom {
                        id: None,
                        ts_ms: Some(at),
                        model_id: inj.model.to_owned(),
                        session_id: sid.to_owned(),
                    }),
                );
            }
        }
        n if n.starts_with("tail latency") => {
            let out = if m.gpus.is_err() {
                (60, 90)
            } else {
                (140, 200)
            };
            let shape = Shape {
                tokens_out: Some(out),
                ..unhealthy((0.0, 40.0))
            };
            g.runs(sid, model, 4096, t0, end, Mode::Every(30_000), &shape);
        }
        n if n.starts_with("concurrency: queue wait") => {
            let shape = Shape {
                queue_samples: !n.contains("runs only"),
                ..unhealthy((1500.0, 3000.0))
            };
            g.runs(sid, model, 4096, t0, end, Mode::Every(20_000), &shape);
            for _ in 0..2 {
                g.session(t0, end, model, 4096, Mode::Every(20_000), &shape);
            }
        }
        n if n.starts_with("concurrency: 6 sessions") => {
            let shape = unhealthy((20.0, 250.0));
            g.runs(sid, model, 4096, t0, end, Mode::Every(60_000), &shape);
            for _ in 0..5 {
                g.session(t0, end, model, 4096, Mode::Every(60_000), &shape);
            }
        }
        n if n.starts_with("retry instability: validation") => {
            let shape = Shape {
                tokens_out: Some((20, 40)),
                retry_p: 1.0,
                retries: (3, 5),
                ..unhealthy((0.0, 40.0))
            };
            g.runs(sid, model, 4096, t0, end, Mode::Every(30_000), &shape);
        }
        n if n.starts_with("retry instability: budget") => {
            // The limit starts with a run over its budget; then about one run in three.
            let first = Shape {
                breach_p: 1.0,
                ..unhealthy((0.0, 40.0))
            };
            g.runs(
                sid,
                model,
                4096,
                t0,
                t0 + 40_000,
                Mode::Every(30_000),
                &first,
            );
            let shape = Shape {
                breach_p: 0.3,
                ..first
            };
            g.runs(
                sid,
                model,
                4096,
                t0 + 40_000,
                end,
                Mode::Every(30_000),
                &shape,
            );
        }
        other => panic!("no injection named {other:?}"),
    }
}

/// Windows (60 s, counted from the one holding `t0`, inclusive) until `ts`.
fn windows_until(t0: i64, ts: i64) -> u32 {
    let start = t0.div_euclid(MIN) * MIN;
    ((ts - start + MIN - 1).div_euclid(MIN)).max(1) as u32
}

/// Blocks of 10 runs of `model` that closed from `t0` up to `ts`, as the service counted them.
fn blocks_until(svc: &Service, model: &str, t0: i64, ts: i64) -> u32 {
    let v = svc.get(&format!(
        "/v1/windows?kind=runs&metric=model_latency_ms&scope={model}&limit=1000"
    ));
    v["windows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| {
            let end = w["window"]["end_ms"].as_i64().unwrap();
            end >= t0 && end <= ts
        })
        .count() as u32
}

fn run_injection(inj: Injection, machines: &[Machine], base: i64) -> Injected {
    let m = machines.iter().find(|m| m.id == inj.machine).unwrap();
    let c = Thresholds::embedded().file().profile.clone();
    let dir = data_dir();
    let svc = Service::start(dir.path());
    let mut g = Gen::new(m, c, seed(m.id, 3) ^ seed(inj.name, 0));
    g.prefix = format!("{}-inj", m.id);
    let start = base + 9 * HOUR;
    let t0 = start + 30 * MIN;
    let end = t0 + inj.minutes * MIN;
    // Warm-up: the model loads, a session runs healthy for half an hour (no context requests,
    // so that the limit is measured on its own: false context suggestions are the healthy
    // week's business).
    let model = m.model(inj.model);
    g.load(start + 20_000, model, None);
    let shape = Shape {
        context_request: false,
        ..Shape::healthy((0.0, 40.0))
    };
    let sid = format!("{}-inj-main", m.id);
    g.open_session(start + MIN, &sid);
    g.runs(
        &sid,
        model,
        4096,
        start + MIN,
        t0,
        Mode::Every(40_000),
        &shape,
    );
    inject(&mut g, &inj, &sid, t0, end);
    g.close_session(start + MIN, end + MIN, &sid);
    g.studio(start, end + 2 * MIN);
    let plan = g.take();
    let mut hw = Hardware::default();
    let mut rng = StdRng::seed_from_u64(seed(m.id, 4));
    let span = Span {
        from: start,
        to: end + 3 * MIN,
        tick: TICK,
        started: true,
        day: 0,
        day_start: base,
    };
    let mut probe = Probe::from_recording(recording(m, &plan, &mut hw, span, &mut rng));
    let mut sent = Sent::default();
    let mut dismissed: Option<String> = None;
    let mut user = |svc: &Service, t: i64| {
        // The KrakoBackend plugin reports readiness every 5 minutes.
        if (t - start) % (5 * MIN) == 0 {
            svc.put(
                "/v1/cloud/readiness",
                &Readiness {
                    ts_ms: Some(t + 1_000),
                    plugin_installed: true,
                    network_available: true,
                    authenticated: true,
                    credits_available: true,
                },
            );
        }
        // The user dismisses the first suggestion of the category.
        if dismissed.is_none() {
            let v = svc.get(&format!(
                "/v1/suggestions?category={}&limit=10",
                inj.category
            ));
            if let Some(s) = v["suggestions"].as_array().unwrap().last() {
                let id = s["suggestion"]["suggestion_id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                svc.post(
                    &format!("/v1/suggestions/{id}/feedback"),
                    &json!({"action": "dismissed", "ts_ms": t + 59_000}),
                );
                dismissed = Some(id);
            }
        }
    };
    drive(&svc, &plan, &mut probe, span, &mut sent, &mut user);
    let (suggestions, firings) = decisions(&svc);
    let measure = |ts: i64| match inj.unit {
        Unit::Windows => windows_until(t0, ts),
        Unit::Blocks => blocks_until(&svc, inj.model, t0, ts),
    };
    let mine = |d: &&Decision| d.category == inj.category && d.ts >= t0;
    let suggested_after = suggestions.iter().find(mine).map(|d| measure(d.ts));
    let first_firing = firings.iter().find(mine);
    let fired_after = first_firing.map(|d| measure(d.ts));
    let first_held_back = first_firing.and_then(|d| {
        d.rule
            .as_ref()
            .map(|r| format!("\"{}\" held back by {r}", d.reason))
    });
    let suppressed = firings
        .iter()
        .filter(mine)
        .filter_map(|d| d.rule.as_ref().map(|r| format!("{} ({r})", d.reason)))
        .collect();
    let other = suggestions.iter().filter(|d| !mine(d)).cloned().collect();
    let mut cloud = Vec::new();
    for s in svc.get("/v1/suggestions?limit=1000")["suggestions"]
        .as_array()
        .unwrap()
    {
        for o in s["suggestion"]["options"].as_array().unwrap() {
            if o["kind"] != "cloud" {
                continue;
            }
            let comparison = o["estimate"].get("comparison").cloned();
            let better = comparison.as_ref().and_then(|c| {
                let measured = c["measured_local"].as_f64()?;
                let predicted = c["predicted_cloud"].as_f64()?;
                Some(if c["lower_is_better"].as_bool().unwrap_or(true) {
                    predicted < measured
                } else {
                    predicted > measured
                })
            });
            cloud.push(CloudCheck {
                scenario: inj.name,
                category: s["suggestion"]["category"].as_str().unwrap().to_owned(),
                improvement: o["estimate"]["predicted_improvement"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                comparison,
                better,
            });
        }
    }
    svc.stop();
    Injected {
        inj,
        suggested_after,
        fired_after,
        suppressed,
        first_held_back,
        other,
        cloud,
    }
}

// ---------------------------------------------------------------------------------------------
// The report and the goals

/// A reason with its figures blanked, so that alike reasons group.
fn shape_of(reason: &str) -> String {
    let mut out = String::new();
    let mut in_number = false;
    for ch in reason.chars() {
        if ch.is_ascii_digit() || (in_number && (ch == '.' || ch == ',')) {
            if !in_number {
                out.push('#');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(ch);
        }
    }
    out
}

/// Alike reasons: (count, shape, first example), most frequent first.
fn grouped(decisions: &[&Decision]) -> Vec<(usize, String, String)> {
    let mut groups: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for d in decisions {
        let e = groups
            .entry(format!("{} [{}]", shape_of(&d.reason), d.scope))
            .or_insert((0, d.reason.clone()));
        e.0 += 1;
    }
    let mut v: Vec<_> = groups.into_iter().map(|(k, (n, ex))| (n, k, ex)).collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    v
}

fn day_of(base: i64, ts: i64) -> i64 {
    (ts - base).div_euclid(DAY) + 1
}

struct Report {
    text: String,
    json: Value,
    failures: Vec<String>,
}

fn report(
    base: i64,
    machines: &[Machine],
    weeks: &[Week],
    busy: &[BusyHalfHour],
    injected: &[Injected],
    elapsed: Duration,
) -> Report {
    let mut t = String::new();
    let mut failures = Vec::new();
    let thresholds = Thresholds::embedded();
    let _ = writeln!(t, "# Machine-day simulator report\n");
    let _ = writeln!(
        t,
        "Thresholds {}, time windows of {} s, runs blocks of {}; simulated probe tick 60 s; \
         simulated days start {} ms (midnight UTC, 8 days before the run). Wall time {:.0} s.\n",
        thresholds.version(),
        thresholds.window_ms() / 1000,
        thresholds.runs_per_block(),
        base,
        elapsed.as_secs_f64()
    );
    let _ = writeln!(t, "## Machines\n");
    for m in machines {
        let _ = writeln!(
            t,
            "- `{}`: {}; {} logical CPUs, {} MB RAM; models {}",
            m.id,
            m.description,
            m.cores,
            m.ram_total_mb,
            m.models
                .iter()
                .map(|s| format!("{} ({} MB)", s.id, s.vram_mb))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    // The healthy week.
    let _ = writeln!(
        t,
        "\n## Healthy week: suggestions (firings) per machine and trigger category\n"
    );
    let _ = writeln!(
        t,
        "| machine | {} | suggestions per machine-day | restart |",
        CATEGORIES.join(" | ")
    );
    let _ = writeln!(t, "|---|{}---|---|", "---|".repeat(CATEGORIES.len()));
    let mut total = 0;
    let mut week_json = Vec::new();
    for w in weeks {
        let mut row = format!("| `{}` |", w.machine);
        let mut cats = serde_json::Map::new();
        for c in CATEGORIES {
            let s = w.suggestions.iter().filter(|d| d.category == c).count();
            let f = w.firings.iter().filter(|d| d.category == c).count();
            let _ = write!(row, " {s} ({f}) |");
            cats.insert(c.to_owned(), json!({"suggestions": s, "firings": f}));
        }
        total += w.suggestions.len();
        let _ = writeln!(
            t,
            "{row} {:.2} | {} |",
            w.suggestions.len() as f64 / f64::from(DAYS),
            match &w.restart {
                Ok(()) => "clean".to_owned(),
                Err(e) => format!("FAILED: {e}"),
            },
        );
        week_json.push(json!({
            "machine": w.machine,
            "categories": cats,
            "suggestions_per_machine_day": w.suggestions.len() as f64 / f64::from(DAYS),
            "sent": {"ticks": w.sent.ticks, "runs": w.sent.runs, "events": w.sent.events,
                     "samples": w.sent.samples, "posts": w.sent.posts},
            "log_records": w.log_records, "profile_records": w.profiles,
            "wall_s": w.elapsed.as_secs_f64(),
            "restart": w.restart.as_ref().err(),
            "suggestions": w.suggestions.iter().map(|d| json!({
                "day": day_of(base, d.ts), "category": d.category, "scope": d.scope,
                "ts_ms": d.ts, "reason": d.reason})).collect::<Vec<_>>(),
        }));
        if let Err(e) = &w.restart {
            failures.push(format!(
                "{}: the mid-week restart was not clean: {e}",
                w.machine
            ));
        }
    }
    let _ = writeln!(
        t,
        "\nIn all: {total} suggestions in {} machine-days ({:.2} per machine-day); goal 0.",
        weeks.len() as u32 * DAYS,
        total as f64 / f64::from(weeks.len() as u32 * DAYS)
    );
    let _ = writeln!(
        t,
        "\nWhat each week sent and cost (probe ticks, runs, events, samples, HTTP posts; log \
         records at the end, of which profile records; wall time, of which in probe ticks, posts \
         and follower passes):\n"
    );
    for w in weeks {
        let s = &w.sent;
        let _ = writeln!(
            t,
            "- `{}`: {} ticks, {} runs, {} events, {} samples in {} posts; {} log records ({} profiles; \
             lowest max_recommended_concurrency {}; highest CPU reading {:.1} %); \
             {:.0} s ({:.0} s ticks, {:.0} s posts, {:.0} s passes)",
            w.machine,
            s.ticks,
            s.runs,
            s.events,
            s.samples,
            s.posts,
            w.log_records,
            w.profiles,
            w.concurrency_min
                .map_or("unknown".to_owned(), |v| v.to_string()),
            w.cpu_max,
            w.elapsed.as_secs_f64(),
            s.tick_time.as_secs_f64(),
            s.post_time.as_secs_f64(),
            s.settle_time.as_secs_f64()
        );
    }
    if total > 0 {
        let _ = writeln!(
            t,
            "\n### False suggestions on healthy days (reasons with figures blanked, scope, count, an example)\n"
        );
        for w in weeks {
            for c in CATEGORIES {
                let ds: Vec<&Decision> = w.suggestions.iter().filter(|d| d.category == c).collect();
                if ds.is_empty() {
                    continue;
                }
                let days: std::collections::BTreeSet<i64> =
                    ds.iter().map(|d| day_of(base, d.ts)).collect();
                let _ = writeln!(
                    t,
                    "- `{}` {c}: {} suggestions on days {:?}",
                    w.machine,
                    ds.len(),
                    days
                );
                for (n, shape, example) in grouped(&ds) {
                    let _ = writeln!(t, "  - {n}x {shape}: \"{example}\"");
                }
            }
        }
        failures.push(format!(
            "{total} suggestions on healthy days (goal 0): {}",
            weeks
                .iter()
                .flat_map(|w| CATEGORIES.iter().filter_map(move |c| {
                    let n = w.suggestions.iter().filter(|d| d.category == *c).count();
                    (n > 0).then(|| format!("{} {c} {n}", w.machine))
                }))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    // The busy half hours at the default probe interval.
    let _ = writeln!(
        t,
        "\n## A busy half hour at the default 5 s probe interval (healthy: batch sessions within capacity)\n"
    );
    let _ = writeln!(
        t,
        "| machine | model, batch sessions | highest cpu_load_pct reading | lowest max_recommended_concurrency | suggestions (firings) | wall |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|");
    let mut busy_json = Vec::new();
    let busy_total: usize = busy.iter().map(|b| b.suggestions.len()).sum();
    for b in busy {
        let by_cat: Vec<String> = CATEGORIES
            .iter()
            .filter_map(|c| {
                let n = b.suggestions.iter().filter(|d| d.category == *c).count();
                (n > 0).then(|| format!("{c} {n}"))
            })
            .collect();
        let _ = writeln!(
            t,
            "| `{}` | {}, {} | {:.1} | {} | {} ({}){} | {:.0} s |",
            b.machine,
            b.model,
            b.sessions,
            b.cpu_max,
            b.concurrency_min
                .map_or("unknown".to_owned(), |v| v.to_string()),
            b.suggestions.len(),
            b.firings,
            if by_cat.is_empty() {
                String::new()
            } else {
                format!(": {}", by_cat.join(", "))
            },
            b.elapsed.as_secs_f64()
        );
        busy_json.push(json!({
            "machine": b.machine, "model": b.model, "sessions": b.sessions,
            "cpu_load_pct_max": b.cpu_max, "max_recommended_concurrency_min": b.concurrency_min,
            "firings": b.firings,
            "suggestions": b.suggestions.iter().map(|d| json!({
                "category": d.category, "scope": d.scope, "ts_ms": d.ts, "reason": d.reason}))
                .collect::<Vec<_>>(),
        }));
    }
    if busy_total > 0 {
        let _ = writeln!(t, "\nFalse suggestions in the busy half hours:\n");
        for b in busy {
            let ds: Vec<&Decision> = b.suggestions.iter().collect();
            for (n, shape, example) in grouped(&ds) {
                let _ = writeln!(t, "- `{}` {n}x {shape}: \"{example}\"", b.machine);
            }
        }
        failures.push(format!(
            "{busy_total} suggestions in the busy half hours at the default probe interval (goal 0): {}",
            busy.iter()
                .flat_map(|b| CATEGORIES.iter().filter_map(move |c| {
                    let n = b.suggestions.iter().filter(|d| d.category == *c).count();
                    (n > 0).then(|| format!("{} {c} {n}", b.machine))
                }))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    // The injected limits.
    let _ = writeln!(t, "\n## Injected limits (each on a fresh service)\n");
    let _ = writeln!(
        t,
        "| limit | machine | category | needs | suggested after | goal | first firing after | held back | other suggestions |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|");
    let mut inj_json = Vec::new();
    for r in injected {
        let unit = match r.inj.unit {
            Unit::Windows => "windows",
            Unit::Blocks => "blocks",
        };
        let goal = r.inj.sustain + 1;
        let ok = r.suggested_after.is_some_and(|n| n <= goal);
        let shown = |n: Option<u32>| n.map_or("never".to_owned(), |n| format!("{n} {unit}"));
        let _ = writeln!(
            t,
            "| {} | `{}` | {} | {} | {} | {} {unit} {} | {} | {} | {} |",
            r.inj.name,
            r.inj.machine,
            r.inj.category,
            if r.inj.sustain == 0 {
                "immediate".to_owned()
            } else {
                format!("{} {unit}", r.inj.sustain)
            },
            shown(r.suggested_after),
            if ok { "<=" } else { "FAIL, <=" },
            goal,
            shown(r.fired_after),
            r.suppressed.len(),
            r.other.len()
        );
        if !ok {
            failures.push(format!(
                "injected limit \"{}\" on {}: suggested after {} (goal: within {goal} {unit}){}",
                r.inj.name,
                r.inj.machine,
                shown(r.suggested_after),
                match &r.first_held_back {
                    Some(s) => format!("; its first firing was {s}"),
                    None => String::new(),
                }
            ));
        }
        inj_json.push(json!({
            "limit": r.inj.name, "machine": r.inj.machine, "category": r.inj.category,
            "unit": unit, "sustain": r.inj.sustain, "suggested_after": r.suggested_after,
            "fired_after": r.fired_after, "held_back": r.suppressed,
            "other_suggestions": r.other.iter().map(|d| json!({
                "category": d.category, "scope": d.scope, "reason": d.reason})).collect::<Vec<_>>(),
        }));
    }
    let others: Vec<&Injected> = injected.iter().filter(|r| !r.other.is_empty()).collect();
    if !others.is_empty() {
        let _ = writeln!(
            t,
            "\nOther suggestions during the injections (not the injected category, or before it):\n"
        );
        for r in others {
            for d in &r.other {
                let _ = writeln!(
                    t,
                    "- {} (`{}`): {} [{}] \"{}\"",
                    r.inj.name, r.inj.machine, d.category, d.scope, d.reason
                );
            }
        }
    }

    // Krako Cloud estimates.
    let _ = writeln!(t, "\n## Krako Cloud options\n");
    let cloud: Vec<&CloudCheck> = injected.iter().flat_map(|r| r.cloud.iter()).collect();
    let mut cloud_json = Vec::new();
    if cloud.is_empty() {
        let _ = writeln!(t, "No suggestion offered Krako Cloud.");
    }
    for c in &cloud {
        let verdict = match c.better {
            Some(true) => "better than measured".to_owned(),
            Some(false) => "NOT better than measured".to_owned(),
            None => "no `estimate.comparison` (not checked)".to_owned(),
        };
        let _ = writeln!(
            t,
            "- {} ({}): {verdict}; {}{}",
            c.scenario,
            c.category,
            c.improvement,
            c.comparison
                .as_ref()
                .map(|v| format!("; comparison {v}"))
                .unwrap_or_default()
        );
        if c.better == Some(false) {
            failures.push(format!(
                "the Krako Cloud option of \"{}\" ({}) predicts no better figure than the measured one: {}",
                c.scenario,
                c.category,
                c.comparison.as_ref().map(Value::to_string).unwrap_or_default()
            ));
        }
        cloud_json.push(json!({
            "limit": c.scenario, "category": c.category, "improvement": c.improvement,
            "comparison": c.comparison, "better": c.better}));
    }

    let _ = writeln!(t, "\n## Goals\n");
    let healthy_ok = total == 0;
    let inj_ok = injected
        .iter()
        .all(|r| r.suggested_after.is_some_and(|n| n <= r.inj.sustain + 1));
    let cloud_ok = cloud.iter().all(|c| c.better != Some(false));
    let checked = cloud.iter().filter(|c| c.better.is_some()).count();
    for (ok, goal) in [
        (
            healthy_ok,
            format!(
                "0 suggestions in {} machines x {DAYS} healthy days (got {total})",
                weeks.len()
            ),
        ),
        (
            busy_total == 0,
            format!(
                "0 suggestions in the {} busy half hours at the default 5 s probe interval (got {busy_total})",
                busy.len()
            ),
        ),
        (
            inj_ok,
            "every injected limit suggested within its sustain requirement + 1 window".to_owned(),
        ),
        (
            cloud_ok,
            format!(
                "every Krako Cloud option predicts a better figure than the measured one ({checked} of {} carry a comparison)",
                cloud.len()
            ),
        ),
        (
            weeks.iter().all(|w| w.restart.is_ok()),
            "the mid-week restart reopens the store cleanly, with the same derived state"
                .to_owned(),
        ),
    ] {
        let _ = writeln!(t, "- [{}] {goal}", if ok { "x" } else { " " });
    }
    if !failures.is_empty() {
        let _ = writeln!(t, "\nFailing:\n");
        for f in &failures {
            let _ = writeln!(t, "- {f}");
        }
    }
    let json = json!({
        "base_ms": base,
        "thresholds_version": thresholds.version(),
        "wall_s": elapsed.as_secs_f64(),
        "healthy_week": week_json,
        "busy_half_hour": busy_json,
        "injected": inj_json,
        "cloud": cloud_json,
        "failures": failures,
    });
    Report {
        text: t,
        json,
        failures,
    }
}

/// `target/`, where the report goes.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// Five machines through a healthy week and each injected limit, against the real service.
///
/// `KORA_SIM_ONLY=text` runs only the machines and injected limits whose name contains `text`
/// (for working on one; the goals then cover only those).
#[test]
fn simulator_machine_week_and_injected_limits() {
    let started = Instant::now();
    let base = (kora_pipeline::clock::wall_ms() - 8 * DAY).div_euclid(DAY) * DAY;
    let only = std::env::var("KORA_SIM_ONLY").ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    let machines = machines();
    let (weeks, busy): (Vec<Week>, Vec<BusyHalfHour>) = std::thread::scope(|s| {
        let handles: Vec<_> = machines
            .iter()
            .filter(|m| wanted(m.id))
            .map(|m| s.spawn(move || (healthy_week(m, base), busy_half_hour(m, base))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).unzip()
    });
    let injected: Vec<Injected> = injections()
        .into_iter()
        .filter(|i| wanted(i.machine) || wanted(i.name))
        .map(|i| run_injection(i, &machines, base))
        .collect();
    let r = report(base, &machines, &weeks, &busy, &injected, started.elapsed());
    println!("{}", r.text);
    let dir = target_dir();
    let _ = std::fs::create_dir_all(&dir);
    std::fs::write(dir.join("simulator-report.md"), &r.text).unwrap();
    std::fs::write(
        dir.join("simulator-report.json"),
        serde_json::to_string_pretty(&r.json).unwrap(),
    )
    .unwrap();
    println!(
        "(written to {} and simulator-report.json)",
        dir.join("simulator-report.md").display()
    );
    assert!(
        r.failures.is_empty(),
        "the simulator's goals failed:\n- {}",
        r.failures.join("\n- ")
    );
}
