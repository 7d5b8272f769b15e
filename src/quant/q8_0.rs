//! Q8_0: blocks of 32 int8 values with one f16 scale (34 bytes).
//! Mirrors ggml's `quantize_row_q8_0_ref` (which `quantize_q8_0` uses with or
//! without importance weights) and `dequantize_row_q8_0`.

use super::float::{f16_le, to_f16_le};
use super::search::{c_int, fmax_c};
use bytemuck::{Pod, Zeroable};

/// Elements per block (`QK8_0`).
pub const QK: usize = 32;

/// ggml's `block_q8_0`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ8_0 {
    /// The scale, f16 (little-endian bytes).
    pub d: [u8; 2],
    /// 32 signed 8-bit levels (`i8` as bytes).
    pub qs: [u8; QK],
}

/// `quantize_row_q8_0_ref`: scale `amax / 127`, levels `roundf(x / d)` (ties away from zero).
pub fn quantize_row_ref(x: &[f32], y: &mut [u8]) {
    let blocks: &mut [BlockQ8_0] = bytemuck::cast_slice_mut(y);
    for (xb, b) in x.chunks_exact(QK).zip(blocks) {
        let mut amax = 0.0f32;
        for &v in xb {
            amax = fmax_c(amax, v.abs());
        }
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = to_f16_le(d);
        for (q, &v) in b.qs.iter_mut().zip(xb) {
            *q = c_int((v * id).round()) as u8;
        }
    }
}

/// Q8_0 row: the AVX2 kernel ([`super::legacy_avx2`]) when the CPU has AVX2,
/// else [`quantize_row_portable`]; the same bytes as [`quantize_row_ref`] either way.
pub fn quantize_row(x: &[f32], y: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if super::legacy_avx2::quantize_q8_0(x, y) {
        return;
    }
    quantize_row_portable(x, y)
}

/// Q8_0 row, restructured so that LLVM vectorises it; same bytes as [`quantize_row_ref`]
/// (tested). The max is order-independent for non-NaN inputs; blocks holding a NaN go
/// through the reference code, which keeps ggml's order.
pub fn quantize_row_portable(x: &[f32], y: &mut [u8]) {
    let blocks: &mut [BlockQ8_0] = bytemuck::cast_slice_mut(y);
    for (xb, b) in x.chunks_exact(QK).zip(blocks) {
        let xb: &[f32; QK] = xb.try_into().expect("chunks_exact");
        let mut m = [0.0f32; 8];
        let mut nan = false;
        for c in xb.chunks_exact(8) {
            for k in 0..8 {
                let a = c[k].abs();
                nan |= a.is_nan();
                m[k] = if m[k] > a { m[k] } else { a };
            }
        }
        let mut amax = 0.0f32;
        for v in m {
            amax = fmax_c(amax, v);
        }
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        if nan || !id.is_finite() || !amax.is_finite() {
            // NaN, infinite or subnormal-only blocks: ggml's conversions of NaN/inf levels.
            quantize_row_ref(xb, bytemuck::bytes_of_mut(b));
            continue;
        }
        b.d = to_f16_le(d);
        for (q, &v) in b.qs.iter_mut().zip(xb) {
            // |v * id| <= 127 here.
            let r = v * id;
            // roundf (ties away from zero) without a libm call: truncate, then step away
            // from zero when the dropped fraction is at least one half (exact in f32).
            let t = r as i32;
            let f = r - t as f32;
            let adj = (f >= 0.5) as i32 - (f <= -0.5) as i32;
            *q = (t + adj) as u8;
        }
    }
}

/// `dequantize_row_q8_0`.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    let blocks: &[BlockQ8_0] = bytemuck::cast_slice(x);
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_le(b.d);
        for (o, &q) in yb.iter_mut().zip(&b.qs) {
            *o = (q as i8) as f32 * d;
        }
    }
}
/// Q8_0 in the registry.
pub struct Q8_0;

impl crate::quant::BlockFormat for Q8_0 {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::Q8_0;
    const BLOCK: usize = QK;
    type Block = BlockQ8_0;
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::Q8_0;
    const F16_SCALES: &'static [usize] = &[0];
    fn quantize(x: &[f32], y: &mut [u8]) {
        quantize_row(x, y)
    }
    fn quantize_imatrix(x: &[f32], y: &mut [u8], w: &[f32]) {
        // ggml's quantizer of this type ignores importance weights.
        let _ = w;
        Self::quantize(x, y)
    }
    fn dequantize(x: &[u8], y: &mut [f32]) {
        dequantize_row(x, y)
    }
}
