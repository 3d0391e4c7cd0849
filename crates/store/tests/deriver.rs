//! The sample deriver (`Store::open_with_deriver`) against a real redb file: records derived
//! from samples are stored in the transaction that stores the samples, with the deriver's
//! state, and the deriver's state always matches what the store holds.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use kora_model::*;
use kora_store::*;

const NOW: i64 = 1_800_000_000_000;
/// The toy deriver closes a window every `WINDOW` samples.
const WINDOW: usize = 4;

/// The toy deriver's state: how many samples it has counted, and the samples of the window
/// being filled (seq, ts_ms, value).
#[derive(Debug, Clone, Default, PartialEq)]
struct Count {
    samples: u64,
    open: Vec<(u64, i64, f64)>,
}

impl Count {
    fn encode(&self) -> Vec<u8> {
        let mut out = self.samples.to_le_bytes().to_vec();
        for (seq, ts, value) in &self.open {
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&ts.to_le_bytes());
            out.extend_from_slice(&value.to_le_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Count {
        let word = |i: usize| <[u8; 8]>::try_from(&bytes[i..i + 8]).unwrap();
        let open = (8..bytes.len())
            .step_by(24)
            .map(|i| {
                (
                    u64::from_le_bytes(word(i)),
                    i64::from_le_bytes(word(i + 8)),
                    f64::from_le_bytes(word(i + 16)),
                )
            })
            .collect();
        Count {
            samples: u64::from_le_bytes(word(0)),
            open,
        }
    }
}

#[derive(Clone, PartialEq)]
enum Event {
    /// `derive` was called with these samples: (seq, ts_ms).
    Derive(Vec<(u64, i64)>),
    Committed,
    RolledBack,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Derive(d) if d.len() > 4 => write!(
                f,
                "Derive({} samples, seqs {}..={})",
                d.len(),
                d[0].0,
                d[d.len() - 1].0
            ),
            Event::Derive(d) => write!(f, "Derive({d:?})"),
            Event::Committed => write!(f, "Committed"),
            Event::RolledBack => write!(f, "RolledBack"),
        }
    }
}

/// What the test sees of the deriver, which lives on the store's writer thread.
#[derive(Debug, Default)]
struct Seen {
    current: Count,
    committed: Count,
    events: Vec<Event>,
    /// What `make` was given at the last open.
    given: Option<Option<Vec<u8>>>,
}

/// Holds the writer inside the next `derive`: says "entered", then waits for "release".
type Gate = Arc<Mutex<Option<(Sender<()>, Receiver<()>)>>>;

struct Windows {
    seen: Arc<Mutex<Seen>>,
    gate: Gate,
}

impl SampleDeriver for Windows {
    fn derive(&mut self, samples: &[(u64, Sample)]) -> Vec<Record> {
        if let Some((entered, release)) = self.gate.lock().unwrap().take() {
            entered.send(()).unwrap();
            release.recv().unwrap();
        }
        let mut seen = self.seen.lock().unwrap();
        seen.events.push(Event::Derive(
            samples
                .iter()
                .map(|(seq, s)| (*seq, s.ts_ms.unwrap()))
                .collect(),
        ));
        let mut out = Vec::new();
        for (seq, sample) in samples {
            seen.current.samples += 1;
            seen.current
                .open
                .push((*seq, sample.ts_ms.unwrap(), sample.value.unwrap()));
            if seen.current.open.len() == WINDOW {
                let open = std::mem::take(&mut seen.current.open);
                let values = open.iter().map(|o| o.2);
                let (min, max) = (
                    values.clone().fold(f64::MAX, f64::min),
                    values.fold(0.0, f64::max),
                );
                out.push(Record::Window(WindowRecord {
                    ts_ms: open[WINDOW - 1].1,
                    window_kind: "count".into(),
                    metric: "ram_free_mb".into(),
                    scope: "host".into(),
                    start_ms: open[0].1,
                    end_ms: open[WINDOW - 1].1,
                    first_seq: Some(open[0].0),
                    last_seq: Some(open[WINDOW - 1].0),
                    count: WINDOW as u64,
                    min,
                    max,
                    p50: min,
                    p95: max,
                }));
            }
        }
        out
    }

    fn state(&self) -> Result<Vec<u8>, String> {
        Ok(self.seen.lock().unwrap().current.encode())
    }

    fn committed(&mut self) {
        let mut seen = self.seen.lock().unwrap();
        seen.committed = seen.current.clone();
        seen.events.push(Event::Committed);
    }

    fn rolled_back(&mut self) {
        let mut seen = self.seen.lock().unwrap();
        seen.current = seen.committed.clone();
        seen.events.push(Event::RolledBack);
    }
}

/// Opens `path` with a fresh toy deriver built from the stored state; the test watches it
/// through the answered `Seen` and holds it with the answered `Gate`.
fn open(path: &Path, options: StoreOptions) -> (Store, Arc<Mutex<Seen>>, Gate) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let gate: Gate = Arc::default();
    let (s, g) = (seen.clone(), gate.clone());
    let store = Store::open_with_deriver(path, options, move |state| {
        let count = state.as_deref().map(Count::decode).unwrap_or_default();
        let mut seen = s.lock().unwrap();
        seen.current = count.clone();
        seen.committed = count;
        seen.given = Some(state);
        Box::new(Windows {
            seen: s.clone(),
            gate: g,
        })
    })
    .unwrap();
    (store, seen, gate)
}

/// The state `make` was given at the last open, which must have been one.
fn given(seen: &Mutex<Seen>) -> Count {
    let state = seen.lock().unwrap().given.clone().unwrap();
    Count::decode(&state.expect("a stored state"))
}

/// A state of `samples` samples with no window open.
fn closed(samples: u64) -> Count {
    Count {
        samples,
        open: Vec::new(),
    }
}

fn ram(id: Option<&str>, ts: Option<i64>, value: f64) -> Sample {
    Sample {
        id: id.map(str::to_owned),
        ts_ms: ts,
        signal: Signal::RamFreeMb,
        value: Some(value),
        unavailable: None,
        device: None,
        model_id: None,
        session_id: None,
    }
}

fn rams(from: i64, n: i64) -> Vec<Sample> {
    (from..from + n)
        .map(|i| ram(None, Some(NOW - 10_000 + i), i as f64))
        .collect()
}

fn window(entry: &LogEntry) -> &WindowRecord {
    match &entry.record {
        Record::Window(w) => w,
        other => panic!("seq {}: not a window: {other:?}", entry.seq),
    }
}

/// The seqs of the stored windows, with the seq range each covers.
fn windows(store: &Store) -> Vec<(u64, u64, u64)> {
    store
        .scan_kind(RecordKind::Window, 0, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| {
            let w = window(e);
            (e.seq, w.first_seq.unwrap(), w.last_seq.unwrap())
        })
        .collect()
}

#[test]
fn derived_records_follow_their_samples_in_the_same_commit_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.redb");
    {
        let (store, seen, _) = open(&path, StoreOptions::default());
        assert_eq!(seen.lock().unwrap().given, Some(None));
        let mut batch = rams(0, 6);
        batch[2].ts_ms = None;
        let a = store.append(NOW, Batch::Samples(batch)).unwrap();
        // The batch's outcome counts its samples alone.
        assert_eq!(a.seqs, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!((a.accepted, a.duplicates), (6, 0));
        assert_eq!((a.first_new_seq, a.last_new_seq), (Some(1), Some(6)));
        // The window closed by the fourth sample is logged right after the batch's samples.
        let log = store.scan(0, 100).unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].seq, 7);
        let w = window(&log[0]);
        assert_eq!((w.first_seq, w.last_seq, w.count), (Some(1), Some(4), 4));
        assert_eq!((w.min, w.max), (0.0, 3.0));
        assert_eq!((w.start_ms, w.end_ms), (NOW - 10_000, NOW - 9_997));
        assert_eq!(
            store.stats().unwrap(),
            Stats {
                log_records: 1,
                samples: 6,
                series: 1,
                last_seq: Some(7)
            }
        );
        // One transaction: the deriver saw the samples as stored, the one sent without a time
        // stamped with the batch's now, then learnt of the commit once.
        {
            let seen = seen.lock().unwrap();
            let stored: Vec<(u64, i64)> = store
                .samples("ram_free_mb", i64::MIN, i64::MAX, 100)
                .unwrap()
                .iter()
                .map(|s| (s.seq, s.sample.ts_ms.unwrap()))
                .collect();
            let Event::Derive(derived) = &seen.events[0] else {
                panic!("{:?}", seen.events)
            };
            assert_eq!(derived[2], (3, NOW));
            let mut sorted = derived.clone();
            sorted.sort_unstable_by_key(|d| (d.1, d.0));
            assert_eq!(sorted, stored);
            assert_eq!(seen.events[1..], [Event::Committed]);
        }
        // A records batch is not shown to the deriver and commits no deriver state.
        let r = store
            .append(
                NOW,
                Batch::Records(vec![Record::ContextOom(ContextOom {
                    id: None,
                    ts_ms: None,
                    model_id: "m".into(),
                    session_id: "s".into(),
                })]),
            )
            .unwrap();
        assert_eq!(r.seqs, vec![8]);
        assert_eq!(seen.lock().unwrap().events.len(), 2);
        let b = store.append(NOW, Batch::Samples(rams(6, 2))).unwrap();
        assert_eq!(b.seqs, vec![9, 10]);
        assert_eq!(windows(&store), vec![(7, 1, 4), (11, 5, 10)]);
    }
    let (store, seen, _) = open(&path, StoreOptions::default());
    // The state stored by the last commit, with its window closed.
    assert_eq!(given(&seen), closed(8));
    let kinds: Vec<(u64, RecordKind)> = store
        .scan(0, 100)
        .unwrap()
        .iter()
        .map(|e| (e.seq, e.record.kind()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (7, RecordKind::Window),
            (8, RecordKind::ContextOom),
            (11, RecordKind::Window)
        ]
    );
    let recent: Vec<u64> = store
        .recent(None, Some(RecordKind::Window), 10)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(recent, vec![11, 7]);
    assert_eq!(store.stats().unwrap().log_records, 3);
    assert_eq!(store.stats().unwrap().samples, 8);
    assert_eq!(store.stats().unwrap().last_seq, Some(11));
    // The file stays an ordinary store.
    drop(store);
    let plain = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(plain.scan(0, 100).unwrap().len(), 3);
}

#[test]
fn the_state_given_at_open_is_that_of_the_last_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        store.append(NOW, Batch::Samples(rams(0, 1))).unwrap();
    }
    // A store written before its state table existed: it opens unchanged, with no state.
    {
        let db = redb::Database::open(&path).unwrap();
        let wtx = db.begin_write().unwrap();
        assert!(wtx.delete_table(tables::STATE).unwrap());
        wtx.commit().unwrap();
    }
    {
        let (store, seen, _) = open(&path, StoreOptions::default());
        assert_eq!(seen.lock().unwrap().given, Some(None));
        let a = store.append(NOW, Batch::Samples(rams(1, 3))).unwrap();
        assert_eq!(a.seqs, vec![2, 3, 4]);
    }
    {
        let (store, seen, _) = open(&path, StoreOptions::default());
        let count = given(&seen);
        assert_eq!(count.samples, 3);
        assert_eq!(
            count.open.iter().map(|o| o.0).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        // The deriver goes on from it: the next sample closes a window that began before the
        // reopen.
        store.append(NOW, Batch::Samples(rams(4, 1))).unwrap();
        assert_eq!(windows(&store), vec![(6, 2, 5)]);
    }
    let (_, seen, _) = open(&path, StoreOptions::default());
    assert_eq!(given(&seen), closed(4));
}

#[test]
fn duplicates_are_not_derived() {
    let dir = tempfile::tempdir().unwrap();
    let (store, seen, _) = open(&dir.path().join("d.redb"), StoreOptions::default());
    let abc = vec![
        ram(Some("a"), None, 1.0),
        ram(Some("b"), None, 2.0),
        ram(Some("c"), None, 3.0),
    ];
    store.append(NOW, Batch::Samples(abc.clone())).unwrap();
    // A retry, later, with one new sample: only that one is derived.
    let mut retry = abc.clone();
    retry.insert(1, ram(Some("d"), None, 4.0));
    let a = store.append(NOW + 5_000, Batch::Samples(retry)).unwrap();
    assert_eq!(a.seqs, vec![1, 4, 2, 3]);
    assert_eq!((a.accepted, a.duplicates), (1, 3));
    assert_eq!(windows(&store), vec![(5, 1, 4)]);
    // A batch of duplicates alone: no derive, no state written.
    let again = store.append(NOW + 9_000, Batch::Samples(abc)).unwrap();
    assert_eq!(again.duplicates, 3);
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.events,
        vec![
            Event::Derive(vec![(1, NOW), (2, NOW), (3, NOW)]),
            Event::Committed,
            Event::Derive(vec![(4, NOW + 5_000)]),
            Event::Committed,
        ]
    );
    assert_eq!(seen.committed.samples, 4);
}

#[test]
fn a_batch_refused_inside_a_group_never_reaches_the_deriver() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.redb");
    {
        let (store, seen, gate) = open(&path, StoreOptions::default());
        store
            .append(NOW, Batch::Samples(vec![ram(Some("x"), None, 1.0)]))
            .unwrap();
        // Hold the writer inside the next group, so that the batches submitted meanwhile wait
        // and are taken as one group when it is released.
        let (entered_tx, entered) = channel();
        let (release, release_rx) = channel();
        *gate.lock().unwrap() = Some((entered_tx, release_rx));
        let (done_tx, done) = channel();
        let submit = |name: &'static str, batch: Vec<Sample>| {
            let tx = done_tx.clone();
            store
                .submit(NOW, Batch::Samples(batch), move |r| {
                    tx.send((name, r)).unwrap();
                })
                .unwrap();
        };
        submit("held", rams(0, 1));
        entered.recv().unwrap();
        submit("a", rams(1, 2));
        // A new sample, then a reused id with other content: the whole batch is refused.
        submit(
            "refused",
            vec![ram(Some("y"), None, 5.0), ram(Some("x"), None, 2.0)],
        );
        submit("c", rams(3, 2));
        release.send(()).unwrap();
        let mut outcomes: Vec<(&str, Result<Appended, WriteError>)> =
            (0..4).map(|_| done.recv().unwrap()).collect();
        outcomes.sort_by_key(|o| o.0);
        let seqs = |i: usize| outcomes[i].1.as_ref().unwrap().seqs.clone();
        assert_eq!(outcomes[0].0, "a");
        assert_eq!(outcomes[3].0, "refused");
        assert!(
            matches!(&outcomes[3].1, Err(WriteError::IdConflict { index: 1, .. })),
            "{:?}",
            outcomes[3].1
        );
        assert_eq!(seqs(2), vec![2]); // held
        // "a" closes a window (x, held, a, a); its record comes right after a's samples and
        // before c's, all in one group commit.
        assert_eq!(seqs(0), vec![3, 4]);
        assert_eq!(seqs(1), vec![6, 7]); // c
        assert_eq!(windows(&store), vec![(5, 1, 4)]);
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.events[2..],
            [
                Event::Derive(vec![(2, NOW - 10_000)]),
                Event::Committed,
                Event::Derive(vec![(3, NOW - 9_999), (4, NOW - 9_998)]),
                Event::Derive(vec![(6, NOW - 9_997), (7, NOW - 9_996)]),
                Event::Committed,
            ]
        );
        // The refused batch stored nothing, and its samples are not counted.
        assert_eq!(seen.committed.samples, 6);
        assert_eq!(store.stats().unwrap().samples, 6);
        assert!(
            store
                .samples("ram_free_mb", 0, i64::MAX, 100)
                .unwrap()
                .iter()
                .all(|s| s.sample.id.as_deref() != Some("y"))
        );
    }
    let (store, seen, _) = open(&path, StoreOptions::default());
    let count = given(&seen);
    assert_eq!(count.samples, store.stats().unwrap().samples);
    assert_eq!(
        count.open.iter().map(|o| o.0).collect::<Vec<_>>(),
        vec![6, 7]
    );
}

/// A small tmpfs, to fill the disk under the store (it needs root).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = std::env::temp_dir().join(format!("kora-store-deriver-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(&dir);
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Fills the file system in `dir`, then frees `leave` bytes of the filler; answers its path.
fn fill(dir: &Path, leave: u64) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let small = vec![0xa5u8; 512];
    while f.write_all(&small).is_ok() {}
    while f.write_all(&[0xa5]).is_ok() {}
    let _ = f.sync_all();
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(leave)).unwrap();
    path
}

#[test]
fn a_failed_commit_rolls_the_deriver_back_and_a_retry_derives_again() {
    let fs = match Tmpfs::mount("4m") {
        Ok(fs) => fs,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED failed-commit test: cannot mount a tmpfs ({e}); it needs root");
            return;
        }
        Err(e) => panic!("the failed-commit test needs a tmpfs mount (run as root): {e}"),
    };
    let path = fs.0.join("f.redb");
    let (store, seen, _) = open(&path, StoreOptions::default());
    // Samples with ids, so that each batch needs room in the id table too. A few batches fit
    // in the room left, then one fails.
    let batch = |from: usize| -> Vec<Sample> {
        (from..from + 250)
            .map(|i| {
                ram(
                    Some(&format!("s{i}")),
                    Some(NOW - 1_000_000 + i as i64),
                    i as f64,
                )
            })
            .collect()
    };
    store
        .append(NOW, Batch::Samples(batch(0)[..2].to_vec()))
        .unwrap();
    let filler = fill(&fs.0, 256 * 1024);
    let mut stored = 2;
    let (failed, error) = loop {
        let b = batch(stored);
        match store.append(NOW, Batch::Samples(b.clone())) {
            Ok(_) => stored += b.len(),
            Err(e) => break (b, e),
        }
        assert!(stored < 100_000, "the disk never filled");
    };
    assert!(
        matches!(error, WriteError::DiskFull(_) | WriteError::Storage(_)),
        "{error:?}"
    );
    let failed_seqs = {
        let seen = seen.lock().unwrap();
        // The failed transaction derived the batch, then was rolled back to the last commit.
        let n = seen.events.len();
        assert_eq!(
            seen.events[n - 1],
            Event::RolledBack,
            "{:?}",
            &seen.events[n - 3..]
        );
        let Event::Derive(derived) = &seen.events[n - 2] else {
            panic!("{:?}", &seen.events[n - 3..])
        };
        assert_eq!(derived.len(), failed.len());
        assert_eq!(seen.current, seen.committed);
        assert_eq!(seen.committed.samples, stored as u64);
        derived.iter().map(|d| d.0).collect::<Vec<_>>()
    };
    // Space comes back: the same batch is retried until the store has reopened the file, and
    // is derived again from the rolled-back state.
    std::fs::remove_file(&filler).unwrap();
    let started = std::time::Instant::now();
    let a = loop {
        match store.append(NOW, Batch::Samples(failed.clone())) {
            Ok(a) => break a,
            Err(e) => {
                assert!(started.elapsed().as_secs() < 5, "no recovery: {e:?}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    };
    assert_eq!(a.accepted, failed.len() as u64);
    stored += failed.len();
    {
        let seen = seen.lock().unwrap();
        let n = seen.events.len();
        assert_eq!(seen.events[n - 1], Event::Committed);
        let Event::Derive(derived) = &seen.events[n - 2] else {
            panic!("{:?}", &seen.events[n - 3..])
        };
        assert_eq!(derived.iter().map(|d| d.0).collect::<Vec<_>>(), a.seqs);
        assert_eq!(a.seqs, failed_seqs);
        assert_eq!(seen.committed.samples, stored as u64);
    }
    // Every window covers stored samples only, and every stored sample up to the open window
    // is covered once.
    let samples: Vec<u64> = store
        .samples("ram_free_mb", i64::MIN, i64::MAX, usize::MAX)
        .unwrap()
        .iter()
        .map(|s| s.seq)
        .collect();
    assert_eq!(samples.len(), stored);
    let covered: Vec<(u64, u64)> = windows(&store).iter().map(|w| (w.1, w.2)).collect();
    let expected: Vec<(u64, u64)> = samples
        .chunks_exact(WINDOW)
        .map(|c| (c[0], c[WINDOW - 1]))
        .collect();
    assert_eq!(covered, expected);
    drop(store);
    let (store, seen, _) = open(&path, StoreOptions::default());
    assert_eq!(given(&seen).samples, stored as u64);
    assert_eq!(store.stats().unwrap().samples, stored as u64);
}
