//! Product metrics (spec Section 8), consent and opt-in export, and the Prometheus exposition.
//!
//! The metrics stay on the machine. Export is off by default; turning it on is an explicit,
//! recorded act (`consent` records) that needs the per-install token, and so does every export.
//! The preview answers, byte for byte, what an export would send now. A bundle holds aggregates
//! only: counts and rates, no prompt hashes, no session or run ids, no model ids, no raw samples.
//! The count of cloud runs (and their tokens) is such an aggregate and is exported; the same
//! count per model is shown locally only.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kora_model::{ConsentRecord, ExportRecord, MIN_TS_MS, ProductMetrics, Record, RecordKind};
use kora_pipeline::ReadModels;
use kora_store::{Batch, Store};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::AppError;

/// The one consent scope there is: aggregated product metrics.
pub const SCOPE: &str = "product_metrics";
/// The format tag of an export bundle.
pub const BUNDLE_FORMAT: &str = "kora-telemetry-export/1";
/// What the user is told when turning export on; recorded with the consent.
pub const CONSENT_TEXT: &str = "Export sends aggregated statistics only: suggestion counts, \
accept and dismiss rates, firings per trigger category, the local mitigation success rate, and \
how many runs executed on Krako Cloud with their token total. It never sends prompt hashes, \
session, run or model ids, or raw samples. You can turn it off at any time.";

const DAY_MS: i64 = 24 * 3600 * 1000;

/// Requires `Authorization: Bearer <token>` (the per-install token) on the routes it wraps.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(t) if state.config.token.matches(t) => next.run(request).await,
        Some(_) => AppError::Unauthorized("the token is wrong".into()).into_response(),
        None => AppError::Unauthorized(
            "this endpoint needs the per-install token: `Authorization: Bearer <token>`, the \
             token being the content of the file `token` in the data directory"
                .into(),
        )
        .into_response(),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, kora_store::ReadError> + Send + 'static,
) -> Result<T, AppError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?
        .map_err(AppError::from)
}

/// The query of `GET /v1/metrics/product`: `range`, or `from_ms`/`to_ms`, not both.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RangeQuery {
    /// `24h` (the default), `7d` or `all`, relative to the server's clock.
    #[cfg_attr(feature = "schema", schemars(extend("enum" = ["24h", "7d", "all"])))]
    range: Option<String>,
    /// A custom range's start (ms, inclusive); default 2000-01-01.
    from_ms: Option<i64>,
    /// A custom range's end (ms, exclusive); default now. After `from_ms`.
    to_ms: Option<i64>,
}

/// Resolves a range against `now_ms`.
fn resolve_range(q: &RangeQuery, now_ms: i64) -> Result<(String, i64, i64), AppError> {
    let bad = |m: String| AppError::Invalid {
        code: "invalid_query",
        message: m,
        field: Some("range".into()),
    };
    if q.from_ms.is_some() || q.to_ms.is_some() {
        if q.range.is_some() {
            return Err(bad("give either range or from_ms/to_ms, not both".into()));
        }
        let from = q.from_ms.unwrap_or(MIN_TS_MS);
        let to = q.to_ms.unwrap_or(now_ms + 1);
        if from >= to {
            return Err(AppError::Invalid {
                code: "invalid_query",
                message: format!("from_ms {from} is not before to_ms {to}"),
                field: Some("from_ms".into()),
            });
        }
        return Ok(("custom".into(), from, to));
    }
    match q.range.as_deref().unwrap_or("24h") {
        "24h" => Ok(("24h".into(), now_ms - DAY_MS, now_ms + 1)),
        "7d" => Ok(("7d".into(), now_ms - 7 * DAY_MS, now_ms + 1)),
        "all" => Ok(("all".into(), MIN_TS_MS, i64::MAX)),
        other => Err(bad(format!("range must be 24h, 7d or all, got {other:?}"))),
    }
}

/// `GET /v1/metrics/product`.
pub async fn product(
    State(state): State<AppState>,
    q: Result<Query<RangeQuery>, QueryRejection>,
) -> Result<Json<ProductMetrics>, AppError> {
    let Query(q) = q.map_err(|e| AppError::bad_request("invalid_query", e.body_text()))?;
    let (name, from, to) = resolve_range(&q, state.now_ms())?;
    // From the read models, brought up to every acknowledged record first: the cost does not
    // grow with the log.
    state.pipeline.settle().await;
    Ok(Json(state.pipeline.product_metrics(&name, from, to, true)))
}

/// The consent state and its history.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ConsentState {
    pub scope: String,
    pub export_enabled: bool,
    /// The record that set the current state; absent while export was never turned on or off.
    pub since: Option<ConsentRecord>,
    pub history: Vec<ConsentRecord>,
    /// What the user is shown when deciding.
    pub text: String,
}

fn consent_state(store: &Store) -> Result<ConsentState, kora_store::ReadError> {
    let history: Vec<ConsentRecord> = store
        .scan_kind(RecordKind::Consent, 0, usize::MAX)?
        .into_iter()
        .filter_map(|e| match e.record {
            Record::Consent(c) if c.scope == SCOPE => Some(c),
            _ => None,
        })
        .collect();
    let since = history.last().cloned();
    Ok(ConsentState {
        scope: SCOPE.into(),
        export_enabled: since.as_ref().is_some_and(|c| c.enabled),
        since,
        history,
        text: CONSENT_TEXT.into(),
    })
}

/// `GET /v1/consent`.
pub async fn get_consent(State(state): State<AppState>) -> Result<Json<ConsentState>, AppError> {
    let store = state.pipeline.store().clone();
    Ok(Json(blocking(move || consent_state(&store)).await?))
}

/// The body of `PUT /v1/consent`.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ConsentChange {
    /// Export on (`true`) or off.
    pub enabled: bool,
    /// Must be `product_metrics` when given.
    #[cfg_attr(feature = "schema", schemars(extend("enum" = ["product_metrics", null])))]
    pub scope: Option<String>,
    /// Who decided (e.g. `cli`, a user name): 1 to 64 printable characters; defaults to `api`.
    pub actor: Option<String>,
}

/// `PUT /v1/consent` (token): turns export on or off, recorded with what the user was shown.
pub async fn put_consent(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ConsentState>, AppError> {
    let change: ConsentChange = crate::ingest::decode(&headers, body)?;
    if let Some(s) = &change.scope
        && s != SCOPE
    {
        return Err(AppError::invalid(
            "scope",
            format!("unknown consent scope {s:?}; the only scope is {SCOPE:?}"),
        ));
    }
    let actor = change.actor.unwrap_or_else(|| "api".into());
    if actor.is_empty() || actor.len() > 64 || actor.chars().any(char::is_control) {
        return Err(AppError::invalid(
            "actor",
            "must be 1 to 64 printable characters",
        ));
    }
    let record = ConsentRecord {
        ts_ms: state.now_ms(),
        scope: SCOPE.into(),
        enabled: change.enabled,
        actor,
        shown: CONSENT_TEXT.into(),
        thresholds_version: state.pipeline.thresholds().version().to_owned(),
    };
    state
        .pipeline
        .append("consent", Batch::Records(vec![Record::Consent(record)]))
        .await?;
    let store = state.pipeline.store().clone();
    Ok(Json(blocking(move || consent_state(&store)).await?))
}

/// An export bundle: aggregates only.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Bundle {
    pub format: &'static str,
    pub scope: &'static str,
    pub thresholds_version: String,
    /// The last log seq and record time the bundle covers.
    pub as_of_seq: u64,
    pub as_of_ms: i64,
    /// The 7 days up to `as_of_ms`, and everything.
    pub last_7d: ProductMetrics,
    pub all: ProductMetrics,
}

/// Builds the bundle from the read models (the log folded up to now): the same log gives the
/// same bytes. The cloud runs are counted without their models (`cloud_runs_by_model` is left
/// out).
fn build_bundle(
    read: &ReadModels,
    thresholds_version: &str,
) -> Result<(Bundle, Vec<u8>), AppError> {
    let (newest_seq, newest_ts) = read.product.newest();
    let newest_cloud = read.cloud.newest();
    let as_of_seq = newest_seq
        .into_iter()
        .chain(newest_cloud.map(|c| c.0))
        .max()
        .unwrap_or(0);
    let as_of_ms = newest_ts
        .into_iter()
        .chain(newest_cloud.map(|c| c.1))
        .max()
        .unwrap_or(MIN_TS_MS);
    let metrics = |range: &str, from: i64| {
        let mut m = read.product.metrics(range, from, as_of_ms + 1);
        read.cloud.fill(&mut m, false);
        m
    };
    let bundle = Bundle {
        format: BUNDLE_FORMAT,
        scope: SCOPE,
        thresholds_version: thresholds_version.to_owned(),
        as_of_seq,
        as_of_ms,
        last_7d: metrics("7d", as_of_ms - 7 * DAY_MS),
        all: metrics("all", MIN_TS_MS),
    };
    let bytes = serde_json::to_vec_pretty(&bundle)
        .map_err(|e| AppError::Internal(format!("cannot encode the bundle: {e}")))?;
    Ok((bundle, bytes))
}

/// The bundle an export would send now: the read models brought up to the log first.
async fn bundle_now(state: &AppState) -> Result<(Bundle, Vec<u8>), AppError> {
    state.pipeline.settle().await;
    let version = state.pipeline.thresholds().version().to_owned();
    state
        .pipeline
        .with_read(|read| build_bundle(read, &version))
}

fn last_export(store: &Store) -> Result<Option<ExportRecord>, kora_store::ReadError> {
    Ok(store
        .recent(None, Some(RecordKind::Export), 1)?
        .into_iter()
        .find_map(|e| match e.record {
            Record::Export(x) => Some(x),
            _ => None,
        }))
}

/// What changed since the last export.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ChangedSinceLastExport {
    /// The last `export` record; `null` when nothing was exported yet.
    pub last_export: Option<ExportRecord>,
    /// `nothing was exported yet`, when nothing was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Whether an export now would send the same bytes as the last one (equal digests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_as_last: Option<bool>,
    /// Whether the log has records the last export did not cover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_advanced_since: Option<bool>,
}

/// The answer of `GET /v1/export/preview`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ExportPreview {
    pub export_enabled: bool,
    /// SHA-256 of `bytes`.
    pub sha256: String,
    /// Exactly what an export would send now.
    pub bytes: String,
    /// `bytes`, parsed.
    pub bundle: Bundle,
    pub changed_since_last_export: ChangedSinceLastExport,
}

/// `GET /v1/export/preview`: works with or without consent.
pub async fn preview(State(state): State<AppState>) -> Result<Json<ExportPreview>, AppError> {
    let (bundle, bytes) = bundle_now(&state).await?;
    let store = state.pipeline.store().clone();
    let (last, consent) =
        blocking(move || Ok((last_export(&store)?, consent_state(&store)?))).await?;
    let digest = hex::encode(Sha256::digest(&bytes));
    let changed = match last {
        None => ChangedSinceLastExport {
            last_export: None,
            summary: Some("nothing was exported yet".into()),
            same_as_last: None,
            log_advanced_since: None,
        },
        Some(l) => ChangedSinceLastExport {
            same_as_last: Some(l.digest == digest),
            log_advanced_since: Some(bundle.as_of_seq > l.as_of_seq.unwrap_or(0)),
            last_export: Some(l),
            summary: None,
        },
    };
    Ok(Json(ExportPreview {
        export_enabled: consent.export_enabled,
        sha256: digest,
        bytes: String::from_utf8_lossy(&bytes).into_owned(),
        bundle,
        changed_since_last_export: changed,
    }))
}

/// The body of `POST /v1/export`, tagged by `to`.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, tag = "to", rename_all = "snake_case")]
pub enum ExportRequest {
    /// Writes the bundle to a new file (an absolute path; an existing file is never replaced).
    File { path: String },
    /// Pushes the bundle as OTLP/HTTP metrics (protobuf) to a collector.
    Otlp {
        endpoint: String,
        /// Send nothing, record nothing: answer what would be sent.
        #[serde(default)]
        dry_run: bool,
    },
}

/// One aggregate an OTLP export sends.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct OtlpMetric {
    pub name: String,
    /// `range` (`7d` or `all`), and `category` for `kora.trigger_firings`.
    pub attributes: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// What an OTLP export would send.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct WouldSend {
    pub endpoint: String,
    /// `application/x-protobuf`.
    pub content_type: String,
    /// The size of the protobuf payload.
    pub bytes: u64,
    pub metrics: Vec<OtlpMetric>,
}

/// The answer of `POST /v1/export` with `dry_run: true`: nothing was sent or recorded.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ExportDryRun {
    /// Always `true`.
    pub dry_run: bool,
    /// Always `false`.
    pub sent: bool,
    pub would_send: WouldSend,
    pub bundle: Bundle,
}

/// The answer of `POST /v1/export` after the export left (and was recorded).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Exported {
    /// Always `true`.
    pub exported: bool,
    /// `file:PATH` or `otlp:URL`.
    pub destination: String,
    /// SHA-256 of the exported bytes.
    pub sha256: String,
    /// The size of the exported bundle.
    pub bytes: u64,
}

/// The answer of `POST /v1/export`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum ExportOutcome {
    Exported(Exported),
    DryRun(Box<ExportDryRun>),
}

/// `POST /v1/export` (token): refused unless export was turned on.
pub async fn export(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ExportOutcome>, AppError> {
    let request: ExportRequest = crate::ingest::decode(&headers, body)?;
    let (bundle, bytes) = bundle_now(&state).await?;
    let store = state.pipeline.store().clone();
    let consent = blocking(move || consent_state(&store)).await?;
    if !consent.export_enabled {
        return Err(AppError::Forbidden(
            "export is off: nothing leaves this machine until you opt in \
             (`kora-telemetry consent on`, or PUT /v1/consent with the token)"
                .into(),
        ));
    }
    let digest = hex::encode(Sha256::digest(&bytes));
    let destination = match request {
        ExportRequest::File { path } => {
            let p = std::path::PathBuf::from(&path);
            if !p.is_absolute() {
                return Err(AppError::invalid("path", "must be an absolute path"));
            }
            let data = bytes.clone();
            let target = p.clone();
            tokio::task::spawn_blocking(move || {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)?;
                f.write_all(&data)?;
                f.sync_all()
            })
            .await
            .map_err(|e| AppError::Internal(e.to_string()))?
            .map_err(|e| AppError::invalid("path", format!("cannot write {path}: {e}")))?;
            format!("file:{}", p.display())
        }
        ExportRequest::Otlp { endpoint, dry_run } => {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(AppError::invalid(
                    "endpoint",
                    "must be an http:// or https:// URL",
                ));
            }
            let payload = otlp_payload(&bundle);
            if dry_run {
                return Ok(Json(ExportOutcome::DryRun(Box::new(ExportDryRun {
                    dry_run: true,
                    sent: false,
                    would_send: WouldSend {
                        endpoint,
                        content_type: "application/x-protobuf".into(),
                        bytes: payload.len() as u64,
                        metrics: otlp_summary(&bundle),
                    },
                    bundle,
                }))));
            }
            let url = endpoint.clone();
            let status = tokio::task::spawn_blocking(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(std::time::Duration::from_secs(10)))
                    .build()
                    .into();
                agent
                    .post(&url)
                    .header("content-type", "application/x-protobuf")
                    .send(&payload[..])
                    .map(|r| r.status().as_u16())
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| AppError::Internal(e.to_string()))?
            .map_err(|e| {
                AppError::BadGateway(format!(
                    "the collector at {endpoint} could not be reached: {e}"
                ))
            })?;
            if !(200..300).contains(&status) {
                return Err(AppError::BadGateway(format!(
                    "the collector at {endpoint} answered {status}; nothing was recorded as exported"
                )));
            }
            format!("otlp:{endpoint}")
        }
    };
    let record = ExportRecord {
        ts_ms: state.now_ms(),
        destination: destination.clone(),
        digest: digest.clone(),
        bytes: bytes.len() as u64,
        as_of_seq: Some(bundle.as_of_seq),
    };
    state
        .pipeline
        .append("export", Batch::Records(vec![Record::Export(record)]))
        .await?;
    Ok(Json(ExportOutcome::Exported(Exported {
        exported: true,
        destination,
        sha256: digest,
        bytes: bytes.len() as u64,
    })))
}

/// One exported aggregate: metric name, attributes, value.
type Point = (String, Vec<(&'static str, String)>, f64);

/// The bundle's aggregates, the same for OTLP and the dry run.
fn otlp_points(b: &Bundle) -> Vec<Point> {
    let mut out = Vec::new();
    for m in [&b.last_7d, &b.all] {
        let range = vec![("range", m.range.clone())];
        out.push((
            "kora.upgrade_suggestion_count".into(),
            range.clone(),
            m.upgrade_suggestion_count as f64,
        ));
        out.push((
            "kora.cloud_offer_count".into(),
            range.clone(),
            m.cloud_offer_count as f64,
        ));
        out.push((
            "kora.firing_count".into(),
            range.clone(),
            m.firing_count as f64,
        ));
        out.push((
            "kora.cloud_run_count".into(),
            range.clone(),
            m.cloud_run_count as f64,
        ));
        out.push((
            "kora.cloud_run_tokens".into(),
            range.clone(),
            m.cloud_run_tokens as f64,
        ));
        for (name, rate) in [
            ("kora.suggestion_accept_rate", &m.suggestion_accept_rate),
            ("kora.suggestion_dismiss_rate", &m.suggestion_dismiss_rate),
            (
                "kora.local_mitigation_success_rate",
                &m.local_mitigation_success_rate,
            ),
        ] {
            if let Some(v) = rate.value {
                out.push((name.into(), range.clone(), v));
            }
        }
        for c in &m.top_trigger_categories {
            let mut attrs = range.clone();
            attrs.push(("category", c.category.as_str().to_owned()));
            out.push(("kora.trigger_firings".into(), attrs, c.firings as f64));
        }
    }
    out
}

fn otlp_summary(b: &Bundle) -> Vec<OtlpMetric> {
    otlp_points(b)
        .into_iter()
        .map(|(name, attrs, value)| OtlpMetric {
            name,
            attributes: attrs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            value,
        })
        .collect()
}

/// The OTLP `ExportMetricsServiceRequest` of a bundle, protobuf-encoded.
pub fn otlp_payload(b: &Bundle) -> Vec<u8> {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, InstrumentationScope, KeyValue, any_value,
    };
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use prost::Message;

    let kv = |k: &str, v: String| KeyValue {
        key: k.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v)),
        }),
        ..Default::default()
    };
    let time = u64::try_from(b.as_of_ms)
        .unwrap_or(0)
        .saturating_mul(1_000_000);
    let mut metrics: Vec<Metric> = Vec::new();
    for (name, attrs, value) in otlp_points(b) {
        let point = NumberDataPoint {
            attributes: attrs.into_iter().map(|(k, v)| kv(k, v)).collect(),
            time_unix_nano: time,
            value: Some(number_data_point::Value::AsDouble(value)),
            ..Default::default()
        };
        match metrics.iter_mut().find(|m| m.name == name) {
            Some(Metric {
                data: Some(metric::Data::Gauge(g)),
                ..
            }) => g.data_points.push(point),
            _ => metrics.push(Metric {
                name,
                data: Some(metric::Data::Gauge(Gauge {
                    data_points: vec![point],
                })),
                ..Default::default()
            }),
        }
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", "kora-telemetry".into()),
                    kv("kora.thresholds_version", b.thresholds_version.clone()),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "kora-telemetry".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// `GET /metrics`: Prometheus text exposition of the local aggregates.
pub async fn prometheus(State(state): State<AppState>) -> Result<Response, AppError> {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct CategoryLabel {
        category: String,
    }
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct ModelLabel {
        model: String,
    }
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct StateLabel {
        category: String,
        state: String,
    }

    // From the read models and the store's counts: the cost does not grow with the log.
    state.pipeline.settle().await;
    let store = state.pipeline.store().clone();
    let stats = blocking(move || store.stats()).await?;
    let (m, (cloud_runs, cloud_tokens, cloud_by_model)) = state.pipeline.with_read(|r| {
        let c = &r.cloud;
        let by_model: Vec<(String, u64)> = c
            .per_model_all_time(kora_model::MAX_CLOUD_MODELS)
            .0
            .into_iter()
            .map(|(m, n)| (m.to_owned(), n))
            .collect();
        let all = c.summary(i64::MIN, i64::MAX);
        (
            r.product.metrics("all", MIN_TS_MS, i64::MAX),
            (all.count, all.tokens, by_model),
        )
    });
    let triggers = state.pipeline.with_engine(|e| e.triggers());

    let mut registry = Registry::with_prefix("kora");
    let count = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for (name, help, value) in [
        (
            "log_records",
            "Records in the log",
            count(stats.log_records),
        ),
        ("samples", "Raw samples stored", count(stats.samples)),
        (
            "upgrade_suggestions",
            "Suggestions shown (all time)",
            count(m.upgrade_suggestion_count),
        ),
        (
            "cloud_offers",
            "Suggestions that offered Krako Cloud (all time)",
            count(m.cloud_offer_count),
        ),
        (
            "suggestions_accepted",
            "Suggestions whose first answer was accepted",
            count(m.suggestion_accept_rate.numerator),
        ),
        (
            "suggestions_dismissed",
            "Suggestions whose first answer was dismissed",
            count(m.suggestion_dismiss_rate.numerator),
        ),
        (
            "mitigations_followed",
            "Accepted local mitigations whose follow-up measured something",
            count(m.local_mitigation_success_rate.denominator),
        ),
        (
            "mitigations_resolved",
            "Accepted local mitigations that resolved the limit",
            count(m.local_mitigation_success_rate.numerator),
        ),
        (
            "suppressions",
            "Suggestions held back by a cooldown rule",
            count(m.suppression_count),
        ),
    ] {
        let g: Gauge = Gauge::default();
        g.set(value);
        registry.register(name, help, g);
    }
    let firings = Family::<CategoryLabel, Gauge>::default();
    for c in kora_model::Category::ALL {
        let n = m
            .top_trigger_categories
            .iter()
            .find(|x| x.category == c)
            .map_or(0, |x| x.firings);
        firings
            .get_or_create(&CategoryLabel {
                category: c.as_str().into(),
            })
            .set(count(n));
    }
    registry.register(
        "trigger_firings",
        "Firings per trigger category (all time)",
        firings,
    );
    // Cloud runs only ever grow (the log is append-only): counters, `_total` in the exposition.
    for (name, help, value) in [
        (
            "cloud_runs",
            "Runs that executed on Krako Cloud (all time)",
            cloud_runs,
        ),
        (
            "cloud_run_tokens",
            "Tokens (total_tokens) of the runs that executed on Krako Cloud (all time)",
            cloud_tokens,
        ),
    ] {
        let c: Counter = Counter::default();
        c.inc_by(value);
        registry.register(name, help, c);
    }
    let per_model = Family::<ModelLabel, Counter>::default();
    for (model, n) in cloud_by_model {
        per_model.get_or_create(&ModelLabel { model }).inc_by(n);
    }
    registry.register(
        "cloud_runs_by_model",
        "Runs that executed on Krako Cloud per model (all time; the first 50 models to run there)",
        per_model,
    );
    let states = Family::<StateLabel, Gauge>::default();
    for t in &triggers {
        let s = serde_json::to_value(t)
            .ok()
            .and_then(|v| v.get("state").and_then(|s| s.as_str()).map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        states
            .get_or_create(&StateLabel {
                category: t.category.as_str().into(),
                state: s,
            })
            .inc();
    }
    registry.register(
        "trigger_scopes",
        "Scopes per trigger category and state",
        states,
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(|e| AppError::Internal(e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
