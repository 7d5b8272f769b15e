//! `GPT2LMHeadModel` (`GPT2Model` in `convert_hf_to_gguf.py`): `Conv1D`
//! weights stored `[in, out]` (transposed on the way, as the converter
//! does), a fused QKV already in `[Q; K; V]` order, biases on every linear
//! and LayerNorm, a non-gated GELU MLP four times as wide as the model,
//! learned absolute positions (`position_embd`), the output head tied to the
//! embeddings, the GPT-2 BPE vocabulary and GPT-2's own hyperparameter names.

use super::spec::*;
use super::Role;

const fn conv1d(hf: &'static str, role: Role) -> TensorRule {
    TensorRule {
        transform: TransformRule::Transpose,
        ..TensorRule::with_bias(hf, role)
    }
}

/// The family of `GPT2LMHeadModel`.
pub static GPT2: ArchSpec = ArchSpec {
    hf_classes: &["GPT2LMHeadModel"],
    gguf_arch: "gpt2",
    vocab: VocabKind::Gpt2,
    tensors: TensorRules {
        global: &[
            TensorRule::plain("transformer.wte", Role::TokenEmbd),
            TensorRule::plain("transformer.wpe", Role::PosEmbd),
            TensorRule::with_bias("transformer.ln_f", Role::OutputNorm),
            // Tied: saved checkpoints have none; llama.cpp falls back to the embeddings.
            TensorRule {
                required: false,
                ..TensorRule::plain("lm_head", Role::Output)
            },
        ],
        layer_prefix: "transformer.h.",
        layer: &[
            TensorRule::with_bias("ln_1", Role::AttnNorm),
            conv1d("attn.c_attn", Role::AttnQkv),
            conv1d("attn.c_proj", Role::AttnOutput),
            TensorRule::with_bias("ln_2", Role::FfnNorm),
            conv1d("mlp.c_fc", Role::FfnUp),
            conv1d("mlp.c_proj", Role::FfnDown),
        ],
        // The causal-mask buffers older checkpoints carry.
        skipped_suffixes: &[".attn.bias", ".attn.masked_bias"],
        experts: None,
    },
    hparams: HparamSpec {
        attention_bias_default: true,
        tie_word_embeddings_default: true,
        layout: Some(&[
            Hp::BlockCount,
            Hp::ContextLength,
            Hp::EmbeddingLength,
            Hp::FeedForwardFourfold,
            Hp::HeadCount,
            Hp::LayerNormEps,
            Hp::FileType,
        ]),
        // The converter reads `n_ctx` (llama.cpp loads `n_ctx` positions);
        // `n_positions` when a config has no `n_ctx`.
        aliases: &[
            ("hidden_size", "n_embd"),
            ("num_hidden_layers", "n_layer"),
            ("num_attention_heads", "n_head"),
            ("intermediate_size", "n_inner"),
            ("rms_norm_eps", "layer_norm_epsilon"),
            ("max_position_embeddings", "n_positions"),
            ("max_position_embeddings", "n_ctx"),
        ],
        ..HparamSpec::TEXT_MODEL
    },
    block: BlockSpec {
        norm: Norm::Layer,
        positions: Positions::Learned,
        attention: Attention::fused(QkvSplit::Sequential),
        ffn: Ffn::Plain { act: Act::Gelu },
        residual: Residual::PreNorm,
        ffn_norm: Role::FfnNorm,
        scales: Scales::NONE,
        nope_every: None,
        matmuls: &[
            Matmul {
                role: Role::AttnQkv,
                hf: "attn.c_attn",
                input: Input::AttnIn,
            },
            Matmul {
                role: Role::AttnOutput,
                hf: "attn.c_proj",
                input: Input::AttnOut,
            },
            Matmul {
                role: Role::FfnUp,
                hf: "mlp.c_fc",
                input: Input::FfnIn,
            },
            Matmul {
                role: Role::FfnDown,
                hf: "mlp.c_proj",
                input: Input::FfnDown,
            },
        ],
    },
};
