//! `--target-bpw` on a checkpoint whose feed-forward weights already sit on a
//! quantized grid (a QAT checkpoint, one dequantized from a GGUF: issue 21's
//! Gemma 3 270M rebuilt from a Q4_K_M file), through the library's job, as the
//! CLI runs it: a temporary copy of `fixtures/qwen2-tied` whose `ffn_gate` /
//! `ffn_up` weights are replaced by their Q5_0 round trip (la-mix's base type at
//! their width 128: Q4_K falls back to Q5_0), planned at Q4_K_M's size.

use laquant::job::{CacheDir, CalibSource, Calibration, Job, SensitivitySize};
use laquant::pipeline::{ConvertOptions, OutType, TensorPlan};
use laquant::policy::sensitivity::round_trip;
use laquant::GgmlType;
use safetensors::tensor::{Dtype, TensorView};
use std::path::{Path, PathBuf};

mod common;

/// The HF tensors put on Q5_0's grid: the gate of both layers, the up
/// projection of layer 0 (so `ffn_up` of layer 0 borrows layer 1's α, and
/// `ffn_gate`, with no measured α of its own role, any group's largest).
const ALIGNED: [&str; 3] = [
    "model.layers.0.mlp.gate_proj.weight",
    "model.layers.1.mlp.gate_proj.weight",
    "model.layers.0.mlp.up_proj.weight",
];

/// A copy of the fixture in `dir` with the [`ALIGNED`] tensors on Q5_0's grid
/// (every tensor written as F32; the others keep their values), and `nudge`
/// weights of `blk.1.ffn_gate` moved off it by a tenth of a grid step.
fn aligned_fixture(dir: &Path, nudge: usize) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/qwen2-tied");
    let dst = dir.join("model");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "model.safetensors" {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        assert_eq!(view.dtype(), Dtype::BF16, "{name}");
        let mut w: Vec<f32> = view
            .data()
            .chunks_exact(2)
            .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
            .collect();
        let shape = view.shape().to_vec();
        if ALIGNED.contains(&name.as_str()) {
            let width = *shape.last().unwrap();
            w = round_trip(GgmlType::Q5_0, &w, width, None).unwrap();
            if name == ALIGNED[1] {
                for (k, x) in w.iter_mut().take(nudge * 97).step_by(97).enumerate() {
                    *x += if k % 2 == 0 { 1e-4 } else { -1e-4 };
                }
            }
        }
        tensors.push((
            name,
            shape,
            w.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ));
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), d).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dst.join("model.safetensors")).unwrap();
    dst
}

fn plan(model: &Path, corpus: &Path, outtype: OutType, calibrated: bool) -> Vec<TensorPlan> {
    let job = Job {
        model: model.to_str().unwrap().into(),
        options: ConvertOptions {
            outtype,
            ..Default::default()
        },
        calibration: Calibration {
            source: if calibrated {
                CalibSource::Dir(corpus.to_path_buf())
            } else {
                CalibSource::None
            },
            ctx: 64,
            chunks: Some(2),
            cache: CacheDir::Off,
            sensitivity: SensitivitySize {
                tokens: Some(16),
                groups: Some(100),
                budget: None,
            },
            ..Default::default()
        },
    };
    job.plan(2, &|_| {}).unwrap().1
}

fn bpw(p: &[TensorPlan]) -> f64 {
    let bits: f64 = p.iter().map(|t| 8.0 * t.bytes as f64).sum();
    bits / p.iter().map(|t| t.n_elements() as f64).sum::<f64>()
}

/// The GGUF names of [`ALIGNED`].
const ALIGNED_GGUF: [&str; 3] = [
    "blk.0.ffn_gate.weight",
    "blk.1.ffn_gate.weight",
    "blk.0.ffn_up.weight",
];

fn alpha_from(t: &TensorPlan) -> serde_json::Value {
    serde_json::to_value(t.score.as_ref().unwrap()).unwrap()["alpha_from"].clone()
}

/// `--target-bpw` at Q4_K_M's size (the Q4_K_M plan's bits per weight) keeps the
/// tensors on Q5_0's grid at 4 bits per weight or more (Q5_0, where they lose
/// nothing, or Q4_1): with α 0 (summed base error 0, before the zero-error rule)
/// every type of them cost nothing and they went to Q1_0. Their α is borrowed
/// (`ffn_up` of layer 0 from layer 1's, `ffn_gate` from the largest of any group),
/// and the reason and `alpha_from` say so. With 3 weights of one of them moved off the
/// grid by 1e-4, its base error is not 0 but below what the measurement resolves: its
/// measured α was 20000 times `ffn_up`'s (its ΔKLD is the activation rounding's), above
/// every resolved α; it borrows as an exact one.
#[test]
fn target_bpw_keeps_weights_on_a_grid_at_their_grid() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::corpus_dir(&["en", "zh"]);
    for nudge in [0, 3] {
        let dir = tmp.path().join(format!("n{nudge}"));
        let model = aligned_fixture(&dir, nudge);
        let q4 = plan(
            &model,
            corpus.path(),
            OutType::parse("q4_k_m", false).unwrap(),
            false,
        );
        let target = bpw(&q4);
        let p = plan(&model, corpus.path(), OutType::TargetBpw(target), true);
        assert!(bpw(&p) <= target + 1e-9, "{} over {target}", bpw(&p));
        let get = |name: &str| p.iter().find(|t| t.name == name).unwrap();
        let resolved: Vec<f64> = (p.iter())
            .filter(|t| t.score.is_some() && alpha_from(t)["kind"] == "measured")
            .map(|t| t.score.as_ref().unwrap().alpha.unwrap())
            .collect();
        assert!(resolved.len() >= 10, "{nudge}: {resolved:?}");
        let most = resolved.iter().cloned().fold(0.0, f64::max);
        for (k, name) in ALIGNED_GGUF.iter().enumerate() {
            let t = get(name);
            let s = t.score.as_ref().unwrap();
            let what = format!("nudge {nudge} {name} {}: {}", t.ty.name(), t.reason);
            eprintln!("{what}");
            let exact = nudge == 0 || k != 1;
            assert_eq!(s.base_error == 0.0, exact, "{what}");
            assert!(t.ty.bits_per_weight() >= 4.0, "{what}");
            let a = s.alpha.unwrap();
            assert!(
                a > 0.0 && a <= most,
                "{what}: α {a}, largest resolved {most}"
            );
            let (kind, lender) = if name.contains("ffn_up") {
                ("role", "blk.1.ffn_up")
            } else {
                ("any_group", "")
            };
            let from = alpha_from(t);
            assert_eq!(from["kind"], kind, "{what}");
            assert!(t.reason.contains("borrowed from"), "{what}");
            if kind == "role" {
                assert_eq!(from["group"], lender, "{what}");
                assert!(t.reason.contains("its role's largest"), "{what}");
            }
            if exact {
                assert!(t.reason.contains("Q5_0 reproduces it exactly"), "{what}");
            } else {
                assert!(t.reason.contains("below the"), "{what}");
            }
        }
        // The tensors off the grid measure their own α.
        for name in ["blk.1.ffn_up.weight", "blk.0.ffn_down.weight"] {
            let t = get(name);
            assert_eq!(alpha_from(t)["kind"], "measured", "{name}");
            assert!(!t.reason.contains("borrowed"), "{name}: {}", t.reason);
        }
    }
}
