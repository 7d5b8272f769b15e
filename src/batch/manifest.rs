//! `MANIFEST.toml` for `laquant batch`: the models of a zoo, the output types
//! (globally or per model) and the calibration settings, parsed with serde and
//! checked up front, then expanded into [`WorkItem`]s in a fixed order (models
//! in manifest order, each model's types in order) that sharding slices.
//!
//! ```toml
//! output = "zoo"                       # output root, relative to this file (default "out")
//! types = ["q4_k_m", "q8_0", "la-mix", { target_bpw = 4.5 }]
//!
//! [calib]                              # calibration, once per model, reused by its outputs
//! corpus = "corpus/calib"              # folder of <lang>.txt, "embedded" (default) or "none"
//! lang_weights = { en = 1, zh = 2 }    # or "en=1,zh=2"
//! ctx = 512
//! chunks = 8
//!
//! [[models]]
//! path = "models/Qwen2.5-0.5B-Instruct"  # a folder (relative to this file) ...
//! name = "qwen05"                       # optional output name (default: folder / repo name)
//!
//! [[models]]
//! hub = "HuggingFaceTB/SmolLM2-135M-Instruct"   # ... or a hub id in the local HF cache
//! types = ["q8_0", { type = "q4_k_m", pure = true }]
//! calib = { corpus = "none" }           # overrides fields of the global [calib]
//!
//! eval = { ctx = 64, chunks = 2 }     # overrides fields of the global [eval] (and --eval-* flags)
//!
//! [[models]]
//! path = "models/huge"
//! eval = false                          # never evaluated (`true`: evaluated with the global settings)
//!
//! [eval]                               # present: evaluate every output (as `batch --eval`)
//! text = "../shared/corpus/eval"       # folder of <lang>.txt (default: the embedded held-out part)
//! languages = ["en", "zh", "ru"]       # default: every language of the text
//! ctx = 128                            # default: 512 with a folder, 128 on the embedded text
//! chunks = 4                           # at most this many chunks per language
//! memory_gb = 16                       # for the f32 models being scored (default: half the free memory)
//! ```
//!
//! A model's `eval` table turns evaluation on for that model even without a
//! global `[eval]` or `--eval`; its fields override the global settings (the
//! manifest's `[eval]` with the command line's `--eval-*` flags over it) one by
//! one, and feed the model's evaluation fingerprint, so changing them redoes
//! only that model's evaluation.

use crate::calib;
use crate::eval::EvalText;
use crate::gguf::GgmlType;
use crate::job::{CalibSource, Calibration};
use crate::pipeline::OutType;
use crate::policy::presets::TensorTypeError;
use crate::policy::Overrides;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// What is wrong with a manifest; every message names the file and the entry.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    // `error`, not `source`: the message holds the cause, which a source would
    // repeat under anyhow's `{:#}` (tests/malformed.rs checks no message does).
    /// The file cannot be read (or is larger than a manifest can be).
    #[error("{}: cannot read: {error}", path.display())]
    Read {
        /// The manifest.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// The file is not TOML of the manifest's shape (a syntax error, an
    /// unknown key, a value of the wrong type).
    #[error("{}: {msg}", path.display())]
    Parse {
        /// The manifest.
        path: PathBuf,
        /// The TOML parser's message, with line and column.
        msg: String,
    },
    /// Well-formed, but an entry is unusable (no models, an unknown type, two
    /// outputs with one file name, conflicting calibration sources, ...).
    #[error("{}: {what}", path.display())]
    Invalid {
        /// The manifest.
        path: PathBuf,
        /// What is wrong, naming the entry (`models[1] (name): ...`).
        what: String,
    },
    /// A value of an entry is unusable (an unknown type, a bad regex, ...).
    #[error("{}: {at}", path.display())]
    Entry {
        /// The manifest.
        path: PathBuf,
        /// Where: `types`, `eval`, `models[1] (name): calib`...
        at: String,
        /// What is wrong.
        #[source]
        error: Box<EntryError>,
    },
}

/// What is wrong with one value of a manifest entry.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// `type` names no type or preset.
    #[error("`{0}`: not a known type or llama-quantize preset")]
    UnknownType(String),
    /// `target_bpw` out of range.
    #[error("target_bpw {0}: must be between 1.5 and 32")]
    TargetBpw(f64),
    /// Neither or both of `type` and `target_bpw`.
    #[error("each type needs exactly one of `type` or `target_bpw`")]
    TypeOrTargetBpw,
    /// `f16_budget` on a type other than la-mix.
    #[error("f16_budget applies to la-mix only")]
    F16BudgetNotLaMix,
    /// `f16_budget` out of range.
    #[error("f16_budget {0}: must be between 0 and 1")]
    F16Budget(f64),
    /// `output_type` or `embedding_type` names no ggml type.
    #[error("{key} `{ty}`: unknown type")]
    UnknownGgmlType {
        /// The key.
        key: &'static str,
        /// The type named.
        ty: String,
    },
    /// A `tensor_type` entry cannot be used.
    #[error(transparent)]
    TensorType(#[from] TensorTypeError),
    /// A `label` that cannot be part of a file name.
    #[error("label {0:?} cannot be part of a file name")]
    Label(String),
    /// A customized type without a `label`.
    #[error("a type with tensor_type, output_type or embedding_type needs a `label`")]
    NeedsLabel,
    /// `memory_gb` out of range.
    #[error("memory_gb {0}")]
    MemoryGb(MemoryError),
    /// The evaluation settings are invalid.
    #[error(transparent)]
    Eval(#[from] EvalSettingsError),
    /// A model's `eval` table is not of `[eval]`'s shape.
    #[error("{}", .0.to_string().trim_end().replace('\n', " "))]
    EvalTable(toml::de::Error),
    /// A model's `eval` is neither a boolean nor a table.
    #[error(
        "expected true, false or a table of text, languages, ctx, chunks, memory_gb; found a {0}"
    )]
    EvalKind(&'static str),
    /// Both a corpus and an imatrix.
    #[error("`corpus` and `imatrix` both give importance; use one")]
    BothSources,
    /// `lang_weights` cannot be parsed.
    #[error(transparent)]
    LangWeights(#[from] calib::CalibError),
    /// `ctx` 0.
    #[error("ctx must be at least 1")]
    Ctx,
}

/// A memory size that is not a positive number of GB.
#[derive(Debug, thiserror::Error)]
#[error("{0}: must be a positive number of GB")]
pub struct MemoryError(pub f64);

/// `--shard` that is not `I/N` with `0 <= I < N`.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("--shard {0}: expected I/N with 0 <= I < N (e.g. 0/4)")]
pub struct ShardError(pub String);

/// Evaluation settings that cannot be used ([`EvalSettings::validate`]).
#[derive(Debug, thiserror::Error)]
pub enum EvalSettingsError {
    /// Chunks too short to score.
    #[error("ctx {0}: at least 4 tokens (half of each chunk is context)")]
    Ctx(usize),
    /// No chunk to score.
    #[error("chunks 0 scores nothing; give at least 1")]
    Chunks,
    /// Not a language code.
    #[error("language {0:?} is not a language code such as \"en\"")]
    Language(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    output: Option<PathBuf>,
    #[serde(default)]
    types: Vec<RawType>,
    #[serde(default)]
    calib: RawCalib,
    #[serde(default)]
    models: Vec<RawModel>,
    eval: Option<RawEval>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEval {
    text: Option<PathBuf>,
    languages: Option<Vec<String>>,
    ctx: Option<usize>,
    chunks: Option<usize>,
    memory_gb: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCalib {
    corpus: Option<String>,
    lang_weights: Option<RawLangWeights>,
    ctx: Option<usize>,
    chunks: Option<usize>,
    imatrix: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawLangWeights {
    Text(String),
    Table(BTreeMap<String, f64>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    path: Option<PathBuf>,
    hub: Option<String>,
    name: Option<String>,
    types: Option<Vec<RawType>>,
    calib: Option<RawCalib>,
    /// `false`, `true` or a table of [`RawEval`] fields (read after parsing, so
    /// that errors can name the model).
    eval: Option<toml::Value>,
    tokenizer_pre: Option<String>,
    #[serde(default)]
    allow_nonfinite: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawType {
    Name(String),
    Table(RawTypeTable),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTypeTable {
    #[serde(rename = "type")]
    ty: Option<String>,
    target_bpw: Option<f64>,
    f16_budget: Option<f64>,
    #[serde(default)]
    pure: bool,
    #[serde(default)]
    tensor_type: Vec<String>,
    output_type: Option<String>,
    embedding_type: Option<String>,
    /// File-name label when the default one would collide.
    label: Option<String>,
}

/// One output type of a model.
#[derive(Debug, Clone)]
pub struct TypeSpec {
    /// What to write: a type or llama-quantize preset, `la-mix`, or a target size.
    pub outtype: OutType,
    /// Per-tensor overrides (`tensor_type`, `output_type`, `embedding_type`,
    /// `pure`), as `laquant convert`'s flags of the same names.
    pub overrides: Overrides,
    /// The file-name label: `<name>-<label>.gguf`.
    pub label: String,
    /// What the manifest said, canonicalized, for the options fingerprint.
    pub describe: String,
}

/// One model of the manifest.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// A folder path (resolved against the manifest's folder) or a hub id.
    pub model: String,
    /// The output name: the folder under the output root and the files' prefix.
    /// Unique in the manifest and a plain folder name.
    pub name: String,
    /// The outputs to make, in manifest order; at least one, labels unique.
    pub types: Vec<TypeSpec>,
    /// Where the model's importance comes from (the global `[calib]` under the
    /// model's own `calib` fields).
    pub calib: Calibration,
    /// `tokenizer_pre`: the pre-tokenizer name to write when laquant cannot
    /// identify the tokenizer (as `convert --tokenizer-pre`).
    pub tokenizer_pre: Option<String>,
    /// `allow_nonfinite`: convert even if weights hold NaN or infinity (as
    /// `convert --allow-nonfinite`).
    pub allow_nonfinite: bool,
    /// The model's own `eval` entry.
    pub eval: ModelEval,
}

/// Evaluation settings given field by field (a model's `eval` table, or the
/// global `[eval]` before the command line's flags): each field that is set
/// replaces the one below it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EvalOverride {
    /// Replaces [`EvalSettings::text`].
    pub text: Option<EvalText>,
    /// Replaces [`EvalSettings::languages`].
    pub languages: Option<Vec<String>>,
    /// Replaces [`EvalSettings::ctx`].
    pub ctx: Option<usize>,
    /// Replaces [`EvalSettings::chunks`].
    pub chunks: Option<usize>,
    /// Replaces [`EvalSettings::memory_bytes`].
    pub memory_bytes: Option<u64>,
}

impl EvalOverride {
    /// `below` with the fields set here replaced.
    pub fn over(&self, below: EvalSettings) -> EvalSettings {
        EvalSettings {
            text: self.text.clone().unwrap_or(below.text),
            languages: self.languages.clone().unwrap_or(below.languages),
            ctx: self.ctx.or(below.ctx),
            chunks: self.chunks.or(below.chunks),
            memory_bytes: self.memory_bytes.or(below.memory_bytes),
        }
    }
}

/// A model's `eval` entry in the manifest.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ModelEval {
    /// No `eval` key: evaluated with the global settings when there are any.
    #[default]
    Inherit,
    /// `eval = false`: never evaluated.
    Off,
    /// `eval = true` or a table: evaluated, with these fields over the global settings.
    On(EvalOverride),
}

impl ModelEval {
    /// The model's settings given the global ones (`None`: not evaluated).
    pub fn resolve(&self, global: Option<&EvalSettings>) -> Option<EvalSettings> {
        match self {
            ModelEval::Inherit => global.cloned(),
            ModelEval::Off => None,
            ModelEval::On(o) => Some(o.over(global.cloned().unwrap_or_default())),
        }
    }
}

/// How `batch --eval` scores the outputs (the manifest's `[eval]`, then the
/// command line's `--eval-*` flags over it).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EvalSettings {
    /// Evaluation text: a folder of `<lang>.txt`, or the embedded held-out part.
    pub text: EvalText,
    /// Only these languages (empty: every language of the text).
    pub languages: Vec<String>,
    /// Chunk length (`None`: `laquant eval`'s default for the text).
    pub ctx: Option<usize>,
    /// At most this many chunks per language.
    pub chunks: Option<usize>,
    /// Memory for the reference and the outputs being scored, all in f32
    /// (default: half of the available memory); more outputs than fit are
    /// scored in several passes. Does not change the results.
    pub memory_bytes: Option<u64>,
}

/// Parses a memory size in GB (`memory_gb`, `--eval-memory-gb`).
pub fn parse_memory_gb(gb: f64) -> Result<u64, MemoryError> {
    if gb.is_finite() && gb > 0.0 && gb < 1e9 {
        Ok((gb * 1e9) as u64)
    } else {
        Err(MemoryError(gb))
    }
}

impl EvalSettings {
    /// Checks values that can be checked without the text or a model.
    pub fn validate(&self) -> Result<(), EvalSettingsError> {
        if self.ctx.is_some_and(|c| c < 4) {
            return Err(EvalSettingsError::Ctx(self.ctx.unwrap_or(0)));
        }
        if self.chunks == Some(0) {
            return Err(EvalSettingsError::Chunks);
        }
        for l in &self.languages {
            if l.is_empty()
                || !l
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(EvalSettingsError::Language(l.clone()));
            }
        }
        Ok(())
    }
}

/// A parsed, checked manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The manifest file.
    pub path: PathBuf,
    /// The output root: `output`, relative to the manifest's folder (default `out`).
    pub output: PathBuf,
    /// The models, in manifest order; at least one, names unique.
    pub models: Vec<ModelSpec>,
    /// `[eval]`: evaluate every output with these settings.
    pub eval: Option<EvalSettings>,
}

/// One output to produce: model `model` (index into [`Manifest::models`]) in type `ty`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkItem {
    /// Index into [`Manifest::models`].
    pub model: usize,
    /// Index into that model's [`ModelSpec::types`].
    pub ty: usize,
}

impl Manifest {
    /// Reads and parses the manifest at `path` ([`Self::parse`]).
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = crate::hf::read_capped_string(path, crate::hf::limits::CONFIG_BYTES).map_err(
            |source| ManifestError::Read {
                path: path.to_path_buf(),
                error: source,
            },
        )?;
        Manifest::parse(&text, path)
    }

    /// Parses manifest text; relative paths are relative to `path`'s folder.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: path.to_path_buf(),
            msg: e.to_string().trim_end().to_string(),
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut p = Parser {
            path,
            base,
            global_calib: &raw.calib,
            global_types: Vec::new(),
            names: HashSet::new(),
        };
        if raw.models.is_empty() {
            return Err(p.invalid("no [[models]]: list at least one model".into()));
        }
        p.global_types = raw
            .types
            .iter()
            .map(|t| type_spec(t).map_err(p.entry("types".into())))
            .collect::<Result<Vec<_>, _>>()?;
        let models = (raw.models.iter().enumerate())
            .map(|(i, m)| p.model(i, m))
            .collect::<Result<Vec<_>, _>>()?;
        let eval = raw
            .eval
            .as_ref()
            .map(|e| eval_override(e, base).map(|o| o.over(EvalSettings::default())))
            .transpose()
            .map_err(p.entry("eval".into()))?;
        Ok(Manifest {
            path: path.to_path_buf(),
            output: base.join(raw.output.unwrap_or_else(|| PathBuf::from("out"))),
            models,
            eval,
        })
    }

    /// Every output, in manifest order.
    pub fn items(&self) -> Vec<WorkItem> {
        self.models
            .iter()
            .enumerate()
            .flat_map(|(m, spec)| (0..spec.types.len()).map(move |ty| WorkItem { model: m, ty }))
            .collect()
    }
}

/// What parsing one model of a manifest needs: the manifest's globals and the
/// names taken so far.
struct Parser<'a> {
    path: &'a Path,
    base: &'a Path,
    global_calib: &'a RawCalib,
    global_types: Vec<TypeSpec>,
    names: HashSet<String>,
}

impl Parser<'_> {
    fn invalid(&self, what: String) -> ManifestError {
        ManifestError::Invalid {
            path: self.path.to_path_buf(),
            what,
        }
    }

    fn entry(&self, at: String) -> impl FnOnce(EntryError) -> ManifestError {
        let path = self.path.to_path_buf();
        move |error| ManifestError::Entry {
            path,
            at,
            error: Box::new(error),
        }
    }

    /// `models[i]`, checked.
    fn model(&mut self, i: usize, m: &RawModel) -> Result<ModelSpec, ManifestError> {
        let at = format!("models[{i}]");
        let model = match (&m.path, &m.hub) {
            (Some(p), None) => self.base.join(p).to_string_lossy().into_owned(),
            (None, Some(h)) => h.clone(),
            _ => {
                return Err(self.invalid(format!(
                    "{at}: give exactly one of `path` (a folder) or `hub` (org/name)"
                )))
            }
        };
        let name = match &m.name {
            Some(n) => n.clone(),
            None => default_name(
                m.path.as_ref().map(|p| self.base.join(p)).as_deref(),
                m.hub.as_deref(),
            ),
        };
        let at = format!("{at} ({name})");
        if name.is_empty()
            || name.starts_with('.')
            || name.contains(['/', '\\'])
            || name.chars().any(|c| c.is_control())
        {
            return Err(self.invalid(format!(
                "{at}: name {name:?} cannot be a folder name; set `name`"
            )));
        }
        if super::state::is_bookkeeping(&name) {
            return Err(self.invalid(format!(
                "{at}: {name:?} is the name of a file batch keeps in the output folder \
                 (its state or summary); set `name` to another"
            )));
        }
        if !self.names.insert(name.clone()) {
            return Err(self.invalid(format!(
                "{at}: another model is also named {name:?}; set `name` to tell them apart"
            )));
        }
        let types = match &m.types {
            Some(t) => t
                .iter()
                .map(|t| type_spec(t).map_err(self.entry(format!("{at}: types"))))
                .collect::<Result<Vec<_>, _>>()?,
            None => self.global_types.clone(),
        };
        if types.is_empty() {
            return Err(self.invalid(format!(
                "{at}: no output types (set `types` globally or for this model)"
            )));
        }
        let mut labels = HashSet::new();
        for t in &types {
            if !labels.insert(t.label.to_ascii_lowercase()) {
                return Err(self.invalid(format!(
                    "{at}: two types write {name}-{}.gguf; give one a `label`",
                    t.label
                )));
            }
        }
        let calib = calib_settings(self.global_calib, m.calib.as_ref(), self.base)
            .map_err(self.entry(format!("{at}: calib")))?;
        let eval =
            model_eval(m.eval.as_ref(), self.base).map_err(self.entry(format!("{at}: eval")))?;
        Ok(ModelSpec {
            model,
            name,
            types,
            calib,
            tokenizer_pre: m.tokenizer_pre.clone(),
            allow_nonfinite: m.allow_nonfinite,
            eval,
        })
    }
}

/// Shard `index` of `count`: a contiguous slice of the items, so that a model's
/// outputs (and its one calibration) mostly stay in one shard.
pub fn shard(items: &[WorkItem], index: usize, count: usize) -> Vec<WorkItem> {
    // In u128: `index * n` overflows usize for an index near usize::MAX.
    let (n, c) = (items.len() as u128, count.max(1) as u128);
    let at = |i: u128| (i * n / c).min(n) as usize;
    let i = index as u128;
    items[at(i)..at(i + 1)].to_vec()
}

/// Parses `--shard I/N`.
pub fn parse_shard(s: &str) -> Result<(usize, usize), ShardError> {
    let bad = || ShardError(s.into());
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

fn default_name(path: Option<&Path>, hub: Option<&str>) -> String {
    if let Some(h) = hub {
        return h.rsplit('/').next().unwrap_or(h).to_string();
    }
    let p = path.unwrap_or(Path::new(""));
    p.file_name()
        .map(|n| n.to_os_string())
        .or_else(|| {
            p.canonicalize()
                .ok()
                .and_then(|c| c.file_name().map(|n| n.to_os_string()))
        })
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn type_spec(t: &RawType) -> Result<TypeSpec, EntryError> {
    let tab = match t {
        RawType::Name(s) => RawTypeTable {
            ty: Some(s.clone()),
            ..Default::default()
        },
        RawType::Table(t) => t.clone(),
    };
    let mut outtype = match (&tab.ty, tab.target_bpw) {
        (Some(s), None) => {
            OutType::parse(s, tab.pure).ok_or_else(|| EntryError::UnknownType(s.clone()))?
        }
        (None, Some(x)) => {
            if !(1.5..=32.0).contains(&x) {
                return Err(EntryError::TargetBpw(x));
            }
            OutType::TargetBpw(x)
        }
        _ => return Err(EntryError::TypeOrTargetBpw),
    };
    if let Some(b) = tab.f16_budget {
        if !matches!(outtype, OutType::LaMix { .. }) {
            return Err(EntryError::F16BudgetNotLaMix);
        }
        if !(0.0..=1.0).contains(&b) {
            return Err(EntryError::F16Budget(b));
        }
        outtype = OutType::LaMix { f16_budget: b };
    }
    let ggml = |key: &'static str, v: &Option<String>| -> Result<Option<GgmlType>, EntryError> {
        v.as_ref()
            .map(|s| {
                GgmlType::from_name(s)
                    .ok_or_else(|| EntryError::UnknownGgmlType { key, ty: s.clone() })
            })
            .transpose()
    };
    let overrides = Overrides {
        tensor_types: tab
            .tensor_type
            .iter()
            .map(|a| Overrides::parse_tensor_type(a))
            .collect::<Result<_, _>>()?,
        output_type: ggml("output_type", &tab.output_type)?,
        embedding_type: ggml("embedding_type", &tab.embedding_type)?,
        pure: tab.pure,
    };
    let customized =
        !tab.tensor_type.is_empty() || tab.output_type.is_some() || tab.embedding_type.is_some();
    let label = match &tab.label {
        Some(l) => {
            if l.is_empty() || l.contains(['/', '\\']) || l.chars().any(|c| c.is_control()) {
                return Err(EntryError::Label(l.clone()));
            }
            l.clone()
        }
        None if customized => return Err(EntryError::NeedsLabel),
        None => {
            let mut l = outtype.label();
            if let OutType::LaMix { f16_budget } = outtype {
                if f16_budget != 0.05 {
                    l = format!("la-mix-f16x{f16_budget}");
                }
            }
            if tab.pure {
                l.push_str("-pure");
            }
            l
        }
    };
    let describe = format!(
        "{outtype:?} pure={} tensor_type={:?} output_type={:?} embedding_type={:?}",
        tab.pure, tab.tensor_type, overrides.output_type, overrides.embedding_type
    );
    Ok(TypeSpec {
        outtype,
        overrides,
        label,
        describe,
    })
}

/// Reads `[eval]` fields, checking each value on its own.
fn eval_override(e: &RawEval, base: &Path) -> Result<EvalOverride, EntryError> {
    let o = EvalOverride {
        text: e.text.as_ref().map(|t| {
            if t.as_os_str() == "embedded" {
                EvalText::EmbeddedHoldout
            } else {
                EvalText::Dir(base.join(t))
            }
        }),
        languages: e.languages.clone(),
        ctx: e.ctx,
        chunks: e.chunks,
        memory_bytes: e
            .memory_gb
            .map(parse_memory_gb)
            .transpose()
            .map_err(EntryError::MemoryGb)?,
    };
    o.over(EvalSettings::default()).validate()?;
    Ok(o)
}

/// A model's `eval` entry: absent, `true`/`false`, or a table of `[eval]` fields.
fn model_eval(v: Option<&toml::Value>, base: &Path) -> Result<ModelEval, EntryError> {
    match v {
        None => Ok(ModelEval::Inherit),
        Some(toml::Value::Boolean(false)) => Ok(ModelEval::Off),
        Some(toml::Value::Boolean(true)) => Ok(ModelEval::On(EvalOverride::default())),
        Some(toml::Value::Table(t)) => {
            let raw: RawEval = toml::Value::Table(t.clone())
                .try_into()
                .map_err(EntryError::EvalTable)?;
            Ok(ModelEval::On(eval_override(&raw, base)?))
        }
        Some(other) => Err(EntryError::EvalKind(other.type_str())),
    }
}

fn calib_settings(
    global: &RawCalib,
    model: Option<&RawCalib>,
    base: &Path,
) -> Result<Calibration, EntryError> {
    let pick = |f: fn(&RawCalib) -> bool| model.filter(|m| f(m)).unwrap_or(global);
    // A model's own corpus or imatrix replaces both of the global ones.
    let src = pick(|c| c.corpus.is_some() || c.imatrix.is_some());
    let (corpus, imatrix) = (src.corpus.clone(), src.imatrix.clone());
    let source = match (corpus.as_deref(), imatrix) {
        (Some(_), Some(_)) if corpus.as_deref() != Some("none") => {
            return Err(EntryError::BothSources)
        }
        (_, Some(f)) => CalibSource::Imatrix(base.join(f)),
        (None | Some("embedded"), None) => CalibSource::Default,
        (Some("none"), None) => CalibSource::None,
        (Some(d), None) => CalibSource::Dir(base.join(d)),
    };
    let lang_weights = match &pick(|c| c.lang_weights.is_some()).lang_weights {
        None => Vec::new(),
        Some(RawLangWeights::Text(s)) => calib::parse_lang_weights(s)?,
        Some(RawLangWeights::Table(t)) => {
            let s: Vec<String> = t.iter().map(|(k, v)| format!("{k}={v}")).collect();
            calib::parse_lang_weights(&s.join(","))?
        }
    };
    let ctx = pick(|c| c.ctx.is_some()).ctx.unwrap_or(512);
    if ctx == 0 {
        return Err(EntryError::Ctx);
    }
    let chunks = pick(|c| c.chunks.is_some()).chunks;
    Ok(Calibration {
        source,
        lang_weights,
        ctx,
        chunks,
        ..Calibration::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(s, Path::new("/zoo/MANIFEST.toml"))
    }

    #[test]
    fn globals_models_and_overrides() {
        let m = parse(
            r#"
            types = ["q4_k_m", "Q8_0", "la-mix", { target_bpw = 4.5 }]
            [calib]
            corpus = "text"
            lang_weights = { en = 2, zh = 1 }
            chunks = 3
            [[models]]
            path = "models/llama"
            [[models]]
            hub = "org/Qwen-Mini"
            name = "qm"
            types = [{ type = "q4_k_m", pure = true }, { type = "la-mix", f16_budget = 0.1 }]
            calib = { corpus = "none" }
        "#,
        )
        .unwrap();
        assert_eq!(m.output, PathBuf::from("/zoo/out"));
        let a = &m.models[0];
        assert_eq!(a.model, "/zoo/models/llama");
        assert_eq!(a.name, "llama");
        let labels: Vec<&str> = a.types.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["Q4_K_M", "Q8_0", "la-mix", "4.5bpw"]);
        assert_eq!(a.calib.source, CalibSource::Dir("/zoo/text".into()));
        assert_eq!(a.calib.chunks, Some(3));
        assert_eq!(a.calib.lang_weights.len(), 2);
        let b = &m.models[1];
        assert_eq!((b.model.as_str(), b.name.as_str()), ("org/Qwen-Mini", "qm"));
        let labels: Vec<&str> = b.types.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["Q4_K_M-pure", "la-mix-f16x0.1"]);
        assert_eq!(b.calib.source, CalibSource::None);
        // Fields not overridden come from the global section.
        assert_eq!(b.calib.chunks, Some(3));
        assert_eq!(m.items().len(), 6);
    }

    #[test]
    fn errors_name_the_entry() {
        let e = parse("types = [\"q9_z\"]\n[[models]]\npath = \"a\"\n").unwrap_err();
        let e = crate::error_chain(&e);
        assert!(e.contains("MANIFEST.toml") && e.contains("q9_z"), "{e}");
        let e = parse("types = [\"f16\"]\n[[models]]\npath = \"a\"\nhub = \"o/a\"\n").unwrap_err();
        let e = crate::error_chain(&e);
        assert!(e.contains("models[0]") && e.contains("exactly one"), "{e}");
        let e =
            parse("types = [\"f16\"]\n[[models]]\npath = \"x/a\"\n[[models]]\npath = \"y/a\"\n")
                .unwrap_err();
        let e = crate::error_chain(&e);
        assert!(
            e.contains("models[1] (a)") && e.contains("also named"),
            "{e}"
        );
        let e = crate::error_chain(&parse("[[models]]\npath = \"a\"\n").unwrap_err());
        assert!(e.contains("no output types"), "{e}");
        let e = parse("types = [\"f16\", \"F16\"]\n[[models]]\npath = \"a\"\n").unwrap_err();
        let e = crate::error_chain(&e);
        assert!(e.contains("a-F16.gguf") && e.contains("label"), "{e}");
        let e = parse("typo = 1\n[[models]]\npath = \"a\"\n").unwrap_err();
        let e = crate::error_chain(&e);
        assert!(e.contains("typo"), "{e}");
        let e = parse("types = [{ type = \"q4_k_m\", tensor_type = [\"ffn=q8_0\"] }]\n[[models]]\npath = \"a\"\n")
            .unwrap_err();
        let e = crate::error_chain(&e);
        assert!(e.contains("needs a `label`"), "{e}");
        let e = parse("types = [\"f16\"]\n[calib]\ncorpus = \"c\"\nimatrix = \"i.gguf\"\n[[models]]\npath = \"a\"\n")
            .unwrap_err();
        let e = crate::error_chain(&e);
        assert!(e.contains("both give importance"), "{e}");
    }

    #[test]
    fn eval_section() {
        let m = parse("types = [\"f16\"]\n[[models]]\npath = \"a\"\n").unwrap();
        assert_eq!(m.eval, None);
        let m = parse("types = [\"f16\"]\n[eval]\n[[models]]\npath = \"a\"\n").unwrap();
        assert_eq!(m.eval, Some(EvalSettings::default()));
        let m = parse(
            "types = [\"f16\"]\n[eval]\ntext = \"ev\"\nlanguages = [\"en\", \"zh\"]\nctx = 64\nchunks = 2\n[[models]]\npath = \"a\"\n",
        )
        .unwrap();
        let e = m.eval.unwrap();
        assert_eq!(e.text, EvalText::Dir("/zoo/ev".into()));
        assert_eq!((e.languages.len(), e.ctx, e.chunks), (2, Some(64), Some(2)));
        for (bad, says) in [
            ("ctx = 2", "ctx 2"),
            ("chunks = 0", "chunks 0"),
            ("languages = [\"../x\"]", "language \"../x\""),
            ("lang = [\"en\"]", "lang"),
            ("memory_gb = -1.0", "memory_gb -1"),
        ] {
            let e = parse(&format!(
                "types = [\"f16\"]\n[eval]\n{bad}\n[[models]]\npath = \"a\"\n"
            ))
            .unwrap_err();
            let e = crate::error_chain(&e);
            assert!(
                e.contains("MANIFEST.toml") && e.contains(says),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn per_model_eval_overrides_the_global_settings_field_by_field() {
        let m = parse(
            r#"
            types = ["f16"]
            [eval]
            languages = ["en", "zh"]
            ctx = 64
            chunks = 2
            [[models]]
            path = "a"
            [[models]]
            path = "b"
            eval = { chunks = 1, text = "ev", memory_gb = 2 }
            [[models]]
            path = "c"
            eval = false
            [[models]]
            path = "d"
            eval = true
        "#,
        )
        .unwrap();
        let g = m.eval.clone().unwrap();
        assert_eq!(m.models[0].eval, ModelEval::Inherit);
        assert_eq!(m.models[0].eval.resolve(Some(&g)), Some(g.clone()));
        let b = m.models[1].eval.resolve(Some(&g)).unwrap();
        assert_eq!(
            b,
            EvalSettings {
                text: EvalText::Dir("/zoo/ev".into()),
                chunks: Some(1),
                memory_bytes: Some(2_000_000_000),
                ..g.clone()
            }
        );
        assert_eq!(m.models[2].eval.resolve(Some(&g)), None);
        assert_eq!(m.models[3].eval.resolve(Some(&g)), Some(g.clone()));
        // Without global settings only a model's own entry turns evaluation on,
        // the fields it does not set at their defaults.
        assert_eq!(m.models[0].eval.resolve(None), None);
        assert_eq!(
            m.models[1].eval.resolve(None),
            Some(EvalSettings {
                text: EvalText::Dir("/zoo/ev".into()),
                chunks: Some(1),
                memory_bytes: Some(2_000_000_000),
                ..Default::default()
            })
        );
        assert_eq!(
            m.models[3].eval.resolve(None),
            Some(EvalSettings::default())
        );
        // "embedded" names the embedded text, as in [eval].
        let m = parse(
            "types = [\"f16\"]\n[eval]\ntext = \"ev\"\n[[models]]\npath = \"a\"\neval = { text = \"embedded\" }\n",
        )
        .unwrap();
        assert_eq!(
            m.models[0].eval.resolve(m.eval.as_ref()).unwrap().text,
            EvalText::EmbeddedHoldout
        );
    }

    #[test]
    fn bad_per_model_eval_keys_name_the_file_the_model_and_the_key() {
        for (bad, says) in [
            ("ctx = 2", "ctx 2"),
            ("chunks = 0", "chunks 0"),
            ("lang = [\"en\"]", "`lang`"),
            ("memory_gb = 0.0", "memory_gb 0"),
            ("languages = [\"a b\"]", "language \"a b\""),
            ("ctx = \"x\"", "expected usize in `ctx`"),
            ("chunks = -1", "in `chunks`"),
        ] {
            let e = parse(&format!(
                "types = [\"f16\"]\n[[models]]\npath = \"a\"\n[[models]]\npath = \"b\"\nname = \"bee\"\neval = {{ {bad} }}\n"
            ))
            .unwrap_err();
            let e = crate::error_chain(&e);
            assert!(
                e.contains("MANIFEST.toml")
                    && e.contains("models[1] (bee): eval")
                    && e.contains(says),
                "{bad}: {e}"
            );
        }
        let e = parse("types = [\"f16\"]\n[[models]]\npath = \"a\"\neval = 3\n").unwrap_err();
        let e = crate::error_chain(&e);
        assert!(
            e.contains("MANIFEST.toml")
                && e.contains("models[0] (a): eval")
                && e.contains("integer"),
            "{e}"
        );
    }

    #[test]
    fn shards_partition_the_items_in_order() {
        let items: Vec<WorkItem> = (0..7)
            .map(|i| WorkItem {
                model: i / 3,
                ty: i % 3,
            })
            .collect();
        for n in 1..=9 {
            let joined: Vec<WorkItem> = (0..n).flat_map(|i| shard(&items, i, n)).collect();
            assert_eq!(joined, items, "{n} shards");
        }
        assert_eq!(parse_shard("1/4"), Ok((1, 4)));
        assert!(parse_shard("4/4").is_err() && parse_shard("0/0").is_err());
        assert!(parse_shard("1").is_err() && parse_shard("a/2").is_err());
        // Issue 19: overflowed in release builds (index * len).
        let (i, n) = parse_shard("9223372036854775807/9223372036854775808").unwrap();
        let items: Vec<WorkItem> = (0..3).map(|m| WorkItem { model: m, ty: 0 }).collect();
        assert_eq!(shard(&items, i, n), items[2..].to_vec());
        assert!(shard(&items, 0, n).is_empty());
    }
}
