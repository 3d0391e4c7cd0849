//! `GET /v1/stream`: every decision as the engine commits it, as Server-Sent Events.
//!
//! One connection: the current storage health (`health`, with the reconnection delay), then,
//! when the client resumes (`Last-Event-ID`, or `?last_event_id=`), every event after that id
//! read back from the log, then `ready` (its id is where the client now stands), then the live
//! events. The live channel is subscribed to before anything is read, and an event already
//! read back is not sent again (positions only grow: see [`kora_pipeline::events`]), so a
//! reconnect misses nothing and repeats nothing, across a restart too. A comment every
//! [`KEEP_ALIVE`] keeps idle connections open. A client more than
//! [`kora_pipeline::events::LIVE_BUFFER`] events behind gets `overflow` and the connection
//! ends: it resumes from its last id. The publisher never waits for a client. When the service
//! stops, every stream ends with `closing`.
//!
//! The route passes the same trust boundary as every other one ([`crate::security::guard`]).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use kora_model::{ErrorCode, StreamQuery};
use kora_pipeline::{HealthChange, Pipeline, Position, StreamEvent};
use serde_json::json;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::error::AppError;
use crate::state::AppState;

/// How often an idle stream sends a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// The reconnection delay the stream asks `EventSource` for (its `retry:` field).
pub const RETRY: Duration = Duration::from_secs(1);
/// How many records of each kind one read of the backfill takes.
const BACKFILL_PAGE: usize = 256;

/// Every `event:` name the stream sends (http-api.md, `GET /v1/stream`).
pub const EVENT_NAMES: [&str; 12] = [
    "health",
    "ready",
    "firing",
    "resolved",
    "suggestion",
    "suppression",
    "mitigation_outcome",
    "consent",
    "export",
    "overflow",
    "closing",
    "unavailable",
];

fn bad_id(field: &str, id: &str) -> AppError {
    AppError::Invalid {
        code: ErrorCode::InvalidQuery,
        message: format!(
            "{id:?} is not an event id of this stream: a log seq, or a seq, a dot and a rank \
             (e.g. 1234 or 1234.1)"
        ),
        field: Some(field.into()),
    }
}

/// The position the client resumes after: the `Last-Event-ID` header (sent by `EventSource`
/// when it reconnects), else `?last_event_id=`.
fn resume_of(headers: &HeaderMap, query: &StreamQuery) -> Result<Option<Position>, AppError> {
    const HEADER: &str = "Last-Event-ID";
    let from_query = match &query.last_event_id {
        None => None,
        Some(id) => Some(Position::parse(id).ok_or_else(|| bad_id("last_event_id", id))?),
    };
    let mut values = headers.get_all(HEADER).iter();
    if let Some(v) = values.next() {
        if values.next().is_some() {
            return Err(bad_id(HEADER, "(repeated)"));
        }
        let text = v.to_str().map_err(|_| bad_id(HEADER, "(not text)"))?;
        return Position::parse(text)
            .map(Some)
            .ok_or_else(|| bad_id(HEADER, text));
    }
    Ok(from_query)
}

/// `GET /v1/stream`.
pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(query) =
        query.map_err(|e| AppError::bad_request(ErrorCode::InvalidQuery, e.body_text()))?;
    let mut resume = resume_of(&headers, &query)?;
    let pipeline = state.pipeline.clone();
    // Subscribe first: what is published from now on arrives live; what was published before
    // is in the log (or the kept resolutions) and is read back.
    let (rx, published) = pipeline.events().subscribe();
    // An id beyond this store's newest seq is not one it gave (another data directory): the
    // client starts afresh instead of waiting for a seq that means something else here.
    let newest = crate::error::blocking({
        let p = pipeline.clone();
        move || p.store().stats()
    })
    .await?
    .last_seq
    .unwrap_or(0);
    if resume.is_some_and(|r| r.seq > newest) {
        resume = None;
    }
    let now = Position::through(published);
    let feed = Feed {
        health: HealthChange::new(state.now_ms(), pipeline.health().get()),
        pipeline,
        rx,
        cursor: resume.unwrap_or(now),
        until: now,
        resumed: resume.is_some(),
        follow: query.follow.unwrap_or(true),
        phase: Phase::Health,
        queue: VecDeque::new(),
        closed: Box::pin(state.pipeline.events().closed()),
    };
    let events = futures_util::stream::unfold(feed, Feed::next);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Health,
    Backfill,
    Ready,
    Live,
    Done,
}

/// One client's stream.
struct Feed {
    pipeline: Arc<Pipeline>,
    rx: broadcast::Receiver<Arc<StreamEvent>>,
    /// The position of the last event sent (or resumed from): nothing at or before it is sent.
    cursor: Position,
    /// How far the backfill reads: what was published when the client subscribed.
    until: Position,
    resumed: bool,
    follow: bool,
    health: HealthChange,
    phase: Phase,
    queue: VecDeque<Event>,
    /// Resolves when the service stops.
    closed: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl Feed {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Feed)> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some((Ok(e), self));
            }
            match self.phase {
                Phase::Health => {
                    let change = StreamEvent::Health(self.health.clone());
                    if let Some(e) = event(&change) {
                        self.queue.push_back(e.retry(RETRY));
                    }
                    self.phase = Phase::Backfill;
                }
                Phase::Backfill if self.cursor >= self.until => self.phase = Phase::Ready,
                Phase::Backfill => {
                    let (p, after, through) = (self.pipeline.clone(), self.cursor, self.until);
                    match crate::error::blocking(move || p.backfill(after, through, BACKFILL_PAGE))
                        .await
                    {
                        Ok((events, reached)) => {
                            self.queue.extend(events.iter().filter_map(event));
                            self.cursor = self.cursor.max(reached);
                        }
                        Err(e) => {
                            tracing::warn!(error = ?e, "the stream could not read the log back");
                            self.end(
                                "unavailable",
                                "the log could not be read; reconnect to resume",
                                None,
                            );
                        }
                    }
                }
                Phase::Ready => {
                    let data = json!({"id": self.cursor.id(), "resumed": self.resumed});
                    self.queue.push_back(
                        Event::default()
                            .event("ready")
                            .data(data.to_string())
                            .id(self.cursor.id()),
                    );
                    self.phase = if self.follow {
                        Phase::Live
                    } else {
                        Phase::Done
                    };
                }
                Phase::Live => match tokio::select! {
                    r = self.rx.recv() => Some(r),
                    () = &mut self.closed => None,
                } {
                    None => self.end(
                        "closing",
                        "the service is stopping; reconnect to resume",
                        None,
                    ),
                    Some(Ok(e)) => {
                        match e.position() {
                            Some(p) if p <= self.cursor => continue,
                            Some(p) => self.cursor = p,
                            None => {}
                        }
                        self.queue.extend(event(&e));
                    }
                    Some(Err(RecvError::Lagged(missed))) => self.end(
                        "overflow",
                        "this client fell too far behind and is dropped; reconnect with \
                         Last-Event-ID to resume",
                        Some(missed),
                    ),
                    Some(Err(RecvError::Closed)) => self.phase = Phase::Done,
                },
                Phase::Done => return None,
            }
        }
    }
}

impl Feed {
    /// Ends the stream with one last event, without an id (the client resumes from its last
    /// one).
    fn end(&mut self, name: &str, message: &str, missed: Option<u64>) {
        let mut data = json!({"message": message, "last_event_id": self.cursor.id()});
        if let Some(n) = missed {
            data["missed"] = json!(n);
        }
        self.queue
            .push_back(Event::default().event(name).data(data.to_string()));
        self.phase = Phase::Done;
    }
}

/// The data of a `resolved` event: the trigger's state, where it was resolved.
#[derive(serde::Serialize)]
struct Resolved<'a> {
    #[serde(flatten)]
    status: &'a kora_policy::TriggerStatus,
    seq: u64,
    rank: u32,
}

/// The SSE form of a stream event: named by its kind, with its position as id (none for a
/// health change), and its JSON as data.
fn event(e: &StreamEvent) -> Option<Event> {
    let data = match e {
        StreamEvent::Record(entry) => serde_json::to_string(entry),
        StreamEvent::Resolved(r) => serde_json::to_string(&Resolved {
            status: &r.status,
            seq: r.seq,
            rank: r.rank,
        }),
        StreamEvent::Health(h) => serde_json::to_string(h),
    };
    let data = match data {
        Ok(d) => d,
        Err(err) => {
            tracing::warn!(error = %err, event = e.name(), "a stream event does not encode");
            return None;
        }
    };
    let mut out = Event::default().event(e.name()).data(data);
    if let Some(p) = e.position() {
        out = out.id(p.id());
    }
    Some(out)
}
