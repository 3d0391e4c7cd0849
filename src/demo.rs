//! `kora-telemetry demo`: the service on a temporary data directory, driven by a simulated KORA
//! Studio workload through the public HTTP API, so that every dashboard view fills within a
//! minute.
//!
//! The service is this same binary's `serve`, run as a child process on `127.0.0.1:0`. The
//! workload is a client like any other: it never touches the store. It first backfills a few
//! minutes of history with backdated `ts_ms` (sessions, model loads, runs, one reading per 60 s
//! window of `active_sessions` and `queue_wait_ms`), then sends live traffic every second: runs
//! of three models with stage timings, one of which slows down until the sustained latency
//! trigger fires (3 consecutive blocks of 10 runs over 4500 ms p95). A model load that does not
//! fit, a context request beyond the supported one, a budget breach and a rising queue make the
//! other triggers fire. The workload is deterministic (a fixed pseudo-random seed).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kora_client::Client;
use kora_model::{
    Category, ContextRequest, Event, EventBatch, Feedback, FeedbackAction, LoadOutcome, ModelLoad,
    Readiness, Run, RunBatch, Sample, SampleBatch, SessionEvent, Signal, Stage, StageKind,
    Substrate, SuggestionsQuery,
};
use kora_policy::TriggerState;

/// What `demo` was asked to do.
#[derive(Debug)]
pub struct DemoOptions {
    /// Stop after this long; `None` runs until Ctrl-C.
    pub duration: Option<Duration>,
    /// Keep the temporary data directory when the demo ends (its path is printed).
    pub keep_data: bool,
    /// Where the service listens (loopback).
    pub listen: SocketAddr,
}

const MINUTE_MS: i64 = 60_000;

/// A small deterministic generator (xorshift64*): the workload is the same on every run.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `[lo, hi)`.
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next()
    }
}

/// The `serve` child and the temporary directory it stores into.
#[derive(Debug)]
struct Service {
    child: Child,
    base: String,
    data_dir: PathBuf,
    keep_data: bool,
}

impl Service {
    fn start(listen: SocketAddr, keep_data: bool) -> Result<Service> {
        let exe = std::env::current_exe().context("cannot find this program's own path")?;
        let data_dir = std::env::temp_dir().join(format!(
            "kora-telemetry-demo-{}-{}",
            std::process::id(),
            kora_pipeline::clock::wall_ms()
        ));
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let child = Command::new(exe)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["serve", "--listen", &listen.to_string()])
            .args(["--probe-interval", "2s"])
            .env("KORA_TELEMETRY_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start `kora-telemetry serve`")?;
        // Owned by `service` from here on, so that an early return stops it and cleans up.
        let mut service = Service {
            child,
            base: String::new(),
            data_dir,
            keep_data,
        };
        let stdout = service
            .child
            .stdout
            .take()
            .context("the service's stdout is not captured")?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .context("the service did not say where it listens")?;
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .with_context(|| format!("the service did not start: {line:?}"))?
            .to_owned();
        service.base = format!("http://{addr}");
        // Keep draining the service's stdout so that it never writes into a closed pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        Ok(service)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // SIGTERM lets the service commit what is queued; SIGKILL only if it does not stop.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        if self.keep_data {
            println!("demo data kept in {}", self.data_dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// A simulated model: its stage timings and how they change.
#[derive(Debug, Clone, Copy)]
struct ModelSpec {
    id: &'static str,
    vram_mb: f64,
    quantization: &'static str,
    params_b: f64,
    /// Typical generation time (ms) and tokens out.
    generation_ms: f64,
    tokens_out: u64,
}

const FAST: ModelSpec = ModelSpec {
    id: "llama-3.1-8b-q4",
    vram_mb: 5_200.0,
    quantization: "q4_K_M",
    params_b: 8.0,
    generation_ms: 1_500.0,
    tokens_out: 220,
};
const RAG: ModelSpec = ModelSpec {
    id: "qwen2.5-7b-q5",
    vram_mb: 5_900.0,
    quantization: "q5_K_M",
    params_b: 7.6,
    generation_ms: 1_900.0,
    tokens_out: 300,
};
const SLOW: ModelSpec = ModelSpec {
    id: "mistral-small-22b-q4",
    vram_mb: 13_400.0,
    quantization: "q4_K_M",
    params_b: 22.0,
    generation_ms: 3_000.0,
    tokens_out: 350,
};
/// The model whose load does not fit.
const HUGE: ModelSpec = ModelSpec {
    id: "llama-3.1-70b-q4",
    vram_mb: 42_500.0,
    quantization: "q4_K_M",
    params_b: 70.0,
    generation_ms: 0.0,
    tokens_out: 0,
};

/// The workload's state.
#[derive(Debug)]
struct Workload {
    client: Client,
    rng: Rng,
    run_no: u64,
    /// Live runs of the slow model so far: its generation time grows with them.
    slow_live: u64,
    sessions: Vec<String>,
    session_no: u64,
    dismissed_context: bool,
}

fn session_event(session_id: &str, ts_ms: i64) -> SessionEvent {
    SessionEvent {
        id: None,
        ts_ms: Some(ts_ms),
        session_id: session_id.to_owned(),
    }
}

fn sample(signal: Signal, value: f64, ts_ms: i64) -> Sample {
    Sample::reading(signal, ts_ms, value)
}

fn stage(name: &str, kind: StageKind, ms: f64) -> Stage {
    Stage {
        name: name.to_owned(),
        kind,
        ms,
    }
}

/// A model load of `m` at `ts_ms`.
fn model_load(m: &ModelSpec, outcome: LoadOutcome, session: &str, ts_ms: i64) -> Event {
    Event::ModelLoad(ModelLoad {
        id: None,
        ts_ms: Some(ts_ms),
        model_id: m.id.to_owned(),
        model_required_vram_mb: m.vram_mb,
        vram_reclaimable_mb_est: None,
        outcome,
        quantization: Some(m.quantization.to_owned()),
        params_b: Some(m.params_b),
        kv_cache_bytes_per_token: None,
        session_id: Some(session.to_owned()),
    })
}

impl Workload {
    fn events(&self, events: Vec<Event>) -> Result<()> {
        self.client
            .events(&EventBatch { events })
            .context("POST /v1/events")?;
        Ok(())
    }

    fn runs(&self, runs: Vec<Run>) -> Result<()> {
        self.client
            .runs(&RunBatch { runs })
            .context("POST /v1/runs")?;
        Ok(())
    }

    fn samples(&self, samples: Vec<Sample>) -> Result<()> {
        self.client
            .samples(&SampleBatch { samples })
            .context("POST /v1/samples")?;
        Ok(())
    }

    fn start_session(&mut self, ts_ms: i64) -> Event {
        self.session_no += 1;
        let id = format!("studio-session-{}", self.session_no);
        self.sessions.push(id.clone());
        Event::SessionStarted(session_event(&id, ts_ms))
    }

    /// One run of `m` at `ts_ms`; `slowdown` multiplies generation time, `retrieval_spike`
    /// makes the retrieval stage the tail.
    fn run(&mut self, m: &ModelSpec, ts_ms: i64, slowdown: f64, retrieval_spike: bool) -> Run {
        self.run_no += 1;
        let n = self.run_no;
        let session = self
            .sessions
            .get((n as usize) % self.sessions.len().max(1))
            .cloned()
            .unwrap_or_else(|| "studio-session-0".into());
        let retrieval = if retrieval_spike {
            self.rng.range(1_600.0, 2_200.0)
        } else {
            self.rng.range(120.0, 420.0)
        };
        let assembly = self.rng.range(20.0, 60.0);
        let generation = (m.generation_ms * slowdown * self.rng.range(0.85, 1.15)).round();
        let validation = self.rng.range(30.0, 120.0);
        let deterministic = (retrieval + assembly + validation).round();
        let queue = self.rng.range(0.0, 200.0).round();
        let tokens_in = 900 + (self.rng.range(0.0, 2_000.0) as u64);
        let tokens_out = m.tokens_out + (self.rng.range(0.0, 120.0) as u64);
        Run {
            id: Some(format!("demo-run-{n}")),
            ts_ms: Some(ts_ms),
            run_id: format!("run-{n}"),
            session_id: session,
            model_id: m.id.to_owned(),
            substrate: Substrate::Local,
            prompt_hash: kora_model::prompt_hash(&format!("demo prompt {n}")),
            context_tokens: 4096,
            tokens_in: Some(tokens_in),
            tokens_out: Some(tokens_out),
            total_tokens: None,
            model_latency_ms: generation,
            total_latency_ms: generation + deterministic + queue,
            deterministic_stage_ms: deterministic,
            model_stage_ms: generation,
            validation_retry_count: u32::from(self.rng.next() < 0.15),
            budget_breach_count: 0,
            queue_wait_ms: Some(queue),
            prompt_tokens_sent: None,
            stages: Some(vec![
                stage("retrieval", StageKind::Deterministic, retrieval.round()),
                stage(
                    "prompt_assembly",
                    StageKind::Deterministic,
                    assembly.round(),
                ),
                stage("generation", StageKind::Model, generation),
                stage(
                    "output_validation",
                    StageKind::Deterministic,
                    validation.round(),
                ),
            ]),
        }
    }

    /// A few minutes of history, backdated: sessions, loads, a context request beyond the
    /// limit, two normal blocks per model, and one reading per minute of the concurrency
    /// signals with a queue that grows past its limit in the last three minutes.
    fn backfill(&mut self, now: i64) -> Result<()> {
        let start = now - 12 * MINUTE_MS;
        let mut events: Vec<Event> = (0..3).map(|i| self.start_session(start + i)).collect();
        for (i, m) in [FAST, RAG, SLOW].iter().enumerate() {
            events.push(model_load(
                m,
                LoadOutcome::Ok,
                "studio-session-1",
                start + 1_000 + i as i64,
            ));
        }
        // A 70B model that does not fit: the load fails.
        events.push(model_load(
            &HUGE,
            LoadOutcome::Failed,
            "studio-session-2",
            start + 2 * MINUTE_MS,
        ));
        // A 64k-token request to a model the machine supports at 8k.
        events.push(Event::ContextRequest(ContextRequest {
            id: None,
            ts_ms: Some(start + 3 * MINUTE_MS),
            model_id: FAST.id.to_owned(),
            requested_context_tokens: 65_536,
            local_supported_context_tokens: Some(8_192),
            session_id: Some("studio-session-3".into()),
            prompt_hash: Some(kora_model::prompt_hash("summarize the whole repository")),
        }));
        self.events(events)?;

        // Two normal blocks per model, spread over the history.
        let mut runs = Vec::new();
        for i in 0..20 {
            let ts = start + 4 * MINUTE_MS + i * 15_000;
            runs.push(self.run(&FAST, ts, 1.0, false));
            runs.push(self.run(&RAG, ts + 1, 1.0, i % 10 == 7));
            runs.push(self.run(&SLOW, ts + 2, 1.0, false));
        }
        self.runs(runs)?;

        // One reading per minute window, oldest first: sessions rise, the queue grows.
        let mut samples = Vec::new();
        for minute in 0..11 {
            let ts = start + minute * MINUTE_MS + 30_000;
            let sessions = (1 + minute / 3) as f64;
            let queue = if minute >= 8 {
                1_400.0 + 150.0 * (minute - 8) as f64
            } else {
                80.0 + 90.0 * minute as f64
            };
            samples.push(sample(Signal::ActiveSessions, sessions, ts));
            samples.push(sample(Signal::QueueWaitMs, queue, ts));
        }
        self.samples(samples)?;

        // The KrakoBackend plugin is installed but not logged in: the cloud option will say so.
        self.client
            .readiness(&Readiness {
                ts_ms: None,
                plugin_installed: true,
                network_available: true,
                authenticated: false,
                credits_available: true,
            })
            .context("PUT /v1/cloud/readiness")?;
        Ok(())
    }

    /// One second of live traffic.
    fn tick(&mut self, tick: u64) -> Result<()> {
        let now = kora_pipeline::clock::wall_ms();
        let mut events = Vec::new();
        if tick % 15 == 5 {
            // Sessions come and go; a few stay.
            if self.sessions.len() > 3 {
                let ended = self.sessions.remove(0);
                events.push(Event::SessionEnded(session_event(&ended, now)));
            }
            events.push(self.start_session(now));
        }
        if !events.is_empty() {
            self.events(events)?;
        }
        // The slow model degrades: generation time grows by 6 % a run, up to 2.3x.
        self.slow_live += 1;
        let slowdown = (1.0 + 0.06 * self.slow_live as f64).min(2.3);
        let mut runs = vec![self.run(&SLOW, now, slowdown, false)];
        if tick % 2 == 0 {
            runs.push(self.run(&FAST, now, 1.0, false));
        } else {
            let spike = tick % 9 == 4;
            let mut r = self.run(&RAG, now, 1.0, spike);
            if tick == 13 {
                // A run that overran its token budget: the reliability trigger fires.
                r.budget_breach_count = 1;
                r.validation_retry_count = 3;
            }
            runs.push(r);
        }
        self.runs(runs)?;
        let sessions = self.sessions.len() as f64;
        let queue = self.rng.range(900.0, 1_700.0).round();
        self.samples(vec![
            sample(Signal::ActiveSessions, sessions, now),
            sample(Signal::QueueWaitMs, queue, now),
        ])?;
        if !self.dismissed_context {
            self.dismiss_context_suggestion()?;
        }
        Ok(())
    }

    /// The simulated user dismisses the context suggestion, so that the trail and the dismiss
    /// rate show something; every other suggestion is left for the person at the dashboard.
    fn dismiss_context_suggestion(&mut self) -> Result<()> {
        let view = self
            .client
            .suggestions(&SuggestionsQuery {
                category: Some(Category::Context.as_str().to_owned()),
                limit: Some(1),
                scope: None,
            })
            .context("GET /v1/suggestions")?;
        if let Some(s) = view.suggestions.first() {
            let id = &s.suggestion.suggestion_id;
            self.client
                .feedback(
                    id,
                    &Feedback {
                        ts_ms: None,
                        suggestion_id: id.clone(),
                        action: FeedbackAction::Dismissed,
                        choice: None,
                        insist_same_tier: None,
                    },
                )
                .context("POST /v1/suggestions/{id}/feedback")?;
            self.dismissed_context = true;
            println!("  (the simulated user dismissed the context suggestion {id})");
        }
        Ok(())
    }

    fn latency_state(&self) -> String {
        self.client
            .triggers(&kora_model::TriggersQuery {
                category: Some(Category::Latency.as_str().to_owned()),
                scope: Some(SLOW.id.to_owned()),
                ..Default::default()
            })
            .ok()
            .and_then(|t| {
                t.triggers
                    .into_iter()
                    .find(|x| x.category == Category::Latency && x.scope == SLOW.id)
                    .map(|x| match x.state {
                        TriggerState::Pending { k, w } => format!("pending {k} of {w}"),
                        TriggerState::Idle => "idle".into(),
                        TriggerState::Firing => "firing".into(),
                        TriggerState::Resolved { .. } => "resolved".into(),
                        TriggerState::InsufficientEvidence { .. } => "insufficient_evidence".into(),
                    })
            })
            .unwrap_or_else(|| "idle".into())
    }
}

/// Runs the demo until `duration` passes or Ctrl-C.
pub fn run(options: DemoOptions) -> Result<()> {
    if !options.listen.ip().is_loopback() {
        bail!("the demo listens on loopback only; got {}", options.listen);
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if tokio::signal::ctrl_c().await.is_ok() {
                    stop.store(true, Ordering::SeqCst);
                }
            });
        });
    }
    let service = Service::start(options.listen, options.keep_data)?;
    let mut w = Workload {
        client: Client::builder(service.base.clone())
            .timeout(Duration::from_secs(10))
            .build(),
        rng: Rng(0x9E37_79B9_7F4A_7C15),
        run_no: 0,
        slow_live: 0,
        sessions: Vec::new(),
        session_no: 0,
        dismissed_context: false,
    };
    println!();
    println!("  kora-telemetry demo: open {}/", service.base);
    println!("  data in {} (temporary)", service.data_dir.display());
    println!("  a simulated KORA Studio workload is running; Ctrl-C stops it");
    println!();
    let _ = std::io::stdout().flush();
    w.backfill(kora_pipeline::clock::wall_ms())
        .context("the demo could not send its history")?;
    println!(
        "  history sent: sessions, model loads (one does not fit), a 64k context request, runs, queue readings"
    );
    let started = Instant::now();
    let mut tick = 0u64;
    let mut last_state = String::new();
    while !stop.load(Ordering::SeqCst) && options.duration.is_none_or(|d| started.elapsed() < d) {
        w.tick(tick).context("the demo workload failed")?;
        let state = w.latency_state();
        if state != last_state {
            println!(
                "  t+{:>3}s  latency of {}: {state}",
                started.elapsed().as_secs(),
                SLOW.id
            );
            last_state = state;
        }
        tick += 1;
        let next = started + Duration::from_secs(tick);
        while Instant::now() < next && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!("  stopping the demo service at {}", service.url("/"));
    drop(service);
    Ok(())
}
