//! The i-quants' lattices, built from ggml's grid lists ([`super::iq_kgrid`]) the way
//! `iq2xs_init_impl` and `iq3xs_init_impl` build them: every grid point with coordinates
//! `2l + 1` for its digits `l`; a map from each digit pattern to its grid index; and, for a
//! pattern that is not on the grid, the grid points nearest to it (all those at the
//! `nwant` smallest squared distances, ordered by distance then index, as ggml's `qsort`
//! of `(distance, index)` pairs leaves them). Built once per process, on first use.

use super::iq_kgrid::*;
use super::search::nearest_int;
use std::sync::OnceLock;

/// How many neighbours [`nearest`] scores at once: one chunk of a neighbour list.
pub const LANES: usize = 8;

/// The flag of a [`Grid`]'s map entry for a pattern on the grid.
const ON_GRID: u32 = 1 << 31;
/// The bits of a map entry holding a neighbour list's length (the rest: its first chunk).
const LEN_BITS: u32 = 11;

/// A lattice of `N`-dimensional points.
pub struct Grid<const N: usize> {
    /// The points, coordinates `2l + 1` (ggml's `kgrid_q2xs` / `kgrid_q3xs`).
    pub points: Vec<[i8; N]>,
    /// Per digit pattern (ggml's `kmap_*`): [`ON_GRID`] and its grid index, or where its
    /// neighbour list starts (its first chunk `c`, its indices at `ids[LANES c..]`) and its
    /// length, as `c << LEN_BITS | len`: one load finds the list.
    map: Vec<u32>,
    /// The neighbour lists' grid indices (ggml's `kneighbors_*` without the counts), each
    /// list padded with zeros to whole chunks.
    ids: Vec<u16>,
    /// The same lists transposed, [`LANES`] neighbours a chunk: `chunk[i][k]` is the level of
    /// coordinate `i` of the list's neighbour `LANES c + k` (0 past the list's end).
    chunks: Vec<[[u8; LANES]; N]>,
    bits: u32,
}

/// The neighbours of a digit pattern that is not on the grid, nearest first.
#[derive(Clone, Copy)]
pub struct Neighbours<'a, const N: usize> {
    /// Their grid indices.
    pub ids: &'a [u16],
    /// Their levels, transposed by chunks of [`LANES`] (see [`Grid`]).
    pub chunks: &'a [[[u8; LANES]; N]],
}

/// The grid index of digit pattern `u`, or its neighbours.
pub enum Lookup<'a, const N: usize> {
    /// The pattern is a grid point: its index.
    OnGrid(usize),
    /// It is not: the grid points to try instead.
    Neighbours(Neighbours<'a, N>),
}

impl<const N: usize> Grid<N> {
    /// `kgrid`: the points as digits of `bits` bits; `kmap_size`: how many digit patterns
    /// ggml's map covers; `nwant`: how many distinct distances a neighbour list spans.
    fn build(kgrid: &[u16], bits: u32, kmap_size: usize, nwant: usize) -> Self {
        let mask = (1u32 << bits) - 1;
        let digits = |v: u32| -> [i8; N] {
            std::array::from_fn(|k| (2 * ((v >> (bits * k as u32)) & mask) + 1) as i8)
        };
        let points: Vec<[i8; N]> = kgrid.iter().map(|&k| digits(k as u32)).collect();
        let mut map = vec![0u32; kmap_size];
        let mut on_grid = vec![false; kmap_size];
        for (i, p) in points.iter().enumerate() {
            let index = p.iter().enumerate().fold(0usize, |u, (k, &c)| {
                u | ((((c - 1) / 2) as usize) << (bits as usize * k))
            });
            map[index] = ON_GRID | i as u32;
            on_grid[index] = true;
        }
        let (mut ids, mut chunks) = (Vec::new(), Vec::new());
        let mut dist2: Vec<(i32, u16)> = Vec::with_capacity(points.len());
        for i in 0..kmap_size {
            if on_grid[i] {
                continue;
            }
            let pos = digits(i as u32);
            dist2.clear();
            dist2.extend(points.iter().enumerate().map(|(j, pg)| {
                let d2 = (0..N).map(|k| (pg[k] as i32 - pos[k] as i32).pow(2)).sum();
                (d2, j as u16)
            }));
            // The `nwant` smallest distinct distances bound the list; only those entries are sorted.
            let mut smallest: Vec<i32> = Vec::with_capacity(nwant + 1);
            for &(d, _) in &dist2 {
                if let Err(at) = smallest.binary_search(&d) {
                    if at < nwant {
                        smallest.insert(at, d);
                        smallest.truncate(nwant);
                    }
                }
            }
            let limit = *smallest.last().expect("a grid has points");
            dist2.retain(|&(d, _)| d <= limit);
            dist2.sort_unstable();
            let (c, n) = (chunks.len() as u32, dist2.len() as u32);
            // Every grid's lists fit (a test builds them all).
            assert!(n < 1 << LEN_BITS && c < ON_GRID >> LEN_BITS);
            map[i] = c << LEN_BITS | n;
            ids.extend(dist2.iter().map(|&(_, j)| j));
            ids.resize(ids.len().next_multiple_of(LANES), 0);
            for c in dist2.chunks(LANES) {
                chunks.push(std::array::from_fn(|k| {
                    std::array::from_fn(|lane| {
                        c.get(lane)
                            .map_or(0, |&(_, j)| ((points[j as usize][k] - 1) / 2) as u8)
                    })
                }));
            }
        }
        Grid {
            points,
            map,
            ids,
            chunks,
            bits,
        }
    }

    /// Looks digit pattern `u` up (`u` below the map's size: digits of `bits` bits each).
    #[inline]
    pub fn lookup(&self, u: usize) -> Lookup<'_, N> {
        let m = self.map[u];
        if m & ON_GRID != 0 {
            Lookup::OnGrid((m & !ON_GRID) as usize)
        } else {
            let (c, n) = (
                (m >> LEN_BITS) as usize,
                (m & ((1 << LEN_BITS) - 1)) as usize,
            );
            Lookup::Neighbours(Neighbours {
                ids: &self.ids[LANES * c..LANES * c + n],
                chunks: &self.chunks[c..c + n.div_ceil(LANES)],
            })
        }
    }

    /// The digit pattern of levels `l` (each below `2^bits`).
    #[inline]
    pub fn pattern(&self, l: &[i8]) -> usize {
        l.iter().enumerate().fold(0usize, |u, (k, &v)| {
            u | ((v as usize) << (self.bits as usize * k))
        })
    }
}

/// ggml's `iq2_find_best_neighbour` / `iq3_find_best_neighbour`: the neighbour minimising
/// `sum w (scale q - x)^2`, its levels `(q - 1) / 2` written to `l`. ggml aborts when no
/// distance is below `FLT_MAX` (NaN inputs); laquant then takes the first neighbour.
#[inline(always)]
pub fn best_neighbour<const N: usize>(
    grid: &Grid<N>,
    neighbours: Neighbours<'_, N>,
    xval: &[f32],
    weight: &[f32],
    scale: f32,
    l: &mut [i8],
) -> usize {
    let index = nearest(neighbours, xval, weight, scale, |l| {
        (2 * l as i32 + 1) as f32
    });
    for (o, &q) in l.iter_mut().zip(&grid.points[index]) {
        *o = (q - 1) / 2;
    }
    index
}

/// The neighbour minimising `d2 = sum_i w_i (scale q(l_i) - x_i)^2`, `q(l)` the value of level
/// `l`: the first one at the smallest distance, as ggml's loops keep it (`d2 < best`, from
/// `FLT_MAX`; a NaN distance never wins, and when none is below `FLT_MAX` the first neighbour
/// is taken). Runs [`avx2::nearest`] when the CPU has AVX2, [`nearest_lanes`] otherwise; both
/// give the index of the scalar loop, [`nearest_scalar`] (tests compare the three).
#[inline(always)]
pub fn nearest<const N: usize>(
    neighbours: Neighbours<'_, N>,
    xval: &[f32],
    weight: &[f32],
    scale: f32,
    q: impl Fn(u8) -> f32,
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if let Some(cpu) = super::lanes_avx2::Avx2::detect() {
        let qv: [f32; LANES] = std::array::from_fn(|l| q(l as u8));
        return avx2::nearest(
            cpu,
            neighbours,
            Fit {
                xval,
                weight,
                scale,
            },
            &qv,
        );
    }
    nearest_lanes(
        neighbours,
        Fit {
            xval,
            weight,
            scale,
        },
        q,
    )
}

/// What a neighbour search fits: the values, their weights, the scale of the levels.
#[derive(Clone, Copy)]
pub struct Fit<'a> {
    /// The values (at least the grid's dimension).
    pub xval: &'a [f32],
    /// Their weights (as many).
    pub weight: &'a [f32],
    /// The scale the levels' values are multiplied by.
    pub scale: f32,
}

/// [`nearest`] in portable code: [`LANES`] neighbours are scored at once from the transposed
/// chunks, each lane with ggml's operations in ggml's order (`diff = scale q - x`,
/// `d2 += w diff diff`, no contraction), so the distances are those of the scalar loop,
/// [`nearest_scalar`] (tests compare); the plain lanes let LLVM vectorise them.
#[inline(always)]
pub fn nearest_lanes<const N: usize>(
    neighbours: Neighbours<'_, N>,
    fit: Fit<'_>,
    q: impl Fn(u8) -> f32,
) -> usize {
    let Fit {
        xval,
        weight,
        scale,
    } = fit;
    let x: [f32; N] = std::array::from_fn(|i| xval[i]);
    let w: [f32; N] = std::array::from_fn(|i| weight[i]);
    let mut best = f32::MAX;
    let mut index = neighbours.ids[0] as usize;
    for (chunk, ids) in neighbours.chunks.iter().zip(neighbours.ids.chunks(LANES)) {
        let mut d2 = [0.0f32; LANES];
        for i in 0..N {
            for k in 0..LANES {
                let diff = scale * q(chunk[i][k]) - x[i];
                d2[k] += w[i] * diff * diff;
            }
        }
        for (&d, &j) in d2.iter().zip(ids) {
            if d < best {
                best = d;
                index = j as usize;
            }
        }
    }
    index
}

/// [`nearest`] with AVX2 intrinsics.
#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use super::{Fit, Neighbours, LANES};
    use crate::quant::lanes_avx2::Avx2;
    use std::arch::x86_64::*;

    /// [`super::nearest_lanes`] with the levels' values `qv` (`q(l)` for `l` in `0..8`, every
    /// level a chunk holds is below 8): `scale q(l)` is one product per level, computed once
    /// and picked per lane by `vpermps`, then each lane runs the scalar loop's operations in
    /// its order (`diff = scale q - x`, `d2 += (w diff) diff`, from `0.0`; no FMA). A chunk's
    /// lanes are then compared at once: NaN distances and the lanes past the list's end
    /// become `+inf` (which never beats `best`, at most `f32::MAX`), and when the chunk's
    /// smallest distance is below `best` its first lane at that distance wins. The scalar
    /// loop's `d2 < best` over the lanes in order picks the same lane: the first at the
    /// chunk's minimum, when that minimum is below `best` (`-0.0` and `0.0` compare equal
    /// both ways, so which of them `best` holds changes no later comparison).
    #[inline]
    pub fn nearest<const N: usize>(
        cpu: Avx2,
        neighbours: Neighbours<'_, N>,
        fit: Fit<'_>,
        qv: &[f32; LANES],
    ) -> usize {
        let _ = cpu;
        assert!(fit.xval.len() >= N && fit.weight.len() >= N);
        assert!(neighbours.chunks.len() * LANES >= neighbours.ids.len());
        // SAFETY: `cpu` proves the CPU has AVX2; the lengths were checked just above.
        unsafe { run(neighbours, fit, qv) }
    }

    /// # Safety
    /// The CPU must have AVX2; `fit`'s values and weights hold at least `N` values each; the
    /// chunks cover the ids.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn run<const N: usize>(
        neighbours: Neighbours<'_, N>,
        Fit {
            xval,
            weight,
            scale,
        }: Fit<'_>,
        qv: &[f32; LANES],
    ) -> usize {
        let sq = _mm256_mul_ps(_mm256_set1_ps(scale), _mm256_loadu_ps(qv.as_ptr()));
        let x: [__m256; N] = std::array::from_fn(|i| _mm256_set1_ps(xval[i]));
        let w: [__m256; N] = std::array::from_fn(|i| _mm256_set1_ps(weight[i]));
        let inf = _mm256_set1_ps(f32::INFINITY);
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let ids = neighbours.ids;
        let mut best = f32::MAX;
        let mut index = ids[0] as usize;
        for (c, chunk) in neighbours.chunks.iter().enumerate() {
            let mut d2 = _mm256_setzero_ps();
            for i in 0..N {
                // SAFETY: `chunk[i]` is 8 bytes, the 64 bits `_mm_loadl_epi64` reads.
                let l = _mm256_cvtepu8_epi32(unsafe {
                    _mm_loadl_epi64(chunk[i].as_ptr() as *const __m128i)
                });
                let diff = _mm256_sub_ps(_mm256_permutevar8x32_ps(sq, l), x[i]);
                d2 = _mm256_add_ps(d2, _mm256_mul_ps(_mm256_mul_ps(w[i], diff), diff));
            }
            // `vminps` returns its second operand when the first is NaN.
            let mut d = _mm256_min_ps(d2, inf);
            let left = ids.len() - LANES * c;
            if left < LANES {
                let valid = _mm256_cmpgt_epi32(_mm256_set1_epi32(left as i32), lane);
                d = _mm256_blendv_ps(inf, d, _mm256_castsi256_ps(valid));
            }
            let h = _mm256_min_ps(d, _mm256_permute2f128_ps::<1>(d, d));
            let h = _mm256_min_ps(h, _mm256_permute_ps::<0b01_00_11_10>(h));
            let h = _mm256_min_ps(h, _mm256_permute_ps::<0b10_11_00_01>(h));
            let m = _mm256_cvtss_f32(h);
            if m < best {
                best = m;
                let at = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(d, h));
                index = ids[LANES * c + at.trailing_zeros() as usize] as usize;
            }
        }
        index
    }
}

/// The scalar twin of [`nearest`]: ggml's loop over the neighbours' indices and the grid's
/// points, one at a time.
pub fn nearest_scalar<const N: usize>(
    grid: &Grid<N>,
    neighbours: Neighbours<'_, N>,
    xval: &[f32],
    weight: &[f32],
    scale: f32,
    q: impl Fn(u8) -> f32,
) -> usize {
    let mut best = f32::MAX;
    let mut index = neighbours.ids[0] as usize;
    for &j in neighbours.ids {
        let pg = &grid.points[j as usize];
        let mut d2 = 0.0f32;
        for i in 0..N {
            let diff = scale * q(((pg[i] - 1) / 2) as u8) - xval[i];
            d2 += weight[i] * diff * diff;
        }
        if d2 < best {
            best = d2;
            index = j as usize;
        }
    }
    index
}

/// The 8 signs of one group as ggml's `quantize_row_iq2_*_impl` choose them: `xval` gets the
/// magnitudes; with an odd number of negatives, the value of least `w x^2` keeps the wrong
/// sign (its magnitude negated). Returns the low 7 bits of the sign mask.
pub fn even_signs(xb: &[f32], w: &[f32], xval: &mut [f32]) -> u8 {
    let mut nflip = 0;
    let mut s = 0u8;
    for i in 0..8 {
        if xb[i] >= 0.0 {
            xval[i] = xb[i];
        } else {
            xval[i] = -xb[i];
            nflip += 1;
            s |= 1 << i;
        }
    }
    if nflip % 2 == 1 {
        let mut imin = 0;
        let mut min = w[0] * xb[0] * xb[0];
        for i in 1..8 {
            let ax = w[i] * xb[i] * xb[i];
            if ax < min {
                min = ax;
                imin = i;
            }
        }
        xval[imin] = -xval[imin];
        s ^= 1 << imin;
    }
    s & 127
}

/// Levels `nearest_int(0.5 (id x - 1))` clamped to `0..kmax` of `N` values, put on the grid:
/// the point's index (the best neighbour's when off the grid, `l` then its levels).
#[inline(always)]
pub fn snap<const N: usize>(
    grid: &Grid<N>,
    kmax: i32,
    id: f32,
    scale: f32,
    xval: &[f32],
    waux: &[f32],
    l: &mut [i8],
) -> (usize, bool) {
    for i in 0..N {
        let v = nearest_int(0.5 * (id * xval[i] - 1.0));
        l[i] = v.clamp(0, kmax - 1) as i8;
    }
    match grid.lookup(grid.pattern(l)) {
        Lookup::OnGrid(i) => (i, true),
        Lookup::Neighbours(n) => (best_neighbour(grid, n, xval, waux, scale, l), false),
    }
}

/// The grid index of levels `l`; ggml aborts ("found point not on grid") where this gives 0,
/// which only NaN inputs reach.
pub fn index_of<const N: usize>(grid: &Grid<N>, l: &[i8]) -> usize {
    if l.iter().any(|&v| v < 0 || v >= 1 << grid.bits) {
        return 0;
    }
    let u = grid.pattern(l);
    match (u < grid.map.len()).then(|| grid.lookup(u)) {
        Some(Lookup::OnGrid(i)) => i,
        _ => 0,
    }
}

/// How one of ggml's i-quant scale searches steps: `id = (base + is * step) / max` for
/// `is` in `-steps..=steps`.
pub struct ScaleSteps {
    /// The search tries `is` in `-steps..=steps`.
    pub steps: i32,
    /// The numerator at `is = 0`.
    pub base: f32,
    /// Its change per step.
    pub step: f32,
    /// IQ3_S's variant: start with no point known on the grid and, after the search, snap
    /// every point again (IQ2_XS and IQ3_XXS snap again only the points that were off it).
    pub resnap_all: bool,
}

/// ggml's scale search of one group of `G` values in points of `N` (IQ2_XS, IQ3_XXS, IQ3_S):
/// the levels and scale that maximise `(sum w x q)^2 / sum w q^2` over the steps, then the
/// off-grid points snapped again at the scale found and the scale refitted. `max` is the
/// largest of `xval`; the levels are written to `l`, the scale (possibly negative) returned.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn search_scale<const N: usize, const G: usize>(
    grid: &Grid<N>,
    kmax: i32,
    steps: &ScaleSteps,
    xval: &[f32; G],
    waux: &[f32; G],
    weight: &[f32; G],
    max: f32,
    l: &mut [i8; G],
) -> f32 {
    let points = G / N;
    let mut best = 0.0f32;
    let mut scale = max / (2 * kmax - 1) as f32;
    let mut on_grid = [!steps.resnap_all; G];
    let mut laux = [0i8; G];
    for is in -steps.steps..=steps.steps {
        let id = (steps.base + is as f32 * steps.step) / max;
        let this_scale = 1.0 / id;
        let mut on_grid_aux = [true; G];
        for k in 0..points {
            let r = N * k..N * k + N;
            on_grid_aux[k] = snap(
                grid,
                kmax,
                id,
                this_scale,
                &xval[r.clone()],
                &waux[r.clone()],
                &mut laux[r],
            )
            .1;
        }
        let (sumqx, sumq2) = sums(weight, xval, &laux);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            *l = laux;
            on_grid = on_grid_aux;
        }
    }
    if on_grid[..points].contains(&false) && scale > 0.0 {
        let id = 1.0 / scale;
        for k in 0..points {
            if on_grid[k] && !steps.resnap_all {
                continue;
            }
            let r = N * k..N * k + N;
            snap(
                grid,
                kmax,
                id,
                scale,
                &xval[r.clone()],
                &waux[r.clone()],
                &mut l[r],
            );
        }
        let (sumqx, sumq2) = sums(weight, xval, l);
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    scale
}

/// `sum w x q` and `sum w q^2` for levels `l` (`q = 2l + 1`).
#[inline(always)]
pub fn sums(weight: &[f32], xval: &[f32], l: &[i8]) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for i in 0..l.len() {
        let w = weight[i];
        let q = (2 * l[i] as i32 + 1) as f32;
        sumqx += w * xval[i] * q;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

macro_rules! grid {
    ($(#[$m:meta])* $name:ident: $n:literal, $kgrid:ident, $bits:literal, $kmap:literal, $nwant:literal) => {
        $(#[$m])*
        pub fn $name() -> &'static Grid<$n> {
            static G: OnceLock<Grid<$n>> = OnceLock::new();
            G.get_or_init(|| Grid::build(&$kgrid, $bits, $kmap, $nwant))
        }
    };
}

grid!(
    /// IQ2_XXS: 256 points of E8.
    iq2xxs: 8, KGRID_IQ2XXS, 2, 43692, 2
);
grid!(
    /// IQ2_XS: 512 points.
    iq2xs: 8, KGRID_IQ2XS, 2, 43692, 2
);
grid!(
    /// IQ2_S: 1024 points.
    iq2s: 8, KGRID_IQ2S, 2, 43692, 1
);
grid!(
    /// IQ1_S and IQ1_M: 2048 points.
    iq1s: 8, KGRID_IQ1S, 2, 43692, 3
);
grid!(
    /// IQ3_XXS: 256 points of D4.
    iq3xxs: 4, KGRID_IQ3XXS, 3, 4096, 2
);
grid!(
    /// IQ3_S: 512 points.
    iq3s: 4, KGRID_IQ3S, 3, 4096, 3
);

/// ggml's `ksigns_iq2xs`: seven sign bits plus the parity bit that makes their count even.
pub const fn ksigns(i: u8) -> u8 {
    i | (((i.count_ones() & 1) as u8) << 7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_off_grid_pattern_has_its_nearest_points_as_neighbours() {
        let g = iq2xxs();
        assert_eq!(g.points.len(), 256);
        let mut off = 0;
        for u in 0..43692usize {
            match g.lookup(u) {
                Lookup::OnGrid(i) => assert_eq!(g.pattern(&g.points[i].map(|c| (c - 1) / 2)), u),
                Lookup::Neighbours(n) => {
                    off += 1;
                    let n = n.ids;
                    assert!(!n.is_empty());
                    let pos: [i32; 8] =
                        std::array::from_fn(|k| 2 * ((u >> (2 * k)) & 3) as i32 + 1);
                    let d = |j: u16| -> i32 {
                        (0..8)
                            .map(|k| (g.points[j as usize][k] as i32 - pos[k]).pow(2))
                            .sum()
                    };
                    let nearest = (0..256u16).map(d).min().unwrap();
                    assert_eq!(d(n[0]), nearest);
                    assert!(n.windows(2).all(|w| (d(w[0]), w[0]) < (d(w[1]), w[1])));
                }
            }
        }
        assert_eq!(off, 43692 - 256);
        assert_eq!(ksigns(0), 0);
        assert_eq!(ksigns(1), 0x81);
        assert_eq!(ksigns(3), 3);
    }

    /// Every grid's transposed chunks hold the levels of its neighbour lists' points.
    #[test]
    fn chunks_are_the_lists_transposed() {
        fn check<const N: usize>(g: &Grid<N>) {
            for u in 0..g.map.len() {
                let Lookup::Neighbours(list) = g.lookup(u) else {
                    continue;
                };
                for p in 0..list.chunks.len() * LANES {
                    let chunk = &list.chunks[p / LANES];
                    for i in 0..N {
                        let want = match list.ids.get(p) {
                            Some(&j) => (g.points[j as usize][i] - 1) / 2,
                            None => 0,
                        };
                        assert_eq!(chunk[i][p % LANES] as i8, want);
                    }
                }
            }
        }
        check(iq2xxs());
        check(iq2xs());
        check(iq2s());
        check(iq1s());
        check(iq3xxs());
        check(iq3s());
    }

    /// A value of a row as the hostile-row tests draw them: ordinary, tiny, huge, zero, NaN, Inf.
    fn hostile() -> impl proptest::strategy::Strategy<Value = f32> {
        use proptest::prelude::*;
        prop_oneof![
            8 => -2.0f32..2.0,
            1 => -1e-30f32..1e-30,
            1 => prop::sample::select(vec![0.0f32, -0.0, 1e30, -1e30, f32::NAN, f32::INFINITY, 3.0e38]),
        ]
    }

    fn same_nearest<const N: usize>(
        g: &Grid<N>,
        u: usize,
        x: &[f32],
        w: &[f32],
        scale: f32,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        // IQ1's levels, shifted by -1/8 (`iq1::shifted`).
        let shifted = |l: u8| (l as i32 - 1) as f32 + -0.125;
        let odd = |l: u8| (2 * l as i32 + 1) as f32;
        if let Lookup::Neighbours(n) = g.lookup(u % g.map.len()) {
            let want = nearest_scalar(g, n, x, w, scale, odd);
            proptest::prop_assert_eq!(nearest(n, x, w, scale, odd), want);
            let fit = Fit {
                xval: x,
                weight: w,
                scale,
            };
            proptest::prop_assert_eq!(nearest_lanes(n, fit, odd), want);
            let want = nearest_scalar(g, n, x, w, scale, shifted);
            proptest::prop_assert_eq!(nearest(n, x, w, scale, shifted), want);
            proptest::prop_assert_eq!(nearest_lanes(n, fit, shifted), want);
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(512))]
        /// `nearest` (AVX2 where the CPU has it) and its portable lanes pick the neighbour ggml's
        /// scalar loop picks, on every grid.
        #[test]
        fn nearest_equals_its_scalar_twin(
            u in 0usize..43692,
            x in proptest::collection::vec(hostile(), 8),
            w in proptest::collection::vec(prop_oneof_weights(), 8),
            scale in hostile(),
        ) {
            same_nearest(iq2xxs(), u, &x, &w, scale)?;
            same_nearest(iq2xs(), u, &x, &w, scale)?;
            same_nearest(iq2s(), u, &x, &w, scale)?;
            same_nearest(iq1s(), u, &x, &w, scale)?;
            same_nearest(iq3xxs(), u, &x[..4], &w[..4], scale)?;
            same_nearest(iq3s(), u, &x[4..], &w[4..], scale)?;
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(48))]
        /// Every i-quant's row as dispatched (AVX2 where the CPU has it, IQ1_M's x86-64-v4 build
        /// where it has that) and IQ1_M's AVX2 build give the bytes of its portable build, with
        /// and without importance weights, on hostile rows.
        #[test]
        fn dispatched_rows_equal_portable_rows(
            x in proptest::collection::vec(hostile(), 256),
            w in proptest::collection::vec(prop_oneof_weights(), 256),
        ) {
            use crate::quant::{iq1, iq2_s, iq2_xs, iq2_xxs, iq3_s, iq3_xxs};
            type Row = fn(&[f32], &mut [u8], &[f32]);
            type RowOpt = fn(&[f32], &mut [u8], Option<&[f32]>);
            let with: [(Row, Row, usize); 3] = [
                (iq1::quantize_row_iq1_s, iq1::quantize_row_iq1_s_portable, 50),
                (iq2_xxs::quantize_row_imatrix, iq2_xxs::quantize_row_imatrix_portable, 66),
                (iq2_xs::quantize_row_imatrix, iq2_xs::quantize_row_imatrix_portable, 74),
            ];
            for (fast, portable, bytes) in with {
                let (mut a, mut b) = (vec![0u8; bytes], vec![0u8; bytes]);
                fast(&x, &mut a, &w);
                portable(&x, &mut b, &w);
                proptest::prop_assert_eq!(a, b);
            }
            let opt: [(RowOpt, RowOpt, usize); 5] = [
                (iq1::quantize_row_iq1_m, iq1::quantize_row_iq1_m_portable, 56),
                (iq1_m_avx2, iq1::quantize_row_iq1_m_portable, 56),
                (iq2_s::quantize_row, iq2_s::quantize_row_portable, 82),
                (iq3_xxs::quantize_row, iq3_xxs::quantize_row_portable, 98),
                (iq3_s::quantize_row, iq3_s::quantize_row_portable, 110),
            ];
            for (fast, portable, bytes) in opt {
                for im in [None, Some(&w[..])] {
                    let (mut a, mut b) = (vec![0u8; bytes], vec![0u8; bytes]);
                    fast(&x, &mut a, im);
                    portable(&x, &mut b, im);
                    proptest::prop_assert_eq!(a, b);
                }
            }
        }
    }

    /// IQ1_M's AVX2 build, which an x86-64-v4 CPU dispatches past (portable without AVX2).
    fn iq1_m_avx2(x: &[f32], y: &mut [u8], w: Option<&[f32]>) {
        #[cfg(target_arch = "x86_64")]
        if crate::quant::iq1::quantize_row_iq1_m_avx2(x, y, w) {
            return;
        }
        crate::quant::iq1::quantize_row_iq1_m_portable(x, y, w)
    }

    /// Importance weights: ordinary, zero, tiny, huge, NaN.
    fn prop_oneof_weights() -> impl proptest::strategy::Strategy<Value = f32> {
        use proptest::prelude::*;
        prop_oneof![
            8 => 0.0f32..10.0,
            1 => prop::sample::select(vec![0.0f32, 1e-30, 1e30, f32::NAN]),
        ]
    }
}
