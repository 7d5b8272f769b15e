//! `laquant batch`: convert a model zoo from a manifest ([`manifest`]) into
//! one folder per model (`OUT/<name>/<name>-<TYPE>.gguf`, with the conversion
//! report beside it as `<name>-<TYPE>.json` and, with `--ollama`, a
//! `<name>-<TYPE>.Modelfile` for ollama).
//!
//! - Calibration runs at most once per model and its importance is reused by
//!   every output of that model that needs it (the same rule as `convert`).
//! - `--jobs N` runs N conversions at once, each on its own rayon pool; the
//!   pools split the `--threads` budget, so the machine is never oversubscribed.
//! - Resumable (`state.json` in the output root): finished outputs are recorded with size, time and
//!   hash, and fingerprints of input and options; a rerun skips what still
//!   matches. Outputs are written through [`crate::atomic::AtomicFile`], so a
//!   kill leaves no partial file under a final name.
//! - `--shard I/N` takes a contiguous, deterministic slice of the work items and
//!   keeps its own state file, so cluster array tasks never write the same file.
//! - One output's failure does not stop the others; the [`summary`] says why.
//! - `--eval` ([`quality`]): once all of a model's outputs are finished, they
//!   are scored together as `laquant eval` does (the reference computed once per
//!   chunk for all of them); results are kept in the state, so a rerun with the
//!   same settings does not score them again, and shown per language in the
//!   summary and in each output's JSON report (under `eval`). A failed
//!   evaluation keeps its GGUF. A model's own `eval` entry in the manifest
//!   overrides the global settings field by field ([`manifest::ModelEval`]);
//!   each model's evaluation fingerprint is taken over its own settings.

pub mod manifest;
pub(crate) mod ollama;
pub mod quality;
pub(crate) mod state;
pub mod summary;

pub use state::StateError;

use crate::eval::EvalText;
use crate::hf::hub;
use crate::job::{self, CalibSource};
use crate::pipeline::{ConvertOptions, Importance};
use manifest::{EvalSettings, Manifest, ModelSpec, WorkItem};
use state::{EvalRecord, Record, State};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;
use summary::{Calibration, EvalInfo, EvalStatus, Evaluation, Row, RowEval, Status, Summary};

/// What an interrupted batch leaves (the signal handler's message,
/// [`crate::atomic::remove_temps_on_signal_saying`]).
pub const INTERRUPTED_OUTCOME: &str = "the outputs finished so far are kept and recorded, \
     the ones in flight were removed; run the same command again to resume";

/// `laquant batch`'s flags.
#[derive(Debug, Clone, Default)]
pub struct BatchOptions {
    /// The manifest file.
    pub manifest: PathBuf,
    /// Output root (default: the manifest's `output`, else `out` beside it).
    pub output: Option<PathBuf>,
    /// Conversions at once (at least 1, at most the thread budget).
    pub jobs: usize,
    /// Calibrations at once (0 counts as 1): each holds its model in f32.
    pub calib_jobs: usize,
    /// Thread budget shared by the jobs; 0 = all cores.
    pub threads: usize,
    /// `--shard I/N`.
    pub shard: Option<(usize, usize)>,
    /// Write a Modelfile beside each GGUF.
    pub ollama: bool,
    /// Rehash every recorded output before skipping it.
    pub verify: bool,
    /// No per-output progress lines.
    pub quiet: bool,
    /// Only say what would be done: convert nothing, write nothing.
    pub dry_run: bool,
    /// Evaluate every output (also on when the manifest has `[eval]` or any
    /// `eval_*` option is given).
    pub eval: bool,
    /// `--eval-text DIR`: a folder of `<lang>.txt` (`embedded`: the held-out part of the embedded corpus).
    pub eval_text: Option<PathBuf>,
    /// `--eval-languages en,zh`.
    pub eval_languages: Option<Vec<String>>,
    /// `--eval-ctx N`.
    pub eval_ctx: Option<usize>,
    /// `--eval-chunks N`.
    pub eval_chunks: Option<usize>,
    /// `--eval-memory-gb X`, in bytes.
    pub eval_memory: Option<u64>,
}

/// The global evaluation settings of a run: the manifest's `[eval]` with the
/// command line's options over it, or `None` when neither asks for an
/// evaluation (a model's own `eval` entry may still ask for one).
fn eval_settings(
    manifest: &Manifest,
    opts: &BatchOptions,
) -> Result<Option<EvalSettings>, BatchError> {
    let flags = opts.eval
        || opts.eval_text.is_some()
        || opts.eval_languages.is_some()
        || opts.eval_ctx.is_some()
        || opts.eval_chunks.is_some()
        || opts.eval_memory.is_some();
    if !flags && manifest.eval.is_none() {
        return Ok(None);
    }
    let mut s = manifest.eval.clone().unwrap_or_default();
    if let Some(t) = &opts.eval_text {
        s.text = if t.as_os_str() == "embedded" {
            EvalText::EmbeddedHoldout
        } else {
            EvalText::Dir(t.clone())
        };
    }
    if let Some(l) = &opts.eval_languages {
        s.languages = l.clone();
    }
    s.ctx = opts.eval_ctx.or(s.ctx);
    s.chunks = opts.eval_chunks.or(s.chunks);
    s.memory_bytes = opts.eval_memory.or(s.memory_bytes);
    s.validate().map_err(|message| BatchError::Eval {
        what: "--eval".into(),
        message,
    })?;
    Ok(Some(s))
}

/// A problem that stops the whole batch before any conversion (bad manifest,
/// unusable output folder, unreadable state). Per-output failures are rows of
/// the summary instead.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The manifest cannot be read or is invalid.
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    /// The evaluation settings are invalid (`what` names where they come from).
    #[error("{what}: {message}")]
    Eval {
        /// The flags, or the manifest and model.
        what: String,
        /// What is wrong.
        message: manifest::EvalSettingsError,
    },
    /// The output folder cannot be created.
    #[error("{}: cannot create output folder", path.display())]
    OutputFolder {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The state file cannot be used.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// The state file cannot be written.
    #[error("{file}: cannot save the state")]
    StateNotSaved {
        /// The state file's name.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// The workers' thread pools cannot be started.
    #[error("cannot start {threads} threads")]
    Threads {
        /// Threads asked for.
        threads: usize,
        /// Why.
        source: rayon::ThreadPoolBuildError,
    },
    /// Everything ran (the outputs finished are recorded in the state), but the
    /// summary files could not be written: the caller still shows the summary.
    #[error("{}: cannot write the summary (the finished outputs are recorded \
             in the state; run the same command again to write it)", path.display())]
    SummaryNotWritten {
        /// The summary of the run.
        summary: Box<Summary>,
        /// The summary file that could not be written.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The files of an output, relative to the output root.
fn output_key(m: &ModelSpec, label: &str) -> String {
    format!("{0}/{0}-{label}.gguf", m.name)
}

fn with_ext(p: &Path, ext: &str) -> PathBuf {
    p.with_extension(ext)
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    OutputError::from_panic(p).to_string()
}

/// Why one output (or its model's calibration) failed; the summary row shows it.
#[derive(Debug, thiserror::Error)]
enum OutputError {
    /// Calibrating or reading the imatrix failed.
    #[error(transparent)]
    Importance(#[from] job::JobError),
    /// The model's calibration failed (shared by its outputs, as text).
    #[error("calibration failed: {0}")]
    CalibrationFailed(String),
    /// Planning or writing the GGUF failed.
    #[error(transparent)]
    Convert(#[from] crate::pipeline::ConvertError),
    /// The output folder cannot be created.
    #[error("{}", path.display())]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The written GGUF cannot be hashed or has gone.
    #[error("{}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The GGUF is complete but the state file could not record it.
    #[error("{} is complete but could not be recorded in the state file", path.display())]
    NotRecorded {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A bug: the work panicked (the other outputs go on).
    #[error("internal error (panic): {0}")]
    Panic(String),
}

/// An error and its sources, as one line (`a: b: c`), for the summary's rows.
fn chain(e: &dyn std::error::Error) -> String {
    crate::error_chain(e)
}

impl OutputError {
    fn from_panic(p: Box<dyn std::any::Any + Send>) -> OutputError {
        OutputError::Panic(
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into()),
        )
    }
}

/// Why a model's checkpoint cannot be fingerprinted (its outputs fail).
#[derive(Debug, thiserror::Error)]
enum InputError {
    /// The model cannot be found (a missing folder, a hub id not in the cache).
    #[error(transparent)]
    Resolve(#[from] crate::hf::HfError),
    /// Its folder cannot be read.
    #[error("{}", dir.display())]
    Read {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// A model's preparation: where it is and what its inputs look like.
struct Prepared {
    /// Fingerprint of the checkpoint folder, or why it could not be found.
    input: Result<String, InputError>,
    /// Fingerprint of the importance source (calibration settings and corpus, or imatrix file).
    calib: String,
}

fn prepare(m: &ModelSpec) -> Prepared {
    let input = hub::resolve(&m.model)
        .map_err(InputError::from)
        .and_then(|dir| {
            state::input_fingerprint(&dir).map_err(|source| InputError::Read { dir, source })
        });
    let c = &m.calib;
    let mut h = blake3::Hasher::new();
    h.update(
        format!(
            "{:?} {:?} {} {:?}",
            c.source, c.lang_weights, c.ctx, c.chunks
        )
        .as_bytes(),
    );
    match &c.source {
        CalibSource::Dir(d) => {
            // A missing corpus fails at calibration, with calib's own message.
            let _ = state::fingerprint_dir(d, &mut h);
        }
        CalibSource::Imatrix(f) => {
            if let Some((len, t)) = state::stat(f) {
                h.update(format!("{len} {t}").as_bytes());
            }
        }
        CalibSource::Default | CalibSource::None => {}
    }
    Prepared {
        input,
        calib: h.finalize().to_hex()[..32].to_string(),
    }
}

/// The importance of one model, computed once.
enum Imp {
    Todo,
    Running,
    Ready(Arc<Importance>),
    Failed(String),
}

/// A pending output.
struct Task {
    item: WorkItem,
    /// Index into the rows.
    row: usize,
    key: String,
    input_fp: String,
    options_fp: String,
    needs_importance: bool,
}

struct Queue {
    pending: VecDeque<Task>,
    imp: Vec<Imp>,
    /// At most this many calibrations run at once.
    calib_jobs: usize,
    /// Conversions of each model running now.
    converting: Vec<usize>,
    /// Models whose outputs are to be evaluated once none of their conversions
    /// is pending or running (cleared when the evaluation starts).
    eval_wanted: Vec<bool>,
}

enum Job {
    Calibrate(usize),
    Convert(Task),
    /// Score a model's finished outputs.
    Evaluate(usize),
}

impl Queue {
    /// The next job: an output that can run now, else the evaluation of a
    /// model whose outputs are all finished, else a calibration that unblocks
    /// some, else wait (None when nothing is left).
    fn next(&mut self) -> Option<Option<Job>> {
        if self.pending.is_empty() && !self.eval_wanted.contains(&true) {
            return None;
        }
        let ready = |t: &Task, imp: &[Imp]| {
            !t.needs_importance || matches!(imp[t.item.model], Imp::Ready(_) | Imp::Failed(_))
        };
        if let Some(i) = self.pending.iter().position(|t| ready(t, &self.imp)) {
            let t = self.pending.remove(i)?;
            self.converting[t.item.model] += 1;
            return Some(Some(Job::Convert(t)));
        }
        let finished =
            |m: usize| self.converting[m] == 0 && !self.pending.iter().any(|t| t.item.model == m);
        if let Some(m) = (0..self.eval_wanted.len()).find(|&m| self.eval_wanted[m] && finished(m)) {
            self.eval_wanted[m] = false;
            return Some(Some(Job::Evaluate(m)));
        }
        let running = self
            .imp
            .iter()
            .filter(|i| matches!(i, Imp::Running))
            .count();
        if running >= self.calib_jobs {
            return Some(None);
        }
        if let Some(t) = self
            .pending
            .iter()
            .find(|t| t.needs_importance && matches!(self.imp[t.item.model], Imp::Todo))
        {
            let m = t.item.model;
            self.imp[m] = Imp::Running;
            return Some(Some(Job::Calibrate(m)));
        }
        Some(None)
    }
}

/// Everything the workers share.
struct Shared<'a> {
    manifest: &'a Manifest,
    root: PathBuf,
    opts: &'a BatchOptions,
    queue: Mutex<Queue>,
    wake: Condvar,
    state: Mutex<State>,
    rows: Mutex<Vec<Row>>,
    calibrations: Mutex<Vec<Calibration>>,
    /// `--eval`: per model, its settings and their fingerprint (`None`: not evaluated).
    eval: Vec<Option<(EvalSettings, String)>>,
    evaluations: Mutex<Vec<Evaluation>>,
    finished: AtomicUsize,
    total: usize,
}

/// Per model: its evaluation settings (the global ones under its own `eval`
/// entry) and their fingerprint, `None` when it is not evaluated or not in this shard.
fn model_evals(
    manifest: &Manifest,
    global_eval: Option<&EvalSettings>,
    in_shard: &dyn Fn(usize) -> bool,
) -> Result<Vec<Option<(EvalSettings, String)>>, BatchError> {
    manifest
        .models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let Some(s) = m.eval.resolve(global_eval).filter(|_| in_shard(i)) else {
                return Ok(None);
            };
            s.validate().map_err(|message| BatchError::Eval {
                what: format!(
                    "{}: {} (eval, with the global settings)",
                    manifest.path.display(),
                    m.name
                ),
                message,
            })?;
            let fp = quality::fingerprint(&s);
            Ok(Some((s, fp)))
        })
        .collect()
}
/// Sorting the work items before any runs: each is skipped (its recorded
/// output still matches) or becomes a pending [`Task`], with its summary row.
struct Settle<'a> {
    root: &'a Path,
    opts: &'a BatchOptions,
    eval: &'a [Option<(EvalSettings, String)>],
    state: &'a mut State,
    rows: Vec<Row>,
    pending: VecDeque<Task>,
    /// Models with an output to evaluate.
    eval_wanted: Vec<bool>,
}

impl Settle<'_> {
    /// Settles one work item of model `m`.
    fn item(&mut self, m: &ModelSpec, prep: &Prepared, item: &WorkItem) -> Result<(), BatchError> {
        let save_err = |source| BatchError::StateNotSaved {
            file: state::file_name(self.opts.shard),
            source,
        };
        let ts = &m.types[item.ty];
        let key = output_key(m, &ts.label);
        let target = self.root.join(&key);
        let mut row = Row {
            model: m.name.clone(),
            source: m.model.clone(),
            ty: ts.label.clone(),
            output: key.clone(),
            status: Status::Failed,
            bytes: None,
            bits_per_weight: None,
            seconds: None,
            error: None,
            notes: Vec::new(),
            modelfile: None,
            template: None,
            eval: None,
        };
        let input_fp = match &prep.input {
            Ok(fp) => fp.clone(),
            Err(e) => {
                row.error = Some(chain(e));
                self.rows.push(row);
                return Ok(());
            }
        };
        let needs_importance = m.calib.applies_to(&ts.outtype);
        let options_fp = state::fingerprint(&format!(
            "laquant {} | {} | tokenizer_pre {:?} | allow_nonfinite {} | importance {}",
            env!("CARGO_PKG_VERSION"),
            ts.describe,
            m.tokenizer_pre,
            m.allow_nonfinite,
            if needs_importance {
                prep.calib.as_str()
            } else {
                "none"
            }
        ));
        let rec = self.state.get(&key).cloned();
        match state::check(
            rec.as_ref(),
            &target,
            &input_fp,
            &options_fp,
            self.opts.verify,
        ) {
            None => {
                let rec = rec.expect("a match has a record");
                row.status = Status::Skipped;
                if let Some((settings, fp)) = &self.eval[item.model] {
                    match &rec.eval {
                        Some(e) if &e.settings == fp => {
                            let ev = RowEval {
                                status: EvalStatus::Skipped,
                                error: None,
                                quality: Some(e.quality.clone()),
                            };
                            // The report may predate the evaluation (a run killed
                            // in between, or a report written back by hand).
                            if !self.opts.dry_run {
                                report_eval(&target, &ev, settings, &mut row.notes);
                            }
                            row.eval = Some(ev);
                        }
                        _ if self.opts.dry_run => row.notes.push("to evaluate".into()),
                        _ => self.eval_wanted[item.model] = true,
                    }
                }
                row.bytes = Some(rec.bytes);
                row.bits_per_weight = Some(rec.bits_per_weight);
                row.seconds = Some(rec.seconds);
                if self.opts.ollama && !self.opts.dry_run {
                    write_modelfile(&target, &key).apply(&mut row);
                }
                // Refresh the record (a verified hash may have a new time; another
                // shard's record becomes this shard's).
                let mut rec = rec;
                if let Some((_, t)) = state::stat(&target) {
                    rec.mtime_ns = t;
                }
                if self.state.own(&key) != Some(&rec) && !self.opts.dry_run {
                    self.state.finish(key.clone(), rec).map_err(save_err)?;
                }
                self.rows.push(row);
            }
            Some(why) => {
                if why != "new" {
                    row.notes.push(format!("redone: {why}"));
                }
                if self.opts.dry_run {
                    row.status = Status::Todo;
                    self.rows.push(row);
                    return Ok(());
                }
                self.state.forget(&key).map_err(save_err)?;
                self.eval_wanted[item.model] |= self.eval[item.model].is_some();
                self.pending.push_back(Task {
                    item: *item,
                    row: self.rows.len(),
                    key,
                    input_fp,
                    options_fp,
                    needs_importance,
                });
                self.rows.push(row);
            }
        }
        Ok(())
    }
}

/// Runs the batch and writes the summary files; the summary says what failed.
pub fn run(opts: &BatchOptions) -> Result<Summary, BatchError> {
    let t0 = Instant::now();
    let manifest = Manifest::load(&opts.manifest)?;
    let root = opts
        .output
        .clone()
        .unwrap_or_else(|| manifest.output.clone());
    if !opts.dry_run {
        std::fs::create_dir_all(&root).map_err(|source| BatchError::OutputFolder {
            path: root.clone(),
            source,
        })?;
    }
    let all = manifest.items();
    let items = match opts.shard {
        Some((i, n)) => manifest::shard(&all, i, n),
        None => all,
    };
    let global_eval = eval_settings(&manifest, opts)?;
    let in_shard = |m: usize| items.iter().any(|it| it.model == m);
    let eval = model_evals(&manifest, global_eval.as_ref(), &in_shard)?;
    let mut state = State::load(&root, opts.shard)?;
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        opts.threads
    };

    let prepared: Vec<Option<Prepared>> = (0..manifest.models.len())
        .map(|m| in_shard(m).then(|| prepare(&manifest.models[m])))
        .collect();
    let mut settle = Settle {
        root: &root,
        opts,
        eval: &eval,
        state: &mut state,
        rows: Vec::new(),
        pending: VecDeque::new(),
        eval_wanted: vec![false; manifest.models.len()],
    };
    for item in &items {
        let prep = prepared[item.model]
            .as_ref()
            .expect("prepared for its items");
        settle.item(&manifest.models[item.model], prep, item)?;
    }
    let Settle {
        rows,
        pending,
        eval_wanted,
        ..
    } = settle;

    let jobs = opts.jobs.clamp(1, threads).min(pending.len().max(1));
    let total = rows.len();
    let settled = rows.len() - pending.len();
    let shared = Shared {
        manifest: &manifest,
        root: root.clone(),
        opts,
        queue: Mutex::new(Queue {
            pending,
            imp: (0..manifest.models.len()).map(|_| Imp::Todo).collect(),
            calib_jobs: opts.calib_jobs.max(1),
            converting: vec![0; manifest.models.len()],
            eval_wanted,
        }),
        wake: Condvar::new(),
        state: Mutex::new(state),
        rows: Mutex::new(rows),
        calibrations: Mutex::new(Vec::new()),
        eval: eval.clone(),
        evaluations: Mutex::new(Vec::new()),
        finished: AtomicUsize::new(settled),
        total,
    };
    // Split the thread budget: the first `threads % jobs` pools get one more.
    let pools = (0..jobs)
        .map(|j| {
            let n = threads / jobs + usize::from(j < threads % jobs);
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(move |i| format!("laquant-batch-{j}-{i}"))
                .build()
                .map_err(|source| BatchError::Threads { threads: n, source })
        })
        .collect::<Result<Vec<_>, _>>()?;
    std::thread::scope(|s| {
        for pool in &pools {
            let shared = &shared;
            s.spawn(move || worker(shared, pool));
        }
    });

    let summary = Summary {
        jobs,
        threads,
        wall_seconds: t0.elapsed().as_secs_f64(),
        ..summarize(shared, opts, &root, global_eval.as_ref(), &eval)
    };
    if opts.dry_run {
        return Ok(summary);
    }
    write_summary(&root, opts.shard, summary)
}

/// The summary of a finished run: its rows, calibrations and evaluations
/// (`jobs`, `threads` and the time are the caller's).
fn summarize(
    shared: Shared,
    opts: &BatchOptions,
    root: &Path,
    global_eval: Option<&EvalSettings>,
    eval: &[Option<(EvalSettings, String)>],
) -> Summary {
    let rows = shared.rows.into_inner().unwrap_or_else(|p| p.into_inner());
    let count = |st: Status| rows.iter().filter(|r| r.status == st).count();
    let todo = count(Status::Todo);
    Summary {
        manifest: opts.manifest.display().to_string(),
        output: root.display().to_string(),
        shard: opts.shard.map(|(i, n)| format!("{i}/{n}")),
        jobs: 0,
        threads: 0,
        wall_seconds: 0.0,
        done: count(Status::Done),
        skipped: count(Status::Skipped),
        failed: count(Status::Failed),
        todo,
        calibrations: shared
            .calibrations
            .into_inner()
            .unwrap_or_else(|p| p.into_inner()),
        eval: global_eval.map(eval_info),
        eval_models: shared
            .manifest
            .models
            .iter()
            .zip(eval)
            .filter_map(|(m, e)| {
                let info = eval_info(&e.as_ref()?.0);
                let global = global_eval.map(eval_info);
                (global.as_ref() != Some(&info)).then(|| (m.name.clone(), info))
            })
            .collect(),
        eval_failed: rows
            .iter()
            .filter(|r| {
                r.eval
                    .as_ref()
                    .is_some_and(|e| e.status == EvalStatus::Failed)
            })
            .count(),
        evaluations: shared
            .evaluations
            .into_inner()
            .unwrap_or_else(|p| p.into_inner()),
        rows,
    }
}

/// Writes `summary.json` and `summary.md` (`summary-I-of-N.*` for a shard) into `root`.
fn write_summary(
    root: &Path,
    shard: Option<(usize, usize)>,
    summary: Summary,
) -> Result<Summary, BatchError> {
    let stem = match shard {
        Some((i, n)) => format!("summary-{i}-of-{n}"),
        None => "summary".into(),
    };
    let json = serde_json::to_vec_pretty(&summary).expect("the summary is plain data");
    for (ext, bytes) in [("json", json), ("md", summary.to_markdown().into_bytes())] {
        let path = root.join(format!("{stem}.{ext}"));
        if let Err(source) = state::write_atomic(&path, &bytes) {
            return Err(BatchError::SummaryNotWritten {
                summary: Box::new(summary),
                path,
                source,
            });
        }
    }
    Ok(summary)
}

/// What the summary and the reports say about evaluation settings.
fn eval_info(s: &EvalSettings) -> EvalInfo {
    EvalInfo {
        text: s.text.describe(),
        languages: s.languages.clone(),
        ctx: quality::options(s, 0).ctx(),
        chunks: s.chunks,
    }
}

/// An output's evaluation as its JSON report holds it (under `eval`): the
/// settings, and the status (`done` or `failed`), error and figures as in
/// `summary.json`'s `rows[].eval`.
#[derive(serde::Serialize)]
struct ReportEval<'a> {
    #[serde(flatten)]
    eval: &'a RowEval,
    settings: EvalInfo,
}

/// Puts an output's evaluation into its JSON report (`<output>.json`, as
/// written by the conversion), rewriting the report only when it changes; a
/// report that cannot be read or written gets a note in the row.
fn report_eval(target: &Path, ev: &RowEval, settings: &EvalSettings, notes: &mut Vec<String>) {
    let path = with_ext(target, "json");
    let mut ev = ev.clone();
    // A reused result is the same result: the report says how it was made.
    if ev.status == EvalStatus::Skipped {
        ev.status = EvalStatus::Done;
    }
    let r = (|| -> Result<(), ReportEvalError> {
        let bytes = crate::hf::read_capped(&path, crate::hf::limits::INDEX_BYTES)?;
        let mut report: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(ReportEvalError::NotJson)?;
        let obj = report.as_object_mut().ok_or(ReportEvalError::NotAnObject)?;
        let value = serde_json::to_value(ReportEval {
            eval: &ev,
            settings: eval_info(settings),
        })
        .map_err(ReportEvalError::Json)?;
        if obj.get("eval") == Some(&value) {
            return Ok(());
        }
        obj.insert("eval".into(), value);
        let json = serde_json::to_vec_pretty(&report).map_err(ReportEvalError::Json)?;
        Ok(state::write_atomic(&path, &json)?)
    })();
    if let Err(e) = r {
        notes.push(format!(
            "cannot put the evaluation into the report {}: {}",
            path.display(),
            chain(&e)
        ));
    }
}

/// Why an output's evaluation could not be put into its report.
#[derive(Debug, thiserror::Error)]
enum ReportEvalError {
    /// Reading or writing the report failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The report is not JSON.
    #[error("not JSON")]
    NotJson(#[source] serde_json::Error),
    /// The report is JSON but not an object.
    #[error("not a JSON object (a conversion report)")]
    NotAnObject,
    /// The evaluation cannot be serialized.
    #[error(transparent)]
    Json(serde_json::Error),
}

fn worker(sh: &Shared, pool: &rayon::ThreadPool) {
    loop {
        let job = {
            let mut q = sh.queue.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                match q.next() {
                    None => return,
                    Some(Some(job)) => break job,
                    Some(None) => q = sh.wake.wait(q).unwrap_or_else(|p| p.into_inner()),
                }
            }
        };
        match job {
            Job::Calibrate(m) => {
                let spec = &sh.manifest.models[m];
                let t = Instant::now();
                let r = pool.install(|| {
                    catch_unwind(AssertUnwindSafe(|| importance(spec, pool)))
                        .unwrap_or_else(|p| Err(OutputError::from_panic(p)))
                        .map_err(|e| chain(&e))
                });
                sh.calibrations
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Calibration {
                        model: spec.name.clone(),
                        seconds: t.elapsed().as_secs_f64(),
                        error: r.as_ref().err().cloned(),
                    });
                if !sh.opts.quiet {
                    match &r {
                        Ok(_) => eprintln!(
                            "calibrated {} in {:.1}s",
                            spec.name,
                            t.elapsed().as_secs_f64()
                        ),
                        Err(e) => eprintln!("calibration of {} failed: {e}", spec.name),
                    }
                }
                let mut q = sh.queue.lock().unwrap_or_else(|p| p.into_inner());
                q.imp[m] = match r {
                    Ok(i) => Imp::Ready(Arc::new(i)),
                    Err(e) => Imp::Failed(e),
                };
                sh.wake.notify_all();
            }
            Job::Evaluate(m) => evaluate_model(sh, m, pool),
            Job::Convert(task) => {
                let imp = if task.needs_importance {
                    let q = sh.queue.lock().unwrap_or_else(|p| p.into_inner());
                    match &q.imp[task.item.model] {
                        Imp::Ready(i) => Ok(Some(i.clone())),
                        Imp::Failed(e) => Err(OutputError::CalibrationFailed(e.clone())),
                        _ => unreachable!("scheduled only once importance is settled"),
                    }
                } else {
                    Ok(None)
                };
                let row = pool.install(|| {
                    catch_unwind(AssertUnwindSafe(|| convert_one(sh, &task, imp)))
                        .unwrap_or_else(|p| Err(OutputError::from_panic(p)))
                });
                {
                    // The model's evaluation may now be ready.
                    let mut q = sh.queue.lock().unwrap_or_else(|p| p.into_inner());
                    q.converting[task.item.model] -= 1;
                    sh.wake.notify_all();
                }
                let mut rows = sh.rows.lock().unwrap_or_else(|p| p.into_inner());
                let r = &mut rows[task.row];
                match row {
                    Ok(done) => {
                        r.status = Status::Done;
                        r.bytes = done.bytes;
                        r.bits_per_weight = done.bits_per_weight;
                        r.seconds = done.seconds;
                        r.notes.extend(done.report_note);
                        done.modelfile.apply(r);
                    }
                    Err(e) => r.error = Some(chain(&e)),
                }
                let k = sh.finished.fetch_add(1, Ordering::SeqCst) + 1;
                if !sh.opts.quiet {
                    eprintln!(
                        "[{k}/{}] {} {}: {}",
                        sh.total,
                        r.model,
                        r.ty,
                        match &r.error {
                            Some(e) => format!("FAILED: {e}"),
                            None => format!(
                                "{:.2} MB, {:.3} bpw, {:.2}s",
                                r.bytes.unwrap_or(0) as f64 / 1e6,
                                r.bits_per_weight.unwrap_or(0.0),
                                r.seconds.unwrap_or(0.0)
                            ),
                        }
                    );
                }
            }
        }
    }
}

/// Scores the outputs of model `m` that this run converted, or skipped without
/// a matching evaluation, records the results in the state and puts them in the rows.
fn evaluate_model(sh: &Shared, m: usize, pool: &rayon::ThreadPool) {
    let Some((settings, fp)) = &sh.eval[m] else {
        return;
    };
    let spec = &sh.manifest.models[m];
    let (idx, files): (Vec<usize>, Vec<PathBuf>) = {
        let rows = sh.rows.lock().unwrap_or_else(|p| p.into_inner());
        rows.iter()
            .enumerate()
            .filter(|(_, r)| {
                r.model == spec.name
                    && (r.status == Status::Done
                        || (r.status == Status::Skipped && r.eval.is_none()))
            })
            .map(|(i, r)| (i, sh.root.join(&r.output)))
            .unzip()
    };
    if files.is_empty() {
        return;
    }
    let t = Instant::now();
    // A line per language (evaluations can take long on big models).
    let mut lang_seen = None;
    let mut progress = |p: &crate::eval::Progress| {
        if !sh.opts.quiet && lang_seen != Some(p.lang_index) {
            lang_seen = Some(p.lang_index);
            eprintln!(
                "evaluating {} output(s) of {}: {} ({}/{})",
                files.len(),
                spec.name,
                p.lang,
                p.lang_index + 1,
                p.n_langs
            );
        }
    };
    let r = pool.install(|| {
        catch_unwind(AssertUnwindSafe(|| {
            quality::evaluate(&spec.model, &files, settings, &mut progress)
        }))
        .unwrap_or_else(|p| Err(quality::QualityError::Panic(panic_text(p))))
    });
    let seconds = t.elapsed().as_secs_f64();
    let (results, passes) = match &r {
        Ok(ev) => (ev.results.clone(), ev.passes),
        Err(e) => (vec![Err(chain(e)); files.len()], 0),
    };
    let mut failed = 0;
    let mut rows = sh.rows.lock().unwrap_or_else(|p| p.into_inner());
    for (i, res) in idx.into_iter().zip(results) {
        let row = &mut rows[i];
        let ev = match res {
            Ok(q) => {
                let rec = EvalRecord {
                    settings: fp.clone(),
                    quality: q.clone(),
                };
                let saved = sh
                    .state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .set_eval(&row.output, rec);
                if let Err(e) = saved {
                    row.notes.push(format!(
                        "cannot record the evaluation in the state file: {e}"
                    ));
                }
                RowEval {
                    status: EvalStatus::Done,
                    error: None,
                    quality: Some(q),
                }
            }
            Err(e) => {
                failed += 1;
                RowEval::failed(e)
            }
        };
        report_eval(&sh.root.join(&row.output), &ev, settings, &mut row.notes);
        row.eval = Some(ev);
    }
    drop(rows);
    if !sh.opts.quiet {
        match &r {
            Ok(_) => eprintln!(
                "evaluated {} output(s) of {} in {seconds:.1}s ({passes} pass(es)){}",
                files.len(),
                spec.name,
                if failed > 0 {
                    format!(" ({failed} failed)")
                } else {
                    String::new()
                }
            ),
            Err(e) => eprintln!("evaluation of {} failed: {}", spec.name, chain(e)),
        }
    }
    sh.evaluations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Evaluation {
            model: spec.name.clone(),
            outputs: files.len(),
            passes,
            seconds,
            error: r.err().map(|e| chain(&e)),
        });
}

/// The importance weights of a model, computed as `convert` computes them
/// ([`Calibration::importance`]), on this worker's pool.
fn importance(spec: &ModelSpec, pool: &rayon::ThreadPool) -> Result<Importance, OutputError> {
    Ok(spec
        .calib
        .importance(&spec.model, pool.current_num_threads(), &job::silent)?)
}

/// What a finished conversion adds to its row.
struct Done {
    bytes: Option<u64>,
    bits_per_weight: Option<f64>,
    seconds: Option<f64>,
    modelfile: ModelfileOutcome,
    /// Why the conversion report beside the GGUF was not written.
    report_note: Option<String>,
}

fn convert_one(
    sh: &Shared,
    task: &Task,
    imp: Result<Option<Arc<Importance>>, OutputError>,
) -> Result<Done, OutputError> {
    let imp = imp?;
    let spec = &sh.manifest.models[task.item.model];
    let ts = &spec.types[task.item.ty];
    let target = sh.root.join(&task.key);
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(|source| OutputError::Folder {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let job = job::Job {
        model: spec.model.clone(),
        options: ConvertOptions {
            outtype: ts.outtype,
            output: Some(target.clone()),
            force: true,
            tokenizer_pre: spec.tokenizer_pre.clone(),
            allow_nonfinite: spec.allow_nonfinite,
            allow_requantize: false,
            overrides: ts.overrides.clone(),
            importance: None,
        },
        calibration: spec.calib.clone(),
    };
    let report = job.convert_with(imp.map(|i| (*i).clone()), &job::silent)?;
    // The report and Modelfile go first (a recorded output always has them, even
    // after a kill); if they cannot be written (a full disk) the GGUF, which is
    // complete, is still recorded and the row says what is missing.
    let json = serde_json::to_vec_pretty(&report).expect("the report is plain data");
    let report_path = with_ext(&target, "json");
    let report_note = state::write_atomic(&report_path, &json)
        .err()
        .map(|e| format!("report not written: {}: {e}", report_path.display()));
    let mf = if sh.opts.ollama {
        write_modelfile(&target, &task.key)
    } else {
        ModelfileOutcome::default()
    };
    let unreadable = |source| OutputError::Unreadable {
        path: target.clone(),
        source,
    };
    let hash = state::hash_file(&target).map_err(unreadable)?;
    let (bytes, mtime_ns) =
        state::stat(&target).ok_or_else(|| unreadable(std::io::ErrorKind::NotFound.into()))?;
    let rec = Record {
        bytes,
        mtime_ns,
        blake3: hash,
        input: task.input_fp.clone(),
        options: task.options_fp.clone(),
        outtype: report.outtype.clone(),
        n_params: report.n_params,
        bits_per_weight: report.bits_per_weight,
        seconds: report.seconds,
        eval: None,
    };
    sh.state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .finish(task.key.clone(), rec)
        .map_err(|source| OutputError::NotRecorded {
            path: target.clone(),
            source,
        })?;
    Ok(Done {
        bytes: Some(bytes),
        bits_per_weight: Some(report.bits_per_weight),
        seconds: Some(report.seconds),
        modelfile: mf,
        report_note,
    })
}

/// A written Modelfile (path relative to the root), its template family, and
/// what it lacks or why it could not be written.
#[derive(Default)]
struct ModelfileOutcome {
    path: Option<String>,
    template: Option<String>,
    note: Option<String>,
}

impl ModelfileOutcome {
    fn apply(self, row: &mut Row) {
        row.modelfile = self.path;
        row.template = self.template;
        row.notes
            .extend(self.note.map(|n| format!("Modelfile: {n}")));
    }
}

/// Writes `<output>.Modelfile` beside a GGUF.
fn write_modelfile(target: &Path, key: &str) -> ModelfileOutcome {
    let path = with_ext(target, "Modelfile");
    let mf = match ollama::modelfile(target) {
        Ok(mf) => mf,
        Err(e) => {
            return ModelfileOutcome {
                note: Some(chain(&e)),
                ..Default::default()
            }
        }
    };
    if let Err(e) = state::write_atomic(&path, mf.text.as_bytes()) {
        return ModelfileOutcome {
            note: Some(format!("cannot write {}: {e}", path.display())),
            ..Default::default()
        };
    }
    ModelfileOutcome {
        path: Some(with_ext(Path::new(key), "Modelfile").display().to_string()),
        template: mf.family.map(|f| f.name().to_string()),
        note: mf.note,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(model: usize, ty: usize, needs_importance: bool) -> Task {
        Task {
            item: WorkItem { model, ty },
            row: 0,
            key: format!("{model}-{ty}"),
            input_fp: String::new(),
            options_fp: String::new(),
            needs_importance,
        }
    }

    fn what(j: Option<Option<Job>>) -> String {
        match j {
            None => "end".into(),
            Some(None) => "wait".into(),
            Some(Some(Job::Calibrate(m))) => format!("calibrate {m}"),
            Some(Some(Job::Convert(t))) => format!("convert {}", t.key),
            Some(Some(Job::Evaluate(m))) => format!("evaluate {m}"),
        }
    }

    #[test]
    fn queue_runs_ready_work_first_and_limits_calibrations() {
        let mut q = Queue {
            pending: VecDeque::from([task(0, 0, true), task(0, 1, false), task(1, 0, true)]),
            imp: vec![Imp::Todo, Imp::Todo],
            calib_jobs: 1,
            converting: vec![0, 0],
            eval_wanted: vec![false, false],
        };
        // Work that needs no importance goes first; then model 0's calibration.
        assert_eq!(what(q.next()), "convert 0-1");
        assert_eq!(what(q.next()), "calibrate 0");
        // One calibration at a time: model 1 waits although a worker is free.
        assert_eq!(what(q.next()), "wait");
        q.imp[0] = Imp::Failed("x".into());
        assert_eq!(what(q.next()), "convert 0-0");
        assert_eq!(what(q.next()), "calibrate 1");
        q.imp[1] = Imp::Ready(Arc::new(Importance::default()));
        assert_eq!(what(q.next()), "convert 1-0");
        assert_eq!(what(q.next()), "end");
        // With two calibration slots both models calibrate at once.
        let mut q = Queue {
            pending: VecDeque::from([task(0, 0, true), task(1, 0, true)]),
            imp: vec![Imp::Todo, Imp::Todo],
            calib_jobs: 2,
            converting: vec![0, 0],
            eval_wanted: vec![false, false],
        };
        assert_eq!(what(q.next()), "calibrate 0");
        assert_eq!(what(q.next()), "calibrate 1");
        assert_eq!(what(q.next()), "wait");
    }

    #[test]
    fn a_model_is_evaluated_once_all_its_conversions_are_over() {
        let mut q = Queue {
            pending: VecDeque::from([task(0, 0, false), task(0, 1, true), task(1, 0, false)]),
            imp: vec![Imp::Todo, Imp::Todo],
            calib_jobs: 1,
            converting: vec![0, 0],
            eval_wanted: vec![true, true],
        };
        assert_eq!(what(q.next()), "convert 0-0");
        assert_eq!(what(q.next()), "convert 1-0");
        // Model 1 still converts; model 0 has a pending output: calibrate it.
        assert_eq!(what(q.next()), "calibrate 0");
        assert_eq!(what(q.next()), "wait");
        q.converting[1] -= 1;
        assert_eq!(what(q.next()), "evaluate 1");
        q.imp[0] = Imp::Ready(Arc::new(Importance::default()));
        assert_eq!(what(q.next()), "convert 0-1");
        q.converting[0] -= 1;
        // One of model 0's conversions is still running.
        assert_eq!(what(q.next()), "wait");
        q.converting[0] -= 1;
        assert_eq!(what(q.next()), "evaluate 0");
        assert_eq!(what(q.next()), "end");
        // A model with nothing pending but an evaluation wanted (skipped outputs
        // without a matching evaluation) is evaluated right away.
        let mut q = Queue {
            pending: VecDeque::new(),
            imp: vec![Imp::Todo],
            calib_jobs: 1,
            converting: vec![0],
            eval_wanted: vec![true],
        };
        assert_eq!(what(q.next()), "evaluate 0");
        assert_eq!(what(q.next()), "end");
    }
}
