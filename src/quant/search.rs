//! The scalar building blocks every ggml quantizer shares, ported from
//! `ggml/src/ggml-quants.c`: `nearest_int`, C's float-to-int conversion as
//! compiled for x86-64, ggml's `MAX`/`MIN` macros on floats, and the scale
//! searches `make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`,
//! `make_qkx3_quants` and `make_qp_quants`.
//!
//! The float expressions keep ggml's order of operations exactly (Rust never
//! fuses a multiply-add, and ggml-base is built without FMA), so every result
//! is bit-identical, including on NaN and out-of-range inputs.

/// ggml's `GROUP_MAX_EPS`: groups whose largest magnitude is below it are "all zero".
pub const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: adds 1.5 * 2^23 and reads the mantissa, so it rounds half to
/// even; reproduces ggml's (unchecked) result for every input, NaN included.
#[inline(always)]
pub fn nearest_int(f: f32) -> i32 {
    let v = f + 12_582_912.0;
    (v.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// C's `(int)f` as gcc compiles it for x86-64 (`cvttss2si`): truncates toward zero;
/// NaN and values outside the i32 range give `i32::MIN`. (C leaves the
/// out-of-range case undefined, so ggml's bytes for such inputs depend on the
/// machine; this follows the machine we run on, as ggml built there does.)
#[cfg(not(target_arch = "aarch64"))]
#[inline(always)]
pub fn c_int(f: f32) -> i32 {
    if (-2_147_483_648.0..2_147_483_648.0).contains(&f) {
        f as i32
    } else {
        i32::MIN
    }
}

/// C's `(int)f` as gcc compiles it for aarch64 (`fcvtzs`): truncates toward zero,
/// saturates out-of-range values and gives 0 for NaN, which is exactly Rust's `as`.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
pub fn c_int(f: f32) -> i32 {
    f as i32
}

/// `(int)lroundf(f)` as glibc computes it on x86-64: half away from zero; NaN and values
/// outside the `long` range give `LONG_MIN` (glibc falls back to C's `(long)f`, i.e.
/// `cvttsd2si`), whose low 32 bits are 0. The `int` is the low half of the `long`.
#[cfg(not(target_arch = "aarch64"))]
#[inline(always)]
pub fn c_lround_int(f: f32) -> i32 {
    const TWO_63: f32 = 9_223_372_036_854_775_808.0;
    let l = if (-TWO_63..TWO_63).contains(&f) {
        f.round() as i64
    } else {
        i64::MIN
    };
    l as i32
}

/// `(int)lroundf(f)` on aarch64 (`fcvtas`): half away from zero, saturating, NaN gives 0,
/// which is Rust's `round` then `as i64`; the `int` is the low half of the `long`.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
pub fn c_lround_int(f: f32) -> i32 {
    f.round() as i64 as i32
}

/// C's `(uint8_t)f` as gcc compiles it for x86-64: `cvttss2si` to a 32-bit int
/// ([`c_int`]), then its low byte.
#[cfg(not(target_arch = "aarch64"))]
#[inline(always)]
pub fn c_u8(f: f32) -> u8 {
    c_int(f) as u8
}

/// C's `(uint8_t)f` as gcc compiles it for aarch64: `fcvtzu` to a 32-bit unsigned int
/// (truncates, saturates at 0 and `u32::MAX`, NaN gives 0, exactly Rust's `as u32`),
/// then its low byte.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
pub fn c_u8(f: f32) -> u8 {
    f as u32 as u8
}

/// ggml's `MAX(a, b)` on floats: `a > b ? a : b`.
#[inline(always)]
pub fn fmax_c(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// `MAX(lo, MIN(hi, l))` on ints, as ggml clamps quant levels.
#[inline(always)]
pub fn clamp_i(l: i32, lo: i32, hi: i32) -> i32 {
    let m = if hi < l { hi } else { l };
    if lo > m {
        lo
    } else {
        m
    }
}

/// The largest magnitude of `x` and the signed value that has it (first one wins),
/// as ggml's `if (ax > amax) { amax = ax; max = x[i]; }` loops.
#[inline(always)]
pub fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (amax, max)
}

/// [`signed_absmax`] of a block of 32 written so that it vectorises; `None` when the block
/// holds NaN or an infinity (then the order of ggml's loop matters and callers use it).
#[inline(always)]
pub fn signed_absmax_fast(xb: &[f32; 32]) -> Option<f32> {
    let mut m = [0.0f32; 8];
    let mut bad = false;
    for c in xb.chunks_exact(8) {
        for k in 0..8 {
            let a = c[k].abs();
            bad |= a.is_nan() || a == f32::INFINITY;
            m[k] = if a > m[k] { a } else { m[k] };
        }
    }
    if bad {
        return None;
    }
    let amax = m
        .iter()
        .fold(0.0f32, |acc, &v| if v > acc { v } else { acc });
    // The first value with the largest magnitude, as the strict `>` of the scalar loop keeps.
    Some(if amax > 0.0 {
        xb.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0)
    } else {
        0.0
    })
}

/// The (min, max) of ggml's `if (v < min) min = v; if (v > max) max = v;` loop over a block
/// of 32, written so that it vectorises; `None` for NaN, infinities, or a zero extreme (whose
/// sign would depend on the order).
#[inline(always)]
pub fn min_max_fast(xb: &[f32; 32]) -> Option<(f32, f32)> {
    let mut lo = [f32::MAX; 8];
    let mut hi = [-f32::MAX; 8];
    let mut bad = false;
    for c in xb.chunks_exact(8) {
        for k in 0..8 {
            let v = c[k];
            bad |= v.is_nan() || v.abs() == f32::INFINITY;
            lo[k] = if v < lo[k] { v } else { lo[k] };
            hi[k] = if v > hi[k] { v } else { hi[k] };
        }
    }
    let min = lo.iter().fold(f32::MAX, |a, &v| if v < a { v } else { a });
    let max = hi.iter().fold(-f32::MAX, |a, &v| if v > a { v } else { a });
    if bad || min == 0.0 || max == 0.0 {
        return None;
    }
    Some((min, max))
}

/// ggml's `make_qx_quants`: symmetric levels `L` in `[0, 2*nmax)` and the scale,
/// with a search over 18 nearby scales unless `rmse_type` is 0 (or negative: early return).
/// `qw` are the importance weights; without them the weight is chosen by `rmse_type`.
pub fn make_qx_quants(
    nmax: i32,
    x: &[f32],
    l_out: &mut [i8],
    rmse_type: i32,
    qw: Option<&[f32]>,
) -> f32 {
    let n = x.len();
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let mut iscale = -(nmax as f32) / max;
    if rmse_type == 0 {
        for i in 0..n {
            let l = nearest_int(iscale * x[i]);
            l_out[i] = (nmax + clamp_i(l, -nmax, nmax - 1)) as i8;
        }
        return 1.0 / iscale;
    }
    let mut rmse_type = rmse_type;
    let mut return_early = false;
    if rmse_type < 0 {
        rmse_type = -rmse_type;
        return_early = true;
    }
    let weight = |i: usize| -> f32 {
        match qw {
            Some(w) => w[i],
            None => match rmse_type {
                1 => x[i] * x[i],
                2 => 1.0,
                3 => x[i].abs(),
                _ => x[i].abs().sqrt(),
            },
        }
    };
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = clamp_i(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
        let w = weight(i);
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    if return_early {
        return if suml2 > 0.0 {
            0.5 * (scale + 1.0 / iscale)
        } else {
            1.0 / iscale
        };
    }
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for i in 0..n {
            let l = clamp_i(nearest_int(iscale * x[i]), -nmax, nmax - 1);
            let w = weight(i);
            let lf = l as f32;
            sumlx += w * x[i] * lf;
            suml2 += w * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let l = nearest_int(iscale * x[i]);
                l_out[i] = (nmax + clamp_i(l, -nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_q3_quants` (used by `quantize_row_q3_K_ref` with `do_rmse`).
pub fn make_q3_quants(nmax: i32, x: &[f32], l_out: &mut [i8], do_rmse: bool) -> f32 {
    let n = x.len();
    let (amax, max) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    if do_rmse {
        let mut sumlx = 0.0f32;
        let mut suml2 = 0.0f32;
        for i in 0..n {
            let l = clamp_i(nearest_int(iscale * x[i]), -nmax, nmax - 1);
            l_out[i] = l as i8;
            let w = x[i] * x[i];
            let lf = l as f32;
            sumlx += w * x[i] * lf;
            suml2 += w * lf * lf;
        }
        for _ in 0..5 {
            let mut n_changed = 0;
            for i in 0..n {
                let w = x[i] * x[i];
                let li = l_out[i] as f32;
                let mut slx = sumlx - w * x[i] * li;
                if slx > 0.0 {
                    let mut sl2 = suml2 - w * li * li;
                    let new_l = clamp_i(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
                    if new_l != l_out[i] as i32 {
                        let nl = new_l as f32;
                        slx += w * x[i] * nl;
                        sl2 += w * nl * nl;
                        if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                            l_out[i] = new_l as i8;
                            sumlx = slx;
                            suml2 = sl2;
                            n_changed += 1;
                        }
                    }
                }
            }
            if n_changed == 0 {
                break;
            }
        }
        for l in l_out[..n].iter_mut() {
            *l = l.wrapping_add(nmax as i8);
        }
        return if suml2 > 0.0 { sumlx / suml2 } else { 0.0 };
    }
    for i in 0..n {
        let l = clamp_i(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
    }
    1.0 / iscale
}

/// Which of ggml's two asymmetric searches to run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Qkx {
    /// `make_qkx2_quants`: returns early when `max == min`.
    V2,
    /// `make_qkx3_quants`: returns early when `max <= min`.
    V3,
}

/// ggml's `make_qkx2_quants` / `make_qkx3_quants` (with weights): asymmetric levels
/// `L` in `[0, nmax]`, returns `(scale, the_min)` where the value is `scale * L - the_min`.
#[allow(clippy::too_many_arguments)]
pub fn make_qkx_quants(
    which: Qkx,
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    let flat = match which {
        Qkx::V2 => max == min,
        Qkx::V3 => max <= min,
    };
    if flat {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        l_out[i] = clamp_i(l, 0, nmax) as u8;
        let mut diff = scale * l_out[i] as f32 + min - x[i];
        diff = if use_mad { diff.abs() } else { diff * diff };
        best_error += weights[i] * diff;
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        let mut sum_l = 0.0f32;
        let mut sum_l2 = 0.0f32;
        let mut sum_xl = 0.0f32;
        for i in 0..n {
            let l = clamp_i(nearest_int(iscale * (x[i] - min)), 0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let mut diff = this_scale * laux[i] as f32 + this_min - x[i];
                diff = if use_mad { diff.abs() } else { diff * diff };
                cur_error += weights[i] * diff;
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml's `make_qp_quants`: non-negative levels `L` in `[0, nmax]` for non-negative
/// `x` (the sub-block scales and mins of the K-quants), weighted by `quant_weights`.
pub fn make_qp_quants(nmax: i32, x: &[f32], l_out: &mut [u8], quant_weights: &[f32]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    for &v in x {
        max = fmax_c(max, v);
    }
    if max < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / max;
    for i in 0..n {
        l_out[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..n {
        let diff = x[i] - scale * l_out[i] as f32;
        best_mse += quant_weights[i] * diff * diff;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmaxf) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..n {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += quant_weights[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).min(nmax);
        l_out[i] = l as u8;
        let w = quant_weights[i];
        let lf = l as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = quant_weights[i];
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != l_out[i] as i32 {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// `sigma2`-weighted importance as the legacy and K-quant `quantize_*_impl` build it:
/// `qw[j] * sqrtf(sigma2 + x[j]*x[j])`.
#[inline]
pub fn imatrix_weights(qw: &[f32], x: &[f32], sigma2: f32, out: &mut [f32]) {
    for ((o, &q), &v) in out.iter_mut().zip(qw).zip(x) {
        *o = q * (sigma2 + v * v).sqrt();
    }
}

/// `sum x[j]*x[j]` in ggml's sequential order.
#[inline]
pub fn sum_sq(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(3.49), 3);
        assert_eq!(nearest_int(-7.6), -8);
    }

    #[cfg(not(target_arch = "aarch64"))]
    #[test]
    fn c_int_is_cvttss2si() {
        assert_eq!(c_int(8.9), 8);
        assert_eq!(c_int(-0.9), 0);
        assert_eq!(c_int(f32::NAN), i32::MIN);
        assert_eq!(c_int(3e9), i32::MIN);
        assert_eq!(c_int(-3e9), i32::MIN);
        assert_eq!(c_int(f32::INFINITY), i32::MIN);
    }

    #[cfg(not(target_arch = "aarch64"))]
    #[test]
    fn lround_and_u8_are_x86_64s() {
        assert_eq!(c_lround_int(0.5), 1);
        assert_eq!(c_lround_int(-0.5), -1);
        assert_eq!(c_lround_int(1.49), 1);
        assert_eq!(c_lround_int(-2.5), -3);
        assert_eq!(c_lround_int(f32::NAN), 0);
        assert_eq!(c_lround_int(f32::INFINITY), 0);
        assert_eq!(c_lround_int(f32::NEG_INFINITY), 0);
        assert_eq!(c_lround_int(5e9), 5_000_000_000i64 as i32);
        assert_eq!(c_u8(130.0), 130);
        assert_eq!(c_u8(-6.0), 250);
        assert_eq!(c_u8(f32::INFINITY), 0);
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn lround_and_u8_are_aarch64s() {
        assert_eq!(c_lround_int(0.5), 1);
        assert_eq!(c_lround_int(-2.5), -3);
        assert_eq!(c_lround_int(f32::NAN), 0);
        assert_eq!(c_lround_int(f32::INFINITY), -1);
        assert_eq!(c_lround_int(f32::NEG_INFINITY), 0);
        assert_eq!(c_u8(130.0), 130);
        assert_eq!(c_u8(-6.0), 0);
        assert_eq!(c_u8(f32::INFINITY), 255);
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn c_int_is_fcvtzs() {
        assert_eq!(c_int(8.9), 8);
        assert_eq!(c_int(-0.9), 0);
        assert_eq!(c_int(f32::NAN), 0);
        assert_eq!(c_int(3e9), i32::MAX);
        assert_eq!(c_int(-3e9), i32::MIN);
        assert_eq!(c_int(f32::INFINITY), i32::MAX);
    }
}
