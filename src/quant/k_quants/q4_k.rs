//! Q4_K: 256 values as 4-bit levels in 8 sub-blocks of 32, each with a 6-bit scale
//! and 6-bit min, plus f16 super-scales `d` and `dmin` (144 bytes).
//! Mirrors ggml's `quantize_row_q4_K_ref`, `quantize_row_q4_K_impl` and `dequantize_row_q4_K`.

use super::{by_pairs, encode_head_k4, get_scale_min_k4, QK_K};
use crate::quant::float::f16_le;
use crate::quant::lanes::{make_qp_quants_x8, untranspose, Kernel, LANES};
use crate::quant::search::{make_qkx_quants, make_qp_quants, nearest_int, sum_sq, Qkx};
use bytemuck::{Pod, Zeroable};

/// ggml's `block_q4_K`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4K {
    /// The super-scale of the scale levels, f16 (little-endian bytes).
    pub d: [u8; 2],
    /// The super-scale of the minimum levels, f16 (little-endian bytes).
    pub dmin: [u8; 2],
    /// Eight 6-bit scale levels and eight 6-bit minimum levels, packed into 12 bytes (ggml's `get_scale_min_k4`).
    pub scales: [u8; 12],
    /// 256 4-bit levels, two per byte.
    pub qs: [u8; QK_K / 2],
}

/// Sub-block scales and mins of the reference quantizers of Q4_K (nmax 15) and Q5_K (31):
/// `make_qkx2_quants` with weights `av_x + |x|`; returns the 6-bit levels and super-scales.
/// `G` super-blocks at once (their searches interleave on the AVX2 kernel; same results).
#[inline(always)]
pub(crate) fn ref_scales<const G: usize>(
    x: [&[f32]; G],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    l: &mut [[u8; QK_K]; G],
    kernel: Kernel,
) -> [Scales; G] {
    let mut mins = [[0f32; 8]; G];
    let mut scales = [[0f32; 8]; G];
    if kernel.lanes() {
        let mut xt = [[[0f32; LANES]; 32]; G];
        let mut wt = [[[0f32; LANES]; 32]; G];
        for g in 0..G {
            for k in 0..LANES {
                for i in 0..32 {
                    xt[g][i][k] = x[g][32 * k + i];
                }
            }
            // `sum_sq` of each sub-block, its terms in order, 8 sub-blocks side by side.
            let mut ss = [0f32; LANES];
            for row in &xt[g] {
                for k in 0..LANES {
                    ss[k] += row[k] * row[k];
                }
            }
            let av_x = ss.map(|s| (s / 32.0).sqrt());
            for i in 0..32 {
                for k in 0..LANES {
                    wt[g][i][k] = av_x[k] + xt[g][i][k].abs();
                }
            }
        }
        let mut lt = [[[0u8; LANES]; 32]; G];
        (scales, mins) = kernel.qkx_x8(
            Qkx::V2,
            nmax,
            xt.each_ref(),
            wt.each_ref(),
            lt.each_mut(),
            rmin,
            0.1,
            nstep,
            false,
        );
        for g in 0..G {
            untranspose(&lt[g], &mut l[g]);
        }
    } else {
        let mut laux = [0u8; 32];
        let mut weights = [0f32; 32];
        for g in 0..G {
            for j in 0..QK_K / 32 {
                let xs = &x[g][32 * j..32 * j + 32];
                let av_x = (sum_sq(xs) / 32.0).sqrt();
                for (w, v) in weights.iter_mut().zip(xs) {
                    *w = av_x + v.abs();
                }
                (scales[g][j], mins[g][j]) = make_qkx_quants(
                    Qkx::V2,
                    nmax,
                    xs,
                    &weights,
                    &mut l[g][32 * j..32 * j + 32],
                    &mut laux,
                    rmin,
                    0.1,
                    nstep,
                    false,
                );
            }
        }
    }
    std::array::from_fn(|g| ref_super_scales(&scales[g], &mins[g]))
}

/// The 6-bit scales and mins of a super-block and its `d`, `dmin` (`quantize_row_q4_K_ref`).
#[inline(always)]
fn ref_super_scales(scales: &[f32; 8], mins: &[f32; 8]) -> Scales {
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..QK_K / 32 {
        let (s, m) = (scales[j], mins[j]);
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..QK_K / 32 {
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    (ls, lm, max_scale / 63.0, max_min / 63.0)
}

/// A super-block's 6-bit sub-block scales and mins, `d` and `dmin` (before f16 rounding).
pub(crate) type Scales = ([u8; 8], [u8; 8], f32, f32);

/// Sub-block scales and mins of the importance-weighted quantizers of Q4_K and Q5_K
/// (`make_qkx3_quants`, then `make_qp_quants` on the scales and mins); `G` super-blocks
/// at once, as [`ref_scales`].
#[inline(always)]
pub(crate) fn imatrix_scales<const G: usize>(
    x: [&[f32]; G],
    qw: &[f32],
    nmax: i32,
    l: &mut [[u8; QK_K]; G],
    kernel: Kernel,
) -> [Scales; G] {
    let mut mins = [[0f32; 8]; G];
    let mut scales = [[0f32; 8]; G];
    let mut sw = [[0f32; 8]; G];
    // `sum_sq` of each super-block, the `G` serial sums side by side.
    let mut ss = [0f32; G];
    for i in 0..QK_K {
        for g in 0..G {
            ss[g] += x[g][i] * x[g][i];
        }
    }
    let sigma2 = ss.map(|s| 2.0 * s / QK_K as f32);
    let weight = |g: usize, j: usize| qw[QK_K * g + j] * (sigma2[g] + x[g][j] * x[g][j]).sqrt();
    if kernel.lanes() {
        let mut xt = [[[0f32; LANES]; 32]; G];
        let mut wt = [[[0f32; LANES]; 32]; G];
        for g in 0..G {
            for k in 0..LANES {
                for i in 0..32 {
                    xt[g][i][k] = x[g][32 * k + i];
                    wt[g][i][k] = weight(g, 32 * k + i);
                }
            }
            // Each sub-block's `sumw`, its terms in order, 8 sub-blocks side by side.
            for row in &wt[g] {
                for k in 0..LANES {
                    sw[g][k] += row[k];
                }
            }
        }
        let mut lt = [[[0u8; LANES]; 32]; G];
        (scales, mins) = kernel.qkx_x8(
            Qkx::V3,
            nmax,
            xt.each_ref(),
            wt.each_ref(),
            lt.each_mut(),
            -0.9,
            0.05,
            36,
            false,
        );
        for g in 0..G {
            untranspose(&lt[g], &mut l[g]);
        }
    } else {
        let mut laux = [0u8; 32];
        let mut wall = [[0f32; QK_K]; G];
        for g in 0..G {
            for (j, w) in wall[g].iter_mut().enumerate() {
                *w = weight(g, j);
            }
            for j in 0..QK_K / 32 {
                let mut sumw = 0.0f32;
                for &w in &wall[g][32 * j..32 * j + 32] {
                    sumw += w;
                }
                sw[g][j] = sumw;
                (scales[g][j], mins[g][j]) = make_qkx_quants(
                    Qkx::V3,
                    nmax,
                    &x[g][32 * j..32 * j + 32],
                    &wall[g][32 * j..32 * j + 32],
                    &mut l[g][32 * j..32 * j + 32],
                    &mut laux,
                    -0.9,
                    0.05,
                    36,
                    false,
                );
            }
        }
    }
    if kernel.lanes() && 2 * G <= LANES {
        // The scales and mins of the `G` super-blocks side by side: lanes `2g` and `2g + 1`
        // (the lanes past them search zeros, whose results are dropped).
        let mut xt = [[0f32; LANES]; 8];
        let mut wt = [[0f32; LANES]; 8];
        for g in 0..G {
            for i in 0..8 {
                (xt[i][2 * g], xt[i][2 * g + 1]) = (scales[g][i], mins[g][i]);
                (wt[i][2 * g], wt[i][2 * g + 1]) = (sw[g][i], sw[g][i]);
            }
        }
        let mut lt = [[0u8; LANES]; 8];
        let d = make_qp_quants_x8(63, &xt, &wt, &mut lt);
        return std::array::from_fn(|g| {
            let ls = std::array::from_fn(|i| lt[i][2 * g]);
            let lm = std::array::from_fn(|i| lt[i][2 * g + 1]);
            (ls, lm, d[2 * g], d[2 * g + 1])
        });
    }
    std::array::from_fn(|g| {
        let mut ls = [0u8; 8];
        let mut lm = [0u8; 8];
        let d_block = make_qp_quants(63, &scales[g], &mut ls, &sw[g]);
        let m_block = make_qp_quants(63, &mins[g], &mut lm, &sw[g]);
        (ls, lm, d_block, m_block)
    })
}

#[inline(always)]
fn encode(
    x: &[f32],
    b: &mut BlockQ4K,
    ls: [u8; 8],
    lm: [u8; 8],
    d: f32,
    dmin: f32,
    l: &mut [u8; QK_K],
) {
    (b.scales, b.d, b.dmin) = encode_head_k4(x, &ls, &lm, d, dmin, 15, l);
    for (k, j) in (0..QK_K).step_by(64).enumerate() {
        for i in 0..32 {
            b.qs[32 * k + i] = l[j + i] | (l[j + i + 32] << 4);
        }
    }
}

/// `quantize_row_q4_K_ref`; `lanes` runs the 8 sub-block searches side by side
/// ([`crate::quant::lanes`], same bytes), otherwise one after the other as ggml does.
pub fn quantize_row_ref_with(x: &[f32], y: &mut [u8], lanes: bool) {
    quantize_row_ref_in(x, y, Kernel::from_lanes(lanes))
}

/// `quantize_row_q4_K_ref` with the sub-block searches on `kernel` (same bytes on every one).
#[inline(always)]
pub fn quantize_row_ref_in(x: &[f32], y: &mut [u8], kernel: Kernel) {
    #[inline(always)]
    fn go<const G: usize>(x: [&[f32]; G], b: [&mut BlockQ4K; G], kernel: Kernel) {
        let mut l = [[0u8; QK_K]; G];
        let s = ref_scales(x, 15, -1.0, 20, &mut l, kernel);
        for (g, b) in b.into_iter().enumerate() {
            let (ls, lm, d, dmin) = s[g];
            encode(x[g], b, ls, lm, d, dmin, &mut l[g]);
        }
    }
    let blocks: &mut [BlockQ4K] = bytemuck::cast_slice_mut(y);
    by_pairs!(x, blocks, kernel, |_i, xs, bs| go(xs, bs, kernel));
}

/// `quantize_row_q4_K_impl` with importance weights; `lanes` as in [`quantize_row_ref_with`].
pub fn quantize_row_imatrix_with(x: &[f32], y: &mut [u8], qw: &[f32], lanes: bool) {
    quantize_row_imatrix_in(x, y, qw, Kernel::from_lanes(lanes))
}

/// `quantize_row_q4_K_impl` with the sub-block searches on `kernel` (same bytes on every one).
#[inline(always)]
pub fn quantize_row_imatrix_in(x: &[f32], y: &mut [u8], qw: &[f32], kernel: Kernel) {
    #[inline(always)]
    fn go<const G: usize>(x: [&[f32]; G], qw: &[f32], b: [&mut BlockQ4K; G], kernel: Kernel) {
        let mut l = [[0u8; QK_K]; G];
        let s = imatrix_scales(x, qw, 15, &mut l, kernel);
        for (g, b) in b.into_iter().enumerate() {
            let (ls, lm, d, dmin) = s[g];
            encode(x[g], b, ls, lm, d, dmin, &mut l[g]);
        }
    }
    let blocks: &mut [BlockQ4K] = bytemuck::cast_slice_mut(y);
    by_pairs!(x, blocks, kernel, |i, xs, bs| go(
        xs,
        &qw[QK_K * i..],
        bs,
        kernel
    ));
}

/// `quantize_row_q4_K_ref` (fast path: sub-blocks in lanes, built for AVX2 when the CPU has it).
pub fn quantize_row_ref(x: &[f32], y: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if quantize_row_ref_avx2(x, y) {
        return;
    }
    quantize_row_ref_in(x, y, Kernel::Lanes)
}

/// `quantize_row_q4_K_impl` (fast path: sub-blocks in lanes, built for AVX2 when the CPU has it).
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

/// `dequantize_row_q4_K`.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    let blocks: &[BlockQ4K] = bytemuck::cast_slice(x);
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        let min = f16_le(b.dmin);
        for k in 0..QK_K / 64 {
            let q = &b.qs[32 * k..32 * k + 32];
            let (sc, m) = get_scale_min_k4(2 * k, &b.scales);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = get_scale_min_k4(2 * k + 1, &b.scales);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            let yk = &mut y[64 * k..64 * k + 64];
            for l in 0..32 {
                yk[l] = d1 * (q[l] & 0xf) as f32 - m1;
                yk[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}
/// Q4_K in the registry.
pub struct Q4K;

impl crate::quant::BlockFormat for Q4K {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::Q4K;
    const BLOCK: usize = super::QK_K;
    type Block = BlockQ4K;
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
