//! Sealed windows and runs: the log reads the same, record for record, before and after its
//! windows and runs move into compressed chunks, and a format 2 store written by an earlier
//! build converts (through format 3 to 4: windows, then runs sealed).

#![allow(clippy::unwrap_used)]

use kora_model::*;
use kora_store::tables::{
    IDS, IDS_BY_TIME, K_FORMAT_VERSION, K_UNSEALED_RUNS, K_UNSEALED_WINDOWS, LOG, META, RUN_CHUNKS,
    RUN_HEAD, RUN_INDEX, RUN_MODELS, WINDOW_CHUNKS,
};
use kora_store::*;
use redb::{ReadableDatabase, ReadableTableMetadata};

const T0: i64 = 1_800_000_000_000;
const MINUTE: i64 = 60_000;
const CHUNK: usize = 16;

fn options() -> StoreOptions {
    StoreOptions {
        window_chunk: CHUNK,
        run_chunk: CHUNK,
        // 50 runs a model: head rows, chunks of 2 and chunks merged from 8 of them.
        run_index_chunk: 2,
        ..StoreOptions::default()
    }
}

fn window(minute: i64, metric: &str, value: f64) -> Record {
    Record::Window(WindowRecord {
        ts_ms: T0 + (minute + 1) * MINUTE + 5_000,
        window_kind: "time".into(),
        metric: metric.into(),
        scope: "host".into(),
        start_ms: T0 + minute * MINUTE,
        end_ms: T0 + (minute + 1) * MINUTE,
        first_seq: None,
        last_seq: None,
        count: 12,
        min: value,
        max: value * 2.0,
        p50: value * 1.5,
        p95: value * 1.9,
    })
}

fn session(minute: i64) -> Record {
    Record::SessionStarted(SessionEvent {
        id: None,
        ts_ms: Some(T0 + minute * MINUTE + 30_000),
        session_id: format!("s{minute}"),
    })
}

fn run(minute: i64) -> Record {
    Record::Run(Run {
        id: Some(format!("client-{minute}")),
        ts_ms: (minute % 5 != 0).then_some(T0 + minute * MINUTE + 40_000),
        run_id: format!("run-{minute}"),
        session_id: format!("s{minute}"),
        model_id: ["qwen-7b", "llama-8b"][(minute % 2) as usize].into(),
        substrate: Substrate::Local,
        prompt_hash: format!("{:064x}", minute * 7919),
        context_tokens: 1_000 + minute as u64,
        tokens_in: Some(900),
        tokens_out: (minute % 3 != 0).then_some(120),
        total_tokens: None,
        model_latency_ms: 1_000.0 + minute as f64 / 3.0,
        total_latency_ms: 1_100.0 + minute as f64 / 3.0,
        deterministic_stage_ms: 100.0,
        model_stage_ms: 1_000.0 + minute as f64 / 3.0,
        validation_retry_count: (minute % 4) as u32,
        budget_breach_count: 0,
        queue_wait_ms: None,
        prompt_tokens_sent: None,
        stages: (minute % 2 == 0).then(|| {
            vec![Stage {
                name: "generate".into(),
                kind: StageKind::Model,
                ms: 1_000.0,
            }]
        }),
    })
}

/// 100 minutes: each a samples batch (which takes seqs, leaving gaps in the log), then a
/// session event, three windows and a run (some without a time: the store stamps them).
/// Answers the log as appended, stamped.
fn fill(store: &Store) -> Vec<LogEntry> {
    let mut expected = Vec::new();
    for minute in 0..100 {
        let ts = T0 + minute * MINUTE;
        store
            .append(
                ts,
                Batch::Samples(vec![
                    Sample::reading(Signal::CpuLoadPct, ts, 10.0),
                    Sample::reading(Signal::RamFreeMb, ts, 2048.0),
                ]),
            )
            .unwrap();
        let records = vec![
            session(minute),
            window(minute, "cpu_load_pct", minute as f64 + 0.25),
            window(minute, "ram_free_mb", 4096.0 - minute as f64),
            window(minute, "queue_wait_ms/model=m", 1.0 / (minute + 1) as f64),
            run(minute),
        ];
        let appended = store
            .append(ts + 59_000, Batch::Records(records.clone()))
            .unwrap();
        for (seq, mut record) in appended.seqs.into_iter().zip(records) {
            record.stamp(ts + 59_000);
            expected.push(LogEntry { seq, record });
        }
    }
    expected
}

fn assert_reads_match(store: &Store, expected: &[LogEntry]) {
    let max = usize::MAX;
    assert_eq!(store.scan(0, max).unwrap(), expected);
    // Pages from every start, of sizes that end inside and across chunks.
    for (start, page) in [(0, 7), (5, 16), (40, 3), (150, 50), (333, 1)] {
        let from = expected[start.min(expected.len() - 1)].seq;
        let want: Vec<_> = expected
            .iter()
            .filter(|e| e.seq >= from)
            .take(page)
            .cloned()
            .collect();
        assert_eq!(
            store.scan(from, page).unwrap(),
            want,
            "scan from {from}, {page}"
        );
    }
    // Newest first, page by page.
    let mut got = Vec::new();
    let mut before = None;
    loop {
        let page = store.recent(before, None, 13).unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.seq);
        got.extend(page);
    }
    let reversed: Vec<_> = expected.iter().rev().cloned().collect();
    assert_eq!(got, reversed);
    // One kind: windows, newest first and oldest first, from any seq.
    let windows: Vec<_> = expected
        .iter()
        .filter(|e| e.record.kind() == RecordKind::Window)
        .cloned()
        .collect();
    let mut got = Vec::new();
    let mut before = None;
    loop {
        let page = store.recent(before, Some(RecordKind::Window), 11).unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.seq);
        got.extend(page);
    }
    assert_eq!(got, windows.iter().rev().cloned().collect::<Vec<_>>());
    for from in [0, windows[20].seq, windows[250].seq, windows[299].seq + 1] {
        let want: Vec<_> = windows
            .iter()
            .filter(|e| e.seq >= from)
            .take(40)
            .cloned()
            .collect();
        assert_eq!(store.scan_kind(RecordKind::Window, from, 40).unwrap(), want);
    }
    // Windows of one metric, newest first, page by page, through rows and chunks alike.
    for metric in ["cpu_load_pct", "queue_wait_ms/model=m"] {
        let want: Vec<_> = windows
            .iter()
            .rev()
            .filter(|e| matches!(&e.record, Record::Window(w) if w.metric == metric))
            .cloned()
            .collect();
        let mut got = Vec::new();
        let mut before = None;
        loop {
            let page = store
                .recent_windows(before, 7, |_, m, _| m == metric)
                .unwrap();
            let Some(last) = page.last() else { break };
            before = Some(last.seq);
            got.extend(page);
        }
        assert_eq!(got, want, "{metric}");
    }
    assert!(
        store
            .recent_windows(None, 10, |_, _, _| false)
            .unwrap()
            .is_empty()
    );
    // Runs, newest first and oldest first, from any seq.
    let runs: Vec<_> = expected
        .iter()
        .filter(|e| e.record.kind() == RecordKind::Run)
        .cloned()
        .collect();
    let mut got = Vec::new();
    let mut before = None;
    loop {
        let page = store.recent(before, Some(RecordKind::Run), 9).unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.seq);
        got.extend(page);
    }
    assert_eq!(got, runs.iter().rev().cloned().collect::<Vec<_>>());
    for from in [
        0,
        runs[15].seq,
        runs[16].seq + 1,
        runs[99].seq,
        runs[99].seq + 1,
    ] {
        let want: Vec<_> = runs
            .iter()
            .filter(|e| e.seq >= from)
            .take(20)
            .cloned()
            .collect();
        assert_eq!(store.scan_kind(RecordKind::Run, from, 20).unwrap(), want);
    }
    // The run index of each model, newest first, page by page through its head and chunks.
    for model in ["qwen-7b", "llama-8b"] {
        let want: Vec<(u64, i64, f64, u64, Option<u64>, u32)> = runs
            .iter()
            .rev()
            .filter_map(|e| match &e.record {
                Record::Run(r) if r.model_id == model => Some((
                    e.seq,
                    r.ts_ms.unwrap(),
                    r.model_latency_ms,
                    r.context_tokens,
                    r.tokens_out,
                    r.validation_retry_count,
                )),
                _ => None,
            })
            .collect();
        let mut got = Vec::new();
        let mut before = None;
        loop {
            let page = store.recent_runs(model, before, 7).unwrap();
            let Some(last) = page.last() else { break };
            before = Some(last.seq);
            got.extend(page.iter().map(|r| {
                (
                    r.seq,
                    r.ts_ms,
                    r.model_latency_ms,
                    r.context_tokens,
                    r.tokens_out,
                    r.validation_retry_count,
                )
            }));
        }
        assert_eq!(got, want, "{model}");
        assert_eq!(store.recent_runs(model, None, 1000).unwrap().len(), 50);
    }
    assert_eq!(store.run_models().unwrap(), ["llama-8b", "qwen-7b"]);
    assert!(store.recent_runs("nope", None, 10).unwrap().is_empty());
    let sessions = store.scan_kind(RecordKind::SessionStarted, 0, max).unwrap();
    assert_eq!(sessions.len(), 100);
    // A time range, in (ts, seq) order.
    let (from_ms, to_ms) = (T0 + 10 * MINUTE, T0 + 60 * MINUTE + 1);
    let mut want: Vec<_> = expected
        .iter()
        .filter(|e| e.record.ts_ms().is_some_and(|t| from_ms <= t && t < to_ms))
        .cloned()
        .collect();
    want.sort_by_key(|e| (e.record.ts_ms(), e.seq));
    assert_eq!(store.scan_time(from_ms, to_ms, max).unwrap(), want);
    assert_eq!(store.scan_time(from_ms, to_ms, 9).unwrap(), want[..9]);
    // The log's rows of some kinds, in one pass, in seq order.
    for kinds in [
        vec![RecordKind::SessionStarted],
        vec![RecordKind::SessionStarted, RecordKind::ModelLoad],
        vec![RecordKind::Feedback],
    ] {
        let want: Vec<_> = expected
            .iter()
            .filter(|e| kinds.contains(&e.record.kind()))
            .cloned()
            .collect();
        let mut got = Vec::new();
        store.each_in_rows_of(&kinds, |e| got.push(e)).unwrap();
        assert_eq!(got, want, "{kinds:?}");
    }
    // The runs since a horizon reckoned from the newest run, through rows and run chunks.
    let runs: Vec<_> = expected
        .iter()
        .filter(|e| e.record.kind() == RecordKind::Run)
        .cloned()
        .collect();
    let newest = runs.iter().filter_map(|e| e.record.ts_ms()).max();
    assert!(newest.is_some());
    for back in [0, MINUTE, 25 * MINUTE, i64::MAX / 2] {
        let mut got = Vec::new();
        let mut told = None;
        let answered = store
            .runs_since(
                |n| {
                    told = Some(n);
                    n.saturating_sub(back)
                },
                |e| got.push(e),
            )
            .unwrap();
        assert_eq!((answered, told), (newest, newest));
        got.sort_by_key(|e| e.seq);
        let from = newest.unwrap().saturating_sub(back);
        let want: Vec<_> = runs
            .iter()
            .filter(|e| e.record.ts_ms().is_some_and(|t| t >= from))
            .cloned()
            .collect();
        assert!(!want.is_empty());
        assert_eq!(got, want, "runs since {back} ms before the newest");
    }
    assert_eq!(store.stats().unwrap().log_records, expected.len() as u64);
}

/// `(run chunks, run rows left in the log, unsealed runs in meta)`.
fn run_layout(path: &std::path::Path) -> (u64, u64, u64) {
    let db = redb::Database::open(path).unwrap();
    let rtx = db.begin_read().unwrap();
    let chunks = rtx.open_table(RUN_CHUNKS).unwrap().len().unwrap();
    let log = rtx.open_table(LOG).unwrap();
    let mut rows = 0;
    for row in redb::ReadableTable::iter(&log).unwrap() {
        let (_, v) = row.unwrap();
        let payload = &v.value()[4..];
        if payload.starts_with(&[0xc1, RecordKind::Run.code()])
            || payload.windows(9).any(|w| w == b"\xa4kind\xa3run")
        {
            rows += 1;
        }
    }
    let meta = rtx.open_table(META).unwrap();
    let unsealed = meta.get(K_UNSEALED_RUNS).unwrap().map_or(0, |v| v.value());
    (chunks, rows, unsealed)
}

/// `(window chunks, window rows left in the log, unsealed count in meta, format version)`.
fn layout(path: &std::path::Path) -> (u64, u64, u64, u64) {
    let db = redb::Database::open(path).unwrap();
    let rtx = db.begin_read().unwrap();
    let chunks = match rtx.open_table(WINDOW_CHUNKS) {
        Ok(t) => t.len().unwrap(),
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(e) => panic!("{e}"),
    };
    let log = rtx.open_table(LOG).unwrap();
    let mut rows = 0;
    for row in redb::ReadableTable::iter(&log).unwrap() {
        let (_, v) = row.unwrap();
        // Format 3 rows start (after the CRC) with 0xc1 and the kind's code; format 2 rows are
        // MessagePack maps holding the string "kind" then the string "window".
        let payload = &v.value()[4..];
        if payload.starts_with(&[0xc1, RecordKind::Window.code()])
            || payload.windows(12).any(|w| w == b"\xa4kind\xa6window")
        {
            rows += 1;
        }
    }
    let meta = rtx.open_table(META).unwrap();
    let get = |k: &str| meta.get(k).unwrap().map_or(0, |v| v.value());
    (chunks, rows, get(K_UNSEALED_WINDOWS), get(K_FORMAT_VERSION))
}

#[test]
fn sealed_windows_and_runs_read_back_in_log_order_through_every_scan_and_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.redb");
    let store = Store::open(&path, options()).unwrap();
    let expected = fill(&store);
    assert_eq!(expected.len(), 500);
    assert_reads_match(&store, &expected);
    drop(store);
    // 300 windows: 18 chunks of 16, the newest 12 still log rows; 100 runs: 6 chunks, 4 rows.
    assert_eq!(layout(&path), (18, 12, 12, FORMAT_VERSION));
    assert_eq!(run_layout(&path), (6, 4, 4));
    let store = Store::open(&path, options()).unwrap();
    assert_reads_match(&store, &expected);
    // Appends go on where they were: seqs keep increasing, sealing keeps its count.
    let more = store
        .append(
            T0 + 200 * MINUTE,
            Batch::Records(vec![window(200, "x", 1.0); 4]),
        )
        .unwrap();
    assert!(more.seqs[0] > expected.last().unwrap().seq);
    drop(store);
    assert_eq!(layout(&path), (19, 0, 0, FORMAT_VERSION));
}

#[test]
fn sealed_windows_grow_the_file_by_a_fraction_of_log_rows() {
    // Growth from the end of day 1 to the end of day 3 of ten signals' minutes: the unsealed
    // tail is the same size at both ends.
    let growth: Vec<u64> = [usize::MAX, WINDOW_CHUNK]
        .into_iter()
        .map(|window_chunk| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("k.redb");
            let options = StoreOptions {
                window_chunk,
                ..StoreOptions::default()
            };
            let mut size_after_day_1 = 0;
            for day in 0..3 {
                // Each day ends with a clean close, which gives the file's free tail back.
                let store = Store::open(&path, options.clone()).unwrap();
                // Ten minutes a commit: the file grows the same, at a tenth of the fsyncs.
                for ten in (day * 1440..(day + 1) * 1440).step_by(10) {
                    let records = (ten..ten + 10)
                        .flat_map(|minute| {
                            (0..10).map(move |s| {
                                window(
                                    minute,
                                    &format!("signal_{s}"),
                                    (minute % 97) as f64 + s as f64,
                                )
                            })
                        })
                        .collect();
                    store.append(T0, Batch::Records(records)).unwrap();
                }
                drop(store);
                if day == 0 {
                    size_after_day_1 = std::fs::metadata(&path).unwrap().len();
                }
            }
            let size = std::fs::metadata(&path).unwrap().len();
            let (_, _, unsealed, _) = layout(&path);
            let db = redb::Database::open(&path).unwrap();
            let rtx = db.begin_read().unwrap();
            let chunks = rtx.open_table(WINDOW_CHUNKS).unwrap();
            let mut chunk_bytes = 0;
            for row in redb::ReadableTable::iter(&chunks).unwrap() {
                chunk_bytes += row.unwrap().1.value().len();
            }
            if window_chunk == WINDOW_CHUNK {
                let sealed_windows = 3 * 14_400 - unsealed;
                let per_window = chunk_bytes as f64 / sealed_windows as f64;
                eprintln!("sealed chunks: {per_window:.1} bytes a window");
                assert!(per_window < 12.0, "{per_window} bytes a window in chunks");
            }
            (size - size_after_day_1) / 2
        })
        .collect();
    let (rows, sealed) = (growth[0], growth[1]);
    eprintln!(
        "a day of 14,400 windows grows the file by {rows} bytes as log rows, {sealed} sealed"
    );
    assert!(
        sealed * 5 < rows,
        "{sealed} bytes a day sealed against {rows} as rows"
    );
}

/// The bytes redb gives a chunk of `len` bytes: a page, or a run of pages of its own, a power
/// of two of them long, when it is larger (its leaf adds a header, the length and the key).
fn run_of_pages(len: usize) -> usize {
    (len + 16).div_ceil(4096).next_power_of_two() * 4096
}

/// Windows of readings that vary as a machine's do (a tenth of a percent, a megabyte) make
/// chunks of several pages at 1,024 a chunk. Such a chunk takes a power of two of pages, so
/// the chunks are cut to fill theirs: no chunk larger than a page leaves more than an eighth
/// of its run empty, and every window reads back in order after a reopen.
#[test]
fn chunks_larger_than_a_page_fill_their_run_of_pages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.redb");
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut expected = Vec::new();
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        for minute in 0..2_000 {
            let records: Vec<Record> = (0..10)
                .map(|s| {
                    let value = (next() % 10_000) as f64 / 10.0;
                    window(minute, &format!("signal_{s}"), value + s as f64 * 100.0)
                })
                .collect();
            let appended = store.append(T0, Batch::Records(records.clone())).unwrap();
            for (seq, record) in appended.seqs.into_iter().zip(records) {
                expected.push(LogEntry { seq, record });
            }
        }
    }
    let mut sizes = Vec::new();
    {
        let db = redb::Database::open(&path).unwrap();
        let rtx = db.begin_read().unwrap();
        let chunks = rtx.open_table(WINDOW_CHUNKS).unwrap();
        for row in redb::ReadableTable::iter(&chunks).unwrap() {
            sizes.push(row.unwrap().1.value().len());
        }
    }
    let large: Vec<usize> = sizes.iter().copied().filter(|n| *n > 4096).collect();
    eprintln!(
        "{} chunks, {} larger than a page: {large:?}",
        sizes.len(),
        large.len()
    );
    assert!(
        large.len() * 2 > sizes.len(),
        "most chunks are larger than a page here: {sizes:?}"
    );
    for len in large {
        assert!(
            (len + 16) * 8 >= run_of_pages(len) * 7,
            "a chunk of {len} bytes in {} bytes of pages",
            run_of_pages(len)
        );
    }
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(store.scan(0, usize::MAX).unwrap(), expected);
}

#[test]
fn a_format_2_store_written_by_the_previous_build_converts_at_open_record_for_record() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v2-demo");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kora-telemetry.redb");
    std::fs::copy(fixture.join("kora-telemetry.redb"), &path).unwrap();
    let before = layout(&path);
    assert_eq!(
        (before.0, before.3),
        (0, 2),
        "the fixture is a format 2 store"
    );
    assert_eq!(before.1, 112);
    // The log as the previous build printed it (`kora-telemetry log --json`, newest first).
    let printed: Vec<serde_json::Value> = std::fs::read_to_string(fixture.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let store = Store::open(&path, options()).unwrap();
    let stats = store.stats().unwrap();
    let all = store.recent(None, None, 10_000).unwrap();
    let now: Vec<serde_json::Value> = all
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    assert_eq!(now, printed);
    assert_eq!(stats.log_records, printed.len() as u64);
    let samples = store.stats().unwrap().samples;
    assert!(samples > 0);
    drop(store);
    // 112 windows: 7 chunks of 16, none left in the log; 140 runs: 8 chunks, 12 left in the
    // log. A second open converts nothing.
    assert_eq!(layout(&path), (7, 0, 0, FORMAT_VERSION));
    assert_eq!(run_layout(&path), (8, 12, 12));
    // Every client id is dated, so that the retention can forget it.
    {
        let db = redb::Database::open(&path).unwrap();
        let rtx = db.begin_read().unwrap();
        let ids = rtx.open_table(IDS).unwrap();
        let by_time = rtx.open_table(IDS_BY_TIME).unwrap();
        assert!(
            ids.len().unwrap() > 0,
            "the fixture's records carry client ids"
        );
        assert_eq!(by_time.len().unwrap(), ids.len().unwrap());
        for row in redb::ReadableTable::iter(&by_time).unwrap() {
            let (k, id) = row.unwrap();
            let v = ids.get(id.value()).unwrap().unwrap();
            assert_eq!(v.value()[..8], k.value().1.to_le_bytes());
        }
    }
    // The run index converted too: each model's runs, newest first, as the log has them.
    let store = Store::open(&path, options()).unwrap();
    let again: Vec<serde_json::Value> = store
        .recent(None, None, 10_000)
        .unwrap()
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    assert_eq!(again, printed);
    assert_eq!(store.stats().unwrap().samples, samples);
    let mut by_model: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for e in &again {
        if e["kind"] == "run" {
            by_model
                .entry(e["model_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(e["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(
        store.run_models().unwrap(),
        by_model.keys().cloned().collect::<Vec<_>>()
    );
    for (model, seqs) in &by_model {
        let rows = store.recent_runs(model, None, 1_000).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
            *seqs,
            "{model}"
        );
    }
}

/// A run of `model` with a latency of its own, so rows are told apart by more than their seq.
fn run_of(model: &str, i: i64) -> Record {
    let Record::Run(mut r) = run(i) else {
        unreachable!()
    };
    r.model_id = model.into();
    r.id = Some(format!("{model}-{i}"));
    r.model_latency_ms = 500.0 + (i * 37 % 1000) as f64 / 4.0;
    Record::Run(r)
}

/// Appends the runs `records` and notes each one's seq and latency in `want`, by model.
fn append_noted(
    store: &Store,
    records: Vec<Record>,
    want: &mut std::collections::BTreeMap<String, Vec<(u64, f64)>>,
) {
    let appended = store.append(T0, Batch::Records(records.clone())).unwrap();
    for (seq, r) in appended.seqs.into_iter().zip(&records) {
        let Record::Run(r) = r else { unreachable!() };
        want.entry(r.model_id.clone())
            .or_default()
            .push((seq, r.model_latency_ms));
    }
}

/// Appends `n` runs of the models in `models`, in batches of 1 to 40 runs, checking after
/// each batch that the last 40 runs of every model are exactly the runs appended; answers
/// what it appended into `want` (`model -> (seq, model_latency_ms)`, oldest first).
fn append_runs(
    store: &Store,
    models: &[&str],
    from: i64,
    n: i64,
    want: &mut std::collections::BTreeMap<String, Vec<(u64, f64)>>,
) {
    let mut i = from;
    let mut batch = 1;
    while i < from + n {
        let size = batch.min(from + n - i);
        let records: Vec<Record> = (i..i + size)
            .map(|j| run_of(models[(j * 7 % 11) as usize % models.len()], j))
            .collect();
        append_noted(store, records, want);
        i += size;
        batch = batch * 3 % 41;
        for (model, rows) in want.iter() {
            assert_recent(store, model, rows, None, 40);
        }
    }
}

/// `store.recent_runs(model, before, limit)` is exactly the newest of `rows` below `before`.
fn assert_recent(
    store: &Store,
    model: &str,
    rows: &[(u64, f64)],
    before: Option<u64>,
    limit: usize,
) {
    let want: Vec<(u64, f64)> = rows
        .iter()
        .rev()
        .filter(|(seq, _)| before.is_none_or(|b| *seq < b))
        .take(limit)
        .copied()
        .collect();
    let got: Vec<(u64, f64)> = store
        .recent_runs(model, before, limit)
        .unwrap()
        .iter()
        .map(|r| (r.seq, r.model_latency_ms))
        .collect();
    assert_eq!(got, want, "{model} before {before:?} limit {limit}");
}

/// Every page of every model, newest first, at several page sizes and from several seqs.
fn assert_index_exact(store: &Store, want: &std::collections::BTreeMap<String, Vec<(u64, f64)>>) {
    for (model, rows) in want {
        for limit in [1, 7, 33, 1_000, 100_000] {
            let mut before = None;
            let mut got = Vec::new();
            loop {
                let page = store.recent_runs(model, before, limit).unwrap();
                let Some(last) = page.last() else { break };
                before = Some(last.seq);
                got.extend(page.iter().map(|r| (r.seq, r.model_latency_ms)));
            }
            assert_eq!(
                got,
                rows.iter().rev().copied().collect::<Vec<_>>(),
                "{model} pages of {limit}"
            );
        }
        for at in [0, 1, rows.len() / 3, rows.len() / 2, rows.len() - 1] {
            assert_recent(store, model, rows, Some(rows[at].0), 100);
            assert_recent(store, model, rows, Some(rows[at].0 + 1), 1_000);
        }
    }
}

/// One model's run index as stored: `(head rows, rows of each chunk, oldest first)`.
fn index_layout(path: &std::path::Path, model: &str) -> (usize, Vec<usize>) {
    let db = redb::Database::open(path).unwrap();
    let rtx = db.begin_read().unwrap();
    let (number, head_len) = rtx
        .open_table(RUN_MODELS)
        .unwrap()
        .get(model)
        .unwrap()
        .unwrap()
        .value();
    let head = rtx
        .open_table(RUN_HEAD)
        .unwrap()
        .range((number, 0)..=(number, u64::MAX))
        .unwrap()
        .count();
    assert_eq!(head as u64, head_len, "{model}: run_models counts its head");
    let chunks = rtx
        .open_table(RUN_INDEX)
        .unwrap()
        .range((number, 0)..=(number, u64::MAX))
        .unwrap()
        .map(|row| {
            // The frame: a CRC-32, the version byte, then the row count (u32 LE).
            let v = row.unwrap().1;
            u32::from_le_bytes(v.value()[5..9].try_into().unwrap()) as usize
        })
        .collect();
    (head, chunks)
}

#[test]
fn the_run_index_answers_exactly_through_its_head_small_chunks_and_merged_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.redb");
    let options = StoreOptions {
        run_chunk: CHUNK,
        run_index_chunk: 4,
        ..StoreOptions::default()
    };
    let models = ["qwen-7b", "llama-8b", "phi-3"];
    let mut want = Default::default();
    let store = Store::open(&path, options.clone()).unwrap();
    append_runs(&store, &models, 0, 700, &mut want);
    assert_index_exact(&store, &want);
    drop(store);
    // Chunks of 4 rows are merged 8 at a time once 64 rows wait in small chunks: each model
    // keeps its newest 32 to 63 sealed rows in chunks of 4, the older in merged chunks.
    for model in models {
        let (head, chunks) = index_layout(&path, model);
        assert!(head < 4, "{model}: head of {head}");
        let small: usize = chunks.iter().rev().take_while(|n| **n < 32).sum();
        assert!((32..64).contains(&small), "{model}: {chunks:?}");
        assert!(
            chunks.iter().all(|n| *n == 4 || *n >= 32),
            "{model}: {chunks:?}"
        );
        assert!(
            chunks.iter().filter(|n| **n >= 32).count() >= 2,
            "{model}: {chunks:?}"
        );
        assert_eq!(
            head + chunks.iter().sum::<usize>(),
            want[model].len(),
            "{model}"
        );
    }
    let store = Store::open(&path, options).unwrap();
    assert_index_exact(&store, &want);
}

#[test]
fn a_run_index_sealed_at_another_size_reads_the_same_and_is_sealed_down_at_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.redb");
    // The layout before `run_index_chunk` had its own default: 1,024-row chunks and heads.
    let old = StoreOptions {
        run_index_chunk: 1024,
        ..StoreOptions::default()
    };
    let models = ["qwen-7b", "llama-8b"];
    let mut want = Default::default();
    let store = Store::open(&path, old).unwrap();
    append_runs(&store, &models, 0, 2_800, &mut want);
    drop(store);
    let before: Vec<(usize, Vec<usize>)> = models.iter().map(|m| index_layout(&path, m)).collect();
    for (model, (head, chunks)) in models.iter().zip(&before) {
        assert!(
            *head >= 128,
            "{model}: the old head is longer than a new one: {head}"
        );
        assert_eq!(chunks, &[1024], "{model}");
    }
    // Opened with the default: read as it is, nothing rewritten at open.
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    assert_index_exact(&store, &want);
    drop(store);
    for (model, layout) in models.iter().zip(&before) {
        assert_eq!(&index_layout(&path, model), layout, "{model}");
    }
    // One run of the first model seals its head down; the other keeps its long head.
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let appended = store
        .append(T0, Batch::Records(vec![run_of(models[0], 10_000)]))
        .unwrap();
    want.get_mut(models[0])
        .unwrap()
        .push((appended.seqs[0], 500.0 + (10_000 * 37 % 1000) as f64 / 4.0));
    assert_index_exact(&store, &want);
    drop(store);
    let (head, chunks) = index_layout(&path, models[0]);
    assert!(head < 128, "{head}");
    assert_eq!(chunks[0], 1024);
    assert!(chunks[1..].iter().all(|n| *n == 128), "{chunks:?}");
    assert_eq!(head + chunks.iter().sum::<usize>(), want[models[0]].len());
    assert_eq!(index_layout(&path, models[1]), before[1]);
    // More runs: the small chunks merge after the old chunk, and every read stays exact.
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    append_runs(&store, &models, 20_000, 3_000, &mut want);
    assert_index_exact(&store, &want);
    drop(store);
    for model in models {
        let (head, chunks) = index_layout(&path, model);
        assert!(head < 128, "{model}: {head}");
        assert_eq!(chunks[0], 1024, "{model}");
        assert!(
            chunks.iter().all(|n| *n == 128 || *n >= 1024),
            "{model}: {chunks:?}"
        );
        assert_eq!(
            head + chunks.iter().sum::<usize>(),
            want[model].len(),
            "{model}"
        );
    }
}

#[test]
fn a_damaged_run_index_chunk_is_not_merged_and_refuses_no_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.redb");
    let options = StoreOptions {
        run_chunk: CHUNK,
        run_index_chunk: 4,
        ..StoreOptions::default()
    };
    let mut want = Default::default();
    let store = Store::open(&path, options.clone()).unwrap();
    append_runs(&store, &["qwen-7b"], 0, 48, &mut want);
    drop(store);
    assert_eq!(index_layout(&path, "qwen-7b"), (0, vec![4; 12]));
    // Damage the oldest chunk's payload (redb's own page checksums stay right).
    {
        let db = redb::Database::open(&path).unwrap();
        let wtx = db.begin_write().unwrap();
        {
            let mut t = wtx.open_table(RUN_INDEX).unwrap();
            let (key, mut bytes) = {
                let (k, v) = redb::ReadableTable::first(&t).unwrap().unwrap();
                (k.value(), v.value().to_vec())
            };
            let at = bytes.len() - 3;
            bytes[at] ^= 0x40;
            t.insert(key, bytes.as_slice()).unwrap();
        }
        wtx.commit().unwrap();
    }
    // Enough runs to bring the small chunks to twice a merged chunk: every one is stored, the
    // chunks from the damaged one on are left as they are, the newer ones merge.
    let store = Store::open(&path, options).unwrap();
    append_runs(&store, &["qwen-7b"], 100, 60, &mut want);
    let rows = &want["qwen-7b"];
    assert_eq!(rows.len(), 108);
    assert_recent(&store, "qwen-7b", rows, None, 104);
    let err = store.recent_runs("qwen-7b", None, 105).unwrap_err();
    assert!(err.to_string().contains("run_index"), "{err}");
    drop(store);
    let (head, chunks) = index_layout(&path, "qwen-7b");
    assert_eq!(head + chunks.iter().sum::<usize>(), 108);
    assert_eq!(chunks[0], 4, "{chunks:?}");
    assert!(
        chunks[1..].iter().any(|n| *n >= 32),
        "the newer chunks merged: {chunks:?}"
    );
}

/// The version byte (after the CRC) of every run chunk, oldest first.
fn run_chunk_versions(path: &std::path::Path) -> Vec<u8> {
    let db = redb::Database::open(path).unwrap();
    let rtx = db.begin_read().unwrap();
    let chunks = rtx.open_table(RUN_CHUNKS).unwrap();
    redb::ReadableTable::iter(&chunks)
        .unwrap()
        .map(|row| row.unwrap().1.value()[4])
        .collect()
}

/// A format 4 store written by the previous build (`tests/fixtures/v4-runs`: `fill` with
/// `options()`, its log printed as `Store::recent` gave it, then three days of a signal rolled
/// up hourly, the rollups printed), whose run chunks hold each run's MessagePack one after the
/// other (version 1) and whose rollups are a row a bucket, opens as format 5: every record
/// reads as it was printed, the rollups too (now a row a day), and the runs sealed from then on
/// are columns (version 2) beside the old chunks, read in one log with them.
#[test]
fn a_format_4_store_written_by_the_previous_build_reads_record_for_record_beside_new_chunks() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v4-runs");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kora-telemetry.redb");
    std::fs::copy(fixture.join("kora-telemetry.redb"), &path).unwrap();
    assert_eq!(layout(&path).3, 4, "the fixture is a format 4 store");
    assert_eq!(run_chunk_versions(&path), vec![1; 6]);
    // Compared as printed (a float parsed back from JSON may differ in its last digit).
    let printed: Vec<String> = std::fs::read_to_string(fixture.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(printed.len(), 500);
    let read = |store: &Store| -> Vec<String> {
        store
            .recent(None, None, 10_000)
            .unwrap()
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect()
    };
    let rollup_rows = |path: &std::path::Path| {
        let db = redb::Database::open(path).unwrap();
        let rtx = db.begin_read().unwrap();
        rtx.open_table(kora_store::tables::ROLLUPS)
            .unwrap()
            .len()
            .unwrap()
    };
    assert_eq!(rollup_rows(&path), 69, "the fixture keeps a row a bucket");
    let store = Store::open(&path, options()).unwrap();
    assert_eq!(read(&store), printed);
    let rollups: Vec<String> = store
        .rollups("ram_total_mb", i64::MIN, i64::MAX)
        .unwrap()
        .iter()
        .map(|r| format!("{} {} {} {} {}", r.start_ms, r.count, r.min, r.max, r.sum))
        .collect();
    let printed_rollups = std::fs::read_to_string(fixture.join("rollups.txt")).unwrap();
    assert_eq!(rollups, printed_rollups.lines().collect::<Vec<_>>());
    // The client ids the previous build remembered (with all 32 bytes of their SHA-256) still
    // recognise a retry and refuse an id reused for other content.
    let again = store
        .append(T0 + 100 * MINUTE, Batch::Records(vec![run(7)]))
        .unwrap();
    assert_eq!((again.duplicates, again.accepted), (1, 0));
    let mut other = run(8);
    if let Record::Run(r) = &mut other {
        r.model_latency_ms += 1.0;
    }
    assert!(matches!(
        store.append(T0 + 100 * MINUTE, Batch::Records(vec![other])),
        Err(WriteError::IdConflict { .. })
    ));
    // 40 runs more: with the 4 left in the log, 2 chunks of 16 and 12 in the log.
    let records: Vec<Record> = (100..140).map(run).collect();
    store
        .append(T0 + 140 * MINUTE, Batch::Records(records))
        .unwrap();
    drop(store);
    assert_eq!(layout(&path).3, FORMAT_VERSION);
    // 69 hours from 08:00 UTC on one day: 16, 24, 24 and 5 in four days' rows.
    assert_eq!(rollup_rows(&path), 4);
    assert_eq!(
        run_chunk_versions(&path),
        vec![1, 1, 1, 1, 1, 1, 2, 2],
        "the old chunks are kept as they are, the new ones are columns"
    );
    let store = Store::open(&path, options()).unwrap();
    let all = read(&store);
    assert_eq!(all.len(), 540);
    assert_eq!(all[40..], printed[..], "the old records read as they did");
    let new_runs: Vec<serde_json::Value> = all[..40]
        .iter()
        .rev()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (minute, got) in (100..140).zip(new_runs) {
        assert_eq!(got["kind"], "run");
        assert_eq!(got["run_id"], format!("run-{minute}"));
        assert_eq!(got["context_tokens"], 1_000 + minute);
    }
}

/// A model's merged run index chunks larger than a page fill their run of pages: 1,024 rows of
/// measured numbers took 9.3 KB of 16 KiB; now the rows that fill 8 KiB are one chunk and
/// the rest another, never merged again, and every page of the index reads as appended.
#[test]
fn merged_run_index_chunks_fill_their_run_of_pages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.redb");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut want: std::collections::BTreeMap<String, Vec<(u64, f64)>> = Default::default();
    for batch in 0..30 {
        let records: Vec<Record> = (0..100)
            .map(|i| {
                let Record::Run(mut r) = run_of("qwen-7b", batch * 100 + i) else {
                    unreachable!()
                };
                r.model_latency_ms = 300.0 + (next() % 6_000) as f64;
                r.total_latency_ms = r.model_latency_ms + (next() % 900) as f64;
                r.deterministic_stage_ms = (next() % 400) as f64;
                r.tokens_in = Some(next() % 3_000);
                r.tokens_out = Some(next() % 500);
                Record::Run(r)
            })
            .collect();
        append_noted(&store, records, &mut want);
    }
    assert_index_exact(&store, &want);
    drop(store);
    let (head, chunks) = index_layout(&path, "qwen-7b");
    assert_eq!(head + chunks.iter().sum::<usize>(), 3_000);
    // 3,000 rows: 23 chunks of 128 sealed from the head; the oldest 1,024 merged, then cut.
    let cut = chunks[0];
    assert!(
        (128..1_024).contains(&cut) && chunks[1] == 1_024 - cut,
        "{chunks:?}"
    );
    let db = redb::Database::open(&path).unwrap();
    let rtx = db.begin_read().unwrap();
    let index = rtx.open_table(RUN_INDEX).unwrap();
    for row in redb::ReadableTable::iter(&index).unwrap() {
        let len = row.unwrap().1.value().len();
        let pages = (len + 32).div_ceil(4096).next_power_of_two() * 4096;
        assert!(
            len + 32 <= 4096 || (len + 32) * 16 >= pages * 15,
            "a chunk of {len} bytes in {pages}"
        );
    }
}
