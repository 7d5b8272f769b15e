//! The asymmetric scale search of [`super::lanes_avx2`] (`make_qkx2_quants` /
//! `make_qkx3_quants`) on 16 lanes with AVX-512: one `__m512` holds element `i` of two sets
//! of 8 groups (set `2z` in lanes 0-7, set `2z + 1` in lanes 8-15), so a Q4_K/Q5_K
//! super-block pair's 16 sub-blocks run in one register, each lane ggml's scalar search
//! on its own group.
//!
//! Exactness: the rules of [`super::lanes_avx2`] unchanged. Every float operation is the one
//! the scalar search performs, on the same operands, in its order (separate multiplies and
//! adds: no FMA); comparisons are C's ordered ones (`a < b` false on NaN), now into mask
//! registers; `vminps`/`vmaxps` only where their operand order gives C's `a < b ? a : b`; the
//! levels of a step are recomputed at the end from the inverse scale and min that won, as in
//! the AVX2 kernel. `tests/quant_props.rs` and the tests below compare it with the scalar
//! search and the AVX2 kernel.
//!
//! Mirrors ggml's `make_qkx2_quants` / `make_qkx3_quants` (ggml-quants.c).

use super::lanes::{LANES, V};
use super::lanes_avx2::Avx2;
use super::search::Qkx;
use std::arch::x86_64::*;

/// Proof that the CPU runs x86-64-v4 (AVX-512 F, BW, DQ, VL with AVX2 and FMA): only
/// [`Avx512::detect`] makes one.
#[derive(Clone, Copy, Debug)]
pub struct Avx512(());

impl Avx512 {
    /// `Some` when the CPU has the x86-64-v4 features (cached by `is_x86_feature_detected!`).
    #[inline]
    pub fn detect() -> Option<Self> {
        crate::calib::forward::has_v4().then_some(Avx512(()))
    }

    /// The AVX2 kernel, which every x86-64-v4 CPU also runs.
    #[inline]
    pub fn avx2(self) -> Avx2 {
        Avx2::implied_by_v4(self)
    }

    /// [`super::lanes::make_qkx_quants_x8`] on `2 * Z` sets of 8 groups (`G` = `2 * Z`), set
    /// `g` in lanes `8 * (g % 2)..` of register `g / 2`: the same results as one set after
    /// the other.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn make_qkx_quants_x16<const N: usize, const G: usize, const Z: usize>(
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
        assert_eq!(G, 2 * Z, "two sets of 8 groups per register");
        // SAFETY: an `Avx512` exists only when the CPU has the x86-64-v4 features.
        unsafe { qkx::<N, G, Z>(which, nmax, &xt, &wt, &mut lt, rmin, rdelta, nstep, use_mad) }
    }
}

impl Avx512 {
    /// [`super::lanes::make_qx_quants_x8`] on `2 * Z` sets of 8 groups, laid out as in
    /// [`Avx512::make_qkx_quants_x16`] (same results as one set after the other).
    #[inline]
    pub fn make_qx_quants_x16<const N: usize, const G: usize, const Z: usize>(
        self,
        nmax: i32,
        xt: [&[V; N]; G],
        wt: [&[V; N]; G],
        mut lt: [&mut [[i8; LANES]; N]; G],
    ) -> [V; G] {
        assert_eq!(G, 2 * Z, "two sets of 8 groups per register");
        // SAFETY: an `Avx512` exists only when the CPU has the x86-64-v4 features.
        unsafe { qx::<N, G, Z>(nmax, &xt, &wt, &mut lt) }
    }
}

/// The target features of the kernels below (x86-64-v4, as `calib::forward::has_v4` checks).
macro_rules! v4_fn {
    ($(#[$m:meta])* fn $($rest:tt)*) => {
        $(#[$m])*
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,avx,fma,bmi1,bmi2,lzcnt,popcnt")]
        #[inline]
        fn $($rest)*
    };
}

v4_fn! {
    /// Sets `2z` and `2z + 1` of `t`, element `i`, as one register.
    fn load2(a: &V, b: &V) -> __m512 {
        // SAFETY: `a` and `b` hold 8 floats each.
        unsafe {
            let lo = _mm256_loadu_ps(a.as_ptr());
            let hi = _mm256_loadu_ps(b.as_ptr());
            _mm512_insertf32x8::<1>(_mm512_castps256_ps512(lo), hi)
        }
    }
}

v4_fn! {
    /// The two halves of `v` as the 8-lane arrays of their sets.
    fn store2(v: __m512) -> (V, V) {
        let mut o = [0f32; 2 * LANES];
        // SAFETY: `o` has room for 16 floats.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), v) };
        (
            std::array::from_fn(|k| o[k]),
            std::array::from_fn(|k| o[LANES + k]),
        )
    }
}

v4_fn! {
    /// ggml's `nearest_int` on 16 lanes: the mantissa of `f + 1.5 * 2^23`.
    fn nearest(f: __m512) -> __m512i {
        let v = _mm512_add_ps(f, _mm512_set1_ps(12_582_912.0));
        _mm512_sub_epi32(
            _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x007f_ffff)),
            _mm512_set1_epi32(0x0040_0000),
        )
    }
}

v4_fn! {
    /// `MAX(lo, MIN(hi, l))`.
    fn clamp(l: __m512i, lo: __m512i, hi: __m512i) -> __m512i {
        _mm512_max_epi32(lo, _mm512_min_epi32(hi, l))
    }
}

/// `|t|` below this (and not NaN) is where [`level_f`] equals the integer path.
const LEVEL_F_BOUND: f32 = 4.0e6;

v4_fn! {
    /// `MAX(lo, MIN(hi, nearest_int(t)))` as a float (integer bounds below 2^20), in 4 operations instead of 6, for
    /// `|t| < LEVEL_F_BOUND` (below 2^22 - 1): there `t + 1.5 * 2^23` lies in [2^23, 2^24),
    /// whose spacing is 1, so the sum is rounded to `1.5 * 2^23 + nearest_int(t)` exactly (ties
    /// to even, the constant being even) and the clamp and the subtraction are exact.
    fn level_f(t: __m512, lo: f32, hi: f32) -> __m512 {
        let magic = _mm512_set1_ps(12_582_912.0);
        let v = _mm512_add_ps(t, magic);
        let v = _mm512_min_ps(v, _mm512_set1_ps(12_582_912.0 + hi));
        let v = _mm512_max_ps(v, _mm512_set1_ps(12_582_912.0 + lo));
        _mm512_sub_ps(v, magic)
    }
}

v4_fn! {
    /// `|v|`.
    fn abs(v: __m512) -> __m512 {
        _mm512_andnot_ps(_mm512_set1_ps(-0.0), v)
    }
}

v4_fn! {
    /// `m ? yes : no` per lane.
    fn select(m: __mmask16, yes: __m512, no: __m512) -> __m512 {
        _mm512_mask_blend_ps(m, no, yes)
    }
}

v4_fn! {
    /// The error term of one value: `|diff|` or `diff * diff`.
    fn err(diff: __m512, use_mad: bool) -> __m512 {
        if use_mad {
            abs(diff)
        } else {
            _mm512_mul_ps(diff, diff)
        }
    }
}

v4_fn! {
    /// The lanes whose elements are all finite (no NaN, no infinity).
    fn finite<const N: usize, const Z: usize>(x: &[R<Z>; N]) -> M<Z> {
        let inf = _mm512_set1_ps(f32::INFINITY);
        mask(|z| {
            let mut m: __mmask16 = !0;
            for xi in x {
                m &= _mm512_cmp_ps_mask::<_CMP_LT_OQ>(abs(xi[z]), inf);
            }
            m
        })
    }
}

v4_fn! {
    /// Whether every lane of every register is finite and `|t| < LEVEL_F_BOUND`.
    fn in_level_f_range<const Z: usize>(finite: &M<Z>, t: &[R<Z>]) -> bool {
        let bound = _mm512_set1_ps(LEVEL_F_BOUND);
        (0..Z).all(|z| {
            let mut m = finite[z];
            for v in t {
                m &= _mm512_cmp_ps_mask::<_CMP_LT_OQ>(abs(v[z]), bound);
            }
            m == !0
        })
    }
}

/// `Z` registers of 16 lanes.
type R<const Z: usize> = [__m512; Z];
/// `Z` masks of 16 lanes.
type M<const Z: usize> = [__mmask16; Z];

v4_fn! {
    fn map<const Z: usize>(f: impl Fn(usize) -> __m512) -> R<Z> {
        std::array::from_fn(f)
    }
}

v4_fn! {
    fn mask<const Z: usize>(f: impl Fn(usize) -> __mmask16) -> M<Z> {
        std::array::from_fn(f)
    }
}

v4_fn! {
    /// [`super::lanes_avx2`]'s `qkx` on 16 lanes a register (see the module doc).
    #[allow(clippy::too_many_arguments)]
    fn qkx<const N: usize, const G: usize, const Z: usize>(
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
        let x: [R<Z>; N] = std::array::from_fn(|i| map(|z| load2(&xt[2 * z][i], &xt[2 * z + 1][i])));
        let w: [R<Z>; N] = std::array::from_fn(|i| map(|z| load2(&wt[2 * z][i], &wt[2 * z + 1][i])));
        let zero = _mm512_setzero_ps();
        let (lo, hi) = (_mm512_setzero_si512(), _mm512_set1_epi32(nmax));
        let mut min = x[0];
        let mut max = x[0];
        let mut sum_w = w[0];
        let mut sum_x: R<Z> = map(|z| _mm512_mul_ps(w[0][z], x[0][z]));
        for i in 1..N {
            for z in 0..Z {
                // `if (x < min) min = x;` is `vminps(x, min)`, `if (x > max) max = x;` `vmaxps(x, max)`.
                min[z] = _mm512_min_ps(x[i][z], min[z]);
                max[z] = _mm512_max_ps(x[i][z], max[z]);
                sum_w[z] = _mm512_add_ps(sum_w[z], w[i][z]);
                sum_x[z] = _mm512_add_ps(sum_x[z], _mm512_mul_ps(w[i][z], x[i][z]));
            }
        }
        // Every element lies between these two when the lane holds no NaN (see `level_f`).
        let (x_lo, x_hi) = (min, max);
        let finite = finite(&x);
        // `if (min > 0) min = 0;`
        let mut min: R<Z> = map(|z| _mm512_min_ps(zero, min[z]));
        let flat: M<Z> = mask(|z| match which {
            Qkx::V2 => _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(max[z], min[z]),
            Qkx::V3 => _mm512_cmp_ps_mask::<_CMP_LE_OQ>(max[z], min[z]),
        });
        let nmaxf = nmax as f32;
        let iscale: R<Z> = map(|z| _mm512_div_ps(_mm512_set1_ps(nmaxf), _mm512_sub_ps(max[z], min[z])));
        let mut scale: R<Z> = map(|z| _mm512_div_ps(_mm512_set1_ps(1.0), iscale[z]));
        let mut best_error = [zero; Z];
        for i in 0..N {
            for z in 0..Z {
                let t = _mm512_mul_ps(iscale[z], _mm512_sub_ps(x[i][z], min[z]));
                let lf = _mm512_cvtepi32_ps(clamp(nearest(t), lo, hi));
                let diff = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(scale[z], lf), min[z]), x[i][z]);
                best_error[z] = _mm512_add_ps(best_error[z], _mm512_mul_ps(w[i][z], err(diff, use_mad)));
            }
        }
        // The inverse scale and min the current levels come from.
        let (mut lvl_iscale, mut lvl_min) = (iscale, min);
        let mut laux = [[zero; Z]; N];
        for is in 0..=nstep {
            let num = _mm512_set1_ps(rmin + rdelta * is as f32 + nmaxf);
            let iscale: R<Z> = map(|z| _mm512_div_ps(num, _mm512_sub_ps(max[z], min[z])));
            // Whether every `t` of this step is in `level_f`'s range: `t` is monotonic in `x`, so
            // its extremes are those of the smallest and largest element (finite lanes).
            let t_lo = map(|z| _mm512_mul_ps(iscale[z], _mm512_sub_ps(x_lo[z], min[z])));
            let t_hi = map(|z| _mm512_mul_ps(iscale[z], _mm512_sub_ps(x_hi[z], min[z])));
            let fast = in_level_f_range(&finite, &[t_lo, t_hi]);
            let mut sum_l = [zero; Z];
            let mut sum_l2 = [zero; Z];
            let mut sum_xl = [zero; Z];
            for i in 0..N {
                for z in 0..Z {
                    let t = _mm512_mul_ps(iscale[z], _mm512_sub_ps(x[i][z], min[z]));
                    let lf = if fast {
                        level_f(t, 0.0, nmaxf)
                    } else {
                        _mm512_cvtepi32_ps(clamp(nearest(t), lo, hi))
                    };
                    laux[i][z] = lf;
                    let wl = _mm512_mul_ps(w[i][z], lf);
                    sum_l[z] = _mm512_add_ps(sum_l[z], wl);
                    sum_l2[z] = _mm512_add_ps(sum_l2[z], _mm512_mul_ps(wl, lf));
                    sum_xl[z] = _mm512_add_ps(sum_xl[z], _mm512_mul_ps(wl, x[i][z]));
                }
            }
            let d: R<Z> = map(|z| {
                _mm512_sub_ps(_mm512_mul_ps(sum_w[z], sum_l2[z]), _mm512_mul_ps(sum_l[z], sum_l[z]))
            });
            // `d > 0` on the lanes that did not return early.
            let ok: M<Z> = mask(|z| _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(!flat[z], d[z], zero));
            if ok.iter().all(|&m| m == 0) {
                continue;
            }
            let mut this_scale: R<Z> = map(|z| {
                let n = _mm512_sub_ps(_mm512_mul_ps(sum_w[z], sum_xl[z]), _mm512_mul_ps(sum_x[z], sum_l[z]));
                _mm512_div_ps(n, d[z])
            });
            let mut this_min: R<Z> = map(|z| {
                let n = _mm512_sub_ps(_mm512_mul_ps(sum_l2[z], sum_x[z]), _mm512_mul_ps(sum_l[z], sum_xl[z]));
                _mm512_div_ps(n, d[z])
            });
            for z in 0..Z {
                let pos = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(this_min[z], zero);
                this_scale[z] = select(pos, _mm512_div_ps(sum_xl[z], sum_l2[z]), this_scale[z]);
                this_min[z] = select(pos, zero, this_min[z]);
            }
            let mut cur_error = [zero; Z];
            for i in 0..N {
                for z in 0..Z {
                    let v = _mm512_add_ps(_mm512_mul_ps(this_scale[z], laux[i][z]), this_min[z]);
                    let diff = _mm512_sub_ps(v, x[i][z]);
                    cur_error[z] = _mm512_add_ps(cur_error[z], _mm512_mul_ps(w[i][z], err(diff, use_mad)));
                }
            }
            let better: M<Z> =
                mask(|z| _mm512_mask_cmp_ps_mask::<_CMP_LT_OQ>(ok[z], cur_error[z], best_error[z]));
            for z in 0..Z {
                let b = better[z];
                if b != 0 {
                    best_error[z] = select(b, cur_error[z], best_error[z]);
                    scale[z] = select(b, this_scale[z], scale[z]);
                    lvl_iscale[z] = select(b, iscale[z], lvl_iscale[z]);
                    lvl_min[z] = select(b, min[z], lvl_min[z]);
                    min[z] = select(b, this_min[z], min[z]);
                }
            }
        }
        for z in 0..Z {
            for i in 0..N {
                let t = _mm512_mul_ps(lvl_iscale[z], _mm512_sub_ps(x[i][z], lvl_min[z]));
                // Flat lanes get level 0; the levels fit a byte (0..=nmax).
                let l = _mm512_maskz_mov_epi32(!flat[z], clamp(nearest(t), lo, hi));
                let b = _mm512_cvtepi32_epi8(l);
                let mut o = [0u8; 2 * LANES];
                // SAFETY: `o` has room for the 16 bytes of `b`.
                unsafe { _mm_storeu_si128(o.as_mut_ptr() as *mut __m128i, b) };
                lt[2 * z][i] = std::array::from_fn(|k| o[k]);
                lt[2 * z + 1][i] = std::array::from_fn(|k| o[LANES + k]);
            }
        }
        let mut out = ([[0f32; LANES]; G], [[0f32; LANES]; G]);
        for z in 0..Z {
            let s = _mm512_maskz_mov_ps(!flat[z], scale[z]);
            (out.0[2 * z], out.0[2 * z + 1]) = store2(s);
            let m = _mm512_xor_ps(min[z], _mm512_set1_ps(-0.0));
            (out.1[2 * z], out.1[2 * z + 1]) = store2(m);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::golden::SplitMix;
    use super::super::lanes::transpose;
    use super::super::lanes_avx2::tests::groups;
    use super::super::search::{make_qkx_quants, make_qx_quants};
    use super::*;

    /// The searches Q4_K, Q5_K, Q2_K and the imatrix quantizers run:
    /// (which, nmax, rmin, rdelta, nstep, use_mad).
    const PARAMS: [(Qkx, i32, f32, f32, i32, bool); 5] = [
        (Qkx::V2, 15, -1.0, 0.1, 20, false),
        (Qkx::V2, 31, -0.5, 0.1, 15, false),
        (Qkx::V2, 3, -0.5, 0.1, 15, true),
        (Qkx::V3, 15, -0.9, 0.05, 36, false),
        (Qkx::V3, 31, -0.9, 0.05, 36, false),
    ];

    /// Two sets of 8 groups of 16 (hostile families, or plain normal groups every third case
    /// so that the sums take `level_f`'s path), importance weights or `x * x`, for Q6_K's
    /// nmax 32 and smaller ones: against the scalar search lane by lane and the AVX2 kernel.
    #[test]
    fn qx_avx512_equals_scalar_and_avx2() {
        let Some(t) = Avx512::detect() else {
            eprintln!("no AVX-512 on this CPU: skipped");
            return;
        };
        let mut s = SplitMix(29);
        for case in 0..600 {
            let weighted = case % 2 == 0;
            let nmax = [32, 4, 8, 16][case % 4];
            let mut sets = Vec::new();
            for _ in 0..2 {
                let mut g = groups::<16>(&mut s);
                if case % 3 == 1 {
                    g = std::array::from_fn(|_| std::array::from_fn(|_| s.gauss() * 0.02));
                }
                let w: [[f32; 16]; LANES] = std::array::from_fn(|k| {
                    std::array::from_fn(|i| {
                        if weighted {
                            s.unif() * 3.0 + 0.001
                        } else {
                            g[k][i] * g[k][i]
                        }
                    })
                });
                sets.push((g, w));
            }
            let xt: [[V; 16]; 2] = std::array::from_fn(|j| transpose::<16>(|k| sets[j].0[k]));
            let wt: [[V; 16]; 2] = std::array::from_fn(|j| transpose::<16>(|k| sets[j].1[k]));
            let mut l = [[[0i8; LANES]; 16]; 2];
            let sc =
                t.make_qx_quants_x16::<16, 2, 1>(nmax, xt.each_ref(), wt.each_ref(), l.each_mut());
            let mut la = [[[0i8; LANES]; 16]; 2];
            let sa = t.avx2().make_qx_quants_x8g::<16, 2>(
                nmax,
                xt.each_ref(),
                wt.each_ref(),
                la.each_mut(),
            );
            let bits = |v: &[V]| -> Vec<u32> { v.iter().flatten().map(|f| f.to_bits()).collect() };
            assert_eq!(bits(&sc), bits(&sa), "case {case}");
            assert_eq!(l, la, "case {case}: levels");
            for (j, (g, w)) in sets.iter().enumerate() {
                for k in 0..LANES {
                    let mut ls = [0i8; 16];
                    let d = make_qx_quants(nmax, &g[k], &mut ls, 1, weighted.then_some(&w[k][..]));
                    assert_eq!(
                        d.to_bits(),
                        sc[j][k].to_bits(),
                        "case {case} set {j} lane {k}"
                    );
                    let lv: [i8; 16] = std::array::from_fn(|i| l[j][i][k]);
                    assert_eq!(ls, lv, "case {case} set {j} lane {k}: levels");
                }
            }
        }
    }

    /// `level_f` equals the integer path (`nearest`, `clamp`, convert) on its whole domain's
    /// edges and on ties, for the level counts the searches use.
    #[test]
    fn level_f_equals_integer_levels() {
        if Avx512::detect().is_none() {
            return;
        }
        let mut ts: Vec<f32> = vec![0.0, -0.0, 0.5, 1.5, 2.5, -0.5, -1.5, 14.5, 15.5, 31.5, 30.5];
        for k in -40..80 {
            ts.extend([k as f32 + 0.5, k as f32 - 1e-3, k as f32 + 0.49999997]);
        }
        let b = LEVEL_F_BOUND;
        for v in [b, -b, 1e6, -1e6, 4194303.0, -4194303.0] {
            let v = f32::from_bits(v.to_bits() - 1);
            ts.extend([v, v - 0.5, v + 0.25]);
        }
        let mut s = SplitMix(5);
        ts.extend((0..2000).map(|_| s.gauss() * 20.0));
        // The qkx searches' [0, nmax] and the qx searches' [-nmax, nmax - 1].
        let ranges = [
            (0, 3),
            (0, 15),
            (0, 31),
            (0, 63),
            (-32, 31),
            (-4, 3),
            (-16, 15),
        ];
        for (lo, hi) in ranges {
            for c in ts.chunks(16) {
                let mut t = [0f32; 16];
                t[..c.len()].copy_from_slice(c);
                // SAFETY: `Avx512::detect` found the x86-64-v4 features.
                let (fast, slow) = unsafe { both(t, lo, hi) };
                for k in 0..16 {
                    if t[k].abs() < LEVEL_F_BOUND {
                        let (f, sl) = (fast[k].to_bits(), slow[k].to_bits());
                        assert_eq!(f, sl, "t {} in [{lo}, {hi}]", t[k]);
                    }
                }
            }
        }
    }

    #[target_feature(
        enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,avx,fma,bmi1,bmi2,lzcnt,popcnt"
    )]
    fn both(t: [f32; 16], lo: i32, hi: i32) -> ([f32; 16], [f32; 16]) {
        // SAFETY: `t` holds 16 floats.
        let v = unsafe { _mm512_loadu_ps(t.as_ptr()) };
        let fast = level_f(v, lo as f32, hi as f32);
        let (lo, hi) = (_mm512_set1_epi32(lo), _mm512_set1_epi32(hi));
        let slow = _mm512_cvtepi32_ps(clamp(nearest(v), lo, hi));
        let (mut a, mut b) = ([0f32; 16], [0f32; 16]);
        // SAFETY: `a` and `b` hold 16 floats.
        unsafe {
            _mm512_storeu_ps(a.as_mut_ptr(), fast);
            _mm512_storeu_ps(b.as_mut_ptr(), slow);
        }
        (a, b)
    }

    /// Four sets of 8 hostile groups of 32 (zeros, constants, huge and tiny values, NaN,
    /// infinities, ...) with importance-like or `av_x + |x|` weights, on one and two
    /// registers, against ggml's scalar search lane by lane and against the AVX2 kernel.
    #[test]
    fn qkx_avx512_equals_scalar_and_avx2() {
        let Some(t) = Avx512::detect() else {
            eprintln!("no AVX-512 on this CPU: skipped");
            return;
        };
        let mut s = SplitMix(17);
        for case in 0..400 {
            let weighted = case % 2 == 0;
            let mut sets = Vec::new();
            for _ in 0..4 {
                let mut g = groups::<32>(&mut s);
                // Every third case plain normal groups (no hostile lane in the register), so
                // that the steps take `level_f`'s path; the others mostly fall back.
                if case % 3 == 1 {
                    g = std::array::from_fn(|_| std::array::from_fn(|_| s.gauss() * 0.02));
                }
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
                sets.push((g, w));
            }
            let xt: [[V; 32]; 4] = std::array::from_fn(|j| transpose::<32>(|k| sets[j].0[k]));
            let wt: [[V; 32]; 4] = std::array::from_fn(|j| transpose::<32>(|k| sets[j].1[k]));
            let (which, nmax, rmin, rdelta, nstep, mad) = PARAMS[case % PARAMS.len()];
            let mut l4 = [[[0u8; LANES]; 32]; 4];
            let (s4, m4) = t.make_qkx_quants_x16::<32, 4, 2>(
                which,
                nmax,
                xt.each_ref(),
                wt.each_ref(),
                l4.each_mut(),
                rmin,
                rdelta,
                nstep,
                mad,
            );
            let mut l2 = [[[0u8; LANES]; 32]; 2];
            let (s2, m2) = t.make_qkx_quants_x16::<32, 2, 1>(
                which,
                nmax,
                [&xt[2], &xt[3]],
                [&wt[2], &wt[3]],
                l2.each_mut(),
                rmin,
                rdelta,
                nstep,
                mad,
            );
            let bits = |v: &[V]| -> Vec<u32> { v.iter().flatten().map(|f| f.to_bits()).collect() };
            assert_eq!(bits(&s2), bits(&s4[2..]), "case {case}");
            assert_eq!(bits(&m2), bits(&m4[2..]), "case {case}");
            assert_eq!(l2[..], l4[2..], "case {case}");
            let mut la = [[[0u8; LANES]; 32]; 2];
            let (sa, ma) = t.avx2().make_qkx_quants_x8g::<32, 2>(
                which,
                nmax,
                [&xt[0], &xt[1]],
                [&wt[0], &wt[1]],
                la.each_mut(),
                rmin,
                rdelta,
                nstep,
                mad,
            );
            assert_eq!(bits(&sa), bits(&s4[..2]), "case {case}");
            assert_eq!(bits(&ma), bits(&m4[..2]), "case {case}");
            assert_eq!(la[..], l4[..2], "case {case}");
            for (j, (g, w)) in sets.iter().enumerate() {
                for k in 0..LANES {
                    let (mut l, mut aux) = ([0u8; 32], [0u8; 32]);
                    let (sc, m) = make_qkx_quants(
                        which, nmax, &g[k], &w[k], &mut l, &mut aux, rmin, rdelta, nstep, mad,
                    );
                    assert_eq!(
                        (sc.to_bits(), m.to_bits()),
                        (s4[j][k].to_bits(), m4[j][k].to_bits()),
                        "case {case} set {j} lane {k}"
                    );
                    let lv: [u8; 32] = std::array::from_fn(|i| l4[j][i][k]);
                    assert_eq!(l, lv, "case {case} set {j} lane {k}: levels");
                }
            }
        }
    }
}

v4_fn! {
    /// [`super::lanes_avx2`]'s `qx` (ggml's `make_qx_quants`, `rmse_type` 1, with weights)
    /// on 16 lanes a register: the first rounding at `-nmax / max`, then 18 nearby scales,
    /// keeping the one that raises `sumlx^2 / suml2`. The levels of a scale are rounded in
    /// floats (`level_f`) when every `|iscale * x|` is in range: `|x|` is largest at `max`.
    fn qx<const N: usize, const G: usize, const Z: usize>(
        nmax: i32,
        xt: &[&[V; N]; G],
        wt: &[&[V; N]; G],
        lt: &mut [&mut [[i8; LANES]; N]; G],
    ) -> [V; G] {
        let x: [R<Z>; N] = std::array::from_fn(|i| map(|z| load2(&xt[2 * z][i], &xt[2 * z + 1][i])));
        let w: [R<Z>; N] = std::array::from_fn(|i| map(|z| load2(&wt[2 * z][i], &wt[2 * z + 1][i])));
        // `sumlx += w * x * l` is `(w * x) * l`: the same `w * x` every pass.
        let wx: [R<Z>; N] = std::array::from_fn(|i| map(|z| _mm512_mul_ps(w[i][z], x[i][z])));
        let zero = _mm512_setzero_ps();
        let (lo, hi) = (_mm512_set1_epi32(-nmax), _mm512_set1_epi32(nmax - 1));
        // The value of largest magnitude (the first on ties: `if (ax > amax)`), and the lanes
        // whose largest magnitude is below GROUP_MAX_EPS.
        let mut amax = [zero; Z];
        let mut max = [zero; Z];
        for xi in &x {
            for z in 0..Z {
                let ax = abs(xi[z]);
                let gt = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(ax, amax[z]);
                amax[z] = select(gt, ax, amax[z]);
                max[z] = select(gt, xi[z], max[z]);
            }
        }
        let eps = _mm512_set1_ps(super::search::GROUP_MAX_EPS);
        let is_zero: M<Z> = mask(|z| _mm512_cmp_ps_mask::<_CMP_LT_OQ>(amax[z], eps));
        let finite = finite(&x);
        let nmaxf = nmax as f32;
        let sums = |iscale: &R<Z>| -> (R<Z>, R<Z>) {
            let t_max = map(|z| _mm512_mul_ps(iscale[z], max[z]));
            let fast = in_level_f_range(&finite, &[t_max]);
            let mut sumlx = [zero; Z];
            let mut suml2 = [zero; Z];
            for i in 0..N {
                for z in 0..Z {
                    let t = _mm512_mul_ps(iscale[z], x[i][z]);
                    let lf = if fast {
                        level_f(t, -nmaxf, nmaxf - 1.0)
                    } else {
                        _mm512_cvtepi32_ps(clamp(nearest(t), lo, hi))
                    };
                    sumlx[z] = _mm512_add_ps(sumlx[z], _mm512_mul_ps(wx[i][z], lf));
                    suml2[z] = _mm512_add_ps(suml2[z], _mm512_mul_ps(_mm512_mul_ps(w[i][z], lf), lf));
                }
            }
            (sumlx, suml2)
        };
        let mut lvl_iscale: R<Z> = map(|z| _mm512_div_ps(_mm512_set1_ps(-nmaxf), max[z]));
        let (sumlx, suml2) = sums(&lvl_iscale);
        // `suml2 != 0 ? sumlx / suml2 : 0` (true on NaN, as C's `!=`).
        let mut scale: R<Z> = map(|z| {
            let nz = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(suml2[z], zero);
            select(nz, _mm512_div_ps(sumlx[z], suml2[z]), zero)
        });
        let mut best: R<Z> = map(|z| _mm512_mul_ps(scale[z], sumlx[z]));
        for is in -9i32..=9 {
            if is == 0 {
                continue;
            }
            let num = _mm512_set1_ps(-(nmaxf + 0.1 * is as f32));
            let iscale: R<Z> = map(|z| _mm512_div_ps(num, max[z]));
            let (sumlx, suml2) = sums(&iscale);
            for z in 0..Z {
                let pos = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(suml2[z], zero);
                let take = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(
                    pos,
                    _mm512_mul_ps(sumlx[z], sumlx[z]),
                    _mm512_mul_ps(best[z], suml2[z]),
                );
                if take != 0 {
                    let s = _mm512_div_ps(sumlx[z], suml2[z]);
                    scale[z] = select(take, s, scale[z]);
                    best[z] = select(take, _mm512_mul_ps(s, sumlx[z]), best[z]);
                    lvl_iscale[z] = select(take, iscale[z], lvl_iscale[z]);
                }
            }
        }
        let off = _mm512_set1_epi32(nmax);
        for z in 0..Z {
            for i in 0..N {
                let l = clamp(nearest(_mm512_mul_ps(lvl_iscale[z], x[i][z])), lo, hi);
                // All-zero lanes get level 0; the levels fit a byte (0..2 * nmax).
                let l = _mm512_maskz_mov_epi32(!is_zero[z], _mm512_add_epi32(l, off));
                let b = _mm512_cvtepi32_epi8(l);
                let mut o = [0i8; 2 * LANES];
                // SAFETY: `o` has room for the 16 bytes of `b`.
                unsafe { _mm_storeu_si128(o.as_mut_ptr() as *mut __m128i, b) };
                lt[2 * z][i] = std::array::from_fn(|k| o[k]);
                lt[2 * z + 1][i] = std::array::from_fn(|k| o[LANES + k]);
            }
        }
        let mut out = [[0f32; LANES]; G];
        for z in 0..Z {
            (out[2 * z], out[2 * z + 1]) = store2(_mm512_maskz_mov_ps(!is_zero[z], scale[z]));
        }
        out
    }
}
