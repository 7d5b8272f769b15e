//! What `laquant eval` shows: the per-file headline figures (size, bits per
//! weight, mean KLD over languages, worst language, disparity, non-English over
//! English) and the per-language figures, as an aligned terminal table,
//! Markdown, or JSON (`{"files": [{"file", "bpw", "languages": {"en": {"ppl",
//! "ppl_ref", "kld_mean", "kld_p99", "top1", ...}}, "kld_disparity", ...}]}`);
//! a mixture of experts' files also have `routing` per language (`same_experts`,
//! `experts_kept`, `worst_layer`, `worst_layer_same`) and `routing_same_mean`.

use super::metrics::{LangScore, RouteScore};
use super::script;
use crate::gguf::GgufFile;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// One language's figures for one file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LangReport {
    /// The language's writing system (Latin, Cyrillic, Han, ...).
    pub script: &'static str,
    /// Tokens scored (the second half of every chunk).
    pub tokens: u64,
    /// The file's perplexity.
    pub ppl: f64,
    /// The reference's perplexity on the same tokens.
    pub ppl_ref: f64,
    /// Mean KL divergence from the reference, per token.
    pub kld_mean: f64,
    /// Its 99th percentile.
    pub kld_p99: f64,
    /// Its largest value.
    pub kld_max: f64,
    /// Share of positions where the file's most likely token is the reference's.
    pub top1: f64,
    /// A mixture of experts' routing against the reference's (absent for a dense model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing: Option<RouteScore>,
}

/// One file's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FileReport {
    /// The file's path as given.
    pub file: String,
    /// Size on disk.
    pub bytes: u64,
    /// Bits per weight over all tensors.
    pub bpw: f64,
    /// Its figures per language.
    pub languages: BTreeMap<String, LangReport>,
    /// Mean over languages of each language's mean KLD.
    pub kld_mean: f64,
    /// The language with the largest mean KLD.
    pub worst_language: String,
    /// That language's mean KLD.
    pub worst_kld: f64,
    /// The language with the smallest mean KLD.
    pub best_language: String,
    /// That language's mean KLD.
    pub best_kld: f64,
    /// `max_l KLD_l / min_l KLD_l` (null when the best language's KLD is 0).
    pub kld_disparity: Option<f64>,
    /// Mean KLD of the other languages over English's (null without English or when it is 0).
    pub non_en_over_en: Option<f64>,
    /// Mean over languages of top-1 agreement.
    pub top1_mean: f64,
    /// A mixture's mean over languages of the share of (token, layer) routed to
    /// the reference's experts (absent for a dense model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_same_mean: Option<f64>,
}

impl FileReport {
    /// The figures of file `f` (at `path`) from its per-language scores.
    pub fn new(path: &Path, f: &GgufFile, scores: Vec<LangScore>) -> FileReport {
        let n = scores.len().max(1) as f64;
        let kld_mean = scores.iter().map(|s| s.kld_mean).sum::<f64>() / n;
        let top1_mean = scores.iter().map(|s| s.top1).sum::<f64>() / n;
        let routing_same_mean = scores
            .iter()
            .map(|s| s.routing.as_ref().map(|r| r.same_experts))
            .sum::<Option<f64>>()
            .filter(|_| !scores.is_empty())
            .map(|sum| sum / n);
        let by = |better: fn(f64, f64) -> bool| {
            let mut best: Option<&LangScore> = None;
            for s in &scores {
                if best.is_none_or(|b| better(s.kld_mean, b.kld_mean)) {
                    best = Some(s);
                }
            }
            best.map(|s| (s.lang.clone(), s.kld_mean))
                .unwrap_or_default()
        };
        let (worst_language, worst_kld) = by(|a, b| a > b);
        let (best_language, best_kld) = by(|a, b| a < b);
        let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
        let en = scores.iter().find(|s| s.lang == "en").map(|s| s.kld_mean);
        let others: Vec<f64> = scores
            .iter()
            .filter(|s| s.lang != "en")
            .map(|s| s.kld_mean)
            .collect();
        let non_en_over_en = match en {
            Some(e) if !others.is_empty() => {
                ratio(others.iter().sum::<f64>() / others.len() as f64, e)
            }
            _ => None,
        };
        FileReport {
            file: path.display().to_string(),
            bytes: super::file_size(path),
            bpw: super::bits_per_weight(f),
            languages: scores
                .iter()
                .map(|s| {
                    (
                        s.lang.clone(),
                        LangReport {
                            script: script::script(&s.lang),
                            tokens: s.tokens,
                            ppl: s.ppl,
                            ppl_ref: s.ppl_ref,
                            kld_mean: s.kld_mean,
                            kld_p99: s.kld_p99,
                            kld_max: s.kld_max,
                            top1: s.top1,
                            routing: s.routing.clone(),
                        },
                    )
                })
                .collect(),
            kld_mean,
            worst_language,
            worst_kld,
            best_language,
            best_kld,
            kld_disparity: ratio(worst_kld, best_kld),
            non_en_over_en,
            top1_mean,
            routing_same_mean,
        }
    }

    /// The file name without folders and `.gguf`, for column headers.
    pub fn label(&self) -> String {
        let p = Path::new(&self.file);
        p.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.file.clone())
    }
}

/// The reference's perplexity on one language.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RefLang {
    /// The language.
    pub lang: String,
    /// Its writing system.
    pub script: &'static str,
    /// Chunks scored.
    pub chunks: usize,
    /// Tokens scored.
    pub tokens: u64,
    /// The reference's perplexity.
    pub ppl: f64,
}

/// A whole run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalReport {
    /// The reference model (its folder or file).
    pub model: String,
    /// Where the text came from.
    pub text: String,
    /// Tokens per chunk.
    pub ctx: usize,
    /// `--chunks` (at most this many per language), if given.
    pub chunks: Option<usize>,
    /// The reference's figures per language.
    pub reference: Vec<RefLang>,
    /// Each quantized file's figures.
    pub files: Vec<FileReport>,
    /// Wall time of the run.
    pub seconds: f64,
}

/// A token-counting bar on stderr, hidden when `quiet`.
pub fn progress_bar(quiet: bool) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "evaluating {msg} [{bar:30}] {pos}/{len} tokens {per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb
}

/// Updates `pb` from a progress report.
pub fn show_progress(pb: &indicatif::ProgressBar, p: &super::Progress) {
    pb.set_length(p.tokens_total);
    pb.set_position(p.tokens_done);
    pb.set_message(format!("{} ({}/{})", p.lang, p.lang_index + 1, p.n_langs));
}

/// A number with about four significant digits: fixed-point from 1e-3 up to a
/// million, scientific notation outside that range (the perplexity of an
/// untrained or badly broken model can be astronomical, and a KLD tiny), so
/// `laquant eval`'s tables and `laquant batch`'s summaries read the same.
/// Infinities and NaN show as `-`.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1e6 {
        format!("{x:.3e}")
    } else if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 1e-3 {
        let digits = (3 - a.log10().floor() as i32).max(0) as usize;
        format!("{x:.digits$}")
    } else {
        format!("{x:.2e}")
    }
}

/// [`num`] of a value that may be absent (`-`).
pub(crate) fn opt(x: Option<f64>) -> String {
    x.map(num).unwrap_or_else(|| "-".into())
}

/// A table rendered as aligned text or Markdown.
pub(crate) struct Table {
    /// Column headers.
    pub(crate) head: Vec<String>,
    /// Rows, one cell per column.
    pub(crate) rows: Vec<Vec<String>>,
    /// Columns aligned left (the rest right).
    pub(crate) left: usize,
}

/// A report in the terminal: its preamble, a blank line, then its tables.
pub(crate) fn tables_text(preamble: &str, tables: &[Table]) -> String {
    let tables: Vec<String> = tables.iter().map(Table::text).collect();
    format!("{preamble}\n\n{}", tables.join("\n"))
}

/// A report as Markdown: its preamble's lines as hard line breaks, then its tables.
pub(crate) fn tables_markdown(preamble: &str, tables: &[Table]) -> String {
    let pre: String = preamble.lines().map(|l| format!("{l}  \n")).collect();
    let tables: Vec<String> = tables.iter().map(Table::markdown).collect();
    format!("{pre}\n{}", tables.join("\n"))
}

impl Table {
    /// Aligned text.
    pub(crate) fn text(&self) -> String {
        let w: Vec<usize> = (0..self.head.len())
            .map(|c| {
                self.rows
                    .iter()
                    .chain(std::iter::once(&self.head))
                    .map(|r| r[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |r: &[String]| {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(c, s)| {
                    if c < self.left {
                        format!("{s:<width$}", width = w[c])
                    } else {
                        format!("{s:>width$}", width = w[c])
                    }
                })
                .collect();
            cells.join("  ").trim_end().to_string() + "\n"
        };
        let mut out = line(&self.head);
        let total: usize = w.iter().sum::<usize>() + 2 * w.len().saturating_sub(1);
        out.push_str(&"-".repeat(total));
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }

    /// Markdown.
    pub(crate) fn markdown(&self) -> String {
        let mut out = format!("| {} |\n|", self.head.join(" | "));
        for c in 0..self.head.len() {
            out.push_str(if c < self.left { " --- |" } else { " ---: |" });
        }
        out.push('\n');
        for r in &self.rows {
            out.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        out
    }
}

impl EvalReport {
    /// Languages in display order: grouped by script, Latin first.
    fn languages(&self) -> Vec<&str> {
        script::in_order(&script::grouped(
            self.reference.iter().map(|r| r.lang.as_str()),
        ))
    }

    fn summary(&self) -> Table {
        Table {
            head: [
                "file",
                "size MB",
                "bpw",
                "mean KLD",
                "worst language",
                "disparity",
                "non-en/en",
                "top-1",
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
                        num(f.kld_mean),
                        format!("{} {}", f.worst_language, num(f.worst_kld)),
                        opt(f.kld_disparity),
                        opt(f.non_en_over_en),
                        format!("{:.2}%", 100.0 * f.top1_mean),
                    ]
                })
                .collect(),
            left: 1,
        }
    }

    /// Per language: one file in detail, or the mean KLD of every file side by side.
    fn per_language(&self) -> Table {
        let refs: BTreeMap<&str, &RefLang> = self
            .reference
            .iter()
            .map(|r| (r.lang.as_str(), r))
            .collect();
        let mut head: Vec<String> = ["lang", "script", "tokens", "PPL ref"]
            .map(String::from)
            .to_vec();
        let single = self.files.len() == 1;
        if single {
            head.extend(["PPL", "KLD mean", "KLD p99", "top-1"].map(String::from));
        } else {
            head.extend(self.files.iter().map(|f| format!("KLD {}", f.label())));
        }
        let rows = self
            .languages()
            .into_iter()
            .map(|l| {
                let r = refs[l];
                let mut row = vec![
                    l.to_string(),
                    r.script.to_string(),
                    r.tokens.to_string(),
                    num(r.ppl),
                ];
                for f in &self.files {
                    let x = &f.languages[l];
                    if single {
                        row.extend([
                            num(x.ppl),
                            num(x.kld_mean),
                            num(x.kld_p99),
                            format!("{:.2}%", 100.0 * x.top1),
                        ]);
                    } else {
                        row.push(num(x.kld_mean));
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

    /// A mixture's routing per language: the share of scored tokens × layers
    /// routed to the reference's experts, per file (and, for one file, the
    /// experts kept and the worst layer); `None` for a dense model.
    fn routing(&self) -> Option<Table> {
        if self.files.iter().all(|f| f.routing_same_mean.is_none()) {
            return None;
        }
        let single = self.files.len() == 1;
        let mut head = vec!["lang".to_string(), "script".to_string()];
        if single {
            head.extend(["same experts", "experts kept", "worst layer"].map(String::from));
        } else {
            head.extend(
                self.files
                    .iter()
                    .map(|f| format!("same experts {}", f.label())),
            );
        }
        let pct = |x: f64| format!("{:.2}%", 100.0 * x);
        let rows = self
            .languages()
            .into_iter()
            .map(|l| {
                let mut row = vec![l.to_string(), script::script(l).to_string()];
                for f in &self.files {
                    match (&f.languages[l].routing, single) {
                        (Some(r), true) => row.extend([
                            pct(r.same_experts),
                            pct(r.experts_kept),
                            format!("{} ({})", r.worst_layer, pct(r.worst_layer_same)),
                        ]),
                        (Some(r), false) => row.push(pct(r.same_experts)),
                        (None, _) => row.push("-".into()),
                    }
                }
                row
            })
            .collect();
        Some(Table {
            head,
            rows,
            left: 2,
        })
    }

    /// Every table: the summary, per language, and a mixture's routing.
    fn tables(&self) -> Vec<Table> {
        let mut t = vec![self.summary(), self.per_language()];
        t.extend(self.routing());
        t
    }

    fn preamble(&self) -> String {
        let chunks = self
            .chunks
            .map(|c| format!(", at most {c} chunks per language"))
            .unwrap_or_default();
        format!(
            "model {}\ntext: {}\n{} languages, ctx {}{chunks}, {} tokens scored per model; reference: our forward pass on the HF weights",
            self.model,
            self.text,
            self.reference.len(),
            self.ctx,
            self.reference.iter().map(|r| r.tokens).sum::<u64>()
        )
    }

    /// The terminal tables.
    pub fn to_text(&self) -> String {
        tables_text(&self.preamble(), &self.tables())
    }

    /// The same as Markdown.
    pub fn to_markdown(&self) -> String {
        tables_markdown(&self.preamble(), &self.tables())
    }

    /// The report as JSON (the shape in this module's documentation).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_four_significant_digits() {
        assert_eq!(num(0.0), "0");
        assert_eq!(num(0.012346), "0.01235");
        assert_eq!(num(1.5), "1.500");
        assert_eq!(num(123.456), "123.5");
        assert_eq!(num(12345.6), "12346");
        assert_eq!(num(0.00001234), "1.23e-5");
        assert_eq!(num(f64::NAN), "-");
        assert_eq!(num(f64::NEG_INFINITY), "-");
    }

    #[test]
    fn numbers_from_a_million_up_are_scientific() {
        assert_eq!(num(999_999.4), "999999");
        assert_eq!(num(1e6), "1.000e6");
        assert_eq!(num(2.5e27), "2.500e27");
        assert_eq!(num(-3.21987e8), "-3.220e8");
        assert_eq!(num(f64::MAX), "1.798e308");
        assert_eq!(num(1234.5), "1234");
        assert_eq!(num(-0.0005), "-5.00e-4");
    }

    #[test]
    fn tables_align_and_render_markdown() {
        let t = Table {
            head: vec!["a".into(), "bb".into()],
            rows: vec![vec!["xyz".into(), "1".into()]],
            left: 1,
        };
        assert_eq!(t.text(), "a    bb\n-------\nxyz   1\n");
        assert_eq!(t.markdown(), "| a | bb |\n| --- | ---: |\n| xyz | 1 |\n");
    }
}
