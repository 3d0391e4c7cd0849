//! Where the [`SampleDeriver`]'s state is kept: read once at open, written with every
//! transaction that derived.

use redb::{Database, ReadableDatabase, WriteTransaction};

use crate::SampleDeriver;
use crate::codec::{checked, with_crc};
use crate::error::{self, ReadError, WriteError};
use crate::tables::{K_SAMPLE_DERIVER, STATE};

/// The deriver's state stored by the last commit that derived; `None` when there is none (a
/// new store, one that never derived, or one made before the `state` table existed).
pub(crate) fn load_state(db: &Database) -> Result<Option<Vec<u8>>, ReadError> {
    let rtx = db.begin_read()?;
    let table = match rtx.open_table(STATE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let Some(bytes) = table.get(K_SAMPLE_DERIVER)? else {
        return Ok(None);
    };
    let payload = checked("state", || K_SAMPLE_DERIVER.to_owned(), bytes.value())?;
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
