//! Eight independent groups at once: the scale searches of [`super::search`]
//! (`make_qkx2_quants` / `make_qkx3_quants`, `make_qx_quants`) run on 8 groups
//! side by side, one group per lane of `[f32; 8]` arrays. Each lane performs
//! exactly the scalar algorithm, its sums in the same order, so the results are
//! bit-identical to the scalar reference (compared in tests); the lanes only let
//! LLVM use SIMD registers (8 lanes = one AVX register, two SSE registers).
//!
//! Data are transposed: `xt[i][k]` is element `i` of group `k`.

use super::search::{Qkx, GROUP_MAX_EPS};

/// Groups searched at once: one f32 per group in a vector of 8 (an AVX2 register).
pub const LANES: usize = 8;
/// One value of each of the [`LANES`] groups.
pub type V = [f32; LANES];

/// How a quantizer runs its sub-block searches; every choice gives the same bytes.
#[derive(Clone, Copy, Debug)]
pub enum Kernel {
    /// One group after another, in ggml's loop: the reference.
    Scalar,
    /// 8 groups side by side in portable code (this file).
    Lanes,
    /// 8 groups side by side with AVX2 intrinsics ([`super::lanes_avx2`]).
    #[cfg(target_arch = "x86_64")]
    Avx2(super::lanes_avx2::Avx2),
    /// 16 groups a register with AVX-512 where a search has two sets of 8 to run
    /// ([`super::lanes_avx512`]), the AVX2 kernel otherwise.
    #[cfg(target_arch = "x86_64")]
    Avx512(super::lanes_avx512::Avx512),
}

impl Kernel {
    /// [`Kernel::Lanes`] or [`Kernel::Scalar`].
    #[inline]
    pub fn from_lanes(lanes: bool) -> Self {
        if lanes {
            Kernel::Lanes
        } else {
            Kernel::Scalar
        }
    }

    /// [`Kernel::best`] with `lanes`, [`Kernel::Scalar`] without.
    #[inline]
    pub fn fast(lanes: bool) -> Self {
        if lanes {
            Kernel::best()
        } else {
            Kernel::Scalar
        }
    }

    /// The fastest kernel this CPU runs.
    #[inline]
    pub fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = super::lanes_avx512::Avx512::detect() {
            return Kernel::Avx512(t);
        }
        Kernel::best_avx2()
    }

    /// [`Kernel::best`] without AVX-512: the AVX2 kernel where the CPU has AVX2.
    #[inline]
    pub fn best_avx2() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = super::lanes_avx2::Avx2::detect() {
            return Kernel::Avx2(t);
        }
        Kernel::Lanes
    }

    /// Whether the K-quant rows should hand the searches four super-blocks at once (the
    /// AVX-512 kernel holds two a register and interleaves two registers).
    #[inline]
    pub fn quads(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let Kernel::Avx512(_) = self {
            return true;
        }
        false
    }

    /// Whether groups run side by side (through [`Kernel::qkx_x8`] / [`Kernel::qx_x8`]).
    #[inline]
    pub fn lanes(self) -> bool {
        !matches!(self, Kernel::Scalar)
    }

    /// [`make_qkx_quants_x8`] on this kernel, for `G` sets of 8 groups (one after the other
    /// on the portable lanes; interleaved by the AVX2 kernel).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn qkx_x8<const N: usize, const G: usize>(
        self,
        which: Qkx,
        nmax: i32,
        xt: [&[V; N]; G],
        wt: [&[V; N]; G],
        lt: [&mut [[u8; LANES]; N]; G],
        rmin: f32,
        rdelta: f32,
        nstep: i32,
        use_mad: bool,
    ) -> ([V; G], [V; G]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(t) if G == 2 => t.make_qkx_quants_x16::<N, G, 1>(
                which, nmax, xt, wt, lt, rmin, rdelta, nstep, use_mad,
            ),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(t) if G == 4 => t.make_qkx_quants_x16::<N, G, 2>(
                which, nmax, xt, wt, lt, rmin, rdelta, nstep, use_mad,
            ),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(t) => t
                .avx2()
                .make_qkx_quants_x8g(which, nmax, xt, wt, lt, rmin, rdelta, nstep, use_mad),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(t) => {
                t.make_qkx_quants_x8g(which, nmax, xt, wt, lt, rmin, rdelta, nstep, use_mad)
            }
            _ => {
                let mut out = ([[0f32; LANES]; G], [[0f32; LANES]; G]);
                for (g, lt) in lt.into_iter().enumerate() {
                    (out.0[g], out.1[g]) = make_qkx_quants_x8(
                        which, nmax, xt[g], wt[g], lt, rmin, rdelta, nstep, use_mad,
                    );
                }
                out
            }
        }
    }

    /// [`make_q3_quants_x8`] on this kernel, for `G` sets of 8 groups.
    #[inline(always)]
    pub fn q3_x8<const N: usize, const G: usize>(
        self,
        nmax: i32,
        xt: [&[V; N]; G],
        lt: [&mut [[i8; LANES]; N]; G],
    ) -> [V; G] {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(t) => t.make_q3_quants_x8g(nmax, xt, lt),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(t) => t.avx2().make_q3_quants_x8g(nmax, xt, lt),
            _ => {
                let mut out = [[0f32; LANES]; G];
                for (g, lt) in lt.into_iter().enumerate() {
                    out[g] = make_q3_quants_x8(nmax, xt[g], lt);
                }
                out
            }
        }
    }

    /// [`make_qx_quants_x8`] on this kernel, for `G` sets of 8 groups.
    #[inline(always)]
    pub fn qx_x8<const N: usize, const G: usize>(
        self,
        nmax: i32,
        xt: [&[V; N]; G],
        wt: [&[V; N]; G],
        lt: [&mut [[i8; LANES]; N]; G],
    ) -> [V; G] {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(t) => t.make_qx_quants_x8g(nmax, xt, wt, lt),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(t) if G == 2 => t.make_qx_quants_x16::<N, G, 1>(nmax, xt, wt, lt),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(t) => t.avx2().make_qx_quants_x8g(nmax, xt, wt, lt),
            _ => {
                let mut out = [[0f32; LANES]; G];
                for (g, lt) in lt.into_iter().enumerate() {
                    out[g] = make_qx_quants_x8(nmax, xt[g], wt[g], lt);
                }
                out
            }
        }
    }
}

#[inline(always)]
fn nearest_int(f: f32) -> i32 {
    super::search::nearest_int(f)
}

#[inline(always)]
fn clamp(l: i32, lo: i32, hi: i32) -> i32 {
    super::search::clamp_i(l, lo, hi)
}

/// Results of [`make_qkx_quants_x8`] per lane: (scale, the_min) and levels `lt[i][k]`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn make_qkx_quants_x8<const N: usize>(
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
    let mut min = xt[0];
    let mut max = xt[0];
    let mut sum_w = wt[0];
    let mut sum_x = [0f32; LANES];
    for k in 0..LANES {
        sum_x[k] = sum_w[k] * xt[0][k];
    }
    for i in 1..N {
        for k in 0..LANES {
            let x = xt[i][k];
            if x < min[k] {
                min[k] = x;
            }
            if x > max[k] {
                max[k] = x;
            }
            let w = wt[i][k];
            sum_w[k] += w;
            sum_x[k] += w * x;
        }
    }
    let mut flat = [false; LANES];
    for k in 0..LANES {
        if min[k] > 0.0 {
            min[k] = 0.0;
        }
        flat[k] = match which {
            Qkx::V2 => max[k] == min[k],
            Qkx::V3 => max[k] <= min[k],
        };
    }
    let nmaxf = nmax as f32;
    let mut scale = [0f32; LANES];
    let mut iscale = [0f32; LANES];
    for k in 0..LANES {
        iscale[k] = nmaxf / (max[k] - min[k]);
        scale[k] = 1.0 / iscale[k];
    }
    let mut best_error = [0f32; LANES];
    for i in 0..N {
        for k in 0..LANES {
            let l = clamp(nearest_int(iscale[k] * (xt[i][k] - min[k])), 0, nmax);
            lt[i][k] = l as u8;
            let mut diff = scale[k] * l as f32 + min[k] - xt[i][k];
            diff = if use_mad { diff.abs() } else { diff * diff };
            best_error[k] += wt[i][k] * diff;
        }
    }
    let mut laux = [[0u8; LANES]; N];
    for is in 0..=nstep {
        let num = rmin + rdelta * is as f32 + nmaxf;
        for k in 0..LANES {
            iscale[k] = num / (max[k] - min[k]);
        }
        let mut sum_l = [0f32; LANES];
        let mut sum_l2 = [0f32; LANES];
        let mut sum_xl = [0f32; LANES];
        for i in 0..N {
            for k in 0..LANES {
                let l = clamp(nearest_int(iscale[k] * (xt[i][k] - min[k])), 0, nmax);
                laux[i][k] = l as u8;
                let w = wt[i][k];
                let lf = l as f32;
                sum_l[k] += w * lf;
                sum_l2[k] += w * lf * lf;
                sum_xl[k] += w * lf * xt[i][k];
            }
        }
        let mut this_scale = [0f32; LANES];
        let mut this_min = [0f32; LANES];
        let mut ok = [false; LANES];
        for k in 0..LANES {
            let d = sum_w[k] * sum_l2[k] - sum_l[k] * sum_l[k];
            ok[k] = d > 0.0 && !flat[k];
            this_scale[k] = (sum_w[k] * sum_xl[k] - sum_x[k] * sum_l[k]) / d;
            this_min[k] = (sum_l2[k] * sum_x[k] - sum_l[k] * sum_xl[k]) / d;
            if this_min[k] > 0.0 {
                this_min[k] = 0.0;
                this_scale[k] = sum_xl[k] / sum_l2[k];
            }
        }
        if !ok.iter().any(|&o| o) {
            continue;
        }
        let mut cur_error = [0f32; LANES];
        for i in 0..N {
            for k in 0..LANES {
                let mut diff = this_scale[k] * laux[i][k] as f32 + this_min[k] - xt[i][k];
                diff = if use_mad { diff.abs() } else { diff * diff };
                cur_error[k] += wt[i][k] * diff;
            }
        }
        for k in 0..LANES {
            if ok[k] && cur_error[k] < best_error[k] {
                for i in 0..N {
                    lt[i][k] = laux[i][k];
                }
                best_error[k] = cur_error[k];
                scale[k] = this_scale[k];
                min[k] = this_min[k];
            }
        }
    }
    let mut the_min = [0f32; LANES];
    for k in 0..LANES {
        if flat[k] {
            scale[k] = 0.0;
            for row in lt.iter_mut() {
                row[k] = 0;
            }
        }
        the_min[k] = -min[k];
    }
    (scale, the_min)
}

/// [`super::search::make_qx_quants`] with `rmse_type` 1 on 8 lanes; `wt` are the weights
/// (`x*x` when the caller has no importance weights). Levels go to `lt[i][k]`.
#[inline(always)]
pub fn make_qx_quants_x8<const N: usize>(
    nmax: i32,
    xt: &[V; N],
    wt: &[V; N],
    lt: &mut [[i8; LANES]; N],
) -> V {
    let mut amax = [0f32; LANES];
    let mut max = [0f32; LANES];
    for row in xt {
        for k in 0..LANES {
            let ax = row[k].abs();
            if ax > amax[k] {
                amax[k] = ax;
                max[k] = row[k];
            }
        }
    }
    let mut zero = [false; LANES];
    for k in 0..LANES {
        zero[k] = amax[k] < GROUP_MAX_EPS;
    }
    let nmaxf = nmax as f32;
    let mut iscale = [0f32; LANES];
    for k in 0..LANES {
        iscale[k] = -nmaxf / max[k];
    }
    let mut sumlx = [0f32; LANES];
    let mut suml2 = [0f32; LANES];
    for i in 0..N {
        for k in 0..LANES {
            let l = clamp(nearest_int(iscale[k] * xt[i][k]), -nmax, nmax - 1);
            lt[i][k] = (l + nmax) as i8;
            let w = wt[i][k];
            let lf = l as f32;
            sumlx[k] += w * xt[i][k] * lf;
            suml2[k] += w * lf * lf;
        }
    }
    let mut scale = [0f32; LANES];
    let mut best = [0f32; LANES];
    for k in 0..LANES {
        scale[k] = if suml2[k] != 0.0 {
            sumlx[k] / suml2[k]
        } else {
            0.0
        };
        best[k] = scale[k] * sumlx[k];
    }
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        let num = nmaxf + 0.1 * is as f32;
        for k in 0..LANES {
            iscale[k] = -num / max[k];
        }
        let mut cand = [[0i8; LANES]; N];
        sumlx = [0.0; LANES];
        suml2 = [0.0; LANES];
        for i in 0..N {
            for k in 0..LANES {
                let l = clamp(nearest_int(iscale[k] * xt[i][k]), -nmax, nmax - 1);
                cand[i][k] = (l + nmax) as i8;
                let w = wt[i][k];
                let lf = l as f32;
                sumlx[k] += w * xt[i][k] * lf;
                suml2[k] += w * lf * lf;
            }
        }
        for k in 0..LANES {
            if suml2[k] > 0.0 && sumlx[k] * sumlx[k] > best[k] * suml2[k] {
                for i in 0..N {
                    lt[i][k] = cand[i][k];
                }
                scale[k] = sumlx[k] / suml2[k];
                best[k] = scale[k] * sumlx[k];
            }
        }
    }
    for k in 0..LANES {
        if zero[k] {
            scale[k] = 0.0;
            for row in lt.iter_mut() {
                row[k] = 0;
            }
        }
    }
    scale
}

/// [`super::search::make_q3_quants`] with `do_rmse` on 8 lanes: the scale of each lane, its
/// levels (offset by `nmax`, or 0 for an all-zero group, as the scalar code) in `lt[i][k]`.
///
/// The scalar search stops a group after a pass that changed nothing; here every lane runs
/// until no lane changes. That is the same result: a pass is a function of the levels and the
/// two sums alone, and a pass that changes nothing leaves them as they were, so every later
/// pass changes nothing either.
#[inline(always)]
pub fn make_q3_quants_x8<const N: usize>(nmax: i32, xt: &[V; N], lt: &mut [[i8; LANES]; N]) -> V {
    let mut amax = [0f32; LANES];
    let mut max = [0f32; LANES];
    for row in xt {
        for k in 0..LANES {
            let ax = row[k].abs();
            if ax > amax[k] {
                amax[k] = ax;
                max[k] = row[k];
            }
        }
    }
    let nmaxf = nmax as f32;
    let mut iscale = [0f32; LANES];
    for k in 0..LANES {
        iscale[k] = -nmaxf / max[k];
    }
    let mut l = [[0i32; LANES]; N];
    let mut sumlx = [0f32; LANES];
    let mut suml2 = [0f32; LANES];
    for i in 0..N {
        for k in 0..LANES {
            let x = xt[i][k];
            let li = clamp(nearest_int(iscale[k] * x), -nmax, nmax - 1);
            l[i][k] = li;
            let w = x * x;
            let lf = li as f32;
            sumlx[k] += w * x * lf;
            suml2[k] += w * lf * lf;
        }
    }
    for _ in 0..5 {
        let mut changed = [false; LANES];
        for i in 0..N {
            // Every lane computes the candidate (the scalar code computes it only when
            // `slx > 0`; the operations have no side effects, so that changes nothing),
            // then keeps it or not with a select, which LLVM turns into vector blends.
            let mut cand = [0i32; LANES];
            let mut slx_new = [0f32; LANES];
            let mut sl2_new = [0f32; LANES];
            let mut accept = [false; LANES];
            for k in 0..LANES {
                let x = xt[i][k];
                let w = x * x;
                let li = l[i][k] as f32;
                let slx = sumlx[k] - w * x * li;
                let sl2 = suml2[k] - w * li * li;
                let new_l = clamp(nearest_int(x * sl2 / slx), -nmax, nmax - 1);
                let nl = new_l as f32;
                cand[k] = new_l;
                slx_new[k] = slx + w * x * nl;
                sl2_new[k] = sl2 + w * nl * nl;
                accept[k] = (slx > 0.0)
                    & (new_l != l[i][k])
                    & (sl2_new[k] > 0.0)
                    & (slx_new[k] * slx_new[k] * suml2[k] > sumlx[k] * sumlx[k] * sl2_new[k]);
            }
            for k in 0..LANES {
                l[i][k] = if accept[k] { cand[k] } else { l[i][k] };
                sumlx[k] = if accept[k] { slx_new[k] } else { sumlx[k] };
                suml2[k] = if accept[k] { sl2_new[k] } else { suml2[k] };
                changed[k] |= accept[k];
            }
        }
        if !changed.iter().any(|&c| c) {
            break;
        }
    }
    let mut scale = [0f32; LANES];
    for k in 0..LANES {
        let zero = amax[k] < GROUP_MAX_EPS;
        for i in 0..N {
            lt[i][k] = if zero { 0 } else { (l[i][k] + nmax) as i8 };
        }
        scale[k] = if zero {
            0.0
        } else if suml2[k] > 0.0 {
            sumlx[k] / suml2[k]
        } else {
            0.0
        };
    }
    scale
}

/// [`super::search::make_qp_quants`] on 8 lanes (the K-quants' quantization of their
/// sub-block scales and mins): `wt` are the weights, levels go to `lt[i][k]`, the scale of
/// each lane is returned. As in [`make_q3_quants_x8`], every lane runs until no lane changes
/// (a pass that changes nothing changes nothing after it either), and the lanes that ggml
/// returns early from (largest value below `GROUP_MAX_EPS`) are set to its result at the end.
/// Levels are kept as the bytes ggml stores (`(uint8_t)l`, read back as such), the sums use the
/// untruncated `l` where ggml does.
#[inline(always)]
pub fn make_qp_quants_x8<const N: usize>(
    nmax: i32,
    xt: &[V; N],
    wt: &[V; N],
    lt: &mut [[u8; LANES]; N],
) -> V {
    use super::search::fmax_c;
    let mut max = [0f32; LANES];
    for row in xt {
        for k in 0..LANES {
            max[k] = fmax_c(max[k], row[k]);
        }
    }
    let nmaxf = nmax as f32;
    let mut iscale = [0f32; LANES];
    let mut best_mse = [0f32; LANES];
    for k in 0..LANES {
        iscale[k] = nmaxf / max[k];
        let scale = 1.0 / iscale[k];
        for i in 0..N {
            let l = nearest_int(iscale[k] * xt[i][k]) as u8;
            let diff = xt[i][k] - scale * l as f32;
            best_mse[k] += wt[i][k] * diff * diff;
        }
    }
    for is in -4i32..=4 {
        if is == 0 {
            continue;
        }
        let num = 0.1 * is as f32 + nmaxf;
        for k in 0..LANES {
            let iscale_is = num / max[k];
            let scale_is = 1.0 / iscale_is;
            let mut mse = 0.0f32;
            for i in 0..N {
                let l = nearest_int(iscale_is * xt[i][k]).min(nmax);
                let diff = xt[i][k] - scale_is * l as f32;
                mse += wt[i][k] * diff * diff;
            }
            if mse < best_mse[k] {
                best_mse[k] = mse;
                iscale[k] = iscale_is;
            }
        }
    }
    let mut sumlx = [0f32; LANES];
    let mut suml2 = [0f32; LANES];
    for i in 0..N {
        for k in 0..LANES {
            let l = nearest_int(iscale[k] * xt[i][k]).min(nmax);
            lt[i][k] = l as u8;
            let w = wt[i][k];
            let lf = l as f32;
            sumlx[k] += w * xt[i][k] * lf;
            suml2[k] += w * lf * lf;
        }
    }
    for _ in 0..5 {
        let mut changed = false;
        for i in 0..N {
            for k in 0..LANES {
                let (x, w) = (xt[i][k], wt[i][k]);
                let li = lt[i][k] as f32;
                let slx = sumlx[k] - w * x * li;
                let sl2 = suml2[k] - w * li * li;
                let new_l = nearest_int(x * sl2 / slx).min(nmax);
                let nl = new_l as f32;
                let slx_n = slx + w * x * nl;
                let sl2_n = sl2 + w * nl * nl;
                let accept = (slx > 0.0)
                    & (sl2 > 0.0)
                    & (new_l != lt[i][k] as i32)
                    & (slx_n * slx_n * suml2[k] > sumlx[k] * sumlx[k] * sl2_n);
                if accept {
                    lt[i][k] = new_l as u8;
                    sumlx[k] = slx_n;
                    suml2[k] = sl2_n;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut scale = [0f32; LANES];
    for k in 0..LANES {
        if max[k] < GROUP_MAX_EPS {
            for row in lt.iter_mut() {
                row[k] = 0;
            }
            continue;
        }
        scale[k] = if suml2[k] > 0.0 {
            sumlx[k] / suml2[k]
        } else {
            0.0
        };
    }
    scale
}

/// Transposes 8 groups of `N` values (group `k` at `src(k)`) into lanes.
#[inline(always)]
pub fn transpose<const N: usize>(src: impl Fn(usize) -> [f32; N]) -> [V; N] {
    let mut t = [[0f32; LANES]; N];
    for k in 0..LANES {
        let g = src(k);
        for i in 0..N {
            t[i][k] = g[i];
        }
    }
    t
}

/// Writes lane levels back in group order: `l[N*k + i] = lt[i][k]`.
#[inline(always)]
pub fn untranspose<T: Copy, const N: usize>(lt: &[[T; LANES]; N], l: &mut [T]) {
    for (i, row) in lt.iter().enumerate() {
        for (k, &v) in row.iter().enumerate() {
            l[N * k + i] = v;
        }
    }
}

/// The per-block search of a legacy type's importance-weighted quantizer
/// (`quantize_row_q4_0_impl` ... `quantize_row_q5_1_impl`).
#[derive(Clone, Copy)]
pub enum Search32 {
    /// `make_qx_quants(32, nmax, x, L, 1, weight)` (Q4_0, Q5_0).
    Qx(i32),
    /// `make_qkx3_quants(32, nmax, x, weight, L, &min, Laux, -0.9, 0.05, 36, false)` (Q4_1, Q5_1).
    Qkx3(i32),
}

/// [`legacy_imatrix_blocks`] on blocks `ib..ib + real` (`real ≤ G · LANES`)
/// side by side, `G` sets of [`LANES`] (the missing lanes searching copies
/// of the row's last block).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn legacy_lanes<const G: usize>(
    kernel: Kernel,
    x: &[f32],
    qw: &[f32],
    sigma2: f32,
    search: Search32,
    ib: usize,
    real: usize,
    emit: &mut impl FnMut(usize, f32, f32, &[u8; 32]),
) {
    use super::search::imatrix_weights;
    let block = |k: usize| 32 * (ib + k.min(real - 1));
    let xt: [[V; 32]; G] = std::array::from_fn(|g| {
        transpose::<32>(|k| {
            x[block(g * LANES + k)..block(g * LANES + k) + 32]
                .try_into()
                .unwrap()
        })
    });
    let wt: [[V; 32]; G] = std::array::from_fn(|g| {
        transpose::<32>(|k| {
            let mut w = [0f32; 32];
            let o = block(g * LANES + k);
            imatrix_weights(&qw[o..o + 32], &x[o..o + 32], sigma2, &mut w);
            w
        })
    });
    let (xr, wr) = (xt.each_ref(), wt.each_ref());
    let (scale, the_min, levels): ([V; G], [V; G], [[[u8; LANES]; 32]; G]) = match search {
        Search32::Qx(nmax) => {
            let mut lt = [[[0i8; LANES]; 32]; G];
            let d = kernel.qx_x8(nmax, xr, wr, lt.each_mut());
            (
                d,
                [[0.0; LANES]; G],
                lt.map(|s| s.map(|r| r.map(|v| v as u8))),
            )
        }
        Search32::Qkx3(nmax) => {
            let mut lt = [[[0u8; LANES]; 32]; G];
            let (d, m) = kernel.qkx_x8(Qkx::V3, nmax, xr, wr, lt.each_mut(), -0.9, 0.05, 36, false);
            (d, m, lt)
        }
    };
    for k in 0..real {
        let (g, lane) = (k / LANES, k % LANES);
        let l: [u8; 32] = std::array::from_fn(|i| levels[g][i][lane]);
        emit(ib + k, scale[g][lane], the_min[g][lane], &l);
    }
}

/// Runs `search` on every block of 32 of the row `x` with ggml's weights
/// `qw[j] * sqrt(sigma2 + x[j]^2)` (`sigma2` = mean square of the row) and calls
/// `emit(block, scale, the_min, levels)` for each block in order. With `lanes`, up to
/// 16 blocks run side by side on [`Kernel::best`] (same results); without, one by one,
/// as ggml does.
pub fn legacy_imatrix_blocks(
    x: &[f32],
    qw: &[f32],
    search: Search32,
    lanes: bool,
    mut emit: impl FnMut(usize, f32, f32, &[u8; 32]),
) {
    use super::search::{imatrix_weights, make_qkx_quants, make_qx_quants, sum_sq};
    let sigma2 = sum_sq(x) / x.len() as f32;
    let nb = x.len() / 32;
    let mut ib = 0;
    let kernel = Kernel::fast(lanes);
    // Two sets of LANES blocks a call (one 16-lane register on AVX-512), one
    // set when no more than LANES are left. A last set of fewer than LANES
    // blocks (a row of 384 has 12) also runs on the lanes, the missing ones
    // filled with copies of the row's last block (each lane searches its own
    // block alone, so the others' results do not change; the copies' are not
    // emitted): the search one block at a time took most of a polyglot-25m
    // plan's scoring.
    if kernel.lanes() && nb >= 2 {
        while ib < nb {
            let real = (nb - ib).min(2 * LANES);
            if real > LANES {
                legacy_lanes::<2>(kernel, x, qw, sigma2, search, ib, real, &mut emit);
            } else {
                legacy_lanes::<1>(kernel, x, qw, sigma2, search, ib, real, &mut emit);
            }
            ib += real;
        }
    }
    let mut w = [0f32; 32];
    for b in ib..nb {
        let xs = &x[32 * b..32 * b + 32];
        imatrix_weights(&qw[32 * b..32 * b + 32], xs, sigma2, &mut w);
        match search {
            Search32::Qx(nmax) => {
                let mut l = [0i8; 32];
                let d = make_qx_quants(nmax, xs, &mut l, 1, Some(&w));
                emit(b, d, 0.0, &l.map(|v| v as u8));
            }
            Search32::Qkx3(nmax) => {
                let mut l = [0u8; 32];
                let mut laux = [0u8; 32];
                let (d, m) = make_qkx_quants(
                    Qkx::V3,
                    nmax,
                    xs,
                    &w,
                    &mut l,
                    &mut laux,
                    -0.9,
                    0.05,
                    36,
                    false,
                );
                emit(b, d, m, &l);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::golden::SplitMix;
    use super::super::search::make_qp_quants;
    use super::*;

    /// 8 groups of 8 sub-block scales (or mins) with their weights, drawn from hostile
    /// families (normal magnitudes, zeros, below GROUP_MAX_EPS, one huge value, negative
    /// values, NaN, infinity, ties, zero weights), against ggml's scalar search lane by lane.
    #[test]
    fn qp_lanes_equal_scalar() {
        let mut s = SplitMix(23);
        let mut refined = 0;
        for case in 0..3000 {
            let g: [[f32; 8]; LANES] = std::array::from_fn(|_| {
                let family = (s.next_u64() % 10) as usize;
                let spot = (s.next_u64() % 8) as usize;
                std::array::from_fn(|i| {
                    let u = s.unif() * 0.05;
                    match family {
                        0 => 0.0,
                        1 => u * 1e-16,
                        2 if i == spot => 1e30,
                        3 if i == spot => -u,
                        4 if i == spot => f32::NAN,
                        5 if i == spot => f32::INFINITY,
                        6 => (u * 400.0).round() / 400.0,
                        _ => u,
                    }
                })
            });
            let w: [[f32; 8]; LANES] = std::array::from_fn(|_| {
                let zero_w = s.next_u64().is_multiple_of(7);
                std::array::from_fn(|_| if zero_w { 0.0 } else { s.unif() * 40.0 })
            });
            let xt = transpose::<8>(|k| g[k]);
            let wt = transpose::<8>(|k| w[k]);
            let mut lt = [[0u8; LANES]; 8];
            let sc = make_qp_quants_x8(63, &xt, &wt, &mut lt);
            for k in 0..LANES {
                let mut l = [0u8; 8];
                let d = make_qp_quants(63, &g[k], &mut l, &w[k]);
                assert_eq!(d.to_bits(), sc[k].to_bits(), "case {case} lane {k}");
                assert_eq!(l, std::array::from_fn(|i| lt[i][k]), "case {case} lane {k}");
                // Groups whose levels differ from the plain rounding of the best scale:
                // the refinement passes ran and moved something.
                let max = g[k].iter().fold(0f32, |a, &v| if a > v { a } else { v });
                let plain: [u8; 8] = std::array::from_fn(|i| {
                    super::super::search::nearest_int(63.0 / max * g[k][i]).min(63) as u8
                });
                refined += usize::from(max.is_finite() && max > 1e-15 && plain != l);
            }
        }
        assert!(refined > 500, "{refined}");
    }
}
