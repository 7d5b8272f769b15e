//! Q5_1: blocks of 32 values as 5-bit levels times an f16 scale plus an f16 minimum
//! (24 bytes). Mirrors ggml's `quantize_row_q5_1_ref`, `quantize_row_q5_1_impl`
//! (importance weights, `make_qkx3_quants`) and `dequantize_row_q5_1`.

use super::float::{f16_le, to_f16_le};
use super::lanes::{legacy_imatrix_blocks, Search32};
use super::q4_1::min_max;
use super::q5_0::{level5, pack5};
use super::search::{c_int, min_max_fast};
use bytemuck::{Pod, Zeroable};

pub const QK: usize = 32;

/// ggml's `block_q5_1`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

/// `quantize_row_q5_1_ref` (no clamp to 31, as in ggml).
pub fn quantize_row_ref(x: &[f32], y: &mut [u8]) {
    let blocks: &mut [BlockQ5_1] = bytemuck::cast_slice_mut(y);
    for (xb, b) in x.chunks_exact(QK).zip(blocks) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = to_f16_le(d);
        b.m = to_f16_le(min);
        let xi = |j: usize| c_int((xb[j] - min) * id + 0.5) as u8;
        pack5(xi, &mut b.qs, &mut b.qh);
    }
}

/// Q5_1 row: the AVX2 kernel ([`super::legacy_avx2`]) when the CPU has AVX2,
/// else [`quantize_row_portable`]; the same bytes as [`quantize_row_ref`] either way.
pub fn quantize_row(x: &[f32], y: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if super::legacy_avx2::quantize_q5_1(x, y) {
        return;
    }
    quantize_row_portable(x, y)
}

/// Q5_1 row written so that it vectorises; same bytes as [`quantize_row_ref`] (tested).
/// Blocks with NaN, infinities, zero extremes or non-finite scales take the reference code.
pub fn quantize_row_portable(x: &[f32], y: &mut [u8]) {
    let blocks: &mut [BlockQ5_1] = bytemuck::cast_slice_mut(y);
    for (xb, b) in x.chunks_exact(QK).zip(blocks) {
        let xb: &[f32; QK] = xb.try_into().expect("chunks_exact");
        let mm = min_max_fast(xb);
        let (min, max) = mm.unwrap_or((0.0, 0.0));
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        if mm.is_none() || !d.is_finite() || !id.is_finite() {
            quantize_row_ref(xb, bytemuck::bytes_of_mut(b));
            continue;
        }
        b.d = to_f16_le(d);
        b.m = to_f16_le(min);
        // 0 <= (x - min) * id <= 31 (plus rounding): `as` truncates like C here.
        let xi: [u8; QK] = std::array::from_fn(|j| ((xb[j] - min) * id + 0.5) as i32 as u8);
        pack5(|j| xi[j], &mut b.qs, &mut b.qh);
    }
}

/// `quantize_row_q5_1_impl` with importance weights (fast path: 8 blocks side by side).
pub fn quantize_row_imatrix(x: &[f32], y: &mut [u8], qw: &[f32]) {
    quantize_row_imatrix_with(x, y, qw, true)
}

/// `quantize_row_q5_1_impl`; `lanes` as in [`legacy_imatrix_blocks`] (same bytes either way).
pub fn quantize_row_imatrix_with(x: &[f32], y: &mut [u8], qw: &[f32], lanes: bool) {
    let blocks: &mut [BlockQ5_1] = bytemuck::cast_slice_mut(y);
    legacy_imatrix_blocks(x, qw, Search32::Qkx3(31), lanes, |i, d, min, l| {
        let b = &mut blocks[i];
        b.d = to_f16_le(d);
        b.m = to_f16_le(-min);
        pack5(|j| l[j], &mut b.qs, &mut b.qh);
    });
}

/// `dequantize_row_q5_1`.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    let blocks: &[BlockQ5_1] = bytemuck::cast_slice(x);
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_le(b.d);
        let m = f16_le(b.m);
        let qh = u32::from_le_bytes(b.qh);
        for (j, o) in yb.iter_mut().enumerate() {
            *o = level5(&b.qs, qh, j) as f32 * d + m;
        }
    }
}
