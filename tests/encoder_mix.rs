//! la-mix and `--target-bpw` on embedding models (issue 25, item 5):
//! fixtures/bert (mean pooling) and fixtures/xlmr (CLS pooling), random
//! weights. Their sensitivity is measured as embedding drift (1 − cosine of
//! the pooled embeddings, per language), not next-token KLD, and the plan,
//! the report and `plan --json` say so; `--target-bpw` at Q4_K_M's size
//! (with `laquant calibrate`'s imatrix) stays within it; `laquant eval`
//! compares the la-mix file with Q4_K_M + imatrix. llama.cpp loading these
//! files: `tests/encoder_interop.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn laquant(args: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_laquant"))
        .args(args)
        .output()
        .expect("run laquant");
    assert!(
        o.status.success(),
        "laquant {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The calibration every calibrated run of these tests uses (small, uncached).
const CALIB: [&str; 5] = ["--chunks", "1", "--ctx", "64", "--no-cache"];

/// Every scored tensor of a calibrated plan was measured as embedding drift
/// and its reason says so, never KLD.
fn check_drift_plan(what: &str, tensors: &serde_json::Value) {
    let mut scored = 0;
    for t in tensors.as_array().unwrap() {
        let Some(s) = t.get("score").filter(|s| !s.is_null()) else {
            continue;
        };
        scored += 1;
        let name = t["name"].as_str().unwrap();
        let reason = t["reason"].as_str().unwrap();
        assert_eq!(s["measure"], "embedding_drift", "{what} {name}");
        assert!(
            f(&s["delta_drift"]) >= 0.0 && s.get("delta_kld").is_none(),
            "{what} {name}"
        );
        assert!(
            reason.contains("estimated embedding drift") && !reason.contains("KLD"),
            "{what} {name}: {reason}"
        );
    }
    // token_embd and 2 layers × (q, k, v, output, up, down).
    assert_eq!(scored, 13, "{what}");
}

fn mix_and_target(name: &str) {
    let d = tempfile::tempdir().unwrap();
    let model = fixture(name);
    let model = model.to_str().unwrap();
    let p = |f: &str| d.path().join(f).to_str().unwrap().to_string();
    let mut args = vec!["-q", "calibrate", model, "-o"];
    let im = p("imatrix.gguf");
    args.push(&im);
    args.extend(CALIB);
    laquant(&args);
    let convert = |out: &str, policy: &[&str], extra: &[&str]| -> serde_json::Value {
        let report = format!("{out}.json");
        let mut a = vec!["-q", "convert", model, "-o", out, "--report", &report];
        a.extend(policy);
        a.extend(extra);
        laquant(&a);
        json(Path::new(&report))
    };
    let q4 = p("q4_k_m.gguf");
    let r = convert(&q4, &["--outtype", "q4_k_m", "--imatrix", &im], &[]);
    let q4_bpw = f(&r["bits_per_weight"]);
    // --target-bpw at Q4_K_M's size: within it, and not far below.
    let target = format!("{q4_bpw:.4}");
    let tb = p("target.gguf");
    let r = convert(&tb, &["--target-bpw", &target], &CALIB);
    let bpw = f(&r["bits_per_weight"]);
    let bytes = std::fs::metadata(&tb).unwrap().len();
    eprintln!("{name}: Q4_K_M {q4_bpw:.4} bpw; --target-bpw {target}: {bpw:.4} bpw, {bytes} bytes");
    assert!(
        bpw <= target.parse::<f64>().unwrap() + 1e-9,
        "{name}: {bpw} over {target}"
    );
    assert!(bpw >= q4_bpw - 0.25, "{name}: {bpw} far below {target}");
    assert_eq!(r["sensitivity"]["measure"], "embedding_drift", "{name}");
    assert!(r["sensitivity"]["scored_tokens"].as_u64().unwrap() > 0);
    check_drift_plan(&format!("{name} --target-bpw"), &r["tensors"]);
    // la-mix: Q8_0 attention and Q4_K elsewhere, some upgraded.
    let lm = p("la-mix.gguf");
    let r = convert(&lm, &["--outtype", "la-mix"], &CALIB);
    check_drift_plan(&format!("{name} la-mix"), &r["tensors"]);
    eprintln!("{name}: la-mix {:.4} bpw", f(&r["bits_per_weight"]));
    // plan --json: an estimated drift, no estimated KLD.
    let mut a = vec!["-q", "plan", model, "--outtype", "la-mix", "--json"];
    a.extend(CALIB);
    let v: serde_json::Value = serde_json::from_slice(&laquant(&a).stdout).unwrap();
    assert!(v["estimated_kld"].is_null(), "{name}");
    assert!(f(&v["estimated_embedding_drift"]) > 0.0, "{name}");
    check_drift_plan(&format!("{name} plan --json"), &v["tensors"]);
    // laquant eval: the la-mix file against Q4_K_M + imatrix, per language.
    let o = laquant(&[
        "-q",
        "eval",
        model,
        &lm,
        &q4,
        "--json",
        "-",
        "--threads",
        "2",
        "--chunks",
        "8",
    ]);
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["kind"], "embedding");
    let files = e["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    for file in files {
        let langs = file["languages"].as_object().unwrap();
        assert_eq!(langs.len(), 29, "{name}");
        for (lang, l) in langs {
            let (m, p1) = (f(&l["cos_mean"]), f(&l["cos_p1"]));
            assert!(
                0.0 < p1 && p1 <= m + 1e-12 && m <= 1.0 + 1e-9,
                "{name} {lang}: {p1} {m}"
            );
        }
        eprintln!(
            "{name} eval {}: mean cosine {:.6}, agreement {:.4}",
            file["file"],
            f(&file["cos_mean"]),
            f(&file["agreement_mean"])
        );
    }
}

#[test]
fn bert_la_mix_and_target_bpw_measure_embedding_drift() {
    mix_and_target("bert");
}

#[test]
fn xlmr_la_mix_and_target_bpw_measure_embedding_drift() {
    mix_and_target("xlmr");
}
