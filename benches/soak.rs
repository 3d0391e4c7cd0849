//! The soak (issue 16): a realistic machine against the real `kora-telemetry serve` for
//! `KORA_SOAK_MINUTES` minutes (default 60), self-stopping, with goals checked at the end.
//!
//! One `serve` on 127.0.0.1 with its data dir in a temp dir and its default 5 s probe running
//! for real. Against it, each through `kora_client`:
//!
//! - **Four sessions**, rotating: each sends `session_started` and a `context_request`, then
//!   a run every 2-6 s (`POST /v1/runs`, one of three models chosen per session, realistic
//!   stage timings and tokens, a client id per run so that a retry stores nothing twice),
//!   and `session_ended` after 1.5-5 minutes; the next session of the slot starts 5-20 s later.
//! - **The application's readings** every 5 s (`POST /v1/samples`: `active_sessions`,
//!   `active_generations`, `queue_wait_ms`, which the probe cannot see), with client ids.
//! - **Model loads**: the three models at start, one reloaded every 4 minutes.
//! - The events (sessions, context requests, model loads) go through a `kora_client::Sender`
//!   with a spool on disk, as an integration would send them; runs and readings go through
//!   `Client` calls, so that each write is timed. The writers' client retries (10 attempts, 100
//!   ms doubling to 2 s, `Retry-After` honoured): the restart must be absorbed by it. A call
//!   that still fails counts as an error, and its records are sent again on the next turn.
//! - **The dashboards' reads** every 5 s: the overview's requests (`/v1/profile`,
//!   `/v1/triggers`, `/v1/suggestions?limit=3`, `/v1/health`, `/v1/metrics/product?range=all`,
//!   `/v1/log?kind=run&substrate=cloud&limit=5`) and, in turn, one other view's (latency,
//!   concurrency, reliability, suggestions, product metrics, privacy, thresholds: the requests
//!   of `dashboards/app.js`), a Prometheus scrape of `/metrics` every 15 s, and one
//!   `/v1/stream` held open as the page holds its `EventSource` (reopened after the last id).
//! - **A restart in the middle**: SIGTERM, wait for the process to end, start it again on the
//!   same data dir and the same port; the clients carry on (retries, spool).
//! - **A burst** at two thirds of the run: one minute of `POST /v1/runs` (one run a request,
//!   64 open-loop senders, latency from each request's due time) at twice the sustainable
//!   rate, without retries, so that every `429`/`503` is counted; those answers are documented
//!   (http-api.md: the write queue is full, retry) and allowed there.
//!
//! The sustainable rate is measured first, as the load bench does, on a service of its own (a
//! fresh data dir, stopped after, so that the soak's store holds only the machine): steps of
//! 3 s at 25, 50, 100, ... runs/s (the same senders), the highest rate at which 99 % of the
//! offered rate was achieved with no error or refusal and a p99 under 50 ms; a step that misses
//! is tried once more before the ramp stops (a stall of another process on a shared machine is
//! enough to put a 3 s step's p99 over the bar). `KORA_SOAK_RATE` (runs/s) gives it instead.
//!
//! Each minute prints: RSS (mean of `VmRSS` read every second), the service's CPU over the
//! minute as a share of one core (`utime + stime` of `/proc/PID/stat`), p99 of the writes and
//! of the reads (each call timed, retries included), requests, errors by status, the burst's
//! answers, records acknowledged so far.
//!
//! At the end every acknowledged record is looked for: the runs and events by client id in
//! `GET /v1/log` (pages of 1,000 per kind), the readings by count per series in `GET /v1/series`
//! (only this client writes those three series). Goals: RSS flat (the mean of the last ten
//! minutes within 10 % of the mean of the first ten after a five-minute warm-up; for a shorter
//! run the windows shrink in proportion, at least one minute each), 0 errors besides the
//! burst's 429/503, every acknowledged record present, and none stored twice. A markdown table
//! of the figures and goals is printed; the exit status is 1 when a goal is missed.
//!
//! To tell a leak from memory held since the burst, the table also gives the RSS drift within
//! the calm stretches (before the restart; after the burst) and the RSS of one more start on
//! the final store (idle, then after the dashboards' reads) beside that of the calibration's
//! service on its empty store.
//!
//! **History**: a machine in use has a store that already holds its past, larger than redb's
//! page cache (2 MiB), which its reads fill; an empty store grows under the soak, and the
//! cache with it, so the RSS it measures then is the cache's first fill, not a leak.
//! `KORA_SOAK_FROM=DIR` starts the service on a copy of the data dir `DIR`, e.g. a month of one
//! machine built by the year bench (`KORA_YEAR_DAYS=30 KORA_YEAR_KEEP=DIR cargo bench --bench
//! year`); without it the store starts empty.
//!
//! `KORA_SOAK_MINUTES=60 cargo bench --bench soak` (at least 3 minutes).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use kora_client::model::{
    ContextRequest, Event, LoadOutcome, LogQuery, ModelLoad, RangeQuery, Record, Run, RunBatch,
    Sample, SampleBatch, SeriesQuery, SeriesView, SessionEvent, Signal, SuggestionsQuery,
    WindowsQuery,
};
use kora_client::{Client, ClientError, RetryPolicy, Sender, SpoolOptions};
use kora_pipeline::clock::wall_ms;

/// Open-loop senders of the calibration and the burst.
const SENDERS: usize = 64;
/// One calibration step.
const STEP_S: f64 = 3.0;
/// How long the burst is offered.
const BURST_S: f64 = 60.0;
/// The p99 of `POST /v1/runs` a sustainable rate keeps.
const P99_BAR_MS: f64 = 50.0;
/// The writers' and readers' client.
const RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 10,
    initial_delay: Duration::from_millis(100),
    max_delay: Duration::from_secs(2),
    max_retry_after: Duration::from_secs(10),
};
/// The three models: VRAM to load (MB), parameters (billions), quantization, the context it
/// supports locally, and how much slower than the reference its runs are.
const MODEL_FACTS: [(f64, f64, &str, u64, f64); 3] = [
    (5_200.0, 8.0, "q4_k_m", 8_192, 1.0),
    (9_800.0, 14.0, "q4_k_m", 32_768, 1.25),
    (7_900.0, 7.0, "q8_0", 32_768, 0.9),
];
/// The series only the application writes (the probe does not): checked by count.
const APP_SIGNALS: [Signal; 3] = [
    Signal::ActiveSessions,
    Signal::ActiveGenerations,
    Signal::QueueWaitMs,
];

// ---- the schedule ----------------------------------------------------------------------

/// Minutes are counted from 0 here and printed from 1.
struct Plan {
    minutes: u64,
    warm: u64,
    window: u64,
    restart_at: Duration,
    burst_at: Duration,
}

impl Plan {
    fn new(minutes: u64) -> Plan {
        // The hour's proportions: 5 minutes of warm-up, windows of 10, the restart at 30, the
        // burst at 40.
        let scale = |m: f64| ((m * minutes as f64 / 60.0).round() as u64).max(1);
        Plan {
            minutes,
            warm: scale(5.0),
            window: scale(10.0),
            restart_at: Duration::from_secs(minutes * 30),
            burst_at: Duration::from_secs(minutes * 2 / 3 * 60),
        }
    }
    fn first(&self) -> Range<u64> {
        self.warm..self.warm + self.window
    }
    fn last(&self) -> Range<u64> {
        self.minutes - self.window..self.minutes
    }
    fn note(&self, m: u64) -> String {
        let mut notes = Vec::new();
        if m < self.warm {
            notes.push("warm-up");
        }
        if self.first().contains(&m) {
            notes.push("first window");
        }
        if self.last().contains(&m) {
            notes.push("last window");
        }
        if self.restart_at.as_secs() / 60 == m {
            notes.push("restart");
        }
        if self.burst_at.as_secs() / 60 == m {
            notes.push("burst");
        }
        notes.join(", ")
    }
}

/// 1-based minutes `a-b` of a window.
fn span(r: &Range<u64>) -> String {
    if r.end - r.start == 1 {
        format!("{}", r.start + 1)
    } else {
        format!("{}-{}", r.start + 1, r.end)
    }
}

// ---- accounting ------------------------------------------------------------------------

#[derive(Default)]
struct Minute {
    write_ms: Vec<f64>,
    read_ms: Vec<f64>,
    burst_ms: Vec<f64>,
    requests: u64,
    errors: BTreeMap<String, u64>,
    burst_ok: u64,
    burst_refused: u64,
}

struct MinuteLine {
    rss_mib: f64,
    cpu_pct: f64,
}

#[derive(Default)]
struct Shared {
    minute: Mutex<Minute>,
    stop: AtomicBool,
    pid: AtomicU32,
    /// Client ids of the runs acknowledged.
    runs_acked: Mutex<Vec<String>>,
    /// Readings acknowledged per series.
    samples_acked: Mutex<BTreeMap<&'static str, u64>>,
    /// Client ids of the events queued in the sender.
    events_queued: Mutex<Vec<String>>,
    open_sessions: AtomicU64,
    write_ms: Mutex<Vec<f64>>,
    read_ms: Mutex<Vec<f64>>,
    /// Latencies of the reads per request (path and query).
    read_by: Mutex<BTreeMap<&'static str, Vec<f64>>>,
    errors: Mutex<BTreeMap<String, u64>>,
    error_examples: Mutex<Vec<String>>,
    burst: Mutex<Option<Step>>,
    restart: Mutex<Option<String>>,
    stream_events: AtomicU64,
    stream_opens: AtomicU64,
}

fn label(e: &ClientError) -> String {
    match e {
        ClientError::Service { status, body, .. } => format!("{status} {}", body.error),
        ClientError::Unreachable { .. } => "unreachable".into(),
        ClientError::Answer { .. } => "unreadable answer".into(),
        _ => "client".into(),
    }
}

fn p(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

impl Shared {
    fn error(&self, what: &str, e: &ClientError) {
        let l = label(e);
        *self
            .minute
            .lock()
            .unwrap()
            .errors
            .entry(l.clone())
            .or_default() += 1;
        *self.errors.lock().unwrap().entry(l).or_default() += 1;
        let mut ex = self.error_examples.lock().unwrap();
        if ex.len() < 10 {
            ex.push(format!("{what}: {e}"));
        }
    }

    /// A write of the machine (not the burst), timed from its call.
    fn write<T>(&self, what: &str, t0: Instant, r: &Result<T, ClientError>) {
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut m = self.minute.lock().unwrap();
        m.requests += 1;
        m.write_ms.push(ms);
        drop(m);
        self.write_ms.lock().unwrap().push(ms);
        if let Err(e) = r {
            self.error(what, e);
        }
    }

    fn read<T>(&self, what: &'static str, t0: Instant, r: &Result<T, ClientError>) {
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut m = self.minute.lock().unwrap();
        m.requests += 1;
        m.read_ms.push(ms);
        drop(m);
        self.read_ms.lock().unwrap().push(ms);
        self.read_by
            .lock()
            .unwrap()
            .entry(what)
            .or_default()
            .push(ms);
        if let Err(e) = r {
            self.error(what, e);
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sleeps `d`, or less when the soak is stopping; answers whether it is.
    fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while !self.stopping() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(left.min(Duration::from_millis(200)));
        }
        true
    }
}

// ---- the open-loop senders (calibration and burst) -------------------------------------

#[derive(Default)]
struct Step {
    rate: f64,
    offered: u64,
    ok: u64,
    refused: u64,
    errors: BTreeMap<String, u64>,
    ok_ms: Vec<f64>,
    refused_ms: Vec<f64>,
    elapsed_s: f64,
}

impl Step {
    fn achieved(&self) -> f64 {
        self.ok as f64 / self.elapsed_s
    }
    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
    fn met(&self) -> bool {
        self.error_count() == 0
            && self.refused == 0
            && self.achieved() >= 0.99 * self.rate
            && p(&self.ok_ms, 0.99) < P99_BAR_MS
    }
    fn line(&self) -> String {
        format!(
            "offered {:>5.0} runs/s ({} runs): achieved {:>5.0}/s, ok {}, 429/503 {}, errors {}, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; refusals p99 {:.1} ms",
            self.rate,
            self.offered,
            self.achieved(),
            self.ok,
            self.refused,
            self.error_count(),
            p(&self.ok_ms, 0.5),
            p(&self.ok_ms, 0.99),
            p(&self.ok_ms, 1.0),
            p(&self.refused_ms, 0.99),
        )
    }
}

/// What [`open_loop`] tells of each answer: the run's client id, the latency from its due time
/// (ms), the outcome.
type Each<'a> = dyn Fn(&str, f64, Result<(), &ClientError>) + Sync + 'a;

/// `rate` runs a second, one a request, for `seconds`, from [`SENDERS`] threads without
/// retries; each answer is also given to `each`.
fn open_loop(base: &str, rate: f64, seconds: f64, prefix: &str, each: &Each) -> Step {
    let total = (rate * seconds) as u64;
    let next = AtomicU64::new(0);
    let step = Mutex::new(Step {
        rate,
        offered: total,
        ..Step::default()
    });
    let start = Instant::now() + Duration::from_millis(50);
    std::thread::scope(|s| {
        for t in 0..SENDERS {
            let (next, step) = (&next, &step);
            s.spawn(move || {
                let client = Client::builder(base)
                    .timeout(Duration::from_secs(30))
                    .retry(RetryPolicy::none())
                    .build();
                let mut rng = Rng::new(1_000 + t as u64);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let id = format!("{prefix}-{i}");
                    let mut r = run(&mut rng, i, MODELS[(i % 3) as usize], wall_ms());
                    r.id = Some(id.clone());
                    r.run_id = id.clone();
                    r.session_id = prefix.to_owned();
                    let answer = client.runs(&RunBatch { runs: vec![r] });
                    let ms = due.elapsed().as_secs_f64() * 1e3;
                    each(&id, ms, answer.as_ref().map(|_| ()));
                    let mut st = step.lock().unwrap();
                    match answer.as_ref().map_err(|e| (e.status(), e)) {
                        Ok(_) => {
                            st.ok += 1;
                            st.ok_ms.push(ms);
                        }
                        Err((Some(429 | 503), _)) => {
                            st.refused += 1;
                            st.refused_ms.push(ms);
                        }
                        Err((_, e)) => *st.errors.entry(label(e)).or_default() += 1,
                    }
                }
            });
        }
    });
    let mut step = step.into_inner().unwrap();
    step.elapsed_s = start.elapsed().as_secs_f64().max(seconds);
    step
}

/// The sustainable rate of `POST /v1/runs`, measured on a service of its own (a fresh data
/// dir, stopped after), so that the soak's service sees only the machine; and the RSS of that
/// service idle on its empty store.
fn sustainable_rate() -> (f64, f64) {
    let tmp = tempdir();
    let (mut child, base, _) = spawn_serve(tmp.path());
    std::thread::sleep(Duration::from_secs(2));
    let empty_rss = proc_rss_mib(child.id()).unwrap_or(0.0);
    let base = base.as_str();
    let mut best = None;
    let mut rate = 25.0;
    let mut n = 0;
    'rates: loop {
        // A step that misses is tried once more: on a shared machine one stall of another
        // process is enough to put a 3 s step's p99 over the bar.
        for _ in 0..2 {
            n += 1;
            let prefix = format!("calibration-{n}");
            let step = open_loop(base, rate, STEP_S, &prefix, &|_, _, _| {});
            println!("  {}", step.line());
            if step.met() {
                best = Some(rate);
                rate *= 2.0;
                if rate > 12_800.0 {
                    break 'rates;
                }
                continue 'rates;
            }
        }
        break;
    }
    stop_service(&mut child);
    match best {
        Some(r) => (r, empty_rss),
        None => {
            println!("  not even 25 runs/s met the bar: the burst offers 50 runs/s");
            (25.0, empty_rss)
        }
    }
}

// ---- the machine -----------------------------------------------------------------------

fn writer_client(base: &str, data_dir: &Path) -> Client {
    Client::builder(base)
        .timeout(Duration::from_secs(10))
        .retry(RETRY)
        .follow_service_file(data_dir)
        .build()
}

fn enqueue(shared: &Shared, sender: &Sender, event: Event, id: String) {
    shared.events_queued.lock().unwrap().push(id);
    sender.enqueue(event).unwrap();
}

/// A run of `model` (index into [`MODELS`]) in `session`, its model time scaled by the model.
fn session_run(rng: &mut Rng, id: String, model: usize, session: &str) -> Run {
    let mut r = run(rng, 0, MODELS[model], wall_ms());
    let factor = MODEL_FACTS[model].4;
    r.model_latency_ms = (r.model_latency_ms * factor).round();
    r.model_stage_ms = r.model_latency_ms;
    r.total_latency_ms = r.model_latency_ms + r.deterministic_stage_ms;
    if let Some(stages) = r.stages.as_mut() {
        stages[1].ms = r.model_latency_ms;
    }
    r.id = Some(id.clone());
    r.run_id = id;
    r.session_id = session.to_owned();
    r
}

/// One of the four session slots: sessions one after another until the soak stops.
fn sessions(slot: usize, shared: &Shared, client: &Client, sender: &Sender) {
    let mut rng = Rng::new(100 + slot as u64);
    let mut pending: Vec<Run> = Vec::new();
    let mut n = 0u64;
    let mut runs = 0u64;
    while !shared.stopping() {
        n += 1;
        let session = format!("session-{slot}-{n}");
        let model = rng.below(3) as usize;
        let ts = Some(wall_ms());
        let id = format!("{session}-started");
        let started = SessionEvent {
            id: Some(id.clone()),
            ts_ms: ts,
            session_id: session.clone(),
        };
        enqueue(shared, sender, Event::SessionStarted(started), id);
        shared.open_sessions.fetch_add(1, Ordering::Relaxed);
        let id = format!("{session}-context");
        let context = ContextRequest {
            id: Some(id.clone()),
            ts_ms: ts,
            model_id: MODELS[model].to_owned(),
            requested_context_tokens: [4_096, 8_192][rng.below(2) as usize],
            local_supported_context_tokens: Some(MODEL_FACTS[model].3),
            session_id: Some(session.clone()),
            prompt_hash: None,
        };
        enqueue(shared, sender, Event::ContextRequest(context), id);
        let end = Instant::now() + Duration::from_secs(90 + rng.below(211));
        while Instant::now() < end {
            if shared.sleep(Duration::from_millis(2_000 + rng.below(4_001))) {
                break;
            }
            runs += 1;
            pending.push(session_run(
                &mut rng,
                format!("run-{slot}-{runs}"),
                model,
                &session,
            ));
            let t0 = Instant::now();
            let r = client.runs(&RunBatch {
                runs: pending.clone(),
            });
            shared.write("POST /v1/runs", t0, &r);
            if r.is_ok() {
                let mut acked = shared.runs_acked.lock().unwrap();
                acked.extend(pending.drain(..).filter_map(|r| r.id));
            }
        }
        let id = format!("{session}-ended");
        let ended = SessionEvent {
            id: Some(id.clone()),
            ts_ms: Some(wall_ms()),
            session_id: session,
        };
        enqueue(shared, sender, Event::SessionEnded(ended), id);
        shared.open_sessions.fetch_sub(1, Ordering::Relaxed);
        if shared.sleep(Duration::from_secs(5 + rng.below(16))) {
            break;
        }
    }
    if !pending.is_empty() {
        let t0 = Instant::now();
        let r = client.runs(&RunBatch {
            runs: pending.clone(),
        });
        shared.write("POST /v1/runs (last)", t0, &r);
        if r.is_ok() {
            let mut acked = shared.runs_acked.lock().unwrap();
            acked.extend(pending.drain(..).filter_map(|r| r.id));
        }
    }
}

/// The application's own readings every 5 s.
fn readings(shared: &Shared, client: &Client) {
    let mut rng = Rng::new(200);
    let mut pending: Vec<Sample> = Vec::new();
    let mut n = 0u64;
    loop {
        let last = shared.sleep(Duration::from_secs(5));
        n += 1;
        let ts = wall_ms();
        let open = shared.open_sessions.load(Ordering::Relaxed);
        let generations = rng.below(open + 1);
        let queue = if generations > 1 {
            (rng.f64() * 400.0).round()
        } else {
            0.0
        };
        for (signal, v) in APP_SIGNALS
            .into_iter()
            .zip([open as f64, generations as f64, queue])
        {
            let mut s = sample(signal, ts, v);
            s.id = Some(format!("reading-{n}-{}", signal.as_str()));
            pending.push(s);
        }
        let t0 = Instant::now();
        let r = client.samples(&SampleBatch {
            samples: pending.clone(),
        });
        shared.write("POST /v1/samples", t0, &r);
        if r.is_ok() {
            let mut acked = shared.samples_acked.lock().unwrap();
            for s in pending.drain(..) {
                *acked.entry(s.signal.as_str()).or_default() += 1;
            }
        }
        if last {
            return;
        }
    }
}

fn load_event(n: u64, model: usize) -> (Event, String) {
    let (vram, params, quant, _, _) = MODEL_FACTS[model];
    let id = format!("load-{n}");
    let load = ModelLoad {
        id: Some(id.clone()),
        ts_ms: Some(wall_ms()),
        model_id: MODELS[model].to_owned(),
        model_required_vram_mb: vram,
        vram_reclaimable_mb_est: None,
        outcome: LoadOutcome::Ok,
        quantization: Some(quant.to_owned()),
        params_b: Some(params),
        kv_cache_bytes_per_token: None,
        session_id: None,
    };
    (Event::ModelLoad(load), id)
}

/// The three models loaded at start, one reloaded every 4 minutes.
fn model_loads(shared: &Shared, sender: &Sender) {
    let mut rng = Rng::new(300);
    let mut n = 0;
    for model in 0..3 {
        n += 1;
        let (e, id) = load_event(n, model);
        enqueue(shared, sender, e, id);
    }
    while !shared.sleep(Duration::from_secs(240)) {
        n += 1;
        let (e, id) = load_event(n, rng.below(3) as usize);
        enqueue(shared, sender, e, id);
    }
}

fn windows(kind: &str, metric: Option<&str>, limit: usize) -> WindowsQuery {
    WindowsQuery {
        metric: metric.map(str::to_owned),
        scope: None,
        kind: Some(kind.to_owned()),
        limit: Some(limit),
    }
}

fn log_query(kind: &str, substrate: Option<&str>, limit: usize) -> LogQuery {
    LogQuery {
        before: None,
        limit: Some(limit),
        kind: Some(kind.to_owned()),
        substrate: substrate.map(str::to_owned),
    }
}

fn range(r: &str) -> RangeQuery {
    RangeQuery {
        range: Some(r.to_owned()),
        from_ms: None,
        to_ms: None,
    }
}

fn suggestions(limit: usize) -> SuggestionsQuery {
    SuggestionsQuery {
        limit: Some(limit),
        category: None,
        scope: None,
    }
}

/// The requests of the dashboards' views (dashboards/app.js), every 5 s: the overview and one
/// other view in turn; `/metrics` every 15 s.
fn dashboards(shared: &Shared, c: &Client) {
    macro_rules! read {
        ($what:expr, $call:expr) => {{
            let t0 = Instant::now();
            let r = $call;
            shared.read($what, t0, &r);
        }};
    }
    let mut turn = 0u64;
    while !shared.sleep(Duration::from_secs(5)) {
        turn += 1;
        read!("/v1/profile", c.profile());
        read!("/v1/triggers", c.triggers(&Default::default()));
        read!("/v1/suggestions?limit=3", c.suggestions(&suggestions(3)));
        read!("/v1/health", c.health());
        let all = range("all");
        read!("/v1/metrics/product?range=all", c.product_metrics(&all));
        let q = log_query("run", Some("cloud"), 5);
        read!("/v1/log?kind=run&substrate=cloud&limit=5", c.log(&q));
        match turn % 7 {
            0 => {
                let q = windows("runs", None, 1000);
                read!("/v1/windows?kind=runs&limit=1000", c.windows(&q));
                read!("/v1/thresholds", c.thresholds());
                read!("/v1/triggers", c.triggers(&Default::default()));
                let q = log_query("run", None, 1000);
                read!("/v1/log?kind=run&limit=1000", c.log(&q));
            }
            1 => {
                let q = windows("time", Some("active_sessions"), 120);
                read!(
                    "/v1/windows?kind=time&metric=active_sessions",
                    c.windows(&q)
                );
                let q = windows("time", Some("queue_wait_ms"), 120);
                read!("/v1/windows?kind=time&metric=queue_wait_ms", c.windows(&q));
                read!("/v1/thresholds", c.thresholds());
                read!("/v1/triggers", c.triggers(&Default::default()));
                read!("/v1/profile", c.profile());
            }
            2 => {
                let q = windows("runs", Some("validation_retry_count"), 500);
                read!(
                    "/v1/windows?kind=runs&metric=validation_retry_count",
                    c.windows(&q)
                );
                let q = windows("runs", Some("budget_breach_count"), 500);
                read!(
                    "/v1/windows?kind=runs&metric=budget_breach_count",
                    c.windows(&q)
                );
                read!("/v1/thresholds", c.thresholds());
                read!("/v1/triggers", c.triggers(&Default::default()));
                for kind in ["model_load", "context_request", "context_oom"] {
                    let q = log_query(kind, None, 20);
                    read!("/v1/log?kind=(events)&limit=20", c.log(&q));
                }
            }
            3 => {
                read!("/v1/suggestions?limit=50", c.suggestions(&suggestions(50)));
                read!("/v1/thresholds", c.thresholds());
            }
            4 => {
                let day = range("24h");
                read!("/v1/metrics/product?range=24h", c.product_metrics(&day));
                let q = log_query("run", Some("cloud"), 20);
                read!("/v1/log?kind=run&substrate=cloud&limit=20", c.log(&q));
            }
            5 => {
                read!("/v1/consent", c.consent());
                read!("/v1/export/preview", c.export_preview());
                read!(
                    "/v1/log?kind=export&limit=50",
                    c.log(&log_query("export", None, 50))
                );
            }
            _ => read!("/v1/thresholds", c.thresholds()),
        }
        if turn % 3 == 0 {
            read!("/metrics", c.prometheus());
        }
    }
}

/// The page's `EventSource`: `/v1/stream` held open, reopened after its last id when it ends
/// (a restart), as a browser does. Ends when the stream ends after the soak stopped.
fn stream(shared: &Shared, client: &Client) {
    let mut last: Option<String> = None;
    loop {
        if let Ok(mut s) = client.stream(last.as_deref(), true) {
            shared.stream_opens.fetch_add(1, Ordering::Relaxed);
            while let Some(Ok(_)) = s.next() {
                shared.stream_events.fetch_add(1, Ordering::Relaxed);
            }
            last = s.last_event_id().map(str::to_owned);
        }
        if shared.sleep(Duration::from_secs(1)) {
            return;
        }
    }
}

// ---- the service -----------------------------------------------------------------------

fn sigterm(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -TERM {pid} failed");
}

/// SIGTERM, then the exit awaited (at most 60 s, then SIGKILL): how long it took and how it
/// ended.
fn stop_service(child: &mut Child) -> (Duration, String) {
    let t0 = Instant::now();
    sigterm(child.id());
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (t0.elapsed(), status.to_string());
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            return (t0.elapsed(), "did not stop within 60 s: killed".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Client ids of the stored records of `kind`, with how many times each is stored, and how
/// many pages it took.
fn stored_ids(client: &Client, kind: &str) -> (HashMap<String, u32>, u64) {
    let mut ids = HashMap::new();
    let mut before = None;
    let mut pages = 0;
    loop {
        let page = client
            .log(&LogQuery {
                before,
                limit: Some(1000),
                kind: Some(kind.to_owned()),
                substrate: None,
            })
            .unwrap();
        pages += 1;
        for e in page.entries {
            let id = match e.record {
                Record::Run(r) => r.id,
                Record::ModelLoad(r) => r.id,
                Record::ContextRequest(r) => r.id,
                Record::SessionStarted(r) | Record::SessionEnded(r) => r.id,
                _ => None,
            };
            if let Some(id) = id {
                *ids.entry(id).or_default() += 1;
            }
        }
        match page.next_before {
            Some(b) => before = Some(b),
            None => return (ids, pages),
        }
    }
}

struct Presence {
    acked: u64,
    missing: u64,
    twice: u64,
    examples: Vec<String>,
}

fn presence(acked: &[String], stored: &HashMap<String, u32>) -> Presence {
    let mut out = Presence {
        acked: acked.len() as u64,
        missing: 0,
        twice: 0,
        examples: Vec::new(),
    };
    for id in acked {
        match stored.get(id) {
            None => {
                out.missing += 1;
                if out.examples.len() < 5 {
                    out.examples.push(format!("{id} missing"));
                }
            }
            Some(&n) if n > 1 => {
                out.twice += 1;
                if out.examples.len() < 5 {
                    out.examples.push(format!("{id} stored {n} times"));
                }
            }
            Some(_) => {}
        }
    }
    out
}

fn fmt_errors(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "0".into();
    }
    errors
        .iter()
        .map(|(k, v)| format!("{v}x {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    let minutes: u64 = std::env::var("KORA_SOAK_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    assert!(minutes >= 3, "KORA_SOAK_MINUTES must be at least 3");
    let plan = Plan::new(minutes);
    // The sustainable rate first, on a service of its own.
    let (rate, empty_rss) = match std::env::var("KORA_SOAK_RATE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
    {
        Some(r) => {
            println!("sustainable rate from KORA_SOAK_RATE: {r} runs/s");
            (r, None)
        }
        None => {
            println!(
                "sustainable rate of POST /v1/runs on a fresh service of its own (one run a request, {SENDERS} open-loop senders, {STEP_S} s a step; 99 % achieved, 0 errors or refusals, p99 < {P99_BAR_MS} ms):"
            );
            let (r, rss) = sustainable_rate();
            println!(
                "  sustainable: {r} runs/s; the burst offers {} runs/s",
                r * 2.0
            );
            (r, Some(rss))
        }
    };

    let tmp = tempdir();
    let data_dir = tmp.path().join("data");
    let spool_dir = tmp.path().join("spool");
    let history = std::env::var_os("KORA_SOAK_FROM").map(std::path::PathBuf::from);
    if let Some(from) = &history {
        copy_dir(from, &data_dir);
        println!(
            "history: a copy of {} ({:.1} MB allocated)",
            from.display(),
            allocated_bytes(&data_dir) as f64 / 1e6
        );
    }
    let (child, base, took) = spawn_serve(&data_dir);
    let listen = base.trim_start_matches("http://").to_owned();
    println!(
        "soak: {minutes} minutes against kora-telemetry serve at {base} (listening after {:.0} ms), data in {}",
        took.as_secs_f64() * 1e3,
        data_dir.display()
    );
    println!(
        "windows: warm-up minutes {}, first window minutes {}, last window minutes {}{}; restart at {}:{:02}; burst in minute {}",
        span(&(0..plan.warm)),
        span(&plan.first()),
        span(&plan.last()),
        if minutes == 60 {
            String::new()
        } else {
            format!(" (the hour's 5 / 10 / 10 minutes scaled to {minutes})")
        },
        plan.restart_at.as_secs() / 60,
        plan.restart_at.as_secs() % 60,
        plan.burst_at.as_secs() / 60 + 1,
    );

    let shared = Arc::new(Shared::default());
    shared.pid.store(child.id(), Ordering::Relaxed);
    let child = Arc::new(Mutex::new(Some(child)));
    let writer = writer_client(&base, &data_dir);
    let (sender, report) = Sender::builder(writer.clone())
        .spool(&spool_dir, SpoolOptions::default())
        .start()
        .unwrap();
    assert!(report.damage.is_empty());
    let sender = Arc::new(sender);
    let soak_start_ms = wall_ms();

    let mut workers = Vec::new();
    for slot in 0..4 {
        let (shared, client, sender) = (shared.clone(), writer.clone(), sender.clone());
        workers.push(std::thread::spawn(move || {
            sessions(slot, &shared, &client, &sender)
        }));
    }
    {
        let (sh, client) = (shared.clone(), writer.clone());
        workers.push(std::thread::spawn(move || readings(&sh, &client)));
        let (sh, sender) = (shared.clone(), sender.clone());
        workers.push(std::thread::spawn(move || model_loads(&sh, &sender)));
        let (sh, client) = (shared.clone(), writer.clone());
        workers.push(std::thread::spawn(move || dashboards(&sh, &client)));
        let (sh, client) = (shared.clone(), writer.clone());
        // Not joined: it ends when the service closes the stream.
        std::thread::spawn(move || stream(&sh, &client));
    }

    println!();
    println!(
        "| minute | RSS MiB | CPU % of a core | writes p99 ms | reads p99 ms | requests | errors | burst ok / 429+503 (p99 ms) | acknowledged | |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | --- |");
    let hz = clock_ticks_per_s();
    let start = Instant::now();
    let mut lines: Vec<MinuteLine> = Vec::new();
    let mut rss_now: Vec<f64> = Vec::new();
    let mut rss_peak = 0.0f64;
    let mut ticks = 0u64;
    let mut last_pid = shared.pid.load(Ordering::Relaxed);
    let mut last_ticks = proc_cpu_ticks(last_pid).unwrap_or(0);
    let mut restart: Option<std::thread::JoinHandle<()>> = None;
    let mut burst: Option<std::thread::JoinHandle<()>> = None;
    let mut last_batches = 0;
    for second in 1..=minutes * 60 {
        let at = Duration::from_secs(second);
        std::thread::sleep((start + at).saturating_duration_since(Instant::now()));
        let pid = shared.pid.load(Ordering::Relaxed);
        if let Some(rss) = proc_rss_mib(pid) {
            rss_now.push(rss);
            rss_peak = rss_peak.max(rss);
        }
        if let Some(t) = proc_cpu_ticks(pid) {
            // A new process (the restart) counts from its start.
            ticks += if pid == last_pid {
                t.saturating_sub(last_ticks)
            } else {
                t
            };
            (last_pid, last_ticks) = (pid, t);
        }
        if at >= plan.restart_at && restart.is_none() {
            let (shared, child, data_dir, listen) = (
                shared.clone(),
                child.clone(),
                data_dir.clone(),
                listen.clone(),
            );
            restart = Some(std::thread::spawn(move || {
                let mut old = child.lock().unwrap().take().unwrap();
                let (stopped, status) = stop_service(&mut old);
                let (new, _, took) = spawn_serve_on(&data_dir, &listen);
                shared.pid.store(new.id(), Ordering::Relaxed);
                *child.lock().unwrap() = Some(new);
                let line = format!(
                    "SIGTERM to exit {:.0} ms ({status}), spawn to listening {:.0} ms",
                    stopped.as_secs_f64() * 1e3,
                    took.as_secs_f64() * 1e3
                );
                *shared.restart.lock().unwrap() = Some(line);
            }));
        }
        if at >= plan.burst_at && burst.is_none() {
            let (shared, base) = (shared.clone(), base.clone());
            burst = Some(std::thread::spawn(move || {
                let each = |id: &str, ms: f64, r: Result<(), &ClientError>| {
                    let mut m = shared.minute.lock().unwrap();
                    m.requests += 1;
                    match r.map_err(|e| (e.status(), e)) {
                        Ok(()) => {
                            m.burst_ok += 1;
                            m.burst_ms.push(ms);
                            drop(m);
                            shared.runs_acked.lock().unwrap().push(id.to_owned());
                        }
                        Err((Some(429 | 503), _)) => m.burst_refused += 1,
                        Err((_, e)) => {
                            drop(m);
                            shared.error("burst POST /v1/runs", e);
                        }
                    }
                };
                let step = open_loop(&base, rate * 2.0, BURST_S, "burst", &each);
                *shared.burst.lock().unwrap() = Some(step);
            }));
        }
        if second % 60 == 0 {
            let m = std::mem::take(&mut *shared.minute.lock().unwrap());
            let k = second / 60 - 1;
            let stats = sender.stats();
            let acked = shared.runs_acked.lock().unwrap().len() as u64
                + shared.samples_acked.lock().unwrap().values().sum::<u64>()
                + stats.delivered;
            let requests = m.requests + (stats.batches + stats.failed_attempts - last_batches);
            last_batches = stats.batches + stats.failed_attempts;
            let line = MinuteLine {
                rss_mib: mean(&rss_now),
                cpu_pct: ticks as f64 / hz / 60.0 * 100.0,
            };
            let burst_col = if m.burst_ok + m.burst_refused > 0 {
                format!(
                    "{} / {} ({:.0})",
                    m.burst_ok,
                    m.burst_refused,
                    p(&m.burst_ms, 0.99)
                )
            } else {
                "-".into()
            };
            println!(
                "| {} | {:.1} | {:.2} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
                k + 1,
                line.rss_mib,
                line.cpu_pct,
                p(&m.write_ms, 0.99),
                p(&m.read_ms, 0.99),
                requests,
                fmt_errors(&m.errors),
                burst_col,
                rate_fmt(acked),
                plan.note(k),
            );
            lines.push(line);
            rss_now.clear();
            ticks = 0;
        }
    }

    // Stop the machine; everything queued is sent.
    shared.stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    if let Some(r) = restart {
        r.join().unwrap();
    }
    if let Some(b) = burst {
        b.join().unwrap();
    }
    let sender = Arc::try_unwrap(sender).unwrap();
    let sender_stats = match sender.close(Duration::from_secs(120)) {
        Ok(s) => s,
        Err(e) => panic!("the sender could not deliver everything: {e}"),
    };
    println!();
    if let Some(r) = shared.restart.lock().unwrap().as_ref() {
        println!("restart: {r}");
    }
    let burst = shared.burst.lock().unwrap().take().unwrap_or_default();
    println!("burst: {}", burst.line());
    println!(
        "events (sender with spool): {} queued, {} delivered ({} duplicates), {} rejected, {} batches, {} failed attempts retried",
        sender_stats.enqueued,
        sender_stats.delivered,
        sender_stats.duplicates,
        sender_stats.rejected,
        sender_stats.batches,
        sender_stats.failed_attempts
    );
    println!(
        "stream: opened {} times, {} events",
        shared.stream_opens.load(Ordering::Relaxed),
        shared.stream_events.load(Ordering::Relaxed)
    );
    let examples = shared.error_examples.lock().unwrap().clone();
    for e in &examples {
        println!("error: {e}");
    }

    // Every acknowledged record present, none twice.
    let check_client = Client::builder(&base)
        .timeout(Duration::from_secs(60))
        .build();
    let t0 = Instant::now();
    let (runs_stored, run_pages) = stored_ids(&check_client, "run");
    let runs_acked = shared.runs_acked.lock().unwrap().clone();
    let runs = presence(&runs_acked, &runs_stored);
    let mut events_stored = HashMap::new();
    let mut event_pages = 0;
    for kind in [
        "session_started",
        "session_ended",
        "context_request",
        "model_load",
    ] {
        let (ids, pages) = stored_ids(&check_client, kind);
        events_stored.extend(ids);
        event_pages += pages;
    }
    let events_queued = shared.events_queued.lock().unwrap().clone();
    let events_acked = if sender_stats.rejected == 0 && sender_stats.pending == 0 {
        events_queued
    } else {
        Vec::new()
    };
    let events = presence(&events_acked, &events_stored);
    let now = wall_ms();
    let mut samples_missing = 0i64;
    let mut samples_acked = 0u64;
    let mut samples_lines = Vec::new();
    for signal in APP_SIGNALS {
        let view = check_client
            .series(&SeriesQuery {
                series: Some(signal.as_str().to_owned()),
                from_ms: Some(soak_start_ms - 60_000),
                to_ms: Some(now + 1_000),
                points: Some(2000),
                ..SeriesQuery::default()
            })
            .unwrap();
        let SeriesView::Data(d) = view else {
            panic!("no data for {}", signal.as_str())
        };
        let stored: u64 = d.points.iter().map(|p| p.n).sum::<u64>() + d.unavailable_samples;
        let acked = shared
            .samples_acked
            .lock()
            .unwrap()
            .get(signal.as_str())
            .copied()
            .unwrap_or(0);
        samples_acked += acked;
        samples_missing += (acked as i64 - stored as i64).abs();
        samples_lines.push(format!(
            "{} {acked} acked / {stored} stored",
            signal.as_str()
        ));
    }
    let check_s = t0.elapsed().as_secs_f64();
    println!(
        "check: {} runs read back ({run_pages} pages of GET /v1/log?kind=run), {} events ({event_pages} pages), readings {}; {check_s:.1} s",
        runs_stored.len(),
        events_stored.len(),
        samples_lines.join(", ")
    );
    for e in runs.examples.iter().chain(&events.examples) {
        println!("check: {e}");
    }

    let mut final_child = child.lock().unwrap().take().unwrap();
    let (stopped, status) = stop_service(&mut final_child);
    println!(
        "stop: SIGTERM to exit {:.0} ms ({status})",
        stopped.as_secs_f64() * 1e3
    );
    // Where the memory is: a fresh start on the final store, idle, then after the dashboards'
    // reads, against the same on an empty store (the calibration's service).
    let (mut again, again_base, _) = spawn_serve(&data_dir);
    std::thread::sleep(Duration::from_secs(5));
    let idle_rss = proc_rss_mib(again.id()).unwrap_or(0.0);
    let c = Client::new(&again_base);
    let _ = (
        c.profile(),
        c.triggers(&Default::default()),
        c.health(),
        c.thresholds(),
    );
    let _ = c.windows(&windows("runs", None, 1000));
    let _ = c.log(&log_query("run", None, 1000));
    let _ = c.product_metrics(&range("all"));
    let read_rss = proc_rss_mib(again.id()).unwrap_or(0.0);
    stop_service(&mut again);
    let fresh = format!(
        "{}final store ({} runs): {idle_rss:.1} MiB idle, {read_rss:.1} MiB after the dashboards' reads",
        empty_rss
            .map(|r| format!("empty store: {r:.1} MiB idle; "))
            .unwrap_or_default(),
        runs_stored.len()
    );
    println!("fresh start: {fresh}");

    // The goals.
    let window_mean = |r: Range<u64>| {
        let v: Vec<f64> = lines[r.start as usize..r.end as usize]
            .iter()
            .map(|l| l.rss_mib)
            .collect();
        mean(&v)
    };
    let first = window_mean(plan.first());
    let last = window_mean(plan.last());
    let drift = (last - first) / first * 100.0;
    let rss_met = drift.abs() <= 10.0;
    let errors = shared.errors.lock().unwrap().clone();
    let error_count: u64 = errors.values().sum();
    let errors_met = error_count == 0;
    let acked_total = runs.acked + events.acked + samples_acked;
    let lost = runs.missing + events.missing + samples_missing as u64;
    let events_met = sender_stats.rejected == 0 && sender_stats.pending == 0;
    let present_met = lost == 0 && runs.twice == 0 && events.twice == 0 && events_met;
    let cpu = mean(&lines.iter().map(|l| l.cpu_pct).collect::<Vec<_>>());
    let yes = |b: bool| if b { "met" } else { "**missed**" };
    let writes = shared.write_ms.lock().unwrap().clone();
    let reads = shared.read_ms.lock().unwrap().clone();
    println!();
    println!("| figure | value | goal | |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| RSS, mean of minutes {} (after {} of warm-up) | {first:.1} MiB | | |",
        span(&plan.first()),
        plan.warm
    );
    println!(
        "| RSS, mean of minutes {} | {last:.1} MiB ({drift:+.1} %) | within 10 % of the first window | {} |",
        span(&plan.last()),
        yes(rss_met)
    );
    println!("| RSS, peak (read every second) | {rss_peak:.1} MiB | | |");
    println!("| RSS of a fresh start | {fresh} | | |");
    // Growth within the calm stretches (no restart, no burst in between) tells a leak from a
    // high-water mark left by the burst.
    let restart_m = plan.restart_at.as_secs() / 60;
    let after_burst = plan.burst_at.as_secs() / 60 + 2;
    for (what, from, to) in [
        ("before the restart", plan.warm, restart_m.saturating_sub(1)),
        ("after the burst", after_burst, minutes - 1),
    ] {
        if from < to {
            let (a, b) = (lines[from as usize].rss_mib, lines[to as usize].rss_mib);
            println!(
                "| RSS {what}, minute {} to {} | {a:.1} to {b:.1} MiB ({:+.1} MiB) | | |",
                from + 1,
                to + 1,
                b - a
            );
        }
    }
    println!("| CPU, mean over the minutes | {cpu:.2} % of one core | | |");
    println!(
        "| writes of the machine (runs, readings): p50 / p99 / max | {:.1} / {:.1} / {:.0} ms over {} calls | | |",
        p(&writes, 0.5),
        p(&writes, 0.99),
        p(&writes, 1.0),
        writes.len()
    );
    println!(
        "| dashboard reads: p50 / p99 / max | {:.1} / {:.1} / {:.0} ms over {} calls | | |",
        p(&reads, 0.5),
        p(&reads, 0.99),
        p(&reads, 1.0),
        reads.len()
    );
    println!("| sustainable rate of POST /v1/runs | {rate} runs/s | | |");
    println!(
        "| burst at {:.0} runs/s for {BURST_S} s | {} acknowledged ({:.0}/s, p99 {:.0} ms), {} answered 429/503 (p99 {:.0} ms) | 429/503 allowed | |",
        burst.rate,
        burst.ok,
        burst.achieved(),
        p(&burst.ok_ms, 0.99),
        burst.refused,
        p(&burst.refused_ms, 0.99)
    );
    println!(
        "| restart | {} | the clients carry on | |",
        shared
            .restart
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| "none".into())
    );
    println!(
        "| errors besides the burst's 429/503 | {} | 0 | {} |",
        fmt_errors(&errors),
        yes(errors_met)
    );
    println!(
        "| acknowledged records present | {} of {acked_total} ({} runs, {} events, {} readings); {} missing, {} stored twice{} | all, once | {} |",
        acked_total - lost,
        runs.acked,
        events.acked,
        samples_acked,
        lost,
        runs.twice + events.twice,
        if events_met {
            String::new()
        } else {
            format!(
                "; the sender rejected {} and left {} pending",
                sender_stats.rejected, sender_stats.pending
            )
        },
        yes(present_met)
    );
    println!();
    println!("| dashboard read | calls | p50 ms | p99 ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let mut by: Vec<(&str, Vec<f64>)> =
        shared.read_by.lock().unwrap().clone().into_iter().collect();
    by.sort_by(|a, b| p(&b.1, 0.99).total_cmp(&p(&a.1, 0.99)));
    for (what, v) in by {
        println!(
            "| `GET {what}` | {} | {:.1} | {:.1} | {:.1} |",
            v.len(),
            p(&v, 0.5),
            p(&v, 0.99),
            p(&v, 1.0)
        );
    }
    if !(rss_met && errors_met && present_met) {
        println!("RESULT soak: a goal was missed");
        // `exit` runs no destructor: the temp dir goes first.
        drop(tmp);
        std::process::exit(1);
    }
    println!("RESULT soak: every goal met");
}

fn rate_fmt(n: u64) -> String {
    rate(n as f64)
}
