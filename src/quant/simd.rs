//! Runtime CPU feature detection and the `std::arch` fast paths that have no
//! better home. Every routine here has a scalar twin that is the reference and
//! is compared with it in tests.

/// Whether the F16C conversion path can run on this CPU.
#[cfg(target_arch = "x86_64")]
pub fn has_f16c() -> bool {
    std::is_x86_feature_detected!("f16c") && std::is_x86_feature_detected!("avx")
}

/// F16 row with the F16C instruction `vcvtps2ph` (round to nearest even, like ggml's
/// portable conversion); any group of 8 holding a NaN is redone with the scalar code,
/// because ggml writes every NaN as `sign | 0x7e00` while the instruction keeps payloads.
///
/// # Safety
/// The CPU must support AVX and F16C (see [`has_f16c`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
pub unsafe fn f32_to_f16_f16c(src: &[f32], dst: &mut [u8]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len() / 2);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, so 8 floats are readable at src[i..] and 16 bytes writable at dst[2i..].
        unsafe {
            let v = _mm256_loadu_ps(src.as_ptr().add(i));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm_storeu_si128(dst.as_mut_ptr().add(2 * i) as *mut __m128i, h);
            let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v);
            if _mm256_movemask_ps(nan) != 0 {
                super::float::f32_to_f16_bytes_ref(&src[i..i + 8], &mut dst[2 * i..2 * i + 16]);
            }
        }
        i += 8;
    }
    super::float::f32_to_f16_bytes_ref(&src[i..n], &mut dst[2 * i..2 * n]);
}

/// Whether the CPU has AVX2 (`is_x86_feature_detected!` caches the answer).
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// Defines `pub fn $name(args) -> bool`: the expression `$body` compiled a second time with
/// AVX2 enabled (LLVM then vectorises the `#[inline(always)]` portable code it calls with
/// 8-wide registers), run when the CPU has AVX2; returns `false` without running otherwise.
/// Only `avx2` is enabled, not `fma`, and Rust never contracts `a * b + c` on its own, so
/// every float operation rounds as in the portable build: the same bytes (tests compare).
macro_rules! avx2_build {
    ($(#[$doc:meta])* $name:ident($($a:ident: $t:ty),*) => $body:expr) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        pub fn $name($($a: $t),*) -> bool {
            #[target_feature(enable = "avx2")]
            fn run($($a: $t),*) {
                $body
            }
            if !$crate::quant::simd::has_avx2() {
                return false;
            }
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { run($($a),*) };
            true
        }
    };
}
pub(crate) use avx2_build;

/// Defines `pub fn $name(x, y, quant_weights)`, a row kernel run as `$portable` compiled a
/// second time for AVX2 (through [`avx2_build`], as `$avx2`) when the CPU has it, and as
/// the portable build otherwise: the same bytes (tests compare the two).
macro_rules! avx2_row {
    ($(#[$doc:meta])* $name:ident, $avx2:ident, $portable:ident, $w:ty) => {
        $(#[$doc])*
        pub fn $name(x: &[f32], y: &mut [u8], quant_weights: $w) {
            #[cfg(target_arch = "x86_64")]
            if $avx2(x, y, quant_weights) {
                return;
            }
            $portable(x, y, quant_weights)
        }

        $crate::quant::simd::avx2_build!(
            #[doc = concat!("`", stringify!($portable), "` built for AVX2 (`false` without AVX2).")]
            $avx2(x: &[f32], y: &mut [u8], quant_weights: $w) => $portable(x, y, quant_weights)
        );
    };
}
pub(crate) use avx2_row;
