//! Mixtures of experts: `Qwen3MoeForCausalLM` (`Qwen3MoeModel`),
//! `Qwen2MoeForCausalLM` (`Qwen2MoeModel`, with a shared expert),
//! `OlmoeForCausalLM` (`OlmoeModel`) and `MixtralForCausalLM` (a
//! `LlamaModel` with experts, written as arch `llama`). The per-expert HF
//! tensors are stacked into 3-D `ffn_{gate,up,down}_exps`, the router is
//! `ffn_gate_inp` (kept F32 by the converter), the expert counts go to
//! `{arch}.expert_count` / `expert_used_count`.

use super::llama::BASE;
use super::spec::{llama_layout as l, moe_layout as m, *};
use super::Role;

/// The Llama layout's attention rows (norms, Q, K, V, output).
const fn attention(qkv_bias: BiasRule, permute: bool) -> [TensorRule; 6] {
    let a = l::layer(qkv_bias, permute);
    [a[0], a[1], a[2], a[3], a[4], a[5]]
}

/// [`attention`] with per-head (or whole-projection) Q and K norms.
const fn attention_qk_norm(qkv_bias: BiasRule) -> [TensorRule; 8] {
    let a = l::layer_qk_norm(qkv_bias, false);
    [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]
}

const QWEN_MATMULS: [Matmul; 8] = m::matmuls("mlp.gate", "mlp.experts");

const NO_EXTRA: HparamSpec = HparamSpec::TEXT_MODEL;

/// `Qwen2MoeModel.set_gguf_parameters`'s additions.
const QWEN_EXPERT_WIDTHS: &[(&str, &str)] = &[
    ("moe_intermediate_size", "expert_feed_forward_length"),
    (
        "shared_expert_intermediate_size",
        "expert_shared_feed_forward_length",
    ),
];

/// The family of `Qwen3MoeForCausalLM`.
pub static QWEN3MOE: ArchSpec = ArchSpec {
    hf_classes: &["Qwen3MoeForCausalLM"],
    gguf_arch: "qwen3moe",
    vocab: VocabKind::Gpt2,
    tensors: TensorRules {
        global: l::GLOBAL,
        layer_prefix: l::LAYER_PREFIX,
        layer: &{
            let a = attention_qk_norm(BiasRule::IfAttentionBias);
            [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], m::ROUTER]
        },
        skipped_suffixes: l::SKIPPED,
        experts: Some(m::QWEN_EXPERTS),
    },
    hparams: HparamSpec {
        extra_u32: QWEN_EXPERT_WIDTHS,
        ..NO_EXTRA
    },
    block: m::block(true, false, NormTopK::Always, false, &QWEN_MATMULS),
};

const QWEN2MOE_MATMULS: [Matmul; 12] = m::MATMULS_SHARED;

/// The family of `Qwen2MoeForCausalLM`.
pub static QWEN2MOE: ArchSpec = ArchSpec {
    hf_classes: &["Qwen2MoeForCausalLM"],
    gguf_arch: "qwen2moe",
    vocab: VocabKind::Gpt2,
    tensors: TensorRules {
        global: l::GLOBAL,
        layer_prefix: l::LAYER_PREFIX,
        layer: &{
            let a = attention(BiasRule::Always, false);
            let s = m::SHARED;
            [
                a[0],
                a[1],
                a[2],
                a[3],
                a[4],
                a[5],
                m::ROUTER,
                s[0],
                s[1],
                s[2],
                s[3],
            ]
        },
        skipped_suffixes: l::SKIPPED,
        experts: Some(m::QWEN_EXPERTS),
    },
    hparams: HparamSpec {
        attention_bias_default: true,
        extra_u32: QWEN_EXPERT_WIDTHS,
        ..NO_EXTRA
    },
    block: m::block(false, true, NormTopK::Never, true, &QWEN2MOE_MATMULS),
};

/// The family of `OlmoeForCausalLM`.
pub static OLMOE: ArchSpec = ArchSpec {
    hf_classes: &["OlmoeForCausalLM"],
    gguf_arch: "olmoe",
    vocab: VocabKind::Gpt2,
    tensors: TensorRules {
        global: l::GLOBAL,
        layer_prefix: l::LAYER_PREFIX,
        layer: &{
            let a = attention_qk_norm(BiasRule::IfAttentionBias);
            [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], m::ROUTER]
        },
        skipped_suffixes: l::SKIPPED,
        experts: Some(m::QWEN_EXPERTS),
    },
    hparams: HparamSpec {
        // OlmoeModel.set_gguf_parameters writes 1e-5 over the config's value.
        rms_norm_eps_fixed: Some(1e-5),
        ..NO_EXTRA
    },
    block: {
        let mut b = m::block(true, false, NormTopK::Never, false, &QWEN_MATMULS);
        b.attention.qk_norm = QkNorm::Whole;
        b
    },
};

const MIXTRAL_MATMULS: [Matmul; 8] =
    m::matmuls("block_sparse_moe.gate", "block_sparse_moe.experts");

/// Mixtral: Llama's attention (permuted Q/K, vocab size and rope dimensions
/// written) with a router and eight experts; MixtralConfig leaves `head_dim`
/// unset when `config.json` has none.
pub static MIXTRAL: ArchSpec = ArchSpec {
    hf_classes: &["MixtralForCausalLM"],
    tensors: TensorRules {
        layer: &{
            let a = attention(BiasRule::IfAttentionBias, true);
            [
                a[0],
                a[1],
                a[2],
                a[3],
                a[4],
                a[5],
                TensorRule::plain("block_sparse_moe.gate", Role::FfnGateInp),
            ]
        },
        experts: Some(m::MIXTRAL_EXPERTS),
        ..BASE.tensors
    },
    hparams: HparamSpec {
        head_dim_always: false,
        ..BASE.hparams
    },
    block: m::block(false, false, NormTopK::Always, false, &MIXTRAL_MATMULS),
    ..BASE
};
