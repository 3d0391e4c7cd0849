//! The cardinality limits: how many distinct models and series the service keeps, and how many
//! sessions may be open at once.
//!
//! A client's batch that would cross a limit is refused whole, before anything of it is
//! stored; nothing already stored is ever dropped to make room. The names the store holds are
//! kept here in memory ([`Cardinality`]): loaded from the store when the pipeline opens, and
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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kora_model::{
    DEFAULT_MAX_MODELS, DEFAULT_MAX_OPEN_SESSIONS, DEFAULT_MAX_SERIES, LimitHit, LimitName,
    LimitStatus, Record, RecordKind, Sample,
};
use kora_store::{Batch, ReadError, Store};

/// The limits a pipeline enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Distinct `model_id`s of runs, events and samples.
    pub max_models: u64,
    /// Distinct sample series (signal, device, model).
    pub max_series: u64,
    /// Sessions started and not ended.
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
    /// `(item, session id, started)`, in batch order.
    sessions: Vec<(Item, String, bool)>,
}

/// An item of a batch: its index and the field that names what it adds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    index: usize,
    field: String,
}

impl Mentions {
    /// The names `batch` (its items named `name`) mentions. The service's own derived records
    /// mention none.
    fn of(name: &str, batch: &Batch) -> Mentions {
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
                    match r {
                        Record::SessionStarted(x) => {
                            m.sessions
                                .push((at(i, "session_id"), x.session_id.clone(), true));
                        }
                        Record::SessionEnded(x) => {
                            m.sessions
                                .push((at(i, "session_id"), x.session_id.clone(), false));
                        }
                        _ => {}
                    }
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
    models: Vec<(String, Item)>,
    series: Vec<(String, Item)>,
    /// Every session event, in batch order (an end changes the count too).
    sessions: Vec<(Item, String, bool)>,
}

impl Delta {
    /// Nothing to count: the batch may be committed without the admission lock.
    pub(crate) fn is_empty(&self) -> bool {
        self.models.is_empty() && self.series.is_empty() && self.sessions.is_empty()
    }
}

#[derive(Debug, Default)]
struct Known {
    models: BTreeSet<String>,
    series: BTreeSet<String>,
    open_sessions: BTreeSet<String>,
    /// Batches refused per limit, in [`LimitName::ALL`] order.
    refused: [u64; 3],
    last_hit: Option<LimitHit>,
}

impl Known {
    fn count(&self, name: LimitName) -> u64 {
        let n = match name {
            LimitName::Models => self.models.len(),
            LimitName::Series => self.series.len(),
            LimitName::OpenSessions => self.open_sessions.len(),
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
    /// The names `store` holds: the models of its runs (one seek per model), of its series and
    /// of its model events; its series; and the sessions its session events leave open. Reads
    /// the series table, the runs index and the log's model and session events (not the
    /// runs, samples or derived records).
    pub fn load(store: &Store, limits: Limits) -> Result<Cardinality, ReadError> {
        let mut known = Known::default();
        for model in store.run_models()? {
            known.models.insert(model);
        }
        for key in store.series()? {
            if let Some((_, _, Some(model))) = Sample::parse_series_key(&key) {
                known.models.insert(model);
            }
            known.series.insert(key);
        }
        let mut sessions = Vec::new();
        for kind in [
            RecordKind::ModelLoad,
            RecordKind::ContextRequest,
            RecordKind::ContextOom,
            RecordKind::SessionStarted,
            RecordKind::SessionEnded,
        ] {
            let mut from = 0;
            loop {
                let page = store.scan_kind(kind, from, 1_000)?;
                let Some(last) = page.last().map(|e| e.seq) else {
                    break;
                };
                from = last + 1;
                for e in page {
                    match e.record {
                        Record::ModelLoad(kora_model::ModelLoad { model_id, .. })
                        | Record::ContextRequest(kora_model::ContextRequest { model_id, .. })
                        | Record::ContextOom(kora_model::ContextOom { model_id, .. }) => {
                            known.models.insert(model_id);
                        }
                        Record::SessionStarted(x) => sessions.push((e.seq, x.session_id, true)),
                        Record::SessionEnded(x) => sessions.push((e.seq, x.session_id, false)),
                        _ => {}
                    }
                }
            }
        }
        sessions.sort_by_key(|s| s.0);
        for (_, id, started) in sessions {
            if started {
                known.open_sessions.insert(id);
            } else {
                known.open_sessions.remove(&id);
            }
        }
        Ok(Cardinality {
            limits,
            known: Mutex::new(known),
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

    /// What `batch` (its items named `name`) would add to the names kept now.
    pub(crate) fn delta(&self, name: &str, batch: &Batch) -> Delta {
        let mentions = Mentions::of(name, batch);
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
            models,
            series,
            sessions: mentions.sessions,
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
        let mut over: Vec<(usize, LimitName, &Item, String)> = Vec::new();
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
                    over.push((item.index, name, item, value.clone()));
                }
            }
        }
        let mut open = known.open_sessions.len();
        let mut started: BTreeSet<&str> = BTreeSet::new();
        let mut ended: BTreeSet<&str> = BTreeSet::new();
        let limit = usize::try_from(self.limits.max_open_sessions).unwrap_or(usize::MAX);
        for (item, id, start) in &delta.sessions {
            let is_open = (known.open_sessions.contains(id.as_str())
                && !ended.contains(id.as_str()))
                || started.contains(id.as_str());
            if *start && !is_open {
                open += 1;
                started.insert(id);
                ended.remove(id.as_str());
                if open > limit {
                    over.push((item.index, LimitName::OpenSessions, item, id.clone()));
                    break;
                }
            } else if !*start && is_open {
                open -= 1;
                started.remove(id.as_str());
                ended.insert(id);
            }
        }
        let Some((_, name, item, value)) = over.into_iter().min_by_key(|o| (o.0, index_of(o.1)))
        else {
            return Ok(());
        };
        let count = known.count(name);
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
                "{field} starts session {value:?} while {count} sessions are open (started and \
                 not ended), over the limit of {limit} (setting max_open_sessions); nothing of \
                 this batch was stored. End the sessions that are over with session_ended",
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
    /// commit, whether or not anyone still waits for the answer).
    pub(crate) fn apply(&self, delta: Delta) {
        let mut known = self.known();
        known
            .models
            .extend(delta.models.into_iter().map(|(m, _)| m));
        known
            .series
            .extend(delta.series.into_iter().map(|(s, _)| s));
        for (_, id, started) in delta.sessions {
            if started {
                known.open_sessions.insert(id);
            } else {
                known.open_sessions.remove(&id);
            }
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

    fn session(id: &str, started: bool) -> Record {
        let e = SessionEvent {
            id: None,
            ts_ms: None,
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
        let d = c.delta("samples", &first);
        c.check(&d, 1).unwrap();
        c.apply(d);
        // The same series again add nothing (a retry).
        assert!(c.delta("samples", &first).is_empty());
        let batch = Batch::Samples(vec![
            sample(None, Some(0)),
            sample(None, Some(1)),
            sample(None, Some(1)),
            sample(None, Some(2)),
        ]);
        let refusal = c.check(&c.delta("samples", &batch), 7).unwrap_err();
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
        let refusal = c.check(&c.delta("samples", &batch), 1).unwrap_err();
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
        let d = c.delta("events", &b);
        c.check(&d, 1).unwrap();
        c.apply(d);
        assert_eq!(c.status()[2].count, 2);
        // Ending one first makes room for a third; starting first does not.
        let ok = Batch::Records(vec![session("a", false), session("c", true)]);
        c.check(&c.delta("events", &ok), 2).unwrap();
        let over = Batch::Records(vec![session("c", true), session("a", false)]);
        let refusal = c.check(&c.delta("events", &over), 3).unwrap_err();
        assert_eq!(refusal.field, "events[0].session_id");
        assert_eq!(refusal.status.count, 2);
        // An end of a session never started changes nothing.
        let d = c.delta("events", &Batch::Records(vec![session("zz", false)]));
        c.check(&d, 4).unwrap();
        c.apply(d);
        assert_eq!(c.status()[2].count, 2);
    }

    #[test]
    fn series_pages_follow_on() {
        let c = cardinality(Limits::default());
        let d = c.delta(
            "samples",
            &Batch::Samples((0..5).map(|d| sample(None, Some(d))).collect()),
        );
        c.apply(d);
        let (page, next) = c.series_page(None, 2);
        assert_eq!(page.len(), 2);
        let (rest, last) = c.series_page(next.as_deref(), 10);
        assert_eq!(rest.len(), 3);
        assert_eq!(last, None);
        assert!(page[1] < rest[0]);
    }
}
