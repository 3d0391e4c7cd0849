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
    /// The model whose load succeeded most recently: the one the runtime runs now, as far as
    /// the log can tell (there is no unload event). Concurrency is sized for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
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
        let mut changed = *e != before;
        if load.outcome == LoadOutcome::Ok && self.current.as_deref() != Some(&load.model_id) {
            self.current = Some(load.model_id.clone());
            changed = true;
        }
        changed
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

    /// The runtime's loaded models: those whose latest load succeeded and whose required
    /// memory is known, as `(model_id, model_required_vram_mb)`, largest first (ties: the
    /// smallest id first). There is no unload event, so a model stays here until a later load
    /// of it fails; the profile caps what it attributes to them at the memory actually in use.
    pub fn loaded(&self) -> Vec<(&str, f64)> {
        let mut out: Vec<(&str, f64)> = self
            .models
            .iter()
            .filter(|(_, e)| e.last_load_ok == Some(true))
            .filter_map(|(id, e)| e.model_required_vram_mb.map(|mb| (id.as_str(), mb)))
            .collect();
        // Stable: equal sizes keep the id order of the map.
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }

    /// The model loaded most recently, when its latest load succeeded and its size is known;
    /// else the largest loaded model.
    pub fn current_loaded(&self) -> Option<(&str, f64)> {
        self.current
            .as_deref()
            .and_then(|id| self.loaded().into_iter().find(|(m, _)| *m == id))
            .or_else(|| self.largest_loaded())
    }

    /// The largest model whose latest load succeeded: `(model_id, model_required_vram_mb)`.
    /// Ties go to the smallest id.
    pub fn largest_loaded(&self) -> Option<(&str, f64)> {
        self.loaded().first().copied()
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
    if c.session_context_tokens == 0 {
        bad.push("session_context_tokens 0".to_owned());
    }
    (!bad.is_empty()).then(|| format!("unusable profile constants: {}", bad.join(", ")))
}

/// The runtime's loaded models in words: `(their memory in all, the words)`.
fn loaded_words(models: &ModelCatalog) -> (f64, String) {
    let loaded = models.loaded();
    if loaded.is_empty() {
        return (
            0.0,
            "loaded = 0 (no model of the runtime has loaded successfully)".to_owned(),
        );
    }
    let total: f64 = loaded.iter().map(|(_, mb)| mb).sum();
    let names: Vec<String> = loaded
        .iter()
        .map(|(id, mb)| format!("{id} {}", fmt_num(*mb)))
        .collect();
    (
        total,
        format!(
            "loaded = {} (the runtime's models whose latest load succeeded: {})",
            fmt_num(total),
            names.join(", ")
        ),
    )
}

/// A memory pool a model and its KV cache can run from: one GPU, or RAM on a CPU-only machine.
#[derive(Debug, Clone)]
struct Pool {
    /// `gpu0`, or `RAM`.
    name: String,
    /// The GPU index (absent for RAM).
    device: Option<u32>,
    /// Free now beyond the headroom: `max(0, free − headroom)`.
    free_now_mb: f64,
    /// `max(0, total − reserved − headroom − other)`: what a model can use once the runtime
    /// unloads its own models.
    usable_mb: f64,
    /// `total − reserved − headroom`: the pool with nothing else running (absent without a
    /// total), and those words with the pool's name.
    idle_mb: Option<(f64, String)>,
    /// How `usable_mb` was obtained, with numbers.
    explain: String,
}

/// The memory of the machine as the formulas see it.
#[derive(Debug, Clone)]
struct Memory {
    /// The GPUs that were read, in index order; or the one RAM pool.
    pools: Vec<Pool>,
    /// The pool with the most usable memory (ties: the first).
    best: usize,
    /// The GPUs that could not be read, in words.
    unreadable: Vec<String>,
    /// The runtime's loaded models, in words.
    loaded: String,
    /// Where the runtime's models were counted, when several GPUs were read.
    attribution: Option<String>,
    /// True on a CPU-only machine (the pool is RAM).
    ram: bool,
}

impl Memory {
    fn best(&self) -> &Pool {
        // `best` indexes `pools`, which is never empty; the fallback is never taken.
        &self.pools[self.best.min(self.pools.len().saturating_sub(1))]
    }
}

/// One readable memory: total (when known), driver-reserved (when reported) and free, in MB.
struct Raw {
    name: String,
    device: Option<u32>,
    total: Option<f64>,
    reserved: Option<f64>,
    free: f64,
}

impl Raw {
    /// Memory in use by any process: `max(0, total − reserved − free)`; unknown without a total.
    fn used(&self) -> Option<f64> {
        self.total
            .map(|t| (t - self.reserved.unwrap_or(0.0) - self.free).max(0.0))
    }

    /// What the runtime's models are counted for here: `min(used, loaded)`.
    fn credit(&self, loaded_mb: f64) -> f64 {
        self.used().map_or(0.0, |u| u.min(loaded_mb))
    }

    /// `max(0, total − reserved − headroom − other)` with `other = used − credit`; without a
    /// total, `max(0, free − headroom)`.
    fn usable(&self, credit: f64, headroom: f64) -> f64 {
        match (self.total, self.used()) {
            (Some(t), Some(used)) => {
                (t - self.reserved.unwrap_or(0.0) - headroom - (used - credit)).max(0.0)
            }
            _ => (self.free - headroom).max(0.0),
        }
    }

    /// The pool, with `credit` MB of the runtime's models counted as reclaimable here.
    /// `elsewhere` says where they were counted instead (when `credit` is 0 because of it).
    fn pool(&self, credit: f64, loaded_mb: f64, headroom: f64, elsewhere: Option<&str>) -> Pool {
        let usable = self.usable(credit, headroom);
        let n = &self.name;
        let explain = match (self.total, self.used()) {
            (Some(t), Some(used)) => {
                // RAM has no driver-reserved part; a GPU's is shown even when not reported.
                let reserved = if self.device.is_some() {
                    format!(" - reserved {}", fmt_num(self.reserved.unwrap_or(0.0)))
                } else {
                    String::new()
                };
                let other = used - credit;
                let mut e = format!(
                    "{n}: usable = max(0, total {}{reserved} - headroom {} - other {}) = {}; used = total {}{reserved} - free {} = {}",
                    fmt_num(t),
                    fmt_num(headroom),
                    fmt_num(other),
                    fmt_num(usable),
                    fmt_num(t),
                    fmt_num(self.free),
                    fmt_num(used)
                );
                match elsewhere {
                    Some(home) => e.push_str(&format!(
                        "; other = used {} (the runtime's models are counted on {home})",
                        fmt_num(used)
                    )),
                    None if loaded_mb > 0.0 => e.push_str(&format!(
                        "; runtime's models = min(used {}, loaded {}) = {} (reclaimable); other = {} - {} = {}",
                        fmt_num(used),
                        fmt_num(loaded_mb),
                        fmt_num(credit),
                        fmt_num(used),
                        fmt_num(credit),
                        fmt_num(other)
                    )),
                    None => e.push_str(&format!(
                        "; other = used {} (no model of the runtime is loaded)",
                        fmt_num(used)
                    )),
                }
                if self.reserved.is_none() && self.device.is_some() {
                    e.push_str("; vram_reserved_mb not reported: counted as 0");
                }
                e
            }
            _ => format!(
                "{n}: usable = max(0, free {} - headroom {}) = {} (no total reported: memory in use unknown, nothing counted as reclaimable)",
                fmt_num(self.free),
                fmt_num(headroom),
                fmt_num(usable)
            ),
        };
        Pool {
            name: n.clone(),
            device: self.device,
            free_now_mb: (self.free - headroom).max(0.0),
            usable_mb: usable,
            idle_mb: self.total.map(|t| {
                let idle = (t - self.reserved.unwrap_or(0.0) - headroom).max(0.0);
                let words = if self.device.is_some() {
                    format!("{n} total - reserved - headroom = {}", fmt_num(idle))
                } else {
                    format!("{n} total - headroom = {}", fmt_num(idle))
                };
                (idle, words)
            }),
            explain,
        }
    }
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

/// The memory pools of the machine: every GPU that was read, or RAM on a CPU-only machine.
///
/// The runtime's loaded models (their device is unknown) are all counted on one pool: the GPU
/// where reclaiming them leaves the most usable memory (ties: the lowest index), capped at
/// the memory in use there. Every other GPU counts all its used memory as held by others.
fn memory(
    s: &HardwareSnapshot,
    models: &ModelCatalog,
    c: &ProfileConstants,
) -> Result<Memory, String> {
    let (loaded_mb, loaded) = loaded_words(models);
    if s.cpu_only {
        return ram_memory(s, loaded_mb, loaded, c);
    }
    let mut raws = Vec::new();
    let mut unreadable = Vec::new();
    for g in &s.gpus {
        match usable_number(g.vram_free_mb) {
            Some(free) => raws.push(Raw {
                name: format!("gpu{}", g.index),
                device: Some(g.index),
                total: usable_number(g.vram_total_mb),
                reserved: usable_number(g.vram_reserved_mb),
                free,
            }),
            None => unreadable.push(format!(
                "gpu{} unreadable ({})",
                g.index,
                g.unavailable.as_deref().unwrap_or("no reading")
            )),
        }
    }
    let h = c.vram_headroom_mb;
    let mut home: Option<(usize, f64)> = None;
    for (i, r) in raws.iter().enumerate() {
        let u = r.usable(r.credit(loaded_mb), h);
        if home.is_none_or(|(_, best)| u > best) {
            home = Some((i, u));
        }
    }
    let Some((home, _)) = home else {
        return Err(no_vram_reason(s, &unreadable));
    };
    let home_name = raws[home].name.clone();
    let pools = raws
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if i == home {
                r.pool(r.credit(loaded_mb), loaded_mb, h, None)
            } else if loaded_mb > 0.0 {
                r.pool(0.0, loaded_mb, h, Some(&home_name))
            } else {
                r.pool(0.0, loaded_mb, h, None)
            }
        })
        .collect::<Vec<_>>();
    let attribution = (pools.len() > 1 && loaded_mb > 0.0).then(|| {
        format!(
            "the device of a loaded model is unknown: the runtime's models are counted on {home_name}, where reclaiming them leaves the most usable memory"
        )
    });
    Ok(Memory {
        pools,
        best: home,
        unreadable,
        loaded,
        attribution,
        ram: false,
    })
}

/// RAM as the one pool of a CPU-only machine.
fn ram_memory(
    s: &HardwareSnapshot,
    loaded_mb: f64,
    loaded: String,
    c: &ProfileConstants,
) -> Result<Memory, String> {
    let cpu_only = s
        .gpu_unavailable
        .clone()
        .unwrap_or_else(|| "no NVIDIA GPU".to_owned());
    let why = |field: &str| {
        s.unavailable
            .get(field)
            .map_or("no reading", String::as_str)
            .to_owned()
    };
    let Some(free) = usable_number(s.ram_free_mb) else {
        return Err(format!(
            "CPU-only ({cpu_only}) and ram_free_mb is unavailable: {}",
            why("ram_free_mb")
        ));
    };
    let raw = Raw {
        name: "RAM".to_owned(),
        device: None,
        total: usable_number(s.ram_total_mb),
        reserved: None,
        free,
    };
    let mut pool = raw.pool(raw.credit(loaded_mb), loaded_mb, c.ram_headroom_mb, None);
    if raw.total.is_none() {
        pool.explain.push_str(&format!(
            " (ram_total_mb unavailable: {})",
            why("ram_total_mb")
        ));
    }
    pool.explain.push_str(&format!(" (CPU-only: {cpu_only})"));
    Ok(Memory {
        pools: vec![pool],
        best: 0,
        unreadable: Vec::new(),
        loaded,
        attribution: None,
        ram: true,
    })
}

/// The best pool's arithmetic, with the words that place it among the others.
fn best_words(m: &Memory) -> String {
    let b = m.best();
    let mut w = b.explain.clone();
    if !m.ram {
        w.push_str(" (the GPU with the most usable memory)");
    }
    if !m.unreadable.is_empty() {
        w.push_str(&format!("; {}", m.unreadable.join("; ")));
    }
    if let Some(a) = &m.attribution {
        w.push_str(&format!("; {a}"));
    }
    w.push_str(&format!("; {}", m.loaded));
    w
}

/// `min(cap, floor(max(0, usable_mb − model_mb) × 1048576 / kv_bytes))`.
fn context_tokens(usable_mb: f64, model_mb: f64, kv_bytes: f64, cap: u64) -> f64 {
    let left = (usable_mb - model_mb).max(0.0);
    let tokens = (left * MB / kv_bytes).floor();
    tokens.min(cap as f64)
}

const VRAM_FORMULA: &str = "max over GPUs of floor(usable), usable = max(0, total - reserved - headroom - other), other = memory in use that is not the runtime's loaded models (a model must fit on one GPU; the runtime's own models are reclaimable)";
const RAM_FORMULA: &str = "floor(usable RAM), usable = max(0, ram_total_mb - ram_headroom_mb - other), other = RAM in use that is not the runtime's loaded models (CPU-only: models run from RAM; the runtime's own models are reclaimable)";
const CONTEXT_FORMULA: &str = "min(max_context_tokens_cap, floor(max(0, usable - largest_loaded_model_mb) * 1048576 / default_kv_cache_bytes_per_token))";
const CONCURRENCY_FORMULA: &str = "max(1, min(floor(cpu_cores / cores_per_session), floor(max(0, usable - current_model_mb) * 1048576 / (kv_cache_bytes_per_token * session_context_tokens)))), the memory term once a model has loaded (the model loaded most recently); never scaled by the measured CPU load";
const MODEL_CONTEXT_FORMULA: &str = "min(max_context_tokens_cap, floor(max(0, usable - model_required_vram_mb) * 1048576 / kv_cache_bytes_per_token)), usable counting the runtime's own models as reclaimable (a loaded model's weights are subtracted once)";

/// Computes the LocalCapabilityProfile. Pure and deterministic: the same inputs give the same
/// profile, byte for byte. The formulas are in the crate documentation.
pub fn compute_profile(
    snapshot: &HardwareSnapshot,
    models: &ModelCatalog,
    constants: &ProfileConstants,
    thresholds_version: &str,
) -> LocalCapabilityProfile {
    let size_formula = if snapshot.cpu_only {
        RAM_FORMULA
    } else {
        VRAM_FORMULA
    };
    if let Some(bad) = constants_problem(constants) {
        return LocalCapabilityProfile {
            max_recommended_model_vram_mb: unknown(bad.clone(), size_formula),
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
    let mem = memory(snapshot, models, c);
    LocalCapabilityProfile {
        max_recommended_model_vram_mb: max_model_size(&mem, size_formula),
        max_recommended_context_tokens: max_context(&mem, models, c),
        max_recommended_concurrency: max_concurrency(snapshot, &mem, models, c),
        models: models
            .models
            .iter()
            .map(|(id, e)| {
                let ctx = model_context(&mem, e, c);
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

fn max_model_size(mem: &Result<Memory, String>, formula: &str) -> Derived {
    let m = match mem {
        Ok(m) => m,
        Err(why) => return unknown(why.clone(), formula),
    };
    let best = m.best().usable_mb.floor();
    let mut parts: Vec<String> = m.pools.iter().map(|p| p.explain.clone()).collect();
    parts.extend(m.unreadable.iter().cloned());
    parts.extend(m.attribution.iter().cloned());
    parts.push(m.loaded.clone());
    known(
        best,
        format!("{formula} = {}; {}", fmt_num(best), parts.join("; ")),
    )
}

/// A loaded model's size, its own KV bytes per token, and the words `from` says of it:
/// `{name} = {mb} ({id}, {what})`; `none` when there is no such model.
fn model_words(
    models: &ModelCatalog,
    model: Option<(&str, f64)>,
    name: &str,
    what: &str,
    none: &str,
) -> (f64, Option<f64>, String) {
    match model {
        Some((id, mb)) => (
            mb,
            models
                .models
                .get(id)
                .and_then(|e| e.kv_cache_bytes_per_token),
            format!("{name} = {} ({id}, {what})", fmt_num(mb)),
        ),
        None => (0.0, None, none.to_owned()),
    }
}

fn largest_words(models: &ModelCatalog) -> (f64, Option<f64>, String) {
    model_words(
        models,
        models.largest_loaded(),
        "largest_loaded_model_mb",
        "the largest model whose latest load succeeded",
        "largest_loaded_model_mb = 0 (no model has loaded successfully yet)",
    )
}

fn max_context(
    mem: &Result<Memory, String>,
    models: &ModelCatalog,
    c: &ProfileConstants,
) -> Derived {
    let m = match mem {
        Ok(m) => m,
        Err(why) => return unknown(why.clone(), CONTEXT_FORMULA),
    };
    let (model_mb, _, model_words) = largest_words(models);
    let kv = c.default_kv_cache_bytes_per_token;
    let usable = m.best().usable_mb;
    let v = context_tokens(usable, model_mb, kv, c.max_context_tokens_cap);
    known(
        v,
        format!(
            "{CONTEXT_FORMULA} = min({}, floor(max(0, {} - {}) * 1048576 / {})) = {}; {model_words}; {}",
            c.max_context_tokens_cap,
            fmt_num(usable),
            fmt_num(model_mb),
            fmt_num(kv),
            fmt_num(v),
            best_words(m)
        ),
    )
}

fn max_concurrency(
    s: &HardwareSnapshot,
    mem: &Result<Memory, String>,
    models: &ModelCatalog,
    c: &ProfileConstants,
) -> Derived {
    let Some(cores) = s.cpu_cores.filter(|n| *n > 0) else {
        let why = s
            .unavailable
            .get("cpu_cores")
            .map_or("no reading", String::as_str);
        return unknown(format!("cpu_cores unavailable: {why}"), CONCURRENCY_FORMULA);
    };
    let cores = f64::from(cores);
    let by_cores = (cores / c.cores_per_session).floor();
    let cores_words = format!(
        "cores: floor({} / {}) = {}",
        fmt_num(cores),
        fmt_num(c.cores_per_session),
        fmt_num(by_cores)
    );
    let (model_mb, model_kv, model_words) = model_words(
        models,
        models.current_loaded(),
        "current_model_mb",
        "the model loaded most recently",
        "",
    );
    if models.current_loaded().is_none() {
        let v = by_cores.max(1.0);
        return known(
            v,
            format!(
                "{CONCURRENCY_FORMULA}; {cores_words}; memory: no model has loaded successfully yet, so no KV cache to size; max(1, {}) = {}",
                fmt_num(by_cores),
                fmt_num(v)
            ),
        );
    }
    let m = match mem {
        Ok(m) => m,
        Err(why) => {
            return unknown(
                format!("the memory for parallel KV caches is unknown: {why}"),
                CONCURRENCY_FORMULA,
            );
        }
    };
    let (kv, kv_words) = match model_kv {
        Some(k) => (k, "the model's own"),
        None => (
            c.default_kv_cache_bytes_per_token,
            "default_kv_cache_bytes_per_token",
        ),
    };
    let usable = m.best().usable_mb;
    let per_session = kv * c.session_context_tokens as f64;
    let by_memory = ((usable - model_mb).max(0.0) * MB / per_session).floor();
    let v = by_cores.min(by_memory).max(1.0);
    known(
        v,
        format!(
            "{CONCURRENCY_FORMULA}; {cores_words}; memory: floor(max(0, {} - {}) * 1048576 / ({} * {})) = {} ({model_words}; kv_cache_bytes_per_token {} ({kv_words}); session_context_tokens {}); max(1, min({}, {})) = {}; {}",
            fmt_num(usable),
            fmt_num(model_mb),
            fmt_num(kv),
            c.session_context_tokens,
            fmt_num(by_memory),
            fmt_num(kv),
            c.session_context_tokens,
            fmt_num(by_cores),
            fmt_num(by_memory),
            fmt_num(v),
            best_words(m)
        ),
    )
}

fn model_context(mem: &Result<Memory, String>, e: &CatalogEntry, c: &ProfileConstants) -> Derived {
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
    let m = match mem {
        Ok(m) => m,
        Err(why) => return unknown(why.clone(), MODEL_CONTEXT_FORMULA),
    };
    let (kv, kv_words) = match e.kv_cache_bytes_per_token {
        Some(k) => (k, "the model's own"),
        None => (
            c.default_kv_cache_bytes_per_token,
            "default_kv_cache_bytes_per_token",
        ),
    };
    let usable = m.best().usable_mb;
    let v = context_tokens(usable, req, kv, c.max_context_tokens_cap);
    known(
        v,
        format!(
            "{MODEL_CONTEXT_FORMULA} = min({}, floor(max(0, {} - {}) * 1048576 / {})) = {}; kv_cache_bytes_per_token {} ({kv_words}); {}",
            c.max_context_tokens_cap,
            fmt_num(usable),
            fmt_num(req),
            fmt_num(kv),
            fmt_num(v),
            fmt_num(kv),
            best_words(m)
        ),
    )
}

/// Does a model of `model_required_vram_mb` (plus the KV cache of `context_tokens` at the
/// default bytes per token) fit this machine now? It fits when `need` fits in one pool's
/// usable memory, the same figure the profile uses: on one GPU, or in RAM on a CPU-only
/// machine, counting the memory the runtime's own loaded models hold as reclaimable (the
/// runtime can unload them; a model that is already loaded therefore fits). Of the GPUs it
/// fits on, the one it fits on without the runtime unloading anything is preferred, then the
/// one with the most usable memory; when the fit needs the runtime's memory, the reason says
/// so. Does not fit only when every GPU was read and none has room; when a GPU could not be
/// read and the others have no room, or RAM is unavailable, the answer is unknown with the
/// reason.
pub fn fit_check(
    snapshot: &HardwareSnapshot,
    models: &ModelCatalog,
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
    let m = match memory(snapshot, models, c) {
        Ok(m) => m,
        Err(why) => return verdict(FitOutcome::Unknown, why, None, arithmetic),
    };
    let mut fit_on: Option<&Pool> = None;
    for p in &m.pools {
        let fits = need <= p.usable_mb;
        let mut line = format!(
            "{}; {} {} {}: {}",
            p.explain,
            fmt_num(need),
            if fits { "<=" } else { ">" },
            fmt_num(p.usable_mb),
            if fits { "fits" } else { "does not fit" }
        );
        if !fits
            && let Some((idle, words)) = &p.idle_mb
            && need > *idle
        {
            line.push_str(&format!(" (nor when nothing else runs: {words})"));
        }
        arithmetic.push(line);
        // Prefer a pool it fits in now, without the runtime unloading anything; then the one
        // with the most usable memory.
        let rank = |q: &Pool| (need <= q.free_now_mb, q.usable_mb);
        if fits && fit_on.is_none_or(|f| rank(p) > rank(f)) {
            fit_on = Some(p);
        }
    }
    arithmetic.extend(m.unreadable.iter().cloned());
    arithmetic.extend(m.attribution.iter().cloned());
    arithmetic.push(m.loaded.clone());
    let most = m.best();
    let place = |p: &Pool| {
        if m.ram {
            "in RAM (CPU-only)".to_owned()
        } else {
            format!("on {}", p.name)
        }
    };
    if let Some(p) = fit_on {
        let mut reason = format!(
            "fits {}: needs {} MB, {} MB usable",
            place(p),
            fmt_num(need),
            fmt_num(p.usable_mb)
        );
        if need > p.free_now_mb {
            reason.push_str(&format!(
                " once the runtime unloads its own models ({} MB free beyond the headroom now)",
                fmt_num(p.free_now_mb)
            ));
        }
        return verdict(FitOutcome::Fits, reason, p.device, arithmetic);
    }
    if m.ram {
        return verdict(
            FitOutcome::DoesNotFit,
            format!(
                "does not fit in RAM (CPU-only): needs {} MB, {} MB usable",
                fmt_num(need),
                fmt_num(most.usable_mb)
            ),
            None,
            arithmetic,
        );
    }
    if !m.unreadable.is_empty() {
        return verdict(
            FitOutcome::Unknown,
            format!(
                "does not fit on the GPUs that were read (needs {} MB, at most {} MB usable on {}); {}",
                fmt_num(need),
                fmt_num(most.usable_mb),
                most.name,
                m.unreadable.join("; ")
            ),
            None,
            arithmetic,
        );
    }
    verdict(
        FitOutcome::DoesNotFit,
        format!(
            "does not fit: needs {} MB, at most {} MB usable ({}); a model must fit on one GPU",
            fmt_num(need),
            fmt_num(most.usable_mb),
            most.name
        ),
        None,
        arithmetic,
    )
}
