//! The kora-telemetry HTTP service: the axum router, its trust boundary and its handlers.
//!
//! HTTP alone: routing ([`routes`]), the trust boundary ([`security`]), decoding ([`ingest`],
//! [`strict`]), the push stream ([`stream`]), and mapping errors ([`error`]). Everything the
//! service derives, stores and remembers lives in [`kora_pipeline`]; the handlers call it
//! through [`AppState::pipeline`], and read time only from its clock.
//!
//! [`router`] builds the whole application from an [`AppState`] and is driven by tests without
//! a socket; [`serve`] runs it on a listener until a shutdown signal, then lets the store commit
//! everything already queued. The service binds to loopback; every request passes the Host and
//! Origin checks of [`security`] before routing. Handlers never route anything to a cloud: there
//! is no endpoint that does.

pub mod auth;
pub mod consent;
pub mod dashboard;
pub mod error;
pub mod export;
pub mod hosts;
pub mod ingest;
pub mod log;
pub mod metrics;
#[cfg(feature = "schema")]
pub mod openapi;
pub mod privacy;
pub mod routes;
pub mod security;
pub mod state;
pub mod stream;
pub mod strict;
pub mod token;
pub mod views;

use std::future::Future;

use tokio::net::TcpListener;

pub use error::AppError;
pub use hosts::HostPolicy;
pub use routes::router;
pub use state::{AppState, Config, INGEST_BUDGET_BYTES};

/// Serves `state` on `listener` until `shutdown` resolves, with the pipeline's follower
/// running beside it, then drains the store's queue.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let pipeline = state.pipeline.clone();
    let follower = tokio::spawn(async move { pipeline.follow().await });
    let app = router(state.clone());
    // The push streams never end by themselves: they are told to, so that the graceful
    // shutdown can wait for the requests in flight.
    let pipeline = state.pipeline.clone();
    let shutdown = async move {
        shutdown.await;
        pipeline.events().close();
    };
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    follower.abort();
    // Every request has been answered; commit whatever is still queued before returning.
    let store = state.pipeline.store().clone();
    tokio::task::spawn_blocking(move || store.shutdown())
        .await
        .map_err(std::io::Error::other)?;
    result
}
