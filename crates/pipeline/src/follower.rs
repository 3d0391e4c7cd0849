//! The follower: folds the log through the policy engine, in seq order, and appends the
//! engine's outputs together with a cursor (the seq of the last input they answer) in one
//! transaction. After a crash the follower refolds the inputs up to the cursor silently and
//! answers the rest: no output is lost or written twice.
//!
//! The same fold keeps the model catalog (for the capability profile) and the read models the
//! read endpoints answer from ([`ReadModels`]), and writes a checkpoint of all of it every
//! [`CHECKPOINT_EVERY`] entries, so that a restart resumes from the newest checkpoint instead
//! of folding the whole log. The checkpoint is kept beside the log, in the store's `state`
//! table, one per thresholds identity, replaced in place (it grows with history, and the log
//! never drops a record); it is written in the transaction of the outputs and the cursor it
//! answers. Earlier builds appended it to the log as a `checkpoint` record: a store they wrote
//! still resumes from the newest of those until the first checkpoint of its own.
//!
//! Each pass publishes what it folded to the live stream ([`Events`]): the streamed records
//! it read and the triggers that stopped firing ([`Resolutions`]), in log order; and, once its
//! outputs are durable, which decisions answer which inputs (for `?wait=decisions`).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use kora_model::{
    Decision, HardwareSnapshot, LocalCapabilityProfile, LogEntry, ProfileRecord, Record, RecordKind,
};
use kora_policy::{CloudTiers, Engine, Thresholds};
use kora_probe::ModelCatalog;
use kora_store::tables::K_FOLLOWER_CHECKPOINT;
use kora_store::{Batch, ReadError, Store};
use kora_window::{CloudRuns, ProductIndex, RunMetrics};

use crate::clock::Clock;
use crate::events::{Position, Resolution, Resolutions, StreamEvent, decision_of, is_streamed};
use crate::limits::Names;
use crate::profile::{materially_changed, profile_of};
use crate::write::{WriteFailure, Writer};

/// How many log entries the follower reads at a time.
const PAGE: usize = 1_000;

/// How many log entries the follower folds between two checkpoints of its state.
pub const CHECKPOINT_EVERY: u64 = 20_000;

/// What the read endpoints answer from, folded with the log: the Section 8 metrics and the
/// suggestion id index ([`ProductIndex`]), and the cloud runs ([`CloudRuns`]). Each costs a
/// small row per suggestion, firing, suppression, outcome or cloud run; none per local run.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReadModels {
    pub product: ProductIndex,
    pub cloud: CloudRuns,
    /// Per-model run histograms and token counters for `GET /metrics` (a small row per model
    /// label, at most [`kora_window::MAX_MODEL_LABELS`] + 1, per substrate). Checkpoints
    /// written before it existed decode with an empty one, which counts the runs after them.
    #[serde(default)]
    pub runs: RunMetrics,
}

impl ReadModels {
    fn push(&mut self, entry: &LogEntry) {
        self.product.push(entry);
        self.cloud.push(entry);
        self.runs.push(entry);
    }

    /// The read models of the log's entries up to `up_to` (for a checkpoint written before
    /// they were checkpointed): only the kinds they keep are read.
    fn of_prefix(store: &Store, up_to: u64) -> Result<ReadModels, ReadError> {
        let mut entries = Vec::new();
        for kind in [
            RecordKind::Suggestion,
            RecordKind::Feedback,
            RecordKind::Firing,
            RecordKind::Suppression,
            RecordKind::MitigationOutcome,
            RecordKind::Run,
        ] {
            let mut from = 0;
            loop {
                let page = store.scan_kind(kind, from, PAGE)?;
                let Some(last) = page.last().map(|e| e.seq) else {
                    break;
                };
                from = last + 1;
                entries.extend(page.into_iter().filter(|e| e.seq <= up_to));
                if last >= up_to {
                    break;
                }
            }
        }
        entries.sort_by_key(|e| e.seq);
        let mut read = ReadModels::default();
        for e in &entries {
            read.push(e);
        }
        Ok(read)
    }
}

/// What a checkpoint holds ([`Checkpoint::state`]; in a legacy log record, MessagePack with
/// field names in [`kora_model::CheckpointRecord::state`]): the follower's state after folding
/// the log up to `up_to_seq`. A restart resumes from the newest checkpoint of the thresholds in
/// force instead of folding the whole log; replay still folds the whole log and ignores them.
///
/// Checkpoints written before thresholds 1.1.0 also hold a `cpu_load_p95` (the profile no
/// longer reads the CPU load); unknown fields are ignored, and such checkpoints belong to
/// thresholds 1.0.0, so they are skipped by version anyway. Checkpoints written before the
/// read models existed have no `read`: the read models are then folded from the log's
/// suggestions, feedback, firings, suppressions, outcomes and runs once, at start.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct FollowerState {
    engine: kora_policy::EngineState,
    catalog: ModelCatalog,
    recorded_profile: Option<LocalCapabilityProfile>,
    #[serde(default)]
    fingerprints: BTreeMap<String, String>,
    #[serde(default)]
    read: Option<ReadModels>,
    /// Absent in checkpoints written before the stream followed resolutions.
    #[serde(default)]
    resolutions: Option<Resolutions>,
    /// Absent in checkpoints written before the follower kept the names: they are then read
    /// from the log up to the checkpoint once, at start ([`Names::load`]).
    #[serde(default)]
    names: Option<Names>,
}

/// The follower's checkpoint as kept in the store's `state` table under [`checkpoint_key`]:
/// MessagePack with field names, behind the store's CRC-32.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Checkpoint {
    /// When it was written (the service's clock).
    ts_ms: i64,
    up_to_seq: u64,
    thresholds_version: String,
    thresholds_fingerprint: String,
    state: FollowerState,
}

/// The `state` table key of the checkpoint folded under `thresholds`: one per version and
/// fingerprint, replaced by each newer checkpoint of the same thresholds.
fn checkpoint_key(thresholds: &Thresholds) -> String {
    format!(
        "{K_FOLLOWER_CHECKPOINT}{}/{}",
        thresholds.version(),
        thresholds.fingerprint()
    )
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

/// Why a catch-up pass stopped; the next pass starts again from the last folded entry.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("cannot read the log: {0}")]
    Read(#[from] ReadError),
    #[error("cannot append the derived records: {0}")]
    Write(#[from] WriteFailure),
    #[error("the read task failed: {0}")]
    Task(String),
}

/// The follower's state, rebuilt from the log at start.
#[derive(Debug)]
pub struct Follower {
    inner: Mutex<Inner>,
    /// Serialises catch-up passes, so that outputs are appended in input order.
    pass: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Inner {
    engine: Engine,
    catalog: ModelCatalog,
    hardware: Option<HardwareSnapshot>,
    /// The last profile written to the log.
    recorded_profile: Option<LocalCapabilityProfile>,
    /// The last log seq folded into the engine.
    folded: u64,
    /// The `up_to_seq` of the newest checkpoint stored (or resumed from).
    checkpointed: u64,
    /// Log entries folded since the newest checkpoint was taken (or resumed from). Counted in
    /// entries, not seqs: samples take seqs but are not log entries, and counting seqs wrote a
    /// checkpoint every 20,000 samples (43 a day at ten signals a second: benches/README.md).
    since_checkpoint: u64,
    /// The thresholds fingerprint of each version the log's decisions were made with (the
    /// first seen).
    fingerprints: BTreeMap<String, String>,
    read: ReadModels,
    /// Which triggers fire, and the latest resolutions (the stream's `resolved` events).
    resolutions: Resolutions,
    /// The resolutions of the entries folded since the pass last took them.
    fresh: Vec<Resolution>,
    /// What the cardinality limits need of the log, kept for the checkpoints: the pipeline's
    /// [`crate::Cardinality`] keeps the live names from the batches it admits.
    names: Names,
}

impl Follower {
    /// Rebuilds the follower's state from `store`: folds the log up to the engine cursor (the
    /// outputs of those entries are already in the log and are dropped), resuming from the
    /// newest usable checkpoint when `checkpoints`.
    pub fn rebuild(
        store: &Store,
        thresholds: Thresholds,
        tiers: CloudTiers,
        checkpoints: bool,
    ) -> Result<Follower, RebuildError> {
        Ok(Follower::rebuild_with_names(store, thresholds, tiers, checkpoints)?.0)
    }

    /// [`Follower::rebuild`], and the names of the whole log for the cardinality limits
    /// ([`crate::Cardinality::with_names`]): those of the checkpoint resumed from, with the
    /// entries after it folded in the same pass (past the engine cursor too).
    pub fn rebuild_with_names(
        store: &Store,
        thresholds: Thresholds,
        tiers: CloudTiers,
        checkpoints: bool,
    ) -> Result<(Follower, Names), RebuildError> {
        let cursor = store.engine_cursor()?;
        let resume = if checkpoints {
            latest_checkpoint(store, &thresholds, cursor)?
        } else {
            None
        };
        let mut inner = Inner {
            engine: Engine::new(thresholds.clone(), tiers.clone()),
            catalog: ModelCatalog::new(),
            hardware: None,
            recorded_profile: None,
            folded: 0,
            checkpointed: 0,
            since_checkpoint: 0,
            fingerprints: BTreeMap::new(),
            read: ReadModels::default(),
            resolutions: Resolutions::default(),
            fresh: Vec::new(),
            names: Names::default(),
        };
        let mut from = 0;
        if let Some((up_to, state)) = resume {
            inner.engine = Engine::with_state(thresholds, tiers, state.engine);
            inner.catalog = state.catalog;
            inner.recorded_profile = state.recorded_profile;
            inner.fingerprints = state.fingerprints;
            inner.read = match state.read {
                Some(read) => read,
                None => ReadModels::of_prefix(store, up_to)?,
            };
            inner.resolutions = match state.resolutions {
                Some(r) => r,
                None => Resolutions::of_engine(&inner.engine),
            };
            inner.names = match state.names {
                Some(names) => names,
                None => {
                    // Read once: the first pass writes a checkpoint that holds them.
                    inner.since_checkpoint = CHECKPOINT_EVERY;
                    Names::load(store, Some(up_to))?
                }
            };
            inner.folded = up_to;
            inner.checkpointed = up_to;
            from = up_to + 1;
        }
        // Fold the inputs whose outputs are already recorded.
        // Past the cursor only the thresholds each decision was made with are noted (the
        // follower folds the rest once serving): the last pass's decisions lie there. The
        // names are folded to the end, in a copy.
        let mut past_cursor: Option<Names> = None;
        loop {
            let page = store.scan(from, PAGE)?;
            let Some(last) = page.last() else { break };
            from = last.seq + 1;
            for entry in &page {
                if entry.seq > cursor {
                    inner.note_thresholds(&entry.record);
                    past_cursor
                        .get_or_insert_with(|| inner.names.clone())
                        .push(entry);
                } else {
                    inner.fold(entry);
                }
            }
        }
        let names = past_cursor.unwrap_or_else(|| inner.names.clone());
        // Those resolutions were published before the restart; they are kept for resumes.
        inner.fresh.clear();
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
        Ok((
            Follower {
                inner: Mutex::new(inner),
                pass: tokio::sync::Mutex::new(()),
            },
            names,
        ))
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

    /// The last log seq folded.
    pub fn folded(&self) -> u64 {
        self.lock().folded
    }

    /// The latest hardware snapshot and the profile computed from it now.
    pub fn profile_now(&self) -> Option<ProfileRecord> {
        let inner = self.lock();
        let hardware = inner.hardware.clone()?;
        Some(ProfileRecord {
            ts_ms: hardware.ts_ms,
            profile: profile_of(inner.engine.thresholds(), &inner.catalog, &hardware),
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

    /// Runs `f` over the read models under the lock. They hold the log up to
    /// [`Follower::folded`].
    pub fn with_read<T>(&self, f: impl FnOnce(&ReadModels) -> T) -> T {
        f(&self.lock().read)
    }

    /// The kept resolutions after `after` and at or before `through` (the stream's backfill).
    pub fn resolutions(&self, after: Position, through: Position) -> Vec<Resolution> {
        self.lock().resolutions.between(after, through)
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
        let profile = profile_of(inner.engine.thresholds(), &inner.catalog, &snapshot);
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

    /// Folds every log entry not folded yet and appends the outputs with their cursor. Safe to
    /// call from many tasks: passes run one at a time. Returns once the whole log is folded.
    pub async fn catch_up(&self, writer: &Writer) -> Result<(), FollowError> {
        let _pass = self.pass.lock().await;
        loop {
            let from = self.lock().folded + 1;
            let store = writer.store().clone();
            let page = tokio::task::spawn_blocking(move || store.scan(from, PAGE))
                .await
                .map_err(|e| FollowError::Task(e.to_string()))??;
            let Some(last) = page.last().map(|e| e.seq) else {
                return Ok(());
            };
            let mut outputs = Vec::new();
            // The input seq each output answers.
            let mut origins = Vec::new();
            let mut streamed = Vec::new();
            let mut decided: Vec<(u64, Decision)> = Vec::new();
            let mut checkpoint = None;
            let mut state = Vec::new();
            {
                let mut inner = self.lock();
                for entry in &page {
                    let out = inner.fold(entry);
                    origins.extend(std::iter::repeat_n(entry.seq, out.len()));
                    outputs.extend(out);
                    if is_streamed(entry.record.kind()) {
                        streamed.push(StreamEvent::Record(Box::new(entry.clone())));
                    }
                    for r in inner.fresh.drain(..) {
                        decided.push((r.seq, r.decision()));
                        streamed.push(StreamEvent::Resolved(r));
                    }
                }
                if let Some(profile) = inner.profile_if_models_changed() {
                    outputs.push(Record::Profile(profile));
                    origins.push(last);
                }
                if inner.since_checkpoint >= CHECKPOINT_EVERY {
                    match inner.checkpoint(writer.clock().as_ref()) {
                        Ok(c) => {
                            checkpoint = Some(inner.folded);
                            inner.since_checkpoint = 0;
                            state.push(c);
                        }
                        Err(e) => tracing::warn!(error = %e, "no checkpoint of the engine state"),
                    }
                }
            }
            writer.events().publish(last, streamed);
            if !outputs.is_empty() || !state.is_empty() {
                let pending: Vec<(usize, u64, Decision)> = outputs
                    .iter()
                    .zip(&origins)
                    .enumerate()
                    .filter_map(|(i, (r, &origin))| Some((i, origin, decision_of(0, r)?)))
                    .collect();
                let appended = writer
                    .append(
                        "derived",
                        Batch::Derived {
                            records: outputs,
                            cursor: last,
                            state,
                        },
                    )
                    .await?;
                for (i, origin, mut d) in pending {
                    if let Some(&seq) = appended.seqs.get(i) {
                        d.seq = seq;
                        decided.push((origin, d));
                    }
                }
                if let Some(up_to) = checkpoint {
                    let mut inner = self.lock();
                    inner.checkpointed = inner.checkpointed.max(up_to);
                }
            }
            writer.events().answer(last, decided);
        }
    }
}

/// The newest checkpoint of the thresholds in force at or below the engine cursor, decoded;
/// `None` when there is none (or it cannot be used: the whole log is folded then). The
/// `state` table's checkpoint comes first; a store without one (written by a build that kept
/// checkpoints in the log), or whose one is damaged, resumes from the log's `checkpoint`
/// records.
fn latest_checkpoint(
    store: &Store,
    thresholds: &Thresholds,
    cursor: u64,
) -> Result<Option<(u64, FollowerState)>, ReadError> {
    let fingerprint = thresholds.fingerprint();
    let key = checkpoint_key(thresholds);
    match store.state(&key) {
        Ok(Some(bytes)) => match rmp_serde::from_slice::<Checkpoint>(&bytes) {
            Ok(c)
                if c.up_to_seq <= cursor
                    && c.thresholds_version == thresholds.version()
                    && c.thresholds_fingerprint == fingerprint
                    && c.state.engine.thresholds_fingerprint() == fingerprint =>
            {
                return Ok(Some((c.up_to_seq, c.state)));
            }
            Ok(c) => tracing::warn!(
                key,
                up_to_seq = c.up_to_seq,
                engine_cursor = cursor,
                "the stored checkpoint does not match the log or the thresholds; not resumed"
            ),
            Err(err) => tracing::warn!(
                key,
                error = %err,
                "the stored checkpoint does not decode; not resumed"
            ),
        },
        Ok(None) => {}
        // Damaged bytes are never resumed: the fold starts from an older checkpoint, or the
        // log's first entry, and the next checkpoint replaces them.
        Err(err @ (ReadError::Corrupt { .. } | ReadError::Decode { .. })) => tracing::warn!(
            key,
            error = %err,
            "the stored checkpoint is damaged; not resumed"
        ),
        Err(err) => return Err(err),
    }
    latest_logged_checkpoint(store, thresholds, cursor)
}

/// The newest `checkpoint` record of the thresholds in force in the log at or below the engine
/// cursor (builds before the `state` table's checkpoint appended them there), decoded.
fn latest_logged_checkpoint(
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
    /// The checkpoint of the state after folding up to `self.folded`: its `state` table key
    /// and value.
    fn checkpoint(&self, clock: &dyn Clock) -> Result<(String, Vec<u8>), rmp_serde::encode::Error> {
        let state = FollowerState {
            engine: self.engine.state().clone(),
            catalog: self.catalog.clone(),
            recorded_profile: self.recorded_profile.clone(),
            fingerprints: self.fingerprints.clone(),
            read: Some(self.read.clone()),
            resolutions: Some(self.resolutions.clone()),
            names: Some(self.names.clone()),
        };
        let thresholds = self.engine.thresholds();
        let checkpoint = Checkpoint {
            ts_ms: clock.now_ms(),
            up_to_seq: self.folded,
            thresholds_version: thresholds.version().to_owned(),
            thresholds_fingerprint: thresholds.fingerprint(),
            state,
        };
        Ok((
            checkpoint_key(thresholds),
            rmp_serde::to_vec_named(&checkpoint)?,
        ))
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
        self.since_checkpoint += 1;
        self.note_thresholds(&entry.record);
        self.read.push(entry);
        self.names.push(entry);
        match &entry.record {
            Record::Profile(p) => self.recorded_profile = Some(p.profile.clone()),
            record => {
                self.catalog.observe_record(record);
            }
        }
        if Engine::is_derived_by_engine(&entry.record) {
            return Vec::new();
        }
        let outputs = self.engine.step(entry);
        if !matches!(entry.record, Record::Checkpoint(_)) {
            let ended = self.resolutions.after(&self.engine, entry.seq, &outputs);
            self.fresh.extend(ended);
        }
        outputs
    }

    /// After new model records: the profile to record, if it differs from the recorded one.
    fn profile_if_models_changed(&mut self) -> Option<ProfileRecord> {
        let hardware = self.hardware.clone()?;
        let profile = profile_of(self.engine.thresholds(), &self.catalog, &hardware);
        if self
            .recorded_profile
            .as_ref()
            .is_some_and(|old| old == &profile || !materially_changed(old, &profile))
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

    /// How a test writes the follower's checkpoint.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Checkpointing {
        None,
        /// Into the store's `state` table, as `catch_up` does.
        State,
        /// As a `checkpoint` record in the log, as builds before the `state` table did.
        Logged,
    }

    /// Folds what the follower has not folded and appends its outputs (with a checkpoint when
    /// asked), as `catch_up` does.
    fn follow(store: &Store, inner: &mut Inner, checkpoint: Checkpointing) {
        let mut outputs = Vec::new();
        let mut state = Vec::new();
        let mut last = inner.folded;
        for entry in store.scan(inner.folded + 1, usize::MAX).unwrap() {
            last = entry.seq;
            outputs.extend(inner.fold(&entry));
        }
        match checkpoint {
            Checkpointing::None => {}
            Checkpointing::State => {
                state.push(
                    inner
                        .checkpoint(&crate::ManualClock::new(1_900_000_000_000))
                        .unwrap(),
                );
            }
            Checkpointing::Logged => outputs.push(logged_checkpoint(inner)),
        }
        if checkpoint != Checkpointing::None {
            inner.checkpointed = inner.folded;
        }
        store
            .append(
                1_900_000_000_000,
                Batch::Derived {
                    records: outputs,
                    cursor: last,
                    state,
                },
            )
            .unwrap();
    }

    /// A checkpoint record of the state after folding up to `inner.folded`, as builds before
    /// the `state` table's checkpoint appended to the log.
    fn logged_checkpoint(inner: &Inner) -> Record {
        let state = FollowerState {
            engine: inner.engine.state().clone(),
            catalog: inner.catalog.clone(),
            recorded_profile: inner.recorded_profile.clone(),
            fingerprints: inner.fingerprints.clone(),
            read: Some(inner.read.clone()),
            resolutions: Some(inner.resolutions.clone()),
            // Builds that logged their checkpoints kept no names.
            names: None,
        };
        Record::Checkpoint(kora_model::CheckpointRecord {
            ts_ms: 1_900_000_000_000,
            up_to_seq: inner.folded,
            thresholds_version: inner.engine.thresholds().version().to_owned(),
            thresholds_fingerprint: Some(inner.engine.thresholds().fingerprint()),
            state: rmp_serde::to_vec_named(&state).unwrap(),
        })
    }

    /// Runs that make the engine fire and suggest: one model slows down now and then.
    fn runs(from: u64, to: u64) -> Vec<Record> {
        (from..to)
            .map(|i| {
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
            .collect()
    }

    fn rebuilt(store: &Store, checkpoints: bool) -> Inner {
        Follower::rebuild(
            store,
            Thresholds::embedded(),
            CloudTiers::embedded(),
            checkpoints,
        )
        .unwrap()
        .inner
        .into_inner()
        .unwrap()
    }

    /// The state a restart resumed equals that of a full fold of the same log.
    fn assert_same_state(resumed: &Inner, full: &Inner) {
        assert_eq!(full.checkpointed, 0);
        assert_eq!(resumed.folded, full.folded);
        assert_eq!(resumed.engine.state(), full.engine.state());
        assert_eq!(resumed.catalog, full.catalog);
        assert_eq!(resumed.recorded_profile, full.recorded_profile);
        assert_eq!(resumed.fingerprints, full.fingerprints);
        assert_eq!(resumed.read, full.read);
        assert_eq!(resumed.resolutions, full.resolutions);
        assert_eq!(resumed.names, full.names);
    }

    /// The keys of the store's `state` table, read through redb once the store is closed.
    fn state_keys(path: &std::path::Path) -> Vec<String> {
        use redb::{ReadableDatabase, ReadableTable};
        let db = redb::Database::open(path).unwrap();
        let rtx = db.begin_read().unwrap();
        let table = rtx.open_table(kora_store::tables::STATE).unwrap();
        table
            .iter()
            .unwrap()
            .map(|item| item.unwrap().0.value().to_owned())
            .collect()
    }

    /// Captures what `tracing` writes while `f` runs on this thread.
    fn warnings<T>(f: impl FnOnce() -> T) -> (T, String) {
        #[derive(Clone, Default)]
        struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let out = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        (out, text)
    }

    #[test]
    fn a_restart_from_a_checkpoint_has_the_state_of_a_full_fold() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.redb"), Default::default()).unwrap();
        let rebuild = |checkpoints| rebuilt(&store, checkpoints);
        let add = |from: u64, to: u64| {
            store
                .append(1_900_000_000_000, Batch::Records(runs(from, to)))
                .unwrap();
        };
        add(0, 1_500);
        let mut inner = rebuild(false);
        follow(&store, &mut inner, Checkpointing::State);
        let up_to = inner.folded;
        add(1_500, 2_500);
        follow(&store, &mut inner, Checkpointing::None);
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
        assert_eq!(
            resumed.read, full.read,
            "the read models resumed from the checkpoint are those of a full fold"
        );
        assert!(
            resumed.read.product.rows() > 0,
            "the log's decisions are in the read models"
        );
        // The stream's resolved events: the same ones, at the same positions, whether the
        // restart resumed from the checkpoint (which carries those before it) or refolded all.
        assert_eq!(resumed.resolutions, full.resolutions);
        assert_eq!(resumed.resolutions, inner.resolutions);
        let resolved = full
            .resolutions
            .between(Position::START, Position::through(u64::MAX));
        assert!(
            resolved.len() >= 2,
            "the slow spells end, so latency resolves: {resolved:?}"
        );
        assert!(
            resolved
                .iter()
                .all(|r| r.status.category == kora_model::Category::Latency
                    && r.status.scope == "llama-8b"
                    && r.status.last_firing_id.is_some())
        );
        assert!(
            resolved.iter().any(|r| r.seq < up_to) && resolved.iter().any(|r| r.seq > up_to),
            "resolutions on both sides of the checkpoint: {up_to} {resolved:?}"
        );

        // Other thresholds: the checkpoint is not theirs, so the whole log is folded.
        let mut file = Thresholds::embedded().file().clone();
        file.version = "1.9.0".into();
        file.windows.runs_per_block = 20;
        let other = Follower::rebuild(
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
        let mut inner = Follower::rebuild(&store, custom(10), CloudTiers::embedded(), true)
            .unwrap()
            .inner
            .into_inner()
            .unwrap();
        follow(&store, &mut inner, Checkpointing::State);

        // The same content starts, from its checkpoint, and has seen the decisions.
        let same = Follower::rebuild(&store, custom(10), CloudTiers::embedded(), true)
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
        let err = Follower::rebuild(&store, custom(20), CloudTiers::embedded(), true)
            .err()
            .unwrap();
        assert!(
            matches!(err, RebuildError::ThresholdsChanged { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("1.9.0"), "{err}");
        assert!(err.to_string().contains("new MINOR version"), "{err}");
    }

    /// Samples take seqs but are not log entries: a day of ten signals a second (864,000 seqs)
    /// wrote 43 checkpoints when they were counted in seqs. They are counted in entries.
    #[test]
    fn checkpoints_are_counted_in_log_entries_not_in_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(
            Store::open(&dir.path().join("s.redb"), Default::default()).unwrap(),
        );
        let t0 = 1_900_000_000_000;
        let samples: Vec<kora_model::Sample> = (0..2 * CHECKPOINT_EVERY as i64)
            .map(|i| kora_model::Sample::reading(kora_model::Signal::RamFreeMb, t0 + i, 1.0))
            .collect();
        for b in samples.chunks(10_000) {
            store.append(t0, Batch::Samples(b.to_vec())).unwrap();
        }
        store.append(t0, Batch::Records(runs(0, 100))).unwrap();
        assert!(store.stats().unwrap().last_seq.unwrap() > 2 * CHECKPOINT_EVERY);
        let follower =
            Follower::rebuild(&store, Thresholds::embedded(), CloudTiers::embedded(), true)
                .unwrap();
        let writer = Writer::new(
            store.clone(),
            std::sync::Arc::new(crate::ManualClock::new(t0)),
            crate::Cardinality::load(&store, crate::Limits::default()).unwrap(),
        );
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(follower.catch_up(&writer))
            .unwrap();
        let live = follower.inner.into_inner().unwrap();
        assert_eq!(live.checkpointed, 0, "100 runs are far from a checkpoint");
        assert!(live.since_checkpoint >= 100);
        let key = checkpoint_key(&Thresholds::embedded());
        assert!(store.state(&key).unwrap().is_none());
    }

    /// Issue 14: a checkpoint record was appended to the log every 20,000 entries and never
    /// dropped, most of a year's data directory. Now the one checkpoint of the thresholds in
    /// force is replaced in the `state` table, and a restart resumes from it.
    #[test]
    fn checkpoints_are_kept_beside_the_log_one_per_thresholds_and_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.redb");
        let store = std::sync::Arc::new(Store::open(&path, Default::default()).unwrap());
        let total = 2 * CHECKPOINT_EVERY + 5_000;
        for from in (0..total).step_by(5_000) {
            store
                .append(1_900_000_000_000, Batch::Records(runs(from, from + 5_000)))
                .unwrap();
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let follower =
            Follower::rebuild(&store, Thresholds::embedded(), CloudTiers::embedded(), true)
                .unwrap();
        let writer = Writer::new(
            store.clone(),
            std::sync::Arc::new(crate::ManualClock::new(1_900_000_000_000)),
            crate::Cardinality::load(&store, crate::Limits::default()).unwrap(),
        );
        rt.block_on(follower.catch_up(&writer)).unwrap();
        let live = follower.inner.into_inner().unwrap();
        assert!(
            live.checkpointed >= 2 * CHECKPOINT_EVERY,
            "two checkpoints were due: {}",
            live.checkpointed
        );

        // No checkpoint record in the log; the state table's is the newest one.
        assert!(
            store
                .recent(None, Some(RecordKind::Checkpoint), 10)
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .scan(0, usize::MAX)
                .unwrap()
                .iter()
                .all(|e| !matches!(e.record, Record::Checkpoint(_)))
        );
        let key = checkpoint_key(&Thresholds::embedded());
        let stored: Checkpoint =
            rmp_serde::from_slice(&store.state(&key).unwrap().unwrap()).unwrap();
        assert_eq!(stored.up_to_seq, live.checkpointed);
        assert_eq!(stored.thresholds_version, Thresholds::embedded().version());
        assert!(
            stored.up_to_seq <= store.engine_cursor().unwrap(),
            "written with the cursor it answers"
        );

        let full = rebuilt(&store, false);
        let resumed = rebuilt(&store, true);
        assert_eq!(resumed.checkpointed, live.checkpointed, "resumed from it");
        assert_same_state(&resumed, &full);
        assert_eq!(resumed.engine.state(), live.engine.state());
        assert!(resumed.read.product.rows() > 0, "the log holds decisions");

        drop((writer, full, resumed));
        std::sync::Arc::into_inner(store).unwrap().shutdown();
        assert_eq!(
            state_keys(&path),
            vec![key],
            "one checkpoint for the one thresholds fingerprint, replaced in place"
        );
    }

    /// Session events for sessions `ids`, at `at` seconds after the runs' first time.
    fn sessions(ids: std::ops::Range<u64>, at: i64, started: bool) -> Vec<Record> {
        ids.map(|i| {
            let e = kora_model::SessionEvent {
                id: None,
                ts_ms: Some(1_800_000_000_000 + at * 1000),
                session_id: format!("s{i}"),
            };
            if started {
                Record::SessionStarted(e)
            } else {
                Record::SessionEnded(e)
            }
        })
        .collect()
    }

    /// Issue 14: a start read a year of model and session events to count the models and the
    /// open sessions. The follower keeps those names and checkpoints them; a start folds only
    /// the log after the checkpoint, past the engine cursor too, and has the names a read of
    /// the whole store has, from a checkpoint of the `state` table, from one logged by an
    /// earlier build (without names: read up to it), or from none.
    #[test]
    fn a_start_has_the_names_of_the_whole_log_from_a_checkpoint_and_the_log_after_it() {
        for checkpointing in [
            Checkpointing::State,
            Checkpointing::Logged,
            Checkpointing::None,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("n.redb"), Default::default()).unwrap();
            let add = |records: Vec<Record>| {
                store
                    .append(1_900_000_000_000, Batch::Records(records))
                    .unwrap();
            };
            // Runs i name session s{i/10}: s0..s150 over 1,500 runs.
            add(sessions(0..100, 0, true));
            add(runs(0, 1_500));
            add(sessions(0..40, 1_500, false));
            let mut inner = rebuilt(&store, false);
            follow(&store, &mut inner, checkpointing);
            // Followed, after the checkpoint: more sessions start and end, runs touch them.
            add(sessions(100..200, 1_500, true));
            add(sessions(40..60, 1_600, false));
            add(runs(1_500, 2_000));
            follow(&store, &mut inner, Checkpointing::None);
            // Past the engine cursor: not followed yet.
            add(sessions(60..70, 2_100, false));
            add(sessions(0..5, 2_100, true));
            add(runs(2_000, 2_100));
            assert!(store.engine_cursor().unwrap() < store.stats().unwrap().last_seq.unwrap());

            let whole = Names::load(&store, None).unwrap();
            let (follower, names) = Follower::rebuild_with_names(
                &store,
                Thresholds::embedded(),
                CloudTiers::embedded(),
                true,
            )
            .unwrap();
            let resumed = follower.inner.into_inner().unwrap();
            if checkpointing != Checkpointing::None {
                assert!(resumed.checkpointed > 0, "resumed from a checkpoint");
            }
            // A checkpoint without names has them read up to it, once: the first pass
            // writes a checkpoint that holds them.
            assert_eq!(
                resumed.since_checkpoint >= CHECKPOINT_EVERY,
                checkpointing == Checkpointing::Logged,
                "{checkpointing:?}"
            );
            assert_eq!(names, whole, "{checkpointing:?}");
            let folded = rebuilt(&store, false);
            assert_eq!(
                resumed.names, folded.names,
                "the follower's own, at its cursor"
            );
            assert_ne!(
                resumed.names, names,
                "the follower's own names stop at the engine cursor"
            );
            // What the names say: s0..s4 restarted, s5..s39 ended, s40..s69 ended after the
            // checkpoint, s70..s199 open; the runs of s0..s209 touched those open then.
            let card =
                crate::Cardinality::with_names(&store, crate::Limits::default(), names).unwrap();
            let open = card
                .status()
                .into_iter()
                .find(|s| s.name == kora_model::LimitName::OpenSessions)
                .unwrap();
            assert_eq!(open.count, 5 + 130);
            let models = card
                .status()
                .into_iter()
                .find(|s| s.name == kora_model::LimitName::Models)
                .unwrap();
            assert_eq!(models.count, 2);
        }
    }

    /// A store written before checkpoints moved to the `state` table holds them in the log:
    /// it still resumes from the newest, until a checkpoint of the `state` table replaces it.
    #[test]
    fn a_checkpoint_record_in_the_log_is_still_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("b.redb"), Default::default()).unwrap();
        store
            .append(1_900_000_000_000, Batch::Records(runs(0, 1_500)))
            .unwrap();
        let mut inner = rebuilt(&store, false);
        follow(&store, &mut inner, Checkpointing::Logged);
        let logged = inner.folded;
        store
            .append(1_900_000_000_000, Batch::Records(runs(1_500, 2_500)))
            .unwrap();
        follow(&store, &mut inner, Checkpointing::None);
        assert_eq!(
            store
                .recent(None, Some(RecordKind::Checkpoint), 10)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            store
                .state(&checkpoint_key(&Thresholds::embedded()))
                .unwrap(),
            None
        );

        let resumed = rebuilt(&store, true);
        assert_eq!(
            resumed.checkpointed, logged,
            "resumed from the log's record"
        );
        assert_same_state(&resumed, &rebuilt(&store, false));
        assert_eq!(resumed.engine.state(), inner.engine.state());

        // The first checkpoint of the state table is newer, and resumed instead.
        store
            .append(1_900_000_000_000, Batch::Records(runs(2_500, 3_000)))
            .unwrap();
        follow(&store, &mut inner, Checkpointing::State);
        let resumed = rebuilt(&store, true);
        assert_eq!(resumed.checkpointed, inner.folded);
        assert!(inner.folded > logged);
        assert_same_state(&resumed, &rebuilt(&store, false));
    }

    /// Damaged checkpoint bytes are reported and never resumed: the restart falls back to the
    /// log's older checkpoint record here (or folds the whole log), with the state of a full
    /// fold.
    #[test]
    fn a_damaged_checkpoint_is_reported_not_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.redb");
        let key = checkpoint_key(&Thresholds::embedded());
        let logged;
        {
            let store = Store::open(&path, Default::default()).unwrap();
            store
                .append(1_900_000_000_000, Batch::Records(runs(0, 1_500)))
                .unwrap();
            let mut inner = rebuilt(&store, false);
            follow(&store, &mut inner, Checkpointing::Logged);
            logged = inner.folded;
            store
                .append(1_900_000_000_000, Batch::Records(runs(1_500, 2_500)))
                .unwrap();
            follow(&store, &mut inner, Checkpointing::State);
            assert_eq!(rebuilt(&store, true).checkpointed, inner.folded);
            store.shutdown();
        }
        {
            // Flip a byte of the stored checkpoint through redb itself, as a bad sector would.
            use redb::ReadableTable;
            let db = redb::Database::open(&path).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut state = w.open_table(kora_store::tables::STATE).unwrap();
                let mut bytes = state.get(key.as_str()).unwrap().unwrap().value().to_vec();
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x01;
                state.insert(key.as_str(), bytes.as_slice()).unwrap();
            }
            w.commit().unwrap();
        }
        let store = Store::open(&path, Default::default()).unwrap();
        assert!(matches!(
            store.state(&key),
            Err(ReadError::Corrupt { table: "state", .. })
        ));
        let (resumed, log) = warnings(|| rebuilt(&store, true));
        assert_eq!(
            resumed.checkpointed, logged,
            "the damaged checkpoint is not resumed; the log's older one is"
        );
        assert!(log.contains("WARN"), "{log}");
        assert!(log.contains("the stored checkpoint is damaged"), "{log}");
        assert!(log.contains(&key), "the warning names the key: {log}");
        assert_same_state(&resumed, &rebuilt(&store, false));
    }
}
