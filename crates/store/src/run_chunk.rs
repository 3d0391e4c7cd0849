//! The encoding of a sealed run chunk: many `run` log records in one compressed block.
//!
//! A run is most of a busy user's log: a handful of ids and hashes, a dozen numbers and up to
//! a few dozen named stages. Kept as a log row each (named MessagePack, plus a row in the kind
//! and time indexes) one took about 800 bytes on disk. Sealed, a thousand runs share one zstd
//! frame: the field and stage names, the model and session ids, the repeated stage layout and
//! the hex digits of the hashes all compress to a fraction of a byte, and what is left is the
//! entropy of the ids, hashes and measured latencies themselves.
//!
//! Every run is kept exactly: a row is the run's own named MessagePack, the same bytes a log
//! row holds after its kind prefix, so a sealed run decodes to the very record that was
//! appended, and a field added to `Run` later is sealed with no change here.
//!
//! Layout (after the CRC-32 of the rest): version `1` (u8), run count (u32 LE), then the byte
//! lengths of the 4 sections (u32 LE each), then the sections:
//! 1. pco of the seqs (strictly increasing);
//! 2. pco of each run's `ts_ms` (the time the log's time index held);
//! 3. pco of each row's byte length (u32);
//! 4. zstd of the rows, one after the other.
//!
//! Seqs and times are columns of their own so that a scan finds its rows without
//! decompressing the block, and the block is decoded row by row, only for the rows taken.

use std::sync::{Arc, Mutex};

use kora_model::Run;

use crate::chunk::CodecError;
use crate::sections::{column, compress, decode_error, frame, unframe};

const VERSION: u8 = 1;
const SECTIONS: usize = 4;
const WHAT: &str = "run chunk";
/// zstd's level for the rows: sealing happens inside a write transaction, once every
/// thousand runs; level 3 (the library's default) takes a few milliseconds for a chunk.
const ZSTD_LEVEL: i32 = 3;

/// Encodes `runs` (`(seq, ts_ms, run)` in increasing seq order, not empty) as one sealed
/// chunk. `ts_ms` is the time the run is indexed under (its own, stamped when stored).
pub(crate) fn encode(runs: &[(u64, i64, Run)]) -> Result<Vec<u8>, CodecError> {
    if runs.is_empty() {
        return Err(decode_error("an empty run chunk"));
    }
    if runs.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(decode_error("run seqs must increase"));
    }
    let mut rows = Vec::new();
    let mut lengths = Vec::with_capacity(runs.len());
    for (_, _, run) in runs {
        let before = rows.len();
        rmp_serde::encode::write_named(&mut rows, run).map_err(decode_error)?;
        lengths.push(u32::try_from(rows.len() - before).map_err(decode_error)?);
    }
    let seqs: Vec<u64> = runs.iter().map(|(s, _, _)| *s).collect();
    let ts: Vec<i64> = runs.iter().map(|(_, t, _)| *t).collect();
    let sections: [Vec<u8>; SECTIONS] = [
        compress(&seqs)?,
        compress(&ts)?,
        compress(&lengths)?,
        zstd::bulk::compress(&rows, ZSTD_LEVEL).map_err(decode_error)?,
    ];
    frame(VERSION, runs.len(), &sections, WHAT)
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
    /// Decodes a sealed chunk. The CRC is checked first: damaged bytes are
    /// [`CodecError::Checksum`], never a wrong record.
    pub(crate) fn decode(bytes: &[u8]) -> Result<RunColumns, CodecError> {
        let (len, [seqs, ts, lengths, rows]) = unframe::<SECTIONS>(bytes, VERSION, WHAT)?;
        let seqs = column(seqs, len, WHAT)?;
        let ts = column(ts, len, WHAT)?;
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
        let rows = zstd::bulk::decompress(rows, at).map_err(decode_error)?;
        if rows.len() != at {
            return Err(decode_error(format!(
                "run rows hold {} bytes, their lengths say {at}",
                rows.len()
            )));
        }
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
