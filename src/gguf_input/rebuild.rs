//! The Hugging Face checkpoint a GGUF input was made from, rebuilt (its JSON
//! files in a temporary folder, its weights the file's), so la-mix and `--target-bpw` calibrate, measure and plan
//! on it exactly as on a checkpoint (the forward pass, the calibration cache
//! and the sensitivity measurement all read a [`crate::hf::Checkpoint`]):
//!
//! - `config.json` from the hyperparameters (`{arch}.block_count`, ...);
//! - `tokenizer.json` from the vocabulary (`tokenizer.ggml.tokens`, `merges`,
//!   and the split regexes, `ignore_merges` and normalizer llama.cpp's
//!   `tokenizer.ggml.pre` name stands for: [`pretok::PRE_TABLE`]);
//! - the weights: every tensor of the file read in place through its map
//!   under its HF name, in the file's own type (F32, F16 or BF16 are row-major
//!   already, so no value changes and nothing is copied to disk), the
//!   converter's row moves (Llama's Q/K permutation) undone row by row on read
//!   ([`crate::hf::safetensors::Shard::view`]).
//!
//! Only what the forward pass runs from such a file is accepted: dense `llama`,
//! `qwen2` and `qwen3` GGUFs (rope scaling none, linear or yarn), with a GPT-2-style BPE
//! vocabulary of a known pre-tokenizer, in F32, F16 or BF16; anything else is
//! refused with what to do instead. The calibration cache's fingerprint of the
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
        let (arch, hf_arch) = supported_arch(f)?;
        let (tokenizer, tokenizer_config) = tokenizer_json(f)?;
        let config = config_json(f, arch, hf_arch)?;
        let dir = tempfile::Builder::new()
            .prefix("laquant-gguf-")
            .tempdir()
            .map_err(|error| ConvertError::Io {
                path: std::env::temp_dir(),
                error,
            })?;
        write_json(dir.path(), "config.json", &config)?;
        write_json(dir.path(), "tokenizer.json", &tokenizer)?;
        write_json(dir.path(), "tokenizer_config.json", &tokenizer_config)?;
        let cfg =
            Config::load(dir.path()).map_err(|e| bad(f, format!("its hyperparameters: {e}")))?;
        let shards = Shards::single(weights(f, &cfg)?);
        let checkpoint = Checkpoint {
            dir: dir.path().to_path_buf(),
            config: cfg,
            shards,
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
    for t in &f.tensors {
        let name = hf_name(f, cfg, t)?;
        let m = arch::map_name(cfg, &name)
            .ok()
            .flatten()
            .ok_or_else(|| bad(f, format!("tensor {}: no HF name", t.name)))?;
        if !m.transform.moves_rows_only() {
            return Err(refuse(
                f,
                format!(
                    "changes the values of tensor {} ({:?})",
                    t.name, m.transform
                ),
            ));
        }
        let dtype = match t.ty {
            GgmlType::F32 => safetensors::Dtype::F32,
            GgmlType::F16 => safetensors::Dtype::F16,
            _ => safetensors::Dtype::BF16,
        };
        let at = |x: u64| usize::try_from(x).map_err(|_| bad(f, "tensor data past 2^64 bytes"));
        let start = at(f.data_offset + t.offset)?;
        tensors.push(ViewedTensor {
            name,
            dtype,
            shape: t.dims.iter().rev().map(|&d| d as usize).collect(),
            bytes: start..start + at(t.n_bytes)?,
            stored_rows: m.transform,
        });
    }
    let header = usize::try_from(f.data_offset).map_err(|_| bad(f, "header past 2^64 bytes"))?;
    Shard::view(&f.path, header, tensors).map_err(|e| bad(f, e))
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
             dense llama, qwen2 and qwen3 files in F32, F16 or BF16 with a GPT-2-style BPE \
             vocabulary, rope scaling none, linear or yarn; this one {why}. Convert its Hugging Face \
             checkpoint instead, or give a llama-quantize preset (--outtype q4_k_m, with \
             --imatrix FILE for importance)"
        ),
    )
}

/// The families whose checkpoint is rebuilt from a GGUF file: the dense Llama
/// layout's (no family is named outside `src/arch/`), each rebuilt as its spec's
/// first HF class.
const REBUILT: [&arch::ArchSpec; 3] = [
    &arch::llama::LLAMA,
    &arch::qwen2::QWEN2,
    &arch::qwen3::QWEN3,
];

/// The GGUF architecture and the HF one rebuilt for it; refuses the rest.
fn supported_arch(f: &GgufFile) -> Result<(&'static str, &'static str), ConvertError> {
    let arch = f.get("general.architecture").and_then(Value::as_str);
    let Some(spec) = REBUILT.iter().find(|s| Some(s.gguf_arch) == arch) else {
        return Err(refuse(f, format!("is a {} model", arch.unwrap_or("?"))));
    };
    let (arch, hf) = (spec.gguf_arch, spec.hf_classes[0]);
    if f.get(&format!("{arch}.expert_count"))
        .and_then(Value::as_u64)
        .is_some_and(|n| n > 0)
    {
        return Err(refuse(f, "is a mixture of experts"));
    }
    if f.tensor("rope_freqs.weight").is_some() {
        return Err(refuse(
            f,
            "scales its rotary embedding by rope_freqs.weight",
        ));
    }
    if let Some(t) = f
        .tensors
        .iter()
        .find(|t| !matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16))
    {
        return Err(refuse(f, format!("holds tensor {} in {}", t.name, t.ty)));
    }
    Ok((arch, hf))
}

/// `config.json` from the hyperparameters llama.cpp reads.
fn config_json(f: &GgufFile, arch: &str, hf_arch: &str) -> Result<Json, ConvertError> {
    let num = |key: &str| -> Result<Option<f64>, ConvertError> {
        let k = format!("{arch}.{key}");
        match f.get(&k) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| bad(f, format!("key {k} is {v:?}, not a number"))),
        }
    };
    let need = |key: &str| -> Result<f64, ConvertError> {
        num(key)?.ok_or_else(|| bad(f, format!("key {arch}.{key} is missing")))
    };
    let int = |x: f64| x as u64;
    let hidden = int(need("embedding_length")?);
    let heads = int(need("attention.head_count")?);
    let embd = f
        .tensor("token_embd.weight")
        .ok_or_else(|| bad(f, "tensor token_embd.weight is missing"))?;
    let mut c = json!({
        "architectures": [hf_arch],
        "model_type": arch,
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")?),
        "num_hidden_layers": int(need("block_count")?),
        "num_attention_heads": heads,
        "num_key_value_heads": int(num("attention.head_count_kv")?.unwrap_or(heads as f64)),
        "rms_norm_eps": need("attention.layer_norm_rms_epsilon")?,
        "rope_theta": num("rope.freq_base")?.unwrap_or(10000.0),
        "vocab_size": embd.dims.get(1).copied().unwrap_or(0),
        "tie_word_embeddings": f.tensor("output.weight").is_none(),
        "attention_bias": f.tensor("blk.0.attn_q.bias").is_some(),
        "hidden_act": "silu",
    });
    if let Some(n) = num("context_length")? {
        c["max_position_embeddings"] = json!(int(n));
    }
    if let Some(k) = num("attention.key_length")? {
        c["head_dim"] = json!(int(k));
    }
    // The rope scaling laquant's converter writes, read back.
    let scaling = f
        .get(&format!("{arch}.rope.scaling.type"))
        .and_then(Value::as_str);
    match scaling {
        None | Some("none") => {}
        Some("linear") => {
            c["rope_scaling"] = json!({"type": "linear", "factor": need("rope.scaling.factor")?});
        }
        Some("yarn") => {
            let mut r = json!({"type": "yarn", "factor": need("rope.scaling.factor")?,
                "original_max_position_embeddings":
                    int(need("rope.scaling.original_context_length")?)});
            for (key, name) in [
                ("rope.scaling.yarn_ext_factor", "extrapolation_factor"),
                ("rope.scaling.yarn_attn_factor", "attention_factor"),
                ("rope.scaling.yarn_beta_fast", "beta_fast"),
                ("rope.scaling.yarn_beta_slow", "beta_slow"),
            ] {
                if let Some(v) = num(key)? {
                    r[name] = json!(v);
                }
            }
            c["rope_scaling"] = r;
        }
        Some(other) => return Err(refuse(f, format!("scales its rotary embedding by {other}"))),
    }
    Ok(c)
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

/// `tokenizer.json` and `tokenizer_config.json` for the vocabulary of `f`.
fn tokenizer_json(f: &GgufFile) -> Result<(Json, Json), ConvertError> {
    use crate::hf::tokenizer::token_type::{CONTROL, USER_DEFINED};
    let model = f.get("tokenizer.ggml.model").and_then(Value::as_str);
    if model != Some("gpt2") {
        return Err(refuse(
            f,
            format!("has a {} vocabulary", model.unwrap_or("missing")),
        ));
    }
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
    let tokens = strings(f, "tokenizer.ggml.tokens")?;
    let merges = strings(f, "tokenizer.ggml.merges")?;
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
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": row.normalizer.map(|n| json!({"type": n})),
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": steps},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
            "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": row.ignore_merges,
            "vocab": vocab, "merges": merges},
    });
    let bos = f
        .get("tokenizer.ggml.bos_token_id")
        .and_then(Value::as_u64)
        .and_then(|id| tokens.get(id as usize));
    let add_bos = f
        .get("tokenizer.ggml.add_bos_token")
        .is_some_and(|v| matches!(v, Value::Bool(true)));
    let config = json!({"bos_token": bos, "add_bos_token": add_bos && bos.is_some()});
    Ok((tokenizer, config))
}

/// The HF name of a GGUF tensor: the spec's rule for its role, in its layer.
fn hf_name(f: &GgufFile, cfg: &Config, t: &TensorInfo) -> Result<String, ConvertError> {
    let rules = &cfg.arch.tensors;
    let layer = crate::policy::presets::layer_of(&t.name);
    let rest = match layer {
        Some(l) => &t.name[format!("blk.{l}.").len()..],
        None => &t.name,
    };
    let (stem, suffix) = rest
        .rsplit_once('.')
        .ok_or_else(|| bad(f, format!("tensor {}: not a weight or bias name", t.name)))?;
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
    Ok(match layer {
        Some(l) => format!("{}{l}.{}.{suffix}", rules.layer_prefix, rule.hf),
        None => format!("{}.{suffix}", rule.hf),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{ConvertOptions, OutType};

    /// The rebuilt checkpoint reads the GGUF's tensors in place: its folder holds
    /// only the JSON files, its one shard is the GGUF file, and every tensor reads
    /// as the checkpoint's own (Llama's permuted Q/K rows put back), whole or by rows.
    #[test]
    fn rebuilt_checkpoint_reads_the_gguf_in_place() {
        let model = format!("{}/fixtures/llama-bpe", env!("CARGO_MANIFEST_DIR"));
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("f32.gguf");
        let opts = ConvertOptions {
            outtype: OutType::parse("f32", false).unwrap(),
            output: Some(out.clone()),
            ..Default::default()
        };
        crate::pipeline::convert(&model, &opts, &crate::job::silent).unwrap();
        let f = GgufFile::open(&out).unwrap();
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
        assert!(moved > 0, "llama-bpe's Q/K rows are permuted in the file");
    }
}
