//! Language-balanced calibration: tokenize each language's text, run the CPU
//! forward pass with taps, keep llama.cpp's imatrix statistic per language
//! (`S_l[j] = Σ x_j²` over the tokens of language l, `N_l` tokens), and balance
//! them: `I[j] = Σ_l w_l · S_l[j] / N_l` with `Σ_l w_l = 1` (uniform unless
//! `--lang-weights` says otherwise). [`Importance::to_imatrix`] exports the
//! result as llama.cpp's imatrix GGUF so `llama-quantize --imatrix` reads it.

pub mod actquant;
pub mod amx;
pub mod budget;
pub mod cache;
pub mod checkpoint;
pub mod corpus;
mod delta;
pub mod encoder;
pub mod forward;
pub mod imatrix;
pub mod layered;
pub mod merge;
pub mod patched;
pub mod report;
#[cfg(test)]
pub(crate) mod testmodel;
pub mod tokenize;

pub use checkpoint::{run, run_cached, Calibrated, Event};
pub use corpus::{Corpus, Document};
pub use encoder::{Encoder, Pooling};
pub use forward::{ForwardConfig, Model, Rope, TapSums, WeightSource};
pub use imatrix::{Imatrix, ImatrixEntry};
pub use tokenize::TextTokenizer;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// What went wrong during calibration; every message names the file, tensor or
/// option at fault.
#[derive(Debug, thiserror::Error)]
pub enum CalibError {
    /// The calibration text is unusable (a missing folder, no `<lang>.txt`, not UTF-8).
    #[error("calibration corpus: {0}")]
    Corpus(String),
    /// The model's tokenizer cannot be loaded or fails on the text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A weight is missing or malformed.
    #[error("weights: {0}")]
    Weights(String),
    /// A model whose forward pass laquant does not run.
    #[error("unsupported model for calibration: {0}")]
    Unsupported(String),
    /// An imatrix file that cannot be read, written or merged.
    #[error("imatrix: {0}")]
    Imatrix(String),
    /// A malformed `--lang-weights`.
    #[error("--lang-weights: {0}")]
    LangWeights(String),
    #[error(
        "calibration corpus: {lang} ({source_name}) has {tokens} tokens, fewer than one chunk of {ctx}; \
         give more text or a smaller --ctx"
    )]
    /// A language's text is shorter than one chunk.
    TooShort {
        /// The language.
        lang: String,
        /// Where its text came from.
        source_name: String,
        /// Its token count.
        tokens: usize,
        /// The chunk length.
        ctx: usize,
    },
    /// A sequence names a tap accumulator that is not there.
    #[error("a sequence's taps index {index} is outside the {accumulators} accumulators")]
    TapsIndex {
        /// The sequence's accumulator index.
        index: usize,
        /// How many accumulators there are.
        accumulators: usize,
    },
    /// A group of patches names a patch that is not there.
    #[error("a group names patch {index}, there are {patches}")]
    PatchIndex {
        /// The patch index the group names.
        index: usize,
        /// How many patches there are.
        patches: usize,
    },
    /// A sample sequence without tokens.
    #[error("sample sequence {index} is empty")]
    EmptySequence {
        /// Its index among the sample's sequences.
        index: usize,
    },
    /// Logits asked from beyond the end of the sequence.
    #[error("logits asked from position {from} of a {len}-token sequence")]
    LogitsFrom {
        /// The first position asked.
        from: usize,
        /// The sequence's length.
        len: usize,
    },
    /// `--matmul bf16` on a machine without the AMX tile unit.
    #[error(
        "--matmul bf16 needs a CPU with AMX-BF16 (Sapphire Rapids or later) and a Linux kernel \
         that grants the tile state; this machine has none, use --matmul f32 or auto"
    )]
    NoAmx,
    /// A `--ctx` too small for a chunk.
    #[error("--ctx {ctx} is too small (at least {least} tokens)")]
    CtxTooSmall {
        /// The context length given.
        ctx: usize,
        /// The least it may be.
        least: usize,
    },
    /// The sensitivity sample of a language is too short.
    #[error("sensitivity sample: {lang} ({source_name}) has fewer than 2 tokens")]
    ShortSample {
        /// The language.
        lang: String,
        /// Where its text came from.
        source_name: String,
    },
    /// Embedding drift asked of an encoder whose output is no embedding (a
    /// reranker's rank pooling: one score, no direction).
    #[error(
        "{model}: {pooling} pooling gives no embedding to measure drift on (la-mix and \
         --target-bpw measure an encoder's sensitivity as embedding drift); use a preset"
    )]
    NoEmbedding {
        /// The model's folder.
        model: String,
        /// Its pooling.
        pooling: String,
    },
    /// The worker threads could not be started.
    #[error("cannot start {threads} threads")]
    Threads {
        /// How many were asked.
        threads: usize,
        /// rayon's error.
        #[source]
        source: rayon::ThreadPoolBuildError,
    },
    /// Quantizing a tensor to measure its error failed.
    #[error("{ty} quantization")]
    Quantize {
        /// The type's name.
        ty: &'static str,
        /// The kernel's error.
        #[source]
        source: crate::quant::QuantError,
    },
    /// A broken invariant of laquant itself (a bug), with what broke.
    #[error("internal: {0}")]
    Internal(String),
    /// Anything else, with its message.
    #[error("{0}")]
    Other(String),
}

/// Where the calibration text comes from.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum CorpusSource {
    /// The UDHR in 29 languages compiled into the binary: its calibration part
    /// (the first ~80% of each language, [`corpus::split_holdout`]).
    #[default]
    Embedded,
    /// A folder of `<lang>.txt` files.
    Dir(PathBuf),
}

impl CorpusSource {
    /// The text, read (a folder) or taken from the binary.
    pub fn load(&self) -> Result<Corpus, CalibError> {
        match self {
            CorpusSource::Embedded => Ok(Corpus::embedded_calibration()),
            CorpusSource::Dir(d) => Corpus::from_dir(d),
        }
    }
}

/// Calibration settings (the `calibrate` subcommand's flags).
#[derive(Clone, Debug, PartialEq)]
pub struct CalibOptions {
    /// The calibration text.
    pub corpus: CorpusSource,
    /// Tokens per chunk (`--ctx`, llama-imatrix `-c`), 512 by default.
    pub ctx: usize,
    /// Relative weight per language (`--lang-weights en=2,zh=1`); unnamed languages weigh 1.
    pub lang_weights: Vec<(String, f64)>,
    /// Worker threads; 0 = all cores.
    pub threads: usize,
    /// Also collect the output head's input (`output.weight`, llama-imatrix `--process-output`).
    pub process_output: bool,
    /// At most this many chunks per language (None: all).
    pub max_chunks: Option<usize>,
    /// How the forward pass multiplies (`--matmul`).
    pub matmul: Matmul,
}

/// The arithmetic of the calibration forward pass's products (`--matmul`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Matmul {
    /// `bf16` where the CPU has AMX-BF16 ([`amx::available`]), else `f32`.
    #[default]
    Auto,
    /// `gemm` in f32: every product as exact as f32 allows (the tests' and
    /// llama-imatrix comparisons' setting).
    F32,
    /// Operands rounded to bf16, products summed in f32 on the AMX tile unit
    /// ([`amx`]): several times faster; the statistics move by about 1e-2
    /// relative (llama-imatrix's own F16 arithmetic moves them by 1e-3).
    Bf16,
}

impl Matmul {
    /// What runs on this machine: `Auto` becomes `Bf16` or `F32`; `Bf16`
    /// without AMX is an error (it would silently be f32 otherwise).
    pub fn resolve(self) -> Result<Matmul, CalibError> {
        match self {
            Matmul::Auto if amx::available() => Ok(Matmul::Bf16),
            Matmul::Auto | Matmul::F32 => Ok(Matmul::F32),
            Matmul::Bf16 if amx::available() => Ok(Matmul::Bf16),
            Matmul::Bf16 => Err(CalibError::NoAmx),
        }
    }

    /// The flag's spelling (`auto`, `f32`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            Matmul::Auto => "auto",
            Matmul::F32 => "f32",
            Matmul::Bf16 => "bf16",
        }
    }
}

impl Default for CalibOptions {
    fn default() -> Self {
        CalibOptions {
            corpus: CorpusSource::Embedded,
            ctx: 512,
            lang_weights: Vec::new(),
            threads: 0,
            process_output: false,
            max_chunks: None,
            matmul: Matmul::Auto,
        }
    }
}

/// Parses `en=2,zh=1`: ISO 639-1 codes, finite non-negative numbers, no repeats.
pub fn parse_lang_weights(s: &str) -> Result<Vec<(String, f64)>, CalibError> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lang, w) = part.split_once('=').ok_or_else(|| {
            CalibError::LangWeights(format!("`{part}` is not LANG=WEIGHT (e.g. en=2,zh=1)"))
        })?;
        let lang = lang.trim();
        if !corpus::is_language_code(lang) {
            return Err(CalibError::LangWeights(format!(
                "`{lang}` is not an ISO 639-1 language code"
            )));
        }
        let w: f64 = w.trim().parse().map_err(|_| {
            CalibError::LangWeights(format!("weight `{}` for {lang} is not a number", w.trim()))
        })?;
        if !w.is_finite() || w < 0.0 {
            return Err(CalibError::LangWeights(format!(
                "weight {w} for {lang} must be a finite number >= 0"
            )));
        }
        if out.iter().any(|(l, _)| l == lang) {
            return Err(CalibError::LangWeights(format!("{lang} is given twice")));
        }
        out.push((lang.to_string(), w));
    }
    if out.is_empty() {
        return Err(CalibError::LangWeights(
            "empty; expected LANG=WEIGHT pairs like en=2,zh=1".into(),
        ));
    }
    Ok(out)
}

/// Normalized weights `w_l` (summing to 1) for `langs`: uniform, changed by `given`
/// (unnamed languages weigh 1). A named language missing from `langs` is an error.
pub fn normalized_weights(langs: &[&str], given: &[(String, f64)]) -> Result<Vec<f64>, CalibError> {
    for (l, _) in given {
        if !langs.contains(&l.as_str()) {
            return Err(CalibError::LangWeights(format!(
                "{l} is not in the calibration corpus (it has {})",
                langs.join(",")
            )));
        }
    }
    let raw: Vec<f64> = langs
        .iter()
        .map(|l| {
            given
                .iter()
                .find(|(g, _)| g == l)
                .map(|(_, w)| *w)
                .unwrap_or(1.0)
        })
        .collect();
    let total: f64 = raw.iter().sum();
    if total <= 0.0 {
        return Err(CalibError::LangWeights(
            "every language has weight 0".into(),
        ));
    }
    Ok(raw.iter().map(|w| w / total).collect())
}

/// One language's statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct LangStats {
    /// The language.
    pub lang: String,
    /// Chunks run.
    pub chunks: usize,
    /// How often each token id was fed (the embedding rows this language reads).
    pub token_counts: BTreeMap<u32, u64>,
    /// Σx² per tapped activation and the token count `N_l`.
    pub taps: TapSums,
}

impl LangStats {
    /// `S_l[j] / N_l` for every weight; for a mixture's stacked experts,
    /// per expert over the tokens of this language routed to it (0 where none
    /// was).
    pub fn mean(&self) -> BTreeMap<String, Vec<f64>> {
        self.taps
            .by_weight_counted()
            .into_iter()
            .map(|(name, s, counts)| {
                let width = s.len() / counts.len().max(1);
                let m = s
                    .chunks(width.max(1))
                    .zip(&counts)
                    .flat_map(|(row, &n)| row.iter().map(move |v| v / n.max(1.0)))
                    .collect();
                (name, m)
            })
            .collect()
    }
}

/// One weight's balanced statistic ([`Importance::balanced_counted`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Balanced {
    /// `I[j]` per column, matrix after matrix.
    pub mean: Vec<f64>,
    /// Per matrix, the tokens behind it over every language (for a
    /// mixture's experts: the tokens routed to each).
    pub counts: Vec<f64>,
}

/// Per-language statistics and the weights that balance them.
#[derive(Clone, Debug, PartialEq)]
pub struct Importance {
    /// Each language's statistics.
    pub langs: Vec<LangStats>,
    /// `w_l`, summing to 1, in the order of `langs`.
    pub weights: Vec<f64>,
    /// Tokens per chunk.
    pub ctx: usize,
    /// Where the text came from (recorded in the imatrix file's datasets).
    pub datasets: Vec<String>,
}

impl Importance {
    /// `I[j] = Σ_l w_l S_l[j] / N_l` for every weight (GGUF name).
    pub fn balanced(&self) -> BTreeMap<String, Vec<f64>> {
        self.balanced_counted()
            .into_iter()
            .map(|(name, b)| (name, b.mean))
            .collect()
    }

    /// [`Importance::balanced`] per matrix, with its token counts. A
    /// mixture's expert `e` is balanced over the languages that routed
    /// tokens to it, each weighing the same: `I_e[j] = Σ_l w_l S_le[j] /
    /// N_le / Σ_l w_l` over the languages `l` with `N_le > 0` (the weights
    /// renormalised only when a language is missing); an expert no language
    /// reached keeps 0 sums and a 0 count, as llama-imatrix writes it (and
    /// llama-quantize then weighs its columns 1).
    pub fn balanced_counted(&self) -> BTreeMap<String, Balanced> {
        // Per language, per weight: (name, mean per column, counts per matrix).
        type Means = Vec<(String, Vec<f64>, Vec<f64>)>;
        let per_lang: Vec<Means> = self
            .langs
            .iter()
            .map(|ls| {
                let counts: BTreeMap<String, Vec<f64>> = ls
                    .taps
                    .by_weight_counted()
                    .into_iter()
                    .map(|(n, _, c)| (n, c))
                    .collect();
                ls.mean()
                    .into_iter()
                    .map(|(n, m)| {
                        let c = counts[&n].clone();
                        (n, m, c)
                    })
                    .collect()
            })
            .collect();
        let mut out: BTreeMap<String, Balanced> = BTreeMap::new();
        let Some(first) = per_lang.first() else {
            return out;
        };
        for (wi, (name, m0, c0)) in first.iter().enumerate() {
            let n_mat = c0.len().max(1);
            let width = m0.len() / n_mat;
            let mut b = Balanced {
                mean: vec![0.0; m0.len()],
                counts: vec![0.0; n_mat],
            };
            for mat in 0..n_mat {
                let reached: Vec<bool> = per_lang.iter().map(|l| l[wi].2[mat] > 0.0).collect();
                let share: f64 = self
                    .weights
                    .iter()
                    .zip(&reached)
                    .filter(|(_, &r)| r)
                    .map(|(w, _)| w)
                    .sum();
                let all = reached.iter().all(|&r| r);
                let acc = &mut b.mean[mat * width..(mat + 1) * width];
                for ((l, &w), &r) in per_lang.iter().zip(&self.weights).zip(&reached) {
                    let (n2, m, c) = &l[wi];
                    debug_assert_eq!(n2, name);
                    b.counts[mat] += c[mat];
                    if !r {
                        continue;
                    }
                    let w = if all { w } else { w / share };
                    for (a, v) in acc.iter_mut().zip(&m[mat * width..(mat + 1) * width]) {
                        *a += w * v;
                    }
                }
            }
            out.insert(name.clone(), b);
        }
        out
    }

    /// Per layer of a mixture, the experts no language routed a token to.
    pub fn unrouted_experts(&self) -> Vec<(usize, Vec<usize>)> {
        let Some(first) = self.langs.first() else {
            return Vec::new();
        };
        (0..first.taps.n_layers)
            .filter_map(|layer| {
                let n = first.taps.routed(layer)?.len();
                let idle: Vec<usize> = (0..n)
                    .filter(|&e| {
                        self.langs
                            .iter()
                            .all(|l| l.taps.routed(layer).is_some_and(|r| r[e] == 0.0))
                    })
                    .collect();
                (!idle.is_empty()).then_some((layer, idle))
            })
            .collect()
    }

    /// Total tokens over all languages.
    pub fn tokens(&self) -> u64 {
        self.langs.iter().map(|l| l.taps.tokens).sum()
    }

    /// llama.cpp's imatrix: `counts` = all tokens seen (a mixture's experts:
    /// per expert, the tokens routed to it), `in_sum2 = I[j] · counts`, so
    /// `in_sum2 / counts` is the balanced statistic.
    pub fn to_imatrix(&self) -> Imatrix {
        let mut m = Imatrix {
            datasets: self.datasets.clone(),
            chunk_count: self.langs.iter().map(|l| l.chunks as u32).sum(),
            chunk_size: self.ctx as u32,
            ..Default::default()
        };
        for (name, b) in self.balanced_counted() {
            let width = b.mean.len() / b.counts.len().max(1);
            let sums = b
                .mean
                .chunks(width.max(1))
                .zip(&b.counts)
                .flat_map(|(row, &n)| row.iter().map(move |v| (v * n) as f32))
                .collect();
            m.entries.insert(
                name,
                ImatrixEntry {
                    sums,
                    counts: b.counts.iter().map(|&c| c as f32).collect(),
                },
            );
        }
        m
    }
}

/// Progress of a calibration run, reported after every chunk.
#[derive(Clone, Debug)]
pub struct Progress<'a> {
    /// The language being run.
    pub lang: &'a str,
    /// Its index among the run's languages.
    pub lang_index: usize,
    /// The run's language count.
    pub n_langs: usize,
    /// Chunks of this language run so far.
    pub chunks_done: usize,
    /// This language's chunks.
    pub chunks_total: usize,
    /// Tokens run so far, all languages.
    pub tokens_done: u64,
    /// Tokens of the whole run.
    pub tokens_total: u64,
    /// Time since the run started.
    pub elapsed: std::time::Duration,
}

/// A language code and its chunks of token ids.
pub type LangChunks = (String, Vec<Vec<u32>>);

/// Tokenizes and chunks every document; errors on a language shorter than one chunk.
pub fn tokenize_corpus(
    corpus: &Corpus,
    tok: &TextTokenizer,
    ctx: usize,
    max_chunks: Option<usize>,
) -> Result<Vec<LangChunks>, CalibError> {
    if ctx < 2 {
        return Err(CalibError::CtxTooSmall { ctx, least: 2 });
    }
    let mut out = Vec::new();
    for d in &corpus.docs {
        // llama.cpp's `-f` drops one trailing newline.
        let text = d.text.strip_suffix('\n').unwrap_or(&d.text);
        let ids = tok.encode(text)?;
        let mut ch = tokenize::chunks(&ids, ctx, tok.bos());
        if ch.is_empty() {
            return Err(CalibError::TooShort {
                lang: d.lang.clone(),
                source_name: d.source.clone(),
                tokens: ids.len(),
                ctx,
            });
        }
        if let Some(m) = max_chunks {
            ch.truncate(m.max(1));
        }
        out.push((d.lang.clone(), ch));
    }
    Ok(out)
}

/// Runs calibration on an already loaded model: every chunk of every language
/// through the forward pass, statistics kept per language.
pub fn run_model(
    model: &Model,
    chunks: &[LangChunks],
    opts: &CalibOptions,
    datasets: Vec<String>,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Importance, CalibError> {
    run_chunks(
        chunks,
        opts,
        datasets,
        || TapSums::new(&model.cfg, opts.process_output),
        |c, taps| model.forward(c, Some(taps), false).map(|_| ()),
        progress,
    )
}

/// Every chunk of every language through `forward`, which adds the chunk's
/// matmul inputs to its language's sums (`new_taps` makes one per language),
/// with progress after each chunk: the loop of [`run_model`] and of the
/// encoder's calibration (`encoder::run`).
pub(crate) fn run_chunks(
    chunks: &[LangChunks],
    opts: &CalibOptions,
    datasets: Vec<String>,
    new_taps: impl Fn() -> TapSums,
    mut forward: impl FnMut(&[u32], &mut TapSums) -> Result<(), CalibError>,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Importance, CalibError> {
    let langs: Vec<&str> = chunks.iter().map(|(l, _)| l.as_str()).collect();
    let weights = normalized_weights(&langs, &opts.lang_weights)?;
    let tokens_total: u64 = chunks
        .iter()
        .map(|(_, c)| c.iter().map(|x| x.len() as u64).sum::<u64>())
        .sum();
    let start = Instant::now();
    let mut tokens_done = 0u64;
    let mut taps = Vec::with_capacity(chunks.len());
    for (li, (lang, ch)) in chunks.iter().enumerate() {
        let mut t = new_taps();
        for (ci, c) in ch.iter().enumerate() {
            forward(c, &mut t)?;
            tokens_done += c.len() as u64;
            progress(&Progress {
                lang,
                lang_index: li,
                n_langs: chunks.len(),
                chunks_done: ci + 1,
                chunks_total: ch.len(),
                tokens_done,
                tokens_total,
                elapsed: start.elapsed(),
            });
        }
        taps.push(t);
    }
    Ok(Importance {
        langs: lang_stats(chunks, taps),
        weights,
        ctx: opts.ctx,
        datasets,
    })
}

/// [`run_model`] layer by layer ([`layered::forward_layered`]): the same
/// statistics, with one decoder layer widened to f32 at a time instead of the
/// whole model, and the chunks of a language batched into larger matmuls.
/// `progress` is called after every layer of every group of chunks.
pub fn run_layered(
    cfg: &ForwardConfig,
    src: &dyn WeightSource,
    chunks: &[LangChunks],
    opts: &CalibOptions,
    datasets: Vec<String>,
    threads: usize,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Importance, CalibError> {
    let langs: Vec<&str> = chunks.iter().map(|(l, _)| l.as_str()).collect();
    let weights = normalized_weights(&langs, &opts.lang_weights)?;
    let mut seqs = Vec::new();
    // Per sequence: its language and its index among that language's chunks.
    let mut place = Vec::new();
    for (li, (_, ch)) in chunks.iter().enumerate() {
        for (ci, c) in ch.iter().enumerate() {
            seqs.push(layered::Sequence {
                tokens: c,
                taps: li,
            });
            place.push((li, ci));
        }
    }
    let mut taps: Vec<TapSums> = chunks
        .iter()
        .map(|_| TapSums::new(cfg, opts.process_output))
        .collect();
    let start = Instant::now();
    layered::forward_layered_with(
        cfg,
        src,
        &seqs,
        Some(&mut taps),
        None,
        layered::Limits::default(),
        opts.matmul.resolve()?,
        threads,
        &mut |p| {
            let (li, ci) = place.get(p.last_sequence).copied().unwrap_or((0, 0));
            progress(&Progress {
                lang: &chunks[li].0,
                lang_index: li,
                n_langs: chunks.len(),
                chunks_done: ci + 1,
                chunks_total: chunks[li].1.len(),
                tokens_done: p.tokens_done,
                tokens_total: p.tokens_total,
                elapsed: start.elapsed(),
            })
        },
    )?;
    Ok(Importance {
        langs: lang_stats(chunks, taps),
        weights,
        ctx: opts.ctx,
        datasets,
    })
}

/// Each language's statistics: its chunks, the token ids it fed and its taps.
pub(crate) fn lang_stats(chunks: &[LangChunks], taps: Vec<TapSums>) -> Vec<LangStats> {
    chunks
        .iter()
        .zip(taps)
        .map(|((lang, ch), taps)| {
            let mut token_counts = BTreeMap::new();
            for &t in ch.iter().flatten() {
                *token_counts.entry(t).or_insert(0u64) += 1;
            }
            LangStats {
                lang: lang.clone(),
                chunks: ch.len(),
                token_counts,
                taps,
            }
        })
        .collect()
}

/// `threads`, 0 meaning all cores.
fn thread_count(threads: usize) -> usize {
    if threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        threads
    }
}

/// Runs `f(n)` with rayon's parallel loops on `n` workers (`threads`, 0 =
/// all cores): on the current pool, from the caller's thread, when it has `n`
/// (the global pool that `--threads` sized), else installed on a pool of its
/// own. The former keeps a phase's large buffers on the caller's heap, which
/// the next phase reuses: a pool's worker allocates from a malloc arena of
/// its own, and glibc keeps an arena's freed pages resident, so the
/// calibration's ~40 MB stayed through the sensitivity on polyglot-25m when it
/// ran on a pool of its own.
pub fn in_pool<R: Send>(
    threads: usize,
    f: impl FnOnce(usize) -> R + Send,
) -> Result<R, CalibError> {
    let n = thread_count(threads);
    if rayon::current_num_threads() == n {
        return Ok(f(n));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .map_err(|source| CalibError::Threads { threads: n, source })?;
    Ok(pool.install(|| f(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lang_weights_parse_and_normalize() {
        let w = parse_lang_weights("en=2, zh=1").unwrap();
        assert_eq!(w, vec![("en".to_string(), 2.0), ("zh".to_string(), 1.0)]);
        let n = normalized_weights(&["de", "en", "zh"], &w).unwrap();
        assert_eq!(n, vec![0.25, 0.5, 0.25]);
        let u = normalized_weights(&["de", "en"], &[]).unwrap();
        assert_eq!(u, vec![0.5, 0.5]);
        for bad in ["en", "en=x", "en=-1", "xx=1", "en=1,en=2", "", "en=inf"] {
            assert!(
                matches!(parse_lang_weights(bad), Err(CalibError::LangWeights(_))),
                "{bad}"
            );
        }
        assert!(normalized_weights(&["de"], &[("fr".into(), 1.0)]).is_err());
        assert!(normalized_weights(&["de"], &[("de".into(), 0.0)]).is_err());
    }

    fn stats(lang: &str, tokens: u64, sums: Vec<f64>) -> LangStats {
        LangStats {
            lang: lang.into(),
            chunks: 1,
            token_counts: BTreeMap::new(),
            taps: TapSums {
                sums: vec![sums.clone(), sums.clone(), sums.clone(), sums],
                tokens,
                with_output: false,
                n_layers: 1,
                block: &crate::arch::llama::LLAMA.block,
                n_expert: 0,
                routes: None,
            },
        }
    }

    #[test]
    fn balance_weighs_languages_not_tokens() {
        // en: 1000 tokens, mean x² = 1 on column 0; zh: 10 tokens, mean 3 on column 1.
        let imp = Importance {
            langs: vec![
                stats("en", 1000, vec![1000.0, 0.0]),
                stats("zh", 10, vec![0.0, 30.0]),
            ],
            weights: vec![0.5, 0.5],
            ctx: 512,
            datasets: vec![],
        };
        let b = imp.balanced();
        assert_eq!(b["blk.0.attn_q.weight"], vec![0.5, 1.5]);
        assert_eq!(b["blk.0.ffn_down.weight"], vec![0.5, 1.5]);
        let m = imp.to_imatrix();
        let e = &m.entries["blk.0.attn_v.weight"];
        assert_eq!(e.counts, vec![1010.0]);
        let mean = e.mean();
        assert!(
            (mean[0] - 0.5).abs() < 1e-6 && (mean[1] - 1.5).abs() < 1e-6,
            "{mean:?}"
        );
        // Token-weighted (llama-imatrix merging) would give ~[0.990, 0.0297].
        let imp2 = Importance {
            weights: vec![0.75, 0.25],
            ..imp
        };
        assert_eq!(imp2.balanced()["blk.0.attn_k.weight"], vec![0.75, 0.75]);
    }

    /// A mixture's experts: each balanced over the languages that routed
    /// tokens to it (their weights renormalised), counted by the tokens
    /// routed to it; an expert no language reached keeps sums and count 0
    /// (llama-quantize then weighs it 1) and is reported.
    #[test]
    fn experts_balance_over_the_languages_that_reached_them() {
        let c = testmodel::cfg(&crate::arch::moe::QWEN3MOE, false);
        let (h, b) = (c.hidden, c.block());
        let exps = b.input_index(crate::arch::Input::FfnInExps);
        let per = b.inputs().len() + 1;
        let lang = |name: &str, tokens: u64, routed: [f64; 5], col0: [f64; 5]| {
            let mut taps = TapSums::new(&c, false);
            taps.tokens = tokens;
            taps.sums[per - 1] = routed.to_vec();
            for (e, v) in col0.iter().enumerate() {
                taps.sums[exps][e * h] = *v;
            }
            LangStats {
                lang: name.into(),
                chunks: 1,
                token_counts: BTreeMap::new(),
                taps,
            }
        };
        let imp = Importance {
            langs: vec![
                lang(
                    "en",
                    10,
                    [10.0, 0.0, 10.0, 0.0, 0.0],
                    [20.0, 0.0, 10.0, 0.0, 0.0],
                ),
                lang(
                    "zh",
                    4,
                    [0.0, 4.0, 4.0, 0.0, 0.0],
                    [0.0, 8.0, 12.0, 0.0, 0.0],
                ),
            ],
            weights: vec![0.5, 0.5],
            ctx: 512,
            datasets: vec![],
        };
        let bal = imp.balanced_counted();
        let g = &bal["blk.0.ffn_gate_exps.weight"];
        assert_eq!(g.counts, vec![10.0, 4.0, 14.0, 0.0, 0.0]);
        // Expert 0: en alone (mean 2); 1: zh alone (2); 2: both, 1 and 3.
        let col0: Vec<f64> = (0..5).map(|e| g.mean[e * h]).collect();
        assert_eq!(col0, vec![2.0, 2.0, 2.0, 0.0, 0.0]);
        assert_eq!(bal["blk.0.ffn_up_exps.weight"], *g);
        let m = imp.to_imatrix();
        let e = &m.entries["blk.0.ffn_gate_exps.weight"];
        assert_eq!(e.counts, vec![10.0, 4.0, 14.0, 0.0, 0.0]);
        assert_eq!(e.sums[2 * h], 28.0);
        assert!(e.mean()[3 * h..].iter().all(|&v| v == 1.0));
        // A 2-D weight still counts every token of every language.
        assert_eq!(m.entries["blk.0.ffn_gate_inp.weight"].counts, vec![14.0]);
        // Layers 1 to 3 of the test model: no token routed anywhere.
        let all = vec![0, 1, 2, 3, 4];
        assert_eq!(
            imp.unrouted_experts(),
            vec![
                (0, vec![3, 4]),
                (1, all.clone()),
                (2, all.clone()),
                (3, all)
            ]
        );
        assert!(report::unrouted_text(&imp).contains("blk.0: 3, 4"));
    }
}
