//! Running the real `kora-telemetry` binary as a child process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_kora-telemetry");

/// A running `kora-telemetry serve` on 127.0.0.1 with an ephemeral port.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    pub fn start(data_dir: &Path) -> Server {
        let mut command = Command::new(BIN);
        command.env("KORA_TELEMETRY_LOG", "warn");
        Server::spawn(command, data_dir)
    }

    /// Like [`Server::start`], with extra environment variables (the test knobs). The service
    /// runs with core dumps off (`ulimit -c 0`), so that one aborted by a test fault point
    /// leaves no core file behind.
    pub fn start_with_env(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        let mut command = Command::new("sh");
        command
            .args(["-c", "ulimit -c 0; exec \"$0\" \"$@\"", BIN])
            .env("KORA_TELEMETRY_LOG", "warn")
            .envs(env.iter().copied());
        Server::spawn(command, data_dir)
    }

    fn spawn(mut command: Command, data_dir: &Path) -> Server {
        let mut child = command
            .arg("--data-dir")
            .arg(data_dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn kora-telemetry serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        Server {
            child,
            base: format!("http://{addr}"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        for _ in 0..200 {
            if let Some(s) = self.child.try_wait().expect("wait") {
                assert!(s.success(), "serve exited with {s} after SIGTERM");
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("serve did not stop within 5 s of SIGTERM");
    }

    /// Waits for the service to exit by itself (a test fault point), at most `timeout`.
    pub fn wait_exit(mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("serve did not exit by itself within {timeout:?}");
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(self) {
        // Dropping kills the child with SIGKILL and reaps it.
    }
}

impl Drop for Server {
    /// A test that fails before `stop` still leaves no service behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// A batch of `n` samples with client ids `{tag}-{i}`, one every 700 ms from `first_ts`, on two
/// series (a per-model queue wait and a host signal): enough for the time windows of the
/// crash and disk-full tests to open and close.
pub fn samples_batch(tag: &str, first_ts: i64, n: usize) -> serde_json::Value {
    let samples: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let ts = first_ts + i as i64 * 700;
            if i % 2 == 0 {
                serde_json::json!({"id": format!("{tag}-{i}"), "ts_ms": ts, "signal": "queue_wait_ms",
                                   "model_id": "crash", "value": (i * 37 % 500) as f64})
            } else {
                serde_json::json!({"id": format!("{tag}-{i}"), "ts_ms": ts, "signal": "active_generations",
                                   "value": (i % 4) as f64})
            }
        })
        .collect();
    serde_json::json!({ "samples": samples })
}

/// The client ids of every stored sample.
pub fn stored_sample_ids(store: &kora_store::Store) -> std::collections::BTreeMap<String, usize> {
    let mut ids = std::collections::BTreeMap::new();
    for key in store.series().unwrap() {
        for s in store.samples(&key, i64::MIN, i64::MAX, usize::MAX).unwrap() {
            if let Some(id) = s.sample.id {
                *ids.entry(id).or_insert(0) += 1;
            }
        }
    }
    ids
}

/// Asserts that the log's time windows are exactly those a fresh fold of the stored samples (in
/// seq order, through the embedded thresholds' windows, the series of the signals the engine
/// reads windowed and every sample moving the watermark) gives: no window lost, none twice,
/// none different, so every closed minute that holds samples of a windowed signal has exactly
/// one window record per series. Returns how many windows there are.
pub fn assert_windows_are_the_fold_of_the_samples(store: &kora_store::Store, what: &str) -> usize {
    use kora_model::{Record, WindowRecord};
    let thresholds = kora_policy::Thresholds::embedded();
    let mut samples = Vec::new();
    for key in store.series().unwrap() {
        samples.extend(store.samples(&key, i64::MIN, i64::MAX, usize::MAX).unwrap());
    }
    samples.sort_by_key(|s| s.seq);
    let mut fold = kora_window::TimeWindows::new(thresholds.window_ms(), thresholds.grace_ms());
    let mut want: Vec<WindowRecord> = Vec::new();
    for s in &samples {
        if let (Some(v), Some(ts)) = (s.sample.value, s.sample.ts_ms) {
            if kora_policy::WINDOWED_SIGNALS.contains(&s.sample.signal) {
                want.extend(fold.push(&s.sample.series_key(), s.seq, ts, v).closed);
            } else {
                want.extend(fold.advance(ts));
            }
        }
    }
    let got: Vec<WindowRecord> = store
        .scan_kind(kora_model::RecordKind::Window, 0, usize::MAX)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.record {
            Record::Window(w) if w.window_kind == kora_window::WINDOW_KIND_TIME => Some(w),
            _ => None,
        })
        .collect();
    let mut per_minute = std::collections::BTreeMap::new();
    for w in &got {
        *per_minute
            .entry((w.metric.clone(), w.start_ms))
            .or_insert(0) += 1;
    }
    let twice: Vec<_> = per_minute.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{what}: {} windows recorded more than once, e.g. {:?}",
        twice.len(),
        twice.first()
    );
    let missing: Vec<_> = want
        .iter()
        .filter(|w| !per_minute.contains_key(&(w.metric.clone(), w.start_ms)))
        .collect();
    assert!(
        missing.is_empty(),
        "{what}: {} closed windows of stored samples have no window record, e.g. {:?}",
        missing.len(),
        missing.first().map(|w| (&w.metric, w.start_ms))
    );
    assert_eq!(
        got, want,
        "{what}: the window records differ from a fresh fold of the stored samples"
    );
    got.len()
}
