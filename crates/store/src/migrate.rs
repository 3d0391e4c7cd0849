//! Conversion of older formats, run at open.

use std::collections::BTreeMap;
use std::path::Path;

use kora_model::{Record, RecordKind, Sample};
use redb::{Database, ReadableTable, WriteTransaction};

use crate::chunk::{CHUNK_SAMPLES, Extra, Item};
use crate::codec::{decode, decode_entry};
use crate::error::OpenError;
use crate::heads::seal;
use crate::retention::{Rollup, block_of, encode_block, series_numbers};
use crate::runs;
use crate::sealed::{Runs, SealTables, Sealable, Windows, seal_kind};
use crate::tables::{
    CHUNKS, HEAD, IDS, IDS_BY_TIME, K_FORMAT_VERSION, K_UNSEALED_RUNS, K_UNSEALED_WINDOWS, LOG,
    LOG_BY_KIND, LOG_BY_TIME, META, ROLLUPS, RUNS_V3, SAMPLES_V1,
};

/// Converts a format 1 store (a row per sample) to format 2 (head rows and sealed chunks) in
/// one transaction: either every sample is converted and the old table dropped, or nothing
/// changes. Series are streamed in `(ts, seq)` order, a chunk at a time.
pub(crate) fn migrate_v1(db: &Database, path: &Path) -> Result<(), OpenError> {
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
        let mut runs_t = wtx.open_table(RUNS_V3).map_err(|e| fail(e.to_string()))?;
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
        meta.insert(K_FORMAT_VERSION, 2)
            .map_err(|e| fail(e.to_string()))?;
    }
    wtx.delete_table(SAMPLES_V1)
        .map_err(|e| fail(e.to_string()))?;
    wtx.commit().map_err(|e| fail(e.to_string()))?;
    tracing::info!(path = %path.display(), samples = converted, "store converted from format 1 to 2");
    Ok(())
}

/// Seals every record of kind `K` in the log, oldest first, in chunks of `chunk`, inside
/// `wtx`, and sets `counter` to those left in the log (fewer than `chunk`); answers how many
/// were sealed and how many are left.
fn seal_all<K: Sealable>(
    wtx: &WriteTransaction,
    counter: &'static str,
    chunk: usize,
    fail: &dyn Fn(String) -> OpenError,
) -> Result<(u64, u64), OpenError> {
    let o = |e: redb::TableError| fail(e.to_string());
    let mut log = wtx.open_table(LOG).map_err(o)?;
    let mut by_kind = wtx.open_table(LOG_BY_KIND).map_err(o)?;
    let mut by_time = wtx.open_table(LOG_BY_TIME).map_err(o)?;
    let mut chunks = wtx.open_table(K::CHUNKS).map_err(o)?;
    let mut spans = wtx.open_table(K::SPANS).map_err(o)?;
    let mut meta = wtx.open_table(META).map_err(o)?;
    let c = K::KIND.code();
    let mut total = 0u64;
    for row in by_kind
        .range((c, 0)..=(c, u64::MAX))
        .map_err(|e| fail(e.to_string()))?
    {
        row.map_err(|e| fail(e.to_string()))?;
        total += 1;
    }
    // Every record of the kind is counted here, so the count starts from none.
    meta.insert(counter, 0).map_err(|e| fail(e.to_string()))?;
    let mut t = SealTables {
        log: &mut log,
        by_kind: &mut by_kind,
        by_time: &mut by_time,
        chunks: &mut chunks,
        spans: &mut spans,
    };
    let unsealed = seal_kind::<K>(&mut meta, &mut t, total, counter, chunk)
        .map_err(|e| fail(e.to_string()))?;
    Ok((total - unsealed, unsealed))
}

/// Converts a format 2 store (every `window` record a log row) to format 3 in one transaction:
/// its windows are sealed oldest first in chunks of `chunk`, the rest (fewer than `chunk`)
/// stay in the log and are counted. Either the whole store is converted or nothing changes;
/// every record keeps its seq and decodes to what it was.
pub(crate) fn migrate_v2(db: &Database, path: &Path, chunk: usize) -> Result<(), OpenError> {
    let fail = |e: String| OpenError::NotAStore {
        path: path.to_owned(),
        reason: format!("converting format 2 to 3 failed: {e}"),
    };
    let wtx = db.begin_write().map_err(|e| fail(e.to_string()))?;
    let (sealed, unsealed) = seal_all::<Windows>(&wtx, K_UNSEALED_WINDOWS, chunk, &fail)?;
    {
        let mut meta = wtx.open_table(META).map_err(|e| fail(e.to_string()))?;
        meta.insert(K_FORMAT_VERSION, 3)
            .map_err(|e| fail(e.to_string()))?;
    }
    wtx.commit().map_err(|e| fail(e.to_string()))?;
    tracing::info!(path = %path.display(), sealed, unsealed, "store converted from format 2 to 3 (windows sealed in chunks)");
    Ok(())
}

/// Converts a format 3 store (every `run` record a log row, the run index a row a run) to
/// format 4 in one transaction, the way [`migrate_v2`] seals windows: its runs are sealed
/// oldest first in chunks of `chunk`, the rest stay in the log and are counted; the run index
/// moves to model numbers, each model's rows sealed in chunks of `index_chunk` but the newest.
pub(crate) fn migrate_v3(
    db: &Database,
    path: &Path,
    chunk: usize,
    index_chunk: usize,
) -> Result<(), OpenError> {
    let fail = |e: String| OpenError::NotAStore {
        path: path.to_owned(),
        reason: format!("converting format 3 to 4 failed: {e}"),
    };
    let wtx = db.begin_write().map_err(|e| fail(e.to_string()))?;
    let ids = date_ids(&wtx).map_err(|e| fail(e.to_string()))?;
    let (sealed, unsealed) = seal_all::<Runs>(&wtx, K_UNSEALED_RUNS, chunk, &fail)?;
    let indexed =
        crate::run_index::convert_v3(&wtx, index_chunk).map_err(|e| fail(e.to_string()))?;
    {
        let mut meta = wtx.open_table(META).map_err(|e| fail(e.to_string()))?;
        meta.insert(K_FORMAT_VERSION, 4)
            .map_err(|e| fail(e.to_string()))?;
    }
    wtx.commit().map_err(|e| fail(e.to_string()))?;
    tracing::info!(path = %path.display(), sealed, unsealed, indexed, ids, "store converted from format 3 to 4 (runs sealed in chunks, the run index headed and sealed by model)");
    Ok(())
}

/// Marks a format 4 store as format 5. Format 5 seals runs field by field and windows with
/// fewer bytes of bookkeeping (run and window chunks of version 2); the chunks a format 4 store
/// holds (version 1) are read as they are, so nothing else changes. The mark is what keeps a
/// build that reads only version 1 chunks from opening the store once it holds new ones.
pub(crate) fn migrate_v4(db: &Database, path: &Path) -> Result<(), OpenError> {
    let fail = |e: String| OpenError::NotAStore {
        path: path.to_owned(),
        reason: format!("converting format 4 to 5 failed: {e}"),
    };
    let wtx = db.begin_write().map_err(|e| fail(e.to_string()))?;
    let buckets = rollups_by_day(&wtx).map_err(fail)?;
    {
        let mut meta = wtx.open_table(META).map_err(|e| fail(e.to_string()))?;
        meta.insert(K_FORMAT_VERSION, 5)
            .map_err(|e| fail(e.to_string()))?;
    }
    wtx.commit().map_err(|e| fail(e.to_string()))?;
    tracing::info!(path = %path.display(), buckets, "store converted from format 4 to 5 (rollups a day to a row; run and window chunks sealed from now on in their version 2 layouts, the chunks sealed before read as they are)");
    Ok(())
}

/// Moves every series' rollups from a row a bucket (format 4) to a row a day, series by
/// series (so what is held at once is one series' buckets); answers how many buckets.
fn rollups_by_day(wtx: &WriteTransaction) -> Result<u64, String> {
    let e = |e: redb::Error| e.to_string();
    let sids = series_numbers(wtx).map_err(e)?;
    let mut rollups = wtx.open_table(ROLLUPS).map_err(|x| e(x.into()))?;
    let mut moved = 0u64;
    for sid in sids {
        let mut days: BTreeMap<i64, Vec<Rollup>> = BTreeMap::new();
        for row in rollups
            .range((sid, i64::MIN)..=(sid, i64::MAX))
            .map_err(|x| e(x.into()))?
        {
            let (k, v) = row.map_err(|x| e(x.into()))?;
            let start = k.value().1;
            let b = Rollup::decode_v4(start, v.value())
                .map_err(|x| format!("rollup {sid}@{start}: {x:?}"))?;
            days.entry(block_of(start)).or_default().push(b);
        }
        rollups
            .retain_in((sid, i64::MIN)..=(sid, i64::MAX), |_, _| false)
            .map_err(|x| e(x.into()))?;
        for (day, buckets) in days {
            moved += buckets.len() as u64;
            let bytes =
                encode_block(&buckets).map_err(|x| format!("rollups {sid}@{day}: {x:?}"))?;
            rollups
                .insert((sid, day), bytes.as_slice())
                .map_err(|x| e(x.into()))?;
        }
    }
    Ok(moved)
}

/// Gives every client id of a format 3 store (which kept them for good) a row in
/// `ids_by_time`, dated the newest record time of the log: the time the store was last
/// written, as near as the file tells it (format 3 kept no time of storing). So the ids of an
/// upgraded store are forgotten a retention after its last use, never sooner. Answers how many.
fn date_ids(wtx: &WriteTransaction) -> Result<u64, redb::Error> {
    let newest = wtx
        .open_table(LOG_BY_TIME)?
        .last()?
        .map_or(0, |(k, _)| k.value().0);
    let ids = wtx.open_table(IDS)?;
    let mut by_time = wtx.open_table(IDS_BY_TIME)?;
    let mut n = 0;
    for row in ids.iter()? {
        let (k, v) = row?;
        let mut seq = [0u8; 8];
        if let Some(bytes) = v.value().get(..8) {
            seq.copy_from_slice(bytes);
        }
        by_time.insert((newest, u64::from_le_bytes(seq)), k.value())?;
        n += 1;
    }
    Ok(n)
}
