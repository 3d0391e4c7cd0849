//! The frame shared by the sealed-record chunks (`window_chunk`, `run_chunk`, `run_index`):
//! a CRC-32 of the rest, a version byte, a row count (u32 LE), the byte length of each section
//! (u32 LE each), then the sections; and the pco column helpers they use.

use pco::ChunkConfig;
use pco::data_types::Number;
use pco::standalone::{simple_compress, simple_decompress};

use crate::chunk::{CodecError, Cursor, checked, with_crc};

pub(crate) fn decode_error(what: impl std::fmt::Display) -> CodecError {
    CodecError::Decode(what.to_string())
}

/// zstd of `bytes` at `level`, with zstd's window (and so its match tables) capped at 128 KiB.
/// Uncapped, level 9 over the few hundred KB of a chunk's block sizes its tables for the whole
/// input, about 8 MB allocated and freed at every seal; capped, about 1 MB, for the same bytes
/// within 0.1 %. (What the soak's burst left behind was not this but redb's cached pages in
/// jemalloc's slabs: benches/README.md.) The frame says its size.
pub(crate) fn zstd_compress(bytes: &[u8], level: i32) -> Result<Vec<u8>, CodecError> {
    let mut c = zstd::bulk::Compressor::new(level).map_err(decode_error)?;
    c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(17))
        .map_err(decode_error)?;
    let mut out = c.compress(bytes).map_err(decode_error)?;
    out.shrink_to_fit();
    Ok(out)
}

/// A zstd frame decompressed, when it says its size (zstd writes it) and that is at most
/// `max`: a frame claiming more is refused before anything is allocated.
pub(crate) fn unzstd(bytes: &[u8], max: usize, what: &str) -> Result<Vec<u8>, CodecError> {
    let size = zstd::zstd_safe::get_frame_content_size(bytes)
        .ok()
        .flatten()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n <= max)
        .ok_or_else(|| decode_error(format!("{what}: a zstd frame of no or too large a size")))?;
    let out = zstd::bulk::decompress(bytes, size).map_err(decode_error)?;
    if out.len() != size {
        return Err(decode_error(format!(
            "{what}: a zstd frame shorter than it says"
        )));
    }
    Ok(out)
}

/// One column compressed with pco. Level 4, as for sample chunks: nearly the ratio of the
/// default, about twice as fast.
pub(crate) fn compress<T: Number>(values: &[T]) -> Result<Vec<u8>, CodecError> {
    simple_compress(values, &ChunkConfig::default().with_compression_level(4)).map_err(decode_error)
}

/// A pco column of `len` numbers (`what` names the chunk kind in the error).
pub(crate) fn column<T: Number>(
    bytes: &[u8],
    len: usize,
    what: &str,
) -> Result<Vec<T>, CodecError> {
    let v: Vec<T> = simple_decompress(bytes).map_err(decode_error)?;
    if v.len() != len {
        return Err(decode_error(format!(
            "a {what} column holds {} numbers, the header says {len}",
            v.len()
        )));
    }
    Ok(v)
}

/// Frames `sections` of `rows` rows behind `version` and a CRC.
pub(crate) fn frame(
    version: u8,
    rows: usize,
    sections: &[Vec<u8>],
    what: &str,
) -> Result<Vec<u8>, CodecError> {
    let len32 = |n: usize| u32::try_from(n).map_err(|_| decode_error(format!("{what} too large")));
    let body: usize = sections.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(1 + 4 + 4 * sections.len() + body);
    out.push(version);
    out.extend_from_slice(&len32(rows)?.to_le_bytes());
    for s in sections {
        out.extend_from_slice(&len32(s.len())?.to_le_bytes());
    }
    for s in sections {
        out.extend_from_slice(s);
    }
    Ok(with_crc(out))
}

/// The row count a frame's header says, read without checking its CRC: a guess, never data.
pub(crate) fn frame_rows(bytes: &[u8]) -> Option<usize> {
    let count: [u8; 4] = bytes.get(5..9)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(count))
        .ok()
        .filter(|&n| n > 0)
}

/// Checks the CRC and the version of a frame of `N` sections; answers its row count and
/// sections. Damaged bytes are [`CodecError::Checksum`]; another version is named.
pub(crate) fn unframe<'a, const N: usize>(
    bytes: &'a [u8],
    version: u8,
    what: &str,
) -> Result<(usize, [&'a [u8]; N]), CodecError> {
    let mut c = Cursor(checked(bytes)?);
    let [v] = c.array::<1>()?;
    if v != version {
        return Err(decode_error(format!(
            "{what} version {v}, this build reads {version}"
        )));
    }
    let rows = c.u32()? as usize;
    let mut lens = [0usize; N];
    for l in &mut lens {
        *l = c.u32()? as usize;
    }
    let mut out: [&[u8]; N] = [&[]; N];
    for (o, l) in out.iter_mut().zip(lens) {
        *o = c.take(l)?;
    }
    Ok((rows, out))
}
