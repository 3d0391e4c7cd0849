//! Ingest: decode a batch (JSON or MessagePack), validate it, append it, answer once durable;
//! with `?wait=decisions`, once the engine has also folded it, with the decisions it caused.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use kora_model::{
    DEFAULT_WAIT_MS, ErrorCode, EventBatch, IngestAck, IngestQuery, MAX_BATCH_ITEMS, MAX_WAIT_MS,
    Record, RunBatch, Sample, SampleBatch, Validate, WaitFor, validate_batch,
};
use kora_store::{Appended, Batch};
use serde::de::DeserializeOwned;

use crate::error::AppError;
use crate::state::{AppState, INGEST_BUDGET_BYTES};
use crate::strict::Strict;

/// The depth MessagePack decoding may nest to. The records are at most four levels deep; the
/// decoder's default (1024) lets a 1 KB body overflow the stack of a debug build.
pub const MSGPACK_MAX_DEPTH: usize = 16;

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
    decode_body(enc, &body)
}

/// Decodes the bytes of a body in `enc`, naming the path of the offending field on failure.
/// JSON must be one value with nothing but whitespace after it; MessagePack nests at most
/// [`MSGPACK_MAX_DEPTH`] levels.
pub fn decode_body<T: DeserializeOwned>(enc: Encoding, body: &[u8]) -> Result<T, AppError> {
    match enc {
        Encoding::Json => {
            let mut de = serde_json::Deserializer::from_slice(body);
            // serde's derive takes a struct as a positional array in JSON too: the same
            // strictness as MessagePack (found by the differential fuzz target).
            let value = serde_path_to_error::deserialize(Strict::new(&mut de)).map_err(|e| {
                let field = e.path().to_string();
                invalid_body(field, e.inner().to_string())
            })?;
            de.end()
                .map_err(|e| invalid_body(String::new(), format!("trailing data: {e}")))?;
            Ok(value)
        }
        Encoding::MessagePack => {
            let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(body));
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
        code: ErrorCode::InvalidBody,
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
        AppError::bad_request(ErrorCode::InvalidBody, e.body_text())
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

/// The acknowledgement of a stored batch.
pub fn ack_of(a: Appended) -> IngestAck {
    IngestAck {
        accepted: a.accepted,
        duplicates: a.duplicates,
        first_seq: a.first_new_seq,
        last_seq: a.last_new_seq,
        decisions: None,
        decisions_complete: None,
    }
}

/// How long an ingest request waits for its decisions: `None` without `?wait=decisions`.
fn wait_of(
    query: Result<Query<IngestQuery>, QueryRejection>,
) -> Result<Option<Duration>, AppError> {
    let Query(q) =
        query.map_err(|e| AppError::bad_request(ErrorCode::InvalidQuery, e.body_text()))?;
    let invalid = |message: String| AppError::Invalid {
        code: ErrorCode::InvalidQuery,
        message,
        field: Some("timeout_ms".into()),
    };
    match (q.wait, q.timeout_ms) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(invalid(
            "timeout_ms bounds wait=decisions: give it with wait=decisions, or leave it out".into(),
        )),
        (Some(WaitFor::Decisions), _) if q.timeout_ms.is_some_and(|t| t > MAX_WAIT_MS) => {
            Err(invalid(format!(
                "at most {MAX_WAIT_MS} ms may be waited for decisions"
            )))
        }
        (Some(WaitFor::Decisions), t) => {
            Ok(Some(Duration::from_millis(t.unwrap_or(DEFAULT_WAIT_MS))))
        }
    }
}

/// Stores a client's batch through the pipeline and answers once it is durable; with `wait`,
/// once the engine has folded it too (or `wait` has passed), with the decisions it caused.
async fn store(
    state: &AppState,
    name: &str,
    batch: Batch,
    wait: Option<Duration>,
) -> Result<axum::Json<IngestAck>, AppError> {
    let samples = matches!(batch, Batch::Samples(_));
    let appended = state.pipeline.ingest(name, batch).await?;
    let Some(timeout) = wait else {
        return Ok(axum::Json(ack_of(appended)));
    };
    let mut ack = ack_of(appended.clone());
    // The batch is stored: from here on nothing fails the request, or a client would send it
    // again. A failed read of the windows answers no decision, as not complete.
    let pipeline = state.pipeline.clone();
    let inputs = crate::error::blocking(move || pipeline.inputs_of(samples, &appended)).await;
    let (decisions, complete) = match inputs {
        Ok(inputs) => state.pipeline.decisions(&inputs, timeout).await,
        Err(e) => {
            tracing::warn!(error = ?e, "the time windows of a samples batch could not be read");
            (Vec::new(), false)
        }
    };
    ack.decisions = Some(decisions);
    ack.decisions_complete = Some(complete);
    Ok(axum::Json(ack))
}

/// What an ingest endpoint takes: `POST /v1/samples`, `/v1/runs` or `/v1/events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    Samples,
    Runs,
    Events,
}

impl BatchKind {
    pub const ALL: [BatchKind; 3] = [BatchKind::Samples, BatchKind::Runs, BatchKind::Events];
}

/// Decodes and validates the body of `POST /v1/samples`: the samples to store.
pub fn decode_samples(enc: Encoding, body: &[u8], now_ms: i64) -> Result<Vec<Sample>, AppError> {
    let batch: SampleBatch = decode_body(enc, body)?;
    check_batch("samples", &batch.samples, |s| s.id.as_deref(), now_ms)?;
    Ok(batch.samples)
}

/// Decodes and validates the body of `POST /v1/runs`: the records to store, with
/// `total_tokens` derived from `tokens_in + tokens_out` where it is absent.
pub fn decode_runs(enc: Encoding, body: &[u8], now_ms: i64) -> Result<Vec<Record>, AppError> {
    let batch: RunBatch = decode_body(enc, body)?;
    check_batch("runs", &batch.runs, |r| r.id.as_deref(), now_ms)?;
    let mut records = Vec::with_capacity(batch.runs.len());
    for mut run in batch.runs {
        if run.total_tokens.is_none()
            && let (Some(i), Some(o)) = (run.tokens_in, run.tokens_out)
        {
            run.total_tokens = i.checked_add(o);
        }
        records.push(Record::Run(run));
    }
    Ok(records)
}

/// Decodes and validates the body of `POST /v1/events`: the records to store.
pub fn decode_events(enc: Encoding, body: &[u8], now_ms: i64) -> Result<Vec<Record>, AppError> {
    let batch: EventBatch = decode_body(enc, body)?;
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
        now_ms,
    )?;
    Ok(batch.events.into_iter().map(Record::from).collect())
}

/// Decodes and validates an ingest body exactly as its handler does, without storing it: the
/// batch the handler would submit to the store, or the error it would answer with. The
/// handlers below call the same functions; the fuzz targets (`fuzz/`) call this one.
pub fn decode_batch(
    kind: BatchKind,
    enc: Encoding,
    body: &[u8],
    now_ms: i64,
) -> Result<Batch, AppError> {
    Ok(match kind {
        BatchKind::Samples => Batch::Samples(decode_samples(enc, body, now_ms)?),
        BatchKind::Runs => Batch::Records(decode_runs(enc, body, now_ms)?),
        BatchKind::Events => Batch::Records(decode_events(enc, body, now_ms)?),
    })
}

/// The encoding and bytes of an ingest request, with the errors [`decode`] answers.
fn body_of(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Encoding, Bytes), AppError> {
    let enc = encoding(headers)?;
    Ok((enc, body.map_err(body_error)?))
}

pub async fn post_samples(
    State(state): State<AppState>,
    query: Result<Query<IngestQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<IngestAck>, AppError> {
    let wait = wait_of(query)?;
    let (enc, body) = body_of(&headers, body)?;
    let samples = decode_samples(enc, &body, state.now_ms())?;
    // The store closes the time windows these samples complete in the same transaction.
    store(&state, "samples", Batch::Samples(samples), wait).await
}

pub async fn post_runs(
    State(state): State<AppState>,
    query: Result<Query<IngestQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<IngestAck>, AppError> {
    let wait = wait_of(query)?;
    let (enc, body) = body_of(&headers, body)?;
    let records = decode_runs(enc, &body, state.now_ms())?;
    store(&state, "runs", Batch::Records(records), wait).await
}

pub async fn post_events(
    State(state): State<AppState>,
    query: Result<Query<IngestQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<IngestAck>, AppError> {
    let wait = wait_of(query)?;
    let (enc, body) = body_of(&headers, body)?;
    let records = decode_events(enc, &body, state.now_ms())?;
    store(&state, "events", Batch::Records(records), wait).await
}

/// Admits a request to an ingest endpoint, or answers `503` at once (before its body is read)
/// when the bodies in flight would exceed [`INGEST_BUDGET_BYTES`].
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
                INGEST_BUDGET_BYTES / (1024 * 1024)
            ),
            retry_after_s: 1,
        });
    };
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    /// A number sent as JSON is stored as the double nearest to it, exactly as the same number
    /// sent as MessagePack (found by the fuzz target `json_ingest`: serde_json's default
    /// parser was off by one unit in the last place for some of these).
    #[test]
    fn json_numbers_decode_to_the_nearest_double_like_messagepack() {
        for text in [
            "1.3122222222222223e105",
            "1312222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222072",
            "0.30000000000000004",
            "2.2250738585072011e-308",
            "9007199254740993",
            "1.7976931348623157e308",
            "4000.5",
        ] {
            let want: f64 = text.parse().unwrap();
            let json = format!(r#"{{"samples":[{{"signal":"ram_free_mb","value":{text}}}]}}"#);
            let from_json = decode_samples(Encoding::Json, json.as_bytes(), NOW).unwrap();
            let msgpack = rmp_serde::to_vec_named(&SampleBatch {
                samples: vec![Sample {
                    value: Some(want),
                    ..from_json[0].clone()
                }],
            })
            .unwrap();
            let from_msgpack = decode_samples(Encoding::MessagePack, &msgpack, NOW).unwrap();
            let got = from_json[0].value.unwrap();
            assert_eq!(got.to_bits(), want.to_bits(), "{text}: JSON gave {got:e}");
            assert_eq!(from_json, from_msgpack, "{text}");
        }
    }
}
