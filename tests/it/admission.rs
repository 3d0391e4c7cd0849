//! Admission to the ingest endpoints, over real loopback sockets: with the ingest budget of
//! body bytes in flight taken, one more request is answered 503 at once (before its body is read), with
//! Retry-After, and nothing of it is stored; once they finish, ingest is taken again.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::common::{Server, agent};

#[test]
fn ingest_beyond_the_in_flight_bound_is_refused_fast_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let addr = server.base.trim_start_matches("http://").to_owned();
    let http = agent();
    let stored = |http: &ureq::Agent| -> u64 {
        let h: serde_json::Value = http
            .get(server.url("/v1/health"))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        h["log_records"].as_u64().unwrap()
    };
    // Fill the ingest budget with requests declaring the largest body allowed, whose bodies
    // never finish arriving.
    let mut stalled = Vec::new();
    let max = kora_model::MAX_BODY_BYTES;
    for _ in 0..kora_server::INGEST_BUDGET_BYTES / max {
        let mut s = TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {max}\r\n\r\n{{\"events\": ["
        )
        .unwrap();
        stalled.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = stored(&http);
    let event = serde_json::json!({"events": [{"kind": "session_started", "session_id": "s1"}]});
    let started = Instant::now();
    let r = http
        .post(server.url("/v1/events"))
        .send_json(&event)
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert!(took < Duration::from_millis(500), "refused after {took:?}");
    // Reads are not ingest: they still answer while ingest is full.
    assert_eq!(stored(&http), before, "a refused batch stored something");
    println!(
        "admission: {} ingest requests of {} MiB in flight, one more refused with 503 in {:.1} ms",
        stalled.len(),
        max / (1024 * 1024),
        took.as_secs_f64() * 1e3
    );
    // Once the stalled requests go away, ingest is admitted again.
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http
            .post(server.url("/v1/events"))
            .send_json(&event)
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 503);
        assert!(Instant::now() < deadline, "ingest was not admitted again");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(stored(&http), before + 1);
    server.stop();
}
