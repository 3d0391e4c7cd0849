//! What every handler shares: the pipeline and the settings of the HTTP layer.

use std::path::PathBuf;
use std::sync::Arc;

use kora_pipeline::Pipeline;

use crate::hosts::HostPolicy;
use crate::token::Token;

/// Settings the handlers need.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub hosts: HostPolicy,
    /// The per-install token that consent and export changes need.
    pub token: Token,
}

/// How many body bytes the ingest requests in flight (read, decoded or waiting for the group
/// commit) may declare together before more are answered `503` at once, before their bodies
/// are read. A request takes its `Content-Length` (at least 1 KiB), or the whole body limit
/// when it declares none: 8 requests at the 8 MiB limit, or thousands of ordinary batches.
/// (A first bound of 16 requests refused a few batches in the load run at 500 batches/s,
/// whenever a commit stalled for ~40 ms.)
pub const INGEST_BUDGET_BYTES: usize = 64 * 1024 * 1024;

/// Shared state: cheap to clone, a bundle of `Arc`s.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The service without HTTP: the store, the follower, the read models, the clock.
    pub pipeline: Arc<Pipeline>,
    pub config: Arc<Config>,
    /// Set when the service listens beyond loopback: every route then needs the token.
    pub token_everywhere: bool,
    /// The most items one page of a scope view may hold (`GET /v1/triggers`, the list of
    /// `GET /v1/series`): the setting `max_view_scopes`.
    pub max_view_scopes: usize,
    /// Admission to the ingest endpoints: KiB of [`INGEST_BUDGET_BYTES`].
    pub(crate) ingest_permits: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// State over `pipeline`.
    pub fn new(pipeline: Arc<Pipeline>, config: Config) -> AppState {
        AppState {
            pipeline,
            config: Arc::new(config),
            token_everywhere: false,
            max_view_scopes: kora_model::DEFAULT_MAX_VIEW_SCOPES,
            ingest_permits: Arc::new(tokio::sync::Semaphore::new(INGEST_BUDGET_BYTES / 1024)),
        }
    }

    /// Now, by the pipeline's clock: the only time the handlers read.
    pub fn now_ms(&self) -> i64 {
        self.pipeline.now_ms()
    }
}
