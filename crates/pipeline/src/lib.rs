//! The kora-telemetry service without HTTP: everything between the store and the handlers.
//!
//! A [`Pipeline`] owns the store handle and:
//! - appends every batch through the store's group commit ([`Writer`]), reporting storage
//!   health ([`HealthFlag`]);
//! - closes time windows inside the transaction that stores the samples that close them
//!   ([`WindowDeriver`], the store's sample deriver), so no window is ever lost;
//! - follows the log ([`Follower`]): folds it through the policy engine in seq order and
//!   appends the engine's outputs with their cursor in one transaction, checkpointing its
//!   state beside the log (the store's `state` table, in that same transaction), and keeps the read models the read endpoints answer from ([`ReadModels`]);
//! - samples the hardware and applies the retention on a schedule ([`sampler`]);
//! - publishes every decision as the follower commits it, and which decisions answer which
//!   input records ([`Events`]: `GET /v1/stream` and `?wait=decisions`);
//! - refuses a client's batch that would cross a cardinality limit (distinct models, series,
//!   sessions open at once), counting exactly what the store holds ([`Cardinality`]).
//!
//! Time comes from the injected [`Clock`]; the crash tests' fault points are injected
//! [`Faults`]. The server crate keeps HTTP alone and calls this crate; this crate never
//! depends on axum or the server.
//!
//! Module dependencies run one way: `clock`, `faults`, `health`, `events`, `limits` <- `write` <-
//! `profile` <- `follower` <- `sampler`; `windows` stands alone; this file ties them together
//! and no module uses it.

pub mod clock;
pub mod events;
pub mod faults;
pub mod follower;
pub mod health;
pub mod limits;
pub mod profile;
pub mod sampler;
pub mod windows;
pub mod write;

use std::path::Path;
use std::sync::Arc;

use kora_model::{
    Decision, HardwareSnapshot, LogEntry, ProductMetrics, ProfileRecord, Record, Suggestion,
};
use kora_policy::{CloudTiers, Engine, Thresholds};
use kora_probe::{ModelCatalog, Probe};
use kora_store::{Appended, Batch, ReadError, Retention, Store, StoreOptions};

pub use clock::{Clock, ManualClock, SystemClock};
pub use events::{Events, HealthChange, Position, Resolution, StreamEvent};
pub use faults::Faults;
pub use follower::{CHECKPOINT_EVERY, FollowError, Follower, ReadModels, RebuildError};
pub use health::HealthFlag;
pub use limits::{Cardinality, LimitRefusal, Limits, Names};
pub use windows::WindowDeriver;
pub use write::{WriteFailure, Writer};

/// How a pipeline is built.
#[derive(Debug)]
pub struct PipelineOptions {
    pub store: StoreOptions,
    pub thresholds: Thresholds,
    pub tiers: CloudTiers,
    pub clock: Arc<dyn Clock>,
    pub faults: Faults,
    /// Resume the follower from the newest usable checkpoint (else fold the whole log).
    pub checkpoints: bool,
    /// The cardinality limits client batches are checked against.
    pub limits: Limits,
}

impl Default for PipelineOptions {
    /// The embedded thresholds and tiers, the system clock, no faults, checkpoints used.
    fn default() -> Self {
        PipelineOptions {
            store: StoreOptions::default(),
            thresholds: Thresholds::embedded(),
            tiers: CloudTiers::embedded(),
            clock: Arc::new(SystemClock),
            faults: Faults::none(),
            checkpoints: true,
            limits: Limits::default(),
        }
    }
}

/// Why a pipeline could not be opened; the store file is left as it was.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] kora_store::OpenError),
    #[error("cannot rebuild the derived state from the log: {0}")]
    Rebuild(#[from] RebuildError),
}

/// The service without HTTP. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Pipeline {
    writer: Writer,
    follower: Follower,
    faults: Faults,
    started_ms: i64,
}

impl Pipeline {
    /// Opens (or creates) the store at `path` with the time-window deriver, and rebuilds the
    /// follower's state from its log.
    pub fn open(path: &Path, options: PipelineOptions) -> Result<Pipeline, OpenError> {
        let PipelineOptions {
            store,
            thresholds,
            tiers,
            clock,
            faults,
            checkpoints,
            limits,
        } = options;
        let windows = thresholds.clone();
        let store = Store::open_with_deriver(path, store, move |saved| {
            Box::new(WindowDeriver::resume(&windows, saved))
        })?;
        let (follower, names) =
            Follower::rebuild_with_names(&store, thresholds, tiers, checkpoints)?;
        let cardinality =
            Cardinality::with_names(&store, limits, names).map_err(RebuildError::Read)?;
        let started_ms = clock.now_ms();
        let writer = Writer::new(Arc::new(store), clock, cardinality);
        writer.events().start_at(follower.folded());
        Ok(Pipeline {
            writer,
            follower,
            faults,
            started_ms,
        })
    }

    /// Now, by the pipeline's clock.
    pub fn now_ms(&self) -> i64 {
        self.writer.clock().now_ms()
    }

    /// Whole seconds since the pipeline was opened, by its clock.
    pub fn uptime_s(&self) -> u64 {
        u64::try_from((self.now_ms() - self.started_ms) / 1000).unwrap_or(0)
    }

    pub fn store(&self) -> &Arc<Store> {
        self.writer.store()
    }

    pub fn health(&self) -> &HealthFlag {
        self.writer.health()
    }

    pub fn follower(&self) -> &Follower {
        &self.follower
    }

    /// The names the store holds (models, series, open sessions) and the limits on them.
    pub fn cardinality(&self) -> &Cardinality {
        self.writer.cardinality()
    }

    /// The live decisions ([`Events::subscribe`]) and the read-your-writes index.
    pub fn events(&self) -> &Events {
        self.writer.events()
    }

    /// The stream's events after `after`, up to `through` at most and `limit` records (plus
    /// the resolutions among them), read back from the log and the follower's kept
    /// resolutions, in position order; and the position they reach: every event up to it is
    /// in the answer. Blocking (it reads the store).
    ///
    /// Resolutions are not log records: only the newest [`events::RESOLUTIONS_KEPT`] can be
    /// read back. Records removed by the retention are gone too.
    pub fn backfill(
        &self,
        after: Position,
        through: Position,
        limit: usize,
    ) -> Result<(Vec<StreamEvent>, Position), ReadError> {
        let limit = limit.max(1);
        let mut records: Vec<LogEntry> = Vec::new();
        let mut reached = through;
        for kind in events::STREAMED {
            let page = self
                .store()
                .scan_kind(kind, after.seq.saturating_add(1), limit)?;
            if page.len() == limit
                && let Some(last) = page.last()
            {
                // What lies beyond this kind's page is unread: stop there.
                reached = reached.min(Position::through(last.seq));
            }
            records.extend(page);
        }
        let mut out: Vec<StreamEvent> = records
            .into_iter()
            .map(|e| StreamEvent::Record(Box::new(e)))
            .filter(|e| e.position().is_some_and(|p| p > after && p <= reached))
            .collect();
        let resolved = self.follower.resolutions(after, reached);
        out.extend(resolved.into_iter().map(StreamEvent::Resolved));
        out.sort_by_key(StreamEvent::position);
        Ok((out, reached))
    }

    /// The log seqs the engine folds for a stored ingest batch (`appended`): its records, or
    /// for samples the time windows they closed, which the store appended right after them in
    /// the same transaction. Blocking (samples read the store).
    pub fn inputs_of(&self, samples: bool, appended: &Appended) -> Result<Vec<u64>, ReadError> {
        if !samples {
            return Ok(appended.seqs.clone());
        }
        let Some(last) = appended.last_new_seq else {
            return Ok(Vec::new());
        };
        let mut windows = Vec::new();
        let mut next = last + 1;
        loop {
            let page = self.store().scan(next, 256)?;
            let full = page.len() == 256;
            for e in page {
                let time_window = matches!(&e.record, Record::Window(w)
                    if w.window_kind == kora_window::WINDOW_KIND_TIME);
                if e.seq != next || !time_window {
                    return Ok(windows);
                }
                windows.push(e.seq);
                next += 1;
            }
            if !full {
                return Ok(windows);
            }
        }
    }

    /// Waits (at most `timeout`) until the engine has folded `inputs` and the decisions they
    /// caused are durable; returns those decisions in seq order, and whether the wait ended in
    /// time (else the ones made so far). Decisions are listed for inputs folded since the
    /// service started.
    pub async fn decisions(
        self: &Arc<Self>,
        inputs: &[u64],
        timeout: std::time::Duration,
    ) -> (Vec<Decision>, bool) {
        let Some(&target) = inputs.iter().max() else {
            return (Vec::new(), true);
        };
        let events = self.events();
        if events.answered() < target {
            // The follower is woken by the append; this makes sure a pass runs even where
            // no follow task does. Never cancelled: a pass stopped midway would lose its index.
            let pipeline = self.clone();
            tokio::spawn(async move { pipeline.settle().await });
        }
        let complete = tokio::time::timeout(timeout, events.wait_answered(target))
            .await
            .is_ok();
        (events.decisions_of(inputs), complete)
    }

    /// Appends a batch the service itself makes (feedback, readiness, consent, export) and
    /// waits until it is durable.
    pub async fn append(&self, name: &str, batch: Batch) -> Result<Appended, WriteFailure> {
        self.writer.append(name, batch).await
    }

    /// Appends a client's ingest batch and waits until it is durable, or refuses it whole when
    /// it would cross a cardinality limit; the crash tests' fault point fires here, after the
    /// commit and before the answer.
    pub async fn ingest(&self, name: &str, batch: Batch) -> Result<Appended, WriteFailure> {
        let appended = self.writer.append_limited(name, batch).await?;
        self.faults.after_commit();
        Ok(appended)
    }

    /// Folds every log entry not folded yet and appends the outputs.
    pub async fn catch_up(&self) -> Result<(), FollowError> {
        self.follower.catch_up(&self.writer).await
    }

    /// Brings the follower (and so the engine's state and the read models) up to every record
    /// acknowledged so far, before a read that must see them. On a running service the
    /// follower is usually there already and this costs one empty read; a failure is logged
    /// and the read answers from what is folded.
    ///
    /// The pass runs in a task of its own: a caller that goes away (an HTTP client that
    /// disconnects drops its handler) never cuts a pass short between folding records and
    /// appending their outputs, which would lose those outputs.
    pub async fn settle(self: &Arc<Self>) {
        let pipeline = self.clone();
        match tokio::spawn(async move { pipeline.catch_up().await }).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the engine could not catch up with the log before a read")
            }
            Err(e) => tracing::warn!(error = %e, "the catch-up before a read failed"),
        }
    }

    /// Follows the log until the task is dropped: wakes on every durable append, and every
    /// second.
    pub async fn follow(&self) {
        loop {
            tokio::select! {
                () = self.writer.appended() => {},
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {},
            }
            if let Err(e) = self.catch_up().await {
                tracing::warn!(error = %e, "the engine could not catch up with the log; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }

    /// Samples the hardware every `interval` until the task is dropped (see [`sampler::run`]).
    pub async fn sample(&self, probe: Probe, interval: std::time::Duration, retention: Retention) {
        sampler::run(&self.writer, &self.follower, probe, interval, retention).await
    }

    /// Records one hardware snapshot (the sampler's one-tick path).
    pub async fn ingest_snapshot(&self, snapshot: HardwareSnapshot) -> Result<(), WriteFailure> {
        sampler::ingest_snapshot(&self.writer, &self.follower, snapshot).await
    }

    /// The thresholds in force.
    pub fn thresholds(&self) -> Thresholds {
        self.follower.thresholds()
    }

    /// The latest hardware snapshot and the profile computed from it now.
    pub fn profile_now(&self) -> Option<ProfileRecord> {
        self.follower.profile_now()
    }

    /// The latest hardware snapshot.
    pub fn hardware(&self) -> Option<HardwareSnapshot> {
        self.follower.hardware()
    }

    /// The models the log reported.
    pub fn models(&self) -> ModelCatalog {
        self.follower.models()
    }

    /// Runs `f` over the engine.
    pub fn with_engine<T>(&self, f: impl FnOnce(&Engine) -> T) -> T {
        self.follower.with_engine(f)
    }

    /// Runs `f` over the read models.
    pub fn with_read<T>(&self, f: impl FnOnce(&ReadModels) -> T) -> T {
        self.follower.with_read(f)
    }

    /// The Section 8 metrics over `from_ms <= ts < to_ms`, named `range`, with the cloud runs
    /// of the range (per model when `per_model`), from the read models: the cost does not grow
    /// with the log.
    pub fn product_metrics(
        &self,
        range: &str,
        from_ms: i64,
        to_ms: i64,
        per_model: bool,
    ) -> ProductMetrics {
        self.follower.with_read(|r| {
            let mut m = r.product.metrics(range, from_ms, to_ms);
            r.cloud.fill(&mut m, per_model);
            m
        })
    }

    /// The suggestion with this id, found through the read models' id index, however old.
    /// Blocking (it reads the store).
    pub fn suggestion(&self, id: &str) -> Result<Option<Suggestion>, ReadError> {
        let Some(seq) = self.follower.with_read(|r| r.product.suggestion_seq(id)) else {
            return Ok(None);
        };
        Ok(self
            .store()
            .scan(seq, 1)?
            .into_iter()
            .find_map(|e| match e.record {
                Record::Suggestion(s) if e.seq == seq && s.suggestion_id == id => Some(s),
                _ => None,
            }))
    }
}
