//! What a file is: the format check made before anything is written, and the guard around
//! redb calls on a file that may be damaged.

use std::path::Path;

use redb::ReadableDatabase;

use crate::error::OpenError;
use crate::tables::{K_FORMAT_VERSION, K_NEXT_SEQ, META};

/// The on-disk format this build writes. A store with a newer one is refused at open.
pub const FORMAT_VERSION: u64 = 5;

/// Runs a redb call on a file that may be damaged. redb's debug builds panic on some damaged
/// structures (release builds return `Corrupted`); either way the file is refused, never
/// trusted, and the process carries on to say so.
pub(crate) fn guarded<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T, OpenError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown damage".into());
        OpenError::NotAStore {
            path: path.to_owned(),
            reason: format!("the file is damaged ({what})"),
        }
    })
}

/// Checks that `db` is a kora-telemetry store this build can read; answers its format version
/// and next seq.
pub(crate) fn check_format(
    db: &impl ReadableDatabase,
    path: &Path,
) -> Result<(u64, u64), OpenError> {
    let redb_err = |e: redb::Error| OpenError::Redb {
        path: path.to_owned(),
        source: e,
    };
    let rtx = db.begin_read().map_err(|e| redb_err(e.into()))?;
    let meta = match rtx.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Err(OpenError::NotAStore {
                path: path.to_owned(),
                reason: "it has no kora-telemetry meta table".into(),
            });
        }
        Err(e) => return Err(redb_err(e.into())),
    };
    let get = |k: &str| -> Result<Option<u64>, OpenError> {
        Ok(meta
            .get(k)
            .map_err(|e| redb_err(e.into()))?
            .map(|v| v.value()))
    };
    let Some(found) = get(K_FORMAT_VERSION)? else {
        return Err(OpenError::NotAStore {
            path: path.to_owned(),
            reason: "it records no format version".into(),
        });
    };
    if found > FORMAT_VERSION {
        return Err(OpenError::FormatTooNew {
            path: path.to_owned(),
            found,
            supported: FORMAT_VERSION,
        });
    }
    Ok((found, get(K_NEXT_SEQ)?.unwrap_or(1)))
}
