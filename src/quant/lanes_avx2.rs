//! The 8-lane scale searches of [`super::lanes`] written with AVX2 intrinsics: one
//! `__m256` holds element `i` of 8 groups, so each lane runs ggml's scalar search on its
//! own group. LLVM's own vectorisation of the portable lanes (in the `avx2_build!`
//! builds) shuffled the sums through SSE halves; here every step is a handful of full
//! 8-wide operations.
//!
//! Exactness: every float operation is the one the scalar search performs, on the same
//! operands, in its order (separate multiplies and adds: no FMA); comparisons are the
//! ordered ones of C (`a < b` false on NaN); `vminps`/`vmaxps` are used only where their
//! operand order gives C's `a < b ? a : b`. Two things are reorganised without changing a
//! result:
//! - the levels of a step are not kept: each lane keeps the inverse scale and the min the
//!   winning step used, and the levels are recomputed from them at the end (the same
//!   operations on the same values give the same levels);
//! - `w * x` in `make_qx_quants`' sums is the same product every step, so it is computed once;
//!   in `make_q3_quants` so are `w * x`, the current level's `w*x*L` and `w*L*L` (kept from
//!   where they were computed) and `sumlx * sumlx` (recomputed when `sumlx` changes);
//! - `make_q3_quants`' passes update the sums behind a branch taken only when some lane takes
//!   a new level, which lets the core run ahead across elements (the common case after the
//!   first pass changes nothing); the values are those of the unconditional blend.
//!
//! Mirrors ggml's `make_qkx2_quants` / `make_qkx3_quants`, `make_qx_quants`
//! (`rmse_type` 1) and `make_q3_quants` (`do_rmse`, as `quantize_row_q3_K_ref` calls it);
//! `tests/quant_props.rs` compares them with the scalar searches.

use super::lanes::{LANES, V};
use super::search::{Qkx, GROUP_MAX_EPS};
use std::arch::x86_64::*;

/// Proof that the CPU has AVX2: only [`Avx2::detect`] makes one.
#[derive(Clone, Copy, Debug)]
pub struct Avx2(());

impl Avx2 {
    /// `Some` when the CPU has AVX2 (`is_x86_feature_detected!` caches the answer).
    #[inline]
    pub fn detect() -> Option<Self> {
        super::simd::has_avx2().then_some(Avx2(()))
    }

    /// Every x86-64-v4 CPU has AVX2.
    #[inline]
    pub fn implied_by_v4(_: super::lanes_avx512::Avx512) -> Self {
        Avx2(())
    }

    /// [`super::lanes::make_qkx_quants_x8`] (same results).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn make_qkx_quants_x8<const N: usize>(
        self,
        which: Qkx,
        nmax: i32,
        xt: &[V; N],
        wt: &[V; N],
        lt: &mut [[u8; LANES]; N],
        rmin: f32,
        rdelta: f32,
        nstep: i32,
        use_mad: bool,
    ) -> (V, V) {
        let (s, m) = self.make_qkx_quants_x8g::<N, 1>(
            which,
            nmax,
            [xt],
            [wt],
            [lt],
            rmin,
            rdelta,
            nstep,
            use_mad,
        );
        (s[0], m[0])
    }

    /// [`super::lanes::make_qkx_quants_x8`] on `G` sets of 8 groups at once (same results
    /// as one set after the other; `G` = 2 hides the latency of the serial sums).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn make_qkx_quants_x8g<const N: usize, const G: usize>(
        self,
        which: Qkx,
        nmax: i32,
        xt: [&[V; N]; G],
        wt: [&[V; N]; G],
        mut lt: [&mut [[u8; LANES]; N]; G],
        rmin: f32,
        rdelta: f32,
        nstep: i32,
        use_mad: bool,
    ) -> ([V; G], [V; G]) {
        // SAFETY: an `Avx2` exists only when the CPU has AVX2.
        unsafe { qkx(which, nmax, &xt, &wt, &mut lt, rmin, rdelta, nstep, use_mad) }
    }

    /// [`super::lanes::make_qx_quants_x8`] (same results).
    #[inline]
    pub fn make_qx_quants_x8<const N: usize>(
        self,
        nmax: i32,
        xt: &[V; N],
        wt: &[V; N],
        lt: &mut [[i8; LANES]; N],
    ) -> V {
        self.make_qx_quants_x8g::<N, 1>(nmax, [xt], [wt], [lt])[0]
    }

    /// [`super::lanes::make_q3_quants_x8`] on `G` sets of 8 groups at once (same results).
    #[inline]
    pub fn make_q3_quants_x8g<const N: usize, const G: usize>(
        self,
        nmax: i32,
        xt: [&[V; N]; G],
        mut lt: [&mut [[i8; LANES]; N]; G],
    ) -> [V; G] {
        // SAFETY: an `Avx2` exists only when the CPU has AVX2.
        unsafe { q3(nmax, &xt, &mut lt) }
    }

    /// [`super::lanes::make_qx_quants_x8`] on `G` sets of 8 groups at once (same results).
    #[inline]
    pub fn make_qx_quants_x8g<const N: usize, const G: usize>(
        self,
        nmax: i32,
        xt: [&[V; N]; G],
        wt: [&[V; N]; G],
        mut lt: [&mut [[i8; LANES]; N]; G],
    ) -> [V; G] {
        // SAFETY: an `Avx2` exists only when the CPU has AVX2.
        unsafe { qx(nmax, &xt, &wt, &mut lt) }
    }
}

#[target_feature(enable = "avx2")]
#[inline]
fn load(v: &V) -> __m256 {
    // SAFETY: `v` holds 8 floats.
    unsafe { _mm256_loadu_ps(v.as_ptr()) }
}

#[target_feature(enable = "avx2")]
#[inline]
fn store(v: __m256) -> V {
    let mut o = [0f32; LANES];
    // SAFETY: `o` has room for 8 floats.
    unsafe { _mm256_storeu_ps(o.as_mut_ptr(), v) };
    o
}

#[target_feature(enable = "avx2")]
#[inline]
fn store_i(v: __m256i) -> [i32; LANES] {
    let mut o = [0i32; LANES];
    // SAFETY: `o` has room for 8 ints.
    unsafe { _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, v) };
    o
}

/// ggml's `nearest_int` on 8 lanes: the mantissa of `f + 1.5 * 2^23`.
#[target_feature(enable = "avx2")]
#[inline]
fn nearest(f: __m256) -> __m256i {
    let v = _mm256_add_ps(f, _mm256_set1_ps(12_582_912.0));
    _mm256_sub_epi32(
        _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x007f_ffff)),
        _mm256_set1_epi32(0x0040_0000),
    )
}

/// `MAX(lo, MIN(hi, l))`.
#[target_feature(enable = "avx2")]
#[inline]
fn clamp(l: __m256i, lo: __m256i, hi: __m256i) -> __m256i {
    _mm256_max_epi32(lo, _mm256_min_epi32(hi, l))
}

#[target_feature(enable = "avx2")]
#[inline]
fn select(mask: __m256, yes: __m256, no: __m256) -> __m256 {
    _mm256_blendv_ps(no, yes, mask)
}

/// The error term of one value: `|diff|` or `diff * diff`.
#[target_feature(enable = "avx2")]
#[inline]
fn err(diff: __m256, use_mad: bool) -> __m256 {
    if use_mad {
        _mm256_andnot_ps(_mm256_set1_ps(-0.0), diff)
    } else {
        _mm256_mul_ps(diff, diff)
    }
}

/// Any lane set in any of the `G` masks.
#[target_feature(enable = "avx2")]
#[inline]
fn any<const G: usize>(m: &[__m256; G]) -> bool {
    m.iter().any(|&v| _mm256_movemask_ps(v) != 0)
}

/// `G` registers, one per group of 8 lanes: `G` = 2 interleaves two independent sets of
/// dependency chains (the sums are serial per lane, so one set waits on add latency).
type R<const G: usize> = [__m256; G];

#[target_feature(enable = "avx2")]
#[inline]
fn map<const G: usize>(f: impl Fn(usize) -> __m256) -> R<G> {
    std::array::from_fn(f)
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
#[inline]
fn qkx<const N: usize, const G: usize>(
    which: Qkx,
    nmax: i32,
    xt: &[&[V; N]; G],
    wt: &[&[V; N]; G],
    lt: &mut [&mut [[u8; LANES]; N]; G],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> ([V; G], [V; G]) {
    debug_assert!(nstep >= 1);
    let x: [R<G>; N] = std::array::from_fn(|i| map(|g| load(&xt[g][i])));
    let w: [R<G>; N] = std::array::from_fn(|i| map(|g| load(&wt[g][i])));
    let zero = _mm256_setzero_ps();
    let (lo, hi) = (_mm256_setzero_si256(), _mm256_set1_epi32(nmax));
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x: R<G> = map(|g| _mm256_mul_ps(w[0][g], x[0][g]));
    for i in 1..N {
        for g in 0..G {
            // `if (x < min) min = x;` is `vminps(x, min)`, `if (x > max) max = x;` `vmaxps(x, max)`.
            min[g] = _mm256_min_ps(x[i][g], min[g]);
            max[g] = _mm256_max_ps(x[i][g], max[g]);
            sum_w[g] = _mm256_add_ps(sum_w[g], w[i][g]);
            sum_x[g] = _mm256_add_ps(sum_x[g], _mm256_mul_ps(w[i][g], x[i][g]));
        }
    }
    // `if (min > 0) min = 0;`
    let mut min: R<G> = map(|g| _mm256_min_ps(zero, min[g]));
    let flat: R<G> = map(|g| match which {
        Qkx::V2 => _mm256_cmp_ps::<_CMP_EQ_OQ>(max[g], min[g]),
        Qkx::V3 => _mm256_cmp_ps::<_CMP_LE_OQ>(max[g], min[g]),
    });
    let nmaxf = nmax as f32;
    let iscale: R<G> = map(|g| _mm256_div_ps(_mm256_set1_ps(nmaxf), _mm256_sub_ps(max[g], min[g])));
    let mut scale: R<G> = map(|g| _mm256_div_ps(_mm256_set1_ps(1.0), iscale[g]));
    let mut best_error = [zero; G];
    for i in 0..N {
        for g in 0..G {
            let t = _mm256_mul_ps(iscale[g], _mm256_sub_ps(x[i][g], min[g]));
            let lf = _mm256_cvtepi32_ps(clamp(nearest(t), lo, hi));
            let diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale[g], lf), min[g]), x[i][g]);
            best_error[g] =
                _mm256_add_ps(best_error[g], _mm256_mul_ps(w[i][g], err(diff, use_mad)));
        }
    }
    // The inverse scale and min the current levels come from.
    let (mut lvl_iscale, mut lvl_min) = (iscale, min);
    let mut laux = [[zero; G]; N];
    for is in 0..=nstep {
        let num = _mm256_set1_ps(rmin + rdelta * is as f32 + nmaxf);
        let iscale: R<G> = map(|g| _mm256_div_ps(num, _mm256_sub_ps(max[g], min[g])));
        let mut sum_l = [zero; G];
        let mut sum_l2 = [zero; G];
        let mut sum_xl = [zero; G];
        for i in 0..N {
            for g in 0..G {
                let t = _mm256_mul_ps(iscale[g], _mm256_sub_ps(x[i][g], min[g]));
                let lf = _mm256_cvtepi32_ps(clamp(nearest(t), lo, hi));
                laux[i][g] = lf;
                let wl = _mm256_mul_ps(w[i][g], lf);
                sum_l[g] = _mm256_add_ps(sum_l[g], wl);
                sum_l2[g] = _mm256_add_ps(sum_l2[g], _mm256_mul_ps(wl, lf));
                sum_xl[g] = _mm256_add_ps(sum_xl[g], _mm256_mul_ps(wl, x[i][g]));
            }
        }
        let d: R<G> = map(|g| {
            _mm256_sub_ps(
                _mm256_mul_ps(sum_w[g], sum_l2[g]),
                _mm256_mul_ps(sum_l[g], sum_l[g]),
            )
        });
        let ok: R<G> = map(|g| _mm256_andnot_ps(flat[g], _mm256_cmp_ps::<_CMP_GT_OQ>(d[g], zero)));
        if !any(&ok) {
            continue;
        }
        let mut this_scale: R<G> = map(|g| {
            let n = _mm256_sub_ps(
                _mm256_mul_ps(sum_w[g], sum_xl[g]),
                _mm256_mul_ps(sum_x[g], sum_l[g]),
            );
            _mm256_div_ps(n, d[g])
        });
        let mut this_min: R<G> = map(|g| {
            let n = _mm256_sub_ps(
                _mm256_mul_ps(sum_l2[g], sum_x[g]),
                _mm256_mul_ps(sum_l[g], sum_xl[g]),
            );
            _mm256_div_ps(n, d[g])
        });
        for g in 0..G {
            let pos = _mm256_cmp_ps::<_CMP_GT_OQ>(this_min[g], zero);
            this_scale[g] = select(pos, _mm256_div_ps(sum_xl[g], sum_l2[g]), this_scale[g]);
            this_min[g] = select(pos, zero, this_min[g]);
        }
        let mut cur_error = [zero; G];
        for i in 0..N {
            for g in 0..G {
                let v = _mm256_add_ps(_mm256_mul_ps(this_scale[g], laux[i][g]), this_min[g]);
                let diff = _mm256_sub_ps(v, x[i][g]);
                cur_error[g] =
                    _mm256_add_ps(cur_error[g], _mm256_mul_ps(w[i][g], err(diff, use_mad)));
            }
        }
        let better: R<G> = map(|g| {
            _mm256_and_ps(
                ok[g],
                _mm256_cmp_ps::<_CMP_LT_OQ>(cur_error[g], best_error[g]),
            )
        });
        if any(&better) {
            for g in 0..G {
                let b = better[g];
                best_error[g] = select(b, cur_error[g], best_error[g]);
                scale[g] = select(b, this_scale[g], scale[g]);
                lvl_iscale[g] = select(b, iscale[g], lvl_iscale[g]);
                lvl_min[g] = select(b, min[g], lvl_min[g]);
                min[g] = select(b, this_min[g], min[g]);
            }
        }
    }
    for g in 0..G {
        let flat_i = _mm256_castps_si256(flat[g]);
        for i in 0..N {
            let t = _mm256_mul_ps(lvl_iscale[g], _mm256_sub_ps(x[i][g], lvl_min[g]));
            let l = store_i(_mm256_andnot_si256(flat_i, clamp(nearest(t), lo, hi)));
            lt[g][i] = l.map(|v| v as u8);
        }
    }
    let scale = std::array::from_fn(|g| store(_mm256_andnot_ps(flat[g], scale[g])));
    let the_min = std::array::from_fn(|g| store(_mm256_xor_ps(min[g], _mm256_set1_ps(-0.0))));
    (scale, the_min)
}

/// The value of largest magnitude of each lane (the first one on ties:
/// `if (ax > amax) { amax = ax; max = x; }`) and the lanes whose largest magnitude
/// is below `GROUP_MAX_EPS` (all zero, as ggml's searches call it).
#[target_feature(enable = "avx2")]
#[inline]
fn abs_max<const N: usize, const G: usize>(x: &[R<G>; N]) -> (R<G>, R<G>) {
    let zero = _mm256_setzero_ps();
    let sign = _mm256_set1_ps(-0.0);
    let mut amax = [zero; G];
    let mut max = [zero; G];
    for xi in x {
        for g in 0..G {
            let ax = _mm256_andnot_ps(sign, xi[g]);
            let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(ax, amax[g]);
            amax[g] = select(gt, ax, amax[g]);
            max[g] = select(gt, xi[g], max[g]);
        }
    }
    let eps = _mm256_set1_ps(GROUP_MAX_EPS);
    (max, map(|g| _mm256_cmp_ps::<_CMP_LT_OQ>(amax[g], eps)))
}

/// ggml's `make_q3_quants` with `do_rmse` (the weights are `x * x`): a first rounding at
/// `-nmax / max`, then up to 5 passes that move one level at a time when that raises
/// `sumlx^2 / suml2`. As in [`super::lanes::make_q3_quants_x8`], every lane runs until no
/// lane of any set changes (a pass that changes nothing in a lane leaves its levels and
/// sums as they were, so later passes change nothing there either), and every lane computes
/// the candidate level (the scalar code only when `slx > 0`; no side effects) and keeps it
/// with a blend.
#[target_feature(enable = "avx2")]
#[inline]
fn q3<const N: usize, const G: usize>(
    nmax: i32,
    xt: &[&[V; N]; G],
    lt: &mut [&mut [[i8; LANES]; N]; G],
) -> [V; G] {
    let x: [R<G>; N] = std::array::from_fn(|i| map(|g| load(&xt[g][i])));
    // `float w = x[i]*x[i];` and `w*x[i]*l` is `(w * x) * l`: the same two products every pass.
    let w: [R<G>; N] = std::array::from_fn(|i| map(|g| _mm256_mul_ps(x[i][g], x[i][g])));
    let wx: [R<G>; N] = std::array::from_fn(|i| map(|g| _mm256_mul_ps(w[i][g], x[i][g])));
    let zero = _mm256_setzero_ps();
    let (lo, hi) = (_mm256_set1_epi32(-nmax), _mm256_set1_epi32(nmax - 1));
    let (max, is_zero) = abs_max(&x);
    let iscale: R<G> = map(|g| _mm256_div_ps(_mm256_set1_ps(-(nmax as f32)), max[g]));
    let mut l = [[_mm256_setzero_si256(); G]; N];
    // The current level's terms `w*x[i]*L[i]` and `w*L[i]*L[i]`, kept from where they were
    // computed (the same products on the same operands as recomputing them each pass).
    let mut wxl = [[zero; G]; N];
    let mut wl2 = [[zero; G]; N];
    let mut sumlx = [zero; G];
    let mut suml2 = [zero; G];
    for i in 0..N {
        for g in 0..G {
            let li = clamp(nearest(_mm256_mul_ps(iscale[g], x[i][g])), lo, hi);
            l[i][g] = li;
            let lf = _mm256_cvtepi32_ps(li);
            wxl[i][g] = _mm256_mul_ps(wx[i][g], lf);
            wl2[i][g] = _mm256_mul_ps(_mm256_mul_ps(w[i][g], lf), lf);
            sumlx[g] = _mm256_add_ps(sumlx[g], wxl[i][g]);
            suml2[g] = _mm256_add_ps(suml2[g], wl2[i][g]);
        }
    }
    // `sumlx*sumlx`, which changes only with `sumlx`.
    let mut sumlx2: R<G> = map(|g| _mm256_mul_ps(sumlx[g], sumlx[g]));
    for _ in 0..5 {
        let mut changed = false;
        for i in 0..N {
            for g in 0..G {
                // `slx = sumlx - w*x[i]*L[i]`, `sl2 = suml2 - w*L[i]*L[i]`.
                let slx = _mm256_sub_ps(sumlx[g], wxl[i][g]);
                let sl2 = _mm256_sub_ps(suml2[g], wl2[i][g]);
                // `nearest_int(x[i] * sl2 / slx)`, clamped.
                let q = _mm256_div_ps(_mm256_mul_ps(x[i][g], sl2), slx);
                let new_l = clamp(nearest(q), lo, hi);
                let nl = _mm256_cvtepi32_ps(new_l);
                let wxn = _mm256_mul_ps(wx[i][g], nl);
                let wn2 = _mm256_mul_ps(_mm256_mul_ps(w[i][g], nl), nl);
                let slx_n = _mm256_add_ps(slx, wxn);
                let sl2_n = _mm256_add_ps(sl2, wn2);
                // `slx > 0`, `new_l != L[i]`, `sl2 > 0 && slx*slx*suml2 > sumlx*sumlx*sl2`.
                let same = _mm256_castsi256_ps(_mm256_cmpeq_epi32(new_l, l[i][g]));
                let gain = _mm256_cmp_ps::<_CMP_GT_OQ>(
                    _mm256_mul_ps(_mm256_mul_ps(slx_n, slx_n), suml2[g]),
                    _mm256_mul_ps(sumlx2[g], sl2_n),
                );
                let accept = _mm256_andnot_ps(
                    same,
                    _mm256_and_ps(
                        _mm256_and_ps(
                            _mm256_cmp_ps::<_CMP_GT_OQ>(slx, zero),
                            _mm256_cmp_ps::<_CMP_GT_OQ>(sl2_n, zero),
                        ),
                        gain,
                    ),
                );
                // Taking a new level is rare after the first pass: behind a branch, the sums
                // do not depend on this element unless some lane took one, so the core runs
                // the next elements ahead instead of waiting on this one's divide.
                if _mm256_movemask_ps(accept) != 0 {
                    l[i][g] = _mm256_blendv_epi8(l[i][g], new_l, _mm256_castps_si256(accept));
                    wxl[i][g] = select(accept, wxn, wxl[i][g]);
                    wl2[i][g] = select(accept, wn2, wl2[i][g]);
                    sumlx[g] = select(accept, slx_n, sumlx[g]);
                    suml2[g] = select(accept, sl2_n, suml2[g]);
                    sumlx2[g] = _mm256_mul_ps(sumlx[g], sumlx[g]);
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let off = _mm256_set1_epi32(nmax);
    for g in 0..G {
        let zi = _mm256_castps_si256(is_zero[g]);
        for i in 0..N {
            let v = store_i(_mm256_andnot_si256(zi, _mm256_add_epi32(l[i][g], off)));
            lt[g][i] = v.map(|v| v as i8);
        }
    }
    // `suml2 > 0.0f ? sumlx / suml2 : 0.0f` (0 for an all-zero lane).
    std::array::from_fn(|g| {
        let pos = _mm256_cmp_ps::<_CMP_GT_OQ>(suml2[g], zero);
        let s = select(pos, _mm256_div_ps(sumlx[g], suml2[g]), zero);
        store(_mm256_andnot_ps(is_zero[g], s))
    })
}

#[target_feature(enable = "avx2")]
#[inline]
fn qx<const N: usize, const G: usize>(
    nmax: i32,
    xt: &[&[V; N]; G],
    wt: &[&[V; N]; G],
    lt: &mut [&mut [[i8; LANES]; N]; G],
) -> [V; G] {
    let x: [R<G>; N] = std::array::from_fn(|i| map(|g| load(&xt[g][i])));
    let w: [R<G>; N] = std::array::from_fn(|i| map(|g| load(&wt[g][i])));
    // `sumlx += w * x * l` is `(w * x) * l`: the same `w * x` every pass.
    let wx: [R<G>; N] = std::array::from_fn(|i| map(|g| _mm256_mul_ps(w[i][g], x[i][g])));
    let zero = _mm256_setzero_ps();
    let (lo, hi) = (_mm256_set1_epi32(-nmax), _mm256_set1_epi32(nmax - 1));
    let (max, is_zero) = abs_max(&x);
    let nmaxf = nmax as f32;
    let sums = |iscale: &R<G>| -> (R<G>, R<G>) {
        let mut sumlx = [zero; G];
        let mut suml2 = [zero; G];
        for i in 0..N {
            for g in 0..G {
                let l = clamp(nearest(_mm256_mul_ps(iscale[g], x[i][g])), lo, hi);
                let lf = _mm256_cvtepi32_ps(l);
                sumlx[g] = _mm256_add_ps(sumlx[g], _mm256_mul_ps(wx[i][g], lf));
                suml2[g] = _mm256_add_ps(suml2[g], _mm256_mul_ps(_mm256_mul_ps(w[i][g], lf), lf));
            }
        }
        (sumlx, suml2)
    };
    let mut lvl_iscale: R<G> = map(|g| _mm256_div_ps(_mm256_set1_ps(-nmaxf), max[g]));
    let (sumlx, suml2) = sums(&lvl_iscale);
    // `suml2 != 0 ? sumlx / suml2 : 0` (true on NaN, as C's `!=`).
    let mut scale: R<G> = map(|g| {
        let nz = _mm256_cmp_ps::<_CMP_NEQ_UQ>(suml2[g], zero);
        select(nz, _mm256_div_ps(sumlx[g], suml2[g]), zero)
    });
    let mut best: R<G> = map(|g| _mm256_mul_ps(scale[g], sumlx[g]));
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        let num = _mm256_set1_ps(-(nmaxf + 0.1 * is as f32));
        let iscale: R<G> = map(|g| _mm256_div_ps(num, max[g]));
        let (sumlx, suml2) = sums(&iscale);
        let take: R<G> = map(|g| {
            _mm256_and_ps(
                _mm256_cmp_ps::<_CMP_GT_OQ>(suml2[g], zero),
                _mm256_cmp_ps::<_CMP_GT_OQ>(
                    _mm256_mul_ps(sumlx[g], sumlx[g]),
                    _mm256_mul_ps(best[g], suml2[g]),
                ),
            )
        });
        if any(&take) {
            for g in 0..G {
                let s = _mm256_div_ps(sumlx[g], suml2[g]);
                scale[g] = select(take[g], s, scale[g]);
                best[g] = select(take[g], _mm256_mul_ps(s, sumlx[g]), best[g]);
                lvl_iscale[g] = select(take[g], iscale[g], lvl_iscale[g]);
            }
        }
    }
    let off = _mm256_set1_epi32(nmax);
    for g in 0..G {
        let zi = _mm256_castps_si256(is_zero[g]);
        for i in 0..N {
            let l = clamp(nearest(_mm256_mul_ps(lvl_iscale[g], x[i][g])), lo, hi);
            let l = store_i(_mm256_andnot_si256(zi, _mm256_add_epi32(l, off)));
            lt[g][i] = l.map(|v| v as i8);
        }
    }
    std::array::from_fn(|g| store(_mm256_andnot_ps(is_zero[g], scale[g])))
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::golden::SplitMix;
    use super::super::lanes::{
        make_q3_quants_x8, make_qkx_quants_x8, make_qx_quants_x8, transpose,
    };
    use super::super::search::{make_q3_quants, make_qkx_quants, make_qx_quants};
    use super::*;

    /// 8 groups of `N`, each drawn from one of several hostile families (normal, zeros,
    /// constants, one huge value, near FLT_MAX, subnormals, below GROUP_MAX_EPS, ties,
    /// all positive, NaN, infinities, a lone nonzero).
    pub(in crate::quant) fn groups<const N: usize>(s: &mut SplitMix) -> [[f32; N]; LANES] {
        std::array::from_fn(|_| {
            let family = (s.next_u64() % 13) as usize;
            let spot = (s.next_u64() % N as u64) as usize;
            std::array::from_fn(|i| {
                let g = s.gauss();
                match family {
                    0 => 0.0,
                    1 => 0.5,
                    2 => -3.0,
                    3 if i == spot => 1.0e4,
                    4 if i == spot => -3.0e38,
                    5 => g * 1e-40,
                    6 => g * 1e-17,
                    7 => (g * 4.0).round() * 0.5,
                    8 => g.abs() + 0.1,
                    9 if i == spot => f32::NAN,
                    10 if i == spot => f32::NEG_INFINITY,
                    11 => {
                        if i == spot {
                            g
                        } else {
                            0.0
                        }
                    }
                    _ => g,
                }
            })
        })
    }

    /// Two interleaved sets, the second the first's groups in reverse lane
    /// order: set 0 equals the one-set run (`sa`, `la`) and set 1 its reversal.
    fn assert_second_set_reversed(
        case: usize,
        sa: &V,
        la: &[[i8; LANES]; 16],
        s2: &[V; 2],
        l0: &[[i8; LANES]; 16],
        l1: &[[i8; LANES]; 16],
    ) {
        assert_eq!(bits(&s2[0]), bits(sa), "case {case}");
        assert_eq!(l0, la, "case {case}: levels of set 0");
        let rev: [u32; LANES] = std::array::from_fn(|k| sa[LANES - 1 - k].to_bits());
        assert_eq!(bits(&s2[1]), rev, "case {case}");
        for i in 0..16 {
            assert_eq!(l1[i], std::array::from_fn(|k| la[i][LANES - 1 - k]));
        }
    }

    fn bits(v: &V) -> [u32; LANES] {
        v.map(f32::to_bits)
    }

    #[test]
    fn qkx_avx2_equals_portable_lanes_and_scalar() {
        let Some(t) = Avx2::detect() else { return };
        let mut s = SplitMix(7);
        // (which, nmax, rmin, rdelta, nstep, use_mad): Q4_K, Q5_K, Q2_K, the imatrix searches.
        let params = [
            (Qkx::V2, 15, -1.0, 0.1, 20, false),
            (Qkx::V2, 31, -0.5, 0.1, 15, false),
            (Qkx::V2, 3, -0.5, 0.1, 15, true),
            (Qkx::V3, 15, -0.9, 0.05, 36, false),
            (Qkx::V3, 31, -0.9, 0.05, 36, false),
        ];
        for case in 0..400 {
            let g = groups::<32>(&mut s);
            let weighted = case % 2 == 0;
            let w: [[f32; 32]; LANES] = std::array::from_fn(|k| {
                std::array::from_fn(|i| {
                    if weighted {
                        s.unif() * 3.0 + 0.001
                    } else {
                        let a = g[k].iter().map(|v| v * v).sum::<f32>();
                        (a / 32.0).sqrt() + g[k][i].abs()
                    }
                })
            });
            let xt = transpose::<32>(|k| g[k]);
            let wt = transpose::<32>(|k| w[k]);
            let (which, nmax, rmin, rdelta, nstep, mad) = params[case % params.len()];
            let mut la = [[0u8; LANES]; 32];
            let mut lp = [[0u8; LANES]; 32];
            let (sa, ma) =
                t.make_qkx_quants_x8(which, nmax, &xt, &wt, &mut la, rmin, rdelta, nstep, mad);
            let (sp, mp) =
                make_qkx_quants_x8(which, nmax, &xt, &wt, &mut lp, rmin, rdelta, nstep, mad);
            assert_eq!(
                (bits(&sa), bits(&ma)),
                (bits(&sp), bits(&mp)),
                "case {case}"
            );
            assert_eq!(la, lp, "case {case}: levels");
            // Two sets interleaved: this one and the reversed groups.
            let xr = transpose::<32>(|k| g[LANES - 1 - k]);
            let wr = transpose::<32>(|k| w[LANES - 1 - k]);
            let (mut l0, mut l1) = ([[0u8; LANES]; 32], [[0u8; LANES]; 32]);
            let (s2, m2) = t.make_qkx_quants_x8g::<32, 2>(
                which,
                nmax,
                [&xt, &xr],
                [&wt, &wr],
                [&mut l0, &mut l1],
                rmin,
                rdelta,
                nstep,
                mad,
            );
            assert_eq!(
                (bits(&s2[0]), bits(&m2[0])),
                (bits(&sa), bits(&ma)),
                "case {case}"
            );
            assert_eq!(l0, la, "case {case}: levels of set 0");
            let rev =
                |v: &V| -> [u32; LANES] { std::array::from_fn(|k| v[LANES - 1 - k].to_bits()) };
            assert_eq!(
                (bits(&s2[1]), bits(&m2[1])),
                (rev(&sa), rev(&ma)),
                "case {case}"
            );
            for i in 0..32 {
                assert_eq!(l1[i], std::array::from_fn(|k| la[i][LANES - 1 - k]));
            }
            for k in 0..LANES {
                let (mut l, mut aux) = ([0u8; 32], [0u8; 32]);
                let (sc, m) = make_qkx_quants(
                    which, nmax, &g[k], &w[k], &mut l, &mut aux, rmin, rdelta, nstep, mad,
                );
                assert_eq!(
                    (sc.to_bits(), m.to_bits()),
                    (sa[k].to_bits(), ma[k].to_bits())
                );
                assert_eq!(l, std::array::from_fn(|i| la[i][k]), "case {case} lane {k}");
            }
        }
    }

    #[test]
    fn qx_avx2_equals_portable_lanes_and_scalar() {
        let Some(t) = Avx2::detect() else { return };
        let mut s = SplitMix(11);
        for case in 0..400 {
            let g = groups::<16>(&mut s);
            let weighted = case % 2 == 0;
            let w: [[f32; 16]; LANES] = std::array::from_fn(|k| {
                std::array::from_fn(|i| {
                    if weighted {
                        s.unif() * 3.0 + 0.001
                    } else {
                        g[k][i] * g[k][i]
                    }
                })
            });
            let xt = transpose::<16>(|k| g[k]);
            let wt = transpose::<16>(|k| w[k]);
            let nmax = [32, 4, 8, 16][case % 4];
            let mut la = [[0i8; LANES]; 16];
            let mut lp = [[0i8; LANES]; 16];
            let sa = t.make_qx_quants_x8(nmax, &xt, &wt, &mut la);
            let sp = make_qx_quants_x8(nmax, &xt, &wt, &mut lp);
            assert_eq!(bits(&sa), bits(&sp), "case {case}");
            assert_eq!(la, lp, "case {case}: levels");
            let xr = transpose::<16>(|k| g[LANES - 1 - k]);
            let wr = transpose::<16>(|k| w[LANES - 1 - k]);
            let (mut l0, mut l1) = ([[0i8; LANES]; 16], [[0i8; LANES]; 16]);
            let s2 =
                t.make_qx_quants_x8g::<16, 2>(nmax, [&xt, &xr], [&wt, &wr], [&mut l0, &mut l1]);
            assert_second_set_reversed(case, &sa, &la, &s2, &l0, &l1);
            for k in 0..LANES {
                let mut l = [0i8; 16];
                let sc = make_qx_quants(nmax, &g[k], &mut l, 1, weighted.then_some(&w[k][..]));
                assert_eq!(sc.to_bits(), sa[k].to_bits(), "case {case} lane {k}");
                assert_eq!(l, std::array::from_fn(|i| la[i][k]), "case {case} lane {k}");
            }
        }
    }

    #[test]
    fn q3_avx2_equals_portable_lanes_and_scalar() {
        let Some(t) = Avx2::detect() else { return };
        let mut s = SplitMix(13);
        let mut moved = 0;
        for case in 0..600 {
            let g = groups::<16>(&mut s);
            let xt = transpose::<16>(|k| g[k]);
            // Q3_K calls it with nmax 4; other widths exercise the clamps.
            let nmax = [4, 4, 2, 8][case % 4];
            let mut la = [[0i8; LANES]; 16];
            let mut lp = [[0i8; LANES]; 16];
            let sa = t.make_q3_quants_x8g::<16, 1>(nmax, [&xt], [&mut la])[0];
            let sp = make_q3_quants_x8(nmax, &xt, &mut lp);
            assert_eq!(bits(&sa), bits(&sp), "case {case}");
            assert_eq!(la, lp, "case {case}: levels");
            // Two sets interleaved: this one and the reversed groups.
            let xr = transpose::<16>(|k| g[LANES - 1 - k]);
            let (mut l0, mut l1) = ([[0i8; LANES]; 16], [[0i8; LANES]; 16]);
            let s2 = t.make_q3_quants_x8g::<16, 2>(nmax, [&xt, &xr], [&mut l0, &mut l1]);
            assert_second_set_reversed(case, &sa, &la, &s2, &l0, &l1);
            for k in 0..LANES {
                let mut l = [0i8; 16];
                let sc = make_q3_quants(nmax, &g[k], &mut l, true);
                assert_eq!(sc.to_bits(), sa[k].to_bits(), "case {case} lane {k}");
                assert_eq!(l, std::array::from_fn(|i| la[i][k]), "case {case} lane {k}");
                // Count groups where the passes moved a level off the first rounding.
                let first = make_q3_quants_first(nmax, &g[k]);
                moved += usize::from(first.is_some_and(|f| f != l));
            }
        }
        // The refinement passes ran and changed levels in many groups (the test
        // would otherwise only check the first rounding).
        assert!(moved > 60, "{moved}");
    }

    /// The levels of `make_q3_quants`' first rounding alone (offset by `nmax`), or `None`
    /// for an all-zero group.
    fn make_q3_quants_first(nmax: i32, x: &[f32; 16]) -> Option<[i8; 16]> {
        let mut l = [0i8; 16];
        let iscale = make_q3_quants(nmax, x, &mut l, false);
        (iscale != 0.0).then_some(l)
    }
}
