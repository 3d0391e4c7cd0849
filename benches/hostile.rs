//! Issue 16's hostile-cardinality run against the real `kora-telemetry serve` (release), twice:
//! with the default limits, and with the limits raised out of reach (`--max-models`,
//! `--max-series`, `--max-open-sessions` 10,000,000: the service as it was before them; the
//! scope views are paged in both).
//!
//! One client, one keep-alive connection. Each round: an ordinary batch of 20 runs over three
//! models and one of 20 host samples (both must be stored), then the buggy client's batch of
//! 2,000 runs with a new `model_id` each and its batch of 2,000 `queue_wait_ms` samples tagged
//! with a new `model_id` each (new series), then one `GET` of every read endpoint. 50 rounds,
//! then 100 more `GET`s of every endpoint. Printed: the service's RSS every 5 rounds, then per
//! run its peak RSS (`VmHWM`), the refusals by limit, p50/p99/max of every endpoint, the
//! largest answer of each view, and the wall time; then both runs side by side.
//!
//! The raised run is stopped after `KORA_HOSTILE_CAP_S` seconds (default 120) or 3 GiB of RSS,
//! whichever comes first, and says so: before the limits the whole run took 211 s and 2.7 GiB.
//! `KORA_HOSTILE_ROUNDS` changes the 50 rounds.
//!
//! Then the client that fills every limit instead: runs of new models in batches of 200 (ten
//! runs a model, so each closes a run block) until the model limit refuses one, then samples
//! of new series (a new `device` each) in batches of 100 until the series limit refuses one;
//! the RSS after each step, `VmHWM`, and one `GET` of every view at the limits.
//!
//! Last, what the limits cost at a start that reads them from the store: `Cardinality::load`
//! (the names the store holds, read from the whole log) over a store of 100,000 context
//! requests and 10,000 sessions started and ended, median of 5. A service's start takes them
//! from the follower's checkpoint and the log after it instead; this read is what the first
//! start on a store whose checkpoint predates them costs, once. `cargo bench --bench hostile`.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const PER_BATCH: usize = 2_000;
const AFTER_GETS: usize = 100;
const VIEWS: [&str; 9] = [
    "/v1/health",
    "/v1/triggers",
    "/v1/series",
    "/v1/suggestions",
    "/v1/windows",
    "/v1/log",
    "/v1/profile",
    "/v1/metrics/product",
    "/metrics",
];
const MODELS: [&str; 3] = ["llama-3-8b-q4", "qwen2.5-7b", "phi-3-mini"];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(id: &str, model: &str) -> Value {
    json!({
        "id": id, "run_id": id, "session_id": "s1", "model_id": model, "substrate": "local",
        "prompt_hash": kora_model::prompt_hash(id), "context_tokens": 2048, "tokens_in": 1500,
        "tokens_out": 300, "model_latency_ms": 900.0, "total_latency_ms": 1200.0,
        "deterministic_stage_ms": 100.0, "model_stage_ms": 900.0,
        "validation_retry_count": 0, "budget_breach_count": 0, "queue_wait_ms": 20.0
    })
}

/// `VmRSS` and `VmHWM` of `pid`, in KiB (0 once the process is gone).
fn memory_kib(pid: u32) -> (u64, u64) {
    let field = |name| common::proc_status_kib(pid, name).unwrap_or(0);
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// What one run measured.
#[derive(Default)]
struct Outcome {
    label: &'static str,
    rounds_done: usize,
    rounds: usize,
    stopped: Option<String>,
    wall: Duration,
    rss_start_kib: u64,
    rss_max_kib: u64,
    hwm_kib: u64,
    /// Latencies (ms) per endpoint.
    latencies: BTreeMap<String, Vec<f64>>,
    /// The largest answer per endpoint, in bytes.
    largest: BTreeMap<String, usize>,
    /// Hostile batches refused, by limit name.
    refused: BTreeMap<String, u64>,
    hostile_stored: u64,
    ordinary_sent: u64,
    ordinary_stored: u64,
    other_errors: u64,
}

impl Outcome {
    fn note(&mut self, endpoint: &str, took: Duration, bytes: usize) {
        self.latencies
            .entry(endpoint.to_owned())
            .or_default()
            .push(took.as_secs_f64() * 1000.0);
        let l = self.largest.entry(endpoint.to_owned()).or_default();
        *l = (*l).max(bytes);
    }
}

fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Sends one request; the status, the answer and its size.
fn send(http: &ureq::Agent, url: &str, body: Option<&str>) -> (u16, Value, usize, Duration) {
    let start = Instant::now();
    let response = match body {
        Some(b) => http
            .post(url)
            .header("content-type", "application/json")
            .send(b),
        None => http.get(url).call(),
    };
    match response {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let text = r
                .body_mut()
                .with_config()
                .limit(1 << 30)
                .read_to_string()
                .unwrap_or_default();
            let took = start.elapsed();
            let len = text.len();
            // Only the small answers are parsed (the refusals, the acknowledgements).
            let value = if len < 64 * 1024 {
                serde_json::from_str(&text).unwrap_or(Value::Null)
            } else {
                Value::Null
            };
            (status, value, len, took)
        }
        Err(e) => {
            eprintln!("  {url}: {e}");
            (0, Value::Null, 0, start.elapsed())
        }
    }
}

fn hostile_run(label: &'static str, flags: &[&str], rounds: usize, cap: Duration) -> Outcome {
    let dir = common::tempdir();
    let (mut child, base, _) = common::spawn_serve_with(dir.path(), flags, "error");
    let pid = child.id();
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into();
    let mut o = Outcome {
        label,
        rounds,
        ..Outcome::default()
    };
    o.rss_start_kib = memory_kib(pid).0;
    o.rss_max_kib = o.rss_start_kib;
    println!("{label}: serve {}", flags.join(" "));
    let start = Instant::now();
    for b in 0..rounds {
        if start.elapsed() > cap {
            o.stopped = Some(format!(
                "stopped after {:.0} s (the cap)",
                cap.as_secs_f64()
            ));
            break;
        }
        if o.rss_max_kib > 3 * 1024 * 1024 {
            o.stopped = Some("stopped at 3 GiB of RSS".into());
            break;
        }
        // The ordinary client.
        let runs: Vec<Value> = (0..20)
            .map(|i| run(&format!("ok-run-{b}-{i}"), MODELS[i % MODELS.len()]))
            .collect();
        let body = json!({ "runs": runs }).to_string();
        let (s, v, n, took) = send(&http, &format!("{base}/v1/runs"), Some(&body));
        o.note("POST /v1/runs (ordinary)", took, n);
        o.ordinary_sent += 20;
        if s == 200 {
            o.ordinary_stored += v["accepted"].as_u64().unwrap_or(0);
        } else {
            o.other_errors += 1;
        }
        let samples: Vec<Value> = (0..20)
            .map(|i| {
                json!({"id": format!("ok-sample-{b}-{i}"), "signal": "active_generations",
                       "value": (i % 3) as f64})
            })
            .collect();
        let body = json!({ "samples": samples }).to_string();
        let (s, v, n, took) = send(&http, &format!("{base}/v1/samples"), Some(&body));
        o.note("POST /v1/samples (ordinary)", took, n);
        o.ordinary_sent += 20;
        if s == 200 {
            o.ordinary_stored += v["accepted"].as_u64().unwrap_or(0);
        } else {
            o.other_errors += 1;
        }

        // The buggy client.
        let runs: Vec<Value> = (0..PER_BATCH)
            .map(|i| {
                run(
                    &format!("hostile-run-{b}-{i}"),
                    &format!("/models/{b}-{i}-7f3a9c2e.gguf"),
                )
            })
            .collect();
        let samples: Vec<Value> = (0..PER_BATCH)
            .map(|i| {
                json!({"id": format!("hostile-sample-{b}-{i}"), "signal": "queue_wait_ms",
                       "value": 15.0, "model_id": format!("req-{b}-{i}-9b1d")})
            })
            .collect();
        for (path, body) in [
            ("/v1/runs", json!({ "runs": runs }).to_string()),
            ("/v1/samples", json!({ "samples": samples }).to_string()),
        ] {
            let (s, v, n, took) = send(&http, &format!("{base}{path}"), Some(&body));
            o.note(&format!("POST {path} (hostile)"), took, n);
            match s {
                422 => {
                    let name = v["limit"]["name"].as_str().unwrap_or("?").to_owned();
                    *o.refused.entry(name).or_default() += 1;
                }
                200 => o.hostile_stored += v["accepted"].as_u64().unwrap_or(0),
                _ => o.other_errors += 1,
            }
        }
        for view in VIEWS {
            let (s, _, n, took) = send(&http, &format!("{base}{view}"), None);
            o.note(&format!("GET {view}"), took, n);
            if s != 200 {
                o.other_errors += 1;
            }
        }
        o.rounds_done = b + 1;
        let (rss, _) = memory_kib(pid);
        o.rss_max_kib = o.rss_max_kib.max(rss);
        if (b + 1) % 5 == 0 {
            println!(
                "  round {:>3}: RSS {:>8.1} MiB  at {:>6.1} s",
                b + 1,
                mib(rss),
                start.elapsed().as_secs_f64()
            );
        }
    }
    if o.stopped.is_none() {
        for _ in 0..AFTER_GETS {
            for view in VIEWS {
                let (s, _, n, took) = send(&http, &format!("{base}{view}"), None);
                o.note(&format!("GET {view}"), took, n);
                if s != 200 {
                    o.other_errors += 1;
                }
            }
        }
    }
    o.wall = start.elapsed();
    let (rss, hwm) = memory_kib(pid);
    o.rss_max_kib = o.rss_max_kib.max(rss);
    o.hwm_kib = hwm;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    o
}

fn report(o: &Outcome) {
    let refused: u64 = o.refused.values().sum();
    println!(
        "{}: {} of {} rounds in {:.1} s{}",
        o.label,
        o.rounds_done,
        o.rounds,
        o.wall.as_secs_f64(),
        o.stopped
            .as_deref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default()
    );
    println!(
        "  RSS {:.1} MiB at start, {:.1} MiB at most (sampled), VmHWM {:.1} MiB",
        mib(o.rss_start_kib),
        mib(o.rss_max_kib),
        mib(o.hwm_kib)
    );
    println!(
        "  hostile batches refused: {refused} of {} {:?}; hostile records stored: {}; ordinary \
         records stored: {} of {}; other errors: {}",
        2 * o.rounds_done,
        o.refused,
        o.hostile_stored,
        o.ordinary_stored,
        o.ordinary_sent,
        o.other_errors
    );
    println!(
        "  {:<30} {:>7} {:>9} {:>9} {:>9} {:>12}",
        "endpoint", "n", "p50 ms", "p99 ms", "max ms", "largest B"
    );
    for (endpoint, v) in &o.latencies {
        println!(
            "  {:<30} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>12}",
            endpoint,
            v.len(),
            percentile(v, 0.5),
            percentile(v, 0.99),
            percentile(v, 1.0),
            o.largest.get(endpoint).copied().unwrap_or(0)
        );
    }
}

/// A view's path, answer size (bytes) and time (ms).
type ViewAnswer = (&'static str, usize, f64);

/// Fills the default limits (models, then series) on a fresh service; prints the RSS as it
/// goes; answers `VmHWM` (KiB), the counts reached, and the views' (path, bytes, ms).
fn fill_the_limits() -> (u64, Vec<u64>, Vec<ViewAnswer>) {
    let dir = common::tempdir();
    let (mut child, base, _) = common::spawn_serve_with(dir.path(), &[], "error");
    let pid = child.id();
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    println!(
        "filling the limits: RSS {:.1} MiB at start",
        mib(memory_kib(pid).0)
    );
    let mut n = 0;
    for step in 0.. {
        let runs: Vec<Value> = (0..200)
            .map(|i| {
                run(
                    &format!("fill-run-{}", n + i),
                    &format!("model-{}", (n + i) / 10),
                )
            })
            .collect();
        n += 200;
        let (s, _, _, _) = send(
            &http,
            &format!("{base}/v1/runs"),
            Some(&json!({ "runs": runs }).to_string()),
        );
        if s != 200 || step % 10 == 9 {
            println!(
                "  runs of {:>5} models: {s}, RSS {:.1} MiB",
                n / 10,
                mib(memory_kib(pid).0)
            );
        }
        if s != 200 {
            break;
        }
    }
    let mut device = 0;
    for step in 0.. {
        let samples: Vec<Value> = (0..100)
            .map(|i| json!({"signal": "gpu_vram_free_mb", "value": 1.0, "device": device + i}))
            .collect();
        device += 100;
        let (s, _, _, _) = send(
            &http,
            &format!("{base}/v1/samples"),
            Some(&json!({ "samples": samples }).to_string()),
        );
        if s != 200 || step % 10 == 9 {
            println!(
                "  {device:>5} device series: {s}, RSS {:.1} MiB",
                mib(memory_kib(pid).0)
            );
        }
        if s != 200 {
            break;
        }
    }
    let mut views = Vec::new();
    for view in VIEWS {
        let (_, _, bytes, took) = send(&http, &format!("{base}{view}"), None);
        views.push((view, bytes, took.as_secs_f64() * 1000.0));
    }
    let (_, health, _, _) = send(&http, &format!("{base}/v1/health"), None);
    let counts = (0..3)
        .map(|i| health["limits"][i]["count"].as_u64().unwrap_or(0))
        .collect();
    let (rss, hwm) = memory_kib(pid);
    println!(
        "  at the limits: RSS {:.1} MiB, VmHWM {:.1} MiB, views (path, bytes, ms) {views:?}",
        mib(rss),
        mib(hwm)
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    (hwm, counts, views)
}

/// The time `Cardinality::load` takes over a store of `requests` context requests (three
/// models) and `sessions` sessions started and ended, and 9,000 runs: median of 5.
fn load_cost(requests: usize, sessions: usize) -> Duration {
    use kora_model::{ContextRequest, Record, SessionEvent};
    let dir = common::tempdir();
    let store = common::kora_open(dir.path());
    common::kora_append_runs(&store, &common::runs(9_000));
    let mut batch = Vec::new();
    for i in 0..requests {
        batch.push(Record::ContextRequest(ContextRequest {
            id: None,
            ts_ms: Some(common::DAY0_MS + i as i64),
            model_id: common::MODELS[i % common::MODELS.len()].to_owned(),
            requested_context_tokens: 4096,
            local_supported_context_tokens: None,
            session_id: None,
            prompt_hash: None,
        }));
        if i < sessions {
            let e = SessionEvent {
                id: None,
                ts_ms: Some(common::DAY0_MS + i as i64),
                session_id: format!("session-{i}"),
            };
            batch.push(Record::SessionStarted(e.clone()));
            batch.push(Record::SessionEnded(e));
        }
        if batch.len() >= 10_000 {
            store
                .append(0, kora_store::Batch::Records(std::mem::take(&mut batch)))
                .unwrap();
        }
    }
    store.append(0, kora_store::Batch::Records(batch)).unwrap();
    let mut times = Vec::new();
    for _ in 0..5 {
        let (took, c) = common::time(|| {
            kora_pipeline::Cardinality::load(&store, kora_pipeline::Limits::default()).unwrap()
        });
        assert_eq!(c.status()[0].count, common::MODELS.len() as u64);
        assert_eq!(c.status()[2].count, 0);
        times.push(took.as_secs_f64());
    }
    Duration::from_secs_f64(common::median(times))
}

fn main() {
    let rounds = env_or("KORA_HOSTILE_ROUNDS", 50) as usize;
    let cap = Duration::from_secs(env_or("KORA_HOSTILE_CAP_S", 120));
    let limited = hostile_run("limits (defaults)", &[], rounds, Duration::from_secs(3600));
    report(&limited);
    let raised = hostile_run(
        "limits raised (the service before them)",
        &[
            "--max-models",
            "10000000",
            "--max-series",
            "10000000",
            "--max-open-sessions",
            "10000000",
        ],
        rounds,
        cap,
    );
    report(&raised);

    let worst_p99 = |o: &Outcome| {
        o.latencies
            .values()
            .map(|v| percentile(v, 0.99))
            .fold(0.0, f64::max)
    };
    println!(
        "RESULT hostile peak RSS (VmHWM)          limits {:>8.1} MiB   raised {:>8.1} MiB{}",
        mib(limited.hwm_kib),
        mib(raised.hwm_kib),
        if raised.stopped.is_some() {
            " (raised: capped)"
        } else {
            ""
        }
    );
    println!(
        "RESULT hostile wall time                 limits {:>8.1} s     raised {:>8.1} s   ({} and {} of {} rounds)",
        limited.wall.as_secs_f64(),
        raised.wall.as_secs_f64(),
        limited.rounds_done,
        raised.rounds_done,
        rounds
    );
    println!(
        "RESULT hostile worst endpoint p99        limits {:>8.2} ms    raised {:>8.2} ms",
        worst_p99(&limited),
        worst_p99(&raised)
    );
    println!(
        "RESULT hostile batches refused           limits {:>8}        raised {:>8}",
        limited.refused.values().sum::<u64>(),
        raised.refused.values().sum::<u64>()
    );
    println!(
        "RESULT hostile ordinary records stored   limits {:>5} of {:<5} raised {:>5} of {}",
        limited.ordinary_stored,
        limited.ordinary_sent,
        raised.ordinary_stored,
        raised.ordinary_sent
    );
    let goals = [
        ("RSS <= 64 MiB throughout", limited.hwm_kib <= 64 * 1024),
        ("every endpoint p99 <= 50 ms", worst_p99(&limited) <= 50.0),
        (
            "every hostile batch refused",
            limited.refused.values().sum::<u64>() == 2 * limited.rounds_done as u64,
        ),
        (
            "every ordinary record stored",
            limited.ordinary_stored == limited.ordinary_sent && limited.other_errors == 0,
        ),
    ];
    for (goal, met) in goals {
        println!(
            "RESULT hostile goal {goal:<32} {}",
            if met { "met" } else { "MISSED" }
        );
    }
    let (hwm, counts, views) = fill_the_limits();
    let slowest = views.iter().map(|v| v.2).fold(0.0, f64::max);
    let largest = views.iter().map(|v| v.1).max().unwrap_or(0);
    println!(
        "RESULT hostile at the limits (models {}, series {}): VmHWM {:.1} MiB, slowest view {:.1} ms, largest answer {} B; goal <= 64 MiB {}",
        counts[0],
        counts[1],
        mib(hwm),
        slowest,
        largest,
        if hwm <= 64 * 1024 { "met" } else { "MISSED" }
    );
    let took = load_cost(100_000, 10_000);
    println!(
        "RESULT limits' load at start, 100,000 context requests + 10,000 sessions + 9,000 runs: {:.1} ms",
        took.as_secs_f64() * 1000.0
    );
}
