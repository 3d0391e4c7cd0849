//! `GET /v1/stream` and `?wait=decisions` against the real binary, over loopback sockets: a
//! sustained latency trigger's firing, suggestion and resolution arrive live with the ids the
//! ingest answer named; and a client that reconnects with `Last-Event-ID` across a clean
//! restart and a SIGKILL of the service misses nothing and gets nothing twice.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kora_model::prompt_hash;
use serde_json::{Value, json};

use super::common::{Server, agent};

/// One event as `EventSource` would dispatch it.
#[derive(Debug, Clone)]
struct SseEvent {
    name: String,
    id: Option<String>,
    data: Value,
}

/// A stream read on its own thread, event by event.
struct Stream {
    events: mpsc::Receiver<SseEvent>,
}

impl Stream {
    fn open(server: &Server, last_event_id: Option<&str>) -> Stream {
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut request = http
            .get(server.url("/v1/stream"))
            .header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.call().unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        assert_eq!(
            response.headers()["content-security-policy"],
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            "the stream passes the trust boundary like every route"
        );
        let reader = BufReader::new(response.into_body().into_reader());
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut name, mut id, mut data) = (String::new(), None, String::new());
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if line.is_empty() {
                    if !data.is_empty() {
                        let event = SseEvent {
                            name: std::mem::take(&mut name),
                            id: id.take(),
                            data: serde_json::from_str(&data).unwrap(),
                        };
                        if tx.send(event).is_err() {
                            return;
                        }
                    }
                    data.clear();
                    continue;
                }
                match line.split_once(':').map(|(k, v)| (k, v.trim_start())) {
                    Some(("event", v)) => name = v.to_owned(),
                    Some(("id", v)) => id = Some(v.to_owned()),
                    Some(("data", v)) => data.push_str(v),
                    // Comments (the keep-alive) and `retry:`.
                    _ => {}
                }
            }
        });
        Stream { events }
    }

    /// The events until (and with) the first that `stop` accepts.
    fn until(&self, what: &str, stop: impl Fn(&SseEvent) -> bool) -> Vec<SseEvent> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) => {
                    let done = stop(&e);
                    out.push(e);
                    if done {
                        return out;
                    }
                }
                Err(e) => panic!("{what}: {e} after {out:#?}"),
            }
        }
    }

    /// Nothing more arrives within `quiet`.
    fn assert_quiet(&self, quiet: Duration) {
        if let Ok(e) = self.events.recv_timeout(quiet) {
            panic!("an event nobody caused: {e:?}");
        }
    }
}

fn run(id: &str, model: &str, ts_ms: i64, latency: f64) -> Value {
    json!({
        "id": id, "run_id": id, "session_id": format!("s-{model}"), "model_id": model,
        "substrate": "local", "prompt_hash": prompt_hash(id), "context_tokens": 4096,
        "tokens_in": 1000, "tokens_out": 200, "model_latency_ms": latency,
        "total_latency_ms": latency + 300.0, "deterministic_stage_ms": 300.0,
        "model_stage_ms": latency, "validation_retry_count": 0, "budget_breach_count": 0,
        "ts_ms": ts_ms,
    })
}

/// `n` runs of `model` from `first_ts`, one a second: slow ones breach the 4,500 ms p95 limit.
fn runs(model: &str, first_ts: i64, n: i64, slow: bool) -> Value {
    let latency = if slow { 6_000.0 } else { 800.0 };
    let runs: Vec<Value> = (0..n)
        .map(|i| {
            let ts = first_ts + i * 1000;
            run(&format!("{model}-{ts}"), model, ts, latency)
        })
        .collect();
    json!({ "runs": runs })
}

fn post(server: &Server, path: &str, body: &Value) -> Value {
    let mut r = agent().post(&server.url(path)).send_json(body).unwrap();
    let status = r.status();
    let answer: Value = r.body_mut().read_json().unwrap();
    assert_eq!(status, 200, "{path}: {answer}");
    answer
}

/// Posts with `?wait=decisions`: the answer names the decisions, complete.
fn post_waiting(server: &Server, body: &Value) -> Vec<Value> {
    let answer = post(server, "/v1/runs?wait=decisions&timeout_ms=10000", body);
    assert_eq!(answer["decisions_complete"], true, "{answer}");
    answer["decisions"].as_array().unwrap().clone()
}

fn kinds(decisions: &[Value]) -> Vec<&str> {
    decisions
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect()
}

/// A stream event's position, from its id: `(seq, rank)`.
fn position(id: &str) -> (u64, u32) {
    match id.split_once('.') {
        Some((seq, rank)) => (seq.parse().unwrap(), rank.parse().unwrap()),
        None => (id.parse().unwrap(), 0),
    }
}

#[test]
fn stream_sends_a_sustained_latency_firing_its_suggestion_and_its_resolution() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let stream = Stream::open(&server, None);
    let hello = stream.until("the first events", |e| e.name == "ready");
    assert_eq!(hello[0].name, "health", "{hello:?}");
    assert_eq!(hello[0].data["status"], "ok");
    assert_eq!(hello[0].id, None, "a health change has no id");
    let ready = hello.last().unwrap();
    assert_eq!(ready.data["resumed"], false, "{ready:?}");
    assert_eq!(hello.len(), 2, "nothing was decided yet: {hello:?}");

    // Three blocks of ten slow runs: the latency trigger is sustained, fires and suggests.
    let start = kora_pipeline::clock::wall_ms() - 20 * 60_000;
    let posted = Instant::now();
    let decisions = post_waiting(&server, &runs("slow-13b", start, 30, true));
    assert_eq!(kinds(&decisions), ["firing", "suggestion"], "{decisions:?}");
    let events = stream.until("the suggestion", |e| e.name == "suggestion");
    let delay = posted.elapsed();
    assert_eq!(events.len(), 2, "{events:#?}");
    let (firing, suggestion) = (&events[0], &events[1]);
    assert_eq!(firing.name, "firing");
    for (e, d) in events.iter().zip(&decisions) {
        // The event id is the decision's log seq, and the data is the log's record.
        assert_eq!(
            e.id.as_deref(),
            Some(d["seq"].to_string().as_str()),
            "{e:?}"
        );
        assert_eq!(e.data["seq"], d["seq"]);
        assert_eq!(e.data["kind"], d["kind"]);
    }
    assert_eq!(firing.data["category"], "latency");
    assert_eq!(firing.data["scope"], "slow-13b");
    assert_eq!(firing.data["firing_id"], decisions[0]["id"]);
    assert_eq!(suggestion.data["firing_id"], firing.data["firing_id"]);
    assert_eq!(suggestion.data["suggestion_id"], decisions[1]["id"]);
    assert!(
        suggestion.data["message"]
            .as_str()
            .unwrap()
            .contains("slow-13b"),
        "{suggestion:?}"
    );
    eprintln!("run batch posted -> suggestion event: {delay:?}");

    // A fast block: the condition no longer holds, and the trigger resolves at the run that
    // closed the block.
    let decisions = post_waiting(&server, &runs("slow-13b", start + 30_000, 10, false));
    assert_eq!(kinds(&decisions), ["resolved"], "{decisions:?}");
    assert_eq!(decisions[0]["id"], firing.data["firing_id"]);
    let resolved = stream.until("the resolution", |e| e.name == "resolved");
    assert_eq!(resolved.len(), 1, "{resolved:#?}");
    let r = &resolved[0];
    assert_eq!(
        r.id.as_deref(),
        Some(format!("{}.1", decisions[0]["seq"]).as_str())
    );
    assert_eq!(r.data["seq"], decisions[0]["seq"]);
    assert_eq!(r.data["category"], "latency");
    assert_eq!(r.data["scope"], "slow-13b");
    assert_eq!(r.data["state"], "resolved");
    assert_eq!(r.data["last_firing_id"], firing.data["firing_id"]);
    let closing_run = agent()
        .get(&server.url("/v1/log?kind=run&limit=1"))
        .call()
        .unwrap()
        .body_mut()
        .read_json::<Value>()
        .unwrap();
    assert_eq!(
        closing_run["entries"][0]["seq"], decisions[0]["seq"],
        "resolved at the seq of the run that closed the fast block"
    );

    // Without the parameter, the answer is what it always was.
    let plain = post(&server, "/v1/runs", &runs("other-7b", start, 1, false));
    assert!(plain.get("decisions").is_none(), "{plain}");
    stream.assert_quiet(Duration::from_millis(500));
    server.stop();
    assert!(
        stream
            .events
            .recv_timeout(Duration::from_secs(5))
            .is_ok_and(|e| e.name == "closing"),
        "the stream ends when the service stops"
    );
}

/// Every record of the streamed kinds after `after`, as the log holds them: `(seq, kind)`.
fn logged_after(server: &Server, after: u64) -> BTreeSet<(u64, u32, String)> {
    let mut out = BTreeSet::new();
    for kind in [
        "firing",
        "suggestion",
        "suppression",
        "mitigation_outcome",
        "consent",
        "export",
    ] {
        let page = agent()
            .get(&server.url(&format!("/v1/log?kind={kind}&limit=1000")))
            .call()
            .unwrap()
            .body_mut()
            .read_json::<Value>()
            .unwrap();
        for e in page["entries"].as_array().unwrap() {
            let seq = e["seq"].as_u64().unwrap();
            if seq > after {
                out.insert((seq, 0, kind.to_owned()));
            }
        }
    }
    out
}

fn consent(dir: &Path, server: &Server, enabled: bool) {
    let token = std::fs::read_to_string(dir.join("token")).unwrap();
    let mut r = agent()
        .put(&server.url("/v1/consent"))
        .header("Authorization", &format!("Bearer {}", token.trim()))
        .send_json(json!({"enabled": enabled, "actor": "stream-test"}))
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );
}

#[test]
fn a_reconnect_across_restarts_misses_nothing_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let start = kora_pipeline::clock::wall_ms() - 40 * 60_000;
    let server = Server::start(dir.path());

    // Connected: a sustained firing and its suggestion.
    let first = Stream::open(&server, None);
    first.until("ready", |e| e.name == "ready");
    let part1 = post_waiting(&server, &runs("m1", start, 30, true));
    assert_eq!(kinds(&part1), ["firing", "suggestion"]);
    let seen = first.until("m1's suggestion", |e| e.name == "suggestion");
    let last_id = seen.last().unwrap().id.clone().unwrap();
    drop(first);

    // Away: m1 resolves, export consent goes on, the service stops cleanly and starts again.
    let part2 = post_waiting(&server, &runs("m1", start + 30_000, 10, false));
    assert_eq!(kinds(&part2), ["resolved"]);
    consent(dir.path(), &server, true);
    server.stop();
    let server = Server::start(dir.path());
    // m2 fires; the service is killed right after the runs are acknowledged, perhaps before
    // the engine folded them: the restarted service decides then.
    post(&server, "/v1/runs", &runs("m2", start + 100_000, 30, true));
    server.kill();
    let server = Server::start(dir.path());

    // Back: resume from the last id seen.
    let again = Stream::open(&server, Some(&last_id));
    let part4 = post_waiting(&server, &runs("m3", start + 200_000, 30, true));
    let last = part4.last().unwrap()["seq"].to_string();
    let resumed = again.until("m3's last decision", |e| e.id.as_deref() == Some(&last));
    consent(dir.path(), &server, false);
    let tail = again.until("the consent change", |e| e.name == "consent");

    let after: u64 = last_id.parse().unwrap();
    let mut want = logged_after(&server, after);
    for d in &part2 {
        want.insert((d["seq"].as_u64().unwrap(), 1, "resolved".to_owned()));
    }
    let mut got = BTreeSet::new();
    let mut previous = (after, u32::MAX);
    let mut ready = 0;
    for e in resumed.iter().chain(&tail) {
        match e.name.as_str() {
            "health" => assert_eq!(e.id, None),
            "ready" => {
                ready += 1;
                assert_eq!(e.data["resumed"], true, "{e:?}");
            }
            name => {
                let id = e.id.as_deref().unwrap();
                let (seq, rank) = position(id);
                assert!(
                    (seq, rank) > previous,
                    "ids only grow: {id} after {previous:?}"
                );
                previous = (seq, rank);
                assert!(
                    got.insert((seq, rank, name.to_owned())),
                    "{id} twice: {resumed:#?}"
                );
            }
        }
    }
    assert_eq!(ready, 1);
    assert_eq!(
        got, want,
        "the resumed stream is exactly what was decided after {last_id}"
    );
    let got_kinds: BTreeSet<&str> = got.iter().map(|(_, _, k)| k.as_str()).collect();
    for kind in ["resolved", "consent", "firing"] {
        assert!(got_kinds.contains(kind), "no {kind} among {got:?}");
    }
    assert!(
        got.iter().filter(|(_, _, k)| k == "firing").count() >= 2,
        "m2's and m3's firings: {got:?}"
    );
    // The first connection's events are not among them.
    for e in &seen {
        let (seq, rank) = position(e.id.as_deref().unwrap());
        assert!(!got.iter().any(|(s, r, _)| (*s, *r) == (seq, rank)));
    }
    server.stop();
}

/// `?wait=decisions` on samples: the decisions are those of the time windows the batch closed,
/// stored in the same commit as the samples.
#[test]
fn a_samples_batch_waits_for_the_decisions_of_the_windows_it_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let stream = Stream::open(&server, None);
    stream.until("ready", |e| e.name == "ready");
    // One reading a minute; the queue waits 1,500 ms (over the 1,200 ms limit) from minute 7
    // on; the reading of minute 11 closes the windows up to minute 10.
    let start = (kora_pipeline::clock::wall_ms() / 60_000 - 30) * 60_000;
    let samples: Vec<Value> = (0..12)
        .map(|m| {
            let queue = if m >= 7 { 1500.0 } else { 300.0 };
            json!({"signal": "queue_wait_ms", "value": queue, "ts_ms": start + m * 60_000 + 30_000})
        })
        .collect();
    let answer = post(
        &server,
        "/v1/samples?wait=decisions",
        &json!({ "samples": samples }),
    );
    assert_eq!(answer["decisions_complete"], true, "{answer}");
    let decisions = answer["decisions"].as_array().unwrap();
    assert_eq!(kinds(decisions), ["firing", "suggestion"], "{answer}");
    let events = stream.until("the suggestion", |e| e.name == "suggestion");
    assert_eq!(events[0].data["category"], "concurrency", "{events:?}");
    for (e, d) in events.iter().zip(decisions) {
        assert_eq!(e.id.as_deref(), Some(d["seq"].to_string().as_str()));
    }
    // The firing's evidence is the windows: they are the inputs the answer waited for.
    let last_sample = answer["last_seq"].as_u64().unwrap();
    let evidence = &events[0].data["evidence"][0];
    assert!(
        evidence["last_seq"].as_u64() > Some(last_sample),
        "a window stored after the batch's samples: {evidence}"
    );
    // A batch that closes no window has nothing to wait for.
    let none = post(
        &server,
        "/v1/samples?wait=decisions&timeout_ms=10000",
        &json!({"samples": [{"signal": "queue_wait_ms", "value": 10, "ts_ms": start + 11 * 60_000 + 40_000}]}),
    );
    assert_eq!(none["decisions"], json!([]), "{none}");
    assert_eq!(none["decisions_complete"], true, "{none}");
    server.stop();
}
