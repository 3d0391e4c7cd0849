//! `GET /v1/stream`: the service's push stream of decisions, read as Server-Sent Events.
//!
//! [`Client::stream`](crate::Client::stream) opens it (resuming after an event id when given)
//! and answers an [`EventStream`]: an iterator of [`StreamEvent`]s that blocks until the next
//! event comes. Comments (keep-alives) are skipped. The iterator ends when the service ends the
//! connection (`closing`, `overflow`, or `?follow=false` after `ready`); to go on, open the
//! stream again with the last id seen ([`EventStream::last_event_id`]): nothing is missed and
//! nothing comes twice.

use std::io::BufRead;

use crate::error::ClientError;

/// One event of the stream: its `event:` name, its `id:` when it has one, and its `data:` (one
/// line of JSON; decode it with [`StreamEvent::json`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl StreamEvent {
    /// The data decoded as `T` (a `LogEntry` for a record's event, say).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_str(&self.data).map_err(|e| ClientError::Answer {
            what: format!("the stream's {} event", self.event),
            reason: e.to_string(),
        })
    }
}

/// The open stream: an iterator of events, blocking for each.
pub struct EventStream {
    reader: Box<dyn BufRead + Send>,
    last_event_id: Option<String>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("last_event_id", &self.last_event_id)
            .finish()
    }
}

impl EventStream {
    pub(crate) fn new(reader: Box<dyn BufRead + Send>, resume_from: Option<String>) -> EventStream {
        EventStream {
            reader,
            last_event_id: resume_from,
        }
    }

    /// The id of the last event read that had one (or the id the stream was opened after):
    /// open the stream again after it to go on.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }
}

impl Iterator for EventStream {
    type Item = Result<StreamEvent, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (mut event, mut id, mut data): (Option<String>, Option<String>, Vec<String>) =
            (None, None, Vec::new());
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    return Some(Err(ClientError::Answer {
                        what: "GET /v1/stream".into(),
                        reason: e.to_string(),
                    }));
                }
            }
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                // The end of an event; an empty block (a comment alone) is no event.
                if event.is_none() && data.is_empty() {
                    continue;
                }
                if id.is_some() {
                    self.last_event_id.clone_from(&id);
                }
                return Some(Ok(StreamEvent {
                    event: event.unwrap_or_else(|| "message".into()),
                    id,
                    data: data.join("\n"),
                }));
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "event" => event = Some(value.to_owned()),
                "id" => id = Some(value.to_owned()),
                "data" => data.push(value.to_owned()),
                // `retry:` and unknown fields change nothing here.
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_comments_and_multi_line_data_are_parsed_as_the_standard_says() {
        let text = ": keep-alive\n\nevent: health\ndata: {\"status\":\"ok\"}\nretry: 1000\n\n\
                    event: suggestion\nid: 89\ndata: {\"seq\":89}\n\ndata: a\ndata: b\n\n";
        let mut s = EventStream::new(
            Box::new(std::io::Cursor::new(text.as_bytes().to_vec())),
            None,
        );
        let health = s.next().unwrap().unwrap();
        assert_eq!(
            (health.event.as_str(), health.id.as_deref()),
            ("health", None)
        );
        assert_eq!(s.last_event_id(), None);
        let suggestion = s.next().unwrap().unwrap();
        assert_eq!(suggestion.id.as_deref(), Some("89"));
        assert_eq!(suggestion.json::<serde_json::Value>().unwrap()["seq"], 89);
        assert_eq!(s.last_event_id(), Some("89"));
        let plain = s.next().unwrap().unwrap();
        assert_eq!(
            (plain.event.as_str(), plain.data.as_str()),
            ("message", "a\nb")
        );
        assert!(s.next().is_none());
    }
}
