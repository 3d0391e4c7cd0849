//! The start-time page check: every page checksum of the committed trees, verified without
//! changing a byte of the file; the clean close's integrity check; and the record of a checked
//! clean close, which lets the next open of the same bytes skip the page check.
//!
//! redb verifies page checksums only in its integrity check, and that check repairs (and so
//! writes) what it finds. Here it runs against [`Overlay`], a view of the file whose writes
//! land in memory: a file that verifies is opened for real; one that does not, or that the
//! check would have had to repair, is refused as it is.
//!
//! The two checks differ by one walk of the file. A start verifies every page checksum
//! ([`verify_pages`]): that is what finds bytes changed outside redb, and it reads each page of
//! the trees once. A clean close also rebuilds redb's allocator state from the trees and compares
//! it with the one redb recorded ([`verify`]), which finds a recorded state that disagrees with
//! the trees (a fault of redb's, not of the disk) before the file is vouched for. Every commit
//! records that state (quick repair), and the open after a kill loads it as redb always does; a
//! start does not compare it, so that a start after a kill reads the file once, not twice.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use redb::{Database, StorageBackend};

use crate::error::OpenError;

const PAGE: u64 = 4096;

/// A read-only file with a copy-on-write layer of pages in memory.
#[derive(Debug)]
struct Overlay {
    file: File,
    state: Mutex<OverlayState>,
}

#[derive(Debug)]
struct OverlayState {
    /// The storage length redb sees.
    len: u64,
    /// How much of the file is still visible (a shrink hides the rest for good).
    file_len: u64,
    /// Pages written through the overlay, by page index.
    pages: HashMap<u64, Vec<u8>>,
}

fn poisoned() -> std::io::Error {
    std::io::Error::other("the overlay lock is poisoned")
}

impl OverlayState {
    /// Copies page `index`, as redb currently sees it, into `buf` (`PAGE` bytes).
    fn page(&self, file: &File, index: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if let Some(p) = self.pages.get(&index) {
            buf.copy_from_slice(p);
            return Ok(());
        }
        buf.fill(0);
        let start = index * PAGE;
        if start < self.file_len {
            let n = (self.file_len - start).min(PAGE) as usize;
            file.read_exact_at(&mut buf[..n], start)?;
        }
        Ok(())
    }
}

impl StorageBackend for Overlay {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.state.lock().map_err(|_| poisoned())?.len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let s = self.state.lock().map_err(|_| poisoned())?;
        let end = offset
            .checked_add(out.len() as u64)
            .filter(|end| *end <= s.len)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        let mut page: Option<Vec<u8>> = None;
        let mut at = offset;
        while at < end {
            let index = at / PAGE;
            let o = (at - offset) as usize;
            // The file's own bytes, up to the next page written through the overlay, in one
            // read: the check reads the whole file, so this is the path it spends its time on.
            let mut run_end = at;
            while run_end < end.min(s.file_len) && !s.pages.contains_key(&(run_end / PAGE)) {
                run_end = ((run_end / PAGE + 1) * PAGE).min(end).min(s.file_len);
            }
            if run_end > at {
                let n = (run_end - at) as usize;
                self.file.read_exact_at(&mut out[o..o + n], at)?;
                at = run_end;
                continue;
            }
            let page = page.get_or_insert_with(|| vec![0u8; PAGE as usize]);
            s.page(&self.file, index, page)?;
            let from = (at - index * PAGE) as usize;
            let n = ((PAGE as usize) - from).min((end - at) as usize);
            out[o..o + n].copy_from_slice(&page[from..from + n]);
            at += n as u64;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut s = self.state.lock().map_err(|_| poisoned())?;
        if len < s.len {
            // Bytes past the new end must read as zero if the storage grows again.
            s.file_len = s.file_len.min(len);
            let last = len / PAGE;
            s.pages.retain(|i, _| *i <= last);
            if let Some(p) = s.pages.get_mut(&last) {
                p[(len - last * PAGE) as usize..].fill(0);
            }
        }
        s.len = len;
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut s = self.state.lock().map_err(|_| poisoned())?;
        let end = offset + data.len() as u64;
        let mut at = offset;
        while at < end {
            let index = at / PAGE;
            if !s.pages.contains_key(&index) {
                let mut page = vec![0u8; PAGE as usize];
                s.page(&self.file, index, &mut page)?;
                s.pages.insert(index, page);
            }
            let from = (at - index * PAGE) as usize;
            let n = ((PAGE as usize) - from).min((end - at) as usize);
            let o = (at - offset) as usize;
            if let Some(page) = s.pages.get_mut(&index) {
                page[from..from + n].copy_from_slice(&data[o..o + n]);
            }
            at += n as u64;
        }
        s.len = s.len.max(end);
        Ok(())
    }
}

/// How the file's last writer stopped, as the read-only open found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LastStop {
    /// redb finds nothing to recover (a close, or a kill after a commit that recorded the
    /// allocator state: every commit of the store's writer does).
    Consistent,
    /// redb must recover the file before it can be written (a kill after a commit of another
    /// kind: the store's creation or a format conversion).
    NeedsRecovery,
}

/// The progress redb's check reports once the trees it keeps have verified, before it rebuilds
/// the allocator state from them (redb 4: 0.0 at the start, 0.3 when the last commit did not
/// verify and the one before it is tried, 0.6 here, 0.9 during the rebuild).
const TREES_VERIFIED: f64 = 0.6;

/// The start's page check: verifies every page checksum of `path`'s committed trees, in one
/// walk. `Ok` when they verify; otherwise the reason the file is refused. The file is opened
/// read-only and never written.
///
/// It is redb's integrity check on open, stopped when the trees have verified, before the
/// rebuild. When the last commit's trees do not verify, redb tries the commit before it: after
/// a stop that left the file to recover, that is its recovery from a torn commit, which the
/// open repeats on the file; after a stop that left it consistent, the last commit was whole,
/// so its pages were damaged since, and the file is refused.
pub(crate) fn verify_pages(path: &Path, last_stop: LastStop) -> Result<(), OpenError> {
    const FELL_BACK: u8 = 1;
    const VERIFIED: u8 = 2;
    let overlay = overlay(path)?;
    crate::format::guarded(path, || -> Result<(), OpenError> {
        let seen = Arc::new(AtomicU8::new(0));
        let mut builder = Database::builder();
        builder.set_cache_size(4 * 1024 * 1024);
        builder.set_check_integrity_on_open(true);
        let saw = seen.clone();
        builder.set_repair_callback(move |session| {
            let progress = session.progress();
            if progress >= TREES_VERIFIED {
                saw.fetch_or(VERIFIED, Ordering::SeqCst);
                session.abort();
            } else if progress > 0.0 {
                saw.fetch_or(FELL_BACK, Ordering::SeqCst);
            }
        });
        match builder.create_with_backend(overlay) {
            // The check did not run: redb skips it for a file that never committed. Should it
            // skip it for another reason, the full check runs instead.
            Ok(mut db) => integrity(&mut db, path),
            Err(redb::DatabaseError::RepairAborted) => {
                let seen = seen.load(Ordering::SeqCst);
                if seen & VERIFIED == 0 {
                    Err(refuse(
                        path,
                        "the page check stopped before the pages verified".into(),
                    ))
                } else if seen & FELL_BACK != 0 && last_stop == LastStop::Consistent {
                    Err(refuse(
                        path,
                        "the last commit's pages do not verify: the file is damaged (redb could \
                         only open it by dropping that commit, which is not done here)"
                            .into(),
                    ))
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(refuse(path, format!("the file is damaged ({e})"))),
        }
    })?
}

/// A clean close's check: every page checksum of `path`'s committed trees, and redb's allocator
/// state rebuilt from them and compared with the recorded one (redb's integrity check: two
/// walks of the file). `Ok` when the file verifies as it is; otherwise the reason it gets no
/// record of a checked close. The file is opened read-only and never written.
pub(crate) fn verify(path: &Path) -> Result<(), OpenError> {
    let overlay = overlay(path)?;
    crate::format::guarded(path, || -> Result<(), OpenError> {
        let mut builder = Database::builder();
        builder.set_cache_size(4 * 1024 * 1024);
        let mut db = builder
            .create_with_backend(overlay)
            .map_err(|e| refuse(path, format!("the file is damaged ({e})")))?;
        integrity(&mut db, path)
    })?
}

/// redb's integrity check of `db` (an overlay): `Ok` when it finds the file clean.
fn integrity(db: &mut Database, path: &Path) -> Result<(), OpenError> {
    match db.check_integrity() {
        Ok(true) => Ok(()),
        Ok(false) => Err(refuse(
            path,
            "a page checksum does not match: the file is damaged (redb could only repair it by \
             dropping data, which is not done here)"
                .into(),
        )),
        Err(e) => Err(refuse(path, format!("the file is damaged ({e})"))),
    }
}

/// Why `path` is refused.
fn refuse(path: &Path, reason: String) -> OpenError {
    OpenError::NotAStore {
        path: path.to_owned(),
        reason,
    }
}

/// `path` behind a copy-on-write [`Overlay`].
fn overlay(path: &Path) -> Result<Overlay, OpenError> {
    let file = File::open(path).map_err(|source| OpenError::Io {
        path: path.to_owned(),
        source,
    })?;
    let len = file
        .metadata()
        .map_err(|source| OpenError::Io {
            path: path.to_owned(),
            source,
        })?
        .len();
    Ok(Overlay {
        file,
        state: Mutex::new(OverlayState {
            len,
            file_len: len,
            pages: HashMap::new(),
        }),
    })
}

/// The file beside the store that vouches for its bytes: written at a clean close, after the
/// page check, with the file's length and CRC-32; removed by the next open before it writes.
fn checked_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".checked");
    PathBuf::from(p)
}

const CHECKED_HEADER: &str = "kora-telemetry store checked at its close, v1";

/// The length of `path` and the CRC-32 of all its bytes. The file's holes (redb grows its file
/// ahead of use, so a year's store is a third holes) are not read: their zeros are folded in
/// by arithmetic ([`crc32fast::Hasher::combine`]); the rest is read in 1 MiB blocks, the file
/// cut into one range per core (up to 4), each hashed on its own thread and the CRCs combined
/// in order.
fn fingerprint(path: &Path) -> std::io::Result<(u64, u32)> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4)) as u64;
    let step = len.div_ceil(threads).max(1);
    let ranges: Vec<(u64, u64)> = (0..threads)
        .map(|i| (i * step, ((i + 1) * step).min(len)))
        .filter(|(a, b)| a < b)
        .collect();
    let parts = std::thread::scope(|scope| {
        let handles: Vec<_> = ranges
            .iter()
            .map(|&(a, b)| {
                let file = &file;
                scope.spawn(move || crc_of_range(file, a, b))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a hashing thread panicked")))
            })
            .collect::<std::io::Result<Vec<_>>>()
    })?;
    let mut hasher = crc32fast::Hasher::new();
    for part in &parts {
        hasher.combine(part);
    }
    Ok((len, hasher.finalize()))
}

/// The CRC-32 of the bytes `from..to` of `file` (holes read as zeros, not read).
fn crc_of_range(file: &File, from: u64, to: u64) -> std::io::Result<crc32fast::Hasher> {
    const BLOCK: usize = 1 << 20;
    let mut buf = vec![0u8; BLOCK];
    let zero_block = {
        let mut h = crc32fast::Hasher::new();
        h.update(&buf);
        crc32fast::Hasher::new_with_initial_len(h.finalize(), BLOCK as u64)
    };
    let mut hasher = crc32fast::Hasher::new();
    let mut at = from;
    while at < to {
        let (data, hole) = data_from(file, at, to)?;
        // Zeros up to the data: whole blocks combined, the rest hashed.
        let zeros = data - at;
        for _ in 0..zeros / BLOCK as u64 {
            hasher.combine(&zero_block);
        }
        let rest = (zeros % BLOCK as u64) as usize;
        if rest > 0 {
            buf[..rest].fill(0);
            hasher.update(&buf[..rest]);
        }
        let mut pos = data;
        while pos < hole {
            let n = ((hole - pos) as usize).min(BLOCK);
            file.read_exact_at(&mut buf[..n], pos)?;
            hasher.update(&buf[..n]);
            pos += n as u64;
        }
        at = hole;
    }
    Ok(hasher)
}

/// The next run of data at or after `at`, up to `len` (the file's length, or the end of the
/// range being read): `(start, end)`, with `start == end == len` when only a hole is left up
/// to `len`. A file system that cannot tell holes answers the whole rest as data.
fn data_from(file: &File, at: u64, len: u64) -> std::io::Result<(u64, u64)> {
    use rustix::fs::{SeekFrom, seek};
    let data = match seek(file, SeekFrom::Data(at)) {
        Ok(d) => d.min(len),
        Err(rustix::io::Errno::NXIO) => return Ok((len, len)),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOTSUP) => return Ok((at, len)),
        Err(e) => return Err(e.into()),
    };
    let hole = match seek(file, SeekFrom::Hole(data)) {
        Ok(h) => h.clamp(data, len),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOTSUP) => len,
        Err(e) => return Err(e.into()),
    };
    // A file system that reports no progress is read as data to the end.
    Ok(if hole > data {
        (data, hole)
    } else {
        (data, len)
    })
}

fn checked_text(len: u64, crc: u32) -> String {
    format!("{CHECKED_HEADER}\nlen {len}\ncrc32 {crc:08x}\n")
}

/// Whether `path` holds exactly the bytes a clean close checked and vouched for: every page
/// checksum verified then, not a byte changed since, so the page check need not run again.
/// Any doubt (no such record, an unreadable or different one, a changed length or CRC)
/// answers `false`, and the open checks every page.
pub(crate) fn unchanged_since_checked_close(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(checked_path(path)) else {
        return false;
    };
    match fingerprint(path) {
        Ok((len, crc)) => text == checked_text(len, crc),
        Err(_) => false,
    }
}

/// Removes the record of a checked close: done before the file is opened for writing, so the
/// record never outlives the bytes it describes (were it left, a CRC that no longer matches
/// would still send the next open to the page check).
pub(crate) fn forget_checked_close(path: &Path) {
    let checked = checked_path(path);
    if let Err(e) = std::fs::remove_file(&checked)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %checked.display(), error = %e, "cannot remove the record of the store's last checked close; the next start checks every page");
    }
}

/// At a clean close, the file closed: checks every page checksum (unless nothing was written
/// since an open that checked them, `pages_checked`), then records the file's length and
/// CRC-32 beside it (written to a temporary file, then renamed over), so that the next open
/// of these same bytes skips the page check. A file whose pages do not verify gets no record.
pub(crate) fn record_checked_close(path: &Path, pages_checked: bool) -> Result<(), OpenError> {
    let io = |source| OpenError::Io {
        path: path.to_owned(),
        source,
    };
    if !pages_checked {
        verify(path)?;
    }
    let (len, crc) = fingerprint(path).map_err(io)?;
    let checked = checked_path(path);
    let mut tmp = checked.clone().into_os_string();
    tmp.push(".tmp");
    std::fs::write(&tmp, checked_text(len, crc)).map_err(io)?;
    std::fs::rename(&tmp, &checked).map_err(io)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// The fingerprint of a file with holes is the CRC of its bytes as read (holes as zeros),
    /// whatever the layout: holes before, between and after data, of any length.
    #[test]
    fn the_fingerprint_of_a_sparse_file_is_the_crc_of_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        for (len, writes) in [
            (0u64, vec![]),
            (5_000_000, vec![]),
            (
                5_000_000,
                vec![(0u64, 10usize), (3 << 20, 70_000), (4_999_990, 10)],
            ),
            (9_437_184, vec![(1_048_577, 4096), (8 << 20, 1 << 20)]),
            (123_457, vec![(65_536, 1)]),
            // No hole: the ranges hashed apart cut the data.
            (3_000_001, vec![(0, 3_000_001)]),
        ] {
            let mut file = File::create(&path).unwrap();
            file.set_len(len).unwrap();
            for (i, (at, n)) in writes.iter().enumerate() {
                let bytes: Vec<u8> = (0..*n)
                    .map(|k| (k as u8).wrapping_mul(31) ^ i as u8 | 1)
                    .collect();
                file.write_all_at(&bytes, *at).unwrap();
            }
            file.flush().unwrap();
            drop(file);
            if writes.is_empty() && len > 0 {
                let all_hole = data_from(&File::open(&path).unwrap(), 0, len).unwrap();
                if all_hole != (len, len) {
                    eprintln!(
                        "NOTE: this file system reports no holes ({all_hole:?}): the hole path of the fingerprint is not exercised here"
                    );
                }
            }
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(
                fingerprint(&path).unwrap(),
                (bytes.len() as u64, crc32fast::hash(&bytes)),
                "{len} bytes, data at {writes:?}"
            );
        }
    }
}
