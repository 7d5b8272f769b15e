//! Q5_K: 256 values as 5-bit levels (low nibbles in `qs`, high bits in `qh`) in 8
//! sub-blocks of 32 with 6-bit scales and mins, plus f16 `d` and `dmin` (176 bytes).
//! Mirrors ggml's `quantize_row_q5_K_ref`, `quantize_row_q5_K_impl` and `dequantize_row_q5_K`.

use super::q4_k::{imatrix_scales, ref_scales};
use super::{by_pairs, encode_head_k4, get_scale_min_k4, QK_K};
use crate::quant::float::f16_le;
use crate::quant::lanes::Kernel;
use bytemuck::{Pod, Zeroable};

/// ggml's `block_q5_K`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5K {
    /// The super-scale of the scale levels, f16 (little-endian bytes).
    pub d: [u8; 2],
    /// The super-scale of the minimum levels, f16 (little-endian bytes).
    pub dmin: [u8; 2],
    /// Eight 6-bit scale and minimum levels, packed as Q4_K's.
    pub scales: [u8; 12],
    /// Bit 4 of each of the 256 levels.
    pub qh: [u8; QK_K / 8],
    /// The low 4 bits of the 256 levels, two per byte.
    pub qs: [u8; QK_K / 2],
}

#[inline(always)]
fn encode(
    x: &[f32],
    b: &mut BlockQ5K,
    ls: [u8; 8],
    lm: [u8; 8],
    d: f32,
    dmin: f32,
    l: &mut [u8; QK_K],
) {
    (b.scales, b.d, b.dmin) = encode_head_k4(x, &ls, &lm, d, dmin, 31, l);
    b.qh = [0; QK_K / 8];
    // ggml's `if (l > 15) { l -= 16; qh[j] |= m; }` with `m` = 1 << (2k) and 2 << (2k), written
    // without branches (the same bytes for every level, so that it vectorises).
    for (k, n) in (0..QK_K).step_by(64).enumerate() {
        for j in 0..32 {
            let (l1, l2) = (l[n + j], l[n + j + 32]);
            let (h1, h2) = (u8::from(l1 > 15), u8::from(l2 > 15));
            b.qh[j] |= (h1 | (h2 << 1)) << (2 * k);
            b.qs[32 * k + j] = l1.wrapping_sub(16 * h1) | (l2.wrapping_sub(16 * h2) << 4);
        }
    }
}

/// `quantize_row_q5_K_ref` (fast path: sub-blocks in lanes, built for AVX2 when the CPU has it).
pub fn quantize_row_ref(x: &[f32], y: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if quantize_row_ref_avx2(x, y) {
        return;
    }
    quantize_row_ref_in(x, y, Kernel::Lanes)
}

/// `quantize_row_q5_K_impl` (fast path: sub-blocks in lanes, built for AVX2 when the CPU has it).
pub fn quantize_row_imatrix(x: &[f32], y: &mut [u8], qw: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if quantize_row_imatrix_avx2(x, y, qw) {
        return;
    }
    quantize_row_imatrix_in(x, y, qw, Kernel::Lanes)
}

crate::quant::simd::avx2_build!(
    /// [`quantize_row_ref_in`] on [`Kernel::best`], the rest of the block also built for AVX2
    /// (same bytes; `false` without AVX2).
    quantize_row_ref_avx2(x: &[f32], y: &mut [u8]) => quantize_row_ref_in(x, y, Kernel::best())
);

crate::quant::simd::avx2_build!(
    /// [`quantize_row_imatrix_in`] on [`Kernel::best`], built for AVX2 (same bytes; `false`
    /// without AVX2).
    quantize_row_imatrix_avx2(x: &[f32], y: &mut [u8], qw: &[f32]) => quantize_row_imatrix_in(x, y, qw, Kernel::best())
);

/// `quantize_row_q5_K_ref`; `lanes` runs the sub-block searches side by side (same bytes).
pub fn quantize_row_ref_with(x: &[f32], y: &mut [u8], lanes: bool) {
    quantize_row_ref_in(x, y, Kernel::from_lanes(lanes))
}

/// `quantize_row_q5_K_ref` with the sub-block searches on `kernel` (same bytes on every one).
#[inline(always)]
pub fn quantize_row_ref_in(x: &[f32], y: &mut [u8], kernel: Kernel) {
    #[inline(always)]
    fn go<const G: usize>(x: [&[f32]; G], b: [&mut BlockQ5K; G], kernel: Kernel) {
        let mut l = [[0u8; QK_K]; G];
        let s = ref_scales(x, 31, -0.5, 15, &mut l, kernel);
        for (g, b) in b.into_iter().enumerate() {
            let (ls, lm, d, dmin) = s[g];
            encode(x[g], b, ls, lm, d, dmin, &mut l[g]);
        }
    }
    let blocks: &mut [BlockQ5K] = bytemuck::cast_slice_mut(y);
    by_pairs!(x, blocks, kernel, |_i, xs, bs| go(xs, bs, kernel));
}

/// `quantize_row_q5_K_impl` with importance weights; `lanes` as in [`quantize_row_ref_with`].
pub fn quantize_row_imatrix_with(x: &[f32], y: &mut [u8], qw: &[f32], lanes: bool) {
    quantize_row_imatrix_in(x, y, qw, Kernel::from_lanes(lanes))
}

/// `quantize_row_q5_K_impl` with the sub-block searches on `kernel` (same bytes on every one).
#[inline(always)]
pub fn quantize_row_imatrix_in(x: &[f32], y: &mut [u8], qw: &[f32], kernel: Kernel) {
    #[inline(always)]
    fn go<const G: usize>(x: [&[f32]; G], qw: &[f32], b: [&mut BlockQ5K; G], kernel: Kernel) {
        let mut l = [[0u8; QK_K]; G];
        let s = imatrix_scales(x, qw, 31, &mut l, kernel);
        for (g, b) in b.into_iter().enumerate() {
            let (ls, lm, d, dmin) = s[g];
            // ggml clamps the qp levels to 63 here (a no-op: make_qp_quants caps at nmax).
            encode(
                x[g],
                b,
                ls.map(|v| v.min(63)),
                lm.map(|v| v.min(63)),
                d,
                dmin,
                &mut l[g],
            );
        }
    }
    let blocks: &mut [BlockQ5K] = bytemuck::cast_slice_mut(y);
    by_pairs!(x, blocks, kernel, |i, xs, bs| go(
        xs,
        &qw[QK_K * i..],
        bs,
        kernel
    ));
}

/// `dequantize_row_q5_K`.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    let blocks: &[BlockQ5K] = bytemuck::cast_slice(x);
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        let min = f16_le(b.dmin);
        let (mut u1, mut u2) = (1u8, 2u8);
        for k in 0..QK_K / 64 {
            let ql = &b.qs[32 * k..32 * k + 32];
            let (sc, m) = get_scale_min_k4(2 * k, &b.scales);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = get_scale_min_k4(2 * k + 1, &b.scales);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            let yk = &mut y[64 * k..64 * k + 64];
            for l in 0..32 {
                let h1 = if b.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if b.qh[l] & u2 != 0 { 16 } else { 0 };
                yk[l] = d1 * ((ql[l] & 0xf) as i32 + h1) as f32 - m1;
                yk[l + 32] = d2 * ((ql[l] >> 4) as i32 + h2) as f32 - m2;
            }
            u1 = u1.wrapping_shl(2);
            u2 = u2.wrapping_shl(2);
        }
    }
}
/// Q5_K in the registry.
pub struct Q5K;

impl crate::quant::BlockFormat for Q5K {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::Q5K;
    const BLOCK: usize = super::QK_K;
    type Block = BlockQ5K;
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::Q8K;
    const F16_SCALES: &'static [usize] = &[0, 2];
    fn quantize(x: &[f32], y: &mut [u8]) {
        quantize_row_ref(x, y)
    }
    fn quantize_imatrix(x: &[f32], y: &mut [u8], w: &[f32]) {
        quantize_row_imatrix(x, y, w)
    }
    fn dequantize(x: &[u8], y: &mut [f32]) {
        dequantize_row(x, y)
    }
}
