//! Progress bars on standard error for a [`crate::job::Job`]'s reports: one
//! bar per stage (calibration, scoring, sensitivity, writing), each cleared
//! when the next stage starts or the job ends.

use crate::job::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::Mutex;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Calibration,
    Scoring,
    Sensitivity,
    Writing,
}

impl Stage {
    fn template(self) -> &'static str {
        match self {
            Stage::Calibration => {
                "calibrating {msg} [{bar:30}] {pos}/{len} tokens {per_sec} ETA {eta}"
            }
            Stage::Scoring => {
                "{spinner} scoring [{elapsed_precise}] {bar:30} {pos}/{len} tensors ({eta}) {msg}"
            }
            Stage::Sensitivity => {
                "{spinner} sensitivity [{elapsed_precise}] {bar:30} {pos}/{len} layer passes ({eta}) {msg}"
            }
            Stage::Writing => {
                "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} ({eta}) {msg}"
            }
        }
    }
}

/// Shows a job's progress as bars on standard error (nothing when hidden).
pub struct Bars {
    hidden: bool,
    current: Mutex<Option<(Stage, ProgressBar)>>,
}

impl Bars {
    /// Bars on standard error, or none at all when `quiet`.
    pub fn new(quiet: bool) -> Bars {
        Bars {
            hidden: quiet,
            current: Mutex::new(None),
        }
    }

    /// Shows one report (the job's [`crate::job::OnProgress`] callback).
    pub fn show(&self, p: Progress<'_>) {
        // Lines, not bars: warnings always, the rest unless quiet.
        let line = match p {
            Progress::Warning(w) => Some((format!("laquant: warning: {w}"), true)),
            Progress::CalibrationEstimate(e) => Some((e.describe(), false)),
            Progress::CalibrationCache(o) => Some((o.describe(), false)),
            Progress::SensitivityCache(o) => {
                Some((o.describe_as("sensitivity", "measures"), false))
            }
            _ => None,
        };
        if let Some((text, always)) = line {
            if always || !self.hidden {
                self.line(&text);
            }
            return;
        }
        if self.hidden {
            return;
        }
        let stage = match p {
            Progress::Calibration(_) => Stage::Calibration,
            Progress::CalibrationEstimate(_)
            | Progress::CalibrationCache(_)
            | Progress::SensitivityCache(_)
            | Progress::Warning(_) => return,
            Progress::Scoring { .. } => Stage::Scoring,
            Progress::Sensitivity { .. } => Stage::Sensitivity,
            Progress::Writing { .. } | Progress::Wrote { .. } => Stage::Writing,
        };
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.as_ref().is_none_or(|(s, _)| *s != stage) {
            if let Some((_, old)) = cur.take() {
                old.finish_and_clear();
            }
            let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(stage.template())
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            pb.set_style(if stage == Stage::Calibration {
                style.progress_chars("=> ")
            } else {
                style
            });
            *cur = Some((stage, pb));
        }
        let Some((_, pb)) = cur.as_ref() else {
            return;
        };
        match p {
            Progress::Calibration(c) => {
                pb.set_length(c.tokens_total);
                pb.set_position(c.tokens_done);
                pb.set_message(format!(
                    "{} ({}/{}) chunk {}/{}",
                    c.lang,
                    c.lang_index + 1,
                    c.n_langs,
                    c.chunks_done,
                    c.chunks_total
                ));
            }
            Progress::Scoring {
                done,
                total,
                tensor,
            } => {
                pb.set_length(total);
                pb.set_position(done);
                pb.set_message(tensor.to_string());
            }
            Progress::Sensitivity {
                done,
                total,
                sizing,
            } => {
                pb.set_length(total);
                pb.set_position(done);
                pb.set_message(sizing.to_string());
            }
            Progress::Writing {
                index,
                count,
                tensor,
            } => pb.set_message(format!("[{}/{count}] {tensor}", index + 1)),
            Progress::Wrote { bytes, total } => {
                pb.set_length(total);
                pb.inc(bytes);
            }
            Progress::CalibrationEstimate(_)
            | Progress::CalibrationCache(_)
            | Progress::SensitivityCache(_)
            | Progress::Warning(_) => {}
        }
    }

    /// Prints a line on standard error above the current bar.
    fn line(&self, text: &str) {
        let cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match cur.as_ref() {
            Some((_, pb)) => pb.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }

    /// Clears the last bar.
    pub fn finish(&self) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, pb)) = cur.take() {
            pb.finish_and_clear();
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.finish();
    }
}
