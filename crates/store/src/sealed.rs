//! Sealed windows: moving the oldest `window` records of the log into compressed chunks, and
//! reading them back in the log's seq order.
//!
//! Sealing keeps every guarantee of the log. The records keep their seqs and decode to exactly
//! what was appended; they are sealed oldest first, so every sealed window is older than every
//! window still in the log, and the chunks cover disjoint, increasing seq ranges. The move
//! happens inside a write transaction (the log rows and their index rows go, the chunk comes),
//! so a reader sees each window in exactly one place. The read side merges the chunks with the
//! log rows by seq, so a scan of the log is the same sequence of records before and after.

use kora_model::{LogEntry, Record, RecordKind, WindowRecord};
use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, Table};

use crate::chunk::CodecError;
use crate::codec::{codec_read_error, codec_write_error, decode_entry};
use crate::error::{self, ReadError, WriteError};
use crate::tables::{WINDOW_CHUNKS, WINDOW_SPANS};
use crate::window_chunk::{self, Columns};

/// The tables sealing writes.
pub(crate) struct SealTables<'a, 't> {
    pub log: &'a mut Table<'t, u64, &'static [u8]>,
    pub by_kind: &'a mut Table<'t, (u8, u64), ()>,
    pub by_time: &'a mut Table<'t, (i64, u64), ()>,
    pub chunks: &'a mut Table<'t, u64, &'static [u8]>,
    pub spans: &'a mut Table<'t, u64, (u64, i64, i64)>,
}

fn window_code() -> u8 {
    RecordKind::Window.code()
}

/// Moves the oldest `n` window records still in the log into one sealed chunk. Answers how
/// many were moved (fewer than `n` only when the log holds fewer).
pub(crate) fn seal_oldest(t: &mut SealTables<'_, '_>, n: usize) -> Result<usize, WriteError> {
    let c = window_code();
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
    let mut windows: Vec<(u64, WindowRecord)> = Vec::with_capacity(seqs.len());
    for &seq in &seqs {
        let bytes = t.log.get(seq).map_err(error::write_error)?.ok_or_else(|| {
            WriteError::Storage(format!(
                "log entry {seq} is named by the kind index but missing"
            ))
        })?;
        let entry = decode_entry(seq, bytes.value())
            .map_err(|e| WriteError::Storage(format!("cannot seal window {seq}: {e}")))?;
        let Record::Window(w) = entry.record else {
            return Err(WriteError::Storage(format!(
                "log entry {seq} is indexed as a window but is a {}",
                entry.record.kind().as_str()
            )));
        };
        windows.push((seq, w));
    }
    let bytes =
        window_chunk::encode(&windows).map_err(|e| codec_write_error("a window chunk", e))?;
    let (Some(&(first, _)), Some(&(last, _))) = (windows.first(), windows.last()) else {
        return Ok(0);
    };
    let min_ts = windows.iter().map(|(_, w)| w.ts_ms).min().unwrap_or(0);
    let max_ts = windows.iter().map(|(_, w)| w.ts_ms).max().unwrap_or(0);
    for (seq, w) in &windows {
        t.log.remove(seq).map_err(error::write_error)?;
        t.by_kind.remove((c, *seq)).map_err(error::write_error)?;
        t.by_time
            .remove((w.ts_ms, *seq))
            .map_err(error::write_error)?;
    }
    t.chunks
        .insert(last, bytes.as_slice())
        .map_err(error::write_error)?;
    t.spans
        .insert(last, (first, min_ts, max_ts))
        .map_err(error::write_error)?;
    Ok(windows.len())
}

/// The read side: the chunk and span tables of one read transaction.
pub(crate) struct Sealed {
    pub chunks: ReadOnlyTable<u64, &'static [u8]>,
    pub spans: ReadOnlyTable<u64, (u64, i64, i64)>,
}

fn columns(last: u64, bytes: &[u8]) -> Result<Columns, ReadError> {
    Columns::decode(bytes)
        .map_err(|e: CodecError| codec_read_error("window_chunks", last.to_string(), e))
}

fn entry(c: &Columns, i: usize) -> LogEntry {
    LogEntry {
        seq: c.seqs[i],
        record: Record::Window(c.record(i)),
    }
}

impl Sealed {
    pub(crate) fn open(rtx: &ReadTransaction) -> Result<Sealed, ReadError> {
        Ok(Sealed {
            chunks: rtx.open_table(WINDOW_CHUNKS)?,
            spans: rtx.open_table(WINDOW_SPANS)?,
        })
    }

    /// Sealed windows with `from_seq <= seq`, in seq order, at most `limit`.
    pub(crate) fn from(&self, from_seq: u64, limit: usize) -> Result<Vec<LogEntry>, ReadError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for row in self.chunks.range(from_seq..)? {
            let (k, v) = row?;
            let c = columns(k.value(), v.value())?;
            let start = c.seqs.partition_point(|&s| s < from_seq);
            for i in start..c.seqs.len() {
                out.push(entry(&c, i));
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Sealed windows with `floor < seq < before`, newest first, at most `limit`. Chunks wholly
    /// at or below `floor` are not read.
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
        // The chunk holding `before` may hold older windows too.
        let straddling = match self.spans.range(before..)?.next() {
            Some(row) => {
                let (k, v) = row?;
                (v.value().0 < before).then(|| k.value())
            }
            None => None,
        };
        let mut visit = |last: u64, bytes: &[u8]| -> Result<bool, ReadError> {
            let c = columns(last, bytes)?;
            let end = c.seqs.partition_point(|&s| s < before);
            let start = c.seqs.partition_point(|&s| s <= floor);
            for i in (start..end).rev() {
                out.push(entry(&c, i));
                if out.len() == limit {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        if let Some(last) = straddling
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
            let codec = |e: CodecError| codec_read_error("window_chunks", last.to_string(), e);
            let wanted: Vec<bool> = Columns::names(bytes.value())
                .map_err(codec)?
                .iter()
                .map(|(kind, metric, scope)| keep(kind, metric, scope))
                .collect();
            if !wanted.contains(&true) {
                continue;
            }
            let c = columns(last, bytes.value())?;
            let end = c.seqs.partition_point(|&s| s < before);
            for i in (0..end).rev() {
                if wanted.get(c.key(i) as usize).copied().unwrap_or(false) {
                    out.push(entry(&c, i));
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Sealed windows with `from_ms <= ts_ms < to_ms`, in `(ts_ms, seq)` order, at most `limit`.
    /// Only chunks whose span meets the range are decoded.
    pub(crate) fn in_time(
        &self,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, ReadError> {
        let mut out = Vec::new();
        for row in self.spans.iter()? {
            let (k, v) = row?;
            let (_, min_ts, max_ts) = v.value();
            if max_ts < from_ms || min_ts >= to_ms {
                continue;
            }
            let last = k.value();
            if let Some(bytes) = self.chunks.get(last)? {
                let c = columns(last, bytes.value())?;
                for i in 0..c.seqs.len() {
                    if (from_ms..to_ms).contains(&c.ts(i)) {
                        out.push(entry(&c, i));
                    }
                }
            }
        }
        out.sort_by_key(|e| (e.record.ts_ms(), e.seq));
        out.truncate(limit);
        Ok(out)
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
