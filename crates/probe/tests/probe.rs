//! The probe crate's integration tests: recorded machines with the exact profiles they must
//! give, property tests of the profile formulas, and one reading of this machine.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kora_model::{
    Derived, Event, FitOutcome, GpuReading, HardwareSnapshot, LoadOutcome, LocalCapabilityProfile,
    ModelLoad, ProfileConstants, Signal, Validate,
};
use kora_probe::{
    GpuError, GpuErrorKind, ModelCatalog, Probe, Recording, compute_profile, fit_check,
    snapshot_to_samples,
};
use proptest::prelude::*;
use serde::Deserialize;

const TS: i64 = 1_760_000_000_000;
const VERSION: &str = "1.1.0";

fn constants() -> ProfileConstants {
    ProfileConstants {
        vram_headroom_mb: 512.0,
        ram_headroom_mb: 2048.0,
        default_kv_cache_bytes_per_token: 131072.0,
        max_context_tokens_cap: 131072,
        cores_per_session: 4.0,
        session_context_tokens: 4096,
    }
}

// ---------------------------------------------------------------------------------------------
// Recorded machines

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    recording: serde_json::Value,
    #[serde(default)]
    events: Vec<Event>,
    ticks: Vec<Tick>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tick {
    /// Events folded into the model catalog just before this tick (the fixture's top-level
    /// `events` come before the first tick).
    #[serde(default)]
    events: Vec<Event>,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// Fields that must equal the snapshot's (as JSON), each compared whole.
    #[serde(default)]
    snapshot: serde_json::Map<String, serde_json::Value>,
    max_recommended_model_vram_mb: Option<ExpectDerived>,
    max_recommended_context_tokens: Option<ExpectDerived>,
    max_recommended_concurrency: Option<ExpectDerived>,
    #[serde(default)]
    models: BTreeMap<String, ExpectDerived>,
    #[serde(default)]
    fits: Vec<ExpectFit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectDerived {
    value: Option<f64>,
    unknown: Option<String>,
    unknown_contains: Option<String>,
    from: Option<String>,
    #[serde(default)]
    from_contains: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectFit {
    model_required_vram_mb: f64,
    context_tokens: Option<u64>,
    verdict: FitOutcome,
    device: Option<u32>,
    reason: Option<String>,
    #[serde(default)]
    arithmetic_contains: Vec<String>,
}

fn check_derived(what: &str, got: &Derived, want: &ExpectDerived) {
    assert!(
        got.value.is_some() != got.unknown.is_some(),
        "{what}: exactly one of value and unknown: {got:?}"
    );
    match (want.value, &want.unknown, &want.unknown_contains) {
        (Some(v), _, _) => assert_eq!(got.value, Some(v), "{what}: {got:#?}"),
        (None, Some(u), _) => {
            assert_eq!(got.value, None, "{what} must be unknown: {got:#?}");
            assert_eq!(got.unknown.as_deref(), Some(u.as_str()), "{what}");
        }
        (None, None, Some(part)) => {
            assert_eq!(got.value, None, "{what} must be unknown: {got:#?}");
            let u = got.unknown.as_deref().unwrap_or_default();
            assert!(u.contains(part.as_str()), "{what}: {u:?} lacks {part:?}");
        }
        (None, None, None) => panic!("{what}: the expectation names no value and no unknown"),
    }
    if let Some(from) = &want.from {
        assert_eq!(&got.from, from, "{what}: from");
    }
    for part in &want.from_contains {
        assert!(
            got.from.contains(part.as_str()),
            "{what}: {:?} lacks {part:?}",
            got.from
        );
    }
}

/// JSON equality with numbers compared as numbers (24564 equals 24564.0), and an absent
/// value equal to the defaults serialization leaves out (false, [], {}).
fn json_eq(got: &serde_json::Value, want: &serde_json::Value) -> bool {
    use serde_json::Value as V;
    match (got, want) {
        (V::Number(a), V::Number(b)) => a.as_f64() == b.as_f64(),
        (V::Array(a), V::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| json_eq(x, y))
        }
        (V::Object(a), V::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, x)| b.get(k).is_some_and(|y| json_eq(x, y)))
        }
        (V::Null, V::Bool(false)) => true,
        (V::Null, V::Array(b)) | (V::Array(b), V::Null) => b.is_empty(),
        (V::Null, V::Object(b)) => b.is_empty(),
        _ => got == want,
    }
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// One replayed tick: the snapshot, the model catalog at that tick, and the profile.
struct Replayed {
    snapshot: HardwareSnapshot,
    catalog: ModelCatalog,
    profile: LocalCapabilityProfile,
}

/// Replays one recorded machine and checks every tick's snapshot, profile and fit verdicts.
fn replay(name: &str) -> Vec<Replayed> {
    let path = fixture_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let fixture: Fixture = serde_json::from_str(&text).unwrap();
    let recording = Recording::from_json(&fixture.recording.to_string()).unwrap();
    let mut probe = Probe::from_recording(recording);
    let mut catalog = ModelCatalog::new();
    for e in &fixture.events {
        e.validate(TS).unwrap();
        catalog.observe_event(e);
    }
    assert!(!fixture.ticks.is_empty());
    let mut out = Vec::new();
    for (i, tick) in fixture.ticks.iter().enumerate() {
        let at = format!("{name} tick {i}");
        for e in &tick.events {
            e.validate(TS).unwrap();
            catalog.observe_event(e);
        }
        let ts = TS + i as i64 * 5_000;
        let snapshot = probe.snapshot(ts);
        assert_eq!(snapshot.ts_ms, ts);

        let json = serde_json::to_value(&snapshot).unwrap();
        for (field, want) in &tick.expect.snapshot {
            let got = json.get(field).cloned().unwrap_or(serde_json::Value::Null);
            assert!(
                json_eq(&got, want),
                "{at}: snapshot.{field} is {got}, want {want}"
            );
        }

        let samples = snapshot_to_samples(&snapshot);
        for s in &samples {
            s.validate(ts)
                .unwrap_or_else(|e| panic!("{at}: {s:?}: {e}"));
        }

        let profile = compute_profile(&snapshot, &catalog, &constants(), VERSION);
        assert_eq!(profile.thresholds_version, VERSION);
        assert_eq!(
            profile,
            compute_profile(&snapshot, &catalog, &constants(), VERSION),
            "{at}: the profile is deterministic"
        );
        assert_eq!(
            profile.models.keys().collect::<Vec<_>>(),
            catalog.models.keys().collect::<Vec<_>>()
        );
        let e = &tick.expect;
        if let Some(w) = &e.max_recommended_model_vram_mb {
            check_derived(
                &format!("{at}: max_recommended_model_vram_mb"),
                &profile.max_recommended_model_vram_mb,
                w,
            );
        }
        if let Some(w) = &e.max_recommended_context_tokens {
            check_derived(
                &format!("{at}: max_recommended_context_tokens"),
                &profile.max_recommended_context_tokens,
                w,
            );
        }
        if let Some(w) = &e.max_recommended_concurrency {
            check_derived(
                &format!("{at}: max_recommended_concurrency"),
                &profile.max_recommended_concurrency,
                w,
            );
        }
        for (id, w) in &e.models {
            let m = profile
                .models
                .get(id)
                .unwrap_or_else(|| panic!("{at}: no model {id}"));
            check_derived(&format!("{at}: {id}"), &m.supported_context_tokens, w);
        }
        for f in &e.fits {
            let v = fit_check(
                &snapshot,
                &catalog,
                f.model_required_vram_mb,
                f.context_tokens,
                &constants(),
            );
            let what = format!(
                "{at}: fit {} MB / {:?}",
                f.model_required_vram_mb, f.context_tokens
            );
            assert_eq!(v.verdict, f.verdict, "{what}: {v:#?}");
            assert_eq!(v.device, f.device, "{what}: {v:#?}");
            if let Some(r) = &f.reason {
                assert_eq!(&v.reason, r, "{what}");
            }
            for part in &f.arithmetic_contains {
                assert!(
                    v.arithmetic.iter().any(|l| l.contains(part.as_str())),
                    "{what}: no line has {part:?}: {:#?}",
                    v.arithmetic
                );
            }
            assert!(!v.arithmetic.is_empty(), "{what}: the arithmetic is shown");
        }
        out.push(Replayed {
            snapshot,
            catalog: catalog.clone(),
            profile,
        });
    }
    out
}

#[test]
fn desktop_rtx4090() {
    replay("desktop_rtx4090.json");
}

#[test]
fn laptop_8gb() {
    replay("laptop_8gb.json");
}

#[test]
fn two_gpus() {
    replay("two_gpus.json");
}

#[test]
fn cpu_only() {
    replay("cpu_only.json");
}

#[test]
fn nvml_fails_mid_run() {
    replay("nvml_fails_mid_run.json");
}

#[test]
fn desktop_24gb_16gb_loaded() {
    replay("desktop_24gb_16gb_loaded.json");
}

#[test]
fn cpu_only_16c_64gb_busy() {
    replay("cpu_only_16c_64gb_busy.json");
}

// ---------------------------------------------------------------------------------------------
// Regressions of issue 12, named after the bug: each failed before the profile was computed
// from totals, and passes now.

fn value(d: &Derived) -> f64 {
    d.value
        .unwrap_or_else(|| panic!("no value: {:?}: {}", d.unknown, d.from))
}

/// Bug: usable memory was read after the runtime loaded its models and the model's weights
/// were then subtracted again, so a 24 GB card with a 16 GB model loaded said 0 tokens for
/// that model (`(6628 - 512 - 16384) < 0`), and the context trigger fired on a 4k request.
#[test]
fn a_loaded_model_is_not_subtracted_twice() {
    let ticks = replay("desktop_24gb_16gb_loaded.json");
    let [before, after] = &ticks[..] else {
        panic!("two ticks: before and after the load")
    };
    let id = "mistral-small-24b-instruct";
    // The figure before the load: the same model known, its load not (yet) successful.
    let mut not_loaded = ModelCatalog::new();
    not_loaded.observe_load(&model_load(id, 16384.0, LoadOutcome::Failed));
    let pre = compute_profile(&before.snapshot, &not_loaded, &constants(), VERSION);
    let pre_ctx = value(&pre.models[id].supported_context_tokens);
    let post_ctx = value(&after.profile.models[id].supported_context_tokens);
    assert_eq!(pre_ctx, 48928.0);
    assert_eq!(
        post_ctx, pre_ctx,
        "{}",
        after.profile.models[id].supported_context_tokens.from
    );
    assert!(
        post_ctx >= 4096.0,
        "an ordinary 4k request is within the supported context"
    );
    assert!(
        after.snapshot.gpus[0].vram_free_mb.unwrap() - 512.0 < 16384.0,
        "the premise: free VRAM after the load is less than the model's own weights"
    );
    // The runtime's own model is reclaimable: a fit check for it says so.
    let fit = fit_check(
        &after.snapshot,
        &after.catalog,
        16384.0,
        Some(4096),
        &constants(),
    );
    assert_eq!(fit.verdict, FitOutcome::Fits, "{fit:#?}");
}

/// Bug: `max_recommended_model_vram_mb` was the free VRAM of the moment, so it shrank by the
/// size of every model the runtime loaded (22500 MB before, 6116 MB after a 16 GB load).
#[test]
fn loading_a_model_does_not_shrink_the_largest_model_recommendation() {
    let ticks = replay("desktop_24gb_16gb_loaded.json");
    let before = value(&ticks[0].profile.max_recommended_model_vram_mb);
    let after = value(&ticks[1].profile.max_recommended_model_vram_mb);
    assert_eq!((before, after), (22500.0, 22500.0));
    let laptop = replay("laptop_8gb.json");
    assert_eq!(
        value(&laptop[0].profile.max_recommended_model_vram_mb),
        value(&laptop[1].profile.max_recommended_model_vram_mb),
        "the laptop with llama-3.1-8b back in memory"
    );
}

/// Bug: concurrency was scaled down by the CPU load p95, so the workload's own generation
/// (95% CPU) collapsed the recommendation to 1 and the concurrency trigger fired because the
/// runtime was busy. Concurrency now comes from cores and memory only.
#[test]
fn the_workloads_own_cpu_load_does_not_lower_concurrency() {
    let ticks = replay("cpu_only_16c_64gb_busy.json");
    let loads: Vec<Option<f64>> = ticks.iter().map(|t| t.snapshot.cpu_load_pct).collect();
    assert_eq!(loads, [None, Some(95.0), Some(97.5)]);
    for t in &ticks {
        assert_eq!(
            value(&t.profile.max_recommended_concurrency),
            4.0,
            "16 cores / 4"
        );
    }
    let desktop = replay("desktop_rtx4090.json");
    assert_eq!(desktop[1].snapshot.cpu_load_pct, Some(95.0));
    assert_eq!(value(&desktop[1].profile.max_recommended_concurrency), 4.0);
}

/// Found by the machine-day simulator: an 8 GB laptop that once loaded an 8B model and now
/// runs a 2.4 GB one with three sessions was told it could run two, because the memory for
/// parallel KV caches was sized beside the largest model ever loaded (there is no unload
/// event). Concurrency is sized for the model loaded most recently.
#[test]
fn concurrency_is_sized_for_the_model_the_runtime_runs_now() {
    let mut snapshot = bare_snapshot();
    snapshot.cpu_cores = Some(12);
    snapshot.cpu_only = false;
    snapshot.gpu_unavailable = None;
    snapshot.gpus = vec![GpuReading {
        index: 0,
        name: Some("NVIDIA GeForce RTX 4060 Laptop GPU".into()),
        vram_total_mb: Some(8188.0),
        vram_free_mb: Some(8188.0 - 250.0 - 2400.0 - 300.0),
        vram_reserved_mb: Some(250.0),
        unavailable: None,
    }];
    snapshot.gpu_vram_total_mb = Some(8188.0);
    snapshot.gpu_vram_free_mb = snapshot.gpus[0].vram_free_mb;
    let load = |id: &str, mb: f64| model_load(id, mb, LoadOutcome::Ok);
    let mut catalog = ModelCatalog::new();
    catalog.observe_load(&load("llama-3.1-8b-instruct", 6144.0));
    assert!(
        catalog.observe_load(&load("phi-3-mini", 2400.0)),
        "the current model changed"
    );
    let now = compute_profile(&snapshot, &catalog, &constants(), VERSION);
    let c = &now.max_recommended_concurrency;
    // used = 8188 - 250 - free 5238 = 2700, all of it counted as the runtime's (its models
    // hold up to 8544 MB), so usable = 8188 - 250 - 512 = 7426; beside phi-3-mini's 2400 MB,
    // floor(5026 MB / 512 MB) = 9 sessions of 4,096 tokens; cores: floor(12 / 4) = 3. Sized
    // beside the 8B model, as before, it was floor(1282 / 512) = 2.
    assert_eq!(value(c), 3.0, "{}", c.from);
    assert!(
        c.from
            .contains("phi-3-mini, the model loaded most recently"),
        "{}",
        c.from
    );
    // Back on the 8B model: floor((7426 - 6144) / 512) = 2 sessions.
    catalog.observe_load(&load("llama-3.1-8b-instruct", 6144.0));
    let back = compute_profile(&snapshot, &catalog, &constants(), VERSION);
    assert_eq!(value(&back.max_recommended_concurrency), 2.0);
}

/// Bug: a CPU-only machine got `unknown` for the largest model although its models run from
/// RAM. It is now sized from RAM, and `from` says so.
#[test]
fn a_cpu_only_machine_sizes_models_from_ram() {
    for (name, want) in [
        ("cpu_only_16c_64gb_busy.json", 55887.0),
        ("cpu_only.json", 24552.0),
    ] {
        let t = &replay(name)[0];
        assert!(t.snapshot.cpu_only);
        let d = &t.profile.max_recommended_model_vram_mb;
        assert_eq!(value(d), want, "{name}");
        assert!(d.from.starts_with("floor(usable RAM)"), "{}", d.from);
        assert!(d.from.contains("CPU-only: no NVIDIA GPU"), "{}", d.from);
    }
}

/// There is no unload event, so a model whose load succeeded long ago may be gone: what is
/// counted as the runtime's is capped at the memory actually in use, never more.
#[test]
fn a_model_no_longer_in_memory_is_credited_at_most_the_memory_in_use() {
    let t = &replay("laptop_8gb.json")[0];
    let d = &t.profile.max_recommended_model_vram_mb;
    // 8188 total, 250 reserved, 7420.5 free: 517.5 in use, though 8544 MB of models "loaded".
    assert_eq!(value(d), 8188.0 - 250.0 - 512.0);
    assert!(
        d.from
            .contains("runtime's models = min(used 517.5, loaded 8544) = 517.5"),
        "{}",
        d.from
    );
}

#[test]
fn every_fixture_is_replayed() {
    let mut names: Vec<String> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cpu_only.json",
            "cpu_only_16c_64gb_busy.json",
            "desktop_24gb_16gb_loaded.json",
            "desktop_rtx4090.json",
            "laptop_8gb.json",
            "nvml_fails_mid_run.json",
            "two_gpus.json"
        ]
    );
}

/// The samples of a tick with a lost GPU: per-device and total readings are unavailable with
/// the reason, never 0, and host readings are present.
#[test]
fn samples_of_a_lost_gpu_say_why() {
    let text = std::fs::read_to_string(fixture_dir().join("nvml_fails_mid_run.json")).unwrap();
    let fixture: Fixture = serde_json::from_str(&text).unwrap();
    let mut probe =
        Probe::from_recording(Recording::from_json(&fixture.recording.to_string()).unwrap());

    let first = snapshot_to_samples(&probe.snapshot(TS));
    let keys: Vec<(String, Option<f64>)> =
        first.iter().map(|s| (s.series_key(), s.value)).collect();
    assert_eq!(
        keys,
        [
            ("gpu_vram_total_mb".to_owned(), Some(12282.0)),
            ("gpu_vram_free_mb".to_owned(), Some(5000.0)),
            ("gpu_vram_total_mb@gpu0".to_owned(), Some(12282.0)),
            ("gpu_vram_free_mb@gpu0".to_owned(), Some(5000.0)),
            ("cpu_cores".to_owned(), Some(20.0)),
            ("cpu_load_pct".to_owned(), Some(30.0)),
            ("ram_free_mb".to_owned(), Some(20000.0)),
            ("ram_total_mb".to_owned(), Some(31800.0)),
        ]
    );
    assert!(first.iter().all(|s| s.ts_ms == Some(TS)));

    let lost = snapshot_to_samples(&probe.snapshot(TS + 5_000));
    assert_eq!(lost.len(), 8);
    for s in &lost[..4] {
        assert_eq!(s.value, None, "{s:?}");
        let why = s.unavailable.as_deref().unwrap();
        assert!(why.contains("GPU lost"), "{why}");
        s.validate(TS).unwrap();
    }
    assert_eq!(lost[2].device, Some(0));
    assert_eq!(lost[0].device, None);

    let uncounted = snapshot_to_samples(&probe.snapshot(TS + 10_000));
    assert_eq!(
        uncounted.len(),
        6,
        "no per-device samples when no device was counted"
    );
    for s in &uncounted[..2] {
        assert_eq!(
            s.unavailable.as_deref(),
            Some("NVML could not count the GPUs: unknown NVML error")
        );
    }
}

#[test]
fn samples_clamp_rounding_noise_and_refuse_bad_numbers() {
    let mut s = bare_snapshot();
    s.cpu_load_pct = Some(100.000_000_1);
    s.ram_free_mb = Some(f64::NAN);
    s.ram_total_mb = Some(-1.0);
    let samples = snapshot_to_samples(&s);
    let by = |sig: Signal| {
        samples
            .iter()
            .find(|x| x.signal == sig && x.device.is_none())
            .unwrap()
    };
    assert_eq!(by(Signal::CpuLoadPct).value, Some(100.0));
    assert_eq!(by(Signal::RamFreeMb).value, None);
    assert!(
        by(Signal::RamFreeMb)
            .unavailable
            .as_deref()
            .unwrap()
            .contains("NaN")
    );
    assert_eq!(by(Signal::RamTotalMb).value, None);
    for x in &samples {
        x.validate(TS).unwrap_or_else(|e| panic!("{x:?}: {e}"));
    }
}

#[test]
fn recordings_are_checked() {
    assert!(Recording::from_json(r#"{"host": [], "nvml": {"ticks": []}}"#).is_err());
    assert!(Recording::from_json(r#"{"host": [], "nvml": {"bogus": 1}}"#).is_err());
    let no_gpu_ticks = r#"{"host": [{"cpu_cores": 1, "cpu_load_pct": 1, "ram_total_mb": 1,
        "ram_free_mb": 1}], "nvml": {"ticks": []}}"#;
    assert!(Recording::from_json(no_gpu_ticks).is_err());
}

#[test]
fn nvml_start_failures_read_as_no_nvidia_gpu() {
    for (kind, words) in [
        (
            GpuErrorKind::DriverNotLoaded,
            "no NVIDIA GPU (NVIDIA driver not loaded)",
        ),
        (
            GpuErrorKind::NoPermission,
            "no NVIDIA GPU (no permission to talk to the NVIDIA driver)",
        ),
    ] {
        let rec = format!(
            r#"{{"host": [{{"cpu_cores": 4, "cpu_load_pct": 1, "ram_total_mb": 8000,
               "ram_free_mb": 4000}}], "nvml": {{"init_error": {}}}}}"#,
            serde_json::to_string(&GpuError::new(kind)).unwrap()
        );
        let mut probe = Probe::from_recording(Recording::from_json(&rec).unwrap());
        assert_eq!(probe.gpu_unavailable(), Some(words));
        let s = probe.snapshot(TS);
        assert!(s.cpu_only);
        assert_eq!(s.gpu_unavailable.as_deref(), Some(words));
        let p = compute_profile(&s, &ModelCatalog::new(), &constants(), VERSION);
        // Sized from RAM: 8000 total - 2048 headroom - 4000 in use by others.
        let d = &p.max_recommended_model_vram_mb;
        assert_eq!(d.value, Some(1952.0), "{d:?}");
        assert!(
            d.from.contains(&format!("(CPU-only: {words})")),
            "{}",
            d.from
        );
    }
}

#[test]
fn fit_check_refuses_bad_input_without_panicking() {
    let s = bare_snapshot();
    let none = ModelCatalog::new();
    for bad in [f64::NAN, f64::INFINITY, -1.0] {
        let v = fit_check(&s, &none, bad, None, &constants());
        assert_eq!(v.verdict, FitOutcome::Unknown);
        assert!(v.reason.contains("model_required_vram_mb"), "{}", v.reason);
    }
    let mut c = constants();
    c.default_kv_cache_bytes_per_token = 0.0;
    let v = fit_check(&s, &none, 1000.0, Some(10), &c);
    assert_eq!(v.verdict, FitOutcome::Unknown);
    let p = compute_profile(&s, &ModelCatalog::new(), &c, VERSION);
    assert!(
        p.max_recommended_context_tokens
            .unknown
            .as_deref()
            .unwrap()
            .contains("default_kv_cache_bytes_per_token 0")
    );
    let json = serde_json::to_value(fit_check(&s, &none, 100_000.0, None, &constants())).unwrap();
    assert_eq!(json["verdict"], "does_not_fit");
}

#[test]
fn catalog_keeps_the_latest_load_and_the_runtime_context() {
    let mut c = ModelCatalog::new();
    let load = |mb: f64, outcome| model_load("m", mb, outcome);
    assert!(c.observe_load(&load(9000.0, LoadOutcome::Ok)));
    assert!(!c.observe_load(&load(9000.0, LoadOutcome::Ok)), "no change");
    assert_eq!(c.largest_loaded(), Some(("m", 9000.0)));
    assert!(c.observe_load(&load(9500.0, LoadOutcome::Failed)));
    assert_eq!(
        c.largest_loaded(),
        None,
        "a model whose latest load failed is not loaded"
    );
}

/// This machine, read for real. On a machine without NVIDIA (as where this is developed) the
/// GPU part says "no NVIDIA GPU (...)"; with one, GPU readings are present instead.
#[test]
fn this_machine() {
    let mut probe = Probe::new();
    let first = probe.snapshot(TS);
    assert!(first.cpu_cores.unwrap_or(0) > 0, "{first:#?}");
    assert!(first.ram_total_mb.unwrap_or(0.0) > 0.0, "{first:#?}");
    let free = first.ram_free_mb.unwrap();
    assert!(free > 0.0 && free <= first.ram_total_mb.unwrap());
    assert_eq!(
        first.cpu_load_pct, None,
        "the first reading has no load figure"
    );
    assert!(
        first.unavailable["cpu_load_pct"].contains("this is the first"),
        "{first:#?}"
    );
    match &first.gpu_unavailable {
        Some(why) => {
            assert!(why.starts_with("no NVIDIA GPU ("), "{why}");
            assert!(first.cpu_only && first.gpus.is_empty());
            assert_eq!(probe.gpu_unavailable(), Some(why.as_str()));
        }
        None => assert!(!first.gpus.is_empty(), "{first:#?}"),
    }

    std::thread::sleep(std::time::Duration::from_millis(250));
    let before_second = std::time::Instant::now();
    let second = probe.snapshot(TS + 250);
    let load = second.cpu_load_pct.unwrap_or_else(|| panic!("{second:#?}"));
    assert!((0.0..=100.0).contains(&load), "{load}");
    for s in snapshot_to_samples(&second) {
        s.validate(TS).unwrap_or_else(|e| panic!("{s:?}: {e}"));
    }

    // Too soon after the previous reading: no stale figure is passed off as new.
    let third = probe.snapshot(TS + 260);
    if before_second.elapsed() < std::time::Duration::from_millis(200) {
        assert_eq!(third.cpu_load_pct, None);
        assert!(third.unavailable["cpu_load_pct"].contains("apart"));
    }
}

#[test]
fn the_probe_can_move_to_a_blocking_thread() {
    fn send<T: Send>() {}
    send::<Probe>();
}

// ---------------------------------------------------------------------------------------------
// Properties

/// A `model_load` of `id` needing `mb` MB, with nothing else reported.
fn model_load(id: &str, mb: f64, outcome: LoadOutcome) -> ModelLoad {
    ModelLoad {
        id: None,
        ts_ms: None,
        model_id: id.into(),
        model_required_vram_mb: mb,
        vram_reclaimable_mb_est: None,
        outcome,
        quantization: None,
        params_b: None,
        kv_cache_bytes_per_token: None,
        session_id: None,
    }
}

fn bare_snapshot() -> HardwareSnapshot {
    HardwareSnapshot {
        ts_ms: TS,
        cpu_cores: Some(8),
        cpu_load_pct: Some(10.0),
        ram_total_mb: Some(32000.0),
        ram_free_mb: Some(16000.0),
        gpus: Vec::new(),
        gpu_unavailable: Some("no NVIDIA GPU (NVML library not found)".into()),
        gpu_vram_total_mb: None,
        gpu_vram_free_mb: None,
        cpu_only: true,
        unavailable: BTreeMap::new(),
    }
}

fn gpu_strategy(index: u32) -> impl Strategy<Value = GpuReading> {
    prop_oneof![
        3 => (1_000.0f64..100_000.0, 0.0f64..1.0, prop::option::of(0.0f64..0.05)).prop_map(
            move |(total, share, reserved)| {
                let reserved = reserved.map(|r| (total * r).floor());
                GpuReading {
                    index,
                    name: Some(format!("GPU {index}")),
                    vram_total_mb: Some(total),
                    vram_free_mb: Some((total - reserved.unwrap_or(0.0)) * share),
                    vram_reserved_mb: reserved,
                    unavailable: None,
                }
            }
        ),
        1 => Just(GpuReading {
            index,
            name: None,
            vram_total_mb: None,
            vram_free_mb: None,
            vram_reserved_mb: None,
            unavailable: Some("VRAM: GPU lost".into()),
        }),
    ]
}

fn snapshot_strategy() -> impl Strategy<Value = HardwareSnapshot> {
    (
        0u32..4,
        prop::option::of(1u32..256),
        prop::option::of(0.0f64..200_000.0),
        prop::option::of(0.0f64..=100.0),
        any::<bool>(),
    )
        .prop_flat_map(|(n, cores, ram_free, load, count_fails)| {
            let gpus: Vec<_> = (0..n).map(gpu_strategy).collect();
            (gpus, Just((n, cores, ram_free, load, count_fails)))
        })
        .prop_map(|(gpus, (n, cores, ram_free, load, count_fails))| {
            let mut s = bare_snapshot();
            s.cpu_cores = cores;
            s.ram_free_mb = ram_free;
            s.cpu_load_pct = load;
            if cores.is_none() {
                s.unavailable
                    .insert("cpu_cores".into(), "unreadable".into());
            }
            if ram_free.is_none() {
                s.unavailable
                    .insert("ram_free_mb".into(), "unreadable".into());
            }
            if n == 0 {
                // Either no NVIDIA GPU (CPU-only), or NVML could not count the GPUs.
                s.cpu_only = !count_fails;
                s.gpu_unavailable = Some(if count_fails {
                    "NVML could not count the GPUs: GPU lost".into()
                } else {
                    "no NVIDIA GPU (NVML library not found)".into()
                });
            } else {
                s.cpu_only = false;
                s.gpu_unavailable = None;
                s.gpus = gpus;
            }
            s
        })
}

fn catalog_strategy() -> impl Strategy<Value = ModelCatalog> {
    prop::collection::vec(
        (
            0usize..5,
            0.0f64..60_000.0,
            prop::option::of(1_000.0f64..1_000_000.0),
            any::<bool>(),
            prop::option::of(1u64..300_000),
        ),
        0..6,
    )
    .prop_map(|loads| {
        let mut c = ModelCatalog::new();
        for (id, mb, kv, ok, runtime_ctx) in loads {
            let model_id = format!("model-{id}");
            c.observe_load(&ModelLoad {
                id: None,
                ts_ms: None,
                model_id: model_id.clone(),
                model_required_vram_mb: mb,
                vram_reclaimable_mb_est: None,
                outcome: if ok {
                    LoadOutcome::Ok
                } else {
                    LoadOutcome::Failed
                },
                quantization: None,
                params_b: None,
                kv_cache_bytes_per_token: kv,
                session_id: None,
            });
            if let Some(n) = runtime_ctx.filter(|n| n % 3 == 0) {
                c.observe_context(&kora_model::ContextRequest {
                    id: None,
                    ts_ms: None,
                    model_id,
                    requested_context_tokens: n,
                    local_supported_context_tokens: Some(n),
                    session_id: None,
                    prompt_hash: None,
                });
            }
        }
        c
    })
}

/// Every recommendation, by name: the three fields and each model's supported context.
fn recommendations(p: &LocalCapabilityProfile) -> Vec<(String, Derived)> {
    let mut out = vec![
        ("model_vram".into(), p.max_recommended_model_vram_mb.clone()),
        ("context".into(), p.max_recommended_context_tokens.clone()),
        ("concurrency".into(), p.max_recommended_concurrency.clone()),
    ];
    for (id, m) in &p.models {
        out.push((id.clone(), m.supported_context_tokens.clone()));
    }
    out
}

fn assert_not_lower(before: &LocalCapabilityProfile, after: &LocalCapabilityProfile) {
    for ((name, b), (_, a)) in recommendations(before).iter().zip(recommendations(after)) {
        match (b.value, a.value) {
            (Some(b), Some(a)) => assert!(a >= b, "{name}: {b} became {a}"),
            (Some(b), None) => panic!("{name}: {b} became unknown: {a:?}"),
            _ => {}
        }
    }
}

/// A model of `mb` loaded by the runtime: the catalog learns of it, and the memory it takes
/// leaves the free memory of one pool (GPU `gpu`, or RAM on a CPU-only machine). `None` when
/// that pool has not that much free.
fn load_model(
    s: &HardwareSnapshot,
    models: &ModelCatalog,
    gpu: usize,
    mb: f64,
) -> Option<(HardwareSnapshot, ModelCatalog)> {
    let mut after = s.clone();
    let free = if s.cpu_only {
        &mut after.ram_free_mb
    } else {
        &mut after.gpus.get_mut(gpu)?.vram_free_mb
    };
    let f = (*free)?;
    if f < mb {
        return None;
    }
    *free = Some(f - mb);
    let mut catalog = models.clone();
    catalog.observe_load(&model_load("model-just-loaded", mb, LoadOutcome::Ok));
    Some((after, catalog))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// More free VRAM, on a bigger card (total grows too) or because another program let go
    /// of memory (total stays), never lowers a recommendation.
    #[test]
    fn more_free_vram_never_lowers_a_recommendation(
        s in snapshot_strategy(),
        models in catalog_strategy(),
        pick in any::<prop::sample::Index>(),
        extra in 0.0f64..50_000.0,
        bigger_card in any::<bool>(),
    ) {
        let before = compute_profile(&s, &models, &constants(), VERSION);
        let mut more = s.clone();
        let readable: Vec<usize> = (0..more.gpus.len())
            .filter(|i| more.gpus[*i].vram_free_mb.is_some())
            .collect();
        prop_assume!(!readable.is_empty());
        let g = &mut more.gpus[readable[pick.index(readable.len())]];
        if bigger_card {
            g.vram_free_mb = g.vram_free_mb.map(|f| f + extra);
            g.vram_total_mb = g.vram_total_mb.map(|t| t + extra);
        } else {
            let in_use = g.vram_total_mb.unwrap_or(0.0)
                - g.vram_reserved_mb.unwrap_or(0.0)
                - g.vram_free_mb.unwrap_or(0.0);
            g.vram_free_mb = g.vram_free_mb.map(|f| f + extra.min(in_use.max(0.0)));
        }
        let after = compute_profile(&more, &models, &constants(), VERSION);
        assert_not_lower(&before, &after);
        let fit_before = fit_check(&s, &models, extra, None, &constants());
        let fit_after = fit_check(&more, &models, extra, None, &constants());
        if fit_before.verdict == FitOutcome::Fits {
            prop_assert_eq!(fit_after.verdict, FitOutcome::Fits, "{:#?}", fit_after);
        }
    }

    /// Loading a model takes its memory from the free memory of a pool; the runtime's models
    /// are reclaimable, so neither the largest-model recommendation nor any model's supported
    /// context goes down (the loaded model is not subtracted twice).
    #[test]
    fn loading_a_model_never_lowers_the_largest_model_or_a_supported_context(
        s in snapshot_strategy(),
        models in catalog_strategy(),
        pick in any::<prop::sample::Index>(),
        mb in 0.0f64..40_000.0,
    ) {
        let gpu = pick.index(s.gpus.len().max(1));
        let Some((after, loaded)) = load_model(&s, &models, gpu, mb) else {
            return Ok(());
        };
        let p0 = compute_profile(&s, &models, &constants(), VERSION);
        let p1 = compute_profile(&after, &loaded, &constants(), VERSION);
        let (b, a) = (&p0.max_recommended_model_vram_mb, &p1.max_recommended_model_vram_mb);
        prop_assert_eq!(b.value.is_some(), a.value.is_some());
        if let (Some(b), Some(a)) = (b.value, a.value) {
            prop_assert!(a >= b, "{} became {}: {}", b, a, p1.max_recommended_model_vram_mb.from);
        }
        for (id, m) in &p0.models {
            let (b, a) = (&m.supported_context_tokens, &p1.models[id].supported_context_tokens);
            if let (Some(b), Some(a)) = (b.value, a.value) {
                prop_assert!(a >= b, "{}: {} became {}: {}", id, b, a, p1.models[id].supported_context_tokens.from);
            }
        }
    }

    /// The measured CPU load is the workload's own: it changes nothing in the profile.
    #[test]
    fn the_measured_cpu_load_never_changes_the_profile(
        s in snapshot_strategy(),
        models in catalog_strategy(),
        load in prop::option::of(0.0f64..=100.0),
    ) {
        let mut busy = s.clone();
        busy.cpu_load_pct = load;
        prop_assert_eq!(
            compute_profile(&s, &models, &constants(), VERSION),
            compute_profile(&busy, &models, &constants(), VERSION)
        );
    }

    #[test]
    fn more_free_ram_never_lowers_a_recommendation(
        s in snapshot_strategy(),
        models in catalog_strategy(),
        extra in 0.0f64..100_000.0,
    ) {
        prop_assume!(s.ram_free_mb.is_some());
        let before = compute_profile(&s, &models, &constants(), VERSION);
        let mut more = s.clone();
        more.ram_free_mb = more.ram_free_mb.map(|f| f + extra);
        let after = compute_profile(&more, &models, &constants(), VERSION);
        assert_not_lower(&before, &after);
    }

    #[test]
    fn a_gpu_that_can_be_read_again_never_lowers_a_recommendation(
        s in snapshot_strategy(),
        models in catalog_strategy(),
        pick in any::<prop::sample::Index>(),
    ) {
        let readable: Vec<usize> = (0..s.gpus.len())
            .filter(|i| s.gpus[*i].vram_free_mb.is_some())
            .collect();
        prop_assume!(!readable.is_empty());
        let mut lost = s.clone();
        let g = &mut lost.gpus[readable[pick.index(readable.len())]];
        g.vram_free_mb = None;
        g.vram_total_mb = None;
        g.unavailable = Some("VRAM: GPU lost".into());
        let before = compute_profile(&lost, &models, &constants(), VERSION);
        let after = compute_profile(&s, &models, &constants(), VERSION);
        assert_not_lower(&before, &after);
    }

    #[test]
    fn unavailable_inputs_give_unknown_never_numbers(
        s in snapshot_strategy(),
        models in catalog_strategy(),
    ) {
        let p = compute_profile(&s, &models, &constants(), VERSION);
        for (name, d) in recommendations(&p) {
            prop_assert!(d.value.is_some() != d.unknown.is_some(), "{}: {:?}", name, d);
            if let Some(v) = d.value {
                prop_assert!(v.is_finite() && v >= 0.0 && v.fract() == 0.0, "{}: {}", name, v);
            }
            if let Some(u) = &d.unknown {
                prop_assert!(!u.is_empty());
            }
            prop_assert!(!d.from.is_empty());
        }
        let any_vram = s.gpus.iter().any(|g| g.vram_free_mb.is_some());
        let pool = if s.cpu_only { s.ram_free_mb.is_some() } else { any_vram };
        prop_assert_eq!(p.max_recommended_model_vram_mb.value.is_some(), pool);
        // Concurrency needs the cores and, once a model has loaded, the memory for its KV
        // caches.
        let loaded = models.largest_loaded().is_some();
        prop_assert_eq!(
            p.max_recommended_concurrency.value.is_some(),
            s.cpu_cores.is_some() && (pool || !loaded)
        );
        prop_assert_eq!(p.max_recommended_context_tokens.value.is_some(), pool);
        for (id, m) in &p.models {
            let entry = &models.models[id];
            if entry.local_supported_context_tokens.is_none() {
                prop_assert_eq!(m.supported_context_tokens.value.is_some(), pool, "{}", id);
            }
        }
        if s.cpu_only {
            // A CPU-only machine sizes models from RAM, and says so.
            let d = &p.max_recommended_model_vram_mb;
            prop_assert!(d.from.contains("RAM"), "{}", d.from);
            if let Some(u) = &d.unknown {
                prop_assert!(u.contains("ram_free_mb is unavailable"), "{}", u);
            }
        }
        let cap = constants().max_context_tokens_cap as f64;
        prop_assert!(p.max_recommended_context_tokens.value.is_none_or(|v| v <= cap));
        prop_assert!(p.max_recommended_concurrency.value.is_none_or(|v| v >= 1.0));
    }

    #[test]
    fn samples_always_validate_and_never_invent_zero(s in snapshot_strategy()) {
        for x in snapshot_to_samples(&s) {
            prop_assert!(x.validate(TS).is_ok(), "{:?}", x);
        }
        let samples = snapshot_to_samples(&s);
        let total = samples.iter().find(|x| x.signal == Signal::GpuVramTotalMb && x.device.is_none());
        prop_assert_eq!(total.and_then(|x| x.value), s.gpu_vram_total_mb);
    }

    #[test]
    fn fit_agrees_with_the_profile(
        s in snapshot_strategy(),
        models in catalog_strategy(),
        share in 0.0f64..2.0,
    ) {
        let p = compute_profile(&s, &models, &constants(), VERSION);
        if let Some(max) = p.max_recommended_model_vram_mb.value {
            let all_read = s.gpus.iter().all(|g| g.vram_free_mb.is_some());
            let v = fit_check(&s, &models, max * share, None, &constants());
            if max * share <= max {
                prop_assert_eq!(v.verdict, FitOutcome::Fits, "{:#?}", v);
            } else if all_read && max * share > max + 1.0 {
                prop_assert_eq!(v.verdict, FitOutcome::DoesNotFit, "{:#?}", v);
            }
        }
    }
}
