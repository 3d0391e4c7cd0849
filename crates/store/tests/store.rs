//! The store against a real redb file in a temporary directory.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use kora_model::*;
use kora_store::*;
use redb::ReadableTable;

const NOW: i64 = 1_800_000_000_000;

fn run(id: Option<&str>, run_id: &str) -> Record {
    Record::Run(Run {
        id: id.map(str::to_owned),
        ts_ms: None,
        run_id: run_id.into(),
        session_id: "s1".into(),
        model_id: "llama-8b".into(),
        substrate: Substrate::Local,
        prompt_hash: prompt_hash("hello"),
        context_tokens: 100,
        tokens_in: Some(10),
        tokens_out: Some(20),
        total_tokens: Some(30),
        model_latency_ms: 100.0,
        total_latency_ms: 120.0,
        deterministic_stage_ms: 20.0,
        model_stage_ms: 100.0,
        validation_retry_count: 0,
        budget_breach_count: 0,
        queue_wait_ms: None,
        prompt_tokens_sent: None,
        stages: None,
    })
}

fn sample(signal: Signal, ts: i64, value: f64) -> Sample {
    Sample::reading(signal, ts, value)
}

#[test]
fn records_survive_reopen_and_seq_keeps_increasing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kora.redb");
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        let a = store
            .append(NOW, Batch::Records(vec![run(None, "r1"), run(None, "r2")]))
            .unwrap();
        assert_eq!(a.seqs, vec![1, 2]);
        let s = store
            .append(
                NOW,
                Batch::Samples(vec![
                    sample(Signal::RamFreeMb, NOW - 1000, 100.0),
                    sample(Signal::RamFreeMb, NOW, 90.0),
                ]),
            )
            .unwrap();
        assert_eq!(s.seqs, vec![3, 4]);
    }
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let stats = store.stats().unwrap();
    assert_eq!((stats.log_records, stats.samples, stats.series), (2, 2, 1));
    assert_eq!(stats.last_seq, Some(4));
    let entries = store.scan(0, 100).unwrap();
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    // The server stamped the time on records that came without one.
    assert_eq!(entries[0].record.ts_ms(), Some(NOW));
    let a = store
        .append(NOW, Batch::Records(vec![run(None, "r3")]))
        .unwrap();
    assert_eq!(a.seqs, vec![5]);
    let got = store
        .samples("ram_free_mb", NOW - 1000, NOW + 1, 10)
        .unwrap();
    assert_eq!(
        got.iter().map(|s| s.sample.value).collect::<Vec<_>>(),
        vec![Some(100.0), Some(90.0)]
    );
    assert_eq!(
        store
            .samples("ram_free_mb", NOW, NOW + 1, 10)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn kind_and_time_indexes_scan_only_what_they_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("k.redb"), StoreOptions::default()).unwrap();
    let mut batch = Vec::new();
    for i in 0..10 {
        let mut r = run(None, &format!("r{i}"));
        if let Record::Run(x) = &mut r {
            x.ts_ms = Some(NOW - 10_000 + i * 1000);
        }
        batch.push(r);
        batch.push(Record::SessionStarted(SessionEvent {
            id: None,
            ts_ms: Some(NOW - 10_000 + i * 1000),
            session_id: format!("s{i}"),
        }));
    }
    store.append(NOW, Batch::Records(batch)).unwrap();
    let runs = store.scan_kind(RecordKind::Run, 0, 100).unwrap();
    assert_eq!(runs.len(), 10);
    assert!(runs.iter().all(|e| e.record.kind() == RecordKind::Run));
    let recent = store
        .recent(None, Some(RecordKind::SessionStarted), 3)
        .unwrap();
    assert_eq!(
        recent.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![20, 18, 16]
    );
    let page2 = store
        .recent(Some(16), Some(RecordKind::SessionStarted), 2)
        .unwrap();
    assert_eq!(
        page2.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![14, 12]
    );
    let window = store.scan_time(NOW - 10_000, NOW - 8_000, 100).unwrap();
    assert_eq!(window.len(), 4);
}

#[test]
fn retried_ids_are_stored_once_and_reused_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("i.redb"), StoreOptions::default()).unwrap();
    let first = store
        .append(
            NOW,
            Batch::Records(vec![run(Some("a"), "r1"), run(Some("b"), "r2")]),
        )
        .unwrap();
    // A retry, later: the same content without ts_ms is recognised even though the server
    // would stamp another time now.
    let retry = store
        .append(
            NOW + 5000,
            Batch::Records(vec![run(Some("a"), "r1"), run(Some("c"), "r3")]),
        )
        .unwrap();
    assert_eq!(retry.duplicates, 1);
    assert_eq!(retry.accepted, 1);
    assert_eq!(retry.seqs[0], first.seqs[0]);
    let conflict = store
        .append(
            NOW,
            Batch::Records(vec![run(Some("d"), "r4"), run(Some("b"), "other")]),
        )
        .unwrap_err();
    assert!(
        matches!(conflict, WriteError::IdConflict { index: 1, .. }),
        "{conflict:?}"
    );
    // The refused batch stored nothing, not even its first, valid item.
    assert_eq!(store.stats().unwrap().log_records, 3);
}

#[test]
fn client_ids_are_remembered_for_their_retention_after_they_were_stored() {
    const DAY: i64 = 86_400_000;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("h.redb"), StoreOptions::default()).unwrap();
    let retention = Retention::default();
    assert_eq!(retention.ids_ms, 30 * DAY);
    // Stored on day 0 and day 20; a sample with an id, stored on day 0 too.
    let first = store
        .append(NOW, Batch::Records(vec![run(Some("a"), "r1")]))
        .unwrap();
    let mut s = sample(Signal::CpuLoadPct, NOW - 40 * DAY, 1.0);
    s.id = Some("s1".into());
    store.append(NOW, Batch::Samples(vec![s.clone()])).unwrap();
    store
        .append(NOW + 20 * DAY, Batch::Records(vec![run(Some("b"), "r2")]))
        .unwrap();
    // Day 29: nothing is forgotten, so a retry of "a" is still recognised.
    let c = store.compact(NOW + 29 * DAY, &retention).unwrap();
    assert_eq!(c.ids_forgotten, 0);
    let retry = store
        .append(NOW + 29 * DAY, Batch::Records(vec![run(Some("a"), "r1")]))
        .unwrap();
    assert_eq!((retry.duplicates, retry.seqs[0]), (1, first.seqs[0]));
    // Day 31: the ids stored on day 0 are forgotten (the sample's own time, 40 days before,
    // does not count), the one stored on day 20 is kept.
    let c = store.compact(NOW + 31 * DAY, &retention).unwrap();
    assert_eq!((c.ids_forgotten, c.more), (2, false));
    assert_eq!(
        store
            .compact(NOW + 31 * DAY, &retention)
            .unwrap()
            .ids_forgotten,
        0
    );
    let again = store
        .append(NOW + 31 * DAY, Batch::Records(vec![run(Some("a"), "r1")]))
        .unwrap();
    assert_eq!(
        again.accepted, 1,
        "a retry after the horizon is stored anew"
    );
    assert!(again.seqs[0] > first.seqs[0]);
    let sample_again = store
        .append(NOW + 31 * DAY, Batch::Samples(vec![s]))
        .unwrap();
    assert_eq!(sample_again.accepted, 1);
    let kept = store
        .append(
            NOW + 31 * DAY,
            Batch::Records(vec![run(Some("b"), "other")]),
        )
        .unwrap_err();
    assert!(matches!(kept, WriteError::IdConflict { .. }), "{kept:?}");
    // The id stored again on day 31 is remembered from then on.
    assert_eq!(
        store
            .compact(NOW + 59 * DAY, &retention)
            .unwrap()
            .ids_forgotten,
        1
    );
    let retry = store
        .append(NOW + 59 * DAY, Batch::Records(vec![run(Some("a"), "r1")]))
        .unwrap();
    assert_eq!((retry.duplicates, retry.seqs[0]), (1, again.seqs[0]));
}

#[test]
fn concurrent_writers_share_commits_and_every_ack_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("g.redb"), StoreOptions::default()).unwrap());
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| {
                        store
                            .append(
                                NOW,
                                Batch::Records(vec![run(Some(&format!("{t}-{i}")), "r")]),
                            )
                            .unwrap()
                            .seqs[0]
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 800);
    assert_eq!(store.scan(0, 10_000).unwrap().len(), 800);
}

#[test]
fn a_newer_format_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(tables::META)
            .unwrap()
            .insert(tables::K_FORMAT_VERSION, FORMAT_VERSION + 1)
            .unwrap();
        w.commit().unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path, StoreOptions::default()).unwrap_err();
    assert!(matches!(err, OpenError::FormatTooNew { found, .. } if found == FORMAT_VERSION + 1));
    assert!(err.to_string().contains("new.redb"), "{err}");
    assert!(
        std::fs::read(&path).unwrap() == before,
        "the refused file was changed"
    );
}

#[test]
fn foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.redb");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let err = Store::open(&path, StoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains("garbage.redb"), "{err}");
    assert!(
        std::fs::read(&path).unwrap() == vec![0x5a; 8192],
        "the refused file was changed"
    );
}

#[test]
fn a_second_open_of_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.redb");
    let _store = Store::open(&path, StoreOptions::default()).unwrap();
    let err = Store::open(&path, StoreOptions::default()).unwrap_err();
    assert!(matches!(err, OpenError::AlreadyOpen { .. }), "{err:?}");
}

#[test]
fn damaged_values_are_reported_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crc.redb");
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        store
            .append(NOW, Batch::Records(vec![run(None, "r1")]))
            .unwrap();
    }
    {
        // Flip a byte of the stored value through redb itself, as a bad sector would.
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut log = w.open_table(tables::LOG).unwrap();
            let mut bytes = log.get(1).unwrap().unwrap().value().to_vec();
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
            log.insert(1, bytes.as_slice()).unwrap();
        }
        w.commit().unwrap();
    }
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let err = store.scan(0, 10).unwrap_err();
    assert!(
        matches!(err, ReadError::Corrupt { table: "log", .. }),
        "{err:?}"
    );
}

#[test]
fn derived_batches_store_the_engine_cursor_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.redb");
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        assert_eq!(store.engine_cursor().unwrap(), 0);
        store
            .append(NOW, Batch::Records(vec![run(None, "r1")]))
            .unwrap();
        let window = Record::Window(WindowRecord {
            ts_ms: NOW,
            window_kind: "runs".into(),
            metric: "model_latency_ms".into(),
            scope: "llama-8b".into(),
            start_ms: NOW,
            end_ms: NOW,
            first_seq: Some(1),
            last_seq: Some(1),
            count: 1,
            min: 100.0,
            max: 100.0,
            p50: 100.0,
            p95: 100.0,
        });
        let a = store
            .append(
                NOW,
                Batch::Derived {
                    records: vec![window],
                    cursor: 1,
                    state: vec![("follower_checkpoint/a".into(), b"one".to_vec())],
                },
            )
            .unwrap();
        assert_eq!(a.seqs, vec![2]);
        assert_eq!(
            store.state("follower_checkpoint/a").unwrap().as_deref(),
            Some(&b"one"[..])
        );
        // A later batch replaces the key in place; it adds no log record.
        store
            .append(
                NOW,
                Batch::Derived {
                    records: vec![],
                    cursor: 2,
                    state: vec![("follower_checkpoint/a".into(), b"two".to_vec())],
                },
            )
            .unwrap();
    }
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(store.engine_cursor().unwrap(), 2);
    assert_eq!(store.stats().unwrap().log_records, 2);
    assert_eq!(
        store.state("follower_checkpoint/a").unwrap().as_deref(),
        Some(&b"two"[..])
    );
    assert_eq!(store.state("follower_checkpoint/b").unwrap(), None);
}

#[test]
fn derived_state_is_checked_and_the_deriver_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let key = "follower_checkpoint/1.0.0/abc";
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        let err = store
            .append(
                NOW,
                Batch::Derived {
                    records: vec![run(None, "r1")],
                    cursor: 1,
                    state: vec![(tables::K_SAMPLE_DERIVER.into(), b"x".to_vec())],
                },
            )
            .unwrap_err();
        assert!(err.to_string().contains("sample_deriver"), "{err}");
        assert_eq!(store.stats().unwrap().log_records, 0, "nothing was stored");
        assert_eq!(store.engine_cursor().unwrap(), 0);
        store
            .append(
                NOW,
                Batch::Derived {
                    records: vec![],
                    cursor: 0,
                    state: vec![(key.into(), b"checkpoint".to_vec())],
                },
            )
            .unwrap();
    }
    {
        // Flip a byte of the stored value through redb itself, as a bad sector would.
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut state = w.open_table(tables::STATE).unwrap();
            let mut bytes = state.get(key).unwrap().unwrap().value().to_vec();
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
            state.insert(key, bytes.as_slice()).unwrap();
        }
        w.commit().unwrap();
    }
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let err = store.state(key).unwrap_err();
    assert!(
        matches!(&err, ReadError::Corrupt { table: "state", key: k } if k == key),
        "{err:?}"
    );
    assert!(err.to_string().contains(key), "{err}");
}

#[test]
fn the_run_index_answers_the_last_runs_of_one_model_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.redb");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let mut batch = Vec::new();
    for i in 0..30u32 {
        let mut r = run(None, &format!("r{i}"));
        if let Record::Run(x) = &mut r {
            x.model_id = if i % 3 == 0 { "qwen-7b" } else { "llama-8b" }.into();
            x.model_latency_ms = f64::from(i) * 10.0;
            x.validation_retry_count = i;
            x.tokens_in = (i % 2 == 0).then_some(u64::from(i));
            x.ts_ms = Some(NOW - 100_000 + i64::from(i));
        }
        batch.push(r);
    }
    let a = store.append(NOW, Batch::Records(batch)).unwrap();
    let rows = store.recent_runs("qwen-7b", None, 4).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.model_latency_ms).collect::<Vec<_>>(),
        vec![270.0, 240.0, 210.0, 180.0]
    );
    let last = rows[0];
    assert_eq!(last.seq, a.seqs[27]);
    assert_eq!(last.ts_ms, NOW - 100_000 + 27);
    assert_eq!(last.validation_retry_count, 27);
    assert_eq!(last.tokens_in, None);
    assert_eq!(last.tokens_out, Some(20));
    assert_eq!(rows[1].tokens_in, Some(24));
    // Paging with `before`, and a model with no runs.
    let older = store
        .recent_runs("qwen-7b", Some(rows[3].seq), 100)
        .unwrap();
    assert_eq!(older.len(), 6);
    assert_eq!(store.recent_runs("llama-8b", None, 1000).unwrap().len(), 20);
    assert!(store.recent_runs("nope", None, 10).unwrap().is_empty());
}

/// A clean close checks the file and records its length and CRC-32 beside it; the next open of
/// exactly those bytes skips the page check, and removes the record before it writes. Bytes
/// changed since (damage, or a record that does not match) send the open to the page check.
#[test]
fn a_clean_close_vouches_for_the_bytes_the_next_open_finds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kora.redb");
    let checked = dir.path().join("kora.redb.checked");
    let open = || Store::open(&path, StoreOptions::default());
    {
        let store = open().unwrap();
        assert_eq!(store.open_check(), OpenCheck::New);
        store
            .append(NOW, Batch::Records(vec![run(None, "r1"), run(None, "r2")]))
            .unwrap();
        assert!(!checked.exists());
    }
    assert!(checked.exists(), "a clean close leaves its record");
    for round in 0..3 {
        let store = open().unwrap();
        assert_eq!(
            store.open_check(),
            OpenCheck::UnchangedSinceCheckedClose,
            "round {round}"
        );
        assert!(!checked.exists(), "removed before anything is written");
        assert_eq!(store.stats().unwrap().log_records, 2 + round);
        // A close after writes checks the pages again; one after none only records.
        if round < 2 {
            store
                .append(NOW, Batch::Records(vec![run(None, &format!("x{round}"))]))
                .unwrap();
        }
    }
    // A record that does not match the bytes: every page is checked.
    let text = std::fs::read_to_string(&checked).unwrap();
    std::fs::write(&checked, text.replace("crc32 ", "crc32 0")).unwrap();
    let store = open().unwrap();
    assert_eq!(store.open_check(), OpenCheck::PagesVerified);
    drop(store);
    // Damage after a clean close: the record no longer matches, and the page check refuses
    // the file (bit flips in every page of the file's second half, as a failing disk would).
    assert!(checked.exists());
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    for page in (len / 2 / 4096)..(len / 4096) {
        bytes[page * 4096 + 100] ^= 0x10;
    }
    std::fs::write(&path, &bytes).unwrap();
    match open() {
        Err(OpenError::NotAStore { .. }) => {}
        Ok(store) => panic!("a damaged file was opened ({:?})", store.open_check()),
        Err(e) => panic!("refused for another reason: {e}"),
    }
}

/// The share of `path`'s pages that redb does not use (the file's length against the pages
/// its allocator holds), read from a copy so that `path` itself is not opened.
fn free_share(path: &std::path::Path) -> f64 {
    let copy = path.with_extension("copy");
    std::fs::copy(path, &copy).unwrap();
    let db = redb::Database::open(&copy).unwrap();
    let wtx = db.begin_write().unwrap();
    let stats = wtx.stats().unwrap();
    wtx.abort().unwrap();
    let pages = std::fs::metadata(&copy).unwrap().len() / stats.page_size() as u64;
    (pages - stats.allocated_pages()) as f64 / pages as f64
}

/// Samples sent a tick at a time rewrite their series' heads at every commit, and the pages
/// freed by those rewrites stay in the file: a clean close gives them back (redb's compaction)
/// when they are a tenth of it or more, and the next open still finds every sample and the
/// bytes the close vouched for.
#[test]
fn a_clean_close_gives_back_the_free_pages_of_rewritten_heads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kora.redb");
    const TICKS: i64 = 3_000;
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        for t in 0..TICKS {
            let batch = Signal::ALL
                .iter()
                .map(|s| sample(*s, NOW - (TICKS - t) * 1000, (t % 97) as f64))
                .collect();
            store.append(NOW, Batch::Samples(batch)).unwrap();
        }
    }
    let share = free_share(&path);
    assert!(
        share < 0.10,
        "{:.1} % of the file's pages are free after a clean close",
        share * 100.0
    );
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(store.open_check(), OpenCheck::UnchangedSinceCheckedClose);
    assert_eq!(
        store.stats().unwrap().samples,
        TICKS as u64 * Signal::ALL.len() as u64
    );
}

/// The share of a table's page bytes its rows fill, in a copy of the file.
fn table_fill(path: &std::path::Path, table: &str) -> f64 {
    use redb::{ReadableDatabase, ReadableTableMetadata};
    let copy = path.with_extension("fill");
    std::fs::copy(path, &copy).unwrap();
    let db = redb::Database::open(&copy).unwrap();
    let rtx = db.begin_read().unwrap();
    let t = rtx
        .open_untyped_table(redb::TableDefinition::<u64, &[u8]>::new(table))
        .unwrap();
    let s = t.stats().unwrap();
    s.stored_bytes() as f64 / (s.stored_bytes() + s.metadata_bytes() + s.fragmented_bytes()) as f64
}

/// Sealing moves runs out of the log and leaves the events between them in pages it emptied
/// (redb never merges them): a clean close rebuilds the log with full pages and gives the
/// emptied ones back, and every record reads as it did.
#[test]
fn a_clean_close_rebuilds_the_log_that_sealing_left_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kora.redb");
    let records = {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        for batch in 0..80 {
            let mut records = Vec::new();
            for i in 0..100 {
                records.push(Record::SessionStarted(SessionEvent {
                    id: None,
                    ts_ms: None,
                    session_id: format!("session-{batch}-{i}-{}", "x".repeat(100)),
                }));
                for r in 0..4 {
                    records.push(run(None, &format!("r{batch}-{i}-{r}")));
                }
            }
            store.append(NOW + batch, Batch::Records(records)).unwrap();
        }
        let records = store.scan(0, usize::MAX).unwrap();
        assert_eq!(records.len(), 40_000);
        records
    };
    let fill = table_fill(&path, "log");
    assert!(
        fill > 0.85,
        "the log's rows fill {:.0} % of its pages after a clean close",
        fill * 100.0
    );
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(store.open_check(), OpenCheck::UnchangedSinceCheckedClose);
    assert_eq!(store.scan(0, usize::MAX).unwrap(), records);
    assert_eq!(
        store
            .scan_kind(RecordKind::SessionStarted, 0, usize::MAX)
            .unwrap()
            .len(),
        8_000
    );
}
