//! `Qwen2ForCausalLM` (`Qwen2Model` in `convert_hf_to_gguf.py`): biases on
//! Q, K and V, no Q/K permutation.

use super::spec::{llama_layout as l, *};

/// The family of `Qwen2ForCausalLM`.
pub static QWEN2: ArchSpec = ArchSpec {
    hf_classes: &["Qwen2ForCausalLM"],
    gguf_arch: "qwen2",
    vocab: VocabKind::SentencePieceGpt2,
    tensors: TensorRules {
        global: l::GLOBAL,
        layer_prefix: l::LAYER_PREFIX,
        layer: &l::layer(BiasRule::Always, false),
        skipped_suffixes: l::SKIPPED,
        experts: None,
    },
    hparams: HparamSpec {
        attention_bias_default: true,
        ..HparamSpec::TEXT_MODEL
    },
    block: l::block(false, true),
};
