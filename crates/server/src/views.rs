//! Read-only views of the derived state: the capability profile and the fit check.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use kora_model::{
    ErrorCode, FitQuery, FitVerdict, LadderStep, ProfileRecord, SeriesData, SeriesList,
    SeriesPoint, SeriesQuery, SeriesView, Suggestion, SuggestionView, SuggestionsQuery,
    SuggestionsView, SuppressionView, TriggersQuery, WindowView, WindowsQuery, WindowsView,
};
use kora_policy::{CloudTiers, Thresholds, TriggerFilter, TriggerStatus};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::AppError;

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, AppError> {
    q.map(|Query(t)| t)
        .map_err(|e| AppError::bad_request(ErrorCode::InvalidQuery, e.body_text()))
}

/// The page size of a scope view (`GET /v1/triggers`, the list of `GET /v1/series`):
/// [`kora_model::DEFAULT_VIEW_PAGE`] (or `max` when lower) when absent, else 1 to `max` (the
/// setting `max_view_scopes`).
pub fn scope_page(limit: Option<usize>, max: usize) -> Result<usize, AppError> {
    let max = max.max(1);
    let limit = limit.unwrap_or(kora_model::DEFAULT_VIEW_PAGE.min(max));
    if limit == 0 || limit > max {
        return Err(AppError::Invalid {
            code: ErrorCode::InvalidQuery,
            message: format!(
                "limit must be 1 to {max} (the service's max_view_scopes), got {limit}; follow \
                 next_after for more"
            ),
            field: Some("limit".into()),
        });
    }
    Ok(limit)
}

/// A trigger category by name, or a `400` naming `field`.
fn category(name: &str, field: &str) -> Result<kora_model::Category, AppError> {
    kora_model::Category::ALL
        .into_iter()
        .find(|k| k.as_str() == name)
        .ok_or_else(|| AppError::Invalid {
            code: ErrorCode::InvalidQuery,
            message: format!(
                "unknown category {name:?}; the categories are model_fit, context, latency, \
                 concurrency and reliability"
            ),
            field: Some(field.into()),
        })
}

/// A page size: `default` when absent, else 1 to `MAX_LOG_PAGE`.
pub fn page_limit(limit: Option<usize>, default: usize) -> Result<usize, AppError> {
    let limit = limit.unwrap_or(default);
    if limit == 0 || limit > kora_model::MAX_LOG_PAGE {
        return Err(AppError::Invalid {
            code: ErrorCode::InvalidQuery,
            message: format!(
                "limit must be 1 to {}, got {limit}",
                kora_model::MAX_LOG_PAGE
            ),
            field: Some("limit".into()),
        });
    }
    Ok(limit)
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
        .pipeline
        .profile_now()
        .map(Json)
        .ok_or_else(no_snapshot)
}

/// `GET /v1/fit`: whether a model (and a context) fits this machine now, with the arithmetic;
/// memory the runtime's own loaded models hold is reclaimable, as in the profile.
pub async fn fit(
    State(state): State<AppState>,
    q: Result<Query<FitQuery>, QueryRejection>,
) -> Result<Json<FitVerdict>, AppError> {
    let q = query(q)?;
    let Some(vram) = q.model_required_vram_mb else {
        return Err(AppError::Invalid {
            code: ErrorCode::InvalidQuery,
            message: "model_required_vram_mb is required (MB of VRAM the model needs)".into(),
            field: Some("model_required_vram_mb".into()),
        });
    };
    if !vram.is_finite() || vram < 0.0 {
        return Err(AppError::Invalid {
            code: ErrorCode::InvalidQuery,
            message: format!("must be a finite number >= 0, got {vram}"),
            field: Some("model_required_vram_mb".into()),
        });
    }
    let hardware = state.pipeline.hardware().ok_or_else(no_snapshot)?;
    let thresholds = state.pipeline.thresholds();
    Ok(Json(kora_probe::fit_check(
        &hardware,
        &state.pipeline.models(),
        vram,
        q.context_tokens,
        &thresholds.file().profile,
    )))
}

/// The answer of `GET /v1/triggers`.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TriggersView {
    pub thresholds_version: String,
    /// The page's states, in category then scope order.
    pub triggers: Vec<TriggerStatus>,
    /// Pass as `after` to get the next page (`category/scope` of the last state); absent on
    /// the last page.
    pub next_after: Option<String>,
}

/// `GET /v1/triggers`: one page of each category's state per scope, with its latest evidence.
pub async fn triggers(
    State(state): State<AppState>,
    q: Result<Query<TriggersQuery>, QueryRejection>,
) -> Result<Json<TriggersView>, AppError> {
    let q = query(q)?;
    let limit = scope_page(q.limit, state.max_view_scopes)?;
    let only = q
        .category
        .as_deref()
        .map(|c| category(c, "category"))
        .transpose()?;
    let after = match q.after.as_deref() {
        None => None,
        Some(after) => {
            let Some((c, scope)) = after.split_once('/') else {
                return Err(AppError::Invalid {
                    code: ErrorCode::InvalidQuery,
                    message: format!(
                        "after must be category/scope, as the previous page's next_after; got \
                         {after:?}"
                    ),
                    field: Some("after".into()),
                });
            };
            Some((category(c, "after")?, scope))
        }
    };
    state.pipeline.settle().await;
    let filter = TriggerFilter {
        category: only,
        scope: q.scope.as_deref(),
        after,
    };
    let (thresholds_version, (triggers, more)) = state.pipeline.with_engine(|e| {
        (
            e.thresholds().version().to_owned(),
            e.triggers_page(&filter, limit),
        )
    });
    let next_after = more
        .then(|| triggers.last())
        .flatten()
        .map(|t| format!("{}/{}", t.category.as_str(), t.scope));
    Ok(Json(TriggersView {
        thresholds_version,
        triggers,
        next_after,
    }))
}

/// The answer of `GET /v1/thresholds`.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ThresholdsView {
    pub version: String,
    /// SHA-256 of the canonical content, pinned per version in `schema/thresholds.pins.json`.
    pub fingerprint: String,
    /// The thresholds file, with its fingerprint.
    pub thresholds: Thresholds,
    /// The Krako Cloud tier table (`schema/cloud-tiers.json`).
    pub cloud_tiers: CloudTiers,
}

/// `GET /v1/thresholds`: the active versioned set and the cloud tier table.
pub async fn thresholds(State(state): State<AppState>) -> Json<ThresholdsView> {
    state.pipeline.with_engine(|e| {
        Json(ThresholdsView {
            version: e.thresholds().version().to_owned(),
            fingerprint: e.thresholds().fingerprint(),
            thresholds: e.thresholds().clone(),
            cloud_tiers: e.tiers().clone(),
        })
    })
}

/// The ladder of a suggestion: each step named by the option offered at it, or by the option
/// the category uses for it, or generically when the category skips it.
pub fn ladder_of(s: &Suggestion) -> Vec<LadderStep> {
    const GENERIC: [&str; 3] = ["smaller_model", "deterministic_filtering", "lower_context"];
    let own = kora_policy::local_steps(s.category);
    (1..=kora_policy::CLOUD_STEP)
        .map(|step| {
            let offered = s
                .options
                .iter()
                .find(|o| kora_policy::step_of_option(&o.id) == Some(step));
            let category_own = own.iter().find(|(n, _)| *n == step).map(|(_, id)| *id);
            let option_id = match (offered, category_own) {
                (Some(o), _) => o.id.clone(),
                (None, Some(id)) => id.to_owned(),
                (None, None) if step == kora_policy::CLOUD_STEP => {
                    kora_policy::CLOUD_OPTION.to_owned()
                }
                (None, None) => GENERIC
                    .get(usize::from(step).saturating_sub(1))
                    .copied()
                    .unwrap_or_default()
                    .to_owned(),
            };
            let label = if option_id == kora_policy::CLOUD_OPTION {
                "Krako Cloud".to_owned()
            } else {
                kora_policy::local_label(&option_id).to_owned()
            };
            LadderStep {
                step,
                option_id,
                label,
                applies: step == kora_policy::CLOUD_STEP || category_own.is_some(),
                offered: offered.is_some(),
            }
        })
        .collect()
}

/// How far back the suggestion view looks for the records a suggestion refers to.
const LOOKBACK: usize = 10_000;

/// `GET /v1/suggestions`: newest first, each with its firing (and evidence), the feedback it
/// got, the outcome of an accepted mitigation, and the recent suppressions.
pub async fn suggestions(
    State(state): State<AppState>,
    q: Result<Query<SuggestionsQuery>, QueryRejection>,
) -> Result<Json<SuggestionsView>, AppError> {
    use kora_model::{Record, RecordKind};
    let q = query(q)?;
    let limit = page_limit(q.limit, 50)?;
    if let Some(c) = &q.category
        && !kora_model::Category::ALL.iter().any(|k| k.as_str() == c)
    {
        return Err(AppError::Invalid {
            code: ErrorCode::InvalidQuery,
            message: format!("unknown category {c:?}"),
            field: Some("category".into()),
        });
    }
    // The engine's outputs for every acknowledged record are in the log first.
    state.pipeline.settle().await;
    let store = state.pipeline.store().clone();
    let (suggestions, firings, feedback, outcomes, suppressions) =
        tokio::task::spawn_blocking(move || -> Result<_, kora_store::ReadError> {
            Ok((
                store.recent(None, Some(RecordKind::Suggestion), LOOKBACK)?,
                store.recent(None, Some(RecordKind::Firing), LOOKBACK)?,
                store.recent(None, Some(RecordKind::Feedback), LOOKBACK)?,
                store.recent(None, Some(RecordKind::MitigationOutcome), LOOKBACK)?,
                store.recent(None, Some(RecordKind::Suppression), 200)?,
            ))
        })
        .await
        .map_err(|e| AppError::Internal(e.to_string()))??;
    let firing_by_id: std::collections::BTreeMap<&str, &kora_model::Firing> = firings
        .iter()
        .filter_map(|e| match &e.record {
            Record::Firing(f) => Some((f.firing_id.as_str(), f)),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for e in &suggestions {
        let Record::Suggestion(s) = &e.record else {
            continue;
        };
        if q.category
            .as_deref()
            .is_some_and(|c| c != s.category.as_str())
            || q.scope.as_deref().is_some_and(|sc| sc != s.scope)
        {
            continue;
        }
        let fb: Vec<_> = feedback
            .iter()
            .filter_map(|f| match &f.record {
                Record::Feedback(f) if f.suggestion_id == s.suggestion_id => Some(f.clone()),
                _ => None,
            })
            .collect();
        let outcome = outcomes.iter().find_map(|o| match &o.record {
            Record::MitigationOutcome(o) if o.suggestion_id == s.suggestion_id => Some(o.clone()),
            _ => None,
        });
        out.push(SuggestionView {
            seq: e.seq,
            ladder: ladder_of(s),
            suggestion: s.clone(),
            firing: firing_by_id.get(s.firing_id.as_str()).map(|f| (*f).clone()),
            feedback: fb,
            outcome,
        });
        if out.len() == limit {
            break;
        }
    }
    let suppressions: Vec<_> = suppressions
        .into_iter()
        .filter_map(|e| match e.record {
            Record::Suppression(suppression) => Some(SuppressionView {
                seq: e.seq,
                suppression,
            }),
            _ => None,
        })
        .collect();
    Ok(Json(SuggestionsView {
        suggestions: out,
        suppressions,
    }))
}

/// `POST /v1/suggestions/{id}/feedback`: accept or dismiss a suggestion.
pub async fn feedback(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<kora_model::IngestAck>, AppError> {
    use kora_model::Validate;
    let mut fb: kora_model::Feedback = crate::ingest::decode(&headers, body)?;
    if !fb.suggestion_id.is_empty() && fb.suggestion_id != id {
        return Err(AppError::invalid(
            "suggestion_id",
            format!(
                "the body names {:?} but the path names {id:?}; leave it out",
                fb.suggestion_id
            ),
        ));
    }
    fb.suggestion_id = id.clone();
    fb.validate(state.now_ms())
        .map_err(|e| AppError::invalid(e.field, e.message))?;
    // Through the read models' id index, however old the suggestion.
    state.pipeline.settle().await;
    let pipeline = state.pipeline.clone();
    let lookup = id.clone();
    let suggestion = tokio::task::spawn_blocking(move || pipeline.suggestion(&lookup))
        .await
        .map_err(|e| AppError::Internal(e.to_string()))??
        .ok_or_else(|| AppError::NotFound(format!("no suggestion {id:?}")))?;
    if let Some(choice) = &fb.choice
        && !suggestion.options.iter().any(|o| &o.id == choice)
    {
        let ids: Vec<_> = suggestion.options.iter().map(|o| o.id.as_str()).collect();
        return Err(AppError::invalid(
            "choice",
            format!("{choice:?} is not an option of this suggestion; its options are {ids:?}"),
        ));
    }
    let a = state
        .pipeline
        .append(
            "feedback",
            kora_store::Batch::Records(vec![kora_model::Record::Feedback(fb)]),
        )
        .await?;
    Ok(Json(crate::ingest::ack_of(a)))
}

/// `PUT /v1/cloud/readiness`: the KrakoBackend plugin's readiness report.
pub async fn readiness(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<kora_model::IngestAck>, AppError> {
    use kora_model::Validate;
    let r: kora_model::Readiness = crate::ingest::decode(&headers, body)?;
    r.validate(state.now_ms())
        .map_err(|e| AppError::invalid(e.field, e.message))?;
    let a = state
        .pipeline
        .append(
            "readiness",
            kora_store::Batch::Records(vec![kora_model::Record::Readiness(r)]),
        )
        .await?;
    Ok(Json(crate::ingest::ack_of(a)))
}

/// `GET /v1/windows`: closed windows (run blocks and time windows), newest first.
pub async fn windows(
    State(state): State<AppState>,
    q: Result<Query<WindowsQuery>, QueryRejection>,
) -> Result<Json<WindowsView>, AppError> {
    use kora_model::Record;
    let q = query(q)?;
    let limit = page_limit(q.limit, 100)?;
    if let Some(k) = &q.kind
        && k != "time"
        && k != "runs"
    {
        return Err(AppError::Invalid {
            code: ErrorCode::InvalidQuery,
            message: format!("kind must be `time` or `runs`, got {k:?}"),
            field: Some("kind".into()),
        });
    }
    let store = state.pipeline.store().clone();
    let windows = tokio::task::spawn_blocking(move || -> Result<_, kora_store::ReadError> {
        let keep = |kind: &str, metric: &str, scope: &str| {
            q.metric.as_deref().is_none_or(|m| m == metric)
                && q.scope.as_deref().is_none_or(|s| s == scope)
                && q.kind.as_deref().is_none_or(|k| k == kind)
        };
        Ok(store
            .recent_windows(None, limit, keep)?
            .into_iter()
            .filter_map(|e| match e.record {
                Record::Window(window) => Some(WindowView { seq: e.seq, window }),
                _ => None,
            })
            .collect::<Vec<_>>())
    })
    .await
    .map_err(|e| AppError::Internal(e.to_string()))??;
    Ok(Json(WindowsView { windows }))
}

/// `GET /v1/series`: one series downsampled to at most `points` buckets (min, max, mean), or
/// the list of series when `series` is absent.
pub async fn series(
    State(state): State<AppState>,
    q: Result<Query<SeriesQuery>, QueryRejection>,
) -> Result<Json<SeriesView>, AppError> {
    let q = query(q)?;
    let store = state.pipeline.store().clone();
    // Every parameter is checked, whether or not `series` is given.
    // Any i64 may arrive: the arithmetic saturates, and a span that does not fit is refused.
    let to = q.to_ms.unwrap_or_else(|| state.now_ms().saturating_add(1));
    let from = q.from_ms.unwrap_or(to.saturating_sub(3600 * 1000));
    let points = q.points.unwrap_or(200);
    if !(1..=2000).contains(&points) {
        return Err(AppError::Invalid {
            code: ErrorCode::InvalidQuery,
            message: format!("points must be 1 to 2000, got {points}"),
            field: Some("points".into()),
        });
    }
    if from >= to
        || to
            .checked_sub(from)
            .is_none_or(|span| span > 31 * 24 * 3600 * 1000)
    {
        return Err(AppError::Invalid {
            code: ErrorCode::InvalidQuery,
            message: "from_ms must be before to_ms, at most 31 days apart".into(),
            field: Some("from_ms".into()),
        });
    }
    let Some(name) = q.series else {
        // From the names the pipeline keeps: exactly the store's series, in order.
        let limit = scope_page(q.limit, state.max_view_scopes)?;
        let (series, next_after) = state
            .pipeline
            .cardinality()
            .series_page(q.after.as_deref(), limit);
        return Ok(Json(SeriesView::List(SeriesList { series, next_after })));
    };
    if q.limit.is_some() || q.after.is_some() {
        return Err(AppError::Invalid {
            code: ErrorCode::InvalidQuery,
            message: "limit and after page the list of series; leave them out with series".into(),
            field: Some(if q.limit.is_some() { "limit" } else { "after" }.into()),
        });
    }
    let key = name.clone();
    let width = ((to - from) as f64 / points as f64).max(1.0);
    // Aggregated while the store reads, so a month of 1 s samples is never held at once.
    let (points, unavailable) = tokio::task::spawn_blocking(move || {
        // One slot a bucket, found by arithmetic: (min, max, sum, n).
        let mut buckets = vec![(f64::INFINITY, f64::NEG_INFINITY, 0.0, 0u64); points];
        let slot = |ts: i64| (((ts - from) as f64 / width).floor() as usize).min(points - 1);
        let mut unavailable = 0u64;
        store.each_point(&key, from, to, |ts, value| {
            let Some(v) = value else {
                unavailable += 1;
                return;
            };
            let e = &mut buckets[slot(ts)];
            e.0 = e.0.min(v);
            e.1 = e.1.max(v);
            e.2 += v;
            e.3 += 1;
        })?;
        // Older than the raw retention, the samples survive as rollups (count, min, max, sum
        // per bucket); raw samples and rollups never cover the same time.
        for r in store.rollups(&key, from, to)? {
            let e = &mut buckets[slot(r.start_ms)];
            e.0 = e.0.min(r.min);
            e.1 = e.1.max(r.max);
            e.2 += r.sum;
            e.3 += r.count;
        }
        let points: Vec<SeriesPoint> = buckets
            .into_iter()
            .enumerate()
            .filter(|(_, b)| b.3 > 0)
            .map(|(i, (min, max, sum, n))| SeriesPoint {
                t: from + (i as f64 * width).floor() as i64,
                min,
                max,
                mean: sum / n as f64,
                n,
            })
            .collect();
        Ok::<_, kora_store::ReadError>((points, unavailable))
    })
    .await
    .map_err(|e| AppError::Internal(e.to_string()))??;
    Ok(Json(SeriesView::Data(SeriesData {
        series: name,
        from_ms: from,
        to_ms: to,
        points,
        unavailable_samples: unavailable,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn suggestion(category: &str, step: u8, options: &[(&str, &str)]) -> Suggestion {
        let options: Vec<_> = options
            .iter()
            .map(|(id, kind)| json!({"id": id, "kind": kind, "label": format!("Try {id}")}))
            .collect();
        serde_json::from_value(json!({"ts_ms": 1, "suggestion_id": "s", "firing_id": "f",
            "category": category, "scope": "m", "ladder_step": step, "options": options,
            "message": "m", "thresholds_version": "1.0.0"}))
        .unwrap()
    }

    fn names(l: &[LadderStep]) -> Vec<(&str, bool, bool)> {
        l.iter()
            .map(|s| (s.option_id.as_str(), s.applies, s.offered))
            .collect()
    }

    #[test]
    fn a_reliability_step_1_is_the_stronger_local_model_it_offers() {
        let l = ladder_of(&suggestion(
            "reliability",
            1,
            &[("stronger_local_model", "local")],
        ));
        assert_eq!(
            names(&l),
            vec![
                ("stronger_local_model", true, true),
                ("deterministic_filtering", true, false),
                ("lower_context", false, false),
                ("cloud", true, false),
            ]
        );
        assert_eq!(l[0].label, kora_policy::local_label("stronger_local_model"));
        assert!(!l[0].label.contains("smaller"), "{}", l[0].label);
        // Later, with Krako Cloud beside step 2: step 1 keeps the category's own option.
        let l = ladder_of(&suggestion(
            "reliability",
            4,
            &[("deterministic_filtering", "local"), ("cloud", "cloud")],
        ));
        assert_eq!(
            names(&l),
            vec![
                ("stronger_local_model", true, false),
                ("deterministic_filtering", true, true),
                ("lower_context", false, false),
                ("cloud", true, true),
            ]
        );
        assert_eq!(l[3].label, "Krako Cloud");
    }

    #[test]
    fn other_categories_keep_the_smaller_model_and_skip_what_they_skip() {
        let l = ladder_of(&suggestion(
            "latency",
            4,
            &[("smaller_model", "local"), ("cloud", "cloud")],
        ));
        assert_eq!(l[0].option_id, "smaller_model");
        assert_eq!(l[0].label, kora_policy::local_label("smaller_model"));
        assert!(l[0].offered && l[3].offered && !l[1].offered);
        let l = ladder_of(&suggestion("context", 3, &[("lower_context", "local")]));
        assert_eq!(
            names(&l),
            vec![
                ("smaller_model", false, false),
                ("deterministic_filtering", false, false),
                ("lower_context", true, true),
                ("cloud", true, false),
            ]
        );
    }
}
