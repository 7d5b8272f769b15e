//! IQ3_S (3.4375 bits per weight): super-blocks of 256 as 8 groups of 32, each group eight
//! 4-value points of the 512-point lattice [`iq_grid::iq3s`] (low 8 bits in `qs`, the ninth in
//! `qh`), 32 explicit sign bits, and a 4-bit odd scale `1 + 2s` per group; one f16 super-scale
//! (110 bytes).
//!
//! Mirrors ggml's `quantize_row_iq3_s_impl` with block size 32 (`quantize_iq3_s`, with or
//! without importance weights; without, they are `x^2`) and `dequantize_row_iq3_s`. As in
//! ggml, a group whose largest magnitude is zero writes no grid indices or signs, and the
//! groups after it write theirs that much earlier in `qs` and `signs`.

use super::float::{f16_le, to_f16_le};
use super::iq_grid::{self, index_of, search_scale, ScaleSteps};
use super::search::nearest_int;
use bytemuck::{Pod, Zeroable};

const QK_K: usize = 256;
const K_MAX_Q: i32 = 8;
const BS: usize = 32;

/// ggml's `block_iq3_s`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockIq3S {
    /// The super-block scale, an f16's bytes.
    pub d: [u8; 2],
    /// The grid indices' low bytes (one per 4 values).
    pub qs: [u8; QK_K / 4],
    /// The indices' high bits, one per 4 values.
    pub qh: [u8; QK_K / 32],
    /// One sign bit per value.
    pub signs: [u8; QK_K / 8],
    /// Per 64 values, two 4-bit scales (one per 32).
    pub scales: [u8; QK_K / 64],
}

crate::quant::simd::avx2_row!(
    /// `quantize_row_iq3_s_impl(32, ...)`.
    quantize_row, quantize_row_avx2, quantize_row_portable, Option<&[f32]>
);

/// The row as the portable build compiles it (the fallback, and the twin tests compare).
#[inline(always)]
pub(crate) fn quantize_row_portable(x: &[f32], y: &mut [u8], quant_weights: Option<&[f32]>) {
    let grid = iq_grid::iq3s();
    let blocks: &mut [BlockIq3S] = bytemuck::cast_slice_mut(y);
    for (ibl, (xbl, b)) in x.chunks_exact(QK_K).zip(blocks).enumerate() {
        *b = BlockIq3S::zeroed();
        b.d = to_f16_le(0.0);
        let (mut qs_at, mut signs_at) = (0, 0);
        let mut scales = [0.0f32; QK_K / BS];
        let mut max_scale = 0.0f32;
        let mut sumx2 = 0.0f32;
        for &v in xbl {
            sumx2 += v * v;
        }
        let sigma2 = 2.0 * sumx2 / QK_K as f32;
        for ib in 0..QK_K / BS {
            let xb = &xbl[BS * ib..BS * ib + BS];
            let mut weight = [0.0f32; BS];
            let mut waux = [0.0f32; BS];
            let mut xval = [0.0f32; BS];
            let mut block_signs = [0u8; BS / 8];
            match quant_weights {
                Some(qw) => {
                    let qw = &qw[QK_K * ibl + BS * ib..][..BS];
                    for i in 0..BS {
                        weight[i] = qw[i] * (sigma2 + xb[i] * xb[i]).sqrt();
                    }
                }
                None => {
                    for i in 0..BS {
                        weight[i] = xb[i] * xb[i];
                    }
                }
            }
            for i in 0..BS {
                waux[i] = weight[i].sqrt();
            }
            for k in 0..BS / 8 {
                let mut s = 0u8;
                for i in 0..8 {
                    let v = xb[8 * k + i];
                    if v >= 0.0 {
                        xval[8 * k + i] = v;
                    } else {
                        xval[8 * k + i] = -v;
                        s |= 1 << i;
                    }
                }
                block_signs[k] = s;
            }
            let mut max = xval[0];
            for &v in &xval[1..] {
                max = if max > v { max } else { v };
            }
            let mut l = [0i8; BS];
            if max == 0.0 {
                scales[ib] = 0.0;
                continue;
            }
            let steps = ScaleSteps {
                steps: 9,
                base: 15.0,
                step: 0.2,
                resnap_all: true,
            };
            let mut scale = search_scale(grid, K_MAX_Q, &steps, &xval, &waux, &weight, max, &mut l);
            if scale < 0.0 {
                scale = -scale;
                for s in block_signs.iter_mut() {
                    *s = !*s;
                }
            }
            for k in 0..BS / 4 {
                let gi = index_of(grid, &l[4 * k..4 * k + 4]);
                b.qs[qs_at + k] = (gi & 255) as u8;
                let bit = ib * (BS / 4) + k;
                b.qh[bit / 8] |= ((gi >> 8) << (bit % 8)) as u8;
            }
            qs_at += BS / 4;
            b.signs[signs_at..signs_at + BS / 8].copy_from_slice(&block_signs);
            signs_at += BS / 8;
            scales[ib] = scale;
            max_scale = if max_scale > scale { max_scale } else { scale };
        }
        if max_scale == 0.0 {
            continue;
        }
        let d = max_scale / 31.0;
        b.d = to_f16_le(d * 1.033);
        let id = 1.0 / d;
        for ib in (0..QK_K / BS).step_by(2) {
            let l1 = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 15);
            let l2 = nearest_int(0.5 * (id * scales[ib + 1] - 1.0)).clamp(0, 15);
            b.scales[ib / 2] = (l1 | (l2 << 4)) as u8;
        }
    }
}

/// `dequantize_row_iq3_s`.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    let grid = iq_grid::iq3s();
    let blocks: &[BlockIq3S] = bytemuck::cast_slice(x);
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        for ib32 in 0..QK_K / 32 {
            let sc = b.scales[ib32 / 2] >> (4 * (ib32 % 2)) & 0xf;
            let db = d * (1 + 2 * sc as i32) as f32;
            let qs = &b.qs[8 * ib32..8 * ib32 + 8];
            let qh = b.qh[ib32] as usize;
            for l in 0..4 {
                let signs = b.signs[4 * ib32 + l];
                for h in 0..2 {
                    let gi = qs[2 * l + h] as usize | ((qh >> (2 * l + h)) & 1) << 8;
                    let point = &grid.points[gi];
                    for j in 0..4 {
                        // ggml's `iq3s_grid` holds 2l + 1 for level l: the lattice point itself.
                        let v = db * point[j] as f32;
                        let at = 4 * h + j;
                        yb[32 * ib32 + 8 * l + at] = if signs & (1 << at) != 0 { -v } else { v };
                    }
                }
            }
        }
    }
}

/// IQ3_S in the registry.
pub struct IQ3S;

impl crate::quant::BlockFormat for IQ3S {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::IQ3S;
    const BLOCK: usize = QK_K;
    type Block = BlockIq3S;
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::Q8K;
    const F16_SCALES: &'static [usize] = &[0];
    fn quantize(x: &[f32], y: &mut [u8]) {
        quantize_row(x, y, None)
    }
    fn quantize_imatrix(x: &[f32], y: &mut [u8], w: &[f32]) {
        quantize_row(x, y, Some(w))
    }
    fn dequantize(x: &[u8], y: &mut [f32]) {
        dequantize_row(x, y)
    }
}
