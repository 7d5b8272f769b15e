//! What `laquant eval` shows for an embedding model: per file the headline
//! figures (size, bits per weight, mean cosine over languages, the worst
//! language, the lowest 1st percentile, retrieval agreement, translation hits
//! of the file and of the reference) and per language the figures behind
//! them, as aligned text, Markdown or JSON
//! (`{"kind": "embedding", "files": [{"file", "bpw", "languages": {"de":
//! {"cos_mean", "cos_p1", "cos_min", "retrieval": {"pivot", "queries",
//! "agreement", "translation_hit", "translation_hit_ref"}}}, ...}]}`), and
//! the chart of the embedding drift `1 − mean cosine` per language.

use super::metrics::{CosineStats, Retrieval};
use super::{pivot, LangWindows};
use crate::eval::chart::{self, Bars};
use crate::eval::report::{tables_markdown, tables_text, Table};
use crate::eval::{script, EvalError};
use crate::gguf::GgufFile;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// One language's retrieval against the pivot, both directions pooled.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RetrievalReport {
    /// The other language of the pairs (English).
    pub pivot: String,
    /// Queries run (this language's into the pivot's windows and back).
    pub queries: usize,
    /// Share of queries whose nearest neighbour is the reference's.
    pub agreement: f64,
    /// Share whose nearest neighbour with the file's embeddings is the
    /// query's translation (null: the text is not parallel).
    pub translation_hit: Option<f64>,
    /// The same with the reference's embeddings.
    pub translation_hit_ref: Option<f64>,
}

/// One language's figures for one file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EmbedLang {
    /// The language's writing system.
    pub script: &'static str,
    /// Windows embedded.
    pub windows: usize,
    /// Mean cosine of the file's pooled embedding to the reference's.
    pub cos_mean: f64,
    /// Its 1st percentile.
    pub cos_p1: f64,
    /// Its least value.
    pub cos_min: f64,
    /// Retrieval against the pivot (null for the pivot itself).
    pub retrieval: Option<RetrievalReport>,
}

/// One file's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EmbedFileReport {
    /// The file's path as given.
    pub file: String,
    /// Size on disk.
    pub bytes: u64,
    /// Bits per weight over all tensors.
    pub bpw: f64,
    /// Its figures per language.
    pub languages: BTreeMap<String, EmbedLang>,
    /// Mean over languages of the mean cosine.
    pub cos_mean: f64,
    /// The language of the lowest mean cosine.
    pub worst_language: String,
    /// Its mean cosine.
    pub worst_cos: f64,
    /// The lowest 1st percentile of any language.
    pub cos_p1_min: f64,
    /// Mean over the languages with retrieval of their agreement (null: one language only).
    pub agreement_mean: Option<f64>,
    /// The language of the lowest agreement.
    pub worst_agreement_language: Option<String>,
    /// Its agreement.
    pub worst_agreement: Option<f64>,
    /// Mean translation hit share with the file's embeddings (null: not parallel).
    pub translation_hit_mean: Option<f64>,
    /// The same with the reference's.
    pub translation_hit_ref_mean: Option<f64>,
}

fn share(n: usize, d: usize) -> f64 {
    n as f64 / d.max(1) as f64
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

impl EmbedFileReport {
    /// The figures of file `f` (at `path`) from its per-language scores, in
    /// the order of `texts`.
    pub fn new(
        path: &Path,
        f: &GgufFile,
        texts: &[LangWindows],
        scores: Vec<(CosineStats, Option<Retrieval>)>,
    ) -> EmbedFileReport {
        let pivot = pivot(texts)
            .map(|p| texts[p].lang.clone())
            .unwrap_or_default();
        let languages: BTreeMap<String, EmbedLang> = texts
            .iter()
            .zip(scores)
            .map(|(t, (c, r))| {
                let retrieval = r.map(|r| RetrievalReport {
                    pivot: pivot.clone(),
                    queries: r.queries,
                    agreement: share(r.agree, r.queries),
                    translation_hit: r.parallel.then(|| share(r.hit, r.queries)),
                    translation_hit_ref: r.parallel.then(|| share(r.hit_ref, r.queries)),
                });
                let lang = EmbedLang {
                    script: script::script(&t.lang),
                    windows: t.ids.len(),
                    cos_mean: c.mean,
                    cos_p1: c.p1,
                    cos_min: c.min,
                    retrieval,
                };
                (t.lang.clone(), lang)
            })
            .collect();
        let worst = languages
            .iter()
            .min_by(|a, b| a.1.cos_mean.total_cmp(&b.1.cos_mean));
        let rets = || languages.values().filter_map(|l| l.retrieval.as_ref());
        let worst_ret = languages
            .iter()
            .filter_map(|(k, l)| l.retrieval.as_ref().map(|r| (k, r.agreement)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        EmbedFileReport {
            file: path.display().to_string(),
            bytes: crate::eval::file_size(path),
            bpw: crate::eval::bits_per_weight(f),
            cos_mean: mean(languages.values().map(|l| l.cos_mean)).unwrap_or(0.0),
            worst_language: worst.map(|w| w.0.clone()).unwrap_or_default(),
            worst_cos: worst.map(|w| w.1.cos_mean).unwrap_or(0.0),
            cos_p1_min: languages
                .values()
                .map(|l| l.cos_p1)
                .fold(f64::INFINITY, f64::min),
            agreement_mean: mean(rets().map(|r| r.agreement)),
            worst_agreement_language: worst_ret.map(|w| w.0.clone()),
            worst_agreement: worst_ret.map(|w| w.1),
            translation_hit_mean: mean(rets().filter_map(|r| r.translation_hit)),
            translation_hit_ref_mean: mean(rets().filter_map(|r| r.translation_hit_ref)),
            languages,
        }
    }

    /// The file name without folders and `.gguf`, for column headers.
    pub fn label(&self) -> String {
        Path::new(&self.file)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.file.clone())
    }
}

/// One language's windows, as the reference saw them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RefWindows {
    /// The language.
    pub lang: String,
    /// Its writing system.
    pub script: &'static str,
    /// Windows (non-empty lines).
    pub windows: usize,
    /// Their tokens, frames included.
    pub tokens: u64,
    /// Windows cut to ctx tokens.
    pub truncated: usize,
}

/// A whole run on an embedding model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EmbedReport {
    /// Always `embedding` (a decoder's report has no `kind`).
    pub kind: &'static str,
    /// The reference model's folder.
    pub model: String,
    /// Where the text came from.
    pub text: String,
    /// At most this many tokens per window.
    pub ctx: usize,
    /// The model's pooling (mean, cls, last).
    pub pooling: String,
    /// The retrieval pivot.
    pub pivot: String,
    /// Whether the text is parallel (translation hits are given).
    pub parallel: bool,
    /// The windows per language.
    pub reference: Vec<RefWindows>,
    /// Each quantized file's figures.
    pub files: Vec<EmbedFileReport>,
    /// Wall time of the run.
    pub seconds: f64,
}

impl EmbedReport {
    /// The report of a run over `texts`.
    pub fn new(
        model: String,
        text: String,
        ctx: usize,
        pooling: String,
        texts: &[LangWindows],
        files: Vec<EmbedFileReport>,
        seconds: f64,
    ) -> EmbedReport {
        EmbedReport {
            kind: "embedding",
            model,
            text,
            ctx,
            pooling,
            pivot: pivot(texts)
                .map(|p| texts[p].lang.clone())
                .unwrap_or_default(),
            parallel: texts.iter().all(|t| t.keys.is_some()),
            reference: texts
                .iter()
                .map(|t| RefWindows {
                    lang: t.lang.clone(),
                    script: script::script(&t.lang),
                    windows: t.ids.len(),
                    tokens: t.tokens(),
                    truncated: t.truncated,
                })
                .collect(),
            files,
            seconds,
        }
    }

    /// Languages grouped by script, Latin first.
    fn languages(&self) -> Vec<&str> {
        script::in_order(&script::grouped(
            self.reference.iter().map(|r| r.lang.as_str()),
        ))
    }

    fn summary(&self) -> Table {
        let pct = |x: Option<f64>| x.map_or("-".into(), |v| format!("{:.1}%", 100.0 * v));
        Table {
            head: [
                "file",
                "size MB",
                "bpw",
                "mean cos",
                "worst language",
                "lowest p1",
                "retrieval agree",
                "worst",
                "transl. hit",
                "ref hit",
            ]
            .map(String::from)
            .to_vec(),
            rows: self
                .files
                .iter()
                .map(|f| {
                    vec![
                        f.label(),
                        format!("{:.2}", f.bytes as f64 / 1e6),
                        format!("{:.3}", f.bpw),
                        format!("{:.6}", f.cos_mean),
                        format!("{} {:.6}", f.worst_language, f.worst_cos),
                        format!("{:.6}", f.cos_p1_min),
                        pct(f.agreement_mean),
                        match (&f.worst_agreement_language, f.worst_agreement) {
                            (Some(l), Some(a)) => format!("{l} {:.1}%", 100.0 * a),
                            _ => "-".into(),
                        },
                        pct(f.translation_hit_mean),
                        pct(f.translation_hit_ref_mean),
                    ]
                })
                .collect(),
            left: 1,
        }
    }

    /// Per language: one file in detail, or mean cosine and agreement of every file.
    fn per_language(&self) -> Table {
        let refs: BTreeMap<&str, &RefWindows> = self
            .reference
            .iter()
            .map(|r| (r.lang.as_str(), r))
            .collect();
        let single = self.files.len() == 1;
        let mut head: Vec<String> = ["lang", "script", "windows", "tokens"]
            .map(String::from)
            .to_vec();
        if single {
            head.extend(
                ["cos mean", "cos p1", "cos min", "agree", "hit", "ref hit"].map(String::from),
            );
        } else {
            for f in &self.files {
                head.push(format!("cos {}", f.label()));
                head.push(format!("agree {}", f.label()));
            }
        }
        let pct = |x: Option<f64>| x.map_or("-".into(), |v| format!("{:.1}%", 100.0 * v));
        let rows = self
            .languages()
            .into_iter()
            .map(|l| {
                let r = refs[l];
                let mut row = vec![
                    l.to_string(),
                    r.script.to_string(),
                    r.windows.to_string(),
                    r.tokens.to_string(),
                ];
                for f in &self.files {
                    let x = &f.languages[l];
                    let ret = x.retrieval.as_ref();
                    row.push(format!("{:.6}", x.cos_mean));
                    if single {
                        row.push(format!("{:.6}", x.cos_p1));
                        row.push(format!("{:.6}", x.cos_min));
                    }
                    row.push(pct(ret.map(|r| r.agreement)));
                    if single {
                        row.push(pct(ret.and_then(|r| r.translation_hit)));
                        row.push(pct(ret.and_then(|r| r.translation_hit_ref)));
                    }
                }
                row
            })
            .collect();
        Table {
            head,
            rows,
            left: 2,
        }
    }

    fn preamble(&self) -> String {
        let truncated: usize = self.reference.iter().map(|r| r.truncated).sum();
        format!(
            "model {} (embeddings, {} pooling)\ntext: {}\n{} languages, one window per line, at most \
             {} tokens ({truncated} cut), {} tokens per model; reference: our encoder on the HF weights\n\
             retrieval: each language into {p}'s windows and back{}",
            self.model,
            self.pooling,
            self.text,
            self.reference.len(),
            self.ctx,
            self.reference.iter().map(|r| r.tokens).sum::<u64>(),
            if self.parallel {
                "; parallel text: hit = the nearest is the translation"
            } else {
                "; the text is not known to be parallel: agreement only"
            },
            p = self.pivot,
        )
    }

    /// The terminal tables.
    pub fn to_text(&self) -> String {
        tables_text(&self.preamble(), &[self.summary(), self.per_language()])
    }

    /// The same as Markdown.
    pub fn to_markdown(&self) -> String {
        tables_markdown(&self.preamble(), &[self.summary(), self.per_language()])
    }

    /// The report as JSON (the shape in this module's documentation).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The chart: `1 − mean cosine` per language and file.
    pub fn render_svg(&self) -> Result<String, EvalError> {
        let groups = script::grouped(self.reference.iter().map(|r| r.lang.as_str()));
        let langs = script::in_order(&groups);
        let series = self
            .files
            .iter()
            .map(|f| {
                let v = langs
                    .iter()
                    .map(|l| f.languages.get(*l).map_or(0.0, |x| 1.0 - x.cos_mean))
                    .collect();
                (format!("{} ({:.2} bpw)", f.label(), f.bpw), v)
            })
            .collect();
        chart::bars_svg(&Bars {
            title: format!(
                "Embedding drift 1 - mean cosine to the reference, per language ({})",
                chart::model_title(&self.model)
            ),
            y_desc: "1 - mean cosine",
            groups,
            series,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_means() {
        assert_eq!(share(1, 4), 0.25);
        assert_eq!(share(0, 0), 0.0);
        assert_eq!(mean([1.0, 2.0].into_iter()), Some(1.5));
        assert_eq!(mean(std::iter::empty()), None);
    }
}
