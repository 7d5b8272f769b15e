//! IQ2_S (2.5625 bits per weight): super-blocks of 256 as 16 groups of 16, each group two
//! 8-value points of the 1024-point lattice [`iq_grid::iq2s`] (10-bit index: a byte plus two
//! bits in `qh`) with all 8 of their signs in a byte, and a 4-bit group scale; one f16
//! super-scale (82 bytes).
//!
//! Mirrors ggml's `quantize_row_iq2_s_impl` (importance weights optional: without them a value
//! weighs `sigma2 / 4 + x^2`) and `dequantize_row_iq2_s`. The group search is IQ2_XS's
//! ([`search_scale`]); unlike IQ2_XS every sign is stored, so no parity fix-up.

use super::float::{f16_le, to_f16_le};
use super::iq2_xxs::VALUES;
use super::iq_grid::{self, index_of, search_scale, ScaleSteps};
use super::search::nearest_int;
use bytemuck::{Pod, Zeroable};

const QK_K: usize = 256;
const K_MAX_Q: i32 = 3;
/// ggml's `GROUP_MAX_EPS_IQ2_S`.
const GROUP_MAX_EPS: f32 = 1e-8;

/// ggml's `block_iq2_s`: `qs` holds the 32 grid-index low bytes, then the 32 sign bytes.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockIq2S {
    /// The super-block scale, an f16's bytes.
    pub d: [u8; 2],
    /// The grid indices' low bytes (one per 8 values), then the sign bytes.
    pub qs: [u8; QK_K / 4],
    /// Per group of 32, the four indices' 2-bit highs.
    pub qh: [u8; QK_K / 32],
    /// Per group of 32, two 4-bit scales (one per 16 values).
    pub scales: [u8; QK_K / 32],
}

crate::quant::simd::avx2_row!(
    /// `quantize_row_iq2_s_impl`, with importance weights `quant_weights` or without.
    quantize_row, quantize_row_avx2, quantize_row_portable, Option<&[f32]>
);

/// The row as the portable build compiles it (the fallback, and the twin tests compare).
#[inline(always)]
pub(crate) fn quantize_row_portable(x: &[f32], y: &mut [u8], quant_weights: Option<&[f32]>) {
    let grid = iq_grid::iq2s();
    let blocks: &mut [BlockIq2S] = bytemuck::cast_slice_mut(y);
    let steps = ScaleSteps {
        steps: 9,
        base: 5.0,
        step: 0.1,
        resnap_all: false,
    };
    for (ibl, (xbl, b)) in x.chunks_exact(QK_K).zip(blocks).enumerate() {
        *b = BlockIq2S::zeroed();
        let mut scales = [0.0f32; QK_K / 16];
        let mut max_scale = 0.0f32;
        let mut sumx2 = 0.0f32;
        for &v in xbl {
            sumx2 += v * v;
        }
        let sigma2 = 2.0 * sumx2 / QK_K as f32;
        for ib in 0..QK_K / 16 {
            let xb = &xbl[16 * ib..16 * ib + 16];
            let mut weight = [0.0f32; 16];
            let mut waux = [0.0f32; 16];
            let mut xval = [0.0f32; 16];
            match quant_weights {
                Some(qw) => {
                    let qw = &qw[QK_K * ibl + 16 * ib..][..16];
                    for i in 0..16 {
                        weight[i] = qw[i] * (sigma2 + xb[i] * xb[i]).sqrt();
                    }
                }
                None => {
                    for i in 0..16 {
                        weight[i] = 0.25 * sigma2 + xb[i] * xb[i];
                    }
                }
            }
            for i in 0..16 {
                waux[i] = weight[i].sqrt();
            }
            let mut block_signs = [0u8; 2];
            for i in 0..16 {
                if xb[i] >= 0.0 {
                    xval[i] = xb[i];
                } else {
                    xval[i] = -xb[i];
                    block_signs[i / 8] |= 1 << (i % 8);
                }
            }
            let mut max = xval[0];
            for &v in &xval[1..] {
                max = if max > v { max } else { v };
            }
            if max < GROUP_MAX_EPS {
                scales[ib] = 0.0;
                continue;
            }
            let mut l = [0i8; 16];
            let mut scale = search_scale(grid, K_MAX_Q, &steps, &xval, &waux, &weight, max, &mut l);
            if scale < 0.0 {
                scale = -scale;
                for s in block_signs.iter_mut() {
                    *s = !*s;
                }
            }
            for k in 0..2 {
                let gi = index_of(grid, &l[8 * k..8 * k + 8]);
                let i8 = 2 * ib + k;
                b.qs[i8] = (gi & 255) as u8;
                b.qh[i8 / 4] |= ((gi >> 8) << (2 * (i8 % 4))) as u8;
                b.qs[QK_K / 8 + i8] = block_signs[k];
            }
            scales[ib] = scale;
            max_scale = if max_scale > scale { max_scale } else { scale };
        }
        if max_scale == 0.0 {
            continue;
        }
        let d = max_scale / 31.0;
        b.d = to_f16_le(d * 0.9875);
        let id = 1.0 / d;
        for ib in 0..QK_K / 16 {
            let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 15) as u8;
            if ib % 2 == 0 {
                b.scales[ib / 2] = l;
            } else {
                b.scales[ib / 2] |= l << 4;
            }
        }
    }
}

/// `dequantize_row_iq2_s`.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    let grid = iq_grid::iq2s();
    let blocks: &[BlockIq2S] = bytemuck::cast_slice(x);
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        for ib32 in 0..QK_K / 32 {
            let db = [
                d * (0.5 + (b.scales[ib32] & 0xf) as f32) * 0.25,
                d * (0.5 + (b.scales[ib32] >> 4) as f32) * 0.25,
            ];
            for l in 0..4 {
                let g = 4 * ib32 + l;
                let idx = b.qs[g] as usize | ((b.qh[ib32] as usize) << (8 - 2 * l) & 0x300);
                let point = &grid.points[idx];
                let signs = b.qs[QK_K / 8 + g];
                for j in 0..8 {
                    let v = db[l / 2] * VALUES[((point[j] - 1) / 2) as usize];
                    yb[8 * g + j] = if signs & (1 << j) != 0 { -v } else { v };
                }
            }
        }
    }
}

/// IQ2_S in the registry.
pub struct IQ2S;

impl crate::quant::BlockFormat for IQ2S {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::IQ2S;
    const BLOCK: usize = QK_K;
    type Block = BlockIq2S;
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
