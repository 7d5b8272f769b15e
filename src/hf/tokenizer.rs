//! Turns an HF model folder's tokenizer files into the `tokenizer.*` GGUF
//! metadata llama.cpp's `convert_hf_to_gguf.py` writes, key for key and value
//! for value (same names, same value types, same order).
//!
//! What it mirrors, per the family spec's [`VocabKind`] (`LlamaModel.set_vocab`
//! in `conversion/llama.py`, `Qwen2Model.set_vocab` in `conversion/qwen.py`):
//!
//! * `tokenizer.model` present (and the family's `set_vocab` reads it, not
//!   `TextModel.set_vocab`'s gpt2-only [`VocabKind::Gpt2`]): SentencePiece (`TextModel._set_vocab_sentencepiece`),
//!   `tokenizer.ggml.model = "llama"`, tokens/scores/types read by our own
//!   protobuf reader ([`sentencepiece`]), padded to `vocab_size` with `[PADi]`.
//! * `LlamaModel.set_vocab` only, `tokenizer.json` with a byte-fallback BPE and a `Sequence`
//!   decoder: `TextModel._set_vocab_llama_hf` (gguf-py's `LlamaHfVocab`), also "llama".
//! * otherwise `tokenizer.json` byte-level BPE (`TextModel._set_vocab_gpt2` with
//!   `get_vocab_base`): `tokenizer.ggml.model = "gpt2"`, tokens, token types, merges,
//!   and `tokenizer.ggml.pre`, which we identify from the pre-tokenizer's own
//!   definition ([`pretok`]) instead of convert's hash of a test encoding.
//! * then gguf-py's `SpecialVocab` (`gguf-py/gguf/vocab.py`): merges, special
//!   token ids, `add_*_token` flags, the chat template, normalizer flags.
//!
//! convert reads these through `transformers.AutoTokenizer`; we read the JSON
//! files directly and reproduce what that tokenizer reports for them.

pub mod pretok;
pub mod sentencepiece;
mod xlmr;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

use crate::arch::VocabKind;
use crate::gguf::{Metadata, Value, ValueType};

/// Options of the tokenizer conversion.
#[derive(Debug, Clone, Default)]
pub struct TokenizerOptions {
    /// `--tokenizer-pre NAME`: write this `tokenizer.ggml.pre` instead of identifying one.
    pub force_pre: Option<String>,
}

/// Why the tokenizer could not be converted. Messages name the file and key.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    // `error`, not `source`: the message holds the cause, which a source would
    // repeat under anyhow's `{:#}` (tests/malformed.rs checks no message does).
    /// A file cannot be read.
    #[error("{}: cannot read: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A JSON file does not parse.
    #[error("{}: not valid JSON: {error}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        error: serde_json::Error,
    },
    /// A key holds a value the converter cannot use.
    #[error("{}: `{key}`: {msg}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong with its value.
        msg: String,
    },
    /// A SentencePiece model that does not parse.
    #[error("{}: bad SentencePiece model: {msg}", path.display())]
    SentencePiece {
        /// The model file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// No tokenizer file in the folder.
    #[error("{}: no tokenizer found: expected tokenizer.model (SentencePiece) or tokenizer.json", dir.display())]
    Missing {
        /// The model folder.
        dir: PathBuf,
    },
    /// A tokenizer kind or feature llama.cpp has no equivalent for.
    #[error("{}: unsupported: {msg}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is unsupported.
        msg: String,
    },
    #[error(
        "{}: `pre_tokenizer`: no llama.cpp pre-tokenizer matches ({reason}); if you know which one splits text \
         like this tokenizer, force it with `--tokenizer-pre NAME` (any name llama.cpp's llama-vocab.cpp accepts, e.g. {known})",
        path.display()
    )]
    /// No llama.cpp pre-tokenizer matches `tokenizer.json`'s.
    UnknownPre {
        /// `tokenizer.json`.
        path: PathBuf,
        /// Why none matched.
        reason: String,
        /// Some names llama.cpp knows.
        known: String,
    },
    #[error(
        "--tokenizer-pre {name:?}: llama.cpp does not know this pre-tokenizer (one of: {known})"
    )]
    /// `--tokenizer-pre` names a pre-tokenizer llama.cpp does not know.
    BadForcedPre {
        /// The name given.
        name: String,
        /// The names llama.cpp knows.
        known: String,
    },
}

type Result<T> = std::result::Result<T, TokenizerError>;

/// gguf-py `TokenType` / `SentencePieceTokenTypes`: each constant's name is
/// its gguf-py name, its value the id written in `tokenizer.ggml.token_type`.
#[allow(missing_docs)] // the names and values above are the documentation
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}
use token_type::*;

/// GGUF key names (gguf-py `Keys.Tokenizer`): each constant's value is the key.
#[allow(missing_docs)] // each value is its own documentation
pub mod keys {
    pub const MODEL: &str = "tokenizer.ggml.model";
    pub const TOKEN_TYPE_COUNT: &str = "tokenizer.ggml.token_type_count";
    pub const PRE: &str = "tokenizer.ggml.pre";
    pub const LIST: &str = "tokenizer.ggml.tokens";
    pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    pub const SCORES: &str = "tokenizer.ggml.scores";
    pub const MERGES: &str = "tokenizer.ggml.merges";
    pub const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
    pub const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
    pub const EOT_ID: &str = "tokenizer.ggml.eot_token_id";
    pub const EOM_ID: &str = "tokenizer.ggml.eom_token_id";
    pub const UNK_ID: &str = "tokenizer.ggml.unknown_token_id";
    pub const SEP_ID: &str = "tokenizer.ggml.seperator_token_id";
    pub const PAD_ID: &str = "tokenizer.ggml.padding_token_id";
    pub const MASK_ID: &str = "tokenizer.ggml.mask_token_id";
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    pub const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
    pub const ADD_SEP: &str = "tokenizer.ggml.add_sep_token";
    pub const ADD_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
    pub const REMOVE_EXTRA_WS: &str = "tokenizer.ggml.remove_extra_whitespaces";
    pub const PRECOMPILED_CHARSMAP: &str = "tokenizer.ggml.precompiled_charsmap";
    pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";
    pub const CHAT_TEMPLATES: &str = "tokenizer.chat_templates";
    pub const NORMALIZER_LOWERCASE: &str = "tokenizer.ggml.normalizer.lowercase";
    pub const NORMALIZER_STRIP_ACCENTS: &str = "tokenizer.ggml.normalizer.strip_accents";
}

/// Which `set_vocab` convert runs for the architecture (its spec's [`VocabKind`]).
/// `LlamaModel.set_vocab`'s extra rules (tekken refusal, `add_prefix_space`,
/// llama-hf vocabularies, CodeLlama FIM ids, the 49152-token `add_bos`).
const LLAMA_VOCAB: VocabKind = VocabKind::SentencePieceLlamaHfGpt2;

fn family(config: &Json, dir: &Path) -> Result<VocabKind> {
    let arch = config
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Json::as_str)
        .ok_or_else(|| TokenizerError::Invalid {
            path: dir.join("config.json"),
            key: "architectures".into(),
            msg: "missing or not a list of strings".into(),
        })?;
    match crate::arch::by_hf_class(arch) {
        Some(spec) => Ok(spec.vocab),
        None => Err(TokenizerError::Unsupported {
            path: dir.join("config.json"),
            msg: format!(
                "architecture {arch:?}: the tokenizer converter knows {}",
                crate::arch::hf_classes().collect::<Vec<_>>().join(", ")
            ),
        }),
    }
}

/// Ordered key/values with Python-dict semantics: setting an existing key
/// replaces its value in place (gguf-py `GGUFWriter.add_key_value`).
#[derive(Default)]
struct Kv(Metadata);

impl Kv {
    fn set(&mut self, key: &str, value: Value) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key.to_string(), value)),
        }
    }

    /// `GGUFWriter.add_string`: empty strings are not written.
    fn set_str(&mut self, key: &str, s: &str) {
        if !s.is_empty() {
            self.set(key, Value::str(s));
        }
    }
}

/// Builds the `tokenizer.*` metadata convert_hf_to_gguf.py writes for the
/// model in `dir`. `config` is its parsed `config.json`.
pub fn tokenizer_metadata(dir: &Path, config: &Json, opts: &TokenizerOptions) -> Result<Metadata> {
    let fam = family(config, dir)?;
    if let Some(name) = &opts.force_pre {
        if !pretok::LLAMA_CPP_PRE_NAMES.contains(&name.as_str()) {
            return Err(TokenizerError::BadForcedPre {
                name: name.clone(),
                known: pretok::LLAMA_CPP_PRE_NAMES.join(", "),
            });
        }
    }
    let files = Files::load(dir)?;
    let mut kv = Kv::default();

    if fam == LLAMA_VOCAB {
        if dir.join("tekken.json").is_file() && files.tokenizer.is_none() {
            return Err(TokenizerError::Unsupported {
                path: dir.join("tekken.json"),
                msg: "Mistral tekken tokenizers (without tokenizer.json) are not supported".into(),
            });
        }
        if let Some(tc) = &files.tokenizer_config {
            match tc.get("add_prefix_space") {
                None | Some(Json::Null) => {}
                Some(Json::Bool(b)) => kv.set(keys::ADD_PREFIX, Value::Bool(*b)),
                Some(other) => {
                    return Err(files.invalid_config(
                        "add_prefix_space",
                        format!("expected a bool, got {other}"),
                    ))
                }
            }
            if tc.get("tokenizer_class").and_then(Json::as_str) == Some("HybridDNATokenizer") {
                return Err(TokenizerError::Unsupported {
                    path: files.tokenizer_config_path(),
                    msg: "tokenizer_class HybridDNATokenizer".into(),
                });
            }
        }
    }

    let spm_path = dir.join("tokenizer.model");
    if fam == VocabKind::BertWordPiece {
        let n_types = match config.get("type_vocab_size") {
            None => 1,
            Some(v) => config_usize(v, &files, "type_vocab_size")?,
        };
        kv.set(keys::TOKEN_TYPE_COUNT, Value::U32(n_types as u32));
        let vocab = bert_vocab(&files, config)?;
        // WordPiece has no pre-tokenizer in llama.cpp; convert_hf_to_gguf.py
        // names BERT's (BAAI/bge's hash) `bert-bge`.
        let pre = opts.force_pre.as_deref().unwrap_or("bert-bge");
        write_vocab(&mut kv, "bert", pre, &vocab);
        let n = vocab.tokens.len();
        SpecialVocab::load(&files, config, false, Some(n), None)?.add_to(&mut kv);
    } else if fam == VocabKind::XlmRobertaUnigram {
        xlmr::set_vocab(&mut kv, &files, config)?;
    } else if spm_path.is_file() && fam != VocabKind::Gpt2 {
        let vocab = sentencepiece_vocab(&files, config, &spm_path)?;
        write_vocab(&mut kv, "llama", "default", &vocab);
        let n = vocab.tokens.len();
        SpecialVocab::load(&files, config, false, Some(n), None)?.add_to(&mut kv);
        if fam == VocabKind::SentencePieceNoPrefixGpt2 {
            kv.set(keys::ADD_PREFIX, Value::Bool(false));
        }
    } else if fam == LLAMA_VOCAB && llama_hf_applies(&files) {
        let vocab = llama_hf_vocab(&files)?;
        write_vocab(&mut kv, "llama", "default", &vocab);
        let n = vocab.tokens.len();
        SpecialVocab::load(&files, config, false, Some(n), None)?.add_to(&mut kv);
    } else {
        let (vocab, pre) = gpt2_vocab(&files, config, opts)?;
        write_vocab(&mut kv, "gpt2", &pre, &vocab);
        SpecialVocab::load(&files, config, true, None, None)?.add_to(&mut kv);
    }

    if fam == LLAMA_VOCAB {
        let vocab_size = match config.get("vocab_size") {
            None => Some(32000),
            Some(v) => v.as_u64(),
        };
        // CodeLlama: the FIM tokens and EOT at fixed ids (LlamaModel.set_vocab).
        if vocab_size == Some(32016) {
            let types = ["prefix", "suffix", "middle", "eot"]
                .map(String::from)
                .to_vec();
            let mut sv = SpecialVocab::load(&files, config, false, None, Some(types))?;
            for (typ, id) in [
                ("prefix", 32007),
                ("suffix", 32008),
                ("middle", 32009),
                ("eot", 32010),
            ] {
                sv.set_id(typ, &Json::from(id), &files.config_path())?;
            }
            sv.add_to(&mut kv);
        }
        // Granite small models (and everything else with 49152 tokens, SmolLM included).
        if vocab_size == Some(49152) {
            kv.set(keys::ADD_BOS, Value::Bool(false));
        }
    }
    if let Some(name) = &opts.force_pre {
        kv.set(keys::PRE, Value::str(name.as_str()));
    }
    Ok(kv.0)
}

/// The parsed tokenizer files of a model folder.
struct Files {
    dir: PathBuf,
    tokenizer: Option<Json>,
    tokenizer_config: Option<Json>,
}

impl Files {
    fn load(dir: &Path) -> Result<Files> {
        Ok(Files {
            dir: dir.to_path_buf(),
            tokenizer: read_json_opt(&dir.join("tokenizer.json"))?,
            tokenizer_config: read_json_opt(&dir.join("tokenizer_config.json"))?,
        })
    }
    fn tokenizer_path(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }
    fn tokenizer_config_path(&self) -> PathBuf {
        self.dir.join("tokenizer_config.json")
    }
    fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    fn invalid_tokenizer(&self, key: &str, msg: impl Into<String>) -> TokenizerError {
        TokenizerError::Invalid {
            path: self.tokenizer_path(),
            key: key.into(),
            msg: msg.into(),
        }
    }
    fn invalid_config(&self, key: &str, msg: impl Into<String>) -> TokenizerError {
        TokenizerError::Invalid {
            path: self.tokenizer_config_path(),
            key: key.into(),
            msg: msg.into(),
        }
    }
    fn clean_up_tokenization_spaces(&self) -> bool {
        // transformers 4.57's PreTrainedTokenizerBase defaults it to False.
        self.tokenizer_config
            .as_ref()
            .and_then(|c| c.get("clean_up_tokenization_spaces"))
            .and_then(Json::as_bool)
            .unwrap_or(false)
    }
}

fn read_json_opt(path: &Path) -> Result<Option<Json>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        super::read_capped_string(path, super::limits::TOKENIZER_BYTES).map_err(|source| {
            TokenizerError::Io {
                path: path.into(),
                error: source,
            }
        })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| TokenizerError::Json {
            path: path.into(),
            error: source,
        })
}

/// Tokens with their types and, for "llama" vocabularies, scores.
struct Vocab {
    tokens: Vec<String>,
    scores: Option<Vec<f32>>,
    types: Vec<i32>,
}

fn write_vocab(kv: &mut Kv, model: &str, pre: &str, v: &Vocab) {
    kv.set_str(keys::MODEL, model);
    kv.set_str(keys::PRE, pre);
    kv.set(keys::LIST, Value::strings(v.tokens.iter().cloned()));
    if let Some(scores) = &v.scores {
        kv.set(keys::SCORES, Value::f32s(scores));
    }
    kv.set(keys::TOKEN_TYPE, Value::i32s(&v.types));
}

/// `TextModel.does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// Python truthiness of an optional JSON value.
/// `tokenizer_config.json` as `_try_load_load_tokenizer_json` reads and
/// amends it (`None`: no such file).
struct TokConfig(Option<Map<String, Json>>);

impl TokConfig {
    /// Python's truth of the dict: present and not empty.
    fn truthy(&self) -> bool {
        self.0.as_ref().is_some_and(|m| !m.is_empty())
    }

    fn get(&self, k: &str) -> Option<Json> {
        self.0.as_ref().and_then(|m| m.get(k)).cloned()
    }

    /// Sets `k` (the converter does so only once [`TokConfig::truthy`]).
    fn insert(&mut self, k: &str, v: Json) {
        if let Some(m) = self.0.as_mut() {
            m.insert(k.into(), v);
        }
    }
}

/// `special_bos`, `special_cls`, `special_eos`, `special_sep` of
/// `_try_load_load_tokenizer_json`, as the post-processor updates them.
struct Specials {
    bos: Option<Json>,
    cls: Option<Json>,
    eos: Option<Json>,
    sep: Option<Json>,
}

impl Specials {
    /// From the tokenizer config, BOS falling back to CLS and EOS to SEP
    /// (written back to the config, as the converter does).
    fn from_config(tc: &mut TokConfig) -> Specials {
        let mut sp = Specials {
            bos: tc.get("bos_token"),
            cls: tc.get("cls_token"),
            eos: tc.get("eos_token"),
            sep: tc.get("sep_token"),
        };
        if !truthy(sp.bos.as_ref()) && truthy(sp.cls.as_ref()) && tc.truthy() {
            sp.bos = sp.cls.clone();
            tc.insert("bos_token", sp.bos.clone().unwrap_or(Json::Null));
        }
        if !truthy(sp.eos.as_ref()) && truthy(sp.sep.as_ref()) && tc.truthy() {
            sp.eos = sp.sep.clone();
            tc.insert("eos_token", sp.eos.clone().unwrap_or(Json::Null));
        }
        sp
    }
}

/// The id of a template entry's `SpecialToken`.
fn special_id(e: &Json) -> Option<Json> {
    e.get("SpecialToken").and_then(|s| s.get("id")).cloned()
}

/// The chat template: `tokenizer_config.json`'s key wins, else
/// `chat_template.jinja` (with `additional_chat_templates/*.jinja` as named
/// ones), else `chat_template.json`'s. The files are read (and must be
/// readable) even when the key wins, as the converter reads them.
fn chat_template(files: &Files, tc: &Map<String, Json>) -> Result<Option<Json>> {
    let jinja = files.dir.join("chat_template.jinja");
    let ct_json = files.dir.join("chat_template.json");
    let alt = if jinja.is_file() {
        Some(jinja_templates(&files.dir, read_text(&jinja)?)?)
    } else if ct_json.is_file() {
        read_json_opt(&ct_json)?.and_then(|j| j.get("chat_template").cloned())
    } else {
        None
    };
    Ok(tc.get("chat_template").cloned().or(alt))
}

/// `chat_template.jinja` (`default`) alone, or named beside
/// `additional_chat_templates/*.jinja` in directory order (as convert's
/// `Path.glob`: both read the directory as listed).
fn jinja_templates(dir: &Path, default: String) -> Result<Json> {
    let mut extra = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir.join("additional_chat_templates")) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) == Some("jinja") && p.is_file() {
                extra.push(p);
            }
        }
    }
    if extra.is_empty() {
        return Ok(Json::String(default));
    }
    let mut list = vec![serde_json::json!({"name": "default", "template": default})];
    for p in extra {
        let stem = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string();
        list.push(serde_json::json!({"name": stem, "template": read_text(&p)?}));
    }
    Ok(Json::Array(list))
}

fn truthy(v: Option<&Json>) -> bool {
    match v {
        None | Some(Json::Null) => false,
        Some(Json::Bool(b)) => *b,
        Some(Json::Number(n)) => n.as_f64() != Some(0.0),
        Some(Json::String(s)) => !s.is_empty(),
        Some(Json::Array(a)) => !a.is_empty(),
        Some(Json::Object(o)) => !o.is_empty(),
    }
}

/// A token id as Python's `isinstance(x, int)` sees it (bools are ints).
fn as_py_int(v: &Json) -> Option<i64> {
    match v {
        Json::Bool(b) => Some(i64::from(*b)),
        Json::Number(n) => n.as_i64(),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// SentencePiece: TextModel._create_vocab_sentencepiece

/// A SentencePiece model file's bytes, its size checked first.
fn read_spm(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|source| TokenizerError::Io {
        path: path.into(),
        error: source,
    })?;
    if meta.len() > sentencepiece::MAX_MODEL_BYTES as u64 {
        return Err(TokenizerError::SentencePiece {
            path: path.into(),
            msg: format!(
                "{} bytes is larger than the {}-byte limit",
                meta.len(),
                sentencepiece::MAX_MODEL_BYTES
            ),
        });
    }
    super::read_capped(path, sentencepiece::MAX_MODEL_BYTES as u64).map_err(|source| {
        TokenizerError::Io {
            path: path.into(),
            error: source,
        }
    })
}

/// The pieces of a SentencePiece model file.
fn spm_pieces(path: &Path, buf: &[u8]) -> Result<Vec<sentencepiece::Piece>> {
    sentencepiece::parse_pieces(buf).map_err(|msg| TokenizerError::SentencePiece {
        path: path.into(),
        msg,
    })
}

fn sentencepiece_vocab(files: &Files, config: &Json, path: &Path) -> Result<Vocab> {
    let pieces = spm_pieces(path, &read_spm(path)?)?;

    // find_hparam(["vocab_size_per_layer_input", "vocab_size"], optional=True) or tokenizer.vocab_size()
    let hp = ["vocab_size_per_layer_input", "vocab_size"]
        .iter()
        .find_map(|k| config.get(*k));
    let vocab_size = match hp {
        Some(v) if truthy(Some(v)) => config_usize(v, files, "vocab_size")?,
        _ => pieces.len(),
    };

    let Vocab {
        mut tokens,
        scores,
        mut types,
    } = padded_pieces(&pieces, vocab_size);
    let mut scores = scores.unwrap_or_default();

    let added_path = files.dir.join("added_tokens.json");
    if let Some(added) = read_json_opt(&added_path)? {
        let obj = added.as_object().ok_or_else(|| TokenizerError::Invalid {
            path: added_path.clone(),
            key: "(root)".into(),
            msg: "expected an object of token -> id".into(),
        })?;
        for (text, id) in obj {
            let id = id.as_u64().ok_or_else(|| TokenizerError::Invalid {
                path: added_path.clone(),
                key: text.clone(),
                msg: format!("id {id} is not a non-negative integer"),
            })?;
            if id >= vocab_size as u64 {
                continue;
            }
            let id = id as usize;
            tokens[id] = text.clone();
            scores[id] = -1000.0;
            types[id] = USER_DEFINED;
        }
    }

    if let Some(decoder) = files
        .tokenizer_config
        .as_ref()
        .and_then(|c| c.get("added_tokens_decoder"))
    {
        let obj = decoder
            .as_object()
            .ok_or_else(|| files.invalid_config("added_tokens_decoder", "expected an object"))?;
        for (id_str, data) in obj {
            let key = format!("added_tokens_decoder.{id_str}");
            let id: u64 = id_str
                .trim()
                .parse()
                .map_err(|_| files.invalid_config(&key, "id is not a non-negative integer"))?;
            let content = data
                .get("content")
                .and_then(Json::as_str)
                .ok_or_else(|| files.invalid_config(&key, "missing string `content`"))?;
            if id >= vocab_size as u64 {
                continue;
            }
            let id = id as usize;
            let mut token = content.to_string();
            if truthy(data.get("special")) || looks_special(&token) {
                types[id] = CONTROL;
            } else {
                token = token.replace('\u{2581}', " ");
                types[id] = USER_DEFINED;
            }
            scores[id] = -1000.0;
            tokens[id] = token;
        }
    }
    Ok(Vocab {
        tokens,
        scores: Some(scores),
        types,
    })
}

/// The first `n` pieces as the processor reports them, padded to `n` with
/// `[PADi]` (score -10000, UNUSED): `_create_vocab_sentencepiece`'s and
/// `_xlmroberta_set_vocab`'s loop. A USER_DEFINED piece stays NORMAL: the
/// converter asks only IsUnknown/IsControl/IsUnused/IsByte.
fn padded_pieces(pieces: &[sentencepiece::Piece], n: usize) -> Vocab {
    let mut tokens: Vec<String> = (0..n).map(|i| format!("[PAD{i}]")).collect();
    let mut scores = vec![-10000.0f32; n];
    let mut types = vec![UNUSED; n];
    for (id, p) in pieces.iter().enumerate().take(n) {
        use sentencepiece::PieceType as P;
        types[id] = match p.kind {
            P::Unknown => UNKNOWN,
            P::Control => CONTROL,
            P::Unused => UNUSED,
            P::Byte => BYTE,
            P::Normal | P::UserDefined => NORMAL,
        };
        tokens[id] = p.piece.clone();
        scores[id] = p.score;
    }
    Vocab {
        tokens,
        scores: Some(scores),
        types,
    }
}

/// Largest vocabulary accepted (as `Config`'s bound): the token list is allocated
/// from this number before any token is read.
const MAX_VOCAB: u64 = 1 << 24;

fn config_usize(v: &Json, files: &Files, key: &str) -> Result<usize> {
    v.as_u64()
        .filter(|&x| x <= MAX_VOCAB)
        .and_then(|x| usize::try_from(x).ok())
        .ok_or_else(|| TokenizerError::Invalid {
            path: files.config_path(),
            key: key.into(),
            msg: format!("expected an integer from 0 to {MAX_VOCAB}, got {v}"),
        })
}

// ---------------------------------------------------------------------------
// tokenizer.json: shared parsing

/// The longest added token accepted, in bytes. Real ones are short
/// (`<|reserved_special_token_250|>`, runs of spaces for code); a 100 kB one
/// makes the tokenizers crate's added-vocabulary matching take minutes.
pub const MAX_ADDED_TOKEN_BYTES: usize = 1024;

/// Checks tokenizer.json's `added_tokens` before anything matches on them: no
/// id given to two different tokens (one would silently replace the other,
/// and special token ids would then name the wrong one), no token longer than
/// [`MAX_ADDED_TOKEN_BYTES`]. `Err((key, what))`.
pub fn check_added_tokens(tok: &Json) -> std::result::Result<(), (String, String)> {
    let Some(list) = tok.get("added_tokens").and_then(Json::as_array) else {
        return Ok(());
    };
    let mut by_id: HashMap<u64, &str> = HashMap::new();
    for (i, a) in list.iter().enumerate() {
        let key = format!("added_tokens[{i}]");
        let (Some(id), Some(content)) = (
            a.get("id").and_then(Json::as_u64),
            a.get("content").and_then(Json::as_str),
        ) else {
            continue; // the full parse names what is missing
        };
        if content.len() > MAX_ADDED_TOKEN_BYTES {
            return Err((
                key,
                format!(
                    "content is {} bytes long; added tokens of more than {MAX_ADDED_TOKEN_BYTES} bytes are refused",
                    content.len()
                ),
            ));
        }
        if let Some(prev) = by_id.insert(id, content) {
            if prev != content {
                return Err((
                    key,
                    format!("id {id} given to both {prev:?} and {content:?}"),
                ));
            }
        }
    }
    Ok(())
}

/// One entry of tokenizer.json `added_tokens`.
#[derive(Debug, Clone)]
struct AddedToken {
    id: u32,
    content: String,
    special: bool,
    normalized: bool,
}

/// The added tokens transformers' tokenizer reports: tokenizer.json's
/// `added_tokens` (flags overridden by tokenizer_config.json's
/// `added_tokens_decoder`), then the named special tokens it registers on load
/// that neither list holds, at the ids HF tokenizers' `AddedVocabulary::add_tokens`
/// gives new tokens.
fn parse_added_tokens(
    files: &Files,
    tok: &Json,
    model: &HashMap<u32, String>,
) -> Result<Vec<AddedToken>> {
    let mut out = Vec::new();
    let Some(list) = tok.get("added_tokens") else {
        return Ok(out);
    };
    let list = list
        .as_array()
        .ok_or_else(|| files.invalid_tokenizer("added_tokens", "expected a list"))?;
    check_added_tokens(tok).map_err(|(key, msg)| files.invalid_tokenizer(&key, msg))?;
    for (i, a) in list.iter().enumerate() {
        let key = format!("added_tokens[{i}]");
        let id = a
            .get("id")
            .and_then(Json::as_u64)
            .and_then(|x| u32::try_from(x).ok());
        let id = id.ok_or_else(|| {
            files.invalid_tokenizer(&key, "`id` is not a 32-bit non-negative integer")
        })?;
        let content = a
            .get("content")
            .and_then(Json::as_str)
            .ok_or_else(|| files.invalid_tokenizer(&key, "missing `content`"))?;
        out.push(AddedToken {
            id,
            content: content.to_string(),
            special: a.get("special").and_then(Json::as_bool).unwrap_or(false),
            // tokenizers' AddedToken default: normalized = !special.
            normalized: a
                .get("normalized")
                .and_then(Json::as_bool)
                .unwrap_or(!a.get("special").and_then(Json::as_bool).unwrap_or(false)),
        });
    }
    // transformers re-registers tokenizer_config.json's added_tokens_decoder entries;
    // for an id already present, its flags win.
    if let Some(dec) = files
        .tokenizer_config
        .as_ref()
        .and_then(|c| c.get("added_tokens_decoder"))
        .and_then(Json::as_object)
    {
        for (id_str, data) in dec {
            let (Ok(id), Some(content)) = (
                id_str.trim().parse::<u32>(),
                data.get("content").and_then(Json::as_str),
            ) else {
                continue;
            };
            if let Some(a) = out.iter_mut().find(|a| a.id == id && a.content == content) {
                if let Some(s) = data.get("special").and_then(Json::as_bool) {
                    a.special = s;
                }
                if let Some(n) = data.get("normalized").and_then(Json::as_bool) {
                    a.normalized = n;
                }
            }
        }
    }
    let mut known: HashSet<String> = model.values().cloned().collect();
    known.extend(out.iter().map(|a| a.content.clone()));
    let model_size = model.len() as u32;
    for content in named_special_tokens(files)? {
        if !known.insert(content.clone()) {
            continue;
        }
        let id = match out.iter().map(|a| a.id).max() {
            None => model_size,
            Some(m) if m >= model_size || model_size == 0 => m + 1,
            Some(_) => model_size,
        };
        out.push(AddedToken {
            id,
            content,
            special: true,
            normalized: false,
        });
    }
    Ok(out)
}

/// tokenizer.json `model.vocab` as id -> token.
fn model_vocab(files: &Files, tok: &Json) -> Result<HashMap<u32, String>> {
    let vocab = tok
        .get("model")
        .and_then(|m| m.get("vocab"))
        .and_then(Json::as_object)
        .ok_or_else(|| {
            files.invalid_tokenizer("model.vocab", "missing or not an object of token -> id")
        })?;
    let mut by_id = HashMap::with_capacity(vocab.len());
    for (t, id) in vocab {
        let id = id.as_u64().and_then(|x| u32::try_from(x).ok());
        let id = id.ok_or_else(|| {
            files.invalid_tokenizer(
                "model.vocab",
                format!("token {t:?}: id is not a 32-bit non-negative integer"),
            )
        })?;
        if let Some(prev) = by_id.insert(id, t.clone()) {
            return Err(files.invalid_tokenizer(
                "model.vocab",
                format!("id {id} given to both {prev:?} and {t:?}"),
            ));
        }
    }
    Ok(by_id)
}

// ---------------------------------------------------------------------------
// Byte-level BPE: TextModel.get_vocab_base / _set_vocab_gpt2

fn gpt2_vocab(files: &Files, config: &Json, opts: &TokenizerOptions) -> Result<(Vocab, String)> {
    let vocab = base_vocab(files, config, "BPE")?;
    let pre = match &opts.force_pre {
        Some(name) => name.clone(),
        None => identify_pre(files, files.tokenizer.as_ref().expect("read by base_vocab"))?,
    };
    Ok((vocab, pre))
}

/// `BertModel.set_vocab`: `get_vocab_base`'s tokens of a WordPiece
/// `tokenizer.json` in llama.cpp's phantom-space form (a word-initial piece
/// gets `▁`, a `##` continuation loses its `##`, control tokens stay).
fn bert_vocab(files: &Files, config: &Json) -> Result<Vocab> {
    let mut v = base_vocab(files, config, "WordPiece")?;
    for (t, &ty) in v.tokens.iter_mut().zip(&v.types) {
        if ty != CONTROL {
            *t = match t.strip_prefix("##") {
                Some(rest) => rest.to_string(),
                None => format!("\u{2581}{t}"),
            };
        }
    }
    Ok(v)
}

/// `TextModel.get_vocab_base`'s tokens and types of a `tokenizer.json`
/// whose model is `model_type`.
fn base_vocab(files: &Files, config: &Json, want_type: &str) -> Result<Vocab> {
    let tok = files
        .tokenizer
        .as_ref()
        .ok_or_else(|| TokenizerError::Missing {
            dir: files.dir.clone(),
        })?;
    let model_type = tok
        .get("model")
        .and_then(|m| m.get("type"))
        .and_then(Json::as_str)
        .unwrap_or("");
    if model_type != want_type {
        return Err(TokenizerError::Unsupported {
            path: files.tokenizer_path(),
            msg: format!(
                "model.type {model_type:?}: this architecture's converter reads {want_type} tokenizer.json files{}",
                if want_type == "BPE" { " (or a tokenizer.model)" } else { "" }
            ),
        });
    }
    let mut by_id = model_vocab(files, tok)?;
    let added = parse_added_tokens(files, tok, &by_id)?;
    for a in &added {
        by_id.insert(a.id, a.content.clone());
    }
    let added_by_id: HashMap<u32, &AddedToken> = added.iter().map(|a| (a.id, a)).collect();
    // len(tokenizer.vocab): distinct token texts once added tokens are merged in.
    let distinct: HashSet<&str> = by_id.values().map(String::as_str).collect();
    let vocab_size = match config.get("vocab_size") {
        Some(v) => config_usize(v, files, "vocab_size")?,
        None => distinct.len(),
    };
    if let Some(&max) = by_id.keys().max() {
        if max as usize >= vocab_size {
            return Err(TokenizerError::Invalid {
                path: files.config_path(),
                key: "vocab_size".into(),
                msg: format!(
                    "{vocab_size} is not above the largest token id {max} of tokenizer.json"
                ),
            });
        }
    }

    let decoder_is_byte_level = tok
        .get("decoder")
        .and_then(|d| d.get("type"))
        .and_then(Json::as_str)
        == Some("ByteLevel");
    let clean_up = files.clean_up_tokenization_spaces();
    let mut tokens = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for i in 0..vocab_size as u32 {
        let Some(text) = by_id.get(&i) else {
            tokens.push(format!("[PAD{i}]"));
            types.push(UNUSED);
            continue;
        };
        let mut token = text.clone();
        match added_by_id.get(&i) {
            None => types.push(NORMAL),
            Some(a) => {
                if !a.normalized {
                    // tokenizer.decode(tokenizer.encode(token)): the added token comes
                    // back through the decoder.
                    token = decode_added(&token, decoder_is_byte_level, clean_up);
                }
                if a.special || looks_special(&token) {
                    types.push(CONTROL);
                } else {
                    token = token.replace('\u{2581}', " ");
                    types.push(USER_DEFINED);
                }
            }
        }
        tokens.push(token);
    }
    Ok(Vocab {
        tokens,
        scores: None,
        types,
    })
}

fn identify_pre(files: &Files, tok: &Json) -> Result<String> {
    let unknown = |reason: String| TokenizerError::UnknownPre {
        path: files.tokenizer_path(),
        reason,
        known: pretok::PRE_TABLE
            .iter()
            .map(|r| r.name)
            .collect::<Vec<_>>()
            .join(", "),
    };
    let sig = pretok::signature(tok, files.tokenizer_config.as_ref()).map_err(unknown)?;
    match pretok::identify(&sig) {
        Some(m) => Ok(m.name.to_string()),
        None => Err(unknown(format!(
            "split regexes {}",
            sig.regexes
                .iter()
                .map(|r| format!("`{r}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// GPT-2's byte -> printable character map (`bytes_to_unicode`), inverted.
fn byte_level_char_to_byte() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable =
            (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let c = if printable {
            char::from(b)
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\u{0}')
        };
        map.insert(c, b);
    }
    map
}

/// What `tokenizer.decode([id])` gives for a non-normalized added token: the
/// ByteLevel decoder maps each character back to its byte when all of them
/// are byte-level characters (HF tokenizers `ByteLevel::decode_chain`), then
/// transformers' `clean_up_tokenization` when enabled.
fn decode_added(token: &str, byte_level: bool, clean_up: bool) -> String {
    let mut text = token.to_string();
    if byte_level {
        let map = byte_level_char_to_byte();
        let bytes: Option<Vec<u8>> = token.chars().map(|c| map.get(&c).copied()).collect();
        if let Some(bytes) = bytes {
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    if clean_up {
        for (from, to) in [
            (" .", "."),
            (" ?", "?"),
            (" !", "!"),
            (" ,", ","),
            (" ' ", "'"),
            (" n't", "n't"),
            (" 'm", "'m"),
            (" 's", "'s"),
            (" 've", "'ve"),
            (" 're", "'re"),
        ] {
            text = text.replace(from, to);
        }
    }
    text
}

// ---------------------------------------------------------------------------
// Llama HF (byte-fallback BPE in tokenizer.json): gguf-py LlamaHfVocab

/// `LlamaModel.set_vocab` reaches `_set_vocab_llama_hf` when `LlamaHfVocab`
/// accepts the tokenizer.json: BPE with byte_fallback and a Sequence decoder.
fn llama_hf_applies(files: &Files) -> bool {
    let Some(tok) = &files.tokenizer else {
        return false;
    };
    let model = tok.get("model");
    let ty = model.and_then(|m| m.get("type")).and_then(Json::as_str);
    let flag = |k: &str| model.and_then(|m| m.get(k)).and_then(Json::as_bool);
    let is_llama3 = ty == Some("BPE")
        && flag("ignore_merges").unwrap_or(false)
        && !flag("byte_fallback").unwrap_or(true);
    if is_llama3 {
        return false;
    }
    let decoder_type = tok
        .get("decoder")
        .and_then(|d| d.get("type"))
        .and_then(Json::as_str);
    ty == Some("BPE") && flag("byte_fallback").unwrap_or(false) && decoder_type == Some("Sequence")
}

/// The special tokens transformers registers for the tokenizer
/// (`all_special_tokens`): the named ones in tokenizer_config.json, overridden
/// by special_tokens_map.json, plus `additional_special_tokens`; Llama
/// tokenizer classes default bos/eos/unk to `<s>`, `</s>`, `<unk>`.
fn named_special_tokens(files: &Files) -> Result<Vec<String>> {
    let map = read_json_opt(&files.dir.join("special_tokens_map.json"))?;
    let tc = files.tokenizer_config.as_ref();
    let content = |v: &Json| -> Option<String> {
        match v {
            Json::String(s) => Some(s.clone()),
            Json::Object(o) => o.get("content").and_then(Json::as_str).map(String::from),
            _ => None,
        }
    };
    let lookup = |key: &str| -> Option<Json> {
        map.as_ref()
            .and_then(|m| m.get(key))
            .filter(|v| !v.is_null())
            .or_else(|| tc.and_then(|c| c.get(key)))
            .cloned()
    };
    let llama_class = tc
        .and_then(|c| c.get("tokenizer_class"))
        .and_then(Json::as_str)
        .is_some_and(|c| c.starts_with("LlamaTokenizer"));
    let mut out: Vec<String> = Vec::new();
    for (key, default) in [
        ("bos_token", Some("<s>")),
        ("eos_token", Some("</s>")),
        ("unk_token", Some("<unk>")),
        ("sep_token", None),
        ("pad_token", None),
        ("cls_token", None),
        ("mask_token", None),
    ] {
        let v = match lookup(key) {
            Some(v) => content(&v),
            None if llama_class => default.map(String::from),
            None => None,
        };
        if let Some(v) = v {
            if !out.contains(&v) {
                out.push(v);
            }
        }
    }
    if let Some(Json::Array(extra)) = lookup("additional_special_tokens") {
        for v in extra.iter().filter_map(content) {
            if !out.contains(&v) {
                out.push(v);
            }
        }
    }
    Ok(out)
}

fn llama_hf_vocab(files: &Files) -> Result<Vocab> {
    let tok = files
        .tokenizer
        .as_ref()
        .ok_or_else(|| TokenizerError::Missing {
            dir: files.dir.clone(),
        })?;
    let base = model_vocab(files, tok)?;
    let added = parse_added_tokens(files, tok, &base)?;
    let base_size = tok
        .get("model")
        .and_then(|m| m.get("vocab"))
        .and_then(Json::as_object)
        .map_or(0, |v| v.len());
    let mut by_id = base;
    let mut by_text: HashMap<String, u32> = by_id.iter().map(|(i, t)| (t.clone(), *i)).collect();
    for a in &added {
        by_id.insert(a.id, a.content.clone());
        by_text.insert(a.content.clone(), a.id);
    }
    let mut specials: HashMap<String, u32> = HashMap::new();
    for t in named_special_tokens(files)? {
        let id = *by_text.get(&t).ok_or_else(|| {
            files.invalid_config(
                "special tokens",
                format!("special token {t:?} is not in the vocabulary of tokenizer.json"),
            )
        })?;
        specials.insert(t, id);
    }
    let special_ids: HashSet<u32> = specials.values().copied().collect();
    let is_byte = |t: &str| {
        let b = t.as_bytes();
        b.len() == 6
            && t.starts_with("<0x")
            && t.ends_with('>')
            && b[3].is_ascii_hexdigit()
            && b[4].is_ascii_hexdigit()
    };

    let mut extra: Vec<&AddedToken> = added
        .iter()
        .filter(|a| a.id as usize >= base_size)
        .collect();
    extra.sort_by_key(|a| a.id);
    extra.dedup_by_key(|a| a.id);

    let mut tokens = Vec::with_capacity(base_size + extra.len());
    let mut types = Vec::with_capacity(base_size + extra.len());
    for id in 0..base_size as u32 {
        let text = by_id.get(&id).ok_or_else(|| {
            files.invalid_tokenizer(
                "model.vocab",
                format!("no token has id {id} (ids must be 0..{base_size})"),
            )
        })?;
        let ty = if is_byte(text) {
            BYTE
        } else if special_ids.contains(&id) {
            CONTROL
        } else {
            NORMAL
        };
        tokens.push(text.clone());
        types.push(ty);
    }
    for a in extra {
        types.push(if specials.contains_key(&a.content) {
            CONTROL
        } else {
            USER_DEFINED
        });
        tokens.push(a.content.clone());
    }
    let scores = vec![-1000.0f32; tokens.len()];
    Ok(Vocab {
        tokens,
        scores: Some(scores),
        types,
    })
}

// ---------------------------------------------------------------------------
// gguf-py SpecialVocab

struct SpecialVocab {
    types: Vec<String>,
    n_vocab: Option<usize>,
    merges: Vec<String>,
    ids: Vec<(String, u32)>,
    add: Vec<(String, bool)>,
    chat_template: Option<Json>,
    lowercase: Option<bool>,
    strip_accents: Option<bool>,
}

const DEFAULT_SPECIAL_TYPES: [&str; 7] = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"];

impl SpecialVocab {
    /// `SpecialVocab(path, load_merges, special_token_types, n_vocab)`.
    fn load(
        files: &Files,
        config: &Json,
        load_merges: bool,
        n_vocab: Option<usize>,
        types: Option<Vec<String>>,
    ) -> Result<SpecialVocab> {
        let mut sv = SpecialVocab {
            types: types.unwrap_or_else(|| DEFAULT_SPECIAL_TYPES.map(String::from).to_vec()),
            n_vocab,
            merges: Vec::new(),
            ids: Vec::new(),
            add: Vec::new(),
            chat_template: None,
            lowercase: None,
            strip_accents: None,
        };
        sv.load_tokenizer_json(files, load_merges)?;
        sv.load_config_json(files, config)?;
        if load_merges && sv.merges.is_empty() {
            sv.merges_txt(files)?;
        }
        Ok(sv)
    }

    /// `_set_special_token`: the first id found for a type wins.
    fn set_id(&mut self, typ: &str, tid: &Json, path: &Path) -> Result<()> {
        let Some(id) = as_py_int(tid) else {
            return Ok(());
        };
        let bad = |msg: String| TokenizerError::Invalid {
            path: path.into(),
            key: format!("{typ}_token"),
            msg,
        };
        if id < 0 {
            return Err(bad(format!("invalid special token id {id}")));
        }
        if self.n_vocab.is_some_and(|n| id as u64 >= n as u64) {
            return Ok(()); // out of range: convert warns and skips
        }
        let id = u32::try_from(id)
            .map_err(|_| bad(format!("special token id {id} does not fit in 32 bits")))?;
        if !self.ids.iter().any(|(t, _)| t == typ) {
            self.ids.push((typ.to_string(), id));
        }
        Ok(())
    }

    fn set_add(&mut self, typ: &str, v: bool) {
        match self.add.iter_mut().find(|(t, _)| t == typ) {
            Some(slot) => slot.1 = v,
            None => self.add.push((typ.to_string(), v)),
        }
    }

    fn set_add_default(&mut self, typ: &str, v: bool) {
        if !self.add.iter().any(|(t, _)| t == typ) {
            self.add.push((typ.to_string(), v));
        }
    }

    fn has_add(&self, typ: &str) -> bool {
        self.add.iter().any(|(t, _)| t == typ)
    }

    fn parse_normalizer(&mut self, n: &Json) {
        match n.get("type").and_then(Json::as_str) {
            Some("Lowercase") => self.lowercase = Some(true),
            Some("StripAccents") => self.strip_accents = Some(true),
            Some("BertNormalizer") => {
                if let Some(v) = n.get("lowercase") {
                    self.lowercase = v.as_bool();
                }
                if let Some(v) = n.get("strip_accents") {
                    self.strip_accents = v.as_bool();
                }
            }
            Some("Sequence") => {
                for m in n
                    .get("normalizers")
                    .and_then(Json::as_array)
                    .into_iter()
                    .flatten()
                {
                    self.parse_normalizer(m);
                }
            }
            _ => {}
        }
    }

    fn load_merges(&mut self, files: &Files, tok: &Json) -> Result<()> {
        let Some(Json::Array(merges)) = tok.get("model").and_then(|m| m.get("merges")) else {
            return Ok(());
        };
        let Some(first) = merges.first() else {
            return Ok(());
        };
        let bad = |i: usize, msg: &str| {
            files.invalid_tokenizer("model.merges", format!("entry {i}: {msg}"))
        };
        if first.is_string() {
            for (i, m) in merges.iter().enumerate() {
                self.merges.push(
                    m.as_str()
                        .ok_or_else(|| bad(i, "expected a string like the first entry"))?
                        .to_string(),
                );
            }
        } else if first
            .as_array()
            .is_some_and(|p| p.len() == 2 && p[0].is_string())
        {
            // transformers >= 4.45 writes [a, b] pairs; spaces inside a part become U+0120.
            for (i, m) in merges.iter().enumerate() {
                let pair = m
                    .as_array()
                    .ok_or_else(|| bad(i, "expected a [left, right] pair like the first entry"))?;
                let mut parts = Vec::with_capacity(pair.len());
                for p in pair {
                    let s = p
                        .as_str()
                        .ok_or_else(|| bad(i, "pair element is not a string"))?;
                    parts.push(s.replace(' ', "\u{0120}"));
                }
                self.merges.push(parts.join(" "));
            }
        } else {
            return Err(files.invalid_tokenizer(
                "model.merges",
                "unknown merges format (neither \"a b\" strings nor [a, b] pairs)",
            ));
        }
        Ok(())
    }

    /// `_try_load_load_tokenizer_json`.
    fn load_tokenizer_json(&mut self, files: &Files, load_merges: bool) -> Result<()> {
        let tok = files.tokenizer.as_ref();
        let empty = Vec::new();
        let mut added_tokens: &Vec<Json> = &empty;
        if let Some(tok) = tok {
            if load_merges {
                self.load_merges(files, tok)?;
            }
            if let Some(n) = tok.get("normalizer").filter(|n| truthy(Some(n))) {
                self.parse_normalizer(n);
            }
            if let Some(Json::Array(a)) = tok.get("added_tokens") {
                added_tokens = a;
            }
        }
        let mut tc = match &files.tokenizer_config {
            None => TokConfig(None),
            Some(Json::Object(o)) => TokConfig(Some(o.clone())),
            Some(_) => return Err(files.invalid_config("(root)", "expected a JSON object")),
        };
        if let Some(tok) = tok.filter(|t| truthy(Some(t))) {
            let mut sp = Specials::from_config(&mut tc);
            if let Some(pp) = tok.get("post_processor").filter(|p| truthy(Some(p))) {
                let processors: Vec<&Json> = match pp.get("processors").and_then(Json::as_array) {
                    Some(list) => list.iter().collect(),
                    None => vec![pp],
                };
                for processor in processors {
                    self.post_processor(processor, &mut sp, &mut tc);
                }
            }
        }
        let Some(tc) = tc.0.filter(|m| !m.is_empty()) else {
            return Ok(());
        };
        match chat_template(files, &tc)? {
            None | Some(Json::Null) => {}
            Some(v @ (Json::String(_) | Json::Array(_))) => self.chat_template = Some(v),
            Some(_) => {} // convert warns "Bad type for chat_template field" and ignores it
        }
        self.special_tokens_of_config(files, &tc, added_tokens)
    }

    /// One processor of `tokenizer.json`'s `post_processor`: which special
    /// tokens the tokenizer adds, and those it names that the tokenizer
    /// config lacks.
    fn post_processor(&mut self, processor: &Json, sp: &mut Specials, tc: &mut TokConfig) {
        match processor.get("type").and_then(Json::as_str) {
            Some("ByteLevel") => {
                self.set_add_default("bos", false);
                self.set_add_default("eos", false);
            }
            Some("RobertaProcessing") => {
                self.set_add("bos", true);
                self.set_add("eos", true);
                self.set_add("sep", true);
                if !truthy(sp.cls.as_ref()) && tc.truthy() {
                    sp.cls = match processor.get("cls") {
                        Some(c) => c.get(0).cloned(),
                        None => sp.bos.clone(),
                    };
                    tc.insert("cls_token", sp.cls.clone().unwrap_or(Json::Null));
                }
                if !truthy(sp.sep.as_ref()) && tc.truthy() {
                    sp.sep = match processor.get("sep") {
                        Some(c) => c.get(0).cloned(),
                        None => sp.eos.clone(),
                    };
                    tc.insert("sep_token", sp.sep.clone().unwrap_or(Json::Null));
                }
            }
            Some("TemplateProcessing") => {
                let list = |k: &str| {
                    processor
                        .get(k)
                        .and_then(Json::as_array)
                        .cloned()
                        .unwrap_or_default()
                };
                let (single, pair) = (list("single"), list("pair"));
                let mut ends = (None, None);
                if single.len() > 1 {
                    ends = self.template_single(&single, sp, tc);
                }
                if !pair.is_empty() {
                    self.template_pair(&pair, ends, sp, tc);
                }
            }
            _ => {}
        }
    }

    /// A `TemplateProcessing`'s `single` template (of two entries or more):
    /// its first and last special tokens become BOS and EOS (the EOS the
    /// config named moving to EOT or EOM), and whether they are added.
    /// Returns them (`special_first`, `special_last` in the converter).
    fn template_single(
        &mut self,
        single: &[Json],
        sp: &mut Specials,
        tc: &mut TokConfig,
    ) -> (Option<Json>, Option<Json>) {
        let (mut special_first, mut special_last) = (None, None);
        let first = special_id(&single[0]);
        if truthy(first.as_ref()) {
            special_first = first.clone();
            if !tc.truthy() {
                sp.bos = first.clone();
            } else if first != sp.bos && first != sp.cls {
                if !truthy(sp.bos.as_ref()) {
                    sp.bos = first.clone();
                    tc.insert("bos_token", first.clone().unwrap());
                }
                if !truthy(sp.cls.as_ref()) {
                    sp.cls = first.clone();
                    tc.insert("cls_token", first.clone().unwrap());
                }
            }
            let v = first == sp.bos || first == sp.cls;
            self.set_add("bos", v);
        }
        let last = special_id(&single[single.len() - 1]);
        if truthy(last.as_ref()) {
            special_last = last.clone();
            if !tc.truthy() {
                sp.eos = last.clone();
            } else if last != sp.eos {
                let old_eos = sp.eos.clone().unwrap_or(Json::Null);
                if !self.types.iter().any(|t| t == "eot") {
                    self.types.push("eot".into());
                    tc.insert("eot_token", old_eos);
                } else if !self.types.iter().any(|t| t == "eom") {
                    self.types.push("eom".into());
                    tc.insert("eom_token", old_eos);
                }
                tc.insert("eos_token", last.clone().unwrap());
                sp.eos = last.clone();
            }
            let v = last == sp.eos;
            self.set_add("eos", v);
        }
        (special_first, special_last)
    }

    /// A `TemplateProcessing`'s `pair` template: whether a separator goes
    /// between the two sequences (`$A <sep> $B`, the single template's first
    /// and last special tokens trimmed from its ends).
    fn template_pair(
        &mut self,
        pair: &[Json],
        (special_first, special_last): (Option<Json>, Option<Json>),
        sp: &Specials,
        tc: &mut TokConfig,
    ) {
        let start =
            usize::from(truthy(special_first.as_ref()) && special_id(&pair[0]) == special_first);
        let stop_trim =
            truthy(special_last.as_ref()) && special_id(&pair[pair.len() - 1]) == special_last;
        let end = if stop_trim {
            pair.len() - 1
        } else {
            pair.len()
        };
        let sliced: &[Json] = if start < end { &pair[start..end] } else { &[] };
        if sliced.is_empty() {
            return;
        }
        let seq_id = |e: &Json| {
            e.get("Sequence")
                .and_then(|s| s.get("id"))
                .and_then(Json::as_str)
                .map(String::from)
        };
        let a = seq_id(&sliced[0]);
        let b = seq_id(&sliced[sliced.len() - 1]);
        if a.as_deref() != Some("A") || b.as_deref() != Some("B") || sliced.len() <= 2 {
            return;
        }
        let mid = &sliced[1..sliced.len() - 1];
        let is_sep = |e: &Option<Json>| truthy(e.as_ref()) && (*e == sp.sep || *e == sp.eos);
        let mut add_sep = is_sep(&special_id(&mid[0])) && !truthy(special_last.as_ref());
        if mid.len() == 2 && is_sep(&special_id(&mid[1])) {
            add_sep = true;
        }
        self.set_add("sep", add_sep);
        if add_sep && !truthy(sp.sep.as_ref()) && tc.truthy() {
            tc.insert("sep_token", sp.eos.clone().unwrap_or(Json::Null));
        }
    }

    /// The tokenizer config's `add_{type}_token` flags and `{type}_token`
    /// contents, the latter looked up among `tokenizer.json`'s added tokens.
    fn special_tokens_of_config(
        &mut self,
        files: &Files,
        tc: &Map<String, Json>,
        added_tokens: &[Json],
    ) -> Result<()> {
        let types = self.types.clone();
        for typ in &types {
            if let Some(Json::Bool(b)) = tc.get(&format!("add_{typ}_token")) {
                if !self.has_add(typ) {
                    self.add.push((typ.clone(), *b));
                }
            }
            let content = match tc.get(&format!("{typ}_token")) {
                Some(Json::String(s)) => s.clone(),
                Some(Json::Object(o)) => match o.get("content") {
                    Some(Json::String(s)) => s.clone(),
                    _ => continue,
                },
                _ => continue,
            };
            let id = added_tokens
                .iter()
                .find(|a| a.get("content").and_then(Json::as_str) == Some(content.as_str()))
                .and_then(|a| a.get("id"))
                .cloned();
            if let Some(id) = id {
                self.set_id(typ, &id, &files.tokenizer_path())?;
            }
        }
        Ok(())
    }

    /// `_try_load_load_config_json`.
    fn load_config_json(&mut self, files: &Files, config: &Json) -> Result<()> {
        let types = self.types.clone();
        for typ in &types {
            let key = format!("{typ}_token_id");
            let mut v = config.get(&key).filter(|v| !v.is_null());
            if v.is_none() {
                v = config.get("text_config").and_then(|t| t.get(&key));
            }
            if let Some(v) = v {
                self.set_id(typ, v, &files.config_path())?;
            }
        }
        Ok(())
    }

    /// `_try_load_merges_txt`.
    fn merges_txt(&mut self, files: &Files) -> Result<()> {
        let path = files.dir.join("merges.txt");
        if !path.is_file() {
            return Ok(());
        }
        let text = read_text(&path)?;
        let mut lines = text.lines().peekable();
        if lines.peek().is_some_and(|l| l.trim().starts_with('#')) {
            lines.next();
        }
        for line in lines {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() == 2 {
                self.merges.push(format!("{} {}", parts[0], parts[1]));
            }
        }
        Ok(())
    }

    /// `add_to_gguf`.
    fn add_to(&self, kv: &mut Kv) {
        if !self.merges.is_empty() {
            kv.set(keys::MERGES, Value::strings(self.merges.iter().cloned()));
        }
        for (typ, id) in &self.ids {
            let key = match typ.as_str() {
                "bos" => keys::BOS_ID,
                "eos" => keys::EOS_ID,
                "unk" => keys::UNK_ID,
                "sep" => keys::SEP_ID,
                "pad" => keys::PAD_ID,
                "mask" => keys::MASK_ID,
                "eot" => keys::EOT_ID,
                "eom" => keys::EOM_ID,
                _ => continue, // no GGUFWriter handler (cls, prefix, ...): convert skips it
            };
            kv.set(key, Value::U32(*id));
        }
        for (typ, v) in &self.add {
            let key = match typ.as_str() {
                "bos" => keys::ADD_BOS,
                "eos" => keys::ADD_EOS,
                "sep" => keys::ADD_SEP,
                _ => continue,
            };
            kv.set(key, Value::Bool(*v));
        }
        if let Some(ct) = &self.chat_template {
            add_chat_template(kv, ct);
        }
        if let Some(v) = self.lowercase {
            kv.set(keys::NORMALIZER_LOWERCASE, Value::Bool(v));
        }
        if let Some(v) = self.strip_accents {
            kv.set(keys::NORMALIZER_STRIP_ACCENTS, Value::Bool(v));
        }
    }
}

fn read_text(path: &Path) -> Result<String> {
    super::read_capped_string(path, super::limits::TOKENIZER_BYTES).map_err(|source| {
        TokenizerError::Io {
            path: path.into(),
            error: source,
        }
    })
}

/// `GGUFWriter.add_chat_template`: a string, or a list of `{name, template}`
/// whose `default` becomes `tokenizer.chat_template` and the others
/// `tokenizer.chat_template.NAME` plus the `tokenizer.chat_templates` list.
fn add_chat_template(kv: &mut Kv, ct: &Json) {
    let value = match ct {
        Json::String(s) => s.clone(),
        Json::Array(list) => {
            let mut default = None;
            let mut names: Vec<String> = Vec::new();
            for choice in list {
                let name = choice.get("name").and_then(Json::as_str).unwrap_or("");
                let name: String = name
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                let Some(template) = choice.get("template").and_then(Json::as_str) else {
                    continue;
                };
                if name.is_empty() {
                    continue;
                }
                if name == "default" {
                    default = Some(template.to_string());
                } else {
                    if !names.contains(&name) {
                        names.push(name.clone());
                    }
                    kv.set_str(&format!("{}.{name}", keys::CHAT_TEMPLATE), template);
                }
            }
            if !names.is_empty() {
                kv.set(
                    keys::CHAT_TEMPLATES,
                    Value::Array(
                        ValueType::String,
                        names.into_iter().map(Value::String).collect(),
                    ),
                );
            }
            match default {
                Some(d) => d,
                None => return,
            }
        }
        _ => return,
    };
    kv.set_str(keys::CHAT_TEMPLATE, &value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_map_is_gpt2s() {
        let m = byte_level_char_to_byte();
        assert_eq!(m.len(), 256);
        assert_eq!(m[&'Ġ'], b' ');
        assert_eq!(m[&'Ċ'], b'\n');
        assert_eq!(m[&'!'], b'!');
        assert_eq!(m[&'ĉ'], b'\t');
        assert_eq!(decode_added("Ġhello", true, false), " hello");
        // A character outside the map keeps the token as it is.
        assert_eq!(decode_added(" <mask>", true, false), " <mask>");
        assert_eq!(decode_added("a .", false, true), "a.");
    }

    #[test]
    fn looks_special_cases() {
        for t in [
            "<pad>",
            "<|im_start|>",
            "<｜begin▁of▁sentence｜>",
            "<unused12>",
            "[@BOS@]",
        ] {
            assert!(looks_special(t), "{t}");
        }
        for t in ["<s>", "hello", "<|im_start", "unused>"] {
            assert!(!looks_special(t), "{t}");
        }
    }

    #[test]
    fn kv_overwrites_in_place() {
        let mut kv = Kv::default();
        kv.set("a", Value::U32(1));
        kv.set("b", Value::U32(2));
        kv.set("a", Value::U32(3));
        kv.set_str("c", "");
        assert_eq!(
            kv.0,
            vec![
                ("a".to_string(), Value::U32(3)),
                ("b".to_string(), Value::U32(2))
            ]
        );
    }
}
