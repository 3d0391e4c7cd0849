//! Every redb table of the store, defined once.
//!
//! Encoding (format version 5):
//! - `meta`: `&str -> u64`: `format_version`, `next_seq`, `log_records` (sealed records
//!   included), `samples`, `engine_cursor` (the last log seq whose derived records are stored),
//!   `unsealed_windows` and `unsealed_runs` (the `window` and `run` records still in `log`).
//! - `log`: `seq (u64) -> bytes`: a CRC-32 (little-endian, of the payload) then the payload:
//!   the byte `0xc1` (never used by MessagePack), the record kind's code (u8), and the record's
//!   own struct as MessagePack with named fields (`rmp_serde::encode::write_named`). A payload
//!   that starts otherwise is a record written by format 2: the whole internally tagged
//!   `Record` as named MessagePack; both are read. The seq is strictly increasing
//!   and never reused; gaps are the seqs given to samples, which live in the series store.
//!   Once [`crate::StoreOptions::window_chunk`] `window` records wait in the log, the oldest of
//!   them move to `window_chunks` in the transaction that crossed the count: their log rows and
//!   index rows go, one chunk comes (of fewer records when that fills a shorter run of pages:
//!   redb gives a value larger than a page a power of two of them; see `sealed.rs`). `run` records move to `run_chunks` the same way, once
//!   [`crate::StoreOptions::run_chunk`] wait. Every scan of the log merges the three by seq.
//! - `window_chunks`: `last seq (u64) -> bytes`: sealed `window` records, column by column
//!   (version 2; a format 4 store's are version 1, still read; encoding in `window_chunk.rs`); the chunks cover disjoint, increasing seq ranges,
//!   all below the seq of any window still in `log`.
//! - `window_spans`: `last seq (u64) -> (first seq, min ts_ms, max ts_ms)` of each sealed
//!   chunk, so a scan from a seq or over a time range decodes only the chunks it needs.
//! - `run_chunks`: `last seq (u64) -> bytes`: sealed `run` records, field by field in one
//!   zstd block (version 2; a format 4 store's chunks are version 1, each run's named
//!   MessagePack one after the other, and are read as they are; encoding in `run_chunk.rs`);
//!   disjoint, increasing seq ranges, all below the seq of any run still in `log`.
//! - `run_spans`: like `window_spans`, for `run_chunks`.
//! - `log_by_kind`: `(kind code u8, seq) -> ()`, to scan one kind without reading the others.
//! - `log_by_time`: `(ts_ms i64, seq) -> ()`, to scan a time range.
//! - `ids`: `client id -> seq (u64 LE) ++ the first 16 bytes of the SHA-256 of the record as
//!   the client sent it` (a format 4 store's rows hold all 32, compared on their first 16), so
//!   a retried batch is recognised and a reused id with other content is refused. Kept for
//!   [`crate::Retention::ids_ms`] after the item was stored, then forgotten by
//!   [`crate::Store::compact`].
//! - `ids_by_time`: `(stored at ms, seq) -> client id`: the order in which ids are forgotten.
//!   `stored at` is the service's clock when the batch was stored (`now_ms`), not the item's
//!   own time, so a backfill of old records is remembered as long as a fresh one.
//! - `series`: `series key -> series number (u32)`.
//! - `head`: `(series number, seq) -> bytes`: the newest raw samples of each series, one small
//!   row each (encoding in [`crate::chunk`]).
//! - `chunks`: `(series number, max ts_ms, min seq) -> bytes`: sealed chunks of
//!   [`crate::chunk::CHUNK_SAMPLES`] samples of one series, compressed column by column with pco
//!   (encoding in [`crate::chunk`]). Keyed by their newest time, so a query from `from_ms` starts
//!   at the first chunk that can hold a sample at or after it.
//! - `rollups`: `(series number, UTC day start ts_ms) -> bytes`: what [`crate::Store::compact`]
//!   keeps of samples older than the raw retention, a row a day: the day's buckets column by
//!   column (their starts, counts, minimums, maximums and sums; encoding in `retention.rs`).
//!   Format 4 kept a row a bucket, `(series number, bucket start) -> ` a CRC-32, then count
//!   (u64), min, max and sum (f64), little-endian; converted to rows a day at open.
//! - `run_models`: `model_id -> (model number u32, rows in its head u64)`, for every model
//!   with a logged run.
//! - `run_head`: `(model number, seq) -> bytes`: the numbers of each model's newest runs,
//!   fixed-width (encoding in [`crate::runs`]), fewer than
//!   [`crate::StoreOptions::run_index_chunk`] a model (a store sealed at a larger size keeps
//!   its longer head until the model's next run).
//! - `run_index`: `(model number, last seq) -> bytes`: a model's older runs' numbers in chunks
//!   of pco columns (encoding in `run_index.rs`) of any length, disjoint and increasing:
//!   [`crate::StoreOptions::run_index_chunk`] rows sealed from its head in the transaction
//!   that filled it, and the oldest eight of those merged into one once sixteen wait. So the
//!   last N runs of one model are a short head of small rows and a few small chunks.
//! - `state`: `&str -> bytes`: state the store keeps for a caller, a CRC-32 (little-endian, of
//!   the payload) then the payload. `sample_deriver` is the serialized state of the
//!   [`crate::SampleDeriver`] as of the last transaction that derived, written in that same
//!   transaction. Every other key is written by a [`crate::Batch::Derived`] (its `state`), in
//!   the transaction of its records and cursor, and replaced by the next batch naming it:
//!   `follower_checkpoint/{thresholds version}/{thresholds fingerprint}` is the follower's
//!   newest checkpoint folded under those thresholds (kora-pipeline's `follower.rs`; earlier
//!   builds appended it to the log as a `checkpoint` record instead, and such records are
//!   still read). The table is created with a new store; a store made before it existed, or
//!   one that never derived, has no key (no state), and opens unchanged: these keys need no
//!   new format version.
//!
//! Format version 4 was format 5 with run and window chunks of version 1 only. A version 4
//! store is marked version 5 when it is opened; its chunks are not rewritten (both versions
//! are read).
//!
//! Format version 3 was format 4 without the run chunks: every `run` record a log row, and
//! its run index a row a run in `runs` (`(model_id, seq) -> bytes`). A version 3 store is
//! converted to version 4 in one transaction when it is opened (its runs sealed, oldest first,
//! in chunks of `run_chunk`; its run index moved to model numbers and sealed in chunks of
//! `run_index_chunk`).
//!
//! Format version 2 was format 3 without the window tables: every `window` record a log row.
//! A version 2 store is converted to version 3 in one transaction when it is opened (its
//! windows sealed, oldest first, in chunks of `window_chunk`).
//!
//! Format version 1 kept a row per sample in `samples`: `(series number, ts_ms, seq) -> bytes`
//! (CRC-32 then MessagePack of `(late, sample)`), 60 to 110 bytes a sample on disk. A version 1
//! store is converted to version 2 in one transaction when it is opened.

use redb::TableDefinition;

pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub const LOG_BY_KIND: TableDefinition<(u8, u64), ()> = TableDefinition::new("log_by_kind");
pub const LOG_BY_TIME: TableDefinition<(i64, u64), ()> = TableDefinition::new("log_by_time");
pub const IDS: TableDefinition<&str, &[u8]> = TableDefinition::new("ids");
pub const IDS_BY_TIME: TableDefinition<(i64, u64), &str> = TableDefinition::new("ids_by_time");
pub const SERIES: TableDefinition<&str, u32> = TableDefinition::new("series");
pub const HEAD: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("head");
pub const CHUNKS: TableDefinition<(u32, i64, u64), &[u8]> = TableDefinition::new("chunks");
pub const ROLLUPS: TableDefinition<(u32, i64), &[u8]> = TableDefinition::new("rollups");
pub const RUN_MODELS: TableDefinition<&str, (u32, u64)> = TableDefinition::new("run_models");
pub const RUN_HEAD: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("run_head");
pub const RUN_INDEX: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("run_index");
/// Format 3's run index (a row a run), converted once at open.
pub const RUNS_V3: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("runs");
pub const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
pub const WINDOW_CHUNKS: TableDefinition<u64, &[u8]> = TableDefinition::new("window_chunks");
pub const WINDOW_SPANS: TableDefinition<u64, (u64, i64, i64)> =
    TableDefinition::new("window_spans");
pub const RUN_CHUNKS: TableDefinition<u64, &[u8]> = TableDefinition::new("run_chunks");
pub const RUN_SPANS: TableDefinition<u64, (u64, i64, i64)> = TableDefinition::new("run_spans");
/// Format version 1's samples, read once to convert them.
pub const SAMPLES_V1: TableDefinition<(u32, i64, u64), &[u8]> = TableDefinition::new("samples");

pub const K_FORMAT_VERSION: &str = "format_version";
pub const K_NEXT_SEQ: &str = "next_seq";
pub const K_LOG_RECORDS: &str = "log_records";
pub const K_SAMPLES: &str = "samples";
pub const K_ENGINE_CURSOR: &str = "engine_cursor";
/// How many `window` records are still log rows (not yet sealed).
pub const K_UNSEALED_WINDOWS: &str = "unsealed_windows";
/// How many `run` records are still log rows (not yet sealed).
pub const K_UNSEALED_RUNS: &str = "unsealed_runs";
/// The key of the sample deriver's state in [`STATE`].
pub const K_SAMPLE_DERIVER: &str = "sample_deriver";
/// The prefix of the follower's checkpoint keys in [`STATE`]:
/// `follower_checkpoint/{thresholds version}/{thresholds fingerprint}`.
pub const K_FOLLOWER_CHECKPOINT: &str = "follower_checkpoint/";
