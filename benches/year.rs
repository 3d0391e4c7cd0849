//! One machine's year, measured on the real `kora-telemetry serve` (issue 14).
//!
//! **The store is built through the service's own write path**: `serve` runs on loopback with
//! its data directory in a temporary directory, and the bench is its client (`kora-client`,
//! MessagePack bodies), sending what the machine and KORA Studio would have sent, with explicit
//! `ts_ms`, ending at the last whole hour before now (`KORA_YEAR_DAYS` days, default 365):
//!
//! - the default 5 s probe on the ten signals, at exact 5 s ticks as the probe stamps them: a
//!   24 GB GPU with 16 cores and 64 GB RAM (constant totals), free VRAM following the loaded
//!   models and the KV cache while generating, free RAM drifting, CPU load high while a run
//!   generates and low otherwise (one decimal), `active_sessions` 0 or 1, `active_generations`
//!   0 or 1, queue waits of 0 to 150 ms while generating. Sessions never overlap, so the
//!   concurrency trigger's session rule (which compares with the profile of the machine the
//!   bench runs on) never fires and the decisions are the same on every machine;
//! - 2,000 runs a day (08:00 to 22:00 UTC) over three models, in 100 sessions of 20 runs with
//!   `session_started` / `session_ended` events, four stage timings each; the runs and events
//!   get client ids, as `kora-client` gives them (the probe's samples carry none);
//! - three model loads every morning, five context requests a day within the supported size;
//!   and, so that the engine has decisions to make: a context request beyond the supported size
//!   every third day, a failed load of a 70B model every fourteenth, a weekly afternoon where
//!   one model generates 2.5 times slower (latency), a weekly 6-minute queue-wait burst over
//!   1.2 s (concurrency), a weekly run with a budget breach (reliability).
//!
//! Each hour is sent as one samples request (7,200 samples), then one request of the hour's
//! session starts, loads and context requests, one of its runs, one of its session ends. The
//! engine folds them as the service folds any client's records; the time windows are closed by
//! the samples' own transactions.
//!
//! **Retention is in force as the service applies it**: at its first probe tick after start,
//! then hourly, by its clock. The bench restarts `serve` every `KORA_YEAR_RESTART_DAYS`
//! simulated days (default 7), so every restart rolls up what is past the raw retention (14
//! days before now: everything written before the restart, until the last two weeks), and once
//! more after the last day with the default probe, so that the store ends as a year-old service
//! leaves it: the last 14 days raw, hourly rollups before them, the whole log. `serve` has no
//! switch to turn its probe off: during the build it runs with a probe interval of
//! `(segment start - 5 s)` ms, so that its first snapshot (taken at once at start, stamped with
//! its tick) is this machine's reading at the 5 s tick just before the segment's first, and the
//! next one is decades away. The simulated probe leaves out those six signals at those ticks
//! (the other four come from the runtime). The measurements after the build run `serve` with
//! its default 5 s probe.
//!
//! Client ids are dated by the service's clock when they arrive, and forgotten 30 days later;
//! the bench sends a year in about three minutes, so by the service's clock every id would be
//! minutes old and none forgotten. So each start of `serve` (the restarts and the one after the
//! last day) is given `--retain-ids` of the real time since the bench sent the first hour of the
//! 30 simulated days before that start: the ids older than that (by a simulated hour or two:
//! the start's retention pass runs some 40 ms after the time is taken) are forgotten, as a
//! service running through the year would have forgotten them.
//!
//! **Reported**: the data directory's allocated bytes after a clean stop (and the store file's
//! bytes by redb table, which says what holds them); growth per day at steady state (two sizes
//! taken after clean stops at restarts that both left the same raw window, one restart period of
//! raw samples on top of rolled-up history, up to 30 days apart, before the last 14 days: the
//! difference is the log and the rollups of those days); start after a clean stop and after SIGKILL
//! under 4 writing clients (spawn to the "listening" line, 5 each; and the store's own open in both
//! cases, 3 each); `kora-telemetry replay` and `backtest` of the whole log (wall time, peak RSS);
//! the p50 and p99 of every endpoint the dashboards call (and `/v1/series`, `/metrics`), 200
//! requests each on one keep-alive connection (fewer, 20 at least, for an endpoint whose requests
//! take more than 10 s in all); `VmRSS` / `VmHWM` of the daemon after them. Side by side: SQLite
//! (`common::sqlite_open`'s schema) holding the same samples (all raw) and the same runs, and
//! Prometheus's TSDB built by `promtool tsdb create-blocks-from openmetrics` from the same samples
//! (all raw, one file per UTC day, 2 h blocks as promtool writes them), then, when the `prometheus`
//! binary is installed (and `KORA_YEAR_PROMETHEUS_COMPACT` is not 0), the same blocks after a
//! Prometheus server (retention 400 days) compacted them as it compacts its own: a year in 2 h
//! blocks is not what a running Prometheus keeps.
//!
//! `KORA_YEAR_KEEP=DIR` copies the data dir to `DIR` (which must not exist) after the build
//! and the retention, and stops there: the soak starts from such a store (`KORA_SOAK_FROM`).
//!
//! A plain program: `KORA_YEAR_DAYS=30 cargo bench --bench year`.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use kora_client::{Client, Encoding};
use kora_model::{
    ContextRequest, Event, EventBatch, LoadOutcome, ModelLoad, Run, RunBatch, Sample, SampleBatch,
    SessionEvent, Signal, Stage, StageKind, Substrate,
};

const TICK_MS: i64 = 5_000;
const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
const SESSIONS_PER_DAY: i64 = 100;
const RUNS_PER_SESSION: i64 = 20;
/// Sessions start every 504 s from 08:00: 100 of them end by 22:00.
const SESSION_EVERY_MS: i64 = 504_000;
const SESSION_MS: i64 = 500_000;
const GPU_TOTAL_MB: f64 = 24_576.0;
/// The store file `serve` keeps in its data directory.
const DB_FILE: &str = "kora-telemetry.redb";
const SUPPORTED_CONTEXT: u64 = 32_768;
/// The raw retention `serve` applies by default.
const RAW_DAYS: i64 = 14;
/// How long `serve` remembers client ids by default.
const IDS_DAYS: i64 = 30;
const LATENCY_REQUESTS: usize = 200;
/// An endpoint slower than this in all gets fewer requests (20 at least).
const LATENCY_BUDGET: Duration = Duration::from_secs(10);
/// promtool runs at once (each waits on its blocks' fsyncs as much as it computes).
const PROMTOOL_JOBS: usize = 3;

/// The signals `serve`'s own probe reads; the other four come from the runtime.
const PROBE_SIGNALS: [Signal; 6] = [
    Signal::GpuVramTotalMb,
    Signal::GpuVramFreeMb,
    Signal::CpuCores,
    Signal::CpuLoadPct,
    Signal::RamFreeMb,
    Signal::RamTotalMb,
];

#[derive(Debug, Clone, Copy)]
struct ModelSpec {
    id: &'static str,
    vram_mb: f64,
    quantization: &'static str,
    params_b: f64,
    generation_ms: f64,
    tokens_out: u64,
}

const YEAR_MODELS: [ModelSpec; 3] = [
    ModelSpec {
        id: "llama-3.1-8b-q4",
        vram_mb: 4_900.0,
        quantization: "q4_K_M",
        params_b: 8.0,
        generation_ms: 1_500.0,
        tokens_out: 220,
    },
    ModelSpec {
        id: "qwen2.5-14b-q4",
        vram_mb: 8_800.0,
        quantization: "q4_K_M",
        params_b: 14.8,
        generation_ms: 2_400.0,
        tokens_out: 300,
    },
    ModelSpec {
        id: "mistral-7b-q8",
        vram_mb: 7_700.0,
        quantization: "q8_0",
        params_b: 7.2,
        generation_ms: 1_900.0,
        tokens_out: 260,
    },
];

/// The model whose load fails every fourteenth day.
const HUGE: ModelSpec = ModelSpec {
    id: "llama-3.1-70b-q4",
    vram_mb: 42_500.0,
    quantization: "q4_K_M",
    params_b: 70.0,
    generation_ms: 0.0,
    tokens_out: 0,
};

// ---- the simulated machine ------------------------------------------------------------

/// One UTC day's schedule: what KORA Studio does and when.
#[derive(Debug)]
struct DayPlan {
    day: i64,
    /// Session starts, model loads and context requests, by time.
    opening: Vec<(i64, Event)>,
    /// Session ends, by time.
    closing: Vec<(i64, Event)>,
    /// By `ts_ms` (a run's end).
    runs: Vec<Run>,
    sessions: Vec<(i64, i64)>,
    /// Each run's `[start, end)`, by start.
    busy: Vec<(i64, i64)>,
    /// The three models are loaded in `[from, until)`.
    loaded: (i64, i64),
    queue_burst: Option<(i64, i64)>,
}

fn hex64(rng: &mut Rng) -> String {
    (0..4).map(|_| format!("{:016x}", rng.next_u64())).collect()
}

fn stage(name: &str, kind: StageKind, ms: f64) -> Stage {
    Stage {
        name: name.to_owned(),
        kind,
        ms,
    }
}

fn model_load(m: &ModelSpec, outcome: LoadOutcome, ts: i64) -> Event {
    Event::ModelLoad(ModelLoad {
        id: None,
        ts_ms: Some(ts),
        model_id: m.id.to_owned(),
        model_required_vram_mb: m.vram_mb,
        vram_reclaimable_mb_est: None,
        outcome,
        quantization: Some(m.quantization.to_owned()),
        params_b: Some(m.params_b),
        kv_cache_bytes_per_token: None,
        session_id: None,
    })
}

fn context_request(rng: &mut Rng, model: &str, session: &str, tokens: u64, ts: i64) -> Event {
    Event::ContextRequest(ContextRequest {
        id: None,
        ts_ms: Some(ts),
        model_id: model.to_owned(),
        requested_context_tokens: tokens,
        local_supported_context_tokens: Some(SUPPORTED_CONTEXT),
        session_id: Some(session.to_owned()),
        prompt_hash: Some(hex64(rng)),
    })
}

fn session_event(session: &str, ts: i64) -> SessionEvent {
    SessionEvent {
        id: None,
        ts_ms: Some(ts),
        session_id: session.to_owned(),
    }
}

/// The plan of UTC day `day` (days since the epoch); the same for the same day on every call.
fn plan_day(day: i64) -> DayPlan {
    let mut rng = Rng::new(0x9E37_79B9 ^ (day as u64).wrapping_mul(0x2545_f491));
    let midnight = day * DAY_MS;
    let morning = midnight + 8 * HOUR_MS;
    let mut opening = Vec::new();
    let mut closing = Vec::new();
    let mut runs = Vec::new();
    let mut sessions = Vec::new();
    let mut busy = Vec::new();
    for (i, m) in YEAR_MODELS.iter().enumerate() {
        let ts = morning - MINUTE_MS + i as i64 * TICK_MS;
        opening.push((ts, model_load(m, LoadOutcome::Ok, ts)));
    }
    if day % 14 == 9 {
        let ts = midnight + 12 * HOUR_MS + 30 * MINUTE_MS + 2_000;
        opening.push((ts, model_load(&HUGE, LoadOutcome::Failed, ts)));
    }
    let slow_from = midnight + 14 * HOUR_MS;
    let slow = |ts: i64| day % 7 == 3 && ts >= slow_from && ts < slow_from + HOUR_MS;
    let breach_run = (day % 7 == 5).then_some(1_000);
    for s in 0..SESSIONS_PER_DAY {
        let from = morning + s * SESSION_EVERY_MS;
        let until = from + SESSION_MS;
        let session = format!("s{day}-{s}");
        sessions.push((from, until));
        opening.push((from, Event::SessionStarted(session_event(&session, from))));
        closing.push((until, Event::SessionEnded(session_event(&session, until))));
        if s % 20 == 10 {
            let ts = from + 2_000;
            let req = context_request(&mut rng, YEAR_MODELS[0].id, &session, 8_192, ts);
            opening.push((ts, req));
        }
        if s == 45 && day % 3 == 0 {
            let ts = from + 3_000;
            let req = context_request(&mut rng, YEAR_MODELS[1].id, &session, 65_536, ts);
            opening.push((ts, req));
        }
        // Half the sessions use the 8B model, 30 % the 14B, 20 % the 7B.
        let pick = rng.below(10);
        let m = &YEAR_MODELS[if pick < 5 {
            0
        } else if pick < 8 {
            1
        } else {
            2
        }];
        for j in 0..RUNS_PER_SESSION {
            let n = s * RUNS_PER_SESSION + j;
            let end = from + 20_000 + j * 24_000 + rng.below(4_000) as i64;
            let factor = if slow(end) && m.id == YEAR_MODELS[1].id {
                2.5
            } else {
                1.0
            };
            let generation = (m.generation_ms * factor * (0.85 + rng.f64() * 0.3)).round();
            let retrieval = (120.0 + rng.f64() * 300.0).round();
            let assembly = (20.0 + rng.f64() * 40.0).round();
            let validation = (30.0 + rng.f64() * 90.0).round();
            let deterministic = retrieval + assembly + validation;
            let queue = (rng.f64() * 150.0).round();
            let total = generation + deterministic + queue;
            let tokens_in = 900 + rng.below(2_000);
            let tokens_out = m.tokens_out + rng.below(120);
            let breach = breach_run == Some(n);
            busy.push((end - total as i64, end));
            runs.push(Run {
                id: None,
                ts_ms: Some(end),
                run_id: format!("r{day}-{n}"),
                session_id: session.clone(),
                model_id: m.id.to_owned(),
                substrate: Substrate::Local,
                prompt_hash: hex64(&mut rng),
                context_tokens: 4_096,
                tokens_in: Some(tokens_in),
                tokens_out: Some(tokens_out),
                total_tokens: Some(tokens_in + tokens_out),
                model_latency_ms: generation,
                total_latency_ms: total,
                deterministic_stage_ms: deterministic,
                model_stage_ms: generation,
                validation_retry_count: if breach {
                    3
                } else {
                    u32::from(rng.below(20) == 0)
                },
                budget_breach_count: u32::from(breach),
                queue_wait_ms: Some(queue),
                prompt_tokens_sent: None,
                stages: Some(vec![
                    stage("retrieval", StageKind::Deterministic, retrieval),
                    stage("prompt_assembly", StageKind::Deterministic, assembly),
                    stage("generation", StageKind::Model, generation),
                    stage("output_validation", StageKind::Deterministic, validation),
                ]),
            });
        }
    }
    opening.sort_by_key(|(ts, _)| *ts);
    closing.sort_by_key(|(ts, _)| *ts);
    runs.sort_by_key(|r| r.ts_ms);
    busy.sort_unstable();
    DayPlan {
        day,
        opening,
        closing,
        runs,
        sessions,
        busy,
        loaded: (morning - MINUTE_MS, midnight + 23 * HOUR_MS),
        queue_burst: (day % 7 == 1).then_some((
            midnight + 16 * HOUR_MS,
            midnight + 16 * HOUR_MS + 6 * MINUTE_MS,
        )),
    }
}

/// What the machine and KORA Studio send for one hour, in the order it is sent.
#[derive(Debug)]
struct Hour {
    start_ms: i64,
    samples: Vec<Sample>,
    opening: Vec<Event>,
    runs: Vec<Run>,
    closing: Vec<Event>,
}

/// The machine, hour after hour. The same `probe_ticks` give the same hours.
#[derive(Debug)]
struct Machine {
    rng: Rng,
    plan: Option<DayPlan>,
    ram_free: f64,
    vram_drift: f64,
    load: f64,
    /// Where `serve`'s own probe reads the machine (the simulated probe leaves them out).
    probe_ticks: Vec<i64>,
}

impl Machine {
    fn new(probe_ticks: Vec<i64>) -> Machine {
        Machine {
            rng: Rng::new(42),
            plan: None,
            ram_free: 40_000.0,
            vram_drift: 80.0,
            load: 3.0,
            probe_ticks,
        }
    }

    /// The hour from `start_ms` (a whole hour).
    fn hour(&mut self, start_ms: i64) -> Hour {
        let day = start_ms.div_euclid(DAY_MS);
        let plan = match self.plan.take() {
            Some(p) if p.day == day => p,
            _ => plan_day(day),
        };
        let end_ms = start_ms + HOUR_MS;
        let loaded_mb: f64 = YEAR_MODELS.iter().map(|m| m.vram_mb).sum();
        let mut samples = Vec::with_capacity(7_200);
        let mut b = plan.busy.partition_point(|r| r.1 <= start_ms);
        let mut ts = start_ms;
        while ts < end_ms {
            while b < plan.busy.len() && plan.busy[b].1 <= ts {
                b += 1;
            }
            let generating = b < plan.busy.len() && plan.busy[b].0 <= ts;
            let s = plan.sessions.partition_point(|r| r.1 <= ts);
            let in_session = s < plan.sessions.len() && plan.sessions[s].0 <= ts;
            let loaded = plan.loaded.0 <= ts && ts < plan.loaded.1;
            let burst = plan.queue_burst.is_some_and(|(a, z)| a <= ts && ts < z);
            let r = &mut self.rng;
            if r.below(12) == 0 {
                self.vram_drift = (self.vram_drift + (r.f64() - 0.5) * 32.0).clamp(0.0, 160.0);
            }
            let vram_used = 310.0
                + self.vram_drift
                + if loaded { loaded_mb } else { 0.0 }
                + if generating { 640.0 } else { 0.0 };
            self.ram_free = (self.ram_free + (r.f64() - 0.5) * 48.0).clamp(30_000.0, 46_000.0);
            let target = if generating {
                38.0 + r.f64() * 30.0
            } else if in_session {
                6.0 + r.f64() * 6.0
            } else {
                1.0 + r.f64() * 3.0
            };
            self.load = self.load * 0.4 + target * 0.6;
            let load = (self.load * 10.0).round() / 10.0;
            let p95 = ((load + r.f64() * 12.0).min(100.0) * 10.0).round() / 10.0;
            let queue = if burst {
                ((1_300.0 + r.f64() * 700.0) * 10.0).round() / 10.0
            } else if generating && r.below(3) == 0 {
                (r.f64() * 1_500.0).round() / 10.0
            } else {
                0.0
            };
            let values = [
                (Signal::GpuVramTotalMb, GPU_TOTAL_MB),
                (Signal::GpuVramFreeMb, (GPU_TOTAL_MB - vram_used).round()),
                (Signal::CpuCores, 16.0),
                (Signal::CpuLoadP95, p95),
                (Signal::CpuLoadPct, load),
                (
                    Signal::RamFreeMb,
                    (self.ram_free - if in_session { 2_500.0 } else { 0.0 }).round(),
                ),
                (Signal::RamTotalMb, 65_536.0),
                (Signal::ActiveSessions, f64::from(u8::from(in_session))),
                (Signal::ActiveGenerations, f64::from(u8::from(generating))),
                (Signal::QueueWaitMs, queue),
            ];
            let probe_tick = self.probe_ticks.binary_search(&ts).is_ok();
            for (signal, v) in values {
                if !(probe_tick && PROBE_SIGNALS.contains(&signal)) {
                    samples.push(Sample::reading(signal, ts, v));
                }
            }
            ts += TICK_MS;
        }
        let within = |t: i64| start_ms <= t && t < end_ms;
        let events = |v: &[(i64, Event)]| -> Vec<Event> {
            v.iter()
                .filter(|(t, _)| within(*t))
                .map(|(_, e)| e.clone())
                .collect()
        };
        let hour = Hour {
            start_ms,
            samples,
            opening: events(&plan.opening),
            runs: plan
                .runs
                .iter()
                .filter(|r| r.ts_ms.is_some_and(within))
                .cloned()
                .collect(),
            closing: events(&plan.closing),
        };
        self.plan = Some(plan);
        hour
    }
}

/// Generates the hours from `start_ms` to `end_ms` on a thread of its own, a few ahead.
fn hours(
    start_ms: i64,
    end_ms: i64,
    probe_ticks: Vec<i64>,
) -> (std::sync::mpsc::Receiver<Hour>, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(8);
    let producer = std::thread::spawn(move || {
        let mut machine = Machine::new(probe_ticks);
        let mut t = start_ms;
        while t < end_ms {
            if tx.send(machine.hour(t)).is_err() {
                return;
            }
            t += HOUR_MS;
        }
    });
    (rx, producer)
}

// ---- talking to serve -----------------------------------------------------------------

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

fn get_json(agent: &ureq::Agent, url: &str) -> serde_json::Value {
    let mut r = agent.get(url).call().unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.body_mut()
        .with_config()
        .limit(256 << 20)
        .read_json()
        .unwrap()
}

/// Waits until the reading of `cpu_cores` that `serve`'s probe takes at start (stamped in
/// `[from_ms, to_ms]`) is stored. The sampler applies the retention before that first snapshot,
/// so it is applied too once the reading is there.
fn wait_for_probe(base: &str, from_ms: i64, to_ms: i64) -> Duration {
    let start = Instant::now();
    let agent = agent(Duration::from_secs(60));
    let url = format!(
        "{base}/v1/series?series={}&from_ms={from_ms}&to_ms={}&points=1",
        Signal::CpuCores.as_str(),
        to_ms + 1
    );
    loop {
        let v = get_json(&agent, &url);
        let n: u64 = v["points"]
            .as_array()
            .map(|p| p.iter().filter_map(|x| x["n"].as_u64()).sum())
            .unwrap_or(0);
        if n > 0 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "serve's probe stored no reading in [{from_ms}, {to_ms}] within 120 s (the retention it applies first may be that slow)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Brings the engine up to every acknowledged record (`/v1/triggers` settles the follower
/// first); answers how long that took, and the health counts.
fn settle(base: &str) -> (Duration, serde_json::Value) {
    let agent = agent(Duration::from_secs(3_600));
    let (took, _) = time(|| get_json(&agent, &format!("{base}/v1/triggers")));
    (took, get_json(&agent, &format!("{base}/v1/health")))
}

fn clients(base: &str) -> (Client, Client) {
    let samples = Client::builder(base)
        .encoding(Encoding::MessagePack)
        .timeout(Duration::from_secs(300))
        .assign_ids(false)
        .build();
    let records = Client::builder(base)
        .encoding(Encoding::MessagePack)
        .timeout(Duration::from_secs(300))
        .build();
    (samples, records)
}

// ---- building the year ----------------------------------------------------------------

#[derive(Debug, Default)]
struct Totals {
    samples: u64,
    runs: u64,
    events: u64,
    requests: u64,
    samples_s: f64,
    runs_s: f64,
    events_s: f64,
    waiting_s: f64,
    settle_s: f64,
    restart_s: f64,
    stop_s: f64,
    serve_cpu_s: f64,
}

/// A size taken after the clean stop that ends a segment.
#[derive(Debug, Clone, Copy)]
struct Boundary {
    /// Days since the first day, at the segment's start and end.
    from_day: i64,
    to_day: i64,
    allocated: u64,
}

/// Builds the year through `serve`; answers the totals, the sizes at the segments' ends, each
/// hour's simulated start with the wall time it was sent, and the time it all took.
fn build(
    data: &Path,
    start_ms: i64,
    segments: &[(i64, i64)],
    probe_ticks: &[i64],
    hz: f64,
) -> (Totals, Vec<Boundary>, Vec<(i64, i64)>, Duration) {
    let end_ms = segments.last().unwrap().1;
    let (rx, producer) = hours(start_ms, end_ms, probe_ticks.to_vec());
    let mut t = Totals::default();
    let mut boundaries = Vec::new();
    let began = Instant::now();
    let days_total = (end_ms - start_ms) / DAY_MS;
    let mut sent = Vec::new();
    for &(seg_start, seg_end) in segments {
        let seg_began = Instant::now();
        let before = (t.samples, t.runs, t.events);
        let probe_at = seg_start - TICK_MS;
        let interval = format!("{probe_at}ms");
        let mut args = vec!["--probe-interval".to_owned(), interval];
        args.extend(retain_ids_args(&sent, seg_start));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (child, base, listening) = spawn_serve_with(data, &args, "error");
        let pid = child.id().to_string();
        let cpu0 = cpu_ticks(&pid);
        let probed = wait_for_probe(&base, probe_at, probe_at);
        t.restart_s += (listening + probed).as_secs_f64();
        let (samples, records) = clients(&base);
        let mut hour_start = seg_start;
        while hour_start < seg_end {
            let (waited, hour) = time(|| rx.recv().unwrap());
            t.waiting_s += waited.as_secs_f64();
            assert_eq!(hour.start_ms, hour_start);
            sent.push((hour_start, kora_pipeline::clock::wall_ms()));
            let n = hour.samples.len() as u64;
            let (took, ack) = time(|| {
                samples
                    .samples(&SampleBatch {
                        samples: hour.samples,
                    })
                    .unwrap()
            });
            assert_eq!(ack.accepted, n, "samples of the hour from {hour_start}");
            t.samples += n;
            t.samples_s += took.as_secs_f64();
            t.requests += 1;
            for (events, runs) in [
                (hour.opening, Vec::new()),
                (Vec::new(), hour.runs),
                (hour.closing, Vec::new()),
            ] {
                if !events.is_empty() {
                    let n = events.len() as u64;
                    let (took, ack) = time(|| records.events(&EventBatch { events }).unwrap());
                    assert_eq!(ack.accepted, n);
                    t.events += n;
                    t.events_s += took.as_secs_f64();
                    t.requests += 1;
                }
                if !runs.is_empty() {
                    let n = runs.len() as u64;
                    let (took, ack) = time(|| records.runs(&RunBatch { runs }).unwrap());
                    assert_eq!(ack.accepted, n);
                    t.runs += n;
                    t.runs_s += took.as_secs_f64();
                    t.requests += 1;
                }
            }
            hour_start += HOUR_MS;
        }
        let (settled, health) = settle(&base);
        t.settle_s += settled.as_secs_f64();
        let cpu = (cpu_ticks(&pid) - cpu0) as f64 / hz;
        t.serve_cpu_s += cpu;
        let stopped = stop_serve(child);
        t.stop_s += stopped.as_secs_f64();
        let allocated = allocated_bytes(data);
        let b = Boundary {
            from_day: (seg_start - start_ms) / DAY_MS,
            to_day: (seg_end - start_ms) / DAY_MS,
            allocated,
        };
        boundaries.push(b);
        let spent = seg_began.elapsed().as_secs_f64();
        println!(
            "  days {:>3}-{:<3} of {days_total}: {} samples, {} runs, {} events in {spent:.1} s; start {:.0} ms (+{:.0} ms to the probe's first reading and the retention), engine settled in {:.2} s, stop {:.0} ms; serve {cpu:.1} s of CPU; log {} records; data dir {:.1} MB (total {:.0} s)",
            b.from_day,
            b.to_day,
            rate((t.samples - before.0) as f64),
            rate((t.runs - before.1) as f64),
            rate((t.events - before.2) as f64),
            listening.as_secs_f64() * 1e3,
            probed.as_secs_f64() * 1e3,
            settled.as_secs_f64(),
            stopped.as_secs_f64() * 1e3,
            rate(health["log_records"].as_f64().unwrap_or(0.0)),
            allocated as f64 / 1e6,
            began.elapsed().as_secs_f64(),
        );
        let _ = std::io::stdout().flush();
    }
    producer.join().unwrap();
    (t, boundaries, sent, began.elapsed())
}

/// The `--retain-ids` a start of `serve` at simulated time `sim_now_ms` takes, from `sent` (each
/// hour's simulated start and the wall time its samples were sent, in order): the wall time
/// since the first hour of the [`IDS_DAYS`] simulated days before `sim_now_ms` was sent. None
/// while those days reach back before the first hour (nothing to forget yet).
fn retain_ids_args(sent: &[(i64, i64)], sim_now_ms: i64) -> Vec<String> {
    let cut = sim_now_ms - IDS_DAYS * DAY_MS;
    if sent.first().is_none_or(|(sim, _)| *sim >= cut) {
        return Vec::new();
    }
    let Some((_, wall)) = sent.iter().find(|(sim, _)| *sim >= cut) else {
        return Vec::new();
    };
    let ms = (kora_pipeline::clock::wall_ms() - wall).max(1);
    vec!["--retain-ids".to_owned(), format!("{ms}ms")]
}

/// Bytes a day at steady state: between two sizes taken after clean stops whose restarts left
/// the same raw window (the restart before each rolled up everything written before it, which
/// holds while it started more than 14 days before the last day), up to 30 days apart.
fn growth_per_day(boundaries: &[Boundary], days: i64) -> Option<(f64, Boundary, Boundary)> {
    let full = boundaries.first()?.to_day - boundaries.first()?.from_day;
    let same: Vec<Boundary> = boundaries
        .iter()
        .copied()
        .filter(|b| b.to_day - b.from_day == full && b.from_day <= days - RAW_DAYS)
        .collect();
    let last = *same.last()?;
    let first = *same
        .iter()
        .find(|b| last.to_day - b.to_day <= 30 && b.to_day < last.to_day)?;
    let per_day =
        (last.allocated as f64 - first.allocated as f64) / (last.to_day - first.to_day) as f64;
    Some((per_day, first, last))
}

// ---- the CLI on the year --------------------------------------------------------------

struct CliRun {
    wall: Duration,
    stdout: String,
    max_rss_kib: Option<u64>,
    ok: bool,
}

/// Runs `kora-telemetry --data-dir DATA ARGS`, under `/usr/bin/time` for its peak RSS when
/// there is one.
fn cli(data: &Path, args: &[&str]) -> CliRun {
    let exe = env!("CARGO_BIN_EXE_kora-telemetry");
    let timed = Path::new("/usr/bin/time").exists();
    let mut cmd = if timed {
        let mut c = std::process::Command::new("/usr/bin/time");
        c.args(["-f", "KORA_MAX_RSS_KIB %M", exe]);
        c
    } else {
        std::process::Command::new(exe)
    };
    cmd.arg("--data-dir").arg(data).args(args);
    let (wall, out) = time(|| cmd.output().unwrap());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let max_rss_kib = stderr
        .lines()
        .find_map(|l| l.strip_prefix("KORA_MAX_RSS_KIB "))
        .and_then(|v| v.trim().parse().ok());
    for l in stderr
        .lines()
        .filter(|l| !l.starts_with("KORA_MAX_RSS_KIB"))
    {
        eprintln!("    {l}");
    }
    CliRun {
        wall,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        max_rss_kib,
        ok: out.status.success(),
    }
}

/// The embedded thresholds with a lower latency limit, as the next minor version.
fn candidate_thresholds(path: &Path) {
    let mut t: serde_json::Value = serde_json::from_str(kora_policy::EMBEDDED_THRESHOLDS).unwrap();
    t["version"] = "1.2.0".into();
    t["latency"]["lat_p95_limit_ms"] = 4_000.into();
    std::fs::write(path, serde_json::to_vec_pretty(&t).unwrap()).unwrap();
}

// ---- the service on the year ----------------------------------------------------------

/// Every path the dashboards ask (`dashboards/app.js`; `/metrics` for the Grafana board) and
/// `/v1/series`, with the label of the table.
fn dashboard_paths(now: i64) -> Vec<String> {
    let mut paths: Vec<String> = [
        "/",
        "/v1/health",
        "/v1/profile",
        "/v1/triggers",
        "/v1/thresholds",
        "/v1/suggestions?limit=3",
        "/v1/suggestions?limit=50",
        "/v1/metrics/product?range=24h",
        "/v1/metrics/product?range=7d",
        "/v1/metrics/product?range=all",
        "/v1/windows?kind=runs&limit=1000",
        "/v1/windows?kind=time&metric=active_sessions&limit=120",
        "/v1/windows?kind=time&metric=queue_wait_ms&limit=120",
        "/v1/windows?kind=runs&metric=validation_retry_count&limit=500",
        "/v1/windows?kind=runs&metric=budget_breach_count&limit=500",
        "/v1/log?kind=run&limit=1000",
        "/v1/log?kind=run&substrate=cloud&limit=5",
        "/v1/log?kind=run&substrate=cloud&limit=20",
        "/v1/log?kind=model_load&limit=20",
        "/v1/log?kind=context_request&limit=20",
        "/v1/log?kind=context_oom&limit=20",
        "/v1/log?kind=export&limit=50",
        "/v1/consent",
        "/v1/export/preview",
        "/v1/stream?follow=false",
        "/metrics",
        "/v1/series",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    paths.push(format!(
        "/v1/series?series={}&from_ms={}&to_ms={now}&points=500",
        Signal::CpuLoadPct.as_str(),
        now - DAY_MS
    ));
    paths.push(format!(
        "/v1/series?series={}&from_ms={}&to_ms={now}&points=2000",
        Signal::RamFreeMb.as_str(),
        now - 31 * DAY_MS
    ));
    paths
}

/// p50 and p99 (ms) of `LATENCY_REQUESTS` sequential requests of `path` on one keep-alive
/// connection (fewer, 20 at least, when they take more than `LATENCY_BUDGET`), after 10
/// unmeasured ones; the body is read whole. Also answers the requests made and the body's size.
fn latency(agent: &ureq::Agent, base: &str, path: &str) -> (f64, f64, usize, usize) {
    let url = format!("{base}{path}");
    let mut bytes = 0;
    let mut once = || {
        let mut r = agent.get(&url).call().unwrap();
        assert_eq!(r.status(), 200, "{path}");
        bytes = r
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_vec()
            .unwrap()
            .len();
    };
    for _ in 0..10 {
        once();
    }
    let began = Instant::now();
    let mut v: Vec<f64> = Vec::with_capacity(LATENCY_REQUESTS);
    while v.len() < LATENCY_REQUESTS && (v.len() < 20 || began.elapsed() < LATENCY_BUDGET) {
        v.push(time(&mut once).0.as_secs_f64() * 1e3);
    }
    v.sort_by(f64::total_cmp);
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (p(0.5), p(0.99), v.len(), bytes)
}

/// Spawns `serve` (default probe) and kills it with SIGKILL after `700 + 150 * round` ms of 4
/// clients posting batches of 100 samples.
fn kill_under_load(data: &Path, round: u64) {
    {
        let (mut child, base, _) = spawn_serve(data);
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..4)
            .map(|c| {
                let (stop, acked, url) =
                    (stop.clone(), acked.clone(), format!("{base}/v1/samples"));
                std::thread::spawn(move || {
                    let agent = agent(Duration::from_secs(2));
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let ts = kora_pipeline::clock::wall_ms() - 1_000;
                        let samples: Vec<Sample> = (0..100)
                            .map(|j| {
                                Sample::reading(
                                    Signal::ALL[(j % 10) as usize],
                                    ts - j,
                                    (i % 100) as f64,
                                )
                            })
                            .collect();
                        let body = rmp_serde::to_vec_named(&SampleBatch { samples }).unwrap();
                        if agent
                            .post(&url)
                            .header("content-type", "application/msgpack")
                            .send(&body[..])
                            .is_ok_and(|r| r.status() == 200)
                        {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        i += 1 + c;
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(700 + 150 * round));
        child.kill().unwrap();
        child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        assert!(
            acked.load(Ordering::Relaxed) > 0,
            "no batch was acknowledged before the kill"
        );
    }
}

/// Kills `serve` under write load and times the next start (spawn to listening); 5 rounds.
/// Each restarted service is killed too.
fn starts_after_sigkill(data: &Path) -> Vec<f64> {
    (0..5u64)
        .map(|round| {
            kill_under_load(data, round);
            let (mut child, _, took) = spawn_serve(data);
            child.kill().unwrap();
            child.wait().unwrap();
            took.as_secs_f64() * 1e3
        })
        .collect()
}

/// The store's own open of the data directory's file (ms), closed again at once: what a start
/// costs before the pipeline folds anything.
fn store_open_ms(data: &Path) -> f64 {
    let db = data.join(DB_FILE);
    let (took, store) = time(|| kora_store::Store::open(&db, kora_store::StoreOptions::default()));
    drop(store.unwrap());
    took.as_secs_f64() * 1e3
}

/// Where the store file's bytes are: every redb table's entries, the bytes of its pages and
/// the bytes stored in them, and the file's pages no table holds.
fn tables_report(data: &Path) {
    let (page, allocated, rows) = common::store_tables(&data.join(DB_FILE));
    let in_tables: u64 = rows.iter().map(|t| t.in_pages).sum();
    println!(
        "  the store file by table (redb, {page} B pages; {} in pages of its tables, {} allocated in all):",
        mb(in_tables as f64),
        mb(allocated as f64)
    );
    for t in rows {
        println!(
            "    {:<14} {:>12} entries {:>10} in pages, {:>10} stored ({:.0} B an entry)",
            t.name,
            rate(t.entries as f64),
            mb(t.in_pages as f64),
            mb(t.stored as f64),
            t.stored as f64 / t.entries.max(1) as f64
        );
    }
}

// ---- the baselines --------------------------------------------------------------------

/// SQLite and Prometheus's TSDB holding the same samples (and, SQLite, the same runs).
struct Baselines {
    sqlite: u64,
    sqlite_s: f64,
    /// promtool's blocks: bytes, blocks, seconds.
    prometheus: Option<(u64, usize, f64)>,
    /// The same after a Prometheus server compacted them.
    compacted: Option<(u64, usize, f64)>,
}

fn promtool() -> Option<&'static str> {
    ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// promtool runs in flight, each with its input file.
type Jobs = Vec<(std::process::Child, std::path::PathBuf)>;

fn finish_promtool(job: (std::process::Child, std::path::PathBuf)) {
    let (mut child, input) = job;
    assert!(child.wait().unwrap().success(), "promtool failed");
    std::fs::remove_file(&input).unwrap();
}

/// Writes one UTC day of samples as OpenMetrics (each family together, in time order) and
/// starts promtool turning it into blocks in `out` (at most `PROMTOOL_JOBS` at once).
fn promtool_day(promtool: &str, dir: &Path, out: &Path, day: &mut Vec<Sample>, jobs: &mut Jobs) {
    let Some(first) = day.first().and_then(|s| s.ts_ms) else {
        return;
    };
    let input = dir.join(format!("{}.om", first.div_euclid(DAY_MS)));
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        for signal in Signal::ALL {
            writeln!(f, "# TYPE {} gauge", signal.as_str()).unwrap();
            for s in day.iter().filter(|s| s.signal == signal) {
                let ts = s.ts_ms.unwrap();
                writeln!(
                    f,
                    "{} {} {}.{:03}",
                    signal.as_str(),
                    s.value.unwrap(),
                    ts / 1000,
                    ts % 1000
                )
                .unwrap();
            }
        }
        writeln!(f, "# EOF").unwrap();
    }
    if jobs.len() >= PROMTOOL_JOBS {
        finish_promtool(jobs.remove(0));
    }
    let child = std::process::Command::new(promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(out)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    jobs.push((child, input));
    day.clear();
}

/// The block directories (ULIDs) under a TSDB directory, and whether a compaction is writing
/// one.
fn tsdb_blocks(tsdb: &Path) -> (usize, bool) {
    let mut blocks = 0;
    let mut writing = false;
    for e in std::fs::read_dir(tsdb).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        writing |= name.contains(".tmp");
        blocks += usize::from(name.len() == 26 && name.chars().all(|c| c.is_ascii_alphanumeric()));
    }
    (blocks, writing)
}

/// Lets a Prometheus server compact promtool's 2 h blocks as it compacts its own (it starts a
/// minute after start, then merges 3 blocks of a range into the next range, up to 486 h with a
/// 400-day retention); answers the TSDB's allocated bytes after the server stopped, its blocks
/// and how long that took. `None` without the `prometheus` binary or with
/// `KORA_YEAR_PROMETHEUS_COMPACT=0`.
fn prometheus_compact(tsdb: &Path) -> Option<(u64, usize, f64)> {
    if env_or("KORA_YEAR_PROMETHEUS_COMPACT", 1) == 0 {
        return None;
    }
    let prometheus = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let config = tsdb.with_extension("yml");
    std::fs::write(&config, "global:\n  scrape_interval: 1h\n").unwrap();
    let began = Instant::now();
    let child = std::process::Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", tsdb.display()))
        .args([
            "--storage.tsdb.retention.time=400d",
            "--web.listen-address=127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (initial, _) = tsdb_blocks(tsdb);
    let mut last = (initial, Instant::now());
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let (n, writing) = tsdb_blocks(tsdb);
        if n != last.0 || writing {
            last = (n, Instant::now());
        }
        let started = last.0 < initial || began.elapsed() > Duration::from_secs(120);
        if started && last.1.elapsed() >= Duration::from_secs(10) {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(3_600),
            "Prometheus was still compacting after an hour"
        );
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut child = child;
    child.wait().unwrap();
    Some((
        allocated_bytes(tsdb),
        tsdb_blocks(tsdb).0,
        began.elapsed().as_secs_f64(),
    ))
}

fn baselines(start_ms: i64, end_ms: i64, probe_ticks: Vec<i64>) -> Baselines {
    let sqlite_dir = tempdir();
    let prom_dir = tempdir();
    let prom_out = prom_dir.path().join("tsdb");
    let promtool = promtool();
    if promtool.is_none() {
        println!(
            "  PROMETHEUS SKIPPED: promtool is not installed (apt-get install prometheus); no TSDB figure this run"
        );
    }
    let mut c = sqlite_open(sqlite_dir.path());
    let mut sqlite_s = 0.0;
    let mut prom_s = 0.0;
    let mut day: Vec<Sample> = Vec::new();
    let mut day_no = start_ms.div_euclid(DAY_MS);
    let mut jobs: Jobs = Vec::new();
    let (rx, producer) = hours(start_ms, end_ms, probe_ticks);
    for hour in rx {
        let (took, ()) = time(|| {
            sqlite_append_samples(&mut c, &hour.samples);
            if !hour.runs.is_empty() {
                sqlite_append_runs(&mut c, &hour.runs);
            }
        });
        sqlite_s += took.as_secs_f64();
        if let Some(p) = promtool {
            let d = hour.start_ms.div_euclid(DAY_MS);
            if d != day_no {
                prom_s += time(|| promtool_day(p, prom_dir.path(), &prom_out, &mut day, &mut jobs))
                    .0
                    .as_secs_f64();
                day_no = d;
            }
            day.extend(hour.samples);
        }
    }
    producer.join().unwrap();
    if let Some(p) = promtool {
        prom_s += time(|| {
            promtool_day(p, prom_dir.path(), &prom_out, &mut day, &mut jobs);
            jobs.drain(..).for_each(finish_promtool);
        })
        .0
        .as_secs_f64();
    }
    // Closing the last connection checkpoints the WAL into the database and removes it.
    drop(c);
    let prometheus =
        promtool.map(|_| (allocated_bytes(&prom_out), tsdb_blocks(&prom_out).0, prom_s));
    Baselines {
        sqlite: allocated_bytes(sqlite_dir.path()),
        sqlite_s,
        prometheus,
        compacted: prometheus.and_then(|_| prometheus_compact(&prom_out)),
    }
}

// ---- the report -----------------------------------------------------------------------

fn mb(bytes: f64) -> String {
    format!("{:.1} MB", bytes / 1e6)
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0))
}

fn worst(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

fn main() {
    let days = env_or("KORA_YEAR_DAYS", 365).max(1) as i64;
    let restart_days = env_or("KORA_YEAR_RESTART_DAYS", 7).max(1) as i64;
    let hz = clock_ticks_per_s();
    let bench_cpu0 = cpu_ticks("self");
    let now = kora_pipeline::clock::wall_ms();
    let end_ms = now.div_euclid(HOUR_MS) * HOUR_MS;
    let start_ms = end_ms - days * DAY_MS;
    let segments: Vec<(i64, i64)> = (0..)
        .map(|k| {
            let a = start_ms + k * restart_days * DAY_MS;
            (a, end_ms.min(a + restart_days * DAY_MS))
        })
        .take_while(|(a, _)| *a < end_ms)
        .collect();
    let probe_ticks: Vec<i64> = segments.iter().map(|(a, _)| a - TICK_MS).collect();
    let dir = tempdir();
    let data = dir.path().join("data");
    println!(
        "a year on one machine: {days} days ending {:.1} h ago (the default 5 s probe on ten signals, 2,000 runs a day over three models in 100 sessions, loads, context requests), sent to `kora-telemetry serve` over loopback; serve restarted every {restart_days} days ({} segments)",
        (now - end_ms) as f64 / HOUR_MS as f64,
        segments.len()
    );

    // 1. The store, through the service.
    let (totals, boundaries, sent, built) = build(&data, start_ms, &segments, &probe_ticks, hz);
    let bench_cpu = (cpu_ticks("self") - bench_cpu0) as f64 / hz;
    println!(
        "built in {:.1} s: {} samples, {} runs, {} events in {} requests; time in the samples requests {:.1} s ({} samples/s), runs {:.1} s, events {:.1} s, waiting for the generator {:.1} s, engine catching up at segment ends {:.1} s, restarts {:.1} s, stops {:.1} s; serve used {:.1} s of CPU, the bench (client and generator) {bench_cpu:.1} s",
        built.as_secs_f64(),
        rate(totals.samples as f64),
        rate(totals.runs as f64),
        rate(totals.events as f64),
        rate(totals.requests as f64),
        totals.samples_s,
        rate(totals.samples as f64 / totals.samples_s),
        totals.runs_s,
        totals.events_s,
        totals.waiting_s,
        totals.settle_s,
        totals.restart_s,
        totals.stop_s,
        totals.serve_cpu_s,
    );

    // 2. The retention once more, as a service running now applies it at start.
    let retain = retain_ids_args(&sent, end_ms);
    let retain: Vec<&str> = retain.iter().map(String::as_str).collect();
    let (child, base, _) = spawn_serve_with(&data, &retain, "error");
    let probed_at = kora_pipeline::clock::wall_ms();
    wait_for_probe(&base, probed_at - 2 * TICK_MS, probed_at + 2 * TICK_MS);
    let (_, health) = settle(&base);
    stop_serve(child);
    let size = allocated_bytes(&data);
    let apparent = apparent_bytes(&data);
    let log_records = health["log_records"].as_u64().unwrap();
    println!(
        "after the retention and a clean stop: data dir {} allocated ({} apparent); {} log records, {} samples kept raw, {} series",
        mb(size as f64),
        mb(apparent as f64),
        rate(log_records as f64),
        rate(health["samples"].as_f64().unwrap()),
        health["series"]
    );
    let raw = health["samples"].as_u64().unwrap();
    if days > RAW_DAYS + 1 {
        // 14 days of ten signals at 5 s, and less than a chunk (1,024 samples, 85 minutes at
        // 5 s) of each series still in its head.
        let bound = (RAW_DAYS + 1) * DAY_MS / TICK_MS * 10;
        assert!(
            raw <= bound as u64,
            "the retention was not applied: {raw} samples raw, more than {bound}"
        );
    }
    tables_report(&data);
    let growth = growth_per_day(&boundaries, days);
    match &growth {
        Some((per_day, a, b)) => println!(
            "growth at steady state: {} a day (size after day {} {} -> after day {} {}, both after a restart that rolled up everything written before it, {restart_days} days of raw samples on top)",
            mb(*per_day),
            a.to_day,
            mb(a.allocated as f64),
            b.to_day,
            mb(b.allocated as f64),
        ),
        None => println!(
            "growth at steady state: not measurable on {days} days (needs two full {restart_days}-day segments that start more than {RAW_DAYS} days before the last day)"
        ),
    }

    if let Some(keep) = std::env::var_os("KORA_YEAR_KEEP") {
        // The store as a year-old service leaves it, for another bench to start from (the
        // soak's `KORA_SOAK_FROM`); the measurements below are skipped.
        let keep = std::path::PathBuf::from(keep);
        copy_dir(&data, &keep);
        println!(
            "KORA_YEAR_KEEP: the data dir copied to {}; the measurements are skipped",
            keep.display()
        );
        return;
    }

    // 3. replay and backtest of the whole log.
    let replay = cli(&data, &["replay"]);
    let replay_line = replay.stdout.lines().next().unwrap_or("").to_owned();
    println!(
        "replay: {:.2} s for {} log records ({} records/s), peak RSS {}; {replay_line}",
        replay.wall.as_secs_f64(),
        rate(log_records as f64),
        rate(log_records as f64 / replay.wall.as_secs_f64()),
        mib(replay.max_rss_kib),
    );
    if !replay.ok {
        println!(
            "  REPLAY FOUND DIFFERENCES (exit code 1):\n{}",
            replay.stdout
        );
    }
    let candidate = dir.path().join("candidate-thresholds.json");
    candidate_thresholds(&candidate);
    let backtest = cli(
        &data,
        &["backtest", "--thresholds", candidate.to_str().unwrap()],
    );
    assert!(backtest.ok, "backtest failed:\n{}", backtest.stdout);
    println!(
        "backtest (latency limit 4500 -> 4000 ms): {:.2} s for {} log records ({} records/s), peak RSS {}",
        backtest.wall.as_secs_f64(),
        rate(log_records as f64),
        rate(log_records as f64 / backtest.wall.as_secs_f64()),
        mib(backtest.max_rss_kib),
    );
    for l in backtest.stdout.lines() {
        println!("    {l}");
    }

    // 4. Start after a clean stop.
    let mut clean = Vec::new();
    for _ in 0..5 {
        let (child, base, took) = spawn_serve(&data);
        clean.push(took.as_secs_f64() * 1e3);
        get_json(
            &agent(Duration::from_secs(60)),
            &format!("{base}/v1/health"),
        );
        std::thread::sleep(Duration::from_millis(300));
        stop_serve(child);
    }
    let clean_open: Vec<f64> = (0..3).map(|_| store_open_ms(&data)).collect();
    println!(
        "start after a clean stop (spawn to listening): {:.1} ms median, {:.1} ms worst of 5 {clean:.1?}; the store's own open {:.1} ms (median of 3)",
        median(clean.clone()),
        worst(&clean),
        median(clean_open.clone())
    );

    // 5. Every dashboard endpoint, then the daemon's memory.
    let (child, base, _) = spawn_serve(&data);
    let pid = child.id();
    let agent_ = agent(Duration::from_secs(60));
    let now = kora_pipeline::clock::wall_ms();
    let mut latencies = Vec::new();
    for path in dashboard_paths(now) {
        let (p50, p99, n, bytes) = latency(&agent_, &base, &path);
        println!(
            "  {path:<66} p50 {p50:>8.2} ms  p99 {p99:>8.2} ms  ({n} requests, {} bytes)",
            rate(bytes as f64)
        );
        latencies.push((path, p50, p99));
    }
    std::thread::sleep(Duration::from_secs(2));
    let rss = status_kib(pid, "VmRSS:") as f64 / 1024.0;
    let hwm = status_kib(pid, "VmHWM:") as f64 / 1024.0;
    println!("daemon serving the store: VmRSS {rss:.1} MiB, VmHWM {hwm:.1} MiB");
    stop_serve(child);

    // 6. Start after SIGKILL under write load.
    let killed = starts_after_sigkill(&data);
    let killed_open: Vec<f64> = (0..3)
        .map(|round| {
            kill_under_load(&data, round);
            store_open_ms(&data)
        })
        .collect();
    println!(
        "start after SIGKILL under 4 writing clients: {:.1} ms median, {:.1} ms worst of 5 {killed:.1?}; the store's own open after such a kill {:.1} ms (median of 3 {killed_open:.1?})",
        median(killed.clone()),
        worst(&killed),
        median(killed_open.clone())
    );

    // 7. SQLite and Prometheus on the same samples.
    println!("baselines: the same samples into SQLite and Prometheus's TSDB ...");
    let base_line = baselines(start_ms, end_ms, probe_ticks);
    println!(
        "  sqlite: {} allocated (all {} samples raw, {} runs), inserted in {:.1} s",
        mb(base_line.sqlite as f64),
        rate(totals.samples as f64),
        rate(totals.runs as f64),
        base_line.sqlite_s
    );
    if let Some((bytes, blocks, secs)) = base_line.prometheus {
        println!(
            "  prometheus: {} allocated (all samples raw, {blocks} blocks of 2 h as promtool writes them), promtool {secs:.1} s",
            mb(bytes as f64)
        );
    }
    match base_line.compacted {
        Some((bytes, blocks, secs)) => println!(
            "  prometheus after its own compaction: {} allocated ({blocks} blocks, the whole data dir of a stopped server), {secs:.1} s",
            mb(bytes as f64)
        ),
        None if base_line.prometheus.is_some() => println!(
            "  prometheus compaction SKIPPED: no prometheus binary, or KORA_YEAR_PROMETHEUS_COMPACT=0"
        ),
        None => {}
    }

    // 8. The table.
    let year = |bytes: f64| bytes * 365.0 / days as f64;
    let slowest = latencies.iter().max_by(|a, b| a.2.total_cmp(&b.2)).unwrap();
    println!();
    println!(
        "## A year on one machine, measured: {days} days (`KORA_YEAR_DAYS={days} cargo bench --bench year`)"
    );
    println!();
    println!("| figure | measured | goal (issue 14) |");
    println!("| --- | --- | --- |");
    println!(
        "| data dir after a clean stop, {days} days, retention applied | {} ({} a day on average{}) | ≤ 100 MB a year |",
        mb(size as f64),
        mb(size as f64 / days as f64),
        if days < 365 {
            format!(", {} for 365 days at that rate", mb(year(size as f64)))
        } else {
            String::new()
        }
    );
    match &growth {
        Some((per_day, a, b)) => println!(
            "| growth a day at steady state (days {}-{}) | {} a day ({} a year) | ≤ 100 MB a year |",
            a.to_day,
            b.to_day,
            mb(*per_day),
            mb(per_day * 365.0)
        ),
        None => println!("| growth a day at steady state | not measurable on {days} days | |"),
    }
    println!(
        "| SQLite, same samples (raw) and runs | {} | (kora ≤ it) |",
        mb(base_line.sqlite as f64)
    );
    match base_line.prometheus {
        Some((bytes, blocks, _)) => println!(
            "| Prometheus TSDB, same samples (raw, {blocks} 2 h blocks from promtool) | {} | |",
            mb(bytes as f64)
        ),
        None => println!("| Prometheus TSDB | SKIPPED: promtool not installed | |"),
    }
    if let Some((bytes, blocks, _)) = base_line.compacted {
        println!(
            "| Prometheus TSDB after its own compaction ({blocks} blocks) | {} | |",
            mb(bytes as f64)
        );
    }
    println!(
        "| start after a clean stop, median / worst of 5 | {:.1} / {:.1} ms (the store's open {:.1} ms) | ≤ 100 ms worst of 5 |",
        median(clean.clone()),
        worst(&clean),
        median(clean_open.clone())
    );
    println!(
        "| start after SIGKILL, median / worst of 5 | {:.1} / {:.1} ms (the store's open {:.1} ms) | ≤ 100 ms worst of 5 |",
        median(killed.clone()),
        worst(&killed),
        median(killed_open.clone())
    );
    println!(
        "| `replay` of the whole log ({} records) | {:.2} s, {} records/s, peak RSS {} | ≥ 1M records/s; the year in ≤ 5 s |",
        rate(log_records as f64),
        replay.wall.as_secs_f64(),
        rate(log_records as f64 / replay.wall.as_secs_f64()),
        mib(replay.max_rss_kib)
    );
    println!(
        "| `backtest` of the whole log | {:.2} s, {} records/s, peak RSS {} | |",
        backtest.wall.as_secs_f64(),
        rate(log_records as f64 / backtest.wall.as_secs_f64()),
        mib(backtest.max_rss_kib)
    );
    println!(
        "| every dashboard endpoint, p99 (slowest: `{}`) | {:.2} ms (p50 {:.2} ms) | p99 ≤ 50 ms |",
        slowest.0, slowest.2, slowest.1
    );
    for (path, p50, p99) in &latencies {
        println!("| &nbsp;&nbsp;`{path}` p50 / p99 | {p50:.2} / {p99:.2} ms | p99 ≤ 50 ms |");
    }
    println!("| RSS serving the store (VmRSS / VmHWM) | {rss:.1} / {hwm:.1} MiB | ≤ 64 MiB |");
    println!(
        "| build through the service | {:.0} s ({} samples, {} runs, {} events, {} requests) | |",
        built.as_secs_f64(),
        rate(totals.samples as f64),
        rate(totals.runs as f64),
        rate(totals.events as f64),
        rate(totals.requests as f64),
    );
}
