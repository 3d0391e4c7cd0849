//! kora-server
