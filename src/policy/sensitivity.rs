//! Measured sensitivity: how much a tensor's quantization error costs at the
//! model's output, so that the calibrated policies can compare tensors.
//!
//! The proxy `E_t(type) = Σ_rows Σ_j I[j] (w − deq(q(w)))²` ([`super::lamix`])
//! ranks the types of one tensor well, but it is not comparable across
//! tensors: an error in the output head reaches the logits directly, one in an
//! early `ffn_gate` is damped or amplified by every later layer. So for every
//! tensor t (or every group of tensors of one role in a band of layers) we
//! quantize t alone to its la-mix base type, run the forward pass on a small
//! sample of the calibration text (the same number of tokens in every
//! language, languages weighted as the importance is), and measure the mean KL
//! divergence of the next-token distribution from the unquantized model's,
//! `ΔKLD_t`. Then `α_t = ΔKLD_t / E_t(base)` and the policies use
//! `α_t · E_t(type)` for every type: an estimate of the KLD the tensor adds.
//!
//! The passes run layer by layer ([`crate::calib::patched`]): a group starts
//! from the reference residual stream at its first patched layer, every layer
//! is widened once per wave of groups, and the quantized values come from the
//! rows the scoring packed ([`Packed`], the pipeline's spill file) when it kept
//! them. Peak memory is one layer (in f32; packed in bf16 where the tile unit
//! runs the groups' layers from the change of their inputs) plus the sample's
//! streams and a batch of logits, never the model.
//!
//! Cost. A group starting at layer L costs `(n − L)` layers and the head on the
//! sample, so every tensor alone costs about `roles · n² / 2` layer passes. By
//! default ([`SampleSpec::budget`], [`DEFAULT_BUDGET`]) the measurement is
//! sized to cost at most half the calibration pass's own compute
//! (multiply-adds, [`Sizing`]): every tensor alone with the most tokens per
//! language that fit, down to half the asked tokens; past that, tensors of one
//! role are grouped in bands of adjacent layers (the narrowest band that fits
//! with at least half the tokens); past the coarsest band, the tokens are cut
//! down to [`MIN_TOKENS`]. The reasoning: calibration is what the user chose to
//! spend on statistics, and measuring adds at most half of it. `--sens-tokens` /
//! `--sens-groups` given explicitly turn the sizing off (exactly those tokens,
//! at most those groups). Everything is deterministic: the sample is the start
//! of each language's text, the kernels and the forward pass are.

use crate::arch::Role;
use crate::calib::actquant::ActQuant;
use crate::calib::layered::Limits;
use crate::calib::patched::{self, Patch, Weighted};
use crate::calib::{self, CalibError, CorpusSource, ForwardConfig, Matmul, WeightSource};
use crate::gguf::GgmlType;
use crate::hf::Checkpoint;
use crate::quant;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashMap;

pub use crate::calib::patched::{kld_row, log_softmax};

mod drift;

/// What a probe's effect is measured on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantity {
    /// A decoder's next-token KL divergence from the unquantized model, nats
    /// per token, languages weighted.
    Kld,
    /// An encoder's embedding drift: per language the mean over its sample
    /// windows of `1 − cosine(pooled reference, pooled probe)`, languages
    /// weighted (`sensitivity::drift`).
    EmbeddingDrift,
}

impl Quantity {
    /// Its name in the plan's reasons ("KLD", "embedding drift").
    pub fn describe(self) -> &'static str {
        match self {
            Quantity::Kld => "KLD",
            Quantity::EmbeddingDrift => "embedding drift",
        }
    }

    /// What `ck`'s sensitivity is measured on: embedding drift for the BERT
    /// family's encoders, next-token KLD otherwise.
    pub fn of(ck: &Checkpoint) -> Quantity {
        if crate::eval::embed::is_encoder(&ck.config) {
            Quantity::EmbeddingDrift
        } else {
            Quantity::Kld
        }
    }
}

/// Where the sample comes from and how large it is.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleSpec {
    /// The text the sample is cut from.
    pub corpus: CorpusSource,
    /// Relative language weights (as `--lang-weights`; others weigh 1).
    pub lang_weights: Vec<(String, f64)>,
    /// Tokens per language (the first ones of its text, BOS first); 0 = do not
    /// measure. With a budget, the most: fewer when the budget asks.
    pub tokens: usize,
    /// Without a budget: at most this many groups (passes besides the
    /// reference); beyond it, tensors of one role in a band of adjacent layers
    /// are measured together.
    pub max_groups: usize,
    /// The measurement's compute at most this multiple of the calibration's
    /// (see the module doc); `None`: exactly `tokens`, at most `max_groups`.
    pub budget: Option<f64>,
    /// Arithmetic of the output head's products for the groups that keep it
    /// (`bf16`: from the change of its input on the tile unit; the layers and
    /// the reference stay f32), as `--matmul`.
    pub matmul: Matmul,
    /// Where measurements are kept for reuse ([`measure_cached`]); `None`:
    /// always measure, store nothing.
    pub cache: Option<calib::cache::Store>,
}

/// Default tokens per language of the sample.
pub const DEFAULT_TOKENS: usize = 32;
/// Default most groups when the sizing is explicit.
pub const DEFAULT_MAX_GROUPS: usize = 96;
/// Default budget: half the calibration pass's compute. With the whole
/// embedded corpus on polyglot-25m that still measures every tensor alone at
/// 32 tokens (about a third of the calibration's multiply-adds), so the plan
/// is that of the former budget (1.0); with a short calibration (the random
/// 1.1 GB benchmark: 29 chunks of 128) it is one group per role at 8 tokens
/// instead of 15, and the measurement takes half the time.
pub const DEFAULT_BUDGET: f64 = 0.5;
/// The fewest tokens per language the budget cuts to.
pub const MIN_TOKENS: usize = 8;

impl Default for SampleSpec {
    fn default() -> Self {
        SampleSpec {
            corpus: CorpusSource::Embedded,
            lang_weights: Vec::new(),
            tokens: DEFAULT_TOKENS,
            max_groups: DEFAULT_MAX_GROUPS,
            budget: Some(DEFAULT_BUDGET),
            matmul: Matmul::Auto,
            cache: None,
        }
    }
}

/// How much text the calibration ran through the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CalibrationSize {
    /// Tokens over all languages.
    pub tokens: u64,
    /// Tokens per chunk (its attention's length).
    pub ctx: usize,
}

/// One tensor to measure.
#[derive(Clone, Debug)]
pub struct Probe {
    /// The HF tensor (the first expert's, for a mixture's stacked tensor).
    pub hf_name: String,
    /// The GGUF tensor.
    pub gguf_name: String,
    /// What it is in its block.
    pub role: Role,
    /// Its layer, for a block's tensors.
    pub layer: Option<usize>,
    /// The la-mix base type after the width fallback.
    pub base: GgmlType,
    /// Row width (the HF tensor's last dimension).
    pub width: usize,
    /// Rows (elements / width).
    pub rows: usize,
    /// Column importance used to quantize it (as the pipeline will); a
    /// mixture's stacked experts have one slice per expert, expert after expert.
    pub importance: Option<Vec<f32>>,
    /// `E_t(base)`.
    pub base_error: f64,
    /// `Σ_rows Σ_j I[j] w²`, the tensor's error were it all zeros: the scale
    /// of the products' perturbation that the measurement's own activation
    /// rounding makes ([`crate::calib::actquant::ActQuant::noise_floor`] of it).
    pub energy: f64,
}

/// Where a probe's `α` came from ([`Measured::alpha_from`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AlphaFrom {
    /// Its group's measured ΔKLD over the group's summed base error.
    Measured,
    /// Its group's base error is below what the measurement resolves: the
    /// largest α resolved for its role, that of group `group`.
    Role {
        /// The label of the group whose α it took.
        group: String,
    },
    /// As `Role`, but no group of its role resolved one: the largest α of any
    /// group, that of group `group`.
    AnyGroup {
        /// The label of the group whose α it took.
        group: String,
    },
    /// No group resolved an α: 1, the raw proxy.
    Proxy,
}

/// The result for every probe, in the order given.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    /// Group of each probe (index into `groups`).
    pub group_of: Vec<usize>,
    /// Per group: a label (`blk.3.ffn_down`, `ffn_down of layers 0-3`) and its
    /// ΔKLD (the measured quantity's increase: `quantity`).
    pub groups: Vec<(String, f64)>,
    /// `α` of each probe: its group's ΔKLD over the group's summed base error (a group
    /// whose base error is below what the measurement resolves, 0 included, takes its role's
    /// largest resolved α, else the largest of any group, else 1).
    pub alpha: Vec<f64>,
    /// Where each probe's `α` came from.
    pub alpha_from: Vec<AlphaFrom>,
    /// Per group: its summed base error and the least summed base error the measurement
    /// resolves (its probes' [`Probe::energy`] times their activation rounding's
    /// [`ActQuant::noise_floor`]).
    pub resolution: Vec<(f64, f64)>,
    /// Tokens scored per pass (all languages).
    pub tokens: usize,
    /// What was measured.
    pub quantity: Quantity,
}

/// How the measurement was sized (for the report).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sizing {
    /// What is measured (`kld`, `embedding_drift`).
    pub measure: Quantity,
    /// Tokens per language of the sample (BOS included; one fewer are scored).
    pub tokens_per_language: usize,
    /// Layers per group (1: every tensor alone).
    pub band: usize,
    /// Groups measured (one pass each).
    pub groups: usize,
    /// Positions scored per pass, all languages.
    pub scored_tokens: usize,
    /// Estimated multiply-adds of the measurement (reference and every group).
    pub macs: f64,
    /// Estimated multiply-adds of the calibration pass, when known.
    pub calibration_macs: Option<f64>,
    /// The most multiply-adds allowed (`None`: sized explicitly).
    pub budget_macs: Option<f64>,
}

impl Sizing {
    /// One line for the progress bar and the logs.
    pub fn describe(&self) -> String {
        let grouping = if self.band <= 1 {
            "every tensor alone".to_string()
        } else {
            format!("bands of {} layers", self.band)
        };
        let budget = match (self.budget_macs, self.calibration_macs) {
            (Some(b), Some(c)) => format!(
                ", {:.1} GMAC of {:.1} allowed ({:.2}x calibration)",
                self.macs / 1e9,
                b / 1e9,
                self.macs / c.max(1.0)
            ),
            _ => format!(", {:.1} GMAC", self.macs / 1e9),
        };
        format!(
            "{} on {} groups ({grouping}), {} tokens per language{budget}",
            self.measure.describe(),
            self.groups,
            self.tokens_per_language
        )
    }
}

/// Groups probes: each alone when there are at most `max_groups`, otherwise
/// the tensors of one role in bands of `b` adjacent layers, `b` the smallest
/// band that gives at most `max_groups` groups (tensors outside layers alone).
/// Returns (group of each probe, group labels).
pub fn group(probes: &[Probe], max_groups: usize) -> (Vec<usize>, Vec<String>) {
    group_band(probes, band_for(probes, max_groups))
}

fn n_layers(probes: &[Probe]) -> usize {
    probes
        .iter()
        .filter_map(|p| p.layer)
        .max()
        .map_or(0, |l| l + 1)
}

/// The smallest band giving at most `max_groups` groups.
fn band_for(probes: &[Probe], max_groups: usize) -> usize {
    let n_layers = n_layers(probes);
    let mut band = 1;
    loop {
        let mut keys: Vec<(Role, Option<usize>)> = probes
            .iter()
            .map(|p| (p.role, p.layer.map(|l| l / band)))
            .collect();
        keys.sort_by_key(|k| (format!("{:?}", k.0), k.1));
        keys.dedup();
        if keys.len() <= max_groups.max(1) || band >= n_layers.max(1) {
            return band;
        }
        band += 1;
    }
}

/// Groups probes by role in bands of `band` adjacent layers (1: each alone).
pub fn group_band(probes: &[Probe], band: usize) -> (Vec<usize>, Vec<String>) {
    let band = band.max(1);
    let n_layers = n_layers(probes);
    let mut labels: Vec<String> = Vec::new();
    let mut index: HashMap<(Role, Option<usize>), usize> = HashMap::new();
    let group_of = probes
        .iter()
        .map(|p| {
            let key = (p.role, p.layer.map(|l| l / band));
            *index.entry(key).or_insert_with(|| {
                labels.push(match p.layer {
                    None => p.gguf_name.trim_end_matches(".weight").to_string(),
                    Some(_) if band == 1 => p.gguf_name.trim_end_matches(".weight").to_string(),
                    Some(l) => {
                        let lo = l / band * band;
                        let hi = (lo + band).min(n_layers) - 1;
                        format!("{} of layers {lo}-{hi}", p.role.gguf_stem())
                    }
                });
                labels.len() - 1
            })
        })
        .collect();
    (group_of, labels)
}

/// `deq(q(w))` of a whole tensor (rows of `width`, in the checkpoint's row
/// order: quantization is per row, so the converter's row permutation of Q/K
/// does not change the values).
pub fn round_trip(
    ty: GgmlType,
    w: &[f32],
    width: usize,
    importance: Option<&[f32]>,
) -> Result<Vec<f32>, quant::QuantError> {
    if matches!(ty, GgmlType::F32) {
        return Ok(w.to_vec());
    }
    let packed = quant::quantize_tensor(ty, w, width, importance)?;
    dequantize_rows(ty, &packed, width)
}

/// Rows packed as `ty`, dequantized (in parallel).
fn dequantize_rows(
    ty: GgmlType,
    packed: &[u8],
    width: usize,
) -> Result<Vec<f32>, quant::QuantError> {
    let rb = ty.row_bytes(width as u64).unwrap_or(0) as usize;
    if rb == 0 {
        return Ok(Vec::new());
    }
    let mut out = vec![0f32; packed.len() / rb * width];
    out.par_chunks_exact_mut(width)
        .zip(packed.par_chunks_exact(rb))
        .try_for_each(|(o, q)| quant::dequantize(ty, q, o))?;
    Ok(out)
}

/// Where the rows the scoring packed in a tensor's base type can be read back
/// (the pipeline's spill file), in the checkpoint's row order.
pub trait Packed {
    /// Fills `out` with the bytes of tensor `gguf_name` packed as `ty` from
    /// byte `from` on; `false` when they were not kept (or cannot be read).
    fn read(&self, gguf_name: &str, ty: GgmlType, from: u64, out: &mut [u8]) -> bool;
}

/// Nothing kept: every tensor is quantized again.
impl Packed for () {
    fn read(&self, _: &str, _: GgmlType, _: u64, _: &mut [u8]) -> bool {
        false
    }
}

/// The replacement values of a probe: its packed rows read back and
/// dequantized when kept, else the original rows quantized and dequantized.
fn probe_values(
    p: &Probe,
    packed: &dyn Packed,
    rows: Option<&[usize]>,
    original: &dyn Fn() -> Result<Vec<f32>, CalibError>,
) -> Result<Vec<f32>, CalibError> {
    let err = |e: quant::QuantError| CalibError::Weights(format!("{}: {e}", p.gguf_name));
    if !matches!(p.base, GgmlType::F32) {
        if let Some(rb) = p.base.row_bytes(p.width as u64) {
            let rb = rb as usize;
            let bytes = match rows {
                Some(rows) => {
                    let mut b = vec![0u8; rows.len() * rb];
                    // Consecutive rows (the bf16 layers' chunks) in one read.
                    let ok = if rows.windows(2).all(|w| w[1] == w[0] + 1) {
                        let from = (rows.first().copied().unwrap_or(0) * rb) as u64;
                        packed.read(&p.gguf_name, p.base, from, &mut b)
                    } else {
                        rows.iter()
                            .zip(b.chunks_exact_mut(rb))
                            .all(|(&r, o)| packed.read(&p.gguf_name, p.base, (r * rb) as u64, o))
                    };
                    ok.then_some(b)
                }
                None => {
                    let mut b = vec![0u8; p.rows * rb];
                    packed.read(&p.gguf_name, p.base, 0, &mut b).then_some(b)
                }
            };
            if let Some(b) = bytes {
                return dequantize_rows(p.base, &b, p.width).map_err(err);
            }
        }
    }
    let w = original()?;
    match p.importance.as_deref() {
        // A mixture's stacked experts: each expert's rows with its own slice.
        Some(imp) if imp.len() > p.width && p.width > 0 => {
            let slices = imp.len() / p.width;
            let per = w.len() / slices.max(1);
            if per * slices != w.len() || slices * p.width != imp.len() {
                return Err(CalibError::Weights(format!(
                    "{}: {} values, importance for {slices} experts of width {}",
                    p.gguf_name,
                    w.len(),
                    p.width
                )));
            }
            let mut out = Vec::with_capacity(w.len());
            for (rows, i) in w.chunks_exact(per).zip(imp.chunks_exact(p.width)) {
                out.extend(round_trip(p.base, rows, p.width, Some(i)).map_err(err)?);
            }
            Ok(out)
        }
        imp => round_trip(p.base, &w, p.width, imp).map_err(err),
    }
}

/// The sample: per language, its first `tokens` tokens (BOS first when the
/// model has one), and the language weights.
fn sample(ck: &Checkpoint, spec: &SampleSpec) -> Result<Vec<(String, Vec<u32>, f64)>, CalibError> {
    let tok = calib::TextTokenizer::from_dir(&ck.dir)?;
    let corpus = spec.corpus.load()?;
    let langs: Vec<&str> = corpus.docs.iter().map(|d| d.lang.as_str()).collect();
    let weights = calib::normalized_weights(&langs, &spec.lang_weights)?;
    let mut out = Vec::new();
    for (d, w) in corpus.docs.iter().zip(weights) {
        let mut ids = tok.encode(&d.text)?;
        if let Some(b) = tok.bos() {
            ids.insert(0, b);
        }
        ids.truncate(spec.tokens.max(2));
        if ids.len() < 2 {
            return Err(CalibError::ShortSample {
                lang: d.lang.clone(),
                source_name: d.source.to_string(),
            });
        }
        out.push((d.lang.clone(), ids, w));
    }
    Ok(out)
}

/// What [`measure`] will run: the sample, the groups and how they were sized.
#[derive(Clone, Debug)]
pub struct Measurement {
    /// How it was sized.
    pub sizing: Sizing,
    matmul: Matmul,
    quantity: Quantity,
    /// Decoders: per language its tokens and weight. Encoders: one entry per
    /// sample window, its language's weight over the language's windows.
    texts: Vec<(String, Vec<u32>, f64)>,
    group_of: Vec<usize>,
    labels: Vec<String>,
}

fn patches(probes: &[Probe]) -> Vec<Patch<'_>> {
    probes
        .iter()
        .map(|p| Patch {
            hf_name: &p.hf_name,
            act: ActQuant::for_weight(p.base),
        })
        .collect()
}

fn groups_of(group_of: &[usize], n: usize) -> Vec<Vec<usize>> {
    let mut groups = vec![Vec::new(); n];
    for (p, &g) in group_of.iter().enumerate() {
        groups[g].push(p);
    }
    groups
}

/// Scored positions per language with `tokens` tokens per language.
fn lens(texts: &[(String, Vec<u32>, f64)], tokens: usize) -> Vec<usize> {
    texts
        .iter()
        .map(|t| t.1.len().min(tokens.max(2)) - 1)
        .collect()
}

/// Sizes the measurement of `probes` (see the module doc): the sample, the
/// grouping and the tokens per language.
pub fn prepare(
    ck: &Checkpoint,
    probes: &[Probe],
    spec: &SampleSpec,
    calibration: Option<CalibrationSize>,
) -> Result<Measurement, CalibError> {
    if Quantity::of(ck) == Quantity::EmbeddingDrift {
        return drift::prepare(ck, probes, spec, calibration);
    }
    let cfg = ForwardConfig::from_hf(&ck.config)?;
    let texts = sample(ck, spec)?;
    let calibration_macs = calibration.filter(|c| c.tokens > 0 && c.ctx > 0).map(|c| {
        c.tokens as f64 / c.ctx as f64 * patched::layer_macs(&cfg, c.ctx) * cfg.n_layers as f64
    });
    let pt = patches(probes);
    let cost = |band: usize, tokens: usize| -> Result<f64, CalibError> {
        let (group_of, labels) = group_band(probes, band);
        let starts = patched::group_starts(&cfg, ck, &pt, &groups_of(&group_of, labels.len()))?;
        Ok(patched::measure_macs(&cfg, &lens(&texts, tokens), &starts))
    };
    let budget = spec.budget.zip(calibration_macs).map(|(f, c)| f * c);
    let (band, tokens) = fit_budget(probes, spec, budget, &cost)?;
    let (group_of, labels) = group_band(probes, band);
    let macs = cost(band, tokens)?;
    let texts: Vec<_> = texts
        .into_iter()
        .map(|(l, mut ids, w)| {
            ids.truncate(tokens.max(2));
            (l, ids, w)
        })
        .collect();
    Ok(Measurement {
        matmul: spec.matmul,
        quantity: Quantity::Kld,
        sizing: Sizing {
            measure: Quantity::Kld,
            tokens_per_language: tokens,
            band,
            groups: labels.len(),
            scored_tokens: lens(&texts, tokens).iter().sum(),
            macs,
            calibration_macs,
            budget_macs: budget,
        },
        texts,
        group_of,
        labels,
    })
}

/// The band and tokens per language of a measurement (see the module doc):
/// `spec`'s own without a budget; with one, the narrowest band that fits at
/// least half the asked tokens, else the coarsest band with the most tokens
/// that fit. `cost(band, tokens)` is the measurement's multiply-adds.
fn fit_budget(
    probes: &[Probe],
    spec: &SampleSpec,
    budget: Option<f64>,
    cost: &dyn Fn(usize, usize) -> Result<f64, CalibError>,
) -> Result<(usize, usize), CalibError> {
    Ok(match budget {
        None => (band_for(probes, spec.max_groups), spec.tokens),
        Some(b) => {
            let hi = spec.tokens.max(2);
            let lo = MIN_TOKENS.min(hi);
            let enough = (hi / 2).max(lo);
            // The most tokens in lo..=hi that fit at this band.
            let fit = |band: usize| -> Result<Option<usize>, CalibError> {
                for t in (lo..=hi).rev() {
                    if cost(band, t)? <= b {
                        return Ok(Some(t));
                    }
                }
                Ok(None)
            };
            let coarsest = n_layers(probes).max(1);
            let mut chosen = None;
            let mut last_groups = usize::MAX;
            for band in 1..=coarsest {
                let groups = group_band(probes, band).1.len();
                if groups == last_groups {
                    continue;
                }
                last_groups = groups;
                if let Some(t) = fit(band)?.filter(|&t| t >= enough) {
                    chosen = Some((band, t));
                    break;
                }
            }
            match chosen {
                Some(c) => c,
                None => (coarsest, fit(coarsest)?.unwrap_or(lo)),
            }
        }
    })
}

/// Measures `ΔKLD` of every group of `probes` as `job` sized it (see the
/// module doc), reading the packed rows from `packed` where kept.
/// `progress(done, total)` counts layer passes of one group over the sample.
pub fn measure(
    ck: &Checkpoint,
    probes: &[Probe],
    job: &Measurement,
    packed: &dyn Packed,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Measured, CalibError> {
    if job.quantity == Quantity::EmbeddingDrift {
        let delta = drift::measure(ck, probes, job, packed, progress)?;
        return Ok(measured(probes, job, delta));
    }
    let cfg = ForwardConfig::from_hf(&ck.config)?;
    measure_with(ck, ck, probes, job, packed, limits(&cfg), progress)
}

/// What identifies one measurement's result: the model (its fingerprint, as the
/// calibration cache takes it), the sample's tokens and weights, the groups,
/// every probe's base type, width, rows and importance (its quantized values
/// follow from them and the weights), the resolved arithmetic and laquant's
/// version. The base errors are not in it: `α` is recomputed from them.
fn cache_key(
    model: blake3::Hash,
    probes: &[Probe],
    job: &Measurement,
    matmul: Matmul,
) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(b"laquant sensitivity\0");
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(model.as_bytes());
    h.update(format!("\0{}\0", matmul.name()).as_bytes());
    if job.quantity != Quantity::Kld {
        h.update(format!("measure\0{:?}\0", job.quantity).as_bytes());
    }
    for (lang, ids, w) in &job.texts {
        h.update(format!("lang\0{lang}\0{}\0{}\0", w.to_bits(), ids.len()).as_bytes());
        for t in ids {
            h.update(&t.to_le_bytes());
        }
    }
    for l in &job.labels {
        h.update(format!("group\0{l}\0").as_bytes());
    }
    for (p, g) in probes.iter().zip(&job.group_of) {
        h.update(
            format!(
                "probe\0{}\0{}\0{}\0{}\0{}\0{g}\0",
                p.hf_name,
                p.gguf_name,
                p.base.name(),
                p.width,
                p.rows
            )
            .as_bytes(),
        );
        match &p.importance {
            Some(v) => {
                h.update(&(v.len() as u64).to_le_bytes());
                for x in v {
                    h.update(&x.to_bits().to_le_bytes());
                }
            }
            None => {
                h.update(b"none");
            }
        }
    }
    h.finalize()
}

/// A stored measurement: per group its label and `ΔKLD` (as `f64` bits, so a
/// reuse gives the same plan bit for bit), under the key it was made for.
#[derive(Serialize, serde::Deserialize)]
struct Entry {
    key: String,
    labels: Vec<String>,
    delta_bits: Vec<u64>,
}

/// Reads `key`'s entry for `job` at `path`: `Ok(None)` when there is none,
/// `Err(why)` when it cannot be trusted.
fn cache_get(
    path: &std::path::Path,
    key: &blake3::Hash,
    job: &Measurement,
) -> Result<Option<Vec<f64>>, String> {
    let bytes = match calib::cache::Store::read_entry(path) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let e: Entry = serde_json::from_slice(&bytes).map_err(|e| format!("not an entry: {e}"))?;
    if e.key != key.to_hex().as_str() {
        return Err("it holds another measurement".into());
    }
    if e.labels != job.labels || e.delta_bits.len() != job.labels.len() {
        return Err(format!(
            "it holds {} groups, the measurement has {}",
            e.delta_bits.len(),
            job.labels.len()
        ));
    }
    let deltas: Vec<f64> = e.delta_bits.iter().map(|&b| f64::from_bits(b)).collect();
    if let Some(d) = deltas.iter().find(|d| !d.is_finite() || **d < 0.0) {
        return Err(format!("a group's ΔKLD is {d}"));
    }
    calib::cache::Store::touch(path);
    Ok(Some(deltas))
}

/// What [`measure_cached`] did.
#[derive(Debug)]
pub struct CacheUse {
    /// Reused, stored, not stored, or off (as the calibration cache's).
    pub outcome: calib::cache::Outcome,
    /// A damaged entry that was ignored and replaced, and why.
    pub warning: Option<String>,
}

/// [`measure`], reusing the measurement `store` holds for this model, sample,
/// grouping, probes and arithmetic (`plan` then `convert`, or a second convert,
/// measure once), and storing a new one there. A damaged entry is reported in
/// [`CacheUse::warning`], ignored and replaced.
pub fn measure_cached(
    ck: &Checkpoint,
    probes: &[Probe],
    job: &Measurement,
    packed: &dyn Packed,
    store: Option<&calib::cache::Store>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(Measured, CacheUse), CalibError> {
    let Some(store) = store else {
        let m = measure(ck, probes, job, packed, progress)?;
        let outcome = calib::cache::Outcome::Off;
        return Ok((
            m,
            CacheUse {
                outcome,
                warning: None,
            },
        ));
    };
    let key = cache_key(
        calib::cache::model_fingerprint(ck)?,
        probes,
        job,
        job.matmul.resolve()?,
    );
    let path = store.entry_path(&key, "lqsens");
    let mut warning = None;
    match cache_get(&path, &key, job) {
        Ok(Some(deltas)) => {
            let m = measured(probes, job, deltas);
            let outcome = calib::cache::Outcome::Reused { file: path };
            return Ok((m, CacheUse { outcome, warning }));
        }
        Ok(None) => {}
        Err(why) => {
            warning = Some(format!(
                "sensitivity cache entry {}: {why}; measuring again",
                path.display()
            ))
        }
    }
    let m = measure(ck, probes, job, packed, progress)?;
    let entry = Entry {
        key: key.to_hex().to_string(),
        labels: job.labels.clone(),
        delta_bits: m.groups.iter().map(|g| g.1.to_bits()).collect(),
    };
    let written = serde_json::to_vec(&entry)
        .map_err(std::io::Error::from)
        .and_then(|bytes| store.write_entry(&path, &bytes));
    let outcome = match written {
        Ok(()) => calib::cache::Outcome::Stored { file: path },
        Err(e) => calib::cache::Outcome::NotStored {
            file: path,
            error: e.to_string(),
        },
    };
    Ok((m, CacheUse { outcome, warning }))
}

/// Memory limits of the measurement: the residual streams of a wave of groups
/// about one decoder layer in f32 (which the pass holds anyway), within
/// 64-256 MB (each wave after the first reruns the reference and makes its
/// logits again: on polyglot-25m's whole corpus a 16 MB floor made 6 waves
/// where 64 MB makes 2: sensitivity 5.3 -> 4.7 s),
/// and the temporaries of a batch a quarter of a layer, within 8-64 MB
/// (a batch of a few hundred tokens still makes matmuls as fast as larger
/// ones; a whole layer's worth of temporaries set the peak on the random
/// 1.1 GB model: 366 MB, against 267 MB in the calibration).
fn limits(cfg: &ForwardConfig) -> Limits {
    let layer = 4 * (patched::layer_macs(cfg, 1) as usize);
    Limits {
        group_bytes: layer.clamp(64 << 20, 256 << 20),
        batch_bytes: (layer / 4).clamp(8 << 20, 64 << 20),
    }
}

/// [`measure`] on the weights of `src` with the given memory limits.
fn measure_with(
    ck: &Checkpoint,
    src: &dyn WeightSource,
    probes: &[Probe],
    job: &Measurement,
    packed: &dyn Packed,
    limits: Limits,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Measured, CalibError> {
    let cfg = ForwardConfig::from_hf(&ck.config)?;
    let seqs: Vec<Weighted> = job
        .texts
        .iter()
        .map(|(_, ids, w)| Weighted {
            tokens: &ids[..ids.len() - 1],
            weight: *w,
        })
        .collect();
    let groups = groups_of(&job.group_of, job.labels.len());
    let values =
        |p: usize, rows: Option<&[usize]>, original: &dyn Fn() -> Result<Vec<f32>, CalibError>| {
            probe_values(&probes[p], packed, rows, original)
        };
    let delta = patched::delta_kld(
        &cfg,
        src,
        &seqs,
        &patches(probes),
        &groups,
        &values,
        limits,
        job.matmul,
        rayon::current_num_threads(),
        progress,
    )?;
    Ok(measured(probes, job, delta))
}

/// The result from every group's `ΔKLD` (negative ones, noise around zero, as 0).
fn measured(probes: &[Probe], job: &Measurement, delta: Vec<f64>) -> Measured {
    let groups: Vec<(String, f64)> = job
        .labels
        .iter()
        .cloned()
        .zip(delta.into_iter().map(|d| d.max(0.0)))
        .collect();
    let delta: Vec<f64> = groups.iter().map(|g| g.1).collect();
    let resolution = resolution(probes, &job.group_of, delta.len());
    let (alpha, alpha_from) = alphas(probes, &job.group_of, &delta, &resolution, &job.labels);
    Measured {
        group_of: job.group_of.clone(),
        groups,
        alpha,
        alpha_from,
        resolution,
        tokens: job.sizing.scored_tokens,
        quantity: job.quantity,
    }
}

/// Per group of `group_of` (`n` groups): its summed base error, and the least summed base
/// error the measurement resolves. The measurement rounds the group's activations as
/// ggml's matmul does ([`ActQuant::for_weight`] of the base type), which perturbs its
/// products by at least [`ActQuant::noise_floor`] of the weights' importance-weighted
/// energy ([`Probe::energy`]: `Σ I[j] w²` estimates the products' mean square as
/// `E_t` estimates their error's). A base error below that perturbs them less than the
/// rounding that comes with it, so most of the measured ΔKLD is not its own.
fn resolution(probes: &[Probe], group_of: &[usize], n: usize) -> Vec<(f64, f64)> {
    let mut r = vec![(0f64, 0f64); n];
    for (p, &g) in probes.iter().zip(group_of) {
        r[g].0 += p.base_error;
        r[g].1 += p.energy * ActQuant::for_weight(p.base).noise_floor();
    }
    r
}

/// `α` of each probe and where it came from: its group's ΔKLD over the group's summed
/// base error, when that error is resolved ([`resolution`]: positive and at least the
/// floor). A group whose base type reproduces it exactly (error 0: weights that already
/// sit on that type's grid, as in a checkpoint dequantized from a quantized file or
/// trained for one) or nearly (a few weights off the grid, under the floor) has no α to
/// measure: its ΔKLD is the activation rounding's, and over a tiny error it gives a huge
/// α (Gemma 3 270M rebuilt from Q4_K_M: an `ffn_down` at F32), over 0 an α of 0 that
/// prices every type of it at nothing (`--target-bpw` dropped its `ffn_gate`/`ffn_up` to
/// Q1_0). It takes the largest α resolved for its role instead, else the largest of any
/// group (the cautious guess: priced as the most sensitive of its kind), else 1 (the raw
/// proxy). `labels` name the groups.
fn alphas(
    probes: &[Probe],
    group_of: &[usize],
    delta: &[f64],
    resolution: &[(f64, f64)],
    labels: &[String],
) -> (Vec<f64>, Vec<AlphaFrom>) {
    let own: Vec<Option<f64>> = (delta.iter().zip(resolution))
        .map(|(d, &(err, floor))| (err > 0.0 && err >= floor).then(|| d / err))
        .collect();
    // The largest positive resolved α of the groups of the probes `keep` takes.
    let largest = |keep: &dyn Fn(&Probe) -> bool| {
        (probes.iter().zip(group_of))
            .filter(|(p, _)| keep(p))
            .filter_map(|(_, &g)| own[g].filter(|a| *a > 0.0).map(|a| (a, g)))
            .reduce(|a, b| if b.0 > a.0 { b } else { a })
    };
    let any = largest(&|_| true);
    (probes.iter().zip(group_of))
        .map(|(p, &g)| match own[g] {
            Some(a) => (a, AlphaFrom::Measured),
            None => match (largest(&|q| q.role == p.role), any) {
                (Some((a, l)), _) => (
                    a,
                    AlphaFrom::Role {
                        group: labels[l].clone(),
                    },
                ),
                (None, Some((a, l))) => (
                    a,
                    AlphaFrom::AnyGroup {
                        group: labels[l].clone(),
                    },
                ),
                (None, None) => (1.0, AlphaFrom::Proxy),
            },
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`alphas`] with groups labelled `g0`, `g1`, ….
    fn alphas_of(p: &[Probe], group_of: &[usize], delta: &[f64]) -> (Vec<f64>, Vec<AlphaFrom>) {
        let labels: Vec<String> = (0..delta.len()).map(|g| format!("g{g}")).collect();
        let r = resolution(p, group_of, delta.len());
        alphas(p, group_of, delta, &r, &labels)
    }

    fn role(g: &str) -> AlphaFrom {
        AlphaFrom::Role { group: g.into() }
    }

    /// A group whose base type reproduces it exactly gets its role's largest measured α,
    /// else the largest of all, else 1; never 0 (which priced Gemma 3 270M's `ffn_gate`
    /// and `ffn_up`, dequantized from Q5_0, at nothing in every type: `--target-bpw` at
    /// Q4_K_M's size put them at Q1_0, KLD 15.8 against Q4_K_M's 0.011).
    #[test]
    fn a_group_its_base_type_reproduces_is_priced_as_its_role() {
        let mut p = vec![
            probe(Role::FfnUp, Some(0)),
            probe(Role::FfnUp, Some(1)),
            probe(Role::FfnUp, Some(2)),
            probe(Role::AttnQ, Some(0)),
            probe(Role::FfnGate, Some(0)),
        ];
        p[1].base_error = 0.0;
        p[2].base_error = 2.0;
        p[4].base_error = 0.0;
        let group_of = [0, 1, 2, 3, 4];
        let delta = [0.5, 7e-4, 4.0, 3.0, 7e-4];
        let (a, from) = alphas_of(&p, &group_of, &delta);
        assert_eq!(a, vec![0.5, 2.0, 2.0, 3.0, 3.0]);
        let any = AlphaFrom::AnyGroup { group: "g3".into() };
        let m = AlphaFrom::Measured;
        assert_eq!(from, vec![m.clone(), role("g2"), m.clone(), m.clone(), any]);
        // Nothing measurable: the raw proxy.
        for q in p.iter_mut() {
            q.base_error = 0.0;
        }
        let (a, from) = alphas_of(&p, &group_of, &delta);
        assert_eq!(a, vec![1.0; 5]);
        assert_eq!(from, vec![AlphaFrom::Proxy; 5]);
        // A measured α of 0 stays 0 (the tensor's error costs nothing measurable).
        p[0].base_error = 1.0;
        let (a, _) = alphas_of(&p, &group_of, &[0.0, 1e-3, 1e-3, 1e-3, 1e-3]);
        assert_eq!(a, vec![0.0, 1.0, 1.0, 1.0, 1.0]);
    }

    /// A base error that is not 0 but below what the measurement resolves (a few
    /// weights off the grid: less than the activation rounding's floor, the energy times
    /// 1/(12·127²) for a Q8 rounding) is no α either: its ΔKLD, the activation
    /// rounding's, over it gave 1000 times its role's α (on Gemma 3 270M rebuilt from
    /// Q4_K_M, an `ffn_down` at F32). It borrows as an error of 0 does and lends to
    /// nobody; an error at the floor, or a group whose summed error reaches it, is
    /// measured; the floor follows the base type's activation rounding (F16: far lower).
    #[test]
    fn a_base_error_below_the_noise_floor_borrows_its_alpha() {
        let mut p = vec![
            probe(Role::FfnGate, Some(0)),
            probe(Role::FfnGate, Some(1)),
            probe(Role::FfnDown, Some(0)),
            probe(Role::AttnQ, Some(0)),
            probe(Role::FfnUp, Some(0)),
            probe(Role::FfnUp, Some(1)),
            probe(Role::FfnGate, Some(2)),
        ];
        let floor = 1000.0 * ActQuant::Q8K.noise_floor(); // 5.2e-3 (energy 1000, Q4_K)
        p[1].base_error = 1e-6;
        p[2].base_error = 0.4 * floor;
        p[4].base_error = 1e-6; // banded with p[5]: the sum resolves
        p[5].base_error = 2.0;
        p[6].base_error = floor;
        let group_of = [0, 1, 2, 3, 4, 4, 5];
        let delta = [0.4, 1e-3, 1e-3, 3.0, 0.3, 1e-3];
        let (a, from) = alphas_of(&p, &group_of, &delta);
        let m = AlphaFrom::Measured;
        let any = AlphaFrom::AnyGroup { group: "g3".into() };
        assert_eq!(
            from,
            vec![
                m.clone(),
                role("g0"),
                any,
                m.clone(),
                m.clone(),
                m.clone(),
                m.clone()
            ]
        );
        let band = 0.3 / (2.0 + 1e-6);
        assert_eq!(a, vec![0.4, 0.4, 3.0, 3.0, band, band, 1e-3 / floor]);
        // An error under the Q8 floor but over F16's (2e-5 here) is resolved under an F16
        // base type, whose activations are rounded to f16.
        p[1].base_error = 1e-4;
        let (_, from) = alphas_of(&p, &group_of, &delta);
        assert_eq!(from[1], role("g0"));
        p[1].base = GgmlType::F16;
        let (a, from) = alphas_of(&p, &group_of, &delta);
        assert_eq!((a[1], &from[1]), (1e-3 / 1e-4, &m));
    }

    fn probe(role: Role, layer: Option<usize>) -> Probe {
        let name = match layer {
            Some(l) => format!("blk.{l}.{}.weight", role.gguf_stem()),
            None => format!("{}.weight", role.gguf_stem()),
        };
        Probe {
            hf_name: name.clone(),
            gguf_name: name,
            role,
            layer,
            base: GgmlType::Q4K,
            width: 256,
            rows: 256,
            importance: None,
            base_error: 1.0,
            energy: 1000.0,
        }
    }

    fn model_probes(n_layers: usize) -> Vec<Probe> {
        let mut v = vec![probe(Role::TokenEmbd, None), probe(Role::Output, None)];
        for l in 0..n_layers {
            for r in [Role::AttnQ, Role::AttnV, Role::FfnDown] {
                v.push(probe(r, Some(l)));
            }
        }
        v
    }

    #[test]
    fn small_models_measure_every_tensor_alone() {
        let p = model_probes(4);
        let (g, labels) = group(&p, 100);
        assert_eq!(labels.len(), p.len());
        assert_eq!(g, (0..p.len()).collect::<Vec<_>>());
        assert_eq!(labels[2], "blk.0.attn_q");
    }

    #[test]
    fn large_models_group_one_role_over_a_band_of_layers() {
        let p = model_probes(32); // 2 + 96 tensors
        let (g, labels) = group(&p, 20);
        assert!(labels.len() <= 20, "{labels:?}");
        // Band of 6 layers: 2 + 3 roles x ceil(32/6) = 20 groups.
        assert_eq!(labels.len(), 20);
        for (i, a) in p.iter().enumerate() {
            for (j, b) in p.iter().enumerate() {
                let same = g[i] == g[j];
                let want = a.role == b.role && a.layer.map(|l| l / 6) == b.layer.map(|l| l / 6);
                assert_eq!(same, want, "{} {}", a.gguf_name, b.gguf_name);
            }
        }
        assert!(labels.contains(&"ffn_down of layers 30-31".to_string()));
        assert!(labels.contains(&"output".to_string()));
    }

    #[test]
    fn kld_is_zero_for_the_same_distribution_and_positive_otherwise() {
        let logits = [1.0f32, 2.0, -1.0, 0.5];
        let lp = log_softmax(&logits);
        assert!(kld_row(&lp, &logits).abs() < 1e-7);
        // Shifting all logits changes nothing; changing one does.
        let shifted: Vec<f32> = logits.iter().map(|x| x + 3.0).collect();
        assert!(kld_row(&lp, &shifted).abs() < 1e-6);
        let other = [1.0f32, 1.0, -1.0, 0.5];
        let d = kld_row(&lp, &other);
        // By hand: Σ p (log p − log q).
        let lq = log_softmax(&other);
        let want: f64 = lp
            .iter()
            .zip(&lq)
            .map(|(&a, &b)| (a as f64).exp() * (a - b) as f64)
            .sum();
        assert!(d > 1e-3 && (d - want).abs() < 1e-6 * want, "{d} {want}");
    }

    #[test]
    fn round_trip_is_quantize_then_dequantize() {
        let w: Vec<f32> = (0..512 * 3)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let rt = round_trip(GgmlType::Q4K, &w, 512, None).unwrap();
        let packed = quant::quantize_tensor(GgmlType::Q4K, &w, 512, None).unwrap();
        let mut want = vec![0f32; 512];
        quant::dequantize(GgmlType::Q4K, &packed[144 * 2 * 2..], &mut want).unwrap();
        assert_eq!(&rt[1024..], &want[..]);
        assert_ne!(rt, w);
        assert_eq!(round_trip(GgmlType::F32, &w, 512, None).unwrap(), w);
    }

    /// Every quantizable tensor of a fixture as a probe: Q8_0 for attention,
    /// Q4_K elsewhere (Q8_0 when the width does not fit), importance on every
    /// other tensor.
    fn fixture_probes(ck: &Checkpoint) -> Vec<Probe> {
        let mut out = Vec::new();
        for hf in ck.tensor_names() {
            let Some(m) = crate::arch::map_name(&ck.config, &hf).unwrap() else {
                continue;
            };
            let shape = ck.tensor_shape(&hf).unwrap();
            if !crate::policy::presets::allows_quantization(&m.gguf_name, shape.len()) {
                continue;
            }
            let width = *shape.last().unwrap();
            let rows = shape.iter().product::<usize>() / width;
            let attn = matches!(
                m.role,
                Role::AttnQ | Role::AttnK | Role::AttnV | Role::AttnOutput
            );
            let base = if attn || !width.is_multiple_of(256) {
                GgmlType::Q8_0
            } else {
                GgmlType::Q4K
            };
            let importance = (out.len() % 2 == 0).then(|| {
                (0..width)
                    .map(|j| 0.5 + (j * 7 % 13) as f32 / 13.0)
                    .collect()
            });
            out.push(Probe {
                hf_name: hf,
                gguf_name: m.gguf_name,
                role: m.role,
                layer: m.layer,
                base,
                width,
                rows,
                importance,
                base_error: 1.0 + out.len() as f64,
                energy: 1.0,
            });
        }
        out
    }

    /// The old measurement, kept as the oracle: per group, the whole model
    /// widened with the group's tensors quantized, every language run alone.
    fn whole_model_measure(ck: &Checkpoint, probes: &[Probe], job: &Measurement) -> Vec<f64> {
        use crate::calib::Model;
        struct Replaced<'a> {
            ck: &'a Checkpoint,
            with: HashMap<String, (Vec<f32>, ActQuant)>,
        }
        impl WeightSource for Replaced<'_> {
            fn weight(&self, name: &str) -> Result<Vec<f32>, CalibError> {
                match self.with.get(name) {
                    Some((v, _)) => Ok(v.clone()),
                    None => self.ck.weight(name),
                }
            }
            fn has_weight(&self, name: &str) -> bool {
                self.ck.has_weight(name)
            }
            fn activation(&self, name: &str) -> ActQuant {
                self.with
                    .get(name)
                    .map_or_else(|| self.ck.activation(name), |p| p.1)
            }
        }
        let cfg = ForwardConfig::from_hf(&ck.config).unwrap();
        let v = cfg.vocab;
        let logits = |src: &dyn WeightSource| -> Vec<Vec<f32>> {
            let m = Model::load(cfg.clone(), src, 2).unwrap();
            job.texts
                .iter()
                .map(|(_, ids, _)| m.forward_logits_from(&ids[..ids.len() - 1], 0).unwrap())
                .collect()
        };
        let reference: Vec<patched::Reference> = logits(ck)
            .iter()
            .map(|l| patched::Reference::from_logits(l, v))
            .collect();
        (0..job.labels.len())
            .map(|g| {
                let with = probes
                    .iter()
                    .zip(&job.group_of)
                    .filter(|(_, &pg)| pg == g)
                    .map(|(p, _)| {
                        let w = ck.weight(&p.hf_name).unwrap();
                        let deq = round_trip(p.base, &w, p.width, p.importance.as_deref()).unwrap();
                        (p.hf_name.clone(), (deq, ActQuant::for_weight(p.base)))
                    })
                    .collect();
                let q = logits(&Replaced { ck, with });
                let mut d = 0f64;
                for (((_, ids, w), r), q) in job.texts.iter().zip(&reference).zip(&q) {
                    let sum: f64 = q
                        .chunks_exact(v)
                        .enumerate()
                        .map(|(row, z)| r.kld(row, z))
                        .sum();
                    d += w * sum / (ids.len() - 1) as f64;
                }
                d.max(0.0)
            })
            .collect()
    }

    /// The packed rows of every probe, as the pipeline's spill file keeps them.
    struct Kept(HashMap<String, (GgmlType, Vec<u8>)>);

    impl Packed for Kept {
        fn read(&self, name: &str, ty: GgmlType, from: u64, out: &mut [u8]) -> bool {
            match self.0.get(name) {
                Some((t, b)) if *t == ty && from as usize + out.len() <= b.len() => {
                    out.copy_from_slice(&b[from as usize..from as usize + out.len()]);
                    true
                }
                _ => false,
            }
        }
    }

    /// The cache: a first measurement is stored, a second one with the same
    /// model, sample, groups and probes is reused and gives the same result bit
    /// for bit; another importance is another entry; a damaged entry is
    /// reported, measured again and replaced; no store measures and says `off`.
    #[test]
    fn measurements_are_cached_and_reused() {
        use calib::cache::{Outcome, Store};
        let dir = format!("{}/fixtures/llama-bpe", env!("CARGO_MANIFEST_DIR"));
        let ck = Checkpoint::open(&dir).unwrap();
        let probes = fixture_probes(&ck);
        let tmp = tempfile::tempdir().unwrap();
        let store = Store {
            dir: tmp.path().join("cache"),
        };
        let spec = SampleSpec {
            tokens: 6,
            max_groups: 8,
            budget: None,
            matmul: Matmul::F32,
            ..Default::default()
        };
        let job = prepare(&ck, &probes, &spec, None).unwrap();
        let run = |probes: &[Probe], store: Option<&Store>| {
            let mut passes = 0u64;
            let (m, used) =
                measure_cached(&ck, probes, &job, &(), store, &mut |_, _| passes += 1).unwrap();
            (m, used, passes)
        };
        let (m0, used, passes) = run(&probes, None);
        assert!(matches!(used.outcome, Outcome::Off) && passes > 0);
        let (m1, used, _) = run(&probes, Some(&store));
        let Outcome::Stored { file } = used.outcome else {
            panic!("{:?}", used.outcome)
        };
        assert_eq!(m1, m0);
        let (m2, used, passes) = run(&probes, Some(&store));
        assert_eq!(passes, 0, "a reused measurement runs no pass");
        assert!(matches!(&used.outcome, Outcome::Reused { file: f } if *f == file));
        assert_eq!(m2, m0);
        // Another importance for one tensor: another entry.
        let mut other = probes.clone();
        let p = other.iter_mut().find(|p| p.importance.is_some()).unwrap();
        p.importance.as_mut().unwrap()[0] *= 2.0;
        let (_, used, passes) = run(&other, Some(&store));
        assert!(passes > 0);
        assert!(matches!(&used.outcome, Outcome::Stored { file: f } if *f != file));
        // A damaged entry: reported, measured again, replaced.
        std::fs::write(&file, b"{\"key\": 1}").unwrap();
        let (m3, used, passes) = run(&probes, Some(&store));
        assert!(passes > 0);
        let w = used.warning.expect("a warning");
        assert!(w.contains(&file.display().to_string()), "{w}");
        assert!(matches!(&used.outcome, Outcome::Stored { file: f } if *f == file));
        assert_eq!(m3, m0);
        let (_, used, passes) = run(&probes, Some(&store));
        assert!(passes == 0 && matches!(used.outcome, Outcome::Reused { .. }));
    }

    /// On real checkpoints (an untied head, a tied one with Q/K biases, Q/K norms), every tensor alone
    /// and in bands: the layered measurement equals the old whole-model one
    /// exactly with one sequence per matmul, whether the quantized values come
    /// from the packed rows or are quantized again; batched, to float rounding.
    #[test]
    fn layered_measure_equals_the_whole_model_measure() {
        for fixture in ["llama-bpe", "qwen2-tied", "qwen3-sharded"] {
            let dir = format!("{}/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
            let ck = Checkpoint::open(&dir).unwrap();
            let probes = fixture_probes(&ck);
            assert!(probes.iter().any(|p| p.role == Role::TokenEmbd));
            let tied = !probes.iter().any(|p| p.role == Role::Output);
            assert_eq!(tied, fixture == "qwen2-tied");
            let kept = Kept(
                probes
                    .iter()
                    .map(|p| {
                        let w = ck.weight(&p.hf_name).unwrap();
                        let b =
                            quant::quantize_tensor(p.base, &w, p.width, p.importance.as_deref())
                                .unwrap();
                        (p.gguf_name.clone(), (p.base, b))
                    })
                    .collect(),
            );
            for max_groups in [100, 8] {
                let spec = SampleSpec {
                    tokens: 10,
                    max_groups,
                    budget: None,
                    matmul: Matmul::F32,
                    ..Default::default()
                };
                let job = prepare(&ck, &probes, &spec, None).unwrap();
                assert_eq!(job.sizing.band, if max_groups == 100 { 1 } else { 2 });
                let want = whole_model_measure(&ck, &probes, &job);
                assert!(want.iter().all(|&d| d > 1e-9), "{fixture}: {want:?}");
                let exact = Limits {
                    group_bytes: 1 << 30,
                    batch_bytes: 1,
                };
                for packed in [&() as &dyn Packed, &kept] {
                    let m = measure_with(&ck, &ck, &probes, &job, packed, exact, &mut |_, _| {})
                        .unwrap();
                    let got: Vec<f64> = m.groups.iter().map(|g| g.1).collect();
                    assert_eq!(got, want, "{fixture} max_groups {max_groups}");
                }
                let m = measure(&ck, &probes, &job, &kept, &mut |_, _| {}).unwrap();
                for ((label, a), b) in m.groups.iter().zip(&want) {
                    assert!(
                        (a - b).abs() <= 5e-3 * b + 1e-7,
                        "{fixture} {label}: {a} vs {b}"
                    );
                }
                // The head in bf16 from the change of its input (where AMX runs).
                if calib::amx::available() {
                    let job = prepare(
                        &ck,
                        &probes,
                        &SampleSpec {
                            matmul: Matmul::Bf16,
                            ..spec.clone()
                        },
                        None,
                    )
                    .unwrap();
                    let b16 = measure(&ck, &probes, &job, &kept, &mut |_, _| {}).unwrap();
                    for ((label, a), b) in b16.groups.iter().zip(&want) {
                        assert!(
                            (a - b).abs() <= 1e-2 * b + 1e-7,
                            "{fixture} {label} bf16: {a} vs {b}"
                        );
                    }
                }
                // α is the group's ΔKLD over its summed base error.
                for (i, p) in probes.iter().enumerate() {
                    let g = m.group_of[i];
                    let err: f64 = probes
                        .iter()
                        .zip(&m.group_of)
                        .filter(|(_, &pg)| pg == g)
                        .map(|(q, _)| q.base_error)
                        .sum();
                    assert!(
                        (m.alpha[i] * err - m.groups[g].1).abs() <= 1e-12 * m.groups[g].1,
                        "{}",
                        p.gguf_name
                    );
                }
            }
        }
    }

    /// The default sizing: every tensor alone at the asked tokens when the
    /// calibration is large; fewer tokens, then bands, then the fewest tokens
    /// as it shrinks; never over the budget when something fits; explicit
    /// sizes untouched.
    #[test]
    fn sizing_fits_the_calibration_budget() {
        let dir = format!("{}/fixtures/llama-bpe", env!("CARGO_MANIFEST_DIR"));
        let ck = Checkpoint::open(&dir).unwrap();
        let probes = fixture_probes(&ck);
        let spec = SampleSpec::default();
        let size = |tokens: u64| {
            prepare(
                &ck,
                &probes,
                &spec,
                Some(CalibrationSize { tokens, ctx: 512 }),
            )
            .unwrap()
            .sizing
        };
        let big = size(1 << 30);
        assert_eq!((big.band, big.tokens_per_language), (1, DEFAULT_TOKENS));
        assert_eq!(big.groups, probes.len());
        assert!(big.macs <= big.budget_macs.unwrap());
        // The cost of every tensor alone at 32 tokens, as a calibration budget.
        let full = big.macs / big.calibration_macs.unwrap() * (1u64 << 30) as f64;
        let mut last = big.clone();
        for f in [0.8, 0.6, 0.45, 0.3, 0.2, 0.1, 0.01] {
            let s = size((full * f) as u64);
            // Coarser or fewer tokens as the budget shrinks.
            assert!(
                s.band > last.band
                    || (s.band == last.band && s.tokens_per_language <= last.tokens_per_language),
                "{f}: {s:?} after {last:?}"
            );
            if s.tokens_per_language > MIN_TOKENS {
                assert!(s.macs <= s.budget_macs.unwrap(), "{f}: {s:?}");
            }
            if s.band == 1 {
                assert!(s.tokens_per_language >= DEFAULT_TOKENS / 2, "{f}: {s:?}");
            }
            last = s;
        }
        assert_eq!(last.band, 2, "the coarsest band of a 2-layer model");
        assert_eq!(last.tokens_per_language, MIN_TOKENS);
        // Explicit: as asked, whatever the calibration.
        let fixed = SampleSpec {
            tokens: 20,
            max_groups: 6,
            budget: None,
            ..Default::default()
        };
        let s = prepare(
            &ck,
            &probes,
            &fixed,
            Some(CalibrationSize {
                tokens: 10,
                ctx: 512,
            }),
        )
        .unwrap()
        .sizing;
        // At most 6 groups cannot be had: the coarsest band, 2 + 7 roles.
        assert_eq!(
            (s.band, s.tokens_per_language, s.budget_macs),
            (2, 20, None)
        );
        assert_eq!(s.groups, 9);
    }

    fn fixture_plan(outtype: crate::pipeline::OutType) -> Vec<crate::pipeline::TensorPlan> {
        use crate::pipeline::{self, ConvertOptions, Importance};
        let dir = format!("{}/fixtures/llama-bpe", env!("CARGO_MANIFEST_DIR"));
        let ck = Checkpoint::open(&dir).unwrap();
        let opts = ConvertOptions {
            outtype,
            importance: Some(Importance {
                sensitivity: Some(SampleSpec {
                    tokens: 24,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        pipeline::plan(&ck, &opts, &crate::job::silent).unwrap()
    }

    /// On a real (tiny) checkpoint: every calibrated tensor is measured, the
    /// errors are the proxy times α, the plan is the same on a second run,
    /// la-mix upgrades first the tensor with the most estimated KLD removed per
    /// extra bit, and --target-bpw stays within its target.
    #[test]
    fn measured_plans_rank_by_alpha_and_are_deterministic() {
        use crate::pipeline::OutType;
        let p = fixture_plan(OutType::LaMix { f16_budget: 0.2 });
        let scored: Vec<_> = p.iter().filter(|t| t.score.is_some()).collect();
        assert!(scored.len() >= 10);
        for t in &scored {
            let s = t.score.as_ref().unwrap();
            let (a, d) = (s.alpha.unwrap(), s.delta_kld.unwrap());
            assert!(a > 0.0 && d > 0.0, "{}: α {a} ΔKLD {d}", t.name);
            assert!(t.reason.contains("measured"), "{}", t.reason);
            // Alone in its group: ΔKLD = α · E(base).
            assert!((s.base_error - d).abs() <= 1e-9 * d, "{}", t.name);
        }
        // The F16 budget, a bit budget (lamix::la_mix), buys its first upgrade for the
        // tensor with the highest gain per bit (α-scaled); every tensor says what it got.
        let params: u64 = p.iter().map(|t| t.n_elements()).sum();
        let g = |t: &&crate::pipeline::TensorPlan| t.score.as_ref().unwrap().gain_per_bit;
        let top = scored
            .iter()
            .max_by(|a, b| g(a).partial_cmp(&g(b)).unwrap())
            .unwrap();
        assert!(
            top.reason.contains("upgraded by the F16 budget"),
            "{}",
            top.reason
        );
        for t in &scored {
            assert!(
                t.reason.contains("upgraded by the F16 budget")
                    || t.reason.contains("not upgraded"),
                "{}",
                t.reason
            );
        }
        // Deterministic.
        let again = fixture_plan(OutType::LaMix { f16_budget: 0.2 });
        for (a, b) in p.iter().zip(&again) {
            assert_eq!((a.ty, &a.reason), (b.ty, &b.reason), "{}", a.name);
        }
        // --target-bpw with measured errors stays within the target.
        for x in [4.0, 6.0] {
            let p = fixture_plan(OutType::TargetBpw(x));
            let bits = 8.0 * p.iter().map(|t| t.bytes).sum::<u64>() as f64;
            assert!(
                bits / params as f64 <= x + 1e-9,
                "{x}: {}",
                bits / params as f64
            );
            assert!(p.iter().any(|t| t.reason.contains("measured")));
        }
    }
}
