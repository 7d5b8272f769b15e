//! `Gemma3ForCausalLM` and the text model of `Gemma3ForConditionalGeneration`
//! (`Gemma3Model` in `convert_hf_to_gguf.py`, the `gemma3` graph of
//! llama.cpp): Gemma 2's block (unit-offset norms, sandwich norms, √hidden
//! embeddings, GELU-tanh, Q scaled by `1/√query_pre_attn_scalar`) with
//! per-head Q/K norms (+1 as well), no attention soft-capping, five sliding
//! layers in six (llama.cpp's pattern) rotated with their own base
//! (`rope_local_base_freq`, never scaled; RoPE scaling applies to the global
//! layers), the final soft-capping only when the config sets it, and an
//! output head of its own when the checkpoint has one (the converter keeps
//! `lm_head`). The multimodal checkpoint's `language_model.` prefix and its
//! vision tower are handled as the converter does for every text model
//! ([`crate::hf::Checkpoint`]).

use super::gemma2::{self, norm};
use super::spec::{llama_layout as l, *};
use super::Role;

/// Gemma 2's layer with the per-head Q/K norms.
const fn layer() -> [TensorRule; 13] {
    let g = gemma2::layer();
    [
        g[0],
        g[1],
        g[2],
        g[3],
        g[4],
        g[5],
        g[6],
        g[7],
        norm("self_attn.q_norm", Role::AttnQNorm),
        norm("self_attn.k_norm", Role::AttnKNorm),
        g[8],
        g[9],
        g[10],
    ]
}

/// The family of `Gemma3ForCausalLM`, `Gemma3ForConditionalGeneration`.
pub static GEMMA3: ArchSpec = ArchSpec {
    hf_classes: &["Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"],
    gguf_arch: "gemma3",
    vocab: VocabKind::SentencePieceNoPrefixGpt2,
    tensors: TensorRules {
        global: &[
            gemma2::GLOBAL[0],
            gemma2::GLOBAL[1],
            TensorRule {
                required: false,
                ..TensorRule::plain("lm_head", Role::Output)
            },
        ],
        layer_prefix: l::LAYER_PREFIX,
        layer: &layer(),
        skipped_suffixes: l::SKIPPED,
        experts: None,
    },
    hparams: HparamSpec {
        head_dim_always: true,
        // Gemma3TextConfig ties the embeddings by default.
        tie_word_embeddings_default: true,
        extra_f32: &[("final_logit_softcapping", "final_logit_softcapping")],
        extra_u32: &[("sliding_window", "attention.sliding_window")],
        rope_freq_base_swa: Some("rope_local_base_freq"),
        ..HparamSpec::TEXT_MODEL
    },
    block: BlockSpec {
        attention: Attention {
            qk_norm: QkNorm::PerHead,
            softcap: None,
            query_scale: Some(QueryScale {
                key: "query_pre_attn_scalar",
                hidden_per_head_at: &[62],
            }),
            sliding: Some(Sliding {
                window: "sliding_window",
                period: 6,
                rope_base: Some("rope_local_base_freq"),
            }),
            ..gemma2::BLOCK.attention
        },
        ..gemma2::BLOCK
    },
};
