//! The hostile-cardinality run of issue 16, on the real binary with its default limits: a
//! client that puts a new `model_id` on every run (a path or a hash in the model name), and
//! queue-wait samples tagged with a new `model_id` each, 50 batches of 2,000 of each over one
//! keep-alive connection, between batches of an ordinary client. Before the limits this took
//! the service from 10 MiB to 2.7 GiB and `GET /v1/triggers` to 63 MB; now every hostile batch
//! is refused (`422 limit_exceeded` naming the limit), every ordinary batch is stored, health
//! names the limit hit, the views stay small and quick, and the service's peak RSS stays under
//! 64 MiB.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kora_model::{Record, RecordKind, prompt_hash};
use serde_json::{Value, json};

use super::common::{Server, agent};

const BATCHES: usize = 50;
const PER_BATCH: usize = 2_000;
/// The ceiling of the issue, on the service's peak resident memory.
const MAX_HWM_KIB: u64 = 64 * 1024;

fn run(id: &str, model: &str) -> Value {
    json!({
        "id": id, "run_id": id, "session_id": "s1", "model_id": model, "substrate": "local",
        "prompt_hash": prompt_hash(id), "context_tokens": 2048, "tokens_in": 1500,
        "tokens_out": 300, "model_latency_ms": 900.0, "total_latency_ms": 1200.0,
        "deterministic_stage_ms": 100.0, "model_stage_ms": 900.0,
        "validation_retry_count": 0, "budget_breach_count": 0, "queue_wait_ms": 20.0
    })
}

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Answer {
    status: u16,
    body: Value,
    bytes: usize,
    took: Duration,
}

fn send(http: &ureq::Agent, method: &str, url: &str, body: Option<&Value>) -> Answer {
    let start = Instant::now();
    let response = match body {
        Some(b) => http
            .post(url)
            .header("content-type", "application/json")
            .send(b.to_string()),
        None => {
            assert_eq!(method, "GET");
            http.get(url).call()
        }
    };
    let mut response = response.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    let took = start.elapsed();
    Answer {
        status,
        bytes: text.len(),
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        took,
    }
}

#[test]
fn hostile_cardinality_is_refused_instead_of_growing_the_service() {
    if !std::path::Path::new("/proc/self/status").exists() {
        panic!("this test reads the service's peak RSS from /proc/PID/status (Linux only)");
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let pid = server.child.id();
    // One agent, requests one after the other: one keep-alive connection.
    let http = agent();
    let (rss_start, _) = memory_kib(pid);
    let mut rss_max = rss_start;
    let mut acked_runs: BTreeSet<String> = BTreeSet::new();
    let mut acked_samples: BTreeSet<String> = BTreeSet::new();
    let mut refused = 0;
    let mut slowest = Duration::ZERO;
    let models = ["llama-3-8b-q4", "qwen2.5-7b", "phi-3-mini"];
    for b in 0..BATCHES {
        // The ordinary client: three models, served throughout.
        let runs: Vec<Value> = (0..20)
            .map(|i| run(&format!("ok-run-{b}-{i}"), models[i % models.len()]))
            .collect();
        let a = send(
            &http,
            "POST",
            &server.url("/v1/runs"),
            Some(&json!({ "runs": runs })),
        );
        assert_eq!(a.status, 200, "ordinary runs batch {b}: {}", a.body);
        acked_runs.extend((0..20).map(|i| format!("ok-run-{b}-{i}")));
        let samples: Vec<Value> = (0..20)
            .map(|i| {
                json!({"id": format!("ok-sample-{b}-{i}"), "signal": "active_generations",
                       "value": (i % 3) as f64})
            })
            .collect();
        let a = send(
            &http,
            "POST",
            &server.url("/v1/samples"),
            Some(&json!({ "samples": samples })),
        );
        assert_eq!(a.status, 200, "ordinary samples batch {b}: {}", a.body);
        acked_samples.extend((0..20).map(|i| format!("ok-sample-{b}-{i}")));

        // The buggy client: a new model on every run.
        let runs: Vec<Value> = (0..PER_BATCH)
            .map(|i| {
                let id = format!("hostile-run-{b}-{i}");
                run(&id, &format!("/models/{b}-{i}-7f3a9c2e.gguf"))
            })
            .collect();
        let a = send(
            &http,
            "POST",
            &server.url("/v1/runs"),
            Some(&json!({ "runs": runs })),
        );
        assert_eq!(a.status, 422, "hostile runs batch {b}: {}", a.body);
        assert_eq!(a.body["error"], "limit_exceeded", "{}", a.body);
        assert_eq!(a.body["limit"]["name"], "models", "{}", a.body);
        assert_eq!(a.body["limit"]["limit"], 1000, "{}", a.body);
        assert_eq!(a.body["limit"]["count"], 3, "{}", a.body);
        // The first run past the limit: the 998th new model, after the three ordinary ones.
        assert_eq!(a.body["field"], "runs[997].model_id", "{}", a.body);
        slowest = slowest.max(a.took);
        refused += 1;

        // Queue waits tagged with a new model each: a new series and a new model per sample.
        let samples: Vec<Value> = (0..PER_BATCH)
            .map(|i| {
                json!({"id": format!("hostile-sample-{b}-{i}"), "signal": "queue_wait_ms",
                       "value": 15.0, "model_id": format!("req-{b}-{i}-9b1d")})
            })
            .collect();
        let a = send(
            &http,
            "POST",
            &server.url("/v1/samples"),
            Some(&json!({ "samples": samples })),
        );
        assert_eq!(a.status, 422, "hostile samples batch {b}: {}", a.body);
        assert_eq!(a.body["error"], "limit_exceeded", "{}", a.body);
        let name = a.body["limit"]["name"].as_str().unwrap();
        assert!(name == "models" || name == "series", "{}", a.body);
        slowest = slowest.max(a.took);
        refused += 1;

        rss_max = rss_max.max(memory_kib(pid).0);
    }
    assert_eq!(refused, 2 * BATCHES);

    let health = send(&http, "GET", &server.url("/v1/health"), None).body;
    assert_eq!(health["last_limit_hit"]["name"], "models", "{health}");
    assert!(
        health["last_limit_hit"]["field"]
            .as_str()
            .is_some_and(|f| f.starts_with("samples[")),
        "{health}"
    );
    assert_eq!(health["limits"][0]["count"], 3, "{health}");
    assert_eq!(
        health["limits"][0]["refused_batches"],
        2 * BATCHES as u64,
        "{health}"
    );
    assert!(
        health["limits"][1]["count"].as_u64().unwrap() < 50,
        "the probe's series and the ordinary ones only: {health}"
    );

    // Every view answers small and quickly.
    let mut views = Vec::new();
    for path in [
        "/v1/health",
        "/v1/triggers",
        "/v1/series",
        "/v1/suggestions",
        "/v1/windows",
        "/v1/log",
        "/v1/profile",
        "/v1/metrics/product",
        "/metrics",
    ] {
        let a = send(&http, "GET", &server.url(path), None);
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        views.push((path, a.bytes, a.took));
        rss_max = rss_max.max(memory_kib(pid).0);
    }
    let (_, hwm) = memory_kib(pid);
    eprintln!(
        "hostile: {refused} batches refused, the slowest in {slowest:?}; RSS {} -> max {} KiB, \
         VmHWM {hwm} KiB; views (bytes, time): {views:?}",
        rss_start, rss_max
    );
    for (path, bytes, took) in &views {
        assert!(
            *bytes < 256 * 1024,
            "{path} answered {bytes} bytes: not bounded"
        );
        assert!(
            *took < Duration::from_secs(2),
            "{path} took {took:?} (a debug build)"
        );
    }
    assert!(
        slowest < Duration::from_secs(5),
        "a refusal took {slowest:?} (a debug build)"
    );
    assert!(
        hwm <= MAX_HWM_KIB,
        "the service's peak RSS was {hwm} KiB, over {MAX_HWM_KIB} KiB"
    );
    server.stop();

    // Every acknowledged record is in the store, and nothing of a refused batch.
    let store =
        kora_store::Store::open(&dir.path().join("kora-telemetry.redb"), Default::default())
            .unwrap();
    let runs: BTreeSet<String> = store
        .scan_kind(RecordKind::Run, 0, usize::MAX)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.record {
            Record::Run(r) => r.id,
            _ => None,
        })
        .collect();
    assert_eq!(
        runs, acked_runs,
        "the stored runs are exactly the acknowledged ones"
    );
    let samples: BTreeSet<String> = super::common::stored_sample_ids(&store)
        .into_keys()
        .collect();
    assert_eq!(
        samples, acked_samples,
        "the stored client samples are exactly the acknowledged ones"
    );
}

/// A runtime that crashes never sends `session_ended`: its sessions count as ended after 24 h
/// of record time without a record naming them (`kora_model::SESSION_IDLE_MS`), so crashed
/// sessions cannot fill `max_open_sessions` for ever; a restart counts the same.
#[test]
fn sessions_of_a_crashed_runtime_stop_counting_after_a_day_of_record_time() {
    const HOUR: i64 = 3_600_000;
    let dir = tempfile::tempdir().unwrap();
    let env = [("KORA_TELEMETRY_MAX_OPEN_SESSIONS", "3")];
    let server = Server::start_with_env(dir.path(), &env);
    let http = agent();
    let now = kora_pipeline::clock::wall_ms();
    let start = |id: &str, ts: i64| json!({"events": [{"kind": "session_started", "session_id": id, "ts_ms": ts}]});
    let open = |server: &Server| -> Value {
        let h = send(&http, "GET", &server.url("/v1/health"), None).body;
        let l = h["limits"][2].clone();
        assert_eq!(l["name"], "open_sessions", "{h}");
        l
    };
    // Three sessions of a runtime that then crashed.
    for id in ["a", "b", "c"] {
        let a = send(
            &http,
            "POST",
            &server.url("/v1/events"),
            Some(&start(id, now - 25 * HOUR)),
        );
        assert_eq!(a.status, 200, "{}", a.body);
    }
    assert_eq!(open(&server)["count"], 3);
    // 23 h of record time later they still count: a fourth is refused.
    let a = send(
        &http,
        "POST",
        &server.url("/v1/events"),
        Some(&start("d", now - 2 * HOUR)),
    );
    assert_eq!(a.status, 422, "{}", a.body);
    assert_eq!(a.body["limit"]["name"], "open_sessions", "{}", a.body);
    assert_eq!(a.body["limit"]["count"], 3, "{}", a.body);
    // A run keeps b alive.
    let mut r = run("run-b", "llama-3-8b-q4");
    r["session_id"] = json!("b");
    r["ts_ms"] = json!(now - HOUR);
    let a = send(
        &http,
        "POST",
        &server.url("/v1/runs"),
        Some(&json!({ "runs": [r] })),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(open(&server)["count"], 3, "a and c are 24 h old, not more");
    // Now a and c have been idle for more than a day: d fits.
    let a = send(
        &http,
        "POST",
        &server.url("/v1/events"),
        Some(&start("d", now)),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(open(&server)["count"], 2, "b and d");
    server.stop();
    // The same count from the store after a restart.
    let server = Server::start_with_env(dir.path(), &env);
    assert_eq!(open(&server)["count"], 2, "after a restart");
    assert_eq!(open(&server)["refused_batches"], 0);
    server.stop();
}
