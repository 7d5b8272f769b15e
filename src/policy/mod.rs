//! Type policies: which ggml type each tensor gets.
//!
//! [`presets`] reproduces llama-quantize's per-tensor choices for its file
//! types (`llama_tensor_get_type` in llama.cpp's `llama-quant.cpp`), with the
//! reason for every choice returned beside it, plus the user's overrides
//! (`--tensor-type REGEX=TYPE`, `--output-type`, `--embedding-type`).

pub mod lamix;
pub mod presets;
pub mod sensitivity;

pub use presets::{Overrides, Preset, PresetPlanner, TensorDesc};
