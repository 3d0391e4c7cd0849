//! One batch, valid or a little broken, as JSON and as named MessagePack: the same verdict and
//! the same records from both, equal to what was sent, and unchanged through a real store.
#![no_main]

use kora_fuzz::{differential, generate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = arbitrary::Unstructured::new(data);
    if let Ok(case) = generate::case(&mut u) {
        differential(&case);
    }
});
