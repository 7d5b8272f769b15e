#![warn(missing_docs)]
//! laquant: Hugging Face checkpoints to llama.cpp GGUF files in one pass, with
//! mixed quantization calibrated on many languages at once.
//!
//! # The public API
//!
//! What another tool needs is re-exported here, at the crate root:
//!
//! - **Convert**: a [`Job`] (a model, [`ConvertOptions`] saying what to write,
//!   and a [`Calibration`] saying where the importance comes from) decides
//!   whether to calibrate, calibrates, plans and writes; [`Job::plan`] only
//!   plans ([`TensorPlan`]: type, bytes and reason per tensor). Progress comes
//!   through a callback ([`Progress`]); failures are [`JobError`]s.
//! - **Open a checkpoint**: [`Checkpoint::open`] (a folder or a hub id in the
//!   local Hugging Face cache), [`HfError`].
//! - **Calibrate**: [`calibrate`] runs the forward pass over a corpus
//!   ([`CalibOptions`]) and gives per-language importance, written as
//!   llama.cpp's imatrix ([`Imatrix`]); [`CalibError`].
//! - **Evaluate**: [`evaluate`] scores GGUF files against their model, as
//!   `llama-perplexity --kl-divergence` does ([`EvalOptions`], [`EvalError`]).
//! - **Read and write GGUF**: [`GgufFile`], [`GgufWriter`], [`GgufError`].
//! - **Quantize and dequantize** rows of any block type, bit-identically to
//!   ggml: [`quantize_tensor`], [`quantize_rows`], [`dequantize`] by
//!   [`GgmlType`]; [`QuantError`].
//!
//! `examples/convert.rs` uses them. The modules below are public too, for the
//! `laquant` binary and the integration tests, which reach into them (the
//! tokenizer, card and kernel tests compare internals with llama.cpp's); their
//! items are documented too (`missing_docs` warns, and CI's clippy denies
//! warnings), but only the re-exports above are the API meant to stay stable.
//!
//! The stages: [`hf`] reads checkpoints, [`arch`] maps them to llama.cpp's
//! names and metadata, [`calib`] runs the calibration forward pass, [`policy`]
//! chooses a type per tensor, [`quant`] packs tensors bit-identically to ggml,
//! [`gguf`] reads and writes the file format, [`pipeline`] ties them together
//! with atomic output ([`atomic`]), [`job`] decides and runs one conversion,
//! [`batch`] runs a model zoo and [`eval`] scores the results.

pub use calib::{run as calibrate, CalibError, CalibOptions, CorpusSource, Imatrix, Matmul};
pub use eval::{run as evaluate, EvalError, EvalOptions, EvalReport, EvalText};
pub use gguf::{GgmlType, GgufError, GgufFile, GgufWriter, Metadata, TensorSpec, Value};
pub use hf::{Checkpoint, HfError};
pub use job::{CalibSource, Calibration, Job, JobError, OnProgress, Progress, SensitivitySize};
pub use pipeline::{ConvertError, ConvertOptions, ConvertReport, Importance, OutType, TensorPlan};
pub use quant::{dequantize, quantize_rows, quantize_tensor, QuantError};

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

/// An error and its sources as one line, `error: source: source's source`, for
/// messages that are not printed through `anyhow`'s `{:#}` (batch summaries,
/// warnings).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}
