//! What the fuzz targets check, around the production decode+validate path of the ingest
//! endpoints, [`kora_server::ingest::decode_batch`] (the function the handlers call; nothing of
//! it is copied here).
//!
//! - [`check_body`] (`json_ingest`, `msgpack_ingest`): any bytes, as the body of each of the
//!   three ingest endpoints. A refusal must be a 400 or 413 naming what is wrong, never another
//!   error or a panic; an accepted batch, sent again in either encoding by a client that
//!   re-encodes what the server decoded, must be accepted again with the very same records
//!   (compared bit for bit).
//! - [`differential`] (`differential`): a batch built from the fuzzer's bytes, valid or a little
//!   broken, sent as JSON and as named MessagePack. Both must get the same verdict (accepted, or
//!   refused with the same status, code and field) and, when accepted, the same records, equal
//!   to the batch that was sent. Accepted record batches are then appended to a real
//!   [`kora_store::Store`] and read back: the store must return them unchanged but for the
//!   stamped `ts_ms`.

use kora_model::{
    Event, EventBatch, MAX_FUTURE_MS, MIN_TS_MS, Record, Run, RunBatch, Sample, SampleBatch,
};
use kora_server::AppError;
pub use kora_server::ingest::{BatchKind, Encoding, decode_batch};
use kora_store::Batch;

pub mod generate;

/// The server's clock during fuzzing: fixed, so that every input has one verdict.
pub const NOW: i64 = 1_800_000_000_000;

/// How a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub field: Option<String>,
    pub message: String,
}

/// The answer of the decode+validate path to one body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The records the handler would store, as named MessagePack: equal bytes mean equal
    /// records to the bit (`-0.0` is not `0.0` here).
    Accepted(Vec<u8>),
    Refused(Refusal),
}

/// The refusal an error stands for. A body alone can only be invalid (400) or too large (413):
/// anything else (a 5xx, a 409, ...) is a bug.
pub fn refusal(e: AppError) -> Refusal {
    match e {
        AppError::Invalid {
            code,
            message,
            field,
        } => {
            let code = code.as_str();
            assert!(
                code == "invalid_body" || code == "invalid_record",
                "unexpected 400 code {code:?}: {message}"
            );
            assert!(!message.is_empty(), "a 400 without a message");
            Refusal {
                status: 400,
                code,
                field,
                message,
            }
        }
        AppError::TooLarge(message) => Refusal {
            status: 413,
            code: "too_large",
            field: None,
            message,
        },
        other => panic!("decoding a body answered {other:?}, which no body may cause"),
    }
}

/// The records of an accepted batch as named MessagePack.
pub fn canonical(batch: &Batch) -> Vec<u8> {
    let bytes = match batch {
        Batch::Samples(v) => rmp_serde::to_vec_named(v),
        Batch::Records(v) => rmp_serde::to_vec_named(v),
        Batch::Derived { .. } => panic!("an ingest body decoded to derived records"),
    };
    bytes.expect("records encode")
}

/// The verdict on one body.
pub fn verdict(kind: BatchKind, enc: Encoding, body: &[u8]) -> (Verdict, Option<Batch>) {
    match decode_batch(kind, enc, body, NOW) {
        Ok(batch) => (Verdict::Accepted(canonical(&batch)), Some(batch)),
        Err(e) => (Verdict::Refused(refusal(e)), None),
    }
}

fn event_of(r: &Record) -> Event {
    match r.clone() {
        Record::ModelLoad(x) => Event::ModelLoad(x),
        Record::ContextRequest(x) => Event::ContextRequest(x),
        Record::ContextOom(x) => Event::ContextOom(x),
        Record::SessionStarted(x) => Event::SessionStarted(x),
        Record::SessionEnded(x) => Event::SessionEnded(x),
        other => panic!("an event body decoded to {other:?}"),
    }
}

fn run_of(r: &Record) -> Run {
    match r {
        Record::Run(x) => x.clone(),
        other => panic!("a run body decoded to {other:?}"),
    }
}

/// The body a client would send for a decoded batch, in `enc`.
pub fn encode_batch(kind: BatchKind, enc: Encoding, batch: &Batch) -> Vec<u8> {
    fn enc_value<T: serde::Serialize>(enc: Encoding, v: &T) -> Vec<u8> {
        match enc {
            Encoding::Json => serde_json::to_vec(v).expect("JSON encodes"),
            Encoding::MessagePack => rmp_serde::to_vec_named(v).expect("MessagePack encodes"),
        }
    }
    match (kind, batch) {
        (BatchKind::Samples, Batch::Samples(v)) => {
            enc_value(enc, &SampleBatch { samples: v.clone() })
        }
        (BatchKind::Runs, Batch::Records(v)) => enc_value(
            enc,
            &RunBatch {
                runs: v.iter().map(run_of).collect(),
            },
        ),
        (BatchKind::Events, Batch::Records(v)) => enc_value(
            enc,
            &EventBatch {
                events: v.iter().map(event_of).collect(),
            },
        ),
        (kind, batch) => panic!("{kind:?} decoded to {batch:?}"),
    }
}

/// `json_ingest` and `msgpack_ingest`: `data` as the body of every ingest endpoint.
pub fn check_body(enc: Encoding, data: &[u8]) {
    for kind in BatchKind::ALL {
        let (v, batch) = verdict(kind, enc, data);
        let (Verdict::Accepted(want), Some(batch)) = (v, batch) else {
            continue;
        };
        // Whatever was accepted is JSON-representable (validation refuses non-finite numbers)
        // and must survive a client's round trip in either encoding unchanged.
        for again in [Encoding::Json, Encoding::MessagePack] {
            let body = encode_batch(kind, again, &batch);
            match verdict(kind, again, &body) {
                (Verdict::Accepted(got), _) => assert!(
                    got == want,
                    "{kind:?}: a {enc:?} body was accepted, but re-sent as {again:?} it decodes to \
                     other records\n first: {:?}\n again: {:?}\n body: {}",
                    decode_records(&want),
                    decode_records(&got),
                    String::from_utf8_lossy(&body)
                ),
                (Verdict::Refused(r), _) => panic!(
                    "{kind:?}: a {enc:?} body was accepted, but re-sent as {again:?} it is \
                     refused: {r:?}\n body: {}",
                    String::from_utf8_lossy(&body)
                ),
            }
        }
    }
}

/// Canonical bytes back to something readable, for failure messages.
pub fn decode_records(bytes: &[u8]) -> String {
    if let Ok(v) = rmp_serde::from_slice::<Vec<Sample>>(bytes) {
        return format!("{v:?}");
    }
    match rmp_serde::from_slice::<Vec<Record>>(bytes) {
        Ok(v) => format!("{v:?}"),
        Err(e) => format!("<{} bytes: {e}>", bytes.len()),
    }
}

/// What the server must store for a batch it was sent, before `ts_ms` stamping: the items as
/// sent, runs with `total_tokens` filled in from `tokens_in + tokens_out` when absent.
pub fn expected(batch: &generate::Typed) -> Batch {
    match batch {
        generate::Typed::Samples(b) => Batch::Samples(b.samples.clone()),
        generate::Typed::Runs(b) => Batch::Records(
            b.runs
                .iter()
                .cloned()
                .map(|mut r| {
                    if r.total_tokens.is_none()
                        && let (Some(i), Some(o)) = (r.tokens_in, r.tokens_out)
                    {
                        r.total_tokens = i.checked_add(o);
                    }
                    Record::Run(r)
                })
                .collect(),
        ),
        generate::Typed::Events(b) => {
            Batch::Records(b.events.iter().cloned().map(Record::from).collect())
        }
    }
}

/// `differential`: one generated case, both encodings, the same verdict and records.
pub fn differential(case: &generate::Case) {
    let kind = case.typed.kind();
    let (json, msgpack) = case.bodies();
    let (vj, bj) = verdict(kind, Encoding::Json, &json);
    let (vm, _) = verdict(kind, Encoding::MessagePack, &msgpack);
    let show = || {
        format!(
            "case: {case:?}\n JSON body: {}\n MessagePack body: {:02x?}",
            String::from_utf8_lossy(&json),
            msgpack
        )
    };
    stats::count(&vj);
    match (&vj, &vm) {
        (Verdict::Accepted(a), Verdict::Accepted(b)) => {
            assert!(
                a == b,
                "{kind:?}: JSON and MessagePack bodies decode to different records\n JSON: {}\n \
                 MessagePack: {}\n{}",
                decode_records(a),
                decode_records(b),
                show()
            );
            if case.mutations.is_empty() {
                let want = canonical(&expected(&case.typed));
                assert!(
                    *a == want,
                    "{kind:?}: the accepted records differ from the batch sent\n sent: {}\n \
                     decoded: {}\n{}",
                    decode_records(&want),
                    decode_records(a),
                    show()
                );
            }
        }
        (Verdict::Refused(a), Verdict::Refused(b)) => {
            assert!(
                (a.status, a.code, &a.field) == (b.status, b.code, &b.field),
                "{kind:?}: JSON and MessagePack are refused differently\n JSON: {a:?}\n \
                 MessagePack: {b:?}\n{}",
                show()
            );
            // Validation messages are the server's own words about the same values.
            if a.code != "invalid_body" {
                assert_eq!(a.message, b.message, "{}", show());
            }
        }
        _ => panic!(
            "{kind:?}: JSON and MessagePack get different verdicts\n JSON: {vj:?}\n MessagePack: \
             {vm:?}\n{}",
            show()
        ),
    }
    if let Some(batch) = bj
        && store::enabled()
    {
        store::round_trip(batch);
    }
}

/// `KORA_FUZZ_STATS=1`: how the differential cases were answered, every 100,000 cases.
mod stats {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    use super::Verdict;

    static CASES: AtomicU64 = AtomicU64::new(0);
    static ACCEPTED: AtomicU64 = AtomicU64::new(0);
    static INVALID_BODY: AtomicU64 = AtomicU64::new(0);

    pub fn count(v: &Verdict) {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if !*ON.get_or_init(|| std::env::var_os("KORA_FUZZ_STATS").is_some()) {
            return;
        }
        match v {
            Verdict::Accepted(_) => ACCEPTED.fetch_add(1, Relaxed),
            Verdict::Refused(r) if r.code == "invalid_body" => INVALID_BODY.fetch_add(1, Relaxed),
            Verdict::Refused(_) => 0,
        };
        let n = CASES.fetch_add(1, Relaxed) + 1;
        if n.is_multiple_of(100_000) {
            let (a, b) = (ACCEPTED.load(Relaxed), INVALID_BODY.load(Relaxed));
            eprintln!(
                "differential: {n} cases, {a} accepted by both, {b} refused by both as \
                 invalid_body, {} refused by both as invalid records or too large",
                n - a - b
            );
        }
    }
}

/// Stamps a missing `ts_ms` as the store does.
fn stamped(mut r: Record, now_ms: i64) -> Record {
    let ts = match &mut r {
        Record::Run(x) => &mut x.ts_ms,
        Record::ModelLoad(x) => &mut x.ts_ms,
        Record::ContextRequest(x) => &mut x.ts_ms,
        Record::ContextOom(x) => &mut x.ts_ms,
        Record::SessionStarted(x) | Record::SessionEnded(x) => &mut x.ts_ms,
        _ => return r,
    };
    ts.get_or_insert(now_ms);
    r
}

fn id_mut(r: &mut Record) -> Option<&mut Option<String>> {
    Some(match r {
        Record::Run(x) => &mut x.id,
        Record::ModelLoad(x) => &mut x.id,
        Record::ContextRequest(x) => &mut x.id,
        Record::ContextOom(x) => &mut x.id,
        Record::SessionStarted(x) | Record::SessionEnded(x) => &mut x.id,
        _ => return None,
    })
}

/// Accepted batches through a real store (on tmpfs where there is one: the store fsyncs every
/// commit), read back.
mod store {
    use std::sync::Mutex;

    use kora_store::{Batch, Store, StoreOptions};

    use super::{NOW, canonical, id_mut, stamped};

    /// A fresh store after this many batches, so that it stays small.
    const BATCHES_PER_STORE: u64 = 5_000;

    struct Open {
        store: Store,
        batches: u64,
    }

    static STORE: Mutex<Option<Open>> = Mutex::new(None);
    static BATCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    fn open() -> Open {
        let shm = std::path::Path::new("/dev/shm");
        let mut b = tempfile::Builder::new();
        b.prefix("kora-fuzz-");
        let dir = if shm.is_dir() {
            b.tempdir_in(shm)
        } else {
            b.tempdir()
        }
        .expect("a temporary directory");
        let store = Store::open(&dir.path().join("fuzz.redb"), StoreOptions::default())
            .expect("a new store opens");
        // The store keeps its file open; removing the directory now leaves nothing behind when
        // the process ends, which a fuzzer's process does without running destructors.
        drop(dir);
        Open { store, batches: 0 }
    }

    /// `KORA_FUZZ_STORE=0` leaves the store out (the decoders alone run much faster).
    pub fn enabled() -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| std::env::var_os("KORA_FUZZ_STORE").is_none_or(|v| v != "0"))
    }

    /// Appends an accepted batch and reads it back. Ids get a prefix unique to this batch, so
    /// that batches of different inputs never meet as duplicates or conflicts.
    pub fn round_trip(batch: Batch) {
        let n = BATCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut guard = STORE.lock().unwrap_or_else(|e| e.into_inner());
        if guard
            .as_ref()
            .is_none_or(|o| o.batches >= BATCHES_PER_STORE)
        {
            if let Some(old) = guard.take() {
                old.store.shutdown();
            }
            *guard = Some(open());
        }
        let open = guard.as_mut().expect("opened above");
        open.batches += 1;
        let batch = match batch {
            Batch::Records(mut records) => {
                for r in &mut records {
                    if let Some(Some(id)) = id_mut(r) {
                        *id = format!("{n}/{id}");
                    }
                }
                Batch::Records(records)
            }
            Batch::Samples(mut samples) => {
                for s in &mut samples {
                    if let Some(id) = &mut s.id {
                        *id = format!("{n}/{id}");
                    }
                }
                Batch::Samples(samples)
            }
            other => other,
        };
        let len = match &batch {
            Batch::Records(v) => v.len(),
            Batch::Samples(v) => v.len(),
            Batch::Derived { .. } => unreachable!("decode_batch never answers derived records"),
        };
        let appended = open
            .store
            .append(NOW, batch.clone())
            .unwrap_or_else(|e| panic!("the store refused a valid batch: {e}"));
        assert_eq!(appended.accepted, len as u64, "{appended:?}");
        assert_eq!(appended.duplicates, 0, "{appended:?}");
        let first = appended.first_new_seq.expect("something was stored");
        let Batch::Records(records) = batch else {
            return;
        };
        let entries = open.store.scan(first, len).expect("the log reads back");
        let got: Vec<_> = entries.iter().map(|e| e.record.clone()).collect();
        let want: Vec<_> = records.into_iter().map(|r| stamped(r, NOW)).collect();
        assert_eq!(
            entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            appended.seqs,
            "the seqs read back differ from those acknowledged"
        );
        assert!(
            canonical(&Batch::Records(got.clone())) == canonical(&Batch::Records(want.clone())),
            "the store gave back other records\n stored: {want:?}\n read: {got:?}"
        );
    }
}

/// Timestamps worth trying: the bounds of validation and around them.
pub const TS_EDGES: [i64; 8] = [
    MIN_TS_MS - 1,
    MIN_TS_MS,
    NOW,
    NOW + MAX_FUTURE_MS,
    NOW + MAX_FUTURE_MS + 1,
    0,
    i64::MIN,
    i64::MAX,
];
