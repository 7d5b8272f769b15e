//! The 1-bit i-quants, points of the 2048-point ternary lattice [`iq_grid::iq1s`] (levels
//! -1, 0, +1 per value, each point's 11-bit index stored as a byte plus 3 high bits) shifted
//! by ±[`DELTA`]:
//!
//! - IQ1_S (1.5625 bits per weight, 50 bytes per 256): groups of 32 (four points) with a
//!   3-bit scale and one shift sign in a u16 `qh` beside the points' high bits; one f16
//!   super-scale. Importance weights required (ggml asserts without them).
//! - IQ1_M (1.75 bits per weight, 56 bytes per 256): groups of 16 (two points), each point
//!   with its own shift sign, a 3-bit scale per group, and the f16 super-scale spread over the
//!   top nibbles of the four scale words. Without importance weights a value weighs `x^2`.
//!
//! The group search is exhaustive: the values sorted (glibc's `qsort`, a stable top-down
//! merge sort, reproduced by [`sort_pairs`] because ggml's comparator treats NaN as equal to
//! everything, which makes the order depend on the algorithm), every split into the three
//! levels scored by prefix sums. Mirrors ggml's `quantize_row_iq1_s_impl`,
//! `quantize_row_iq1_m_impl`, `iq1_find_best_neighbour2`, `dequantize_row_iq1_s` and
//! `dequantize_row_iq1_m`.

use super::float::{f16_le, to_f16_le};
use super::iq_grid::{self, Grid, Lookup, Neighbours};
use super::search::nearest_int;
use bytemuck::{Pod, Zeroable};

const QK_K: usize = 256;
/// ggml's `IQ1S_DELTA` (= `IQ1M_DELTA`).
pub const DELTA: f32 = 0.125;
/// ggml's `GROUP_MAX_EPS_IQ1_S`.
const GROUP_MAX_EPS_IQ1_S: f32 = 1e-12;
/// ggml's `GROUP_MAX_EPS_IQ1_M`.
const GROUP_MAX_EPS_IQ1_M: f32 = 1e-7;
/// The shifted levels: `x_p` (shift +DELTA) and `x_m` (shift -DELTA).
const X_P: [f32; 3] = [-1.0 + DELTA, DELTA, 1.0 + DELTA];
const X_M: [f32; 3] = [-1.0 - DELTA, -DELTA, 1.0 - DELTA];

/// ggml's `block_iq1_s`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockIq1S {
    /// The super-block scale, an f16's bytes.
    pub d: [u8; 2],
    /// The low 8 bits of each group of 8 values' grid index.
    pub qs: [u8; QK_K / 8],
    /// Per group of 32, a little-endian u16: four 3-bit index highs, the 3-bit scale at bit
    /// 12, the shift sign at bit 15.
    pub qh: [u8; QK_K / 16],
}

/// ggml's `block_iq1_m`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockIq1M {
    /// The low 8 bits of each group of 8 values' grid index.
    pub qs: [u8; QK_K / 8],
    /// Per group of 16: the two points' index highs (bits 0-2, 4-6) and shift signs (3, 7).
    pub qh: [u8; QK_K / 16],
    /// Four little-endian u16: four 3-bit group scales each, then a nibble of the f16 scale.
    pub scales: [u8; QK_K / 32],
}

/// Sorts `(value, index)` pairs by value as glibc's `qsort` does with ggml's
/// `iq1_sort_helper` (`a < b ? -1 : a > b ? 1 : 0`): `msort_with_tmp`, a top-down merge sort
/// that halves as `n / 2` and takes from the left run unless its head compares greater.
pub fn sort_pairs(v: &mut [(f32, u8)]) {
    let mut tmp = [(0.0f32, 0u8); 32];
    msort(v, &mut tmp[..v.len()]);
}

fn msort(v: &mut [(f32, u8)], tmp: &mut [(f32, u8)]) {
    let n = v.len();
    if n <= 1 {
        return;
    }
    let n1 = n / 2;
    msort(&mut v[..n1], &mut tmp[..n1]);
    msort(&mut v[n1..], &mut tmp[n1..]);
    let (mut i, mut j, mut o) = (0, n1, 0);
    while i < n1 && j < n {
        // `cmp(left, right) <= 0` is "left is not greater".
        if v[i].0 > v[j].0 {
            tmp[o] = v[j];
            j += 1;
        } else {
            tmp[o] = v[i];
            i += 1;
        }
        o += 1;
    }
    while i < n1 {
        tmp[o] = v[i];
        i += 1;
        o += 1;
    }
    // The rest of the right run is already in place.
    v[..o].copy_from_slice(&tmp[..o]);
}

/// `iq1_find_best_neighbour2`: the neighbour whose shifted levels `xg` minimise
/// `sum w (scale q - x)^2`, its levels written to `l`. ggml asserts (after a fallback over the
/// whole grid that reads past its row) when no distance is below `FLT_MAX`, which only NaN
/// and overflowing inputs reach; laquant then takes the first neighbour.
#[inline(always)]
fn best_neighbour(
    grid: &Grid<8>,
    neighbours: Neighbours<'_, 8>,
    xval: &[f32],
    weight: &[f32],
    scale: f32,
    xg: &[f32; 3],
    l: &mut [i8],
) -> usize {
    let index = iq_grid::nearest(neighbours, xval, weight, scale, |l| shifted(xg, l));
    for (o, &q) in l.iter_mut().zip(&grid.points[index]) {
        *o = (q - 1) / 2;
    }
    index
}

/// `xg[l]` for a level of the ternary grid (0, 1 or 2) computed as `(l - 1) + xg[1]`, which
/// is exact for both shifts (`xg[1]` is `±DELTA`, a power of two; a test checks the six
/// values), and which the lanes of [`iq_grid::nearest`] vectorise.
#[inline(always)]
fn shifted(xg: &[f32; 3], l: u8) -> f32 {
    (l as i32 - 1) as f32 + xg[1]
}

/// The grid index of levels `l` (each 0..=2), through the neighbour search when off the grid;
/// the flag tells whether it was on it.
#[inline(always)]
fn place(
    grid: &Grid<8>,
    xb: &[f32],
    weight: &[f32],
    scale: f32,
    xg: &[f32; 3],
    l: &mut [i8],
) -> (usize, bool) {
    match grid.lookup(grid.pattern(l)) {
        Lookup::OnGrid(i) => (i, true),
        Lookup::Neighbours(n) => (best_neighbour(grid, n, xb, weight, scale, xg, l), false),
    }
}

/// `sum w q x` and `sum w q^2` of grid point `index` with shifted levels `xg` (times `mul`).
#[inline(always)]
fn point_sums(
    grid: &Grid<8>,
    index: usize,
    xg: &[f32; 3],
    mul: Option<f32>,
    weight: &[f32],
    xb: &[f32],
    sums: &mut (f32, f32),
) {
    let pg = &grid.points[index];
    for j in 0..8 {
        let w = weight[j];
        let mut q = xg[((pg[j] - 1) / 2) as usize];
        if let Some(m) = mul {
            q *= m;
        }
        sums.0 += w * q * xb[j];
        sums.1 += w * q * q;
    }
}

/// The largest magnitude as ggml's `MAX(max, fabsf(x))` fold from the first value
/// (`a > b ? a : b`: a NaN value replaces the running maximum, which a later value replaces).
#[inline(always)]
fn max_abs(xb: &[f32]) -> f32 {
    let mut max = xb[0].abs();
    for v in &xb[1..] {
        let a = v.abs();
        max = if max > a { max } else { a };
    }
    max
}

/// How many splits the IQ1 searches score at once.
const LANES: usize = 8;
/// [`SplitSearch::top`]'s range for a best, a candidate's `sumq2` and `sumqx^2`: within it
/// every product it compares is a normal number (rounded to a relative half unit).
const TINY: f32 = 1e-10;
/// See [`TINY`].
const BIG: f32 = 1e18;

/// The state of ggml's exhaustive split search (IQ1_S and IQ1_M): over the splits `i1 <= i2`
/// in ggml's order and, per split, the shift choices `k` in order, the candidate
/// `(sumqx, sumq2)` replaces the best when `sumq2 > 0 && sumqx^2 > best_score sumq2`; then
/// `scale = sumqx / sumq2`, `best_score = scale sumqx`.
struct SplitSearch {
    best_score: f32,
    scale: f32,
    /// The last split and shift choice taken.
    best: Option<(usize, usize, usize)>,
}

impl SplitSearch {
    fn new(max: f32) -> Self {
        SplitSearch {
            best_score: -f32::MAX,
            scale: max,
            best: None,
        }
    }

    /// One chunk of splits `(i1, c + j)` for `j < n` (of [`LANES`]), their candidates
    /// `qx[k][j]`, `q2[k][j]` computed in the lanes with ggml's operations. The chunk is
    /// passed over at once when no candidate beats the best it starts with: the best only
    /// changes when one does, so ggml's loop would take none of them either.
    #[inline(always)]
    fn scan<const K: usize>(
        &mut self,
        qx: &[[f32; LANES]; K],
        q2: &[[f32; LANES]; K],
        i1: usize,
        c: usize,
        n: usize,
    ) {
        let b = self.best_score;
        let mut any = false;
        for k in 0..K {
            for j in 0..LANES {
                any |= (j < n) & (q2[k][j] > 0.0) & (qx[k][j] * qx[k][j] > b * q2[k][j]);
            }
        }
        if !any {
            return;
        }
        // IQ1_M's chunks (4 shifts) take several bests each; IQ1_S's (2 shifts) take about one,
        // and the scores cost it more than they save (measured: 1.8x slower).
        let top = if K == 4 { self.top(qx, q2, n) } else { None };
        let Some(h) = top else {
            for j in 0..n.min(LANES) {
                for k in 0..K {
                    self.consider(qx[k][j], q2[k][j], (i1, c + j, k));
                }
            }
            return;
        };
        // The candidates in ggml's order (split, then shift) as the bits of a mask.
        let mut m = 0u64;
        for k in 0..K {
            let mut lanes = 0u64;
            for (j, &on) in h[k].iter().enumerate() {
                lanes |= (on as u64) << j;
            }
            m |= spread::<K>(lanes) << k;
        }
        while m != 0 {
            let t = m.trailing_zeros() as usize;
            m &= m - 1;
            let (j, k) = (t / K, t % K);
            self.consider(qx[k][j], q2[k][j], (i1, c + j, k));
        }
    }

    /// ggml's step: the candidate replaces the best if it beats it.
    #[inline(always)]
    fn consider(&mut self, sumqx: f32, sumq2: f32, at: (usize, usize, usize)) {
        if sumq2 > 0.0 && sumqx * sumqx > self.best_score * sumq2 {
            self.scale = sumqx / sumq2;
            self.best_score = self.scale * sumqx;
            self.best = Some(at);
        }
    }

    /// The candidates of a chunk that decide how ggml's loop leaves it, when a gap sets them
    /// apart; `None` when ggml's loop must be replayed on all of them.
    ///
    /// A take sets the best to the candidate's `s = (sumqx / sumq2) sumqx`, and a candidate is
    /// taken when `sumqx^2 > best sumq2`, i.e. when its `s` beats the best within a few units
    /// in the last place. Let `top` be the largest `s` of the candidates that beat the chunk's
    /// starting best, `t = top (1 - 1e-3)`, and suppose no such candidate has its `s` in
    /// `[t (1 - 1e-4), t)` and the starting best is below that band. Then the first candidate
    /// with `s >= t` is taken whatever was taken before it (every earlier best, the starting one
    /// or a candidate's `s`, lies below the band), after which no candidate below the band is
    /// taken (a take lowers the best by at most 4 units in the last place, 32 takes by less
    /// than 1e-5 of it): ggml's loop on the candidates with `s >= t` alone leaves the chunk as
    /// it does on all of them. The rounding bounds need normal numbers: a best, `top`, a
    /// `sumq2` or a `sumqx^2` outside [`TINY`]..[`BIG`] replays every candidate.
    #[inline(always)]
    fn top<const K: usize>(
        &self,
        qx: &[[f32; LANES]; K],
        q2: &[[f32; LANES]; K],
        n: usize,
    ) -> Option<[[bool; LANES]; K]> {
        let b = self.best_score;
        if b > 0.0 && !(TINY..=BIG).contains(&b) {
            return None;
        }
        let mut s = [[f32::NEG_INFINITY; LANES]; K];
        let (mut top, mut out_of_range) = (f32::NEG_INFINITY, false);
        for k in 0..K {
            for j in 0..LANES {
                let (x, q) = (qx[k][j], q2[k][j]);
                let valid = (j < n) & (q > 0.0);
                out_of_range |= valid & !((TINY..=BIG).contains(&q) & (x * x <= BIG));
                let v = (x / q) * x;
                s[k][j] = if valid & (x * x > b * q) {
                    v
                } else {
                    f32::NEG_INFINITY
                };
                top = if s[k][j] > top { s[k][j] } else { top };
            }
        }
        if out_of_range || !(TINY..=BIG).contains(&top) {
            return None;
        }
        let t = top * (1.0 - 1e-3);
        let band = t * (1.0 - 1e-4);
        if b >= band * (1.0 - 1e-4) {
            return None;
        }
        let mut h = [[false; LANES]; K];
        let mut between = false;
        for k in 0..K {
            for j in 0..LANES {
                h[k][j] = s[k][j] >= t;
                between |= (s[k][j] >= band) & (s[k][j] < t);
            }
        }
        (!between).then_some(h)
    }
}

/// The 8 bits of `lanes` moved to bits `K j` (K of 2 or 4).
#[inline(always)]
fn spread<const K: usize>(lanes: u64) -> u64 {
    let mut m = 0u64;
    for j in 0..LANES {
        m |= ((lanes >> j) & 1) << (K * j);
    }
    m
}

/// The levels (0, 1, 2) of a split of the sorted values at `i1` and `i2`.
#[inline(always)]
fn split_levels(pairs: &[(f32, u8)], i1: usize, i2: usize, l: &mut [i8]) {
    for (j, &(_, i)) in pairs.iter().enumerate() {
        l[i as usize] = if j < i1 {
            0
        } else if j < i2 {
            1
        } else {
            2
        };
    }
}

/// The values of a group with their positions, in glibc `qsort`'s order ([`sort_pairs`]).
/// Without NaN, ggml's comparator is a total preorder (-0 equal to +0) and glibc's merge sort
/// is stable, so the order is the stable order by value: that of the distinct keys
/// `(value's order key, position)`, which a sort of those keys, or each one's rank among
/// them, gives faster.
#[inline(always)]
fn sorted(xb: &[f32], pairs: &mut [(f32, u8)]) {
    if xb.iter().any(|v| v.is_nan()) {
        for (j, p) in pairs.iter_mut().enumerate() {
            *p = (xb[j], j as u8);
        }
        sort_pairs(pairs);
        return;
    }
    if xb.len() > 16 {
        // IQ1_S's 32: a sort of the keys is faster than the 1024 comparisons below.
        let mut keys = [0u64; 32];
        let keys = &mut keys[..xb.len()];
        for (j, (k, &v)) in keys.iter_mut().zip(xb).enumerate() {
            *k = (order_key(v) as u64) << 8 | j as u64;
        }
        keys.sort_unstable();
        for (p, &k) in pairs.iter_mut().zip(keys.iter()) {
            let j = (k & 255) as usize;
            *p = (xb[j], j as u8);
        }
        return;
    }
    // Each value's place is the number of values before it in that order (a
    // count of comparisons the compiler vectorises, without the branches of a sort).
    let n = xb.len();
    let mut keys = [0u32; 32];
    for (k, &v) in keys.iter_mut().zip(xb) {
        *k = order_key(v);
    }
    let keys = &keys[..n];
    for (i, &ki) in keys.iter().enumerate() {
        let mut rank = 0u32;
        for (j, &kj) in keys.iter().enumerate() {
            rank += ((kj < ki) | ((kj == ki) & (j < i))) as u32;
        }
        pairs[rank as usize] = (xb[i], i as u8);
    }
}

/// A key whose unsigned order is the order of the (non-NaN) values, -0 and +0 alike.
#[inline(always)]
fn order_key(v: f32) -> u32 {
    let b = (v + 0.0).to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

crate::quant::simd::avx2_row!(
    /// `quantize_row_iq1_s_impl` (importance weights required).
    quantize_row_iq1_s, quantize_row_iq1_s_avx2, quantize_row_iq1_s_portable, &[f32]
);

/// The row as the portable build compiles it (the fallback, and the twin tests compare).
#[inline(always)]
pub(crate) fn quantize_row_iq1_s_portable(x: &[f32], y: &mut [u8], quant_weights: &[f32]) {
    const BS: usize = 32;
    let grid = iq_grid::iq1s();
    let blocks: &mut [BlockIq1S] = bytemuck::cast_slice_mut(y);
    for (ibl, (xbl, b)) in x.chunks_exact(QK_K).zip(blocks).enumerate() {
        *b = BlockIq1S::zeroed();
        let mut qh = [0u16; QK_K / BS];
        let mut scales = [0.0f32; QK_K / BS];
        let mut shifts = [0i8; QK_K / BS];
        let mut max_scale = 0.0f32;
        let mut sumx2 = 0.0f32;
        for &v in xbl {
            sumx2 += v * v;
        }
        let sigma2 = 2.0 * sumx2 / QK_K as f32;
        for ib in 0..QK_K / BS {
            let xb = &xbl[BS * ib..BS * ib + BS];
            let qw = &quant_weights[QK_K * ibl + BS * ib..][..BS];
            let mut weight = [0.0f32; BS];
            for i in 0..BS {
                weight[i] = qw[i] * (sigma2 + xb[i] * xb[i]).sqrt();
            }
            let max = max_abs(xb);
            if max < GROUP_MAX_EPS_IQ1_S {
                scales[ib] = 0.0;
                shifts[ib] = 1;
                continue;
            }
            let mut pairs = [(0.0f32, 0u8); BS];
            sorted(xb, &mut pairs);
            // Prefix sums, padded by a chunk of lanes for the split search.
            let mut sumx = [0.0f32; BS + 1 + LANES];
            let mut sumw = [0.0f32; BS + 1 + LANES];
            for (j, &(_, i)) in pairs.iter().enumerate() {
                let i = i as usize;
                sumx[j + 1] = sumx[j] + weight[i] * xb[i];
                sumw[j + 1] = sumw[j] + weight[i];
            }
            let mut search = SplitSearch::new(max);
            for i1 in 0..=BS {
                let (ax, aw) = (sumx[i1] - sumx[0], sumw[i1] - sumw[0]);
                for c in (i1..=BS).step_by(LANES) {
                    let sx: &[f32; LANES] = sumx[c..c + LANES].try_into().unwrap();
                    let sw: &[f32; LANES] = sumw[c..c + LANES].try_into().unwrap();
                    let mut qx = [[0.0f32; LANES]; 2];
                    let mut q2 = [[0.0f32; LANES]; 2];
                    for (k, xs) in [&X_P, &X_M].into_iter().enumerate() {
                        for j in 0..LANES {
                            qx[k][j] = ax * xs[0]
                                + (sx[j] - sumx[i1]) * xs[1]
                                + (sumx[BS] - sx[j]) * xs[2];
                            q2[k][j] = aw * xs[0] * xs[0]
                                + (sw[j] - sumw[i1]) * xs[1] * xs[1]
                                + (sumw[BS] - sw[j]) * xs[2] * xs[2];
                        }
                    }
                    search.scan(&qx, &q2, i1, c, BS + 1 - c);
                }
            }
            let (mut scale, best) = (search.scale, search.best);
            let Some((i1, i2, k)) = best else {
                scales[ib] = 0.0;
                shifts[ib] = 1;
                continue;
            };
            let mut best_shift: i8 = if k == 0 { 1 } else { -1 };
            let mut l = [0i8; BS];
            split_levels(&pairs, i1, i2, &mut l);
            if scale < 0.0 {
                for v in l.iter_mut() {
                    *v = 2 - *v;
                }
                scale = -scale;
                best_shift = -best_shift;
            }
            let xx = if best_shift == 1 { &X_P } else { &X_M };
            let mut index = [0usize; BS / 8];
            let mut all_on_grid = true;
            for k in 0..BS / 8 {
                let r = 8 * k..8 * k + 8;
                let (gi, on) = place(
                    grid,
                    &xb[r.clone()],
                    &weight[r.clone()],
                    scale,
                    xx,
                    &mut l[r],
                );
                all_on_grid &= on;
                index[k] = gi;
            }
            if !all_on_grid {
                let mut s = (0.0f32, 0.0f32);
                for k in 0..BS / 8 {
                    let r = 8 * k..8 * k + 8;
                    point_sums(grid, index[k], xx, None, &weight[r.clone()], &xb[r], &mut s);
                }
                if s.0 > 0.0 && s.1 > 0.0 {
                    scale = s.0 / s.1;
                }
            }
            let mut h = 0u16;
            for k in 0..BS / 8 {
                b.qs[(BS / 8) * ib + k] = (index[k] & 255) as u8;
                h |= ((index[k] >> 8) << (3 * k)) as u16;
            }
            qh[ib] = h;
            scales[ib] = scale;
            shifts[ib] = best_shift;
            max_scale = if max_scale > scale { max_scale } else { scale };
        }
        if max_scale != 0.0 {
            let d = max_scale / 15.0;
            b.d = to_f16_le(d * 1.125);
            let id = 1.0 / d;
            for ib in 0..QK_K / BS {
                let mut l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7) as u16;
                if shifts[ib] == -1 {
                    l |= 8;
                }
                qh[ib] |= l << 12;
            }
        }
        for (o, v) in b.qh.chunks_exact_mut(2).zip(qh) {
            o.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// Which shifted levels each half of an IQ1_M group uses, by its shift code `k`
/// (0: +,+; 1: +,-; 2: -,+; 3: -,-).
fn halves(k: usize) -> [&'static [f32; 3]; 2] {
    [
        if k < 2 { &X_P } else { &X_M },
        if k.is_multiple_of(2) { &X_P } else { &X_M },
    ]
}

#[inline(always)]
fn iq1m_weights(qw: Option<&[f32]>, xb: &[f32], sigma2: f32, weight: &mut [f32]) {
    match qw {
        Some(qw) => {
            for i in 0..xb.len() {
                weight[i] = qw[i] * (sigma2 + xb[i] * xb[i]).sqrt();
            }
        }
        None => {
            for i in 0..xb.len() {
                weight[i] = xb[i] * xb[i];
            }
        }
    }
}

// IQ1_M alone has an x86-64-v4 build: its split search gains from AVX-512's mask registers
// (1.15x on an AVX-512 machine, `scripts/bench.sh quant`); the other i-quants measured the same
// or slower that way.
crate::quant::simd::avx2_row!(
    /// `quantize_row_iq1_m_impl`, with importance weights or without.
    quantize_row_iq1_m,
    quantize_row_iq1_m_avx2,
    quantize_row_iq1_m_portable,
    Option<&[f32]>,
    v4: quantize_row_iq1_m_v4
);

/// The row as the portable build compiles it (the fallback, and the twin tests compare).
#[inline(always)]
pub(crate) fn quantize_row_iq1_m_portable(x: &[f32], y: &mut [u8], quant_weights: Option<&[f32]>) {
    const BS: usize = 16;
    const MASKS: [u8; 4] = [0x00, 0x80, 0x08, 0x88];
    let grid = iq_grid::iq1s();
    let blocks: &mut [BlockIq1M] = bytemuck::cast_slice_mut(y);
    let (p2, m2) = (X_P[2], X_M[2]);
    let cp1 = X_P[0] * X_P[0] - X_P[1] * X_P[1];
    let cp2 = X_P[1] * X_P[1] - X_P[2] * X_P[2];
    let cm1 = X_M[0] * X_M[0] - X_M[1] * X_M[1];
    let cm2 = X_M[1] * X_M[1] - X_M[2] * X_M[2];
    for (ibl, (xbl, b)) in x.chunks_exact(QK_K).zip(blocks).enumerate() {
        *b = BlockIq1M::zeroed();
        let mut scales = [0.0f32; QK_K / BS];
        let mut shifts = [0usize; QK_K / BS];
        let mut max_scale = 0.0f32;
        let mut sumx2 = 0.0f32;
        for &v in xbl {
            sumx2 += v * v;
        }
        let sigma2 = 2.0 * sumx2 / QK_K as f32;
        let qw_of = |ib: usize| quant_weights.map(|w| &w[QK_K * ibl + BS * ib..][..BS]);
        for ib in 0..QK_K / BS {
            let xb = &xbl[BS * ib..BS * ib + BS];
            let mut weight = [0.0f32; BS];
            iq1m_weights(qw_of(ib), xb, sigma2, &mut weight);
            let max = max_abs(xb);
            if max < GROUP_MAX_EPS_IQ1_M {
                scales[ib] = 0.0;
                shifts[ib] = 0;
                continue;
            }
            let mut pairs = [(0.0f32, 0u8); BS];
            sorted(xb, &mut pairs);
            // Prefix sums per half of the group, each half with its own shift.
            let mut px = [[0.0f32; BS + 1 + LANES]; 2];
            let mut pw = [[0.0f32; BS + 1 + LANES]; 2];
            for (j, &(_, i)) in pairs.iter().enumerate() {
                let i = i as usize;
                let h = if i < BS / 2 { 0 } else { 1 };
                px[h][j + 1] = px[h][j] + weight[i] * xb[i];
                px[1 - h][j + 1] = px[1 - h][j];
                pw[h][j + 1] = pw[h][j] + weight[i];
                pw[1 - h][j + 1] = pw[1 - h][j];
            }
            let txs = [px[0][BS], px[1][BS]];
            let tws = [pw[0][BS], pw[1][BS]];
            let mut search = SplitSearch::new(max);
            for i1 in 0..=BS {
                for c in (i1..=BS).step_by(LANES) {
                    let (mut qx_p, mut qx_m, mut q2_p, mut q2_m) = (
                        [[0f32; LANES]; 2],
                        [[0f32; LANES]; 2],
                        [[0f32; LANES]; 2],
                        [[0f32; LANES]; 2],
                    );
                    for h in 0..2 {
                        let sx2: &[f32; LANES] = px[h][c..c + LANES].try_into().unwrap();
                        let sw2: &[f32; LANES] = pw[h][c..c + LANES].try_into().unwrap();
                        for j in 0..LANES {
                            let sx = px[h][i1] + sx2[j];
                            qx_p[h][j] = txs[h] * p2 - sx;
                            qx_m[h][j] = txs[h] * m2 - sx;
                            q2_p[h][j] = tws[h] * p2 * p2 + pw[h][i1] * cp1 + sw2[j] * cp2;
                            q2_m[h][j] = tws[h] * m2 * m2 + pw[h][i1] * cm1 + sw2[j] * cm2;
                        }
                    }
                    let both = |a: &[[f32; LANES]; 2], b: &[[f32; LANES]; 2]| -> [f32; LANES] {
                        std::array::from_fn(|j| a[0][j] + b[1][j])
                    };
                    let qx = [
                        both(&qx_p, &qx_p),
                        both(&qx_p, &qx_m),
                        both(&qx_m, &qx_p),
                        both(&qx_m, &qx_m),
                    ];
                    let q2 = [
                        both(&q2_p, &q2_p),
                        both(&q2_p, &q2_m),
                        both(&q2_m, &q2_p),
                        both(&q2_m, &q2_m),
                    ];
                    search.scan(&qx, &q2, i1, c, BS + 1 - c);
                }
            }
            let (mut scale, best) = (search.scale, search.best);
            let Some((i1, i2, mut best_k)) = best else {
                scales[ib] = 0.0;
                shifts[ib] = 0;
                continue;
            };
            let mut l = [0i8; BS];
            split_levels(&pairs, i1, i2, &mut l);
            if scale < 0.0 {
                for v in l.iter_mut() {
                    *v = 2 - *v;
                }
                scale = -scale;
                best_k = 3 - best_k;
            }
            let xx = halves(best_k);
            let mut index = [0usize; 2];
            let mut all_on_grid = true;
            for k in 0..2 {
                let r = 8 * k..8 * k + 8;
                let (gi, on) = place(
                    grid,
                    &xb[r.clone()],
                    &weight[r.clone()],
                    scale,
                    xx[k],
                    &mut l[r],
                );
                all_on_grid &= on;
                index[k] = gi;
            }
            if !all_on_grid {
                let mut s = (0.0f32, 0.0f32);
                for k in 0..2 {
                    let r = 8 * k..8 * k + 8;
                    point_sums(
                        grid,
                        index[k],
                        xx[k],
                        None,
                        &weight[r.clone()],
                        &xb[r],
                        &mut s,
                    );
                }
                if s.0 > 0.0 && s.1 > 0.0 {
                    scale = s.0 / s.1;
                }
            }
            b.qs[2 * ib] = (index[0] & 255) as u8;
            b.qs[2 * ib + 1] = (index[1] & 255) as u8;
            b.qh[ib] = ((index[0] >> 8) | ((index[1] >> 8) << 4)) as u8;
            scales[ib] = scale;
            shifts[ib] = best_k;
            max_scale = if max_scale > scale { max_scale } else { scale };
        }
        if max_scale == 0.0 {
            continue;
        }
        let mut sc = [0u16; 4];
        let mut d = max_scale / 15.0;
        let id = 1.0 / d;
        let mut s = (0.0f32, 0.0f32);
        for ib in 0..QK_K / BS {
            let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7);
            sc[ib / 4] |= (l as u16) << (3 * (ib % 4));
            b.qh[ib] |= MASKS[shifts[ib]];
            let xb = &xbl[BS * ib..BS * ib + BS];
            let mut weight = [0.0f32; BS];
            iq1m_weights(qw_of(ib), xb, sigma2, &mut weight);
            let xx = halves(shifts[ib]);
            for k in 0..2 {
                let gi = b.qs[2 * ib + k] as usize + (((b.qh[ib] as usize) << (8 - 4 * k)) & 0x700);
                let r = 8 * k..8 * k + 8;
                let mul = (2 * l + 1) as f32;
                point_sums(
                    grid,
                    gi,
                    xx[k],
                    Some(mul),
                    &weight[r.clone()],
                    &xb[r],
                    &mut s,
                );
            }
        }
        if s.1 > 0.0 {
            d = s.0 / s.1;
        }
        let f = u16::from_le_bytes(to_f16_le(d * 1.1125));
        sc[0] |= (f & 0x000f) << 12;
        sc[1] |= (f & 0x00f0) << 8;
        sc[2] |= (f & 0x0f00) << 4;
        sc[3] |= f & 0xf000;
        for (o, v) in b.scales.chunks_exact_mut(2).zip(sc) {
            o.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// The ternary levels of grid point `index` (ggml's `iq1s_grid` bytes: -1, 0, +1).
#[inline]
fn levels(grid: &Grid<8>, index: usize) -> [f32; 8] {
    grid.points[index].map(|q| ((q - 1) / 2 - 1) as f32)
}

/// `dequantize_row_iq1_s`.
pub fn dequantize_row_iq1_s(x: &[u8], y: &mut [f32]) {
    let grid = iq_grid::iq1s();
    let blocks: &[BlockIq1S] = bytemuck::cast_slice(x);
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_le(b.d);
        for ib in 0..QK_K / 32 {
            let qh = u16::from_le_bytes([b.qh[2 * ib], b.qh[2 * ib + 1]]);
            let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
            let delta = if qh & 0x8000 != 0 { -DELTA } else { DELTA };
            for l in 0..4 {
                let idx = b.qs[4 * ib + l] as usize | ((((qh >> (3 * l)) & 7) as usize) << 8);
                let g = levels(grid, idx);
                for j in 0..8 {
                    yb[32 * ib + 8 * l + j] = dl * (g[j] + delta);
                }
            }
        }
    }
}

/// The f16 super-scale of an IQ1_M block, gathered from the scale words' top nibbles.
pub fn iq1m_scale_bits(scales: &[u8; QK_K / 32]) -> u16 {
    let sc: [u16; 4] =
        std::array::from_fn(|i| u16::from_le_bytes([scales[2 * i], scales[2 * i + 1]]));
    (sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000)
}

/// `dequantize_row_iq1_m`.
pub fn dequantize_row_iq1_m(x: &[u8], y: &mut [f32]) {
    let grid = iq_grid::iq1s();
    let blocks: &[BlockIq1M] = bytemuck::cast_slice(x);
    for (b, yb) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16_le(iq1m_scale_bits(&b.scales).to_le_bytes());
        let sc: [u16; 4] =
            std::array::from_fn(|i| u16::from_le_bytes([b.scales[2 * i], b.scales[2 * i + 1]]));
        for ib in 0..QK_K / 32 {
            let s = sc[ib / 2] >> (6 * (ib % 2));
            let dl = [
                d * (2 * (s & 7) + 1) as f32,
                d * (2 * ((s >> 3) & 7) + 1) as f32,
            ];
            let (qs, qh) = (&b.qs[4 * ib..4 * ib + 4], &b.qh[2 * ib..2 * ib + 2]);
            for l in 0..4 {
                let h = qh[l / 2] as usize;
                let idx = qs[l] as usize | ((h << if l % 2 == 0 { 8 } else { 4 }) & 0x700);
                let mask = if l % 2 == 0 { 0x08 } else { 0x80 };
                let delta = if h & mask != 0 { -DELTA } else { DELTA };
                let g = levels(grid, idx);
                for j in 0..8 {
                    yb[32 * ib + 8 * l + j] = dl[l / 2] * (g[j] + delta);
                }
            }
        }
    }
}

/// IQ1_S in the registry.
pub struct IQ1S;

impl crate::quant::BlockFormat for IQ1S {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::IQ1S;
    const BLOCK: usize = QK_K;
    type Block = BlockIq1S;
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::Q8K;
    const F16_SCALES: &'static [usize] = &[0];
    const REQUIRES_IMATRIX: bool = true;
    fn quantize(_x: &[f32], _y: &mut [u8]) {
        unreachable!("quant::check_shape refuses IQ1_S without importance weights")
    }
    fn quantize_imatrix(x: &[f32], y: &mut [u8], w: &[f32]) {
        quantize_row_iq1_s(x, y, w)
    }
    fn dequantize(x: &[u8], y: &mut [f32]) {
        dequantize_row_iq1_s(x, y)
    }
}

/// IQ1_M in the registry. ggml quantizes it without importance weights (its
/// `ggml_quantize_requires_imatrix` has IQ1_M commented out); llama-quantize's presets refuse.
pub struct IQ1M;

impl crate::quant::BlockFormat for IQ1M {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::IQ1M;
    const BLOCK: usize = QK_K;
    type Block = BlockIq1M;
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::Q8K;
    fn quantize(x: &[f32], y: &mut [u8]) {
        quantize_row_iq1_m(x, y, None)
    }
    fn quantize_imatrix(x: &[f32], y: &mut [u8], w: &[f32]) {
        quantize_row_iq1_m(x, y, Some(w))
    }
    fn dequantize(x: &[u8], y: &mut [f32]) {
        dequantize_row_iq1_m(x, y)
    }
    /// The f16 scale spread over the scale words must be finite (`validate_fp16`).
    fn first_invalid(bytes: &[u8]) -> Option<usize> {
        bytes.chunks_exact(56).position(|b| {
            let scales: &[u8; 8] = b[48..56].try_into().expect("8 bytes");
            iq1m_scale_bits(scales) & 0x7c00 == 0x7c00
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    proptest! {
        /// The key sort gives glibc's merge sort's order on rows without NaN (ties, zeros of
        /// both signs, infinities), and rows with NaN go through the merge sort.
        #[test]
        fn sorted_is_the_merge_sort(x in prop::collection::vec(prop_oneof![
            4 => (-3i32..3).prop_map(|v| v as f32 * 0.5),
            4 => -1.0f32..1.0,
            1 => prop::sample::select(vec![0.0f32, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN]),
        ], 1..=32)) {
            let mut want: Vec<(f32, u8)> = x.iter().enumerate().map(|(j, &v)| (v, j as u8)).collect();
            sort_pairs(&mut want);
            let mut got = vec![(0.0f32, 0u8); x.len()];
            sorted(&x, &mut got);
            let bits = |p: &[(f32, u8)]| p.iter().map(|&(v, j)| (v.to_bits(), j)).collect::<Vec<_>>();
            prop_assert_eq!(bits(&got), bits(&want));
        }

        /// A chunk scanned with its decisive candidates alone ([`SplitSearch::top`]) ends in
        /// the state ggml's loop over every candidate leaves: chunks of near-ties (candidates a
        /// few units in the last place apart, and at the edges of the band below `top`), of zero, tiny,
        /// huge, infinite and NaN sums, from every kind of starting best.
        #[test]
        fn a_chunk_scanned_by_its_top_is_ggml_loop(
            base in prop_oneof![Just(1.0f32), 1e-12f32..1e-8, 1e-3f32..1e3, 1e17f32..1e20],
            start in prop_oneof![Just(-f32::MAX), Just(0.0f32), 0.0f32..2.0, Just(1e-11f32)],
            lanes in prop::collection::vec((prop_oneof![
                4 => 0.5f32..1.5,
                2 => prop::sample::select(vec![1.0f32, 0.999, 0.9989, 0.99891, 0.9990001]),
                1 => prop::sample::select(vec![0.0f32, -1.0, f32::INFINITY, f32::NAN, 1e-30]),
            ], -2.0f32..2.0, -4i32..4), 32),
            // scores at the edges of `top`'s band only: 1 and the band below 0.999
            near in prop::collection::vec(prop::sample::select(vec![
                1.0f32, 0.999, 0.999_000_1, 0.998_999_9, 0.998_900_1, 0.998_900_1, 0.998_899_9,
            ]), 32),
            at_edges: bool,
            n in 1usize..=8,
        ) {
            let mut qx = [[0f32; LANES]; 4];
            let mut q2 = [[0f32; LANES]; 4];
            for (t, &(score, x, ulps)) in lanes.iter().enumerate() {
                let score = if at_edges { near[t] } else { score };
                // sumqx^2 / sumq2 = score * base, nudged by a few units in the last place
                let q = (x.abs() + 0.1) * base;
                let sx = (score * base * q).sqrt().copysign(x);
                qx[t % 4][t / 4] = f32::from_bits((sx.to_bits() as i32 + ulps) as u32);
                q2[t % 4][t / 4] = q;
            }
            let mut want = SplitSearch::new(1.0);
            want.best_score = start * base;
            let mut got = SplitSearch { ..want };
            for j in 0..n {
                for k in 0..4 {
                    want.consider(qx[k][j], q2[k][j], (0, j, k));
                }
            }
            got.scan(&qx, &q2, 0, 0, n);
            prop_assert_eq!(got.best, want.best);
            prop_assert_eq!(got.scale.to_bits(), want.scale.to_bits());
            prop_assert_eq!(got.best_score.to_bits(), want.best_score.to_bits());
        }
    }

    #[test]
    fn shifted_levels_are_the_tables() {
        for xg in [&X_P, &X_M] {
            for l in 0..3u8 {
                assert_eq!(shifted(xg, l).to_bits(), xg[l as usize].to_bits());
            }
        }
    }

    #[test]
    fn sort_pairs_is_stable_and_orders_by_value() {
        let mut v: Vec<(f32, u8)> = [3.0, 1.0, 2.0, 1.0, -5.0, 3.0, 0.0, 1.0]
            .iter()
            .enumerate()
            .map(|(i, &x)| (x, i as u8))
            .collect();
        sort_pairs(&mut v);
        let idx: Vec<u8> = v.iter().map(|p| p.1).collect();
        assert_eq!(idx, [4, 6, 1, 3, 7, 2, 0, 5]);
    }
}
