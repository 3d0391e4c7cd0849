//! The encoding of a sealed window chunk: many `window` log records, column by column.
//!
//! A window record is a few numbers under three short strings, and a machine closes ten of
//! them a minute; kept as a log row each (named MessagePack, plus a row in the kind and time
//! indexes) one took about 415 bytes on disk, most of a year's file. Sealed, the same records
//! take a few bytes each: the strings become indexes into a small dictionary and every number
//! column is compressed with pco, which finds the repetition (constant counts and window
//! lengths, start times a minute apart, totals that never change). Every value is kept exactly
//! (pco is lossless), so a sealed record decodes to the very record that was appended.
//!
//! Layout (after the CRC-32 of the rest): version `2` (u8), record count (u32 LE), then the
//! byte lengths of the 13 sections (u32 LE each), then the sections:
//! 1. the dictionary: zstd of the MessagePack of `[(window_kind, metric, scope)]`;
//! 2. pco of the seqs (strictly increasing);
//! 3. pco of `ts_ms - end_ms` (0 for a time window, closed at its end);
//! 4. pco of each record's dictionary index (u32);
//! 5. pco of `start_ms`;
//! 6. pco of `end_ms - start_ms`;
//! 7. pco of `last_seq - first_seq` and 8. pco of `last_seq`, each seq plus one (0 when
//!    absent) before the difference;
//! 9. pco of `count`;
//! 10. to 13. pco of `min`, `max`, `p50` and `p95`.
//!
//! All differences wrap (any i64 and u64 round-trip). Version 1, still read, had the
//! dictionary's MessagePack uncompressed, `ts_ms` itself as section 3 and `first_seq` plus one
//! as section 7: on a year's store 1.2 bytes a window more (6.5 against 5.3).

use std::collections::HashMap;

use kora_model::WindowRecord;

use crate::chunk::CodecError;
use crate::sections::{column, compress, decode_error, frame, unframe, unzstd, zstd_compress};

/// The layout written.
const VERSION: u8 = 2;
/// The first layout, still read.
const VERSION_1: u8 = 1;
const SECTIONS: usize = 13;
const WHAT: &str = "window chunk";
/// zstd's level for the dictionary (a few hundred bytes).
const ZSTD_LEVEL: i32 = 9;
/// The most bytes a dictionary may decompress to: names are at most 256 bytes, and a chunk
/// names far fewer than 2,000 windows' series.
const MAX_DICTIONARY_BYTES: usize = 1 << 20;

pub(crate) type Key = (String, String, String);

fn optional_seq(seq: Option<u64>) -> Result<u64, CodecError> {
    match seq {
        None => Ok(0),
        Some(s) => s
            .checked_add(1)
            .ok_or_else(|| decode_error("a seq of u64::MAX cannot be sealed")),
    }
}

/// Encodes `windows` (`(seq, record)` in increasing seq order, not empty) as one sealed chunk.
pub(crate) fn encode(windows: &[(u64, WindowRecord)]) -> Result<Vec<u8>, CodecError> {
    encode_as(windows, VERSION)
}

/// [`encode`] in the layout of `version` (1 only for the tests: chunks stores already hold).
fn encode_as(windows: &[(u64, WindowRecord)], version: u8) -> Result<Vec<u8>, CodecError> {
    let v1 = version == VERSION_1;
    if windows.is_empty() {
        return Err(decode_error("an empty window chunk"));
    }
    if windows.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(decode_error("window seqs must increase"));
    }
    let mut dictionary: Vec<Key> = Vec::new();
    let mut index_of: HashMap<Key, u32> = HashMap::new();
    let mut keys = Vec::with_capacity(windows.len());
    for (_, w) in windows {
        let key = (w.window_kind.clone(), w.metric.clone(), w.scope.clone());
        let next = u32::try_from(dictionary.len()).map_err(decode_error)?;
        let index = *index_of.entry(key.clone()).or_insert_with(|| {
            dictionary.push(key);
            next
        });
        keys.push(index);
    }
    let column_u64 = |f: &dyn Fn(&WindowRecord) -> Result<u64, CodecError>| {
        windows
            .iter()
            .map(|(_, w)| f(w))
            .collect::<Result<Vec<u64>, CodecError>>()
    };
    let column_i64 = |f: &dyn Fn(&WindowRecord) -> i64| -> Vec<i64> {
        windows.iter().map(|(_, w)| f(w)).collect()
    };
    let column_f64 = |f: &dyn Fn(&WindowRecord) -> f64| -> Vec<f64> {
        windows.iter().map(|(_, w)| f(w)).collect()
    };
    let seqs: Vec<u64> = windows.iter().map(|(s, _)| *s).collect();
    let names = rmp_serde::to_vec(&dictionary).map_err(decode_error)?;
    let sections: [Vec<u8>; SECTIONS] = [
        if v1 {
            names
        } else {
            zstd_compress(&names, ZSTD_LEVEL)?
        },
        compress(&seqs)?,
        compress(&column_i64(&|w| {
            if v1 {
                w.ts_ms
            } else {
                w.ts_ms.wrapping_sub(w.end_ms)
            }
        }))?,
        compress(&keys)?,
        compress(&column_i64(&|w| w.start_ms))?,
        compress(&column_i64(&|w| w.end_ms.wrapping_sub(w.start_ms)))?,
        compress(&column_u64(&|w| {
            let first = optional_seq(w.first_seq)?;
            Ok(if v1 {
                first
            } else {
                optional_seq(w.last_seq)?.wrapping_sub(first)
            })
        })?)?,
        compress(&column_u64(&|w| optional_seq(w.last_seq))?)?,
        compress(&column_u64(&|w| Ok(w.count))?)?,
        compress(&column_f64(&|w| w.min))?,
        compress(&column_f64(&|w| w.max))?,
        compress(&column_f64(&|w| w.p50))?,
        compress(&column_f64(&|w| w.p95))?,
    ];
    frame(version, windows.len(), &sections, WHAT)
}

/// A decoded chunk, column by column: records are built only for the rows a reader takes.
pub(crate) struct Columns {
    dictionary: Vec<Key>,
    /// The seqs, increasing.
    pub seqs: Vec<u64>,
    ts: Vec<i64>,
    keys: Vec<u32>,
    starts: Vec<i64>,
    lengths: Vec<i64>,
    first: Vec<u64>,
    last: Vec<u64>,
    counts: Vec<u64>,
    mins: Vec<f64>,
    maxs: Vec<f64>,
    p50s: Vec<f64>,
    p95s: Vec<f64>,
}

impl Columns {
    /// The `(window_kind, metric, scope)` names a chunk holds, read without decompressing a
    /// column (the CRC is checked).
    pub(crate) fn names(bytes: &[u8]) -> Result<Vec<Key>, CodecError> {
        let (version, _, sections) = sections(bytes)?;
        dictionary(version, sections[0])
    }

    /// Decodes a sealed chunk. The CRC is checked first: damaged bytes are
    /// [`CodecError::Checksum`], never a wrong record.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Columns, CodecError> {
        let (
            version,
            len,
            [
                names,
                seqs,
                ts,
                keys,
                starts,
                lengths,
                first,
                last,
                counts,
                mins,
                maxs,
                p50s,
                p95s,
            ],
        ) = sections(bytes)?;
        let mut columns = Columns {
            dictionary: dictionary(version, names)?,
            seqs: column(seqs, len, WHAT)?,
            ts: column(ts, len, WHAT)?,
            keys: column(keys, len, WHAT)?,
            starts: column(starts, len, WHAT)?,
            lengths: column(lengths, len, WHAT)?,
            first: column(first, len, WHAT)?,
            last: column(last, len, WHAT)?,
            counts: column(counts, len, WHAT)?,
            mins: column(mins, len, WHAT)?,
            maxs: column(maxs, len, WHAT)?,
            p50s: column(p50s, len, WHAT)?,
            p95s: column(p95s, len, WHAT)?,
        };
        if version == VERSION {
            let c = &mut columns;
            for i in 0..len {
                let end = c.starts[i].wrapping_add(c.lengths[i]);
                c.ts[i] = c.ts[i].wrapping_add(end);
                c.first[i] = c.last[i].wrapping_sub(c.first[i]);
            }
        }
        if let Some(&k) = columns
            .keys
            .iter()
            .find(|&&k| k as usize >= columns.dictionary.len())
        {
            return Err(decode_error(format!("dictionary index {k} out of range")));
        }
        Ok(columns)
    }

    /// The record of row `i` (`i < seqs.len()`).
    pub(crate) fn record(&self, i: usize) -> WindowRecord {
        let (window_kind, metric, scope) = self.dictionary[self.keys[i] as usize].clone();
        let optional = |v: u64| v.checked_sub(1);
        WindowRecord {
            ts_ms: self.ts[i],
            window_kind,
            metric,
            scope,
            start_ms: self.starts[i],
            end_ms: self.starts[i].wrapping_add(self.lengths[i]),
            first_seq: optional(self.first[i]),
            last_seq: optional(self.last[i]),
            count: self.counts[i],
            min: self.mins[i],
            max: self.maxs[i],
            p50: self.p50s[i],
            p95: self.p95s[i],
        }
    }

    /// The dictionary index of row `i`'s names (see [`Columns::names`]).
    pub(crate) fn key(&self, i: usize) -> u32 {
        self.keys[i]
    }

    /// `ts_ms` of row `i`.
    pub(crate) fn ts(&self, i: usize) -> i64 {
        self.ts[i]
    }
}

/// The version, row count and sections of a chunk of either version (the CRC checked).
fn sections(bytes: &[u8]) -> Result<(u8, usize, [&[u8]; SECTIONS]), CodecError> {
    let version = if bytes.get(4) == Some(&VERSION_1) {
        VERSION_1
    } else {
        VERSION
    };
    let (len, sections) = unframe::<SECTIONS>(bytes, version, WHAT)?;
    Ok((version, len, sections))
}

/// The dictionary of a chunk of `version`.
fn dictionary(version: u8, section: &[u8]) -> Result<Vec<Key>, CodecError> {
    if version == VERSION_1 {
        return rmp_serde::from_slice(section).map_err(decode_error);
    }
    let names = unzstd(section, MAX_DICTIONARY_BYTES, WHAT)?;
    rmp_serde::from_slice(&names).map_err(decode_error)
}

/// Decodes a sealed chunk back to its `(seq, record)` pairs, in seq order.
#[cfg(test)]
pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<(u64, WindowRecord)>, CodecError> {
    let c = Columns::decode(bytes)?;
    Ok((0..c.seqs.len())
        .map(|i| (c.seqs[i], c.record(i)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::with_crc;
    use proptest::prelude::*;

    fn window(i: u64, metric: &str) -> WindowRecord {
        WindowRecord {
            ts_ms: 1_700_000_000_000 + i as i64 * 60_000 + 5_000,
            window_kind: "time".into(),
            metric: metric.into(),
            scope: "host".into(),
            start_ms: 1_700_000_000_000 + i as i64 * 60_000,
            end_ms: 1_700_000_060_000 + i as i64 * 60_000,
            first_seq: None,
            last_seq: None,
            count: 12,
            min: 1.5,
            max: 99.25 + i as f64,
            p50: 50.0,
            p95: f64::MIN_POSITIVE,
        }
    }

    #[test]
    fn a_day_of_ten_series_takes_a_few_bytes_a_window() {
        let metrics = [
            "gpu_vram_total_mb",
            "gpu_vram_free_mb",
            "cpu_cores",
            "cpu_load_p95",
            "cpu_load_pct",
            "ram_free_mb",
            "ram_total_mb",
            "active_sessions",
            "active_generations",
            "queue_wait_ms",
        ];
        let mut windows = Vec::new();
        let mut seq = 1;
        for minute in 0..410u64 {
            seq += 120; // the minute's samples take seqs too
            for m in metrics {
                windows.push((seq, window(minute, m)));
                seq += 1;
            }
        }
        let bytes = encode(&windows).unwrap();
        assert_eq!(decode(&bytes).unwrap(), windows);
        let per_window = bytes.len() as f64 / windows.len() as f64;
        assert!(per_window < 20.0, "{per_window} bytes a window");
    }

    /// Chunks sealed in the first layout read the same, and take more bytes.
    #[test]
    fn a_chunk_of_version_1_reads_the_same_windows_and_takes_more_bytes() {
        let mut windows = Vec::new();
        let mut seq = 1;
        for minute in 0..400u64 {
            seq += 120;
            for m in [
                "gpu_vram_free_mb",
                "active_sessions",
                "queue_wait_ms",
                "cpu_cores",
            ] {
                let mut w = window(minute, m);
                w.ts_ms = w.end_ms;
                w.first_seq = Some(seq - 118);
                w.last_seq = Some(seq - 2);
                windows.push((seq, w));
                seq += 1;
            }
        }
        let v1 = encode_as(&windows, VERSION_1).unwrap();
        let v2 = encode(&windows).unwrap();
        assert_eq!((v1[4], v2[4]), (VERSION_1, VERSION));
        assert_eq!(decode(&v1).unwrap(), windows);
        assert_eq!(decode(&v2).unwrap(), windows);
        assert_eq!(Columns::names(&v1).unwrap(), Columns::names(&v2).unwrap());
        assert!(
            v2.len() < v1.len(),
            "{} bytes, version 1 {}",
            v2.len(),
            v1.len()
        );
    }

    #[test]
    fn a_damaged_chunk_is_a_checksum_error_and_a_foreign_version_is_named() {
        let windows = vec![(7, window(0, "cpu_load_pct"))];
        let mut bytes = encode(&windows).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        assert_eq!(decode(&bytes), Err(CodecError::Checksum));
        let mut other = encode(&windows).unwrap()[4..].to_vec();
        other[0] = 9;
        let e = decode(&with_crc(other)).unwrap_err();
        assert!(
            matches!(&e, CodecError::Decode(m) if m.contains("version 9")),
            "{e:?}"
        );
        assert!(encode(&[]).is_err());
        assert!(encode(&[(2, window(0, "a")), (2, window(1, "a"))]).is_err());
    }

    proptest! {
        #[test]
        fn any_windows_decode_to_themselves(
            rows in proptest::collection::vec(
                (1u64..1000, any::<i64>(), 0usize..3, any::<i64>(), any::<i64>(),
                 proptest::option::of(0u64..u64::MAX), proptest::option::of(any::<u64>().prop_map(|v| v / 2)),
                 any::<u64>(), any::<f64>(), any::<f64>(), any::<f64>(), any::<f64>()),
                1..200)
        ) {
            let mut seq = 0u64;
            let windows: Vec<(u64, WindowRecord)> = rows
                .into_iter()
                .map(|(step, ts, k, start, end, first, last, count, min, max, p50, p95)| {
                    seq += step;
                    let names = ["a", "queue_wait_ms/model=x", "host"];
                    (seq, WindowRecord {
                        ts_ms: ts,
                        window_kind: names[k].into(),
                        metric: names[(k + 1) % 3].into(),
                        scope: names[(k + 2) % 3].into(),
                        start_ms: start,
                        end_ms: end,
                        first_seq: first,
                        last_seq: last,
                        count,
                        min,
                        max,
                        p50,
                        p95,
                    })
                })
                .collect();
            let decoded = decode(&encode(&windows).unwrap()).unwrap();
            // Version 1 read back is bit for bit what was written (NaN included).
            let v1 = decode(&encode_as(&windows, VERSION_1).unwrap()).unwrap();
            prop_assert_eq!(encode(&v1).unwrap(), encode(&windows).unwrap());
            // Bit-exact, NaN included.
            prop_assert_eq!(decoded.len(), windows.len());
            for ((s1, a), (s2, b)) in decoded.iter().zip(&windows) {
                prop_assert_eq!(s1, s2);
                prop_assert_eq!(
                    (&a.window_kind, &a.metric, &a.scope, a.ts_ms, a.start_ms, a.end_ms, a.first_seq, a.last_seq, a.count),
                    (&b.window_kind, &b.metric, &b.scope, b.ts_ms, b.start_ms, b.end_ms, b.first_seq, b.last_seq, b.count)
                );
                for (x, y) in [(a.min, b.min), (a.max, b.max), (a.p50, b.p50), (a.p95, b.p95)] {
                    prop_assert_eq!(x.to_bits(), y.to_bits());
                }
            }
        }
    }
}
