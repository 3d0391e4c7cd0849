//! Queries the dashboards and the engine ask, kora-telemetry's store against SQLite:
//!
//! - the 24 h p95 of one series (86,400 samples, in a store holding a whole simulated day of
//!   ten signals): kora `Store::values` (the value column of the sealed chunks) + the project's p95 (`kora_window::quantile`,
//!   hdrhistogram), SQLite fetch + the same p95, and SQLite computing the nearest-rank p95 in
//!   SQL; warm (criterion) and cold (a plain loop: store closed, its file's pages dropped from
//!   the OS cache with `POSIX_FADV_DONTNEED`, reopened, then the query timed alone);
//! - the p95 of `model_latency_ms` over the last 10 and the last 1,000 runs of one model (9,000
//!   runs of three models interleaved): kora reading its run index (`Store::recent_runs`: a
//!   head of fewer than 128 fixed-width rows keyed by `(model number, seq)`, then chunks of pco
//!   columns, which the store keeps decoded after the first read, so the warm figure decodes
//!   none and the cold one decodes all it reads), SQLite through an index on `(model, seq)`;
//!   and, for reference, the engine's in-memory window of the last N runs (`RunWindows`),
//!   which needs no store at all.
//!
//! `cargo bench --bench query` (a criterion filter may follow `--`).

#![allow(clippy::unwrap_used)]

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::*;
use criterion::{BenchmarkGroup, Criterion, measurement::WallTime};
use kora_model::{Sample, Signal};
use kora_store::Store;
use kora_window::{RunPoint, RunWindows, quantile};
use rusqlite::{Connection, params};

const SERIES: Signal = Signal::CpuLoadPct;
const RUNS: usize = 9_000;

fn kora_p95(store: &Store) -> f64 {
    // Column-projected: chunks wholly inside the day decode their value column alone.
    let v = store
        .values(SERIES.as_str(), DAY0_MS, DAY0_MS + DAY_S * 1000)
        .unwrap();
    assert_eq!(v.len(), DAY_S as usize);
    quantile(&v, 0.95).unwrap()
}

fn sqlite_fetch_p95(c: &Connection) -> f64 {
    let mut st = c
        .prepare_cached("SELECT value FROM samples WHERE series = ?1 AND ts >= ?2 AND ts < ?3")
        .unwrap();
    let v: Vec<f64> = st
        .query_map(
            params![SERIES as i64, DAY0_MS, DAY0_MS + DAY_S * 1000],
            |r| r.get(0),
        )
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(v.len(), DAY_S as usize);
    quantile(&v, 0.95).unwrap()
}

/// The nearest-rank p95, computed by SQLite alone.
fn sqlite_sql_p95(c: &Connection) -> f64 {
    c.prepare_cached(
        "SELECT value FROM samples WHERE series = ?1 AND ts >= ?2 AND ts < ?3
         ORDER BY value LIMIT 1 OFFSET (
           SELECT (count(*) * 95 + 99) / 100 - 1 FROM samples
           WHERE series = ?1 AND ts >= ?2 AND ts < ?3)",
    )
    .unwrap()
    .query_row(
        params![SERIES as i64, DAY0_MS, DAY0_MS + DAY_S * 1000],
        |r| r.get(0),
    )
    .unwrap()
}

/// The p95 of the model latency of the last `n` runs of `model`, from kora's run index (its
/// head rows and sealed chunks, `run_index.rs`).
fn kora_runs_p95(store: &Store, model: &str, n: usize) -> f64 {
    let v: Vec<f64> = store
        .recent_runs(model, None, n)
        .unwrap()
        .iter()
        .map(|r| r.model_latency_ms)
        .collect();
    assert_eq!(v.len(), n);
    quantile(&v, 0.95).unwrap()
}

fn sqlite_runs_p95(c: &Connection, model: &str, n: usize) -> f64 {
    let v: Vec<f64> = c
        .prepare_cached(
            "SELECT model_latency_ms FROM runs WHERE model = ?1 ORDER BY seq DESC LIMIT ?2",
        )
        .unwrap()
        .query_map(params![model, n as i64], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(v.len(), n);
    quantile(&v, 0.95).unwrap()
}

fn window_runs_p95(w: &RunWindows, model: &str) -> f64 {
    let v: Vec<f64> = w
        .last_runs(model)
        .iter()
        .map(|p| p.model_latency_ms)
        .collect();
    quantile(&v, 0.95).unwrap()
}

/// A criterion bench that also keeps the mean time per iteration, for the ratio lines.
fn bench(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, mut f: impl FnMut() -> f64) -> Rc<Mean> {
    let mean = Rc::new(Mean::default());
    let m = mean.clone();
    g.bench_function(name, move |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(f());
            }
            let d = start.elapsed();
            m.add(d, iters);
            d
        })
    });
    mean
}

#[derive(Default)]
struct Mean {
    total: Cell<Duration>,
    iters: Cell<u64>,
}

impl Mean {
    fn add(&self, d: Duration, iters: u64) {
        self.total.set(self.total.get() + d);
        self.iters.set(self.iters.get() + iters);
    }
    fn us(&self) -> f64 {
        self.total.get().as_secs_f64() * 1e6 / self.iters.get().max(1) as f64
    }
}

/// Median of `reps` cold runs of `query` (µs): `reopen` is called untimed before each.
fn cold<S>(reps: usize, mut reopen: impl FnMut() -> S, query: impl Fn(&S) -> f64) -> f64 {
    let mut t = Vec::new();
    for _ in 0..reps {
        let s = reopen();
        let (d, v) = time(|| query(&s));
        std::hint::black_box(v);
        t.push(d.as_secs_f64() * 1e6);
    }
    median(t)
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(800))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();

    println!("building a simulated day (864,000 samples) and 9,000 runs in both stores...");
    let day = probe_samples(42, 0, (DAY_S * 10) as usize);
    let batches: Vec<Vec<Sample>> = day.chunks(10_000).map(<[Sample]>::to_vec).collect();
    let runs = runs(RUNS);
    let kdir = tempdir();
    let sdir = tempdir();
    let kfile = kdir.path().join("telemetry.redb");
    let sfile = sdir.path().join("telemetry.sqlite");
    {
        let store = kora_open(kdir.path());
        for b in &batches {
            kora_append_samples(&store, b.clone());
        }
        kora_append_runs(&store, &runs);
        let mut conn = sqlite_open(sdir.path());
        for b in &batches {
            sqlite_append_samples(&mut conn, b);
        }
        for chunk in runs.chunks(1000) {
            sqlite_append_runs(&mut conn, chunk);
        }
        conn.execute_batch("ANALYZE").unwrap();
    }
    let store = kora_open(kdir.path());
    let conn = sqlite_open(sdir.path());
    let (kp, sp, qp) = (
        kora_p95(&store),
        sqlite_fetch_p95(&conn),
        sqlite_sql_p95(&conn),
    );
    assert_eq!(kp, sp, "kora and SQLite disagree on the p95");
    assert_eq!(kp, qp, "the SQL p95 disagrees");
    let model = MODELS[0];
    for n in [10, 1000] {
        assert_eq!(
            kora_runs_p95(&store, model, n),
            sqlite_runs_p95(&conn, model, n)
        );
    }

    // ---- cold -------------------------------------------------------------------------
    drop(store);
    drop(conn);
    let evicts = evict(&kfile) && evict(&sfile);
    println!(
        "cold runs: {}",
        if evicts {
            "file pages dropped from the OS cache before each (POSIX_FADV_DONTNEED)"
        } else {
            "python3 unavailable: reopened only, the OS cache stays warm"
        }
    );
    let reps = 7;
    let kora_reopen = || {
        evict(&kfile);
        kora_open(kdir.path())
    };
    let sqlite_reopen = || {
        evict(&sfile);
        sqlite_open(sdir.path())
    };
    let k_cold = cold(reps, kora_reopen, kora_p95);
    let s_cold = cold(reps, sqlite_reopen, sqlite_fetch_p95);
    let q_cold = cold(reps, sqlite_reopen, sqlite_sql_p95);
    let k10_cold = cold(reps, kora_reopen, |s| kora_runs_p95(s, model, 10));
    let s10_cold = cold(reps, sqlite_reopen, |c| sqlite_runs_p95(c, model, 10));
    let k1000_cold = cold(reps, kora_reopen, |s| kora_runs_p95(s, model, 1000));
    let s1000_cold = cold(reps, sqlite_reopen, |c| sqlite_runs_p95(c, model, 1000));
    evict(&kfile);
    let (open_d, store) = time(|| kora_open(kdir.path()));
    drop(store);
    evict(&sfile);
    let (sopen_d, conn) = time(|| sqlite_open(sdir.path()));
    drop(conn);
    println!(
        "  open after eviction: kora {:.0} µs, sqlite {:.0} µs (not in the cold figures)",
        open_d.as_secs_f64() * 1e6,
        sopen_d.as_secs_f64() * 1e6
    );

    // ---- warm -------------------------------------------------------------------------
    let store = kora_open(kdir.path());
    let conn = sqlite_open(sdir.path());
    let mut g = c.benchmark_group("p95_24h_one_series_warm");
    let k_warm = bench(&mut g, "kora_samples_hdr", || kora_p95(&store));
    let s_warm = bench(&mut g, "sqlite_fetch_hdr", || sqlite_fetch_p95(&conn));
    let q_warm = bench(&mut g, "sqlite_sql", || sqlite_sql_p95(&conn));
    g.finish();

    let mut windows = [(10, RunWindows::new(10)), (1000, RunWindows::new(1000))];
    for (_, w) in &mut windows {
        for (i, r) in runs.iter().enumerate() {
            w.push(&r.model_id, RunPoint::from_run(i as u64 + 1, r).unwrap());
        }
    }
    let mut runs_warm = Vec::new();
    for (n, w) in &windows {
        let n = *n;
        let mut g = c.benchmark_group(format!("p95_last_{n}_runs_warm"));
        let k = bench(&mut g, "kora_log_by_kind", || {
            kora_runs_p95(&store, model, n)
        });
        let s = bench(&mut g, "sqlite_index_model_seq", || {
            sqlite_runs_p95(&conn, model, n)
        });
        let m = bench(&mut g, "engine_window_in_memory", || {
            window_runs_p95(w, model)
        });
        g.finish();
        runs_warm.push((n, k, s, m));
    }
    c.final_summary();

    println!();
    println!("figures (µs per query; warm = criterion mean, cold = median of {reps}):");
    compare(
        "24h p95 one series, warm (fetch+hdr)",
        "µs",
        k_warm.us(),
        s_warm.us(),
        false,
    );
    compare(
        "24h p95 one series, warm (vs SQL p95)",
        "µs",
        k_warm.us(),
        q_warm.us(),
        false,
    );
    compare(
        "24h p95 one series, cold (fetch+hdr)",
        "µs",
        k_cold,
        s_cold,
        false,
    );
    compare(
        "24h p95 one series, cold (vs SQL p95)",
        "µs",
        k_cold,
        q_cold,
        false,
    );
    for (n, k, s, m) in &runs_warm {
        compare(
            &format!("p95 last {n} runs, warm"),
            "µs",
            k.us(),
            s.us(),
            false,
        );
        compare_with(
            &format!("p95 last {n} runs, warm, in-memory window"),
            "µs",
            m.us(),
            "sqlite",
            s.us(),
            false,
        );
    }
    compare("p95 last 10 runs, cold", "µs", k10_cold, s10_cold, false);
    compare(
        "p95 last 1000 runs, cold",
        "µs",
        k1000_cold,
        s1000_cold,
        false,
    );
}
