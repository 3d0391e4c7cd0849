//! The row of the per-model run index: a fixed-width projection of each run's numbers, so
//! that "the last N runs of this model" reads small rows instead of decoding whole log records
//! of every model. A model's newest rows are kept one a key in `run_head`, keyed `(model
//! number, seq)`; older ones are sealed in columns (`run_index.rs`).
//!
//! Row (after a CRC-32 of the rest, little-endian): `ts_ms` i64, `model_latency_ms`,
//! `total_latency_ms`, `deterministic_stage_ms`, `model_stage_ms` (f64 each),
//! `validation_retry_count`, `budget_breach_count` (u32 each), `context_tokens`, `tokens_in`,
//! `tokens_out` (u64 each; the last two `u64::MAX` when absent): 76 bytes.

use kora_model::Run;

use crate::chunk::CodecError;

pub(crate) const ROW_BYTES: usize = 4 + 8 * 5 + 4 * 2 + 8 * 3;

/// The numbers of one logged run, as the run index holds them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunRow {
    pub seq: u64,
    pub ts_ms: i64,
    pub model_latency_ms: f64,
    pub total_latency_ms: f64,
    pub deterministic_stage_ms: f64,
    pub model_stage_ms: f64,
    pub validation_retry_count: u32,
    pub budget_breach_count: u32,
    pub context_tokens: u64,
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
}

/// Encodes the row of a run stamped with `ts_ms`.
pub(crate) fn encode(run: &Run, ts_ms: i64) -> [u8; ROW_BYTES] {
    let mut out = [0u8; ROW_BYTES];
    let mut at = 4;
    let mut put = |bytes: &[u8]| {
        out[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(&ts_ms.to_le_bytes());
    for v in [
        run.model_latency_ms,
        run.total_latency_ms,
        run.deterministic_stage_ms,
        run.model_stage_ms,
    ] {
        put(&v.to_le_bytes());
    }
    put(&run.validation_retry_count.to_le_bytes());
    put(&run.budget_breach_count.to_le_bytes());
    for v in [
        run.context_tokens,
        run.tokens_in.unwrap_or(u64::MAX),
        run.tokens_out.unwrap_or(u64::MAX),
    ] {
        put(&v.to_le_bytes());
    }
    let crc = crc32fast::hash(&out[4..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes the row stored under `seq`.
pub(crate) fn decode(seq: u64, bytes: &[u8]) -> Result<RunRow, CodecError> {
    if bytes.len() != ROW_BYTES {
        return Err(CodecError::Checksum);
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        w
    };
    let half = |at: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&bytes[at..at + 4]);
        u32::from_le_bytes(w)
    };
    if half(0) != crc32fast::hash(&bytes[4..]) {
        return Err(CodecError::Checksum);
    }
    let f = |at| f64::from_le_bytes(word(at));
    let u = |at| u64::from_le_bytes(word(at));
    let opt = |v: u64| (v != u64::MAX).then_some(v);
    Ok(RunRow {
        seq,
        ts_ms: i64::from_le_bytes(word(4)),
        model_latency_ms: f(12),
        total_latency_ms: f(20),
        deterministic_stage_ms: f(28),
        model_stage_ms: f(36),
        validation_retry_count: half(44),
        budget_breach_count: half(48),
        context_tokens: u(52),
        tokens_in: opt(u(60)),
        tokens_out: opt(u(68)),
    })
}
