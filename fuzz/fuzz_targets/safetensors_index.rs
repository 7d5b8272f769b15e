//! Fuzz target `safetensors_index`: see `bodies::safetensors_index` for what it covers.
#![no_main]
#[path = "bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::safetensors_index(data));
