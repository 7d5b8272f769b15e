//! laquant: Hugging Face checkpoints to llama.cpp GGUF files in one pass, with
//! mixed quantization calibrated on many languages at once.
//!
//! The library is what the `laquant` binary drives: [`hf`] reads checkpoints,
//! [`arch`] maps them to llama.cpp's names and metadata, [`quant`] packs
//! tensors bit-identically to ggml, [`gguf`] reads and writes the file format,
//! and [`pipeline`] ties them together with atomic output ([`atomic`]).

pub mod arch;
pub mod atomic;
pub mod batch;
pub mod calib;
pub mod eval;
pub mod gguf;
pub mod gguf_input;
pub mod hf;
pub mod inspect;
pub mod job;
pub mod outputs;
pub mod pipeline;
pub mod policy;
pub mod progress;
pub mod quant;
