//! The one way records reach the log: the store's group commit, awaited, with the storage
//! health it reports (a change of it is a stream event) and a wake-up for the follower after
//! every durable append. A client's batch is checked against the cardinality limits first
//! ([`Writer::append_limited`]), and every committed batch's new names are counted
//! ([`Cardinality`]).

use std::sync::Arc;

use kora_store::{Appended, Batch, Store, WriteError};

use crate::clock::Clock;
use crate::events::{Events, HealthChange};
use crate::health::HealthFlag;
use crate::limits::{Admission, Cardinality, Delta, LimitRefusal};

/// Why a batch was not stored. Nothing of the batch is stored in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteFailure {
    /// The write queue is full or the service is stopping: retry after `retry_after_s`.
    #[error("{message}")]
    Unavailable { message: String, retry_after_s: u32 },
    /// A client id was stored before with other content; `field` names the record.
    #[error("{message}")]
    Conflict { message: String, field: String },
    /// The batch would cross a cardinality limit.
    #[error("{}", .0.message)]
    Limit(LimitRefusal),
    /// The disk holding the store is full.
    #[error("the disk is full: {0}")]
    DiskFull(String),
    /// Anything else (logged; the health flag says what).
    #[error("{0}")]
    Internal(String),
}

/// Appends batches through the store's group commit.
#[derive(Debug, Clone)]
pub struct Writer {
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    health: Arc<HealthFlag>,
    appended: Arc<tokio::sync::Notify>,
    events: Arc<Events>,
    cardinality: Arc<Cardinality>,
}

impl Writer {
    pub fn new(store: Arc<Store>, clock: Arc<dyn Clock>, cardinality: Cardinality) -> Writer {
        Writer {
            store,
            clock,
            health: Arc::default(),
            appended: Arc::default(),
            events: Arc::default(),
            cardinality: Arc::new(cardinality),
        }
    }

    /// The names the store holds and the limits on them.
    pub fn cardinality(&self) -> &Cardinality {
        &self.cardinality
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn health(&self) -> &HealthFlag {
        &self.health
    }

    /// The live decisions and the read-your-writes index.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Resolves at the next durable append (or at once if one happened since the last wait).
    pub async fn appended(&self) {
        self.appended.notified().await;
    }

    /// Appends a batch the service itself made (its items named `name` in errors, e.g.
    /// `samples[3].id`) and waits until it is durable. The new names of its samples (the
    /// probe's series) are counted, never refused.
    pub async fn append(&self, name: &str, batch: Batch) -> Result<Appended, WriteFailure> {
        let now = self.clock.now_ms();
        if !matches!(batch, Batch::Samples(_)) {
            return self.commit(name, batch, now, None).await;
        }
        let delta = self.cardinality.delta(name, &batch, now);
        if delta.is_empty() {
            return self.commit(name, batch, now, Some((delta, None))).await;
        }
        let admission = self.cardinality.admit().await;
        let delta = self.cardinality.delta(name, &batch, now);
        self.commit(name, batch, now, Some((delta, Some(admission))))
            .await
    }

    /// Appends a client's batch (its items named `name` in errors, e.g. `runs[3].id`) and
    /// waits until it is durable; refuses it whole, storing nothing, when it would cross a
    /// cardinality limit.
    pub async fn append_limited(&self, name: &str, batch: Batch) -> Result<Appended, WriteFailure> {
        let now = self.clock.now_ms();
        let delta = self.cardinality.delta(name, &batch, now);
        if delta.is_empty() {
            // Its record time and session activity are counted after the commit, unlocked.
            return self.commit(name, batch, now, Some((delta, None))).await;
        }
        // Counted again under the lock: a batch that held it may have added these names.
        let admission = self.cardinality.admit().await;
        let delta = self.cardinality.delta(name, &batch, now);
        self.cardinality
            .check(&delta, now)
            .map_err(WriteFailure::Limit)?;
        self.commit(name, batch, now, Some((delta, Some(admission))))
            .await
    }

    /// Submits `batch` to the group commit, its records without a time stamped `now_ms`, and
    /// waits until it is durable. `count`: what it adds to the counted names and the
    /// admission lock when it holds it, both handed to the store's writer thread, which counts
    /// them right after the commit and then lets the next batch be checked, even when no one
    /// awaits this answer any more.
    async fn commit(
        &self,
        name: &str,
        batch: Batch,
        now_ms: i64,
        count: Option<(Delta, Option<Admission>)>,
    ) -> Result<Appended, WriteFailure> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let cardinality = self.cardinality.clone();
        self.store
            .submit(now_ms, batch, move |r| {
                if let Some((delta, admission)) = count {
                    if let Ok(appended) = &r {
                        cardinality.apply(delta, appended);
                    }
                    drop(admission);
                }
                let _ = tx.send(r);
            })
            .map_err(|e| self.failure(name, e))?;
        let result = rx.await.map_err(|_| {
            WriteFailure::Internal("the store writer stopped without an answer".into())
        })?;
        match result {
            Ok(a) => {
                if self.health.get().is_some() {
                    self.health.clear();
                    self.events
                        .health(HealthChange::new(self.clock.now_ms(), None));
                }
                self.appended.notify_one();
                Ok(a)
            }
            Err(e) => Err(self.failure(name, e)),
        }
    }

    fn failure(&self, name: &str, e: WriteError) -> WriteFailure {
        match e {
            WriteError::Busy => WriteFailure::Unavailable {
                message: "the write queue is full; retry shortly".into(),
                retry_after_s: 1,
            },
            WriteError::ShuttingDown => WriteFailure::Unavailable {
                message: "the service is shutting down".into(),
                retry_after_s: 5,
            },
            WriteError::IdConflict { index, id } => WriteFailure::Conflict {
                message: format!(
                    "id {id:?} was already stored with different content; a retry must resend the same record"
                ),
                field: format!("{name}[{index}].id"),
            },
            WriteError::DiskFull(detail) => {
                self.set_health(format!("disk full: {detail}"));
                WriteFailure::DiskFull(detail)
            }
            other => {
                self.set_health(other.to_string());
                WriteFailure::Internal(other.to_string())
            }
        }
    }

    /// A write failed: the health flag says why, and a change is published.
    fn set_health(&self, problem: String) {
        let now = self.clock.now_ms();
        let changed = self.health.get().as_deref() != Some(problem.as_str());
        self.health.set(now, problem.clone());
        if changed {
            self.events.health(HealthChange::new(now, Some(problem)));
        }
    }
}
