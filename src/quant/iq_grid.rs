//! The i-quants' lattices, built from ggml's grid lists ([`super::iq_kgrid`]) the way
//! `iq2xs_init_impl` and `iq3xs_init_impl` build them: every grid point with coordinates
//! `2l + 1` for its digits `l`; a map from each digit pattern to its grid index; and, for a
//! pattern that is not on the grid, the grid points nearest to it (all those at the
//! `nwant` smallest squared distances, ordered by distance then index, as ggml's `qsort`
//! of `(distance, index)` pairs leaves them). Built once per process, on first use.

use super::iq_kgrid::*;
use super::search::nearest_int;
use std::sync::OnceLock;

/// A lattice of `N`-dimensional points.
pub struct Grid<const N: usize> {
    /// The points, coordinates `2l + 1` (ggml's `kgrid_q2xs` / `kgrid_q3xs`).
    pub points: Vec<[i8; N]>,
    /// Per digit pattern: its grid index, or `-(offset + 1)` where `neighbours[offset]`
    /// is the count of the pattern's neighbours and the indices follow (ggml's `kmap_*`).
    map: Vec<i32>,
    neighbours: Vec<u16>,
    bits: u32,
}

/// The grid index of digit pattern `u`, or its neighbours' indices.
pub enum Lookup<'a> {
    OnGrid(usize),
    Neighbours(&'a [u16]),
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
        let mut map = vec![-1i32; kmap_size];
        for (i, p) in points.iter().enumerate() {
            let index = p.iter().enumerate().fold(0usize, |u, (k, &c)| {
                u | ((((c - 1) / 2) as usize) << (bits as usize * k))
            });
            map[index] = i as i32;
        }
        let mut neighbours = Vec::new();
        let mut dist2: Vec<(i32, u16)> = Vec::with_capacity(points.len());
        for i in 0..kmap_size {
            if map[i] >= 0 {
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
            map[i] = -(neighbours.len() as i32 + 1);
            neighbours.push(dist2.len() as u16);
            neighbours.extend(dist2.iter().map(|&(_, j)| j));
        }
        Grid {
            points,
            map,
            neighbours,
            bits,
        }
    }

    /// Looks digit pattern `u` up (`u` below the map's size: digits of `bits` bits each).
    #[inline]
    pub fn lookup(&self, u: usize) -> Lookup<'_> {
        let m = self.map[u];
        if m >= 0 {
            Lookup::OnGrid(m as usize)
        } else {
            let at = (-m - 1) as usize;
            let n = self.neighbours[at] as usize;
            Lookup::Neighbours(&self.neighbours[at + 1..at + 1 + n])
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
#[inline]
pub fn best_neighbour<const N: usize>(
    grid: &Grid<N>,
    neighbours: &[u16],
    xval: &[f32],
    weight: &[f32],
    scale: f32,
    l: &mut [i8],
) -> usize {
    let mut best_d2 = f32::MAX;
    let mut index = neighbours[0] as usize;
    for &j in neighbours {
        let pg = &grid.points[j as usize];
        let mut d2 = 0.0f32;
        for i in 0..N {
            let diff = scale * pg[i] as f32 - xval[i];
            d2 += weight[i] * diff * diff;
        }
        if d2 < best_d2 {
            best_d2 = d2;
            index = j as usize;
        }
    }
    for (o, &q) in l.iter_mut().zip(&grid.points[index]) {
        *o = (q - 1) / 2;
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
    pub steps: i32,
    pub base: f32,
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
}
