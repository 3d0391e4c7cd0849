//! The cloud runs of the log, kept current for the product metrics, `/metrics` and
//! `GET /v1/log?substrate=cloud`.
//!
//! Cloud execution is never hidden (specification Section 9). Counting cloud runs by reading
//! every run on every request would cost a full scan of the runs per scrape, so a
//! [`kora_window::CloudRuns`] fold is kept here: the first use reads the runs of the whole log
//! (in pages), every later use reads only the runs appended since. It holds one small row per
//! cloud run, none per local run.

use std::sync::{Mutex, PoisonError};

use kora_model::RecordKind;
use kora_store::{ReadError, Store};
use kora_window::CloudRuns;

/// How many runs one catch-up read decodes at a time.
const PAGE: usize = 4096;

/// The fold of the log's cloud runs, shared by the handlers.
#[derive(Debug, Default)]
pub struct CloudRunIndex(Mutex<CloudRuns>);

impl CloudRunIndex {
    /// Brings the fold up to the store's latest runs, then answers `f` of it. Blocking (it
    /// reads the store): call it from a blocking task.
    pub fn with<T>(&self, store: &Store, f: impl FnOnce(&CloudRuns) -> T) -> Result<T, ReadError> {
        // A panic while folding leaves a fold that is still consistent entry by entry.
        let mut runs = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let page = store.scan_kind(RecordKind::Run, runs.next_seq(), PAGE)?;
            for e in &page {
                runs.push(e);
            }
            if page.len() < PAGE {
                break;
            }
        }
        Ok(f(&runs))
    }
}
