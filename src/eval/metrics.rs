//! The per-token statistics of `llama-perplexity --kl-divergence`
//! (`log_softmax(..., kl_divergence_result &)` and `kl_divergence` in
//! tools/perplexity/perplexity.cpp): negative log-likelihood of the next token
//! under the reference and under the quantized model, KL divergence
//! `Σ_i p_i (log p_i − log q_i)` of the quantized distribution q from the
//! reference p, and whether both put their maximum on the same token.
//!
//! llama.cpp stores the reference log-probabilities as 16-bit integers over the
//! top 16 nats and drops terms with `log p_i ≤ −16`; we keep them as f32 and sum
//! every term, so our KLD is the exact one that llama.cpp approximates (the
//! difference is far below the 2% the interop test allows).

use rayon::prelude::*;

/// The reference's view of one chunk: log-probabilities and probabilities of
/// every scored position, its argmax and the target tokens.
pub struct Reference {
    vocab: usize,
    log_p: Vec<f32>,
    p: Vec<f32>,
    argmax: Vec<usize>,
    targets: Vec<u32>,
}

/// Index of the first maximum (ggml's strict `>` scan) and the maximum.
fn argmax(row: &[f32]) -> (usize, f32) {
    let mut best = (0, row[0]);
    for (i, &v) in row.iter().enumerate().skip(1) {
        if v > best.1 {
            best = (i, v);
        }
    }
    best
}

/// `max + log Σ exp(x − max)`: the sum in f64 of f32 exponentials, the log in
/// f32, as llama.cpp's `log_softmax`.
fn log_sum_exp(row: &[f32], max: f32) -> f32 {
    let sum: f64 = row.iter().map(|&v| (v - max).exp() as f64).sum();
    max + (sum.ln() as f32)
}

impl Reference {
    /// From the reference logits of the scored positions (`targets.len() × vocab`).
    pub fn new(logits: &[f32], vocab: usize, targets: &[u32]) -> Reference {
        let n = targets.len();
        assert_eq!(
            logits.len(),
            n * vocab,
            "reference logits and targets disagree"
        );
        let mut log_p = vec![0f32; n * vocab];
        let mut p = vec![0f32; n * vocab];
        let argmax: Vec<usize> = log_p
            .par_chunks_mut(vocab)
            .zip(p.par_chunks_mut(vocab))
            .zip(logits.par_chunks(vocab))
            .map(|((lp, pp), r)| {
                let (imax, max) = argmax(r);
                let lse = log_sum_exp(r, max);
                for ((l, q), &v) in lp.iter_mut().zip(pp.iter_mut()).zip(r) {
                    *l = v - lse;
                    *q = l.exp();
                }
                imax
            })
            .collect();
        Reference {
            vocab,
            log_p,
            p,
            argmax,
            targets: targets.to_vec(),
        }
    }

    /// Scored positions.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether no position is scored.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Negative log-likelihood of each target under the reference.
    fn nll(&self, i: usize) -> f64 {
        -(self.log_p[i * self.vocab + self.targets[i] as usize] as f64)
    }
}

/// One scored position of a quantized model: (KLD, NLL, same top token).
fn score_row(log_p: &[f32], p: &[f32], ref_top: usize, q: &[f32], target: u32) -> (f64, f64, bool) {
    let (imax, max) = argmax(q);
    let lse = log_sum_exp(q, max);
    let kld: f64 = log_p
        .iter()
        .zip(p)
        .zip(q)
        .map(|((&lp, &pp), &qq)| pp as f64 * (lp - (qq - lse)) as f64)
        .sum();
    let nll = (lse - q[target as usize]) as f64;
    (kld, nll, imax == ref_top)
}

/// Accumulates the statistics of one model over one language.
#[derive(Clone, Debug, Default)]
pub struct Scorer {
    nll: f64,
    nll_ref: f64,
    kld_sum: f64,
    kld: Vec<f32>,
    same_top: u64,
    count: u64,
    routes: RouteScorer,
}

/// One model's figures on one language.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LangScore {
    /// The language.
    pub lang: String,
    /// Tokens scored.
    pub tokens: u64,
    /// The quantized model's perplexity.
    pub ppl: f64,
    /// The reference's perplexity on the same tokens.
    pub ppl_ref: f64,
    /// Mean KL divergence from the reference, per token.
    pub kld_mean: f64,
    /// Its 99th percentile.
    pub kld_p99: f64,
    /// Its largest value.
    pub kld_max: f64,
    /// Share of positions where the quantized model's most likely token is the reference's.
    pub top1: f64,
    /// A mixture of experts' routing against the reference's (none for a dense model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<RouteScore>,
}

/// How a quantized mixture of experts routes the scored tokens compared with
/// the reference: over every (scored token, layer), the share routed to
/// exactly the reference's experts, and the mean share of the reference's
/// experts kept; and the layer that keeps the fewest.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RouteScore {
    /// Share of (token, layer) whose chosen experts are the reference's.
    pub same_experts: f64,
    /// Mean over (token, layer) of the share of the reference's experts chosen.
    pub experts_kept: f64,
    /// The layer with the smallest `same_experts`.
    pub worst_layer: usize,
    /// That layer's `same_experts`.
    pub worst_layer_same: f64,
}

/// Accumulates [`RouteScore`] over chunks.
#[derive(Clone, Debug, Default)]
struct RouteScorer {
    /// Per layer: (tokens, tokens with the same experts, reference experts kept, reference experts).
    layers: Vec<[u64; 4]>,
}

impl RouteScorer {
    /// Adds one chunk's routes (per layer, per scored token, sorted experts).
    fn add(&mut self, reference: &[Vec<Vec<u16>>], quant: &[Vec<Vec<u16>>]) {
        if self.layers.len() < reference.len() {
            self.layers.resize(reference.len(), [0; 4]);
        }
        for ((acc, r), q) in self.layers.iter_mut().zip(reference).zip(quant) {
            for (re, qe) in r.iter().zip(q) {
                let kept = re.iter().filter(|e| qe.binary_search(e).is_ok()).count() as u64;
                acc[0] += 1;
                acc[1] += u64::from(re == qe);
                acc[2] += kept;
                acc[3] += re.len() as u64;
            }
        }
    }

    fn finish(&self) -> Option<RouteScore> {
        let share = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
        let total = self.layers.iter().fold([0u64; 4], |mut t, l| {
            t.iter_mut().zip(l).for_each(|(t, v)| *t += v);
            t
        });
        if total[0] == 0 {
            return None;
        }
        let (worst_layer, worst_layer_same) = self
            .layers
            .iter()
            .map(|l| share(l[1], l[0]))
            .enumerate()
            .fold(
                (0, f64::INFINITY),
                |w, (i, s)| if s < w.1 { (i, s) } else { w },
            );
        Some(RouteScore {
            same_experts: share(total[1], total[0]),
            experts_kept: share(total[2], total[3]),
            worst_layer,
            worst_layer_same,
        })
    }
}

/// llama-perplexity's `percentile` over sorted values: linear interpolation at
/// `fraction · (n − 1)`.
pub fn percentile(sorted: &[f32], fraction: f32) -> f32 {
    match sorted {
        [] => 0.0,
        _ if fraction <= 0.0 => sorted[0],
        _ if fraction >= 1.0 => sorted[sorted.len() - 1],
        _ => {
            let p = fraction * (sorted.len() - 1) as f32;
            let ip = p as usize;
            let frac = p - ip as f32;
            (1.0 - frac) * sorted[ip] + frac * sorted[(ip + 1).min(sorted.len() - 1)]
        }
    }
}

impl Scorer {
    /// Adds the reference's own negative log-likelihoods (its perplexity).
    pub fn add_reference(&mut self, base: &Reference) {
        for i in 0..base.len() {
            self.nll_ref += base.nll(i);
        }
        self.count += base.len() as u64;
    }

    /// Scores a quantized model's logits of the same positions as `base`.
    pub fn add(&mut self, base: &Reference, logits: &[f32]) {
        let v = base.vocab;
        assert_eq!(
            logits.len(),
            base.len() * v,
            "logits and reference disagree"
        );
        let rows: Vec<(f64, f64, bool)> = (0..base.len())
            .into_par_iter()
            .map(|i| {
                let r = i * v..(i + 1) * v;
                score_row(
                    &base.log_p[r.clone()],
                    &base.p[r.clone()],
                    base.argmax[i],
                    &logits[r],
                    base.targets[i],
                )
            })
            .collect();
        for (i, (kld, nll, same)) in rows.into_iter().enumerate() {
            self.kld_sum += kld;
            self.kld.push(kld as f32);
            self.nll += nll;
            self.nll_ref += base.nll(i);
            self.same_top += same as u64;
            self.count += 1;
        }
    }

    /// Compares a quantized mixture's routes of the scored positions with the
    /// reference's (per layer, per position, the sorted experts, as
    /// `Model::forward_routes_from` gives them).
    pub fn add_routes(&mut self, reference: &[Vec<Vec<u16>>], quant: &[Vec<Vec<u16>>]) {
        self.routes.add(reference, quant);
    }

    /// Positions scored so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Perplexity of the reference over what was added.
    pub fn ppl_ref(&self) -> f64 {
        (self.nll_ref / self.count.max(1) as f64).exp()
    }

    /// The language's figures.
    pub fn finish(mut self, lang: &str) -> LangScore {
        let n = self.count.max(1) as f64;
        self.kld.sort_by(f32::total_cmp);
        LangScore {
            lang: lang.to_string(),
            tokens: self.count,
            ppl: (self.nll / n).exp(),
            ppl_ref: (self.nll_ref / n).exp(),
            kld_mean: self.kld_sum / n,
            kld_p99: percentile(&self.kld, 0.99) as f64,
            kld_max: self.kld.last().copied().unwrap_or(0.0) as f64,
            top1: self.same_top as f64 / n,
            routing: self.routes.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn softmax(x: &[f64]) -> Vec<f64> {
        let m = x.iter().cloned().fold(f64::MIN, f64::max);
        let s: f64 = x.iter().map(|v| (v - m).exp()).sum();
        x.iter().map(|v| (v - m).exp() / s).collect()
    }

    #[test]
    fn identical_logits_give_zero_kld_and_equal_ppl() {
        let vocab = 7;
        let logits: Vec<f32> = (0..3 * vocab)
            .map(|i| ((i * 37 % 11) as f32) * 0.7 - 3.0)
            .collect();
        let targets = [2u32, 5, 0];
        let base = Reference::new(&logits, vocab, &targets);
        let mut s = Scorer::default();
        s.add(&base, &logits);
        let r = s.finish("en");
        assert_eq!(r.kld_mean, 0.0);
        assert_eq!(r.ppl, r.ppl_ref);
        assert_eq!(r.top1, 1.0);
        assert_eq!(r.tokens, 3);
    }

    #[test]
    fn kld_and_nll_match_a_direct_computation() {
        let r = [1.0f64, 2.0, 0.5, -1.0];
        let q = [1.5f64, 1.0, 0.5, -2.0];
        let (p, qq) = (softmax(&r), softmax(&q));
        let want: f64 = p.iter().zip(&qq).map(|(a, b)| a * (a / b).ln()).sum();
        let rf: Vec<f32> = r.iter().map(|&v| v as f32).collect();
        let qf: Vec<f32> = q.iter().map(|&v| v as f32).collect();
        let base = Reference::new(&rf, 4, &[2]);
        let mut s = Scorer::default();
        s.add(&base, &qf);
        let out = s.finish("x");
        assert!(
            (out.kld_mean - want).abs() < 1e-6,
            "{} vs {want}",
            out.kld_mean
        );
        assert!(
            (out.ppl - 1.0 / qq[2]).abs() < 1e-4,
            "{} vs {}",
            out.ppl,
            1.0 / qq[2]
        );
        assert!((out.ppl_ref - 1.0 / p[2]).abs() < 1e-4);
        assert_eq!(out.top1, 0.0, "reference picks token 1, the other token 0");
        assert!(want > 0.0);
    }

    #[test]
    fn percentile_interpolates_like_llama_perplexity() {
        let v: Vec<f32> = (0..101).map(|i| i as f32).collect();
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&[1.0, 3.0], 0.5), 2.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[4.0], 0.99), 4.0);
    }

    /// Two layers, two tokens, top 2: one token keeps its experts in both
    /// layers, the other loses one of two in layer 1 and both in layer 0.
    #[test]
    fn routes_are_compared_token_by_token_and_layer_by_layer() {
        let reference = vec![vec![vec![0, 1], vec![2, 3]], vec![vec![0, 1], vec![2, 3]]];
        let quant = vec![vec![vec![0, 1], vec![0, 1]], vec![vec![0, 1], vec![1, 3]]];
        let mut s = Scorer::default();
        s.add_routes(&reference, &quant);
        let r = s.clone().finish("en").routing.unwrap();
        assert_eq!(r.same_experts, 2.0 / 4.0);
        assert_eq!(r.experts_kept, 5.0 / 8.0);
        assert_eq!((r.worst_layer, r.worst_layer_same), (0, 0.5));
        s.add_routes(&reference, &reference);
        let r = s.finish("en").routing.unwrap();
        assert_eq!(r.same_experts, 6.0 / 8.0);
        assert!(Scorer::default().finish("en").routing.is_none());
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]).0, 1);
        assert_eq!(argmax(&[5.0]).0, 0);
    }
}
