//! `StableLmForCausalLM` (`StableLMModel` in `convert_hf_to_gguf.py`): the
//! Llama layout with LayerNorms that have biases, partial rotary embeddings,
//! optional Q/K/V biases (`use_qkv_bias`), an untied output head, the GPT-2
//! BPE vocabulary of `tokenizer.json`, and its own hyperparameter keys.

use super::spec::{llama_layout as l, *};
use super::Role;

const LAYER: [TensorRule; 9] = {
    let mut t = l::layer(BiasRule::IfAttentionBias, false);
    t[0].bias = BiasRule::Always;
    // Absent when the residual is parallel (StableLM 2 12B); llama.cpp loads it as optional.
    t[1].bias = BiasRule::Always;
    t[1].required = false;
    t[5].bias = BiasRule::Never;
    t
};

/// The family of `StableLmForCausalLM`.
pub static STABLELM: ArchSpec = ArchSpec {
    hf_classes: &["StableLmForCausalLM"],
    gguf_arch: "stablelm",
    vocab: VocabKind::Gpt2,
    tensors: TensorRules {
        global: &[
            TensorRule::plain("model.embed_tokens", Role::TokenEmbd),
            TensorRule {
                bias: BiasRule::Always,
                ..TensorRule::plain("model.norm", Role::OutputNorm)
            },
            // llama.cpp's stablelm requires `output.weight` (no tied fallback).
            TensorRule::plain("lm_head", Role::Output),
        ],
        layer_prefix: l::LAYER_PREFIX,
        layer: &LAYER,
        skipped_suffixes: l::SKIPPED,
        experts: None,
    },
    hparams: HparamSpec {
        vocab_and_rope_dim: false,
        head_dim_always: false,
        attention_bias_default: false,
        tie_word_embeddings_default: false,
        extra_f32: &[],
        extra_u32: &[],
        rope_freq_base: true,
        rope_freq_base_swa: None,
        rms_norm_eps_fixed: None,
        layout: Some(&[
            Hp::ContextLength,
            Hp::EmbeddingLength,
            Hp::BlockCount,
            Hp::FeedForwardLength,
            Hp::RopeDimensionCount,
            Hp::HeadCount,
            Hp::HeadCountKv,
            Hp::ParallelResidual,
            Hp::LayerNormEps,
            Hp::FileType,
        ]),
        aliases: &[
            ("rms_norm_eps", "layer_norm_eps"),
            ("attention_bias", "use_qkv_bias"),
        ],
    },
    block: BlockSpec {
        norm: Norm::Layer,
        positions: Positions::RopePartial,
        ..l::block(false, false)
    },
};
