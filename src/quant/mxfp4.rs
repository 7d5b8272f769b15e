//! MXFP4 (OCP microscaling FP4): blocks of 32 values as 4-bit E2M1 codes times one shared
//! power-of-two scale stored as an E8M0 exponent byte (17 bytes, 4.25 bits per weight).
//! ggml keeps the E2M1 values doubled as integers (`kvalues_mxfp4`) and halves the scale.
//!
//! Mirrors ggml's `quantize_row_mxfp4_ref` (`quantize_mxfp4` ignores importance weights),
//! `ggml_e8m0_to_fp32_half` and `dequantize_row_mxfp4`.

use super::search::c_u8;
use bytemuck::{Pod, Zeroable};

pub const QK: usize = 32;

/// ggml's `kvalues_mxfp4`: twice the E2M1 values, positive codes then negative.
pub const KVALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// ggml's `block_mxfp4`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockMxfp4 {
    pub e: u8,
    pub qs: [u8; QK / 2],
}

/// Half the value of an E8M0 exponent byte, `2^(e - 128)` (ggml's `ggml_e8m0_to_fp32_half`):
/// subnormal for `e` 0 and 1; `e` 255 is read as `2^127`, not NaN.
#[inline]
pub fn e8m0_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        (e as u32 - 1) << 23
    };
    f32::from_bits(bits)
}

/// The exponent byte for a block whose largest magnitude is `amax`: `floor(log2(amax)) - 2`
/// biased by 127, which puts `amax` between 8 and 16 times the half scale, around the largest
/// doubled code 12 (0 for an all-zero block). Out-of-range exponents wrap as C's `(uint8_t)` of the float.
#[inline]
fn exponent(amax: f32) -> u8 {
    if amax > 0.0 {
        c_u8(amax.log2().floor() - 2.0 + 127.0)
    } else {
        0
    }
}

/// The code whose value times `d` is nearest to `v` (the first one on ties, code 0 for NaN).
#[inline(always)]
fn nearest_code(v: f32, d: f32) -> u8 {
    let mut best = 0u8;
    let mut best_err = (KVALUES[0] as f32 * d - v).abs();
    for (i, &k) in KVALUES.iter().enumerate().skip(1) {
        let err = (k as f32 * d - v).abs();
        if err < best_err {
            best = i as u8;
            best_err = err;
        }
    }
    best
}

/// `quantize_row_mxfp4_ref`.
pub fn quantize_row(x: &[f32], y: &mut [u8]) {
    let blocks: &mut [BlockMxfp4] = bytemuck::cast_slice_mut(y);
    for (xb, b) in x.chunks_exact(QK).zip(blocks) {
        // `amax < |v|` never takes a NaN.
        let amax = xb
            .iter()
            .fold(0.0f32, |m, v| if m < v.abs() { v.abs() } else { m });
        let e = exponent(amax);
        let d = e8m0_half(e);
        b.e = e;
        for j in 0..QK / 2 {
            b.qs[j] = nearest_code(xb[j], d) | (nearest_code(xb[QK / 2 + j], d) << 4);
        }
    }
}

/// `dequantize_row_mxfp4`.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    let blocks: &[BlockMxfp4] = bytemuck::cast_slice(x);
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK)) {
        let d = e8m0_half(b.e);
        for j in 0..QK / 2 {
            yb[j] = KVALUES[(b.qs[j] & 0x0f) as usize] as f32 * d;
            yb[j + QK / 2] = KVALUES[(b.qs[j] >> 4) as usize] as f32 * d;
        }
    }
}

/// MXFP4 in the registry.
pub struct MXFP4;

impl crate::quant::BlockFormat for MXFP4 {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::MXFP4;
    const BLOCK: usize = QK;
    type Block = BlockMxfp4;
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::Q8_0;
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
    /// An E8M0 exponent of 0xff (NaN) is refused (`validate_e_e8m0`).
    fn first_invalid(bytes: &[u8]) -> Option<usize> {
        bytes.chunks_exact(17).position(|b| b[0] == 0xff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e8m0_half_is_two_to_the_e_minus_128() {
        for e in 0..=255u8 {
            assert_eq!(e8m0_half(e) as f64, 2f64.powi(e as i32 - 128), "e {e}");
        }
    }

    #[test]
    fn scale_puts_the_block_maximum_between_codes_8_and_16() {
        // amax in [2^k, 2^(k+1)) gives the half scale d = 2^(k-3), so amax is in [8d, 16d):
        // the codes up to 12d reach from below it to above its midpoint.
        for amax in [1e-30f32, 0.013, 0.5, 1.0, 3.0, 6.0, 7.9, 100.0, 3e37] {
            let d = e8m0_half(exponent(amax));
            assert!(8.0 * d <= amax && amax < 16.0 * d, "amax {amax} d {d}");
        }
        assert_eq!(exponent(0.0), 0);
    }
}
