//! The records a client sends (samples, runs, events) as one type, and the client ids that make
//! a retry harmless.

use std::borrow::Cow;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use kora_model::{Event, FieldError, Run, Sample, Validate};
use serde::{Deserialize, Serialize};

/// One record of an ingest batch: what a [`crate::Sender`] queues and spools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "record", rename_all = "snake_case")]
pub enum Item {
    Sample(Sample),
    Run(Run),
    Event(Event),
}

impl From<Sample> for Item {
    fn from(s: Sample) -> Item {
        Item::Sample(s)
    }
}

impl From<Run> for Item {
    fn from(r: Run) -> Item {
        Item::Run(r)
    }
}

impl From<Event> for Item {
    fn from(e: Event) -> Item {
        Item::Event(e)
    }
}

/// The ingest endpoint of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Samples,
    Runs,
    Events,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Samples => "/v1/samples",
            Endpoint::Runs => "/v1/runs",
            Endpoint::Events => "/v1/events",
        }
    }

    /// The member of the batch body that holds the records (`{"runs": [...]}`).
    pub fn key(self) -> &'static str {
        match self {
            Endpoint::Samples => "samples",
            Endpoint::Runs => "runs",
            Endpoint::Events => "events",
        }
    }
}

/// A record that may carry a client id.
pub(crate) trait ClientId {
    fn id_mut(&mut self) -> &mut Option<String>;
    fn has_id(&self) -> bool;
}

impl ClientId for Sample {
    fn id_mut(&mut self) -> &mut Option<String> {
        &mut self.id
    }
    fn has_id(&self) -> bool {
        self.id.is_some()
    }
}

impl ClientId for Run {
    fn id_mut(&mut self) -> &mut Option<String> {
        &mut self.id
    }
    fn has_id(&self) -> bool {
        self.id.is_some()
    }
}

impl ClientId for Event {
    fn id_mut(&mut self) -> &mut Option<String> {
        event_id(self)
    }
    fn has_id(&self) -> bool {
        event_id_of(self).is_some()
    }
}

/// `items` with an id given to each that has none (borrowed when all have one, or when
/// `ids` is `None`).
pub(crate) fn with_ids<'a, T: ClientId + Clone>(
    ids: Option<&IdSource>,
    items: &'a [T],
) -> Cow<'a, [T]> {
    match ids {
        Some(ids) if !items.iter().all(ClientId::has_id) => {
            let mut owned = items.to_vec();
            owned.iter_mut().for_each(|i| ids.fill(i.id_mut()));
            Cow::Owned(owned)
        }
        _ => Cow::Borrowed(items),
    }
}

/// A record as it goes into a batch body (the record alone, without the item's tag).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum RecordRef<'a> {
    Sample(&'a Sample),
    Run(&'a Run),
    Event(&'a Event),
}

/// The `id` field of an event, whatever its kind.
fn event_id(e: &mut Event) -> &mut Option<String> {
    match e {
        Event::ModelLoad(x) => &mut x.id,
        Event::ContextRequest(x) => &mut x.id,
        Event::ContextOom(x) => &mut x.id,
        Event::SessionStarted(x) | Event::SessionEnded(x) => &mut x.id,
    }
}

/// The `id` of an event, whatever its kind.
fn event_id_of(e: &Event) -> Option<&str> {
    match e {
        Event::ModelLoad(x) => x.id.as_deref(),
        Event::ContextRequest(x) => x.id.as_deref(),
        Event::ContextOom(x) => x.id.as_deref(),
        Event::SessionStarted(x) | Event::SessionEnded(x) => x.id.as_deref(),
    }
}

fn event_ts(e: &mut Event) -> &mut Option<i64> {
    match e {
        Event::ModelLoad(x) => &mut x.ts_ms,
        Event::ContextRequest(x) => &mut x.ts_ms,
        Event::ContextOom(x) => &mut x.ts_ms,
        Event::SessionStarted(x) | Event::SessionEnded(x) => &mut x.ts_ms,
    }
}

impl Item {
    pub fn endpoint(&self) -> Endpoint {
        match self {
            Item::Sample(_) => Endpoint::Samples,
            Item::Run(_) => Endpoint::Runs,
            Item::Event(_) => Endpoint::Events,
        }
    }

    /// The record alone, as a batch body holds it.
    pub(crate) fn record(&self) -> RecordRef<'_> {
        match self {
            Item::Sample(s) => RecordRef::Sample(s),
            Item::Run(r) => RecordRef::Run(r),
            Item::Event(e) => RecordRef::Event(e),
        }
    }

    /// The client id (idempotency key).
    pub fn id(&self) -> Option<&str> {
        match self {
            Item::Sample(s) => s.id.as_deref(),
            Item::Run(r) => r.id.as_deref(),
            Item::Event(e) => event_id_of(e),
        }
    }

    fn ts_slot(&mut self) -> &mut Option<i64> {
        match self {
            Item::Sample(s) => &mut s.ts_ms,
            Item::Run(r) => &mut r.ts_ms,
            Item::Event(e) => event_ts(e),
        }
    }

    /// Gives the record a client id and a time (`now_ms`, when it was queued) where it has
    /// none, then checks it as the service will: a record is refused when it is queued, not
    /// after an outage.
    pub fn prepare(&mut self, ids: &IdSource, now_ms: i64) -> Result<(), FieldError> {
        match self {
            Item::Sample(s) => ids.fill(s.id_mut()),
            Item::Run(r) => ids.fill(r.id_mut()),
            Item::Event(e) => ids.fill(e.id_mut()),
        }
        self.ts_slot().get_or_insert(now_ms);
        match self {
            Item::Sample(s) => s.validate(now_ms),
            Item::Run(r) => r.validate(now_ms),
            Item::Event(e) => e.validate(now_ms),
        }
    }
}

/// Client ids `kc-<16 hex digits>-<n>`: a prefix drawn once per source (from the standard
/// library's per-process random hash keys, the process id and the time) and a counter, so
/// that ids of different clients, or of one client before and after a restart, never meet.
#[derive(Debug)]
pub struct IdSource {
    prefix: String,
    next: AtomicU64,
}

impl Default for IdSource {
    fn default() -> Self {
        IdSource::new()
    }
}

impl IdSource {
    pub fn new() -> IdSource {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        h.write_u128(nanos);
        IdSource {
            prefix: format!("kc-{:016x}", h.finish()),
            next: AtomicU64::new(1),
        }
    }

    /// A new id.
    pub fn next_id(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.prefix)
    }

    /// Sets `slot` to a new id when it holds none.
    pub fn fill(&self, slot: &mut Option<String>) {
        if slot.is_none() {
            *slot = Some(self.next_id());
        }
    }
}

/// Milliseconds since the Unix epoch by this machine's clock (0 before 1970).
pub(crate) fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kora_model::{SessionEvent, Signal};

    #[test]
    fn ids_are_unique_and_kept_when_given() {
        let a = IdSource::new();
        let b = IdSource::new();
        assert_ne!(a.next_id(), b.next_id());
        let first = a.next_id();
        assert_ne!(first, a.next_id());
        let mut given = Some("mine".to_owned());
        a.fill(&mut given);
        assert_eq!(given.as_deref(), Some("mine"));
    }

    #[test]
    fn prepare_stamps_names_and_checks() {
        let ids = IdSource::new();
        let now = 1_800_000_000_000;
        let mut e = Item::Event(Event::SessionStarted(SessionEvent {
            id: None,
            ts_ms: None,
            session_id: "s1".into(),
        }));
        e.prepare(&ids, now).unwrap();
        assert!(e.id().unwrap().starts_with("kc-"));
        let Item::Event(Event::SessionStarted(s)) = &e else {
            unreachable!()
        };
        assert_eq!(s.ts_ms, Some(now));
        let mut bad = Item::Sample(Sample {
            id: None,
            ts_ms: Some(now),
            signal: Signal::CpuLoadPct,
            value: Some(f64::NAN),
            unavailable: None,
            device: None,
            model_id: None,
            session_id: None,
        });
        let err = bad.prepare(&ids, now).unwrap_err();
        assert_eq!(err.field, "value");
        // The item survives a round trip through its spooled form.
        let text = serde_json::to_vec(&e).unwrap();
        assert_eq!(serde_json::from_slice::<Item>(&text).unwrap(), e);
    }
}
