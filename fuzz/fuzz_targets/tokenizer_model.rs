//! Fuzz target `tokenizer_model`: see `bodies::tokenizer_model` for what it covers.
#![no_main]
#[path = "bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::tokenizer_model(data));
