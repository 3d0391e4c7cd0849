//! `replay`, `backtest` and `thresholds check`: the engine over the stored log, offline.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;

use anyhow::{Context, Result, bail};
use kora_model::{LogEntry, Record};
use kora_policy::{CloudTiers, Engine, ReplayDifference, Thresholds, replay};
use kora_store::{OpenError, Store, StoreOptions};

/// The store's log, read a page at a time, in seq order, with a progress bar on long logs:
/// a year of history is folded without holding it in memory. The pages are read on a thread of
/// their own, up to [`READ_AHEAD`] pages ahead of the fold, so that reading and folding share
/// the machine's cores (each took about half of a year's replay).
struct LogReader {
    store: Arc<Store>,
    /// The reading thread and the pages it sent, started at the first record asked for.
    pages: Option<(Receiver<Page>, JoinHandle<()>)>,
    page: std::vec::IntoIter<LogEntry>,
    bar: indicatif::ProgressBar,
    /// A read that failed: the iteration stops there and the command reports it.
    error: Option<kora_store::ReadError>,
}

type Page = Result<Vec<LogEntry>, kora_store::ReadError>;

/// How many pages of 10,000 records the reading thread may read ahead of the fold.
const READ_AHEAD: usize = 2;

impl LogReader {
    fn open(db: &Path) -> Result<LogReader> {
        if !db.exists() {
            bail!("no store at {}: nothing recorded yet", db.display());
        }
        let store = Store::open(db, StoreOptions::default()).map_err(|e| match e {
            OpenError::AlreadyOpen { .. } => anyhow::anyhow!(
                "{e}; replay and backtest read the whole log and need the store to themselves: \
                 stop the service first"
            ),
            e => e.into(),
        })?;
        let total = store.stats()?.log_records;
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("reading the log {bar:40} {pos}/{len} records")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        if total < 50_000 {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        Ok(LogReader {
            store: Arc::new(store),
            pages: None,
            page: Vec::new().into_iter(),
            bar,
            error: None,
        })
    }

    /// Starts reading the log from its start on a thread of its own: it stops after the last
    /// page, at a read error (sent), or once the receiver is gone.
    fn read_ahead(store: Arc<Store>) -> (Receiver<Page>, JoinHandle<()>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(READ_AHEAD);
        let reading = std::thread::spawn(move || {
            let mut from = 0;
            loop {
                let page = store.scan(from, 10_000);
                match &page {
                    Ok(p) => match p.last() {
                        Some(last) => from = last.seq + 1,
                        None => return,
                    },
                    Err(_) => {
                        let _ = tx.send(page);
                        return;
                    }
                }
                if tx.send(page).is_err() {
                    return;
                }
            }
        });
        (rx, reading)
    }

    /// Stops the reading thread, if one runs, and waits for it.
    fn stop(&mut self) {
        if let Some((rx, reading)) = self.pages.take() {
            drop(rx);
            if reading.join().is_err() {
                tracing::error!("the thread reading the log panicked");
            }
        }
    }

    /// Reads the log again from its start.
    fn rewind(&mut self) {
        self.stop();
        self.page = Vec::new().into_iter();
        self.bar.reset();
    }

    /// Ends an iteration: the read error that stopped it, if one did.
    fn finish(&mut self) -> Result<()> {
        self.stop();
        self.bar.finish_and_clear();
        match self.error.take() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

impl Drop for LogReader {
    /// Closes the store as the service does: nothing was written, so the next start of these
    /// same bytes skips the page check.
    fn drop(&mut self) {
        self.stop();
        self.store.shutdown();
    }
}

impl Iterator for LogReader {
    type Item = LogEntry;

    fn next(&mut self) -> Option<LogEntry> {
        if let Some(e) = self.page.next() {
            return Some(e);
        }
        if self.error.is_some() {
            return None;
        }
        let store = &self.store;
        let (rx, _) = self
            .pages
            .get_or_insert_with(|| LogReader::read_ahead(store.clone()));
        match rx.recv() {
            Ok(Ok(page)) => {
                self.bar.inc(page.len() as u64);
                self.page = page.into_iter();
                self.page.next()
            }
            Ok(Err(e)) => {
                self.error = Some(e);
                None
            }
            // The last page was read.
            Err(_) => None,
        }
    }
}

fn difference_seq(d: &ReplayDifference) -> u64 {
    match d {
        ReplayDifference::Missing { input_seq, .. } => *input_seq,
        ReplayDifference::Unexpected { seq, .. } | ReplayDifference::Changed { seq, .. } => *seq,
    }
}

/// Re-derives every firing, suggestion, suppression and outcome from the log and reports any
/// difference from what was recorded, within `[from, to]` when given. Exit code 1 on a
/// difference.
pub fn replay_log(
    db: &Path,
    thresholds: Thresholds,
    from: Option<u64>,
    to: Option<u64>,
    json: bool,
) -> Result<bool> {
    let mut log = LogReader::open(db)?;
    let mut engine = Engine::new(thresholds, CloudTiers::embedded());
    let mut report = replay(&mut log, &mut engine);
    log.finish()?;
    let in_range = |s: u64| from.is_none_or(|f| s >= f) && to.is_none_or(|t| s <= t);
    report.differences.retain(|d| in_range(difference_seq(d)));
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "replayed {} inputs (last seq {}): {} derived records recorded, {} re-derived, {} identical, {} differences{}",
            report.inputs,
            report.last_seq.map_or("-".into(), |s| s.to_string()),
            report.recorded,
            report.rederived,
            report.matching,
            report.differences.len(),
            if from.is_some() || to.is_some() {
                " in the range"
            } else {
                ""
            },
        );
        for d in report.differences.iter().take(50) {
            println!("  {}", serde_json::to_string(d)?);
        }
    }
    Ok(report.differences.is_empty())
}

/// Runs a golden scenario file and checks its expectations.
pub fn replay_scenario(path: &Path) -> Result<bool> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let scenario = kora_policy::scenario::Scenario::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut engine = Engine::new(Thresholds::embedded(), CloudTiers::embedded());
    let (derived, errors) = scenario
        .run(&mut engine)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    println!("{}: {} derived records", path.display(), derived.len());
    for (seq, r) in &derived {
        println!("  after seq {seq}: {} {}", r.kind().as_str(), summary(r));
    }
    if errors.is_empty() {
        println!("every expectation holds");
    } else {
        for e in &errors {
            println!("MISMATCH {e}");
        }
    }
    Ok(errors.is_empty())
}

fn summary(r: &Record) -> String {
    match r {
        Record::Firing(f) => format!("{} {}: {}", f.category.as_str(), f.scope, f.reason),
        Record::Suggestion(s) => format!(
            "{} {} step {} options {:?}",
            s.category.as_str(),
            s.scope,
            s.ladder_step,
            s.options.iter().map(|o| o.id.as_str()).collect::<Vec<_>>()
        ),
        Record::Suppression(s) => format!("{} {} by {:?}", s.category.as_str(), s.scope, s.rule),
        Record::MitigationOutcome(m) => format!("{} {}: {:?}", m.choice, m.scope, m.effect),
        Record::Window(w) => format!("{} {} {} p95 {}", w.window_kind, w.scope, w.metric, w.p95),
        _ => String::new(),
    }
}

#[derive(Default)]
struct Tally {
    firings: BTreeMap<String, u64>,
    suppressions: BTreeMap<String, u64>,
    suggestions: BTreeMap<String, u64>,
    cloud_offers: u64,
}

impl Tally {
    fn add(&mut self, r: &Record) {
        match r {
            Record::Firing(f) => *self.firings.entry(f.category.as_str().into()).or_default() += 1,
            Record::Suppression(s) => {
                *self
                    .suppressions
                    .entry(s.category.as_str().into())
                    .or_default() += 1
            }
            Record::Suggestion(s) => {
                *self
                    .suggestions
                    .entry(s.category.as_str().into())
                    .or_default() += 1;
                if s.options.iter().any(|o| o.id == kora_policy::CLOUD_OPTION) {
                    self.cloud_offers += 1;
                }
            }
            _ => {}
        }
    }

    /// Folds the log's inputs through `engine` and counts what it derives; answers the tally
    /// and the inputs folded.
    fn of(log: &mut LogReader, mut engine: Engine) -> Result<(Tally, u64)> {
        let mut t = Tally::default();
        let mut inputs = 0;
        for e in log.by_ref() {
            if Engine::is_derived_by_engine(&e.record) {
                continue;
            }
            inputs += 1;
            for r in engine.step(&e) {
                t.add(&r);
            }
        }
        log.finish()?;
        Ok((t, inputs))
    }
}

/// What would have fired, been suppressed and been suggested with other thresholds, side by
/// side with the active set.
pub fn backtest(db: &Path, active: Thresholds, candidate: Thresholds, json: bool) -> Result<()> {
    let (av, cv) = (active.version().to_owned(), candidate.version().to_owned());
    let window_s = active.file().windows.window_seconds;
    let candidate_window_s = candidate.file().windows.window_seconds;
    // The log is read once for each side, a page at a time.
    let mut log = LogReader::open(db)?;
    let (ta, inputs) = Tally::of(&mut log, Engine::new(active, CloudTiers::embedded()))?;
    log.rewind();
    let (tc, _) = Tally::of(&mut log, Engine::new(candidate, CloudTiers::embedded()))?;
    if json {
        let side = |t: &Tally| {
            serde_json::json!({"firings": t.firings, "suppressions": t.suppressions,
                               "suggestions": t.suggestions, "cloud_offers": t.cloud_offers})
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "inputs": inputs,
                "active": {"version": av, "derived": side(&ta)},
                "candidate": {"version": cv, "derived": side(&tc)},
            }))?
        );
        return Ok(());
    }
    println!("backtest over {inputs} input records");
    println!(
        "{:<14} {:<12} {:>14} {:>14}",
        "category",
        "what",
        format!("active {av}"),
        format!("candidate {cv}")
    );
    for cat in kora_model::Category::ALL {
        let c = cat.as_str();
        for (what, x, y) in [
            ("fired", &ta.firings, &tc.firings),
            ("suppressed", &ta.suppressions, &tc.suppressions),
            ("suggested", &ta.suggestions, &tc.suggestions),
        ] {
            let (p, q) = (
                x.get(c).copied().unwrap_or(0),
                y.get(c).copied().unwrap_or(0),
            );
            println!("{c:<14} {what:<12} {p:>14} {q:>14}");
        }
    }
    println!(
        "{:<14} {:<12} {:>14} {:>14}",
        "all", "cloud offers", ta.cloud_offers, tc.cloud_offers
    );
    if window_s != candidate_window_s {
        println!(
            "note: the time windows in the log are {window_s} s long and are replayed as recorded; \
             the candidate's {candidate_window_s} s windows are not re-derived from raw samples"
        );
    }
    Ok(())
}
