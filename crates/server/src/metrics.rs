//! The product metrics of the specification's Section 8 and the Prometheus exposition: both
//! stay on the machine (export is [`crate::export`]'s, and opt-in).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use kora_model::{ErrorCode, MIN_TS_MS, ProductMetrics, RangeQuery};

use crate::AppState;
use crate::error::{AppError, blocking};

pub(crate) const DAY_MS: i64 = 24 * 3600 * 1000;

/// Resolves a range against `now_ms`.
fn resolve_range(q: &RangeQuery, now_ms: i64) -> Result<(String, i64, i64), AppError> {
    let bad = |m: String| AppError::Invalid {
        code: ErrorCode::InvalidQuery,
        message: m,
        field: Some("range".into()),
    };
    if q.from_ms.is_some() || q.to_ms.is_some() {
        if q.range.is_some() {
            return Err(bad("give either range or from_ms/to_ms, not both".into()));
        }
        let from = q.from_ms.unwrap_or(MIN_TS_MS);
        let to = q.to_ms.unwrap_or(now_ms + 1);
        if from >= to {
            return Err(AppError::Invalid {
                code: ErrorCode::InvalidQuery,
                message: format!("from_ms {from} is not before to_ms {to}"),
                field: Some("from_ms".into()),
            });
        }
        return Ok(("custom".into(), from, to));
    }
    match q.range.as_deref().unwrap_or("24h") {
        "24h" => Ok(("24h".into(), now_ms - DAY_MS, now_ms + 1)),
        "7d" => Ok(("7d".into(), now_ms - 7 * DAY_MS, now_ms + 1)),
        "all" => Ok(("all".into(), MIN_TS_MS, i64::MAX)),
        other => Err(bad(format!("range must be 24h, 7d or all, got {other:?}"))),
    }
}

/// `GET /v1/metrics/product`.
pub async fn product(
    State(state): State<AppState>,
    q: Result<Query<RangeQuery>, QueryRejection>,
) -> Result<Json<ProductMetrics>, AppError> {
    let Query(q) = q.map_err(|e| AppError::bad_request(ErrorCode::InvalidQuery, e.body_text()))?;
    let (name, from, to) = resolve_range(&q, state.now_ms())?;
    // From the read models, brought up to every acknowledged record first: the cost does not
    // grow with the log.
    state.pipeline.settle().await;
    Ok(Json(state.pipeline.product_metrics(&name, from, to, true)))
}

/// `GET /metrics`: Prometheus text exposition of the local aggregates.
pub async fn prometheus(State(state): State<AppState>) -> Result<Response, AppError> {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct CategoryLabel {
        category: String,
    }
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct ModelLabel {
        model: String,
    }
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct StateLabel {
        category: String,
        state: String,
    }

    // From the read models and the store's counts: the cost does not grow with the log.
    state.pipeline.settle().await;
    let store = state.pipeline.store().clone();
    let stats = blocking(move || store.stats()).await?;
    let (m, (cloud_runs, cloud_tokens, cloud_by_model)) = state.pipeline.with_read(|r| {
        let c = &r.cloud;
        let by_model: Vec<(String, u64)> = c
            .per_model_all_time(kora_model::MAX_CLOUD_MODELS)
            .0
            .into_iter()
            .map(|(m, n)| (m.to_owned(), n))
            .collect();
        let all = c.summary(i64::MIN, i64::MAX);
        (
            r.product.metrics("all", MIN_TS_MS, i64::MAX),
            (all.count, all.tokens, by_model),
        )
    });
    let triggers = state.pipeline.with_engine(|e| e.triggers());

    let mut registry = Registry::with_prefix("kora");
    let count = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for (name, help, value) in [
        (
            "log_records",
            "Records in the log",
            count(stats.log_records),
        ),
        ("samples", "Raw samples stored", count(stats.samples)),
        (
            "upgrade_suggestions",
            "Suggestions shown (all time)",
            count(m.upgrade_suggestion_count),
        ),
        (
            "cloud_offers",
            "Suggestions that offered Krako Cloud (all time)",
            count(m.cloud_offer_count),
        ),
        (
            "suggestions_accepted",
            "Suggestions whose first answer was accepted",
            count(m.suggestion_accept_rate.numerator),
        ),
        (
            "suggestions_dismissed",
            "Suggestions whose first answer was dismissed",
            count(m.suggestion_dismiss_rate.numerator),
        ),
        (
            "mitigations_followed",
            "Accepted local mitigations whose follow-up measured something",
            count(m.local_mitigation_success_rate.denominator),
        ),
        (
            "mitigations_resolved",
            "Accepted local mitigations that resolved the limit",
            count(m.local_mitigation_success_rate.numerator),
        ),
        (
            "suppressions",
            "Suggestions held back by a cooldown rule",
            count(m.suppression_count),
        ),
    ] {
        let g: Gauge = Gauge::default();
        g.set(value);
        registry.register(name, help, g);
    }
    let firings = Family::<CategoryLabel, Gauge>::default();
    for c in kora_model::Category::ALL {
        let n = m
            .top_trigger_categories
            .iter()
            .find(|x| x.category == c)
            .map_or(0, |x| x.firings);
        firings
            .get_or_create(&CategoryLabel {
                category: c.as_str().into(),
            })
            .set(count(n));
    }
    registry.register(
        "trigger_firings",
        "Firings per trigger category (all time)",
        firings,
    );
    // Cloud runs only ever grow (the log is append-only): counters, `_total` in the exposition.
    for (name, help, value) in [
        (
            "cloud_runs",
            "Runs that executed on Krako Cloud (all time)",
            cloud_runs,
        ),
        (
            "cloud_run_tokens",
            "Tokens (total_tokens) of the runs that executed on Krako Cloud (all time)",
            cloud_tokens,
        ),
    ] {
        let c: Counter = Counter::default();
        c.inc_by(value);
        registry.register(name, help, c);
    }
    let per_model = Family::<ModelLabel, Counter>::default();
    for (model, n) in cloud_by_model {
        per_model.get_or_create(&ModelLabel { model }).inc_by(n);
    }
    registry.register(
        "cloud_runs_by_model",
        "Runs that executed on Krako Cloud per model (all time; the first 50 models to run there)",
        per_model,
    );
    let states = Family::<StateLabel, Gauge>::default();
    for t in &triggers {
        let s = serde_json::to_value(t)
            .ok()
            .and_then(|v| v.get("state").and_then(|s| s.as_str()).map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        states
            .get_or_create(&StateLabel {
                category: t.category.as_str().into(),
                state: s,
            })
            .inc();
    }
    registry.register(
        "trigger_scopes",
        "Scopes per trigger category and state",
        states,
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(|e| AppError::Internal(e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
