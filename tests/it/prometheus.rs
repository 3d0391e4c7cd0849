//! A stock Prometheus scrapes the real binary's `GET /metrics` and answers a PromQL
//! `histogram_quantile` over the run latency histogram that matches the engine's own p95 of the
//! same runs within a bucket.
//!
//! Needs Debian's `prometheus` (`apt-get install -y prometheus`: `/usr/bin/prometheus`, or set
//! `KORA_PROMETHEUS`). In CI (`CI` set) a missing binary fails the test; elsewhere it is
//! skipped with a loud line.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kora_model::prompt_hash;
use serde_json::{Value, json};

use super::common::{Server, agent};

const MODEL: &str = "prom-model";

/// Model latencies (ms) of the ten runs: one block of the engine, whose p95 (nearest rank
/// over ten values) is the largest.
const LATENCIES_MS: [f64; 10] = [
    300.0, 420.0, 510.0, 640.0, 700.0, 830.0, 900.0, 1150.0, 1200.0, 1340.0,
];

/// What each run adds to its model latency to make its total latency.
const OVERHEAD_MS: f64 = 150.0;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The Prometheus binary, or why the test cannot run.
fn prerequisites() -> Result<PathBuf, String> {
    let bin = std::env::var_os("KORA_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"));
    if !bin.exists() {
        return Err(format!(
            "no Prometheus at {} (install it: `apt-get update && apt-get install -y prometheus`, \
             or set KORA_PROMETHEUS)",
            bin.display()
        ));
    }
    Ok(bin)
}

/// A running Prometheus, killed when dropped.
struct Prometheus {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Prometheus {
    /// Starts `bin` scraping `target` (`host:port`) every second, on a free loopback port.
    fn start(bin: &Path, dir: &Path, target: &str) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: kora\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        // A free port: bound, read and released (Prometheus binds it a moment later).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join("prometheus.log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn prometheus");
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The instant vector `query` answers now (empty while Prometheus is not ready).
    fn query(&self, http: &ureq::Agent, query: &str) -> Vec<Value> {
        let Ok(mut r) = http
            .get(format!("{}/api/v1/query", self.base))
            .query("query", query)
            .call()
        else {
            return Vec::new();
        };
        if r.status() != 200 {
            return Vec::new();
        }
        let v: Value = r.body_mut().read_json().unwrap_or(Value::Null);
        assert_eq!(v["status"], "success", "{query}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The single value `query` answers, waiting up to 30 s for Prometheus to have it.
    fn value(&self, http: &ureq::Agent, query: &str) -> f64 {
        let start = Instant::now();
        loop {
            let result = self.query(http, query);
            if let Some(first) = result.first() {
                assert_eq!(result.len(), 1, "{query}: {result:?}");
                let text = first["value"][1].as_str().unwrap();
                return text
                    .parse()
                    .unwrap_or_else(|e| panic!("{query}: {text:?}: {e}"));
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "Prometheus has no answer to {query} after 30 s; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn post(http: &ureq::Agent, url: String, body: Value) {
    let mut r = http.post(&url).send_json(&body).unwrap();
    let status = r.status();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    assert_eq!(status, 200, "{url}: {text}");
}

fn get_text(http: &ureq::Agent, url: String) -> String {
    let mut r = http.get(&url).call().unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.body_mut().read_to_string().unwrap()
}

/// The engine's p95 (ms) of `metric` over the block of runs of [`MODEL`], waiting for the
/// follower to close it.
fn engine_p95(http: &ureq::Agent, server: &Server, metric: &str) -> f64 {
    let start = Instant::now();
    loop {
        let mut r = http
            .get(server.url("/v1/windows"))
            .query("kind", "runs")
            .query("scope", MODEL)
            .query("metric", metric)
            .call()
            .unwrap();
        let v: Value = r.body_mut().read_json().unwrap();
        if let Some(w) = v["windows"].as_array().and_then(|w| w.first()) {
            assert_eq!(w["window"]["count"], 10, "{w}");
            return w["window"]["p95"].as_f64().unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no run window of {MODEL} after 10 s: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The index of the bucket of [`kora_window::LATENCY_BUCKETS_S`] that holds `seconds` (the
/// first bound at or above it; one past the last for `+Inf`).
fn bucket_of(seconds: f64) -> usize {
    kora_window::LATENCY_BUCKETS_S.partition_point(|b| *b < seconds)
}

/// The lines of the run histograms in an exposition.
fn run_histogram_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with("kora_run_") && l.contains(MODEL))
        .collect()
}

/// Whether the probe reading or profile value behind the family `name` is unavailable in
/// `profile` (a `GET /v1/profile` answer): such a family is left out of the exposition.
fn reading_unavailable(profile: &Value, name: &str) -> bool {
    let hardware = &profile["hardware"];
    let recommended = |field: &str| profile["profile"][field]["value"].is_null();
    match name {
        "kora_hardware_reading_timestamp_seconds" => profile.is_null(),
        "kora_cpu_cores" => hardware["cpu_cores"].is_null(),
        "kora_cpu_load_ratio" => hardware["cpu_load_pct"].is_null(),
        "kora_ram_total_bytes" => hardware["ram_total_mb"].is_null(),
        "kora_ram_free_bytes" => hardware["ram_free_mb"].is_null(),
        "kora_profile_max_model_vram_bytes" => recommended("max_recommended_model_vram_mb"),
        "kora_profile_max_context_tokens" => recommended("max_recommended_context_tokens"),
        "kora_profile_max_concurrency" => recommended("max_recommended_concurrency"),
        gpu if gpu.starts_with("kora_gpu_") => {
            // Only this test's machine decides: a GPU family is served when a GPU was read.
            hardware["gpus"].as_array().is_none_or(|g| g.is_empty())
        }
        _ => false,
    }
}

/// The exposition and the `GET /v1/profile` answer of the same probe reading.
fn exposition_and_profile(http: &ureq::Agent, server: &Server) -> (String, Value) {
    for _ in 0..20 {
        let text = get_text(http, server.url("/metrics"));
        let mut r = http.get(server.url("/v1/profile")).call().unwrap();
        let profile: Value = r.body_mut().read_json().unwrap_or(Value::Null);
        let served_ts = text
            .lines()
            .find_map(|l| l.strip_prefix("kora_hardware_reading_timestamp_seconds "))
            .and_then(|v| v.parse::<f64>().ok());
        let profile_ts = profile["ts_ms"].as_f64().map(|ms| ms / 1000.0);
        if served_ts == profile_ts {
            return (text, profile);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the probe reading changed between /metrics and /v1/profile 20 times in a row");
}

/// Every query of `dashboards/grafana-kora-telemetry.json` parses in Prometheus, and every
/// `kora_` family it names is served (or, for a probe reading, reported unavailable).
fn dashboard_queries_parse_and_name_served_series(
    http: &ureq::Agent,
    prometheus: &Prometheus,
    server: &Server,
) {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dashboards/grafana-kora-telemetry.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (exposition, profile) = exposition_and_profile(http, server);
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let query = expr.replace("$__rate_interval", "1m");
            let mut r = http
                .get(format!("{}/api/v1/query", prometheus.base))
                .query("query", &query)
                .call()
                .unwrap();
            let v: Value = r.body_mut().read_json().unwrap();
            assert_eq!(v["status"], "success", "{}: {query}: {v}", panel["title"]);
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("kora_"))
            {
                let served = exposition.contains(&format!("\n{name} "))
                    || exposition.contains(&format!("\n{name}{{"));
                assert!(
                    served || reading_unavailable(&profile, name),
                    "{}: {name} is not served:\n{exposition}",
                    panel["title"]
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked} queries");
}

#[test]
fn prometheus_answers_the_engines_p95_within_a_bucket() {
    let bin = match prerequisites() {
        Ok(b) => b,
        Err(why) if in_ci() => {
            panic!("the Prometheus test cannot run in CI: {why}. `.ci/run` installs it.")
        }
        Err(why) => {
            eprintln!(
                "\n======== SKIPPED: prometheus_answers_the_engines_p95_within_a_bucket because {why} ========\n"
            );
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    let http = agent();

    let now = kora_pipeline::clock::wall_ms();
    let runs: Vec<Value> = LATENCIES_MS
        .iter()
        .enumerate()
        .map(|(i, ms)| {
            json!({
                "run_id": format!("prom-run-{i}"), "session_id": "prom-session",
                "ts_ms": now - 10_000 + i as i64 * 1000,
                "model_id": MODEL, "substrate": "local",
                "prompt_hash": prompt_hash(&format!("prompt {i}")), "context_tokens": 2048,
                "tokens_in": 1000, "tokens_out": 100 + i as u64,
                "model_latency_ms": ms, "total_latency_ms": ms + OVERHEAD_MS,
                "deterministic_stage_ms": OVERHEAD_MS, "model_stage_ms": ms,
                "validation_retry_count": 0, "budget_breach_count": 0,
                "queue_wait_ms": 20.0
            })
        })
        .collect();
    // And one run on Krako Cloud, of another model: its own series, never hidden.
    let mut runs = runs;
    runs.push(json!({
        "run_id": "prom-cloud-run", "session_id": "prom-session", "ts_ms": now,
        "model_id": "prom-cloud-model", "substrate": "cloud",
        "prompt_hash": prompt_hash("cloud prompt"), "context_tokens": 2048,
        "tokens_in": 1000, "tokens_out": 100,
        "model_latency_ms": 600.0, "total_latency_ms": 650.0,
        "deterministic_stage_ms": 50.0, "model_stage_ms": 600.0,
        "validation_retry_count": 0, "budget_breach_count": 0
    }));
    post(&http, server.url("/v1/runs"), json!({ "runs": runs }));
    let engine_model_ms = engine_p95(&http, &server, "model_latency_ms");
    let engine_total_ms = engine_p95(&http, &server, "total_latency_ms");
    assert_eq!(
        engine_model_ms, 1340.0,
        "nearest rank over ten: the largest"
    );
    let before_restart = get_text(&http, server.url("/metrics"));

    let target = server.base.trim_start_matches("http://").to_owned();
    let prometheus = Prometheus::start(&bin, dir.path(), &target);
    let up = prometheus.value(&http, "up{job=\"kora\"}");
    assert_eq!(
        up,
        1.0,
        "the scrape failed; Prometheus's log:\n{}",
        prometheus.log()
    );
    let selector = format!("{{model=\"{MODEL}\",substrate=\"local\"}}");
    assert_eq!(
        prometheus.value(
            &http,
            &format!("kora_run_model_latency_seconds_count{selector}")
        ),
        10.0
    );
    let sum = prometheus.value(
        &http,
        &format!("kora_run_model_latency_seconds_sum{selector}"),
    );
    let want_sum: f64 = LATENCIES_MS.iter().sum::<f64>() / 1000.0;
    assert!((sum - want_sum).abs() < 1e-6, "{sum} != {want_sum}");
    assert_eq!(
        prometheus.value(&http, &format!("kora_run_tokens_out_total{selector}")),
        (100..110).sum::<u64>() as f64
    );
    for (family, engine_ms) in [
        ("kora_run_model_latency_seconds", engine_model_ms),
        ("kora_run_total_latency_seconds", engine_total_ms),
    ] {
        let query =
            format!("histogram_quantile(0.95, sum by (le) ({family}_bucket{{model=\"{MODEL}\"}}))");
        let promql = prometheus.value(&http, &query);
        let engine = engine_ms / 1000.0;
        eprintln!("{family}: PromQL {query} = {promql:.4} s; the engine's p95 = {engine:.4} s");
        assert_eq!(
            bucket_of(promql),
            bucket_of(engine),
            "{family}: PromQL's p95 {promql} s and the engine's {engine} s lie in different \
             buckets of {:?}",
            kora_window::LATENCY_BUCKETS_S
        );
    }
    // The trigger state as ALERTS has it: the latency scope of the model, evaluated once.
    let states = prometheus.query(
        &http,
        &format!("kora_trigger_state{{category=\"latency\",scope=\"{MODEL}\"}}"),
    );
    assert_eq!(states.len(), 1, "{states:?}");
    assert_eq!(states[0]["value"][1], "1", "{states:?}");
    dashboard_queries_parse_and_name_served_series(&http, &prometheus, &server);
    drop(prometheus);

    // The counts are folded with the log: a restart shows the same histograms.
    server.stop();
    let server = Server::start(&data);
    let after_restart = get_text(&http, server.url("/metrics"));
    let lines = run_histogram_lines(&before_restart);
    assert!(lines.len() > 40, "{before_restart}");
    assert_eq!(run_histogram_lines(&after_restart), lines);
    server.stop();
}
