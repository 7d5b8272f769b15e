//! The block formats laquant packs, in one table.
//!
//! A format is one file implementing [`BlockFormat`] plus one line in the `registry!`
//! invocation below. The macro generates every per-type dispatch (packing with and without
//! importance weights, unpacking, the activation rounding of eval, llama.cpp's row check) and
//! checks at compile time that each format's block struct has the size and element count that
//! ggml's type table (`gguf::types`) gives its type. The match arms it generates have no
//! wildcard: every `GgmlType` is either a registered format or listed, with the activation
//! rounding ggml's CPU matmul gives it, among the types laquant has no kernel for, so a new
//! ggml type does not compile until it has been placed in one list or the other.

use super::*;
use crate::calib::actquant::ActQuant;
use crate::gguf::types::GgmlType;
use bytemuck::Pod;

/// One ggml block format: its type, its block, and ggml's kernels for it.
pub trait BlockFormat {
    /// The ggml type this format writes.
    const TYPE: GgmlType;
    /// Elements per block.
    const BLOCK: usize;
    /// One block as ggml lays it out (`block_q4_K`); `[u8; 4]` etc. for the float types.
    type Block: Pod;
    /// How ggml's CPU matmul rounds activations against weights of this type (its
    /// `vec_dot_type` in ggml-cpu.c's `type_traits_cpu`), which eval mirrors.
    const ACT: ActQuant;
    /// Byte offsets in a block of the f16 fields `ggml_validate_row_data` requires finite.
    const F16_SCALES: &'static [usize] = &[];
    /// Whether ggml refuses to quantize this type without importance weights
    /// (`ggml_quantize_requires_imatrix`).
    const REQUIRES_IMATRIX: bool = false;
    /// Byte offset in a block of the f16 minimum `m` that ggml's CPU dot product
    /// multiplies by the activation block's stored sum (`m · s` of
    /// `ggml_vec_dot_q4_1_q8_1`/`q5_1_q8_1`, whose `s` is rounded to f16), for the
    /// formats dotted with Q8_1; eval corrects for that rounding
    /// ([`crate::calib::actquant::q8_1_sum_residuals`]).
    const MIN_OFFSET: Option<usize> = None;

    /// Packs whole blocks without importance weights (`quantize_row_*_ref`, or `quantize_*`
    /// with a null imatrix where that differs).
    fn quantize(x: &[f32], y: &mut [u8]);
    /// Packs whole blocks with importance weights `w` (one per value of the row).
    fn quantize_imatrix(x: &[f32], y: &mut [u8], w: &[f32]);
    /// Unpacks whole blocks (`dequantize_row_*`, ggml's `to_float`).
    fn dequantize(x: &[u8], y: &mut [f32]);
    /// The first block (or element, for the float types) llama.cpp would refuse to load.
    fn first_invalid(bytes: &[u8]) -> Option<usize> {
        let offs = Self::F16_SCALES;
        if offs.is_empty() {
            return None;
        }
        bytes.chunks_exact(Self::TYPE.type_size()).position(|b| {
            offs.iter()
                .any(|&o| u16::from_le_bytes([b[o], b[o + 1]]) & 0x7c00 == 0x7c00)
        })
    }
}

macro_rules! registry {
    (
        formats { $($t:ident => $f:ty,)* }
        without_kernel { $($o:ident => $oa:ident,)* }
    ) => {
        /// The types laquant can write, in the registry's order.
        pub const SUPPORTED: &[GgmlType] = &[$(GgmlType::$t,)*];

        $(const _: () = {
            assert!(<$f as BlockFormat>::TYPE as u32 == GgmlType::$t as u32);
            assert!(std::mem::size_of::<<$f as BlockFormat>::Block>() == GgmlType::$t.type_size());
            assert!(<$f as BlockFormat>::BLOCK == GgmlType::$t.block_size());
        };)*

        /// Packs one row of whole blocks (`y` exactly its bytes); `ty` must be supported.
        pub(super) fn quantize_row(ty: GgmlType, x: &[f32], imatrix: Option<&[f32]>, y: &mut [u8]) {
            match ty {
                $(GgmlType::$t => match imatrix {
                    Some(w) => <$f as BlockFormat>::quantize_imatrix(x, y, w),
                    None => <$f as BlockFormat>::quantize(x, y),
                },)*
                $(GgmlType::$o)|* => unreachable!("check_width admits only supported types, not {ty}"),
            }
        }

        /// Unpacks whole blocks; `Unsupported` for a type without a kernel.
        pub(super) fn dequantize_row(ty: GgmlType, x: &[u8], y: &mut [f32]) -> Result<(), QuantError> {
            match ty {
                $(GgmlType::$t => <$f as BlockFormat>::dequantize(x, y),)*
                $(GgmlType::$o)|* => return Err(QuantError::Unsupported(ty)),
            }
            Ok(())
        }

        /// See [`BlockFormat::first_invalid`]; `None` for a type without a kernel.
        pub(super) fn first_invalid(ty: GgmlType, bytes: &[u8]) -> Option<usize> {
            match ty {
                $(GgmlType::$t => <$f as BlockFormat>::first_invalid(bytes),)*
                $(GgmlType::$o)|* => None,
            }
        }

        /// See [`BlockFormat::REQUIRES_IMATRIX`].
        pub fn requires_imatrix(ty: GgmlType) -> bool {
            match ty {
                $(GgmlType::$t => <$f as BlockFormat>::REQUIRES_IMATRIX,)*
                $(GgmlType::$o)|* => false,
            }
        }

        /// See [`BlockFormat::MIN_OFFSET`]; `None` for a type without a kernel.
        pub fn min_offset(ty: GgmlType) -> Option<usize> {
            match ty {
                $(GgmlType::$t => <$f as BlockFormat>::MIN_OFFSET,)*
                $(GgmlType::$o)|* => None,
            }
        }

        /// The activation rounding of ggml's CPU matmul against weights of `ty`.
        pub fn act_quant(ty: GgmlType) -> ActQuant {
            match ty {
                $(GgmlType::$t => <$f as BlockFormat>::ACT,)*
                $(GgmlType::$o => ActQuant::$oa,)*
            }
        }
    };
}

registry! {
    formats {
        F32 => float::F32,
        F16 => float::F16,
        Q4_0 => q4_0::Q4_0,
        Q4_1 => q4_1::Q4_1,
        Q5_0 => q5_0::Q5_0,
        Q5_1 => q5_1::Q5_1,
        Q8_0 => q8_0::Q8_0,
        Q2K => k_quants::q2_k::Q2K,
        Q3K => k_quants::q3_k::Q3K,
        Q4K => k_quants::q4_k::Q4K,
        Q5K => k_quants::q5_k::Q5K,
        Q6K => k_quants::q6_k::Q6K,
        IQ4NL => iq4::IQ4NL,
        IQ4XS => iq4::IQ4XS,
        BF16 => float::BF16,
        TQ1_0 => ternary::TQ1_0,
        TQ2_0 => ternary::TQ2_0,
        MXFP4 => mxfp4::MXFP4,
        Q1_0 => q1_q2::Q1_0,
        Q2_0 => q1_q2::Q2_0,
        IQ2XXS => iq2_xxs::IQ2XXS,
        IQ2XS => iq2_xs::IQ2XS,
        IQ3XXS => iq3_xxs::IQ3XXS,
        IQ3S => iq3_s::IQ3S,
        IQ2S => iq2_s::IQ2S,
        IQ1S => iq1::IQ1S,
        IQ1M => iq1::IQ1M,
        NVFP4 => mxfp4::NVFP4,
    }
    // ggml types laquant does not write, with their `vec_dot_type` rounding (F32: not a
    // matmul weight type of ggml's CPU backend).
    without_kernel {
        Q8_1 => Q8_1,
        Q8K => F32,
        I8 => F32,
        I16 => F32,
        I32 => F32,
        I64 => F32,
        F64 => F32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_packs_and_unpacks_a_row_of_its_own_size() {
        let mut seen = std::collections::HashSet::new();
        for &ty in SUPPORTED {
            assert!(seen.insert(ty), "{ty} registered twice");
            let n = 256.max(ty.block_size());
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let mut q = vec![0u8; n / ty.block_size() * ty.type_size()];
            let ones = vec![1.0f32; n];
            let im = requires_imatrix(ty).then_some(&ones[..]);
            quantize_rows(ty, &x, n, im, &mut q).unwrap();
            let mut y = vec![f32::NAN; n];
            dequantize(ty, &q, &mut y).unwrap();
            assert!(y.iter().all(|v| v.is_finite()), "{ty}");
            assert_eq!(first_invalid(ty, &q), None, "{ty}");
        }
    }

    #[test]
    fn types_without_a_kernel_are_refused_not_guessed() {
        for ty in [GgmlType::Q8K, GgmlType::Q8_1, GgmlType::I32] {
            assert!(!SUPPORTED.contains(&ty));
            let mut y = vec![0f32; ty.block_size()];
            let q = vec![0u8; ty.type_size()];
            assert_eq!(dequantize(ty, &q, &mut y), Err(QuantError::Unsupported(ty)));
        }
    }
}
