//! A tiny random decoder for the forward-pass tests (`layered`, `patched`):
//! its shape and weights as the whole-model pass and the layer-by-layer one read them.

use super::forward::{expert_dims, role_dims, ForwardConfig, MoeShape, Rope, Scales, Swa};
use crate::arch::{ArchSpec, Ffn, NormTopK, QkNorm, Role};
use std::collections::HashMap;

/// A 4-layer decoder of width 64 (4 heads of 16, 2 KV heads, vocab 40) of family `arch`
/// (four layers: the last is a NoPE layer where the family has them).
pub(crate) fn cfg(arch: &'static ArchSpec, tied: bool) -> ForwardConfig {
    ForwardConfig {
        arch,
        hidden: 64,
        intermediate: 96,
        n_layers: 4,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        rope_dim: 16,
        rms_eps: 1e-5,
        rope_theta: 10000.0,
        rope: Rope::Default,
        vocab: 40,
        tied_embeddings: tied,
        qkv_bias: arch.block.attention.qkv_bias_always,
        // Factors far from 1 where the family has them, so a missed one shows.
        scales: {
            let s = arch.block.scales;
            let a = arch.block.attention;
            Scales {
                embedding: s
                    .embedding
                    .map(|_| 0.7)
                    .or(s.embedding_sqrt_hidden.then_some(8.0)),
                attention: s.attention.map(|_| 0.5),
                residual: s.residual.map(|_| 1.3),
                logit_divisor: s.logit_divisor.map(|_| 0.6),
                query: a.query_scale.map(|_| 0.3),
                attn_softcap: a.softcap.map(|_| 2.0),
                final_softcap: s.final_softcap.map(|_| 1.5),
            }
        },
        // A window shorter than the tests' sequences, a local base of its own.
        swa: arch.block.attention.sliding.map(|s| Swa {
            window: 3,
            period: s.period,
            rope_theta: s.rope_base.map(|_| 100.0),
        }),
        // A mixture: 5 experts, 2 a token, narrower than the dense FFN.
        moe: match arch.block.ffn {
            Ffn::Moe {
                norm_top_k,
                shared_expert,
                ..
            } => Some(MoeShape {
                n_expert: 5,
                n_used: 2,
                ff: 32,
                shared_ff: if shared_expert { 48 } else { 0 },
                norm_top_k: norm_top_k == NormTopK::Always,
            }),
            _ => None,
        },
    }
}

/// Random weights (xorshift from `seed`) for every tensor `c` needs, HF names
/// from its spec.
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
    let (h, q, kv) = (c.hidden, c.q_dim(), c.kv_dim());
    let t = &c.arch.tensors;
    let global = |role| t.global_name(role).expect("global tensor");
    let mut w = HashMap::new();
    w.insert(global(Role::TokenEmbd), r(c.vocab * h, 1.0));
    w.insert(
        global(Role::OutputNorm),
        r(h, 0.2).iter().map(|v| 1.0 + v).collect(),
    );
    if !c.tied_embeddings {
        w.insert(global(Role::Output), r(c.vocab * h, 0.3));
    }
    for i in 0..c.n_layers {
        for m in c.arch.block.matmuls {
            if m.role.is_experts() {
                let (n, k) = expert_dims(c, m.role);
                for e in 0..c.n_expert() {
                    w.insert(c.expert_tensor(i, m.role, e), r(n * k, 0.2));
                }
                continue;
            }
            let (n, k) = role_dims(c, m.role);
            // The router a little sharper, so that tokens prefer experts.
            let scale = if m.role == Role::FfnGateInp { 1.0 } else { 0.2 };
            w.insert(t.layer_tensor(i, m.hf, "weight"), r(n * k, scale));
        }
        let res = c.arch.block.residual;
        let norms = [
            (Role::AttnNorm, res.pre_norms()),
            (c.arch.block.ffn_norm, res.pre_norms()),
            (Role::AttnPostNorm, res.post_norms()),
            (Role::FfnPostNorm, res.post_norms()),
        ];
        for (role, _) in norms.into_iter().filter(|n| n.1) {
            w.insert(
                t.layer_name(i, role).expect("norm"),
                r(h, 0.2).iter().map(|v| 1.0 + v).collect(),
            );
        }
        if c.qkv_bias {
            for (role, n) in [(Role::AttnQ, q), (Role::AttnK, kv), (Role::AttnV, kv)] {
                let base = &t.layer.iter().find(|x| x.role == role).expect("qkv").hf;
                w.insert(t.layer_tensor(i, base, "bias"), r(n, 0.3));
            }
        }
        let (qn, kn) = match c.arch.block.attention.qk_norm {
            QkNorm::None => (0, 0),
            QkNorm::PerHead => (c.head_dim, c.head_dim),
            QkNorm::Whole => (q, kv),
        };
        for (role, n) in [(Role::AttnQNorm, qn), (Role::AttnKNorm, kn)] {
            if n > 0 {
                w.insert(
                    t.layer_name(i, role).expect("q/k norm"),
                    r(n, 0.2).iter().map(|v| 1.0 + v).collect(),
                );
            }
        }
    }
    w
}
