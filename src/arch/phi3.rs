//! `Phi3ForCausalLM` (Phi-3, Phi-3.5, Phi-4-mini; `Phi3MiniModel` in
//! `convert_hf_to_gguf.py`, the `phi3` graph of llama.cpp): the Llama block
//! with a fused QKV (`qkv_proj`, all of Q then K then V, kept as the
//! converter keeps it) and a fused gate-up (`gate_up_proj`, written as
//! `ffn_up` of twice the width, gate rows first), NEOX RoPE on HF's rows over
//! `partial_rotary_factor` of each head (Phi-4-mini; all of it otherwise),
//! its own hyperparameter keys (the sliding window written, 0 when absent,
//! though llama.cpp's phi3 graph attends to everything), and SentencePiece
//! (`tokenizer.model`) or, without one, the GPT-2 BPE vocabulary.

use super::spec::*;
use super::Role;

/// The family of `Phi3ForCausalLM`.
pub static PHI3: ArchSpec = ArchSpec {
    hf_classes: &["Phi3ForCausalLM"],
    gguf_arch: "phi3",
    vocab: VocabKind::SentencePieceGpt2,
    tensors: TensorRules {
        global: llama_layout::GLOBAL,
        layer_prefix: llama_layout::LAYER_PREFIX,
        layer: &[
            TensorRule::plain("input_layernorm", Role::AttnNorm),
            TensorRule::plain("post_attention_layernorm", Role::FfnNorm),
            TensorRule::plain("self_attn.qkv_proj", Role::AttnQkv),
            TensorRule::plain("self_attn.o_proj", Role::AttnOutput),
            TensorRule::plain("mlp.gate_up_proj", Role::FfnUp),
            TensorRule::plain("mlp.down_proj", Role::FfnDown),
        ],
        skipped_suffixes: llama_layout::SKIPPED,
        experts: None,
    },
    hparams: HparamSpec {
        layout: Some(&[
            Hp::ContextLength,
            Hp::RopeScalingOrigCtx,
            Hp::EmbeddingLength,
            Hp::FeedForwardLength,
            Hp::BlockCount,
            Hp::HeadCount,
            Hp::HeadCountKv,
            Hp::LayerNormRmsEps,
            Hp::RopeDimensionCount,
            Hp::RopeFreqBase,
            Hp::FileType,
            Hp::SlidingWindowOrZero,
            // Written while the LongRoPE factors are generated.
            Hp::RopeScalingAttnFactor,
        ]),
        ..HparamSpec::TEXT_MODEL
    },
    block: BlockSpec {
        positions: Positions::RopePartial,
        attention: Attention {
            kind: AttentionKind::CausalFusedQkv {
                split: QkvSplit::Sequential,
            },
            ..llama_layout::block(false, false).attention
        },
        ffn: Ffn::GatedFused { act: Act::Silu },
        matmuls: &[
            Matmul {
                role: Role::AttnQkv,
                hf: "self_attn.qkv_proj",
                input: Input::AttnIn,
            },
            llama_layout::MATMULS[3],
            Matmul {
                role: Role::FfnUp,
                hf: "mlp.gate_up_proj",
                input: Input::FfnIn,
            },
            llama_layout::MATMULS[6],
        ],
        ..llama_layout::block(false, false)
    },
};
