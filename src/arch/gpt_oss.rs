//! `GptOssForCausalLM` (`GptOssModel` in `convert_hf_to_gguf.py`, arch
//! `gpt-oss`): Q/K/V/O with biases and no Q/K permutation, per-head attention
//! sinks (`attn_sinks`), a post-attention norm written as
//! `post_attention_norm`, a router with a bias and pre-stacked experts with
//! biases. transformers saves the experts stacked and unquantized:
//! `mlp.experts.gate_up_proj` `[E, hidden, 2 ff]` (gate in the even columns,
//! up in the odd ones), `down_proj` `[E, ff, hidden]`, `*_bias`. The
//! checkpoint reader presents them as the converter writes them
//! ([`present`]): gate and up split and transposed to `[E, ff, hidden]`,
//! down transposed to `[E, hidden, ff]`, the biases split, each gathered as
//! it is read. Real gpt-oss checkpoints ship the experts as MXFP4
//! `*_blocks`/`*_scales`, which laquant refuses by name so far.
//!
//! laquant's forward pass does not compute this block (attention sinks,
//! the clamped SwiGLU, softmax after top-k, alternating sliding window):
//! [`NO_FORWARD_REASON`] says so where a calibrated policy is asked for.

use super::spec::{llama_layout as l, moe_layout as m, *};
use super::Role;
use crate::hf::safetensors::{Shards, View};
use crate::hf::HfError;

/// Why the calibrated policies refuse gpt-oss.
pub const NO_FORWARD_REASON: &str = "laquant's forward pass does not compute gpt-oss's block \
     (attention sinks, the clamped SwiGLU, softmax over the top-k router logits, alternating \
     sliding-window attention), so it cannot calibrate it";

const MATMULS: [Matmul; 8] = m::matmuls("mlp.router", "mlp.experts");

/// The family of `GptOssForCausalLM`.
pub static GPT_OSS: ArchSpec = ArchSpec {
    hf_classes: &["GptOssForCausalLM"],
    gguf_arch: "gpt-oss",
    vocab: VocabKind::Gpt2,
    tensors: TensorRules {
        global: l::GLOBAL,
        layer_prefix: l::LAYER_PREFIX,
        layer: &[
            TensorRule::plain("input_layernorm", Role::AttnNorm),
            TensorRule::plain("post_attention_layernorm", Role::AttnPostNorm),
            TensorRule::with_bias("self_attn.q_proj", Role::AttnQ),
            TensorRule::with_bias("self_attn.k_proj", Role::AttnK),
            TensorRule::with_bias("self_attn.v_proj", Role::AttnV),
            TensorRule::with_bias("self_attn.o_proj", Role::AttnOutput),
            TensorRule::plain("self_attn.sinks", Role::AttnSinks),
            TensorRule::with_bias("mlp.router", Role::FfnGateInp),
            TensorRule::with_bias("mlp.experts.gate_proj", Role::FfnGateExps),
            TensorRule::with_bias("mlp.experts.up_proj", Role::FfnUpExps),
            TensorRule::with_bias("mlp.experts.down_proj", Role::FfnDownExps),
        ],
        skipped_suffixes: l::SKIPPED,
        experts: None,
    },
    hparams: HparamSpec {
        attention_bias_default: true,
        extra_u32: &[
            ("sliding_window", "attention.sliding_window"),
            ("intermediate_size", "expert_feed_forward_length"),
        ],
        ..HparamSpec::TEXT_MODEL
    },
    block: m::block(false, true, NormTopK::Never, false, &MATMULS),
};

/// The bad-tensor error of `name` in `shards`.
fn bad(shards: &Shards, name: &str, what: String) -> HfError {
    let path = shards
        .entry(name)
        .map(|e| shards.shard_path(e).to_path_buf())
        .unwrap_or_default();
    HfError::File {
        path,
        what: format!("tensor {name}: {what}"),
    }
}

/// Presents a gpt-oss checkpoint's tensors as `GptOssModel.modify_tensors`
/// leaves them: `self_attn.sinks` as `self_attn.sinks.weight`, the stacked
/// experts split, transposed and renamed (`mlp.experts.{gate,up,down}_proj.{weight,bias}`),
/// each a [`View`] of the stored bytes. MXFP4 experts (`*_blocks`, `*_scales`)
/// are refused by name.
pub fn present(shards: &mut Shards) -> Result<(), HfError> {
    for name in shards.order.clone() {
        let shape = shards
            .entry(&name)
            .map(|e| e.shape.clone())
            .unwrap_or_default();
        let Some((stem, last)) = name.rsplit_once('.') else {
            continue;
        };
        let parts = match (last, &shape[..]) {
            ("sinks", _) => vec![(format!("{name}.weight"), shape.clone(), None)],
            ("down_proj_bias", _) => vec![(format!("{stem}.down_proj.bias"), shape.clone(), None)],
            ("down_proj", &[e, f, h]) => vec![(
                format!("{stem}.down_proj.weight"),
                vec![e, h, f],
                Some(View {
                    strides: vec![f * h, 1, h],
                    offset: 0,
                }),
            )],
            ("gate_up_proj", &[e, h, f2]) if f2 % 2 == 0 => ["gate", "up"]
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let view = View {
                        strides: vec![h * f2, 2, f2],
                        offset: i,
                    };
                    (
                        format!("{stem}.{p}_proj.weight"),
                        vec![e, f2 / 2, h],
                        Some(view),
                    )
                })
                .collect(),
            ("gate_up_proj_bias", &[e, f2]) if f2 % 2 == 0 => ["gate", "up"]
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let view = View {
                        strides: vec![f2, 2],
                        offset: i,
                    };
                    (format!("{stem}.{p}_proj.bias"), vec![e, f2 / 2], Some(view))
                })
                .collect(),
            ("down_proj" | "gate_up_proj" | "gate_up_proj_bias", _) => {
                let want = match last {
                    "down_proj" => "[experts, ff, hidden]",
                    "gate_up_proj" => "[experts, hidden, 2 ff]",
                    _ => "[experts, 2 ff]",
                };
                return Err(bad(
                    shards,
                    &name,
                    format!("shape {shape:?}, a gpt-oss checkpoint stores it {want}"),
                ));
            }
            (l, _) if l.ends_with("_blocks") || l.ends_with("_scales") => {
                return Err(bad(
                    shards,
                    &name,
                    "MXFP4 expert blocks and scales are not supported yet (laquant converts \
                     gpt-oss checkpoints whose experts are stored unquantized)"
                        .into(),
                ));
            }
            _ => continue,
        };
        shards.present_as(&name, parts)?;
    }
    Ok(())
}
