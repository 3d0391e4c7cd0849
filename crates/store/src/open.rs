//! Opening a store: the format check, migration, and the start of the writer thread.

use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};

use redb::Database;

use crate::derive::load_state;
use crate::error::{OpenError, ReadError};
use crate::format::{check_format, guarded};
use crate::heads::load_series;
use crate::migrate::{migrate_v1, migrate_v2, migrate_v3, migrate_v4};
use crate::tables::{
    CHUNKS, HEAD, IDS, IDS_BY_TIME, K_FORMAT_VERSION, K_LOG_RECORDS, K_NEXT_SEQ, K_SAMPLES,
    K_UNSEALED_RUNS, K_UNSEALED_WINDOWS, LOG, LOG_BY_KIND, LOG_BY_TIME, META, ROLLUPS, RUN_CHUNKS,
    RUN_HEAD, RUN_INDEX, RUN_MODELS, RUN_SPANS, SERIES, STATE, WINDOW_CHUNKS, WINDOW_SPANS,
};
use crate::verify;
use crate::writer::Writer;
use crate::{DbSlot, FORMAT_VERSION, OpenCheck, SampleDeriver, Store, StoreOptions};

impl Store {
    /// Opens the store at `path`, creating it when there is no file. An existing file must be a
    /// kora-telemetry store of this format version or older; anything else is refused and left
    /// as it is.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Store, OpenError> {
        Store::start(
            path,
            options,
            None::<fn(Option<Vec<u8>>) -> Box<dyn SampleDeriver>>,
        )
    }

    /// Opens the store like [`Store::open`], with a [`SampleDeriver`] that sees every batch's
    /// newly stored samples inside the transaction that stores them. `make` builds it from the
    /// state stored by the last commit that derived (`None` for a new store or one that never
    /// derived); it is called once, before the writer starts. A stored state whose checksum
    /// does not match refuses the open (`NotAStore`). Samples stored while the file was open
    /// without a deriver are never shown to one.
    pub fn open_with_deriver(
        path: &Path,
        options: StoreOptions,
        make: impl FnOnce(Option<Vec<u8>>) -> Box<dyn SampleDeriver>,
    ) -> Result<Store, OpenError> {
        Store::start(path, options, Some(make))
    }

    fn start(
        path: &Path,
        options: StoreOptions,
        make: Option<impl FnOnce(Option<Vec<u8>>) -> Box<dyn SampleDeriver>>,
    ) -> Result<Store, OpenError> {
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
        // Whether this open writes to the file before any batch does (a new file, a crash
        // recovery, a format conversion): such bytes were never checked.
        let mut open_writes = !existed;
        let mut check = OpenCheck::New;
        if existed {
            let mut last_stop = verify::LastStop::Consistent;
            // Check the format without writing a byte: a file this build must refuse is left
            // exactly as it was. A file that needs crash recovery cannot be opened read-only;
            // it is checked right after the writable open below, before anything is written.
            match guarded(path, || builder.open_read_only(path))? {
                Ok(ro) => {
                    let (version, _) = guarded(path, || check_format(&ro, path))??;
                    open_writes |= version < FORMAT_VERSION;
                    ro.close().map_err(open_err)?;
                }
                Err(redb::DatabaseError::RepairAborted) => {
                    open_writes = true;
                    last_stop = verify::LastStop::NeedsRecovery;
                }
                Err(e) => return Err(open_err(e)),
            }
            // Every page checksum, checked against a copy-on-write view: redb checks them on
            // no ordinary read, and its own check repairs (writes) what it finds. Unless these
            // are exactly the bytes a clean close checked and vouched for.
            check = if verify::unchanged_since_checked_close(path) {
                OpenCheck::UnchangedSinceCheckedClose
            } else {
                verify::verify_pages(path, last_stop)?;
                OpenCheck::PagesVerified
            };
            verify::forget_checked_close(path);
            tracing::debug!(path = %path.display(), ?check, "store checked");
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
            if version < 3 {
                migrate_v2(&db, path, options.window_chunk)?;
            }
            if version < 4 {
                migrate_v3(&db, path, options.run_chunk, options.run_index_chunk)?;
            }
            if version < 5 {
                migrate_v4(&db, path)?;
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
                    (K_UNSEALED_WINDOWS, 0),
                    (K_UNSEALED_RUNS, 0),
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
                wtx.open_table(IDS_BY_TIME)
                    .map_err(|e| redb_err(e.into()))?;
                wtx.open_table(SERIES).map_err(|e| redb_err(e.into()))?;
                wtx.open_table(HEAD).map_err(|e| redb_err(e.into()))?;
                wtx.open_table(CHUNKS).map_err(|e| redb_err(e.into()))?;
                wtx.open_table(RUN_MODELS).map_err(|e| redb_err(e.into()))?;
                wtx.open_table(RUN_HEAD).map_err(|e| redb_err(e.into()))?;
                wtx.open_table(RUN_INDEX).map_err(|e| redb_err(e.into()))?;
                wtx.open_table(ROLLUPS).map_err(|e| redb_err(e.into()))?;
                wtx.open_table(STATE).map_err(|e| redb_err(e.into()))?;
                wtx.open_table(WINDOW_CHUNKS)
                    .map_err(|e| redb_err(e.into()))?;
                wtx.open_table(WINDOW_SPANS)
                    .map_err(|e| redb_err(e.into()))?;
                wtx.open_table(RUN_CHUNKS).map_err(|e| redb_err(e.into()))?;
                wtx.open_table(RUN_SPANS).map_err(|e| redb_err(e.into()))?;
            }
            wtx.commit().map_err(|e| redb_err(e.into()))?;
            1
        };
        let not_a_store = |e: ReadError| OpenError::NotAStore {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let deriver = match make {
            Some(make) => Some(make(load_state(&db).map_err(not_a_store)?)),
            None => None,
        };
        let (series, heads) = load_series(&db).map_err(not_a_store)?;
        let db: DbSlot = Arc::new(std::sync::RwLock::new(Some(Arc::new(db))));
        let (sender, receiver) = sync_channel(options.queue_batches.max(1));
        let commits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let written = Arc::new(std::sync::atomic::AtomicBool::new(open_writes));
        let writer = Writer {
            db: db.clone(),
            path: path.to_owned(),
            cache_bytes: options.cache_bytes,
            next_seq,
            group_max_records: options.group_max_records.max(1),
            window_chunk: options.window_chunk.max(1),
            run_chunk: options.run_chunk.max(1),
            run_index_chunk: options.run_index_chunk.max(1),
            series,
            heads,
            deriver,
            commits: commits.clone(),
            written: written.clone(),
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
            commits,
            written,
            check,
            run_index_cache: Default::default(),
        };
        // Warm the counts answered while the file is being reopened after a failure.
        let _ = store.stats();
        Ok(store)
    }
}
