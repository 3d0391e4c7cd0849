//! The series store's write side: head rows (the newest raw samples of each series) and their
//! sealing into chunks of [`CHUNK_SAMPLES`].

use std::collections::HashMap;

use redb::{Database, ReadableDatabase, ReadableTable};

use crate::chunk::{self, CHUNK_SAMPLES, HEAD_BLOCK, Item};
use crate::codec::{codec_read_error, codec_write_error};
use crate::error::{self, ReadError, WriteError};
use crate::tables::{HEAD, SERIES};

/// A series' head as committed: how many samples it holds, and its last block while that one
/// has room (its key and samples), so the next commit appends to it.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeadState {
    pub(crate) len: usize,
    pub(crate) open: Option<(u64, Vec<Item>)>,
}

pub(crate) type HeadTable<'t> = redb::Table<'t, (u32, u64), &'static [u8]>;
pub(crate) type ChunkTable<'t> = redb::Table<'t, (u32, i64, u64), &'static [u8]>;

/// Appends `items` to the head of series `sid`: to its open block first, then in new blocks
/// of [`HEAD_BLOCK`]. Answers the head's new state.
pub(crate) fn append_head(
    head: &mut HeadTable<'_>,
    sid: u32,
    state: HeadState,
    items: Vec<Item>,
) -> Result<HeadState, WriteError> {
    let len = state.len + items.len();
    let (mut key, mut block) = state.open.unwrap_or((0, Vec::new()));
    let mut write = |key: u64, block: &[Item]| -> Result<(), WriteError> {
        let bytes = chunk::encode_head(block).map_err(|e| codec_write_error("a head block", e))?;
        head.insert((sid, key), bytes.as_slice())
            .map_err(error::write_error)?;
        Ok(())
    };
    let mut dirty = false;
    for item in items {
        if block.len() == HEAD_BLOCK {
            write(key, &block)?;
            block.clear();
        }
        if block.is_empty() {
            key = item.seq;
        }
        block.push(item);
        dirty = true;
    }
    if dirty {
        write(key, &block)?;
    }
    Ok(HeadState {
        len,
        open: (!block.is_empty() && block.len() < HEAD_BLOCK).then_some((key, block)),
    })
}

/// Moves every head sample of series `sid` into `items` and removes its blocks.
pub(crate) fn take_head(
    head: &mut HeadTable<'_>,
    sid: u32,
    items: &mut Vec<Item>,
) -> Result<(), WriteError> {
    for row in head
        .range((sid, 0)..=(sid, u64::MAX))
        .map_err(error::write_error)?
    {
        let (k, v) = row.map_err(error::write_error)?;
        let key = k.value().1;
        items.extend(
            chunk::decode_head(v.value())
                .map_err(|e| codec_write_error(&format!("head block {sid}/{key}"), e))?,
        );
    }
    head.retain_in((sid, 0)..=(sid, u64::MAX), |_, _| false)
        .map_err(error::write_error)?;
    Ok(())
}

/// Seals `items` (series `sid`, not in the head table) into chunks of [`CHUNK_SAMPLES`],
/// oldest first, and puts the newest remainder into the head. Answers the head's new state.
pub(crate) fn seal(
    head: &mut HeadTable<'_>,
    chunks: &mut ChunkTable<'_>,
    sid: u32,
    mut items: Vec<Item>,
) -> Result<HeadState, WriteError> {
    items.sort_unstable_by_key(|i| (i.ts_ms, i.seq));
    let sealed = items.len() / CHUNK_SAMPLES * CHUNK_SAMPLES;
    for part in items[..sealed].chunks(CHUNK_SAMPLES) {
        let (Some(last), Some(min_seq)) = (part.last(), part.iter().map(|i| i.seq).min()) else {
            continue;
        };
        let bytes = chunk::encode_chunk(part).map_err(|e| codec_write_error("a chunk", e))?;
        chunks
            .insert((sid, last.ts_ms, min_seq), bytes.as_slice())
            .map_err(error::write_error)?;
    }
    let rest = items.split_off(sealed);
    append_head(head, sid, HeadState::default(), rest)
}

/// Every series key with its number, and every series' head.
pub(crate) type SeriesState = (HashMap<String, u32>, HashMap<u32, HeadState>);

/// The series numbers and heads the writer starts from.
pub(crate) fn load_series(db: &Database) -> Result<SeriesState, ReadError> {
    let rtx = db.begin_read()?;
    let mut series = HashMap::new();
    for row in rtx.open_table(SERIES)?.iter()? {
        let (k, v) = row?;
        series.insert(k.value().to_owned(), v.value());
    }
    let mut heads: HashMap<u32, HeadState> = HashMap::new();
    for row in rtx.open_table(HEAD)?.iter()? {
        let (k, v) = row?;
        let (sid, key) = k.value();
        let block = chunk::decode_head(v.value())
            .map_err(|e| codec_read_error("head", format!("{sid}/{key}"), e))?;
        let state = heads.entry(sid).or_default();
        state.len += block.len();
        // Blocks come in key order: the last one read is the one to append to, if it has room.
        state.open = (block.len() < HEAD_BLOCK).then_some((key, block));
    }
    Ok((series, heads))
}
