//! Export consent: off by default; turning it on or off is an explicit, recorded act
//! (`consent` records) that needs the per-install token (the router wraps `PUT` in
//! [`crate::auth::require_token`]).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use kora_model::{ConsentChange, ConsentRecord, ConsentState, Record, RecordKind};
use kora_store::{Batch, Store};

use crate::AppState;
use crate::error::{AppError, blocking};

/// The one consent scope there is: aggregated product metrics.
pub const SCOPE: &str = "product_metrics";
/// What the user is told when turning export on; recorded with the consent.
pub const CONSENT_TEXT: &str = "Export sends aggregated statistics only: suggestion counts, \
accept and dismiss rates, firings per trigger category, the local mitigation success rate, and \
how many runs executed on Krako Cloud with their token total. It never sends prompt hashes, \
session, run or model ids, or raw samples. You can turn it off at any time.";

pub(crate) fn consent_state(store: &Store) -> Result<ConsentState, kora_store::ReadError> {
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
