//! Retention of samples: sealed chunks older than the raw retention are rolled up into
//! per-bucket aggregates (count, min, max, sum) and dropped whole; rollups older than their own
//! retention are dropped. And of client ids: an id stored longer ago than its retention is
//! forgotten, so a retry arriving after that is stored anew. The log is never touched here.

use std::collections::BTreeMap;

use redb::{ReadableTable, WriteTransaction};

use crate::chunk::{Chunk, CodecError};
use crate::error::{self, WriteError};
use crate::tables::{CHUNKS, IDS, IDS_BY_TIME, K_SAMPLES, META, ROLLUPS, SERIES};

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

    pub(crate) fn encode(&self) -> [u8; 36] {
        let mut out = [0u8; 36];
        out[4..12].copy_from_slice(&self.count.to_le_bytes());
        out[12..20].copy_from_slice(&self.min.to_le_bytes());
        out[20..28].copy_from_slice(&self.max.to_le_bytes());
        out[28..36].copy_from_slice(&self.sum.to_le_bytes());
        let crc = crc32fast::hash(&out[4..]);
        out[..4].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub(crate) fn decode(start_ms: i64, bytes: &[u8]) -> Result<Rollup, CodecError> {
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
    let sids: Vec<u32> = {
        let series = wtx.open_table(SERIES).map_err(error::write_error)?;
        let mut v = Vec::new();
        for row in series.iter().map_err(error::write_error)? {
            v.push(row.map_err(error::write_error)?.1.value());
        }
        v
    };
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
        for (start_ms, mut b) in buckets {
            if start_ms + step <= roll_cut {
                continue;
            }
            let existing = rollups
                .get((sid, start_ms))
                .map_err(error::write_error)?
                .map(|v| Rollup::decode(start_ms, v.value()));
            if let Some(e) = existing {
                let e =
                    e.map_err(|e| WriteError::Storage(format!("rollup {sid}@{start_ms}: {e:?}")))?;
                b.merge(&e);
            }
            rollups
                .insert((sid, start_ms), b.encode().as_slice())
                .map_err(error::write_error)?;
        }
        for key in old {
            chunks
                .remove((sid, key.0, key.1))
                .map_err(error::write_error)?;
        }
        let mut dropped = 0;
        rollups
            .retain_in(
                (sid, i64::MIN)..(sid, roll_cut.saturating_sub(step) + 1),
                |_, _| {
                    dropped += 1;
                    false
                },
            )
            .map_err(error::write_error)?;
        done.rollups_dropped += dropped;
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
