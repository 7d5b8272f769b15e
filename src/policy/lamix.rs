//! The calibrated policies: la-mix and `--target-bpw`.
//!
//! Sensitivity (DESIGN.md): the error of tensor W under a type is
//! `E(type) = Σ_rows Σ_j I[j] (w_rj − deq(q(w))_rj)²`, with I the balanced
//! importance of W's input columns, computed with our own kernels (with I as
//! the importance weights, as llama-quantize would quantize it).
//!
//! - la-mix: Q8_0 for the attention projections, Q4_K elsewhere, then an F16
//!   budget (a share of all weight parameters) spent on whole tensors in order
//!   of the error they remove per extra bit. llama.cpp holds one type per
//!   tensor, so "F16 for the most sensitive rows" is realised on whole tensors;
//!   the row scores are kept for the plan.
//! - target-bpw: a type per tensor among the candidates, greedy by marginal
//!   error removed per extra bit, until the file's bits per weight reach X.

use super::presets::fallback;
use crate::gguf::GgmlType;
use crate::quant;
use rayon::prelude::*;

/// One weight tensor as the calibrated policies see it.
pub struct Candidate<'a> {
    pub name: &'a str,
    /// Row-major values, rows of `width`.
    pub data: &'a [f32],
    pub width: usize,
    /// Column importance (balanced), if calibrated for this tensor.
    pub importance: Option<&'a [f32]>,
    /// Whether the tensor is an attention projection (`attn_q/k/v/output`).
    pub is_attention: bool,
}

/// Error of one tensor under one type, and per-row errors.
#[derive(Debug, Clone)]
pub struct TypeError {
    pub ty: GgmlType,
    pub total: f64,
    pub rows: Vec<f64>,
}

/// `E(type)` for a tensor, after llama.cpp's width fallback of `ty`. Rows are
/// dequantized and compared in parallel.
pub fn tensor_error(c: &Candidate, ty: GgmlType) -> Result<TypeError, quant::QuantError> {
    tensor_error_packed(c, ty).map(|(e, _)| e)
}

/// [`tensor_error`] and the packed rows it measured (empty for F32), so a
/// caller that writes the tensor in this type need not quantize it again.
pub fn tensor_error_packed(
    c: &Candidate,
    ty: GgmlType,
) -> Result<(TypeError, Vec<u8>), quant::QuantError> {
    let (ty, _) = fallback(ty, c.width as u64);
    let rows = c.data.len() / c.width;
    if matches!(ty, GgmlType::F32) {
        let e = TypeError {
            ty,
            total: 0.0,
            rows: vec![0.0; rows],
        };
        return Ok((e, Vec::new()));
    }
    let packed = quant::quantize_tensor(ty, c.data, c.width, c.importance)?;
    let rb = ty.row_bytes(c.width as u64).expect("fallback fits") as usize;
    let row_err = c
        .data
        .par_chunks_exact(c.width)
        .zip(packed.par_chunks_exact(rb))
        .map_init(
            || vec![0f32; c.width],
            |deq, (w, q)| {
                quant::dequantize(ty, q, deq)?;
                let mut e = 0f64;
                for j in 0..c.width {
                    let d = (w[j] - deq[j]) as f64;
                    let imp = c.importance.map(|i| i[j] as f64).unwrap_or(1.0);
                    e += imp * d * d;
                }
                Ok(e)
            },
        )
        .collect::<Result<Vec<f64>, quant::QuantError>>()?;
    let e = TypeError {
        ty,
        total: row_err.iter().sum(),
        rows: row_err,
    };
    Ok((e, packed))
}

/// A tensor's errors under the candidate types, computed one tensor at a time
/// so the model never has to be in memory at once.
#[derive(Debug, Clone)]
pub struct Scored {
    pub n_params: usize,
    pub is_attention: bool,
    /// (type after fallback, error), deduplicated by type; the la-mix base type first.
    pub options: Vec<(GgmlType, f64)>,
    /// Share of the error under the la-mix base type that falls in the worst 5% of rows.
    pub top_rows_share: f64,
    /// The rows with the largest error under the la-mix base type, worst first:
    /// (row in the checkpoint's order, error). At most [`WORST_ROWS`].
    pub worst_rows: Vec<(usize, f64)>,
    /// The measured sensitivity, once [`calibrate`] applied it.
    pub measured: Option<MeasuredScale>,
}

/// What [`calibrate`] did to a tensor's errors.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasuredScale {
    /// `α = ΔKLD / E(base)` of the tensor's group.
    pub alpha: f64,
    /// The group measured together (the tensor's own name on small models).
    pub group: String,
    /// Mean KLD added by quantizing the group alone to its base type(s).
    pub delta_kld: f64,
}

/// Turns every error of `scored` into an estimate of the KLD it adds,
/// `α_t · E_t(type)`, with `α_t` measured by [`super::sensitivity::measure`]
/// (probes in the order of `scored`). Row errors are scaled alike.
pub fn calibrate(scored: &mut [Scored], m: &super::sensitivity::Measured) {
    for (i, s) in scored.iter_mut().enumerate() {
        let a = m.alpha[i];
        for o in s.options.iter_mut() {
            o.1 *= a;
        }
        for r in s.worst_rows.iter_mut() {
            r.1 *= a;
        }
        let (group, delta_kld) = m.groups[m.group_of[i]].clone();
        s.measured = Some(MeasuredScale {
            alpha: a,
            group,
            delta_kld,
        });
    }
}

/// How many of a tensor's worst rows the plan lists.
pub const WORST_ROWS: usize = 8;

/// The la-mix base type of a tensor (before the width fallback).
pub fn la_mix_base(is_attention: bool) -> GgmlType {
    if is_attention {
        GgmlType::Q8_0
    } else {
        GgmlType::Q4K
    }
}

/// Scores one tensor fed in chunks of whole rows (so a large tensor is never
/// widened to f32 whole); the result equals [`score`] on all rows at once.
pub struct Scorer {
    width: usize,
    is_attention: bool,
    /// Types after the width fallback, deduplicated, the la-mix base type first.
    types: Vec<GgmlType>,
    totals: Vec<f64>,
    /// Per-row error under the base type.
    base_rows: Vec<f64>,
    n_params: usize,
}

impl Scorer {
    /// A scorer of rows of `width` under `types` (the la-mix base type is always included).
    pub fn new(
        width: usize,
        is_attention: bool,
        types: &[GgmlType],
    ) -> Result<Scorer, quant::QuantError> {
        let base = la_mix_base(is_attention);
        let mut eff: Vec<GgmlType> = Vec::new();
        let mut all: Vec<GgmlType> = vec![base];
        all.extend(types.iter().copied().filter(|t| *t != base));
        for t in all {
            let (ft, _) = fallback(t, width as u64);
            if !quant::supports(ft) {
                if t == base {
                    return Err(quant::QuantError::Unsupported(ft));
                }
                continue;
            }
            if !eff.contains(&ft) {
                eff.push(ft);
            }
        }
        Ok(Scorer {
            width,
            is_attention,
            totals: vec![0.0; eff.len()],
            types: eff,
            base_rows: Vec::new(),
            n_params: 0,
        })
    }

    /// Adds whole rows (`data.len()` a multiple of the width).
    pub fn add_rows(
        &mut self,
        data: &[f32],
        importance: Option<&[f32]>,
    ) -> Result<(), quant::QuantError> {
        self.add_rows_keeping(data, importance, &mut |_| {})
    }

    /// The la-mix base type after the width fallback (what [`Self::add_rows_keeping`] hands over).
    pub fn base_type(&self) -> GgmlType {
        self.types[0]
    }

    /// [`Self::add_rows`], handing `keep` the rows packed in [`Self::base_type`]
    /// (empty for F32) so the converter can write them without quantizing twice.
    pub fn add_rows_keeping(
        &mut self,
        data: &[f32],
        importance: Option<&[f32]>,
        keep: &mut dyn FnMut(&[u8]),
    ) -> Result<(), quant::QuantError> {
        let c = Candidate {
            name: "",
            data,
            width: self.width,
            importance,
            is_attention: self.is_attention,
        };
        for (k, &ty) in self.types.iter().enumerate() {
            let (e, packed) = tensor_error_packed(&c, ty)?;
            self.totals[k] += e.total;
            if k == 0 {
                self.base_rows.extend(e.rows);
                keep(&packed);
            }
        }
        self.n_params += data.len();
        Ok(())
    }

    pub fn finish(self) -> Scored {
        let mut order: Vec<usize> = (0..self.base_rows.len()).collect();
        let r = &self.base_rows;
        order.sort_by(|&a, &b| r[b].partial_cmp(&r[a]).unwrap_or(std::cmp::Ordering::Equal));
        let total = self.totals.first().copied().unwrap_or(0.0);
        let top = order.len().div_ceil(20);
        let top_rows_share = if total > 0.0 {
            order[..top].iter().map(|&i| r[i]).sum::<f64>() / total
        } else {
            0.0
        };
        Scored {
            n_params: self.n_params,
            is_attention: self.is_attention,
            options: self.types.into_iter().zip(self.totals).collect(),
            top_rows_share,
            worst_rows: order.iter().take(WORST_ROWS).map(|&i| (i, r[i])).collect(),
            measured: None,
        }
    }
}

/// Scores one tensor under `types` (the la-mix base type is always included).
pub fn score(c: &Candidate, types: &[GgmlType]) -> Result<Scored, quant::QuantError> {
    let mut s = Scorer::new(c.width, c.is_attention, types)?;
    s.add_rows(c.data, c.importance)?;
    Ok(s.finish())
}

/// A choice with its reason and score.
#[derive(Debug, Clone)]
pub struct Choice {
    pub ty: GgmlType,
    pub reason: String,
    /// Error under the chosen type.
    pub error: f64,
    /// Error removed per extra bit by going to F16 (la-mix's ranking).
    pub score: f64,
    /// Share of the tensor's base-type error in its worst 5% of rows.
    pub top_rows_share: f64,
}

/// What the plan says about a measured tensor ("" when unmeasured).
fn measured_note(s: &Scored) -> String {
    match &s.measured {
        None => String::new(),
        Some(m) => format!(
            "; measured: {} alone at {} adds KLD {:.2e}, so errors are estimated KLD (α {:.2e})",
            m.group,
            s.options[0].0.name(),
            m.delta_kld,
            m.alpha
        ),
    }
}

fn bits(ty: GgmlType) -> f64 {
    ty.bits_per_weight()
}

/// The la-mix plan: base types, then F16 for the tensors that remove the most
/// error per extra bit within `f16_budget` (a share of all parameters).
pub fn la_mix(scored: &[Scored], f16_budget: f64) -> Vec<Choice> {
    let total_params: usize = scored.iter().map(|c| c.n_params).sum();
    let mut out = Vec::with_capacity(scored.len());
    let mut gains: Vec<(f64, usize)> = Vec::new();
    for (i, s) in scored.iter().enumerate() {
        let (ty, err) = s.options[0];
        let extra_bits = (bits(GgmlType::F16) - bits(ty)) * s.n_params as f64;
        let score = if extra_bits > 0.0 {
            err / extra_bits
        } else {
            0.0
        };
        gains.push((score, i));
        let base = la_mix_base(s.is_attention);
        let mut reason = if s.is_attention {
            "attention projection: Q8_0".to_string()
        } else {
            "la-mix base: Q4_K".to_string()
        };
        if ty != base {
            reason = format!("{reason}; width does not fit {base}: falls back to {ty}");
        }
        reason.push_str(&measured_note(s));
        out.push(Choice {
            ty,
            reason,
            error: err,
            score,
            top_rows_share: s.top_rows_share,
        });
    }
    gains.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));
    let budget = (f16_budget * total_params as f64) as usize;
    let mut spent = 0usize;
    for (rank, (score, i)) in gains.iter().enumerate() {
        let n = scored[*i].n_params;
        if *score <= 0.0 || spent + n > budget {
            continue;
        }
        spent += n;
        let o = &mut out[*i];
        o.ty = GgmlType::F16;
        o.error = 0.0;
        o.reason = format!(
            "F16 budget: rank {} by {} removed per extra bit ({:.3e}); {:.1}% of the budget used{}",
            rank + 1,
            if scored[*i].measured.is_some() {
                "estimated KLD"
            } else {
                "error"
            },
            score,
            100.0 * spent as f64 / budget.max(1) as f64,
            measured_note(&scored[*i])
        );
    }
    out
}

/// Candidate types for `--target-bpw`, cheapest first.
pub const TARGET_TYPES: &[GgmlType] = &[
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::IQ4XS,
    GgmlType::IQ4NL,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::Q8_0,
    GgmlType::F16,
];

/// Chooses a type per tensor so bits per weight stay at most `target` and the
/// total importance-weighted error is least (greedy on each tensor's lower
/// convex hull of (bits, error), by error removed per extra bit).
pub fn target_bpw(scored: &[Scored], target: f64) -> Vec<Choice> {
    let total_params: f64 = scored.iter().map(|c| c.n_params as f64).sum();
    let budget_bits = target * total_params;
    let mut opts: Vec<Vec<(f64, f64, GgmlType)>> = Vec::with_capacity(scored.len());
    for s in scored {
        let mut v: Vec<(f64, f64, GgmlType)> = s
            .options
            .iter()
            .map(|&(t, e)| (bits(t) * s.n_params as f64, e, t))
            .collect();
        v.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
        // The lower convex hull: error falls as bits rise, with falling slopes.
        let mut hull: Vec<(f64, f64, GgmlType)> = Vec::new();
        for o in v {
            if hull.last().is_some_and(|l| o.1 >= l.1) {
                continue; // more bits, no less error: never worth it
            }
            while hull.len() >= 2 {
                let (a, l) = (hull[hull.len() - 2], hull[hull.len() - 1]);
                let s1 = (a.1 - l.1) / (l.0 - a.0);
                let s2 = (l.1 - o.1) / (o.0 - l.0);
                if s2 >= s1 {
                    hull.pop();
                } else {
                    break;
                }
            }
            hull.push(o);
        }
        opts.push(hull);
    }
    let mut at: Vec<usize> = vec![0; scored.len()];
    let mut used: f64 = opts.iter().map(|o| o[0].0).sum();
    loop {
        let mut best: Option<(f64, usize)> = None;
        for (i, o) in opts.iter().enumerate() {
            if at[i] + 1 >= o.len() {
                continue;
            }
            let (b0, e0, _) = o[at[i]];
            let (b1, e1, _) = o[at[i] + 1];
            if used - b0 + b1 > budget_bits {
                continue;
            }
            let gain = (e0 - e1) / (b1 - b0);
            if best.is_none_or(|(g, _)| gain > g) {
                best = Some((gain, i));
            }
        }
        let Some((_, i)) = best else { break };
        used += opts[i][at[i] + 1].0 - opts[i][at[i]].0;
        at[i] += 1;
    }
    scored
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (b, e, t) = opts[i][at[i]];
            Choice {
                ty: t,
                reason: format!(
                    "--target-bpw: {} ({:.2} bpw) on the error/bits hull{}",
                    t.name(),
                    b / s.n_params as f64,
                    measured_note(s)
                ),
                error: e,
                score: 0.0,
                top_rows_share: s.top_rows_share,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32, scale: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * scale
            })
            .collect()
    }

    #[test]
    fn f16_budget_goes_to_the_most_sensitive_tensor() {
        let a = data(256 * 64, 1, 1.0);
        let b = data(256 * 64, 2, 1.0);
        let hot = vec![100.0f32; 256];
        let cold = vec![0.01f32; 256];
        let cands = [
            Candidate {
                name: "a",
                data: &a,
                width: 256,
                importance: Some(&cold),
                is_attention: false,
            },
            Candidate {
                name: "b",
                data: &b,
                width: 256,
                importance: Some(&hot),
                is_attention: false,
            },
        ];
        let sc: Vec<Scored> = cands.iter().map(|c| score(c, &[]).unwrap()).collect();
        let plan = la_mix(&sc, 0.5);
        assert_eq!(plan[1].ty, GgmlType::F16);
        assert_eq!(plan[0].ty, GgmlType::Q4K);
    }

    #[test]
    fn scoring_in_row_chunks_equals_scoring_whole() {
        let a = data(256 * 40, 7, 2.0);
        let imp = data(256, 8, 1.0)
            .iter()
            .map(|x| x.abs() + 0.1)
            .collect::<Vec<_>>();
        let c = Candidate {
            name: "a",
            data: &a,
            width: 256,
            importance: Some(&imp),
            is_attention: false,
        };
        let whole = score(&c, TARGET_TYPES).unwrap();
        let mut s = Scorer::new(256, false, TARGET_TYPES).unwrap();
        for chunk in a.chunks(256 * 7) {
            s.add_rows(chunk, Some(&imp)).unwrap();
        }
        let chunked = s.finish();
        assert_eq!(chunked.n_params, whole.n_params);
        assert_eq!(chunked.worst_rows, whole.worst_rows);
        assert_eq!(chunked.top_rows_share, whole.top_rows_share);
        for (x, y) in chunked.options.iter().zip(&whole.options) {
            assert_eq!(x.0, y.0);
            assert!((x.1 - y.1).abs() <= 1e-9 * y.1.abs(), "{x:?} {y:?}");
        }
        // The worst rows are sorted, and really the worst.
        let w = &whole.worst_rows;
        assert_eq!(w.len(), WORST_ROWS);
        assert!(w.windows(2).all(|p| p[0].1 >= p[1].1));
        let e = tensor_error(&c, GgmlType::Q4K).unwrap();
        let mut sorted = e.rows.clone();
        sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
        assert_eq!(w[0].1, sorted[0]);
        assert_eq!(e.rows[w[3].0], w[3].1);
    }

    #[test]
    fn attention_gets_q8_0() {
        let a = data(64 * 8, 3, 1.0);
        let cands = [Candidate {
            name: "blk.0.attn_q.weight",
            data: &a,
            width: 64,
            importance: None,
            is_attention: true,
        }];
        let sc: Vec<Scored> = cands.iter().map(|c| score(c, &[]).unwrap()).collect();
        let plan = la_mix(&sc, 0.0);
        assert_eq!(plan[0].ty, GgmlType::Q8_0);
        assert!(plan[0].error > 0.0);
    }

    #[test]
    fn target_bpw_respects_the_budget() {
        let a = data(256 * 32, 4, 1.0);
        let b = data(256 * 32, 5, 3.0);
        let cands = [
            Candidate {
                name: "a",
                data: &a,
                width: 256,
                importance: None,
                is_attention: false,
            },
            Candidate {
                name: "b",
                data: &b,
                width: 256,
                importance: None,
                is_attention: false,
            },
        ];
        let sc: Vec<Scored> = cands
            .iter()
            .map(|c| score(c, TARGET_TYPES).unwrap())
            .collect();
        for target in [3.0, 4.5, 6.0, 9.0] {
            let plan = target_bpw(&sc, target);
            let bits: f64 = plan
                .iter()
                .zip(&cands)
                .map(|(p, c)| p.ty.bits_per_weight() * c.data.len() as f64)
                .sum();
            let bpw = bits / (a.len() + b.len()) as f64;
            assert!(
                bpw <= target + 1e-9 || plan.iter().all(|p| p.ty == GgmlType::Q2K),
                "{target}: {bpw}"
            );
        }
        // More bits never give more error.
        let e = |t| target_bpw(&sc, t).iter().map(|p| p.error).sum::<f64>();
        assert!(e(6.0) <= e(4.5) && e(4.5) <= e(3.0));
    }

    /// The measured α decides: the raw proxy gives F16 to the tensor with more
    /// importance-weighted error, but once α says the other one's error costs
    /// more KLD, the budget (and --target-bpw's bits) go there instead.
    #[test]
    fn measured_alpha_overrides_the_raw_ranking() {
        use crate::policy::sensitivity::Measured;
        let a = data(256 * 64, 11, 1.0);
        let b = data(256 * 64, 12, 1.0);
        let hot = vec![10.0f32; 256];
        let cold = vec![1.0f32; 256];
        let cands = [
            Candidate {
                name: "a",
                data: &a,
                width: 256,
                importance: Some(&hot),
                is_attention: false,
            },
            Candidate {
                name: "b",
                data: &b,
                width: 256,
                importance: Some(&cold),
                is_attention: false,
            },
        ];
        let raw: Vec<Scored> = cands
            .iter()
            .map(|c| score(c, TARGET_TYPES).unwrap())
            .collect();
        assert_eq!(la_mix(&raw, 0.5)[0].ty, GgmlType::F16);
        assert_eq!(la_mix(&raw, 0.5)[1].ty, GgmlType::Q4K);
        let m = Measured {
            group_of: vec![0, 1],
            groups: vec![("a".into(), 1e-4), ("b".into(), 1e-2)],
            alpha: vec![1e-4 / raw[0].options[0].1, 1e-2 / raw[1].options[0].1],
            tokens: 100,
        };
        let mut cal = raw.clone();
        calibrate(&mut cal, &m);
        // Errors are now estimated KLD: the base error equals the measured ΔKLD.
        assert!((cal[1].options[0].1 - 1e-2).abs() < 1e-12);
        for (r, c) in raw[0].options.iter().zip(&cal[0].options) {
            assert_eq!(r.0, c.0);
            assert!((c.1 - r.1 * m.alpha[0]).abs() <= 1e-12 * r.1.max(1.0));
        }
        let plan = la_mix(&cal, 0.5);
        assert_eq!(plan[0].ty, GgmlType::Q4K);
        assert_eq!(plan[1].ty, GgmlType::F16);
        assert!(plan[1].reason.contains("estimated KLD") && plan[1].reason.contains("measured"));
        // --target-bpw: the sensitive tensor gets at least as many bits, and within the target.
        let t = target_bpw(&cal, 5.0);
        assert!(
            t[1].ty.bits_per_weight() > t[0].ty.bits_per_weight(),
            "{t:?}"
        );
        let bits: f64 = t.iter().map(|c| c.ty.bits_per_weight()).sum::<f64>() / 2.0;
        assert!(bits <= 5.0 + 1e-9, "{bits}");
    }
}
