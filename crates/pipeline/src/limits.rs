//! The cardinality limits: how many distinct models and series the service keeps, and how many
//! sessions may be open at once.
//!
//! A client's batch that would cross a limit is refused whole, before anything of it is
//! stored; nothing already stored is ever dropped to make room. The names the store holds are
//! kept here in memory ([`Cardinality`]): the log's ([`Names`], which the follower folds and
//! checkpoints) and the series table's when the pipeline opens, and
//! updated by the store's writer thread right after the commit that stored them, so a count is
//! exactly what the store holds, and a retried batch (its names already stored) adds nothing.
//!
//! Most batches add no name: they are checked against the kept names and go to the group commit
//! like any other. A batch that adds one (a new model, a new series, a session starting or
//! ending) takes the admission lock from its check until its commit has updated the names, so
//! two batches racing past a limit are counted one after the other. New names are rare in real
//! use (a model's first run, a session's start), so the lock costs real use nothing.
//!
//! The service's own batches (the probe's samples) are counted but never refused.
//!
//! A session counts as open from its `session_started` until its `session_ended`, or until
//! [`SESSION_IDLE_MS`] (24 h) of record time pass without a record naming it (its start, a run,
//! a `context_request` or `context_oom`): a runtime that crashed never ends its sessions. Record time is the newest
//! `ts_ms` of the runs and events stored, never the wall clock, and a session's activity is the
//! newest `ts_ms` among its latest start and the records naming it after that start; both are
//! maxima, so the count is a function of what the store holds, whatever order the commits came
//! in, and a restart counts the same. A session back from idle (a run naming it) counts as open
//! again: it is in use. Its id is kept until it ends, or until [`SESSION_FORGET_MS`] (7 days) of
//! record time pass without a record naming it: then it is forgotten (checked once a day of
//! record time), and a run naming it changes nothing. So a client that starts sessions and
//! never ends them holds at most 7 days of them in memory (a few dozen bytes each). The
//! follower's [`Names`] and the live [`Cardinality`] fold the same records in the same order
//! (seq order) with the same function ([`fold_session`]), record by record, so they forget the
//! same ids and a restart still counts the same.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kora_model::{
    DEFAULT_MAX_MODELS, DEFAULT_MAX_OPEN_SESSIONS, DEFAULT_MAX_SERIES, LimitHit, LimitName,
    LimitStatus, LogEntry, Record, RecordKind, SESSION_FORGET_MS, SESSION_IDLE_MS, Sample,
};
use kora_store::{Appended, Batch, ReadError, Store};

/// The limits a pipeline enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Distinct `model_id`s of runs, events and samples.
    pub max_models: u64,
    /// Distinct sample series (signal, device, model).
    pub max_series: u64,
    /// Sessions started, not ended, and not idle for [`SESSION_IDLE_MS`] of record time.
    pub max_open_sessions: u64,
}

impl Default for Limits {
    /// The documented defaults (`kora_model::DEFAULT_MAX_*`).
    fn default() -> Self {
        Limits {
            max_models: DEFAULT_MAX_MODELS,
            max_series: DEFAULT_MAX_SERIES,
            max_open_sessions: DEFAULT_MAX_OPEN_SESSIONS,
        }
    }
}

impl Limits {
    fn of(&self, name: LimitName) -> u64 {
        match name {
            LimitName::Models => self.max_models,
            LimitName::Series => self.max_series,
            LimitName::OpenSessions => self.max_open_sessions,
        }
    }
}

/// A batch refused for crossing a limit: nothing of it was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitRefusal {
    /// What it would have crossed, and the count now.
    pub status: LimitStatus,
    /// The first item over the limit, e.g. `runs[997].model_id`.
    pub field: String,
    pub message: String,
}

/// The names a batch mentions, each with the first item that mentions it.
#[derive(Debug, Default)]
struct Mentions {
    models: BTreeMap<String, Item>,
    series: BTreeMap<String, Item>,
    sessions: Vec<SessionItem>,
    newest_ms: Option<i64>,
}

/// What an item does to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionOp {
    /// `session_started`: open, active at its time.
    Start,
    /// `session_ended`.
    End,
    /// A run, a `context_request` or a `context_oom` naming it: active at its time, if open.
    Touch,
    /// A run or event naming no session (a `model_load`, a `context_request` without one): it
    /// moves record time only.
    Time,
}

/// An item of a batch that names a session.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SessionItem {
    index: usize,
    id: String,
    op: SessionOp,
    ts_ms: i64,
}

/// Whether a record moves record time (the newest `ts_ms` of the runs and events).
fn is_runtime_record(r: &Record) -> bool {
    matches!(
        r,
        Record::Run(_)
            | Record::ModelLoad(_)
            | Record::ContextRequest(_)
            | Record::ContextOom(_)
            | Record::SessionStarted(_)
            | Record::SessionEnded(_)
    )
}

/// The oldest activity that keeps a session open at record time `record_ms`.
fn horizon(record_ms: Option<i64>) -> i64 {
    record_ms.map_or(i64::MIN, |w| w.saturating_sub(SESSION_IDLE_MS))
}

/// Folds one run or event (`ts`, and what it does to session `id`) into the sessions kept and
/// record time. The follower's [`Names`] and the live [`Cardinality`] both apply it, record by
/// record in seq order, so that they keep the same ids. When record time enters a new day,
/// the ids of sessions idle for [`SESSION_FORGET_MS`] are forgotten.
fn fold_session(
    sessions: &mut BTreeMap<String, i64>,
    record_ms: &mut Option<i64>,
    ts: i64,
    id: &str,
    op: SessionOp,
) {
    let before = *record_ms;
    *record_ms = before.max(Some(ts));
    match op {
        SessionOp::Start => {
            sessions.insert(id.to_owned(), ts);
        }
        SessionOp::End => {
            sessions.remove(id);
        }
        SessionOp::Touch => {
            if let Some(last) = sessions.get_mut(id) {
                *last = (*last).max(ts);
            }
        }
        SessionOp::Time => {}
    }
    if let Some(now) = *record_ms
        && before.is_none_or(|b| b.div_euclid(DAY_MS) < now.div_euclid(DAY_MS))
    {
        let keep_from = now.saturating_sub(SESSION_FORGET_MS);
        sessions.retain(|_, last| *last >= keep_from);
    }
}

const DAY_MS: i64 = 24 * 3_600_000;

/// The sessions open at record time `record_ms`.
fn open_count(sessions: &BTreeMap<String, i64>, record_ms: Option<i64>) -> usize {
    let h = horizon(record_ms);
    sessions.values().filter(|last| **last >= h).count()
}

/// An item of a batch: its index and the field that names what it adds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    index: usize,
    field: String,
}

impl Mentions {
    /// The names `batch` (its items named `name`) mentions, its records without a time
    /// stamped `now_ms` as the store will. The service's own derived records mention none.
    fn of(name: &str, batch: &Batch, now_ms: i64) -> Mentions {
        let mut m = Mentions::default();
        let at = |index: usize, field: &str| Item {
            index,
            field: format!("{name}[{index}].{field}"),
        };
        match batch {
            Batch::Samples(samples) => {
                for (i, s) in samples.iter().enumerate() {
                    if let Some(model) = &s.model_id
                        && !m.models.contains_key(model)
                    {
                        m.models.insert(model.clone(), at(i, "model_id"));
                    }
                    m.series
                        .entry(s.series_key())
                        .or_insert_with(|| at(i, series_field(s)));
                }
            }
            Batch::Records(records) => {
                for (i, r) in records.iter().enumerate() {
                    let model = match r {
                        Record::Run(x) => Some(&x.model_id),
                        Record::ModelLoad(x) => Some(&x.model_id),
                        Record::ContextRequest(x) => Some(&x.model_id),
                        Record::ContextOom(x) => Some(&x.model_id),
                        _ => None,
                    };
                    if let Some(model) = model
                        && !m.models.contains_key(model)
                    {
                        m.models.insert(model.clone(), at(i, "model_id"));
                    }
                    if !is_runtime_record(r) {
                        continue;
                    }
                    let ts_ms = r.ts_ms().unwrap_or(now_ms);
                    m.newest_ms = Some(m.newest_ms.map_or(ts_ms, |n| n.max(ts_ms)));
                    let (id, op) = match r {
                        Record::SessionStarted(x) => (&x.session_id, SessionOp::Start),
                        Record::SessionEnded(x) => (&x.session_id, SessionOp::End),
                        Record::Run(x) => (&x.session_id, SessionOp::Touch),
                        Record::ContextOom(x) => (&x.session_id, SessionOp::Touch),
                        Record::ContextRequest(kora_model::ContextRequest {
                            session_id: Some(id),
                            ..
                        }) => (id, SessionOp::Touch),
                        _ => {
                            m.sessions.push(SessionItem {
                                index: i,
                                id: String::new(),
                                op: SessionOp::Time,
                                ts_ms,
                            });
                            continue;
                        }
                    };
                    m.sessions.push(SessionItem {
                        index: i,
                        id: id.clone(),
                        op,
                        ts_ms,
                    });
                }
            }
            Batch::Derived { .. } => {}
        }
        m
    }
}

/// The field that makes a sample's series distinct: its model, else its device, else its
/// signal.
fn series_field(s: &Sample) -> &'static str {
    if s.model_id.is_some() {
        "model_id"
    } else if s.device.is_some() {
        "device"
    } else {
        "signal"
    }
}

/// What a batch would add to the kept names.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    /// What the batch's items are called in errors (`runs`).
    name: String,
    models: Vec<(String, Item)>,
    series: Vec<(String, Item)>,
    /// Every run and event, in batch order: those naming a session (an end changes the count
    /// too) and the others ([`SessionOp::Time`]), which move record time.
    sessions: Vec<SessionItem>,
    /// The newest time of the batch's runs and events.
    newest_ms: Option<i64>,
}

impl Delta {
    /// No name to add and no session started or ended: the batch may be committed without
    /// the admission lock (its record time and session activity are maxima, applied in any
    /// order).
    pub(crate) fn is_empty(&self) -> bool {
        self.models.is_empty()
            && self.series.is_empty()
            && self
                .sessions
                .iter()
                .all(|s| matches!(s.op, SessionOp::Touch | SessionOp::Time))
    }
}

#[derive(Debug, Default)]
struct Known {
    models: BTreeSet<String>,
    series: BTreeSet<String>,
    /// Sessions started, not ended and not forgotten, with their activity (see the module's
    /// documentation).
    sessions: BTreeMap<String, i64>,
    /// Record time: the newest `ts_ms` of the runs and events stored.
    record_ms: Option<i64>,
    /// Batches refused per limit, in [`LimitName::ALL`] order.
    refused: [u64; 3],
    last_hit: Option<LimitHit>,
}

impl Known {
    fn count(&self, name: LimitName) -> u64 {
        let n = match name {
            LimitName::Models => self.models.len(),
            LimitName::Series => self.series.len(),
            LimitName::OpenSessions => open_count(&self.sessions, self.record_ms),
        };
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    fn refused(&self, name: LimitName) -> u64 {
        self.refused[index_of(name)]
    }
}

fn index_of(name: LimitName) -> usize {
    LimitName::ALL.iter().position(|n| *n == name).unwrap_or(0)
}

/// What the cardinality limits need of the log, folded in seq order ([`Names::push`]): the
/// models its runs and events name, the sessions its records leave open with their activity,
/// and record time. The follower keeps it with its state and checkpoints it, so a start reads
/// only the log after the newest checkpoint ([`crate::Follower::rebuild_with_names`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Names {
    models: BTreeSet<String>,
    /// Sessions started, not ended and not forgotten ([`SESSION_FORGET_MS`]), with their
    /// activity.
    sessions: BTreeMap<String, i64>,
    record_ms: Option<i64>,
}

impl Names {
    /// Folds the next entry of the log (entries come in seq order).
    pub fn push(&mut self, entry: &LogEntry) {
        let r = &entry.record;
        if !is_runtime_record(r) {
            return;
        }
        let ts = r.ts_ms().unwrap_or(i64::MIN);
        let (model, session) = match r {
            Record::Run(x) => (Some(&x.model_id), Some((&x.session_id, SessionOp::Touch))),
            Record::ModelLoad(x) => (Some(&x.model_id), None),
            Record::ContextRequest(x) => (
                Some(&x.model_id),
                x.session_id.as_ref().map(|id| (id, SessionOp::Touch)),
            ),
            Record::ContextOom(x) => (Some(&x.model_id), Some((&x.session_id, SessionOp::Touch))),
            Record::SessionStarted(x) => (None, Some((&x.session_id, SessionOp::Start))),
            Record::SessionEnded(x) => (None, Some((&x.session_id, SessionOp::End))),
            _ => (None, None),
        };
        if let Some(model) = model
            && !self.models.contains(model)
        {
            self.models.insert(model.clone());
        }
        let (id, op) = session.map_or(("", SessionOp::Time), |(id, op)| (id.as_str(), op));
        fold_session(&mut self.sessions, &mut self.record_ms, ts, id, op);
    }

    /// The names of `store`'s log up to seq `up_to` (all of it when `None`), read without
    /// folding the log: the models of its runs (the runs index, one seek per model), its model
    /// and session events (one pass over the log's rows, `Store::each_in_rows_of`), and the
    /// runs of the 24 h of record time before the newest run (`Store::runs_since`: no older
    /// run and no other kind). For a checkpoint written before names were kept, and for
    /// [`Cardinality::load`].
    pub fn load(store: &Store, up_to: Option<u64>) -> Result<Names, ReadError> {
        let up_to = up_to.unwrap_or(u64::MAX);
        let mut names = Names::default();
        let run_models = store.run_models()?;
        let any_run = !run_models.is_empty();
        // Models are a set: a run after `up_to` adds its model again when folded.
        names.models.extend(run_models);
        let mut sessions = Vec::new();
        store.each_in_rows_of(
            &[
                RecordKind::ModelLoad,
                RecordKind::ContextRequest,
                RecordKind::ContextOom,
                RecordKind::SessionStarted,
                RecordKind::SessionEnded,
            ],
            |e| {
                if e.seq > up_to {
                    return;
                }
                let ts = e.record.ts_ms().unwrap_or(i64::MIN);
                names.record_ms = names.record_ms.max(Some(ts));
                match e.record {
                    Record::ContextOom(kora_model::ContextOom {
                        model_id,
                        session_id,
                        ..
                    }) => {
                        names.models.insert(model_id);
                        sessions.push((e.seq, session_id, SessionOp::Touch, ts));
                    }
                    Record::ContextRequest(kora_model::ContextRequest {
                        model_id,
                        session_id,
                        ..
                    }) => {
                        names.models.insert(model_id);
                        if let Some(id) = session_id {
                            sessions.push((e.seq, id, SessionOp::Touch, ts));
                        }
                    }
                    Record::ModelLoad(kora_model::ModelLoad { model_id, .. }) => {
                        names.models.insert(model_id);
                    }
                    Record::SessionStarted(x) => {
                        sessions.push((e.seq, x.session_id, SessionOp::Start, ts));
                    }
                    Record::SessionEnded(x) => {
                        sessions.push((e.seq, x.session_id, SessionOp::End, ts));
                    }
                    _ => {}
                }
            },
        )?;
        // In seq order already (one pass over the log's rows).
        // Each open session's latest start (its seq) and activity.
        let mut open: BTreeMap<String, (u64, i64)> = BTreeMap::new();
        for (seq, id, op, ts) in sessions {
            match op {
                SessionOp::Start => {
                    open.insert(id, (seq, ts));
                }
                SessionOp::End => {
                    open.remove(&id);
                }
                SessionOp::Touch => {
                    if let Some(s) = open.get_mut(&id) {
                        s.1 = s.1.max(ts);
                    }
                }
                SessionOp::Time => {}
            }
        }
        if any_run {
            // Runs older than 24 h before record time cannot keep a session open now or later
            // (record time only grows), so only the runs since then are read.
            let record_ms = names.record_ms;
            let mut newest_run = None;
            store.runs_since(
                |newest| horizon(record_ms.max(Some(newest))),
                // Under `up_to`, the horizon may be that of a newer run: a session whose
                // activity lies before it is idle once that run is folded, whatever its
                // activity was, so nothing the fold after `up_to` ends with is missed.
                |e| {
                    let (Record::Run(r), Some(ts)) = (&e.record, e.record.ts_ms()) else {
                        return;
                    };
                    if e.seq > up_to {
                        return;
                    }
                    newest_run = newest_run.max(Some(ts));
                    if let Some(s) = open.get_mut(&r.session_id)
                        && e.seq > s.0
                    {
                        s.1 = s.1.max(ts);
                    }
                },
            )?;
            names.record_ms = names.record_ms.max(newest_run);
        }
        // The ids the fold would have forgotten (idle for SESSION_FORGET_MS) are kept here
        // until the fold's next day of record time forgets them; a session with runs older
        // than the last 24 h has its start's time as its activity here, so it may be
        // forgotten sooner than the fold would. Such a read happens once, for a checkpoint of
        // an earlier build, and only a run naming such a session again could tell.
        names.sessions = open.into_iter().map(|(id, (_, last))| (id, last)).collect();
        Ok(names)
    }
}

/// The names the store holds, the limits on them, and the lock that orders the batches that
/// add names.
#[derive(Debug)]
pub struct Cardinality {
    limits: Limits,
    known: Mutex<Known>,
    admission: Arc<tokio::sync::Mutex<()>>,
}

/// Held from a batch's check until its commit has updated the names.
pub(crate) type Admission = tokio::sync::OwnedMutexGuard<()>;

impl Cardinality {
    /// The names `store` holds, read from the whole store: [`Names::load`], then
    /// [`Cardinality::with_names`]. A pipeline's start takes the follower's names instead
    /// ([`crate::Follower::rebuild_with_names`]: checkpointed, so only the log after the newest
    /// checkpoint is read).
    pub fn load(store: &Store, limits: Limits) -> Result<Cardinality, ReadError> {
        let names = Names::load(store, None)?;
        Cardinality::with_names(store, limits, names)
    }

    /// The names `store` holds, given `names`, those of its whole log: adds the models and
    /// keys of its series (the series table).
    pub fn with_names(
        store: &Store,
        limits: Limits,
        names: Names,
    ) -> Result<Cardinality, ReadError> {
        let Names {
            mut models,
            sessions,
            record_ms,
        } = names;
        let mut series = BTreeSet::new();
        for key in store.series()? {
            if let Some((_, _, Some(model))) = Sample::parse_series_key(&key) {
                models.insert(model);
            }
            series.insert(key);
        }
        Ok(Cardinality {
            limits,
            known: Mutex::new(Known {
                models,
                series,
                sessions,
                record_ms,
                ..Known::default()
            }),
            admission: Arc::default(),
        })
    }

    fn known(&self) -> MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Each limit and its count now, in [`LimitName::ALL`] order.
    pub fn status(&self) -> Vec<LimitStatus> {
        let known = self.known();
        LimitName::ALL
            .into_iter()
            .map(|name| LimitStatus {
                name,
                limit: self.limits.of(name),
                count: known.count(name),
                refused_batches: known.refused(name),
            })
            .collect()
    }

    /// The last batch refused for crossing a limit, since the pipeline opened.
    pub fn last_hit(&self) -> Option<LimitHit> {
        self.known().last_hit.clone()
    }

    /// Up to `limit` series keys after `after` (from the first when `None`), in order, and
    /// the key to go on after when more follow.
    pub fn series_page(&self, after: Option<&str>, limit: usize) -> (Vec<String>, Option<String>) {
        let known = self.known();
        let range = match after {
            None => known.series.range::<str, _>(..),
            Some(a) => known
                .series
                .range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
        };
        let mut page: Vec<String> = range.take(limit.saturating_add(1)).cloned().collect();
        let next = if page.len() > limit {
            page.truncate(limit);
            page.last().cloned()
        } else {
            None
        };
        (page, next)
    }

    /// What `batch` (its items named `name`, its records without a time to be stamped
    /// `now_ms`) would add to the names kept now.
    pub(crate) fn delta(&self, name: &str, batch: &Batch, now_ms: i64) -> Delta {
        let mentions = Mentions::of(name, batch, now_ms);
        let known = self.known();
        let mut models: Vec<(String, Item)> = mentions
            .models
            .into_iter()
            .filter(|(m, _)| !known.models.contains(m))
            .collect();
        let mut series: Vec<(String, Item)> = mentions
            .series
            .into_iter()
            .filter(|(s, _)| !known.series.contains(s))
            .collect();
        // In batch order, so that the first item over a limit is named.
        models.sort_by_key(|(_, item)| item.index);
        series.sort_by_key(|(_, item)| item.index);
        Delta {
            name: name.to_owned(),
            models,
            series,
            sessions: mentions.sessions,
            newest_ms: mentions.newest_ms,
        }
    }

    /// Waits for the admission lock (see the module's documentation).
    pub(crate) async fn admit(&self) -> Admission {
        self.admission.clone().lock_owned().await
    }

    /// Checks `delta` against the limits at `now_ms`, with the admission lock held; a refusal
    /// is counted and kept as the last hit.
    pub(crate) fn check(&self, delta: &Delta, now_ms: i64) -> Result<(), LimitRefusal> {
        let mut known = self.known();
        let mut over: Vec<(usize, LimitName, Item, String)> = Vec::new();
        for (name, added) in [
            (LimitName::Models, &delta.models),
            (LimitName::Series, &delta.series),
        ] {
            let count = known.count(name);
            let limit = self.limits.of(name);
            let total = count.saturating_add(u64::try_from(added.len()).unwrap_or(u64::MAX));
            if total > limit {
                // The first new name past the limit.
                let at = usize::try_from(limit.saturating_sub(count)).unwrap_or(usize::MAX);
                if let Some((value, item)) = added.get(at).or(added.last()) {
                    over.push((item.index, name, item.clone(), value.clone()));
                }
            }
        }
        // Sessions, in batch order, at the record time the batch brings: a start after 24 h
        // of record time without a crashed runtime's sessions finds them ended.
        let record_ms = known.record_ms.max(delta.newest_ms);
        let h = horizon(record_ms);
        let open_before = open_count(&known.sessions, record_ms);
        let mut open = open_before;
        let mut now: BTreeMap<&str, Option<i64>> = BTreeMap::new();
        let limit = usize::try_from(self.limits.max_open_sessions).unwrap_or(usize::MAX);
        for s in &delta.sessions {
            let last = match now.get(s.id.as_str()) {
                Some(l) => *l,
                None => known.sessions.get(&s.id).copied(),
            };
            let next = match s.op {
                SessionOp::Start => Some(s.ts_ms),
                SessionOp::End => None,
                SessionOp::Touch => last.map(|l| l.max(s.ts_ms)),
                // Names no session: record time is counted above.
                SessionOp::Time => continue,
            };
            now.insert(&s.id, next);
            let (was, is) = (last.is_some_and(|l| l >= h), next.is_some_and(|l| l >= h));
            if is && !was {
                open += 1;
                if s.op == SessionOp::Start && open > limit {
                    let item = Item {
                        index: s.index,
                        field: format!("{}[{}].session_id", delta.name, s.index),
                    };
                    over.push((s.index, LimitName::OpenSessions, item, s.id.clone()));
                    break;
                }
            } else if was && !is {
                open -= 1;
            }
        }
        let Some((_, name, item, value)) = over.into_iter().min_by_key(|o| (o.0, index_of(o.1)))
        else {
            return Ok(());
        };
        let count = match name {
            LimitName::OpenSessions => u64::try_from(open_before).unwrap_or(u64::MAX),
            _ => known.count(name),
        };
        let limit = self.limits.of(name);
        known.refused[index_of(name)] += 1;
        known.last_hit = Some(LimitHit {
            name,
            limit,
            count,
            field: item.field.clone(),
            ts_ms: now_ms,
        });
        let message = match name {
            LimitName::Models => format!(
                "{field} is model {value:?}: this batch would bring the distinct models from \
                 {count} to {total}, over the limit of {limit} (setting max_models); nothing of \
                 it was stored. A model id names a model: a path, hash or UUID in it makes \
                 every request a new model",
                field = item.field,
                total = count.saturating_add(delta.models.len() as u64),
            ),
            LimitName::Series => format!(
                "{field} makes series {value:?}: this batch would bring the distinct series \
                 (signal, device and model_id) from {count} to {total}, over the limit of \
                 {limit} (setting max_series); nothing of it was stored",
                field = item.field,
                total = count.saturating_add(delta.series.len() as u64),
            ),
            LimitName::OpenSessions => format!(
                "{field} starts session {value:?} while {count} sessions are open (started, not \
                 ended, and named by a record within the last 24 h of record time), over the \
                 limit of {limit} (setting max_open_sessions); nothing of this batch was \
                 stored. End the sessions that are over with session_ended",
                field = item.field,
            ),
        };
        Err(LimitRefusal {
            status: LimitStatus {
                name,
                limit,
                count,
                refused_batches: known.refused(name),
            },
            field: item.field.clone(),
            message,
        })
    }

    /// Adds what a committed batch added (called by the store's writer thread, right after the
    /// commit, whether or not anyone still waits for the answer). The session items of a
    /// retry (stored before: `appended` gives them an older seq) change nothing.
    pub(crate) fn apply(&self, delta: Delta, appended: &Appended) {
        let mut known = self.known();
        known
            .models
            .extend(delta.models.into_iter().map(|(m, _)| m));
        known
            .series
            .extend(delta.series.into_iter().map(|(s, _)| s));
        let new = |index: usize| match (appended.first_new_seq, appended.seqs.get(index)) {
            (Some(first), Some(seq)) => *seq >= first,
            _ => false,
        };
        // Record by record, as the follower's `Names` folds the log (a retried item, stored
        // before, was folded then).
        let Known {
            sessions,
            record_ms,
            ..
        } = &mut *known;
        for s in delta.sessions.iter().filter(|s| new(s.index)) {
            fold_session(sessions, record_ms, s.ts_ms, &s.id, s.op);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kora_model::SessionEvent;

    fn cardinality(limits: Limits) -> Cardinality {
        Cardinality {
            limits,
            known: Mutex::default(),
            admission: Arc::default(),
        }
    }

    /// Applies `d` as the commit of a batch whose every item is new.
    fn apply(c: &Cardinality, d: Delta) {
        let n = d
            .sessions
            .iter()
            .map(|s| s.index + 1)
            .max()
            .unwrap_or(0)
            .max(64);
        let seqs: Vec<u64> = (1..=n as u64).collect();
        c.apply(
            d,
            &Appended {
                accepted: n as u64,
                duplicates: 0,
                first_new_seq: seqs.first().copied(),
                last_new_seq: seqs.last().copied(),
                seqs,
            },
        );
    }

    fn session(id: &str, started: bool) -> Record {
        session_at(id, started, None)
    }

    fn session_at(id: &str, started: bool, ts_ms: Option<i64>) -> Record {
        let e = SessionEvent {
            id: None,
            ts_ms,
            session_id: id.into(),
        };
        if started {
            Record::SessionStarted(e)
        } else {
            Record::SessionEnded(e)
        }
    }

    fn sample(model: Option<&str>, device: Option<u32>) -> Sample {
        Sample {
            model_id: model.map(Into::into),
            device,
            ..Sample::reading(kora_model::Signal::QueueWaitMs, 1, 1.0)
        }
    }

    #[test]
    fn a_batch_over_the_series_limit_names_the_first_item_over_it_and_changes_nothing() {
        let c = cardinality(Limits {
            max_series: 3,
            ..Limits::default()
        });
        let first = Batch::Samples(vec![sample(None, None), sample(None, Some(0))]);
        let d = c.delta("samples", &first, 1);
        c.check(&d, 1).unwrap();
        apply(&c, d);
        // The same series again add nothing (a retry).
        assert!(c.delta("samples", &first, 1).is_empty());
        let batch = Batch::Samples(vec![
            sample(None, Some(0)),
            sample(None, Some(1)),
            sample(None, Some(1)),
            sample(None, Some(2)),
        ]);
        let refusal = c.check(&c.delta("samples", &batch, 1), 7).unwrap_err();
        assert_eq!(refusal.field, "samples[3].device");
        assert_eq!(
            refusal.status,
            LimitStatus {
                name: LimitName::Series,
                limit: 3,
                count: 2,
                refused_batches: 1
            }
        );
        assert!(
            refusal.message.contains("max_series"),
            "{}",
            refusal.message
        );
        let hit = c.last_hit().unwrap();
        assert_eq!((hit.name, hit.ts_ms, hit.count), (LimitName::Series, 7, 2));
        assert_eq!(c.status()[1].count, 2, "a refusal adds nothing");
    }

    #[test]
    fn a_sample_with_a_new_model_counts_for_models_first() {
        let c = cardinality(Limits {
            max_models: 1,
            max_series: 1,
            ..Limits::default()
        });
        let batch = Batch::Samples(vec![sample(Some("a"), None), sample(Some("b"), None)]);
        let refusal = c.check(&c.delta("samples", &batch, 1), 1).unwrap_err();
        assert_eq!(refusal.status.name, LimitName::Models);
        assert_eq!(refusal.field, "samples[1].model_id");
    }

    #[test]
    fn sessions_count_in_batch_order_and_an_end_makes_room() {
        let c = cardinality(Limits {
            max_open_sessions: 2,
            ..Limits::default()
        });
        let b = Batch::Records(vec![
            session("a", true),
            session("b", true),
            session("a", true),
        ]);
        let d = c.delta("events", &b, 1);
        c.check(&d, 1).unwrap();
        apply(&c, d);
        assert_eq!(c.status()[2].count, 2);
        // Ending one first makes room for a third; starting first does not.
        let ok = Batch::Records(vec![session("a", false), session("c", true)]);
        c.check(&c.delta("events", &ok, 1), 2).unwrap();
        let over = Batch::Records(vec![session("c", true), session("a", false)]);
        let refusal = c.check(&c.delta("events", &over, 1), 3).unwrap_err();
        assert_eq!(refusal.field, "events[0].session_id");
        assert_eq!(refusal.status.count, 2);
        // An end of a session never started changes nothing.
        let d = c.delta("events", &Batch::Records(vec![session("zz", false)]), 1);
        c.check(&d, 4).unwrap();
        apply(&c, d);
        assert_eq!(c.status()[2].count, 2);
    }

    #[test]
    fn series_pages_follow_on() {
        let c = cardinality(Limits::default());
        let d = c.delta(
            "samples",
            &Batch::Samples((0..5).map(|d| sample(None, Some(d))).collect()),
            1,
        );
        apply(&c, d);
        let (page, next) = c.series_page(None, 2);
        assert_eq!(page.len(), 2);
        let (rest, last) = c.series_page(next.as_deref(), 10);
        assert_eq!(rest.len(), 3);
        assert_eq!(last, None);
        assert!(page[1] < rest[0]);
    }

    const HOUR: i64 = 3_600_000;

    fn run_at(session: &str, ts_ms: i64) -> Record {
        Record::Run(kora_model::Run {
            id: None,
            ts_ms: Some(ts_ms),
            run_id: format!("r{ts_ms}"),
            session_id: session.into(),
            model_id: "m".into(),
            substrate: kora_model::Substrate::Local,
            prompt_hash: kora_model::prompt_hash("hello"),
            context_tokens: 4096,
            tokens_in: Some(100),
            tokens_out: Some(50),
            total_tokens: Some(150),
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

    #[test]
    fn a_session_idle_for_a_day_of_record_time_counts_as_ended() {
        let c = cardinality(Limits {
            max_open_sessions: 2,
            ..Limits::default()
        });
        // Two sessions of a runtime that then crashed: never ended.
        let d = c.delta(
            "events",
            &Batch::Records(vec![
                session_at("a", true, Some(0)),
                session_at("b", true, Some(HOUR)),
            ]),
            0,
        );
        c.check(&d, 0).unwrap();
        apply(&c, d);
        assert_eq!(c.status()[2].count, 2);
        // Within 24 h of record time they are open: a third start is over the limit.
        let third = Batch::Records(vec![session_at("c", true, Some(24 * HOUR))]);
        let refusal = c.check(&c.delta("events", &third, 0), 0).unwrap_err();
        assert_eq!(refusal.status.count, 2);
        assert_eq!(refusal.field, "events[0].session_id");
        // A minute later "a" has been idle for more than a day: the start fits, and the count
        // says one open (b) before it.
        let later = Batch::Records(vec![session_at("c", true, Some(24 * HOUR + 60_000))]);
        let d = c.delta("events", &later, 0);
        c.check(&d, 0).unwrap();
        apply(&c, d);
        assert_eq!(c.status()[2].count, 2, "b and c");
        // A run naming b keeps it open; record time moves on by runs of other sessions.
        let runs = Batch::Records(vec![run_at("b", 30 * HOUR), run_at("x", 47 * HOUR)]);
        apply(&c, c.delta("runs", &runs, 0));
        assert_eq!(
            c.status()[2].count,
            2,
            "b (run at 30 h) and c (started at 24 h)"
        );
        let d = c.delta("runs", &Batch::Records(vec![run_at("x", 54 * HOUR)]), 0);
        assert!(d.is_empty(), "runs of known models take no lock");
        apply(&c, d);
        assert_eq!(c.status()[2].count, 1, "c idle since 24 h: only b");
        // A run of a session back from idle counts it again (it is in use), never refused.
        apply(
            &c,
            c.delta("runs", &Batch::Records(vec![run_at("a", 54 * HOUR)]), 0),
        );
        assert_eq!(c.status()[2].count, 2, "a and b");
    }

    /// A client that starts sessions and never ends them: the ids are forgotten after a week
    /// of record time, so memory holds about a week of them; the live count and the
    /// follower's fold of the same log keep the same ids, batch after batch, also when one
    /// batch moves record time into a new day before it names a session forgotten by it.
    #[test]
    fn a_session_never_ended_is_forgotten_after_a_week_the_same_in_the_live_count_and_the_fold() {
        const DAY: i64 = 24 * HOUR;
        let c = cardinality(Limits::default());
        let mut names = Names::default();
        let mut seq = 0;
        let mut both = |records: Vec<Record>| {
            let d = c.delta("events", &Batch::Records(records.clone()), 0);
            c.check(&d, 0).unwrap();
            apply(&c, d);
            for record in records {
                seq += 1;
                names.push(&LogEntry { seq, record });
            }
            let known = c.known();
            assert_eq!(known.sessions, names.sessions);
            assert_eq!(known.record_ms, names.record_ms);
            known.sessions.len()
        };
        // 12 days, 50 sessions a day, each started and run once, none ended.
        let mut kept = Vec::new();
        for day in 0..12 {
            for i in 0..50 {
                let id = format!("d{day}-{i}");
                let ts = day * DAY + i * 60_000;
                kept.push(both(vec![
                    session_at(&id, true, Some(ts)),
                    run_at(&id, ts + 1_000),
                ]));
            }
        }
        // Never more than the last 7 days and the day in progress; the last 7 days are there.
        assert!(kept.iter().all(|n| *n <= 8 * 50), "{kept:?}");
        assert_eq!(c.known().sessions.len(), 8 * 50, "days 4 to 11");
        assert!(!c.known().sessions.contains_key("d3-49"));
        assert!(c.known().sessions.contains_key("d4-0"));
        // One batch: a run that moves record time into day 12 (forgetting day 4's sessions),
        // then a run naming one of them, stamped before. Record by record, as the log is
        // folded, the second finds it forgotten.
        both(vec![
            run_at("d11-0", 12 * DAY + HOUR),
            run_at("d4-10", 11 * DAY + 23 * HOUR),
        ]);
        assert!(!c.known().sessions.contains_key("d4-10"));
        assert!(!c.known().sessions.contains_key("d4-49"));
        // Within the week a session back from idle still counts as open again.
        let open = c.status()[2].count;
        both(vec![run_at("d8-3", 12 * DAY + 2 * HOUR)]);
        assert_eq!(
            c.status()[2].count,
            open + 1,
            "d8-3, idle since day 8, in use again"
        );
    }

    #[test]
    fn a_retried_start_of_a_session_ended_since_opens_nothing() {
        let c = cardinality(Limits::default());
        let start = c.delta(
            "events",
            &Batch::Records(vec![session_at("a", true, Some(5))]),
            0,
        );
        apply(&c, start);
        apply(
            &c,
            c.delta(
                "events",
                &Batch::Records(vec![session_at("a", false, Some(6))]),
                0,
            ),
        );
        assert_eq!(c.status()[2].count, 0);
        // The retry is stored under its first seq (older than the first new one).
        let retry = c.delta(
            "events",
            &Batch::Records(vec![session_at("a", true, Some(5))]),
            0,
        );
        c.apply(
            retry,
            &Appended {
                seqs: vec![1],
                accepted: 0,
                duplicates: 1,
                first_new_seq: None,
                last_new_seq: None,
            },
        );
        assert_eq!(c.status()[2].count, 0);
    }
}
