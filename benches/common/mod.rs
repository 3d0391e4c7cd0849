//! Shared by every bench: the simulated data, the SQLite baseline, disk measurement, printing.
//!
//! SQLite is given its best case: WAL, `synchronous=FULL` (durable like kora's
//! `Durability::Immediate`), `samples(series, ts, value)` as a `WITHOUT ROWID` table keyed by
//! `(series, ts)`, runs in a table indexed by `(model, seq)`, prepared statements, and one
//! connection behind a mutex for concurrent writers (no busy-handler sleeps).

#![allow(dead_code, clippy::unwrap_used)]

use std::io::BufRead;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use kora_model::{Record, Run, Sample, Signal, Stage, StageKind, Substrate};
use kora_store::{Store, StoreOptions};
use rusqlite::{Connection, params};

/// 2024-01-01T00:00:00Z, the first tick of every simulated day.
pub const DAY0_MS: i64 = 1_704_067_200_000;
pub const DAY_S: i64 = 86_400;

/// A small deterministic generator (xorshift64*), so every run sees the same data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The probe's ten signals at one tick: a realistic machine (24 GB GPU, 16 cores, 64 GB RAM)
/// with slowly moving memory, noisy CPU load, small session counts and bursty queue waits.
#[derive(Debug, Clone)]
pub struct Probe {
    rng: Rng,
    jitter_ms: u64,
    vram_free: f64,
    ram_free: f64,
    load: f64,
    sessions: f64,
}

impl Probe {
    pub fn new(seed: u64) -> Probe {
        Probe::with_jitter(seed, 4)
    }

    /// Timestamps jitter uniformly in `0..jitter_ms` ms after the tick (0 or 1: exact ticks).
    pub fn with_jitter(seed: u64, jitter_ms: u64) -> Probe {
        Probe {
            rng: Rng::new(seed),
            jitter_ms,
            vram_free: 18_000.0,
            ram_free: 40_000.0,
            load: 20.0,
            sessions: 1.0,
        }
    }

    /// The ten samples of tick `t` (seconds since `DAY0_MS`), with the timestamp jitter of a
    /// real sampler.
    pub fn tick(&mut self, t: i64) -> [Sample; 10] {
        let r = &mut self.rng;
        let ts = DAY0_MS + t * 1000 + r.below(self.jitter_ms) as i64;
        if r.below(60) == 0 {
            self.vram_free = (self.vram_free + (r.f64() - 0.5) * 4000.0).clamp(500.0, 23_000.0);
        }
        self.ram_free = (self.ram_free + (r.f64() - 0.5) * 64.0).clamp(2_000.0, 60_000.0);
        self.load = (self.load * 0.9 + r.f64() * 10.0).clamp(0.0, 100.0);
        if r.below(120) == 0 {
            self.sessions = r.below(4) as f64;
        }
        let generations = if self.sessions > 0.0 {
            r.below(self.sessions as u64 + 1) as f64
        } else {
            0.0
        };
        let queue = if generations > 1.0 {
            (r.f64() * 800.0 * 10.0).round() / 10.0
        } else {
            0.0
        };
        let load = (self.load * 10.0).round() / 10.0;
        let p95 = ((load + r.f64() * 15.0).min(100.0) * 10.0).round() / 10.0;
        let values = [
            (Signal::GpuVramTotalMb, 24_576.0),
            (Signal::GpuVramFreeMb, self.vram_free.round()),
            (Signal::CpuCores, 16.0),
            (Signal::CpuLoadP95, p95),
            (Signal::CpuLoadPct, load),
            (Signal::RamFreeMb, self.ram_free.round()),
            (Signal::RamTotalMb, 65_536.0),
            (Signal::ActiveSessions, self.sessions),
            (Signal::ActiveGenerations, generations),
            (Signal::QueueWaitMs, queue),
        ];
        values.map(|(signal, v)| sample(signal, ts, v))
    }
}

pub fn sample(signal: Signal, ts_ms: i64, value: f64) -> Sample {
    Sample::reading(signal, ts_ms, value)
}

/// `n` samples of the probe's data, ten series interleaved tick by tick, from tick `t0`.
pub fn probe_samples(seed: u64, t0: i64, n: usize) -> Vec<Sample> {
    probe_samples_jitter(seed, t0, n, 4)
}

/// [`probe_samples`] with timestamps jittering in `0..jitter_ms` ms.
pub fn probe_samples_jitter(seed: u64, t0: i64, n: usize, jitter_ms: u64) -> Vec<Sample> {
    let mut p = Probe::with_jitter(seed, jitter_ms);
    let mut out = Vec::with_capacity(n);
    let mut t = t0;
    while out.len() < n {
        out.extend(p.tick(t));
        t += 1;
    }
    out.truncate(n);
    out
}

pub const MODELS: [&str; 3] = ["llama-3-8b-q4", "qwen2.5-14b-q4", "mistral-7b-q8"];

/// A realistic local run (stage timings, token counts) of `model` at `ts_ms`.
pub fn run(rng: &mut Rng, i: u64, model: &str, ts_ms: i64) -> Run {
    let model_ms = (800.0 + rng.f64() * 2500.0).round();
    let det_ms = (50.0 + rng.f64() * 400.0).round();
    let tokens_in = 500 + rng.below(3000);
    let tokens_out = 50 + rng.below(600);
    Run {
        id: None,
        ts_ms: Some(ts_ms),
        run_id: format!("run-{i}"),
        session_id: format!("s{}", i / 20),
        model_id: model.to_owned(),
        substrate: Substrate::Local,
        prompt_hash: format!("{:064x}", u128::from(rng.next_u64()) * 7919),
        context_tokens: 4096,
        tokens_in: Some(tokens_in),
        tokens_out: Some(tokens_out),
        total_tokens: Some(tokens_in + tokens_out),
        model_latency_ms: model_ms,
        total_latency_ms: model_ms + det_ms,
        deterministic_stage_ms: det_ms,
        model_stage_ms: model_ms,
        validation_retry_count: u32::from(rng.below(10) == 0),
        budget_breach_count: 0,
        queue_wait_ms: Some((rng.f64() * 100.0).round()),
        prompt_tokens_sent: None,
        stages: Some(vec![
            Stage {
                name: "parse".into(),
                kind: StageKind::Deterministic,
                ms: det_ms,
            },
            Stage {
                name: "generate".into(),
                kind: StageKind::Model,
                ms: model_ms,
            },
        ]),
    }
}

/// `n` runs, the three models interleaved, one every 10 s.
pub fn runs(n: usize) -> Vec<Run> {
    let mut rng = Rng::new(7);
    (0..n as u64)
        .map(|i| {
            let model = MODELS[rng.below(3) as usize];
            run(&mut rng, i, model, DAY0_MS + i as i64 * 10_000)
        })
        .collect()
}

// ---- kora -----------------------------------------------------------------------------

pub fn kora_open(dir: &Path) -> Store {
    Store::open(&dir.join("telemetry.redb"), StoreOptions::default()).unwrap()
}

pub fn kora_append_samples(store: &Store, batch: Vec<Sample>) {
    let a = store
        .append(DAY0_MS, kora_store::Batch::Samples(batch))
        .unwrap();
    assert!(a.accepted > 0);
}

pub fn kora_append_runs(store: &Store, runs: &[Run]) {
    for chunk in runs.chunks(1000) {
        let records = chunk.iter().cloned().map(Record::Run).collect();
        store
            .append(DAY0_MS, kora_store::Batch::Records(records))
            .unwrap();
    }
}

// ---- SQLite ---------------------------------------------------------------------------

pub fn sqlite_open(dir: &Path) -> Connection {
    let c = Connection::open(dir.join("telemetry.sqlite")).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS series(id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE);
         CREATE TABLE IF NOT EXISTS samples(
             series INTEGER NOT NULL, ts INTEGER NOT NULL, value REAL,
             PRIMARY KEY(series, ts)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS runs(
             seq INTEGER PRIMARY KEY, model TEXT NOT NULL, ts INTEGER NOT NULL,
             session TEXT NOT NULL, run_id TEXT NOT NULL, prompt_hash TEXT NOT NULL,
             context_tokens INTEGER, tokens_in INTEGER, tokens_out INTEGER,
             model_latency_ms REAL, total_latency_ms REAL, deterministic_stage_ms REAL,
             model_stage_ms REAL, validation_retry_count INTEGER, budget_breach_count INTEGER,
             queue_wait_ms REAL);
         CREATE INDEX IF NOT EXISTS runs_by_model ON runs(model, seq);
         CREATE TABLE IF NOT EXISTS log(seq INTEGER PRIMARY KEY, body BLOB NOT NULL);",
    )
    .unwrap();
    let mut ins = c
        .prepare_cached("INSERT OR IGNORE INTO series(id, key) VALUES (?1, ?2)")
        .unwrap();
    for s in Signal::ALL {
        ins.execute(params![s as i64, s.as_str()]).unwrap();
    }
    drop(ins);
    c
}

/// Inserts `batch` in one transaction (one durable commit).
pub fn sqlite_append_samples(c: &mut Connection, batch: &[Sample]) {
    let tx = c.transaction().unwrap();
    {
        let mut st = tx
            .prepare_cached("INSERT INTO samples(series, ts, value) VALUES (?1, ?2, ?3)")
            .unwrap();
        for s in batch {
            st.execute(params![s.signal as i64, s.ts_ms, s.value])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// One sample in autocommit mode: its own durable commit.
pub fn sqlite_append_one(c: &Connection, s: &Sample) {
    c.prepare_cached("INSERT INTO samples(series, ts, value) VALUES (?1, ?2, ?3)")
        .unwrap()
        .execute(params![s.signal as i64, s.ts_ms, s.value])
        .unwrap();
}

pub fn sqlite_append_runs(c: &mut Connection, runs: &[Run]) {
    let tx = c.transaction().unwrap();
    {
        let mut st = tx
            .prepare_cached(
                "INSERT INTO runs(model, ts, session, run_id, prompt_hash, context_tokens,
                   tokens_in, tokens_out, model_latency_ms, total_latency_ms,
                   deterministic_stage_ms, model_stage_ms, validation_retry_count,
                   budget_breach_count, queue_wait_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )
            .unwrap();
        for r in runs {
            st.execute(params![
                r.model_id,
                r.ts_ms,
                r.session_id,
                r.run_id,
                r.prompt_hash,
                r.context_tokens as i64,
                r.tokens_in.map(|v| v as i64),
                r.tokens_out.map(|v| v as i64),
                r.model_latency_ms,
                r.total_latency_ms,
                r.deterministic_stage_ms,
                r.model_stage_ms,
                r.validation_retry_count,
                r.budget_breach_count,
                r.queue_wait_ms,
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

// ---- measuring ------------------------------------------------------------------------

/// Bytes allocated on disk under `dir` (block counts, like `du`), all files.
pub fn allocated_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let md = entry.metadata().unwrap();
        if md.is_dir() {
            total += allocated_bytes(&entry.path());
        } else {
            total += md.blocks() * 512;
        }
    }
    total
}

/// Apparent size (file lengths) under `dir`.
pub fn apparent_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let md = entry.metadata().unwrap();
        if md.is_dir() {
            total += apparent_bytes(&entry.path());
        } else {
            total += md.len();
        }
    }
    total
}

/// One redb table of a store file: its entries, the bytes of its pages, the bytes stored in them.
pub struct TableBytes {
    pub name: String,
    pub entries: u64,
    pub in_pages: u64,
    pub stored: u64,
}

/// Where a store file's bytes are: the file's page size and allocated bytes, and every redb
/// table, most bytes in pages first.
pub fn store_tables(db: &Path) -> (u64, u64, Vec<TableBytes>) {
    use redb::{ReadableDatabase, ReadableTableMetadata, TableHandle};
    let db = redb::Database::open(db).unwrap();
    let wtx = db.begin_write().unwrap();
    let stats = wtx.stats().unwrap();
    wtx.abort().unwrap();
    let page = stats.page_size() as u64;
    let rtx = db.begin_read().unwrap();
    let mut rows = Vec::new();
    for handle in rtx.list_tables().unwrap() {
        let name = handle.name().to_owned();
        let t = rtx.open_untyped_table(handle).unwrap();
        let s = t.stats().unwrap();
        // Every byte of the table's pages: what is stored, redb's own bytes in them, and what
        // is left empty. (Counting leaf and branch pages one page each would miss the runs of
        // pages that values larger than a page take.)
        let bytes = s.stored_bytes() + s.metadata_bytes() + s.fragmented_bytes();
        rows.push(TableBytes {
            name,
            entries: t.len().unwrap(),
            in_pages: bytes,
            stored: s.stored_bytes(),
        });
    }
    rows.sort_by(|a, b| {
        b.in_pages
            .cmp(&a.in_pages)
            .then_with(|| a.name.cmp(&b.name))
    });
    (page, stats.allocated_pages() * page, rows)
}

/// The log of a store file by record kind: the kind, its log rows and the bytes of their
/// values, most bytes first (from the `log_by_kind` index and the `log` table).
pub fn log_kinds(db: &Path) -> Vec<(String, u64, u64)> {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};
    const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
    const BY_KIND: TableDefinition<(u8, u64), ()> = TableDefinition::new("log_by_kind");
    let db = redb::Database::open(db).unwrap();
    let rtx = db.begin_read().unwrap();
    let log = rtx.open_table(LOG).unwrap();
    let by_kind = rtx.open_table(BY_KIND).unwrap();
    let mut out: std::collections::BTreeMap<u8, (u64, u64)> = Default::default();
    for row in by_kind.iter().unwrap() {
        let (key, _) = row.unwrap();
        let (kind, seq) = key.value();
        let len = log.get(seq).unwrap().map_or(0, |v| v.value().len() as u64);
        let e = out.entry(kind).or_default();
        e.0 += 1;
        e.1 += len;
    }
    let mut rows: Vec<(String, u64, u64)> = out
        .into_iter()
        .map(|(kind, (n, bytes))| {
            let name = kora_model::RecordKind::ALL
                .iter()
                .find(|k| **k as u8 == kind)
                .map_or_else(|| format!("kind {kind}"), |k| format!("{k:?}"));
            (name, n, bytes)
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.2));
    rows
}

/// Asks the kernel to drop `file`'s cached pages (POSIX_FADV_DONTNEED, through python3: the
/// workspace forbids `unsafe`). Answers whether it could.
pub fn evict(file: &Path) -> bool {
    std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import os,sys\nfd=os.open(sys.argv[1],os.O_RDONLY)\nos.fsync(fd)\n\
             os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)",
        )
        .arg(file)
        .status()
        .is_ok_and(|s| s.success())
}

/// Copies the directory `from` to `to` (which must not exist yet), files and subdirectories.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir(to)
        .unwrap_or_else(|e| panic!("cannot create {} ({e}): it must not exist", to.display()));
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

pub fn tempdir() -> tempfile::TempDir {
    // Under the target dir's filesystem, not a tmpfs, so that fsync and block counts are real.
    let base = std::env::var_os("KORA_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::tempdir_in(base).unwrap()
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let out = f();
    (start.elapsed(), out)
}

/// Formats a rate with thousands separators.
pub fn rate(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Prints one comparison line: kora's figure, SQLite's, and kora / SQLite (higher-is-better
/// figures) or SQLite / kora (lower-is-better), always so that above 1 means kora is ahead.
pub fn compare(what: &str, unit: &str, kora: f64, sqlite: f64, higher_is_better: bool) {
    compare_with(what, unit, kora, "sqlite", sqlite, higher_is_better);
}

/// [`compare`] against a baseline other than SQLite.
pub fn compare_with(
    what: &str,
    unit: &str,
    kora: f64,
    other_name: &str,
    other: f64,
    higher_is_better: bool,
) {
    let ratio = if higher_is_better {
        kora / other
    } else {
        other / kora
    };
    println!(
        "RESULT {what:<44} kora {:>12} {unit:<9} {other_name} {:>12} {unit:<9} kora advantage x{ratio:.2}",
        fmt_num(kora),
        fmt_num(other),
    );
}

pub fn fmt_num(v: f64) -> String {
    if v >= 1000.0 {
        rate(v)
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

// ---- the real binary ------------------------------------------------------------------

/// Spawns `kora-telemetry serve` on `data_dir`; answers the child, its base URL and how long it took to say
/// it is listening.
pub fn spawn_serve(data_dir: &Path) -> (std::process::Child, String, Duration) {
    spawn_serve_with(data_dir, &[], "error")
}

/// [`spawn_serve`] listening on `listen` (`127.0.0.1:PORT`: a restart on the port the
/// clients know).
pub fn spawn_serve_on(data_dir: &Path, listen: &str) -> (std::process::Child, String, Duration) {
    spawn(data_dir, listen, &[], "error")
}

/// [`spawn_serve`] with more `serve` flags (`extra`) and the service's log filter (`log`, its
/// lines go to this process's stderr).
pub fn spawn_serve_with(
    data_dir: &Path,
    extra: &[&str],
    log: &str,
) -> (std::process::Child, String, Duration) {
    spawn(data_dir, "127.0.0.1:0", extra, log)
}

fn spawn(
    data_dir: &Path,
    listen: &str,
    extra: &[&str],
    log: &str,
) -> (std::process::Child, String, Duration) {
    let start = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kora-telemetry"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["serve", "--listen", listen])
        .args(extra)
        .env("KORA_TELEMETRY_LOG", log)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let took = start.elapsed();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    (child, format!("http://{addr}"), took)
}

/// Stops a spawned `serve` cleanly (SIGTERM: every queued commit is finished) and waits for it;
/// answers how long the stop took.
pub fn stop_serve(mut child: std::process::Child) -> Duration {
    let start = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM failed");
    let exit = child.wait().unwrap();
    assert!(exit.success(), "serve stopped with {exit}");
    start.elapsed()
}

/// A field of `/proc/PID/status` in KiB (`VmRSS:`, `VmHWM:`); `None` once the process is gone.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// A `/proc/PID/status` field in KiB (`VmRSS:`, `VmHWM:`) of a process that must be running.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    proc_status_kib(pid, field).unwrap()
}

/// `VmRSS` of `pid` in MiB; `None` once the process is gone.
pub fn proc_rss_mib(pid: u32) -> Option<f64> {
    proc_status_kib(pid, "VmRSS:").map(|kib| kib as f64 / 1024.0)
}

/// User + system CPU time of `pid` (a number, or `self`), in clock ticks (`/proc/PID/stat`);
/// `None` once the process is gone.
fn stat_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// User + system CPU time of `pid`; `None` once the process is gone.
pub fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    stat_ticks(&pid.to_string())
}

/// User + system CPU time of `pid` (`"self"` for this process), in clock ticks.
pub fn cpu_ticks(pid: &str) -> u64 {
    stat_ticks(pid).unwrap()
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 when it cannot be asked).
pub fn clock_ticks_per_s() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A whole number from the environment variable `name`, else `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The samples a running `serve` at `base` has stored, from `/v1/health`.
pub fn stored_samples(base: &str) -> u64 {
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let health: serde_json::Value = agent
        .get(format!("{base}/v1/health"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    health["samples"].as_u64().unwrap()
}

/// `GET /v1/health` of a running `serve` at `base`.
pub fn health(base: &str) -> serde_json::Value {
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    agent
        .get(format!("{base}/v1/health"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap()
}

/// How far to move samples generated from [`DAY0_MS`] (`days` of them) so that they fill the
/// last `days` whole UTC days before now, as a running service receives them (within its raw
/// retention of 14 days, never from the future). A whole number of days: the data's alignment to
/// minutes, hours and days is what it was.
pub fn shift_to_recent_days(days: i64) -> i64 {
    let day_ms = DAY_S * 1000;
    let today = kora_pipeline::clock::wall_ms().div_euclid(day_ms) * day_ms;
    today - days * day_ms - DAY0_MS
}

/// `samples` with every timestamp moved by `shift_ms`.
pub fn shifted(samples: &[Sample], shift_ms: i64) -> Vec<Sample> {
    samples
        .iter()
        .map(|s| Sample {
            ts_ms: s.ts_ms.map(|t| t + shift_ms),
            ..s.clone()
        })
        .collect()
}

/// Spawns `kora-telemetry serve` on `data_dir` with its own probe out of the way: `serve` has
/// no switch to turn it off, so its interval is `probe_at_ms` ms. The sampler takes its first
/// snapshot at once, stamped with its tick (now rounded to the interval: `probe_at_ms` itself
/// while now is under 1.5 times it, that is for decades), applies the retention before it, and
/// its next tick is decades away. Waits until that snapshot is stored; answers the child, its
/// base URL and the samples the probe stored.
pub fn spawn_serve_probe_at(
    data_dir: &Path,
    probe_at_ms: i64,
) -> (std::process::Child, String, u64) {
    let interval = format!("{probe_at_ms}ms");
    let (child, base, _) = spawn_serve_with(data_dir, &["--probe-interval", &interval], "error");
    let start = Instant::now();
    loop {
        let stored = stored_samples(&base);
        if stored > 0 {
            return (child, base, stored);
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "serve's probe stored no sample within 120 s of its start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A keep-alive client posting MessagePack sample batches to `POST /v1/samples`, each answered
/// once durable.
pub struct SamplesPoster {
    agent: ureq::Agent,
    url: String,
}

impl SamplesPoster {
    pub fn new(base: &str) -> SamplesPoster {
        SamplesPoster {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into(),
            url: format!("{base}/v1/samples"),
        }
    }

    /// The MessagePack body of `samples` (named fields, as `kora-client` sends it).
    pub fn body(samples: Vec<Sample>) -> Vec<u8> {
        rmp_serde::to_vec_named(&kora_model::SampleBatch { samples }).unwrap()
    }

    /// Posts one encoded batch of `n` samples and checks that all `n` were accepted.
    pub fn post(&self, body: &[u8], n: usize) {
        let mut resp = self
            .agent
            .post(&self.url)
            .header("content-type", "application/msgpack")
            .send(body)
            .unwrap();
        if resp.status() != 200 {
            let why = resp.body_mut().read_to_string().unwrap_or_default();
            panic!("the service answered {}: {why}", resp.status());
        }
        let ack: kora_model::IngestAck = resp.body_mut().read_json().unwrap();
        assert_eq!(ack.accepted, n as u64, "samples accepted of a batch of {n}");
    }
}

/// The real service (`kora_server::serve` over a pipeline) started in-process on
/// 127.0.0.1:0, on its own runtime.
pub struct InProcess {
    pub rt: tokio::runtime::Runtime,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl InProcess {
    /// Serves `pipeline` (its data directory `dir` holds the token).
    pub fn start(pipeline: std::sync::Arc<kora_pipeline::Pipeline>, dir: &Path) -> InProcess {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = kora_server::AppState::new(
            pipeline,
            kora_server::Config {
                token: kora_server::token::Token::load_or_create(dir).unwrap(),
                data_dir: dir.to_owned(),
                hosts: kora_server::HostPolicy {
                    port,
                    extra_names: vec![],
                },
            },
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(kora_server::serve(listener, state, async move {
            let _ = stopped.await;
        }));
        InProcess {
            rt,
            base: format!("http://127.0.0.1:{port}"),
            stop,
            server,
        }
    }

    /// Stops the service gracefully (every queued commit done).
    pub fn stop(self) {
        let _ = self.stop.send(());
        self.rt.block_on(self.server).unwrap().unwrap();
    }
}
