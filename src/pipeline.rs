//! The one-pass converter: read a checkpoint, plan a type per tensor, then
//! stream every tensor (read from the map, widen, transform, pack in
//! parallel) into the GGUF writer in file order, with progress and atomic
//! output. Memory stays bounded by one chunk of one tensor.

pub(crate) mod rows;
mod spill;

use crate::arch::{self, Mapped, Role, Transform};
use crate::atomic::AtomicFile;
use crate::gguf::{FileType, GgmlType, GgufWriter, Metadata, TensorSpec, Value};
use crate::hf::{convert_py, tokenizer, Checkpoint, HfError};
use crate::job::{OnProgress, Progress};
use crate::policy::{lamix, presets, sensitivity, Overrides, Preset, PresetPlanner, TensorDesc};
use crate::quant;
use rayon::prelude::*;
use rows::RowJob;
use serde::Serialize;
use spill::Spill;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

/// What a conversion writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OutType {
    /// llama.cpp converter types (`f32`, `f16`, `bf16`, `q8_0`): every 2-D weight in
    /// one type, norms and 1-D tensors F32, tensors in the converter's order.
    Uniform(GgmlType),
    /// A llama-quantize file type (`q4_k_m`, `q6_k`, ...; `--pure` for every
    /// quantizable weight in its base type), tensors in llama-quantize's order.
    Preset(Preset),
    /// The calibrated la-mix policy: Q8_0 attention, Q4_K elsewhere, F16 budget.
    LaMix {
        /// The extra budget, as a share of the weights' size in F16 (0.05 by default).
        f16_budget: f64,
    },
    /// A type per tensor for at most this many bits per weight, least calibrated error.
    TargetBpw(f64),
}

impl OutType {
    /// la-mix's default `--f16-budget`.
    pub const DEFAULT_F16_BUDGET: f64 = 0.05;

    /// The policies that choose types from calibrated errors (la-mix, `--target-bpw`).
    pub fn is_calibrated(&self) -> bool {
        matches!(self, OutType::LaMix { .. } | OutType::TargetBpw(_))
    }

    /// Parses `--outtype`; `pure` turns any type into llama-quantize's `--pure` mode.
    pub fn parse(s: &str, pure: bool) -> Option<OutType> {
        let lower = s.to_ascii_lowercase();
        if lower == "la-mix" || lower == "lamix" {
            return Some(OutType::LaMix {
                f16_budget: OutType::DEFAULT_F16_BUDGET,
            });
        }
        if lower == "copy" {
            // llama-quantize's COPY of laquant's F32 file: every tensor as it is (F32, an
            // MXFP4 checkpoint's experts MXFP4), in llama-quantize's order.
            return Some(OutType::Preset(Preset::COPY));
        }
        let converter = matches!(lower.as_str(), "f32" | "f16" | "bf16" | "q8_0");
        if converter && !pure {
            return GgmlType::from_name(s).map(OutType::Uniform);
        }
        // llama-quantize's aliases for the _M presets.
        let s = match lower.as_str() {
            "q3_k" => "q3_k_m",
            "q4_k" => "q4_k_m",
            "q5_k" => "q5_k_m",
            _ => s,
        };
        Preset::parse(s).map(OutType::Preset)
    }

    /// Every name `--outtype` takes (for messages).
    pub const NAMES: &'static [&'static str] = &[
        "f32",
        "f16",
        "bf16",
        "q8_0",
        "q4_0",
        "q4_1",
        "q5_0",
        "q5_1",
        "q2_k",
        "q3_k_s",
        "q3_k_m",
        "q3_k_l",
        "q4_k_s",
        "q4_k_m",
        "q5_k_s",
        "q5_k_m",
        "q6_k",
        "iq4_nl",
        "iq4_xs",
        "q2_0",
        "tq2_0",
        "tq1_0",
        "q1_0",
        "q2_k_s",
        "iq3_m",
        "iq3_s",
        "iq3_xs",
        "iq3_xxs",
        "iq2_m",
        "iq2_s",
        "iq2_xs",
        "iq2_xxs",
        "iq1_m",
        "iq1_s",
        "mxfp4_moe",
        "copy",
        "la-mix",
    ];

    /// `general.file_type`. A calibrated mix is labelled by the type holding most
    /// of its weight bytes, as llama.cpp's loader guesses a file type when the key
    /// is absent (Q4_K: "Q4_K - Medium", Q3_K: "Q3_K - Medium", Q5_K: "Q5_K -
    /// Medium"), but counting bytes rather than tensors, so a file mostly in F16 or
    /// Q5_0 is not called Q4_K.
    pub fn file_type(&self, plan: &[TensorPlan]) -> u32 {
        let ft = match self {
            // convert_hf_to_gguf.py's label of an MXFP4 checkpoint kept MXFP4 in a float file.
            OutType::Uniform(GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
                if plan.iter().any(|t| t.ty == GgmlType::MXFP4) =>
            {
                Some(FileType::MostlyMXFP4Moe)
            }
            OutType::Uniform(t) => FileType::for_type(*t),
            // COPY keeps its input's file type: laquant's F32 file's.
            OutType::Preset(p) if p.is_copy() => {
                return OutType::Uniform(GgmlType::F32).file_type(plan)
            }
            OutType::Preset(p) => Some(p.0),
            OutType::LaMix { .. } | OutType::TargetBpw(_) => {
                FileType::for_type(dominant_type(plan))
            }
        };
        ft.map(|f| f.id()).unwrap_or(0)
    }

    /// The name the output file and the report give it (`Q4_K_M`, `la-mix`, `4.5bpw`).
    pub fn label(&self) -> String {
        match self {
            OutType::Uniform(t) => t.name().to_string(),
            OutType::Preset(p) => p.name().to_string(),
            OutType::LaMix { .. } => "la-mix".to_string(),
            OutType::TargetBpw(x) => format!("{x}bpw"),
        }
    }
}

/// What one conversion writes (the `convert` subcommand's flags).
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// The type policy.
    pub outtype: OutType,
    /// The output file (`-o`); `None`: [`default_output`].
    pub output: Option<PathBuf>,
    /// `--force`: replace an existing regular file.
    pub force: bool,
    /// `--tokenizer-pre`: the llama.cpp pre-tokenizer, when it cannot be identified.
    pub tokenizer_pre: Option<String>,
    /// `--allow-nonfinite`: write weights holding NaN or infinity instead of refusing them.
    pub allow_nonfinite: bool,
    /// `--allow-requantize`: a GGUF input's quantized tensors may be
    /// quantized again; la-mix and `--target-bpw` then plan MXFP4 experts (a
    /// GGUF's or a checkpoint's) as any other tensor, from their dequantized
    /// values, instead of keeping them.
    pub allow_requantize: bool,
    /// `--tensor-type`, `--output-tensor-type`, `--token-embedding-type`, `--pure`.
    pub overrides: Overrides,
    /// Importance weights (from calibration or `--imatrix`).
    pub importance: Option<Importance>,
}

/// Column importance per GGUF weight name, and where it came from.
#[derive(Debug, Clone, Default)]
pub struct Importance {
    /// Per GGUF weight name, per column (per expert then column for stacked experts).
    pub per_tensor: std::collections::HashMap<String, Vec<f32>>,
    /// `quantize.imatrix.file` / dataset names / chunk count for provenance keys.
    pub file: Option<String>,
    /// `quantize.imatrix.dataset`.
    pub datasets: Vec<String>,
    /// `quantize.imatrix.chunks_count`.
    pub chunk_count: u64,
    /// Calibration languages and weights, when laquant calibrated.
    pub languages: Vec<(String, f64)>,
    /// Per language: chunks and tokens fed, when laquant calibrated (same order as `languages`).
    pub language_chunks: Vec<(usize, u64)>,
    /// Tokens per chunk.
    pub ctx: usize,
    /// Wall time of the calibration run, when the caller measured it.
    pub seconds: Option<f64>,
    /// The forward pass's product arithmetic (`f32`, or `bf16` on AMX), when laquant calibrated.
    pub matmul: Option<String>,
    /// The sample on which la-mix and --target-bpw measure each tensor's
    /// sensitivity ([`crate::policy::sensitivity`]); `None`: the raw proxy.
    pub sensitivity: Option<crate::policy::sensitivity::SampleSpec>,
    /// The calibration's size and cost, when laquant calibrated.
    pub estimate: Option<crate::calib::budget::Estimate>,
    /// What the calibration cache did, when laquant calibrated.
    pub cache: Option<crate::calib::cache::Outcome>,
}

impl Importance {
    /// From an imatrix (ours or llama.cpp's): the per-column mean statistic of every weight.
    pub fn from_imatrix(m: &crate::calib::imatrix::Imatrix, file: Option<String>) -> Importance {
        Importance {
            per_tensor: m
                .entries
                .iter()
                .map(|(k, e)| (k.clone(), e.mean()))
                .collect(),
            file,
            datasets: m.datasets.clone(),
            chunk_count: m.chunk_count as u64,
            languages: Vec::new(),
            language_chunks: Vec::new(),
            ctx: m.chunk_size as usize,
            seconds: None,
            matmul: None,
            sensitivity: None,
            estimate: None,
            cache: None,
        }
    }

    /// From a calibration run: the balanced statistic, with the languages and their weights.
    pub fn from_calibration(imp: &crate::calib::Importance) -> Importance {
        let m = imp.to_imatrix();
        let mut out = Importance::from_imatrix(&m, None);
        out.languages = imp
            .langs
            .iter()
            .map(|l| l.lang.clone())
            .zip(imp.weights.iter().copied())
            .collect();
        out.language_chunks = imp
            .langs
            .iter()
            .map(|l| (l.chunks, l.taps.tokens))
            .collect();
        out.ctx = imp.ctx;
        out
    }

    /// How much text the calibration ran (for sizing the measured sensitivity):
    /// the tokens laquant fed, or an imatrix file's chunks of `ctx`.
    pub fn calibration_size(&self) -> Option<sensitivity::CalibrationSize> {
        let fed: u64 = self.language_chunks.iter().map(|l| l.1).sum();
        let tokens = if fed > 0 {
            fed
        } else {
            self.chunk_count * self.ctx as u64
        };
        (tokens > 0 && self.ctx > 0).then_some(sensitivity::CalibrationSize {
            tokens,
            ctx: self.ctx,
        })
    }

    /// What the report says about where the importance came from.
    pub fn summary(&self) -> CalibrationSummary {
        CalibrationSummary {
            imatrix_file: self.file.clone(),
            datasets: self.datasets.clone(),
            ctx: self.ctx,
            chunks: self.chunk_count,
            tokens: self.language_chunks.iter().map(|l| l.1).sum(),
            tensors: self.per_tensor.len(),
            seconds: self.seconds,
            matmul: self.matmul.clone(),
            estimate: self.estimate.clone(),
            cache: self.cache.clone(),
            languages: self
                .languages
                .iter()
                .enumerate()
                .map(|(i, (lang, weight))| {
                    let (chunks, tokens) = self.language_chunks.get(i).copied().unwrap_or((0, 0));
                    LanguageSummary {
                        lang: lang.clone(),
                        weight: *weight,
                        chunks,
                        tokens,
                    }
                })
                .collect(),
        }
    }

    /// The importance of a tensor's input columns, if known and of the right width.
    pub fn get(&self, name: &str, width: usize) -> Option<&[f32]> {
        self.per_tensor
            .get(name)
            .filter(|v| v.len() == width)
            .map(|v| v.as_slice())
    }

    /// Refuses statistics made for another model, as llama-quantize does: an
    /// entry of the wrong width for a tensor of the model ("imatrix size 384 is
    /// different from tensor size 128 for blk.0.attn_k.weight"), or statistics
    /// that cover none of the model's matrices.
    pub fn check_against(&self, plan: &[TensorPlan]) -> Result<(), ConvertError> {
        let from = self
            .file
            .as_deref()
            .map_or_else(|| "the calibration".to_string(), |f| format!("imatrix {f}"));
        let mut covered = 0;
        for t in plan {
            let Some(v) = self.per_tensor.get(&t.name) else {
                continue;
            };
            // A stacked expert tensor has one row of statistics per expert.
            let want = t.dims[0] * t.dims.get(2).copied().unwrap_or(1);
            if v.len() as u64 != want {
                return Err(ConvertError::Plan(format!(
                    "{from}: imatrix size {} is different from tensor size {want} for {} \
                     (statistics of another model?)",
                    v.len(),
                    t.name
                )));
            }
            covered += 1;
        }
        let matrices = plan.iter().filter(|t| t.dims.len() >= 2).count();
        if covered == 0 && matrices > 0 && (self.file.is_some() || !self.per_tensor.is_empty()) {
            let Some(example) = self.per_tensor.keys().min() else {
                return Err(ConvertError::Plan(format!("{from}: holds no entries")));
            };
            return Err(ConvertError::Plan(format!(
                "{from}: its {} entries (e.g. {example}) name none of the model's {matrices} \
                 weight matrices (statistics of another model?)",
                self.per_tensor.len()
            )));
        }
        Ok(())
    }

    /// For tensors without statistics of their own (token embeddings, an output head
    /// never tapped), use a uniform weight at this mean column importance of the
    /// model, so their errors are in the same units as the others'.
    pub fn mean_column_importance(&self) -> f32 {
        let (sum, n) = self
            .per_tensor
            .values()
            .flat_map(|v| v.iter())
            .fold((0f64, 0usize), |(s, n), &x| (s + x as f64, n + 1));
        if n > 0 {
            (sum / n as f64) as f32
        } else {
            1.0
        }
    }
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            outtype: OutType::Uniform(GgmlType::F16),
            output: None,
            force: false,
            tokenizer_pre: None,
            allow_nonfinite: false,
            allow_requantize: false,
            overrides: Overrides::default(),
            importance: None,
        }
    }
}

/// One tensor of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct TensorPlan {
    /// HF name, or `None` for tensors laquant generates (`rope_freqs.weight`)
    /// and for a mixture's stacked experts.
    pub hf_name: Option<String>,
    /// A mixture's stacked tensor: the HF tensor of each expert, in order
    /// (its rows are theirs, one after the other); empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub experts: Vec<String>,
    /// The GGUF name.
    pub name: String,
    /// What the tensor is in its block.
    #[serde(skip)]
    pub role: Role,
    /// Its layer, for a block's tensors.
    pub layer: Option<usize>,
    /// GGUF dims, `ne[0]` (row width) first.
    pub dims: Vec<u64>,
    /// The type chosen.
    #[serde(serialize_with = "ser_type")]
    pub ty: GgmlType,
    /// What converting the HF tensor takes (permutation, norm offset, ...).
    #[serde(skip)]
    pub transform: Transform,
    /// Bytes in the file.
    pub bytes: u64,
    /// Why this type.
    pub reason: String,
    /// The calibrated policies' scores (la-mix, --target-bpw); `None` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<TensorScore>,
}

/// How a calibrated policy scored a tensor: importance-weighted squared error
/// `Σ_rows Σ_j I[j] (w − deq(q(w)))²` (docs/design.md, Definitions) and its rows.
#[derive(Debug, Clone, Serialize)]
pub struct TensorScore {
    /// Under the chosen type.
    pub error: f64,
    /// Under the la-mix base type (Q8_0 attention, Q4_K elsewhere, after width fallback).
    pub base_error: f64,
    /// la-mix's F16 ranking: base error removed per extra bit (0 for --target-bpw).
    pub gain_per_bit: f64,
    /// Share of the base error in the worst 5% of rows.
    pub top_rows_share: f64,
    /// The rows with the largest base error, worst first: (row in the checkpoint's order, error).
    pub worst_rows: Vec<(usize, f64)>,
    /// Measured sensitivity (`policy::sensitivity`): errors above are `alpha` times the
    /// proxy, i.e. estimated KLD (a decoder's) or embedding drift (an encoder's, as
    /// `measure` says); `delta_kld` / `delta_drift` is the quantity measured with the
    /// tensor's group alone at its base type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// What `alpha` was measured on (`kld`, `embedding_drift`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measure: Option<sensitivity::Quantity>,
    /// Where `alpha` came from: `{"kind": "measured"}`, or, when the group's base error
    /// is below what the measurement resolves, borrowed from a group of its role
    /// (`role`), of any role (`any_group`), each with the lender's `group`, or the raw
    /// proxy's 1 (`proxy`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha_from: Option<sensitivity::AlphaFrom>,
    /// See `alpha`: a decoder's measured ΔKLD.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_kld: Option<f64>,
    /// See `alpha`: an encoder's measured embedding drift.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_drift: Option<f64>,
}

fn ser_type<S: serde::Serializer>(t: &GgmlType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(t.name())
}

impl TensorPlan {
    /// Its element count.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    fn spec(&self) -> TensorSpec {
        TensorSpec {
            name: self.name.clone(),
            dims: self.dims.clone(),
            ty: self.ty,
        }
    }
}

/// Everything that can go wrong in a conversion.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The checkpoint cannot be read.
    #[error(transparent)]
    Hf(#[from] HfError),
    /// A tensor is malformed or cannot be converted.
    #[error("{path}: {what}")]
    Tensor {
        /// The file holding it.
        path: PathBuf,
        /// What is wrong, naming the tensor.
        what: String,
    },
    /// No plan can be made (an option the model does not allow, a bad override).
    #[error("{0}")]
    Plan(String),
    // `error`, not `source`: printed once (a source would repeat under anyhow's `{:#}`).
    #[error("{path}: {error}")]
    /// Reading or writing a file failed.
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A GGUF input cannot be read.
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    /// The model card's `general.*` metadata cannot be made.
    #[error(transparent)]
    Card(#[from] convert_py::CardError),
    /// The tokenizer's metadata cannot be made.
    #[error(transparent)]
    Tokenizer(#[from] tokenizer::TokenizerError),
    /// A preset needs an importance matrix for a tensor.
    #[error(transparent)]
    ImatrixRequired(#[from] presets::ImatrixRequired),
    /// Measuring the sensitivity of the calibrated policies failed.
    #[error("sensitivity")]
    Sensitivity(#[source] crate::calib::CalibError),
    /// The packed rows of a tensor kept from planning cannot be read back.
    #[error("tensor {tensor}: reading back its packed rows from the temporary file")]
    SpillRead {
        /// The tensor.
        tensor: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Maps and checks every checkpoint tensor, and chooses its type.
pub fn plan(
    ck: &Checkpoint,
    opts: &ConvertOptions,
    progress: OnProgress,
) -> Result<Vec<TensorPlan>, ConvertError> {
    Ok(plan_keeping(ck, opts, None, progress)?.0)
}

/// [`plan`], with how the calibrated policies' sensitivity was measured (the
/// report's `sensitivity`; `None` for presets and the raw proxy).
pub fn plan_measured(
    ck: &Checkpoint,
    opts: &ConvertOptions,
    progress: OnProgress,
) -> Result<(Vec<TensorPlan>, Option<SensitivitySummary>), ConvertError> {
    plan_keeping(ck, opts, None, progress)
}

/// [`plan`]; with `spill`, the calibrated policies keep every tensor packed in
/// its base type there while scoring it, for the writer to reuse.
fn plan_keeping(
    ck: &Checkpoint,
    opts: &ConvertOptions,
    spill: Option<&mut Spill>,
    progress: OnProgress,
) -> Result<(Vec<TensorPlan>, Option<SensitivitySummary>), ConvertError> {
    let outtype = opts.outtype;
    let mut sens = None;
    let mut out = generated_plans(&ck.config);
    let seen = mapped_plans(ck, outtype, &mut out)?;
    if let Some(imp) = &opts.importance {
        imp.check_against(&out)?;
    }
    if let OutType::Preset(p) = outtype {
        type_by_preset(&ck.config, p, opts, &mut out)?;
    }
    if outtype.is_calibrated() {
        // As llama-quantize writes them (see the presets above): trailing 1s dropped.
        for t in out.iter_mut() {
            drop_trailing_ones(&mut t.dims);
        }
        out.sort_by(|a, b| presets::quantize_order(&a.name, &b.name));
        sens = calibrated_types(ck, opts, &mut out, spill, progress)?;
    }
    for t in out.iter_mut() {
        size_checked(t, opts.importance.as_ref())?;
    }
    check_complete(ck, &seen)?;
    Ok((out, sens))
}

/// The tensors the converter generates (rope scaling factors), F32, first in the file.
fn generated_plans(cfg: &crate::hf::Config) -> Vec<TensorPlan> {
    let mut out = Vec::new();
    for (name, role, f) in cfg.generated_tensors() {
        out.push(TensorPlan {
            hf_name: None,
            experts: Vec::new(),
            name: name.into(),
            role,
            layer: None,
            dims: vec![f.len() as u64],
            ty: GgmlType::F32,
            transform: Transform::None,
            bytes: 4 * f.len() as u64,
            reason: "rope scaling factors, generated".into(),
            score: None,
        });
    }
    out
}

/// Plans every checkpoint tensor that maps to a GGUF tensor, in the checkpoint's
/// order (a layer's experts stacked once the last of them is read), typed when the
/// output type is uniform; returns the roles seen.
fn mapped_plans(
    ck: &Checkpoint,
    outtype: OutType,
    out: &mut Vec<TensorPlan>,
) -> Result<std::collections::HashSet<Role>, ConvertError> {
    let cfg = &ck.config;
    let mut seen = std::collections::HashSet::new();
    // Per layer, how many of its expert tensors have been read.
    let mut expert_seen = std::collections::HashMap::new();
    for hf in ck.tensor_names() {
        let Some((m, shape)) = checked_mapping(ck, &hf)? else {
            continue;
        };
        seen.insert(m.role);
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        if let (Some(_), Some(layer)) = (m.expert, m.layer) {
            // convert_hf_to_gguf.py stacks a layer's experts once it has read
            // the last of them: the stacked tensors go there, in the spec's order.
            let got = expert_seen.entry(layer).or_insert(0usize);
            *got += 1;
            let stacked = cfg.arch.tensors.experts.map_or(&[][..], |x| x.stacked);
            let n = cfg.n_expert.unwrap_or(0);
            if *got < stacked.len() * n {
                continue;
            }
            for &(_, role) in stacked {
                out.push(stacked_plan(ck, &m, layer, role, outtype)?);
            }
            continue;
        }
        let stored_mxfp4 = ck.shards.entry(&hf).is_some_and(|e| e.mxfp4.is_some());
        let (ty, reason) = match outtype {
            OutType::Uniform(t) if stored_mxfp4 && is_converter_type(t) => (
                GgmlType::MXFP4,
                "MXFP4 in the checkpoint: its blocks written as stored (llama.cpp's converter)"
                    .into(),
            ),
            OutType::Uniform(t) => choose_type(&m, &dims, t)?,
            // Chosen later, in llama-quantize's order, from the type the
            // converter's file holds (what a preset keeps).
            OutType::Preset(_) if stored_mxfp4 => (GgmlType::MXFP4, String::new()),
            OutType::Preset(_) | OutType::LaMix { .. } | OutType::TargetBpw(_) => {
                (GgmlType::F32, String::new())
            }
        };
        out.push(TensorPlan {
            hf_name: Some(hf),
            experts: Vec::new(),
            name: m.gguf_name,
            role: m.role,
            layer: m.layer,
            bytes: 0,
            dims,
            ty,
            transform: m.transform,
            reason,
            score: None,
        });
    }
    Ok(seen)
}

/// Where checkpoint tensor `hf` goes and its shape as read, checked against
/// config.json and for a readable dtype; `None` for a tensor the GGUF leaves out.
fn checked_mapping(
    ck: &Checkpoint,
    hf: &str,
) -> Result<Option<(Mapped, Vec<usize>)>, ConvertError> {
    let cfg = &ck.config;
    let e = ck.shards.entry(hf).expect("listed tensors exist");
    let path = ck.shards.shard_path(e).to_path_buf();
    let m: Mapped = match arch::map_name(cfg, hf) {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(None),
        Err(err) => {
            return Err(ConvertError::Tensor {
                path,
                what: err.to_string(),
            })
        }
    };
    // As read (a Conv1D weight's 2-D shape checked there).
    let shape = ck.tensor_shape(hf)?;
    let want = arch::expected_shape(cfg, &m);
    if shape != want {
        // A Conv1D weight is read transposed: its shapes as stored, [in, out].
        let conv1d = ck.stored_transposed(hf);
        let stored = |s: &[usize]| {
            let mut s = s.to_vec();
            if conv1d {
                s.reverse();
            }
            s
        };
        return Err(ConvertError::Tensor {
            path,
            what: format!(
                "tensor {hf}: shape {:?}{} disagrees with config.json, which implies {:?}",
                stored(&shape),
                if conv1d {
                    " (a Conv1D weight, [in, out])"
                } else {
                    ""
                },
                stored(&want)
            ),
        });
    }
    if !matches!(
        e.dtype,
        safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16
    ) {
        return Err(ConvertError::Tensor {
            path,
            what: format!(
                "tensor {hf}: dtype {:?} is not supported (F32, F16, BF16 are)",
                e.dtype
            ),
        });
    }
    Ok(Some((m, shape)))
}

/// The stacked tensor of `role` for `layer`'s experts (`m`: the mapping of one of them).
fn stacked_plan(
    ck: &Checkpoint,
    m: &Mapped,
    layer: usize,
    role: Role,
    outtype: OutType,
) -> Result<TensorPlan, ConvertError> {
    let cfg = &ck.config;
    let n = cfg.n_expert.unwrap_or(0);
    let names = arch::expert_names(cfg, layer, role);
    let first = ck.shards.entry(&names[0]).expect("counted experts exist");
    let mut dims: Vec<u64> = first.shape.iter().rev().map(|&d| d as u64).collect();
    dims.push(n as u64);
    let m = Mapped {
        gguf_name: format!("blk.{layer}.{}.weight", role.gguf_stem()),
        role,
        ..m.clone()
    };
    let (ty, reason) = match outtype {
        OutType::Uniform(t) => choose_type(&m, &dims, t)?,
        _ => (GgmlType::F32, String::new()),
    };
    Ok(TensorPlan {
        hf_name: None,
        experts: names,
        name: m.gguf_name,
        role,
        layer: m.layer,
        bytes: 0,
        dims,
        ty,
        transform: Transform::None,
        reason,
        score: None,
    })
}

/// llama-quantize writes ggml's dims: trailing 1s dropped (Qwen2-MoE's
/// shared-expert gate, [n_embd, 1] in the converter's file, is [n_embd]).
fn drop_trailing_ones(dims: &mut Vec<u64>) {
    while dims.len() > 1 && dims.last() == Some(&1) {
        dims.pop();
    }
}

/// A preset's types, in llama-quantize's order, as llama-quantize chooses them.
fn type_by_preset(
    cfg: &crate::hf::Config,
    p: Preset,
    opts: &ConvertOptions,
    out: &mut [TensorPlan],
) -> Result<(), ConvertError> {
    out.sort_by(|a, b| presets::quantize_order(&a.name, &b.name));
    let names: Vec<&str> = out.iter().map(|t| t.name.as_str()).collect();
    let mut planner = PresetPlanner::new(
        p,
        opts.overrides.clone(),
        opts.importance.is_some(),
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.num_hidden_layers,
        &names,
    )
    .with_experts(cfg.n_expert.unwrap_or(0));
    for t in out.iter_mut() {
        drop_trailing_ones(&mut t.dims);
        let (ty, why) = planner.choose(
            &TensorDesc {
                name: &t.name,
                dims: &t.dims,
            },
            // F32 as in the converter's f32 file, MXFP4 for an MXFP4 checkpoint's
            // tensor (mapped_plans), which llama-quantize keeps where it keeps a
            // type and requantizes (--allow-requantize) otherwise.
            t.ty,
        );
        planner.check_imatrix(&t.name, t.dims.len(), ty)?;
        t.ty = ty;
        t.reason = why;
    }
    Ok(())
}

/// Checks that `t`'s type can be written (kernels, importance, width) and sets its bytes.
fn size_checked(t: &mut TensorPlan, importance: Option<&Importance>) -> Result<(), ConvertError> {
    if !quant::supports(t.ty) {
        return Err(ConvertError::Plan(format!(
            "tensor {}: type {} is not supported by laquant's kernels yet",
            t.name, t.ty
        )));
    }
    needs_importance(t, importance)?;
    t.bytes = t.spec().n_bytes().ok_or_else(|| {
        ConvertError::Plan(format!(
            "tensor {}: width {} is not a multiple of {}'s block size {}",
            t.name,
            t.dims[0],
            t.ty,
            t.ty.block_size()
        ))
    })?;
    Ok(())
}

/// Refuses a checkpoint without a tensor llama.cpp needs (`seen`: the roles planned).
fn check_complete(
    ck: &Checkpoint,
    seen: &std::collections::HashSet<Role>,
) -> Result<(), ConvertError> {
    if let Some(missing) = arch::required_tensors(&ck.config)
        .into_iter()
        .find(|n| !ck.has_tensor(n))
    {
        return Err(ConvertError::Plan(format!(
            "{}: tensor {missing} is missing from the checkpoint (llama.cpp cannot load the model without it)",
            ck.dir.display()
        )));
    }
    if !seen.contains(&Role::TokenEmbd) {
        return Err(ConvertError::Plan(format!(
            "{}: the checkpoint has no model.embed_tokens.weight",
            ck.dir.display()
        )));
    }
    Ok(())
}

/// ggml quantizes IQ1_S, IQ2_XXS and IQ2_XS only with importance weights (llama-quantize
/// aborts on a tensor the imatrix lacks, e.g. the output head under `--pure`): such a
/// tensor without statistics of its own is refused.
pub(crate) fn needs_importance(
    t: &TensorPlan,
    importance: Option<&Importance>,
) -> Result<(), ConvertError> {
    // A stacked expert tensor has one row of statistics per expert (ne[2] of them).
    let width = t.dims[0] as usize * t.dims.get(2).map_or(1, |&e| e.max(1) as usize);
    if quant::requires_imatrix(t.ty) && importance.and_then(|i| i.get(&t.name, width)).is_none() {
        return Err(ConvertError::Plan(format!(
            "tensor {}: {} needs importance weights and {} (ggml cannot quantize it without; \
             llama-quantize aborts): give an imatrix with statistics for it, or another type \
             for it (--tensor-type, --output-type, --embedding-type)",
            t.name,
            t.ty,
            if importance.is_some() {
                "the importance has none for this tensor"
            } else {
                "no importance was given"
            }
        )));
    }
    Ok(())
}

/// Values per chunk when scoring a tensor for the calibrated policies.
const SCORE_CHUNK_ELEMS: usize = 1 << 22;

/// la-mix and --target-bpw: scores every quantizable weight (one at a time, in
/// chunks of rows read from the map) with our kernels and the importance, then
/// lets the policy choose. With `spill`, the rows packed in the base type while
/// scoring are kept there when they are the bytes the writer would make: the
/// importance used to score is the one used to write (a tensor without
/// statistics of its own is scored with the model's mean importance but written
/// without any, as llama-quantize does) and every value is finite (else the
/// writer reports it).
fn calibrated_types(
    ck: &Checkpoint,
    opts: &ConvertOptions,
    out: &mut [TensorPlan],
    spill: Option<&mut Spill>,
    progress: OnProgress,
) -> Result<Option<SensitivitySummary>, ConvertError> {
    let s = score_tensors(ck, opts, out, spill, progress)?;
    let choices = match opts.outtype {
        OutType::TargetBpw(x) => {
            lamix::target_bpw(&s.scored, target_for_scored(out, &s.idx, x)).choices
        }
        OutType::LaMix { f16_budget } => lamix::la_mix(&s.scored, f16_budget),
        _ => unreachable!("only calibrated policies come here"),
    };
    for ((i, c), sc) in s.idx.into_iter().zip(choices).zip(s.scored) {
        out[i].ty = c.ty;
        out[i].reason = format!(
            "{} [error {:.3e}, worst 5% rows hold {:.0}%]",
            c.reason,
            c.error,
            100.0 * c.top_rows_share
        );
        out[i].score = Some(TensorScore {
            error: c.error,
            base_error: sc.options.first().map(|o| o.1).unwrap_or(0.0),
            gain_per_bit: c.score,
            top_rows_share: sc.top_rows_share,
            alpha: sc.measured.as_ref().map(|m| m.alpha),
            measure: sc.measured.as_ref().map(|m| m.quantity),
            alpha_from: sc.measured.as_ref().map(|m| m.from.clone()),
            delta_kld: measured_delta(&sc, sensitivity::Quantity::Kld),
            delta_drift: measured_delta(&sc, sensitivity::Quantity::EmbeddingDrift),
            worst_rows: sc.worst_rows,
        });
    }
    Ok(s.sens)
}

/// The measured delta of a tensor's group when it was measured on `q`.
fn measured_delta(sc: &lamix::Scored, q: sensitivity::Quantity) -> Option<f64> {
    (sc.measured.as_ref())
        .filter(|m| m.quantity == q)
        .map(|m| m.delta_kld)
}

/// The calibrated policies' scores: the plan entries scored (`idx`, the others are
/// norms and overrides, already typed) with their errors under every candidate type.
struct Scores {
    idx: Vec<usize>,
    scored: Vec<lamix::Scored>,
    sens: Option<SensitivitySummary>,
}

/// `--target-bpw X` counts every tensor of the file: the bits per weight left for the
/// scored tensors once those the policy does not choose (norms, overrides) take theirs.
fn target_for_scored(out: &[TensorPlan], idx: &[usize], x: f64) -> f64 {
    let all_params: f64 = out.iter().map(|t| t.n_elements() as f64).sum();
    let mut scored = vec![false; out.len()];
    for &i in idx {
        scored[i] = true;
    }
    let (fixed_bits, scored_params) =
        out.iter().zip(&scored).fold((0.0, 0.0), |(b, p), (t, &s)| {
            if s {
                (b, p + t.n_elements() as f64)
            } else {
                (b + t.ty.bits_per_weight() * t.n_elements() as f64, p)
            }
        });
    if scored_params > 0.0 {
        (x * all_params - fixed_bits) / scored_params
    } else {
        x
    }
}

/// Scores every tensor the calibrated policy chooses a type for (see [`calibrated_types`]),
/// measuring the sensitivity when the importance asks for it.
fn score_tensors(
    ck: &Checkpoint,
    opts: &ConvertOptions,
    out: &mut [TensorPlan],
    mut spill: Option<&mut Spill>,
    progress: OnProgress,
) -> Result<Scores, ConvertError> {
    let imp = opts.importance.as_ref();
    // Computed once: the uniform weight for tensors without statistics of their own.
    let mean_imp = imp.map(|i| i.mean_column_importance()).unwrap_or(1.0);
    let types: &[GgmlType] = match opts.outtype {
        OutType::TargetBpw(_) => lamix::TARGET_TYPES,
        _ => lamix::LA_MIX_UPGRADES,
    };
    let to_score = out
        .iter()
        .filter(|t| presets::allows_quantization(&t.name, t.dims.len()))
        .count();
    let cx = ScoreCx {
        ck,
        opts,
        types,
        mean_imp,
    };
    let mut done = 0;
    let mut idx = Vec::new();
    let mut scored = Vec::new();
    let mut probes = Vec::new();
    for (i, t) in out.iter_mut().enumerate() {
        if !presets::allows_quantization(&t.name, t.dims.len()) {
            t.ty = GgmlType::F32;
            t.reason = "not quantized (1-D or norm)".into();
            continue;
        }
        done += 1;
        progress(Progress::Scoring {
            done,
            total: to_score as u64,
            tensor: &t.name,
        });
        if let Some(ty) = manual_override(&opts.overrides, &t.name) {
            t.ty = ty.0;
            t.reason = ty.1;
            continue;
        }
        if !opts.allow_requantize
            && (t.hf_name.as_ref())
                .is_some_and(|h| ck.shards.entry(h).is_some_and(|e| e.mxfp4.is_some()))
        {
            t.ty = GgmlType::MXFP4;
            t.reason = "MXFP4 as stored: kept, not requantized (the model's own weights; \
                        requantizing a 4.25-bit grid only loses; --allow-requantize lets the \
                        policy choose, --tensor-type forces a type, a GGUF input's with \
                        --allow-requantize)"
                .into();
            continue;
        }
        let (sc, probe) = cx.score(t, spill.as_deref_mut())?;
        idx.push(i);
        probes.push(probe);
        scored.push(sc);
    }
    let sens = measure_sensitivity(ck, imp, &probes, &mut scored, spill.as_deref(), progress)?;
    Ok(Scores { idx, scored, sens })
}

/// What scoring one tensor needs besides the tensor.
struct ScoreCx<'a> {
    ck: &'a Checkpoint,
    opts: &'a ConvertOptions,
    /// The candidate types of the policy.
    types: &'a [GgmlType],
    /// The model's mean column importance, for a tensor without statistics of its own.
    mean_imp: f32,
}

impl ScoreCx<'_> {
    /// Scores `t` under every candidate type (rows read in chunks from the map),
    /// keeping its base-type bytes in `spill` when they are the writer's; returns
    /// the scores and the tensor's sensitivity probe.
    fn score(
        &self,
        t: &TensorPlan,
        spill: Option<&mut Spill>,
    ) -> Result<(lamix::Scored, sensitivity::Probe), ConvertError> {
        let imp = self.opts.importance.as_ref();
        // The HF tensors whose rows make it: a mixture's stacked tensor has
        // each expert's in turn, each quantized with its own importance slice.
        let sources: Vec<&str> = match t.hf_name.as_deref() {
            Some(hf) => vec![hf],
            None => t.experts.iter().map(String::as_str).collect(),
        };
        let hf = *sources
            .first()
            .expect("quantizable tensors come from the checkpoint");
        let slices = sources.len();
        let width = t.dims[0] as usize;
        let fallback_imp;
        let importance = match imp {
            Some(i) => match i.get(&t.name, width * slices) {
                Some(v) => Some(v),
                None => {
                    fallback_imp = vec![self.mean_imp; width * slices];
                    Some(fallback_imp.as_slice())
                }
            },
            None => None,
        };
        let is_attention = matches!(
            t.role,
            Role::AttnQ | Role::AttnK | Role::AttnV | Role::AttnQkv | Role::AttnOutput
        );
        let plan_err = |e: quant::QuantError| ConvertError::Plan(format!("tensor {}: {e}", t.name));
        let rows = (t.n_elements() as usize) / width.max(1);
        // The bytes the writer would make: same importance (none when the tensor has no statistics).
        let same_importance = imp.is_none_or(|i| i.get(&t.name, width * slices).is_some());
        let own_importance = imp.is_some() && same_importance;
        let types = lamix::candidates(self.types, own_importance);
        // The upgrades on a sample of the rows (the base type on all of them);
        // la-mix scores only the types above the base type, all it can buy.
        let mut scorer = lamix::Scorer::new(width, is_attention, &types)
            .map_err(plan_err)?
            .sampled(lamix::upgrade_stride(rows));
        if matches!(self.opts.outtype, OutType::LaMix { .. }) {
            scorer = scorer.above_base();
        }
        let mut keep = spill.filter(|_| same_importance);
        if let Some(s) = keep.as_deref_mut() {
            s.begin(&t.name, scorer.base_type());
        }
        for (x, &hf) in sources.iter().enumerate() {
            let importance = importance.map(|v| &v[x * width..(x + 1) * width]);
            self.add_source(
                hf,
                t,
                rows / slices.max(1),
                importance,
                &mut scorer,
                &mut keep,
            )?;
        }
        if let Some(s) = keep {
            s.finish();
        }
        let sc = scorer.finish();
        let probe = sensitivity::Probe {
            hf_name: hf.to_string(),
            gguf_name: t.name.clone(),
            role: t.role,
            layer: t.layer,
            base: sc.options[0].0,
            width,
            rows,
            importance: importance.map(|v| v.to_vec()),
            base_error: sc.options[0].1,
            energy: sc.energy,
        };
        Ok((sc, probe))
    }

    /// Adds the `rows` rows of HF tensor `hf` (one source of `t`) to `scorer`, in
    /// chunks, and appends their base-type bytes to `keep` while it is open.
    fn add_source(
        &self,
        hf: &str,
        t: &TensorPlan,
        rows: usize,
        importance: Option<&[f32]>,
        scorer: &mut lamix::Scorer,
        keep: &mut Option<&mut Spill>,
    ) -> Result<(), ConvertError> {
        let ck = self.ck;
        let plan_err = |e: quant::QuantError| ConvertError::Plan(format!("tensor {}: {e}", t.name));
        let width = t.dims[0] as usize;
        let chunk_rows = (SCORE_CHUNK_ELEMS / width.max(1)).max(1);
        let mut buf = vec![0f32; chunk_rows.min(rows) * width];
        let e = ck.shards.entry(hf).expect("planned tensors exist");
        // Borrowed from the map, or a Conv1D weight transposed (its own buffer).
        let raw = ck.tensor_bytes(hf)?;
        let mapped = matches!(raw, std::borrow::Cow::Borrowed(_));
        let srb = width * crate::hf::safetensors::dtype_size(e.dtype);
        let mut r0 = 0;
        while r0 < rows {
            let nr = chunk_rows.min(rows - r0);
            let range = r0 * srb..(r0 + nr) * srb;
            let data = &mut buf[..nr * width];
            crate::hf::safetensors::widen(e.dtype, &raw[range.clone()], data);
            match keep.as_deref_mut() {
                Some(s) if s.is_open() => {
                    // The writer quantizes such rows again, and says what is wrong.
                    if !self.opts.allow_nonfinite && rows::first_unquantizable(data).is_err() {
                        s.discard();
                        scorer.add_rows(data, importance)
                    } else {
                        scorer.add_rows_keeping(data, importance, &mut |b| s.append(b))
                    }
                }
                _ => scorer.add_rows(data, importance),
            }
            .map_err(plan_err)?;
            if mapped {
                ck.shards.release_range(e, range);
            }
            r0 += nr;
        }
        ck.shards.release(e);
        Ok(())
    }
}

/// The measured sensitivity of the `probes` (when the importance asks for it),
/// folded into their `scored` errors.
fn measure_sensitivity(
    ck: &Checkpoint,
    imp: Option<&Importance>,
    probes: &[sensitivity::Probe],
    scored: &mut [lamix::Scored],
    spill: Option<&Spill>,
    progress: OnProgress,
) -> Result<Option<SensitivitySummary>, ConvertError> {
    let Some((spec, imp)) = imp.and_then(|i| Some((i.sensitivity.as_ref()?, i))) else {
        return Ok(None);
    };
    if spec.tokens == 0 || probes.is_empty() {
        return Ok(None);
    }
    let t0 = Instant::now();
    let err = ConvertError::Sensitivity;
    let job = sensitivity::prepare(ck, probes, spec, imp.calibration_size()).map_err(err)?;
    let sizing = job.sizing.describe();
    let packed: &dyn sensitivity::Packed = match spill {
        Some(s) => s,
        None => &(),
    };
    let store = spec.cache.as_ref();
    let (m, cache) =
        sensitivity::measure_cached(ck, probes, &job, packed, store, &mut |done, total| {
            progress(Progress::Sensitivity {
                done,
                total,
                sizing: &sizing,
            })
        })
        .map_err(err)?;
    if let Some(w) = &cache.warning {
        progress(Progress::Warning(w));
    }
    progress(Progress::SensitivityCache(&cache.outcome));
    lamix::calibrate(scored, &m);
    Ok(Some(SensitivitySummary {
        sizing: job.sizing,
        seconds: t0.elapsed().as_secs_f64(),
        cache: cache.outcome,
    }))
}

/// `--tensor-type`, `--output-type`, `--embedding-type` for the calibrated policies.
fn manual_override(ov: &Overrides, name: &str) -> Option<(GgmlType, String)> {
    if name == "token_embd.weight" {
        if let Some(t) = ov.embedding_type {
            return Some((t, "--embedding-type".into()));
        }
    }
    if name == "output.weight" {
        if let Some(t) = ov.output_type {
            return Some((t, "--output-type".into()));
        }
    }
    ov.tensor_types
        .iter()
        .find(|(re, _)| re.is_match(name))
        .map(|(re, t)| (*t, format!("--tensor-type {}={}", re.as_str(), t.name())))
}

/// llama.cpp's converter rules: 1-D tensors and norms stay F32; other tensors
/// take the output type; a width that does not fit Q8_0's block falls back to F16.
/// Whether `t` is one of `convert_hf_to_gguf.py`'s output types (`--outtype`
/// f32, f16, bf16, q8_0), which keep a checkpoint's MXFP4 tensors as stored.
fn is_converter_type(t: GgmlType) -> bool {
    matches!(
        t,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0
    )
}

fn choose_type(m: &Mapped, dims: &[u64], t: GgmlType) -> Result<(GgmlType, String), ConvertError> {
    if dims.len() <= 1 || m.gguf_name.ends_with("_norm.weight") {
        return Ok((GgmlType::F32, "1-D tensors and norms stay F32".into()));
    }
    if !m.gguf_name.ends_with(".weight") {
        return Ok((
            GgmlType::F32,
            "tensors not named .weight (2-D biases: stacked experts') stay F32 (llama.cpp's converter)"
                .into(),
        ));
    }
    if matches!(m.role, Role::PosEmbd | Role::TokenTypes) {
        return Ok((
            GgmlType::F32,
            "position and token type embeddings stay F32 (llama.cpp's converter)".into(),
        ));
    }
    if matches!(m.role, Role::FfnGateInp | Role::FfnGateInpShexp) {
        return Ok((
            GgmlType::F32,
            "expert routers stay F32 (llama.cpp's converter)".into(),
        ));
    }
    if t.row_bytes(dims[0]).is_some() {
        return Ok((t, format!("--outtype {}", t.name())));
    }
    if t == GgmlType::Q8_0 {
        return Ok((
            GgmlType::F16,
            format!(
                "width {} is not a multiple of 32: F16, as llama.cpp's converter falls back",
                dims[0]
            ),
        ));
    }
    Err(ConvertError::Plan(format!(
        "tensor {}: width {} is not a multiple of {}'s block size {}",
        m.gguf_name,
        dims[0],
        t.name(),
        t.block_size()
    )))
}

/// A finished conversion (`--report`): the plan, sizes, timings, calibration.
#[derive(Debug, Serialize)]
pub struct ConvertReport {
    /// The file written.
    pub output: PathBuf,
    /// The type policy's label.
    pub outtype: String,
    /// The plan: every tensor with its type, bytes, reason and (calibrated policies) scores.
    pub tensors: Vec<TensorPlan>,
    /// The file's size.
    pub bytes: u64,
    /// Elements over all tensors.
    pub n_params: u64,
    /// Bits per weight over all tensors.
    pub bits_per_weight: f64,
    /// Wall time of the conversion (calibration not included; see `timings`).
    pub seconds: f64,
    /// Tensor bytes copied from the rows packed while scoring instead of being
    /// quantized a second time (la-mix, --target-bpw).
    pub quantized_once_bytes: u64,
    /// Tensors, parameters and bytes per type.
    pub sizes: Vec<TypeSize>,
    /// Wall time per phase.
    pub timings: Timings,
    /// Where the importance came from, when there was any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationSummary>,
    /// How the measured sensitivity was sized and how long it took (la-mix,
    /// --target-bpw with a sample).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<SensitivitySummary>,
    /// The process's peak resident memory so far, in bytes (Linux: `VmHWM` of
    /// `/proc/self/status`; absent elsewhere). In `laquant batch` it covers
    /// every conversion the process ran before this one too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
}

/// A calibrated plan's estimated KLD: the sum of its tensors' errors when every
/// scored tensor's error is in measured KLD units (`TensorScore::alpha`: estimated KLD
/// per token, in nats); `None` for presets, for the raw error proxy and for an
/// encoder's plan (embedding drift: [`estimated_drift`]).
pub fn estimated_kld(plan: &[TensorPlan]) -> Option<f64> {
    estimated(plan, sensitivity::Quantity::Kld)
}

/// An encoder's calibrated plan's estimated embedding drift (the sum of its
/// tensors' errors when every one is measured as drift: `1 − cosine`, languages
/// weighted); `None` otherwise.
pub fn estimated_drift(plan: &[TensorPlan]) -> Option<f64> {
    estimated(plan, sensitivity::Quantity::EmbeddingDrift)
}

fn estimated(plan: &[TensorPlan], q: sensitivity::Quantity) -> Option<f64> {
    let scores: Vec<&TensorScore> = plan.iter().filter_map(|t| t.score.as_ref()).collect();
    (!scores.is_empty()
        && (scores.iter())
            .all(|s| s.alpha.is_some() && s.measure.unwrap_or(sensitivity::Quantity::Kld) == q))
    .then(|| scores.iter().map(|s| s.error).sum())
}

/// Estimated KLD above which a plan is said to damage the model badly: half a nat
/// per token (llama.cpp's presets stay far below it on the models laquant is tested
/// on; a model this far from its reference no longer answers like it).
pub const DAMAGING_KLD: f64 = 0.5;

/// A warning for a calibrated plan whose estimated KLD ([`estimated_kld`]) exceeds
/// [`DAMAGING_KLD`]: the estimate, and the tensor that contributes most with its type
/// and share of the weights (often, on small models, an embedding table tied to the
/// output head, which holds most of the weights and which a low `--target-bpw` must
/// squeeze with the rest).
pub fn damage_warning(plan: &[TensorPlan]) -> Option<String> {
    let kld = estimated_kld(plan).filter(|&k| k > DAMAGING_KLD)?;
    let params: u64 = plan.iter().map(|t| t.n_elements()).sum();
    let worst = (plan.iter())
        .filter_map(|t| Some((t, t.score.as_ref()?.error)))
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    Some(format!(
        "the plan's estimated KLD is {kld:.3} nats per token (the sum of the measured per-tensor \
         estimates; above {DAMAGING_KLD} the model is badly damaged): {} alone, {} and {:.0}% of the \
         weights, is estimated at {:.3}; give a larger --target-bpw or a preset",
        worst.0.name,
        worst.0.ty.name(),
        100.0 * worst.0.n_elements() as f64 / params.max(1) as f64,
        worst.1
    ))
}

/// `VmHWM` of `/proc/self/status` in bytes: the process's peak resident set.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

/// The measured-sensitivity part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct SensitivitySummary {
    /// Its sample and passes.
    #[serde(flatten)]
    pub sizing: sensitivity::Sizing,
    /// Wall time of the measurement (part of `timings.plan`).
    pub seconds: f64,
    /// Whether it was measured or reused from the cache, and the entry.
    pub cache: crate::calib::cache::Outcome,
}

/// One output type's share of the file.
#[derive(Debug, Clone, Serialize)]
pub struct TypeSize {
    /// The type's name.
    #[serde(rename = "type")]
    pub ty: String,
    /// Tensors of that type.
    pub tensors: usize,
    /// Their elements.
    pub params: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Wall-clock seconds of each phase.
#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    /// Calibration (forward passes), when it ran before the conversion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<f64>,
    /// Opening the checkpoint: headers, config, maps.
    pub open: f64,
    /// Choosing the types (for la-mix and --target-bpw: scoring every tensor).
    pub plan: f64,
    /// Metadata, then reading, converting and writing every tensor, and the final sync and rename.
    pub write: f64,
    /// All of the above.
    pub total: f64,
}

/// The importance behind a conversion.
#[derive(Debug, Clone, Serialize)]
pub struct CalibrationSummary {
    /// `--imatrix FILE`, when the importance was read rather than computed.
    pub imatrix_file: Option<String>,
    /// Where the text came from.
    pub datasets: Vec<String>,
    /// Tokens per chunk.
    pub ctx: usize,
    /// Chunks over all languages.
    pub chunks: u64,
    /// Tokens over all languages.
    pub tokens: u64,
    /// Weights with importance statistics.
    pub tensors: usize,
    /// Wall time of the calibration, when it ran.
    pub seconds: Option<f64>,
    /// The forward pass's product arithmetic (`f32`, or `bf16` on the AMX tile unit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matmul: Option<String>,
    /// The size rule, tokens and multiply-adds, and the time estimated from
    /// the first part of the run (when laquant calibrated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<crate::calib::budget::Estimate>,
    /// Whether the statistics were reused from the cache or stored in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::calib::cache::Outcome>,
    /// Per language (when laquant calibrated): balance weight, chunks and tokens.
    pub languages: Vec<LanguageSummary>,
}

/// One calibration language.
#[derive(Debug, Clone, Serialize)]
pub struct LanguageSummary {
    /// The language.
    pub lang: String,
    /// Its balance weight `w_l`.
    pub weight: f64,
    /// Chunks run.
    pub chunks: usize,
    /// Tokens run.
    pub tokens: u64,
}

/// Tensors, parameters and bytes per output type, largest share first.
pub fn sizes_by_type(plan: &[TensorPlan]) -> Vec<TypeSize> {
    let mut out: Vec<TypeSize> = Vec::new();
    for t in plan {
        let name = t.ty.name().to_string();
        let i = match out.iter().position(|s| s.ty == name) {
            Some(i) => i,
            None => {
                out.push(TypeSize {
                    ty: name,
                    tensors: 0,
                    params: 0,
                    bytes: 0,
                });
                out.len() - 1
            }
        };
        out[i].tensors += 1;
        out[i].params += t.n_elements();
        out[i].bytes += t.bytes;
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.bytes));
    out
}

/// The type holding most of a plan's weight bytes (the first of the plan's
/// order on a tie).
pub fn dominant_type(plan: &[TensorPlan]) -> GgmlType {
    let mut bytes: Vec<(GgmlType, u64)> = Vec::new();
    for t in plan {
        match bytes.iter_mut().find(|b| b.0 == t.ty) {
            Some(b) => b.1 += t.bytes,
            None => bytes.push((t.ty, t.bytes)),
        }
    }
    let most = bytes.iter().map(|b| b.1).max().unwrap_or(0);
    bytes
        .iter()
        .find(|b| b.1 == most)
        .map_or(GgmlType::F32, |b| b.0)
}

/// The metadata laquant writes for `plan`: `general.*`, the hyperparameters, the tokenizer.
pub fn build_metadata(
    ck: &Checkpoint,
    outtype: OutType,
    opts: &ConvertOptions,
    plan: &[TensorPlan],
) -> Result<Metadata, ConvertError> {
    let mut m: Metadata = vec![(
        "general.architecture".into(),
        Value::str(ck.config.arch.gguf_arch),
    )];
    m.extend(general_metadata(ck, plan)?);
    m.extend(arch::hparams_metadata(&ck.config, outtype.file_type(plan)));
    m.push((
        "general.quantization_version".into(),
        Value::U32(convert_py::QUANTIZATION_VERSION),
    ));
    m.extend(tokenizer_metadata(ck, opts)?);
    m.extend(provenance(outtype, opts));
    Ok(m)
}

/// Provenance: llama-quantize's `quantize.imatrix.*` keys when importance
/// weights were used, and laquant's own `laquant.*` keys.
pub(crate) fn provenance(outtype: OutType, opts: &ConvertOptions) -> Metadata {
    let cut = |s: &str| s.chars().take(127).collect::<String>();
    let mut m: Metadata = Vec::new();
    if let Some(imp) = &opts.importance {
        if let Some(f) = &imp.file {
            m.push(("quantize.imatrix.file".into(), Value::String(cut(f))));
        }
        if let Some(d) = imp.datasets.first() {
            m.push(("quantize.imatrix.dataset".into(), Value::String(cut(d))));
        }
        m.push((
            "quantize.imatrix.entries_count".into(),
            Value::U32(imp.per_tensor.len() as u32),
        ));
        m.push((
            "quantize.imatrix.chunks_count".into(),
            Value::U32(imp.chunk_count as u32),
        ));
    }
    m.push((
        "laquant.version".into(),
        Value::str(env!("CARGO_PKG_VERSION")),
    ));
    let policy = match outtype {
        OutType::Uniform(t) => format!("uniform {}", t.name()),
        OutType::Preset(p) => format!(
            "llama-quantize {}{}",
            p.name(),
            if opts.overrides.pure { " --pure" } else { "" }
        ),
        OutType::LaMix { .. } => "la-mix".into(),
        OutType::TargetBpw(x) => format!("target-bpw {x}"),
    };
    m.push(("laquant.policy".into(), Value::String(policy)));
    if let OutType::LaMix { f16_budget } = outtype {
        m.push(("laquant.f16_budget".into(), Value::F32(f16_budget as f32)));
    }
    if let OutType::TargetBpw(x) = outtype {
        m.push(("laquant.target_bpw".into(), Value::F32(x as f32)));
    }
    if let Some(imp) = &opts.importance {
        if !imp.languages.is_empty() {
            m.push((
                "laquant.calibration.languages".into(),
                Value::strings(imp.languages.iter().map(|l| l.0.clone())),
            ));
            let w: Vec<f32> = imp.languages.iter().map(|l| l.1 as f32).collect();
            m.push(("laquant.calibration.weights".into(), Value::f32s(&w)));
        }
    }
    m
}

fn general_metadata(ck: &Checkpoint, plan: &[TensorPlan]) -> Result<Metadata, ConvertError> {
    let dir = ck.dir.canonicalize().unwrap_or_else(|_| ck.dir.clone());
    // gguf-py's get_total_parameter_count: a stacked expert tensor counts one
    // expert's parameters, the expert count is the mean over those tensors.
    let (mut shared, mut expert, mut expert_sum, mut n_exps) = (0, 0, 0, 0);
    for t in plan {
        if t.name.contains("_exps.") && t.dims.len() >= 3 {
            let n = t.dims[2].max(1);
            expert += t.n_elements() / n;
            expert_sum += n;
            n_exps += 1;
        } else {
            shared += t.n_elements();
        }
    }
    let input = convert_py::CardInput {
        dir: &dir,
        model_name: None,
        total_params: plan.iter().map(|t| t.n_elements()).sum(),
        shared_params: shared,
        expert_params: expert,
        expert_count: expert_sum.checked_div(n_exps).unwrap_or(0),
    };
    Ok(convert_py::general_metadata(&input)?)
}

fn tokenizer_metadata(ck: &Checkpoint, opts: &ConvertOptions) -> Result<Metadata, ConvertError> {
    let t = tokenizer::TokenizerOptions {
        force_pre: opts.tokenizer_pre.clone(),
    };
    Ok(tokenizer::tokenizer_metadata(&ck.dir, &ck.config.raw, &t)?)
}

/// The default output path: `<model-name>-<TYPE>.gguf` in the current folder.
pub fn default_output(ck: &Checkpoint, outtype: OutType) -> PathBuf {
    PathBuf::from(format!("{}-{}.gguf", ck.model_name(), outtype.label()))
}

/// Output bytes per chunk: large enough that one `write` and one rayon fan-out
/// amortise, small enough that the chunks in flight stay a few megabytes.
const CHUNK_BYTES: usize = 4 << 20;
/// Output buffers in flight: one being filled, one queued, one being written.
const BUFFERS: usize = 3;
/// The written data is flushed to disk in the background every this many bytes,
/// so the final sync before the rename has little left to do.
const FLUSH_EVERY: u64 = 64 << 20;

/// Converts a checkpoint to a GGUF file.
pub fn convert(
    model: &str,
    opts: &ConvertOptions,
    progress: OnProgress,
) -> Result<ConvertReport, ConvertError> {
    convert_chunked(model, opts, CHUNK_BYTES, true, progress)
}

/// [`convert`] streaming tensors in chunks of about `chunk_bytes` output bytes;
/// `quantize_once`: the calibrated policies keep the packed rows they scored
/// ([`spill`]) and the writer copies them (`false`: quantize again, the
/// reference the tests compare with).
fn convert_chunked(
    model: &str,
    opts: &ConvertOptions,
    chunk_bytes: usize,
    quantize_once: bool,
    progress: OnProgress,
) -> Result<ConvertReport, ConvertError> {
    let t0 = Instant::now();
    let ck = Checkpoint::open(model)?;
    let t_open = t0.elapsed().as_secs_f64();
    let target = opts
        .output
        .clone()
        .unwrap_or_else(|| default_output(&ck, opts.outtype));
    let calibrated = opts.outtype.is_calibrated();
    let mut spill = if quantize_once && calibrated {
        // Beside the output: the same disk, which must hold the output anyway.
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // Without a temporary file the tensors are quantized again, nothing worse.
        Spill::new_in(&dir).ok()
    } else {
        None
    };
    let (plan, sensitivity) = plan_keeping(&ck, opts, spill.as_mut(), progress)?;
    let t_plan = t0.elapsed().as_secs_f64();
    let quantized_once_bytes = spill.as_ref().map_or(0, |s| {
        plan.iter()
            .filter(|t| s.get(&t.name).is_some_and(|k| k.ty == t.ty))
            .map(|t| t.bytes)
            .sum()
    });
    let n_params: u64 = plan.iter().map(|t| t.n_elements()).sum();
    let metadata = build_metadata(&ck, opts.outtype, opts, &plan)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| ConvertError::Io { path, error }
    };
    let mut out = AtomicFile::create(&target, opts.force).map_err(io(&target))?;
    let specs: Vec<TensorSpec> = plan.iter().map(|t| t.spec()).collect();
    let total_bytes: u64 = plan.iter().map(|t| t.bytes).sum();
    {
        // A second handle on the temporary file, to flush it to disk while writing.
        let flusher = out.file().try_clone().ok();
        let sink = BufWriter::with_capacity(1 << 20, out.file());
        // Write errors name the target (the temporary file is removed on failure).
        let w = GgufWriter::new(sink, &metadata, specs).map_err(io(&target))?;
        ck.shards.advise_sequential();
        let cx = StreamCx {
            ck: &ck,
            opts,
            chunk_bytes,
            progress,
            total_bytes,
            spill: spill.as_ref(),
        };
        stream_tensors(&cx, &plan, w, flusher, &target)?;
    }
    out.commit().map_err(io(&target))?;
    let bits = if n_params > 0 {
        total_bytes as f64 * 8.0 / n_params as f64
    } else {
        0.0
    };
    let seconds = t0.elapsed().as_secs_f64();
    let calibration = opts.importance.as_ref().map(|i| i.summary());
    let calib_seconds = calibration.as_ref().and_then(|c| c.seconds);
    Ok(ConvertReport {
        output: target,
        outtype: opts.outtype.label(),
        sizes: sizes_by_type(&plan),
        tensors: plan,
        bytes: total_bytes,
        n_params,
        bits_per_weight: bits,
        seconds,
        quantized_once_bytes,
        timings: Timings {
            calibration: calib_seconds,
            open: t_open,
            plan: t_plan - t_open,
            write: seconds - t_plan,
            total: seconds + calib_seconds.unwrap_or(0.0),
        },
        calibration,
        sensitivity,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// What every tensor of one conversion shares.
#[derive(Clone, Copy)]
struct StreamCx<'a> {
    ck: &'a Checkpoint,
    opts: &'a ConvertOptions,
    /// Output bytes per chunk (about).
    chunk_bytes: usize,
    progress: OnProgress<'a>,
    /// Tensor bytes of the whole file (for progress).
    total_bytes: u64,
    /// Tensors packed while planning, copied instead of quantized again.
    spill: Option<&'a Spill>,
}

/// What the converting side sends the writer thread, in file order.
enum Chunk {
    Begin(String),
    /// A buffer and how many of its bytes to write; the buffer comes back for reuse.
    Data(Vec<u8>, usize),
    End,
}

/// The converting side's end of the writer thread: a bounded queue of chunks and
/// the buffers that come back once written, so at most [`BUFFERS`] exist.
struct Sender<'a> {
    tx: mpsc::SyncSender<Chunk>,
    back: &'a mpsc::Receiver<Vec<u8>>,
    made: usize,
}

/// The writer thread has stopped (its own error says why).
struct WriterGone;

impl Sender<'_> {
    fn send(&self, c: Chunk) -> Result<(), WriterGone> {
        self.tx.send(c).map_err(|_| WriterGone)
    }

    /// A buffer of at least `len` bytes (contents unspecified).
    fn buffer(&mut self, len: usize) -> Result<Vec<u8>, WriterGone> {
        let mut b = match self.back.try_recv() {
            Ok(b) => b,
            Err(_) if self.made < BUFFERS => {
                self.made += 1;
                Vec::new()
            }
            Err(_) => self.back.recv().map_err(|_| WriterGone)?,
        };
        if b.len() < len {
            b.resize(len, 0);
        }
        Ok(b)
    }
}

/// Converts every planned tensor in parallel chunks on the rayon pool while a
/// writer thread writes the previous chunk, so computing and writing overlap; a
/// third thread flushes what was written to disk (`fdatasync` on `flusher`) as
/// the file grows, so that disk writes overlap too.
fn stream_tensors<W: Write + Send>(
    cx: &StreamCx,
    plan: &[TensorPlan],
    mut w: GgufWriter<W>,
    flusher: Option<std::fs::File>,
    target: &Path,
) -> Result<(), ConvertError> {
    let io = |error| ConvertError::Io {
        path: target.to_path_buf(),
        error,
    };
    let (tx, rx) = mpsc::sync_channel::<Chunk>(1);
    let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
    let (flush_tx, flush_rx) = mpsc::sync_channel::<()>(1);
    std::thread::scope(|s| {
        if let Some(f) = flusher {
            // Errors here are not lost: the sync before the rename reports them.
            s.spawn(move || flush_rx.iter().for_each(|()| drop(f.sync_data())));
        }
        let writer = s.spawn(move || -> std::io::Result<()> {
            let mut unflushed = 0u64;
            for c in rx {
                match c {
                    Chunk::Begin(name) => w.begin_tensor(&name)?,
                    Chunk::Data(b, n) => {
                        w.write_chunk(&b[..n])?;
                        let _ = back_tx.send(b);
                        unflushed += n as u64;
                        // At most one flush pending; a full queue means one is running.
                        if unflushed >= FLUSH_EVERY && flush_tx.try_send(()).is_ok() {
                            unflushed = 0;
                        }
                    }
                    Chunk::End => w.end_tensor()?,
                }
            }
            let mut sink = w.finish()?;
            sink.flush()
        });
        let mut sender = Sender {
            tx,
            back: &back_rx,
            made: 0,
        };
        let mut produced = Ok(());
        for (i, t) in plan.iter().enumerate() {
            (cx.progress)(Progress::Writing {
                index: i,
                count: plan.len(),
                tensor: &t.name,
            });
            produced = convert_tensor(cx, t, &mut sender);
            if produced.is_err() {
                break;
            }
        }
        drop(sender);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the writer thread panicked")));
        match (produced, written) {
            (Err(Some(e)), _) => Err(e),
            (_, Err(e)) => Err(io(e)),
            (Err(None), Ok(())) => Err(io(std::io::Error::other("the writer thread stopped"))),
            (Ok(()), Ok(())) => Ok(()),
        }
    })
}

impl From<WriterGone> for Option<ConvertError> {
    fn from(_: WriterGone) -> Self {
        None
    }
}

/// Sends one tensor's bytes, computed chunk by chunk: each chunk's rows are read
/// from the map, widened, permuted and packed in parallel, and its source pages
/// are dropped once packed. `Err(None)`: the writer stopped (it reports why).
fn convert_tensor(
    cx: &StreamCx,
    t: &TensorPlan,
    out: &mut Sender,
) -> Result<(), Option<ConvertError>> {
    let StreamCx { ck, spill, .. } = *cx;
    out.send(Chunk::Begin(t.name.clone()))?;
    if !t.experts.is_empty() {
        // A mixture's stacked experts: each expert's rows in turn, so no more
        // than one chunk of the 3-D tensor is ever in memory.
        let per = (t.n_elements() as usize) / t.dims[0].max(1) as usize / t.experts.len();
        for (x, hf) in t.experts.iter().enumerate() {
            convert_source(cx, t, hf, x, per, out)?;
        }
        return Ok(out.send(Chunk::End)?);
    }
    let Some(hf) = &t.hf_name else {
        // Generated tensor.
        let f = (ck.config.generated_tensors().into_iter())
            .find(|g| g.0 == t.name)
            .map(|g| g.2)
            .unwrap_or_default();
        let mut bytes = out.buffer(f.len() * 4)?;
        quant::quantize_rows(GgmlType::F32, &f, f.len(), None, &mut bytes[..f.len() * 4])
            .map_err(|e| ConvertError::Plan(format!("tensor {}: {e}", t.name)))?;
        out.send(Chunk::Data(bytes, f.len() * 4))?;
        (cx.progress)(Progress::Wrote {
            bytes: t.bytes,
            total: cx.total_bytes,
        });
        return Ok(out.send(Chunk::End)?);
    };
    let rows = (t.n_elements() as usize) / (t.dims[0] as usize).max(1);
    let e = ck.shards.entry(hf).expect("planned tensors exist");
    if t.dims.len() == 1 && t.transform != Transform::None {
        // A bias whose elements move (a permuted or fused QKV's): widened
        // whole, moved, then packed.
        let data = ck.tensor_f32(hf).map_err(|err| ConvertError::Tensor {
            path: ck.shards.shard_path(e).to_path_buf(),
            what: err.to_string(),
        })?;
        if let Some(i) = data
            .iter()
            .position(|v| !v.is_finite())
            .filter(|_| !cx.opts.allow_nonfinite)
        {
            return Err(Some(ConvertError::Tensor {
                path: ck.shards.shard_path(e).to_path_buf(),
                what: format!(
                    "tensor {hf}: value {} at element {i} is not finite; pass --allow-nonfinite to convert anyway",
                    data[i]
                ),
            }));
        }
        let data = arch::apply_transform(t.transform, &data, data.len(), 1);
        let n = t.ty.row_bytes(data.len() as u64).unwrap_or(0) as usize;
        let mut bytes = out.buffer(n)?;
        quant::quantize_rows(t.ty, &data, data.len(), None, &mut bytes[..n])
            .map_err(|e| ConvertError::Plan(format!("tensor {}: {e}", t.name)))?;
        check_written_rows(cx, t, &bytes[..n], n, 0)?;
        out.send(Chunk::Data(bytes, n))?;
        (cx.progress)(Progress::Wrote {
            bytes: t.bytes,
            total: cx.total_bytes,
        });
        return Ok(out.send(Chunk::End)?);
    }
    if t.ty == GgmlType::MXFP4 && e.mxfp4.is_some() {
        // MXFP4 in the checkpoint and in the file: its blocks moved, never requantized.
        copy_mxfp4(cx, t, hf, e, rows, out)?;
        return Ok(out.send(Chunk::End)?);
    }
    let kept = spill.and_then(|s| Some((s, s.get(&t.name)?)));
    if let Some((s, k)) = kept.filter(|(_, k)| k.ty == t.ty) {
        let (group, rows_per_chunk, rb) = chunking(cx, t, e.dtype, rows);
        return copy_kept(cx, t, s, &k, rows, rb, group, rows_per_chunk, out);
    }
    // Experts stored stacked: each expert's rows with its own imatrix slice.
    let slices = t.dims.get(2).map_or(1, |&n| n as usize).max(1);
    for x in 0..slices {
        convert_source(cx, t, hf, x, rows / slices, out)?;
    }
    Ok(out.send(Chunk::End)?)
}

/// Sends the `rows` rows of MXFP4 tensor `hf` (entry `e`, `t`'s source) as
/// ggml blocks, a chunk at a time: the stored codes and scales moved into
/// place (a scale byte 255 is an error naming the tensor).
fn copy_mxfp4(
    cx: &StreamCx,
    t: &TensorPlan,
    hf: &str,
    e: &crate::hf::safetensors::TensorEntry,
    rows: usize,
    out: &mut Sender,
) -> Result<(), Option<ConvertError>> {
    let rb = t.ty.row_bytes(t.dims[0]).unwrap_or(0) as usize;
    let rows_per_chunk = (cx.chunk_bytes / rb.max(1)).max(1);
    let mut r0 = 0;
    while r0 < rows {
        let nr = rows_per_chunk.min(rows - r0);
        let mut buf = out.buffer(nr * rb)?;
        let blocks = (cx.ck.shards.mxfp4_rows(hf, e, r0, nr)).map_err(ConvertError::Hf)?;
        buf[..nr * rb].copy_from_slice(&blocks);
        send_rows(cx, t, out, buf, nr * rb, rb, r0)?;
        r0 += nr;
    }
    Ok(())
}

/// Rows per permutation group, rows per chunk and packed row bytes of `t`
/// read from `dtype`: whole groups (heads) per chunk for permuted tensors, so a
/// chunk's source rows are exactly its own rows' range.
fn chunking(
    cx: &StreamCx,
    t: &TensorPlan,
    dtype: safetensors::Dtype,
    rows: usize,
) -> (usize, usize, usize) {
    let width = t.dims[0] as usize;
    let srb = width * crate::hf::safetensors::dtype_size(dtype);
    let rb = t.ty.row_bytes(width as u64).unwrap_or(0) as usize;
    let group = match t.transform {
        Transform::PermuteHeads { n_head } => rows / n_head.max(1),
        // Rows move across the whole tensor: one chunk.
        Transform::QkvPerHead { .. } => rows,
        Transform::None | Transform::AddOne => 1,
    }
    .max(1);
    let rows_per_chunk = ((cx.chunk_bytes / rb.max(srb).max(1)) / group).max(1) * group;
    (group, rows_per_chunk, rb)
}

/// Sends the rows of HF tensor `hf`, `rows` of them, as rows
/// `slice * rows ..` of `t` (`slice`: the expert of a stacked tensor, whose
/// imatrix is its own slice of the tensor's; 0 otherwise). A tensor stored
/// stacked (gpt-oss's experts) is its own source: expert `slice`'s rows start
/// at `slice * rows` of it.
fn convert_source(
    cx: &StreamCx,
    t: &TensorPlan,
    hf: &str,
    slice: usize,
    rows: usize,
    out: &mut Sender,
) -> Result<(), Option<ConvertError>> {
    let StreamCx { ck, opts, .. } = *cx;
    let e = ck.shards.entry(hf).expect("planned tensors exist");
    let width = t.dims[0] as usize;
    let slices = t.dims.get(2).map_or(1, |&n| n as usize);
    let first = if t.experts.is_empty() {
        slice * rows
    } else {
        0
    };
    // Borrowed from the map, or a Conv1D weight transposed or a view gathered (its own buffer).
    let stored = ck
        .tensor_bytes(hf)
        .map_err(|err| Some(ConvertError::from(err)))?;
    // A transform of the values (unit-offset norms, small vectors): the tensor
    // computed whole, in f32, before the rows are packed.
    let changed =
        (!t.transform.moves_rows_only()).then(|| transformed_values(t.transform, e.dtype, &stored));
    // Rows read through the map are prefetched and released chunk by chunk.
    let mapped = changed.is_none() && matches!(stored, std::borrow::Cow::Borrowed(_));
    let job = RowJob {
        dtype: if changed.is_some() {
            safetensors::Dtype::F32
        } else {
            e.dtype
        },
        ty: t.ty,
        width,
        imatrix: opts
            .importance
            .as_ref()
            .and_then(|i| i.get(&t.name, width * slices))
            .map(|v| &v[slice * width..(slice + 1) * width]),
        check_finite: !opts.allow_nonfinite,
    };
    let srb = job.src_row_bytes();
    let (group, rows_per_chunk, rb) = chunking(cx, t, job.dtype, rows);
    let raw: &[u8] = changed.as_deref().unwrap_or(&stored);
    let raw = &raw[first * srb..(first + rows) * srb];
    let at = |r: std::ops::Range<usize>| (r.start + first * srb)..(r.end + first * srb);
    let mut r0 = 0;
    while r0 < rows {
        let nr = rows_per_chunk.min(rows - r0);
        let next = at((r0 + nr) * srb..((r0 + nr + rows_per_chunk).min(rows)) * srb);
        if mapped {
            ck.shards.prefetch(e, next);
        }
        let mut buf = out.buffer(nr * rb)?;
        let chunk = RowChunk {
            job: &job,
            transform: t.transform,
            raw,
            rows,
            group,
            r0,
        };
        if let Some((row, err)) = chunk.convert(&mut buf[..nr * rb], rb) {
            return Err(Some(row_error(ck, e, t, hf, first + row, err)));
        }
        if mapped {
            ck.shards.release_range(e, at(r0 * srb..(r0 + nr) * srb));
        }
        send_rows(cx, t, out, buf, nr * rb, rb, slice * rows + r0)?;
        r0 += nr;
    }
    ck.shards.release(e);
    Ok(())
}

/// A chunk of a tensor's rows to convert: rows `r0..` of `rows`, read from `raw`
/// through `transform` (`group`: rows per permutation group).
struct RowChunk<'a> {
    job: &'a RowJob<'a>,
    transform: Transform,
    raw: &'a [u8],
    rows: usize,
    group: usize,
    r0: usize,
}

impl RowChunk<'_> {
    /// Packs the chunk's rows into `buf` (`rb` bytes each) in parallel; the first
    /// source row that cannot be converted, and why.
    fn convert(&self, buf: &mut [u8], rb: usize) -> Option<(usize, rows::RowError)> {
        let (job, raw, rows, group, r0) = (self.job, self.raw, self.rows, self.group, self.r0);
        let nr = buf.len() / rb.max(1);
        let width = job.width;
        let srb = job.src_row_bytes();
        let threads = rayon::current_num_threads();
        // Tasks of a few rows each, several per thread, each at least ~64K values.
        let task_rows = nr
            .div_ceil(4 * threads)
            .max((1 << 16) / width.max(1))
            .clamp(1, nr);
        buf.par_chunks_mut(task_rows * rb)
            .enumerate()
            .map_init(Vec::new, |scratch, (k, d)| {
                for (j, drow) in d.chunks_exact_mut(rb).enumerate() {
                    let r = r0 + k * task_rows + j;
                    let s = match self.transform {
                        Transform::PermuteHeads { .. } => rows::permuted_source_row(r, group),
                        Transform::QkvPerHead { n_head } => {
                            arch::qkv_per_head_source_row(r, rows, n_head)
                        }
                        Transform::None | Transform::AddOne => r,
                    };
                    if let Err(nf) = job.convert_row(&raw[s * srb..(s + 1) * srb], drow, scratch) {
                        return Some((s, nf));
                    }
                }
                None
            })
            .filter_map(|x| x)
            .min_by_key(|(s, _)| *s)
    }
}

/// The error for row `row` of HF tensor `hf` (entry `e`), which could not be packed into `t`.
fn row_error(
    ck: &Checkpoint,
    e: &crate::hf::safetensors::TensorEntry,
    t: &TensorPlan,
    hf: &str,
    row: usize,
    err: rows::RowError,
) -> ConvertError {
    let nf = match err {
        rows::RowError::NonFinite(nf) => nf,
        rows::RowError::Quant(e) => {
            return ConvertError::Plan(format!(
                "tensor {}: row {row} of {hf} cannot be packed as {}: {e}",
                t.name, t.ty
            ))
        }
        rows::RowError::Dtype(d) => {
            return ConvertError::Tensor {
                path: ck.shards.shard_path(e).to_path_buf(),
                what: format!("tensor {hf}: dtype {d:?} cannot be read"),
            }
        }
    };
    let what = if nf.value.is_finite() {
        format!(
            "tensor {hf}: value {:e} at row {row}, column {} is too large to quantize to {} \
             (from {:e} ggml's sums of squares overflow); use --outtype bf16 or f32",
            nf.value,
            nf.col,
            t.ty,
            rows::QUANT_MAX_ABS
        )
    } else {
        format!(
            "tensor {hf}: value {} at row {row}, column {} is not finite; pass --allow-nonfinite to convert anyway",
            nf.value, nf.col
        )
    };
    ConvertError::Tensor {
        path: ck.shards.shard_path(e).to_path_buf(),
        what,
    }
}

/// The little-endian f32 bytes of a checkpoint tensor (`raw`, stored as
/// `dtype`) after a value transform, as `convert_hf_to_gguf.py` computes it:
/// torch keeps f16 tensors in f16 (`w + 1` rounded to f16), and widens bf16
/// ones to f32 first.
fn transformed_values(t: Transform, dtype: safetensors::Dtype, raw: &[u8]) -> Vec<u8> {
    let n = raw.len() / crate::hf::safetensors::dtype_size(dtype).max(1);
    let mut v = vec![0f32; n];
    let widened = crate::hf::safetensors::widen(dtype, raw, &mut v);
    debug_assert!(widened, "dtypes are checked when planning");
    let mut v = arch::apply_transform(t, &v, n, 1);
    if dtype == safetensors::Dtype::F16 {
        for x in v.iter_mut() {
            *x = quant::float::f16_bits_to_f32(quant::float::f32_to_f16_bits(*x));
        }
    }
    let mut out = vec![0u8; n * 4];
    quant::float::f32_to_bytes(&v, &mut out);
    out
}

/// [`convert_tensor`] for a tensor packed while planning: its rows are read back
/// from the spill file (in the checkpoint's row order) and permuted as the
/// converter permutes Q/K, chunk by chunk.
#[allow(clippy::too_many_arguments)]
fn copy_kept(
    cx: &StreamCx,
    t: &TensorPlan,
    s: &Spill,
    k: &spill::Kept,
    rows: usize,
    rb: usize,
    group: usize,
    rows_per_chunk: usize,
    out: &mut Sender,
) -> Result<(), Option<ConvertError>> {
    let io = |source: std::io::Error| {
        Some(ConvertError::SpillRead {
            tensor: t.name.clone(),
            source,
        })
    };
    let mut src = Vec::new();
    let mut r0 = 0;
    while r0 < rows {
        let nr = rows_per_chunk.min(rows - r0);
        let mut buf = out.buffer(nr * rb)?;
        let from = (r0 * rb) as u64;
        match t.transform {
            Transform::None | Transform::AddOne => {
                s.read(k, from, &mut buf[..nr * rb]).map_err(io)?
            }
            Transform::PermuteHeads { .. } | Transform::QkvPerHead { .. } => {
                // A chunk is whole heads (the whole tensor for a fused QKV), so
                // its source rows are its own range.
                src.resize(nr * rb, 0);
                s.read(k, from, &mut src).map_err(io)?;
                for (j, d) in buf[..nr * rb].chunks_exact_mut(rb).enumerate() {
                    let sr = match t.transform {
                        Transform::QkvPerHead { n_head } => {
                            arch::qkv_per_head_source_row(r0 + j, rows, n_head)
                        }
                        _ => rows::permuted_source_row(r0 + j, group),
                    } - r0;
                    d.copy_from_slice(&src[sr * rb..(sr + 1) * rb]);
                }
            }
        }
        send_rows(cx, t, out, buf, nr * rb, rb, r0)?;
        r0 += nr;
    }
    Ok(out.send(Chunk::End)?)
}

/// Sends the first `len` bytes of `buf`, packed rows `r0..` of `t` of `rb`
/// bytes each, to the writer once [`check_written_rows`] passes them, and
/// reports them written.
fn send_rows(
    cx: &StreamCx,
    t: &TensorPlan,
    out: &mut Sender,
    buf: Vec<u8>,
    len: usize,
    rb: usize,
    r0: usize,
) -> Result<(), Option<ConvertError>> {
    check_written_rows(cx, t, &buf[..len], rb, r0)?;
    out.send(Chunk::Data(buf, len))?;
    (cx.progress)(Progress::Wrote {
        bytes: len as u64,
        total: cx.total_bytes,
    });
    Ok(())
}

/// Refuses packed rows that llama.cpp would refuse (`ggml_validate_row_data`:
/// an infinite or NaN value or block scale), which finite weights give when they
/// overflow the output type. `bytes` holds rows `r0..` of `t`; with
/// `--allow-nonfinite` non-finite values are the user's choice and pass.
fn check_written_rows(
    cx: &StreamCx,
    t: &TensorPlan,
    bytes: &[u8],
    rb: usize,
    r0: usize,
) -> Result<(), Option<ConvertError>> {
    if cx.opts.allow_nonfinite {
        return Ok(());
    }
    let Some(row) = quant::validate::first_invalid_row(t.ty, bytes, rb) else {
        return Ok(());
    };
    let with_imatrix = cx
        .opts
        .importance
        .as_ref()
        .is_some_and(|i| i.get(&t.name, t.dims[0] as usize).is_some());
    Err(Some(ConvertError::Plan(format!(
        "tensor {} ({}): row {} packs to infinite or NaN {} values, which llama.cpp refuses \
         (ggml_validate_row_data); {} {}'s range: use --outtype bf16 or f32, \
         or --tensor-type {}=bf16 for this tensor",
        t.name,
        t.hf_name.as_deref().unwrap_or("generated"),
        r0 + row,
        t.ty,
        if with_imatrix {
            "its weights, or the imatrix's values for it, exceed"
        } else {
            "its weights exceed"
        },
        t.ty,
        t.name,
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::reader::GgufFile;

    fn fixture(name: &str) -> String {
        format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    /// Streaming in many small chunks (parallel rows, permuted heads split across
    /// chunks as whole heads, direct copies) gives every tensor exactly the bytes
    /// of the whole-tensor path: widen all, permute all, pack all.
    #[test]
    fn streamed_chunks_equal_the_whole_tensor_reference() {
        let d = tempfile::tempdir().unwrap();
        let types = ["f32", "f16", "bf16", "q8_0", "q4_k_m"];
        for fx in [
            "llama-bpe",
            "tinyllama-spm",
            "mistral-spm",
            "qwen3-sharded",
            "llama3-rope",
            "mixtral",
            "qwen2moe",
            // Conv1D weights, transposed as they are read.
            "gpt2",
        ] {
            let ck = Checkpoint::open(&fixture(fx)).unwrap();
            for ty in types {
                let opts = ConvertOptions {
                    outtype: OutType::parse(ty, false).unwrap(),
                    ..Default::default()
                };
                let small = d.path().join(format!("{fx}-{ty}-small.gguf"));
                let whole = d.path().join(format!("{fx}-{ty}-whole.gguf"));
                let o = |p: &Path| ConvertOptions {
                    output: Some(p.to_path_buf()),
                    ..opts.clone()
                };
                let r = convert_chunked(&fixture(fx), &o(&small), 3000, true, &crate::job::silent)
                    .unwrap();
                convert_chunked(
                    &fixture(fx),
                    &o(&whole),
                    usize::MAX / 2,
                    true,
                    &crate::job::silent,
                )
                .unwrap();
                assert_eq!(
                    std::fs::read(&small).unwrap(),
                    std::fs::read(&whole).unwrap(),
                    "{fx} {ty}: chunking changed the file"
                );
                let g = GgufFile::open(&small).unwrap();
                let mut checked = 0;
                for t in &r.tensors {
                    // A stacked tensor is its experts' rows, expert after expert.
                    let data: Vec<f32> = match &t.hf_name {
                        Some(hf) => ck.tensor_f32(hf).unwrap(),
                        None if !t.experts.is_empty() => {
                            assert_eq!(t.dims.len(), 3, "{}", t.name);
                            assert_eq!(t.dims[2] as usize, t.experts.len());
                            t.experts
                                .iter()
                                .flat_map(|e| ck.tensor_f32(e).unwrap())
                                .collect()
                        }
                        None => continue,
                    };
                    let width = t.dims[0] as usize;
                    let rows = data.len() / width;
                    let data = arch::apply_transform(t.transform, &data, rows, width);
                    let want = quant::quantize_tensor(t.ty, &data, width, None).unwrap();
                    let info = g.tensor(&t.name).unwrap();
                    assert_eq!(g.tensor_data(info), &want[..], "{fx} {ty} {}", t.name);
                    checked += 1;
                }
                assert!(checked > 5, "{fx} {ty}: {checked} tensors checked");
            }
        }
    }

    /// la-mix and --target-bpw write the rows they packed while scoring: the
    /// files equal those of quantizing every tensor again, byte for byte, with
    /// small chunks (permuted Q/K heads across chunks) and whole tensors; tensors
    /// scored with another importance than they are written with (no statistics
    /// of their own: token_embd here) are quantized again. A mixture's
    /// stacked experts too, each expert with its own importance slice.
    #[test]
    fn quantize_once_writes_the_bytes_of_quantizing_twice() {
        let d = tempfile::tempdir().unwrap();
        for fx in ["llama-bpe", "tinyllama-spm", "qwen2moe"] {
            let ck = Checkpoint::open(&fixture(fx)).unwrap();
            let shape = plan(
                &ck,
                &ConvertOptions {
                    outtype: OutType::Uniform(GgmlType::F16),
                    ..Default::default()
                },
                &crate::job::silent,
            )
            .unwrap();
            let mut imp = Importance::default();
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            for t in &shape {
                let quantizable = t.dims.len() >= 2 && t.dims.last() != Some(&1);
                if quantizable && t.name != "token_embd.weight" {
                    let v = (0..t.dims[0] * t.dims.get(2).copied().unwrap_or(1))
                        .map(|_| {
                            seed ^= seed << 13;
                            seed ^= seed >> 7;
                            seed ^= seed << 17;
                            0.01 + (seed >> 40) as f32 / (1u64 << 24) as f32
                        })
                        .collect();
                    imp.per_tensor.insert(t.name.clone(), v);
                }
            }
            for outtype in [OutType::LaMix { f16_budget: 0.05 }, OutType::TargetBpw(5.0)] {
                for chunk in [3000, usize::MAX / 2] {
                    let path = |tag: &str| {
                        d.path()
                            .join(format!("{fx}-{}-{chunk}-{tag}.gguf", outtype.label()))
                    };
                    let o = |p: PathBuf| ConvertOptions {
                        outtype,
                        output: Some(p),
                        importance: Some(imp.clone()),
                        ..Default::default()
                    };
                    let once = convert_chunked(
                        &fixture(fx),
                        &o(path("once")),
                        chunk,
                        true,
                        &crate::job::silent,
                    )
                    .unwrap();
                    let twice = convert_chunked(
                        &fixture(fx),
                        &o(path("twice")),
                        chunk,
                        false,
                        &crate::job::silent,
                    )
                    .unwrap();
                    assert_eq!(
                        std::fs::read(path("once")).unwrap(),
                        std::fs::read(path("twice")).unwrap(),
                        "{fx} {} chunk {chunk}: quantizing once changed the file",
                        outtype.label()
                    );
                    assert_eq!(twice.quantized_once_bytes, 0);
                    #[cfg(target_os = "linux")]
                    assert!(
                        // In bytes (a test process holds several MB at least).
                        once.peak_rss_bytes
                            .is_some_and(|b| b > (4 << 20) && b > once.bytes && b % 1024 == 0),
                        "peak RSS {:?} for a {}-byte file",
                        once.peak_rss_bytes,
                        once.bytes
                    );
                    let embd = once
                        .tensors
                        .iter()
                        .find(|t| t.name == "token_embd.weight")
                        .unwrap();
                    assert!(
                        // --target-bpw may choose no base type at all (its policy's business).
                        (once.quantized_once_bytes > 0 || matches!(outtype, OutType::TargetBpw(_)))
                            && once.quantized_once_bytes <= once.bytes - embd.bytes,
                        "{fx} {}: {} of {} bytes reused",
                        outtype.label(),
                        once.quantized_once_bytes,
                        once.bytes
                    );
                    if matches!(outtype, OutType::LaMix { .. }) && fx == "llama-bpe" {
                        // Every Q8_0/Q4_K tensor with statistics, the permuted attn_q/attn_k included.
                        let want: u64 = once
                            .tensors
                            .iter()
                            .filter(|t| matches!(t.ty, GgmlType::Q8_0 | GgmlType::Q4K))
                            .filter(|t| !t.reason.contains("upgraded by the F16 budget"))
                            .filter(|t| t.name != "token_embd.weight")
                            .map(|t| t.bytes)
                            .sum();
                        assert_eq!(once.quantized_once_bytes, want);
                        assert!(once
                            .tensors
                            .iter()
                            .any(|t| t.name.ends_with("attn_q.weight") && t.ty == GgmlType::Q8_0));
                    }
                }
            }
        }
    }

    #[test]
    fn target_bpw_holds_for_the_whole_file_and_plans_carry_scores() {
        let ck = Checkpoint::open(&fixture("llama-bpe")).unwrap();
        let mut last = 0.0;
        // Fewer bits, never less error.
        for x in [9.0, 6.0, 4.5, 3.5] {
            let opts = ConvertOptions {
                outtype: OutType::TargetBpw(x),
                ..Default::default()
            };
            let p = plan(&ck, &opts, &crate::job::silent).unwrap();
            let params: u64 = p.iter().map(|t| t.n_elements()).sum();
            let bits = 8.0 * p.iter().map(|t| t.bytes).sum::<u64>() as f64;
            assert!(
                bits / params as f64 <= x + 1e-9,
                "{x}: {}",
                bits / params as f64
            );
            assert!(bits / params as f64 > x - 1.0, "{x}: budget left unused");
            let err: f64 = p
                .iter()
                .filter_map(|t| t.score.as_ref())
                .map(|s| s.error)
                .sum();
            assert!(
                err >= last,
                "{x}: error {err} fell with fewer bits (was {last})"
            );
            last = err;
            for t in &p {
                let quantizable = presets::allows_quantization(&t.name, t.dims.len());
                assert_eq!(t.score.is_some(), quantizable, "{}", t.name);
                if let Some(s) = &t.score {
                    assert!(!s.worst_rows.is_empty() && s.base_error > 0.0, "{}", t.name);
                }
            }
        }
    }

    /// Every model fixture: the folders of `fixtures/` holding a checkpoint.
    fn model_fixtures() -> Vec<String> {
        let dir = fixture("");
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let p = e.ok()?.path();
                let weights = std::fs::read_dir(&p).ok()?.any(|f| {
                    f.is_ok_and(|f| f.path().extension().is_some_and(|x| x == "safetensors"))
                });
                (weights && p.join("config.json").is_file())
                    .then(|| p.file_name().unwrap().to_string_lossy().into_owned())
            })
            .collect();
        // The calibrated policies need the forward pass, which encoders
        // lack; the mixtures (experts stacked by the converter or in the
        // checkpoint) have their own test (their importance is per expert).
        v.retain(|f| {
            Checkpoint::open(&fixture(f)).is_ok_and(|ck| {
                ck.config.n_expert.is_none()
                    && ck.config.arch.block.attention.kind
                        != arch::AttentionKind::BidirectionalSeparateQkv
            })
        });
        v.sort();
        assert!(v.len() >= 6, "{v:?}");
        v
    }

    /// A fixed, uneven column importance for every quantizable weight of a model
    /// (no calibration run: the invariants below hold for any importance).
    fn fixed_importance(ck: &Checkpoint) -> Importance {
        let f16 = plan(ck, &ConvertOptions::default(), &crate::job::silent).unwrap();
        let per_tensor = f16
            .iter()
            .filter(|t| presets::allows_quantization(&t.name, t.dims.len()))
            .enumerate()
            .map(|(k, t)| {
                let w = t.dims[0] as usize;
                let v = (0..w)
                    .map(|j| 0.05 + ((j * 7919 + k * 104729) % 97) as f32 / 10.0)
                    .collect();
                (t.name.clone(), v)
            })
            .collect();
        Importance {
            per_tensor,
            ..Default::default()
        }
    }

    /// The scores of every candidate type, and a plan's total error under them.
    fn scores(ck: &Checkpoint, imp: &Importance) -> (Vec<TensorPlan>, Scores) {
        scores_for(ck, imp, OutType::TargetBpw(8.0))
    }

    fn scores_for(
        ck: &Checkpoint,
        imp: &Importance,
        outtype: OutType,
    ) -> (Vec<TensorPlan>, Scores) {
        let opts = ConvertOptions {
            outtype,
            importance: Some(imp.clone()),
            ..Default::default()
        };
        let mut out = plan(ck, &opts, &crate::job::silent).unwrap();
        let s = score_tensors(ck, &opts, &mut out, None, &crate::job::silent).unwrap();
        (out, s)
    }

    fn bpw(p: &[TensorPlan]) -> f64 {
        let bits: f64 = p
            .iter()
            .map(|t| t.ty.bits_per_weight() * t.n_elements() as f64)
            .sum();
        bits / p.iter().map(|t| t.n_elements() as f64).sum::<f64>()
    }

    /// Every llama-quantize preset's plan is a point of the problem `--target-bpw`
    /// solves (its types are candidates), so `--target-bpw` at the preset's bits per
    /// weight finds no more error than the preset, under the same importance.
    #[test]
    fn target_bpw_at_a_presets_size_beats_the_preset() {
        for fx in &model_fixtures() {
            let ck = Checkpoint::open(&fixture(fx)).unwrap();
            let imp = fixed_importance(&ck);
            let (out, s) = scores(&ck, &imp);
            for ft in FileType::all() {
                let opts = ConvertOptions {
                    outtype: OutType::Preset(Preset::of(ft)),
                    importance: Some(imp.clone()),
                    ..Default::default()
                };
                let p = match plan(&ck, &opts, &crate::job::silent) {
                    Ok(p) => p,
                    // Q1_0's 128-blocks have no fallback: llama-quantize stops on such widths.
                    Err(e)
                        if ft == FileType::MostlyQ1_0 && e.to_string().contains("multiple of") =>
                    {
                        continue
                    }
                    Err(e) => panic!("{fx} {}: {e}", ft.name()),
                };
                let x = bpw(&p);
                let mut preset_err = 0.0;
                for (&i, sc) in s.idx.iter().zip(&s.scored) {
                    let t = &p[i];
                    assert_eq!(t.name, out[i].name);
                    let e = sc.options.iter().find(|o| o.0 == t.ty).unwrap_or_else(|| {
                        panic!("{fx} {}: {} of {} is no candidate", ft.name(), t.ty, t.name)
                    });
                    preset_err += e.1;
                }
                let tp = lamix::target_bpw(&s.scored, target_for_scored(&out, &s.idx, x));
                let err: f64 = tp.choices.iter().map(|c| c.error).sum();
                assert!(
                    err <= preset_err * (1.0 + 1e-12),
                    "{fx}: --target-bpw {x:.4} has error {err:.6e}, the preset {} {preset_err:.6e}",
                    ft.name()
                );
                let mut chosen = out.clone();
                for (&i, c) in s.idx.iter().zip(&tp.choices) {
                    chosen[i].ty = c.ty;
                }
                assert!(bpw(&chosen) <= x * (1.0 + 1e-12), "{fx} {}", ft.name());
            }
        }
    }

    /// Raising X never raises the error; the plan lands within 0.5% below X unless
    /// no tensor's type of less error fits in what is left, and then it says so.
    #[test]
    fn target_bpw_error_falls_as_bits_rise_and_the_budget_is_spent() {
        for fx in &model_fixtures() {
            let ck = Checkpoint::open(&fixture(fx)).unwrap();
            let (out, s) = scores(&ck, &fixed_importance(&ck));
            let mut last = f64::INFINITY;
            for step in 0..59 {
                let x = 2.5 + 0.25 * step as f64;
                let tp = lamix::target_bpw(&s.scored, target_for_scored(&out, &s.idx, x));
                let err: f64 = tp.choices.iter().map(|c| c.error).sum();
                assert!(err <= last * (1.0 + 1e-12), "{fx} {x}: {err} > {last}");
                last = err;
                let mut chosen = out.clone();
                for (&i, c) in s.idx.iter().zip(&tp.choices) {
                    chosen[i].ty = c.ty;
                }
                let b = bpw(&chosen);
                if b > x * (1.0 + 1e-12) {
                    // Only when even the cheapest types exceed X, and then it says so.
                    for (c, sc) in tp.choices.iter().zip(&s.scored) {
                        let cheapest = sc.options.iter().map(|o| o.0.bits_per_weight());
                        let least = cheapest.fold(f64::INFINITY, f64::min);
                        assert_eq!(c.ty.bits_per_weight(), least, "{fx} {x}: {}", c.reason);
                        assert!(
                            c.reason.contains("even the cheapest types take"),
                            "{}",
                            c.reason
                        );
                    }
                    continue;
                }
                assert!(!tp.upgrade_fits, "{fx} {x}: an upgrade fits");
                if b < 0.995 * x && b <= x {
                    assert!(
                        tp.choices[0]
                            .reason
                            .contains("no tensor's type of less error fits"),
                        "{fx} {x}: {b} bpw, {}",
                        tp.choices[0].reason
                    );
                }
            }
        }
    }

    /// la-mix spends its whole bit budget: once it stops, no tensor can move to a
    /// type of less error within what is left.
    #[test]
    fn la_mix_spends_its_budget() {
        for fx in &model_fixtures() {
            let ck = Checkpoint::open(&fixture(fx)).unwrap();
            let imp = fixed_importance(&ck);
            let (_, s) = scores_for(&ck, &imp, OutType::LaMix { f16_budget: 0.05 });
            for share in [0.01, 0.05, 0.2] {
                let plan = lamix::la_mix(&s.scored, share);
                let base_bits = |sc: &lamix::Scored| sc.options[0].0.bits_per_weight();
                let budget: f64 = share
                    * s.scored
                        .iter()
                        .map(|sc| (16.0 - base_bits(sc)).max(0.0) * sc.n_params as f64)
                        .sum::<f64>();
                let extra = |c: &lamix::Choice, sc: &lamix::Scored| {
                    (c.ty.bits_per_weight() - base_bits(sc)) * sc.n_params as f64
                };
                let spent: f64 = plan.iter().zip(&s.scored).map(|(c, sc)| extra(c, sc)).sum();
                assert!(spent <= budget, "{fx} {share}: {spent} > {budget}");
                for (c, sc) in plan.iter().zip(&s.scored) {
                    for o in &sc.options {
                        let more =
                            (o.0.bits_per_weight() - c.ty.bits_per_weight()) * sc.n_params as f64;
                        assert!(
                            !(o.1 < c.error && more > 0.0 && spent + more <= budget),
                            "{fx} {share}: {} could move from {} to {} ({} of {budget} bits spent)",
                            c.reason,
                            c.ty,
                            o.0,
                            spent
                        );
                    }
                }
            }
        }
    }

    /// IQ2_XXS needs importance: a stacked expert tensor's is one row per expert.
    #[test]
    fn importance_for_stacked_experts_counts_every_expert() {
        let t = TensorPlan {
            hf_name: None,
            experts: vec!["a".into(), "b".into(), "c".into()],
            name: "blk.0.ffn_down_exps.weight".into(),
            role: Role::FfnDown,
            layer: Some(0),
            dims: vec![256, 64, 3],
            ty: GgmlType::IQ2XXS,
            transform: Transform::None,
            bytes: 0,
            reason: String::new(),
            score: None,
        };
        let with = |n: usize| Importance {
            per_tensor: [(t.name.clone(), vec![1.0; n])].into_iter().collect(),
            ..Default::default()
        };
        assert!(needs_importance(&t, Some(&with(3 * 256))).is_ok());
        let err = needs_importance(&t, Some(&with(256)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("blk.0.ffn_down_exps.weight"), "{err}");
        assert!(needs_importance(&t, None).is_err());
        let q4 = TensorPlan {
            ty: GgmlType::Q4K,
            ..t.clone()
        };
        assert!(needs_importance(&q4, None).is_ok());
    }

    /// The estimated KLD is the sum of measured per-tensor estimates, absent when any
    /// scored tensor lacks a measurement; the warning names the largest contributor.
    #[test]
    fn a_damaging_plan_is_named_with_its_largest_contributor() {
        let t = |name: &str, ty: GgmlType, rows: u64, error: f64, alpha: Option<f64>| TensorPlan {
            hf_name: None,
            experts: Vec::new(),
            name: name.into(),
            role: Role::FfnUp,
            layer: None,
            dims: vec![256, rows],
            ty,
            transform: Transform::None,
            bytes: ty.row_bytes(256).unwrap() * rows,
            reason: String::new(),
            score: Some(TensorScore {
                error,
                base_error: error,
                gain_per_bit: 0.0,
                top_rows_share: 0.0,
                worst_rows: Vec::new(),
                alpha,
                measure: None,
                alpha_from: None,
                delta_kld: alpha.map(|a| a * error),
                delta_drift: None,
            }),
        };
        let norm = TensorPlan {
            score: None,
            dims: vec![256],
            ..t("norm", GgmlType::F32, 1, 0.0, None)
        };
        let mild = [
            t("token_embd.weight", GgmlType::Q4K, 300, 0.2, Some(1.0)),
            t("blk.0.ffn_up.weight", GgmlType::Q4K, 100, 0.1, Some(2.0)),
            norm.clone(),
        ];
        assert!((estimated_kld(&mild).unwrap() - 0.3).abs() < 1e-12);
        assert_eq!(damage_warning(&mild), None);
        let harsh = [
            t("token_embd.weight", GgmlType::IQ1S, 300, 7.5, Some(1.0)),
            t("blk.0.ffn_up.weight", GgmlType::IQ2XXS, 100, 0.5, Some(2.0)),
            norm,
        ];
        let w = damage_warning(&harsh).unwrap();
        assert!(w.contains("8.000 nats"), "{w}");
        assert!(
            w.contains("token_embd.weight alone, IQ1_S and 75% of the weights"),
            "{w}"
        );
        // The raw proxy (no measurement on some tensor): no estimate, no warning.
        let mut proxy = harsh.clone();
        proxy[1].score.as_mut().unwrap().alpha = None;
        assert_eq!(estimated_kld(&proxy), None);
        assert_eq!(damage_warning(&proxy), None);
        // An encoder's plan is measured as embedding drift: no KLD, no KLD warning.
        let mut drift = harsh.clone();
        for t in drift.iter_mut().filter_map(|t| t.score.as_mut()) {
            t.measure = Some(sensitivity::Quantity::EmbeddingDrift);
        }
        assert_eq!(estimated_kld(&drift), None);
        assert_eq!(damage_warning(&drift), None);
        assert!((estimated_drift(&drift).unwrap() - 8.0).abs() < 1e-12);
        assert_eq!(estimated_drift(&harsh), None);
    }

    /// A calibrated mix is labelled by the type holding most of its weight bytes
    /// (llama.cpp names Q4_K files "Q4_K - Medium"), never Q4_K_M by default.
    #[test]
    fn a_mix_is_labelled_by_the_type_holding_most_bytes() {
        let t = |ty: GgmlType, n: u64| TensorPlan {
            hf_name: None,
            experts: Vec::new(),
            name: format!("t{n}"),
            role: Role::FfnUp,
            layer: None,
            dims: vec![256, n],
            ty,
            transform: Transform::None,
            bytes: ty.row_bytes(256).unwrap() * n,
            reason: String::new(),
            score: None,
        };
        let mix = OutType::TargetBpw(6.0);
        // Q4_K: 144 bytes a row; Q8_0: 272; F16: 512; F32 norms.
        let q4 = [
            t(GgmlType::Q4K, 100),
            t(GgmlType::Q8_0, 50),
            t(GgmlType::F32, 1),
        ];
        assert_eq!(mix.file_type(&q4), FileType::MostlyQ4KM.id());
        let f16 = [
            t(GgmlType::Q4K, 100),
            t(GgmlType::F16, 30),
            t(GgmlType::Q8_0, 20),
        ];
        assert_eq!(mix.file_type(&f16), FileType::MostlyF16.id());
        let q5 = [t(GgmlType::Q5_0, 100), t(GgmlType::Q4K, 90)];
        assert_eq!(
            OutType::LaMix { f16_budget: 0.05 }.file_type(&q5),
            FileType::MostlyQ5_0.id()
        );
        let q3 = [t(GgmlType::Q3K, 100), t(GgmlType::Q6K, 10)];
        assert_eq!(mix.file_type(&q3), FileType::MostlyQ3KM.id());
        // Presets and converter types keep llama.cpp's own labels.
        let p = OutType::Preset(Preset::of(FileType::MostlyQ4KS));
        assert_eq!(p.file_type(&f16), FileType::MostlyQ4KS.id());
        assert_eq!(
            OutType::Uniform(GgmlType::BF16).file_type(&q4),
            FileType::MostlyBF16.id()
        );
    }

    /// A mixture missing one expert's tensor is refused naming it (the
    /// stacked tensor would lack an expert llama.cpp reads).
    #[test]
    fn a_mixture_missing_an_expert_is_refused() {
        use safetensors::tensor::TensorView;
        let d = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(fixture("mixtral")).unwrap() {
            let p = f.unwrap().path();
            std::fs::copy(&p, d.path().join(p.file_name().unwrap())).unwrap();
        }
        let st = d.path().join("model.safetensors");
        let bytes = std::fs::read(&st).unwrap();
        let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let gone = "model.layers.1.block_sparse_moe.experts.5.w3.weight";
        let views: Vec<(String, TensorView)> = t
            .tensors()
            .into_iter()
            .filter(|(n, _)| n != gone)
            .map(|(n, v)| {
                let v = TensorView::new(v.dtype(), v.shape().to_vec(), v.data()).unwrap();
                (n, v)
            })
            .collect();
        let out = safetensors::serialize(views, None).unwrap();
        drop(t);
        std::fs::write(&st, out).unwrap();
        let model = d.path().to_str().unwrap();
        let ck = Checkpoint::open(model).unwrap();
        let e = plan(&ck, &ConvertOptions::default(), &crate::job::silent)
            .unwrap_err()
            .to_string();
        assert!(e.contains(gone) && e.contains("missing"), "{e}");
    }

    /// A checkpoint's MXFP4 experts (gpt-oss as OpenAI ships it) stay MXFP4
    /// under the converter's types, COPY, la-mix and --target-bpw, as
    /// llama.cpp keeps them; --allow-requantize lets the policy choose their
    /// types, and a forced type (--tensor-type) quantizes them from their values.
    #[test]
    fn mxfp4_experts_stay_mxfp4_unless_a_type_is_forced() {
        let ck = Checkpoint::open(&fixture("gpt-oss-mxfp4")).unwrap();
        let exps = |p: &[TensorPlan]| -> Vec<(GgmlType, String)> {
            (p.iter())
                .filter(|t| t.role.is_experts() && t.name.ends_with(".weight"))
                .map(|t| (t.ty, t.reason.clone()))
                .collect()
        };
        // The converter's types keep them, labelled MXFP4_MOE when the rest is float.
        for (ty, label) in [
            (GgmlType::F32, FileType::MostlyMXFP4Moe),
            (GgmlType::BF16, FileType::MostlyMXFP4Moe),
            (GgmlType::Q8_0, FileType::MostlyQ8_0),
        ] {
            let opts = ConvertOptions {
                outtype: OutType::Uniform(ty),
                ..Default::default()
            };
            let p = plan(&ck, &opts, &crate::job::silent).unwrap();
            let e = exps(&p);
            assert_eq!(e.len(), 6);
            assert!(e.iter().all(|(t, _)| *t == GgmlType::MXFP4), "{ty}: {e:?}");
            assert_eq!(opts.outtype.file_type(&p), label.id(), "{ty}");
        }
        // COPY (of the converter's F32 file, as llama-quantize's) keeps them and
        // the F32 file's label; every other tensor stays F32.
        let opts = ConvertOptions {
            outtype: OutType::parse("copy", false).unwrap(),
            ..Default::default()
        };
        let p = plan(&ck, &opts, &crate::job::silent).unwrap();
        assert!(exps(&p).iter().all(|(t, _)| *t == GgmlType::MXFP4));
        assert_eq!(exps(&p).len(), 6);
        assert!(p
            .iter()
            .all(|t| t.ty == GgmlType::MXFP4 || t.ty == GgmlType::F32));
        let label = opts.outtype.file_type(&p);
        assert_eq!(label, FileType::MostlyMXFP4Moe.id());
        let f16 = plan(&ck, &ConvertOptions::default(), &crate::job::silent).unwrap();
        let per_tensor = (f16.iter())
            .filter(|t| presets::allows_quantization(&t.name, t.dims.len()))
            .map(|t| {
                let w = (t.dims[0] * t.dims.get(2).copied().unwrap_or(1)) as usize;
                (
                    t.name.clone(),
                    (0..w).map(|j| 0.1 + (j % 13) as f32).collect(),
                )
            })
            .collect();
        let imp = Importance {
            per_tensor,
            ..Default::default()
        };
        let re = regex::Regex::new("ffn_(gate|up)_exps").unwrap();
        for outtype in [OutType::LaMix { f16_budget: 0.05 }, OutType::TargetBpw(4.5)] {
            let mut opts = ConvertOptions {
                outtype,
                importance: Some(imp.clone()),
                ..Default::default()
            };
            let e = exps(&plan(&ck, &opts, &crate::job::silent).unwrap());
            assert_eq!(e.len(), 6);
            for (t, why) in &e {
                assert!(
                    *t == GgmlType::MXFP4 && why.contains("MXFP4 as stored: kept"),
                    "{t} {why}"
                );
            }
            // --allow-requantize: the policy chooses their types, as any tensor's.
            opts.allow_requantize = true;
            let e = exps(&plan(&ck, &opts, &crate::job::silent).unwrap());
            assert!(
                e.iter().all(|(_, why)| !why.contains("MXFP4 as stored")),
                "{e:?}"
            );
            opts.allow_requantize = false;
            // Forced: quantized from their values like any tensor.
            opts.overrides.tensor_types = vec![(re.clone(), GgmlType::Q4_0)];
            let e = exps(&plan(&ck, &opts, &crate::job::silent).unwrap());
            let q4 = e.iter().filter(|(t, _)| *t == GgmlType::Q4_0).count();
            let kept = e.iter().filter(|(t, _)| *t == GgmlType::MXFP4).count();
            assert_eq!((q4, kept), (4, 2), "{e:?}");
        }
    }

    /// la-mix and --target-bpw on every mixture fixture (gpt-oss: experts
    /// stacked in its checkpoint): each stacked expert
    /// tensor is one unit of the plan, scored with each expert's own slice of
    /// the importance and measured alone in the forward pass with routing
    /// (a positive ΔKLD of its own, no proxy), the routers stay F32, and
    /// --target-bpw holds its size.
    #[test]
    fn mixtures_plan_stacked_experts_by_their_measured_sensitivity() {
        for fx in ["mixtral", "qwen2moe", "qwen3moe", "olmoe", "gpt-oss"] {
            let ck = Checkpoint::open(&fixture(fx)).unwrap();
            let n_expert = ck.config.n_expert.unwrap();
            // Uneven importance, and per expert a different one.
            let f16 = plan(&ck, &ConvertOptions::default(), &crate::job::silent).unwrap();
            let per_tensor = f16
                .iter()
                .filter(|t| presets::allows_quantization(&t.name, t.dims.len()))
                .enumerate()
                .map(|(k, t)| {
                    let w = (t.dims[0] * t.dims.get(2).copied().unwrap_or(1)) as usize;
                    let v = (0..w)
                        .map(|j| 0.05 + ((j * 7919 + k * 104729) % 97) as f32 / 10.0)
                        .collect();
                    (t.name.clone(), v)
                })
                .collect();
            let imp = Importance {
                per_tensor,
                sensitivity: Some(crate::policy::sensitivity::SampleSpec {
                    tokens: 8,
                    budget: None,
                    ..Default::default()
                }),
                ..Default::default()
            };
            for outtype in [OutType::LaMix { f16_budget: 0.05 }, OutType::TargetBpw(4.5)] {
                let opts = ConvertOptions {
                    outtype,
                    importance: Some(imp.clone()),
                    ..Default::default()
                };
                let p = plan(&ck, &opts, &crate::job::silent).unwrap();
                let mut stacked = 0;
                for t in &p {
                    // gpt-oss's expert biases (2-D, F32) share the role.
                    if t.role.is_experts() && t.name.ends_with(".weight") {
                        stacked += 1;
                        // gpt-oss's checkpoint holds the stacked tensor itself.
                        let from_experts = ck.config.arch.tensors.experts.is_some();
                        let want = if from_experts { n_expert } else { 0 };
                        assert_eq!(t.experts.len(), want, "{fx} {}", t.name);
                        assert_eq!(t.dims.len(), 3, "{fx} {}", t.name);
                        assert_eq!(t.dims[2], n_expert as u64, "{fx} {}", t.name);
                        let s = t
                            .score
                            .as_ref()
                            .unwrap_or_else(|| panic!("{fx} {}", t.name));
                        let d = s
                            .delta_kld
                            .unwrap_or_else(|| panic!("{fx} {}: no ΔKLD", t.name));
                        assert!(d > 0.0 && s.alpha.unwrap() > 0.0, "{fx} {}: {d}", t.name);
                        let stem = t.name.trim_end_matches(".weight");
                        assert!(
                            t.reason.contains(&format!("measured: {stem} alone")),
                            "{fx} {}: {}",
                            t.name,
                            t.reason
                        );
                        assert!(
                            t.ty != GgmlType::F32 && t.ty != GgmlType::F16,
                            "{fx} {}",
                            t.name
                        );
                    }
                    if matches!(t.role, Role::FfnGateInp) {
                        assert_eq!(t.ty, GgmlType::F32, "{fx} {}", t.name);
                    }
                }
                let layers = ck.config.num_hidden_layers;
                assert_eq!(stacked, 3 * layers, "{fx}");
                if let OutType::TargetBpw(x) = outtype {
                    let params: u64 = p.iter().map(|t| t.n_elements()).sum();
                    let bits = 8.0 * p.iter().map(|t| t.bytes).sum::<u64>() as f64 / params as f64;
                    assert!(
                        bits <= x + 1e-9 && bits > x - 1.0,
                        "{fx}: {bits} bits per weight"
                    );
                }
            }
        }
    }

    #[test]
    fn a_writer_error_stops_the_stream_and_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("x.gguf");
        // The sink refuses data after 100 kB, in the middle of the tensors.
        let opts = ConvertOptions {
            outtype: OutType::Uniform(GgmlType::F16),
            output: Some(out.clone()),
            ..Default::default()
        };
        let ck = Checkpoint::open(&fixture("llama-bpe")).unwrap();
        let plan = plan(&ck, &opts, &crate::job::silent).unwrap();
        let specs: Vec<TensorSpec> = plan.iter().map(|t| t.spec()).collect();
        struct Full(usize);
        impl Write for Full {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                if self.0 < b.len() {
                    return Err(std::io::Error::other("disk full"));
                }
                self.0 -= b.len();
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let w = GgufWriter::new(Full(100_000), &Vec::new(), specs).unwrap();
        let cx = StreamCx {
            ck: &ck,
            opts: &opts,
            chunk_bytes: 4096,
            progress: &crate::job::silent,
            total_bytes: 0,
            spill: None,
        };
        let err = stream_tensors(&cx, &plan, w, None, &out).unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
    }
}
