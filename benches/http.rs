//! HTTP ingest over loopback: `POST /v1/samples` with MessagePack batches of 1,000 samples,
//! from one client thread and from 4 (ureq, keep-alive), against the real service
//! (`kora_server::serve`, its router, trust boundary, validation, the pipeline's group commit
//! with the time windows closed in the samples' transaction, and the follower) started
//! in-process on 127.0.0.1:0 over a fresh store. Every request is answered only once durable;
//! the store's commit counter gives the durable commits (fsyncs) per request.
//!
//! The same batches appended straight to a store (no HTTP), and to SQLite (one transaction
//! per batch), give the cost of the HTTP layer and the baseline. SQLite has no HTTP front, so
//! the SQLite figure is a store-only reference, not a like-for-like ratio.
//!
//! A plain timed program (3 runs, median). `cargo bench --bench http`.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use kora_model::{IngestAck, Sample, SampleBatch, Signal};

const BATCH: usize = 1_000;
const CLIENTS: usize = 4;
const WARMUP: usize = 20;
const PER_RUN: usize = 200;
const REPS: usize = 3;

fn batches(count: usize) -> Vec<Vec<Sample>> {
    // Ten signals per 100 ms tick, ending a little before now (the service refuses times
    // more than 5 minutes ahead).
    let ticks = (count * BATCH / 10) as i64;
    let base = kora_pipeline::clock::wall_ms() - ticks * 100 - 60_000;
    (0..count)
        .map(|b| {
            (0..BATCH)
                .map(|j| {
                    let g = (b * BATCH + j) as i64;
                    let signal = Signal::ALL[(g % 10) as usize];
                    // Whole and at most 100: valid for counts and percentages alike.
                    sample(signal, base + (g / 10) * 100, (g % 100) as f64)
                })
                .collect()
        })
        .collect()
}

/// Sends `bodies` from `clients` threads (keep-alive connections), each waiting for its answer.
fn post_all(url: &str, bodies: &[Vec<u8>], clients: usize) {
    let next = Mutex::new(0usize);
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                loop {
                    let i = {
                        let mut n = next.lock().unwrap();
                        *n += 1;
                        *n - 1
                    };
                    let Some(body) = bodies.get(i) else { break };
                    let mut resp = agent
                        .post(url)
                        .header("content-type", "application/msgpack")
                        .send(&body[..])
                        .unwrap();
                    if resp.status() != 200 {
                        let why = resp.body_mut().read_to_string().unwrap_or_default();
                        panic!("the service answered {}: {why}", resp.status());
                    }
                    let ack: IngestAck = resp.body_mut().read_json().unwrap();
                    assert_eq!(ack.accepted, BATCH as u64);
                }
            });
        }
    });
}

/// Serves a fresh store in-process and posts the bodies from `clients` threads: samples/s of
/// each run, and the store's durable commits per request over the timed runs.
fn through_serve(bodies: &[Vec<u8>], clients: usize) -> (Vec<f64>, f64) {
    let dir = tempdir();
    let pipeline = Arc::new(
        kora_pipeline::Pipeline::open(
            &dir.path().join("telemetry.redb"),
            kora_pipeline::PipelineOptions::default(),
        )
        .unwrap(),
    );
    let service = InProcess::start(pipeline.clone(), dir.path());
    let url = format!("{}/v1/samples", service.base);
    post_timed(&url, &bodies[..WARMUP], clients);
    let commits_before = pipeline.store().commits();
    let mut http = Vec::new();
    for r in 0..REPS {
        let from = WARMUP + r * PER_RUN;
        http.push(post_timed(&url, &bodies[from..from + PER_RUN], clients));
    }
    // The follower's own commits (its outputs) are counted too: every commit the requests
    // caused, whoever made it.
    let commits = pipeline.store().commits() - commits_before;
    service.stop();
    (http, commits as f64 / (REPS * PER_RUN) as f64)
}

fn main() {
    let all = batches(WARMUP + PER_RUN * REPS);
    let bodies: Vec<Vec<u8>> = all
        .iter()
        .map(|b| rmp_serde::to_vec_named(&SampleBatch { samples: b.clone() }).unwrap())
        .collect();
    println!(
        "HTTP ingest: MessagePack batches of {BATCH} samples ({} bytes a body), keep-alive clients",
        rate(bodies[0].len() as f64)
    );
    let (one, one_commits) = through_serve(&bodies, 1);
    let (http, commits) = through_serve(&bodies, CLIENTS);
    let show = |v: &[f64]| v.iter().map(|x| rate(*x)).collect::<Vec<_>>();
    println!(
        "  runs: 1 client {:?}, {CLIENTS} clients {:?} samples/s",
        show(&one),
        show(&http)
    );
    println!(
        "RESULT HTTP ingest, 1 client, batches of 1000         {:>12} samples/s, {one_commits:.2} durable commits a request",
        rate(median(one))
    );
    println!(
        "RESULT HTTP ingest, {CLIENTS} clients, batches of 1000        {:>12} samples/s, {commits:.2} durable commits a request",
        rate(median(http.clone()))
    );

    // The same batches straight into a fresh store and into SQLite, from the same 4 threads.
    let direct: Vec<f64> = (0..REPS)
        .map(|r| {
            let d = tempdir();
            let s = Arc::new(kora_open(d.path()));
            let from = WARMUP + r * PER_RUN;
            threaded(&all[from..from + PER_RUN], move |b| {
                kora_append_samples(&s, b);
            })
        })
        .collect();
    let sqlite: Vec<f64> = (0..REPS)
        .map(|r| {
            let d = tempdir();
            let c = Arc::new(Mutex::new(sqlite_open(d.path())));
            let from = WARMUP + r * PER_RUN;
            threaded(&all[from..from + PER_RUN], move |b| {
                sqlite_append_samples(&mut c.lock().unwrap(), &b);
            })
        })
        .collect();
    println!(
        "  runs: http {:?}, store direct {:?}, sqlite direct {:?} samples/s",
        show(&http),
        show(&direct),
        show(&sqlite)
    );
    let (h, d, s) = (median(http), median(direct), median(sqlite));
    compare_with(
        "HTTP ingest vs the store alone, batch 1000",
        "samples/s",
        h,
        "store-direct",
        d,
        true,
    );
    compare(
        "HTTP ingest vs SQLite direct, batch 1000",
        "samples/s",
        h,
        s,
        true,
    );
}

/// Posts every body from `clients` threads; answers samples/s.
fn post_timed(url: &str, bodies: &[Vec<u8>], clients: usize) -> f64 {
    let (d, ()) = time(|| post_all(url, bodies, clients));
    (bodies.len() * BATCH) as f64 / d.as_secs_f64()
}

/// Appends every batch from `CLIENTS` threads through `append`; answers samples/s.
fn threaded(batches: &[Vec<Sample>], append: impl Fn(Vec<Sample>) + Send + Sync) -> f64 {
    let next = Mutex::new(0usize);
    let (d, ()) = time(|| {
        std::thread::scope(|s| {
            for _ in 0..CLIENTS {
                s.spawn(|| {
                    loop {
                        let i = {
                            let mut n = next.lock().unwrap();
                            *n += 1;
                            *n - 1
                        };
                        let Some(b) = batches.get(i) else { break };
                        append(b.clone());
                    }
                });
            }
        })
    });
    (batches.len() * BATCH) as f64 / d.as_secs_f64()
}
