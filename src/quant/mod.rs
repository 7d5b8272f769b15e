//! Packing kernels: float rows to ggml block formats and back.
//!
//! Every format is bit-identical to ggml's reference quantizer
//! (`quantize_row_*_ref` without importance weights, `quantize_*` with them),
//! which is what `ggml_quantize_chunk` produces; dequantization equals ggml's
//! `to_float`. One file per block family; the scalar code is the reference,
//! fast paths sit beside it and are tested against it. Golden vectors made by
//! ggml itself (`fixtures/golden`, see [`golden`]) pin all of it down.

// The ports keep ggml's index loops so that they can be read against the C line by line.
#![allow(clippy::needless_range_loop)]

pub mod float;
#[doc(hidden)]
// test support: the golden files' format, read by tests/quant_golden.rs and benches/quant.rs
pub mod golden;
pub mod iq1;
pub mod iq2_s;
pub mod iq2_xs;
pub mod iq2_xxs;
pub mod iq3_s;
pub mod iq3_xxs;
pub mod iq4;
pub mod iq_grid;
pub mod iq_kgrid;
pub mod k_quants;
pub mod lanes;
#[cfg(target_arch = "x86_64")]
pub mod lanes_avx2;
#[cfg(target_arch = "x86_64")]
pub mod lanes_avx512;
#[cfg(target_arch = "x86_64")]
pub mod legacy_avx2;
pub mod mxfp4;
pub mod q1_q2;
pub mod q4_0;
pub mod q4_1;
pub mod q5_0;
pub mod q5_1;
pub mod q8_0;
pub mod registry;
pub mod search;
pub mod simd;
pub mod ternary;
pub mod validate;

use crate::gguf::types::GgmlType;
use rayon::prelude::*;
use registry::quantize_row;
pub use registry::{act_quant, min_offset, requires_imatrix, BlockFormat, SUPPORTED};

/// Why a tensor cannot be packed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantError {
    /// A type laquant has no kernel for ([`supports`] says which it has).
    #[error("type {0} is not supported by laquant's kernels")]
    Unsupported(GgmlType),
    /// Rows whose width is not a whole number of the type's blocks.
    #[error("row width {width} is not a multiple of {ty}'s block size {block}")]
    Width {
        /// The type asked for.
        ty: GgmlType,
        /// The row width, in elements.
        width: usize,
        /// The type's block size, in elements.
        block: usize,
    },
    /// Input whose length is not a multiple of the row width.
    #[error("input of {len} values is not a whole number of rows of {width}")]
    Shape {
        /// Values given.
        len: usize,
        /// The row width.
        width: usize,
    },
    /// A type ggml quantizes only with importance weights
    /// (`ggml_quantize_requires_imatrix`; [`requires_imatrix`]), given none.
    #[error("{0} needs importance weights (an imatrix): ggml refuses to quantize it without")]
    NeedsImatrix(GgmlType),
    /// Importance weights of another length than a row.
    #[error("importance weights have {got} values, the row has {want}")]
    Imatrix {
        /// Weights given.
        got: usize,
        /// The row width.
        want: usize,
    },
    /// A packed buffer of the wrong size for the rows.
    #[error("{ty} buffer has {got} bytes, {want} expected")]
    Bytes {
        /// The type.
        ty: GgmlType,
        /// Bytes given.
        got: usize,
        /// Bytes the rows take in that type.
        want: usize,
    },
}

/// Whether laquant can write tensors of this type.
pub fn supports(ty: GgmlType) -> bool {
    SUPPORTED.contains(&ty)
}

/// Checks that rows of `width` can be stored as `ty`.
pub fn check_width(ty: GgmlType, width: usize) -> Result<(), QuantError> {
    if !supports(ty) {
        return Err(QuantError::Unsupported(ty));
    }
    if !width.is_multiple_of(ty.block_size()) {
        return Err(QuantError::Width {
            ty,
            width,
            block: ty.block_size(),
        });
    }
    Ok(())
}

fn row_bytes(ty: GgmlType, width: usize) -> usize {
    width / ty.block_size() * ty.type_size()
}

fn check_shape(
    ty: GgmlType,
    len: usize,
    width: usize,
    imatrix: Option<&[f32]>,
) -> Result<usize, QuantError> {
    check_width(ty, width)?;
    if width == 0 || !len.is_multiple_of(width) {
        return Err(QuantError::Shape { len, width });
    }
    if imatrix.is_none() && requires_imatrix(ty) {
        return Err(QuantError::NeedsImatrix(ty));
    }
    if let Some(im) = imatrix {
        if im.len() != width {
            return Err(QuantError::Imatrix {
                got: im.len(),
                want: width,
            });
        }
    }
    Ok(row_bytes(ty, width))
}

/// Packs whole rows of `width` values into `dst` (exactly `rows * row_bytes`),
/// like `ggml_quantize_chunk(ty, src, dst, 0, rows, width, imatrix)`.
pub fn quantize_rows(
    ty: GgmlType,
    src: &[f32],
    width: usize,
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<(), QuantError> {
    let rb = check_shape(ty, src.len(), width, imatrix)?;
    let want = src.len() / width * rb;
    if dst.len() != want {
        return Err(QuantError::Bytes {
            ty,
            got: dst.len(),
            want,
        });
    }
    for (s, d) in src.chunks_exact(width).zip(dst.chunks_exact_mut(rb)) {
        quantize_row(ty, s, imatrix, d);
    }
    Ok(())
}

/// Packs a whole tensor in parallel by rows; the bytes equal [`quantize_rows`] run serially.
pub fn quantize_tensor(
    ty: GgmlType,
    src: &[f32],
    width: usize,
    imatrix: Option<&[f32]>,
) -> Result<Vec<u8>, QuantError> {
    let rb = check_shape(ty, src.len(), width, imatrix)?;
    let mut out = vec![0u8; src.len() / width * rb];
    quantize_tensor_into(ty, src, width, imatrix, &mut out)?;
    Ok(out)
}

/// [`quantize_tensor`] into a caller's buffer of exactly `rows * row_bytes`.
pub fn quantize_tensor_into(
    ty: GgmlType,
    src: &[f32],
    width: usize,
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<(), QuantError> {
    let rb = check_shape(ty, src.len(), width, imatrix)?;
    let rows = src.len() / width;
    if dst.len() != rows * rb {
        return Err(QuantError::Bytes {
            ty,
            got: dst.len(),
            want: rows * rb,
        });
    }
    // Chunks of about 64K values amortise scheduling; small tensors still get a few chunks per thread.
    // The bytes do not depend on the chunking: every row is packed on its own.
    let rows_per_chunk = ((1 << 16) / width + 1)
        .min(rows.div_ceil(4 * rayon::current_num_threads()))
        .max(1);
    dst.par_chunks_mut(rows_per_chunk * rb)
        .zip(src.par_chunks(rows_per_chunk * width))
        .for_each(|(d, s)| {
            for (s, d) in s.chunks_exact(width).zip(d.chunks_exact_mut(rb)) {
                quantize_row(ty, s, imatrix, d);
            }
        });
    Ok(())
}

/// The f16 minimum of every block of `src` (whole blocks of type `ty`), for the
/// formats that have one ggml's dot product reads on its own ([`min_offset`]: Q4_1,
/// Q5_1); `None` for the others.
pub fn block_minima(ty: GgmlType, src: &[u8]) -> Option<Vec<f32>> {
    let off = min_offset(ty)?;
    Some(
        src.chunks_exact(ty.type_size())
            .map(|b| half::f16::from_le_bytes([b[off], b[off + 1]]).to_f32())
            .collect(),
    )
}

/// Unpacks `dst.len()` values of type `ty` from `src` into f32, like ggml's `to_float`.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    let n = dst.len();
    check_width(ty, n)?;
    let want = row_bytes(ty, n);
    if src.len() != want {
        return Err(QuantError::Bytes {
            ty,
            got: src.len(),
            want,
        });
    }
    registry::dequantize_row(ty, src, dst)
}
