//! `Starcoder2ForCausalLM` (`StarCoder2Model` in `convert_hf_to_gguf.py`,
//! TextModel's defaults): LayerNorms with biases, biases on every linear
//! (`use_bias`), full RoPE in NEOX pairs (no Q/K permutation), a non-gated
//! GELU-tanh MLP (`c_fc`, `c_proj`), pre-norm residuals, the output head
//! tied to the embeddings unless the checkpoint has one, the GPT-2 BPE
//! vocabulary of `tokenizer.json`.

use super::spec::{llama_layout as l, *};
use super::Role;

/// The family of `Starcoder2ForCausalLM`.
pub static STARCODER2: ArchSpec = ArchSpec {
    hf_classes: &["Starcoder2ForCausalLM"],
    gguf_arch: "starcoder2",
    vocab: VocabKind::Gpt2,
    tensors: TensorRules {
        global: &[
            TensorRule::plain("model.embed_tokens", Role::TokenEmbd),
            TensorRule::with_bias("model.norm", Role::OutputNorm),
            // Tied by default: llama.cpp falls back to the embeddings.
            TensorRule {
                required: false,
                ..TensorRule::plain("lm_head", Role::Output)
            },
        ],
        layer_prefix: l::LAYER_PREFIX,
        layer: &[
            TensorRule::with_bias("input_layernorm", Role::AttnNorm),
            TensorRule::with_bias("post_attention_layernorm", Role::FfnNorm),
            TensorRule::with_bias("self_attn.q_proj", Role::AttnQ),
            TensorRule::with_bias("self_attn.k_proj", Role::AttnK),
            TensorRule::with_bias("self_attn.v_proj", Role::AttnV),
            TensorRule::with_bias("self_attn.o_proj", Role::AttnOutput),
            TensorRule::with_bias("mlp.c_fc", Role::FfnUp),
            TensorRule::with_bias("mlp.c_proj", Role::FfnDown),
        ],
        skipped_suffixes: l::SKIPPED,
        experts: None,
    },
    hparams: HparamSpec {
        attention_bias_default: true,
        tie_word_embeddings_default: true,
        // TextModel.set_gguf_parameters's keys for a config with
        // `norm_epsilon` (a LayerNorm epsilon) and no `head_dim`.
        layout: Some(&[
            Hp::BlockCount,
            Hp::ContextLength,
            Hp::EmbeddingLength,
            Hp::FeedForwardLength,
            Hp::HeadCount,
            Hp::HeadCountKv,
            Hp::RopeFreqBase,
            Hp::LayerNormEps,
            Hp::FileType,
        ]),
        aliases: &[
            ("rms_norm_eps", "norm_epsilon"),
            ("attention_bias", "use_bias"),
        ],
        ..HparamSpec::TEXT_MODEL
    },
    block: BlockSpec {
        norm: Norm::Layer,
        ffn: Ffn::Plain { act: Act::Gelu },
        matmuls: &[
            l::MATMULS[0],
            l::MATMULS[1],
            l::MATMULS[2],
            l::MATMULS[3],
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
        ..l::block(false, true)
    },
};
