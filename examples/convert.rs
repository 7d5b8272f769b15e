//! Converting a checkpoint with laquant as a library: what `laquant convert
//! MODEL -o OUT --outtype q4_k_m --calib none` does, then reading the file back
//! and quantizing one row again in its block type.
//!
//! ```text
//! cargo run --release --example convert -- fixtures/qwen2-tied /tmp/qwen2-tied-Q4_K_M.gguf
//! ```

use laquant::{CalibSource, Calibration, ConvertOptions, GgmlType, GgufFile, Job, OutType};
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(model), Some(output)) = (args.next(), args.next()) else {
        return Err("usage: convert MODEL OUT.gguf".into());
    };
    let job = Job {
        model,
        options: ConvertOptions {
            outtype: OutType::parse("q4_k_m", false).ok_or("q4_k_m is a preset")?,
            output: Some(PathBuf::from(&output)),
            force: true,
            ..ConvertOptions::default()
        },
        // No importance: the preset's types with llama-quantize's plain rounding.
        calibration: Calibration {
            source: CalibSource::None,
            ..Calibration::default()
        },
    };
    // Progress arrives through a callback (here: a dot per tensor written).
    let report = job.run(0, &|p| {
        if let laquant::Progress::Writing { .. } = p {
            eprint!(".");
        }
    })?;
    eprintln!();
    println!(
        "{}: {} tensors, {:.2} bits per weight",
        report.output.display(),
        report.tensors.len(),
        report.bits_per_weight
    );

    // Read it back: the first quantized tensor's first row, dequantized, then
    // quantized and dequantized again in the same type.
    let file = GgufFile::open(&output)?;
    let Some(t) = file.tensors.iter().find(|t| t.ty.is_quantized()) else {
        return Err("no quantized tensor in the file".into());
    };
    let ty: GgmlType = t.ty;
    let row: Vec<f32> = file.tensor_f32(t)?[..t.dims[0] as usize].to_vec();
    let packed = laquant::quantize_tensor(ty, &row, row.len(), None)?;
    let mut back = vec![0f32; row.len()];
    laquant::dequantize(ty, &packed, &mut back)?;
    let err = row
        .iter()
        .zip(&back)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!(
        "{} ({}): row 0 of {} values, max change after a second round trip {err:.2e}",
        t.name,
        ty.name(),
        row.len()
    );
    Ok(())
}
