//! `GPTNeoXForCausalLM` (`GPTNeoXModel` in `convert_hf_to_gguf.py`): a fused
//! QKV whose rows go head by head (reordered to `[Q; K; V]`), biases on every
//! linear and LayerNorm, a non-gated GELU MLP, partial rotary (`rotary_pct`),
//! the parallel residual, an untied output head (`embed_out`), the GPT-2 BPE
//! vocabulary and its own hyperparameter keys.

use super::spec::*;
use super::Role;

/// The family of `GPTNeoXForCausalLM`.
pub static GPTNEOX: ArchSpec = ArchSpec {
    hf_classes: &["GPTNeoXForCausalLM"],
    gguf_arch: "gptneox",
    vocab: VocabKind::Gpt2,
    tensors: TensorRules {
        global: &[
            TensorRule::plain("gpt_neox.embed_in", Role::TokenEmbd),
            TensorRule::with_bias("gpt_neox.final_layer_norm", Role::OutputNorm),
            // llama.cpp's gptneox requires `output.weight` (no tied fallback).
            TensorRule::plain("embed_out", Role::Output),
        ],
        layer_prefix: "gpt_neox.layers.",
        layer: &[
            TensorRule::with_bias("input_layernorm", Role::AttnNorm),
            TensorRule::with_bias("post_attention_layernorm", Role::FfnNorm),
            TensorRule {
                transform: TransformRule::QkvPerHead,
                ..TensorRule::with_bias("attention.query_key_value", Role::AttnQkv)
            },
            TensorRule::with_bias("attention.dense", Role::AttnOutput),
            TensorRule::with_bias("mlp.dense_h_to_4h", Role::FfnUp),
            TensorRule::with_bias("mlp.dense_4h_to_h", Role::FfnDown),
        ],
        skipped_suffixes: llama_layout::SKIPPED,
        experts: None,
    },
    hparams: HparamSpec {
        attention_bias_default: true,
        layout: Some(&[
            Hp::ContextLength,
            Hp::EmbeddingLength,
            Hp::BlockCount,
            Hp::FeedForwardLength,
            Hp::RopeDimensionCount,
            Hp::HeadCount,
            Hp::ParallelResidual,
            Hp::LayerNormEps,
        ]),
        aliases: &[
            ("rms_norm_eps", "layer_norm_eps"),
            ("rope_theta", "rotary_emb_base"),
        ],
        ..HparamSpec::TEXT_MODEL
    },
    block: BlockSpec {
        norm: Norm::Layer,
        positions: Positions::RopePartial,
        attention: Attention::fused(QkvSplit::PerHead),
        ffn: Ffn::Plain { act: Act::Gelu },
        residual: Residual::Parallel,
        ffn_norm: Role::FfnNorm,
        scales: Scales::NONE,
        nope_every: None,
        matmuls: &[
            Matmul {
                role: Role::AttnQkv,
                hf: "attention.query_key_value",
                input: Input::AttnIn,
            },
            Matmul {
                role: Role::AttnOutput,
                hf: "attention.dense",
                input: Input::AttnOut,
            },
            Matmul {
                role: Role::FfnUp,
                hf: "mlp.dense_h_to_4h",
                input: Input::FfnIn,
            },
            Matmul {
                role: Role::FfnDown,
                hf: "mlp.dense_4h_to_h",
                input: Input::FfnDown,
            },
        ],
    },
};
