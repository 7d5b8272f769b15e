//! K-quants: 256-value super-blocks whose sub-block scales are themselves
//! quantized. One file per type, each mirroring ggml's `quantize_row_qN_K_ref`
//! (no importance weights), `quantize_row_qN_K_impl` (with them) and
//! `dequantize_row_qN_K`; the helpers they share live here.

pub mod q2_k;
pub mod q3_k;
pub mod q4_k;
pub mod q5_k;
pub mod q6_k;

/// Values per super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` of Q4_K/Q5_K.
#[inline(always)]
pub fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Packs eight 6-bit scales and mins into Q4_K/Q5_K's 12 bytes, as ggml does.
#[inline(always)]
pub fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8], scales: &mut [u8; 12]) {
    for j in 0..8 {
        let (l_s, l_m) = (ls[j], lm[j]);
        if j < 4 {
            scales[j] = l_s;
            scales[j + 4] = l_m;
        } else {
            scales[j + 4] = (l_s & 0xf) | ((l_m & 0xf) << 4);
            scales[j - 4] |= (l_s >> 4) << 6;
            scales[j] |= (l_m >> 4) << 6;
        }
    }
}

/// Q2_K/Q3_K's 2-bit packing: four rows of 32 levels per 128 values into 32 bytes.
#[inline(always)]
pub fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8; QK_K / 4]) {
    for j in (0..QK_K).step_by(128) {
        for k in 0..32 {
            qs[j / 4 + k] =
                l[j + k] | (l[j + k + 32] << 2) | (l[j + k + 64] << 4) | (l[j + k + 96] << 6);
        }
    }
}

/// The head of Q4_K's and Q5_K's block encoding (`quantize_row_q{4,5}_K_ref` / `_impl`):
/// packs the 6-bit scales `ls` and mins `lm`, rounds `d` and `dmin` to f16, and requantizes
/// the levels (up to `nmax`) from those stored values. Returns (scales, d, dmin) as stored.
#[inline(always)]
pub fn encode_head_k4(
    x: &[f32],
    ls: &[u8; 8],
    lm: &[u8; 8],
    d: f32,
    dmin: f32,
    nmax: i32,
    l: &mut [u8; QK_K],
) -> ([u8; 12], [u8; 2], [u8; 2]) {
    use crate::quant::float::{f16_le, to_f16_le};
    let mut scales = [0u8; 12];
    pack_scale_min_k4(ls, lm, &mut scales);
    let (d, dmin) = (to_f16_le(d), to_f16_le(dmin));
    requantize_k4(x, &scales, f16_le(d), f16_le(dmin), nmax, l);
    (scales, d, dmin)
}

/// Q4_K/Q5_K's final pass: levels from the quantized scale and min of each sub-block of 32.
#[inline(always)]
pub fn requantize_k4(
    x: &[f32],
    scales: &[u8; 12],
    d: f32,
    dmin: f32,
    nmax: i32,
    l: &mut [u8; QK_K],
) {
    use crate::quant::search::{clamp_i, nearest_int};
    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, scales);
        let dd = d * sc as f32;
        if dd == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        for ii in 0..32 {
            let v = nearest_int((x[32 * j + ii] + dm) / dd);
            l[32 * j + ii] = clamp_i(v, 0, nmax) as u8;
        }
    }
}

/// Runs `$body` on consecutive groups of super-blocks of the row `$x` and of `$blocks`:
/// fours while `$kernel.quads()` (the AVX-512 searches hold two super-blocks a register and
/// interleave two registers), then pairs (the AVX2 searches interleave two super-blocks), then
/// the last one alone if one is left, with `$i` the index of the first block, `$xs` the
/// `[&[f32]; G]` inputs and `$bs` the `[&mut B; G]` blocks. A macro, not a function taking
/// closures, so that everything inlines into the callers' AVX2 builds.
macro_rules! by_pairs {
    ($x:expr, $blocks:expr, $kernel:expr, |$i:ident, $xs:ident, $bs:ident| $body:expr) => {{
        let (x, blocks): (&[f32], &mut [_]) = ($x, $blocks);
        let n = blocks.len().min(x.len() / QK_K);
        let mut at = 0;
        let quads = $kernel.quads();
        by_pairs!(@run 4, quads, x, blocks, n, at, |$i, $xs, $bs| $body);
        by_pairs!(@run 2, true, x, blocks, n, at, |$i, $xs, $bs| $body);
        by_pairs!(@run 1, true, x, blocks, n, at, |$i, $xs, $bs| $body);
    }};
    (@run $g:literal, $on:expr, $x:ident, $blocks:ident, $n:ident, $at:ident,
        |$i:ident, $xs:ident, $bs:ident| $body:expr) => {
        while $on && $n - $at >= $g {
            let $i = $at;
            let $xs: [&[f32]; $g] =
                std::array::from_fn(|k| &$x[QK_K * ($at + k)..QK_K * ($at + k + 1)]);
            let group: &mut [_; $g] = (&mut $blocks[$at..$at + $g]).try_into().unwrap();
            let $bs = group.each_mut();
            $body;
            $at += $g;
        }
    };
}
pub(crate) use by_pairs;
