//! ggml tensor types and llama.cpp file types: ids, block geometry and names,
//! as ggml defines them in `ggml.h` / `ggml.c` (`type_traits`) and llama.cpp in
//! `llama_ftype`. These numbers are on disk in every GGUF file, so they are
//! data, fixed forever, and tested against ggml in the interop stage.

use std::fmt;

/// A ggml tensor element type (`enum ggml_type`); the discriminant is the id
/// stored in each tensor's info. Block geometry ([`Self::block_size`],
/// [`Self::type_size`]) is ggml's `type_traits`; the layouts below are ggml's
/// `block_*` structs in `ggml-common.h`, which `crate::quant` packs bit for bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum GgmlType {
    /// IEEE 754 single precision, 32 bits per weight.
    F32 = 0,
    /// IEEE 754 half precision, 16 bits per weight.
    F16 = 1,
    /// Blocks of 32: an f16 scale `d` and 4-bit quants `q`, `x = d * (q - 8)`; 4.5 bits per weight.
    Q4_0 = 2,
    /// Blocks of 32: f16 scale `d` and minimum `m`, 4-bit quants, `x = d * q + m`; 5 bits per weight.
    Q4_1 = 3,
    /// Blocks of 32: an f16 scale and 5-bit quants (4 low bits and a 32-bit mask of high bits), `x = d * (q - 16)`; 5.5 bits per weight.
    Q5_0 = 6,
    /// Blocks of 32: f16 scale and minimum, 5-bit quants, `x = d * q + m`; 6 bits per weight.
    Q5_1 = 7,
    /// Blocks of 32: an f16 scale and 32 signed bytes, `x = d * q`; 8.5 bits per weight.
    Q8_0 = 8,
    /// Blocks of 32 as [`GgmlType::Q8_0`] plus `d` times the sum of the quants (f16); ggml's activation type for dot products with Q4_1/Q5_1, not a weight type.
    Q8_1 = 9,
    /// K-quant super-blocks of 256: 16 blocks of 16 with 4-bit scales and minimums, 2-bit quants, f16 super-scales; 2.625 bits per weight.
    Q2K = 10,
    /// K-quant super-blocks of 256: 16 blocks of 16 with 6-bit scales, 3-bit quants (2 low bits and a high-bit mask), an f16 super-scale; 3.4375 bits per weight.
    Q3K = 11,
    /// K-quant super-blocks of 256: 8 blocks of 32 with 6-bit scales and minimums, 4-bit quants, f16 super-scales; 4.5 bits per weight.
    Q4K = 12,
    /// K-quant super-blocks of 256: 8 blocks of 32 with 6-bit scales and minimums, 5-bit quants, f16 super-scales; 5.5 bits per weight.
    Q5K = 13,
    /// K-quant super-blocks of 256: 16 blocks of 16 with 8-bit scales, 6-bit quants (4 low bits, 2 high), an f16 super-scale; 6.5625 bits per weight.
    Q6K = 14,
    /// Super-blocks of 256: an f32 scale, 256 signed bytes and 16 sums of 16; ggml's activation type for dot products with K-quants and i-quants, not a weight type.
    Q8K = 15,
    /// I-quant, super-blocks of 256: groups of 8 from a 256-entry grid (E8 lattice points) with signs, 4-bit scales per 32; 2.0625 bits per weight (ggml refuses it without importance).
    IQ2XXS = 16,
    /// I-quant, super-blocks of 256: groups of 8 from a 512-entry grid with signs, 4-bit scales per 16; 2.3125 bits per weight (ggml refuses it without importance).
    IQ2XS = 17,
    /// I-quant, super-blocks of 256: groups of 4 from a 256-entry grid with signs, 4-bit block scales; 3.0625 bits per weight.
    IQ3XXS = 18,
    /// I-quant, super-blocks of 256: groups of 8 from a 2048-entry ternary grid, a 3-bit scale and a shift per 32; 1.5625 bits per weight (ggml refuses it without importance).
    IQ1S = 19,
    /// Blocks of 32: an f16 scale and 4-bit indices into ggml's non-linear 16-value table (`kvalues_iq4nl`); 4.5 bits per weight.
    IQ4NL = 20,
    /// I-quant, super-blocks of 256: groups of 4 from a 512-entry grid with signs, 4-bit block scales; 3.4375 bits per weight.
    IQ3S = 21,
    /// I-quant, super-blocks of 256: groups of 8 from a 1024-entry grid with signs, 4-bit scales per 16; 2.5625 bits per weight.
    IQ2S = 22,
    /// Super-blocks of 256 of [`GgmlType::IQ4NL`] values with 6-bit block scales under an f16 super-scale; 4.25 bits per weight.
    IQ4XS = 23,
    /// 8-bit signed integers.
    I8 = 24,
    /// 16-bit signed integers.
    I16 = 25,
    /// 32-bit signed integers.
    I32 = 26,
    /// 64-bit signed integers.
    I64 = 27,
    /// IEEE 754 double precision.
    F64 = 28,
    /// I-quant, super-blocks of 256: groups of 8 from the IQ1_S grid, a shift per 8, 3-bit scales per 16 with the f16 super-scale in their spare bits; 1.75 bits per weight.
    IQ1M = 29,
    /// bfloat16 (the top 16 bits of an f32), 16 bits per weight.
    BF16 = 30,
    /// Ternary super-blocks of 256: values -1, 0, 1 packed 5 per byte (3^5 = 243), an f16 scale; 1.6875 bits per weight.
    TQ1_0 = 34,
    /// Ternary super-blocks of 256: values -1, 0, 1 in 2 bits each, an f16 scale; 2.0625 bits per weight.
    TQ2_0 = 35,
    /// OCP microscaling FP4, blocks of 32: an E8M0 power-of-two scale byte and 4-bit E2M1 values; 4.25 bits per weight.
    MXFP4 = 39,
    /// NVIDIA FP4, blocks of 64: four UE4M3 scales (one per 16) and 4-bit E2M1 values; 4.5 bits per weight.
    NVFP4 = 40,
    /// Blocks of 128: an f16 scale `d` and one sign bit per weight, `x = ±d`; 1.125 bits per weight.
    Q1_0 = 41,
    /// Blocks of 64: an f16 scale `d` and 2-bit codes for -1, 0, 1, 2 times `d`; 2.25 bits per weight.
    Q2_0 = 42,
}

/// (type, name, elements per block, bytes per block), from ggml's `type_traits`.
const TABLE: &[(GgmlType, &str, usize, usize)] = &[
    (GgmlType::F32, "F32", 1, 4),
    (GgmlType::F16, "F16", 1, 2),
    (GgmlType::Q4_0, "Q4_0", 32, 18),
    (GgmlType::Q4_1, "Q4_1", 32, 20),
    (GgmlType::Q5_0, "Q5_0", 32, 22),
    (GgmlType::Q5_1, "Q5_1", 32, 24),
    (GgmlType::Q8_0, "Q8_0", 32, 34),
    (GgmlType::Q8_1, "Q8_1", 32, 36),
    (GgmlType::Q2K, "Q2_K", 256, 84),
    (GgmlType::Q3K, "Q3_K", 256, 110),
    (GgmlType::Q4K, "Q4_K", 256, 144),
    (GgmlType::Q5K, "Q5_K", 256, 176),
    (GgmlType::Q6K, "Q6_K", 256, 210),
    (GgmlType::Q8K, "Q8_K", 256, 292),
    (GgmlType::IQ2XXS, "IQ2_XXS", 256, 66),
    (GgmlType::IQ2XS, "IQ2_XS", 256, 74),
    (GgmlType::IQ3XXS, "IQ3_XXS", 256, 98),
    (GgmlType::IQ1S, "IQ1_S", 256, 50),
    (GgmlType::IQ4NL, "IQ4_NL", 32, 18),
    (GgmlType::IQ3S, "IQ3_S", 256, 110),
    (GgmlType::IQ2S, "IQ2_S", 256, 82),
    (GgmlType::IQ4XS, "IQ4_XS", 256, 136),
    (GgmlType::I8, "I8", 1, 1),
    (GgmlType::I16, "I16", 1, 2),
    (GgmlType::I32, "I32", 1, 4),
    (GgmlType::I64, "I64", 1, 8),
    (GgmlType::F64, "F64", 1, 8),
    (GgmlType::IQ1M, "IQ1_M", 256, 56),
    (GgmlType::BF16, "BF16", 1, 2),
    (GgmlType::TQ1_0, "TQ1_0", 256, 54),
    (GgmlType::TQ2_0, "TQ2_0", 256, 66),
    (GgmlType::MXFP4, "MXFP4", 32, 17),
    (GgmlType::NVFP4, "NVFP4", 64, 36),
    (GgmlType::Q1_0, "Q1_0", 128, 18),
    (GgmlType::Q2_0, "Q2_0", 64, 18),
];

impl GgmlType {
    /// The type with this on-disk id, if ggml knows it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TABLE.iter().find(|r| r.0 as u32 == id).map(|r| r.0)
    }

    /// Parses a ggml type name (`q4_k`, `Q8_0`, `bf16`), any case.
    pub fn from_name(name: &str) -> Option<GgmlType> {
        let up = name.to_ascii_uppercase();
        TABLE.iter().find(|r| r.1 == up).map(|r| r.0)
    }

    /// The on-disk id (`enum ggml_type`'s value).
    pub fn id(self) -> u32 {
        self as u32
    }

    /// ggml's name for the type (`Q4_K`).
    pub fn name(self) -> &'static str {
        TABLE[self.index()].1
    }

    /// The index of this type's [`TABLE`] row; `const` so that block structs can be checked
    /// against the table at compile time (`quant::registry`).
    const fn index(self) -> usize {
        let mut i = 0;
        while i < TABLE.len() {
            if TABLE[i].0 as u32 == self as u32 {
                return i;
            }
            i += 1;
        }
        panic!("every GgmlType variant has a TABLE row")
    }

    /// Elements per block (ggml's `blck_size`): 1 for plain types, 32 to 256 for
    /// block types. A row's width must be a multiple of it.
    pub const fn block_size(self) -> usize {
        TABLE[self.index()].2
    }

    /// Bytes per block (ggml's `type_size`).
    pub const fn type_size(self) -> usize {
        TABLE[self.index()].3
    }

    /// Whether ggml stores this type in blocks of more than one element.
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes of a row of `n` elements, or `None` if `n` is not a whole number of blocks.
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if !n.is_multiple_of(bs) {
            return None;
        }
        (n / bs).checked_mul(self.type_size() as u64)
    }

    /// Bits per weight of this type: block bytes times 8 over block elements
    /// (4.5 for Q4_K; scales included).
    pub fn bits_per_weight(self) -> f64 {
        self.type_size() as f64 * 8.0 / self.block_size() as f64
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// llama.cpp's `enum llama_ftype`: the value of `general.file_type`, which
/// names the preset a file was made with. Each variant is
/// `LLAMA_FTYPE_<ALL|MOSTLY>_<name>`, the preset llama-quantize spells `<name>`
/// ([`Self::name`]); most weights get its base type ([`Self::base_type`]) and
/// the presets' mixes raise some tensors above it (`_S` fewest, `_L` most).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum FileType {
    /// `F32`: every tensor in f32.
    AllF32 = 0,
    /// `F16`: matrices in f16, norms and biases in f32.
    MostlyF16 = 1,
    /// `Q4_0`: base type Q4_0.
    MostlyQ4_0 = 2,
    /// `Q4_1`: base type Q4_1.
    MostlyQ4_1 = 3,
    /// `Q8_0`: base type Q8_0.
    MostlyQ8_0 = 7,
    /// `Q5_0`: base type Q5_0.
    MostlyQ5_0 = 8,
    /// `Q5_1`: base type Q5_1.
    MostlyQ5_1 = 9,
    /// `Q2_K`: base type Q2_K, some tensors raised to Q3_K/Q4_K.
    MostlyQ2K = 10,
    /// `Q3_K_S`: base type Q3_K, the fewest tensors raised of the Q3_K mixes.
    MostlyQ3KS = 11,
    /// `Q3_K_M`: base type Q3_K, some tensors raised to Q4_K/Q5_K.
    MostlyQ3KM = 12,
    /// `Q3_K_L`: base type Q3_K, the most tensors raised of the Q3_K mixes.
    MostlyQ3KL = 13,
    /// `Q4_K_S`: base type Q4_K, few tensors raised.
    MostlyQ4KS = 14,
    /// `Q4_K_M`: base type Q4_K, part of `attn_v` and `ffn_down` raised to Q6_K.
    MostlyQ4KM = 15,
    /// `Q5_K_S`: base type Q5_K, few tensors raised.
    MostlyQ5KS = 16,
    /// `Q5_K_M`: base type Q5_K, part of `attn_v` and `ffn_down` raised to Q6_K.
    MostlyQ5KM = 17,
    /// `Q6_K`: base type Q6_K.
    MostlyQ6K = 18,
    /// `IQ4_NL`: base type IQ4_NL.
    MostlyIQ4NL = 25,
    /// `IQ4_XS`: base type IQ4_XS.
    MostlyIQ4XS = 30,
    /// `BF16`: matrices in bf16, norms and biases in f32.
    MostlyBF16 = 32,
    /// `TQ1_0`: base type TQ1_0 (for ternary-trained models).
    MostlyTQ1_0 = 36,
    /// `TQ2_0`: base type TQ2_0 (for ternary-trained models).
    MostlyTQ2_0 = 37,
    /// `Q1_0`: base type Q1_0.
    MostlyQ1_0 = 40,
    /// `Q2_0`: base type Q2_0.
    MostlyQ2_0 = 41,
}

/// (file type, name as llama-quantize spells it, base tensor type).
const FTYPES: &[(FileType, &str, GgmlType)] = &[
    (FileType::AllF32, "F32", GgmlType::F32),
    (FileType::MostlyF16, "F16", GgmlType::F16),
    (FileType::MostlyBF16, "BF16", GgmlType::BF16),
    (FileType::MostlyQ8_0, "Q8_0", GgmlType::Q8_0),
    (FileType::MostlyQ4_0, "Q4_0", GgmlType::Q4_0),
    (FileType::MostlyQ4_1, "Q4_1", GgmlType::Q4_1),
    (FileType::MostlyQ5_0, "Q5_0", GgmlType::Q5_0),
    (FileType::MostlyQ5_1, "Q5_1", GgmlType::Q5_1),
    (FileType::MostlyQ2K, "Q2_K", GgmlType::Q2K),
    (FileType::MostlyQ3KS, "Q3_K_S", GgmlType::Q3K),
    (FileType::MostlyQ3KM, "Q3_K_M", GgmlType::Q3K),
    (FileType::MostlyQ3KL, "Q3_K_L", GgmlType::Q3K),
    (FileType::MostlyQ4KS, "Q4_K_S", GgmlType::Q4K),
    (FileType::MostlyQ4KM, "Q4_K_M", GgmlType::Q4K),
    (FileType::MostlyQ5KS, "Q5_K_S", GgmlType::Q5K),
    (FileType::MostlyQ5KM, "Q5_K_M", GgmlType::Q5K),
    (FileType::MostlyQ6K, "Q6_K", GgmlType::Q6K),
    (FileType::MostlyIQ4NL, "IQ4_NL", GgmlType::IQ4NL),
    (FileType::MostlyIQ4XS, "IQ4_XS", GgmlType::IQ4XS),
    (FileType::MostlyTQ1_0, "TQ1_0", GgmlType::TQ1_0),
    (FileType::MostlyTQ2_0, "TQ2_0", GgmlType::TQ2_0),
    (FileType::MostlyQ1_0, "Q1_0", GgmlType::Q1_0),
    (FileType::MostlyQ2_0, "Q2_0", GgmlType::Q2_0),
];

impl FileType {
    /// The value stored in `general.file_type`.
    pub fn id(self) -> u32 {
        self as u32
    }
    /// Parses a preset name as llama-quantize spells it (`q4_k_m`, `Q8_0`), any case.
    pub fn from_name(name: &str) -> Option<FileType> {
        let up = name.to_ascii_uppercase();
        FTYPES.iter().find(|r| r.1 == up).map(|r| r.0)
    }
    /// The preset's name as llama-quantize spells it (`Q4_K_M`).
    pub fn name(self) -> &'static str {
        FTYPES
            .iter()
            .find(|r| r.0 == self)
            .map(|r| r.1)
            .unwrap_or("?")
    }
    /// The tensor type most weights get under this file type.
    pub fn base_type(self) -> GgmlType {
        FTYPES
            .iter()
            .find(|r| r.0 == self)
            .map(|r| r.2)
            .unwrap_or(GgmlType::F32)
    }
    /// The file type that a uniform conversion to `t` is labelled with.
    pub fn for_type(t: GgmlType) -> Option<FileType> {
        FTYPES
            .iter()
            .find(|r| r.2 == t && !r.1.ends_with("_S") && !r.1.ends_with("_L"))
            .map(|r| r.0)
    }
    /// Every file type laquant knows, in the order of its table.
    pub fn all() -> impl Iterator<Item = FileType> {
        FTYPES.iter().map(|r| r.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_round_trip() {
        for r in TABLE {
            assert_eq!(GgmlType::from_id(r.0.id()), Some(r.0));
            assert_eq!(GgmlType::from_name(&r.1.to_lowercase()), Some(r.0));
        }
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::Q4K.row_bytes(512), Some(288));
        assert_eq!(GgmlType::Q4K.row_bytes(384), None);
    }

    #[test]
    fn ftype_base_types() {
        assert_eq!(FileType::from_name("q4_k_m"), Some(FileType::MostlyQ4KM));
        assert_eq!(FileType::MostlyQ4KM.base_type(), GgmlType::Q4K);
        assert_eq!(
            FileType::for_type(GgmlType::Q4K),
            Some(FileType::MostlyQ4KM)
        );
        assert_eq!(
            FileType::for_type(GgmlType::Q8_0),
            Some(FileType::MostlyQ8_0)
        );
        // llama.h's ids.
        assert_eq!(FileType::from_name("tq1_0").map(FileType::id), Some(36));
        assert_eq!(FileType::from_name("TQ2_0").map(FileType::id), Some(37));
        assert_eq!(FileType::from_name("q1_0").map(FileType::id), Some(40));
        assert_eq!(FileType::from_name("q2_0").map(FileType::id), Some(41));
        assert_eq!(FileType::MostlyTQ1_0.base_type(), GgmlType::TQ1_0);
    }
}
