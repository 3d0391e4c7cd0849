//! Crash test: the service is killed while a client ingests; every batch the client saw
//! acknowledged must be there after a restart, exactly once.
//!
//! Two kinds of kill, over [`CYCLES`] instances of the real binary on one data directory:
//! - SIGKILL at a random moment (two cycles in three);
//! - a targeted abort between commit and response (every third cycle): the instance runs with
//!   `KORA_TEST_ABORT_AFTER_COMMIT=N` and aborts itself right after the store acknowledged its
//!   Nth ingest batch as durable, before answering it. That batch is stored but was never
//!   acknowledged; the client retries it (same ids) on the next instance, which must count it
//!   as duplicates, not store it twice.
//!
//! The client alternates batches of runs and batches of samples (on a timeline that closes a
//! time window every few batches). Every batch whose answer was lost is retried on the next instance; a retry is all new or all
//! duplicates, never a mix (batches are all-or-nothing). After every cycle a copy of the file is
//! checked (the instance's own recovery must not be done for it by the test): redb's integrity
//! check, seqs strictly increasing, the store's counters equal to what the log holds, every
//! acknowledged record present exactly once and no record stored twice, and the time windows
//! exactly those a fresh fold of the stored samples gives: every closed minute that holds
//! samples has one window record per series, none lost to a kill between the samples' commit
//! and the windows', none written twice.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kora_model::*;
use kora_store::{Store, StoreOptions};
use rand::{Rng, SeedableRng};

use super::common::{Server, agent};

const CYCLES: usize = 100;
/// Every this many cycles, the instance aborts itself between commit and response.
const TARGETED_EVERY: usize = 3;
/// Records a batch (runs or samples).
const BATCH: u64 = 20;
const DB_FILE: &str = "kora-telemetry.redb";
const SIGABRT: i32 = 6;

/// The `n`-th batch of `cycle`: runs when `n` is odd, else samples stamped on a timeline from
/// `base_ts` (15 s a batch, so a minute closes every four sample batches).
fn batch(cycle: usize, n: usize, base_ts: i64) -> InFlight {
    if n % 2 == 0 {
        let tag = format!("s-c{cycle}-b{n}");
        let first_ts = base_ts + (cycle * 200 + n) as i64 * 15_000;
        return InFlight {
            path: "/v1/samples",
            ids: (0..BATCH).map(|i| format!("{tag}-{i}")).collect(),
            body: super::common::samples_batch(&tag, first_ts, BATCH as usize),
            surely_stored: false,
        };
    }
    let runs = run_batch(cycle, n);
    InFlight {
        path: "/v1/runs",
        ids: runs.runs.iter().filter_map(|r| r.id.clone()).collect(),
        body: serde_json::to_value(&runs).unwrap(),
        surely_stored: false,
    }
}

fn run_batch(cycle: usize, n: usize) -> RunBatch {
    RunBatch {
        runs: (0..BATCH)
            .map(|i| Run {
                id: Some(format!("c{cycle}-b{n}-{i}")),
                ts_ms: None,
                run_id: format!("c{cycle}-b{n}-{i}"),
                session_id: "crash".into(),
                model_id: "m".into(),
                substrate: Substrate::Local,
                prompt_hash: prompt_hash("p"),
                context_tokens: 10,
                tokens_in: None,
                tokens_out: None,
                total_tokens: None,
                model_latency_ms: 1.0,
                total_latency_ms: 2.0,
                deterministic_stage_ms: 1.0,
                model_stage_ms: 1.0,
                validation_retry_count: 0,
                budget_breach_count: 0,
                queue_wait_ms: None,
                prompt_tokens_sent: None,
                stages: None,
            })
            .collect(),
    }
}

/// A batch whose answer was lost to a kill; it is retried on the next instance.
struct InFlight {
    path: &'static str,
    body: serde_json::Value,
    /// The client ids of the batch's records (runs, or samples: those start with `s-`).
    ids: Vec<String>,
    /// The instance aborted after committing it: the retry must be all duplicates.
    surely_stored: bool,
}

/// What one client saw during one cycle.
#[derive(Default)]
struct Seen {
    acked_batches: usize,
    /// Retries of a batch known to be stored (targeted kill), answered as all duplicates.
    retries_duplicate_known: usize,
    /// Retries after a random kill, answered as all duplicates (it had been committed).
    retries_duplicate_found: usize,
    /// Retries after a random kill, stored now (it had not been committed).
    retries_stored_now: usize,
}

/// Retries `pending`, then posts new batches until `stop`, or until the instance dies: the batch
/// in flight then is returned for the next instance. Asserts what every acknowledgement says.
fn client(
    base: &str,
    base_ts: i64,
    cycle: usize,
    mut pending: Vec<InFlight>,
    stop: &AtomicBool,
    acked: &Mutex<Vec<String>>,
) -> (Vec<InFlight>, Seen) {
    let http = agent();
    let mut seen = Seen::default();
    let mut n = 0;
    while !pending.is_empty() || !stop.load(Ordering::Relaxed) {
        let (f, retry) = match pending.pop() {
            Some(f) => (f, true),
            None => {
                n += 1;
                (batch(cycle, n, base_ts), false)
            }
        };
        match http.post(format!("{base}{}", f.path)).send_json(&f.body) {
            Ok(mut r) if r.status() == 200 => {
                let ack: IngestAck = r.body_mut().read_json().unwrap();
                let got = (ack.accepted, ack.duplicates);
                if f.surely_stored {
                    assert_eq!(got, (0, BATCH), "a batch stored before the abort");
                    seen.retries_duplicate_known += 1;
                } else if retry && got == (0, BATCH) {
                    seen.retries_duplicate_found += 1;
                } else {
                    assert_eq!(got, (BATCH, 0), "a batch is all new or all duplicates");
                    seen.retries_stored_now += usize::from(retry);
                }
                let mut a = acked.lock().unwrap();
                a.extend(f.ids.iter().cloned());
                seen.acked_batches += 1;
            }
            Ok(r) => panic!("unexpected status {}", r.status()),
            Err(_) => {
                pending.push(f);
                break;
            }
        }
    }
    (pending, seen)
}

/// Copies the store after a kill, so that it can be checked while the next instance recovers the
/// file itself.
fn snapshot(data_dir: &Path, scratch: &Path, cycle: usize) -> PathBuf {
    let copy = scratch.join(format!("cycle-{cycle}.redb"));
    std::fs::copy(data_dir.join(DB_FILE), &copy).unwrap();
    copy
}

/// Checks a copy of the store: redb's integrity check, then the log against the
/// acknowledgements. Returns the number of log records.
fn check_store(copy: &Path, acked: &[String], cycle: usize) -> usize {
    {
        // Opening recovers the copy after the kill; the check then reads every page.
        let mut db = redb::Database::open(copy)
            .unwrap_or_else(|e| panic!("cycle {cycle}: redb cannot open the store: {e}"));
        let clean = db
            .check_integrity()
            .unwrap_or_else(|e| panic!("cycle {cycle}: redb integrity check failed: {e}"));
        assert!(clean, "cycle {cycle}: redb integrity check needed repairs");
    }
    let store = Store::open(copy, StoreOptions::default())
        .unwrap_or_else(|e| panic!("cycle {cycle}: the store does not reopen: {e}"));
    let entries = store.scan(0, usize::MAX).unwrap();
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    let mut last_seq = 0;
    for e in &entries {
        assert!(
            e.seq > last_seq,
            "cycle {cycle}: seq not strictly increasing at {}",
            e.seq
        );
        last_seq = e.seq;
        if let Record::Run(r) = &e.record {
            let id = r.id.as_deref().expect("every run of this test has an id");
            *count.entry(id).or_default() += 1;
        }
    }
    let stats = store.stats().unwrap();
    assert_eq!(
        stats.log_records,
        entries.len() as u64,
        "cycle {cycle}: the record counter disagrees with the log"
    );
    // Samples share the seq counter (they live in the series store), so the last seq assigned
    // may be newer than the last log record, never older.
    assert!(
        stats.last_seq >= entries.last().map(|e| e.seq),
        "cycle {cycle}: the next seq {:?} would reuse one of the log's",
        stats.last_seq
    );
    let samples = super::common::stored_sample_ids(&store);
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| {
            if id.starts_with("s-") {
                !samples.contains_key(id.as_str())
            } else {
                !count.contains_key(id.as_str())
            }
        })
        .collect();
    assert!(
        missing.is_empty(),
        "cycle {cycle}: {} acknowledged records missing, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    let twice: Vec<_> = count
        .iter()
        .map(|(id, c)| (*id, *c))
        .chain(samples.iter().map(|(id, c)| (id.as_str(), *c)))
        .filter(|(_, c)| *c > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "cycle {cycle}: {} records stored more than once, e.g. {:?}",
        twice.len(),
        twice.first()
    );
    super::common::assert_windows_are_the_fold_of_the_samples(&store, &format!("cycle {cycle}"));
    store.shutdown();
    drop(store);
    std::fs::remove_file(copy).unwrap();
    entries.len()
}

#[test]
fn acknowledged_batches_survive_sigkill() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let seed: u64 = std::env::var("KORA_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261122);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    // Sample times: five days back, a minute-aligned start.
    let base_ts = (kora_pipeline::clock::wall_ms() - 5 * 86_400_000).div_euclid(60_000) * 60_000;
    let mut in_flight: Vec<InFlight> = Vec::new();
    let mut total = Seen::default();
    let (mut random_kills, mut targeted_kills, mut checks) = (0, 0, 0);
    // The check of one cycle's copy runs while the next cycle does.
    let mut checking: Option<std::thread::JoinHandle<usize>> = None;
    for cycle in 0..CYCLES {
        let targeted = cycle % TARGETED_EVERY == TARGETED_EVERY - 1;
        let abort_after = rng.random_range(1..=8usize);
        let knob = abort_after.to_string();
        let server = if targeted {
            Server::start_with_env(dir.path(), &[("KORA_TEST_ABORT_AFTER_COMMIT", &knob)])
        } else {
            Server::start(dir.path())
        };
        let url = server.url("");
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (stop, acked) = (stop.clone(), acked.clone());
            let pending = std::mem::take(&mut in_flight);
            std::thread::spawn(move || client(&url, base_ts, cycle, pending, &stop, &acked))
        };
        let (mut pending, seen) = if targeted {
            // The instance aborts itself; the client's request in flight then fails.
            let status = server.wait_exit(Duration::from_secs(60));
            assert_eq!(
                status.signal(),
                Some(SIGABRT),
                "cycle {cycle}: the instance was to abort after commit {abort_after}: {status}"
            );
            let (pending, seen) = handle.join().unwrap();
            assert_eq!(
                seen.acked_batches,
                abort_after - 1,
                "cycle {cycle}: the client saw every batch before the aborted one acknowledged"
            );
            targeted_kills += 1;
            (pending, seen)
        } else {
            std::thread::sleep(Duration::from_millis(rng.random_range(20..300)));
            server.kill();
            stop.store(true, Ordering::Relaxed);
            random_kills += 1;
            handle.join().unwrap()
        };
        if targeted {
            assert_eq!(pending.len(), 1, "cycle {cycle}: one batch was in flight");
            pending[0].surely_stored = true;
        }
        in_flight = pending;
        total.acked_batches += seen.acked_batches;
        total.retries_duplicate_known += seen.retries_duplicate_known;
        total.retries_duplicate_found += seen.retries_duplicate_found;
        total.retries_stored_now += seen.retries_stored_now;
        let copy = snapshot(dir.path(), scratch.path(), cycle);
        let acked_now = acked.lock().unwrap().clone();
        if let Some(previous) = checking.take() {
            previous.join().unwrap();
            checks += 1;
        }
        checking = Some(std::thread::spawn(move || {
            check_store(&copy, &acked_now, cycle)
        }));
    }
    if let Some(last) = checking.take() {
        last.join().unwrap();
        checks += 1;
    }
    // One last instance retries what was in flight, then stops cleanly.
    let server = Server::start(dir.path());
    let (left, seen) = client(
        &server.url(""),
        base_ts,
        CYCLES,
        std::mem::take(&mut in_flight),
        &AtomicBool::new(true),
        &acked,
    );
    assert!(left.is_empty());
    server.stop();
    total.retries_duplicate_known += seen.retries_duplicate_known;
    total.retries_duplicate_found += seen.retries_duplicate_found;
    total.retries_stored_now += seen.retries_stored_now;
    let acked = acked.lock().unwrap();
    let log_records = check_store(
        &snapshot(dir.path(), scratch.path(), CYCLES),
        &acked,
        CYCLES,
    );

    println!(
        "crash test (seed {seed}): {CYCLES} cycles, {random_kills} SIGKILLs at random moments, \
         {targeted_kills} targeted aborts between commit and response; {} batches acknowledged \
         before the kills; retries: {} known stored and answered as duplicates, {} found stored, \
         {} stored on retry; {} run records acknowledged, 0 acknowledged missing, 0 duplicates \
         ({log_records} log records); store checks passed after all {} cycles; {:.1} s",
        total.acked_batches,
        total.retries_duplicate_known,
        total.retries_duplicate_found,
        total.retries_stored_now,
        acked.len(),
        checks + 1,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(checks, CYCLES);
    assert!(
        total.acked_batches > CYCLES,
        "the client barely ran; the test proves nothing"
    );
    assert!(
        total.retries_duplicate_known > 0,
        "no batch stored before an abort was retried"
    );
}
