//! Ingest: decode a batch (JSON or MessagePack), validate it, append it, answer once durable.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, header};
use kora_model::{
    EventBatch, IngestAck, MAX_BATCH_ITEMS, Record, RunBatch, Sample, SampleBatch, Validate,
    validate_batch,
};
use kora_store::{Appended, Batch, WriteError};
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::AppError;
use crate::strict::Strict;

/// The depth MessagePack decoding may nest to. The records are at most four levels deep; the
/// decoder's default (1024) lets a 1 KB body overflow the stack of a debug build.
const MSGPACK_MAX_DEPTH: usize = 16;

/// How a request body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    MessagePack,
}

/// Reads the body's encoding from `Content-Type`; anything but JSON or MessagePack is a 415, so
/// that a browser cannot send a body without a CORS preflight.
pub fn encoding(headers: &HeaderMap) -> Result<Encoding, AppError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Err(AppError::UnsupportedMediaType(
            "Content-Type is missing; send application/json or application/msgpack".into(),
        ));
    };
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim();
    match essence {
        "application/json" => Ok(Encoding::Json),
        "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => {
            Ok(Encoding::MessagePack)
        }
        other => Err(AppError::UnsupportedMediaType(format!(
            "Content-Type {other:?} is not accepted; send application/json or application/msgpack"
        ))),
    }
}

/// Decodes a body, naming the path of the offending field on failure.
pub fn decode<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, AppError> {
    let enc = encoding(headers)?;
    let body = body.map_err(body_error)?;
    match enc {
        Encoding::Json => {
            let mut de = serde_json::Deserializer::from_slice(&body);
            let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
                let field = e.path().to_string();
                invalid_body(field, e.inner().to_string())
            })?;
            de.end()
                .map_err(|e| invalid_body(String::new(), format!("trailing data: {e}")))?;
            Ok(value)
        }
        Encoding::MessagePack => {
            let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(&body[..]));
            de.set_max_depth(MSGPACK_MAX_DEPTH);
            // Decoded as strictly as the same document in JSON: names are strings, structs
            // maps (see `strict`).
            let value = serde_path_to_error::deserialize(Strict::new(&mut de)).map_err(|e| {
                let field = e.path().to_string();
                invalid_body(field, e.inner().to_string())
            })?;
            let trailing = (body.len() as u64).saturating_sub(de.position());
            if trailing > 0 {
                return Err(invalid_body(
                    String::new(),
                    format!("trailing data: {trailing} bytes after the MessagePack value"),
                ));
            }
            Ok(value)
        }
    }
}

fn invalid_body(field: String, message: String) -> AppError {
    let field = (!field.is_empty() && field != ".").then_some(field);
    AppError::Invalid {
        code: "invalid_body",
        message,
        field,
    }
}

fn body_error(e: BytesRejection) -> AppError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        AppError::TooLarge(format!(
            "the body is larger than {} bytes; send smaller batches",
            kora_model::MAX_BODY_BYTES
        ))
    } else {
        AppError::bad_request("invalid_body", e.body_text())
    }
}

/// Bounds and validates a batch; duplicate client ids inside one batch are refused.
fn check_batch<T: Validate>(
    name: &str,
    items: &[T],
    id_of: impl Fn(&T) -> Option<&str>,
    now_ms: i64,
) -> Result<(), AppError> {
    if items.is_empty() {
        return Err(AppError::invalid(name, format!("{name} is empty")));
    }
    if items.len() > MAX_BATCH_ITEMS {
        return Err(AppError::TooLarge(format!(
            "{name} has {} items; at most {MAX_BATCH_ITEMS} are allowed in one batch",
            items.len()
        )));
    }
    validate_batch(name, items, now_ms).map_err(|e| AppError::invalid(e.field, e.message))?;
    let mut seen = std::collections::BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        if let Some(id) = id_of(item)
            && let Some(first) = seen.insert(id, i)
        {
            return Err(AppError::invalid(
                format!("{name}[{i}].id"),
                format!("id {id:?} appears twice in this batch (first at {name}[{first}])"),
            ));
        }
    }
    Ok(())
}

/// Appends a batch through the store's group commit and waits for durability.
pub async fn append(state: &AppState, name: &str, batch: Batch) -> Result<Appended, AppError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    state
        .store
        .submit(crate::now_ms(), batch, move |r| {
            let _ = tx.send(r);
        })
        .map_err(|e| write_error(state, name, e))?;
    let result = rx
        .await
        .map_err(|_| AppError::Internal("the store writer stopped without an answer".into()))?;
    match result {
        Ok(a) => {
            state.health.clear();
            state.notify_appended();
            Ok(a)
        }
        Err(e) => Err(write_error(state, name, e)),
    }
}

fn write_error(state: &AppState, name: &str, e: WriteError) -> AppError {
    match e {
        WriteError::Busy => AppError::Unavailable {
            message: "the write queue is full; retry shortly".into(),
            retry_after_s: 1,
        },
        WriteError::ShuttingDown => AppError::Unavailable {
            message: "the service is shutting down".into(),
            retry_after_s: 5,
        },
        WriteError::IdConflict { index, id } => AppError::Conflict {
            message: format!(
                "id {id:?} was already stored with different content; a retry must resend the same record"
            ),
            field: format!("{name}[{index}].id"),
        },
        WriteError::DiskFull(detail) => {
            state.health.set(format!("disk full: {detail}"));
            AppError::DiskFull
        }
        other => {
            state.health.set(other.to_string());
            AppError::Internal(other.to_string())
        }
    }
}

/// The acknowledgement of a stored batch.
pub fn ack_of(a: Appended) -> IngestAck {
    IngestAck {
        accepted: a.accepted,
        duplicates: a.duplicates,
        first_seq: a.first_new_seq,
        last_seq: a.last_new_seq,
    }
}

fn ack(a: Appended) -> axum::Json<IngestAck> {
    axum::Json(ack_of(a))
}

pub async fn post_samples(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<IngestAck>, AppError> {
    let batch: SampleBatch = decode(&headers, body)?;
    let now = crate::now_ms();
    check_batch("samples", &batch.samples, |s| s.id.as_deref(), now)?;
    let appended = append(&state, "samples", Batch::Samples(batch.samples.clone())).await?;
    // Only newly stored samples feed the time windows; a retried batch changes nothing.
    let (samples, seqs): (Vec<Sample>, Vec<u64>) = batch
        .samples
        .into_iter()
        .zip(appended.seqs.iter().copied())
        .filter(|(_, seq)| appended.first_new_seq.is_some_and(|first| *seq >= first))
        .unzip();
    let closed = state.analytics.observe_samples(&samples, &seqs, now);
    crate::analytics::append_windows(&state, closed).await?;
    Ok(ack(appended))
}

pub async fn post_runs(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<IngestAck>, AppError> {
    let batch: RunBatch = decode(&headers, body)?;
    check_batch("runs", &batch.runs, |r| r.id.as_deref(), crate::now_ms())?;
    let mut records = Vec::with_capacity(batch.runs.len());
    for mut run in batch.runs {
        if run.total_tokens.is_none()
            && let (Some(i), Some(o)) = (run.tokens_in, run.tokens_out)
        {
            run.total_tokens = i.checked_add(o);
        }
        records.push(Record::Run(run));
    }
    Ok(ack(append(&state, "runs", Batch::Records(records)).await?))
}

pub async fn post_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<IngestAck>, AppError> {
    let batch: EventBatch = decode(&headers, body)?;
    check_batch(
        "events",
        &batch.events,
        |e| match e {
            kora_model::Event::ModelLoad(x) => x.id.as_deref(),
            kora_model::Event::ContextRequest(x) => x.id.as_deref(),
            kora_model::Event::ContextOom(x) => x.id.as_deref(),
            kora_model::Event::SessionStarted(x) | kora_model::Event::SessionEnded(x) => {
                x.id.as_deref()
            }
        },
        crate::now_ms(),
    )?;
    let records = batch.events.into_iter().map(Record::from).collect();
    Ok(ack(append(&state, "events", Batch::Records(records)).await?))
}

/// Admits a request to an ingest endpoint, or answers `503` at once (before its body is read)
/// when the bodies in flight would exceed [`crate::INGEST_BUDGET_BYTES`].
pub async fn admit(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, AppError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(kora_model::MAX_BODY_BYTES);
    // A body over the limit is refused with 413 further in; it takes no more than the limit.
    let kib = declared
        .clamp(1024, kora_model::MAX_BODY_BYTES)
        .div_ceil(1024);
    let kib = u32::try_from(kib).unwrap_or(u32::MAX);
    let Ok(_permit) = state.ingest_permits.clone().try_acquire_many_owned(kib) else {
        return Err(AppError::Unavailable {
            message: format!(
                "the ingest requests in flight already hold {} MiB of bodies; retry shortly",
                crate::INGEST_BUDGET_BYTES / (1024 * 1024)
            ),
            retry_after_s: 1,
        });
    };
    Ok(next.run(request).await)
}
