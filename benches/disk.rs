//! Disk used per sample after a simulated day (and, with `KORA_BENCH_WEEK=1`, a week) of probe
//! data: 10 signals at 1 s, 864,000 samples a day, ingested as the probe would send them, in
//! durable batches of `KORA_BENCH_DISK_BATCH` samples (default 10: one tick of ten signals,
//! one commit a second), and again in batches of 600 (a minute per commit; the week uses
//! only these). The whole data directory's allocated blocks are counted (like `du`)
//! after the store is closed, for kora-telemetry's store, SQLite and, when `promtool` is
//! installed, Prometheus's TSDB built from the same data with
//! `promtool tsdb create-blocks-from openmetrics`.
//!
//! **Through the service** (issue 14): the same samples, in the same batches, sent to the real
//! `kora-telemetry serve` binary over loopback (`POST /v1/samples`, MessagePack, one keep-alive
//! client, each batch answered once durable), moved by a whole number of days so that they fill
//! the last whole UTC days before now, as a running service receives them. The service stores
//! them and derives what it derives from them (the one-minute time windows, closed in the
//! samples' transactions; what the follower writes); `serve` is stopped cleanly (SIGTERM) and its
//! whole data directory counted. `serve`'s own probe cannot be switched off: its interval is set
//! so that its one snapshot, taken at start, is stamped one second before the data and the next
//! is decades away; what it stores is reported (a handful of samples, perhaps a profile record).
//!
//! A plain timed program (criterion measures time, not bytes). `cargo bench --bench disk`.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::Path;

use common::*;
use kora_model::{Sample, Signal};

fn batch_size() -> usize {
    std::env::var("KORA_BENCH_DISK_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .max(1)
}

struct Measured {
    allocated: u64,
    apparent: u64,
    secs: f64,
}

fn kora(data: &[Sample], batch: usize) -> Measured {
    let dir = tempdir();
    let store = kora_open(dir.path());
    let (elapsed, ()) = time(|| {
        for b in data.chunks(batch) {
            kora_append_samples(&store, b.to_vec());
        }
    });
    assert_eq!(store.stats().unwrap().samples, data.len() as u64);
    drop(store);
    Measured {
        allocated: allocated_bytes(dir.path()),
        apparent: apparent_bytes(dir.path()),
        secs: elapsed.as_secs_f64(),
    }
}

fn sqlite(data: &[Sample], batch: usize) -> Measured {
    let dir = tempdir();
    let mut c = sqlite_open(dir.path());
    let (elapsed, ()) = time(|| {
        for b in data.chunks(batch) {
            sqlite_append_samples(&mut c, b);
        }
    });
    // Closing the last connection checkpoints the WAL into the database and removes it.
    drop(c);
    Measured {
        allocated: allocated_bytes(dir.path()),
        apparent: apparent_bytes(dir.path()),
        secs: elapsed.as_secs_f64(),
    }
}

/// Prometheus's TSDB blocks built by promtool from the same samples; `None` without promtool.
fn prometheus(data: &[Sample]) -> Option<Measured> {
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let dir = tempdir();
    let input = dir.path().join("day.om");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        // OpenMetrics wants each family's samples together, in time order.
        for signal in Signal::ALL {
            writeln!(f, "# TYPE {} gauge", signal.as_str()).unwrap();
            for s in data.iter().filter(|s| s.signal == signal) {
                let ts = s.ts_ms.unwrap();
                writeln!(
                    f,
                    "{} {} {}.{:03}",
                    signal.as_str(),
                    s.value.unwrap(),
                    ts / 1000,
                    ts % 1000
                )
                .unwrap();
            }
        }
        writeln!(f, "# EOF").unwrap();
    }
    let out = dir.path().join("tsdb");
    let (elapsed, status) = time(|| {
        std::process::Command::new(promtool)
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&input)
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
    });
    assert!(status.success(), "promtool failed");
    Some(Measured {
        allocated: allocated_bytes(&out),
        apparent: apparent_bytes(&out),
        secs: elapsed.as_secs_f64(),
    })
}

const SERVE_DB: &str = "kora-telemetry.redb";

/// `data` sent to the real `kora-telemetry serve` over loopback in MessagePack batches of
/// `batch`, then `serve` stopped cleanly and its whole data directory counted.
fn through_serve(data: &[Sample], batch: usize) -> Measured {
    let dir = tempdir();
    let days = (data.len() as i64 + 10 * DAY_S - 1) / (10 * DAY_S);
    let shift = shift_to_recent_days(days);
    let first = data.iter().filter_map(|s| s.ts_ms).min().unwrap() + shift;
    let (child, base, probed) = spawn_serve_probe_at(dir.path(), first - 1000);
    let log_before = health(&base)["log_records"].as_u64().unwrap();
    let poster = SamplesPoster::new(&base);
    let (elapsed, ()) = time(|| {
        for b in data.chunks(batch) {
            poster.post(&SamplesPoster::body(shifted(b, shift)), b.len());
        }
    });
    // The engine settles (the follower folds up to the last acknowledged record) before a
    // `/v1/triggers` answer, so what the follower writes is in too.
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    agent
        .get(format!("{base}/v1/triggers"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let h = health(&base);
    let stored = h["samples"].as_u64().unwrap();
    assert_eq!(
        stored,
        data.len() as u64 + probed,
        "every sample sent, and the probe's, stored raw"
    );
    let log = h["log_records"].as_u64().unwrap();
    let stop = stop_serve(child);
    let allocated = allocated_bytes(dir.path());
    println!(
        "  serve's probe stored {probed} samples (one snapshot, stamped 1 s before the data) and {log_before} log records at start; after the data: {} log records (the time windows the samples closed and what the follower wrote), stopped in {:.0} ms",
        rate(log as f64),
        stop.as_secs_f64() * 1e3
    );
    let mut files: Vec<(u64, String)> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let p = e.path();
            let bytes = if p.is_dir() {
                allocated_bytes(&p)
            } else {
                std::os::unix::fs::MetadataExt::blocks(&e.metadata().unwrap()) * 512
            };
            (bytes, e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    files.sort_by(|a, b| b.cmp(a));
    println!(
        "  the data dir: {}",
        files
            .iter()
            .map(|(b, n)| format!("{n} {}", rate(*b as f64)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let db = dir.path().join(SERVE_DB);
    if db.exists() {
        let (page, file, tables) = store_tables(&db);
        println!(
            "  the store file by redb table ({page} B pages, {} bytes allocated in the file):",
            rate(file as f64)
        );
        for t in tables.iter().filter(|t| t.in_pages > 0) {
            println!(
                "    {:<16} {:>9} entries {:>10} B in pages {:>10} B stored",
                t.name,
                rate(t.entries as f64),
                rate(t.in_pages as f64),
                rate(t.stored as f64)
            );
        }
        println!(
            "  the log's rows by kind: {}",
            log_kinds(&db)
                .iter()
                .map(|(k, n, b)| format!("{k} {} rows {} B", rate(*n as f64), rate(*b as f64)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Measured {
        allocated,
        apparent: apparent_bytes(dir.path()),
        secs: elapsed.as_secs_f64(),
    }
}

fn report(name: &str, n: usize, m: &Measured) -> f64 {
    let per = m.allocated as f64 / n as f64;
    println!(
        "  {name} {:>12} bytes allocated ({:.3} B/sample), {:>12} bytes apparent ({:.3} B/sample), built in {:.1} s",
        rate(m.allocated as f64),
        per,
        rate(m.apparent as f64),
        m.apparent as f64 / n as f64,
        m.secs
    );
    per
}

fn period(label: &str, days: i64, batches: &[usize]) {
    let n = (days * DAY_S * 10) as usize;
    // The service's probe stamps each snapshot with its tick; clients may send jittered times.
    for (how, jitter, batches) in [
        ("timestamps jittering 0-3 ms", 4, batches),
        (
            "exact 1 s ticks, as kora's probe stamps them",
            1,
            &batches[..1],
        ),
    ] {
        println!(
            "{label}: {} samples (10 signals at 1 s, {how})",
            rate(n as f64)
        );
        let data = probe_samples_jitter(42, 0, n, jitter);
        let mut kp = f64::NAN;
        let mut served = Vec::new();
        let tag = if jitter > 1 { "" } else { ", exact ticks" };
        for &batch in batches {
            println!(" durable batches of {batch}:");
            let k = kora(&data, batch);
            let per = report("kora", n, &k);
            let s = sqlite(&data, batch);
            let sp = report("sqlite", n, &s);
            compare(
                &format!("disk per sample, {label}{tag}, batch {batch}"),
                "B/sample",
                per,
                sp,
                false,
            );
            let v = through_serve(&data, batch);
            let vp = report("kora via serve", n, &v);
            compare_with(
                &format!("disk per sample, {label}{tag}, batch {batch}, via serve"),
                "B/sample",
                vp,
                "store-direct",
                per,
                false,
            );
            served.push((batch, vp));
            if kp.is_nan() {
                kp = per;
            }
        }
        match prometheus(&data) {
            Some(p) => {
                let pp = report("prometheus", n, &p);
                compare_with(
                    &format!("disk per sample, {label}{tag}, batch {}", batches[0]),
                    "B/sample",
                    kp,
                    "prometheus",
                    pp,
                    false,
                );
                for (batch, vp) in served {
                    compare_with(
                        &format!("disk per sample, {label}{tag}, batch {batch}, via serve"),
                        "B/sample",
                        vp,
                        "prometheus",
                        pp,
                        false,
                    );
                }
            }
            None => println!("  prometheus: promtool not installed (apt-get install prometheus)"),
        }
    }
}

fn main() {
    // As the probe sends them (one commit per tick), and buffered a minute at a time.
    period("a day", 1, &[batch_size(), 600]);
    if std::env::var_os("KORA_BENCH_WEEK").is_some() {
        // A week one tick per commit would take ~20 minutes here: a minute per commit.
        period("a week", 7, &[600]);
    }
}
