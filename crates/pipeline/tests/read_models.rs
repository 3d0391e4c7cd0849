//! The read models the read endpoints answer from, on a real store: folded with the log,
//! restored across a restart, and reaching every record however old.

#![allow(clippy::unwrap_used)]

use kora_model::Record;
use kora_pipeline::{Pipeline, PipelineOptions};
use kora_store::{Batch, Store, StoreOptions};
use serde_json::json;

const T0: i64 = 1_800_000_000_000;

fn suggestion(i: usize) -> Record {
    serde_json::from_value(json!({
        "kind": "suggestion", "ts_ms": T0 + i as i64 * 1000, "suggestion_id": format!("s{i}"),
        "firing_id": format!("f{i}"), "category": "latency", "scope": "m", "ladder_step": 1,
        "options": [{"id": "smaller_model", "kind": "local", "label": "a smaller model"}],
        "message": "Local execution hit a limit: x. You can:\n(1) try y.",
        "thresholds_version": "1.1.0"}))
    .unwrap()
}

/// Issue 13: feedback answered 404 for a suggestion older than the newest 10,000 (the view
/// read only those), although the engine held it. The id index reaches every suggestion.
#[test]
fn a_suggestion_older_than_ten_thousand_others_is_found_and_counted() {
    const N: usize = 10_050;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.redb");
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        let all: Vec<Record> = (0..N).map(suggestion).collect();
        for chunk in all.chunks(5_000) {
            store.append(T0, Batch::Records(chunk.to_vec())).unwrap();
        }
        store.shutdown();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pipeline = Pipeline::open(&path, PipelineOptions::default()).unwrap();
    rt.block_on(pipeline.catch_up()).unwrap();
    let oldest = pipeline
        .suggestion("s0")
        .unwrap()
        .expect("the oldest suggestion is found");
    assert_eq!(oldest.suggestion_id, "s0");
    assert!(pipeline.suggestion("s-none").unwrap().is_none());
    let m = pipeline.product_metrics("all", i64::MIN, i64::MAX, true);
    assert_eq!(m.upgrade_suggestion_count, N as u64);
    // The first 50 seconds hold 50 suggestions.
    let m = pipeline.product_metrics("custom", T0, T0 + 50_000, true);
    assert_eq!(m.upgrade_suggestion_count, 50);
    drop(pipeline);

    // A restart folds the log again (no checkpoint below 20,000 entries): the same answers.
    let pipeline = Pipeline::open(&path, PipelineOptions::default()).unwrap();
    rt.block_on(pipeline.catch_up()).unwrap();
    assert!(pipeline.suggestion("s0").unwrap().is_some());
    assert_eq!(
        pipeline
            .product_metrics("all", i64::MIN, i64::MAX, true)
            .upgrade_suggestion_count,
        N as u64
    );
}
