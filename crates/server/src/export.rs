//! Opt-in export of the product metrics: the bundle, its preview, and the export itself to a
//! file or an OTLP/HTTP collector.
//!
//! Export is refused until the user turned it on ([`crate::consent`]), and needs the
//! per-install token. The preview answers, byte for byte, what an export would send now. A
//! bundle holds aggregates only: counts and rates, no prompt hashes, no session or run ids, no
//! model ids, no raw samples. The count of cloud runs (and their tokens) is such an aggregate
//! and is exported; the same count per model is shown locally only.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use kora_model::{
    Bundle, ChangedSinceLastExport, ExportDryRun, ExportOutcome, ExportPreview, ExportRecord,
    ExportRequest, Exported, MIN_TS_MS, OtlpMetric, Record, RecordKind, WouldSend,
};
use kora_pipeline::ReadModels;
use kora_store::{Batch, Store};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::consent::{SCOPE, consent_state};
use crate::error::{AppError, blocking};
use crate::metrics::DAY_MS;

/// The format tag of an export bundle.
pub const BUNDLE_FORMAT: &str = "kora-telemetry-export/1";

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
        format: BUNDLE_FORMAT.into(),
        scope: SCOPE.into(),
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
