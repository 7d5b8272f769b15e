//! The `general.*` metadata (name, basename, size label, license, tags,
//! languages, base models, datasets, recommended sampling) that llama.cpp's
//! `convert_hf_to_gguf.py` writes, reproduced value for value and type for type,
//! and its default output file name.
//!
//! Mirrors, in llama.cpp's gguf-py: `Metadata.load`, `load_model_card` (the
//! YAML front matter of `README.md`, read with PyYAML's YAML 1.1 rules),
//! `load_hf_parameters` (`_name_or_path` of `config.json`),
//! `load_generation_config`, `get_model_id_components`, `id_to_title`,
//! `apply_metadata_heuristic` and `set_gguf_meta_model` (`gguf/metadata.py`);
//! `size_label` and `naming_convention` (`gguf/utility.py`); and the part of
//! `ModelBase.prepare_metadata` (`conversion/base.py`) that falls back to the
//! folder name and computes the size label, with `set_type` writing
//! `general.type` just before the model card keys.
//!
//! Python's dynamic typing leaks into the file: a model card's `version: 1.0` is
//! a float that convert cannot write, `language: [en, yes]` is a mixed array
//! (YAML 1.1 reads `yes` as true), `top_k: 40` from `generation_config.json` is
//! an INT32 while `top_p` is a FLOAT32. Values are therefore kept as Python
//! would hold them ([`PyValue`]) until they are written, and every case where
//! convert would stop with an exception is a [`CardError`] here.
//!
//! Not covered: the `--metadata` override file and `--remote` (hub) naming of
//! convert; LoRA adapters (negative parameter counts).

use crate::gguf::{Metadata, Value, ValueType};
use regex::Regex;
use std::path::{Component, Path, PathBuf};
use std::sync::LazyLock;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

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

#[derive(Debug, thiserror::Error)]
pub enum CardError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid UTF-8 text")]
    Utf8 { path: PathBuf },
    #[error("{path}: YAML front matter: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {message} (convert_hf_to_gguf.py fails on it too)")]
    Value {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// A value as Python holds it after `yaml.safe_load` or `json.load`.
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    None,
    Bool(bool),
    Int(i128),
    /// An integer beyond i128, kept as written.
    BigInt(String),
    Float(f64),
    Str(String),
    /// A YAML 1.1 timestamp (`datetime.date`/`datetime.datetime`), as written.
    Date(String),
    List(Vec<PyValue>),
    /// Keys in insertion order, unique under Python equality.
    Dict(Vec<(PyValue, PyValue)>),
    /// A value convert can only carry, never write: `bytes` (`!!binary`),
    /// `set` (`!!set`), `tuple` (items of `!!omap`/`!!pairs`); its type name
    /// and whether it is truthy.
    Opaque(&'static str, bool),
}

impl PyValue {
    /// Python's `bool(value)`.
    pub fn truthy(&self) -> bool {
        match self {
            PyValue::None => false,
            PyValue::Bool(b) => *b,
            PyValue::Int(i) => *i != 0,
            PyValue::BigInt(_) | PyValue::Date(_) => true,
            PyValue::Opaque(_, truthy) => *truthy,
            PyValue::Float(f) => *f != 0.0,
            PyValue::Str(s) => !s.is_empty(),
            PyValue::List(l) => !l.is_empty(),
            PyValue::Dict(d) => !d.is_empty(),
        }
    }

    /// Python's `type(value).__name__`.
    pub fn type_name(&self) -> &'static str {
        match self {
            PyValue::None => "NoneType",
            PyValue::Bool(_) => "bool",
            PyValue::Int(_) | PyValue::BigInt(_) => "int",
            PyValue::Float(_) => "float",
            PyValue::Str(_) => "str",
            PyValue::Date(_) => "date",
            PyValue::Opaque(name, _) => name,
            PyValue::List(_) => "list",
            PyValue::Dict(_) => "dict",
        }
    }

    /// `key in dict` and `dict[key]` for a string key; `None` for a non-dict.
    pub fn get(&self, key: &str) -> Option<&PyValue> {
        match self {
            PyValue::Dict(pairs) => pairs
                .iter()
                .find(|(k, _)| matches!(k, PyValue::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    fn short(&self) -> String {
        let s = match self {
            PyValue::None => "None".to_string(),
            PyValue::Bool(b) => if *b { "True" } else { "False" }.to_string(),
            PyValue::Int(i) => i.to_string(),
            PyValue::BigInt(s) | PyValue::Date(s) => s.clone(),
            PyValue::Float(f) => format!("{f:?}"),
            PyValue::Str(s) => format!("{s:?}"),
            PyValue::List(l) => format!("[{} items]", l.len()),
            PyValue::Dict(d) => format!("{{{} keys}}", d.len()),
            PyValue::Opaque(name, _) => format!("<{name}>"),
        };
        format!("{s} ({})", self.type_name())
    }

    /// Python `==` for dict keys (1 == 1.0 == True).
    fn key_eq(&self, other: &PyValue) -> bool {
        fn num(v: &PyValue) -> Option<f64> {
            match v {
                PyValue::Bool(b) => Some(*b as u8 as f64),
                PyValue::Int(i) => Some(*i as f64),
                PyValue::Float(f) => Some(*f),
                _ => None,
            }
        }
        match (self, other) {
            (PyValue::Int(a), PyValue::Int(b)) => a == b,
            (a, b) if num(a).is_some() && num(b).is_some() => num(a) == num(b),
            (a, b) => a == b,
        }
    }
}

/// `dict[key] = value`: a new key goes last, an existing one keeps its place.
fn dict_insert(pairs: &mut Vec<(PyValue, PyValue)>, key: PyValue, value: PyValue) {
    match pairs.iter_mut().find(|(k, _)| k.key_eq(&key)) {
        Some(slot) => slot.1 = value,
        None => pairs.push((key, value)),
    }
}

// ---------------------------------------------------------------------------
// Python string helpers (str.isspace, isdecimal, isalpha, islower, title, strip)

static DECIMAL: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\d$").unwrap());
static ALPHA: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\p{L}$").unwrap());
static TITLECASE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\p{Lt}$").unwrap());

/// `str.isspace` for one character (Unicode White_Space plus U+001C..U+001F).
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `str.isdecimal` for one character (general category Nd).
fn py_isdecimal(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    let mut b = [0u8; 4];
    DECIMAL.is_match(c.encode_utf8(&mut b))
}

/// `str.isalpha` for one character (general categories L*).
fn py_isalpha(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    let mut b = [0u8; 4];
    ALPHA.is_match(c.encode_utf8(&mut b))
}

fn py_istitle_char(c: char) -> bool {
    if c.is_ascii() {
        return false;
    }
    let mut b = [0u8; 4];
    TITLECASE.is_match(c.encode_utf8(&mut b))
}

fn py_iscased(c: char) -> bool {
    c.is_lowercase() || c.is_uppercase() || py_istitle_char(c)
}

/// `str.islower`: at least one cased character and none upper- or titlecase.
fn py_islower(s: &str) -> bool {
    let mut cased = false;
    for c in s.chars() {
        if c.is_uppercase() || py_istitle_char(c) {
            return false;
        }
        if c.is_lowercase() {
            cased = true;
        }
    }
    cased
}

/// The titlecase mapping of one character (Python's `str.title` per letter).
fn py_titlecase(c: char, out: &mut String) {
    match c {
        'Ǆ' | 'ǅ' | 'ǆ' => out.push('ǅ'),
        'Ǉ' | 'ǈ' | 'ǉ' => out.push('ǈ'),
        'Ǌ' | 'ǋ' | 'ǌ' => out.push('ǋ'),
        'Ǳ' | 'ǲ' | 'ǳ' => out.push('ǲ'),
        _ => {
            let mut up = c.to_uppercase();
            if let Some(first) = up.next() {
                out.push(first);
            }
            for rest in up {
                out.extend(rest.to_lowercase());
            }
        }
    }
}

/// `str.title`.
fn py_title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut previous_is_cased = false;
    for c in s.chars() {
        if previous_is_cased {
            out.extend(c.to_lowercase());
        } else {
            py_titlecase(c, &mut out);
        }
        previous_is_cased = py_iscased(c);
    }
    out
}

fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

// ---------------------------------------------------------------------------
// Model id heuristics (gguf-py metadata.py)

/// What `Metadata.get_model_id_components` finds in a model id such as
/// `meta-llama/Meta-Llama-3-8B-Instruct`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdComponents {
    /// The part after `org/`, unchanged.
    pub full_name: Option<String>,
    pub org: Option<String>,
    pub basename: Option<String>,
    pub finetune: Option<String>,
    pub version: Option<String>,
    pub size_label: Option<String>,
}

static VERSION_PART: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)^(?:(v|iter)?\d+([.]\d+)*)$").unwrap());
static TYPE_PART: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)^(?:i?q\d(_\w)*|b?fp?(16|32))$").unwrap());
static SIZE_PART: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^(?:(([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl))$")
        .unwrap()
});
static FINETUNE_PART: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)^(?:chat|instruct|vision|lora)$").unwrap());
static TITLE_KEEP: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(v\d+(?:\.\d+)*|\d.*)$").unwrap());
static HF_URL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^https?://huggingface.co/([^/]+/[^/]+)$").unwrap());

const VERSION: u8 = 1;
const TYPE: u8 = 2;
const SIZE: u8 = 4;
const FINETUNE: u8 = 8;
const BASENAME: u8 = 16;

/// `Metadata.get_model_id_components(model_id, total_params)`.
pub fn model_id_components(model_id: &str, total_params: u64) -> IdComponents {
    if model_id.contains(' ') {
        return IdComponents {
            full_name: Some(model_id.to_string()),
            ..Default::default()
        };
    }
    let (mut org, full) = match model_id.split_once('/') {
        Some((o, n)) => (Some(o), n),
        None => (None, model_id),
    };
    if org.is_some_and(|o| o.starts_with('.')) {
        org = None;
    }

    let mut parts: Vec<String> = full
        .split('-')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    let mut types = vec![0u8; parts.len()];

    for i in 0..parts.len() {
        let part = parts[i].clone();
        if VERSION_PART.is_match(&part) {
            types[i] |= VERSION;
        } else if TYPE_PART.is_match(&part) {
            types[i] |= TYPE;
            parts[i] = part.to_uppercase();
        } else if i > 0 && SIZE_PART.is_match(&part) {
            let mut p: Vec<char> = part.replace('_', ".").chars().collect();
            let n = p.len();
            // bloom-7b1 notation: 7b1 -> 7.1b
            if py_isdecimal(p[n - 1]) {
                let (last, before) = (p[n - 1], p[n - 2]);
                p.truncate(n - 2);
                p.extend(['.', last, before]);
            }
            let n = p.len();
            if n > 1 && py_isdecimal(p[n - 2]) && "kmbt".contains(p[n - 1]) {
                p[n - 1] = p[n - 1].to_ascii_uppercase();
            }
            if total_params != 0 {
                let number: String = p[..n - 1].iter().collect();
                if let Ok(x) = number.parse::<f64>() {
                    let scale = match " KMBT".find(p[n - 1]) {
                        Some(0) => 1.0,
                        Some(1) => 1e3,
                        Some(2) => 1e6,
                        Some(3) => 1e9,
                        Some(4) => 1e12,
                        _ => 0.001,
                    };
                    let label_params = x * scale;
                    let limit = (7 * total_params as u128 / 8) as f64;
                    if (label_params - total_params as f64).abs() > limit {
                        // likely a context length
                        types[i] |= FINETUNE;
                        let lower: String = p[n - 1].to_lowercase().collect();
                        p.truncate(n - 1);
                        p.extend(lower.chars());
                    }
                }
            }
            if types[i] == 0 {
                types[i] |= SIZE;
            }
            parts[i] = p.into_iter().collect();
        } else if i > 0 && FINETUNE_PART.is_match(&part) {
            types[i] |= FINETUNE;
        }
    }

    // word-based size labels give way to number-based ones
    let numeric_size = parts
        .iter()
        .zip(&types)
        .any(|(n, t)| t & SIZE != 0 && n.chars().any(py_isdecimal));
    if numeric_size {
        for (n, t) in parts.iter().zip(types.iter_mut()) {
            if *t & SIZE != 0 && n.chars().all(py_isalpha) {
                *t &= !SIZE;
            }
        }
    }

    let mut at_start = true;
    for (part, t) in parts.iter().zip(types.iter_mut()) {
        let first_alpha = part.chars().next().is_some_and(py_isalpha);
        if at_start && ((*t == 0 && first_alpha) || *t & VERSION != 0) {
            *t |= BASENAME;
        } else {
            at_start = false;
            if *t == 0 {
                *t |= FINETUNE;
            }
        }
    }
    for t in types.iter_mut().rev() {
        if *t & BASENAME != 0 && t.count_ones() > 1 {
            *t &= !BASENAME;
        } else {
            break;
        }
    }

    let join = |want: u8, without: u8| -> Option<String> {
        let mut picked: Vec<&str> = Vec::new();
        for (p, t) in parts.iter().zip(&types) {
            if t & want != 0 && t & without == 0 {
                picked.push(p);
            }
        }
        Some(picked.join("-")).filter(|s| !s.is_empty())
    };
    let mut basename = join(BASENAME, 0);
    let mut sizes: Vec<&str> = Vec::new();
    for (p, t) in parts.iter().zip(&types) {
        if t & SIZE != 0 && !sizes.contains(&p.as_str()) {
            sizes.push(p);
        }
    }
    let size_label = Some(sizes.join("-")).filter(|s| !s.is_empty());
    let finetune = join(FINETUNE, 0);
    let version = join(VERSION, BASENAME);
    if size_label.is_none() && finetune.is_none() && version.is_none() {
        basename = None;
    }
    IdComponents {
        full_name: Some(full.to_string()),
        org: org.map(str::to_string),
        basename,
        finetune,
        version,
        size_label,
    }
}

/// `Metadata.id_to_title`: dashes to spaces, all-lowercase words title-cased
/// unless they look like a version or start with a digit.
pub fn id_to_title(s: &str) -> String {
    let replaced = py_strip(s).replace('-', " ");
    replaced
        .split(py_isspace)
        .filter(|w| !w.is_empty())
        .map(|w| {
            if py_islower(w) && !TITLE_KEEP.is_match(w) {
                py_title(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `model_weight_count_rounded_notation` (gguf-py utility.py): 25172352 -> "25M".
pub fn weight_count_notation(count: u64, min_digits: usize) -> String {
    let (scale, suffix) = if count > 1_000_000_000_000 {
        (1e-12, "T")
    } else if count > 1_000_000_000 {
        (1e-9, "B")
    } else if count > 1_000_000 {
        (1e-6, "M")
    } else {
        (1e-3, "K")
    };
    let scaled = count as f64 * scale;
    let rounded = format!("{}", scaled.round_ties_even() as u128);
    let digits = rounded.trim_start_matches('0').chars().count();
    let fix = min_digits.saturating_sub(digits);
    format!("{scaled:.fix$}{suffix}")
}

/// `gguf.size_label` (utility.py): "8B", "1.1B", or "8x7.2B" for experts.
pub fn size_label(total: u64, shared: u64, expert: u64, expert_count: u64) -> String {
    if expert_count > 0 {
        let pretty = weight_count_notation(shared + expert, 2);
        format!("{expert_count}x{pretty}")
    } else {
        weight_count_notation(total, 2)
    }
}

// ---------------------------------------------------------------------------
// README.md front matter, read as PyYAML's safe_load reads it (YAML 1.1 types)

/// The lines of `text` as Python's `str.splitlines` gives them.
fn py_splitlines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut it = text.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        let is_break = matches!(
            c,
            '\n' | '\r'
                | '\u{0b}'
                | '\u{0c}'
                | '\u{1c}'
                | '\u{1d}'
                | '\u{1e}'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        );
        if is_break {
            lines.push(&text[start..i]);
            let mut end = i + c.len_utf8();
            if c == '\r' {
                if let Some(&(_, '\n')) = it.peek() {
                    it.next();
                    end += 1;
                }
            }
            start = end;
        }
    }
    if start < text.len() {
        lines.push(&text[start..]);
    }
    lines
}

/// The YAML text `Metadata.load_model_card` hands to `yaml.safe_load`, or
/// `None` when the card has no front matter. `content` is the file as
/// Python's universal-newline text mode reads it.
fn front_matter_yaml(content: &str) -> Option<String> {
    let lines = py_splitlines(content);
    if lines.first() != Some(&"---") {
        return None;
    }
    let yaml_lines: Vec<&str> = lines[1..]
        .iter()
        .copied()
        .take_while(|l| *l != "---")
        .collect();
    let mut yaml = yaml_lines.join("\n") + "\n";
    // convert's fixes: the Norway problem and tabs
    yaml = yaml.replace("- no\n", "- \"no\"\n");
    yaml = yaml.replace('\t', "  ");
    Some(yaml)
}

/// The front matter of a model card's text as `Metadata.load_model_card`
/// returns it: a `Dict`, or an empty `Dict` when there is none or it is not a
/// mapping. `content` is the raw file text (CR and CRLF are read as LF, as
/// Python's text mode does).
pub fn parse_model_card(content: &str) -> Result<PyValue, String> {
    let content = content.replace("\r\n", "\n").replace('\r', "\n");
    let Some(yaml) = front_matter_yaml(&content) else {
        return Ok(PyValue::Dict(Vec::new()));
    };
    match yaml_load(&yaml)? {
        d @ PyValue::Dict(_) => Ok(d),
        _ => Ok(PyValue::Dict(Vec::new())),
    }
}

static YAML_BOOL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$")
        .unwrap()
});
static YAML_FLOAT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?",
        r"|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?",
        r"|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*",
        r"|[-+]?\.(?:inf|Inf|INF)",
        r"|\.(?:nan|NaN|NAN))$"
    ))
    .unwrap()
});
static YAML_INT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^(?:[-+]?0b[0-1_]+",
        r"|[-+]?0[0-7_]+",
        r"|[-+]?(?:0|[1-9][0-9_]*)",
        r"|[-+]?0x[0-9a-fA-F_]+",
        r"|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$"
    ))
    .unwrap()
});
static YAML_NULL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?:~|null|Null|NULL|)$").unwrap());
static YAML_TIMESTAMP: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]",
        r"|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?",
        r"(?:[Tt]|[ \t]+)[0-9][0-9]?",
        r":[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?",
        r"(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$"
    ))
    .unwrap()
});
static YAML_TIMESTAMP_PARTS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"^(?P<year>[0-9][0-9][0-9][0-9])-(?P<month>[0-9][0-9]?)-(?P<day>[0-9][0-9]?)",
        r"(?:(?:[Tt]|[ \t]+)(?P<hour>[0-9][0-9]?):(?P<minute>[0-9][0-9]):(?P<second>[0-9][0-9])",
        r"(?:\.(?P<fraction>[0-9]*))?",
        r"(?:[ \t]*(?P<tz>Z|(?P<tz_sign>[-+])(?P<tz_hour>[0-9][0-9]?)(?::(?P<tz_minute>[0-9][0-9]))?))?)?$"
    ))
    .unwrap()
});

const YAML_TAG: &str = "tag:yaml.org,2002:";

/// PyYAML's implicit resolver for a plain scalar (resolvers picked by the
/// first character, in the order `resolver.py` adds them).
fn resolve_plain(v: &str) -> Result<PyValue, String> {
    let Some(c) = v.chars().next() else {
        return Ok(PyValue::None);
    };
    if "yYnNtTfFoO".contains(c) && YAML_BOOL.is_match(v) {
        return construct_bool(v);
    }
    if "-+0123456789.".contains(c) && YAML_FLOAT.is_match(v) {
        return construct_float(v);
    }
    if "-+0123456789".contains(c) && YAML_INT.is_match(v) {
        return construct_int(v);
    }
    if v == "<<" {
        return Err("merge key `<<` used as a value".into());
    }
    if "~nN".contains(c) && YAML_NULL.is_match(v) {
        return Ok(PyValue::None);
    }
    if c.is_ascii_digit() && YAML_TIMESTAMP.is_match(v) {
        return construct_timestamp(v);
    }
    if v == "=" {
        return Err(
            "could not determine a constructor for the tag 'tag:yaml.org,2002:value'".into(),
        );
    }
    Ok(PyValue::Str(v.to_string()))
}

fn construct_bool(v: &str) -> Result<PyValue, String> {
    match v.to_lowercase().as_str() {
        "yes" | "true" | "on" => Ok(PyValue::Bool(true)),
        "no" | "false" | "off" => Ok(PyValue::Bool(false)),
        _ => Err(format!("{v:?} is not a YAML 1.1 boolean")),
    }
}

/// `SafeConstructor.construct_yaml_int`.
fn construct_int(v: &str) -> Result<PyValue, String> {
    let bad = || format!("invalid int {v:?}");
    let s = v.replace('_', "");
    let (neg, body) = match s.chars().next() {
        Some('-') => (true, &s[1..]),
        Some('+') => (false, &s[1..]),
        Some(_) => (false, &s[..]),
        None => return Err(bad()),
    };
    let parsed: Option<i128> = if body == "0" {
        Some(0)
    } else if let Some(b) = body.strip_prefix("0b") {
        parse_radix(b, 2).ok_or_else(bad)?
    } else if let Some(h) = body.strip_prefix("0x") {
        parse_radix(h, 16).ok_or_else(bad)?
    } else if body.starts_with('0') {
        parse_radix(body, 8).ok_or_else(bad)?
    } else if body.contains(':') {
        let mut value: Option<i128> = Some(0);
        let mut base: i128 = 1;
        for part in body.split(':').rev() {
            let d = parse_radix(part, 10).ok_or_else(bad)?;
            value = match (value, d) {
                (Some(acc), Some(d)) => d.checked_mul(base).and_then(|x| acc.checked_add(x)),
                _ => None,
            };
            base = base.saturating_mul(60);
        }
        value
    } else {
        parse_radix(body, 10).ok_or_else(bad)?
    };
    Ok(match parsed {
        Some(x) => PyValue::Int(if neg { -x } else { x }),
        None => PyValue::BigInt(v.to_string()),
    })
}

/// Digits in `radix`: `None` if not a number, `Some(None)` if beyond i128.
fn parse_radix(digits: &str, radix: u32) -> Option<Option<i128>> {
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    Some(i128::from_str_radix(digits, radix).ok())
}

/// `SafeConstructor.construct_yaml_float`.
fn construct_float(v: &str) -> Result<PyValue, String> {
    let s = v.replace('_', "").to_lowercase();
    let (sign, body) = match s.chars().next() {
        Some('-') => (-1.0, &s[1..]),
        Some('+') => (1.0, &s[1..]),
        Some(_) => (1.0, &s[..]),
        None => return Err(format!("invalid float {v:?}")),
    };
    let x = if body == ".inf" {
        f64::INFINITY
    } else if body == ".nan" {
        return Ok(PyValue::Float(f64::NAN));
    } else if body.contains(':') {
        let mut value = 0.0;
        let mut base = 1.0;
        for part in body.split(':').rev() {
            let d: f64 = part.parse().map_err(|_| format!("invalid float {v:?}"))?;
            value += d * base;
            base *= 60.0;
        }
        value
    } else {
        body.parse::<f64>()
            .map_err(|_| format!("invalid float {v:?}"))?
    };
    Ok(PyValue::Float(sign * x))
}

/// `SafeConstructor.construct_yaml_timestamp`, with `datetime`'s range checks.
fn construct_timestamp(v: &str) -> Result<PyValue, String> {
    let caps = YAML_TIMESTAMP_PARTS
        .captures(v)
        .ok_or_else(|| format!("invalid timestamp {v:?}"))?;
    let num = |name: &str| {
        caps.name(name)
            .map(|m| m.as_str().parse::<u32>().unwrap_or(0))
    };
    let (year, month, day) = (
        num("year").unwrap_or(0),
        num("month").unwrap_or(0),
        num("day").unwrap_or(0),
    );
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => 0,
    };
    let bad = || Err(format!("timestamp {v:?} is out of range"));
    if year < 1 || !(1..=12).contains(&month) || day < 1 || day > days {
        return bad();
    }
    if let Some(hour) = num("hour") {
        let (minute, second) = (num("minute").unwrap_or(0), num("second").unwrap_or(0));
        if hour > 23 || minute > 59 || second > 59 {
            return bad();
        }
        if caps.name("tz_sign").is_some() {
            let tz = num("tz_hour").unwrap_or(0) * 60 + num("tz_minute").unwrap_or(0);
            if tz >= 24 * 60 {
                return bad();
            }
        }
    }
    Ok(PyValue::Date(v.to_string()))
}

/// Resolves one scalar event as PyYAML's SafeLoader constructs it.
fn construct_scalar(v: String, style: TScalarStyle, tag: Option<&Tag>) -> Result<PyValue, String> {
    let full = tag.map(|t| format!("{}{}", t.handle, t.suffix));
    let Some(full) = full else {
        return if style == TScalarStyle::Plain {
            resolve_plain(&v)
        } else {
            Ok(PyValue::Str(v))
        };
    };
    match full.strip_prefix(YAML_TAG) {
        Some("str") => Ok(PyValue::Str(v)),
        Some("null") => Ok(PyValue::None),
        Some("bool") => construct_bool(&v),
        Some("int") => construct_int(&v),
        Some("float") => construct_float(&v),
        Some("timestamp") => construct_timestamp(&v),
        Some("binary") => Ok(PyValue::Opaque(
            "bytes",
            v.chars()
                .any(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/'),
        )),
        // PyYAML resolves a `!`-tagged scalar as if it were plain, whatever its style
        _ if full == "!" => resolve_plain(&v),
        _ => Err(format!(
            "could not determine a constructor for the tag '{full}'"
        )),
    }
}

struct EventLog(Vec<(Event, Marker)>);

impl MarkedEventReceiver for EventLog {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        self.0.push((ev, mark));
    }
}

/// Builds Python values from the parser's events, with anchors and merge keys.
struct Builder {
    events: std::vec::IntoIter<(Event, Marker)>,
    /// Each anchor's value and its weight (see `used`).
    anchors: std::collections::HashMap<usize, (PyValue, usize)>,
    /// The size of everything built so far, aliases counted at their full
    /// size as copies: 32 per node plus the bytes of its text.
    used: usize,
}

/// What the front matter may expand to (`used`): a few hundred kB at most for real
/// cards, whereas a 369-byte "billion laughs" card of nested aliases needs gigabytes.
const MAX_YAML_EXPANSION: usize = 64 << 20;

/// The message of a card whose aliases expand past [`MAX_YAML_EXPANSION`].
const YAML_EXPANSION: &str = "YAML aliases expand to more than";

impl Builder {
    fn next(&mut self) -> Result<(Event, Marker), String> {
        self.events
            .next()
            .ok_or_else(|| "unexpected end of YAML events".to_string())
    }

    fn remember(&mut self, anchor: usize, v: &PyValue, since: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, (v.clone(), self.used - since));
        }
    }

    /// Counts `n` more units of what the document expands to.
    fn grow(&mut self, n: usize, mark: Marker) -> Result<(), String> {
        self.used = self.used.saturating_add(n);
        if self.used > MAX_YAML_EXPANSION {
            return Err(format!(
                "{YAML_EXPANSION} {MAX_YAML_EXPANSION} bytes (line {})",
                mark.line()
            ));
        }
        Ok(())
    }

    /// The tag of a collection: `None` for a plain list or dict, or the
    /// SafeLoader type it makes (`omap`/`pairs` lists, `set` mappings).
    fn collection_tag(
        tag: Option<&Tag>,
        want: &str,
        mark: Marker,
    ) -> Result<Option<&'static str>, String> {
        let Some(t) = tag.map(|t| format!("{}{}", t.handle, t.suffix)) else {
            return Ok(None);
        };
        match (want, t.strip_prefix(YAML_TAG)) {
            _ if t == "!" => Ok(None),
            ("seq", Some("seq")) | ("map", Some("map")) => Ok(None),
            ("seq", Some("omap")) => Ok(Some("omap")),
            ("seq", Some("pairs")) => Ok(Some("pairs")),
            ("map", Some("set")) => Ok(Some("set")),
            _ => Err(format!(
                "could not determine a constructor for the tag '{t}' (line {})",
                mark.line()
            )),
        }
    }

    fn node(&mut self, ev: Event, mark: Marker) -> Result<PyValue, String> {
        let since = self.used;
        match ev {
            Event::Scalar(v, style, anchor, tag) => {
                self.grow(32 + v.len(), mark)?;
                let value = construct_scalar(v, style, tag.as_ref())
                    .map_err(|e| format!("{e} (line {})", mark.line()))?;
                self.remember(anchor, &value, since);
                Ok(value)
            }
            Event::Alias(id) => {
                let w = self.anchors.get(&id).map(|a| a.1);
                let w = w.ok_or_else(|| format!("found undefined alias (line {})", mark.line()))?;
                // Checked before the copy is made.
                self.grow(w, mark)?;
                Ok(self.anchors[&id].0.clone())
            }
            Event::SequenceStart(anchor, tag) => {
                self.grow(32, mark)?;
                let kind = Self::collection_tag(tag.as_ref(), "seq", mark)?;
                let mut items = Vec::new();
                loop {
                    let (ev, mark) = self.next()?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(ev, mark)?);
                }
                if kind.is_some() {
                    // !!omap / !!pairs: a list of (key, value) tuples
                    for it in items.iter_mut() {
                        match it {
                            PyValue::Dict(p) if p.len() == 1 => {
                                *it = PyValue::Opaque("tuple", true)
                            }
                            _ => {
                                return Err(format!(
                                    "expected a single mapping item in an ordered map (line {})",
                                    mark.line()
                                ))
                            }
                        }
                    }
                }
                let value = PyValue::List(items);
                self.remember(anchor, &value, since);
                Ok(value)
            }
            Event::MappingStart(anchor, tag) => {
                self.grow(32, mark)?;
                let kind = Self::collection_tag(tag.as_ref(), "map", mark)?;
                let mut merged: Vec<(PyValue, PyValue)> = Vec::new();
                let mut explicit: Vec<(PyValue, PyValue)> = Vec::new();
                loop {
                    let (ev, kmark) = self.next()?;
                    if matches!(ev, Event::MappingEnd) {
                        break;
                    }
                    let is_merge = match &ev {
                        Event::Scalar(v, TScalarStyle::Plain, _, None) => v == "<<",
                        Event::Scalar(_, _, _, Some(t)) => {
                            t.handle == YAML_TAG && t.suffix == "merge"
                        }
                        _ => false,
                    };
                    if is_merge {
                        let (vev, vmark) = self.next()?;
                        let value = self.node(vev, vmark)?;
                        let bad = || {
                            format!(
                                "expected a mapping or list of mappings for merging (line {})",
                                kmark.line()
                            )
                        };
                        match value {
                            PyValue::Dict(pairs) => merged.extend(pairs),
                            PyValue::List(maps) => {
                                for m in maps.into_iter().rev() {
                                    match m {
                                        PyValue::Dict(pairs) => merged.extend(pairs),
                                        _ => return Err(bad()),
                                    }
                                }
                            }
                            _ => return Err(bad()),
                        }
                        continue;
                    }
                    let key = self.node(ev, kmark)?;
                    if matches!(
                        key,
                        PyValue::List(_) | PyValue::Dict(_) | PyValue::Opaque("set", _)
                    ) {
                        return Err(format!("found unhashable key (line {})", kmark.line()));
                    }
                    let (vev, vmark) = self.next()?;
                    let value = self.node(vev, vmark)?;
                    explicit.push((key, value));
                }
                let mut pairs = Vec::new();
                for (k, v) in merged.into_iter().chain(explicit) {
                    dict_insert(&mut pairs, k, v);
                }
                let value = match kind {
                    Some(_) => PyValue::Opaque("set", !pairs.is_empty()),
                    None => PyValue::Dict(pairs),
                };
                self.remember(anchor, &value, since);
                Ok(value)
            }
            other => Err(format!(
                "unexpected YAML event {other:?} (line {})",
                mark.line()
            )),
        }
    }
}

/// `yaml.safe_load`: the single document of `text` (`None` when empty).
fn yaml_load(text: &str) -> Result<PyValue, String> {
    let mut log = EventLog(Vec::new());
    Parser::new_from_str(text)
        .load(&mut log, true)
        .map_err(|e| e.to_string())?;
    let mut b = Builder {
        events: log.0.into_iter(),
        anchors: Default::default(),
        used: 0,
    };
    let mut result = None;
    while let Some((ev, mark)) = b.events.next() {
        match ev {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
            Event::DocumentStart => {
                if result.is_some() {
                    return Err(format!(
                        "expected a single document in the stream (line {})",
                        mark.line()
                    ));
                }
                let (ev, mark) = b.next()?;
                result = Some(b.node(ev, mark)?);
            }
            other => {
                if result.is_some() {
                    return Err(format!("expected a single document (line {})", mark.line()));
                }
                result = Some(b.node(other, mark)?);
            }
        }
    }
    Ok(result.unwrap_or(PyValue::None))
}

// ---------------------------------------------------------------------------
// Reading the folder (Metadata.load_model_card / load_hf_parameters / load_generation_config)

fn read_text(path: &Path) -> Result<Option<String>, CardError> {
    if !path.is_file() {
        return Ok(None);
    }
    let bytes =
        super::read_capped(path, super::limits::CARD_BYTES).map_err(|source| CardError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| CardError::Utf8 {
            path: path.to_path_buf(),
        })
}

/// Marks a string that stands for one of the non-finite literals Python's json accepts.
const NON_FINITE: &str = "\u{e000}laquant-non-finite:";

/// `json.loads`: strict JSON plus the `NaN`, `Infinity` and `-Infinity`
/// literals that Python's json reads (and writes) by default.
fn py_json(text: &str) -> Result<PyValue, serde_json::Error> {
    match serde_json::from_str(text) {
        Ok(v) => Ok(json_to_py(v)),
        Err(e) => {
            // rewrite the literals outside strings into marked strings and retry
            let mut out = String::with_capacity(text.len() + 64);
            let (mut in_string, mut escaped, mut changed) = (false, false, false);
            let mut rest = text;
            while let Some(c) = rest.chars().next() {
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        in_string = false;
                    }
                } else if c == '"' {
                    in_string = true;
                } else if let Some(lit) = ["NaN", "Infinity", "-Infinity"]
                    .into_iter()
                    .find(|l| rest.starts_with(l))
                {
                    out.push_str(&format!("\"{NON_FINITE}{lit}\""));
                    rest = &rest[lit.len()..];
                    changed = true;
                    continue;
                }
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
            if !changed {
                return Err(e);
            }
            serde_json::from_str(&out).map(json_to_py)
        }
    }
}

fn json_to_py(v: serde_json::Value) -> PyValue {
    use serde_json::Value as J;
    match v {
        J::Null => PyValue::None,
        J::Bool(b) => PyValue::Bool(b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                PyValue::Int(i as i128)
            } else if let Some(u) = n.as_u64() {
                PyValue::Int(u as i128)
            } else {
                PyValue::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        J::String(s) => match s.strip_prefix(NON_FINITE) {
            Some("NaN") => PyValue::Float(f64::NAN),
            Some("Infinity") => PyValue::Float(f64::INFINITY),
            Some("-Infinity") => PyValue::Float(f64::NEG_INFINITY),
            _ => PyValue::Str(s),
        },
        J::Array(a) => PyValue::List(a.into_iter().map(json_to_py).collect()),
        J::Object(o) => {
            let mut pairs = Vec::new();
            for (k, v) in o {
                dict_insert(&mut pairs, PyValue::Str(k), json_to_py(v));
            }
            PyValue::Dict(pairs)
        }
    }
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
    let bytes =
        super::read_capped(&path, super::limits::CONFIG_BYTES).map_err(|source| CardError::Io {
            path: path.clone(),
            source,
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

/// `Metadata.load` plus the name and size-label fallbacks of `prepare_metadata`.
fn resolve(input: &CardInput) -> Result<(Fields, Sources), CardError> {
    let dir = input.dir;
    let total = input.total_params;
    let card = load_model_card(dir)?;
    let hf_params = load_hf_parameters(dir)?;
    let gen_config = load_generation_config(dir)?;
    let mut f = Fields::default();

    // llama.cpp's own keys, then the model_* spellings, then TheBloke's
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
        from_card(slot, &card, key);
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
        from_card(slot, &card, key);
    }
    from_card(&mut f.author, &card, "model_creator");
    from_card(&mut f.basename, &card, "model_type");
    f.base_models = sources(
        &card,
        ["base_model", "base_models", "base_model_sources"],
        total,
    );
    f.datasets = sources(&card, ["datasets", "dataset", "dataset_sources"], total);
    from_card(&mut f.license, &card, "license");
    from_card(&mut f.license_name, &card, "license_name");
    from_card(&mut f.license_link, &card, "license_link");
    from_card_array(&mut f.tags, &card, "tags");
    from_card_array(&mut f.tags, &card, "pipeline_tag");
    from_card_array(&mut f.languages, &card, "languages");
    from_card_array(&mut f.languages, &card, "language");

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
    if gen_config.truthy() {
        if !matches!(gen_config, PyValue::Dict(_)) {
            return Err(CardError::Json {
                path: generation,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitlines_matches_python() {
        assert_eq!(
            py_splitlines("a\nb\r\nc\rd\u{2028}e\n"),
            ["a", "b", "c", "d", "e"]
        );
        assert_eq!(py_splitlines("a\n\n"), ["a", ""]);
        assert!(py_splitlines("").is_empty());
    }

    #[test]
    fn title_case_like_python() {
        assert_eq!(py_title("llama3b"), "Llama3B");
        assert_eq!(py_title("o'neil"), "O'Neil");
        assert_eq!(py_title("straße"), "Straße");
        assert_eq!(
            id_to_title("meta-llama-3-8b-instruct"),
            "Meta Llama 3 8b Instruct"
        );
        assert_eq!(id_to_title("qwen2.5-v0.1"), "Qwen2.5 v0.1");
    }

    #[test]
    fn yaml_11_scalars() {
        assert_eq!(resolve_plain("no").unwrap(), PyValue::Bool(false));
        assert_eq!(resolve_plain("On").unwrap(), PyValue::Bool(true));
        assert_eq!(
            resolve_plain("1.0e3").unwrap(),
            PyValue::Str("1.0e3".into())
        );
        assert_eq!(resolve_plain("1.0e+3").unwrap(), PyValue::Float(1000.0));
        assert_eq!(resolve_plain("0777").unwrap(), PyValue::Int(511));
        assert_eq!(resolve_plain("1:30").unwrap(), PyValue::Int(90));
        assert_eq!(resolve_plain("08").unwrap(), PyValue::Str("08".into()));
        assert!(matches!(
            resolve_plain("2024-02-29").unwrap(),
            PyValue::Date(_)
        ));
        assert!(resolve_plain("2023-02-29").is_err());
        assert_eq!(resolve_plain("~").unwrap(), PyValue::None);
    }
}
