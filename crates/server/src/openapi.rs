//! The OpenAPI 3.1 document of the HTTP API (`schema/openapi.json`).
//!
//! Built from the types the handlers decode and answer with (their JSON Schemas come from
//! schemars), so that it cannot drift from them: a test compares the checked-in file with
//! [`document`], and probes the real router with every documented operation (and every
//! undocumented method of a documented path, which must be a 405). The prose of the contract
//! stays in `http-api.md`; this document says what a machine can check.

use schemars::JsonSchema;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use kora_model::{
    ApiError, ConsentChange, ConsentState, EVENT_ID_PATTERN, ErrorCode, EventBatch, ExportOutcome,
    ExportPreview, ExportRequest, Feedback, FitQuery, FitVerdict, Health, IngestAck, IngestQuery,
    LogPage, LogQuery, ProductMetrics, ProfileRecord, RangeQuery, Readiness, RunBatch, SampleBatch,
    SeriesQuery, SeriesView, StreamQuery, SuggestionsQuery, SuggestionsView, TriggersQuery,
    WindowsQuery, WindowsView,
};

use crate::views::{ThresholdsView, TriggersView};

/// Where the components live, as a JSON pointer.
const COMPONENTS: &str = "/components/schemas";
/// The suffix of a request body's component when its schema differs from the response one of
/// the same type (e.g. a field the client may leave out but the service always sends).
const INPUT_SUFFIX: &str = "Input";

/// The media types a request body may have: every body is decoded by the same code.
const BODY_TYPES: [&str; 2] = ["application/json", "application/msgpack"];

/// One error status: the response component describing it, and the `error` codes it carries.
struct ErrorStatus {
    status: u16,
    /// The component's name: its code's (`NotFound`), or for a status with several codes, the
    /// status's reason phrase (`BadRequest`).
    name: String,
    codes: Vec<ErrorCode>,
}

/// Every error status the service answers, from [`ErrorCode::ALL`], in status order.
fn error_statuses() -> Vec<ErrorStatus> {
    let mut out: Vec<ErrorStatus> = Vec::new();
    for &code in ErrorCode::ALL {
        match out.iter_mut().find(|e| e.status == code.status()) {
            Some(e) => e.codes.push(code),
            None => out.push(ErrorStatus {
                status: code.status(),
                name: String::new(),
                codes: vec![code],
            }),
        }
    }
    out.sort_by_key(|e| e.status);
    for e in &mut out {
        e.name = match e.codes.as_slice() {
            [one] => pascal_case(one.as_str()),
            _ => axum::http::StatusCode::from_u16(e.status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .map_or_else(|| format!("Error{}", e.status), pascal_case),
        };
    }
    out
}

/// `not_found` and `Not Found` are `NotFound`.
fn pascal_case(words: &str) -> String {
    words
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

impl ErrorStatus {
    /// Each code's description; prefixed by the code when the status has several.
    fn description(&self) -> String {
        match self.codes.as_slice() {
            [one] => one.description().to_owned(),
            several => several
                .iter()
                .map(|c| format!("`{}`: {}", c.as_str(), c.description()))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// Statuses every operation can answer: the trust boundary, the token beyond loopback, a panic.
const ALWAYS: &[u16] = &[401, 403, 500];
/// ... plus what reading the store can answer (a reopening store is a 503).
const READS: &[u16] = &[401, 403, 500, 503];
/// ... plus what a write's body and its durable append can answer.
const WRITES: &[u16] = &[400, 401, 403, 413, 415, 500, 503, 507];

/// One documented operation.
struct Op {
    method: &'static str,
    path: &'static str,
    id: &'static str,
    tag: &'static str,
    summary: &'static str,
    description: &'static str,
    /// The root schema of the query struct the handler decodes.
    query: Option<Value>,
    /// Path (and header) parameters.
    path_params: Vec<Value>,
    /// The request body's schema and its examples.
    body: Option<(Value, Vec<(&'static str, Value)>)>,
    /// The `200` (or `303`) response object.
    ok: (u16, Value),
    errors: Vec<u16>,
    token: bool,
}

impl Op {
    fn get(path: &'static str, id: &'static str, tag: &'static str) -> Op {
        Op {
            method: "get",
            path,
            id,
            tag,
            summary: "",
            description: "",
            query: None,
            path_params: Vec::new(),
            body: None,
            ok: (200, json!({})),
            errors: READS.to_vec(),
            token: false,
        }
    }

    fn write(method: &'static str, path: &'static str, id: &'static str, tag: &'static str) -> Op {
        Op {
            method,
            errors: WRITES.to_vec(),
            ..Op::get(path, id, tag)
        }
    }

    fn text(mut self, summary: &'static str, description: &'static str) -> Op {
        self.summary = summary;
        self.description = description;
        self
    }

    fn errors(mut self, base: &[u16], extra: &[u16]) -> Op {
        let mut all: Vec<u16> = base.iter().chain(extra).copied().collect();
        all.sort_unstable();
        all.dedup();
        self.errors = all;
        self
    }
}

/// The JSON Schemas of the request and response types, as `#/components/schemas` entries.
struct Schemas {
    /// Describes how types are decoded: request bodies and query strings.
    input: SchemaGenerator,
    /// Describes how types are encoded: response bodies.
    output: SchemaGenerator,
}

impl Schemas {
    fn new() -> Schemas {
        let settings = SchemaSettings::draft2020_12().with(|s| {
            s.definitions_path = COMPONENTS.into();
            s.meta_schema = None;
        });
        Schemas {
            input: settings.clone().for_deserialize().into_generator(),
            output: settings.for_serialize().into_generator(),
        }
    }

    fn request<T: JsonSchema>(&mut self) -> Value {
        self.input.subschema_for::<T>().to_value()
    }

    fn response<T: JsonSchema>(&mut self) -> Value {
        self.output.subschema_for::<T>().to_value()
    }

    /// The schema of a query struct, inlined: it becomes the operation's parameters.
    fn query<T: JsonSchema>() -> Value {
        SchemaSettings::draft2020_12()
            .with(|s| {
                s.inline_subschemas = true;
                s.meta_schema = None;
            })
            .for_deserialize()
            .into_generator()
            .into_root_schema_for::<T>()
            .to_value()
    }
}

/// A `$ref` to a component.
fn component(name: &str) -> Value {
    json!({ "$ref": format!("#{COMPONENTS}/{name}") })
}

/// The headers every response carries (http-api.md, "Trust boundary").
fn security_headers() -> Value {
    let mut h = Map::new();
    for name in [
        "X-Content-Type-Options",
        "Cross-Origin-Resource-Policy",
        "Content-Security-Policy",
        "Referrer-Policy",
    ] {
        h.insert(
            name.into(),
            json!({ "$ref": format!("#/components/headers/{name}") }),
        );
    }
    Value::Object(h)
}

fn json_response(description: &str, schema: Value) -> Value {
    json!({
        "description": description,
        "headers": security_headers(),
        "content": { "application/json": { "schema": schema } },
    })
}

fn text_response(description: &str, types: &[&str]) -> Value {
    let content: Map<String, Value> = types
        .iter()
        .map(|t| {
            let essence = t.split(';').next().unwrap_or(t).trim();
            (
                essence.to_owned(),
                json!({ "schema": { "type": "string" } }),
            )
        })
        .collect();
    json!({
        "description": description,
        "headers": security_headers(),
        "content": content,
    })
}

/// `GET /v1/stream`'s answer: its schema describes one event (OpenAPI 3.1 has no
/// `itemSchema`; checkers such as schemathesis read `schema` as the per-event schema).
fn event_stream_response() -> Value {
    json!({
        "description": "Server-Sent Events, until the client leaves (or, with `follow=false`, \
            after `ready`). Each `data:` is one JSON object; see http-api.md.",
        "headers": security_headers(),
        "content": { "text/event-stream": { "schema": {
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": { "enum": crate::stream::EVENT_NAMES },
                "data": { "type": "string", "contentMediaType": "application/json" },
                "id": { "type": "string", "pattern": EVENT_ID_PATTERN },
                "retry": { "type": "integer", "minimum": 0 },
            },
        } } },
    })
}

fn redirect_response() -> Value {
    let mut headers = security_headers();
    if let Value::Object(h) = &mut headers {
        h.insert(
            "Location".into(),
            json!({ "required": true, "schema": { "type": "string", "const": "/" } }),
        );
    }
    json!({ "description": "Redirects to the dashboards at `/`.", "headers": headers })
}

fn path_param(name: &str, description: &str, schema: Value) -> Value {
    json!({
        "name": name,
        "in": "path",
        "required": true,
        "description": description,
        "schema": schema,
    })
}

/// Removes `null` from a query parameter's schema: an absent parameter is how a query says
/// "none", so `null` is not a value one can send.
fn not_null(schema: &mut Value) {
    let Value::Object(o) = schema else { return };
    if let Some(Value::Array(types)) = o.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let t = types[0].clone();
            o.insert("type".into(), t);
        }
    }
    if let Some(Value::Array(values)) = o.get_mut("enum") {
        values.retain(|v| !v.is_null());
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(alternatives)) = o.get(key) {
            let kept: Vec<Value> = alternatives
                .iter()
                .filter(|a| a.get("type") != Some(&json!("null")))
                .cloned()
                .collect();
            if kept.len() == 1 {
                o.remove(key);
                if let Value::Object(only) = &kept[0] {
                    for (k, v) in only {
                        o.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
            }
        }
    }
}

/// The `in: query` parameters of a query struct's root schema.
fn query_params(root: &Value) -> Vec<Value> {
    let required: Vec<&str> = root
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(Value::Object(props)) = root.get("properties") else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(name, schema)| {
            let mut schema = schema.clone();
            not_null(&mut schema);
            let description = match &mut schema {
                Value::Object(o) => o.remove("description"),
                _ => None,
            };
            let mut p = json!({
                "name": name,
                "in": "query",
                "required": required.contains(&name.as_str()),
                "schema": schema,
            });
            if let (Some(d), Value::Object(o)) = (description, &mut p) {
                o.insert("description".into(), d);
            }
            p
        })
        .collect()
}

fn example_samples() -> Value {
    json!({"samples": [
        {"signal": "cpu_load_pct", "value": 37.5},
        {"signal": "gpu_vram_free_mb", "unavailable": "no NVIDIA GPU (NVML library not found)"},
    ]})
}

fn example_runs() -> Value {
    json!({"runs": [{
        "run_id": "r1", "session_id": "s1", "model_id": "llama-3-8b-q4", "substrate": "local",
        "prompt_hash": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "context_tokens": 2048, "tokens_in": 1500, "tokens_out": 300,
        "model_latency_ms": 2100, "total_latency_ms": 2600, "deterministic_stage_ms": 400,
        "model_stage_ms": 2100, "validation_retry_count": 0, "budget_breach_count": 0,
    }]})
}

fn example_events() -> Value {
    json!({"events": [
        {"kind": "session_started", "session_id": "s1"},
        {"kind": "model_load", "model_id": "llama-70b", "model_required_vram_mb": 40000,
         "outcome": "failed"},
    ]})
}

/// Every operation the router serves.
fn operations(s: &mut Schemas) -> Vec<Op> {
    let ack = |s: &mut Schemas, what: &str| {
        json_response(
            &format!("{what} stored durably (fsync'd): what was new, what was a retry."),
            s.response::<IngestAck>(),
        )
    };
    let ingest = |s: &mut Schemas,
                  path: &'static str,
                  id: &'static str,
                  summary: &'static str,
                  description: &'static str,
                  schema: Value,
                  example: Value| Op {
        query: Some(Schemas::query::<IngestQuery>()),
        body: Some((schema, vec![("example", example)])),
        ok: (200, ack(s, "The batch was")),
        ..Op::write("post", path, id, "ingest")
            .text(summary, description)
            .errors(WRITES, &[409, 422])
    };
    let dashboard_types = crate::dashboard::content_types();
    let samples = s.request::<SampleBatch>();
    let runs = s.request::<RunBatch>();
    let events = s.request::<EventBatch>();
    vec![
        ingest(
            s,
            "/v1/samples",
            "postSamples",
            "Ingest hardware and concurrency samples",
            "A batch of 1 to 10,000 samples, all-or-nothing. Each has `value` or `unavailable` \
             (the reason no reading could be taken), never both. See http-api.md for the rules. \
             With `wait=decisions`, the answer lists the decisions of the time windows the \
             samples closed.",
            samples,
            example_samples(),
        ),
        ingest(
            s,
            "/v1/runs",
            "postRuns",
            "Ingest finished runs",
            "A batch of 1 to 10,000 runs, all-or-nothing. Raw prompts are never accepted: \
             `prompt_hash` is the SHA-256 of the normalized prompt. With `wait=decisions`, the \
             answer comes once the engine has folded the runs, with the decisions they caused.",
            runs,
            example_runs(),
        ),
        ingest(
            s,
            "/v1/events",
            "postEvents",
            "Ingest runtime events",
            "A batch of 1 to 10,000 events, each tagged by `kind`, all-or-nothing. \
             `wait=decisions` as for runs.",
            events,
            example_events(),
        ),
        Op {
            ok: (
                200,
                json_response("The service is up.", s.response::<Health>()),
            ),
            ..Op::get("/v1/health", "getHealth", "views").text(
                "Health, store counts and cardinality limits",
                "`status` is `degraded` after a failed write, until a write succeeds. `limits` \
                 lists each cardinality limit with its count now; `last_limit_hit` the last \
                 batch refused for crossing one.",
            )
        },
        Op {
            query: Some(Schemas::query::<LogQuery>()),
            ok: (
                200,
                json_response("A page of log records.", s.response::<LogPage>()),
            ),
            ..Op::get("/v1/log", "getLog", "views")
                .text(
                    "Log records, newest first",
                    "`next_before` is set when the page is full: pass it as `before`. Unknown \
                     parameters are a 400.",
                )
                .errors(READS, &[400])
        },
        Op {
            ok: (
                200,
                json_response(
                    "The profile and the snapshot it came from.",
                    s.response::<ProfileRecord>(),
                ),
            ),
            ..Op::get("/v1/profile", "getProfile", "views")
                .text(
                    "The LocalCapabilityProfile computed now",
                    "What this machine can run, from its totals: every field is a number with \
                     the formula that produced it, or `unknown` with the reason. 503 until the \
                     probe's first reading (taken at start).",
                )
                .errors(ALWAYS, &[503])
        },
        Op {
            query: Some(Schemas::query::<FitQuery>()),
            ok: (
                200,
                json_response("The verdict.", s.response::<FitVerdict>()),
            ),
            ..Op::get("/v1/fit", "getFit", "views")
                .text(
                    "Whether a model (and a context) fits now",
                    "`verdict` is `fits`, `does_not_fit` (only when every GPU was read) or \
                     `unknown`, with the arithmetic. Memory the runtime's own loaded models \
                     hold counts as reclaimable, as in the profile; the reason says when the \
                     fit needs it. 503 before the first snapshot.",
                )
                .errors(ALWAYS, &[400, 503])
        },
        Op {
            query: Some(Schemas::query::<TriggersQuery>()),
            ok: (
                200,
                json_response(
                    "A page of the trigger states.",
                    s.response::<TriggersView>(),
                ),
            ),
            ..Op::get("/v1/triggers", "getTriggers", "views")
                .text(
                    "Each trigger category's state per scope, a page at a time",
                    "`idle`, `pending` (k of w), `firing`, `resolved` or \
                     `insufficient_evidence`, with the latest evidence, in category then scope \
                     order. At most `limit` states (default 500; at most `max_view_scopes`, 1000 \
                     by default); `next_after` is set when more follow: pass it as `after`.",
                )
                .errors(ALWAYS, &[400])
        },
        Op {
            ok: (
                200,
                json_response(
                    "The active thresholds and tier table.",
                    s.response::<ThresholdsView>(),
                ),
            ),
            ..Op::get("/v1/thresholds", "getThresholds", "views")
                .text(
                    "The active thresholds and the cloud tier table",
                    "With the fingerprint pinned per version.",
                )
                .errors(ALWAYS, &[])
        },
        Op {
            query: Some(Schemas::query::<SuggestionsQuery>()),
            ok: (
                200,
                json_response(
                    "Suggestions and suppressions.",
                    s.response::<SuggestionsView>(),
                ),
            ),
            ..Op::get("/v1/suggestions", "getSuggestions", "views")
                .text(
                    "Suggestions, newest first",
                    "Each with the firing it answers, its feedback and the outcome of an \
                     accepted mitigation; plus the 200 most recent suppressions.",
                )
                .errors(READS, &[400])
        },
        Op {
            path_params: vec![path_param(
                "id",
                "The suggestion's `suggestion_id`.",
                json!({"type": "string"}),
            )],
            body: Some((
                s.request::<Feedback>(),
                vec![
                    (
                        "accepted",
                        json!({"action": "accepted", "choice": "deterministic_filtering"}),
                    ),
                    ("dismissed", json!({"action": "dismissed"})),
                ],
            )),
            ok: (200, ack(s, "The feedback was")),
            ..Op::write(
                "post",
                "/v1/suggestions/{id}/feedback",
                "postFeedback",
                "views",
            )
            .text(
                "Accept or dismiss a suggestion",
                "`choice` must be one of the suggestion's option ids; a `suggestion_id` in the \
                 body must equal the path's. 404 for an unknown suggestion.",
            )
            .errors(WRITES, &[404])
        },
        Op {
            body: Some((
                s.request::<Readiness>(),
                vec![(
                    "not_authenticated",
                    json!({"plugin_installed": true, "network_available": true,
                           "authenticated": false, "credits_available": true}),
                )],
            )),
            ok: (200, ack(s, "The report was")),
            ..Op::write("put", "/v1/cloud/readiness", "putReadiness", "views").text(
                "The KrakoBackend plugin's readiness report",
                "All four flags are required. A report older than 10 minutes counts as not \
                 ready; readiness gates only the cloud action.",
            )
        },
        Op {
            query: Some(Schemas::query::<StreamQuery>()),
            path_params: vec![json!({
                "name": "Last-Event-ID",
                "in": "header",
                "required": false,
                "description": "The id of the last event received: the stream resumes after \
                    it. `EventSource` sends it when it reconnects.",
                "schema": { "type": "string", "pattern": EVENT_ID_PATTERN },
            })],
            ok: (200, event_stream_response()),
            ..Op::get("/v1/stream", "getStream", "views")
                .text(
                    "Every decision as it is committed (Server-Sent Events)",
                    "Events `firing`, `resolved`, `suggestion`, `suppression`, \
                     `mitigation_outcome`, `consent`, `export` (id: the log seq; \
                     `resolved`: seq.rank), `health` (no id), then `ready` after the \
                     backfill, `overflow` when the client falls too far behind. Resume with \
                     `Last-Event-ID`: nothing missed, nothing twice. A keep-alive comment \
                     every 15 s.",
                )
                .errors(READS, &[400])
        },
        Op {
            query: Some(Schemas::query::<WindowsQuery>()),
            ok: (
                200,
                json_response("Closed windows.", s.response::<WindowsView>()),
            ),
            ..Op::get("/v1/windows", "getWindows", "views")
                .text(
                    "Closed windows, newest first",
                    "Run blocks of 10 runs per model (`runs`) and 60 s time windows per series \
                     (`time`).",
                )
                .errors(READS, &[400])
        },
        Op {
            query: Some(Schemas::query::<SeriesQuery>()),
            ok: (
                200,
                json_response(
                    "The series keys, or one series downsampled.",
                    s.response::<SeriesView>(),
                ),
            ),
            ..Op::get("/v1/series", "getSeries", "views")
                .text(
                    "Series keys, or one series downsampled",
                    "Without `series`: a page of the keys, in order (`limit`: default 500, at \
                     most `max_view_scopes`; `next_after` is set when more follow: pass it as \
                     `after`). With it: at most `points` buckets of `{t, min, max, mean, n}` \
                     between `from_ms` and `to_ms` (default: the last hour; at most 31 days).",
                )
                .errors(READS, &[400])
        },
        Op {
            query: Some(Schemas::query::<RangeQuery>()),
            ok: (
                200,
                json_response("The product metrics.", s.response::<ProductMetrics>()),
            ),
            ..Op::get("/v1/metrics/product", "getProductMetrics", "privacy")
                .text(
                    "The product metrics (specification Section 8)",
                    "Over `range` (default `24h`) or a custom `from_ms`/`to_ms` range, not both. \
                     A rate with nothing to divide has `value: null`.",
                )
                .errors(READS, &[400])
        },
        Op {
            ok: (
                200,
                json_response("The consent state.", s.response::<ConsentState>()),
            ),
            ..Op::get("/v1/consent", "getConsent", "privacy").text(
                "Export consent and its history",
                "Off until the user opts in.",
            )
        },
        Op {
            body: Some((
                s.request::<ConsentChange>(),
                vec![("off", json!({"enabled": false, "actor": "cli"}))],
            )),
            ok: (
                200,
                json_response(
                    "The change was recorded; the new state.",
                    s.response::<ConsentState>(),
                ),
            ),
            token: true,
            ..Op::write("put", "/v1/consent", "putConsent", "privacy").text(
                "Turn export on or off (token)",
                "Needs the per-install token. Every change is a `consent` record.",
            )
        },
        Op {
            ok: (
                200,
                json_response("What an export would send.", s.response::<ExportPreview>()),
            ),
            ..Op::get("/v1/export/preview", "getExportPreview", "privacy").text(
                "Byte for byte what an export would contain now",
                "With or without consent.",
            )
        },
        Op {
            body: Some((
                s.request::<ExportRequest>(),
                vec![
                    (
                        "otlp_dry_run",
                        json!({"to": "otlp", "endpoint": "http://127.0.0.1:4318/v1/metrics",
                               "dry_run": true}),
                    ),
                    (
                        "file",
                        json!({"to": "file", "path": "/tmp/kora-export.json"}),
                    ),
                ],
            )),
            ok: (
                200,
                json_response(
                    "The export left and was recorded, or (dry run) what would be sent.",
                    s.response::<ExportOutcome>(),
                ),
            ),
            token: true,
            ..Op::write("post", "/v1/export", "postExport", "privacy")
                .text(
                    "Export the aggregates (token)",
                    "Needs the per-install token, and export turned on (403 otherwise). To a new \
                     file (never replaced) or an OTLP/HTTP collector.",
                )
                .errors(WRITES, &[502])
        },
        Op {
            ok: (
                200,
                text_response(
                    "OpenMetrics text of the local aggregates.",
                    &["application/openmetrics-text; version=1.0.0; charset=utf-8"],
                ),
            ),
            ..Op::get("/metrics", "getMetrics", "privacy").text(
                "Prometheus / OpenMetrics exposition",
                "For your own Prometheus and Grafana; local, like every endpoint.",
            )
        },
        Op {
            ok: (
                200,
                text_response("The dashboards' page.", &["text/html; charset=utf-8"]),
            ),
            ..Op::get("/", "getDashboards", "dashboards")
                .text(
                    "The bundled local dashboards",
                    "Every view is this one document, chosen by the URL fragment.",
                )
                .errors(ALWAYS, &[])
        },
        Op {
            path_params: vec![path_param(
                "file",
                "One of the dashboards' files; any other name is a 404.",
                json!({"type": "string", "enum": crate::dashboard::files().collect::<Vec<_>>()}),
            )],
            ok: (
                200,
                text_response(
                    "The file, with `Cache-Control: no-cache`.",
                    &dashboard_types,
                ),
            ),
            ..Op::get("/dashboards/{file}", "getDashboardFile", "dashboards")
                .text("A static file of the dashboards", "")
                .errors(ALWAYS, &[404])
        },
        Op {
            ok: (303, redirect_response()),
            ..Op::get("/dashboards", "getDashboardsRedirect", "dashboards")
                .text("Redirects to `/`", "")
                .errors(ALWAYS, &[])
        },
        Op {
            ok: (303, redirect_response()),
            ..Op::get("/dashboards/", "getDashboardsSlashRedirect", "dashboards")
                .text("Redirects to `/`", "")
                .errors(ALWAYS, &[])
        },
        Op {
            ok: (
                200,
                text_response("The dashboards' icon.", &["image/svg+xml"]),
            ),
            ..Op::get("/favicon.ico", "getFavicon", "dashboards")
                .text("The dashboards' icon (SVG)", "")
                .errors(ALWAYS, &[])
        },
    ]
}

/// Renames the request-side components whose schema differs from the response-side one of the
/// same name, and the references to them, until the two sets agree on every shared name.
fn merge_components(
    mut input: Map<String, Value>,
    output: Map<String, Value>,
    request_schemas: &mut [&mut Value],
) -> Map<String, Value> {
    loop {
        let clashes: Vec<String> = input
            .iter()
            .filter(|(name, schema)| output.get(*name).is_some_and(|o| o != *schema))
            .map(|(name, _)| name.clone())
            .collect();
        if clashes.is_empty() {
            break;
        }
        for name in &clashes {
            if let Some(schema) = input.remove(name) {
                input.insert(format!("{name}{INPUT_SUFFIX}"), schema);
            }
        }
        let rename = |v: &mut Value| rename_refs(v, &clashes);
        input.values_mut().for_each(rename);
        request_schemas
            .iter_mut()
            .for_each(|v| rename_refs(v, &clashes));
    }
    let mut all = output;
    all.extend(input);
    all
}

fn rename_refs(v: &mut Value, names: &[String]) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get_mut("$ref")
                && let Some(name) = r.strip_prefix(&format!("#{COMPONENTS}/"))
                && names.iter().any(|n| n == name)
            {
                *r = format!("#{COMPONENTS}/{name}{INPUT_SUFFIX}");
            }
            o.values_mut().for_each(|v| rename_refs(v, names));
        }
        Value::Array(a) => a.iter_mut().for_each(|v| rename_refs(v, names)),
        _ => {}
    }
}

fn error_responses() -> Map<String, Value> {
    error_statuses()
        .into_iter()
        .map(|e| {
            let codes: Vec<&str> = e.codes.iter().map(|c| c.as_str()).collect();
            let description = e.description();
            let status = e.status;
            let mut headers = security_headers();
            if matches!(status, 503 | 507)
                && let Value::Object(h) = &mut headers
            {
                h.insert(
                    "Retry-After".into(),
                    json!({
                        "description": "Seconds to wait before retrying.",
                        "required": true,
                        "schema": { "type": "integer", "minimum": 1 },
                    }),
                );
            }
            let schema = json!({
                "allOf": [
                    component("ApiError"),
                    { "properties": { "error": { "enum": codes } } },
                ],
            });
            (
                e.name,
                json!({
                    "description": description,
                    "headers": headers,
                    "content": { "application/json": { "schema": schema } },
                }),
            )
        })
        .collect()
}

fn header_components() -> Value {
    json!({
        "X-Content-Type-Options": {
            "description": "On every response.",
            "required": true,
            "schema": { "type": "string", "const": "nosniff" },
        },
        "Cross-Origin-Resource-Policy": {
            "description": "On every response.",
            "required": true,
            "schema": { "type": "string", "const": "same-origin" },
        },
        "Content-Security-Policy": {
            "description": "On every response: the pages load nothing from elsewhere and \
                            cannot be framed.",
            "required": true,
            "schema": {
                "type": "string",
                "const": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
                          form-action 'self'",
            },
        },
        "Referrer-Policy": {
            "description": "On every response.",
            "required": true,
            "schema": { "type": "string", "const": "no-referrer" },
        },
    })
}

/// The whole document, as `schema/openapi.json` holds it.
pub fn document() -> Value {
    let mut s = Schemas::new();
    let mut ops = operations(&mut s);
    // Make sure the error body is a component, whatever else references it.
    s.output.subschema_for::<ApiError>();
    let input = s.input.take_definitions(true);
    let output = s.output.take_definitions(true);
    let mut request_schemas: Vec<&mut Value> = ops
        .iter_mut()
        .filter_map(|op| op.body.as_mut().map(|(schema, _)| schema))
        .collect();
    let schemas = merge_components(input, output, &mut request_schemas);

    let error_names: std::collections::BTreeMap<u16, String> = error_statuses()
        .into_iter()
        .map(|e| (e.status, e.name))
        .collect();
    let mut paths = Map::new();
    for op in ops {
        let mut responses = Map::new();
        responses.insert(op.ok.0.to_string(), op.ok.1);
        for status in &op.errors {
            if let Some(name) = error_names.get(status) {
                responses.insert(
                    status.to_string(),
                    json!({ "$ref": format!("#/components/responses/{name}") }),
                );
            }
        }
        let mut parameters = op.path_params;
        if let Some(root) = &op.query {
            parameters.extend(query_params(root));
        }
        let mut operation = json!({
            "operationId": op.id,
            "tags": [op.tag],
            "summary": op.summary,
            "responses": responses,
        });
        let Value::Object(o) = &mut operation else {
            continue;
        };
        if !op.description.is_empty() {
            o.insert("description".into(), op.description.into());
        }
        if !parameters.is_empty() {
            o.insert("parameters".into(), parameters.into());
        }
        if let Some((schema, examples)) = op.body {
            let examples: Map<String, Value> = examples
                .into_iter()
                .map(|(name, value)| (name.to_owned(), json!({ "value": value })))
                .collect();
            let content: Map<String, Value> = BODY_TYPES
                .iter()
                .map(|t| {
                    (
                        (*t).to_owned(),
                        json!({ "schema": schema, "examples": examples }),
                    )
                })
                .collect();
            o.insert(
                "requestBody".into(),
                json!({ "required": true, "content": content }),
            );
        }
        if op.token {
            o.insert("security".into(), json!([{ "bearerToken": [] }]));
        }
        let entry = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        if let Value::Object(methods) = entry {
            methods.insert(op.method.to_owned(), operation);
        }
    }

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "kora-telemetry HTTP API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The local telemetry store and upgrade-detection service of KORA \
                Studio, on loopback only. The rules behind each field and status are in \
                http-api.md; this document is generated from the service's types \
                (`KORA_UPDATE_SCHEMAS=1 cargo test schema`) and checked against its router. \
                Every request passes the trust boundary first (Host allowlist, Origin rules); \
                every error is JSON (`ApiError`). An unknown path is a 404 `not_found`; a known \
                path with another method a 405 `method_not_allowed` with `Allow`. `HEAD` works \
                wherever `GET` does.",
            "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" },
        },
        "servers": [{ "url": "http://127.0.0.1:7433", "description": "the default listen address" }],
        "tags": [
            { "name": "ingest", "description": "Telemetry in: samples, runs, events." },
            { "name": "views", "description": "What the service derived, and the user's answers." },
            { "name": "privacy", "description": "Product metrics, consent, opt-in export." },
            { "name": "dashboards", "description": "The bundled local dashboards." },
        ],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": error_responses(),
            "headers": header_components(),
            "securitySchemes": {
                "bearerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The per-install token: the content of the file `token` in \
                        the data directory (256 random bits, hex; created 0600 at first start).",
                },
            },
        },
    })
}
