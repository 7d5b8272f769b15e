//! Q4_0: blocks of 32 values as 4-bit levels `q - 8` times one f16 scale (18 bytes).
//! Mirrors ggml's `quantize_row_q4_0_ref`, `quantize_row_q4_0_impl` (with importance
//! weights) and `dequantize_row_q4_0`.

use super::float::{f16_le, to_f16_le};
use super::search::{c_int, imatrix_weights, make_qx_quants, signed_absmax, sum_sq};
use bytemuck::{Pod, Zeroable};

pub const QK: usize = 32;

/// ggml's `block_q4_0`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: [u8; 2],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

/// `quantize_row_q4_0_ref`: scale `max / -8`, levels truncated after `+ 8.5`.
pub fn quantize_row_ref(x: &[f32], y: &mut [u8]) {
    let blocks: &mut [BlockQ4_0] = bytemuck::cast_slice_mut(y);
    for (xb, b) in x.chunks_exact(QK).zip(blocks) {
        let (_, max) = signed_absmax(xb);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = to_f16_le(d);
        for j in 0..QK / 2 {
            let x0 = xb[j] * id;
            let x1 = xb[QK / 2 + j] * id;
            let xi0 = (c_int(x0 + 8.5) as i8).min(15) as u8;
            let xi1 = (c_int(x1 + 8.5) as i8).min(15) as u8;
            b.qs[j] = xi0 | xi1.wrapping_shl(4);
        }
    }
}

/// `quantize_row_q4_0_impl` with importance weights `qw` (one per column of the row).
pub fn quantize_row_imatrix(x: &[f32], y: &mut [u8], qw: &[f32]) {
    let sigma2 = sum_sq(x) / x.len() as f32;
    let blocks: &mut [BlockQ4_0] = bytemuck::cast_slice_mut(y);
    let mut weight = [0f32; QK];
    let mut l = [0i8; QK];
    for ((xb, qb), b) in x.chunks_exact(QK).zip(qw.chunks_exact(QK)).zip(blocks) {
        imatrix_weights(qb, xb, sigma2, &mut weight);
        let d = make_qx_quants(8, xb, &mut l, 1, Some(&weight));
        b.d = to_f16_le(d);
        for j in 0..QK / 2 {
            b.qs[j] = (l[j] as u8) | ((l[j + 16] as u8) << 4);
        }
    }
}

/// `dequantize_row_q4_0`.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    let blocks: &[BlockQ4_0] = bytemuck::cast_slice(x);
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_le(b.d);
        for j in 0..QK / 2 {
            let x0 = (b.qs[j] & 0x0f) as i32 - 8;
            let x1 = (b.qs[j] >> 4) as i32 - 8;
            yb[j] = x0 as f32 * d;
            yb[j + QK / 2] = x1 as f32 * d;
        }
    }
}
