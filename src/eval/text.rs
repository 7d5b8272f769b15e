//! Evaluation text: a folder of `<lang>.txt` files (`--eval DIR`, for example
//! the held-out ../shared/corpus/eval, which is never compiled into the binary)
//! or, by default, the held-out part of the embedded corpus that calibration
//! does not read ([`crate::calib::Corpus::embedded_holdout`]); tokenized and cut
//! into chunks as `llama-perplexity` does (`perplexity()` in
//! tools/perplexity/perplexity.cpp).

use super::EvalError;
use crate::calib::{tokenize, CalibError, Corpus, TextTokenizer};
use std::path::PathBuf;

/// Default chunk length on the embedded held-out text, which is short (about a
/// fifth of each UDHR text: 600 to 1500 tokens with a 16k vocabulary).
pub const EMBEDDED_CTX: usize = 128;

/// Where the evaluation text comes from.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum EvalText {
    /// The part of the embedded corpus calibration does not use.
    #[default]
    EmbeddedHoldout,
    /// A folder of `<lang>.txt` files.
    Dir(PathBuf),
}

impl EvalText {
    /// One line for the output, saying where the text came from.
    pub fn describe(&self) -> String {
        match self {
            EvalText::EmbeddedHoldout => format!(
                "embedded held-out text: the last ~{:.0}% of the UDHR in each language, which \
                 calibration does not read (pass --eval DIR for real held-out text)",
                (1.0 - crate::calib::corpus::CALIB_SHARE) * 100.0
            ),
            EvalText::Dir(d) => d.display().to_string(),
        }
    }

    /// The text, read (a folder) or taken from the embedded corpus.
    pub fn load(&self) -> Result<Corpus, EvalError> {
        match self {
            EvalText::EmbeddedHoldout => Ok(Corpus::embedded_holdout()),
            EvalText::Dir(d) => Corpus::from_dir(d).map_err(|e| match e {
                CalibError::Corpus(m) => EvalError::Text(m),
                other => other.into(),
            }),
        }
    }
}

/// One language's chunks.
#[derive(Clone, Debug, PartialEq)]
pub struct LangText {
    /// The language.
    pub lang: String,
    /// Where its text came from.
    pub source: String,
    /// Tokens of the whole text (BOS included when the model adds it).
    pub tokens: usize,
    /// `ctx` tokens each, the first replaced by BOS when the model adds it.
    pub chunks: Vec<Vec<u32>>,
}

/// Tokenizes and chunks every document as llama-perplexity: at least `2 · ctx`
/// tokens per language, `min(len / ctx, max_chunks)` chunks.
pub fn prepare(
    corpus: &Corpus,
    tok: &TextTokenizer,
    ctx: usize,
    max_chunks: Option<usize>,
) -> Result<Vec<LangText>, EvalError> {
    if ctx < 4 {
        return Err(EvalError::Option {
            flag: "ctx",
            what: format!("{ctx} is too small (at least 4 tokens: half of each chunk is context)"),
        });
    }
    if max_chunks == Some(0) {
        return Err(EvalError::Option {
            flag: "chunks",
            what: "0 chunks scores nothing; give at least 1".into(),
        });
    }
    let mut out = Vec::with_capacity(corpus.docs.len());
    for d in &corpus.docs {
        // `-f FILE` drops one trailing newline (common/arg.cpp).
        let text = d.text.strip_suffix('\n').unwrap_or(&d.text);
        let ids = tok.encode(text)?;
        if ids.len() < 2 * ctx {
            return Err(EvalError::TooShort {
                lang: d.lang.clone(),
                source_name: d.source.clone(),
                tokens: ids.len(),
                need: 2 * ctx,
            });
        }
        let mut chunks = tokenize::chunks(&ids, ctx, tok.bos());
        if let Some(m) = max_chunks {
            chunks.truncate(m);
        }
        out.push(LangText {
            lang: d.lang.clone(),
            source: d.source.clone(),
            tokens: ids.len(),
            chunks,
        });
    }
    Ok(out)
}
