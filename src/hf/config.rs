//! `config.json` of a Hugging Face causal LM: the architecture and the
//! hyperparameters laquant needs, read from both config styles (top-level
//! `rope_theta`/`rope_scaling` and the newer `rope_parameters` object), with
//! errors that name the key and what is wrong with it.

use crate::arch::Role;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

/// The family of a checkpoint: its spec in [`crate::arch::ARCHS`].
pub type Arch = &'static crate::arch::ArchSpec;

/// RoPE scaling as llama.cpp handles it.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// `linear`: positions divided by `factor`.
    Linear {
        /// The scaling factor.
        factor: f64,
    },
    /// YaRN, with its optional parameters as the config gives them.
    Yarn {
        /// The scaling factor.
        factor: f64,
        /// The context the model was trained on.
        original_max_position_embeddings: u64,
        /// `extrapolation_factor`.
        extrapolation_factor: Option<f64>,
        /// `attention_factor`.
        attention_factor: Option<f64>,
        /// `beta_fast`.
        beta_fast: Option<f64>,
        /// `beta_slow`.
        beta_slow: Option<f64>,
    },
    /// Llama 3's frequency-dependent scaling.
    Llama3 {
        /// The scaling factor.
        factor: f64,
        /// `low_freq_factor`.
        low_freq_factor: f64,
        /// `high_freq_factor`.
        high_freq_factor: f64,
        /// The context the model was trained on.
        original_max_position_embeddings: u64,
    },
    /// Per rotation pair, the divisor of theta, given as such rather than
    /// derived from parameters: `{"rope_type": "rope_freqs", "factors": [...]}`,
    /// which the checkpoint rebuilt from a GGUF carries its
    /// `rope_freqs.weight` as (llama3's scaling, whatever parameters made it).
    Frequencies {
        /// The divisors, one per rotated pair.
        factors: Vec<f32>,
    },
    /// LongRoPE: per rotation pair, the divisor of theta for contexts
    /// up to `original_max_position_embeddings` (short) and beyond (long),
    /// and the factor scaling cos and sin, `√(1 + ln s / ln n₀)` for
    /// `s = max_position_embeddings / n₀ > 1` (the converter's).
    LongRope {
        /// Per rotation pair, beyond the original context.
        long_factor: Vec<f32>,
        /// Per rotation pair, within it.
        short_factor: Vec<f32>,
        /// The context the model was trained on.
        original_max_position_embeddings: u64,
        /// The cos/sin scale.
        attn_factor: f32,
    },
}

/// What is wrong with a config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // `error`, not `source`: the message already holds it, and a source would be
    // printed a second time by `{:#}` (anyhow's chain).
    /// The file cannot be read.
    #[error("{path}: cannot read: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not JSON.
    #[error("{path}: not valid JSON: {error}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        error: serde_json::Error,
    },
    /// A key is missing, of the wrong type or out of range.
    #[error("{path}: key `{key}` {what}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong with it.
        what: String,
    },
    #[error(
        "{path}: architecture `{arch}` is not supported (laquant converts {})",
        crate::arch::hf_classes().collect::<Vec<_>>().join(", ")
    )]
    /// An architecture laquant does not convert.
    Arch {
        /// The file.
        path: PathBuf,
        /// The `architectures` entry.
        arch: String,
    },
    #[error(
        "{path}: architecture `{arch}` is not supported: {}",
        crate::arch::ENCODER_ONLY_REASON
    )]
    /// An encoder laquant knows but does not convert.
    EncoderOnly {
        /// The file.
        path: PathBuf,
        /// The `architectures` entry.
        arch: String,
    },
}

/// A checkpoint's `config.json`, read and checked: the hyperparameters laquant
/// uses under their Hugging Face names, the family's spec, and the raw JSON.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file.
    pub path: PathBuf,
    /// The family's spec.
    pub arch: Arch,
    /// The `architectures` entry it was found by.
    pub hf_arch: String,
    /// `hidden_size`.
    pub hidden_size: usize,
    /// `intermediate_size`.
    pub intermediate_size: usize,
    /// `num_hidden_layers`.
    pub num_hidden_layers: usize,
    /// `num_attention_heads`.
    pub num_attention_heads: usize,
    /// `num_key_value_heads` (default: the attention heads).
    pub num_key_value_heads: usize,
    /// `head_dim` from the config, or hidden / heads.
    pub head_dim: usize,
    /// Whether `head_dim` was given explicitly (llama.cpp then writes key/value lengths).
    pub head_dim_explicit: bool,
    /// The norm epsilon (`rms_norm_eps`, or the family's LayerNorm key).
    pub rms_norm_eps: f64,
    /// `rope_theta`.
    pub rope_theta: f64,
    /// `vocab_size`.
    pub vocab_size: usize,
    /// `max_position_embeddings`, less [`Config::position_offset`] (as
    /// `_xlmroberta_tokenizer_init` lowers it).
    pub max_position_embeddings: Option<u64>,
    /// The rows dropped from the front of the learned position embeddings
    /// (`pad_token_id + 1`, XLM-R's: [`crate::arch::position_offset`]).
    pub position_offset: Option<u64>,
    /// `tie_word_embeddings`: the output head is the embedding.
    pub tie_word_embeddings: bool,
    /// `rope_scaling`, parsed.
    pub rope_scaling: Option<RopeScaling>,
    /// The `rope_type` string, if any (`default`, `linear`, `yarn`, `llama3`, ...).
    pub rope_type: Option<String>,
    /// `attention_bias`.
    pub attention_bias: bool,
    /// A mixture's expert count (`num_local_experts`, `num_experts` or
    /// `n_routed_experts`) and experts per token (`num_experts_per_tok`, ...).
    pub n_expert: Option<usize>,
    /// Experts per token.
    pub n_expert_used: Option<usize>,
    /// The experts' and the shared expert's widths (else `intermediate_size`).
    pub moe_intermediate_size: Option<usize>,
    /// The shared expert's width.
    pub shared_expert_intermediate_size: Option<usize>,
    /// `dtype` or `torch_dtype`.
    pub dtype: Option<String>,
    /// The rotated dimensions of a head: `head_dim`, or fewer with
    /// `partial_rotary_factor` / `rotary_pct`.
    pub rope_dim: usize,
    /// `use_parallel_residual` (default true).
    pub parallel_residual: bool,
    /// The pooling sentence-transformers declares beside the config
    /// (`modules.json` and its Pooling module's `config.json`) as gguf-py's
    /// `PoolingType` (mean 1, cls 2, last token 3), for the families whose
    /// hyperparameters write it ([`crate::arch::Hp::PoolingType`]).
    pub pooling_type: Option<u32>,
    /// `id2label`'s labels in id order, as transformers' config reads them
    /// (`num_labels` dummy `LABEL_i` without it, two by default), for the
    /// families that write them ([`crate::arch::Hp::ClassifierOutputLabels`]);
    /// empty for the others.
    pub classifier_labels: Vec<String>,
    /// The whole `config.json`.
    pub raw: Json,
}

/// `id2label` (an object of integer ids to strings) sorted by id; without
/// it, `num_labels` (default 2) labels `LABEL_i`.
fn classifier_labels(keys: &Keys) -> Result<Vec<String>, ConfigError> {
    let Some(map) = keys.get("id2label") else {
        let n = keys.uint("num_labels", 1 << 16)?.unwrap_or(2);
        return Ok((0..n).map(|i| format!("LABEL_{i}")).collect());
    };
    let bad = |what: String| keys.err("id2label", &what);
    let map = map
        .as_object()
        .ok_or_else(|| bad(format!("must be an object of ids to labels, found {map}")))?;
    let mut labels = map
        .iter()
        .map(|(id, label)| {
            let id: u32 = id
                .trim()
                .parse()
                .map_err(|_| bad(format!("id {id:?} is not a non-negative integer")))?;
            let label = label
                .as_str()
                .ok_or_else(|| bad(format!("label of id {id} is not a string: {label}")))?;
            Ok((id, label.to_string()))
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    labels.sort();
    Ok(labels.into_iter().map(|(_, l)| l).collect())
}

/// `TextModel._try_set_pooling_type`: the first module of `modules.json`
/// whose type ends in `Pooling`, its `config.json`'s mode; `None` without
/// `modules.json` or a Pooling module.
fn read_pooling_type(dir: &Path) -> Result<Option<u32>, ConfigError> {
    let read = |path: PathBuf| -> Result<Option<Json>, ConfigError> {
        if !path.is_file() {
            return Ok(None);
        }
        let text = super::read_capped(&path, super::limits::CONFIG_BYTES).map_err(|error| {
            ConfigError::Io {
                path: path.clone(),
                error,
            }
        })?;
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|error| ConfigError::Json { path, error })
    };
    let modules_path = dir.join("modules.json");
    let Some(modules) = read(modules_path.clone())? else {
        return Ok(None);
    };
    let bad = |path: &Path, key: &str, what: &str| ConfigError::Key {
        path: path.to_path_buf(),
        key: key.into(),
        what: what.into(),
    };
    let list = modules
        .as_array()
        .ok_or_else(|| bad(&modules_path, "(root)", "must be a list of modules"))?;
    let Some(module) = list.iter().find(|m| {
        m.get("type")
            .and_then(Json::as_str)
            .is_some_and(|t| t.ends_with("Pooling"))
    }) else {
        return Ok(None);
    };
    let sub = module
        .get("path")
        .and_then(Json::as_str)
        .ok_or_else(|| bad(&modules_path, "path", "of the Pooling module is missing"))?;
    if Path::new(sub)
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(bad(
            &modules_path,
            "path",
            &format!("of the Pooling module ({sub:?}) is not a folder inside the model"),
        ));
    }
    let pooling_path = dir.join(sub).join("config.json");
    let pooling = read(pooling_path.clone())?.ok_or_else(|| ConfigError::Io {
        path: pooling_path.clone(),
        error: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "missing (named by modules.json)",
        ),
    })?;
    let on = |k: &str| pooling.get(k).and_then(Json::as_bool) == Some(true);
    let mode = pooling.get("pooling_mode").and_then(Json::as_str);
    Ok(Some(if on("pooling_mode_mean_tokens") {
        1
    } else if on("pooling_mode_cls_token") {
        2
    } else if on("pooling_mode_lasttoken") {
        3
    } else {
        match mode {
            Some("mean") => 1,
            Some("cls") => 2,
            Some("lasttoken") => 3,
            _ => {
                return Err(bad(
                    &pooling_path,
                    "pooling_mode",
                    "names no pooling llama.cpp runs (mean, cls or last token)",
                ))
            }
        }
    }))
}

/// `config.json`'s keys as the converter reads them (`text_config` moved
/// to the root, the family's own names for the common keys filled in),
/// with typed readers whose errors name the key and the file.
struct Keys<'a> {
    obj: serde_json::Map<String, Json>,
    path: &'a Path,
}

impl<'a> Keys<'a> {
    /// The keys of `raw`, its architecture class and the spec converting it.
    fn read(raw: &Json, path: &'a Path) -> Result<(Keys<'a>, String, Arch), ConfigError> {
        let Some(root) = raw.as_object() else {
            return Err(key_error(path, "(root)", "must be a JSON object"));
        };
        // `text_config` is moved to the root by llama.cpp's converter.
        let mut keys = Keys {
            obj: root.clone(),
            path,
        };
        if let Some(Json::Object(tc)) = raw.get("text_config") {
            for (k, v) in tc {
                keys.obj.insert(k.clone(), v.clone());
            }
        }
        let hf_arch = match keys.get("architectures") {
            Some(Json::Array(a)) if !a.is_empty() => a[0]
                .as_str()
                .ok_or_else(|| keys.err("architectures", "must be a list of strings"))?
                .to_string(),
            Some(_) => return Err(keys.err("architectures", "must be a non-empty list of strings")),
            None => return Err(keys.err("architectures", "is missing")),
        };
        if crate::arch::ENCODER_ONLY.contains(&hf_arch.as_str()) {
            return Err(ConfigError::EncoderOnly {
                path: path.to_path_buf(),
                arch: hf_arch,
            });
        }
        let arch = crate::arch::by_hf_class(&hf_arch).ok_or_else(|| ConfigError::Arch {
            path: path.to_path_buf(),
            arch: hf_arch.clone(),
        })?;
        // The family's own names for the keys below (`layer_norm_eps`, `use_qkv_bias`).
        let aliased: Vec<(String, Json)> = arch
            .hparams
            .aliases
            .iter()
            .filter(|(key, _)| keys.get(key).is_none())
            .filter_map(|(key, alias)| Some((key.to_string(), keys.get(alias)?.clone())))
            .collect();
        keys.obj.extend(aliased);
        Ok((keys, hf_arch, arch))
    }

    fn err(&self, key: &str, what: &str) -> ConfigError {
        key_error(self.path, key, what)
    }

    /// A key's value; `null` counts as absent.
    fn get(&self, k: &str) -> Option<&Json> {
        self.obj.get(k).filter(|v| !v.is_null())
    }

    /// An integer from 1 to `max`, when present.
    fn uint(&self, k: &str, max: u64) -> Result<Option<u64>, ConfigError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 && n <= max => Ok(Some(n)),
                _ => Err(self.err(k, &format!("must be an integer from 1 to {max}, found {v}"))),
            },
        }
    }

    /// [`Keys::uint`] that must be present.
    fn req(&self, k: &str, max: u64) -> Result<u64, ConfigError> {
        self.uint(k, max)?.ok_or_else(|| self.err(k, "is missing"))
    }

    /// A number, when present.
    fn float(&self, k: &str) -> Result<Option<f64>, ConfigError> {
        match self.get(k) {
            None => Ok(None),
            // GGUF stores these as f32: 1e300 would become infinity there.
            Some(v) => match v.as_f64() {
                Some(x) if x.abs() <= f32::MAX as f64 => Ok(Some(x)),
                _ => Err(self.err(
                    k,
                    &format!("must be a finite number within f32's range, found {v}"),
                )),
            },
        }
    }

    /// A boolean, `default` when absent.
    fn flag(&self, k: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(k) {
            None => Ok(default),
            Some(Json::Bool(b)) => Ok(*b),
            Some(v) => Err(self.err(k, &format!("must be true or false, found {v}"))),
        }
    }

    /// `find_hparam`'s keys, first present wins: an expert count.
    fn first_count(&self, keys: &[&str]) -> Result<Option<u64>, ConfigError> {
        match keys.iter().find(|k| self.get(k).is_some()) {
            Some(k) => self.uint(k, MAX_EXPERTS),
            None => Ok(None),
        }
    }

    /// The family's constant factors, caps and sliding window, checked to be
    /// usable numbers, and its NoPE layers where llama.cpp places them.
    fn check_family(&self, arch: Arch, n_layers: usize) -> Result<(), ConfigError> {
        // The family's constant factors: numbers within f32's range when present.
        let s = arch.block.scales;
        for key in arch.hparams.extra_f32.iter().map(|e| e.0).chain(
            [s.embedding, s.attention, s.residual, s.logit_divisor]
                .into_iter()
                .flatten(),
        ) {
            self.float(key)?;
        }
        // Caps and the query scalar divide: positive numbers when present.
        let b = &arch.block;
        for key in [
            b.attention.query_scale.map(|q| q.key),
            b.attention.softcap,
            b.scales.final_softcap,
            b.attention.sliding.and_then(|s| s.rope_base),
        ]
        .into_iter()
        .flatten()
        {
            if self.float(key)?.is_some_and(|v| v <= 0.0) {
                return Err(self.err(key, "must be positive"));
            }
        }
        if let Some(s) = b.attention.sliding {
            self.uint(s.window, u32::MAX as u64)?;
        }
        self.check_nope(arch, n_layers)
    }

    /// NoPE layers: llama.cpp skips RoPE on every n-th layer whatever the
    /// config says, so a config that places them elsewhere would not run as
    /// trained.
    fn check_nope(&self, arch: Arch, n_layers: usize) -> Result<(), ConfigError> {
        let Some(n) = arch.block.nope_every else {
            return Ok(());
        };
        let want: Vec<u64> = (0..n_layers)
            .map(|i| u64::from(arch.block.rope_in_layer(i)))
            .collect();
        let ours = format!(
            "llama.cpp's {} has no RoPE in every layer i with (i + 1) % {n} == 0",
            arch.gguf_arch
        );
        if let Some(v) = self.get("no_rope_layers") {
            let got: Option<Vec<u64>> = v
                .as_array()
                .map(|a| a.iter().map(|x| x.as_u64().unwrap_or(2)).collect());
            if got.as_ref() != Some(&want) {
                return Err(self.err("no_rope_layers", &format!("is {v}, but {ours}: {want:?}")));
            }
        } else if let Some(v) = self
            .get("no_rope_layer_interval")
            .filter(|v| v.as_u64() != Some(n as u64))
        {
            return Err(self.err("no_rope_layer_interval", &format!("is {v}, but {ours}")));
        }
        Ok(())
    }
}

fn key_error(path: &Path, key: &str, what: &str) -> ConfigError {
    ConfigError::Key {
        path: path.to_path_buf(),
        key: key.into(),
        what: what.into(),
    }
}

/// The model's widths and counts, checked against each other.
struct Dims {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    vocab_size: usize,
    head_dim: usize,
    head_dim_explicit: bool,
    rope_dim: usize,
    parallel_residual: bool,
    pooling_type: Option<u32>,
}

impl Dims {
    fn read(keys: &Keys, arch: Arch) -> Result<Dims, ConfigError> {
        let hidden_size = keys.req("hidden_size", MAX_DIM)? as usize;
        let pooling_type = if arch
            .hparams
            .layout
            .is_some_and(|l| l.contains(&crate::arch::Hp::PoolingType))
        {
            read_pooling_type(keys.path.parent().unwrap_or(Path::new(".")))?
        } else {
            None
        };
        let intermediate_size = intermediate_size(keys, arch, hidden_size)?;
        let num_hidden_layers = keys.req("num_hidden_layers", MAX_LAYERS)? as usize;
        let num_attention_heads = keys.req("num_attention_heads", MAX_DIM)? as usize;
        let num_key_value_heads = keys
            .uint("num_key_value_heads", MAX_DIM)?
            .map(|n| n as usize)
            .unwrap_or(num_attention_heads);
        let vocab_size = keys.req("vocab_size", MAX_VOCAB)? as usize;
        let head_dim_cfg = keys.uint("head_dim", MAX_DIM)?;
        let mut d = Dims {
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            vocab_size,
            head_dim: head_dim_cfg
                .map(|h| h as usize)
                .unwrap_or(hidden_size / num_attention_heads),
            head_dim_explicit: head_dim_cfg.is_some(),
            rope_dim: 0,
            parallel_residual: true,
            pooling_type,
        };
        d.check_heads(keys, arch)?;
        d.rope_dim = d.rope_dim(keys)?;
        d.parallel_residual = keys.flag("use_parallel_residual", true)?;
        Ok(d)
    }

    /// Heads that divide the hidden size and each other, and an even head
    /// dimension.
    fn check_heads(&self, keys: &Keys, arch: Arch) -> Result<(), ConfigError> {
        let (hidden, heads, kv) = (
            self.hidden_size,
            self.num_attention_heads,
            self.num_key_value_heads,
        );
        if !self.head_dim_explicit && !hidden.is_multiple_of(heads) {
            return Err(keys.err(
                "num_attention_heads",
                &format!("({heads}) does not divide hidden_size ({hidden})"),
            ));
        }
        if !heads.is_multiple_of(kv) {
            return Err(keys.err(
                "num_key_value_heads",
                &format!("({kv}) does not divide num_attention_heads ({heads})"),
            ));
        }
        if arch.block.attention.qk_norm == crate::arch::QkNorm::Whole
            && arch.tensors.experts.is_some()
            && kv != heads
        {
            return Err(keys.err(
                "num_key_value_heads",
                &format!(
                    "({kv}) must equal num_attention_heads ({heads}): \
                     llama.cpp's {} loads a K norm as wide as the hidden state",
                    arch.gguf_arch
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(keys.err(
                "head_dim",
                &format!("({}) must be even for RoPE", self.head_dim),
            ));
        }
        Ok(())
    }

    /// Partial rotary (`rope.dimension_count`): the converter's
    /// int(partial_rotary_factor · hidden_size / num_attention_heads).
    fn rope_dim(&self, keys: &Keys) -> Result<usize, ConfigError> {
        let head_dim = self.head_dim;
        let Some(f) = keys
            .float("partial_rotary_factor")?
            .or(keys.float("rotary_pct")?)
        else {
            return Ok(head_dim);
        };
        let key = if keys.get("partial_rotary_factor").is_some() {
            "partial_rotary_factor"
        } else {
            "rotary_pct"
        };
        let n = (f * (self.hidden_size / self.num_attention_heads) as f64) as i64;
        if f <= 0.0 || f > 1.0 || n < 2 || n % 2 != 0 || n as usize > head_dim {
            return Err(keys.err(
                key,
                &format!(
                    "({f}) must give an even number of rotated dimensions from 2 to head_dim {head_dim}, gives {n}"
                ),
            ));
        }
        Ok(n as usize)
    }
}

/// `intermediate_size`; for a family whose FFN is four times the model
/// (GPT2Model writes 4 · n_embd as the FFN width, and llama.cpp's graph
/// loads the FFN at that width), that width, another being an error.
fn intermediate_size(keys: &Keys, arch: Arch, hidden_size: usize) -> Result<usize, ConfigError> {
    let fourfold = arch
        .hparams
        .layout
        .is_some_and(|l| l.contains(&crate::arch::Hp::FeedForwardFourfold));
    match keys.uint("intermediate_size", MAX_DIM * 8)? {
        None if fourfold => Ok(4 * hidden_size),
        Some(n) if fourfold && n as usize != 4 * hidden_size => {
            let key = arch
                .hparams
                .aliases
                .iter()
                .find(|(k, _)| *k == "intermediate_size")
                .map_or("intermediate_size", |(_, alias)| alias);
            Err(keys.err(
                key,
                &format!(
                    "is {n}, but llama.cpp's {} takes the FFN width as 4 × {hidden_size}",
                    arch.gguf_arch
                ),
            ))
        }
        n => Ok(n.ok_or_else(|| keys.err("intermediate_size", "is missing"))? as usize),
    }
}

/// A mixture's expert counts and widths.
struct Experts {
    n_expert: Option<usize>,
    n_expert_used: Option<usize>,
    moe_intermediate_size: Option<usize>,
    shared_expert_intermediate_size: Option<usize>,
}

impl Experts {
    fn read(keys: &Keys, arch: Arch) -> Result<Experts, ConfigError> {
        let n_expert =
            keys.first_count(&["num_local_experts", "num_experts", "n_routed_experts"])?;
        let n_expert_used = keys.first_count(&[
            "num_experts_per_tok",
            "num_experts_per_token",
            "top_k_experts",
        ])?;
        if arch.tensors.experts.is_some() {
            let n = n_expert.ok_or_else(|| {
                keys.err(
                    "num_experts",
                    "is missing (a mixture of experts needs its expert count)",
                )
            })?;
            match n_expert_used {
                None => return Err(keys.err("num_experts_per_tok", "is missing")),
                Some(k) if k > n => {
                    return Err(keys.err(
                        "num_experts_per_tok",
                        &format!("({k}) is larger than the expert count ({n})"),
                    ))
                }
                Some(_) => {}
            }
        }
        let width = |k: &str| -> Result<Option<usize>, ConfigError> {
            Ok(keys.uint(k, MAX_DIM * 8)?.map(|n| n as usize))
        };
        let moe_intermediate_size = width("moe_intermediate_size")?;
        let shared_expert_intermediate_size = width("shared_expert_intermediate_size")?;
        for (key, _) in arch.hparams.extra_u32 {
            keys.uint(key, u32::MAX as u64)?;
        }
        Ok(Experts {
            n_expert: n_expert.map(|n| n as usize),
            n_expert_used: n_expert_used.map(|n| n as usize),
            moe_intermediate_size,
            shared_expert_intermediate_size,
        })
    }
}

/// RoPE: llama.cpp reads `rope_parameters` (newer transformers) or
/// `rope_scaling`, with `rope_theta` either inside it or at the top level.
struct Rope {
    theta: f64,
    kind: Option<String>,
    scaling: Option<RopeScaling>,
}

/// The `rope_parameters` / `rope_scaling` object (its `full_attention` part
/// when it has one) and the key it came from, for errors.
struct RopeKeys<'k, 'a> {
    keys: &'k Keys<'a>,
    obj: Option<serde_json::Map<String, Json>>,
    key: &'static str,
}

impl RopeKeys<'_, '_> {
    fn err(&self, k: &str, what: &str) -> ConfigError {
        self.keys.err(&format!("{}.{k}", self.key), what)
    }

    fn get(&self, k: &str) -> Option<&Json> {
        self.obj
            .as_ref()
            .and_then(|o| o.get(k))
            .filter(|v| !v.is_null())
    }

    fn float(&self, k: &str) -> Result<Option<f64>, ConfigError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.abs() <= f32::MAX as f64)
                .map(Some)
                .ok_or_else(|| {
                    self.err(
                        k,
                        &format!("must be a finite number within f32's range, found {v}"),
                    )
                }),
        }
    }

    /// Scaling factors divide frequencies and wavelengths: zero or negative gives NaN.
    fn positive(&self, k: &str) -> Result<Option<f64>, ConfigError> {
        match self.float(k)? {
            Some(x) if x <= 0.0 => Err(self.err(k, &format!("must be positive, found {x}"))),
            x => Ok(x),
        }
    }

    fn original_ctx(&self) -> Result<Option<u64>, ConfigError> {
        match self
            .get("original_max_position_embeddings")
            .or_else(|| self.keys.get("original_max_position_embeddings"))
        {
            None => Ok(None),
            Some(v) => v.as_u64().filter(|&n| n >= 1).map(Some).ok_or_else(|| {
                self.err(
                    "original_max_position_embeddings",
                    "must be a positive integer",
                )
            }),
        }
    }

    fn yarn(&self) -> Result<Option<RopeScaling>, ConfigError> {
        let Some(factor) = self.positive("factor")? else {
            return Ok(None);
        };
        Ok(Some(RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: self.original_ctx()?.ok_or_else(|| {
                self.err("original_max_position_embeddings", "is required for yarn")
            })?,
            extrapolation_factor: self.float("extrapolation_factor")?,
            attention_factor: match self.positive("attention_factor")? {
                Some(x) => Some(x),
                None => self.positive("attn_factor")?,
            },
            beta_fast: self.float("beta_fast")?,
            beta_slow: self.float("beta_slow")?,
        }))
    }

    fn llama3(&self) -> Result<Option<RopeScaling>, ConfigError> {
        let low = self.positive("low_freq_factor")?.unwrap_or(1.0);
        let high = self.positive("high_freq_factor")?.unwrap_or(4.0);
        if high <= low {
            return Err(self.err(
                "high_freq_factor",
                &format!("({high}) must be larger than low_freq_factor ({low})"),
            ));
        }
        Ok(Some(RopeScaling::Llama3 {
            factor: self.positive("factor")?.unwrap_or(8.0),
            low_freq_factor: low,
            high_freq_factor: high,
            original_max_position_embeddings: self.original_ctx()?.unwrap_or(8192),
        }))
    }

    /// The list of positive numbers at `k`, one per rotated pair, in f32
    /// (`kind` names the scaling that requires it).
    fn factor_list(&self, k: &str, kind: &str, rope_dim: usize) -> Result<Vec<f32>, ConfigError> {
        let list = self
            .get(k)
            .and_then(Json::as_array)
            .ok_or_else(|| self.err(k, &format!("is required for {kind} (a list of numbers)")))?;
        let v: Option<Vec<f32>> = list
            .iter()
            .map(|x| {
                x.as_f64()
                    .filter(|x| *x > 0.0 && *x <= f32::MAX as f64)
                    .map(|x| x as f32)
            })
            .collect();
        let v = v.ok_or_else(|| self.err(k, "must hold positive numbers"))?;
        if v.len() != rope_dim / 2 {
            return Err(self.err(
                k,
                &format!(
                    "has {} factors, the {rope_dim} rotated dimensions need {}",
                    v.len(),
                    rope_dim / 2
                ),
            ));
        }
        Ok(v)
    }

    fn longrope(
        &self,
        rope_dim: usize,
        max_position_embeddings: Option<u64>,
    ) -> Result<Option<RopeScaling>, ConfigError> {
        let factors = |k: &str| self.factor_list(k, "longrope", rope_dim);
        let orig = self.original_ctx()?.ok_or_else(|| {
            self.keys.err(
                "original_max_position_embeddings",
                "is required for longrope",
            )
        })?;
        let scale = max_position_embeddings.unwrap_or(orig) as f64 / orig as f64;
        let attn_factor = if scale > 1.0 {
            (1.0 + scale.ln() / (orig as f64).ln()).sqrt()
        } else {
            1.0
        };
        Ok(Some(RopeScaling::LongRope {
            long_factor: factors("long_factor")?,
            short_factor: factors("short_factor")?,
            original_max_position_embeddings: orig,
            attn_factor: attn_factor as f32,
        }))
    }
}

impl Rope {
    fn read(
        keys: &Keys,
        rope_dim: usize,
        max_position_embeddings: Option<u64>,
    ) -> Result<Rope, ConfigError> {
        let obj = match keys
            .get("rope_parameters")
            .or_else(|| keys.get("rope_scaling"))
        {
            None => None,
            Some(Json::Object(o)) => Some(
                o.get("full_attention")
                    .and_then(|v| v.as_object())
                    .unwrap_or(o)
                    .clone(),
            ),
            Some(v) => {
                return Err(keys.err("rope_parameters", &format!("must be an object, found {v}")))
            }
        };
        let key = if keys.get("rope_parameters").is_some() {
            "rope_parameters"
        } else {
            "rope_scaling"
        };
        let r = RopeKeys { keys, obj, key };
        let theta = match r.float("rope_theta")? {
            Some(t) => t,
            None => keys.float("rope_theta")?.unwrap_or(10000.0),
        };
        if theta <= 0.0 {
            return Err(keys.err("rope_theta", "must be positive"));
        }
        let kind = r
            .get("rope_type")
            .or_else(|| r.get("type"))
            .and_then(|v| v.as_str())
            .map(String::from);
        let scaling = match kind.as_deref() {
            Some("linear") => r
                .positive("factor")?
                .map(|factor| RopeScaling::Linear { factor }),
            Some("yarn") => r.yarn()?,
            Some(t) if t.eq_ignore_ascii_case("llama3") => r.llama3()?,
            Some("longrope" | "su") => r.longrope(rope_dim, max_position_embeddings)?,
            Some("rope_freqs") => Some(RopeScaling::Frequencies {
                factors: r.factor_list("factors", "rope_freqs", rope_dim)?,
            }),
            Some("default") | None => None,
            Some(other) => {
                return Err(r.err(
                    "rope_type",
                    &format!(
                    "`{other}` is not supported (default, linear, yarn, llama3, longrope and rope_freqs are)"
                ),
                ))
            }
        };
        Ok(Rope {
            theta,
            kind,
            scaling,
        })
    }
}

/// Reasonable upper bounds; anything beyond is a corrupt or hostile config.
const MAX_DIM: u64 = 1 << 20;
const MAX_LAYERS: u64 = 4096;
const MAX_VOCAB: u64 = 1 << 24;
const MAX_EXPERTS: u64 = 1 << 16;

impl Config {
    /// Reads and checks `dir/config.json` (size-capped, a regular file).
    pub fn load(dir: &Path) -> Result<Config, ConfigError> {
        let path = dir.join("config.json");
        let text = super::read_capped(&path, super::limits::CONFIG_BYTES).map_err(|error| {
            ConfigError::Io {
                path: path.clone(),
                error,
            }
        })?;
        let raw: Json = serde_json::from_slice(&text).map_err(|error| ConfigError::Json {
            path: path.clone(),
            error,
        })?;
        Config::from_json(raw, path)
    }

    /// Checks a parsed config; `path` names it in errors.
    pub fn from_json(raw: Json, path: PathBuf) -> Result<Config, ConfigError> {
        let (keys, hf_arch, arch) = Keys::read(&raw, &path)?;
        let d = Dims::read(&keys, arch)?;
        keys.check_family(arch, d.num_hidden_layers)?;
        let rms_norm_eps = keys.float("rms_norm_eps")?.unwrap_or(1e-6);
        if rms_norm_eps <= 0.0 {
            return Err(keys.err("rms_norm_eps", "must be positive"));
        }
        let max_position_embeddings = keys.uint("max_position_embeddings", u32::MAX as u64)?;
        let pad_token_id = match keys.get("pad_token_id") {
            None | Some(Json::Null) => None,
            Some(v) => Some(v.as_u64().filter(|&p| p < u32::MAX as u64).ok_or_else(|| {
                keys.err("pad_token_id", &format!("must be a token id, found {v}"))
            })?),
        };
        let position_offset = crate::arch::position_offset(arch, pad_token_id);
        let max_position_embeddings = match (max_position_embeddings, position_offset) {
            (Some(m), Some(o)) => Some(m.checked_sub(o).filter(|&m| m > 0).ok_or_else(|| {
                keys.err(
                    "max_position_embeddings",
                    &format!("{m} leaves no positions after the first pad_token_id + 1 ({o})"),
                )
            })?),
            (m, _) => m,
        };
        let tie_word_embeddings = keys.flag(
            "tie_word_embeddings",
            arch.hparams.tie_word_embeddings_default,
        )?;
        let attention_bias = match keys.get("attention_bias") {
            Some(Json::Bool(b)) => *b,
            _ => arch.hparams.attention_bias_default,
        };
        let experts = Experts::read(&keys, arch)?;
        let dtype = keys
            .get("dtype")
            .or_else(|| keys.get("torch_dtype"))
            .and_then(|v| v.as_str())
            .map(String::from);
        let rope = Rope::read(&keys, d.rope_dim, max_position_embeddings)?;
        let classifier_labels = match arch.hparams.layout {
            Some(l) if l.contains(&crate::arch::Hp::ClassifierOutputLabels) => {
                classifier_labels(&keys)?
            }
            _ => Vec::new(),
        };
        Ok(Config {
            path,
            arch,
            hf_arch,
            hidden_size: d.hidden_size,
            intermediate_size: d.intermediate_size,
            num_hidden_layers: d.num_hidden_layers,
            num_attention_heads: d.num_attention_heads,
            num_key_value_heads: d.num_key_value_heads,
            head_dim: d.head_dim,
            head_dim_explicit: d.head_dim_explicit,
            rms_norm_eps,
            rope_theta: rope.theta,
            vocab_size: d.vocab_size,
            max_position_embeddings,
            position_offset,
            tie_word_embeddings,
            rope_scaling: rope.scaling,
            rope_type: rope.kind,
            attention_bias,
            n_expert: experts.n_expert,
            n_expert_used: experts.n_expert_used,
            moe_intermediate_size: experts.moe_intermediate_size,
            shared_expert_intermediate_size: experts.shared_expert_intermediate_size,
            dtype,
            rope_dim: d.rope_dim,
            parallel_residual: d.parallel_residual,
            pooling_type: d.pooling_type,
            classifier_labels,
            raw,
        })
    }

    /// A number of `config.json` (or its `text_config`) as f32, `None` when
    /// absent or zero (`convert_hf_to_gguf.py`'s `if x := hparams.get(key)`);
    /// its range was checked when the config was read.
    pub fn f32_param(&self, key: &str) -> Option<f32> {
        let v = self.param(key, Json::as_f64)?;
        (v != 0.0).then_some(v as f32)
    }

    /// A value of `config.json`'s `text_config`, else of its root, as `read`
    /// reads it.
    fn param<T>(&self, key: &str, read: fn(&Json) -> Option<T>) -> Option<T> {
        let get = |o: &Json| o.get(key).and_then(read);
        self.raw
            .get("text_config")
            .and_then(get)
            .or_else(|| get(&self.raw))
    }

    /// The labels `convert_hf_to_gguf.py` writes as `classifier.output_labels`:
    /// none when they are transformers' two defaults (`LABEL_0`, `LABEL_1`).
    pub fn classifier_output_labels(&self) -> Option<Vec<String>> {
        let l = &self.classifier_labels;
        let dummy = l.len() == 2 && l[0] == "LABEL_0";
        (!dummy && !l.is_empty()).then(|| l.clone())
    }

    /// An integer of `config.json` (or its `text_config`) as u32, `None` when
    /// absent; its range was checked when the config was read.
    pub fn u32_param(&self, key: &str) -> Option<u32> {
        u32::try_from(self.param(key, Json::as_u64)?).ok()
    }

    /// The tensors the converter generates from the config, in its order:
    /// llama3's `rope_freqs` (or the factors given as such), LongRoPE's long
    /// and short factors.
    pub fn generated_tensors(&self) -> Vec<(&'static str, Role, Vec<f32>)> {
        match &self.rope_scaling {
            Some(RopeScaling::LongRope {
                long_factor,
                short_factor,
                ..
            }) => vec![
                (
                    "rope_factors_long.weight",
                    Role::RopeFactorsLong,
                    long_factor.clone(),
                ),
                (
                    "rope_factors_short.weight",
                    Role::RopeFactorsShort,
                    short_factor.clone(),
                ),
            ],
            _ => self
                .rope_freqs()
                .map(|f| vec![("rope_freqs.weight", Role::RopeFreqs, f)])
                .unwrap_or_default(),
        }
    }

    /// llama.cpp's `rope_freqs.weight`: the divisors of theta per rotated
    /// pair, llama3's computed from its parameters ([`Self::llama3_rope_factors`])
    /// or the ones given as such ([`RopeScaling::Frequencies`]).
    pub fn rope_freqs(&self) -> Option<Vec<f32>> {
        match &self.rope_scaling {
            Some(RopeScaling::Frequencies { factors }) => Some(factors.clone()),
            _ => self.llama3_rope_factors(),
        }
    }

    /// llama.cpp's `rope_freqs.weight` for llama3 rope scaling: one factor per
    /// rotary frequency pair (computed in f32 as the converter does).
    pub fn llama3_rope_factors(&self) -> Option<Vec<f32>> {
        let RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } = self.rope_scaling.clone()?
        else {
            return None;
        };
        let dim = self.head_dim;
        let base = self.rope_theta as f32;
        let old = original_max_position_embeddings as f64;
        let low_wl = old / low_freq_factor;
        let high_wl = old / high_freq_factor;
        let mut out = Vec::with_capacity(dim / 2);
        for i in (0..dim).step_by(2) {
            let freq: f32 = 1.0 / base.powf(i as f32 / dim as f32);
            let wavelen: f32 = (2.0 * std::f64::consts::PI) as f32 / freq;
            let wl = wavelen as f64;
            if wl < high_wl {
                out.push(1.0);
            } else if wl > low_wl {
                out.push(factor as f32);
            } else {
                let smooth: f32 = ((old as f32 / wavelen) - low_freq_factor as f32)
                    / (high_freq_factor as f32 - low_freq_factor as f32);
                out.push(1.0 / ((1.0 - smooth) / factor as f32 + smooth));
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Json {
        json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 512,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
               "rms_norm_eps": 1e-5, "rope_theta": 500000.0})
    }

    #[test]
    fn both_rope_styles() {
        let c = Config::from_json(base(), "c.json".into()).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.head_dim, 64);
        let mut j = base();
        j.as_object_mut().unwrap().remove("rope_theta");
        j["rope_parameters"] = json!({"rope_theta": 10000.0, "rope_type": "default"});
        let c = Config::from_json(j, "c.json".into()).unwrap();
        assert_eq!(c.rope_theta, 10000.0);
        assert!(c.rope_scaling.is_none());
    }

    #[test]
    fn llama3_scaling_and_factors() {
        let mut j = base();
        j["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let c = Config::from_json(j, "c.json".into()).unwrap();
        let f = c.llama3_rope_factors().unwrap();
        assert_eq!(f.len(), 32);
        assert_eq!(f[0], 1.0);
        assert_eq!(*f.last().unwrap(), 8.0);
    }

    /// The error of reading config `j`.
    fn error_of(j: Json) -> String {
        Config::from_json(j, "c.json".into())
            .unwrap_err()
            .to_string()
    }

    /// Factors given as such (`rope_type` `rope_freqs`, a rebuilt GGUF's
    /// `rope_freqs.weight`) are the generated `rope_freqs.weight`, value for
    /// value; a list of the wrong length is an error naming the key.
    #[test]
    fn rope_freqs_given_as_such() {
        let mut j = base();
        let factors: Vec<f32> = (0..32).map(|i| 1.0 + i as f32 / 3.0).collect();
        j["rope_scaling"] = json!({"rope_type": "rope_freqs", "factors": factors});
        let c = Config::from_json(j.clone(), "c.json".into()).unwrap();
        assert_eq!(c.rope_freqs().as_ref(), Some(&factors));
        let g = c.generated_tensors();
        assert_eq!(
            (g.len(), g[0].0, &g[0].2),
            (1, "rope_freqs.weight", &factors)
        );
        j["rope_scaling"]["factors"] = json!([1.0, 2.0]);
        let e = error_of(j);
        assert!(
            e.contains("rope_scaling.factors") && e.contains("need 32"),
            "{e}"
        );
    }

    /// LongRoPE: both factor lists, one per rotated pair, become the generated
    /// tensors (long first); the attention factor is the converter's
    /// `√(1 + ln s / ln n₀)`; a list of the wrong length, a missing one or a
    /// missing original context is an error naming the key.
    #[test]
    fn longrope_factors_and_attention_factor() {
        let mut j = base();
        j["max_position_embeddings"] = json!(131072);
        j["original_max_position_embeddings"] = json!(4096);
        j["partial_rotary_factor"] = json!(0.75);
        let (short, long): (Vec<f64>, Vec<f64>) = (0..24)
            .map(|i| (1.0 + 0.1 * i as f64, 2.0 + i as f64))
            .unzip();
        j["rope_scaling"] = json!({"type": "longrope", "short_factor": short, "long_factor": long});
        let c = Config::from_json(j.clone(), "c.json".into()).unwrap();
        let Some(RopeScaling::LongRope { attn_factor, .. }) = c.rope_scaling else {
            panic!("{:?}", c.rope_scaling)
        };
        let want = (1.0 + (32f64).ln() / (4096f64).ln()).sqrt() as f32;
        assert_eq!(attn_factor, want);
        let g = c.generated_tensors();
        assert_eq!(
            g.iter().map(|t| t.0).collect::<Vec<_>>(),
            ["rope_factors_long.weight", "rope_factors_short.weight"]
        );
        // GGUF input knows a generated tensor's role by crate::arch::GENERATED_ROLES.
        assert!(g
            .iter()
            .all(|t| crate::arch::GENERATED_ROLES.contains(&t.1)));
        assert_eq!(g[0].2[3], 5.0);
        assert_eq!(g[1].2[3], 1.3f64 as f32);
        let mut bad = j.clone();
        bad["rope_scaling"]["long_factor"] = json!([1.0, 2.0]);
        let e = error_of(bad);
        assert!(
            e.contains("rope_scaling.long_factor") && e.contains("need 24"),
            "{e}"
        );
        let mut bad = j.clone();
        bad["rope_scaling"]
            .as_object_mut()
            .unwrap()
            .remove("short_factor");
        let e = error_of(bad);
        assert!(e.contains("rope_scaling.short_factor"), "{e}");
        let mut bad = j;
        bad.as_object_mut()
            .unwrap()
            .remove("original_max_position_embeddings");
        let e = error_of(bad);
        assert!(e.contains("original_max_position_embeddings"), "{e}");
    }

    /// A family's own key names (StableLM's `layer_norm_eps`, `use_qkv_bias`)
    /// are read; a partial rotary factor gives the rotated dimensions, and one
    /// that leaves none or an odd count is an error naming the key.
    #[test]
    fn family_key_names_and_partial_rotary() {
        let mut j = base();
        j["architectures"] = json!(["StableLmForCausalLM"]);
        j.as_object_mut().unwrap().remove("rms_norm_eps");
        j["layer_norm_eps"] = json!(1e-3);
        j["use_qkv_bias"] = json!(true);
        j["partial_rotary_factor"] = json!(0.25);
        j["use_parallel_residual"] = json!(false);
        let c = Config::from_json(j.clone(), "c.json".into()).unwrap();
        assert_eq!(c.rms_norm_eps, 1e-3);
        assert!(c.attention_bias);
        assert_eq!((c.rope_dim, c.head_dim), (16, 64));
        assert!(!c.parallel_residual);
        let c = Config::from_json(base(), "c.json".into()).unwrap();
        assert_eq!(c.rope_dim, 64);
        assert!(!c.attention_bias && c.parallel_residual);
        for bad in [
            json!(0.0),
            json!(0.01),
            json!(1.5),
            json!(-0.5),
            json!(0.11),
        ] {
            j["partial_rotary_factor"] = bad.clone();
            let e = Config::from_json(j.clone(), "c.json".into())
                .unwrap_err()
                .to_string();
            assert!(e.contains("partial_rotary_factor"), "{bad}: {e}");
        }
        j["partial_rotary_factor"] = json!(0.25);
        j["use_parallel_residual"] = json!("yes");
        let e = Config::from_json(j, "c.json".into())
            .unwrap_err()
            .to_string();
        assert!(e.contains("use_parallel_residual"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let mut j = base();
        j["num_attention_heads"] = json!(3);
        j.as_object_mut().unwrap().remove("num_key_value_heads");
        let e = Config::from_json(j, "x/config.json".into())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x/config.json")
                && e.contains("num_attention_heads")
                && e.contains("divide"),
            "{e}"
        );
        let mut j = base();
        j["architectures"] = json!(["GPTJForCausalLM"]);
        let e = Config::from_json(j, "c.json".into())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("GPTJForCausalLM") && e.contains("not supported"),
            "{e}"
        );
        let mut j = base();
        j.as_object_mut().unwrap().remove("hidden_size");
        let e = Config::from_json(j, "c.json".into())
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_size") && e.contains("missing"), "{e}");
    }

    /// SmolLM3's NoPE layers: a config placing them where llama.cpp does is
    /// read; one placing them elsewhere is refused, naming the key.
    #[test]
    fn nope_layers_must_be_where_llama_cpp_puts_them() {
        let mut j = base();
        j["architectures"] = json!(["SmolLM3ForCausalLM"]);
        j["num_hidden_layers"] = json!(5);
        j["no_rope_layers"] = json!([1, 1, 1, 0, 1]);
        j["no_rope_layer_interval"] = json!(4);
        assert!(Config::from_json(j.clone(), "c.json".into()).is_ok());
        for (key, v) in [
            ("no_rope_layers", json!([1, 1, 0, 1, 1])),
            ("no_rope_layers", json!([1, 1, 1, 0])),
            ("no_rope_layers", json!("all")),
        ] {
            let mut bad = j.clone();
            bad[key] = v;
            let e = Config::from_json(bad, "c.json".into())
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains("llama.cpp"), "{e}");
        }
        let mut bad = j.clone();
        bad.as_object_mut().unwrap().remove("no_rope_layers");
        bad["no_rope_layer_interval"] = json!(3);
        let e = error_of(bad);
        assert!(e.contains("no_rope_layer_interval"), "{e}");
    }
}
