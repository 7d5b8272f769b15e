//! Packing kernels: float rows to ggml block formats and back.
//!
//! Every format is bit-identical to ggml's reference quantizer
//! (`quantize_row_*_ref` without importance weights, `quantize_*` with them),
//! which is what `ggml_quantize_chunk` produces. One file per block family;
//! the scalar code is the reference, fast paths sit beside it and are tested
//! against it.

pub mod float;
pub mod q8_0;

use crate::gguf::types::GgmlType;
use rayon::prelude::*;

/// Why a tensor cannot be packed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantError {
    #[error("type {0} is not supported by laquant's kernels")]
    Unsupported(GgmlType),
    #[error("row width {width} is not a multiple of {ty}'s block size {block}")]
    Width {
        ty: GgmlType,
        width: usize,
        block: usize,
    },
    #[error("input of {len} values is not a whole number of rows of {width}")]
    Shape { len: usize, width: usize },
    #[error("importance weights have {got} values, the row has {want}")]
    Imatrix { got: usize, want: usize },
}

/// Whether laquant can write tensors of this type.
pub fn supports(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0
    )
}

/// Checks that rows of `width` can be stored as `ty`.
pub fn check_width(ty: GgmlType, width: usize) -> Result<(), QuantError> {
    if !supports(ty) {
        return Err(QuantError::Unsupported(ty));
    }
    if width % ty.block_size() != 0 {
        return Err(QuantError::Width {
            ty,
            width,
            block: ty.block_size(),
        });
    }
    Ok(())
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
    check_width(ty, width)?;
    if width == 0 || src.len() % width != 0 {
        return Err(QuantError::Shape {
            len: src.len(),
            width,
        });
    }
    if let Some(im) = imatrix {
        if im.len() != width {
            return Err(QuantError::Imatrix {
                got: im.len(),
                want: width,
            });
        }
    }
    let row_bytes = ty.row_bytes(width as u64).unwrap() as usize;
    assert_eq!(dst.len(), src.len() / width * row_bytes, "destination size");
    for (s, d) in src.chunks_exact(width).zip(dst.chunks_exact_mut(row_bytes)) {
        match ty {
            GgmlType::F32 => float::f32_to_bytes(s, d),
            GgmlType::F16 => float::f32_to_f16_bytes(s, d),
            GgmlType::BF16 => float::f32_to_bf16_bytes(s, d),
            GgmlType::Q8_0 => q8_0::quantize_row(s, d),
            other => return Err(QuantError::Unsupported(other)),
        }
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
    check_width(ty, width)?;
    if width == 0 || src.len() % width != 0 {
        return Err(QuantError::Shape {
            len: src.len(),
            width,
        });
    }
    let rows = src.len() / width;
    let row_bytes = ty.row_bytes(width as u64).unwrap() as usize;
    let mut out = vec![0u8; rows * row_bytes];
    // Chunks of rows big enough to amortise scheduling.
    let rows_per_chunk = (1 << 16) / width.max(1) + 1;
    out.par_chunks_mut(rows_per_chunk * row_bytes)
        .zip(src.par_chunks(rows_per_chunk * width))
        .try_for_each(|(d, s)| quantize_rows(ty, s, width, imatrix, d))?;
    Ok(out)
}

/// Unpacks `n` values of type `ty` from `src` into f32, like ggml's `to_float`.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    let n = dst.len();
    check_width(ty, n)?;
    match ty {
        GgmlType::F32 => float::bytes_to_f32(src, dst),
        GgmlType::F16 => float::f16_bytes_to_f32(src, dst),
        GgmlType::BF16 => float::bf16_bytes_to_f32(src, dst),
        GgmlType::Q8_0 => q8_0::dequantize_row(src, dst),
        other => return Err(QuantError::Unsupported(other)),
    }
    Ok(())
}
