//! kora-probe
