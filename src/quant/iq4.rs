//! IQ4_NL (blocks of 32, 18 bytes) and IQ4_XS (super-blocks of 256, 136 bytes):
//! 4-bit indices into ggml's non-linear table `kvalues_iq4nl`. Mirrors ggml's
//! `quantize_row_iq4_nl_impl` as `quantize_iq4_nl` / `quantize_iq4_xs` call it
//! (ntry 7, with or without importance weights: that is what `ggml_quantize_chunk`
//! and llama-quantize produce), and `dequantize_row_iq4_nl` / `dequantize_row_iq4_xs`.

use super::float::f16_le;
use super::search::{clamp_i, nearest_int, signed_absmax, sum_sq, GROUP_MAX_EPS};
use bytemuck::{Pod, Zeroable};

/// ggml's `kvalues_iq4nl`.
pub const KVALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

const QK4_NL: usize = 32;
const QK_K: usize = 256;
const NTRY: i32 = 7;

/// ggml's `block_iq4_nl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockIq4Nl {
    /// The block scale, an f16's bytes.
    pub d: [u8; 2],
    /// 4-bit indices into the non-linear table, two per byte (low nibbles first half).
    pub qs: [u8; QK4_NL / 2],
}

/// ggml's `block_iq4_xs`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockIq4Xs {
    /// The super-block scale, an f16's bytes.
    pub d: [u8; 2],
    /// A little-endian u16: the 2-bit highs of the eight 6-bit sub-block scales.
    pub scales_h: [u8; 2],
    /// Their 4-bit lows, two per byte.
    pub scales_l: [u8; QK_K / 64],
    /// 4-bit indices into the non-linear table, two per byte, per sub-block of 32.
    pub qs: [u8; QK_K / 2],
}

/// ggml's `best_index_int8`: the table index nearest to `x` (binary search, ties to the lower).
#[inline]
fn best_index(x: f32) -> u8 {
    let val = &KVALUES;
    if x <= val[0] as f32 {
        return 0;
    }
    if x >= val[15] as f32 {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < val[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (val[mu - 1] as f32) < val[mu] as f32 - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}

/// [`best_index`] without branches, so that a loop over a block vectorises; the same index
/// for every input, NaN included (tested). The binary search keeps `val[ml] <= x < val[mu]`
/// and moves right when `!(x < val[mid])`; on the sorted table that ends with `mu` = 1 + the
/// number of `i` in 1..15 with `!(x < val[i])` (15 for NaN, as the search), `val[ml]` the
/// last such value and `val[mu]` the first value above `x`.
#[inline(always)]
fn best_index_branchless(x: f32) -> u8 {
    let val = |i: usize| KVALUES[i] as f32;
    let mut mu = 1u8;
    let mut lo = val(0);
    let mut hi = val(15);
    for i in 1..15 {
        // ggml's search moves right when `x < val` fails, which it also does for NaN.
        let right = x.is_nan() | (x >= val(i));
        mu += right as u8;
        lo = if right { val(i) } else { lo };
    }
    for i in (1..15).rev() {
        hi = if x < val(i) { val(i) } else { hi };
    }
    let mid = if x - lo < hi - x { mu - 1 } else { mu };
    let top = if x >= val(15) { 15 } else { mid };
    if x <= val(0) {
        0
    } else {
        top
    }
}

/// The table index of `id * xb[j]` for each of 32 values: ggml's binary search, or with
/// `fast` its branch-free twin (vectorised).
#[inline(always)]
fn indices(id: f32, xb: &[f32], fast: bool, idx: &mut [u8; 32]) {
    if fast {
        for j in 0..32 {
            idx[j] = best_index_branchless(id * xb[j]);
        }
    } else {
        for j in 0..32 {
            idx[j] = best_index(id * xb[j]);
        }
    }
}

/// `quantize_row_iq4_nl_impl` for one super-block of `x.len()` values (32 or 256) in
/// sub-blocks of 32, with `ntry` 7. Returns the f16 super-scale bits; fills `q4`
/// (x.len()/2 bytes) and, for more than one sub-block, the 6-bit sub-scales.
#[inline(always)]
fn quantize_impl(
    x: &[f32],
    qw: Option<&[f32]>,
    q4: &mut [u8],
    scales_h: &mut u16,
    scales_l: &mut [u8],
    fast: bool,
) -> u16 {
    let sbs = x.len();
    let nb = sbs / 32;
    let mut sigma2 = sum_sq(x);
    sigma2 *= 2.0 / sbs as f32;
    q4.fill(0);
    let dh;
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; QK_K / 32];
    let mut weight = [0f32; 32];
    let mut max_scale = 0.0f32;
    let mut amax_scale = 0.0f32;
    let v0 = KVALUES[0] as f32;
    for ib in 0..nb {
        let xb = &x[32 * ib..32 * ib + 32];
        match qw {
            Some(q) => {
                for ((w, &qv), &v) in weight.iter_mut().zip(&q[32 * ib..32 * ib + 32]).zip(xb) {
                    *w = qv * (sigma2 + v * v).sqrt();
                }
            }
            None => {
                for (w, &v) in weight.iter_mut().zip(xb) {
                    *w = v * v;
                }
            }
        }
        let (amax, max) = signed_absmax(xb);
        if amax < GROUP_MAX_EPS {
            scales[ib] = 0.0;
            continue;
        }
        let mut d = -max / v0;
        let mut id = 1.0 / d;
        let mut sumqx = 0.0f32;
        let mut sumq2 = 0.0f32;
        let mut idx = [0u8; 32];
        indices(id, xb, fast, &mut idx);
        for j in 0..32 {
            let li = idx[j];
            l[32 * ib + j] = li;
            let q = KVALUES[li as usize] as f32;
            let w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -NTRY..=NTRY {
            id = (itry + KVALUES[0] as i32) as f32 / max;
            sumqx = 0.0;
            sumq2 = 0.0;
            indices(id, xb, fast, &mut idx);
            for j in 0..32 {
                let q = KVALUES[idx[j] as usize] as f32;
                let w = weight[j];
                sumqx += w * q * xb[j];
                sumq2 += w * q * q;
            }
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
        let abs_d = d.abs();
        if abs_d > amax_scale {
            amax_scale = abs_d;
            max_scale = d;
        }
    }
    if nb > 1 {
        *scales_h = 0;
        let d = -max_scale / 32.0;
        dh = super::float::f32_to_f16_bits(d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for ib in 0..nb {
            let mut li = clamp_i(nearest_int(id * scales[ib]), -32, 31);
            let dl = d * li as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            let mut idx = [0u8; 32];
            indices(idl, &x[32 * ib..32 * ib + 32], fast, &mut idx);
            l[32 * ib..32 * ib + 32].copy_from_slice(&idx);
            li += 32;
            let l_l = (li & 0xf) as u8;
            let l_h = (li >> 4) as u8;
            if ib % 2 == 0 {
                scales_l[ib / 2] = l_l;
            } else {
                scales_l[ib / 2] |= l_l << 4;
            }
            *scales_h |= (l_h as u16) << (2 * (ib % 8));
        }
    } else {
        dh = super::float::f32_to_f16_bits(scales[0]);
        let id = if scales[0] != 0.0 {
            1.0 / scales[0]
        } else {
            0.0
        };
        for (lb, xb) in l[..sbs].chunks_exact_mut(32).zip(x.chunks_exact(32)) {
            let mut idx = [0u8; 32];
            indices(id, xb, fast, &mut idx);
            lb.copy_from_slice(&idx);
        }
    }
    for i in 0..sbs / 32 {
        for j in 0..16 {
            q4[16 * i + j] = l[32 * i + j] | (l[32 * i + 16 + j] << 4);
        }
    }
    dh
}

/// IQ4_NL row (`quantize_iq4_nl`), importance weights optional (fast path: branch-free
/// table search, built for AVX2 when the CPU has it).
pub fn quantize_row_nl(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    #[cfg(target_arch = "x86_64")]
    if quantize_row_nl_avx2(x, y, qw) {
        return;
    }
    quantize_row_nl_with(x, y, qw, true)
}

/// IQ4_XS row (`quantize_iq4_xs`), importance weights optional (fast path as [`quantize_row_nl`]).
pub fn quantize_row_xs(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    #[cfg(target_arch = "x86_64")]
    if quantize_row_xs_avx2(x, y, qw) {
        return;
    }
    quantize_row_xs_with(x, y, qw, true)
}

crate::quant::simd::avx2_build!(
    /// `quantize_row_nl_with(x, y, qw, true)` built for AVX2 (same bytes; `false` without AVX2).
    quantize_row_nl_avx2(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) => quantize_row_nl_with(x, y, qw, true)
);

crate::quant::simd::avx2_build!(
    /// `quantize_row_xs_with(x, y, qw, true)` built for AVX2 (same bytes; `false` without AVX2).
    quantize_row_xs_avx2(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) => quantize_row_xs_with(x, y, qw, true)
);

/// IQ4_NL row; `fast` picks the branch-free table search instead of ggml's binary search
/// (same bytes).
#[inline(always)]
pub fn quantize_row_nl_with(x: &[f32], y: &mut [u8], qw: Option<&[f32]>, fast: bool) {
    let blocks: &mut [BlockIq4Nl] = bytemuck::cast_slice_mut(y);
    let mut unused_h = 0u16;
    for (ib, (xb, b)) in x.chunks_exact(QK4_NL).zip(blocks).enumerate() {
        let w = qw.map(|q| &q[QK4_NL * ib..QK4_NL * (ib + 1)]);
        let dh = quantize_impl(xb, w, &mut b.qs, &mut unused_h, &mut [], fast);
        b.d = dh.to_le_bytes();
    }
}

/// IQ4_XS row; `fast` as in [`quantize_row_nl_with`].
#[inline(always)]
pub fn quantize_row_xs_with(x: &[f32], y: &mut [u8], qw: Option<&[f32]>, fast: bool) {
    let blocks: &mut [BlockIq4Xs] = bytemuck::cast_slice_mut(y);
    for (ib, (xb, b)) in x.chunks_exact(QK_K).zip(blocks).enumerate() {
        let w = qw.map(|q| &q[QK_K * ib..QK_K * (ib + 1)]);
        let mut sh = u16::from_le_bytes(b.scales_h);
        let dh = quantize_impl(xb, w, &mut b.qs, &mut sh, &mut b.scales_l, fast);
        b.scales_h = sh.to_le_bytes();
        b.d = dh.to_le_bytes();
    }
}

/// `dequantize_row_iq4_nl`.
pub fn dequantize_row_nl(x: &[u8], y: &mut [f32]) {
    let blocks: &[BlockIq4Nl] = bytemuck::cast_slice(x);
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK4_NL)) {
        let d = f16_le(b.d);
        for j in 0..QK4_NL / 2 {
            y[j] = d * KVALUES[(b.qs[j] & 0xf) as usize] as f32;
            y[j + QK4_NL / 2] = d * KVALUES[(b.qs[j] >> 4) as usize] as f32;
        }
    }
}

/// `dequantize_row_iq4_xs`.
pub fn dequantize_row_xs(x: &[u8], y: &mut [f32]) {
    let blocks: &[BlockIq4Xs] = bytemuck::cast_slice(x);
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        let sh = u16::from_le_bytes(b.scales_h) as i32;
        for ib in 0..QK_K / 32 {
            let ls = ((b.scales_l[ib / 2] as i32 >> (4 * (ib % 2))) & 0xf)
                | (((sh >> (2 * ib)) & 3) << 4);
            let dl = d * (ls - 32) as f32;
            let qs = &b.qs[16 * ib..16 * ib + 16];
            let yb = &mut y[32 * ib..32 * ib + 32];
            for j in 0..16 {
                yb[j] = dl * KVALUES[(qs[j] & 0xf) as usize] as f32;
                yb[j + 16] = dl * KVALUES[(qs[j] >> 4) as usize] as f32;
            }
        }
    }
}

/// IQ4_NL in the registry.
pub struct IQ4NL;

impl crate::quant::BlockFormat for IQ4NL {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::IQ4NL;
    const BLOCK: usize = QK4_NL;
    type Block = BlockIq4Nl;
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::Q8_0;
    const F16_SCALES: &'static [usize] = &[0];
    fn quantize(x: &[f32], y: &mut [u8]) {
        quantize_row_nl(x, y, None)
    }
    fn quantize_imatrix(x: &[f32], y: &mut [u8], w: &[f32]) {
        quantize_row_nl(x, y, Some(w))
    }
    fn dequantize(x: &[u8], y: &mut [f32]) {
        dequantize_row_nl(x, y)
    }
}
/// IQ4_XS in the registry.
pub struct IQ4XS;

impl crate::quant::BlockFormat for IQ4XS {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::IQ4XS;
    const BLOCK: usize = QK_K;
    type Block = BlockIq4Xs;
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::Q8K;
    const F16_SCALES: &'static [usize] = &[0];
    fn quantize(x: &[f32], y: &mut [u8]) {
        quantize_row_xs(x, y, None)
    }
    fn quantize_imatrix(x: &[f32], y: &mut [u8], w: &[f32]) {
        quantize_row_xs(x, y, Some(w))
    }
    fn dequantize(x: &[u8], y: &mut [f32]) {
        dequantize_row_xs(x, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branchless_index_equals_binary_search() {
        let mut xs: Vec<f32> = vec![
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
            0.0,
            -0.0,
        ];
        // Every table value, the midpoints between neighbours (ties) and their neighbours.
        for w in KVALUES.windows(2) {
            let (a, b) = (w[0] as f32, w[1] as f32);
            for v in [a, b, (a + b) / 2.0] {
                xs.extend([
                    v,
                    f32::from_bits(v.to_bits() + 1),
                    f32::from_bits(v.to_bits() - 1),
                ]);
            }
        }
        xs.extend((-3000..3000).map(|i| i as f32 * 0.05));
        let mut s = crate::quant::golden::SplitMix(3);
        xs.extend((0..200_000).map(|_| f32::from_bits(s.next_u64() as u32)));
        for x in xs {
            assert_eq!(
                best_index_branchless(x),
                best_index(x),
                "x = {x:e} ({:#x})",
                x.to_bits()
            );
        }
    }
}
