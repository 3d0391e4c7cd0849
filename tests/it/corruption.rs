//! Damaged store files are refused at start with a message naming the file, and left as they
//! are: never recreated, deleted or repaired.

use std::process::Command;

use super::common::{BIN, Server, agent};

/// A store with some records, written by the real service.
fn healthy_store() -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let http = agent();
    for b in 0..5 {
        let runs: Vec<serde_json::Value> = (0..50)
            .map(|i| {
                serde_json::json!({"run_id": format!("r{b}-{i}"), "session_id": "s", "model_id": "m",
                    "substrate": "local", "prompt_hash": kora_model::prompt_hash("p"), "context_tokens": 1,
                    "model_latency_ms": 1.0, "total_latency_ms": 2.0, "deterministic_stage_ms": 1.0,
                    "model_stage_ms": 1.0, "validation_retry_count": 0, "budget_breach_count": 0})
            })
            .collect();
        let r = http
            .post(server.url("/v1/runs"))
            .send_json(serde_json::json!({ "runs": runs }))
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    server.stop();
    let bytes = std::fs::read(dir.path().join("kora-telemetry.redb")).unwrap();
    (dir, bytes)
}

#[test]
fn damaged_files_are_refused_at_start_and_left_untouched() {
    let (_healthy, base) = healthy_store();
    let mut variants: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut zeroed = base.clone();
    zeroed[..4096].fill(0);
    variants.push(("zeroed header", zeroed));
    variants.push(("truncated to half", base[..base.len() / 2].to_vec()));
    variants.push(("truncated to 100 bytes", base[..100].to_vec()));
    variants.push(("truncated to 0 bytes", Vec::new()));
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    variants.push(("garbage", (0..base.len()).map(|_| next() as u8).collect()));
    // The allocator state and the region header: redb reads them at every open.
    let mut region = base.clone();
    for b in &mut region[4096..4096 + 512] {
        *b ^= 0x5a;
    }
    variants.push(("damaged region header", region));
    let mut refused = 0;
    for (name, bytes) in &variants {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kora-telemetry.redb");
        std::fs::write(&file, bytes).unwrap();
        let out = Command::new(BIN)
            .arg("--data-dir")
            .arg(dir.path())
            .args(["serve", "--listen", "127.0.0.1:0", "--probe-interval", "1h"])
            .env("KORA_TELEMETRY_LOG", "off")
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{name}: the service started on a damaged file"
        );
        assert!(
            stderr.contains(file.to_str().unwrap()),
            "{name}: the message does not name the file: {stderr}"
        );
        assert!(
            std::fs::read(&file).unwrap() == *bytes,
            "{name}: the file was changed"
        );
        assert!(!dir.path().join("kora-telemetry.redb.bak").exists());
        refused += 1;
    }
    println!(
        "corruption suite: {refused} of {} damaged files refused, 0 changed",
        variants.len()
    );
}
