//! Retention of samples: sealed chunks older than the raw retention are rolled up into
//! per-bucket aggregates (count, min, max, sum) and dropped whole; rollups older than their own
//! retention are dropped. And of client ids: an id stored longer ago than its retention is
//! forgotten, so a retry arriving after that is stored anew. The log is never touched here.
//!
//! A series' rollups are kept a UTC day to a row (`rollups`: `(series, day start) -> block`),
//! column by column: a block is the frame of [`crate::sections`] (version 1, CRC-32 first)
//! with 5 pco columns, the buckets' start times (i64, increasing), counts (u64), and minimums,
//! maximums and sums (f64). An hourly bucket kept a row of its own took 48 bytes and a share
//! of a half-empty page (5.3 MB of a year's store); a day of 24 takes a few hundred bytes.

use std::collections::BTreeMap;

use redb::{ReadableTable, WriteTransaction};

use crate::chunk::{Chunk, CodecError};
use crate::error::{self, WriteError};
use crate::sections::{column, compress, frame, unframe};
use crate::tables::{CHUNKS, IDS, IDS_BY_TIME, K_SAMPLES, META, ROLLUPS, SERIES};

/// The span of one row of rollups: a UTC day.
const BLOCK_MS: i64 = 24 * 3600 * 1000;
const BLOCK_VERSION: u8 = 1;
const BLOCK_SECTIONS: usize = 5;
const BLOCK_WHAT: &str = "rollup block";

/// The start of the row that holds the bucket starting at `start_ms`.
pub(crate) fn block_of(start_ms: i64) -> i64 {
    start_ms.div_euclid(BLOCK_MS).saturating_mul(BLOCK_MS)
}

/// Encodes `buckets` (increasing starts, not empty) as one row.
pub(crate) fn encode_block(buckets: &[Rollup]) -> Result<Vec<u8>, CodecError> {
    let starts: Vec<i64> = buckets.iter().map(|b| b.start_ms).collect();
    let counts: Vec<u64> = buckets.iter().map(|b| b.count).collect();
    let f = |v: fn(&Rollup) -> f64| buckets.iter().map(v).collect::<Vec<f64>>();
    let sections = [
        compress(&starts)?,
        compress(&counts)?,
        compress(&f(|b| b.min))?,
        compress(&f(|b| b.max))?,
        compress(&f(|b| b.sum))?,
    ];
    frame(BLOCK_VERSION, buckets.len(), &sections, BLOCK_WHAT)
}

/// Decodes a row of rollups (the CRC checked first), oldest first.
pub(crate) fn decode_block(bytes: &[u8]) -> Result<Vec<Rollup>, CodecError> {
    let (len, [starts, counts, mins, maxs, sums]) =
        unframe::<BLOCK_SECTIONS>(bytes, BLOCK_VERSION, BLOCK_WHAT)?;
    let starts: Vec<i64> = column(starts, len, BLOCK_WHAT)?;
    let counts: Vec<u64> = column(counts, len, BLOCK_WHAT)?;
    let mins: Vec<f64> = column(mins, len, BLOCK_WHAT)?;
    let maxs: Vec<f64> = column(maxs, len, BLOCK_WHAT)?;
    let sums: Vec<f64> = column(sums, len, BLOCK_WHAT)?;
    Ok((0..len)
        .map(|i| Rollup {
            start_ms: starts[i],
            count: counts[i],
            min: mins[i],
            max: maxs[i],
            sum: sums[i],
        })
        .collect())
}

/// How many buckets a row holds, read from its frame (the CRC checked).
fn block_len(bytes: &[u8]) -> Result<usize, CodecError> {
    unframe::<BLOCK_SECTIONS>(bytes, BLOCK_VERSION, BLOCK_WHAT).map(|(len, _)| len)
}

/// Every series' number, in key order.
pub(crate) fn series_numbers(wtx: &WriteTransaction) -> Result<Vec<u32>, redb::Error> {
    let series = wtx.open_table(SERIES)?;
    let mut v = Vec::new();
    for row in series.iter()? {
        v.push(row?.1.value());
    }
    Ok(v)
}

/// The most client ids one compaction forgets (the rest wait for the next call).
const MAX_IDS_A_CALL: usize = 50_000;

/// Forgets, inside `wtx`, the client ids stored before `cut_ms`, at most `max`; answers how
/// many, and whether more wait.
fn forget_ids(wtx: &WriteTransaction, cut_ms: i64, max: usize) -> Result<(u64, bool), WriteError> {
    let mut by_time = wtx.open_table(IDS_BY_TIME).map_err(error::write_error)?;
    let mut ids = wtx.open_table(IDS).map_err(error::write_error)?;
    let mut old: Vec<((i64, u64), String)> = Vec::new();
    for row in by_time
        .range((i64::MIN, 0)..(cut_ms, 0))
        .map_err(error::write_error)?
        .take(max + 1)
    {
        let (k, v) = row.map_err(error::write_error)?;
        old.push((k.value(), v.value().to_owned()));
    }
    let more = old.len() > max;
    old.truncate(max);
    for (key, id) in &old {
        by_time.remove(*key).map_err(error::write_error)?;
        // The id names this seq still (a later item never takes a stored id).
        ids.remove(id.as_str()).map_err(error::write_error)?;
    }
    Ok((old.len() as u64, more))
}

/// How long samples are kept raw, and their rollups after that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Sealed chunks whose newest sample is older than this are rolled up and dropped.
    pub raw_ms: i64,
    /// The width of a rollup bucket.
    pub rollup_step_ms: i64,
    /// Rollup buckets that ended longer ago than this are dropped.
    pub rollup_ms: i64,
    /// Client ids stored longer ago than this (by the service's clock when stored) are
    /// forgotten: the retry horizon of idempotent ingest.
    pub ids_ms: i64,
}

impl Default for Retention {
    /// Raw samples for 14 days; hourly rollups for 400 days (a year and a bit, so a month
    /// compares with the same month of last year); client ids for 30 days (a client retries an
    /// unanswered batch within seconds, and its spool within the days a service can be down;
    /// a month of a busy user's ids is ~10 MB, a year's ten times that).
    fn default() -> Self {
        const DAY: i64 = 24 * 3600 * 1000;
        Retention {
            raw_ms: 14 * DAY,
            rollup_step_ms: 3600 * 1000,
            rollup_ms: 400 * DAY,
            ids_ms: 30 * DAY,
        }
    }
}

/// One rollup bucket of one series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rollup {
    pub start_ms: i64,
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
}

impl Rollup {
    fn merge(&mut self, other: &Rollup) {
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// A bucket as a format 4 store kept it, a row of its own: a CRC-32, then count (u64),
    /// min, max and sum (f64), little-endian (converted to rows of a day at open).
    pub(crate) fn decode_v4(start_ms: i64, bytes: &[u8]) -> Result<Rollup, CodecError> {
        if bytes.len() != 36 || bytes[..4] != crc32fast::hash(&bytes[4..]).to_le_bytes() {
            return Err(CodecError::Checksum);
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[at..at + 8]);
            w
        };
        Ok(Rollup {
            start_ms,
            count: u64::from_le_bytes(word(4)),
            min: f64::from_le_bytes(word(12)),
            max: f64::from_le_bytes(word(20)),
            sum: f64::from_le_bytes(word(28)),
        })
    }
}

/// What one compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compacted {
    pub chunks_rolled_up: u64,
    pub samples_rolled_up: u64,
    pub rollups_dropped: u64,
    /// Client ids forgotten.
    pub ids_forgotten: u64,
    /// Whether chunks or ids past the raw retention are left for the next call (a call does a
    /// bounded amount of work, so that writers never wait long for it).
    pub more: bool,
}

/// Compacts inside `wtx`: rolls up at most `max_chunks` chunks older than the raw retention.
pub(crate) fn compact(
    wtx: &WriteTransaction,
    now_ms: i64,
    r: &Retention,
    max_chunks: usize,
) -> Result<Compacted, WriteError> {
    let step = r.rollup_step_ms.max(1);
    let raw_cut = now_ms.saturating_sub(r.raw_ms.max(0));
    let roll_cut = now_ms.saturating_sub(r.rollup_ms.max(0));
    let mut done = Compacted::default();
    let (forgotten, more_ids) =
        forget_ids(wtx, now_ms.saturating_sub(r.ids_ms.max(0)), MAX_IDS_A_CALL)?;
    done.ids_forgotten = forgotten;
    done.more = more_ids;
    let sids = series_numbers(wtx).map_err(error::write_error)?;
    let mut chunks = wtx.open_table(CHUNKS).map_err(error::write_error)?;
    let mut rollups = wtx.open_table(ROLLUPS).map_err(error::write_error)?;
    for sid in sids {
        // Chunks wholly older than the cut: keyed by their newest time, so a range.
        let mut old: Vec<(i64, u64)> = Vec::new();
        let mut buckets: BTreeMap<i64, Rollup> = BTreeMap::new();
        for row in chunks
            .range((sid, i64::MIN, 0)..(sid, raw_cut, 0))
            .map_err(error::write_error)?
        {
            if done.chunks_rolled_up as usize >= max_chunks {
                done.more = true;
                break;
            }
            let (k, v) = row.map_err(error::write_error)?;
            let (_, max_ts, min_seq) = k.value();
            let items = Chunk::parse(v.value())
                .and_then(|c| c.items())
                .map_err(|e| {
                    WriteError::Storage(format!("chunk {sid}@{max_ts}#{min_seq}: {e:?}"))
                })?;
            for item in &items {
                let Some(value) = item.value else { continue };
                let start_ms = item.ts_ms.div_euclid(step) * step;
                let one = Rollup {
                    start_ms,
                    count: 1,
                    min: value,
                    max: value,
                    sum: value,
                };
                buckets
                    .entry(start_ms)
                    .and_modify(|b| b.merge(&one))
                    .or_insert(one);
            }
            done.samples_rolled_up += items.len() as u64;
            done.chunks_rolled_up += 1;
            old.push((max_ts, min_seq));
        }
        let mut blocks: BTreeMap<i64, Vec<Rollup>> = BTreeMap::new();
        for (start_ms, b) in buckets {
            if start_ms + step > roll_cut {
                blocks.entry(block_of(start_ms)).or_default().push(b);
            }
        }
        let bad = |block: i64| {
            move |e: CodecError| WriteError::Storage(format!("rollups {sid}@{block}: {e:?}"))
        };
        for (block, new) in blocks {
            let mut all: BTreeMap<i64, Rollup> =
                match rollups.get((sid, block)).map_err(error::write_error)? {
                    Some(v) => decode_block(v.value())
                        .map_err(bad(block))?
                        .into_iter()
                        .map(|b| (b.start_ms, b))
                        .collect(),
                    None => BTreeMap::new(),
                };
            for b in new {
                all.entry(b.start_ms)
                    .and_modify(|e| e.merge(&b))
                    .or_insert(b);
            }
            let bytes = encode_block(&all.into_values().collect::<Vec<_>>()).map_err(bad(block))?;
            rollups
                .insert((sid, block), bytes.as_slice())
                .map_err(error::write_error)?;
        }
        for key in old {
            chunks
                .remove((sid, key.0, key.1))
                .map_err(error::write_error)?;
        }
        // Buckets that ended by the rollup cut go: whole rows before the cut's row, and the
        // buckets before the cut in its row.
        let keep_from = roll_cut.saturating_sub(step).saturating_add(1);
        let first_kept = block_of(keep_from);
        let mut expired = Vec::new();
        for row in rollups
            .range((sid, i64::MIN)..(sid, first_kept))
            .map_err(error::write_error)?
        {
            let (k, v) = row.map_err(error::write_error)?;
            // A damaged row that has expired goes all the same; its buckets go uncounted.
            expired.push((k.value().1, block_len(v.value()).unwrap_or(0)));
        }
        for (block, n) in expired {
            rollups.remove((sid, block)).map_err(error::write_error)?;
            done.rollups_dropped += n as u64;
        }
        let boundary = match rollups.get((sid, first_kept)).map_err(error::write_error)? {
            Some(v) => Some(decode_block(v.value()).map_err(bad(first_kept))?),
            None => None,
        };
        if let Some(all) = boundary {
            let kept: Vec<Rollup> = all
                .iter()
                .filter(|b| b.start_ms >= keep_from)
                .copied()
                .collect();
            done.rollups_dropped += (all.len() - kept.len()) as u64;
            if kept.is_empty() {
                rollups
                    .remove((sid, first_kept))
                    .map_err(error::write_error)?;
            } else if kept.len() < all.len() {
                let bytes = encode_block(&kept).map_err(bad(first_kept))?;
                rollups
                    .insert((sid, first_kept), bytes.as_slice())
                    .map_err(error::write_error)?;
            }
        }
    }
    if done.samples_rolled_up > 0 {
        let mut meta = wtx.open_table(META).map_err(error::write_error)?;
        let samples = meta
            .get(K_SAMPLES)
            .map_err(error::write_error)?
            .map_or(0, |v| v.value());
        meta.insert(K_SAMPLES, samples.saturating_sub(done.samples_rolled_up))
            .map_err(error::write_error)?;
    }
    Ok(done)
}
