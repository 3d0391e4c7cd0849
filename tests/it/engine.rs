//! The engine through the real server: a sustained latency trigger, its suggestion, feedback,
//! a restart that rebuilds the same state, and a replay of the live log without a difference.

use std::time::{Duration, Instant};

use kora_model::*;
use serde_json::{Value, json};

use super::common::{BIN, Server, agent};

fn slow_run(block: usize, i: usize) -> Value {
    json!({
        "id": format!("lat-{block}-{i}"),
        "run_id": format!("lat-{block}-{i}"), "session_id": "s-lat", "model_id": "slow-13b",
        "substrate": "local", "prompt_hash": prompt_hash(&format!("p{block}{i}")),
        "context_tokens": 4096, "tokens_in": 3000, "tokens_out": 400,
        "model_latency_ms": 6000.0, "total_latency_ms": 7000.0,
        "deterministic_stage_ms": 1000.0, "model_stage_ms": 6000.0,
        "validation_retry_count": 0, "budget_breach_count": 0
    })
}

/// Posts block `block` of ten slow runs; the service acknowledges it.
fn post_slow_block(http: &ureq::Agent, server: &Server, block: usize) {
    let runs: Vec<Value> = (0..10).map(|i| slow_run(block, i)).collect();
    let r = http
        .post(server.url("/v1/runs"))
        .send_json(json!({ "runs": runs }))
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn get(http: &ureq::Agent, url: String) -> Value {
    http.get(url)
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap()
}

fn latency_state(http: &ureq::Agent, server: &Server) -> Value {
    let t = get(http, server.url("/v1/triggers"));
    t["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["category"] == "latency" && s["scope"] == "slow-13b")
        .cloned()
        .unwrap_or(Value::Null)
}

/// Polls until the latency trigger of the model is in `state` (with `k` when pending).
fn wait_for(http: &ureq::Agent, server: &Server, state: &str, k: Option<u64>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = latency_state(http, server);
        if s["state"] == state && (k.is_none() || s["k"].as_u64() == k) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "latency never reached {state} {k:?}: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn count(http: &ureq::Agent, server: &Server, kind: &str) -> usize {
    get(http, server.url(&format!("/v1/log?kind={kind}&limit=1000")))["entries"]
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn sustained_latency_fires_on_the_third_block_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let http = agent();
    let server = Server::start(dir.path());
    for block in 0..3 {
        post_slow_block(&http, &server, block);
        if block < 2 {
            let s = wait_for(&http, &server, "pending", Some(block as u64 + 1));
            assert_eq!(s["w"], 3, "{s}");
            assert_eq!(
                count(&http, &server, "firing"),
                0,
                "fired before the third block"
            );
        }
    }
    let s = wait_for(&http, &server, "firing", None);
    assert!(!s["evidence"].as_array().unwrap().is_empty(), "{s}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let suggestions = loop {
        let v = get(&http, server.url("/v1/suggestions"));
        if !v["suggestions"].as_array().unwrap().is_empty() {
            break v;
        }
        assert!(Instant::now() < deadline, "no suggestion appeared");
        std::thread::sleep(Duration::from_millis(50));
    };
    let item = &suggestions["suggestions"][0];
    assert_eq!(item["suggestion"]["category"], "latency");
    assert_eq!(item["suggestion"]["scope"], "slow-13b");
    assert_eq!(
        item["firing"]["category"], "latency",
        "the firing and its evidence come along"
    );
    assert!(!item["firing"]["evidence"].as_array().unwrap().is_empty());
    let message = item["suggestion"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("Local execution hit a limit: "),
        "{message}"
    );
    let id = item["suggestion"]["suggestion_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let option = item["suggestion"]["options"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Feedback: an option the suggestion does not offer is refused, the offered one is taken.
    let r = http
        .post(server.url(&format!("/v1/suggestions/{id}/feedback")))
        .send_json(json!({"action": "accepted", "choice": "teleport"}))
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .post(server.url("/v1/suggestions/nope/feedback"))
        .send_json(json!({"action": "dismissed"}))
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .post(server.url(&format!("/v1/suggestions/{id}/feedback")))
        .send_json(json!({"action": "accepted", "choice": option}))
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = get(&http, server.url("/v1/suggestions"));
    assert_eq!(v["suggestions"][0]["feedback"][0]["action"], "accepted");

    let triggers_before = latency_state(&http, &server);
    let suggestions_before = get(&http, server.url("/v1/suggestions"))["suggestions"].clone();
    let firings_before = count(&http, &server, "firing");
    server.stop();

    let server = Server::start(dir.path());
    assert_eq!(latency_state(&http, &server), triggers_before);
    assert_eq!(
        get(&http, server.url("/v1/suggestions"))["suggestions"],
        suggestions_before
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        count(&http, &server, "firing"),
        firings_before,
        "the restart derived again"
    );
    server.stop();

    // The whole live log re-derives without a difference.
    let out = std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["replay", "--json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "replay found differences: {report}");
    assert_eq!(report["differences"], json!([]));
    assert!(report["matching"].as_u64().unwrap() >= 3, "{report}");
}

/// Issue 12: a local thresholds version (not pinned) could change content later under the
/// same version, and a restart resumed a checkpoint by version string alone. Now the real
/// binary refuses to start when the log holds decisions of the version in force made with
/// another fingerprint, says why, and leaves the store as it was.
#[test]
fn a_thresholds_version_edited_in_place_is_refused_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("thresholds.json");
    let mut thresholds: Value = serde_json::from_str(kora_policy::EMBEDDED_THRESHOLDS).unwrap();
    thresholds["version"] = json!("1.9.0");
    std::fs::write(&file, thresholds.to_string()).unwrap();
    let env = [("KORA_TELEMETRY_THRESHOLDS", file.to_str().unwrap())];

    let http = agent();
    let server = Server::start_with_env(&data, &env);
    for block in 0..3 {
        post_slow_block(&http, &server, block);
    }
    let s = wait_for(&http, &server, "firing", None);
    assert_eq!(s["state"], "firing");
    let deadline = Instant::now() + Duration::from_secs(10);
    let firing = loop {
        let v = get(&http, server.url("/v1/log?kind=firing&limit=10"));
        if let Some(f) = v["entries"].as_array().and_then(|e| e.first()).cloned() {
            break f;
        }
        assert!(Instant::now() < deadline, "no firing was recorded");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(firing["thresholds_version"], "1.9.0", "{firing}");
    let recorded = firing["thresholds_fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(recorded.len(), 64, "{firing}");
    server.stop();

    // The same version, other content.
    thresholds["latency"]["lat_p95_limit_ms"] = json!(4000);
    std::fs::write(&file, thresholds.to_string()).unwrap();
    let out = std::process::Command::new(BIN)
        .env("KORA_TELEMETRY_LOG", "warn")
        .envs(env)
        .arg("--data-dir")
        .arg(&data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "started with changed content");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1.9.0"), "{stderr}");
    assert!(stderr.contains(&recorded), "{stderr}");
    assert!(stderr.contains("new MINOR version"), "{stderr}");

    // With the content it was recorded with, it starts again and nothing was lost.
    thresholds["latency"]["lat_p95_limit_ms"] = json!(4500);
    std::fs::write(&file, thresholds.to_string()).unwrap();
    let server = Server::start_with_env(&data, &env);
    assert_eq!(count(&http, &server, "firing"), 1);
    assert_eq!(count(&http, &server, "run"), 30);
    server.stop();
}
