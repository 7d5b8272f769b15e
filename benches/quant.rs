//! Packing throughput per type, in GB of f32 input per second, on one thread
//! (`quantize_rows`) and on all threads (`quantize_tensor_into`, rayon), without and
//! with importance weights. `scripts/bench.sh quant` runs this next to ggml's
//! `ggml_quantize_chunk` on the same rows and prints the ratios.
//!
//! `LAQUANT_BENCH_TYPES=q4_k,q8_0` restricts the types; `LAQUANT_BENCH_ROWS`
//! sets the row count (default 16 rows of 4096).
//!
//! `quant-<hash> raw TYPE WIDTH ROWS ITERS THREADS [imatrix]` (the bench binary run
//! directly) is the oracle's `bench` mode on our side: the same rows, best of ITERS runs,
//! one line `TYPE THREADS GB/s`. The script alternates it with the oracle's runs, so that
//! both see the same load on a shared machine.

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use laquant::gguf::types::GgmlType;
use laquant::quant::{self, golden::SplitMix};
use std::hint::black_box;
use std::time::Duration;

const WIDTH: usize = 4096;

fn types() -> Vec<GgmlType> {
    match std::env::var("LAQUANT_BENCH_TYPES") {
        Ok(list) => list.split(',').filter_map(GgmlType::from_name).collect(),
        Err(_) => quant::SUPPORTED
            .iter()
            .copied()
            .filter(|t| *t != GgmlType::F32)
            .collect(),
    }
}

fn bench(c: &mut Criterion) {
    let rows: usize = std::env::var("LAQUANT_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let (x, im) = rows_like_oracle(WIDTH, rows);
    let mut g = c.benchmark_group("quant");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Bytes((x.len() * 4) as u64));
    for ty in types() {
        let rb = ty.row_bytes(WIDTH as u64).unwrap() as usize;
        let mut out = vec![0u8; rows * rb];
        for (tag, imatrix) in [("", None), ("+imatrix", Some(&im[..]))] {
            let allowed = if tag.is_empty() {
                !quant::requires_imatrix(ty)
            } else {
                ty.is_quantized()
            };
            if allowed {
                let name = format!("{}{tag}", ty.name());
                g.bench_with_input(BenchmarkId::new("1t", &name), &x, |b, x| {
                    b.iter(|| {
                        quant::quantize_rows(ty, black_box(x), WIDTH, imatrix, &mut out).unwrap()
                    })
                });
                g.bench_with_input(BenchmarkId::new("nt", &name), &x, |b, x| {
                    b.iter(|| {
                        quant::quantize_tensor_into(ty, black_box(x), WIDTH, imatrix, &mut out)
                            .unwrap()
                    })
                });
            }
        }
    }
    g.finish();
}

/// The rows of the oracle's bench mode: SplitMix(42) normals times 0.02, then weights.
fn rows_like_oracle(width: usize, rows: usize) -> (Vec<f32>, Vec<f32>) {
    let mut s = SplitMix(42);
    let x: Vec<f32> = (0..rows * width).map(|_| s.gauss() * 0.02).collect();
    let im: Vec<f32> = (0..width).map(|_| s.unif() + 0.01).collect();
    (x, im)
}

/// `raw TYPE WIDTH ROWS ITERS THREADS [imatrix]`: best-of-ITERS throughput, as the oracle.
fn raw(args: &[String]) -> Result<(), String> {
    let usage = "usage: raw TYPE WIDTH ROWS ITERS THREADS [imatrix]";
    let num = |i: usize| -> Result<usize, String> {
        args.get(i)
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| usage.to_string())
    };
    let ty = args
        .first()
        .and_then(|t| GgmlType::from_name(t))
        .ok_or_else(|| usage.to_string())?;
    let (width, rows, iters, threads) = (num(1)?, num(2)?, num(3)?, num(4)?);
    let (x, im) = rows_like_oracle(width, rows);
    let imatrix = (args.get(5).map(String::as_str) == Some("imatrix")).then_some(&im[..]);
    let rb = ty.row_bytes(width as u64).ok_or("bad width")? as usize;
    let mut out = vec![0u8; rows * rb];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| e.to_string())?;
    // LAQUANT_BENCH_PATH=scalar|lanes: one thread through a K-quant's scalar twin (ggml's
    // order) or its portable lanes build instead of the dispatched fast path.
    let twin = std::env::var("LAQUANT_BENCH_PATH").ok();
    let mut best = f64::MAX;
    for _ in 0..iters {
        let t0 = std::time::Instant::now();
        if let Some(path) = twin.as_deref() {
            run_twin(ty, path, &x, width, imatrix, &mut out)?;
            best = best.min(t0.elapsed().as_secs_f64());
            continue;
        }
        if threads == 1 {
            quant::quantize_rows(ty, black_box(&x), width, imatrix, &mut out)
        } else {
            pool.install(|| {
                quant::quantize_tensor_into(ty, black_box(&x), width, imatrix, &mut out)
            })
        }
        .map_err(|e| e.to_string())?;
        best = best.min(t0.elapsed().as_secs_f64());
    }
    black_box(&out);
    println!(
        "{} {threads} {:.6}",
        ty.name(),
        (x.len() * 4) as f64 / best / 1e9
    );
    Ok(())
}

/// One thread of `ty`'s `quantize_row_*_with(.., lanes)` twin, row by row.
fn run_twin(
    ty: GgmlType,
    path: &str,
    x: &[f32],
    width: usize,
    imatrix: Option<&[f32]>,
    out: &mut [u8],
) -> Result<(), String> {
    use quant::k_quants::{q2_k, q3_k, q4_k, q5_k, q6_k};
    let lanes = match path {
        "lanes" => true,
        "scalar" => false,
        _ => {
            return Err(format!(
                "LAQUANT_BENCH_PATH={path}: expected scalar or lanes"
            ))
        }
    };
    let rb = out.len() / (x.len() / width);
    for (x, y) in black_box(x)
        .chunks_exact(width)
        .zip(out.chunks_exact_mut(rb))
    {
        match (ty, imatrix) {
            (GgmlType::Q2K, None) => q2_k::quantize_row_ref_with(x, y, lanes),
            (GgmlType::Q2K, Some(w)) => q2_k::quantize_row_imatrix_with(x, y, w, lanes),
            (GgmlType::Q3K, None) => q3_k::quantize_row_ref_with(x, y, lanes),
            (GgmlType::Q3K, Some(w)) => q3_k::quantize_row_imatrix_with(x, y, w, lanes),
            (GgmlType::Q4K, None) => q4_k::quantize_row_ref_with(x, y, lanes),
            (GgmlType::Q4K, Some(w)) => q4_k::quantize_row_imatrix_with(x, y, w, lanes),
            (GgmlType::Q5K, None) => q5_k::quantize_row_ref_with(x, y, lanes),
            (GgmlType::Q5K, Some(w)) => q5_k::quantize_row_imatrix_with(x, y, w, lanes),
            (GgmlType::Q6K, w) => q6_k::quantize_row_with(x, y, w, lanes),
            _ => return Err(format!("LAQUANT_BENCH_PATH: no twin for {}", ty.name())),
        }
    }
    Ok(())
}

criterion_group!(benches, bench);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("raw") {
        if let Err(e) = raw(&args[1..]) {
            eprintln!("{e}");
            std::process::exit(2);
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
