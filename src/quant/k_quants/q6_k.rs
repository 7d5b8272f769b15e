//! Q6_K: 256 values as 6-bit levels (low nibbles in `ql`, 2 high bits in `qh`) in 16
//! sub-blocks of 16 with signed 8-bit scales and one f16 super-scale (210 bytes).
//! Mirrors ggml's `quantize_row_q6_K_ref`, `quantize_row_q6_K_impl` and `dequantize_row_q6_K`.

use super::QK_K;
use crate::quant::float::{f16_le, to_f16_le};
use crate::quant::lanes::{untranspose, Kernel, LANES};
use crate::quant::search::{clamp_i, make_qx_quants, nearest_int, GROUP_MAX_EPS};
use bytemuck::{Pod, Zeroable};

/// ggml's `block_q6_K`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ6K {
    /// The low 4 bits of the 256 levels, two per byte.
    pub ql: [u8; QK_K / 2],
    /// The high 2 bits of the 256 levels, four per byte.
    pub qh: [u8; QK_K / 4],
    /// 16 signed 8-bit scale levels, one per sub-block of 16.
    pub scales: [u8; QK_K / 16],
    /// The super-scale, f16 (little-endian bytes).
    pub d: [u8; 2],
}

/// One super-block; `qw` are the importance weights of its 256 columns, if any.
#[inline(always)]
fn quantize_block(x: &[f32], b: &mut BlockQ6K, qw: Option<&[f32]>, kernel: Kernel) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    if kernel.lanes() {
        // Two groups of 8 sub-blocks of 16, side by side (same results as the loop below).
        let mut xt = [[[0f32; LANES]; 16]; 2];
        let mut wt = [[[0f32; LANES]; 16]; 2];
        for g in 0..2 {
            for k in 0..LANES {
                let o = 128 * g + 16 * k;
                for i in 0..16 {
                    xt[g][i][k] = x[o + i];
                    wt[g][i][k] = match qw {
                        Some(q) => q[o + i],
                        None => x[o + i] * x[o + i],
                    };
                }
            }
        }
        let mut lt = [[[0i8; LANES]; 16]; 2];
        let sc = kernel.qx_x8(32, xt.each_ref(), wt.each_ref(), lt.each_mut());
        for g in 0..2 {
            scales[8 * g..8 * g + 8].copy_from_slice(&sc[g]);
            untranspose(&lt[g], &mut l[128 * g..128 * g + 128]);
        }
    } else {
        for ib in 0..QK_K / 16 {
            let w = qw.map(|q| &q[16 * ib..16 * ib + 16]);
            scales[ib] = make_qx_quants(
                32,
                &x[16 * ib..16 * ib + 16],
                &mut l[16 * ib..16 * ib + 16],
                1,
                w,
            );
        }
    }
    for ib in 0..QK_K / 16 {
        let scale = scales[ib];
        let abs_scale = scale.abs();
        if abs_scale > max_abs_scale {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        *b = BlockQ6K::zeroed();
        b.d = to_f16_le(0.0);
        return;
    }
    let iscale = -128.0 / max_scale;
    b.d = to_f16_le(1.0 / iscale);
    for ib in 0..QK_K / 16 {
        b.scales[ib] = nearest_int(iscale * scales[ib]).min(127) as u8;
    }
    let d_all = f16_le(b.d);
    for j in 0..QK_K / 16 {
        let d = d_all * (b.scales[j] as i8) as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let v = clamp_i(nearest_int(x[16 * j + ii] / d), -32, 31);
            l[16 * j + ii] = (v + 32) as i8;
        }
    }
    let l: [u8; QK_K] = l.map(|v| v as u8);
    for (k, j) in (0..QK_K).step_by(128).enumerate() {
        let ql = &mut b.ql[64 * k..64 * k + 64];
        let qh = &mut b.qh[32 * k..32 * k + 32];
        for i in 0..32 {
            let q1 = l[j + i] & 0xf;
            let q2 = l[j + i + 32] & 0xf;
            let q3 = l[j + i + 64] & 0xf;
            let q4 = l[j + i + 96] & 0xf;
            ql[i] = q1 | (q3 << 4);
            ql[i + 32] = q2 | (q4 << 4);
            qh[i] = (l[j + i] >> 4)
                | ((l[j + i + 32] >> 4) << 2)
                | ((l[j + i + 64] >> 4) << 4)
                | ((l[j + i + 96] >> 4) << 6);
        }
    }
}

/// `quantize_row_q6_K_ref` (fast path: sub-blocks in lanes, built for AVX2 when the CPU has it).
pub fn quantize_row_ref(x: &[f32], y: &mut [u8]) {
    quantize_row_fast(x, y, None)
}

/// `quantize_row_q6_K_impl` with importance weights (used as they are, no sigma2 term; fast path).
pub fn quantize_row_imatrix(x: &[f32], y: &mut [u8], qw: &[f32]) {
    quantize_row_fast(x, y, Some(qw))
}

/// The fast path of both: lanes, in the AVX2 build when the CPU has AVX2.
pub fn quantize_row_fast(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    #[cfg(target_arch = "x86_64")]
    if quantize_row_avx2(x, y, qw) {
        return;
    }
    quantize_row_in(x, y, qw, Kernel::Lanes)
}

crate::quant::simd::avx2_build!(
    /// [`quantize_row_in`] on [`Kernel::best`], the rest of the block also built for AVX2
    /// (same bytes; `false` without AVX2).
    quantize_row_avx2(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) => quantize_row_in(x, y, qw, Kernel::best())
);

/// `quantize_row_q6_K_ref` (`qw` None) or `quantize_row_q6_K_impl`; `lanes` runs the sub-block
/// searches 8 side by side ([`crate::quant::lanes`], same bytes), otherwise one by one as ggml.
pub fn quantize_row_with(x: &[f32], y: &mut [u8], qw: Option<&[f32]>, lanes: bool) {
    quantize_row_in(x, y, qw, Kernel::from_lanes(lanes))
}

/// [`quantize_row_with`] with the sub-block searches on `kernel` (same bytes on every one).
#[inline(always)]
pub fn quantize_row_in(x: &[f32], y: &mut [u8], qw: Option<&[f32]>, kernel: Kernel) {
    let blocks: &mut [BlockQ6K] = bytemuck::cast_slice_mut(y);
    for (i, (x, b)) in x.chunks_exact(QK_K).zip(blocks).enumerate() {
        quantize_block(x, b, qw.map(|q| &q[QK_K * i..QK_K * (i + 1)]), kernel);
    }
}

/// `dequantize_row_q6_K`.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    let blocks: &[BlockQ6K] = bytemuck::cast_slice(x);
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        for k in 0..QK_K / 128 {
            let ql = &b.ql[64 * k..64 * k + 64];
            let qh = &b.qh[32 * k..32 * k + 32];
            let sc = &b.scales[8 * k..8 * k + 8];
            let yk = &mut y[128 * k..128 * k + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                yk[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                yk[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                yk[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                yk[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
            }
        }
    }
}
/// Q6_K in the registry.
pub struct Q6K;

impl crate::quant::BlockFormat for Q6K {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::Q6K;
    const BLOCK: usize = super::QK_K;
    type Block = BlockQ6K;
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::Q8K;
    const F16_SCALES: &'static [usize] = &[208];
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
