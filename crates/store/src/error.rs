//! The store's errors, one narrow enum per operation.

use std::path::PathBuf;

/// Opening the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("{path}: another kora-telemetry process has this store open (only one may)")]
    AlreadyOpen { path: PathBuf },
    #[error(
        "{path}: the store has format version {found}, newer than this build supports ({supported}); \
         upgrade kora-telemetry, the file was left untouched"
    )]
    FormatTooNew {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    #[error("{path}: not a kora-telemetry store ({reason}); the file was left untouched")]
    NotAStore { path: PathBuf, reason: String },
    #[error("{path}: cannot open the store: {source}")]
    Redb {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Appending a batch failed; nothing of the batch was stored.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    #[error("the write queue is full; retry shortly")]
    Busy,
    #[error("the store is shutting down")]
    ShuttingDown,
    #[error("item {index}: id {id:?} was already stored with different content")]
    IdConflict { index: usize, id: String },
    #[error("the disk is full: {0}")]
    DiskFull(String),
    #[error("storage failure: {0}")]
    Storage(String),
}

/// Reading failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("the store is being reopened after a storage failure; retry shortly")]
    Reopening,
    #[error("{table} entry {key}: checksum mismatch, the stored bytes are damaged")]
    Corrupt { table: &'static str, key: String },
    #[error("{table} entry {key}: cannot decode: {message}")]
    Decode {
        table: &'static str,
        key: String,
        message: String,
    },
}

macro_rules! read_from {
    ($($t:ty),*) => {$(
        impl From<$t> for ReadError {
            fn from(e: $t) -> Self {
                ReadError::Storage(e.to_string())
            }
        }
    )*};
}
read_from!(redb::StorageError, redb::TableError, redb::TransactionError);

/// Classifies a redb failure during a write, so that a full disk is told apart.
pub(crate) fn write_error(e: impl Into<redb::Error>) -> WriteError {
    let e: redb::Error = e.into();
    let full = match &e {
        redb::Error::Io(io) => is_disk_full(io),
        _ => false,
    };
    if full {
        WriteError::DiskFull(e.to_string())
    } else {
        WriteError::Storage(e.to_string())
    }
}

fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || e.raw_os_error() == Some(28)
}
