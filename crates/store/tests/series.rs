//! The series store (head rows and sealed pco chunks) against a real redb file, checked
//! against a plain sorted model of what was appended.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use kora_model::*;
use kora_store::chunk::{self, CHUNK_SAMPLES};
use kora_store::*;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

const NOW: i64 = 1_800_000_000_000;

/// A deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn plain(signal: Signal, ts: i64, value: f64) -> Sample {
    Sample::reading(signal, ts, value)
}

/// Samples of three series: host RAM (regular), GPU 1 VRAM of a model (with jittered and
/// out-of-order times), and CPU load with some unavailable readings, ids and session ids.
fn generate(rng: &mut Rng, n: usize) -> Vec<Sample> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n as i64 {
        let t = NOW - 3_600_000 + i * 1000;
        let mut s = match i % 3 {
            0 => plain(Signal::RamFreeMb, t, 40_000.0 + (rng.below(64) as f64)),
            1 => {
                let mut s = plain(
                    Signal::GpuVramFreeMb,
                    t - rng.below(5_000) as i64,
                    rng.below(24_000) as f64,
                );
                s.device = Some(1);
                s.model_id = Some("meta/llama-3@8b".into());
                s
            }
            _ => plain(Signal::CpuLoadPct, t, rng.below(1000) as f64 / 10.0),
        };
        match rng.below(50) {
            0 => {
                s.value = None;
                s.unavailable = Some("sensor busy".into());
            }
            1 => s.id = Some(format!("id-{i}")),
            2 => s.session_id = Some("s1".into()),
            _ => {}
        }
        out.push(s);
    }
    out
}

fn run(ts: i64) -> Run {
    Run {
        id: None,
        ts_ms: Some(ts),
        run_id: "r1".into(),
        session_id: "s1".into(),
        model_id: "llama-8b".into(),
        substrate: Substrate::Local,
        prompt_hash: prompt_hash("hello"),
        context_tokens: 100,
        tokens_in: Some(10),
        tokens_out: Some(20),
        total_tokens: Some(30),
        model_latency_ms: 250.0,
        total_latency_ms: 270.0,
        deterministic_stage_ms: 20.0,
        model_stage_ms: 250.0,
        validation_retry_count: 0,
        budget_breach_count: 0,
        queue_wait_ms: None,
        prompt_tokens_sent: None,
        stages: None,
    }
}

type Model = BTreeMap<String, Vec<(i64, u64, Sample)>>;

fn check_against_model(store: &Store, model: &Model) {
    for (key, want) in model {
        let mut want = want.clone();
        want.sort_by_key(|(ts, seq, _)| (*ts, *seq));
        for (from, to) in [
            (i64::MIN, i64::MAX),
            (NOW - 3_000_000, NOW - 1_000_000),
            (NOW - 2_000_000, NOW - 1_999_000),
            (NOW, NOW + 1),
        ] {
            let expect: Vec<_> = want
                .iter()
                .filter(|(ts, _, _)| from <= *ts && *ts < to)
                .collect();
            let got = store.samples(key, from, to, usize::MAX).unwrap();
            assert_eq!(got.len(), expect.len(), "{key} {from}..{to}");
            for (g, (ts, seq, s)) in got.iter().zip(&expect) {
                assert_eq!(g.seq, *seq);
                assert_eq!(g.sample.ts_ms, Some(*ts));
                assert_eq!(&g.sample, s, "{key} seq {seq}");
            }
            let points = store.points(key, from, to, 5).unwrap();
            assert_eq!(
                points,
                expect
                    .iter()
                    .take(5)
                    .map(|(ts, _, s)| (*ts, s.value))
                    .collect::<Vec<_>>()
            );
            let mut values = store.values(key, from, to).unwrap();
            values.sort_by(f64::total_cmp);
            let mut expect_values: Vec<f64> = expect.iter().filter_map(|e| e.2.value).collect();
            expect_values.sort_by(f64::total_cmp);
            assert_eq!(values, expect_values, "{key} {from}..{to}");
        }
    }
}

#[test]
fn samples_in_heads_and_chunks_read_back_exactly_across_batch_sizes_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("series.redb");
    let mut rng = Rng(0x5eed);
    let samples = generate(&mut rng, 12_000);
    let mut model = Model::new();
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        let mut at = 0;
        // Batches of 1, 7, 100 and 2,500 samples: heads fill one row at a time and whole
        // chunks are sealed straight from one batch.
        for size in [1, 7, 100, 2_500].into_iter().cycle() {
            if at >= samples.len() {
                break;
            }
            let batch: Vec<Sample> = samples[at..(at + size).min(samples.len())].to_vec();
            at += batch.len();
            let a = store.append(NOW, Batch::Samples(batch.clone())).unwrap();
            for (s, seq) in batch.into_iter().zip(a.seqs) {
                model
                    .entry(s.series_key())
                    .or_default()
                    .push((s.ts_ms.unwrap(), seq, s));
            }
        }
        check_against_model(&store, &model);
        assert_eq!(store.stats().unwrap().samples, 12_000);
    }
    // The layout: every series sealed whole chunks and keeps fewer than a chunk in its head.
    {
        let db = redb::Database::open(&path).unwrap();
        let r = db.begin_read().unwrap();
        let chunks = r.open_table(tables::CHUNKS).unwrap();
        let head = r.open_table(tables::HEAD).unwrap();
        assert_eq!(chunks.len().unwrap(), 3 * (4_000 / CHUNK_SAMPLES) as u64);
        let in_head: usize = head
            .iter()
            .unwrap()
            .map(|r| {
                let block = chunk::decode_head(r.unwrap().1.value()).unwrap();
                assert!(!block.is_empty() && block.len() <= chunk::HEAD_BLOCK);
                block.len()
            })
            .sum();
        assert_eq!(
            in_head,
            3 * (4_000 % CHUNK_SAMPLES),
            "heads hold the remainder"
        );
        let stored: u64 = chunks
            .iter()
            .unwrap()
            .map(|r| r.unwrap().1.value().len() as u64)
            .sum();
        let per_sample = stored as f64 / (chunks.len().unwrap() * CHUNK_SAMPLES as u64) as f64;
        println!("sealed chunks: {per_sample:.2} bytes per sample");
        assert!(per_sample < 6.0, "{per_sample} bytes per sample");
    }
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    check_against_model(&store, &model);
    // Appending after a reopen continues the same heads.
    let more = generate(&mut rng, 3_000);
    let a = store.append(NOW, Batch::Samples(more.clone())).unwrap();
    for (s, seq) in more.into_iter().zip(a.seqs) {
        model
            .entry(s.series_key())
            .or_default()
            .push((s.ts_ms.unwrap(), seq, s));
    }
    check_against_model(&store, &model);
}

#[test]
fn unknown_series_and_empty_ranges_answer_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("e.redb"), StoreOptions::default()).unwrap();
    store
        .append(
            NOW,
            Batch::Samples(vec![plain(Signal::RamFreeMb, NOW, 1.0)]),
        )
        .unwrap();
    assert!(
        store
            .samples("ram_free_mb", NOW, NOW, 10)
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .samples("no_such", 0, i64::MAX, 10)
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .values("cpu_load_pct", 0, i64::MAX)
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.values("ram_free_mb", 0, i64::MAX).unwrap(), vec![1.0]);
}

#[test]
fn a_damaged_chunk_is_reported_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.redb");
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        let batch: Vec<Sample> = (0..CHUNK_SAMPLES as i64)
            .map(|i| plain(Signal::RamFreeMb, NOW - 10_000_000 + i * 1000, i as f64))
            .collect();
        store.append(NOW, Batch::Samples(batch)).unwrap();
    }
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut chunks = w.open_table(tables::CHUNKS).unwrap();
            let (key, mut bytes) = {
                let (k, v) = chunks.first().unwrap().unwrap();
                (k.value(), v.value().to_vec())
            };
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x01;
            chunks.insert(key, bytes.as_slice()).unwrap();
        }
        w.commit().unwrap();
    }
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    for err in [
        store.samples("ram_free_mb", 0, i64::MAX, 10).unwrap_err(),
        store.values("ram_free_mb", 0, i64::MAX).unwrap_err(),
    ] {
        assert!(
            matches!(
                err,
                ReadError::Corrupt {
                    table: "chunks",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

/// A store of format 1 (a row per sample) is converted when opened, with nothing lost.
#[test]
fn a_format_1_store_is_converted_with_every_sample() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.redb");
    let mut rng = Rng(7);
    let samples = generate(&mut rng, 3_500);
    let mut model = Model::new();
    {
        // Write the format 1 layout by hand, as a build of format 1 left it.
        let db = redb::Database::create(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut meta = w.open_table(tables::META).unwrap();
            meta.insert(tables::K_FORMAT_VERSION, 1).unwrap();
            meta.insert(tables::K_NEXT_SEQ, samples.len() as u64 + 2)
                .unwrap();
            meta.insert(tables::K_LOG_RECORDS, 1).unwrap();
            meta.insert(tables::K_SAMPLES, samples.len() as u64)
                .unwrap();
            // One run in the log, which format 1 did not index by model.
            let run_seq = samples.len() as u64 + 1;
            let payload = rmp_serde::to_vec_named(&Record::Run(run(NOW - 5))).unwrap();
            let mut value = crc32fast::hash(&payload).to_le_bytes().to_vec();
            value.extend_from_slice(&payload);
            w.open_table(tables::LOG)
                .unwrap()
                .insert(run_seq, value.as_slice())
                .unwrap();
            w.open_table(tables::LOG_BY_KIND)
                .unwrap()
                .insert((RecordKind::Run.code(), run_seq), ())
                .unwrap();
            w.open_table(tables::LOG_BY_TIME)
                .unwrap()
                .insert((NOW - 5, run_seq), ())
                .unwrap();
            w.open_table(tables::IDS).unwrap();
            let mut series = w.open_table(tables::SERIES).unwrap();
            let mut rows = w.open_table(tables::SAMPLES_V1).unwrap();
            let mut ids: BTreeMap<String, u32> = BTreeMap::new();
            for (i, s) in samples.iter().enumerate() {
                let seq = i as u64 + 1;
                let key = s.series_key();
                let n = ids.len() as u32;
                let sid = *ids.entry(key.clone()).or_insert(n);
                series.insert(key.as_str(), sid).unwrap();
                let payload = rmp_serde::to_vec_named(&(false, s)).unwrap();
                let mut value = crc32fast::hash(&payload).to_le_bytes().to_vec();
                value.extend_from_slice(&payload);
                rows.insert((sid, s.ts_ms.unwrap(), seq), value.as_slice())
                    .unwrap();
                model
                    .entry(key)
                    .or_default()
                    .push((s.ts_ms.unwrap(), seq, s.clone()));
            }
        }
        w.commit().unwrap();
    }
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    check_against_model(&store, &model);
    let runs = store.recent_runs("llama-8b", None, 10).unwrap();
    assert_eq!(runs.len(), 1, "the run index was built from the log");
    assert_eq!(
        (runs[0].seq, runs[0].ts_ms),
        (samples.len() as u64 + 1, NOW - 5)
    );
    assert_eq!(runs[0].model_latency_ms, 250.0);
    let a = store
        .append(
            NOW,
            Batch::Samples(vec![plain(Signal::RamFreeMb, NOW, 5.0)]),
        )
        .unwrap();
    assert_eq!(a.seqs, vec![samples.len() as u64 + 2]);
    drop(store);
    let db = redb::Database::open(&path).unwrap();
    let r = db.begin_read().unwrap();
    assert_eq!(
        r.open_table(tables::META)
            .unwrap()
            .get(tables::K_FORMAT_VERSION)
            .unwrap()
            .unwrap()
            .value(),
        FORMAT_VERSION
    );
    assert!(
        r.open_table(tables::SAMPLES_V1).is_err(),
        "the format 1 table was dropped"
    );
}

#[test]
fn compaction_rolls_old_chunks_up_keeps_recent_samples_and_drops_expired_rollups() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("r.redb"), StoreOptions::default()).unwrap();
    const HOUR: i64 = 3_600_000;
    // Ten hours of one sample a second, ending at NOW.
    let start = NOW - 10 * HOUR;
    let samples: Vec<Sample> = (0..36_000)
        .map(|i| plain(Signal::RamFreeMb, start + i * 1000, (i % 3600) as f64))
        .collect();
    for b in samples.chunks(10_000) {
        store.append(NOW, Batch::Samples(b.to_vec())).unwrap();
    }
    let retention = Retention {
        raw_ms: 4 * HOUR,
        rollup_step_ms: HOUR,
        rollup_ms: 8 * HOUR,
        ..Retention::default()
    };
    let mut total = Compacted::default();
    loop {
        let c = store.compact(NOW, &retention).unwrap();
        total.chunks_rolled_up += c.chunks_rolled_up;
        total.samples_rolled_up += c.samples_rolled_up;
        if !c.more {
            break;
        }
    }
    // Chunks wholly older than NOW - 4 h went; everything newer is still raw.
    let cut = NOW - 4 * HOUR;
    let raw = store
        .points("ram_free_mb", i64::MIN, i64::MAX, usize::MAX)
        .unwrap();
    assert!(
        raw.iter().all(|(ts, _)| *ts >= cut - 1024 * 1000),
        "an old sample stayed raw"
    );
    assert!(
        raw.iter().any(|(ts, _)| *ts < cut),
        "the chunk straddling the cut stays whole"
    );
    assert_eq!(raw.len() as u64 + total.samples_rolled_up, 36_000);
    assert_eq!(store.stats().unwrap().samples, raw.len() as u64);
    // Hourly rollups of what went, none older than the rollup retention (NOW - 8 h).
    let rollups = store.rollups("ram_free_mb", i64::MIN, i64::MAX).unwrap();
    let rolled: u64 = rollups.iter().map(|r| r.count).sum();
    assert!(rollups.iter().all(|r| r.start_ms + HOUR > NOW - 8 * HOUR));
    assert!(rollups.iter().all(|r| r.start_ms % HOUR == 0));
    // The hours kept are complete (3,600 samples each, values 0..3600, or the tail of one).
    let full = rollups
        .iter()
        .filter(|r| r.count == 3600)
        .collect::<Vec<_>>();
    assert!(!full.is_empty());
    for r in full {
        assert_eq!(
            (r.min, r.max, r.sum),
            (0.0, 3599.0, (0..3600).sum::<i64>() as f64)
        );
    }
    assert!(rolled <= total.samples_rolled_up);
    // A second pass finds nothing to do and changes nothing.
    assert_eq!(
        store.compact(NOW, &retention).unwrap(),
        Compacted::default()
    );
}

/// Rollups are kept a day to a row: they expire bucket by bucket all the same (whole rows
/// before the cut, the buckets before it in the cut's row), a range read starts and ends
/// mid-row, and the count of dropped buckets is exact.
#[test]
fn rollups_expire_by_the_bucket_across_their_rows_of_a_day() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("r.redb"), StoreOptions::default()).unwrap();
    const HOUR: i64 = 3_600_000;
    // Four days of one reading a minute, ending at NOW (08:00 UTC); raw kept an hour, so
    // the sealed chunks of 1,024 before that roll up (86 hours).
    let start = NOW - 96 * HOUR;
    let samples: Vec<Sample> = (0..96 * 60)
        .map(|i| plain(Signal::RamFreeMb, start + i * 60_000, (i % 7) as f64 + 0.5))
        .collect();
    store.append(NOW, Batch::Samples(samples)).unwrap();
    let keep_all = Retention {
        raw_ms: HOUR,
        rollup_step_ms: HOUR,
        rollup_ms: 1_000 * HOUR,
        ..Retention::default()
    };
    while store.compact(NOW, &keep_all).unwrap().more {}
    let all = store.rollups("ram_free_mb", i64::MIN, i64::MAX).unwrap();
    assert_eq!(all.len(), 86);
    assert!(
        all.windows(2)
            .all(|w| w[0].start_ms + HOUR == w[1].start_ms)
    );
    // A range that starts and ends inside days.
    let (from, to) = (all[10].start_ms + 1, all[80].start_ms);
    let inside = store.rollups("ram_free_mb", from, to).unwrap();
    assert_eq!(inside, all[11..80].to_vec());
    // Rollups kept 30 hours: the cut (02:00 UTC) falls inside a day.
    let shorter = Retention {
        rollup_ms: 30 * HOUR,
        ..keep_all
    };
    let c = store.compact(NOW, &shorter).unwrap();
    let kept = store.rollups("ram_free_mb", i64::MIN, i64::MAX).unwrap();
    let want: Vec<Rollup> = all
        .iter()
        .filter(|r| r.start_ms + HOUR > NOW - 30 * HOUR)
        .copied()
        .collect();
    assert_eq!(kept, want);
    assert_eq!(c.rollups_dropped as usize, all.len() - want.len());
    assert_eq!(
        store.compact(NOW, &shorter).unwrap(),
        Compacted::default(),
        "a second pass drops nothing"
    );
}
