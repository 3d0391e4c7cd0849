//! The product metrics of the specification's Section 8 and the Prometheus exposition: both
//! stay on the machine (export is [`crate::export`]'s, and opt-in).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use kora_model::{
    Category, ErrorCode, GpuReading, LimitStatus, MIN_TS_MS, ProductMetrics, ProfileRecord,
    RangeQuery, Substrate,
};
use kora_policy::{TriggerState, TriggerStatus};
use kora_window::{Histogram, LATENCY_BUCKETS_S, QUEUE_WAIT_BUCKETS_S, RunMetrics, RunSeries};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

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

/// `GET /metrics`: the OpenMetrics text exposition (http-api.md lists every family).
pub async fn prometheus(State(state): State<AppState>) -> Result<Response, AppError> {
    // From the read models, the engine's state and the latest probe reading, brought up to
    // every acknowledged record first: the cost does not grow with the log.
    state.pipeline.settle().await;
    let store = state.pipeline.store().clone();
    let stats = blocking(move || store.stats()).await?;
    let (product, cloud, runs) = state.pipeline.with_read(|r| {
        let (by_model, _) = r.cloud.per_model_all_time(kora_model::MAX_CLOUD_MODELS);
        let all = r.cloud.summary(i64::MIN, i64::MAX);
        (
            r.product.metrics("all", MIN_TS_MS, i64::MAX),
            CloudCounts {
                runs: all.count,
                tokens: all.tokens,
                by_model: by_model
                    .into_iter()
                    .map(|(m, n)| (m.to_owned(), n))
                    .collect(),
            },
            r.runs.clone(),
        )
    });
    let scrape = Scrape {
        log_records: stats.log_records,
        samples: stats.samples,
        product,
        cloud,
        runs,
        triggers: state.pipeline.with_engine(|e| e.triggers()),
        now: state.pipeline.profile_now(),
        limits: state.pipeline.cardinality().status(),
    };
    let mut registry = Registry::with_prefix("kora");
    registry.register_collector(Box::new(scrape));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(|e| AppError::Internal(format!("cannot encode the exposition: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Bytes in one MB of the probe's readings (it reports MiB).
const BYTES_PER_MB: f64 = 1_048_576.0;

/// The all-time cloud runs, as `/metrics` counts them.
#[derive(Debug)]
struct CloudCounts {
    runs: u64,
    tokens: u64,
    /// The first [`kora_model::MAX_CLOUD_MODELS`] models to run on the cloud.
    by_model: Vec<(String, u64)>,
}

/// Everything one scrape shows, read once, encoded in a fixed order (families as listed in
/// http-api.md, series in label order).
#[derive(Debug)]
struct Scrape {
    log_records: u64,
    samples: u64,
    product: ProductMetrics,
    cloud: CloudCounts,
    runs: RunMetrics,
    triggers: Vec<TriggerStatus>,
    /// The probe's latest reading and the profile computed from it now.
    now: Option<ProfileRecord>,
    /// The cardinality limits and their counts.
    limits: Vec<LimitStatus>,
}

/// A series' labels (none for a family of one series).
type Labels = Vec<(&'static str, String)>;

/// Writes families through prometheus-client's encoder.
struct Families<'a>(DescriptorEncoder<'a>);

impl Families<'_> {
    /// One family of `rows`; nothing at all when there are none (an unavailable reading has no
    /// series, never a 0).
    fn family<V>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        kind: MetricType,
        rows: &[(Labels, V)],
        write: impl Fn(&mut MetricEncoder, &V) -> std::fmt::Result,
    ) -> std::fmt::Result {
        if rows.is_empty() {
            return Ok(());
        }
        let mut family = self.0.encode_descriptor(name, help, unit.as_ref(), kind)?;
        for (labels, value) in rows {
            if labels.is_empty() {
                write(&mut family, value)?;
            } else {
                write(&mut family.encode_family(labels)?, value)?;
            }
        }
        Ok(())
    }

    fn counters(&mut self, name: &str, help: &str, rows: &[(Labels, u64)]) -> std::fmt::Result {
        self.family(name, help, None, MetricType::Counter, rows, |m, v| {
            m.encode_counter::<NoLabelSet, _, u64>(v, None)
        })
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) -> std::fmt::Result {
        self.counters(name, help, &[(Vec::new(), value)])
    }

    fn gauges<V: EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        rows: &[(Labels, V)],
    ) -> std::fmt::Result {
        self.family(name, help, unit, MetricType::Gauge, rows, |m, v| {
            m.encode_gauge(v)
        })
    }

    /// A gauge of one series, left out when `value` is unavailable.
    fn reading(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        value: Option<f64>,
    ) -> std::fmt::Result {
        let rows: Vec<(Labels, f64)> = value
            .filter(|v| v.is_finite())
            .map(|v| (Vec::new(), v))
            .into_iter()
            .collect();
        self.gauges(name, help, unit, &rows)
    }

    fn histograms(
        &mut self,
        name: &str,
        help: &str,
        bounds: &[f64],
        rows: &[(Labels, &Histogram)],
    ) -> std::fmt::Result {
        self.family(
            name,
            help,
            Some(Unit::Seconds),
            MetricType::Histogram,
            rows,
            |m, h| m.encode_histogram::<NoLabelSet>(h.sum(), h.count(), &h.buckets(bounds), None),
        )
    }
}

fn substrate_label(s: Substrate) -> &'static str {
    match s {
        Substrate::Local => "local",
        Substrate::Cloud => "cloud",
    }
}

fn state_label(s: &TriggerState) -> &'static str {
    match s {
        TriggerState::Idle => "idle",
        TriggerState::Pending { .. } => "pending",
        TriggerState::Firing => "firing",
        TriggerState::Resolved { .. } => "resolved",
        TriggerState::InsufficientEvidence { .. } => "insufficient_evidence",
    }
}

fn run_labels(s: &RunSeries) -> Labels {
    vec![
        ("model", s.model.clone()),
        ("substrate", substrate_label(s.substrate).to_owned()),
    ]
}

impl Collector for Scrape {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        let mut out = Families(encoder);
        self.counts(&mut out)?;
        self.limits(&mut out)?;
        self.hardware(&mut out)?;
        self.profile(&mut out)?;
        self.triggers(&mut out)?;
        self.run_families(&mut out)
    }
}

impl Scrape {
    /// The store's size (gauges: retention drops samples) and the engine's all-time outputs
    /// (counters: the log is append-only, so they never go down).
    fn counts(&self, out: &mut Families) -> std::fmt::Result {
        let m = &self.product;
        let size = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        out.gauges(
            "log_records",
            "Records in the log now.",
            None,
            &[(Vec::new(), size(self.log_records))],
        )?;
        out.gauges(
            "samples",
            "Raw samples stored now (retention drops old ones).",
            None,
            &[(Vec::new(), size(self.samples))],
        )?;
        for (name, help, value) in [
            (
                "upgrade_suggestions",
                "Suggestions shown.",
                m.upgrade_suggestion_count,
            ),
            (
                "cloud_offers",
                "Suggestions that offered Krako Cloud.",
                m.cloud_offer_count,
            ),
            (
                "suggestions_accepted",
                "Suggestions whose first answer was accepted.",
                m.suggestion_accept_rate.numerator,
            ),
            (
                "suggestions_dismissed",
                "Suggestions whose first answer was dismissed.",
                m.suggestion_dismiss_rate.numerator,
            ),
            (
                "mitigations_followed",
                "Accepted local mitigations whose follow-up measured something.",
                m.local_mitigation_success_rate.denominator,
            ),
            (
                "mitigations_resolved",
                "Accepted local mitigations that resolved the limit.",
                m.local_mitigation_success_rate.numerator,
            ),
            (
                "suppressions",
                "Suggestions held back by a cooldown rule.",
                m.suppression_count,
            ),
        ] {
            out.counter(name, help, value)?;
        }
        let firings: Vec<(Labels, u64)> = Category::ALL
            .into_iter()
            .map(|c| {
                let n = m
                    .top_trigger_categories
                    .iter()
                    .find(|x| x.category == c)
                    .map_or(0, |x| x.firings);
                (vec![("category", c.as_str().to_owned())], n)
            })
            .collect();
        out.counters("trigger_firings", "Firings per trigger category.", &firings)?;
        out.counter(
            "cloud_runs",
            "Runs that executed on Krako Cloud.",
            self.cloud.runs,
        )?;
        out.counter(
            "cloud_run_tokens",
            "Tokens (total_tokens) of the runs that executed on Krako Cloud.",
            self.cloud.tokens,
        )?;
        let by_model: Vec<(Labels, u64)> = self
            .cloud
            .by_model
            .iter()
            .map(|(model, n)| (vec![("model", model.clone())], *n))
            .collect();
        out.counters(
            "cloud_runs_by_model",
            "Runs that executed on Krako Cloud per model (the first 50 models to run there).",
            &by_model,
        )
    }

    /// Each cardinality limit, its count now, and the batches refused for it.
    fn limits(&self, out: &mut Families) -> std::fmt::Result {
        let size = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let label = |l: &LimitStatus| vec![("name", l.name.as_str().to_owned())];
        let rows = |pick: fn(&LimitStatus) -> u64| -> Vec<(Labels, i64)> {
            self.limits
                .iter()
                .map(|l| (label(l), size(pick(l))))
                .collect()
        };
        out.gauges(
            "limit",
            "The most distinct names the service takes (models, series, sessions open at once).",
            None,
            &rows(|l| l.limit),
        )?;
        out.gauges(
            "limit_used",
            "Distinct names the service holds now, against kora_limit.",
            None,
            &rows(|l| l.count),
        )?;
        let refused: Vec<(Labels, u64)> = self
            .limits
            .iter()
            .map(|l| (label(l), l.refused_batches))
            .collect();
        out.counters(
            "limit_refused_batches",
            "Ingest batches refused (422 limit_exceeded) for crossing the limit, since start.",
            &refused,
        )
    }

    /// The probe's latest reading; what it could not read is left out.
    fn hardware(&self, out: &mut Families) -> std::fmt::Result {
        let Some(h) = self.now.as_ref().map(|n| &n.hardware) else {
            return Ok(());
        };
        let bytes = |mb: Option<f64>| mb.map(|v| v * BYTES_PER_MB);
        out.reading(
            "hardware_reading_timestamp",
            "Unix time of the probe's latest reading.",
            Some(Unit::Seconds),
            Some(h.ts_ms as f64 / 1000.0),
        )?;
        out.reading(
            "cpu_cores",
            "Logical CPUs the operating system schedules on.",
            None,
            h.cpu_cores.map(f64::from),
        )?;
        out.reading(
            "cpu_load",
            "CPU load over all cores (0 to 1).",
            Some(Unit::Other("ratio".into())),
            h.cpu_load_pct.map(|p| p / 100.0),
        )?;
        out.reading(
            "ram_total",
            "RAM of the machine.",
            Some(Unit::Bytes),
            bytes(h.ram_total_mb),
        )?;
        out.reading(
            "ram_free",
            "RAM free now.",
            Some(Unit::Bytes),
            bytes(h.ram_free_mb),
        )?;
        type Pick = fn(&GpuReading) -> Option<f64>;
        let per_gpu: [(&str, &str, Pick); 3] = [
            ("gpu_vram_total", "VRAM of the GPU.", |g| g.vram_total_mb),
            (
                "gpu_vram_free",
                "VRAM free now on the GPU (memory the driver reserves is not free).",
                |g| g.vram_free_mb,
            ),
            (
                "gpu_vram_reserved",
                "VRAM the driver reserves for itself on the GPU.",
                |g| g.vram_reserved_mb,
            ),
        ];
        for (name, help, pick) in per_gpu {
            let rows: Vec<(Labels, f64)> = h
                .gpus
                .iter()
                .filter_map(|g| {
                    let v = bytes(pick(g)).filter(|v| v.is_finite())?;
                    Some((vec![("gpu", g.index.to_string())], v))
                })
                .collect();
            out.gauges(name, help, Some(Unit::Bytes), &rows)?;
        }
        Ok(())
    }

    /// The capability profile's recommendations now; an unknown one is left out.
    fn profile(&self, out: &mut Families) -> std::fmt::Result {
        let Some(p) = self.now.as_ref().map(|n| &n.profile) else {
            return Ok(());
        };
        out.reading(
            "profile_max_model_vram",
            "The largest model that fits on one GPU (on a CPU-only machine, in RAM).",
            Some(Unit::Bytes),
            p.max_recommended_model_vram_mb
                .value
                .map(|v| v * BYTES_PER_MB),
        )?;
        out.reading(
            "profile_max_context_tokens",
            "The context (tokens) that fits beside the largest loaded model.",
            None,
            p.max_recommended_context_tokens.value,
        )?;
        out.reading(
            "profile_max_concurrency",
            "Concurrent sessions this machine serves.",
            None,
            p.max_recommended_concurrency.value,
        )
    }

    /// One series per category, scope and current state, valued at the number of scopes in
    /// it: 1, except under `scope="other"`, which holds the scopes of the models without a
    /// label of their own.
    fn triggers(&self, out: &mut Families) -> std::fmt::Result {
        let mut rows: Vec<(Labels, i64)> = Vec::new();
        for t in &self.triggers {
            let scope = match t.scope.as_str() {
                "host" | "*" => t.scope.clone(),
                model => self.runs.label(model).to_owned(),
            };
            let labels = vec![
                ("category", t.category.as_str().to_owned()),
                ("scope", scope),
                ("state", state_label(&t.state).to_owned()),
            ];
            match rows.iter_mut().find(|(l, _)| *l == labels) {
                Some((_, n)) => *n += 1,
                None => rows.push((labels, 1)),
            }
        }
        out.gauges(
            "trigger_state",
            "The current state of each trigger category and scope (as Prometheus's ALERTS).",
            None,
            &rows,
        )
    }

    /// The runs per model label and substrate: latency and queue-wait histograms, tokens,
    /// retries and breaches.
    fn run_families(&self, out: &mut Families) -> std::fmt::Result {
        let series = self.runs.series();
        type Pick = fn(&RunSeries) -> &Histogram;
        let histograms: [(&str, &str, &[f64], Pick); 3] = [
            (
                "run_model_latency",
                "Model latency (model_latency_ms) of the runs.",
                &LATENCY_BUCKETS_S,
                |s| &s.model_latency,
            ),
            (
                "run_total_latency",
                "Total latency (total_latency_ms) of the runs.",
                &LATENCY_BUCKETS_S,
                |s| &s.total_latency,
            ),
            (
                "run_queue_wait",
                "Queue wait (queue_wait_ms) of the runs that report it.",
                &QUEUE_WAIT_BUCKETS_S,
                |s| &s.queue_wait,
            ),
        ];
        for (name, help, bounds, pick) in histograms {
            let rows: Vec<(Labels, &Histogram)> = series
                .iter()
                .filter(|s| pick(s).count() > 0)
                .map(|s| (run_labels(s), pick(s)))
                .collect();
            out.histograms(name, help, bounds, &rows)?;
        }
        type Count = fn(&RunSeries) -> u64;
        let counters: [(&str, &str, Count); 4] = [
            (
                "run_tokens_in",
                "Prompt tokens (tokens_in) of the runs that report them.",
                |s| s.tokens_in,
            ),
            (
                "run_tokens_out",
                "Generated tokens (tokens_out) of the runs that report them.",
                |s| s.tokens_out,
            ),
            (
                "run_validation_retries",
                "Validation retries of the runs.",
                |s| s.validation_retries,
            ),
            ("run_budget_breaches", "Budget breaches of the runs.", |s| {
                s.budget_breaches
            }),
        ];
        for (name, help, pick) in counters {
            let rows: Vec<(Labels, u64)> =
                series.iter().map(|s| (run_labels(s), pick(s))).collect();
            out.counters(name, help, &rows)?;
        }
        Ok(())
    }
}
