//! One conversion, decided and run by the library: where its importance comes
//! from, whether to calibrate, the calibration, the plan and the written file.
//! `laquant convert`, `laquant plan` and every output of `laquant batch` go
//! through [`Job`] and [`Calibration`]; the command line only gathers options
//! and shows what the job reports ([`Progress`]).

use crate::calib::{self, CalibError, CorpusSource, Matmul};
use crate::hf::{Checkpoint, HfError};
use crate::pipeline::{self, ConvertError, ConvertOptions, ConvertReport, Importance, OutType};
use crate::policy::sensitivity::{self, SampleSpec};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Something a job did, reported as it happens (through an [`OnProgress`]
/// callback, from any of the job's threads).
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// The calibration's forward pass ran another chunk.
    Calibration(&'a calib::Progress<'a>),
    /// What the calibration will cost: said before its forward pass, and
    /// again with the time once the first part of it ran.
    CalibrationEstimate(&'a calib::budget::Estimate),
    /// What the calibration cache did (reused, stored, or could not store).
    CalibrationCache(&'a calib::cache::Outcome),
    /// What the measured sensitivity's cache did.
    SensitivityCache(&'a calib::cache::Outcome),
    /// Something the user should know that does not stop the job.
    Warning(&'a str),
    /// The calibrated policy scored tensor `done` of `total`.
    Scoring {
        /// Tensors scored so far, this one included.
        done: u64,
        /// Tensors to score.
        total: u64,
        /// The tensor's GGUF name.
        tensor: &'a str,
    },
    /// The measured sensitivity ran `done` of `total` layer passes.
    Sensitivity {
        /// Layer passes so far.
        done: u64,
        /// Layer passes in all.
        total: u64,
        /// How the measurement was sized.
        sizing: &'a str,
    },
    /// The writer started tensor `index` (0-based) of `count`.
    Writing {
        /// Its place in the file.
        index: usize,
        /// Tensors in the file.
        count: usize,
        /// Its GGUF name.
        tensor: &'a str,
    },
    /// Another `bytes` of the `total` tensor bytes were written.
    Wrote {
        /// Bytes written since the last report.
        bytes: u64,
        /// Tensor bytes of the whole file.
        total: u64,
    },
}

/// The callback a job reports to; it may be called from several threads at once.
pub type OnProgress<'a> = &'a (dyn Fn(Progress<'_>) + Sync);

/// A callback that ignores every report.
pub fn silent(_: Progress<'_>) {}

/// A job that could not be run: a bad combination of options, or the failure
/// of one of its stages (each keeps its own error as the source).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The checkpoint could not be opened.
    #[error(transparent)]
    Checkpoint(#[from] HfError),
    /// Calibrating, or reading the imatrix, failed.
    #[error(transparent)]
    Calibration(#[from] CalibError),
    /// Planning or writing the GGUF failed.
    #[error(transparent)]
    Convert(#[from] ConvertError),
    /// A calibrated type was asked for with importance turned off.
    #[error(
        "{what} needs importance statistics, but --calib none turns calibration off; \
         drop --calib none, or give --imatrix FILE"
    )]
    NeedsImportance {
        /// The option asking for it (`--outtype la-mix`, `--target-bpw 5`).
        what: String,
    },
    /// The sensitivity budget is not a positive number.
    #[error("--sens-budget {0}: must be a positive multiple of the calibration")]
    SensitivityBudget(f64),
    /// An output cannot be written (exists, is an input, is not a regular file).
    #[error(transparent)]
    Output(#[from] crate::outputs::OutputPathError),
}

/// Where a conversion's importance weights come from.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum CalibSource {
    /// The embedded corpus, only for the calibrated policies (`convert` without `--calib`).
    #[default]
    Default,
    /// A corpus folder of `<lang>.txt`: every output gets importance (`--calib DIR`).
    Dir(PathBuf),
    /// No importance (`--calib none`).
    None,
    /// An imatrix file (`--imatrix FILE`).
    Imatrix(PathBuf),
}

/// How the measured sensitivity of la-mix and `--target-bpw` is sized (see
/// [`sensitivity`]): unset fields take the defaults; either size given
/// measures exactly as asked instead of sizing by cost.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SensitivitySize {
    /// Tokens per language (`--sens-tokens`); 0 turns the measurement off.
    pub tokens: Option<usize>,
    /// At most this many passes (`--sens-groups`).
    pub groups: Option<usize>,
    /// Cost at most this multiple of the calibration (`--sens-budget`).
    pub budget: Option<f64>,
}

/// A model's calibration settings: the importance source and how calibration
/// and the sensitivity measurement run.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// Where the importance comes from.
    pub source: CalibSource,
    /// Relative language weights (others weigh 1).
    pub lang_weights: Vec<(String, f64)>,
    /// Tokens per chunk.
    pub ctx: usize,
    /// At most this many chunks per language (`--chunks`).
    pub chunks: Option<usize>,
    /// Tokens per language, 0 = all the text (`--calib-tokens`); with
    /// `chunks` unset too, the size follows [`calib::budget`]'s rule.
    pub tokens: Option<usize>,
    /// Where calibrations are kept for reuse ([`calib::cache`]).
    pub cache: CacheDir,
    /// Arithmetic of the forward pass's products.
    pub matmul: Matmul,
    /// The measured sensitivity's size.
    pub sensitivity: SensitivitySize,
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration {
            source: CalibSource::Default,
            lang_weights: Vec::new(),
            ctx: 512,
            chunks: None,
            tokens: None,
            cache: CacheDir::User,
            matmul: Matmul::Auto,
            sensitivity: SensitivitySize::default(),
        }
    }
}

/// Where calibrations are cached ([`calib::cache`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum CacheDir {
    /// `$XDG_CACHE_HOME/laquant/calibration`, else `~/.cache/laquant/calibration`.
    #[default]
    User,
    /// This folder.
    Dir(PathBuf),
    /// No cache (`--no-cache`): always calibrate, store nothing.
    Off,
}

impl CacheDir {
    /// The store, if any.
    pub fn store(&self) -> Option<calib::cache::Store> {
        let dir = match self {
            CacheDir::User => calib::cache::default_dir()?,
            CacheDir::Dir(d) => d.clone(),
            CacheDir::Off => return None,
        };
        Some(calib::cache::Store { dir })
    }
}

impl Calibration {
    /// The output type when none is asked for: la-mix, or F16 without
    /// importance (`pure`: llama-quantize's pure F16).
    pub fn default_outtype(&self, pure: bool) -> OutType {
        let name = match self.source {
            CalibSource::None => "f16",
            _ => "la-mix",
        };
        OutType::parse(name, pure).expect("f16 and la-mix are output types")
    }

    /// Whether an output of this type gets importance weights: always from a
    /// corpus folder or imatrix, from the embedded corpus only for the
    /// calibrated policies.
    pub fn applies_to(&self, outtype: &OutType) -> bool {
        match self.source {
            CalibSource::None => false,
            CalibSource::Dir(_) | CalibSource::Imatrix(_) => true,
            CalibSource::Default => outtype.is_calibrated(),
        }
    }

    /// The calibration text: the folder, or the embedded corpus.
    pub fn corpus(&self) -> CorpusSource {
        match &self.source {
            CalibSource::Dir(d) => CorpusSource::Dir(d.clone()),
            _ => CorpusSource::Embedded,
        }
    }

    /// The calibration run's options, with this many threads (0: all cores).
    pub fn options(&self, threads: usize) -> calib::CalibOptions {
        calib::CalibOptions {
            corpus: self.corpus(),
            ctx: self.ctx,
            lang_weights: self.lang_weights.clone(),
            threads,
            process_output: true,
            max_chunks: self.chunks,
            matmul: self.matmul,
        }
    }

    /// The files this calibration reads (no output may replace them).
    pub fn inputs(&self) -> Vec<PathBuf> {
        match &self.source {
            CalibSource::Dir(d) => crate::outputs::files_in(d),
            CalibSource::Imatrix(f) => vec![f.clone()],
            CalibSource::Default | CalibSource::None => Vec::new(),
        }
    }

    /// The sensitivity sample of la-mix and `--target-bpw`: the calibration
    /// text (the embedded corpus with an imatrix); `None` with `--sens-tokens 0`.
    pub fn sample(&self) -> Result<Option<SampleSpec>, JobError> {
        let s = self.sensitivity;
        if s.tokens == Some(0) {
            return Ok(None);
        }
        if let Some(b) = s.budget.filter(|b| !(b.is_finite() && *b > 0.0)) {
            return Err(JobError::SensitivityBudget(b));
        }
        // Either size given: exactly as asked; neither: sized by cost.
        let explicit = s.tokens.is_some() || s.groups.is_some();
        Ok(Some(SampleSpec {
            corpus: self.corpus(),
            lang_weights: self.lang_weights.clone(),
            tokens: s.tokens.unwrap_or(sensitivity::DEFAULT_TOKENS),
            max_groups: s.groups.unwrap_or(sensitivity::DEFAULT_MAX_GROUPS),
            budget: (!explicit).then_some(s.budget.unwrap_or(sensitivity::DEFAULT_BUDGET)),
            matmul: self.matmul,
            cache: self.cache.store(),
        }))
    }

    /// Calibrates `ck` as these settings say (`process_output`: also the
    /// output head's input): sized by `--chunks` / `--calib-tokens` or
    /// [`calib::budget`]'s rule, the cost said first, reused from the cache
    /// when it holds it (see [`calib::cache`]). Any source but a corpus
    /// folder calibrates on the embedded corpus.
    pub fn calibrate(
        &self,
        ck: &Checkpoint,
        threads: usize,
        process_output: bool,
        progress: OnProgress,
    ) -> Result<calib::Calibrated, JobError> {
        let opts = calib::CalibOptions {
            process_output,
            ..self.options(threads)
        };
        let cfg = calib::ForwardConfig::from_hf(&ck.config)?;
        let size = calib::budget::size(&cfg, self.ctx, self.chunks, self.tokens);
        let store = self.cache.store();
        let run = calib::run_cached(ck, &opts, size, store.as_ref(), &mut |e| match e {
            calib::Event::Estimate(x) => progress(Progress::CalibrationEstimate(x)),
            calib::Event::Progress(p) => progress(Progress::Calibration(p)),
            calib::Event::Warning(w) => progress(Progress::Warning(w)),
        })?;
        progress(Progress::CalibrationCache(&run.cache));
        Ok(run)
    }

    /// The importance weights of `model`: its imatrix file, or a calibration
    /// run ([`Calibration::calibrate`], timed; `CalibSource::None` calibrates
    /// on the embedded corpus, ask [`Calibration::applies_to`] first), with
    /// the sensitivity sample attached.
    pub fn importance(
        &self,
        model: &str,
        threads: usize,
        progress: OnProgress,
    ) -> Result<Importance, JobError> {
        self.importance_from(|| Ok(Checkpoint::open(model)?), threads, progress)
    }

    /// [`Calibration::importance`] of the checkpoint `open` gives (called only
    /// when the importance is calibrated, not read from an imatrix file).
    pub fn importance_from<C: std::borrow::Borrow<Checkpoint>>(
        &self,
        open: impl FnOnce() -> Result<C, JobError>,
        threads: usize,
        progress: OnProgress,
    ) -> Result<Importance, JobError> {
        let sample = self.sample()?;
        let mut imp = if let CalibSource::Imatrix(f) = &self.source {
            let m = calib::imatrix::Imatrix::read(f)?;
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
            Importance::from_imatrix(&m, name.or(Some(f.display().to_string())))
        } else {
            let t0 = Instant::now();
            let matmul = self.matmul.resolve()?;
            let ck = open()?;
            let run = self.calibrate(ck.borrow(), threads, true, progress)?;
            let mut imp = Importance::from_calibration(&run.importance);
            imp.seconds = Some(t0.elapsed().as_secs_f64());
            imp.matmul = Some(matmul.name().to_string());
            imp.estimate = Some(run.estimate);
            imp.cache = Some(run.cache);
            imp
        };
        imp.sensitivity = sample;
        Ok(imp)
    }
}

/// One conversion: a model, what to write, and where its importance comes from.
#[derive(Debug, Clone)]
pub struct Job {
    /// Model folder or hub id.
    pub model: String,
    /// What to write; its `importance` is filled by the job.
    pub options: ConvertOptions,
    /// Where the importance comes from, and how calibration runs.
    pub calibration: Calibration,
}

impl Job {
    /// Refuses options that cannot work together before any work is done.
    pub fn check(&self) -> Result<(), JobError> {
        let t = self.options.outtype;
        if t.is_calibrated() && self.calibration.source == CalibSource::None {
            return Err(JobError::NeedsImportance {
                what: match t {
                    OutType::TargetBpw(x) => format!("--target-bpw {x}"),
                    _ => "--outtype la-mix".to_string(),
                },
            });
        }
        self.calibration.sample()?;
        Ok(())
    }

    /// Whether this job calibrates (or reads an imatrix) before planning.
    pub fn needs_importance(&self) -> bool {
        self.calibration.applies_to(&self.options.outtype)
    }

    /// The file the job writes: `options.output`, else the default name in
    /// the current folder.
    pub fn target(&self, ck: &Checkpoint) -> PathBuf {
        self.options
            .output
            .clone()
            .unwrap_or_else(|| pipeline::default_output(ck, self.options.outtype))
    }

    /// Checks, before any work, that the output and `extra` outputs (flag,
    /// path) can be written and replace no input; returns the output's path.
    pub fn check_outputs(&self, extra: &[(&str, &Path)]) -> Result<PathBuf, JobError> {
        self.check()?;
        let ck = Checkpoint::open(&self.model)?;
        let target = self.target(&ck);
        let mut inputs = crate::outputs::files_in(&ck.dir);
        inputs.extend(self.calibration.inputs());
        let mut outs = vec![("-o", target.as_path())];
        outs.extend_from_slice(extra);
        crate::outputs::check(&outs, &inputs, self.options.force)?;
        Ok(target)
    }

    /// The importance weights this job plans with, if it uses any.
    pub fn importance(
        &self,
        threads: usize,
        progress: OnProgress,
    ) -> Result<Option<Importance>, JobError> {
        self.check()?;
        if !self.needs_importance() {
            return Ok(None);
        }
        self.calibration
            .importance(&self.model, threads, progress)
            .map(Some)
    }

    /// The per-tensor plan (types, sizes, reasons), calibrating if needed; writes nothing.
    pub fn plan(
        &self,
        threads: usize,
        progress: OnProgress,
    ) -> Result<(Checkpoint, Vec<pipeline::TensorPlan>), JobError> {
        let mut opts = self.options.clone();
        opts.importance = self.importance(threads, progress)?;
        let ck = Checkpoint::open(&self.model)?;
        let plan = pipeline::plan(&ck, &opts, progress)?;
        Ok((ck, plan))
    }

    /// Calibrates if needed, plans and writes the GGUF.
    pub fn run(&self, threads: usize, progress: OnProgress) -> Result<ConvertReport, JobError> {
        let imp = self.importance(threads, progress)?;
        Ok(self.convert_with(imp, progress)?)
    }

    /// Plans and writes the GGUF with importance computed already (`batch`
    /// computes a model's once, for all of its outputs).
    pub fn convert_with(
        &self,
        importance: Option<Importance>,
        progress: OnProgress,
    ) -> Result<ConvertReport, ConvertError> {
        let mut opts = self.options.clone();
        opts.importance = importance;
        pipeline::convert(&self.model, &opts, progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_applies_to_the_calibrated_policies_or_when_asked() {
        let default = Calibration::default();
        let q8 = OutType::parse("q8_0", false).unwrap();
        let mix = OutType::parse("la-mix", false).unwrap();
        assert!(!default.applies_to(&q8) && default.applies_to(&mix));
        let dir = Calibration {
            source: CalibSource::Dir("d".into()),
            ..default.clone()
        };
        assert!(dir.applies_to(&q8));
        let none = Calibration {
            source: CalibSource::None,
            ..default
        };
        assert!(!none.applies_to(&mix));
    }

    #[test]
    fn the_sensitivity_is_sized_by_cost_unless_a_size_is_given() {
        let mut c = Calibration::default();
        let s = c.sample().unwrap().unwrap();
        assert_eq!(s.budget, Some(sensitivity::DEFAULT_BUDGET));
        c.sensitivity.groups = Some(4);
        let s = c.sample().unwrap().unwrap();
        assert_eq!(
            (s.budget, s.max_groups, s.tokens),
            (None, 4, sensitivity::DEFAULT_TOKENS)
        );
        c.sensitivity.tokens = Some(0);
        assert!(c.sample().unwrap().is_none());
        c.sensitivity = SensitivitySize {
            budget: Some(-1.0),
            ..Default::default()
        };
        assert!(matches!(c.sample(), Err(JobError::SensitivityBudget(_))));
    }

    #[test]
    fn a_calibrated_type_without_importance_is_refused() {
        let job = Job {
            model: "m".into(),
            options: ConvertOptions {
                outtype: OutType::TargetBpw(5.0),
                ..Default::default()
            },
            calibration: Calibration {
                source: CalibSource::None,
                ..Default::default()
            },
        };
        let e = job.check().unwrap_err().to_string();
        assert!(e.contains("--target-bpw 5 needs importance"), "{e}");
    }
}
