//! `laquant eval` end to end on fixtures/llama-bpe and its conversions, with
//! text from ../shared/corpus/eval: an F32 file equals the reference (KLD 0,
//! PPL = reference PPL, top-1 100%), a Q4_K_M file does not, the JSON has the
//! shape of issue #6, Markdown and the SVG chart are written, and the default
//! text is the embedded held-out part (and the output says so).

use laquant::calib::{self, Model};
use laquant::eval::{self, EvalOptions, EvalText};
use laquant::hf::Checkpoint;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

mod common;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn model() -> PathBuf {
    root().join("fixtures/llama-bpe")
}

/// Conversions of the fixture, made once: (temp dir, f32 file, q4_k_m file).
fn files() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static FILES: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    FILES.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        for ty in ["f32", "q4_k_m"] {
            let p = d.path().join(format!("llama-bpe-{ty}.gguf"));
            let o = Command::new(env!("CARGO_BIN_EXE_laquant"))
                .args(["convert", model().to_str().unwrap(), "--outtype", ty])
                .args(["--calib", "none", "-q", "-o", p.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            out.push(p);
        }
        (d, out[0].clone(), out[1].clone())
    })
}

/// Three languages of the shared evaluation corpus (two non-Latin scripts), or
/// `None` (the test skips) outside CI when the corpus is absent.
fn eval_dir() -> Option<&'static Path> {
    let corpus = common::shared_data("corpus/eval")?;
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let d = DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        for l in ["en", "ru", "zh"] {
            let src = corpus.join(format!("{l}.txt"));
            std::fs::copy(&src, d.path().join(format!("{l}.txt")))
                .unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        }
        d
    });
    Some(d.path())
}

fn opts(dir: &Path) -> EvalOptions {
    EvalOptions {
        text: EvalText::Dir(dir.to_path_buf()),
        ctx: Some(64),
        chunks: Some(3),
        threads: 2,
    }
}

#[test]
fn f32_file_equals_the_reference_and_q4_does_not() {
    let Some(text) = eval_dir() else { return };
    let (_, f32_file, q4) = files();
    let ck = Checkpoint::open(model().to_str().unwrap()).unwrap();
    let mut calls = 0;
    let r = eval::run(
        &ck,
        &[f32_file.clone(), q4.clone()],
        &opts(text),
        &mut |_| calls += 1,
    )
    .unwrap();
    assert_eq!(calls, 9, "one progress report per chunk");
    assert_eq!(r.reference.len(), 3);
    assert_eq!(r.ctx, 64);
    for rl in &r.reference {
        assert_eq!(rl.chunks, 3);
        assert_eq!(rl.tokens, 3 * (64 - 1 - 32), "{}", rl.lang);
        assert!(
            rl.ppl > 1.0 && rl.ppl.is_finite(),
            "{}: {}",
            rl.lang,
            rl.ppl
        );
    }
    let (exact, quant) = (&r.files[0], &r.files[1]);
    assert!((exact.bpw - 32.0).abs() < 1e-9, "{}", exact.bpw);
    assert!(quant.bpw > 4.0 && quant.bpw < 8.0, "{}", quant.bpw);
    for (lang, x) in &exact.languages {
        assert!(x.kld_mean.abs() < 1e-7, "{lang}: F32 KLD {}", x.kld_mean);
        assert!(x.kld_p99.abs() < 1e-6, "{lang}");
        assert!(
            ((x.ppl - x.ppl_ref) / x.ppl_ref).abs() < 1e-6,
            "{lang}: {} vs {}",
            x.ppl,
            x.ppl_ref
        );
        assert_eq!(x.top1, 1.0, "{lang}");
    }
    for (lang, x) in &quant.languages {
        let rl = r.reference.iter().find(|r| &r.lang == lang).unwrap();
        assert_eq!(x.ppl_ref, rl.ppl, "{lang}: ppl_ref is the reference's");
        assert!(x.kld_mean > 1e-4, "{lang}: Q4_K_M KLD {}", x.kld_mean);
        assert!(x.kld_p99 >= x.kld_mean, "{lang}");
        assert!(x.kld_max >= x.kld_p99, "{lang}");
        assert!(x.ppl != x.ppl_ref, "{lang}");
        assert!(x.top1 < 1.0 && x.top1 > 0.3, "{lang}: top-1 {}", x.top1);
    }
    let worst = quant
        .languages
        .values()
        .map(|x| x.kld_mean)
        .fold(0.0, f64::max);
    assert_eq!(quant.worst_kld, worst);
    assert_eq!(quant.languages[&quant.worst_language].kld_mean, worst);
    let d = quant.kld_disparity.unwrap();
    assert!(d >= 1.0 && (d - worst / quant.best_kld).abs() < 1e-12);
    let en = quant.languages["en"].kld_mean;
    let others = (quant.languages["ru"].kld_mean + quant.languages["zh"].kld_mean) / 2.0;
    assert!((quant.non_en_over_en.unwrap() - others / en).abs() < 1e-12);
    let mean = quant.languages.values().map(|x| x.kld_mean).sum::<f64>() / 3.0;
    assert!((quant.kld_mean - mean).abs() < 1e-15);
    assert_eq!(exact.kld_disparity, None, "0/0 is not a disparity");
}

#[test]
fn logits_from_a_position_are_the_tail_of_the_full_logits() {
    let ck = Checkpoint::open(model().to_str().unwrap()).unwrap();
    let m: Model = calib::checkpoint::load_model(&ck, 2).unwrap();
    let toks: Vec<u32> = (0..40).map(|i| (i * 37 % 1000) as u32).collect();
    let all = m.forward(&toks, None, true).unwrap().unwrap();
    let tail = m.forward_logits_from(&toks, 25).unwrap();
    let v = m.cfg.vocab;
    assert_eq!(tail.len(), 15 * v);
    let d = all[25 * v..]
        .iter()
        .zip(&tail)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d < 1e-4, "max difference {d}");
    assert!(m.forward_logits_from(&toks, 41).is_err());
}

fn laquant(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_laquant"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn cli_json_markdown_and_chart() {
    let Some(text) = eval_dir() else { return };
    let (d, f32_file, q4) = files();
    let chart = d.path().join("kld.svg");
    let m = model();
    let dir = text.to_str().unwrap().to_string();
    let (code, out, err) = laquant(&[
        "eval",
        m.to_str().unwrap(),
        f32_file.to_str().unwrap(),
        q4.to_str().unwrap(),
        "--eval",
        &dir,
        "--ctx",
        "64",
        "--chunks",
        "2",
        "--json",
        "-",
        "--chart",
        chart.to_str().unwrap(),
        "-q",
    ]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).expect("stdout is JSON");
    let files = j["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    for f in files {
        assert!(f["file"].as_str().unwrap().ends_with(".gguf"));
        assert!(f["bpw"].as_f64().unwrap() > 4.0);
        assert!(f.get("kld_disparity").is_some());
        assert!(f["kld_mean"].is_number());
        let langs = f["languages"].as_object().unwrap();
        assert_eq!(
            langs.keys().map(String::as_str).collect::<Vec<_>>(),
            ["en", "ru", "zh"]
        );
        for (_, l) in langs {
            for k in ["ppl", "ppl_ref", "kld_mean", "kld_p99", "top1"] {
                assert!(l[k].is_number(), "{k} in {l}");
            }
        }
    }
    assert!(files[1]["kld_disparity"].as_f64().unwrap() >= 1.0);
    assert_eq!(j["ctx"], 64);
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..50.min(svg.len())]);
    for needle in ["Latin", "Cyrillic", "CJK", ">\nen\n<", "llama-bpe-q4_k_m"] {
        assert!(svg.contains(needle), "chart lacks {needle:?}");
    }

    let (code, md, err) = laquant(&[
        "eval",
        m.to_str().unwrap(),
        q4.to_str().unwrap(),
        "--eval",
        &dir,
        "--ctx",
        "64",
        "--chunks",
        "1",
        "--md",
        "-q",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(md.contains("| file | size MB | bpw | mean KLD |"), "{md}");
    assert!(md.contains("| zh | CJK |"), "{md}");
    assert!(md.contains("| ru | Cyrillic |"), "{md}");
}

#[test]
fn default_text_is_the_embedded_held_out_part_and_says_so() {
    let (_, _, q4) = files();
    let m = model();
    let (code, out, err) = laquant(&[
        "eval",
        m.to_str().unwrap(),
        q4.to_str().unwrap(),
        "--chunks",
        "1",
        "--ctx",
        "32",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no --eval DIR"), "{err}");
    assert!(out.contains("held-out"), "{out}");
    assert!(out.contains("calibration does not read"), "{out}");
    // Every embedded language is scored.
    assert_eq!(
        out.lines().filter(|l| l.contains("Latin")).count(),
        16,
        "{out}"
    );
}

/// gpt-oss, whose checkpoint stores its experts stacked: its F32 file equals
/// the reference, and a Q5_1 file (whose stacked experts' block minima enter
/// the matmuls of the rounded inputs, every expert's rows) is evaluated
/// (it panicked reading one row per expert).
#[test]
fn gpt_oss_stacked_experts_evaluate() {
    let Some(text) = eval_dir() else { return };
    let model = root().join("fixtures/gpt-oss");
    let d = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for ty in ["f32", "q5_1"] {
        let p = d.path().join(format!("gpt-oss-{ty}.gguf"));
        let o = Command::new(env!("CARGO_BIN_EXE_laquant"))
            .args(["convert", model.to_str().unwrap(), "--outtype", ty])
            .args(["--calib", "none", "-q", "-o", p.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        files.push(p);
    }
    let ck = Checkpoint::open(model.to_str().unwrap()).unwrap();
    let r = eval::run(&ck, &files, &opts(text), &mut |_| {}).unwrap();
    let (exact, q5) = (&r.files[0], &r.files[1]);
    for (lang, x) in &exact.languages {
        assert!(x.kld_mean.abs() < 1e-7, "{lang}: F32 KLD {}", x.kld_mean);
        assert_eq!(x.top1, 1.0, "{lang}");
    }
    for (lang, x) in &q5.languages {
        assert!(
            x.kld_mean > 1e-5 && x.kld_mean < 0.1,
            "{lang}: Q5_1 KLD {}",
            x.kld_mean
        );
    }
}
