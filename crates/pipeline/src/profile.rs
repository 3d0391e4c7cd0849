//! The capability profile as the service records it: computed from the latest hardware
//! snapshot and the models the log reported, recorded again only when a value moves.

use kora_model::{HardwareSnapshot, LocalCapabilityProfile, RecordKind};
use kora_policy::Thresholds;
use kora_probe::{ModelCatalog, compute_profile};
use kora_store::{ReadError, Store};

/// The profile of `hardware` for the models of `catalog`, under `thresholds`.
pub fn profile_of(
    thresholds: &Thresholds,
    catalog: &ModelCatalog,
    hardware: &HardwareSnapshot,
) -> LocalCapabilityProfile {
    compute_profile(
        hardware,
        catalog,
        &thresholds.file().profile,
        thresholds.version(),
    )
}

/// The models a store's log reported (loads and context requests), folded as the follower
/// folds them; an empty catalog for `None`. The CLI's offline `profile` and `fit` use it.
pub fn catalog_of(store: Option<&Store>) -> Result<ModelCatalog, ReadError> {
    let mut catalog = ModelCatalog::new();
    let Some(store) = store else {
        return Ok(catalog);
    };
    let mut entries = Vec::new();
    for kind in [RecordKind::ModelLoad, RecordKind::ContextRequest] {
        entries.extend(store.scan_kind(kind, 0, usize::MAX)?);
    }
    // In log order, as the follower sees them: the model loaded last is the current one.
    entries.sort_by_key(|e| e.seq);
    for e in &entries {
        catalog.observe_record(&e.record);
    }
    Ok(catalog)
}

/// Whether a profile differs enough from the recorded one to record it again: a field became
/// known or unknown, or a recommendation moved by 5% or more. Free VRAM moves a little with
/// every sample; a record per tick would drown the log.
///
/// The `from` strings are not compared: they embed this second's free memory, so comparing
/// them recorded a profile on almost every pass (about 9,000 a machine-week at a 60 s probe,
/// found by the machine-day simulator).
pub fn materially_changed(old: &LocalCapabilityProfile, new: &LocalCapabilityProfile) -> bool {
    let moved = |a: &kora_model::Derived, b: &kora_model::Derived| match (a.value, b.value) {
        (Some(x), Some(y)) => {
            let base = x.abs().max(1.0);
            (x - y).abs() / base >= 0.05
        }
        (None, None) => a.unknown != b.unknown,
        _ => true,
    };
    let model_changed = |a: &kora_model::ModelProfile, b: &kora_model::ModelProfile| {
        a.model_required_vram_mb != b.model_required_vram_mb
            || a.params_b != b.params_b
            || a.quantization != b.quantization
            || a.kv_cache_bytes_per_token != b.kv_cache_bytes_per_token
            || moved(&a.supported_context_tokens, &b.supported_context_tokens)
    };
    old.models.len() != new.models.len()
        || old
            .models
            .iter()
            .zip(&new.models)
            .any(|((ka, a), (kb, b))| ka != kb || model_changed(a, b))
        || moved(
            &old.max_recommended_model_vram_mb,
            &new.max_recommended_model_vram_mb,
        )
        || moved(
            &old.max_recommended_context_tokens,
            &new.max_recommended_context_tokens,
        )
        || moved(
            &old.max_recommended_concurrency,
            &new.max_recommended_concurrency,
        )
        || old.thresholds_version != new.thresholds_version
}
