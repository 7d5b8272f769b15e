//! Packing throughput per type, in GB of f32 input per second, on one thread
//! (`quantize_rows`) and on all threads (`quantize_tensor_into`, rayon), without and
//! with importance weights. `scripts/bench-quant.sh` runs this next to ggml's
//! `ggml_quantize_chunk` on the same rows and prints the ratios.
//!
//! `LAQUANT_BENCH_TYPES=q4_k,q8_0` restricts the types; `LAQUANT_BENCH_ROWS`
//! sets the row count (default 16 rows of 4096).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
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
    // The same rows as the oracle's bench mode: SplitMix(42) normals times 0.02, then weights.
    let mut s = SplitMix(42);
    let x: Vec<f32> = (0..rows * WIDTH).map(|_| s.gauss() * 0.02).collect();
    let im: Vec<f32> = (0..WIDTH).map(|_| s.unif() + 0.01).collect();
    let mut g = c.benchmark_group("quant");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Bytes((x.len() * 4) as u64));
    for ty in types() {
        let rb = ty.row_bytes(WIDTH as u64).unwrap() as usize;
        let mut out = vec![0u8; rows * rb];
        for (tag, imatrix) in [("", None), ("+imatrix", Some(&im[..]))] {
            if tag.is_empty() || ty.is_quantized() {
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

criterion_group!(benches, bench);
criterion_main!(benches);
