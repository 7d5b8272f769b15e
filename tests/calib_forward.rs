//! The calibration forward pass against a naive f64 reference written from the
//! Hugging Face modeling code (LlamaForCausalLM / Qwen2 / Qwen3: rotate_half RoPE,
//! repeat_kv GQA, causal softmax, SwiGLU), on tiny random models of every
//! supported family; plus the causal-mask property and the taps' Σx².

use laquant::arch::{ArchSpec, QkNorm};
use laquant::calib::forward::{matmul_wt, matmul_wt_dot, ForwardConfig, Model, Rope, TapSums};
use std::collections::HashMap;

/// A family: its spec.
type Family = &'static ArchSpec;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

fn config(family: Family, tied: bool, rope: Rope) -> ForwardConfig {
    ForwardConfig {
        arch: family,
        hidden: 32,
        intermediate: 48,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
        rope_dim: 8,
        rms_eps: 1e-5,
        rope_theta: 10000.0,
        rope,
        vocab: 50,
        tied_embeddings: tied,
        qkv_bias: family.block.attention.qkv_bias_always,
        scales: Default::default(),
        swa: None,
        moe: None,
    }
}

fn random_weights(cfg: &ForwardConfig, seed: u64) -> HashMap<String, Vec<f32>> {
    let mut r = Rng(seed);
    let (h, q, kv, ff) = (
        cfg.hidden,
        cfg.n_heads * cfg.head_dim,
        cfg.n_kv_heads * cfg.head_dim,
        cfg.intermediate,
    );
    let mut w = HashMap::new();
    w.insert(
        "model.embed_tokens.weight".to_string(),
        r.vec(cfg.vocab * h, 1.0),
    );
    for i in 0..cfg.n_layers {
        let p = format!("model.layers.{i}");
        let norm = |r: &mut Rng, n| r.vec(n, 0.3).iter().map(|v| 1.0 + v).collect::<Vec<f32>>();
        w.insert(format!("{p}.input_layernorm.weight"), norm(&mut r, h));
        w.insert(
            format!("{p}.post_attention_layernorm.weight"),
            norm(&mut r, h),
        );
        w.insert(format!("{p}.self_attn.q_proj.weight"), r.vec(q * h, 0.3));
        w.insert(format!("{p}.self_attn.k_proj.weight"), r.vec(kv * h, 0.3));
        w.insert(format!("{p}.self_attn.v_proj.weight"), r.vec(kv * h, 0.3));
        w.insert(format!("{p}.self_attn.o_proj.weight"), r.vec(h * q, 0.3));
        w.insert(format!("{p}.mlp.gate_proj.weight"), r.vec(ff * h, 0.3));
        w.insert(format!("{p}.mlp.up_proj.weight"), r.vec(ff * h, 0.3));
        w.insert(format!("{p}.mlp.down_proj.weight"), r.vec(h * ff, 0.3));
        if cfg.qkv_bias {
            w.insert(format!("{p}.self_attn.q_proj.bias"), r.vec(q, 0.5));
            w.insert(format!("{p}.self_attn.k_proj.bias"), r.vec(kv, 0.5));
            w.insert(format!("{p}.self_attn.v_proj.bias"), r.vec(kv, 0.5));
        }
        if cfg.arch.block.attention.qk_norm != QkNorm::None {
            w.insert(
                format!("{p}.self_attn.q_norm.weight"),
                norm(&mut r, cfg.head_dim),
            );
            w.insert(
                format!("{p}.self_attn.k_norm.weight"),
                norm(&mut r, cfg.head_dim),
            );
        }
    }
    w.insert(
        "model.norm.weight".to_string(),
        r.vec(h, 0.3).iter().map(|v| 1.0 + v).collect(),
    );
    if !cfg.tied_embeddings {
        w.insert("lm_head.weight".to_string(), r.vec(cfg.vocab * h, 0.5));
    }
    w
}

/// Naive f64 reference; returns logits and the Σx² of every tap slot (layer*4 + point).
fn reference(
    cfg: &ForwardConfig,
    w: &HashMap<String, Vec<f32>>,
    tokens: &[u32],
) -> (Vec<f64>, Vec<Vec<f64>>) {
    let g = |n: &str| w[n].iter().map(|&v| v as f64).collect::<Vec<f64>>();
    let (h, d, nh, nkv) = (cfg.hidden, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads);
    let t = tokens.len();
    let eps = cfg.rms_eps as f64;
    let lin = |x: &[Vec<f64>], wt: &[f64], b: Option<&[f64]>, out: usize| -> Vec<Vec<f64>> {
        x.iter()
            .map(|r| {
                (0..out)
                    .map(|o| {
                        let k = r.len();
                        (0..k).map(|j| r[j] * wt[o * k + j]).sum::<f64>()
                            + b.map(|b| b[o]).unwrap_or(0.0)
                    })
                    .collect()
            })
            .collect()
    };
    let rms = |r: &[f64], g: &[f64]| -> Vec<f64> {
        let ms = r.iter().map(|v| v * v).sum::<f64>() / r.len() as f64;
        let s = 1.0 / (ms + eps).sqrt();
        r.iter().zip(g).map(|(v, g)| v * s * g).collect()
    };
    let sq = |x: &[Vec<f64>]| -> Vec<f64> {
        let mut s = vec![0.0; x[0].len()];
        for r in x {
            for (a, v) in s.iter_mut().zip(r) {
                *a += v * v;
            }
        }
        s
    };
    // HF default inv_freq with linear scaling.
    let factor = match cfg.rope {
        Rope::Linear { factor } => factor,
        _ => 1.0,
    };
    let inv: Vec<f64> = (0..d / 2)
        .map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / d as f64) / factor)
        .collect();
    let rope = |v: &mut [f64], pos: usize| {
        for i in 0..d / 2 {
            let (c, s) = ((pos as f64 * inv[i]).cos(), (pos as f64 * inv[i]).sin());
            let (a, b) = (v[i], v[i + d / 2]);
            v[i] = a * c - b * s;
            v[i + d / 2] = b * c + a * s;
        }
    };
    let embed = g("model.embed_tokens.weight");
    let mut x: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&tk| embed[tk as usize * h..(tk as usize + 1) * h].to_vec())
        .collect();
    let mut taps = Vec::new();
    for l in 0..cfg.n_layers {
        let p = format!("model.layers.{l}");
        let ga = g(&format!("{p}.input_layernorm.weight"));
        let a: Vec<Vec<f64>> = x.iter().map(|r| rms(r, &ga)).collect();
        taps.push(sq(&a));
        let bias = |n: &str| {
            w.get(&format!("{p}.self_attn.{n}_proj.bias"))
                .map(|b| b.iter().map(|&v| v as f64).collect::<Vec<f64>>())
        };
        let (bq, bk, bv) = (bias("q"), bias("k"), bias("v"));
        let mut q = lin(
            &a,
            &g(&format!("{p}.self_attn.q_proj.weight")),
            bq.as_deref(),
            nh * d,
        );
        let mut k = lin(
            &a,
            &g(&format!("{p}.self_attn.k_proj.weight")),
            bk.as_deref(),
            nkv * d,
        );
        let v = lin(
            &a,
            &g(&format!("{p}.self_attn.v_proj.weight")),
            bv.as_deref(),
            nkv * d,
        );
        for pos in 0..t {
            if cfg.arch.block.attention.qk_norm != QkNorm::None {
                let qn = g(&format!("{p}.self_attn.q_norm.weight"));
                let kn = g(&format!("{p}.self_attn.k_norm.weight"));
                for hh in 0..nh {
                    let r = rms(&q[pos][hh * d..(hh + 1) * d], &qn);
                    q[pos][hh * d..(hh + 1) * d].copy_from_slice(&r);
                }
                for hh in 0..nkv {
                    let r = rms(&k[pos][hh * d..(hh + 1) * d], &kn);
                    k[pos][hh * d..(hh + 1) * d].copy_from_slice(&r);
                }
            }
            for hh in 0..nh {
                rope(&mut q[pos][hh * d..(hh + 1) * d], pos);
            }
            for hh in 0..nkv {
                rope(&mut k[pos][hh * d..(hh + 1) * d], pos);
            }
        }
        let mut o = vec![vec![0.0; nh * d]; t];
        for hh in 0..nh {
            let kh = hh / (nh / nkv);
            for i in 0..t {
                let sc: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..d)
                            .map(|e| q[i][hh * d + e] * k[j][kh * d + e])
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|s| (s - m).exp()).sum();
                for (j, s) in sc.iter().enumerate() {
                    let pw = (s - m).exp() / z;
                    for e in 0..d {
                        o[i][hh * d + e] += pw * v[j][kh * d + e];
                    }
                }
            }
        }
        taps.push(sq(&o));
        let y = lin(&o, &g(&format!("{p}.self_attn.o_proj.weight")), None, h);
        for (xr, yr) in x.iter_mut().zip(&y) {
            for (a, b) in xr.iter_mut().zip(yr) {
                *a += b;
            }
        }
        let gf = g(&format!("{p}.post_attention_layernorm.weight"));
        let f: Vec<Vec<f64>> = x.iter().map(|r| rms(r, &gf)).collect();
        taps.push(sq(&f));
        let gate = lin(
            &f,
            &g(&format!("{p}.mlp.gate_proj.weight")),
            None,
            cfg.intermediate,
        );
        let up = lin(
            &f,
            &g(&format!("{p}.mlp.up_proj.weight")),
            None,
            cfg.intermediate,
        );
        let act: Vec<Vec<f64>> = gate
            .iter()
            .zip(&up)
            .map(|(gr, ur)| {
                gr.iter()
                    .zip(ur)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect()
            })
            .collect();
        taps.push(sq(&act));
        let y = lin(&act, &g(&format!("{p}.mlp.down_proj.weight")), None, h);
        for (xr, yr) in x.iter_mut().zip(&y) {
            for (a, b) in xr.iter_mut().zip(yr) {
                *a += b;
            }
        }
    }
    let gn = g("model.norm.weight");
    let xn: Vec<Vec<f64>> = x.iter().map(|r| rms(r, &gn)).collect();
    taps.push(sq(&xn));
    let head = if cfg.tied_embeddings {
        embed
    } else {
        g("lm_head.weight")
    };
    let logits = lin(&xn, &head, None, cfg.vocab);
    (logits.concat(), taps)
}

fn max_rel(ours: &[f32], want: &[f64], width: usize) -> f64 {
    // Per position: max |diff| / max |want|, then the max over positions.
    ours.chunks(width)
        .zip(want.chunks(width))
        .map(|(o, w)| {
            let scale = w.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
            o.iter()
                .zip(w)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0.0, f64::max)
                / scale
        })
        .fold(0.0, f64::max)
}

fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7 + 3) % vocab) as u32).collect()
}

fn check_family(family: Family, tied: bool, rope: Rope, seed: u64) {
    let cfg = config(family, tied, rope);
    let w = random_weights(&cfg, seed);
    let model = Model::load(cfg.clone(), &w, 2).unwrap();
    let toks = tokens(40, cfg.vocab);
    let mut taps = TapSums::new(&cfg, true);
    let logits = model
        .forward(&toks, Some(&mut taps), true)
        .unwrap()
        .unwrap();
    let (want, want_taps) = reference(&cfg, &w, &toks);
    let rel = max_rel(&logits, &want, cfg.vocab);
    assert!(
        rel < 1e-4,
        "{family:?} tied={tied}: logits differ from the reference by {rel:e}"
    );
    assert_eq!(taps.tokens, 40);
    assert_eq!(taps.sums.len(), want_taps.len());
    for (slot, (a, b)) in taps.sums.iter().zip(&want_taps).enumerate() {
        for (j, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * y.abs().max(1e-3),
                "{family:?} tap slot {slot} col {j}: {x} vs {y}"
            );
        }
    }
}

#[test]
fn llama_matches_reference() {
    check_family(&laquant::arch::llama::LLAMA, false, Rope::Default, 1);
}

#[test]
fn mistral_tied_linear_rope_matches_reference() {
    check_family(
        &laquant::arch::llama::MISTRAL,
        true,
        Rope::Linear { factor: 2.0 },
        2,
    );
}

#[test]
fn qwen2_biases_match_reference() {
    check_family(&laquant::arch::qwen2::QWEN2, false, Rope::Default, 3);
}

#[test]
fn qwen3_qk_norm_matches_reference() {
    check_family(&laquant::arch::qwen3::QWEN3, true, Rope::Default, 4);
}

#[test]
fn causal_mask_prefix_logits_do_not_see_the_future() {
    let cfg = config(&laquant::arch::llama::LLAMA, false, Rope::Default);
    let w = random_weights(&cfg, 9);
    let model = Model::load(cfg.clone(), &w, 2).unwrap();
    let toks = tokens(33, cfg.vocab);
    let full = model.forward(&toks, None, true).unwrap().unwrap();
    for n in [1, 2, 17] {
        let part = model.forward(&toks[..n], None, true).unwrap().unwrap();
        let diff = part
            .iter()
            .zip(&full)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "prefix {n}: {diff}");
    }
    // Changing a later token must not change earlier logits, and must change its own.
    let mut other = toks.clone();
    other[20] = (other[20] + 1) % cfg.vocab as u32;
    let alt = model.forward(&other, None, true).unwrap().unwrap();
    let v = cfg.vocab;
    assert_eq!(&alt[..20 * v], &full[..20 * v]);
    assert!(alt[20 * v..21 * v]
        .iter()
        .zip(&full[20 * v..21 * v])
        .any(|(a, b)| a != b));
}

#[test]
fn taps_are_additive_over_sequences() {
    let cfg = config(&laquant::arch::qwen2::QWEN2, false, Rope::Default);
    let w = random_weights(&cfg, 5);
    let model = Model::load(cfg.clone(), &w, 1).unwrap();
    let (a, b) = (tokens(20, cfg.vocab), tokens(24, cfg.vocab)[4..].to_vec());
    let mut both = TapSums::new(&cfg, false);
    model.forward(&a, Some(&mut both), false).unwrap();
    model.forward(&b, Some(&mut both), false).unwrap();
    let mut ta = TapSums::new(&cfg, false);
    let mut tb = TapSums::new(&cfg, false);
    model.forward(&a, Some(&mut ta), false).unwrap();
    model.forward(&b, Some(&mut tb), false).unwrap();
    ta.add(&tb);
    assert_eq!(ta.tokens, 40);
    for (x, y) in ta.sums.iter().flatten().zip(both.sums.iter().flatten()) {
        assert!((x - y).abs() <= 1e-9 * y.abs().max(1.0));
    }
    let names: Vec<String> = both.by_weight().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 2 * 7);
    assert_eq!(names[0], "blk.0.attn_q.weight");
    assert_eq!(names[6], "blk.0.ffn_down.weight");
}

#[test]
fn gemm_and_dot_kernels_agree() {
    let mut r = Rng(11);
    let (rows, k, n) = (37, 70, 53);
    let x = r.vec(rows * k, 1.0);
    let w = r.vec(n * k, 1.0);
    let a = matmul_wt(&x, rows, k, &w, n, None, 2);
    let b = matmul_wt_dot(&x, rows, k, &w, n);
    for (i, (p, q)) in a.iter().zip(&b).enumerate() {
        assert!((p - q).abs() < 1e-4, "{i}: {p} vs {q}");
    }
}

#[test]
fn bad_weights_are_clear_errors() {
    let cfg = config(&laquant::arch::llama::LLAMA, false, Rope::Default);
    let mut w = random_weights(&cfg, 6);
    w.remove("lm_head.weight");
    let e = Model::load(cfg.clone(), &w, 1).err().unwrap().to_string();
    assert!(e.contains("lm_head.weight"), "{e}");
    let mut w = random_weights(&cfg, 6);
    w.insert("model.layers.1.mlp.up_proj.weight".into(), vec![0.0; 3]);
    let e = Model::load(cfg.clone(), &w, 1).err().unwrap().to_string();
    assert!(e.contains("model.layers.1.mlp.up_proj.weight"), "{e}");
    let w = random_weights(&cfg, 6);
    let model = Model::load(cfg.clone(), &w, 1).unwrap();
    assert!(model.forward(&[1, 2, 999], None, true).is_err());
    let bad = ForwardConfig {
        n_kv_heads: 3,
        ..cfg
    };
    assert!(Model::load(bad, &w, 1).is_err());
}
