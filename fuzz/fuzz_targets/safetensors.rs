//! Fuzz target `safetensors`: see `bodies::safetensors` for what it covers.
#![no_main]
#[path = "bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::safetensors(data));
