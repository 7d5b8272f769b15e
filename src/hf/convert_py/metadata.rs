//! The `general.*` keys: reading the folder (`Metadata.load_model_card`,
//! `load_hf_parameters`, `load_generation_config`), the heuristics
//! (`apply_metadata_heuristic`, `Metadata.load`) and the writing
//! (`set_type` + `set_gguf_meta_model` with `GGUFWriter`'s types).

use super::naming::{id_to_title, model_id_components, size_label, HF_URL};
use super::pystr::py_strip;
use super::pyvalue::{dict_insert, py_json, PyValue};
use super::yaml::{parse_model_card, YAML_EXPANSION};
use crate::gguf::{Metadata, Value, ValueType};
use crate::hf::{limits, read_capped};
use std::path::{Component, Path, PathBuf};

/// `GGML_QUANT_VERSION` (gguf-py `constants.py`, `GGML_QNT_VERSION` in ggml.h):
/// the value of `general.quantization_version`, which convert writes after the
/// architecture's own keys (so it is not part of [`general_metadata`]).
pub const QUANTIZATION_VERSION: u32 = 2;

/// What the `general.*` keys are computed from.
#[derive(Debug, Clone, Copy)]
pub struct CardInput<'a> {
    /// The checkpoint folder, as convert would be given it: its last component
    /// is the name of last resort (`.` gives an empty name, as in convert, so
    /// pass a canonical path).
    pub dir: &'a Path,
    /// convert's `--model-name`: replaces the name found by the heuristics.
    pub model_name: Option<&'a str>,
    /// Elements of every tensor written (`GGUFWriter.get_total_parameter_count`).
    pub total_params: u64,
    /// Elements outside `*_exps.*` tensors.
    pub shared_params: u64,
    /// Elements of one expert, summed over the `*_exps.*` tensors.
    pub expert_params: u64,
    /// Experts per layer (0 for a dense model).
    pub expert_count: u64,
}

/// A model card or config that convert_hf_to_gguf.py's metadata step cannot read.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    // `error`, not `source`: the message holds the cause, which a source would
    // repeat under anyhow's `{:#}` (tests/malformed.rs checks no message does).
    /// The file cannot be read.
    #[error("{path}: cannot read: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not UTF-8.
    #[error("{path}: not valid UTF-8 text")]
    Utf8 {
        /// The file.
        path: PathBuf,
    },
    /// The card's YAML front matter does not parse.
    #[error("{path}: YAML front matter: {message}")]
    Yaml {
        /// The card.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A JSON file does not parse.
    #[error("{path}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A key holds a value of a shape the converter fails on.
    #[error("{path}: `{key}`: {message} (convert_hf_to_gguf.py fails on it too)")]
    Value {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong with its value.
        message: String,
    },
}

fn read_text(path: &Path) -> Result<Option<String>, CardError> {
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = read_capped(path, limits::CARD_BYTES).map_err(|source| CardError::Io {
        path: path.to_path_buf(),
        error: source,
    })?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| CardError::Utf8 {
            path: path.to_path_buf(),
        })
}

/// `README.md` front matter (`{}` without one).
fn load_model_card(dir: &Path) -> Result<PyValue, CardError> {
    let path = dir.join("README.md");
    match read_text(&path)? {
        None => Ok(PyValue::Dict(Vec::new())),
        Some(text) => match parse_model_card(&text) {
            // A card built to exhaust memory is not worth failing a conversion
            // over (in `batch`, every other model's too): its keys are skipped.
            Err(message) if message.contains(YAML_EXPANSION) => {
                eprintln!(
                    "laquant: warning: {}: {message}; the model card's metadata is skipped",
                    path.display()
                );
                Ok(PyValue::Dict(Vec::new()))
            }
            r => r.map_err(|message| CardError::Yaml { path, message }),
        },
    }
}

/// `config.json` (`{}` when absent; malformed JSON is an error, as in convert).
fn load_hf_parameters(dir: &Path) -> Result<PyValue, CardError> {
    let path = dir.join("config.json");
    match read_text(&path)? {
        None => Ok(PyValue::Dict(Vec::new())),
        Some(text) => py_json(&text).map_err(|e| CardError::Json {
            path,
            message: format!("malformed JSON: {e}"),
        }),
    }
}

/// `generation_config.json` (`{}` when absent or not valid JSON, as in convert).
fn load_generation_config(dir: &Path) -> Result<PyValue, CardError> {
    let path = dir.join("generation_config.json");
    if !path.is_file() {
        return Ok(PyValue::Dict(Vec::new()));
    }
    let bytes = read_capped(&path, limits::CONFIG_BYTES).map_err(|source| CardError::Io {
        path: path.clone(),
        error: source,
    })?;
    let text = String::from_utf8(bytes).map_err(|_| CardError::Utf8 { path: path.clone() })?;
    Ok(py_json(&text).unwrap_or(PyValue::Dict(Vec::new())))
}

/// `Path(dir).name`.
fn py_path_name(dir: &Path) -> String {
    match dir.components().rfind(|c| !matches!(c, Component::CurDir)) {
        Some(Component::Normal(s)) => s.to_string_lossy().into_owned(),
        Some(Component::ParentDir) => "..".to_string(),
        _ => String::new(),
    }
}

// ---------------------------------------------------------------------------
// The heuristics (Metadata.apply_metadata_heuristic and Metadata.load)

const SAMPLING: [(&str, &str); 12] = [
    ("general.sampling.sequence", "sequence"),
    ("general.sampling.top_k", "top_k"),
    ("general.sampling.top_p", "top_p"),
    ("general.sampling.min_p", "min_p"),
    ("general.sampling.xtc_probability", "xtc_probability"),
    ("general.sampling.xtc_threshold", "xtc_threshold"),
    ("general.sampling.temp", "temperature"),
    ("general.sampling.penalty_last_n", "penalty_last_n"),
    ("general.sampling.penalty_repeat", "penalty_repeat"),
    ("general.sampling.mirostat", "mirostat"),
    ("general.sampling.mirostat_tau", "mirostat_tau"),
    ("general.sampling.mirostat_eta", "mirostat_eta"),
];

/// How `GGUFWriter.add_sampling_*` writes each sampling key.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    I32,
    F32,
}

const SAMPLING_KINDS: [Kind; 12] = [
    Kind::Str,
    Kind::I32,
    Kind::F32,
    Kind::F32,
    Kind::F32,
    Kind::F32,
    Kind::F32,
    Kind::I32,
    Kind::F32,
    Kind::I32,
    Kind::F32,
    Kind::F32,
];

/// `Metadata` fields, each as Python holds it (`None` = Python None).
#[derive(Default)]
struct Fields {
    sampling: [Option<PyValue>; 12],
    name: Option<PyValue>,
    author: Option<PyValue>,
    version: Option<PyValue>,
    organization: Option<PyValue>,
    finetune: Option<PyValue>,
    basename: Option<PyValue>,
    description: Option<PyValue>,
    size_label: Option<PyValue>,
    source_url: Option<PyValue>,
    source_doi: Option<PyValue>,
    source_uuid: Option<PyValue>,
    source_repo_url: Option<PyValue>,
    license: Option<PyValue>,
    license_name: Option<PyValue>,
    license_link: Option<PyValue>,
    base_models: Option<Vec<PyValue>>,
    tags: Option<Vec<PyValue>>,
    languages: Option<Vec<PyValue>>,
    datasets: Option<Vec<PyValue>>,
}

fn some(v: &PyValue) -> Option<PyValue> {
    match v {
        PyValue::None => None,
        v => Some(v.clone()),
    }
}

fn str_value(s: impl Into<String>) -> Option<PyValue> {
    Some(PyValue::Str(s.into()))
}

/// `use_model_card_metadata`: take the card's value if the field is unset.
fn from_card(slot: &mut Option<PyValue>, card: &PyValue, key: &str) {
    if slot.is_none() {
        if let Some(v) = card.get(key) {
            *slot = some(v);
        }
    }
}

/// `use_array_model_card_metadata`: append a string or extend with a list.
fn from_card_array(slot: &mut Option<Vec<PyValue>>, card: &PyValue, key: &str) {
    let Some(v) = card.get(key).filter(|v| **v != PyValue::None) else {
        return;
    };
    let current = slot.get_or_insert_with(Vec::new);
    match v {
        PyValue::Str(_) => current.push(v.clone()),
        PyValue::List(items) => current.extend(items.iter().cloned()),
        _ => {}
    }
}

/// A base model or dataset entry named by a hub id or URL in the model card.
fn source_entry(id: &str, total_params: u64) -> PyValue {
    let mut d: Vec<(PyValue, PyValue)> = Vec::new();
    let mut set = |k: &str, v: String| dict_insert(&mut d, PyValue::Str(k.into()), PyValue::Str(v));
    if id.starts_with("http://") || id.starts_with("https://") || id.starts_with("ssh://") {
        set("repo_url", id.to_string());
        if id.contains("huggingface.co") {
            if let Some(c) = HF_URL.captures(id) {
                let comps = model_id_components(&c[1], total_params);
                if let Some(n) = &comps.full_name {
                    set("name", id_to_title(n));
                }
                if let Some(o) = &comps.org {
                    set("organization", id_to_title(o));
                }
                if let Some(v) = comps.version {
                    set("version", v);
                }
            }
        }
    } else {
        let comps = model_id_components(id, total_params);
        if let Some(n) = &comps.full_name {
            set("name", id_to_title(n));
        }
        if let Some(o) = &comps.org {
            set("organization", id_to_title(o));
        }
        if let Some(v) = comps.version.clone() {
            set("version", v);
        }
        if let (Some(o), Some(n)) = (&comps.org, &comps.full_name) {
            set("repo_url", format!("https://huggingface.co/{o}/{n}"));
        }
    }
    PyValue::Dict(d)
}

/// The `base_model`/`datasets` handling of `apply_metadata_heuristic`.
fn sources(card: &PyValue, keys: [&str; 3], total_params: u64) -> Option<Vec<PyValue>> {
    let first = keys.iter().find_map(|k| card.get(k))?;
    let ids: Vec<PyValue> = match first {
        PyValue::Str(_) => vec![first.clone()],
        PyValue::List(items) => items.clone(),
        _ => Vec::new(),
    };
    Some(
        ids.iter()
            .map(|id| match id {
                PyValue::Str(s) => source_entry(s, total_params),
                d @ PyValue::Dict(_) => d.clone(),
                // convert logs "not in a known format" and keeps an empty entry
                _ => PyValue::Dict(Vec::new()),
            })
            .collect(),
    )
}

/// Fills unset name fields from a model id (`_name_or_path` or the folder name).
fn from_model_id(f: &mut Fields, model_id: &str, total_params: u64) {
    let c = model_id_components(model_id, total_params);
    if f.name.is_none() {
        if let Some(n) = &c.full_name {
            f.name = str_value(id_to_title(n));
        }
    }
    if f.organization.is_none() {
        if let Some(o) = &c.org {
            f.organization = str_value(id_to_title(o));
        }
    }
    let fill = |slot: &mut Option<PyValue>, v: Option<String>| {
        if slot.is_none() {
            if let Some(v) = v {
                *slot = str_value(v);
            }
        }
    };
    fill(&mut f.basename, c.basename);
    fill(&mut f.finetune, c.finetune);
    fill(&mut f.version, c.version);
    fill(&mut f.size_label, c.size_label);
}

struct Sources {
    readme: PathBuf,
    generation: PathBuf,
}

/// The model card's keys (`Metadata.load`'s `use_model_card_metadata` calls):
/// llama.cpp's own keys, then the model_* spellings, then TheBloke's.
fn from_card_fields(f: &mut Fields, card: &PyValue, total: u64) {
    for (slot, key) in [
        (&mut f.name, "name"),
        (&mut f.author, "author"),
        (&mut f.version, "version"),
        (&mut f.organization, "organization"),
        (&mut f.description, "description"),
        (&mut f.finetune, "finetune"),
        (&mut f.basename, "basename"),
        (&mut f.size_label, "size_label"),
        (&mut f.source_url, "url"),
        (&mut f.source_doi, "doi"),
        (&mut f.source_uuid, "uuid"),
        (&mut f.source_repo_url, "repo_url"),
    ] {
        from_card(slot, card, key);
    }
    for (slot, key) in [
        (&mut f.name, "model_name"),
        (&mut f.author, "model_author"),
        (&mut f.version, "model_version"),
        (&mut f.organization, "model_organization"),
        (&mut f.description, "model_description"),
        (&mut f.finetune, "model_finetune"),
        (&mut f.basename, "model_basename"),
        (&mut f.size_label, "model_size_label"),
        (&mut f.source_url, "model_url"),
        (&mut f.source_doi, "model_doi"),
        (&mut f.source_uuid, "model_uuid"),
        (&mut f.source_repo_url, "model_repo_url"),
    ] {
        from_card(slot, card, key);
    }
    from_card(&mut f.author, card, "model_creator");
    from_card(&mut f.basename, card, "model_type");
    f.base_models = sources(
        card,
        ["base_model", "base_models", "base_model_sources"],
        total,
    );
    f.datasets = sources(card, ["datasets", "dataset", "dataset_sources"], total);
    from_card(&mut f.license, card, "license");
    from_card(&mut f.license_name, card, "license_name");
    from_card(&mut f.license_link, card, "license_link");
    from_card_array(&mut f.tags, card, "tags");
    from_card_array(&mut f.tags, card, "pipeline_tag");
    from_card_array(&mut f.languages, card, "languages");
    from_card_array(&mut f.languages, card, "language");
}

/// The recommended sampling from `generation_config.json` (empty or absent:
/// nothing), `repetition_penalty` standing in for `penalty_repeat`.
fn sampling_from_generation_config(
    f: &mut Fields,
    gen_config: &PyValue,
    generation: &Path,
) -> Result<(), CardError> {
    if gen_config.truthy() {
        if !matches!(gen_config, PyValue::Dict(_)) {
            return Err(CardError::Json {
                path: generation.to_path_buf(),
                message: format!("expected a JSON object, found {}", gen_config.type_name()),
            });
        }
        for (i, (_, key)) in SAMPLING.iter().enumerate() {
            let found = if *key == "penalty_repeat" {
                gen_config
                    .get(key)
                    .or_else(|| gen_config.get("repetition_penalty"))
            } else {
                gen_config.get(key)
            };
            if let Some(v) = found {
                f.sampling[i] = some(v);
            }
        }
    }
    Ok(())
}

/// `Metadata.load` plus the name and size-label fallbacks of `prepare_metadata`.
fn resolve(input: &CardInput) -> Result<(Fields, Sources), CardError> {
    let dir = input.dir;
    let total = input.total_params;
    let card = load_model_card(dir)?;
    let hf_params = load_hf_parameters(dir)?;
    let gen_config = load_generation_config(dir)?;
    let mut f = Fields::default();

    from_card_fields(&mut f, &card, total);

    let config_path = dir.join("config.json");
    if !matches!(hf_params, PyValue::Dict(_)) {
        return Err(CardError::Json {
            path: config_path,
            message: format!("expected a JSON object, found {}", hf_params.type_name()),
        });
    }
    match hf_params.get("_name_or_path") {
        None | Some(PyValue::None) => {}
        Some(PyValue::Str(id)) => {
            if id.matches('/').count() <= 1 {
                from_model_id(&mut f, id, total);
            }
        }
        Some(other) => {
            return Err(CardError::Value {
                path: config_path,
                key: "_name_or_path".into(),
                message: format!("{} is not a string", other.short()),
            })
        }
    }
    from_model_id(&mut f, &py_path_name(dir), total);

    let generation = dir.join("generation_config.json");
    sampling_from_generation_config(&mut f, &gen_config, &generation)?;
    if let Some(n) = input.model_name {
        f.name = str_value(n);
    }

    // ModelBase.prepare_metadata
    if f.name.is_none() {
        f.name = str_value(py_path_name(dir));
    }
    if f.size_label.is_none() && total > 0 {
        f.size_label = str_value(size_label(
            total,
            input.shared_params,
            input.expert_params,
            input.expert_count,
        ));
    }
    Ok((
        f,
        Sources {
            readme: dir.join("README.md"),
            generation,
        },
    ))
}

// ---------------------------------------------------------------------------
// Writing (set_type + Metadata.set_gguf_meta_model, with GGUFWriter's types)

struct Out<'a> {
    md: Metadata,
    path: &'a Path,
}

impl Out<'_> {
    fn err(&self, key: &str, message: String) -> CardError {
        CardError::Value {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            message,
        }
    }

    /// `GGUFWriter.add_string`: falsy values are skipped, others must be str.
    fn string(&mut self, key: &str, v: &Option<PyValue>) -> Result<(), CardError> {
        match v {
            Some(v) if v.truthy() => match v {
                PyValue::Str(s) => {
                    self.md.push((key.to_string(), Value::String(s.clone())));
                    Ok(())
                }
                other => Err(self.err(key, format!("{} is not a string", other.short()))),
            },
            _ => Ok(()),
        }
    }

    fn int32(&mut self, key: &str, v: &PyValue) -> Result<(), CardError> {
        let x = match v {
            PyValue::Bool(b) => *b as i32,
            PyValue::Int(i) => i32::try_from(*i)
                .map_err(|_| self.err(key, format!("{} does not fit an INT32", v.short())))?,
            other => return Err(self.err(key, format!("{} is not an integer", other.short()))),
        };
        self.md.push((key.to_string(), Value::I32(x)));
        Ok(())
    }

    fn float32(&mut self, key: &str, v: &PyValue) -> Result<(), CardError> {
        let x = py_f32(v).map_err(|m| self.err(key, m))?;
        self.md.push((key.to_string(), Value::F32(x)));
        Ok(())
    }

    /// `GGUFWriter.add_array`: an empty list is skipped.
    fn array(&mut self, key: &str, v: &Option<Vec<PyValue>>) -> Result<(), CardError> {
        match v {
            Some(items) if !items.is_empty() => {
                let value = py_array(items).map_err(|m| self.err(key, m))?;
                self.md.push((key.to_string(), value));
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// `struct.pack("<f", v)`.
fn py_f32(v: &PyValue) -> Result<f32, String> {
    let x = match v {
        PyValue::Bool(b) => *b as u8 as f64,
        PyValue::Int(i) => *i as f64,
        PyValue::Float(x) => *x,
        other => return Err(format!("{} is not a number", other.short())),
    };
    let y = x as f32;
    if y.is_infinite() && x.is_finite() {
        return Err(format!("{} is too large for a FLOAT32", v.short()));
    }
    Ok(y)
}

/// `GGUFValueType.get_type`.
fn py_gguf_type(v: &PyValue) -> Result<ValueType, String> {
    Ok(match v {
        PyValue::Str(_) => ValueType::String,
        PyValue::List(_) => ValueType::Array,
        PyValue::Float(_) => ValueType::F32,
        PyValue::Bool(_) => ValueType::Bool,
        PyValue::Int(_) | PyValue::BigInt(_) => ValueType::I32,
        other => return Err(format!("array item {} has no GGUF type", other.short())),
    })
}

/// `GGUFWriter._pack_val` of a Python list: one element type, taken from the first.
fn py_array(items: &[PyValue]) -> Result<Value, String> {
    let first = items.first().ok_or("empty array inside an array")?;
    let t = py_gguf_type(first)?;
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        if py_gguf_type(it)? != t {
            return Err(format!(
                "array mixes {} and {} items (all items of a GGUF array have one type)",
                first.type_name(),
                it.type_name()
            ));
        }
        out.push(match it {
            PyValue::Str(s) => Value::String(s.clone()),
            PyValue::List(l) => py_array(l)?,
            PyValue::Float(_) => Value::F32(py_f32(it)?),
            PyValue::Bool(b) => Value::Bool(*b),
            PyValue::Int(i) => Value::I32(
                i32::try_from(*i).map_err(|_| format!("{} does not fit an INT32", it.short()))?,
            ),
            _ => return Err(format!("{} does not fit an INT32", it.short())),
        });
    }
    Ok(Value::Array(t, out))
}

const SOURCE_KEYS: [&str; 9] = [
    "name",
    "author",
    "version",
    "organization",
    "description",
    "url",
    "doi",
    "uuid",
    "repo_url",
];

/// The `general.*` keys convert's `set_type` and `Metadata.set_gguf_meta_model`
/// write, in their order, with the same value types: `general.type`, the
/// `general.sampling.*` keys from `generation_config.json`, `general.name`,
/// `author`, `version`, `organization`, `finetune`, `basename`, `description`,
/// `size_label`, `license` (+ `.name`, `.link`), `source.*`, `base_model.*`,
/// `dataset.*`, `tags`, `languages`.
///
/// In convert's file these follow `general.architecture` (written first) and
/// precede the architecture's keys, `general.file_type` and
/// `general.quantization_version` ([`QUANTIZATION_VERSION`]).
pub fn general_metadata(input: &CardInput) -> Result<Metadata, CardError> {
    let (f, src) = resolve(input)?;
    let mut out = Out {
        md: vec![("general.type".to_string(), Value::String("model".into()))],
        path: &src.generation,
    };
    for (i, ((key, _), kind)) in SAMPLING.iter().zip(SAMPLING_KINDS).enumerate() {
        if let Some(v) = &f.sampling[i] {
            match kind {
                Kind::Str => out.string(key, &f.sampling[i])?,
                Kind::I32 => out.int32(key, v)?,
                Kind::F32 => out.float32(key, v)?,
            }
        }
    }

    out.path = &src.readme;
    out.string("general.name", &f.name)?;
    out.string("general.author", &f.author)?;
    out.string("general.version", &f.version)?;
    out.string("general.organization", &f.organization)?;
    out.string("general.finetune", &f.finetune)?;
    out.string("general.basename", &f.basename)?;
    out.string("general.description", &f.description)?;
    out.string("general.size_label", &f.size_label)?;
    match &f.license {
        Some(PyValue::List(items)) => {
            let mut parts = Vec::with_capacity(items.len());
            for it in items {
                match it {
                    PyValue::Str(s) => parts.push(s.as_str()),
                    other => {
                        return Err(out.err(
                            "general.license",
                            format!("list item {} is not a string", other.short()),
                        ))
                    }
                }
            }
            out.string("general.license", &str_value(parts.join(",")))?;
        }
        other => out.string("general.license", other)?,
    }
    out.string("general.license.name", &f.license_name)?;
    out.string("general.license.link", &f.license_link)?;
    out.string("general.source.url", &f.source_url)?;
    out.string("general.source.doi", &f.source_doi)?;
    out.string("general.source.uuid", &f.source_uuid)?;
    out.string("general.source.repo_url", &f.source_repo_url)?;

    for (list, prefix) in [
        (&f.base_models, "general.base_model"),
        (&f.datasets, "general.dataset"),
    ] {
        let Some(entries) = list else { continue };
        let count = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        out.md.push((format!("{prefix}.count"), Value::U32(count)));
        for (i, entry) in entries.iter().enumerate() {
            for field in SOURCE_KEYS {
                if let Some(v) = entry.get(field) {
                    out.string(&format!("{prefix}.{i}.{field}"), &Some(v.clone()))?;
                }
            }
        }
    }
    out.array("general.tags", &f.tags)?;
    out.array("general.languages", &f.languages)?;
    Ok(out.md)
}

/// convert's default output file name without `.gguf` (`naming_convention`):
/// `<basename or name>-<size label>-<finetune>-<version>-<TYPE>`, from the keys
/// of [`general_metadata`]; e.g. `polyglot-25M-F16`. `output_type` is the
/// file type's name as convert spells it (`F32`, `F16`, `BF16`, `Q8_0`).
pub fn default_file_stem(meta: &Metadata, output_type: &str) -> String {
    let get = |key: &str| {
        meta.iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_str())
    };
    let clean = |s: &str| py_strip(s).replace(' ', "-");
    // A name is always set by convert; missing here means it was the empty string.
    let name = get("general.basename")
        .or_else(|| get("general.name"))
        .map(|n| clean(n).replace('/', "-"))
        .unwrap_or_default();
    let mut stem = name;
    if let Some(s) = get("general.size_label") {
        stem.push('-');
        stem.push_str(s);
    }
    for key in ["general.finetune", "general.version"] {
        if let Some(s) = get(key) {
            stem.push('-');
            stem.push_str(&clean(s));
        }
    }
    stem.push('-');
    stem.push_str(&clean(output_type).to_uppercase());
    stem
}
