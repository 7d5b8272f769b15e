//! Row conversion for the streaming pipeline: one checkpoint row as stored
//! (little-endian F32, F16 or BF16 bytes) to one packed output row, fused so the
//! f32 intermediate of a row stays in L1 cache. Where the output bytes equal the
//! input bytes (BF16 to BF16, F16 to F16, F32 to F32) the row is copied without an
//! f32 round trip, with ggml's NaN encodings applied exactly as the round trip
//! would (`ggml_compute_fp32_to_bf16` quiets a NaN, `ggml_compute_fp32_to_fp16`
//! writes every NaN as `sign | 0x7e00`). Every other pair widens the row
//! (`hf::safetensors::widen`) and packs it with `quant::quantize_rows`, so the
//! bytes are those of the reference path by construction; tests compare both.

use crate::gguf::GgmlType;
use crate::hf::safetensors::dtype_size;
use crate::quant;
use safetensors::Dtype;

/// What every row of one tensor goes through.
#[derive(Debug, Clone, Copy)]
pub struct RowJob<'a> {
    /// Source dtype as stored in the checkpoint.
    pub dtype: Dtype,
    /// Output type.
    pub ty: GgmlType,
    /// Values per row.
    pub width: usize,
    /// Column importance for the quantizers that take one.
    pub imatrix: Option<&'a [f32]>,
    /// Reject NaN and infinities (the default; `--allow-nonfinite` turns it off).
    pub check_finite: bool,
}

/// A value that is not finite: its column and value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NonFinite {
    pub col: usize,
    pub value: f32,
}

/// Why a row could not be converted.
#[derive(Debug, PartialEq)]
pub enum RowError {
    /// A value the output type cannot hold (infinite, NaN, or beyond the quantizers' arithmetic).
    NonFinite(NonFinite),
    /// The quantizer refused the row (planning checks shapes, dtypes and importance, so this
    /// is a planning bug; it is still an error, never bytes left unwritten).
    Quant(quant::QuantError),
    /// A source dtype laquant cannot read (planning checks dtypes: a planning bug too).
    Dtype(Dtype),
}

impl From<NonFinite> for RowError {
    fn from(nf: NonFinite) -> RowError {
        RowError::NonFinite(nf)
    }
}

impl RowJob<'_> {
    /// Bytes of one source row.
    pub fn src_row_bytes(&self) -> usize {
        self.width * dtype_size(self.dtype)
    }

    /// Converts one source row `src` into the packed row `dst`; `scratch` is
    /// reused between rows (it grows to `width` values once).
    pub fn convert_row(
        &self,
        src: &[u8],
        dst: &mut [u8],
        scratch: &mut Vec<f32>,
    ) -> Result<(), RowError> {
        match (self.dtype, self.ty) {
            (Dtype::BF16, GgmlType::BF16) => Ok(self.copy_bf16(src, dst)?),
            (Dtype::F16, GgmlType::F16) => Ok(self.copy_f16(src, dst)?),
            (Dtype::F32, GgmlType::F32) => Ok(self.copy_f32(src, dst)?),
            (Dtype::BF16, GgmlType::F16) if bf16_to_f16_fast(src, dst) => Ok(()),
            _ => {
                scratch.resize(self.width, 0.0);
                let row = &mut scratch[..self.width];
                if !crate::hf::safetensors::widen(self.dtype, src, row) {
                    return Err(RowError::Dtype(self.dtype));
                }
                if self.check_finite {
                    if matches!(self.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
                        first_non_finite(row)?;
                    } else {
                        first_unquantizable(row)?;
                    }
                }
                quant::quantize_rows(self.ty, row, self.width, self.imatrix, dst)
                    .map_err(RowError::Quant)?;
                Ok(())
            }
        }
    }

    fn copy_bf16(&self, src: &[u8], dst: &mut [u8]) -> Result<(), NonFinite> {
        let (s, d) = (as_u16_pairs(src), as_u16_pairs_mut(dst));
        if self.check_finite {
            // Exponent all ones: infinity or NaN.
            if let Some(col) = s
                .iter()
                .position(|b| u16::from_le_bytes(*b) & 0x7f80 == 0x7f80)
            {
                let h = u16::from_le_bytes(s[col]);
                return Err(NonFinite {
                    col,
                    value: f32::from_bits((h as u32) << 16),
                });
            }
            d.copy_from_slice(s);
        } else {
            for (o, i) in d.iter_mut().zip(s) {
                let h = u16::from_le_bytes(*i);
                // ggml_compute_fp32_to_bf16 on the widened value: a NaN gets its quiet bit.
                let h = if h & 0x7fff > 0x7f80 { h | 0x40 } else { h };
                *o = h.to_le_bytes();
            }
        }
        Ok(())
    }

    fn copy_f16(&self, src: &[u8], dst: &mut [u8]) -> Result<(), NonFinite> {
        let (s, d) = (as_u16_pairs(src), as_u16_pairs_mut(dst));
        if self.check_finite {
            if let Some(col) = s
                .iter()
                .position(|b| u16::from_le_bytes(*b) & 0x7c00 == 0x7c00)
            {
                return Err(NonFinite {
                    col,
                    value: quant::float::f16_le(s[col]),
                });
            }
            d.copy_from_slice(s);
        } else {
            for (o, i) in d.iter_mut().zip(s) {
                let h = u16::from_le_bytes(*i);
                // ggml_compute_fp32_to_fp16 on the widened value: every NaN becomes sign | 0x7e00.
                let h = if h & 0x7fff > 0x7c00 {
                    (h & 0x8000) | 0x7e00
                } else {
                    h
                };
                *o = h.to_le_bytes();
            }
        }
        Ok(())
    }

    fn copy_f32(&self, src: &[u8], dst: &mut [u8]) -> Result<(), NonFinite> {
        if self.check_finite {
            let s: &[[u8; 4]] = bytemuck::cast_slice(src);
            if let Some(col) = s
                .iter()
                .position(|b| u32::from_le_bytes(*b) & 0x7f80_0000 == 0x7f80_0000)
            {
                return Err(NonFinite {
                    col,
                    value: f32::from_le_bytes(s[col]),
                });
            }
        }
        dst.copy_from_slice(src);
        Ok(())
    }
}

/// BF16 to F16 without the f32 buffer, when the CPU has AVX2 and F16C and the row
/// holds only finite values (the caller's general path handles the rest, so `false`
/// means nothing was decided, not an error). The bytes equal widening then
/// `quant::float::f32_to_f16_bytes` (tested): both round to nearest even with F16C.
fn bf16_to_f16_fast(src: &[u8], dst: &mut [u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && crate::quant::simd::has_f16c() {
            // SAFETY: AVX2, AVX and F16C are present (checked just above).
            return unsafe { bf16_to_f16_avx2(src, dst) };
        }
    }
    let _ = (src, dst);
    false
}

/// # Safety
/// The CPU must support AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,avx2,f16c")]
unsafe fn bf16_to_f16_avx2(src: &[u8], dst: &mut [u8]) -> bool {
    use std::arch::x86_64::*;
    let n = (src.len() / 2).min(dst.len() / 2);
    if !n.is_multiple_of(8) {
        return false;
    }
    let exp = _mm_set1_epi16(0x7f80);
    let mut i = 0;
    while i < n {
        // SAFETY: i + 8 <= n, so 16 bytes are readable at src[2i..] and writable at dst[2i..].
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(2 * i) as *const __m128i);
            // Exponent all ones: infinity or NaN, left to the general path.
            let special = _mm_cmpeq_epi16(_mm_and_si128(h, exp), exp);
            if _mm_movemask_epi8(special) != 0 {
                return false;
            }
            let f = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)));
            let o = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(f);
            _mm_storeu_si128(dst.as_mut_ptr().add(2 * i) as *mut __m128i, o);
        }
        i += 8;
    }
    true
}

fn as_u16_pairs(b: &[u8]) -> &[[u8; 2]] {
    bytemuck::cast_slice(b)
}

fn as_u16_pairs_mut(b: &mut [u8]) -> &mut [[u8; 2]] {
    bytemuck::cast_slice_mut(b)
}

pub(crate) fn first_non_finite(row: &[f32]) -> Result<(), NonFinite> {
    // A branch-free scan first (it vectorises); the position only when something is wrong.
    if row.iter().fold(true, |ok, x| ok & x.is_finite()) {
        return Ok(());
    }
    let col = row.iter().position(|x| !x.is_finite()).unwrap_or(0);
    Err(NonFinite {
        col,
        value: row[col],
    })
}

/// The magnitude from which ggml's quantizers' sums of squares overflow f32
/// (`x²` summed over a block of up to 256): Q3_K, Q6_K and IQ4_XS then give the
/// sub-block a NaN scale that their max-scale search passes over, a row
/// llama.cpp accepts but that is garbage. No real weight comes near it.
pub const QUANT_MAX_ABS: f32 = 1e18;

/// [`first_non_finite`], then the first value of magnitude [`QUANT_MAX_ABS`] or
/// more (a finite `value` in the error).
pub(crate) fn first_unquantizable(row: &[f32]) -> Result<(), NonFinite> {
    first_non_finite(row)?;
    if row
        .iter()
        .fold(true, |ok, x| ok & (x.abs() < QUANT_MAX_ABS))
    {
        return Ok(());
    }
    let col = row
        .iter()
        .position(|x| x.abs() >= QUANT_MAX_ABS)
        .unwrap_or(0);
    Err(NonFinite {
        col,
        value: row[col],
    })
}

/// The source row of output row `r` under the Llama Q/K permutation with
/// `group` rows per head (`reshape(n_head, 2, group/2, cols).swapaxes(1, 2)`, as
/// `arch::apply_transform`): output row `(h, i, j)` takes input row `(h, j, i)`.
pub fn permuted_source_row(r: usize, group: usize) -> usize {
    let (h, l) = (r / group, r % group);
    let half = group / 2;
    let (i, j) = (l / 2, l % 2);
    h * group + j * half + i
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{apply_transform, Transform};

    fn encode(dtype: Dtype, v: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for x in v {
            match dtype {
                Dtype::F32 => out.extend(x.to_le_bytes()),
                // Truncation keeps NaN payloads, which the copy paths must handle.
                Dtype::BF16 => out.extend(((x.to_bits() >> 16) as u16).to_le_bytes()),
                Dtype::F16 => out.extend(half::f16::from_f32(*x).to_bits().to_le_bytes()),
                _ => unreachable!(),
            }
        }
        out
    }

    /// The reference: widen the whole row, then pack it, as the pipeline did before.
    fn reference(dtype: Dtype, ty: GgmlType, src: &[u8], width: usize) -> Vec<u8> {
        let mut f = vec![0f32; src.len() / dtype_size(dtype)];
        assert!(crate::hf::safetensors::widen(dtype, src, &mut f));
        quant::quantize_tensor(ty, &f, width, None).unwrap()
    }

    fn hostile_values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                match i % 17 {
                    3 => f32::from_bits(0x7f80_0001 | (s & 0x003f_0000)), // signalling NaN, payload
                    5 => -f32::NAN,
                    7 => f32::INFINITY,
                    11 => f32::from_bits(s & 0x807f_ffff), // subnormal
                    13 => 70000.0,                         // overflows f16
                    _ => (s as i32 as f32) / 2.0e9,
                }
            })
            .collect()
    }

    #[test]
    fn every_pair_equals_the_widen_then_pack_path() {
        let width = 256;
        let types = [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q8_0,
            GgmlType::Q4K,
        ];
        for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            for ty in types {
                for (seed, nonfinite) in [(1, false), (2, true)] {
                    let vals: Vec<f32> = if nonfinite {
                        hostile_values(width * 3, seed)
                    } else {
                        hostile_values(width * 3, seed)
                            .into_iter()
                            .map(|x| if x.is_finite() { x } else { 1.5 })
                            .collect()
                    };
                    let src = encode(dtype, &vals);
                    let job = RowJob {
                        dtype,
                        ty,
                        width,
                        imatrix: None,
                        check_finite: false,
                    };
                    let rb = ty.row_bytes(width as u64).unwrap() as usize;
                    let mut got = vec![0u8; 3 * rb];
                    let mut scratch = Vec::new();
                    for (s, d) in src
                        .chunks_exact(job.src_row_bytes())
                        .zip(got.chunks_exact_mut(rb))
                    {
                        job.convert_row(s, d, &mut scratch).unwrap();
                    }
                    if nonfinite && !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
                        continue; // quantizers on NaN are ggml's business, not compared here
                    }
                    assert_eq!(
                        got,
                        reference(dtype, ty, &src, width),
                        "{dtype:?} -> {ty} (non-finite values: {nonfinite})"
                    );
                }
            }
        }
    }

    #[test]
    fn bf16_to_f16_fast_path_equals_the_reference_on_every_finite_bf16() {
        // All 65536 bf16 bit patterns (finite ones take the fast path), in rows of 256.
        let all: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
        let width = 256;
        for check_finite in [false, true] {
            let job = RowJob {
                dtype: Dtype::BF16,
                ty: GgmlType::F16,
                width,
                imatrix: None,
                check_finite,
            };
            let mut fast_rows = 0;
            for (k, src) in all.chunks_exact(2 * width).enumerate() {
                let mut got = vec![0u8; 2 * width];
                let res = job.convert_row(src, &mut got, &mut Vec::new());
                let mut probe = vec![0u8; 2 * width];
                fast_rows += bf16_to_f16_fast(src, &mut probe) as usize;
                if res.is_err() {
                    assert!(check_finite, "row {k}");
                    continue;
                }
                assert_eq!(
                    got,
                    reference(Dtype::BF16, GgmlType::F16, src, width),
                    "row {k}"
                );
            }
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                assert!(fast_rows > 200, "fast path taken for {fast_rows} rows");
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = fast_rows;
        }
    }

    #[test]
    fn values_beyond_the_quantizers_arithmetic_are_refused() {
        // 1e30: finite, but its square is not; Q6_K would write a row llama.cpp
        // accepts with that sub-block's scale lost.
        let mut v = vec![0.01f32; 256];
        v[100] = 1e30;
        let src = encode(Dtype::F32, &v);
        for (ty, refused) in [
            (GgmlType::Q6K, true),
            (GgmlType::Q3K, true),
            (GgmlType::F32, false),
        ] {
            let job = RowJob {
                dtype: Dtype::F32,
                ty,
                width: 256,
                imatrix: None,
                check_finite: true,
            };
            let mut dst = vec![0u8; ty.row_bytes(256).unwrap() as usize];
            let r = job.convert_row(&src, &mut dst, &mut Vec::new());
            if refused {
                assert_eq!(
                    r,
                    Err(RowError::NonFinite(NonFinite {
                        col: 100,
                        value: 1e30
                    })),
                    "{ty}"
                );
            } else {
                assert!(r.is_ok(), "{ty}");
            }
        }
    }

    #[test]
    fn a_row_the_quantizer_refuses_is_an_error_not_unwritten_bytes() {
        // IQ2_XXS without importance weights (ggml refuses), and importance of the wrong
        // length: planning refuses both; the writer reports them too, in release builds.
        let src = encode(Dtype::F32, &vec![0.5f32; 256]);
        let short = vec![1.0f32; 100];
        for (ty, imatrix, want) in [
            (
                GgmlType::IQ2XXS,
                None,
                quant::QuantError::NeedsImatrix(GgmlType::IQ2XXS),
            ),
            (
                GgmlType::Q4K,
                Some(&short[..]),
                quant::QuantError::Imatrix {
                    got: 100,
                    want: 256,
                },
            ),
        ] {
            let job = RowJob {
                dtype: Dtype::F32,
                ty,
                width: 256,
                imatrix,
                check_finite: true,
            };
            let mut dst = vec![0u8; ty.row_bytes(256).unwrap() as usize];
            let r = job.convert_row(&src, &mut dst, &mut Vec::new());
            assert_eq!(r, Err(RowError::Quant(want)), "{ty}");
        }
    }

    #[test]
    fn non_finite_values_are_found_on_every_path() {
        let width = 64;
        for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0] {
                let mut vals = vec![0.25f32; width];
                vals[37] = f32::NEG_INFINITY;
                vals[50] = f32::NAN;
                let src = encode(dtype, &vals);
                let job = RowJob {
                    dtype,
                    ty,
                    width,
                    imatrix: None,
                    check_finite: true,
                };
                let mut dst = vec![0u8; ty.row_bytes(width as u64).unwrap() as usize];
                let err = match job.convert_row(&src, &mut dst, &mut Vec::new()) {
                    Err(RowError::NonFinite(nf)) => nf,
                    other => panic!("{dtype:?} -> {ty}: {other:?}"),
                };
                assert_eq!(err.col, 37, "{dtype:?} -> {ty}");
                assert_eq!(err.value, f32::NEG_INFINITY, "{dtype:?} -> {ty}");
                vals[37] = 0.5;
                vals[50] = 0.5;
                let src = encode(dtype, &vals);
                job.convert_row(&src, &mut dst, &mut Vec::new()).unwrap();
            }
        }
    }

    #[test]
    fn permuted_rows_match_apply_transform() {
        let (n_head, group, cols) = (3, 8, 2);
        let rows = n_head * group;
        let data: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let want = apply_transform(Transform::PermuteHeads { n_head }, &data, rows, cols);
        for r in 0..rows {
            let s = permuted_source_row(r, group);
            assert_eq!(
                &want[r * cols..(r + 1) * cols],
                &data[s * cols..(s + 1) * cols],
                "row {r}"
            );
        }
    }
}
