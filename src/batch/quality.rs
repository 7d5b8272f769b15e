//! `laquant batch --eval`: the per-language quality of a model's outputs, as
//! `laquant eval MODEL OUT.gguf...` measures it ([`crate::eval`]), run once per
//! model after all of its outputs are finished, so the reference (our forward
//! pass on the Hugging Face weights) is computed once per chunk and shared by
//! every output of the model ([`crate::eval::score_all`]); only when the outputs
//! do not fit in memory together are they scored in several passes.
//!
//! Unlike `laquant eval`, one output that cannot be evaluated (not readable, not
//! a quantization of the model, a type we cannot dequantize) fails only its own
//! evaluation; the others are still scored. The results ([`Quality`]) are kept
//! in the resume state with a fingerprint of the evaluation settings, so a rerun with the same settings does not score a
//! finished output again.

use super::manifest::EvalSettings;
use super::state;
use crate::calib::{self, Model, TextTokenizer};
use crate::eval::{self, text, EvalText, FileReport, GgufWeights};
use crate::gguf::GgufFile;
use crate::hf::Checkpoint;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// JSON has no NaN or infinity (serde_json writes them as `null`): read `null` back as NaN.
fn f64_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One language's figures for one output (as `laquant eval --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LangQuality {
    /// Tokens scored.
    pub tokens: u64,
    /// The output's perplexity on the language's text.
    #[serde(deserialize_with = "f64_or_nan")]
    pub ppl: f64,
    /// The reference's perplexity (the same for every output of a model).
    #[serde(deserialize_with = "f64_or_nan")]
    pub ppl_ref: f64,
    /// Mean over tokens of the KL divergence (nats) of the output's next-token
    /// distribution from the reference's.
    #[serde(deserialize_with = "f64_or_nan")]
    pub kld_mean: f64,
    /// The 99th percentile of the per-token KL divergence.
    #[serde(deserialize_with = "f64_or_nan")]
    pub kld_p99: f64,
    /// The fraction of tokens (0 to 1) whose most likely next token is the
    /// reference's.
    #[serde(deserialize_with = "f64_or_nan")]
    pub top1: f64,
}

/// An output's quality: the headline figures of docs/design.md's *Quality* and every language.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Mean over languages of each language's mean KLD.
    #[serde(deserialize_with = "f64_or_nan")]
    pub kld_mean: f64,
    /// The language with the highest mean KLD.
    pub worst_language: String,
    /// That language's mean KLD.
    #[serde(deserialize_with = "f64_or_nan")]
    pub worst_kld: f64,
    /// `max_l KLD_l / min_l KLD_l`.
    pub kld_disparity: Option<f64>,
    /// Mean KLD of the other languages over English's.
    pub non_en_over_en: Option<f64>,
    /// Mean over languages of each language's top-1 agreement.
    #[serde(deserialize_with = "f64_or_nan")]
    pub top1_mean: f64,
    /// Every language scored, by code.
    pub languages: BTreeMap<String, LangQuality>,
}

impl From<&FileReport> for Quality {
    fn from(f: &FileReport) -> Quality {
        Quality {
            kld_mean: f.kld_mean,
            worst_language: f.worst_language.clone(),
            worst_kld: f.worst_kld,
            kld_disparity: f.kld_disparity,
            non_en_over_en: f.non_en_over_en,
            top1_mean: f.top1_mean,
            languages: f
                .languages
                .iter()
                .map(|(l, r)| {
                    (
                        l.clone(),
                        LangQuality {
                            tokens: r.tokens,
                            ppl: r.ppl,
                            ppl_ref: r.ppl_ref,
                            kld_mean: r.kld_mean,
                            kld_p99: r.kld_p99,
                            top1: r.top1,
                        },
                    )
                })
                .collect(),
        }
    }
}

/// A fingerprint of everything an evaluation result depends on besides the
/// output itself and the model: laquant's version, the text (a folder's files
/// by name, size and time), the languages, the chunk length and count.
pub(crate) fn fingerprint(s: &EvalSettings) -> String {
    let mut h = blake3::Hasher::new();
    h.update(
        format!(
            "laquant {} eval | {:?} | languages {:?} | ctx {} | chunks {:?}",
            env!("CARGO_PKG_VERSION"),
            s.text,
            s.languages,
            options(s, 0).ctx(),
            s.chunks
        )
        .as_bytes(),
    );
    if let EvalText::Dir(d) = &s.text {
        // A missing folder fails at evaluation, with eval's own message.
        let _ = state::fingerprint_dir(d, &mut h);
    }
    h.finalize().to_hex()[..32].to_string()
}

/// `laquant eval`'s options for these settings.
pub(crate) fn options(s: &EvalSettings, threads: usize) -> eval::EvalOptions {
    eval::EvalOptions {
        text: s.text.clone(),
        ctx: s.ctx,
        chunks: s.chunks,
        threads,
    }
}

/// Evaluates `files` (outputs of `model`) on the current rayon pool. The outer
/// error fails every file (the model, the text or the reference); an inner one
/// fails that file only.
///
/// The reference is loaded once and every output of a pass shares its logits;
/// the outputs are held in f32 as the reference is, so when they do not all fit
/// in the memory budget ([`EvalSettings::memory_bytes`], by default half of the
/// available memory) they are scored in several passes, each recomputing the
/// reference logits (the results do not depend on the grouping).
/// `progress` is called after every chunk.
pub fn evaluate(
    model: &str,
    files: &[PathBuf],
    s: &EvalSettings,
    progress: &mut (dyn FnMut(&eval::Progress) + Send),
) -> Result<Evaluated, QualityError> {
    let threads = rayon::current_num_threads();
    let opts = options(s, threads);
    let ctx = opts.ctx();
    let ck = Checkpoint::open(model)?;
    if eval::embed::is_encoder(&ck.config) {
        return Err(QualityError::Encoder {
            model: model.to_string(),
            class: ck.config.hf_arch.clone(),
        });
    }
    let cfg = calib::ForwardConfig::from_hf(&ck.config)?;
    let mut corpus = opts.text.load()?;
    if !s.languages.is_empty() {
        if let Some(l) = s
            .languages
            .iter()
            .find(|l| !corpus.docs.iter().any(|d| &d.lang == *l))
        {
            let have: Vec<&str> = corpus.docs.iter().map(|d| d.lang.as_str()).collect();
            let text = match &opts.text {
                EvalText::EmbeddedHoldout => "the embedded held-out text".to_string(),
                EvalText::Dir(d) => d.display().to_string(),
            };
            return Err(QualityError::Language {
                lang: l.clone(),
                text,
                have: have.join(" "),
            });
        }
        corpus.docs.retain(|d| s.languages.contains(&d.lang));
    }
    let tok = TextTokenizer::from_dir(&ck.dir)?;
    let texts = text::prepare(&corpus, &tok, ctx, opts.chunks)?;
    // Open and check every output (cheap: memory maps); one that fails is left out.
    let mut results: Vec<Result<Quality, String>> = Vec::with_capacity(files.len());
    let mut usable: Vec<(usize, GgufFile)> = Vec::new();
    for (i, p) in files.iter().enumerate() {
        let r = GgufFile::open(p).map_err(|e| chain(&e)).and_then(|f| {
            eval::source::check(&f, &ck).map_err(|e| chain(&e))?;
            Ok(f)
        });
        match r {
            Ok(f) => {
                usable.push((i, f));
                results.push(Err("not scored".into()));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    if usable.is_empty() {
        return Ok(Evaluated { results, passes: 0 });
    }
    let reference = calib::checkpoint::load_model(&ck, threads)?;
    let group = group_size(model_bytes(&ck), s.memory_bytes.or_else(available_memory));
    let mut passes = 0;
    for part in usable.chunks(group) {
        let (mut idx, mut models) = (Vec::new(), Vec::new());
        for (i, f) in part {
            match Model::load(cfg.clone(), &GgufWeights::new(f, &ck.config), threads) {
                Ok(m) => {
                    idx.push(*i);
                    models.push(m);
                }
                Err(e) => results[*i] = Err(format!("{}: {}", files[*i].display(), chain(&e))),
            }
        }
        if models.is_empty() {
            continue;
        }
        passes += 1;
        match eval::score_all(&reference, &models, &texts, ctx, progress) {
            Ok(scores) => {
                for (i, langs) in idx.into_iter().zip(scores.files) {
                    let f = &part.iter().find(|(j, _)| *j == i).expect("in this part").1;
                    results[i] = Ok(Quality::from(&FileReport::new(&files[i], f, langs)));
                }
            }
            Err(e) => {
                for i in idx {
                    results[i] = Err(chain(&e));
                }
            }
        }
    }
    Ok(Evaluated { results, passes })
}

/// Why [`evaluate`] scored none of a model's outputs.
#[derive(Debug, thiserror::Error)]
pub enum QualityError {
    /// The model cannot be opened.
    #[error(transparent)]
    Checkpoint(#[from] crate::hf::HfError),
    /// The reference model cannot be loaded or the text tokenized.
    #[error(transparent)]
    Model(#[from] calib::CalibError),
    /// The evaluation text cannot be read or prepared.
    #[error(transparent)]
    Text(#[from] eval::EvalError),
    /// A language asked for is not in the evaluation text.
    #[error("language {lang:?} is not in the evaluation text ({text} has {have})")]
    Language {
        /// The language.
        lang: String,
        /// The text (the embedded held-out text, or a folder).
        text: String,
        /// The languages it has.
        have: String,
    },
    /// An embedding model: batch scores next-token quality, which it has not.
    #[error(
        "{model} is an embedding model ({class}): batch --eval scores next-token quality (PPL, \
         KLD); evaluate its outputs with `laquant eval {model} FILE.gguf...` (per-language cosine \
         and retrieval agreement)"
    )]
    Encoder {
        /// The model.
        model: String,
        /// Its HF class.
        class: String,
    },
    /// A bug: the evaluation panicked.
    #[error("{0}")]
    Panic(String),
}

/// An error and its sources as one line, kept as text in a file's result.
fn chain(e: &dyn std::error::Error) -> String {
    crate::error_chain(e)
}

/// What [`evaluate`] found: per file its quality or why it has none, and how
/// many passes over the text the reference made.
#[derive(Debug)]
pub struct Evaluated {
    /// One per file, in the order given: its quality, or why it could not be scored.
    pub results: Vec<Result<Quality, String>>,
    /// 1 when every output fits in memory beside the reference (the usual case).
    pub passes: usize,
}

/// Bytes of a checkpoint's weights held as f32 by the forward pass.
fn model_bytes(ck: &Checkpoint) -> u64 {
    ck.tensor_names()
        .iter()
        .filter_map(|n| ck.tensor_shape(n).ok())
        .map(|s| s.iter().product::<usize>() as u64 * 4)
        .sum()
}

/// Half of the memory the kernel says is available (`MemAvailable`), if known.
fn available_memory() -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024 / 2)
}

/// How many outputs are scored per pass so that they and the reference (each
/// `per_model` bytes) fit in `budget`: at least one, all without a budget.
fn group_size(per_model: u64, budget: Option<u64>) -> usize {
    match budget {
        None => usize::MAX,
        Some(b) => (b / per_model.max(1)).saturating_sub(1).max(1) as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_with_nan_survives_the_state_file() {
        let lang = LangQuality {
            tokens: 3,
            ppl: f64::INFINITY,
            ppl_ref: 2.0,
            kld_mean: f64::NAN,
            kld_p99: 0.5,
            top1: 1.0,
        };
        let q = Quality {
            kld_mean: f64::NAN,
            worst_language: "en".into(),
            worst_kld: 0.1,
            kld_disparity: None,
            non_en_over_en: None,
            top1_mean: 1.0,
            languages: [("en".to_string(), lang)].into_iter().collect(),
        };
        let back: Quality = serde_json::from_slice(&serde_json::to_vec(&q).unwrap()).unwrap();
        assert!(back.kld_mean.is_nan() && back.languages["en"].ppl.is_nan());
        assert_eq!(back.languages["en"].kld_p99, 0.5);
    }

    #[test]
    fn outputs_are_grouped_to_fit_the_budget() {
        assert_eq!(group_size(100, None), usize::MAX);
        assert_eq!(group_size(100, Some(1000)), 9);
        assert_eq!(group_size(100, Some(250)), 1);
        assert_eq!(group_size(100, Some(10)), 1);
        assert_eq!(group_size(0, Some(10)), 9);
        assert!(available_memory().is_none_or(|m| m > 0));
    }

    #[test]
    fn fingerprint_follows_every_setting() {
        let base = EvalSettings::default();
        let fp = fingerprint(&base);
        assert_eq!(fp, fingerprint(&base.clone()));
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("en.txt"), "hello").unwrap();
        let dir = EvalSettings {
            text: EvalText::Dir(d.path().to_path_buf()),
            ..base.clone()
        };
        let variants = [
            EvalSettings {
                languages: vec!["en".into()],
                ..base.clone()
            },
            EvalSettings {
                ctx: Some(64),
                ..base.clone()
            },
            EvalSettings {
                chunks: Some(1),
                ..base.clone()
            },
            dir.clone(),
        ];
        for v in &variants {
            assert_ne!(fingerprint(v), fp, "{v:?}");
        }
        // The default ctx written out is the same setting.
        let explicit = EvalSettings {
            ctx: Some(eval::text::EMBEDDED_CTX),
            ..base
        };
        assert_eq!(fingerprint(&explicit), fp);
        // The memory budget changes how outputs are grouped, not their results.
        let memory = EvalSettings {
            memory_bytes: Some(1),
            ..explicit
        };
        assert_eq!(fingerprint(&memory), fp);
        // A changed text file changes the fingerprint.
        let before = fingerprint(&dir);
        std::fs::write(d.path().join("en.txt"), "hello, world").unwrap();
        assert_ne!(fingerprint(&dir), before);
    }
}
