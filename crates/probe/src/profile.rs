//! The LocalCapabilityProfile and the fit check: pure functions of a snapshot, the known
//! models and the profile constants. See the crate documentation for the formulas.

use std::collections::BTreeMap;

use kora_model::{
    ContextRequest, Derived, Event, FitOutcome, FitVerdict, HardwareSnapshot, LoadOutcome,
    LocalCapabilityProfile, ModelLoad, ModelProfile, ProfileConstants, Record,
};
use serde::{Deserialize, Serialize};

/// Bytes in one MB (MiB), the unit of every memory figure.
const MB: f64 = 1_048_576.0;

/// What the service knows of one model, folded from its `model_load` and `context_request`
/// records in log order (the latest given value of each field wins).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CatalogEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_required_vram_mb: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params_b: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_bytes_per_token: Option<f64>,
    /// The outcome of the latest load; absent when only context requests were seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_load_ok: Option<bool>,
    /// The runtime's own figure from the latest context request that carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_supported_context_tokens: Option<u64>,
}

/// The known models, by id (a `BTreeMap`: iteration order is the id order, so profiles are
/// deterministic).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelCatalog {
    pub models: BTreeMap<String, CatalogEntry>,
}

fn usable_number(v: Option<f64>) -> Option<f64> {
    v.filter(|x| x.is_finite() && *x >= 0.0)
}

impl ModelCatalog {
    pub fn new() -> ModelCatalog {
        ModelCatalog::default()
    }

    /// Folds a `model_load`. Returns whether the catalog changed (the profile is then due).
    pub fn observe_load(&mut self, load: &ModelLoad) -> bool {
        let e = self.models.entry(load.model_id.clone()).or_default();
        let before = e.clone();
        if let Some(v) = usable_number(Some(load.model_required_vram_mb)) {
            e.model_required_vram_mb = Some(v);
        }
        if let Some(v) = usable_number(load.params_b) {
            e.params_b = Some(v);
        }
        if let Some(q) = &load.quantization {
            e.quantization = Some(q.clone());
        }
        if let Some(v) = load
            .kv_cache_bytes_per_token
            .filter(|x| x.is_finite() && *x > 0.0)
        {
            e.kv_cache_bytes_per_token = Some(v);
        }
        e.last_load_ok = Some(load.outcome == LoadOutcome::Ok);
        *e != before
    }

    /// Folds a `context_request`. Returns whether the catalog changed.
    pub fn observe_context(&mut self, req: &ContextRequest) -> bool {
        let mut changed = !self.models.contains_key(&req.model_id);
        let e = self.models.entry(req.model_id.clone()).or_default();
        if let Some(n) = req.local_supported_context_tokens
            && e.local_supported_context_tokens != Some(n)
        {
            e.local_supported_context_tokens = Some(n);
            changed = true;
        }
        changed
    }

    /// Folds any event; events other than loads and context requests change nothing.
    pub fn observe_event(&mut self, event: &Event) -> bool {
        match event {
            Event::ModelLoad(l) => self.observe_load(l),
            Event::ContextRequest(c) => self.observe_context(c),
            _ => false,
        }
    }

    /// Folds any log record; records other than loads and context requests change nothing.
    pub fn observe_record(&mut self, record: &Record) -> bool {
        match record {
            Record::ModelLoad(l) => self.observe_load(l),
            Record::ContextRequest(c) => self.observe_context(c),
            _ => false,
        }
    }

    /// The largest model whose latest load succeeded: `(model_id, model_required_vram_mb)`.
    /// Ties go to the smallest id.
    pub fn largest_loaded(&self) -> Option<(&str, f64)> {
        let mut best: Option<(&str, f64)> = None;
        for (id, e) in &self.models {
            if e.last_load_ok != Some(true) {
                continue;
            }
            if let Some(v) = e.model_required_vram_mb
                && best.is_none_or(|(_, b)| v > b)
            {
                best = Some((id, v));
            }
        }
        best
    }
}

/// A number as the `from` strings print it: whole numbers without a fraction, others with
/// at most two decimals.
pub fn fmt_num(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        let s = format!("{v:.2}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_owned()
    }
}

fn known(value: f64, from: String) -> Derived {
    Derived {
        value: Some(value),
        unknown: None,
        from,
    }
}

fn unknown(reason: impl Into<String>, from: impl Into<String>) -> Derived {
    Derived {
        value: None,
        unknown: Some(reason.into()),
        from: from.into(),
    }
}

/// Checks the constants the formulas divide by or subtract; `Some(reason)` when one is unusable.
fn constants_problem(c: &ProfileConstants) -> Option<String> {
    let mut bad = Vec::new();
    let nn = |v: f64| v.is_finite() && v >= 0.0;
    if !nn(c.vram_headroom_mb) {
        bad.push(format!("vram_headroom_mb {}", c.vram_headroom_mb));
    }
    if !nn(c.ram_headroom_mb) {
        bad.push(format!("ram_headroom_mb {}", c.ram_headroom_mb));
    }
    if !(c.default_kv_cache_bytes_per_token.is_finite() && c.default_kv_cache_bytes_per_token > 0.0)
    {
        bad.push(format!(
            "default_kv_cache_bytes_per_token {}",
            c.default_kv_cache_bytes_per_token
        ));
    }
    if !(c.cores_per_session.is_finite() && c.cores_per_session > 0.0) {
        bad.push(format!("cores_per_session {}", c.cores_per_session));
    }
    if !(c.cpu_busy_pct.is_finite() && (0.0..=100.0).contains(&c.cpu_busy_pct)) {
        bad.push(format!("cpu_busy_pct {}", c.cpu_busy_pct));
    }
    (!bad.is_empty()).then(|| format!("unusable profile constants: {}", bad.join(", ")))
}

/// The memory a model and its KV cache can use: the best GPU's VRAM, or RAM on a CPU-only
/// machine.
#[derive(Debug, Clone)]
struct Pool {
    /// `max(0, free − headroom)` in MB.
    usable_mb: f64,
    /// How `usable_mb` was obtained, with numbers.
    explain: String,
}

/// The GPUs that were read: `(index, free_mb, usable_mb)`, and the unreadable ones' words.
fn gpu_readings(s: &HardwareSnapshot, headroom: f64) -> (Vec<(u32, f64, f64)>, Vec<String>) {
    let mut read = Vec::new();
    let mut unreadable = Vec::new();
    for g in &s.gpus {
        match usable_number(g.vram_free_mb) {
            Some(free) => read.push((g.index, free, (free - headroom).max(0.0))),
            None => unreadable.push(format!(
                "gpu{} unreadable ({})",
                g.index,
                g.unavailable.as_deref().unwrap_or("no reading")
            )),
        }
    }
    (read, unreadable)
}

/// Why there is no VRAM figure at all.
fn no_vram_reason(s: &HardwareSnapshot, unreadable: &[String]) -> String {
    if let Some(w) = &s.gpu_unavailable {
        w.clone()
    } else if unreadable.is_empty() {
        "no GPU readings".to_owned()
    } else {
        format!("no GPU could be read: {}", unreadable.join("; "))
    }
}

/// The GPU with the most usable VRAM (ties: the lowest index).
fn best_gpu(s: &HardwareSnapshot, c: &ProfileConstants) -> Result<Pool, String> {
    let (read, unreadable) = gpu_readings(s, c.vram_headroom_mb);
    let mut best: Option<(u32, f64, f64)> = None;
    for r in &read {
        if best.is_none_or(|b| r.2 > b.2) {
            best = Some(*r);
        }
    }
    let Some((index, free, usable)) = best else {
        return Err(no_vram_reason(s, &unreadable));
    };
    let mut explain = format!(
        "usable = max(0, gpu{index} vram_free_mb {} - vram_headroom_mb {}) = {} (the GPU with the most)",
        fmt_num(free),
        fmt_num(c.vram_headroom_mb),
        fmt_num(usable)
    );
    if !unreadable.is_empty() {
        explain.push_str(&format!("; {}", unreadable.join("; ")));
    }
    Ok(Pool {
        usable_mb: usable,
        explain,
    })
}

/// The best GPU, or RAM on a CPU-only machine.
fn memory_pool(s: &HardwareSnapshot, c: &ProfileConstants) -> Result<Pool, String> {
    if !s.cpu_only {
        return best_gpu(s, c);
    }
    let cpu_only = s
        .gpu_unavailable
        .clone()
        .unwrap_or_else(|| "no NVIDIA GPU".to_owned());
    let Some(free) = usable_number(s.ram_free_mb) else {
        let why = s
            .unavailable
            .get("ram_free_mb")
            .map_or("no reading", String::as_str);
        return Err(format!(
            "CPU-only ({cpu_only}) and ram_free_mb is unavailable: {why}"
        ));
    };
    let usable = (free - c.ram_headroom_mb).max(0.0);
    Ok(Pool {
        usable_mb: usable,
        explain: format!(
            "usable = max(0, ram_free_mb {} - ram_headroom_mb {}) = {} (CPU-only: {cpu_only})",
            fmt_num(free),
            fmt_num(c.ram_headroom_mb),
            fmt_num(usable)
        ),
    })
}

/// `min(cap, floor(max(0, usable − model_mb) × 1048576 / kv_bytes))`.
fn context_tokens(usable_mb: f64, model_mb: f64, kv_bytes: f64, cap: u64) -> f64 {
    let left = (usable_mb - model_mb).max(0.0);
    let tokens = (left * MB / kv_bytes).floor();
    tokens.min(cap as f64)
}

const VRAM_FORMULA: &str =
    "max over GPUs of floor(max(0, vram_free_mb - vram_headroom_mb)) (a model must fit on one GPU)";
const CONTEXT_FORMULA: &str = "min(max_context_tokens_cap, floor(max(0, usable - largest_loaded_model_mb) * 1048576 / default_kv_cache_bytes_per_token))";
const CONCURRENCY_FORMULA: &str = "max(1, floor(cpu_cores / cores_per_session)), scaled by (100 - cpu_load_p95) / (100 - cpu_busy_pct) when cpu_load_p95 > cpu_busy_pct";
const MODEL_CONTEXT_FORMULA: &str = "min(max_context_tokens_cap, floor(max(0, usable - model_required_vram_mb) * 1048576 / kv_cache_bytes_per_token))";

/// Computes the LocalCapabilityProfile. Pure and deterministic: the same inputs give the same
/// profile, byte for byte. The formulas are in the crate documentation.
pub fn compute_profile(
    snapshot: &HardwareSnapshot,
    models: &ModelCatalog,
    constants: &ProfileConstants,
    thresholds_version: &str,
) -> LocalCapabilityProfile {
    if let Some(bad) = constants_problem(constants) {
        return LocalCapabilityProfile {
            max_recommended_model_vram_mb: unknown(bad.clone(), VRAM_FORMULA),
            max_recommended_context_tokens: unknown(bad.clone(), CONTEXT_FORMULA),
            max_recommended_concurrency: unknown(bad.clone(), CONCURRENCY_FORMULA),
            models: models
                .models
                .iter()
                .map(|(id, e)| {
                    (
                        id.clone(),
                        model_profile(id, e, unknown(bad.clone(), MODEL_CONTEXT_FORMULA)),
                    )
                })
                .collect(),
            thresholds_version: thresholds_version.to_owned(),
        };
    }
    let c = constants;
    LocalCapabilityProfile {
        max_recommended_model_vram_mb: max_model_vram(snapshot, c),
        max_recommended_context_tokens: max_context(snapshot, models, c),
        max_recommended_concurrency: max_concurrency(snapshot, c),
        models: models
            .models
            .iter()
            .map(|(id, e)| {
                let ctx = model_context(snapshot, e, c);
                (id.clone(), model_profile(id, e, ctx))
            })
            .collect(),
        thresholds_version: thresholds_version.to_owned(),
    }
}

fn model_profile(id: &str, e: &CatalogEntry, supported: Derived) -> ModelProfile {
    ModelProfile {
        model_id: id.to_owned(),
        model_required_vram_mb: e.model_required_vram_mb,
        params_b: e.params_b,
        quantization: e.quantization.clone(),
        kv_cache_bytes_per_token: e.kv_cache_bytes_per_token,
        supported_context_tokens: supported,
    }
}

fn max_model_vram(s: &HardwareSnapshot, c: &ProfileConstants) -> Derived {
    let (read, unreadable) = gpu_readings(s, c.vram_headroom_mb);
    if read.is_empty() {
        return unknown(no_vram_reason(s, &unreadable), VRAM_FORMULA);
    }
    let mut parts: Vec<String> = read
        .iter()
        .map(|(i, free, usable)| {
            format!(
                "gpu{i}: floor(max(0, {} - {})) = {}",
                fmt_num(*free),
                fmt_num(c.vram_headroom_mb),
                fmt_num(usable.floor())
            )
        })
        .collect();
    parts.extend(unreadable);
    let best = read.iter().map(|r| r.2.floor()).fold(0.0, f64::max);
    known(
        best,
        format!("{VRAM_FORMULA} = {}; {}", fmt_num(best), parts.join("; ")),
    )
}

fn max_context(s: &HardwareSnapshot, m: &ModelCatalog, c: &ProfileConstants) -> Derived {
    let pool = match memory_pool(s, c) {
        Ok(p) => p,
        Err(why) => return unknown(why, CONTEXT_FORMULA),
    };
    let (model_mb, model_words) = match m.largest_loaded() {
        Some((id, mb)) => (
            mb,
            format!(
                "largest_loaded_model_mb = {} ({id}, the largest model whose latest load succeeded)",
                fmt_num(mb)
            ),
        ),
        None => (
            0.0,
            "largest_loaded_model_mb = 0 (no model has loaded successfully yet)".to_owned(),
        ),
    };
    let kv = c.default_kv_cache_bytes_per_token;
    let v = context_tokens(pool.usable_mb, model_mb, kv, c.max_context_tokens_cap);
    known(
        v,
        format!(
            "{CONTEXT_FORMULA} = min({}, floor(max(0, {} - {}) * 1048576 / {})) = {}; {}; {}",
            c.max_context_tokens_cap,
            fmt_num(pool.usable_mb),
            fmt_num(model_mb),
            fmt_num(kv),
            fmt_num(v),
            pool.explain,
            model_words
        ),
    )
}

fn max_concurrency(s: &HardwareSnapshot, c: &ProfileConstants) -> Derived {
    let Some(cores) = s.cpu_cores.filter(|n| *n > 0) else {
        let why = s
            .unavailable
            .get("cpu_cores")
            .map_or("no reading", String::as_str);
        return unknown(format!("cpu_cores unavailable: {why}"), CONCURRENCY_FORMULA);
    };
    let cores = f64::from(cores);
    let base = (cores / c.cores_per_session).floor();
    let mut from = format!(
        "{CONCURRENCY_FORMULA}; floor({} / {}) = {}",
        fmt_num(cores),
        fmt_num(c.cores_per_session),
        fmt_num(base)
    );
    let scaled = match s.cpu_load_p95.filter(|p| p.is_finite()) {
        None => {
            from.push_str("; cpu_load_p95 not measured yet, so not scaled for load");
            base
        }
        Some(p) if p <= c.cpu_busy_pct || c.cpu_busy_pct >= 100.0 => {
            from.push_str(&format!(
                "; cpu_load_p95 {} <= cpu_busy_pct {}: not scaled",
                fmt_num(p),
                fmt_num(c.cpu_busy_pct)
            ));
            base
        }
        Some(p) => {
            let p = p.min(100.0);
            let v = (base * (100.0 - p) / (100.0 - c.cpu_busy_pct)).floor();
            from.push_str(&format!(
                "; cpu_load_p95 {} > cpu_busy_pct {}: floor({} * (100 - {}) / (100 - {})) = {}",
                fmt_num(p),
                fmt_num(c.cpu_busy_pct),
                fmt_num(base),
                fmt_num(p),
                fmt_num(c.cpu_busy_pct),
                fmt_num(v)
            ));
            v
        }
    };
    let v = scaled.max(1.0);
    from.push_str(&format!("; max(1, {}) = {}", fmt_num(scaled), fmt_num(v)));
    known(v, from)
}

fn model_context(s: &HardwareSnapshot, e: &CatalogEntry, c: &ProfileConstants) -> Derived {
    if let Some(n) = e.local_supported_context_tokens {
        return known(
            n as f64,
            format!(
                "local_supported_context_tokens {n} reported by the runtime in its latest context_request (takes precedence over {MODEL_CONTEXT_FORMULA})"
            ),
        );
    }
    let Some(req) = e.model_required_vram_mb else {
        return unknown(
            "no model_load seen for this model: its required VRAM is unknown",
            MODEL_CONTEXT_FORMULA,
        );
    };
    let pool = match memory_pool(s, c) {
        Ok(p) => p,
        Err(why) => return unknown(why, MODEL_CONTEXT_FORMULA),
    };
    let (kv, kv_words) = match e.kv_cache_bytes_per_token {
        Some(k) => (k, "the model's own"),
        None => (
            c.default_kv_cache_bytes_per_token,
            "default_kv_cache_bytes_per_token",
        ),
    };
    let v = context_tokens(pool.usable_mb, req, kv, c.max_context_tokens_cap);
    known(
        v,
        format!(
            "{MODEL_CONTEXT_FORMULA} = min({}, floor(max(0, {} - {}) * 1048576 / {})) = {}; {}; kv_cache_bytes_per_token {} ({kv_words})",
            c.max_context_tokens_cap,
            fmt_num(pool.usable_mb),
            fmt_num(req),
            fmt_num(kv),
            fmt_num(v),
            pool.explain,
            fmt_num(kv)
        ),
    )
}

/// Does a model of `model_required_vram_mb` (plus the KV cache of `context_tokens` at the
/// default bytes per token) fit this machine now? Fits when it fits on one GPU's usable VRAM
/// (`max(0, vram_free_mb − vram_headroom_mb)`), or, on a CPU-only machine, in usable RAM
/// (`max(0, ram_free_mb − ram_headroom_mb)`). Does not fit only when every GPU was read and
/// none has room; when a GPU could not be read and the others have no room, or RAM is
/// unavailable, the answer is unknown with the reason.
pub fn fit_check(
    snapshot: &HardwareSnapshot,
    model_required_vram_mb: f64,
    context_tokens: Option<u64>,
    constants: &ProfileConstants,
) -> FitVerdict {
    let c = constants;
    let verdict = |verdict, reason: String, device, arithmetic| FitVerdict {
        verdict,
        reason,
        device,
        arithmetic,
    };
    if !(model_required_vram_mb.is_finite() && model_required_vram_mb >= 0.0) {
        return verdict(
            FitOutcome::Unknown,
            format!(
                "model_required_vram_mb must be a finite, non-negative number of MB, got {model_required_vram_mb}"
            ),
            None,
            Vec::new(),
        );
    }
    if let Some(bad) = constants_problem(c) {
        return verdict(FitOutcome::Unknown, bad, None, Vec::new());
    }
    let mut arithmetic = Vec::new();
    let need = match context_tokens {
        None => {
            arithmetic.push(format!(
                "need = model_required_vram_mb {} MB (no context given: KV cache not counted)",
                fmt_num(model_required_vram_mb)
            ));
            model_required_vram_mb
        }
        Some(t) => {
            let kv_mb = t as f64 * c.default_kv_cache_bytes_per_token / MB;
            let need = model_required_vram_mb + kv_mb;
            arithmetic.push(format!(
                "need = model_required_vram_mb {} + {t} tokens * {} B / 1048576 = {} + {} = {} MB",
                fmt_num(model_required_vram_mb),
                fmt_num(c.default_kv_cache_bytes_per_token),
                fmt_num(model_required_vram_mb),
                fmt_num(kv_mb),
                fmt_num(need)
            ));
            need
        }
    };

    if snapshot.cpu_only {
        let pool = match memory_pool(snapshot, c) {
            Ok(p) => p,
            Err(why) => return verdict(FitOutcome::Unknown, why, None, arithmetic),
        };
        arithmetic.push(pool.explain.clone());
        let fits = need <= pool.usable_mb;
        arithmetic.push(format!(
            "{} {} {}: {}",
            fmt_num(need),
            if fits { "<=" } else { ">" },
            fmt_num(pool.usable_mb),
            if fits {
                "fits in RAM"
            } else {
                "does not fit in RAM"
            }
        ));
        let (outcome, reason) = if fits {
            (
                FitOutcome::Fits,
                format!(
                    "fits in RAM (CPU-only): needs {} MB, {} MB usable",
                    fmt_num(need),
                    fmt_num(pool.usable_mb)
                ),
            )
        } else {
            (
                FitOutcome::DoesNotFit,
                format!(
                    "does not fit in RAM (CPU-only): needs {} MB, {} MB usable",
                    fmt_num(need),
                    fmt_num(pool.usable_mb)
                ),
            )
        };
        return verdict(outcome, reason, None, arithmetic);
    }

    let (read, unreadable) = gpu_readings(snapshot, c.vram_headroom_mb);
    if read.is_empty() {
        let why = no_vram_reason(snapshot, &unreadable);
        return verdict(FitOutcome::Unknown, why, None, arithmetic);
    }
    let mut fit_on: Option<(u32, f64)> = None;
    let mut most: (u32, f64) = (read[0].0, read[0].2);
    for (index, free, usable) in &read {
        let fits = need <= *usable;
        let mut line = format!(
            "gpu{index}: usable = max(0, vram_free_mb {} - vram_headroom_mb {}) = {}; {} {} {}: {}",
            fmt_num(*free),
            fmt_num(c.vram_headroom_mb),
            fmt_num(*usable),
            fmt_num(need),
            if fits { "<=" } else { ">" },
            fmt_num(*usable),
            if fits { "fits" } else { "does not fit" }
        );
        if !fits
            && let Some(total) = snapshot
                .gpus
                .iter()
                .find(|g| g.index == *index)
                .and_then(|g| usable_number(g.vram_total_mb))
            && need > total - c.vram_headroom_mb
        {
            line.push_str(&format!(
                " (nor on this GPU when idle: vram_total_mb {} - {} = {})",
                fmt_num(total),
                fmt_num(c.vram_headroom_mb),
                fmt_num(total - c.vram_headroom_mb)
            ));
        }
        arithmetic.push(line);
        if fits && fit_on.is_none_or(|(_, u)| *usable > u) {
            fit_on = Some((*index, *usable));
        }
        if *usable > most.1 {
            most = (*index, *usable);
        }
    }
    arithmetic.extend(unreadable.iter().cloned());
    if let Some((index, usable)) = fit_on {
        return verdict(
            FitOutcome::Fits,
            format!(
                "fits on gpu{index}: needs {} MB, {} MB usable",
                fmt_num(need),
                fmt_num(usable)
            ),
            Some(index),
            arithmetic,
        );
    }
    if !unreadable.is_empty() {
        return verdict(
            FitOutcome::Unknown,
            format!(
                "does not fit on the GPUs that were read (needs {} MB, at most {} MB usable on gpu{}); {}",
                fmt_num(need),
                fmt_num(most.1),
                most.0,
                unreadable.join("; ")
            ),
            None,
            arithmetic,
        );
    }
    verdict(
        FitOutcome::DoesNotFit,
        format!(
            "does not fit: needs {} MB, at most {} MB usable (gpu{}); a model must fit on one GPU",
            fmt_num(need),
            fmt_num(most.1),
            most.0
        ),
        None,
        arithmetic,
    )
}
