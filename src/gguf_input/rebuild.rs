//! The Hugging Face checkpoint a GGUF input was made from, rebuilt (its JSON
//! files in a temporary folder, its weights the file's), so la-mix and `--target-bpw` calibrate, measure and plan
//! on it exactly as on a checkpoint (the forward pass, the calibration cache
//! and the sensitivity measurement all read a [`crate::hf::Checkpoint`]):
//!
//! - `config.json` from the hyperparameters, driven by the family's spec
//!   (no family is named here): each `{arch}.*` key read back into the
//!   `config.json` key it is written from ([`arch::hparam_sources`]), the
//!   vocabulary size, tied output and attention biases from the tensors; the
//!   config is then converted again and must give the file's `{arch}.*` keys
//!   exactly, or the file is refused naming the key that cannot be carried
//!   (so the forward pass runs the model llama.cpp would);
//! - `tokenizer.json` from the vocabulary (`tokenizer.ggml.tokens`, `merges`,
//!   and the split regexes, `ignore_merges` and normalizer llama.cpp's
//!   `tokenizer.ggml.pre` name stands for: [`pretok::PRE_TABLE`]; a
//!   SentencePiece vocabulary as the byte-fallback BPE of `rebuild/spm.rs`);
//! - the weights: every tensor of the file read in place through its map
//!   under its HF name (the spec's tensor rule of its role), in the file's own
//!   type (F32, F16 or BF16 are row-major already, so no value changes and
//!   nothing is copied to disk), the converter's row moves (Llama's Q/K
//!   permutation, GPT-NeoX's fused QKV) undone row by row on read
//!   ([`crate::hf::safetensors::Shard::view`]), the converter's transposition
//!   of `Conv1D` weights kept (the checkpoint's [`Checkpoint::linear_layout`]).
//!
//! A mixture's stacked expert tensors (`[n_expert, rows, cols]`) are read as
//! the per-expert HF tensors they were stacked from, each a view of its slice
//! of the file (nothing copied). Stacked experts in MXFP4 (gpt-oss as it is
//! distributed) are read as the checkpoint's MXFP4 experts: their ggml blocks
//! in place ([`crate::hf::safetensors::Mxfp4::Ggml`]), dequantized by rows,
//! their matmul inputs rounded to Q8_0 (`Checkpoint::activation`).
//!
//! Only what the forward pass runs from such a file is accepted: every
//! decoder family laquant converts, mixtures of experts included (encoders are
//! refused by name), RoPE scaling none, linear, yarn, llama3's or LongRoPE's
//! (their factor tensors carried as they are, not derived again), norm weights stored
//! as trained or as Gemma's `1 + w` (read back as `w` when exact), with a
//! GPT-2-style BPE vocabulary of a known pre-tokenizer or a SentencePiece
//! one, in F32, F16 or BF16 (stacked experts in MXFP4 too); anything else
//! is refused with what to do instead. A query scalar no key carries is llama.cpp's
//! ([`arch::QueryScale`]). The
//! calibration cache's fingerprint of the
//! rebuilt checkpoint is the GGUF file's (its name, size, modification time,
//! header and sampled tensor bytes) and the rebuilt `config.json`, the same on
//! every run from the same file.

use crate::arch;
use crate::gguf::{GgmlType, GgufFile, TensorInfo, Value};
use crate::hf::safetensors::{Shard, Shards, ViewedTensor};
use crate::hf::tokenizer::pretok;
use crate::hf::{Checkpoint, Config};
use crate::pipeline::ConvertError;
use serde_json::{json, Value as Json};
use std::io::Write;
use std::path::Path;

mod spm;

/// A rebuilt checkpoint: its JSON files in a temporary folder (removed when
/// dropped), its weights those of the GGUF file.
pub struct Rebuilt {
    checkpoint: Checkpoint,
    dir: tempfile::TempDir,
}

impl Rebuilt {
    /// Rebuilds the checkpoint of `f`: `config.json` and the tokenizer's files
    /// in a new folder under the system's temporary folder (`$TMPDIR`; a few
    /// megabytes at most), the weights read from `f`'s file in place.
    pub fn new(f: &GgufFile) -> Result<Rebuilt, ConvertError> {
        let specs = candidate_specs(f)?;
        let (tokenizer, tokenizer_config) = tokenizer_json(f)?;
        let dir = tempfile::Builder::new()
            .prefix("laquant-gguf-")
            .tempdir()
            .map_err(|error| ConvertError::Io {
                path: std::env::temp_dir(),
                error,
            })?;
        write_json(dir.path(), "tokenizer.json", &tokenizer)?;
        write_json(dir.path(), "tokenizer_config.json", &tokenizer_config)?;
        let cfg = rebuilt_config(f, &specs, dir.path())?;
        let shards = Shards::single(weights(f, &cfg)?);
        let checkpoint = Checkpoint {
            dir: dir.path().to_path_buf(),
            config: cfg,
            shards,
            linear_layout: true,
        };
        Ok(Rebuilt { checkpoint, dir })
    }

    /// The checkpoint's folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The checkpoint.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }
}

/// `config.json` in `dir` for the first of `specs` whose conversion gives
/// back the file's hyperparameters ([`same_hparams`]), loaded.
fn rebuilt_config(
    f: &GgufFile,
    specs: &[&'static arch::ArchSpec],
    dir: &Path,
) -> Result<Config, ConvertError> {
    let mut first_error = None;
    for spec in specs {
        write_json(dir, "config.json", &config_json(f, spec)?)?;
        let cfg = Config::load(dir).map_err(|e| bad(f, format!("its hyperparameters: {e}")))?;
        match same_hparams(f, &cfg) {
            Ok(()) => return Ok(cfg),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.expect("at least one spec"))
}

fn write_json(dir: &Path, name: &str, v: &Json) -> Result<(), ConvertError> {
    let p = dir.join(name);
    let text = serde_json::to_vec_pretty(v).expect("JSON values serialize");
    std::fs::File::create(&p)
        .and_then(|mut file| file.write_all(&text))
        .map_err(|e| io(&p, e))
}

/// Every tensor of `f` under its HF name, read in place from `f`'s file, with
/// the rows the converter moved read back in the checkpoint's order.
fn weights(f: &GgufFile, cfg: &Config) -> Result<Shard, ConvertError> {
    let mut tensors = Vec::with_capacity(f.tensors.len());
    let generated = cfg.generated_tensors();
    for t in &f.tensors {
        // The RoPE factors: the config's (read from this tensor), not weights.
        if let Some((_, _, values)) = generated.iter().find(|g| g.0 == t.name) {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            if t.ty != GgmlType::F32 || f.tensor_data(t) != bytes.as_slice() {
                return Err(bad(
                    f,
                    format!("tensor {}: not its config's factors", t.name),
                ));
            }
            continue;
        }
        let names = hf_names(f, cfg, t)?;
        let dtype = match t.ty {
            // MXFP4 experts: read as F32, dequantized (`Mxfp4::Ggml`).
            GgmlType::F32 | GgmlType::MXFP4 => safetensors::Dtype::F32,
            GgmlType::F16 => safetensors::Dtype::F16,
            _ => safetensors::Dtype::BF16,
        };
        let at = |x: u64| usize::try_from(x).map_err(|_| bad(f, "tensor data past 2^64 bytes"));
        let start = at(f.data_offset + t.offset)?;
        // A stacked tensor `[n_expert, rows, cols]`: one view per expert, its slice.
        let mut shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
        if names.len() > 1 {
            if shape.first() != Some(&names.len()) {
                return Err(bad(
                    f,
                    format!(
                        "tensor {}: {shape:?} does not stack {} experts",
                        t.name,
                        names.len()
                    ),
                ));
            }
            shape.remove(0);
        }
        let per = at(t.n_bytes)? / names.len();
        for (e, name) in names.into_iter().enumerate() {
            let m = arch::map_name(cfg, &name)
                .ok()
                .flatten()
                .ok_or_else(|| bad(f, format!("tensor {}: no HF name", t.name)))?;
            if !m.transform.moves_rows_only() {
                unit_offset_read_back(f, t, m.transform)?;
            }
            if t.ty == GgmlType::MXFP4 && m.transform != arch::Transform::None {
                return Err(refuse(
                    f,
                    format!("stores MXFP4 tensor {} with its rows moved", t.name),
                ));
            }
            let from = start + e * per;
            tensors.push(ViewedTensor {
                name,
                dtype,
                shape: shape.clone(),
                bytes: from..from + per,
                stored_rows: m.transform,
                mxfp4: t.ty == GgmlType::MXFP4,
            });
        }
    }
    let header = usize::try_from(f.data_offset).map_err(|_| bad(f, "header past 2^64 bytes"))?;
    Shard::view(&f.path, header, tensors).map_err(|e| bad(f, e))
}

/// Whether `t` is a mixture's stacked expert tensor (`[n_expert, rows,
/// cols]`, more than one expert) in MXFP4, as gpt-oss ships its experts and
/// llama.cpp's converter and MXFP4_MOE write them: read in place, its blocks
/// dequantized as the forward pass reads them ([`Mxfp4::Ggml`]).
///
/// [`Mxfp4::Ggml`]: crate::hf::safetensors::Mxfp4::Ggml
fn stacked_mxfp4(t: &TensorInfo) -> bool {
    t.ty == GgmlType::MXFP4 && t.dims.len() == 3 && t.dims[2] > 1
}

/// A norm weight the converter stored as `1 + w` ([`arch::Transform::AddOne`],
/// Gemma's) is read back as `w = s - 1` ([`Shard::view`] subtracts on read)
/// when the forward pass's `1 + w` gives back every stored `s` (in f32),
/// as llama.cpp multiplies by `s`: so in F32 only (as converters write
/// norms), and not for the values below ½ whose `s - 1` rounds.
fn unit_offset_read_back(
    f: &GgufFile,
    t: &TensorInfo,
    transform: arch::Transform,
) -> Result<(), ConvertError> {
    if transform != arch::Transform::AddOne || t.ty != GgmlType::F32 {
        return Err(refuse(
            f,
            format!(
                "stores tensor {} as {:?} of its values, in {}",
                t.name, transform, t.ty
            ),
        ));
    }
    let data = f.tensor_data(t);
    if let Some(s) = data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .find(|&s| 1.0 + (s - 1.0) != s)
    {
        return Err(refuse(
            f,
            format!(
                "stores norm tensor {} as 1 + w, one of whose values ({s:e}) does not give back its \
                 w exactly",
                t.name
            ),
        ));
    }
    Ok(())
}

fn bad(f: &GgufFile, what: impl std::fmt::Display) -> ConvertError {
    ConvertError::Tensor {
        path: f.path.clone(),
        what: what.to_string(),
    }
}

fn io(p: &Path, error: std::io::Error) -> ConvertError {
    ConvertError::Io {
        path: p.to_path_buf(),
        error,
    }
}

/// What la-mix and `--target-bpw` say when they cannot run from `f`.
fn refuse(f: &GgufFile, why: impl std::fmt::Display) -> ConvertError {
    bad(
        f,
        format!(
            "la-mix and --target-bpw run the model's forward pass from a GGUF input only for \
             decoders (every family laquant converts but the encoders, mixtures of experts \
             included) in F32, F16 or BF16 (stacked experts in MXFP4 too) with a GPT-2-style \
             BPE or a SentencePiece vocabulary \
             and RoPE scaling none, linear, yarn, llama3's (rope_freqs.weight) or LongRoPE's \
             (rope_factors_long/short.weight); this one {why}. Convert \
             its Hugging Face checkpoint instead, or give a llama-quantize preset (--outtype \
             q4_k_m, with --imatrix FILE for importance)"
        ),
    )
}

/// The specs of the file's architecture (a GGUF architecture may stand for
/// several HF classes: `llama` for Llama and Mistral); refuses what the
/// forward pass cannot run from the file.
fn candidate_specs(f: &GgufFile) -> Result<Vec<&'static arch::ArchSpec>, ConvertError> {
    let name = f.get("general.architecture").and_then(Value::as_str);
    // A mixture's file has an expert count (Mixtral's architecture is `llama`).
    let experts = f
        .get(&format!("{}.expert_count", name.unwrap_or("?")))
        .and_then(Value::as_u64)
        .is_some_and(|n| n > 0);
    let mut specs: Vec<&'static arch::ArchSpec> = arch::ARCHS
        .iter()
        .copied()
        .filter(|s| Some(s.gguf_arch) == name)
        .collect();
    // A mixture's spec has per-expert rules, except a family whose checkpoint
    // stores its experts stacked (gpt-oss: their rules are the layer's, read
    // from the file as the checkpoint presents them); a dense file's has none.
    let stacked_in_checkpoint = experts && specs.iter().all(|s| s.tensors.experts.is_none());
    if !stacked_in_checkpoint {
        specs.retain(|s| s.tensors.experts.is_some() == experts);
    }
    let Some(spec) = specs.first() else {
        return Err(refuse(f, format!("is a {} model", name.unwrap_or("?"))));
    };
    let a = spec.gguf_arch;
    if spec.block.attention.kind == arch::AttentionKind::BidirectionalSeparateQkv {
        return Err(refuse(f, format!("is an encoder ({a})")));
    }
    if let Some(t) = f.tensors.iter().find(|t| {
        !matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) && !stacked_mxfp4(t)
    }) {
        return Err(refuse(f, format!("holds tensor {} in {}", t.name, t.ty)));
    }
    // Q's scalar: no key, llama.cpp derives it (read back by `config_json`).
    let query_scale = spec.block.attention.query_scale.map(|q| q.key);
    if let Some(key) = arch::block_config_keys(spec).into_iter().find(|k| {
        Some(*k) != query_scale
            && !arch::hparam_sources(spec)
                .iter()
                .any(|(_, s)| s.config_key() == *k)
    }) {
        return Err(refuse(
            f,
            format!("is a {a} model, whose forward pass reads config.json key {key}, which no {a}.* key carries"),
        ));
    }
    Ok(specs)
}

/// The `config.json` (as JSON) of `spec`'s first HF class for the
/// hyperparameters of `f`: each `{arch}.*` key read back into the config key
/// it was written from ([`arch::hparam_sources`]), the shape's rest from the
/// tensors (vocabulary size, tied output, attention biases), the rotated
/// share of a head and the RoPE scaling from their keys.
fn config_json(f: &GgufFile, spec: &arch::ArchSpec) -> Result<Json, ConvertError> {
    use arch::HparamSource;
    let a = spec.gguf_arch;
    let prefix = format!("{a}.");
    let embd = f
        .tensor("token_embd.weight")
        .ok_or_else(|| bad(f, "tensor token_embd.weight is missing"))?;
    let mut c = serde_json::Map::new();
    c.insert("architectures".into(), json!([spec.hf_classes[0]]));
    c.insert(
        "vocab_size".into(),
        json!(embd.dims.get(1).copied().unwrap_or(0)),
    );
    c.insert(
        "tie_word_embeddings".into(),
        json!(f.tensor("output.weight").is_none()),
    );
    let biased: Vec<_> = (spec.tensors.layer.iter())
        .filter(|r| r.bias == arch::BiasRule::IfAttentionBias)
        .collect();
    if !biased.is_empty() {
        let has = |r: &&arch::TensorRule| {
            f.tensor(&format!("blk.0.{}.bias", r.role.gguf_stem()))
                .is_some()
        };
        c.insert("attention_bias".into(), json!(biased.iter().any(has)));
    }
    let sources = arch::hparam_sources(spec);
    for (key, v) in &f.metadata {
        let Some((_, src)) = key
            .strip_prefix(&prefix)
            .and_then(|k| sources.iter().find(|(g, _)| g == k))
        else {
            continue;
        };
        let not = |what: &str| bad(f, format!("key {key} is {v:?}, not {what}"));
        let value = match src {
            // 0 stands for an absent key (a sliding window of none).
            HparamSource::Count(_) => match v.as_u64().ok_or_else(|| not("a count"))? {
                0 => continue,
                n => json!(n),
            },
            HparamSource::Number(_) => json!(v.as_f64().ok_or_else(|| not("a number"))?),
            HparamSource::Flag(_) => match v {
                Value::Bool(b) => json!(b),
                _ => return Err(not("a boolean")),
            },
        };
        c.entry(src.config_key()).or_insert(value);
    }
    let num = |key: &str| f.get(&format!("{prefix}{key}")).and_then(Value::as_f64);
    if spec.block.positions == arch::Positions::RopePartial {
        if let (Some(n), Some(h), Some(heads)) = (
            num("rope.dimension_count"),
            num("embedding_length"),
            num("attention.head_count"),
        ) {
            let head = (h as u64 / (heads as u64).max(1)) as f64;
            c.insert("partial_rotary_factor".into(), json!(n / head));
        }
    }
    if let Some(q) = spec.block.attention.query_scale {
        let need = |key: &str| {
            num(key).ok_or_else(|| bad(f, format!("key {prefix}{key} is missing or not a number")))
        };
        let (blocks, hidden) = (need("block_count")?, need("embedding_length")?);
        let heads = need("attention.head_count")?;
        let head_size = num("attention.key_length").unwrap_or(hidden / heads.max(1.0));
        let v = q.llama_cpp_value(blocks as u64, hidden as u64, heads as u64, head_size as u64);
        c.insert(q.key.into(), json!(v));
    }
    let mut c = Json::Object(c);
    rope_scaling(f, a, &mut c)?;
    Ok(c)
}

/// The RoPE scaling of `f` read back into `c`: the `rope.scaling.*` keys of
/// linear and yarn scaling, and the factors the converter generates as
/// tensors, carried as they are (not derived again from parameters): llama3's
/// `rope_freqs.weight` as [`crate::hf::config::RopeScaling::Frequencies`],
/// LongRoPE's `rope_factors_long.weight` and `rope_factors_short.weight` as
/// its `long_factor` and `short_factor` (its original context is a key,
/// its attention factor derived again and checked by [`same_hparams`]).
fn rope_scaling(f: &GgufFile, a: &str, c: &mut Json) -> Result<(), ConvertError> {
    let need = |key: &str| -> Result<f64, ConvertError> {
        let k = format!("{a}.{key}");
        f.get(&k)
            .and_then(Value::as_f64)
            .ok_or_else(|| bad(f, format!("key {k} is missing or not a number")))
    };
    let scaling = f
        .get(&format!("{a}.rope.scaling.type"))
        .and_then(Value::as_str);
    let from_tensors = match (
        rope_factors(f, "rope_freqs.weight")?,
        rope_factors(f, "rope_factors_long.weight")?,
        rope_factors(f, "rope_factors_short.weight")?,
    ) {
        (None, None, None) => None,
        (Some(factors), None, None) => Some((
            "rope_freqs.weight",
            json!({"rope_type": "rope_freqs", "factors": factors}),
        )),
        (None, Some(long), Some(short)) => Some((
            "rope_factors_long.weight and rope_factors_short.weight",
            json!({"rope_type": "longrope", "long_factor": long, "short_factor": short}),
        )),
        _ => {
            return Err(refuse(
                f,
                "holds RoPE factor tensors other than rope_freqs.weight alone or \
                 rope_factors_long.weight with rope_factors_short.weight",
            ))
        }
    };
    match (scaling, from_tensors) {
        (None | Some("none"), None) => {}
        (None | Some("none"), Some((_, r))) => c["rope_scaling"] = r,
        (Some("longrope"), Some((_, r))) if r["rope_type"] == "longrope" => c["rope_scaling"] = r,
        (Some(other), Some((tensors, _))) => {
            return Err(refuse(
                f,
                format!("scales its rotary embedding by {tensors} and by {other}"),
            ))
        }
        (Some("linear"), None) => {
            c["rope_scaling"] = json!({"type": "linear", "factor": need("rope.scaling.factor")?});
        }
        (Some("yarn"), None) => {
            let mut r = json!({"type": "yarn", "factor": need("rope.scaling.factor")?,
                "original_max_position_embeddings":
                    need("rope.scaling.original_context_length")? as u64});
            for (key, name) in [
                ("rope.scaling.yarn_ext_factor", "extrapolation_factor"),
                ("rope.scaling.yarn_attn_factor", "attention_factor"),
                ("rope.scaling.yarn_beta_fast", "beta_fast"),
                ("rope.scaling.yarn_beta_slow", "beta_slow"),
            ] {
                if let Some(v) = f.get(&format!("{a}.{key}")).and_then(Value::as_f64) {
                    r[name] = json!(v);
                }
            }
            c["rope_scaling"] = r;
        }
        (Some(other), None) => {
            return Err(refuse(f, format!("scales its rotary embedding by {other}")))
        }
    }
    Ok(())
}

/// The values of the 1-D F32 tensor `name` of `f` (a RoPE factor tensor), if
/// the file has it; as the converter writes them (llama-quantize copies them).
fn rope_factors(f: &GgufFile, name: &str) -> Result<Option<Vec<f32>>, ConvertError> {
    let Some(t) = f.tensor(name) else {
        return Ok(None);
    };
    if t.ty != GgmlType::F32 || t.dims.iter().filter(|&&d| d != 1).count() > 1 {
        return Err(refuse(
            f,
            format!(
                "holds {name} as {} {:?} (the converter writes a vector in F32)",
                t.ty, t.dims
            ),
        ));
    }
    Ok(Some(f.tensor_f32(t)?))
}

/// Every `{arch}.*` key of `f` is the one the rebuilt `cfg` converts to: the
/// same keys, the same values. A key the config cannot carry (or one read
/// back into another value) is refused by name, since the forward pass would
/// run another model.
fn same_hparams(f: &GgufFile, cfg: &Config) -> Result<(), ConvertError> {
    let prefix = format!("{}.", cfg.arch.gguf_arch);
    let ft = f
        .get("general.file_type")
        .and_then(Value::as_u64)
        .unwrap_or(0) as u32;
    let ours = arch::hparams_metadata(cfg, ft);
    let same = |x: &Value, y: &Value| x == y || (x.as_f64().is_some() && x.as_f64() == y.as_f64());
    for (k, v) in ours.iter().filter(|(k, _)| k.starts_with(&prefix)) {
        match f.get(k) {
            Some(g) if same(g, v) => {}
            g => {
                return Err(refuse(
                    f,
                    format!("has key {k} = {g:?}, which its rebuilt config.json gives as {v:?}"),
                ))
            }
        }
    }
    if let Some((k, _)) = f
        .metadata
        .iter()
        .find(|(k, _)| k.starts_with(&prefix) && !ours.iter().any(|(o, _)| o == k))
    {
        return Err(refuse(
            f,
            format!("has key {k}, which laquant cannot carry into a config.json"),
        ));
    }
    Ok(())
}

/// A string array key of the vocabulary.
fn strings<'a>(f: &'a GgufFile, key: &str) -> Result<Vec<&'a str>, ConvertError> {
    let v = f
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| bad(f, format!("key {key} is missing or not an array")))?;
    v.iter()
        .map(|x| {
            x.as_str()
                .ok_or_else(|| bad(f, format!("key {key} holds a non-string")))
        })
        .collect()
}

/// `tokenizer.json` and `tokenizer_config.json` for the vocabulary of `f`:
/// a GPT-2-style BPE one ([`bpe_model`]) or a SentencePiece one
/// ([`spm::tokenizer`]), its control tokens special added tokens and its
/// user-defined ones plain added tokens (matched in the text as llama.cpp
/// matches them before tokenizing the rest).
fn tokenizer_json(f: &GgufFile) -> Result<(Json, Json), ConvertError> {
    use crate::hf::tokenizer::token_type::{CONTROL, USER_DEFINED};
    let model = f.get("tokenizer.ggml.model").and_then(Value::as_str);
    if !matches!(model, Some("gpt2" | "llama")) {
        return Err(refuse(
            f,
            format!("has a {} vocabulary", model.unwrap_or("missing")),
        ));
    }
    let tokens = strings(f, "tokenizer.ggml.tokens")?;
    let types: Vec<i64> = match f.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(v) => v
            .iter()
            .map(|x| match x {
                Value::I32(t) => *t as i64,
                other => other.as_u64().map_or(1, |t| t as i64),
            })
            .collect(),
        None => Vec::new(),
    };
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, &t) in tokens.iter().enumerate() {
        vocab.insert(t.to_string(), json!(id));
        let ty = types.get(id).copied().unwrap_or(1);
        if ty == CONTROL as i64 || ty == USER_DEFINED as i64 {
            added.push(
                json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == CONTROL as i64}),
            );
        }
    }
    let mut tokenizer = if model == Some("llama") {
        spm::tokenizer(f, &tokens, vocab)?
    } else {
        bpe_model(f, vocab)?
    };
    tokenizer["added_tokens"] = Json::Array(added);
    let bos = f
        .get("tokenizer.ggml.bos_token_id")
        .and_then(Value::as_u64)
        .and_then(|id| tokens.get(id as usize));
    // llama.cpp adds BOS to a SentencePiece vocabulary's text unless the file
    // says not to, to a BPE one only when it says to.
    let add_bos = match f.get("tokenizer.ggml.add_bos_token") {
        Some(v) => matches!(v, Value::Bool(true)),
        None => model == Some("llama"),
    };
    let config = json!({"bos_token": bos, "add_bos_token": add_bos && bos.is_some()});
    Ok((tokenizer, config))
}

/// `tokenizer.json` (but its added tokens) of a GPT-2-style BPE vocabulary
/// `vocab`: its merges and the split regexes, `ignore_merges` and
/// normalizer llama.cpp's `tokenizer.ggml.pre` name stands for.
fn bpe_model(f: &GgufFile, vocab: serde_json::Map<String, Json>) -> Result<Json, ConvertError> {
    let pre = f
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let Some(row) = pretok::PRE_TABLE.iter().find(|r| r.name == pre) else {
        let known: Vec<&str> = pretok::PRE_TABLE.iter().map(|r| r.name).collect();
        return Err(refuse(
            f,
            format!(
                "has pre-tokenizer {pre} (laquant rebuilds {})",
                known.join(", ")
            ),
        ));
    };
    let merges = strings(f, "tokenizer.ggml.merges")?;
    let mut steps: Vec<Json> = row
        .regexes
        .iter()
        .map(|re| {
            // HF's ByteLevel(use_regex) splits with GPT-2's regex and then `\s+`.
            let re = if pretok::canonical_regex(re) == pretok::canonical_regex(row.regexes[0])
                && row.name == "gpt-2"
            {
                format!(r"{re}|\s+")
            } else {
                re.to_string()
            };
            json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false})
        })
        .collect();
    steps.push(
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
        "use_regex": false}),
    );
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [],
        "normalizer": row.normalizer.map(|n| json!({"type": n})),
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": steps},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
            "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": row.ignore_merges,
            "vocab": vocab, "merges": merges},
    }))
}

/// The HF names of a GGUF tensor: the spec's rule for its role, in its
/// layer; for a mixture's stacked tensor, the experts' tensors in order.
fn hf_names(f: &GgufFile, cfg: &Config, t: &TensorInfo) -> Result<Vec<String>, ConvertError> {
    let rules = &cfg.arch.tensors;
    let layer = crate::policy::presets::layer_of(&t.name);
    let rest = match layer {
        Some(l) => &t.name[format!("blk.{l}.").len()..],
        None => &t.name,
    };
    let (stem, suffix) = rest
        .rsplit_once('.')
        .ok_or_else(|| bad(f, format!("tensor {}: not a weight or bias name", t.name)))?;
    let stacked = rules.experts.map_or(&[][..], |x| x.stacked);
    if let (Some(l), Some(&(_, role)), "weight") = (
        layer,
        stacked.iter().find(|(_, r)| r.gguf_stem() == stem),
        suffix,
    ) {
        return Ok(arch::expert_names(cfg, l, role));
    }
    let table = if layer.is_some() {
        rules.layer
    } else {
        rules.global
    };
    let rule = table
        .iter()
        .find(|r| r.role.gguf_stem() == stem)
        .ok_or_else(|| {
            bad(
                f,
                format!("tensor {}: no {} tensor has this name", t.name, cfg.hf_arch),
            )
        })?;
    Ok(vec![match layer {
        Some(l) => format!("{}{l}.{}.{suffix}", rules.layer_prefix, rule.hf),
        None => format!("{}.{suffix}", rule.hf),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{ConvertOptions, OutType};

    /// The rebuilt checkpoint reads the GGUF's tensors in place: its folder holds
    /// only the JSON files, its one shard is the GGUF file, and every tensor reads
    /// as the checkpoint's own (Llama's permuted Q/K rows and GPT-NeoX's fused
    /// QKV rows put back, GPT-2's `Conv1D` weights as the `nn.Linear` weights
    /// they are read as), whole or by rows.
    #[test]
    fn rebuilt_checkpoint_reads_the_gguf_in_place() {
        for (name, moves_rows) in [("llama-bpe", true), ("gptneox", true), ("gpt2", false)] {
            rebuilt_reads_in_place(name, moves_rows);
        }
    }

    /// The fixtures whose F32 GGUF is refused, and the reason each one's
    /// message gives; every other fixture (every decoder family with a
    /// GPT-2-style BPE or SentencePiece vocabulary, mixtures and Gemma
    /// included) is rebuilt, its tensors read as the
    /// checkpoint's, and planned: each tensor's role found by its name.
    const REFUSED: &[(&str, &str)] = &[
        ("bert", "is an encoder (bert)"),
        ("bert-mlm", "is an encoder (bert)"),
        ("xlmr", "is an encoder (bert)"),
        ("xlmr-rerank", "is an encoder (bert)"),
    ];

    /// Every fixture of `fixtures/checks.txt`: rebuilt from its F32 GGUF with
    /// the checkpoint's tensors, or refused as [`REFUSED`] says.
    #[test]
    fn every_fixture_is_rebuilt_or_refused_by_name() {
        let root = env!("CARGO_MANIFEST_DIR");
        let list = std::fs::read_to_string(format!("{root}/fixtures/checks.txt")).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let mut refused = Vec::new();
        for name in list
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| l.split_whitespace().next())
        {
            let model = format!("{root}/fixtures/{name}");
            let f = f32_gguf(&model, &tmp.path().join(format!("{name}.gguf")));
            match Rebuilt::new(&f) {
                Ok(r) => {
                    let src = Checkpoint::open(&model).unwrap();
                    same_tensors(r.checkpoint(), &src, name);
                    same_forward(&r.checkpoint().config, &src.config, name);
                    // Every tensor of the file has a role of its architecture's
                    // tensor tables (the stacked experts, router and shared expert
                    // of a mixture too), as the calibrated policies plan it.
                    let opts = ConvertOptions {
                        outtype: OutType::parse("f16", false).unwrap(),
                        ..Default::default()
                    };
                    // Planning reads no data: MXFP4 experts (gpt-oss-mxfp4) as
                    // F16 are a requantization, allowed here.
                    let plan = super::super::plan(&f, &opts, true);
                    assert_eq!(plan.map(|p| p.len()).ok(), Some(f.tensors.len()), "{name}");
                }
                Err(e) => {
                    let want = REFUSED.iter().find(|r| r.0 == name).map(|r| r.1);
                    let msg = e.to_string();
                    assert!(want.is_some_and(|w| msg.contains(w)), "{name}: {msg}");
                    refused.push(name.to_string());
                }
            }
        }
        let want: Vec<&str> = REFUSED.iter().map(|r| r.0).collect();
        assert_eq!(refused, want);
    }

    /// The RoPE factor tensors are carried as they are: factors no llama3
    /// parameters give (each pair's own) are the rebuilt config's and the
    /// forward pass's, byte for byte; LongRoPE's both lists are; a file
    /// scaling by factors and by a `rope.scaling.type`, or holding only one
    /// of LongRoPE's lists, is refused naming them.
    #[test]
    fn rope_factors_are_carried_as_they_are() {
        use crate::calib::forward::{ForwardConfig, Rope};
        use crate::hf::config::RopeScaling;
        let tmp = tempfile::tempdir().unwrap();
        let root = env!("CARGO_MANIFEST_DIR");
        let llama3 = f32_gguf(
            &format!("{root}/fixtures/llama3-rope"),
            &tmp.path().join("llama3.gguf"),
        );
        let odd: Vec<f32> = (0..32).map(|i| 1.0 + (i * i) as f32 / 7.0).collect();
        let bytes: Vec<u8> = odd.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f = rewritten(&llama3, &tmp.path().join("odd.gguf"), vec![], |t| {
            (t.name == "rope_freqs.weight").then(|| bytes.clone())
        });
        let r = Rebuilt::new(&f).unwrap();
        let cfg = &r.checkpoint().config;
        assert_eq!(
            cfg.rope_scaling,
            Some(RopeScaling::Frequencies {
                factors: odd.clone()
            })
        );
        let rope = ForwardConfig::from_hf(cfg).unwrap().rope;
        assert_eq!(rope, Rope::Llama3 { factors: odd });
        let linear = vec![
            ("llama.rope.scaling.type".to_string(), Value::str("linear")),
            ("llama.rope.scaling.factor".to_string(), Value::F32(2.0)),
        ];
        let f = rewritten(&llama3, &tmp.path().join("both.gguf"), linear, |_| None);
        let e = Rebuilt::new(&f).err().unwrap().to_string();
        assert!(
            e.contains("scales its rotary embedding by rope_freqs.weight and by linear"),
            "{e}"
        );

        let phi3 = f32_gguf(
            &format!("{root}/fixtures/phi3"),
            &tmp.path().join("phi3.gguf"),
        );
        let r = Rebuilt::new(&phi3).unwrap();
        let Some(RopeScaling::LongRope {
            long_factor,
            short_factor,
            ..
        }) = &r.checkpoint().config.rope_scaling
        else {
            panic!("{:?}", r.checkpoint().config.rope_scaling)
        };
        for (name, got) in [
            ("rope_factors_long.weight", long_factor),
            ("rope_factors_short.weight", short_factor),
        ] {
            let want = phi3.tensor_f32(phi3.tensor(name).unwrap()).unwrap();
            assert_eq!(got, &want, "{name}");
        }
        let f = rewritten(&phi3, &tmp.path().join("short.gguf"), vec![], |t| {
            (t.name == "rope_factors_short.weight").then(Vec::new)
        });
        let e = Rebuilt::new(&f).err().unwrap().to_string();
        assert!(e.contains("RoPE factor tensors other than"), "{e}");
    }

    /// An MXFP4 GGUF's stacked experts (gpt-oss as openai ships it, in the
    /// converter's file) are read in place as ggml's blocks, dequantized: a
    /// scale byte 255 (E8M0's NaN, which llama.cpp refuses) is an error
    /// naming the tensor and its row when read, whole or by rows (the forward
    /// pass reads every row), and bytes that do not hold the tensor's blocks
    /// are refused naming it.
    #[test]
    fn mxfp4_experts_are_read_in_place_and_validated() {
        use crate::hf::safetensors::{Mxfp4, Shard, ViewedTensor};
        let tmp = tempfile::tempdir().unwrap();
        let model = format!("{}/fixtures/gpt-oss-mxfp4", env!("CARGO_MANIFEST_DIR"));
        let f = f32_gguf(&model, &tmp.path().join("in.gguf"));
        let name = "blk.1.ffn_up_exps.weight";
        let t = f.tensor(name).unwrap();
        assert_eq!(t.ty, GgmlType::MXFP4);
        let r = Rebuilt::new(&f).unwrap();
        let hf = "model.layers.1.mlp.experts.up_proj.weight";
        let e = r.checkpoint().shards.entry(hf).unwrap();
        assert_eq!(e.mxfp4.as_deref(), Some(&Mxfp4::Ggml));
        // In place: the blocks are the file's bytes, borrowed from its map.
        let rows = e.shape[..2].iter().product::<usize>();
        let q = r.checkpoint().shards.mxfp4_rows(hf, e, 0, rows).unwrap();
        assert!(matches!(q, std::borrow::Cow::Borrowed(_)));
        assert!(*q == *f.tensor_data(t));

        let nb = (t.dims[0] / 32) as usize;
        let mut bytes = f.tensor_data(t).to_vec();
        let bad_row = 3;
        bytes[(bad_row * nb + nb - 1) * 17] = 0xff;
        let g = rewritten(&f, &tmp.path().join("nan.gguf"), vec![], |x| {
            (x.name == name).then(|| bytes.clone())
        });
        let r = Rebuilt::new(&g).unwrap();
        let ck = r.checkpoint();
        let width = nb * 32;
        let mut row = vec![0f32; width];
        assert!(ck
            .tensor_rows_f32(hf, width, &[bad_row - 1], &mut row)
            .is_ok());
        for err in [
            ck.tensor_f32(hf).map(|_| ()),
            ck.tensor_rows_f32(hf, width, &[bad_row], &mut row),
        ] {
            let msg = err.unwrap_err().to_string();
            assert!(
                msg.contains(hf)
                    && msg.contains(&format!("row {bad_row}"))
                    && msg.contains("scale byte 255"),
                "{msg}"
            );
        }

        // Bytes one short of the tensor's blocks.
        let start = (f.data_offset + t.offset) as usize;
        let short = ViewedTensor {
            name: hf.into(),
            dtype: safetensors::Dtype::F32,
            shape: e.shape.clone(),
            bytes: start..start + t.n_bytes as usize - 1,
            stored_rows: arch::Transform::None,
            mxfp4: true,
        };
        let header = f.data_offset as usize;
        let msg = Shard::view(&f.path, header, vec![short])
            .err()
            .unwrap()
            .to_string();
        assert!(
            msg.contains(hf) && msg.contains("do not hold MXFP4"),
            "{msg}"
        );
    }

    /// `f` written to `out` with `extra` keys added and each tensor's bytes
    /// as `data` says (`None`: its own; `Some` empty: left out), reopened.
    fn rewritten(
        f: &GgufFile,
        out: &Path,
        extra: crate::gguf::Metadata,
        data: impl Fn(&TensorInfo) -> Option<Vec<u8>>,
    ) -> GgufFile {
        let mut meta = f.metadata.clone();
        meta.extend(extra);
        let tensors: Vec<(&TensorInfo, Vec<u8>)> = (f.tensors.iter())
            .map(|t| (t, data(t).unwrap_or_else(|| f.tensor_data(t).to_vec())))
            .filter(|(_, b)| !b.is_empty())
            .collect();
        let specs = (tensors.iter())
            .map(|(t, _)| crate::gguf::TensorSpec {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty: t.ty,
            })
            .collect();
        let file = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
        let mut w = crate::gguf::GgufWriter::new(file, &meta, specs).unwrap();
        for (t, b) in &tensors {
            w.write_tensor(&t.name, b).unwrap();
        }
        w.finish().unwrap();
        GgufFile::open(out).unwrap()
    }

    /// A SentencePiece vocabulary's rebuilt tokenizer (Llama 2's and
    /// Mistral's with the space prefix, Gemma's without) gives the calibration
    /// corpus, every language, the ids of the checkpoint's own tokenizer,
    /// BOS included (llama.cpp's ids of the same files: tests/gguf_input.rs,
    /// run by scripts/interop-gguf-input.sh).
    #[test]
    fn sentencepiece_vocabularies_tokenize_as_the_checkpoint() {
        use crate::calib::{corpus::Corpus, tokenize::TextTokenizer};
        let tmp = tempfile::tempdir().unwrap();
        let spm = [
            "tinyllama-spm",
            "mistral-spm",
            "gemma2",
            "gemma3",
            "gemma3-mm",
        ];
        for name in spm {
            let model = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
            let f = f32_gguf(&model, &tmp.path().join(format!("{name}.gguf")));
            let (json, config) = tokenizer_json(&f).unwrap();
            let ours = TextTokenizer::from_json(&json.to_string(), Some(&config)).unwrap();
            let theirs = TextTokenizer::from_dir(Path::new(&model)).unwrap();
            assert!(ours.bos().is_some(), "{name}");
            for d in Corpus::embedded().docs {
                let want = theirs.encode(&d.text).unwrap();
                assert_eq!(ours.encode(&d.text).unwrap(), want, "{name} {}", d.lang);
            }
        }
    }

    /// Our F32 GGUF of `model`, written to `out`.
    fn f32_gguf(model: &str, out: &Path) -> GgufFile {
        let opts = ConvertOptions {
            outtype: OutType::parse("f32", false).unwrap(),
            output: Some(out.to_path_buf()),
            ..Default::default()
        };
        crate::pipeline::convert(model, &opts, &crate::job::silent).unwrap();
        GgufFile::open(out).unwrap()
    }

    /// The rebuilt config runs the checkpoint's forward pass (RoPE factors
    /// included) and generates its tensors (the RoPE factors), the same values.
    fn same_forward(rebuilt: &Config, src: &Config, name: &str) {
        use crate::calib::forward::ForwardConfig;
        let g = |c: &Config| c.generated_tensors();
        assert_eq!(g(rebuilt), g(src), "{name}");
        assert_eq!(
            ForwardConfig::from_hf(rebuilt).unwrap(),
            ForwardConfig::from_hf(src).unwrap(),
            "{name}"
        );
    }

    /// Every tensor of `ck` reads as `src`'s tensor of that name.
    fn same_tensors(ck: &Checkpoint, src: &Checkpoint, name: &str) {
        let mut names = ck.tensor_names();
        let mut want = src.tensor_names();
        want.retain(|n| arch::map_name(&src.config, n).is_ok_and(|m| m.is_some()));
        names.sort();
        want.sort();
        assert_eq!(names, want, "{name}");
        for t in &names {
            assert_eq!(
                ck.tensor_f32(t).unwrap(),
                src.tensor_f32(t).unwrap(),
                "{name}: {t}"
            );
        }
    }

    fn rebuilt_reads_in_place(name: &str, moves_rows: bool) {
        let model = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("f32.gguf");
        let f = f32_gguf(&model, &out);
        let r = Rebuilt::new(&f).unwrap();
        let mut files: Vec<String> = std::fs::read_dir(r.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(
            files,
            ["config.json", "tokenizer.json", "tokenizer_config.json"]
        );
        let ck = r.checkpoint();
        assert_eq!(ck.shards.shards.len(), 1);
        assert_eq!(ck.shards.shards[0].path, out);
        let src = Checkpoint::open(&model).unwrap();
        let names = ck.tensor_names();
        assert_eq!(names.len(), f.tensors.len());
        let mut moved = 0;
        for name in &names {
            let e = ck.shards.entry(name).unwrap();
            moved += usize::from(e.stored_rows != arch::Transform::None);
            let want = src.tensor_f32(name).unwrap();
            assert_eq!(ck.tensor_f32(name).unwrap(), want, "{name}");
            let (rows, width) = (e.shape[0], want.len() / e.shape[0]);
            let pick: Vec<usize> = (0..rows).rev().step_by(3).collect();
            let mut got = vec![0f32; pick.len() * width];
            ck.tensor_rows_f32(name, width, &pick, &mut got).unwrap();
            for (g, &p) in got.chunks(width).zip(&pick) {
                assert_eq!(g, &want[p * width..(p + 1) * width], "{name} row {p}");
            }
        }
        assert_eq!(moved > 0, moves_rows, "{name}: rows moved in the file");
    }
}
