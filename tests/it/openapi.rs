//! `schema/openapi.json`, the OpenAPI document of the HTTP API, is generated from the service's
//! types (`kora_server::openapi::document`). These tests keep it true: the checked-in file is the
//! generator's output (regenerate with `KORA_UPDATE_SCHEMAS=1 cargo test schema`), it documents
//! exactly the routes the router serves and the methods each takes (probed on the real router),
//! and the examples of http-api.md and of the document validate against its schemas.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use kora_server::{AppState, Config, HostPolicy};
use kora_store::{Store, StoreOptions};
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

fn app(dir: &Path) -> (axum::Router, String) {
    let store = Store::open(&dir.join("t.redb"), StoreOptions::default()).unwrap();
    let token = kora_server::token::Token::load_or_create(dir).unwrap();
    let bearer = format!("Bearer {}", token.expose());
    let state = AppState::new(
        Arc::new(store),
        Config {
            token,
            data_dir: dir.to_owned(),
            hosts: HostPolicy {
                port: 7433,
                extra_names: vec![],
            },
        },
    )
    .unwrap();
    (kora_server::router(state), bearer)
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
            let body = response.into_body().collect().await.unwrap().to_bytes();
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
