//! `GraniteForCausalLM` (`GraniteModel`, a `LlamaModel` in
//! `convert_hf_to_gguf.py`): the Llama layout and vocabulary with four
//! multipliers (embeddings, attention scale, residual branches, logits).

use super::llama::BASE;
use super::spec::*;

/// The family of `GraniteForCausalLM`.
pub static GRANITE: ArchSpec = ArchSpec {
    hf_classes: &["GraniteForCausalLM"],
    gguf_arch: "granite",
    hparams: HparamSpec {
        // GraniteModel pops `head_dim`.
        head_dim_always: false,
        extra_f32: &[
            ("attention_multiplier", "attention.scale"),
            ("embedding_multiplier", "embedding_scale"),
            ("residual_multiplier", "residual_scale"),
            ("logits_scaling", "logit_scale"),
        ],
        ..BASE.hparams
    },
    block: BlockSpec {
        scales: Scales {
            embedding: Some("embedding_multiplier"),
            attention: Some("attention_multiplier"),
            residual: Some("residual_multiplier"),
            logit_divisor: Some("logits_scaling"),
            ..Scales::NONE
        },
        ..BASE.block
    },
    ..BASE
};
