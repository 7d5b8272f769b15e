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

/// Runs `$body` on consecutive pairs of super-blocks of the row `$x` and of `$blocks`, then
/// on the last one alone if the count is odd, with `$i` the index of the first block, `$xs`
/// the `[&[f32]; G]` inputs and `$bs` the `[&mut B; G]` blocks (`G` = 2, then 1). Pairs let
/// the AVX2 searches interleave two independent super-blocks. A macro, not a function taking
/// closures, so that everything inlines into the callers' AVX2 builds.
macro_rules! by_pairs {
    ($x:expr, $blocks:expr, |$i:ident, $xs:ident, $bs:ident| $body:expr) => {{
        let (x, blocks): (&[f32], &mut [_]) = ($x, $blocks);
        let n = blocks.len().min(x.len() / QK_K);
        let mut i = 0;
        while i + 2 <= n {
            let (b0, b1) = blocks[i..i + 2].split_at_mut(1);
            let $i = i;
            let $xs = [
                &x[QK_K * i..QK_K * (i + 1)],
                &x[QK_K * (i + 1)..QK_K * (i + 2)],
            ];
            let $bs = [&mut b0[0], &mut b1[0]];
            $body;
            i += 2;
        }
        if i < n {
            let $i = i;
            let $xs = [&x[QK_K * i..QK_K * (i + 1)]];
            let $bs = [&mut blocks[i]];
            $body;
        }
    }};
}
pub(crate) use by_pairs;
