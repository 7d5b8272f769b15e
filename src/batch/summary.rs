//! The end-of-batch summary: one row per output (model, type, size, bits per
//! weight, time, status, and why it failed or was redone), printed as a
//! terminal table and written as `summary.json` and `summary.md`
//! (`summary-I-of-N.*` for a shard).

use serde::Serialize;
use std::fmt::Write as _;

/// What happened to an output in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Converted in this run.
    Done,
    /// A previous run's output still matches its record.
    Skipped,
    Failed,
    /// Would be converted (`--dry-run`).
    Todo,
}

impl Status {
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
    pub status: Status,
    pub bytes: Option<u64>,
    pub bits_per_weight: Option<f64>,
    /// Conversion time (for a skipped output, the time it took when it was made).
    pub seconds: Option<f64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Why it was redone, and anything missing from its Modelfile.
    pub notes: Vec<String>,
    /// The Modelfile's path relative to the root, and the chat-template family it translated.
    pub modelfile: Option<String>,
    pub template: Option<String>,
    /// Per-language quality, when evaluated.
    pub eval: Option<serde_json::Value>,
}

/// One calibration run (once per model).
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    pub model: String,
    pub seconds: f64,
    pub error: Option<String>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub manifest: String,
    pub output: String,
    pub shard: Option<String>,
    pub jobs: usize,
    pub threads: usize,
    pub wall_seconds: f64,
    pub done: usize,
    pub skipped: usize,
    pub failed: usize,
    /// Outputs a `--dry-run` would convert.
    pub todo: usize,
    pub calibrations: Vec<Calibration>,
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
    /// The error, or the notes, in one line.
    fn remark(&self) -> String {
        match &self.error {
            Some(e) => e.replace('\n', " "),
            None => self.notes.join("; "),
        }
    }
}

impl Summary {
    fn counts_line(&self) -> String {
        let todo = if self.todo > 0 {
            format!("{} to do, ", self.todo)
        } else {
            String::new()
        };
        format!(
            "{} outputs: {todo}{} done, {} skipped, {} failed in {:.1}s ({} jobs, {} threads{})",
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
        let mut s = format!(
            "{:<wm$}  {:<wt$}  {:>9}  {:>6}  {:>8}  {:<7}  remark\n",
            "model", "type", "size MB", "bpw", "time s", "status"
        );
        for r in &self.rows {
            let _ = writeln!(
                s,
                "{:<wm$}  {:<wt$}  {:>9}  {:>6}  {:>8}  {:<7}  {}",
                r.model,
                r.ty,
                mb(r.bytes),
                opt(r.bits_per_weight, 3),
                opt(r.seconds, 2),
                r.status.name(),
                r.remark()
            );
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
        s.push_str("| model | type | size MB | bpw | time s | status | remark |\n");
        s.push_str("|---|---|---:|---:|---:|---|---|\n");
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                cell(&r.model),
                cell(&r.ty),
                mb(r.bytes),
                opt(r.bits_per_weight, 3),
                opt(r.seconds, 2),
                r.status.name(),
                cell(&r.remark())
            );
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
}
