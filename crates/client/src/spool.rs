//! [`Spool`]: a local append-only queue of records on disk, bounded in bytes, that keeps what
//! the service has not acknowledged yet, across a service restart and a client crash.
//!
//! The directory holds segment files `<n>.seg` (`n` 20 decimal digits, increasing) and the
//! file `ack`. A segment is a sequence of frames, each `len` (u32 LE), `crc` (u32 LE, CRC-32
//! of the `len` bytes and the payload), then `len` payload bytes; frames are only ever appended.
//! `ack` holds the cursor (segment, offset) up to which the service acknowledged the records,
//! written to `ack.tmp` and renamed over it; segments wholly before the cursor are deleted.
//!
//! - **Order**: records are read back in the order they were appended.
//! - **Bound**: the segments together never exceed `max_bytes`. An append that would is refused
//!   whole with [`SpoolError::Full`]: the records already held (the oldest) are kept, and the
//!   caller decides about the new ones. A new segment is started at 1/16 of the bound (at
//!   least 256 bytes, at most 4 MiB), and a segment is deleted once all its records were
//!   acknowledged, so acknowledged records still sharing a segment with unacknowledged ones
//!   hold about that much of the bound.
//! - **Crashes**: with `sync` (the default) an append returns once its frames are on disk, so
//!   a crash can only cut off a write that had not returned. [`Spool::open`] checks every frame
//!   of the unacknowledged part against its CRC; a damaged or cut-off frame and everything
//!   after it in its segment are not used: they are copied to `<n>.seg.damaged-<offset>` and
//!   cut from the segment, and each such damage is in the [`OpenReport`]. A lost or damaged `ack` file means records may
//!   be sent again; the service stores each client id once, so nothing is stored twice.
//! - **One owner**: a spool directory belongs to one [`Spool`] (one process) at a time.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const FRAME_HEADER: u64 = 8;
const ACK_FILE: &str = "ack";
const ACK_TMP: &str = "ack.tmp";
const ACK_MAGIC: &[u8; 4] = b"KSPA";
const ACK_LEN: usize = 24;

/// How a [`Spool`] bounds and syncs its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolOptions {
    /// The most bytes the segment files may hold together.
    pub max_bytes: u64,
    /// `fsync` every append and every acknowledgement (default). Without it, records survive
    /// a crash of the process but not of the machine. An append is one write and one sync
    /// however many records it holds (about 3 ms each on the disk of the test machine): queue
    /// records that come in bursts together ([`crate::Sender::enqueue_all`]).
    pub sync: bool,
}

impl Default for SpoolOptions {
    /// 64 MiB, synced.
    fn default() -> Self {
        SpoolOptions {
            max_bytes: 64 * 1024 * 1024,
            sync: true,
        }
    }
}

impl SpoolOptions {
    pub fn max_bytes(max_bytes: u64) -> Self {
        SpoolOptions {
            max_bytes,
            ..SpoolOptions::default()
        }
    }

    fn segment_bytes(&self) -> u64 {
        (self.max_bytes / 16).clamp(256, 4 * 1024 * 1024)
    }
}

/// Why the spool could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The append would exceed the bound: nothing of it was written, every record already held
    /// is kept.
    #[error(
        "the queue ({}) is full: it holds {used} of its {max_bytes} bytes and the records \
         need {needed} more; nothing was added (the records it holds wait for the service)",
        .dir.display()
    )]
    Full {
        dir: PathBuf,
        used: u64,
        needed: u64,
        max_bytes: u64,
    },
    /// One record is larger than the whole bound.
    #[error("a record of {bytes} bytes cannot fit a spool of {max_bytes} bytes")]
    TooLarge { bytes: u64, max_bytes: u64 },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A frame read back does not match its CRC (the file changed under the spool).
    #[error("{} at byte {offset}: damaged record ({reason})", .path.display())]
    Damaged {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Damage found by [`Spool::open`]: bytes that were not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub file: PathBuf,
    /// Where the damage starts.
    pub offset: u64,
    /// How many bytes, from there, were set aside.
    pub bytes: u64,
    pub reason: String,
    /// Where the set-aside bytes were kept.
    pub kept_in: Option<PathBuf>,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} from byte {} ({} bytes): {}",
            self.file.display(),
            self.offset,
            self.bytes,
            self.reason
        )?;
        if let Some(k) = &self.kept_in {
            write!(f, "; kept in {}", k.display())?;
        }
        Ok(())
    }
}

/// What [`Spool::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "a damaged spool is reported here"]
pub struct OpenReport {
    /// Records waiting for the service.
    pub pending: usize,
    pub pending_bytes: u64,
    /// Damaged parts that were set aside, oldest first; empty for a clean spool.
    pub damage: Vec<Damage>,
}

/// Where one frame is.
#[derive(Debug, Clone, Copy)]
struct Frame {
    segment: u64,
    offset: u64,
    len: u64,
}

impl Frame {
    fn end(&self) -> u64 {
        self.offset + FRAME_HEADER + self.len
    }
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    number: u64,
    len: u64,
}

/// The acknowledged position: every frame ending at or before `offset` of `segment`, and
/// every frame of an earlier segment, was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    segment: u64,
    offset: u64,
}

/// A local append-only queue of records on disk. See the module documentation.
///
/// Thread-safety: `Spool` is `Send`; its methods take `&mut self`, so share it behind a lock
/// (as [`crate::Sender`] does).
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    options: SpoolOptions,
    /// Live segments, oldest first.
    segments: VecDeque<Segment>,
    /// The newest segment, open for appending.
    writer: Option<File>,
    /// Unacknowledged frames, oldest first.
    pending: VecDeque<Frame>,
    pending_bytes: u64,
    /// The bytes of the live segments.
    disk_bytes: u64,
    next_segment: u64,
}

fn crc_of(len: &[u8; 4], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(payload);
    h.finalize()
}

fn frame_bytes(payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() as u32).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc_of(&len, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The frames of a segment's bytes from `start` (a frame boundary), up to the first damage:
/// (frames, good length, why the rest is damaged).
fn scan(segment: u64, bytes: &[u8], start: usize) -> (Vec<Frame>, u64, Option<String>) {
    let mut frames = Vec::new();
    let mut off = start.min(bytes.len());
    while off < bytes.len() {
        let rest = &bytes[off..];
        let Some((header, after)) = rest.split_first_chunk::<8>() else {
            return (
                frames,
                off as u64,
                Some(format!(
                    "a frame header cut short ({} of 8 bytes): a write that did not finish",
                    rest.len()
                )),
            );
        };
        let len_bytes = [header[0], header[1], header[2], header[3]];
        let len = u32::from_le_bytes(len_bytes) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let Some(payload) = after.get(..len) else {
            return (
                frames,
                off as u64,
                Some(format!(
                    "a frame of {len} bytes runs past the end of the file ({} left): a write that \
                     did not finish, or a damaged length",
                    after.len()
                )),
            );
        };
        if crc_of(&len_bytes, payload) != crc {
            return (
                frames,
                off as u64,
                Some("the CRC-32 does not match the frame's bytes".into()),
            );
        }
        frames.push(Frame {
            segment,
            offset: off as u64,
            len: len as u64,
        });
        off += 8 + len;
    }
    (frames, off as u64, None)
}

fn segment_name(number: u64) -> String {
    format!("{number:020}.seg")
}

fn segment_number(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    // Directories can be opened and synced on Unix; elsewhere this is a no-op.
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The cursor in `ack`, or `None` when there is none; damage is reported and read as none
/// (records are then sent again, which the service recognises by their ids).
fn read_ack(dir: &Path, damage: &mut Vec<Damage>) -> Result<Option<Cursor>, SpoolError> {
    let path = dir.join(ACK_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    let parsed = (bytes.len() == ACK_LEN && bytes.starts_with(ACK_MAGIC))
        .then(|| {
            let word = |at: usize| {
                bytes
                    .get(at..at + 8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_le_bytes)
            };
            let crc = bytes
                .get(20..24)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_le_bytes)?;
            (crc32fast::hash(&bytes[..20]) == crc).then_some(Cursor {
                segment: word(4)?,
                offset: word(12)?,
            })
        })
        .flatten();
    if parsed.is_none() {
        damage.push(Damage {
            file: path,
            offset: 0,
            bytes: bytes.len() as u64,
            reason: "the acknowledgement cursor is damaged: records may be sent again (the \
                     service stores each client id once)"
                .into(),
            kept_in: None,
        });
    }
    Ok(parsed)
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, checking every unacknowledged frame.
    pub fn open(dir: &Path, options: SpoolOptions) -> Result<(Spool, OpenReport), SpoolError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut damage = Vec::new();
        let cursor = read_ack(dir, &mut damage)?;
        let mut numbers = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            if let Some(n) = entry.file_name().to_str().and_then(segment_number) {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        let mut segments = VecDeque::new();
        let mut pending = VecDeque::new();
        for &number in &numbers {
            let path = dir.join(segment_name(number));
            if cursor.is_some_and(|c| number < c.segment) {
                // Wholly acknowledged; its deletion was cut short.
                std::fs::remove_file(&path).map_err(io(&path))?;
                continue;
            }
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            // Only the unacknowledged part is read: what the service took is not needed again.
            let acked_to = match cursor {
                Some(c) if c.segment == number => usize::try_from(c.offset).unwrap_or(usize::MAX),
                _ => 0,
            };
            let (frames, good, bad) = scan(number, &bytes, acked_to);
            if let Some(reason) = bad {
                let kept = dir.join(format!("{}.damaged-{good}", segment_name(number)));
                std::fs::write(&kept, &bytes[good as usize..]).map_err(io(&kept))?;
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io(&path))?;
                file.set_len(good).map_err(io(&path))?;
                file.sync_all().map_err(io(&path))?;
                damage.push(Damage {
                    file: path.clone(),
                    offset: good,
                    bytes: bytes.len() as u64 - good,
                    reason,
                    kept_in: Some(kept),
                });
            }
            pending.extend(frames);
            segments.push_back(Segment { number, len: good });
        }
        let next_segment = numbers
            .last()
            .map(|n| n + 1)
            .max(cursor.map(|c| c.segment + 1))
            .unwrap_or(1);
        let mut spool = Spool {
            dir: dir.to_owned(),
            options,
            disk_bytes: segments.iter().map(|s| s.len).sum(),
            pending_bytes: pending.iter().map(|f| FRAME_HEADER + f.len).sum(),
            segments,
            writer: None,
            pending,
            next_segment,
        };
        spool.reclaim()?;
        let report = OpenReport {
            pending: spool.pending.len(),
            pending_bytes: spool.pending_bytes,
            damage,
        };
        Ok((spool, report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records waiting for the service.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The bytes of the waiting records' frames.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// The bytes the segment files hold (what the bound counts).
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    pub fn options(&self) -> SpoolOptions {
        self.options
    }

    /// Appends `payloads` in order, all or nothing: [`SpoolError::Full`] when they would not
    /// fit the bound (the spool is then unchanged).
    pub fn append(&mut self, payloads: &[Vec<u8>]) -> Result<(), SpoolError> {
        let max_bytes = self.options.max_bytes;
        let mut needed = 0u64;
        for p in payloads {
            let bytes = FRAME_HEADER + p.len() as u64;
            if bytes > max_bytes || p.len() > u32::MAX as usize {
                return Err(SpoolError::TooLarge { bytes, max_bytes });
            }
            needed += bytes;
        }
        if self.disk_bytes + needed > max_bytes {
            return Err(SpoolError::Full {
                dir: self.dir.clone(),
                used: self.disk_bytes,
                needed,
                max_bytes,
            });
        }
        // Plan: which frame goes to which segment (a new one when the current would pass the
        // segment size).
        let segment_bytes = self.options.segment_bytes();
        let old_last = self.segments.back().copied();
        let mut planned: Vec<(Segment, Vec<u8>, Vec<Frame>)> = Vec::new();
        let mut current = old_last.unwrap_or(Segment {
            number: self.next_segment,
            len: 0,
        });
        let mut buffer = Vec::new();
        let mut frames = Vec::new();
        let mut next_number = self.next_segment;
        if old_last.is_none() {
            next_number += 1;
        }
        for p in payloads {
            let bytes = FRAME_HEADER + p.len() as u64;
            if current.len > 0 && current.len + bytes > segment_bytes {
                planned.push((
                    current,
                    std::mem::take(&mut buffer),
                    std::mem::take(&mut frames),
                ));
                current = Segment {
                    number: next_number,
                    len: 0,
                };
                next_number += 1;
            }
            frames.push(Frame {
                segment: current.number,
                offset: current.len,
                len: p.len() as u64,
            });
            frame_bytes(p, &mut buffer);
            current.len += bytes;
        }
        planned.push((current, buffer, frames));
        if let Err(e) = self.write_planned(&planned, old_last) {
            self.undo(&planned, old_last);
            return Err(e);
        }
        for (segment, _, frames) in planned {
            match self.segments.back_mut() {
                Some(last) if last.number == segment.number => last.len = segment.len,
                _ => self.segments.push_back(segment),
            }
            self.pending.extend(frames);
        }
        self.pending_bytes += needed;
        self.disk_bytes += needed;
        self.next_segment = next_number;
        Ok(())
    }

    fn write_planned(
        &mut self,
        planned: &[(Segment, Vec<u8>, Vec<Frame>)],
        old_last: Option<Segment>,
    ) -> Result<(), SpoolError> {
        let mut created = false;
        for (segment, buffer, _) in planned {
            let path = self.dir.join(segment_name(segment.number));
            let continuing = old_last.is_some_and(|l| l.number == segment.number);
            if !continuing {
                let file = OpenOptions::new()
                    .create_new(true)
                    .append(true)
                    .open(&path)
                    .map_err(io(&path))?;
                self.writer = Some(file);
                created = true;
            } else if self.writer.is_none() {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(io(&path))?;
                self.writer = Some(file);
            }
            let Some(writer) = self.writer.as_mut() else {
                continue;
            };
            writer.write_all(buffer).map_err(io(&path))?;
            if self.options.sync {
                writer.sync_data().map_err(io(&path))?;
            }
        }
        if created && self.options.sync {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Takes back a failed append: the continued segment is cut to its old length, the new
    /// ones removed.
    fn undo(&mut self, planned: &[(Segment, Vec<u8>, Vec<Frame>)], old_last: Option<Segment>) {
        self.writer = None;
        for (segment, _, _) in planned {
            let path = self.dir.join(segment_name(segment.number));
            match old_last {
                Some(l) if l.number == segment.number => {
                    if let Ok(f) = OpenOptions::new().write(true).open(&path) {
                        let _ = f.set_len(l.len);
                    }
                }
                _ => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }

    /// The payloads of the oldest `n` records (fewer when fewer wait), stopping before the
    /// payloads pass `max_bytes` together (at least one is always given). Each is checked
    /// against its CRC again.
    pub fn peek(&self, n: usize, max_bytes: u64) -> Result<Vec<Vec<u8>>, SpoolError> {
        let mut out = Vec::new();
        let mut total = 0u64;
        let mut file: Option<(u64, File)> = None;
        for frame in self.pending.iter().take(n) {
            if !out.is_empty() && total + frame.len > max_bytes {
                break;
            }
            let path = self.dir.join(segment_name(frame.segment));
            if file.as_ref().is_none_or(|(s, _)| *s != frame.segment) {
                file = Some((frame.segment, File::open(&path).map_err(io(&path))?));
            }
            let Some((_, f)) = file.as_mut() else {
                continue;
            };
            f.seek(SeekFrom::Start(frame.offset)).map_err(io(&path))?;
            let mut bytes = vec![0u8; (FRAME_HEADER + frame.len) as usize];
            f.read_exact(&mut bytes).map_err(io(&path))?;
            let (frames, _, bad) = scan(frame.segment, &bytes, 0);
            if bad.is_some() || frames.len() != 1 {
                return Err(SpoolError::Damaged {
                    path,
                    offset: frame.offset,
                    reason: bad.unwrap_or_else(|| "the frame's length changed".into()),
                });
            }
            bytes.drain(..FRAME_HEADER as usize);
            total += frame.len;
            out.push(bytes);
        }
        Ok(out)
    }

    /// Removes the oldest `n` records: the service acknowledged them. The cursor is written
    /// first, then wholly acknowledged segments are deleted. On an error the records are
    /// removed all the same (they were delivered); a reopened spool may then offer them again.
    pub fn ack(&mut self, n: usize) -> Result<(), SpoolError> {
        let n = n.min(self.pending.len());
        let Some(last) = n.checked_sub(1).and_then(|i| self.pending.get(i)).copied() else {
            return Ok(());
        };
        for f in self.pending.drain(..n) {
            self.pending_bytes -= FRAME_HEADER + f.len;
        }
        self.write_ack(Cursor {
            segment: last.segment,
            offset: last.end(),
        })?;
        self.reclaim()
    }

    /// Deletes the segments that hold no unacknowledged record (all of them when none waits).
    fn reclaim(&mut self) -> Result<(), SpoolError> {
        let keep_from = self.pending.front().map(|f| f.segment);
        while let Some(first) = self.segments.front().copied() {
            if keep_from.is_some_and(|k| first.number >= k) {
                break;
            }
            if self.segments.len() == 1 {
                self.writer = None;
            }
            let path = self.dir.join(segment_name(first.number));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
            self.disk_bytes -= first.len;
            self.segments.pop_front();
        }
        Ok(())
    }

    fn write_ack(&self, cursor: Cursor) -> Result<(), SpoolError> {
        let mut bytes = Vec::with_capacity(ACK_LEN);
        bytes.extend_from_slice(ACK_MAGIC);
        bytes.extend_from_slice(&cursor.segment.to_le_bytes());
        bytes.extend_from_slice(&cursor.offset.to_le_bytes());
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let tmp = self.dir.join(ACK_TMP);
        let path = self.dir.join(ACK_FILE);
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        if self.options.sync {
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        if self.options.sync {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(from: usize, to: usize) -> Vec<Vec<u8>> {
        (from..to)
            .map(|i| format!("{{\"record\":{i}}}").into_bytes())
            .collect()
    }

    fn all(spool: &Spool) -> Vec<Vec<u8>> {
        spool.peek(usize::MAX, u64::MAX).unwrap()
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn records_come_back_in_order_across_segments_and_acks() {
        let dir = tempfile::tempdir().unwrap();
        // 4 KiB segments: 1000 records of ~22 bytes span several.
        let (mut spool, report) =
            Spool::open(dir.path(), SpoolOptions::max_bytes(64 * 1024)).unwrap();
        assert_eq!(report, OpenReport::default());
        for chunk in 0..10 {
            spool
                .append(&records(chunk * 100, chunk * 100 + 100))
                .unwrap();
        }
        assert!(segments(dir.path()).len() > 3, "{:?}", segments(dir.path()));
        assert_eq!(all(&spool), records(0, 1000));
        assert_eq!(spool.peek(3, u64::MAX).unwrap(), records(0, 3));
        // A byte budget stops a peek early, but never below one record.
        assert_eq!(spool.peek(100, 15).unwrap(), records(0, 1));
        spool.ack(250).unwrap();
        assert_eq!(spool.len(), 750);
        assert_eq!(all(&spool), records(250, 1000));
        let before = segments(dir.path()).len();
        spool.ack(500).unwrap();
        assert!(
            segments(dir.path()).len() < before,
            "acknowledged segments are deleted"
        );
        spool.append(&records(1000, 1010)).unwrap();
        assert_eq!(all(&spool), records(750, 1010));
        spool.ack(usize::MAX).unwrap();
        assert!(spool.is_empty());
        assert!(
            segments(dir.path()).is_empty(),
            "an empty spool keeps no segment"
        );
        assert_eq!(spool.disk_bytes(), 0);
        spool.append(&records(2000, 2002)).unwrap();
        assert_eq!(all(&spool), records(2000, 2002));
    }

    #[test]
    fn it_survives_a_reopen_with_what_was_not_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) =
                Spool::open(dir.path(), SpoolOptions::max_bytes(64 * 1024)).unwrap();
            spool.append(&records(0, 600)).unwrap();
            spool.ack(123).unwrap();
            // Dropped without a word, as a crashed process would leave it.
        }
        let (mut spool, report) =
            Spool::open(dir.path(), SpoolOptions::max_bytes(64 * 1024)).unwrap();
        assert!(report.damage.is_empty(), "{:?}", report.damage);
        assert_eq!(report.pending, 477);
        assert_eq!(all(&spool), records(123, 600));
        spool.append(&records(600, 650)).unwrap();
        spool.ack(477).unwrap();
        drop(spool);
        let (spool, report) = Spool::open(dir.path(), SpoolOptions::max_bytes(64 * 1024)).unwrap();
        assert_eq!(report.pending, 50);
        assert_eq!(all(&spool), records(600, 650));
    }

    #[test]
    fn a_damaged_or_cut_tail_is_detected_by_the_crc_reported_and_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
        spool.append(&records(0, 5)).unwrap();
        drop(spool);
        let seg = segments(dir.path()).pop().unwrap();
        let len = std::fs::metadata(&seg).unwrap().len();
        // One flipped bit in the last record's payload.
        let mut bytes = std::fs::read(&seg).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x10;
        std::fs::write(&seg, &bytes).unwrap();
        let (mut spool, report) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
        assert_eq!(report.pending, 4);
        assert_eq!(report.damage.len(), 1, "{:?}", report.damage);
        let d = &report.damage[0];
        assert!(d.reason.contains("CRC"), "{d}");
        let frame = (len / 5) as u64;
        assert_eq!((d.offset, d.bytes), (len - frame, frame), "{d}");
        let kept = d.kept_in.clone().unwrap();
        assert_eq!(
            std::fs::read(&kept).unwrap(),
            bytes[(len - frame) as usize..]
        );
        assert_eq!(all(&spool), records(0, 4), "the damaged record is not used");
        // The spool goes on from the last good record.
        spool.append(&records(5, 6)).unwrap();
        drop(spool);

        // A write cut short: half a frame at the end.
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        let mut half = Vec::new();
        frame_bytes(b"{\"record\":99}", &mut half);
        f.write_all(&half[..half.len() / 2]).unwrap();
        drop(f);
        let (spool, report) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
        assert_eq!(report.damage.len(), 1, "{:?}", report.damage);
        assert!(
            report.damage[0].reason.contains("did not finish"),
            "{}",
            report.damage[0]
        );
        let mut want = records(0, 4);
        want.extend(records(5, 6));
        assert_eq!(all(&spool), want);
        drop(spool);
        // Once set aside, the spool is clean.
        let (_, report) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
        assert!(report.damage.is_empty());
    }

    #[test]
    fn damage_in_the_acknowledged_part_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
        spool.append(&records(0, 6)).unwrap();
        spool.ack(3).unwrap();
        drop(spool);
        let seg = segments(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[10] ^= 0xff; // inside the first (acknowledged) record
        std::fs::write(&seg, &bytes).unwrap();
        let (spool, report) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
        assert!(report.damage.is_empty(), "{:?}", report.damage);
        assert_eq!(all(&spool), records(3, 6));
    }

    #[test]
    fn a_damaged_ack_file_is_reported_and_records_are_offered_again() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
        spool.append(&records(0, 10)).unwrap();
        spool.ack(4).unwrap();
        drop(spool);
        std::fs::write(dir.path().join(ACK_FILE), b"garbage").unwrap();
        let (spool, report) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
        assert_eq!(report.damage.len(), 1);
        assert!(report.damage[0].reason.contains("sent again"));
        assert_eq!(all(&spool), records(0, 10));
    }

    #[test]
    fn a_full_spool_refuses_the_new_records_and_keeps_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let max = 2_000;
        let (mut spool, _) = Spool::open(dir.path(), SpoolOptions::max_bytes(max)).unwrap();
        let mut n = 0;
        let err = loop {
            match spool.append(&records(n, n + 1)) {
                Ok(()) => n += 1,
                Err(e) => break e,
            }
        };
        assert!(n > 50, "{n} records fit");
        let SpoolError::Full {
            used,
            needed,
            max_bytes,
            ..
        } = &err
        else {
            panic!("{err}");
        };
        assert!(used + needed > *max_bytes && *used <= *max_bytes, "{err}");
        assert!(err.to_string().contains("full"), "{err}");
        assert!(spool.disk_bytes() <= max);
        // A batch that does not fit is refused whole.
        assert!(matches!(
            spool.append(&records(n, n + 3)),
            Err(SpoolError::Full { .. })
        ));
        assert_eq!(
            all(&spool),
            records(0, n),
            "the oldest are kept, nothing else"
        );
        // Once the service took some, there is room again.
        spool.ack(n / 2).unwrap();
        spool.append(&records(n, n + 1)).unwrap();
        let too_large = vec![b'x'; max as usize];
        assert!(matches!(
            spool.append(&[too_large]),
            Err(SpoolError::TooLarge { .. })
        ));
        drop(spool);
        let (spool, report) = Spool::open(dir.path(), SpoolOptions::max_bytes(max)).unwrap();
        assert!(report.damage.is_empty());
        assert_eq!(all(&spool), records(n / 2, n + 1));
    }
}
