//! The read endpoints that summarise the whole log, on a short history and on one ten times
//! longer: `GET /metrics`, `GET /v1/metrics/product` (the default 24 h range, and `all`), and
//! `GET /v1/export/preview`, through the real service (`kora_server::serve` in-process on
//! 127.0.0.1:0, one keep-alive client). Issue 13's goal: the answer time does not grow with
//! the history (the read models are folded with the log; nothing is rescanned per request):
//! ten times the suggestions answer within 1.2 times the time.
//!
//! Each store holds `N` suggestions with their firings (one a day spread over the past year
//! and more), half of them answered, and a few in the last 24 hours (the same in both
//! stores, so the 24 h answer is the same size). A plain timed program: 50 warm-up requests,
//! then 400 timed requests per endpoint, median and p99. `cargo bench --bench views`.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kora_model::Record;
use kora_store::{Batch, Store, StoreOptions};
use serde_json::json;

const SHORT: usize = 2_000;
const WARMUP: usize = 50;
const TIMED: usize = 400;
const DAY_MS: i64 = 86_400_000;

/// Appends `n` firings with their suggestions, back from `now` (ten in the last day, the rest
/// over the 400 days before), half of them answered.
fn fill(store: &Store, n: usize, now: i64) {
    let mut records = Vec::new();
    for i in 0..n {
        // Ten in the last day; the rest spread over the past 400 days.
        let ts = if i < 10 {
            now - (i as i64 + 1) * 3_600_000
        } else {
            now - DAY_MS - (i as i64 * 400 * DAY_MS) / n as i64
        };
        let category = [
            "latency",
            "model_fit",
            "context",
            "concurrency",
            "reliability",
        ][i % 5];
        let firing: Record = serde_json::from_value(json!({
            "kind": "firing", "ts_ms": ts, "firing_id": format!("f{i}"), "category": category,
            "scope": "llama-8b", "reason": "p95 over the limit", "evidence": [],
            "thresholds_version": "1.1.0"}))
        .unwrap();
        let mut options =
            vec![json!({"id": "smaller_model", "kind": "local", "label": "a smaller model"})];
        if i % 3 == 0 {
            options.push(json!({"id": "cloud", "kind": "cloud", "label": "Krako Cloud"}));
        }
        let suggestion: Record = serde_json::from_value(json!({
            "kind": "suggestion", "ts_ms": ts + 1, "suggestion_id": format!("s{i}"),
            "firing_id": format!("f{i}"), "category": category, "scope": "llama-8b",
            "ladder_step": 1, "options": options,
            "message": "Local execution hit a limit: p95 over the limit. You can:\n(1) try a smaller model.",
            "thresholds_version": "1.1.0"}))
        .unwrap();
        records.push(firing);
        records.push(suggestion);
        if i % 2 == 0 {
            records.push(
                serde_json::from_value(json!({"kind": "feedback", "ts_ms": ts + 60_000,
                    "suggestion_id": format!("s{i}"), "action": if i % 4 == 0 { "accepted" } else { "dismissed" }}))
                .unwrap(),
            );
        }
        if records.len() >= 5_000 {
            store
                .append(now, Batch::Records(std::mem::take(&mut records)))
                .unwrap();
        }
    }
    store.append(now, Batch::Records(records)).unwrap();
}

/// Median and p99 of `TIMED` GETs of `path` after `WARMUP`.
fn time_get(agent: &ureq::Agent, base: &str, path: &str) -> (Duration, Duration) {
    let url = format!("{base}{path}");
    let get = || {
        let mut r = agent
            .get(&url)
            .header("host", base.trim_start_matches("http://"))
            .call()
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let _ = r.body_mut().read_to_vec().unwrap();
    };
    for _ in 0..WARMUP {
        get();
    }
    let mut times: Vec<Duration> = (0..TIMED)
        .map(|_| {
            let t = Instant::now();
            get();
            t.elapsed()
        })
        .collect();
    times.sort();
    (times[TIMED / 2], times[TIMED * 99 / 100])
}

const PATHS: [&str; 4] = [
    "/metrics",
    "/v1/metrics/product",
    "/v1/metrics/product?range=all",
    "/v1/export/preview",
];

/// Serves a store of `n` suggestions and times every path.
fn measure(n: usize) -> Vec<(Duration, Duration)> {
    let dir = tempdir();
    let path = dir.path().join("telemetry.redb");
    let now = kora_pipeline::clock::wall_ms();
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        fill(&store, n, now);
        store.shutdown();
    }
    let pipeline = Arc::new(kora_pipeline::Pipeline::open(&path, Default::default()).unwrap());
    let service = InProcess::start(pipeline.clone(), dir.path());
    service.rt.block_on(pipeline.catch_up()).unwrap();
    let base = service.base.clone();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let out = PATHS.iter().map(|p| time_get(&agent, &base, p)).collect();
    service.stop();
    out
}

fn main() {
    let short = measure(SHORT);
    let long = measure(SHORT * 10);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    for (i, path) in PATHS.iter().enumerate() {
        let (s, l) = (short[i], long[i]);
        println!(
            "RESULT {path:<32} {SHORT} suggestions: median {:>7.0} µs p99 {:>7.0} µs; {}: median {:>7.0} µs p99 {:>7.0} µs; ratio of medians x{:.2} (goal <= 1.2)",
            us(s.0),
            us(s.1),
            SHORT * 10,
            us(l.0),
            us(l.1),
            us(l.0) / us(s.0)
        );
    }
}
