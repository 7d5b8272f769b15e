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

/// Defines `pub fn $name(args) -> bool`: the expression `$body` compiled once more with the
/// target features `$features` enabled, run when `$has()` says the CPU has them; returns
/// `false` without running otherwise. Rust never contracts `a * b + c` on its own, even with
/// `fma` enabled, so every float operation rounds as in the portable build: the same bytes
/// (tests compare the builds).
macro_rules! feature_build {
    ($features:literal, $has:path; $(#[$doc:meta])* $name:ident($($a:ident: $t:ty),*) => $body:expr) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        pub fn $name($($a: $t),*) -> bool {
            #[target_feature(enable = $features)]
            fn run($($a: $t),*) {
                $body
            }
            if !$has() {
                return false;
            }
            // SAFETY: the CPU has the features `run` is compiled for (checked just above).
            unsafe { run($($a),*) };
            true
        }
    };
}
pub(crate) use feature_build;

/// [`feature_build`] for AVX2 (LLVM then vectorises the `#[inline(always)]` portable code the
/// body calls with 8-wide registers). Only `avx2` is enabled, not `fma`.
macro_rules! avx2_build {
    ($($tt:tt)*) => {
        $crate::quant::simd::feature_build!("avx2", $crate::quant::simd::has_avx2; $($tt)*);
    };
}
pub(crate) use avx2_build;

/// Defines `pub fn $name(x, y, quant_weights)`, a row kernel run as `$portable` compiled a
/// second time for AVX2 (through [`avx2_build`], as `$avx2`) when the CPU has it, and as
/// the portable build otherwise: the same bytes (tests compare the builds). With `v4: $v4`,
/// a third build for x86-64-v4 (through [`v4_build`]) runs first when the CPU has it: for
/// the kernels measured faster that way (`scripts/bench.sh quant`).
macro_rules! avx2_row {
    ($(#[$doc:meta])* $name:ident, $avx2:ident, $portable:ident, $w:ty $(, v4: $v4:ident)?) => {
        $(#[$doc])*
        pub fn $name(x: &[f32], y: &mut [u8], quant_weights: $w) {
            #[cfg(target_arch = "x86_64")]
            if $($v4(x, y, quant_weights) ||)? $avx2(x, y, quant_weights) {
                return;
            }
            $portable(x, y, quant_weights)
        }

        $($crate::quant::simd::v4_build!(
            #[doc = concat!("`", stringify!($portable), "` built for x86-64-v4 (`false` without it).")]
            $v4(x: &[f32], y: &mut [u8], quant_weights: $w) => $portable(x, y, quant_weights)
        );)?

        $crate::quant::simd::avx2_build!(
            #[doc = concat!("`", stringify!($portable), "` built for AVX2 (`false` without AVX2).")]
            $avx2(x: &[f32], y: &mut [u8], quant_weights: $w) => $portable(x, y, quant_weights)
        );
    };
}
pub(crate) use avx2_row;

/// [`feature_build`] for x86-64-v4 (AVX-512 F, BW, DQ, VL with AVX2 and FMA: LLVM then also
/// uses mask registers and, where it pays, 16-wide registers).
macro_rules! v4_build {
    ($($tt:tt)*) => {
        $crate::quant::simd::feature_build!(
            "avx512f,avx512bw,avx512dq,avx512vl,avx2,avx,fma,bmi1,bmi2,lzcnt,popcnt",
            $crate::calib::forward::has_v4;
            $($tt)*
        );
    };
}
pub(crate) use v4_build;
