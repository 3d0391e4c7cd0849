//! Replay: re-derive every derived record from the inputs of a log and compare with what
//! the log recorded.
//!
//! Derived records are matched by identity, not position (the server may append them after
//! later inputs): a firing by `firing_id`, a suggestion by `suggestion_id`, a suppression by
//! the firing it held back, a mitigation outcome by its suggestion, a run-block window by
//! model, metric and first seq.

use std::collections::{BTreeMap, HashSet};

use kora_model::{LogEntry, Record};
use serde::Serialize;

use crate::engine::Engine;

/// The identity of a derived record; `None` for inputs.
pub fn derived_key(record: &Record) -> Option<String> {
    match record {
        Record::Firing(f) => Some(format!("firing/{}", f.firing_id)),
        Record::Suggestion(s) => Some(format!("suggestion/{}", s.suggestion_id)),
        Record::Suppression(s) => Some(format!("suppression/{}", s.firing_id)),
        Record::MitigationOutcome(m) => Some(format!("mitigation_outcome/{}", m.suggestion_id)),
        Record::Window(w) if Engine::is_derived_by_engine(record) => Some(format!(
            "window/{}/{}/{}/{}",
            w.window_kind,
            w.scope,
            w.metric,
            w.first_seq.unwrap_or(0)
        )),
        _ => None,
    }
}

/// One difference between the log and the re-derivation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "difference", rename_all = "snake_case")]
pub enum ReplayDifference {
    /// Re-derived, but not in the log.
    Missing {
        key: String,
        input_seq: u64,
        rederived: Box<Record>,
    },
    /// In the log, but not re-derived (or recorded twice).
    Unexpected {
        key: String,
        seq: u64,
        recorded: Box<Record>,
    },
    /// In both, with different content.
    Changed {
        key: String,
        seq: u64,
        recorded: Box<Record>,
        rederived: Box<Record>,
    },
}

/// What a replay found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayReport {
    /// Input entries folded.
    pub inputs: u64,
    /// Derived records the log holds.
    pub recorded: u64,
    /// Derived records the engine produced.
    pub rederived: u64,
    /// Records identical in both.
    pub matching: u64,
    pub differences: Vec<ReplayDifference>,
    /// The seq of the last entry seen.
    pub last_seq: Option<u64>,
}

impl ReplayReport {
    pub fn is_clean(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Every record the engine derives from `entries` (derived records among them are skipped),
/// each with the seq of the input that produced it.
pub fn derive_all(
    entries: impl IntoIterator<Item = LogEntry>,
    engine: &mut Engine,
) -> Vec<(u64, Record)> {
    let mut out = Vec::new();
    for e in entries {
        for r in engine.step(&e) {
            out.push((e.seq, r));
        }
    }
    out
}

/// The derived records matched so far.
#[derive(Default)]
struct Matches {
    matched: HashSet<String>,
    matching: u64,
    differences: Vec<ReplayDifference>,
}

impl Matches {
    fn compare(&mut self, key: String, seq: u64, recorded: Record, rederived: Record) {
        if recorded == rederived {
            self.matching += 1;
        } else {
            self.differences.push(ReplayDifference::Changed {
                key: key.clone(),
                seq,
                recorded: Box::new(recorded),
                rederived: Box::new(rederived),
            });
        }
        self.matched.insert(key);
    }
}

/// Folds `entries` through `engine` (fresh, or resumed from a checkpoint taken before the
/// first entry) and compares what it derives with the derived records the entries hold.
///
/// It streams: a derived record is matched as soon as both its recorded and its re-derived
/// copy have been seen (the service appends it shortly after its input), so what it holds is
/// the records waiting for their other half and the keys already matched, never the log.
pub fn replay(entries: impl IntoIterator<Item = LogEntry>, engine: &mut Engine) -> ReplayReport {
    // Recorded, not re-derived yet: key -> (seq, record).
    let mut recorded: BTreeMap<String, (u64, Record)> = BTreeMap::new();
    // Re-derived, not seen recorded yet: key -> (input seq, record).
    let mut rederived: BTreeMap<String, (u64, Record)> = BTreeMap::new();
    let mut m = Matches::default();
    let mut inputs = 0;
    let mut recorded_count = 0;
    let mut rederived_count = 0;
    let mut last_seq = None;
    for e in entries {
        last_seq = Some(e.seq);
        if let Some(key) = derived_key(&e.record) {
            recorded_count += 1;
            if m.matched.contains(&key) || recorded.contains_key(&key) {
                m.differences.push(ReplayDifference::Unexpected {
                    key,
                    seq: e.seq,
                    recorded: Box::new(e.record),
                });
            } else if let Some((_, r)) = rederived.remove(&key) {
                m.compare(key, e.seq, e.record, r);
            } else {
                recorded.insert(key, (e.seq, e.record));
            }
            continue;
        }
        inputs += 1;
        for r in engine.step(&e) {
            let Some(key) = derived_key(&r) else { continue };
            rederived_count += 1;
            if let Some((seq, rec)) = recorded.remove(&key) {
                m.compare(key, seq, rec, r);
            } else if m.matched.contains(&key) || rederived.contains_key(&key) {
                // Derived twice: the log can hold it once.
                m.differences.push(ReplayDifference::Missing {
                    key,
                    input_seq: e.seq,
                    rederived: Box::new(r),
                });
            } else {
                rederived.insert(key, (e.seq, r));
            }
        }
    }
    let Matches {
        matching,
        mut differences,
        ..
    } = m;
    for (key, (input_seq, r)) in rederived {
        differences.push(ReplayDifference::Missing {
            key,
            input_seq,
            rederived: Box::new(r),
        });
    }
    for (key, (seq, rec)) in recorded {
        differences.push(ReplayDifference::Unexpected {
            key,
            seq,
            recorded: Box::new(rec),
        });
    }
    ReplayReport {
        inputs,
        recorded: recorded_count,
        rederived: rederived_count,
        matching,
        differences,
        last_seq,
    }
}
