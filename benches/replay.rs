//! Replay speed of the policy engine: records per second folding a generated log (runs of three
//! models with stage timings, one model slowing down now and then so that latency blocks
//! breach and fire, sessions starting and ending, context requests, model loads, and the
//! one-minute time windows of the four host series the engine reads) through
//! `kora_policy::Engine::step`:
//!
//! - in memory (the engine alone);
//! - read from kora-telemetry's store (`Store::scan` in pages of 1,000: CRC check and
//!   MessagePack decode) and folded;
//! - read from SQLite (`log(seq INTEGER PRIMARY KEY, body BLOB)`, the same MessagePack bodies)
//!   and folded.
//!
//! `cargo bench --bench replay`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use criterion::{Criterion, SamplingMode, Throughput};
use kora_model::{
    ContextRequest, LoadOutcome, LogEntry, ModelLoad, Record, SessionEvent, WindowRecord,
};
use kora_policy::{CloudTiers, Engine, Thresholds};
use kora_store::Store;
use rusqlite::{Connection, params};

const MINUTES: i64 = 8_000;

fn window(ts_end: i64, metric: &str, p50: f64, p95: f64, max: f64) -> Record {
    Record::Window(WindowRecord {
        ts_ms: ts_end,
        window_kind: "time".into(),
        metric: metric.into(),
        scope: "host".into(),
        start_ms: ts_end - 60_000,
        end_ms: ts_end,
        first_seq: None,
        last_seq: None,
        count: 60,
        min: 0.0,
        max,
        p50,
        p95,
    })
}

/// About 80,000 records of a busy week-end: per minute six runs, four time windows, and now
/// and then sessions, context requests and model loads.
fn log() -> Vec<LogEntry> {
    let mut rng = Rng::new(11);
    let mut records = Vec::new();
    let mut run_i = 0u64;
    for m in 0..MINUTES {
        let t0 = DAY0_MS + m * 60_000;
        if m % 10 == 0 {
            records.push(Record::SessionStarted(SessionEvent {
                id: None,
                ts_ms: Some(t0),
                session_id: format!("s{}", m / 10),
            }));
        }
        // One model slows down for half an hour every ~5.5 hours: blocks breach and fire.
        let slow = m % 333 < 30;
        for k in 0..6 {
            let model = MODELS[rng.below(3) as usize];
            let mut r = run(&mut rng, run_i, model, t0 + k * 10_000);
            r.session_id = format!("s{}", m / 10);
            if slow && model == MODELS[1] {
                r.model_latency_ms += 4_000.0;
                r.model_stage_ms = r.model_latency_ms;
                r.total_latency_ms = r.model_latency_ms + r.deterministic_stage_ms;
            }
            records.push(Record::Run(r));
            run_i += 1;
        }
        if m % 7 == 0 {
            records.push(Record::ContextRequest(ContextRequest {
                id: None,
                ts_ms: Some(t0 + 30_001),
                model_id: MODELS[rng.below(3) as usize].into(),
                requested_context_tokens: if rng.below(20) == 0 { 65_536 } else { 4096 },
                local_supported_context_tokens: Some(8192),
                session_id: Some(format!("s{}", m / 10)),
                prompt_hash: Some(format!("{:064x}", rng.next_u64())),
            }));
        }
        if m % 120 == 0 {
            records.push(Record::ModelLoad(ModelLoad {
                id: None,
                ts_ms: Some(t0 + 1),
                model_id: MODELS[rng.below(3) as usize].into(),
                model_required_vram_mb: 6_000.0 + rng.f64() * 20_000.0,
                vram_reclaimable_mb_est: None,
                outcome: LoadOutcome::Ok,
                quantization: Some("q4_k_m".into()),
                params_b: Some(8.0),
                kv_cache_bytes_per_token: None,
                session_id: None,
            }));
        }
        let end = t0 + 60_000;
        let queue = if slow {
            1500.0
        } else {
            40.0 + rng.f64() * 100.0
        };
        records.push(window(end, "active_sessions", 1.0, 2.0, 3.0));
        records.push(window(
            end,
            "queue_wait_ms",
            queue / 2.0,
            queue,
            queue * 1.2,
        ));
        records.push(window(
            end,
            "gpu_vram_free_mb",
            12_000.0,
            14_000.0,
            15_000.0,
        ));
        records.push(window(
            end,
            "gpu_vram_total_mb",
            24_576.0,
            24_576.0,
            24_576.0,
        ));
        if m % 10 == 9 {
            records.push(Record::SessionEnded(SessionEvent {
                id: None,
                ts_ms: Some(end - 1),
                session_id: format!("s{}", m / 10),
            }));
        }
    }
    records
        .into_iter()
        .enumerate()
        .map(|(i, record)| LogEntry {
            seq: i as u64 + 1,
            record,
        })
        .collect()
}

fn engine() -> Engine {
    Engine::new(Thresholds::embedded(), CloudTiers::embedded())
}

fn fold(entries: &[LogEntry]) -> usize {
    let mut e = engine();
    entries.iter().map(|x| e.step(x).len()).sum()
}

fn fold_kora(store: &Store) -> (usize, usize) {
    let mut e = engine();
    let (mut n, mut derived, mut from) = (0, 0, 0);
    loop {
        let page = store.scan(from, 1000).unwrap();
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        n += page.len();
        derived += page.iter().map(|x| e.step(x).len()).sum::<usize>();
    }
    (n, derived)
}

fn fold_sqlite(c: &Connection) -> (usize, usize) {
    let mut e = engine();
    let mut st = c
        .prepare_cached("SELECT seq, body FROM log ORDER BY seq")
        .unwrap();
    let mut rows = st.query([]).unwrap();
    let (mut n, mut derived) = (0, 0);
    while let Some(row) = rows.next().unwrap() {
        let seq: i64 = row.get(0).unwrap();
        let body = row.get_ref(1).unwrap().as_blob().unwrap();
        let record: Record = rmp_serde::from_slice(body).unwrap();
        n += 1;
        derived += e
            .step(&LogEntry {
                seq: seq as u64,
                record,
            })
            .len();
    }
    (n, derived)
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();

    let entries = log();
    let n = entries.len();
    let derived = fold(&entries);
    println!(
        "log: {} records, the engine derives {} records from them",
        rate(n as f64),
        rate(derived as f64)
    );
    assert!(derived > 0, "the generated log fires nothing");

    let kdir = tempdir();
    let sdir = tempdir();
    let store = kora_open(kdir.path());
    for chunk in entries.chunks(1000) {
        let records = chunk.iter().map(|e| e.record.clone()).collect();
        store
            .append(DAY0_MS, kora_store::Batch::Records(records))
            .unwrap();
    }
    let mut conn = sqlite_open(sdir.path());
    {
        let tx = conn.transaction().unwrap();
        {
            let mut st = tx
                .prepare("INSERT INTO log(seq, body) VALUES (?1, ?2)")
                .unwrap();
            for e in &entries {
                st.execute(params![
                    e.seq as i64,
                    rmp_serde::to_vec_named(&e.record).unwrap()
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    assert_eq!(fold_kora(&store), (n, derived));
    assert_eq!(fold_sqlite(&conn), (n, derived));

    let mut g = c.benchmark_group("engine_replay");
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(n as u64));
    // Seconds and iterations of every criterion call (warm-up included: all warm).
    let mut t = [(0.0, 0u64); 3];
    let mut record = |i: usize, d: Duration, iters: u64| {
        t[i].0 += d.as_secs_f64();
        t[i].1 += iters;
    };
    g.bench_function("in_memory", |b| {
        b.iter_custom(|iters| {
            let (d, _) = time(|| (0..iters).map(|_| fold(&entries)).sum::<usize>());
            record(0, d, iters);
            d
        })
    });
    g.bench_function("kora_store_scan", |b| {
        b.iter_custom(|iters| {
            let (d, _) = time(|| (0..iters).map(|_| fold_kora(&store).0).sum::<usize>());
            record(1, d, iters);
            d
        })
    });
    g.bench_function("sqlite_scan", |b| {
        b.iter_custom(|iters| {
            let (d, _) = time(|| (0..iters).map(|_| fold_sqlite(&conn).0).sum::<usize>());
            record(2, d, iters);
            d
        })
    });
    g.finish();
    c.final_summary();

    let per_s = t.map(|(secs, iters)| n as f64 * iters as f64 / secs);
    println!();
    println!(
        "RESULT engine replay, in memory                     {:>12} records/s",
        rate(per_s[0])
    );
    compare(
        "engine replay read from the store",
        "records/s",
        per_s[1],
        per_s[2],
        true,
    );
}
