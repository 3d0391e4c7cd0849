//! The per-install token on the routes that need it: consent changes and export.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::AppError;

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
