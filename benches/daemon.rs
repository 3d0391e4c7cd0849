//! The daemon's own cost, measured on the real `kora-telemetry serve` process:
//!
//! - **RSS with 10M samples stored** (`KORA_BENCH_DAEMON_SAMPLES`, default 10,000,000: ten
//!   probe signals at 1 s for 11.6 days ending now, plus 9,000 runs): the store is written
//!   first (straight through `kora_store`, batches of 10,000), then the daemon is started on
//!   it, the dashboards' queries are asked (a 24 h series, the product metrics, the windows,
//!   the log), and `VmRSS` / `VmHWM` are read from `/proc/PID/status`.
//! - **Idle CPU with the default 5 s probe**: `utime + stime` from `/proc/PID/stat` over
//!   `KORA_BENCH_IDLE_S` seconds (default 60) with no client, as a share of one core.
//! - **Reopen after SIGKILL**: while 4 clients post batches of 100 samples, the daemon is
//!   killed with SIGKILL; the time from spawning it again to its "listening" line (store open,
//!   format check, the whole log folded into the engine, port bound) is the reopen time. 5
//!   kills, median and worst. The store's own open of the killed file is timed too.
//!
//! The goals are absolute (issue 8), so there is no SQLite column here. A plain program:
//! `cargo bench --bench daemon`.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use kora_model::{Sample, SampleBatch, Signal};
use kora_store::{Batch, Store, StoreOptions};

/// The store file `serve` opens in its data directory.
const DB_FILE: &str = "kora-telemetry.redb";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn status_kib(pid: u32, field: &str) -> u64 {
    proc_status_kib(pid, field).unwrap()
}

fn cpu_ticks(pid: u32) -> u64 {
    proc_cpu_ticks(pid).unwrap()
}

fn get(agent: &ureq::Agent, url: &str) {
    let r = agent.get(url).call().unwrap();
    assert_eq!(r.status(), 200, "{url}");
}

fn fill(dir: &Path, n: usize) -> Duration {
    let store = Store::open(&dir.join(DB_FILE), StoreOptions::default()).unwrap();
    let ticks = n.div_ceil(10) as i64;
    // Shift the simulated days so they end a minute ago: the daemon's 24 h views see data.
    let shift = kora_pipeline::clock::wall_ms() - 60_000 - (DAY0_MS + ticks * 1000);
    let (took, ()) = time(|| {
        let mut p = Probe::with_jitter(42, 1);
        let mut t = 0;
        let mut left = n;
        while left > 0 {
            let mut batch = Vec::with_capacity(10_000);
            while batch.len() < 10_000.min(left) {
                for mut s in p.tick(t) {
                    s.ts_ms = s.ts_ms.map(|ts| ts + shift);
                    batch.push(s);
                }
                t += 1;
            }
            batch.truncate(10_000.min(left));
            left -= batch.len();
            store.append(DAY0_MS, Batch::Samples(batch)).unwrap();
        }
        kora_append_runs(&store, &runs(9_000));
    });
    assert_eq!(store.stats().unwrap().samples, n as u64);
    took
}

fn main() {
    let n = env_or("KORA_BENCH_DAEMON_SAMPLES", 10_000_000) as usize;
    let idle_s = env_or("KORA_BENCH_IDLE_S", 60);
    let dir = tempdir();
    let took = fill(dir.path(), n);
    println!(
        "store: {} samples and 9,000 runs written in {:.1} s; data dir {} bytes allocated ({:.2} B/sample)",
        rate(n as f64),
        took.as_secs_f64(),
        rate(allocated_bytes(dir.path()) as f64),
        allocated_bytes(dir.path()) as f64 / n as f64,
    );

    // RSS after start and the dashboards' queries.
    let (mut child, base, first_open) = spawn_serve(dir.path());
    let pid = child.id();
    println!(
        "first start on the filled store: listening after {:.1} ms",
        first_open.as_secs_f64() * 1e3
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    // The daemon must be serving the filled store, not a new one beside it.
    let stored = stored_samples(&base);
    assert!(
        stored >= n as u64,
        "the daemon does not see the filled store: {stored} samples"
    );
    let now = kora_pipeline::clock::wall_ms();
    for path in [
        "/v1/health".to_owned(),
        format!(
            "/v1/series?series={}&from_ms={}&to_ms={now}&points=500",
            Signal::CpuLoadPct.as_str(),
            now - 86_400_000
        ),
        format!(
            "/v1/series?series={}&from_ms={}&to_ms={now}&points=2000",
            Signal::RamFreeMb.as_str(),
            now - 7 * 86_400_000
        ),
        "/v1/metrics/product?range=7d".to_owned(),
        "/v1/windows".to_owned(),
        "/v1/log?limit=1000".to_owned(),
        "/v1/profile".to_owned(),
        "/metrics".to_owned(),
    ] {
        get(&agent, &format!("{base}{path}"));
    }
    std::thread::sleep(Duration::from_secs(2));
    let rss = status_kib(pid, "VmRSS:") as f64 / 1024.0;
    let hwm = status_kib(pid, "VmHWM:") as f64 / 1024.0;
    println!(
        "RESULT daemon RSS, {} samples stored           {rss:>8.1} MiB (peak {hwm:.1} MiB; goal <= 64 MiB)",
        rate(n as f64)
    );

    // Idle CPU: no client, the default 5 s probe.
    let hz = clock_ticks_per_s();
    let before = cpu_ticks(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_s));
    let used = (cpu_ticks(pid) - before) as f64 / hz;
    let share = used / t0.elapsed().as_secs_f64() * 100.0;
    println!(
        "RESULT daemon idle CPU, default 5 s probe            {share:>8.3} % of one core ({used:.2} s of CPU in {idle_s} s; goal <= 0.5 %)"
    );
    let _ = child.kill();
    let _ = child.wait();

    // Reopen after SIGKILL under write load.
    let mut reopen = Vec::new();
    let mut store_open = Vec::new();
    let mut clean_open = Vec::new();
    for round in 0..5 {
        let (mut child, base, _) = spawn_serve(dir.path());
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let (stop, acked, url) =
                    (stop.clone(), acked.clone(), format!("{base}/v1/samples"));
                std::thread::spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(2)))
                        .build()
                        .into();
                    let mut i = 0i64;
                    while !stop.load(Ordering::Relaxed) {
                        let ts = kora_pipeline::clock::wall_ms() - 1000;
                        let samples: Vec<Sample> = (0..100)
                            .map(|j| {
                                sample(Signal::ALL[(j % 10) as usize], ts - j, (i % 100) as f64)
                            })
                            .collect();
                        let body = rmp_serde::to_vec_named(&SampleBatch { samples }).unwrap();
                        match agent
                            .post(&url)
                            .header("content-type", "application/msgpack")
                            .send(&body[..])
                        {
                            Ok(r) if r.status() == 200 => {
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {}
                        }
                        i += 1 + c;
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(700 + 150 * round));
        child.kill().unwrap();
        child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        assert!(
            acked.load(Ordering::Relaxed) > 0,
            "no batch was acknowledged before the kill"
        );
        let (took, store) =
            time(|| Store::open(&dir.path().join(DB_FILE), StoreOptions::default()));
        store_open.push(took.as_secs_f64() * 1e3);
        drop(store.unwrap());
        // The same open once more, now that the file was closed cleanly: what the crash
        // recovery itself cost is the difference.
        let (took, store) =
            time(|| Store::open(&dir.path().join(DB_FILE), StoreOptions::default()));
        clean_open.push(took.as_secs_f64() * 1e3);
        drop(store.unwrap());
        let (mut child, _, took) = spawn_serve(dir.path());
        reopen.push(took.as_secs_f64() * 1e3);
        let _ = child.kill();
        let _ = child.wait();
    }
    let worst = reopen.iter().copied().fold(0.0, f64::max);
    println!(
        "RESULT daemon reopen after SIGKILL (spawn to listening) {:>8.1} ms median, {worst:.1} ms worst over 5 kills; the store's open alone {:.1} ms median, {:.1} ms when closed cleanly (goal <= 100 ms)",
        median(reopen.clone()),
        median(store_open.clone()),
        median(clean_open.clone())
    );
}
