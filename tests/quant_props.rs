//! Properties of the kernels beyond bit-exactness: round-trip error within each
//! type's bound, importance weights lowering the weighted error, fast paths and
//! the parallel path giving the reference bytes, and clear errors on bad shapes.

use laquant::gguf::types::GgmlType;
use laquant::quant::golden::SplitMix;
use laquant::quant::{self, dequantize, quantize_rows, quantize_tensor, QuantError};
use proptest::prelude::*;

/// (type, bound on RMS error / RMS of the input for dense normal or heavy-tailed rows;
/// about 1.4x the largest ratio seen over many such rows).
const BOUNDS: &[(GgmlType, f32)] = &[
    (GgmlType::F16, 0.001),
    (GgmlType::BF16, 0.005),
    (GgmlType::Q8_0, 0.012),
    (GgmlType::Q6K, 0.035),
    (GgmlType::Q5_0, 0.08),
    (GgmlType::Q5_1, 0.07),
    (GgmlType::Q5K, 0.07),
    (GgmlType::Q4_0, 0.14),
    (GgmlType::Q4_1, 0.13),
    (GgmlType::Q4K, 0.12),
    (GgmlType::IQ4NL, 0.12),
    (GgmlType::IQ4XS, 0.12),
    (GgmlType::Q3K, 0.25),
    (GgmlType::Q2K, 0.45),
    (GgmlType::MXFP4, 0.21),
    // (NVFP4 has no bound here: ggml's NVFP4 has no per-tensor scale, so sub-blocks whose
    // largest magnitude is below about 6 * 2^-10 decode to zero; it is checked against its
    // definition in round_to_nearest_formats_pick_the_nearest_level.)
    // Largest seen over 24 rows of each kind: IQ2_S 0.33, IQ1_S 0.60, IQ1_M 0.62.
    (GgmlType::IQ2S, 0.42),
    (GgmlType::IQ1M, 0.75),
    (GgmlType::IQ1S, 0.72),
    // Largest seen over 24 rows of each kind: IQ3_S 0.22, IQ3_XXS 0.32, IQ2_XS 0.36, IQ2_XXS 0.43.
    (GgmlType::IQ3S, 0.32),
    (GgmlType::IQ3XXS, 0.45),
    (GgmlType::IQ2XS, 0.5),
    (GgmlType::IQ2XXS, 0.6),
    // Ternary and 1-bit codes lose most small values: a ratio below 1 is all they promise
    // (largest seen over 40000 rows: Q1_0 0.76, Q2_0 0.81, TQ1_0 = TQ2_0 0.92).
    (GgmlType::Q1_0, 0.9),
    (GgmlType::Q2_0, 0.95),
    (GgmlType::TQ2_0, 0.98),
    (GgmlType::TQ1_0, 0.98),
];

fn roundtrip(ty: GgmlType, x: &[f32], width: usize, im: Option<&[f32]>) -> Vec<f32> {
    let q = quantize_tensor(ty, x, width, im).unwrap();
    let rb = q.len() / (x.len() / width);
    let mut y = vec![0f32; x.len()];
    for (o, b) in y.chunks_exact_mut(width).zip(q.chunks_exact(rb)) {
        dequantize(ty, b, o).unwrap();
    }
    y
}

fn rel_rms(x: &[f32], y: &[f32]) -> f32 {
    let e: f64 = x.iter().zip(y).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let s: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    (e / s.max(1e-30)).sqrt() as f32
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn roundtrip_error_within_bound(
        seed in any::<u64>(),
        heavy in any::<bool>(),
        scale in prop::sample::select(vec![1e-3f32, 0.02, 1.0, 300.0]),
    ) {
        // Dense rows (normal or heavy-tailed): the regime the bounds describe.
        let mut s = SplitMix(seed);
        let x: Vec<f32> = (0..512)
            .map(|_| {
                let g = s.gauss();
                if heavy { g / (s.unif() + 0.2) * scale } else { g * scale }
            })
            .collect();
        for &(ty, bound) in BOUNDS {
            for im in [None, Some(&[1.0f32; 512][..])] {
                if im.is_none() && quant::requires_imatrix(ty) {
                    continue;
                }
                let y = roundtrip(ty, &x, 512, im);
                let r = rel_rms(&x, &y);
                if std::env::var_os("LAQUANT_PRINT_ERR").is_some() {
                    eprintln!("{ty} {r}");
                }
                prop_assert!(r <= bound, "{ty}: relative RMS error {r} > {bound}");
            }
        }
    }

    #[test]
    fn legacy_blocks_max_error_bounded(x in prop::collection::vec(-1.0f32..1.0, 256)) {
        // Per block of 32 with largest magnitude A, the level step bounds the error.
        for (ty, step) in [(GgmlType::Q8_0, 1.0 / 127.0), (GgmlType::Q4_0, 1.0 / 8.0), (GgmlType::Q5_0, 1.0 / 16.0),
                           (GgmlType::Q4_1, 2.0 / 15.0), (GgmlType::Q5_1, 2.0 / 31.0)] {
            let y = roundtrip(ty, &x, 256, None);
            for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
                let a = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (u, v) in xb.iter().zip(yb) {
                    // one full step at the clamped end (Q4_0/Q5_0), half a step elsewhere, plus f16 scale rounding
                    prop_assert!((u - v).abs() <= a * step * 1.01 + 1e-6, "{ty}: |{u} - {v}| > step of block max {a}");
                }
            }
        }
    }

    #[test]
    fn f16_fast_path_equals_reference(bits in prop::collection::vec(any::<u32>(), 0..300)) {
        let x: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        let mut a = vec![0u8; 2 * x.len()];
        let mut b = vec![0u8; 2 * x.len()];
        quant::float::f32_to_f16_bytes(&x, &mut a);
        quant::float::f32_to_f16_bytes_ref(&x, &mut b);
        prop_assert_eq!(a, b);
        // BF16: the dispatching path (AVX2 build where available) against one value at a time.
        let mut a = vec![0u8; 2 * x.len()];
        quant::float::f32_to_bf16_bytes(&x, &mut a);
        let b: Vec<u8> = x.iter().flat_map(|&v| quant::float::f32_to_bf16_bits(v).to_le_bytes()).collect();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn legacy_fast_paths_equal_reference(
        x in prop::collection::vec(prop_oneof![
            4 => -2.0f32..2.0,
            1 => any::<u32>().prop_map(f32::from_bits),
            1 => Just(0.0f32),
            1 => Just(-0.0f32),
            1 => (-64i32..64).prop_map(|k| k as f32 * 0.5),
        ], 32 * 8)
    ) {
        // Each fast path (the dispatching one, the portable one and, on x86-64 with AVX2,
        // the std::arch one) against the scalar reference, block by block.
        type Row = fn(&[f32], &mut [u8]);
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut cases: Vec<(&str, usize, Row, Row)> = vec![
            ("q8_0", 34, quant::q8_0::quantize_row, quant::q8_0::quantize_row_ref),
            ("q8_0 portable", 34, quant::q8_0::quantize_row_portable, quant::q8_0::quantize_row_ref),
            ("q4_0", 18, quant::q4_0::quantize_row, quant::q4_0::quantize_row_ref),
            ("q4_0 portable", 18, quant::q4_0::quantize_row_portable, quant::q4_0::quantize_row_ref),
            ("q4_1", 20, quant::q4_1::quantize_row, quant::q4_1::quantize_row_ref),
            ("q4_1 portable", 20, quant::q4_1::quantize_row_portable, quant::q4_1::quantize_row_ref),
            ("q5_0", 22, quant::q5_0::quantize_row, quant::q5_0::quantize_row_ref),
            ("q5_0 portable", 22, quant::q5_0::quantize_row_portable, quant::q5_0::quantize_row_ref),
            ("q5_1", 24, quant::q5_1::quantize_row, quant::q5_1::quantize_row_ref),
            ("q5_1 portable", 24, quant::q5_1::quantize_row_portable, quant::q5_1::quantize_row_ref),
        ];
        #[cfg(target_arch = "x86_64")]
        if quant::legacy_avx2::available() {
            use quant::legacy_avx2 as v;
            cases.push(("q8_0 avx2", 34, |x, y| assert!(v::quantize_q8_0(x, y)), quant::q8_0::quantize_row_ref));
            cases.push(("q4_0 avx2", 18, |x, y| assert!(v::quantize_q4_0(x, y)), quant::q4_0::quantize_row_ref));
            cases.push(("q4_1 avx2", 20, |x, y| assert!(v::quantize_q4_1(x, y)), quant::q4_1::quantize_row_ref));
            cases.push(("q5_0 avx2", 22, |x, y| assert!(v::quantize_q5_0(x, y)), quant::q5_0::quantize_row_ref));
            cases.push(("q5_1 avx2", 24, |x, y| assert!(v::quantize_q5_1(x, y)), quant::q5_1::quantize_row_ref));
        }
        // Also with the odd values tamed, so that most blocks take the fast code, and scaled
        // into the subnormal and the near-overflow ranges, where the scale's inverse misbehaves.
        let tame: Vec<f32> = x.iter().map(|&v| if v.abs() < 1e3 && v.abs() > 1e-3 { v } else { 0.25 }).collect();
        let scaled = |s: f32| -> Vec<f32> { tame.iter().map(|&v| v * s).collect() };
        for input in [x.clone(), tame.clone(), scaled(1e-36), scaled(3e-39), scaled(1e-44), scaled(1e35), scaled(-1.7e38)] {
            for &(name, bytes, fast, reference) in &cases {
                let mut a = vec![0u8; bytes * 8];
                let mut b = vec![0u8; bytes * 8];
                fast(&input, &mut a);
                reference(&input, &mut b);
                prop_assert_eq!(a, b, "{} on {:?}", name, &input);
            }
        }
    }
}

/// Many blocks of many kinds (normal at scales from subnormal to huge, exact halves that
/// make rounding ties, constants, one outlier, signed zeros, a NaN or an infinity): every
/// legacy fast path gives the reference bytes.
#[test]
fn legacy_fast_paths_equal_reference_on_many_blocks() {
    let mut s = SplitMix(7);
    let blocks = 40_000;
    let mut x = Vec::with_capacity(32 * blocks);
    for _ in 0..blocks {
        let kind = s.next_u64() % 9;
        let scale = [1e-40f32, 1e-37, 1e-20, 0.02, 1.0, 1e20, 1e37][(s.next_u64() % 7) as usize];
        let c = s.gauss() * scale;
        for i in 0..32 {
            let v = match kind {
                0 | 1 => s.gauss() * scale,
                2 => ((s.next_u64() % 33) as f32 - 16.0) * 0.5,
                3 => ((s.next_u64() % 255) as f32 - 127.0) / 8.0,
                4 => c,
                5 => {
                    if i == (s.next_u64() % 32) as usize {
                        1e4
                    } else {
                        s.gauss()
                    }
                }
                6 => [0.0, -0.0, 1.0, -1.0][(s.next_u64() % 4) as usize] * scale,
                7 => {
                    if s.next_u64().is_multiple_of(40) {
                        [f32::NAN, f32::INFINITY, -f32::INFINITY][(s.next_u64() % 3) as usize]
                    } else {
                        s.gauss()
                    }
                }
                _ => f32::from_bits(s.next_u64() as u32),
            };
            x.push(v);
        }
    }
    type Row = fn(&[f32], &mut [u8]);
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut pairs: Vec<(&str, usize, Row, Row)> = vec![
        (
            "q8_0",
            34,
            quant::q8_0::quantize_row,
            quant::q8_0::quantize_row_ref,
        ),
        (
            "q4_0",
            18,
            quant::q4_0::quantize_row,
            quant::q4_0::quantize_row_ref,
        ),
        (
            "q4_1",
            20,
            quant::q4_1::quantize_row,
            quant::q4_1::quantize_row_ref,
        ),
        (
            "q5_0",
            22,
            quant::q5_0::quantize_row,
            quant::q5_0::quantize_row_ref,
        ),
        (
            "q5_1",
            24,
            quant::q5_1::quantize_row,
            quant::q5_1::quantize_row_ref,
        ),
        (
            "q8_0 portable",
            34,
            quant::q8_0::quantize_row_portable,
            quant::q8_0::quantize_row_ref,
        ),
        (
            "q4_0 portable",
            18,
            quant::q4_0::quantize_row_portable,
            quant::q4_0::quantize_row_ref,
        ),
        (
            "q4_1 portable",
            20,
            quant::q4_1::quantize_row_portable,
            quant::q4_1::quantize_row_ref,
        ),
        (
            "q5_0 portable",
            22,
            quant::q5_0::quantize_row_portable,
            quant::q5_0::quantize_row_ref,
        ),
        (
            "q5_1 portable",
            24,
            quant::q5_1::quantize_row_portable,
            quant::q5_1::quantize_row_ref,
        ),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        use quant::legacy_avx2 as v;
        // Prove that the std::arch kernels ran, not only the dispatcher's fallback.
        eprintln!("AVX2 kernels available: {}", v::available());
        if v::available() {
            pairs.push((
                "q8_0 avx2",
                34,
                |x, y| assert!(v::quantize_q8_0(x, y)),
                quant::q8_0::quantize_row_ref,
            ));
            pairs.push((
                "q4_0 avx2",
                18,
                |x, y| assert!(v::quantize_q4_0(x, y)),
                quant::q4_0::quantize_row_ref,
            ));
            pairs.push((
                "q4_1 avx2",
                20,
                |x, y| assert!(v::quantize_q4_1(x, y)),
                quant::q4_1::quantize_row_ref,
            ));
            pairs.push((
                "q5_0 avx2",
                22,
                |x, y| assert!(v::quantize_q5_0(x, y)),
                quant::q5_0::quantize_row_ref,
            ));
            pairs.push((
                "q5_1 avx2",
                24,
                |x, y| assert!(v::quantize_q5_1(x, y)),
                quant::q5_1::quantize_row_ref,
            ));
        }
    }
    for (name, bytes, fast, reference) in pairs {
        let mut a = vec![0u8; bytes * blocks];
        let mut b = vec![0u8; bytes * blocks];
        fast(&x, &mut a);
        reference(&x, &mut b);
        for (i, (p, q)) in a.chunks(bytes).zip(b.chunks(bytes)).enumerate() {
            assert_eq!(p, q, "{name}: block {i} {:?}", &x[32 * i..32 * i + 32]);
        }
    }
}

/// Rows with a spread of column scales and importance weights that favour some columns.
fn weighted_rows(seed: u64, rows: usize, width: usize) -> (Vec<f32>, Vec<f32>) {
    let mut s = SplitMix(seed);
    let col: Vec<f32> = (0..width).map(|_| 0.2 + s.unif() * 2.0).collect();
    let x = (0..rows * width)
        .map(|i| s.gauss() * col[i % width] * 0.02)
        .collect();
    let im = (0..width)
        .map(|_| {
            let u = s.unif();
            u * u * u * 100.0 + 0.01
        })
        .collect();
    (x, im)
}

#[test]
fn importance_weights_lower_weighted_error_on_average() {
    let width = 512;
    let rows = 48;
    let (x, im) = weighted_rows(7, rows, width);
    for &(ty, _) in BOUNDS {
        if !ty.is_quantized() || ty == GgmlType::Q8_0 || quant::requires_imatrix(ty) {
            continue; // F16/BF16 and Q8_0 ignore importance weights; IQ2_XXS/IQ2_XS need them
        }
        let werr = |y: &[f32]| -> f64 {
            x.iter()
                .zip(y)
                .enumerate()
                .map(|(i, (a, b))| im[i % width] as f64 * ((a - b) as f64).powi(2))
                .sum()
        };
        let plain = werr(&roundtrip(ty, &x, width, None));
        let weighted = werr(&roundtrip(ty, &x, width, Some(&im)));
        assert!(
            weighted <= plain,
            "{ty}: weighted error with imatrix {weighted} > without {plain}"
        );
    }
}

#[test]
fn parallel_tensor_equals_serial_rows() {
    let width = 4096;
    let rows = 40; // several rayon chunks
    let (x, im) = weighted_rows(11, rows, width);
    for &ty in quant::SUPPORTED {
        for imatrix in [None, Some(&im[..])] {
            if imatrix.is_none() && quant::requires_imatrix(ty) {
                continue;
            }
            let par = quantize_tensor(ty, &x, width, imatrix).unwrap();
            let mut ser = vec![0u8; par.len()];
            quantize_rows(ty, &x, width, imatrix, &mut ser).unwrap();
            assert!(par == ser, "{ty}: parallel bytes differ from serial");
        }
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let x = vec![0f32; 300];
    assert_eq!(
        quantize_tensor(GgmlType::Q4K, &x, 300, None),
        Err(QuantError::Width {
            ty: GgmlType::Q4K,
            width: 300,
            block: 256
        })
    );
    assert!(matches!(
        quantize_tensor(GgmlType::Q8_0, &x, 64, None),
        Err(QuantError::Shape { .. })
    ));
    assert!(matches!(
        quantize_tensor(GgmlType::Q4_0, &x[..256], 256, Some(&[1.0; 10])),
        Err(QuantError::Imatrix { .. })
    ));
    let mut small = vec![0u8; 10];
    assert!(matches!(
        quantize_rows(GgmlType::Q8_0, &x[..32], 32, None, &mut small),
        Err(QuantError::Bytes { .. })
    ));
    let mut out = vec![0f32; 32];
    assert!(matches!(
        dequantize(GgmlType::Q4_0, &[0u8; 17], &mut out),
        Err(QuantError::Bytes { .. })
    ));
    assert!(matches!(
        quantize_tensor(GgmlType::Q8K, &x[..256], 256, None),
        Err(QuantError::Unsupported(_))
    ));
    // ggml asserts; laquant says what is missing.
    for ty in [GgmlType::IQ2XXS, GgmlType::IQ2XS, GgmlType::IQ1S] {
        assert_eq!(
            quantize_tensor(ty, &x[..256], 256, None),
            Err(QuantError::NeedsImatrix(ty))
        );
    }
}

/// A 256-value row: mostly normal, with zeros, ties, huge and tiny values mixed in.
fn hostile_row() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(
        prop_oneof![
            8 => -1.0f32..1.0,
            1 => Just(0.0f32),
            1 => (-16i32..16).prop_map(|k| k as f32 * 0.5),
            1 => prop::sample::select(vec![1e4f32, -3e38, 1e-20, -1e-40, f32::NAN, f32::INFINITY]),
        ],
        256,
    )
}

/// Runs a `(x, y, lanes)` quantizer both ways and compares the bytes.
fn same_both_ways(
    x: &[f32],
    bytes: usize,
    f: impl Fn(&[f32], &mut [u8], bool),
) -> Result<(), TestCaseError> {
    let mut a = vec![0u8; bytes];
    let mut b = vec![0u8; bytes];
    f(x, &mut a, true);
    f(x, &mut b, false);
    prop_assert_eq!(a, b);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn lane_paths_equal_scalar_paths(x in hostile_row(), w in prop::collection::vec(0.001f32..10.0, 256)) {
        use laquant::quant::k_quants::{q2_k, q3_k, q4_k, q5_k, q6_k};
        same_both_ways(&x, 110, q3_k::quantize_row_ref_with)?;
        #[cfg(target_arch = "x86_64")]
        same_both_ways(&x, 110, |x, y, l| {
            // The AVX2 kernel in the AVX2 build where the CPU has it (the lanes otherwise) against ggml's order.
            if l {
                if !q3_k::quantize_row_ref_avx2(x, y) {
                    q3_k::quantize_row_ref_with(x, y, true);
                }
            } else {
                q3_k::quantize_row_ref_with(x, y, false);
            }
        })?;
        same_both_ways(&x, 110, |x, y, l| q3_k::quantize_row_imatrix_with(x, y, &w, l))?;
        same_both_ways(&x, 84, q2_k::quantize_row_ref_with)?;
        same_both_ways(&x, 84, |x, y, l| q2_k::quantize_row_imatrix_with(x, y, &w, l))?;
        // IQ4: the fast row (branch-free search, AVX2 build) against ggml's binary search.
        use laquant::quant::iq4;
        let wo = Some(&w[..]);
        same_both_ways(&x, 144, |x, y, f| if f { iq4::quantize_row_nl(x, y, None) } else { iq4::quantize_row_nl_with(x, y, None, false) })?;
        same_both_ways(&x, 144, |x, y, f| if f { iq4::quantize_row_nl(x, y, wo) } else { iq4::quantize_row_nl_with(x, y, wo, false) })?;
        same_both_ways(&x, 136, |x, y, f| if f { iq4::quantize_row_xs(x, y, None) } else { iq4::quantize_row_xs_with(x, y, None, false) })?;
        same_both_ways(&x, 136, |x, y, f| if f { iq4::quantize_row_xs(x, y, wo) } else { iq4::quantize_row_xs_with(x, y, wo, false) })?;
        same_both_ways(&x, 144, |x, y, f| iq4::quantize_row_nl_with(x, y, wo, f))?;
        // Ternary: inline rounding against the lroundf emulation.
        use laquant::quant::ternary;
        same_both_ways(&x, 54, ternary::quantize_row_tq1_0_with)?;
        same_both_ways(&x, 66, ternary::quantize_row_tq2_0_with)?;
        same_both_ways(&x, 144, q4_k::quantize_row_ref_with)?;
        same_both_ways(&x, 144, |x, y, l| q4_k::quantize_row_imatrix_with(x, y, &w, l))?;
        same_both_ways(&x, 176, q5_k::quantize_row_ref_with)?;
        same_both_ways(&x, 176, |x, y, l| q5_k::quantize_row_imatrix_with(x, y, &w, l))?;
        same_both_ways(&x, 210, |x, y, l| q6_k::quantize_row_with(x, y, None, l))?;
        same_both_ways(&x, 210, |x, y, l| q6_k::quantize_row_with(x, y, Some(&w), l))?;
        // The dispatched fast paths (AVX2 intrinsics where the CPU has them) and the
        // intrinsics outside the AVX2 build, against ggml's order.
        use laquant::quant::lanes::Kernel;
        let best = Kernel::best();
        let fast = |f: bool| if f { best } else { Kernel::Scalar };
        same_both_ways(&x, 110, |x, y, f| if f { q3_k::quantize_row_ref(x, y) } else { q3_k::quantize_row_ref_with(x, y, false) })?;
        same_both_ways(&x, 110, |x, y, f| q3_k::quantize_row_ref_in(x, y, fast(f)))?;
        same_both_ways(&x, 144, |x, y, f| if f { q4_k::quantize_row_ref(x, y) } else { q4_k::quantize_row_ref_with(x, y, false) })?;
        same_both_ways(&x, 144, |x, y, f| if f { q4_k::quantize_row_imatrix(x, y, &w) } else { q4_k::quantize_row_imatrix_with(x, y, &w, false) })?;
        same_both_ways(&x, 144, |x, y, f| q4_k::quantize_row_ref_in(x, y, fast(f)))?;
        same_both_ways(&x, 144, |x, y, f| q4_k::quantize_row_imatrix_in(x, y, &w, fast(f)))?;
        same_both_ways(&x, 176, |x, y, f| if f { q5_k::quantize_row_ref(x, y) } else { q5_k::quantize_row_ref_with(x, y, false) })?;
        same_both_ways(&x, 176, |x, y, f| if f { q5_k::quantize_row_imatrix(x, y, &w) } else { q5_k::quantize_row_imatrix_with(x, y, &w, false) })?;
        same_both_ways(&x, 176, |x, y, f| q5_k::quantize_row_ref_in(x, y, fast(f)))?;
        same_both_ways(&x, 176, |x, y, f| q5_k::quantize_row_imatrix_in(x, y, &w, fast(f)))?;
        same_both_ways(&x, 210, |x, y, f| if f { q6_k::quantize_row_ref(x, y) } else { q6_k::quantize_row_with(x, y, None, false) })?;
        same_both_ways(&x, 210, |x, y, f| if f { q6_k::quantize_row_imatrix(x, y, &w) } else { q6_k::quantize_row_with(x, y, Some(&w), false) })?;
        same_both_ways(&x, 210, |x, y, f| q6_k::quantize_row_in(x, y, None, fast(f)))?;
        same_both_ways(&x, 210, |x, y, f| q6_k::quantize_row_in(x, y, Some(&w), fast(f)))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Seven super-blocks: the K-quant rows run four side by side (AVX-512), then a pair, then
    /// the last alone.
    #[test]
    fn k_quant_block_pairs_equal_scalar(
        x in prop::collection::vec(hostile_row(), 7),
        w in prop::collection::vec(0.001f32..10.0, 7 * 256),
    ) {
        use laquant::quant::k_quants::{q4_k, q5_k, q6_k};
        let x: Vec<f32> = x.concat();
        same_both_ways(&x, 7 * 144, |x, y, f| if f { q4_k::quantize_row_ref(x, y) } else { q4_k::quantize_row_ref_with(x, y, false) })?;
        same_both_ways(&x, 7 * 144, |x, y, f| if f { q4_k::quantize_row_imatrix(x, y, &w) } else { q4_k::quantize_row_imatrix_with(x, y, &w, false) })?;
        same_both_ways(&x, 7 * 144, q4_k::quantize_row_ref_with)?;
        same_both_ways(&x, 7 * 176, |x, y, f| if f { q5_k::quantize_row_ref(x, y) } else { q5_k::quantize_row_ref_with(x, y, false) })?;
        same_both_ways(&x, 7 * 176, |x, y, f| if f { q5_k::quantize_row_imatrix(x, y, &w) } else { q5_k::quantize_row_imatrix_with(x, y, &w, false) })?;
        same_both_ways(&x, 7 * 176, |x, y, l| q5_k::quantize_row_imatrix_with(x, y, &w, l))?;
        same_both_ways(&x, 7 * 210, |x, y, f| if f { q6_k::quantize_row_imatrix(x, y, &w) } else { q6_k::quantize_row_with(x, y, Some(&w), false) })?;
        use laquant::quant::k_quants::q3_k;
        same_both_ways(&x, 7 * 110, |x, y, f| if f { q3_k::quantize_row_ref(x, y) } else { q3_k::quantize_row_ref_with(x, y, false) })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn legacy_imatrix_lanes_equal_scalar(
        x in hostile_row(),
        w in prop::collection::vec(0.001f32..10.0, 256),
        blocks in 1usize..=(4 * LANE_BLOCKS + 3),
    ) {
        use laquant::quant::{q4_0, q4_1, q5_0, q5_1};
        // 1 to 35 blocks of 32: a lone block (scalar), a part of a lane set
        // (padded), one set, two sets (one call), two calls and a padded rest.
        let n = 32 * blocks;
        let x: Vec<f32> = x.iter().cycle().take(n).copied().collect();
        let w: Vec<f32> = w.iter().cycle().take(n).copied().collect();
        let nb = n / 32;
        same_both_ways(&x, 18 * nb, |x, y, l| q4_0::quantize_row_imatrix_with(x, y, &w, l))?;
        same_both_ways(&x, 20 * nb, |x, y, l| q4_1::quantize_row_imatrix_with(x, y, &w, l))?;
        same_both_ways(&x, 22 * nb, |x, y, l| q5_0::quantize_row_imatrix_with(x, y, &w, l))?;
        same_both_ways(&x, 24 * nb, |x, y, l| q5_1::quantize_row_imatrix_with(x, y, &w, l))?;
    }
}

const LANE_BLOCKS: usize = 8;

/// Decodes and quantizes `x` (one row) as `ty`.
fn roundtrip_row(ty: GgmlType, x: &[f32]) -> Vec<f32> {
    roundtrip(ty, x, x.len(), None)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The round-to-nearest formats against their definitions, on finite rows: each value
    /// decodes to the nearest level of its block's scale (ternary and Q2_0: -1, 0, 1 times the
    /// largest magnitude in f16, half away from zero; MXFP4: the nearest doubled E2M1 code times
    /// the power-of-two half scale; Q1_0: the sign times the f16 mean magnitude).
    #[test]
    fn round_to_nearest_formats_pick_the_nearest_level(
        x in prop::collection::vec(prop_oneof![
            6 => -1.0f32..1.0,
            1 => Just(0.0f32),
            1 => Just(-0.0f32),
            1 => (-8i32..8).prop_map(|k| k as f32 * 0.125),
        ], 512),
        scale in prop::sample::select(vec![1e-6f32, 0.02, 1.0, 1e4]),
    ) {
        use half::f16;
        let x: Vec<f32> = x.iter().map(|v| v * scale).collect();
        let f16r = |v: f32| f16::from_f32(v).to_f32();
        for (ty, block) in [(GgmlType::TQ1_0, 256), (GgmlType::TQ2_0, 256), (GgmlType::Q2_0, 64)] {
            let y = roundtrip_row(ty, &x);
            for (xb, yb) in x.chunks(block).zip(y.chunks(block)) {
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = f16r(amax);
                for (&u, &v) in xb.iter().zip(yb) {
                    let level = if amax > 0.0 { (u * (1.0 / amax)).round() } else { 0.0 };
                    prop_assert_eq!(v, level * d, "{}: {} in a block of max {}", ty, u, amax);
                }
            }
        }
        let y = roundtrip_row(GgmlType::Q1_0, &x);
        for (xb, yb) in x.chunks(128).zip(y.chunks(128)) {
            let mut sum = 0f32;
            for v in xb {
                sum += v.abs();
            }
            let d = f16r(sum / 128.0);
            for (&u, &v) in xb.iter().zip(yb) {
                prop_assert_eq!(v, if u >= 0.0 { d } else { -d }, "Q1_0: {}", u);
            }
        }
        let y = roundtrip_row(GgmlType::MXFP4, &x);
        for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            if amax == 0.0 {
                prop_assert!(yb.iter().all(|&v| v == 0.0));
                continue;
            }
            // The half scale: 2^(floor(log2 amax) - 3).
            let d = 2f32.powi(amax.log2().floor() as i32 - 3);
            for (&u, &v) in xb.iter().zip(yb) {
                let codes = [0.0f32, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0];
                prop_assert!(codes.iter().any(|&c| v.abs() == c * d), "MXFP4: {} is not a code of {}", v, d);
                for c in codes {
                    for s in [1.0f32, -1.0] {
                        prop_assert!((u - v).abs() <= (u - s * c * d).abs(), "MXFP4: {} -> {}, but {} is nearer", u, v, s * c * d);
                    }
                }
            }
        }
        // NVFP4: sub-blocks of 16, the scale amax / 6 rounded half up to 3 mantissa bits
        // (UE4M3, clamped at 448), the half of it times the doubled E2M1 codes.
        let y = roundtrip_row(GgmlType::NVFP4, &x);
        for (xb, yb) in x.chunks(16).zip(y.chunks(16)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = amax / 6.0;
            if s < 2f32.powi(-6) {
                continue; // UE4M3's subnormal range: left to the golden vectors
            }
            let full = if s > 448.0 {
                448.0
            } else {
                let e = 2f32.powi(s.log2().floor() as i32);
                let m = (s / e * 8.0 + 0.5).floor() / 8.0;
                (m * e).min(448.0)
            };
            let d = full / 2.0;
            let codes = [0.0f32, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0];
            for (&u, &v) in xb.iter().zip(yb) {
                prop_assert!(codes.iter().any(|&c| v.abs() == c * d), "NVFP4: {} is not a code of {}", v, d);
                for c in codes {
                    for sg in [1.0f32, -1.0] {
                        prop_assert!((u - v).abs() <= (u - sg * c * d).abs(), "NVFP4: {} -> {}, but {} is nearer", u, v, sg * c * d);
                    }
                }
            }
        }
    }
}
