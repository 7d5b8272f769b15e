//! `Qwen3ForCausalLM` (`Qwen3Model`, a `Qwen2Model` in `convert_hf_to_gguf.py`):
//! per-head RMS norms on Q and K, no biases by default.

use super::spec::{llama_layout as l, *};

/// The family of `Qwen3ForCausalLM`.
pub static QWEN3: ArchSpec = ArchSpec {
    hf_classes: &["Qwen3ForCausalLM"],
    gguf_arch: "qwen3",
    vocab: VocabKind::SentencePieceGpt2,
    tensors: TensorRules {
        global: l::GLOBAL,
        layer_prefix: l::LAYER_PREFIX,
        layer: &l::layer_qk_norm(BiasRule::IfAttentionBias, false),
        skipped_suffixes: l::SKIPPED,
        experts: None,
    },
    hparams: HparamSpec::TEXT_MODEL,
    block: l::block(true, false),
};
