//! The rounding ggml's CPU matmul applies to activations. `ggml_compute_forward_mul_mat`
//! converts the input rows to the weight type's `vec_dot_type` (`type_traits_cpu`
//! in ggml-cpu.c) before the dot products: Q8_K for the k-quants, the i-quants but
//! IQ4_NL, and TQ1_0/TQ2_0; Q8_0 for Q1_0/Q2_0/Q4_0/Q5_0/Q8_0/IQ4_NL/MXFP4/NVFP4; Q8_1
//! for Q4_1/Q5_1; F16 for F16, BF16 for BF16, nothing for F32. A forward pass on dequantized weights that should reproduce
//! what llama.cpp computes from a quantized file rounds its activations the same
//! way: quantize, then dequantize ([`round_trip`]); the integer dot product of
//! ggml equals the float dot product of the two round-tripped operands up to
//! summation order, but for the term a Q4_1/Q5_1 weight's block minimum makes
//! with a Q8_1 block's f16 sum ([`q8_1_sum_residuals`], added by the forward
//! pass). The Q8_0/Q8_1 levels are those of the x86 (AVX) kernels, which the
//! interop checks run.

use crate::gguf::GgmlType;
use half::{bf16, f16};

/// How a matmul's input rows are rounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ActQuant {
    /// Unchanged (F32 weights, and the reference pass on HF weights).
    #[default]
    F32,
    /// Rounded to f16 (F16 weights: ggml converts the input to the weight's type).
    F16,
    /// Rounded to bf16 (BF16 weights).
    BF16,
    /// Blocks of 32, scale `amax/127` stored as f16, levels rounded to nearest
    /// (`quantize_row_q8_0`, `q8_scale`).
    Q8_0,
    /// As Q8_0 plus the block's sum, stored in f16 (`quantize_row_q8_1`); the
    /// values are the same, the sum's rounding is [`q8_1_sum_residuals`].
    Q8_1,
    /// Blocks of 256, scale `-max/127` kept in f32, round half to even
    /// (`quantize_row_q8_K_ref`, ggml's `nearest_int`).
    Q8K,
}

impl ActQuant {
    /// The `vec_dot_type` rounding for a weight stored as `ty`: each block format's
    /// [`crate::quant::BlockFormat::ACT`], from the registry (`quant::registry`).
    pub fn for_weight(ty: GgmlType) -> ActQuant {
        crate::quant::act_quant(ty)
    }

    /// The least mean squared error this rounding leaves in values it rounds,
    /// relative to their mean square, under the uniform model of rounding
    /// error (`step² / 12` for a step that is small against the values): a Q8
    /// block's step `amax / 127` is at least `rms / 127`, so `1 / (12 · 127²)`
    /// (5.2e-6); an f16 (bf16) value's step is at least `2^-11` (`2^-8`) of it,
    /// so `2^-22 / 12` (`2^-16 / 12`); 0 for F32, which is not rounded. The
    /// measured sensitivity ([`crate::policy::sensitivity`]) rounds a group's
    /// activations so while it measures the group's weight error: below this
    /// much of the weights' own importance-weighted energy, a weight error
    /// perturbs the products less than the rounding that comes with it.
    pub fn noise_floor(self) -> f64 {
        match self {
            ActQuant::Q8K | ActQuant::Q8_0 | ActQuant::Q8_1 => 1.0 / (12.0 * 127.0 * 127.0),
            ActQuant::F16 => (-22f64).exp2() / 12.0,
            ActQuant::BF16 => (-16f64).exp2() / 12.0,
            ActQuant::F32 => 0.0,
        }
    }

    fn block(self) -> usize {
        match self {
            ActQuant::Q8K => 256,
            ActQuant::Q8_0 | ActQuant::Q8_1 => 32,
            ActQuant::F32 | ActQuant::F16 | ActQuant::BF16 => 1,
        }
    }
}

/// ggml's `nearest_int`: round half to even through the float magic number.
fn nearest_int(v: f32) -> i32 {
    let x = v + 12582912.0;
    (x.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// A Q8_0/Q8_1 block's scale `d` (f32, before its f16 storage) and the inverse
/// scale its levels are rounded with, as the x86 `quantize_row_q8_0` and
/// `quantize_row_q8_1` of ggml's CPU backend take them (the AVX path: `127 / amax`,
/// and `_mm256_round_ps` to nearest, ties to even, in [`q8_level`]; the scalar
/// `_ref` functions, and the NEON path, take `1 / d`, which can differ in the last
/// bit of a product, and `_ref` rounds ties away from zero).
fn q8_scale(x: &[f32]) -> (f32, f32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    (amax / 127.0, id)
}

/// One value's Q8_0/Q8_1 level ([`q8_scale`]).
fn q8_level(v: f32, id: f32) -> f32 {
    (v * id).round_ties_even()
}

fn q8_0_block(x: &mut [f32]) {
    let (d, id) = q8_scale(x);
    let dh = f16::from_f32(d).to_f32();
    for v in x.iter_mut() {
        *v = q8_level(*v, id) * dh;
    }
}

/// Per block of 32 of each row of `x` (rows of `width`, unrounded), how much
/// the sum ggml stores in the block's Q8_1 form (`s = f16(d · Σq)`) differs
/// from the sum of the block's rounded values ([`round_trip`]: `f16(d) · Σq`,
/// exact in f32). ggml's dot product of a Q4_1/Q5_1 row with a Q8_1 block adds
/// `m · s` for the weight block's minimum `m`, where the product of the
/// dequantized weight with the rounded activations adds `m · f16(d) · Σq`, so
/// `Σ_b m_b · residual_b` is what the latter misses (up to 2⁻¹¹ of the block's
/// sum times `m`: 1e-4 relative on the output). `x.len() / 32` values; none
/// when `width` is not a whole number of blocks (ggml refuses such a matmul).
pub fn q8_1_sum_residuals(x: &[f32], width: usize) -> Vec<f32> {
    if width == 0 || !width.is_multiple_of(32) {
        return Vec::new();
    }
    x.chunks_exact(32)
        .map(|b| {
            let (d, id) = q8_scale(b);
            let sum: f32 = b.iter().map(|&v| q8_level(v, id)).sum();
            f16::from_f32(d * sum).to_f32() - f16::from_f32(d).to_f32() * sum
        })
        .collect()
}

fn q8_k_block(x: &mut [f32]) {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x.iter() {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        x.fill(0.0);
        return;
    }
    let iscale = -127.0 / max;
    let d = 1.0 / iscale;
    for v in x.iter_mut() {
        *v = nearest_int(iscale * *v).min(127) as f32 * d;
    }
}

/// Rounds `x` (rows of `width`) as ggml packs them into `act`'s format and back.
/// A width that is not a whole number of blocks is left unchanged (ggml would
/// refuse such a matmul).
pub fn round_trip(act: ActQuant, x: &mut [f32], width: usize) {
    let b = act.block();
    if act == ActQuant::F32 || !width.is_multiple_of(b) {
        return;
    }
    match act {
        ActQuant::F32 => {}
        ActQuant::F16 => x.iter_mut().for_each(|v| *v = f16::from_f32(*v).to_f32()),
        ActQuant::BF16 => x.iter_mut().for_each(|v| *v = bf16::from_f32(*v).to_f32()),
        ActQuant::Q8_0 | ActQuant::Q8_1 => x.chunks_exact_mut(b).for_each(q8_0_block),
        ActQuant::Q8K => x.chunks_exact_mut(b).for_each(q8_k_block),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The noise floor is below the relative squared error the rounding leaves
    /// in flat, uniform, Gaussian-like and heavy-tailed rows, and not far below
    /// it for the flat one (magnitudes 0.8-1: within 2x).
    #[test]
    fn the_noise_floor_bounds_the_rounding_error() {
        let mut h = 0x9e37_79b9_7f4a_7c15u64;
        let mut u = move || {
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            (h >> 11) as f64 / (1u64 << 53) as f64
        };
        let n = 4096;
        let rows: Vec<(&str, Vec<f32>)> = vec![
            (
                "flat",
                (0..n)
                    .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 } * (0.8 + 0.2 * u()) as f32)
                    .collect(),
            ),
            (
                "uniform",
                (0..n).map(|_| (2.0 * u() - 1.0) as f32).collect(),
            ),
            (
                "gaussian",
                (0..n)
                    .map(|_| ((0..12).map(|_| u()).sum::<f64>() - 6.0) as f32)
                    .collect(),
            ),
            (
                "heavy",
                (0..n)
                    .map(|_| ((2.0 * u() - 1.0) / (u() + 0.05)) as f32)
                    .collect(),
            ),
        ];
        for act in [
            ActQuant::Q8_0,
            ActQuant::Q8_1,
            ActQuant::Q8K,
            ActQuant::F16,
            ActQuant::BF16,
        ] {
            for (what, x) in &rows {
                let mut r = x.clone();
                round_trip(act, &mut r, n);
                let err: f64 = x
                    .iter()
                    .zip(&r)
                    .map(|(a, b)| ((a - b) as f64).powi(2))
                    .sum();
                let ms: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
                let rel = err / ms;
                assert!(rel >= act.noise_floor(), "{act:?} {what}: {rel:.3e}");
                if *what == "flat" {
                    assert!(rel <= 2.0 * act.noise_floor(), "{act:?} {what}: {rel:.3e}");
                }
            }
        }
        assert_eq!(ActQuant::F32.noise_floor(), 0.0);
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(3.5), 4);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-126.6), -127);
    }

    #[test]
    fn q8_blocks_keep_127_levels_of_the_block_maximum() {
        let mut x: Vec<f32> = (0..256).map(|i| (i as f32 - 100.0) * 0.013).collect();
        let orig = x.clone();
        round_trip(ActQuant::Q8K, &mut x, 256);
        let amax = orig.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in x.iter().zip(&orig) {
            assert!((a - b).abs() <= amax / 127.0 * 0.5 + 1e-6, "{a} vs {b}");
        }
        // The signed maximum is exact (it maps to -127).
        let i = orig.iter().position(|v| v.abs() == amax).unwrap();
        assert!((x[i] - orig[i]).abs() < 1e-6);
        let mut y = orig.clone();
        round_trip(ActQuant::Q8_0, &mut y, 256);
        assert_ne!(y, orig);
        assert!(y.iter().zip(&orig).all(|(a, b)| (a - b).abs() < 0.01));
        let mut z = orig.clone();
        round_trip(ActQuant::F32, &mut z, 256);
        assert_eq!(z, orig);
        let mut zero = vec![0f32; 32];
        round_trip(ActQuant::Q8_0, &mut zero, 32);
        assert!(zero.iter().all(|v| *v == 0.0));
    }

    /// The x86 kernels' levels: inverse scale `127 / amax`, ties to even (the
    /// scalar reference would give 3 and -3 for the ties below).
    #[test]
    fn q8_0_levels_round_ties_to_even_with_the_avx_inverse_scale() {
        // amax 127 gives a unit scale: 2.5 and -2.5 are exact ties.
        let mut x = vec![0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 3.5;
        round_trip(ActQuant::Q8_0, &mut x, 32);
        assert_eq!(&x[..4], &[127.0, 2.0, -2.0, 4.0]);
    }

    /// ggml's Q8_1 sum is `f16(d · Σq)`; the residual is it less `f16(d) · Σq`,
    /// computed here from the levels independently of the forward pass.
    #[test]
    fn q8_1_residuals_are_the_f16_sum_less_the_rounded_values_sum() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 53 % 97) as f32 - 40.0) * 0.0173)
            .collect();
        let r = q8_1_sum_residuals(&x, 64);
        assert_eq!(r.len(), 2);
        let mut rt = x.clone();
        round_trip(ActQuant::Q8_1, &mut rt, 64);
        for (b, (xb, rb)) in x.chunks(32).zip(rt.chunks(32)).enumerate() {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let q: i32 = xb
                .iter()
                .map(|v| (v * (127.0 / amax)).round_ties_even() as i32)
                .sum();
            let s = f16::from_f32(d * q as f32).to_f32();
            let rounded_sum: f32 = rb.iter().sum();
            assert_eq!(r[b], s - rounded_sum, "block {b}");
        }
        // Not always zero: the f16 rounding of the sum is what it measures.
        assert!(r.iter().any(|&v| v != 0.0));
        assert!(q8_1_sum_residuals(&x[..48], 48).is_empty());
    }

    #[test]
    fn weight_types_map_to_ggml_vec_dot_types() {
        assert_eq!(ActQuant::for_weight(GgmlType::Q4K), ActQuant::Q8K);
        assert_eq!(ActQuant::for_weight(GgmlType::Q6K), ActQuant::Q8K);
        assert_eq!(ActQuant::for_weight(GgmlType::IQ4XS), ActQuant::Q8K);
        assert_eq!(ActQuant::for_weight(GgmlType::Q8_0), ActQuant::Q8_0);
        assert_eq!(ActQuant::for_weight(GgmlType::Q4_1), ActQuant::Q8_1);
        assert_eq!(ActQuant::for_weight(GgmlType::F16), ActQuant::F16);
        assert_eq!(ActQuant::for_weight(GgmlType::F32), ActQuant::F32);
        assert_eq!(ActQuant::for_weight(GgmlType::TQ1_0), ActQuant::Q8K);
        assert_eq!(ActQuant::for_weight(GgmlType::TQ2_0), ActQuant::Q8K);
        assert_eq!(ActQuant::for_weight(GgmlType::MXFP4), ActQuant::Q8_0);
        assert_eq!(ActQuant::for_weight(GgmlType::Q1_0), ActQuant::Q8_0);
        assert_eq!(ActQuant::for_weight(GgmlType::Q2_0), ActQuant::Q8_0);
    }
}
