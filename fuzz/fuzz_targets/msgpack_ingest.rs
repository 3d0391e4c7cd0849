//! Any bytes as a MessagePack body of `POST /v1/samples`, `/v1/runs` and `/v1/events`, through
//! the server's real decode+validate path (`kora_server::ingest::decode_batch`, with its depth
//! limit of 16).
#![no_main]

use kora_fuzz::{Encoding, check_body};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| check_body(Encoding::MessagePack, data));
