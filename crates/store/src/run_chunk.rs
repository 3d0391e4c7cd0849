//! The encoding of a sealed run chunk: many `run` log records in one compressed block.
//!
//! A run is most of a busy user's log: a handful of ids and hashes, a dozen numbers and up to
//! a few dozen named stages. Kept as a log row each (named MessagePack, plus a row in the kind
//! and time indexes) one took about 800 bytes on disk. Sealed, a thousand runs share one zstd
//! block, field by field: every run's `model_latency_ms`, then every run's `tokens_in`, and so
//! on, the numbers compressed with pco and the hex digits of the hashes kept as the bytes they
//! spell. The field and stage names, the model and session ids and the repeated stage layout
//! compress to a fraction of a byte, and what is left is the entropy of the ids, hashes and
//! measured numbers themselves: on a year's store 57.6 bytes a run, against 94.9 when each run's
//! fields stayed together (version 1, still read).
//!
//! Every run is kept exactly: a run is split into the fields of its own named MessagePack, and
//! decoding joins them back into a map of the same fields and values, which deserializes to the
//! very record that was appended; a field added to `Run` later is sealed with no change here.
//!
//! Layout (after the CRC-32 of the rest): version `2` (u8), run count (u32 LE), then the byte
//! lengths of the 5 sections (u32 LE each), then the sections:
//! 1. pco of the seqs (strictly increasing);
//! 2. pco of each run's `ts_ms` (the time the log's time index held);
//! 3. MessagePack of the columns, in order: `[(field name, encoding)]`;
//! 4. zstd of the columns of encoding 0, one after the other: each run's value as MessagePack,
//!    `nil` for a run without that field (in the `ts_ms` column, the byte `0xc1`, never a
//!    MessagePack value, for a run whose `ts_ms` is the time of section 2);
//! 5. the other columns, one after the other, each its byte length (u32 LE) then its bytes:
//!    encoding 1, every run's value an integer: pco of them (as i64); 2, every value a 64-bit
//!    float: pco of them; 3, every value a string of 64 lowercase hex digits: zstd of the 32
//!    bytes each spells, run after run.
//!
//! Version 1 had, as sections 3 and 4, pco of each run's byte length and zstd of the runs'
//! named MessagePack one after the other.
//!
//! Seqs and times are columns of their own so that a scan finds its rows without
//! decompressing the block.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kora_model::Run;

use crate::chunk::CodecError;
use crate::sections::{column, compress, decode_error, frame, unframe, unzstd, zstd_compress};

/// Runs' fields one after the other (read only).
const ROWS: u8 = 1;
const ROWS_SECTIONS: usize = 4;
/// Field by field (written).
const COLUMNS: u8 = 2;
const COLUMNS_SECTIONS: usize = 5;
const WHAT: &str = "run chunk";
/// zstd's level for the MessagePack columns: sealing happens inside a write transaction, once
/// every thousand runs or so. On a year's chunks (about 690 runs each) the whole encoding takes
/// 3.1 ms a chunk at level 9 for 57.6 bytes a run, 2.3 ms at level 3 (the library's default)
/// for 58.8.
const ZSTD_LEVEL: i32 = 9;
/// MessagePack's `nil`: the value of a field a run does not have.
const NIL: u8 = 0xc0;

/// In the `ts_ms` column: the run's `ts_ms` is the time the chunk indexes it under (section 2).
/// The byte `0xc1` is never a MessagePack value.
const INDEXED_TS: u8 = 0xc1;

/// The integer a MessagePack value is, when it is one (and nothing more).
fn int(value: &[u8]) -> Option<i64> {
    let mut rest = value;
    let v = rmp::decode::read_int(&mut rest).ok()?;
    rest.is_empty().then_some(v)
}

/// The float a MessagePack value is, when it is a 64-bit one.
fn float(value: &[u8]) -> Option<f64> {
    match value {
        [0xcb, bits @ ..] => Some(f64::from_be_bytes(bits.try_into().ok()?)),
        _ => None,
    }
}

/// The 32 bytes a MessagePack string of 64 lowercase hex digits spells (a SHA-256 as clients
/// send `prompt_hash`), when it is one.
fn hex32(value: &[u8]) -> Option<[u8; 32]> {
    let digits = value.strip_prefix(&[0xd9, 64])?;
    if digits.iter().any(|d| d.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(digits, &mut out).ok()?;
    Some(out)
}

/// How a column of a chunk is stored: as its runs' MessagePack values in the zstd block, or,
/// when every run of the chunk has the field and every value is of one kind, as numbers
/// (pco, which finds the few bits a measured number holds better than zstd does) or as the
/// bytes a hex string spells (half its length; zstd gets the digits to about that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    MessagePack = 0,
    Int = 1,
    Float = 2,
    Hex32 = 3,
}

impl Encoding {
    fn of(code: u8) -> Result<Encoding, CodecError> {
        [Self::MessagePack, Self::Int, Self::Float, Self::Hex32]
            .into_iter()
            .find(|e| *e as u8 == code)
            .ok_or_else(|| decode_error(format!("run column encoding {code}")))
    }

    /// The encoding for `cells` (every run's value of one field, `None` where it has none).
    fn choose(cells: &[Option<&[u8]>]) -> Encoding {
        let all = |f: &dyn Fn(&[u8]) -> bool| cells.iter().all(|c| c.is_some_and(f));
        if all(&|v| int(v).is_some()) {
            Encoding::Int
        } else if all(&|v| float(v).is_some()) {
            Encoding::Float
        } else if all(&|v| hex32(v).is_some()) {
            Encoding::Hex32
        } else {
            Encoding::MessagePack
        }
    }

    /// The column's bytes for section 5 (`None` for a column in section 4).
    fn typed(self, cells: &[Option<&[u8]>]) -> Result<Option<Vec<u8>>, CodecError> {
        let values = cells.iter().flatten();
        Ok(match self {
            Encoding::MessagePack => None,
            Encoding::Int => Some(compress(
                &values.filter_map(|v| int(v)).collect::<Vec<_>>(),
            )?),
            Encoding::Float => Some(compress(
                &values.filter_map(|v| float(v)).collect::<Vec<_>>(),
            )?),
            // A zstd frame of its own: random hashes take their 32 bytes (zstd stores what it
            // cannot compress as it is), hashes with a pattern less. In the block of the
            // MessagePack columns they would make those compress worse.
            Encoding::Hex32 => {
                let bytes: Vec<u8> = values.filter_map(|v| hex32(v)).flatten().collect();
                Some(zstd_compress(&bytes, ZSTD_LEVEL)?)
            }
        })
    }
}

/// The byte length of the MessagePack value at the start of `bytes`.
fn value_len(bytes: &[u8]) -> Result<usize, CodecError> {
    let mut rest = bytes;
    rmpv::decode::read_value_ref(&mut rest).map_err(decode_error)?;
    Ok(bytes.len() - rest.len())
}

/// Calls `f` with each field of one run's named MessagePack: `(name, value bytes)` in order.
fn each_field<'r>(row: &'r [u8], mut f: impl FnMut(&'r str, &'r [u8])) -> Result<(), CodecError> {
    let mut rest = row;
    let n = rmp::decode::read_map_len(&mut rest).map_err(decode_error)?;
    for _ in 0..n {
        let (name, after) = rmp::decode::read_str_from_slice(rest).map_err(decode_error)?;
        let len = value_len(after)?;
        f(name, &after[..len]);
        rest = &after[len..];
    }
    Ok(())
}

/// Encodes `runs` (`(seq, ts_ms, run)` in increasing seq order, not empty) as one sealed
/// chunk. `ts_ms` is the time the run is indexed under (its own, stamped when stored).
pub(crate) fn encode(runs: &[(u64, i64, Run)]) -> Result<Vec<u8>, CodecError> {
    if runs.is_empty() {
        return Err(decode_error("an empty run chunk"));
    }
    if runs.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(decode_error("run seqs must increase"));
    }
    // Every run's named MessagePack, one after the other in one buffer (the chunk is encoded
    // inside the write transaction: few allocations, not one a run).
    let mut rows = Vec::new();
    let mut ends = Vec::with_capacity(runs.len());
    for (_, _, run) in runs {
        rmp_serde::encode::write_named(&mut rows, run).map_err(decode_error)?;
        ends.push(rows.len());
    }
    let mut names: Vec<&str> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    // cells[field][run]: the value's bytes, or none.
    let mut cells: Vec<Vec<Option<&[u8]>>> = Vec::new();
    let mut start = 0;
    for (i, &end) in ends.iter().enumerate() {
        each_field(&rows[start..end], |name, value| {
            let c = *index.entry(name).or_insert_with(|| {
                names.push(name);
                cells.push(Vec::with_capacity(runs.len()));
                names.len() - 1
            });
            let column = &mut cells[c];
            column.resize(i, None);
            // The time the chunk indexes the run under is its own, almost always.
            let own_ts = name == "ts_ms" && int(value) == Some(runs[i].1);
            column.push(Some(if own_ts { &[INDEXED_TS] } else { value }));
        })?;
        start = end;
    }
    let mut heads: Vec<(&str, u8)> = Vec::with_capacity(names.len());
    let mut messagepack = Vec::with_capacity(rows.len());
    let mut typed = Vec::new();
    for (name, column) in names.iter().zip(&mut cells) {
        column.resize(runs.len(), None);
        let encoding = Encoding::choose(column);
        heads.push((name, encoding as u8));
        match encoding.typed(column)? {
            Some(bytes) => {
                let len = u32::try_from(bytes.len()).map_err(decode_error)?;
                typed.extend_from_slice(&len.to_le_bytes());
                typed.extend_from_slice(&bytes);
            }
            None => {
                for cell in column.iter() {
                    messagepack.extend_from_slice(cell.unwrap_or(&[NIL]));
                }
            }
        }
    }
    let seqs: Vec<u64> = runs.iter().map(|(s, _, _)| *s).collect();
    let ts: Vec<i64> = runs.iter().map(|(_, t, _)| *t).collect();
    let sections: [Vec<u8>; COLUMNS_SECTIONS] = [
        compress(&seqs)?,
        compress(&ts)?,
        rmp_serde::to_vec(&heads).map_err(decode_error)?,
        zstd_compress(&messagepack, ZSTD_LEVEL)?,
        typed,
    ];
    frame(COLUMNS, runs.len(), &sections, WHAT)
}

/// The last chunk decoded, with its bytes: a scan of the log pages through one run chunk
/// several times (a chunk spans ~9,000 log records of a busy machine, a page 1,000), and each
/// page would otherwise decompress the whole block again. Keyed by the chunk's own bytes, so
/// it answers only for exactly these bytes, whatever store they came from.
static LAST: Mutex<Option<(Vec<u8>, Arc<RunColumns>)>> = Mutex::new(None);

/// [`RunColumns::decode`], answered from the last chunk decoded when `bytes` are its bytes.
pub(crate) fn decode_cached(bytes: &[u8]) -> Result<Arc<RunColumns>, CodecError> {
    if let Ok(last) = LAST.lock()
        && let Some((b, c)) = last.as_ref()
        && b.as_slice() == bytes
    {
        return Ok(c.clone());
    }
    let decoded = Arc::new(RunColumns::decode(bytes)?);
    if let Ok(mut last) = LAST.lock() {
        *last = Some((bytes.to_vec(), decoded.clone()));
    }
    Ok(decoded)
}

/// A decoded chunk: seqs and times as columns, rows decoded only when taken.
pub(crate) struct RunColumns {
    /// The seqs, increasing.
    pub seqs: Vec<u64>,
    ts: Vec<i64>,
    /// Where each row starts in `rows` (one more than there are rows).
    offsets: Vec<usize>,
    rows: Vec<u8>,
}

impl RunColumns {
    /// Decodes a sealed chunk (either version). The CRC is checked first: damaged bytes are
    /// [`CodecError::Checksum`], never a wrong record.
    pub(crate) fn decode(bytes: &[u8]) -> Result<RunColumns, CodecError> {
        // The version decides how many sections to read; `unframe` checks the CRC before it.
        let (seqs, ts, (offsets, rows)) = if bytes.get(4) == Some(&ROWS) {
            let (len, [seqs, ts, lengths, block]) = unframe::<ROWS_SECTIONS>(bytes, ROWS, WHAT)?;
            let seqs = column(seqs, len, WHAT)?;
            let ts = column(ts, len, WHAT)?;
            (seqs, ts, rows_of_v1(lengths, block, len)?)
        } else {
            let (len, [seqs, ts, heads, block, typed]) =
                unframe::<COLUMNS_SECTIONS>(bytes, COLUMNS, WHAT)?;
            let seqs = column(seqs, len, WHAT)?;
            let ts: Vec<i64> = column(ts, len, WHAT)?;
            let rows = rows_of_columns(heads, block, typed, &ts)?;
            (seqs, ts, rows)
        };
        Ok(RunColumns {
            seqs,
            ts,
            offsets,
            rows,
        })
    }

    /// The run of row `i` (`i < seqs.len()`).
    pub(crate) fn record(&self, i: usize) -> Result<Run, CodecError> {
        rmp_serde::from_slice(&self.rows[self.offsets[i]..self.offsets[i + 1]])
            .map_err(|e| decode_error(format!("run {}: {e}", self.seqs[i])))
    }

    /// The time row `i` is indexed under.
    pub(crate) fn ts(&self, i: usize) -> i64 {
        self.ts[i]
    }
}

/// Version 1's rows: each run's named MessagePack, their lengths a pco column.
fn rows_of_v1(
    lengths: &[u8],
    block: &[u8],
    len: usize,
) -> Result<(Vec<usize>, Vec<u8>), CodecError> {
    let lengths: Vec<u32> = column(lengths, len, WHAT)?;
    let mut offsets = Vec::with_capacity(len + 1);
    let mut at = 0usize;
    offsets.push(at);
    for l in &lengths {
        at = at
            .checked_add(*l as usize)
            .ok_or_else(|| decode_error("run rows too long"))?;
        offsets.push(at);
    }
    let rows = zstd::bulk::decompress(block, at).map_err(decode_error)?;
    if rows.len() != at {
        return Err(decode_error(format!(
            "run rows hold {} bytes, their lengths say {at}",
            rows.len()
        )));
    }
    Ok((offsets, rows))
}

/// The bytes one chunk's columns may decompress to at most: a run's fields are bounded by the
/// service's limits (ids and names of 256 bytes, at most 64 stages), far under 256 KiB.
const MAX_COLUMN_BYTES_A_RUN: usize = 256 << 10;

/// One column of a version 2 chunk, decoded.
enum Column<'a> {
    /// Each run's value's bytes (`nil` where it has none, `[INDEXED_TS]` for its indexed time).
    MessagePack(Vec<&'a [u8]>),
    Int(Vec<i64>),
    Float(Vec<f64>),
    /// 32 bytes a run.
    Hex32(Vec<u8>),
}

impl Column<'_> {
    /// Writes row `i`'s value (present: see [`Column::present`]); `ts` is its indexed time.
    fn write(&self, name: &str, i: usize, ts: i64, out: &mut Vec<u8>) -> Result<(), CodecError> {
        match self {
            Column::MessagePack(cells) => match cells[i] {
                [INDEXED_TS] if name == "ts_ms" => {
                    rmp::encode::write_sint(out, ts).map_err(decode_error)?;
                }
                [INDEXED_TS] => {
                    return Err(decode_error(format!(
                        "run field {name:?} holds the byte 0xc1"
                    )));
                }
                value => out.extend_from_slice(value),
            },
            Column::Int(v) => {
                rmp::encode::write_sint(out, v[i]).map_err(decode_error)?;
            }
            Column::Float(v) => rmp::encode::write_f64(out, v[i]).map_err(decode_error)?,
            Column::Hex32(bytes) => {
                rmp::encode::write_str(out, &hex::encode(&bytes[i * 32..(i + 1) * 32]))
                    .map_err(decode_error)?;
            }
        }
        Ok(())
    }

    fn present(&self, i: usize) -> bool {
        !matches!(self, Column::MessagePack(cells) if cells[i] == [NIL])
    }
}

/// Version 2's columns joined back into each run's named MessagePack.
fn rows_of_columns(
    heads: &[u8],
    block: &[u8],
    typed: &[u8],
    ts: &[i64],
) -> Result<(Vec<usize>, Vec<u8>), CodecError> {
    let len = ts.len();
    let heads: Vec<(String, u8)> = rmp_serde::from_slice(heads).map_err(decode_error)?;
    let messagepack = unzstd(block, len.saturating_mul(MAX_COLUMN_BYTES_A_RUN), WHAT)?;
    let (mut at, mut typed) = (0usize, typed);
    let mut columns = Vec::with_capacity(heads.len());
    for (name, code) in &heads {
        let encoding = Encoding::of(*code)?;
        if encoding == Encoding::MessagePack {
            let mut cells = Vec::with_capacity(len);
            for _ in 0..len {
                let rest = messagepack
                    .get(at..)
                    .ok_or_else(|| decode_error("run columns cut short"))?;
                let n = if rest.first() == Some(&INDEXED_TS) {
                    1
                } else {
                    value_len(rest)?
                };
                cells.push(&messagepack[at..at + n]);
                at += n;
            }
            columns.push(Column::MessagePack(cells));
            continue;
        }
        let (n, rest) = typed
            .split_first_chunk::<4>()
            .ok_or_else(|| decode_error(format!("run column {name:?} cut short")))?;
        let n = u32::from_le_bytes(*n) as usize;
        let (bytes, rest) = rest
            .split_at_checked(n)
            .ok_or_else(|| decode_error(format!("run column {name:?} cut short")))?;
        typed = rest;
        columns.push(match encoding {
            Encoding::Int => Column::Int(column(bytes, len, WHAT)?),
            Encoding::Float => Column::Float(column(bytes, len, WHAT)?),
            _ => {
                let hashes = unzstd(bytes, len * 32, WHAT)?;
                if hashes.len() != len * 32 {
                    return Err(decode_error(format!("run column {name:?} cut short")));
                }
                Column::Hex32(hashes)
            }
        });
    }
    if at != messagepack.len() || !typed.is_empty() {
        return Err(decode_error(
            "run columns hold more bytes than their values",
        ));
    }
    let mut rows = Vec::with_capacity(messagepack.len() + len * heads.len() * 24);
    let mut offsets = Vec::with_capacity(len + 1);
    offsets.push(0);
    for (i, &indexed) in ts.iter().enumerate() {
        let present = columns.iter().filter(|c| c.present(i)).count();
        let n = u32::try_from(present).map_err(decode_error)?;
        rmp::encode::write_map_len(&mut rows, n).map_err(decode_error)?;
        for ((name, _), c) in heads.iter().zip(&columns) {
            if c.present(i) {
                rmp::encode::write_str(&mut rows, name).map_err(decode_error)?;
                c.write(name, i, indexed, &mut rows)?;
            }
        }
        offsets.push(rows.len());
    }
    Ok((offsets, rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::with_crc;
    use kora_model::{Stage, StageKind, Substrate};
    use proptest::prelude::*;

    fn run(i: u64) -> Run {
        Run {
            id: Some(format!("kc-{i:08}")),
            ts_ms: Some(1_700_000_000_000 + i as i64 * 43_000),
            run_id: format!("run-{i}"),
            session_id: format!("s-{}", i / 40),
            model_id: ["llama-3.1-8b-q4", "qwen2.5-7b", "phi-3-mini"][(i % 3) as usize].into(),
            substrate: Substrate::Local,
            prompt_hash: format!("{:064x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            context_tokens: 1_000 + i % 700,
            tokens_in: Some(900 + i % 600),
            tokens_out: Some(200 + i % 90),
            total_tokens: Some(1_100 + i % 600 + i % 90),
            model_latency_ms: 1_234.5 + (i % 97) as f64 * 3.25,
            total_latency_ms: 1_400.25 + (i % 97) as f64 * 3.5,
            deterministic_stage_ms: 40.0 + (i % 11) as f64,
            model_stage_ms: 1_234.5,
            validation_retry_count: u32::from(i % 9 == 0),
            budget_breach_count: 0,
            queue_wait_ms: (i % 2 == 0).then_some(12.5),
            prompt_tokens_sent: None,
            stages: Some(vec![
                Stage {
                    name: "retrieve".into(),
                    kind: StageKind::Deterministic,
                    ms: 12.0 + (i % 5) as f64,
                },
                Stage {
                    name: "generate".into(),
                    kind: StageKind::Model,
                    ms: 1_234.5,
                },
            ]),
        }
    }

    fn decode_all(bytes: &[u8]) -> Vec<(u64, i64, Run)> {
        let c = RunColumns::decode(bytes).unwrap();
        (0..c.seqs.len())
            .map(|i| (c.seqs[i], c.ts(i), c.record(i).unwrap()))
            .collect()
    }

    #[test]
    fn a_thousand_runs_take_a_small_part_of_their_log_rows() {
        let runs: Vec<(u64, i64, Run)> = (0..1024u64)
            .map(|i| {
                let r = run(i);
                (10 + i * 7, r.ts_ms.unwrap(), r)
            })
            .collect();
        let rows: usize = runs
            .iter()
            .map(|(_, _, r)| rmp_serde::to_vec_named(r).unwrap().len())
            .sum();
        let bytes = encode(&runs).unwrap();
        assert_eq!(decode_all(&bytes), runs);
        // The hashes alone are 32 bytes of entropy a run; everything else nearly vanishes.
        let per_run = bytes.len() as f64 / runs.len() as f64;
        let per_row = rows as f64 / runs.len() as f64;
        assert!(
            per_run < per_row / 4.0,
            "{per_run} bytes a run, rows {per_row}"
        );
    }

    /// Version 1's encoder, as it was: each run's named MessagePack, one after the other.
    fn encode_v1(runs: &[(u64, i64, Run)]) -> Vec<u8> {
        let mut rows = Vec::new();
        let mut lengths = Vec::new();
        for (_, _, run) in runs {
            let before = rows.len();
            rmp_serde::encode::write_named(&mut rows, run).unwrap();
            lengths.push(u32::try_from(rows.len() - before).unwrap());
        }
        let seqs: Vec<u64> = runs.iter().map(|(s, _, _)| *s).collect();
        let ts: Vec<i64> = runs.iter().map(|(_, t, _)| *t).collect();
        let sections = [
            compress(&seqs).unwrap(),
            compress(&ts).unwrap(),
            compress(&lengths).unwrap(),
            zstd::bulk::compress(&rows, 3).unwrap(),
        ];
        frame(ROWS, runs.len(), &sections, WHAT).unwrap()
    }

    /// Chunks sealed before the columns are read as they were, and the columns take less.
    #[test]
    fn a_chunk_of_version_1_reads_the_same_runs_and_the_columns_take_less() {
        let runs: Vec<(u64, i64, Run)> = (0..700u64)
            .map(|i| {
                let r = run(i);
                // Most runs are indexed under their own time; some (stamped otherwise) not.
                let ts = if i % 50 == 0 { 17 } else { r.ts_ms.unwrap() };
                (10 + i * 7, ts, r)
            })
            .collect();
        let v1 = encode_v1(&runs);
        let v2 = encode(&runs).unwrap();
        assert_eq!(decode_all(&v1), runs);
        assert_eq!(decode_all(&v2), runs);
        assert!(
            v2.len() * 10 < v1.len() * 9,
            "columns {} bytes, rows {}",
            v2.len(),
            v1.len()
        );
    }

    /// A column is stored as numbers or bytes only when every run's value is one: a hash in
    /// capitals, an integer beyond i64 or a field some runs lack keeps the column MessagePack,
    /// and every run still reads back exactly.
    #[test]
    fn one_run_unlike_the_others_keeps_its_column_messagepack() {
        let base: Vec<(u64, i64, Run)> = (0..64u64)
            .map(|i| {
                let r = run(i);
                (1 + i, r.ts_ms.unwrap(), r)
            })
            .collect();
        let typed = encode(&base).unwrap();
        let mut odd = base.clone();
        odd[5].2.prompt_hash = odd[5].2.prompt_hash.to_uppercase();
        odd[6].2.context_tokens = u64::MAX;
        odd[7].2.tokens_out = None;
        let bytes = encode(&odd).unwrap();
        assert_eq!(decode_all(&bytes), odd);
        assert_eq!(decode_all(&typed), base);
        let encodings = |bytes: &[u8]| -> Vec<(String, u8)> {
            let (_, [_, _, heads, _, _]) =
                unframe::<COLUMNS_SECTIONS>(bytes, COLUMNS, WHAT).unwrap();
            rmp_serde::from_slice::<Vec<(String, u8)>>(heads)
                .unwrap()
                .into_iter()
                .filter(|(name, _)| {
                    ["prompt_hash", "context_tokens", "tokens_out"].contains(&name.as_str())
                })
                .collect()
        };
        let named = |h: u8, c: u8, t: u8| {
            vec![
                ("prompt_hash".to_owned(), h),
                ("context_tokens".to_owned(), c),
                ("tokens_out".to_owned(), t),
            ]
        };
        assert_eq!(encodings(&typed), named(3, 1, 1));
        assert_eq!(encodings(&bytes), named(0, 0, 0));
    }

    #[test]
    fn a_damaged_chunk_is_a_checksum_error_and_a_foreign_version_is_named() {
        let runs = vec![(7, 5, run(0))];
        let mut bytes = encode(&runs).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        assert_eq!(RunColumns::decode(&bytes).err(), Some(CodecError::Checksum));
        let mut other = encode(&runs).unwrap()[4..].to_vec();
        other[0] = 9;
        let e = RunColumns::decode(&with_crc(other)).err().unwrap();
        assert!(
            matches!(&e, CodecError::Decode(m) if m.contains("version 9")),
            "{e:?}"
        );
        assert!(encode(&[]).is_err());
        assert!(encode(&[(2, 0, run(0)), (2, 0, run(1))]).is_err());
    }

    proptest! {
        #[test]
        fn any_runs_decode_to_themselves(
            rows in proptest::collection::vec(
                (1u64..1000, any::<i64>(), any::<u64>(), proptest::option::of(any::<u64>()),
                 any::<f64>(), proptest::option::of(any::<f64>()), any::<bool>(), 0usize..4),
                1..100)
        ) {
            let mut seq = 0u64;
            let runs: Vec<(u64, i64, Run)> = rows
                .into_iter()
                .enumerate()
                .map(|(i, (step, ts, tokens, tokens_in, latency, wait, cloud, stages))| {
                    seq += step;
                    let mut r = run(i as u64);
                    r.ts_ms = (i % 3 != 0).then_some(ts);
                    r.id = (i % 2 == 0).then(|| format!("id-{i}"));
                    r.context_tokens = tokens;
                    r.tokens_in = tokens_in;
                    r.model_latency_ms = latency;
                    r.queue_wait_ms = wait;
                    r.substrate = if cloud { Substrate::Cloud } else { Substrate::Local };
                    r.stages = (stages > 0).then(|| {
                        (0..stages)
                            .map(|k| Stage { name: format!("s{k}"), kind: StageKind::Model, ms: latency })
                            .collect()
                    });
                    (seq, ts, r)
                })
                .collect();
            let decoded = decode_all(&encode(&runs).unwrap());
            prop_assert_eq!(decoded.len(), runs.len());
            // Bit-exact, NaN included: compare the MessagePack of each.
            for ((s1, t1, a), (s2, t2, b)) in decoded.iter().zip(&runs) {
                prop_assert_eq!((s1, t1), (s2, t2));
                prop_assert_eq!(rmp_serde::to_vec_named(a).unwrap(), rmp_serde::to_vec_named(b).unwrap());
            }
        }
    }
}
