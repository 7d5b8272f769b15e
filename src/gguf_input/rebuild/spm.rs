//! `tokenizer.json` for a SentencePiece vocabulary (`tokenizer.ggml.model`
//! `llama`: Llama 2, Mistral, Gemma), that the `tokenizers` crate runs as
//! llama.cpp's `llm_tokenizer_spm` tokenizes that file: a byte-fallback BPE
//! whose merges are every pair of tokens whose concatenation is a token,
//! ranked by that token's score (`tokenizer.ggml.scores`, highest first: the
//! bigram llama.cpp merges first), as transformers' `LlamaConverter` ranks
//! them; spaces replaced by `▁` and, when `tokenizer.ggml.add_space_prefix`
//! says so (llama.cpp's default: yes), `▁` put before each run of text;
//! characters no token spells out as `<0xXX>` byte tokens.
//!
//! Refused, naming the token, where the two cannot agree: a token made of a
//! character that is no token and a token or character (llama.cpp merges
//! the two, the BPE spells that character out in bytes), a missing byte
//! token.

use super::{bad, refuse};
use crate::gguf::{GgufFile, Value};
use crate::pipeline::ConvertError;
use serde_json::{json, Value as Json};
use std::collections::HashMap;

/// `tokenizer.json` (but its added tokens) for the SentencePiece vocabulary
/// `tokens` of `f`, `vocab` its map from token to id.
pub(super) fn tokenizer(
    f: &GgufFile,
    tokens: &[&str],
    vocab: serde_json::Map<String, Json>,
) -> Result<Json, ConvertError> {
    let key = "tokenizer.ggml.scores";
    let scores: Vec<f32> = f
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| bad(f, format!("key {key} is missing or not an array")))?
        .iter()
        .map(|v| match v {
            Value::F32(s) => Ok(*s),
            _ => Err(bad(f, format!("key {key} holds a non-f32"))),
        })
        .collect::<Result<_, _>>()?;
    if scores.len() != tokens.len() {
        return Err(bad(
            f,
            format!(
                "key {key} has {} scores for {} tokens",
                scores.len(),
                tokens.len()
            ),
        ));
    }
    let merges = merges(f, tokens, &scores)?;
    let prefix = !matches!(
        f.get("tokenizer.ggml.add_space_prefix"),
        Some(Value::Bool(false))
    );
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"});
    let normalizer = if prefix {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, replace]})
    } else {
        replace
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let unk = f
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(Value::as_u64)
        .and_then(|id| tokens.get(id as usize));
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [],
        "normalizer": normalizer,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
            "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges},
    }))
}

/// Every split of a token into two tokens, ranked: by the token's score,
/// highest first, then (equal scores) by the token's id, then by the ids of
/// the two parts (transformers' `SentencePieceExtractor`).
fn merges(f: &GgufFile, tokens: &[&str], scores: &[f32]) -> Result<Vec<[String; 2]>, ConvertError> {
    // A text's id: its last token, as llama.cpp's map from text to token.
    let id: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, &t)| (t, i)).collect();
    for b in 0..=255u8 {
        let t = format!("<0x{b:02X}>");
        if !id.contains_key(t.as_str()) {
            return Err(refuse(
                f,
                format!("has a llama vocabulary without byte token {t}"),
            ));
        }
    }
    let mut all = Vec::new();
    for (i, &t) in tokens.iter().enumerate() {
        if id[t] != i {
            continue;
        }
        // llama.cpp merges two symbols whose text is a token, a character
        // no token spells out included.
        let part = |p: &str| id.contains_key(p) || p.chars().nth(1).is_none();
        if let Some((k, _)) = t.char_indices().skip(1).find(|&(k, _)| {
            part(&t[..k])
                && part(&t[k..])
                && !(id.contains_key(&t[..k]) && id.contains_key(&t[k..]))
        }) {
            return Err(refuse(
                f,
                format!(
                    "has a llama vocabulary whose token {i} ({t:?}) joins {:?} and {:?}, one of \
                     them a character that is no token (llama.cpp merges it, a byte-fallback BPE \
                     spells it out in bytes)",
                    &t[..k],
                    &t[k..]
                ),
            ));
        }
        let mut local: Vec<(usize, usize, usize)> = t
            .char_indices()
            .skip(1)
            .filter_map(|(k, _)| Some((k, *id.get(&t[..k])?, *id.get(&t[k..])?)))
            .collect();
        local.sort_by_key(|&(_, l, r)| (l, r));
        all.extend(local.into_iter().map(|(k, ..)| (scores[id[t]], t, k)));
    }
    // Stable: equal scores keep the tokens' order.
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    Ok(all
        .into_iter()
        .map(|(_, t, k)| [t[..k].to_string(), t[k..].to_string()])
        .collect())
}
