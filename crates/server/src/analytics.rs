//! What the service derives from the log while it runs: time windows from samples, the
//! capability profile, and the policy engine's firings and suggestions.
//!
//! The engine folds the log in seq order. Its outputs are appended together with a cursor (the
//! seq of the last input they answer) in one transaction, so after a crash the service refolds
//! the inputs up to the cursor silently and answers the rest: no output is lost or written
//! twice. Time windows are closed from samples (the probe's and the clients') and appended to
//! the log as `window` records, which the engine then folds like any other input; replay from
//! the log alone is therefore exact.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use kora_model::{
    HardwareSnapshot, LocalCapabilityProfile, LogEntry, ProfileRecord, Record, RecordKind, Sample,
    WindowRecord,
};
use kora_policy::{CloudTiers, Engine, Thresholds};
use kora_probe::{ModelCatalog, Probe, compute_profile, snapshot_to_samples};
use kora_store::{Batch, ReadError, Store};
use kora_window::TimeWindows;

use crate::AppState;
use crate::error::AppError;

/// How many log entries the follower reads at a time.
const PAGE: usize = 1_000;

/// How many log entries the follower folds between two checkpoints of its state.
pub const CHECKPOINT_EVERY: u64 = 20_000;

/// What a checkpoint record holds (MessagePack with field names, in
/// [`kora_model::CheckpointRecord::state`]): the follower's state after folding the log up to
/// `up_to_seq`. A restart resumes from the newest checkpoint of the thresholds in force
/// instead of folding the whole log; replay still folds the whole log and ignores them.
///
/// Checkpoints written before thresholds 1.1.0 also hold a `cpu_load_p95` (the profile no
/// longer reads the CPU load); unknown fields are ignored, and such checkpoints belong to
/// thresholds 1.0.0, so they are skipped by version anyway.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct FollowerState {
    engine: kora_policy::EngineState,
    catalog: ModelCatalog,
    recorded_profile: Option<LocalCapabilityProfile>,
    #[serde(default)]
    fingerprints: BTreeMap<String, String>,
}

/// Why the derived state could not be rebuilt at start.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The log holds decisions made under the same thresholds version with other content: a
    /// version names one content for good (spec Section 10), so the service refuses to start
    /// rather than mix two rule sets under one name.
    #[error(
        "the log holds decisions made with thresholds version {version} whose fingerprint is {recorded}, but the thresholds in force under that version have fingerprint {now}: their content changed without a new version; give the changed file a new MINOR version"
    )]
    ThresholdsChanged {
        version: String,
        recorded: String,
        now: String,
    },
}

/// Derived state, rebuilt from the log at start.
#[derive(Debug)]
pub struct Analytics {
    inner: Mutex<Inner>,
    /// Serialises catch-up passes, so that outputs are appended in input order.
    follow: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Inner {
    engine: Engine,
    windows: TimeWindows,
    catalog: ModelCatalog,
    hardware: Option<HardwareSnapshot>,
    /// The last profile written to the log.
    recorded_profile: Option<LocalCapabilityProfile>,
    /// The last log seq folded into the engine.
    folded: u64,
    /// The `up_to_seq` of the newest checkpoint in the log.
    checkpointed: u64,
    /// The thresholds fingerprint of each version the log's decisions were made with (the
    /// first seen).
    fingerprints: BTreeMap<String, String>,
}

impl Analytics {
    /// Rebuilds the derived state from `store`: folds the log (outputs up to the engine cursor
    /// are already in the log and are dropped) and reopens the time windows of recent samples.
    pub fn rebuild(
        store: &Store,
        thresholds: Thresholds,
        tiers: CloudTiers,
    ) -> Result<Analytics, RebuildError> {
        Analytics::rebuild_from(store, thresholds, tiers, true)
    }

    /// [`Analytics::rebuild`], resuming from the newest usable checkpoint when `checkpoints`.
    fn rebuild_from(
        store: &Store,
        thresholds: Thresholds,
        tiers: CloudTiers,
        checkpoints: bool,
    ) -> Result<Analytics, RebuildError> {
        let cursor = store.engine_cursor()?;
        let window_ms = thresholds.window_ms();
        let grace_ms = thresholds.grace_ms();
        let resume = if checkpoints {
            latest_checkpoint(store, &thresholds, cursor)?
        } else {
            None
        };
        let mut inner = Inner {
            engine: Engine::new(thresholds.clone(), tiers.clone()),
            windows: TimeWindows::new(window_ms, grace_ms),
            catalog: ModelCatalog::new(),
            hardware: None,
            recorded_profile: None,
            folded: 0,
            checkpointed: 0,
            fingerprints: BTreeMap::new(),
        };
        let mut from = 0;
        if let Some((up_to, state)) = resume {
            inner.engine = Engine::with_state(thresholds, tiers, state.engine);
            inner.catalog = state.catalog;
            inner.recorded_profile = state.recorded_profile;
            inner.fingerprints = state.fingerprints;
            inner.folded = up_to;
            inner.checkpointed = up_to;
            from = up_to + 1;
        }
        // Fold the inputs whose outputs are already recorded.
        // Past the cursor only the thresholds each decision was made with are noted (the
        // follower folds the rest once serving): the last pass's decisions lie there.
        loop {
            let page = store.scan(from, PAGE)?;
            let Some(last) = page.last() else { break };
            from = last.seq + 1;
            for entry in &page {
                if entry.seq > cursor {
                    inner.note_thresholds(&entry.record);
                } else {
                    inner.fold(entry);
                }
            }
        }
        let version = inner.engine.thresholds().version().to_owned();
        let now = inner.engine.thresholds().fingerprint();
        if let Some(recorded) = inner.fingerprints.get(&version)
            && *recorded != now
        {
            return Err(RebuildError::ThresholdsChanged {
                version,
                recorded: recorded.clone(),
                now,
            });
        }
        inner.reopen_windows(store)?;
        Ok(Analytics {
            inner: Mutex::new(inner),
            follow: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves state that is at worst one record behind; the
        // next catch-up refolds from the log, so recovering the guard is sound.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The thresholds in force.
    pub fn thresholds(&self) -> Thresholds {
        self.lock().engine.thresholds().clone()
    }

    /// The latest hardware snapshot and the profile computed from it now.
    pub fn profile_now(&self) -> Option<ProfileRecord> {
        let inner = self.lock();
        let hardware = inner.hardware.clone()?;
        Some(ProfileRecord {
            ts_ms: hardware.ts_ms,
            profile: inner.profile_for(&hardware),
            hardware,
        })
    }

    /// The latest hardware snapshot.
    pub fn hardware(&self) -> Option<HardwareSnapshot> {
        self.lock().hardware.clone()
    }

    /// Runs `f` over the engine under the lock.
    pub fn with_engine<T>(&self, f: impl FnOnce(&Engine) -> T) -> T {
        f(&self.lock().engine)
    }

    /// Feeds durable samples into the time windows; returns the windows that closed.
    pub fn observe_samples(
        &self,
        samples: &[Sample],
        seqs: &[u64],
        now_ms: i64,
    ) -> Vec<WindowRecord> {
        let mut inner = self.lock();
        let mut closed = Vec::new();
        for (sample, seq) in samples.iter().zip(seqs) {
            let Some(value) = sample.value else { continue };
            let ts = sample.ts_ms.unwrap_or(now_ms);
            closed.extend(
                inner
                    .windows
                    .push(&sample.series_key(), *seq, ts, value)
                    .closed,
            );
        }
        closed
    }

    /// The models the runtime reported (loads and context requests), folded from the log.
    pub fn models(&self) -> ModelCatalog {
        self.lock().catalog.clone()
    }

    /// Takes a new hardware snapshot into account; answers the profile to record when a
    /// recommendation changed (or none was recorded yet).
    pub fn observe_hardware(&self, snapshot: HardwareSnapshot) -> Option<ProfileRecord> {
        let mut inner = self.lock();
        inner.hardware = Some(snapshot.clone());
        let profile = inner.profile_for(&snapshot);
        if inner
            .recorded_profile
            .as_ref()
            .is_some_and(|old| !materially_changed(old, &profile))
        {
            return None;
        }
        inner.recorded_profile = Some(profile.clone());
        Some(ProfileRecord {
            ts_ms: snapshot.ts_ms,
            profile,
            hardware: snapshot,
        })
    }

    /// Folds every log entry not folded yet and appends the outputs. Safe to call from many
    /// tasks: passes run one at a time.
    pub async fn catch_up(&self, state: &AppState) -> Result<(), AppError> {
        let _pass = self.follow.lock().await;
        loop {
            let from = self.lock().folded + 1;
            let store = state.store.clone();
            let page = tokio::task::spawn_blocking(move || store.scan(from, PAGE))
                .await
                .map_err(|e| AppError::Internal(e.to_string()))??;
            let Some(last) = page.last().map(|e| e.seq) else {
                return Ok(());
            };
            let mut outputs = Vec::new();
            let mut checkpoint = None;
            {
                let mut inner = self.lock();
                for entry in &page {
                    outputs.extend(inner.fold(entry));
                }
                if let Some(profile) = inner.profile_if_models_changed() {
                    outputs.push(Record::Profile(profile));
                }
                if inner.folded - inner.checkpointed >= CHECKPOINT_EVERY {
                    match inner.checkpoint(crate::now_ms()) {
                        Ok(c) => {
                            checkpoint = Some(inner.folded);
                            outputs.push(c);
                        }
                        Err(e) => tracing::warn!(error = %e, "no checkpoint of the engine state"),
                    }
                }
            }
            if !outputs.is_empty() {
                crate::ingest::append(
                    state,
                    "derived",
                    Batch::Derived {
                        records: outputs,
                        cursor: last,
                    },
                )
                .await?;
                if let Some(up_to) = checkpoint {
                    let mut inner = self.lock();
                    inner.checkpointed = inner.checkpointed.max(up_to);
                }
            }
        }
    }
}

/// The newest checkpoint of the thresholds in force at or below the engine cursor, decoded;
/// `None` when there is none (or it cannot be used: the whole log is folded then).
fn latest_checkpoint(
    store: &Store,
    thresholds: &Thresholds,
    cursor: u64,
) -> Result<Option<(u64, FollowerState)>, ReadError> {
    let fingerprint = thresholds.fingerprint();
    let mut before = None;
    // A few pages back at most: checkpoints of other thresholds are skipped.
    for _ in 0..4 {
        let page = store.recent(before, Some(RecordKind::Checkpoint), 16)?;
        let Some(last) = page.last() else {
            return Ok(None);
        };
        before = Some(last.seq);
        for e in &page {
            let Record::Checkpoint(c) = &e.record else {
                continue;
            };
            // Keyed by the fingerprint: the same version string with other content (a local,
            // unpinned set edited in place) never resumes a state folded under other rules.
            if c.up_to_seq > cursor
                || c.thresholds_version != thresholds.version()
                || c.thresholds_fingerprint.as_deref() != Some(fingerprint.as_str())
            {
                continue;
            }
            match rmp_serde::from_slice::<FollowerState>(&c.state) {
                Ok(state) if state.engine.thresholds_fingerprint() == fingerprint => {
                    return Ok(Some((c.up_to_seq, state)));
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(
                    seq = e.seq,
                    error = %err,
                    "a checkpoint does not decode; looking further back"
                ),
            }
        }
    }
    Ok(None)
}

impl Inner {
    /// A checkpoint record of the state after folding up to `self.folded`.
    fn checkpoint(&self, now_ms: i64) -> Result<Record, rmp_serde::encode::Error> {
        let state = FollowerState {
            engine: self.engine.state().clone(),
            catalog: self.catalog.clone(),
            recorded_profile: self.recorded_profile.clone(),
            fingerprints: self.fingerprints.clone(),
        };
        Ok(Record::Checkpoint(kora_model::CheckpointRecord {
            ts_ms: now_ms,
            up_to_seq: self.folded,
            thresholds_version: self.engine.thresholds().version().to_owned(),
            thresholds_fingerprint: Some(self.engine.thresholds().fingerprint()),
            state: rmp_serde::to_vec_named(&state)?,
        }))
    }

    /// Notes the thresholds a decision was made with (the first fingerprint of each version).
    fn note_thresholds(&mut self, record: &Record) {
        let decided_with = match record {
            Record::Firing(f) => Some((&f.thresholds_version, &f.thresholds_fingerprint)),
            Record::Suggestion(x) => Some((&x.thresholds_version, &x.thresholds_fingerprint)),
            Record::Suppression(x) => Some((&x.thresholds_version, &x.thresholds_fingerprint)),
            Record::MitigationOutcome(x) => {
                Some((&x.thresholds_version, &x.thresholds_fingerprint))
            }
            _ => None,
        };
        if let Some((version, Some(fp))) = decided_with {
            self.fingerprints
                .entry(version.clone())
                .or_insert_with(|| fp.clone());
        }
    }

    /// Folds one entry; returns the engine's outputs for it.
    fn fold(&mut self, entry: &LogEntry) -> Vec<Record> {
        self.folded = self.folded.max(entry.seq);
        self.note_thresholds(&entry.record);
        match &entry.record {
            Record::Profile(p) => self.recorded_profile = Some(p.profile.clone()),
            record => {
                self.catalog.observe_record(record);
            }
        }
        if Engine::is_derived_by_engine(&entry.record) {
            return Vec::new();
        }
        self.engine.step(entry)
    }

    fn profile_for(&self, hardware: &HardwareSnapshot) -> LocalCapabilityProfile {
        let t = self.engine.thresholds();
        compute_profile(hardware, &self.catalog, &t.file().profile, t.version())
    }

    /// After new model records: the profile to record, if it differs from the recorded one.
    fn profile_if_models_changed(&mut self) -> Option<ProfileRecord> {
        let hardware = self.hardware.clone()?;
        let profile = self.profile_for(&hardware);
        if self.recorded_profile.as_ref() == Some(&profile) {
            return None;
        }
        if self
            .recorded_profile
            .as_ref()
            .is_some_and(|old| !materially_changed(old, &profile))
        {
            return None;
        }
        self.recorded_profile = Some(profile.clone());
        Some(ProfileRecord {
            ts_ms: hardware.ts_ms,
            profile,
            hardware,
        })
    }

    /// Reopens the time windows: samples after the newest closed window of their series are
    /// fed again, so a window open at a crash or a stop is closed once, with all its samples.
    fn reopen_windows(&mut self, store: &Store) -> Result<(), ReadError> {
        let mut closed_until: std::collections::BTreeMap<String, i64> = Default::default();
        let mut before = None;
        // The newest closed window of each series, from the most recent window records.
        for _ in 0..20 {
            let page = store.recent(before, Some(RecordKind::Window), PAGE)?;
            let Some(last) = page.last() else { break };
            before = Some(last.seq);
            for e in &page {
                if let Record::Window(w) = &e.record
                    && w.window_kind == kora_window::WINDOW_KIND_TIME
                {
                    closed_until.entry(w.metric.clone()).or_insert(w.end_ms);
                }
            }
        }
        let horizon = crate::now_ms() - 24 * 3600 * 1000;
        for series in store.series()? {
            let from = closed_until.get(&series).copied().unwrap_or(horizon);
            // Streamed a chunk at a time, in no particular order: the windows still open at
            // the end are the same whatever the order (a sample is late only for a window that
            // closed, and the watermark ends at the newest sample either way); what closes
            // here is dropped, as before.
            store.each_sample(&series, from, i64::MAX, |seq, ts, value| {
                if let Some(v) = value {
                    // Windows that close here were already closed before the restart only if
                    // they end at or before `from`, and those samples were not fed.
                    let _ = self.windows.push(&series, seq, ts, v);
                }
            })?;
        }
        Ok(())
    }
}

/// Whether a profile differs enough from the recorded one to record it again: a field became
/// known or unknown, or a recommendation moved by 5% or more. Free VRAM moves a little with
/// every sample; a record per tick would drown the log.
///
/// The `from` strings are not compared: they embed this second's free memory, so comparing
/// them recorded a profile on almost every pass (about 9,000 a machine-week at a 60 s probe,
/// found by the machine-day simulator).
fn materially_changed(old: &LocalCapabilityProfile, new: &LocalCapabilityProfile) -> bool {
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

/// Appends closed windows to the log (they are inputs of the engine).
pub async fn append_windows(state: &AppState, windows: Vec<WindowRecord>) -> Result<(), AppError> {
    if windows.is_empty() {
        return Ok(());
    }
    let records = windows.into_iter().map(Record::Window).collect();
    crate::ingest::append(state, "windows", Batch::Records(records)).await?;
    Ok(())
}

/// Follows the log until the process ends: wakes on every durable append, and every second.
pub async fn follow(state: AppState) {
    loop {
        tokio::select! {
            () = state.appended.notified() => {},
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {},
        }
        if let Err(e) = state.analytics.catch_up(&state).await {
            tracing::warn!(error = ?e, "the engine could not catch up with the log; retrying");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
}

/// Samples the hardware every `interval` and ingests the readings like a client would.
///
/// The first snapshot is taken at once; the later ones on the interval's boundaries (multiples
/// of `interval` since the epoch), and every snapshot is stamped with its tick: the time
/// rounded to the interval. Stamps a few milliseconds late on every tick would cost the series
/// store about twice the bytes a sample (pco encodes a constant step in almost nothing).
///
/// Once an hour (and at the first tick) it also applies `retention` to the stored samples.
pub async fn sample(
    state: AppState,
    probe: Probe,
    interval: std::time::Duration,
    retention: kora_store::Retention,
) {
    let probe = Arc::new(Mutex::new(probe));
    let period_ms = i64::try_from(interval.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    let now = crate::now_ms();
    let to_boundary = u64::try_from(period_ms - now.rem_euclid(period_ms)).unwrap_or(0);
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + std::time::Duration::from_millis(to_boundary),
        interval,
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    let mut compacted_at: Option<tokio::time::Instant> = None;
    loop {
        if !std::mem::take(&mut first) {
            ticker.tick().await;
        }
        if compacted_at.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(3600)) {
            compacted_at = Some(tokio::time::Instant::now());
            compact(&state, retention).await;
        }
        let now = tick_of(crate::now_ms(), period_ms);
        let p = probe.clone();
        let snapshot = match tokio::task::spawn_blocking(move || {
            p.lock().unwrap_or_else(|e| e.into_inner()).snapshot(now)
        })
        .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "the hardware probe failed");
                continue;
            }
        };
        match ingest_snapshot(&state, snapshot, now).await {
            Ok(()) => {}
            // Shutting down, or a full queue: the next tick samples again.
            Err(e @ AppError::Unavailable { .. }) => {
                tracing::debug!(error = ?e, "hardware snapshot not recorded")
            }
            Err(e) => tracing::warn!(error = ?e, "could not record a hardware snapshot"),
        }
    }
}

/// Applies the sample retention, a bounded step at a time so writers never wait long.
async fn compact(state: &AppState, retention: kora_store::Retention) {
    let store = state.store.clone();
    let done = tokio::task::spawn_blocking(move || {
        let mut total = kora_store::Compacted::default();
        loop {
            let c = store.compact(crate::now_ms(), &retention)?;
            total.chunks_rolled_up += c.chunks_rolled_up;
            total.samples_rolled_up += c.samples_rolled_up;
            total.rollups_dropped += c.rollups_dropped;
            if !c.more {
                return Ok::<_, kora_store::WriteError>(total);
            }
        }
    })
    .await;
    match done {
        Ok(Ok(c)) if c != kora_store::Compacted::default() => tracing::info!(
            chunks = c.chunks_rolled_up,
            samples = c.samples_rolled_up,
            rollups_dropped = c.rollups_dropped,
            "old samples rolled up"
        ),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "sample retention failed; retrying in an hour"),
        Err(e) => tracing::error!(error = %e, "sample retention panicked"),
    }
}

/// `now_ms` rounded to the nearest multiple of `period_ms`.
fn tick_of(now_ms: i64, period_ms: i64) -> i64 {
    let period = period_ms.max(1);
    (now_ms + period / 2).div_euclid(period) * period
}

/// Records one snapshot: its samples, the windows they close, and the profile if it changed.
pub async fn ingest_snapshot(
    state: &AppState,
    snapshot: HardwareSnapshot,
    now_ms: i64,
) -> Result<(), AppError> {
    let samples = snapshot_to_samples(&snapshot);
    if !samples.is_empty() {
        let a = crate::ingest::append(state, "samples", Batch::Samples(samples.clone())).await?;
        let closed = state.analytics.observe_samples(&samples, &a.seqs, now_ms);
        append_windows(state, closed).await?;
    }
    if let Some(profile) = state.analytics.observe_hardware(snapshot) {
        crate::ingest::append(
            state,
            "profile",
            Batch::Records(vec![Record::Profile(profile)]),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kora_model::{Run, Substrate};

    fn run(i: u64, model: &str, latency: f64) -> Record {
        Record::Run(Run {
            id: None,
            ts_ms: Some(1_800_000_000_000 + i as i64 * 1000),
            run_id: format!("r{i}"),
            session_id: format!("s{}", i / 10),
            model_id: model.into(),
            substrate: Substrate::Local,
            prompt_hash: kora_model::prompt_hash("hello"),
            context_tokens: 4096,
            tokens_in: Some(100),
            tokens_out: Some(50),
            total_tokens: Some(150),
            model_latency_ms: latency,
            total_latency_ms: latency + 20.0,
            deterministic_stage_ms: 20.0,
            model_stage_ms: latency,
            validation_retry_count: u32::from(i % 7 == 0),
            budget_breach_count: 0,
            queue_wait_ms: None,
            prompt_tokens_sent: None,
            stages: None,
        })
    }

    /// Folds what the follower has not folded and appends its outputs (with a checkpoint when
    /// asked), as `catch_up` does.
    fn follow(store: &Store, inner: &mut Inner, checkpoint: bool) {
        let mut outputs = Vec::new();
        let mut last = inner.folded;
        for entry in store.scan(inner.folded + 1, usize::MAX).unwrap() {
            last = entry.seq;
            outputs.extend(inner.fold(&entry));
        }
        if checkpoint {
            outputs.push(inner.checkpoint(1_900_000_000_000).unwrap());
            inner.checkpointed = inner.folded;
        }
        store
            .append(
                1_900_000_000_000,
                Batch::Derived {
                    records: outputs,
                    cursor: last,
                },
            )
            .unwrap();
    }

    #[test]
    fn a_restart_from_a_checkpoint_has_the_state_of_a_full_fold() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.redb"), Default::default()).unwrap();
        let rebuild = |checkpoints| {
            Analytics::rebuild_from(
                &store,
                Thresholds::embedded(),
                CloudTiers::embedded(),
                checkpoints,
            )
            .unwrap()
            .inner
            .into_inner()
            .unwrap()
        };
        let add = |from: u64, to: u64| {
            let runs = (from..to)
                .map(|i| {
                    // One model slows down now and then, so the engine fires and suggests.
                    let slow = (i / 200) % 3 == 1;
                    let model = ["llama-8b", "qwen-7b"][(i % 2) as usize];
                    run(
                        i,
                        model,
                        if slow && model == "llama-8b" {
                            9_000.0
                        } else {
                            800.0
                        },
                    )
                })
                .collect();
            store
                .append(1_900_000_000_000, Batch::Records(runs))
                .unwrap();
        };
        add(0, 1_500);
        let mut inner = rebuild(false);
        follow(&store, &mut inner, true);
        let up_to = inner.folded;
        add(1_500, 2_500);
        follow(&store, &mut inner, false);
        assert!(
            store
                .scan(0, usize::MAX)
                .unwrap()
                .iter()
                .any(|e| matches!(e.record, Record::Firing(_))),
            "the log should hold decisions for the comparison to mean something"
        );

        let full = rebuild(false);
        let resumed = rebuild(true);
        assert_eq!(
            resumed.checkpointed, up_to,
            "the restart resumed from the checkpoint"
        );
        assert_eq!(full.checkpointed, 0);
        assert_eq!(resumed.folded, full.folded);
        assert_eq!(resumed.engine.state(), full.engine.state());
        assert_eq!(resumed.engine.state(), inner.engine.state());
        assert_eq!(resumed.catalog, full.catalog);
        assert_eq!(resumed.recorded_profile, full.recorded_profile);

        // Other thresholds: the checkpoint is not theirs, so the whole log is folded.
        let mut file = Thresholds::embedded().file().clone();
        file.version = "1.9.0".into();
        file.windows.runs_per_block = 20;
        let other = Analytics::rebuild_from(
            &store,
            Thresholds::from_file(file).unwrap(),
            CloudTiers::embedded(),
            true,
        )
        .unwrap()
        .inner
        .into_inner()
        .unwrap();
        assert_eq!(other.checkpointed, 0);
    }

    /// Issue 12: a checkpoint was resumed by version string alone, so a local thresholds file
    /// edited in place under the same version kept 10-run blocks after it said 20. Now the
    /// log's decisions record the fingerprint, and a version seen with another one is refused.
    #[test]
    fn the_same_version_with_other_content_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("v.redb"), Default::default()).unwrap();
        let custom = |runs_per_block: u32| {
            let mut file = Thresholds::embedded().file().clone();
            file.version = "1.9.0".into();
            file.windows.runs_per_block = runs_per_block;
            Thresholds::from_file(file).unwrap()
        };
        let runs = (0..60).map(|i| run(i, "llama-8b", 9_000.0)).collect();
        store
            .append(1_900_000_000_000, Batch::Records(runs))
            .unwrap();
        let mut inner = Analytics::rebuild_from(&store, custom(10), CloudTiers::embedded(), true)
            .unwrap()
            .inner
            .into_inner()
            .unwrap();
        follow(&store, &mut inner, true);

        // The same content starts, from its checkpoint, and has seen the decisions.
        let same = Analytics::rebuild_from(&store, custom(10), CloudTiers::embedded(), true)
            .unwrap()
            .inner
            .into_inner()
            .unwrap();
        assert_eq!(same.checkpointed, inner.folded);
        assert_eq!(
            same.fingerprints.get("1.9.0"),
            Some(&custom(10).fingerprint()),
            "decisions were made"
        );

        // Other content under the same version is refused, naming the version.
        let err = Analytics::rebuild_from(&store, custom(20), CloudTiers::embedded(), true)
            .err()
            .unwrap();
        assert!(
            matches!(err, RebuildError::ThresholdsChanged { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("1.9.0"), "{err}");
        assert!(err.to_string().contains("new MINOR version"), "{err}");
    }

    #[test]
    fn snapshots_are_stamped_with_their_tick() {
        assert_eq!(super::tick_of(1_700_000_004_998, 5000), 1_700_000_005_000);
        assert_eq!(super::tick_of(1_700_000_005_003, 5000), 1_700_000_005_000);
        assert_eq!(super::tick_of(1_700_000_002_499, 5000), 1_700_000_000_000);
        assert_eq!(super::tick_of(1_700_000_000_123, 1), 1_700_000_000_123);
    }
}
