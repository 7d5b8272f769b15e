//! F32, F16 and BF16 rows, converted exactly as ggml-base converts them
//! (`ggml_fp32_to_fp16_row`, `ggml_fp16_to_fp32_row`, `ggml_fp32_to_bf16_row_ref`),
//! including ggml's NaN encodings. The f16 conversions are also the scale
//! encodings of every block format (`GGML_FP32_TO_FP16` / `GGML_FP16_TO_FP32`).

/// f32 to f16 bits as ggml's `ggml_compute_fp32_to_fp16` (the portable path ggml-base is
/// built with): round to nearest even, overflow to infinity, every NaN to `sign | 0x7e00`.
#[inline]
pub fn f32_to_f16_bits(f: f32) -> u16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 2^112
    let scale_to_zero = f32::from_bits(0x0880_0000); // 2^-110
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;
    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let mut bias = shl1_w & 0xff00_0000;
    if bias < 0x7100_0000 {
        bias = 0x7100_0000;
    }
    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7c00;
    let mantissa_bits = bits & 0x0000_0fff;
    let nonsign = exp_bits + mantissa_bits;
    ((sign >> 16)
        | if shl1_w > 0xff00_0000 {
            0x7e00
        } else {
            nonsign
        }) as u16
}

/// f16 bits to f32 as ggml's `ggml_compute_fp16_to_fp32` (exact for every input).
#[inline]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let w = (h as u32) << 16;
    let sign = w & 0x8000_0000;
    let two_w = w.wrapping_add(w);
    let exp_offset = 0xe0u32 << 23;
    let exp_scale = f32::from_bits(0x0780_0000); // 2^-112
    let normalized = f32::from_bits((two_w >> 4) + exp_offset) * exp_scale;
    let magic_mask = 126u32 << 23;
    let denormalized = f32::from_bits((two_w >> 17) | magic_mask) - 0.5;
    let cutoff = 1u32 << 27;
    f32::from_bits(
        sign | if two_w < cutoff {
            denormalized.to_bits()
        } else {
            normalized.to_bits()
        },
    )
}

/// Reads a little-endian f16 scale.
#[inline]
pub fn f16_le(b: [u8; 2]) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes(b))
}

/// Encodes a scale as little-endian f16 bytes.
#[inline]
pub fn to_f16_le(x: f32) -> [u8; 2] {
    f32_to_f16_bits(x).to_le_bytes()
}

/// One f32 to bf16 bits as ggml's `ggml_compute_fp32_to_bf16`: NaN stays NaN (quieted),
/// everything else rounds to nearest even.
#[inline(always)]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u.wrapping_add(0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

/// F32 row to little-endian bytes (as many as both hold).
pub fn f32_to_bytes(src: &[f32], dst: &mut [u8]) {
    for (x, d) in src.iter().zip(dst.chunks_exact_mut(4)) {
        d.copy_from_slice(&x.to_le_bytes());
    }
}

/// Little-endian F32 bytes to a row (as many as both hold).
pub fn bytes_to_f32(src: &[u8], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    }
}

/// F16 row, scalar reference (`ggml_fp32_to_fp16_row`).
pub fn f32_to_f16_bytes_ref(src: &[f32], dst: &mut [u8]) {
    for (x, d) in src.iter().zip(dst.chunks_exact_mut(2)) {
        d.copy_from_slice(&f32_to_f16_bits(*x).to_le_bytes());
    }
}

/// F16 row: the fastest path available, same bytes as [`f32_to_f16_bytes_ref`].
pub fn f32_to_f16_bytes(src: &[f32], dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::simd::has_f16c() {
            // SAFETY: the CPU supports F16C and AVX (checked at run time just above).
            unsafe { super::simd::f32_to_f16_f16c(src, dst) };
            return;
        }
    }
    f32_to_f16_bytes_ref(src, dst)
}

/// BF16 row (`ggml_fp32_to_bf16_row_ref`): the portable loop built for AVX2 when the CPU has
/// it, else as is; the same bytes either way (integer operations only).
pub fn f32_to_bf16_bytes(src: &[f32], dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if f32_to_bf16_bytes_avx2(src, dst) {
        return;
    }
    f32_to_bf16_bytes_portable(src, dst)
}

super::simd::avx2_build!(
    /// [`f32_to_bf16_bytes_portable`] built for AVX2 (`false` without AVX2).
    f32_to_bf16_bytes_avx2(src: &[f32], dst: &mut [u8]) => f32_to_bf16_bytes_portable(src, dst)
);

/// BF16 row (`ggml_fp32_to_bf16_row_ref`); written so that it auto-vectorises.
#[inline(always)]
pub fn f32_to_bf16_bytes_portable(src: &[f32], dst: &mut [u8]) {
    let out: &mut [[u8; 2]] = bytemuck::cast_slice_mut(dst);
    for (x, d) in src.iter().zip(out) {
        *d = f32_to_bf16_bits(*x).to_le_bytes();
    }
}

/// Little-endian F16 bytes to f32, exactly (`ggml_fp16_to_fp32_row`).
pub fn f16_bytes_to_f32(src: &[u8], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = f16_le([s[0], s[1]]);
    }
}

/// Little-endian BF16 bytes to f32, exactly (`ggml_bf16_to_fp32_row`).
pub fn bf16_bytes_to_f32(src: &[u8], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = f32::from_bits((u16::from_le_bytes([s[0], s[1]]) as u32) << 16);
    }
}

/// F32 rows in the registry.
pub struct F32;

impl crate::quant::BlockFormat for F32 {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::F32;
    const BLOCK: usize = 1;
    type Block = [u8; 4];
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::F32;
    fn quantize(x: &[f32], y: &mut [u8]) {
        f32_to_bytes(x, y)
    }
    fn quantize_imatrix(x: &[f32], y: &mut [u8], _w: &[f32]) {
        f32_to_bytes(x, y)
    }
    fn dequantize(x: &[u8], y: &mut [f32]) {
        bytes_to_f32(x, y)
    }
    /// The first non-finite element.
    fn first_invalid(bytes: &[u8]) -> Option<usize> {
        bytes
            .chunks_exact(4)
            .position(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000)
    }
}
/// F16 rows in the registry.
pub struct F16;

impl crate::quant::BlockFormat for F16 {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::F16;
    const BLOCK: usize = 1;
    type Block = [u8; 2];
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::F16;
    fn quantize(x: &[f32], y: &mut [u8]) {
        f32_to_f16_bytes(x, y)
    }
    fn quantize_imatrix(x: &[f32], y: &mut [u8], _w: &[f32]) {
        f32_to_f16_bytes(x, y)
    }
    fn dequantize(x: &[u8], y: &mut [f32]) {
        f16_bytes_to_f32(x, y)
    }
    /// The first non-finite element.
    fn first_invalid(bytes: &[u8]) -> Option<usize> {
        bytes
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00)
    }
}
/// BF16 rows in the registry.
pub struct BF16;

impl crate::quant::BlockFormat for BF16 {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::BF16;
    const BLOCK: usize = 1;
    type Block = [u8; 2];
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::BF16;
    fn quantize(x: &[f32], y: &mut [u8]) {
        f32_to_bf16_bytes(x, y)
    }
    fn quantize_imatrix(x: &[f32], y: &mut [u8], _w: &[f32]) {
        f32_to_bf16_bytes(x, y)
    }
    fn dequantize(x: &[u8], y: &mut [f32]) {
        bf16_bytes_to_f32(x, y)
    }
    /// The first non-finite element.
    fn first_invalid(bytes: &[u8]) -> Option<usize> {
        bytes
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_matches_ieee_rounding_on_finite_values() {
        // half's conversion is IEEE round-to-nearest-even; ggml's must agree away from NaN.
        for i in 0..200_000u32 {
            let x = f32::from_bits(i.wrapping_mul(2_654_435_761));
            if x.is_nan() {
                continue;
            }
            assert_eq!(
                f32_to_f16_bits(x),
                half::f16::from_f32(x).to_bits(),
                "{x:e}"
            );
        }
    }

    #[test]
    fn f16_nan_is_ggml_canonical() {
        assert_eq!(f32_to_f16_bits(f32::from_bits(0x7f80_0001)), 0x7e00);
        assert_eq!(f32_to_f16_bits(f32::from_bits(0xffc0_1234)), 0xfe00);
        assert_eq!(f32_to_f16_bits(f32::INFINITY), 0x7c00);
        assert_eq!(f32_to_f16_bits(1e6), 0x7c00);
    }

    #[test]
    fn f16_roundtrip_every_value() {
        for h in 0..=u16::MAX {
            let f = f16_bits_to_f32(h);
            let want = half::f16::from_bits(h).to_f32();
            if want.is_nan() {
                assert!(f.is_nan());
            } else {
                assert_eq!(f.to_bits(), want.to_bits(), "{h:#x}");
                assert_eq!(f32_to_f16_bits(f), h, "{h:#x}");
            }
        }
    }
}
