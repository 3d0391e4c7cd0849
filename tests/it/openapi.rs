//! `schema/openapi.json`, the OpenAPI document of the HTTP API, is generated from the service's
//! types (`kora_server::openapi::document`). These tests keep it true: the checked-in file is the
//! generator's output (regenerate with `KORA_UPDATE_SCHEMAS=1 cargo test schema`), it documents
//! exactly the routes the router serves and the methods each takes (probed on the real router),
//! and the examples of http-api.md and of the document validate against its schemas. Every
//! `kora_model::ErrorCode` is in http-api.md's error table and the document's error responses,
//! and the answers of the real router parse as their `kora_model` types.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use kora_pipeline::{Pipeline, PipelineOptions};
use kora_server::{AppState, Config, HostPolicy};
use serde_json::{Value, json};
use tower::ServiceExt;

const HOST: &str = "127.0.0.1:7433";
/// The methods a route could take; HEAD follows GET.
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn checked_in() -> Value {
    let text = std::fs::read_to_string(root().join("schema/openapi.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn schema_openapi_document_is_up_to_date() {
    let path = root().join("schema/openapi.json");
    let text = serde_json::to_string_pretty(&kora_server::openapi::document()).unwrap() + "\n";
    if std::env::var_os("KORA_UPDATE_SCHEMAS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    assert!(
        std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()),
        "schema/openapi.json is stale (regenerate with KORA_UPDATE_SCHEMAS=1 cargo test schema)"
    );
}

/// (path, METHOD) of every documented operation.
fn documented(doc: &Value) -> BTreeMap<String, BTreeSet<String>> {
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .unwrap()
                .keys()
                .map(|m| m.to_ascii_uppercase())
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

/// Every path literal given to `.route(` in the server's source, with `{*rest}` written as
/// OpenAPI writes it (`{rest}`).
fn routes_in_source() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let dir = root().join("crates/server/src");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for after in text.split(".route(").skip(1) {
            let after = after.trim_start();
            let Some(literal) = after.strip_prefix('"') else {
                panic!("a .route( whose path is not a literal: {}", &after[..40])
            };
            let path = &literal[..literal.find('"').unwrap()];
            out.insert(path.replace("{*", "{"));
        }
    }
    out
}

#[test]
fn schema_openapi_paths_are_the_routes_in_the_source() {
    let doc = checked_in();
    let documented: BTreeSet<String> = documented(&doc).into_keys().collect();
    let served = routes_in_source();
    assert!(served.len() >= 20, "found only {served:?}");
    assert_eq!(
        documented, served,
        "schema/openapi.json and the router disagree on the paths (left: documented, right: \
         routed in crates/server/src); document a new route in crates/server/src/openapi.rs"
    );
}

/// http-api.md's `/v1/health` answer is one this build gives: a `Health`, with this build's
/// version and store format.
#[test]
fn schema_http_api_md_health_example_is_this_build() {
    let markdown = std::fs::read_to_string(root().join("http-api.md")).unwrap();
    let answer = curls(&markdown)
        .into_iter()
        .find(|c| c.path == "/v1/health")
        .and_then(|c| c.answer)
        .expect("http-api.md shows GET /v1/health with its answer");
    let health: kora_model::Health = serde_json::from_str(&answer).unwrap();
    assert_eq!(health.store_format_version, kora_store::FORMAT_VERSION);
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(health.status, "ok");
}

/// The `(status, code)` rows of http-api.md's error table.
fn error_table(markdown: &str) -> Vec<(u16, String)> {
    let section = markdown
        .split("\n## Errors\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("http-api.md has an `## Errors` section");
    section
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let status = cells.get(1)?.parse().ok()?;
            let code = cells.get(2)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((status, code.to_owned()))
        })
        .collect()
}

/// Every `ErrorCode` is in http-api.md's error table and among the error responses of
/// schema/openapi.json, with its status; neither lists a code the service does not have.
#[test]
fn schema_error_codes_are_documented_in_http_api_md_and_openapi() {
    use kora_model::ErrorCode;
    let markdown = std::fs::read_to_string(root().join("http-api.md")).unwrap();
    let table = error_table(&markdown);
    assert!(table.len() >= ErrorCode::ALL.len(), "{table:?}");
    for (status, code) in &table {
        let known = ErrorCode::parse(code)
            .unwrap_or_else(|| panic!("http-api.md lists `{code}`, which is no ErrorCode"));
        assert_eq!(
            known.status(),
            *status,
            "http-api.md: the status of `{code}`"
        );
    }
    for &code in ErrorCode::ALL {
        assert!(
            table.contains(&(code.status(), code.as_str().to_owned())),
            "http-api.md's error table lacks {} `{code}`",
            code.status()
        );
    }

    let doc = checked_in();
    // Component name -> the codes its body may carry.
    let components: BTreeMap<&str, Vec<&str>> = doc["components"]["responses"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, response)| {
            let codes = response["content"]["application/json"]["schema"]["allOf"][1]["properties"]
                ["error"]["enum"]
                .as_array()
                .unwrap_or_else(|| panic!("the response {name} has no `error` enum"))
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect();
            (name.as_str(), codes)
        })
        .collect();
    for &code in ErrorCode::ALL {
        let holders: Vec<&str> = components
            .iter()
            .filter(|(_, codes)| codes.contains(&code.as_str()))
            .map(|(name, _)| *name)
            .collect();
        assert_eq!(holders.len(), 1, "`{code}` is in the responses {holders:?}");
    }
    for codes in components.values() {
        for c in codes {
            assert!(ErrorCode::parse(c).is_some(), "openapi.json lists `{c}`");
        }
    }
    // Each operation's error status refers to the response of the codes with that status.
    let mut referenced = 0;
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            for (status, response) in op["responses"].as_object().unwrap() {
                let Some(name) = response["$ref"]
                    .as_str()
                    .and_then(|r| r.strip_prefix("#/components/responses/"))
                else {
                    continue;
                };
                for c in &components[name] {
                    let code = ErrorCode::parse(c).unwrap();
                    assert_eq!(
                        code.status().to_string(),
                        *status,
                        "{} {name}",
                        op["operationId"]
                    );
                }
                referenced += 1;
            }
        }
    }
    assert!(referenced > 50, "{referenced} error responses referenced");
}

fn app(dir: &Path) -> (axum::Router, String) {
    let (router, bearer, _) = app_with_state(dir);
    (router, bearer)
}

fn app_with_state(dir: &Path) -> (axum::Router, String, AppState) {
    let pipeline = Pipeline::open(&dir.join("t.redb"), PipelineOptions::default()).unwrap();
    let token = kora_server::token::Token::load_or_create(dir).unwrap();
    let bearer = format!("Bearer {}", token.expose());
    let state = AppState::new(
        Arc::new(pipeline),
        Config {
            token,
            data_dir: dir.to_owned(),
            hosts: HostPolicy {
                port: 7433,
                extra_names: vec![],
            },
        },
    );
    (kora_server::router(state.clone()), bearer, state)
}

/// A concrete URL of a documented path: each path parameter gets its first enum value, or `x`.
fn instantiate(path: &str, item: &Value) -> String {
    let mut url = path.to_owned();
    for op in item.as_object().unwrap().values() {
        for p in op["parameters"].as_array().into_iter().flatten() {
            if p["in"] != "path" {
                continue;
            }
            let name = p["name"].as_str().unwrap();
            let value = p["schema"]["enum"][0].as_str().unwrap_or("x");
            url = url.replace(&format!("{{{name}}}"), value);
        }
    }
    url
}

/// Sends every method to every documented path of the real router: a documented operation is
/// routed (neither the fallback's 404 nor a 405); any other method is a 405 whose `Allow` lists
/// exactly the documented methods.
#[tokio::test]
async fn schema_openapi_methods_are_the_ones_the_router_serves() {
    let dir = tempfile::tempdir().unwrap();
    let (router, bearer) = app(dir.path());
    let doc = checked_in();
    let documented = documented(&doc);
    let mut probed = 0;
    for (path, methods) in &documented {
        let url = instantiate(path, &doc["paths"][path]);
        for method in METHODS {
            let request = Request::builder()
                .method(Method::from_bytes(method.as_bytes()).unwrap())
                .uri(&url)
                .header("host", HOST)
                .header("authorization", &bearer)
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let allow = response
                .headers()
                .get("allow")
                .map(|v| v.to_str().unwrap().to_owned());
            // The push stream never ends by itself: its headers say enough here.
            let endless = response
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            let body = if endless {
                Default::default()
            } else {
                response.into_body().collect().await.unwrap().to_bytes()
            };
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            probed += 1;
            if methods.contains(method) {
                assert_ne!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {url} is documented but not routed: {body}"
                );
                let fallback = body["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("no endpoint at"));
                assert!(
                    !fallback,
                    "{method} {url} is documented but not routed: {body}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {url} is served but not documented in schema/openapi.json: {body}"
                );
                assert_eq!(body["error"], "method_not_allowed", "{body}");
                let mut expected: BTreeSet<&str> = methods.iter().map(String::as_str).collect();
                if expected.contains("GET") {
                    expected.insert("HEAD");
                }
                let allowed: BTreeSet<&str> = allow.as_deref().unwrap_or("").split(',').collect();
                assert_eq!(
                    allowed, expected,
                    "{url}: the router allows other methods than documented"
                );
            }
        }
    }
    assert_eq!(probed, documented.len() * METHODS.len());
    // A path that is documented nowhere is the fallback's 404.
    let request = Request::get("/v1/undocumented")
        .header("host", HOST)
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

/// A validator of `schema`, whose `$ref`s point into `doc`.
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"].clone(),
    });
    for (k, v) in schema.as_object().unwrap() {
        root[k] = v.clone();
    }
    jsonschema::draft202012::new(&root).unwrap()
}

fn check(doc: &Value, schema: &Value, instance: &Value, what: &str) {
    let v = validator(doc, schema);
    let errors: Vec<String> = v
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:?}\n{instance}");
}

/// One `curl` of http-api.md: method, path, the `-d` body, and the answer shown below it.
#[derive(Debug)]
struct Curl {
    method: String,
    path: String,
    body: Option<String>,
    answer: Option<String>,
}

fn curls(markdown: &str) -> Vec<Curl> {
    let mut out = Vec::new();
    for block in markdown.split("```sh\n").skip(1) {
        let block = &block[..block.find("```").unwrap()];
        for command in block.split("curl ").skip(1) {
            let url = command
                .split_whitespace()
                .map(|w| w.trim_matches('\''))
                .find(|w| w.starts_with("http://127.0.0.1:7433/"))
                .unwrap();
            let path = url["http://127.0.0.1:7433".len()..]
                .split('?')
                .next()
                .unwrap()
                .to_owned();
            let body = command
                .split_once("-d '")
                .map(|(_, rest)| rest[..rest.find('\'').unwrap()].to_owned());
            let method = match command.split_once("-X ") {
                Some((_, rest)) => rest.split_whitespace().next().unwrap().to_owned(),
                None if body.is_some() => "POST".into(),
                None => "GET".into(),
            };
            // The answer: the `# ` lines after the command, joined.
            let answer: String = command
                .lines()
                .skip_while(|l| !l.starts_with('#'))
                .take_while(|l| l.starts_with('#'))
                .map(|l| l.trim_start_matches('#').trim())
                .collect();
            out.push(Curl {
                method,
                path,
                body,
                answer: (!answer.is_empty()).then_some(answer),
            });
        }
    }
    out
}

/// The operation a concrete path names.
fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    let segments: Vec<&str> = path.split('/').collect();
    for (template, item) in doc["paths"].as_object().unwrap() {
        let t: Vec<&str> = template.split('/').collect();
        let matches = t.len() == segments.len()
            && t.iter()
                .zip(&segments)
                .all(|(t, s)| t == s || t.starts_with('{'));
        if matches && let Some(op) = item.get(method.to_ascii_lowercase()) {
            return op;
        }
    }
    panic!("http-api.md shows {method} {path}, which schema/openapi.json does not document")
}

#[test]
fn schema_openapi_examples_validate() {
    let doc = checked_in();
    let markdown = std::fs::read_to_string(root().join("http-api.md")).unwrap();
    let curls = curls(&markdown);
    let (mut bodies, mut answers) = (0, 0);
    for c in &curls {
        let op = operation(&doc, &c.method, &c.path);
        let what = format!("http-api.md: {} {}", c.method, c.path);
        if let Some(body) = &c.body {
            let body: Value = serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("{what}: the example body is not JSON: {e}"));
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            check(&doc, schema, &body, &what);
            bodies += 1;
        }
        // An answer shown in full (not abbreviated with `...`) must match the 200 schema.
        if let Some(answer) = c.answer.as_deref().filter(|a| !a.contains("...,")) {
            if let Ok(answer) = serde_json::from_str::<Value>(answer) {
                let schema = &op["responses"]["200"]["content"]["application/json"]["schema"];
                check(&doc, schema, &answer, &format!("{what} (answer)"));
                answers += 1;
            }
        }
    }
    assert!(
        bodies >= 7,
        "found {bodies} example bodies in http-api.md: {curls:?}"
    );
    assert!(answers >= 4, "found {answers} full answers in http-api.md");

    // The error example.
    let error = markdown
        .split("```json\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .unwrap();
    let error: Value = serde_json::from_str(error).unwrap();
    check(
        &doc,
        &json!({"$ref": "#/components/schemas/ApiError"}),
        &error,
        "http-api.md: the error example",
    );

    // The document's own request examples.
    let mut examples = 0;
    for item in doc["paths"].as_object().unwrap().values() {
        for (method, op) in item.as_object().unwrap() {
            for (media, content) in op["requestBody"]["content"]
                .as_object()
                .into_iter()
                .flatten()
            {
                for (name, example) in content["examples"].as_object().unwrap() {
                    let what = format!("{method} {} {media} example {name}", op["operationId"]);
                    check(&doc, &content["schema"], &example["value"], &what);
                    examples += 1;
                }
            }
        }
    }
    assert!(examples >= 18, "{examples} examples");
}

/// A 200 answer of `operation` parsed as its `kora_model` type and encoded again, as a client
/// of the contract would see it; `None` for the answers that have no such type (text, and the
/// two views that hold policy types).
fn reencoded(operation: &str, bytes: &[u8]) -> Option<Vec<u8>> {
    fn again<T: serde::de::DeserializeOwned + serde::Serialize>(bytes: &[u8]) -> Vec<u8> {
        let typed: T = serde_json::from_slice(bytes).unwrap_or_else(|e| {
            panic!(
                "{} does not parse {}: {e}",
                std::any::type_name::<T>(),
                String::from_utf8_lossy(bytes)
            )
        });
        serde_json::to_vec(&typed).unwrap()
    }
    use kora_model::*;
    Some(match operation {
        "getHealth" => again::<Health>(bytes),
        "getLog" => again::<LogPage>(bytes),
        "getProfile" => again::<ProfileRecord>(bytes),
        "getFit" => again::<FitVerdict>(bytes),
        "getSuggestions" => again::<SuggestionsView>(bytes),
        "getWindows" => again::<WindowsView>(bytes),
        "getSeries" => again::<SeriesView>(bytes),
        "getProductMetrics" => again::<ProductMetrics>(bytes),
        "getConsent" | "putConsent" => again::<ConsentState>(bytes),
        "getExportPreview" => again::<ExportPreview>(bytes),
        "postExport" => again::<ExportOutcome>(bytes),
        "postSamples" | "postRuns" | "postEvents" | "postFeedback" | "putReadiness" => {
            again::<IngestAck>(bytes)
        }
        _ => return None,
    })
}

/// Resolves a local `$ref` (`#/components/...`) of the document.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str() {
        Some(r) => doc.pointer(r.trim_start_matches('#')).unwrap(),
        None => v,
    }
}

/// Drives the real router through a scenario that fills every view (a hardware snapshot, a
/// sustained latency trigger and its suggestions, feedback, consent, exports, errors of each
/// kind) and checks every answer against the document: its status is documented for the
/// operation, its body matches the status's schema and its required headers are there with
/// their documented values. Schemathesis does the same against a live service with generated
/// requests; this reaches the states random requests do not.
#[tokio::test]
async fn schema_openapi_responses_conform() {
    let dir = tempfile::tempdir().unwrap();
    let (router, bearer, state) = app_with_state(dir.path());
    let doc = checked_in();
    let mut covered: BTreeSet<(String, String, u16)> = BTreeSet::new();
    let now = kora_pipeline::clock::wall_ms();

    let send = |method: &'static str,
                uri: String,
                content_type: Option<&'static str>,
                body: Vec<u8>,
                token: bool,
                host: &'static str| {
        let router = router.clone();
        let bearer = bearer.clone();
        async move {
            let mut req = Request::builder()
                .method(method)
                .uri(&uri)
                .header("host", host);
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            if token {
                req = req.header("authorization", bearer);
            }
            let response = router
                .oneshot(req.body(Body::from(body)).unwrap())
                .await
                .unwrap();
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (method, uri, status, headers, bytes)
        }
    };
    let mut answers = Vec::new();
    macro_rules! call {
        ($method:expr, $uri:expr) => {
            call!($method, $uri, None, Vec::new(), false, HOST)
        };
        ($method:expr, $uri:expr, json $body:expr) => {
            call!(
                $method,
                $uri,
                Some("application/json"),
                $body.to_string().into_bytes(),
                false,
                HOST
            )
        };
        ($method:expr, $uri:expr, token json $body:expr) => {
            call!(
                $method,
                $uri,
                Some("application/json"),
                $body.to_string().into_bytes(),
                true,
                HOST
            )
        };
        ($method:expr, $uri:expr, $ct:expr, $body:expr, $token:expr, $host:expr) => {{
            let answer = send($method, $uri.to_string(), $ct, $body, $token, $host).await;
            let body: Value = serde_json::from_slice(&answer.4).unwrap_or(Value::Null);
            answers.push(answer);
            body
        }};
    }

    // Before the first hardware snapshot.
    call!("GET", "/v1/profile");
    call!("GET", "/v1/fit?model_required_vram_mb=1");
    let fixture = root().join("crates/probe/tests/fixtures/desktop_rtx4090.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let recording = kora_probe::Recording::from_json(&fixture["recording"].to_string()).unwrap();
    let mut probe = kora_probe::Probe::from_recording(recording);
    let _ = probe.snapshot(now - 1000);
    state
        .pipeline
        .ingest_snapshot(probe.snapshot(now))
        .await
        .unwrap();

    // Samples over ten minutes (closing time windows), runs that sustain a latency trigger
    // (and fire it again, suppressed by the cooldown), a cloud run, events of every kind.
    let samples: Vec<Value> = (0..60)
        .flat_map(|i| {
            let ts = now - 600_000 + i * 10_000;
            [
                json!({"signal": "cpu_load_pct", "value": 40 + i % 50, "ts_ms": ts}),
                json!({"signal": "gpu_vram_free_mb", "device": 0, "value": 9000, "ts_ms": ts}),
                json!({"signal": "queue_wait_ms", "value": 1500, "ts_ms": ts, "model_id": "slow-13b"}),
                json!({"signal": "active_sessions", "value": 3, "ts_ms": ts}),
                json!({"signal": "ram_free_mb", "unavailable": "not read", "ts_ms": ts}),
            ]
        })
        .collect();
    call!("POST", "/v1/samples", json json!({ "samples": samples }));
    let run = |i: i64, substrate: &str, latency: f64| {
        json!({
            "id": format!("run-{substrate}-{i}"), "ts_ms": now - 300_000 + i * 1000,
            "run_id": format!("r{i}"), "session_id": format!("s{}", i % 3), "model_id": "slow-13b",
            "substrate": substrate, "prompt_hash": kora_model::prompt_hash(&format!("prompt {i}")),
            "context_tokens": 4096, "tokens_in": 3000, "tokens_out": 500,
            "model_latency_ms": latency, "total_latency_ms": latency + 500.0,
            "deterministic_stage_ms": 400, "model_stage_ms": latency, "queue_wait_ms": 10,
            "validation_retry_count": i % 4, "budget_breach_count": 0, "prompt_tokens_sent": 3000,
            "stages": [{"name": "parse", "kind": "deterministic", "ms": 12.5},
                       {"name": "generate", "kind": "model", "ms": latency}],
        })
    };
    let runs: Vec<Value> = (0..60)
        .map(|i| run(i, "local", 6000.0))
        .chain([run(100, "cloud", 900.0)])
        .collect();
    call!("POST", "/v1/runs", json json!({ "runs": runs }));
    // Read-your-writes: ten more slow runs close a block, and the answer waits for the
    // engine's decisions on them.
    let more: Vec<Value> = (60..70).map(|i| run(i, "local", 6000.0)).collect();
    let waited = call!("POST", "/v1/runs?wait=decisions&timeout_ms=10000",
                       json json!({ "runs": more }));
    assert_eq!(waited["decisions_complete"], true, "{waited}");
    assert!(waited["decisions"].is_array(), "{waited}");
    call!("POST", "/v1/runs?wait=later", json json!({ "runs": [run(70, "local", 1.0)] }));
    call!("POST", "/v1/samples?timeout_ms=5",
          json json!({ "samples": [{"signal": "cpu_load_pct", "value": 1}] }));
    call!("POST", "/v1/events", json json!({"events": [
        {"kind": "session_started", "session_id": "s1"},
        {"kind": "model_load", "model_id": "llama-70b", "model_required_vram_mb": 40000,
         "outcome": "failed", "quantization": "q4", "params_b": 70, "session_id": "s1"},
        {"kind": "model_load", "model_id": "slow-13b", "model_required_vram_mb": 9000,
         "outcome": "ok", "kv_cache_bytes_per_token": 819200},
        {"kind": "context_request", "model_id": "slow-13b", "requested_context_tokens": 65536,
         "local_supported_context_tokens": 8192, "session_id": "s1",
         "prompt_hash": kora_model::prompt_hash("long")},
        {"kind": "context_oom", "model_id": "slow-13b", "session_id": "s1"},
        {"kind": "session_ended", "session_id": "s1"},
    ]}));
    state.pipeline.catch_up().await.unwrap();

    // The views, the feedback on two suggestions, the readiness report.
    let suggestions = call!("GET", "/v1/suggestions?limit=1000");
    let suggestions = suggestions["suggestions"].as_array().unwrap().clone();
    assert!(suggestions.len() >= 2, "{suggestions:?}");
    let first = &suggestions[0]["suggestion"];
    let choice = first["options"][0]["id"].as_str().unwrap();
    let id = first["suggestion_id"].as_str().unwrap();
    call!("POST", format!("/v1/suggestions/{id}/feedback"),
          json json!({"action": "accepted", "choice": choice}));
    call!("POST", format!("/v1/suggestions/{id}/feedback"),
          json json!({"action": "accepted", "choice": "no-such-option"}));
    let second = suggestions[1]["suggestion"]["suggestion_id"]
        .as_str()
        .unwrap();
    call!("POST", format!("/v1/suggestions/{second}/feedback"),
          json json!({"action": "dismissed", "insist_same_tier": true}));
    call!("POST", "/v1/suggestions/none/feedback", json json!({"action": "dismissed"}));
    call!("PUT", "/v1/cloud/readiness", json json!({"plugin_installed": true,
          "network_available": true, "authenticated": true, "credits_available": false}));
    state.pipeline.catch_up().await.unwrap();
    for uri in [
        "/v1/health",
        "/v1/profile",
        "/v1/fit?model_required_vram_mb=4000&context_tokens=8192",
        "/v1/fit?model_required_vram_mb=900000",
        "/v1/fit",
        "/v1/triggers",
        "/v1/thresholds",
        "/v1/suggestions",
        "/v1/suggestions?category=latency&scope=slow-13b",
        "/v1/suggestions?category=nope",
        "/v1/windows?limit=1000",
        "/v1/windows?kind=runs",
        "/v1/windows?kind=none",
        "/v1/series",
        "/v1/series?series=cpu_load_pct&points=10",
        "/v1/series?points=0",
        "/v1/log?limit=1000",
        "/v1/log?kind=nope",
        "/v1/log?bogus=1",
        "/v1/log?kind=run&substrate=cloud",
        "/v1/log?substrate=local&limit=5",
        "/v1/log?substrate=moon",
        "/v1/log?kind=window&substrate=cloud",
        "/v1/stream?follow=false",
        "/v1/stream?follow=false&last_event_id=0",
        "/v1/stream?follow=maybe",
        "/v1/stream?last_event_id=1.0",
        "/v1/metrics/product",
        "/v1/metrics/product?range=all",
        "/v1/metrics/product?from_ms=1",
        "/v1/metrics/product?range=1y",
        "/v1/consent",
        "/v1/export/preview",
        "/metrics",
        "/",
        "/dashboards/app.js",
        "/dashboards/nope.js",
        "/dashboards",
        "/dashboards/",
        "/favicon.ico",
    ] {
        call!("GET", uri);
    }
    for kind in kora_model::RecordKind::ALL {
        call!("GET", format!("/v1/log?kind={}", kind.as_str()));
    }

    // Consent and export.
    call!("PUT", "/v1/consent", json json!({"enabled": true}));
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    call!("POST", "/v1/export", token json json!({"to": "otlp", "endpoint": "http://127.0.0.1:9/"}));
    call!("PUT", "/v1/consent", token json json!({"enabled": true, "actor": "cli"}));
    call!("PUT", "/v1/consent", token json json!({"enabled": true, "scope": "other"}));
    let file = dir.path().join("export.json").display().to_string();
    call!("POST", "/v1/export", token json json!({"to": "file", "path": file}));
    call!("POST", "/v1/export", token json json!({"to": "file", "path": file}));
    call!("POST", "/v1/export", token json json!({"to": "otlp",
          "endpoint": "http://127.0.0.1:4318/v1/metrics", "dry_run": true}));
    call!("POST", "/v1/export", token json json!({"to": "otlp",
          "endpoint": format!("http://{closed_port}/v1/metrics")}));
    call!("GET", "/v1/export/preview");
    call!("PUT", "/v1/consent", token json json!({"enabled": false}));
    call!("POST", "/v1/export", token json json!({"to": "file", "path": file}));

    // Errors of every kind a write can meet.
    call!("POST", "/v1/samples", json json!({"samples": []}));
    call!("POST", "/v1/samples", json json!({"samples": [{"signal": "nope", "value": 1}]}));
    call!("POST", "/v1/runs", json json!({ "runs": [run(0, "local", 1.0)] }));
    call!(
        "POST",
        "/v1/samples",
        Some("text/plain"),
        b"{}".to_vec(),
        false,
        HOST
    );
    call!(
        "POST",
        "/v1/samples",
        Some("application/json"),
        vec![b' '; kora_model::MAX_BODY_BYTES + 1],
        false,
        HOST
    );
    call!(
        "GET",
        "/v1/health",
        None,
        Vec::new(),
        false,
        "evil.example:7433"
    );

    let mut failures = Vec::new();
    let mut typed = BTreeSet::new();
    for (method, uri, status, headers, bytes) in &answers {
        let path = uri.split('?').next().unwrap();
        let op = operation(&doc, method, path);
        let op_id = op["operationId"].as_str().unwrap().to_owned();
        let Some(response) = op["responses"].get(status.to_string()) else {
            failures.push(format!("{method} {uri}: {status} is not documented"));
            continue;
        };
        let response = resolve(&doc, response);
        for (name, header) in response["headers"].as_object().into_iter().flatten() {
            let header = resolve(&doc, header);
            let value = headers.get(name.as_str()).map(|v| v.to_str().unwrap());
            match (value, header["schema"].get("const")) {
                (None, _) if header["required"] == true => {
                    failures.push(format!("{method} {uri}: {status} without {name}"));
                }
                (Some(v), Some(c)) if c != v => {
                    failures.push(format!("{method} {uri}: {name} is {v:?}, documented {c}"));
                }
                _ => {}
            }
        }
        let content_type = headers.get("content-type").map(|v| {
            v.to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim()
                .to_owned()
        });
        match (&content_type, response.get("content")) {
            (None, None) => {}
            (Some(ct), Some(content)) => match content.get(ct.as_str()) {
                None => failures.push(format!("{method} {uri}: {status} {ct} is not documented")),
                Some(media) if ct == "application/json" => {
                    if *status == 200
                        && let Some(again) = reencoded(&op_id, bytes)
                    {
                        typed.insert(op_id.clone());
                        if again != bytes.as_ref() {
                            failures.push(format!(
                                "{method} {uri}: the kora_model type of the answer re-encodes \
                                 it as {}, not as {}",
                                String::from_utf8_lossy(&again),
                                String::from_utf8_lossy(bytes)
                            ));
                        }
                    }
                    let body: Value = serde_json::from_slice(bytes).unwrap();
                    let v = validator(&doc, &media["schema"]);
                    for e in v.iter_errors(&body) {
                        failures.push(format!(
                            "{method} {uri}: {status} body: {e} at {}",
                            e.instance_path()
                        ));
                    }
                }
                Some(media) if ct == "text/event-stream" => {
                    // Each event, as an SSE parser gives it, against the per-event schema.
                    let v = validator(&doc, &media["schema"]);
                    let text = std::str::from_utf8(bytes).unwrap();
                    let mut events = 0;
                    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
                        let mut event = serde_json::Map::new();
                        for line in block.lines().filter(|l| !l.starts_with(':')) {
                            let (k, v) = line.split_once(':').unwrap_or((line, ""));
                            let v = v.strip_prefix(' ').unwrap_or(v);
                            let value = match k {
                                "retry" => json!(v.parse::<u64>().unwrap()),
                                _ => json!(v),
                            };
                            event.insert(k.to_owned(), value);
                        }
                        if let Some(data) = event.get("data").and_then(Value::as_str) {
                            serde_json::from_str::<Value>(data).unwrap_or_else(|e| {
                                panic!("{method} {uri}: an event's data is not JSON: {e}")
                            });
                        }
                        let event = Value::Object(event);
                        for e in v.iter_errors(&event) {
                            failures.push(format!("{method} {uri}: event {event}: {e}"));
                        }
                        events += 1;
                    }
                    assert!(events >= 2, "{method} {uri}: {text}");
                }
                Some(_) => {}
            },
            (ct, content) => failures.push(format!(
                "{method} {uri}: {status} with content type {ct:?}, documented {content:?}"
            )),
        }
        covered.insert((op_id, method.to_string(), *status));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        typed.len(),
        17,
        "the answers parsed with their kora_model type: {typed:?}"
    );

    // Every operation was seen succeeding, and the error statuses were met.
    let succeeded: BTreeSet<&str> = covered
        .iter()
        .filter(|(_, _, s)| *s < 400)
        .map(|(id, _, _)| id.as_str())
        .collect();
    let all: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .map(|op| op["operationId"].as_str().unwrap())
        .collect();
    assert_eq!(succeeded, all, "operations never seen succeeding");
    let statuses: BTreeSet<u16> = covered.iter().map(|(_, _, s)| *s).collect();
    for s in [200, 303, 400, 401, 403, 404, 409, 413, 415, 502, 503] {
        assert!(statuses.contains(&s), "no {s} was checked: {statuses:?}");
    }
}
