//! Crash test: the service is killed with SIGKILL at random moments while a client ingests;
//! every batch the client saw acknowledged must be there after a restart, exactly once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kora_model::*;
use kora_store::{Store, StoreOptions};
use rand::{Rng, SeedableRng};

use super::common::{Server, agent};

const CYCLES: usize = 100;

fn batch(cycle: usize, n: usize) -> RunBatch {
    RunBatch {
        runs: (0..20)
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

#[test]
fn acknowledged_batches_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let seed: u64 = std::env::var("KORA_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261122);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    // A batch whose answer was lost to the kill; it is retried on the next instance.
    let mut in_flight: Vec<RunBatch> = Vec::new();
    let mut total_acked_batches = 0usize;
    for cycle in 0..CYCLES {
        let server = Server::start(dir.path());
        let url = server.url("/v1/runs");
        let stop = Arc::new(AtomicBool::new(false));
        let client = {
            let (stop, acked, url) = (stop.clone(), acked.clone(), url.clone());
            let mut pending = std::mem::take(&mut in_flight);
            std::thread::spawn(move || {
                let http = agent();
                let mut n = 0;
                let mut acked_batches = 0;
                while !stop.load(Ordering::Relaxed) {
                    let b = pending.pop().unwrap_or_else(|| {
                        n += 1;
                        batch(cycle, n)
                    });
                    match http.post(&url).send_json(&b) {
                        Ok(r) if r.status() == 200 => {
                            let mut a = acked.lock().unwrap();
                            a.extend(b.runs.iter().filter_map(|r| r.id.clone()));
                            acked_batches += 1;
                        }
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        Err(_) => {
                            pending.push(b);
                            break;
                        }
                    }
                }
                (pending, acked_batches)
            })
        };
        std::thread::sleep(Duration::from_millis(rng.random_range(20..300)));
        server.kill();
        stop.store(true, Ordering::Relaxed);
        let (pending, acked_batches) = client.join().unwrap();
        in_flight = pending;
        total_acked_batches += acked_batches;
    }
    // One last instance retries what was in flight, then stops cleanly.
    let server = Server::start(dir.path());
    let http = agent();
    for b in in_flight.drain(..) {
        let r = http.post(server.url("/v1/runs")).send_json(&b).unwrap();
        assert_eq!(r.status(), 200);
        acked
            .lock()
            .unwrap()
            .extend(b.runs.iter().filter_map(|r| r.id.clone()));
    }
    server.stop();

    let store = Store::open(
        &dir.path().join("kora-telemetry.redb"),
        StoreOptions::default(),
    )
    .expect("the store reopens after 100 SIGKILLs");
    let entries = store.scan(0, usize::MAX).unwrap();
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    let mut last_seq = 0;
    for e in &entries {
        assert!(e.seq > last_seq, "seq not strictly increasing at {}", e.seq);
        last_seq = e.seq;
        if let Record::Run(r) = &e.record {
            *count.entry(r.id.clone().unwrap()).or_default() += 1;
        }
    }
    let acked = acked.lock().unwrap();
    let missing = acked.iter().filter(|id| !count.contains_key(*id)).count();
    let duplicated = count.values().filter(|c| **c > 1).count();
    println!(
        "crash test: {CYCLES} SIGKILL cycles (seed {seed}), {total_acked_batches} batches acknowledged before kills, \
         {} run records acknowledged, {} stored (of {} log records), {missing} acknowledged missing, {duplicated} duplicated",
        acked.len(),
        count.values().sum::<usize>(),
        entries.len()
    );
    assert!(
        total_acked_batches > CYCLES,
        "the client barely ran; the test proves nothing"
    );
    assert_eq!(missing, 0, "acknowledged records were lost");
    assert_eq!(duplicated, 0, "a retried record was stored twice");
}
