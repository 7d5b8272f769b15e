//! Q5_1: blocks of 32 values as 5-bit levels times an f16 scale plus an f16 minimum
//! (24 bytes). Mirrors ggml's `quantize_row_q5_1_ref`, `quantize_row_q5_1_impl`
//! (importance weights, `make_qkx3_quants`) and `dequantize_row_q5_1`.

use super::float::{f16_le, to_f16_le};
use super::lanes::{legacy_imatrix_blocks, Search32};
use super::q4_1::{min_scale_blocks_portable, min_scale_blocks_ref};
use super::q5_0::{level5, pack5};
use super::search::c_int;
use bytemuck::{Pod, Zeroable};

/// Elements per block (`QK5_1`).
pub const QK: usize = 32;

/// ggml's `block_q5_1`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5_1 {
    /// The scale, f16 (little-endian bytes).
    pub d: [u8; 2],
    /// The minimum, f16 (little-endian bytes).
    pub m: [u8; 2],
    /// Bit 4 of each level, as in Q5_0.
    pub qh: [u8; 4],
    /// The low 4 bits of the levels, as in Q5_0.
    pub qs: [u8; QK / 2],
}

/// Stores a block: scale, minimum, and levels as ggml packs five bits.
fn store(b: &mut BlockQ5_1, d: f32, min: f32, l: &[u8; QK]) {
    b.d = to_f16_le(d);
    b.m = to_f16_le(min);
    pack5(|j| l[j], &mut b.qs, &mut b.qh);
}

/// `quantize_row_q5_1_ref` (levels `(uint8_t)` without a clamp to 31, as in ggml).
pub fn quantize_row_ref(x: &[f32], y: &mut [u8]) {
    let blocks: &mut [BlockQ5_1] = bytemuck::cast_slice_mut(y);
    let level = |v: f32| c_int(v) as u8;
    min_scale_blocks_ref(x, 31.0, level, |i, d, min, l| {
        store(&mut blocks[i], d, min, l)
    });
}

/// Q5_1 row: the AVX2 kernel ([`super::legacy_avx2`]) when the CPU has AVX2,
/// else [`quantize_row_portable`]; the same bytes as [`quantize_row_ref`] either way.
pub fn quantize_row(x: &[f32], y: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if super::legacy_avx2::quantize_q5_1(x, y) {
        return;
    }
    quantize_row_portable(x, y)
}

/// Q5_1 row written so that it vectorises (`min_scale_blocks_portable`); same bytes as
/// [`quantize_row_ref`] (tested).
pub fn quantize_row_portable(x: &[f32], y: &mut [u8]) {
    let blocks: &mut [BlockQ5_1] = bytemuck::cast_slice_mut(y);
    min_scale_blocks_portable(x, 31.0, |i, r| match r {
        Some((d, min, l)) => store(&mut blocks[i], d, min, l),
        None => quantize_row_ref(
            &x[QK * i..QK * i + QK],
            bytemuck::bytes_of_mut(&mut blocks[i]),
        ),
    });
}

/// `quantize_row_q5_1_impl` with importance weights (fast path: 8 blocks side by side).
pub fn quantize_row_imatrix(x: &[f32], y: &mut [u8], qw: &[f32]) {
    quantize_row_imatrix_with(x, y, qw, true)
}

/// `quantize_row_q5_1_impl`; `lanes` as in [`legacy_imatrix_blocks`] (same bytes either way).
pub fn quantize_row_imatrix_with(x: &[f32], y: &mut [u8], qw: &[f32], lanes: bool) {
    let blocks: &mut [BlockQ5_1] = bytemuck::cast_slice_mut(y);
    // The search returns `the_min`, the negated minimum.
    legacy_imatrix_blocks(x, qw, Search32::Qkx3(31), lanes, |i, d, the_min, l| {
        store(&mut blocks[i], d, -the_min, l)
    });
}

/// `dequantize_row_q5_1`.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    let blocks: &[BlockQ5_1] = bytemuck::cast_slice(x);
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_le(b.d);
        let m = f16_le(b.m);
        let qh = u32::from_le_bytes(b.qh);
        for (j, o) in yb.iter_mut().enumerate() {
            *o = level5(&b.qs, qh, j) as f32 * d + m;
        }
    }
}
/// Q5_1 in the registry.
pub struct Q5_1;

impl crate::quant::BlockFormat for Q5_1 {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::Q5_1;
    const BLOCK: usize = QK;
    type Block = BlockQ5_1;
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::Q8_1;
    const F16_SCALES: &'static [usize] = &[0, 2];
    const MIN_OFFSET: Option<usize> = Some(2);
    fn quantize(x: &[f32], y: &mut [u8]) {
        quantize_row(x, y)
    }
    fn quantize_imatrix(x: &[f32], y: &mut [u8], w: &[f32]) {
        quantize_row_imatrix(x, y, w)
    }
    fn dequantize(x: &[u8], y: &mut [f32]) {
        dequantize_row(x, y)
    }
}
