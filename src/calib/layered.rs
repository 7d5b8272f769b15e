//! The forward pass one layer at a time over many sequences: the memory-lean
//! path calibration takes. [`super::Model`] holds every weight widened to f32
//! (4 bytes a weight: 3.4 GB peak for a 1.1 GB bf16 checkpoint); here only one
//! decoder layer is widened at a time, every sequence of a group goes through
//! it, and it is dropped before the next is read. The residual stream of the
//! group (`tokens × hidden` f32) is what persists between layers; groups are cut
//! so that it stays under [`GROUP_BYTES`], and the temporaries of one layer
//! under [`BATCH_BYTES`] by running its matmuls on batches of whole sequences.
//!
//! Every sequence's numbers are those of [`super::Model::forward`] on it alone:
//! the same per-row operations in the same order (`layer_forward`), taps
//! summed sequence by sequence. Only the matmuls run on the rows of several
//! sequences at once, and `gemm`'s kernels for a different row count may round
//! an f32 dot product differently in its last bits (measured: 1e-6 relative on
//! the taps); the tests check exact equality with one sequence per matmul and
//! that tolerance with several.
//!
//! Batching several short sequences into one matmul also makes the products
//! larger (more rows per packed weight panel), which is where llama-imatrix's
//! batches of `n_seq` chunks get their speed.

use super::forward::{
    add_positions, check_token, freq_factors, get_weight, head_name, layer_forward, matmul_wt,
    norm_in_place, rope_cache, rounded, ForwardConfig, Layer, LearnedPositions, RopeCache, TapSums,
    WeightSource,
};
use super::{CalibError, Matmul};
use crate::arch::Role;
use rayon::prelude::*;

/// Most bytes of residual stream (`tokens × hidden` f32) a group keeps across layers.
pub const GROUP_BYTES: usize = 64 << 20;
/// Most bytes of one layer's temporaries for a batch of sequences (q, k, v,
/// attention output, normed inputs, gate/up/SwiGLU products: about
/// `4 · (3·hidden + q + 2·kv + 3·ffn)` bytes a token).
pub const BATCH_BYTES: usize = 32 << 20;

/// One sequence to run: its tokens (positions from 0) and the accumulator its
/// taps go to (an index into the `taps` slice; calibration uses the language).
#[derive(Clone, Copy, Debug)]
pub struct Sequence<'a> {
    /// Its tokens.
    pub tokens: &'a [u32],
    /// Its accumulator's index.
    pub taps: usize,
}

/// What [`forward_layered`] reports after every layer of every group.
#[derive(Clone, Copy, Debug)]
pub struct LayerProgress {
    /// Tokens of the groups finished so far plus the share of the current one.
    pub tokens_done: u64,
    /// Tokens of all sequences.
    pub tokens_total: u64,
    /// Index of the last sequence of the current group.
    pub last_sequence: usize,
}

/// Memory limits of [`forward_layered`] (the defaults are the module's constants).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most bytes of residual stream a group keeps ([`GROUP_BYTES`]).
    pub group_bytes: usize,
    /// Most bytes of one batch's temporaries ([`BATCH_BYTES`]).
    pub batch_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            group_bytes: GROUP_BYTES,
            batch_bytes: BATCH_BYTES,
        }
    }
}

/// Cuts `lens` into consecutive runs whose cost `Σ len · per_token` stays under
/// `budget` (a run holds at least one item).
pub(super) fn runs(lens: &[usize], per_token: usize, budget: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut cost = 0usize;
    for (i, &n) in lens.iter().enumerate() {
        let c = n * per_token;
        if i > start && cost + c > budget {
            out.push((start, i));
            start = i;
            cost = 0;
        }
        cost += c;
    }
    if start < lens.len() {
        out.push((start, lens.len()));
    }
    out
}

/// Runs `seqs` through the model layer by layer. When `taps` is given,
/// sequence i's activations are summed into `taps[seqs[i].taps]` (its token
/// count too). When `logits` is given it is called once per sequence, in order,
/// with the sequence index and its logits (`len × vocab`, as
/// [`super::Model::forward`] returns them).
#[allow(clippy::too_many_arguments)]
pub fn forward_layered(
    cfg: &ForwardConfig,
    src: &dyn WeightSource,
    seqs: &[Sequence],
    taps: Option<&mut [TapSums]>,
    logits: Option<&mut dyn FnMut(usize, Vec<f32>)>,
    limits: Limits,
    threads: usize,
    progress: &mut dyn FnMut(&LayerProgress),
) -> Result<(), CalibError> {
    forward_layered_with(
        cfg,
        src,
        seqs,
        taps,
        logits,
        limits,
        Matmul::F32,
        threads,
        progress,
    )
}

/// [`forward_layered`] with the decoder layers' products done as `matmul`
/// says: with [`Matmul::Bf16`] every layer is packed for the AMX tile unit
/// after it is read (its f32 weights dropped), when the CPU has one; the
/// output head stays f32. The sequences go in groups whose residual streams
/// fit [`Limits::group_bytes`]: each group's embeddings
/// (`Layered::embedded`), its pass through every layer (`Layered::layers`),
/// then its final norm's taps and logits (`Layered::outputs`).
#[allow(clippy::too_many_arguments)]
pub fn forward_layered_with(
    cfg: &ForwardConfig,
    src: &dyn WeightSource,
    seqs: &[Sequence],
    mut taps: Option<&mut [TapSums]>,
    mut logits: Option<&mut dyn FnMut(usize, Vec<f32>)>,
    limits: Limits,
    matmul: Matmul,
    threads: usize,
    progress: &mut dyn FnMut(&LayerProgress),
) -> Result<(), CalibError> {
    cfg.validate()?;
    let h = cfg.hidden;
    if let Some(tp) = taps.as_deref() {
        if let Some(s) = seqs.iter().find(|s| s.taps >= tp.len()) {
            return Err(CalibError::TapsIndex {
                index: s.taps,
                accumulators: tp.len(),
            });
        }
    }
    let head = if logits.is_some() {
        Some(head_name(cfg, src)?)
    } else {
        None
    };
    let freq = freq_factors(cfg)?;
    let lens: Vec<usize> = seqs.iter().map(|s| s.tokens.len()).collect();
    let keys: Vec<usize> = seqs.iter().map(|s| s.taps).collect();
    let rope = rope_cache(cfg, &freq, lens.iter().copied().max().unwrap_or(0));
    let run = Layered {
        cfg,
        src,
        lens: &lens,
        keys: &keys,
        rope: &rope,
        batch_bytes: limits.batch_bytes,
        matmul,
        threads: threads.max(1),
    };
    let tokens_total: u64 = lens.iter().map(|&n| n as u64).sum();
    let mut tokens_done = 0u64;
    let with_output = taps
        .as_deref()
        .is_some_and(|t| t.first().is_some_and(|t| t.with_output));
    for (g0, g1) in runs(&lens, 4 * h, limits.group_bytes) {
        let group = &seqs[g0..g1];
        let gtokens: u64 = lens[g0..g1].iter().map(|&n| n as u64).sum();
        let mut x = run.embedded(group, &lens[g0..g1])?;
        run.layers(g0..g1, &mut x, taps.as_deref_mut(), &mut |li| {
            progress(&LayerProgress {
                tokens_done: tokens_done + (gtokens * (li as u64 + 1)) / cfg.n_layers as u64,
                tokens_total,
                last_sequence: g1 - 1,
            })
        })?;
        if let Some(t) = taps.as_deref_mut() {
            for s in group {
                t[s.taps].tokens += s.tokens.len() as u64;
            }
        }
        if with_output || logits.is_some() {
            let out_taps = taps.as_deref_mut().filter(|_| with_output);
            let cb = logits.as_deref_mut();
            run.outputs(group, g0, x, out_taps, cb.zip(head.as_deref()))?;
        }
        tokens_done += gtokens;
    }
    Ok(())
}

/// One worker's share of a layer in [`Layered::layer_by_workers`]: its
/// batches, its rows and its accumulators by index.
type Job<'x, 't> = (
    &'x [(usize, usize)],
    &'x mut [f32],
    Vec<(usize, &'t mut TapSums)>,
);

/// [`Layered::layers`] cuts a group's batches under `batch_bytes / BATCH_SHARE`
/// of temporaries, so that several can run at once within `batch_bytes`.
pub(super) const BATCH_SHARE: usize = 4;

/// A group's batches for [`Layered::layers`], as half-open ranges of its
/// sequences: each run of consecutive sequences with one accumulator (`keys`)
/// cut by [`runs`] under `budget` bytes of temporaries (`len · per_token` a
/// sequence, one sequence at least a batch). A batch never holds two
/// accumulators, and the cut depends on nothing but the sequences.
pub(super) fn batches(
    keys: &[usize],
    lens: &[usize],
    per_token: usize,
    budget: usize,
) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut s0 = 0;
    for s1 in 1..=keys.len() {
        if s1 == keys.len() || keys[s1] != keys[s0] {
            out.extend(
                runs(&lens[s0..s1], per_token, budget)
                    .into_iter()
                    .map(|(a, b)| (s0 + a, s0 + b)),
            );
            s0 = s1;
        }
    }
    out
}

/// How [`Layered::layers`] shares `batches` among workers running at once: as
/// many as `threads`, as the largest batch's temporaries fit in
/// `batch_bytes` and as there are runs of one accumulator, each a range of
/// whole runs with about equal tokens; one worker when an accumulator has two
/// runs (its sums would then depend on which ran first); none without batches.
pub(super) fn workers(
    batches: &[(usize, usize)],
    keys: &[usize],
    lens: &[usize],
    per_token: usize,
    batch_bytes: usize,
    threads: usize,
) -> Vec<std::ops::Range<usize>> {
    let tokens = |&(a, b): &(usize, usize)| lens[a..b].iter().sum::<usize>();
    if batches.is_empty() {
        return Vec::new();
    }
    // Runs of one accumulator: batch indices where a new run starts.
    let starts: Vec<usize> = (0..batches.len())
        .filter(|&i| i == 0 || keys[batches[i].0] != keys[batches[i - 1].0])
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let unique = starts.iter().all(|&i| seen.insert(keys[batches[i].0]));
    let largest = batches.iter().map(tokens).max().unwrap_or(0) * per_token;
    let n = threads
        .min(batch_bytes / largest.max(1))
        .min(starts.len())
        .max(1);
    if n == 1 || !unique {
        return std::iter::once(0..batches.len()).collect();
    }
    // Contiguous runs to each worker, cut near every 1/n of the tokens.
    let before: Vec<usize> = batches
        .iter()
        .scan(0, |acc, b| {
            let at = *acc;
            *acc += tokens(b);
            Some(at)
        })
        .collect();
    let total: usize = batches.iter().map(tokens).sum();
    let mut out = Vec::with_capacity(n);
    let mut from = 0;
    for &i in &starts[1..] {
        if out.len() + 1 < n && before[i] * n >= total * (out.len() + 1) {
            out.push(from..i);
            from = i;
        }
    }
    out.push(from..batches.len());
    out
}

/// Takes each sequence's index and logits ([`forward_layered`]'s `logits`).
type Logits<'f> = dyn FnMut(usize, Vec<f32>) + 'f;

/// What every step of [`forward_layered_with`] reads: the model, the
/// sequences' lengths and accumulator indices, and how the layers run.
struct Layered<'a> {
    cfg: &'a ForwardConfig,
    src: &'a dyn WeightSource,
    lens: &'a [usize],
    keys: &'a [usize],
    rope: &'a RopeCache,
    batch_bytes: usize,
    matmul: Matmul,
    threads: usize,
}

impl Layered<'_> {
    /// The first layer's input for `group` (its sequences' lengths `glens`):
    /// the embeddings of its tokens, read row by row, scaled, positions added.
    fn embedded(&self, group: &[Sequence], glens: &[usize]) -> Result<Vec<f32>, CalibError> {
        let (cfg, src, h) = (self.cfg, self.src, self.cfg.hidden);
        let gtokens: usize = glens.iter().sum();
        let ids = group
            .iter()
            .flat_map(|s| s.tokens.iter().map(|&t| check_token(cfg, t)))
            .collect::<Result<Vec<usize>, CalibError>>()?;
        let embed = cfg.global_name(Role::TokenEmbd)?;
        let mut x = src.rows(&embed, h, &ids)?;
        if x.len() != gtokens * h {
            return Err(CalibError::Weights(format!(
                "tensor {embed}: {} values read for {gtokens} tokens of width {h}",
                x.len()
            )));
        }
        cfg.scale_embeddings(&mut x);
        let max_len = glens.iter().copied().max().unwrap_or(0);
        if let Some(p) = LearnedPositions::load(cfg, src)? {
            add_positions(&mut x, glens, p.first(max_len)?, h);
        }
        Ok(x)
    }

    /// The sequences `g` (their rows `x`, back to back) through every
    /// decoder layer, each read once (packed for the tile unit under bf16)
    /// and run in batches of whole sequences of one accumulator
    /// ([`batches`]), their activations summed into `taps`; `done(li)` after
    /// layer `li`.
    ///
    /// The batches are cut the same way whatever the thread count, so the
    /// numbers do not depend on it. With several threads, when their
    /// temporaries fit `batch_bytes` together, several workers run at once
    /// ([`workers`]), each over its own accumulators' batches in order with
    /// its share of the threads: a small model's matmuls are too small for
    /// `gemm`'s threads to pay, and its other operations run on one thread.
    fn layers(
        &self,
        g: std::ops::Range<usize>,
        x: &mut [f32],
        mut taps: Option<&mut [TapSums]>,
        done: &mut dyn FnMut(usize),
    ) -> Result<(), CalibError> {
        let (cfg, src) = (self.cfg, self.src);
        let glens = &self.lens[g.clone()];
        let gkeys = &self.keys[g.clone()];
        let per_token = self.per_token();
        let batches = batches(gkeys, glens, per_token, self.batch_bytes / BATCH_SHARE);
        let work = workers(
            &batches,
            gkeys,
            glens,
            per_token,
            self.batch_bytes,
            self.threads,
        );
        for li in 0..cfg.n_layers {
            let layer = if self.matmul == Matmul::Bf16 {
                Layer::load_packed(cfg, src, li)?
            } else {
                Layer::load(cfg, src, li)?
            };
            self.layer_by_workers(
                &layer,
                li,
                &batches,
                &work,
                (glens, gkeys),
                x,
                taps.as_deref_mut(),
            );
            drop(layer);
            done(li);
        }
        Ok(())
    }

    /// Bytes of one layer's temporaries a token (q, k, v, attention output,
    /// normed inputs, gate/up/SwiGLU products).
    fn per_token(&self) -> usize {
        let cfg = self.cfg;
        4 * (3 * cfg.hidden + cfg.q_dim() + 2 * cfg.kv_dim() + 3 * cfg.ffn_active_width()).max(1)
    }

    /// One layer over the group (`group`: its sequences' lengths and
    /// accumulator indices; `x` its rows): worker w runs the batches
    /// `work[w]` (a range of `batches`, in order) on `threads / work.len()`
    /// threads, the workers at once.
    #[allow(clippy::too_many_arguments)]
    fn layer_by_workers(
        &self,
        layer: &Layer,
        li: usize,
        batches: &[(usize, usize)],
        work: &[std::ops::Range<usize>],
        (glens, gkeys): (&[usize], &[usize]),
        x: &mut [f32],
        taps: Option<&mut [TapSums]>,
    ) {
        let h = self.cfg.hidden;
        let threads = (self.threads / work.len().max(1)).max(1);
        // Each worker's rows of x and the accumulators of its batches (no
        // accumulator is in two workers' batches: `workers`).
        let mut by_key: Vec<Option<&mut TapSums>> = match taps {
            Some(t) => t.iter_mut().map(Some).collect(),
            None => Vec::new(),
        };
        let mut rest = x;
        let mut jobs = Vec::with_capacity(work.len());
        for w in work {
            let (s0, s1) = (batches[w.start].0, batches[w.end - 1].1);
            let n: usize = glens[s0..s1].iter().sum();
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut(n * h);
            rest = tail;
            let mut sums: Vec<(usize, &mut TapSums)> = Vec::new();
            for &k in &gkeys[s0..s1] {
                if let Some(t) = by_key.get_mut(k).and_then(Option::take) {
                    sums.push((k, t));
                }
            }
            jobs.push((&batches[w.clone()], mine, sums));
        }
        let run = |(bs, xw, mut sums): Job| {
            let mut row = 0;
            for &(b0, b1) in bs {
                let blens = &glens[b0..b1];
                let n: usize = blens.iter().sum();
                let zeros = vec![0usize; blens.len()];
                // A batch holds one accumulator's sequences (`batches`).
                let tp = sums
                    .iter_mut()
                    .find(|(k, _)| *k == gkeys[b0])
                    .map(|(_, t)| (std::slice::from_mut(&mut **t), &zeros[..]));
                let xb = &mut xw[row * h..(row + n) * h];
                layer_forward(self.cfg, layer, li, xb, blens, self.rope, tp, threads);
                row += n;
            }
        };
        if jobs.len() == 1 {
            jobs.into_iter().for_each(run);
        } else {
            jobs.into_par_iter().for_each(run);
        }
    }
    /// The group's final stream `x` (sequences `g0..`) through the final
    /// norm, in place (a group's stream can be the calibration's largest
    /// buffer): its Σx² into `taps`' output accumulators when given, and
    /// each sequence's logits (`head`, in f32) to `logits` when given.
    fn outputs<'f>(
        &self,
        group: &[Sequence],
        g0: usize,
        x: Vec<f32>,
        taps: Option<&mut [TapSums]>,
        logits: Option<(&mut Logits<'f>, &str)>,
    ) -> Result<(), CalibError> {
        let (cfg, src, h) = (self.cfg, self.src, self.cfg.hidden);
        let norm = super::forward::NormWeights::output(cfg, src)?;
        let mut xn = x;
        norm_in_place(cfg, &mut xn, &norm);
        if let Some(t) = taps {
            let mut row = 0;
            for s in group {
                let n = s.tokens.len();
                if let Some(out) = t[s.taps].output_mut() {
                    super::forward::accumulate_sq(out, &xn[row * h..(row + n) * h], h);
                }
                row += n;
            }
        }
        if let Some((cb, head)) = logits {
            let w = get_weight(src, head, cfg.vocab * h)?;
            let act = src.activation(head);
            let mut row = 0;
            for (i, s) in group.iter().enumerate() {
                let n = s.tokens.len();
                let part = &xn[row * h..(row + n) * h];
                let mut y = matmul_wt(
                    &rounded(part, h, act),
                    n,
                    h,
                    &w,
                    cfg.vocab,
                    None,
                    self.threads,
                );
                cfg.scale_logits(&mut y);
                cb(g0 + i, y);
                row += n;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{
        gemma2::GEMMA2,
        gemma3::GEMMA3,
        granite::GRANITE,
        llama::LLAMA,
        moe::{MIXTRAL, QWEN2MOE},
        olmo2::OLMO2,
        phi3::PHI3,
        qwen2::QWEN2,
        qwen3::QWEN3,
        smollm3::SMOLLM3,
    };
    use crate::calib::forward::Model;
    use crate::calib::testmodel::{cfg, weights};

    /// Token ids of sequences of lengths `lens`: `(i·a + j·b) mod vocab` at
    /// position j of sequence i.
    fn token_rows(lens: &[usize], (a, b): (usize, usize), vocab: usize) -> Vec<Vec<u32>> {
        lens.iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| ((i * a + j * b) % vocab) as u32).collect())
            .collect()
    }

    /// The sequences `toks`, every `per` consecutive ones to one accumulator.
    fn sequences(toks: &[Vec<u32>], per: usize) -> Vec<Sequence<'_>> {
        toks.iter()
            .enumerate()
            .map(|(i, t)| Sequence {
                tokens: t,
                taps: i / per,
            })
            .collect()
    }

    /// Layer by layer, batched and grouped in every way (tiny limits force one
    /// sequence per batch and per group; large ones put everything together),
    /// gives the taps and logits of the whole-model pass sequence by sequence: exactly
    /// with one sequence per matmul, to float rounding with several.
    #[test]
    fn layered_equals_the_whole_model_pass() {
        for (family, tied) in [
            (&LLAMA, false),
            (&QWEN2, true),
            (&QWEN3, false),
            (&GRANITE, true),
            (&OLMO2, false),
            (&GEMMA2, true),
            (&GEMMA3, true),
            (&PHI3, false),
            (&SMOLLM3, true),
            (&QWEN2MOE, false),
            (&MIXTRAL, true),
        ] {
            let c = cfg(family, tied);
            let w = weights(&c, 7 + tied as u64);
            let model = Model::load(c.clone(), &w, 2).unwrap();
            let lens = [17usize, 5, 33, 8, 2, 40];
            let toks = token_rows(&lens, (7, 13), c.vocab);
            // Sequences 0-2 to accumulator 0, 3-5 to accumulator 1.
            let seqs = sequences(&toks, 3);
            let mut want = vec![TapSums::new(&c, true), TapSums::new(&c, true)];
            let mut want_logits = Vec::new();
            for s in &seqs {
                model
                    .forward(s.tokens, Some(&mut want[s.taps]), false)
                    .unwrap();
                want_logits.push(model.forward(s.tokens, None, true).unwrap().unwrap());
            }
            for limits in [
                Limits {
                    group_bytes: 1,
                    batch_bytes: 1,
                },
                Limits {
                    group_bytes: 40 * 64 * 4,
                    batch_bytes: 50 * 1000,
                },
                Limits::default(),
            ] {
                let mut got = vec![TapSums::new(&c, true), TapSums::new(&c, true)];
                let mut got_logits = vec![Vec::new(); seqs.len()];
                let mut last = None;
                forward_layered(
                    &c,
                    &w,
                    &seqs,
                    Some(&mut got),
                    Some(&mut |i, l| got_logits[i] = l),
                    limits,
                    2,
                    &mut |p| last = Some((p.tokens_done, p.tokens_total)),
                )
                .unwrap();
                let total = lens.iter().sum::<usize>() as u64;
                assert_eq!(last, Some((total, total)), "{family:?} {limits:?}");
                if limits.batch_bytes == 1 {
                    // One sequence per matmul: the very same operations.
                    assert_eq!(got, want, "{family:?} {limits:?}: taps differ");
                    assert_eq!(
                        got_logits, want_logits,
                        "{family:?} {limits:?}: logits differ"
                    );
                    continue;
                }
                // Batched matmuls: gemm's kernels for more rows may order a sum
                // differently, so the last bits of an f32 product can move. A
                // GELU read from ggml's f16 table turns such a bit into a step of
                // the table (2⁻¹¹ relative) now and then.
                // A mixture's experts multiply whichever rows were routed to
                // them, as many as the batch holds, so their products change
                // kernels (and the order of their sums) with the batching far
                // more than the dense ones (qwen2moe: 1.4e-5).
                let tol = match c.block().ffn {
                    crate::arch::Ffn::Gated {
                        act: crate::arch::Act::Gelu,
                    }
                    | crate::arch::Ffn::Moe { .. } => 1e-4,
                    _ => 1e-5,
                };
                for (a, b) in got.iter().zip(&want) {
                    assert_eq!(a.tokens, b.tokens);
                    for (x, y) in a.sums.iter().flatten().zip(b.sums.iter().flatten()) {
                        assert!(
                            (x - y).abs() <= tol * y.abs(),
                            "{family:?} {limits:?}: {x} vs {y}"
                        );
                    }
                }
                for (a, b) in got_logits.iter().zip(&want_logits) {
                    assert_eq!(a.len(), b.len());
                    for (x, y) in a.iter().zip(b) {
                        assert!(
                            (x - y).abs() <= 10.0 * tol as f32 * (1.0 + y.abs()),
                            "{family:?} {limits:?}: {x} vs {y}"
                        );
                    }
                }
            }
        }
    }

    /// On the AMX tile unit the taps and logits stay within bf16's rounding
    /// of the f32 pass (both operands of every product rounded to 8 bits):
    /// each tap within 2e-2 relative of its tensor's largest, 1e-3 median.
    #[test]
    fn bf16_tiles_stay_close_to_the_f32_pass() {
        if !crate::calib::amx::available() {
            return eprintln!("no AMX on this machine: the bf16 pass is not exercised");
        }
        for (family, tied) in [(&LLAMA, false), (&QWEN2, true)] {
            let c = cfg(family, tied);
            let w = weights(&c, 21);
            let toks: Vec<Vec<u32>> = [40usize, 17, 64]
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    (0..n)
                        .map(|j| ((i * 11 + j * 5) % c.vocab) as u32)
                        .collect()
                })
                .collect();
            let seqs: Vec<Sequence> = toks
                .iter()
                .map(|t| Sequence { tokens: t, taps: 0 })
                .collect();
            let run = |m: Matmul| {
                let mut taps = vec![TapSums::new(&c, true)];
                let mut logits = vec![Vec::new(); seqs.len()];
                forward_layered_with(
                    &c,
                    &w,
                    &seqs,
                    Some(&mut taps),
                    Some(&mut |i, l| logits[i] = l),
                    Limits::default(),
                    m,
                    2,
                    &mut |_| {},
                )
                .unwrap();
                (taps, logits)
            };
            let (t32, l32) = run(Matmul::F32);
            let (t16, l16) = run(Matmul::Bf16);
            assert_ne!(t32, t16, "{family:?}: the bf16 pass did not run");
            let mut rels = Vec::new();
            for (a, b) in t16[0].sums.iter().zip(&t32[0].sums) {
                let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
                for (x, y) in a.iter().zip(b) {
                    let rel = (x - y).abs() / scale.max(1e-30);
                    assert!(rel <= 2e-2, "{family:?}: tap {x} vs {y}");
                    rels.push(rel);
                }
            }
            rels.sort_by(f64::total_cmp);
            assert!(
                rels[rels.len() / 2] <= 1e-3,
                "{family:?}: median {}",
                rels[rels.len() / 2]
            );
            for (a, b) in l16.iter().zip(&l32) {
                let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (x, y) in a.iter().zip(b) {
                    assert!(
                        (x - y).abs() <= 3e-2 * scale,
                        "{family:?}: logit {x} vs {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn runs_respect_the_budget() {
        assert_eq!(runs(&[3, 3, 3, 3], 1, 6), vec![(0, 2), (2, 4)]);
        assert_eq!(runs(&[3, 3, 3, 3], 2, 100), vec![(0, 4)]);
        // An item over the budget still forms a run of its own.
        assert_eq!(runs(&[10, 1], 1, 5), vec![(0, 1), (1, 2)]);
        assert!(runs(&[], 1, 5).is_empty());
    }

    #[test]
    fn batches_hold_one_accumulator_and_workers_share_them_out() {
        let keys = [0, 0, 0, 1, 1, 2, 3, 3, 3, 3];
        let lens = [4, 4, 4, 2, 9, 5, 1, 1, 1, 1];
        let b = batches(&keys, &lens, 1, 8);
        assert_eq!(
            b,
            vec![(0, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 10)],
            "cut within each accumulator's run only"
        );
        for threads in 1..=8 {
            for budget in [1, 9, 18, 27, 100] {
                let w = workers(&b, &keys, &lens, 1, budget, threads);
                // Every batch once, in order, in contiguous ranges.
                assert_eq!(w.first().map(|r| r.start), Some(0));
                assert_eq!(w.last().map(|r| r.end), Some(b.len()));
                assert!(w.windows(2).all(|p| p[0].end == p[1].start));
                assert!(w.iter().all(|r| r.start < r.end));
                // No more than the threads, nor than fit the budget together.
                assert!(w.len() <= threads.max(1));
                assert!(
                    w.len() == 1 || 9 * w.len() <= budget,
                    "{threads} {budget}: {w:?}"
                );
                // No accumulator in two workers.
                let key_sets: Vec<std::collections::BTreeSet<usize>> = w
                    .iter()
                    .map(|r| b[r.clone()].iter().map(|&(s, _)| keys[s]).collect())
                    .collect();
                for (i, a) in key_sets.iter().enumerate() {
                    for c in &key_sets[i + 1..] {
                        assert!(a.is_disjoint(c), "{w:?}");
                    }
                }
            }
        }
        assert_eq!(workers(&b, &keys, &lens, 1, 100, 4).len(), 4);
        // An accumulator in two runs: one worker, so its sums keep their order.
        let keys2 = [0, 0, 1, 1, 0, 0];
        let lens2 = [1; 6];
        let b2 = batches(&keys2, &lens2, 1, 100);
        assert_eq!(b2, vec![(0, 2), (2, 4), (4, 6)]);
        assert_eq!(workers(&b2, &keys2, &lens2, 1, 100, 4), vec![0..3]);
        assert!(workers(&[], &[], &[], 1, 100, 4).is_empty());
    }

    /// The thread count changes who runs what, never a number: taps and
    /// logits are bit for bit those of one thread, for dense and mixture
    /// blocks, whether the workers run side by side or not.
    #[test]
    fn taps_and_logits_do_not_depend_on_the_thread_count() {
        for (family, tied) in [(&LLAMA, false), (&GEMMA3, true), (&QWEN2MOE, false)] {
            let c = cfg(family, tied);
            let w = weights(&c, 11);
            let lens = [17usize, 5, 33, 8, 2, 40, 9, 12];
            let toks = token_rows(&lens, (5, 11), c.vocab);
            let seqs = sequences(&toks, 2);
            let run = |threads: usize, limits: Limits| {
                let mut taps: Vec<TapSums> = (0..4).map(|_| TapSums::new(&c, true)).collect();
                let mut logits = vec![Vec::new(); seqs.len()];
                forward_layered(
                    &c,
                    &w,
                    &seqs,
                    Some(&mut taps),
                    Some(&mut |i, l| logits[i] = l),
                    limits,
                    threads,
                    &mut |_| {},
                )
                .unwrap();
                (taps, logits)
            };
            for limits in [
                Limits::default(),
                Limits {
                    group_bytes: GROUP_BYTES,
                    batch_bytes: 30 * 1000,
                },
            ] {
                let one = run(1, limits);
                for threads in [2, 3, 4] {
                    assert!(
                        run(threads, limits) == one,
                        "{family:?} {threads} {limits:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let c = cfg(&LLAMA, false);
        let w = weights(&c, 3);
        let mut t = vec![TapSums::new(&c, false)];
        // The error of one sequence through `src` (every case below must fail).
        let mut error = |src: &dyn WeightSource, tokens: &[u32], taps: usize| -> String {
            let seqs = [Sequence { tokens, taps }];
            forward_layered(
                &c,
                src,
                &seqs,
                Some(&mut t),
                None,
                Limits::default(),
                1,
                &mut |_| {},
            )
            .unwrap_err()
            .to_string()
        };
        let e = error(&w, &[1, 99], 0);
        assert!(e.contains("token id 99"), "{e}");
        let e = error(&w, &[1, 2], 3);
        assert!(e.contains("taps index 3"), "{e}");
        let mut missing = w.clone();
        missing.remove("model.layers.2.mlp.up_proj.weight");
        let e = error(&missing, &[1, 2], 0);
        assert!(e.contains("model.layers.2.mlp.up_proj.weight"), "{e}");
    }
}
