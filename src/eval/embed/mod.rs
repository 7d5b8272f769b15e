//! `laquant eval` on an embedding model (the BERT family's encoders:
//! `BertModel`, `XLMRobertaModel`): per language, how far each quantized
//! file's pooled embeddings drift from the reference's, and whether
//! retrieval across languages still finds what the reference finds.
//!
//! - Windows: every non-empty line of a language's text is one window (a
//!   UDHR paragraph or article heading, a manual's paragraph, an interface
//!   string), tokenized as llama.cpp tokenizes an embedding prompt (the
//!   tokenizer's frame, `[CLS] … [SEP]` or `<s> … </s>`) and run as its own
//!   sequence; a window longer than `--ctx` tokens (default: the model's
//!   positions) keeps its first tokens and the closing frame.
//! - Reference: [`crate::calib::Encoder`] on the Hugging Face weights; each
//!   file: the same pass on its dequantized tensors ([`GgufWeights`], matmul
//!   inputs rounded as ggml's CPU backend rounds them), which is llama.cpp's
//!   embedding of that file within `tests/encoder_interop.rs`'s bound.
//! - Cosine: per window, the file's pooled embedding against the
//!   reference's; per language the mean, 1st percentile and least.
//! - Retrieval: each language against English (the pivot; without English,
//!   the first language) and English against it: for each query window, the
//!   nearest window of the other language by cosine, with the file's
//!   embeddings (queries and candidates alike) and with the reference's; the
//!   share of queries where they are the same window (agreement), both
//!   directions pooled. On parallel text, the queries and candidates are the
//!   windows both languages have, paired, and the share whose nearest
//!   neighbour is the query's own translation is given for the file and for
//!   the reference. The embedded corpus is parallel: the UDHR's 30 articles
//!   have the same paragraphs in every language, so counted from the end of
//!   the text line k of every language is the same paragraph (title and
//!   preamble differ, the held-out part lies within the articles;
//!   `tests::embedded_udhr_is_parallel_from_the_end`). A folder's text is not
//!   assumed parallel: agreement only.

pub mod metrics;
pub mod report;

pub use report::{EmbedFileReport, EmbedLang, EmbedReport, RefWindows};

use super::{EvalError, EvalOptions, EvalText, GgufWeights, Progress};
use crate::calib::{self, Corpus, Encoder, Pooling, TextTokenizer, WeightSource};
use crate::hf::{Checkpoint, Config};
use metrics::Retrieval;
use std::path::PathBuf;
use std::time::Instant;

/// Whether the checkpoint is an encoder, evaluated by embeddings.
pub fn is_encoder(cfg: &Config) -> bool {
    cfg.arch.block.attention.kind == crate::arch::AttentionKind::BidirectionalSeparateQkv
}

/// One language's windows.
#[derive(Clone, Debug, PartialEq)]
pub struct LangWindows {
    /// The language.
    pub lang: String,
    /// Token ids of each window, framed.
    pub ids: Vec<Vec<u32>>,
    /// Each window's line counted from the end of the text (parallel text:
    /// the same key is the same sentence in every language), or `None`.
    pub keys: Option<Vec<usize>>,
    /// Windows cut to `--ctx` tokens.
    pub truncated: usize,
}

impl LangWindows {
    /// Tokens of all windows.
    pub fn tokens(&self) -> u64 {
        self.ids.iter().map(|w| w.len() as u64).sum()
    }
}

/// The windows of every language: non-empty lines, framed, at most `ctx`
/// tokens, at most `max` per language (the first ones).
pub fn windows(
    corpus: &Corpus,
    tok: &TextTokenizer,
    ctx: usize,
    max: Option<usize>,
    parallel: bool,
) -> Result<Vec<LangWindows>, EvalError> {
    if max == Some(0) {
        return Err(EvalError::Option {
            flag: "chunks",
            what: "0 windows scores nothing; give at least 1".into(),
        });
    }
    let mut out = Vec::with_capacity(corpus.docs.len());
    for d in &corpus.docs {
        let lines: Vec<&str> = d.text.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.is_empty() {
            return Err(EvalError::Text(format!("{}: no non-empty line", d.source)));
        }
        let n = lines.len();
        let take = max.unwrap_or(n).min(n);
        let mut w = LangWindows {
            lang: d.lang.clone(),
            ids: Vec::with_capacity(take),
            keys: parallel.then(|| (0..take).map(|i| n - 1 - i).collect()),
            truncated: 0,
        };
        for line in &lines[..take] {
            let (mut ids, closing) = tok.encode_framed(line.trim_end())?;
            if ids.len() > ctx {
                let tail = ids.split_off(ids.len() - closing);
                ids.truncate(ctx.saturating_sub(tail.len()));
                ids.extend(tail);
                w.truncated += 1;
            }
            w.ids.push(ids);
        }
        out.push(w);
    }
    Ok(out)
}

/// Pooled embeddings of every window of every language (what [`run`]
/// compares), `progress` called after every window.
pub fn embed_all(
    enc: &Encoder,
    src: &dyn WeightSource,
    texts: &[LangWindows],
    done: &mut u64,
    total: u64,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Vec<Vec<Vec<f32>>>, EvalError> {
    let mut out = Vec::with_capacity(texts.len());
    for (li, t) in texts.iter().enumerate() {
        let mut v = Vec::with_capacity(t.ids.len());
        for ids in &t.ids {
            v.push(enc.embed(src, ids, None)?);
            *done += ids.len() as u64;
            progress(&Progress {
                lang: &t.lang,
                lang_index: li,
                n_langs: texts.len(),
                tokens_done: *done,
                tokens_total: total,
            });
        }
        out.push(v);
    }
    Ok(out)
}

/// The encoder of `config` on `src`, refused unless it pools (mean, CLS or last token).
fn pooled_encoder(
    ckpt: &Checkpoint,
    src: &dyn WeightSource,
    threads: usize,
) -> Result<Encoder, EvalError> {
    let enc = Encoder::load(&ckpt.config, src, None, threads)?;
    match enc.pooling {
        Pooling::Mean | Pooling::Cls | Pooling::Last => Ok(enc),
        p => Err(EvalError::NotPooled {
            model: ckpt.dir.display().to_string(),
            pooling: format!("{p:?}").to_lowercase(),
        }),
    }
}

/// The ctx this run uses: `--ctx`, at most the model's positions.
fn window_ctx(opts: &EvalOptions, positions: usize) -> Result<usize, EvalError> {
    match opts.ctx {
        None => Ok(positions),
        Some(c) if c < 3 => Err(EvalError::Option {
            flag: "ctx",
            what: format!("{c} is too small (a window holds its frame's tokens and text)"),
        }),
        Some(c) if c > positions => Err(EvalError::Option {
            flag: "ctx",
            what: format!("{c} is longer than the encoder's {positions} positions"),
        }),
        Some(c) => Ok(c),
    }
}

/// Evaluates `files`, quantizations of the encoder `ckpt`, by embeddings.
pub fn run(
    ckpt: &Checkpoint,
    files: &[PathBuf],
    opts: &EvalOptions,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<EmbedReport, EvalError> {
    let t0 = Instant::now();
    calib::in_pool(opts.threads, |threads| {
        let cands = super::open_files(ckpt, files)?;
        let reference = pooled_encoder(ckpt, ckpt, threads)?;
        let ctx = window_ctx(opts, reference.max_tokens())?;
        let tok = TextTokenizer::from_dir(&ckpt.dir)?;
        let parallel = opts.text == EvalText::EmbeddedHoldout;
        let texts = windows(&opts.text.load()?, &tok, ctx, opts.chunks, parallel)?;
        let total = texts.iter().map(LangWindows::tokens).sum::<u64>() * (1 + files.len() as u64);
        let mut done = 0;
        let r_emb = embed_all(&reference, ckpt, &texts, &mut done, total, progress)?;
        let pooling = format!("{:?}", reference.pooling).to_lowercase();
        drop(reference);
        let mut reports = Vec::with_capacity(cands.len());
        for c in &cands {
            let src = GgufWeights::new(&c.file, &ckpt.config);
            let enc = pooled_encoder(ckpt, &src, threads).map_err(|e| EvalError::File {
                path: c.path.clone(),
                what: e.to_string(),
            })?;
            let f_emb = embed_all(&enc, &src, &texts, &mut done, total, progress)?;
            let langs = score_file(&texts, &r_emb, &f_emb);
            reports.push(EmbedFileReport::new(&c.path, &c.file, &texts, langs));
        }
        Ok(EmbedReport::new(
            ckpt.dir.display().to_string(),
            opts.text.describe(),
            ctx,
            pooling,
            &texts,
            reports,
            t0.elapsed().as_secs_f64(),
        ))
    })?
}

/// The pivot of the retrieval pairs: English, else the first language.
pub fn pivot(texts: &[LangWindows]) -> Option<usize> {
    texts
        .iter()
        .position(|t| t.lang == "en")
        .or((!texts.is_empty()).then_some(0))
}

/// One direction's queries and candidates: indices into `a` and `b`, and the
/// translation of each query among the candidates when both are parallel.
fn pairing(a: &LangWindows, b: &LangWindows) -> (Vec<usize>, Vec<usize>, Option<Vec<usize>>) {
    match (&a.keys, &b.keys) {
        (Some(ka), Some(kb)) => {
            let q: Vec<usize> = (0..ka.len()).filter(|&i| kb.contains(&ka[i])).collect();
            let c: Vec<usize> = (0..kb.len()).filter(|&j| ka.contains(&kb[j])).collect();
            let tr = q
                .iter()
                .map(|&i| c.iter().position(|&j| kb[j] == ka[i]).unwrap_or(0))
                .collect();
            (q, c, Some(tr))
        }
        _ => ((0..a.ids.len()).collect(), (0..b.ids.len()).collect(), None),
    }
}

/// Retrieval from language `a` into language `b`.
fn direction(
    texts: &[LangWindows],
    (a, b): (usize, usize),
    r_unit: &[Vec<Vec<f32>>],
    f_unit: &[Vec<Vec<f32>>],
) -> Retrieval {
    let (q, c, tr) = pairing(&texts[a], &texts[b]);
    let pick = |e: &[Vec<f32>], ix: &[usize]| ix.iter().map(|&i| e[i].clone()).collect::<Vec<_>>();
    metrics::retrieve(
        &pick(&r_unit[a], &q),
        &pick(&r_unit[b], &c),
        &pick(&f_unit[a], &q),
        &pick(&f_unit[b], &c),
        tr.as_deref(),
    )
}

/// Per language (in the order of `texts`): its cosines and, but for the
/// pivot, its retrieval against the pivot in both directions.
pub fn score_file(
    texts: &[LangWindows],
    r_emb: &[Vec<Vec<f32>>],
    f_emb: &[Vec<Vec<f32>>],
) -> Vec<(metrics::CosineStats, Option<Retrieval>)> {
    let units = |e: &[Vec<Vec<f32>>]| -> Vec<Vec<Vec<f32>>> {
        e.iter()
            .map(|l| l.iter().map(|v| metrics::unit(v)).collect())
            .collect()
    };
    let (r_unit, f_unit) = (units(r_emb), units(f_emb));
    let p = pivot(texts);
    (0..texts.len())
        .map(|l| {
            let cos: Vec<f64> = r_emb[l]
                .iter()
                .zip(&f_emb[l])
                .map(|(r, f)| metrics::cosine(r, f))
                .collect();
            let ret = p.filter(|&p| p != l).map(|p| {
                direction(texts, (l, p), &r_unit, &f_unit).and(direction(
                    texts,
                    (p, l),
                    &r_unit,
                    &f_unit,
                ))
            });
            (metrics::cosine_stats(&cos), ret)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The alignment the embedded corpus's retrieval relies on: counted from
    /// the end, every language's lines are the same paragraphs over the
    /// whole of the 30 articles (80 lines: 30 headings, 50 paragraphs). In
    /// every language the lines where English has a heading are all shorter
    /// than those where it has a paragraph, and where the language writes
    /// the article's number in ASCII digits, its headings carry English's
    /// numbers.
    #[test]
    fn embedded_udhr_is_parallel_from_the_end() {
        let corpus = Corpus::embedded();
        let lines = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect()
        };
        let en = lines(&corpus.docs.iter().find(|d| d.lang == "en").unwrap().text);
        let number = |l: &str| -> Option<String> {
            let d: String = l.chars().filter(|c| c.is_ascii_digit()).collect();
            (!d.is_empty()).then_some(d)
        };
        let mut with_digits = 0;
        for d in &corpus.docs {
            let l = lines(&d.text);
            assert!(l.len() >= 80, "{}: {} lines", d.lang, l.len());
            let mut ascii = true;
            let (mut longest_heading, mut shortest_paragraph) = (0, usize::MAX);
            for k in 1..=80 {
                let (e, x) = (&en[en.len() - k], &l[l.len() - k]);
                let n = x.chars().count();
                if e.chars().count() < 30 {
                    longest_heading = longest_heading.max(n);
                    ascii &= number(x) == number(e);
                } else {
                    shortest_paragraph = shortest_paragraph.min(n);
                }
            }
            assert!(
                longest_heading < shortest_paragraph,
                "{}: a heading of {longest_heading} characters where English has a paragraph, \
                 or a paragraph of {shortest_paragraph} where it has a heading",
                d.lang
            );
            with_digits += usize::from(ascii);
        }
        // All but those numbering in other digits or words (bn fa he hi ja
        // zh; French's first is "Article premier").
        assert!(
            with_digits >= 22,
            "{with_digits} languages carry the numbers"
        );
        // The held-out part lies within the articles.
        for d in Corpus::embedded_holdout().docs {
            assert!(lines(&d.text).len() < 80, "{}", d.lang);
        }
    }

    fn lw(lang: &str, n: usize, keys: Option<Vec<usize>>) -> LangWindows {
        LangWindows {
            lang: lang.into(),
            ids: vec![vec![1]; n],
            keys,
            truncated: 0,
        }
    }

    #[test]
    fn parallel_windows_pair_by_key() {
        let a = lw("de", 3, Some(vec![4, 3, 2]));
        let b = lw("en", 4, Some(vec![5, 4, 3, 1]));
        let (q, c, tr) = pairing(&a, &b);
        assert_eq!(q, vec![0, 1]);
        assert_eq!(c, vec![1, 2]);
        assert_eq!(tr, Some(vec![0, 1]));
        let (q, c, tr) = pairing(&lw("de", 2, None), &b);
        assert_eq!((q.len(), c.len(), tr), (2, 4, None));
        assert_eq!(pivot(&[lw("de", 1, None), lw("en", 1, None)]), Some(1));
        assert_eq!(pivot(&[lw("de", 1, None)]), Some(0));
    }

    /// Identical embeddings: cosine 1, full agreement; the pivot has no retrieval.
    #[test]
    fn identical_embeddings_score_one() {
        let texts = vec![
            lw("de", 3, Some(vec![2, 1, 0])),
            lw("en", 3, Some(vec![2, 1, 0])),
        ];
        let e: Vec<Vec<Vec<f32>>> = vec![
            vec![vec![1.0, 0.1], vec![0.1, 1.0], vec![-1.0, 0.2]],
            vec![vec![0.9, 0.0], vec![0.0, 0.8], vec![-0.7, 0.1]],
        ];
        let s = score_file(&texts, &e, &e);
        assert!((s[0].0.mean - 1.0).abs() < 1e-12);
        let r = s[0].1.unwrap();
        assert_eq!((r.queries, r.agree, r.hit, r.hit_ref), (6, 6, 6, 6));
        assert!(s[1].1.is_none());
    }
}
