//! Q2_K: 256 values as 2-bit levels in 16 sub-blocks of 16, each with a 4-bit
//! scale and 4-bit min, plus f16 super-scales `d` and `dmin` (84 bytes).
//! Mirrors ggml's `quantize_row_q2_K_ref`, `quantize_row_q2_K_impl` and `dequantize_row_q2_K`.

use super::{pack_2bit, QK_K};
use crate::quant::float::{f16_le, to_f16_le};
use crate::quant::lanes::{untranspose, Kernel, LANES};
use crate::quant::search::{clamp_i, make_qkx_quants, make_qp_quants, nearest_int, sum_sq, Qkx};
use bytemuck::{Pod, Zeroable};

/// ggml's `block_q2_K`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ2K {
    /// Per sub-block of 16: the 4-bit scale level (low nibble) and 4-bit minimum level (high nibble).
    pub scales: [u8; QK_K / 16],
    /// 256 2-bit levels, four per byte.
    pub qs: [u8; QK_K / 4],
    /// The super-scale of the scale levels, f16 (little-endian bytes).
    pub d: [u8; 2],
    /// The super-scale of the minimum levels, f16 (little-endian bytes).
    pub dmin: [u8; 2],
}

/// Final levels from the stored scales (both variants end with this).
fn requantize(x: &[f32], b: &BlockQ2K, dm: f32, mm: f32, l: &mut [u8; QK_K]) {
    for j in 0..QK_K / 16 {
        let d = dm * (b.scales[j] & 0xf) as f32;
        if d == 0.0 {
            continue;
        }
        let m = mm * (b.scales[j] >> 4) as f32;
        for ii in 0..16 {
            let v = nearest_int((x[16 * j + ii] + m) / d);
            l[16 * j + ii] = clamp_i(v, 0, 3) as u8;
        }
    }
}

/// The 16 sub-block searches (`make_qkx2_quants` or `make_qkx3_quants` on 16 values with
/// weights `w`), one by one as ggml runs them or, with `lanes`, 8 side by side on
/// [`Kernel::best`] (same results).
#[allow(clippy::too_many_arguments)]
fn sub_scales(
    x: &[f32],
    w: &[f32; QK_K],
    l: &mut [u8; QK_K],
    which: Qkx,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
    lanes: bool,
) -> ([f32; QK_K / 16], [f32; QK_K / 16]) {
    let mut scales = [0f32; QK_K / 16];
    let mut mins = [0f32; QK_K / 16];
    let kernel = Kernel::fast(lanes);
    if kernel.lanes() {
        let mut xt = [[[0f32; LANES]; 16]; 2];
        let mut wt = [[[0f32; LANES]; 16]; 2];
        for g in 0..2 {
            for k in 0..LANES {
                for i in 0..16 {
                    xt[g][i][k] = x[128 * g + 16 * k + i];
                    wt[g][i][k] = w[128 * g + 16 * k + i];
                }
            }
        }
        let mut lt = [[[0u8; LANES]; 16]; 2];
        let (sc, mn) = kernel.qkx_x8(
            which,
            3,
            xt.each_ref(),
            wt.each_ref(),
            lt.each_mut(),
            rmin,
            rdelta,
            nstep,
            use_mad,
        );
        for g in 0..2 {
            scales[8 * g..8 * g + 8].copy_from_slice(&sc[g]);
            mins[8 * g..8 * g + 8].copy_from_slice(&mn[g]);
            untranspose(&lt[g], &mut l[128 * g..128 * g + 128]);
        }
    } else {
        let mut laux = [0u8; 16];
        for j in 0..QK_K / 16 {
            (scales[j], mins[j]) = make_qkx_quants(
                which,
                3,
                &x[16 * j..16 * j + 16],
                &w[16 * j..16 * j + 16],
                &mut l[16 * j..16 * j + 16],
                &mut laux,
                rmin,
                rdelta,
                nstep,
                use_mad,
            );
        }
    }
    (scales, mins)
}

/// `quantize_row_q2_K_ref` (fast path).
pub fn quantize_row_ref(x: &[f32], y: &mut [u8]) {
    quantize_row_ref_with(x, y, true)
}

/// `quantize_row_q2_K_impl` with importance weights (fast path).
pub fn quantize_row_imatrix(x: &[f32], y: &mut [u8], qw: &[f32]) {
    quantize_row_imatrix_with(x, y, qw, true)
}

/// `quantize_row_q2_K_ref`; `lanes` as in `sub_scales`.
pub fn quantize_row_ref_with(x: &[f32], y: &mut [u8], lanes: bool) {
    let blocks: &mut [BlockQ2K] = bytemuck::cast_slice_mut(y);
    let mut l = [0u8; QK_K];
    let q4scale = 15.0f32;
    for (x, b) in x.chunks_exact(QK_K).zip(blocks) {
        let w: [f32; QK_K] = std::array::from_fn(|i| x[i].abs());
        let (scales, mins) = sub_scales(x, &w, &mut l, Qkx::V2, -0.5, 0.1, 15, true, lanes);
        let mut max_scale = 0.0f32;
        let mut max_min = 0.0f32;
        for j in 0..QK_K / 16 {
            if scales[j] > max_scale {
                max_scale = scales[j];
            }
            if mins[j] > max_min {
                max_min = mins[j];
            }
        }
        if max_scale > 0.0 {
            let iscale = q4scale / max_scale;
            for j in 0..QK_K / 16 {
                b.scales[j] = nearest_int(iscale * scales[j]) as u8;
            }
            b.d = to_f16_le(max_scale / q4scale);
        } else {
            b.scales = [0; QK_K / 16];
            b.d = to_f16_le(0.0);
        }
        if max_min > 0.0 {
            let iscale = q4scale / max_min;
            for j in 0..QK_K / 16 {
                let lm = nearest_int(iscale * mins[j]);
                b.scales[j] |= (lm << 4) as u8;
            }
            b.dmin = to_f16_le(max_min / q4scale);
        } else {
            b.dmin = to_f16_le(0.0);
        }
        requantize(x, b, f16_le(b.d), f16_le(b.dmin), &mut l);
        pack_2bit(&l, &mut b.qs);
    }
}

/// `quantize_row_q2_K_impl` with importance weights; `lanes` as in `sub_scales`.
pub fn quantize_row_imatrix_with(x: &[f32], y: &mut [u8], qw: &[f32], lanes: bool) {
    let blocks: &mut [BlockQ2K] = bytemuck::cast_slice_mut(y);
    let mut l = [0u8; QK_K];
    let mut ls = [0u8; QK_K / 16];
    let mut lm = [0u8; QK_K / 16];
    for ((x, qw), b) in x.chunks_exact(QK_K).zip(qw.chunks_exact(QK_K)).zip(blocks) {
        let sigma2 = sum_sq(x) / QK_K as f32;
        let w: [f32; QK_K] = std::array::from_fn(|i| qw[i] * (sigma2 + x[i] * x[i]).sqrt());
        let mut sw = [0f32; QK_K / 16];
        for j in 0..QK_K / 16 {
            for &v in &w[16 * j..16 * j + 16] {
                sw[j] += v;
            }
        }
        let (scales, mins) = sub_scales(x, &w, &mut l, Qkx::V3, -0.9, 0.05, 36, false, lanes);
        let dm = make_qp_quants(15, &scales, &mut ls, &sw);
        let mm = make_qp_quants(15, &mins, &mut lm, &sw);
        b.d = to_f16_le(dm);
        b.dmin = to_f16_le(mm);
        for j in 0..QK_K / 16 {
            b.scales[j] = ls[j] | (lm[j] << 4);
        }
        requantize(x, b, f16_le(b.d), f16_le(b.dmin), &mut l);
        pack_2bit(&l, &mut b.qs);
    }
}

/// `dequantize_row_q2_K`.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    let blocks: &[BlockQ2K] = bytemuck::cast_slice(x);
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        let min = f16_le(b.dmin);
        let mut out = 0;
        let mut is = 0;
        for n in (0..QK_K).step_by(128) {
            let q = &b.qs[n / 4..n / 4 + 32];
            for shift in [0, 2, 4, 6] {
                for half in 0..2 {
                    let sc = b.scales[is];
                    is += 1;
                    let dl = d * (sc & 0xf) as f32;
                    let ml = min * (sc >> 4) as f32;
                    for l in 0..16 {
                        y[out] = dl * ((q[l + 16 * half] >> shift) & 3) as f32 - ml;
                        out += 1;
                    }
                }
            }
        }
    }
}
/// Q2_K in the registry.
pub struct Q2K;

impl crate::quant::BlockFormat for Q2K {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::Q2K;
    const BLOCK: usize = super::QK_K;
    type Block = BlockQ2K;
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::Q8K;
    const F16_SCALES: &'static [usize] = &[80, 82];
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
