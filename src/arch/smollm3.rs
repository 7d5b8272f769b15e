//! `SmolLM3ForCausalLM` (`SmolLM3Model`, a `LlamaModel` in
//! `convert_hf_to_gguf.py`): the Llama layout and vocabulary, every fourth
//! layer without RoPE (NoPE).

use super::llama::BASE;
use super::spec::*;

/// The family of `SmolLM3ForCausalLM`.
pub static SMOLLM3: ArchSpec = ArchSpec {
    hf_classes: &["SmolLM3ForCausalLM"],
    gguf_arch: "smollm3",
    hparams: HparamSpec {
        // SmolLM3Config has no `head_dim` unless config.json gives one, and ties
        // the embeddings unless it says otherwise.
        head_dim_always: false,
        tie_word_embeddings_default: true,
        ..BASE.hparams
    },
    block: BlockSpec {
        nope_every: Some(4),
        ..BASE.block
    },
    ..BASE
};
