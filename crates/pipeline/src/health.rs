//! The last write failure, shown by `/v1/health` until a write succeeds again.

use std::sync::Mutex;

/// The storage health the writer reports.
#[derive(Debug, Default)]
pub struct HealthFlag(Mutex<HealthState>);

#[derive(Debug, Default)]
struct HealthState {
    current: Option<String>,
    /// The last storage failure, kept after recovery so that it can still be seen.
    last: Option<(i64, String)>,
}

impl HealthFlag {
    /// A write failed at `now_ms`.
    pub fn set(&self, now_ms: i64, problem: String) {
        if let Ok(mut h) = self.0.lock() {
            h.last = Some((now_ms, problem.clone()));
            h.current = Some(problem);
        }
    }

    /// A write succeeded.
    pub fn clear(&self) {
        if let Ok(mut h) = self.0.lock() {
            h.current.take();
        }
    }

    /// The current problem, while writes fail.
    pub fn get(&self) -> Option<String> {
        self.0.lock().ok().and_then(|h| h.current.clone())
    }

    /// The last failure and when it happened, even if writes work again since.
    pub fn last(&self) -> Option<(i64, String)> {
        self.0.lock().ok().and_then(|h| h.last.clone())
    }
}
