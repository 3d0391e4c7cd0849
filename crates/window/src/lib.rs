//! kora-window
