//! The read side of the store: log scans, series queries, counts.

use kora_model::{LogEntry, RecordKind, Sample, StoredSample};
use redb::{ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::chunk::{self, Chunk, Item};
use crate::codec::{codec_read_error, decode_entry, get_entry, stored_kind};
use crate::derive::read_state;
use crate::error::ReadError;
use crate::retention::{Rollup, block_of, decode_block};
use crate::run_index;
use crate::runs::RunRow;
use crate::sealed::{Runs, Sealed, SealedLog, Windows, merge};
use crate::tables::{
    CHUNKS, HEAD, K_ENGINE_CURSOR, K_LOG_RECORDS, K_NEXT_SEQ, K_SAMPLES, LOG, LOG_BY_KIND,
    LOG_BY_TIME, META, ROLLUPS, RUN_HEAD, RUN_INDEX, RUN_MODELS, SERIES,
};
use crate::{Stats, Store};

impl Store {
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

    /// The caller state stored under `key` by a [`crate::Batch::Derived`] (see [`crate::tables`]),
    /// its CRC-32 checked: damaged bytes are [`ReadError::Corrupt`] naming the table and the
    /// key, never answered. `None` when the key was never written.
    pub fn state(&self, key: &str) -> Result<Option<Vec<u8>>, ReadError> {
        read_state(&self.read()?, key)
    }

    /// Log entries in seq order starting at `from_seq`, at most `limit`: the log's rows merged
    /// with its sealed windows and runs.
    pub fn scan(&self, from_seq: u64, limit: usize) -> Result<Vec<LogEntry>, ReadError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rtx = self.read()?;
        let sealed = SealedLog::open(&rtx)?;
        let log = rtx.open_table(LOG)?;
        // The log's rows and each sealed kind's chunks, merged by seq as they are walked: each
        // record is built once, only when it is the page's next.
        let mut windows = sealed.windows.cursor(from_seq)?;
        let mut runs = sealed.runs.cursor(from_seq)?;
        let mut rows = log.range(from_seq..)?;
        let mut row = rows.next().transpose()?;
        let mut out = Vec::with_capacity(limit.min(16_384));
        while out.len() < limit {
            let in_rows = row.as_ref().map(|(k, _)| k.value());
            let (w, r) = (windows.peek()?, runs.peek()?);
            let next = [in_rows, w, r].into_iter().flatten().min();
            let entry = match next {
                None => break,
                Some(seq) if Some(seq) == in_rows => {
                    let Some((k, v)) = row.take() else { break };
                    let e = decode_entry(k.value(), v.value())?;
                    row = rows.next().transpose()?;
                    Some(e)
                }
                Some(seq) if Some(seq) == w => windows.take()?,
                Some(_) => runs.take()?,
            };
            out.extend(entry);
        }
        Ok(out)
    }

    /// Calls `each` with every entry of the log's rows of one of `kinds`, in seq order: one
    /// pass over the rows, each row's kind read from its first bytes and only the rows of
    /// `kinds` checked and decoded (a row of format 2 is decoded to tell). Sealed records
    /// (`window`, `run`) are not in the rows: `kinds` should name neither.
    pub fn each_in_rows_of(
        &self,
        kinds: &[RecordKind],
        mut each: impl FnMut(LogEntry),
    ) -> Result<(), ReadError> {
        let rtx = self.read()?;
        for item in rtx.open_table(LOG)?.iter()? {
            let (k, v) = item?;
            match stored_kind(v.value()) {
                Some(kind) if !kinds.contains(&kind) => continue,
                _ => {}
            }
            let entry = decode_entry(k.value(), v.value())?;
            if kinds.contains(&entry.record.kind()) {
                each(entry);
            }
        }
        Ok(())
    }

    /// The `run` records of recent time: `horizon` is given the newest run's `ts_ms` and
    /// answers the earliest `ts_ms` wanted; `each` is called with every run at or after it
    /// (in no particular order; seq order within the log and within each sealed chunk).
    /// Answers the newest run's `ts_ms` (`None`, and no call, when there is no run). Reads the
    /// runs still in the log and the sealed run chunks whose time span reaches the horizon,
    /// one chunk decoded at a time; no other kind.
    pub fn runs_since(
        &self,
        horizon: impl FnOnce(i64) -> i64,
        mut each: impl FnMut(LogEntry),
    ) -> Result<Option<i64>, ReadError> {
        let rtx = self.read()?;
        let log = rtx.open_table(LOG)?;
        let idx = rtx.open_table(LOG_BY_KIND)?;
        let c = RecordKind::Run.code();
        // Every run still in the log: fewer than a chunk's worth plus the last batch, as runs
        // are sealed once a chunk's worth waits.
        let mut unsealed = Vec::new();
        for item in idx.range((c, 0)..=(c, u64::MAX))? {
            let (k, _) = item?;
            unsealed.push(get_entry(&log, k.value().1)?);
        }
        let sealed = Sealed::<Runs>::open(&rtx)?;
        let Some(newest) = unsealed
            .iter()
            .filter_map(|e| e.record.ts_ms())
            .max()
            .max(sealed.newest_ts()?)
        else {
            return Ok(None);
        };
        let from = horizon(newest);
        sealed.each_in_time(from, i64::MAX, &mut each)?;
        for e in unsealed {
            if e.record.ts_ms().is_some_and(|ts| ts >= from) {
                each(e);
            }
        }
        Ok(Some(newest))
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
                let bound = match out.last() {
                    Some(last) if out.len() == limit => last.seq,
                    _ => 0,
                };
                let sealed = SealedLog::open(&rtx)?.before(end, bound, limit)?;
                out = merge(out, sealed, limit, |e| std::cmp::Reverse(e.seq));
            }
            // Windows may be sealed: the filtered walk over rows and chunks, keeping all.
            Some(RecordKind::Window) => return self.recent_windows(before, limit, |_, _, _| true),
            Some(kind) => {
                let idx = rtx.open_table(LOG_BY_KIND)?;
                let c = kind.code();
                for item in idx.range((c, 0)..(c, end))?.rev().take(limit) {
                    let (k, _) = item?;
                    let seq = k.value().1;
                    out.push(get_entry(&log, seq)?);
                }
                if kind == RecordKind::Run && out.len() < limit {
                    // Every sealed run is older than every run in the log.
                    let rest = limit - out.len();
                    out.extend(Sealed::<Runs>::open(&rtx)?.before(end, 0, rest)?);
                }
            }
        }
        Ok(out)
    }

    /// `window` records older than `before` when given, newest first, at most `limit`, of the
    /// `(window_kind, metric, scope)` that `keep` accepts: the log's rows, then the sealed
    /// chunks, each skipped whole when it names no accepted window. Exact at any depth of
    /// history.
    pub fn recent_windows(
        &self,
        before: Option<u64>,
        limit: usize,
        keep: impl Fn(&str, &str, &str) -> bool,
    ) -> Result<Vec<LogEntry>, ReadError> {
        let rtx = self.read()?;
        let log = rtx.open_table(LOG)?;
        let idx = rtx.open_table(LOG_BY_KIND)?;
        let c = RecordKind::Window.code();
        let end = before.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut oldest = end;
        for item in idx.range((c, 0)..(c, end))?.rev() {
            if out.len() == limit {
                return Ok(out);
            }
            let (k, _) = item?;
            let e = get_entry(&log, k.value().1)?;
            oldest = e.seq;
            if let kora_model::Record::Window(w) = &e.record
                && keep(&w.window_kind, &w.metric, &w.scope)
            {
                out.push(e);
            }
        }
        if out.len() < limit {
            // Every sealed window is older than every window in the log.
            let sealed = Sealed::<Windows>::open(&rtx)?;
            out.extend(sealed.before_matching(oldest, limit - out.len(), &keep)?);
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
        // Every sealed window (run) is older than every window (run) in the log.
        let mut out = match kind {
            RecordKind::Window => Sealed::<Windows>::open(&rtx)?.from(from_seq, limit)?,
            RecordKind::Run => Sealed::<Runs>::open(&rtx)?.from(from_seq, limit)?,
            _ => Vec::new(),
        };
        let rest = limit - out.len();
        for item in idx.range((c, from_seq)..=(c, u64::MAX))?.take(rest) {
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
        let sealed = SealedLog::open(&rtx)?.in_time(from_ms, to_ms, limit)?;
        Ok(merge(sealed, out, limit, |e| (e.record.ts_ms(), e.seq)))
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
            .range((sid, block_of(from_ms))..(sid, to_ms))?
        {
            let (k, v) = row?;
            let block = k.value().1;
            let buckets = decode_block(v.value())
                .map_err(|e| codec_read_error("rollups", format!("{series_key}@{block}"), e))?;
            out.extend(
                buckets
                    .into_iter()
                    .filter(|b| (from_ms..to_ms).contains(&b.start_ms)),
            );
        }
        Ok(out)
    }

    /// The last `limit` runs of `model_id` with a seq below `before` (all when `None`), newest
    /// first, from the run index: the model's head rows, then its sealed chunks (kept decoded
    /// for the next call while they fit the store's cache); no log record decoded.
    pub fn recent_runs(
        &self,
        model_id: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<RunRow>, ReadError> {
        let rtx = self.read()?;
        let Some((number, _)) = rtx
            .open_table(RUN_MODELS)?
            .get(model_id)?
            .map(|v| v.value())
        else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        run_index::recent(
            &rtx.open_table(RUN_HEAD)?,
            &rtx.open_table(RUN_INDEX)?,
            &self.run_index_cache,
            model_id,
            number,
            before.unwrap_or(u64::MAX),
            limit,
        )
    }

    /// The distinct `model_id`s of the logged runs, in order.
    pub fn run_models(&self) -> Result<Vec<String>, ReadError> {
        let rtx = self.read()?;
        let mut out = Vec::new();
        for row in rtx.open_table(RUN_MODELS)?.iter()? {
            out.push(row?.0.value().to_owned());
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
        self.visit_parts(
            series_key,
            from_ms,
            to_ms,
            Need::Values,
            |part| match part {
                Part::Values(v) => out.extend_from_slice(&v),
                Part::Points(ts, v) => out.extend(
                    ts.into_iter()
                        .zip(v)
                        .filter(|(t, _)| (from_ms..to_ms).contains(t))
                        .map(|(_, v)| v),
                ),
                Part::Items(items) => out.extend(items.iter().filter_map(|i| i.value)),
            },
        )?;
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
        self.visit_parts(series_key, from_ms, to_ms, Need::Items, |part| {
            if let Part::Items(items) = part {
                items.iter().for_each(|i| f(i.seq, i.ts_ms, i.value));
            }
        })
    }

    /// Calls `f(ts_ms, value)` for every sample of one series with `from_ms <= ts_ms < to_ms`,
    /// in no particular order. A chunk whose samples all have a value decodes its time and
    /// value columns alone (no seqs, no per-sample rows): the path of the dashboards' charts.
    pub fn each_point(
        &self,
        series_key: &str,
        from_ms: i64,
        to_ms: i64,
        mut f: impl FnMut(i64, Option<f64>),
    ) -> Result<(), ReadError> {
        self.visit_parts(
            series_key,
            from_ms,
            to_ms,
            Need::Points,
            |part| match part {
                Part::Points(ts, values) => {
                    for (t, v) in ts.into_iter().zip(values) {
                        if (from_ms..to_ms).contains(&t) {
                            f(t, Some(v));
                        }
                    }
                }
                Part::Items(items) => items.iter().for_each(|i| f(i.ts_ms, i.value)),
                Part::Values(_) => {}
            },
        )
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
        self.visit_parts(series_key, from_ms, to_ms, Need::Items, |part| {
            if let Part::Items(items) = part {
                out.extend(items);
            }
        })?;
        out.sort_unstable_by_key(|i| (i.ts_ms, i.seq));
        out.truncate(limit);
        Ok(out)
    }

    /// Calls `f` with the samples of one series in range, chunk by chunk then the head, in no
    /// particular order. A plain chunk (every sample with a value, no extras) is given as its
    /// value column when `need` is [`Need::Values`] and it lies wholly inside the range, and as
    /// its time and value columns when `need` is [`Need::Points`].
    fn visit_parts(
        &self,
        series_key: &str,
        from_ms: i64,
        to_ms: i64,
        need: Need,
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
            let inside = from_ms <= h.min_ts && h.max_ts < to_ms;
            let part = if need == Need::Values && h.plain && inside {
                Part::Values(chunk.values().map_err(codec)?)
            } else if need == Need::Points && h.plain {
                Part::Points(
                    chunk.timestamps().map_err(codec)?,
                    chunk.values().map_err(codec)?,
                )
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

/// What a query of a series needs of each sample.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    Values,
    Points,
    Items,
}

/// A piece of a series that a query visits.
enum Part {
    /// The value column of a chunk wholly inside the range, every sample with a value.
    Values(Vec<f64>),
    /// The time and value columns of a chunk whose every sample has a value (not yet cut to
    /// the range).
    Points(Vec<i64>, Vec<f64>),
    Items(Vec<Item>),
}
