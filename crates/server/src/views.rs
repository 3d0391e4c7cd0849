//! Read-only views of the derived state: the capability profile and the fit check.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use kora_model::{FitVerdict, ProfileRecord};
use serde::Deserialize;

use crate::AppState;
use crate::error::AppError;

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, AppError> {
    q.map(|Query(t)| t)
        .map_err(|e| AppError::bad_request("invalid_query", e.body_text()))
}

fn no_snapshot() -> AppError {
    AppError::Unavailable {
        message: "no hardware snapshot yet: the probe takes its first reading at start".into(),
        retry_after_s: 1,
    }
}

/// `GET /v1/profile`: the LocalCapabilityProfile and the hardware snapshot it came from.
pub async fn profile(State(state): State<AppState>) -> Result<Json<ProfileRecord>, AppError> {
    state
        .analytics
        .profile_now()
        .map(Json)
        .ok_or_else(no_snapshot)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitQuery {
    model_required_vram_mb: Option<f64>,
    context_tokens: Option<u64>,
}

/// `GET /v1/fit`: whether a model (and a context) fits this machine now, with the arithmetic.
pub async fn fit(
    State(state): State<AppState>,
    q: Result<Query<FitQuery>, QueryRejection>,
) -> Result<Json<FitVerdict>, AppError> {
    let q = query(q)?;
    let Some(vram) = q.model_required_vram_mb else {
        return Err(AppError::Invalid {
            code: "invalid_query",
            message: "model_required_vram_mb is required (MB of VRAM the model needs)".into(),
            field: Some("model_required_vram_mb".into()),
        });
    };
    if !vram.is_finite() || vram < 0.0 {
        return Err(AppError::Invalid {
            code: "invalid_query",
            message: format!("must be a finite number >= 0, got {vram}"),
            field: Some("model_required_vram_mb".into()),
        });
    }
    let hardware = state.analytics.hardware().ok_or_else(no_snapshot)?;
    let thresholds = state.analytics.thresholds();
    Ok(Json(kora_probe::fit_check(
        &hardware,
        vram,
        q.context_tokens,
        &thresholds.file().profile,
    )))
}
