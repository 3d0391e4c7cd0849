//! The decisions as they are committed: the live feed behind `GET /v1/stream`, the positions
//! a client resumes from, the `resolved` events the engine's trigger states imply, and the
//! index behind `?wait=decisions` (which decisions answer which input records).
//!
//! Every streamed event has a position in the log. A record (`firing`, `suggestion`,
//! `suppression`, `mitigation_outcome`, `consent`, `export`) is at its seq. A trigger that
//! stops showing `firing` has no record of its own: its `resolved` event is at the seq of the
//! input whose fold resolved it (a run or a window: never a streamed record), ranked from 1
//! among the resolutions at that seq. The follower publishes in fold order, so positions only
//! grow; it moves [`Events::published`] past a page *before* it sends the page's events, and
//! every event at or before that position is in the log (records) or in the follower's
//! [`Resolutions`] (resolved). So a client that subscribes, then reads `published`, gets
//! everything after it live, and can read everything up to it back from the store: nothing
//! missed, nothing twice.
//!
//! Health changes are not in the log and have no position.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kora_model::{Category, Decision, DecisionKind, LogEntry, Record, RecordKind};
use kora_policy::{Engine, TriggerState, TriggerStatus};
use tokio::sync::{broadcast, watch};

/// How many events a live subscriber may fall behind before it is dropped (with an
/// `overflow` event): the bound of each client's buffer. The publisher never waits.
pub const LIVE_BUFFER: usize = 1_024;
/// How many of the latest `resolved` events are kept for clients that resume (they are not
/// log records); checkpointed with the follower's state.
pub const RESOLUTIONS_KEPT: usize = 1_024;
/// How many input records with decisions the `?wait=decisions` index keeps (the newest).
pub const ANSWERS_KEPT: usize = 16_384;

/// The record kinds the stream sends, each as an event named by its kind.
pub const STREAMED: [RecordKind; 6] = [
    RecordKind::Firing,
    RecordKind::Suggestion,
    RecordKind::Suppression,
    RecordKind::MitigationOutcome,
    RecordKind::Consent,
    RecordKind::Export,
];

/// Where an event stands in the stream: a log seq, and for a `resolved` event its rank among
/// the resolutions at that seq (from 1). A record is at rank 0; "everything at a seq" is
/// [`Position::through`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub seq: u64,
    pub rank: u32,
}

impl Position {
    /// Before every event.
    pub const START: Position = Position { seq: 0, rank: 0 };

    /// After every event at `seq`.
    pub const fn through(seq: u64) -> Position {
        Position {
            seq,
            rank: u32::MAX,
        }
    }

    /// The event id: `1234` (a record, or everything through a seq), `1234.1` (a rank).
    pub fn id(&self) -> String {
        match self.rank {
            0 | u32::MAX => self.seq.to_string(),
            rank => format!("{}.{rank}", self.seq),
        }
    }

    /// Reads an event id this service sent. `1234` is everything through seq 1234 (a record
    /// there, and any resolution there: none can share a seq with a record).
    pub fn parse(id: &str) -> Option<Position> {
        let (seq, rank) = match id.split_once('.') {
            Some((seq, rank)) => (seq, Some(rank)),
            None => (id, None),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(seq) || rank.is_some_and(|r| !digits(r) || r.starts_with('0')) {
            return None;
        }
        let seq = seq.parse().ok()?;
        Some(match rank {
            None => Position::through(seq),
            Some(r) => match r.parse::<u32>().ok()? {
                0 | u32::MAX => return None,
                rank => Position { seq, rank },
            },
        })
    }
}

/// A trigger that stopped showing `firing`: its state right after the input that resolved it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Resolution {
    /// The seq of the input whose fold resolved it.
    pub seq: u64,
    /// Its rank among the resolutions at that seq, from 1 (category, then scope order).
    pub rank: u32,
    /// The trigger's state as `GET /v1/triggers` shows it then: usually `resolved`; `pending`
    /// when a new streak already began.
    pub status: TriggerStatus,
}

impl Resolution {
    pub fn position(&self) -> Position {
        Position {
            seq: self.seq,
            rank: self.rank,
        }
    }

    /// What `?wait=decisions` lists for it.
    pub fn decision(&self) -> Decision {
        Decision {
            seq: self.seq,
            kind: DecisionKind::Resolved,
            id: self.status.last_firing_id.clone().unwrap_or_else(|| {
                format!("{}/{}", self.status.category.as_str(), self.status.scope)
            }),
        }
    }
}

/// Which triggers show `firing`, followed entry by entry while one may, and the latest
/// resolutions. Part of the follower's state (and of its checkpoints): a function of the log,
/// so a restart finds the same resolutions at the same positions.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Resolutions {
    firing: BTreeSet<(Category, String)>,
    recent: VecDeque<Resolution>,
}

fn firing_now(statuses: &[TriggerStatus]) -> BTreeSet<(Category, String)> {
    statuses
        .iter()
        .filter(|t| t.state == TriggerState::Firing)
        .map(|t| (t.category, t.scope.clone()))
        .collect()
}

impl Resolutions {
    /// The triggers `engine` shows firing, with no resolution kept (a state checkpointed
    /// before resolutions were followed).
    pub fn of_engine(engine: &Engine) -> Resolutions {
        Resolutions {
            firing: firing_now(&engine.triggers()),
            recent: VecDeque::new(),
        }
    }

    /// After `engine` folded the entry at `seq` and made `outputs`: the triggers that stopped
    /// firing. Costs nothing while no trigger fires (a trigger starts firing only with a
    /// firing record among the outputs), and one state per firing trigger while some do.
    pub fn after(&mut self, engine: &Engine, seq: u64, outputs: &[Record]) -> Vec<Resolution> {
        let fired = outputs.iter().any(|r| matches!(r, Record::Firing(_)));
        // Without a firing record nothing starts firing, so while every trigger that fired
        // still does, nothing resolved: asked per trigger, without building every status.
        if !fired
            && self
                .firing
                .iter()
                .all(|(c, scope)| engine.is_firing(*c, scope))
        {
            return Vec::new();
        }
        let statuses = engine.triggers();
        let now = firing_now(&statuses);
        let mut ended = Vec::new();
        for status in statuses {
            let key = (status.category, status.scope.clone());
            if self.firing.contains(&key) && !now.contains(&key) {
                ended.push(Resolution {
                    seq,
                    rank: u32::try_from(ended.len() + 1).unwrap_or(u32::MAX - 1),
                    status,
                });
            }
        }
        self.firing = now;
        for r in &ended {
            if self.recent.len() == RESOLUTIONS_KEPT {
                self.recent.pop_front();
            }
            self.recent.push_back(r.clone());
        }
        ended
    }

    /// The kept resolutions after `after` and at or before `through`, in position order.
    pub fn between(&self, after: Position, through: Position) -> Vec<Resolution> {
        self.recent
            .iter()
            .filter(|r| r.position() > after && r.position() <= through)
            .cloned()
            .collect()
    }
}

/// A change of the storage health `GET /v1/health` reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HealthChange {
    pub ts_ms: i64,
    /// `ok`, or `degraded` while writes fail.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl HealthChange {
    pub fn new(ts_ms: i64, problem: Option<String>) -> HealthChange {
        HealthChange {
            ts_ms,
            status: if problem.is_some() { "degraded" } else { "ok" }.into(),
            problem,
        }
    }
}

/// One event of the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A log record of a [`STREAMED`] kind.
    Record(Box<LogEntry>),
    Resolved(Resolution),
    Health(HealthChange),
}

impl StreamEvent {
    /// Its position; `None` for a health change.
    pub fn position(&self) -> Option<Position> {
        match self {
            StreamEvent::Record(e) => Some(Position {
                seq: e.seq,
                rank: 0,
            }),
            StreamEvent::Resolved(r) => Some(r.position()),
            StreamEvent::Health(_) => None,
        }
    }

    /// The event's name: the record's kind, `resolved` or `health`.
    pub fn name(&self) -> &'static str {
        match self {
            StreamEvent::Record(e) => e.record.kind().as_str(),
            StreamEvent::Resolved(_) => DecisionKind::Resolved.as_str(),
            StreamEvent::Health(_) => "health",
        }
    }
}

/// Whether the stream sends records of this kind.
pub fn is_streamed(kind: RecordKind) -> bool {
    STREAMED.contains(&kind)
}

/// The decision a derived record is, if it is one.
pub fn decision_of(seq: u64, record: &Record) -> Option<Decision> {
    let (kind, id) = match record {
        Record::Firing(f) => (DecisionKind::Firing, &f.firing_id),
        Record::Suggestion(s) => (DecisionKind::Suggestion, &s.suggestion_id),
        Record::Suppression(s) => (DecisionKind::Suppression, &s.firing_id),
        Record::MitigationOutcome(o) => (DecisionKind::MitigationOutcome, &o.suggestion_id),
        _ => return None,
    };
    Some(Decision {
        seq,
        kind,
        id: id.clone(),
    })
}

/// The live feed and the read-your-writes index. One per pipeline.
#[derive(Debug)]
pub struct Events {
    live: broadcast::Sender<Arc<StreamEvent>>,
    /// Every event at or before `through(published)` is in the log or the kept resolutions.
    published: AtomicU64,
    /// The last input seq whose decisions are durable (and listed in `answers`).
    answered: watch::Sender<u64>,
    /// The decisions of each recent input that had some, by input seq.
    answers: Mutex<BTreeMap<u64, Vec<Decision>>>,
    /// Set when the service stops: live streams end, so that the server can drain.
    closing: watch::Sender<bool>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            live: broadcast::channel(LIVE_BUFFER).0,
            published: AtomicU64::new(0),
            answered: watch::channel(0).0,
            answers: Mutex::new(BTreeMap::new()),
            closing: watch::channel(false).0,
        }
    }
}

impl Events {
    /// Where the follower stands at start: everything up to `folded` is already decided.
    pub fn start_at(&self, folded: u64) {
        self.published.store(folded, Ordering::SeqCst);
        self.answered.send_replace(folded);
    }

    /// Subscribes to the live events, then reads how far they were published: every event
    /// after `through(published)` arrives on the receiver; the ones at or before it are in
    /// the log or the follower's kept resolutions.
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<StreamEvent>>, u64) {
        let rx = self.live.subscribe();
        (rx, self.published.load(Ordering::SeqCst))
    }

    /// How far the events were published.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::SeqCst)
    }

    /// The follower folded the log through `seq`; `events` are the page's, in position
    /// order. Never waits: a subscriber too far behind is dropped by the channel.
    pub fn publish(&self, seq: u64, events: Vec<StreamEvent>) {
        self.published.fetch_max(seq, Ordering::SeqCst);
        for e in events {
            // No subscriber is not an error.
            let _ = self.live.send(Arc::new(e));
        }
    }

    /// The service is stopping: every live stream ends (see [`Events::closed`]).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`Events::close`] was called (at once if it was already).
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            // An error means the sender is gone: the service is gone too.
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// A health change, sent at once.
    pub fn health(&self, change: HealthChange) {
        let _ = self.live.send(Arc::new(StreamEvent::Health(change)));
    }

    /// The decisions of every input through `seq` are durable: `decided` lists them by
    /// input seq.
    pub fn answer(&self, seq: u64, decided: Vec<(u64, Decision)>) {
        if !decided.is_empty() {
            let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
            for (input, d) in decided {
                answers.entry(input).or_default().push(d);
            }
            while answers.len() > ANSWERS_KEPT {
                answers.pop_first();
            }
        }
        self.answered.send_modify(|a| *a = (*a).max(seq));
    }

    /// The last input seq whose decisions are durable.
    pub fn answered(&self) -> u64 {
        *self.answered.borrow()
    }

    /// Waits until the decisions of every input through `seq` are durable.
    pub async fn wait_answered(&self, seq: u64) {
        let mut rx = self.answered.subscribe();
        // The sender lives as long as `self`: `wait_for` cannot fail while we borrow it.
        let _ = rx.wait_for(|a| *a >= seq).await;
    }

    /// The decisions recorded for `inputs`, in seq order (decisions made since the service
    /// started, among the newest [`ANSWERS_KEPT`] inputs that had some).
    pub fn decisions_of(&self, inputs: &[u64]) -> Vec<Decision> {
        let answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Decision> = inputs
            .iter()
            .filter_map(|i| answers.get(i))
            .flatten()
            .cloned()
            .collect();
        out.sort_by_key(|d| (d.seq, d.kind));
        out.dedup();
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_read_back_as_the_positions_they_name() {
        for (id, pos) in [
            ("0", Position::through(0)),
            ("1234", Position::through(1234)),
            ("1234.2", Position { seq: 1234, rank: 2 }),
        ] {
            assert_eq!(Position::parse(id), Some(pos), "{id}");
            assert_eq!(pos.id(), id);
        }
        assert_eq!(Position { seq: 7, rank: 0 }.id(), "7");
        for bad in [
            "",
            "x",
            "-1",
            "1.",
            ".1",
            "1.0",
            "1.01",
            "1.a",
            "1 ",
            "+1",
            "1.2.3",
            "1e3",
            "99999999999999999999",
            "1.4294967295",
        ] {
            assert_eq!(Position::parse(bad), None, "{bad:?}");
        }
        // A record, then the resolutions at a later seq, then the next record.
        let record = Position { seq: 10, rank: 0 };
        let r1 = Position { seq: 11, rank: 1 };
        let r2 = Position { seq: 11, rank: 2 };
        assert!(record < Position::through(10));
        assert!(Position::through(10) < r1 && r1 < r2 && r2 < Position::through(11));
        assert!(Position::through(11) < Position { seq: 12, rank: 0 });
    }

    #[test]
    fn answers_are_listed_by_input_and_bounded() {
        let events = Events::default();
        let d = |seq, id: &str| Decision {
            seq,
            kind: DecisionKind::Firing,
            id: id.into(),
        };
        events.answer(5, vec![(3, d(6, "a")), (5, d(7, "b"))]);
        assert_eq!(events.answered(), 5);
        assert_eq!(events.decisions_of(&[5, 3, 4]), vec![d(6, "a"), d(7, "b")]);
        events.answer(4, Vec::new());
        assert_eq!(events.answered(), 5, "the watermark never goes back");
        for i in 0..ANSWERS_KEPT as u64 + 10 {
            events.answer(100 + i, vec![(100 + i, d(200_000 + i, "x"))]);
        }
        assert!(
            events.decisions_of(&[3]).is_empty(),
            "the oldest are dropped"
        );
        assert_eq!(events.decisions_of(&[100 + ANSWERS_KEPT as u64]).len(), 1);
    }
}
