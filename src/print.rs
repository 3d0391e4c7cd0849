//! What the commands print: the log table, the product metrics and the consent state. (The
//! capability profile and the fit check are rendered by `report`.)

use kora_model::ConsentState;
use kora_model::{LogEntry, ProductMetrics, Rate, Record};

/// A record time as RFC 3339 (UTC, milliseconds), or `-`.
fn time(ts_ms: Option<i64>) -> String {
    ts_ms
        .and_then(|t| u64::try_from(t).ok())
        .map(|t| {
            humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(t),
            )
            .to_string()
        })
        .unwrap_or_else(|| "-".into())
}

/// The log entries as a table, newest first.
pub fn print_table(entries: &[LogEntry]) {
    println!(
        "{:>10}  {:<24}  {:<16}  summary",
        "seq", "time (UTC)", "kind"
    );
    for e in entries {
        println!(
            "{:>10}  {:<24}  {:<16}  {}",
            e.seq,
            time(e.record.ts_ms()),
            e.record.kind().as_str(),
            summary(&e.record)
        );
    }
    if entries.is_empty() {
        println!("(no records)");
    }
}

/// One line about a record.
fn summary(r: &Record) -> String {
    match r {
        Record::Run(x) => format!(
            "{} run {} ({:?}): model {:.0} ms, total {:.0} ms, retries {}",
            x.model_id,
            x.run_id,
            x.substrate,
            x.model_latency_ms,
            x.total_latency_ms,
            x.validation_retry_count
        ),
        Record::ModelLoad(x) => format!(
            "{} needs {:.0} MB VRAM: {:?}",
            x.model_id, x.model_required_vram_mb, x.outcome
        ),
        Record::ContextRequest(x) => format!(
            "{} asks for {} context tokens",
            x.model_id, x.requested_context_tokens
        ),
        Record::ContextOom(x) => format!("{} ran out of memory for its context", x.model_id),
        Record::SessionStarted(x) => format!("session {} started", x.session_id),
        Record::SessionEnded(x) => format!("session {} ended", x.session_id),
        Record::Readiness(x) => format!(
            "plugin {} network {} auth {} credits {}",
            x.plugin_installed, x.network_available, x.authenticated, x.credits_available
        ),
        Record::Feedback(x) => format!("{:?} suggestion {}", x.action, x.suggestion_id),
        Record::Window(x) => format!(
            "{} {} {}: n={} p95={}",
            x.window_kind, x.scope, x.metric, x.count, x.p95
        ),
        Record::Firing(x) => format!(
            "{} fired for {}: {}",
            x.category.as_str(),
            x.scope,
            x.reason
        ),
        Record::Suggestion(x) => format!(
            "step {} for {} {}",
            x.ladder_step,
            x.category.as_str(),
            x.scope
        ),
        Record::Suppression(x) => format!("{} held back by {:?}", x.category.as_str(), x.rule),
        Record::MitigationOutcome(x) => {
            format!("{} on {}: {:?}", x.choice, x.scope, x.effect)
        }
        Record::Profile(_) => "capability profile recomputed".into(),
        Record::Consent(x) => format!(
            "export {} for {}",
            if x.enabled { "on" } else { "off" },
            x.scope
        ),
        Record::Export(x) => format!("{} bytes to {}", x.bytes, x.destination),
        Record::Checkpoint(x) => format!("engine state up to seq {}", x.up_to_seq),
    }
}

/// The product metrics, one per line.
pub fn print_metrics(m: &ProductMetrics) {
    let rate = |r: &Rate| match r.value {
        Some(x) => format!("{:.1}% ({} of {})", x * 100.0, r.numerator, r.denominator),
        None => "none yet".into(),
    };
    println!(
        "product metrics, range {} (they stay on this machine)",
        m.range
    );
    println!(
        "  upgrade_suggestion_count       {} ({} offered Krako Cloud)",
        m.upgrade_suggestion_count, m.cloud_offer_count
    );
    println!(
        "  suggestion_accept_rate         {}",
        rate(&m.suggestion_accept_rate)
    );
    println!(
        "  suggestion_dismiss_rate        {}",
        rate(&m.suggestion_dismiss_rate)
    );
    println!(
        "  local_mitigation_success_rate  {}",
        rate(&m.local_mitigation_success_rate)
    );
    println!("  top_trigger_categories");
    for c in &m.top_trigger_categories {
        println!("    {:<14} {}", c.category.as_str(), c.firings);
    }
    let tokens = |n: u64, without: u64| {
        if without == 0 {
            format!("{n} tokens")
        } else {
            format!("{n} tokens; {without} without token counts")
        }
    };
    println!(
        "  cloud runs (Krako Cloud)       {} ({})",
        m.cloud_run_count,
        tokens(m.cloud_run_tokens, m.cloud_runs_without_tokens)
    );
    for x in m.cloud_runs_by_model.iter().flatten() {
        println!(
            "    {:<28} {} ({})",
            x.model_id,
            x.runs,
            tokens(x.tokens, x.runs_without_tokens)
        );
    }
}

/// The consent state, the text the user is shown, and its history.
pub fn print_consent(c: &ConsentState) {
    println!(
        "export of aggregated statistics is {}",
        if c.export_enabled { "ON" } else { "OFF" }
    );
    println!("{}", c.text);
    for h in &c.history {
        println!(
            "  {} {} by {}",
            time(Some(h.ts_ms)),
            if h.enabled { "on" } else { "off" },
            h.actor
        );
    }
}
