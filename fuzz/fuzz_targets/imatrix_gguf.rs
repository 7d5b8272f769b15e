//! Fuzz target `imatrix_gguf`: see `bodies::imatrix_gguf` for what it covers.
#![no_main]
#[path = "bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::imatrix_gguf(data));
