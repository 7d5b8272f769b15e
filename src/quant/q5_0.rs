//! Q5_0: blocks of 32 values as 5-bit levels `q - 16` times one f16 scale
//! (22 bytes: scale, 32 high bits, 16 bytes of low nibbles). Mirrors ggml's
//! `quantize_row_q5_0_ref`, `quantize_row_q5_0_impl` and `dequantize_row_q5_0`.

use super::float::{f16_le, to_f16_le};
use super::lanes::{legacy_imatrix_blocks, Search32};
use super::search::{c_int, signed_absmax, signed_absmax_fast};
use bytemuck::{Pod, Zeroable};

/// Elements per block (`QK5_0`).
pub const QK: usize = 32;

/// ggml's `block_q5_0`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5_0 {
    /// The scale, f16 (little-endian bytes).
    pub d: [u8; 2],
    /// Bit 4 of each of the 32 levels, element `j` at bit `j` (little-endian u32).
    pub qh: [u8; 4],
    /// The low 4 bits of the 32 levels, two per byte as in Q4_0.
    pub qs: [u8; QK / 2],
}

/// Packs 32 five-bit levels (`xi[j]` low nibble into `qs`, bit 4 into `qh`) as ggml does.
pub(crate) fn pack5(xi: impl Fn(usize) -> u8, qs: &mut [u8; 16], qh_out: &mut [u8; 4]) {
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let xi0 = xi(j);
        let xi1 = xi(j + QK / 2);
        qs[j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
        qh |= (((xi0 & 0x10) as u32) >> 4) << j;
        qh |= (((xi1 & 0x10) as u32) >> 4) << (j + QK / 2);
    }
    *qh_out = qh.to_le_bytes();
}

/// `quantize_row_q5_0_ref`.
pub fn quantize_row_ref(x: &[f32], y: &mut [u8]) {
    let blocks: &mut [BlockQ5_0] = bytemuck::cast_slice_mut(y);
    for (xb, b) in x.chunks_exact(QK).zip(blocks) {
        let (_, max) = signed_absmax(xb);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = to_f16_le(d);
        let xi = |j: usize| (c_int(xb[j] * id + 16.5) as i8).min(31) as u8;
        pack5(xi, &mut b.qs, &mut b.qh);
    }
}

/// Q5_0 row: the AVX2 kernel ([`super::legacy_avx2`]) when the CPU has AVX2,
/// else [`quantize_row_portable`]; the same bytes as [`quantize_row_ref`] either way.
pub fn quantize_row(x: &[f32], y: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if super::legacy_avx2::quantize_q5_0(x, y) {
        return;
    }
    quantize_row_portable(x, y)
}

/// Q5_0 row written so that it vectorises; same bytes as [`quantize_row_ref`] (tested).
/// Blocks with NaN, infinities or an overflowing inverse scale take the reference code.
pub fn quantize_row_portable(x: &[f32], y: &mut [u8]) {
    let blocks: &mut [BlockQ5_0] = bytemuck::cast_slice_mut(y);
    for (xb, b) in x.chunks_exact(QK).zip(blocks) {
        let xb: &[f32; QK] = xb.try_into().expect("chunks_exact");
        let max = signed_absmax_fast(xb);
        let d = max.unwrap_or(0.0) / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        if max.is_none() || !id.is_finite() {
            quantize_row_ref(xb, bytemuck::bytes_of_mut(b));
            continue;
        }
        b.d = to_f16_le(d);
        // |x * id| <= 16 (plus rounding): in range, so `as` truncates like C.
        let xi: [u8; QK] = std::array::from_fn(|j| ((xb[j] * id + 16.5) as i32).min(31) as u8);
        pack5(|j| xi[j], &mut b.qs, &mut b.qh);
    }
}

/// `quantize_row_q5_0_impl` with importance weights (fast path: 8 blocks side by side).
pub fn quantize_row_imatrix(x: &[f32], y: &mut [u8], qw: &[f32]) {
    quantize_row_imatrix_with(x, y, qw, true)
}

/// `quantize_row_q5_0_impl`; `lanes` as in [`legacy_imatrix_blocks`] (same bytes either way).
pub fn quantize_row_imatrix_with(x: &[f32], y: &mut [u8], qw: &[f32], lanes: bool) {
    let blocks: &mut [BlockQ5_0] = bytemuck::cast_slice_mut(y);
    legacy_imatrix_blocks(x, qw, Search32::Qx(16), lanes, |i, d, _, l| {
        let b = &mut blocks[i];
        b.d = to_f16_le(d);
        pack5(|j| l[j], &mut b.qs, &mut b.qh);
    });
}

/// The 5-bit level `j` of a block (0..32).
#[inline]
pub(crate) fn level5(qs: &[u8; 16], qh: u32, j: usize) -> i32 {
    if j < QK / 2 {
        ((qs[j] & 0x0f) | ((((qh >> j) << 4) & 0x10) as u8)) as i32
    } else {
        let k = j - QK / 2;
        ((qs[k] >> 4) | (((qh >> (k + 12)) & 0x10) as u8)) as i32
    }
}

/// `dequantize_row_q5_0`.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    let blocks: &[BlockQ5_0] = bytemuck::cast_slice(x);
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_le(b.d);
        let qh = u32::from_le_bytes(b.qh);
        for (j, o) in yb.iter_mut().enumerate() {
            *o = (level5(&b.qs, qh, j) - 16) as f32 * d;
        }
    }
}
/// Q5_0 in the registry.
pub struct Q5_0;

impl crate::quant::BlockFormat for Q5_0 {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::Q5_0;
    const BLOCK: usize = QK;
    type Block = BlockQ5_0;
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::Q8_0;
    const F16_SCALES: &'static [usize] = &[0];
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
