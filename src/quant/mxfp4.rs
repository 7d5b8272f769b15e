//! MXFP4 (OCP microscaling FP4): blocks of 32 values as 4-bit E2M1 codes times one shared
//! power-of-two scale stored as an E8M0 exponent byte (17 bytes, 4.25 bits per weight).
//! ggml keeps the E2M1 values doubled as integers (`kvalues_mxfp4`) and halves the scale.
//!
//! Mirrors ggml's `quantize_row_mxfp4_ref` (`quantize_mxfp4` ignores importance weights),
//! `ggml_e8m0_to_fp32_half` and `dequantize_row_mxfp4`.
//!
//! NVFP4 (blocks of 64 as four sub-blocks of 16, 36 bytes, 4.5 bits per weight) uses the same
//! E2M1 codes with one UE4M3 scale byte per sub-block (`ggml_fp32_to_ue4m3` of the sub-block's
//! largest magnitude over 6, halved on reading like MXFP4's): `quantize_row_nvfp4_ref`
//! (`quantize_nvfp4` ignores importance weights too), `ggml_ue4m3_to_fp32`, `dequantize_row_nvfp4`.

use super::search::c_u8;
use bytemuck::{Pod, Zeroable};

/// Elements per MXFP4 block (`QK_MXFP4`).
pub const QK: usize = 32;

/// ggml's `kvalues_mxfp4`: twice the E2M1 values, positive codes then negative.
pub const KVALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// ggml's `block_mxfp4`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockMxfp4 {
    /// The shared E8M0 exponent (a power of two, bias 127).
    pub e: u8,
    /// 32 E2M1 codes as indices into [`KVALUES`]: element `j` in the low nibble of byte `j`, `j + 16` in the high one.
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

/// Elements per NVFP4 block (`QK_NVFP4`).
pub const QK_NVFP4: usize = 64;
const QK_NVFP4_SUB: usize = 16;

/// ggml's `block_nvfp4`: four UE4M3 scales, then the codes (two per byte, as MXFP4's within
/// each sub-block of 16).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockNvfp4 {
    /// The UE4M3 scale of each sub-block of 16.
    pub d: [u8; QK_NVFP4 / QK_NVFP4_SUB],
    /// 64 E2M1 codes, two per byte as MXFP4's within each sub-block of 16.
    pub qs: [u8; QK_NVFP4 / 2],
}

/// Half the value of a UE4M3 byte (ggml's `ggml_ue4m3_to_fp32`): 4 exponent bits biased by 7
/// (bit 7 ignored), 3 mantissa bits, subnormal for exponent 0; 0 and 0x7f read as 0.
#[inline]
pub fn ue4m3_half(x: u8) -> f32 {
    if x == 0 || x == 0x7f {
        return 0.0;
    }
    let exp = ((x >> 3) & 0xf) as i32;
    let man = (x & 7) as f32;
    let raw = if exp == 0 {
        man * 2f32.powi(-9)
    } else {
        (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    };
    raw * 0.5
}

/// ggml's `ggml_fp32_to_ue4m3`: 0 for anything not above 0 (NaN too), values above 448
/// clamped, the mantissa rounded up on its next bit (half up), overflow saturating to 0x7e.
#[inline]
pub fn to_ue4m3(x: f32) -> u8 {
    if x.is_nan() || x <= 0.0 {
        return 0;
    }
    let x = if x > 448.0 { 448.0 } else { x };
    let bits = x.to_bits();
    let fp32_exp = ((bits >> 23) & 0xff) as i32 - 127;
    let fp32_man = ((bits >> 20) & 7) as i32;
    let mut exp = fp32_exp + 7;
    if exp <= 0 {
        // Below 2^-6: `x * 512 + 0.5` is positive and small, so C's truncation is `as`.
        let man = ((x * 512.0 + 0.5) as i32).min(7);
        return if man < 1 { 0 } else { man as u8 };
    }
    if exp >= 15 {
        return 0x7e;
    }
    let mut man = fp32_man + ((bits >> 19) & 1) as i32;
    if man > 7 {
        man = 0;
        exp += 1;
        if exp >= 15 {
            return 0x7e;
        }
    }
    ((exp << 3) | man) as u8
}

/// `quantize_row_nvfp4_ref`.
pub fn quantize_row_nvfp4(x: &[f32], y: &mut [u8]) {
    let blocks: &mut [BlockNvfp4] = bytemuck::cast_slice_mut(y);
    for (xb, b) in x.chunks_exact(QK_NVFP4).zip(blocks) {
        for (s, xs) in xb.chunks_exact(QK_NVFP4_SUB).enumerate() {
            // `amax < |v|` never takes a NaN.
            let amax = xs
                .iter()
                .fold(0.0f32, |m, v| if m < v.abs() { v.abs() } else { m });
            let ue = to_ue4m3(amax / 6.0);
            b.d[s] = ue;
            let d = ue4m3_half(ue);
            let half = QK_NVFP4_SUB / 2;
            for j in 0..half {
                b.qs[s * half + j] = nearest_code(xs[j], d) | (nearest_code(xs[half + j], d) << 4);
            }
        }
    }
}

/// `dequantize_row_nvfp4`.
pub fn dequantize_row_nvfp4(x: &[u8], y: &mut [f32]) {
    let blocks: &[BlockNvfp4] = bytemuck::cast_slice(x);
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK_NVFP4)) {
        for (s, ys) in yb.chunks_exact_mut(QK_NVFP4_SUB).enumerate() {
            let d = ue4m3_half(b.d[s]);
            let half = QK_NVFP4_SUB / 2;
            for j in 0..half {
                let q = b.qs[s * half + j];
                ys[j] = KVALUES[(q & 0x0f) as usize] as f32 * d;
                ys[j + half] = KVALUES[(q >> 4) as usize] as f32 * d;
            }
        }
    }
}

/// NVFP4 in the registry.
pub struct NVFP4;

impl crate::quant::BlockFormat for NVFP4 {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::NVFP4;
    const BLOCK: usize = QK_NVFP4;
    type Block = BlockNvfp4;
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::Q8_0;
    fn quantize(x: &[f32], y: &mut [u8]) {
        quantize_row_nvfp4(x, y)
    }
    fn quantize_imatrix(x: &[f32], y: &mut [u8], w: &[f32]) {
        // ggml's quantizer of this type ignores importance weights.
        let _ = w;
        Self::quantize(x, y)
    }
    fn dequantize(x: &[u8], y: &mut [f32]) {
        dequantize_row_nvfp4(x, y)
    }
    // Every UE4M3 byte is valid to ggml_validate_row_data: nothing to refuse.
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

    #[test]
    fn ue4m3_round_trips_every_finite_code_and_rounds_between() {
        // Every code below exponent 15 reads back as itself (its value is twice the half);
        // ggml writes exponent 15 only as 0x7e (448).
        for c in 1..0x7fu8 {
            let v = 2.0 * ue4m3_half(c);
            let want = if c >= 0x78 { 0x7e } else { c };
            assert_eq!(to_ue4m3(v), want, "code {c:#x} = {v}");
        }
        assert_eq!(to_ue4m3(0.0), 0);
        assert_eq!(to_ue4m3(-1.0), 0);
        assert_eq!(to_ue4m3(f32::NAN), 0);
        assert_eq!(to_ue4m3(f32::INFINITY), 0x7e);
        assert_eq!(2.0 * ue4m3_half(0x7e), 448.0);
        // 1.0625 is halfway between the codes of 1.0 (0x38) and 1.125 (0x39): rounded up.
        assert_eq!(to_ue4m3(1.0625), 0x39);
        assert_eq!(to_ue4m3(1.06), 0x38);
    }
}
