//! Q3_K: 256 values as 3-bit levels (2 low bits in `qs`, the high bit in `hmask`)
//! in 16 sub-blocks of 16 with signed 6-bit scales and one f16 super-scale (110 bytes).
//! Mirrors ggml's `quantize_row_q3_K_ref` (its `make_q3_quants` searches on the AVX2 lanes
//! where the CPU has them), `quantize_row_q3_K_impl` and `dequantize_row_q3_K`.

use super::{pack_2bit, QK_K};
use crate::quant::float::{f16_le, to_f16_le};
use crate::quant::lanes::{transpose, untranspose, Kernel, LANES, V};
use crate::quant::search::{clamp_i, make_q3_quants, make_qx_quants, nearest_int, sum_sq};
use bytemuck::{Pod, Zeroable};

/// ggml's `block_q3_K`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ3K {
    /// Bit 2 of each of the 256 levels.
    pub hmask: [u8; QK_K / 8],
    /// The low 2 bits of the 256 levels, four per byte.
    pub qs: [u8; QK_K / 4],
    /// 16 6-bit scale levels (stored with an offset of 32), packed into 12 bytes.
    pub scales: [u8; 12],
    /// The super-scale, f16 (little-endian bytes).
    pub d: [u8; 2],
}

/// Stores the 6-bit level `l` (0..64) of sub-block `j` into the 12 scale bytes.
fn put_scale(scales: &mut [u8; 12], j: usize, l: i32) {
    if j < 8 {
        scales[j] = (l & 0xf) as u8;
    } else {
        scales[j - 8] |= ((l & 0xf) << 4) as u8;
    }
    let h = l >> 4;
    scales[j % 4 + 8] |= (h << (2 * (j / 4))) as u8;
}

/// The signed scale of sub-block `j` as the quantizers read it back.
fn get_scale(scales: &[u8; 12], j: usize) -> i32 {
    let sc = if j < 8 {
        scales[j] & 0xf
    } else {
        scales[j - 8] >> 4
    };
    let sc = (sc | (((scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i8;
    sc.wrapping_sub(32) as i32
}

/// The common tail: final levels from the stored scales, high-bit mask, 2-bit packing.
#[inline(always)]
fn finish(x: &[f32], b: &mut BlockQ3K, l: &mut [i8; QK_K]) {
    let dall = f16_le(b.d);
    for j in 0..QK_K / 16 {
        let d = dall * get_scale(&b.scales, j) as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let v = clamp_i(nearest_int(x[16 * j + ii] / d), -4, 3);
            l[16 * j + ii] = (v + 4) as i8;
        }
    }
    // ggml walks j = 0..256 with `m = j % 32` and bit `j / 32`: the high bit of level j
    // goes to bit j / 32 of hmask[j % 32]. Row by row, so that it vectorises.
    b.hmask = [0; QK_K / 8];
    let mut lu = [0u8; QK_K];
    for r in 0..QK_K / 32 {
        for m in 0..32 {
            let v = l[32 * r + m];
            let high = v > 3;
            b.hmask[m] |= (high as u8) << r;
            lu[32 * r + m] = (if high { v - 4 } else { v }) as u8;
        }
    }
    pack_2bit(&lu, &mut b.qs);
}

/// `quantize_row_q3_K_ref` (fast path: the sub-block searches on [`Kernel::best`], the rest
/// of the block built for AVX2 when the CPU has it; the portable lanes otherwise).
pub fn quantize_row_ref(x: &[f32], y: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if quantize_row_ref_avx2(x, y) {
        return;
    }
    quantize_row_ref_in(x, y, Kernel::Lanes)
}

crate::quant::simd::avx2_build!(
    /// [`quantize_row_ref_in`] on [`Kernel::best`], the rest of the block also built for AVX2
    /// (same bytes; `false` without AVX2).
    quantize_row_ref_avx2(x: &[f32], y: &mut [u8]) => quantize_row_ref_in(x, y, Kernel::best())
);

/// `quantize_row_q3_K_ref`; `lanes` runs the 16 `make_q3_quants` searches 8 side by side on
/// the portable lanes ([`crate::quant::lanes::make_q3_quants_x8`], same bytes), otherwise one
/// by one as ggml does.
pub fn quantize_row_ref_with(x: &[f32], y: &mut [u8], lanes: bool) {
    quantize_row_ref_in(x, y, Kernel::from_lanes(lanes))
}

/// `quantize_row_q3_K_ref` with its 16 `make_q3_quants` searches on `kernel`: the two
/// halves of a block as two sets of 8 lanes (interleaved by the AVX2 kernel), or one by
/// one as ggml does ([`Kernel::Scalar`]). Every kernel gives the same bytes.
#[inline(always)]
pub fn quantize_row_ref_in(x: &[f32], y: &mut [u8], kernel: Kernel) {
    let blocks: &mut [BlockQ3K] = bytemuck::cast_slice_mut(y);
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    for (x, b) in x.chunks_exact(QK_K).zip(blocks) {
        if kernel.lanes() {
            let xt: [[V; 16]; 2] = std::array::from_fn(|g| {
                let base = 128 * g;
                transpose::<16>(|k| x[base + 16 * k..base + 16 * k + 16].try_into().unwrap())
            });
            let mut lt = [[[0i8; LANES]; 16]; 2];
            let sc = kernel.q3_x8(4, xt.each_ref(), lt.each_mut());
            for g in 0..2 {
                scales[8 * g..8 * g + 8].copy_from_slice(&sc[g]);
                untranspose(&lt[g], &mut l[128 * g..128 * g + 128]);
            }
        } else {
            for j in 0..QK_K / 16 {
                scales[j] = make_q3_quants(
                    4,
                    &x[16 * j..16 * j + 16],
                    &mut l[16 * j..16 * j + 16],
                    true,
                );
            }
        }
        let mut max_scale = 0.0f32;
        let mut amax = 0.0f32;
        for j in 0..QK_K / 16 {
            let scale = scales[j].abs();
            if scale > amax {
                amax = scale;
                max_scale = scales[j];
            }
        }
        b.scales = [0; 12];
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for j in 0..QK_K / 16 {
                let l8 = nearest_int(iscale * scales[j]) as i8;
                let lv = clamp_i(l8 as i32, -32, 31) + 32;
                put_scale(&mut b.scales, j, lv as i8 as i32);
            }
            b.d = to_f16_le(1.0 / iscale);
        } else {
            b.d = to_f16_le(0.0);
        }
        finish(x, b, &mut l);
    }
}

/// `quantize_row_q3_K_impl` with importance weights (fast path: sub-blocks in lanes).
pub fn quantize_row_imatrix(x: &[f32], y: &mut [u8], qw: &[f32]) {
    quantize_row_imatrix_with(x, y, qw, true)
}

/// `quantize_row_q3_K_impl`; `lanes` runs the 16 sub-block searches 8 side by side
/// on [`Kernel::best`] (same bytes), otherwise one by one as ggml does.
pub fn quantize_row_imatrix_with(x: &[f32], y: &mut [u8], qw: &[f32], lanes: bool) {
    let kernel = Kernel::fast(lanes);
    let blocks: &mut [BlockQ3K] = bytemuck::cast_slice_mut(y);
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let mut sw = [0f32; QK_K / 16];
    let mut ls = [0i8; QK_K / 16];
    for ((x, qw), b) in x.chunks_exact(QK_K).zip(qw.chunks_exact(QK_K)).zip(blocks) {
        let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
        let w: [f32; QK_K] = std::array::from_fn(|i| qw[i] * (sigma2 + x[i] * x[i]).sqrt());
        for j in 0..QK_K / 16 {
            let mut sumw = 0.0f32;
            for &v in &w[16 * j..16 * j + 16] {
                sumw += v;
            }
            sw[j] = sumw;
        }
        if kernel.lanes() {
            let mut xt = [[[0f32; LANES]; 16]; 2];
            let mut wt = [[[0f32; LANES]; 16]; 2];
            for g in 0..2 {
                for k in 0..LANES {
                    for i in 0..16 {
                        xt[g][i][k] = x[128 * g + 16 * k + i];
                        wt[g][i][k] = w[128 * g + 16 * k + i];
                    }
                }
            }
            let mut lt = [[[0i8; LANES]; 16]; 2];
            let sc = kernel.qx_x8(4, xt.each_ref(), wt.each_ref(), lt.each_mut());
            for g in 0..2 {
                scales[8 * g..8 * g + 8].copy_from_slice(&sc[g]);
                untranspose(&lt[g], &mut l[128 * g..128 * g + 128]);
            }
        } else {
            for j in 0..QK_K / 16 {
                let xs = &x[16 * j..16 * j + 16];
                scales[j] = make_qx_quants(
                    4,
                    xs,
                    &mut l[16 * j..16 * j + 16],
                    1,
                    Some(&w[16 * j..16 * j + 16]),
                );
            }
        }
        b.scales = [0; 12];
        let d_block = make_qx_quants(32, &scales, &mut ls, 1, Some(&sw));
        for j in 0..QK_K / 16 {
            put_scale(&mut b.scales, j, ls[j] as i32);
        }
        b.d = to_f16_le(d_block);
        finish(x, b, &mut l);
    }
}

/// `dequantize_row_q3_K`.
pub fn dequantize_row(x: &[u8], y: &mut [f32]) {
    let blocks: &[BlockQ3K] = bytemuck::cast_slice(x);
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d_all = f16_le(b.d);
        let mut out = 0;
        let mut is = 0;
        let mut m = 1u8;
        for n in (0..QK_K).step_by(128) {
            let q = &b.qs[n / 4..n / 4 + 32];
            for shift in [0, 2, 4, 6] {
                for half in 0..2 {
                    let dl = d_all * (get_scale(&b.scales, is)) as f32;
                    is += 1;
                    for l in 0..16 {
                        let k = l + 16 * half;
                        let lo = ((q[k] >> shift) & 3) as i32;
                        let hi = if b.hmask[k] & m != 0 { 0 } else { 4 };
                        y[out] = dl * (lo - hi) as f32;
                        out += 1;
                    }
                }
                m = m.wrapping_shl(1);
            }
        }
    }
}
/// Q3_K in the registry.
pub struct Q3K;

impl crate::quant::BlockFormat for Q3K {
    const TYPE: crate::gguf::GgmlType = crate::gguf::GgmlType::Q3K;
    const BLOCK: usize = super::QK_K;
    type Block = BlockQ3K;
    const ACT: crate::calib::actquant::ActQuant = crate::calib::actquant::ActQuant::Q8K;
    const F16_SCALES: &'static [usize] = &[108];
    fn quantize(x: &[f32], y: &mut [u8]) {
        quantize_row_ref(x, y)
    }
    fn quantize_imatrix(x: &[f32], y: &mut [u8], w: &[f32]) {
        quantize_row_imatrix(x, y, w)
    }
    fn dequantize(x: &[u8], y: &mut [f32]) {
        dequantize_row(x, y)
    }
}
