//! Golden scenario files (`tests/scenarios/*.json`): timed inputs and the records they must
//! produce. The policy tests run every file; `kora-telemetry replay` can read one as a log.
//!
//! ```json
//! {
//!   "name": "latency_sustained",
//!   "about": "what it shows",
//!   "start_ms": 1699999980000,
//!   "defaults": { "run": { "session_id": "s1", "model_id": "m", "...": "..." } },
//!   "inputs": [
//!     { "t": 0, "kind": "readiness", "plugin_installed": true, "...": "..." },
//!     { "t": 10, "repeat": 10, "every": 5, "kind": "run", "model_latency_ms": 5000 },
//!     { "w": 0, "kind": "window", "metric": "queue_wait_ms", "value": 1500 }
//!   ],
//!   "expect": [
//!     { "kind": "firing", "at_seq": 30, "category": "latency", "scope": "m" },
//!     { "kind": "suggestion", "ladder_step": 2, "options": [{ "id": "deterministic_filtering" }] }
//!   ],
//!   "expect_triggers": [ { "category": "latency", "scope": "m", "state": "pending", "k": 2 } ]
//! }
//! ```
//!
//! Inputs: every item is a log record (tagged by `kind`, fields as in the log) plus these
//! keys, which are not part of the record:
//! - `t`: seconds after `start_ms`; sets `ts_ms` unless the item gives one.
//! - `repeat` (default 1) and `every` (seconds, default 0): the item stands for `repeat`
//!   records, `every` seconds apart (windows move their start by the same amount).
//! - windows: `w` (seconds after `start_ms`: the window start; `end_ms` is one window later,
//!   `ts_ms` defaults to `end_ms`), `value` (sets min, max, p50 and p95 alike);
//!   `window_kind` defaults to `time`, `scope` to `host`, `count` to 1.
//! - profiles (`kind: profile` without a `profile` field): `max_recommended_concurrency`,
//!   `supported_context_tokens` ({model: tokens}), `gpu_vram_total_mb`, `gpu_vram_free_mb`.
//!
//! `defaults` gives, per kind, fields every input of that kind starts from. Seqs are assigned
//! 1, 2, 3... in order.
//!
//! Expectations: `expect` lists, in order, every firing, suggestion, suppression and mitigation
//! outcome the inputs produce (and run-block windows when `expect_windows` is true). Each item
//! gives only the fields it checks: objects match by subset, arrays element by element and
//! must have the same length, other values must be equal. `at_seq` checks which input produced
//! it; `message_contains` checks a substring of the message. `expect_triggers` items are
//! matched against the trigger state of their category and scope at the end.

use std::collections::BTreeMap;

use kora_model::{LogEntry, Record};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::engine::Engine;

/// The default scenario start: 2023-11-14T22:13:00Z, a multiple of 60 s.
pub const DEFAULT_START_MS: i64 = 1_699_999_980_000;

/// What a scenario derived (each record with the seq of its input) and every mismatch with
/// its expectations (empty when it holds).
pub type ScenarioRun = (Vec<(u64, Record)>, Vec<String>);

/// A parsed scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub about: String,
    #[serde(default = "default_start")]
    pub start_ms: i64,
    #[serde(default)]
    pub defaults: BTreeMap<String, Map<String, Value>>,
    pub inputs: Vec<Value>,
    #[serde(default)]
    pub expect: Vec<Value>,
    #[serde(default)]
    pub expect_windows: bool,
    #[serde(default)]
    pub expect_triggers: Vec<Value>,
}

fn default_start() -> i64 {
    DEFAULT_START_MS
}

const META: [&str; 10] = [
    "t",
    "repeat",
    "every",
    "w",
    "value",
    "max_recommended_concurrency",
    "supported_context_tokens",
    "gpu_vram_total_mb",
    "gpu_vram_free_mb",
    "window_ms",
];

fn secs(v: Option<&Value>) -> f64 {
    v.and_then(Value::as_f64).unwrap_or(0.0)
}

fn derived(value: Option<&Value>) -> Value {
    match value {
        Some(v) => json!({"value": v, "from": "scenario"}),
        None => json!({"unknown": "not given by the scenario", "from": "scenario"}),
    }
}

impl Scenario {
    pub fn parse(json: &str) -> Result<Scenario, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    /// The inputs as log entries.
    pub fn entries(&self) -> Result<Vec<LogEntry>, String> {
        let mut out = Vec::new();
        let mut seq = 0u64;
        for (idx, item) in self.inputs.iter().enumerate() {
            let obj = item
                .as_object()
                .ok_or_else(|| format!("inputs[{idx}] is not an object"))?;
            let kind = obj
                .get("kind")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("inputs[{idx}] has no kind"))?;
            let repeat = obj.get("repeat").and_then(Value::as_u64).unwrap_or(1);
            let every = secs(obj.get("every"));
            let t = secs(obj.get("t"));
            for i in 0..repeat {
                let offset_ms = ((t + every * i as f64) * 1000.0).round() as i64;
                let mut rec: Map<String, Value> =
                    self.defaults.get(kind).cloned().unwrap_or_default();
                for (k, v) in obj {
                    if !META.contains(&k.as_str()) {
                        rec.insert(k.clone(), v.clone());
                    }
                }
                let mut ts = self.start_ms + offset_ms;
                if kind == "window" {
                    let window_ms = obj
                        .get("window_ms")
                        .and_then(Value::as_i64)
                        .unwrap_or(60_000);
                    if obj.contains_key("w") {
                        let start = self.start_ms
                            + ((secs(obj.get("w")) + every * i as f64) * 1000.0).round() as i64;
                        rec.entry("start_ms").or_insert(json!(start));
                        rec.entry("end_ms").or_insert(json!(start + window_ms));
                        if !obj.contains_key("t") {
                            ts = start + window_ms;
                        }
                    }
                    if let Some(v) = obj.get("value") {
                        for f in ["min", "max", "p50", "p95"] {
                            rec.entry(f).or_insert(v.clone());
                        }
                    }
                    rec.entry("window_kind").or_insert(json!("time"));
                    rec.entry("scope").or_insert(json!("host"));
                    rec.entry("count").or_insert(json!(1));
                }
                if kind == "profile" && !rec.contains_key("profile") {
                    let mut models = Map::new();
                    if let Some(m) = obj
                        .get("supported_context_tokens")
                        .and_then(Value::as_object)
                    {
                        for (id, v) in m {
                            models.insert(
                                id.clone(),
                                json!({"model_id": id, "supported_context_tokens": derived(Some(v))}),
                            );
                        }
                    }
                    rec.insert(
                        "profile".to_owned(),
                        json!({
                            "max_recommended_model_vram_mb": derived(None),
                            "max_recommended_context_tokens": derived(None),
                            "max_recommended_concurrency":
                                derived(obj.get("max_recommended_concurrency")),
                            "models": models,
                            "thresholds_version": "1.0.0",
                        }),
                    );
                    let mut hw = json!({"ts_ms": ts, "gpus": []});
                    for f in ["gpu_vram_total_mb", "gpu_vram_free_mb"] {
                        if let Some(v) = obj.get(f) {
                            hw[f] = v.clone();
                        }
                    }
                    rec.insert("hardware".to_owned(), hw);
                }
                rec.entry("ts_ms").or_insert(json!(ts));
                seq += 1;
                rec.insert("seq".to_owned(), json!(seq));
                let entry: LogEntry = serde_json::from_value(Value::Object(rec))
                    .map_err(|e| format!("inputs[{idx}] (repeat {i}): {e}"))?;
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// Runs the scenario through `engine`; returns what it derived and every mismatch with
    /// the expectations (empty when the scenario holds).
    pub fn run(&self, engine: &mut Engine) -> Result<ScenarioRun, String> {
        let entries = self.entries()?;
        let mut derived = Vec::new();
        for e in &entries {
            for r in engine.step(e) {
                derived.push((e.seq, r));
            }
        }
        let mut errors = self.check(&derived);
        for (i, exp) in self.expect_triggers.iter().enumerate() {
            let cat = exp.get("category").cloned().unwrap_or(Value::Null);
            let scope = exp.get("scope").cloned().unwrap_or(Value::Null);
            let found = engine.triggers().into_iter().find_map(|s| {
                let v = serde_json::to_value(&s).ok()?;
                (v.get("category") == Some(&cat) && v.get("scope") == Some(&scope)).then_some(v)
            });
            match found {
                None => errors.push(format!("expect_triggers[{i}]: no status for {cat} {scope}")),
                Some(v) => {
                    let mut p = Vec::new();
                    subset(exp, &v, &mut p, "");
                    for m in p {
                        errors.push(format!("expect_triggers[{i}]{m} (status: {v})"));
                    }
                }
            }
        }
        Ok((derived, errors))
    }

    /// Compares derived records with `expect`.
    pub fn check(&self, derived: &[(u64, Record)]) -> Vec<String> {
        let shown: Vec<(u64, Value)> = derived
            .iter()
            .filter(|(_, r)| !matches!(r, Record::Window(_)) || self.expect_windows)
            .filter_map(|(s, r)| serde_json::to_value(r).ok().map(|v| (*s, v)))
            .collect();
        let mut errors = Vec::new();
        for (i, exp) in self.expect.iter().enumerate() {
            let Some((seq, actual)) = shown.get(i) else {
                errors.push(format!(
                    "expect[{i}]: missing (only {} derived): {exp}",
                    shown.len()
                ));
                continue;
            };
            let mut exp = exp.clone();
            let mut problems = Vec::new();
            if let Some(obj) = exp.as_object_mut() {
                if let Some(at) = obj.remove("at_seq")
                    && at.as_u64() != Some(*seq)
                {
                    problems.push(format!(" at_seq: expected {at}, produced by input {seq}"));
                }
                if let Some(sub) = obj.remove("message_contains") {
                    let msg = actual.get("message").and_then(Value::as_str).unwrap_or("");
                    let want = sub.as_str().unwrap_or("");
                    if !msg.contains(want) {
                        problems.push(format!(" message does not contain {want:?}: {msg:?}"));
                    }
                }
            }
            subset(&exp, actual, &mut problems, "");
            for p in problems {
                errors.push(format!("expect[{i}]{p}\n    actual: {actual}"));
            }
        }
        for (i, (seq, extra)) in shown.iter().enumerate().skip(self.expect.len()) {
            errors.push(format!(
                "derived[{i}] not expected (input seq {seq}): {extra}"
            ));
        }
        errors
    }
}

fn subset(expected: &Value, actual: &Value, problems: &mut Vec<String>, path: &str) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, v) in e {
                match a.get(k) {
                    Some(av) => subset(v, av, problems, &format!("{path}.{k}")),
                    None if v.is_null() => {}
                    None => problems.push(format!("{path}.{k}: expected {v}, absent")),
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                problems.push(format!(
                    "{path}: expected {} items, got {}",
                    e.len(),
                    a.len()
                ));
                return;
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                subset(ev, av, problems, &format!("{path}[{i}]"));
            }
        }
        (Value::Number(e), Value::Number(a)) => {
            if e.as_f64() != a.as_f64() {
                problems.push(format!("{path}: expected {e}, got {a}"));
            }
        }
        (e, a) => {
            if e != a {
                problems.push(format!("{path}: expected {e}, got {a}"));
            }
        }
    }
}
