//! IQ2_XS (2.3125 bits per weight): super-blocks of 256 as 16 groups of 16, each group two
//! 8-value points of the 512-point lattice [`iq_grid::iq2xs`] stored with their 7 sign bits in
//! one u16 (9 + 7 bits), and a 4-bit group scale; one f16 super-scale (74 bytes).
//!
//! Mirrors ggml's `quantize_row_iq2_xs_impl` (importance weights required, as for IQ2_XXS) and
//! `dequantize_row_iq2_xs`.

use super::float::{f16_le, to_f16_le};
use super::iq2_xxs::VALUES;
use super::iq_grid::{self, even_signs, index_of, ksigns, search_scale, ScaleSteps};
use super::search::{nearest_int, GROUP_MAX_EPS};
use bytemuck::{Pod, Zeroable};

const QK_K: usize = 256;
const K_MAX_Q: i32 = 3;

/// ggml's `block_iq2_xs`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockIq2Xs {
    /// The super-block scale, an f16's bytes.
    pub d: [u8; 2],
    /// Per 8 values a little-endian u16: the 9-bit grid index, then the 7-bit sign index.
    pub qs: [u8; QK_K / 4],
    /// Per group of 32, two 4-bit scales (one per 16 values).
    pub scales: [u8; QK_K / 32],
}

crate::quant::simd::avx2_row!(
    /// `quantize_row_iq2_xs_impl`.
    quantize_row_imatrix, quantize_row_imatrix_avx2, quantize_row_imatrix_portable, &[f32]
);

/// The row as the portable build compiles it (the fallback, and the twin tests compare).
#[inline(always)]
pub(crate) fn quantize_row_imatrix_portable(x: &[f32], y: &mut [u8], quant_weights: &[f32]) {
    let grid = iq_grid::iq2xs();
    let blocks: &mut [BlockIq2Xs] = bytemuck::cast_slice_mut(y);
    for (ibl, (xbl, b)) in x.chunks_exact(QK_K).zip(blocks).enumerate() {
        let mut scales = [0.0f32; QK_K / 16];
        let mut q2 = [0u16; 2 * (QK_K / 16)];
        b.scales = [0; QK_K / 32];
        let mut max_scale = 0.0f32;
        let mut sumx2 = 0.0f32;
        for &v in xbl {
            sumx2 += v * v;
        }
        let sigma2 = sumx2 / QK_K as f32;
        for ib in 0..QK_K / 16 {
            let xb = &xbl[16 * ib..16 * ib + 16];
            let qw = &quant_weights[QK_K * ibl + 16 * ib..][..16];
            let mut weight = [0.0f32; 16];
            let mut waux = [0.0f32; 16];
            let mut xval = [0.0f32; 16];
            let mut block_signs = [0u8; 2];
            for i in 0..16 {
                weight[i] = qw[i] * (sigma2 + xb[i] * xb[i]).sqrt();
                waux[i] = weight[i].sqrt();
            }
            for k in 0..2 {
                let r = 8 * k..8 * k + 8;
                block_signs[k] = even_signs(&xb[r.clone()], &weight[r.clone()], &mut xval[r]);
            }
            let mut max = xval[0];
            for &v in &xval[1..] {
                max = if max > v { max } else { v };
            }
            let mut l = [0i8; 16];
            if max < GROUP_MAX_EPS {
                scales[ib] = 0.0;
                continue;
            }
            let steps = ScaleSteps {
                steps: 9,
                base: 5.0,
                step: 0.1,
                resnap_all: false,
            };
            let mut scale = search_scale(grid, K_MAX_Q, &steps, &xval, &waux, &weight, max, &mut l);
            if scale < 0.0 {
                scale = -scale;
                for s in block_signs.iter_mut() {
                    *s = !*s & 127;
                }
            }
            for k in 0..2 {
                let gi = index_of(grid, &l[8 * k..8 * k + 8]);
                q2[2 * ib + k] = gi as u16 | ((block_signs[k] as u16) << 9);
            }
            scales[ib] = scale;
            max_scale = if max_scale > scale { max_scale } else { scale };
        }
        if max_scale == 0.0 {
            b.d = to_f16_le(0.0);
            b.qs = [0; QK_K / 4];
            continue;
        }
        let d = max_scale / 31.0;
        b.d = to_f16_le(d);
        let id = 1.0 / d;
        for ib in 0..QK_K / 16 {
            let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 15) as u8;
            if ib % 2 == 0 {
                b.scales[ib / 2] = l;
            } else {
                b.scales[ib / 2] |= l << 4;
            }
        }
        for (o, v) in b.qs.chunks_exact_mut(2).zip(q2) {
            o.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// `dequantize_row_iq2_xs`.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    let grid = iq_grid::iq2xs();
    let blocks: &[BlockIq2Xs] = bytemuck::cast_slice(x);
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        for ib32 in 0..QK_K / 32 {
            let db = [
                d * (0.5 + (b.scales[ib32] & 0xf) as f32) * 0.25,
                d * (0.5 + (b.scales[ib32] >> 4) as f32) * 0.25,
            ];
            for l in 0..4 {
                let at = 2 * (4 * ib32 + l);
                let q = u16::from_le_bytes([b.qs[at], b.qs[at + 1]]);
                let point = &grid.points[(q & 511) as usize];
                let signs = ksigns((q >> 9) as u8);
                for j in 0..8 {
                    let v = db[l / 2] * VALUES[((point[j] - 1) / 2) as usize];
                    yb[32 * ib32 + 8 * l + j] = if signs & (1 << j) != 0 { -v } else { v };
                }
            }
        }
    }
}

/// IQ2_XS in the registry.
pub struct IQ2XS;

impl crate::quant::BlockFormat for IQ2XS {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::IQ2XS;
    const BLOCK: usize = QK_K;
    type Block = BlockIq2Xs;
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::Q8K;
    const F16_SCALES: &'static [usize] = &[0];
    const REQUIRES_IMATRIX: bool = true;
    fn quantize(_x: &[f32], _y: &mut [u8]) {
        unreachable!("quant::check_shape refuses IQ2_XS without importance weights")
    }
    fn quantize_imatrix(x: &[f32], y: &mut [u8], w: &[f32]) {
        quantize_row_imatrix(x, y, w)
    }
    fn dequantize(x: &[u8], y: &mut [f32]) {
        dequantize_row(x, y)
    }
}
