//! kora-telemetry's integration tests: the real binary, real sockets, real processes.

#![allow(clippy::unwrap_used)]

mod it;
