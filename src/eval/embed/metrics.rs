//! The statistics of an embedding model's evaluation: the cosine similarity
//! of a quantized file's pooled embedding to the reference's (mean, 1st
//! percentile, least), and retrieval agreement: for each query of one
//! language, the nearest neighbour (largest cosine) among another language's
//! candidates with the file's embeddings and with the reference's, whether
//! they are the same candidate, and, on parallel text, whether it is the
//! query's translation.

use serde::Serialize;

/// Cosine similarity of `a` and `b`, summed in f64; 0 when either is zero.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa.sqrt() * bb.sqrt())
    }
}

/// `v` scaled to unit length (a zero vector stays zero), so that a dot
/// product of two is their cosine.
pub fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    if n == 0.0 {
        return v.to_vec();
    }
    v.iter().map(|&x| (x as f64 / n) as f32).collect()
}

/// Mean, 1st percentile and least of one language's cosines.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CosineStats {
    /// The mean.
    pub mean: f64,
    /// The 1st percentile (llama-perplexity's interpolation, as KLD's 99th, in f64).
    pub p1: f64,
    /// The least.
    pub min: f64,
}

/// The statistics of `values` (in any order); all 0 when empty.
pub fn cosine_stats(values: &[f64]) -> CosineStats {
    if values.is_empty() {
        return CosineStats {
            mean: 0.0,
            p1: 0.0,
            min: 0.0,
        };
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    // llama-perplexity's interpolation at `0.01 · (n − 1)`, in f64.
    let p = 0.01 * (sorted.len() - 1) as f64;
    let (i, frac) = (p as usize, p.fract());
    let (lo, hi) = (sorted[i], sorted[(i + 1).min(sorted.len() - 1)]);
    // Within its two neighbours: with equal ones the weighted sum can round one
    // ulp below both (and so below the least).
    let p1 = ((1.0 - frac) * lo + frac * hi).clamp(lo, hi);
    CosineStats {
        mean,
        p1,
        min: sorted[0],
    }
}

/// Index of the candidate of largest dot product with `query` (unit vectors:
/// the largest cosine); the first of equal ones.
pub fn nearest(query: &[f32], candidates: &[Vec<f32>]) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, c) in candidates.iter().enumerate() {
        let d: f64 = query
            .iter()
            .zip(c)
            .map(|(&x, &y)| x as f64 * y as f64)
            .sum();
        if d > best.1 {
            best = (i, d);
        }
    }
    best.0
}

/// Counts of one or more retrieval directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retrieval {
    /// Queries run.
    pub queries: usize,
    /// Queries whose nearest neighbour is the same with the file's embeddings as with the reference's.
    pub agree: usize,
    /// Queries whose nearest neighbour with the file's embeddings is their translation (parallel text).
    pub hit: usize,
    /// The same with the reference's embeddings.
    pub hit_ref: usize,
    /// Whether the queries and candidates are aligned translations.
    pub parallel: bool,
}

impl Retrieval {
    /// The sum of two directions' counts (parallel when both are).
    pub fn and(self, o: Retrieval) -> Retrieval {
        Retrieval {
            queries: self.queries + o.queries,
            agree: self.agree + o.agree,
            hit: self.hit + o.hit,
            hit_ref: self.hit_ref + o.hit_ref,
            parallel: self.parallel && o.parallel,
        }
    }
}

/// One direction: queries against candidates, unit embeddings of the
/// reference (`r_*`) and of the file (`f_*`). `translation[i]` is query i's
/// translation among the candidates when the text is parallel.
pub fn retrieve(
    r_queries: &[Vec<f32>],
    r_cands: &[Vec<f32>],
    f_queries: &[Vec<f32>],
    f_cands: &[Vec<f32>],
    translation: Option<&[usize]>,
) -> Retrieval {
    let mut out = Retrieval {
        parallel: translation.is_some(),
        ..Retrieval::default()
    };
    if r_cands.is_empty() {
        return out;
    }
    for (i, (rq, fq)) in r_queries.iter().zip(f_queries).enumerate() {
        let (nr, nf) = (nearest(rq, r_cands), nearest(fq, f_cands));
        out.queries += 1;
        out.agree += usize::from(nr == nf);
        if let Some(t) = translation {
            out.hit += usize::from(nf == t[i]);
            out.hit_ref += usize::from(nr == t[i]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_of_known_vectors() {
        assert!((cosine(&[1.0, 0.0], &[0.0, 2.0])).abs() < 1e-12);
        assert!((cosine(&[1.0, 1.0], &[3.0, 3.0]) - 1.0).abs() < 1e-12);
        assert!((cosine(&[1.0, 0.0], &[-1.0, 0.0]) + 1.0).abs() < 1e-12);
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - 0.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        let u = unit(&[3.0, 4.0]);
        assert!((u[0] - 0.6).abs() < 1e-7 && (u[1] - 0.8).abs() < 1e-7);
    }

    /// Equal values give a percentile equal to them, never an ulp below the
    /// least (0.9999971970013594 three times: the weighted sum is one ulp low).
    #[test]
    fn cosine_percentile_of_equal_values_is_not_below_the_least() {
        for n in 2..=200 {
            for x in [0.9999971970013594, 0.1, 1.0 / 3.0, 0.7] {
                let s = cosine_stats(&vec![x; n]);
                assert!(s.min <= s.p1 && s.p1 <= s.mean + 1e-12, "{n} {x}: {s:?}");
                assert_eq!(s.p1, x, "{n} {x}");
            }
        }
    }

    #[test]
    fn cosine_percentile_is_the_low_tail() {
        // 0.00, 0.01, ..., 1.00 shuffled: mean 0.5, 1st percentile 0.01, least 0.
        let mut v: Vec<f64> = (0..101).map(|i| i as f64 / 100.0).collect();
        v.reverse();
        v.swap(3, 70);
        let s = cosine_stats(&v);
        assert!((s.mean - 0.5).abs() < 1e-12);
        assert!((s.p1 - 0.01).abs() < 1e-6, "{}", s.p1);
        assert_eq!(s.min, 0.0);
        // Two values: the 1st percentile interpolates 1% of the way up.
        let s = cosine_stats(&[0.9, 0.5]);
        assert!((s.p1 - 0.504).abs() < 1e-6, "{}", s.p1);
        assert_eq!(cosine_stats(&[]).mean, 0.0);
    }

    fn units(v: &[[f32; 2]]) -> Vec<Vec<f32>> {
        v.iter().map(|x| unit(x)).collect()
    }

    /// Three queries against three candidates: the file moves the third
    /// query's embedding past the bisector, so its neighbour changes.
    #[test]
    fn retrieval_agreement_and_translation_hits() {
        let cands = units(&[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.1]]);
        let r_q = units(&[[1.0, 0.1], [0.1, 1.0], [-1.0, 0.5]]);
        let f_q = units(&[[1.0, 0.2], [0.2, 1.0], [0.3, 1.0]]);
        assert_eq!(nearest(&r_q[2], &cands), 2);
        assert_eq!(nearest(&f_q[2], &cands), 1);
        let r = retrieve(&r_q, &cands, &f_q, &cands, Some(&[0, 1, 2]));
        assert_eq!((r.queries, r.agree, r.hit, r.hit_ref), (3, 2, 2, 3));
        assert!(r.parallel);
        // The translations as the reference ranks them: query 0's is candidate 1.
        let r = retrieve(&r_q, &cands, &f_q, &cands, Some(&[1, 1, 1]));
        assert_eq!((r.hit, r.hit_ref), (2, 1));
        // Not parallel: agreement only.
        let r = retrieve(&r_q, &cands, &f_q, &cands, None);
        assert_eq!((r.queries, r.agree, r.hit, r.parallel), (3, 2, 0, false));
        // The file's candidates move too: every neighbour follows.
        let f_c = units(&[[0.0, 1.0], [1.0, 0.0], [-1.0, 0.1]]);
        let r = retrieve(&r_q, &cands, &r_q, &f_c, None);
        assert_eq!(r.agree, 1);
        let both = r.and(retrieve(&r_q, &cands, &r_q, &cands, Some(&[0, 1, 2])));
        assert_eq!((both.queries, both.agree, both.parallel), (6, 4, false));
        // Equal cosines: the first candidate.
        assert_eq!(nearest(&[1.0, 0.0], &units(&[[1.0, 1.0], [1.0, -1.0]])), 0);
        assert_eq!(retrieve(&r_q, &[], &f_q, &[], None).queries, 0);
    }
}
