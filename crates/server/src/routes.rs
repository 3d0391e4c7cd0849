//! The routes of the service and what answers a path or method that has none.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::routing::{get, post};
use kora_model::MAX_BODY_BYTES;

use crate::error::AppError;
use crate::state::AppState;
use crate::{auth, consent, dashboard, export, ingest, log, metrics, security, stream, views};

/// The whole application.
pub fn router(state: AppState) -> Router {
    let admit = axum::middleware::from_fn_with_state(state.clone(), ingest::admit);
    Router::new()
        .route("/v1/health", get(log::health))
        .route("/v1/log", get(log::log))
        .route("/v1/profile", get(views::profile))
        .route("/v1/fit", get(views::fit))
        .route("/v1/triggers", get(views::triggers))
        .route("/v1/thresholds", get(views::thresholds))
        .route("/v1/suggestions", get(views::suggestions))
        .route("/v1/suggestions/{id}/feedback", post(views::feedback))
        .route("/v1/cloud/readiness", axum::routing::put(views::readiness))
        .route("/v1/stream", get(stream::stream))
        .route("/v1/windows", get(views::windows))
        .route("/v1/series", get(views::series))
        .route("/v1/metrics/product", get(metrics::product))
        .route(
            "/v1/consent",
            get(consent::get_consent).put(consent::put_consent.layer(
                axum::middleware::from_fn_with_state(state.clone(), auth::require_token),
            )),
        )
        .route("/v1/export/preview", get(export::preview))
        .route(
            "/v1/export",
            post(export::export.layer(axum::middleware::from_fn_with_state(
                state.clone(),
                auth::require_token,
            ))),
        )
        .route("/metrics", get(metrics::prometheus))
        .route(
            "/v1/samples",
            post(ingest::post_samples).layer(admit.clone()),
        )
        .route("/v1/runs", post(ingest::post_runs).layer(admit.clone()))
        .route("/v1/events", post(ingest::post_events).layer(admit))
        .merge(dashboard::routes())
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security::guard,
        ))
        .with_state(state)
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    AppError::Internal("a handler panicked".into()).into_response()
}

/// A 405 with the JSON error body; axum adds the `Allow` header.
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> AppError {
    AppError::MethodNotAllowed(format!(
        "{} does not answer {method}; see http-api.md",
        uri.path()
    ))
}

async fn not_found(uri: axum::http::Uri) -> AppError {
    AppError::NotFound(format!("no endpoint at {}; see http-api.md", uri.path()))
}
