//! kora-policy
