//! `GET /v1/stream` through the real router over a real store, without a socket: a client that
//! falls behind is dropped with `overflow` and never holds the publisher up, and a client that
//! reconnects at any moment while records arrive gets every decision exactly once, in order.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use kora_model::{ConsentRecord, LogEntry, Record, prompt_hash};
use kora_pipeline::events::{LIVE_BUFFER, STREAMED};
use kora_pipeline::{Pipeline, PipelineOptions, Position, StreamEvent};
use kora_server::{AppState, Config, HostPolicy};
use kora_store::Batch;
use serde_json::{Value, json};
use tower::ServiceExt;

const HOST: &str = "127.0.0.1:7433";

fn app(dir: &std::path::Path) -> (axum::Router, AppState) {
    let pipeline = Pipeline::open(&dir.join("t.redb"), PipelineOptions::default()).unwrap();
    let state = AppState::new(
        Arc::new(pipeline),
        Config {
            token: kora_server::token::Token::load_or_create(dir).unwrap(),
            data_dir: dir.to_owned(),
            hosts: HostPolicy {
                port: 7433,
                extra_names: vec![],
            },
        },
    );
    (kora_server::router(state.clone()), state)
}

#[derive(Debug, Clone, PartialEq)]
struct Sse {
    name: String,
    id: Option<String>,
    data: Value,
}

/// An open stream's body, read event by event.
struct Client {
    body: Body,
    buffer: String,
}

/// `GET /v1/stream{query}`, with `Last-Event-ID` when given.
async fn request(
    router: &axum::Router,
    query: &str,
    last_event_id: Option<&str>,
) -> axum::response::Response {
    let mut req = Request::get(format!("/v1/stream{query}")).header("host", HOST);
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

impl Client {
    async fn open(router: &axum::Router, query: &str, last_event_id: Option<&str>) -> Client {
        let resp = request(router, query, last_event_id).await;
        assert_eq!(resp.status(), StatusCode::OK);
        Client {
            body: resp.into_body(),
            buffer: String::new(),
        }
    }

    /// The next event, or `None` when the stream ended.
    async fn next(&mut self) -> Option<Sse> {
        self.within(Duration::from_secs(20))
            .await
            .expect("no event within 20 s")
    }

    /// The next event within `wait` (`Err` when none came), or `None` when the stream ended.
    async fn within(&mut self, wait: Duration) -> Result<Option<Sse>, tokio::time::error::Elapsed> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut name, mut id, mut data) = (String::new(), None, String::new());
                for line in block.lines() {
                    match line.split_once(':').map(|(k, v)| (k, v.trim_start())) {
                        Some(("event", v)) => name = v.to_owned(),
                        Some(("id", v)) => id = Some(v.to_owned()),
                        Some(("data", v)) => data.push_str(v),
                        _ => {}
                    }
                }
                if !data.is_empty() {
                    let data = serde_json::from_str(&data).unwrap();
                    return Ok(Some(Sse { name, id, data }));
                }
            }
            let Some(frame) = tokio::time::timeout_at(deadline, self.body.frame()).await? else {
                return Ok(None);
            };
            let frame = frame.unwrap();
            if let Ok(bytes) = frame.into_data() {
                self.buffer.push_str(std::str::from_utf8(&bytes).unwrap());
            }
        }
    }
}

/// A consent record, as the consent endpoint writes it.
fn consent(enabled: bool) -> Record {
    Record::Consent(ConsentRecord {
        ts_ms: kora_pipeline::clock::wall_ms(),
        scope: "product_metrics".into(),
        enabled,
        actor: "test".into(),
        shown: "shown".into(),
        thresholds_version: "1.1.0".into(),
    })
}

#[tokio::test]
async fn a_client_too_far_behind_is_dropped_with_overflow_and_never_holds_the_publisher() {
    let dir = tempfile::tempdir().unwrap();
    let (router, state) = app(dir.path());
    let mut client = Client::open(&router, "", None).await;
    assert_eq!(client.next().await.unwrap().name, "health");
    let ready = client.next().await.unwrap();
    assert_eq!(ready.name, "ready");
    assert_eq!(ready.id.as_deref(), Some("0"));

    // The client reads nothing while more events than its buffer holds are published.
    let published = Instant::now();
    for seq in 1..=(LIVE_BUFFER as u64 + 10) {
        let record = consent(seq % 2 == 0);
        let event = StreamEvent::Record(Box::new(LogEntry { seq, record }));
        state.pipeline.events().publish(seq, vec![event]);
    }
    assert!(
        published.elapsed() < Duration::from_secs(1),
        "publishing waited for the client: {:?}",
        published.elapsed()
    );
    let overflow = client.next().await.unwrap();
    assert_eq!(overflow.name, "overflow", "{overflow:?}");
    assert_eq!(overflow.id, None, "the client resumes from its last id");
    assert_eq!(overflow.data["last_event_id"], "0");
    assert!(overflow.data["missed"].as_u64() >= Some(10), "{overflow:?}");
    assert_eq!(client.next().await, None, "the stream ends after overflow");
}

#[tokio::test]
async fn bad_event_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (router, _state) = app(dir.path());
    for (query, header) in [
        ("", Some("abc")),
        ("", Some("1.0")),
        ("", Some("-1")),
        ("?last_event_id=1.x", None),
        ("?follow=perhaps", None),
        ("?since=1", None),
    ] {
        let resp = request(&router, query, header).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{query} {header:?}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "invalid_query", "{body}");
    }
}

fn runs(model: &str, block: i64, slow: bool) -> Value {
    let latency = if slow { 6_000.0 } else { 800.0 };
    let first = kora_pipeline::clock::wall_ms() - 3_600_000 + block * 10_000;
    let runs: Vec<Value> = (0..10)
        .map(|i| {
            let id = format!("{model}-{block}-{i}");
            json!({
                "id": id, "run_id": id, "session_id": model, "model_id": model,
                "substrate": "local", "prompt_hash": prompt_hash(&id), "context_tokens": 4096,
                "model_latency_ms": latency, "total_latency_ms": latency + 100.0,
                "deterministic_stage_ms": 100.0, "model_stage_ms": latency,
                "validation_retry_count": 0, "budget_breach_count": 0,
                "ts_ms": first + i * 900,
            })
        })
        .collect();
    json!({ "runs": runs })
}

/// Every event the log and the kept resolutions hold, in position order.
fn everything(pipeline: &Pipeline) -> Vec<(String, String)> {
    let mut events: Vec<StreamEvent> = Vec::new();
    for kind in STREAMED {
        let entries = pipeline.store().scan_kind(kind, 0, usize::MAX).unwrap();
        events.extend(
            entries
                .into_iter()
                .map(|e| StreamEvent::Record(Box::new(e))),
        );
    }
    let resolved = pipeline
        .follower()
        .resolutions(Position::START, Position::through(u64::MAX));
    events.extend(resolved.into_iter().map(StreamEvent::Resolved));
    events.sort_by_key(StreamEvent::position);
    events
        .iter()
        .map(|e| (e.position().unwrap().id(), e.name().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_at_any_moment_while_records_arrive_gives_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let (router, state) = app(dir.path());
    let pipeline = state.pipeline.clone();
    let follower = tokio::spawn({
        let p = pipeline.clone();
        async move { p.follow().await }
    });
    // Three models, each slow for three blocks then fast for one, over and over: firings,
    // suggestions or suppressions, and resolutions; and consent changes in between.
    let writer = tokio::spawn({
        let router = router.clone();
        let pipeline = pipeline.clone();
        async move {
            for block in 0..32 {
                for model in ["a-7b", "b-13b", "c-70b"] {
                    let req = Request::post("/v1/runs")
                        .header("host", HOST)
                        .header("content-type", "application/json")
                        .body(Body::from(runs(model, block, block % 4 != 3).to_string()))
                        .unwrap();
                    let resp = router.clone().oneshot(req).await.unwrap();
                    assert_eq!(resp.status(), StatusCode::OK);
                }
                if block % 5 == 0 {
                    pipeline
                        .append("consent", Batch::Records(vec![consent(block % 2 == 0)]))
                        .await
                        .unwrap();
                }
                tokio::task::yield_now().await;
            }
        }
    });

    // A client that reads a few events per connection, then reconnects from its last id.
    let mut got: Vec<(String, String)> = Vec::new();
    let mut last: Option<String> = None;
    let mut connections = 0;
    loop {
        let done = writer.is_finished();
        if done {
            // Everything is decided once the engine caught up with the log.
            pipeline.settle().await;
        }
        let query = if done { "?follow=false" } else { "" };
        let mut client = Client::open(&router, query, last.as_deref()).await;
        connections += 1;
        let mut read = 0;
        // While records arrive, a connection with nothing new for a moment is left too.
        let wait = Duration::from_millis(if done { 20_000 } else { 300 });
        while let Ok(Some(e)) = client.within(wait).await {
            match e.name.as_str() {
                "health" => continue,
                "ready" => {
                    last = e.id.clone();
                    if done {
                        break;
                    }
                }
                name => {
                    let id = e.id.clone().unwrap();
                    got.push((id.clone(), name.to_owned()));
                    last = Some(id);
                    read += 1;
                    if read == 1 + connections % 4 {
                        break;
                    }
                }
            }
        }
        if done {
            break;
        }
    }
    writer.await.unwrap();
    follower.abort();

    let want = everything(&pipeline);
    let kinds: std::collections::BTreeSet<&str> = want.iter().map(|(_, k)| k.as_str()).collect();
    for kind in ["firing", "resolved", "consent"] {
        assert!(
            kinds.contains(kind),
            "the workload made no {kind}: {want:?}"
        );
    }
    assert!(connections > 10, "only {connections} connections");
    assert_eq!(
        got, want,
        "across {connections} connections, every event once and in order"
    );
}
