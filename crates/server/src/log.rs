//! `GET /v1/health` and `GET /v1/log`.

use axum::Json;
use axum::extract::{Query, State};
use kora_model::{ErrorCode, Health, LogPage, LogQuery, RecordKind, Substrate};

use crate::error::AppError;
use crate::state::AppState;
use crate::views;

/// `GET /v1/health`.
pub async fn health(State(state): State<AppState>) -> Result<Json<Health>, AppError> {
    let pipeline = &state.pipeline;
    let stats = pipeline.store().stats()?;
    let problem = pipeline.health().get();
    let last = pipeline.health().last();
    Ok(Json(Health {
        status: if problem.is_some() { "degraded" } else { "ok" }.into(),
        problem,
        last_problem_ms: last.as_ref().map(|l| l.0),
        last_problem: last.map(|l| l.1),
        version: env!("CARGO_PKG_VERSION").into(),
        store_format_version: kora_store::FORMAT_VERSION,
        data_dir: state.config.data_dir.display().to_string(),
        uptime_s: pipeline.uptime_s(),
        log_records: stats.log_records,
        samples: stats.samples,
        series: stats.series,
        last_seq: stats.last_seq,
        limits: pipeline.cardinality().status(),
        last_limit_hit: pipeline.cardinality().last_hit(),
    }))
}

/// How many runs `GET /v1/log?substrate=local` examines for one page at most; a page that
/// stops there has `next_before` set, to go on from.
const MAX_SUBSTRATE_SCAN: usize = 50 * kora_model::MAX_LOG_PAGE;

/// `GET /v1/log`.
pub async fn log(
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
            let entries = state.pipeline.store().recent(q.before, kind, limit)?;
            let next = (entries.len() == limit).then(|| entries.last().map(|e| e.seq));
            (entries, next.flatten())
        }
        Some(substrate) => {
            // The cloud runs come from the read models: bring them up to the log first.
            state.pipeline.settle().await;
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
/// Cloud runs come from the read models' cloud runs (exact, however rare); local runs from the
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
            let store = state.pipeline.store();
            let seqs = state
                .pipeline
                .with_read(|r| r.cloud.recent_seqs(before, limit));
            for seq in seqs {
                out.extend(store.scan(seq, 1)?.into_iter().filter(is_on));
            }
            let next = (out.len() == limit).then(|| out.last().map(|e| e.seq));
            Ok((out, next.flatten()))
        }
        Substrate::Local => {
            let mut cursor = before;
            let mut examined = 0;
            while out.len() < limit && examined < MAX_SUBSTRATE_SCAN {
                let page = state.pipeline.store().recent(
                    cursor,
                    Some(RecordKind::Run),
                    kora_model::MAX_LOG_PAGE,
                )?;
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
