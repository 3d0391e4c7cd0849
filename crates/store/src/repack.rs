//! At a clean close, the B-tree tables that removals left sparse are rebuilt with full pages.
//!
//! redb splits a full leaf into two halves and never merges leaves that removals emptied. Rows
//! appended at the right edge of a tree fill their leaves, but the log loses most of its rows
//! in place (sealing moves `window` and `run` records, and their index rows, into chunks and
//! leaves the events between them), and the rollups grow at ten places in their tree (one
//! series each). On a year's store these tables' pages were about half empty: the log 14.3 MB
//! of pages for 8.1 MB of rows, the rollups 8.3 for 4.0, the log's two indexes 3.3 for 1.9.
//! Copying such a table's rows, in key order, into a new table fills every leaf (each insert
//! lands at the new tree's right edge); the copy then takes the table's name, in one
//! transaction, so a crash leaves the table as it was or as it is rebuilt, never half of it.
//! The pages given back are truncated from the file by the compaction that follows.
//!
//! The client ids (`ids`) are not rebuilt: their keys arrive in random order, so every leaf
//! would be split again within a day of inserts and the table would be as sparse as before.

use std::borrow::Borrow;

use redb::{
    Database, Key, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle, TableStats,
    Value, WriteTransaction,
};

use crate::tables::{LOG, LOG_BY_KIND, LOG_BY_TIME, ROLLUPS};

/// A table is rebuilt when its rows fill less than this share of its pages (a rebuilt table's
/// rows fill about 0.9 of them: the rest is redb's own page metadata).
const REPACK_BELOW_FILL: f64 = 0.8;

/// Nor smaller tables than this many bytes of pages: what they would give back is not worth
/// a rewrite at every close.
const REPACK_MIN_BYTES: u64 = 1 << 20;

/// Bytes of pages a table takes.
fn page_bytes(s: &TableStats) -> u64 {
    s.stored_bytes() + s.metadata_bytes() + s.fragmented_bytes()
}

fn is_sparse(s: &TableStats) -> bool {
    let pages = page_bytes(s);
    pages >= REPACK_MIN_BYTES && (s.stored_bytes() as f64) < REPACK_BELOW_FILL * pages as f64
}

/// Rebuilds `table` in `wtx` when it is sparse; the bytes of pages it gave back.
fn repack<K: Key + 'static, V: Value + 'static>(
    wtx: &WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<u64, redb::Error>
where
    for<'a> K::SelfType<'a>: Borrow<K::SelfType<'a>>,
    for<'a> V::SelfType<'a>: Borrow<V::SelfType<'a>>,
{
    let before = wtx.open_table(table)?.stats()?;
    if !is_sparse(&before) {
        return Ok(0);
    }
    let name = format!("{}.repack", table.name());
    let copy: TableDefinition<K, V> = TableDefinition::new(&name);
    // An interrupted rebuild leaves no copy (it is one transaction); this makes sure of it.
    wtx.delete_table(copy)?;
    let after = {
        let from = wtx.open_table(table)?;
        let mut to = wtx.open_table(copy)?;
        for row in from.iter()? {
            let (k, v) = row?;
            to.insert(k.value(), v.value())?;
        }
        to.stats()?
    };
    wtx.delete_table(table)?;
    wtx.rename_table(copy, table)?;
    Ok(page_bytes(&before).saturating_sub(page_bytes(&after)))
}

/// Rebuilds the sparse tables of `db` in one durable transaction; the bytes of pages given
/// back (0 when no table was sparse: nothing is written then). A failure leaves every table as
/// it was (the transaction is not committed).
pub(crate) fn sparse_tables(db: &Database) -> Result<u64, redb::Error> {
    let mut wtx = db.begin_write()?;
    wtx.set_quick_repair(true);
    let freed = repack(&wtx, LOG)?
        + repack(&wtx, LOG_BY_KIND)?
        + repack(&wtx, LOG_BY_TIME)?
        + repack(&wtx, ROLLUPS)?;
    if freed == 0 {
        wtx.abort()?;
    } else {
        wtx.commit()?;
    }
    Ok(freed)
}
