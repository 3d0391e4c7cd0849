//! The append-only store of kora-telemetry, on redb.
//!
//! Two parts, like a TSDB beside an event log (DESIGN.md section 2):
//! - the **log**, keyed by a server-assigned, strictly increasing `seq`, holds every record but
//!   raw samples: runs, events, readiness, feedback and the records the service derives. The
//!   policy engine folds the log alone, so replay from it is exact;
//! - the **series store** holds samples per series: the newest as small raw rows (the head),
//!   the rest in sealed chunks of 1,024 samples compressed column by column (about a byte a
//!   sample for probe data; see [`chunk`]). Queries that need one column (the values, for a
//!   p95) decode that column alone.
//!
//! No record is ever modified. Writes go through one writer thread that shares one durable
//! transaction among every batch waiting (group commit); a batch is acknowledged only after the
//! transaction holding it has committed with `Durability::Immediate`. Each batch is
//! all-or-nothing. Every stored value carries a CRC-32, checked on every read, so damaged bytes
//! are reported and never served.
//!
//! The store reads no clock: the caller passes `now_ms` to stamp records that came without a
//! time. It never depends on an async runtime; completion is reported through a callback.
//! The table layout and encoding are written down in [`tables`].
//!
//! A store opened with [`Store::open_with_deriver`] hands each batch's newly stored samples to
//! a [`SampleDeriver`] inside the transaction that stores them, and appends the records it
//! returns (the service's closed time windows) to the log in that same transaction, with the
//! deriver's serialized state: samples, the records derived from them and the state that
//! produced them are durable together or not at all, at one fsync. The deriver is called on
//! the writer thread, in seq order; a batch refused on its own is never shown to it, and after
//! a failed commit it is told to go back to the state of the last commit
//! ([`SampleDeriver::rolled_back`]), so its state is always that of the stored log.

pub mod chunk;
mod codec;
mod derive;
mod error;
mod format;
mod heads;
mod migrate;
mod open;
mod reads;
mod repack;
mod retention;
mod run_chunk;
mod run_index;
mod runs;
mod sealed;
mod sections;
pub mod tables;
mod verify;
mod window_chunk;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kora_model::{Record, Sample};
use redb::Database;

pub use error::{OpenError, ReadError, WriteError};
pub use format::FORMAT_VERSION;
pub use retention::{Compacted, Retention, Rollup};
pub use runs::RunRow;

/// How many `window` records wait in the log before the oldest are sealed into one chunk:
/// 2,048 by default. pco pays for its headers at about a thousand numbers a column; the
/// windows still waiting in the log (fewer than this, ~300 bytes each) are the fixed cost of a
/// small store. At 1,024 a chunk (about 5.3 bytes a window) was cut to what fits one page, and
/// a year's 4,700 such chunks filled their pages to 89 % (a B-tree leaf holds one); 2,048 are
/// cut to the windows that fill two pages (`sealed::fitting_rows`).
pub const WINDOW_CHUNK: usize = 2048;

/// How many `run` records one sealed chunk holds by default: 1,024, half a day of a busy
/// user's runs. The runs still waiting in the log (fewer than this, ~800 bytes each) are the
/// fixed cost of a small store; a chunk is one zstd block, so larger chunks cost every read of
/// an old run more decompression for little more ratio.
pub const RUN_CHUNK: usize = 1024;

/// How many rows of one model's run index are sealed into one chunk of columns by default:
/// 128. The head (fewer than this, one B-tree entry a row) is what "the last N runs" walks
/// row by row; sealed chunks of the newest runs are answered from the store's cache of
/// decoded chunks (see `run_index.rs`). A store sealed at another size reads the same: every
/// reader takes chunks of any length, and a longer head is sealed down at its model's next
/// run.
pub const RUN_INDEX_CHUNK: usize = 128;

/// Tunables of the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// redb's page cache and write buffer (bytes): 1 MiB by default. redb's own default, 1 GiB,
    /// is far more than a sidecar should take. The cache only grows until it is full (every
    /// page a commit writes goes into it), so after a burst of writes it is that much of the
    /// service's RSS; a miss reads the page from the OS's page cache, which holds the file
    /// anyway. Measured in the soak on a month of history (benches/README.md, "the soak"): 32
    /// MiB, then 8, then 2, each smaller cache took the burst of one-run commits faster and
    /// held less after it; at 8 MiB the process held 7 MB more live heap after the burst than
    /// before it (all of it redb's cache, jemalloc's heap profile) and RSS stayed 40 % higher,
    /// at 2 MiB the heap after the burst is what it was before (RSS +7.6 %). At 1 MiB: redb
    /// keeps each cached page in an allocation of 4,112 bytes (jemalloc's class of 5,120), and
    /// after a burst the cache holds only such pages (before it, runs of pages read as one),
    /// partly empty slabs included 1.5 MiB more than before the burst at 2 MiB; the soak at 1
    /// MiB (and jemalloc's two arenas, `.cargo/config.toml`) grew 2.7 % and 7.6 % after the
    /// burst in two runs.
    pub cache_bytes: usize,
    /// How many batches may wait for the writer before `submit` answers `Busy`.
    pub queue_batches: usize,
    /// The most records one group commit takes before committing.
    pub group_max_records: usize,
    /// How many `window` records are sealed together into one compressed chunk, once that
    /// many wait in the log (see [`tables`]); fewer when that fills a shorter run of pages.
    pub window_chunk: usize,
    /// How many `run` records are sealed together into one compressed chunk, once that many
    /// wait in the log; fewer when that fills a shorter run of pages.
    pub run_chunk: usize,
    /// How many rows of one model's run index are sealed into one chunk of columns, once that
    /// many wait in its head ([`RUN_INDEX_CHUNK`]).
    pub run_index_chunk: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 1024 * 1024,
            queue_batches: 4096,
            group_max_records: 50_000,
            window_chunk: WINDOW_CHUNK,
            run_chunk: RUN_CHUNK,
            run_index_chunk: RUN_INDEX_CHUNK,
        }
    }
}

/// What one batch holds. Items are validated by the caller before they are submitted.
#[derive(Debug, Clone)]
pub enum Batch {
    Samples(Vec<Sample>),
    Records(Vec<Record>),
    /// Records the service derived from the log up to and including seq `cursor`. The cursor is
    /// stored in the same transaction, so after a crash the follower knows exactly which inputs
    /// already have their derived records in the log.
    Derived {
        records: Vec<Record>,
        cursor: u64,
        /// Caller state to keep beside the log (the follower's checkpoint), written into the
        /// `state` table ([`tables`]) in the same transaction as the records and the cursor:
        /// each `(key, bytes)` replaces what that key held. Read back with [`Store::state`].
        /// The key `sample_deriver` is the store's own (the [`SampleDeriver`]'s state): a batch
        /// naming it is refused, and stores nothing.
        state: Vec<(String, Vec<u8>)>,
    },
}

impl Batch {
    fn len(&self) -> usize {
        match self {
            Batch::Samples(v) => v.len(),
            Batch::Records(v) | Batch::Derived { records: v, .. } => v.len(),
        }
    }
}

/// The outcome of a stored batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The seq of each item, in batch order; a duplicate gets the seq it was first stored with.
    pub seqs: Vec<u64>,
    /// Items newly stored (the rest were retries of items already stored).
    pub accepted: u64,
    pub duplicates: u64,
    pub first_new_seq: Option<u64>,
    pub last_new_seq: Option<u64>,
}

/// Counts for `/v1/health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub log_records: u64,
    pub samples: u64,
    pub series: u64,
    pub last_seq: Option<u64>,
}

/// Derives log records from newly stored samples inside the transaction that stores them (the
/// service closes time windows with it). The store persists the deriver's state in the same
/// transaction, so samples, the records derived from them and the state that produced them are
/// durable together or not at all.
///
/// The writer thread calls it, one batch of samples at a time, in seq order across the batches
/// of a group commit. A transaction in which [`derive`](Self::derive) was called ends with
/// exactly one of [`committed`](Self::committed) or [`rolled_back`](Self::rolled_back); a
/// transaction with no new sample calls none of them. So the state the deriver holds between
/// transactions, the one given to `make` at [`Store::open_with_deriver`], and the samples and
/// records in the store always agree.
pub trait SampleDeriver: Send + 'static {
    /// The newly stored samples of one batch, in seq order, each with its seq; `ts_ms` is always
    /// set (stamped with the batch's `now_ms` where the client gave none), exactly as stored.
    /// Retried samples that were already stored (duplicates) are not given, nor is a batch
    /// refused on its own (an id conflict: it stores nothing), nor a batch with no new sample.
    /// Returns records to append to the log right after the batch's samples, in the same
    /// transaction: they are stored like the items of [`Batch::Records`] (stamped with the
    /// batch's `now_ms` where they carry no time, indexed by kind and time; no client id is
    /// recorded for them) and count in [`Stats::log_records`], not in the batch's [`Appended`].
    fn derive(&mut self, samples: &[(u64, Sample)]) -> Vec<Record>;
    /// The state to store with the transaction, called once per transaction in which `derive`
    /// was called, after the last `derive` and before the commit. An error fails the whole
    /// transaction (every batch of it, as a storage failure would), then `rolled_back` is
    /// called.
    fn state(&self) -> Result<Vec<u8>, String>;
    /// The transaction committed: the state as of now is durable.
    fn committed(&mut self);
    /// The transaction failed (a storage failure, a full disk, an error from `state`): nothing
    /// of it was stored, and the deriver must go back to its state as of the last `committed`
    /// (or as given to `make`). The failed batches' callers may retry them; they are then
    /// derived again from that state.
    fn rolled_back(&mut self);
}

type Done = Box<dyn FnOnce(Result<Appended, WriteError>) + Send>;

/// The open database, shared by readers and the writer. After a storage failure (a full disk,
/// say) redb refuses every later write until the file is reopened; the writer then empties the
/// slot, reopens the file and puts the new handle back, so the service recovers without a
/// restart once the cause is gone.
type DbSlot = Arc<std::sync::RwLock<Option<Arc<Database>>>>;

struct Job {
    now_ms: i64,
    batch: Batch,
    done: Done,
}

/// The store. Cheap to share behind an `Arc`; reads run concurrently with the writer.
pub struct Store {
    db: DbSlot,
    /// The last counts read, answered while the file is being reopened.
    stats_cache: Mutex<Option<Stats>>,
    path: PathBuf,
    sender: Mutex<Option<SyncSender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Durable transactions committed since open.
    commits: Arc<std::sync::atomic::AtomicU64>,
    /// Whether anything may have been written to the file since it was opened (by the open
    /// itself, a batch, or the retention): the close then checks every page again.
    written: Arc<std::sync::atomic::AtomicBool>,
    /// How the file was checked when it was opened.
    check: OpenCheck,
    /// The run index chunks decoded lately ([`Store::recent_runs`]).
    run_index_cache: run_index::ChunkCache,
}

/// How [`Store::open`] checked the file it opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenCheck {
    /// There was no file: a new store.
    New,
    /// Every page checksum of the committed trees was verified.
    PagesVerified,
    /// The file's bytes are exactly those a clean close checked (every page) and recorded
    /// (length and CRC-32, in the file beside it named like the store with `.checked`
    /// appended), so the page check was not run again.
    UnchangedSinceCheckedClose,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}
impl Store {
    /// How many durable transactions (fsyncs) the writer committed since the store was opened:
    /// every batch shares one with the batches committed with it (group commit).
    pub fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How the file was checked when it was opened.
    pub fn open_check(&self) -> OpenCheck {
        self.check
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a batch for the writer; `done` is called once the batch is durable, or failed.
    /// Answers `Busy` at once, without calling `done`, when the queue is full.
    pub fn submit(
        &self,
        now_ms: i64,
        batch: Batch,
        done: impl FnOnce(Result<Appended, WriteError>) + Send + 'static,
    ) -> Result<(), WriteError> {
        let guard = self
            .sender
            .lock()
            .map_err(|_| WriteError::Storage("writer lock poisoned".into()))?;
        let Some(sender) = guard.as_ref() else {
            return Err(WriteError::ShuttingDown);
        };
        let job = Job {
            now_ms,
            batch,
            done: Box::new(done),
        };
        match sender.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(WriteError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(WriteError::ShuttingDown),
        }
    }

    /// Appends a batch and blocks until it is durable. For callers without a runtime.
    pub fn append(&self, now_ms: i64, batch: Batch) -> Result<Appended, WriteError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.submit(now_ms, batch, move |r| {
            let _ = tx.send(r);
        })?;
        rx.recv().unwrap_or(Err(WriteError::ShuttingDown))
    }

    /// Stops taking writes, lets the writer commit everything already queued, and waits for
    /// it; then, when nothing else still holds the file, rebuilds the tables that removals left
    /// sparse (`repack.rs`), gives back the file's free pages when that freed any or they are a
    /// tenth of it or more, closes it, checks it and records the check
    /// ([`OpenCheck::UnchangedSinceCheckedClose`]). Reads fail after this.
    pub fn shutdown(&self) {
        if let Ok(mut s) = self.sender.lock() {
            s.take();
        }
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle
            && h.join().is_err()
        {
            tracing::error!("the store writer thread panicked");
            return;
        }
        let Some(db) = self.db.write().ok().and_then(|mut slot| slot.take()) else {
            return;
        };
        // A reader still holding the file closes it when it is done; the next open then
        // checks every page.
        let Ok(mut db) = Arc::try_unwrap(db) else {
            return;
        };
        let written = self.written.load(std::sync::atomic::Ordering::Acquire);
        if written {
            let repacked = match repack::sparse_tables(&db) {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "the store's sparse tables were not rebuilt at its close; nothing is lost");
                    0
                }
            };
            if repacked > 0 {
                tracing::info!(path = %self.path.display(), bytes = repacked, "rebuilt the store's sparse tables with full pages");
            }
            compact_if_sparse(&mut db, &self.path, repacked > 0);
        }
        drop(db);
        if let Err(e) = verify::record_checked_close(&self.path, !written) {
            tracing::error!(path = %self.path.display(), error = %e, "the store did not check out at its close: the next start checks every page");
        }
    }

    /// Applies `retention` at `now_ms`: rolls up (count, min, max, sum per bucket) and drops
    /// sealed chunks older than the raw retention, at most 256 chunks a call (`more` says
    /// whether to call again), drops expired rollups, and forgets client ids stored longer ago
    /// than `retention.ids_ms` (at most 50,000 a call). One durable transaction; the log is
    /// never touched.
    pub fn compact(&self, now_ms: i64, retention: &Retention) -> Result<Compacted, WriteError> {
        let db = self
            .db
            .read()
            .map_err(|_| WriteError::Storage("the database lock is poisoned".into()))?
            .clone()
            .ok_or_else(|| WriteError::Storage("the store is being reopened".into()))?;
        let mut wtx = db.begin_write().map_err(error::write_error)?;
        wtx.set_quick_repair(true);
        self.written
            .store(true, std::sync::atomic::Ordering::Release);
        let done = retention::compact(&wtx, now_ms, retention, 256)?;
        if done == Compacted::default() {
            wtx.abort().map_err(error::write_error)?;
        } else {
            wtx.commit().map_err(error::write_error)?;
        }
        Ok(done)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The share of the file's pages that must be free at a clean close for it to be compacted.
const COMPACT_FREE_SHARE: f64 = 0.10;

/// Passes of redb's compaction at most, at one close (each moves pages in use towards the
/// front of the file and truncates it; one is usually all there is to do).
const COMPACT_PASSES: usize = 4;

/// At a clean close after writes, when at least [`COMPACT_FREE_SHARE`] of the file's pages are
/// free (the pages of rewritten heads and chunks, freed and not yet reused: the file never
/// shrinks by itself), redb's compaction moves the pages in use to the front and truncates
/// the file, so the data directory gives that space back. A day of samples through the service
/// frees about a fifth of its file this way, in milliseconds; a year's store, whose free pages
/// are a few percent, is left as it is, unless `repacked` (tables were just rebuilt, and the
/// pages they took are free). A compaction that fails leaves a consistent file (redb commits it
/// like any transaction): the failure is logged and the close goes on.
fn compact_if_sparse(db: &mut Database, path: &Path, repacked: bool) {
    let free_share = (|| -> Option<f64> {
        let wtx = db.begin_write().ok()?;
        let stats = wtx.stats().ok()?;
        wtx.abort().ok()?;
        let file_pages = std::fs::metadata(path).ok()?.len() / stats.page_size() as u64;
        let free = file_pages.saturating_sub(stats.allocated_pages());
        Some(free as f64 / file_pages.max(1) as f64)
    })();
    let Some(free_share) = free_share else {
        return;
    };
    if free_share < COMPACT_FREE_SHARE && !repacked {
        return;
    }
    for _ in 0..COMPACT_PASSES {
        match db.compact() {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the store's free pages were not given back at its close; nothing is lost");
                break;
            }
        }
    }
}
