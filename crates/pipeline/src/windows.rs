//! Time windows, closed inside the transaction that stores the samples that close them.
//!
//! The store hands every newly stored sample, in seq order, to a [`WindowDeriver`] while the
//! samples' transaction is open; the `window` records it returns are appended to the log in
//! that same transaction, with the deriver's state (the open windows and the watermark). So
//! samples, the windows they close and the state that closed them are durable together or
//! not at all: a crash or a failed commit at any point leaves the windows a crash-free run
//! writes, a retried batch (duplicates) feeds nothing, and a restart resumes the open windows
//! exactly, without re-reading samples. One fsync per samples request.
//!
//! Only the signals the engine reads are windowed ([`kora_policy::WINDOWED_SIGNALS`]); a sample
//! of another signal still moves the watermark, so every window closes when it did before.

use kora_model::{Record, Sample};
use kora_policy::{Thresholds, WINDOWED_SIGNALS};
use kora_store::SampleDeriver;
use kora_window::TimeWindows;

/// The time windows of every series of a signal the engine reads, as the store's sample deriver.
#[derive(Debug)]
pub struct WindowDeriver {
    windows: TimeWindows,
    /// The state of the last commit, to go back to when a transaction fails.
    committed: TimeWindows,
}

impl WindowDeriver {
    /// The deriver for `thresholds`' windows, resuming from `saved` (the state stored by the
    /// last commit). A state that does not decode, or was saved for other window sizes, is
    /// dropped with a warning: the windows open then start empty.
    pub fn resume(thresholds: &Thresholds, saved: Option<Vec<u8>>) -> WindowDeriver {
        let fresh = TimeWindows::new(thresholds.window_ms(), thresholds.grace_ms());
        let windows = match saved.map(|bytes| rmp_serde::from_slice::<TimeWindows>(&bytes)) {
            None => fresh,
            Some(Ok(w))
                if w.window_ms() == fresh.window_ms() && w.grace_ms() == fresh.grace_ms() =>
            {
                w
            }
            Some(Ok(w)) => {
                tracing::warn!(
                    saved_window_ms = w.window_ms(),
                    window_ms = fresh.window_ms(),
                    "the open time windows were saved for other window sizes; starting them afresh"
                );
                fresh
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the saved time windows do not decode; starting them afresh");
                fresh
            }
        };
        WindowDeriver {
            committed: windows.clone(),
            windows,
        }
    }

    /// The windows as of now (tests and health).
    pub fn windows(&self) -> &TimeWindows {
        &self.windows
    }

    /// Feeds samples (seq, sample with its stored time) in seq order; the windows that close.
    pub fn feed(&mut self, samples: &[(u64, Sample)]) -> Vec<Record> {
        let mut closed = Vec::new();
        for (seq, sample) in samples {
            let (Some(value), Some(ts)) = (sample.value, sample.ts_ms) else {
                continue;
            };
            let windows = if WINDOWED_SIGNALS.contains(&sample.signal) {
                self.windows
                    .push(&sample.series_key(), *seq, ts, value)
                    .closed
            } else {
                self.windows.advance(ts)
            };
            closed.extend(windows.into_iter().map(Record::Window));
        }
        closed
    }
}

impl SampleDeriver for WindowDeriver {
    fn derive(&mut self, samples: &[(u64, Sample)]) -> Vec<Record> {
        self.feed(samples)
    }

    fn state(&self) -> Result<Vec<u8>, String> {
        rmp_serde::to_vec_named(&self.windows)
            .map_err(|e| format!("cannot encode the open time windows: {e}"))
    }

    fn committed(&mut self) {
        self.committed = self.windows.clone();
    }

    fn rolled_back(&mut self) {
        self.windows = self.committed.clone();
    }
}
