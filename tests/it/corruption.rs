//! Damaged store files are refused at start with a message naming the file, and left as they
//! are: never recreated, deleted or repaired.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::common::{BIN, Server, agent};

/// How the service that wrote a store stopped.
#[derive(Clone, Copy, PartialEq)]
enum Stop {
    /// SIGTERM: a clean close, which vouches for the bytes (the record is not copied here).
    Clean,
    /// SIGKILL after the writes: no close at all.
    Kill,
}

/// A store with some records, written by the real service.
fn healthy_store(stop: Stop) -> (tempfile::TempDir, Vec<u8>) {
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
    // And enough samples of two series to seal chunks and leave heads.
    let now = kora_pipeline::clock::wall_ms();
    let samples: Vec<serde_json::Value> = (0..3000)
        .map(|i| {
            let signal = if i % 2 == 0 { "ram_free_mb" } else { "cpu_load_pct" };
            serde_json::json!({"signal": signal, "ts_ms": now - 3_000_000 + i * 1000, "value": i % 97})
        })
        .collect();
    let r = http
        .post(server.url("/v1/samples"))
        .send_json(serde_json::json!({ "samples": samples }))
        .unwrap();
    assert_eq!(r.status(), 200);
    match stop {
        Stop::Clean => server.stop(),
        Stop::Kill => server.kill(),
    }
    let bytes = std::fs::read(dir.path().join("kora-telemetry.redb")).unwrap();
    (dir, bytes)
}

/// A generator of pseudo-random numbers (xorshift), the same every run.
fn xorshift() -> impl FnMut() -> u64 {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// 20 copies of `base`, each with 50 bits flipped anywhere, named "bit flips 1" to 20.
fn bit_flips(base: &[u8], next: &mut impl FnMut() -> u64) -> Vec<(&'static str, Vec<u8>)> {
    const FLIP_NAMES: [&str; 20] = [
        "bit flips 1",
        "bit flips 2",
        "bit flips 3",
        "bit flips 4",
        "bit flips 5",
        "bit flips 6",
        "bit flips 7",
        "bit flips 8",
        "bit flips 9",
        "bit flips 10",
        "bit flips 11",
        "bit flips 12",
        "bit flips 13",
        "bit flips 14",
        "bit flips 15",
        "bit flips 16",
        "bit flips 17",
        "bit flips 18",
        "bit flips 19",
        "bit flips 20",
    ];
    FLIP_NAMES
        .into_iter()
        .map(|name| {
            let mut flipped = base.to_vec();
            for _ in 0..50 {
                let at = (next() % flipped.len() as u64) as usize;
                flipped[at] ^= 1 << (next() % 8);
            }
            (name, flipped)
        })
        .collect()
}

#[test]
fn damaged_files_are_refused_at_start_and_left_untouched() {
    let (_healthy, base) = healthy_store(Stop::Clean);
    let mut variants: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut zeroed = base.clone();
    zeroed[..4096].fill(0);
    variants.push(("zeroed header", zeroed));
    variants.push(("truncated to half", base[..base.len() / 2].to_vec()));
    variants.push(("truncated to 100 bytes", base[..100].to_vec()));
    variants.push(("truncated to 0 bytes", Vec::new()));
    let mut next = xorshift();
    variants.push(("garbage", (0..base.len()).map(|_| next() as u8).collect()));
    // redb's file header: both commit slots (at 64 and 192, 128 bytes each) and the page size.
    let mut slots = base.clone();
    for i in (72..104).chain(200..232) {
        slots[i] ^= 0x5a;
    }
    variants.push(("damaged commit slots", slots));
    let mut page_size = base.clone();
    for b in &mut page_size[10..16] {
        *b ^= 0x5a;
    }
    variants.push(("damaged page size", page_size));
    // Random bit flips anywhere in the file: 20 files, 50 flips each. redb checks page
    // checksums on no ordinary read; the store checks them all at start, on a copy-on-write
    // view of the file.
    variants.extend(bit_flips(&base, &mut next));
    assert_refused_untouched(&variants);
}

/// A store killed while it was being written has no clean close to vouch for it, so the start
/// checks every page of it: damage done to it since (bit flips, its commit slots) is refused
/// and the file left as it is.
#[test]
fn a_killed_store_damaged_since_is_refused_at_start_and_left_untouched() {
    let (_killed, base) = healthy_store(Stop::Kill);
    let mut next = xorshift();
    let mut variants = bit_flips(&base, &mut next);
    let mut slots = base.clone();
    for i in (72..104).chain(200..232) {
        slots[i] ^= 0x5a;
    }
    variants.push(("damaged commit slots", slots));
    assert_refused_untouched(&variants);
}

/// Starts the service on each of `variants` (a file's name and bytes) in a data dir of its own
/// and checks that it refuses the file, names it, and leaves it byte for byte as it was.
fn assert_refused_untouched(variants: &[(&str, Vec<u8>)]) {
    let mut refused = 0;
    for (name, bytes) in variants {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kora-telemetry.redb");
        std::fs::write(&file, bytes).unwrap();
        let mut child = Command::new(BIN)
            .arg("--data-dir")
            .arg(dir.path())
            .args(["serve", "--listen", "127.0.0.1:0", "--probe-interval", "1h"])
            .env("KORA_TELEMETRY_LOG", "off")
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A service that starts on a damaged file is a failure, never a hang.
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name}: the service started on a damaged file");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            e.read_to_string(&mut stderr).unwrap();
        }
        assert!(
            !status.success(),
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
