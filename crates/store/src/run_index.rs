//! The per-model run index, headed and sealed like a sample series: each model has a number
//! (`run_models`), its newest runs are fixed-width rows (`run_head`, encoding in
//! [`crate::runs`]), and every [`crate::StoreOptions::run_index_chunk`] of them (128 by
//! default) are sealed into one chunk of pco columns (`run_index`); once a model's small chunks
//! hold twice [`MERGE`] chunks' worth, the oldest [`MERGE`] are merged into one (1,024 rows by
//! default; cut in two when that would leave its run of pages partly empty, see
//! [`RunIndex::merge`]). So "the last N runs of this model" reads a short head of small rows
//! and the small chunks before it (fewer than 2,048 rows, at least 1,024 once it has that
//! many), and a year of runs takes a few bytes a run in large chunks instead of a row each.
//!
//! A head row costs a B-tree step (~0.1 µs); a chunk costs pco about 2.5 µs a column plus a
//! few ns a number to decode, so the head is kept short and the chunks a query decodes are kept
//! decoded by the store ([`ChunkCache`], a few thousand rows, each entry answered only for the
//! exact bytes it was decoded from). Chunks may hold any number of rows: a store sealed at
//! another size (every chunk 1,024 rows and heads up to 1,023 before `run_index_chunk` had
//! its own default) reads the same, and a longer head is sealed down at its model's next run.
//!
//! Chunk layout (the frame of [`crate::sections`], version 1, 11 sections, each a pco column):
//! seq (increasing), `ts_ms`, `model_latency_ms`, `total_latency_ms`, `deterministic_stage_ms`,
//! `model_stage_ms`, `validation_retry_count`, `budget_breach_count`, `context_tokens`,
//! `tokens_in` and `tokens_out` (`u64::MAX` when absent).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use redb::{ReadOnlyTable, ReadableTable, ReadableTableMetadata, Table, WriteTransaction};

use crate::chunk::CodecError;
use crate::codec::codec_write_error;
use crate::error::{self, WriteError};
use crate::runs::{self, RunRow};
use crate::sealed::fitting_rows;
use crate::sections::{column, compress, frame, unframe};
use crate::tables::{RUN_HEAD, RUN_INDEX, RUN_MODELS, RUNS_V3};

const VERSION: u8 = 1;
const SECTIONS: usize = 11;
const WHAT: &str = "run index chunk";

/// Encodes `rows` (increasing seqs, not empty) as one chunk.
pub(crate) fn encode(rows: &[RunRow]) -> Result<Vec<u8>, CodecError> {
    let u64s = |f: fn(&RunRow) -> u64| rows.iter().map(f).collect::<Vec<u64>>();
    let f64s = |f: fn(&RunRow) -> f64| rows.iter().map(f).collect::<Vec<f64>>();
    let u32s = |f: fn(&RunRow) -> u32| rows.iter().map(f).collect::<Vec<u32>>();
    let ts: Vec<i64> = rows.iter().map(|r| r.ts_ms).collect();
    let sections = [
        compress(&u64s(|r| r.seq))?,
        compress(&ts)?,
        compress(&f64s(|r| r.model_latency_ms))?,
        compress(&f64s(|r| r.total_latency_ms))?,
        compress(&f64s(|r| r.deterministic_stage_ms))?,
        compress(&f64s(|r| r.model_stage_ms))?,
        compress(&u32s(|r| r.validation_retry_count))?,
        compress(&u32s(|r| r.budget_breach_count))?,
        compress(&u64s(|r| r.context_tokens))?,
        compress(&u64s(|r| r.tokens_in.unwrap_or(u64::MAX)))?,
        compress(&u64s(|r| r.tokens_out.unwrap_or(u64::MAX)))?,
    ];
    frame(VERSION, rows.len(), &sections, WHAT)
}

/// Decodes a chunk back to its rows, in seq order.
pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<RunRow>, CodecError> {
    let (n, [seq, ts, ml, tl, ds, ms, vr, bb, ct, ti, to]) =
        unframe::<SECTIONS>(bytes, VERSION, WHAT)?;
    let seq: Vec<u64> = column(seq, n, WHAT)?;
    let ts: Vec<i64> = column(ts, n, WHAT)?;
    let ml: Vec<f64> = column(ml, n, WHAT)?;
    let tl: Vec<f64> = column(tl, n, WHAT)?;
    let ds: Vec<f64> = column(ds, n, WHAT)?;
    let ms: Vec<f64> = column(ms, n, WHAT)?;
    let vr: Vec<u32> = column(vr, n, WHAT)?;
    let bb: Vec<u32> = column(bb, n, WHAT)?;
    let ct: Vec<u64> = column(ct, n, WHAT)?;
    let ti: Vec<u64> = column(ti, n, WHAT)?;
    let to: Vec<u64> = column(to, n, WHAT)?;
    let opt = |v: u64| (v != u64::MAX).then_some(v);
    Ok((0..n)
        .map(|i| RunRow {
            seq: seq[i],
            ts_ms: ts[i],
            model_latency_ms: ml[i],
            total_latency_ms: tl[i],
            deterministic_stage_ms: ds[i],
            model_stage_ms: ms[i],
            validation_retry_count: vr[i],
            budget_breach_count: bb[i],
            context_tokens: ct[i],
            tokens_in: opt(ti[i]),
            tokens_out: opt(to[i]),
        })
        .collect())
}

/// The run index tables of one write transaction, and the models it touched.
pub(crate) struct RunIndex<'t> {
    models: Table<'t, &'static str, (u32, u64)>,
    head: Table<'t, (u32, u64), &'static [u8]>,
    chunks: Table<'t, (u32, u64), &'static [u8]>,
    /// Each model this transaction added a run to: its number and head length.
    touched: BTreeMap<String, (u32, u64)>,
}

impl<'t> RunIndex<'t> {
    pub(crate) fn open(wtx: &'t WriteTransaction) -> Result<RunIndex<'t>, WriteError> {
        Ok(RunIndex {
            models: wtx.open_table(RUN_MODELS).map_err(error::write_error)?,
            head: wtx.open_table(RUN_HEAD).map_err(error::write_error)?,
            chunks: wtx.open_table(RUN_INDEX).map_err(error::write_error)?,
            touched: BTreeMap::new(),
        })
    }

    /// Adds the row of the run stored at `seq` to its model's head.
    pub(crate) fn add(&mut self, model_id: &str, seq: u64, row: &[u8]) -> Result<(), WriteError> {
        let number = match self.touched.get_mut(model_id) {
            Some((number, len)) => {
                *len += 1;
                *number
            }
            None => {
                let known = self
                    .models
                    .get(model_id)
                    .map_err(error::write_error)?
                    .map(|v| v.value());
                let (number, len) = match known {
                    Some(v) => v,
                    None => {
                        let number = u32::try_from(self.models.len().map_err(error::write_error)?)
                            .map_err(|_| WriteError::Storage("too many run models".into()))?;
                        // Inserted now, so the next new model counts this one.
                        self.models
                            .insert(model_id, (number, 0))
                            .map_err(error::write_error)?;
                        (number, 0)
                    }
                };
                self.touched.insert(model_id.to_owned(), (number, len + 1));
                number
            }
        };
        self.head
            .insert((number, seq), row)
            .map_err(error::write_error)?;
        Ok(())
    }

    /// Seals the oldest `chunk` rows of every touched model's head while at least that many
    /// wait, merges its older small chunks ([`RunIndex::merge`], into `chunk * MERGE` rows),
    /// and records each touched model's head length.
    pub(crate) fn seal(&mut self, chunk: usize) -> Result<(), WriteError> {
        let chunk = chunk.max(1);
        for (model_id, (number, mut len)) in std::mem::take(&mut self.touched) {
            let mut sealed = false;
            while len >= chunk as u64 {
                let mut rows = Vec::with_capacity(chunk);
                for row in self
                    .head
                    .range((number, 0)..=(number, u64::MAX))
                    .map_err(error::write_error)?
                    .take(chunk)
                {
                    let (k, v) = row.map_err(error::write_error)?;
                    let seq = k.value().1;
                    rows.push(runs::decode(seq, v.value()).map_err(|e| {
                        codec_write_error(&format!("run index row {model_id}#{seq}"), e)
                    })?);
                }
                let Some(last) = rows.last().map(|r| r.seq) else {
                    break;
                };
                let bytes = encode(&rows).map_err(|e| codec_write_error(WHAT, e))?;
                for r in &rows {
                    self.head
                        .remove((number, r.seq))
                        .map_err(error::write_error)?;
                }
                self.chunks
                    .insert((number, last), bytes.as_slice())
                    .map_err(error::write_error)?;
                len = len.saturating_sub(rows.len() as u64);
                sealed = true;
            }
            // Only a new small chunk can bring the small ones to twice a merged chunk.
            if sealed {
                self.merge(number, chunk, chunk * MERGE)?;
            }
            self.models
                .insert(model_id.as_str(), (number, len))
                .map_err(error::write_error)?;
        }
        Ok(())
    }
}

impl RunIndex<'_> {
    /// Merges the oldest of model `number`'s newest small chunks (sealed from its head: `chunk`
    /// rows or fewer) into one of at least `merged` rows, while those small chunks hold
    /// `2 * merged` rows or more. So its newest `merged` to `2 * merged - 1` sealed rows stay in
    /// small chunks (what "the last N runs" decodes), and the older ones take the few bytes a
    /// run of a large chunk. A merged chunk larger than a page that would leave more than a
    /// sixteenth of its run of pages empty holds only the rows that fill the run half as long
    /// (as sealed chunks do, `sealed::fitting_rows`); the rows after them become a chunk of
    /// their own, larger than a small one, so it is never merged again (1,024 rows took
    /// 9.3 KB of 16 KiB; now about 870 fill 8 KiB and the other 150 take 1.5 KB in a leaf with
    /// other rows). A chunk that does not decode is left as it is, and so are the chunks older
    /// than it: merging is a saving, never a reason to refuse the runs of this commit (the reads
    /// name the damage).
    fn merge(&mut self, number: u32, chunk: usize, merged: usize) -> Result<(), WriteError> {
        loop {
            // The newest small chunks, newest first: (last seq, rows).
            let mut small = Vec::new();
            for row in self
                .chunks
                .range((number, 0)..=(number, u64::MAX))
                .map_err(error::write_error)?
                .rev()
            {
                let (k, v) = row.map_err(error::write_error)?;
                match unframe::<SECTIONS>(v.value(), VERSION, WHAT) {
                    Ok((rows, _)) if rows <= chunk => small.push((k.value().1, rows)),
                    _ => break,
                }
            }
            if small.iter().map(|(_, n)| n).sum::<usize>() < 2 * merged {
                return Ok(());
            }
            let mut take = Vec::new();
            let mut rows = Vec::new();
            for &(last, _) in small.iter().rev() {
                let Some(bytes) = self
                    .chunks
                    .get((number, last))
                    .map_err(error::write_error)?
                else {
                    return Ok(());
                };
                let Ok(decoded) = decode(bytes.value()) else {
                    return Ok(());
                };
                take.push(last);
                rows.extend(decoded);
                if rows.len() >= merged {
                    break;
                }
            }
            let Some(last) = take.last().copied() else {
                return Ok(());
            };
            let encode_first =
                |k: usize| encode(&rows[..k]).map_err(|e| codec_write_error(WHAT, e));
            let (k, bytes) = fitting_rows(rows.len(), None, encode_first)?;
            for &old in &take {
                self.chunks
                    .remove((number, old))
                    .map_err(error::write_error)?;
            }
            let cut = rows[k - 1].seq;
            self.chunks
                .insert((number, cut), bytes.as_slice())
                .map_err(error::write_error)?;
            if k < rows.len() {
                let rest = encode(&rows[k..]).map_err(|e| codec_write_error(WHAT, e))?;
                self.chunks
                    .insert((number, last), rest.as_slice())
                    .map_err(error::write_error)?;
            }
        }
    }
}

/// How many sealed chunks of the head's size one merged chunk holds ([`RunIndex::merge`]):
/// 8, so 1,024 rows at the default `run_index_chunk`, the size every chunk had before.
pub(crate) const MERGE: usize = 8;

/// How many decoded rows a [`ChunkCache`] keeps at most (about 96 bytes each): the last 1,000
/// runs of four models at the default chunk size.
const CACHE_ROWS: usize = 4096;

/// The run index chunks a store decoded most recently, least recently used first, at most
/// [`CACHE_ROWS`] rows in all. An entry answers only for exactly the bytes it was decoded
/// from, so a chunk rewritten, removed or read from another file is never answered from it.
#[derive(Default)]
pub(crate) struct ChunkCache(Mutex<VecDeque<Decoded>>);

/// A chunk's bytes and its rows.
type Decoded = (Vec<u8>, Arc<Vec<RunRow>>);

impl ChunkCache {
    /// [`decode`], answered from the cache when these bytes were decoded lately.
    fn decode(&self, bytes: &[u8]) -> Result<Arc<Vec<RunRow>>, CodecError> {
        if let Ok(mut cache) = self.0.lock()
            && let Some(at) = cache.iter().position(|(b, _)| b.as_slice() == bytes)
            && let Some(hit) = cache.remove(at)
        {
            let rows = hit.1.clone();
            cache.push_back(hit);
            return Ok(rows);
        }
        let rows = Arc::new(decode(bytes)?);
        if rows.len() <= CACHE_ROWS
            && let Ok(mut cache) = self.0.lock()
        {
            cache.push_back((bytes.to_vec(), rows.clone()));
            let mut held: usize = cache.iter().map(|(_, r)| r.len()).sum();
            while held > CACHE_ROWS
                && let Some((_, old)) = cache.pop_front()
            {
                held -= old.len();
            }
        }
        Ok(rows)
    }
}

/// The last `limit` rows of model `number` with a seq below `before`, newest first: its head
/// rows, then its chunks, newest first (every sealed row is older than every head row),
/// decoded through `cache`.
pub(crate) fn recent(
    head: &ReadOnlyTable<(u32, u64), &[u8]>,
    chunks: &ReadOnlyTable<(u32, u64), &[u8]>,
    cache: &ChunkCache,
    model_id: &str,
    number: u32,
    before: u64,
    limit: usize,
) -> Result<Vec<RunRow>, crate::ReadError> {
    use crate::codec::codec_read_error;
    let mut out = Vec::with_capacity(limit.min(4096));
    for row in head.range((number, 0)..(number, before))?.rev().take(limit) {
        let (k, v) = row?;
        let seq = k.value().1;
        out.push(
            runs::decode(seq, v.value())
                .map_err(|e| codec_read_error("run_head", format!("{model_id}#{seq}"), e))?,
        );
    }
    if out.len() == limit {
        return Ok(out);
    }
    // The chunk holding `before` may hold older rows too; then every older chunk.
    let straddling = chunks.range((number, before)..=(number, u64::MAX))?.next();
    let older = chunks.range((number, 0)..(number, before))?.rev();
    for row in straddling.into_iter().chain(older) {
        let (k, v) = row?;
        let last = k.value().1;
        let rows = cache
            .decode(v.value())
            .map_err(|e| codec_read_error("run_index", format!("{model_id}#{last}"), e))?;
        for r in rows.iter().rev().filter(|r| r.seq < before) {
            out.push(*r);
            if out.len() == limit {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// Converts format 3's run index (`runs`: `(model_id, seq) -> row`, a row a run) into the
/// headed and sealed one, inside `wtx`, and drops the old table. Answers how many rows were
/// converted.
pub(crate) fn convert_v3(wtx: &WriteTransaction, chunk: usize) -> Result<u64, WriteError> {
    let mut converted = 0u64;
    {
        let old = match wtx.open_table(RUNS_V3) {
            Ok(t) => t,
            Err(e) => return Err(error::write_error(e)),
        };
        let mut index = RunIndex::open(wtx)?;
        // Rows come in (model, seq) order: each model's runs oldest first. Sealing a model as
        // it is met keeps the head (and the transaction's memory) small.
        let mut current: Option<String> = None;
        for row in old.iter().map_err(error::write_error)? {
            let (k, v) = row.map_err(error::write_error)?;
            let (model_id, seq) = k.value();
            if current.as_deref() != Some(model_id) {
                index.seal(chunk)?;
                current = Some(model_id.to_owned());
            }
            index.add(model_id, seq, v.value())?;
            converted += 1;
            if index.touched.values().any(|(_, len)| *len >= chunk as u64) {
                index.seal(chunk)?;
            }
        }
        index.seal(chunk)?;
    }
    wtx.delete_table(RUNS_V3).map_err(error::write_error)?;
    Ok(converted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(i: u64) -> RunRow {
        RunRow {
            seq: 100 + i * 5,
            ts_ms: 1_800_000_000_000 + i as i64 * 43_000,
            model_latency_ms: 1_200.0 + (i % 17) as f64,
            total_latency_ms: 1_500.0 + (i % 17) as f64,
            deterministic_stage_ms: 300.0,
            model_stage_ms: 1_200.0 + (i % 17) as f64,
            validation_retry_count: u32::from(i % 20 == 0),
            budget_breach_count: 0,
            context_tokens: 4_096,
            tokens_in: (i % 3 != 0).then_some(900 + i % 1_000),
            tokens_out: Some(200 + i % 100),
        }
    }

    #[test]
    fn a_chunk_of_rows_decodes_to_itself_in_a_few_bytes_a_run() {
        let rows: Vec<RunRow> = (0..1024).map(row).collect();
        let bytes = encode(&rows).unwrap();
        assert_eq!(decode(&bytes).unwrap(), rows);
        let per_run = bytes.len() as f64 / rows.len() as f64;
        assert!(per_run < 24.0, "{per_run} bytes a run");
        let mut damaged = bytes.clone();
        let at = damaged.len() / 2;
        damaged[at] ^= 1;
        assert_eq!(decode(&damaged), Err(CodecError::Checksum));
    }

    #[test]
    fn the_chunk_cache_answers_only_the_same_bytes_and_holds_a_bounded_number_of_rows() {
        let cache = ChunkCache::default();
        let rows: Vec<RunRow> = (0..(CACHE_ROWS + 1024) as u64).map(row).collect();
        let chunks: Vec<Vec<u8>> = rows.chunks(128).map(|c| encode(c).unwrap()).collect();
        let first = cache.decode(&chunks[0]).unwrap();
        assert_eq!(*first, rows[..128]);
        assert!(Arc::ptr_eq(&first, &cache.decode(&chunks[0]).unwrap()));
        // Other bytes are decoded, not answered from the cache: damaged ones of the same length
        // fail their check, other rows decode to themselves.
        let mut damaged = chunks[0].clone();
        damaged[40] ^= 1;
        assert_eq!(cache.decode(&damaged), Err(CodecError::Checksum));
        let mut other = rows[..128].to_vec();
        other[5].model_latency_ms += 1.0;
        assert_eq!(*cache.decode(&encode(&other).unwrap()).unwrap(), other);
        // More rows than it holds: it keeps at most CACHE_ROWS, the most recently used.
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(*cache.decode(c).unwrap(), rows[i * 128..(i + 1) * 128]);
        }
        let held: usize = cache.0.lock().unwrap().iter().map(|(_, r)| r.len()).sum();
        assert!(held <= CACHE_ROWS && held > CACHE_ROWS - 128, "{held}");
        let last = cache.decode(chunks.last().unwrap()).unwrap();
        assert!(Arc::ptr_eq(
            &last,
            &cache.decode(chunks.last().unwrap()).unwrap()
        ));
        assert!(!Arc::ptr_eq(&first, &cache.decode(&chunks[0]).unwrap()));
    }
}
