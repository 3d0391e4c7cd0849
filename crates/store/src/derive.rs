//! Where the [`SampleDeriver`]'s state is kept: read once at open, written with every
//! transaction that derived; and the reading of any key of the `state` table.

use redb::{Database, ReadTransaction, ReadableDatabase, WriteTransaction};

use crate::SampleDeriver;
use crate::codec::{checked, with_crc};
use crate::error::{self, ReadError, WriteError};
use crate::tables::{K_SAMPLE_DERIVER, STATE};

/// The deriver's state stored by the last commit that derived; `None` when there is none (a
/// new store, one that never derived, or one made before the `state` table existed).
pub(crate) fn load_state(db: &Database) -> Result<Option<Vec<u8>>, ReadError> {
    read_state(&db.begin_read()?, K_SAMPLE_DERIVER)
}

/// The payload stored under `key` in the `state` table, its CRC-32 checked (a mismatch is
/// [`ReadError::Corrupt`] naming the key); `None` when the key, or the table, is absent.
pub(crate) fn read_state(rtx: &ReadTransaction, key: &str) -> Result<Option<Vec<u8>>, ReadError> {
    let table = match rtx.open_table(STATE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let Some(bytes) = table.get(key)? else {
        return Ok(None);
    };
    let payload = checked("state", || key.to_owned(), bytes.value())?;
    Ok(Some(payload.to_vec()))
}

/// Writes the deriver's state into the transaction `wtx`.
pub(crate) fn store_state(
    wtx: &WriteTransaction,
    deriver: &dyn SampleDeriver,
) -> Result<(), WriteError> {
    let state = deriver.state().map_err(|e| {
        WriteError::Storage(format!("the sample deriver's state cannot be stored: {e}"))
    })?;
    let mut table = wtx.open_table(STATE).map_err(error::write_error)?;
    table
        .insert(K_SAMPLE_DERIVER, with_crc(&state).as_slice())
        .map_err(error::write_error)?;
    Ok(())
}
