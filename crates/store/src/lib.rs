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

pub mod chunk;
mod error;
mod retention;
mod runs;
pub mod tables;
mod verify;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use chunk::{CHUNK_SAMPLES, Chunk, CodecError, Extra, HEAD_BLOCK, Item};
use kora_model::{LogEntry, Record, RecordKind, Sample, Signal, StoredSample};
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

pub use error::{OpenError, ReadError, WriteError};
pub use retention::{Compacted, Retention, Rollup};
pub use runs::RunRow;
use tables::*;

/// The on-disk format this build writes. A store with a newer one is refused at open.
pub const FORMAT_VERSION: u64 = 2;

/// Tunables of the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// redb's page cache (bytes). The default 1 GiB is far more than a sidecar should take.
    pub cache_bytes: usize,
    /// How many batches may wait for the writer before `submit` answers `Busy`.
    pub queue_batches: usize,
    /// The most records one group commit takes before committing.
    pub group_max_records: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 32 * 1024 * 1024,
            queue_batches: 4096,
            group_max_records: 50_000,
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
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens the store at `path`, creating it when there is no file. An existing file must be a
    /// kora-telemetry store of this format version or older; anything else is refused and left
    /// as it is.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Store, OpenError> {
        let existed = path.exists();
        let mut builder = Database::builder();
        builder.set_cache_size(options.cache_bytes);
        let open_err = |e: redb::DatabaseError| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => OpenError::AlreadyOpen {
                path: path.to_owned(),
            },
            redb::DatabaseError::Storage(redb::StorageError::Io(source)) => OpenError::Io {
                path: path.to_owned(),
                source,
            },
            other => OpenError::NotAStore {
                path: path.to_owned(),
                reason: other.to_string(),
            },
        };
        if existed {
            // Check the format without writing a byte: a file this build must refuse is left
            // exactly as it was. A file that needs crash recovery cannot be opened read-only;
            // it is checked right after the writable open below, before anything is written.
            match guarded(path, || builder.open_read_only(path))? {
                Ok(ro) => {
                    guarded(path, || check_format(&ro, path))??;
                    ro.close().map_err(open_err)?;
                }
                Err(redb::DatabaseError::RepairAborted) => {}
                Err(e) => return Err(open_err(e)),
            }
            // Every page checksum, checked against a copy-on-write view: redb checks them on
            // no ordinary read, and its own check repairs (writes) what it finds.
            verify::verify(path)?;
        }
        let db = guarded(path, || {
            if existed {
                builder.open(path)
            } else {
                builder.create(path)
            }
        })?
        .map_err(open_err)?;
        let redb_err = |e: redb::Error| OpenError::Redb {
            path: path.to_owned(),
            source: e,
        };
        let next_seq = if existed {
            let (version, next_seq) = check_format(&db, path)?;
            if version < 2 {
                migrate_v1(&db, path)?;
            }
            next_seq
        } else {
            let wtx = db.begin_write().map_err(|e| redb_err(e.into()))?;
            {
                let mut meta = wtx.open_table(META).map_err(|e| redb_err(e.into()))?;
                for (k, v) in [
                    (K_FORMAT_VERSION, FORMAT_VERSION),
                    (K_NEXT_SEQ, 1),
                    (K_LOG_RECORDS, 0),
                    (K_SAMPLES, 0),
                ] {
                    meta.insert(k, v).map_err(|e| redb_err(e.into()))?;
                }
                // Create every table so that readers never meet a missing one.
                wtx.open_table(LOG).map_err(|e| redb_err(e.into()))?;
                wtx.open_table(LOG_BY_KIND)
                    .map_err(|e| redb_err(e.into()))?;
                wtx.open_table(LOG_BY_TIME)
                    .map_err(|e| redb_err(e.into()))?;
                wtx.open_table(IDS).map_err(|e| redb_err(e.into()))?;
                wtx.open_table(SERIES).map_err(|e| redb_err(e.into()))?;
                wtx.open_table(HEAD).map_err(|e| redb_err(e.into()))?;
                wtx.open_table(CHUNKS).map_err(|e| redb_err(e.into()))?;
                wtx.open_table(RUNS).map_err(|e| redb_err(e.into()))?;
                wtx.open_table(ROLLUPS).map_err(|e| redb_err(e.into()))?;
            }
            wtx.commit().map_err(|e| redb_err(e.into()))?;
            1
        };
        let (series, heads) = load_series(&db).map_err(|e| OpenError::NotAStore {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let db: DbSlot = Arc::new(std::sync::RwLock::new(Some(Arc::new(db))));
        let (sender, receiver) = sync_channel(options.queue_batches.max(1));
        let writer = Writer {
            db: db.clone(),
            path: path.to_owned(),
            cache_bytes: options.cache_bytes,
            next_seq,
            group_max_records: options.group_max_records.max(1),
            series,
            heads,
        };
        let handle = std::thread::Builder::new()
            .name("kora-store-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|source| OpenError::Io {
                path: path.to_owned(),
                source,
            })?;
        let store = Store {
            db,
            stats_cache: Mutex::new(None),
            path: path.to_owned(),
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(handle)),
        };
        // Warm the counts answered while the file is being reopened after a failure.
        let _ = store.stats();
        Ok(store)
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

    /// Stops taking writes, lets the writer commit everything already queued, and waits for it.
    pub fn shutdown(&self) {
        if let Ok(mut s) = self.sender.lock() {
            s.take();
        }
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(h) = handle
            && h.join().is_err()
        {
            tracing::error!("the store writer thread panicked");
        }
    }

    fn read(&self) -> Result<ReadTransaction, ReadError> {
        let db = self
            .db
            .read()
            .map_err(|_| ReadError::Storage("the database lock is poisoned".into()))?
            .clone()
            .ok_or(ReadError::Reopening)?;
        Ok(db.begin_read()?)
    }

    /// Counts for health reporting. While the file is being reopened after a storage failure,
    /// the last counts read are answered.
    pub fn stats(&self) -> Result<Stats, ReadError> {
        match self.read_stats() {
            Ok(stats) => {
                if let Ok(mut c) = self.stats_cache.lock() {
                    *c = Some(stats.clone());
                }
                Ok(stats)
            }
            Err(ReadError::Reopening) => self
                .stats_cache
                .lock()
                .ok()
                .and_then(|c| c.clone())
                .ok_or(ReadError::Reopening),
            Err(e) => Err(e),
        }
    }

    fn read_stats(&self) -> Result<Stats, ReadError> {
        let rtx = self.read()?;
        let meta = rtx.open_table(META)?;
        let get = |k: &str| -> Result<u64, ReadError> {
            Ok(meta.get(k)?.map(|v| v.value()).unwrap_or(0))
        };
        let next = get(K_NEXT_SEQ)?;
        Ok(Stats {
            log_records: get(K_LOG_RECORDS)?,
            samples: get(K_SAMPLES)?,
            series: rtx.open_table(SERIES)?.len()?,
            last_seq: next.checked_sub(1).filter(|s| *s > 0),
        })
    }

    /// The seq of the last log entry whose derived records were stored (0 when none were).
    pub fn engine_cursor(&self) -> Result<u64, ReadError> {
        let rtx = self.read()?;
        let meta = rtx.open_table(META)?;
        Ok(meta.get(K_ENGINE_CURSOR)?.map_or(0, |v| v.value()))
    }

    /// Log entries in seq order starting at `from_seq`, at most `limit`.
    pub fn scan(&self, from_seq: u64, limit: usize) -> Result<Vec<LogEntry>, ReadError> {
        let rtx = self.read()?;
        let log = rtx.open_table(LOG)?;
        let mut out = Vec::new();
        for item in log.range(from_seq..)?.take(limit) {
            let (k, v) = item?;
            out.push(decode_entry(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Log entries newest first, older than `before` when given, of one kind when given.
    pub fn recent(
        &self,
        before: Option<u64>,
        kind: Option<RecordKind>,
        limit: usize,
    ) -> Result<Vec<LogEntry>, ReadError> {
        let rtx = self.read()?;
        let log = rtx.open_table(LOG)?;
        let end = before.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        match kind {
            None => {
                for item in log.range(..end)?.rev().take(limit) {
                    let (k, v) = item?;
                    out.push(decode_entry(k.value(), v.value())?);
                }
            }
            Some(kind) => {
                let idx = rtx.open_table(LOG_BY_KIND)?;
                let c = kind.code();
                for item in idx.range((c, 0)..(c, end))?.rev().take(limit) {
                    let (k, _) = item?;
                    let seq = k.value().1;
                    out.push(get_entry(&log, seq)?);
                }
            }
        }
        Ok(out)
    }

    /// Log entries of one kind with `from_seq <= seq`, in seq order, at most `limit`.
    pub fn scan_kind(
        &self,
        kind: RecordKind,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, ReadError> {
        let rtx = self.read()?;
        let log = rtx.open_table(LOG)?;
        let idx = rtx.open_table(LOG_BY_KIND)?;
        let c = kind.code();
        let mut out = Vec::new();
        for item in idx.range((c, from_seq)..=(c, u64::MAX))?.take(limit) {
            let (k, _) = item?;
            out.push(get_entry(&log, k.value().1)?);
        }
        Ok(out)
    }

    /// Log entries with `from_ms <= ts_ms < to_ms`, in time order, at most `limit`.
    pub fn scan_time(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, ReadError> {
        let rtx = self.read()?;
        let log = rtx.open_table(LOG)?;
        let idx = rtx.open_table(LOG_BY_TIME)?;
        let mut out = Vec::new();
        if from_ms >= to_ms {
            return Ok(out);
        }
        for item in idx.range((from_ms, 0)..(to_ms, 0))?.take(limit) {
            let (k, _) = item?;
            out.push(get_entry(&log, k.value().1)?);
        }
        Ok(out)
    }

    /// Applies `retention` at `now_ms`: rolls up (count, min, max, sum per bucket) and drops
    /// sealed chunks older than the raw retention, at most 256 chunks a call (`more` says
    /// whether to call again), and drops expired rollups. One durable transaction; the log is
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
        let done = retention::compact(&wtx, now_ms, retention, 256)?;
        if done == Compacted::default() {
            wtx.abort().map_err(error::write_error)?;
        } else {
            wtx.commit().map_err(error::write_error)?;
        }
        Ok(done)
    }

    /// The rollups of one series with `from_ms <= start_ms < to_ms`, oldest first.
    pub fn rollups(
        &self,
        series_key: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<Rollup>, ReadError> {
        let rtx = self.read()?;
        let Some(sid) = rtx.open_table(SERIES)?.get(series_key)?.map(|v| v.value()) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        if from_ms >= to_ms {
            return Ok(out);
        }
        for row in rtx
            .open_table(ROLLUPS)?
            .range((sid, from_ms)..(sid, to_ms))?
        {
            let (k, v) = row?;
            let start = k.value().1;
            out.push(
                Rollup::decode(start, v.value())
                    .map_err(|e| codec_read_error("rollups", format!("{series_key}@{start}"), e))?,
            );
        }
        Ok(out)
    }

    /// The last `limit` runs of `model_id` with a seq below `before` (all when `None`), newest
    /// first, from the run index: fixed-width rows, no log record decoded.
    pub fn recent_runs(
        &self,
        model_id: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<RunRow>, ReadError> {
        let rtx = self.read()?;
        let t = rtx.open_table(RUNS)?;
        let mut out = Vec::with_capacity(limit.min(4096));
        for row in t
            .range((model_id, 0)..(model_id, before.unwrap_or(u64::MAX)))?
            .rev()
            .take(limit)
        {
            let (k, v) = row?;
            let seq = k.value().1;
            out.push(
                runs::decode(seq, v.value())
                    .map_err(|e| codec_read_error("runs", format!("{model_id}#{seq}"), e))?,
            );
        }
        Ok(out)
    }

    /// The series keys stored, in order.
    pub fn series(&self) -> Result<Vec<String>, ReadError> {
        let rtx = self.read()?;
        let t = rtx.open_table(SERIES)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, _) = item?;
            out.push(k.value().to_owned());
        }
        Ok(out)
    }

    /// Samples of one series with `from_ms <= ts_ms < to_ms`, in `(ts, seq)` order, at most
    /// `limit` (the oldest).
    pub fn samples(
        &self,
        series_key: &str,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<StoredSample>, ReadError> {
        let Some((signal, device, model_id)) = Sample::parse_series_key(series_key) else {
            return Ok(Vec::new());
        };
        let items = self.items(series_key, from_ms, to_ms, limit)?;
        Ok(items
            .into_iter()
            .map(|i| {
                let extra = i.extra.map(|e| *e).unwrap_or_default();
                StoredSample {
                    seq: i.seq,
                    late: false,
                    sample: Sample {
                        id: extra.id,
                        ts_ms: Some(i.ts_ms),
                        signal,
                        value: i.value,
                        unavailable: extra.unavailable,
                        device,
                        model_id: model_id.clone(),
                        session_id: extra.session_id,
                    },
                }
            })
            .collect())
    }

    /// `(ts_ms, value)` of the samples of one series with `from_ms <= ts_ms < to_ms`, in
    /// `(ts, seq)` order, at most `limit` (the oldest); `None` where a sample has no value.
    pub fn points(
        &self,
        series_key: &str,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Option<f64>)>, ReadError> {
        Ok(self
            .items(series_key, from_ms, to_ms, limit)?
            .into_iter()
            .map(|i| (i.ts_ms, i.value))
            .collect())
    }

    /// The values of one series with `from_ms <= ts_ms < to_ms`, in no particular order (for
    /// quantiles and sums). Chunks wholly inside the range decode their value column alone.
    pub fn values(
        &self,
        series_key: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<f64>, ReadError> {
        let mut out = Vec::new();
        self.visit_parts(series_key, from_ms, to_ms, true, |part| match part {
            Part::Values(v) => out.extend_from_slice(&v),
            Part::Items(items) => out.extend(items.iter().filter_map(|i| i.value)),
        })?;
        Ok(out)
    }

    /// Calls `f` with `(seq, ts_ms, value)` of every sample of one series with
    /// `from_ms <= ts_ms < to_ms`, in no particular order, a chunk at a time, without
    /// gathering them first (for aggregates over long ranges).
    pub fn each_sample(
        &self,
        series_key: &str,
        from_ms: i64,
        to_ms: i64,
        mut f: impl FnMut(u64, i64, Option<f64>),
    ) -> Result<(), ReadError> {
        self.visit_parts(series_key, from_ms, to_ms, false, |part| {
            if let Part::Items(items) = part {
                items.iter().for_each(|i| f(i.seq, i.ts_ms, i.value));
            }
        })
    }

    /// The samples of a series in range, sorted, at most `limit`.
    fn items(
        &self,
        series_key: &str,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<Item>, ReadError> {
        let mut out = Vec::new();
        self.visit_parts(series_key, from_ms, to_ms, false, |part| {
            if let Part::Items(items) = part {
                out.extend(items);
            }
        })?;
        out.sort_unstable_by_key(|i| (i.ts_ms, i.seq));
        out.truncate(limit);
        Ok(out)
    }

    /// Calls `f` with the samples of one series in range, chunk by chunk then the head, in no
    /// particular order. With `values_only`, a plain chunk wholly inside the range is given as
    /// its value column.
    fn visit_parts(
        &self,
        series_key: &str,
        from_ms: i64,
        to_ms: i64,
        values_only: bool,
        mut f: impl FnMut(Part),
    ) -> Result<(), ReadError> {
        if from_ms >= to_ms {
            return Ok(());
        }
        let rtx = self.read()?;
        let Some(sid) = rtx.open_table(SERIES)?.get(series_key)?.map(|v| v.value()) else {
            return Ok(());
        };
        let in_range = |ts: i64| from_ms <= ts && ts < to_ms;
        let chunks = rtx.open_table(CHUNKS)?;
        for row in chunks.range((sid, from_ms, 0)..=(sid, i64::MAX, u64::MAX))? {
            let (k, v) = row?;
            let key = || {
                let (_, max_ts, min_seq) = k.value();
                format!("{series_key}@{max_ts}#{min_seq}")
            };
            let codec = |e| codec_read_error("chunks", key(), e);
            let chunk = Chunk::parse(v.value()).map_err(codec)?;
            let h = chunk.header;
            if h.min_ts >= to_ms {
                continue;
            }
            let part = if values_only && h.plain && from_ms <= h.min_ts && h.max_ts < to_ms {
                Part::Values(chunk.values().map_err(codec)?)
            } else {
                let mut items = chunk.items().map_err(codec)?;
                items.retain(|i| in_range(i.ts_ms));
                Part::Items(items)
            };
            f(part);
        }
        let head = rtx.open_table(HEAD)?;
        let mut items = Vec::new();
        for row in head.range((sid, 0)..=(sid, u64::MAX))? {
            let (k, v) = row?;
            let key = k.value().1;
            let block = chunk::decode_head(v.value())
                .map_err(|e| codec_read_error("head", format!("{series_key}/{key}"), e))?;
            items.extend(block.into_iter().filter(|i| in_range(i.ts_ms)));
        }
        f(Part::Items(items));
        Ok(())
    }
}

/// A piece of a series that a query visits.
enum Part {
    /// The value column of a chunk wholly inside the range, every sample with a value.
    Values(Vec<f64>),
    Items(Vec<Item>),
}

fn codec_read_error(table: &'static str, key: String, e: CodecError) -> ReadError {
    match e {
        CodecError::Checksum => ReadError::Corrupt { table, key },
        CodecError::Decode(message) => ReadError::Decode {
            table,
            key,
            message,
        },
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Runs a redb call on a file that may be damaged. redb's debug builds panic on some damaged
/// structures (release builds return `Corrupted`); either way the file is refused, never
/// trusted, and the process carries on to say so.
fn guarded<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T, OpenError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown damage".into());
        OpenError::NotAStore {
            path: path.to_owned(),
            reason: format!("the file is damaged ({what})"),
        }
    })
}

/// Checks that `db` is a kora-telemetry store this build can read; answers its format version
/// and next seq.
fn check_format(db: &impl ReadableDatabase, path: &Path) -> Result<(u64, u64), OpenError> {
    let redb_err = |e: redb::Error| OpenError::Redb {
        path: path.to_owned(),
        source: e,
    };
    let rtx = db.begin_read().map_err(|e| redb_err(e.into()))?;
    let meta = match rtx.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Err(OpenError::NotAStore {
                path: path.to_owned(),
                reason: "it has no kora-telemetry meta table".into(),
            });
        }
        Err(e) => return Err(redb_err(e.into())),
    };
    let get = |k: &str| -> Result<Option<u64>, OpenError> {
        Ok(meta
            .get(k)
            .map_err(|e| redb_err(e.into()))?
            .map(|v| v.value()))
    };
    let Some(found) = get(K_FORMAT_VERSION)? else {
        return Err(OpenError::NotAStore {
            path: path.to_owned(),
            reason: "it records no format version".into(),
        });
    };
    if found > FORMAT_VERSION {
        return Err(OpenError::FormatTooNew {
            path: path.to_owned(),
            found,
            supported: FORMAT_VERSION,
        });
    }
    Ok((found, get(K_NEXT_SEQ)?.unwrap_or(1)))
}

fn get_entry(log: &redb::ReadOnlyTable<u64, &[u8]>, seq: u64) -> Result<LogEntry, ReadError> {
    match log.get(seq)? {
        Some(v) => decode_entry(seq, v.value()),
        None => Err(ReadError::Corrupt {
            table: "log",
            key: format!("{seq} (named by an index, missing from the log)"),
        }),
    }
}

fn decode_entry(seq: u64, bytes: &[u8]) -> Result<LogEntry, ReadError> {
    let record: Record = decode("log", || seq.to_string(), bytes)?;
    Ok(LogEntry { seq, record })
}

fn encode(value: &impl Serialize) -> Result<Vec<u8>, WriteError> {
    let payload = rmp_serde::to_vec_named(value)
        .map_err(|e| WriteError::Storage(format!("cannot encode a record: {e}")))?;
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: impl Fn() -> String,
    bytes: &[u8],
) -> Result<T, ReadError> {
    let (crc, payload) = bytes
        .split_at_checked(4)
        .ok_or_else(|| ReadError::Corrupt { table, key: key() })?;
    let mut crc_bytes = [0u8; 4];
    crc_bytes.copy_from_slice(crc);
    if u32::from_le_bytes(crc_bytes) != crc32fast::hash(payload) {
        return Err(ReadError::Corrupt { table, key: key() });
    }
    rmp_serde::from_slice(payload).map_err(|e| ReadError::Decode {
        table,
        key: key(),
        message: e.to_string(),
    })
}

/// The content digest of an item as the client sent it (before the server stamped a time).
fn digest(value: &impl Serialize) -> Result<[u8; 32], WriteError> {
    let bytes = rmp_serde::to_vec_named(value)
        .map_err(|e| WriteError::Storage(format!("cannot encode a record: {e}")))?;
    Ok(Sha256::digest(&bytes).into())
}

/// The tables one group commit writes, opened once per transaction.
struct Tables<'t> {
    ids: redb::Table<'t, &'static str, &'static [u8]>,
    log: redb::Table<'t, u64, &'static [u8]>,
    by_kind: redb::Table<'t, (u8, u64), ()>,
    by_time: redb::Table<'t, (i64, u64), ()>,
    series: redb::Table<'t, &'static str, u32>,
    head: redb::Table<'t, (u32, u64), &'static [u8]>,
    chunks: redb::Table<'t, (u32, i64, u64), &'static [u8]>,
    runs: redb::Table<'t, (&'static str, u64), &'static [u8]>,
    meta: redb::Table<'t, &'static str, u64>,
}

impl<'t> Tables<'t> {
    fn open(wtx: &'t WriteTransaction) -> Result<Tables<'t>, WriteError> {
        let w = |e: redb::TableError| error::write_error(e);
        Ok(Tables {
            ids: wtx.open_table(IDS).map_err(w)?,
            log: wtx.open_table(LOG).map_err(w)?,
            by_kind: wtx.open_table(LOG_BY_KIND).map_err(w)?,
            by_time: wtx.open_table(LOG_BY_TIME).map_err(w)?,
            series: wtx.open_table(SERIES).map_err(w)?,
            head: wtx.open_table(HEAD).map_err(w)?,
            chunks: wtx.open_table(CHUNKS).map_err(w)?,
            runs: wtx.open_table(RUNS).map_err(w)?,
            meta: wtx.open_table(META).map_err(w)?,
        })
    }
}

struct Writer {
    db: DbSlot,
    path: PathBuf,
    cache_bytes: usize,
    next_seq: u64,
    group_max_records: usize,
    /// Every series key and its number, as committed.
    series: HashMap<String, u32>,
    /// Each series' head, as committed.
    heads: HashMap<u32, HeadState>,
}

/// A series' head as committed: how many samples it holds, and its last block while that one
/// has room (its key and samples), so the next commit appends to it.
#[derive(Debug, Clone, Default)]
struct HeadState {
    len: usize,
    open: Option<(u64, Vec<Item>)>,
}

/// The samples of one group commit, gathered per series and written when the group ends.
#[derive(Default)]
struct PendingSamples {
    new_series: HashMap<String, u32>,
    items: BTreeMap<u32, Vec<Item>>,
    /// The series met in this group, found again without building their key.
    recent: Vec<(Signal, Option<u32>, Option<String>, u32)>,
}

impl Writer {
    fn run(mut self, receiver: Receiver<Job>) {
        while let Ok(first) = receiver.recv() {
            let mut records = first.batch.len();
            let mut jobs = vec![first];
            while records < self.group_max_records {
                match receiver.try_recv() {
                    Ok(job) => {
                        records += job.batch.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(jobs);
        }
    }

    /// Applies every job in one transaction and commits it durably; each job's callback learns
    /// its own outcome only after the commit. A job refused on its own (an id conflict) writes
    /// nothing; a storage failure fails every job of the group.
    fn commit_group(&mut self, jobs: Vec<Job>) {
        let start_seq = self.next_seq;
        let mut outcomes: Vec<Result<Appended, WriteError>> = Vec::with_capacity(jobs.len());
        let mut pending = PendingSamples::default();
        let mut heads = HashMap::new();
        let result = (|| -> Result<(), WriteError> {
            let db = self.database()?;
            let mut wtx = db.begin_write().map_err(error::write_error)?;
            wtx.set_quick_repair(true);
            {
                // Open every table once per group, not once per batch: with many
                // single-record batches the opens were a large share of the work.
                let mut tables = Tables::open(&wtx)?;
                for job in &jobs {
                    outcomes.push(self.apply(&mut tables, &mut pending, job)?);
                }
                heads = self.flush_samples(&mut tables, &mut pending.items)?;
            }
            let (mut log_new, mut samples_new) = (0, 0);
            for (job, outcome) in jobs.iter().zip(&outcomes) {
                if let Ok(a) = outcome {
                    match job.batch {
                        Batch::Samples(_) => samples_new += a.accepted,
                        Batch::Records(_) | Batch::Derived { .. } => log_new += a.accepted,
                    }
                }
            }
            if self.next_seq > start_seq {
                bump_meta(&mut wtx, self.next_seq, log_new, samples_new)?;
            }
            wtx.commit().map_err(error::write_error)
        })();
        match result {
            Ok(()) => {
                // Only now is the group's view of the series store the stored one.
                self.series.extend(pending.new_series);
                self.heads.extend(heads);
                for (job, outcome) in jobs.into_iter().zip(outcomes) {
                    (job.done)(outcome);
                }
            }
            Err(e) => {
                self.next_seq = start_seq;
                tracing::error!(error = %e, "group commit failed; no batch of the group was stored");
                // redb keeps refusing writes after an I/O failure until the file is reopened.
                if let Ok(mut slot) = self.db.write() {
                    slot.take();
                }
                // Reopen at once, so that readers are without a database only for a moment; if
                // the file cannot be opened yet, the next write tries again.
                if let Err(e) = self.database() {
                    tracing::warn!(error = %e, "the store could not be reopened yet");
                }
                for job in jobs {
                    (job.done)(Err(e.clone()));
                }
            }
        }
    }

    /// The open database, reopening the file first when a storage failure closed it. Readers
    /// may still hold the old handle for a moment, so the open is retried briefly.
    fn database(&mut self) -> Result<Arc<Database>, WriteError> {
        let poisoned = || WriteError::Storage("the database lock is poisoned".into());
        if let Some(db) = self.db.read().map_err(|_| poisoned())?.clone() {
            return Ok(db);
        }
        let mut last = None;
        for _ in 0..50 {
            let mut builder = Database::builder();
            builder.set_cache_size(self.cache_bytes);
            match builder.open(&self.path) {
                Ok(db) => {
                    let db = Arc::new(db);
                    let (_, next) = check_format(db.as_ref(), &self.path)
                        .map_err(|e| WriteError::Storage(e.to_string()))?;
                    // The failed transaction wrote nothing: the stored next seq is ours.
                    self.next_seq = self.next_seq.max(next);
                    *self.db.write().map_err(|_| poisoned())? = Some(db.clone());
                    tracing::info!(path = %self.path.display(), "store reopened after a storage failure");
                    return Ok(db);
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                    last = Some(WriteError::Storage(
                        "the store is still held by a reader; retrying".into(),
                    ));
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(error::write_error(e)),
            }
        }
        Err(last.unwrap_or_else(|| WriteError::Storage("the store could not be reopened".into())))
    }

    /// Writes the group's samples: into each series' head, and when a head reaches
    /// [`CHUNK_SAMPLES`], into sealed chunks. Answers each touched series' new head length.
    fn flush_samples(
        &self,
        t: &mut Tables<'_>,
        pending: &mut BTreeMap<u32, Vec<Item>>,
    ) -> Result<HashMap<u32, HeadState>, WriteError> {
        let mut heads = HashMap::with_capacity(pending.len());
        for (sid, mut items) in std::mem::take(pending) {
            let state = self.heads.get(&sid).cloned().unwrap_or_default();
            let state = if state.len + items.len() < CHUNK_SAMPLES {
                append_head(&mut t.head, sid, state, items)?
            } else {
                if state.len > 0 {
                    take_head(&mut t.head, sid, &mut items)?;
                }
                seal(&mut t.head, &mut t.chunks, sid, items)?
            };
            heads.insert(sid, state);
        }
        Ok(heads)
    }

    /// Checks a job's ids and writes it. `Ok(Err(_))` is a refusal of this job alone, with
    /// nothing written; `Err(_)` is a storage failure that aborts the whole group.
    fn apply(
        &mut self,
        t: &mut Tables<'_>,
        pending: &mut PendingSamples,
        job: &Job,
    ) -> Result<Result<Appended, WriteError>, WriteError> {
        let ids = &mut t.ids;
        // Pass 1: recognise retries and refuse reused ids, before writing anything.
        let mut seqs: Vec<Option<u64>> = Vec::with_capacity(job.batch.len());
        let mut digests: Vec<Option<[u8; 32]>> = Vec::with_capacity(job.batch.len());
        for index in 0..job.batch.len() {
            let (id, d) = match &job.batch {
                Batch::Samples(v) => (v[index].id.as_deref(), digest_if(&v[index])?),
                Batch::Records(v) => (v[index].client_id(), digest_if(&v[index])?),
                Batch::Derived { .. } => (None, None),
            };
            let (Some(id), Some(d)) = (id, d) else {
                seqs.push(None);
                digests.push(None);
                continue;
            };
            match ids.get(id).map_err(error::write_error)? {
                Some(v) => {
                    let v = v.value();
                    if v.len() != 40 || v[8..] != d {
                        return Ok(Err(WriteError::IdConflict {
                            index,
                            id: id.to_owned(),
                        }));
                    }
                    let mut seq = [0u8; 8];
                    seq.copy_from_slice(&v[..8]);
                    seqs.push(Some(u64::from_le_bytes(seq)));
                    digests.push(None);
                }
                None => {
                    seqs.push(None);
                    digests.push(Some(d));
                }
            }
        }
        // Pass 2: write the new items.
        let mut out = Appended {
            seqs: Vec::with_capacity(seqs.len()),
            accepted: 0,
            duplicates: 0,
            first_new_seq: None,
            last_new_seq: None,
        };
        let Tables {
            ids,
            log,
            by_kind,
            by_time,
            series,
            runs,
            meta,
            ..
        } = t;
        for (index, existing) in seqs.into_iter().enumerate() {
            if let Some(seq) = existing {
                out.seqs.push(seq);
                out.duplicates += 1;
                continue;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            match &job.batch {
                Batch::Samples(v) => {
                    let sample = &v[index];
                    let seen = pending.recent.iter().find(|(signal, device, model, _)| {
                        *signal == sample.signal
                            && *device == sample.device
                            && *model == sample.model_id
                    });
                    let sid = match seen {
                        Some(&(.., sid)) => sid,
                        None => {
                            let key = sample.series_key();
                            let known = self.series.get(&key).or(pending.new_series.get(&key));
                            let sid = match known {
                                Some(id) => *id,
                                None => {
                                    let id =
                                        u32::try_from(self.series.len() + pending.new_series.len())
                                            .map_err(|_| {
                                                WriteError::Storage("too many series".into())
                                            })?;
                                    series
                                        .insert(key.as_str(), id)
                                        .map_err(error::write_error)?;
                                    pending.new_series.insert(key, id);
                                    id
                                }
                            };
                            if pending.recent.len() < 64 {
                                pending.recent.push((
                                    sample.signal,
                                    sample.device,
                                    sample.model_id.clone(),
                                    sid,
                                ));
                            }
                            sid
                        }
                    };
                    let extra = Extra {
                        id: sample.id.clone(),
                        unavailable: sample.unavailable.clone(),
                        session_id: sample.session_id.clone(),
                    };
                    let ts = sample.ts_ms.unwrap_or(job.now_ms);
                    pending.items.entry(sid).or_default().push(Item::new(
                        seq,
                        ts,
                        sample.value,
                        extra,
                    ));
                }
                Batch::Records(v) | Batch::Derived { records: v, .. } => {
                    let mut record = v[index].clone();
                    record.stamp(job.now_ms);
                    let ts = record.ts_ms().unwrap_or(job.now_ms);
                    log.insert(seq, encode(&record)?.as_slice())
                        .map_err(error::write_error)?;
                    by_kind
                        .insert((record.kind().code(), seq), ())
                        .map_err(error::write_error)?;
                    by_time.insert((ts, seq), ()).map_err(error::write_error)?;
                    if let Record::Run(run) = &record {
                        runs.insert(
                            (run.model_id.as_str(), seq),
                            runs::encode(run, ts).as_slice(),
                        )
                        .map_err(error::write_error)?;
                    }
                }
            }
            if let Some(d) = digests[index] {
                let id = match &job.batch {
                    Batch::Samples(v) => v[index].id.as_deref(),
                    Batch::Records(v) => v[index].client_id(),
                    Batch::Derived { .. } => None,
                };
                if let Some(id) = id {
                    let mut value = [0u8; 40];
                    value[..8].copy_from_slice(&seq.to_le_bytes());
                    value[8..].copy_from_slice(&d);
                    ids.insert(id, value.as_slice())
                        .map_err(error::write_error)?;
                }
            }
            out.seqs.push(seq);
            out.accepted += 1;
            out.first_new_seq.get_or_insert(seq);
            out.last_new_seq = Some(seq);
        }
        if let Batch::Derived { cursor, .. } = job.batch {
            meta.insert(K_ENGINE_CURSOR, cursor)
                .map_err(error::write_error)?;
        }
        Ok(Ok(out))
    }
}

/// Only items with a client id need a digest.
fn digest_if<T: Serialize + HasClientId>(item: &T) -> Result<Option<[u8; 32]>, WriteError> {
    if item.has_client_id() {
        digest(item).map(Some)
    } else {
        Ok(None)
    }
}

trait HasClientId {
    fn has_client_id(&self) -> bool;
}

impl HasClientId for Sample {
    fn has_client_id(&self) -> bool {
        self.id.is_some()
    }
}

impl HasClientId for Record {
    fn has_client_id(&self) -> bool {
        self.client_id().is_some()
    }
}

fn bump_meta(
    wtx: &mut WriteTransaction,
    next_seq: u64,
    log_new: u64,
    samples_new: u64,
) -> Result<(), WriteError> {
    let mut meta = wtx.open_table(META).map_err(error::write_error)?;
    let log_records = meta
        .get(K_LOG_RECORDS)
        .map_err(error::write_error)?
        .map_or(0, |v| v.value());
    let samples = meta
        .get(K_SAMPLES)
        .map_err(error::write_error)?
        .map_or(0, |v| v.value());
    meta.insert(K_NEXT_SEQ, next_seq)
        .map_err(error::write_error)?;
    meta.insert(K_LOG_RECORDS, log_records + log_new)
        .map_err(error::write_error)?;
    meta.insert(K_SAMPLES, samples + samples_new)
        .map_err(error::write_error)?;
    Ok(())
}

type HeadTable<'t> = redb::Table<'t, (u32, u64), &'static [u8]>;
type ChunkTable<'t> = redb::Table<'t, (u32, i64, u64), &'static [u8]>;

fn codec_write_error(what: &str, e: CodecError) -> WriteError {
    WriteError::Storage(format!("{what}: {e:?}"))
}

/// Appends `items` to the head of series `sid`: to its open block first, then in new blocks
/// of [`HEAD_BLOCK`]. Answers the head's new state.
fn append_head(
    head: &mut HeadTable<'_>,
    sid: u32,
    state: HeadState,
    items: Vec<Item>,
) -> Result<HeadState, WriteError> {
    let len = state.len + items.len();
    let (mut key, mut block) = state.open.unwrap_or((0, Vec::new()));
    let mut write = |key: u64, block: &[Item]| -> Result<(), WriteError> {
        let bytes = chunk::encode_head(block).map_err(|e| codec_write_error("a head block", e))?;
        head.insert((sid, key), bytes.as_slice())
            .map_err(error::write_error)?;
        Ok(())
    };
    let mut dirty = false;
    for item in items {
        if block.len() == HEAD_BLOCK {
            write(key, &block)?;
            block.clear();
        }
        if block.is_empty() {
            key = item.seq;
        }
        block.push(item);
        dirty = true;
    }
    if dirty {
        write(key, &block)?;
    }
    Ok(HeadState {
        len,
        open: (!block.is_empty() && block.len() < HEAD_BLOCK).then_some((key, block)),
    })
}

/// Moves every head sample of series `sid` into `items` and removes its blocks.
fn take_head(head: &mut HeadTable<'_>, sid: u32, items: &mut Vec<Item>) -> Result<(), WriteError> {
    for row in head
        .range((sid, 0)..=(sid, u64::MAX))
        .map_err(error::write_error)?
    {
        let (k, v) = row.map_err(error::write_error)?;
        let key = k.value().1;
        items.extend(
            chunk::decode_head(v.value())
                .map_err(|e| codec_write_error(&format!("head block {sid}/{key}"), e))?,
        );
    }
    head.retain_in((sid, 0)..=(sid, u64::MAX), |_, _| false)
        .map_err(error::write_error)?;
    Ok(())
}

/// Seals `items` (series `sid`, not in the head table) into chunks of [`CHUNK_SAMPLES`],
/// oldest first, and puts the newest remainder into the head. Answers the head's new state.
fn seal(
    head: &mut HeadTable<'_>,
    chunks: &mut ChunkTable<'_>,
    sid: u32,
    mut items: Vec<Item>,
) -> Result<HeadState, WriteError> {
    items.sort_unstable_by_key(|i| (i.ts_ms, i.seq));
    let sealed = items.len() / CHUNK_SAMPLES * CHUNK_SAMPLES;
    for part in items[..sealed].chunks(CHUNK_SAMPLES) {
        let (Some(last), Some(min_seq)) = (part.last(), part.iter().map(|i| i.seq).min()) else {
            continue;
        };
        let bytes = chunk::encode_chunk(part).map_err(|e| codec_write_error("a chunk", e))?;
        chunks
            .insert((sid, last.ts_ms, min_seq), bytes.as_slice())
            .map_err(error::write_error)?;
    }
    let rest = items.split_off(sealed);
    append_head(head, sid, HeadState::default(), rest)
}

/// Every series key with its number, and every series' head.
type SeriesState = (HashMap<String, u32>, HashMap<u32, HeadState>);

/// The series numbers and heads the writer starts from.
fn load_series(db: &Database) -> Result<SeriesState, ReadError> {
    let rtx = db.begin_read()?;
    let mut series = HashMap::new();
    for row in rtx.open_table(SERIES)?.iter()? {
        let (k, v) = row?;
        series.insert(k.value().to_owned(), v.value());
    }
    let mut heads: HashMap<u32, HeadState> = HashMap::new();
    for row in rtx.open_table(HEAD)?.iter()? {
        let (k, v) = row?;
        let (sid, key) = k.value();
        let block = chunk::decode_head(v.value())
            .map_err(|e| codec_read_error("head", format!("{sid}/{key}"), e))?;
        let state = heads.entry(sid).or_default();
        state.len += block.len();
        // Blocks come in key order: the last one read is the one to append to, if it has room.
        state.open = (block.len() < HEAD_BLOCK).then_some((key, block));
    }
    Ok((series, heads))
}

/// Converts a format 1 store (a row per sample) to format 2 (head rows and sealed chunks) in
/// one transaction: either every sample is converted and the old table dropped, or nothing
/// changes. Series are streamed in `(ts, seq)` order, a chunk at a time.
fn migrate_v1(db: &Database, path: &Path) -> Result<(), OpenError> {
    let fail = |e: String| OpenError::NotAStore {
        path: path.to_owned(),
        reason: format!("converting format 1 to 2 failed: {e}"),
    };
    let wtx = db.begin_write().map_err(|e| fail(e.to_string()))?;
    let mut converted = 0u64;
    {
        let old = wtx
            .open_table(SAMPLES_V1)
            .map_err(|e| fail(e.to_string()))?;
        let mut head = wtx.open_table(HEAD).map_err(|e| fail(e.to_string()))?;
        let mut chunks = wtx.open_table(CHUNKS).map_err(|e| fail(e.to_string()))?;
        let mut current: Option<u32> = None;
        let mut items = Vec::with_capacity(CHUNK_SAMPLES);
        for row in old.iter().map_err(|e| fail(e.to_string()))? {
            let (k, v) = row.map_err(|e| fail(e.to_string()))?;
            let (sid, ts, seq) = k.value();
            if current != Some(sid) {
                if let Some(prev) = current {
                    seal(&mut head, &mut chunks, prev, std::mem::take(&mut items))
                        .map_err(|e| fail(e.to_string()))?;
                }
                current = Some(sid);
            }
            let (_late, sample): (bool, Sample) =
                decode("samples", || format!("{sid}@{ts}#{seq}"), v.value())
                    .map_err(|e| fail(e.to_string()))?;
            let extra = Extra {
                id: sample.id,
                unavailable: sample.unavailable,
                session_id: sample.session_id,
            };
            items.push(Item::new(seq, ts, sample.value, extra));
            converted += 1;
            if items.len() == CHUNK_SAMPLES {
                seal(&mut head, &mut chunks, sid, std::mem::take(&mut items))
                    .map_err(|e| fail(e.to_string()))?;
            }
        }
        if let Some(sid) = current {
            seal(&mut head, &mut chunks, sid, items).map_err(|e| fail(e.to_string()))?;
        }
        // Format 1 had no run index: build it from the log's runs.
        let log = wtx.open_table(LOG).map_err(|e| fail(e.to_string()))?;
        let by_kind = wtx
            .open_table(LOG_BY_KIND)
            .map_err(|e| fail(e.to_string()))?;
        let mut runs_t = wtx.open_table(RUNS).map_err(|e| fail(e.to_string()))?;
        wtx.open_table(ROLLUPS).map_err(|e| fail(e.to_string()))?;
        let c = RecordKind::Run.code();
        for row in by_kind
            .range((c, 0)..=(c, u64::MAX))
            .map_err(|e| fail(e.to_string()))?
        {
            let (k, _) = row.map_err(|e| fail(e.to_string()))?;
            let seq = k.value().1;
            let bytes = log
                .get(seq)
                .map_err(|e| fail(e.to_string()))?
                .ok_or_else(|| {
                    fail(format!(
                        "log entry {seq} is named by the kind index but missing"
                    ))
                })?;
            let entry = decode_entry(seq, bytes.value()).map_err(|e| fail(e.to_string()))?;
            if let Record::Run(run) = &entry.record {
                let ts = run.ts_ms.unwrap_or(0);
                runs_t
                    .insert(
                        (run.model_id.as_str(), seq),
                        runs::encode(run, ts).as_slice(),
                    )
                    .map_err(|e| fail(e.to_string()))?;
            }
        }
        let mut meta = wtx.open_table(META).map_err(|e| fail(e.to_string()))?;
        meta.insert(K_FORMAT_VERSION, FORMAT_VERSION)
            .map_err(|e| fail(e.to_string()))?;
    }
    wtx.delete_table(SAMPLES_V1)
        .map_err(|e| fail(e.to_string()))?;
    wtx.commit().map_err(|e| fail(e.to_string()))?;
    tracing::info!(path = %path.display(), samples = converted, "store converted from format 1 to 2");
    Ok(())
}
