//! The end-of-batch summary: one row per output (model, type, size, bits per
//! weight, time, status, and why it failed or was redone; with `--eval`, the
//! mean KLD and worst language), printed as a terminal table and written as
//! `summary.json` and `summary.md` (`summary-I-of-N.*` for a shard), which also
//! hold every output's quality per language.

use super::quality::Quality;
use crate::eval::report::num;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// What happened to an output in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Converted in this run.
    Done,
    /// A previous run's output still matches its record.
    Skipped,
    /// Could not be made; the row's `error` says why.
    Failed,
    /// Would be converted (`--dry-run`).
    Todo,
}

impl Status {
    /// The status column's word (`done`, `skipped`, `FAILED`, `to do`).
    pub fn name(self) -> &'static str {
        match self {
            Status::Done => "done",
            Status::Skipped => "skipped",
            Status::Failed => "FAILED",
            Status::Todo => "to do",
        }
    }
}

/// One output of the batch.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The model's output name.
    pub model: String,
    /// The manifest's folder or hub id.
    pub source: String,
    /// The type label (`Q4_K_M`, `la-mix`, `4.5bpw`, ...).
    #[serde(rename = "type")]
    pub ty: String,
    /// Path relative to the output root.
    pub output: String,
    /// What happened to it in this run.
    pub status: Status,
    /// The GGUF's size in bytes, when it exists.
    pub bytes: Option<u64>,
    /// Bits per weight of the GGUF's tensors (as its conversion report gives it).
    pub bits_per_weight: Option<f64>,
    /// Conversion time (for a skipped output, the time it took when it was made).
    pub seconds: Option<f64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Why it was redone, and anything missing from its Modelfile.
    pub notes: Vec<String>,
    /// The Modelfile's path relative to the root (`--ollama`).
    pub modelfile: Option<String>,
    /// The chat-template family the Modelfile's `TEMPLATE` was translated from
    /// (`chatml`, `llama3`, ...), `None` when none was recognized.
    pub template: Option<String>,
    /// Per-language quality, with `--eval`.
    pub eval: Option<RowEval>,
}

/// What happened to an output's evaluation in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalStatus {
    /// Scored in this run.
    Done,
    /// A previous run's result, recorded with the same settings, still holds.
    Skipped,
    /// Could not be scored (the GGUF is kept).
    Failed,
}

/// An output's evaluation: its status, why it failed, and the figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowEval {
    /// What happened to the evaluation in this run.
    pub status: EvalStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// The figures (absent when it failed); flattened into the row's JSON.
    #[serde(flatten)]
    pub quality: Option<Quality>,
}

impl RowEval {
    /// A failed evaluation, with its reason.
    pub fn failed(why: String) -> RowEval {
        RowEval {
            status: EvalStatus::Failed,
            error: Some(why),
            quality: None,
        }
    }

    /// The compact column: mean KLD and the worst language.
    fn cell(&self) -> String {
        match (&self.quality, self.status) {
            (_, EvalStatus::Failed) => "FAILED".into(),
            (Some(q), _) => format!(
                "{} {} {}",
                num(q.kld_mean),
                q.worst_language,
                num(q.worst_kld)
            ),
            (None, _) => "-".into(),
        }
    }
}

/// How the outputs were evaluated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalInfo {
    /// Where the text came from.
    pub text: String,
    /// Only these languages (empty: all of the text's).
    pub languages: Vec<String>,
    /// Chunk length in tokens.
    pub ctx: usize,
    /// At most this many chunks per language (`None`: all the text gives).
    pub chunks: Option<usize>,
}

/// One evaluation run (once per model, over all its outputs that needed it).
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// The model's output name.
    pub model: String,
    /// Outputs scored.
    pub outputs: usize,
    /// Passes over the text: 1 unless the outputs did not fit in memory together
    /// (each pass recomputes the reference logits).
    pub passes: usize,
    /// Wall time of the evaluation, in seconds.
    pub seconds: f64,
    /// Why it failed as a whole (the model, the text or the reference), failing
    /// every output in it.
    pub error: Option<String>,
}

/// One calibration run (once per model).
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    /// The model's output name.
    pub model: String,
    /// Wall time of the calibration (or of reading the imatrix), in seconds.
    pub seconds: f64,
    /// Why it failed (every output that needed it failed too).
    pub error: Option<String>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The manifest file.
    pub manifest: String,
    /// The output root.
    pub output: String,
    /// `I/N` with `--shard`.
    pub shard: Option<String>,
    /// Conversions run at once (`--jobs`).
    pub jobs: usize,
    /// The thread budget the jobs shared.
    pub threads: usize,
    /// Wall time of the whole run, in seconds.
    pub wall_seconds: f64,
    /// Outputs converted in this run.
    pub done: usize,
    /// Outputs whose recorded file still matched.
    pub skipped: usize,
    /// Outputs that failed.
    pub failed: usize,
    /// Outputs a `--dry-run` would convert.
    pub todo: usize,
    /// Every calibration run (at most one per model).
    pub calibrations: Vec<Calibration>,
    /// `--eval` or the manifest's `[eval]`: the global settings, the
    /// evaluations that failed, and each model's run.
    pub eval: Option<EvalInfo>,
    /// Models evaluated with other settings than `eval` (their own `eval`
    /// entry in the manifest), by name.
    pub eval_models: BTreeMap<String, EvalInfo>,
    /// Outputs whose evaluation failed.
    pub eval_failed: usize,
    /// Every evaluation run (at most one per model).
    pub evaluations: Vec<Evaluation>,
    /// One row per output, in manifest order.
    pub rows: Vec<Row>,
}

fn mb(b: Option<u64>) -> String {
    b.map(|b| format!("{:.2}", b as f64 / 1e6))
        .unwrap_or_else(|| "-".into())
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

impl Row {
    /// The error, or the notes and an evaluation failure, in one line.
    fn remark(&self) -> String {
        match &self.error {
            Some(e) => e.replace('\n', " "),
            None => {
                let eval_error = self
                    .eval
                    .as_ref()
                    .and_then(|e| e.error.as_ref())
                    .map(|e| format!("eval failed: {e}"));
                let parts: Vec<String> = self.notes.iter().cloned().chain(eval_error).collect();
                parts.join("; ").replace('\n', " ")
            }
        }
    }

    fn eval_cell(&self) -> String {
        self.eval.as_ref().map_or_else(|| "-".into(), RowEval::cell)
    }
}

impl Summary {
    /// Whether any output was to be evaluated.
    fn evaluating(&self) -> bool {
        self.eval.is_some() || !self.eval_models.is_empty()
    }

    fn counts_line(&self) -> String {
        let todo = if self.todo > 0 {
            format!("{} to do, ", self.todo)
        } else {
            String::new()
        };
        let evals = if self.evaluating() {
            let n = |st: EvalStatus| {
                self.rows
                    .iter()
                    .filter(|r| r.eval.as_ref().is_some_and(|e| e.status == st))
                    .count()
            };
            format!(
                "; evaluations: {} done, {} skipped, {} failed",
                n(EvalStatus::Done),
                n(EvalStatus::Skipped),
                self.eval_failed
            )
        } else {
            String::new()
        };
        format!(
            "{} outputs: {todo}{} done, {} skipped, {} failed{evals} in {:.1}s ({} jobs, {} threads{})",
            self.rows.len(),
            self.done,
            self.skipped,
            self.failed,
            self.wall_seconds,
            self.jobs,
            self.threads,
            self.shard
                .as_ref()
                .map(|s| format!(", shard {s}"))
                .unwrap_or_default()
        )
    }

    /// The terminal table.
    pub fn to_text(&self) -> String {
        let w = |f: fn(&Row) -> usize, head: &str| {
            self.rows.iter().map(f).max().unwrap_or(0).max(head.len())
        };
        let wm = w(|r| r.model.chars().count(), "model");
        let wt = w(|r| r.ty.chars().count(), "type");
        const QHEAD: &str = "mean KLD, worst language";
        let ev = self.evaluating();
        let (qhead, wq) = if ev {
            (QHEAD, w(|r| r.eval_cell().chars().count(), QHEAD))
        } else {
            ("", 0)
        };
        let sep = if ev { "  " } else { "" };
        let mut s = format!(
            "{:<wm$}  {:<wt$}  {:>9}  {:>6}  {:>8}  {:<7}  {qhead:<wq$}{sep}remark\n",
            "model", "type", "size MB", "bpw", "time s", "status"
        );
        for r in &self.rows {
            let q = if ev { r.eval_cell() } else { String::new() };
            let line = format!(
                "{:<wm$}  {:<wt$}  {:>9}  {:>6}  {:>8}  {:<7}  {q:<wq$}{sep}{}",
                r.model,
                r.ty,
                mb(r.bytes),
                opt(r.bits_per_weight, 3),
                opt(r.seconds, 2),
                r.status.name(),
                r.remark()
            );
            let _ = writeln!(s, "{}", line.trim_end());
        }
        s.push_str(&self.counts_line());
        s.push('\n');
        s
    }

    /// `summary.md`.
    pub fn to_markdown(&self) -> String {
        let cell = |x: &str| x.replace('|', "\\|").replace('\n', " ");
        let mut s = format!("# laquant batch: {}\n\n", cell(&self.manifest));
        let _ = writeln!(s, "{}\n", self.counts_line());
        let ev = self.evaluating();
        s.push_str("| model | type | size MB | bpw | time s | status |");
        s.push_str(if ev {
            " mean KLD | worst language | disparity | top-1 | remark |\n|---|---|---:|---:|---:|---|---:|---|---:|---:|---|\n"
        } else {
            " remark |\n|---|---|---:|---:|---:|---|---|\n"
        });
        for r in &self.rows {
            let _ = write!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                cell(&r.model),
                cell(&r.ty),
                mb(r.bytes),
                opt(r.bits_per_weight, 3),
                opt(r.seconds, 2),
                r.status.name(),
            );
            if ev {
                let q = r.eval.as_ref().and_then(|e| e.quality.as_ref());
                let _ = write!(
                    s,
                    " {} | {} | {} | {} |",
                    q.map_or("-".into(), |q| num(q.kld_mean)),
                    q.map_or("-".into(), |q| format!(
                        "{} {}",
                        cell(&q.worst_language),
                        num(q.worst_kld)
                    )),
                    q.and_then(|q| q.kld_disparity).map_or("-".into(), num),
                    q.map_or("-".into(), |q| format!("{:.2}%", 100.0 * q.top1_mean)),
                );
            }
            let _ = writeln!(s, " {} |", cell(&r.remark()));
        }
        if ev {
            s.push_str(&self.quality_markdown());
        }
        if !self.calibrations.is_empty() {
            s.push_str("\n| calibrated model | time s | error |\n|---|---:|---|\n");
            for c in &self.calibrations {
                let _ = writeln!(
                    s,
                    "| {} | {:.2} | {} |",
                    cell(&c.model),
                    c.seconds,
                    cell(c.error.as_deref().unwrap_or(""))
                );
            }
        }
        s
    }

    /// Per model, a table of every language: the reference's perplexity, then
    /// each evaluated output's perplexity and mean KLD.
    fn quality_markdown(&self) -> String {
        let cell = |x: &str| x.replace('|', "\\|").replace('\n', " ");
        let settings = |e: &EvalInfo| {
            format!(
                "Text: {}; ctx {}{}{}.",
                cell(&e.text),
                e.ctx,
                e.chunks
                    .map(|c| format!(", at most {c} chunks per language"))
                    .unwrap_or_default(),
                if e.languages.is_empty() {
                    String::new()
                } else {
                    format!("; languages {}", e.languages.join(" "))
                }
            )
        };
        let mut s = format!(
            "\n## Quality per language\n\n{}PPL: perplexity; KLD: mean KL divergence \
             of the output's next-token distribution from the model's (our forward pass on the HF weights).\n",
            self.eval
                .as_ref()
                .map(|e| format!("{} ", settings(e)))
                .unwrap_or_default()
        );
        let mut models: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !models.contains(&r.model.as_str()) {
                models.push(&r.model);
            }
        }
        for m in models {
            let rows: Vec<(&Row, &Quality)> = self
                .rows
                .iter()
                .filter(|r| r.model == m)
                .filter_map(|r| Some((r, r.eval.as_ref()?.quality.as_ref()?)))
                .collect();
            let Some((_, first)) = rows.first() else {
                continue;
            };
            let langs: BTreeSet<&str> = rows
                .iter()
                .flat_map(|(_, q)| q.languages.keys().map(String::as_str))
                .collect();
            let _ = write!(s, "\n### {}\n\n", cell(m));
            if let Some(e) = self.eval_models.get(m) {
                let _ = write!(s, "This model's own settings: {}\n\n", settings(e));
            }
            s.push_str("| lang | PPL ref |");
            for (r, _) in &rows {
                let _ = write!(s, " PPL {0} | KLD {0} |", cell(&r.ty));
            }
            s.push_str("\n|---|---:|");
            s.push_str(&"---:|---:|".repeat(rows.len()));
            s.push('\n');
            for l in langs {
                let ppl_ref = rows
                    .iter()
                    .find_map(|(_, q)| q.languages.get(l))
                    .or_else(|| first.languages.get(l))
                    .map_or("-".into(), |x| num(x.ppl_ref));
                let _ = write!(s, "| {} | {ppl_ref} |", cell(l));
                for (_, q) in &rows {
                    match q.languages.get(l) {
                        Some(x) => {
                            let _ = write!(s, " {} | {} |", num(x.ppl), num(x.kld_mean));
                        }
                        None => s.push_str(" - | - |"),
                    }
                }
                s.push('\n');
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: Status, error: Option<&str>) -> Row {
        Row {
            model: "m|x".into(),
            source: "dir".into(),
            ty: "Q8_0".into(),
            output: "m/m-Q8_0.gguf".into(),
            status,
            bytes: error.is_none().then_some(1_500_000),
            bits_per_weight: error.is_none().then_some(8.5),
            seconds: Some(0.25),
            error: error.map(str::to_string),
            notes: vec!["redone: options changed".into()],
            modelfile: None,
            template: None,
            eval: None,
        }
    }

    #[test]
    fn table_and_markdown_show_every_row_and_the_reason() {
        let s = Summary {
            manifest: "zoo.toml".into(),
            output: "out".into(),
            shard: Some("0/2".into()),
            jobs: 2,
            threads: 2,
            wall_seconds: 1.0,
            done: 1,
            skipped: 0,
            failed: 1,
            todo: 0,
            calibrations: vec![],
            eval: None,
            eval_failed: 0,
            eval_models: BTreeMap::new(),
            evaluations: vec![],
            rows: vec![
                row(Status::Done, None),
                row(Status::Failed, Some("config.json: bad\nline")),
            ],
        };
        let t = s.to_text();
        assert!(
            t.contains("1.50") && t.contains("8.500") && t.contains("done"),
            "{t}"
        );
        assert!(
            t.contains("FAILED") && t.contains("config.json: bad line"),
            "{t}"
        );
        assert!(t.contains("redone: options changed"));
        assert!(t.contains("shard 0/2"));
        let m = s.to_markdown();
        assert!(
            m.contains("| m\\|x | Q8_0 | 1.50 | 8.500 | 0.25 | done |"),
            "{m}"
        );
        assert_eq!(m.lines().filter(|l| l.starts_with("| m\\|x")).count(), 2);
    }

    #[test]
    fn quality_columns_and_per_language_tables() {
        use super::super::quality::LangQuality;
        let lang = |ppl: f64, kld: f64| LangQuality {
            tokens: 10,
            ppl,
            ppl_ref: 9.0,
            kld_mean: kld,
            kld_p99: 2.0 * kld,
            top1: 0.9,
        };
        let quality = Quality {
            kld_mean: 0.015,
            worst_language: "zh".into(),
            worst_kld: 0.02,
            kld_disparity: Some(2.0),
            non_en_over_en: Some(2.0),
            top1_mean: 0.9,
            languages: [
                ("en".into(), lang(9.5, 0.01)),
                ("zh".into(), lang(12.0, 0.02)),
            ]
            .into_iter()
            .collect(),
        };
        let mut ok = row(Status::Done, None);
        ok.notes.clear();
        ok.eval = Some(RowEval {
            status: EvalStatus::Done,
            error: None,
            quality: Some(quality),
        });
        let mut bad = row(Status::Skipped, None);
        bad.ty = "Q4_K_M".into();
        bad.notes.clear();
        bad.eval = Some(RowEval::failed("x.gguf: truncated".into()));
        let s = Summary {
            manifest: "zoo.toml".into(),
            output: "out".into(),
            shard: None,
            jobs: 1,
            threads: 2,
            wall_seconds: 1.0,
            done: 1,
            skipped: 1,
            failed: 0,
            todo: 0,
            calibrations: vec![],
            eval: Some(EvalInfo {
                text: "embedded".into(),
                languages: vec![],
                ctx: 64,
                chunks: Some(1),
            }),
            eval_failed: 1,
            eval_models: BTreeMap::new(),
            evaluations: vec![],
            rows: vec![ok, bad],
        };
        let t = s.to_text();
        assert!(t.contains("mean KLD, worst language"), "{t}");
        assert!(t.contains("0.01500 zh 0.02000"), "{t}");
        assert!(
            t.contains("FAILED") && t.contains("eval failed: x.gguf: truncated"),
            "{t}"
        );
        assert!(
            t.contains("evaluations: 1 done, 0 skipped, 1 failed"),
            "{t}"
        );
        let m = s.to_markdown();
        assert!(
            m.contains("| done | 0.01500 | zh 0.02000 | 2.000 | 90.00% |"),
            "{m}"
        );
        assert!(m.contains("### m\\|x"), "{m}");
        assert!(
            m.contains("| lang | PPL ref | PPL Q8_0 | KLD Q8_0 |"),
            "{m}"
        );
        assert!(m.contains("| zh | 9.000 | 12.00 | 0.02000 |"), "{m}");
        // The failed evaluation has no column in the per-language table.
        assert!(!m.contains("PPL Q4_K_M"), "{m}");
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["rows"][0]["eval"]["status"], "done");
        assert_eq!(j["rows"][0]["eval"]["languages"]["zh"]["ppl"], 12.0);
        assert_eq!(j["rows"][1]["eval"]["status"], "failed");
    }
}
