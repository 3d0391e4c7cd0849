//! The kora-telemetry HTTP service: the axum router, its trust boundary and its handlers.
//!
//! [`router`] builds the whole application from an [`AppState`] and is driven by tests without
//! a socket; [`serve`] runs it on a listener until a shutdown signal, then lets the store commit
//! everything already queued. The service binds to loopback; every request passes the Host and
//! Origin checks of [`security`] before routing. Handlers never route anything to a cloud: there
//! is no endpoint that does.

pub mod analytics;
pub mod auth;
pub mod cloud;
pub mod consent;
pub mod dashboard;
pub mod error;
pub mod export;
pub mod ingest;
pub mod metrics;
#[cfg(feature = "schema")]
pub mod openapi;
pub mod privacy;
pub mod security;
pub mod strict;
pub mod token;
pub mod views;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Query, State};
use axum::handler::Handler;
use axum::routing::{get, post};
use axum::{Json, Router};
use kora_model::{ErrorCode, Health, LogPage, LogQuery, MAX_BODY_BYTES, RecordKind, Substrate};
use kora_policy::{CloudTiers, Thresholds};
use kora_store::Store;

use crate::analytics::Analytics;
use tokio::net::TcpListener;

pub use error::AppError;
pub use security::HostPolicy;

/// Milliseconds since the Unix epoch, from the system clock. Only the server reads a clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Settings the handlers need.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub hosts: HostPolicy,
    /// The per-install token that consent and export changes need.
    pub token: token::Token,
}

/// The last write failure, shown by `/v1/health` until a write succeeds again.
#[derive(Debug, Default)]
pub struct HealthFlag(Mutex<HealthState>);

#[derive(Debug, Default)]
struct HealthState {
    current: Option<String>,
    /// The last storage failure, kept after recovery so that it can still be seen.
    last: Option<(i64, String)>,
}

impl HealthFlag {
    pub fn set(&self, problem: String) {
        if let Ok(mut h) = self.0.lock() {
            h.last = Some((now_ms(), problem.clone()));
            h.current = Some(problem);
        }
    }
    pub fn clear(&self) {
        if let Ok(mut h) = self.0.lock() {
            h.current.take();
        }
    }
    pub fn get(&self) -> Option<String> {
        self.0.lock().ok().and_then(|h| h.current.clone())
    }
    /// The last failure and when it happened, even if writes work again since.
    pub fn last(&self) -> Option<(i64, String)> {
        self.0.lock().ok().and_then(|h| h.last.clone())
    }
}

/// Shared state: cheap to clone, a bundle of `Arc`s.
#[derive(Clone, Debug)]
pub struct AppState {
    pub store: Arc<Store>,
    pub config: Arc<Config>,
    pub health: Arc<HealthFlag>,
    pub analytics: Arc<Analytics>,
    /// The log's cloud runs, for the product metrics, `/metrics` and the log's `substrate`.
    pub cloud_runs: Arc<cloud::CloudRunIndex>,
    pub started: Instant,
    /// Set when the service listens beyond loopback: every route then needs the token.
    pub token_everywhere: bool,
    pub(crate) appended: Arc<tokio::sync::Notify>,
    /// Admission to the ingest endpoints: KiB of [`INGEST_BUDGET_BYTES`].
    pub(crate) ingest_permits: Arc<tokio::sync::Semaphore>,
}

/// How many body bytes the ingest requests in flight (read, decoded or waiting for the group
/// commit) may declare together before more are answered `503` at once, before their bodies
/// are read. A request takes its `Content-Length` (at least 1 KiB), or the whole body limit
/// when it declares none: 8 requests at the 8 MiB limit, or thousands of ordinary batches.
/// (A first bound of 16 requests refused a few batches in the load run at 500 batches/s,
/// whenever a commit stalled for ~40 ms.)
pub const INGEST_BUDGET_BYTES: usize = 64 * 1024 * 1024;

impl AppState {
    /// State over `store` with the embedded thresholds and cloud tier table; rebuilds the
    /// derived state by folding the log.
    pub fn new(store: Arc<Store>, config: Config) -> Result<AppState, analytics::RebuildError> {
        AppState::with_thresholds(
            store,
            config,
            Thresholds::embedded(),
            CloudTiers::embedded(),
        )
    }

    /// State over `store` with the given thresholds.
    pub fn with_thresholds(
        store: Arc<Store>,
        config: Config,
        thresholds: Thresholds,
        tiers: CloudTiers,
    ) -> Result<AppState, analytics::RebuildError> {
        let analytics = Analytics::rebuild(&store, thresholds, tiers)?;
        Ok(AppState {
            store,
            config: Arc::new(config),
            health: Arc::default(),
            analytics: Arc::new(analytics),
            cloud_runs: Arc::default(),
            started: Instant::now(),
            token_everywhere: false,
            appended: Arc::default(),
            ingest_permits: Arc::new(tokio::sync::Semaphore::new(INGEST_BUDGET_BYTES / 1024)),
        })
    }

    /// Wakes whatever follows the log (the engine) after a durable append.
    pub fn notify_appended(&self) {
        self.appended.notify_one();
    }
}

/// The whole application.
pub fn router(state: AppState) -> Router {
    let admit = axum::middleware::from_fn_with_state(state.clone(), ingest::admit);
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/log", get(log))
        .route("/v1/profile", get(views::profile))
        .route("/v1/fit", get(views::fit))
        .route("/v1/triggers", get(views::triggers))
        .route("/v1/thresholds", get(views::thresholds))
        .route("/v1/suggestions", get(views::suggestions))
        .route("/v1/suggestions/{id}/feedback", post(views::feedback))
        .route("/v1/cloud/readiness", axum::routing::put(views::readiness))
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

/// Serves `state` on `listener` until `shutdown` resolves, then drains the store's queue.
/// Reads the crash test's fault point, [`ingest::fault`], from the environment first.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    ingest::fault::arm_from_env()?;
    let store = state.store.clone();
    let follower = tokio::spawn(analytics::follow(state.clone()));
    // Read the log's cloud runs once now, so the first metrics request does not wait for it.
    let warm = state.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = warm.cloud_runs.with(&warm.store, |_| ()) {
            tracing::warn!("cannot read the cloud runs of the log yet: {e}");
        }
    });
    let app = router(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    follower.abort();
    // Every request has been answered; commit whatever is still queued before returning.
    tokio::task::spawn_blocking(move || store.shutdown())
        .await
        .map_err(std::io::Error::other)?;
    result
}

async fn health(State(state): State<AppState>) -> Result<Json<Health>, AppError> {
    let stats = state.store.stats()?;
    let problem = state.health.get();
    let last = state.health.last();
    Ok(Json(Health {
        status: if problem.is_some() { "degraded" } else { "ok" }.into(),
        problem,
        last_problem_ms: last.as_ref().map(|l| l.0),
        last_problem: last.map(|l| l.1),
        version: env!("CARGO_PKG_VERSION").into(),
        store_format_version: kora_store::FORMAT_VERSION,
        data_dir: state.config.data_dir.display().to_string(),
        uptime_s: state.started.elapsed().as_secs(),
        log_records: stats.log_records,
        samples: stats.samples,
        series: stats.series,
        last_seq: stats.last_seq,
    }))
}

/// How many runs `GET /v1/log?substrate=local` examines for one page at most; a page that
/// stops there has `next_before` set, to go on from.
const MAX_SUBSTRATE_SCAN: usize = 50 * kora_model::MAX_LOG_PAGE;

async fn log(
    State(state): State<AppState>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<LogPage>, AppError> {
    let Query(q) =
        query.map_err(|e| AppError::bad_request(ErrorCode::InvalidQuery, e.body_text()))?;
    let limit = views::page_limit(q.limit, 50)?;
    let kind = match q.kind.as_deref() {
        None => None,
        Some(k) => Some(RecordKind::parse(k).ok_or_else(|| AppError::Invalid {
            code: ErrorCode::InvalidQuery,
            message: format!("unknown record kind {k:?}"),
            field: Some("kind".into()),
        })?),
    };
    let substrate = match q.substrate.as_deref() {
        None => None,
        Some(s) => {
            let invalid = |message: String| AppError::Invalid {
                code: ErrorCode::InvalidQuery,
                message,
                field: Some("substrate".into()),
            };
            if kind.is_some_and(|k| k != RecordKind::Run) {
                return Err(invalid(
                    "substrate filters runs: leave kind out or give kind=run".into(),
                ));
            }
            Some(match s {
                "local" => Substrate::Local,
                "cloud" => Substrate::Cloud,
                other => return Err(invalid(format!("must be local or cloud, got {other:?}"))),
            })
        }
    };
    let (entries, next_before) = match substrate {
        None => {
            let entries = state.store.recent(q.before, kind, limit)?;
            let next = (entries.len() == limit).then(|| entries.last().map(|e| e.seq));
            (entries, next.flatten())
        }
        Some(substrate) => {
            let st = state.clone();
            let before = q.before;
            tokio::task::spawn_blocking(move || runs_on(&st, substrate, before, limit))
                .await
                .map_err(|e| AppError::Internal(e.to_string()))??
        }
    };
    Ok(Json(LogPage {
        entries,
        next_before,
    }))
}

/// The newest `limit` runs on `substrate` below `before`, and the `next_before` of the page.
/// Cloud runs come from the fold of the cloud runs (exact, however rare); local runs from the
/// runs newest first, at most [`MAX_SUBSTRATE_SCAN`] of them examined per page.
fn runs_on(
    state: &AppState,
    substrate: Substrate,
    before: Option<u64>,
    limit: usize,
) -> Result<(Vec<kora_model::LogEntry>, Option<u64>), kora_store::ReadError> {
    let is_on = |e: &kora_model::LogEntry| matches!(&e.record, kora_model::Record::Run(r) if r.substrate == substrate);
    let mut out = Vec::new();
    match substrate {
        Substrate::Cloud => {
            let seqs = state
                .cloud_runs
                .with(&state.store, |c| c.recent_seqs(before, limit))?;
            for seq in seqs {
                out.extend(state.store.scan(seq, 1)?.into_iter().filter(is_on));
            }
            let next = (out.len() == limit).then(|| out.last().map(|e| e.seq));
            Ok((out, next.flatten()))
        }
        Substrate::Local => {
            let mut cursor = before;
            let mut examined = 0;
            while out.len() < limit && examined < MAX_SUBSTRATE_SCAN {
                let page =
                    state
                        .store
                        .recent(cursor, Some(RecordKind::Run), kora_model::MAX_LOG_PAGE)?;
                let full = page.len() == kora_model::MAX_LOG_PAGE;
                for e in page {
                    examined += 1;
                    cursor = Some(e.seq);
                    if is_on(&e) {
                        out.push(e);
                        if out.len() == limit {
                            break;
                        }
                    }
                }
                if !full {
                    // The oldest run was examined: nothing is left below.
                    if out.len() < limit {
                        return Ok((out, None));
                    }
                    break;
                }
            }
            Ok((out, cursor))
        }
    }
}
