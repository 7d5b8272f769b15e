//! `Gemma2ForCausalLM` (`Gemma2Model` in `convert_hf_to_gguf.py`, the
//! `gemma2` graph of llama.cpp): norms stored as the offset from 1, sandwich
//! norms around attention and FFN, embeddings scaled by √hidden, GELU-tanh
//! gated FFN, attention and final logit soft-capping, sliding-window
//! attention on every other layer, Q scaled by `1/√query_pre_attn_scalar`,
//! the output head always the embeddings (the converter drops `lm_head`).

use super::spec::{llama_layout as l, *};
use super::Role;

/// A Gemma norm: its weight gets the converter's +1.
pub(super) const fn norm(hf: &'static str, role: Role) -> TensorRule {
    TensorRule {
        transform: TransformRule::AddOne,
        ..TensorRule::plain(hf, role)
    }
}

/// The global tensors of the Gemma families: no output head of their own.
pub(super) const GLOBAL: &[TensorRule] = &[
    TensorRule::plain("model.embed_tokens", Role::TokenEmbd),
    norm("model.norm", Role::OutputNorm),
];

/// The converter drops `lm_head` (llama.cpp multiplies by the embeddings).
pub(super) const SKIPPED: &[&str] = &[
    ".attention.masked_bias",
    ".attention.bias",
    ".rotary_emb.inv_freq",
    "lm_head.weight",
];

/// The sandwich layer: four norms, then the Llama projections (no biases,
/// no permutation: llama.cpp's NEOX RoPE on HF's rows).
pub(super) const fn layer() -> [TensorRule; 11] {
    let p = l::layer(BiasRule::Never, false);
    [
        norm("input_layernorm", Role::AttnNorm),
        norm("post_attention_layernorm", Role::AttnPostNorm),
        norm("pre_feedforward_layernorm", Role::FfnNorm),
        norm("post_feedforward_layernorm", Role::FfnPostNorm),
        p[2],
        p[3],
        p[4],
        p[5],
        p[6],
        p[7],
        p[8],
    ]
}

/// The Gemma 2 block (Gemma 3 changes its attention).
pub(super) const BLOCK: BlockSpec = BlockSpec {
    norm: Norm::RmsUnitOffset,
    positions: Positions::RopeFull,
    attention: Attention {
        kind: AttentionKind::CausalSeparateQkv,
        qk_norm: QkNorm::None,
        qkv_bias_always: false,
        query_scale: Some(QueryScale {
            key: "query_pre_attn_scalar",
            hidden_per_head_at: &[46],
        }),
        softcap: Some("attn_logit_softcapping"),
        sliding: Some(Sliding {
            window: "sliding_window",
            period: 2,
            rope_base: None,
        }),
        sinks: false,
    },
    ffn: Ffn::Gated { act: Act::Gelu },
    residual: Residual::Sandwich,
    ffn_norm: Role::FfnNorm,
    scales: Scales {
        embedding_sqrt_hidden: true,
        final_softcap: Some("final_logit_softcapping"),
        ..Scales::NONE
    },
    matmuls: l::MATMULS,
    nope_every: None,
};

/// The family of `Gemma2ForCausalLM`.
pub static GEMMA2: ArchSpec = ArchSpec {
    hf_classes: &["Gemma2ForCausalLM"],
    gguf_arch: "gemma2",
    vocab: VocabKind::SentencePieceNoPrefixGpt2,
    tensors: TensorRules {
        global: GLOBAL,
        layer_prefix: l::LAYER_PREFIX,
        layer: &layer(),
        skipped_suffixes: SKIPPED,
        experts: None,
    },
    hparams: HparamSpec {
        vocab_and_rope_dim: false,
        head_dim_always: true,
        attention_bias_default: false,
        extra_f32: &[
            ("attn_logit_softcapping", "attn_logit_softcapping"),
            ("final_logit_softcapping", "final_logit_softcapping"),
        ],
        extra_u32: &[("sliding_window", "attention.sliding_window")],
        rms_norm_eps_fixed: None,
        // Gemma2Config ties the embeddings by default.
        tie_word_embeddings_default: true,
        rope_freq_base: false,
        rope_freq_base_swa: None,
        layout: None,
        aliases: &[],
    },
    block: BLOCK,
};
