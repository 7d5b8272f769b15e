//! `BertModel` (`BertModel` in `convert_hf_to_gguf.py`): an encoder. Token,
//! token-type and learned position embeddings summed and LayerNormed,
//! bidirectional attention with separate Q, K, V, post-LayerNorm residuals
//! (`attn_output_norm`, `layer_output_norm`), a non-gated GELU MLP, biases on
//! every linear and norm, no output head (the pooler is dropped), the
//! WordPiece vocabulary, and the pooling sentence-transformers declares.
//! Conversion and presets only: the forward pass refuses bidirectional
//! attention, so calibration, eval and la-mix/`--target-bpw` are refused.

use super::spec::*;
use super::Role;

pub static BERT: ArchSpec = ArchSpec {
    hf_classes: &["BertModel"],
    gguf_arch: "bert",
    vocab: VocabKind::BertWordPiece,
    tensors: TensorRules {
        global: &[
            TensorRule::with_bias("embeddings.LayerNorm", Role::TokenEmbdNorm),
            TensorRule::plain("embeddings.position_embeddings", Role::PosEmbd),
            TensorRule {
                // llama.cpp loads it as optional (type_vocab_size may be 0).
                required: false,
                ..TensorRule::plain("embeddings.token_type_embeddings", Role::TokenTypes)
            },
            TensorRule::plain("embeddings.word_embeddings", Role::TokenEmbd),
        ],
        layer_prefix: "encoder.layer.",
        layer: &[
            TensorRule::with_bias("attention.output.LayerNorm", Role::AttnOutNorm),
            TensorRule::with_bias("attention.output.dense", Role::AttnOutput),
            TensorRule::with_bias("attention.self.key", Role::AttnK),
            TensorRule::with_bias("attention.self.query", Role::AttnQ),
            TensorRule::with_bias("attention.self.value", Role::AttnV),
            TensorRule::with_bias("intermediate.dense", Role::FfnUp),
            TensorRule::with_bias("output.LayerNorm", Role::LayerOutNorm),
            TensorRule::with_bias("output.dense", Role::FfnDown),
        ],
        // The converter drops the pooler and the position ids buffer.
        skipped_suffixes: &[
            "embeddings.position_ids",
            "pooler.dense.weight",
            "pooler.dense.bias",
        ],
        experts: None,
    },
    hparams: HparamSpec {
        attention_bias_default: true,
        layout: Some(&[
            Hp::BlockCount,
            Hp::ContextLength,
            Hp::EmbeddingLength,
            Hp::FeedForwardLength,
            Hp::HeadCount,
            Hp::LayerNormEps,
            Hp::FileType,
            Hp::NonCausal,
            Hp::PoolingType,
        ]),
        aliases: &[("rms_norm_eps", "layer_norm_eps")],
        ..HparamSpec::TEXT_MODEL
    },
    block: BlockSpec {
        norm: Norm::Layer,
        positions: Positions::Learned,
        attention: Attention {
            kind: AttentionKind::BidirectionalSeparateQkv,
            ..Attention::fused(QkvSplit::Sequential)
        },
        ffn: Ffn::Plain { act: Act::Gelu },
        residual: Residual::PostLayerNorm,
        scales: Scales::NONE,
        nope_every: None,
        matmuls: &[
            Matmul {
                role: Role::AttnQ,
                hf: "attention.self.query",
                input: Input::AttnIn,
            },
            Matmul {
                role: Role::AttnK,
                hf: "attention.self.key",
                input: Input::AttnIn,
            },
            Matmul {
                role: Role::AttnV,
                hf: "attention.self.value",
                input: Input::AttnIn,
            },
            Matmul {
                role: Role::AttnOutput,
                hf: "attention.output.dense",
                input: Input::AttnOut,
            },
            Matmul {
                role: Role::FfnUp,
                hf: "intermediate.dense",
                input: Input::FfnIn,
            },
            Matmul {
                role: Role::FfnDown,
                hf: "output.dense",
                input: Input::FfnDown,
            },
        ],
    },
};
