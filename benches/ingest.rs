//! Durable ingest, kora-telemetry's store against SQLite, in the same run.
//!
//! - batch 1 with 64 and 1,000 concurrent writer threads, each appending single samples and
//!   waiting for each to be durable (kora: group commit through its writer thread; SQLite: one
//!   connection behind a mutex, each insert its own durable commit);
//! - one writer appending batches of 100 and of 10,000 samples (one durable commit each); and
//!   the same batches through the product path (issue 14): the real `kora-telemetry serve`
//!   binary on a fresh data dir, one keep-alive client over loopback, `POST /v1/samples` with
//!   MessagePack bodies (encoded before the clock starts), each answered once durable, the
//!   service deriving its time windows in the samples' transactions. The samples are moved by a
//!   whole number of days to the last whole UTC days before now, as a running service receives
//!   them; `serve`'s own probe takes one snapshot at start, before the clock starts, and no more.
//!
//! Plain timed loops (fsync-bound work on fresh stores fits criterion's model poorly): each
//! case runs 3 times on fresh data directories, alternating kora and SQLite; the median is
//! printed. `cargo bench --bench ingest`.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use common::*;
use kora_model::{Sample, Signal};
use kora_store::{Batch, Store};

const REPS: usize = 3;

/// `threads` writers, `per` single-sample durable appends each; answers samples/s.
fn concurrent_kora(threads: usize, per: usize) -> f64 {
    let dir = tempdir();
    let store = Arc::new(kora_open(dir.path()));
    let elapsed = concurrent(threads, per, {
        let store = store.clone();
        move |s: Sample| {
            store.append(DAY0_MS, Batch::Samples(vec![s])).unwrap();
        }
    });
    drop(store);
    (threads * per) as f64 / elapsed.as_secs_f64()
}

fn concurrent_sqlite(threads: usize, per: usize) -> f64 {
    let dir = tempdir();
    let conn = Arc::new(Mutex::new(sqlite_open(dir.path())));
    let elapsed = concurrent(threads, per, {
        let conn = conn.clone();
        move |s: Sample| {
            let c = conn.lock().unwrap();
            sqlite_append_one(&c, &s);
        }
    });
    (threads * per) as f64 / elapsed.as_secs_f64()
}

fn concurrent(
    threads: usize,
    per: usize,
    write: impl Fn(Sample) + Send + Sync + Clone + 'static,
) -> Duration {
    let start = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let start = start.clone();
            let write = write.clone();
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    start.wait();
                    for j in 0..per {
                        let i = (t * per + j) as i64;
                        let signal = Signal::ALL[(i % 10) as usize];
                        write(sample(signal, DAY0_MS + i, (i % 1000) as f64));
                    }
                })
                .unwrap()
        })
        .collect();
    let (elapsed, ()) = time(|| {
        start.wait();
        for h in handles {
            h.join().unwrap();
        }
    });
    elapsed
}

fn batches_kora(data: &[Vec<Sample>]) -> f64 {
    let dir = tempdir();
    let store: Store = kora_open(dir.path());
    let n: usize = data.iter().map(Vec::len).sum();
    let owned = data.to_vec();
    let (elapsed, ()) = time(|| {
        for b in owned {
            kora_append_samples(&store, b);
        }
    });
    n as f64 / elapsed.as_secs_f64()
}

fn batches_sqlite(data: &[Vec<Sample>]) -> f64 {
    let dir = tempdir();
    let mut c = sqlite_open(dir.path());
    let n: usize = data.iter().map(Vec::len).sum();
    let (elapsed, ()) = time(|| {
        for b in data {
            sqlite_append_samples(&mut c, b);
        }
    });
    n as f64 / elapsed.as_secs_f64()
}

/// The same batches to the real `serve` over loopback, one keep-alive client; answers samples/s.
fn batches_serve(data: &[Vec<Sample>]) -> f64 {
    let dir = tempdir();
    let n: usize = data.iter().map(Vec::len).sum();
    let first = data.iter().flatten().filter_map(|s| s.ts_ms).min().unwrap();
    let last = data.iter().flatten().filter_map(|s| s.ts_ms).max().unwrap();
    let shift = shift_to_recent_days((last - first) / (DAY_S * 1000) + 1);
    let (child, base, _) = spawn_serve_probe_at(dir.path(), first + shift - 1000);
    let poster = SamplesPoster::new(&base);
    let bodies: Vec<(Vec<u8>, usize)> = data
        .iter()
        .map(|b| (SamplesPoster::body(shifted(b, shift)), b.len()))
        .collect();
    let (elapsed, ()) = time(|| {
        for (body, len) in &bodies {
            poster.post(body, *len);
        }
    });
    stop_serve(child);
    n as f64 / elapsed.as_secs_f64()
}

fn both(what: &str, mut kora: impl FnMut() -> f64, mut sqlite: impl FnMut() -> f64) {
    let (mut k, mut s) = (Vec::new(), Vec::new());
    for _ in 0..REPS {
        k.push(kora());
        s.push(sqlite());
    }
    println!(
        "  {what}: kora runs {:?} samples/s, sqlite runs {:?} samples/s",
        k.iter().map(|v| rate(*v)).collect::<Vec<_>>(),
        s.iter().map(|v| rate(*v)).collect::<Vec<_>>()
    );
    compare(what, "samples/s", median(k), median(s), true);
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects cases by substring.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let on = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    println!("durable ingest (median of {REPS} runs, fresh data dir each)");

    for (threads, per) in [(64, 40), (1000, 8)] {
        let name = format!("batch 1, {threads} concurrent writers");
        if on(&name) {
            both(
                &name,
                || concurrent_kora(threads, per),
                || concurrent_sqlite(threads, per),
            );
        }
    }
    for (batch, batches) in [(100, 300), (10_000, 30)] {
        let name = format!("batch {batch}, one writer");
        if !on(&name) {
            continue;
        }
        let all = probe_samples(1, 0, batch * batches);
        let data: Vec<Vec<Sample>> = all.chunks(batch).map(<[Sample]>::to_vec).collect();
        let (mut k, mut s, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..REPS {
            k.push(batches_kora(&data));
            s.push(batches_sqlite(&data));
            v.push(batches_serve(&data));
        }
        let show = |v: &[f64]| v.iter().map(|x| rate(*x)).collect::<Vec<_>>();
        println!(
            "  {name}: kora runs {:?}, sqlite runs {:?}, via serve runs {:?} samples/s",
            show(&k),
            show(&s),
            show(&v)
        );
        let (k, s, v) = (median(k), median(s), median(v));
        compare(&name, "samples/s", k, s, true);
        let via = format!("{name}, via serve");
        compare_with(&via, "samples/s", v, "store-direct", k, true);
        compare(&via, "samples/s", v, s, true);
    }
}
