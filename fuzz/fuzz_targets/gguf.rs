//! Fuzz target `gguf`: see `bodies::gguf` for what it covers.
#![no_main]
#[path = "bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::gguf(data));
