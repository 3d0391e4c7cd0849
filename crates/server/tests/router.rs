//! The real router over a real store in a temporary directory, driven without a socket.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use kora_model::*;
use kora_model::{HardwareSnapshot, ProfileRecord};
use kora_pipeline::{Clock, Pipeline, PipelineOptions, SystemClock};
use kora_server::{AppState, Config, HostPolicy};
use serde_json::{Value, json};
use tower::ServiceExt;

const HOST: &str = "127.0.0.1:7433";

struct App {
    router: Router,
    state: AppState,
    _dir: tempfile::TempDir,
}

fn app() -> App {
    app_with(PipelineOptions::default())
}

/// An app over a fresh store in a temp dir, its pipeline built with `options`.
fn app_with(options: PipelineOptions) -> App {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::open(&dir.path().join("t.redb"), options).unwrap();
    let state = AppState::new(
        Arc::new(pipeline),
        Config {
            token: kora_server::token::Token::load_or_create(dir.path()).unwrap(),
            data_dir: dir.path().to_owned(),
            hosts: HostPolicy {
                port: 7433,
                extra_names: vec![],
            },
        },
    );
    App {
        router: kora_server::router(state.clone()),
        state,
        _dir: dir,
    }
}

impl App {
    async fn send(&self, req: Request<Body>) -> (StatusCode, Value, axum::http::HeaderMap) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value, headers)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let req = Request::post(path)
            .header("host", HOST)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let (s, v, _) = self.send(req).await;
        (s, v)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let req = Request::get(path)
            .header("host", HOST)
            .body(Body::empty())
            .unwrap();
        let (s, v, _) = self.send(req).await;
        (s, v)
    }

    async fn counts(&self) -> (u64, u64) {
        let (_, h) = self.get("/v1/health").await;
        (
            h["log_records"].as_u64().unwrap(),
            h["samples"].as_u64().unwrap(),
        )
    }
}

fn now() -> i64 {
    SystemClock.now_ms()
}

fn run_json(run_id: &str) -> Value {
    json!({
        "run_id": run_id, "session_id": "s1", "model_id": "llama-3-8b-q4", "substrate": "local",
        "prompt_hash": prompt_hash("Summarize this"), "context_tokens": 2048,
        "tokens_in": 1500, "tokens_out": 300, "total_tokens": 1800,
        "model_latency_ms": 2100.5, "total_latency_ms": 2600.0,
        "deterministic_stage_ms": 400.0, "model_stage_ms": 2100.5,
        "validation_retry_count": 0, "budget_breach_count": 0,
        "stages": [{"name": "parse", "kind": "deterministic", "ms": 12.0}]
    })
}

/// Asserts a 400 that names `field`, and that nothing was stored.
async fn rejects(app: &App, path: &str, body: Value, field: &str) {
    let before = app.counts().await;
    let (status, v) = app.post(path, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["field"], field, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(
        app.counts().await,
        before,
        "a rejected batch stored something"
    );
}

#[tokio::test]
async fn health_reports_counts_and_version() {
    let app = app();
    let (s, v) = app.get("/v1/health").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["log_records"], 0);
    assert!(v["last_seq"].is_null());
}

#[tokio::test]
async fn samples_runs_and_events_are_acknowledged_with_their_seqs() {
    let app = app();
    let (s, v) = app
        .post(
            "/v1/samples",
            json!({"samples": [
                {"signal": "ram_free_mb", "value": 12000},
                {"signal": "gpu_vram_free_mb", "unavailable": "no NVIDIA GPU (driver not loaded)"}
            ]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"accepted": 2, "duplicates": 0, "first_seq": 1, "last_seq": 2})
    );
    let (s, v) = app
        .post(
            "/v1/runs",
            json!({"runs": [run_json("r1"), run_json("r2")]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["first_seq"].as_u64(), v["last_seq"].as_u64()),
        (Some(3), Some(4))
    );
    let (s, v) = app
        .post(
            "/v1/events",
            json!({"events": [
                {"kind": "session_started", "session_id": "s1"},
                {"kind": "model_load", "model_id": "llama-70b", "model_required_vram_mb": 40000, "outcome": "failed"},
                {"kind": "context_request", "model_id": "llama-3-8b-q4", "requested_context_tokens": 32768},
                {"kind": "context_oom", "model_id": "llama-3-8b-q4", "session_id": "s1"},
                {"kind": "session_ended", "session_id": "s1"}
            ]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["accepted"], 5);
    assert_eq!(app.counts().await, (7, 2));
    let (s, v) = app.get("/v1/log?limit=3").await;
    assert_eq!(s, StatusCode::OK);
    let kinds: Vec<_> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].clone())
        .collect();
    assert_eq!(
        kinds,
        vec![
            json!("session_ended"),
            json!("context_oom"),
            json!("context_request")
        ]
    );
    assert_eq!(v["next_before"], 7);
    let (_, v) = app.get("/v1/log?kind=run").await;
    let runs = v["entries"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["run_id"], "r2");
    assert!(
        runs[0]["ts_ms"].as_i64().unwrap() > MIN_TS_MS,
        "the server stamps a time"
    );
}

/// Issue 13: a samples request cost two fsyncs (the samples, then the windows they closed, in
/// a second transaction that a crash could lose). Now the windows are closed inside the
/// samples' transaction: one commit, and the windows are in the log when the answer comes,
/// before any follower runs.
#[tokio::test]
async fn a_samples_request_costs_one_commit_with_the_windows_it_closes() {
    let app = app();
    let t0 = (now() - 3_600_000).div_euclid(60_000) * 60_000;
    let batch = |from: i64, n: i64| {
        let samples: Vec<Value> = (0..n)
            .map(|i| json!({"id": format!("w{from}-{i}"), "signal": "active_sessions", "value": (i % 3) as f64, "ts_ms": from + i * 5_000}))
            .collect();
        json!({ "samples": samples })
    };
    let store = app.state.pipeline.store().clone();
    let (s, _) = app.post("/v1/samples", batch(t0, 12)).await;
    assert_eq!(s, StatusCode::OK);
    let windows = || {
        store
            .scan_kind(RecordKind::Window, 0, usize::MAX)
            .unwrap()
            .len()
    };
    assert_eq!(windows(), 0, "the first minute is still open");
    let before = store.commits();
    // Three more minutes: the first three close.
    let (s, ack) = app.post("/v1/samples", batch(t0 + 60_000, 36)).await;
    assert_eq!(s, StatusCode::OK, "{ack}");
    assert_eq!(
        store.commits() - before,
        1,
        "one durable commit for the samples and the windows they closed"
    );
    assert_eq!(
        windows(),
        3,
        "the closed minutes are in the log with the answer"
    );
    let last_sample = ack["last_seq"].as_u64().unwrap();
    let first_window = store.scan_kind(RecordKind::Window, 0, 1).unwrap()[0].seq;
    assert!(
        first_window > last_sample,
        "the windows follow the samples that closed them"
    );
    // A retry stores nothing, closes nothing, and still costs one commit.
    let before = store.commits();
    let (s, ack) = app.post("/v1/samples", batch(t0 + 60_000, 36)).await;
    assert_eq!(
        (s, ack["accepted"].as_u64(), ack["duplicates"].as_u64()),
        (StatusCode::OK, Some(0), Some(36))
    );
    assert!(store.commits() - before <= 1);
    assert_eq!(windows(), 3);
}

/// Issue 13: the handlers read time only from the pipeline's clock, so a test can move it. A
/// record stamped by the server gets the clock's time; "more than 5 minutes ahead" and the
/// metrics' `24h` range are relative to it; the uptime is the clock's.
#[tokio::test]
async fn the_service_reads_time_only_from_its_clock() {
    const T: i64 = 1_900_000_000_000;
    let clock = Arc::new(kora_pipeline::ManualClock::new(T));
    let app = app_with(PipelineOptions {
        clock: clock.clone(),
        ..PipelineOptions::default()
    });
    // Stamped with the clock's time.
    let (s, ack) = app
        .post("/v1/runs", json!({"runs": [run_json("r1")]}))
        .await;
    assert_eq!(s, StatusCode::OK, "{ack}");
    let (_, log) = app.get("/v1/log?kind=run").await;
    assert_eq!(log["entries"][0]["ts_ms"], T, "{log}");
    // Four minutes ahead of the clock is accepted, six is refused, naming the field.
    let mut ahead = run_json("r2");
    ahead["ts_ms"] = json!(T + 4 * 60_000);
    assert_eq!(
        app.post("/v1/runs", json!({"runs": [ahead]})).await.0,
        StatusCode::OK
    );
    let mut far = run_json("r3");
    far["ts_ms"] = json!(T + 6 * 60_000);
    rejects(&app, "/v1/runs", json!({"runs": [far]}), "runs[0].ts_ms").await;
    // The 24 h range ends at the clock's now.
    let (_, m) = app.get("/v1/metrics/product").await;
    assert_eq!(m["to_ms"], T + 1, "{m}");
    // A day later, by the clock alone.
    clock.advance(86_400_000);
    let (_, m) = app.get("/v1/metrics/product").await;
    assert_eq!(m["from_ms"], T, "{m}");
    let (_, h) = app.get("/v1/health").await;
    assert_eq!(h["uptime_s"], 86_400, "{h}");
}

#[tokio::test]
async fn messagepack_bodies_are_accepted_and_equal_json() {
    let app = app();
    let batch = RunBatch {
        runs: vec![serde_json::from_value(run_json("mp1")).unwrap()],
    };
    let req = Request::post("/v1/runs")
        .header("host", HOST)
        .header("content-type", "application/msgpack")
        .body(Body::from(rmp_serde::to_vec_named(&batch).unwrap()))
        .unwrap();
    let (s, v, _) = app.send(req).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, page) = app.get("/v1/log?kind=run").await;
    let stored: Run = serde_json::from_value({
        let mut e = page["entries"][0].clone();
        let o = e.as_object_mut().unwrap();
        o.remove("seq");
        o.remove("kind");
        o.remove("ts_ms");
        e
    })
    .unwrap();
    assert_eq!(stored, batch.runs[0]);
}

#[tokio::test]
async fn non_finite_values_in_messagepack_are_refused() {
    let app = app();
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let batch = SampleBatch {
            samples: vec![Sample {
                id: None,
                ts_ms: None,
                signal: Signal::QueueWaitMs,
                value: Some(bad),
                unavailable: None,
                device: None,
                model_id: None,
                session_id: None,
            }],
        };
        let req = Request::post("/v1/samples")
            .header("host", HOST)
            .header("content-type", "application/msgpack")
            .body(Body::from(rmp_serde::to_vec_named(&batch).unwrap()))
            .unwrap();
        let (s, v, _) = app.send(req).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["field"], "samples[0].value");
    }
    assert_eq!(app.counts().await, (0, 0));
}

#[tokio::test]
async fn deeply_nested_messagepack_is_refused_without_a_crash() {
    let app = app();
    // {"samples": [[[[...]]]]} nested far past any record's depth, in a small body.
    let mut body = vec![0x81, 0xa7];
    body.extend_from_slice(b"samples");
    body.extend(std::iter::repeat_n(0x91u8, 100_000));
    body.push(0xc0);
    let req = Request::post("/v1/samples")
        .header("host", HOST)
        .header("content-type", "application/msgpack")
        .body(Body::from(body))
        .unwrap();
    let (s, v, _) = app.send(req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn every_validation_error_names_its_field() {
    let app = app();
    let t = now();
    let s = "/v1/samples";
    rejects(
        &app,
        s,
        json!({"samples": [{"signal": "vram", "value": 1}]}),
        "samples[0].signal",
    )
    .await;
    rejects(
        &app,
        s,
        json!({"samples": [{"signal": "ram_free_mb", "value": 1, "extra": 1}]}),
        "samples[0].extra",
    )
    .await;
    rejects(
        &app,
        s,
        json!({"samples": [{"signal": "ram_free_mb", "value": 1}, {"signal": "ram_free_mb", "value": -1}]}),
        "samples[1].value",
    )
    .await;
    rejects(
        &app,
        s,
        json!({"samples": [{"signal": "ram_free_mb"}]}),
        "samples[0].value",
    )
    .await;
    rejects(
        &app,
        s,
        json!({"samples": [{"signal": "ram_free_mb", "value": 1, "unavailable": "x"}]}),
        "samples[0].unavailable",
    )
    .await;
    rejects(
        &app,
        s,
        json!({"samples": [{"signal": "cpu_cores", "value": 2.5}]}),
        "samples[0].value",
    )
    .await;
    rejects(
        &app,
        s,
        json!({"samples": [{"signal": "cpu_load_pct", "value": 140}]}),
        "samples[0].value",
    )
    .await;
    rejects(
        &app,
        s,
        json!({"samples": [{"signal": "ram_free_mb", "value": 1, "ts_ms": t + 10 * 60 * 1000}]}),
        "samples[0].ts_ms",
    )
    .await;
    rejects(
        &app,
        s,
        json!({"samples": [{"signal": "ram_free_mb", "value": 1, "ts_ms": 1_000}]}),
        "samples[0].ts_ms",
    )
    .await;
    rejects(&app, s, json!({"samples": []}), "samples").await;
    rejects(&app, s, json!({"sample": []}), "sample").await;

    let r = "/v1/runs";
    let with = |field: &str, value: Value| {
        let mut run = run_json("r");
        run[field] = value;
        json!({ "runs": [run] })
    };
    rejects(
        &app,
        r,
        with("total_tokens", json!(1)),
        "runs[0].total_tokens",
    )
    .await;
    rejects(
        &app,
        r,
        with("validation_retry_count", json!(-1)),
        "runs[0].validation_retry_count",
    )
    .await;
    rejects(
        &app,
        r,
        with("prompt_hash", json!("Summarize this")),
        "runs[0].prompt_hash",
    )
    .await;
    rejects(
        &app,
        r,
        with("prompt", json!("raw prompts are never accepted")),
        "runs[0].prompt",
    )
    .await;
    rejects(
        &app,
        r,
        with("model_latency_ms", json!(5000.0)),
        "runs[0].total_latency_ms",
    )
    .await;
    rejects(
        &app,
        r,
        with("substrate", json!("edge")),
        "runs[0].substrate",
    )
    .await;
    rejects(&app, r, with("model_id", json!("")), "runs[0].model_id").await;
    rejects(
        &app,
        r,
        with("tokens_in", json!(u64::MAX)),
        "runs[0].tokens_out",
    )
    .await;
    let mut staged = run_json("r");
    staged["stages"][0]["ms"] = json!(-2.0);
    rejects(&app, r, json!({"runs": [staged]}), "runs[0].stages[0].ms").await;
    let mut a = run_json("a");
    a["id"] = json!("dup");
    let mut b = run_json("b");
    b["id"] = json!("dup");
    rejects(&app, r, json!({"runs": [a, b]}), "runs[1].id").await;

    let e = "/v1/events";
    rejects(
        &app,
        e,
        json!({"events": [{"kind": "model_loaded", "model_id": "m"}]}),
        "events[0].kind",
    )
    .await;
    rejects(
        &app,
        e,
        json!({"events": [{"kind": "model_load", "model_id": "m", "model_required_vram_mb": -5, "outcome": "ok"}]}),
        "events[0].model_required_vram_mb",
    )
    .await;
    rejects(
        &app,
        e,
        json!({"events": [{"kind": "context_oom", "model_id": "m"}]}),
        "events[0]",
    )
    .await;
    assert_eq!(app.counts().await, (0, 0));
}

#[tokio::test]
async fn retried_batches_are_stored_once_and_reused_ids_conflict() {
    let app = app();
    let mut r = run_json("r1");
    r["id"] = json!("client-1");
    let (s, first) = app.post("/v1/runs", json!({"runs": [r.clone()]})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, again) = app.post("/v1/runs", json!({"runs": [r.clone()]})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        again,
        json!({"accepted": 0, "duplicates": 1, "first_seq": null, "last_seq": null})
    );
    assert_eq!(first["accepted"], 1);
    r["model_latency_ms"] = json!(1.0);
    let (s, v) = app.post("/v1/runs", json!({"runs": [r]})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["field"], "runs[0].id");
    assert_eq!(app.counts().await, (1, 0));
}

#[tokio::test]
async fn content_types_sizes_and_routes_are_checked() {
    let app = app();
    let body = json!({"samples": [{"signal": "ram_free_mb", "value": 1}]}).to_string();
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data"),
    ] {
        let mut req = Request::post("/v1/samples").header("host", HOST);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let (s, v, _) = app.send(req.body(Body::from(body.clone())).unwrap()).await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}: {v}");
        assert_eq!(v["error"], "unsupported_media_type");
    }
    let big = vec![b' '; MAX_BODY_BYTES + 1];
    let req = Request::post("/v1/samples")
        .header("host", HOST)
        .header("content-type", "application/json")
        .body(Body::from(big))
        .unwrap();
    let (s, v, _) = app.send(req).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    let many: Vec<Value> = (0..MAX_BATCH_ITEMS + 1)
        .map(|_| json!({"signal": "ram_free_mb", "value": 1}))
        .collect();
    let (s, v) = app.post("/v1/samples", json!({ "samples": many })).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    let (s, v) = app
        .post("/v1/samples", Value::String("not an object".into()))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = app.get("/v1/nothing").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"], "not_found");
    let (s, v) = app.get("/v1/log?limit=0").await;
    assert_eq!(
        (s, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("limit"))
    );
    let (s, v) = app.get("/v1/log?kind=nope").await;
    assert_eq!(
        (s, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("kind"))
    );
    let (s, _) = app.get("/v1/log?limit=abc").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(app.counts().await, (0, 0));
}

#[tokio::test]
async fn foreign_hosts_and_origins_are_refused_before_routing() {
    let app = app();
    for host in ["evil.example:7433", "127.0.0.1:7434", "localhost.:7433", ""] {
        let req = Request::get("/v1/health")
            .header("host", host)
            .body(Body::empty())
            .unwrap();
        let (s, v, headers) = app.send(req).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{host}: {v}");
        // A refusal carries the security headers like any other response.
        assert_eq!(headers["x-content-type-options"], "nosniff", "{host}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{host}");
    }
    let req = Request::get("/v1/health").body(Body::empty()).unwrap();
    assert_eq!(app.send(req).await.0, StatusCode::FORBIDDEN, "missing Host");
    let req = Request::get("http://evil.example:7433/v1/health")
        .header("host", HOST)
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        app.send(req).await.0,
        StatusCode::FORBIDDEN,
        "absolute-form target"
    );
    let body = json!({"samples": [{"signal": "ram_free_mb", "value": 1}]}).to_string();
    for (name, value) in [
        ("origin", "http://evil.example"),
        ("origin", "null"),
        ("origin", "http://127.0.0.1:7434"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let req = Request::post("/v1/samples")
            .header("host", HOST)
            .header("content-type", "application/json")
            .header(name, value)
            .body(Body::from(body.clone()))
            .unwrap();
        let (s, v, _) = app.send(req).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{name}: {value}: {v}");
    }
    assert_eq!(app.counts().await, (0, 0));
    let req = Request::post("/v1/samples")
        .header("host", HOST)
        .header("content-type", "application/json")
        .header("origin", "http://127.0.0.1:7433")
        .body(Body::from(body))
        .unwrap();
    let (s, _, headers) = app.send(req).await;
    assert_eq!(s, StatusCode::OK, "the service's own origin may write");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert!(headers.get("access-control-allow-origin").is_none());
}

fn recorded_snapshot(name: &str) -> HardwareSnapshot {
    snapshot_at(name, 2)
}

#[tokio::test]
async fn profile_and_fit_answer_from_the_latest_snapshot() {
    let app = app();
    let (s, v) = app.get("/v1/profile").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    let (s, _) = app.get("/v1/fit?model_required_vram_mb=1000").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);

    let snapshot = recorded_snapshot("desktop_rtx4090.json");
    app.state
        .pipeline
        .ingest_snapshot(snapshot.clone())
        .await
        .unwrap();
    let (s, v) = app.get("/v1/profile").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let record: ProfileRecord = serde_json::from_value(v).unwrap();
    assert_eq!(
        record.hardware.gpu_vram_total_mb,
        snapshot.gpu_vram_total_mb
    );
    assert!(record.profile.max_recommended_model_vram_mb.value.is_some());
    // The snapshot's samples and its profile are in the store.
    let (samples_before, _) = (app.counts().await.1, ());
    assert!(samples_before >= 6, "{samples_before} samples");
    let (_, page) = app.get("/v1/log?kind=profile").await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);

    let (s, v) = app
        .get("/v1/fit?model_required_vram_mb=1000&context_tokens=4096")
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["verdict"], "fits", "{v}");
    assert!(!v["arithmetic"].as_array().unwrap().is_empty());
    let (_, v) = app.get("/v1/fit?model_required_vram_mb=200000").await;
    assert_eq!(v["verdict"], "does_not_fit", "{v}");
    let (s, v) = app.get("/v1/fit").await;
    assert_eq!(
        (s, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("model_required_vram_mb"))
    );
    let (s, v) = app.get("/v1/fit?model_required_vram_mb=-1").await;
    assert_eq!(
        (s, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("model_required_vram_mb"))
    );
    let (s, _) = app.get("/v1/fit?model_required_vram_mb=1&bogus=1").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // A CPU-only machine says so, and sizes its largest model from RAM (its models run
    // from RAM), saying so.
    let cpu = recorded_snapshot("cpu_only_16c_64gb_busy.json");
    app.state.pipeline.ingest_snapshot(cpu).await.unwrap();
    let (_, v) = app.get("/v1/profile").await;
    assert!(
        v["hardware"]["gpu_unavailable"]
            .as_str()
            .unwrap()
            .contains("no NVIDIA GPU"),
        "{v}"
    );
    let size = &v["profile"]["max_recommended_model_vram_mb"];
    assert!(size["value"].as_f64().is_some_and(|x| x > 0.0), "{v}");
    assert!(
        size["from"]
            .as_str()
            .unwrap()
            .starts_with("floor(usable RAM)"),
        "{v}"
    );
}

/// Issue 12: the service filled the profile's snapshot with the CPU load p95 of the latest
/// closed window and scaled concurrency down by it, so a machine busy generating (95% CPU)
/// recommended 1 session instead of 4 and the concurrency trigger fired because the runtime
/// was busy. The profile no longer reads the CPU load.
#[tokio::test]
async fn the_workloads_own_cpu_load_does_not_lower_concurrency() {
    let app = app();
    let start = now() - 5 * 60_000;
    let samples: Vec<Value> = (0..60)
        .map(|i| json!({"signal": "cpu_load_pct", "value": 95.0, "ts_ms": start + i * 5000}))
        .collect();
    let (s, v) = app.post("/v1/samples", json!({"samples": samples})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    app.state.pipeline.catch_up().await.unwrap();
    let (_, w) = app
        .get(&format!(
            "/v1/series?series=cpu_load_pct&from_ms={start}&to_ms={}&points=5",
            start + 300_000
        ))
        .await;
    let points = w["points"].as_array().unwrap();
    assert!(
        points.len() == 5 && points.iter().all(|p| p["max"].as_f64() == Some(95.0)),
        "the premise: five minutes of 95% CPU load stored: {w}"
    );
    let (s, v) = app
        .post(
            "/v1/events",
            json!({"events": [{"kind": "model_load", "model_id": "llama-3.1-8b-instruct",
                "model_required_vram_mb": 8704, "outcome": "ok"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    app.state.pipeline.catch_up().await.unwrap();
    let busy = recorded_snapshot("cpu_only_16c_64gb_busy.json");
    assert_eq!(busy.cpu_load_pct, Some(95.0));
    app.state.pipeline.ingest_snapshot(busy).await.unwrap();
    let (_, v) = app.get("/v1/profile").await;
    assert_eq!(
        v["profile"]["max_recommended_concurrency"]["value"],
        json!(4.0),
        "{v}"
    );
    assert!(v["hardware"].get("cpu_load_p95").is_none(), "{v}");
}

/// Only the signals the engine reads get time windows (`kora_policy::WINDOWED_SIGNALS`); every
/// signal is stored, and a sample of any signal moves the watermark that closes the windows.
#[tokio::test]
async fn time_windows_are_written_for_the_signals_the_engine_reads_only() {
    let app = app();
    let start = (now() - 10 * 60_000).div_euclid(60_000) * 60_000;
    // Three minutes of every signal at 5 s, then one CPU load sample two minutes later: it
    // alone moves the watermark past the third minute (plus the grace).
    let mut samples: Vec<Value> = Vec::new();
    for i in 0..36 {
        for signal in kora_model::Signal::ALL {
            let value = if signal.is_percent() { 40.0 } else { 3.0 };
            samples.push(
                json!({"signal": signal.as_str(), "value": value, "ts_ms": start + i * 5000}),
            );
        }
    }
    samples.push(json!({"signal": "cpu_load_pct", "value": 50.0, "ts_ms": start + 5 * 60_000}));
    let (s, v) = app.post("/v1/samples", json!({"samples": samples})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, w) = app.get("/v1/windows?kind=time&limit=1000").await;
    let mut got: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for w in w["windows"].as_array().unwrap() {
        got.entry(w["window"]["metric"].as_str().unwrap().to_owned())
            .or_default()
            .push(w["window"]["start_ms"].as_i64().unwrap());
    }
    let want: std::collections::BTreeMap<String, Vec<i64>> = kora_policy::WINDOWED_SIGNALS
        .iter()
        .map(|s| {
            let minutes = (0..3).rev().map(|m| start + m * 60_000).collect();
            (s.as_str().to_owned(), minutes)
        })
        .collect();
    assert_eq!(got, want, "{w}");
    for signal in kora_model::Signal::ALL {
        let (_, series) = app
            .get(&format!(
                "/v1/series?series={}&from_ms={start}&to_ms={}&points=1",
                signal.as_str(),
                start + 6 * 60_000
            ))
            .await;
        let stored = series["points"][0]["n"].as_u64();
        let want = if signal == kora_model::Signal::CpuLoadPct {
            37
        } else {
            36
        };
        assert_eq!(
            stored,
            Some(want),
            "{signal}: every sample is stored: {series}"
        );
    }
}

#[tokio::test]
async fn a_failed_model_load_fires_and_suggests_through_the_log() {
    let app = app();
    let (s, _) = app
        .post(
            "/v1/events",
            json!({"events": [{"kind": "model_load", "model_id": "llama-70b",
                               "model_required_vram_mb": 40000, "outcome": "failed"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    app.state.pipeline.catch_up().await.unwrap();
    let (_, firings) = app.get("/v1/log?kind=firing").await;
    let firings = firings["entries"].as_array().unwrap().clone();
    assert_eq!(firings.len(), 1, "{firings:?}");
    assert_eq!(firings[0]["category"], "model_fit");
    assert_eq!(firings[0]["scope"], "llama-70b");
    let (_, suggestions) = app.get("/v1/log?kind=suggestion").await;
    let suggestion = &suggestions["entries"][0];
    assert_eq!(suggestion["firing_id"], firings[0]["firing_id"]);
    assert_eq!(suggestion["ladder_step"], 1);
    assert!(
        suggestion["message"]
            .as_str()
            .unwrap()
            .starts_with("Local execution hit a limit: ")
    );
    // Catching up again derives nothing new.
    let before = app.counts().await;
    app.state.pipeline.catch_up().await.unwrap();
    assert_eq!(app.counts().await, before);
}

fn token_of(app: &App) -> String {
    app.state.config.token.expose().to_owned()
}

async fn send_json(
    app: &App,
    method: &str,
    path: &str,
    body: Value,
    headers: &[(&str, String)],
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", HOST)
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let (s, v, _) = app
        .send(req.body(Body::from(body.to_string())).unwrap())
        .await;
    (s, v)
}

/// A log with ids in every place an identifier can hide, and a suggestion with feedback.
async fn populated(app: &App) -> Vec<String> {
    let mut ids = Vec::new();
    let mut runs = Vec::new();
    for i in 0..10 {
        let mut r = run_json(&format!("secret-run-{i}"));
        r["session_id"] = json!("secret-session-1");
        r["budget_breach_count"] = json!(1);
        r["prompt_hash"] = json!(prompt_hash(&format!("secret prompt {i}")));
        ids.push(r["run_id"].as_str().unwrap().to_owned());
        ids.push(r["prompt_hash"].as_str().unwrap().to_owned());
        runs.push(r);
    }
    ids.push("secret-session-1".into());
    let (s, _) = app.post("/v1/runs", json!({ "runs": runs })).await;
    assert_eq!(s, StatusCode::OK);
    app.state.pipeline.catch_up().await.unwrap();
    let (_, v) = app.get("/v1/suggestions").await;
    let id = v["suggestions"][0]["suggestion"]["suggestion_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _) = app
        .post(
            &format!("/v1/suggestions/{id}/feedback"),
            json!({"action": "dismissed"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    app.state.pipeline.catch_up().await.unwrap();
    ids
}

#[tokio::test]
async fn product_metrics_count_from_the_log_and_say_none_yet() {
    let app = app();
    let (s, v) = app.get("/v1/metrics/product?range=all").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["upgrade_suggestion_count"], 0);
    assert!(v["suggestion_accept_rate"]["value"].is_null(), "{v}");
    populated(&app).await;
    let (_, v) = app.get("/v1/metrics/product?range=24h").await;
    assert_eq!(v["upgrade_suggestion_count"], 1, "{v}");
    assert_eq!(v["suggestion_dismiss_rate"]["value"], 1.0);
    assert_eq!(v["suggestion_accept_rate"]["value"], 0.0);
    assert_eq!(v["top_trigger_categories"][0]["category"], "reliability");
    let (s, v) = app.get("/v1/metrics/product?range=1y").await;
    assert_eq!(
        (s, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("range"))
    );
    let (s, _) = app.get("/v1/metrics/product?from_ms=10&to_ms=5").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

/// The text of `GET /metrics`, parsed.
async fn scrape(app: &App) -> (String, prometheus_parse::Scrape) {
    let req = Request::get("/metrics")
        .header("host", HOST)
        .body(Body::empty())
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    (text, scrape)
}

/// A counter's sample. (prometheus-parse reads the Prometheus text format, whose `# TYPE` line
/// names a counter with its `_total`; OpenMetrics names it without, so the parser sees an
/// untyped sample: the `# TYPE` line is checked on the text instead.)
fn counter(scrape: &prometheus_parse::Scrape, name: &str, model: Option<&str>) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get("model") == model)
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name} is not a counter: {other:?}"),
        })
}

#[tokio::test]
async fn cloud_runs_are_counted_listed_and_exported_as_a_count() {
    let app = app();
    let (_, scraped) = scrape(&app).await;
    assert_eq!(counter(&scraped, "kora_cloud_runs_total", None), Some(0.0));
    let t = now();
    let run = |id: &str, model: &str, substrate: &str, ts: i64, tokens: Option<(u64, u64)>| {
        let mut r = run_json(id);
        r["model_id"] = json!(model);
        r["substrate"] = json!(substrate);
        r["session_id"] = json!(format!("session-of-{id}"));
        r["ts_ms"] = json!(ts);
        r.as_object_mut().unwrap().remove("total_tokens");
        match tokens {
            Some((i, o)) => {
                r["tokens_in"] = json!(i);
                r["tokens_out"] = json!(o);
            }
            None => {
                r.as_object_mut().unwrap().remove("tokens_in");
                r.as_object_mut().unwrap().remove("tokens_out");
            }
        }
        r
    };
    let two_days_ago = t - 2 * 24 * 3600 * 1000;
    let runs = vec![
        run("l1", "local-8b", "local", t - 5000, Some((100, 10))),
        run("c1", "big-70b", "cloud", t - 4000, Some((1000, 200))),
        run("l2", "local-8b", "local", t - 3000, Some((100, 10))),
        run("c2", "big-70b", "cloud", t - 2000, Some((500, 100))),
        run("c3", "local-8b", "cloud", t - 1000, None),
        run("c0", "big-70b", "cloud", two_days_ago, Some((1, 1))),
    ];
    let (s, v) = app.post("/v1/runs", json!({ "runs": runs })).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // The product metrics: the range's cloud runs, their tokens, per model.
    let (s, m) = app.get("/v1/metrics/product?range=24h").await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(m["cloud_run_count"], 3, "{m}");
    assert_eq!(m["cloud_run_tokens"], 1800, "{m}");
    assert_eq!(m["cloud_runs_without_tokens"], 1, "{m}");
    assert_eq!(
        m["cloud_runs_by_model"],
        json!([
            {"model_id": "big-70b", "runs": 2, "tokens": 1800, "runs_without_tokens": 0},
            {"model_id": "local-8b", "runs": 1, "tokens": 0, "runs_without_tokens": 1},
        ])
    );
    let (_, m) = app.get("/v1/metrics/product?range=all").await;
    assert_eq!(m["cloud_run_count"], 4, "{m}");
    assert_eq!(m["cloud_runs_by_model"][0]["runs"], 3, "{m}");
    // Cloud runs are no evidence of a local limit: nothing fired.
    assert_eq!(m["firing_count"], 0, "{m}");

    // /metrics: counters, the total and per model.
    let (text, scraped) = scrape(&app).await;
    for family in [
        "kora_cloud_runs",
        "kora_cloud_run_tokens",
        "kora_cloud_runs_by_model",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} counter\n")),
            "{text}"
        );
    }
    assert_eq!(counter(&scraped, "kora_cloud_runs_total", None), Some(4.0));
    assert_eq!(
        counter(&scraped, "kora_cloud_run_tokens_total", None),
        Some(1802.0)
    );
    assert_eq!(
        counter(&scraped, "kora_cloud_runs_by_model_total", Some("big-70b")),
        Some(3.0)
    );
    assert_eq!(
        counter(&scraped, "kora_cloud_runs_by_model_total", Some("local-8b")),
        Some(1.0)
    );

    // The log lists them, newest first, with what the dashboards show.
    let (s, page) = app.get("/v1/log?kind=run&substrate=cloud&limit=2").await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let ids: Vec<&str> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["c0", "c3"], "{page}");
    let before = page["next_before"].as_u64().unwrap();
    let (_, page) = app
        .get(&format!("/v1/log?substrate=cloud&before={before}"))
        .await;
    let ids: Vec<&str> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["c2", "c1"], "{page}");
    assert_eq!(page["next_before"], Value::Null);
    let (_, page) = app.get("/v1/log?substrate=local").await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 2, "{page}");
    assert!(
        page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["substrate"] == "local")
    );
    for bad in [
        "/v1/log?substrate=moon",
        "/v1/log?kind=firing&substrate=cloud",
    ] {
        let (s, v) = app.get(bad).await;
        assert_eq!(
            (s, v["field"].clone()),
            (StatusCode::BAD_REQUEST, json!("substrate")),
            "{bad}: {v}"
        );
    }

    // More runs later are counted without reading the others again.
    let (s, _) = app
        .post(
            "/v1/runs",
            json!({"runs": [run("c4", "big-70b", "cloud", now(), Some((1, 1)))]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, m) = app.get("/v1/metrics/product?range=all").await;
    assert_eq!(m["cloud_run_count"], 5, "{m}");

    // The export: the count and the tokens, no model, session or run ids.
    let (_, preview) = app.get("/v1/export/preview").await;
    let bundle = &preview["bundle"];
    assert_eq!(bundle["all"]["cloud_run_count"], 5, "{bundle}");
    assert_eq!(bundle["all"]["cloud_run_tokens"], 1804, "{bundle}");
    assert_eq!(bundle["last_7d"]["cloud_run_count"], 5, "{bundle}");
    assert!(
        bundle["all"].get("cloud_runs_by_model").is_none(),
        "{bundle}"
    );
    let bytes = preview["bytes"].as_str().unwrap();
    for secret in ["big-70b", "local-8b", "session-of-c1", "c1\""] {
        assert!(
            !bytes.contains(secret),
            "the bundle leaks {secret}: {bytes}"
        );
    }
    assert!(
        preview["bundle"]["as_of_seq"].as_u64().unwrap() >= 7,
        "the bundle covers the cloud runs: {bundle}"
    );
}

#[tokio::test]
async fn a_reliability_suggestion_names_its_stronger_local_model_on_the_ladder() {
    let app = app();
    populated(&app).await;
    let (_, v) = app.get("/v1/suggestions?category=reliability").await;
    let item = &v["suggestions"][0];
    assert_eq!(item["suggestion"]["ladder_step"], 1, "{item}");
    assert_eq!(
        item["ladder"][0]["option_id"], "stronger_local_model",
        "{item}"
    );
    assert_eq!(item["ladder"][0]["offered"], true, "{item}");
    let label = item["ladder"][0]["label"].as_str().unwrap();
    assert!(label.contains("stronger local model"), "{label}");
    assert!(!label.contains("smaller"), "{label}");
    assert_eq!(item["ladder"][2]["applies"], false, "{item}");
}

#[tokio::test]
async fn consent_needs_the_token_and_a_local_origin() {
    let app = app();
    let token = token_of(&app);
    let on = json!({"enabled": true});
    let before = app.counts().await;
    for (headers, status) in [
        (vec![], StatusCode::UNAUTHORIZED),
        (
            vec![("authorization", "Bearer nope".to_owned())],
            StatusCode::UNAUTHORIZED,
        ),
        (
            vec![("authorization", format!("Bearer {}", "0".repeat(64)))],
            StatusCode::UNAUTHORIZED,
        ),
        (
            vec![("authorization", token.clone())],
            StatusCode::UNAUTHORIZED,
        ),
        (
            vec![
                ("authorization", format!("Bearer {token}")),
                ("origin", "http://evil.example".to_owned()),
            ],
            StatusCode::FORBIDDEN,
        ),
    ] {
        let (s, v) = send_json(&app, "PUT", "/v1/consent", on.clone(), &headers).await;
        assert_eq!(s, status, "{headers:?}: {v}");
    }
    assert_eq!(
        app.counts().await,
        before,
        "a refused consent change stored something"
    );
    let (_, v) = app.get("/v1/consent").await;
    assert_eq!(v["export_enabled"], false);
    let auth = [("authorization", format!("Bearer {token}"))];
    let (s, v) = send_json(
        &app,
        "PUT",
        "/v1/consent",
        json!({"enabled": true, "actor": "cli"}),
        &auth,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["export_enabled"], true);
    assert_eq!(v["history"][0]["actor"], "cli");
    assert!(
        v["history"][0]["shown"]
            .as_str()
            .unwrap()
            .contains("aggregated")
    );
    let (s, v) = send_json(
        &app,
        "PUT",
        "/v1/consent",
        json!({"enabled": true, "scope": "everything"}),
        &auth,
    )
    .await;
    assert_eq!(
        (s, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("scope"))
    );
    let (_, v) = send_json(&app, "PUT", "/v1/consent", json!({"enabled": false}), &auth).await;
    assert_eq!(v["export_enabled"], false);
    assert_eq!(v["history"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn export_is_refused_without_consent_and_equals_the_preview() {
    let app = app();
    let ids = populated(&app).await;
    let token = token_of(&app);
    let auth = [("authorization", format!("Bearer {token}"))];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.json");
    let to_file = json!({"to": "file", "path": path.to_str().unwrap()});
    let (s, v) = send_json(&app, "POST", "/v1/export", to_file.clone(), &auth).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, _) = send_json(&app, "POST", "/v1/export", to_file.clone(), &[]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let mut foreign = auth.to_vec();
    foreign.push(("origin", "http://evil.example".to_owned()));
    let (s, _) = send_json(
        &app,
        "PUT",
        "/v1/consent",
        json!({"enabled": true}),
        &foreign,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a foreign page turned export on");
    let (s, _) = send_json(&app, "POST", "/v1/export", to_file.clone(), &foreign).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(!path.exists());
    let (s, _) = send_json(&app, "PUT", "/v1/consent", json!({"enabled": true}), &auth).await;
    assert_eq!(s, StatusCode::OK);
    let (s, preview) = app.get("/v1/export/preview").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        preview["changed_since_last_export"]["last_export"],
        Value::Null
    );
    let (s, v) = send_json(&app, "POST", "/v1/export", to_file.clone(), &auth).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(
        written == preview["bytes"].as_str().unwrap(),
        "the export differs from its preview"
    );
    assert_eq!(v["sha256"], preview["sha256"]);
    for id in &ids {
        assert!(!written.contains(id.as_str()), "the bundle leaks {id}");
    }
    assert!(!written.contains("ram_free_mb"), "no raw samples");
    // An existing file is never replaced, and the export is recorded.
    let (s, _) = send_json(&app, "POST", "/v1/export", to_file, &auth).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (_, exports) = app.get("/v1/log?kind=export").await;
    assert_eq!(exports["entries"].as_array().unwrap().len(), 1);
    let (_, preview) = app.get("/v1/export/preview").await;
    assert_eq!(preview["changed_since_last_export"]["same_as_last"], true);
    let (s, _) = send_json(
        &app,
        "POST",
        "/v1/export",
        json!({"to": "file", "path": "relative.json"}),
        &auth,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn export_pushes_otlp_to_a_collector_on_loopback() {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use prost::Message;

    let app = app();
    let ids = populated(&app).await;
    let auth = [("authorization", format!("Bearer {}", token_of(&app)))];
    send_json(&app, "PUT", "/v1/consent", json!({"enabled": true}), &auth).await;
    // A small OTLP/HTTP receiver on a real loopback socket.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Vec<u8>)>();
    let receiver = axum::Router::new().route(
        "/v1/metrics",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let tx = tx.clone();
                async move {
                    let ct = headers["content-type"].to_str().unwrap_or("").to_owned();
                    let _ = tx.send((ct, body.to_vec()));
                    StatusCode::OK
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/v1/metrics", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await });

    let (s, v) = send_json(
        &app,
        "POST",
        "/v1/export",
        json!({"to": "otlp", "endpoint": endpoint, "dry_run": true}),
        &auth,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["sent"], false);
    assert!(rx.try_recv().is_err(), "a dry run sent something");
    let (_, exports) = app.get("/v1/log?kind=export").await;
    assert!(
        exports["entries"].as_array().unwrap().is_empty(),
        "a dry run was recorded"
    );

    let (s, v) = send_json(
        &app,
        "POST",
        "/v1/export",
        json!({"to": "otlp", "endpoint": endpoint}),
        &auth,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (ct, body) = rx.recv().await.unwrap();
    assert_eq!(ct, "application/x-protobuf");
    let request = ExportMetricsServiceRequest::decode(&body[..]).unwrap();
    let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
    let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
    assert!(
        names.contains(&"kora.upgrade_suggestion_count"),
        "{names:?}"
    );
    assert!(names.contains(&"kora.trigger_firings"), "{names:?}");
    let text = format!("{request:?}");
    for id in &ids {
        assert!(!text.contains(id.as_str()), "the OTLP payload leaks {id}");
    }
    let (_, exports) = app.get("/v1/log?kind=export").await;
    assert_eq!(
        exports["entries"][0]["destination"],
        format!("otlp:{endpoint}")
    );
}

/// The value of the sample `name` whose labels include `labels` (a counter, gauge or untyped
/// sample; see [`counter`] on OpenMetrics counters).
fn value_of(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name} is not a single value: {other:?}"),
        })
}

/// The cumulative buckets `(le, count)` of the histogram `name` with `labels`.
fn buckets_of(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Vec<(f64, f64)> {
    let s = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no histogram {name} {labels:?}"));
    match &s.value {
        prometheus_parse::Value::Histogram(h) => h.iter().map(|b| (b.less_than, b.count)).collect(),
        other => panic!("{name} is not a histogram: {other:?}"),
    }
}

/// The values of `label` across the samples of `name`.
fn label_values<'a>(
    scrape: &'a prometheus_parse::Scrape,
    name: &str,
    label: &str,
) -> std::collections::BTreeSet<&'a str> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter_map(|s| s.labels.get(label))
        .collect()
}

/// The probe's reading at tick `tick` (from 1) of a recorded fixture.
fn snapshot_at(name: &str, tick: usize) -> HardwareSnapshot {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../probe/tests/fixtures")
        .join(name);
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let recording = kora_probe::Recording::from_json(&fixture["recording"].to_string()).unwrap();
    let mut probe = kora_probe::Probe::from_recording(recording);
    let t = now();
    (1..=tick)
        .map(|i| probe.snapshot(t - 1000 * (tick - i) as i64))
        .last()
        .unwrap()
}

#[tokio::test]
async fn prometheus_exposition_parses() {
    let app = app();
    populated(&app).await;
    let (text, scrape) = scrape(&app).await;
    // Counts that only grow are counters (OpenMetrics: `# TYPE x counter`, sample `x_total`).
    for family in [
        "kora_upgrade_suggestions",
        "kora_suggestions_dismissed",
        "kora_trigger_firings",
        "kora_run_tokens_in",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} counter\n")),
            "{family}: {text}"
        );
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(
        counter(&scrape, "kora_upgrade_suggestions_total", None),
        Some(1.0)
    );
    assert_eq!(
        counter(&scrape, "kora_suggestions_dismissed_total", None),
        Some(1.0)
    );
    let reliability = value_of(
        &scrape,
        "kora_trigger_firings_total",
        &[("category", "reliability")],
    );
    assert!(reliability >= Some(1.0), "{text}");
    assert_eq!(
        value_of(
            &scrape,
            "kora_trigger_firings_total",
            &[("category", "model_fit")]
        ),
        Some(0.0)
    );
    // The store's size stays a gauge.
    assert!(text.contains("# TYPE kora_log_records gauge\n"), "{text}");
    // No probe reading yet: no hardware or profile family, rather than zeros.
    for absent in [
        "kora_ram_free_bytes",
        "kora_gpu_vram_free_bytes",
        "kora_profile_",
    ] {
        assert!(!text.contains(absent), "{absent} without a reading: {text}");
    }
}

#[tokio::test]
async fn prometheus_has_per_model_run_histograms_and_token_counters() {
    let app = app();
    populated(&app).await;
    let mut cloud = run_json("cloud-1");
    cloud["substrate"] = json!("cloud");
    cloud["model_latency_ms"] = json!(40.0);
    cloud["total_latency_ms"] = json!(45.0);
    cloud["queue_wait_ms"] = json!(7.0);
    let (s, v) = app.post("/v1/runs", json!({ "runs": [cloud] })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (text, scrape) = scrape(&app).await;
    assert!(
        text.contains("# TYPE kora_run_model_latency_seconds histogram\n"),
        "{text}"
    );
    assert!(
        text.contains("# UNIT kora_run_model_latency_seconds seconds\n"),
        "{text}"
    );
    // The ten local runs of populated(): 2100.5 ms of model latency, 2600 ms in all.
    let local = [("model", "llama-3-8b-q4"), ("substrate", "local")];
    let b = buckets_of(&scrape, "kora_run_model_latency_seconds", &local);
    assert_eq!(
        b.len(),
        kora_window::LATENCY_BUCKETS_S.len() + 1,
        "every bound and +Inf: {b:?}"
    );
    for (le, n) in &b {
        assert_eq!(*n, if *le < 2.1005 { 0.0 } else { 10.0 }, "le {le}: {b:?}");
    }
    assert_eq!(
        value_of(&scrape, "kora_run_model_latency_seconds_count", &local),
        Some(10.0)
    );
    let sum = value_of(&scrape, "kora_run_model_latency_seconds_sum", &local).unwrap();
    assert!((sum - 21.005).abs() < 1e-9, "{sum}");
    let total = buckets_of(&scrape, "kora_run_total_latency_seconds", &local);
    assert_eq!(total.iter().find(|(le, _)| *le == 2.0).unwrap().1, 0.0);
    assert_eq!(total.iter().find(|(le, _)| *le == 3.0).unwrap().1, 10.0);
    assert_eq!(
        value_of(&scrape, "kora_run_tokens_in_total", &local),
        Some(15_000.0)
    );
    assert_eq!(
        value_of(&scrape, "kora_run_tokens_out_total", &local),
        Some(3_000.0)
    );
    assert_eq!(
        value_of(&scrape, "kora_run_budget_breaches_total", &local),
        Some(10.0)
    );
    // The cloud run: its own series, never hidden, and the only queue wait.
    let cloud = [("model", "llama-3-8b-q4"), ("substrate", "cloud")];
    let b = buckets_of(&scrape, "kora_run_model_latency_seconds", &cloud);
    assert_eq!(b[0], (0.05, 1.0), "{b:?}");
    let q = buckets_of(&scrape, "kora_run_queue_wait_seconds", &cloud);
    assert_eq!(
        q.iter().find(|(le, _)| *le == 0.01).unwrap().1,
        1.0,
        "{q:?}"
    );
    assert_eq!(
        q.iter().find(|(le, _)| *le == 0.005).unwrap().1,
        0.0,
        "{q:?}"
    );
    assert!(
        !text.contains(
            "kora_run_queue_wait_seconds_count{model=\"llama-3-8b-q4\",substrate=\"local\"}"
        ),
        "runs without a queue wait have no queue-wait series: {text}"
    );
    assert_eq!(
        value_of(&scrape, "kora_run_tokens_in_total", &cloud),
        Some(1_500.0)
    );
}

#[tokio::test]
async fn prometheus_shows_each_trigger_state_as_alerts_does() {
    let app = app();
    populated(&app).await;
    let (_, scrape) = scrape(&app).await;
    let (_, v) = app.get("/v1/triggers").await;
    let triggers = v["triggers"].as_array().unwrap();
    assert!(triggers.len() >= 5, "{v}");
    for t in triggers {
        let labels = [
            ("category", t["category"].as_str().unwrap()),
            ("scope", t["scope"].as_str().unwrap()),
            ("state", t["state"].as_str().unwrap()),
        ];
        assert_eq!(
            value_of(&scrape, "kora_trigger_state", &labels),
            Some(1.0),
            "{labels:?}"
        );
    }
    let series = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "kora_trigger_state")
        .count();
    assert_eq!(series, triggers.len(), "one series per category and scope");
    assert!(
        triggers
            .iter()
            .any(|t| t["category"] == "reliability" && t["state"] == "firing"),
        "{v}"
    );
}

#[tokio::test]
async fn prometheus_shows_the_probe_readings_and_the_profile_and_omits_what_is_unavailable() {
    let app = app();
    // Two GPUs; at the third tick gpu1 is lost.
    let snapshot = snapshot_at("two_gpus.json", 3);
    assert!(snapshot.gpus[1].vram_free_mb.is_none(), "{snapshot:?}");
    app.state
        .pipeline
        .ingest_snapshot(snapshot.clone())
        .await
        .unwrap();
    let (text, scrape) = scrape(&app).await;
    let mb = 1_048_576.0;
    let gpu0 = &snapshot.gpus[0];
    assert_eq!(
        value_of(&scrape, "kora_gpu_vram_total_bytes", &[("gpu", "0")]),
        Some(gpu0.vram_total_mb.unwrap() * mb)
    );
    assert_eq!(
        value_of(&scrape, "kora_gpu_vram_free_bytes", &[("gpu", "0")]),
        Some(gpu0.vram_free_mb.unwrap() * mb)
    );
    assert_eq!(
        value_of(&scrape, "kora_gpu_vram_free_bytes", &[("gpu", "1")]),
        None,
        "a lost GPU has no reading, not 0: {text}"
    );
    assert_eq!(
        value_of(&scrape, "kora_ram_total_bytes", &[]),
        Some(snapshot.ram_total_mb.unwrap() * mb)
    );
    assert_eq!(
        value_of(&scrape, "kora_ram_free_bytes", &[]),
        Some(snapshot.ram_free_mb.unwrap() * mb)
    );
    assert_eq!(value_of(&scrape, "kora_cpu_cores", &[]), Some(32.0));
    assert_eq!(value_of(&scrape, "kora_cpu_load_ratio", &[]), Some(0.12));
    assert_eq!(
        value_of(&scrape, "kora_hardware_reading_timestamp_seconds", &[]),
        Some(snapshot.ts_ms as f64 / 1000.0)
    );
    let (_, p) = app.get("/v1/profile").await;
    let profile = &p["profile"];
    assert_eq!(
        value_of(&scrape, "kora_profile_max_model_vram_bytes", &[]),
        Some(
            profile["max_recommended_model_vram_mb"]["value"]
                .as_f64()
                .unwrap()
                * mb
        ),
        "{p}"
    );
    assert_eq!(
        value_of(&scrape, "kora_profile_max_context_tokens", &[]),
        profile["max_recommended_context_tokens"]["value"].as_f64(),
        "{p}"
    );
    assert_eq!(
        value_of(&scrape, "kora_profile_max_concurrency", &[]),
        profile["max_recommended_concurrency"]["value"].as_f64(),
        "{p}"
    );
}

#[tokio::test]
async fn prometheus_has_no_gpu_family_on_a_cpu_only_machine() {
    let app = app();
    let snapshot = snapshot_at("cpu_only.json", 1);
    app.state.pipeline.ingest_snapshot(snapshot).await.unwrap();
    let (text, scrape) = scrape(&app).await;
    assert!(!text.contains("kora_gpu_"), "{text}");
    assert!(
        value_of(&scrape, "kora_ram_total_bytes", &[]).is_some(),
        "{text}"
    );
}

#[tokio::test]
async fn prometheus_model_labels_are_bounded() {
    let app = app();
    let runs: Vec<Value> = (0..kora_window::MAX_MODEL_LABELS + 5)
        .map(|i| {
            let mut r = run_json(&format!("r{i}"));
            r["model_id"] = json!(format!("model-{i:03}"));
            r
        })
        .collect();
    let (s, v) = app.post("/v1/runs", json!({ "runs": runs })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, scrape) = scrape(&app).await;
    let models = label_values(&scrape, "kora_run_tokens_in_total", "model");
    assert_eq!(
        models.len(),
        kora_window::MAX_MODEL_LABELS + 1,
        "{models:?}"
    );
    assert!(models.contains("model-000") && models.contains("other"));
    assert!(!models.contains(format!("model-{:03}", kora_window::MAX_MODEL_LABELS).as_str()));
    let other = [("model", "other"), ("substrate", "local")];
    assert_eq!(
        value_of(&scrape, "kora_run_total_latency_seconds_count", &other),
        Some(5.0)
    );
    // The trigger scopes of unlabelled models are counted under `other` too.
    let scopes = label_values(&scrape, "kora_trigger_state", "scope");
    assert!(
        scopes.len() <= kora_window::MAX_MODEL_LABELS + 3,
        "{scopes:?}"
    );
    let latency_other: f64 = scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == "kora_trigger_state"
                && s.labels.get("category") == Some("latency")
                && s.labels.get("scope") == Some("other")
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            ref o => panic!("{o:?}"),
        })
        .sum();
    assert_eq!(
        latency_other, 5.0,
        "five models without a label of their own"
    );
}

/// Every route of the service, with a method it answers to.
const ROUTES: [(&str, &str); 22] = [
    ("GET", "/"),
    ("GET", "/v1/health"),
    ("GET", "/v1/log"),
    ("GET", "/v1/profile"),
    ("GET", "/v1/fit?model_required_vram_mb=1"),
    ("GET", "/v1/triggers"),
    ("GET", "/v1/thresholds"),
    ("GET", "/v1/suggestions"),
    ("POST", "/v1/suggestions/s-1-latency/feedback"),
    ("PUT", "/v1/cloud/readiness"),
    ("GET", "/v1/windows"),
    ("GET", "/v1/series"),
    ("GET", "/v1/metrics/product"),
    ("GET", "/v1/consent"),
    ("PUT", "/v1/consent"),
    ("GET", "/v1/export/preview"),
    ("POST", "/v1/export"),
    ("GET", "/metrics"),
    ("POST", "/v1/samples"),
    ("POST", "/v1/runs"),
    ("POST", "/v1/events"),
    ("GET", "/dashboards/app.js"),
];

#[tokio::test]
async fn hostile_hosts_are_refused_on_every_route() {
    let app = app();
    let token = token_of(&app);
    let hostile = [
        "evil.example:7433",
        "127.0.0.1:7434",
        "localhost.:7433",
        "127.0.0.1.nip.io:7433",
        "[::1]:80",
        "",
    ];
    let mut bypasses = 0;
    let mut checked = 0;
    for (method, path) in ROUTES {
        for host in hostile {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header("host", host)
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::from(r#"{"enabled": true}"#))
                .unwrap();
            let (s, _, _) = app.send(req).await;
            checked += 1;
            if s != StatusCode::FORBIDDEN {
                bypasses += 1;
                eprintln!("{method} {path} with Host {host:?} answered {s}");
            }
        }
    }
    println!(
        "hostile Host values: {checked} requests over {} routes, {bypasses} bypasses",
        ROUTES.len()
    );
    assert_eq!(bypasses, 0);
    assert_eq!(
        app.counts().await,
        (0, 0),
        "a refused request changed state"
    );
}

fn deep_json(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// MessagePack: `depth` nested one-element arrays around nil.
fn deep_msgpack(depth: usize) -> Vec<u8> {
    let mut v = vec![0x91u8; depth];
    v.push(0xc0);
    v
}

fn mp_str(s: &str) -> Vec<u8> {
    let mut v = vec![0xa0 | s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

/// `{"samples": [{"signal": "ram_free_mb", "value": 1.0, <key>: <value>}]}` in MessagePack.
fn mp_sample_with(key: &str, value: &[u8]) -> Vec<u8> {
    let mut v = vec![0x81];
    v.extend(mp_str("samples"));
    v.push(0x91);
    v.push(0x83);
    v.extend(mp_str("signal"));
    v.extend(mp_str("ram_free_mb"));
    v.extend(mp_str("value"));
    v.push(0xcb);
    v.extend(1.0f64.to_be_bytes());
    v.extend(mp_str(key));
    v.extend_from_slice(value);
    v
}

#[tokio::test]
async fn hostile_inputs_are_refused_without_a_crash_or_a_5xx() {
    let app = app();
    let mut corpus: Vec<(String, &str, &str, Vec<u8>)> = Vec::new();
    let mut add = |name: String, path: &'static str, ct: &'static str, body: Vec<u8>| {
        corpus.push((name, path, ct, body));
    };
    let json = "application/json";
    let mp = "application/msgpack";
    for depth in [10, 100, 1_000, 10_000, 100_000] {
        let deep = deep_json(depth);
        add(
            format!("json {depth} deep in samples"),
            "/v1/samples",
            json,
            format!(r#"{{"samples":{deep}}}"#).into_bytes(),
        );
        add(
            format!("json {depth} deep in an unknown field"),
            "/v1/samples",
            json,
            format!(r#"{{"samples":[{{"signal":"ram_free_mb","value":1,"x":{deep}}}]}}"#)
                .into_bytes(),
        );
        add(
            format!("json {depth} deep in a tagged event"),
            "/v1/events",
            json,
            format!(r#"{{"events":[{{"kind":"session_started","session_id":"s","x":{deep}}}]}}"#)
                .into_bytes(),
        );
        add(
            format!("json {depth} deep as the session id"),
            "/v1/events",
            json,
            format!(r#"{{"events":[{{"session_id":{deep},"kind":"session_started"}}]}}"#)
                .into_bytes(),
        );
        let mut b = vec![0x81];
        b.extend(mp_str("samples"));
        b.extend(deep_msgpack(depth));
        add(
            format!("msgpack {depth} deep in samples"),
            "/v1/samples",
            mp,
            b,
        );
        add(
            format!("msgpack {depth} deep in an unknown field"),
            "/v1/samples",
            mp,
            mp_sample_with("x", &deep_msgpack(depth)),
        );
        add(
            format!("msgpack {depth} deep in a known field"),
            "/v1/samples",
            mp,
            mp_sample_with("model_id", &deep_msgpack(depth)),
        );
    }
    // Array headers that lie about their length.
    let mut b = vec![0x81];
    b.extend(mp_str("samples"));
    b.extend([0xdd, 0xff, 0xff, 0xff, 0xff]);
    add(
        "msgpack array32 of 4 billion, empty".into(),
        "/v1/samples",
        mp,
        b,
    );
    let mut b = vec![0x81];
    b.extend(mp_str("samples"));
    b.extend([0xdc, 0xff, 0xff]);
    b.extend(std::iter::repeat_n(0x80u8, 10));
    add(
        "msgpack array16 of 65535 with 10 items".into(),
        "/v1/samples",
        mp,
        b,
    );
    add(
        "msgpack map32 of 4 billion".into(),
        "/v1/samples",
        mp,
        vec![0xdf, 0xff, 0xff, 0xff, 0xff],
    );
    add(
        "msgpack str32 of 4 GB".into(),
        "/v1/samples",
        mp,
        mp_sample_with("model_id", &[0xdb, 0xff, 0xff, 0xff, 0xff, b'a']),
    );
    add(
        "msgpack bin32 of 4 GB".into(),
        "/v1/samples",
        mp,
        mp_sample_with("model_id", &[0xc6, 0xff, 0xff, 0xff, 0xff]),
    );
    // Non-finite numbers, counts out of range, timestamps out of range.
    for (name, v) in [
        ("NaN", f64::NAN),
        ("inf", f64::INFINITY),
        ("-inf", f64::NEG_INFINITY),
    ] {
        let mut b = vec![0xcb];
        b.extend(v.to_be_bytes());
        add(
            format!("msgpack {name} as ts_ms"),
            "/v1/samples",
            mp,
            mp_sample_with("ts_ms", &b),
        );
    }
    let run = |field: &str, raw: &str| {
        let mut r = run_json("hostile");
        r[field] = json!(0);
        r.to_string()
            .replace(&format!("\"{field}\":0"), &format!("\"{field}\":{raw}"))
    };
    for (field, raw) in [
        ("validation_retry_count", "-1"),
        ("validation_retry_count", "4294967296"),
        ("budget_breach_count", "1e30"),
        ("context_tokens", "18446744073709551616"),
        ("context_tokens", "-9223372036854775808"),
        ("tokens_in", "1.5"),
        ("model_latency_ms", "1e400"),
        ("ts_ms", "946684799999"),
        ("ts_ms", "99999999999999999"),
        ("ts_ms", "-1"),
    ] {
        add(
            format!("run {field} = {raw}"),
            "/v1/runs",
            json,
            format!(r#"{{"runs":[{}]}}"#, run(field, raw)).into_bytes(),
        );
    }
    // Duplicate keys, invalid UTF-8, wrong shapes.
    add(
        "duplicate batch key".into(),
        "/v1/samples",
        json,
        br#"{"samples":[],"samples":[{"signal":"ram_free_mb","value":1}]}"#.to_vec(),
    );
    add(
        "duplicate record key".into(),
        "/v1/samples",
        json,
        br#"{"samples":[{"signal":"ram_free_mb","value":1,"value":2}]}"#.to_vec(),
    );
    let mut b = br#"{"samples":[{"signal":"ram_free_mb","value":1,"model_id":""#.to_vec();
    b.extend([0xff, 0xfe]);
    b.extend(br#""}]}"#);
    add("invalid UTF-8 in JSON".into(), "/v1/samples", json, b);
    add(
        "invalid UTF-8 in MessagePack".into(),
        "/v1/samples",
        mp,
        mp_sample_with("model_id", &[0xa2, 0xff, 0xfe]),
    );
    add("empty body".into(), "/v1/runs", json, Vec::new());
    add("empty msgpack".into(), "/v1/runs", mp, Vec::new());
    add(
        "truncated msgpack".into(),
        "/v1/samples",
        mp,
        mp_sample_with("x", &[])[..20].to_vec(),
    );
    add(
        "JSON sent as msgpack".into(),
        "/v1/samples",
        mp,
        br#"{"samples":[]}"#.to_vec(),
    );
    add(
        "msgpack sent as JSON".into(),
        "/v1/samples",
        json,
        mp_sample_with("x", &[0xc0]),
    );
    add("a number".into(), "/v1/events", json, b"42".to_vec());
    add("null".into(), "/v1/events", json, b"null".to_vec());
    add(
        "text/plain".into(),
        "/v1/samples",
        "text/plain",
        br#"{"samples":[{"signal":"ram_free_mb","value":1}]}"#.to_vec(),
    );
    add(
        "feedback with a deep body".into(),
        "/v1/suggestions/s-1/feedback",
        json,
        format!(r#"{{"action":{}}}"#, deep_json(100_000)).into_bytes(),
    );
    add("readiness with a wrong type".into(), "/v1/cloud/readiness", json, br#"{"plugin_installed":"yes","network_available":true,"authenticated":true,"credits_available":true}"#.to_vec());

    let (mut crashes_or_5xx, mut accepted) = (0, 0);
    for (name, path, ct, body) in &corpus {
        let method = if *path == "/v1/cloud/readiness" {
            "PUT"
        } else {
            "POST"
        };
        let req = Request::builder()
            .method(method)
            .uri(*path)
            .header("host", HOST)
            .header("content-type", *ct)
            .body(Body::from(body.clone()))
            .unwrap();
        let (s, v, _) = app.send(req).await;
        if s.is_server_error() {
            crashes_or_5xx += 1;
            eprintln!("{name}: {s} {v}");
        } else if s.is_success() {
            accepted += 1;
            eprintln!("{name}: accepted {v}");
        }
    }
    println!(
        "hostile corpus: {} inputs in both encodings, {crashes_or_5xx} 5xx, {accepted} accepted, records stored: {:?}",
        corpus.len(),
        app.counts().await
    );
    assert_eq!(crashes_or_5xx, 0);
    assert_eq!(accepted, 0);
    assert_eq!(
        app.counts().await,
        (0, 0),
        "a refused batch stored something"
    );
}

#[tokio::test]
async fn foreign_origins_and_simple_content_types_are_refused_on_every_write() {
    let app = app();
    let token = token_of(&app);
    let writes: Vec<(&str, &str)> = ROUTES
        .iter()
        .copied()
        .filter(|(m, _)| *m != "GET")
        .collect();
    let mut attempts: Vec<(Vec<(&str, String)>, &str)> = Vec::new();
    for origin in [
        "http://evil.example",
        "null",
        "http://127.0.0.1:9999",
        "https://127.0.0.1:7433",
    ] {
        attempts.push((vec![("origin", origin.to_owned())], "application/json"));
    }
    attempts.push((
        vec![("sec-fetch-site", "cross-site".to_owned())],
        "application/json",
    ));
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        attempts.push((vec![], ct));
    }
    let (mut bypasses, mut checked) = (0, 0);
    for (method, path) in &writes {
        for (headers, ct) in &attempts {
            let mut req = Request::builder()
                .method(*method)
                .uri(*path)
                .header("host", HOST)
                .header("content-type", *ct)
                .header("authorization", format!("Bearer {token}"));
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            let body = r#"{"enabled": true, "samples": [{"signal": "ram_free_mb", "value": 1}]}"#;
            let (s, _, _) = app.send(req.body(Body::from(body)).unwrap()).await;
            checked += 1;
            if !matches!(
                s,
                StatusCode::FORBIDDEN | StatusCode::UNSUPPORTED_MEDIA_TYPE
            ) {
                bypasses += 1;
                eprintln!("{method} {path} {headers:?} {ct}: {s}");
            }
        }
    }
    println!(
        "foreign writes: {checked} attempts over {} write routes, {bypasses} bypasses",
        writes.len()
    );
    assert_eq!(bypasses, 0);
    assert_eq!(app.counts().await, (0, 0));
    let (_, consent) = app.get("/v1/consent").await;
    assert_eq!(consent["export_enabled"], false);
}

#[tokio::test]
async fn beyond_loopback_every_route_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::open(&dir.path().join("t.redb"), PipelineOptions::default()).unwrap();
    let mut state = AppState::new(
        Arc::new(pipeline),
        Config {
            token: kora_server::token::Token::load_or_create(dir.path()).unwrap(),
            data_dir: dir.path().to_owned(),
            hosts: HostPolicy {
                port: 7433,
                extra_names: vec!["telemetry.lan".into()],
            },
        },
    );
    state.token_everywhere = true;
    let token = state.config.token.expose().to_owned();
    let router = kora_server::router(state);
    for (method, path) in ROUTES {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "telemetry.lan:7433")
            .body(Body::empty())
            .unwrap();
        let status = router.clone().oneshot(req).await.unwrap().status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    let req = Request::get("/v1/health")
        .header("host", "telemetry.lan:7433")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(router.oneshot(req).await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn a_wrong_method_is_a_json_405_with_allow() {
    let app = app();
    let req = Request::delete("/v1/health")
        .header("host", HOST)
        .body(Body::empty())
        .unwrap();
    let (s, v, headers) = app.send(req).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{v}");
    assert_eq!(v["error"], "method_not_allowed", "{v}");
    assert_eq!(headers["allow"], "GET,HEAD");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let req = Request::get("/v1/samples")
        .header("host", HOST)
        .body(Body::empty())
        .unwrap();
    let (s, v, headers) = app.send(req).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{v}");
    assert_eq!(headers["allow"], "POST");
    // An unknown path stays a 404.
    let (s, v) = app.get("/v1/nothing").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"], "not_found");
}

/// Any i64 may arrive as a series range: the extremes are a 400 naming `from_ms`, not an
/// arithmetic overflow (found by schemathesis).
#[tokio::test]
async fn series_ranges_at_the_i64_extremes_are_refused() {
    let app = app();
    let (min, max) = (i64::MIN, i64::MAX);
    for query in [
        format!("from_ms={min}&points=1&series="),
        format!("to_ms={min}&series=cpu_load_pct"),
        format!("from_ms={min}&to_ms={max}&series=cpu_load_pct"),
        format!("from_ms={min}"),
    ] {
        let (s, v) = app.get(&format!("/v1/series?{query}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {v}");
        assert_eq!(v["field"], "from_ms", "{query}: {v}");
    }
    // The parameters are checked without `series` too (found by schemathesis).
    for points in ["0", "2001"] {
        let (s, v) = app.get(&format!("/v1/series?points={points}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "points={points}: {v}");
        assert_eq!(v["field"], "points", "{v}");
    }
    for query in [
        format!("to_ms={max}&series=cpu_load_pct"),
        format!("from_ms={}&to_ms={max}&series=x", max - 1),
        format!("to_ms={}&series=x", min + 1),
    ] {
        let (s, v) = app.get(&format!("/v1/series?{query}")).await;
        assert_eq!(s, StatusCode::OK, "{query}: {v}");
    }
}

/// MessagePack is decoded as strictly as the same document in JSON (found by schemathesis:
/// `{"to": 0, "path": ...}` exported to a file). Each body below was accepted before.
#[tokio::test]
async fn messagepack_compact_forms_and_trailing_bytes_are_refused() {
    let app = app();
    let mut run = run_json("r-compact");
    run["substrate"] = json!(1);
    let concatenated = {
        let one = json!({"samples": [{"signal": "ram_free_mb", "value": 1.0}]});
        let mut b = rmp_serde::to_vec_named(&one).unwrap();
        b.extend(rmp_serde::to_vec_named(&one).unwrap());
        b
    };
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "a variant by index",
            "/v1/runs",
            rmp_serde::to_vec_named(&json!({ "runs": [run] })).unwrap(),
            "runs[0].substrate",
        ),
        (
            "a signal by index",
            "/v1/samples",
            rmp_serde::to_vec_named(&json!({"samples": [{"signal": 0, "value": 1.0}]})).unwrap(),
            "samples[0].signal",
        ),
        (
            "an event kind by index",
            "/v1/events",
            rmp_serde::to_vec_named(&json!({"events": [{"kind": 3, "session_id": "s"}]})).unwrap(),
            "events[0].kind",
        ),
        (
            "a sample as a positional array",
            "/v1/samples",
            rmp_serde::to_vec_named(&json!({"samples": [[null, null, "ram_free_mb", 1.0]]}))
                .unwrap(),
            "samples[0]",
        ),
        ("two batches in one body", "/v1/samples", concatenated, ""),
    ];
    for (what, path, body, field) in cases {
        let req = Request::post(path)
            .header("host", HOST)
            .header("content-type", "application/msgpack")
            .body(Body::from(body))
            .unwrap();
        let (s, v, _) = app.send(req).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{what}: {v}");
        assert_eq!(v["error"], "invalid_body", "{what}: {v}");
        if field.is_empty() {
            assert!(v.get("field").is_none(), "{what}: {v}");
        } else {
            assert_eq!(v["field"], field, "{what}: {v}");
        }
    }
    assert_eq!(app.counts().await, (0, 0));
    // JSON is held to the same rule: serde's derive would take a struct as a positional array
    // (the differential fuzz target found the two encodings refusing such a batch at different
    // fields).
    let (s, v) = app
        .post(
            "/v1/samples",
            json!({"samples": [[null, 1_800_000_000_000_i64, "ram_free_mb", 1.0]]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"], "invalid_body", "{v}");
    assert_eq!(v["field"], "samples[0]", "{v}");
    assert_eq!(app.counts().await, (0, 0));
}

// ---- cardinality limits and paged views ----------------------------------------------------

fn limits(models: u64, series: u64, sessions: u64) -> PipelineOptions {
    PipelineOptions {
        limits: kora_pipeline::Limits {
            max_models: models,
            max_series: series,
            max_open_sessions: sessions,
        },
        ..PipelineOptions::default()
    }
}

/// A run of `model` with the client id `id`.
fn run_of(id: &str, model: &str) -> Value {
    let mut r = run_json(id);
    r["id"] = json!(id);
    r["model_id"] = json!(model);
    r
}

fn session_event(kind: &str, session: &str) -> Value {
    json!({"kind": kind, "session_id": session})
}

#[tokio::test]
async fn a_batch_over_the_model_limit_is_refused_whole_naming_the_limit_field_and_count() {
    let app = app_with(limits(3, 100, 10));
    let first = json!({"runs": [run_of("r1", "a"), run_of("r2", "b")]});
    let (s, v) = app.post("/v1/runs", first.clone()).await;
    assert_eq!(
        (s, v["accepted"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{v}"
    );
    let before = app.counts().await;
    let over = json!({"runs": [run_of("r3", "a"), run_of("r4", "c"), run_of("r5", "d"),
        run_of("r6", "e")]});
    let (s, v) = app.post("/v1/runs", over).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"], "limit_exceeded", "{v}");
    // c is the third model, d the first over the limit of 3.
    assert_eq!(v["field"], "runs[2].model_id", "{v}");
    assert_eq!(
        v["limit"],
        json!({"name": "models", "limit": 3, "count": 2, "refused_batches": 1}),
        "{v}"
    );
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("max_models") && message.contains("\"d\""),
        "{message}"
    );
    assert_eq!(
        app.counts().await,
        before,
        "a refused batch stored something"
    );
    // A retry of what was stored adds no model; the third model fits, from any endpoint.
    let (s, v) = app.post("/v1/runs", first).await;
    assert_eq!(
        (s, v["duplicates"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{v}"
    );
    let (s, v) = app
        .post(
            "/v1/events",
            json!({"events": [{"kind": "context_request", "model_id": "c",
                "requested_context_tokens": 4096}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // A sample tagged with a fourth model is over it.
    let (s, v) = app
        .post(
            "/v1/samples",
            json!({"samples": [{"signal": "queue_wait_ms", "value": 5, "model_id": "c"},
                {"signal": "queue_wait_ms", "value": 5, "model_id": "z"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["field"], "samples[1].model_id", "{v}");
    assert_eq!(v["limit"]["count"], 3, "{v}");

    let (_, h) = app.get("/v1/health").await;
    assert_eq!(
        h["limits"][0],
        json!({"name": "models", "limit": 3, "count": 3, "refused_batches": 2}),
        "{h}"
    );
    assert_eq!(h["limits"][1]["name"], "series", "{h}");
    assert_eq!(h["limits"][1]["count"], 0, "{h}");
    assert_eq!(h["last_limit_hit"]["name"], "models", "{h}");
    assert_eq!(h["last_limit_hit"]["field"], "samples[1].model_id", "{h}");
    assert!(
        h["last_limit_hit"]["ts_ms"].as_i64().unwrap() > MIN_TS_MS,
        "{h}"
    );

    let (text, scrape) = scrape(&app).await;
    assert_eq!(
        value_of(&scrape, "kora_limit", &[("name", "models")]),
        Some(3.0)
    );
    assert_eq!(
        value_of(&scrape, "kora_limit_used", &[("name", "models")]),
        Some(3.0)
    );
    assert_eq!(
        value_of(&scrape, "kora_limit", &[("name", "series")]),
        Some(100.0)
    );
    assert_eq!(
        value_of(
            &scrape,
            "kora_limit_refused_batches_total",
            &[("name", "models")]
        ),
        Some(2.0)
    );
    assert!(text.contains("# TYPE kora_limit gauge"), "{text}");
    assert!(
        text.contains("# TYPE kora_limit_refused_batches counter"),
        "{text}"
    );
}

#[tokio::test]
async fn the_series_and_open_session_limits_refuse_the_item_that_crosses_them() {
    let app = app_with(limits(100, 3, 2));
    let reading =
        |device: u32| json!({"signal": "gpu_vram_free_mb", "value": 100, "device": device});
    let (s, v) = app
        .post(
            "/v1/samples",
            json!({"samples": [reading(0), reading(1), reading(0)]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = app
        .post(
            "/v1/samples",
            json!({"samples": [reading(1), reading(2), reading(3)]}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["field"], "samples[2].device", "{v}");
    assert_eq!(v["limit"]["name"], "series", "{v}");
    assert_eq!(v["limit"]["count"], 2, "{v}");

    let (s, v) = app
        .post(
            "/v1/events",
            json!({"events": [session_event("session_started", "a"),
                session_event("session_started", "b")]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = app
        .post(
            "/v1/events",
            json!({"events": [session_event("session_started", "c")]}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["field"], "events[0].session_id", "{v}");
    assert_eq!(
        v["limit"],
        json!({"name": "open_sessions", "limit": 2, "count": 2, "refused_batches": 1})
    );
    // An end makes room, in batch order; a start of an open session opens nothing.
    let (s, v) = app
        .post(
            "/v1/events",
            json!({"events": [session_event("session_ended", "a"),
                session_event("session_started", "c"), session_event("session_started", "b")]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, h) = app.get("/v1/health").await;
    assert_eq!(h["limits"][1]["count"], 2, "{h}");
    assert_eq!(h["limits"][2]["count"], 2, "{h}");
    assert_eq!(h["last_limit_hit"]["name"], "open_sessions", "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_racing_past_a_limit_are_counted_one_after_the_other() {
    let app = app_with(limits(10, 100, 10));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let router = app.router.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"runs": [run_of(&format!("r{i}"), &format!("m{i}"))]}).to_string();
            // Declared, so that 40 requests in flight fit the ingest budget.
            let req = Request::post("/v1/runs")
                .header("host", HOST)
                .header("content-type", "application/json")
                .header("content-length", body.len())
                .body(Body::from(body))
                .unwrap();
            router.oneshot(req).await.unwrap().status()
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::UNPROCESSABLE_ENTITY => refused += 1,
            other => panic!("{other}"),
        }
    }
    assert_eq!((ok, refused), (10, 30));
    let (_, h) = app.get("/v1/health").await;
    assert_eq!(h["limits"][0]["count"], 10, "{h}");
    assert_eq!(h["log_records"], 10, "{h}");
}

#[tokio::test]
async fn the_counts_are_read_back_from_the_store_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.redb");
    let open = |options: PipelineOptions| {
        let pipeline = Pipeline::open(&path, options).unwrap();
        let state = AppState::new(
            Arc::new(pipeline),
            Config {
                token: kora_server::token::Token::load_or_create(dir.path()).unwrap(),
                data_dir: dir.path().to_owned(),
                hosts: HostPolicy {
                    port: 7433,
                    extra_names: vec![],
                },
            },
        );
        App {
            router: kora_server::router(state.clone()),
            state,
            _dir: tempfile::tempdir().unwrap(),
        }
    };
    let app = open(limits(1000, 1000, 1000));
    for (path, body) in [
        (
            "/v1/runs",
            json!({"runs": [run_of("r1", "a"), run_of("r2", "b"), run_of("r3", "a")]}),
        ),
        (
            "/v1/samples",
            json!({"samples": [{"signal": "queue_wait_ms", "value": 1, "model_id": "c"},
                {"signal": "ram_free_mb", "value": 1}]}),
        ),
        (
            "/v1/events",
            json!({"events": [{"kind": "context_oom", "model_id": "d", "session_id": "s"},
                session_event("session_started", "s1"), session_event("session_started", "s2"),
                session_event("session_ended", "s1"), session_event("session_started", "s3")]}),
        ),
    ] {
        let (s, v) = app.post(path, body).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (_, before) = app.get("/v1/health").await;
    let counts = |h: &Value| -> Vec<u64> {
        (0..3)
            .map(|i| h["limits"][i]["count"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(counts(&before), [4, 2, 2], "{before}");
    app.state.pipeline.store().shutdown();
    drop(app);
    // Reopened with lower limits: nothing stored is dropped, and nothing new is taken.
    let app = open(limits(2, 2, 2));
    let (_, after) = app.get("/v1/health").await;
    assert_eq!(counts(&after), [4, 2, 2], "{after}");
    let (s, v) = app
        .post("/v1/runs", json!({"runs": [run_of("r4", "e")]}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["limit"]["count"], 4, "{v}");
    let (s, v) = app
        .post("/v1/runs", json!({"runs": [run_of("r5", "b")]}))
        .await;
    assert_eq!(
        s,
        StatusCode::OK,
        "a known model is taken over a lowered limit: {v}"
    );
}

#[tokio::test]
async fn triggers_and_the_series_list_come_a_page_at_a_time() {
    let mut app = app();
    let runs: Vec<Value> = (0..30)
        .map(|i| run_of(&format!("r{i}"), &format!("m{i:02}")))
        .collect();
    let (s, v) = app.post("/v1/runs", json!({ "runs": runs })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, all) = app.get("/v1/triggers").await;
    assert_eq!(s, StatusCode::OK, "{all}");
    assert!(all["next_after"].is_null(), "{all}");
    let all = all["triggers"].as_array().unwrap().clone();
    assert!(all.len() >= 34, "{}", all.len());
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..100 {
        let url = match &after {
            None => "/v1/triggers?limit=7".to_owned(),
            Some(a) => format!("/v1/triggers?limit=7&after={}", urlencode(a)),
        };
        let (s, page) = app.get(&url).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        let items = page["triggers"].as_array().unwrap();
        assert!(items.len() <= 7);
        paged.extend(items.iter().cloned());
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(paged, all, "the pages are the whole list, in order, once");
    let (_, latency) = app.get("/v1/triggers?category=latency&scope=m07").await;
    let latency = latency["triggers"].as_array().unwrap();
    assert_eq!(latency.len(), 1);
    assert_eq!(
        (&latency[0]["category"], &latency[0]["scope"]),
        (&json!("latency"), &json!("m07"))
    );
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("after=latency", "after"),
        ("after=speed/m01", "after"),
        ("category=speed", "category"),
    ] {
        let (s, v) = app.get(&format!("/v1/triggers?{query}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {v}");
        assert_eq!(v["field"], field, "{query}: {v}");
    }

    let samples: Vec<Value> = (0..5)
        .map(|d| json!({"signal": "gpu_vram_free_mb", "value": 1, "device": d}))
        .collect();
    let (s, v) = app.post("/v1/samples", json!({ "samples": samples })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, first) = app.get("/v1/series?limit=2").await;
    assert_eq!(
        first,
        json!({"series": ["gpu_vram_free_mb@gpu0", "gpu_vram_free_mb@gpu1"],
            "next_after": "gpu_vram_free_mb@gpu1"})
    );
    let (_, rest) = app
        .get("/v1/series?limit=10&after=gpu_vram_free_mb%40gpu1")
        .await;
    assert_eq!(rest["series"].as_array().unwrap().len(), 3, "{rest}");
    assert!(rest["next_after"].is_null(), "{rest}");
    let (s, v) = app.get("/v1/series?series=ram_free_mb&limit=2").await;
    assert_eq!((s, &v["field"]), (StatusCode::BAD_REQUEST, &json!("limit")));

    // The most a page holds is the service's setting.
    app.state.max_view_scopes = 10;
    app.router = kora_server::router(app.state.clone());
    let (_, page) = app.get("/v1/triggers").await;
    assert_eq!(page["triggers"].as_array().unwrap().len(), 10, "{page}");
    assert!(page["next_after"].is_string(), "{page}");
    let (s, v) = app.get("/v1/series?limit=11").await;
    assert_eq!((s, &v["field"]), (StatusCode::BAD_REQUEST, &json!("limit")));
}

/// `s` percent-encoded for a query string.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /v1/series` buckets what the store holds exactly: sealed chunks (read as time and value
/// columns), a chunk and the head with an unavailable reading (read sample by sample), and
/// ranges that cut chunks, against buckets computed here from the samples sent.
#[tokio::test]
async fn series_buckets_are_the_min_max_mean_and_count_of_the_samples_in_them() {
    let app = app();
    let t0 = (app.state.now_ms() - 3 * 3600 * 1000) / 1000 * 1000;
    let value = |i: i64| (i * 37 % 1000) as f64 + 0.5;
    let samples: Vec<(i64, Option<f64>)> = (0..3000)
        .map(|i| (t0 + i * 1000, (i != 2500 && i != 700).then(|| value(i))))
        .collect();
    for batch in samples.chunks(500) {
        let body: Vec<Value> = batch
            .iter()
            .map(|(ts, v)| match v {
                Some(v) => json!({"signal": "ram_free_mb", "ts_ms": ts, "value": v}),
                None => json!({"signal": "ram_free_mb", "ts_ms": ts, "unavailable": "no reading"}),
            })
            .collect();
        let (s, v) = app.post("/v1/samples", json!({ "samples": body })).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    for (from, to, points) in [
        (t0, t0 + 3_000_000, 7),
        (t0 + 500_500, t0 + 2_900_000, 13),
        (t0 + 1_100_000, t0 + 1_100_001, 5),
    ] {
        let (s, v) = app
            .get(&format!(
                "/v1/series?series=ram_free_mb&from_ms={from}&to_ms={to}&points={points}"
            ))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let width = ((to - from) as f64 / points as f64).max(1.0);
        let mut want: std::collections::BTreeMap<i64, (f64, f64, f64, u64)> = Default::default();
        let mut unavailable = 0;
        for &(ts, val) in samples.iter().filter(|(ts, _)| (from..to).contains(ts)) {
            let Some(val) = val else {
                unavailable += 1;
                continue;
            };
            let t = from + (((ts - from) as f64 / width).floor() * width) as i64;
            let e = want
                .entry(t)
                .or_insert((f64::INFINITY, f64::NEG_INFINITY, 0.0, 0));
            e.0 = e.0.min(val);
            e.1 = e.1.max(val);
            e.2 += val;
            e.3 += 1;
        }
        assert_eq!(v["unavailable_samples"], unavailable, "{from}..{to}");
        let got = v["points"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{from}..{to}: {v}");
        for (p, (t, (min, max, sum, n))) in got.iter().zip(want) {
            assert_eq!(p["t"], t);
            assert_eq!(p["min"], min);
            assert_eq!(p["max"], max);
            assert_eq!(p["n"], n);
            let mean = p["mean"].as_f64().unwrap();
            assert!(
                (mean - sum / n as f64).abs() < 1e-9,
                "{mean} vs {}",
                sum / n as f64
            );
        }
    }
}
