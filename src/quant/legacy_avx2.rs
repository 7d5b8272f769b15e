//! AVX2 kernels for the legacy block formats without importance weights: Q8_0, Q4_0,
//! Q4_1, Q5_0 and Q5_1, byte for byte ggml's `quantize_row_q8_0_ref` ...
//! `quantize_row_q5_1_ref` (what `ggml_quantize_chunk` runs when it has no imatrix).
//!
//! Why they exist: ggml-base is built for baseline x86-64 and gcc vectorises its
//! simple loops well with SSE2, while LLVM's SSE2 code for the same loops (with Rust's
//! saturating float-to-int `as`, the first-index-of-max search and the nibble packing)
//! was 0.6-0.75x as fast. Here each block of 32 is four AVX registers.
//!
//! Exactness: every float operation is the one ggml performs, in its order (a multiply,
//! then a separate add: no FMA), and the conversions are truncations of values proven
//! in range. A block is handed to the scalar reference (the twin, in each type's file)
//! whenever that proof does not hold: NaN or infinity in the block, a scale whose inverse
//! overflows or is subnormal, or (for the min/max formats) a zero extreme, whose sign
//! depends on ggml's element order. `tests/quant_props.rs` compares every kernel with its
//! scalar twin on random and hostile rows.

use super::float::to_f16_le;
use super::{q4_0, q4_1, q5_0, q5_1, q8_0};
use std::arch::x86_64::*;

/// Whether the AVX2 kernels can run on this CPU (`is_x86_feature_detected!` caches the answer).
#[inline]
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// The four registers of one block of 32.
#[target_feature(enable = "avx2")]
#[inline]
fn load(xb: &[f32; 32]) -> [__m256; 4] {
    let p = xb.as_ptr();
    // SAFETY: `xb` holds 32 floats, so the 8 at offsets 0, 8, 16 and 24 are readable.
    unsafe {
        [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ]
    }
}

#[target_feature(enable = "avx2")]
#[inline]
fn abs(v: __m256) -> __m256 {
    _mm256_andnot_ps(_mm256_set1_ps(-0.0), v)
}

/// Whether any value is NaN or infinite.
#[target_feature(enable = "avx2")]
#[inline]
fn any_non_finite(v: &[__m256; 4]) -> bool {
    let inf = _mm256_set1_ps(f32::INFINITY);
    // Not-less-than, unordered: true for |x| = inf and for NaN.
    let m = |x: __m256| _mm256_cmp_ps::<_CMP_NLT_UQ>(abs(x), inf);
    let any = _mm256_or_ps(
        _mm256_or_ps(m(v[0]), m(v[1])),
        _mm256_or_ps(m(v[2]), m(v[3])),
    );
    _mm256_movemask_ps(any) != 0
}

/// Horizontal max of 8 ordered (non-NaN) values.
#[target_feature(enable = "avx2")]
#[inline]
fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_shuffle_ps::<0b01>(m, m));
    _mm_cvtss_f32(m)
}

/// Horizontal min of 8 ordered (non-NaN) values.
#[target_feature(enable = "avx2")]
#[inline]
fn hmin(v: __m256) -> f32 {
    let m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_min_ss(m, _mm_shuffle_ps::<0b01>(m, m));
    _mm_cvtss_f32(m)
}

/// Largest magnitude of a finite block (order-free without NaN).
#[target_feature(enable = "avx2")]
#[inline]
fn absmax(v: &[__m256; 4]) -> f32 {
    let m01 = _mm256_max_ps(abs(v[0]), abs(v[1]));
    let m23 = _mm256_max_ps(abs(v[2]), abs(v[3]));
    hmax(_mm256_max_ps(m01, m23))
}

/// ggml's `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` on a finite block: the first
/// value whose magnitude is the largest (0 when every value is ±0).
#[target_feature(enable = "avx2")]
#[inline]
fn signed_absmax(v: &[__m256; 4], xb: &[f32; 32]) -> f32 {
    let amax = absmax(v);
    if amax <= 0.0 {
        return 0.0;
    }
    let a = _mm256_set1_ps(amax);
    let hit = |x: __m256| _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(abs(x), a)) as u32;
    let mask = hit(v[0]) | hit(v[1]) << 8 | hit(v[2]) << 16 | hit(v[3]) << 24;
    xb[mask.trailing_zeros() as usize & 31]
}

/// ggml's `if (v < min) min = v; if (v > max) max = v;` (from `FLT_MAX`, `-FLT_MAX`) on a
/// finite block; `None` when an extreme is ±0, whose sign would depend on the order.
#[target_feature(enable = "avx2")]
#[inline]
fn min_max(v: &[__m256; 4]) -> Option<(f32, f32)> {
    let lo = _mm256_min_ps(_mm256_min_ps(v[0], v[1]), _mm256_min_ps(v[2], v[3]));
    let hi = _mm256_max_ps(_mm256_max_ps(v[0], v[1]), _mm256_max_ps(v[2], v[3]));
    let (min, max) = (hmin(lo), hmax(hi));
    (min != 0.0 && max != 0.0).then_some((min, max))
}

/// `d ? 1/d : 0`, or `None` when the kernels' range argument needs a normal, finite `d`
/// with a finite inverse (subnormal or overflowing scales go to the scalar twin).
#[inline]
fn inverse(d: f32) -> Option<f32> {
    if d == 0.0 {
        return Some(0.0);
    }
    let id = 1.0 / d;
    (d.is_normal() && id.is_normal()).then_some(id)
}

/// Truncated levels `(int)((x - min) * id + add)`, each operation rounded on its own as ggml does.
#[target_feature(enable = "avx2")]
#[inline]
fn levels(v: &[__m256; 4], min: Option<f32>, id: f32, add: f32) -> [__m256i; 4] {
    let (vid, vadd) = (_mm256_set1_ps(id), _mm256_set1_ps(add));
    v.map(|x| {
        let x = match min {
            Some(m) => _mm256_sub_ps(x, _mm256_set1_ps(m)),
            None => x,
        };
        _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(x, vid), vadd))
    })
}

/// 32 levels (four registers of i32 in 0..=255) as 32 bytes in element order.
#[target_feature(enable = "avx2")]
#[inline]
fn bytes_u8(l: [__m256i; 4]) -> __m256i {
    let ab = _mm256_packs_epi32(l[0], l[1]);
    let cd = _mm256_packs_epi32(l[2], l[3]);
    // 32-bit groups now hold elements 0-3, 8-11, 16-19, 24-27 | 4-7, 12-15, 20-23, 28-31.
    let b = _mm256_packus_epi16(ab, cd);
    _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// As [`bytes_u8`] for signed levels in -128..=127.
#[target_feature(enable = "avx2")]
#[inline]
fn bytes_i8(l: [__m256i; 4]) -> __m256i {
    let ab = _mm256_packs_epi32(l[0], l[1]);
    let cd = _mm256_packs_epi32(l[2], l[3]);
    let b = _mm256_packs_epi16(ab, cd);
    _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// `qs[j] = (l[j] & 15) | (l[j + 16] & 15) << 4` for 32 byte levels.
#[target_feature(enable = "avx2")]
#[inline]
fn nibbles(b: __m256i) -> __m128i {
    let m = _mm_set1_epi8(0x0f);
    let lo = _mm_and_si128(_mm256_castsi256_si128(b), m);
    let hi = _mm_and_si128(_mm256_extracti128_si256::<1>(b), m);
    // Each byte of `hi` is below 16, so the 16-bit shift keeps it inside its byte.
    _mm_or_si128(lo, _mm_slli_epi16::<4>(hi))
}

/// Bit 4 of each of 32 byte levels below 64, as ggml's `qh` (bit j = level j).
#[target_feature(enable = "avx2")]
#[inline]
fn high_bits(b: __m256i) -> [u8; 4] {
    // Bit 4 moves to bit 7 of its byte; bit 5 (never set for 5-bit levels) would move into
    // the next byte's bit 0, which the byte-sign mask ignores.
    (_mm256_movemask_epi8(_mm256_slli_epi16::<3>(b)) as u32).to_le_bytes()
}

#[target_feature(enable = "avx2")]
#[inline]
fn store16(dst: &mut [u8], v: __m128i) {
    assert!(dst.len() >= 16);
    // SAFETY: `dst` has at least 16 writable bytes (checked above); unaligned store.
    unsafe { _mm_storeu_si128(dst.as_mut_ptr() as *mut __m128i, v) }
}

#[target_feature(enable = "avx2")]
#[inline]
fn store32(dst: &mut [u8], v: __m256i) {
    assert!(dst.len() >= 32);
    // SAFETY: `dst` has at least 32 writable bytes (checked above); unaligned store.
    unsafe { _mm256_storeu_si256(dst.as_mut_ptr() as *mut __m256i, v) }
}

/// One Q8_0 block (34 bytes); `false` leaves it to the scalar twin.
#[target_feature(enable = "avx2")]
#[inline]
fn q8_0_block(xb: &[f32; 32], yb: &mut [u8]) -> bool {
    let v = load(xb);
    if any_non_finite(&v) {
        return false;
    }
    let d = absmax(&v) / 127.0;
    let Some(id) = inverse(d) else { return false };
    yb[..2].copy_from_slice(&to_f16_le(d));
    // |x * id| <= 127 (plus rounding). roundf, ties away from zero: truncate, then step away
    // from zero when the dropped fraction (exact in f32) is at least one half.
    let (vid, half, mhalf) = (
        _mm256_set1_ps(id),
        _mm256_set1_ps(0.5),
        _mm256_set1_ps(-0.5),
    );
    let l = v.map(|x| {
        let r = _mm256_mul_ps(x, vid);
        let t = _mm256_cvttps_epi32(r);
        let f = _mm256_sub_ps(r, _mm256_cvtepi32_ps(t));
        let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(f, half));
        let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(f, mhalf));
        // The masks are -1 where true.
        _mm256_add_epi32(_mm256_sub_epi32(t, up), down)
    });
    store32(&mut yb[2..34], bytes_i8(l));
    true
}

/// One Q4_0 block (18 bytes); `false` leaves it to the scalar twin.
#[target_feature(enable = "avx2")]
#[inline]
fn q4_0_block(xb: &[f32; 32], yb: &mut [u8]) -> bool {
    let v = load(xb);
    if any_non_finite(&v) {
        return false;
    }
    let d = signed_absmax(&v, xb) / -8.0;
    let Some(id) = inverse(d) else { return false };
    yb[..2].copy_from_slice(&to_f16_le(d));
    // 0 < x * id + 8.5 <= 16.5 (plus rounding): C's (int8_t) truncation, then MIN(15, .).
    let l = levels(&v, None, id, 8.5).map(|l| _mm256_min_epi32(l, _mm256_set1_epi32(15)));
    store16(&mut yb[2..18], nibbles(bytes_u8(l)));
    true
}

/// One Q5_0 block (22 bytes); `false` leaves it to the scalar twin.
#[target_feature(enable = "avx2")]
#[inline]
fn q5_0_block(xb: &[f32; 32], yb: &mut [u8]) -> bool {
    let v = load(xb);
    if any_non_finite(&v) {
        return false;
    }
    let d = signed_absmax(&v, xb) / -16.0;
    let Some(id) = inverse(d) else { return false };
    yb[..2].copy_from_slice(&to_f16_le(d));
    let l = levels(&v, None, id, 16.5).map(|l| _mm256_min_epi32(l, _mm256_set1_epi32(31)));
    let b = bytes_u8(l);
    yb[2..6].copy_from_slice(&high_bits(b));
    store16(&mut yb[6..22], nibbles(b));
    true
}

/// The (d, min, levels) of a Q4_1 / Q5_1 block with `nmax` 15 or 31.
#[target_feature(enable = "avx2")]
#[inline]
fn min_block(xb: &[f32; 32], nmax: f32) -> Option<(f32, f32, __m256i)> {
    let v = load(xb);
    if any_non_finite(&v) {
        return None;
    }
    let (min, max) = min_max(&v)?;
    let d = (max - min) / nmax;
    let id = inverse(d)?;
    // 0 <= (x - min) * id + 0.5 <= nmax + 0.5 (plus rounding).
    let l = levels(&v, Some(min), id, 0.5);
    let l = l.map(|l| _mm256_min_epi32(l, _mm256_set1_epi32(nmax as i32)));
    Some((d, min, bytes_u8(l)))
}

/// One Q4_1 block (20 bytes); `false` leaves it to the scalar twin.
#[target_feature(enable = "avx2")]
#[inline]
fn q4_1_block(xb: &[f32; 32], yb: &mut [u8]) -> bool {
    let Some((d, min, b)) = min_block(xb, 15.0) else {
        return false;
    };
    yb[..2].copy_from_slice(&to_f16_le(d));
    yb[2..4].copy_from_slice(&to_f16_le(min));
    store16(&mut yb[4..20], nibbles(b));
    true
}

/// One Q5_1 block (24 bytes); `false` leaves it to the scalar twin. ggml does not clamp
/// Q5_1 levels, but they never exceed 31 here (see [`min_block`]), so the clamp is a no-op.
#[target_feature(enable = "avx2")]
#[inline]
fn q5_1_block(xb: &[f32; 32], yb: &mut [u8]) -> bool {
    let Some((d, min, b)) = min_block(xb, 31.0) else {
        return false;
    };
    yb[..2].copy_from_slice(&to_f16_le(d));
    yb[2..4].copy_from_slice(&to_f16_le(min));
    yb[4..8].copy_from_slice(&high_bits(b));
    store16(&mut yb[8..24], nibbles(b));
    true
}

macro_rules! row {
    ($(#[$doc:meta])* $name:ident, $block:ident, $bytes:expr, $twin:path) => {
        $(#[$doc])*
        /// Returns `false` (writing nothing) when the CPU lacks AVX2.
        pub fn $name(x: &[f32], y: &mut [u8]) -> bool {
            #[target_feature(enable = "avx2")]
            fn run(x: &[f32], y: &mut [u8]) {
                for (xb, yb) in x.chunks_exact(32).zip(y.chunks_exact_mut($bytes)) {
                    let xb: &[f32; 32] = xb.try_into().expect("chunks_exact");
                    if !$block(xb, yb) {
                        $twin(xb, yb);
                    }
                }
            }
            if !available() {
                return false;
            }
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { run(x, y) };
            true
        }
    };
}

row!(
    /// Q8_0 row, the same bytes as `q8_0::quantize_row_ref`.
    quantize_q8_0, q8_0_block, 34, q8_0::quantize_row_ref
);
row!(
    /// Q4_0 row, the same bytes as `q4_0::quantize_row_ref`.
    quantize_q4_0, q4_0_block, 18, q4_0::quantize_row_ref
);
row!(
    /// Q4_1 row, the same bytes as `q4_1::quantize_row_ref`.
    quantize_q4_1, q4_1_block, 20, q4_1::quantize_row_ref
);
row!(
    /// Q5_0 row, the same bytes as `q5_0::quantize_row_ref`.
    quantize_q5_0, q5_0_block, 22, q5_0::quantize_row_ref
);
row!(
    /// Q5_1 row, the same bytes as `q5_1::quantize_row_ref`.
    quantize_q5_1, q5_1_block, 24, q5_1::quantize_row_ref
);
