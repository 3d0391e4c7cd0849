//! Fault points for the crash tests, injected as a value (never a process-wide static).
//!
//! `Faults::abort_after_commit(n)` makes the process abort (`std::process::abort`, no cleanup)
//! on the n-th client ingest batch the store acknowledged as durable, after the commit and
//! before the HTTP answer: the client never sees the acknowledgement of a stored batch and
//! must retry it (`tests/it/crash.rs`). The binary arms it from [`ABORT_AFTER_COMMIT_ENV`];
//! unarmed (always, outside tests) it costs one branch per batch.

use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable the binary reads to arm [`Faults::abort_after_commit`].
pub const ABORT_AFTER_COMMIT_ENV: &str = "KORA_TEST_ABORT_AFTER_COMMIT";

/// The armed fault points of one pipeline.
#[derive(Debug, Default)]
pub struct Faults {
    abort_after: Option<u64>,
    committed: AtomicU64,
}

impl Faults {
    /// No fault point armed.
    pub fn none() -> Faults {
        Faults::default()
    }

    /// Aborts the process after the `n`-th acknowledged client batch (`n` ≥ 1).
    pub fn abort_after_commit(n: u64) -> Faults {
        Faults {
            abort_after: Some(n.max(1)),
            committed: AtomicU64::new(0),
        }
    }

    /// Reads [`ABORT_AFTER_COMMIT_ENV`]: unset is no fault; a value that is not a positive whole
    /// number is refused with a message naming the variable.
    pub fn from_env() -> Result<Faults, String> {
        let Some(raw) = std::env::var_os(ABORT_AFTER_COMMIT_ENV) else {
            return Ok(Faults::none());
        };
        let n = raw
            .to_str()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                format!("{ABORT_AFTER_COMMIT_ENV}={raw:?} is not a positive whole number")
            })?;
        tracing::warn!(
            "{ABORT_AFTER_COMMIT_ENV}={n}: TEST FAULT POINT ARMED, the process aborts after \
             committing ingest batch {n}, before answering it"
        );
        Ok(Faults::abort_after_commit(n))
    }

    /// Whether any fault point is armed.
    pub fn armed(&self) -> bool {
        self.abort_after.is_some()
    }

    /// Called after the store acknowledged a client batch, before it is answered.
    pub fn after_commit(&self) {
        if let Some(n) = self.abort_after
            && self.committed.fetch_add(1, Ordering::SeqCst) + 1 == n
        {
            std::process::abort();
        }
    }
}
