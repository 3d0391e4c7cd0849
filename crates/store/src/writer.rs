//! The writer thread: every batch goes through it, and it shares one durable transaction among
//! every batch waiting (group commit).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;

use kora_model::{Record, Sample, Signal};
use redb::{Database, ReadableTable, WriteTransaction};
use serde::Serialize;

use crate::chunk::{CHUNK_SAMPLES, Extra, Item};
use crate::codec::{DIGEST_LEN, digest, encode_record, with_crc};
use crate::derive::store_state;
use crate::error::{self, WriteError};
use crate::format::check_format;
use crate::heads::{HeadState, append_head, seal, take_head};
use crate::run_index::RunIndex;
use crate::runs;
use crate::sealed::{Runs, SealTables, Windows, seal_kind};
use crate::tables::{
    CHUNKS, HEAD, IDS, IDS_BY_TIME, K_ENGINE_CURSOR, K_LOG_RECORDS, K_NEXT_SEQ, K_SAMPLE_DERIVER,
    K_SAMPLES, K_UNSEALED_RUNS, K_UNSEALED_WINDOWS, LOG, LOG_BY_KIND, LOG_BY_TIME, META,
    RUN_CHUNKS, RUN_SPANS, SERIES, STATE, WINDOW_CHUNKS, WINDOW_SPANS,
};
use crate::{Appended, Batch, DbSlot, Job, SampleDeriver};

/// The tables one group commit writes, opened once per transaction.
struct Tables<'t> {
    ids: redb::Table<'t, &'static str, &'static [u8]>,
    ids_by_time: redb::Table<'t, (i64, u64), &'static str>,
    log: redb::Table<'t, u64, &'static [u8]>,
    by_kind: redb::Table<'t, (u8, u64), ()>,
    by_time: redb::Table<'t, (i64, u64), ()>,
    series: redb::Table<'t, &'static str, u32>,
    head: redb::Table<'t, (u32, u64), &'static [u8]>,
    chunks: redb::Table<'t, (u32, i64, u64), &'static [u8]>,
    run_index: RunIndex<'t>,
    meta: redb::Table<'t, &'static str, u64>,
    window_chunks: redb::Table<'t, u64, &'static [u8]>,
    window_spans: redb::Table<'t, u64, (u64, i64, i64)>,
    run_chunks: redb::Table<'t, u64, &'static [u8]>,
    run_spans: redb::Table<'t, u64, (u64, i64, i64)>,
    state: redb::Table<'t, &'static str, &'static [u8]>,
    /// `window` records written in this transaction.
    windows: u64,
    /// `run` records written in this transaction.
    runs_written: u64,
}

impl<'t> Tables<'t> {
    fn open(wtx: &'t WriteTransaction) -> Result<Tables<'t>, WriteError> {
        let w = |e: redb::TableError| error::write_error(e);
        Ok(Tables {
            ids: wtx.open_table(IDS).map_err(w)?,
            ids_by_time: wtx.open_table(IDS_BY_TIME).map_err(w)?,
            log: wtx.open_table(LOG).map_err(w)?,
            by_kind: wtx.open_table(LOG_BY_KIND).map_err(w)?,
            by_time: wtx.open_table(LOG_BY_TIME).map_err(w)?,
            series: wtx.open_table(SERIES).map_err(w)?,
            head: wtx.open_table(HEAD).map_err(w)?,
            chunks: wtx.open_table(CHUNKS).map_err(w)?,
            run_index: RunIndex::open(wtx)?,
            meta: wtx.open_table(META).map_err(w)?,
            window_chunks: wtx.open_table(WINDOW_CHUNKS).map_err(w)?,
            window_spans: wtx.open_table(WINDOW_SPANS).map_err(w)?,
            run_chunks: wtx.open_table(RUN_CHUNKS).map_err(w)?,
            run_spans: wtx.open_table(RUN_SPANS).map_err(w)?,
            state: wtx.open_table(STATE).map_err(w)?,
            windows: 0,
            runs_written: 0,
        })
    }

    /// Counts the windows and runs this transaction wrote into `unsealed_windows` and
    /// `unsealed_runs`, and seals the oldest of each kind into chunks of `window_chunk` and
    /// `run_chunk` while at least that many wait in the log; and each touched model's run index
    /// head in chunks of `run_index_chunk`.
    fn seal(
        &mut self,
        window_chunk: usize,
        run_chunk: usize,
        run_index_chunk: usize,
    ) -> Result<(), WriteError> {
        let windows = std::mem::take(&mut self.windows);
        let runs = std::mem::take(&mut self.runs_written);
        let Tables {
            log,
            by_kind,
            by_time,
            meta,
            window_chunks,
            window_spans,
            run_chunks,
            run_spans,
            ..
        } = self;
        let mut t = SealTables {
            log,
            by_kind,
            by_time,
            chunks: window_chunks,
            spans: window_spans,
        };
        seal_kind::<Windows>(meta, &mut t, windows, K_UNSEALED_WINDOWS, window_chunk)?;
        t.chunks = run_chunks;
        t.spans = run_spans;
        seal_kind::<Runs>(meta, &mut t, runs, K_UNSEALED_RUNS, run_chunk)?;
        self.run_index.seal(run_index_chunk)
    }
}

pub(crate) struct Writer {
    pub(crate) db: DbSlot,
    pub(crate) path: PathBuf,
    pub(crate) cache_bytes: usize,
    pub(crate) next_seq: u64,
    pub(crate) group_max_records: usize,
    /// How many windows one sealed chunk holds ([`crate::StoreOptions::window_chunk`]).
    pub(crate) window_chunk: usize,
    /// How many runs one sealed chunk holds ([`crate::StoreOptions::run_chunk`]).
    pub(crate) run_chunk: usize,
    /// How many rows of a model's run index one sealed chunk holds
    /// ([`crate::StoreOptions::run_index_chunk`]).
    pub(crate) run_index_chunk: usize,
    /// Every series key and its number, as committed.
    pub(crate) series: HashMap<String, u32>,
    /// Each series' head, as committed.
    pub(crate) heads: HashMap<u32, HeadState>,
    /// Sees each batch's new samples inside the transaction ([`crate::Store::open_with_deriver`]).
    pub(crate) deriver: Option<Box<dyn SampleDeriver>>,
    /// Durable transactions committed since open ([`crate::Store::commits`]).
    pub(crate) commits: Arc<AtomicU64>,
    /// Set before any write transaction (the close then checks every page again).
    pub(crate) written: Arc<AtomicBool>,
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
    pub(crate) fn run(mut self, receiver: Receiver<Job>) {
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
    /// nothing; a storage failure fails every job of the group. With a deriver, each samples
    /// job's new samples are derived right after the job is applied (so the derived records get
    /// the next seqs), the deriver's state is written once before the commit, and the deriver
    /// then learns whether the transaction committed or failed.
    fn commit_group(&mut self, jobs: Vec<Job>) {
        let start_seq = self.next_seq;
        let mut outcomes: Vec<Result<Appended, WriteError>> = Vec::with_capacity(jobs.len());
        let mut pending = PendingSamples::default();
        let mut heads = HashMap::new();
        // Whether the deriver saw samples in this transaction (and so must learn its outcome).
        let mut derived = false;
        let result = (|| -> Result<(), WriteError> {
            self.written.store(true, Ordering::Release);
            let db = self.database()?;
            let mut wtx = db.begin_write().map_err(error::write_error)?;
            wtx.set_quick_repair(true);
            let mut derived_new = 0;
            {
                // Open every table once per group, not once per batch: with many
                // single-record batches the opens were a large share of the work.
                let mut tables = Tables::open(&wtx)?;
                for job in &jobs {
                    let outcome = self.apply(&mut tables, &mut pending, job)?;
                    if let (Ok(appended), Batch::Samples(batch)) = (&outcome, &job.batch) {
                        derived_new +=
                            self.derive(&mut tables, job.now_ms, batch, appended, &mut derived)?;
                    }
                    outcomes.push(outcome);
                }
                heads = self.flush_samples(&mut tables, &mut pending.items)?;
                tables.seal(self.window_chunk, self.run_chunk, self.run_index_chunk)?;
            }
            if derived && let Some(deriver) = &self.deriver {
                store_state(&wtx, deriver.as_ref())?;
            }
            let (mut log_new, mut samples_new) = (derived_new, 0);
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
                self.commits.fetch_add(1, Ordering::Relaxed);
                // Only now is the group's view of the series store the stored one.
                self.series.extend(pending.new_series);
                self.heads.extend(heads);
                if derived && let Some(deriver) = &mut self.deriver {
                    deriver.committed();
                }
                for (job, outcome) in jobs.into_iter().zip(outcomes) {
                    (job.done)(outcome);
                }
            }
            Err(e) => {
                self.next_seq = start_seq;
                if derived && let Some(deriver) = &mut self.deriver {
                    deriver.rolled_back();
                }
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
        if let Batch::Derived { state, .. } = &job.batch
            && state.iter().any(|(key, _)| key == K_SAMPLE_DERIVER)
        {
            return Ok(Err(WriteError::Storage(format!(
                "a derived batch names the state key {K_SAMPLE_DERIVER:?}, which is the store's own"
            ))));
        }
        let ids = &mut t.ids;
        // Pass 1: recognise retries and refuse reused ids, before writing anything.
        let mut seqs: Vec<Option<u64>> = Vec::with_capacity(job.batch.len());
        let mut digests: Vec<Option<[u8; DIGEST_LEN]>> = Vec::with_capacity(job.batch.len());
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
                    // A store before format 5 kept all 32 bytes of the SHA-256.
                    let v = v.value();
                    if (v.len() != 8 + DIGEST_LEN && v.len() != 40) || v[8..8 + DIGEST_LEN] != d {
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
                                    t.series
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
                    write_record(t, seq, v[index].clone(), job.now_ms)?;
                }
            }
            if let Some(d) = digests[index] {
                let id = match &job.batch {
                    Batch::Samples(v) => v[index].id.as_deref(),
                    Batch::Records(v) => v[index].client_id(),
                    Batch::Derived { .. } => None,
                };
                if let Some(id) = id {
                    let mut value = [0u8; 8 + DIGEST_LEN];
                    value[..8].copy_from_slice(&seq.to_le_bytes());
                    value[8..].copy_from_slice(&d);
                    t.ids
                        .insert(id, value.as_slice())
                        .map_err(error::write_error)?;
                    t.ids_by_time
                        .insert((job.now_ms, seq), id)
                        .map_err(error::write_error)?;
                }
            }
            out.seqs.push(seq);
            out.accepted += 1;
            out.first_new_seq.get_or_insert(seq);
            out.last_new_seq = Some(seq);
        }
        if let Batch::Derived { cursor, state, .. } = &job.batch {
            t.meta
                .insert(K_ENGINE_CURSOR, *cursor)
                .map_err(error::write_error)?;
            for (key, bytes) in state {
                t.state
                    .insert(key.as_str(), with_crc(bytes).as_slice())
                    .map_err(error::write_error)?;
            }
        }
        Ok(Ok(out))
    }

    /// Gives the deriver, when there is one, the samples `batch` newly stored (`appended` is
    /// its outcome), and writes the records it returns right after them. Answers how many
    /// records were written; sets `derived` once the deriver has been called.
    fn derive(
        &mut self,
        t: &mut Tables<'_>,
        now_ms: i64,
        batch: &[Sample],
        appended: &Appended,
        derived: &mut bool,
    ) -> Result<u64, WriteError> {
        let (Some(deriver), Some(first_new)) = (self.deriver.as_mut(), appended.first_new_seq)
        else {
            return Ok(0);
        };
        // A duplicate keeps the seq it was first stored with, below every seq of this batch.
        let new: Vec<(u64, Sample)> = appended
            .seqs
            .iter()
            .zip(batch)
            .filter(|(seq, _)| **seq >= first_new)
            .map(|(&seq, sample)| {
                let mut sample = sample.clone();
                sample.ts_ms = Some(sample.ts_ms.unwrap_or(now_ms));
                (seq, sample)
            })
            .collect();
        *derived = true;
        let records = deriver.derive(&new);
        let written = records.len() as u64;
        for record in records {
            let seq = self.next_seq;
            self.next_seq += 1;
            write_record(t, seq, record, now_ms)?;
        }
        Ok(written)
    }
}

/// Writes one log record at `seq`, stamped with `now_ms` when it has no time: its log row, its
/// kind and time index rows, and its run index row for a run.
fn write_record(
    t: &mut Tables<'_>,
    seq: u64,
    mut record: Record,
    now_ms: i64,
) -> Result<(), WriteError> {
    record.stamp(now_ms);
    let ts = record.ts_ms().unwrap_or(now_ms);
    t.log
        .insert(seq, encode_record(&record)?.as_slice())
        .map_err(error::write_error)?;
    t.by_kind
        .insert((record.kind().code(), seq), ())
        .map_err(error::write_error)?;
    t.by_time
        .insert((ts, seq), ())
        .map_err(error::write_error)?;
    if let Record::Window(_) = &record {
        t.windows += 1;
    }
    if let Record::Run(run) = &record {
        t.runs_written += 1;
        t.run_index
            .add(&run.model_id, seq, &runs::encode(run, ts))?;
    }
    Ok(())
}

/// Only items with a client id need a digest.
fn digest_if<T: Serialize + HasClientId>(item: &T) -> Result<Option<[u8; DIGEST_LEN]>, WriteError> {
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
