//! The ternary formats for BitNet b1.58 / TriLM weights, super-blocks of 256 values in
//! {-1, 0, +1} times one f16 scale (the block's largest magnitude):
//!
//! - TQ1_0 (54 bytes, 1.6875 bits per weight): 48 bytes of five trits each, then 4 bytes of
//!   four trits each, then the scale. A byte holds its trits as the base-3 number they make
//!   (first trit most significant), mapped from `0..243` onto `0..256` by rounding up, so that
//!   multiplying the byte by 3 (mod 256) brings the next trit into the top bits.
//! - TQ2_0 (66 bytes, 2.0625 bits per weight): 64 bytes of four 2-bit fields (`level + 1`),
//!   then the scale.
//!
//! Mirrors ggml's `quantize_row_tq1_0_ref` / `quantize_row_tq2_0_ref` (which `quantize_tq1_0`
//! and `quantize_tq2_0` call for every row, ignoring importance weights) and
//! `dequantize_row_tq1_0` / `dequantize_row_tq2_0`.

use super::float::{f16_le, to_f16_le};
use super::search::{c_lround_int, fmax_c};
use bytemuck::{Pod, Zeroable};

const QK_K: usize = 256;

/// ggml's `block_tq1_0`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockTq1_0 {
    /// 240 ternary digits, five per byte (base 3, scaled to a byte).
    pub qs: [u8; 48],
    /// The last 16 digits, four per byte.
    pub qh: [u8; 4],
    /// The scale, f16 (little-endian bytes).
    pub d: [u8; 2],
}

/// ggml's `block_tq2_0`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockTq2_0 {
    /// 256 2-bit codes for -1, 0, 1 (stored as 0, 1, 2), four per byte.
    pub qs: [u8; 64],
    /// The scale, f16 (little-endian bytes).
    pub d: [u8; 2],
}

/// The scale (ggml's `MAX` fold of the magnitudes, so a NaN is forgotten at the next value)
/// and its inverse (0 for a zero scale).
fn scale(xb: &[f32]) -> (f32, f32) {
    let d = xb.iter().fold(0.0f32, |m, v| fmax_c(m, v.abs()));
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (d, id)
}

/// `level + 1` of one value, as C's `lroundf(v * id) + 1` in an `int`. Products within the
/// `int` range (every one of a finite block) are rounded inline, half away from zero: `s`
/// minus its truncation is exact in binary floating point, so comparing it with ±0.5 decides
/// the rounding exactly ([`trit_ref`], the libm-style path, is the twin; tested equal). The
/// rest (NaN, ±Inf, huge) takes the machine's `lroundf` emulation.
#[inline(always)]
fn trit(v: f32, id: f32) -> i32 {
    let s = v * id;
    if s.abs() < 2_147_483_648.0 {
        let t = s as i32;
        let frac = s - t as f32;
        t.wrapping_add((frac >= 0.5) as i32 - (frac <= -0.5) as i32)
            .wrapping_add(1)
    } else {
        c_lround_int(s).wrapping_add(1)
    }
}

/// [`trit`] through the `lroundf` emulation alone.
#[inline(always)]
fn trit_ref(v: f32, id: f32) -> i32 {
    c_lround_int(v * id).wrapping_add(1)
}

/// [`trit`], or with `fast` false its twin [`trit_ref`].
#[inline(always)]
fn trit_with(v: f32, id: f32, fast: bool) -> i32 {
    if fast {
        trit(v, id)
    } else {
        trit_ref(v, id)
    }
}

/// Packs trits (most significant first) into one byte: the base-3 number in `u8`
/// arithmetic, then `ceil(n * 256 / 243)` kept to its low byte.
#[inline(always)]
fn pack_trits(trits: impl Iterator<Item = i32>) -> u8 {
    let n = trits.fold(0u8, |q, t| q.wrapping_mul(3).wrapping_add(t as u8));
    (n as u32 * 256).div_ceil(243) as u8
}

/// The trit in the top of `q * 3^n` (mod 256), as a level in {-1, 0, 1}.
#[inline(always)]
fn unpack_trit(q: u8, pow3: u8) -> i32 {
    let shifted = q.wrapping_mul(pow3);
    ((shifted as u16 * 3) >> 8) as i32 - 1
}

/// `quantize_row_tq1_0_ref` (fast path: inline rounding).
pub fn quantize_row_tq1_0(x: &[f32], y: &mut [u8]) {
    quantize_row_tq1_0_with(x, y, true)
}

/// `quantize_row_tq1_0_ref`; `fast` as in `trit_with` (same bytes either way).
pub fn quantize_row_tq1_0_with(x: &[f32], y: &mut [u8], fast: bool) {
    let trit = |v: f32, id: f32| trit_with(v, id, fast);
    let blocks: &mut [BlockTq1_0] = bytemuck::cast_slice_mut(y);
    for (xb, b) in x.chunks_exact(QK_K).zip(blocks) {
        let (d, id) = scale(xb);
        b.d = to_f16_le(d);
        // Bytes 0..32: value m + 32n is trit n of byte m (values 0..160).
        for m in 0..32 {
            b.qs[m] = pack_trits((0..5).map(|n| trit(xb[m + 32 * n], id)));
        }
        // Bytes 32..48: value 160 + m + 16n is trit n of byte 32 + m.
        let xs = &xb[160..240];
        for m in 0..16 {
            b.qs[32 + m] = pack_trits((0..5).map(|n| trit(xs[m + 16 * n], id)));
        }
        // qh: four trits per byte (value 240 + j + 4n is trit n of byte j), then a zero trit
        // at the bottom so that the first sits in the top position as in `qs`.
        let xh = &xb[240..256];
        for j in 0..4 {
            b.qh[j] = pack_trits((0..4).map(|n| trit(xh[j + 4 * n], id)).chain([0]));
        }
    }
}

/// `quantize_row_tq2_0_ref` (fast path: inline rounding).
pub fn quantize_row_tq2_0(x: &[f32], y: &mut [u8]) {
    quantize_row_tq2_0_with(x, y, true)
}

/// `quantize_row_tq2_0_ref`; `fast` as in `trit_with` (same bytes either way).
pub fn quantize_row_tq2_0_with(x: &[f32], y: &mut [u8], fast: bool) {
    let trit = |v: f32, id: f32| trit_with(v, id, fast);
    let blocks: &mut [BlockTq2_0] = bytemuck::cast_slice_mut(y);
    for (xb, b) in x.chunks_exact(QK_K).zip(blocks) {
        let (d, id) = scale(xb);
        b.d = to_f16_le(d);
        // Two halves of 128 values; value m + 32n of a half sits in bits 2n..2n+2 of byte m.
        for (half, qs) in xb.chunks_exact(128).zip(b.qs.chunks_exact_mut(32)) {
            for (m, q) in qs.iter_mut().enumerate() {
                *q = (0..4).fold(0u8, |acc, n| {
                    let field = (trit(half[m + 32 * n], id) & 3) as u8;
                    acc.wrapping_add(field << (2 * n))
                });
            }
        }
    }
}

const POW3: [u8; 5] = [1, 3, 9, 27, 81];

/// `dequantize_row_tq1_0`.
pub fn dequantize_row_tq1_0(x: &[u8], y: &mut [f32]) {
    let blocks: &[BlockTq1_0] = bytemuck::cast_slice(x);
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        let val = |q: u8, p: u8| unpack_trit(q, p) as f32 * d;
        for n in 0..5 {
            for m in 0..32 {
                yb[32 * n + m] = val(b.qs[m], POW3[n]);
            }
        }
        for n in 0..5 {
            for m in 0..16 {
                yb[160 + 16 * n + m] = val(b.qs[32 + m], POW3[n]);
            }
        }
        for n in 0..4 {
            for j in 0..4 {
                yb[240 + 4 * n + j] = val(b.qh[j], POW3[n]);
            }
        }
    }
}

/// `dequantize_row_tq2_0`.
pub fn dequantize_row_tq2_0(x: &[u8], y: &mut [f32]) {
    let blocks: &[BlockTq2_0] = bytemuck::cast_slice(x);
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        for (qs, yh) in b.qs.chunks_exact(32).zip(yb.chunks_exact_mut(128)) {
            for n in 0..4 {
                for m in 0..32 {
                    let level = ((qs[m] >> (2 * n)) & 3) as i32 - 1;
                    yh[32 * n + m] = level as f32 * d;
                }
            }
        }
    }
}

/// TQ1_0 in the registry (`qs[48]`, `qh[4]`, `d`).
pub struct TQ1_0;

impl crate::quant::BlockFormat for TQ1_0 {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::TQ1_0;
    const BLOCK: usize = QK_K;
    type Block = BlockTq1_0;
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::Q8K;
    const F16_SCALES: &'static [usize] = &[52];
    fn quantize(x: &[f32], y: &mut [u8]) {
        quantize_row_tq1_0(x, y)
    }
    fn quantize_imatrix(x: &[f32], y: &mut [u8], w: &[f32]) {
        // ggml's quantizer of this type ignores importance weights.
        let _ = w;
        Self::quantize(x, y)
    }
    fn dequantize(x: &[u8], y: &mut [f32]) {
        dequantize_row_tq1_0(x, y)
    }
}
/// TQ2_0 in the registry (`qs[64]`, `d`).
pub struct TQ2_0;

impl crate::quant::BlockFormat for TQ2_0 {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::TQ2_0;
    const BLOCK: usize = QK_K;
    type Block = BlockTq2_0;
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::Q8K;
    const F16_SCALES: &'static [usize] = &[64];
    fn quantize(x: &[f32], y: &mut [u8]) {
        quantize_row_tq2_0(x, y)
    }
    fn quantize_imatrix(x: &[f32], y: &mut [u8], w: &[f32]) {
        // ggml's quantizer of this type ignores importance weights.
        let _ = w;
        Self::quantize(x, y)
    }
    fn dequantize(x: &[u8], y: &mut [f32]) {
        dequantize_row_tq2_0(x, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_trit_pattern_survives_packing() {
        // Five trits per byte and four (plus the padding trit) in qh: each decodes to itself.
        for n in 0..243u32 {
            let trits: Vec<i32> = (0..5).rev().map(|k| (n / 3u32.pow(k) % 3) as i32).collect();
            let q = pack_trits(trits.iter().copied());
            for (k, &t) in trits.iter().enumerate() {
                assert_eq!(unpack_trit(q, POW3[k]), t - 1, "n {n} trit {k}");
            }
        }
    }

    #[test]
    fn inline_rounding_equals_lroundf() {
        let mut xs: Vec<f32> = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            -2.5,
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            2_147_483_648.0,
            -2_147_483_648.0,
            2_147_483_520.0,
            -2_147_483_520.0,
            8_388_608.5f32.next_down(),
        ];
        // Every half-integer tie up to 4096 and the floats on either side of it.
        for k in -8192..8192 {
            let v = k as f32 * 0.5;
            xs.extend([v, v.next_up(), v.next_down()]);
        }
        let mut s = crate::quant::golden::SplitMix(23);
        xs.extend((0..500_000).map(|_| f32::from_bits(s.next_u64() as u32)));
        xs.extend((0..500_000).map(|_| s.gauss() * 2.0));
        for x in xs {
            for id in [1.0f32, 0.999_999_94, 3.0, f32::INFINITY] {
                assert_eq!(
                    trit(x, id),
                    trit_ref(x, id),
                    "x = {x:e} ({:#x}) id {id}",
                    x.to_bits()
                );
            }
        }
    }

    #[test]
    fn ternary_rows_round_trip_exact_levels() {
        // Values already in {-a, 0, a}: both formats give them back exactly.
        let a = 0.375f32;
        let x: Vec<f32> = (0..512)
            .map(|i| [(-a), 0.0, a][(i * 7 + i / 3) % 3])
            .collect();
        for (bytes, q, dq) in [
            (
                54,
                quantize_row_tq1_0 as fn(&[f32], &mut [u8]),
                dequantize_row_tq1_0 as fn(&[u8], &mut [f32]),
            ),
            (66, quantize_row_tq2_0, dequantize_row_tq2_0),
        ] {
            let mut y = vec![0u8; 2 * bytes];
            q(&x, &mut y);
            let mut back = vec![0f32; 512];
            dq(&y, &mut back);
            assert_eq!(back, x);
        }
    }
}
