//! Turns calibration text into token ids with the `tokenizers` crate (pure-Rust
//! `fancy-regex` build) from the checkpoint's `tokenizer.json`, and cuts them into
//! chunks exactly as `llama-imatrix` does (`compute_imatrix` in
//! tools/imatrix/imatrix.cpp): the whole text is tokenized once with BOS in front
//! when the model adds BOS (`common_tokenize(..., add_special = true)`), cut into
//! `len / ctx` chunks of `ctx` tokens (the tail is dropped), and the first token
//! of every chunk is *replaced* by BOS when the model adds BOS.

use super::CalibError;
use std::path::Path;

/// A tokenizer plus the BOS rule llama.cpp will apply to the converted model.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    add_bos: bool,
}

/// Token string of a `bos_token` entry in tokenizer_config.json (a string or `{content: ...}`).
fn token_string(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// The leading special token of a TemplateProcessing `single` template, looked
/// for in the post-processor or in a Sequence of them (gguf-py `SpecialVocab._try_load_from_tokenizer_json`).
fn template_first_special(post: &serde_json::Value) -> Option<Option<String>> {
    let procs: Vec<&serde_json::Value> = match post.get("processors").and_then(|p| p.as_array()) {
        Some(list) => list.iter().collect(),
        None => vec![post],
    };
    for p in procs {
        if p.get("type").and_then(|t| t.as_str()) == Some("TemplateProcessing") {
            let single = p.get("single").and_then(|s| s.as_array())?;
            if single.len() < 2 {
                return Some(None);
            }
            return Some(
                single[0]
                    .get("SpecialToken")
                    .and_then(|s| s.get("id"))
                    .and_then(|s| s.as_str())
                    .map(str::to_string),
            );
        }
    }
    None
}

impl TextTokenizer {
    /// Loads `tokenizer.json` (and `tokenizer_config.json` when present) from a checkpoint folder.
    pub fn from_dir(dir: &Path) -> Result<TextTokenizer, CalibError> {
        let tj = dir.join("tokenizer.json");
        if !tj.is_file() {
            if dir.join("tokenizer.model").is_file() {
                return Err(CalibError::Tokenizer(format!(
                    "{}: only a SentencePiece tokenizer.model is present; calibration needs tokenizer.json \
                     (save one with transformers: AutoTokenizer.from_pretrained(dir).save_pretrained(dir)) \
                     or --calib none",
                    dir.display()
                )));
            }
            return Err(CalibError::Tokenizer(format!(
                "{}: no tokenizer.json",
                dir.display()
            )));
        }
        let json = crate::hf::read_capped_string(&tj, crate::hf::limits::TOKENIZER_BYTES)
            .map_err(|e| CalibError::Tokenizer(format!("{}: {e}", tj.display())))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = if cfg_path.is_file() {
            let s = crate::hf::read_capped_string(&cfg_path, crate::hf::limits::TOKENIZER_BYTES)
                .map_err(|e| CalibError::Tokenizer(format!("{}: {e}", cfg_path.display())))?;
            Some(
                serde_json::from_str::<serde_json::Value>(&s)
                    .map_err(|e| CalibError::Tokenizer(format!("{}: {e}", cfg_path.display())))?,
            )
        } else {
            None
        };
        Self::from_json(&json, cfg.as_ref()).map_err(|e| match e {
            CalibError::Tokenizer(m) => CalibError::Tokenizer(format!("{}: {m}", tj.display())),
            other => other,
        })
    }

    /// From the text of tokenizer.json and the parsed tokenizer_config.json.
    ///
    /// BOS is added when the post-processor's template starts with the BOS token,
    /// else when tokenizer_config says `add_bos_token: true` (the same rule
    /// gguf-py's `SpecialVocab` uses to write `tokenizer.ggml.add_bos_token`).
    pub fn from_json(
        json: &str,
        config: Option<&serde_json::Value>,
    ) -> Result<TextTokenizer, CalibError> {
        let raw: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| CalibError::Tokenizer(format!("not JSON: {e}")))?;
        // Before the tokenizers crate builds its automaton of them.
        crate::hf::tokenizer::check_added_tokens(&raw)
            .map_err(|(key, msg)| CalibError::Tokenizer(format!("{key}: {msg}")))?;
        let inner: tokenizers::Tokenizer = json
            .parse()
            .map_err(|e| CalibError::Tokenizer(format!("cannot load the tokenizer: {e}")))?;
        let cfg_bos = token_string(config.and_then(|c| c.get("bos_token")));
        let mut bos_str = cfg_bos.clone();
        let mut add_bos = None;
        if let Some(first) = raw.get("post_processor").and_then(template_first_special) {
            match first {
                Some(tok) => {
                    if bos_str.is_none() {
                        bos_str = Some(tok.clone());
                    }
                    add_bos = Some(Some(&tok) == bos_str.as_ref());
                }
                None => add_bos = Some(false),
            }
        }
        if add_bos.is_none() {
            add_bos = config
                .and_then(|c| c.get("add_bos_token"))
                .and_then(|v| v.as_bool());
        }
        let bos = bos_str.as_deref().and_then(|s| inner.token_to_id(s));
        let add_bos = add_bos.unwrap_or(false);
        if add_bos && bos.is_none() {
            return Err(CalibError::Tokenizer(format!(
                "the model adds a BOS token, but {:?} is not in the vocabulary",
                bos_str.unwrap_or_default()
            )));
        }
        Ok(TextTokenizer {
            inner,
            bos,
            add_bos,
        })
    }

    /// BOS id, when the model adds one.
    pub fn bos(&self) -> Option<u32> {
        if self.add_bos {
            self.bos
        } else {
            None
        }
    }

    /// Token ids of `text` as `common_tokenize(text, add_special = true, parse_special = false)`:
    /// BOS first when the model adds it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, CalibError> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| CalibError::Tokenizer(format!("cannot tokenize: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if let Some(b) = self.bos() {
            ids.push(b);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Token ids of `text` framed as the post-processor frames one sequence
    /// (BERT's `[CLS] … [SEP]`, XLM-R's `<s> … </s>`: what llama.cpp's
    /// `add_special` adds to an embedding prompt, the GGUF's `add_bos_token`
    /// and `add_eos_token` being read from the same template), and how many
    /// of the ids at the end are the frame's closing special tokens.
    pub fn encode_framed(&self, text: &str) -> Result<(Vec<u32>, usize), CalibError> {
        let enc = self
            .inner
            .encode_fast(text, true)
            .map_err(|e| CalibError::Tokenizer(format!("cannot tokenize: {e}")))?;
        let closing = enc
            .get_special_tokens_mask()
            .iter()
            .rev()
            .take_while(|&&m| m == 1)
            .count();
        // A text of special tokens only: nothing is closing but the frame's last.
        let closing = if closing == enc.len() {
            closing.min(1)
        } else {
            closing
        };
        Ok((enc.get_ids().to_vec(), closing))
    }
}

/// Cuts `tokens` into `tokens.len() / ctx` chunks of `ctx`, the first token of each
/// replaced by `bos` when given (`compute_imatrix`: `tokens[seq_start] = llama_vocab_bos(vocab)`).
pub fn chunks(tokens: &[u32], ctx: usize, bos: Option<u32>) -> Vec<Vec<u32>> {
    if ctx == 0 {
        return Vec::new();
    }
    tokens
        .chunks_exact(ctx)
        .map(|c| {
            let mut c = c.to_vec();
            if let Some(b) = bos {
                c[0] = b;
            }
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_drop_tail_and_set_bos() {
        let toks: Vec<u32> = (10..33).collect();
        let c = chunks(&toks, 5, Some(1));
        assert_eq!(c.len(), 4);
        assert_eq!(c[0], vec![1, 11, 12, 13, 14]);
        assert_eq!(c[3], vec![1, 26, 27, 28, 29]);
        let c = chunks(&toks, 5, None);
        assert_eq!(c[1], vec![15, 16, 17, 18, 19]);
        assert!(chunks(&toks, 24, None).is_empty());
    }

    fn tiny_tokenizer(post: &str) -> String {
        format!(
            r#"{{"version":"1.0","truncation":null,"padding":null,
            "added_tokens":[{{"id":0,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}}],
            "normalizer":null,"pre_tokenizer":{{"type":"Whitespace"}},"post_processor":{post},"decoder":null,
            "model":{{"type":"WordLevel","vocab":{{"<s>":0,"a":1,"b":2,"[UNK]":3}},"unk_token":"[UNK]"}}}}"#
        )
    }

    #[test]
    fn bos_from_template_or_config() {
        let tmpl = r#"{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],
            "pair":[{"Sequence":{"id":"A","type_id":0}}],"special_tokens":{"<s>":{"id":"<s>","ids":[0],"tokens":["<s>"]}}}"#;
        let t = TextTokenizer::from_json(&tiny_tokenizer(tmpl), None).unwrap();
        assert_eq!(t.encode("a b a").unwrap(), vec![0, 1, 2, 1]);
        let t = TextTokenizer::from_json(&tiny_tokenizer("null"), None).unwrap();
        assert_eq!(t.encode("a b").unwrap(), vec![1, 2]);
        let cfg = serde_json::json!({"bos_token": "<s>", "add_bos_token": true});
        let t = TextTokenizer::from_json(&tiny_tokenizer("null"), Some(&cfg)).unwrap();
        assert_eq!(t.encode("b").unwrap(), vec![0, 2]);
        let cfg = serde_json::json!({"bos_token": "<missing>", "add_bos_token": true});
        assert!(TextTokenizer::from_json(&tiny_tokenizer("null"), Some(&cfg)).is_err());
        assert!(TextTokenizer::from_json("{not json", None).is_err());
    }
}
