//! [`Sender`]: queues samples, runs and events and sends them in batches from a background
//! thread, in the order they were queued, retrying until the service acknowledges them.
//!
//! - **Batches**: a batch goes when `batch_size` records wait, or when the oldest has waited
//!   `flush_interval`, or on [`Sender::flush`]. A batch holds consecutive records of one kind
//!   (samples, runs or events go to different endpoints), so the service stores them in the
//!   order they were queued. One batch is in flight at a time.
//! - **Client ids and time**: [`Sender::enqueue`] gives each record an `id` and a `ts_ms` (the
//!   time it was queued) when it has none, and checks it as the service will, so an invalid
//!   record is refused there and then. A retried batch stores nothing twice: the service
//!   counts a record whose id it holds as a duplicate.
//! - **Retries**: a failed batch is kept and sent again after a back-off (the service's
//!   `Retry-After` on 429/503/507, else exponential up to the policy's `max_delay`), however
//!   long the service is away. A batch the service refuses for its content (400, 409, 413, and
//!   422 when it would cross a cardinality limit) is sent again one record at a time, so that
//!   only the refused records are set aside: they are counted, kept for
//!   [`Sender::take_rejected`], and, with a spool, appended to `rejected.jsonl` in its
//!   directory; every other record goes on.
//! - **Spool**: with [`SenderBuilder::spool`], queued records are in a [`Spool`] on disk until
//!   acknowledged, so they survive a restart of the service and of the client (a new `Sender`
//!   on the same directory sends them first). Without one they wait in memory, bounded the
//!   same way. A full queue is an error of `enqueue`; nothing queued is ever dropped.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kora_model::{FieldError, IngestAck};

use crate::error::ClientError;
use crate::http::Client;
use crate::record::{IdSource, Item, wall_ms};
use crate::retry::{Backoff, RetryPolicy};
use crate::spool::{OpenReport, Spool, SpoolError, SpoolOptions};

/// The most bytes of records one batch carries (the service takes bodies up to 8 MiB).
const MAX_BATCH_BYTES: u64 = 4 * 1024 * 1024;
/// The most refused records kept for [`Sender::take_rejected`].
const MAX_REJECTED_KEPT: usize = 10_000;
/// How long dropping a `Sender` whose queue is in memory tries to send what waits.
const DROP_FLUSH: Duration = Duration::from_secs(5);

/// Why a record was not queued.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The record breaks a rule of the service (`index` in the records given).
    #[error("record {index}: {error}")]
    Invalid { index: usize, error: FieldError },
    /// The queue is full (or its spool failed): nothing of this call was queued, everything
    /// queued before is kept.
    #[error(transparent)]
    Queue(#[from] SpoolError),
    #[error("record {index} cannot be encoded: {reason}")]
    Encode { index: usize, reason: String },
    /// The sender was closed.
    #[error("the sender is closed")]
    Closed,
}

/// Why [`Sender::flush`] returned before everything was acknowledged.
#[derive(Debug, thiserror::Error)]
#[error(
    "{pending} records are not acknowledged yet after {waited:?}{}",
    .last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
)]
pub struct FlushTimeout {
    pub pending: u64,
    pub waited: Duration,
    pub last_error: Option<String>,
}

/// A record the service refused, with its answer.
#[derive(Debug)]
pub struct Rejected {
    pub item: Item,
    pub error: ClientError,
}

/// What a sender did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Records waiting (queued or in flight).
    pub pending: u64,
    pub pending_bytes: u64,
    /// Records queued since start, those found in the spool at start included.
    pub enqueued: u64,
    /// Records the service acknowledged: `stored` newly, `duplicates` already held (a batch
    /// whose earlier answer was lost).
    pub delivered: u64,
    pub stored: u64,
    pub duplicates: u64,
    /// Records the service refused for their content (set aside, see the module docs).
    pub rejected: u64,
    /// Batches acknowledged.
    pub batches: u64,
    /// Attempts that failed (and were retried).
    pub failed_attempts: u64,
    pub last_error: Option<String>,
}

/// Where queued records wait.
#[derive(Debug)]
enum Queue {
    Memory {
        items: VecDeque<Vec<u8>>,
        bytes: u64,
        max_bytes: u64,
    },
    Spool(Spool),
}

impl Queue {
    fn len(&self) -> usize {
        match self {
            Queue::Memory { items, .. } => items.len(),
            Queue::Spool(s) => s.len(),
        }
    }

    fn pending_bytes(&self) -> u64 {
        match self {
            Queue::Memory { bytes, .. } => *bytes,
            Queue::Spool(s) => s.pending_bytes(),
        }
    }

    fn append(&mut self, payloads: Vec<Vec<u8>>) -> Result<(), SpoolError> {
        match self {
            Queue::Memory {
                items,
                bytes,
                max_bytes,
            } => {
                let needed: u64 = payloads.iter().map(|p| p.len() as u64).sum();
                if *bytes + needed > *max_bytes {
                    return Err(SpoolError::Full {
                        dir: PathBuf::from("in memory"),
                        used: *bytes,
                        needed,
                        max_bytes: *max_bytes,
                    });
                }
                *bytes += needed;
                items.extend(payloads);
                Ok(())
            }
            Queue::Spool(s) => s.append(&payloads),
        }
    }

    fn peek(&self, n: usize) -> Result<Vec<Vec<u8>>, SpoolError> {
        match self {
            Queue::Memory { items, .. } => {
                let mut total = 0u64;
                let mut out = Vec::new();
                for p in items.iter().take(n) {
                    if !out.is_empty() && total + p.len() as u64 > MAX_BATCH_BYTES {
                        break;
                    }
                    total += p.len() as u64;
                    out.push(p.clone());
                }
                Ok(out)
            }
            Queue::Spool(s) => s.peek(n, MAX_BATCH_BYTES),
        }
    }

    fn ack(&mut self, n: usize) -> Result<(), SpoolError> {
        match self {
            Queue::Memory { items, bytes, .. } => {
                for p in items.drain(..n.min(items.len())) {
                    *bytes -= p.len() as u64;
                }
                Ok(())
            }
            Queue::Spool(s) => s.ack(n),
        }
    }
}

#[derive(Debug)]
struct State {
    queue: Queue,
    stats: SenderStats,
    /// Records removed from the queue (delivered or set aside) since start.
    done: u64,
    /// When the oldest waiting record was queued (or found at start).
    oldest: Option<Instant>,
    /// No attempt before this (back-off).
    not_before: Option<Instant>,
    flushers: usize,
    closing: bool,
    rejected: Vec<Rejected>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the sending thread: records queued, a flush, closing.
    wake: Condvar,
    /// Wakes the flushers: records acknowledged.
    progress: Condvar,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How to build a [`Sender`].
#[derive(Debug)]
pub struct SenderBuilder {
    client: Client,
    batch_size: usize,
    flush_interval: Duration,
    backoff: RetryPolicy,
    spool: Option<(PathBuf, SpoolOptions)>,
    memory_max_bytes: u64,
}

impl SenderBuilder {
    /// The most records of one batch (1 to 10,000; default 500).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.clamp(1, kora_model::MAX_BATCH_ITEMS);
        self
    }

    /// How long the oldest waiting record may wait for a batch to fill (default 1 s).
    pub fn flush_interval(mut self, d: Duration) -> Self {
        self.flush_interval = d;
        self
    }

    /// The back-off between failed attempts (its `max_attempts` is ignored: the sender keeps
    /// trying). Default: 100 ms doubling up to 5 s, `Retry-After` honoured up to 60 s.
    pub fn backoff(mut self, policy: RetryPolicy) -> Self {
        self.backoff = policy;
        self
    }

    /// Keep queued records in a spool in `dir` (created when missing) until acknowledged.
    pub fn spool(mut self, dir: impl Into<PathBuf>, options: SpoolOptions) -> Self {
        self.spool = Some((dir.into(), options));
        self
    }

    /// The most bytes of records waiting in memory when there is no spool (default 64 MiB).
    pub fn memory_limit(mut self, max_bytes: u64) -> Self {
        self.memory_max_bytes = max_bytes;
        self
    }

    /// Opens the spool (reporting what it found) and starts the sending thread.
    pub fn start(self) -> Result<(Sender, OpenReport), SpoolError> {
        let (queue, report) = match &self.spool {
            Some((dir, options)) => {
                let (spool, report) = Spool::open(dir, *options)?;
                (Queue::Spool(spool), report)
            }
            None => (
                Queue::Memory {
                    items: VecDeque::new(),
                    bytes: 0,
                    max_bytes: self.memory_max_bytes,
                },
                OpenReport::default(),
            ),
        };
        let waiting = queue.len() as u64;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                stats: SenderStats {
                    enqueued: waiting,
                    ..SenderStats::default()
                },
                oldest: (waiting > 0).then(Instant::now),
                queue,
                done: 0,
                not_before: None,
                flushers: 0,
                closing: false,
                rejected: Vec::new(),
            }),
            wake: Condvar::new(),
            progress: Condvar::new(),
        });
        let worker = Worker {
            shared: shared.clone(),
            client: self.client,
            batch_size: self.batch_size,
            flush_interval: self.flush_interval,
            backoff: Backoff::new(self.backoff),
            rejected_file: self.spool.as_ref().map(|(d, _)| d.join("rejected.jsonl")),
            isolate: 0,
        };
        let thread = std::thread::Builder::new()
            .name("kora-client-sender".into())
            .spawn(move || worker.run())
            .map_err(|source| SpoolError::Io {
                path: PathBuf::from("(sender thread)"),
                source,
            })?;
        let sender = Sender {
            shared,
            thread: Some(thread),
            ids: IdSource::new(),
        };
        Ok((sender, report))
    }
}

/// Queues records and sends them in batches from a background thread. See the module docs.
///
/// Thread-safety: `Sender` is `Send + Sync`; any number of threads may call
/// [`Sender::enqueue`] at once (the queue is behind a lock; records from one thread keep their
/// order). One background thread sends, one batch at a time. Dropping the sender stops that
/// thread (with a memory queue it first tries for up to 5 s to send what waits); call
/// [`Sender::close`] to wait until everything was acknowledged.
#[derive(Debug)]
pub struct Sender {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    ids: IdSource,
}

impl Sender {
    /// A sender over `client` (its address, token and encoding; its retry policy is not used:
    /// see [`SenderBuilder::backoff`]).
    pub fn builder(client: Client) -> SenderBuilder {
        SenderBuilder {
            client,
            batch_size: 500,
            flush_interval: Duration::from_secs(1),
            backoff: RetryPolicy::default(),
            spool: None,
            memory_max_bytes: 64 * 1024 * 1024,
        }
    }

    /// Queues one record; see [`Sender::enqueue_all`].
    pub fn enqueue(&self, item: impl Into<Item>) -> Result<(), EnqueueError> {
        self.enqueue_all(vec![item.into()])
    }

    /// Queues `items` in order, all or none: each gets an `id` and a `ts_ms` when it has none,
    /// and is checked as the service will check it. With a spool, they are on disk when this
    /// returns (one write and one sync for the call).
    pub fn enqueue_all(&self, items: Vec<Item>) -> Result<(), EnqueueError> {
        if items.is_empty() {
            return Ok(());
        }
        let now = wall_ms();
        let mut payloads = Vec::with_capacity(items.len());
        for (index, mut item) in items.into_iter().enumerate() {
            item.prepare(&self.ids, now)
                .map_err(|error| EnqueueError::Invalid { index, error })?;
            let bytes = serde_json::to_vec(&item).map_err(|e| EnqueueError::Encode {
                index,
                reason: e.to_string(),
            })?;
            payloads.push(bytes);
        }
        let n = payloads.len() as u64;
        let mut st = lock(&self.shared.state);
        if st.closing {
            return Err(EnqueueError::Closed);
        }
        st.queue.append(payloads)?;
        st.stats.enqueued += n;
        st.oldest.get_or_insert_with(Instant::now);
        drop(st);
        self.shared.wake.notify_all();
        Ok(())
    }

    /// What the sender did so far.
    pub fn stats(&self) -> SenderStats {
        let st = lock(&self.shared.state);
        let mut stats = st.stats.clone();
        stats.pending = st.queue.len() as u64;
        stats.pending_bytes = st.queue.pending_bytes();
        stats
    }

    /// The records the service refused since the last call (at most 10,000 are kept; the
    /// count is in [`SenderStats::rejected`]).
    pub fn take_rejected(&self) -> Vec<Rejected> {
        std::mem::take(&mut lock(&self.shared.state).rejected)
    }

    /// Sends what waits now, without waiting for a batch to fill, and waits until every
    /// record queued before this call was acknowledged (or set aside), at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), FlushTimeout> {
        let start = Instant::now();
        let mut st = lock(&self.shared.state);
        let target = st.done + st.queue.len() as u64;
        st.flushers += 1;
        self.shared.wake.notify_all();
        while st.done < target {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                st.flushers -= 1;
                return Err(FlushTimeout {
                    pending: target - st.done,
                    waited: start.elapsed(),
                    last_error: st.stats.last_error.clone(),
                });
            }
            st = self
                .shared
                .progress
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        st.flushers -= 1;
        Ok(())
    }

    /// Flushes (at most `timeout`), then stops the sending thread. With a spool, what was not
    /// acknowledged stays in it for the next sender.
    pub fn close(mut self, timeout: Duration) -> Result<SenderStats, FlushTimeout> {
        let flushed = self.flush(timeout);
        self.stop();
        flushed.map(|()| self.stats())
    }

    /// Stops the sending thread now (after the attempt in flight, if any) without waiting for
    /// what waits, and answers the final figures. With a spool, what waits stays in it for the
    /// next sender; with a memory queue it is dropped (`pending` says how many): use
    /// [`Sender::close`] to send it first.
    pub fn shutdown(mut self) -> SenderStats {
        self.stop();
        self.stats()
    }

    fn stop(&mut self) {
        lock(&self.shared.state).closing = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let in_memory = matches!(lock(&self.shared.state).queue, Queue::Memory { .. });
            if in_memory {
                let _ = self.flush(DROP_FLUSH);
            }
            self.stop();
        }
    }
}

/// The sending thread.
struct Worker {
    shared: Arc<Shared>,
    client: Client,
    batch_size: usize,
    flush_interval: Duration,
    backoff: Backoff,
    rejected_file: Option<PathBuf>,
    /// Records still to send one at a time (a batch the service refused for its content).
    isolate: usize,
}

impl Worker {
    fn run(mut self) {
        while let Some(payloads) = self.next_batch() {
            let items: Vec<Result<Item, String>> = payloads
                .iter()
                .map(|p| serde_json::from_slice::<Item>(p).map_err(|e| e.to_string()))
                .collect();
            // A record that no longer decodes cannot be sent: set it aside like a refused one.
            if let Some(Err(reason)) = items.first() {
                let error = ClientError::Encode {
                    what: "a spooled record".into(),
                    reason: reason.clone(),
                };
                self.set_aside_undecodable(&payloads[0], error);
                continue;
            }
            let batch: Vec<Item> = items
                .into_iter()
                .map_while(Result::ok)
                .scan(None, |kind, item| {
                    let endpoint = item.endpoint();
                    (*kind.get_or_insert(endpoint) == endpoint).then_some(item)
                })
                .collect();
            let result = send(&self.client, &batch);
            self.settle(batch, result);
        }
    }

    /// Waits until a batch is due, and reads it; `None` when closing.
    fn next_batch(&mut self) -> Option<Vec<Vec<u8>>> {
        let mut st = lock(&self.shared.state);
        loop {
            if st.closing && (st.flushers == 0 || st.queue.len() == 0) {
                return None;
            }
            let now = Instant::now();
            let waiting = st.queue.len();
            let mut due_at = None;
            if waiting > 0 {
                let full = waiting >= self.batch_size || self.isolate > 0;
                let pushed = st.flushers > 0 || st.closing;
                let ripe = st.oldest.map(|t| t + self.flush_interval);
                due_at = Some(match (full || pushed, ripe) {
                    (true, _) | (false, None) => now,
                    (false, Some(t)) => t,
                });
                if let Some(nb) = st.not_before {
                    due_at = due_at.map(|d| d.max(nb));
                }
            }
            match due_at {
                Some(d) if d <= now => {
                    let n = if self.isolate > 0 { 1 } else { self.batch_size };
                    match st.queue.peek(n) {
                        Ok(p) if !p.is_empty() => return Some(p),
                        Ok(_) => {}
                        Err(e) => {
                            st.stats.last_error = Some(e.to_string());
                            st.not_before = Some(now + self.backoff.next_delay(None));
                        }
                    }
                }
                Some(d) => {
                    st = self
                        .shared
                        .wake
                        .wait_timeout(st, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                None => {
                    st = self
                        .shared
                        .wake
                        .wait(st)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
    }

    /// Records the outcome of one attempt.
    fn settle(&mut self, batch: Vec<Item>, result: Result<IngestAck, ClientError>) {
        let n = batch.len();
        match result {
            Ok(ack) => {
                self.backoff.reset();
                self.isolate = self.isolate.saturating_sub(n);
                let mut st = lock(&self.shared.state);
                self.remove(&mut st, n);
                st.stats.delivered += n as u64;
                st.stats.stored += ack.accepted;
                st.stats.duplicates += ack.duplicates;
                st.stats.batches += 1;
                st.not_before = None;
            }
            Err(e) if e.rejects_records() && n > 1 => {
                // Find the refused records: the next `n` go one at a time.
                self.isolate = n;
                lock(&self.shared.state).stats.last_error = Some(e.to_string());
            }
            Err(e) if e.rejects_records() => {
                self.isolate = self.isolate.saturating_sub(1);
                let mut st = lock(&self.shared.state);
                st.stats.last_error = Some(e.to_string());
                let mut batch = batch;
                if let Some(item) = batch.pop() {
                    self.write_rejected(&item, &e);
                    st.stats.rejected += 1;
                    if st.rejected.len() < MAX_REJECTED_KEPT {
                        st.rejected.push(Rejected { item, error: e });
                    }
                }
                self.remove(&mut st, 1);
            }
            Err(e) => {
                let wait = self.backoff.next_delay(e.retry_after());
                let mut st = lock(&self.shared.state);
                st.stats.failed_attempts += 1;
                st.stats.last_error = Some(e.to_string());
                st.not_before = Some(Instant::now() + wait);
            }
        }
    }

    /// Removes the oldest `n` records from the queue, and tells the flushers.
    fn remove(&self, st: &mut State, n: usize) {
        if let Err(e) = st.queue.ack(n) {
            // Delivered all the same; a reopened spool may offer them again (stored once).
            st.stats.last_error = Some(e.to_string());
        }
        st.done += n as u64;
        if st.queue.len() == 0 {
            st.oldest = None;
        }
        self.shared.progress.notify_all();
    }

    fn set_aside_undecodable(&mut self, payload: &[u8], error: ClientError) {
        if let Some(path) = &self.rejected_file {
            let line = serde_json::json!({
                "error": error.to_string(),
                "bytes": String::from_utf8_lossy(payload),
            });
            append_line(path, &line);
        }
        let mut st = lock(&self.shared.state);
        st.stats.rejected += 1;
        st.stats.last_error = Some(error.to_string());
        self.remove(&mut st, 1);
    }

    fn write_rejected(&self, item: &Item, error: &ClientError) {
        if let Some(path) = &self.rejected_file {
            let line = serde_json::json!({ "error": error.to_string(), "item": item });
            append_line(path, &line);
        }
    }
}

fn append_line(path: &std::path::Path, line: &serde_json::Value) {
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| {
            writeln!(f, "{line}")?;
            f.sync_data()
        });
    // The record is kept in memory and counted either way; the file is a convenience.
    let _ = written;
}

/// One attempt of one batch (all of one kind).
fn send(client: &Client, batch: &[Item]) -> Result<IngestAck, ClientError> {
    let Some(first) = batch.first() else {
        return Ok(IngestAck {
            accepted: 0,
            duplicates: 0,
            first_seq: None,
            last_seq: None,
            decisions: None,
            decisions_complete: None,
        });
    };
    let records: Vec<_> = batch.iter().map(Item::record).collect();
    client.ingest_once(first.endpoint(), &records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kora_model::{Sample, Signal};

    fn sample(i: u32) -> Sample {
        Sample {
            id: None,
            ts_ms: None,
            signal: Signal::ActiveSessions,
            value: Some(f64::from(i % 4)),
            unavailable: None,
            device: None,
            model_id: None,
            session_id: None,
        }
    }

    /// A service that is not there: a port bound, then let go.
    fn nowhere() -> Client {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Client::new(format!("http://127.0.0.1:{port}"))
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            initial_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn records_wait_while_the_service_is_away_and_a_full_queue_is_an_error() {
        let (sender, report) = Sender::builder(nowhere())
            .flush_interval(Duration::from_millis(1))
            .backoff(fast())
            .memory_limit(4_000)
            .start()
            .unwrap();
        assert_eq!(report, OpenReport::default());
        let mut queued = 0;
        let full = loop {
            match sender.enqueue(sample(queued)) {
                Ok(()) => queued += 1,
                Err(e) => break e,
            }
        };
        assert!(
            matches!(full, EnqueueError::Queue(SpoolError::Full { .. })),
            "{full}"
        );
        let e = sender.flush(Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.pending, u64::from(queued));
        assert!(
            e.last_error
                .as_deref()
                .is_some_and(|m| m.contains("cannot reach")),
            "{e}"
        );
        let stats = sender.shutdown();
        assert_eq!(
            stats.pending,
            u64::from(queued),
            "nothing was dropped: {stats:?}"
        );
        assert_eq!(stats.enqueued, u64::from(queued));
        assert!(stats.failed_attempts > 0);
        assert_eq!(stats.delivered, 0);
    }

    #[test]
    fn an_invalid_record_is_refused_when_queued_and_nothing_of_its_call_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        let (sender, _) = Sender::builder(nowhere())
            .backoff(fast())
            .spool(dir.path(), SpoolOptions::default())
            .start()
            .unwrap();
        let mut bad = sample(1);
        bad.value = Some(-1.0);
        let items = vec![Item::from(sample(0)), Item::from(bad)];
        match sender.enqueue_all(items) {
            Err(EnqueueError::Invalid { index: 1, error }) => assert_eq!(error.field, "value"),
            other => panic!("{other:?}"),
        }
        assert_eq!(sender.stats().pending, 0);
        sender.enqueue(sample(2)).unwrap();
        let stats = sender.shutdown();
        assert_eq!(stats.pending, 1);
        // The next sender on the spool finds it, with the id and time it was given.
        let (sender, report) = Sender::builder(nowhere())
            .spool(dir.path(), SpoolOptions::default())
            .start()
            .unwrap();
        assert_eq!(report.pending, 1);
        assert_eq!(sender.stats().enqueued, 1);
        let (spool, _) = {
            drop(sender);
            Spool::open(dir.path(), SpoolOptions::default()).unwrap()
        };
        let payload = spool.peek(1, u64::MAX).unwrap().pop().unwrap();
        let Item::Sample(s) = serde_json::from_slice::<Item>(&payload).unwrap() else {
            panic!("a sample was queued");
        };
        assert!(s.id.is_some_and(|id| id.starts_with("kc-")));
        assert!(s.ts_ms.is_some());
    }
}
