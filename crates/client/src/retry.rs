//! When to try a call again, and how long to wait first: exponential back-off with jitter, or
//! exactly the `Retry-After` the service asked for.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use crate::error::ClientError;

/// How a [`crate::Client`] retries a call, and how a [`crate::Sender`] backs off.
///
/// A retried call waits `initial_delay`, then twice that, and so on up to `max_delay`, each
/// wait jittered into its upper half (so that many clients do not retry in step); when the
/// service answered with `Retry-After`, the wait is exactly that (at most `max_retry_after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included (1: no retry). A [`crate::Sender`] ignores it:
    /// it keeps its records and tries until the service takes them.
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// The longest `Retry-After` honoured as it is.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 100 ms doubling up to 5 s, `Retry-After` honoured up to 60 s.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// One attempt: every failure is the caller's to handle.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }
}

/// Whether a call may be sent twice without a second effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Safety {
    /// A read, a state report, or an ingest batch whose every record has a client id (the
    /// service stores a record once per id).
    Idempotent,
    /// Retried only when the service certainly did not act on it.
    Once,
}

/// The waits of one call (or of one sender's run of failures).
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: RetryPolicy,
    failures: u32,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(policy: RetryPolicy) -> Backoff {
        // Seeded per process and per instance (the standard library's random hash keys).
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        Backoff {
            policy,
            failures: 0,
            rng: h.finish() | 1,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    fn jitter(&mut self) -> f64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The wait after one more failure: `Retry-After` when the service gave one, else the
    /// next exponential step.
    pub(crate) fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        self.failures = self.failures.saturating_add(1);
        if let Some(d) = retry_after {
            return d.min(self.policy.max_retry_after);
        }
        let step = self.failures.saturating_sub(1).min(30);
        let full = self
            .policy
            .initial_delay
            .saturating_mul(1u32 << step)
            .min(self.policy.max_delay);
        full.mul_f64(0.5 + 0.5 * self.jitter())
    }

    /// The wait before attempt `failures + 1` of a call, or `None` when it must not be tried
    /// again: the policy's attempts are spent, or the failure is not one a retry can cure.
    pub(crate) fn retry(&mut self, e: &ClientError, safety: Safety) -> Option<Duration> {
        if self.failures.saturating_add(1) >= self.policy.max_attempts {
            return None;
        }
        let curable = match e {
            ClientError::Service { .. } => e.is_refused_for_now(),
            ClientError::Unreachable { .. } => safety == Safety::Idempotent || e.never_sent(),
            _ => false,
        };
        curable.then(|| self.next_delay(e.retry_after()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable(retry_after: Option<Duration>) -> ClientError {
        ClientError::Service {
            status: 503,
            body: kora_model::ApiError {
                error: "unavailable".into(),
                message: "the write queue is full".into(),
                field: None,
                limit: None,
            },
            retry_after,
        }
    }

    #[test]
    fn delays_double_up_to_the_cap_and_stay_in_their_upper_half() {
        let policy = RetryPolicy {
            max_attempts: 100,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1_000),
            max_retry_after: Duration::from_secs(60),
        };
        let mut b = Backoff::new(policy);
        let want = [100, 200, 400, 800, 1000, 1000];
        for full in want {
            let d = b.next_delay(None).as_secs_f64() * 1e3;
            assert!(
                d >= full as f64 * 0.5 && d <= full as f64,
                "{d} ms for a step of {full} ms"
            );
        }
    }

    #[test]
    fn retry_after_is_honoured_and_attempts_are_counted() {
        let mut b = Backoff::new(RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        });
        let e = unavailable(Some(Duration::from_secs(2)));
        assert_eq!(b.retry(&e, Safety::Once), Some(Duration::from_secs(2)));
        assert_eq!(b.retry(&e, Safety::Once), Some(Duration::from_secs(2)));
        assert_eq!(
            b.retry(&e, Safety::Once),
            None,
            "the third attempt was the last"
        );
        let mut none = Backoff::new(RetryPolicy::none());
        assert_eq!(none.retry(&e, Safety::Idempotent), None);
    }

    #[test]
    fn a_refused_record_or_a_lost_answer_of_a_call_that_is_not_idempotent_is_not_retried() {
        let mut b = Backoff::new(RetryPolicy::default());
        let invalid = ClientError::Service {
            status: 400,
            body: kora_model::ApiError {
                error: "invalid_record".into(),
                message: "must not be negative".into(),
                field: Some("runs[0].tokens_in".into()),
                limit: None,
            },
            retry_after: None,
        };
        assert_eq!(b.retry(&invalid, Safety::Idempotent), None);
        let reset = ClientError::Unreachable {
            base: "http://127.0.0.1:1".into(),
            source: ureq::Error::Io(std::io::ErrorKind::ConnectionReset.into()),
        };
        assert_eq!(b.retry(&reset, Safety::Once), None);
        assert!(b.retry(&reset, Safety::Idempotent).is_some());
    }
}
