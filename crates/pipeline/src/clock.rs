//! The one clock of the service, injected.
//!
//! Everything that needs "now" (stamping records that came without a time, validating that a
//! record is not from the future, the ranges `24h` and `7d`, checkpoint stamps, retention, the
//! probe's ticks) asks the [`Clock`] the pipeline was built with. The service runs on
//! [`SystemClock`]; tests run on a [`ManualClock`] they move by hand, so that time-dependent
//! behaviour is tested deterministically. The policy engine reads no clock at all: its time is
//! the records'.

use std::sync::atomic::{AtomicI64, Ordering};

/// Milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now_ms(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// The wall clock's time now, for code outside the service (the CLI, tests, benches): the
/// service itself reads time only through the [`Clock`] it was built with.
pub fn wall_ms() -> i64 {
    SystemClock.now_ms()
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> ManualClock {
        ManualClock(AtomicI64::new(now_ms))
    }

    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }

    pub fn advance(&self, by_ms: i64) {
        self.0.fetch_add(by_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}
