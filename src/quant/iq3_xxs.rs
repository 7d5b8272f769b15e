//! IQ3_XXS (3.0625 bits per weight): super-blocks of 256 as 8 groups of 32, each group eight
//! 4-value points of the 256-point lattice [`iq_grid::iq3xxs`] (one byte each), then per group
//! a u32 of four 7-bit sign patterns and a 4-bit scale; one f16 super-scale (98 bytes).
//!
//! Mirrors ggml's `quantize_row_iq3_xxs_impl` for grid size 256 (`quantize_iq3_xxs` with
//! importance weights, `quantize_row_iq3_xxs_ref` without: then the weights are `x^2`) and
//! `dequantize_row_iq3_xxs`.

use super::float::{f16_le, to_f16_le};
use super::iq_grid::{self, even_signs, index_of, ksigns, search_scale, ScaleSteps};
use super::search::nearest_int;
use bytemuck::{Pod, Zeroable};

const QK_K: usize = 256;
const K_MAX_Q: i32 = 8;
/// ggml's `GROUP_MAX_EPS_IQ3_XXS`.
const GROUP_MAX_EPS: f32 = 1e-8;

/// ggml's `iq3xxs_grid` values of level `l`: `4 (2l + 1)`, but 62 for the top level.
const VALUES: [f32; 8] = [4.0, 12.0, 20.0, 28.0, 36.0, 44.0, 52.0, 62.0];

/// ggml's `block_iq3_xxs`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockIq3Xxs {
    /// The super-block scale, an f16's bytes.
    pub d: [u8; 2],
    /// The grid indices (a byte per 4 values), then per group of 32 a little-endian u32
    /// of four 7-bit sign indices and the 4-bit scale.
    pub qs: [u8; 3 * QK_K / 8],
}

crate::quant::simd::avx2_row!(
    /// `quantize_row_iq3_xxs_impl(256, ...)`.
    quantize_row, quantize_row_avx2, quantize_row_portable, Option<&[f32]>
);

/// The row as the portable build compiles it (the fallback, and the twin tests compare).
#[inline(always)]
pub(crate) fn quantize_row_portable(x: &[f32], y: &mut [u8], quant_weights: Option<&[f32]>) {
    let grid = iq_grid::iq3xxs();
    let blocks: &mut [BlockIq3Xxs] = bytemuck::cast_slice_mut(y);
    for (ibl, (xbl, b)) in x.chunks_exact(QK_K).zip(blocks).enumerate() {
        let mut scales = [0.0f32; QK_K / 32];
        // Grid indices (8 per group), then the groups' scales and signs.
        let mut q3 = [0u8; QK_K / 4];
        let mut scales_and_signs = [0u32; QK_K / 32];
        let mut max_scale = 0.0f32;
        let mut sumx2 = 0.0f32;
        for &v in xbl {
            sumx2 += v * v;
        }
        let sigma2 = 2.0 * sumx2 / QK_K as f32;
        for ib in 0..QK_K / 32 {
            let xb = &xbl[32 * ib..32 * ib + 32];
            let mut weight = [0.0f32; 32];
            let mut waux = [0.0f32; 32];
            let mut xval = [0.0f32; 32];
            let mut block_signs = [0u8; 4];
            match quant_weights {
                Some(qw) => {
                    let qw = &qw[QK_K * ibl + 32 * ib..][..32];
                    for i in 0..32 {
                        weight[i] = qw[i] * (sigma2 + xb[i] * xb[i]).sqrt();
                    }
                }
                None => {
                    for i in 0..32 {
                        weight[i] = xb[i] * xb[i];
                    }
                }
            }
            for i in 0..32 {
                waux[i] = weight[i].sqrt();
            }
            for k in 0..4 {
                let r = 8 * k..8 * k + 8;
                block_signs[k] = even_signs(&xb[r.clone()], &weight[r.clone()], &mut xval[r]);
            }
            let mut max = xval[0];
            for &v in &xval[1..] {
                max = if max > v { max } else { v };
            }
            let mut l = [0i8; 32];
            if max < GROUP_MAX_EPS {
                scales[ib] = 0.0;
                continue;
            }
            let steps = ScaleSteps {
                steps: 15,
                base: 15.0,
                step: 0.2,
                resnap_all: false,
            };
            let mut scale = search_scale(grid, K_MAX_Q, &steps, &xval, &waux, &weight, max, &mut l);
            if scale < 0.0 {
                scale = -scale;
                for s in block_signs.iter_mut() {
                    *s = !*s & 127;
                }
            }
            for k in 0..8 {
                q3[8 * ib + k] = index_of(grid, &l[4 * k..4 * k + 4]) as u8;
            }
            scales_and_signs[ib] = block_signs[0] as u32
                | (block_signs[1] as u32) << 7
                | (block_signs[2] as u32) << 14
                | (block_signs[3] as u32) << 21;
            scales[ib] = scale;
            max_scale = if max_scale > scale { max_scale } else { scale };
        }
        if max_scale == 0.0 {
            b.d = to_f16_le(0.0);
            b.qs = [0; 3 * QK_K / 8];
            continue;
        }
        let d = max_scale / 31.0;
        // ggml's "small improvement via this fudge factor".
        b.d = to_f16_le(d * 1.0125);
        let id = 1.0 / d;
        for ib in 0..QK_K / 32 {
            let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 15);
            scales_and_signs[ib] |= (l as u32) << 28;
        }
        b.qs[..QK_K / 4].copy_from_slice(&q3);
        for (o, v) in b.qs[QK_K / 4..].chunks_exact_mut(4).zip(scales_and_signs) {
            o.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// `dequantize_row_iq3_xxs`.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    let grid = iq_grid::iq3xxs();
    let blocks: &[BlockIq3Xxs] = bytemuck::cast_slice(x);
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        for ib32 in 0..QK_K / 32 {
            let qs = &b.qs[8 * ib32..8 * ib32 + 8];
            let s = &b.qs[QK_K / 4 + 4 * ib32..][..4];
            let aux32 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            let db = d * (0.5 + (aux32 >> 28) as f32) * 0.5;
            for l in 0..4 {
                let signs = ksigns(((aux32 >> (7 * l)) & 127) as u8);
                for (h, &gi) in qs[2 * l..2 * l + 2].iter().enumerate() {
                    let point = &grid.points[gi as usize];
                    for j in 0..4 {
                        let v = db * VALUES[((point[j] - 1) / 2) as usize];
                        let at = 4 * h + j;
                        yb[32 * ib32 + 8 * l + at] = if signs & (1 << at) != 0 { -v } else { v };
                    }
                }
            }
        }
    }
}

/// IQ3_XXS in the registry.
pub struct IQ3XXS;

impl crate::quant::BlockFormat for IQ3XXS {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::IQ3XXS;
    const BLOCK: usize = QK_K;
    type Block = BlockIq3Xxs;
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
