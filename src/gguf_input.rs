//! A GGUF file as the input of `laquant convert`: an F32, F16 or BF16 model
//! GGUF (most of the hub's GGUF repositories hold one) requantized as
//! `llama-quantize` does, byte for byte (`llama_model_quantize_impl` in
//! llama.cpp's `src/llama-quant.cpp`):
//!
//! - metadata: every key of the input, in its order, without
//!   `general.quantization_version`, `general.file_type` and the `split.*` keys,
//!   then `general.quantization_version` and `general.file_type` (ggml's
//!   `gguf_set_val_*` removes a key and appends it), then the
//!   `quantize.imatrix.*` keys `llama-quantize --imatrix` adds (its key
//!   overrides, in the order `tools/quantize/quantize.cpp` makes them). The
//!   tokenizer and everything else is carried over untouched; laquant adds none
//!   of its own keys, so the file is llama-quantize's.
//! - tensors: in llama-quantize's order ([`presets::quantize_order`]), each
//!   typed by the preset's rules ([`PresetPlanner`]) from its name and shape;
//!   a tensor whose type does not change is copied, the others are widened to
//!   f32 and quantized with the imatrix's column importance.
//! - an already quantized tensor that would change type is refused unless
//!   `--allow-requantize` (llama-quantize: "requantizing from type %s is
//!   disabled"); then it is dequantized with our kernels first.
//!
//! The architectures are those laquant converts; each tensor's role is found
//! by its name among the roles of that architecture's tensor tables
//! ([`crate::arch::gguf_roles`]). A mixture of experts is planned with
//! llama-quantize's expert-count rules (`{arch}.expert_count`), each expert of a
//! stacked tensor quantized with its own slice of the imatrix.
//!
//! The calibrated policies (la-mix, `--target-bpw`) calibrate, measure the
//! sensitivity and plan on the checkpoint the file was made from, rebuilt from
//! its tensors and vocabulary ([`rebuild`]: every decoder family with a BPE
//! vocabulary, mixtures of experts included, gpt-oss's MXFP4 experts too,
//! which they keep, copied, unless `--allow-requantize`),
//! then write the file as above, in llama-quantize's order with the input's
//! metadata, plus the `quantize.imatrix.*` and `laquant.*` keys the HF path writes
//! for them ([`convert_calibrated`]).

pub mod rebuild;

use crate::arch::{Role, Transform};
use crate::atomic::AtomicFile;
use crate::gguf::{FileType, GgmlType, GgufFile, GgufWriter, Metadata, TensorInfo, Value};
use crate::job::{Job, JobError, OnProgress, Progress};
use crate::pipeline::{
    self, ConvertError, ConvertOptions, ConvertReport, OutType, TensorPlan, Timings,
};
use crate::policy::{presets, Preset, PresetPlanner, TensorDesc};
use crate::quant;
use rayon::prelude::*;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Whether `model` names a GGUF file (a regular file starting with `GGUF`).
pub fn is_gguf(model: &str) -> bool {
    let p = Path::new(model);
    if !p.is_file() {
        return false;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(p)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok_and(|()| &magic == crate::gguf::MAGIC)
}

/// The keys llama-quantize drops from the input's (set again, or split keys).
const DROPPED_KEYS: &[&str] = &[
    "general.quantization_version",
    "general.file_type",
    "split.no",
    "split.count",
    "split.tensors.count",
];

fn bad(f: &GgufFile, what: impl std::fmt::Display) -> ConvertError {
    ConvertError::Tensor {
        path: f.path.clone(),
        what: what.to_string(),
    }
}

/// An unsigned integer key the model needs.
fn key_u64(f: &GgufFile, key: &str) -> Result<u64, ConvertError> {
    match f.get(key) {
        None => Err(bad(f, format!("key {key} is missing"))),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| bad(f, format!("key {key} is {v:?}, not an unsigned integer"))),
    }
}

/// The preset an `--outtype` means for the GGUF input `input`: the converter
/// types are llama-quantize's F32, F16, BF16 and Q8_0 presets here.
pub fn preset(input: &Path, outtype: OutType) -> Result<Preset, ConvertError> {
    match outtype {
        OutType::Preset(p) => Ok(p),
        OutType::Uniform(t) => FileType::for_type(t).map(Preset::of).ok_or_else(|| {
            ConvertError::Plan(format!("--outtype {}: no llama-quantize preset", t))
        }),
        OutType::LaMix { .. } | OutType::TargetBpw(_) => Err(ConvertError::Plan(format!(
            "{}: {} is no llama-quantize preset (it is planned by convert_calibrated)",
            input.display(),
            outtype.label()
        ))),
    }
}

/// `ggml_n_dims`: trailing dimensions of 1 dropped (at least one kept).
fn n_dims(dims: &[u64]) -> Vec<u64> {
    let n = dims.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1);
    dims[..n].to_vec()
}

/// The role of a tensor of a GGUF input of architecture `arch`, from its name:
/// one of the roles the tensor tables of that architecture's specs give
/// ([`crate::arch::gguf_roles`]), experts included.
fn role_of(f: &GgufFile, arch: &str, name: &str) -> Result<(Role, Option<usize>), ConvertError> {
    let layer = presets::layer_of(name);
    let rest = match layer {
        Some(l) => &name[format!("blk.{l}.").len()..],
        None => name,
    };
    let stem = rest
        .strip_suffix(".weight")
        .or_else(|| rest.strip_suffix(".bias"))
        .unwrap_or(rest);
    crate::arch::gguf_roles(arch)
        .into_iter()
        .find(|r| r.gguf_stem() == stem)
        .map(|r| (r, layer))
        .ok_or_else(|| {
            bad(
                f,
                format!(
                    "tensor {name}: not a tensor name laquant knows (`{stem}` is no {arch} \
                     tensor's name)"
                ),
            )
        })
}

/// The plan of a GGUF input: every tensor in llama-quantize's order with the type
/// the preset gives it. Refuses other architectures, split files, imatrix files,
/// and quantized tensors that would change type unless `allow_requantize`.
pub fn plan(
    f: &GgufFile,
    opts: &ConvertOptions,
    allow_requantize: bool,
) -> Result<Vec<TensorPlan>, ConvertError> {
    let arch = model_arch(f)?;
    let p = preset(&f.path, opts.outtype)?;
    let n_layer = key_u64(f, &format!("{arch}.block_count"))? as usize;
    let n_head = key_u64(f, &format!("{arch}.attention.head_count"))? as usize;
    let n_head_kv = match f.get(&format!("{arch}.attention.head_count_kv")) {
        None => n_head,
        Some(_) => key_u64(f, &format!("{arch}.attention.head_count_kv"))? as usize,
    };
    let n_expert = match f.get(&format!("{arch}.expert_count")) {
        None => 0,
        Some(_) => key_u64(f, &format!("{arch}.expert_count"))? as usize,
    };
    if n_head == 0 || n_layer == 0 {
        return Err(bad(f, "head_count and block_count must be positive"));
    }
    let mut tensors: Vec<&TensorInfo> = f.tensors.iter().collect();
    tensors.sort_by(|a, b| presets::quantize_order(&a.name, &b.name));
    let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    let mut planner = PresetPlanner::new(
        p,
        opts.overrides.clone(),
        opts.importance.is_some(),
        n_head,
        n_head_kv,
        n_layer,
        &names,
    )
    .with_experts(n_expert);
    let mut out = Vec::with_capacity(tensors.len());
    for t in tensors {
        out.push(plan_tensor(
            f,
            arch,
            t,
            &mut planner,
            opts,
            allow_requantize,
        )?);
    }
    if let Some(imp) = &opts.importance {
        imp.check_against(&out)?;
    }
    Ok(out)
}

/// The architecture of a model GGUF laquant requantizes: refuses imatrix files,
/// other architectures and parts of a split file.
fn model_arch(f: &GgufFile) -> Result<&str, ConvertError> {
    if f.get("general.type").and_then(Value::as_str) == Some("imatrix") {
        return Err(bad(
            f,
            "is an imatrix file, not a model (give it to --imatrix)",
        ));
    }
    let arch = match f.get("general.architecture") {
        None => {
            return Err(bad(
                f,
                "key general.architecture is missing: not a model GGUF",
            ))
        }
        Some(v) => v
            .as_str()
            .ok_or_else(|| bad(f, "key general.architecture is not a string"))?,
    };
    // Every family laquant converts: its presets mirror llama-quantize's rules for each.
    // Each once, in the table's order (Mixtral's spec is `llama` too).
    let mut archs: Vec<&str> = Vec::new();
    for a in crate::arch::ARCHS.iter().map(|s| s.gguf_arch) {
        if !archs.contains(&a) {
            archs.push(a);
        }
    }
    if !archs.contains(&arch) {
        return Err(bad(
            f,
            format!(
                "architecture {arch}: laquant requantizes {} GGUFs (the architectures whose \
                 llama-quantize rules it mirrors)",
                archs.join(", ")
            ),
        ));
    }
    if f.get("split.count")
        .and_then(Value::as_u64)
        .is_some_and(|n| n > 1)
    {
        return Err(bad(
            f,
            "one part of a split GGUF: merge the parts first (llama-gguf-split --merge)",
        ));
    }
    Ok(arch)
}

/// One tensor of the GGUF input, typed by `planner` (see [`plan`]).
fn plan_tensor(
    f: &GgufFile,
    arch: &str,
    t: &TensorInfo,
    planner: &mut PresetPlanner,
    opts: &ConvertOptions,
    allow_requantize: bool,
) -> Result<TensorPlan, ConvertError> {
    let (role, layer) = role_of(f, arch, &t.name)?;
    let dims = n_dims(&t.dims);
    let (ty, mut reason) = planner.choose(
        &TensorDesc {
            name: &t.name,
            dims: &dims,
        },
        t.ty,
    );
    planner
        .check_imatrix(&t.name, dims.len(), ty)
        .map_err(|e| bad(f, e))?;
    if ty != t.ty {
        check_retype(f, t, ty, allow_requantize)?;
    } else {
        reason = format!("{reason}; copied ({} in the input)", t.ty);
    }
    let bytes = crate::gguf::TensorSpec {
        name: t.name.clone(),
        dims: dims.clone(),
        ty,
    }
    .n_bytes()
    .ok_or_else(|| {
        ConvertError::Plan(format!(
            "tensor {}: width {} is not a multiple of {ty}'s block size {}",
            t.name,
            dims[0],
            ty.block_size()
        ))
    })?;
    let planned = TensorPlan {
        hf_name: None,
        experts: Vec::new(),
        name: t.name.clone(),
        role,
        layer,
        dims,
        ty,
        transform: Transform::None,
        bytes,
        reason,
        score: None,
    };
    if ty != t.ty {
        crate::pipeline::needs_importance(&planned, opts.importance.as_ref())?;
    }
    Ok(planned)
}

/// Checks that tensor `t` of the input can be read and written as `ty`: its type
/// is a weight type, requantizing is allowed, and the kernels read and write both.
fn check_retype(
    f: &GgufFile,
    t: &TensorInfo,
    ty: GgmlType,
    allow_requantize: bool,
) -> Result<(), ConvertError> {
    let readable = matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
    if !readable && !t.ty.is_quantized() {
        return Err(bad(
            f,
            format!(
                "tensor {} is {}: not a weight type (laquant quantizes F32, F16 and BF16 \
                 tensors, and quantized ones with --allow-requantize)",
                t.name, t.ty
            ),
        ));
    }
    if !readable && !allow_requantize {
        return Err(bad(
            f,
            format!(
                "tensor {} is {}: requantizing from type {} is disabled, as in \
                 llama-quantize; pass --allow-requantize to quantize it again to {} \
                 (quality suffers: start from an F32, F16 or BF16 file if you can)",
                t.name, t.ty, t.ty, ty
            ),
        ));
    }
    if !readable && !quant::supports(t.ty) {
        return Err(bad(
            f,
            format!("tensor {}: type {} cannot be read by laquant", t.name, t.ty),
        ));
    }
    if !quant::supports(ty) {
        return Err(ConvertError::Plan(format!(
            "tensor {}: type {ty} is not supported by laquant's kernels yet",
            t.name
        )));
    }
    Ok(())
}

/// The metadata llama-quantize writes for the file type `ftype` (see the module's comment).
pub fn metadata(f: &GgufFile, opts: &ConvertOptions, ftype: u32) -> Metadata {
    let mut m: Metadata = f
        .metadata
        .iter()
        .filter(|(k, _)| !DROPPED_KEYS.contains(&k.as_str()))
        .cloned()
        .collect();
    m.push((
        "general.quantization_version".into(),
        Value::U32(crate::hf::convert_py::QUANTIZATION_VERSION),
    ));
    m.push(("general.file_type".into(), Value::U32(ftype)));
    if let Some(imp) = &opts.importance {
        // strncpy(val_str, s, 127): at most 127 bytes (cut at a character boundary).
        let cut = |s: &str| {
            let mut n = s.len().min(127);
            while !s.is_char_boundary(n) {
                n -= 1;
            }
            s[..n].to_string()
        };
        let set = |m: &mut Metadata, k: &str, v: Value| {
            m.retain(|(key, _)| key != k);
            m.push((k.into(), v));
        };
        if let Some(file) = &imp.file {
            set(&mut m, "quantize.imatrix.file", Value::String(cut(file)));
        }
        if let Some(d) = imp.datasets.first() {
            set(&mut m, "quantize.imatrix.dataset", Value::String(cut(d)));
        }
        set(
            &mut m,
            "quantize.imatrix.entries_count",
            Value::U32(imp.per_tensor.len() as u32),
        );
        if imp.chunk_count > 0 {
            set(
                &mut m,
                "quantize.imatrix.chunks_count",
                Value::U32(imp.chunk_count as u32),
            );
        }
    }
    m
}

/// The default output: `<input stem without -f16/-bf16/-f32>-<TYPE>.gguf` in the current folder.
pub fn default_output(input: &Path, outtype: OutType) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let lower = stem.to_ascii_lowercase();
    let base = ["-f16", "-bf16", "-f32", ".f16", ".bf16", ".f32"]
        .iter()
        .find(|s| lower.ends_with(*s))
        .map_or(stem.as_str(), |s| &stem[..stem.len() - s.len()]);
    let label = match outtype {
        OutType::Uniform(t) => FileType::for_type(t).map_or(t.name(), |f| f.name()),
        OutType::Preset(p) => p.name(),
        OutType::LaMix { .. } | OutType::TargetBpw(_) => {
            return PathBuf::from(format!("{base}-{}.gguf", outtype.label()))
        }
    };
    PathBuf::from(format!("{base}-{label}.gguf"))
}

/// Output bytes per chunk of rows.
const CHUNK_BYTES: usize = 4 << 20;

/// When the phases of a conversion ended (seconds since `t0`).
struct Started {
    t0: Instant,
    open: f64,
    plan: f64,
    calibration: Option<f64>,
    /// How the calibrated policies' sensitivity was measured.
    sensitivity: Option<pipeline::SensitivitySummary>,
}

fn open(input: &Path) -> Result<GgufFile, ConvertError> {
    Ok(GgufFile::open(input)?)
}

/// Requantizes the GGUF file at `input` as `llama-quantize` does (see the module's comment).
pub fn convert(
    input: &Path,
    opts: &ConvertOptions,
    allow_requantize: bool,
    progress: OnProgress,
) -> Result<ConvertReport, ConvertError> {
    let t0 = Instant::now();
    let f = open(input)?;
    let t_open = t0.elapsed().as_secs_f64();
    let plan = plan(&f, opts, allow_requantize)?;
    let p = preset(input, opts.outtype)?;
    // COPY keeps the input's file type (llama-quantize's `only_copy`), or the
    // type its loader guesses when the file has none.
    let ftype = match f.get("general.file_type").and_then(|v| v.as_u64()) {
        Some(id) if p.is_copy() => id as u32,
        None if p.is_copy() => guessed_file_type(f.tensors.iter().map(|t| (t.name.as_str(), t.ty))),
        _ => p.0.id(),
    };
    let meta = metadata(&f, opts, ftype);
    let started = Started {
        t0,
        open: t_open,
        plan: t0.elapsed().as_secs_f64(),
        calibration: None,
        sensitivity: None,
    };
    write(&f, plan, &meta, opts, started, progress)
}

/// The file type llama.cpp's model loader gives a GGUF without
/// `general.file_type`, which llama-quantize's COPY writes: the type of the
/// most tensors (the first to reach that count in the loader's order: tensors
/// outside the blocks, then block by block, each by name), as the file type
/// the loader names after it (`ALL_F32` for a type it does not list, MXFP4
/// among them), with llama.h's `LLAMA_FTYPE_GUESSED` bit (1024).
fn guessed_file_type<'a>(tensors: impl Iterator<Item = (&'a str, GgmlType)>) -> u32 {
    const GUESSED: u32 = 1024;
    // `sscanf(name, "blk.%d.")`: the block number, -1 outside the blocks.
    let layer = |name: &str| -> i64 {
        let Some(rest) = name.strip_prefix("blk.") else {
            return -1;
        };
        let end = (rest.char_indices())
            .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && (c == '-' || c == '+'))))
            .map_or(rest.len(), |(i, _)| i);
        rest[..end].parse().unwrap_or(-1)
    };
    let mut order: Vec<(&str, GgmlType)> = tensors.collect();
    order.sort_by(|a, b| (layer(a.0), a.0).cmp(&(layer(b.0), b.0)));
    let mut count = std::collections::HashMap::new();
    let (mut most, mut ty) = (0, GgmlType::F32);
    for (_, t) in order {
        let n = count.entry(t).or_insert(0);
        *n += 1;
        if *n > most {
            (most, ty) = (*n, t);
        }
    }
    // The loader names the file type after the type (a K-quant its `_M` one);
    // NVFP4's (llama.h's 39) is the one laquant has no preset for.
    let name = ty.name();
    let id = match ty {
        GgmlType::NVFP4 => 39,
        _ => (FileType::from_name(name))
            .or_else(|| FileType::from_name(&format!("{name}_M")))
            .map_or(0, FileType::id),
    };
    id | GUESSED
}

/// What [`plan_calibrated`] returns: the plan, the options with the importance
/// used, and how the sensitivity was measured.
pub type CalibratedPlan = (
    Vec<TensorPlan>,
    ConvertOptions,
    Option<pipeline::SensitivitySummary>,
);

/// la-mix or `--target-bpw` on the GGUF file at `input` ([`plan_calibrated`]),
/// written in llama-quantize's order with the input's metadata, the
/// `general.file_type` of the type holding most bytes, and the
/// `quantize.imatrix.*` and `laquant.*` keys the HF path writes.
pub fn convert_calibrated(
    input: &Path,
    job: &Job,
    threads: usize,
    progress: OnProgress,
) -> Result<ConvertReport, JobError> {
    let t0 = Instant::now();
    let f = open(input)?;
    let t_open = t0.elapsed().as_secs_f64();
    let (plan, opts, sensitivity) = plan_calibrated(&f, job, threads, progress)?;
    let mut meta = metadata(&f, &opts, opts.outtype.file_type(&plan));
    for (k, v) in pipeline::provenance(opts.outtype, &opts) {
        meta.retain(|(key, _)| *key != k);
        meta.push((k, v));
    }
    let started = Started {
        t0,
        open: t_open,
        plan: t0.elapsed().as_secs_f64(),
        calibration: opts.importance.as_ref().and_then(|i| i.seconds),
        sensitivity,
    };
    Ok(write(&f, plan, &meta, &opts, started, progress)?)
}

/// The plan of la-mix or `--target-bpw` for the GGUF `f`: its checkpoint rebuilt
/// ([`rebuild`]), calibrated (or `--imatrix`) and planned as a checkpoint is
/// (sensitivity measured), then each tensor of the file typed as planned, in
/// llama-quantize's order. Returns the options with the importance used, and
/// how the sensitivity was measured.
pub fn plan_calibrated(
    f: &GgufFile,
    job: &Job,
    threads: usize,
    progress: OnProgress,
) -> Result<CalibratedPlan, JobError> {
    job.check()?;
    // The checks every GGUF input gets (architecture, split files, experts).
    let mut preset_opts = job.options.clone();
    preset_opts.outtype = OutType::Uniform(GgmlType::F16);
    preset_opts.overrides = Default::default();
    plan(f, &preset_opts, true)?;
    let rebuilt = rebuild::Rebuilt::new(f)?;
    let ck = rebuilt.checkpoint();
    let mut opts = job.options.clone();
    opts.importance = if job.needs_importance() {
        let calibration = &job.calibration;
        Some(calibration.importance_from(|| Ok(ck), threads, progress)?)
    } else {
        None
    };
    let (planned, sensitivity) = pipeline::plan_measured(ck, &opts, progress)?;
    let allow_requantize = opts.allow_requantize;
    Ok((onto_file(f, planned, allow_requantize)?, opts, sensitivity))
}

/// A checkpoint's plan as the plan of the file it was rebuilt from: every
/// tensor of `f` in llama-quantize's order, with its planned type; a
/// quantized tensor of `f` (MXFP4 experts) planned to another type
/// (`--tensor-type`, or the policy's choice with `--allow-requantize`) is
/// refused without `allow_requantize`, as llama-quantize refuses it.
fn onto_file(
    f: &GgufFile,
    planned: Vec<TensorPlan>,
    allow_requantize: bool,
) -> Result<Vec<TensorPlan>, ConvertError> {
    let mut by_name: std::collections::HashMap<String, TensorPlan> =
        planned.into_iter().map(|t| (t.name.clone(), t)).collect();
    let mut tensors: Vec<&TensorInfo> = f.tensors.iter().collect();
    tensors.sort_by(|a, b| presets::quantize_order(&a.name, &b.name));
    let mut out = Vec::with_capacity(tensors.len());
    for t in tensors {
        let mut p = by_name
            .remove(&t.name)
            .ok_or_else(|| bad(f, format!("tensor {}: not planned", t.name)))?;
        let dims = n_dims(&t.dims);
        if p.dims != dims {
            return Err(bad(
                f,
                format!("tensor {}: planned as {:?}, is {dims:?}", t.name, p.dims),
            ));
        }
        if p.ty == t.ty {
            p.reason = format!("{}; copied ({} in the input)", p.reason, t.ty);
        } else {
            check_retype(f, t, p.ty, allow_requantize)?;
        }
        p.hf_name = None;
        out.push(p);
    }
    if let Some(name) = by_name.keys().min() {
        return Err(bad(
            f,
            format!("tensor {name} is planned but not in the file"),
        ));
    }
    Ok(out)
}

/// Writes `plan` from `f` with `meta` (see [`convert`]).
fn write(
    f: &GgufFile,
    plan: Vec<TensorPlan>,
    meta: &Metadata,
    opts: &ConvertOptions,
    started: Started,
    progress: OnProgress,
) -> Result<ConvertReport, ConvertError> {
    let input = &f.path;
    let target = opts
        .output
        .clone()
        .unwrap_or_else(|| default_output(input, opts.outtype));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| ConvertError::Io { path, error }
    };
    let mut out = AtomicFile::create(&target, opts.force).map_err(io(&target))?;
    let total: u64 = plan.iter().map(|t| t.bytes).sum();
    {
        let sink = BufWriter::with_capacity(1 << 20, out.file());
        let specs = plan
            .iter()
            .map(|t| crate::gguf::TensorSpec {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty: t.ty,
            })
            .collect();
        let mut w = GgufWriter::new(sink, meta, specs).map_err(io(&target))?;
        for (i, t) in plan.iter().enumerate() {
            progress(Progress::Writing {
                index: i,
                count: plan.len(),
                tensor: &t.name,
            });
            let info = f.tensor(&t.name).expect("planned from the file");
            w.begin_tensor(&t.name).map_err(io(&target))?;
            write_tensor(f, info, t, opts, &mut |b: &[u8]| {
                progress(Progress::Wrote {
                    bytes: b.len() as u64,
                    total,
                });
                w.write_chunk(b).map_err(io(&target))
            })?;
            w.end_tensor().map_err(io(&target))?;
        }
        w.finish()
            .and_then(|mut s| s.flush())
            .map_err(io(&target))?;
    }
    out.commit().map_err(io(&target))?;
    let n_params: u64 = plan.iter().map(|t| t.n_elements()).sum();
    let seconds = started.t0.elapsed().as_secs_f64();
    let calibration = opts.importance.as_ref().map(|i| i.summary());
    Ok(ConvertReport {
        output: target,
        outtype: opts.outtype.label(),
        sizes: pipeline::sizes_by_type(&plan),
        bytes: total,
        n_params,
        bits_per_weight: if n_params > 0 {
            total as f64 * 8.0 / n_params as f64
        } else {
            0.0
        },
        tensors: plan,
        seconds,
        quantized_once_bytes: 0,
        timings: Timings {
            calibration: started.calibration,
            open: started.open,
            plan: started.plan - started.open,
            write: seconds - started.plan,
            total: seconds,
        },
        calibration,
        sensitivity: started.sensitivity,
        peak_rss_bytes: pipeline::peak_rss_bytes(),
    })
}

/// One tensor's bytes, in chunks of rows handed to `sink`: copied when its type
/// does not change, else widened (or dequantized) and quantized in parallel.
fn write_tensor(
    f: &GgufFile,
    info: &TensorInfo,
    t: &TensorPlan,
    opts: &ConvertOptions,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), ConvertError>,
) -> Result<(), ConvertError> {
    let data = f.tensor_data(info);
    if t.ty == info.ty {
        for c in data.chunks(CHUNK_BYTES) {
            sink(c)?;
        }
        return Ok(());
    }
    let width = t.dims[0] as usize;
    let rows = (t.n_elements() as usize) / width.max(1);
    let src_rb = info.ty.row_bytes(width as u64).unwrap_or(0) as usize;
    let rb = t.ty.row_bytes(width as u64).unwrap_or(0) as usize;
    // A mixture's stacked tensor: each expert's rows with its own importance slice.
    let slices = t.dims.get(2).map_or(1, |&e| e.max(1) as usize);
    let rows_per_slice = (rows / slices).max(1);
    let imatrix = opts
        .importance
        .as_ref()
        .and_then(|i| i.get(&t.name, width * slices));
    let chunk_rows = (CHUNK_BYTES / rb.max(src_rb).max(1)).max(1);
    let mut buf = vec![0u8; chunk_rows.min(rows) * rb];
    let mut r0 = 0;
    while r0 < rows {
        let nr = chunk_rows.min(rows - r0);
        let src = &data[r0 * src_rb..(r0 + nr) * src_rb];
        let dst = &mut buf[..nr * rb];
        let bad_row = dst
            .par_chunks_mut(rb)
            .zip(src.par_chunks(src_rb))
            .enumerate()
            .map_init(
                || vec![0f32; width],
                |row, (j, (d, s))| {
                    let x = (r0 + j) / rows_per_slice;
                    let imatrix = imatrix.map(|v| &v[x * width..(x + 1) * width]);
                    convert_row(info.ty, t.ty, s, d, row, imatrix, !opts.allow_nonfinite)
                        .err()
                        .map(|e| (r0 + j, e))
                },
            )
            .flatten()
            .min_by_key(|(r, _)| *r);
        if let Some((r, what)) = bad_row {
            return Err(bad(
                f,
                format!("tensor {}: row {r}: {}", t.name, crate::error_chain(&what)),
            ));
        }
        if !opts.allow_nonfinite {
            if let Some(row) = quant::validate::first_invalid_row(t.ty, dst, rb) {
                return Err(bad(
                    f,
                    format!(
                        "tensor {}: row {} packs to infinite or NaN {} values, which llama.cpp \
                         refuses; use --tensor-type {}=f16",
                        t.name,
                        r0 + row,
                        t.ty,
                        t.name
                    ),
                ));
            }
        }
        sink(dst)?;
        r0 += nr;
    }
    Ok(())
}

/// Why a row of a GGUF input cannot be converted.
#[derive(Debug, thiserror::Error)]
enum RowFailure {
    /// Dequantizing or quantizing failed.
    #[error(transparent)]
    Quant(#[from] quant::QuantError),
    /// A finite value beyond what the quantizers' arithmetic holds.
    #[error("value {value:e} at column {col} is too large to quantize to {to}")]
    TooLarge {
        value: f32,
        col: usize,
        to: GgmlType,
    },
    /// NaN or an infinity.
    #[error(
        "value {value} at column {col} is not finite; pass --allow-nonfinite to convert anyway"
    )]
    NonFinite { value: f32, col: usize },
}

/// One row from `from` to `to` through f32.
fn convert_row(
    from: GgmlType,
    to: GgmlType,
    src: &[u8],
    dst: &mut [u8],
    row: &mut [f32],
    imatrix: Option<&[f32]>,
    check_finite: bool,
) -> Result<(), RowFailure> {
    match from {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            let dtype = match from {
                GgmlType::F32 => safetensors::Dtype::F32,
                GgmlType::F16 => safetensors::Dtype::F16,
                _ => safetensors::Dtype::BF16,
            };
            crate::hf::safetensors::widen(dtype, src, row);
        }
        _ => quant::dequantize(from, src, row)?,
    }
    if check_finite {
        let r = if matches!(to, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            crate::pipeline::rows::first_non_finite(row)
        } else {
            crate::pipeline::rows::first_unquantizable(row)
        };
        if let Err(nf) = r {
            return Err(if nf.value.is_finite() {
                RowFailure::TooLarge {
                    value: nf.value,
                    col: nf.col,
                    to,
                }
            } else {
                RowFailure::NonFinite {
                    value: nf.value,
                    col: nf.col,
                }
            });
        }
    }
    Ok(quant::quantize_rows(to, row, row.len(), imatrix, dst)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dims_drop_trailing_ones_and_outputs_are_named_by_preset() {
        assert_eq!(n_dims(&[64, 1]), vec![64]);
        assert_eq!(n_dims(&[1, 1]), vec![1]);
        assert_eq!(n_dims(&[64, 32, 1]), vec![64, 32]);
        let o = default_output(
            Path::new("/x/Model-F16.gguf"),
            OutType::parse("q4_k_m", false).unwrap(),
        );
        assert_eq!(o, PathBuf::from("Model-Q4_K_M.gguf"));
        let o = default_output(Path::new("m.gguf"), OutType::parse("q8_0", false).unwrap());
        assert_eq!(o, PathBuf::from("m-Q8_0.gguf"));
    }

    /// llama-model-loader.cpp's guess, type by type (llama.h's ids), and its
    /// tie rule: the first type to reach the largest count in its order.
    #[test]
    fn guessed_file_types_are_the_loaders() {
        use GgmlType as G;
        let guess = |ts: &[(&str, GgmlType)]| guessed_file_type(ts.iter().copied()) ^ 1024;
        for (t, id) in [
            (G::F32, 0),
            (G::F16, 1),
            (G::BF16, 32),
            (G::Q4_0, 2),
            (G::Q4_1, 3),
            (G::Q5_0, 8),
            (G::Q5_1, 9),
            (G::Q8_0, 7),
            (G::Q2K, 10),
            (G::Q3K, 12),
            (G::Q4K, 15),
            (G::Q5K, 17),
            (G::Q6K, 18),
            (G::TQ1_0, 36),
            (G::TQ2_0, 37),
            (G::IQ2XXS, 19),
            (G::IQ2XS, 20),
            (G::IQ2S, 28),
            (G::IQ3XXS, 23),
            (G::IQ1S, 24),
            (G::IQ1M, 31),
            (G::IQ4NL, 25),
            (G::IQ4XS, 30),
            (G::IQ3S, 26),
            (G::NVFP4, 39),
            (G::Q1_0, 40),
            (G::Q2_0, 41),
            (G::MXFP4, 0),
        ] {
            assert_eq!(guess(&[("a", t), ("b", G::F32), ("c", t)]), id, "{t}");
        }
        // Two each: output.weight (outside the blocks) comes before blk.*,
        // and blk.2 before blk.10 (numbers, not names).
        let ts = [
            ("blk.10.x", G::Q8_0),
            ("blk.2.x", G::Q4_0),
            ("output.weight", G::Q4_0),
            ("blk.10.y", G::Q8_0),
        ];
        assert_eq!(guess(&ts), 2);
        let ts = [
            ("blk.10.x", G::Q4_0),
            ("blk.2.x", G::Q8_0),
            ("blk.2.y", G::Q8_0),
            ("blk.11.x", G::Q4_0),
        ];
        assert_eq!(guess(&ts), 7);
        assert_eq!(guessed_file_type([("a", G::F16)].into_iter()), 1025);
    }
}
