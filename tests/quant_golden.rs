//! Bit-exactness against ggml: every golden vector in `fixtures/golden` (made by
//! `scripts/gen-golden.sh` from ggml's own `ggml_quantize_chunk` and `to_float`;
//! `fixtures/golden-aarch64` on aarch64, from ggml built for aarch64)
//! must be reproduced byte for byte by laquant's kernels, and our dequantization
//! of those bytes must equal ggml's bit for bit. `LAQUANT_GOLDEN_DIR` points the
//! test at another directory (the interop stage's freshly generated vectors).

use laquant::gguf::types::GgmlType;
use laquant::quant::golden::{self, describe, fnv1a, fnv1a_f32, make_case};
use laquant::quant::{dequantize, quantize_rows, quantize_tensor, requires_imatrix, QuantError};
use std::path::PathBuf;

const TYPES: &[&str] = &[
    "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4", "Q1_0", "Q2_0", "IQ2_XXS", "IQ2_XS", "IQ3_XXS",
    "IQ3_S", "IQ2_S", "IQ1_S", "IQ1_M", "NVFP4",
];

/// The vectors of the machine we run on: ggml's bytes for NaN and out-of-range
/// inputs differ between x86-64 and aarch64 (see scripts/gen-golden.sh).
fn golden_dir() -> PathBuf {
    let own = if cfg!(target_arch = "aarch64") {
        "fixtures/golden-aarch64"
    } else {
        "fixtures/golden"
    };
    match std::env::var_os("LAQUANT_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(own),
    }
}

/// Checks one type; returns a list of failures (empty when bit-exact).
fn check_type(name: &str) -> Vec<String> {
    let ty = GgmlType::from_name(name).expect("known type");
    let path = golden_dir().join(format!("{name}.bin"));
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = golden::parse(&data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(file.type_id, ty.id(), "{}: type id", path.display());
    assert_eq!(
        file.records.len(),
        golden::N_CASES * if ty.is_quantized() { 2 } else { 1 }
    );
    let mut failures = Vec::new();
    for r in &file.records {
        let (x, im) = make_case(r.case);
        let what = format!(
            "{name} {}{}",
            describe(r.case),
            if r.imatrix { " with imatrix" } else { "" }
        );
        assert_eq!(
            (r.width, r.rows),
            golden::case_shape(r.case),
            "{what}: shape"
        );
        assert_eq!(
            fnv1a_f32(&x),
            r.input_hash,
            "{what}: the Rust input generator differs from the oracle's"
        );
        if r.imatrix {
            assert_eq!(
                fnv1a_f32(&im),
                r.imatrix_hash,
                "{what}: importance weights differ from the oracle's"
            );
        }
        let imatrix = r.imatrix.then_some(&im[..]);
        let mut q = vec![0u8; r.n_bytes];
        if r.aborted {
            // ggml asserts; laquant refuses a missing imatrix with an error and packs the rows
            // ggml's searches abort on (NaN, or overflowing squares; the pipeline refuses
            // non-finite weights before packing) without panicking.
            let got = quantize_rows(ty, &x, r.width, imatrix, &mut q);
            if imatrix.is_none() && requires_imatrix(ty) {
                if got != Err(QuantError::NeedsImatrix(ty)) {
                    failures.push(format!("{what}: ggml refuses it, laquant gave {got:?}"));
                }
            } else if let Err(e) = got {
                failures.push(format!("{what}: ggml aborts, laquant refused it ({e})"));
            }
            continue;
        }
        quantize_rows(ty, &x, r.width, imatrix, &mut q).unwrap();
        if fnv1a(&q) != r.bytes_hash {
            let detail = match &r.bytes {
                Some(b) => {
                    let first = q.iter().zip(b).position(|(a, b)| a != b).unwrap_or(0);
                    let blk = ty.type_size();
                    let at = first / blk * blk;
                    format!(
                        "first difference at byte {first} (block {}): ours {:02x?} ggml {:02x?}",
                        first / blk,
                        &q[at..(at + blk).min(q.len())],
                        &b[at..(at + blk).min(b.len())]
                    )
                }
                None => "hash differs".into(),
            };
            failures.push(format!("{what}: quantized bytes differ; {detail}"));
            continue;
        }
        // The parallel path must give the serial bytes.
        let par = quantize_tensor(ty, &x, r.width, imatrix).unwrap();
        if par != q {
            failures.push(format!(
                "{what}: quantize_tensor differs from quantize_rows"
            ));
        }
        let mut deq = vec![0f32; x.len()];
        let rb = r.n_bytes / r.rows;
        for (o, b) in deq.chunks_exact_mut(r.width).zip(q.chunks_exact(rb)) {
            dequantize(ty, b, o).unwrap();
        }
        if fnv1a_f32(&deq) != r.deq_hash {
            failures.push(format!(
                "{what}: dequantized values differ from ggml's to_float"
            ));
        }
    }
    failures
}

macro_rules! golden_test {
    ($($fn_name:ident => $ty:expr,)*) => {$(
        #[test]
        fn $fn_name() {
            let f = check_type($ty);
            assert!(f.is_empty(), "{} of the {} golden records fail:\n{}", f.len(), $ty, f.join("\n"));
        }
    )*};
}

golden_test! {
    golden_f16 => "F16",
    golden_bf16 => "BF16",
    golden_q4_0 => "Q4_0",
    golden_q4_1 => "Q4_1",
    golden_q5_0 => "Q5_0",
    golden_q5_1 => "Q5_1",
    golden_q8_0 => "Q8_0",
    golden_q2_k => "Q2_K",
    golden_q3_k => "Q3_K",
    golden_q4_k => "Q4_K",
    golden_q5_k => "Q5_K",
    golden_q6_k => "Q6_K",
    golden_iq4_nl => "IQ4_NL",
    golden_iq4_xs => "IQ4_XS",
    golden_tq1_0 => "TQ1_0",
    golden_tq2_0 => "TQ2_0",
    golden_mxfp4 => "MXFP4",
    golden_q1_0 => "Q1_0",
    golden_q2_0 => "Q2_0",
    golden_iq2_xxs => "IQ2_XXS",
    golden_iq2_xs => "IQ2_XS",
    golden_iq3_xxs => "IQ3_XXS",
    golden_iq3_s => "IQ3_S",
    golden_iq2_s => "IQ2_S",
    golden_iq1_s => "IQ1_S",
    golden_iq1_m => "IQ1_M",
    golden_nvfp4 => "NVFP4",
}

#[test]
fn every_golden_file_is_tested() {
    let mut on_disk: Vec<String> = std::fs::read_dir(golden_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".bin").map(str::to_owned))
        .collect();
    on_disk.sort();
    let mut ours: Vec<String> = TYPES.iter().map(|s| s.to_string()).collect();
    ours.sort();
    assert_eq!(on_disk, ours);
}

type RowFn = fn(&[f32], &mut [u8], Option<&[f32]>);

/// The scalar twins of every fast path, run on the golden rows: ggml's order of operations
/// one sub-block at a time (`*_ref`, `lanes = false`) and the portable fast paths that the
/// `std::arch` kernels replace on x86-64 (the only fast paths on other targets).
fn twins(name: &str) -> Vec<(&'static str, RowFn)> {
    use laquant::quant::k_quants::{q2_k, q3_k, q4_k, q5_k, q6_k};
    use laquant::quant::{float, iq4, q4_0, q4_1, q5_0, q5_1, q8_0, ternary};
    macro_rules! legacy {
        ($m:ident) => {
            vec![
                ("ref", |x, y, w| match w {
                    Some(w) => $m::quantize_row_imatrix_with(x, y, w, false),
                    None => $m::quantize_row_ref(x, y),
                }),
                ("portable", |x, y, w| match w {
                    Some(w) => $m::quantize_row_imatrix_with(x, y, w, true),
                    None => $m::quantize_row_portable(x, y),
                }),
            ]
        };
    }
    macro_rules! k {
        ($m:ident) => {
            vec![("ref", |x, y, w| match w {
                Some(w) => $m::quantize_row_imatrix_with(x, y, w, false),
                None => $m::quantize_row_ref_with(x, y, false),
            })]
        };
    }
    match name {
        "F16" => vec![("ref", |x, y, _| float::f32_to_f16_bytes_ref(x, y))],
        "Q8_0" => vec![
            ("ref", |x, y, _| q8_0::quantize_row_ref(x, y)),
            ("portable", |x, y, _| q8_0::quantize_row_portable(x, y)),
        ],
        "Q4_0" => legacy!(q4_0),
        "Q4_1" => legacy!(q4_1),
        "Q5_0" => legacy!(q5_0),
        "Q5_1" => legacy!(q5_1),
        "Q2_K" => k!(q2_k),
        "Q3_K" => k!(q3_k),
        "Q4_K" => k!(q4_k),
        "Q5_K" => k!(q5_k),
        "Q6_K" => vec![("ref", |x, y, w| q6_k::quantize_row_with(x, y, w, false))],
        "IQ4_NL" => vec![("ref", |x, y, w| iq4::quantize_row_nl_with(x, y, w, false))],
        "IQ4_XS" => vec![("ref", |x, y, w| iq4::quantize_row_xs_with(x, y, w, false))],
        "TQ1_0" => vec![("ref", |x, y, _| {
            ternary::quantize_row_tq1_0_with(x, y, false)
        })],
        "TQ2_0" => vec![("ref", |x, y, _| {
            ternary::quantize_row_tq2_0_with(x, y, false)
        })],
        _ => vec![],
    }
}

#[test]
fn scalar_twins_reproduce_every_golden_record() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for name in TYPES {
        let path = golden_dir().join(format!("{name}.bin"));
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file = golden::parse(&data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (twin, f) in twins(name) {
            for r in file.records.iter().filter(|r| !r.aborted) {
                let (x, im) = make_case(r.case);
                let imatrix = r.imatrix.then_some(&im[..]);
                let rb = r.n_bytes / r.rows;
                let mut q = vec![0u8; r.n_bytes];
                for (xr, qr) in x.chunks_exact(r.width).zip(q.chunks_exact_mut(rb)) {
                    f(xr, qr, imatrix);
                }
                checked += 1;
                if fnv1a(&q) != r.bytes_hash {
                    failures.push(format!(
                        "{name} {twin} {}{}",
                        describe(r.case),
                        if r.imatrix { " with imatrix" } else { "" }
                    ));
                }
            }
        }
    }
    assert!(checked > 500, "only {checked} records checked");
    assert!(
        failures.is_empty(),
        "scalar twins differ from ggml:\n{}",
        failures.join("\n")
    );
}
