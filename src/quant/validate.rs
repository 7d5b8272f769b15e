//! What llama.cpp checks of every row it loads or writes
//! (`ggml_validate_row_data`, ggml/src/ggml-quants.c): floats must be finite,
//! and so must every block's f16 scales (`d`, and `dmin` where the block has
//! one). Finite weights can still pack into a row that fails this (a bf16
//! weight of 1e38 overflows F16, an imatrix of huge finite values gives NaN
//! Q4_K scales), so every written row is checked.

use crate::gguf::GgmlType;

/// The index of the first element (for float types) or block (for quantized
/// types) of `bytes` (whole blocks of `ty`) that llama.cpp would refuse; each format's
/// fields are its [`super::BlockFormat::first_invalid`].
pub fn first_invalid(ty: GgmlType, bytes: &[u8]) -> Option<usize> {
    super::registry::first_invalid(ty, bytes)
}

/// The first row of `bytes` (rows of `row_bytes` bytes of `ty`) that llama.cpp
/// would refuse, as an index from the start of `bytes`.
pub fn first_invalid_row(ty: GgmlType, bytes: &[u8], row_bytes: usize) -> Option<usize> {
    let unit = match ty {
        GgmlType::F32 => 4,
        GgmlType::F16 | GgmlType::BF16 => 2,
        _ => ty.type_size(),
    };
    first_invalid(ty, bytes).map(|i| i * unit / row_bytes.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_overflowed_rows_of_every_type() {
        // Q3_K, Q6_K and IQ4_XS: their sub-block searches give that sub-block a
        // NaN scale, which the block's max-scale search (`scale > amax`) passes
        // over, so d stays finite: a row llama.cpp accepts (the bytes ggml
        // writes too), not one this check can see. F32 holds 3.4e38.
        // MXFP4's exponent of 3.4e38 is 252, a valid one. IQ3_S: the group's squares
        // overflow and its scale is NaN, which `max_scale` passes over (ggml aborts on
        // that row, `GGML_ASSERT(scale >= 0)`; laquant packs it, the pipeline refuses
        // non-finite products before). NVFP4's UE4M3 scales clamp at 448: every byte is valid.
        let unseen = [
            GgmlType::NVFP4,
            GgmlType::IQ3S,
            GgmlType::F32,
            GgmlType::Q3K,
            GgmlType::Q6K,
            GgmlType::IQ4XS,
            GgmlType::MXFP4,
        ];
        for &ty in crate::quant::SUPPORTED {
            let width = 256;
            let ones = [1.0f32; 256];
            let im = crate::quant::requires_imatrix(ty).then_some(&ones[..]);
            let mut row = vec![0.01f32; width];
            let rb = ty.row_bytes(width as u64).unwrap() as usize;
            let mut out = vec![0u8; 3 * rb];
            for r in 0..3 {
                crate::quant::quantize_rows(ty, &row, width, im, &mut out[r * rb..(r + 1) * rb])
                    .unwrap();
            }
            assert_eq!(first_invalid_row(ty, &out, rb), None, "{ty}");
            // A value beyond every f16 scale's range, in the third row.
            row[7] = 3.4e38;
            crate::quant::quantize_rows(ty, &row, width, im, &mut out[2 * rb..]).unwrap();
            let want = (!unseen.contains(&ty)).then_some(2);
            assert_eq!(first_invalid_row(ty, &out, rb), want, "{ty}");
        }
    }

    #[test]
    fn mxfp4_nan_exponent_is_refused() {
        let mut blocks = vec![0u8; 3 * 17];
        assert_eq!(first_invalid(GgmlType::MXFP4, &blocks), None);
        blocks[34] = 0xff;
        assert_eq!(first_invalid(GgmlType::MXFP4, &blocks), Some(2));
        blocks[34] = 0xfe;
        assert_eq!(first_invalid(GgmlType::MXFP4, &blocks), None);
    }
}
