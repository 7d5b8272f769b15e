//! `LlamaForCausalLM` and `MistralForCausalLM` (`LlamaModel` in
//! `convert_hf_to_gguf.py`): Q/K rows permuted to llama.cpp's interleaved
//! RoPE pairs, `{arch}.vocab_size` and `rope.dimension_count` written.

use super::spec::{llama_layout as l, *};

/// The Llama spec as a value, for the families `convert_hf_to_gguf.py` derives from `LlamaModel`.
pub(super) const BASE: ArchSpec = ArchSpec {
    hf_classes: &["LlamaForCausalLM", "LLaMAForCausalLM"],
    gguf_arch: "llama",
    vocab: VocabKind::SentencePieceLlamaHfGpt2,
    tensors: TensorRules {
        global: l::GLOBAL,
        layer_prefix: l::LAYER_PREFIX,
        layer: &l::layer(BiasRule::IfAttentionBias, true),
        skipped_suffixes: l::SKIPPED,
        experts: None,
    },
    hparams: HparamSpec {
        vocab_and_rope_dim: true,
        head_dim_always: true,
        attention_bias_default: false,
        tie_word_embeddings_default: false,
        extra_f32: &[],
        extra_u32: &[],
        rope_freq_base: true,
        rope_freq_base_swa: None,
        rms_norm_eps_fixed: None,
        layout: None,
        aliases: &[],
    },
    block: l::block(false, false),
};

/// The family of `LlamaForCausalLM`, `LLaMAForCausalLM`.
pub static LLAMA: ArchSpec = BASE;

/// Llama's spec, but MistralConfig leaves `head_dim` unset when
/// `config.json` has none (no key/value lengths written then).
pub static MISTRAL: ArchSpec = ArchSpec {
    hf_classes: &["MistralForCausalLM"],
    hparams: HparamSpec {
        head_dim_always: false,
        ..BASE.hparams
    },
    ..BASE
};
