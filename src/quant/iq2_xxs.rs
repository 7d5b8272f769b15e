//! IQ2_XXS (2.0625 bits per weight): super-blocks of 256 as 8 groups of 32, each group four
//! 8-value points of the 256-point lattice [`iq_grid::iq2xxs`] (one byte each), four 7-bit
//! sign patterns (the eighth sign makes the count even) and a 4-bit group scale, under one f16
//! super-scale (66 bytes).
//!
//! Mirrors ggml's `quantize_row_iq2_xxs_impl` (importance weights required: ggml asserts
//! without them, see `ggml_quantize_requires_imatrix`) and `dequantize_row_iq2_xxs`.

use super::float::{f16_le, to_f16_le};
use super::iq_grid::{self, even_signs, index_of, ksigns, snap, sums};
use super::search::{make_qp_quants, nearest_int, GROUP_MAX_EPS};
use bytemuck::{Pod, Zeroable};

const QK_K: usize = 256;
const K_MAX_Q: i32 = 3;

/// ggml's `block_iq2_xxs`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockIq2Xxs {
    /// The super-block scale, an f16's bytes.
    pub d: [u8; 2],
    /// Per group of 32: four grid-index bytes, then a little-endian u32 of four 7-bit
    /// sign indices and the 4-bit scale.
    pub qs: [u8; QK_K / 4],
}

/// ggml's grid values of the 2-bit lattices (`iq2xxs_grid` etc.): level `l` is `VALUES[l]`.
pub(crate) const VALUES: [f32; 4] = [8.0, 25.0, 43.0, 0.0];

crate::quant::simd::avx2_row!(
    /// `quantize_row_iq2_xxs_impl`.
    quantize_row_imatrix, quantize_row_imatrix_avx2, quantize_row_imatrix_portable, &[f32]
);

/// The row as the portable build compiles it (the fallback, and the twin tests compare).
#[inline(always)]
pub(crate) fn quantize_row_imatrix_portable(x: &[f32], y: &mut [u8], quant_weights: &[f32]) {
    let grid = iq_grid::iq2xxs();
    let blocks: &mut [BlockIq2Xxs] = bytemuck::cast_slice_mut(y);
    for (ibl, (xbl, b)) in x.chunks_exact(QK_K).zip(blocks).enumerate() {
        let mut scales = [0.0f32; QK_K / 32];
        let mut q2 = [0u32; 2 * (QK_K / 32)];
        let mut max_scale = 0.0f32;
        let mut sumx2 = 0.0f32;
        for &v in xbl {
            sumx2 += v * v;
        }
        let sigma2 = sumx2 / QK_K as f32;
        for ib in 0..QK_K / 32 {
            let xb = &xbl[32 * ib..32 * ib + 32];
            let qw = &quant_weights[QK_K * ibl + 32 * ib..][..32];
            let mut weight = [0.0f32; 32];
            let mut waux = [0.0f32; 32];
            let mut xval = [0.0f32; 32];
            let mut block_signs = [0u8; 4];
            for i in 0..32 {
                weight[i] = qw[i] * (sigma2 + xb[i] * xb[i]).sqrt();
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
            if max < GROUP_MAX_EPS {
                scales[ib] = 0.0;
                continue;
            }
            let mut lq = [0u8; 32];
            let mut scale = make_qp_quants(K_MAX_Q + 1, &xval, &mut lq, &weight);
            let mut l: [i8; 32] = lq.map(|v| v as i8);
            let eff_max = scale * K_MAX_Q as f32;
            if eff_max <= 0.0 {
                scales[ib] = 0.0;
                continue;
            }
            let mut best = 0.0f32;
            let mut laux = [0i8; 32];
            for is in -6..=6 {
                let id = (5.0 + is as f32 * 0.1) / eff_max;
                let this_scale = 1.0 / id;
                for k in 0..4 {
                    let r = 8 * k..8 * k + 8;
                    snap(
                        grid,
                        K_MAX_Q,
                        id,
                        this_scale,
                        &xval[r.clone()],
                        &waux[r.clone()],
                        &mut laux[r],
                    );
                }
                let (sumqx, sumq2) = sums(&weight, &xval, &laux);
                if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                    scale = sumqx / sumq2;
                    best = scale * sumqx;
                    l = laux;
                }
            }
            if scale > 0.0 {
                let id = 1.0 / scale;
                for k in 0..4 {
                    let r = 8 * k..8 * k + 8;
                    let (gi, _) = snap(
                        grid,
                        K_MAX_Q,
                        id,
                        scale,
                        &xval[r.clone()],
                        &waux[r.clone()],
                        &mut l[r.clone()],
                    );
                    for (o, &q) in l[r].iter_mut().zip(&grid.points[gi]) {
                        *o = (q - 1) / 2;
                    }
                }
                let (sumqx, sumq2) = sums(&weight, &xval, &l);
                if sumq2 > 0.0 {
                    scale = sumqx / sumq2;
                }
            }
            if scale < 0.0 {
                scale = -scale;
                for s in block_signs.iter_mut() {
                    *s = !*s & 127;
                }
            }
            for k in 0..4 {
                let gi = index_of(grid, &l[8 * k..8 * k + 8]);
                q2[2 * ib] |= (gi as u32) << (8 * k);
                q2[2 * ib + 1] |= (block_signs[k] as u32) << (7 * k);
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
        for ib in 0..QK_K / 32 {
            let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 15);
            q2[2 * ib + 1] |= (l as u32) << 28;
        }
        for (o, v) in b.qs.chunks_exact_mut(4).zip(q2) {
            o.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// `dequantize_row_iq2_xxs`.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    let grid = iq_grid::iq2xxs();
    let blocks: &[BlockIq2Xxs] = bytemuck::cast_slice(x);
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        for ib32 in 0..QK_K / 32 {
            let q = &b.qs[8 * ib32..8 * ib32 + 8];
            let aux1 = u32::from_le_bytes([q[4], q[5], q[6], q[7]]);
            let db = d * (0.5 + (aux1 >> 28) as f32) * 0.25;
            for l in 0..4 {
                let point = &grid.points[q[l] as usize];
                let signs = ksigns(((aux1 >> (7 * l)) & 127) as u8);
                for j in 0..8 {
                    let v = db * VALUES[((point[j] - 1) / 2) as usize];
                    yb[32 * ib32 + 8 * l + j] = if signs & (1 << j) != 0 { -v } else { v };
                }
            }
        }
    }
}

/// IQ2_XXS in the registry.
pub struct IQ2XXS;

impl crate::quant::BlockFormat for IQ2XXS {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::IQ2XXS;
    const BLOCK: usize = QK_K;
    type Block = BlockIq2Xxs;
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::Q8K;
    const F16_SCALES: &'static [usize] = &[0];
    const REQUIRES_IMATRIX: bool = true;
    fn quantize(_x: &[f32], _y: &mut [u8]) {
        unreachable!("quant::check_shape refuses IQ2_XXS without importance weights")
    }
    fn quantize_imatrix(x: &[f32], y: &mut [u8], w: &[f32]) {
        quantize_row_imatrix(x, y, w)
    }
    fn dequantize(x: &[u8], y: &mut [f32]) {
        dequantize_row(x, y)
    }
}
