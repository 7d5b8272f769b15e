//! The 1- and 2-bit round-to-nearest formats, each block one f16 scale then packed codes
//! (18 bytes either way):
//!
//! - Q1_0 (blocks of 128, 1.125 bits per weight): one sign bit per value (bit set for
//!   `x >= 0`, value `j` in bit `j % 8` of byte `j / 8`); the scale is the mean magnitude and a
//!   value decodes to `+d` or `-d`.
//! - Q2_0 (blocks of 64, 2.25 bits per weight): levels -1, 0, 1, 2 of the scale (the largest
//!   magnitude), stored as `level + 1` in two bits (value `j` in bits `2(j % 4)` of byte `j / 4`).
//!
//! Mirrors ggml's `quantize_row_q1_0_ref` / `quantize_row_q2_0_ref` (`quantize_q1_0` and
//! `quantize_q2_0` give the same bytes with importance weights: they only call the reference
//! row by row) and `dequantize_row_q1_0` / `dequantize_row_q2_0`.

use super::float::{f16_le, to_f16_le};
use super::search::c_int;
use bytemuck::{Pod, Zeroable};

/// Elements per Q1_0 block (`QK1_0`).
pub const QK1_0: usize = 128;
/// Elements per Q2_0 block (`QK2_0`).
pub const QK2_0: usize = 64;

/// ggml's `block_q1_0`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ1_0 {
    /// The magnitude `d`, f16 (little-endian bytes).
    pub d: [u8; 2],
    /// One bit per element, element `j` at bit `j % 8` of byte `j / 8`: 1 is `+d`, 0 is `-d`.
    pub qs: [u8; QK1_0 / 8],
}

/// ggml's `block_q2_0`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ2_0 {
    /// The scale `d`, f16 (little-endian bytes).
    pub d: [u8; 2],
    /// 2-bit codes, four per byte from the low bits up: code `c` is `(c - 1) * d`.
    pub qs: [u8; QK2_0 / 4],
}

/// `quantize_row_q1_0_ref`.
pub fn quantize_row_q1_0(x: &[f32], y: &mut [u8]) {
    let blocks: &mut [BlockQ1_0] = bytemuck::cast_slice_mut(y);
    for (xb, b) in x.chunks_exact(QK1_0).zip(blocks) {
        let mut sum = 0.0f32;
        for &v in xb {
            sum += v.abs();
        }
        b.d = to_f16_le(sum / QK1_0 as f32);
        for (byte, xs) in b.qs.iter_mut().zip(xb.chunks_exact(8)) {
            *byte = xs
                .iter()
                .enumerate()
                .fold(0u8, |acc, (k, &v)| acc | (((v >= 0.0) as u8) << k));
        }
    }
}

/// `quantize_row_q2_0_ref`: `round(x / amax)` (half away from zero) plus 1, clamped to 0..=3.
pub fn quantize_row_q2_0(x: &[f32], y: &mut [u8]) {
    let blocks: &mut [BlockQ2_0] = bytemuck::cast_slice_mut(y);
    for (xb, b) in x.chunks_exact(QK2_0).zip(blocks) {
        // `a > amax` never takes a NaN.
        let amax = xb
            .iter()
            .fold(0.0f32, |m, v| if v.abs() > m { v.abs() } else { m });
        let id = if amax > 0.0 { 1.0 / amax } else { 0.0 };
        b.d = to_f16_le(amax);
        for (byte, xs) in b.qs.iter_mut().zip(xb.chunks_exact(4)) {
            *byte = xs.iter().enumerate().fold(0u8, |acc, (k, &v)| {
                // `+ 1` wraps as the machine does: on aarch64 `+Inf` saturates to `INT_MAX`
                // and lands on level 0, like ggml built there (x86 gives `INT_MIN` already).
                let q = c_int((v * id).round()).wrapping_add(1).clamp(0, 3);
                acc | ((q as u8) << (2 * k))
            });
        }
    }
}

/// `dequantize_row_q1_0`.
pub fn dequantize_row_q1_0(x: &[u8], y: &mut [f32]) {
    let blocks: &[BlockQ1_0] = bytemuck::cast_slice(x);
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK1_0)) {
        let d = f16_le(b.d);
        for (j, o) in yb.iter_mut().enumerate() {
            *o = if (b.qs[j / 8] >> (j % 8)) & 1 != 0 {
                d
            } else {
                -d
            };
        }
    }
}

/// `dequantize_row_q2_0`.
pub fn dequantize_row_q2_0(x: &[u8], y: &mut [f32]) {
    let blocks: &[BlockQ2_0] = bytemuck::cast_slice(x);
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK2_0)) {
        let d = f16_le(b.d);
        for (j, o) in yb.iter_mut().enumerate() {
            let q = (b.qs[j / 4] >> (2 * (j % 4))) & 3;
            *o = (q as i32 - 1) as f32 * d;
        }
    }
}
/// Q1_0 in the registry.
pub struct Q1_0;

impl crate::quant::BlockFormat for Q1_0 {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::Q1_0;
    const BLOCK: usize = QK1_0;
    type Block = BlockQ1_0;
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::Q8_0;
    const F16_SCALES: &'static [usize] = &[0];
    fn quantize(x: &[f32], y: &mut [u8]) {
        quantize_row_q1_0(x, y)
    }
    fn quantize_imatrix(x: &[f32], y: &mut [u8], w: &[f32]) {
        // `quantize_q1_0` calls the reference row by row.
        let _ = w;
        Self::quantize(x, y)
    }
    fn dequantize(x: &[u8], y: &mut [f32]) {
        dequantize_row_q1_0(x, y)
    }
}
/// Q2_0 in the registry.
pub struct Q2_0;

impl crate::quant::BlockFormat for Q2_0 {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::Q2_0;
    const BLOCK: usize = QK2_0;
    type Block = BlockQ2_0;
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::Q8_0;
    const F16_SCALES: &'static [usize] = &[0];
    fn quantize(x: &[f32], y: &mut [u8]) {
        quantize_row_q2_0(x, y)
    }
    fn quantize_imatrix(x: &[f32], y: &mut [u8], w: &[f32]) {
        // `quantize_q2_0` calls the reference row by row.
        let _ = w;
        Self::quantize(x, y)
    }
    fn dequantize(x: &[u8], y: &mut [f32]) {
        dequantize_row_q2_0(x, y)
    }
}
