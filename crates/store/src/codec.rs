//! The CRC-32 + MessagePack encoding of stored values, the content digest of client items,
//! and the mapping of chunk codec failures to the store's errors.

use kora_model::{LogEntry, Record, RecordKind};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::chunk::CodecError;
use crate::error::{ReadError, WriteError};

pub(crate) fn codec_read_error(table: &'static str, key: String, e: CodecError) -> ReadError {
    match e {
        CodecError::Checksum => ReadError::Corrupt { table, key },
        CodecError::Decode(message) => ReadError::Decode {
            table,
            key,
            message,
        },
    }
}

pub(crate) fn codec_write_error(what: &str, e: CodecError) -> WriteError {
    WriteError::Storage(format!("{what}: {e:?}"))
}

pub(crate) fn get_entry(
    log: &redb::ReadOnlyTable<u64, &[u8]>,
    seq: u64,
) -> Result<LogEntry, ReadError> {
    match log.get(seq)? {
        Some(v) => decode_entry(seq, v.value()),
        None => Err(ReadError::Corrupt {
            table: "log",
            key: format!("{seq} (named by an index, missing from the log)"),
        }),
    }
}

/// The kind of a stored log value, read from its first bytes without checking or decoding it:
/// `None` for a value that is not kind-prefixed (format 2) or too short to say, which must be
/// decoded to tell.
pub(crate) fn stored_kind(bytes: &[u8]) -> Option<RecordKind> {
    match bytes.get(4..6) {
        Some([KIND_PREFIXED, code]) => RecordKind::from_code(*code),
        _ => None,
    }
}

pub(crate) fn decode_entry(seq: u64, bytes: &[u8]) -> Result<LogEntry, ReadError> {
    let key = || seq.to_string();
    let payload = checked("log", key, bytes)?;
    let record = decode_record(payload).map_err(|message| ReadError::Decode {
        table: "log",
        key: key(),
        message,
    })?;
    Ok(LogEntry { seq, record })
}

/// The first byte of a log record written since format 3: MessagePack never uses `0xc1`, so it
/// tells a kind-prefixed record from one of format 2 (a MessagePack map) at a glance.
const KIND_PREFIXED: u8 = 0xc1;

/// Evaluates `$body` with `$x` bound to the record's own struct, whatever its kind.
macro_rules! by_kind {
    ($record:expr, $x:ident => $body:expr) => {
        match $record {
            Record::Run($x) => $body,
            Record::ModelLoad($x) => $body,
            Record::ContextRequest($x) => $body,
            Record::ContextOom($x) => $body,
            Record::SessionStarted($x) => $body,
            Record::SessionEnded($x) => $body,
            Record::Readiness($x) => $body,
            Record::Feedback($x) => $body,
            Record::Window($x) => $body,
            Record::Firing($x) => $body,
            Record::Suggestion($x) => $body,
            Record::Suppression($x) => $body,
            Record::MitigationOutcome($x) => $body,
            Record::Profile($x) => $body,
            Record::Consent($x) => $body,
            Record::Export($x) => $body,
            Record::Checkpoint($x) => $body,
        }
    };
}

/// A log record as stored (before its CRC): [`KIND_PREFIXED`], the kind's code, then the
/// record's own fields as named MessagePack. Decoding it goes straight to the kind's struct,
/// without the buffering serde needs for an internally tagged enum (a third of the cost).
pub(crate) fn encode_record(record: &Record) -> Result<Vec<u8>, WriteError> {
    let mut out = vec![KIND_PREFIXED, record.kind().code()];
    by_kind!(record, x => rmp_serde::encode::write_named(&mut out, x))
        .map_err(|e| WriteError::Storage(format!("cannot encode a record: {e}")))?;
    Ok(with_crc(&out))
}

/// The record of a log value's payload: kind-prefixed (format 3), or an internally tagged
/// MessagePack map (format 2, still read).
pub(crate) fn decode_record(payload: &[u8]) -> Result<Record, String> {
    let [KIND_PREFIXED, code, body @ ..] = payload else {
        return rmp_serde::from_slice(payload).map_err(|e| e.to_string());
    };
    let kind = RecordKind::from_code(*code).ok_or_else(|| format!("unknown record kind {code}"))?;
    fn body_of<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
        rmp_serde::from_slice(body).map_err(|e| e.to_string())
    }
    Ok(match kind {
        RecordKind::Run => Record::Run(body_of(body)?),
        RecordKind::ModelLoad => Record::ModelLoad(body_of(body)?),
        RecordKind::ContextRequest => Record::ContextRequest(body_of(body)?),
        RecordKind::ContextOom => Record::ContextOom(body_of(body)?),
        RecordKind::SessionStarted => Record::SessionStarted(body_of(body)?),
        RecordKind::SessionEnded => Record::SessionEnded(body_of(body)?),
        RecordKind::Readiness => Record::Readiness(body_of(body)?),
        RecordKind::Feedback => Record::Feedback(body_of(body)?),
        RecordKind::Window => Record::Window(body_of(body)?),
        RecordKind::Firing => Record::Firing(body_of(body)?),
        RecordKind::Suggestion => Record::Suggestion(body_of(body)?),
        RecordKind::Suppression => Record::Suppression(body_of(body)?),
        RecordKind::MitigationOutcome => Record::MitigationOutcome(body_of(body)?),
        RecordKind::Profile => Record::Profile(body_of(body)?),
        RecordKind::Consent => Record::Consent(body_of(body)?),
        RecordKind::Export => Record::Export(body_of(body)?),
        RecordKind::Checkpoint => Record::Checkpoint(body_of(body)?),
    })
}

pub(crate) fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: impl Fn() -> String,
    bytes: &[u8],
) -> Result<T, ReadError> {
    let payload = checked(table, &key, bytes)?;
    rmp_serde::from_slice(payload).map_err(|e| ReadError::Decode {
        table,
        key: key(),
        message: e.to_string(),
    })
}

/// `payload` behind its CRC-32 (little-endian), as every stored value is kept.
pub(crate) fn with_crc(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of a value stored by [`with_crc`], once its CRC-32 is checked.
pub(crate) fn checked<'b>(
    table: &'static str,
    key: impl Fn() -> String,
    bytes: &'b [u8],
) -> Result<&'b [u8], ReadError> {
    let (crc, payload) = bytes
        .split_at_checked(4)
        .ok_or_else(|| ReadError::Corrupt { table, key: key() })?;
    let mut crc_bytes = [0u8; 4];
    crc_bytes.copy_from_slice(crc);
    if u32::from_le_bytes(crc_bytes) != crc32fast::hash(payload) {
        return Err(ReadError::Corrupt { table, key: key() });
    }
    Ok(payload)
}

/// The bytes of a content digest kept with a client id: the first 16 of the SHA-256. Telling
/// a retry from a reused id needs no more (two different items share them with a chance of
/// 2^-128), and an id's row is 16 bytes shorter: on a year's store, 2 MB of the ids' pages.
pub(crate) const DIGEST_LEN: usize = 16;

/// The content digest of an item as the client sent it (before the server stamped a time).
pub(crate) fn digest(value: &impl Serialize) -> Result<[u8; DIGEST_LEN], WriteError> {
    let bytes = rmp_serde::to_vec_named(value)
        .map_err(|e| WriteError::Storage(format!("cannot encode a record: {e}")))?;
    let mut out = [0u8; DIGEST_LEN];
    out.copy_from_slice(&Sha256::digest(&bytes)[..DIGEST_LEN]);
    Ok(out)
}
