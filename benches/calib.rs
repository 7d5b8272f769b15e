//! Calibration kernels: the `gemm` crate against the rayon dot-product kernel for
//! the matmul shapes of polyglot-25m (512-token chunk), and one forward chunk with
//! taps on a random model of polyglot-25m's shape; on a CPU with AMX also the
//! bf16 tile product (`calib::amx`) against `gemm` on those shapes and the
//! 1.1 GB random model's (TinyLlama: hidden 2048, ffn 5632, 384-row batches),
//! one input against q/k/v at once (`amx::matmul_many`) against three calls,
//! and the layered calibration pass (`forward_layered_with`, bf16 on AMX).
//! `cargo bench --bench calib`.

use criterion::{criterion_group, criterion_main, Criterion};
use laquant::calib::amx;
use laquant::calib::forward::{matmul_wt, matmul_wt_dot, ForwardConfig, Model, Rope, TapSums};
use laquant::calib::layered::{forward_layered_with, Limits, Sequence};
use laquant::calib::Matmul;
use std::collections::HashMap;
use std::hint::black_box;

fn rand_vec(n: usize, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect()
}

fn polyglot_shape() -> ForwardConfig {
    ForwardConfig {
        arch: &laquant::arch::llama::LLAMA,
        hidden: 384,
        intermediate: 1024,
        n_layers: 8,
        n_heads: 6,
        n_kv_heads: 2,
        head_dim: 64,
        rope_dim: 64,
        rms_eps: 1e-5,
        rope_theta: 10000.0,
        rope: Rope::Default,
        vocab: 16384,
        tied_embeddings: false,
        qkv_bias: false,
        scales: Default::default(),
        swa: None,
        moe: None,
    }
}

fn bench(c: &mut Criterion) {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut seed = 7u64;
    for (k, n) in [(384usize, 1024usize), (1024, 384), (384, 384)] {
        let x = rand_vec(512 * k, &mut seed);
        let w = rand_vec(n * k, &mut seed);
        c.bench_function(&format!("matmul gemm 512x{k} * {n}x{k}^T"), |b| {
            b.iter(|| black_box(matmul_wt(&x, 512, k, &w, n, None, threads)))
        });
        c.bench_function(&format!("matmul dot 512x{k} * {n}x{k}^T"), |b| {
            b.iter(|| black_box(matmul_wt_dot(&x, 512, k, &w, n)))
        });
    }
    for (rows, k, n) in [
        (512usize, 384usize, 1024usize),
        (512, 1024, 384),
        (384, 2048, 5632),
        (384, 5632, 2048),
        (384, 2048, 256),
    ] {
        let x = rand_vec(rows * k, &mut seed);
        let w = rand_vec(n * k, &mut seed);
        if rows == 384 {
            c.bench_function(&format!("matmul gemm {rows}x{k} * {n}x{k}^T"), |b| {
                b.iter(|| black_box(matmul_wt(&x, rows, k, &w, n, None, threads)))
            });
        }
        if amx::available() {
            let p = amx::PackedBf16::pack(&w, n, k);
            c.bench_function(&format!("matmul amx {rows}x{k} * {n}x{k}^T"), |b| {
                b.iter(|| black_box(amx::matmul(&x, rows, &p, None, threads)))
            });
            if rows == 384 {
                c.bench_function(&format!("amx pack {n}x{k}"), |b| {
                    b.iter(|| black_box(amx::PackedBf16::pack(&w, n, k)))
                });
            }
        }
    }
    if amx::available() {
        // q, k, v of polyglot-25m on a batch of three 512-token chunks: one
        // input conversion and one parallel loop against three of each.
        let (rows, k) = (1536usize, 384usize);
        let x = rand_vec(rows * k, &mut seed);
        let ws: Vec<amx::PackedBf16> = [384usize, 128, 128]
            .iter()
            .map(|&n| amx::PackedBf16::pack(&rand_vec(n * k, &mut seed), n, k))
            .collect();
        c.bench_function("amx q/k/v 1536x384: three matmul calls", |b| {
            b.iter(|| {
                for w in &ws {
                    black_box(amx::matmul(&x, rows, w, None, threads));
                }
            })
        });
        let refs: Vec<(&amx::PackedBf16, Option<&[f32]>)> = ws.iter().map(|w| (w, None)).collect();
        c.bench_function("amx q/k/v 1536x384: matmul_many", |b| {
            b.iter(|| black_box(amx::matmul_many(&x, rows, &refs, threads)))
        });
    }
    let cfg = polyglot_shape();
    let mut weights: HashMap<String, Vec<f32>> = HashMap::new();
    let (h, ff) = (cfg.hidden, cfg.intermediate);
    weights.insert(
        "model.embed_tokens.weight".into(),
        rand_vec(cfg.vocab * h, &mut seed),
    );
    weights.insert("lm_head.weight".into(), rand_vec(cfg.vocab * h, &mut seed));
    weights.insert("model.norm.weight".into(), vec![1.0; h]);
    for i in 0..cfg.n_layers {
        let p = format!("model.layers.{i}");
        for (n, len) in [
            ("input_layernorm.weight", h),
            ("post_attention_layernorm.weight", h),
            ("self_attn.q_proj.weight", 384 * h),
            ("self_attn.k_proj.weight", 128 * h),
            ("self_attn.v_proj.weight", 128 * h),
            ("self_attn.o_proj.weight", h * 384),
            ("mlp.gate_proj.weight", ff * h),
            ("mlp.up_proj.weight", ff * h),
            ("mlp.down_proj.weight", h * ff),
        ] {
            weights.insert(format!("{p}.{n}"), rand_vec(len, &mut seed));
        }
    }
    let model = Model::load(cfg.clone(), &weights, threads).expect("model");
    let tokens: Vec<u32> = (0..512u32).map(|i| (i * 31) % 16384).collect();
    let mut g = c.benchmark_group("forward");
    g.sample_size(10);
    g.bench_function("polyglot-shape chunk of 512 with taps", |b| {
        b.iter(|| {
            let mut taps = TapSums::new(&cfg, false);
            model
                .forward(&tokens, Some(&mut taps), false)
                .expect("forward");
            black_box(taps.tokens)
        })
    });
    // The calibration path: layer by layer, three chunks a batch, products
    // on the AMX tile unit when present (softmax, SiLU, norms and taps as
    // `laquant calibrate` runs them).
    let toks: Vec<Vec<u32>> = (0..3u32)
        .map(|s| (0..512u32).map(|i| (i * 31 + s * 7) % 16384).collect())
        .collect();
    let seqs: Vec<Sequence> = toks
        .iter()
        .map(|t| Sequence { tokens: t, taps: 0 })
        .collect();
    let matmul = Matmul::Auto.resolve().expect("matmul");
    g.bench_function(
        format!(
            "polyglot-shape layered 3 chunks of 512 with taps, {}",
            matmul.name()
        ),
        |b| {
            b.iter(|| {
                let mut taps = vec![TapSums::new(&cfg, true)];
                forward_layered_with(
                    &cfg,
                    &weights,
                    &seqs,
                    Some(&mut taps),
                    None,
                    Limits::default(),
                    matmul,
                    threads,
                    &mut |_| {},
                )
                .expect("forward");
                black_box(taps[0].tokens)
            })
        },
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
