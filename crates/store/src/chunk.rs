//! The series store's encodings: head rows (recent raw samples) and sealed chunks.
//!
//! A series keeps its newest samples raw in the `head` table, in blocks of [`HEAD_BLOCK`], so
//! that a commit of a few samples rewrites one small block. When a series' head reaches
//! [`CHUNK_SAMPLES`] samples, they are sorted by `(ts, seq)` and sealed into one chunk in
//! `chunks`, compressed column by column with `pco` (timestamps, values and seqs: about one
//! byte per sample for the probe's signals, against 60 to 110 for a row per sample). A sealed
//! chunk is never rewritten. Every stored value starts with a CRC-32 of the rest, checked on
//! every read.
//!
//! Head block (after the CRC): see [`encode_head`].
//!
//! Chunk (after the CRC): version `1` (u8), sample count (u32 LE), min and max `ts_ms` (i64 LE),
//! the byte lengths of the four sections (u32 LE each), then the sections: pco of the
//! timestamps, pco of the values (0 where a sample has none), pco of the seqs, and the extras
//! of the few samples that have any, as named MessagePack `[(index, extras)]` (empty when none).

use pco::ChunkConfig;
use pco::standalone::{simple_compress, simple_decompress};
use serde::{Deserialize, Serialize};

/// How many samples a sealed chunk holds. pco needs about a thousand numbers to pay for its
/// header; 1,024 samples is 17 minutes of a 1 s probe and 85 minutes of the default 5 s one.
pub const CHUNK_SAMPLES: usize = 1024;

/// How many samples one head block holds. A commit of a few samples rewrites one block of at
/// most this many (about 1.6 KB), and a large batch writes whole blocks: one B-tree insert per
/// 64 samples instead of one per sample.
pub const HEAD_BLOCK: usize = 64;

const CHUNK_VERSION: u8 = 1;
const CHUNK_HEADER: usize = 1 + 4 + 8 + 8 + 4 * 4;

/// The rare parts of a sample, kept beside the columns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Extra {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.id.is_none() && self.unavailable.is_none() && self.session_id.is_none()
    }
}

/// One sample of a series, without its series (the key names that).
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub seq: u64,
    pub ts_ms: i64,
    pub value: Option<f64>,
    pub extra: Option<Box<Extra>>,
}

impl Item {
    pub fn new(seq: u64, ts_ms: i64, value: Option<f64>, extra: Extra) -> Item {
        Item {
            seq,
            ts_ms,
            value,
            extra: (!extra.is_empty()).then(|| Box::new(extra)),
        }
    }
}

/// Why stored bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The CRC does not match: the bytes are damaged.
    Checksum,
    /// The CRC matches but the content does not decode (a bug, or a format this build lacks).
    Decode(String),
}

pub(crate) fn with_crc(payload: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

pub(crate) fn checked(bytes: &[u8]) -> Result<&[u8], CodecError> {
    let (crc, payload) = bytes.split_at_checked(4).ok_or(CodecError::Checksum)?;
    let mut c = [0u8; 4];
    c.copy_from_slice(crc);
    if u32::from_le_bytes(c) != crc32fast::hash(payload) {
        return Err(CodecError::Checksum);
    }
    Ok(payload)
}

/// Reads fixed-width little-endian numbers off the front of a slice.
pub(crate) struct Cursor<'a>(pub(crate) &'a [u8]);

impl<'a> Cursor<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let (head, rest) = self
            .0
            .split_at_checked(n)
            .ok_or_else(|| CodecError::Decode("truncated".into()))?;
        self.0 = rest;
        Ok(head)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub(crate) fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn i64(&mut self) -> Result<i64, CodecError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    pub(crate) fn f64(&mut self) -> Result<f64, CodecError> {
        Ok(f64::from_le_bytes(self.array()?))
    }
}

/// Encodes a head block: up to [`HEAD_BLOCK`] samples, each `seq` u64, `ts_ms` i64, value f64,
/// a flags byte (bit 0: has a value, bit 1: extras follow), then, with bit 1, the extras'
/// length (u32) and the extras as named MessagePack.
pub fn encode_head(items: &[Item]) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(items.len() * 25);
    for item in items {
        out.extend_from_slice(&item.seq.to_le_bytes());
        out.extend_from_slice(&item.ts_ms.to_le_bytes());
        out.extend_from_slice(&item.value.unwrap_or(0.0).to_le_bytes());
        let flags = u8::from(item.value.is_some()) | (u8::from(item.extra.is_some()) << 1);
        out.push(flags);
        if let Some(extra) = &item.extra {
            let bytes = rmp_serde::to_vec_named(extra.as_ref())
                .map_err(|e| CodecError::Decode(e.to_string()))?;
            let len = u32::try_from(bytes.len())
                .map_err(|_| CodecError::Decode("extras too large".into()))?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&bytes);
        }
    }
    Ok(with_crc(out))
}

/// Decodes a head block.
pub fn decode_head(bytes: &[u8]) -> Result<Vec<Item>, CodecError> {
    let mut c = Cursor(checked(bytes)?);
    let mut items = Vec::with_capacity(c.0.len() / 25);
    while !c.0.is_empty() {
        let seq = u64::from_le_bytes(c.array()?);
        let ts_ms = c.i64()?;
        let value = c.f64()?;
        let [flags] = c.array::<1>()?;
        let extra = if flags & 2 != 0 {
            let len = c.u32()? as usize;
            let e: Extra = rmp_serde::from_slice(c.take(len)?)
                .map_err(|e| CodecError::Decode(e.to_string()))?;
            Some(Box::new(e))
        } else {
            None
        };
        items.push(Item {
            seq,
            ts_ms,
            value: (flags & 1 != 0).then_some(value),
            extra,
        });
    }
    Ok(items)
}

/// What a chunk's header tells without decompressing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub len: usize,
    pub min_ts: i64,
    pub max_ts: i64,
    /// Whether any sample has extras (or no value): a chunk without them can answer a query
    /// of values from its value column alone.
    pub plain: bool,
}

/// Encodes a sealed chunk. `items` must be sorted by `(ts, seq)` and not empty.
pub fn encode_chunk(items: &[Item]) -> Result<Vec<u8>, CodecError> {
    let (Some(first), Some(last)) = (items.first(), items.last()) else {
        return Err(CodecError::Decode("an empty chunk".into()));
    };
    let ts: Vec<i64> = items.iter().map(|i| i.ts_ms).collect();
    let values: Vec<f64> = items.iter().map(|i| i.value.unwrap_or(0.0)).collect();
    let seqs: Vec<u64> = items.iter().map(|i| i.seq).collect();
    let extras: Vec<(u32, bool, &Extra)> = items
        .iter()
        .enumerate()
        .filter(|(_, i)| i.value.is_none() || i.extra.is_some())
        .map(|(n, i)| {
            static NONE: Extra = Extra {
                id: None,
                unavailable: None,
                session_id: None,
            };
            (
                n as u32,
                i.value.is_some(),
                i.extra.as_deref().unwrap_or(&NONE),
            )
        })
        .collect();
    // Level 4 of pco's 0 to 12: measured on a day of probe data in chunks of 1,024, 0.937
    // bytes a sample against 0.933 at the default level 8, compressed about twice as fast.
    let config = ChunkConfig::default().with_compression_level(4);
    let pco = |e: pco::errors::PcoError| CodecError::Decode(e.to_string());
    let ts = simple_compress(&ts, &config).map_err(pco)?;
    let values = simple_compress(&values, &config).map_err(pco)?;
    let seqs = simple_compress(&seqs, &config).map_err(pco)?;
    let extras = if extras.is_empty() {
        Vec::new()
    } else {
        rmp_serde::to_vec_named(&extras).map_err(|e| CodecError::Decode(e.to_string()))?
    };
    let len32 = |n: usize| u32::try_from(n).map_err(|_| CodecError::Decode("too large".into()));
    let mut out = Vec::with_capacity(CHUNK_HEADER + ts.len() + values.len() + seqs.len());
    out.push(CHUNK_VERSION);
    out.extend_from_slice(&len32(items.len())?.to_le_bytes());
    out.extend_from_slice(&first.ts_ms.to_le_bytes());
    out.extend_from_slice(&last.ts_ms.to_le_bytes());
    for section in [&ts, &values, &seqs, &extras] {
        out.extend_from_slice(&len32(section.len())?.to_le_bytes());
    }
    for section in [ts, values, seqs, extras] {
        out.extend_from_slice(&section);
    }
    Ok(with_crc(out))
}

/// A chunk whose CRC was checked, split into its sections.
#[derive(Debug)]
pub struct Chunk<'a> {
    pub header: ChunkHeader,
    ts: &'a [u8],
    values: &'a [u8],
    seqs: &'a [u8],
    extras: &'a [u8],
}

impl<'a> Chunk<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Chunk<'a>, CodecError> {
        let mut c = Cursor(checked(bytes)?);
        let [version] = c.array::<1>()?;
        if version != CHUNK_VERSION {
            return Err(CodecError::Decode(format!(
                "chunk version {version}, this build reads {CHUNK_VERSION}"
            )));
        }
        let len = c.u32()? as usize;
        let min_ts = c.i64()?;
        let max_ts = c.i64()?;
        let lens = [c.u32()?, c.u32()?, c.u32()?, c.u32()?];
        let ts = c.take(lens[0] as usize)?;
        let values = c.take(lens[1] as usize)?;
        let seqs = c.take(lens[2] as usize)?;
        let extras = c.take(lens[3] as usize)?;
        Ok(Chunk {
            header: ChunkHeader {
                len,
                min_ts,
                max_ts,
                plain: extras.is_empty(),
            },
            ts,
            values,
            seqs,
            extras,
        })
    }

    fn column<T: pco::data_types::Number>(&self, bytes: &[u8]) -> Result<Vec<T>, CodecError> {
        let v: Vec<T> = simple_decompress(bytes).map_err(|e| CodecError::Decode(e.to_string()))?;
        if v.len() != self.header.len {
            return Err(CodecError::Decode(format!(
                "a column holds {} numbers, the header says {}",
                v.len(),
                self.header.len
            )));
        }
        Ok(v)
    }

    /// The value column alone (0 where a sample has no value; see [`ChunkHeader::plain`]).
    pub fn values(&self) -> Result<Vec<f64>, CodecError> {
        self.column(self.values)
    }

    pub fn timestamps(&self) -> Result<Vec<i64>, CodecError> {
        self.column(self.ts)
    }

    /// Every sample of the chunk, in `(ts, seq)` order.
    pub fn items(&self) -> Result<Vec<Item>, CodecError> {
        let ts = self.timestamps()?;
        let values = self.values()?;
        let seqs: Vec<u64> = self.column(self.seqs)?;
        let mut items: Vec<Item> = ts
            .into_iter()
            .zip(values)
            .zip(seqs)
            .map(|((ts_ms, value), seq)| Item {
                seq,
                ts_ms,
                value: Some(value),
                extra: None,
            })
            .collect();
        for (index, has_value, extra) in self.extras()? {
            let item = items
                .get_mut(index as usize)
                .ok_or_else(|| CodecError::Decode(format!("extras name sample {index}")))?;
            if !has_value {
                item.value = None;
            }
            item.extra = (!extra.is_empty()).then(|| Box::new(extra));
        }
        Ok(items)
    }

    /// `(index, has a value, extras)` of the samples that are not plain.
    pub fn extras(&self) -> Result<Vec<(u32, bool, Extra)>, CodecError> {
        if self.extras.is_empty() {
            return Ok(Vec::new());
        }
        rmp_serde::from_slice(self.extras).map_err(|e| CodecError::Decode(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(seq: u64, ts: i64, value: Option<f64>) -> Item {
        Item {
            seq,
            ts_ms: ts,
            value,
            extra: None,
        }
    }

    #[test]
    fn head_blocks_round_trip() {
        let plain = item(7, 1_700_000_000_123, Some(42.5));
        let odd = Item::new(
            9,
            -5,
            None,
            Extra {
                id: Some("a".into()),
                unavailable: Some("no NVIDIA GPU".into()),
                session_id: Some("s".into()),
            },
        );
        let block = vec![plain.clone(), odd, plain];
        let bytes = encode_head(&block).unwrap();
        assert_eq!(decode_head(&bytes).unwrap(), block);
        let mut damaged = bytes.clone();
        damaged[10] ^= 1;
        assert_eq!(decode_head(&damaged).unwrap_err(), CodecError::Checksum);
        assert_eq!(decode_head(&encode_head(&[]).unwrap()).unwrap(), vec![]);
    }

    #[test]
    fn chunks_round_trip_with_extras_and_reject_damage() {
        let mut items: Vec<Item> = (0..CHUNK_SAMPLES as u64)
            .map(|i| {
                item(
                    10 + i * 10,
                    1_700_000_000_000 + i as i64 * 1000,
                    Some(i as f64 / 10.0),
                )
            })
            .collect();
        items[3] = Item::new(
            items[3].seq,
            items[3].ts_ms,
            None,
            Extra {
                unavailable: Some("driver not loaded".into()),
                ..Extra::default()
            },
        );
        items[5].extra = Some(Box::new(Extra {
            session_id: Some("s1".into()),
            ..Extra::default()
        }));
        let bytes = encode_chunk(&items).unwrap();
        // Regular data compresses far below the 24 bytes of raw (ts, value, seq).
        assert!(bytes.len() < CHUNK_SAMPLES * 4, "{} bytes", bytes.len());
        let chunk = Chunk::parse(&bytes).unwrap();
        assert_eq!(chunk.header.len, CHUNK_SAMPLES);
        assert_eq!(chunk.header.min_ts, items[0].ts_ms);
        assert!(!chunk.header.plain);
        assert_eq!(chunk.items().unwrap(), items);

        for at in [0, 4, 20, bytes.len() / 2, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert_eq!(Chunk::parse(&damaged).unwrap_err(), CodecError::Checksum);
        }
        assert!(Chunk::parse(&bytes[..bytes.len() - 3]).is_err());
    }
}
