//! Q4_1: blocks of 32 values as 4-bit levels times an f16 scale plus an f16 minimum
//! (20 bytes). Mirrors ggml's `quantize_row_q4_1_ref`, `quantize_row_q4_1_impl`
//! (importance weights, `make_qkx3_quants`) and `dequantize_row_q4_1`.

use super::float::{f16_le, to_f16_le};
use super::lanes::{legacy_imatrix_blocks, Search32};
use super::search::{c_int, min_max_fast};
use bytemuck::{Pod, Zeroable};

/// Elements per block (`QK4_1`).
pub const QK: usize = 32;

/// ggml's `block_q4_1`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4_1 {
    /// The scale, f16 (little-endian bytes).
    pub d: [u8; 2],
    /// The minimum (the value of level 0), f16 (little-endian bytes).
    pub m: [u8; 2],
    /// 32 4-bit levels, two per byte as in Q4_0.
    pub qs: [u8; QK / 2],
}

/// The block's minimum and maximum as ggml's `if (v < min) ...; if (v > max) ...` loop.
pub(crate) fn min_max(xb: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in xb {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// The block loop that ggml's `quantize_row_q4_1_ref` and `quantize_row_q5_1_ref` share:
/// per block of 32 the min and max, `d = (max - min) / nmax`, `id = d ? 1/d : 0`, and
/// each level from `(x - min) * id + 0.5` by the type's C conversion `level`;
/// `emit(block, d, min, levels)` stores them.
pub(crate) fn min_scale_blocks_ref(
    x: &[f32],
    nmax: f32,
    level: impl Fn(f32) -> u8,
    mut emit: impl FnMut(usize, f32, f32, &[u8; QK]),
) {
    for (i, xb) in x.chunks_exact(QK).enumerate() {
        let (min, max) = min_max(xb);
        let d = (max - min) / nmax;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let l: [u8; QK] = std::array::from_fn(|j| level((xb[j] - min) * id + 0.5));
        emit(i, d, min, &l);
    }
}

/// [`min_scale_blocks_ref`] written so that it vectorises, for levels of at most `nmax`
/// (15 or 31): `emit(block, Some((d, min, levels)))`. Blocks with NaN, infinities, zero
/// extremes or non-finite scales get `emit(block, None)`: the caller runs the reference
/// code on them, which keeps C's conversions of out-of-range levels.
pub(crate) fn min_scale_blocks_portable(
    x: &[f32],
    nmax: f32,
    mut emit: impl FnMut(usize, Option<(f32, f32, &[u8; QK])>),
) {
    for (i, xb) in x.chunks_exact(QK).enumerate() {
        let xb: &[f32; QK] = xb.try_into().expect("chunks_exact");
        let mm = min_max_fast(xb);
        let (min, max) = mm.unwrap_or((0.0, 0.0));
        let d = (max - min) / nmax;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        if mm.is_none() || !d.is_finite() || !id.is_finite() {
            emit(i, None);
            continue;
        }
        // 0 <= (x - min) * id <= nmax (plus rounding): `as` truncates like C here, and the
        // `min` never clamps (it only tells LLVM the range).
        let l: [u8; QK] =
            std::array::from_fn(|j| (((xb[j] - min) * id + 0.5) as i32).min(nmax as i32) as u8);
        emit(i, Some((d, min, &l)));
    }
}

/// Stores a block: scale, minimum, and levels as ggml's `qs[j] = xi0; qs[j] |= xi1 << 4`.
fn store(b: &mut BlockQ4_1, d: f32, min: f32, l: &[u8; QK]) {
    b.d = to_f16_le(d);
    b.m = to_f16_le(min);
    for j in 0..QK / 2 {
        b.qs[j] = l[j] | l[QK / 2 + j].wrapping_shl(4);
    }
}

/// `quantize_row_q4_1_ref`.
pub fn quantize_row_ref(x: &[f32], y: &mut [u8]) {
    let blocks: &mut [BlockQ4_1] = bytemuck::cast_slice_mut(y);
    let level = |v: f32| (c_int(v) as i8).min(15) as u8;
    min_scale_blocks_ref(x, 15.0, level, |i, d, min, l| {
        store(&mut blocks[i], d, min, l)
    });
}

/// Q4_1 row: the AVX2 kernel ([`super::legacy_avx2`]) when the CPU has AVX2,
/// else [`quantize_row_portable`]; the same bytes as [`quantize_row_ref`] either way.
pub fn quantize_row(x: &[f32], y: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if super::legacy_avx2::quantize_q4_1(x, y) {
        return;
    }
    quantize_row_portable(x, y)
}

/// Q4_1 row written so that it vectorises (`min_scale_blocks_portable`); same bytes as
/// [`quantize_row_ref`] (tested).
pub fn quantize_row_portable(x: &[f32], y: &mut [u8]) {
    let blocks: &mut [BlockQ4_1] = bytemuck::cast_slice_mut(y);
    min_scale_blocks_portable(x, 15.0, |i, r| match r {
        Some((d, min, l)) => store(&mut blocks[i], d, min, l),
        None => quantize_row_ref(
            &x[QK * i..QK * i + QK],
            bytemuck::bytes_of_mut(&mut blocks[i]),
        ),
    });
}

/// `quantize_row_q4_1_impl` with importance weights (fast path: 8 blocks side by side).
pub fn quantize_row_imatrix(x: &[f32], y: &mut [u8], qw: &[f32]) {
    quantize_row_imatrix_with(x, y, qw, true)
}

/// `quantize_row_q4_1_impl`; `lanes` as in [`legacy_imatrix_blocks`] (same bytes either way).
pub fn quantize_row_imatrix_with(x: &[f32], y: &mut [u8], qw: &[f32], lanes: bool) {
    let blocks: &mut [BlockQ4_1] = bytemuck::cast_slice_mut(y);
    // The search returns `the_min`, the negated minimum.
    legacy_imatrix_blocks(x, qw, Search32::Qkx3(15), lanes, |i, d, the_min, l| {
        store(&mut blocks[i], d, -the_min, l)
    });
}

/// `dequantize_row_q4_1`.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    let blocks: &[BlockQ4_1] = bytemuck::cast_slice(x);
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_le(b.d);
        let m = f16_le(b.m);
        for j in 0..QK / 2 {
            yb[j] = (b.qs[j] & 0x0f) as f32 * d + m;
            yb[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}
/// Q4_1 in the registry.
pub struct Q4_1;

impl crate::quant::BlockFormat for Q4_1 {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::Q4_1;
    const BLOCK: usize = QK;
    type Block = BlockQ4_1;
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
