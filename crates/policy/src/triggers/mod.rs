//! The five trigger categories (spec Section 4), one module each. A trigger is a function over
//! the engine's state: it records its evaluation (what `GET /v1/triggers` shows) and returns
//! a [`Candidate`](crate::state::Candidate) when it fires; the engine then applies the
//! anti-spam rules and the ladder.

pub(crate) mod concurrency;
pub(crate) mod context;
pub(crate) mod latency;
pub(crate) mod model_fit;
pub(crate) mod reliability;

use sha2::{Digest, Sha256};

/// The context size bucket of a request: `ceil(log2(tokens))`; 0 for 0 and 1 token.
pub fn context_bucket(tokens: u64) -> u32 {
    if tokens <= 1 {
        0
    } else {
        64 - (tokens - 1).leading_zeros()
    }
}

/// The request signature (spec Section 5.1): hex SHA-256 of
/// `prompt_hash|model_id|bucket`, bucket = [`context_bucket`] of the context tokens.
pub fn request_signature(prompt_hash: &str, model_id: &str, context_tokens: u64) -> String {
    let text = format!(
        "{prompt_hash}|{model_id}|{}",
        context_bucket(context_tokens)
    );
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ceil_log2() {
        assert_eq!(context_bucket(0), 0);
        assert_eq!(context_bucket(1), 0);
        assert_eq!(context_bucket(2), 1);
        assert_eq!(context_bucket(3), 2);
        assert_eq!(context_bucket(4096), 12);
        assert_eq!(context_bucket(4097), 13);
        assert_eq!(
            request_signature("h", "m", 4000),
            request_signature("h", "m", 4096)
        );
        assert_ne!(
            request_signature("h", "m", 4096),
            request_signature("h", "m", 4097)
        );
    }
}
