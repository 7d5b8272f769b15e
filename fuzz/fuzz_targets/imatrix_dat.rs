//! Fuzz target `imatrix_dat`: see `bodies::imatrix_dat` for what it covers.
#![no_main]
#[path = "bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::imatrix_dat(data));
