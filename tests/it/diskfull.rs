//! Disk full: the data directory on a small tmpfs, filled at 30 different points while a
//! client ingests. Nothing unacknowledged is claimed, nothing acknowledged is lost, health says
//! degraded, and writes work again, without a restart, once space is free. The client sends
//! runs and samples; at the end the time windows are exactly those a fresh fold of the stored
//! samples gives (a refused commit loses no window and writes none twice).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::common::{Server, agent};

const FILL_POINTS: u64 = 30;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = std::env::temp_dir().join(format!("kora-diskfull-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Fills the file system, then frees `leave` bytes of the filler.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let small = vec![0xa5u8; 512];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(leave)).unwrap();
    path
}

fn runs(tag: &str, n: usize) -> Value {
    let runs: Vec<Value> = (0..n)
        .map(|i| {
            json!({"id": format!("{tag}-{i}"), "run_id": format!("{tag}-{i}"), "session_id": "df",
                   "model_id": "m", "substrate": "local",
                   "prompt_hash": kora_model::prompt_hash("p"), "context_tokens": 10,
                   "model_latency_ms": 1.0, "total_latency_ms": 2.0, "deterministic_stage_ms": 1.0,
                   "model_stage_ms": 1.0, "validation_retry_count": 0, "budget_breach_count": 0})
        })
        .collect();
    json!({ "runs": runs })
}

#[test]
fn disk_full_never_loses_an_acknowledged_record_and_recovers_without_a_restart() {
    let fs = match Tmpfs::mount("6m") {
        Ok(fs) => fs,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED disk-full test: cannot mount a tmpfs ({e}); it needs root");
            return;
        }
        Err(e) => panic!("the disk-full test needs a tmpfs mount (run as root): {e}"),
    };
    let data = fs.0.join("data");
    let server = Server::start(&data);
    let http = agent();
    let mut acked: Vec<String> = Vec::new();
    let mut acked_samples: Vec<String> = Vec::new();
    let base_ts = (kora_pipeline::clock::wall_ms() - 2 * 86_400_000).div_euclid(60_000) * 60_000;
    let mut sample_batches = 0i64;
    let (mut refusals, mut worst_recovery) = (0, Duration::ZERO);
    for point in 0..FILL_POINTS {
        let filler = fill(&fs.0, 8 * 1024 * (point + 1));
        // Ingest until the disk refuses.
        let mut refused = false;
        for b in 0..200 {
            let tag = format!("p{point}-b{b}");
            let (path, body, ids) = if b % 2 == 1 {
                // A retry after a refusal resends the same samples (same times): the timeline
                // moves on only once a batch is stored.
                let tag = format!("s-{tag}");
                let body =
                    super::common::samples_batch(&tag, base_ts + sample_batches * 15_000, 20);
                (
                    "/v1/samples",
                    body,
                    (0..20).map(|i| format!("{tag}-{i}")).collect::<Vec<_>>(),
                )
            } else {
                (
                    "/v1/runs",
                    runs(&tag, 50),
                    (0..50).map(|i| format!("{tag}-{i}")).collect(),
                )
            };
            let r = http.post(server.url(path)).send_json(body).unwrap();
            match r.status().as_u16() {
                200 if path == "/v1/samples" => {
                    sample_batches += 1;
                    acked_samples.extend(ids)
                }
                200 => acked.extend(ids),
                507 | 503 => {
                    refused = true;
                    break;
                }
                s => panic!("fill point {point}: unexpected status {s}"),
            }
        }
        assert!(refused, "fill point {point}: the disk never filled");
        refusals += 1;
        let health: Value = http
            .get(server.url("/v1/health"))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap_or(Value::Null);
        // Health says degraded until a write succeeds; a smaller write (the engine's, say) may
        // already have fitted, so the failure is also checked where it is kept.
        assert!(
            health["status"] == "degraded"
                || health["last_problem"]
                    .as_str()
                    .is_some_and(|p| p.contains("disk full")),
            "{health}"
        );
        std::fs::remove_file(&filler).unwrap();
        let freed = Instant::now();
        loop {
            let tag = format!("p{point}-after");
            let r = http
                .post(server.url("/v1/runs"))
                .send_json(runs(&tag, 1))
                .unwrap();
            if r.status() == 200 {
                acked.push(format!("{tag}-0"));
                break;
            }
            assert!(
                freed.elapsed() < Duration::from_secs(5),
                "fill point {point}: no recovery within 5 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        worst_recovery = worst_recovery.max(freed.elapsed());
        let health: Value = http
            .get(server.url("/v1/health"))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        assert_eq!(health["status"], "ok", "{health}");
    }
    server.stop();
    let store = kora_store::Store::open(
        &data.join("kora-telemetry.redb"),
        kora_store::StoreOptions::default(),
    )
    .unwrap();
    let stored: std::collections::BTreeSet<String> = store
        .scan_kind(kora_model::RecordKind::Run, 0, usize::MAX)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.record {
            kora_model::Record::Run(r) => r.id,
            _ => None,
        })
        .collect();
    let missing = acked.iter().filter(|id| !stored.contains(*id)).count();
    let samples = super::common::stored_sample_ids(&store);
    let missing_samples = acked_samples
        .iter()
        .filter(|id| !samples.contains_key(*id))
        .count();
    let windows = super::common::assert_windows_are_the_fold_of_the_samples(&store, "disk full");
    println!(
        "disk full: {FILL_POINTS} fill points, {refusals} refusals, {} runs and {} samples acknowledged, {missing} runs and {missing_samples} samples missing, {windows} time windows equal to a fresh fold of the stored samples, worst recovery {} ms after space came back",
        acked.len(),
        acked_samples.len(),
        worst_recovery.as_millis()
    );
    assert_eq!(missing, 0);
    assert_eq!(missing_samples, 0);
    assert!(
        windows > 10,
        "the samples closed too few windows for the check to mean much"
    );
}
