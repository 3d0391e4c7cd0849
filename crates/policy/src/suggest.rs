//! Suggestions: the readiness check, honest cloud estimates and the message (spec Sections 5
//! to 7). Reads the state; never changes it (the engine records what was offered).

use kora_model::{
    Category, CloudEstimate, EstimateComparison, Evidence, OptionKind, Suggestion, SuggestionOption,
};
use kora_window::{RunPoint, quantile};

use crate::ladder::{CLOUD_OPTION, CLOUD_STEP, Ladder, local_label};
use crate::state::{EngineState, HOST};
use crate::text::{num, usd};
use crate::thresholds::Thresholds;
use crate::tiers::{CloudTier, CloudTiers};

/// What the suggestion answers: a firing, or an "insist on the same tier" of an earlier one.
#[derive(Debug, Clone)]
pub(crate) struct Ask<'a> {
    /// The seq of the input that caused it (the suggestion id is `s-{seq}-{category}`).
    pub seq: u64,
    pub ts_ms: i64,
    pub category: Category,
    pub scope: &'a str,
    pub session_id: Option<&'a str>,
    pub firing_id: &'a str,
    pub reason: &'a str,
    pub evidence: &'a [Evidence],
    pub requested_context: Option<u64>,
}

/// The read-only inputs of a suggestion.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inputs<'a> {
    pub state: &'a EngineState,
    pub thresholds: &'a Thresholds,
    pub tiers: &'a CloudTiers,
}

/// Readiness of the cloud action at `ts_ms`: (ready, what to do first).
fn readiness(inp: Inputs<'_>, ts_ms: i64) -> (bool, Vec<String>) {
    let max_age = inp.thresholds.readiness_max_age_ms();
    match &inp.state.readiness {
        None => (
            false,
            vec!["install the KrakoBackend plugin (no readiness report was received)".to_owned()],
        ),
        Some(r) if ts_ms.saturating_sub(r.ts_ms) > max_age => (
            false,
            vec![format!(
                "open the KrakoBackend plugin so it reports readiness (its last report is older than {} minutes)",
                max_age / 60_000
            )],
        ),
        Some(r) => {
            let mut todo = Vec::new();
            if !r.report.plugin_installed {
                todo.push("install the KrakoBackend plugin".to_owned());
            }
            if !r.report.network_available {
                todo.push("check the network".to_owned());
            }
            if !r.report.authenticated {
                todo.push("log in to Krako Cloud".to_owned());
            }
            if !r.report.credits_available {
                todo.push("add credits".to_owned());
            }
            (todo.is_empty(), todo)
        }
    }
}

/// The scope's last N local runs, as the estimate sees them.
struct Observed<'a> {
    runs: Vec<&'a RunPoint>,
    tokens_in: f64,
    tokens_out: f64,
    source: String,
}

fn observe<'a>(inp: Inputs<'a>, ask: &Ask<'_>) -> Observed<'a> {
    let tiers = inp.tiers;
    // A model idle past the horizon is as if it had never run (`retire`).
    let horizon = crate::retire::horizon(inp.state);
    let runs: Vec<&RunPoint> = if ask.scope == HOST {
        inp.state.runs.all_last_runs_since(horizon)
    } else if inp.state.runs.idle_before(ask.scope, horizon) {
        Vec::new()
    } else {
        inp.state.runs.last_runs(ask.scope)
    };
    let whose = if ask.scope == HOST {
        "of each model".to_owned()
    } else {
        format!("of {}", ask.scope)
    };
    let mut o = if runs.is_empty() {
        Observed {
            runs,
            tokens_in: tiers.default_tokens_in as f64,
            tokens_out: tiers.default_tokens_out as f64,
            source: format!("the tier table's defaults, as no local run {whose} is recorded"),
        }
    } else {
        let n = runs.len() as f64;
        let tin = runs
            .iter()
            .map(|p| p.tokens_in.unwrap_or(p.context_tokens) as f64)
            .sum::<f64>()
            / n;
        let outs: Vec<f64> = runs
            .iter()
            .filter_map(|p| p.tokens_out.map(|t| t as f64))
            .collect();
        let tout = if outs.is_empty() {
            tiers.default_tokens_out as f64
        } else {
            outs.iter().sum::<f64>() / outs.len() as f64
        };
        let source = format!("the average of the last {} local runs {whose}", runs.len());
        Observed {
            runs,
            tokens_in: tin.round(),
            tokens_out: tout.round(),
            source,
        }
    };
    if let Some(req) = ask.requested_context
        && ask.category == Category::Context
    {
        o.tokens_in = o.tokens_in.max(req as f64);
        o.source = format!(
            "{}; input at least the {} requested context tokens",
            o.source,
            num(req as f64)
        );
    }
    o
}

fn compare(
    statistic: &str,
    unit: &str,
    measured_local: f64,
    predicted_cloud: f64,
    lower_is_better: bool,
) -> EstimateComparison {
    EstimateComparison {
        statistic: statistic.to_owned(),
        unit: unit.to_owned(),
        measured_local,
        predicted_cloud,
        lower_is_better,
        ratio: if measured_local > 0.0 {
            predicted_cloud / measured_local
        } else {
            0.0
        },
    }
}

/// Whether the predicted figure is better than the measured one.
fn better(c: &EstimateComparison) -> bool {
    if c.lower_is_better {
        c.predicted_cloud < c.measured_local
    } else {
        c.predicted_cloud > c.measured_local
    }
}

/// The evidence item of `signal` that breached its threshold.
fn breached<'a>(ask: &Ask<'a>, signal: &str) -> Option<&'a Evidence> {
    ask.evidence
        .iter()
        .rev()
        .find(|e| e.signal == signal && e.value > e.threshold)
}

/// A cloud estimate that holds up: (estimate, benefit words, cost words), or why Krako Cloud
/// would not help (its predicted figure is not better, or the tier cannot serve the request).
fn estimate(
    inp: Inputs<'_>,
    ask: &Ask<'_>,
    tier: &CloudTier,
) -> Result<(CloudEstimate, String, String), String> {
    let o = observe(inp, ask);
    let label = &tier.label;
    let per_s = tier.output_tokens_per_s.max(f64::MIN_POSITIVE);
    let model_time = |out: f64| tier.first_token_ms + out / per_s * 1000.0;
    let out_of = |p: &RunPoint| p.tokens_out.map_or(o.tokens_out, |t| t as f64);
    let predicted_mean_ms = model_time(o.tokens_out);
    let (comparison, benefit) = match ask.category {
        Category::Latency => {
            // The same statistic on both sides: the p95 over the scope's last N runs, measured
            // here and predicted run by run (first token + that run's output / throughput).
            let total = breached(ask, "model_latency_ms_p95").is_none()
                && breached(ask, "total_latency_ms_p95").is_some();
            let (measured, predicted): (Vec<f64>, Vec<f64>) = o
                .runs
                .iter()
                .map(|p| {
                    let cloud = model_time(out_of(p));
                    if total {
                        let other = (p.total_latency_ms - p.model_latency_ms).max(0.0);
                        (p.total_latency_ms, other + cloud)
                    } else {
                        (p.model_latency_ms, cloud)
                    }
                })
                .unzip();
            let (Some(m), Some(p)) = (quantile(&measured, 0.95), quantile(&predicted, 0.95)) else {
                return Err(format!(
                    "no local run of {} is recorded to compare with",
                    ask.scope
                ));
            };
            let (statistic, what) = if total {
                ("total_latency_ms_p95", "total time")
            } else {
                ("model_latency_ms_p95", "model time")
            };
            let c = compare(statistic, "ms", m, p.round(), true);
            if !better(&c) {
                return Err(format!(
                    "its predicted p95 {what} of ~{} ms on {label} is not below the {} ms measured here",
                    num(c.predicted_cloud),
                    num(m.round())
                ));
            }
            let benefit = format!(
                "an estimated p95 {what} of ~{} ms per run on {label} (p95 measured here: {} ms)",
                num(c.predicted_cloud),
                num(m.round())
            );
            (Some(c), benefit)
        }
        Category::Context => {
            if let Some(req) = ask.requested_context
                && req > tier.max_context_tokens
            {
                return Err(format!(
                    "the {} tokens asked for are more than {label} serves ({} tokens)",
                    num(req as f64),
                    num(tier.max_context_tokens as f64)
                ));
            }
            let c = breached(ask, "requested_context_tokens").map(|e| {
                compare(
                    "context_tokens",
                    "tokens",
                    e.threshold,
                    tier.max_context_tokens as f64,
                    false,
                )
            });
            if let Some(c) = &c
                && !better(c)
            {
                return Err(format!(
                    "{label} serves at most {} tokens of context, no more than the {} supported here",
                    num(c.predicted_cloud),
                    num(c.measured_local)
                ));
            }
            let benefit = format!(
                "the full context (up to {} tokens on {label}), at an estimated ~{} ms of model time per run",
                num(tier.max_context_tokens as f64),
                num(predicted_mean_ms.round())
            );
            (c, benefit)
        }
        Category::Concurrency => {
            let demand = inp
                .state
                .active_sessions
                .as_ref()
                .map_or(1.0, |s| s.value.max(1.0));
            if demand > f64::from(tier.max_concurrent_sessions) {
                return Err(format!(
                    "{} sessions are active, more than the {} {label} serves at once",
                    num(demand),
                    tier.max_concurrent_sessions
                ));
            }
            let c = match (
                breached(ask, "queue_wait_ms_p95"),
                breached(ask, "active_sessions_median"),
            ) {
                (Some(q), _) => compare("queue_wait_ms_p95", "ms", q.value, 0.0, true),
                (None, Some(a)) => compare(
                    "concurrent_sessions",
                    "sessions",
                    a.threshold,
                    f64::from(tier.max_concurrent_sessions),
                    false,
                ),
                (None, None) => {
                    return Err("no queue wait or session count was measured".to_owned());
                }
            };
            if !better(&c) {
                return Err(format!(
                    "{label} serves {} sessions at once, no more than the {} recommended here",
                    num(c.predicted_cloud),
                    num(c.measured_local)
                ));
            }
            let benefit = format!(
                "up to {} parallel sessions on {label} without the local queue (p95 queue wait measured here: {})",
                tier.max_concurrent_sessions,
                match &inp.state.queue_wait_p95 {
                    Some(q) => format!("{} ms", num(q.value.round())),
                    None => "not measured".to_owned(),
                }
            );
            (Some(c), benefit)
        }
        Category::ModelFit => (
            None,
            format!(
                "running {} without the local VRAM limit, at an estimated ~{} ms of model time per run on {label}",
                ask.scope,
                num(predicted_mean_ms.round())
            ),
        ),
        Category::Reliability => (
            None,
            format!(
                "a stronger model on {label}, at an estimated ~{} ms of model time per run (fewer validation retries are likely but cannot be predicted from local data)",
                num(predicted_mean_ms.round())
            ),
        ),
    };
    // Rounded to micro-dollars: the figure is an estimate, and the log stays readable.
    let cost = (o.tokens_in * tier.usd_per_million_input_tokens
        + o.tokens_out * tier.usd_per_million_output_tokens)
        .round()
        / 1e6;
    let assumptions = format!(
        "{} input and {} output tokens per run ({}), {} output tokens/s and {} ms to the first token on {label}, and list prices of {} and {} per million input and output tokens (cloud tier table {}); these figures are estimates, not measurements",
        num(o.tokens_in),
        num(o.tokens_out),
        o.source,
        num(tier.output_tokens_per_s),
        num(tier.first_token_ms),
        usd(tier.usd_per_million_input_tokens),
        usd(tier.usd_per_million_output_tokens),
        inp.tiers.version
    );
    let cost_text = format!("{} per run (an estimate assuming {assumptions})", usd(cost));
    let est = CloudEstimate {
        tier: tier.id.clone(),
        reason: ask.reason.to_owned(),
        predicted_improvement: benefit.clone(),
        predicted_cost: format!(
            "{} per run, {} per 1,000 runs (estimate)",
            usd(cost),
            usd(cost * 1000.0)
        ),
        cost_per_run_usd: cost,
        assumptions,
        tier_table_version: inp.tiers.version.clone(),
        comparison,
        tier_max_context_tokens: Some(tier.max_context_tokens),
        tier_max_concurrent_sessions: Some(tier.max_concurrent_sessions),
    };
    Ok((est, benefit, cost_text))
}

/// The suggestion for `ask`. Krako Cloud is added as option (2) when the ladder allows it
/// (or `insisted`: the user asked for the same tier) and its estimate holds up; when the
/// ladder allows it but the estimate does not, `cloud_withheld` and the message say why.
pub(crate) fn build(inp: Inputs<'_>, ask: &Ask<'_>, ladder: &Ladder, insisted: bool) -> Suggestion {
    let next = ladder.next_local(ask.category);
    let local_option = SuggestionOption {
        id: next.1.to_owned(),
        kind: OptionKind::Local,
        label: format!("Try {}", local_label(next.1)),
        estimate: None,
        action_ready: None,
        to_do_first: Vec::new(),
    };
    let mut options = vec![local_option];
    let mut ladder_step = next.0;
    let mut cloud_withheld = None;
    let local_line = format!(
        "Local execution hit a limit: {}. You can:\n(1) try {}",
        ask.reason,
        local_label(next.1)
    );
    let open = insisted || ladder.cloud_open();
    let offer = match inp.tiers.tier_for(ask.category) {
        Some(tier) if open => Some(estimate(inp, ask, tier).map(|e| (tier, e))),
        None if open => Some(Err(
            "the cloud tier table names no tier for this category".to_owned()
        )),
        _ => None,
    };
    let message = match offer {
        Some(Ok((tier, (est, benefit, cost_text)))) => {
            let (ready, todo) = readiness(inp, ask.ts_ms);
            options.push(SuggestionOption {
                id: CLOUD_OPTION.to_owned(),
                kind: OptionKind::Cloud,
                label: format!("Upgrade to {} (optional)", tier.label),
                estimate: Some(est),
                action_ready: Some(ready),
                to_do_first: todo,
            });
            ladder_step = CLOUD_STEP;
            format!("{local_line}\n(2) upgrade to Krako Cloud for {benefit} at ~{cost_text}.")
        }
        Some(Err(why)) => {
            let text = format!("Krako Cloud would not help here: {why}");
            let message = format!("{local_line}.\n{text}.");
            cloud_withheld = Some(text);
            message
        }
        None => format!("{local_line}."),
    };
    Suggestion {
        ts_ms: ask.ts_ms,
        suggestion_id: format!("s-{}-{}", ask.seq, ask.category.as_str()),
        firing_id: ask.firing_id.to_owned(),
        category: ask.category,
        scope: ask.scope.to_owned(),
        session_id: ask.session_id.map(str::to_owned),
        ladder_step,
        options,
        message,
        thresholds_version: inp.thresholds.version().to_owned(),
        thresholds_fingerprint: Some(inp.thresholds.fingerprint()),
        cloud_withheld,
        in_answer_to: None,
    }
}
