//! The `laquant` command line: parses arguments, asks the library ([`laquant::job`],
//! [`laquant::calib`], [`laquant::eval`], [`laquant::batch`]) and prints what it says.
//! Exit codes: 0 done, 1 bad input or failed check (message on stderr), 2 usage.

use clap::builder::PossibleValue;
use clap::{Args, Parser, Subcommand, ValueEnum};
use laquant::calib::Matmul;
use laquant::gguf::{GgmlType, GgufFile};
use laquant::job::{CacheDir, CalibSource, Calibration, Job, SensitivitySize};
use laquant::pipeline::{ConvertOptions, OutType};
use laquant::policy::Overrides;
use laquant::progress::Bars;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "laquant",
    version,
    about = "Hugging Face checkpoints to llama.cpp GGUF in one pass"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Flags of every command.
#[derive(Args)]
struct Global {
    /// Threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// No progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
}

impl Global {
    fn threads(&self) -> usize {
        self.threads.unwrap_or(0)
    }
}

/// `--outtype`: `auto` or one of [`OutType::NAMES`] (llama-quantize's
/// `q3_k`, `q4_k`, `q5_k` and `lamix` as aliases), any case.
#[derive(Clone, Copy)]
struct OutTypeName(&'static str);

const OUTTYPE_NAMES: [OutTypeName; OutType::NAMES.len() + 1] = {
    let mut all = [OutTypeName("auto"); OutType::NAMES.len() + 1];
    let mut i = 0;
    while i < OutType::NAMES.len() {
        all[i + 1] = OutTypeName(OutType::NAMES[i]);
        i += 1;
    }
    all
};

impl ValueEnum for OutTypeName {
    fn value_variants<'a>() -> &'a [Self] {
        &OUTTYPE_NAMES
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        let v = PossibleValue::new(self.0);
        Some(match self.0 {
            "q3_k_m" => v.alias("q3_k"),
            "q4_k_m" => v.alias("q4_k"),
            "q5_k_m" => v.alias("q5_k"),
            "la-mix" => v.alias("lamix"),
            _ => v,
        })
    }
}

/// `calibrate --output-format`.
#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum ImatrixFormat {
    /// llama.cpp's current imatrix GGUF.
    Gguf,
    /// llama.cpp's legacy `.dat`.
    Dat,
}

/// A name that is no ggml type's.
#[derive(Debug, thiserror::Error)]
#[error("unknown type {0}")]
struct UnknownType(String);

/// A ggml type name (`q8_0`, `Q4_K`), any case.
fn ggml_type(s: &str) -> Result<GgmlType, UnknownType> {
    GgmlType::from_name(s).ok_or_else(|| UnknownType(s.into()))
}

/// How calibration runs: shared by `convert`, `plan` and `calibrate`.
#[derive(Args)]
struct CalibArgs {
    /// Calibration text: a folder of <lang>.txt files (ISO 639-1 names), or `none`
    /// (convert, plan: no calibration). Default: the embedded corpus (the UDHR in 29
    /// languages). convert and plan calibrate for la-mix and --target-bpw, and for
    /// presets when --calib DIR is given.
    #[arg(long, value_name = "DIR|none")]
    calib: Option<PathBuf>,
    /// Relative language weights for calibration, e.g. en=2,zh=1 (others weigh 1).
    #[arg(long, value_name = "LANG=W,...")]
    lang_weights: Option<String>,
    /// Calibration chunk length in tokens (llama-imatrix -c).
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// At most this many calibration chunks per language. Default: sized by the model
    /// (tokens per language max(512, 4096 x sqrt(50M / multiply-adds per token)), all the
    /// text on small models; see README, convert).
    #[arg(long)]
    chunks: Option<usize>,
    /// Calibration tokens per language (rounded up to whole --ctx chunks); 0 = all the
    /// text. Default: sized by the model, as --chunks.
    #[arg(long, value_name = "N")]
    calib_tokens: Option<usize>,
    /// Calibrate even if the calibration cache (~/.cache/laquant/calibration, or
    /// $XDG_CACHE_HOME/laquant/calibration) holds this calibration, and store nothing.
    #[arg(long)]
    no_cache: bool,
    /// Arithmetic of the calibration forward pass's products: auto (bf16 on a CPU with
    /// AMX-BF16, else f32), f32, or bf16 (operands rounded to bf16, sums in f32, on the
    /// AMX tile unit: several times faster, statistics within about 1e-2 of f32). With
    /// la-mix / --target-bpw also the measured sensitivity's groups: their layers and
    /// output head in bf16 from the change of each product's input against the f32
    /// reference's.
    #[arg(long, value_enum, default_value_t = Matmul::Auto)]
    matmul: Matmul,
}

impl CalibArgs {
    /// The calibration settings, importance from `imatrix` if given.
    fn settings(
        &self,
        imatrix: Option<&Path>,
        sensitivity: SensitivitySize,
    ) -> anyhow::Result<Calibration> {
        let none = self.calib.as_ref().filter(|c| c.as_os_str() == "none");
        let source = match (imatrix, &self.calib) {
            (Some(_), Some(_)) if none.is_none() => {
                anyhow::bail!("--imatrix and --calib DIR both give importance; use one")
            }
            (Some(f), _) => CalibSource::Imatrix(f.to_path_buf()),
            (None, Some(_)) if none.is_some() => CalibSource::None,
            (None, Some(d)) => CalibSource::Dir(d.clone()),
            (None, None) => CalibSource::Default,
        };
        Ok(Calibration {
            source,
            lang_weights: match &self.lang_weights {
                Some(s) => laquant::calib::parse_lang_weights(s)?,
                None => Vec::new(),
            },
            ctx: self.ctx,
            chunks: self.chunks,
            tokens: self.calib_tokens,
            cache: if self.no_cache {
                CacheDir::Off
            } else {
                CacheDir::User
            },
            matmul: self.matmul,
            sensitivity,
        })
    }
}

/// What to write: shared by `convert` and `plan`.
#[derive(Args)]
struct TypeArgs {
    /// Model folder or hub id `org/name`; for convert also an F32/F16/BF16 GGUF file
    /// (requantized as llama-quantize does).
    model: String,
    /// Output type: f32, f16, bf16, q8_0 (as llama.cpp's converter); a llama-quantize
    /// preset; or la-mix (calibrated). Default (auto): la-mix, f16 with --calib none.
    #[arg(
        long,
        value_enum,
        ignore_case = true,
        default_value = "auto",
        hide_possible_values = false
    )]
    outtype: OutTypeName,
    /// Importance matrix (llama.cpp's imatrix GGUF or legacy .dat) instead of calibrating.
    #[arg(long, value_name = "FILE")]
    imatrix: Option<PathBuf>,
    #[command(flatten)]
    calib: CalibArgs,
    /// la-mix: extra bits to spend above the base types, as the share of the weights that
    /// they would put in F16; spent on upgrades (Q5_K, Q6_K, Q8_0, F16) by estimated KLD
    /// removed per extra bit.
    #[arg(long, default_value_t = OutType::DEFAULT_F16_BUDGET)]
    f16_budget: f64,
    /// Choose a type per tensor for at most this many bits per weight (least calibrated error).
    #[arg(long)]
    target_bpw: Option<f64>,
    /// la-mix / --target-bpw: tokens per language of the sample on which each tensor's
    /// sensitivity (KLD added when it alone is quantized) is measured; 0 = the raw error proxy.
    /// Default: at most 32, sized (with the grouping) to cost at most the calibration's compute;
    /// given, exactly this many.
    #[arg(long)]
    sens_tokens: Option<usize>,
    /// la-mix / --target-bpw: at most this many sensitivity passes; beyond it, tensors of one
    /// role in a band of adjacent layers are measured together. Default: sized by cost (as
    /// --sens-tokens); given, 32 tokens per language unless --sens-tokens says otherwise.
    #[arg(long)]
    sens_groups: Option<usize>,
    /// la-mix / --target-bpw: the sized sensitivity measurement costs at most this multiple of
    /// the calibration's multiply-adds (default 0.5, see docs/design.md); ignored when
    /// --sens-tokens or --sens-groups size it explicitly.
    #[arg(long)]
    sens_budget: Option<f64>,
    /// Every quantizable weight in the --outtype's base type (llama-quantize --pure).
    #[arg(long)]
    pure: bool,
    /// Per-tensor type override REGEX=TYPE (repeatable; first match wins).
    #[arg(long = "tensor-type", value_name = "REGEX=TYPE")]
    tensor_type: Vec<String>,
    /// Type of output.weight (llama-quantize's --output-tensor-type).
    #[arg(long, visible_alias = "output-tensor-type", value_parser = ggml_type)]
    output_type: Option<GgmlType>,
    /// Type of token_embd.weight (llama-quantize's --token-embedding-type).
    #[arg(long, visible_alias = "token-embedding-type", value_parser = ggml_type)]
    embedding_type: Option<GgmlType>,
    /// Force llama.cpp's pre-tokenizer name (tokenizer.ggml.pre) when laquant cannot identify it.
    #[arg(long)]
    tokenizer_pre: Option<String>,
}

impl TypeArgs {
    /// The job these flags describe (no output chosen yet).
    fn job(&self) -> anyhow::Result<Job> {
        let calibration = self.calib.settings(
            self.imatrix.as_deref(),
            SensitivitySize {
                tokens: self.sens_tokens,
                groups: self.sens_groups,
                budget: self.sens_budget,
            },
        )?;
        let mut outtype = match self.outtype.0 {
            "auto" => calibration.default_outtype(self.pure),
            name => OutType::parse(name, self.pure)
                .ok_or_else(|| anyhow::anyhow!("--outtype {name}: not a known type"))?,
        };
        if let OutType::LaMix { .. } = outtype {
            if !(0.0..=1.0).contains(&self.f16_budget) {
                anyhow::bail!("--f16-budget {}: must be between 0 and 1", self.f16_budget);
            }
            outtype = OutType::LaMix {
                f16_budget: self.f16_budget,
            };
        }
        if let Some(x) = self.target_bpw {
            if !(1.5..=32.0).contains(&x) {
                anyhow::bail!("--target-bpw {x}: must be between 1.5 and 32");
            }
            if self.outtype.0 != "auto" {
                anyhow::bail!(
                    "--outtype {} and --target-bpw {x} both choose the types; give one \
                     (--target-bpw chooses every tensor's type itself)",
                    self.outtype.0
                );
            }
            outtype = OutType::TargetBpw(x);
        }
        let overrides = Overrides {
            tensor_types: self
                .tensor_type
                .iter()
                .map(|a| Overrides::parse_tensor_type(a).map_err(anyhow::Error::from))
                .collect::<anyhow::Result<_>>()?,
            output_type: self.output_type,
            embedding_type: self.embedding_type,
            pure: self.pure,
        };
        let job = Job {
            model: self.model.clone(),
            options: ConvertOptions {
                outtype,
                tokenizer_pre: self.tokenizer_pre.clone(),
                overrides,
                ..ConvertOptions::default()
            },
            calibration,
        };
        job.check()?;
        Ok(job)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Convert a checkpoint (folder or hub id in the local HF cache) to GGUF.
    Convert(ConvertArgs),
    /// Language-balanced importance statistics from a CPU forward pass, written as
    /// llama.cpp's imatrix GGUF (usable with llama-quantize --imatrix).
    Calibrate(CalibrateArgs),
    /// Show the per-tensor plan (types, sizes, reasons) without writing anything.
    Plan(PlanArgs),
    /// Per-language perplexity, KL divergence and top-1 agreement of quantized files
    /// against the model they were made from (our forward pass on its HF weights),
    /// scored as llama-perplexity --kl-divergence does.
    Eval(EvalArgs),
    /// Convert a model zoo listed in a MANIFEST.toml: one folder per model,
    /// calibration once per model, resumable, shardable (--shard I/N), with a summary.
    Batch(BatchArgs),
    /// Show a GGUF file's metadata and tensors.
    Inspect(InspectArgs),
}

#[derive(Args)]
struct ConvertArgs {
    #[command(flatten)]
    t: TypeArgs,
    /// Output file (default: <model-name>-<TYPE>.gguf in the current folder);
    /// --outfile as convert_hf_to_gguf.py names it.
    #[arg(short, long, visible_alias = "outfile")]
    output: Option<PathBuf>,
    /// Overwrite an existing output file.
    #[arg(long)]
    force: bool,
    /// Convert even if weights hold NaN or Inf.
    #[arg(long)]
    allow_nonfinite: bool,
    /// GGUF input: quantize tensors that are already quantized again (llama-quantize's
    /// --allow-requantize); refused by default. la-mix and --target-bpw keep MXFP4
    /// experts (a GGUF's or a checkpoint's) as stored unless given.
    #[arg(long)]
    allow_requantize: bool,
    /// Write a JSON report of the conversion here.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(Args)]
struct CalibrateArgs {
    /// Model folder or hub id `org/name` (optional with --merge: then the merged
    /// statistics are checked against its weights).
    #[arg(required_unless_present = "merge")]
    model: Option<String>,
    /// Output imatrix file.
    #[arg(short, long, default_value = "imatrix.gguf")]
    output: PathBuf,
    /// Instead of calibrating, merge per-language imatrix GGUFs (llama-imatrix's, made
    /// on any backend, or ours) into the language-balanced importance:
    /// en=imatrix-en.gguf,zh=imatrix-zh.gguf,... or a folder of <lang>.gguf files.
    #[arg(
        long,
        value_name = "LANG=FILE,...|DIR",
        conflicts_with_all = ["calib", "chunks", "process_output"]
    )]
    merge: Option<String>,
    #[command(flatten)]
    calib: CalibArgs,
    /// Also collect output.weight's input (llama-imatrix --process-output).
    #[arg(long)]
    process_output: bool,
    /// The imatrix file's format.
    #[arg(long, value_enum, default_value_t = ImatrixFormat::Gguf)]
    output_format: ImatrixFormat,
    /// Overwrite an existing output file.
    #[arg(long)]
    force: bool,
    /// Write per-language statistics as JSON here, with the share of each
    /// language's importance-weighted Q4_K error per layer and, for a mixture of
    /// experts, each language's routing over the experts (also printed).
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(Args)]
struct PlanArgs {
    #[command(flatten)]
    t: TypeArgs,
    /// Plan as `convert --allow-requantize` would: la-mix and --target-bpw
    /// choose types for MXFP4 experts too instead of keeping them as stored.
    /// (A GGUF input's presets are planned as requantized either way: planning
    /// reads no tensor data.)
    #[arg(long)]
    allow_requantize: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// Model folder or hub id `org/name`, or a model GGUF (its checkpoint
    /// rebuilt from it, as la-mix from a GGUF input rebuilds it).
    model: String,
    /// GGUF files made from the model (several give one comparison).
    #[arg(required = true, value_name = "FILE.gguf")]
    files: Vec<PathBuf>,
    /// Folder of <lang>.txt files (ISO 639-1 names), e.g. ../shared/corpus/eval.
    /// Default: the held-out part of the embedded corpus, which calibration does not read.
    #[arg(long, value_name = "DIR")]
    eval: Option<PathBuf>,
    /// Tokens per chunk (llama-perplexity -c); the second half of each is scored.
    /// Default: 512 with --eval, 128 on the short embedded held-out text.
    /// Embedding models: at most this many tokens per window (one window per
    /// line; default: the model's positions).
    #[arg(long)]
    ctx: Option<usize>,
    /// At most this many chunks per language (llama-perplexity --chunks);
    /// embedding models: windows (lines).
    #[arg(long)]
    chunks: Option<usize>,
    /// Print Markdown tables instead of aligned text.
    #[arg(long)]
    md: bool,
    /// Write the results as JSON to this file (`-`: stdout, tables then go to stderr).
    #[arg(long, value_name = "OUT|-")]
    json: Option<PathBuf>,
    /// Draw mean KLD (embedding models: 1 - mean cosine) per language and
    /// file, grouped by script, as SVG.
    #[arg(long, value_name = "OUT.svg")]
    chart: Option<PathBuf>,
    /// Overwrite existing --json and --chart files.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct BatchArgs {
    /// The manifest (see README, "Batch conversion").
    manifest: PathBuf,
    /// Output root (default: the manifest's `output`, else `out` beside it).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Conversions at once; they share the --threads budget.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Calibrations at once (each holds its model in f32 memory).
    #[arg(long, default_value_t = 1)]
    calib_jobs: usize,
    /// Process only slice I of N of the work items (0-based), e.g. 0/4.
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// Write an ollama Modelfile beside each GGUF.
    #[arg(long)]
    ollama: bool,
    /// Rehash recorded outputs before skipping them (default: size and time).
    #[arg(long)]
    verify: bool,
    /// Only list what would be converted, skipped or fail; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Evaluate every output against its model as `laquant eval` does (per-language
    /// PPL and KL divergence), once per model after its outputs are finished;
    /// results are kept for reruns. Also on when the manifest has an [eval] section.
    #[arg(long)]
    eval: bool,
    /// Evaluation text: a folder of <lang>.txt files (default: the held-out part of
    /// the embedded corpus, `embedded`). Implies --eval.
    #[arg(long, value_name = "DIR")]
    eval_text: Option<PathBuf>,
    /// Evaluate only these languages, e.g. en,zh,ru. Implies --eval.
    #[arg(long, value_name = "LANG,...", value_delimiter = ',')]
    eval_languages: Option<Vec<String>>,
    /// Evaluation chunk length in tokens (default: 512 with a folder, 128 on the
    /// embedded text). Implies --eval.
    #[arg(long, value_name = "N")]
    eval_ctx: Option<usize>,
    /// At most this many evaluation chunks per language. Implies --eval.
    #[arg(long, value_name = "N")]
    eval_chunks: Option<usize>,
    /// Memory for the f32 copies of a model and its outputs being scored (default:
    /// half the available memory); more outputs are scored in several passes. Implies --eval.
    #[arg(long, value_name = "GB")]
    eval_memory_gb: Option<f64>,
}

#[derive(Args)]
struct InspectArgs {
    file: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// Standard output was closed early (`laquant inspect --json | head -1`): the
/// run ends quietly, as `cat` does, instead of panicking in `println!`.
#[derive(Debug, thiserror::Error)]
#[error("standard output closed")]
struct StdoutClosed;

fn write_stdout(args: std::fmt::Arguments) -> anyhow::Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match o.write_fmt(args).and_then(|()| o.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        r => Ok(r?),
    }
}

/// `print!` that returns [`StdoutClosed`] from the enclosing function on a closed stdout.
macro_rules! out {
    ($($t:tt)*) => { write_stdout(format_args!($($t)*))? };
}

/// `println!`, as [`out!`].
macro_rules! outln {
    ($($t:tt)*) => { write_stdout(format_args!("{}\n", format_args!($($t)*)))? };
}

/// Writes a JSON document to a file named by a flag.
fn write_json(path: &Path, v: &serde_json::Value, force: bool, what: &str) -> anyhow::Result<()> {
    laquant::outputs::write(path, &serde_json::to_vec_pretty(v)?, force)
        .map_err(|e| anyhow::anyhow!("{}: cannot write {what}: {e}", path.display()))
}

fn convert(a: ConvertArgs, g: &Global) -> anyhow::Result<()> {
    if laquant::gguf_input::is_gguf(&a.t.model) {
        return convert_gguf(a, g);
    }
    let mut job = a.t.job()?;
    job.options.output = a.output;
    job.options.force = a.force;
    job.options.allow_nonfinite = a.allow_nonfinite;
    job.options.allow_requantize = a.allow_requantize;
    // Every output is checked before any work (calibration takes minutes).
    let extra: Vec<(&str, &Path)> = a.report.iter().map(|r| ("--report", r.as_path())).collect();
    job.options.output = Some(job.check_outputs(&extra)?);
    let bars = Bars::new(g.quiet);
    let r = job.run(g.threads(), &|p| bars.show(p))?;
    bars.finish();
    if let Some(p) = &a.report {
        write_json(p, &serde_json::to_value(&r)?, a.force, "report")?;
    }
    print_converted(&r);
    Ok(())
}

/// What `convert` prints when done (--quiet hides progress, not results).
fn print_converted(r: &laquant::pipeline::ConvertReport) {
    let tm = &r.timings;
    let reused = r.calibration.as_ref().and_then(|c| c.cache.as_ref());
    let reused = match reused {
        Some(laquant::calib::cache::Outcome::Reused { .. }) => " reused from the cache",
        _ => "",
    };
    let phases = match tm.calibration {
        Some(c) => format!(
            " (calibration {c:.1}s{reused}, plan {:.1}s, write {:.1}s)",
            tm.plan, tm.write
        ),
        None => String::new(),
    };
    eprintln!(
        "wrote {} ({} tensors, {:.1} MB, {:.2} bits per weight) in {:.1}s{phases}",
        r.output.display(),
        r.tensors.len(),
        r.bytes as f64 / 1e6,
        r.bits_per_weight,
        tm.total,
    );
    let types: Vec<String> = r
        .sizes
        .iter()
        .map(|s| format!("{} x{} ({:.1} MB)", s.ty, s.tensors, s.bytes as f64 / 1e6))
        .collect();
    eprintln!("types: {}", types.join(", "));
    if let Some(w) = laquant::pipeline::damage_warning(&r.tensors) {
        eprintln!("warning: {w}");
    }
}

/// The options of a GGUF input under a preset (`convert` and `plan FILE.gguf`),
/// and the importance of `--imatrix`, whose `quantize.imatrix.file` is the path
/// as given (as llama-quantize writes it).
fn gguf_options(t: &TypeArgs) -> anyhow::Result<ConvertOptions> {
    let job = t.job()?;
    let mut opts = job.options;
    if let CalibSource::Dir(_) = job.calibration.source {
        anyhow::bail!(
            "--calib DIR with a preset on a GGUF input: give --imatrix FILE (llama-imatrix's, \
             or `laquant calibrate`'s), or --outtype la-mix / --target-bpw, which calibrate \
             on DIR"
        );
    }
    if let Some(f) = &t.imatrix {
        let m = laquant::calib::Imatrix::read(f)?;
        opts.importance = Some(laquant::pipeline::Importance::from_imatrix(
            &m,
            Some(f.display().to_string()),
        ));
    }
    Ok(opts)
}

/// `convert FILE.gguf`: llama-quantize's presets on a GGUF input, or la-mix and
/// `--target-bpw` calibrated on it ([`laquant::gguf_input`]).
fn convert_gguf(a: ConvertArgs, g: &Global) -> anyhow::Result<()> {
    use laquant::gguf_input;
    let input = Path::new(&a.t.model);
    let mut job = a.t.job()?;
    let outtype = job.options.outtype;
    // The type is checked before the outputs.
    if !outtype.is_calibrated() {
        gguf_input::preset(input, outtype)?;
    }
    let target = a
        .output
        .clone()
        .unwrap_or_else(|| gguf_input::default_output(input, outtype));
    let mut inputs = vec![input.to_path_buf()];
    inputs.extend(job.calibration.inputs());
    let mut outs = vec![("-o", target.as_path())];
    outs.extend(a.report.as_deref().map(|r| ("--report", r)));
    laquant::outputs::check(&outs, &inputs, a.force)?;
    let bars = Bars::new(g.quiet);
    let r = if outtype.is_calibrated() {
        job.options.output = Some(target);
        job.options.force = a.force;
        job.options.allow_nonfinite = a.allow_nonfinite;
        job.options.allow_requantize = a.allow_requantize;
        gguf_input::convert_calibrated(input, &job, g.threads(), &|p| bars.show(p))?
    } else {
        let mut opts = gguf_options(&a.t)?;
        opts.output = Some(target);
        opts.force = a.force;
        opts.allow_nonfinite = a.allow_nonfinite;
        gguf_input::convert(input, &opts, a.allow_requantize, &|p| bars.show(p))?
    };
    bars.finish();
    if let Some(p) = &a.report {
        write_json(p, &serde_json::to_value(&r)?, a.force, "report")?;
    }
    print_converted(&r);
    Ok(())
}

fn plan(a: PlanArgs, g: &Global) -> anyhow::Result<()> {
    let mut job = a.t.job()?;
    job.options.allow_requantize = a.allow_requantize;
    let (model, plan) = if laquant::gguf_input::is_gguf(&a.t.model) {
        let f = GgufFile::open(&a.t.model)?;
        if job.options.outtype.is_calibrated() {
            let bars = Bars::new(g.quiet);
            let (plan, _, _) =
                laquant::gguf_input::plan_calibrated(&f, &job, g.threads(), &|p| bars.show(p))?;
            bars.finish();
            (f.path.clone(), plan)
        } else {
            let opts = gguf_options(&a.t)?;
            // Planning reads no tensor data: a quantized input shows what requantizing would do.
            (f.path.clone(), laquant::gguf_input::plan(&f, &opts, true)?)
        }
    } else {
        let bars = Bars::new(g.quiet);
        let (ck, plan) = job.plan(g.threads(), &|p| bars.show(p))?;
        bars.finish();
        (ck.dir, plan)
    };
    let params: u64 = plan.iter().map(|p| p.n_elements()).sum();
    let bytes: u64 = plan.iter().map(|p| p.bytes).sum();
    let bpw = if params > 0 {
        bytes as f64 * 8.0 / params as f64
    } else {
        0.0
    };
    let estimated_kld = laquant::pipeline::estimated_kld(&plan);
    let estimated_drift = laquant::pipeline::estimated_drift(&plan);
    let warn = || {
        if let Some(w) = laquant::pipeline::damage_warning(&plan) {
            eprintln!("warning: {w}");
        }
    };
    if a.json {
        let v = serde_json::json!({
            "model": model, "outtype": job.options.outtype.label(), "tensors": plan,
            "n_params": params, "bytes": bytes, "bits_per_weight": bpw,
            "estimated_kld": estimated_kld, "estimated_embedding_drift": estimated_drift,
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
        warn();
        return Ok(());
    }
    let (t, d, ty, b, s) = ("tensor", "dims", "type", "bytes", "score");
    outln!("{t:<32} {d:<16} {ty:>7} {b:>11} {s:>10}  reason");
    for p in &plan {
        // The calibrated error under the chosen type (la-mix, --target-bpw).
        let score = p
            .score
            .as_ref()
            .map(|s| format!("{:.3e}", s.error))
            .unwrap_or_else(|| "-".into());
        let dims = format!("{:?}", p.dims);
        outln!(
            "{:<32} {dims:<16} {:>7} {:>11} {score:>10}  {}",
            p.name,
            p.ty.name(),
            p.bytes,
            p.reason
        );
        if let Some(s) = p.score.as_ref().filter(|s| !s.worst_rows.is_empty()) {
            let rows: Vec<String> = s
                .worst_rows
                .iter()
                .map(|(r, e)| format!("{r}:{e:.2e}"))
                .collect();
            outln!("{:<32} worst rows (row:error) {}", "", rows.join(" "));
        }
    }
    let kld = match (estimated_kld, estimated_drift) {
        (Some(k), _) => format!(", estimated KLD {k:.4} (measured sensitivity)"),
        (_, Some(d)) => {
            format!(", estimated embedding drift {d:.2e} (measured sensitivity: 1 - cosine)")
        }
        _ => String::new(),
    };
    outln!(
        "\n{} tensors, {params} parameters, {:.2} MB, {bpw:.3} bits per weight{kld}",
        plan.len(),
        bytes as f64 / 1e6
    );
    warn();
    Ok(())
}

fn calibrate(a: CalibrateArgs, g: &Global) -> anyhow::Result<()> {
    use laquant::calib::{self, report};
    if let Some(m) = &a.merge {
        return calibrate_merge(&a, m, g);
    }
    let cal = a.calib.settings(None, SensitivitySize::default())?;
    if cal.source == CalibSource::None {
        anyhow::bail!("--calib none turns calibration off; `calibrate` needs a corpus");
    }
    let model = a
        .model
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("calibrate needs MODEL, or --merge"))?;
    let ckpt = laquant::hf::Checkpoint::open(model)?;
    let mut inputs = laquant::outputs::files_in(&ckpt.dir);
    inputs.extend(cal.inputs());
    let mut outs = vec![("-o", a.output.as_path())];
    outs.extend(a.report.as_deref().map(|r| ("--report", r)));
    laquant::outputs::check(&outs, &inputs, a.force)?;
    let bars = Bars::new(g.quiet);
    let run = cal.calibrate(&ckpt, g.threads(), a.process_output, &|p| bars.show(p))?;
    bars.finish();
    let imp = run.importance;
    let m = imp.to_imatrix();
    match a.output_format {
        ImatrixFormat::Dat => calib::imatrix::write_atomic(&a.output, &m.to_dat_bytes(), a.force)?,
        ImatrixFormat::Gguf => m.write_gguf(&a.output, a.force)?,
    }
    if let Some(p) = &a.report {
        let mut json = report::summary_json(&imp);
        json["estimate"] = serde_json::to_value(&run.estimate)?;
        json["cache"] = serde_json::to_value(&run.cache)?;
        let layers = report::layer_report(&ckpt, &imp)?;
        json["layer_error"] = layers.to_json();
        if !g.quiet {
            eprint!("{}", layers.to_text());
        }
        // A mixture's routing per language, from the per-expert counts.
        let top_k = calib::ForwardConfig::from_hf(&ckpt.config)?
            .moe
            .map_or(0, |m| m.n_used);
        if let Some(r) = report::Routing::new(&imp, top_k) {
            json["routing"] = r.to_json();
            if !g.quiet {
                eprint!("{}", r.to_text());
            }
        }
        write_json(p, &json, a.force, "report")?;
    }
    if !g.quiet {
        eprint!("{}", report::summary_text(&imp));
    }
    // --quiet hides progress, not results.
    eprintln!("wrote {} ({} weights)", a.output.display(), m.entries.len());
    Ok(())
}

/// `calibrate --merge`: per-language imatrix files balanced into one
/// ([`laquant::calib::merge`]), checked against MODEL's weights when given.
fn calibrate_merge(a: &CalibrateArgs, merge: &str, g: &Global) -> anyhow::Result<()> {
    use laquant::calib::{self, merge as m};
    use laquant::pipeline;
    let files = m::parse_merge_arg(merge)?;
    let weights = match &a.calib.lang_weights {
        Some(s) => calib::parse_lang_weights(s)?,
        None => Vec::new(),
    };
    let ck = a
        .model
        .as_deref()
        .map(laquant::hf::Checkpoint::open)
        .transpose()?;
    let mut inputs: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
    if let Some(ck) = &ck {
        inputs.extend(laquant::outputs::files_in(&ck.dir));
    }
    let mut outs = vec![("-o", a.output.as_path())];
    outs.extend(a.report.as_deref().map(|r| ("--report", r)));
    laquant::outputs::check(&outs, &inputs, a.force)?;
    let merged = m::merge_files(&files, &weights)?;
    if let Some(ck) = &ck {
        // The names and widths of the model's matrices, as convert would check them.
        let plan = pipeline::plan(
            ck,
            &pipeline::ConvertOptions::default(),
            &laquant::job::silent,
        )?;
        let langs: Vec<&str> = files.iter().map(|f| f.lang.as_str()).collect();
        let from = format!("merged from {}", langs.join(","));
        pipeline::Importance::from_imatrix(&merged.imatrix, Some(from)).check_against(&plan)?;
    }
    match a.output_format {
        ImatrixFormat::Dat => {
            calib::imatrix::write_atomic(&a.output, &merged.imatrix.to_dat_bytes(), a.force)?
        }
        ImatrixFormat::Gguf => merged.imatrix.write_gguf(&a.output, a.force)?,
    }
    if let Some(p) = &a.report {
        write_json(p, &m::summary_json(&merged), a.force, "report")?;
    }
    if !g.quiet {
        eprint!("{}", m::summary_text(&merged));
    }
    // --quiet hides progress, not results.
    eprintln!(
        "wrote {} ({} weights)",
        a.output.display(),
        merged.imatrix.entries.len()
    );
    Ok(())
}

fn eval(a: EvalArgs, g: &Global) -> anyhow::Result<()> {
    use laquant::eval::{self, EvalOptions, EvalText};
    let opts = EvalOptions {
        text: a.eval.map_or(EvalText::EmbeddedHoldout, EvalText::Dir),
        ctx: a.ctx,
        chunks: a.chunks,
        threads: g.threads(),
    };
    if opts.text == EvalText::EmbeddedHoldout && !g.quiet {
        eprintln!(
            "laquant: no --eval DIR: scoring the {}",
            opts.text.describe()
        );
    }
    // A model GGUF: the checkpoint rebuilt from it, as la-mix's from a GGUF.
    let (rebuilt, opened, mut inputs);
    let from_gguf = laquant::gguf_input::is_gguf(&a.model);
    let ck = if from_gguf {
        let f = GgufFile::open(&a.model)?;
        inputs = vec![f.path.clone()];
        rebuilt = laquant::gguf_input::rebuild::Rebuilt::new(&f)?;
        rebuilt.checkpoint()
    } else {
        opened = laquant::hf::Checkpoint::open(&a.model)?;
        inputs = laquant::outputs::files_in(&opened.dir);
        &opened
    };
    let json_stdout = a.json.as_ref().is_some_and(|j| j.as_os_str() == "-");
    let json_file = a.json.as_deref().filter(|_| !json_stdout);
    inputs.extend(a.files.iter().cloned());
    if let EvalText::Dir(d) = &opts.text {
        inputs.extend(laquant::outputs::files_in(d));
    }
    let mut outs: Vec<(&str, &Path)> = json_file.map(|p| ("--json", p)).into_iter().collect();
    outs.extend(a.chart.as_deref().map(|p| ("--chart", p)));
    laquant::outputs::check(&outs, &inputs, a.force)?;
    let bar = eval::report::progress_bar(g.quiet);
    let mut r = eval::run_any(ck, &a.files, &opts, &mut |p| {
        eval::report::show_progress(&bar, p)
    })?;
    if from_gguf {
        r.set_model(a.model.clone());
    }
    bar.finish_and_clear();
    let tables = r.tables(a.md);
    if json_stdout {
        outln!("{}", serde_json::to_string_pretty(&r.to_json())?);
        if !g.quiet {
            eprint!("{tables}");
        }
    } else {
        out!("{tables}");
    }
    if let Some(p) = json_file {
        write_json(p, &r.to_json(), a.force, "JSON")?;
    }
    if let Some(p) = &a.chart {
        eval::chart::write_svg_text(&r.render_svg()?, p, a.force)?;
    }
    if !g.quiet {
        let (n, secs) = r.done();
        eprintln!("evaluated {n} file(s) in {secs:.1}s");
    }
    Ok(())
}

fn batch(a: BatchArgs, g: &Global) -> anyhow::Result<()> {
    use laquant::batch::{self, manifest, BatchError, BatchOptions};
    let opts = BatchOptions {
        shard: a.shard.as_deref().map(manifest::parse_shard).transpose()?,
        eval_memory: a
            .eval_memory_gb
            .map(manifest::parse_memory_gb)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--eval-memory-gb {e}"))?,
        manifest: a.manifest,
        output: a.output,
        jobs: a.jobs,
        calib_jobs: a.calib_jobs,
        threads: g.threads(),
        ollama: a.ollama,
        verify: a.verify,
        quiet: g.quiet,
        dry_run: a.dry_run,
        eval: a.eval,
        eval_text: a.eval_text,
        eval_languages: a.eval_languages,
        eval_ctx: a.eval_ctx,
        eval_chunks: a.eval_chunks,
    };
    let s = match batch::run(&opts) {
        // The outputs are done and recorded: show them, then say what failed.
        Err(e @ BatchError::SummaryNotWritten { .. }) => {
            if let BatchError::SummaryNotWritten { summary, .. } = &e {
                out!("{}", summary.to_text());
            }
            return Err(e.into());
        }
        r => r?,
    };
    out!("{}", s.to_text());
    if s.failed > 0 {
        anyhow::bail!(
            "{} of {} outputs failed (see the summary in {})",
            s.failed,
            s.rows.len(),
            s.output
        );
    }
    if s.eval_failed > 0 {
        anyhow::bail!(
            "the evaluation of {} of {} outputs failed; their GGUFs are kept (see the summary in {})",
            s.eval_failed,
            s.rows.len(),
            s.output
        );
    }
    Ok(())
}

fn inspect(a: InspectArgs) -> anyhow::Result<()> {
    let f = GgufFile::open(&a.file)?;
    if a.json {
        let v = laquant::inspect::to_json(&f);
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        out!("{}", laquant::inspect::to_text(&f));
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // This thread is worker 0 of the global pool: the phases run their
    // parallel loops from it (calib::in_pool), so it works alongside the
    // others instead of sleeping while they do, and its large buffers come
    // from one malloc arena, which each phase reuses after the last. That
    // arena is a thread's, not the main one: glibc gives the main arena's
    // freed top back to the system at once (and faults it in again at the
    // next product: 10x the page faults, calibration 20% slower), a thread's
    // arena keeps it for reuse.
    rayon::ThreadPoolBuilder::new()
        .num_threads(cli.global.threads())
        .use_current_thread()
        .build_global()?;
    let g = &cli.global;
    match cli.cmd {
        Cmd::Convert(a) => convert(a, g),
        Cmd::Calibrate(a) => calibrate(a, g),
        Cmd::Plan(a) => plan(a, g),
        Cmd::Eval(a) => eval(a, g),
        Cmd::Batch(a) => batch(a, g),
        Cmd::Inspect(a) => inspect(a),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Ctrl-C, SIGTERM, SIGHUP: remove the temporary output file before exiting.
    let outcome = match cli.cmd {
        Cmd::Batch(_) => laquant::batch::INTERRUPTED_OUTCOME,
        _ => laquant::atomic::NO_OUTPUT_WRITTEN,
    };
    if let Err(e) = laquant::atomic::remove_temps_on_signal_saying(outcome) {
        eprintln!("laquant: warning: {:#}", anyhow::Error::from(e));
    }
    // The work runs on a thread of its own (see `run`), which `main` waits for.
    let work = std::thread::Builder::new()
        .name("laquant".into())
        .stack_size(8 << 20) // the main thread's usual 8 MB
        .spawn(move || run(cli))
        .map_err(anyhow::Error::from)
        .and_then(|t| {
            t.join().unwrap_or_else(|_| {
                Err(anyhow::anyhow!("internal error: the work thread panicked"))
            })
        });
    match work {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<StdoutClosed>() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("laquant: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
