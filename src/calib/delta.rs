//! The measured sensitivity's decoder layers from the change of each matmul's
//! input (the engine of [`super::patched`] with `--matmul bf16`).
//!
//! A group's streams differ from the reference's by the small change its
//! replaced weights made. Rounding a whole matmul input to bf16 would move a
//! product by ~2^-9 of itself, more than a Q8_0 patch moves it; rounding only
//! the change moves it by ~2^-9 *of the change*. So the reference runs each
//! layer in f32 and records ([`Recorder`]) every matmul's input `x_r` and
//! output `y_r = W·r(x_r) (+ b)` (`r`: the input rounding of the weight's type,
//! [`super::actquant::ActQuant`]); a group's layer then runs its norms, RoPE,
//! attention and SwiGLU in f32 on its own values as before, and only its
//! matmuls become ([`Delta`])
//!
//! `y = y_r + W·(r'(x) − r(x_r)) + E·r'(x)`
//!
//! with both products in bf16 on the tile unit: `W` the layer's weight, `r'`
//! the group's input rounding, and `E = W' − W` the change of a weight the
//! group replaces by `W'` (no term for the others). This equals `W'·r'(x)`,
//! the f32 pass's product, but for bf16 rounding of the two small terms.

use super::actquant::ActQuant;
use super::amx::{self, PackedBf16};
use super::forward::{add_in_place, get_weight, matmul_wt, rounded, Products, WeightSource};
use super::CalibError;
use crate::arch::{BlockSpec, Role};
use std::borrow::Cow;

/// Which recorded input the matmul of role `role` reads (its [`crate::arch::Input`]'s
/// index): q, k and v share the normed stream, gate and up the normed residual.
fn site(block: &BlockSpec, role: Role) -> usize {
    block.input_index(block.matmuls[block.index(role)].input)
}

/// The first matmul (index in the block) reading each input, in input order.
fn site_matmuls(block: &BlockSpec) -> Vec<usize> {
    block
        .inputs()
        .iter()
        .map(|&i| {
            block
                .matmuls
                .iter()
                .position(|m| m.input == i)
                .unwrap_or_default()
        })
        .collect()
}

/// The reference's matmul inputs (by [`site`]) and outputs (by the block's
/// matmul order) of one layer, every token of every sequence, in the
/// reference stream's row order.
#[derive(Default)]
pub(super) struct Tape {
    inputs: Vec<Vec<f32>>,
    outputs: Vec<Vec<f32>>,
}

impl Tape {
    /// Bytes it would hold for `tokens` tokens of layers of `block` whose
    /// matmuls have the `(n, k)` of `dims` ([`super::forward::matmul_dims`]).
    pub fn bytes_for(block: &BlockSpec, tokens: usize, dims: &[(usize, usize)]) -> usize {
        let inputs: usize = site_matmuls(block).iter().map(|&s| dims[s].1).sum();
        let outputs: usize = dims.iter().map(|d| d.0).sum();
        4 * tokens * (inputs + outputs)
    }

    /// Empty, with room for exactly `tokens` tokens of such layers: the
    /// record grows by appending batches, and doubling vectors would hold up
    /// to twice its size and leave the heap their freed smaller copies.
    pub fn with_capacity(block: &BlockSpec, tokens: usize, dims: &[(usize, usize)]) -> Tape {
        Tape {
            inputs: site_matmuls(block)
                .iter()
                .map(|&s| Vec::with_capacity(tokens * dims[s].1))
                .collect(),
            outputs: dims
                .iter()
                .map(|d| Vec::with_capacity(tokens * d.0))
                .collect(),
        }
    }
}

/// A weight as [`Delta`] multiplies by it: packed for the tile unit, or
/// (tests) in f32 with its row count.
pub(super) enum DeltaWeight {
    Bf16(PackedBf16),
    F32(Vec<f32>, usize),
}

impl DeltaWeight {
    /// `w` (`n × k`), packed unless `exact`.
    pub fn new(w: Vec<f32>, n: usize, k: usize, exact: bool) -> DeltaWeight {
        if exact {
            DeltaWeight::F32(w, n)
        } else {
            DeltaWeight::Bf16(PackedBf16::pack(&w, n, k))
        }
    }

    pub fn mat(&self) -> Mat<'_> {
        match self {
            DeltaWeight::Bf16(p) => Mat::Bf16(p),
            DeltaWeight::F32(w, n) => Mat::F32(w, *n),
        }
    }
}

/// The reference's products in f32, each input and output appended to the
/// tape. A slot's weight is read from `src` when its product comes and
/// dropped after it, so no whole layer is ever held in f32; the first time,
/// it is kept in `held` ([`DeltaWeight::new`]) for the groups' products.
pub(super) struct Recorder<'a> {
    pub src: &'a dyn WeightSource,
    pub block: &'a BlockSpec,
    /// HF names of the layer's matmul weights, in the block's order.
    pub names: &'a [String],
    pub act: Vec<ActQuant>,
    pub tape: Tape,
    pub held: Vec<Option<DeltaWeight>>,
    pub exact: bool,
    pub threads: usize,
    /// The first weight that could not be read (its products are zeros).
    pub error: Option<CalibError>,
    /// Per matmul slot, a mixture's stacked role's HF tensor of each expert
    /// (empty for the other slots).
    pub expert_names: Vec<Vec<String>>,
}

impl Products for Recorder<'_> {
    fn products(
        &mut self,
        slots: &[(Role, usize, Option<&[f32]>)],
        x: &[f32],
        rows: usize,
        k: usize,
    ) -> Vec<Vec<f32>> {
        if let Some(&(r, _, _)) = slots.first() {
            self.tape.inputs[site(self.block, r)].extend_from_slice(x);
        }
        let mut ys = Vec::with_capacity(slots.len());
        for &(r, n, bias) in slots {
            let s = self.block.index(r);
            let w = match get_weight(self.src, &self.names[s], n * k) {
                Ok(w) => w,
                Err(e) => {
                    self.error.get_or_insert(e);
                    vec![0.0; n * k]
                }
            };
            let y = matmul_wt(
                &rounded(x, k, self.act[s]),
                rows,
                k,
                &w,
                n,
                bias,
                self.threads,
            );
            self.tape.outputs[s].extend_from_slice(&y);
            if self.held[s].is_none() {
                self.held[s] = Some(DeltaWeight::new(w, n, k, self.exact));
            }
            ys.push(y);
        }
        ys
    }

    /// In f32 with the expert's weight read from the source, not recorded: a
    /// group's routing may send an expert other rows than the reference's,
    /// so the reference's expert products would not serve it (a mixture's
    /// measurement runs f32 layers: `super::patched`).
    fn experts(
        &mut self,
        roles: &[(Role, (usize, usize))],
        expert: usize,
        x: &[f32],
        rows: usize,
    ) -> Vec<Vec<f32>> {
        roles
            .iter()
            .map(|&(r, (n, k))| {
                let s = self.block.index(r);
                let name = self.expert_names[s].get(expert).map(String::as_str);
                let w = match name.map(|name| get_weight(self.src, name, n * k)) {
                    Some(Ok(w)) => w,
                    Some(Err(e)) => {
                        self.error.get_or_insert(e);
                        vec![0.0; n * k]
                    }
                    None => {
                        self.error.get_or_insert(CalibError::Internal(format!(
                            "no expert {expert} of {r:?} to record"
                        )));
                        vec![0.0; n * k]
                    }
                };
                matmul_wt(
                    &rounded(x, k, self.act[s]),
                    rows,
                    k,
                    &w,
                    n,
                    None,
                    self.threads,
                )
            })
            .collect()
    }
}

/// A weight the change of an input is multiplied by.
#[derive(Clone, Copy)]
pub(super) enum Mat<'a> {
    /// Packed for the tile unit: the product in bf16.
    Bf16(&'a PackedBf16),
    /// `n × k` in f32 (the tests' exact form of the same sums).
    F32(&'a [f32], usize),
}

impl Mat<'_> {
    /// `x · Wᵀ` of `x` (`rows × k`).
    fn times(self, x: &[f32], rows: usize, k: usize, threads: usize) -> Vec<f32> {
        match self {
            Mat::Bf16(p) => amx::matmul(x, rows, p, None, threads),
            Mat::F32(w, n) => matmul_wt(x, rows, k, w, n, None, threads),
        }
    }

    /// `x · W_eᵀ` with expert `e`'s `n` rows of a stacked weight: in f32 its
    /// rows alone; packed, the columns of the whole product.
    fn expert_times(
        self,
        e: usize,
        n: usize,
        x: &[f32],
        rows: usize,
        k: usize,
        threads: usize,
    ) -> Vec<f32> {
        match self {
            Mat::F32(w, _) => {
                matmul_wt(x, rows, k, &w[e * n * k..(e + 1) * n * k], n, None, threads)
            }
            Mat::Bf16(p) => {
                let all = amx::matmul(x, rows, p, None, threads);
                let width = all.len() / rows.max(1);
                all.chunks_exact(width.max(1))
                    .flat_map(|r| &r[e * n..(e + 1) * n])
                    .copied()
                    .collect()
            }
        }
    }
}

/// What one group's layer computes from a [`Tape`]: the layer's weights,
/// the reference's and the group's input roundings, and the change `E` of
/// every weight the group replaces (each in the block's matmul order).
#[derive(Clone)]
pub(super) struct DeltaLayer<'a> {
    pub block: &'a BlockSpec,
    pub tape: &'a Tape,
    pub w: &'a [Mat<'a>],
    pub act_ref: Vec<ActQuant>,
    pub act: Vec<ActQuant>,
    pub change: Vec<Option<Mat<'a>>>,
    pub threads: usize,
}

/// A [`DeltaLayer`] on one batch of sequences: `segs` holds, for each of the
/// batch's sequences in order, its first row and row count in the reference.
pub(super) struct Delta<'a> {
    pub layer: &'a DeltaLayer<'a>,
    pub segs: &'a [(usize, usize)],
}

/// The rows of `segs` of `v` (`width` values a row), back to back: borrowed
/// when the sequences follow each other in `v` (a group's batch in the
/// reference's order), else gathered.
fn batch_rows<'v>(v: &'v [f32], width: usize, segs: &[(usize, usize)]) -> Cow<'v, [f32]> {
    let consecutive = segs.windows(2).all(|w| w[1].0 == w[0].0 + w[0].1);
    let r0 = segs.first().map_or(0, |s| s.0);
    let n: usize = segs.iter().map(|s| s.1).sum();
    if consecutive {
        return Cow::Borrowed(&v[r0 * width..(r0 + n) * width]);
    }
    let mut out = Vec::with_capacity(n * width);
    for &(r0, n) in segs {
        out.extend_from_slice(&v[r0 * width..(r0 + n) * width]);
    }
    Cow::Owned(out)
}

impl Products for Delta<'_> {
    fn products(
        &mut self,
        roles: &[(Role, usize, Option<&[f32]>)],
        x: &[f32],
        rows: usize,
        k: usize,
    ) -> Vec<Vec<f32>> {
        let d = self.layer;
        let Some(&(first, _, _)) = roles.first() else {
            return Vec::new();
        };
        let xr = batch_rows(&d.tape.inputs[site(d.block, first)], k, self.segs);
        // Each role's matmul index in the block, with its rows and bias.
        let slots: Vec<(usize, usize, Option<&[f32]>)> = roles
            .iter()
            .map(|&(r, n, b)| (d.block.index(r), n, b))
            .collect();
        // The group's rounded input and its change from the reference's, one
        // per distinct pair of roundings (all slots share one but for a
        // replaced weight of another type): (the group's and the reference's
        // rounding, the group's rounded input, the change, its slots' indices).
        type Input<'x> = ((ActQuant, ActQuant), Cow<'x, [f32]>, Vec<f32>, Vec<usize>);
        let mut inputs: Vec<Input> = Vec::new();
        for (i, &(s, _, _)) in slots.iter().enumerate() {
            let key = (d.act[s], d.act_ref[s]);
            match inputs.iter_mut().find(|e| e.0 == key) {
                Some(e) => e.3.push(i),
                None => {
                    let u = rounded(x, k, key.0);
                    let dx: Vec<f32> = u
                        .iter()
                        .zip(rounded(&xr, k, key.1).iter())
                        .map(|(a, b)| a - b)
                        .collect();
                    inputs.push((key, u, dx, vec![i]));
                }
            }
        }
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); slots.len()];
        for (_, u, dx, idx) in &inputs {
            let packed: Option<Vec<_>> = idx
                .iter()
                .map(|&i| match d.w[slots[i].0] {
                    Mat::Bf16(p) => Some((p, None)),
                    Mat::F32(..) => None,
                })
                .collect();
            let ys = match packed {
                // One bf16 conversion of the input for all of them.
                Some(ws) => amx::matmul_many(dx, rows, &ws, d.threads),
                None => idx
                    .iter()
                    .map(|&i| d.w[slots[i].0].times(dx, rows, k, d.threads))
                    .collect(),
            };
            for (&i, mut y) in idx.iter().zip(ys) {
                let (s, n, _) = slots[i];
                add_in_place(&mut y, &batch_rows(&d.tape.outputs[s], n, self.segs));
                // E·r'(x) of a replaced weight, on the input already rounded.
                if let Some(e) = d.change[s] {
                    add_in_place(&mut y, &e.times(u, rows, k, d.threads));
                }
                out[i] = y;
            }
        }
        out
    }

    /// `W'_e · r'(x)` whole, from the layer's stacked weight and the group's
    /// change of it: a group's routing may send an expert rows the reference
    /// did not, so no recorded product serves as the base. Packed, the whole
    /// product is rounded to bf16 (a mixture's measurement runs f32 layers:
    /// `super::patched`).
    fn experts(
        &mut self,
        roles: &[(Role, (usize, usize))],
        expert: usize,
        x: &[f32],
        rows: usize,
    ) -> Vec<Vec<f32>> {
        let d = self.layer;
        roles
            .iter()
            .map(|&(r, (n, k))| {
                let s = d.block.index(r);
                let u = rounded(x, k, d.act[s]);
                let mut y = d.w[s].expert_times(expert, n, &u, rows, k, d.threads);
                if let Some(e) = d.change[s] {
                    add_in_place(&mut y, &e.expert_times(expert, n, &u, rows, k, d.threads));
                }
                y
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in about [-1, 1).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
            })
            .collect()
    }

    /// `x · wᵀ` in f64.
    fn product(x: &[f32], rows: usize, k: usize, w: &[f32], n: usize) -> Vec<f64> {
        let mut y = vec![0f64; rows * n];
        for r in 0..rows {
            for j in 0..n {
                y[r * n + j] = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[j * k + i] as f64)
                    .sum();
            }
        }
        y
    }

    /// A group's expert products are those of the expert's rows of the
    /// stacked weight and of its change: exactly in f32, to bf16 of the
    /// whole product packed; the reference's, of the expert's own tensor.
    #[test]
    fn expert_products_take_the_experts_rows() {
        let (k, n, ne, rows) = (64, 32, 3, 5);
        let block = &crate::arch::moe::QWEN3MOE.block;
        let s = block.index(Role::FfnUpExps);
        let w = noise(ne * n * k, 5);
        let e: Vec<f32> = noise(ne * n * k, 6).iter().map(|v| 0.05 * v).collect();
        let x = noise(rows * k, 7);
        let m = block.matmuls.len();
        let tape = Tape::with_capacity(block, 0, &vec![(0, 0); m]);
        let (pw, pe) = (
            PackedBf16::pack(&w, ne * n, k),
            PackedBf16::pack(&e, ne * n, k),
        );
        for packed in [false, true] {
            if packed && !amx::available() {
                continue;
            }
            let mut ws = vec![Mat::F32(&w, ne * n); m];
            let mut change = vec![None; m];
            if packed {
                ws[s] = Mat::Bf16(&pw);
                change[s] = Some(Mat::Bf16(&pe));
            } else {
                change[s] = Some(Mat::F32(&e, ne * n));
            }
            let layer = DeltaLayer {
                block,
                tape: &tape,
                w: &ws,
                act_ref: vec![ActQuant::F32; m],
                act: vec![ActQuant::F32; m],
                change,
                threads: 2,
            };
            for ex in 0..ne {
                let y = Delta {
                    layer: &layer,
                    segs: &[],
                }
                .experts(&[(Role::FfnUpExps, (n, k))], ex, &x, rows)
                .pop()
                .unwrap();
                let r = ex * n * k..(ex + 1) * n * k;
                let w2: Vec<f32> = w[r.clone()].iter().zip(&e[r]).map(|(a, b)| a + b).collect();
                let want = product(&x, rows, k, &w2, n);
                let scale = want.iter().map(|v| v * v).sum::<f64>().sqrt();
                let err = want
                    .iter()
                    .zip(&y)
                    .map(|(a, &b)| (a - b as f64).powi(2))
                    .sum::<f64>()
                    .sqrt();
                let tol = if packed { 2f64.powi(-7) } else { 1e-5 };
                assert!(err < tol * scale, "packed {packed} expert {ex}: {err:.2e}");
            }
        }
        // The reference's: the expert's own HF tensor, read from the source.
        let names: Vec<String> = (0..ne).map(|x| format!("e{x}")).collect();
        let src: std::collections::HashMap<String, Vec<f32>> = names
            .iter()
            .enumerate()
            .map(|(x, nm)| (nm.clone(), w[x * n * k..(x + 1) * n * k].to_vec()))
            .collect();
        let mut expert_names = vec![Vec::new(); m];
        expert_names[s] = names;
        let mut rec = Recorder {
            src: &src,
            block,
            names: &vec![String::new(); m],
            act: vec![ActQuant::F32; m],
            tape: Tape::with_capacity(block, 0, &vec![(0, 0); m]),
            held: (0..m).map(|_| None).collect(),
            exact: true,
            threads: 2,
            error: None,
            expert_names,
        };
        let y = rec
            .experts(&[(Role::FfnUpExps, (n, k))], 2, &x, rows)
            .pop()
            .unwrap();
        let want = product(&x, rows, k, &w[2 * n * k..3 * n * k], n);
        for (a, &b) in want.iter().zip(&y) {
            assert!((a - b as f64).abs() < 1e-4, "{a} {b}");
        }
        assert!(rec.error.is_none());
        rec.experts(&[(Role::FfnUpExps, (n, k))], 3, &x, rows);
        assert!(rec.error.is_some(), "an expert the layer lacks is an error");
    }

    /// A group's products from the tape equal `W'·r'(x)` to ~2^-8 of their
    /// change from the reference's (the change rounded to bf16, not the
    /// product): with and without a replaced weight, other input roundings,
    /// and batches of sequences out of the reference's order.
    #[test]
    fn delta_products_are_accurate_to_bf16_of_the_change() {
        if !amx::available() {
            return;
        }
        let (k, n, tokens) = (96, 80, 12);
        let w = noise(n * k, 1);
        let xr = noise(tokens * k, 2);
        let yr = product(&xr, tokens, k, &w, n);
        let block = &crate::arch::llama::LLAMA.block;
        let mut tape = Tape::with_capacity(block, 0, &[(0, 0); 7]);
        tape.inputs[0] = xr.clone();
        tape.outputs[0] = yr.iter().map(|&v| v as f32).collect();
        let pw = PackedBf16::pack(&w, n, k);
        let packed = [Mat::Bf16(&pw); 7];
        // A replacement 3% off the weight, and the group's stream 1% off the reference's.
        let e: Vec<f32> = noise(n * k, 3).iter().map(|v| 0.03 * v).collect();
        let w2: Vec<f32> = w.iter().zip(&e).map(|(a, b)| a + b).collect();
        let pe = PackedBf16::pack(&e, n, k);
        let dx = noise(tokens * k, 4);
        let x: Vec<f32> = xr.iter().zip(&dx).map(|(a, b)| a + 0.01 * b).collect();
        for (replaced, act) in [
            (false, ActQuant::F32),
            (true, ActQuant::F32),
            (true, ActQuant::Q8_0),
            (false, ActQuant::F16),
        ] {
            let mut layer = DeltaLayer {
                block,
                tape: &tape,
                w: &packed,
                act_ref: vec![ActQuant::F32; 7],
                act: vec![ActQuant::F32; 7],
                change: vec![None; 7],
                threads: 2,
            };
            layer.act[0] = act;
            if replaced {
                layer.change[0] = Some(Mat::Bf16(&pe));
            }
            // Sequences (5, 7) of the reference, taken in the other order.
            let segs = [(5, 7), (0, 5)];
            let xg: Vec<f32> = [&x[5 * k..], &x[..5 * k]].concat();
            let y = Delta {
                layer: &layer,
                segs: &segs,
            }
            .products(&[(Role::AttnQ, n, None)], &xg, tokens, k)
            .pop()
            .unwrap();
            let ww = if replaced { &w2 } else { &w };
            let want = product(&rounded(&xg, k, act), tokens, k, ww, n);
            let yr: Vec<f64> = [&yr[5 * n..], &yr[..5 * n]].concat();
            let change: f64 = want.iter().zip(&yr).map(|(a, b)| (a - b).powi(2)).sum();
            let err: f64 = want
                .iter()
                .zip(&y)
                .map(|(a, &b)| (a - b as f64).powi(2))
                .sum();
            let rel = (err / change).sqrt();
            assert!(
                rel < 2f64.powi(-8),
                "replaced {replaced} {act:?}: {rel:.2e}"
            );
        }
    }
}
