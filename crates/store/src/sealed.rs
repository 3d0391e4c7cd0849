//! Sealed records: moving the oldest `window` and `run` records of the log into compressed
//! chunks (one table pair per kind), and reading them back in the log's seq order.
//!
//! Sealing keeps every guarantee of the log. The records keep their seqs and decode to exactly
//! what was appended; each kind is sealed oldest first, so every sealed record is older than
//! every record of its kind still in the log, and one kind's chunks cover disjoint, increasing
//! seq ranges. The move
//! happens inside a write transaction (the log rows and their index rows go, the chunk comes),
//! so a reader sees each record in exactly one place. The read side merges the chunks with the
//! log rows by seq, so a scan of the log is the same sequence of records before and after.

use kora_model::{LogEntry, Record, RecordKind, Run, WindowRecord};
use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, Table, TableDefinition};

use crate::chunk::CodecError;
use crate::codec::{codec_read_error, codec_write_error, decode_entry};
use crate::error::{self, ReadError, WriteError};
use crate::run_chunk::RunColumns;
use crate::tables::{RUN_CHUNKS, RUN_SPANS, WINDOW_CHUNKS, WINDOW_SPANS};
use crate::window_chunk::{self, Columns};

/// A kind of log record that is sealed in chunks: its tables and its chunk encoding.
pub(crate) trait Sealable {
    const KIND: RecordKind;
    /// The chunks, keyed by the last seq each holds.
    const CHUNKS: TableDefinition<'static, u64, &'static [u8]>;
    /// Each chunk's first seq and time span, keyed like [`Sealable::CHUNKS`].
    const SPANS: TableDefinition<'static, u64, (u64, i64, i64)>;
    /// The chunk table's name, for errors.
    const TABLE: &'static str;
    /// Whether a seal guesses its rows from the newest chunk's bytes a row ([`fitting_rows`]):
    /// for runs, whose bytes a row differ by about 1 % from one chunk to the next; not for
    /// windows, whose chunks fit a page and differ by up to twice (a year's 4,587: p5 0.53,
    /// p95 1.74), so a guess would cut chunks that all the rows fill better (the year's window
    /// chunks took 0.3 MB more with it).
    const GUESS: bool;
    /// A decoded chunk.
    type Columns;
    /// One record as the chunk encoding takes it.
    type Row;
    /// The row of the record at `seq` with its indexed `ts` (a record of another kind is an
    /// error).
    fn row(seq: u64, ts: i64, record: Record) -> Result<Self::Row, CodecError>;
    /// Encodes rows, in seq order.
    fn encode(rows: &[Self::Row]) -> Result<Vec<u8>, CodecError>;
    fn decode(bytes: &[u8]) -> Result<Self::Columns, CodecError>;
    fn seqs(c: &Self::Columns) -> &[u64];
    fn ts(c: &Self::Columns, i: usize) -> i64;
    fn record(c: &Self::Columns, i: usize) -> Result<Record, CodecError>;
}

/// `window` records, sealed in [`window_chunk`]s.
pub(crate) struct Windows;

/// `run` records, sealed in [`crate::run_chunk`]s.
pub(crate) struct Runs;

fn not_of_kind(seq: u64, want: RecordKind, record: &Record) -> CodecError {
    CodecError::Decode(format!(
        "log entry {seq} is indexed as a {} but is a {}",
        want.as_str(),
        record.kind().as_str()
    ))
}

impl Sealable for Windows {
    const KIND: RecordKind = RecordKind::Window;
    const CHUNKS: TableDefinition<'static, u64, &'static [u8]> = WINDOW_CHUNKS;
    const SPANS: TableDefinition<'static, u64, (u64, i64, i64)> = WINDOW_SPANS;
    const TABLE: &'static str = "window_chunks";
    const GUESS: bool = false;
    type Columns = Columns;
    type Row = (u64, WindowRecord);

    fn row(seq: u64, _ts: i64, record: Record) -> Result<Self::Row, CodecError> {
        match record {
            Record::Window(w) => Ok((seq, w)),
            other => Err(not_of_kind(seq, Self::KIND, &other)),
        }
    }

    fn encode(rows: &[Self::Row]) -> Result<Vec<u8>, CodecError> {
        window_chunk::encode(rows)
    }

    fn decode(bytes: &[u8]) -> Result<Columns, CodecError> {
        Columns::decode(bytes)
    }

    fn seqs(c: &Columns) -> &[u64] {
        &c.seqs
    }

    fn ts(c: &Columns, i: usize) -> i64 {
        c.ts(i)
    }

    fn record(c: &Columns, i: usize) -> Result<Record, CodecError> {
        Ok(Record::Window(c.record(i)))
    }
}

impl Sealable for Runs {
    const KIND: RecordKind = RecordKind::Run;
    const CHUNKS: TableDefinition<'static, u64, &'static [u8]> = RUN_CHUNKS;
    const SPANS: TableDefinition<'static, u64, (u64, i64, i64)> = RUN_SPANS;
    const TABLE: &'static str = "run_chunks";
    const GUESS: bool = true;
    type Columns = std::sync::Arc<RunColumns>;
    type Row = (u64, i64, Run);

    fn row(seq: u64, ts: i64, record: Record) -> Result<Self::Row, CodecError> {
        match record {
            Record::Run(r) => Ok((seq, ts, r)),
            other => Err(not_of_kind(seq, Self::KIND, &other)),
        }
    }

    fn encode(rows: &[Self::Row]) -> Result<Vec<u8>, CodecError> {
        crate::run_chunk::encode(rows)
    }

    fn decode(bytes: &[u8]) -> Result<Self::Columns, CodecError> {
        crate::run_chunk::decode_cached(bytes)
    }

    fn seqs(c: &Self::Columns) -> &[u64] {
        &c.seqs
    }

    fn ts(c: &Self::Columns, i: usize) -> i64 {
        c.ts(i)
    }

    fn record(c: &Self::Columns, i: usize) -> Result<Record, CodecError> {
        c.record(i).map(Record::Run)
    }
}

/// The tables sealing writes: the log's, and the chunk and span tables of the kind sealed.
pub(crate) struct SealTables<'a, 't> {
    pub log: &'a mut Table<'t, u64, &'static [u8]>,
    pub by_kind: &'a mut Table<'t, (u8, u64), ()>,
    pub by_time: &'a mut Table<'t, (i64, u64), ()>,
    pub chunks: &'a mut Table<'t, u64, &'static [u8]>,
    pub spans: &'a mut Table<'t, u64, (u64, i64, i64)>,
}

/// Moves the oldest `n` records of kind `K` still in the log into one sealed chunk, or fewer
/// of them when that fits the chunk in a shorter run of pages ([`fitting_rows`]). Answers how
/// many were moved (none only when the log holds none).
pub(crate) fn seal_oldest<K: Sealable>(
    t: &mut SealTables<'_, '_>,
    n: usize,
) -> Result<usize, WriteError> {
    let c = K::KIND.code();
    let mut seqs = Vec::with_capacity(n);
    for row in t
        .by_kind
        .range((c, 0)..=(c, u64::MAX))
        .map_err(error::write_error)?
        .take(n)
    {
        seqs.push(row.map_err(error::write_error)?.0.value().1);
    }
    if seqs.is_empty() {
        return Ok(0);
    }
    let mut keys: Vec<(u64, i64)> = Vec::with_capacity(seqs.len());
    let mut rows: Vec<K::Row> = Vec::with_capacity(seqs.len());
    for &seq in &seqs {
        let bytes = t.log.get(seq).map_err(error::write_error)?.ok_or_else(|| {
            WriteError::Storage(format!(
                "log entry {seq} is named by the kind index but missing"
            ))
        })?;
        let entry = decode_entry(seq, bytes.value())
            .map_err(|e| WriteError::Storage(format!("cannot seal log entry {seq}: {e}")))?;
        // Every stored record of a sealed kind carries its time (stamped when stored).
        let ts = entry.record.ts_ms().ok_or_else(|| {
            WriteError::Storage(format!("cannot seal log entry {seq}: it has no time"))
        })?;
        keys.push((seq, ts));
        rows.push(K::row(seq, ts, entry.record).map_err(|e| codec_write_error(K::TABLE, e))?);
    }
    let encode = |rows: &[K::Row]| K::encode(rows).map_err(|e| codec_write_error(K::TABLE, e));
    let guess = if K::GUESS {
        bytes_a_row(t.chunks)?
    } else {
        None
    };
    let (count, bytes) = fitting_rows(rows.len(), guess, |k| encode(&rows[..k]))?;
    let keys = &keys[..count];
    let (first, last) = (keys[0].0, keys[keys.len() - 1].0);
    let min_ts = keys.iter().map(|(_, ts)| *ts).min().unwrap_or(0);
    let max_ts = keys.iter().map(|(_, ts)| *ts).max().unwrap_or(0);
    for (seq, ts) in keys {
        t.log.remove(seq).map_err(error::write_error)?;
        t.by_kind.remove((c, *seq)).map_err(error::write_error)?;
        t.by_time.remove((*ts, *seq)).map_err(error::write_error)?;
    }
    t.chunks
        .insert(last, bytes.as_slice())
        .map_err(error::write_error)?;
    t.spans
        .insert(last, (first, min_ts, max_ts))
        .map_err(error::write_error)?;
    Ok(keys.len())
}

/// The bytes a row of the newest chunk of a table took, from its frame's row count (read
/// without its CRC: a guess for [`fitting_rows`], never data).
fn bytes_a_row(chunks: &Table<'_, u64, &'static [u8]>) -> Result<Option<f64>, WriteError> {
    let Some((_, last)) = chunks.last().map_err(error::write_error)? else {
        return Ok(None);
    };
    let bytes = last.value();
    Ok(crate::sections::frame_rows(bytes).map(|rows| bytes.len() as f64 / rows as f64))
}

/// redb's page size.
const PAGE: usize = 4096;

/// What redb's leaf adds to one chunk: its header, the value's length and the key (16 bytes
/// for a `u64` key), with room to spare.
const LEAF_OVERHEAD: usize = 32;

/// The bytes redb allocates for a chunk of `len` bytes. A leaf holding a value larger than a
/// page gets a run of pages of its own, a power of two of them long: a chunk of 8.7 KB takes
/// 16 KiB, one of 98 KB takes 128 KiB.
fn allocated(len: usize) -> usize {
    (len + LEAF_OVERHEAD).div_ceil(PAGE).next_power_of_two() * PAGE
}

/// How many of `n` rows to seal, and their chunk (`encode(k)` encodes the first `k`): all `n`,
/// unless their chunk would leave more than a sixteenth of its run of pages empty. Then the
/// most rows whose chunk fits the run half as long, so the pages hold the chunk instead of
/// empty space (the rows left wait in the log for the next chunk). A year of one machine's
/// windows and runs left 52 MB of 170 MB of their pages empty before (chunks of 8.7 KB in
/// 16 KiB, of 98 KB in 128 KiB); with an eighth as the bound, 1,024 runs sealed field by field
/// took 58 KB in 64 KiB, 5.4 MB of a year's pages empty.
///
/// `bytes_a_row` is what a row of the kind's newest chunk took. When it says the `n` rows would
/// not fill their run, the rows that fill the shorter one are encoded first, and only once
/// when the guess holds (a seal of runs encoded the 1,024 waiting runs, then the ~560 that fit
/// 32 KiB, sometimes a third time: about 9 ms a seal inside the write transaction). Taken only
/// when that chunk fills its run; a wrong guess costs one encoding, never a sparser chunk.
pub(crate) fn fitting_rows(
    n: usize,
    bytes_a_row: Option<f64>,
    encode: impl Fn(usize) -> Result<Vec<u8>, WriteError>,
) -> Result<(usize, Vec<u8>), WriteError> {
    // The run of pages `n` rows of `b` bytes each would take, when they would not fill it.
    let unfilled = |b: f64| {
        let predicted = (n as f64 * b) as usize;
        let pages = allocated(predicted);
        (pages > PAGE && !fills(predicted)).then_some(pages)
    };
    let guess = bytes_a_row
        .filter(|b| b.is_finite() && *b > 0.0 && n >= 2)
        .and_then(|b| unfilled(b).map(|pages| (b, pages)));
    // `all`: the chunk of all `n` rows, when it was encoded.
    let (target, mut k, all) = match guess {
        Some((b, pages)) => {
            let target = pages / 2 - LEAF_OVERHEAD;
            let k = ((target as f64 * AIM / b) as usize).clamp(1, n - 1);
            (target, k, None)
        }
        None => {
            let all = encode(n)?;
            let pages = allocated(all.len());
            if n < 2 || pages <= PAGE || fills(all.len()) {
                return Ok((n, all));
            }
            let target = pages / 2 - LEAF_OVERHEAD;
            (target, (n * target / all.len()).clamp(1, n - 1), Some(all))
        }
    };
    // Rows cost about the same bytes each: the count in proportion to the bytes, again from
    // each encoding that does not fit yet (at least one row fewer each time).
    loop {
        let bytes = encode(k)?;
        if let Some((_, pages)) = guess {
            // Guessed: the rows encoded must say what the guess said of all `n` (fewer rows take
            // a little more a row than all, so this errs towards encoding them all), and a
            // chunk that fits must fill its run.
            let sparse = bytes.len() <= target && !fills(bytes.len());
            if sparse || unfilled(bytes.len() as f64 / k as f64) != Some(pages) {
                return fitting_rows(n, None, encode);
            }
        }
        if bytes.len() <= target {
            return Ok((k, bytes));
        }
        if k == 1 {
            // One row alone does not fit the shorter run: nothing to gain.
            return Ok((n, all.map_or_else(|| encode(n), Ok)?));
        }
        k = (k * target / bytes.len()).clamp(1, k - 1);
    }
}

/// The share of the shorter run of pages a guessed chunk aims at: the bytes a row of a year's
/// run chunks differ from the chunk before's by 1 % at most in 98 of 100 (1,299 chunks, the
/// ratio's p1 0.990 and p99 1.010, at most 1.013), so a chunk aimed at 99.5 % mostly fits and
/// fills its run; when its rows come out larger, one step down in proportion fits (one
/// encoding more). 200,000 of a year's runs sealed this way filled their pages to 99.4 %
/// (99.8 % deciding from all the rows).
const AIM: f64 = 0.995;

/// Whether a chunk of `len` bytes leaves at most a sixteenth of its run of pages empty.
fn fills(len: usize) -> bool {
    (len + LEAF_OVERHEAD) * 16 >= allocated(len) * 15
}

/// Adds `written` records of kind `K` to `meta`'s count `counter` of those still in the log,
/// and seals the oldest into chunks of `chunk` while at least that many wait. Answers how many
/// are left in the log.
pub(crate) fn seal_kind<K: Sealable>(
    meta: &mut Table<'_, &'static str, u64>,
    t: &mut SealTables<'_, '_>,
    written: u64,
    counter: &'static str,
    chunk: usize,
) -> Result<u64, WriteError> {
    let mut unsealed = meta
        .get(counter)
        .map_err(error::write_error)?
        .map_or(0, |v| v.value());
    if written == 0 {
        return Ok(unsealed);
    }
    unsealed += written;
    let chunk = chunk.max(1);
    while unsealed >= chunk as u64 {
        let moved = seal_oldest::<K>(t, chunk)?;
        if moved == 0 {
            break;
        }
        unsealed = unsealed.saturating_sub(moved as u64);
    }
    meta.insert(counter, unsealed).map_err(error::write_error)?;
    Ok(unsealed)
}

/// The read side of one sealed kind: its chunk and span tables in one read transaction.
pub(crate) struct Sealed<K: Sealable> {
    pub chunks: ReadOnlyTable<u64, &'static [u8]>,
    pub spans: ReadOnlyTable<u64, (u64, i64, i64)>,
    kind: std::marker::PhantomData<K>,
}

fn columns<K: Sealable>(last: u64, bytes: &[u8]) -> Result<K::Columns, ReadError> {
    K::decode(bytes).map_err(|e: CodecError| codec_read_error(K::TABLE, last.to_string(), e))
}

fn entry<K: Sealable>(c: &K::Columns, i: usize) -> Result<LogEntry, ReadError> {
    let seq = K::seqs(c)[i];
    let record = K::record(c, i).map_err(|e| codec_read_error(K::TABLE, seq.to_string(), e))?;
    Ok(LogEntry { seq, record })
}

impl<K: Sealable> Sealed<K> {
    pub(crate) fn open(rtx: &ReadTransaction) -> Result<Sealed<K>, ReadError> {
        Ok(Sealed {
            chunks: rtx.open_table(K::CHUNKS)?,
            spans: rtx.open_table(K::SPANS)?,
            kind: std::marker::PhantomData,
        })
    }

    /// A walk over the sealed records with `from_seq <= seq`, in seq order.
    pub(crate) fn cursor(&self, from_seq: u64) -> Result<Cursor<K>, ReadError> {
        Ok(Cursor {
            chunks: self.chunks.range(from_seq..)?,
            from_seq,
            current: None,
            at: 0,
        })
    }

    /// Sealed records with `from_seq <= seq`, in seq order, at most `limit`.
    pub(crate) fn from(&self, from_seq: u64, limit: usize) -> Result<Vec<LogEntry>, ReadError> {
        let mut cursor = self.cursor(from_seq)?;
        let mut out = Vec::new();
        while out.len() < limit && cursor.peek()?.is_some() {
            out.extend(cursor.take()?);
        }
        Ok(out)
    }

    /// The last seq of the chunk holding `before` when that chunk also holds older records.
    fn straddling(&self, before: u64) -> Result<Option<u64>, ReadError> {
        Ok(match self.spans.range(before..)?.next() {
            Some(row) => {
                let (k, v) = row?;
                (v.value().0 < before).then(|| k.value())
            }
            None => None,
        })
    }

    /// Sealed records with `floor < seq < before`, newest first, at most `limit`. Chunks
    /// wholly at or below `floor` are not read.
    pub(crate) fn before(
        &self,
        before: u64,
        floor: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, ReadError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let mut visit = |last: u64, bytes: &[u8]| -> Result<bool, ReadError> {
            let c = columns::<K>(last, bytes)?;
            let seqs = K::seqs(&c);
            let end = seqs.partition_point(|&s| s < before);
            let start = seqs.partition_point(|&s| s <= floor);
            for i in (start..end).rev() {
                out.push(entry::<K>(&c, i)?);
                if out.len() == limit {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        if let Some(last) = self.straddling(before)?
            && let Some(v) = self.chunks.get(last)?
            && visit(last, v.value())?
        {
            return Ok(out);
        }
        for row in self.chunks.range(..before)?.rev() {
            let (k, v) = row?;
            if k.value() <= floor || visit(k.value(), v.value())? {
                break;
            }
        }
        Ok(out)
    }

    /// Sealed records with `from_ms <= ts_ms < to_ms`, in `(ts_ms, seq)` order, at most
    /// `limit`. Only chunks whose span meets the range are decoded.
    pub(crate) fn in_time(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, ReadError> {
        let mut out = Vec::new();
        self.each_in_time(from_ms, to_ms, |e| out.push(e))?;
        out.sort_by_key(|e| (e.record.ts_ms(), e.seq));
        out.truncate(limit);
        Ok(out)
    }

    /// Calls `each` with every sealed record with `from_ms <= ts_ms < to_ms`, chunk by chunk
    /// (seq order within a chunk, chunks in seq order), holding one decoded chunk at a time.
    /// Only chunks whose span meets the range are decoded.
    pub(crate) fn each_in_time(
        &self,
        from_ms: i64,
        to_ms: i64,
        mut each: impl FnMut(LogEntry),
    ) -> Result<(), ReadError> {
        for row in self.spans.iter()? {
            let (k, v) = row?;
            let (_, min_ts, max_ts) = v.value();
            if max_ts < from_ms || min_ts >= to_ms {
                continue;
            }
            let last = k.value();
            if let Some(bytes) = self.chunks.get(last)? {
                let c = columns::<K>(last, bytes.value())?;
                for i in 0..K::seqs(&c).len() {
                    if (from_ms..to_ms).contains(&K::ts(&c, i)) {
                        each(entry::<K>(&c, i)?);
                    }
                }
            }
        }
        Ok(())
    }

    /// The newest `ts_ms` of the sealed records, from the chunks' spans (nothing decoded).
    pub(crate) fn newest_ts(&self) -> Result<Option<i64>, ReadError> {
        let mut newest = None;
        for row in self.spans.iter()? {
            let (_, v) = row?;
            newest = newest.max(Some(v.value().2));
        }
        Ok(newest)
    }
}

impl Sealed<Windows> {
    /// Sealed windows with `seq < before` whose `(window_kind, metric, scope)` `keep` accepts,
    /// newest first, at most `limit`. A chunk naming no accepted window is skipped without
    /// decompressing it; rows are built only for the windows taken.
    pub(crate) fn before_matching(
        &self,
        before: u64,
        limit: usize,
        keep: &dyn Fn(&str, &str, &str) -> bool,
    ) -> Result<Vec<LogEntry>, ReadError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        // The chunk holding `before` comes first, then every older one.
        let straddling = self
            .spans
            .range(before..)?
            .next()
            .transpose()?
            .map(|(k, _)| k.value());
        let older = self.chunks.range(..before)?.rev();
        let mut lasts = straddling
            .into_iter()
            .map(Ok)
            .chain(older.map(|row| row.map(|(k, _)| k.value())));
        while let Some(last) = lasts.next().transpose()? {
            let Some(bytes) = self.chunks.get(last)? else {
                continue;
            };
            let codec = |e: CodecError| codec_read_error(Windows::TABLE, last.to_string(), e);
            let wanted: Vec<bool> = Columns::names(bytes.value())
                .map_err(codec)?
                .iter()
                .map(|(kind, metric, scope)| keep(kind, metric, scope))
                .collect();
            if !wanted.contains(&true) {
                continue;
            }
            let c = columns::<Windows>(last, bytes.value())?;
            let end = c.seqs.partition_point(|&s| s < before);
            for i in (0..end).rev() {
                if wanted.get(c.key(i) as usize).copied().unwrap_or(false) {
                    out.push(entry::<Windows>(&c, i)?);
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A walk over one sealed kind's records in seq order, from a seq on: one chunk decoded at a
/// time, each record built only when taken ([`Cursor::take`]).
pub(crate) struct Cursor<K: Sealable> {
    chunks: redb::Range<'static, u64, &'static [u8]>,
    from_seq: u64,
    current: Option<K::Columns>,
    at: usize,
}

impl<K: Sealable> Cursor<K> {
    /// The seq of the next record, `None` past the last one (decodes the next chunk when the
    /// current one is done).
    pub(crate) fn peek(&mut self) -> Result<Option<u64>, ReadError> {
        loop {
            if let Some(&seq) = self.current.as_ref().and_then(|c| K::seqs(c).get(self.at)) {
                return Ok(Some(seq));
            }
            let Some(row) = self.chunks.next() else {
                self.current = None;
                return Ok(None);
            };
            let (k, v) = row?;
            let c = columns::<K>(k.value(), v.value())?;
            self.at = K::seqs(&c).partition_point(|&s| s < self.from_seq);
            self.current = Some(c);
        }
    }

    /// The next record: call after [`Cursor::peek`] answered its seq.
    pub(crate) fn take(&mut self) -> Result<Option<LogEntry>, ReadError> {
        let Some(c) = &self.current else {
            return Ok(None);
        };
        if self.at >= K::seqs(c).len() {
            return Ok(None);
        }
        let e = entry::<K>(c, self.at)?;
        self.at += 1;
        Ok(Some(e))
    }
}

/// Every sealed kind of one read transaction, read together: what the log's scans merge with
/// its rows.
pub(crate) struct SealedLog {
    pub windows: Sealed<Windows>,
    pub runs: Sealed<Runs>,
}

impl SealedLog {
    pub(crate) fn open(rtx: &ReadTransaction) -> Result<SealedLog, ReadError> {
        Ok(SealedLog {
            windows: Sealed::open(rtx)?,
            runs: Sealed::open(rtx)?,
        })
    }

    /// Sealed records of every kind with `floor < seq < before`, newest first, at most `limit`.
    pub(crate) fn before(
        &self,
        before: u64,
        floor: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, ReadError> {
        Ok(merge(
            self.windows.before(before, floor, limit)?,
            self.runs.before(before, floor, limit)?,
            limit,
            |e| std::cmp::Reverse(e.seq),
        ))
    }

    /// Sealed records of every kind with `from_ms <= ts_ms < to_ms`, in `(ts_ms, seq)` order,
    /// at most `limit`.
    pub(crate) fn in_time(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, ReadError> {
        Ok(merge(
            self.windows.in_time(from_ms, to_ms, limit)?,
            self.runs.in_time(from_ms, to_ms, limit)?,
            limit,
            |e| (e.record.ts_ms(), e.seq),
        ))
    }
}

/// Merges two lists sorted by `key` into one, keeping at most `limit`.
pub(crate) fn merge<K: Ord>(
    a: Vec<LogEntry>,
    b: Vec<LogEntry>,
    limit: usize,
    key: impl Fn(&LogEntry) -> K,
) -> Vec<LogEntry> {
    let mut out = Vec::with_capacity(limit.min(a.len() + b.len()));
    let mut a = a.into_iter().peekable();
    let mut b = b.into_iter().peekable();
    while out.len() < limit {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => key(x) <= key(y),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        out.extend(if take_a { a.next() } else { b.next() });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_takes_a_page_or_a_power_of_two_of_them() {
        assert_eq!(allocated(0), PAGE);
        assert_eq!(allocated(PAGE - LEAF_OVERHEAD), PAGE);
        assert_eq!(allocated(PAGE - LEAF_OVERHEAD + 1), 2 * PAGE);
        assert_eq!(allocated(8_700), 4 * PAGE);
        assert_eq!(allocated(98_000), 32 * PAGE);
    }

    /// An encoding of `k` rows: 100 bytes and 10 a row.
    fn linear(k: usize) -> Result<Vec<u8>, WriteError> {
        Ok(vec![0; 100 + 10 * k])
    }

    #[test]
    fn rows_are_sealed_fewer_only_when_that_fills_a_shorter_run_of_pages() {
        // 10,340 bytes would take 16 KiB: 806 rows (8,160 bytes) fill 8 KiB.
        let (k, bytes) = fitting_rows(1_024, None, linear).unwrap();
        assert_eq!((k, bytes.len()), (806, 8_160));
        assert_eq!(allocated(bytes.len()), 2 * PAGE);
        // 15,600 bytes use 16 KiB well: all rows.
        assert_eq!(fitting_rows(1_550, None, linear).unwrap().0, 1_550);
        // 15,000 leave more than a sixteenth of it empty: the rows that fill 8 KiB.
        assert_eq!(fitting_rows(1_490, None, linear).unwrap().0, 806);
        // Within a page: all rows, whatever is left empty.
        assert_eq!(fitting_rows(100, None, linear).unwrap().0, 100);
        // A first row too large for the shorter run alone: all rows.
        let huge = |k: usize| Ok(vec![0; 20_000 + 10 * (k - 1)]);
        assert_eq!(fitting_rows(3, None, huge).unwrap().0, 3);
        // Rows whose bytes grow faster than their count: still a chunk that fits.
        let steep = |k: usize| Ok(vec![0; 10 * k + k * k / 100]);
        let (k, bytes) = fitting_rows(1_000, None, steep).unwrap();
        // (20,000 bytes for all 1,000 would take 32 KiB.)
        assert_eq!(
            allocated(bytes.len()),
            4 * PAGE,
            "{k} rows, {} bytes",
            bytes.len()
        );
        assert!(
            bytes.len() > 3 * PAGE,
            "{k} rows leave the run a quarter empty"
        );
    }

    #[test]
    fn a_guess_from_the_last_chunk_encodes_once_and_a_wrong_one_changes_nothing() {
        let calls = std::cell::Cell::new(0);
        let counted = |k: usize| {
            calls.set(calls.get() + 1);
            linear(k)
        };
        // Unguessed: all 1,024 rows, 808 (20 bytes over), then the 806 that fill 8 KiB.
        assert_eq!(fitting_rows(1_024, None, counted).unwrap().0, 806);
        assert_eq!(calls.replace(0), 3);
        // The last chunk took 10.1 bytes a row: 99 % of 8 KiB in one encoding.
        let (k, bytes) = fitting_rows(1_024, Some(10.1), counted).unwrap();
        assert_eq!(calls.replace(0), 1);
        assert!(fills(bytes.len()) && bytes.len() <= 2 * PAGE - LEAF_OVERHEAD);
        assert!((790..=806).contains(&k), "{k} rows");
        // Rows 2 % larger than guessed: one step down still fills 8 KiB.
        let (k, bytes) = fitting_rows(1_024, Some(9.8), counted).unwrap();
        assert!(calls.replace(0) <= 3);
        assert!(
            k <= 806 && fills(bytes.len()),
            "{k} rows, {} bytes",
            bytes.len()
        );
        // Rows far smaller than guessed: what all the rows say, as unguessed.
        assert_eq!(fitting_rows(1_024, Some(40.0), counted).unwrap().0, 806);
        // Rows far larger than guessed, all of them within a page: all rows.
        assert_eq!(fitting_rows(300, Some(20.0), counted).unwrap().0, 300);
        // 15,600 bytes fill 16 KiB: all 1,550 rows, however the guess came out.
        for guess in [None, Some(8.0), Some(10.0), Some(12.0), Some(f64::NAN)] {
            assert_eq!(
                fitting_rows(1_550, guess, counted).unwrap().0,
                1_550,
                "{guess:?}"
            );
        }
    }
}
