//! The escalation ladder, cloud estimates, the readiness check and the message.

use kora_model::{Category, CloudEstimate, Firing, OptionKind, Suggestion, SuggestionOption};
use kora_window::{RunPoint, quantile};

use crate::engine::{Candidate, Engine};
use crate::text::{num, usd};
use crate::tiers::CloudTier;

/// The ladder step of Krako Cloud.
pub const CLOUD_STEP: u8 = 4;
/// The option id of Krako Cloud.
pub const CLOUD_OPTION: &str = "cloud";

/// The local steps that apply to a category, in the order they are offered: (ladder step,
/// option id). See the crate documentation for why.
pub fn local_steps(category: Category) -> &'static [(u8, &'static str)] {
    match category {
        Category::ModelFit => &[(1, "smaller_model"), (3, "lower_context")],
        Category::Context => &[(3, "lower_context")],
        Category::Latency => &[(2, "deterministic_filtering"), (1, "smaller_model")],
        Category::Concurrency => &[(3, "lower_context"), (1, "smaller_model")],
        Category::Reliability => &[(1, "stronger_local_model"), (2, "deterministic_filtering")],
    }
}

/// The ladder step of a local option id.
pub fn step_of_option(id: &str) -> Option<u8> {
    match id {
        "smaller_model" | "stronger_local_model" => Some(1),
        "deterministic_filtering" => Some(2),
        "lower_context" => Some(3),
        CLOUD_OPTION => Some(CLOUD_STEP),
        _ => None,
    }
}

/// What a local option asks the user to try (the `{local_mitigation}` of the message).
pub fn local_label(id: &str) -> &'static str {
    match id {
        "smaller_model" => "a smaller or quantized local model",
        "stronger_local_model" => {
            "a stronger local model (larger or less quantized) that still fits this machine"
        }
        "deterministic_filtering" => "more deterministic filtering before the model stage",
        "lower_context" => "a lower context mode (a shorter context or summarization)",
        _ => "a local mitigation",
    }
}

/// Readiness of the cloud action at `ts_ms`: (ready, what to do first).
pub(crate) fn readiness(engine: &Engine, ts_ms: i64) -> (bool, Vec<String>) {
    let max_age = engine.thresholds.readiness_max_age_ms();
    match &engine.state.readiness {
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

struct Observed {
    tokens_in: f64,
    tokens_out: f64,
    model_latency_p95: Option<f64>,
    source: String,
}

fn observe(engine: &Engine, firing: &Firing, c: &Candidate) -> Observed {
    let tiers = &engine.tiers;
    let runs: Vec<&RunPoint> = if firing.scope == "host" {
        engine.state.runs.all_last_runs()
    } else {
        engine.state.runs.last_runs(&firing.scope)
    };
    let whose = if firing.scope == "host" {
        "of each model".to_owned()
    } else {
        format!("of {}", firing.scope)
    };
    let mut o = if runs.is_empty() {
        Observed {
            tokens_in: tiers.default_tokens_in as f64,
            tokens_out: tiers.default_tokens_out as f64,
            model_latency_p95: None,
            source: format!("the tier table's defaults, as no local run {whose} is recorded"),
        }
    } else {
        let n = runs.len() as f64;
        let tin: f64 = runs
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
        let lat: Vec<f64> = runs.iter().map(|p| p.model_latency_ms).collect();
        Observed {
            tokens_in: tin.round(),
            tokens_out: tout.round(),
            model_latency_p95: quantile(&lat, 0.95),
            source: format!("the average of the last {} local runs {whose}", runs.len()),
        }
    };
    if let Some(req) = c.requested_context
        && firing.category == Category::Context
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

fn estimate(
    engine: &Engine,
    firing: &Firing,
    c: &Candidate,
    tier: &CloudTier,
) -> (CloudEstimate, String, String) {
    let o = observe(engine, firing, c);
    let predicted_ms = tier.first_token_ms + o.tokens_out / tier.output_tokens_per_s * 1000.0;
    // Rounded to micro-dollars: the figure is an estimate, and the log stays readable.
    let cost = (o.tokens_in * tier.usd_per_million_input_tokens
        + o.tokens_out * tier.usd_per_million_output_tokens)
        .round()
        / 1e6;
    let label = &tier.label;
    let measured = |v: Option<f64>| match v {
        Some(v) => format!("{} ms", num(v.round())),
        None => "not measured".to_owned(),
    };
    let benefit = match firing.category {
        Category::Latency => format!(
            "an estimated ~{} ms of model time per run on {label} (p95 measured here: {})",
            num(predicted_ms.round()),
            measured(o.model_latency_p95)
        ),
        Category::ModelFit => format!(
            "running {} without the local VRAM limit, at an estimated ~{} ms of model time per run on {label}",
            firing.scope,
            num(predicted_ms.round())
        ),
        Category::Context => format!(
            "the full context (up to {} tokens on {label}), at an estimated ~{} ms of model time per run",
            num(tier.max_context_tokens as f64),
            num(predicted_ms.round())
        ),
        Category::Concurrency => format!(
            "up to {} parallel sessions on {label} without the local queue (p95 queue wait measured here: {})",
            tier.max_concurrent_sessions,
            measured(engine.state.queue_wait_p95.as_ref().map(|s| s.value))
        ),
        Category::Reliability => format!(
            "a stronger model on {label}, at an estimated ~{} ms of model time per run (fewer validation retries are likely but cannot be predicted from local data)",
            num(predicted_ms.round())
        ),
    };
    let assumptions = format!(
        "{} input and {} output tokens per run ({}), {} output tokens/s and {} ms to the first token on {label}, and list prices of {} and {} per million input and output tokens (cloud tier table {}); these figures are estimates, not measurements",
        num(o.tokens_in),
        num(o.tokens_out),
        o.source,
        num(tier.output_tokens_per_s),
        num(tier.first_token_ms),
        usd(tier.usd_per_million_input_tokens),
        usd(tier.usd_per_million_output_tokens),
        engine.tiers.version
    );
    let cost_text = format!("{} per run (an estimate assuming {assumptions})", usd(cost));
    let est = CloudEstimate {
        tier: tier.id.clone(),
        reason: firing.reason.clone(),
        predicted_improvement: benefit.clone(),
        predicted_cost: format!(
            "{} per run, {} per 1,000 runs (estimate)",
            usd(cost),
            usd(cost * 1000.0)
        ),
        cost_per_run_usd: cost,
        assumptions,
        tier_table_version: engine.tiers.version.clone(),
    };
    (est, benefit, cost_text)
}

/// The suggestion for a firing that passed the anti-spam rules.
pub(crate) fn build(engine: &Engine, firing: &Firing, c: &Candidate) -> Suggestion {
    let ladder = engine
        .state
        .ladders
        .get(&firing.category)
        .and_then(|m| m.get(&firing.scope))
        .cloned()
        .unwrap_or_default();
    let steps = local_steps(firing.category);
    let next = steps
        .iter()
        .find(|(s, _)| !ladder.offered.contains(s))
        .or(steps.last())
        .copied()
        .unwrap_or((1, "smaller_model"));
    let tier = engine.tiers.tier_for(firing.category);
    let escalate =
        !ladder.offered.is_empty() && (ladder.fired_again || ladder.dismissed || ladder.insisted);
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
    let message = match tier.filter(|_| escalate) {
        Some(tier) => {
            let (est, benefit, cost_text) = estimate(engine, firing, c, tier);
            let (ready, todo) = readiness(engine, firing.ts_ms);
            options.push(SuggestionOption {
                id: CLOUD_OPTION.to_owned(),
                kind: OptionKind::Cloud,
                label: format!("Upgrade to {} (optional)", tier.label),
                estimate: Some(est),
                action_ready: Some(ready),
                to_do_first: todo,
            });
            ladder_step = CLOUD_STEP;
            format!(
                "Local execution hit a limit: {}. You can:\n(1) try {}\n(2) upgrade to Krako Cloud for {} at ~{}.",
                firing.reason,
                local_label(next.1),
                benefit,
                cost_text
            )
        }
        None => format!(
            "Local execution hit a limit: {}. You can:\n(1) try {}.",
            firing.reason,
            local_label(next.1)
        ),
    };
    Suggestion {
        ts_ms: firing.ts_ms,
        suggestion_id: format!("s-{}-{}", c.seq, firing.category.as_str()),
        firing_id: firing.firing_id.clone(),
        category: firing.category,
        scope: firing.scope.clone(),
        session_id: firing.session_id.clone(),
        ladder_step,
        options,
        message,
        thresholds_version: engine.thresholds.version().to_owned(),
    }
}
