//! Fuzz target `tokenizer_json`: see `bodies::tokenizer_json` for what it covers.
#![no_main]
#[path = "bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::tokenizer_json(data));
