//! Matrix products on Intel AMX (the `tdpbf16ps` tile instruction: bf16
//! inputs, f32 accumulation) for the calibration forward pass.
//!
//! On a CPU with AMX-BF16 (Sapphire Rapids and later) one `tdpbf16ps` does
//! 16·16·32 multiply-adds; the forward pass's products, which are almost all of
//! calibration, run several times faster than `gemm`'s AVX-512 f32 kernel. The
//! price is precision: both operands are rounded to bf16 (8 significant bits,
//! round to nearest even) before the product, and the tile unit treats bf16
//! subnormals as zero. llama-imatrix itself computes with the checkpoint in
//! F16 and rounds the activations to F16 (11 bits) before each product, so the
//! statistics were never f32-exact; the tests bound our error against an f64
//! product of the rounded operands and against the f32 forward pass.
//!
//! The weight is packed once per layer ([`PackedBf16::pack`]) in the layout the
//! B tile wants (pairs of consecutive k for 16 output columns per 64-byte row),
//! which also halves a layer's memory against its f32 copy. Each product
//! converts its input rows to bf16, runs 32×32 output blocks (four C tiles, two
//! A tiles, two B tiles) over column panels in parallel, and copies the panels
//! into the row-major result.
//!
//! Everything here that is not AMX-specific is safe Rust; the `unsafe` is the
//! inline assembly of the tile instructions, the CPUID query and the Linux
//! `arch_prctl` call that asks the kernel for the tile state, each with its
//! SAFETY argument. [`available`] is false on any other CPU or OS, and the
//! caller then uses the f32 path.

// Off x86_64 the tile code is compiled out and `available()` is false, so the
// kernel's plumbing is unused there.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_variables))]

use super::forward::multiversion;
use rayon::prelude::*;
use std::sync::OnceLock;

/// Output columns of one B tile, rows of one A/C tile.
const TILE: usize = 16;
/// k values of one A tile row / B tile (32 bf16 = 64 bytes).
const KB: usize = 32;
/// u16 values of one packed B tile (16 rows of 64 bytes).
const B_TILE: usize = TILE * KB;

/// Whether this CPU and OS let us run AMX-BF16 tile instructions (checked
/// once: CPUID leaf 7 reports AMX-TILE and AMX-BF16, and Linux grants this
/// process the tile data state). `LAQUANT_NO_AMX` set to anything but `0`
/// makes it false, to compare the paths.
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        if std::env::var_os("LAQUANT_NO_AMX").is_some_and(|v| v != "0") {
            return false;
        }
        detect()
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // CPUID exists on every x86_64 CPU; leaf 7 is only read when leaf 0 says it exists.
    // Safe functions in recent Rust, unsafe in older releases such as rust-version's 1.89.
    #[allow(unused_unsafe)]
    let (max_leaf, edx7) = unsafe {
        let max_leaf = __cpuid(0).eax;
        let edx7 = if max_leaf >= 7 {
            __cpuid_count(7, 0).edx
        } else {
            0
        };
        (max_leaf, edx7)
    };
    let amx_bf16 = edx7 & (1 << 22) != 0;
    let amx_tile = edx7 & (1 << 24) != 0;
    if max_leaf < 7 || !amx_bf16 || !amx_tile {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) only asks the kernel
    // to enable the AMX tile state for this process; it takes no pointers. A
    // kernel without AMX support returns an error, which we treat as "no AMX".
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    r == 0 && tiles_run_in_a_child()
}

/// Runs the tile instructions we use (configure, zero, one `tdpbf16ps`,
/// release) in a forked child and reports whether it exited cleanly. Some
/// virtual machines advertise AMX and grant the permission, yet fault on the
/// first tile instruction (seen with ggml's AMX kernels, see
/// `scripts/llama-cpp.sh`); there the child dies of SIGILL and we use f32.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn tiles_run_in_a_child() -> bool {
    let cfg = TileConfig::new();
    // SAFETY: fork() may be called from a multi-threaded process as long as
    // the child only runs async-signal-safe code until it exits: here the tile
    // instructions on a configuration built before the fork (no allocation,
    // no lock) and `_exit`. The parent only waits for that child.
    unsafe {
        let pid = libc::fork();
        if pid < 0 {
            return false;
        }
        if pid == 0 {
            std::arch::asm!(
                "ldtilecfg [{0}]",
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tdpbf16ps tmm0, tmm1, tmm2",
                "tilerelease",
                in(reg) cfg.0.as_ptr(),
                options(nostack, readonly)
            );
            libc::_exit(0);
        }
        let mut status = 0;
        if libc::waitpid(pid, &mut status, 0) != pid {
            return false;
        }
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// A weight `n × k` (torch Linear layout) rounded to bf16 and packed as AMX
/// B tiles: for every block of 16 output columns, its tiles along k, each 16
/// rows (pairs of k) × 16 columns × 2. `n` and `k` are padded with zeros to
/// multiples of 32.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedBf16 {
    /// Output columns (the weight's rows), unpadded.
    pub n: usize,
    /// Input width, unpadded.
    pub k: usize,
    n_pad: usize,
    k_pad: usize,
    data: Vec<u16>,
}

fn pad32(v: usize) -> usize {
    v.div_ceil(32) * 32
}

/// `half::bf16::from_f32(v).to_bits()` (round to nearest even, NaN kept
/// quiet) without branches, so the conversion loops vectorize.
#[inline(always)]
fn to_bf16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    let rounded = (x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((x >> 16) | 0x40) as u16;
    if x & 0x7fff_ffff > 0x7f80_0000 {
        quiet_nan
    } else {
        rounded
    }
}

impl PackedBf16 {
    /// Packs `w` (`n × k`, row-major).
    pub fn pack(w: &[f32], n: usize, k: usize) -> PackedBf16 {
        assert_eq!(w.len(), n * k, "weight is not {n} × {k}");
        let (n_pad, k_pad) = (pad32(n), pad32(k));
        let kblocks = k_pad / KB;
        let mut data = vec![0u16; n_pad * k_pad];
        data.par_chunks_mut(kblocks * B_TILE)
            .enumerate()
            .for_each(|(nb, panel)| pack_panel(panel, w, nb * TILE, n, k));
        PackedBf16 {
            n,
            k,
            n_pad,
            k_pad,
            data,
        }
    }

    /// Packs an `n × k` weight read `rows_per_read` rows at a time by
    /// `read(first_row, count)` (row-major f32, `count · k` values), so that no
    /// f32 copy of the whole weight exists; the same bytes as [`Self::pack`].
    pub fn pack_by_rows<E>(
        n: usize,
        k: usize,
        rows_per_read: usize,
        mut read: impl FnMut(usize, usize) -> Result<Vec<f32>, E>,
    ) -> Result<PackedBf16, E> {
        let (n_pad, k_pad) = (pad32(n), pad32(k));
        let kblocks = k_pad / KB;
        // Whole column blocks per read.
        let step = (rows_per_read / TILE).max(1) * TILE;
        let mut data = vec![0u16; n_pad * k_pad];
        for (ci, dst) in data.chunks_mut(step * k_pad).enumerate() {
            let r0 = ci * step;
            if r0 >= n {
                break;
            }
            let count = step.min(n - r0);
            let w = read(r0, count)?;
            assert_eq!(
                w.len(),
                count * k,
                "read returned the wrong number of values"
            );
            dst.par_chunks_mut(kblocks * B_TILE)
                .enumerate()
                .for_each(|(b, panel)| pack_panel(panel, &w, b * TILE, count, k));
        }
        Ok(PackedBf16 {
            n,
            k,
            n_pad,
            k_pad,
            data,
        })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 2
    }

    /// The bf16 value the packing kept for `w[col][kk]` (tests).
    #[cfg(test)]
    fn get(&self, col: usize, kk: usize) -> f32 {
        use half::bf16;
        let kblocks = self.k_pad / KB;
        let (nb, j) = (col / TILE, col % TILE);
        let (kb, r) = (kk / KB, kk % KB);
        let i = nb * kblocks * B_TILE + kb * B_TILE + (r / 2) * KB + j * 2 + (r % 2);
        bf16::from_bits(self.data[i]).to_f32()
    }
}

/// Packs the (up to) 16 rows `first..first + 16` of `w` (`n` rows of `k`)
/// into `panel`, one column block's tiles along k.
fn pack_panel(panel: &mut [u16], w: &[f32], first: usize, n: usize, k: usize) {
    for j in 0..TILE {
        let col = first + j;
        if col >= n {
            break;
        }
        let row = &w[col * k..(col + 1) * k];
        for (kk, &v) in row.iter().enumerate() {
            let (kb, r) = (kk / KB, kk % KB);
            panel[kb * B_TILE + (r / 2) * KB + j * 2 + (r % 2)] = to_bf16_bits(v);
        }
    }
}

/// AMX tile configuration (palette 1): tiles 0–7 all 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new() -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
            c[48 + t] = TILE as u8;
        }
        TileConfig(c)
    }
}

/// The tile registers of the current thread, configured for the 32×32 kernel;
/// released when dropped. Only made after [`available`] said yes.
struct Tiles;

impl Tiles {
    fn acquire() -> Tiles {
        debug_assert!(available());
        let cfg = TileConfig::new();
        // SAFETY: `available()` checked that the CPU has AMX and the kernel
        // granted the tile state; `cfg` is a valid 64-byte aligned palette-1
        // configuration that lives across the instruction.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!("ldtilecfg [{0}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        }
        Tiles
    }

    /// C(32×32 f32 at `c`, row stride `c_stride` bytes) = Σ over `kblocks`
    /// blocks of A(32 rows of 32 bf16 at `a`, row stride `a_stride` bytes) ·
    /// B(two column blocks at `b0`/`b1`, tiles of 1 KiB one after another).
    ///
    /// # Safety
    /// `a` must be readable for 32 rows of `a_stride` bytes covering
    /// `kblocks · 64` bytes each; `b0` and `b1` for `kblocks` KiB; `c` writable
    /// for 32 rows of `c_stride` bytes covering 128 bytes each.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(
        &self,
        a: *const u16,
        a_stride: usize,
        b0: *const u16,
        b1: *const u16,
        kblocks: usize,
        c: *mut f32,
        c_stride: usize,
    ) {
        use std::arch::asm;
        // SAFETY (whole body): the tiles were configured by `acquire` on this
        // thread; every load/store stays inside the ranges the caller vouches
        // for (16 rows × 64 bytes per tile at the given strides).
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            let a16 = a.cast::<u8>().add(16 * a_stride);
            let b_stride = 64usize;
            for kb in 0..kblocks {
                asm!(
                    // Each load just before its first product: the tile
                    // registers are not renamed, so this lets the loads of
                    // B1 and A1 overlap the products already issued
                    // (measured 10-15% faster than four loads up front).
                    "tileloadd tmm4, [{a} + {as}*1]",
                    "tileloadd tmm6, [{b0} + {bs}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{b1} + {bs}*1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a16} + {as}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a = in(reg) a.cast::<u8>().add(kb * 64),
                    a16 = in(reg) a16.add(kb * 64),
                    as = in(reg) a_stride,
                    b0 = in(reg) b0.add(kb * B_TILE),
                    b1 = in(reg) b1.add(kb * B_TILE),
                    bs = in(reg) b_stride,
                    options(nostack, readonly)
                );
            }
            let c8 = c.cast::<u8>();
            asm!(
                "tilestored [{c00} + {cs}*1], tmm0",
                "tilestored [{c01} + {cs}*1], tmm1",
                "tilestored [{c10} + {cs}*1], tmm2",
                "tilestored [{c11} + {cs}*1], tmm3",
                c00 = in(reg) c8,
                c01 = in(reg) c8.add(64),
                c10 = in(reg) c8.add(16 * c_stride),
                c11 = in(reg) c8.add(16 * c_stride + 64),
                cs = in(reg) c_stride,
                options(nostack)
            );
        }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: releases this thread's tile state, configured by `acquire`.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!("tilerelease", options(nostack, nomem));
        }
    }
}

/// Output columns per parallel task: about four panels per thread, between 32
/// and 256 (a 256-column panel of a 2048-wide weight is 1 MiB, held in L2
/// while every row block runs against it).
fn panel_cols(n_pad: usize, threads: usize) -> usize {
    let want = n_pad / (4 * threads.max(1));
    (want / 32 * 32).clamp(32, 256)
}

/// The parallel tasks of [`matmul_many`]: (weight, first column, columns,
/// first row, rows), every one a whole number of 32×32 blocks. Column panels
/// are as wide as [`panel_cols`] allows for the weights together; when they
/// are fewer than three a thread, the rows are cut into groups too, so that
/// small products (a 128-row weight, a few hundred rows) still keep every
/// thread busy without panels so narrow that the input is read once per 32
/// columns.
fn plan(
    n_pads: &[usize],
    rows_pad: usize,
    threads: usize,
) -> Vec<(usize, usize, usize, usize, usize)> {
    let total: usize = n_pads.iter().sum();
    let nc = panel_cols(total, threads).max(128);
    let panels: usize = n_pads.iter().map(|&n| n.div_ceil(nc)).sum();
    let want = 3 * threads.max(1);
    let groups = if threads <= 1 {
        1
    } else {
        want.div_ceil(panels.max(1)).clamp(1, rows_pad / 32)
    };
    let per_group = (rows_pad / 32).div_ceil(groups) * 32;
    let mut tasks = Vec::new();
    for (wi, &n_pad) in n_pads.iter().enumerate() {
        for c0 in (0..n_pad).step_by(nc) {
            for r0 in (0..rows_pad).step_by(per_group) {
                tasks.push((wi, c0, nc.min(n_pad - c0), r0, per_group.min(rows_pad - r0)));
            }
        }
    }
    tasks
}

multiversion! {
/// Rows of `x` (`k` wide) to bf16 into `a` (`a_row` wide, zero padded; `a`
/// may hold more rows than `x`, left zero).
fn to_bf16_rows(a: &mut [u16], a_row: usize, x: &[f32], k: usize) {
    for (d, s) in a.chunks_exact_mut(a_row).zip(x.chunks_exact(k)) {
        for (o, &v) in d.iter_mut().zip(s) {
            *o = to_bf16_bits(v);
        }
    }
}
}

/// `y[t][j] = Σ_k x[t][k] · w[j][k]` (+ bias) on the tile unit, as
/// [`super::forward::matmul_wt`] does in f32; x is `rows × w.k`. Only call
/// when [`available`]; `threads` is the rayon pool size to plan panels for.
pub fn matmul(
    x: &[f32],
    rows: usize,
    w: &PackedBf16,
    bias: Option<&[f32]>,
    threads: usize,
) -> Vec<f32> {
    matmul_many(x, rows, &[(w, bias)], threads)
        .pop()
        .unwrap_or_default()
}

/// [`matmul`] of one input with several weights of the same width (q, k and
/// v; gate and up): the input is rounded to bf16 once, and the panels of all
/// the products share one parallel loop. One result per weight, in order.
pub fn matmul_many(
    x: &[f32],
    rows: usize,
    ws: &[(&PackedBf16, Option<&[f32]>)],
    threads: usize,
) -> Vec<Vec<f32>> {
    assert!(available(), "AMX matmul called without AMX");
    let Some(k) = ws.first().map(|w| w.0.k) else {
        return Vec::new();
    };
    assert!(ws.iter().all(|w| w.0.k == k), "weights of different widths");
    assert_eq!(x.len(), rows * k, "input is not {rows} × {k}");
    if rows == 0 {
        return ws.iter().map(|_| Vec::new()).collect();
    }
    let rows_pad = pad32(rows);
    let k_pad = ws[0].0.k_pad;
    let kblocks = k_pad / KB;
    // Input rows in bf16, zero-padded to 32 rows × a multiple of 32 columns.
    // A row stride that is a multiple of 1 KiB would put the 16 rows of an A
    // tile in the same few L1 sets (a 2048-wide input measured 2x slower), so
    // such rows get 64 unused bytes more.
    let a_row = if (k_pad * 2).is_multiple_of(1024) {
        k_pad + 32
    } else {
        k_pad
    };
    let mut a = vec![0u16; rows_pad * a_row];
    a.par_chunks_mut(32 * a_row)
        .zip(x.par_chunks(32 * k))
        .for_each(|(d, s)| to_bf16_rows(d, a_row, s, k));
    // The tiles store straight into each rows_pad × n_pad result, which is
    // left uninitialised: the tasks' blocks cover it exactly, each block once.
    let mut ys: Vec<Vec<f32>> = ws
        .iter()
        .map(|w| Vec::with_capacity(rows_pad * w.0.n_pad))
        .collect();
    let outs: Vec<OutPtr> = ys.iter_mut().map(|y| OutPtr(y.as_mut_ptr())).collect();
    let n_pads: Vec<usize> = ws.iter().map(|w| w.0.n_pad).collect();
    let a_stride = a_row * 2;
    plan(&n_pads, rows_pad, threads).into_par_iter().for_each(
        |(wi, c0, w_cols, r_first, r_count)| {
            let (w, n_pad, out) = (ws[wi].0, n_pads[wi], outs[wi]);
            let tiles = Tiles::acquire();
            for r0 in (r_first..r_first + r_count).step_by(32) {
                for j0 in (0..w_cols).step_by(32) {
                    let nb = (c0 + j0) / TILE;
                    let b0 = &w.data[nb * kblocks * B_TILE..(nb + 1) * kblocks * B_TILE];
                    let b1 = &w.data[(nb + 1) * kblocks * B_TILE..(nb + 2) * kblocks * B_TILE];
                    let a_rows = &a[r0 * a_row..(r0 + 32) * a_row];
                    // SAFETY: `a_rows` holds 32 rows of `a_row` ≥ `k_pad` bf16
                    // (a_stride bytes each, kblocks·64 bytes used); `b0`/`b1`
                    // hold `kblocks` tiles of 512 u16. The 32×32 block of
                    // result `wi` at row r0, column c0 + j0 (stride n_pad
                    // floats) lies inside its allocation of rows_pad · n_pad
                    // floats (r0 + 32 ≤ rows_pad, c0 + j0 + 32 ≤ n_pad) and
                    // inside this task's rows and columns, which no other task
                    // writes; the allocation outlives the parallel loop and is
                    // not read during it.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        tiles.block(
                            a_rows.as_ptr(),
                            a_stride,
                            b0.as_ptr(),
                            b1.as_ptr(),
                            kblocks,
                            out.at(r0 * n_pad + c0 + j0),
                            n_pad * 4,
                        );
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    let _ = (&tiles, a_rows, b0, b1, a_stride, &out);
                }
            }
            drop(tiles);
        },
    );
    for ((y, w), n_pad) in ys.iter_mut().zip(ws).zip(&n_pads) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the plan's tasks cover rows 0..rows_pad × columns
        // 0..n_pad of this result in 32×32 blocks, each stored by one
        // `tilestored` pass above, so all rows_pad · n_pad floats (the
        // capacity reserved) are initialised.
        unsafe {
            y.set_len(rows_pad * n_pad);
        }
        #[cfg(not(target_arch = "x86_64"))]
        y.resize(rows_pad * n_pad, 0.0);
        let n = w.0.n;
        // Drop the padding: rows beyond `rows`, columns beyond `n`.
        if *n_pad != n {
            for r in 1..rows {
                y.copy_within(r * n_pad..r * n_pad + n, r * n);
            }
        }
        y.truncate(rows * n);
        if let (Some(b), true) = (w.1, n > 0) {
            y.par_chunks_mut(n).for_each(|yr| {
                for (v, bb) in yr.iter_mut().zip(b) {
                    *v += bb;
                }
            });
        }
    }
    ys
}

/// The result buffer shared by the panel tasks of [`matmul`].
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

// SAFETY: the tasks that share an `OutPtr` write disjoint column panels of
// the buffer it points to, and the buffer outlives them (see `matmul`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The address `off` floats into the buffer (not dereferenced here).
    fn at(self, off: usize) -> *mut f32 {
        self.0.wrapping_add(off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    fn rng(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    fn bf(v: f32) -> f64 {
        bf16::from_f32(v).to_f32() as f64
    }

    #[test]
    fn packing_keeps_every_weight_rounded_to_bf16() {
        let mut r = rng(3);
        for (n, k) in [(1, 1), (17, 33), (32, 32), (40, 70)] {
            let w: Vec<f32> = (0..n * k).map(|_| r() * 3.0).collect();
            let p = PackedBf16::pack(&w, n, k);
            assert_eq!(p.bytes(), pad32(n) * pad32(k) * 2);
            for j in 0..pad32(n) {
                for kk in 0..pad32(k) {
                    let want = if j < n && kk < k {
                        bf(w[j * k + kk])
                    } else {
                        0.0
                    };
                    assert_eq!(p.get(j, kk) as f64, want, "n={n} k={k} at ({j},{kk})");
                }
            }
        }
    }

    #[test]
    fn packing_by_rows_makes_the_same_bytes() {
        let mut r = rng(5);
        for (n, k, per) in [
            (1, 1, 1),
            (17, 33, 16),
            (70, 40, 5),
            (100, 64, 48),
            (64, 32, 1000),
        ] {
            let w: Vec<f32> = (0..n * k).map(|_| r()).collect();
            let mut reads = Vec::new();
            let p = PackedBf16::pack_by_rows(n, k, per, |r0, c| {
                reads.push((r0, c));
                Ok::<_, ()>(w[r0 * k..(r0 + c) * k].to_vec())
            })
            .unwrap();
            assert_eq!(p, PackedBf16::pack(&w, n, k), "n={n} k={k} per={per}");
            assert_eq!(reads.iter().map(|x| x.1).sum::<usize>(), n);
            assert!(reads.iter().all(|x| x.0 % 16 == 0));
        }
        let err = PackedBf16::pack_by_rows(40, 8, 16, |r0, _| {
            if r0 >= 32 {
                Err(r0)
            } else {
                Ok(vec![0.0; 16 * 8])
            }
        });
        assert_eq!(err, Err(32));
    }

    #[test]
    fn bf16_rounding_is_half_crates() {
        let mut x = 0x9e37_79b9u32;
        let edge = [
            0u32,
            0x8000_0000,
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0000,
            0x7f80_0001,
            0xffff_ffff,
            0x7f7f_ffff,
            0x7f7f_8000,
            0x3f80_8000,
            0x3f81_8000,
            0x3f80_8001,
            0x0000_8000,
            0x0001_8000,
        ];
        for i in 0..2_000_000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let b = if (i as usize) < edge.len() {
                edge[i as usize]
            } else {
                x
            };
            let v = f32::from_bits(b);
            assert_eq!(to_bf16_bits(v), bf16::from_f32(v).to_bits(), "{b:#x}");
        }
    }

    #[test]
    fn panels_cover_the_columns() {
        for (n_pad, th) in [(32, 1), (256, 2), (2048, 2), (5632, 2), (32000, 8)] {
            let nc = panel_cols(n_pad, th);
            assert!(
                nc.is_multiple_of(32) && (32..=256).contains(&nc),
                "{n_pad} {th}: {nc}"
            );
        }
    }

    /// The product of the bf16-rounded operands in f64, and the bound on the
    /// f32 accumulation's rounding: k·2⁻²³·Σ|x||w| (generous: the tile unit
    /// adds pairs, so it rounds fewer times than that).
    fn reference(x: &[f32], rows: usize, k: usize, w: &[f32], n: usize) -> Vec<(f64, f64)> {
        let mut out = Vec::with_capacity(rows * n);
        for t in 0..rows {
            for j in 0..n {
                let (mut s, mut m) = (0f64, 0f64);
                for kk in 0..k {
                    let p = bf(x[t * k + kk]) * bf(w[j * k + kk]);
                    s += p;
                    m += p.abs();
                }
                out.push((s, m * k as f64 * f32::EPSILON as f64 + 1e-30));
            }
        }
        out
    }

    #[test]
    fn amx_product_equals_the_rounded_operands_product() {
        if !available() {
            eprintln!("no AMX on this machine: the tile path is not exercised");
            return;
        }
        let mut r = rng(11);
        for (rows, k, n) in [
            (1, 1, 1),
            (1, 64, 32),
            (5, 33, 17),
            (32, 32, 32),
            (33, 100, 70),
            (70, 256, 300),
            (128, 512, 96),
        ] {
            let x: Vec<f32> = (0..rows * k).map(|_| r() * 4.0).collect();
            let w: Vec<f32> = (0..n * k).map(|_| r() * 0.5).collect();
            let bias: Vec<f32> = (0..n).map(|_| r()).collect();
            let p = PackedBf16::pack(&w, n, k);
            for threads in [1, 2, 3] {
                let y = matmul(&x, rows, &p, Some(&bias), threads);
                let want = reference(&x, rows, k, &w, n);
                assert_eq!(y.len(), rows * n);
                for (i, (&got, &(s, tol))) in y.iter().zip(&want).enumerate() {
                    let s = s + bias[i % n] as f64;
                    assert!(
                        (got as f64 - s).abs() <= tol + s.abs() * 1e-7,
                        "{rows}×{k}×{n} t{threads} at {i}: {got} vs {s} (tol {tol})"
                    );
                }
            }
        }
    }

    /// One input against several weights gives each weight's own product,
    /// bit for bit, however the rows and columns are cut into tasks.
    #[test]
    fn many_products_equal_the_single_ones() {
        if !available() {
            eprintln!("no AMX on this machine: the tile path is not exercised");
            return;
        }
        let mut r = rng(17);
        for (rows, k, ns) in [
            (1usize, 64usize, vec![32usize, 16, 100]),
            (70, 384, vec![384, 128, 128]),
            (300, 96, vec![1024, 1024]),
            (33, 40, vec![0, 17]),
        ] {
            let x: Vec<f32> = (0..rows * k).map(|_| r()).collect();
            let ws: Vec<(PackedBf16, Vec<f32>)> = ns
                .iter()
                .map(|&n| {
                    let w: Vec<f32> = (0..n * k).map(|_| r()).collect();
                    (PackedBf16::pack(&w, n, k), (0..n).map(|_| r()).collect())
                })
                .collect();
            let refs: Vec<(&PackedBf16, Option<&[f32]>)> =
                ws.iter().map(|(p, b)| (p, Some(b.as_slice()))).collect();
            for threads in [1, 2, 5] {
                let many = matmul_many(&x, rows, &refs, threads);
                assert_eq!(many.len(), ns.len());
                for (y, (p, b)) in many.iter().zip(&refs) {
                    // One thread, one task per panel: nothing shared.
                    let one = matmul(&x, rows, p, *b, 1);
                    assert_eq!(y, &one, "{rows}×{k}×{} t{threads}", p.n);
                }
            }
        }
    }

    #[test]
    fn plans_cover_every_block_once() {
        for (n_pads, rows_pad, th) in [
            (vec![384usize, 128, 128], 1536usize, 2usize),
            (vec![1024, 1024], 32, 2),
            (vec![5632], 384, 8),
            (vec![32], 64, 1),
        ] {
            let mut seen: Vec<Vec<u32>> = n_pads
                .iter()
                .map(|&n| vec![0; n / 32 * rows_pad / 32])
                .collect();
            for (wi, c0, nc, r0, nr) in plan(&n_pads, rows_pad, th) {
                assert!(nc % 32 == 0 && nr % 32 == 0 && nc > 0 && nr > 0);
                for c in (c0..c0 + nc).step_by(32) {
                    for r in (r0..r0 + nr).step_by(32) {
                        seen[wi][(r / 32) * (n_pads[wi] / 32) + c / 32] += 1;
                    }
                }
            }
            assert!(
                seen.iter().flatten().all(|&v| v == 1),
                "{n_pads:?} {rows_pad} {th}"
            );
        }
    }

    #[test]
    fn amx_product_on_hostile_values() {
        if !available() {
            eprintln!("no AMX on this machine: the tile path is not exercised");
            return;
        }
        let (rows, k, n) = (33, 64, 40);
        let w = vec![1.0f32; n * k];
        let p = PackedBf16::pack(&w, n, k);
        // zeros
        let y = matmul(&vec![0.0; rows * k], rows, &p, None, 2);
        assert!(y.iter().all(|&v| v == 0.0));
        // a constant: exact in bf16 and in the f32 sum
        let y = matmul(&vec![0.5; rows * k], rows, &p, None, 2);
        assert!(y.iter().all(|&v| v == 32.0), "{:?}", &y[..4]);
        // huge values stay finite where f32 holds them, and overflow to inf like f32
        let y = matmul(&vec![1e30; rows * k], rows, &p, None, 2);
        assert!(y.iter().all(|&v| (v - 64e30).abs() <= 64e30 * 1e-2));
        let y = matmul(&vec![1e37; rows * k], rows, &p, None, 2);
        assert!(y.iter().all(|&v| v == f32::INFINITY));
        // NaN and inf in a row poison that row only, as in f32
        let mut x = vec![1.0f32; rows * k];
        x[3 * k + 5] = f32::NAN;
        x[7 * k] = f32::INFINITY;
        let y = matmul(&x, rows, &p, None, 2);
        for t in 0..rows {
            for j in 0..n {
                let v = y[t * n + j];
                match t {
                    3 => assert!(v.is_nan()),
                    7 => assert_eq!(v, f32::INFINITY),
                    _ => assert_eq!(v, 64.0),
                }
            }
        }
    }
}
