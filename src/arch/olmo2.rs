//! `Olmo2ForCausalLM` (`Olmo2Model`, a `TextModel` in `convert_hf_to_gguf.py`):
//! no input norms, RMS norms on each sub-block's output before its residual
//! add, Q/K RMS norms over the whole projection; no Q/K permutation, gpt2 vocabulary.

use super::spec::{llama_layout as l, *};
use super::Role;

/// The family of `Olmo2ForCausalLM`.
pub static OLMO2: ArchSpec = ArchSpec {
    hf_classes: &["Olmo2ForCausalLM"],
    gguf_arch: "olmo2",
    vocab: VocabKind::Gpt2,
    tensors: TensorRules {
        // llama.cpp requires `output.weight` (no fallback to the embeddings).
        global: &[
            l::GLOBAL[0],
            l::GLOBAL[1],
            TensorRule::plain("lm_head", Role::Output),
        ],
        layer_prefix: l::LAYER_PREFIX,
        layer: &{
            let l = l::layer_qk_norm(BiasRule::IfAttentionBias, false);
            [
                TensorRule::plain("post_attention_layernorm", Role::AttnPostNorm),
                TensorRule::plain("post_feedforward_layernorm", Role::FfnPostNorm),
                l[2],
                l[3],
                l[4],
                l[5],
                l[6],
                l[7],
                l[8],
                l[9],
                l[10],
            ]
        },
        skipped_suffixes: l::SKIPPED,
        experts: None,
    },
    hparams: HparamSpec::TEXT_MODEL,
    block: BlockSpec {
        attention: Attention {
            qk_norm: QkNorm::Whole,
            ..l::block(false, false).attention
        },
        residual: Residual::PostNorm,
        ..l::block(false, false)
    },
};
