//! The `laquant` command line: parses arguments, calls the library, prints.
//! Exit codes: 0 done, 1 bad input or failed check (message on stderr), 2 usage.

use clap::{Args, Parser, Subcommand};
use laquant::gguf::{GgmlType, GgufFile};
use laquant::hf::Checkpoint;
use laquant::pipeline::{self, ConvertOptions, OutType};
use laquant::policy::Overrides;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "laquant",
    version,
    about = "Hugging Face checkpoints to llama.cpp GGUF in one pass"
)]
struct Cli {
    /// Threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// No progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

/// What to write: shared by `convert` and `plan`.
#[derive(Args)]
struct TypeArgs {
    /// Model folder or hub id `org/name`; for convert also an F32/F16/BF16 GGUF file
    /// (requantized as llama-quantize does).
    model: String,
    /// Output type: f32, f16, bf16, q8_0 (as llama.cpp's converter); a llama-quantize
    /// preset: q4_0 q4_1 q5_0 q5_1 q2_k q3_k_s q3_k_m q3_k_l q4_k_s q4_k_m q5_k_s q5_k_m
    /// q6_k iq4_nl iq4_xs q2_0 tq2_0 tq1_0 q1_0; or la-mix (calibrated). Default: la-mix when calibration
    /// runs (the default), f16 with --calib none.
    #[arg(long, default_value = "auto")]
    outtype: String,
    /// Importance matrix (llama.cpp's imatrix GGUF or legacy .dat) instead of calibrating.
    #[arg(long, value_name = "FILE")]
    imatrix: Option<PathBuf>,
    /// Calibration text: a folder of <lang>.txt files (ISO 639-1 names), or `none`.
    /// Default: the embedded corpus (the UDHR in 29 languages). Calibration runs for
    /// la-mix and --target-bpw, and for presets when --calib DIR is given.
    #[arg(long, value_name = "DIR|none")]
    calib: Option<PathBuf>,
    /// Relative language weights for calibration, e.g. en=2,zh=1 (others weigh 1).
    #[arg(long, value_name = "LANG=W,...")]
    lang_weights: Option<String>,
    /// Calibration chunk length in tokens.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// At most this many calibration chunks per language.
    #[arg(long)]
    chunks: Option<usize>,
    /// Arithmetic of the calibration forward pass's products: auto (bf16 on a CPU with
    /// AMX-BF16, else f32), f32, or bf16 (operands rounded to bf16, sums in f32, on the
    /// AMX tile unit: several times faster, statistics within about 1e-2 of f32). With
    /// la-mix / --target-bpw also the measured sensitivity's groups: their layers and
    /// output head in bf16 from the change of each product's input against the f32
    /// reference's.
    #[arg(long, default_value = "auto", value_name = "auto|f32|bf16")]
    matmul: String,
    /// la-mix: extra bits to spend above the base types, as the share of the weights that
    /// they would put in F16; spent on upgrades (Q5_K, Q6_K, Q8_0, F16) by estimated KLD
    /// removed per extra bit.
    #[arg(long, default_value_t = 0.05)]
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
    #[arg(long, visible_alias = "output-tensor-type")]
    output_type: Option<String>,
    /// Type of token_embd.weight (llama-quantize's --token-embedding-type).
    #[arg(long, visible_alias = "token-embedding-type")]
    embedding_type: Option<String>,
    /// Force llama.cpp's pre-tokenizer name (tokenizer.ggml.pre) when laquant cannot identify it.
    #[arg(long)]
    tokenizer_pre: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Convert a checkpoint (folder or hub id in the local HF cache) to GGUF.
    Convert {
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
        /// --allow-requantize); refused by default.
        #[arg(long)]
        allow_requantize: bool,
        /// Write a JSON report of the conversion here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Language-balanced importance statistics from a CPU forward pass, written as
    /// llama.cpp's imatrix GGUF (usable with llama-quantize --imatrix).
    Calibrate {
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
        #[arg(long, value_name = "LANG=FILE,...|DIR", conflicts_with_all = ["calib", "chunks", "process_output"])]
        merge: Option<String>,
        /// Folder of <lang>.txt files (ISO 639-1 names); default: the embedded corpus
        /// (the Universal Declaration of Human Rights in 29 languages).
        #[arg(long, value_name = "DIR")]
        calib: Option<PathBuf>,
        /// Relative language weights, e.g. en=2,zh=1 (unnamed languages weigh 1).
        #[arg(long, value_name = "LANG=W,...")]
        lang_weights: Option<String>,
        /// Tokens per chunk (llama-imatrix -c).
        #[arg(long, default_value_t = 512)]
        ctx: usize,
        /// At most this many chunks per language.
        #[arg(long)]
        chunks: Option<usize>,
        /// Also collect output.weight's input (llama-imatrix --process-output).
        #[arg(long)]
        process_output: bool,
        /// Arithmetic of the calibration forward pass's products: auto (bf16 on a CPU with
        /// AMX-BF16, else f32), f32, or bf16 (operands rounded to bf16, sums in f32, on the
        /// AMX tile unit: several times faster, statistics within about 1e-2 of f32).
        #[arg(long, default_value = "auto", value_name = "auto|f32|bf16")]
        matmul: String,
        /// gguf (llama.cpp's current format) or dat (legacy).
        #[arg(long, default_value = "gguf")]
        output_format: String,
        /// Overwrite an existing output file.
        #[arg(long)]
        force: bool,
        /// Write per-language statistics as JSON here, with the share of each
        /// language's importance-weighted Q4_K error per layer (also printed).
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Show the per-tensor plan (types, sizes, reasons) without writing anything.
    Plan {
        #[command(flatten)]
        t: TypeArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Per-language perplexity, KL divergence and top-1 agreement of quantized files
    /// against the model they were made from (our forward pass on its HF weights),
    /// scored as llama-perplexity --kl-divergence does.
    Eval {
        /// Model folder or hub id `org/name`.
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
        #[arg(long)]
        ctx: Option<usize>,
        /// At most this many chunks per language (llama-perplexity --chunks).
        #[arg(long)]
        chunks: Option<usize>,
        /// Print Markdown tables instead of aligned text.
        #[arg(long)]
        md: bool,
        /// Write the results as JSON to this file (`-`: stdout, tables then go to stderr).
        #[arg(long, value_name = "OUT|-")]
        json: Option<PathBuf>,
        /// Draw mean KLD per language and file, grouped by script, as SVG.
        #[arg(long, value_name = "OUT.svg")]
        chart: Option<PathBuf>,
        /// Overwrite existing --json and --chart files.
        #[arg(long)]
        force: bool,
    },
    /// Convert a model zoo listed in a MANIFEST.toml: one folder per model,
    /// calibration once per model, resumable, shardable (--shard I/N), with a summary.
    Batch {
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
    },
    /// Show a GGUF file's metadata and tensors.
    Inspect {
        file: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
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

/// The name of `names` closest to `s` (edit distance at most 2 for short
/// names, 3 for longer), for "did you mean".
fn nearest<'a>(s: &str, names: &[&'a str]) -> Option<&'a str> {
    let s = s.to_ascii_lowercase();
    let dist = |a: &str, b: &str| -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                cur.push(
                    (prev[j] + usize::from(ca != *cb))
                        .min(prev[j + 1] + 1)
                        .min(cur[j] + 1),
                );
            }
            prev = cur;
        }
        prev[b.len()]
    };
    names
        .iter()
        .map(|n| (dist(&s, n), *n))
        .min()
        .filter(|(d, n)| *d <= if n.len() > 4 { 3 } else { 2 })
        .map(|(_, n)| n)
}

fn calib_off(t: &TypeArgs) -> bool {
    t.calib.as_ref().is_some_and(|c| c.as_os_str() == "none")
}

fn options(t: &TypeArgs, quiet: bool) -> anyhow::Result<ConvertOptions> {
    let requested = if t.outtype == "auto" {
        if calib_off(t) && t.imatrix.is_none() {
            "f16"
        } else {
            "la-mix"
        }
    } else {
        t.outtype.as_str()
    };
    let mut outtype = OutType::parse(requested, t.pure).ok_or_else(|| {
        let near = nearest(&t.outtype, OutType::NAMES)
            .map(|n| format!("did you mean {n}? "))
            .unwrap_or_default();
        anyhow::anyhow!(
            "--outtype {}: not a known type or llama-quantize preset; {near}valid: {}",
            t.outtype,
            OutType::NAMES.join(", ")
        )
    })?;
    if let OutType::LaMix { .. } = outtype {
        if !(0.0..=1.0).contains(&t.f16_budget) {
            anyhow::bail!("--f16-budget {}: must be between 0 and 1", t.f16_budget);
        }
        outtype = OutType::LaMix {
            f16_budget: t.f16_budget,
        };
    }
    if let Some(x) = t.target_bpw {
        if !(1.5..=32.0).contains(&x) {
            anyhow::bail!("--target-bpw {x}: must be between 1.5 and 32");
        }
        if t.outtype != "auto" {
            anyhow::bail!(
                "--outtype {} and --target-bpw {x} both choose the types; give one \
                 (--target-bpw chooses every tensor's type itself)",
                t.outtype
            );
        }
        outtype = OutType::TargetBpw(x);
    }
    let calibrated = matches!(outtype, OutType::LaMix { .. } | OutType::TargetBpw(_));
    if calibrated && calib_off(t) && t.imatrix.is_none() {
        anyhow::bail!(
            "{} needs importance statistics, but --calib none turns calibration off; \
             drop --calib none, or give --imatrix FILE",
            match outtype {
                OutType::TargetBpw(x) => format!("--target-bpw {x}"),
                _ => "--outtype la-mix".to_string(),
            }
        );
    }
    let ty = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<GgmlType>> {
        v.as_ref()
            .map(|s| {
                GgmlType::from_name(s).ok_or_else(|| anyhow::anyhow!("{flag} {s}: unknown type"))
            })
            .transpose()
    };
    let overrides = Overrides {
        tensor_types: t
            .tensor_type
            .iter()
            .map(|a| Overrides::parse_tensor_type(a).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?,
        output_type: ty("--output-type", &t.output_type)?,
        embedding_type: ty("--embedding-type", &t.embedding_type)?,
        pure: t.pure,
    };
    Ok(ConvertOptions {
        outtype,
        output: None,
        force: false,
        quiet,
        tokenizer_pre: t.tokenizer_pre.clone(),
        allow_nonfinite: false,
        overrides,
        importance: None,
    })
}

/// The importance weights for a conversion: `--imatrix`, or a calibration run
/// (for the calibrated policies, or presets with an explicit `--calib DIR`).
fn importance(
    t: &TypeArgs,
    opts: &ConvertOptions,
    threads: usize,
    quiet: bool,
) -> anyhow::Result<Option<pipeline::Importance>> {
    use laquant::calib::{self, imatrix::Imatrix, CalibOptions, CorpusSource};
    if let Some(f) = &t.imatrix {
        if t.calib.as_ref().is_some_and(|c| c.as_os_str() != "none") {
            anyhow::bail!("--imatrix and --calib DIR both give importance; use one");
        }
        let m = Imatrix::read(f)?;
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
        let mut imp =
            pipeline::Importance::from_imatrix(&m, name.or(Some(f.display().to_string())));
        imp.sensitivity = sensitivity_sample(t, opts)?;
        return Ok(Some(imp));
    }
    let calibrated = matches!(opts.outtype, OutType::LaMix { .. } | OutType::TargetBpw(_));
    let wants = match &t.calib {
        Some(c) if c.as_os_str() == "none" => false,
        Some(_) => true,
        None => calibrated,
    };
    if !wants {
        return Ok(None);
    }
    let copts = CalibOptions {
        corpus: match &t.calib {
            Some(d) => CorpusSource::Dir(d.clone()),
            None => CorpusSource::Embedded,
        },
        ctx: t.ctx,
        lang_weights: match &t.lang_weights {
            Some(s) => calib::parse_lang_weights(s)?,
            None => Vec::new(),
        },
        threads,
        process_output: true,
        max_chunks: t.chunks,
        matmul: calib::Matmul::parse(&t.matmul)?,
    };
    let t0 = std::time::Instant::now();
    let ck = Checkpoint::open(&t.model)?;
    let bar = calib::report::progress_bar(quiet);
    let imp = calib::run(&ck, &copts, &mut |p| calib::report::show_progress(&bar, p))?;
    bar.finish_and_clear();
    let mut imp = pipeline::Importance::from_calibration(&imp);
    imp.seconds = Some(t0.elapsed().as_secs_f64());
    imp.matmul = Some(copts.matmul.resolve()?.name().to_string());
    imp.sensitivity = sensitivity_sample(t, opts)?;
    Ok(Some(imp))
}

/// The sensitivity sample of la-mix and --target-bpw: the calibration text
/// (the embedded corpus with --imatrix), `--sens-tokens` per language.
fn sensitivity_sample(
    t: &TypeArgs,
    opts: &ConvertOptions,
) -> anyhow::Result<Option<laquant::policy::sensitivity::SampleSpec>> {
    use laquant::calib::{self, CorpusSource};
    let calibrated = matches!(opts.outtype, OutType::LaMix { .. } | OutType::TargetBpw(_));
    if !calibrated || t.sens_tokens == Some(0) {
        return Ok(None);
    }
    use laquant::policy::sensitivity::{DEFAULT_BUDGET, DEFAULT_MAX_GROUPS, DEFAULT_TOKENS};
    if let Some(b) = t.sens_budget {
        if !(b.is_finite() && b > 0.0) {
            anyhow::bail!("--sens-budget {b}: must be a positive multiple of the calibration");
        }
    }
    // Either size given: exactly as asked; neither: sized by cost.
    let explicit = t.sens_tokens.is_some() || t.sens_groups.is_some();
    Ok(Some(laquant::policy::sensitivity::SampleSpec {
        corpus: match &t.calib {
            Some(d) if d.as_os_str() != "none" => CorpusSource::Dir(d.clone()),
            _ => CorpusSource::Embedded,
        },
        lang_weights: match &t.lang_weights {
            Some(s) => calib::parse_lang_weights(s)?,
            None => Vec::new(),
        },
        tokens: t.sens_tokens.unwrap_or(DEFAULT_TOKENS),
        max_groups: t.sens_groups.unwrap_or(DEFAULT_MAX_GROUPS),
        budget: (!explicit).then_some(t.sens_budget.unwrap_or(DEFAULT_BUDGET)),
        matmul: calib::Matmul::parse(&t.matmul)?,
    }))
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
        .num_threads(cli.threads.unwrap_or(0))
        .use_current_thread()
        .build_global()?;
    match cli.cmd {
        Cmd::Convert {
            t,
            output,
            force,
            allow_nonfinite,
            allow_requantize,
            report,
        } => {
            let mut opts = options(&t, cli.quiet)?;
            if laquant::gguf_input::is_gguf(&t.model) {
                opts.force = force;
                opts.allow_nonfinite = allow_nonfinite;
                return convert_gguf(&t, opts, output, report, allow_requantize);
            }
            // Every output is checked before any work (calibration takes minutes).
            let ck = Checkpoint::open(&t.model)?;
            let target = output.unwrap_or_else(|| pipeline::default_output(&ck, opts.outtype));
            let mut inputs = laquant::outputs::files_in(&ck.dir);
            inputs.extend(t.imatrix.iter().cloned());
            if let Some(c) = t.calib.as_ref().filter(|_| !calib_off(&t)) {
                inputs.extend(laquant::outputs::files_in(c));
            }
            let mut outs = vec![("-o", target.as_path())];
            outs.extend(report.as_deref().map(|r| ("--report", r)));
            laquant::outputs::check(&outs, &inputs, force).map_err(anyhow::Error::msg)?;
            drop(ck);
            opts.importance = importance(&t, &opts, cli.threads.unwrap_or(0), cli.quiet)?;
            opts.output = Some(target);
            opts.force = force;
            opts.allow_nonfinite = allow_nonfinite;
            let r = pipeline::convert(&t.model, &opts)?;
            if let Some(p) = report {
                laquant::outputs::write(&p, &serde_json::to_vec_pretty(&r)?, force)
                    .map_err(|e| anyhow::anyhow!("{}: cannot write report: {e}", p.display()))?;
            }
            print_converted(&r);
        }
        Cmd::Calibrate {
            model,
            output,
            merge: Some(merge),
            lang_weights,
            output_format,
            force,
            report,
            ..
        } => calibrate_merge(
            model.as_deref(),
            &output,
            &merge,
            lang_weights,
            &output_format,
            force,
            report,
            cli.quiet,
        )?,
        Cmd::Calibrate {
            model: Some(model),
            output,
            merge: None,
            calib,
            lang_weights,
            ctx,
            chunks,
            process_output,
            matmul,
            output_format,
            force,
            report,
        } => calibrate(
            &model,
            &output,
            calib,
            lang_weights,
            ctx,
            chunks,
            process_output,
            &matmul,
            &output_format,
            force,
            report,
            cli.threads.unwrap_or(0),
            cli.quiet,
        )?,
        Cmd::Calibrate { model: None, .. } => anyhow::bail!("calibrate needs MODEL, or --merge"),
        Cmd::Plan { t, json } => {
            let mut opts = options(&t, cli.quiet)?;
            opts.importance = importance(&t, &opts, cli.threads.unwrap_or(0), cli.quiet)?;
            let ck = Checkpoint::open(&t.model)?;
            let plan = pipeline::plan(&ck, &opts)?;
            let params: u64 = plan.iter().map(|p| p.n_elements()).sum();
            let bytes: u64 = plan.iter().map(|p| p.bytes).sum();
            let bpw = if params > 0 {
                bytes as f64 * 8.0 / params as f64
            } else {
                0.0
            };
            if json {
                let v = serde_json::json!({
                    "model": ck.dir, "outtype": opts.outtype.label(), "tensors": plan,
                    "n_params": params, "bytes": bytes, "bits_per_weight": bpw,
                });
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                outln!(
                    "{:<32} {:<16} {:>7} {:>11} {:>10}  reason",
                    "tensor",
                    "dims",
                    "type",
                    "bytes",
                    "score"
                );
                for p in &plan {
                    // The calibrated error under the chosen type (la-mix, --target-bpw).
                    let score = p
                        .score
                        .as_ref()
                        .map(|s| format!("{:.3e}", s.error))
                        .unwrap_or_else(|| "-".into());
                    outln!(
                        "{:<32} {:<16} {:>7} {:>11} {:>10}  {}",
                        p.name,
                        format!("{:?}", p.dims),
                        p.ty.name(),
                        p.bytes,
                        score,
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
                outln!(
                    "\n{} tensors, {params} parameters, {:.2} MB, {bpw:.3} bits per weight",
                    plan.len(),
                    bytes as f64 / 1e6
                );
            }
        }
        Cmd::Eval {
            model,
            files,
            eval,
            ctx,
            chunks,
            md,
            json,
            chart,
            force,
        } => {
            use laquant::eval::{self, EvalOptions, EvalText};
            let opts = EvalOptions {
                text: match eval {
                    Some(d) => EvalText::Dir(d),
                    None => EvalText::EmbeddedHoldout,
                },
                ctx,
                chunks,
                threads: cli.threads.unwrap_or(0),
            };
            if opts.text == EvalText::EmbeddedHoldout && !cli.quiet {
                eprintln!(
                    "laquant: no --eval DIR: scoring the {}",
                    opts.text.describe()
                );
            }
            let ck = Checkpoint::open(&model)?;
            let json_stdout = json.as_ref().is_some_and(|j| j.as_os_str() == "-");
            let mut inputs = laquant::outputs::files_in(&ck.dir);
            inputs.extend(files.iter().cloned());
            if let EvalText::Dir(d) = &opts.text {
                inputs.extend(laquant::outputs::files_in(d));
            }
            let mut outs = Vec::new();
            outs.extend(
                json.as_deref()
                    .filter(|_| !json_stdout)
                    .map(|p| ("--json", p)),
            );
            outs.extend(chart.as_deref().map(|p| ("--chart", p)));
            laquant::outputs::check(&outs, &inputs, force).map_err(anyhow::Error::msg)?;
            let bar = eval::report::progress_bar(cli.quiet);
            let r = eval::run(&ck, &files, &opts, &mut |p| {
                eval::report::show_progress(&bar, p)
            })?;
            bar.finish_and_clear();
            let tables = if md { r.to_markdown() } else { r.to_text() };
            if json_stdout {
                outln!("{}", serde_json::to_string_pretty(&r.to_json())?);
                if !cli.quiet {
                    eprint!("{tables}");
                }
            } else {
                out!("{tables}");
            }
            if let Some(p) = json.filter(|_| !json_stdout) {
                laquant::outputs::write(&p, &serde_json::to_vec_pretty(&r.to_json())?, force)
                    .map_err(|e| anyhow::anyhow!("{}: cannot write JSON: {e}", p.display()))?;
            }
            if let Some(p) = chart {
                eval::chart::write_svg(&r, &p, force)?;
            }
            if !cli.quiet {
                eprintln!("evaluated {} file(s) in {:.1}s", r.files.len(), r.seconds);
            }
        }
        Cmd::Batch {
            manifest,
            output,
            jobs,
            calib_jobs,
            shard,
            ollama,
            verify,
            dry_run,
            eval,
            eval_text,
            eval_languages,
            eval_ctx,
            eval_chunks,
            eval_memory_gb,
        } => {
            let shard = shard
                .map(|s| laquant::batch::manifest::parse_shard(&s))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let opts = laquant::batch::BatchOptions {
                manifest,
                output,
                jobs,
                calib_jobs,
                threads: cli.threads.unwrap_or(0),
                shard,
                ollama,
                verify,
                quiet: cli.quiet,
                dry_run,
                eval,
                eval_text,
                eval_languages,
                eval_ctx,
                eval_chunks,
                eval_memory: eval_memory_gb
                    .map(laquant::batch::manifest::parse_memory_gb)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--eval-memory-gb {e}"))?,
            };
            let s = match laquant::batch::run(&opts) {
                // The outputs are done and recorded: show them, then say what failed.
                Err(laquant::batch::BatchError::SummaryNotWritten { summary, error }) => {
                    out!("{}", summary.to_text());
                    anyhow::bail!(error);
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
        }
        Cmd::Inspect { file, json } => {
            let f = GgufFile::open(&file)?;
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&laquant::inspect::to_json(&f))?
                );
            } else {
                out!("{}", laquant::inspect::to_text(&f));
            }
        }
    }
    Ok(())
}

/// What `convert` prints when done (--quiet hides progress, not results).
fn print_converted(r: &pipeline::ConvertReport) {
    let tm = &r.timings;
    let phases = match tm.calibration {
        Some(c) => format!(
            " (calibration {c:.1}s, plan {:.1}s, write {:.1}s)",
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
}

/// `convert FILE.gguf`: llama-quantize's presets on a GGUF input ([`laquant::gguf_input`]).
fn convert_gguf(
    t: &TypeArgs,
    mut opts: ConvertOptions,
    output: Option<PathBuf>,
    report: Option<PathBuf>,
    allow_requantize: bool,
) -> anyhow::Result<()> {
    use laquant::gguf_input;
    let input = std::path::Path::new(&t.model);
    // la-mix and --target-bpw calibrate from the HF weights: said before anything else.
    gguf_input::preset(input, opts.outtype)?;
    if t.calib.as_ref().is_some_and(|c| c.as_os_str() != "none") {
        anyhow::bail!(
            "--calib DIR calibrates from the Hugging Face checkpoint; for a GGUF input give \
             --imatrix FILE (llama-imatrix's, or `laquant calibrate`'s on the checkpoint)"
        );
    }
    let target = output.unwrap_or_else(|| gguf_input::default_output(input, opts.outtype));
    let mut inputs = vec![input.to_path_buf()];
    inputs.extend(t.imatrix.iter().cloned());
    let mut outs = vec![("-o", target.as_path())];
    outs.extend(report.as_deref().map(|r| ("--report", r)));
    laquant::outputs::check(&outs, &inputs, opts.force).map_err(anyhow::Error::msg)?;
    if let Some(f) = &t.imatrix {
        let m = laquant::calib::Imatrix::read(f)?;
        // quantize.imatrix.file as llama-quantize writes it: the path as given.
        opts.importance = Some(pipeline::Importance::from_imatrix(
            &m,
            Some(f.display().to_string()),
        ));
    }
    opts.output = Some(target);
    let r = gguf_input::convert(input, &opts, allow_requantize)?;
    if let Some(p) = report {
        laquant::outputs::write(&p, &serde_json::to_vec_pretty(&r)?, opts.force)
            .map_err(|e| anyhow::anyhow!("{}: cannot write report: {e}", p.display()))?;
    }
    print_converted(&r);
    Ok(())
}

/// `--output-format`: `gguf` (false) or `dat` (true).
fn output_is_dat(format: &str) -> anyhow::Result<bool> {
    match format {
        "gguf" => Ok(false),
        "dat" => Ok(true),
        other => anyhow::bail!("--output-format {other}: expected gguf or dat"),
    }
}

/// `calibrate --merge`: per-language imatrix files balanced into one
/// ([`laquant::calib::merge`]), checked against MODEL's weights when given.
#[allow(clippy::too_many_arguments)]
fn calibrate_merge(
    model: Option<&str>,
    output: &std::path::Path,
    merge: &str,
    lang_weights: Option<String>,
    output_format: &str,
    force: bool,
    report: Option<PathBuf>,
    quiet: bool,
) -> anyhow::Result<()> {
    use laquant::calib::{self, merge as m};
    let dat = output_is_dat(output_format)?;
    let files = m::parse_merge_arg(merge)?;
    let weights = match lang_weights {
        Some(s) => calib::parse_lang_weights(&s)?,
        None => Vec::new(),
    };
    let ck = model.map(Checkpoint::open).transpose()?;
    let mut inputs: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
    if let Some(ck) = &ck {
        inputs.extend(laquant::outputs::files_in(&ck.dir));
    }
    let mut outs = vec![("-o", output)];
    outs.extend(report.as_deref().map(|r| ("--report", r)));
    laquant::outputs::check(&outs, &inputs, force).map_err(anyhow::Error::msg)?;
    let merged = m::merge_files(&files, &weights)?;
    if let Some(ck) = &ck {
        // The names and widths of the model's matrices, as convert would check them.
        let plan = pipeline::plan(ck, &ConvertOptions::default())?;
        let langs: Vec<&str> = files.iter().map(|f| f.lang.as_str()).collect();
        pipeline::Importance::from_imatrix(
            &merged.imatrix,
            Some(format!("merged from {}", langs.join(","))),
        )
        .check_against(&plan)?;
    }
    if dat {
        calib::imatrix::write_atomic(output, &merged.imatrix.to_dat_bytes(), force)?;
    } else {
        merged.imatrix.write_gguf(output, force)?;
    }
    if let Some(p) = report {
        laquant::outputs::write(
            &p,
            &serde_json::to_vec_pretty(&m::summary_json(&merged))?,
            force,
        )
        .map_err(|e| anyhow::anyhow!("{}: cannot write report: {e}", p.display()))?;
    }
    if !quiet {
        eprint!("{}", m::summary_text(&merged));
    }
    eprintln!(
        "wrote {} ({} weights)",
        output.display(),
        merged.imatrix.entries.len()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn calibrate(
    model: &str,
    output: &std::path::Path,
    calib: Option<PathBuf>,
    lang_weights: Option<String>,
    ctx: usize,
    chunks: Option<usize>,
    process_output: bool,
    matmul: &str,
    output_format: &str,
    force: bool,
    report: Option<PathBuf>,
    threads: usize,
    quiet: bool,
) -> anyhow::Result<()> {
    use laquant::calib::{self, CalibOptions, CorpusSource};
    let dat = output_is_dat(output_format)?;
    let corpus = match calib {
        Some(d) if d.as_os_str() == "none" => {
            anyhow::bail!("--calib none turns calibration off; `calibrate` needs a corpus")
        }
        Some(d) => CorpusSource::Dir(d),
        None => CorpusSource::Embedded,
    };
    let lang_weights = match lang_weights {
        Some(s) => calib::parse_lang_weights(&s)?,
        None => Vec::new(),
    };
    let ckpt = laquant::hf::Checkpoint::open(model)?;
    let mut inputs = laquant::outputs::files_in(&ckpt.dir);
    if let CorpusSource::Dir(d) = &corpus {
        inputs.extend(laquant::outputs::files_in(d));
    }
    let mut outs = vec![("-o", output)];
    outs.extend(report.as_deref().map(|r| ("--report", r)));
    laquant::outputs::check(&outs, &inputs, force).map_err(anyhow::Error::msg)?;
    let opts = CalibOptions {
        corpus,
        ctx,
        lang_weights,
        threads,
        process_output,
        max_chunks: chunks,
        matmul: calib::Matmul::parse(matmul)?,
    };
    let bar = calib::report::progress_bar(quiet);
    let imp = calib::run(&ckpt, &opts, &mut |p| calib::report::show_progress(&bar, p))?;
    bar.finish_and_clear();
    let m = imp.to_imatrix();
    if dat {
        calib::imatrix::write_atomic(output, &m.to_dat_bytes(), force)?;
    } else {
        m.write_gguf(output, force)?;
    }
    if let Some(p) = report {
        let mut json = calib::report::summary_json(&imp);
        let layers = calib::report::layer_report(&ckpt, &imp)?;
        json["layer_error"] = layers.to_json();
        if !quiet {
            eprint!("{}", layers.to_text());
        }
        laquant::outputs::write(&p, &serde_json::to_vec_pretty(&json)?, force)
            .map_err(|e| anyhow::anyhow!("{}: cannot write report: {e}", p.display()))?;
    }
    if !quiet {
        eprint!("{}", calib::report::summary_text(&imp));
    }
    // --quiet hides progress, not results.
    eprintln!("wrote {} ({} weights)", output.display(), m.entries.len());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Ctrl-C, SIGTERM, SIGHUP: remove the temporary output file before exiting.
    let outcome = match cli.cmd {
        Cmd::Batch { .. } => laquant::batch::INTERRUPTED_OUTCOME,
        _ => laquant::atomic::NO_OUTPUT_WRITTEN,
    };
    if let Err(e) = laquant::atomic::remove_temps_on_signal_saying(outcome) {
        eprintln!("laquant: warning: {e}");
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
