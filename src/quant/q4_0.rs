//! Q4_0: blocks of 32 values as 4-bit levels `q - 8` times one f16 scale (18 bytes).
//! Mirrors ggml's `quantize_row_q4_0_ref`, `quantize_row_q4_0_impl` (with importance
//! weights) and `dequantize_row_q4_0`.

use super::float::{f16_le, to_f16_le};
use super::lanes::{legacy_imatrix_blocks, Search32};
use super::search::{c_int, signed_absmax, signed_absmax_fast};
use bytemuck::{Pod, Zeroable};

/// Elements per block (`QK4_0`).
pub const QK: usize = 32;

/// ggml's `block_q4_0`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4_0 {
    /// The scale, f16 (little-endian bytes).
    pub d: [u8; 2],
    /// 32 4-bit levels, two per byte: element `j` in the low nibble of byte `j`, element `j + 16` in the high one.
    pub qs: [u8; QK / 2],
}

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

/// Q4_0 row: the AVX2 kernel ([`super::legacy_avx2`]) when the CPU has AVX2,
/// else [`quantize_row_portable`]; the same bytes as [`quantize_row_ref`] either way.
pub fn quantize_row(x: &[f32], y: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if super::legacy_avx2::quantize_q4_0(x, y) {
        return;
    }
    quantize_row_portable(x, y)
}

/// Q4_0 row, restructured so that LLVM vectorises it; same bytes as [`quantize_row_ref`]
/// (tested). Blocks holding NaN or infinities, or whose inverse scale overflows, go through
/// the reference code, which keeps C's conversions of out-of-range levels.
pub fn quantize_row_portable(x: &[f32], y: &mut [u8]) {
    let blocks: &mut [BlockQ4_0] = bytemuck::cast_slice_mut(y);
    for (xb, b) in x.chunks_exact(QK).zip(blocks) {
        let xb: &[f32; QK] = xb.try_into().expect("chunks_exact");
        let Some(max) = signed_absmax_fast(xb) else {
            quantize_row_ref(xb, bytemuck::bytes_of_mut(b));
            continue;
        };
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        if !id.is_finite() {
            quantize_row_ref(xb, bytemuck::bytes_of_mut(b));
            continue;
        }
        b.d = to_f16_le(d);
        for j in 0..QK / 2 {
            // |x * id| <= 8 (plus rounding), so the level is in range and `as` truncates like C.
            let xi0 = ((xb[j] * id + 8.5) as i32).min(15) as u8;
            let xi1 = ((xb[QK / 2 + j] * id + 8.5) as i32).min(15) as u8;
            b.qs[j] = xi0 | (xi1 << 4);
        }
    }
}

/// `quantize_row_q4_0_impl` with importance weights (fast path: 8 blocks side by side).
pub fn quantize_row_imatrix(x: &[f32], y: &mut [u8], qw: &[f32]) {
    quantize_row_imatrix_with(x, y, qw, true)
}

/// `quantize_row_q4_0_impl`; `lanes` as in [`legacy_imatrix_blocks`] (same bytes either way).
pub fn quantize_row_imatrix_with(x: &[f32], y: &mut [u8], qw: &[f32], lanes: bool) {
    let blocks: &mut [BlockQ4_0] = bytemuck::cast_slice_mut(y);
    legacy_imatrix_blocks(x, qw, Search32::Qx(8), lanes, |i, d, _, l| {
        let b = &mut blocks[i];
        b.d = to_f16_le(d);
        for j in 0..QK / 2 {
            b.qs[j] = l[j] | (l[j + 16] << 4);
        }
    });
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
/// Q4_0 in the registry.
pub struct Q4_0;

impl crate::quant::BlockFormat for Q4_0 {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::Q4_0;
    const BLOCK: usize = QK;
    type Block = BlockQ4_0;
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::Q8_0;
    const F16_SCALES: &'static [usize] = &[0];
    fn quantize(x: &[f32], y: &mut [u8]) {
        quantize_row(x, y)
    }
    fn quantize_imatrix(x: &[f32], y: &mut [u8], w: &[f32]) {
        quantize_row_imatrix(x, y, w)
    }
    fn dequantize(x: &[u8], y: &mut [f32]) {
        dequantize_row(x, y)
    }
}
