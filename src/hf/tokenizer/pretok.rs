//! Identifies llama.cpp's `tokenizer.ggml.pre` name from a `tokenizer.json`'s
//! own definition of its pre-tokenizer.
//!
//! llama.cpp's `convert_hf_to_gguf.py` (`TextModel.get_vocab_base_pre`) runs the
//! HF tokenizer on a fixed text and looks the SHA-256 of the resulting ids up
//! in a list of known models, so any new vocabulary (polyglot-25m, for one)
//! fails to convert even when it splits text exactly like a known one. We look
//! at what decides llama.cpp's tokenization instead:
//!
//! * the split regexes, in order: every `Split` (behavior `Isolated`), `Digits`
//!   and `ByteLevel { use_regex: true }` step of the pre-tokenizer, compared
//!   with the regexes `llm_tokenizer_bpe` in llama.cpp's `src/llama-vocab.cpp`
//!   uses for each `LLAMA_VOCAB_PRE_TYPE_*` (see [`PRE_TABLE`]);
//! * the flags `llama_vocab::impl::load` sets per name: `ignore_merges`
//!   (compared with the BPE model's `ignore_merges`) and `clean_spaces`
//!   (compared with `clean_up_tokenization_spaces` in `tokenizer_config.json`),
//!   plus the normalizer the original tokenizer ships (Qwen's `NFC`).
//!
//! A regex match is required; among the names whose regexes match, the one
//! agreeing with most flags wins, ties going to the first row of the table.

use serde_json::Value as Json;

/// GPT-2's split regex as llama.cpp writes it (`LLAMA_VOCAB_PRE_TYPE_GPT2`).
/// HF's `ByteLevel { use_regex: true }` uses the same regex followed by `|\s+`,
/// which only re-matches whitespace llama.cpp's splitter already keeps.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// Llama 3's regex as it appears in Meta's `tokenizer.json`.
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's regex (digits one at a time) as in Qwen's `tokenizer.json`.
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

// The DeepSeek character classes are spelled with escapes: some of their characters
// (U+1FD3, U+2126, U+212A, ...) have canonical singleton decompositions that a
// Unicode-normalizing editor would silently rewrite, breaking the comparison.
const DEEPSEEK_LLM: &[&str] = &[
    "[\\r\\n]",
    "\\s?[A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}\u{1C4}-\u{293}\u{295}-\u{2AF}\u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}\u{37F}\u{386}\u{388}-\u{38A}\u{38C}\u{38E}-\u{3A1}\u{3A3}-\u{3F5}\u{3F7}-\u{481}\u{48A}-\u{52F}\u{531}-\u{556}\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}\u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}\u{1D00}-\u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}\u{1F20}-\u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\u{1F5D}\u{1F5F}-\u{1F7D}\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}\u{1FC6}-\u{1FCC}\u{1FD0}-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}\u{2102}\u{2107}\u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}\u{212A}-\u{212D}\u{212F}-\u{2134}\u{2139}\u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}\u{2183}\u{2184}\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}\u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}\u{A640}-\u{A66D}\u{A680}-\u{A69B}\u{A722}-\u{A76F}\u{A771}-\u{A787}\u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}\u{FB00}-\u{FB06}\u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{10400}-\u{1044F}\u{104B0}-\u{104D3}\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\u{118A0}-\u{118DF}\u{1E900}-\u{1E943}]+",
    "\\s?[!-/:-~\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF5E}\u{2018}-\u{201F}\u{3000}-\u{3002}]+",
    "\\s+$",
    "[\u{4E00}-\u{9FA5}\u{800}-\u{4E00}\u{AC00}-\u{D7FF}]+",
    "\\p{N}+",
];

const DEEPSEEK_CODER: &[&str] = &[
    "[\\r\\n]",
    "\\s?\\p{L}+",
    "\\s?\\p{P}+",
    "[\u{4E00}-\u{9FA5}\u{800}-\u{4E00}\u{AC00}-\u{D7FF}]+",
    "\\p{N}",
];

const DEEPSEEK_V3: &[&str] = &[
    "\\p{N}{1,3}",
    "[\u{4E00}-\u{9FA5}\u{3040}-\u{309F}\u{30A0}-\u{30FF}]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
];

const SEED_CODER: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+";

const MINICPM5: &[&str] = &[
    r"\p{N}{1,3}",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
];

const UFAKZEKA: &str =
    r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// One llama.cpp pre-tokenizer name and what identifies it.
pub struct PreRow {
    /// The `tokenizer.ggml.pre` value.
    pub name: &'static str,
    /// Split regexes in the order they run (HF spelling; see [`canonical_regex`]).
    pub regexes: &'static [&'static str],
    /// `ignore_merges` llama.cpp sets for this name.
    pub ignore_merges: bool,
    /// `clean_spaces` llama.cpp sets for this name (HF `clean_up_tokenization_spaces`).
    pub clean_spaces: bool,
    /// The normalizer type the original tokenizer ships, `None` for none.
    pub normalizer: Option<&'static str>,
}

macro_rules! row {
    ($name:expr, $re:expr, $ign:expr, $clean:expr, $norm:expr) => {
        PreRow {
            name: $name,
            regexes: $re,
            ignore_merges: $ign,
            clean_spaces: $clean,
            normalizer: $norm,
        }
    };
}

/// Known llama.cpp pre-tokenizers, most common first (ties go to the first row).
/// Flags are those of the name's branch in `llama_vocab::impl::load`
/// (llama-vocab.cpp); regexes those of `llm_tokenizer_bpe::llm_tokenizer_bpe`.
pub static PRE_TABLE: &[PreRow] = &[
    // LLAMA_VOCAB_PRE_TYPE_LLAMA3: ignore_merges = true, clean_spaces default (true).
    // polyglot-25m lands here: its tokenizer.json is Sequence[Split(LLAMA3, Isolated),
    // ByteLevel(use_regex = false)] with ignore_merges = true, exactly Meta's Llama 3
    // pre-tokenizer, and llama-vocab.cpp's LLAMA3 regex is that regex with the
    // `(?i:...)` contractions case-expanded. Only decoding's clean_up_tokenization_spaces
    // differs (polyglot says false), which does not change a single token id.
    // convert_hf_to_gguf.py fails on it only because its vocabulary hashes to an
    // unknown chkhsh (dc3450b5...).
    row!("llama-bpe", &[LLAMA3], true, true, None),
    // LLAMA_VOCAB_PRE_TYPE_SMAUG: the Llama 3 regex without ignore_merges.
    row!("smaug-bpe", &[LLAMA3], false, true, None),
    // LLAMA_VOCAB_PRE_TYPE_QWEN2: clean_spaces = false; Qwen ships an NFC normalizer.
    row!("qwen2", &[QWEN2], false, false, Some("NFC")),
    // LLAMA_VOCAB_PRE_TYPE_STABLELM2: Qwen2's regex, clean_spaces default.
    row!("stablelm2", &[QWEN2], false, true, None),
    row!("qwen35", &[QWEN35], false, false, Some("NFC")),
    // LLAMA_VOCAB_PRE_TYPE_GPT2: plain ByteLevel(use_regex = true).
    row!("gpt-2", &[GPT2], false, true, None),
    // LLAMA_VOCAB_PRE_TYPE_SMOLLM: Digits(individual) then GPT-2's regex, clean_spaces = false.
    row!("smollm", &[r"\p{N}", GPT2], false, false, None),
    // LLAMA_VOCAB_PRE_TYPE_STARCODER: same splits, clean_spaces default.
    row!("starcoder", &[r"\p{N}", GPT2], false, true, None),
    row!("deepseek-llm", DEEPSEEK_LLM, false, false, None),
    row!("deepseek-coder", DEEPSEEK_CODER, false, false, None),
    row!("deepseek-v3", DEEPSEEK_V3, false, false, None),
    // LLAMA_VOCAB_PRE_TYPE_TEKKEN (Mistral Nemo): ignore_merges, clean_spaces = false.
    row!("tekken", &[TEKKEN], true, false, None),
    row!("gpt-4o", &[GPT4O], false, false, None),
    row!("seed-coder", &[SEED_CODER], false, false, None),
    row!("minicpm5", MINICPM5, true, true, None),
    row!("ufakzeka", &[UFAKZEKA], false, false, None),
];

/// Every `tokenizer.ggml.pre` value llama.cpp's `llama_vocab::impl::load` accepts
/// for a BPE vocabulary (the names `--tokenizer-pre` may force).
pub static LLAMA_CPP_PRE_NAMES: &[&str] = &[
    "default",
    "minicpm5",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
    "deepseek-llm",
    "deepseek-coder",
    "deepseek-v3",
    "spark2_5",
    "youtu",
    "falcon",
    "mpt",
    "starcoder",
    "gpt-2",
    "phi-2",
    "jina-es",
    "jina-de",
    "gigachat",
    "jina-v2-es",
    "jina-v2-de",
    "a.x-4.0",
    "mellum",
    "modern-bert",
    "jais-2",
    "gemma4",
    "granite-embed-multi-311m",
    "sarvam-moe",
    "jina-v1-en",
    "jina-v2-code",
    "roberta-bpe",
    "whitespace",
    "refact",
    "command-r",
    "qwen2",
    "deepseek-r1-qwen",
    "kormo",
    "f2llmv2",
    "qwen35",
    "stablelm2",
    "olmo",
    "dbrx",
    "smaug-bpe",
    "poro-chat",
    "chatglm-bpe",
    "glm4",
    "glm5",
    "viking",
    "jais",
    "tekken",
    "smollm",
    "codeshell",
    "bloom",
    "gpt3-finnish",
    "exaone",
    "exaone4",
    "exaone-moe",
    "chameleon",
    "minerva-7b",
    "megrez",
    "gpt-4o",
    "llama4",
    "kanana2",
    "talkie",
    "granite-embed-multi-97m",
    "tiny_aya",
    "cohere2moe",
    "superbpe",
    "trillion",
    "granite-docling",
    "bailingmoe",
    "bailingmoe2",
    "llada-moe",
    "seed-coder",
    "hunyuan",
    "hunyuan-dense",
    "hy_v4",
    "joyai-llm",
    "kimi-k2",
    "ufakzeka",
    "grok-2",
    "afmoe",
    "laguna",
    "minimax-m2",
    "solar-open",
    "mellum2",
];

/// The HF contraction group and the case-expanded form llama.cpp rewrites it to
/// (its regex engine has no inline `(?i:...)`).
const CONTRACTIONS_HF: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)";
const CONTRACTIONS_LLAMA: &str = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";

/// A regex in one spelling for comparison: control characters written as
/// escapes, the contraction group case-expanded, GPT-2's trailing `|\s+` dropped.
pub fn canonical_regex(re: &str) -> String {
    let mut s = String::with_capacity(re.len());
    for c in re.chars() {
        match c {
            '\r' => s.push_str(r"\r"),
            '\n' => s.push_str(r"\n"),
            '\t' => s.push_str(r"\t"),
            _ => s.push(c),
        }
    }
    let s = s.replace(CONTRACTIONS_HF, CONTRACTIONS_LLAMA);
    match s.strip_suffix(r"|\s+") {
        Some(head) if head == GPT2 => head.to_string(),
        _ => s,
    }
}

/// What the pre-tokenizer of a `tokenizer.json` does, reduced to what llama.cpp models.
#[derive(Debug, Clone, PartialEq)]
pub struct PreSignature {
    /// Split regexes in order, canonical spelling.
    pub regexes: Vec<String>,
    /// The BPE model's `ignore_merges`.
    pub ignore_merges: bool,
    /// `clean_up_tokenization_spaces` from `tokenizer_config.json`, when given.
    pub clean_spaces: Option<bool>,
    /// The normalizer's type (`NFC`, ...), `None` when there is none.
    pub normalizer: Option<String>,
}

/// Reduces `tokenizer.json`'s `pre_tokenizer` to its split regexes. Errors say
/// which step llama.cpp's BPE pre-tokenizers cannot express.
pub fn signature(
    tokenizer: &Json,
    tokenizer_config: Option<&Json>,
) -> Result<PreSignature, String> {
    let mut regexes = Vec::new();
    let mut byte_level = false;
    match tokenizer.get("pre_tokenizer") {
        None | Some(Json::Null) => {
            return Err("`pre_tokenizer` is null: no split regex to identify".into())
        }
        Some(pre) => walk(pre, &mut regexes, &mut byte_level)?,
    }
    if !byte_level {
        return Err(
            "`pre_tokenizer` has no ByteLevel step: not a byte-level BPE pre-tokenizer".into(),
        );
    }
    let model = tokenizer.get("model");
    let ignore_merges = model
        .and_then(|m| m.get("ignore_merges"))
        .and_then(Json::as_bool)
        .unwrap_or(false);
    let clean_spaces = tokenizer_config
        .and_then(|c| c.get("clean_up_tokenization_spaces"))
        .and_then(Json::as_bool);
    let normalizer = match tokenizer.get("normalizer") {
        None | Some(Json::Null) => None,
        Some(n) => Some(
            n.get("type")
                .and_then(Json::as_str)
                .unwrap_or("?")
                .to_string(),
        ),
    };
    Ok(PreSignature {
        regexes,
        ignore_merges,
        clean_spaces,
        normalizer,
    })
}

fn walk(pre: &Json, regexes: &mut Vec<String>, byte_level: &mut bool) -> Result<(), String> {
    let ty = pre.get("type").and_then(Json::as_str).unwrap_or("");
    match ty {
        "Sequence" => {
            let steps = pre
                .get("pretokenizers")
                .and_then(Json::as_array)
                .ok_or("Sequence without `pretokenizers` list")?;
            for step in steps {
                walk(step, regexes, byte_level)?;
            }
        }
        "Split" => {
            let behavior = pre.get("behavior").and_then(Json::as_str).unwrap_or("");
            if behavior != "Isolated" {
                return Err(format!(
                    "Split with behavior {behavior:?}: llama.cpp only isolates matches"
                ));
            }
            if pre.get("invert").and_then(Json::as_bool).unwrap_or(false) {
                return Err("Split with invert = true: llama.cpp cannot invert a split".into());
            }
            let pattern = pre.get("pattern").ok_or("Split without `pattern`")?;
            let re = if let Some(r) = pattern.get("Regex").and_then(Json::as_str) {
                r.to_string()
            } else if let Some(s) = pattern.get("String").and_then(Json::as_str) {
                regex::escape(s)
            } else {
                return Err("Split pattern is neither Regex nor String".into());
            };
            regexes.push(canonical_regex(&re));
        }
        "Digits" => {
            let individual = pre
                .get("individual_digits")
                .and_then(Json::as_bool)
                .unwrap_or(false);
            regexes.push(if individual { r"\p{N}" } else { r"\p{N}+" }.to_string());
        }
        "ByteLevel" => {
            if pre
                .get("add_prefix_space")
                .and_then(Json::as_bool)
                .unwrap_or(false)
            {
                return Err("ByteLevel with add_prefix_space = true: llama.cpp adds no space prefix to BPE text".into());
            }
            if pre.get("use_regex").and_then(Json::as_bool).unwrap_or(true) {
                regexes.push(GPT2.to_string());
            }
            *byte_level = true;
        }
        other => {
            return Err(format!(
                "pre-tokenizer step {other:?} has no llama.cpp equivalent here"
            ))
        }
    }
    Ok(())
}

/// The identified name and why.
#[derive(Debug, Clone, PartialEq)]
pub struct PreMatch {
    /// The pre-tokenizer's name as llama.cpp spells it.
    pub name: &'static str,
    /// Other names whose regexes match too, with fewer agreeing flags or later in the table.
    pub alternatives: Vec<&'static str>,
    /// Flags that disagree with the chosen name (informational).
    pub mismatches: Vec<String>,
}

/// Picks the llama.cpp name for `sig`, or `None` when no row's regexes match.
pub fn identify(sig: &PreSignature) -> Option<PreMatch> {
    let mut best: Option<(usize, &PreRow)> = None;
    let mut matching = Vec::new();
    for row in PRE_TABLE {
        let same = row.regexes.len() == sig.regexes.len()
            && row
                .regexes
                .iter()
                .zip(&sig.regexes)
                .all(|(a, b)| canonical_regex(a) == *b);
        if !same {
            continue;
        }
        matching.push(row.name);
        let score = usize::from(row.ignore_merges == sig.ignore_merges)
            + usize::from(sig.clean_spaces == Some(row.clean_spaces))
            + usize::from(row.normalizer == sig.normalizer.as_deref());
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, row));
        }
    }
    let (_, row) = best?;
    let mut mismatches = Vec::new();
    if row.ignore_merges != sig.ignore_merges {
        mismatches.push(format!(
            "ignore_merges: tokenizer {} vs llama.cpp {}",
            sig.ignore_merges, row.ignore_merges
        ));
    }
    if let Some(c) = sig.clean_spaces {
        if c != row.clean_spaces {
            mismatches.push(format!(
                "clean_up_tokenization_spaces: tokenizer {c} vs llama.cpp {}",
                row.clean_spaces
            ));
        }
    }
    if row.normalizer != sig.normalizer.as_deref() {
        mismatches.push(format!(
            "normalizer: tokenizer {:?} vs llama.cpp {:?}",
            sig.normalizer, row.normalizer
        ));
    }
    Some(PreMatch {
        name: row.name,
        alternatives: matching.into_iter().filter(|n| *n != row.name).collect(),
        mismatches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bytelevel(use_regex: bool) -> Json {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
    }

    fn split(re: &str) -> Json {
        json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false})
    }

    #[test]
    fn llama3_regex_is_llama_bpe() {
        let tok = json!({
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split(LLAMA3), bytelevel(false)]},
            "model": {"type": "BPE", "ignore_merges": true},
        });
        let m = identify(
            &signature(&tok, Some(&json!({"clean_up_tokenization_spaces": true}))).unwrap(),
        )
        .unwrap();
        assert_eq!(m.name, "llama-bpe");
        assert!(m.mismatches.is_empty());
        assert!(m.alternatives.contains(&"smaug-bpe"));
        // Without ignore_merges llama.cpp's smaug-bpe is the exact fit.
        let tok = json!({
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split(LLAMA3), bytelevel(false)]},
            "model": {"type": "BPE", "ignore_merges": false},
        });
        assert_eq!(
            identify(&signature(&tok, None).unwrap()).unwrap().name,
            "smaug-bpe"
        );
    }

    #[test]
    fn qwen2_vs_stablelm2_by_flags() {
        let tok = json!({
            "normalizer": {"type": "NFC"},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split(QWEN2), bytelevel(false)]},
            "model": {"type": "BPE"},
        });
        let cfg = json!({"clean_up_tokenization_spaces": false});
        assert_eq!(
            identify(&signature(&tok, Some(&cfg)).unwrap())
                .unwrap()
                .name,
            "qwen2"
        );
        let tok = json!({
            "normalizer": null,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split(QWEN2), bytelevel(false)]},
            "model": {"type": "BPE"},
        });
        let cfg = json!({"clean_up_tokenization_spaces": true});
        assert_eq!(
            identify(&signature(&tok, Some(&cfg)).unwrap())
                .unwrap()
                .name,
            "stablelm2"
        );
    }

    #[test]
    fn smollm_gpt2_and_literal_control_chars() {
        let tok = json!({
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, bytelevel(true)]},
            "model": {"type": "BPE"},
        });
        let cfg = json!({"clean_up_tokenization_spaces": false});
        assert_eq!(
            identify(&signature(&tok, Some(&cfg)).unwrap())
                .unwrap()
                .name,
            "smollm"
        );
        let cfg = json!({"clean_up_tokenization_spaces": true});
        assert_eq!(
            identify(&signature(&tok, Some(&cfg)).unwrap())
                .unwrap()
                .name,
            "starcoder"
        );
        let tok = json!({"pre_tokenizer": bytelevel(true), "model": {"type": "BPE"}});
        assert_eq!(
            identify(&signature(&tok, None).unwrap()).unwrap().name,
            "gpt-2"
        );
        // A Split holding GPT-2's regex with HF's trailing `|\s+` is the same thing.
        let tok = json!({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            split(&format!(r"{GPT2}|\s+")), bytelevel(false)]}, "model": {"type": "BPE"}});
        assert_eq!(
            identify(&signature(&tok, None).unwrap()).unwrap().name,
            "gpt-2"
        );
        // deepseek-coder written with literal CR/LF characters.
        let mut steps: Vec<Json> = vec![split("[\r\n]")];
        steps.extend(DEEPSEEK_CODER[1..4].iter().map(|r| split(r)));
        steps.push(json!({"type": "Digits", "individual_digits": true}));
        steps.push(bytelevel(false));
        let tok = json!({"pre_tokenizer": {"type": "Sequence", "pretokenizers": steps}, "model": {"type": "BPE"}});
        assert_eq!(
            identify(&signature(&tok, None).unwrap()).unwrap().name,
            "deepseek-coder"
        );
    }

    #[test]
    fn unknown_structures_are_rejected() {
        let tok = json!({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [split(r"\w+"), bytelevel(false)]}});
        assert!(identify(&signature(&tok, None).unwrap()).is_none());
        let tok = json!({"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}});
        assert!(signature(&tok, None).unwrap_err().contains("Metaspace"));
        let tok = json!({"pre_tokenizer": split(LLAMA3)});
        assert!(signature(&tok, None).unwrap_err().contains("ByteLevel"));
        let tok = json!({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3}, "behavior": "Removed", "invert": false}, bytelevel(false)]}});
        assert!(signature(&tok, None).unwrap_err().contains("Removed"));
        let tok = json!({"pre_tokenizer": null});
        assert!(signature(&tok, None).is_err());
    }

    #[test]
    fn table_names_are_known_to_llama_cpp() {
        for row in PRE_TABLE {
            assert!(LLAMA_CPP_PRE_NAMES.contains(&row.name), "{}", row.name);
            for re in row.regexes {
                // Every table regex compiles in Rust's engine except look-around ones.
                if !re.contains("(?!") && !re.contains("(?=") {
                    regex::Regex::new(re).unwrap_or_else(|e| panic!("{}: {e}", row.name));
                }
            }
        }
    }
}
