//! `laquant calibrate --report` on a mixture of experts (the committed mixtral
//! fixture, 8 experts, top 2): each language's routing per layer from the
//! calibration's per-expert counts, consistent with the tokens it ran and with
//! the per-expert counts of the imatrix written from the same statistics; the
//! JSON and the printed chart from the command.

use laquant::calib::{self, report::Routing, CalibOptions, CorpusSource};
use laquant::hf::Checkpoint;
use std::path::{Path, PathBuf};
use std::process::Command;

const LANGS: [&str; 5] = ["en", "zh", "ru", "ar", "hi"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

mod common;

fn corpus_dir() -> tempfile::TempDir {
    common::corpus_dir(&LANGS)
}

fn calibrate(model: &str, dir: &Path) -> calib::Importance {
    let ckpt = Checkpoint::open(fixture(model).to_str().unwrap()).unwrap();
    let opts = CalibOptions {
        corpus: CorpusSource::Dir(dir.to_path_buf()),
        ctx: 64,
        threads: 2,
        max_chunks: Some(2),
        ..Default::default()
    };
    calib::run(&ckpt, &opts, &mut |_| {}).unwrap()
}

#[test]
fn routing_counts_add_up_and_match_the_imatrix() {
    let dir = corpus_dir();
    let imp = calibrate("mixtral", dir.path());
    let r = Routing::new(&imp, 2).expect("a mixture has a routing report");
    assert_eq!((r.n_expert, r.top_k, r.counts.len()), (8, 2, 2));
    assert_eq!(r.langs.len(), LANGS.len());
    let m = imp.to_imatrix();
    for layer in 0..2 {
        let mut per_expert = [0f64; 8];
        for (l, (lang, tokens)) in r.langs.iter().enumerate() {
            assert_eq!(*tokens, 128, "{lang}: two chunks of 64");
            let c = &r.counts[layer][l];
            // Every token reaches top_k experts.
            assert_eq!(
                c.iter().sum::<f64>(),
                (tokens * 2) as f64,
                "{lang} blk.{layer}"
            );
            let s = r.shares(layer, l);
            assert!((s.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            for (e, (&n, &sh)) in c.iter().zip(&s).enumerate() {
                assert_eq!(sh, n / (tokens * 2) as f64);
                per_expert[e] += n;
            }
            // The experts it depends on most: the largest shares, best first.
            let top = r.top(layer, l);
            let max = s.iter().cloned().fold(0.0, f64::max);
            assert_eq!(top[0].1, max);
            assert!(top.windows(2).all(|w| w[0].1 >= w[1].1));
        }
        // The imatrix's per-expert counts are the same tokens, over all languages.
        for name in ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"] {
            let counts = &m.entries[&format!("blk.{layer}.{name}.weight")].counts;
            let want: Vec<f32> = per_expert.iter().map(|&v| v as f32).collect();
            assert_eq!(counts, &want, "blk.{layer}.{name}");
        }
        // Experts few languages use: 1 to few() users, each giving it at least half
        // an even share; no other expert has that few users.
        let few = r.few_language_experts(layer);
        for e in 0..8 {
            let users = r.users(layer, e);
            for &l in &users {
                assert!(r.shares(layer, l)[e] >= 0.5 / 8.0);
            }
            let listed = few.iter().find(|(x, _)| *x == e);
            match listed {
                Some((_, u)) => assert_eq!(u, &users),
                None => assert!(users.is_empty() || users.len() > r.few()),
            }
        }
    }
    // A dense model has no routing.
    assert!(Routing::new(&calibrate("granite", dir.path()), 2).is_none());
}

#[test]
fn cli_report_has_the_routing_and_prints_its_chart() {
    let dir = corpus_dir();
    let out = tempfile::tempdir().unwrap();
    let report = out.path().join("report.json");
    let o = Command::new(env!("CARGO_BIN_EXE_laquant"))
        .args(["calibrate", fixture("mixtral").to_str().unwrap()])
        .args(["--ctx", "64", "--chunks", "1", "--no-cache", "--calib"])
        .arg(dir.path())
        .arg("-o")
        .arg(out.path().join("imatrix.gguf"))
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("expert routing (8 experts, top 2)"), "{err}");
    assert!(err.contains("experts only a few languages use"), "{err}");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let routing = &j["routing"];
    assert_eq!(routing["n_expert"], 8);
    assert_eq!(routing["top_k"], 2);
    let layers = routing["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for layer in layers {
        let langs = layer["languages"].as_array().unwrap();
        assert_eq!(langs.len(), LANGS.len());
        for l in langs {
            let tokens = l["tokens"].as_u64().unwrap();
            let counts: f64 = l["counts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .sum();
            assert_eq!(counts, (tokens * 2) as f64);
            // The chart's row for this language is in the text.
            assert!(err.contains(l["lang"].as_str().unwrap()));
        }
    }
}

/// `laquant eval` on a mixture compares each file's routing with the
/// reference's: an F32 file routes every scored token to the reference's
/// experts in every layer; Q2_K's coarser weights move some tokens to other
/// experts, never more than all of them, and keep at least as many experts
/// as they route the same; the table and the JSON say so; a dense model's
/// report has no routing.
#[test]
fn eval_compares_each_files_routing_with_the_reference() {
    let dir = corpus_dir();
    let out = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = ["f32", "q2_k"]
        .iter()
        .map(|t| {
            let f = out.path().join(format!("mixtral-{t}.gguf"));
            let o = Command::new(env!("CARGO_BIN_EXE_laquant"))
                .args(["convert", fixture("mixtral").to_str().unwrap(), "-q"])
                .args(["--outtype", t, "-o"])
                .arg(&f)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            f
        })
        .collect();
    let json = out.path().join("eval.json");
    let o = Command::new(env!("CARGO_BIN_EXE_laquant"))
        .args(["eval", fixture("mixtral").to_str().unwrap()])
        .args(&files)
        .args(["--ctx", "64", "--eval"])
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("same experts mixtral-q2_k"), "{text}");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let (f32, q2) = (&j["files"][0], &j["files"][1]);
    assert_eq!(f32["routing_same_mean"], 1.0);
    let q2_mean = q2["routing_same_mean"].as_f64().unwrap();
    assert!(q2_mean > 0.0 && q2_mean < 1.0, "{q2_mean}");
    for lang in LANGS {
        let r = &f32["languages"][lang]["routing"];
        assert_eq!(
            (r["same_experts"].as_f64(), r["experts_kept"].as_f64()),
            (Some(1.0), Some(1.0)),
            "{lang}"
        );
        let r = &q2["languages"][lang]["routing"];
        let (same, kept) = (
            r["same_experts"].as_f64().unwrap(),
            r["experts_kept"].as_f64().unwrap(),
        );
        assert!(
            (0.0..=1.0).contains(&same) && kept >= same && kept <= 1.0,
            "{lang}: {r}"
        );
        assert!(r["worst_layer"].as_u64().unwrap() < 2);
        assert!(
            r["worst_layer_same"].as_f64().unwrap() <= same,
            "{lang}: {r}"
        );
    }
    // A dense model: no routing anywhere in its report.
    let dense = out.path().join("granite-q8_0.gguf");
    let o = Command::new(env!("CARGO_BIN_EXE_laquant"))
        .args([
            "convert",
            fixture("granite").to_str().unwrap(),
            "-q",
            "--outtype",
            "q8_0",
            "-o",
        ])
        .arg(&dense)
        .output()
        .unwrap();
    assert!(o.status.success());
    let o = Command::new(env!("CARGO_BIN_EXE_laquant"))
        .args(["eval", fixture("granite").to_str().unwrap()])
        .arg(&dense)
        .args(["--force", "--ctx", "64", "--eval"])
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("same experts"));
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(j["files"][0].get("routing_same_mean").is_none());
    assert!(j["files"][0]["languages"]["en"].get("routing").is_none());
}
