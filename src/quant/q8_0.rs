//! Q8_0: blocks of 32 int8 values with one f16 scale (34 bytes).
//! Mirrors ggml's `quantize_row_q8_0_ref` and `dequantize_row_q8_0`.

use super::float::f32_to_f16_bits;
use half::f16;

pub const QK: usize = 32;
pub const BLOCK_BYTES: usize = 34;

pub fn quantize_row(x: &[f32], y: &mut [u8]) {
    for (xb, yb) in x.chunks_exact(QK).zip(y.chunks_exact_mut(BLOCK_BYTES)) {
        let mut amax = 0.0f32;
        for &v in xb {
            // ggml's MAX(a, b) is `a > b ? a : b`.
            let a = v.abs();
            amax = if amax > a { amax } else { a };
        }
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb[..2].copy_from_slice(&f32_to_f16_bits(d).to_le_bytes());
        for (q, &v) in yb[2..].iter_mut().zip(xb) {
            *q = ((v * id).round() as i32) as i8 as u8;
        }
    }
}

pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    for (xb, yb) in x.chunks_exact(BLOCK_BYTES).zip(y.chunks_exact_mut(QK)) {
        let d = f16::from_bits(u16::from_le_bytes([xb[0], xb[1]])).to_f32();
        for (o, &q) in yb.iter_mut().zip(&xb[2..]) {
            *o = (q as i8) as f32 * d;
        }
    }
}
