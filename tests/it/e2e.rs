//! End to end: the real binary on a real loopback socket, both encodings, a restart.

use kora_model::*;
use serde_json::{Value, json};

use super::common::{Server, agent};

fn run(i: usize) -> Run {
    Run {
        id: Some(format!("e2e-{i}")),
        ts_ms: None,
        run_id: format!("run-{i}"),
        session_id: "s-e2e".into(),
        model_id: "qwen2.5-7b-q4".into(),
        substrate: if i % 2 == 0 {
            Substrate::Local
        } else {
            Substrate::Cloud
        },
        prompt_hash: prompt_hash(&format!("prompt {i}")),
        context_tokens: 1024,
        tokens_in: Some(900),
        tokens_out: Some(100),
        total_tokens: Some(1000),
        model_latency_ms: 1000.0 + i as f64,
        total_latency_ms: 1500.0 + i as f64,
        deterministic_stage_ms: 500.0,
        model_stage_ms: 1000.0 + i as f64,
        validation_retry_count: 0,
        budget_breach_count: 0,
        queue_wait_ms: Some(12.5),
        prompt_tokens_sent: Some(900),
        stages: None,
    }
}

#[test]
fn ingest_in_both_encodings_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let http = agent();
    let server = Server::start(dir.path());

    let json_batch = RunBatch {
        runs: (0..5).map(run).collect(),
    };
    let mut resp = http
        .post(server.url("/v1/runs"))
        .send_json(&json_batch)
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first: IngestAck = resp.body_mut().read_json().unwrap();
    // The probe's samples share the sequence, so seqs are checked relative to each other.
    let (f1, l1) = (first.first_seq.unwrap(), first.last_seq.unwrap());
    assert_eq!((first.accepted, l1 - f1), (5, 4));

    let mp_batch = RunBatch {
        runs: (5..10).map(run).collect(),
    };
    let mut resp = http
        .post(server.url("/v1/runs"))
        .header("content-type", "application/msgpack")
        .send(&rmp_serde::to_vec_named(&mp_batch).unwrap()[..])
        .unwrap();
    assert_eq!(resp.status(), 200);
    let second: IngestAck = resp.body_mut().read_json().unwrap();
    let (f2, l2) = (second.first_seq.unwrap(), second.last_seq.unwrap());
    assert_eq!((second.accepted, l2 - f2), (5, 4));
    assert!(f2 > l1, "seqs increase across batches");

    let samples = json!({"samples": [
        {"signal": "cpu_load_pct", "value": 37.5},
        {"signal": "gpu_vram_free_mb", "unavailable": "no NVIDIA GPU (NVML library not found)"}
    ]});
    let resp = http
        .post(server.url("/v1/samples"))
        .header("content-type", "application/msgpack")
        .send(&rmp_serde::to_vec_named(&samples).unwrap()[..])
        .unwrap();
    assert_eq!(resp.status(), 200);

    let before: Value = http
        .get(server.url("/v1/log?kind=run&limit=100"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    let health_before: Health = http
        .get(server.url("/v1/health"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    server.stop();

    let server = Server::start(dir.path());
    let after: Value = http
        .get(server.url("/v1/log?kind=run&limit=100"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert_eq!(before, after);
    let entries: Vec<LogEntry> = serde_json::from_value(after["entries"].clone()).unwrap();
    assert_eq!(entries.len(), 10);
    for (entry, i) in entries.iter().zip((0..10).rev()) {
        let Record::Run(stored) = &entry.record else {
            panic!("not a run: {entry:?}")
        };
        let mut expected = run(i);
        expected.ts_ms = stored.ts_ms;
        assert_eq!(stored, &expected);
    }
    let health: Health = http
        .get(server.url("/v1/health"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    // Everything stored before the restart is still there (the probe may have added more).
    assert!(health.log_records >= health_before.log_records);
    assert!(health.samples >= health_before.samples && health_before.samples >= 2);
    assert!(health.last_seq >= health_before.last_seq);

    // A retried batch after the restart is recognised, not stored again.
    let mut resp = http
        .post(server.url("/v1/runs"))
        .send_json(&json_batch)
        .unwrap();
    let ack: IngestAck = resp.body_mut().read_json().unwrap();
    assert_eq!((ack.accepted, ack.duplicates), (0, 5));

    // `kora-telemetry log` asks the running service, since the service holds the store.
    let out = std::process::Command::new(super::common::BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["log", "--json", "-n", "3", "--kind", "run"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<LogEntry> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected: Vec<u64> = entries.iter().take(3).map(|e| e.seq).collect();
    assert_eq!(lines.iter().map(|e| e.seq).collect::<Vec<_>>(), expected);
    server.stop();

    // With the service stopped, `log` reads the file itself.
    let out = std::process::Command::new(super::common::BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["log", "-n", "2", "--kind", "run"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("run-9") && text.contains("run-8"), "{text}");
}

#[test]
fn a_second_service_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let out = std::process::Command::new(super::common::BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another kora-telemetry process"), "{err}");
    server.stop();
}

#[test]
fn a_non_loopback_address_is_refused_without_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(super::common::BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
    assert!(
        !dir.path().join("kora-telemetry.redb").exists(),
        "nothing was created"
    );
}

#[test]
fn consent_export_and_metrics_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let cli = |args: &[&str]| {
        std::process::Command::new(super::common::BIN)
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    let bundle = dir.path().join("bundle.json");
    let out = cli(&["export", "--file", bundle.to_str().unwrap()]);
    assert!(!out.status.success(), "export without consent succeeded");
    assert!(String::from_utf8_lossy(&out.stderr).contains("export is off"));
    assert!(!bundle.exists());
    let out = cli(&["consent", "on"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("is ON"));
    let preview = cli(&["export", "--preview"]);
    assert!(preview.status.success());
    let out = cli(&["export", "--file", bundle.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read(&bundle).unwrap();
    assert!(
        written == preview.stdout[..preview.stdout.len() - 1],
        "export differs from preview"
    );
    // Three runs, one of them on Krako Cloud: the command shows it, with its model.
    let resp = agent()
        .post(server.url("/v1/runs"))
        .send_json(&RunBatch {
            runs: (0..3).map(run).collect(),
        })
        .unwrap();
    assert_eq!(resp.status(), 200);
    let out = cli(&["metrics", "--range", "all"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("suggestion_accept_rate         none yet"));
    assert!(
        stdout.contains("cloud runs (Krako Cloud)       1 (1000 tokens)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("    qwen2.5-7b-q4                1 (1000 tokens)"),
        "{stdout}"
    );
    let out = cli(&["consent", "off"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("is OFF"));
    server.stop();
}

/// Regression: a SIGTERM right after start used to kill the service before its handler was
/// installed, skipping the graceful stop.
#[test]
fn sigterm_right_after_start_is_a_graceful_stop() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..5 {
        Server::start(dir.path()).stop();
    }
}
