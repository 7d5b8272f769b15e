//! The `laquant` command line: parses arguments, calls the library, prints.
//! Exit codes: 0 done, 1 bad input or failed check (message on stderr), 2 usage.

use clap::{Parser, Subcommand};
use laquant::gguf::{GgmlType, GgufFile};
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
    /// Threads for packing (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// No progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Convert a checkpoint (folder or hub id in the local HF cache) to GGUF.
    Convert {
        /// Model folder or hub id `org/name`.
        model: String,
        /// Output file (default: <model-name>-<TYPE>.gguf in the current folder).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Output type: f32, f16, bf16, q8_0 (as llama.cpp's converter), or a
        /// llama-quantize preset: q4_0 q4_1 q5_0 q5_1 q2_k q3_k_s q3_k_m q3_k_l
        /// q4_k_s q4_k_m q5_k_s q5_k_m q6_k iq4_nl iq4_xs.
        #[arg(long, default_value = "f16")]
        outtype: String,
        /// la-mix: share of all weight parameters that may be F16.
        #[arg(long, default_value_t = 0.05)]
        f16_budget: f64,
        /// Choose a type per tensor for at most this many bits per weight (least calibrated error).
        #[arg(long)]
        target_bpw: Option<f64>,
        /// Every quantizable weight in the --outtype's base type (llama-quantize --pure).
        #[arg(long)]
        pure: bool,
        /// Per-tensor type override REGEX=TYPE (repeatable; first match wins).
        #[arg(long = "tensor-type", value_name = "REGEX=TYPE")]
        tensor_type: Vec<String>,
        /// Type of output.weight.
        #[arg(long)]
        output_type: Option<String>,
        /// Type of token_embd.weight.
        #[arg(long)]
        embedding_type: Option<String>,
        /// Overwrite an existing output file.
        #[arg(long)]
        force: bool,
        /// Force llama.cpp's pre-tokenizer name (tokenizer.ggml.pre) when laquant cannot identify it.
        #[arg(long)]
        tokenizer_pre: Option<String>,
        /// Convert even if weights hold NaN or Inf.
        #[arg(long)]
        allow_nonfinite: bool,
        /// Write a JSON report of the conversion here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Show a GGUF file's metadata and tensors.
    Inspect {
        file: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    match cli.cmd {
        Cmd::Convert {
            model,
            output,
            outtype,
            f16_budget,
            target_bpw,
            pure,
            tensor_type,
            output_type,
            embedding_type,
            force,
            tokenizer_pre,
            allow_nonfinite,
            report,
        } => {
            let mut outtype = OutType::parse(&outtype, pure).ok_or_else(|| {
                anyhow::anyhow!("--outtype {outtype}: not a known type or llama-quantize preset")
            })?;
            if let OutType::LaMix { .. } = outtype {
                if !(0.0..=1.0).contains(&f16_budget) {
                    anyhow::bail!("--f16-budget {f16_budget}: must be between 0 and 1");
                }
                outtype = OutType::LaMix { f16_budget };
            }
            if let Some(x) = target_bpw {
                if !(1.5..=32.0).contains(&x) {
                    anyhow::bail!("--target-bpw {x}: must be between 1.5 and 32");
                }
                outtype = OutType::TargetBpw(x);
            }
            let ty = |flag: &str, v: Option<String>| -> anyhow::Result<Option<GgmlType>> {
                v.map(|s| {
                    GgmlType::from_name(&s)
                        .ok_or_else(|| anyhow::anyhow!("{flag} {s}: unknown type"))
                })
                .transpose()
            };
            let overrides = Overrides {
                tensor_types: tensor_type
                    .iter()
                    .map(|a| Overrides::parse_tensor_type(a).map_err(anyhow::Error::msg))
                    .collect::<anyhow::Result<_>>()?,
                output_type: ty("--output-type", output_type)?,
                embedding_type: ty("--embedding-type", embedding_type)?,
                pure,
            };
            let opts = ConvertOptions {
                outtype,
                output,
                force,
                quiet: cli.quiet,
                tokenizer_pre,
                allow_nonfinite,
                overrides,
                importance: None,
            };
            let r = pipeline::convert(&model, &opts)?;
            if let Some(p) = report {
                std::fs::write(&p, serde_json::to_vec_pretty(&r)?)
                    .map_err(|e| anyhow::anyhow!("{}: cannot write report: {e}", p.display()))?;
            }
            if !cli.quiet {
                eprintln!(
                    "wrote {} ({} tensors, {:.1} MB, {:.2} bits per weight) in {:.1}s",
                    r.output.display(),
                    r.tensors.len(),
                    r.bytes as f64 / 1e6,
                    r.bits_per_weight,
                    r.seconds
                );
            }
        }
        Cmd::Inspect { file, json } => {
            let f = GgufFile::open(&file)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&laquant::inspect::to_json(&f))?
                );
            } else {
                print!("{}", laquant::inspect::to_text(&f));
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("laquant: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
