//! A tiny random decoder for the forward-pass tests (`layered`, `patched`):
//! its shape and weights as the whole-model pass and the layer-by-layer one read them.

use super::forward::{Family, ForwardConfig, Rope};
use std::collections::HashMap;

/// A 3-layer decoder of width 64 (4 heads of 16, 2 KV heads, vocab 40).
pub(crate) fn cfg(family: Family, tied: bool) -> ForwardConfig {
    ForwardConfig {
        family,
        hidden: 64,
        intermediate: 96,
        n_layers: 3,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        rms_eps: 1e-5,
        rope_theta: 10000.0,
        rope: Rope::Default,
        vocab: 40,
        tied_embeddings: tied,
        qkv_bias: family == Family::Qwen2,
    }
}

/// Random weights (xorshift from `seed`) for every tensor `c` needs, HF names.
pub(crate) fn weights(c: &ForwardConfig, seed: u64) -> HashMap<String, Vec<f32>> {
    let mut s = seed;
    let mut r = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    };
    let (h, q, kv, ff) = (
        c.hidden,
        c.n_heads * c.head_dim,
        c.n_kv_heads * c.head_dim,
        c.intermediate,
    );
    let mut w = HashMap::new();
    w.insert("model.embed_tokens.weight".into(), r(c.vocab * h, 1.0));
    w.insert(
        "model.norm.weight".into(),
        r(h, 0.2).iter().map(|v| 1.0 + v).collect(),
    );
    if !c.tied_embeddings {
        w.insert("lm_head.weight".into(), r(c.vocab * h, 0.3));
    }
    for i in 0..c.n_layers {
        let p = format!("model.layers.{i}");
        for (name, n) in [
            ("self_attn.q_proj.weight", q * h),
            ("self_attn.k_proj.weight", kv * h),
            ("self_attn.v_proj.weight", kv * h),
            ("self_attn.o_proj.weight", h * q),
            ("mlp.gate_proj.weight", ff * h),
            ("mlp.up_proj.weight", ff * h),
            ("mlp.down_proj.weight", h * ff),
        ] {
            w.insert(format!("{p}.{name}"), r(n, 0.2));
        }
        for name in ["input_layernorm.weight", "post_attention_layernorm.weight"] {
            w.insert(
                format!("{p}.{name}"),
                r(h, 0.2).iter().map(|v| 1.0 + v).collect(),
            );
        }
        if c.qkv_bias {
            w.insert(format!("{p}.self_attn.q_proj.bias"), r(q, 0.3));
            w.insert(format!("{p}.self_attn.k_proj.bias"), r(kv, 0.3));
            w.insert(format!("{p}.self_attn.v_proj.bias"), r(kv, 0.3));
        }
        if c.family == Family::Qwen3 {
            for name in ["self_attn.q_norm.weight", "self_attn.k_norm.weight"] {
                w.insert(
                    format!("{p}.{name}"),
                    r(c.head_dim, 0.2).iter().map(|v| 1.0 + v).collect(),
                );
            }
        }
    }
    w
}
