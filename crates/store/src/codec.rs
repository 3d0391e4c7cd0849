//! The CRC-32 + MessagePack encoding of stored values, the content digest of client items,
//! and the mapping of chunk codec failures to the store's errors.

use kora_model::{LogEntry, Record};
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

pub(crate) fn decode_entry(seq: u64, bytes: &[u8]) -> Result<LogEntry, ReadError> {
    let record: Record = decode("log", || seq.to_string(), bytes)?;
    Ok(LogEntry { seq, record })
}

pub(crate) fn encode(value: &impl Serialize) -> Result<Vec<u8>, WriteError> {
    let payload = rmp_serde::to_vec_named(value)
        .map_err(|e| WriteError::Storage(format!("cannot encode a record: {e}")))?;
    Ok(with_crc(&payload))
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

/// The content digest of an item as the client sent it (before the server stamped a time).
pub(crate) fn digest(value: &impl Serialize) -> Result<[u8; 32], WriteError> {
    let bytes = rmp_serde::to_vec_named(value)
        .map_err(|e| WriteError::Storage(format!("cannot encode a record: {e}")))?;
    Ok(Sha256::digest(&bytes).into())
}
