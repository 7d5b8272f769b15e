//! Per-language quality of quantized GGUF files (`laquant eval`): for every
//! language, the perplexity of the reference (our forward pass on the Hugging
//! Face weights) and of each file (the same forward pass on the file's
//! dequantized tensors), the KL divergence of each file's next-token
//! distribution from the reference (mean and 99th percentile), and top-1
//! agreement (and for a mixture of experts, how often each scored token is
//! routed to the reference's experts, layer by layer); per file the headline figures of docs/design.md's *Quality*: mean KLD
//! over languages, the worst language, the disparity `max_l KLD_l / min_l KLD_l`
//! and the non-English mean over English.
//!
//! Text is tokenized and scored as `llama-perplexity --kl-divergence` does
//! (`perplexity` and `kl_divergence` in tools/perplexity/perplexity.cpp): the
//! whole text is tokenized once (BOS first when the model adds it), cut into
//! `len / ctx` chunks (at least two are required), the first token of each chunk
//! replaced by BOS, and only the second half of each chunk scored: the logits
//! of positions `ctx/2 .. ctx-2` against the tokens that follow them.
//!
//! The reference logits of a chunk are computed once and shared by all files;
//! every model is held in memory as f32 (the reference plus one per file), and
//! only one chunk's logits at a time, so memory grows with the number of files,
//! not with the length of the text.

pub mod chart;
pub mod embed;
pub mod metrics;
pub mod report;
pub mod script;
pub mod source;
pub mod text;

pub use metrics::{LangScore, Scorer};
pub use report::{EvalReport, FileReport, LangReport};
pub use source::GgufWeights;
pub use text::{EvalText, LangText};

use crate::calib::{self, CalibError, Model};
use crate::gguf::{GgufError, GgufFile};
use crate::hf::{Checkpoint, HfError};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What went wrong; every message names the file, tensor, language or option at fault.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file that cannot be read or is malformed.
    #[error("{path}: {what}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// A quantized file whose tensors or vocabulary are not the model's.
    #[error("{path} is not a quantization of {model}: {what}")]
    Mismatch {
        /// The quantized file.
        path: PathBuf,
        /// The reference model (its folder or file).
        model: String,
        /// The first difference found.
        what: String,
    },
    #[error(
        "{path}: tensor {tensor} has type {ty}, which laquant cannot dequantize \
         (it reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, IQ4_NL, IQ4_XS, \
         TQ1_0, TQ2_0, MXFP4, Q1_0, Q2_0)"
    )]
    /// A tensor of a block type eval does not dequantize.
    UnsupportedType {
        /// The quantized file.
        path: PathBuf,
        /// The tensor's GGUF name.
        tensor: String,
        /// Its type's name.
        ty: String,
    },
    /// The evaluation text (a folder of `<lang>.txt`) is unusable.
    #[error("evaluation text: {0}")]
    Text(String),
    #[error(
        "evaluation text: {lang} ({source_name}) has {tokens} tokens; scoring needs at least \
         2 × --ctx = {need} (as llama-perplexity); give more text or a smaller --ctx"
    )]
    /// A language's text is shorter than two chunks.
    TooShort {
        /// The language.
        lang: String,
        /// Where its text came from.
        source_name: String,
        /// Its token count.
        tokens: usize,
        /// The tokens scoring needs (2 × ctx).
        need: usize,
    },
    /// An option's value is out of range.
    #[error("--{flag}: {what}")]
    Option {
        /// The flag, without its dashes.
        flag: &'static str,
        /// Why its value is refused.
        what: String,
    },
    /// An encoder whose output is not one embedding per text.
    #[error(
        "{model}: the model's pooling is `{pooling}`; eval compares one pooled embedding per \
         text (mean, cls or last pooling, as bert.pooling_type / 1_Pooling/config.json declare)"
    )]
    NotPooled {
        /// The model.
        model: String,
        /// Its pooling.
        pooling: String,
    },
    /// The reference forward pass failed.
    #[error(transparent)]
    Calib(#[from] CalibError),
    /// A GGUF file cannot be read.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The model's checkpoint cannot be read.
    #[error(transparent)]
    Hf(#[from] HfError),
}

/// Settings of an evaluation run (the `eval` subcommand's flags).
#[derive(Clone, Debug, PartialEq)]
pub struct EvalOptions {
    /// The held-out text scored.
    pub text: EvalText,
    /// Tokens per chunk (llama-perplexity `-c`); `None`: 512 with a folder,
    /// [`text::EMBEDDED_CTX`] on the short embedded held-out text.
    pub ctx: Option<usize>,
    /// At most this many chunks per language (llama-perplexity `--chunks`).
    pub chunks: Option<usize>,
    /// Worker threads; 0 = all cores.
    pub threads: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            text: EvalText::EmbeddedHoldout,
            ctx: None,
            chunks: None,
            threads: 0,
        }
    }
}

impl EvalOptions {
    /// The chunk length this run uses.
    pub fn ctx(&self) -> usize {
        self.ctx.unwrap_or(match self.text {
            EvalText::EmbeddedHoldout => text::EMBEDDED_CTX,
            EvalText::Dir(_) => 512,
        })
    }
}

/// Progress of a run, reported after every chunk.
#[derive(Clone, Debug)]
pub struct Progress<'a> {
    /// The language being scored.
    pub lang: &'a str,
    /// Its index among the run's languages.
    pub lang_index: usize,
    /// The run's language count.
    pub n_langs: usize,
    /// Tokens through a forward pass so far (the reference and every file).
    pub tokens_done: u64,
    /// Tokens through a forward pass when the run ends.
    pub tokens_total: u64,
}

/// A quantized file, opened and checked against the model.
struct Candidate {
    path: PathBuf,
    file: GgufFile,
}

/// Opens every file and checks it against the model before anything heavy runs.
fn open_files(ckpt: &Checkpoint, files: &[PathBuf]) -> Result<Vec<Candidate>, EvalError> {
    if files.is_empty() {
        return Err(EvalError::Option {
            flag: "FILE",
            what: "no GGUF file given; pass one or more quantized files of the model".into(),
        });
    }
    let mut out = Vec::with_capacity(files.len());
    for p in files {
        if !p.is_file() {
            return Err(EvalError::File {
                path: p.clone(),
                what: if p.exists() {
                    "not a file".into()
                } else {
                    "no such file".into()
                },
            });
        }
        let file = GgufFile::open(p)?;
        source::check(&file, ckpt)?;
        out.push(Candidate {
            path: p.clone(),
            file,
        });
    }
    Ok(out)
}

/// Loads a file's dequantized tensors into a forward-pass model.
fn load_candidate(
    c: &Candidate,
    ckpt: &Checkpoint,
    cfg: &calib::ForwardConfig,
    threads: usize,
) -> Result<Model, EvalError> {
    let src = GgufWeights::new(&c.file, &ckpt.config);
    Model::load(cfg.clone(), &src, threads).map_err(|e| EvalError::File {
        path: c.path.clone(),
        what: crate::error_chain(&e),
    })
}

/// Evaluates `files` against the checkpoint they were made from. `progress` is
/// called after every chunk.
pub fn run(
    ckpt: &Checkpoint,
    files: &[PathBuf],
    opts: &EvalOptions,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<EvalReport, EvalError> {
    let t0 = Instant::now();
    let ctx = opts.ctx();
    calib::in_pool(opts.threads, |threads| {
        let cfg = calib::ForwardConfig::from_hf(&ckpt.config)?;
        let cands = open_files(ckpt, files)?;
        let tok = calib::TextTokenizer::from_dir(&ckpt.dir)?;
        let corpus = opts.text.load()?;
        let texts = text::prepare(&corpus, &tok, ctx, opts.chunks)?;
        let reference = calib::checkpoint::load_model(ckpt, threads)?;
        let models = cands
            .iter()
            .map(|c| load_candidate(c, ckpt, &cfg, threads))
            .collect::<Result<Vec<_>, _>>()?;
        let scores = score_all(&reference, &models, &texts, ctx, progress)?;
        let files = cands
            .iter()
            .zip(scores.files)
            .map(|(c, langs)| FileReport::new(&c.path, &c.file, langs))
            .collect();
        Ok(EvalReport {
            model: ckpt.dir.display().to_string(),
            text: opts.text.describe(),
            ctx,
            chunks: opts.chunks,
            reference: scores.reference,
            files,
            seconds: t0.elapsed().as_secs_f64(),
        })
    })?
}

/// The report of a run: a decoder's (perplexity, KLD) or an embedding model's
/// (cosine, retrieval).
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    /// A decoder's.
    Decoder(EvalReport),
    /// An encoder's.
    Embedding(embed::EmbedReport),
}

impl Report {
    /// The terminal tables, or Markdown.
    pub fn tables(&self, markdown: bool) -> String {
        match (self, markdown) {
            (Report::Decoder(r), false) => r.to_text(),
            (Report::Decoder(r), true) => r.to_markdown(),
            (Report::Embedding(r), false) => r.to_text(),
            (Report::Embedding(r), true) => r.to_markdown(),
        }
    }

    /// Names the reference model `model` (a GGUF file whose checkpoint
    /// was rebuilt in a temporary folder is named by its path).
    pub fn set_model(&mut self, model: String) {
        match self {
            Report::Decoder(r) => r.model = model,
            Report::Embedding(r) => r.model = model,
        }
    }

    /// The JSON document.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Report::Decoder(r) => r.to_json(),
            Report::Embedding(r) => r.to_json(),
        }
    }

    /// The `--chart` SVG.
    pub fn render_svg(&self) -> Result<String, EvalError> {
        match self {
            Report::Decoder(r) => chart::render_svg(r),
            Report::Embedding(r) => r.render_svg(),
        }
    }

    /// Files evaluated and the run's wall time.
    pub fn done(&self) -> (usize, f64) {
        match self {
            Report::Decoder(r) => (r.files.len(), r.seconds),
            Report::Embedding(r) => (r.files.len(), r.seconds),
        }
    }
}

/// [`run`] on a decoder, [`embed::run`] on an encoder.
pub fn run_any(
    ckpt: &Checkpoint,
    files: &[PathBuf],
    opts: &EvalOptions,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Report, EvalError> {
    if embed::is_encoder(&ckpt.config) {
        embed::run(ckpt, files, opts, progress).map(Report::Embedding)
    } else {
        run(ckpt, files, opts, progress).map(Report::Decoder)
    }
}

/// Scores of the reference (ppl per language) and of every file.
pub struct Scores {
    /// The reference's perplexity per language.
    pub reference: Vec<report::RefLang>,
    /// Per file, per language (in the order of the texts).
    pub files: Vec<Vec<LangScore>>,
}

/// Runs the reference and every model over every chunk of every language.
pub fn score_all(
    reference: &Model,
    models: &[Model],
    texts: &[LangText],
    ctx: usize,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Scores, EvalError> {
    let first = ctx / 2;
    let vocab = reference.cfg.vocab;
    let per_chunk = (ctx - 1) as u64 * (1 + models.len() as u64);
    let tokens_total: u64 = texts.iter().map(|t| t.chunks.len() as u64).sum::<u64>() * per_chunk;
    let mut tokens_done = 0;
    let mut ref_out = Vec::new();
    let mut per_file: Vec<Vec<LangScore>> = vec![Vec::new(); models.len()];
    for (li, t) in texts.iter().enumerate() {
        let mut ref_scorer = Scorer::default();
        let mut scorers = vec![Scorer::default(); models.len()];
        for chunk in &t.chunks {
            // The logits of the last token predict nothing scored: run ctx - 1 tokens.
            let input = &chunk[..ctx - 1];
            let targets = &chunk[first + 1..];
            let (r, ref_routes) = reference.forward_routes_from(input, first)?;
            let base = metrics::Reference::new(&r, vocab, targets);
            ref_scorer.add_reference(&base);
            for (m, s) in models.iter().zip(scorers.iter_mut()) {
                let (q, routes) = m.forward_routes_from(input, first)?;
                s.add(&base, &q);
                if let (Some(a), Some(b)) = (&ref_routes, &routes) {
                    s.add_routes(a, b);
                }
            }
            tokens_done += per_chunk;
            progress(&Progress {
                lang: &t.lang,
                lang_index: li,
                n_langs: texts.len(),
                tokens_done,
                tokens_total,
            });
        }
        ref_out.push(report::RefLang {
            lang: t.lang.clone(),
            script: script::script(&t.lang),
            chunks: t.chunks.len(),
            tokens: ref_scorer.count(),
            ppl: ref_scorer.ppl_ref(),
        });
        for (pf, s) in per_file.iter_mut().zip(scorers) {
            pf.push(s.finish(&t.lang));
        }
    }
    Ok(Scores {
        reference: ref_out,
        files: per_file,
    })
}

/// Bits per weight of a GGUF file: all tensor bytes over all tensor elements
/// (as `laquant convert` reports it and llama.cpp prints it on load).
pub fn bits_per_weight(f: &GgufFile) -> f64 {
    let bytes: u64 = f.tensors.iter().map(|t| t.n_bytes).sum();
    let n: u64 = f.tensors.iter().map(|t| t.n_elements()).sum();
    if n == 0 {
        0.0
    } else {
        bytes as f64 * 8.0 / n as f64
    }
}

/// Size of the file on disk (0 when it cannot be read).
pub fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}
