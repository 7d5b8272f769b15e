//! The calibrated policies: la-mix and `--target-bpw`.
//!
//! Error of a tensor (docs/design.md, Definitions): the error of tensor W under a type is
//! `E(type) = Σ_rows Σ_j I[j] (w_rj − deq(q(w))_rj)²`, with I the balanced
//! importance of W's input columns, computed with our own kernels (with I as
//! the importance weights, as llama-quantize would quantize it).
//!
//! - la-mix: Q8_0 for the attention projections, Q4_K elsewhere, then an F16
//!   budget spent as a *bit* budget: the extra bits F16 on a share of the
//!   weights would cost buy upgrades (Q5_K, Q6_K, Q8_0 or F16, whole tensors)
//!   in order of the error they remove per extra bit. llama.cpp holds one type
//!   per tensor, so "F16 for the most sensitive rows" is realised on whole
//!   tensors, and a tensor too large for F16 gets the step that fits; the row
//!   scores are kept for the plan.
//! - target-bpw: a type per tensor among the candidates, greedy by marginal
//!   error removed per extra bit, until the file's bits per weight reach X.

use super::presets::fallback;
use crate::gguf::GgmlType;
use crate::quant;
use rayon::prelude::*;

/// One weight tensor as the calibrated policies see it.
pub struct Candidate<'a> {
    /// The GGUF name.
    pub name: &'a str,
    /// Row-major values, rows of `width`.
    pub data: &'a [f32],
    /// Values per row.
    pub width: usize,
    /// Column importance (balanced), if calibrated for this tensor.
    pub importance: Option<&'a [f32]>,
    /// Whether the tensor is an attention projection (`attn_q/k/v/output`).
    pub is_attention: bool,
}

/// Error of one tensor under one type, and per-row errors.
#[derive(Debug, Clone)]
pub struct TypeError {
    /// The type, after llama.cpp's width fallback.
    pub ty: GgmlType,
    /// The tensor's importance-weighted squared error: the sum of `rows`.
    pub total: f64,
    /// Each row's.
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
                Ok(row_error(w, deq, c.importance))
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

/// `Σ_j I[j] (w_j − d_j)²` of one row (I = 1 without importance), in f64 with
/// eight independent sums so the loop vectorizes (the scalar loop's one
/// running sum was 12% of la-mix scoring).
fn row_error(w: &[f32], d: &[f32], importance: Option<&[f32]>) -> f64 {
    const L: usize = 8;
    let mut acc = [0f64; L];
    let n = w.len() / L * L;
    match importance {
        Some(imp) => {
            for ((w, d), i) in w[..n]
                .chunks_exact(L)
                .zip(d[..n].chunks_exact(L))
                .zip(imp[..n].chunks_exact(L))
            {
                for k in 0..L {
                    let e = (w[k] - d[k]) as f64;
                    acc[k] += i[k] as f64 * e * e;
                }
            }
        }
        None => {
            for (w, d) in w[..n].chunks_exact(L).zip(d[..n].chunks_exact(L)) {
                for k in 0..L {
                    let e = (w[k] - d[k]) as f64;
                    acc[k] += e * e;
                }
            }
        }
    }
    let mut e: f64 = acc.iter().sum();
    for j in n..w.len() {
        let x = (w[j] - d[j]) as f64;
        e += importance.map_or(1.0, |i| i[j] as f64) * x * x;
    }
    e
}

/// A tensor's errors under the candidate types, computed one tensor at a time
/// so the model never has to be in memory at once.
#[derive(Debug, Clone)]
pub struct Scored {
    /// The tensor's values.
    pub n_params: usize,
    /// Whether it is an attention projection.
    pub is_attention: bool,
    /// (type after fallback, error), deduplicated by type; the la-mix base type first.
    pub options: Vec<(GgmlType, f64)>,
    /// Share of the error under the la-mix base type that falls in the worst 5% of rows.
    pub top_rows_share: f64,
    /// The rows with the largest error under the la-mix base type, worst first:
    /// (row in the checkpoint's order, error). At most [`WORST_ROWS`].
    pub worst_rows: Vec<(usize, f64)>,
    /// `Σ_rows Σ_j I[j] w²`: the error of the all-zero tensor, the scale of its
    /// errors (a fraction of it is the measured sensitivity's noise floor:
    /// [`super::sensitivity::Probe::energy`]).
    pub energy: f64,
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
    /// Mean KLD added by quantizing the group alone to its base type(s) (the
    /// embedding drift for an encoder: `quantity`).
    pub delta_kld: f64,
    /// What was measured.
    pub quantity: super::sensitivity::Quantity,
    /// Where `alpha` came from: the group's own measurement, or another group's
    /// when the group's base error is below what the measurement resolves.
    pub from: super::sensitivity::AlphaFrom,
    /// The group's summed base error (before scaling) and the least the
    /// measurement resolves ([`super::sensitivity::Measured::resolution`]).
    pub resolution: (f64, f64),
}

impl MeasuredScale {
    /// What the errors estimate once scaled ("estimated KLD", "estimated embedding drift").
    pub fn estimated(&self) -> String {
        format!("estimated {}", self.quantity.describe())
    }
}

/// "estimated KLD" (or drift) for a measured tensor, "error" otherwise.
fn estimated(s: &Scored) -> String {
    s.measured
        .as_ref()
        .map_or_else(|| "error".to_string(), MeasuredScale::estimated)
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
        let g = m.group_of[i];
        let (group, delta_kld) = m.groups[g].clone();
        s.measured = Some(MeasuredScale {
            alpha: a,
            group,
            delta_kld,
            quantity: m.quantity,
            from: m.alpha_from[i].clone(),
            resolution: m.resolution[g],
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

/// Most rows between two rows the upgrade types are scored on ([`Scorer::sampled`]).
pub const UPGRADE_STRIDE: usize = 4;
/// Of every `HEAVY_SHARE · stride` rows of a sampled tensor, the one of most base-type
/// error is scored exactly in every type ([`Scorer`]).
pub const HEAVY_SHARE: usize = 4;
/// Fewest rows the upgrade types are scored on, when the tensor has them.
/// With 512, polyglot-25m's `ffn_up` (1024 rows, every 2nd scored) moved by up
/// to 0.9% in gain per bit and two of them, near the budget's cut, swapped
/// places with an `ffn_down` (the la-mix plan changed in 3 tensors); with
/// 1024 only its token embeddings and output head (16384 rows) are sampled.
pub const MIN_SAMPLED_ROWS: usize = 1024;

/// The stride of [`Scorer::sampled`] for a tensor of `rows` rows: every row
/// below `2 · MIN_SAMPLED_ROWS`, then every 2nd, 3rd or 4th row, so at least
/// [`MIN_SAMPLED_ROWS`] rows are scored in each type.
pub fn upgrade_stride(rows: usize) -> usize {
    (rows / MIN_SAMPLED_ROWS).clamp(1, UPGRADE_STRIDE)
}

/// Scores one tensor fed in chunks of whole rows (so a large tensor is never
/// widened to f32 whole); the result equals [`score`] on all rows at once.
///
/// The base type is always packed and scored on every row (its bytes are what
/// the converter writes). With [`Self::sampled`], the other types are scored
/// exactly on the rows of most base-type error (the `1/(HEAVY_SHARE · stride)`
/// of each chunk's rows that weigh most in the total), and on every `stride`-th
/// of the others (rows `0, stride, 2·stride, …` of the tensor), which are scaled
/// to all the others by the ratio estimator
/// `E_light(type) ≈ E_light(base) · E_sample(type) / E_sample(base)`: a type's
/// error per row follows the base type's closely (both scale with the row's
/// magnitude and importance), so the ratio varies far less across rows than the
/// errors. Without the exact stratum a few heavy rows dominate the ratio (the
/// i-quants' grid searches follow the base type less closely than the K-quants
/// do) and the estimate of IQ3_S moved by 3.4% on rows whose scales span 900x.
pub struct Scorer {
    width: usize,
    is_attention: bool,
    /// Types after the width fallback, deduplicated, the la-mix base type first.
    types: Vec<GgmlType>,
    /// Sums over all rows (base type) and over the sampled light rows (the others).
    totals: Vec<f64>,
    /// The other types' sums over the heavy rows (scored exactly).
    heavy: Vec<f64>,
    /// Per-row error under the base type.
    base_rows: Vec<f64>,
    /// The base type's error on the sampled light rows, and on all light rows.
    base_sampled: f64,
    base_light: f64,
    /// Rows not in the heavy stratum, and how many of them were sampled.
    light_rows: usize,
    stride: usize,
    sampled_rows: usize,
    sample: Vec<f32>,
    n_params: usize,
    /// `Σ I[j] w²` over the rows added, and a row of zeros to compute it with.
    energy: f64,
    zeros: Vec<f32>,
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
            // A width a type's block does not fit and that has no fallback (Q1_0's 128) is
            // no candidate: llama-quantize stops on it.
            if !quant::supports(ft) || ft.row_bytes(width as u64).is_none() {
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
            heavy: vec![0.0; eff.len()],
            types: eff,
            base_rows: Vec::new(),
            base_sampled: 0.0,
            base_light: 0.0,
            light_rows: 0,
            stride: 1,
            sampled_rows: 0,
            sample: Vec::new(),
            n_params: 0,
            energy: 0.0,
            zeros: vec![0.0; width],
        })
    }

    /// Keeps only the types of more bits per weight than the base type (after
    /// the fallback): the only ones la-mix can buy (`hull` from the base), so
    /// an attention projection (Q8_0) is not scored in Q5_K and Q6_K.
    pub fn above_base(mut self) -> Scorer {
        let base = bits(self.types[0]);
        let keep: Vec<bool> = (self.types.iter().enumerate())
            .map(|(k, t)| k == 0 || bits(*t) > base)
            .collect();
        let mut k = keep.iter();
        self.types.retain(|_| *k.next().unwrap_or(&true));
        self.totals.truncate(self.types.len());
        self.heavy.truncate(self.types.len());
        self
    }

    /// Scores the types other than the base type on every `stride`-th row only
    /// (see the type's doc; 1: every row, the default).
    pub fn sampled(mut self, stride: usize) -> Scorer {
        self.stride = stride.max(1);
        self
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
        let w = self.width;
        let c = Candidate {
            name: "",
            data,
            width: w,
            importance,
            is_attention: self.is_attention,
        };
        let first = self.base_rows.len();
        let (e, packed) = tensor_error_packed(&c, self.types[0])?;
        self.totals[0] += e.total;
        keep(&packed);
        self.base_rows.extend(e.rows);
        let rows = data.len() / w.max(1);
        let errs = &self.base_rows[first..first + rows];
        // The heavy stratum of this chunk: its rows of most base-type error.
        let mut is_heavy = vec![false; rows];
        if self.stride > 1 {
            let n_heavy = rows.div_ceil(HEAVY_SHARE * self.stride);
            let mut order: Vec<usize> = (0..rows).collect();
            order.sort_by(|&a, &b| errs[b].total_cmp(&errs[a]).then(a.cmp(&b)));
            for &r in &order[..n_heavy] {
                is_heavy[r] = true;
            }
        }
        // The sampled light rows: global row index a multiple of the stride.
        let skip = (self.stride - first % self.stride) % self.stride;
        let picked: Vec<usize> = (skip..rows)
            .step_by(self.stride)
            .filter(|&r| !is_heavy[r])
            .collect();
        let light: Vec<usize> = (0..rows).filter(|&r| !is_heavy[r]).collect();
        self.base_sampled += picked.iter().map(|&r| errs[r]).sum::<f64>();
        self.base_light += light.iter().map(|&r| errs[r]).sum::<f64>();
        self.light_rows += light.len();
        self.sampled_rows += picked.len();
        let heavy: Vec<usize> = (0..rows).filter(|&r| is_heavy[r]).collect();
        for (set, into_heavy) in [(&picked, false), (&heavy, true)] {
            let sample: &[f32] = if self.stride == 1 {
                // Every row is a light row, scored as it is; no heavy stratum.
                if into_heavy {
                    continue;
                }
                data
            } else {
                self.sample.clear();
                for &r in set.iter() {
                    self.sample.extend_from_slice(&data[r * w..(r + 1) * w]);
                }
                &self.sample
            };
            if sample.is_empty() {
                continue;
            }
            let c = Candidate { data: sample, ..c };
            for k in 1..self.types.len() {
                let e = tensor_error_packed(&c, self.types[k])?.0.total;
                if into_heavy {
                    self.heavy[k] += e;
                } else {
                    self.totals[k] += e;
                }
            }
        }
        self.n_params += data.len();
        // Row by row in order, so the sum does not depend on the threads.
        let zeros = &self.zeros;
        let rows: Vec<f64> = (data.par_chunks_exact(w))
            .map(|row| row_error(row, zeros, importance))
            .collect();
        self.energy += rows.iter().sum::<f64>();
        Ok(())
    }

    /// The tensor's scores, once all its rows are added.
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
        // Scale the sampled light sums to all light rows (exact when every row was
        // scored), and add the heavy rows' exact sums.
        let light = self.base_light;
        let scale = |e: f64| -> f64 {
            if self.sampled_rows == self.light_rows {
                e
            } else if self.base_sampled > 0.0 && self.base_sampled.is_finite() && light.is_finite()
            {
                e * (light / self.base_sampled)
            } else {
                e * self.light_rows as f64 / self.sampled_rows.max(1) as f64
            }
        };
        let options = (self.types.iter().zip(&self.totals).enumerate())
            .map(|(k, (&t, &e))| (t, if k == 0 { e } else { scale(e) + self.heavy[k] }))
            .collect();
        Scored {
            n_params: self.n_params,
            is_attention: self.is_attention,
            options,
            top_rows_share,
            worst_rows: order.iter().take(WORST_ROWS).map(|&i| (i, r[i])).collect(),
            energy: self.energy,
            measured: None,
        }
    }
}

/// Scores one tensor under `types` (the la-mix base type is always included).
pub fn score(c: &Candidate, types: &[GgmlType]) -> Result<Scored, quant::QuantError> {
    let types = candidates(types, c.importance.is_some());
    let mut s = Scorer::new(c.width, c.is_attention, &types)?;
    s.add_rows(c.data, c.importance)?;
    Ok(s.finish())
}

/// A choice with its reason and score.
#[derive(Debug, Clone)]
pub struct Choice {
    /// The type chosen.
    pub ty: GgmlType,
    /// Why, as the plan shows it.
    pub reason: String,
    /// Error under the chosen type.
    pub error: f64,
    /// la-mix: error removed per extra bit by the tensor's first upgrade on its
    /// error/bits hull (its rank in the F16 budget; 0 if it has none).
    pub score: f64,
    /// Share of the tensor's base-type error in its worst 5% of rows.
    pub top_rows_share: f64,
}

/// What the plan says about a measured tensor ("" when unmeasured): what its group's
/// measurement gave and where its α came from.
fn measured_note(s: &Scored) -> String {
    use super::sensitivity::AlphaFrom;
    let Some(m) = &s.measured else {
        return String::new();
    };
    let base = s.options[0].0.name();
    let head = format!(
        "; measured: {} alone at {base} adds {} {:.2e}",
        m.group,
        m.quantity.describe(),
        m.delta_kld
    );
    let (err, floor) = m.resolution;
    let why = if err > 0.0 {
        format!(
            "its base error {err:.2e} is below the {floor:.2e} the measurement resolves \
             (its activation rounding's)"
        )
    } else {
        format!("{base} reproduces it exactly")
    };
    let (est, a) = (m.estimated(), m.alpha);
    match &m.from {
        AlphaFrom::Measured => format!("{head}, so errors are {est} (α {a:.2e})"),
        AlphaFrom::Role { group } => format!(
            "{head}, but {why}: errors are {est} with α {a:.2e} borrowed from {group}, \
             its role's largest"
        ),
        AlphaFrom::AnyGroup { group } => format!(
            "{head}, but {why}: errors are {est} with α {a:.2e} borrowed from {group}, \
             the largest of any group (none of its role resolved one)"
        ),
        AlphaFrom::Proxy => format!(
            "{head}, but {why} and no group resolved an α: errors are the raw proxy's (α 1)"
        ),
    }
}

fn bits(ty: GgmlType) -> f64 {
    ty.bits_per_weight()
}

/// What la-mix may buy with its budget above a tensor's base type: the
/// K-quant steps above Q4_K, Q8_0 and F16 (each after the width fallback, so
/// on a width that no 256-block fits, Q5_1 and Q8_0). Scored for every tensor.
pub const LA_MIX_UPGRADES: &[GgmlType] =
    &[GgmlType::Q5K, GgmlType::Q6K, GgmlType::Q8_0, GgmlType::F16];

/// One option of a tensor: (bits of the whole tensor, error, type).
type Point = (f64, f64, GgmlType);

/// A tensor's options as the solvers see them, cheapest first: one per bit
/// count (the least error among types of equal size: Q4_K and IQ4_NL both take
/// 4.5 bits per weight; f36d718 kept both, took the zero-bit step between them
/// for an infinite gain that ranked nowhere, and left such tensors at their
/// cheapest type). Non-finite errors rank nowhere (the writer reports them). With
/// `from_base`, only the base type (`options[0]`) and the types of more bits
/// than it: the steps la-mix may buy.
fn menu(s: &Scored, from_base: bool) -> Vec<Point> {
    let base_bits = bits(s.options[0].0);
    let mut v: Vec<Point> = s
        .options
        .iter()
        .enumerate()
        .filter(|(k, (t, _))| !from_base || *k == 0 || bits(*t) > base_bits)
        .map(|(_, &(t, e))| (bits(t) * s.n_params as f64, e, t))
        .collect();
    // Cheapest first; among equal bits the least error first (a stable sort keeps the
    // options' order, base type first, between equal errors; NaN sorts last).
    v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    v.dedup_by(|later, kept| later.0 == kept.0);
    v
}

/// A tensor's options on the lower convex hull of error against bits, cheapest
/// first (see [`menu`] for `from_base`): each step up removes less error per
/// extra bit than the one before.
fn hull(s: &Scored, from_base: bool) -> Vec<Point> {
    let mut hull: Vec<Point> = Vec::new();
    for o in menu(s, from_base) {
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
    hull
}

/// Most cells (tensors × budget units) of [`knapsack`]'s choice table (one byte each).
const KNAPSACK_CELLS: usize = 1 << 25;

/// The least total error with total bits at most `budget`, one option per
/// tensor (a multiple-choice knapsack), by dynamic programming over the bits
/// above each tensor's cheapest option. Bits are counted in units: the greatest
/// common divisor of every option's extra bits when the table of
/// `tensors × budget / unit` choices fits in [`KNAPSACK_CELLS`] (then the
/// optimum is exact), else the least unit that fits, with every option's bits
/// rounded up to it (the plan still fits the budget; it may leave up to one
/// unit per tensor unspent, under 0.2% of the bits above the cheapest plan).
/// The optimum never rises with the budget. Returns each tensor's option index
/// in its menu, or `None` when even the cheapest options exceed the budget.
fn knapsack(menus: &[Vec<Point>], budget: f64) -> Option<Vec<usize>> {
    let least: f64 = menus.iter().map(|m| m[0].0).sum();
    // A budget equal to a plan's bits, computed from a rounded bits per weight, may
    // fall an ulp short of the plan: allow that much.
    let room = budget - least + 1e-9 * budget.abs();
    if room < 0.0 || !room.is_finite() {
        return None;
    }
    let n = menus.len().max(1);
    // Extra bits as integers in 1/32 of a bit (every ggml type's bits per weight
    // is a multiple of 1/32; a tensor's bits are whole).
    let extra: Vec<Vec<u64>> = menus
        .iter()
        .map(|m| {
            m.iter()
                .map(|p| ((p.0 - m[0].0) * 32.0).round() as u64)
                .collect()
        })
        .collect();
    let room32 = (room * 32.0).floor() as u64;
    let gcd = extra
        .iter()
        .flatten()
        .fold(0u64, |g, &x| if x == 0 { g } else { gcd(g, x) })
        .max(1);
    let max_units = (KNAPSACK_CELLS / n).max(2) as u64 - 1;
    let unit = if room32 / gcd <= max_units {
        gcd
    } else {
        room32.div_ceil(max_units)
    };
    let cap = (room32 / unit) as usize;
    let cost: Vec<Vec<usize>> = extra
        .iter()
        .map(|m| m.iter().map(|&x| x.div_ceil(unit) as usize).collect())
        .collect();
    // A tensor whose cheapest type has a non-finite error (non-finite weights, which
    // the writer reports) keeps that type and adds nothing to weigh, as in [`greedy`].
    let blind: Vec<bool> = menus.iter().map(|m| !m[0].1.is_finite()).collect();
    // best[c]: least error of the tensors so far within c units (non-increasing in c).
    let mut best = vec![0f64; cap + 1];
    let mut next = vec![0f64; cap + 1];
    let mut choice = vec![0u8; menus.len() * (cap + 1)];
    for (t, m) in menus.iter().enumerate() {
        let row = &mut choice[t * (cap + 1)..(t + 1) * (cap + 1)];
        for c in 0..=cap {
            let mut b = (f64::INFINITY, 0u8);
            for (k, p) in m.iter().enumerate() {
                let x = cost[t][k];
                if x > c {
                    break; // options are cheapest first
                }
                // Non-finite errors rank nowhere.
                let e = match (blind[t], p.1.is_finite()) {
                    (true, _) if k == 0 => best[c],
                    (true, _) => break,
                    (false, true) => best[c - x] + p.1,
                    (false, false) => continue,
                };
                if e < b.0 {
                    b = (e, k as u8);
                }
            }
            next[c] = b.0;
            row[c] = b.1;
        }
        std::mem::swap(&mut best, &mut next);
    }
    let mut at = vec![0usize; menus.len()];
    let mut c = cap;
    for t in (0..menus.len()).rev() {
        let k = choice[t * (cap + 1) + c] as usize;
        at[t] = k;
        c -= cost[t][k];
    }
    Some(at)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One step bought by [`greedy`]: tensor `tensor` moved up its menu,
/// removing `gain` error per extra bit.
#[derive(Debug, Clone, Copy)]
struct Step {
    tensor: usize,
    gain: f64,
}

/// Walks the menus from their first options: repeatedly buys the move with the
/// most error removed per extra bit among those that still fit in `budget`
/// extra bits (a move that does not fit is passed over; smaller ones may still
/// be bought). Returns each tensor's option, the steps in the order bought and
/// the extra bits spent. While moves fit, the best one from a point of a
/// tensor's lower convex hull of (bits, error) is the next point of that hull,
/// so the gains fall and the result is the greedy knapsack optimum; when the
/// hull's next step no longer fits, a cheaper option off the hull may still
/// (so no move of less error fits in what is left).
fn greedy(menus: &[Vec<Point>], budget: f64) -> (Vec<usize>, Vec<Step>, f64) {
    let mut at = vec![0usize; menus.len()];
    let mut steps = Vec::new();
    let mut spent = 0.0;
    loop {
        let mut best: Option<(Step, usize)> = None;
        for (i, m) in menus.iter().enumerate() {
            let (b0, e0, _) = m[at[i]];
            for (k, &(b1, e1, _)) in m.iter().enumerate().skip(at[i] + 1) {
                if spent + (b1 - b0) > budget {
                    break; // cheapest first: the rest do not fit either
                }
                let gain = (e0 - e1) / (b1 - b0);
                if !gain.is_finite() || gain <= 0.0 {
                    continue; // a non-finite error (reported by the writer) ranks nowhere
                }
                if best.is_none_or(|(b, _)| gain > b.gain) {
                    best = Some((Step { tensor: i, gain }, k));
                }
            }
        }
        let Some((step, k)) = best else { break };
        let i = step.tensor;
        spent += menus[i][k].0 - menus[i][at[i]].0;
        at[i] = k;
        steps.push(step);
    }
    (at, steps, spent)
}

/// The la-mix plan: the base types (Q8_0 attention projections, Q4_K
/// elsewhere, after the width fallback), then the F16 budget spent as a *bit*
/// budget. `f16_budget` is a share of the weights: the budget is the extra bits
/// that putting that share of every tensor into F16 would cost,
/// `f16_budget · Σ_t n_t (16 − bits(base_t))`. It buys upgrades (Q5_K, Q6_K,
/// Q8_0, F16: whatever `scored` holds above the base type) greedily by error
/// removed per extra bit, each tensor moving up the lower convex hull of its
/// (bits, error) options. A tensor too large to fit in F16 (an output head
/// holding a quarter of the weights) can still get Q6_K; F16 is bought where
/// the step from Q8_0 still pays. Measured on polyglot-25m (CHANGELOG.md, 0.1.0):
/// F16 on whole tensors only, the former rule, gave 0.00512 mean KLD at 6.310
/// bpw; this rule gives 0.0037 at 6.27 bpw, and the output head Q8_0 rule of
/// llama.cpp's presets (base + head Q8_0: 0.00589 at 6.51 bpw) loses to it too.
pub fn la_mix(scored: &[Scored], f16_budget: f64) -> Vec<Choice> {
    let menus: Vec<Vec<Point>> = scored.iter().map(|s| menu(s, true)).collect();
    let f16_extra: f64 = scored
        .iter()
        .map(|s| (bits(GgmlType::F16) - bits(s.options[0].0)).max(0.0) * s.n_params as f64)
        .sum();
    let budget = f16_budget * f16_extra;
    let (at, steps, spent) = greedy(&menus, budget);
    let last_gain = steps.last().map(|s| s.gain);
    scored
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let h = hull(s, true);
            let (base, base_err) = s.options[0];
            let recipe = la_mix_base(s.is_attention);
            let mut reason = if s.is_attention {
                "attention projection: Q8_0".to_string()
            } else {
                "la-mix base: Q4_K".to_string()
            };
            if base != recipe {
                reason = format!("{reason}; width does not fit {recipe}: falls back to {base}");
            }
            // The tensor's first step up its hull: its rank in the budget.
            let first_gain = h.get(1).map(|p| (base_err - p.1) / (p.0 - h[0].0));
            let (b, e, ty) = menus[i][at[i]];
            if at[i] > 0 {
                let ranks: Vec<String> = steps
                    .iter()
                    .enumerate()
                    .filter(|(_, st)| st.tensor == i)
                    .map(|(r, _)| format!("#{}", r + 1))
                    .collect();
                reason = format!(
                    "{reason}; upgraded by the F16 budget to {ty} (+{:.2} bits per weight): step(s) {} \
                     of {} bought by {} removed per extra bit (first step {:.3e}/bit); the budget is \
                     the extra bits of F16 on {}% of the weights ({:.3e} bits), {:.1}% spent",
                    (b - h[0].0) / s.n_params as f64,
                    ranks.join(", "),
                    steps.len(),
                    estimated(s),
                    first_gain.unwrap_or(0.0),
                    100.0 * f16_budget,
                    budget,
                    100.0 * spent / budget.max(f64::MIN_POSITIVE),
                );
            } else if let (Some(g), Some(p)) = (first_gain, h.get(1)) {
                let why = match last_gain {
                    Some(cut) if g <= cut => format!("below the last step bought ({cut:.3e}/bit)"),
                    _ => "does not fit in what is left of the F16 budget".to_string(),
                };
                reason.push_str(&format!(
                    "; not upgraded: {} would remove {g:.3e} {} per extra bit, {why}",
                    p.2,
                    estimated(s)
                ));
            }
            reason.push_str(&measured_note(s));
            Choice {
                ty,
                reason,
                error: e,
                score: first_gain.unwrap_or(0.0),
                top_rows_share: s.top_rows_share,
            }
        })
        .collect()
}

/// Candidate types for `--target-bpw`, cheapest first: every type a
/// llama-quantize preset can write (the i-quants, ternary and 1-2 bit types of the
/// edge sizes included) and MXFP4, so any preset's plan is a point of the problem
/// `--target-bpw` solves. (NVFP4 is left out: ggml's has no per-tensor scale, so the
/// small weights of a trained model decode to zero.) A tensor without importance of
/// its own gets none of [`NEEDS_IMPORTANCE`].
pub const TARGET_TYPES: &[GgmlType] = &[
    GgmlType::Q1_0,
    GgmlType::IQ1S,
    GgmlType::TQ1_0,
    GgmlType::IQ1M,
    GgmlType::IQ2XXS,
    GgmlType::TQ2_0,
    GgmlType::Q2_0,
    GgmlType::IQ2XS,
    GgmlType::IQ2S,
    GgmlType::Q2K,
    GgmlType::IQ3XXS,
    GgmlType::IQ3S,
    GgmlType::Q3K,
    GgmlType::IQ4XS,
    GgmlType::MXFP4,
    GgmlType::Q4_0,
    GgmlType::IQ4NL,
    GgmlType::Q4K,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5K,
    GgmlType::Q5_1,
    GgmlType::Q6K,
    GgmlType::Q8_0,
    GgmlType::BF16,
    GgmlType::F16,
    GgmlType::F32,
];

/// The types llama-quantize writes only with importance weights (`tensor_requires_imatrix`;
/// ggml itself refuses IQ1_S, IQ2_XXS and IQ2_XS without): a calibrated policy scores them
/// only for tensors with statistics of their own, which it writes with them.
pub const NEEDS_IMPORTANCE: &[GgmlType] = &[
    GgmlType::IQ1S,
    GgmlType::IQ1M,
    GgmlType::IQ2XXS,
    GgmlType::IQ2XS,
    GgmlType::IQ2S,
    GgmlType::IQ3XXS,
];

/// `types` but [`NEEDS_IMPORTANCE`] for a tensor without importance of its own.
pub fn candidates(types: &[GgmlType], own_importance: bool) -> Vec<GgmlType> {
    (types.iter().copied())
        .filter(|t| own_importance || !NEEDS_IMPORTANCE.contains(t))
        .collect()
}

/// A `--target-bpw` plan: a type per tensor and what the budget came to.
#[derive(Debug, Clone)]
pub struct TargetPlan {
    /// One per tensor, in the order given.
    pub choices: Vec<Choice>,
    /// Bits per weight of the chosen tensors (the target they were given).
    pub bpw: f64,
    /// Whether some tensor could still move to a type of less error within the
    /// budget (never, unless the budget units were rounded: see `knapsack`).
    pub upgrade_fits: bool,
}

/// Chooses a type per tensor so the chosen tensors' bits per weight stay at
/// most `target` and the total error (estimated KLD when measured) is least:
/// the exact optimum over every candidate type (`knapsack`), not only those on
/// a tensor's error/bits hull. When even the cheapest types exceed the target,
/// every tensor gets its cheapest type.
pub fn target_bpw(scored: &[Scored], target: f64) -> TargetPlan {
    let total_params: f64 = scored.iter().map(|c| c.n_params as f64).sum();
    let menus: Vec<Vec<Point>> = scored.iter().map(|s| menu(s, false)).collect();
    let budget = target * total_params;
    let solved = knapsack(&menus, budget);
    let feasible = solved.is_some();
    let at = solved.unwrap_or_else(|| vec![0; menus.len()]);
    let spent: f64 = at.iter().zip(&menus).map(|(&k, m)| m[k].0).sum();
    let bpw = spent / total_params.max(1.0);
    // Whether one tensor alone could still lower its error within what is left.
    let upgrade_fits = feasible
        && at.iter().zip(&menus).any(|(&k, m)| {
            m.iter()
                .any(|p| p.1 < m[k].1 && spent - m[k].0 + p.0 <= budget)
        });
    let budget_note = if !feasible {
        format!("; even the cheapest types take {bpw:.4} bpw, above the target {target:.4}")
    } else if bpw < target * 0.995 && !upgrade_fits {
        format!(
            "; the chosen tensors take {bpw:.4} of {target:.4} bpw: no tensor's type of less \
             error fits in the rest"
        )
    } else {
        format!("; the chosen tensors take {bpw:.4} of {target:.4} bpw")
    };
    let choices = scored
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (b, e, t) = menus[i][at[i]];
            Choice {
                ty: t,
                reason: format!(
                    "--target-bpw: {} ({:.2} bpw), the least total {} within the budget{budget_note}{}",
                    t.name(),
                    b / s.n_params as f64,
                    estimated(s),
                    measured_note(s)
                ),
                error: e,
                score: 0.0,
                top_rows_share: s.top_rows_share,
            }
        })
        .collect();
    TargetPlan {
        choices,
        bpw,
        upgrade_fits,
    }
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

    fn cand<'a>(name: &'a str, data: &'a [f32], imp: &'a [f32]) -> Candidate<'a> {
        Candidate {
            name,
            data,
            width: 256,
            importance: Some(imp),
            is_attention: false,
        }
    }

    /// Extra bits of a plan over the la-mix base types.
    fn extra_bits(plan: &[Choice], sc: &[Scored]) -> f64 {
        plan.iter()
            .zip(sc)
            .map(|(c, s)| (bits(c.ty) - bits(s.options[0].0)) * s.n_params as f64)
            .sum()
    }

    /// The F16 budget in bits: F16 on that share of every tensor.
    fn budget_bits(sc: &[Scored], share: f64) -> f64 {
        share
            * sc.iter()
                .map(|s| (16.0 - bits(s.options[0].0)) * s.n_params as f64)
                .sum::<f64>()
    }

    #[test]
    fn f16_budget_goes_to_the_most_sensitive_tensor() {
        let a = data(256 * 64, 1, 1.0);
        let b = data(256 * 64, 2, 1.0);
        let hot = vec![100.0f32; 256];
        let cold = vec![0.01f32; 256];
        let cands = [cand("a", &a, &cold), cand("b", &b, &hot)];
        let sc: Vec<Scored> = cands
            .iter()
            .map(|c| score(c, LA_MIX_UPGRADES).unwrap())
            .collect();
        // Half the weights' worth of F16 bits: exactly b in F16.
        let plan = la_mix(&sc, 0.5);
        assert_eq!(plan[1].ty, GgmlType::F16, "{}", plan[1].reason);
        assert_eq!(plan[0].ty, GgmlType::Q4K, "{}", plan[0].reason);
        assert!(plan[1].reason.contains("upgraded by the F16 budget to F16"));
        assert!(
            plan[0].reason.contains("not upgraded"),
            "{}",
            plan[0].reason
        );
        assert!(plan[1].score > plan[0].score);
        // No budget: the recipe's base types; the whole budget: F16 everywhere.
        assert!(la_mix(&sc, 0.0).iter().all(|c| c.ty == GgmlType::Q4K));
        assert!(la_mix(&sc, 1.0).iter().all(|c| c.ty == GgmlType::F16));
    }

    /// The rule that replaced "F16 on whole tensors only": a tensor too large
    /// for the budget in F16 (an output head holding 40% of the weights against
    /// a budget of 5% of them) still gets the intermediate upgrade that fits.
    #[test]
    fn a_tensor_too_large_for_f16_gets_an_intermediate_upgrade() {
        let big = data(256 * 64, 21, 1.0);
        let small = data(256 * 96, 22, 1.0);
        let hot = vec![10.0f32; 256];
        let cold = vec![1.0f32; 256];
        let cands = [
            cand("output.weight", &big, &hot),
            cand("ffn", &small, &cold),
        ];
        let sc: Vec<Scored> = cands
            .iter()
            .map(|c| score(c, LA_MIX_UPGRADES).unwrap())
            .collect();
        let types: Vec<GgmlType> = sc[0].options.iter().map(|o| o.0).collect();
        assert_eq!(
            types,
            [
                GgmlType::Q4K,
                GgmlType::Q5K,
                GgmlType::Q6K,
                GgmlType::Q8_0,
                GgmlType::F16
            ]
        );
        let plan = la_mix(&sc, 0.05);
        // Budget 0.05 · 11.5 · 40960 bits: Q5_K on the big tensor (1 bit · 16384) fits, Q6_K does not.
        assert_eq!(plan[0].ty, GgmlType::Q5K, "{}", plan[0].reason);
        assert!(plan[0]
            .reason
            .contains("upgraded by the F16 budget to Q5_K"));
        assert!(plan[0].error < sc[0].options[0].1);
        assert_eq!(plan[1].ty, GgmlType::Q4K, "{}", plan[1].reason);
        assert!(
            plan[1].reason.contains("not upgraded"),
            "{}",
            plan[1].reason
        );
        assert!(extra_bits(&plan, &sc) <= budget_bits(&sc, 0.05));
    }

    /// The budget is spent up to what it allows and never beyond, and more
    /// budget never leaves more error.
    #[test]
    fn f16_budget_is_a_bit_budget() {
        let ws: Vec<Vec<f32>> = (0..5)
            .map(|k| data(256 * (8 + 8 * k), 30 + k as u32, 1.0))
            .collect();
        let imps: Vec<Vec<f32>> = (0..5).map(|k| vec![(k * k + 1) as f32; 256]).collect();
        let cands: Vec<Candidate> = ws.iter().zip(&imps).map(|(w, i)| cand("t", w, i)).collect();
        let sc: Vec<Scored> = cands
            .iter()
            .map(|c| score(c, LA_MIX_UPGRADES).unwrap())
            .collect();
        let mut last = f64::INFINITY;
        for share in [0.0, 0.01, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0] {
            let plan = la_mix(&sc, share);
            let extra = extra_bits(&plan, &sc);
            assert!(extra <= budget_bits(&sc, share), "{share}: {extra}");
            // Greedy to the end: no tensor's next step up its hull fits in what is left.
            let left = budget_bits(&sc, share) - extra;
            for (c, s) in plan.iter().zip(&sc) {
                let h = hull(s, true);
                let k = h.iter().position(|p| p.2 == c.ty).expect("on the hull");
                if let Some(next) = h.get(k + 1) {
                    assert!(next.0 - h[k].0 > left, "{share}: {} left, {:?}", left, next);
                }
            }
            let err: f64 = plan.iter().map(|c| c.error).sum();
            assert!(err <= last, "{share}: {err} > {last}");
            last = err;
            if share == 1.0 {
                assert!(plan.iter().all(|c| c.ty == GgmlType::F16), "{plan:?}");
            }
        }
    }

    /// A tensor whose error is not finite (non-finite weights, which the writer
    /// reports) is never upgraded and does not stop the others' upgrades.
    #[test]
    fn non_finite_errors_rank_nowhere() {
        let s = |e: f64| Scored {
            n_params: 1024,
            is_attention: false,
            options: vec![
                (GgmlType::Q4K, e),
                (GgmlType::Q8_0, e / 100.0),
                (GgmlType::F16, 0.0),
            ],
            top_rows_share: 0.0,
            worst_rows: Vec::new(),
            energy: 1.0,
            measured: None,
        };
        let sc = [s(f64::NAN), s(1.0), s(f64::INFINITY)];
        for p in [la_mix(&sc, 0.2), target_bpw(&sc, 7.0).choices] {
            assert_eq!(p[0].ty, GgmlType::Q4K, "{p:?}");
            assert_eq!(p[1].ty, GgmlType::Q8_0, "{p:?}");
            assert_eq!(p[2].ty, GgmlType::Q4K, "{p:?}");
        }
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

    /// Rows of very different scales (log-uniform over 1/30..30, as real
    /// weights' rows differ) and an uneven importance: what sampling must survive.
    fn uneven_rows(rows: usize, width: usize, seed: u32) -> (Vec<f32>, Vec<f32>) {
        let scales = data(rows, seed ^ 0x55, 1.0);
        let mut a = data(rows * width, seed, 2.0);
        for (r, row) in a.chunks_exact_mut(width).enumerate() {
            let s = (scales[r] * 2.0 * 30f32.ln()).exp();
            row.iter_mut().for_each(|x| *x *= s);
        }
        let imp = data(width, seed ^ 0xaa, 1.0)
            .iter()
            .map(|x| (x * 8.0).exp())
            .collect();
        (a, imp)
    }

    #[test]
    fn row_error_is_the_definition() {
        let w = data(1000, 1, 2.0);
        let d = data(1000, 2, 2.0);
        let imp = data(1000, 3, 1.0)
            .iter()
            .map(|x| x.abs())
            .collect::<Vec<_>>();
        for i in [Some(imp.as_slice()), None] {
            let want: f64 = (0..w.len())
                .map(|j| i.map_or(1.0, |i| i[j] as f64) * ((w[j] - d[j]) as f64).powi(2))
                .sum();
            // 1000 is not a multiple of the 8 lanes: the tail counts too.
            let got = row_error(&w, &d, i);
            assert!((got - want).abs() <= 1e-12 * want, "{got} {want}");
        }
    }

    #[test]
    fn sampled_scoring_estimates_the_full_errors() {
        let (rows, width) = (2048, 256);
        assert_eq!(upgrade_stride(4 * MIN_SAMPLED_ROWS), UPGRADE_STRIDE);
        assert_eq!(upgrade_stride(100 * MIN_SAMPLED_ROWS), UPGRADE_STRIDE);
        assert_eq!(upgrade_stride(2 * MIN_SAMPLED_ROWS - 1), 1);
        assert_eq!(upgrade_stride(3 * MIN_SAMPLED_ROWS), 3);
        let (a, imp) = uneven_rows(rows, width, 11);
        let full = {
            let mut s = Scorer::new(width, false, TARGET_TYPES).unwrap();
            s.add_rows(&a, Some(&imp)).unwrap();
            s.finish()
        };
        // Chunks that do not line up with the stride: the sampled rows are
        // every 4th row of the tensor, wherever the chunks fall.
        let mut kept = Vec::new();
        let mut s = Scorer::new(width, false, TARGET_TYPES).unwrap().sampled(4);
        for chunk in a.chunks(width * 37) {
            s.add_rows_keeping(chunk, Some(&imp), &mut |b| kept.extend_from_slice(b))
                .unwrap();
        }
        let sampled = s.finish();
        // The base type is scored and packed on every row, as before (summed by chunks).
        assert_eq!(sampled.options[0].0, full.options[0].0);
        assert!((sampled.options[0].1 / full.options[0].1 - 1.0).abs() < 1e-12);
        assert_eq!(sampled.worst_rows, full.worst_rows);
        assert!((sampled.top_rows_share / full.top_rows_share - 1.0).abs() < 1e-12);
        let c = cand("a", &a, &imp);
        let c = Candidate { width, ..c };
        assert_eq!(kept, tensor_error_packed(&c, GgmlType::Q4K).unwrap().1);
        let mut worst = 0f64;
        for (x, y) in sampled.options.iter().zip(&full.options) {
            assert_eq!(x.0, y.0);
            if y.1 == 0.0 {
                assert_eq!(x.1, 0.0, "{}", x.0); // F32
                continue;
            }
            let rel = (x.1 / y.1 - 1.0).abs();
            // Every type within 2%, the heavy rows scored exactly (seen: BF16 1.4%,
            // Q5_0 1.3%, IQ3_S, MXFP4, TQ1_0 and TQ2_0 1.1%; without the heavy
            // stratum IQ3_S was 3.4% off, Q4_0 3.1%).
            let bound = 0.02;
            worst = worst.max(rel);
            assert!(
                rel < bound,
                "{}: sampled {:.4e}, full {:.4e}",
                x.0,
                x.1,
                y.1
            );
        }
        // The row scales span 900x: a plain every-4th-row mean would be off by far more.
        let plain: f64 = (0..rows)
            .step_by(4)
            .map(|r| {
                let sub = Candidate {
                    data: &a[r * width..(r + 1) * width],
                    ..c
                };
                tensor_error(&sub, GgmlType::Q6K).unwrap().total
            })
            .sum::<f64>()
            * 4.0;
        let k6 = full
            .options
            .iter()
            .position(|o| o.0 == GgmlType::Q6K)
            .unwrap();
        let plain_rel = (plain / full.options[k6].1 - 1.0).abs();
        assert!(
            worst < plain_rel,
            "ratio estimate {worst:.3e}, plain mean {plain_rel:.3e}"
        );
    }

    #[test]
    fn sampled_scoring_keeps_the_plans() {
        // Tensors of one shape, their sensitivities 1.3x apart: the la-mix and
        // --target-bpw plans from sampled scores equal those from full scores.
        // Tensors alike to within the sampling error may swap places; then the
        // plan's error (counted with the full scores) stays within 0.5% (seen:
        // +0.28% on a swap of two tied tensors, -4.3% where the greedy gained).
        let (rows, width) = (2048, 256);
        // Each policy's scores as the pipeline makes them: la-mix the types above the
        // base type, --target-bpw every candidate.
        let scores = |stride: usize, spread: f32, la_mix: bool| -> Vec<Scored> {
            (0..6)
                .map(|i| {
                    let (mut a, imp) = uneven_rows(rows, width, 100 + i as u32);
                    a.iter_mut().for_each(|x| *x *= spread.powi(i));
                    let types = if la_mix {
                        LA_MIX_UPGRADES
                    } else {
                        TARGET_TYPES
                    };
                    let mut s = Scorer::new(width, i % 3 == 2, types)
                        .unwrap()
                        .sampled(stride);
                    if la_mix {
                        s = s.above_base();
                    }
                    s.add_rows(&a, Some(&imp)).unwrap();
                    s.finish()
                })
                .collect()
        };
        let types = |p: &[Choice]| p.iter().map(|c| c.ty).collect::<Vec<_>>();
        // The error of a plan under the full scores.
        let cost = |p: &[Choice], full: &[Scored]| -> f64 {
            p.iter()
                .zip(full)
                .map(|(c, s)| s.options.iter().find(|o| o.0 == c.ty).unwrap().1)
                .sum()
        };
        for spread in [1.15f32, 1.0] {
            let (full, sampled) = (
                scores(1, spread, true),
                scores(UPGRADE_STRIDE, spread, true),
            );
            let mut plans = Vec::new();
            for share in [0.02, 0.05, 0.1, 0.3] {
                plans.push((la_mix(&full, share), la_mix(&sampled, share), true, 0));
            }
            let (full_t, sampled_t) = (
                scores(1, spread, false),
                scores(UPGRADE_STRIDE, spread, false),
            );
            // Among the --target-bpw types some are close in error (IQ4_XS and
            // Q4_K, Q5_K and Q5_1): the sampled scores may pick the other one.
            for bpw in [4.0, 4.5, 5.0, 6.0] {
                let (p, q) = (target_bpw(&full_t, bpw), target_bpw(&sampled_t, bpw));
                plans.push((p.choices, q.choices, false, 1));
            }
            for (p, q, same, set) in &plans {
                if spread > 1.0 && *same {
                    assert_eq!(types(p), types(q));
                }
                let full = if *set == 0 { &full } else { &full_t };
                let (cp, cq) = (cost(p, full), cost(q, full));
                assert!(cq <= cp * 1.005, "spread {spread}: {cq:.5e} vs {cp:.5e}");
            }
            let upgraded = (plans[1].0.iter())
                .filter(|c| c.reason.contains("upgraded by"))
                .count();
            assert!(
                upgraded > 0 && upgraded < 6,
                "a budget that chooses: {upgraded}"
            );
        }
    }

    #[test]
    fn above_base_scores_only_what_la_mix_can_buy() {
        let (a, imp) = uneven_rows(64, 256, 5);
        let score_with = |attention: bool, above: bool| {
            let mut s = Scorer::new(256, attention, LA_MIX_UPGRADES).unwrap();
            if above {
                s = s.above_base();
            }
            s.add_rows(&a, Some(&imp)).unwrap();
            s.finish()
        };
        let types = |s: &Scored| s.options.iter().map(|o| o.0).collect::<Vec<_>>();
        let att = score_with(true, true);
        assert_eq!(types(&att), [GgmlType::Q8_0, GgmlType::F16]);
        let all = score_with(true, false);
        assert_eq!(
            types(&all),
            [GgmlType::Q8_0, GgmlType::Q5K, GgmlType::Q6K, GgmlType::F16]
        );
        assert_eq!(att.options[1], all.options[3]);
        // Q4_K's upgrades are all above it: nothing dropped.
        assert_eq!(
            types(&score_with(false, true)),
            types(&score_with(false, false))
        );
        // The same la-mix plan either way.
        let ffn = score_with(false, false);
        for share in [0.01, 0.2, 1.0] {
            let p = la_mix(&[all.clone(), ffn.clone()], share);
            let q = la_mix(&[att.clone(), ffn.clone()], share);
            for (p, q) in p.iter().zip(&q) {
                assert_eq!((p.ty, &p.reason), (q.ty, &q.reason));
            }
        }
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
            let plan = target_bpw(&sc, target).choices;
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
        let e = |t| {
            target_bpw(&sc, t)
                .choices
                .iter()
                .map(|p| p.error)
                .sum::<f64>()
        };
        assert!(e(6.0) <= e(4.5) && e(4.5) <= e(3.0));
    }

    /// f36d718's regression: on a width no 256-block fits, Q2_K/Q3_K fall back to
    /// Q4_0 and IQ4_XS to IQ4_NL, both 4.5 bits per weight (as Q4_K and IQ4_NL on
    /// any width). The hull took the zero-bit step from the first to the second,
    /// when the second had less error, for an infinite gain, ranked it nowhere and
    /// left the tensor at the first: polyglot-25m at Q4_K_M's size got Q4_0
    /// everywhere but F16 `ffn_down`, 0.33 bpw unspent. Scores as polyglot-25m's
    /// (Q4_0 listed before IQ4_NL, IQ4_NL the better): every tensor moves past
    /// Q4_0 and the budget is spent.
    #[test]
    fn equal_size_types_do_not_block_a_tensor() {
        let narrow = |n_params: usize, scale: f64, is_attention: bool| Scored {
            n_params,
            is_attention,
            options: vec![
                (GgmlType::Q5_0, 40.0 * scale),
                (GgmlType::Q4_0, 100.0 * scale),
                (GgmlType::IQ4NL, 80.0 * scale),
                (GgmlType::Q4_1, 60.0 * scale),
                (GgmlType::Q5_1, 30.0 * scale),
                (GgmlType::Q8_0, 3.0 * scale),
                (GgmlType::F16, 0.01 * scale),
            ],
            top_rows_share: 0.0,
            worst_rows: Vec::new(),
            energy: 1.0,
            measured: None,
        };
        let mut sc: Vec<Scored> = (0..6)
            .map(|k| narrow(384 * 384, 1.0 + k as f64, k % 3 == 0))
            .collect();
        sc.push(Scored {
            n_params: 384 * 1024,
            is_attention: false,
            options: vec![
                (GgmlType::Q4K, 50.0),
                (GgmlType::Q2K, 300.0),
                (GgmlType::Q3K, 150.0),
                (GgmlType::Q5K, 25.0),
                (GgmlType::Q6K, 12.0),
                (GgmlType::Q8_0, 3.0),
                (GgmlType::F16, 0.01),
            ],
            top_rows_share: 0.0,
            worst_rows: Vec::new(),
            energy: 1.0,
            measured: None,
        });
        for target in [4.5, 5.0, 6.3, 7.0] {
            let tp = target_bpw(&sc, target);
            for c in &tp.choices {
                assert_ne!(c.ty, GgmlType::Q4_0, "{target}: {}", c.reason);
            }
            let params: f64 = sc.iter().map(|s| s.n_params as f64).sum();
            let bits: f64 = (tp.choices.iter().zip(&sc))
                .map(|(c, s)| c.ty.bits_per_weight() * s.n_params as f64)
                .sum();
            assert!((bits / params - tp.bpw).abs() < 1e-12);
            assert!(tp.bpw <= target, "{target}: {}", tp.bpw);
            assert!(!tp.upgrade_fits, "{target}: {}", tp.choices[0].reason);
        }
    }

    /// The measured α decides: the raw proxy gives more of the budget to the
    /// tensor with more importance-weighted error, but once α says the other
    /// one's error costs more KLD, the budget (and --target-bpw's bits) go there.
    #[test]
    fn measured_alpha_overrides_the_raw_ranking() {
        use crate::policy::sensitivity::{AlphaFrom, Measured, Quantity};
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
        let more_bits = |p: &[Choice], i: usize| bits(p[i].ty) > bits(p[1 - i].ty);
        let p = la_mix(&raw, 0.1);
        assert!(more_bits(&p, 0), "{p:?}");
        let m = Measured {
            group_of: vec![0, 1],
            groups: vec![("a".into(), 1e-4), ("b".into(), 1e-2)],
            alpha: vec![1e-4 / raw[0].options[0].1, 1e-2 / raw[1].options[0].1],
            alpha_from: vec![AlphaFrom::Measured; 2],
            resolution: vec![(raw[0].options[0].1, 0.0), (raw[1].options[0].1, 0.0)],
            tokens: 100,
            quantity: Quantity::Kld,
        };
        let mut cal = raw.clone();
        calibrate(&mut cal, &m);
        // Errors are now estimated KLD: the base error equals the measured ΔKLD.
        assert!((cal[1].options[0].1 - 1e-2).abs() < 1e-12);
        for (r, c) in raw[0].options.iter().zip(&cal[0].options) {
            assert_eq!(r.0, c.0);
            assert!((c.1 - r.1 * m.alpha[0]).abs() <= 1e-12 * r.1.max(1.0));
        }
        let plan = la_mix(&cal, 0.1);
        assert!(more_bits(&plan, 1), "{plan:?}");
        assert!(plan[1].reason.contains("upgraded by the F16 budget"));
        assert!(plan[1].reason.contains("estimated KLD") && plan[1].reason.contains("measured"));
        // An encoder's measure is embedding drift, and the reasons say so.
        let mut drift = raw.clone();
        calibrate(
            &mut drift,
            &Measured {
                quantity: Quantity::EmbeddingDrift,
                ..m.clone()
            },
        );
        let d = la_mix(&drift, 0.1);
        assert_eq!(
            d.iter().map(|c| c.ty).collect::<Vec<_>>(),
            plan.iter().map(|c| c.ty).collect::<Vec<_>>()
        );
        assert!(
            d[1].reason.contains("adds embedding drift")
                && d[1].reason.contains("estimated embedding drift"),
            "{}",
            d[1].reason
        );
        assert!(!d[1].reason.contains("KLD"), "{}", d[1].reason);
        // --target-bpw: the sensitive tensor gets at least as many bits, and within the target.
        let t = target_bpw(&cal, 5.0).choices;
        assert!(
            t[1].ty.bits_per_weight() > t[0].ty.bits_per_weight(),
            "{t:?}"
        );
        let bits: f64 = t.iter().map(|c| c.ty.bits_per_weight()).sum::<f64>() / 2.0;
        assert!(bits <= 5.0 + 1e-9, "{bits}");
    }
}
