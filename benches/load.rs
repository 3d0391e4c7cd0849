//! A bounded, self-stopping load run on loopback at a constant offered rate (issue 7, item 6).
//!
//! The real `kora-telemetry serve` runs on a fresh data dir. The client is open-loop: batch
//! `i` of 100 samples (MessagePack) is due at `start + i / rate`, 64 sender threads take the
//! due batches in turn, and latency is measured from the due time, so a slow answer delays the
//! batches behind it and shows in their latency instead of lowering the offered rate
//! (no coordinated omission). Each thread sends through its own `kora_client::Client`
//! (its own connection) with no retry, so that every 429/503 is counted, and without client
//! ids, as the probe's samples are sent (the figures in benches/README.md were measured so).
//!
//! Steps: rates of 250, 500, 1,000, 2,000, 4,000 ... batches/s, `KORA_LOAD_STEP_S` seconds each
//! (default 10), until a step misses any of: 99 % of the offered rate achieved, 0 errors, p99
//! under 50 ms. The last step that met them all is the sustainable rate; then one step at twice
//! it, where the service must answer the excess quickly with 429/503 (`Retry-After`) and lose
//! nothing: every acknowledged sample is counted in `/v1/health` at the end. The server's RSS
//! is read at the start and the end of every step (memory flat).
//!
//! `cargo bench --bench load`.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use kora_client::{Client, Encoding, RetryPolicy};
use kora_model::{Sample, SampleBatch, Signal};

const SENDERS: usize = 64;
const BATCH: usize = 100;

struct Step {
    rate: f64,
    offered: u64,
    ok: u64,
    refused: u64,
    errors: u64,
    elapsed_s: f64,
    ok_latency_ms: Vec<f64>,
    refused_latency_ms: Vec<f64>,
    rss_before_mib: f64,
    rss_after_mib: f64,
}

impl Step {
    fn achieved(&self) -> f64 {
        self.ok as f64 / self.elapsed_s
    }
    fn p(&self, v: &[f64], q: f64) -> f64 {
        let mut v = v.to_vec();
        if v.is_empty() {
            return 0.0;
        }
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
    }
    fn p99(&self) -> f64 {
        self.p(&self.ok_latency_ms, 0.99)
    }
    fn met(&self) -> bool {
        self.errors == 0
            && self.refused == 0
            && self.achieved() >= 0.99 * self.rate
            && self.p99() < 50.0
    }
    fn print(&self) {
        println!(
            "  offered {:>6.0} batches/s ({:>7.0} samples/s): achieved {:>6.0}/s, ok {}, 429/503 {}, errors {}, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; refusals p99 {:.1} ms; RSS {:.1} -> {:.1} MiB",
            self.rate,
            self.rate * BATCH as f64,
            self.achieved(),
            self.ok,
            self.refused,
            self.errors,
            self.p(&self.ok_latency_ms, 0.5),
            self.p99(),
            self.p(&self.ok_latency_ms, 1.0),
            self.p(&self.refused_latency_ms, 0.99),
            self.rss_before_mib,
            self.rss_after_mib,
        );
    }
}

fn rss_mib(pid: u32) -> f64 {
    proc_rss_mib(pid).unwrap_or(0.0)
}

fn batch(i: u64) -> SampleBatch {
    let ts = kora_pipeline::clock::wall_ms() - 1000;
    let samples: Vec<Sample> = (0..BATCH as u64)
        .map(|j| {
            sample(
                Signal::ALL[(j % 10) as usize],
                ts - (j as i64 / 10),
                ((i + j) % 100) as f64,
            )
        })
        .collect();
    SampleBatch { samples }
}

fn step(base: &str, pid: u32, rate: f64, seconds: f64) -> Step {
    let total = (rate * seconds) as u64;
    let next = AtomicU64::new(0);
    let (ok, refused, errors) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let ok_lat = Mutex::new(Vec::with_capacity(total as usize));
    let ref_lat = Mutex::new(Vec::new());
    let rss_before_mib = rss_mib(pid);
    let start = Instant::now() + Duration::from_millis(50);
    std::thread::scope(|s| {
        for _ in 0..SENDERS {
            s.spawn(|| {
                let client = Client::builder(base)
                    .timeout(Duration::from_secs(10))
                    .retry(RetryPolicy::none())
                    .encoding(Encoding::MessagePack)
                    .assign_ids(false)
                    .build();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    let batch = batch(i);
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let r = client.samples(&batch);
                    let ms = due.elapsed().as_secs_f64() * 1e3;
                    match r.as_ref().map_err(|e| e.status()) {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            ok_lat.lock().unwrap().push(ms);
                        }
                        Err(Some(429 | 503)) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            ref_lat.lock().unwrap().push(ms);
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    Step {
        rate,
        offered: total,
        ok: ok.into_inner(),
        refused: refused.into_inner(),
        errors: errors.into_inner(),
        elapsed_s: start.elapsed().as_secs_f64().max(seconds),
        ok_latency_ms: ok_lat.into_inner().unwrap(),
        refused_latency_ms: ref_lat.into_inner().unwrap(),
        rss_before_mib,
        rss_after_mib: rss_mib(pid),
    }
}

fn main() {
    let seconds: f64 = std::env::var("KORA_LOAD_STEP_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10.0);
    let dir = tempdir();
    let (mut child, base, _) = spawn_serve(dir.path());
    let pid = child.id();
    println!(
        "load run: {SENDERS} open-loop senders, batches of {BATCH} samples (MessagePack), {seconds} s a step"
    );
    let mut acked = 0u64;
    let mut best: Option<Step> = None;
    let mut rate = 250.0;
    loop {
        let s = step(&base, pid, rate, seconds);
        s.print();
        acked += s.ok;
        if !s.met() {
            break;
        }
        best = Some(s);
        rate *= 2.0;
        if rate > 64_000.0 {
            break;
        }
    }
    let Some(best) = best else {
        let _ = child.kill();
        let _ = child.wait();
        println!("RESULT load: not even 250 batches/s met the bar");
        return;
    };
    // Twice the sustainable rate: the excess must be refused fast, and nothing lost.
    let over = step(&base, pid, best.rate * 2.0, seconds);
    println!(" at twice the sustainable rate:");
    over.print();
    acked += over.ok;
    // Every acknowledged sample is stored (the probe adds its own on top).
    let stored = stored_samples(&base);
    let _ = child.kill();
    let _ = child.wait();
    let lost = (acked * BATCH as u64).saturating_sub(stored);
    println!(
        "RESULT load sustainable rate (99% achieved, 0 errors, p99 < 50 ms) {:>8.0} samples/s ({:.0} batches/s of 100), p99 {:.1} ms, RSS {:.1} -> {:.1} MiB",
        best.achieved() * BATCH as f64,
        best.rate,
        best.p99(),
        best.rss_before_mib,
        best.rss_after_mib
    );
    println!(
        "RESULT load at 2x ({:.0} batches/s offered)                 {} acknowledged, {} refused with 429/503 (p99 {:.1} ms), {} errors; acknowledged samples {} <= stored {}: lost {lost}",
        over.rate,
        over.ok,
        over.refused,
        over.p(&over.refused_latency_ms, 0.99),
        over.errors,
        acked * BATCH as u64,
        stored,
    );
    assert_eq!(lost, 0, "acknowledged samples are missing");
    assert!(over.offered > 0);
}
